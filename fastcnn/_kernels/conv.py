"""Numba kernels of the convolution primitives: im2col, col2im and the GEMM reorders.

Layouts and contracts are those of :mod:`fastcnn._ref`.  Every parallel loop writes disjoint
parts of its output (no ``+=`` into a location shared by two ``prange`` iterations), and every
sum is accumulated in a fixed order, so results are bit-identical run after run and whatever
the number of threads.
"""
import numpy as np
from numba import njit, prange

from .._config import NUMBA_PARALLEL, NUMBA_SERIAL


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


@njit(**NUMBA_PARALLEL)
def im2col(x, kh, kw, sh, sw, pt, pl, oh, ow, cols):
    n, c, h, w = x.shape
    kk = kh * kw
    p = oh * ow
    npix = n * p
    xf = x.reshape(x.size)
    cf = cols.reshape(cols.size)
    # Valid output-column range of every kernel column j (same for every row and image).
    wlo = np.empty(kw, np.int64)
    whi = np.empty(kw, np.int64)
    for j in range(kw):
        lo, hi = _valid_range(j - pl, sw, w, ow)
        wlo[j] = lo
        whi[j] = hi
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
        for q in range(oh):
            d = dst0 + q * ow
            ih = q * sh - pt + i
            if ih < 0 or ih >= h:
                for u in range(ow):
                    cf[d + u] = 0.0
                continue
            s0 = src_plane + ih * w + off
            for u in range(lo):
                cf[d + u] = 0.0
            if sw == 1:
                for u in range(lo, hi):
                    cf[d + u] = xf[s0 + u]
            else:
                for u in range(lo, hi):
                    cf[d + u] = xf[s0 + u * sw]
            for u in range(hi, ow):
                cf[d + u] = 0.0


@njit(**NUMBA_PARALLEL)
def col2im(cols, kh, kw, sh, sw, pt, pl, oh, ow, dx):
    n, c, h, w = dx.shape
    kk = kh * kw
    p = oh * ow
    npix = n * p
    hw = h * w
    cf = cols.reshape(cols.size)
    df = dx.reshape(dx.size)
    wlo = np.empty(kw, np.int64)
    whi = np.empty(kw, np.int64)
    for j in range(kw):
        lo, hi = _valid_range(j - pl, sw, w, ow)
        wlo[j] = lo
        whi[j] = hi
    # One iteration: one (n, c) plane of dx, written only by it.  Contributions are added in
    # (i, j) order per cell, as in the reference.
    for t in prange(n * c):
        b = t // c
        ci = t - b * c
        d0 = t * hw
        for e in range(hw):
            df[d0 + e] = 0.0
        for i in range(kh):
            qlo, qhi = _valid_range(i - pt, sh, h, oh)
            for j in range(kw):
                lo = wlo[j]
                hi = whi[j]
                off = j - pl
                row0 = (ci * kk + i * kw + j) * npix + b * p
                for q in range(qlo, qhi):
                    ih = q * sh - pt + i
                    dd = d0 + ih * w + off
                    s0 = row0 + q * ow
                    if sw == 1:
                        for u in range(lo, hi):
                            df[dd + u] += cf[s0 + u]
                    else:
                        for u in range(lo, hi):
                            df[dd + u * sw] += cf[s0 + u]


@njit(**NUMBA_PARALLEL)
def cnp_to_ncp_bias(ycnp, bias, y):
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
            yf[d0 + e] = yc[s0 + e] + bo


_LANES = 8


@njit(**NUMBA_PARALLEL)
def ncp_to_cnp_sum(gy, gcnp, gb):
    n, oc, p = gy.shape
    gf = gy.reshape(gy.size)
    gc = gcnp.reshape(gcnp.size)
    pb = (p // _LANES) * _LANES
    # One iteration: one output channel; its row of gcnp and its bias sum.  The float64 sum
    # uses _LANES partial sums in a fixed order (deterministic, and it lets LLVM vectorise).
    for o in prange(oc):
        acc = np.zeros(_LANES, np.float64)
        tail = 0.0
        for b in range(n):
            s0 = (b * oc + o) * p
            d0 = o * (n * p) + b * p
            for e in range(p):
                gc[d0 + e] = gf[s0 + e]
            for e0 in range(0, pb, _LANES):
                for k in range(_LANES):
                    acc[k] += np.float64(gf[s0 + e0 + k])
            for e in range(pb, p):
                tail += np.float64(gf[s0 + e])
        tot = 0.0
        for k in range(_LANES):
            tot += acc[k]
        gb[o] = np.float32(tot + tail)
