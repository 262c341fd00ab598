"""Numba kernels of the dense layer: blocks of a GEMM in one thread pool (docs/PERFORMANCE.md, 3).

On the AVX-512 and AVX2 paths each ``prange`` iteration runs the register-tiled GEMM of the
Cython kernels (``src_ext/gemm_kern.h``) written with explicit vectors (:mod:`._simd`): every
output is one chain of FMAs in the order of the inner index, so both backends give the same
bytes.  On the baseline path it calls SciPy's single-threaded SGEMM (:func:`._common.gemm`, as
the Cython kernels do there).  Blocks are of output features (``y``, ``gw``) or input
features (``gx``); their bounds depend on the shapes and ``nblocks`` only: the same bytes at
any thread count.  Contracts: :mod:`fastcnn._ref`.
"""
import numpy as np
from numba import prange

from .. import _backend, _config
from ._common import SGEMM, _u, block, gemm, helper, parallel_kernel
from ._simd import (
    GR,
    GV,
    VL,
    gtile_zero,
    tile_fma,
    tile_fma_at,
    tile_load,
    tile_load_masked,
    tile_store,
    tile_store_masked,
    vloads,
    vstores,
    vtranspose,
    vzeros,
)

#: Whether the tiled GEMM runs (Numba's SIMD path has FMA); else SciPy's SGEMM.
TILED = _config.NUMBA_ISA["isa"] in ("avx512", "avx2")
#: Steps of the inner index per block and columns per tile (as src_ext/gemm.h).
KC, W = 128, GV * VL
_OFFS = tuple(range(0, W, VL))


@helper
def _chain(acc, a, a0, ars, aps, aoffs, b, b0, ldb, kc, offs):
    """``acc[r, v] += a[a0 + r*ars + p*aps] * b[b0 + p*ldb + offs[v] ...]`` for p < kc, in order
    (``aoffs[r] = r*ars``; ``aps == 1`` unless ``ars == 1``)."""
    if ars == 1:
        for p in range(kc):
            acc = tile_fma(acc, vloads(b, b0 + p * ldb, offs), a, a0 + p * aps)
    else:
        for p in range(kc):
            acc = tile_fma_at(acc, vloads(b, b0 + p * ldb, offs), a, a0 + p, aoffs, 0)
    return acc


@helper
def _tile(zero, load, a, a0, ars, aps, aoffs, b, b0, ldb, kc, c, c0, ldc, nj):
    """One tile of ``zero``'s size at ``c[c0]``, from ``c`` if ``load``; only its first ``nj``
    columns of c read and written (b's are zero past them)."""
    if nj == W:
        acc = tile_load(c, c0, ldc, _OFFS, zero) if load else zero
        tile_store(c, c0, ldc, _OFFS, _chain(acc, a, a0, ars, aps, aoffs, b, b0, ldb, kc, _OFFS))
    else:
        acc = tile_load_masked(c, c0, ldc, _OFFS, zero, nj) if load else zero
        tile_store_masked(c, c0, ldc, _OFFS, _chain(acc, a, a0, ars, aps, aoffs, b, b0, ldb, kc, _OFFS), nj)


@helper
def _panel(m, nj, a, a0, ars, aps, aoffs, b, b0, ldb, kc, c, c0, ldc, load):
    """Columns ``[0, nj)`` (nj <= W) of one block, over all m rows: tiles of ``GR`` rows, then
    of one (the same chains)."""
    i0 = 0
    while i0 + GR <= m:
        _tile(gtile_zero(_OFFS), load, a, a0 + i0 * ars, ars, aps, aoffs, b, b0, ldb, kc, c, c0 + i0 * ldc, ldc, nj)
        i0 += GR
    for i in range(i0, m):
        _tile(vzeros(_OFFS), load, a, a0 + i * ars, ars, aps, aoffs, b, b0, ldb, kc, c, c0 + i * ldc, ldc, nj)


@helper
def _gemm(m, n, k, a, a0, ars, aps, b, b0, ldb, bts, c, c0, ldc):
    """``c[c0 + i*ldc + j] = sum_p a[a0 + i*ars + p*aps] * b[b0 + (j // W)*bts + p*ldb + j % W]``
    (1-D arrays, k >= 1; as ``fcg_gemm`` of src_ext/gemm_kern.h, same blocks and order)."""
    aoffs = np.empty(GR, np.int64)
    for r in range(GR):
        aoffs[r] = r * ars
    bp = np.empty(KC * W, np.float32)
    for p0 in range(0, k, KC):
        kc = min(KC, k - p0)
        for j0 in range(0, n, W):
            nj = min(W, n - j0)
            bt = b0 + (j0 // W) * bts + p0 * ldb
            for p in range(kc):  # (always copied, also when contiguous: one compiled panel)
                if nj == W:
                    vstores(bp, p * W, _OFFS, vloads(b, bt + p * ldb, _OFFS))
                else:
                    for j in range(nj):
                        bp[_u(p * W + j)] = b[_u(bt + p * ldb + j)]
                    for j in range(nj, W):
                        bp[_u(p * W + j)] = 0.0
            _panel(m, nj, a, a0 + p0 * aps, ars, aps, aoffs, bp, 0, W, kc, c, c0 + j0, ldc, p0 > 0)


@helper
def _transpose(s, s0, lds, rows, cols, add, d, d0, ldd):
    """``d[d0 + j*ldd + i] = s[s0 + i*lds + j] + add[i]`` (``add`` empty: + nothing) for
    ``i < rows, j < cols``: VL x VL blocks in registers, the edges one value at a time (as
    ``fcg_transpose``; copied one value at a time, rows read 4 KB apart shared one L1 set)."""
    ib, jb = rows // VL * VL, cols // VL * VL
    for i0 in range(0, ib, VL):
        for j0 in range(0, jb, VL):
            vtranspose(s, s0 + i0 * lds + j0, lds, d, d0 + j0 * ldd + i0, ldd)
            if add.size:
                for j in range(j0, j0 + VL):
                    for i in range(i0, i0 + VL):
                        d[_u(d0 + j * ldd + i)] += add[i]
    for j0 in range(0, cols, 64):  # (blocks of 64 columns: the rows' lines stay cached)
        for i in range(rows):
            a = add[i] if add.size else np.float32(0.0)
            for j in range(j0 if i >= ib else max(j0, jb), min(cols, j0 + 64)):
                d[_u(d0 + j * ldd + i)] = s[_u(s0 + i * lds + j)] + a


@parallel_kernel
def _linear_forward_tiled(x, w, bias, nblocks, y):
    _backend.sizes_linear_forward(x.shape, w.shape, bias.shape, nblocks, y.shape)
    n, k = x.shape
    out = w.shape[0]
    nt = (n + W - 1) // W
    xf, wf, yf = x.reshape(x.size), w.reshape(w.size), y.reshape(y.size)
    xt = np.empty(nt * W * k, np.float32)  # x^T in tiles of W columns (lanes past n: never read)
    yt = np.empty(out * n, np.float32)  # y^T
    none = np.empty(0, np.float32)
    for jt in prange(nt):
        _transpose(xf, jt * W * k, k, min(W, n - jt * W), k, none, xt, jt * k * W, W)
    for t in prange(nblocks):
        o0, o1 = block(t, out, nblocks)
        if o1 > o0:  # y^T[o0:o1] = w[o0:o1] x^T, then y[:, o0:o1] = y^T[o0:o1]^T + bias
            _gemm(o1 - o0, n, k, wf, o0 * k, k, 1, xt, 0, W, k * W, yt, o0 * n, n)
            _transpose(yt, o0 * n, n, o1 - o0, n, bias[o0:o1], yf, o0, out)


@parallel_kernel
def _linear_forward(x, w, bias, nblocks, y, sgemm):
    _backend.sizes_linear_forward(x.shape, w.shape, bias.shape, nblocks, y.shape)
    n, k = x.shape
    out = w.shape[0]
    for t in prange(nblocks):
        o0, o1 = block(t, out, nblocks)
        if o1 > o0:  # y[:, o0:o1] = x @ w[o0:o1]^T + bias[o0:o1]
            gemm(sgemm, False, True, n, o1 - o0, k, x.ctypes.data, k, w.ctypes.data + 4 * o0 * k, k,
                 y.ctypes.data + 4 * o0, out)
            for i in range(n):
                for o in range(o0, o1):
                    y[i, o] = y[i, o] + bias[o]


def linear_forward(x, w, bias, nblocks, y):
    """``y = x @ w.T + bias`` by blocks of output features
    (see :func:`fastcnn._ref.linear_forward`)."""
    if TILED and _config.dense_forward_tiled(x.shape[0]):
        _linear_forward_tiled(x, w, bias, nblocks, y)
    else:
        _linear_forward(x, w, bias, nblocks, y, SGEMM)


@helper
def _bias_sums(gy, o0, o1, gb):
    """``gb[o] = sum over rows of gy[:, o]`` in float64, row by row (the reference's order), by
    chunks of 64 columns (vectorised across the columns)."""
    acc = np.empty(64)
    for c0 in range(o0, o1, 64):
        c1 = min(c0 + 64, o1)
        acc[:] = 0.0
        for i in range(gy.shape[0]):
            for q in range(c1 - c0):
                acc[q] += np.float64(gy[i, c0 + q])
        for q in range(c1 - c0):
            gb[c0 + q] = np.float32(acc[q])


@parallel_kernel
def _linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx, sgemm, tiled):
    _backend.sizes_linear_backward(gy.shape, x.shape, w.shape, input_grad, nblocks, gyt.shape, gw.shape,
                                   gb.shape, gx.shape)
    n, out = gy.shape
    k = x.shape[1]
    xf, wf, tf, gwf, gxf = x.reshape(x.size), w.reshape(w.size), gyt.reshape(gyt.size), gw.reshape(gw.size), \
        gx.reshape(gx.size)
    gyf, none = gy.reshape(gy.size), np.empty(0, np.float32)
    for t in prange(nblocks):
        o0, o1 = block(t, out, nblocks)
        if o1 > o0:  # gyt[o0:o1] = gy[:, o0:o1]^T, the bias sums, gw[o0:o1] = gyt[o0:o1] x
            _transpose(gyf, o0, out, n, o1 - o0, none, tf, o0 * n, n)
            _bias_sums(gy, o0, o1, gb)
            if tiled:  # (gy^T's rows broadcast, x's rows the vectors)
                _gemm(o1 - o0, k, n, tf, o0 * n, n, 1, xf, 0, k, W, gwf, o0 * k, k)
            else:
                gemm(sgemm, False, False, o1 - o0, k, n, gyt.ctypes.data + 4 * o0 * n, n, x.ctypes.data, k,
                     gw.ctypes.data + 4 * o0 * k, k)
        i0, i1 = block(t, k, nblocks)
        if input_grad and i1 > i0 and not tiled:  # gx[:, i0:i1] = gy @ w[:, i0:i1]
            gemm(sgemm, False, False, n, i1 - i0, out, gy.ctypes.data, out, w.ctypes.data + 4 * i0, k,
                 gx.ctypes.data + 4 * i0, k)
    if input_grad and tiled:  # (all of gy^T first: its columns broadcast)
        for t in prange(nblocks):
            i0, i1 = block(t, k, nblocks)
            if i1 > i0:
                _gemm(n, i1 - i0, out, tf, 0, 1, n, wf, i0, k, W, gxf, i0, k)


def linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx):
    """Gradients by blocks of output features (``gw``, ``gb``) and of input features (``gx``)
    (see :func:`fastcnn._ref.linear_backward`)."""
    _linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx, SGEMM, TILED)
