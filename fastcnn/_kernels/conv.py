"""Numba kernels of the convolution primitives: im2col, col2im and the GEMM reorders.

Layouts and contracts are those of :mod:`fastcnn._ref`.  Every parallel loop writes disjoint
parts of its output (no ``+=`` into a location shared by two ``prange`` iterations), and every
sum is accumulated in a fixed order, so results are bit-identical run after run and whatever
the number of threads.
"""
import numpy as np
from numba import njit, prange

from .._config import NUMBA_SERIAL
from ._parallel import parallel_kernel

#: Index cast used for every computed flat index.  Numba wraps negative signed indices
#: around, and that (unprovable) branch keeps LLVM from vectorising the inner loops; an
#: unsigned index has no wraparound.  All indices computed here are in range by construction.
_u = np.uint64


@njit(**NUMBA_SERIAL)
def _valid_range(off, s, w, o):
    """Outputs ``q`` in ``[lo, hi)`` with ``0 <= q*s + off < w``, clamped to ``[0, o]``."""
    if off >= 0:
        lo = 0
    else:
        lo = (-off + s - 1) // s
    last = w - 1 - off
    if last < 0:
        hi = 0
    else:
        hi = last // s + 1
    if hi > o:
        hi = o
    if lo > hi:
        lo = hi
    return lo, hi


@njit(**NUMBA_SERIAL)
def _valid_ranges(kw, pl, sw, w, ow):
    """``_valid_range`` of every kernel column j (the same for every row and image)."""
    wlo = np.empty(kw, np.int64)
    whi = np.empty(kw, np.int64)
    for j in range(kw):
        lo, hi = _valid_range(j - pl, sw, w, ow)
        wlo[j] = lo
        whi[j] = hi
    return wlo, whi


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


@njit(**NUMBA_SERIAL)
def _add_row(df, dd, cf, s0, lo, hi, sw):
    """``df[dd + u*sw] += cf[s0 + u]`` for u in [lo, hi) (literal ``sw`` for stride 1)."""
    for u in range(lo, hi):
        df[_u(dd + u * sw)] += cf[_u(s0 + u)]


@parallel_kernel
def im2col(x, kh, kw, sh, sw, pt, pl, oh, ow, cols):
    """Unfold convolution windows into ``cols`` (see :func:`fastcnn._ref.im2col`)."""
    n, c, h, w = x.shape
    kk = kh * kw
    p = oh * ow
    npix = n * p
    xf = x.reshape(x.size)
    cf = cols.reshape(cols.size)
    wlo, whi = _valid_ranges(kw, pl, sw, w, ow)
    # Stride 1 with OW == W ("same" convolutions): the valid rows of one kernel offset are one
    # contiguous shifted run of the input plane; copy it at once, then zero the padding columns.
    flat = sh == 1 and sw == 1 and ow == w
    # One iteration: one kernel row (c, i, j) of ``cols`` and one image, i.e. a contiguous
    # run of OH*OW elements of ``cols``.
    for t in prange(c * kk * n):
        r = t // n
        b = t - r * n
        ci = r // kk
        ij = r - ci * kk
        i = ij // kw
        j = ij - i * kw
        lo = wlo[j]
        hi = whi[j]
        off = j - pl
        dst0 = r * npix + b * p
        src_plane = (b * c + ci) * h * w
        qlo, qhi = _valid_range(i - pt, sh, h, oh)
        for e in range(qlo * ow):
            cf[_u(dst0 + e)] = 0.0
        for e in range(qhi * ow, p):
            cf[_u(dst0 + e)] = 0.0
        if flat and hi > lo and qhi > qlo:
            delta = src_plane + (i - pt) * w + off
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
                s0 = src_plane + (q * sh - pt + i) * w + off
                if sw == 1:
                    _copy_row(cf, d, xf, s0, lo, hi, ow, 1)
                else:
                    _copy_row(cf, d, xf, s0, lo, hi, ow, sw)


#: Images per col2im work item (see :func:`col2im`).
_COL2IM_IMAGES = 8


@parallel_kernel
def col2im(cols, kh, kw, sh, sw, pt, pl, oh, ow, dx):
    """Fold ``cols`` back into ``dx``, summing overlaps (see :func:`fastcnn._ref.col2im`)."""
    n, c, h, w = dx.shape
    kk = kh * kw
    p = oh * ow
    npix = n * p
    hw = h * w
    cf = cols.reshape(cols.size)
    df = dx.reshape(dx.size)
    wlo, whi = _valid_ranges(kw, pl, sw, w, ow)
    # Stride 1 with OW == W: as in im2col, one contiguous shifted run per kernel offset; the
    # columns that fall in the padding are masked (they add +0.0, which changes nothing).
    flat = sh == 1 and sw == 1 and ow == w
    mask = np.zeros(kw * p if flat else 0, np.bool_)
    if flat:
        for j in range(kw):
            for q in range(oh):
                for u in range(wlo[j], whi[j]):
                    mask[j * p + q * ow + u] = True
    # One iteration: channel ci of a block of images, i.e. a set of dx planes written only by
    # it.  It reads the kh*kw rows of cols that belong to ci, each as one run over the block's
    # images (streaming reads).  Contributions reach every cell in (i, j) order, as in the
    # reference, so the result does not depend on the blocking or the threads.
    nblk = (n + _COL2IM_IMAGES - 1) // _COL2IM_IMAGES
    for t in prange(c * nblk):
        ci = t // nblk
        b0 = (t - ci * nblk) * _COL2IM_IMAGES
        b1 = min(b0 + _COL2IM_IMAGES, n)
        for b in range(b0, b1):
            d0 = (b * c + ci) * hw
            for e in range(hw):
                df[_u(d0 + e)] = 0.0
        for i in range(kh):
            qlo, qhi = _valid_range(i - pt, sh, h, oh)
            for j in range(kw):
                lo = wlo[j]
                hi = whi[j]
                off = j - pl
                for b in range(b0, b1):
                    d0 = (b * c + ci) * hw
                    row0 = (ci * kk + i * kw + j) * npix + b * p
                    if flat:
                        if hi > lo and qhi > qlo:
                            delta = d0 + (i - pt) * w + off
                            m0 = j * p
                            zero = np.float32(0.0)
                            for e in range(qlo * ow + lo, (qhi - 1) * ow + hi):
                                v = cf[_u(row0 + e)]
                                df[_u(delta + e)] += v if mask[_u(m0 + e)] else zero
                    else:
                        for q in range(qlo, qhi):
                            dd = d0 + (q * sh - pt + i) * w + off
                            s0 = row0 + q * ow
                            if sw == 1:
                                _add_row(df, dd, cf, s0, lo, hi, 1)
                            else:
                                _add_row(df, dd, cf, s0, lo, hi, sw)


@parallel_kernel
def cnp_to_ncp_bias(ycnp, bias, y):
    """``y[n, o, p] = ycnp[o, n*P + p] + bias[o]`` (see :func:`fastcnn._ref.cnp_to_ncp_bias`)."""
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
    n, oc, p = gy.shape
    gf = gy.reshape(gy.size)
    gc = gcnp.reshape(gcnp.size)
    # One iteration: one output channel, its row of gcnp and its bias sum.  The float64 sum
    # runs over images into one partial sum per position p (an element-wise loop, which
    # vectorises without reassociating anything), then over p in order: a fixed order,
    # so the result is deterministic whatever the number of threads.
    for o in prange(oc):
        acc = np.zeros(p, np.float64)
        for b in range(n):
            s0 = (b * oc + o) * p
            d0 = o * (n * p) + b * p
            for e in range(p):
                gc[_u(d0 + e)] = gf[_u(s0 + e)]
            for e in range(p):
                acc[_u(e)] += np.float64(gf[_u(s0 + e)])
        tot = 0.0
        for e in range(p):
            tot += acc[_u(e)]
        gb[o] = np.float32(tot)


# --------------------------------------------------------------------------- one image at a time
# One thread pool: each thread unfolds one image into its own buffer (which stays in its
# core's cache) and multiplies it with a single-threaded SGEMM (``np.dot`` calls SciPy's BLAS,
# loaded single-threaded by ``fastcnn._threads.init_gemm_blas``).  No hand-over between the
# kernels' threads and BLAS threads, no unfolded matrix in memory, no GEMM-layout reorders.

_im2col_serial = im2col.serial
_col2im_serial = col2im.serial


@parallel_kernel
def conv2d_forward_images(x, w2, bias, kh, kw, sh, sw, pt, pl, oh, ow, cols, y):
    """Convolution one image at a time (see :func:`fastcnn._ref.conv2d_forward_images`)."""
    n = x.shape[0]
    oc = w2.shape[0]
    p = oh * ow
    nb = cols.shape[0]
    # One iteration: a block of consecutive images and its own buffer cols[t].  (Blocks,
    # not numba.get_thread_id(): that call crashes when loaded from Numba's on-disk cache.)
    for t in prange(nb):
        c = cols[t]
        for i in range(t * n // nb, (t + 1) * n // nb):
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
    n = x.shape[0]
    oc, kdim = w2.shape
    nslot = gwt_part.shape[0]
    nb = cols.shape[0]
    w2t = w2.T
    # One iteration: a block of slots and its own buffers.  A slot is a run of consecutive
    # images whose weight gradients it sums in image order (so the result does not depend
    # on the number of blocks or threads).
    p = oh * ow
    for t in prange(nb):
        c = cols[t]
        tmp = gwt_tmp[t]
        # Bias sums: element-wise float64 partial sums over the slot's images (a loop that
        # vectorises without reassociating anything), then over positions, in order.
        bacc = np.empty((oc, p), np.float64)
        for s in range(t * nslot // nb, (t + 1) * nslot // nb):
            acc = gwt_part[s]
            gbs = gb_part[s]
            acc[:, :] = 0.0
            bacc[:, :] = 0.0
            for i in range((s * n + nslot - 1) // nslot, ((s + 1) * n + nslot - 1) // nslot):
                g = gy[i]
                _im2col_serial(x[i:i + 1], kh, kw, sh, sw, pt, pl, oh, ow, c)
                np.dot(c, g.T, tmp)
                for r in range(kdim):
                    for o in range(oc):
                        acc[r, o] += tmp[r, o]
                for o in range(oc):
                    for e in range(p):
                        bacc[o, e] += np.float64(g[o, e])
                if input_grad:
                    np.dot(w2t, g, c)
                    _col2im_serial(c, kh, kw, sh, sw, pt, pl, oh, ow, gx[i:i + 1])
            for o in range(oc):
                sm = 0.0
                for e in range(p):
                    sm += bacc[o, e]
                gbs[o] = sm
