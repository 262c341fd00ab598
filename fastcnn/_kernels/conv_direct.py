"""Numba direct convolutions: no im2col matrix, no GEMM (contracts: :mod:`fastcnn._ref`).

The Cython kernels' design (docs/PERFORMANCE.md, sections 9 and 10): the batch packed into
the grid layout (zero padded, split into its stride phases), register tiles of explicit LLVM
vectors (:mod:`._simd`): forward tiles of ``J`` output channels x ``V`` pixel vectors over all
taps; the input gradient as that forward of the output gradient with the flipped, transposed
kernel (at strides > 1 once per input phase); weight-gradient tiles of taps x output-channel vectors over a
channels-last output gradient, summed per slot of images in image order, then the slots in
order (the same bytes at any thread count).  FMA contraction only (``_config.NUMBA_*_FMA``):
no reassociation.
"""
import functools

import numpy as np
from numba import njit, prange

from .. import _backend, _config, _threads
from . import activation as _activation
from . import pool as _pool
from ._common import _u, check_once, helper, next_unit, parallel_kernel, writable
from ._simd import (
    CR,
    JC,
    MAX_VL,
    PACK_AHEAD,
    TAPS_MAX,
    VL,
    WT,
    J,
    V,
    ctile_zero,
    pool2_row_biased,
    prefetch_line,
    prefetch_line_l2,
    rtile_zero,
    tile_fma,
    tile_fma_at,
    tile_fma_rows3,
    tile_fma_rows5,
    tile_fma_splat,
    tile_load,
    tile_put,
    tile_roll,
    tile_store,
    tile_store_head,
    tile_zero,
    vcolumn_sums,
    vdeal4,
    vdeal4_2,
    vdeinterleave,
    vload_even,
    vloads,
    vput_pairs,
    vstore,
    vtranspose,
)
from .norm import NO_SD, combine_stats, plane_stats, stats_scratch


@functools.lru_cache(maxsize=256)  # (per shape: a batch-1 step notices building ``tab``; never written)
def _grid_shape(kh, kw, sh, sw, oh, ow):
    """The grid layout (docs/PERFORMANCE.md, section 9) for an ``oh x ow`` output: each
    channel zero padded and split into its ``sh*sw`` stride phases of ``hq x wq``
    (:func:`_pad_plane`), so that tap ``(i, j)`` of grid position ``p`` is at ``p + tab[i*kw
    + j]``; returns ``(hq, wq, tab)``.  The kernels pack into buffers followed by zeros (at
    least ``kw + MAX_VL``) that the last pixel vectors of any lane count may read past the last
    plane."""
    hq, wq = oh + (kh - 1) // sh, ow + (kw - 1) // sw
    tab = np.array([((i % sh) * sw + j % sw) * hq * wq + (i // sh) * wq + j // sw
                    for i in range(kh) for j in range(kw)], np.int64)
    return hq, wq, tab


@helper
def _pixel_vectors(oh, ow, wq):
    """The forward's pixel vectors over an ``oh x ow`` output on rows of ``wq`` grid positions:
    consecutive ones over the grid, or per output row (which skips the dropped columns when OW
    <= VL*k < wq) unless they are more (Cython's ``fcd_pixel_starts``).  Returns ``(grid,
    per_row, rows, ns)``: the grid's vector count, vectors per row, whether row-aligned, and
    how many."""
    grid = (oh * wq + VL - 1) // VL
    per_row = (ow + VL - 1) // VL
    rows = grid >= oh * per_row
    return grid, per_row, rows, oh * per_row if rows else grid


@helper
def _row_ahead(xs, s, w):
    """Ask for the row ``PACK_AHEAD`` rows after the source row at ``xs[s]`` (``w`` floats), a
    cache line per 16 floats (as the Cython kernels' ``fcd_row_ahead``)."""
    for v in range(0, w, 16):
        prefetch_line(xs, s + PACK_AHEAD * w + v)


@helper
def _pack_s2(xs, t, h, w, pt, pl, xd, dst0, hq, wq):
    """:func:`_pad_plane` of stride 2 x 2 without the zeros: source rows in order, each split into
    its even columns (phase ``pl % 2``, from column ``pl // 2``) and its odd ones (the other
    phase, from ``(pl + 1) // 2``) by :func:`._simd.vdeinterleave`, ``2*VL`` columns a call."""
    e0, o0 = pl // 2, (pl + 1) // 2
    be = pl % 2
    ne = min((w + 1) // 2, wq - e0)
    no = min(w // 2, wq - o0)
    for r in range(h):
        hh = (r + pt) // 2
        if hh >= hq:
            break
        a = (r + pt) % 2
        src = (t * h + r) * w
        _row_ahead(xs, src, w)
        de = dst0 + ((a * 2 + be) * hq + hh) * wq + e0
        dd = dst0 + ((a * 2 + 1 - be) * hq + hh) * wq + o0
        for m in range(0, max(ne, no), VL):
            vdeinterleave(xs, src + 2 * m, min(2 * VL, w - 2 * m), xd, de + m, max(0, min(VL, ne - m)), dd + m,
                          max(0, min(VL, no - m)))


@helper
def _pack_s4(xs, t, h, w, pt, pl, xd, dst0, hq, wq):
    """:func:`_pad_plane` of stride 4 x 4 (F(4x4, 3x3)'s windows) without the zeros: source rows
    in order, each dealt to its four column phases (from phase column ``pl // 4``) by
    :func:`._simd.vdeal4`, ``VL`` phase columns a call (the padding's lanes get the zeros they
    already hold)."""
    o = pl % 4
    n = min(wq - pl // 4, (w + o + 3) // 4)  # phase columns holding source values
    pp = hq * wq
    for r in range(h):
        hh = (r + pt) // 4
        if hh >= hq:
            break
        src = (t * h + r) * w - o  # (virtual column k: source column k - o)
        _row_ahead(xs, src + o, w)
        d = dst0 + ((r + pt) % 4 * 4 * hq + hh) * wq + pl // 4
        for m in range(0, n, VL):
            if o + w - 4 * m <= 2 * VL:
                vdeal4_2(xs, src + 4 * m, o - 4 * m, o + w - 4 * m, xd, d + m, pp, min(VL, n - m))
            else:
                vdeal4(xs, src + 4 * m, o - 4 * m, o + w - 4 * m, xd, d + m, pp, min(VL, n - m))


@helper
def _pad_plane(xs, t, h, w, pt, pl, sh, sw, xd, dst0, hq, wq):
    """Plane ``t`` of the flat input ``xs`` (``h x w``) in the grid layout at ``xd[dst0:]``:
    ``xd[dst0 + ((a*sw + e)*hq + R)*wq + Q] = x[R*sh + a - pt, Q*sw + e - pl]`` of the plane;
    only the plane's values are written (for strides 2 x 2 and 4 x 4, ``pt, pl >= 0``, by
    :func:`_pack_s2`, :func:`_pack_s4`): the callers' buffers start zeroed, and every packing
    of one geometry writes the same positions, so the rest holds zeros.  (Zeros written here
    would be memset calls of a few bytes per row.)"""
    if sh == 2 and sw == 2 and pt >= 0 and pl >= 0:
        _pack_s2(xs, t, h, w, pt, pl, xd, dst0, hq, wq)
        return
    if sh == 4 and sw == 4 and pt >= 0 and pl >= 0:
        _pack_s4(xs, t, h, w, pt, pl, xd, dst0, hq, wq)
        return
    for a in range(sh):
        for e in range(sw):
            dst = dst0 + (a * sw + e) * hq * wq
            q0 = min(wq, max(0, (pl - e + sw - 1) // sw))  # phase columns [q0, q1) are in x
            q1 = max(q0, min(wq, (w + pl - e + sw - 1) // sw))
            for r in range(hq):
                sr = r * sh + a - pt
                if sr < 0 or sr >= h:
                    continue
                d = dst + r * wq
                src = (t * h + sr) * w + e - pl
                _row_ahead(xs, src + pl - e, w)
                if sw == 1:
                    for q in range(q0, q1):
                        xd[_u(d + q)] = xs[_u(src + q)]
                elif sw == 2:  # (vectors while the pair of source vectors is inside xs)
                    q = q0
                    while q + VL <= q1 and src + 2 * (q + VL) <= xs.size:
                        vstore(xd, d + q, vload_even(xs, src + 2 * q))
                        q += VL
                    for q in range(q, q1):
                        xd[_u(d + q)] = xs[_u(src + 2 * q)]
                else:
                    for q in range(q0, q1):
                        xd[_u(d + q)] = xs[_u(src + q * sw)]


@helper
def _fwd_acc(xf, xb, cs, tab, c, kk_n, wp, wb, offs):
    """One register tile: ``J`` output channels (packed weights from ``wp[wb]``) x the pixel
    vectors at grid positions ``offs``, over all ``c * kk_n`` taps (channel by channel, tap by
    tap, one FMA each); returns the accumulators."""
    acc = tile_zero(offs)
    for ci in range(c):
        xc = xb + ci * cs
        wc = wb + ci * kk_n * J
        for kk in range(kk_n):
            acc = tile_fma(acc, vloads(xf, xc + tab[kk], offs), wp, wc + kk * J)
    return acc


@helper
def _fwd_tile(xf, xb, cs, tab, c, kk_n, wp, wb, offs, g, pitch):
    """:func:`_fwd_acc`'s tile stored to ``g[jj*pitch + offs[v]]``."""
    tile_store(g, 0, pitch, offs, _fwd_acc(xf, xb, cs, tab, c, kk_n, wp, wb, offs))


@helper
def _fwd_out(acc, put, g, pitch, offs, yf, yo, plane, so, bias, o0, nj, relu):
    """A forward tile's accumulators out: with ``put`` straight to the output (:func:`._simd.tile_put`:
    vector ``v`` of channel ``o0`` at ``yf[yo[v]]``, ``so[v]`` lanes, channels ``plane`` apart),
    else to the tile buffer ``g[jj*pitch + offs[v]]``."""
    if put:
        tile_put(yf, yo, plane, so, acc, bias, o0, nj, relu)
    else:
        tile_store(g, 0, pitch, offs, acc)


@parallel_kernel(fma=True)
def _forward(x, sh, sw, pt, pl, hq, wq, tab, w, bias, relu, oh, ow, y, pool, yp, ip, sd, threads):
    """Direct convolution of ``x``: one work item per image and block of ``J`` output channels
    (run in ``threads`` chunks, each with one tile buffer and one image buffer ``xf``, taking the
    items from a shared counter, an image's items at a time when there are as many images as
    chunks, :func:`._common.next_unit`; the item's image is packed as :func:`_pad_plane` packs
    it, while in cache: channel planes ``cs`` apart, tap ``kk`` of grid position ``p`` at ``p +
    tab[kk]``, output row pitch ``wq``), register tiles of ``J`` x ``V`` vectors, then bias and ReLU on the way to ``y``
    (``(N, OC, oh, ow)``; row-aligned vectors straight from the registers, :func:`._simd.tile_put`,
    grid vectors through the tile buffer); with ``pool`` instead to its 2x2 max pooling ``yp`` and the pooling's
    indices ``ip`` (``(N, OC, oh // 2, ow // 2)``) from the tile buffer, while in cache
    (:func:`._simd.pool2_row_biased`: bias and ReLU in registers, the pooling kernels' rule).
    If ``sd`` (``(n, oc, 2)``) has elements, each output plane is summed into it while in cache
    (:func:`.norm.plane_stats`)."""
    n, c, h, wd = x.shape
    yf, ypf, ipf = y.reshape(y.size), yp.reshape(yp.size), ip.reshape(ip.size)
    oc = w.shape[0]
    ph, pw = oh // 2, ow // 2
    xflat = x.reshape(x.size)
    cs = sh * sw * hq * wq
    kw = w.shape[3]
    kk_n = w.shape[2] * kw
    nob = (oc + J - 1) // J
    wp = _pack_weights(w, J)
    grid, per_row, rows, ns = _pixel_vectors(oh, ow, wq)
    # Vector k starts at grid position st[k]; row-aligned ones (unpooled) go straight from the
    # registers to y: output row k // per_row, column (k % per_row)*VL, their first so[k] lanes.
    put = rows and not pool
    st, yo, so = np.empty(ns, np.int64), np.empty(ns, np.int64), np.empty(ns, np.int64)
    for k in range(ns):
        st[k] = (k // per_row) * wq + (k % per_row) * VL if rows else k * VL
        yo[k] = (k // per_row) * ow + (k % per_row) * VL
        so[k] = min(VL, ow - (k % per_row) * VL)
    pitch = (grid + 1) * VL  # >= the last start + VL
    tasks = n * nob
    chunks = min(tasks, threads)
    unit = nob if n >= chunks else 1  # (whole images when there are enough: each packed once)
    nxt = np.zeros(1, np.int64)
    for ch in prange(chunks):
        g = np.empty(J * pitch, np.float32)
        xf = np.zeros(c * cs + kw + MAX_VL, np.float32)  # (zeroed: _pad_plane)
        packed = -1
        while True:  # (a unit of items at a time from the shared counter)
            t0 = next_unit(nxt) * unit
            if t0 >= tasks:
                break
            for t in range(t0, t0 + unit):
                b = t // nob
                ob = t - b * nob
                if b != packed:
                    for ci in range(c):
                        _pad_plane(xflat, b * c + ci, h, wd, pt, pl, sh, sw, xf, ci * cs, hq, wq)
                    packed = b
                xb = 0
                wb = ob * c * kk_n * J
                nj = min(J, oc - ob * J)
                y0 = (b * oc + ob * J) * oh * ow
                for k in range(0, ns, V):  # tiles of V vectors (3 or 2), the last maybe fewer
                    m = min(V, ns - k)
                    if m == 3:
                        s3 = (st[k], st[k + 1], st[k + 2])
                        _fwd_out(_fwd_acc(xf, xb, cs, tab, c, kk_n, wp, wb, s3), put, g, pitch, s3, yf,
                                 (y0 + yo[k], y0 + yo[k + 1], y0 + yo[k + 2]), oh * ow,
                                 (so[k], so[k + 1], so[k + 2]), bias, ob * J, nj, relu)
                    elif m == 2:
                        _fwd_out(_fwd_acc(xf, xb, cs, tab, c, kk_n, wp, wb, (st[k], st[k + 1])), put, g, pitch,
                                 (st[k], st[k + 1]), yf, (y0 + yo[k], y0 + yo[k + 1]), oh * ow, (so[k], so[k + 1]),
                                 bias, ob * J, nj, relu)
                    else:
                        _fwd_out(_fwd_acc(xf, xb, cs, tab, c, kk_n, wp, wb, (st[k],)), put, g, pitch, (st[k],), yf,
                                 (y0 + yo[k],), oh * ow, (so[k],), bias, ob * J, nj, relu)
                for jj in range(nj):
                    o = ob * J + jj
                    if put:  # (written from the registers)
                        if sd.size:
                            plane_stats(yf, (b * oc + o) * oh * ow, oh * ow, sd[b, o])
                        continue
                    if pool:  # the windows of the outputs plus bias, after the ReLU
                        for r in range(ph):
                            a0 = jj * pitch + 2 * r * wq
                            for u0 in range(0, pw, VL):
                                pool2_row_biased(g, a0 + 2 * u0, a0 + wq + 2 * u0, min(VL, pw - u0), ypf, ipf,
                                                 ((b * oc + o) * ph + r) * pw + u0, 2 * r * ow + 2 * u0, ow, bias[o],
                                                 relu)
                        continue
                    bo = bias[o]
                    for r in range(oh):  # (flat, unsigned indices: a vector loop)
                        s0, d0 = jj * pitch + r * wq, ((b * oc + o) * oh + r) * ow
                        for q in range(ow):
                            v = g[_u(s0 + q)] + bo
                            if relu and v <= 0.0:  # (the ReLU kernels' rule: NaN stays, -0 -> +0)
                                v = np.float32(0.0)
                            yf[_u(d0 + q)] = v
                    if sd.size:
                        plane_stats(yf, (b * oc + o) * oh * ow, oh * ow, sd[b, o])


_CT_OFFS = (0, VL)  # (a channel tile's two channel vectors)


@helper
def _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, rows):
    """Channel tile (docs/PERFORMANCE.md, section 9): ``len(rows)`` pixels (grid positions ``p``
    ...) x two output-channel vectors (weights ``[c][kk][JC]`` from ``wp[wb]``), over all taps
    in the pixel tiles' order (one FMA each, the same bytes), the inputs broadcast; stored
    channels-last, pixel ``r`` at ``cl[d + r*JC]``."""
    acc = ctile_zero(rows)
    for ci in range(c):
        xc = ci * cs + p
        wc = wb + ci * kk_n * JC
        for kk in range(kk_n):
            acc = tile_fma(acc, vloads(wp, wc + kk * JC, _CT_OFFS), xf, xc + tab[kk])
    tile_store(cl, d, JC, _CT_OFFS, acc)


@helper
def _ct_run(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, m):
    """:func:`_ct_tile` of ``m`` (1 to 12, at most CR) pixels."""
    if m == 1:
        _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0,))
    elif m == 2:
        _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1))
    elif m == 3:
        _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1, 2))
    elif m == 4:
        _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1, 2, 3))
    elif m == 5:
        _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1, 2, 3, 4))
    elif m == 6:
        _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1, 2, 3, 4, 5))
    elif CR >= 12:
        if m == 7:
            _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1, 2, 3, 4, 5, 6))
        elif m == 8:
            _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1, 2, 3, 4, 5, 6, 7))
        elif m == 9:
            _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1, 2, 3, 4, 5, 6, 7, 8))
        elif m == 10:
            _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9))
        elif m == 11:
            _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
        else:
            _ct_tile(xf, cs, tab, c, kk_n, wp, wb, p, cl, d, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11))


@helper
def _ct_image(xf, cs, tab, c, kk_n, wp, oc, oh, ow, wq, cl, bias, o_bias, relu, yf, y0):
    """One packed image on channel tiles: per block of JC output channels every output row in
    ``ceil(ow / CR)`` tiles of nearly equal width into ``cl`` (``oh*ow`` rows of JC), then to
    ``yf[y0:]`` (``(oc, oh*ow)``) by VL x VL transposes, plus ``bias[o_bias + o]`` and the
    ReLU (the ReLU kernels' rule); an empty ``bias``: neither (the sums are never -0, so adding
    +0 would change nothing)."""
    hw = oh * ow
    nt = (ow + CR - 1) // CR
    for ob in range((oc + JC - 1) // JC):
        wb = ob * c * kk_n * JC
        for r in range(oh):
            q = 0
            for k in range(nt):
                m = (ow - q + nt - k - 1) // (nt - k)
                _ct_run(xf, cs, tab, c, kk_n, wp, wb, r * wq + q, cl, (r * ow + q) * JC, m)
                q += m
        nj = min(JC, oc - ob * JC)
        d0 = y0 + ob * JC * hw
        eb, jb = hw // VL * VL, nj // VL * VL
        for e in range(0, eb, VL):
            for j in range(0, jb, VL):
                vtranspose(cl, e * JC + j, JC, yf, d0 + j * hw + e, hw)
        for j in range(nj):
            for e in range(eb if j < jb else 0, hw):
                yf[_u(d0 + j * hw + e)] = cl[_u(e * JC + j)]
        for j in range(nj if bias.size else 0):
            bj = bias[o_bias + ob * JC + j]
            for e in range(hw):
                v = yf[_u(d0 + j * hw + e)] + bj
                if relu and v <= 0.0:  # (the ReLU kernels' rule: NaN stays, -0 -> +0)
                    v = np.float32(0.0)
                yf[_u(d0 + j * hw + e)] = v


@helper
def _pack_weights(w, blk):
    """``w`` (OC, C, KH, KW) packed ``[ob][c][kk][blk]`` in blocks of ``blk`` output channels,
    zeros past OC: ``J`` for the pixel tiles, ``JC`` for the channel tiles."""
    oc, c, kh, kw = w.shape
    kk_n = kh * kw
    wp = np.zeros(((oc + blk - 1) // blk) * c * kk_n * blk, np.float32)
    for o in range(oc):
        for ci in range(c):
            for kk in range(kk_n):
                wp[(((o // blk) * c + ci) * kk_n + kk) * blk + o % blk] = w[o, ci, kk // kw, kk % kw]
    return wp


@parallel_kernel(fma=True)
def _forward_ct(x, sh, sw, pt, pl, hq, wq, tab, w, bias, relu, oh, ow, y, sd, threads):
    """:func:`_forward` (without pooling) on channel tiles (:func:`_ct_image`): ``threads``
    chunks of consecutive images, each packed as :func:`_pad_plane` packs it; ``sd`` as
    :func:`_forward`'s."""
    n, c, h, wd = x.shape
    oc, kw = w.shape[0], w.shape[3]
    kk_n = w.shape[2] * kw
    xflat, yf = x.reshape(x.size), y.reshape(y.size)
    cs = sh * sw * hq * wq
    wp = _pack_weights(w, JC)
    chunks = min(n, threads)
    nxt = np.zeros(1, np.int64)
    for ch in prange(chunks):
        cl = np.empty(oh * ow * JC, np.float32)
        xf = np.zeros(c * cs + kw + MAX_VL, np.float32)  # (zeroed: _pad_plane)
        while True:  # (the images from the shared counter)
            b = next_unit(nxt)
            if b >= n:
                break
            for ci in range(c):
                _pad_plane(xflat, b * c + ci, h, wd, pt, pl, sh, sw, xf, ci * cs, hq, wq)
            _ct_image(xf, cs, tab, c, kk_n, wp, oc, oh, ow, wq, cl, bias, 0, relu, yf, b * oc * oh * ow)
            if sd.size:
                for o in range(oc):
                    plane_stats(yf, (b * oc + o) * oh * ow, oh * ow, sd[b, o])


def _ctile_wins(outputs, ns, oc, patch):
    """The Cython kernels' rule (``fcd_use_ctile``): channel tiles when each output sums at least
    ``_config.DIRECT_CTILE_MIN_PATCH`` products (``patch``: input channels x taps) and their
    lanes hold ``_config.DIRECT_CTILE_GAIN_PCT`` percent or more of the pixel tiles' share of
    valid values (``outputs`` per channel in ``ns`` vectors, J channels a tile)."""
    if patch < _config.DIRECT_CTILE_MIN_PATCH:
        return False
    pix = outputs / (ns * VL) * oc / (-(-oc // J) * J)
    return oc / (-(-oc // JC) * JC) * 100 >= pix * _config.DIRECT_CTILE_GAIN_PCT


@functools.lru_cache(maxsize=256)  # (per shape; a pure function of it)
def _use_ctile(kh, kw, sh, sw, oh, ow, oc, c):
    """Whether the forward of this geometry (``c`` input channels) runs on channel tiles
    (:func:`_ctile_wins`, the pixel vectors :func:`_forward` would take)."""
    return _ctile_wins(oh * ow, _pixel_vectors(oh, ow, ow + (kw - 1) // sw)[3], oc, c * kh * kw)


_NONE_F4, _NONE_I4 = np.empty((0, 0, 0, 0), np.float32), np.empty((0, 0, 0, 0), np.int32)


def _direct(x, w, bias, sh, sw, pt, pl, relu, oh, ow, y=_NONE_F4, pool=0, yp=_NONE_F4, ip=_NONE_I4, sd=NO_SD):
    """:func:`_forward` of ``x`` (any stride and padding) on its grid layout: the ``oh x ow``
    output plus bias, ReLU into ``y``, or with ``pool`` its 2x2 max pooling into ``yp`` and
    ``ip``; ``sd`` as :func:`_forward`'s."""
    kh, kw = w.shape[2:]
    hq, wq, tab = _grid_shape(kh, kw, sh, sw, oh, ow)
    bias = writable(bias)
    if not pool and _use_ctile(kh, kw, sh, sw, oh, ow, w.shape[0], w.shape[1]):
        _forward_ct(np.ascontiguousarray(x), sh, sw, pt, pl, hq, wq, tab, w, bias, int(relu), oh, ow, y, sd,
                    _threads.get_num_threads())
        return
    _forward(np.ascontiguousarray(x), sh, sw, pt, pl, hq, wq, tab, w, bias, int(relu), oh, ow, y, pool, yp, ip, sd,
             _threads.get_num_threads())


def conv2d_direct_forward(x, w, bias, sh, sw, pt, pl, relu, y, stats=None):
    """Direct convolution with fused bias, optional ReLU and batch-norm statistics
    (see :func:`fastcnn._ref.conv2d_direct_forward`)."""
    check_once(_backend.sizes_conv2d_direct_forward, x.shape, w.shape, bias.shape, sh, sw, pt, pl, relu, y.shape)
    sd = stats_scratch("conv2d_direct_forward", stats, w.shape, y.shape)
    if x.shape[0]:
        _direct(x, w, bias, sh, sw, pt, pl, relu, *y.shape[2:], y, sd=sd)
    if stats is not None:
        combine_stats(sd, y.shape[2] * y.shape[3], stats[0], stats[1])


def conv2d_direct_forward_maxpool2(x, w, bias, sh, sw, pt, pl, relu, oh, ow, y, idx):
    """The direct forward, then 2x2 max pooling of its output
    (see :func:`fastcnn._ref.conv2d_direct_forward_maxpool2`)."""
    check_once(_backend.sizes_conv2d_direct_forward_maxpool2, x.shape, w.shape, bias.shape, sh, sw, pt, pl, relu,
               oh, ow, y.shape, idx.shape)
    if x.shape[0]:
        ip = idx if idx.size else np.empty(y.shape, np.int32)  # (indices not asked: scratch)
        _direct(x, w, bias, sh, sw, pt, pl, relu, oh, ow, pool=2 if idx.size else 1, yp=y, ip=ip)


def conv2d_direct_backward_data(gy, w, sh, sw, pt, pl, gx):
    """Input gradient (see :func:`fastcnn._ref.conv2d_direct_backward_data`): at stride 1 the
    forward kernel on the rotated, transposed weights; strided, one stride-1 correlation per
    input phase (:func:`_phase_plan`) in one kernel (:func:`_backward_data_phases`)."""
    check_once(_backend.sizes_conv2d_direct_backward_data, gy.shape, w.shape, sh, sw, pt, pl, gx.shape)
    n, c, h, wd = gx.shape
    kh, kw = w.shape[2:]
    if n == 0 or gx.size == 0:
        return
    if sh == sw == 1:
        wt = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        _direct(gy, wt, np.zeros(c, np.float32), 1, 1, kh - 1 - pt, kw - 1 - pl, False, h, wd, gx)
        return
    hq, wq, ptc, plc, tabs, sts, meta, pitch, zero_phases = _phase_plan(kh, kw, sh, sw, pt, pl, h, wd, *gy.shape[2:])
    for a, b in zero_phases:  # (phases no tap reaches)
        gx[:, :, a::sh, b::sw] = 0.0
    cts = _phase_ctiles(meta, c, w.shape[0])
    _backward_data_phases(np.ascontiguousarray(gy), ptc, plc, hq, wq, _phase_weights(w, sh, sw, pt, pl, meta, cts),
                          tabs, sts, meta, cts, pitch, sh, sw, gx, _threads.get_num_threads())


def _phase_ctiles(meta, c, oc):
    """Per phase of :func:`_phase_plan`'s ``meta`` (taps, rows, columns, pixel vectors): 1 if it
    runs on channel tiles (:func:`_ctile_wins`, ``c`` output channels, ``oc`` input channels),
    else 0."""
    return np.array([_ctile_wins(ha * wb, ns, c, oc * taps) for taps, ha, wb, ns in meta[:, 2:6]], np.int64)


@functools.lru_cache(maxsize=64)  # (per shape; never written)
def _phase_plan(kh, kw, sh, sw, pt, pl, h, wd, oh, ow):
    """The strided input gradient as ``sh*sw`` stride-1 correlations of the output gradient,
    one per input phase ``(a, b)`` (rows ``a, a + sh, ...``, columns ``b, b + sw, ...`` of the
    input): phase row ``r`` gets tap ``i0 + sh*k`` (``i0 = (a + pt) % sh``) from output row ``r
    + (a + pt - i0)//sh - k``, i.e. the phase's ``ka`` taps reversed with top padding ``ka - 1
    - (a + pt - i0)//sh`` (likewise for columns).  All phases read one packing of each image's
    output gradient with the largest of their paddings (``ptc``, ``plc``; ``hq x wq`` planes),
    each tap's offset shifted by the difference.  Returns ``(hq, wq, ptc, plc, tabs, sts, meta,
    pitch, zero_phases)``: the phases' tap offsets and pixel-vector starts (concatenated), per
    phase ``meta[p] = (a, b, taps, rows, columns, vectors, first tap, first start)``, the tile
    buffer's row pitch, and the phases no tap reaches."""
    ph = []
    for a in range(sh):
        for b in range(sw):
            i0, j0 = (a + pt) % sh, (b + pl) % sw
            ka, kb = len(range(i0, kh, sh)), len(range(j0, kw, sw))
            ha, wb = len(range(a, h, sh)), len(range(b, wd, sw))
            ph.append((a, b, ka, kb, ha, wb, ka - 1 - (a + pt - i0) // sh, kb - 1 - (b + pl - j0) // sw))
    live = [q for q in ph if q[2] and q[3] and q[4] and q[5]]
    ptc = max([0] + [q[6] for q in live])
    plc = max([0] + [q[7] for q in live])
    hq = max([1] + [q[4] + q[2] - 1 + ptc - q[6] for q in live])
    wq = max([1] + [q[5] + q[3] - 1 + plc - q[7] for q in live])
    tabs, sts, meta, grid_max = [], [], [], 0
    for a, b, ka, kb, ha, wb, ptp, plp in live:
        t0, s0 = len(tabs), len(sts)
        tabs += [(i + ptc - ptp) * wq + j + plc - plp for i in range(ka) for j in range(kb)]
        grid, per_row, rows, ns = _pixel_vectors(ha, wb, wq)
        sts += [(k // per_row) * wq + (k % per_row) * VL if rows else k * VL for k in range(ns)]
        grid_max = max(grid_max, grid)
        meta.append((a, b, ka * kb, ha, wb, ns, t0, s0))
    zero_phases = tuple((q[0], q[1]) for q in ph if q[4] and q[5] and not (q[2] and q[3]))
    return (hq, wq, ptc, plc, np.array(tabs + [0], np.int64), np.array(sts + [0], np.int64),
            np.array(meta, np.int64).reshape(-1, 8), (grid_max + 1) * VL, zero_phases)


def _phase_weights(w, sh, sw, pt, pl, meta, cts):
    """The weights of the phases of :func:`_phase_plan`'s ``meta`` (in its order) as
    :func:`_forward` packs a stride-1 correlation's, concatenated: phase ``(a, b)``'s taps of
    ``w`` (OC, C, KH, KW) reversed, input and output channels swapped, ``[ob][oc][kk][J]`` with
    zeros past ``C`` (``[ob][oc][kk][JC]`` for a phase on channel tiles, ``cts``)."""
    oc, c, kh, kw = w.shape
    parts = []
    for (a, b), ct in zip(meta[:, :2], cts):
        blk_c = JC if ct else J
        nob = -(-c // blk_c)
        sub = w[:, :, (a + pt) % sh::sh, (b + pl) % sw::sw][:, :, ::-1, ::-1]  # (OC, C, ka, kb)
        blk = np.zeros((nob * blk_c, oc, sub.shape[2] * sub.shape[3]), np.float32)
        blk[:c] = sub.transpose(1, 0, 2, 3).reshape(c, oc, -1)
        parts.append(blk.reshape(nob, blk_c, oc, -1).transpose(0, 2, 3, 1).ravel())
    return np.concatenate(parts + [np.zeros(1, np.float32)])  # (never empty)


@helper
def _put_row(dst, d, step, src, e, m):
    """``dst[d + step*q] = src[e + q]`` for q < m: a phase's row into its columns of ``gx``."""
    for q in range(m):
        dst[_u(d + step * q)] = src[_u(e + q)]


@parallel_kernel(fma=True)
def _backward_data_phases(gy, ptc, plc, hq, wq, wp, tabs, sts, meta, cts, pitch, sh, sw, gx, threads):
    """The strided input gradient ``gx`` (N, C, H, W) from ``gy`` (N, OC, OH, OW) on
    :func:`_phase_plan`'s plan: ``threads`` chunks of consecutive images, each image's ``gy``
    packed once (padding ``ptc``, ``plc``; ``hq x wq`` planes), then per phase the forward
    kernel's register tiles (:func:`_fwd_tile`, its weights ``wp`` from
    :func:`_phase_weights`; ``cts[p]``: channel tiles, :func:`_ct_image`).  At stride 2 x 2 with
    all four phases the phases go to a buffer and each row of ``gx`` is its two phases' rows
    zipped by vectors (:func:`._simd.vput_pairs`); otherwise each phase's values are stored to
    its rows and columns of ``gx`` one by one."""
    n, oc, oh, ow = gy.shape
    c, h, wd = gx.shape[1], gx.shape[2], gx.shape[3]
    gyf = gy.reshape(gy.size)
    gxf = gx.reshape(gx.size)
    cs = hq * wq
    nob = (c + J - 1) // J
    chunks = min(n, threads)
    nph = meta.shape[0]
    zipped = sh == 2 and sw == 2 and nph == 4  # (then phase p is (p // 2, p % 2))
    poff = np.zeros(nph + 1, np.int64)  # phase p's (c, ha, wb) planes in pb (zipped), else at 0
    hw_max = 0
    for p in range(nph):
        hw_max = max(hw_max, meta[p, 3] * meta[p, 4])
        poff[p + 1] = poff[p] + (c * meta[p, 3] * meta[p, 4] if zipped else 0)
    nobias = np.empty(0, np.float32)
    zero = np.float32(0.0)
    nxt = np.zeros(1, np.int64)
    for ch in prange(chunks):
        g = np.empty(J * pitch, np.float32)
        cl = np.empty(hw_max * JC, np.float32)
        pb = np.empty(max(poff[nph], c * hw_max) + MAX_VL, np.float32)  # (vput_pairs reads VL past a row)
        xf = np.zeros(oc * cs + wq + MAX_VL, np.float32)
        while True:  # (the images from the shared counter)
            b = next_unit(nxt)
            if b >= n:
                break
            for ci in range(oc):
                _pad_plane(gyf, b * oc + ci, oh, ow, ptc, plc, 1, 1, xf, ci * cs, hq, wq)
            wbase = 0
            for p in range(nph):
                a, bc, kk_n, ha, wb, ns, t0, s0 = (meta[p, 0], meta[p, 1], meta[p, 2], meta[p, 3], meta[p, 4],
                                                   meta[p, 5], meta[p, 6], meta[p, 7])
                tab = tabs[t0:t0 + kk_n]
                if cts[p]:  # (the phase's (c, ha*wb) planes in pb)
                    _ct_image(xf, cs, tab, oc, kk_n, wp[wbase:], c, ha, wb, wq, cl, nobias, 0, 0, pb, poff[p])
                    wbase += ((c + JC - 1) // JC) * oc * kk_n * JC
                    if not zipped:
                        for o in range(c):
                            for r in range(ha):
                                _put_row(gxf, ((b * c + o) * h + a + sh * r) * wd + bc, sw, pb, (o * ha + r) * wb, wb)
                    continue
                for ob in range(nob):
                    wo = wbase + ob * oc * kk_n * J
                    for k in range(0, ns, V):
                        m = min(V, ns - k)
                        if m == 3:
                            _fwd_tile(xf, 0, cs, tab, oc, kk_n, wp, wo,
                                      (sts[s0 + k], sts[s0 + k + 1], sts[s0 + k + 2]), g, pitch)
                        elif m == 2:
                            _fwd_tile(xf, 0, cs, tab, oc, kk_n, wp, wo, (sts[s0 + k], sts[s0 + k + 1]), g, pitch)
                        else:
                            _fwd_tile(xf, 0, cs, tab, oc, kk_n, wp, wo, (sts[s0 + k],), g, pitch)
                    for jj in range(min(J, c - ob * J)):
                        for r in range(ha):
                            e = jj * pitch + r * wq
                            if zipped:
                                _put_row(pb, poff[p] + ((ob * J + jj) * ha + r) * wb, 1, g, e, wb)
                            else:
                                _put_row(gxf, ((b * c + ob * J + jj) * h + a + sh * r) * wd + bc, sw, g, e, wb)
                wbase += nob * oc * kk_n * J
            if zipped:  # rows a + 2r: phase (a, 0) on the even columns, (a, 1) on the odd ones
                for o in range(c):
                    for a in range(2):
                        ha, w0, w1 = meta[2 * a, 3], meta[2 * a, 4], meta[2 * a + 1, 4]
                        for r in range(ha):
                            d = ((b * c + o) * h + a + 2 * r) * wd
                            e0 = poff[2 * a] + (o * ha + r) * w0
                            e1 = poff[2 * a + 1] + (o * ha + r) * w1
                            for q in range(0, w1, VL):
                                vput_pairs(gxf, d + 2 * q, pb, e0 + q, e1 + q, min(VL, w1 - q), zero, 0)
                            if w0 > w1:  # (an odd width: the last column is phase (a, 0)'s)
                                gxf[_u(d + 2 * w1)] = pb[_u(e0 + w1)]


@helper
def _image_channels_last(gf, s0, oc, pn, tf, d0, ocv):
    """``tf[d0 + p*ocv + o] = gf[s0 + o*pn + p]`` (one image's ``oc`` planes of ``pn`` positions),
    0 for the channels ``oc .. ocv``: blocks of VL channels x VL positions transposed in
    registers, the rest one by one."""
    ob, pb = oc // VL * VL, pn // VL * VL
    for o0 in range(0, ob, VL):
        for p0 in range(0, pb, VL):
            vtranspose(gf, s0 + o0 * pn + p0, pn, tf, d0 + p0 * ocv + o0, ocv)
        for p in range(pb, pn):
            for o in range(o0, o0 + VL):
                tf[_u(d0 + p * ocv + o)] = gf[_u(s0 + o * pn + p)]
    for p in range(pn):
        for o in range(ob, oc):
            tf[_u(d0 + p * ocv + o)] = gf[_u(s0 + o * pn + p)]
        for o in range(oc, ocv):
            tf[_u(d0 + p * ocv + o)] = 0.0


def _wgrad_tile_with(fma):
    """The weight-gradient tile whose taps ``fma`` adds (:func:`tile_fma_at`, or in rows of 3
    or 5: :func:`tile_fma_rows3`, :func:`tile_fma_rows5`; the caller's tile whole rows)."""
    @helper
    def tile(xf, xs, gf, gs, i0, ni, oh, ow, wq, ocv, offs, off, q0, part, pb, add, zero):
        """One weight-gradient tile of ``zero``'s size: the channel vectors at ``offs`` x the
        taps ``off[q0 ...]``, over the output positions of images ``i0 .. i0+ni`` (in order;
        image ``i0`` packed at ``xf[0]``, its channels-last gradient at ``gf[0]``), started
        from ``part[pb ...]`` (``add``) or zero, stored back there (row pitch ``ocv``)."""
        acc = tile_load(part, pb, ocv, offs, zero) if add else zero
        for i in range(i0, i0 + ni):
            for r in range(oh):
                xr = (i - i0) * xs + r * wq
                gr = (i - i0) * gs + r * ow * ocv
                for q in range(ow):
                    acc = fma(acc, vloads(gf, gr + q * ocv, offs), xf, xr + q, off, q0)
        tile_store(part, pb, ocv, offs, acc)
    return tile


_wgrad_at, _wgrad_rows3, _wgrad_rows5 = (_wgrad_tile_with(f) for f in (tile_fma_at, tile_fma_rows3, tile_fma_rows5))


@helper
def _wgrad_rows(xf, xs, gf, gs, i0, ni, oh, ow, wq, ocv, offs, off, q0, part, pb, add, tw, zero5, zero):
    """The weight-gradient tile for taps in rows of ``tw`` (5: of ``zero5``'s size, 3 or single
    taps: of ``zero``'s)."""
    if tw == 5:
        _wgrad_rows5(xf, xs, gf, gs, i0, ni, oh, ow, wq, ocv, offs, off, q0, part, pb, add, zero5)
    elif tw == 3:
        _wgrad_rows3(xf, xs, gf, gs, i0, ni, oh, ow, wq, ocv, offs, off, q0, part, pb, add, zero)
    else:
        _wgrad_at(xf, xs, gf, gs, i0, ni, oh, ow, wq, ocv, offs, off, q0, part, pb, add, zero)


#: Tap counts of the weight-gradient tiles (:func:`_wgrad_tiling`), as tuples to size them: 2 or
#: 1 channel vectors of WT or 2*WT taps, of whole rows of 5, and one vector of a whole
#: one-channel 5x5 or three-channel 3x3 kernel.
_T_WT, _T_2WT = tuple(range(WT)), tuple(range(2 * WT))
_T_5V2, _T_5V1 = tuple(range(WT // 5 * 5)), tuple(range(2 * WT // 5 * 5))
_T_25, _T_27 = tuple(range(25)), tuple(range(27))


def _wgrad_tiling(ocv, q, kw, sw):
    """``(channel vectors, taps, tap row width)`` of a weight-gradient tile, the Cython kernels'
    rule: 2 channel vectors when they pair up, else 1; at horizontal stride 1 a kernel row of 3
    or 5 taps keeps a tile to whole rows (one offset per row); one vector of all ``q`` taps of a
    one-channel 5x5 or three-channel 3x3 kernel where ``TAPS_MAX`` registers hold them."""
    nv = 2 if (ocv // VL) % 2 == 0 else 1
    tw = kw if sw == 1 and kw in (3, 5) else 1
    t_n = (2 * WT // nv // tw) * tw
    if nv == 1 and ((tw == 5 and q == 25) or (tw == 3 and q == 27)) and q <= TAPS_MAX:
        t_n = q
    return nv, t_n, tw


@njit(**_config.NUMBA_SERIAL)  # (a function of its own, as _winners)
def _unpool_channels_last(gf, jf, yf, relu, i, oc, oh, ow, tf, d0, ocv, vt, it, cell):
    """Image ``i``'s full-size gradient channels-last (as :func:`_image_channels_last` of
    relu_backward then maxpool2d_backward; the Cython backend's ``fcd_unpool_grad_t``) from the
    pooled gradient ``gf``, indices ``jf`` (their bits as float32) and ReLU output ``yf``: the
    pooled planes channels-last into ``vt`` and ``it`` (PH*PW*ocv floats each; ``vt`` times the
    ReLU's 1 or 0), then each cell's channels by one select: ``0.0 + g`` where the window's
    index is the cell, else zero.  Returns nonzero if a window holds an index outside it
    (``cell``: each window's first cell)."""
    ph, pw = oh // 2, ow // 2
    phw = ph * pw
    ix = it.view(np.int32)
    _image_channels_last(gf, i * oc * phw, oc, phw, vt, 0, ocv)
    _image_channels_last(jf, i * oc * phw, oc, phw, it, 0, ocv)
    for k in range(phw):
        for o in range(oc, ocv):
            ix[_u(k * ocv + o)] = -1  # (the padding channels: in no window)
    if relu:
        _image_channels_last(yf, i * oc * phw, oc, phw, tf, d0, ocv)  # (tf: scratch until the cells below)
        for e in range(phw * ocv):
            vt[_u(e)] = vt[_u(e)] * np.float32(tf[_u(d0 + e)] > 0)
    z = np.float32(0.0)
    for a in range(oh):
        for b in range(ow):
            d = d0 + (a * ow + b) * ocv
            if a >= 2 * ph or b >= 2 * pw:  # (past the last window: zero)
                for o in range(ocv):
                    tf[_u(d + o)] = 0.0
                continue
            k = ((a // 2) * pw + b // 2) * ocv
            p = a * ow + b
            for o in range(ocv):  # (0 + g: the scatter-add's sum, -0.0 -> +0.0)
                tf[_u(d + o)] = z + vt[_u(k + o)] if ix[_u(k + o)] == p else z
    return _window_check(jf.view(np.int32), i * oc * phw, oc, phw, cell, ow)  # (each window's index inside it)


@njit(**_config.NUMBA_SERIAL)
def _column_sums(tf, d0, pn, ocv, nb, bsum, i, acc):
    """``bsum[i, o]``: column ``o < nb`` of an image's channels-last gradient ``tf[d0 ...]``
    summed in float64 in pixel order (as the Cython backend's ``fcd_grad_t_sums``), 32 or 16
    columns at a time into the scratch ``acc`` (``ocv`` floats; ``ocv``: whole vectors of 16)."""
    o0 = 0
    while o0 + 32 <= ocv:
        vcolumn_sums(tf, d0 + o0, ocv, pn, (0, 8, 16, 24), acc, o0)
        o0 += 32
    if o0 < ocv:
        vcolumn_sums(tf, d0 + o0, ocv, pn, (0, 8), acc, o0)
    for o in range(nb):
        bsum[i, o] = acc[o]


@helper
def _prefetch_part(a, start, n, k, parts):
    """Part ``k`` of ``parts`` of ``a[start:start + n]`` asked for into the caches, a line at a time
    (the Cython kernels' ``fcd_prefetch_part``)."""
    for e in range(start + k * n // parts, start + (k + 1) * n // parts, 16):
        prefetch_line_l2(a, e)


@helper
def _next_task(nxt, groups, n, ns, m):
    """The next task of a weight gradient from the shared counter ``nxt``: slot ``s`` of ``ns``
    (its images ``[i0, i1)``: image ``i`` in slot ``i*ns//n``) for share ``g`` of ``groups`` of
    ``m`` things (``[m0, m1)``), as ``(s, g, i0, i1, m0, m1)``; ``s`` is -1 when none is left."""
    t = next_unit(nxt)
    s = t // groups
    g = t - s * groups
    if s >= ns:
        s = -1
    return s, g, (s * n + ns - 1) // ns, ((s + 1) * n + ns - 1) // ns, g * m // groups, (g + 1) * m // groups


@parallel_kernel(fma=True)
def _backward_weight(x, sh, sw, pt, pl, hq, wq, off, gy, idx, y, cell, oh, ow, groups, ni_max, nv, t_n, tw, part,
                     bsum, prefetch, threads):
    """``part[s, q, o]``: slot ``s``'s sum of the weight gradient of tap ``q = c*KK + kk`` (its
    input at grid position + ``off[q]``) and output channel ``o`` over its images (image ``i``
    in slot ``i*S//n``), in image order, in tiles of ``nv`` channel vectors x ``t_n`` taps in
    rows of ``tw`` (:func:`_wgrad_tiling`); ``bsum[i, o]``: image ``i``'s bias gradient
    (:func:`_column_sums`; unless ``bsum`` has no columns).  Work items (taken by up to
    ``threads`` chunks from a shared counter, :func:`._common.next_unit`): a slot's images
    through a ``groups``-th of its tiles, ``ni_max`` images at a time, packed into the item's
    buffer by :func:`_pad_plane`, their ``oh`` x ``ow`` output gradients channels-last into its
    other buffer (all of a chunk's tiles while they are in cache): ``gy`` transposed
    (:func:`_image_channels_last`), or, with indices ``idx``, ``gy`` is the pooled gradient
    (and ``y``, unless empty, the pooled ReLU output), unpooled (:func:`_unpool_channels_last`).
    With ``prefetch`` (``_config.DIRECT_WGRAD_PREFETCH``) the next images' input and gradient are
    asked for, a share after each tile.  Returns how many indices lie outside their own window
    (then nothing is valid)."""
    n, c, h, w = x.shape
    oc = gy.shape[1]
    xflat = x.reshape(x.size)
    gyf, jf, yf = gy.reshape(gy.size), idx.reshape(idx.size), y.reshape(y.size)
    pooled, relu = idx.size > 0, y.size > 0
    cs = sh * sw * hq * wq
    xs = c * cs
    ns, qt, ocv = part.shape
    nb = bsum.shape[1]
    pn = oh * ow
    gs = pn * ocv
    pf = part.reshape(part.size)
    nqb = qt // t_n
    ntiles = (ocv // (nv * VL)) * nqb
    bad = 0
    nxt = np.zeros(1, np.int64)  # (the tasks, taken as threads free up)
    for ch in prange(min(threads, ns * groups)):
        xf = np.zeros(ni_max * xs + MAX_VL, np.float32)  # (zeroed: _pad_plane)
        gf = np.empty(ni_max * gs, np.float32)
        vt = np.empty(pn // 4 * ocv if pooled else 0, np.float32)
        it = np.empty(vt.size, np.float32)
        sums = np.empty(ocv, np.float64)  # (the bias's column sums of one image)
        while True:
            s, g, i0, i1, u0, u1 = _next_task(nxt, groups, n, ns, ntiles)
            if s < 0:
                break
            for i in range(i0, i1, ni_max):
                ni = min(ni_max, i1 - i)
                for k in range(ni * c):
                    _pad_plane(xflat, i * c + k, h, w, pt, pl, sh, sw, xf, k * cs, hq, wq)
                for k in range(ni):
                    if pooled:
                        bad += _unpool_channels_last(gyf, jf, yf, relu, i + k, oc, oh, ow, gf, k * gs, ocv, vt, it,
                                                     cell)
                    else:
                        _image_channels_last(gyf, (i + k) * oc * pn, oc, pn, gf, k * gs, ocv)
                    if nb > 0 and g == 0:  # (the bias: once per image, by its slot's first item)
                        _column_sums(gf, k * gs, pn, ocv, nb, bsum, i + k, sums)
                nn = min(ni_max, i1 - i - ni)  # (the next images, asked for while these run)
                for u in range(u0, u1):
                    if nn > 0 and prefetch:
                        _prefetch_part(xflat, (i + ni) * c * h * w, nn * c * h * w, u - u0, u1 - u0)
                        if not pooled:
                            _prefetch_part(gyf, (i + ni) * oc * pn, nn * oc * pn, u - u0, u1 - u0)
                    ob = u // nqb
                    qb = u - ob * nqb
                    c0 = ob * nv * VL
                    pb = (s * qt + qb * t_n) * ocv
                    q0 = qb * t_n
                    if nv == 2:
                        o2 = (c0, c0 + VL)
                        _wgrad_rows(xf, xs, gf, gs, i, ni, oh, ow, wq, ocv, o2, off, q0, pf, pb, i > i0, tw,
                                    rtile_zero(_T_5V2, o2), rtile_zero(_T_WT, o2))
                    elif t_n == 25 and TAPS_MAX >= 27:
                        _wgrad_rows5(xf, xs, gf, gs, i, ni, oh, ow, wq, ocv, (c0,), off, q0, pf, pb, i > i0,
                                     rtile_zero(_T_25, (c0,)))
                    elif t_n == 27 and TAPS_MAX >= 27:
                        _wgrad_rows3(xf, xs, gf, gs, i, ni, oh, ow, wq, ocv, (c0,), off, q0, pf, pb, i > i0,
                                     rtile_zero(_T_27, (c0,)))
                    else:
                        _wgrad_rows(xf, xs, gf, gs, i, ni, oh, ow, wq, ocv, (c0,), off, q0, pf, pb, i > i0, tw,
                                    rtile_zero(_T_5V1, (c0,)), rtile_zero(_T_2WT, (c0,)))
    return bad


@helper
def _image_sums(bsum, o):
    """The bias gradient of output channel ``o``: the images' ``bsum[., o]`` in order, from 0.0
    in float64 (as the Cython backend's ``_sum_column``), rounded to float32."""
    b = 0.0
    for i in range(bsum.shape[0]):
        b = b + bsum[i, o]
    return np.float32(b)


@parallel_kernel(fma=True)
def _sum_slots(part, bsum, gw, gb):
    """``gw[o, c, i, j] = part[0, q, o] + part[1, q, o] + ...`` (q = (c*kh + i)*kw + j), in slot
    order (tap by tap: the slots' rows added into slot 0's by vectors, then that row into
    ``gw``); ``gb[o]`` (unless empty): :func:`_image_sums`."""
    oc, c, kh, kw = gw.shape
    kk_n = kh * kw
    for q in prange(c * kk_n):
        ci = q // kk_n
        kk = q - ci * kk_n
        for s in range(1, part.shape[0]):
            for o in range(oc):
                part[0, q, o] += part[s, q, o]
        for o in range(oc):
            gw[o, ci, kk // kw, kk % kw] = part[0, q, o]
    for o in prange(gb.size):
        gb[o] = _image_sums(bsum, o)


def conv2d_direct_backward_weight(gy, x, sh, sw, pt, pl, gw, gb):
    """Weight and bias gradients (see :func:`fastcnn._ref.conv2d_direct_backward_weight`):
    register tiles over the output channels (channels-last output gradient) x taps, summed
    per slot of images (``_config.SLOTS``) in image order, then the slots in order, whatever
    the thread count."""
    check_once(_backend.sizes_conv2d_direct_backward_weight, gy.shape, x.shape, sh, sw, pt, pl, gw.shape, gb.shape)
    if x.shape[0] == 0:
        gw[...] = 0.0
        gb[...] = 0.0
        return
    _weight_grad(gy, np.empty(0, np.int32), np.empty(0, np.float32), x, sh, sw, pt, pl, gy.shape[2], gy.shape[3], gw,
                 gb)


def _weight_grad(gy, idx, y, x, sh, sw, pt, pl, oh, ow, gw, gb):
    """:func:`conv2d_direct_backward_weight` of the ``oh`` x ``ow`` output gradient ``gy``, or,
    with indices ``idx``, of the unpooled pooled gradient ``gy`` (and ``y``, unless empty: the
    pooled ReLU output); False, with ``gw`` and ``gb`` not valid, if an index lies outside its
    own window."""
    n, c = x.shape[:2]
    oc = gy.shape[1]
    kh, kw = gw.shape[2:]
    hq, wq, tab = _grid_shape(kh, kw, sh, sw, oh, ow)
    cs = sh * sw * hq * wq
    # Channels padded to whole vectors of any SIMD path (_simd.MAX_VL), taps to whole tiles
    # (the padding taps read offset 0).
    ocv = -(-oc // MAX_VL) * MAX_VL
    nv, t_n, tw = _wgrad_tiling(ocv, c * kh * kw, kw, sw)
    off = np.zeros(-(-c * kh * kw // t_n) * t_n, np.int64)
    off[:c * kh * kw] = (np.arange(c)[:, None] * cs + tab).ravel()
    slots = min(_config.SLOTS, n)
    part = np.empty((slots, off.size, ocv), np.float32)
    threads = _threads.get_num_threads()
    groups = 1 if slots >= 2 * threads else -(-2 * threads // slots)
    per_image = (oh * ow * ocv + c * cs) * 4
    ni_max = max(1, min(-(-n // slots), _config.DIRECT_WGRAD_BYTES // per_image))
    bsum = np.empty((n, gb.shape[0]), np.float64)  # (an empty gb: no bias gradient wanted)
    # (idx's bits as float32: transposed as the gradients; idx and y flat: one compilation for both uses)
    flat = [np.ascontiguousarray(idx).reshape(-1).view(np.float32), np.ascontiguousarray(y).reshape(-1)]
    if _backward_weight(np.ascontiguousarray(x), sh, sw, pt, pl, hq, wq, off, np.ascontiguousarray(gy), *flat,
                        _first_cells(oh, ow), oh, ow, groups, ni_max, nv, t_n, tw, part, bsum,
                        _config.DIRECT_WGRAD_PREFETCH, threads):
        return False
    _sum_slots(part, bsum, gw, gb)
    return True


@njit(**_config.NUMBA_SERIAL)  # (a function of its own: LLVM keeps its loop's values in registers)
def _winners(gf, jf, yf, relu, i, oc, oh, ow, x0, rstep, cstep, wo, wv, cnt, bsum, cell):
    """Image ``i``'s winners for :func:`_pooled_pack` (patch offsets from ``x0``, ``rstep`` per
    output row, ``cstep`` per output column) and, unless ``bsum`` has no columns, their
    gradients' float64 sums ``bsum[i, o]`` in pixel order (as :func:`_column_sums` of the
    unpooled gradient, whose other cells are zeros); returns nonzero if an index lies outside
    its own window (:func:`_window_check`; ``cell``: each window's first cell)."""
    pw = ow // 2
    phw = (oh // 2) * pw
    bad = _window_check(jf, i * oc * phw, oc, phw, cell, ow)
    for o in range(oc):
        k0 = (i * oc + o) * phw
        e0 = (i * oc + o) * (phw + 1)  # (one slot more: a dropped cell is written past the last winner)
        m = 0
        for r in range(oh // 2):
            kr = k0 + r * pw
            for a in range(2):  # (the row's upper cells, then its lower ones: pixel order)
                c0 = 2 * r * ow + a * ow
                xb = x0 + (2 * r + a) * rstep
                if relu:  # (two loops: no test per cell)
                    for j in range(pw):
                        d = jf[_u(kr + j)] - c0 - 2 * j  # (0 or 1: a cell of this row)
                        v = gf[_u(kr + j)] * np.float32(yf[_u(kr + j)] > 0)
                        wo[_u(e0 + m)] = xb + (2 * j + d) * cstep
                        wv[_u(e0 + m)] = v
                        m += (v != 0) & ((d == 0) | (d == 1))  # (a zero term of the direct sum dropped; NaN stays)
                else:
                    for j in range(pw):
                        d = jf[_u(kr + j)] - c0 - 2 * j
                        v = gf[_u(kr + j)]
                        wo[_u(e0 + m)] = xb + (2 * j + d) * cstep
                        wv[_u(e0 + m)] = v
                        m += (v != 0) & ((d == 0) | (d == 1))
        cnt[i * oc + o] = m
        if bsum.shape[1]:  # (the listed winners are the plane's nonzero cells, in pixel order)
            bs = 0.0
            for e in range(m):
                bs = bs + np.float64(wv[_u(e0 + e)])
            bsum[i, o] = bs
    return bad


@njit(**_config.NUMBA_SERIAL)
def _window_check(jf, k0, planes, phw, cell, ow):
    """Nonzero if one of the indices ``jf[k0 ...]`` of ``planes`` consecutive pooled planes is not
    0, 1, OW or OW + 1 past its window's first cell ``cell[e]`` (a vectorised loop: its indices
    unsigned, ``_u``, or LLVM gathered the values one by one)."""
    w = np.int32(ow)
    miss = np.int32(0)
    for k in range(planes):
        for e in range(phw):
            q = jf[_u(k0 + k * phw + e)] - cell[_u(e)]
            miss |= np.int32(((q & -2) != 0) & (((q - w) & -2) != 0))
    return miss


@functools.lru_cache(maxsize=64)  # (per shape; never written)
def _first_cells(oh, ow):
    """Each 2x2 pooling window's first cell (``2 * (r*OW + j)``) in an ``oh`` x ``ow`` plane."""
    pw = ow // 2
    return (2 * (np.arange(oh // 2)[:, None] * ow + np.arange(pw))).astype(np.int32).ravel()


@parallel_kernel(fma=True)
def _pooled_pack(x, gp, idx, y, sh, sw, pt, pl, oh, ow, hp, wp, xc, wo, wv, cnt, bsum, cell):
    """The images into ``xc`` in blocks of VL channels, channels-last and zero padded (``hp`` x
    ``wp`` cells of VL floats per block; the Cython backend's ``fcd_pack_cl``), and the winners
    of each output channel's pooling windows (as the Cython backend's ``_winners``): ``wo`` the
    offset of a winner's patch in its image's block, ``wv`` its gradient (times the ReLU's 1 or
    0), ``cnt`` their count, in pixel order (a window row's upper cells, then its lower ones),
    PHW + 1 slots per image and output channel, and ``bsum`` (:func:`_winners`).  Returns how
    many values were not finite or indices outside their own window (then nothing else is
    valid)."""
    n, c, h, w = x.shape
    oc = gp.shape[1]
    hw = h * w
    cb_n = (c + VL - 1) // VL
    cbv = cb_n * VL
    rs = wp * VL
    ps = hp * rs
    isz = cb_n * ps
    xf, gf, jf, yf = x.reshape(x.size), gp.reshape(gp.size), idx.reshape(idx.size), y.reshape(y.size)
    relu = y.size > 0
    bad = 0
    for i in prange(n):
        t = np.empty(hw * cbv + MAX_VL, np.float32)  # (the image channels-last, unpadded, C rounded up to blocks)
        _image_channels_last(xf, i * c * hw, c, hw, t, 0, cbv)
        nf = 0
        for e in range(hw * cbv):
            nf += not np.isfinite(t[_u(e)])
        for e in range(isz):
            xc[_u(i * isz + e)] = 0.0
        for cb in range(cb_n):
            for r in range(h):
                d = i * isz + cb * ps + ((pt + r) * wp + pl) * VL
                for q in range(w):
                    for e in range(VL):
                        xc[_u(d + q * VL + e)] = t[_u((r * w + q) * cbv + cb * VL + e)]
        # (i as int64: prange's index is uint64, range's int64; one compilation of _winners)
        nf += _winners(gf, jf, yf, relu, np.int64(i), oc, oh, ow, 0, sh * rs, sw * VL, wo, wv, cnt, bsum, cell)
        bad += nf
    return bad


@helper
def _spw_tile(xc, base, rs, wo, wv, k0, m, offs, pf, pb, pitch, add, zero):
    """One image's ``m`` winners of one output channel (``wo[k0 ...]``, ``wv``, in pixel order)
    into a tile of ``zero``'s size: rows of ``offs`` vectors of their patches (row ``r`` at
    ``base + r*rs`` + the winner's offset), started from ``pf[pb + r*pitch + offs[v]]`` (``add``)
    or zero and stored back there (the Cython backend's ``fcd_spw_tile``)."""
    acc = tile_load(pf, pb, pitch, offs, zero) if add else zero
    for e in range(m):
        acc = tile_fma_splat(acc, xc, base, rs, wo[_u(k0 + e)], offs, wv[_u(k0 + e)])
    tile_store(pf, pb, pitch, offs, acc)


#: Rows of a full pooled weight-gradient tile of 1 .. 8 vectors: TAPS_MAX accumulators at most.
_SPW_R1, _SPW_R2, _SPW_R3, _SPW_R4 = (tuple(range(max(1, TAPS_MAX // nv))) for nv in (1, 2, 3, 4))
_SPW_R5, _SPW_R6, _SPW_R7, _SPW_R8 = (tuple(range(max(1, TAPS_MAX // nv))) for nv in (5, 6, 7, 8))


@helper
def _spw_rows(xc, base, rs, wo, wv, k0, m, offs, rows, full, pf, pb, pitch, add):
    """:func:`_spw_tile` of ``offs`` vectors x ``rows`` (``full``) or one row."""
    if full:
        _spw_tile(xc, base, rs, wo, wv, k0, m, offs, pf, pb, pitch, add, rtile_zero(rows, offs))
    else:
        _spw_tile(xc, base, rs, wo, wv, k0, m, offs, pf, pb, pitch, add, rtile_zero((0,), offs))


@helper
def _spw_pass(xc, base, rs, wo, wv, k0, m, nv, full, pf, pb, pitch, add):
    """:func:`_spw_tile` of ``nv`` (1 to 8) vectors x ``TAPS_MAX // nv`` rows (``full``) or one
    row (the Cython backend's ``fcd_spw_pass``)."""
    if nv == 1:
        _spw_rows(xc, base, rs, wo, wv, k0, m, (0,), _SPW_R1, full, pf, pb, pitch, add)
    elif nv == 2:
        _spw_rows(xc, base, rs, wo, wv, k0, m, (0, VL), _SPW_R2, full, pf, pb, pitch, add)
    elif nv == 3:
        _spw_rows(xc, base, rs, wo, wv, k0, m, (0, VL, 2 * VL), _SPW_R3, full, pf, pb, pitch, add)
    elif nv == 4:
        _spw_rows(xc, base, rs, wo, wv, k0, m, (0, VL, 2 * VL, 3 * VL), _SPW_R4, full, pf, pb, pitch, add)
    elif nv == 5:
        _spw_rows(xc, base, rs, wo, wv, k0, m, (0, VL, 2 * VL, 3 * VL, 4 * VL), _SPW_R5, full, pf, pb, pitch, add)
    elif nv == 6:
        _spw_rows(xc, base, rs, wo, wv, k0, m, (0, VL, 2 * VL, 3 * VL, 4 * VL, 5 * VL), _SPW_R6, full, pf, pb, pitch,
                  add)
    elif nv == 7:
        _spw_rows(xc, base, rs, wo, wv, k0, m, (0, VL, 2 * VL, 3 * VL, 4 * VL, 5 * VL, 6 * VL), _SPW_R7, full, pf, pb,
                  pitch, add)
    else:
        _spw_rows(xc, base, rs, wo, wv, k0, m, (0, VL, 2 * VL, 3 * VL, 4 * VL, 5 * VL, 6 * VL, 7 * VL), _SPW_R8, full,
                  pf, pb, pitch, add)


@functools.lru_cache(maxsize=64)  # (per shape; never written)
def _spw_passes(kh, kw):
    """The tiles ``(first vector, width NV <= 8, first row, rows R)`` of :func:`_spw_pass` over
    a block's patch of ``kh`` rows x ``kw`` vectors: rows in groups of ``TAPS_MAX // NV``, the
    rest one at a time (the Cython backend's rule)."""
    out, v0 = [], 0
    while v0 < kw:
        nv = min(8, kw - v0)
        rm = max(1, TAPS_MAX // nv)
        for r0 in range(kh):
            if r0 % rm == 0 and r0 + rm <= kh:
                out.append((v0, nv, r0, rm))
            elif r0 >= kh - kh % rm:
                out.append((v0, nv, r0, 1))
        v0 += nv
    return np.array(out, np.int64).reshape(len(out), 4)


@parallel_kernel(fma=True)
def _pooled_tiles(xc, wo, wv, cnt, passes, rs, ps, cb_n, kh, n, groups, part, threads):
    """``part[s, o, (cb*kh + r)*RP + v*VL + l]``: slot ``s``'s sums (image ``i`` in slot
    ``i*S//n``, in image order) of output channel ``o``'s winners times their patches (block
    ``cb``, row ``r``, vector ``v``, lane ``l``).  Tasks (the Cython backend's, taken by up to
    ``threads`` chunks from a shared counter): a slot's images for a ``groups``-th of the
    output channels, each image through every block, output channel
    and pass of ``passes`` while its block is in cache."""
    ns, oc, qs = part.shape
    npass = passes.shape[0]
    rp = qs // (cb_n * kh)
    isz = cb_n * ps
    phw = wo.size // cnt.size - 1
    pf = part.reshape(part.size)
    nxt = np.zeros(1, np.int64)  # (the tasks, taken as threads free up)
    for ch in prange(min(threads, ns * groups)):
        while True:
            s, g, i0, i1, o0, o1 = _next_task(nxt, groups, n, ns, oc)
            if s < 0:
                break
            for i in range(i0, i1):
                for cb in range(cb_n):
                    for o in range(o0, o1):
                        e = i * oc + o
                        for u in range(npass):
                            v0, nv, r0, rr = passes[u, 0], passes[u, 1], passes[u, 2], passes[u, 3]
                            _spw_pass(xc, i * isz + cb * ps + r0 * rs + v0 * VL, rs, wo, wv, e * (phw + 1), cnt[e], nv,
                                      rr > 1, pf, (s * oc + o) * qs + (cb * kh + r0) * rp + v0 * VL, rp, i > i0)


@parallel_kernel(fma=True)
def _pooled_sums(part, c, bsum, gw, gb):
    """``gw[o, c, i, j]``: the slots' sums of ``part[., o, (c//VL*KH + i)*RP + j*VL + c%VL]`` in slot
    order (RP = KW*VL; each slot's row added into slot 0's by vectors); ``gb`` (unless empty):
    :func:`_image_sums`."""
    ns, oc, qs = part.shape
    kh, kw = gw.shape[2:]
    rp = kw * VL
    for o in prange(oc):
        for s in range(1, ns):
            for q in range(qs):
                part[0, o, q] += part[s, o, q]
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    gw[o, ci, i, j] = part[0, o, ((ci // VL) * kh + i) * rp + j * VL + ci % VL]
        if gb.size:
            gb[o] = _image_sums(bsum, o)


def _pooled_weight(gp, idx, y, x, sh, sw, pt, pl, oh, ow, gw, gb):
    """The weight and bias gradients from the pooling's winners only (docs/PERFORMANCE.md,
    section 9, "Pooled weight gradient"): the direct kernels' sums without their zero terms, the
    same bytes.  False, having written nothing, if an index lies outside its own window or ``x``
    holds a value that is not finite (where a zero term would be NaN)."""
    n, c, h, w = x.shape
    oc, _, kh, kw = gw.shape
    hp, wp = max(pt + h, (oh - 1) * sh + kh), max(pl + w, (ow - 1) * sw + kw)
    cb_n = -(-c // VL)
    isz = cb_n * hp * wp * VL
    phw = gp.shape[2] * gp.shape[3]
    xc = np.empty(n * isz, np.float32)
    wo = np.empty(n * oc * (phw + 1), np.int64)
    wv = np.empty(n * oc * (phw + 1), np.float32)
    cnt = np.empty(n * oc, np.int64)
    bsum = np.empty((n, gb.shape[0]), np.float64)
    if _pooled_pack(np.ascontiguousarray(x), gp, idx, y, sh, sw, pt, pl, oh, ow, hp, wp, xc, wo, wv, cnt, bsum,
                    _first_cells(oh, ow)):
        return False
    slots = min(_config.SLOTS, n)
    threads = _threads.get_num_threads()
    groups = 1 if slots >= 2 * threads else min(oc, -(-2 * threads // slots))
    part = np.empty((slots, oc, cb_n * kh * kw * VL), np.float32)
    _pooled_tiles(xc, wo, wv, cnt, _spw_passes(kh, kw), wp * VL, hp * wp * VL, cb_n, kh, n, groups, part, threads)
    _pooled_sums(part, c, bsum, gw, gb)
    return True


@njit(**_config.NUMBA_SERIAL)  # (a function of its own, as _winners)
def _cells(gf, jf, yf, relu, i, oc, ow, phw, ws, cnt, co, cg, cell):
    """Image ``i``'s winners (as :func:`_winners`) bucketed by output cell, each cell's in
    output-channel order (as the Cython backend's ``_cells``): ``cnt[p]`` of them, kernel
    offsets ``co[p*S + e]`` (o * ws) and gradients ``cg``, S = oc + 1 slots per cell (a
    dropped winner is written past the last one).  Returns nonzero if an index lies outside
    its own window (:func:`_window_check`; then nothing is valid)."""
    s = oc + 1
    if _window_check(jf, i * oc * phw, oc, phw, cell, ow):
        return 1
    for o in range(oc):
        k0 = (i * oc + o) * phw
        w = o * ws
        if relu:  # (two loops: no test per cell)
            for k in range(phw):
                p = jf[_u(k0 + k)]
                v = gf[_u(k0 + k)] * np.float32(yf[_u(k0 + k)] > 0)
                e = cnt[p]
                co[_u(p * s + e)] = w
                cg[_u(p * s + e)] = v
                cnt[p] = e + (v != 0)
        else:
            for k in range(phw):
                p = jf[_u(k0 + k)]
                v = gf[_u(k0 + k)]
                e = cnt[p]
                co[_u(p * s + e)] = w
                cg[_u(p * s + e)] = v
                cnt[p] = e + (v != 0)
    return 0


@helper
def _spd_run(wf, co, cg, cnt, c0, s, ow, base, offs, xf, xb):
    """One row of ``ow`` output cells (``c0`` ...) through one pass of ``offs`` vectors (as the
    Cython backend's ``fcd_spd_tile``): cell ``x``'s winners (``co[(c0 + x)*s + e]``, ``cg``, in
    order) add their gradient times ``wf[base + their offset + offs[v]]`` to
    ``xf[xb + x*VL + offs[v]]``, one FMA each; the tile rolls along the row in registers (the
    buffer has a vector to spare past its end for the last, unused load)."""
    acc = tile_load(xf, xb, 0, offs, rtile_zero((0,), offs))
    for x in range(ow):
        k0 = (c0 + x) * s
        for e in range(cnt[c0 + x]):
            acc = tile_fma_splat(acc, wf, base, 0, co[_u(k0 + e)], offs, cg[_u(k0 + e)])
        acc = tile_roll(acc, xf, xb + x * VL, xb + (x + len(offs)) * VL)
    tile_store_head(xf, xb + ow * VL, acc)


@helper
def _spd_width(wf, co, cg, cnt, c0, s, ow, base, nv, xf, xb):
    """:func:`_spd_run` of ``nv`` (1 to 8) vectors."""
    if nv == 1:
        _spd_run(wf, co, cg, cnt, c0, s, ow, base, (0,), xf, xb)
    elif nv == 2:
        _spd_run(wf, co, cg, cnt, c0, s, ow, base, (0, VL), xf, xb)
    elif nv == 3:
        _spd_run(wf, co, cg, cnt, c0, s, ow, base, (0, VL, 2 * VL), xf, xb)
    elif nv == 4:
        _spd_run(wf, co, cg, cnt, c0, s, ow, base, (0, VL, 2 * VL, 3 * VL), xf, xb)
    elif nv == 5:
        _spd_run(wf, co, cg, cnt, c0, s, ow, base, (0, VL, 2 * VL, 3 * VL, 4 * VL), xf, xb)
    elif nv == 6:
        _spd_run(wf, co, cg, cnt, c0, s, ow, base, (0, VL, 2 * VL, 3 * VL, 4 * VL, 5 * VL), xf, xb)
    elif nv == 7:
        _spd_run(wf, co, cg, cnt, c0, s, ow, base, (0, VL, 2 * VL, 3 * VL, 4 * VL, 5 * VL, 6 * VL), xf, xb)
    else:
        _spd_run(wf, co, cg, cnt, c0, s, ow, base, (0, VL, 2 * VL, 3 * VL, 4 * VL, 5 * VL, 6 * VL, 7 * VL), xf, xb)


@functools.lru_cache(maxsize=64)  # (per shape; never written)
def _spd_passes(kh, kw):
    """Passes ``(first vector, width, row)`` of the pooled input gradient over a block's patch
    of ``kh`` rows of ``kw`` vectors: one row at a time, its vectors in runs of up to 8 (the
    Cython backend's; the order of each sum follows them)."""
    return np.array([(v0, min(8, kw - v0), r) for r in range(kh) for v0 in range(0, kw, 8)], np.int64)


@parallel_kernel(fma=True)
def _pooled_data(gp, idx, y, wf, kh, kw, passes, cell, pt, pl, oh, ow, hp, wp, gx, threads):
    """The input gradient from the pooling's winners (as the Cython backend's ``_data_pooled``):
    per image (``threads`` chunks take them from a shared counter), in blocks of VL channels
    (``wf``: the kernels packed ``[o][block][kh][kw][VL]``), pass by pass of ``passes`` (one row
    of vectors each), cell by cell in pixel order, the cell's winners added to the image's
    channels-last padded gradient, then that to ``gx`` (``cell``: each window's first cell,
    :func:`_cells`).  Returns nonzero if an index lies outside its own window (then ``gx`` is
    not valid)."""
    n, c, h, w = gx.shape
    oc = gp.shape[1]
    phw = gp.shape[2] * gp.shape[3]
    cb = (c + VL - 1) // VL
    kb = kh * kw * VL
    rs = wp * VL
    ps = hp * rs
    p_n = oh * ow
    s = oc + 1
    gf, jf, yf = gp.reshape(gp.size), idx.reshape(idx.size), y.reshape(y.size)
    relu = y.size > 0
    npass = passes.shape[0]
    bad = 0
    nxt = np.zeros(1, np.int64)
    for t in prange(threads):
        xf = np.empty(cb * ps + VL, np.float32)  # (a vector past the end: _spd_run's last load)
        cnt = np.empty(p_n, np.int64)
        co = np.empty(p_n * s, np.int64)
        cg = np.empty(p_n * s, np.float32)
        nb = 0
        while True:  # (the images from the shared counter)
            i = next_unit(nxt)
            if i >= n:
                break
            cnt[:] = 0
            nb += _cells(gf, jf, yf, relu, i, oc, ow, phw, cb * kb, cnt, co, cg, cell)
            xf[:] = 0.0
            for b in range(cb):
                for u in range(npass):
                    v0, nv, r0 = passes[u, 0], passes[u, 1], passes[u, 2]
                    base = b * kb + (r0 * kw + v0) * VL
                    for r in range(oh):
                        _spd_width(wf, co, cg, cnt, r * ow, s, ow, base, nv, xf, b * ps + (r + r0) * rs + v0 * VL)
            for b in range(cb):  # (channels-last, padded -> gx[i])
                for ci in range(min(VL, c - b * VL)):
                    for r in range(h):
                        e0 = b * ps + ((pt + r) * wp + pl) * VL + ci
                        for j in range(w):
                            gx[i, b * VL + ci, r, j] = xf[_u(e0 + j * VL)]
        bad += nb
    return bad


@parallel_kernel
def _pack_kernels(w, wf):
    """``wf[o][c // VL][kh][kw][c % VL] = w[o, c, kh, kw]``, channels past C zero; returns how
    many values of ``w`` are not finite."""
    oc, c, kh, kw = w.shape
    ks = (c + VL - 1) // VL * kh * kw * VL
    bad = 0
    for o in prange(oc):
        nb = 0
        for e in range(ks):
            wf[o * ks + e] = 0.0
        for ch in range(c):
            for i in range(kh):
                for j in range(kw):
                    v = w[o, ch, i, j]
                    nb += not np.isfinite(v)
                    wf[o * ks + ((ch // VL * kh + i) * kw + j) * VL + ch % VL] = v
        bad += nb
    return bad


def _pooled_input_grad(gp, idx, y, w, pt, pl, oh, ow, gx):
    """``gx`` from the pooling's winners (docs/PERFORMANCE.md, section 9, "Pooled input
    gradient"; stride 1).  False if an index lies outside its own window or ``w`` holds a
    value that is not finite (where a dropped zero term would be NaN): the caller then runs the
    dense kernel, which writes all of ``gx``."""
    n, c, h, wd = gx.shape
    oc, _, kh, kw = w.shape
    wf = np.empty(oc * -(-c // VL) * VL * kh * kw, np.float32)
    if _pack_kernels(np.ascontiguousarray(w), wf):
        return False
    hp, wp = max(pt + h, oh + kh - 1), max(pl + wd, ow + kw - 1)
    threads = min(_threads.get_num_threads(), n)
    return not _pooled_data(gp, idx, y, wf, kh, kw, _spd_passes(kh, kw), _first_cells(oh, ow), pt, pl, oh, ow, hp, wp,
                            gx, threads)


def conv2d_direct_backward_maxpool2(gp, idx, y, x, w, sh, sw, pt, pl, oh, ow, gx, gw, gb):
    """Gradients of the pooled direct forward (see
    :func:`fastcnn._ref.conv2d_direct_backward_maxpool2`): the weight gradient from the
    pooling's winners where the kernel is large enough (``_config.POOLED_WGRAD_MIN_PATCH``),
    the input gradient too at stride 1 (``_config.POOLED_DGRAD_MIN_PATCH``), else this
    backend's primitives composed."""
    check_once(_backend.sizes_conv2d_direct_backward_maxpool2, gp.shape, idx.shape, y.shape, x.shape, w.shape, sh,
               sw, pt, pl, oh, ow, gx.shape, gw.shape, gb.shape)
    n, c, kh, kw = x.shape[0], x.shape[1], w.shape[2], w.shape[3]
    if n == 0:
        pooled = False
    elif c * kh * kw >= _config.POOLED_WGRAD_MIN_PATCH:
        pooled = _pooled_weight(gp, idx, y, x, sh, sw, pt, pl, oh, ow, gw, gb)
    else:  # (the dense kernel, each image unpooled where it is packed)
        pooled = _weight_grad(gp, idx, y, x, sh, sw, pt, pl, oh, ow, gw, gb)
    dense_gx = gx.size > 0 and not (sh == sw == 1 and c * kh * kw >= _config.POOLED_DGRAD_MIN_PATCH
                                    and _pooled_input_grad(gp, idx, y, w, pt, pl, oh, ow, gx))
    if pooled and not dense_gx:
        return
    g = gp
    if y.size:
        g = np.empty_like(gp)
        _activation.relu_backward(gp, y, g)
    full = np.empty(gp.shape[:2] + (oh, ow), np.float32)
    _pool.maxpool2d_backward(g, idx, full)
    if not pooled:
        conv2d_direct_backward_weight(full, x, sh, sw, pt, pl, gw, gb)
    if dense_gx:
        conv2d_direct_backward_data(full, w, sh, sw, pt, pl, gx)


# The Winograd convolutions (their own module, which packs with _pad_plane) are this module's
# primitives too, as in the Cython backend's conv_direct.
from .winograd import (  # noqa: E402, F401
    conv2d_winograd_backward_data,
    conv2d_winograd_backward_weight,
    conv2d_winograd_forward,
    conv2d_winograd_forward_maxpool2,
)
