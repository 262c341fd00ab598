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
from numba import njit, prange

from .. import _backend, _config, _dispatch, _threads
from ._common import SGEMM, _u, block, gemm, helper, parallel_kernel, writable
from ._simd import (
    GR,
    GV,
    VL,
    fmuladd32,
    gtile_zero,
    rtile_zero,
    tile_fma,
    tile_fma_at,
    tile_load,
    tile_load_masked,
    tile_store,
    tile_store_masked,
    vfmas,
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
    one of the rows left (``GR`` is 6 on every path), as ``fcg_gemm`` (the same chains; a tile
    of one row per row left ran each chain at the FMA's latency)."""
    i0 = 0
    while i0 + GR <= m:  # (:func:`_tile` and :func:`_chain` written out: as calls, their array
        # arguments cost reference counts around every tile, more than its FMAs at a small k)
        ai, ci = a0 + i0 * ars, c0 + i0 * ldc
        zero = gtile_zero(_OFFS)
        if nj == W:
            acc = tile_load(c, ci, ldc, _OFFS, zero) if load else zero
        else:
            acc = tile_load_masked(c, ci, ldc, _OFFS, zero, nj) if load else zero
        if ars == 1:
            for p in range(kc):
                acc = tile_fma(acc, vloads(b, b0 + p * ldb, _OFFS), a, ai + p * aps)
        else:
            for p in range(kc):
                acc = tile_fma_at(acc, vloads(b, b0 + p * ldb, _OFFS), a, ai + p, aoffs, 0)
        if nj == W:
            tile_store(c, ci, ldc, _OFFS, acc)
        else:
            tile_store_masked(c, ci, ldc, _OFFS, acc, nj)
        i0 += GR
    left, a1, c1 = m - i0, a0 + i0 * ars, c0 + i0 * ldc
    if left == 1:
        _tile(rtile_zero((0,), _OFFS), load, a, a1, ars, aps, aoffs, b, b0, ldb, kc, c, c1, ldc, nj)
    elif left == 2:
        _tile(rtile_zero((0, 1), _OFFS), load, a, a1, ars, aps, aoffs, b, b0, ldb, kc, c, c1, ldc, nj)
    elif left == 3:
        _tile(rtile_zero((0, 1, 2), _OFFS), load, a, a1, ars, aps, aoffs, b, b0, ldb, kc, c, c1, ldc, nj)
    elif left == 4:
        _tile(rtile_zero((0, 1, 2, 3), _OFFS), load, a, a1, ars, aps, aoffs, b, b0, ldb, kc, c, c1, ldc, nj)
    elif left == 5:
        _tile(rtile_zero((0, 1, 2, 3, 4), _OFFS), load, a, a1, ars, aps, aoffs, b, b0, ldb, kc, c, c1, ldc, nj)


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


@njit(**_config.NUMBA_SERIAL)
def _gemm_a_rows(m, n, k, a, a0, ars, b, ldb, bts, c, c0, ldc):
    """:func:`_gemm` of an ``a`` with contiguous rows (``aps = 1``) and ``b`` from its start:
    the forward's and the weight gradient's, compiled once and called by the kernels
    (docs/PERFORMANCE.md, 16; they pass no literal integer: each would be a compilation)."""
    _gemm(m, n, k, a, a0, ars, 1, b, 0, ldb, bts, c, c0, ldc)


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
            _gemm_a_rows(o1 - o0, n, k, wf, o0 * k, k, xt, np.int64(W), k * W, yt, o0 * n, n)
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


#: The rows path's sixteen lanes as vectors (src_ext/rows_kern.h: the same on every path).
_L16 = tuple(range(0, 16, VL))


@helper
def _lanes_sum(s, s0, xf, x0, wf, w0, k16, k):
    """Lanes ``s[s0:s0+16]`` of one output: the inner indices past ``k16`` added (FMA) into
    lanes 0 .., then summed 16 -> 8 -> 4 -> 2 -> 1 (rows_kern.h's ``fcr_dots``)."""
    for p in range(k16, k):
        s[s0 + p - k16] = fmuladd32(xf[_u(x0 + p)], wf[_u(w0 + p)], s[s0 + p - k16])
    h = 8
    while h >= 1:
        for j in range(h):
            s[s0 + j] = s[s0 + j] + s[s0 + j + h]
        h //= 2
    return s[s0]


@helper
def _dots(xf, x0, wf, w0, k, s, y, y0, bias, o, r):
    """``r`` (4 or 1) outputs ``y[y0 + j] = dot16(x, w[o + j]) + bias[o + j]`` (``s``: 64 floats
    of scratch): lane l of an output the FMA chain over the inner indices p = l mod 16."""
    k16 = k - k % 16
    a0 = a1 = a2 = a3 = vzeros(_L16)
    for p in range(0, k16, 16):
        xv = vloads(xf, x0 + p, _L16)
        a0 = vfmas(a0, xv, vloads(wf, w0 + p, _L16))
        if r == 4:
            a1 = vfmas(a1, xv, vloads(wf, w0 + k + p, _L16))
            a2 = vfmas(a2, xv, vloads(wf, w0 + 2 * k + p, _L16))
            a3 = vfmas(a3, xv, vloads(wf, w0 + 3 * k + p, _L16))
    vstores(s, 0, _L16, a0)
    if r == 4:
        vstores(s, 16, _L16, a1)
        vstores(s, 32, _L16, a2)
        vstores(s, 48, _L16, a3)
    for j in range(r):
        y[_u(y0 + j)] = _lanes_sum(s, 16 * j, xf, x0, wf, w0 + j * k, k16, k) + bias[o + j]


@parallel_kernel
def _rows_forward(w, x, bias, nblocks, y, nt):
    """The rows path (src_ext/rows_kern.h): ``nt`` blocks of output features."""
    _backend.sizes_linear_forward(x.shape, w.shape, bias.shape, nblocks, y.shape)
    n, k = x.shape
    out = w.shape[0]
    xf, wf, yf = x.reshape(x.size), w.reshape(w.size), y.reshape(y.size)
    nt = max(1, min(nt, out))
    for t in prange(nt):
        o0, o1 = block(t, out, nt)
        s = np.empty(64, np.float32)
        for i in range(n):
            o = o0
            while o + 4 <= o1:
                _dots(xf, i * k, wf, o * k, k, s, yf, i * out + o, bias, o, 4)
                o += 4
            for o in range(o, o1):
                _dots(xf, i * k, wf, o * k, k, s, yf, i * out + o, bias, o, 1)


@helper
def _chains(rows, tn, a, ars, ats, b, ldb, c, ldc, q0, q1):
    """``c[i*ldc + q] = sum over t < tn in order of a[i*ars + t*ats] * b[t*ldb + q]`` (one FMA
    chain each) for ``i < rows``, ``q0 <= q < q1``: rows_kern.h's ``fcr_chains``."""
    qv = q0 + (q1 - q0) // VL * VL
    i4 = rows // 4 * 4 if ars == 1 else 0  # (rows of contiguous scalars: tiles of 4 rows)
    for i in range(0, i4, 4):
        for q in range(q0, qv, VL):
            acc4 = vzeros((0, 0, 0, 0))
            for t in range(tn):
                acc4 = tile_fma(acc4, vloads(b, t * ldb + q, (0,)), a, i + t * ats)
            vstores(c, i * ldc + q, (0, ldc, 2 * ldc, 3 * ldc), acc4)
    for i in range(i4, rows):
        for q in range(q0, qv, VL):
            acc = vzeros((0,))
            for t in range(tn):
                acc = tile_fma(acc, vloads(b, t * ldb + q, (0,)), a, i * ars + t * ats)
            vstores(c, i * ldc + q, (0,), acc)
    for i in range(rows):
        for q in range(qv, q1):
            v = np.float32(0.0)
            for t in range(tn):
                v = fmuladd32(a[_u(i * ars + t * ats)], b[_u(t * ldb + q)], v)
            c[_u(i * ldc + q)] = v


@parallel_kernel
def _rows_backward(w, gy, x, input_grad, nblocks, gyt, gw, gb, gx, nt):
    """The rows path's gradients: ``nt`` blocks of input features (columns of gw and gx)."""
    _backend.sizes_linear_backward(gy.shape, x.shape, w.shape, input_grad, nblocks, gyt.shape, gw.shape,
                                   gb.shape, gx.shape)
    n, out = gy.shape
    k = x.shape[1]
    _bias_sums(gy, 0, out, gb)
    gyf, xf, wf = gy.reshape(gy.size), x.reshape(x.size), w.reshape(w.size)
    gwf, gxf = gw.reshape(gw.size), gx.reshape(gx.size)
    nt = max(1, min(nt, k))
    for t in prange(nt):
        q0, q1 = block(t, k, nt)
        _chains(out, n, gyf, 1, out, xf, k, gwf, k, q0, q1)
        if input_grad:
            _chains(n, out, gyf, out, 1, wf, k, gxf, k, q0, q1)


def linear_forward(x, w, bias, nblocks, y):
    """``y = x @ w.T + bias`` by blocks of output features
    (see :func:`fastcnn._ref.linear_forward`)."""
    bias = writable(bias)
    if _dispatch.dense_rows(x.shape[0]):
        _rows_forward(w, x, bias, nblocks, y, _threads.get_num_threads())
    elif TILED and _config.dense_forward_tiled(x.shape[0]):
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
                _gemm_a_rows(o1 - o0, k, n, tf, o0 * n, n, xf, k, np.int64(W), gwf, o0 * k, k)
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
    if _dispatch.dense_rows(gy.shape[0], True):
        _rows_backward(w, gy, x, input_grad, nblocks, gyt, gw, gb, gx, _threads.get_num_threads())
        return
    _linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx, SGEMM, TILED)
