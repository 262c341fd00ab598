"""Numba kernels of max and average pooling (forward and backward).

Every ``prange`` iteration owns one (n, c) plane of the output, so there are no write races;
sums run in a fixed order, so results are bit-identical run after run.

Forward: each output row is split into border windows (some columns in the padding: scalar
code with per-window bounds) and interior windows (all kw columns real), which accumulate in
registers, one window per iteration of a loop over the outputs.  For the common geometries
(2x2 and 3x3 windows, stride 1 or 2) that loop is compiled with literal window sizes and
stride, so LLVM unrolls the window and vectorises across outputs; other geometries take the
same code with runtime sizes.  Window rows that lie in the padding are skipped for the whole
output row.
"""
import numpy as np
from numba import njit, prange

from .._config import NUMBA_SERIAL
from ._parallel import parallel_kernel
from .conv import _u, _valid_range, _valid_ranges


@njit(**NUMBA_SERIAL)
def _interior(kw, sw, pl, w, ow):
    """Outputs ``[lo, hi)`` whose kw window columns all lie in ``[0, w)``."""
    return _valid_range(-pl, sw, w - kw + 1, ow)


@njit(**NUMBA_SERIAL)
def _max_window(xf, x0, w, ih0, ih1, iw0, iw1):
    """Scan rule of the contract: first real cell, replaced when ``v > b`` or (v NaN, b not)."""
    b = xf[_u(x0 + ih0 * w + iw0)]
    bi = ih0 * w + iw0
    for ih in range(ih0, ih1):
        jw0 = iw0 + 1 if ih == ih0 else iw0
        for iw in range(jw0, iw1):
            v = xf[_u(x0 + ih * w + iw)]
            if v > b or (v != v and b == b):
                b = v
                bi = ih * w + iw
    return b, bi


@njit(**NUMBA_SERIAL)
def _max_row(xf, x0, w, ih0, nr, c0, lo, hi, r, yf, jf, kw, sw):
    """Interior windows ``u`` in ``[lo, hi)`` of one output row: rows ``ih0 .. ih0+nr-1``,
    columns ``u*sw + c0 + [0, kw)``, all real.  Same scan rule as :func:`_max_window` (the
    first cell compared with itself never replaces)."""
    for u in range(lo, hi):
        k0 = ih0 * w + u * sw + c0
        b = xf[_u(x0 + k0)]
        bi = k0
        for i in range(nr):
            k = k0 + i * w
            for j in range(kw):
                v = xf[_u(x0 + k + j)]
                take = (v > b) | ((v != v) & (b == b))
                bi = k + j if take else bi
                b = v if take else b
        yf[_u(r + u)] = b
        jf[_u(r + u)] = bi


@parallel_kernel
def maxpool2d_forward(x, kh, kw, sh, sw, pt, pl, y, idx):
    """Max pooling with int32 arg-max indices (see :func:`fastcnn._ref.maxpool2d_forward`)."""
    n, c, h, w = x.shape
    oh = y.shape[2]
    ow = y.shape[3]
    hw = h * w
    p = oh * ow
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    jf = idx.reshape(idx.size)
    lo, hi = _interior(kw, sw, pl, w, ow)
    for t in prange(n * c):
        x0 = t * hw
        y0 = t * p
        for q in range(oh):
            hs = q * sh - pt
            ih0 = max(hs, 0)
            ih1 = min(hs + kh, h)
            nr = ih1 - ih0
            r = y0 + q * ow
            # border windows (some columns in the padding)
            for k in range(ow - (hi - lo)):
                u = k if k < lo else k + (hi - lo)
                ws = u * sw - pl
                b, bi = _max_window(xf, x0, w, ih0, ih1, max(ws, 0), min(ws + kw, w))
                yf[_u(r + u)] = b
                jf[_u(r + u)] = bi
            # interior windows; common geometries with compile-time sizes (vectorised)
            if nr == kh and kh == 2 and kw == 2 and sw == 2:
                _max_row(xf, x0, w, ih0, 2, -pl, lo, hi, r, yf, jf, 2, 2)
            elif nr == kh and kh == 3 and kw == 3 and sw == 2:
                _max_row(xf, x0, w, ih0, 3, -pl, lo, hi, r, yf, jf, 3, 2)
            elif nr == kh and kh == 3 and kw == 3 and sw == 1:
                _max_row(xf, x0, w, ih0, 3, -pl, lo, hi, r, yf, jf, 3, 1)
            elif nr == kh and kh == 2 and kw == 2 and sw == 1:
                _max_row(xf, x0, w, ih0, 2, -pl, lo, hi, r, yf, jf, 2, 1)
            else:
                _max_row(xf, x0, w, ih0, nr, -pl, lo, hi, r, yf, jf, kw, sw)


@parallel_kernel
def maxpool2d_backward(gy, idx, gx):
    """Route each output gradient to its arg-max (see :func:`fastcnn._ref.maxpool2d_backward`)."""
    n, c, h, w = gx.shape
    hw = h * w
    p = gy.shape[2] * gy.shape[3]
    gf = gy.reshape(gy.size)
    jf = idx.reshape(idx.size)
    xf = gx.reshape(gx.size)
    for t in prange(n * c):
        x0 = t * hw
        y0 = t * p
        for e in range(hw):
            xf[_u(x0 + e)] = 0.0
        for e in range(p):
            xf[_u(x0 + jf[_u(y0 + e)])] += gf[_u(y0 + e)]


@njit(**NUMBA_SERIAL)
def _divisors(h, w, kh, kw, sh, sw, pt, pl, oh, ow, count_include_pad):
    """float32 (OH*OW,) divisors, exactly as ``_ref._avg_divisor``."""
    d = np.empty(oh * ow, np.float32)
    for q in range(oh):
        hs = q * sh - pt
        rh = min(hs + kh, h) - max(hs, 0)
        for u in range(ow):
            if count_include_pad:
                d[q * ow + u] = np.float32(kh * kw)
            else:
                ws = u * sw - pl
                d[q * ow + u] = np.float32(rh * (min(ws + kw, w) - max(ws, 0)))
    return d


@njit(**NUMBA_SERIAL)
def _avg_window(xf, x0, w, ih0, ih1, iw0, iw1):
    """Window sum in the reference's order: each row left to right, then the row sums."""
    s = np.float32(0.0)
    for ih in range(ih0, ih1):
        rs = np.float32(0.0)
        for iw in range(iw0, iw1):
            rs += xf[_u(x0 + ih * w + iw)]
        s += rs
    return s


@njit(**NUMBA_SERIAL)
def _avg_row(xf, x0, w, ih0, nr, c0, lo, hi, r, yf, div, d0, kw, sw):
    """Interior windows ``u`` in ``[lo, hi)`` of one output row (see :func:`_max_row`)."""
    for u in range(lo, hi):
        k0 = ih0 * w + u * sw + c0
        s = np.float32(0.0)
        for i in range(nr):
            k = k0 + i * w
            rs = np.float32(0.0)
            for j in range(kw):
                rs += xf[_u(x0 + k + j)]
            s += rs
        yf[_u(r + u)] = s / div[_u(d0 + u)]


@parallel_kernel
def _avgpool2d_forward(x, kh, kw, sh, sw, pt, pl, count_include_pad, y):
    n, c, h, w = x.shape
    oh = y.shape[2]
    ow = y.shape[3]
    hw = h * w
    p = oh * ow
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    div = _divisors(h, w, kh, kw, sh, sw, pt, pl, oh, ow, count_include_pad)
    lo, hi = _interior(kw, sw, pl, w, ow)
    for t in prange(n * c):
        x0 = t * hw
        y0 = t * p
        for q in range(oh):
            hs = q * sh - pt
            ih0 = max(hs, 0)
            ih1 = min(hs + kh, h)
            nr = ih1 - ih0
            r = y0 + q * ow
            d0 = q * ow
            for k in range(ow - (hi - lo)):
                u = k if k < lo else k + (hi - lo)
                ws = u * sw - pl
                s = _avg_window(xf, x0, w, ih0, ih1, max(ws, 0), min(ws + kw, w))
                yf[_u(r + u)] = s / div[_u(d0 + u)]
            if nr == kh and kh == 2 and kw == 2 and sw == 2:
                _avg_row(xf, x0, w, ih0, 2, -pl, lo, hi, r, yf, div, d0, 2, 2)
            elif nr == kh and kh == 3 and kw == 3 and sw == 2:
                _avg_row(xf, x0, w, ih0, 3, -pl, lo, hi, r, yf, div, d0, 3, 2)
            elif nr == kh and kh == 3 and kw == 3 and sw == 1:
                _avg_row(xf, x0, w, ih0, 3, -pl, lo, hi, r, yf, div, d0, 3, 1)
            elif nr == kh and kh == 2 and kw == 2 and sw == 1:
                _avg_row(xf, x0, w, ih0, 2, -pl, lo, hi, r, yf, div, d0, 2, 1)
            else:
                _avg_row(xf, x0, w, ih0, nr, -pl, lo, hi, r, yf, div, d0, kw, sw)


def avgpool2d_forward(x, kh, kw, sh, sw, pt, pl, count_include_pad, y):
    """Average pooling (see :func:`fastcnn._ref.avgpool2d_forward`)."""
    _avgpool2d_forward(x, kh, kw, sh, sw, pt, pl, bool(count_include_pad), y)


@njit(**NUMBA_SERIAL)
def _tile_row(xf, r0, gf, s0, div, d0, ow, kw):
    """One input row of a tiling pooling (kw == sw, no left padding): every cell gets the
    share of its only window, ``0.0 + g`` as the reference's sum (literal ``kw`` at the
    call sites)."""
    z = np.float32(0.0)
    for u in range(ow):
        g = z + gf[_u(s0 + u)] / div[_u(d0 + u)]
        for j in range(kw):
            xf[_u(r0 + u * kw + j)] = g


@parallel_kernel
def _avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, count_include_pad, gx):
    n, c, h, w = gx.shape
    oh = gy.shape[2]
    ow = gy.shape[3]
    hw = h * w
    p = oh * ow
    gf = gy.reshape(gy.size)
    xf = gx.reshape(gx.size)
    div = _divisors(h, w, kh, kw, sh, sw, pt, pl, oh, ow, count_include_pad)
    wlo, whi = _valid_ranges(kw, pl, sw, w, ow)
    if kh == sh and kw == sw and pt == 0 and pl == 0 and oh * kh <= h and ow * kw <= w:
        # Windows tile the input: each cell has at most one window, no sum needed.
        for t in prange(n * c):
            x0 = t * hw
            y0 = t * p
            for ih in range(h):
                q = ih // kh
                r0 = x0 + ih * w
                if q >= oh:
                    for iw in range(w):
                        xf[_u(r0 + iw)] = 0.0
                else:
                    if kw == 2:
                        _tile_row(xf, r0, gf, y0 + q * ow, div, q * ow, ow, 2)
                    else:
                        _tile_row(xf, r0, gf, y0 + q * ow, div, q * ow, ow, kw)
                    for iw in range(ow * kw, w):
                        xf[_u(r0 + iw)] = 0.0
        return
    # As the reference: for each window cell (i, j), every output adds its share to one input
    # cell; per input cell the shares arrive in (i, j) order.
    for t in prange(n * c):
        x0 = t * hw
        y0 = t * p
        for e in range(hw):
            xf[_u(x0 + e)] = 0.0
        for i in range(kh):
            qlo, qhi = _valid_range(i - pt, sh, h, oh)
            for j in range(kw):
                lo = wlo[j]
                hi = whi[j]
                off = j - pl
                for q in range(qlo, qhi):
                    dd = x0 + (q * sh - pt + i) * w + off
                    s0 = y0 + q * ow
                    d0 = q * ow
                    for u in range(lo, hi):
                        xf[_u(dd + u * sw)] += gf[_u(s0 + u)] / div[_u(d0 + u)]


def avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, count_include_pad, gx):
    """Gradient of average pooling (see :func:`fastcnn._ref.avgpool2d_backward`)."""
    _avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, bool(count_include_pad), gx)
