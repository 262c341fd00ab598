"""Numba Winograd F(2x2, 3x3), F(2x2, 5x5) and F(4x4, 3x3) convolutions (contracts:
:func:`fastcnn._ref.conv2d_winograd_forward` and :func:`fastcnn._ref.conv2d_winograd_backward_data`).

The Cython kernels' design (docs/PERFORMANCE.md, "Winograd convolutions"): a group of images
packed as for an ``(m + r - 1) x (m + r - 1)`` convolution of stride ``m`` (:func:`.conv_direct._pad_plane`,
inside the kernel), then per chunk of ``V*VL`` output tiles of the group: the input transform ``B^T d B`` in explicit
vectors (:mod:`._simd`), the ``(m + r - 1)**2`` products by the direct kernels' register tiles (one
tap, the transformed kernel's element per channel), the output transform ``A^T m A`` with bias
and ReLU into the output.  The same operations in the same order as the Cython kernels.
"""
import numpy as np
from numba import prange

from .. import _backend, _dispatch, _ref, _threads
from ._common import _u, check_once, helper, next_unit, parallel_kernel, writable
from ._simd import (
    MAX_VL,
    VL,
    J,
    V,
    dvadd,
    dvload,
    dvmul,
    dvstore,
    in_tf_put,
    tile_fma,
    tile_store,
    tile_zero,
    vadd,
    vcopy_first,
    vloads,
    vloads_lanes,
    vpool4,
    vput_pair_vectors,
    vput_pairs,
    vput_quads,
    vstore,
    vstores,
    vsub,
    vzeros,
)
from .conv_direct import _pad_plane
from .norm import NO_SD, combine_stats, plane_stats, stats_scratch


def _weights(w, flip, m):
    """``V = G g G^T`` of each ``r x r`` kernel ``g`` (float64, rounded once) packed
    ``[xi][ob][c][J]``, zeros past the output channels; ``flip``: ``g`` from ``w`` (C, OC, r, r)
    rotated by 180 degrees, as the input gradient's; ``m``: the output tile."""
    c, oc = w.shape[:2] if flip else w.shape[1::-1]
    nob = -(-oc // J)
    vp = np.empty((w.shape[2] + m - 1) ** 2 * nob * c * J, np.float32)
    if m == 2 and w.shape[2] == 3:
        _weights3(w, flip, nob, vp)
    else:
        _weights6(w, flip, nob, _ref.WINOGRAD_MATRICES[m, w.shape[2]][1], vp)
    return vp


@helper
def _tap(w, flip, o, ci, i, j, r):
    """Tap ``(i, j)`` of the kernel from input channel ``ci`` to output ``o`` as float64 (``flip``:
    ``w`` is (C, OC, r, r), rotated by 180 degrees)."""
    if flip:
        return np.float64(w[ci, o, r - 1 - i, r - 1 - j])
    return np.float64(w[o, ci, i, j])


@parallel_kernel
def _weights3(w, flip, nob, vp):
    """3x3 kernels: the Cython kernels' ``fcw_pack_weights``, its sums in its order (``G``'s
    entries are 0, 1 and +-1/2), one block of ``J`` output channels per iteration; a channel's
    16 planes of the block built in ``blk``, then copied row by row (stored one by one, 16 KB
    apart at 64 channels, they conflicted in L1)."""
    c, oc = (w.shape[0], w.shape[1]) if flip else (w.shape[1], w.shape[0])
    for ob in prange(nob):
        t, blk = np.empty((4, 3)), np.empty((16, J), np.float32)
        for ci in range(c):
            for jj in range(J):
                o = ob * J + jj
                if o >= oc:
                    blk[:, jj] = 0.0
                    continue
                for j in range(3):
                    g0, g1 = _tap(w, flip, o, ci, 0, j, 3), _tap(w, flip, o, ci, 1, j, 3)
                    g2 = _tap(w, flip, o, ci, 2, j, 3)
                    t[0, j] = g0
                    t[1, j] = 0.5 * (g0 + g1 + g2)
                    t[2, j] = 0.5 * (g0 - g1 + g2)
                    t[3, j] = g2
                for i in range(4):
                    blk[4 * i, jj] = np.float32(t[i, 0])
                    blk[4 * i + 1, jj] = np.float32(0.5 * (t[i, 0] + t[i, 1] + t[i, 2]))
                    blk[4 * i + 2, jj] = np.float32(0.5 * (t[i, 0] + -t[i, 1] + t[i, 2]))
                    blk[4 * i + 3, jj] = np.float32(t[i, 2])
            _put_planes(blk, vp, (ob * c + ci) * J, nob * c * J)


#: Input channels whose 36 planes :func:`_weights6` gathers before copying them out (as the
#: Cython kernels' ``fcw_weights6``).
_W6_CHANNELS = 16


@parallel_kernel
def _weights6(w, flip, nob, gm, vp):
    """The 6 x 6 transforms (F(2x2, 5x5), F(4x4, 3x3); ``gm``: their G, 6 x r) in float64, each
    sum in the order of its terms (G's entries are not all dyadic): the Cython kernels'
    ``fcw_weights6``, one block of ``J`` output channels per iteration, the block's channels the
    lanes of each sum (:func:`._simd.dvmul`, :func:`._simd.dvadd`: the same operations as one
    kernel at a time), the 36 planes of
    :data:`_W6_CHANNELS` input channels built in ``blk`` and copied out plane by plane (one
    plane's values are ``nob * c * J`` floats apart)."""
    c, oc = (w.shape[0], w.shape[1]) if flip else (w.shape[1], w.shape[0])
    r = w.shape[2]
    for ob in prange(nob):
        gg, t = np.empty(r * r * J), np.empty(6 * r * J)  # ([i][j][lane])
        blk = np.empty((36, _W6_CHANNELS * J), np.float32)
        bf = blk.reshape(blk.size)
        for c0 in range(0, c, _W6_CHANNELS):
            nc = min(_W6_CHANNELS, c - c0)
            for ci in range(c0, c0 + nc):
                for i in range(r):
                    for j in range(r):
                        for jj in range(J):
                            o = ob * J + jj
                            gg[(i * r + j) * J + jj] = 0.0 if o >= oc else _tap(w, flip, o, ci, i, j, r)
                for i in range(6):
                    for j in range(r):
                        v = dvmul(dvload(gg, j * J), gm[i, 0])
                        for k in range(1, r):
                            v = dvadd(v, dvmul(dvload(gg, (k * r + j) * J), gm[i, k]))
                        dvstore(t, (i * r + j) * J, v)
                for i in range(6):
                    for j in range(6):
                        v = dvmul(dvload(t, i * r * J), gm[j, 0])
                        for k in range(1, r):
                            v = dvadd(v, dvmul(dvload(t, (i * r + k) * J), gm[j, k]))
                        dvstore(bf, (6 * i + j) * _W6_CHANNELS * J + (ci - c0) * J, v)
            for xi in range(36):
                d = ((xi * nob + ob) * c + c0) * J
                vp[d : d + nc * J] = blk[xi, : nc * J]


@helper
def _put_planes(blk, vp, d, pitch):
    """``vp[d + xi*pitch : ... + J] = blk[xi]`` for each plane ``xi``."""
    for xi in range(blk.shape[0]):
        for jj in range(J):
            vp[_u(d + xi * pitch + jj)] = blk[xi, jj]


@helper
def _out_tf(m):
    """``A^T m A`` of 16 vectors: the 2x2 outputs ``(y00, y01, y10, y11)``."""
    r0, r1 = vadd(vadd(m[0], m[4]), m[8]), vadd(vadd(m[1], m[5]), m[9])
    r2, r3 = vadd(vadd(m[2], m[6]), m[10]), vadd(vadd(m[3], m[7]), m[11])
    r4, r5 = vsub(vsub(m[4], m[8]), m[12]), vsub(vsub(m[5], m[9]), m[13])
    r6, r7 = vsub(vsub(m[6], m[10]), m[14]), vsub(vsub(m[7], m[11]), m[15])
    return (vadd(vadd(r0, r1), r2), vsub(vsub(r1, r2), r3), vadd(vadd(r4, r5), r6), vsub(vsub(r5, r6), r7))


@helper
def _at6(v0, v1, v2, v3, v4, v5):
    """F(2x2, 5x5): ``A^T`` of 6 vectors, as the Cython kernels' ``fcw_at6``."""
    t = vsub(v3, v4)
    return vadd(vadd(vadd(v1, v2), vadd(v3, v4)), v0), vadd(vadd(vsub(v1, v2), vadd(t, t)), v5)


@helper
def _out_tf6(m):
    """F(2x2, 5x5): ``A^T m A`` of 36 vectors: the 2x2 outputs ``(y00, y01, y10, y11)``."""
    r0 = _at6(m[0], m[6], m[12], m[18], m[24], m[30])
    r1 = _at6(m[1], m[7], m[13], m[19], m[25], m[31])
    r2 = _at6(m[2], m[8], m[14], m[20], m[26], m[32])
    r3 = _at6(m[3], m[9], m[15], m[21], m[27], m[33])
    r4 = _at6(m[4], m[10], m[16], m[22], m[28], m[34])
    r5 = _at6(m[5], m[11], m[17], m[23], m[29], m[35])
    return (_at6(r0[0], r1[0], r2[0], r3[0], r4[0], r5[0]) + _at6(r0[1], r1[1], r2[1], r3[1], r4[1], r5[1]))


@helper
def _at4(v0, v1, v2, v3, v4, v5):
    """F(4x4, 3x3): ``A^T`` of 6 vectors, as the Cython kernels' ``fcw_at4``."""
    a, b, c, d = vadd(v1, v2), vsub(v1, v2), vadd(v3, v4), vsub(v3, v4)
    c2, d2 = vadd(c, c), vadd(d, d)
    d4 = vadd(d2, d2)
    return (vadd(vadd(a, c), v0), vadd(b, d2), vadd(a, vadd(c2, c2)), vadd(vadd(b, vadd(d4, d4)), v5))


@helper
def _out_tf43(m):
    """F(4x4, 3x3): ``A^T m A`` of 36 vectors: the 16 outputs ``y[4a + b]`` (columns first, as
    the Cython kernels' ``fcw_out_tf43``)."""
    c0 = _at4(m[0], m[6], m[12], m[18], m[24], m[30])
    c1 = _at4(m[1], m[7], m[13], m[19], m[25], m[31])
    c2 = _at4(m[2], m[8], m[14], m[20], m[26], m[32])
    c3 = _at4(m[3], m[9], m[15], m[21], m[27], m[33])
    c4 = _at4(m[4], m[10], m[16], m[22], m[28], m[34])
    c5 = _at4(m[5], m[11], m[17], m[23], m[29], m[35])
    r0 = _at4(c0[0], c1[0], c2[0], c3[0], c4[0], c5[0])
    r1 = _at4(c0[1], c1[1], c2[1], c3[1], c4[1], c5[1])
    r2 = _at4(c0[2], c1[2], c2[2], c3[2], c4[2], c5[2])
    r3 = _at4(c0[3], c1[3], c2[3], c3[3], c4[3], c5[3])
    return (r0[0], r0[1], r0[2], r0[3], r1[0], r1[1], r1[2], r1[3],
            r2[0], r2[1], r2[2], r2[3], r3[0], r3[1], r3[2], r3[3])


@helper
def _product_tile(u, ub, qp, c, vp, wb, offs, m, mb):
    """``J`` output channels x the tile vectors at ``offs``: ``m[mb + jj*qp + offs[v] ...] =
    sum_c vp[wb + c*J + jj] * u[ub + c*qp + offs[v] ...]``, channel by channel."""
    acc = tile_zero(offs)
    for ci in range(c):
        acc = tile_fma(acc, vloads(u, ub + ci * qp, offs), vp, wb + ci * J)
    tile_store(m, mb, qp, offs, acc)


@helper
def _runs(q0, nq, nt, tw, runs):
    """The runs of a chunk ``[q0, q0 + nq)`` of a group's tiles (``nt`` per image, ``tw`` per tile
    row): tiles of one tile row, ``runs[r] = (chunk position, length, image, tile row, first
    tile)``; returns their count."""
    nr = 0
    e = q0
    while e < q0 + nq:
        k = e // nt
        ty = (e - k * nt) // tw
        tx = e - k * nt - ty * tw
        rn = min(tw - tx, q0 + nq - e)
        runs[nr, 0], runs[nr, 1], runs[nr, 2], runs[nr, 3], runs[nr, 4] = e - q0, rn, k, ty, tx
        nr += 1
        e += rn
    return nr


#: Offsets of the window values gathered into a contiguous buffer (3+ runs in a vector).
_DTAB, _DTAB6 = tuple(k * VL for k in range(16)), tuple(k * VL for k in range(36))


@helper
def _put_row(yf, d, z, s0, s1, n2, odd, bias, relu):
    """``yf[d + 2e] = f(z[s0 + e])``, ``yf[d + 2e + 1] = f(z[s1 + e])`` for ``e < n2``, and
    ``yf[d + 2*n2] = f(z[s0 + n2])`` if ``odd``; ``f(v) = v + bias``, then the ReLU if ``relu``
    (the ReLU kernels' rule: NaN stays, -0 -> +0)."""
    zero = np.float32(0.0)
    for e in range(0, n2, VL):  # (vectors of VL pairs, the last masked)
        vput_pairs(yf, d + 2 * e, z, s0 + e, s1 + e, min(VL, n2 - e), bias, relu)
    if odd:
        v0 = z[_u(s0 + n2)] + bias
        yf[_u(d + 2 * n2)] = zero if relu and v0 <= zero else v0


@parallel_kernel(fma=True)
def _winograd(x, pt, pl, hq, wq, vp, bias, relu, ni, units, alg, oc, oh, ow, yf, pool, yp, ip, sd, threads):
    """The ``(n, oc, oh, ow)`` output, flat, into ``yf`` from the input ``x`` (N, C, H, W) and
    the transformed weights ``vp`` (``alg``: 0 F(2x2, 3x3), 1 F(2x2, 5x5), 2 F(4x4, 3x3)); with
    ``pool`` (F(2x2, r x r) only) its 2x2
    max pooling instead, into ``yp`` (``(n, oc, oh // 2, ow // 2)``, flat), and with ``pool ==
    2`` the pooling's indices into ``ip``: an output tile is one pooling window.  The images in
    ``units`` groups of at most ``ni``, near-equal runs of consecutive images
    (:func:`fastcnn._dispatch.winograd_units`), which ``threads`` chunks (each with one set of
    buffers) take from a shared counter (:func:`._common.next_unit`), each
    group's images first packed into the chunk's buffer ``xf`` by :func:`.conv_direct._pad_plane`
    for a convolution of stride ``mt`` (the output tile: image ``k`` at ``k*xs``, channels ``cs``
    apart, the ``mt*mt`` stride phases ``ps`` apart, ``hq`` rows of pitch ``wq``: while in cache),
    then in chunks of ``V*VL`` tiles.  If ``sd`` (``(n, oc, 2)``) has elements, each group's
    output planes are summed into it while in cache (:func:`.norm.plane_stats`)."""
    n, c, h, w = x.shape
    xflat = x.reshape(x.size)
    mt = 4 if alg == 2 else 2
    ps = hq * wq
    cs = mt * mt * ps
    xs = c * cs
    th, tw = (oh + mt - 1) // mt, (ow + mt - 1) // mt
    nt = th * tw
    nob = (oc + J - 1) // J
    nx = 16 if alg == 0 else 36
    q = V * VL
    qp = q + MAX_VL  # (a row's last vector may spill past q: into this padding)
    # (one cache line more than the rows: a power-of-two pitch, 64 * c floats with AVX-512, puts
    #  the 16 or 36 transformed values of a tile into one L1 set)
    us, ms = c * qp + 16, J * qp + 16
    ph, pw = oh // 2, ow // 2
    # every run one whole vector (rows of VL tiles, an even output width): the output rows
    # straight from the registers (as the Cython kernels' on AVX-512)
    whole = alg != 2 and tw == VL and ow == 2 * tw and pool == 0
    # window value (i, j) of grid position p: phase (i % 2, j % 2) at (i // 2)*wq + j // 2
    tab = (0, ps, 1, ps + 1, 2 * ps, 3 * ps, 2 * ps + 1, 3 * ps + 1,
           wq, ps + wq, wq + 1, ps + wq + 1, 2 * ps + wq, 3 * ps + wq, 2 * ps + wq + 1, 3 * ps + wq + 1)
    tab6 = (0, ps, 1, ps + 1, 2, ps + 2, 2 * ps, 3 * ps, 2 * ps + 1, 3 * ps + 1, 2 * ps + 2, 3 * ps + 2,
            wq, ps + wq, wq + 1, ps + wq + 1, wq + 2, ps + wq + 2, 2 * ps + wq, 3 * ps + wq, 2 * ps + wq + 1,
            3 * ps + wq + 1, 2 * ps + wq + 2, 3 * ps + wq + 2, 2 * wq, ps + 2 * wq, 2 * wq + 1, ps + 2 * wq + 1,
            2 * wq + 2, ps + 2 * wq + 2, 2 * ps + 2 * wq, 3 * ps + 2 * wq, 2 * ps + 2 * wq + 1,
            3 * ps + 2 * wq + 1, 2 * ps + 2 * wq + 2, 3 * ps + 2 * wq + 2)
    # F(4x4, 3x3): phase (i % 4, j % 4) at (i // 4)*wq + j // 4
    tab43 = (0, ps, 2 * ps, 3 * ps, 1, ps + 1, 4 * ps, 5 * ps, 6 * ps, 7 * ps, 4 * ps + 1, 5 * ps + 1, 8 * ps,
             9 * ps, 10 * ps, 11 * ps, 8 * ps + 1, 9 * ps + 1, 12 * ps, 13 * ps, 14 * ps, 15 * ps, 12 * ps + 1,
             13 * ps + 1, wq, ps + wq, 2 * ps + wq, 3 * ps + wq, wq + 1, ps + wq + 1, 4 * ps + wq, 5 * ps + wq,
             6 * ps + wq, 7 * ps + wq, 4 * ps + wq + 1, 5 * ps + wq + 1)
    tabw = tab43 if alg == 2 else tab6  # (the 6 x 6 windows' offsets)
    moff = (0, ms, 2 * ms, 3 * ms, 4 * ms, 5 * ms, 6 * ms, 7 * ms, 8 * ms, 9 * ms, 10 * ms, 11 * ms,
            12 * ms, 13 * ms, 14 * ms, 15 * ms)
    moff6 = (0, ms, 2 * ms, 3 * ms, 4 * ms, 5 * ms, 6 * ms, 7 * ms, 8 * ms, 9 * ms, 10 * ms, 11 * ms,
             12 * ms, 13 * ms, 14 * ms, 15 * ms, 16 * ms, 17 * ms, 18 * ms, 19 * ms, 20 * ms, 21 * ms, 22 * ms,
             23 * ms, 24 * ms, 25 * ms, 26 * ms, 27 * ms, 28 * ms, 29 * ms, 30 * ms, 31 * ms, 32 * ms, 33 * ms,
             34 * ms, 35 * ms)
    uoff = (0, us, 2 * us, 3 * us, 4 * us, 5 * us, 6 * us, 7 * us, 8 * us, 9 * us, 10 * us, 11 * us,
            12 * us, 13 * us, 14 * us, 15 * us)
    uoff6 = (0, us, 2 * us, 3 * us, 4 * us, 5 * us, 6 * us, 7 * us, 8 * us, 9 * us, 10 * us, 11 * us,
             12 * us, 13 * us, 14 * us, 15 * us, 16 * us, 17 * us, 18 * us, 19 * us, 20 * us, 21 * us, 22 * us,
             23 * us, 24 * us, 25 * us, 26 * us, 27 * us, 28 * us, 29 * us, 30 * us, 31 * us, 32 * us, 33 * us,
             34 * us, 35 * us)
    chunks = min(n, threads)
    nxt = np.zeros(1, np.int64)  # (the units, taken as threads free up)
    for ch in prange(chunks):
        xf = np.zeros(ni * xs + 8 + MAX_VL, np.float32)  # (zeroed: _pad_plane)
        u = np.zeros(nx * us + MAX_VL, np.float32)
        m = np.zeros(nx * ms + MAX_VL, np.float32)
        z = np.zeros(mt * mt * qp + MAX_VL, np.float32)  # (F(4x4, 3x3): rows of quadruples, 4*qp apart)
        runs = np.empty((q, 5), np.int64)  # a chunk's runs: position, length, image, tile row, column
        seg = np.empty((MAX_VL, 3), np.int64)  # a vector's runs: source offset of lane 0, lanes lo, hi
        dbuf = np.empty(36 * VL, np.float32)  # a vector's window values gathered from 3+ runs
        while True:
            j = next_unit(nxt)
            if j >= units:
                break
            i0 = j * n // units
            ng = (j + 1) * n // units - i0  # (the group's images: at most ni)
            for t in range(ng * c):  # the item's images, packed
                _pad_plane(xflat, i0 * c + t, h, w, pt, pl, mt, mt, xf, t * cs, hq, wq)
            nq_all = ng * nt
            for q0 in range(0, nq_all, q):
                nq = min(q, nq_all - q0)
                nr = _runs(q0, nq, nt, tw, runs)
                # 1. input transform, vector by vector: a vector's lanes are tiles of one or more
                #    runs, each run's lanes a masked load (as the Cython kernels'); lanes past the
                #    chunk's tiles are zeros
                nv = (nq + VL - 1) // VL
                r = 0
                for v in range(nv):
                    v0 = v * VL
                    while runs[r, 0] + runs[r, 1] <= v0:
                        r += 1
                    ns = 0
                    e = r
                    while e < nr and runs[e, 0] < v0 + VL:
                        seg[ns, 0] = runs[e, 2] * xs + runs[e, 3] * wq + runs[e, 4] - runs[e, 0] + v0
                        seg[ns, 1] = max(runs[e, 0] - v0, 0)
                        seg[ns, 2] = min(runs[e, 0] + runs[e, 1] - v0, VL)
                        ns += 1
                        e += 1
                    for e in range(ns, min(8, MAX_VL)):  # (empty runs)
                        seg[e, 0], seg[e, 1], seg[e, 2] = seg[0, 0], 0, 0
                    s0, lo0, hi0, s1, lo1, hi1 = seg[0, 0], seg[0, 1], seg[0, 2], seg[1, 0], seg[1, 1], seg[1, 2]
                    s2, lo2, hi2, s3, lo3, hi3 = seg[2, 0], seg[2, 1], seg[2, 2], seg[3, 0], seg[3, 1], seg[3, 2]
                    for ci in range(c):
                        dst = ci * qp + v0
                        o = ci * cs
                        if ns <= 2:  # straight from the input
                            if alg:
                                in_tf_put(xf, (s0 + o, lo0, hi0, s1 + o, lo1, hi1), tabw, u, dst, uoff6)
                            else:
                                in_tf_put(xf, (s0 + o, lo0, hi0, s1 + o, lo1, hi1), tab, u, dst, uoff)
                        elif ns <= 4:  # (short tile rows)
                            r4 = (s0 + o, lo0, hi0, s1 + o, lo1, hi1, s2 + o, lo2, hi2, s3 + o, lo3, hi3)
                            if alg:
                                in_tf_put(xf, r4, tabw, u, dst, uoff6)
                            else:
                                in_tf_put(xf, r4, tab, u, dst, uoff)
                        elif ns <= 8:  # (tile rows of two or three, e.g. F(4x4, 3x3) at 8x8)
                            r8 = (s0 + o, lo0, hi0, s1 + o, lo1, hi1, s2 + o, lo2, hi2, s3 + o, lo3, hi3,
                                  seg[4, 0] + o, seg[4, 1], seg[4, 2], seg[5, 0] + o, seg[5, 1], seg[5, 2],
                                  seg[6, 0] + o, seg[6, 1], seg[6, 2], seg[7, 0] + o, seg[7, 1], seg[7, 2])
                            if alg:
                                in_tf_put(xf, r8, tabw, u, dst, uoff6)
                            else:
                                in_tf_put(xf, r8, tab, u, dst, uoff)
                        elif alg:  # (more runs: images of one or two tiles a row) gathered into dbuf first
                            d6 = vzeros(tabw)
                            for si in range(ns):
                                d6 = vloads_lanes(d6, xf, seg[si, 0] + o, tabw, seg[si, 1], seg[si, 2])
                            vstores(dbuf, 0, _DTAB6, d6)
                            in_tf_put(dbuf, (0, 0, VL, 0, 0, 0), _DTAB6, u, dst, uoff6)
                        else:
                            d = vzeros(tab)
                            for si in range(ns):
                                d = vloads_lanes(d, xf, seg[si, 0] + o, tab, seg[si, 1], seg[si, 2])
                            vstores(dbuf, 0, _DTAB, d)
                            in_tf_put(dbuf, (0, 0, VL, 0, 0, 0), _DTAB, u, dst, uoff)
                for ob in range(nob):
                    # 2. products, xi by xi: tiles of J channels x V vectors
                    for xi in range(nx):
                        wb = (xi * nob + ob) * c * J
                        for v in range(0, nv, V):
                            r = min(V, nv - v)
                            if r == 3:
                                _product_tile(u, xi * us, qp, c, vp, wb, (v * VL, v * VL + VL, v * VL + 2 * VL), m,
                                              xi * ms)
                            elif r == 2:
                                _product_tile(u, xi * us, qp, c, vp, wb, (v * VL, v * VL + VL), m, xi * ms)
                            else:
                                _product_tile(u, xi * us, qp, c, vp, wb, (v * VL,), m, xi * ms)
                    # 3. output transform, bias, ReLU, channel by channel
                    for jj in range(min(J, oc - ob * J)):
                        o = ob * J + jj
                        if alg == 2:  # F(4x4, 3x3): rows of quadruples into z, then each run's rows
                            for v in range(nv):
                                y4 = _out_tf43(vloads(m, jj * qp + v * VL, moff6))
                                zv = 4 * v * VL
                                vput_quads(z, zv, y4[0], y4[1], y4[2], y4[3], bias[o], relu)
                                vput_quads(z, 4 * qp + zv, y4[4], y4[5], y4[6], y4[7], bias[o], relu)
                                vput_quads(z, 8 * qp + zv, y4[8], y4[9], y4[10], y4[11], bias[o], relu)
                                vput_quads(z, 12 * qp + zv, y4[12], y4[13], y4[14], y4[15], bias[o], relu)
                            for r in range(nr):
                                e, rn, k, ty, tx = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3], runs[r, 4]
                                nc = min(4 * rn, ow - 4 * tx)  # (the last tile cut to the output's width)
                                for a in range(min(4, oh - 4 * ty)):
                                    d = (((i0 + k) * oc + o) * oh + 4 * ty + a) * ow + 4 * tx
                                    zs = 4 * a * qp + 4 * e
                                    for t in range(0, nc, VL):
                                        vcopy_first(yf, d + t, z, zs + t, min(VL, nc - t))
                            continue
                        for v in range(nv):
                            if alg:
                                yy = _out_tf6(vloads(m, jj * qp + v * VL, moff6))
                            else:
                                yy = _out_tf(vloads(m, jj * qp + v * VL, moff))
                            if whole:  # (vector v is run v, a whole tile row: straight to its two rows)
                                d = (((i0 + runs[v, 2]) * oc + o) * oh + 2 * runs[v, 3]) * ow
                                vput_pair_vectors(yf, d, yy[0], yy[1], bias[o], relu)
                                if 2 * runs[v, 3] + 1 < oh:
                                    vput_pair_vectors(yf, d + ow, yy[2], yy[3], bias[o], relu)
                            elif pool:
                                best = vpool4(yy[0], yy[1], yy[2], yy[3], bias[o], relu)
                                vstore(z, v * VL, best[0])
                                vstore(z, qp + v * VL, best[1])
                            else:
                                vstore(z, v * VL, yy[0])
                                vstore(z, qp + v * VL, yy[1])
                                vstore(z, 2 * qp + v * VL, yy[2])
                                vstore(z, 3 * qp + v * VL, yy[3])
                        if whole:
                            continue
                        if pool:  # the windows of whole tiles, run by run
                            for r in range(nr):
                                e, rn, k, ty, tx = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3], runs[r, 4]
                                if ty < ph:
                                    d = (((i0 + k) * oc + o) * ph + ty) * pw
                                    for t in range(tx, min(tx + rn, pw)):
                                        yp[_u(d + t)] = z[_u(e + t - tx)]
                                        if pool == 2:
                                            pa = np.int32(z[_u(qp + e + t - tx)])
                                            ip[_u(d + t)] = (2 * ty + (pa >> 1)) * ow + 2 * t + (pa & 1)
                            continue
                        for r in range(nr):  # the four phases interleaved into the output rows
                            e, rn, k, ty, tx = runs[r, 0], runs[r, 1], runs[r, 2], runs[r, 3], runs[r, 4]
                            odd = 2 * (tx + rn) > ow  # (an odd last column has no pair)
                            for a in range(min(2, oh - 2 * ty)):
                                _put_row(yf, (((i0 + k) * oc + o) * oh + 2 * ty + a) * ow + 2 * tx, z, 2 * a * qp + e,
                                         (2 * a + 1) * qp + e, rn - 1 if odd else rn, odd, bias[o], relu)
            if sd.size:
                for k in range(ng):
                    for o in range(oc):
                        plane_stats(yf, ((i0 + k) * oc + o) * oh * ow, oh * ow, sd[i0 + k, o])


_NONE_F, _NONE_I = np.empty(0, np.float32), np.empty(0, np.int32)


def _run(x, w, flip, bias, pt, pl, relu, oc, oh, ow, y, pooled=None, idx=None, m=2, sd=NO_SD):
    """The ``(N, oc, oh, ow)`` Winograd convolution of ``x`` with ``w`` (rotated and transposed
    with ``flip``; output tiles of ``m x m``) into ``y``, or its 2x2 max pooling into ``pooled``
    (with ``idx``, if it has elements, the indices; ``m = 2``); ``sd``: as :func:`_winograd`'s."""
    n = x.shape[0]
    r = w.shape[2]
    th, tw = -(-oh // m), -(-ow // m)
    # (the grid of an (m + r - 1) x (m + r - 1) convolution of stride m with th x tw outputs)
    hq, wq = th + (m + r - 2) // m, tw + (m + r - 2) // m
    ni = _dispatch.winograd_group(n, th * tw, x.shape[1] * m * m * hq * wq * 4, VL)
    threads = _threads.get_num_threads()
    pool = 0 if pooled is None else 2 if idx.size else 1
    units = _dispatch.winograd_units(n, ni, threads)
    _winograd(np.ascontiguousarray(x), pt, pl, hq, wq, _weights(w, flip, m),
              writable(bias), int(relu), ni, units, 2 if m == 4 else int(r == 5), oc, oh, ow,
              _NONE_F if pooled is not None else y.reshape(-1), pool,
              _NONE_F if pooled is None else pooled.reshape(-1), idx.reshape(-1) if pool == 2 else _NONE_I, sd,
              threads)


def conv2d_winograd_forward(x, w, bias, pt, pl, relu, y, m=2, stats=None):
    """Winograd F(2x2, 3x3), F(2x2, 5x5) or F(4x4, 3x3) convolution (see
    :func:`fastcnn._ref.conv2d_winograd_forward`); ``stats``: each group's output planes summed
    while in cache (:func:`.norm.stats_scratch`, :func:`.norm.combine_stats`)."""
    check_once(_backend.sizes_conv2d_winograd_forward, x.shape, w.shape, bias.shape, pt, pl, relu, y.shape, m)
    sd = stats_scratch("conv2d_winograd_forward", stats, w.shape, y.shape)
    if x.shape[0]:
        _run(x, w, False, bias, pt, pl, relu, *y.shape[1:], y, m=m, sd=sd)
    if stats is not None:
        combine_stats(sd, y.shape[2] * y.shape[3], stats[0], stats[1])


def conv2d_winograd_forward_maxpool2(x, w, bias, pt, pl, relu, oh, ow, y, idx):
    """The Winograd convolution, then 2x2 max pooling (see
    :func:`fastcnn._ref.conv2d_winograd_forward_maxpool2`): each output tile is one pooling
    window, pooled in registers as it leaves the output transform (the convolution's output
    is never stored)."""
    check_once(_backend.sizes_conv2d_winograd_forward_maxpool2, x.shape, w.shape, bias.shape, pt, pl, relu, oh, ow,
               y.shape, idx.shape)
    if x.shape[0]:
        _run(x, w, False, bias, pt, pl, relu, y.shape[1], oh, ow, None, y, idx)


def conv2d_winograd_backward_weight(gy, x, pt, pl, gw, gb):
    """Weight and bias gradients by Winograd's algorithm (see
    :func:`fastcnn._ref.conv2d_winograd_backward_weight`): the reference's NumPy algorithm (the
    Numba backend's weight gradients run on its direct kernels, faster here: docs/PERFORMANCE.md,
    "Winograd convolutions")."""
    check_once(_backend.sizes_conv2d_winograd_backward_weight, gy.shape, x.shape, pt, pl, gw.shape, gb.shape)
    _ref.conv2d_winograd_backward_weight(gy, x, pt, pl, gw, gb)


def conv2d_winograd_backward_data(gy, w, pt, pl, gx, m=2):
    """Input gradient (see :func:`fastcnn._ref.conv2d_winograd_backward_data`): the same
    algorithm on the output gradient with the rotated, transposed weights."""
    check_once(_backend.sizes_conv2d_winograd_backward_data, gy.shape, w.shape, pt, pl, gx.shape, m)
    if gy.shape[0]:
        r = w.shape[2]
        _run(gy, w, True, np.zeros(w.shape[1], np.float32), r - 1 - pt, r - 1 - pl, False, *gx.shape[1:], gx, m=m)
