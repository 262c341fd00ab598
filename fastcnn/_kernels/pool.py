"""Numba kernels of max and average pooling (forward and backward).

Every ``prange`` iteration owns one (n, c) plane of the output, so there are no write races;
sums run in a fixed order, so results are bit-identical run after run.

Forward (one kernel for both poolings: max pooling when given the indices ``jf``, average
pooling when given the divisors ``div``; Numba compiles each case on its own, the other's code
pruned): each output row is split into border windows (some columns in the padding: scalar
code with per-window bounds) and interior windows (all kw columns real), which accumulate in
registers, one window per iteration of a loop over the outputs.  For the common geometries
(2x2 and 3x3 windows, stride 1 or 2) that loop is compiled with literal window sizes and
stride, so LLVM unrolls the window and vectorises across outputs; other geometries take the
same code with runtime sizes.  Window rows that lie in the padding are skipped for the whole
output row.  The 2x2 stride-2 max pooling (after every pooled convolution) takes explicit
vectors of ``VL`` windows instead (:func:`._simd.pool2_row`: masked loads of the two rows,
even and odd lanes by shuffles, the scan rule by compares and selects), which LLVM did not
form from the loop.
"""
import numpy as np
from numba import njit, prange

from .. import _backend, _ref
from .._config import NUMBA_SERIAL
from ._common import _u, flat_or_none, fold_tap, helper, parallel_kernel, valid_range
from ._simd import VL, pool2_row


@helper
def _replaces(v, b):
    """Whether a later real cell ``v`` replaces the best ``b`` so far: the scan rule of
    :func:`fastcnn._ref.maxpool2d_forward` (branch-free form)."""
    return (v > b) | ((v != v) & (b == b))


@njit(**NUMBA_SERIAL)
def _window(xf, x0, w, ih0, ih1, iw0, iw1, yf, jf, div, e, d):
    """One border window (rows ``[ih0, ih1)``, columns ``[iw0, iw1)``) into output ``e``:
    its maximum from its first real cell on, or its sum in the reference's order (each row
    left to right, then the row sums) divided by ``div[d]``."""
    if jf is not None:
        b = xf[_u(x0 + ih0 * w + iw0)]
        bi = ih0 * w + iw0
        for ih in range(ih0, ih1):
            for iw in range(iw0 + 1 if ih == ih0 else iw0, iw1):
                v = xf[_u(x0 + ih * w + iw)]
                if _replaces(v, b):
                    b = v
                    bi = ih * w + iw
        yf[_u(e)] = b
        jf[_u(e)] = bi
    if div is not None:
        s = np.float32(0.0)
        for ih in range(ih0, ih1):
            rs = np.float32(0.0)
            for iw in range(iw0, iw1):
                rs += xf[_u(x0 + ih * w + iw)]
            s += rs
        yf[_u(e)] = s / div[_u(d)]


@njit(**NUMBA_SERIAL)
def _row(xf, x0, w, ih0, nr, c0, lo, hi, r, yf, jf, div, d0, kw, sw):
    """Interior windows ``u`` in ``[lo, hi)`` of one output row: rows ``ih0 .. ih0+nr-1``,
    columns ``u*sw + c0 + [0, kw)``, all real; as :func:`_window` (branch-free: the first cell
    compared with itself never replaces)."""
    for u in range(lo, hi):
        k0 = ih0 * w + u * sw + c0
        if jf is not None:
            b = xf[_u(x0 + k0)]
            bi = k0
            for i in range(nr):
                k = k0 + i * w
                for j in range(kw):
                    v = xf[_u(x0 + k + j)]
                    take = _replaces(v, b)
                    bi = k + j if take else bi
                    b = v if take else b
            yf[_u(r + u)] = b
            jf[_u(r + u)] = bi
        if div is not None:
            s = np.float32(0.0)
            for i in range(nr):
                k = k0 + i * w
                rs = np.float32(0.0)
                for j in range(kw):
                    rs += xf[_u(x0 + k + j)]
                s += rs
            yf[_u(r + u)] = s / div[_u(d0 + u)]


@parallel_kernel
def _pool_forward(x, kh, kw, sh, sw, pt, pl, y, idx, div):
    """Max pooling into ``y`` and the indices ``idx`` (``div`` None), or average pooling into
    ``y`` divided by the flat divisors ``div`` (``idx`` None)."""
    if idx is not None:
        _backend.sizes_maxpool2d_forward(x.shape, kh, kw, sh, sw, pt, pl, y.shape, idx.shape)
    if div is not None:
        _backend.sizes_avgpool2d_forward(x.shape, kh, kw, sh, sw, pt, pl, False, y.shape)
    jf = flat_or_none(idx)
    n, c, h, w = x.shape
    oh = y.shape[2]
    ow = y.shape[3]
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    lo, hi = valid_range(-pl, sw, w - kw + 1, ow)  # interior: all kw window columns real
    for t in prange(n * c):
        x0 = t * h * w
        for q in range(oh):
            ih0 = max(q * sh - pt, 0)
            nr = min(q * sh - pt + kh, h) - ih0
            r = (t * oh + q) * ow
            for k in range(ow - (hi - lo)):  # border windows (some columns in the padding)
                u = k if k < lo else k + (hi - lo)
                _window(xf, x0, w, ih0, ih0 + nr, max(u * sw - pl, 0), min(u * sw - pl + kw, w),
                        yf, jf, div, r + u, q * ow + u)
            # interior windows; common geometries with compile-time sizes (vectorised)
            if nr == kh and kh == 2 and kw == 2 and sw == 2:
                if idx is not None:  # (max: explicit vectors of VL windows, the last masked)
                    for u0 in range(lo, hi, VL):
                        k0 = ih0 * w + 2 * u0 - pl
                        pool2_row(xf, x0 + k0, x0 + k0 + w, min(VL, hi - u0), yf, jf, r + u0, k0, w)
                else:
                    _row(xf, x0, w, ih0, 2, -pl, lo, hi, r, yf, jf, div, q * ow, 2, 2)
            elif nr == kh and kh == 3 and kw == 3 and sw == 2:
                _row(xf, x0, w, ih0, 3, -pl, lo, hi, r, yf, jf, div, q * ow, 3, 2)
            elif nr == kh and kh == 3 and kw == 3 and sw == 1:
                _row(xf, x0, w, ih0, 3, -pl, lo, hi, r, yf, jf, div, q * ow, 3, 1)
            elif nr == kh and kh == 2 and kw == 2 and sw == 1:
                _row(xf, x0, w, ih0, 2, -pl, lo, hi, r, yf, jf, div, q * ow, 2, 1)
            else:
                _row(xf, x0, w, ih0, nr, -pl, lo, hi, r, yf, jf, div, q * ow, kw, sw)


def maxpool2d_forward(x, kh, kw, sh, sw, pt, pl, y, idx):
    """Max pooling with int32 arg-max indices (see :func:`fastcnn._ref.maxpool2d_forward`)."""
    _pool_forward(x, kh, kw, sh, sw, pt, pl, y, idx, None)


def avgpool2d_forward(x, kh, kw, sh, sw, pt, pl, count_include_pad, y):
    """Average pooling (see :func:`fastcnn._ref.avgpool2d_forward`)."""
    div = _ref.avg_divisor(x.shape[2], x.shape[3], kh, kw, sh, sw, pt, pl, y.shape[2], y.shape[3],
                           bool(count_include_pad))
    _pool_forward(x, kh, kw, sh, sw, pt, pl, y, None, div.reshape(-1))


@parallel_kernel
def _maxpool2d_backward(gy, idx, gx):
    _backend.sizes_maxpool2d_backward(gy.shape, idx.shape, gx.shape)
    n, c, h, w = gx.shape
    p = gy.shape[2] * gy.shape[3]
    gf = gy.reshape(gy.size)
    jf = idx.reshape(idx.size)
    xf = gx.reshape(gx.size)
    bad = 0
    for t in prange(n * c):
        x0 = t * h * w
        for e in range(h * w):
            xf[_u(x0 + e)] = 0.0
        out = 0  # indices outside the plane: counted, and the plane left zero
        for e in range(p):
            k = jf[_u(t * p + e)]
            out += (k < 0) | (k >= h * w)
        if out:
            bad += out
            continue
        for e in range(p):
            xf[_u(x0 + jf[_u(t * p + e)])] += gf[_u(t * p + e)]
    return bad


def maxpool2d_backward(gy, idx, gx):
    """Route each output gradient to its arg-max (see :func:`fastcnn._ref.maxpool2d_backward`)."""
    bad = _maxpool2d_backward(gy, idx, gx)
    if bad:
        _backend.check_in_range("maxpool2d_backward", bad, "indices (into the input plane)")


@njit(**NUMBA_SERIAL)
def _tile_rows(xf, r0, kh, w, gf, s0, div, d0, ow, kw):
    """The ``kh`` input rows (from ``xf[r0]``, pitch ``w``) under one row of windows of a
    tiling pooling (kw == sw, no left padding): every cell gets the share of its only window,
    ``0.0 + g`` as the reference's sum, each share computed once; the cells past the last
    window zero (literal ``kw`` at the call sites)."""
    z = np.float32(0.0)
    for u in range(ow):
        g = z + gf[_u(s0 + u)] / div[_u(d0 + u)]
        for r in range(kh):
            for j in range(kw):
                xf[_u(r0 + r * w + u * kw + j)] = g
    for r in range(kh):
        for iw in range(ow * kw, w):
            xf[_u(r0 + r * w + iw)] = 0.0


@parallel_kernel
def _avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, div, tiled, gx):
    _backend.sizes_avgpool2d_backward(gy.shape, kh, kw, sh, sw, pt, pl, False, gx.shape)
    n, c, h, w = gx.shape
    oh = gy.shape[2]
    ow = gy.shape[3]
    gf = gy.reshape(gy.size)
    xf = gx.reshape(gx.size)
    if tiled:  # (_ref.windows_tile: each cell has at most one window, no sum needed)
        for t in prange(n * c):
            for q in range(oh):  # (one call per row of windows: one per input row cost more than its work)
                r0 = (t * h + q * kh) * w
                if kw == 2:
                    _tile_rows(xf, r0, kh, w, gf, (t * oh + q) * ow, div, q * ow, ow, 2)
                else:
                    _tile_rows(xf, r0, kh, w, gf, (t * oh + q) * ow, div, q * ow, ow, kw)
            for e in range((t * h + oh * kh) * w, (t + 1) * h * w):  # (rows past the last window)
                xf[_u(e)] = 0.0
        return
    # As the reference: for each window cell (i, j), every output adds its share to one input
    # cell; per input cell the shares arrive in (i, j) order.
    for t in prange(n * c):
        for e in range(t * h * w, (t + 1) * h * w):
            xf[_u(e)] = 0.0
        for i in range(kh):
            for j in range(kw):
                fold_tap(xf, t * h * w, gf, t * oh * ow, div, i, j, h, w, sh, sw, pt, pl, oh, ow)


def avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, count_include_pad, gx):
    """Gradient of average pooling (see :func:`fastcnn._ref.avgpool2d_backward`)."""
    div = _ref.avg_divisor(gx.shape[2], gx.shape[3], kh, kw, sh, sw, pt, pl, gy.shape[2],
                           gy.shape[3], bool(count_include_pad))
    tiled = _ref.windows_tile(gx.shape[2], gx.shape[3], kh, kw, sh, sw, pt, pl, gy.shape[2], gy.shape[3])
    _avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, div.reshape(-1), tiled, gx)
