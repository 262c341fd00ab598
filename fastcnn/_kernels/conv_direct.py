"""Numba direct convolutions: no im2col matrix, no GEMM (contracts: :mod:`fastcnn._ref`).

The input is first copied into a zero-padded buffer (every window then lies inside it).  A
work item is one output plane (or a block of its rows) of one image and two output channels;
it accumulates in a small buffer that stays in L1, one kernel row at a time, the ``kw`` taps
of a row unrolled in the vectorised loop over output pixels.  The output is walked at the
padded row pitch: one long contiguous run per kernel row (the ``kw - 1`` extra columns per
row are computed and dropped).  With strides > 1 the padded input is first split into its
``sh*sw`` phases (every ``sh``-th row, ``sw``-th column), after which every tap reads one
contiguous run too (one output channel per work item).

Backward data is the forward convolution of the (stride-dilated) output gradient with the
flipped, transposed kernel.  Backward weight: one work item per (output, input) channel pair,
element-wise partial sums over images and pixels, then summed in index order, so every result
has one fixed summation order whatever the number of threads.  FMA contraction only
(``_config.NUMBA_*_FMA``): no reassociation.
"""
import numpy as np
from numba import njit, prange

from .. import _backend, _config
from .._config import NUMBA_SERIAL_FMA
from . import activation as _activation
from . import pool as _pool
from ._common import _u, add_plane, helper, parallel_kernel, total
from ._simd import MAX_VL, VL, J, V, tile_fma, tile_store, tile_zero, vloads

def _grid_input(n, c, nph, hq, wq, kw):
    """An (n, c, nph, hq, wq) float32 buffer (the grid layout: zero-padded input split into its
    ``nph`` stride phases) and its flat view, followed by zeros that the last pixel vectors read
    past the last plane (``kw + MAX_VL``, enough for any lane count)."""
    size = n * c * nph * hq * wq
    flat = np.empty(size + kw + MAX_VL, np.float32)
    flat[size:] = 0.0
    return flat[:size].reshape(n, c, nph, hq, wq), flat


@parallel_kernel(fma=True)
def _pad(x, pt, pl, xp):
    """``xp[n, c, h, w] = x[n, c, h - pt, w - pl]``, 0 outside ``x`` (``pt``/``pl`` may be < 0)."""
    n, c, h, w = x.shape
    hp, wp = xp.shape[2], xp.shape[3]
    for t in prange(n * c):
        b = t // c
        ci = t - b * c
        for r in range(hp):
            sr = r - pt
            if sr < 0 or sr >= h:
                for q in range(wp):
                    xp[b, ci, r, q] = 0.0
            else:
                for q in range(wp):
                    sq = q - pl
                    xp[b, ci, r, q] = x[b, ci, sr, sq] if 0 <= sq < w else np.float32(0.0)


@parallel_kernel(fma=True)
def _pad_phases(x, pt, pl, sh, sw, xq):
    """``xq[n, c, a*sw + e, R, Q] = x[n, c, R*sh + a - pt, Q*sw + e - pl]``, 0 outside ``x``:
    the zero-padded input split into its stride phases, so that the input of one tap over
    the output plane is one block at row pitch ``Q`` (the grid layout, docs/PERFORMANCE.md,
    section 9)."""
    n, c, h, w = x.shape
    hq, wq = xq.shape[3], xq.shape[4]
    for t in prange(n * c):
        b = t // c
        ci = t - b * c
        for a in range(sh):
            for e in range(sw):
                for r in range(hq):
                    sr = r * sh + a - pt
                    for q in range(wq):
                        sq = q * sw + e - pl
                        v = np.float32(0.0)
                        if 0 <= sr < h and 0 <= sq < w:
                            v = x[b, ci, sr, sq]
                        xq[b, ci, a * sw + e, r, q] = v


@helper
def _fwd_tile(xf, xb, cs, tab, c, kk_n, wp, wb, offs, g, pitch):
    """One register tile: ``J`` output channels (packed weights from ``wp[wb]``) x the pixel
    vectors at grid positions ``offs``, over all ``c * kk_n`` taps (channel by channel, tap by
    tap, one FMA each), stored to ``g[jj*pitch + offs[v]]``."""
    acc = tile_zero(offs)
    for ci in range(c):
        xc = xb + ci * cs
        wc = wb + ci * kk_n * J
        for kk in range(kk_n):
            acc = tile_fma(acc, vloads(xf, xc + tab[kk], offs), wp, wc + kk * J)
    tile_store(g, 0, pitch, offs, acc)


@parallel_kernel(fma=True)
def _forward(xf, xs, cs, tab, w, bias, relu, wq, y):
    """Direct convolution from the grid-layout input ``xf`` (flat; image ``b`` at ``b*xs``,
    channel planes ``cs`` apart, tap ``kk`` of grid position ``p`` at ``p + tab[kk]``, output
    row pitch ``wq``): one work item per image and block of ``J`` output channels, register
    tiles of ``J`` x ``V`` vectors, then bias and ReLU on the way to ``y``."""
    n, oc, oh, ow = y.shape
    c = w.shape[1]
    kw = w.shape[3]
    kk_n = w.shape[2] * kw
    nob = (oc + J - 1) // J
    wp = np.zeros(nob * c * kk_n * J, np.float32)  # [ob][c][kk][J], zeros past oc
    for o in range(oc):
        for ci in range(c):
            for kk in range(kk_n):
                wp[(((o // J) * c + ci) * kk_n + kk) * J + o % J] = w[o, ci, kk // kw, kk % kw]
    # Pixel vectors: consecutive ones over the grid, or per output row (which skips the
    # dropped columns when OW <= VL*k < wq), whichever are fewer.
    grid = (oh * wq + VL - 1) // VL
    per_row = (ow + VL - 1) // VL
    rows = grid > oh * per_row
    ns = oh * per_row if rows else grid
    st = np.empty(ns, np.int64)
    for k in range(ns):
        st[k] = (k // per_row) * wq + (k % per_row) * VL if rows else k * VL
    pitch = (grid + 1) * VL  # >= the last start + VL
    for t in prange(n * nob):
        b = t // nob
        ob = t - b * nob
        g = np.empty(J * pitch, np.float32)
        xb = b * xs
        wb = ob * c * kk_n * J
        k = 0
        while k + V <= ns:
            if V == 3:
                _fwd_tile(xf, xb, cs, tab, c, kk_n, wp, wb, (st[k], st[k + 1], st[k + 2]), g, pitch)
            else:
                _fwd_tile(xf, xb, cs, tab, c, kk_n, wp, wb, (st[k], st[k + 1]), g, pitch)
            k += V
        if ns - k == 2:
            _fwd_tile(xf, xb, cs, tab, c, kk_n, wp, wb, (st[k], st[k + 1]), g, pitch)
        elif ns - k == 1:
            _fwd_tile(xf, xb, cs, tab, c, kk_n, wp, wb, (st[k],), g, pitch)
        for jj in range(min(J, oc - ob * J)):
            o = ob * J + jj
            for r in range(oh):
                for q in range(ow):
                    v = g[_u(jj * pitch + r * wq + q)] + bias[o]
                    if relu and v <= 0.0:  # (the ReLU kernels' rule: NaN stays, -0 -> +0)
                        v = np.float32(0.0)
                    y[b, o, r, q] = v


def _taps_table(c, hq, wq, kh, kw, sh, sw):
    """``tab[i*kw + j]``: offset of tap (i, j) in a grid-layout image (``c`` channels of
    ``sh*sw`` phases of ``hq x wq``) relative to the output's grid position."""
    sub = hq * wq
    return np.array([((i % sh) * sw + j % sw) * sub + (i // sh) * wq + j // sw
                     for i in range(kh) for j in range(kw)], np.int64)


def _direct(x, w, bias, sh, sw, pt, pl, relu, y):
    """``y`` = the direct convolution of ``x`` (any stride and padding) plus bias, ReLU."""
    n, c = x.shape[:2]
    kh, kw = w.shape[2:]
    oh, ow = y.shape[2:]
    hq, wq = oh + (kh - 1) // sh, ow + (kw - 1) // sw
    xq, xf = _grid_input(n, c, sh * sw, hq, wq, kw)
    _pad_phases(x, pt, pl, sh, sw, xq)
    _forward(xf, c * sh * sw * hq * wq, sh * sw * hq * wq, _taps_table(c, hq, wq, kh, kw, sh, sw), w, bias,
             int(relu), wq, y)


def conv2d_direct_forward(x, w, bias, sh, sw, pt, pl, relu, y):
    """Direct convolution with fused bias and optional ReLU
    (see :func:`fastcnn._ref.conv2d_direct_forward`)."""
    _backend.sizes_conv2d_direct_forward(x.shape, w.shape, bias.shape, sh, sw, pt, pl, relu, y.shape)
    _direct(x, w, bias, sh, sw, pt, pl, relu, y)


def conv2d_direct_forward_maxpool2(x, w, bias, sh, sw, pt, pl, relu, oh, ow, y, idx):
    """The direct forward, then 2x2 max pooling of its output
    (see :func:`fastcnn._ref.conv2d_direct_forward_maxpool2`)."""
    _backend.sizes_conv2d_direct_forward_maxpool2(x.shape, w.shape, bias.shape, sh, sw, pt, pl, relu, oh, ow,
                                                  y.shape, idx.shape)
    full = np.empty(y.shape[:2] + (oh, ow), np.float32)
    _direct(x, w, bias, sh, sw, pt, pl, relu, full)
    _pool.maxpool2d_forward(full, 2, 2, 2, 2, 0, 0, y, idx if idx.size else np.empty(y.shape, np.int32))


@parallel_kernel(fma=True)
def _dilate_flip(gy, w, sh, sw, gd, wt):
    """``gd[n, o, r*sh, q*sw] = gy[n, o, r, q]`` (zeros elsewhere) and
    ``wt[c, o, i, j] = w[o, c, kh-1-i, kw-1-j]``."""
    n, oc, oh, ow = gy.shape
    c, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    for t in prange(n * oc):
        b = t // oc
        o = t - b * oc
        if sh == 1 and sw == 1:
            for r in range(oh):
                for q in range(ow):
                    gd[b, o, r, q] = gy[b, o, r, q]
        else:
            gd[b, o, :, :] = 0.0
            for r in range(oh):
                for q in range(ow):
                    gd[b, o, r * sh, q * sw] = gy[b, o, r, q]
        if b == 0:
            for ci in range(c):
                for i in range(kh):
                    for j in range(kw):
                        wt[ci, o, i, j] = w[o, ci, kh - 1 - i, kw - 1 - j]


def conv2d_direct_backward_data(gy, w, sh, sw, pt, pl, gx):
    """Input gradient (see :func:`fastcnn._ref.conv2d_direct_backward_data`)."""
    _backend.sizes_conv2d_direct_backward_data(gy.shape, w.shape, sh, sw, pt, pl, gx.shape)
    n, oc, oh, ow = gy.shape
    c, kh, kw = w.shape[1:]
    h, wd = gx.shape[2:]
    gd = np.empty((n, oc, (oh - 1) * sh + 1, (ow - 1) * sw + 1), np.float32)
    wt = np.empty((c, oc, kh, kw), np.float32)
    _dilate_flip(gy, w, sh, sw, gd, wt)
    # gx[h] = sum_i w[i] gd[h + pt - i] = sum_i' wt[i'] gd[h - (kh-1-pt) + i']: a stride-1
    # convolution with top/left padding kh-1-pt, kw-1-pl and output size H x W.
    _direct(gd, wt, np.zeros(c, np.float32), 1, 1, kh - 1 - pt, kw - 1 - pl, False, gx)


@parallel_kernel(fma=True)
def _pitch_gy(gy, gp):
    """``gp[n, o, r, q] = gy[n, o, r, q]`` for q < OW, 0 for the extra columns."""
    n, oc, oh, ow = gy.shape
    pw = gp.shape[3]
    for t in prange(n * oc):
        b = t // oc
        o = t - b * oc
        for r in range(oh):
            for q in range(ow):
                gp[b, o, r, q] = gy[b, o, r, q]
            for q in range(ow, pw):
                gp[b, o, r, q] = 0.0


@helper
def _wgrad_taps(acc, a0, gf, g0, xf, x0, js, m):
    """``acc[a0 + j*m + e] += gf[g0+e] * xf[x0+e+j]`` for the taps ``j`` in ``js`` (a tuple: a
    constant count, unrolled) and e < m, element-wise."""
    for e in range(m):
        g = gf[_u(g0 + e)]
        for j in js:
            acc[_u(a0 + j * m + e)] += g * xf[_u(x0 + e + j)]


@njit(**NUMBA_SERIAL_FMA)
def _wgrad_row(acc, a0, gf, g0, xf, x0, kw, m):
    """``acc[a0 + j*m + e] += gf[g0+e] * xf[x0+e+j]`` for j < kw, e < m (element-wise)."""
    if kw == 3:
        _wgrad_taps(acc, a0, gf, g0, xf, x0, (0, 1, 2), m)
    elif kw == 5:
        _wgrad_taps(acc, a0, gf, g0, xf, x0, (0, 1, 2, 3, 4), m)
    else:
        for j in range(kw):
            for e in range(m):
                acc[_u(a0 + j * m + e)] += gf[_u(g0 + e)] * xf[_u(x0 + e + j)]


@helper
def _wgrad4_taps(acc, a0, gf, g0, gs, xf, x0, xs, js, m):
    """:func:`_wgrad_taps` for the 4 images at offsets ``g0 + q*gs``, ``x0 + q*xs``: each
    partial sum stays in a register over the 4 images, added in image order (so the same
    bytes as one image at a time).  At most 3 taps: with 5 LLVM did not vectorise the loop
    (runtime alias checks over too many streams)."""
    for e in range(m):
        g_0 = gf[_u(g0 + e)]
        g_1 = gf[_u(g0 + gs + e)]
        g_2 = gf[_u(g0 + 2 * gs + e)]
        g_3 = gf[_u(g0 + 3 * gs + e)]
        for j in js:
            s = acc[_u(a0 + j * m + e)]
            s += g_0 * xf[_u(x0 + e + j)]
            s += g_1 * xf[_u(x0 + xs + e + j)]
            s += g_2 * xf[_u(x0 + 2 * xs + e + j)]
            s += g_3 * xf[_u(x0 + 3 * xs + e + j)]
            acc[_u(a0 + j * m + e)] = s


@njit(**NUMBA_SERIAL_FMA)
def _wgrad_row4(acc, a0, gf, g0, gs, xf, x0, xs, kw, m):
    """:func:`_wgrad_row` for the 4 images at offsets ``g0 + q*gs``, ``x0 + q*xs`` (kw <= 3)."""
    if kw == 3:
        _wgrad4_taps(acc, a0, gf, g0, gs, xf, x0, xs, (0, 1, 2), m)
    elif kw == 2:
        _wgrad4_taps(acc, a0, gf, g0, gs, xf, x0, xs, (0, 1), m)
    else:
        _wgrad4_taps(acc, a0, gf, g0, gs, xf, x0, xs, (0,), m)


@njit(**NUMBA_SERIAL_FMA)
def _wgrad_row_strided(acc, a0, gf, g0, xf, x0, kw, m, sw):
    for j in range(kw):
        for e in range(m):
            acc[_u(a0 + j * m + e)] += gf[_u(g0 + e)] * xf[_u(x0 + e * sw + j)]


@parallel_kernel(fma=True)
def _backward_weight(gp, xp, sh, sw, oh, ow, gw):
    """``gw[o, c]``: one work item per channel pair; partial sums per tap and output pixel
    (over images, in order), then each tap's partials summed in pixel order (float64)."""
    n, oc, _, pitch = gp.shape
    c, hp, wp = xp.shape[1], xp.shape[2], xp.shape[3]
    kh, kw = gw.shape[2], gw.shape[3]
    flat = sh == 1 and sw == 1
    m = (oh - 1) * pitch + ow if flat else ow  # run length of one pass
    gf = gp.reshape(gp.size)
    xf = xp.reshape(xp.size)
    plane = hp * wp
    gplane = oh * pitch
    for t in prange(oc * c):
        o = t // c
        ci = t - o * c
        rows = 1 if flat else oh
        run = rows * m  # partials per tap
        acc = np.zeros(kh * kw * run, np.float32)
        b4 = 0
        if flat and kw <= 3:  # images 4 at a time, then one at a time (helps 3x3, not 5x5)
            while b4 + 4 <= n:
                g0 = (b4 * oc + o) * gplane
                xc = (b4 * c + ci) * plane
                for i in range(kh):
                    _wgrad_row4(acc, i * kw * run, gf, g0, oc * gplane, xf, xc + i * wp, c * plane, kw, m)
                b4 += 4
        for b in range(b4, n):
            g0 = (b * oc + o) * gplane
            xc = (b * c + ci) * plane
            for i in range(kh):
                a0 = i * kw * run
                if flat:
                    _wgrad_row(acc, a0, gf, g0, xf, xc + i * wp, kw, m)
                else:
                    for r in range(oh):
                        _wgrad_row_strided(acc, a0 + r * m * kw, gf, g0 + r * pitch, xf,
                                           xc + (r * sh + i) * wp, kw, m, sw)
        for i in range(kh):
            for j in range(kw):
                s = 0.0
                if flat:
                    base = (i * kw + j) * run
                    for e in range(run):
                        s += np.float64(acc[_u(base + e)])
                else:
                    for r in range(oh):
                        base = i * kw * run + r * m * kw + j * m
                        for e in range(m):
                            s += np.float64(acc[_u(base + e)])
                gw[o, ci, i, j] = np.float32(s)


@parallel_kernel(fma=True)
def _bias_grad(gy, gb):
    """``gb[o]`` = float64 sum of ``gy[:, o]``: element-wise partials over images, then pixels."""
    n, oc, oh, ow = gy.shape
    p = oh * ow
    gf = gy.reshape(gy.size)
    for o in prange(oc):
        acc = np.zeros(p, np.float64)
        for b in range(n):
            add_plane(acc, 0, gf, (b * oc + o) * p, p)
        gb[o] = np.float32(total(acc, 0, p))


def conv2d_direct_backward_weight(gy, x, sh, sw, pt, pl, gw, gb):
    """Weight and bias gradients (see :func:`fastcnn._ref.conv2d_direct_backward_weight`)."""
    _backend.sizes_conv2d_direct_backward_weight(gy.shape, x.shape, sh, sw, pt, pl, gw.shape, gb.shape)
    n, c = x.shape[:2]
    oh, ow = gy.shape[2:]
    kh, kw = gw.shape[2:]
    xp = np.empty((n, c, (oh - 1) * sh + kh, (ow - 1) * sw + kw), np.float32)
    _pad(x, pt, pl, xp)
    if sh == 1 and sw == 1 and kw > 1:  # output gradient at the padded row pitch
        g = np.empty((n, gy.shape[1], oh, xp.shape[3]), np.float32)
        _pitch_gy(gy, g)
    else:
        g = gy
    _backward_weight(g, xp, sh, sw, oh, ow, gw)
    if gb.shape[0]:  # (an empty gb: no bias gradient wanted)
        _bias_grad(gy, gb)


def conv2d_direct_backward_maxpool2(gp, idx, y, x, w, sh, sw, pt, pl, oh, ow, gx, gw, gb):
    """Gradients of the pooled direct forward, composed of this backend's primitives
    (see :func:`fastcnn._ref.conv2d_direct_backward_maxpool2`)."""
    _backend.sizes_conv2d_direct_backward_maxpool2(gp.shape, idx.shape, y.shape, x.shape, w.shape, sh, sw, pt, pl,
                                                   oh, ow, gx.shape, gw.shape, gb.shape)
    g = gp
    if y.size:
        g = np.empty_like(gp)
        _activation.relu_backward(gp, y, g)
    full = np.empty(gp.shape[:2] + (oh, ow), np.float32)
    _pool.maxpool2d_backward(g, idx, full)
    conv2d_direct_backward_weight(full, x, sh, sw, pt, pl, gw, gb)
    if gx.size:
        conv2d_direct_backward_data(full, w, sh, sw, pt, pl, gx)
