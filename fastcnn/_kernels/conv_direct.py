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

#: Forward runs are rounded up to a multiple of this (one zmm of float32): the few extra
#: outputs land in dropped columns, and the vector loop needs no scalar remainder.
_VEC = 16


def _padded_buffer(n, c, hp, wp):
    """An (n, c, hp, wp) float32 buffer followed by ``_VEC`` zeros (read by rounded-up runs)."""
    flat = np.empty(n * c * hp * wp + _VEC, np.float32)
    flat[n * c * hp * wp:] = 0.0
    return flat[:n * c * hp * wp].reshape(n, c, hp, wp), flat


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


@helper
def _w3(wf, w0):
    return wf[w0], wf[w0 + 1], wf[w0 + 2]


@helper
def _w5(wf, w0):
    return wf[w0], wf[w0 + 1], wf[w0 + 2], wf[w0 + 3], wf[w0 + 4]


@helper
def _taps(acc, a0, xf, x0, ks, m):
    """``acc[a0+e] += sum_j ks[j] * xf[x0+e+j]`` for e < m, taps added in j order; ``ks`` is a
    tuple of weights (a constant count: the tap loop is unrolled, the weights stay in
    registers and the loop over e vectorises)."""
    for e in range(m):
        s = acc[_u(a0 + e)]
        for j in range(len(ks)):
            s += ks[j] * xf[_u(x0 + e + j)]
        acc[_u(a0 + e)] = s


@helper
def _taps2(acc, d, xf, x0, ka, kb, m):
    """:func:`_taps` for two output channels at once (weights ``ka`` and ``kb``, sums at
    ``acc[e]`` and ``acc[d + e]``): each input load feeds two FMAs."""
    for e in range(m):
        s = acc[_u(e)]
        t = acc[_u(d + e)]
        for j in range(len(ka)):
            v = xf[_u(x0 + e + j)]
            s += ka[j] * v
            t += kb[j] * v
        acc[_u(e)] = s
        acc[_u(d + e)] = t


@njit(**NUMBA_SERIAL_FMA)
def _row_acc(acc, a0, xf, x0, wf, w0, kw, m):
    """``acc[a0+e] += sum_j wf[w0+j] * xf[x0+e+j]`` for e < m, taps added in j order."""
    if kw == 3:
        _taps(acc, a0, xf, x0, _w3(wf, w0), m)
    elif kw == 5:
        _taps(acc, a0, xf, x0, _w5(wf, w0), m)
    else:
        for j in range(kw):
            kj = wf[w0 + j]
            for e in range(m):
                acc[_u(a0 + e)] += kj * xf[_u(x0 + e + j)]


@njit(**NUMBA_SERIAL_FMA)
def _row_acc2(acc, d, xf, x0, wf, wa, wb, kw, m):
    """:func:`_row_acc` for two output channels at once (weights at ``wa`` and ``wb``, sums at
    ``acc[e]`` and ``acc[d + e]``)."""
    if kw == 3:
        _taps2(acc, d, xf, x0, _w3(wf, wa), _w3(wf, wb), m)
    elif kw == 5:
        _taps2(acc, d, xf, x0, _w5(wf, wa), _w5(wf, wb), m)
    else:
        _row_acc(acc, 0, xf, x0, wf, wa, kw, m)
        _row_acc(acc, d, xf, x0, wf, wb, kw, m)


@parallel_kernel(fma=True)
def _forward(xp, xf, w, bias, relu, y, tile):
    """Stride-1 direct convolution of the padded input ``xp`` (no padding left to apply);
    ``xf`` is its flat buffer with ``_VEC`` elements of tail (see :func:`_padded_buffer`).
    Outputs are computed at the padded row pitch ``wp`` (the extra columns are dropped), in
    blocks of rows of about ``tile`` accumulators (``_config.DIRECT_TILE``)."""
    n, c, hp, wp = xp.shape
    oc, _, kh, kw = w.shape
    oh, ow = y.shape[2], y.shape[3]
    rb = max(1, min(oh, tile // wp))
    nrb = (oh + rb - 1) // rb
    wf = w.reshape(w.size)
    plane = hp * wp
    og = (oc + 1) // 2  # output channels in pairs, the last one maybe alone
    for t in prange(n * og * nrb):
        b = t // (og * nrb)
        rem = t - b * og * nrb
        g = rem // nrb
        r0 = (rem - g * nrb) * rb
        r1 = min(r0 + rb, oh)
        rows = r1 - r0
        m = (rows - 1) * wp + ow
        m = (m + _VEC - 1) // _VEC * _VEC  # <= rows*wp + _VEC - 1
        d = max(rows * wp, m)
        o = 2 * g
        two = o + 1 < oc
        acc = np.empty(2 * d if two else d, np.float32)
        acc[:d] = bias[o]
        if two:
            acc[d:] = bias[o + 1]
        for ci in range(c):
            xc = (b * c + ci) * plane
            for i in range(kh):
                w0 = ((o * c + ci) * kh + i) * kw
                if two:
                    _row_acc2(acc, d, xf, xc + (r0 + i) * wp, wf, w0, w0 + c * kh * kw, kw, m)
                else:
                    _row_acc(acc, 0, xf, xc + (r0 + i) * wp, wf, w0, kw, m)
        for k in range(2 if two else 1):
            for r in range(rows):
                for q in range(ow):
                    v = acc[_u(k * d + r * wp + q)]
                    if relu and v <= 0.0:  # (the ReLU kernels' rule: NaN stays, -0 -> +0)
                        v = np.float32(0.0)
                    y[b, o + k, r0 + r, q] = v


@parallel_kernel(fma=True)
def _phase_split(xp, xq):
    """``xq[n, c, a, e, R, Q] = xp[n, c, R*sh + a, Q*sw + e]`` (0 past the plane), with
    ``(sh, sw) = xq.shape[2:4]``: what a strided convolution reads for one tap becomes a
    contiguous block (row pitch ``Q``), as for stride 1."""
    n, c, hp, wp = xp.shape
    sh, sw, hq, wq = xq.shape[2], xq.shape[3], xq.shape[4], xq.shape[5]
    for t in prange(n * c):
        b = t // c
        ci = t - b * c
        for a in range(sh):
            for e in range(sw):
                for r in range(hq):
                    row = r * sh + a
                    for q in range(wq):
                        col = q * sw + e
                        v = np.float32(0.0)
                        if row < hp and col < wp:
                            v = xp[b, ci, row, col]
                        xq[b, ci, a, e, r, q] = v


@parallel_kernel(fma=True)
def _forward_strided(xq, w, bias, relu, y):
    """Direct convolution with strides ``xq.shape[2:4]`` from the phase-split input: tap
    (i, j) of output (r, q) reads ``xq[.., i % sh, j % sw, r + i // sh, q + j // sw]``, so
    each tap is one contiguous run over the output plane at row pitch ``Q``."""
    n, c, sh, sw, hq, wq = xq.shape
    oc, _, kh, kw = w.shape
    oh, ow = y.shape[2], y.shape[3]
    xf = xq.reshape(xq.size)
    wf = w.reshape(w.size)
    sub = hq * wq
    m = (oh - 1) * wq + ow
    for t in prange(n * oc):
        b = t // oc
        o = t - b * oc
        acc = np.empty(oh * wq, np.float32)
        acc[:] = bias[o]
        for ci in range(c):
            xc = (b * c + ci) * sh * sw * sub
            for i in range(kh):
                w0 = ((o * c + ci) * kh + i) * kw
                for j in range(kw):
                    x0 = xc + ((i % sh) * sw + j % sw) * sub + (i // sh) * wq + j // sw
                    _taps(acc, 0, xf, x0, (wf[w0 + j],), m)
        for r in range(oh):
            for q in range(ow):
                v = acc[_u(r * wq + q)]
                if relu and v <= 0.0:  # (the ReLU kernels' rule: NaN stays, -0 -> +0)
                    v = np.float32(0.0)
                y[b, o, r, q] = v


def conv2d_direct_forward(x, w, bias, sh, sw, pt, pl, relu, y):
    """Direct convolution with fused bias and optional ReLU
    (see :func:`fastcnn._ref.conv2d_direct_forward`)."""
    _backend.sizes_conv2d_direct_forward(x.shape, w.shape, bias.shape, sh, sw, pt, pl, relu, y.shape)
    n, c = x.shape[:2]
    kh, kw = w.shape[2:]
    oh, ow = y.shape[2:]
    xp, xf = _padded_buffer(n, c, (oh - 1) * sh + kh, (ow - 1) * sw + kw)
    _pad(x, pt, pl, xp)
    if sh > 1 or sw > 1:  # contiguous runs instead of strided loads
        hp, wp = xp.shape[2:]
        xq = np.empty((n, c, sh, sw, (hp + sh - 1) // sh, (wp + sw - 1) // sw), np.float32)
        _phase_split(xp, xq)
        _forward_strided(xq, w, bias, int(relu), y)
    else:
        _forward(xp, xf, w, bias, int(relu), y, _config.DIRECT_TILE)


def conv2d_direct_forward_maxpool2(x, w, bias, sh, sw, pt, pl, relu, oh, ow, y, idx):
    """The direct forward, then 2x2 max pooling of its output
    (see :func:`fastcnn._ref.conv2d_direct_forward_maxpool2`)."""
    _backend.sizes_conv2d_direct_forward_maxpool2(x.shape, w.shape, bias.shape, sh, sw, pt, pl, relu, oh, ow,
                                                  y.shape, idx.shape)
    full = np.empty(y.shape[:2] + (oh, ow), np.float32)
    conv2d_direct_forward(x, w, bias, sh, sw, pt, pl, relu, full)
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
    gp, gf = _padded_buffer(n, oc, h - 1 + kh, wd - 1 + kw)
    _pad(gd, kh - 1 - pt, kw - 1 - pl, gp)
    _forward(gp, gf, wt, np.zeros(c, np.float32), 0, gx, _config.DIRECT_TILE)


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
