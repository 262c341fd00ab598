"""Numba kernels of max and average pooling (forward and backward).

Every ``prange`` iteration owns one (n, c) plane of the output, so there are no write races;
sums run in a fixed order, so results are bit-identical run after run.

Each output row is split into border windows (some columns in the padding: scalar code with
per-window bounds) and interior windows (all kw columns real: the window cells are visited in
row-major order, and for each cell a simple loop over the interior outputs runs, which LLVM
vectorises).  Rows of a window that lie in the padding are skipped for the whole output row.
"""
import numpy as np
from numba import njit, prange

from .._config import NUMBA_PARALLEL, NUMBA_SERIAL
from .conv import _valid_range


@njit(**NUMBA_SERIAL)
def _interior(kw, sw, pl, w, ow):
    """Outputs ``[lo, hi)`` whose kw window columns all lie in ``[0, w)``."""
    return _valid_range(-pl, sw, w - kw + 1, ow)


@njit(**NUMBA_SERIAL)
def _max_window(xf, x0, w, ih0, ih1, iw0, iw1):
    """Scan rule of the contract: first real cell, replaced when ``v > b`` or (v NaN, b not)."""
    b = xf[x0 + ih0 * w + iw0]
    bi = ih0 * w + iw0
    for ih in range(ih0, ih1):
        jw0 = iw0 + 1 if ih == ih0 else iw0
        for iw in range(jw0, iw1):
            v = xf[x0 + ih * w + iw]
            if v > b or (v != v and b == b):
                b = v
                bi = ih * w + iw
    return b, bi


@njit(**NUMBA_PARALLEL)
def maxpool2d_forward(x, kh, kw, sh, sw, pt, pl, y, idx):
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
            r = y0 + q * ow
            # border windows
            for k in range(ow - (hi - lo)):
                u = k if k < lo else k + (hi - lo)
                ws = u * sw - pl
                b, bi = _max_window(xf, x0, w, ih0, ih1, max(ws, 0), min(ws + kw, w))
                yf[r + u] = b
                jf[r + u] = bi
            if hi <= lo:
                continue
            # interior windows: start from the window's first cell (row ih0, column 0)
            base = x0 + ih0 * w - pl
            ib = ih0 * w - pl
            if sw == 1:
                for u in range(lo, hi):
                    yf[r + u] = xf[base + u]
                    jf[r + u] = ib + u
            else:
                for u in range(lo, hi):
                    yf[r + u] = xf[base + u * sw]
                    jf[r + u] = ib + u * sw
            for ih in range(ih0, ih1):
                for j in range(kw):
                    if ih == ih0 and j == 0:
                        continue
                    base = x0 + ih * w + j - pl
                    ib = ih * w + j - pl
                    for u in range(lo, hi):
                        v = xf[base + u * sw]
                        bv = yf[r + u]
                        bj = jf[r + u]
                        take = (v > bv) | ((v != v) & (bv == bv))
                        yf[r + u] = v if take else bv
                        jf[r + u] = np.int32(ib + u * sw) if take else bj


@njit(**NUMBA_PARALLEL)
def maxpool2d_backward(gy, idx, gx):
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
            xf[x0 + e] = 0.0
        for e in range(p):
            xf[x0 + jf[y0 + e]] += gf[y0 + e]


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


@njit(**NUMBA_PARALLEL)
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
            r = y0 + q * ow
            for k in range(ow - (hi - lo)):
                u = k if k < lo else k + (hi - lo)
                ws = u * sw - pl
                iw0 = max(ws, 0)
                iw1 = min(ws + kw, w)
                s = np.float32(0.0)
                for ih in range(ih0, ih1):
                    for iw in range(iw0, iw1):
                        s += xf[x0 + ih * w + iw]
                yf[r + u] = s
            if hi > lo:
                for u in range(lo, hi):
                    yf[r + u] = 0.0
                for ih in range(ih0, ih1):
                    for j in range(kw):
                        base = x0 + ih * w + j - pl
                        if sw == 1:
                            for u in range(lo, hi):
                                yf[r + u] += xf[base + u]
                        else:
                            for u in range(lo, hi):
                                yf[r + u] += xf[base + u * sw]
            d0 = q * ow
            for u in range(ow):
                yf[r + u] = yf[r + u] / div[d0 + u]


def avgpool2d_forward(x, kh, kw, sh, sw, pt, pl, count_include_pad, y):
    _avgpool2d_forward(x, kh, kw, sh, sw, pt, pl, bool(count_include_pad), y)


@njit(**NUMBA_PARALLEL)
def _avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, count_include_pad, gx):
    n, c, h, w = gx.shape
    oh = gy.shape[2]
    ow = gy.shape[3]
    hw = h * w
    p = oh * ow
    gf = gy.reshape(gy.size)
    xf = gx.reshape(gx.size)
    div = _divisors(h, w, kh, kw, sh, sw, pt, pl, oh, ow, count_include_pad)
    wlo = np.empty(kw, np.int64)
    whi = np.empty(kw, np.int64)
    for j in range(kw):
        a, b = _valid_range(j - pl, sw, w, ow)
        wlo[j] = a
        whi[j] = b
    # As the reference: for each window cell (i, j), every output adds its share to one input
    # cell; per input cell the shares arrive in (i, j) order.
    for t in prange(n * c):
        x0 = t * hw
        y0 = t * p
        for e in range(hw):
            xf[x0 + e] = 0.0
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
                    if sw == 1:
                        for u in range(lo, hi):
                            xf[dd + u] += gf[s0 + u] / div[d0 + u]
                    else:
                        for u in range(lo, hi):
                            xf[dd + u * sw] += gf[s0 + u] / div[d0 + u]


def avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, count_include_pad, gx):
    _avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, bool(count_include_pad), gx)
