"""Numba kernels of the convolution primitives: im2col, col2im, the GEMM reorders and the
per-image convolutions.

Layouts and contracts are those of :mod:`fastcnn._ref`.  Every parallel loop writes disjoint
parts of its output (no ``+=`` into a location shared by two ``prange`` iterations), and every
sum is accumulated in a fixed order, so results are bit-identical run after run and whatever
the number of threads.
"""
import numpy as np
from numba import njit, prange

from .. import _backend, _config
from .._config import NUMBA_SERIAL
from ._common import _u, add_plane, block, fold_tap, helper, parallel_kernel, total, valid_range


@helper
def _unfold_geometry(x, cols, kh, kw, sh, sw, pt, pl, oh, ow):
    """The size check of im2col and col2im (over the shapes of the image array and of cols),
    then what they derive from the geometry: ``wlo, whi``, the valid outputs
    (:func:`valid_range`) of each kernel column (the same for every row and image), and
    ``flat``: stride 1 with OW == W ("same" convolutions), where the valid rows of one kernel
    offset are one contiguous shifted run of the input plane."""
    _backend.sizes_im2col(x, kh, kw, sh, sw, pt, pl, oh, ow, cols)
    w = x[3]
    wlo = np.empty(kw, np.int64)
    whi = np.empty(kw, np.int64)
    for j in range(kw):
        wlo[j], whi[j] = valid_range(j - pl, sw, w, ow)
    return wlo, whi, sh == 1 and sw == 1 and ow == w


@njit(**NUMBA_SERIAL)
def _copy_row(cf, d, xf, s0, lo, hi, ow, sw):
    """``cf[d+u] = xf[s0 + u*sw]`` for u in [lo, hi), zeros for the rest of [0, ow).
    Called with a literal ``sw`` for stride 1 so that loop is compiled as a plain copy (a
    literal 2 measured slower than the generic strided loop for rows this short)."""
    for u in range(lo):
        cf[_u(d + u)] = 0.0
    for u in range(lo, hi):
        cf[_u(d + u)] = xf[_u(s0 + u * sw)]
    for u in range(hi, ow):
        cf[_u(d + u)] = 0.0


@parallel_kernel
def im2col(x, kh, kw, sh, sw, pt, pl, oh, ow, cols):
    """Unfold convolution windows into ``cols`` (see :func:`fastcnn._ref.im2col`)."""
    wlo, whi, flat = _unfold_geometry(x.shape, cols.shape, kh, kw, sh, sw, pt, pl, oh, ow)
    n, c, h, w = x.shape
    p = oh * ow
    xf, cf = x.reshape(x.size), cols.reshape(cols.size)
    # One iteration: one kernel row (c, i, j) of ``cols`` and one image, i.e. a contiguous
    # run of OH*OW elements of ``cols``.
    for t in prange(c * kh * kw * n):
        r = t // n
        b = t - r * n
        ci = r // (kh * kw)
        i = (r - ci * kh * kw) // kw
        j = r - ci * kh * kw - i * kw
        lo = wlo[j]
        hi = whi[j]
        dst0 = r * n * p + b * p
        src_plane = (b * c + ci) * h * w
        qlo, qhi = valid_range(i - pt, sh, h, oh)
        for e in range(qlo * ow):
            cf[_u(dst0 + e)] = 0.0
        for e in range(qhi * ow, p):
            cf[_u(dst0 + e)] = 0.0
        if flat and hi > lo and qhi > qlo:  # copy the shifted run, zero the padding columns
            delta = src_plane + (i - pt) * w + j - pl
            for e in range(qlo * ow + lo, (qhi - 1) * ow + hi):
                cf[_u(dst0 + e)] = xf[_u(delta + e)]
            for q in range(qlo, qhi):
                d = dst0 + q * ow
                for u in range(lo):
                    cf[_u(d + u)] = 0.0
                for u in range(hi, ow):
                    cf[_u(d + u)] = 0.0
        else:
            for q in range(qlo, qhi):
                d = dst0 + q * ow
                s0 = src_plane + (q * sh - pt + i) * w + j - pl
                if sw == 1:
                    _copy_row(cf, d, xf, s0, lo, hi, ow, 1)
                else:
                    _copy_row(cf, d, xf, s0, lo, hi, ow, sw)


@parallel_kernel
def _col2im(cols, kh, kw, sh, sw, pt, pl, oh, ow, dx, nimg):
    wlo, whi, flat = _unfold_geometry(dx.shape, cols.shape, kh, kw, sh, sw, pt, pl, oh, ow)
    n, c, h, w = dx.shape
    p = oh * ow
    cf, df = cols.reshape(cols.size), dx.reshape(dx.size)
    # Flat: as in im2col, one contiguous shifted run per kernel offset; the columns that fall
    # in the padding are masked (they add +0.0, which changes nothing).
    mask = np.zeros(kw * p if flat else 0, np.bool_)
    if flat:
        for j in range(kw):
            for q in range(oh):
                for u in range(wlo[j], whi[j]):
                    mask[j * p + q * ow + u] = True
    # One iteration: channel ci of a block of ``nimg`` images, i.e. a set of dx planes written
    # only by it.  It reads the kh*kw rows of cols that belong to ci, each as one run over the
    # block's images (streaming reads).  Contributions reach every cell in (i, j) order, as in
    # the reference, so the result does not depend on the blocking or the threads.
    nblk = (n + nimg - 1) // nimg
    zero = np.float32(0.0)
    for t in prange(c * nblk):
        ci = t // nblk
        b0 = (t - ci * nblk) * nimg
        b1 = min(b0 + nimg, n)
        for b in range(b0, b1):
            for e in range((b * c + ci) * h * w, (b * c + ci + 1) * h * w):
                df[_u(e)] = 0.0
        for i in range(kh):
            qlo, qhi = valid_range(i - pt, sh, h, oh)
            for j in range(kw):
                lo = wlo[j]
                hi = whi[j]
                for b in range(b0, b1):
                    d0 = (b * c + ci) * h * w
                    row0 = (ci * kh * kw + i * kw + j) * n * p + b * p
                    if not flat:
                        fold_tap(df, d0, cf, row0, None, i, j, h, w, sh, sw, pt, pl, oh, ow)
                    elif hi > lo and qhi > qlo:
                        delta = d0 + (i - pt) * w + j - pl
                        m0 = j * p
                        for e in range(qlo * ow + lo, (qhi - 1) * ow + hi):
                            v = cf[_u(row0 + e)]
                            df[_u(delta + e)] += v if mask[_u(m0 + e)] else zero


def col2im(cols, kh, kw, sh, sw, pt, pl, oh, ow, dx):
    """Fold ``cols`` back into ``dx``, summing overlaps (see :func:`fastcnn._ref.col2im`)."""
    _col2im(cols, kh, kw, sh, sw, pt, pl, oh, ow, dx, _config.COL2IM_IMAGES)


@parallel_kernel
def cnp_to_ncp_bias(ycnp, bias, y):
    """``y[n, o, p] = ycnp[o, n*P + p] + bias[o]`` (see :func:`fastcnn._ref.cnp_to_ncp_bias`)."""
    _backend.sizes_cnp_to_ncp_bias(ycnp.shape, bias.shape, y.shape)
    n, oc, p = y.shape
    yc = ycnp.reshape(ycnp.size)
    yf = y.reshape(y.size)
    for t in prange(n * oc):
        b = t // oc
        o = t - b * oc
        bo = bias[o]
        s0 = o * (n * p) + b * p
        d0 = t * p
        for e in range(p):
            yf[_u(d0 + e)] = yc[_u(s0 + e)] + bo


@parallel_kernel
def ncp_to_cnp_sum(gy, gcnp, gb):
    """``gcnp[o, n*P + p] = gy[n, o, p]`` and ``gb`` = float64 sum of ``gy`` over N and P
    (see :func:`fastcnn._ref.ncp_to_cnp_sum`)."""
    _backend.sizes_ncp_to_cnp_sum(gy.shape, gcnp.shape, gb.shape)
    n, oc, p = gy.shape
    gf = gy.reshape(gy.size)
    gc = gcnp.reshape(gcnp.size)
    # One iteration: one output channel, its row of gcnp and its bias sum (:func:`add_plane`
    # over the images, then :func:`total`: a fixed order whatever the number of threads).
    for o in prange(oc):
        acc = np.zeros(p, np.float64)
        for b in range(n):
            s0 = (b * oc + o) * p
            d0 = o * (n * p) + b * p
            for e in range(p):
                gc[_u(d0 + e)] = gf[_u(s0 + e)]
            add_plane(acc, 0, gf, s0, p)
        gb[o] = np.float32(total(acc, 0, p))


# --------------------------------------------------------------------------- one image at a time
# One thread pool (docs/PERFORMANCE.md, 1): each thread unfolds one image into its own buffer
# and multiplies it with a single-threaded SGEMM (``np.dot`` calls SciPy's BLAS).

_im2col_serial = im2col.serial
_col2im_serial = _col2im.serial


@parallel_kernel
def conv2d_forward_images(x, w2, bias, kh, kw, sh, sw, pt, pl, oh, ow, cols, y):
    """Convolution one image at a time (see :func:`fastcnn._ref.conv2d_forward_images`)."""
    _backend.sizes_conv2d_forward_images(x.shape, w2.shape, bias.shape, kh, kw, sh, sw, pt, pl, oh,
                                         ow, cols.shape, y.shape)
    n = x.shape[0]
    oc = w2.shape[0]
    p = oh * ow
    nb = cols.shape[0]
    # One iteration: a block of consecutive images and its own buffer cols[t].  (Blocks,
    # not numba.get_thread_id(): that call crashes when loaded from Numba's on-disk cache.)
    for t in prange(nb):
        c = cols[t]
        i0, i1 = block(t, n, nb)
        for i in range(i0, i1):
            _im2col_serial(x[i:i + 1], kh, kw, sh, sw, pt, pl, oh, ow, c)
            yi = y[i]
            np.dot(w2, c, yi)
            for o in range(oc):
                bo = bias[o]
                for e in range(p):
                    yi[o, e] += bo


@parallel_kernel
def conv2d_backward_images(gy, x, w2, kh, kw, sh, sw, pt, pl, oh, ow, input_grad, cols, gwt_tmp,
                           gwt_part, gb_part, gx):
    """Gradients one image at a time (see :func:`fastcnn._ref.conv2d_backward_images`)."""
    _backend.sizes_conv2d_backward_images(gy.shape, x.shape, w2.shape, kh, kw, sh, sw, pt, pl, oh,
                                          ow, input_grad, cols.shape, gwt_tmp.shape,
                                          gwt_part.shape, gb_part.shape, gx.shape)
    n = x.shape[0]
    oc, kdim = w2.shape
    nslot = gwt_part.shape[0]
    nb = cols.shape[0]
    w2t = w2.T
    p = oh * ow
    # One iteration: a block of slots and its own buffers.  A slot is a run of consecutive
    # images whose weight gradients it sums in image order (so the result does not depend
    # on the number of blocks or threads); its bias sums as in ncp_to_cnp_sum.
    for t in prange(nb):
        c = cols[t]
        tmp = gwt_tmp[t]
        bacc = np.empty(oc * p, np.float64)
        s0, s1 = block(t, nslot, nb)
        for s in range(s0, s1):
            acc = gwt_part[s]
            gbs = gb_part[s]
            acc[:, :] = 0.0
            bacc[:] = 0.0
            for i in range((s * n + nslot - 1) // nslot, ((s + 1) * n + nslot - 1) // nslot):
                g = gy[i]
                _im2col_serial(x[i:i + 1], kh, kw, sh, sw, pt, pl, oh, ow, c)
                np.dot(c, g.T, tmp)
                for r in range(kdim):
                    for o in range(oc):
                        acc[r, o] += tmp[r, o]
                add_plane(bacc, 0, gy[i].reshape(oc * p), 0, oc * p)
                if input_grad:
                    np.dot(w2t, g, c)
                    _col2im_serial(c, kh, kw, sh, sw, pt, pl, oh, ow, gx[i:i + 1], 1)
            for o in range(oc):
                gbs[o] = total(bacc, o * p, p)
