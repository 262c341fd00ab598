# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Direct convolution kernels of the Cython backend (C micro-kernels in ``conv_direct.h``).

Contract: :func:`fastcnn._ref.conv2d_direct_forward` and friends (``# IN`` / ``# OUT``).  The
SIMD path (AVX-512, AVX2+FMA or a portable baseline) is chosen at import from the CPU, or
forced by ``FASTCNN_ISA``.
"""

import numpy as np

from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

include "_common.pxi"

cdef extern from "conv_direct.h" nogil:
    ctypedef Py_ssize_t fcd_i
    ctypedef struct fcd_geo:
        fcd_i C, Hs, Ws, OC, KH, KW, sh, sw, pt, pl, OH, OW, Hq, Wq, plane, P, PR, xq_size, J, OCP
    void fcd_geo_init(fcd_geo* g, fcd_i C, fcd_i Hs, fcd_i Ws, fcd_i dh, fcd_i dw, fcd_i OC,
                      fcd_i KH, fcd_i KW, fcd_i sh, fcd_i sw, fcd_i pt, fcd_i pl, fcd_i OH,
                      fcd_i OW, fcd_i J)
    void fcd_geo_grid(fcd_geo* g, fcd_i Hq, fcd_i Wq)
    void fcd_make_tab(const fcd_geo* g, fcd_i* tab)
    void fcd_pack_input(const fcd_geo* g, const float* src, float* xq, int zeroed)
    void fcd_pack_weights(const fcd_geo* g, const float* w, int flip, float* wp)
    void fcd_unpack_output(const fcd_geo* g, const float* yg, const float* bias, int relu, float* y)
    void fcd_pack_grad_t(const fcd_geo* g, const float* gy, fcd_i OCV, float* gt)
    int fcd_unpool_grad_t(const float* gp, const int* idx, const float* y, fcd_i OC, fcd_i OH, fcd_i OW,
                          fcd_i OCV, float* gt, float* sc)
    void fcd_grad_t_sums(const float* gt, fcd_i P, fcd_i OCV, fcd_i n, double* out)
    void fcp_pool_planes(const float* full, float* out, int* io, int* scratch, fcd_i planes, fcd_i OH, fcd_i OW)
    void fcd_fwd_image(const fcd_geo* g, const float* xq, const fcd_i* tab, const float* wp,
                       const fcd_i* st, const fcd_i* yo, const fcd_i* nv, fcd_i NS,
                       const float* bias, int relu, float* y, float* yg)
    void fcd_fwd_image_ct(const fcd_geo* g, const float* xq, const fcd_i* tab, const float* wp,
                          const float* bias, int relu, float* y, float* cl)
    void fcd_pack_weights_blocks(const fcd_geo* g, const float* w, int flip, fcd_i B, float* wp)
    int fcd_use_ctile(const fcd_geo* g, fcd_i NS, fcd_i VL, fcd_i JC, fcd_i gain_pct, fcd_i min_patch)
    void fcd_interleave_phases(const float* pb, const fcd_i* poff, fcd_i C, fcd_i H, fcd_i W,
                               fcd_i sh, fcd_i sw, float* gx)
    fcd_i fcd_pixel_starts(const fcd_geo* g, fcd_i VL, fcd_i* st, fcd_i* yo, fcd_i* nv, int* rows)
    void fcd_prefetch_part(const float* p, fcd_i n, fcd_i k, fcd_i K)
    void fcd_bwd_weight_tile(const float* xq, fcd_i xs, const float* gt, fcd_i gs, fcd_i NI,
                             fcd_i OCV, fcd_i OH, fcd_i OW, fcd_i Wq, fcd_i ob, int V,
                             const fcd_i* off, float* out, int add, int kw, fcd_i T)
    float fcd_fma_probe(long iters, float m, fcd_i* chains)
    enum: FCW_QMAX
    fcd_i fcw_u_stride(fcd_i C, fcd_i Q)
    fcd_i fcw_m_stride(fcd_i J, fcd_i Q)
    void fcw_pack_weights(fcd_i OC, fcd_i C, fcd_i J, fcd_i OCP, const float* w, int flip, fcd_i ob,
                          float* vp)
    void fcw_pack_weights6(fcd_i OC, fcd_i C, fcd_i OCP, const float* w, int flip, fcd_i ob, int K,
                           float* vp)  # (J = fcd_J)
    void fcw_images(const fcd_geo* g, const float* src, fcd_i NI, const float* vp,
                    const fcd_i* st, const float* bias, int relu, fcd_i OH, fcd_i OW, float* y,
                    float* xq, fcd_i xs, int zeroed, float* u, float* m, float* z, fcd_i Q, int R, int M)
    void fcw_wgrad(const fcd_geo* g, const float* src, fcd_i NI, const float* gt, fcd_i gs, fcd_i OCV,
                   fcd_i OH, fcd_i OW, float* xq, fcd_i xs, int zeroed, float* u, float* mt, fcd_i Q,
                   const fcd_i* off, fcd_i T, int V, float* z, int add, int R)
    void fcw_unpack_wgrad(const float* z, fcd_i zs, fcd_i OCV, fcd_i C, fcd_i OC, int R, fcd_i c0, fcd_i c1,
                          float* gw)
    int fcd_cpu_supports(int isa)
    int fcd_set_isa(int isa)
    void fcd_spw_pass(const float* xc, const fcd_i* wo, const float* wv, fcd_i m, fcd_i RS, fcd_i NV, fcd_i R,
                      float* out, fcd_i os, int add)
    void fcd_spd_row(const float* wb, const fcd_i* co, const float* cg, const int* cnt, fcd_i S, fcd_i OW, fcd_i NV,
                     float* out)
    int fcd_pack_cl(const float* src, fcd_i C, fcd_i H, fcd_i W, fcd_i pt, fcd_i pl, fcd_i Hp, fcd_i Wp, fcd_i PS,
                    float* tmp, float* dst)
    fcd_i fcd_J
    fcd_i fcd_JC
    fcd_i fcd_VL
    fcd_i fcd_WT
    fcd_i fcd_TM

cdef extern from "planestats.h" nogil:
    void fps_plane_stats(const float* x, Py_ssize_t P, double* sd)  # sd = sum(x), sum((x - mean)**2)
    void fps_combine(const double* sd, Py_ssize_t N, Py_ssize_t C, Py_ssize_t P, double* mean, double* var)

from fastcnn._dispatch import winograd_group, winograd_units
from fastcnn._config import DIRECT_WGRAD_BYTES, DIRECT_WGRAD_PREFETCH, ENV_ISA, ISAS, POOLED_DGRAD_MIN_PATCH, POOLED_WGRAD_MIN_PATCH, SLOTS, WINOGRAD_TILES, WINOGRAD_VECTORS, requested_isa  # ISAS: slowest first = the C code's ISA number

_active = None
_error = None


def supported_isas():
    """The SIMD paths this CPU (and this build) can run, slowest first."""
    return tuple(name for i, name in enumerate(ISAS) if fcd_cpu_supports(i))


def _select():
    global _active, _error
    try:
        want = requested_isa()
    except ValueError as exc:
        _error = str(exc)
        return
    have = supported_isas()
    if want is None:
        want = have[len(have) - 1]
    elif want not in have:
        _error = (f"{ENV_ISA}={want}, but this CPU or build supports only {', '.join(have)}; "
                  f"unset {ENV_ISA} or choose one of those")
        return
    if fcd_set_isa(ISAS.index(want)) != 0:  # (cannot happen: checked above)
        _error = f"cannot select the {want} kernels"
        return
    _active = want


_select()


def active_isa():
    """The SIMD path of the direct convolution kernels (``"avx512"``, ``"avx2"`` or
    ``"baseline"``); raises RuntimeError if ``FASTCNN_ISA`` asks for one this CPU lacks."""
    if _active is None:
        raise RuntimeError(f"direct convolution kernels unavailable: {_error}")
    return _active


cdef inline int _use_ctile(const fcd_geo* g, Py_ssize_t NS) noexcept nogil:
    """Whether ``g``'s forward (``NS`` pixel vectors) runs on channel tiles: ``fcd_use_ctile``
    with the active path's vector sizes and ``_config``'s margin and minimum patch."""
    return fcd_use_ctile(g, NS, fcd_VL, fcd_JC, FASTCNN_DIRECT_CTILE_GAIN_PCT, FASTCNN_DIRECT_CTILE_MIN_PATCH)


cdef inline Py_ssize_t _al64(Py_ssize_t nbytes) noexcept nogil:
    """``nbytes`` rounded up to whole 64-byte lines (each scratch part starts on a line)."""
    return (nbytes + 63) & ~(<Py_ssize_t>63)


cdef inline void _planes_stats(const float* y, Py_ssize_t planes, Py_ssize_t P, double* sd) noexcept nogil:
    """The batch-norm statistics' sums of ``planes`` consecutive planes of ``P`` values (IN
    ``y``) while they are in cache: ``sd[2k]``, ``sd[2k + 1]`` (OUT) of plane ``k``
    (``fps_plane_stats``)."""
    cdef Py_ssize_t k
    for k in range(planes):
        fps_plane_stats(y + k * P, P, sd + 2 * k)


cdef double* _stats_scratch(stats, Py_ssize_t N, Py_ssize_t OC, _A* s, str op, const Py_ssize_t* wshape) except? NULL:
    """NULL without ``stats``; else ``s`` = the checked (2, OC) float64 output and the
    (N, OC, 2) plane sums' scratch (to free)."""
    if stats is None:
        return NULL
    _arr(stats, cnp.NPY_FLOAT64, 2, True, "stats", s)
    _backend.sizes_stats(op, _dims(wshape, 4), _dims(s.shape, 2))
    cdef double* sd = <double*>malloc(max(N * OC * 2, 1) * sizeof(double))
    if sd == NULL:
        raise MemoryError()
    return sd


ctypedef struct _Unpool:
    # The full-size gradient of a convolution whose output was 2x2 max pooled (and ReLU'd),
    # rebuilt one plane at a time from the pooled gradient (conv2d_direct_backward_maxpool2).
    const float* gp   # (N, C, PHW) gradient of the pooled output
    const int* idx    # (N, C, PHW) pooling indices, flat into the (OH, OW) plane
    const float* y    # (N, C, PHW) pooled output (the ReLU's mask y > 0), or NULL: no ReLU
    Py_ssize_t C, PHW, P


cdef Py_ssize_t _unpool_image(const _Unpool* u, Py_ssize_t i, float* out) noexcept nogil:
    """Image ``i`` of the full-size gradient, (C, P) floats (each plane as maxpool2d_backward
    of relu_backward's product); returns the bad index count."""
    cdef Py_ssize_t c, o, bad = 0
    for c in range(u.C):
        o = (i * u.C + c) * u.PHW
        bad += _maxpool_bwd_plane(u.gp + o, u.idx + o, u.y + o if u.y != NULL else NULL, out + c * u.P,
                                  u.P, u.PHW)
    return bad


cdef Py_ssize_t _direct_block(const fcd_geo* g, const float* src, Py_ssize_t N, const _Unpool* up,
                              const float* bias, int relu, const float* wp, const Py_ssize_t* tab,
                              const Py_ssize_t* st, Py_ssize_t L, Py_ssize_t NS, int rows, int ct,
                              char* blocks, Py_ssize_t size, Py_ssize_t o_yg, Py_ssize_t o_yi, Py_ssize_t o_up,
                              float* out, Py_ssize_t out_is, int* io, double* sd, Py_ssize_t t,
                              Py_ssize_t* nxt) noexcept nogil:
    """Block ``t`` of :func:`_direct_images` (its scratch): the images it takes from the
    counter ``nxt``; ``out``: image ``i`` at ``out + i*out_is``; ``sd`` (if not NULL): each
    output plane's sums (:func:`_planes_stats`).  Returns the bad index count of ``up``."""
    cdef Py_ssize_t CHW = g.C * g.Hs * g.Ws, i, bad = 0
    cdef Py_ssize_t HW = g.OH * g.OW, PH = g.OH // 2, PW = g.OW // 2
    cdef const float* si
    cdef float* dst
    cdef float* xq = <float*>(blocks + t * size)
    cdef float* yg = <float*>(blocks + t * size + o_yg)
    cdef float* yi = <float*>(blocks + t * size + o_yi) if o_yi >= 0 else NULL
    cdef int* ii = <int*>(yi + g.OC * HW) if o_yi >= 0 else NULL
    cdef int packed = 0
    while True:
        i = fastcnn_next_unit(nxt)
        if i >= N:
            break
        dst = yi if yi != NULL else out + i * out_is
        if up != NULL:
            si = <float*>(blocks + t * size + o_up)
            bad += _unpool_image(up, i, <float*>si)
        else:
            si = src + i * CHW
        fcd_pack_input(g, si, xq, packed)  # (the padding's zeros stay from the block's first image)
        packed = 1
        if ct:  # (channel tiles: channels-last rows in yg, then to the output)
            fcd_fwd_image_ct(g, xq, tab, wp, bias, relu, dst, yg)
        elif rows:  # (tiles written to the output directly)
            fcd_fwd_image(g, xq, tab, wp, st, st + L, st + 2 * L, NS, bias, relu, dst, yg)
        else:
            fcd_fwd_image(g, xq, tab, wp, st, NULL, NULL, NS, NULL, 0, NULL, yg)
            fcd_unpack_output(g, yg, bias, relu, dst)
        if yi != NULL:
            fcp_pool_planes(dst, out + i * out_is, io + i * g.OC * PH * PW if io != NULL else NULL, ii, g.OC,
                            g.OH, g.OW)
        elif sd != NULL:
            _planes_stats(dst, g.OC, HW, sd + i * g.OC * 2)
    return bad


cdef Py_ssize_t _direct_images(const fcd_geo* g,
                         const float* src, Py_ssize_t N, # IN  (N, g.C, g.Hs, g.Ws), or NULL: rebuilt
                         const _Unpool* up,              #     from up, image by image (else NULL)
                         const float* w, int flip,       # IN  weights, packed with flip
                         const float* bias, int relu,    # IN  bias (or NULL), ReLU on output
                         float* wp, Py_ssize_t* tab, Py_ssize_t* st, Py_ssize_t L,
                         #                                 scratch: packed weights, tap offsets,
                         #                                 pixel starts (3 rows of L)
                         char* blocks, Py_ssize_t size, Py_ssize_t o_yg, Py_ssize_t o_yi,
                         #                                 scratch per block of images (``size``
                         #                                 bytes): packed input at 0, output grid
                         #                                 at o_yg, pooled: one image's output at
                         #                                 o_yi (else -1), the indices after it;
                         Py_ssize_t o_up,                #                 up: the rebuilt image at o_up
                         float* out,                     # OUT (N, g.OC, g.OH, g.OW), pooled: halved
                         int* io,                        # OUT pooled: NULL or out's flat arg-max indices
                         double* sd,                     # OUT NULL or (N, g.OC, 2): each output plane's sums
                         Py_ssize_t T, int nt) noexcept nogil:
    """The forward kernel of :func:`conv2d_direct_forward` and :func:`conv2d_direct_backward_data`,
    ``T`` blocks (one per thread), each with its own scratch, taking the images one at a time
    from a shared counter (:func:`_direct_block`); pooled
    (``o_yi >= 0``) each image's output goes to its block's scratch and ``out`` gets its 2x2 max
    pooling (and ``io``, if given, the pooling's indices).  Returns the bad index count of ``up``."""
    cdef Py_ssize_t t, NS, bad = 0, nxt = 0
    cdef Py_ssize_t out_is = g.OC * (g.OH // 2) * (g.OW // 2) if o_yi >= 0 else g.OC * g.OH * g.OW
    cdef int rows, ct
    fcd_make_tab(g, tab)
    NS = fcd_pixel_starts(g, fcd_VL, st, st + L, st + 2 * L, &rows)
    ct = _use_ctile(g, NS)
    if ct:
        fcd_pack_weights_blocks(g, w, flip, fcd_JC, wp)
    else:
        fcd_pack_weights(g, w, flip, wp)
    if nt == 1:  # (a parallel region, even of one thread, costs: docs/PERFORMANCE.md, 5)
        return _direct_block(g, src, N, up, bias, relu, wp, tab, st, L, NS, rows, ct, blocks, size, o_yg, o_yi,
                             o_up, out, out_is, io, sd, 0, &nxt)
    for t in prange(T, schedule='static', num_threads=nt):
        bad += _direct_block(g, src, N, up, bias, relu, wp, tab, st, L, NS, rows, ct, blocks, size, o_yg, o_yi,
                             o_up, out, out_is, io, sd, t, &nxt)
    return bad


cdef Py_ssize_t _direct(fcd_geo* g, const float* src, Py_ssize_t N, const float* w, int flip,
                        const float* bias, int relu, float* out, int nt, int pool=0,
                        int* io=NULL, const _Unpool* up=NULL, double* sd=NULL) except -1:
    """:func:`_direct_images` with its scratch, one allocation: packed weights, tap offsets,
    pixel starts, and per block of images the packed input and the output grid (and with
    ``pool`` one image's full output and one pooled plane's indices; with ``up`` the rebuilt
    source image).  Returns the bad index count of ``up``."""
    cdef Py_ssize_t T = min(<Py_ssize_t>nt, N), bad
    cdef Py_ssize_t L = g.P // fcd_VL + 1 + g.OH * (g.OW // fcd_VL + 1)
    cdef Py_ssize_t ocp_ct = (g.OC + fcd_JC - 1) // fcd_JC * fcd_JC  # (channel tiles' blocks)
    cdef Py_ssize_t b_wp = _al64(max(g.OCP, ocp_ct) * g.C * g.KH * g.KW * sizeof(float))
    cdef Py_ssize_t b_tab = _al64(g.KH * g.KW * sizeof(Py_ssize_t))
    cdef Py_ssize_t b_st = _al64(3 * L * sizeof(Py_ssize_t))
    cdef Py_ssize_t o_yg = _al64(g.xq_size * sizeof(float))
    cdef Py_ssize_t o_yi = o_yg + _al64(max(g.OCP * g.PR, g.OH * g.OW * fcd_JC) * sizeof(float))
    cdef Py_ssize_t size = o_yi, o_up = 0
    if pool:
        size += _al64(g.OC * g.OH * g.OW * sizeof(float) + (g.OH // 2) * (g.OW // 2) * sizeof(int))
    else:
        o_yi = -1
    if up != NULL:
        o_up = size
        size += _al64(g.C * g.Hs * g.Ws * sizeof(float))
    cdef char* mem = <char*>malloc(b_wp + b_tab + b_st + T * size + 64)
    if mem == NULL:
        raise MemoryError()
    cdef char* base = <char*>_al64(<Py_ssize_t>mem)
    try:
        with nogil:  # (the prange lives in a nogil function: within this one, which holds the GIL,
            #  it compiled slower)
            bad = _direct_images(g, src, N, up, w, flip, bias, relu, <float*>base, <Py_ssize_t*>(base + b_wp),
                                 <Py_ssize_t*>(base + b_wp + b_tab), L, base + b_wp + b_tab + b_st, size,
                                 o_yg, o_yi, o_up, out, io, sd, T, nt)
    finally:
        free(mem)
    return bad


cdef void _phases_images(const fcd_geo* geo, Py_ssize_t NPH,
                         const float* gy, Py_ssize_t N,  # IN  (N, gc.C, gc.Hs, gc.Ws)
                         const float* wp, const Py_ssize_t* tab, const Py_ssize_t* st,
                         const Py_ssize_t* o_wp, const Py_ssize_t* o_tab, const Py_ssize_t* o_st,
                         const Py_ssize_t* ns, const Py_ssize_t* lst, const int* rows,
                         #                                 per phase: packed weights, tap offsets,
                         #                                 pixel starts (3 rows of lst), their
                         #                                 offsets, vector counts, store mode
                         #                                 (0 grid, 1 rows, 2 channel tiles)
                         const Py_ssize_t* poff,         # IN  phase p's (C, Ha, Wb) in a phase buffer
                         const fcd_geo* gc,              # IN  the packing all phases read
                         char* blocks, Py_ssize_t size, Py_ssize_t o_yg, Py_ssize_t o_pb,
                         #                                 scratch per block of images: packed
                         #                                 input (at 0), output grid, phase buffer
                         Py_ssize_t pb_size, Py_ssize_t sh, Py_ssize_t sw,
                         float* gx, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,  # OUT (N, C, H, W)
                         Py_ssize_t T, int nt) noexcept nogil:
    """:func:`_data_by_phases`'s loop: ``T`` blocks (one per thread) taking the images from a
    shared counter; per image the output
    gradient is packed once (``gc``), every phase with taps goes through the forward kernel
    into the block's phase buffer (phases without taps stay zero), then the phases are
    interleaved into ``gx``."""
    cdef Py_ssize_t t, i, p, e, GS = gc.C * gc.Hs * gc.Ws, nxt = 0
    cdef int packed
    cdef float* xq
    cdef float* yg
    cdef float* pb
    for t in prange(T, schedule='static', num_threads=nt):
        yg = <float*>(blocks + t * size + o_yg)
        pb = <float*>(blocks + t * size + o_pb)
        for e in range(pb_size):
            pb[e] = 0.0
        xq = <float*>(blocks + t * size)
        packed = 0
        while True:  # (the images from a shared counter)
            i = fastcnn_next_unit(&nxt)
            if i >= N:
                break
            fcd_pack_input(gc, gy + i * GS, xq, packed)
            packed = 1
            for p in range(NPH):
                if ns[p] == 0:  # (no taps reach this phase: its gradient is zero)
                    continue
                if rows[p] == 2:  # (channel tiles)
                    fcd_fwd_image_ct(&geo[p], xq, tab + o_tab[p], wp + o_wp[p], NULL, 0, pb + poff[p], yg)
                elif rows[p]:
                    fcd_fwd_image(&geo[p], xq, tab + o_tab[p], wp + o_wp[p], st + o_st[p],
                                  st + o_st[p] + lst[p], st + o_st[p] + 2 * lst[p], ns[p], NULL, 0,
                                  pb + poff[p], yg)
                else:
                    fcd_fwd_image(&geo[p], xq, tab + o_tab[p], wp + o_wp[p], st + o_st[p], NULL,
                                  NULL, ns[p], NULL, 0, NULL, yg)
                    fcd_unpack_output(&geo[p], yg, NULL, 0, pb + poff[p])
            fcd_interleave_phases(pb, poff, C, H, W, sh, sw, gx + i * C * H * W)


cdef int _data_by_phases(const _A* gy, w, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                         const _A* gx, int nt) except -1:
    """Input gradient of a strided convolution, one stride-1 correlation per input phase
    ``(a, b)`` (rows ``a, a + sh, ...``, columns ``b, b + sw, ...``) with the taps that reach
    it: no multiplications by the zeros of a dilated output gradient.  Phase ``(a, b)`` gets
    taps ``i = i0, i0 + sh, ...`` (``i0 = (a + pt) % sh``), reversed, with padding
    ``taps - 1 - (a + pt - i0) // sh`` (likewise for columns).  The phases read one packing
    of each image's output gradient, padded for all of them (their grids widened to its rows,
    their tap offsets shifted by their padding's difference): the same sums, one packing.
    gy (N, OC, OH, OW) IN; w (OC, C, KH, KW), a checked array, IN; gx (N, C, H, W) OUT."""
    cdef Py_ssize_t N = gy.shape[0], OC = gy.shape[1], OH = gy.shape[2], OW = gy.shape[3]
    cdef Py_ssize_t C = gx.shape[1], H = gx.shape[2], W = gx.shape[3]
    cdef Py_ssize_t NPH = sh * sw, T = min(<Py_ssize_t>nt, N), p, a, b, i0, j0, mi, mj, Ha, Wb
    cdef Py_ssize_t[::1] meta = np.zeros(8 * NPH, np.intp)
    cdef Py_ssize_t* o_wp = &meta[0]       # per phase: offset of its packed weights,
    cdef Py_ssize_t* o_tab = o_wp + NPH    # of its tap offsets,
    cdef Py_ssize_t* o_st = o_tab + NPH    # of its pixel starts (3 rows of lst[p]),
    cdef Py_ssize_t* lst = o_st + NPH      # that row length,
    cdef Py_ssize_t* ns = lst + NPH        # its pixel vectors (0: no taps, the phase is zero),
    cdef Py_ssize_t* poff = ns + NPH       # the offset of its (C, Ha, Wb) in a phase buffer,
    cdef Py_ssize_t* ptp = poff + NPH      # its top and left padding
    cdef Py_ssize_t* plp = ptp + NPH
    cdef int[::1] rows = np.zeros(NPH, np.intc)
    cdef Py_ssize_t n_wp = 0, n_tab = 0, n_st = 0, n_pb = 0, yg_max = 0, ptc = 0, plc = 0, hqc = 1, wqc = 1
    cdef Py_ssize_t kk
    cdef fcd_geo gc
    cdef float[::1] wp
    cdef Py_ssize_t[::1] tab, st
    cdef _A sub
    cdef Py_ssize_t o_yg, o_pb, size
    cdef char* mem = NULL
    cdef fcd_geo* geo = <fcd_geo*>malloc(NPH * sizeof(fcd_geo))
    if geo == NULL:
        raise MemoryError()
    try:
        subs = []
        for p in range(NPH):  # each phase's geometry and the sizes of its parts
            a = p // sw
            b = p % sw
            i0 = (a + pt) % sh
            j0 = (b + pl) % sw
            mi = len(range(i0, w.shape[2], sh))
            mj = len(range(j0, w.shape[3], sw))
            Ha = len(range(a, H, sh))
            Wb = len(range(b, W, sw))
            poff[p] = n_pb
            n_pb += C * Ha * Wb
            subs.append(None)
            if mi == 0 or mj == 0 or Ha == 0 or Wb == 0:
                continue
            # (C, OC, mi, mj): this phase's taps, reversed, input and output channels swapped
            subs[p] = np.ascontiguousarray(w[:, :, i0::sh, j0::sw][:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
            ptp[p] = mi - 1 - (a + pt - i0) // sh
            plp[p] = mj - 1 - (b + pl - j0) // sw
            fcd_geo_init(&geo[p], OC, OH, OW, 1, 1, C, mi, mj, 1, 1, ptp[p], plp[p], Ha, Wb, fcd_J)
            ptc = max(ptc, ptp[p])
            plc = max(plc, plp[p])
            o_wp[p] = n_wp
            n_wp += max(geo[p].OCP, (C + fcd_JC - 1) // fcd_JC * fcd_JC) * OC * mi * mj  # (either packing)
            o_tab[p] = n_tab
            n_tab += mi * mj
        for p in range(NPH):  # the common packing: every phase's rows and columns, shifted
            if subs[p] is not None:
                hqc = max(hqc, ptc - ptp[p] + geo[p].Hq)
                wqc = max(wqc, plc - plp[p] + geo[p].Wq)
        fcd_geo_init(&gc, OC, OH, OW, 1, 1, OC, 1, 1, 1, 1, ptc, plc, hqc, wqc, fcd_J)
        for p in range(NPH):  # each phase's grid widened to it
            if subs[p] is None:
                continue
            fcd_geo_grid(&geo[p], hqc, wqc)  # (so its xq_size is gc's)
            lst[p] = geo[p].P // fcd_VL + 1 + geo[p].OH * (geo[p].OW // fcd_VL + 1)
            o_st[p] = n_st
            n_st += 3 * lst[p]
            yg_max = max(yg_max, geo[p].OCP * geo[p].PR, geo[p].OH * geo[p].OW * fcd_JC)
        wp = np.empty(max(n_wp, 1), np.float32)
        tab = np.empty(max(n_tab, 1), np.intp)
        st = np.empty(max(n_st, 1), np.intp)
        for p in range(NPH):  # each phase's packed weights, tap offsets and pixel starts
            if subs[p] is None:
                continue
            _arr(subs[p], cnp.NPY_FLOAT32, 4, False, "w", &sub)
            fcd_make_tab(&geo[p], &tab[o_tab[p]])
            for kk in range(geo[p].KH * geo[p].KW):  # (its padding is ptp[p], plp[p], not gc's)
                tab[o_tab[p] + kk] += (ptc - ptp[p]) * wqc + (plc - plp[p])
            ns[p] = fcd_pixel_starts(&geo[p], fcd_VL, &st[o_st[p]], &st[o_st[p] + lst[p]],
                                     &st[o_st[p] + 2 * lst[p]], &rows[p])
            if _use_ctile(&geo[p], ns[p]):
                rows[p] = 2
                fcd_pack_weights_blocks(&geo[p], <float*>sub.p, 0, fcd_JC, &wp[o_wp[p]])
            else:
                fcd_pack_weights(&geo[p], <float*>sub.p, 0, &wp[o_wp[p]])
        # per block of images, one allocation: packed input, output grid, phase buffer
        o_yg = _al64(gc.xq_size * sizeof(float))
        o_pb = o_yg + _al64(yg_max * sizeof(float))
        size = o_pb + _al64((n_pb + 16) * sizeof(float))  # (an interleave reads up to 15 floats past a row)
        mem = <char*>malloc(T * size + 64)
        if mem == NULL:
            raise MemoryError()
        with nogil:
            _phases_images(geo, NPH, <float*>gy.p, N, &wp[0], &tab[0], &st[0], o_wp, o_tab, o_st, ns, lst,
                           &rows[0], poff, &gc, <char*>_al64(<Py_ssize_t>mem), size, o_yg, o_pb, n_pb,
                           sh, sw, <float*>gx.p, C, H, W, T, nt)
    finally:
        free(mem)
        free(geo)
    return 0


cdef int _fwd_arrays(x, w, bias, y, _A* a, _A* f, _A* b, _A* o) except -1:
    """The checked arrays of a forward convolution: x (N, C, H, W), w (OC, C, KH, KW) and bias
    (OC,) float32 in, y (N, OC, OH, OW) float32 out."""
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", a)
    _arr(w, cnp.NPY_FLOAT32, 4, False, "w", f)
    _arr(bias, cnp.NPY_FLOAT32, 1, False, "bias", b)
    _arr(y, cnp.NPY_FLOAT32, 4, True, "y", o)
    return 0


cdef _Key _fwd_ok, _pool_ok, _data_ok, _weight_ok


def conv2d_direct_forward(x, w, bias, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, int relu, y,
                          stats=None):
    """Direct convolution (see :func:`fastcnn._ref.conv2d_direct_forward`); x (N, C, H, W), w
    (OC, C, KH, KW), bias (OC,), y (N, OC, OH, OW) float32; stats None or (2, OC) float64 (each
    image's output planes summed while in cache)."""
    if _active is None:
        active_isa()
    cdef _A a, f, b, o
    _fwd_arrays(x, w, bias, y, &a, &f, &b, &o)
    cdef _Key k = _key(sh, sw, pt, pl)
    if _new(&_fwd_ok, &k, a.shape, f.shape, b.shape, o.shape):
        _passed(&_fwd_ok, &k, _backend.sizes_conv2d_direct_forward(
            _dims(a.shape, 4), _dims(f.shape, 4), _dims(b.shape, 1), sh, sw, pt, pl, relu,
            _dims(o.shape, 4)))
    cdef Py_ssize_t N = a.shape[0], C = a.shape[1], OC = f.shape[0], OH = o.shape[2], OW = o.shape[3]
    cdef _A s
    cdef double* sd = _stats_scratch(stats, N, OC, &s, "conv2d_direct_forward", f.shape)
    cdef fcd_geo g
    try:
        if N:
            fcd_geo_init(&g, C, a.shape[2], a.shape[3], 1, 1, OC, f.shape[2], f.shape[3], sh, sw, pt, pl,
                         OH, OW, fcd_J)
            _direct(&g, <float*>a.p, N, <float*>f.p, 0, <float*>b.p, relu, <float*>o.p,
                    _threads_for(N * OC * OH * OW), 0, NULL, NULL, sd)
        if sd != NULL:
            fps_combine(sd, N, OC, OH * OW, <double*>s.p, <double*>s.p + OC)
    finally:
        free(sd)


def conv2d_direct_forward_maxpool2(x, w, bias, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                   int relu, Py_ssize_t oh, Py_ssize_t ow, y, idx):
    """Direct convolution, then 2x2 max pooling, per image (see
    :func:`fastcnn._ref.conv2d_direct_forward_maxpool2`); x, w and bias as
    :func:`conv2d_direct_forward`'s, y (N, OC, oh // 2, ow // 2) float32, idx the same shape
    or (0, 0, 0, 0) int32."""
    if _active is None:
        active_isa()
    cdef _A a, f, b, o, i
    _fwd_arrays(x, w, bias, y, &a, &f, &b, &o)
    _arr(idx, cnp.NPY_INT32, 4, True, "idx", &i)
    cdef _Key k = _key(sh, sw, pt, pl, oh, ow)
    if _new(&_pool_ok, &k, a.shape, f.shape, b.shape, o.shape, i.shape):
        _passed(&_pool_ok, &k, _backend.sizes_conv2d_direct_forward_maxpool2(
            _dims(a.shape, 4), _dims(f.shape, 4), _dims(b.shape, 1), sh, sw, pt, pl, relu, oh, ow,
            _dims(o.shape, 4), _dims(i.shape, 4)))
    cdef Py_ssize_t N = a.shape[0], C = a.shape[1], OC = f.shape[0]
    if N == 0:
        return
    cdef fcd_geo g
    fcd_geo_init(&g, C, a.shape[2], a.shape[3], 1, 1, OC, f.shape[2], f.shape[3], sh, sw, pt, pl,
                 oh, ow, fcd_J)
    _direct(&g, <float*>a.p, N, <float*>f.p, 0, <float*>b.p, relu, <float*>o.p, _threads_for(N * OC * oh * ow), 1,
            <int*>i.p if i.shape[0] else NULL)


def conv2d_direct_backward_data(gy, w, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, gx):
    """Input gradient (see :func:`fastcnn._ref.conv2d_direct_backward_data`): a stride-1
    convolution of the output gradient, dilated by the stride, with the rotated weights; gy
    (N, OC, OH, OW), w (OC, C, KH, KW), gx (N, C, H, W) float32."""
    if _active is None:
        active_isa()
    cdef _A g_, f, d
    _arr(gy, cnp.NPY_FLOAT32, 4, False, "gy", &g_)
    _arr(w, cnp.NPY_FLOAT32, 4, False, "w", &f)
    _arr(gx, cnp.NPY_FLOAT32, 4, True, "gx", &d)
    cdef _Key k = _key(sh, sw, pt, pl)
    if _new(&_data_ok, &k, g_.shape, f.shape, d.shape):
        _passed(&_data_ok, &k, _backend.sizes_conv2d_direct_backward_data(
            _dims(g_.shape, 4), _dims(f.shape, 4), sh, sw, pt, pl, _dims(d.shape, 4)))
    cdef Py_ssize_t N = g_.shape[0], OC = g_.shape[1], OH = g_.shape[2], OW = g_.shape[3]
    cdef Py_ssize_t C = f.shape[1], KH = f.shape[2], KW = f.shape[3], H = d.shape[2], W = d.shape[3]
    if N == 0:
        return
    if sh > 1 or sw > 1:
        _data_by_phases(&g_, w, sh, sw, pt, pl, &d, _threads_for(N * C * H * W))
        return
    cdef fcd_geo g
    fcd_geo_init(&g, OC, OH, OW, sh, sw, C, KH, KW, 1, 1, KH - 1 - pt, KW - 1 - pl, H, W, fcd_J)
    _direct(&g, <float*>g_.p, N, <float*>f.p, 1, NULL, 0, <float*>d.p, _threads_for(N * C * H * W))


def conv2d_direct_backward_weight(gy, x, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, gw, gb):
    """Weight and bias gradients (see :func:`fastcnn._ref.conv2d_direct_backward_weight`); gy
    (N, OC, OH, OW), x (N, C, H, W), gw (OC, C, KH, KW), gb (OC,) or (0,) float32.

    Image ``i`` of ``N`` belongs to slot ``i * SLOTS // N``; each (slot, output-channel
    block) is summed by one thread in image order, then the slots in order: the result does
    not depend on the thread count."""
    if _active is None:
        active_isa()
    cdef _A g_, a, dw, db
    _arr(gy, cnp.NPY_FLOAT32, 4, False, "gy", &g_)
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", &a)
    _arr(gw, cnp.NPY_FLOAT32, 4, True, "gw", &dw)
    _arr(gb, cnp.NPY_FLOAT32, 1, True, "gb", &db)
    cdef _Key k = _key(sh, sw, pt, pl)
    if _new(&_weight_ok, &k, g_.shape, a.shape, dw.shape, db.shape):
        _passed(&_weight_ok, &k, _backend.sizes_conv2d_direct_backward_weight(
            _dims(g_.shape, 4), _dims(a.shape, 4), sh, sw, pt, pl, _dims(dw.shape, 4),
            _dims(db.shape, 1)))
    cdef Py_ssize_t N = g_.shape[0], OC = g_.shape[1], OH = g_.shape[2], OW = g_.shape[3]
    cdef Py_ssize_t C = a.shape[1], KH = dw.shape[2], KW = dw.shape[3]
    if N == 0:
        memset(dw.p, 0, _size4(dw.shape) * sizeof(float))
        memset(db.p, 0, db.shape[0] * sizeof(float))
        return
    cdef fcd_geo g
    fcd_geo_init(&g, C, a.shape[2], a.shape[3], 1, 1, OC, KH, KW, sh, sw, pt, pl, OH, OW, fcd_J)
    _weight(&g, <float*>g_.p, NULL, &a, &dw, &db, _threads_for(N * OC * OH * OW))


cdef inline double _sum_column(const double* a, Py_ssize_t n, Py_ssize_t stride,
                               Py_ssize_t j) noexcept nogil:
    """``a[0, j] + a[1, j] + ...`` over ``n`` rows, in order."""
    cdef double acc = 0.0
    cdef Py_ssize_t r
    for r in range(n):
        acc = acc + a[r * stride + j]
    return acc


cdef bint PREFETCH_WGRAD = DIRECT_WGRAD_PREFETCH


cdef Py_ssize_t _weight(const fcd_geo* g, const float* gy, const _Unpool* up,
                        const _A* x,                  # IN  (N, C, H, W)
                        const _A* gw,                 # OUT (OC, C, KH, KW)
                        const _A* gb,                 # OUT (OC,) or (0,): no bias gradient
                        int nt) except -1:
    """The weight (and bias) gradient of :func:`conv2d_direct_backward_weight` from the output
    gradient ``gy`` (N, OC, OH, OW), or, if ``gy`` is NULL, from the pooled gradient of ``up``
    (scattered image by image into the packed gradient); returns the bad index count of ``up``."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], OC = gw.shape[0], OH = g.OH, OW = g.OW
    cdef Py_ssize_t KK = gw.shape[2] * gw.shape[3]
    cdef Py_ssize_t VL = fcd_VL, OCV = (OC + VL - 1) // VL * VL
    # Tiles of V channel vectors x T taps (q = c*KK + kk; padded with offset 0 up to NQB*T);
    # U = NOB*NQB tiles per image.  Rows of 3 or 5 taps at stride 1 along the rows: tiles of
    # whole tap rows (kw = KW; fcd_bwd_weight_tile's row pointers).
    cdef int V = 2 if (OCV // VL) % 2 == 0 else 1
    cdef int kw = 0
    if g.sw == 1 and (gw.shape[3] == 3 or gw.shape[3] == 5):
        kw = <int>gw.shape[3]
    cdef Py_ssize_t T = (fcd_WT * 2 // V // kw) * kw if kw else fcd_WT * (2 // V)
    cdef Py_ssize_t Q = C * KK, NQB
    if V == 1 and ((kw == 5 and Q == 25) or (kw == 3 and Q == 27)) and Q <= fcd_TM:
        T = Q  # (one tile of the whole kernel: one-channel 5x5, three-channel 3x3)
    NQB = (Q + T - 1) // T
    cdef Py_ssize_t NOB = OCV // (V * VL), U = NOB * NQB, S = min(<Py_ssize_t>SLOTS, N), P = OH * OW
    # Tasks: a slot's images through a G-th of the tiles (G > 1 only when there are fewer
    # than two slots per thread; each such task packs the slot's images itself).
    cdef Py_ssize_t G = 1 if S >= 2 * nt else min(U, (2 * nt + S - 1) // S)
    cdef Py_ssize_t NT = S * G, B = min(<Py_ssize_t>nt, NT)
    # Each task packs NI images at a time and runs them through its tiles while in cache.
    cdef Py_ssize_t b_gt = _al64(P * OCV * sizeof(float)), b_xq = _al64(g.xq_size * sizeof(float))
    cdef Py_ssize_t NI = max(1, min((N + S - 1) // S, DIRECT_WGRAD_BYTES // (b_gt + b_xq)))
    cdef Py_ssize_t size = NI * (b_gt + b_xq), gs = b_gt // sizeof(float), xs = b_xq // sizeof(float)
    cdef Py_ssize_t o_up = size, bad = 0
    if up != NULL:  # (fcd_unpool_grad_t's transposed pooled planes, or one image rebuilt)
        size += _al64(max(3 * up.PHW * OCV, OC * P) * sizeof(float))
    cdef Py_ssize_t[::1] tab = np.empty(KK, np.intp)
    cdef Py_ssize_t[::1] off = np.zeros(NQB * T, np.intp)
    cdef float[:, ::1] part = np.empty((S, NQB * T * OCV), np.float32)
    cdef Py_ssize_t nb = gb.shape[0], CHW = C * x.shape[2] * x.shape[3]
    cdef double[:, ::1] bsum = np.empty((N, nb), np.float64)
    cdef const float* xp = <float*>x.p
    cdef float* gwp = <float*>gw.p
    cdef float* gbp = <float*>gb.p
    cdef Py_ssize_t t, b, i, i0, i1, j, ni, nn, u0, u1, s, u, ob, qb, o, q, e, npk, nxt = 0
    cdef char* mem = <char*>malloc(B * size + 64)
    if mem == NULL:
        raise MemoryError()
    cdef char* base = <char*>_al64(<Py_ssize_t>mem)
    cdef float* gt
    cdef float* xq
    cdef float* sc
    cdef float* p0
    cdef const float* ps
    try:
        with nogil:
            fcd_make_tab(g, &tab[0])
            for q in range(Q):
                off[q] = (q // KK) * g.plane + tab[q % KK]
            # Block b of B (one per thread) takes the tasks from a shared counter; image i is in
            # slot i*S//N with S = min(SLOTS, N) (for N >= SLOTS the reference's i*SLOTS//N).
            for b in prange(B, schedule='static', num_threads=nt):
                gt = <float*>(base + b * size)
                xq = gt + NI * gs
                npk = 0
                while True:  # (the tasks from a shared counter)
                    t = fastcnn_next_unit(&nxt)
                    if t >= NT:
                        break
                    s = t // G
                    i0 = (s * N + S - 1) // S
                    i1 = ((s + 1) * N + S - 1) // S
                    u0 = _part(t - s * G, U, G)
                    u1 = _part(t - s * G + 1, U, G)
                    for j in range((i1 - i0 + NI - 1) // NI):
                        i = i0 + j * NI
                        ni = min(NI, i1 - i)
                        for e in range(ni):
                            fcd_pack_input(g, xp + (i + e) * CHW, xq + e * xs, e < npk)
                            npk = max(npk, e + 1)  # (buffers 0 .. npk-1 hold a packing: zeros in place)
                            o = (i + e) * OC * up.PHW if up != NULL else 0
                            if up != NULL:  # (the pooled gradient straight into gt, or else rebuilt and packed)
                                sc = <float*>(base + b * size + o_up)
                                if fcd_unpool_grad_t(up.gp + o, up.idx + o, up.y + o if up.y != NULL else NULL,
                                                     OC, OH, OW, OCV, gt + e * gs, sc):
                                    bad += _unpool_image(up, i + e, sc)
                                    fcd_pack_grad_t(g, sc, OCV, gt + e * gs)
                            else:
                                fcd_pack_grad_t(g, gy + (i + e) * OC * P, OCV, gt + e * gs)
                            if nb > 0 and t == s * G:  # (the bias: once per image, by its first task)
                                fcd_grad_t_sums(gt + e * gs, P, OCV, nb, &bsum[i + e, 0])
                        nn = min(NI, i1 - i - ni)  # (the next images, asked for while these run)
                        for u in range(u0, u1):
                            ob = u // NQB
                            qb = u - ob * NQB
                            fcd_bwd_weight_tile(xq, xs, gt, gs, ni, OCV, OH, OW, g.Wq, ob, V, &off[qb * T],
                                                &part[s, qb * T * OCV], i > i0, kw, T)
                            if nn > 0 and PREFETCH_WGRAD:
                                fcd_prefetch_part(xp + (i + ni) * CHW, nn * CHW, u - u0, u1 - u0)
                                if up == NULL:
                                    fcd_prefetch_part(gy + (i + ni) * OC * P, nn * OC * P, u - u0, u1 - u0)
    finally:
        free(mem)
    with nogil:
        # (tap by tap: the slots' rows added into slot 0's by vectors, in slot order, then
        # that row into column q of gw)
        for q in prange(Q, schedule='static', num_threads=nt):
            p0 = &part[0, q * OCV]
            for s in range(1, S):
                ps = &part[s, q * OCV]
                for o in range(OC):
                    p0[o] = p0[o] + ps[o]
            for o in range(OC):
                gwp[o * Q + q] = p0[o]
        # Bias (unless gb is empty): each image's planes summed in float64 in pixel order
        # (fcd_grad_t_sums on its packed gradient) while in cache above, then the images in order.
        for o in prange(nb, schedule='static', num_threads=nt):
            gbp[o] = <float>_sum_column(&bsum[0, 0], N, nb, o)
    return bad


cdef int _winners(const _Unpool* up, Py_ssize_t i, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t rstep, Py_ssize_t cstep,
                  Py_ssize_t* wo,    # OUT (C_out, PHW + 1) patch offsets in the channels-last images
                  float* wv,         # OUT (C_out, PHW + 1) their gradients
                  int* cnt,          # OUT (C_out,) winners per output channel
                  double* bsum) noexcept nogil:  # OUT (C_out,) float64 sums of the winners' gradients
    """Image ``i``'s winners of each output channel's pooling windows: the cells whose gradient
    (times the ReLU's 1 or 0) is not zero, in pixel order (a window row's upper cells, then its
    lower ones: two branch-free passes), their patches' offsets ``rstep`` per output row and
    ``cstep`` per column from the image's block.  Returns 1 if an index lies outside its own window (then nothing is
    valid)."""
    cdef Py_ssize_t PW = OW // 2, PHW = up.PHW, o, r, a, j, k, d, m, e
    cdef Py_ssize_t* wop
    cdef float* wvp
    cdef const float* gp
    cdef const int* ix
    cdef const float* yy
    cdef float v
    cdef double bs
    cdef int bad = 0
    for o in range(up.C):
        k = (i * up.C + o) * PHW
        gp = up.gp + k
        ix = up.idx + k
        yy = up.y + k if up.y != NULL else NULL
        wop = wo + o * (PHW + 1)  # (one slot more: a dropped cell is written past the last winner)
        wvp = wv + o * (PHW + 1)
        m = 0
        for r in range(OH // 2):
            for a in range(2):
                for j in range(PW):
                    k = r * PW + j
                    d = ix[k] - 2 * (r * OW + j) - a * OW  # (0 or 1: a cell of this row)
                    if a == 0:  # (the index's place in its window: 0, 1, OW or OW + 1)
                        bad |= (d != 0) & (d != 1) & (d != OW) & (d != OW + 1)
                    v = gp[k]
                    if yy != NULL:
                        v = v * (<float>1.0 if yy[k] > 0 else <float>0.0)
                    wop[m] = (2 * r + a) * rstep + (2 * j + d) * cstep
                    wvp[m] = v
                    m += (v != 0) & ((d == 0) | (d == 1))  # (a zero term of the direct sum dropped; NaN stays)
        bs = 0.0
        for e in range(m):
            bs = bs + <double>wvp[e]
        cnt[o] = <int>m
        bsum[o] = bs
    return bad


def _spw_passes(Py_ssize_t KH, Py_ssize_t KW):
    """The tiles (first vector, width NV <= 8, first row, rows R) of :c:func:`fcd_spw_pass` over a
    block's patch of KH rows x KW vectors: rows in groups of TM // NV, the rest one at a time."""
    passes = []
    cdef Py_ssize_t v0 = 0, nv, rm, r0
    while v0 < KW:
        nv = min(8, KW - v0)
        rm = max(1, fcd_TM // nv)
        for r0 in range(KH):
            if r0 % rm == 0 and r0 + rm <= KH:
                passes.append((v0, nv, r0, rm))
            elif r0 >= KH - KH % rm:
                passes.append((v0, nv, r0, 1))
        v0 += nv
    return np.array(passes, np.intp).reshape(len(passes), 4)


cdef int _weight_pooled(const fcd_geo* g, const _Unpool* up,
                        const _A* x,     # IN  (N, C, H, W)
                        const _A* gw,    # OUT (OC, C, KH, KW)
                        const _A* gb,    # OUT (OC,) or (0,)
                        int nt) except -1:
    """:func:`_weight` from the pooling's winners only (docs/PERFORMANCE.md, section 9, "Pooled
    weight gradient"): the same sums without their zero terms, so the same bytes.  Returns 1,
    having written nothing, if an index lies outside its own window or ``x`` holds a value
    that is not finite (where a zero term would be NaN): the caller runs :func:`_weight`."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3], OC = gw.shape[0]
    cdef Py_ssize_t KH = gw.shape[2], KW = gw.shape[3], OH = g.OH, OW = g.OW, sh = g.sh, sw = g.sw
    cdef Py_ssize_t pt = g.pt, pl = g.pl, VL = fcd_VL
    # Each image in CB blocks of VL channels, channels-last and zero padded to every row and
    # column a patch reads: a patch row of one block is KW vectors.
    cdef Py_ssize_t Hp = max(pt + H, (OH - 1) * sh + KH), Wp = max(pl + W, (OW - 1) * sw + KW)
    cdef Py_ssize_t CB = (C + VL - 1) // VL, RS = Wp * VL, PS = Hp * RS, IS = CB * PS
    cdef Py_ssize_t PHW = up.PHW, S = min(<Py_ssize_t>SLOTS, N), RP = KW * VL, QS = CB * KH * RP
    cdef Py_ssize_t[:, ::1] pas = _spw_passes(KH, KW)
    cdef Py_ssize_t NP = pas.shape[0]
    cdef Py_ssize_t[:, ::1] wo = np.empty((N * OC, PHW + 1), np.intp)
    cdef float[:, ::1] wv = np.empty((N * OC, PHW + 1), np.float32)
    cdef int[::1] cnt = np.empty(N * OC, np.intc)
    cdef double[:, ::1] bsum = np.empty((N, OC), np.float64)
    cdef float[:, :, ::1] part = np.empty((S, OC, QS), np.float32)
    cdef char* mem = <char*>malloc(_al64(N * IS * sizeof(float)) + _al64(nt * H * W * VL * sizeof(float)) + 64)
    if mem == NULL:
        raise MemoryError()
    cdef float* xc = <float*>_al64(<Py_ssize_t>mem)
    cdef float* tmp = <float*>(<char*>xc + _al64(N * IS * sizeof(float)))
    cdef const float* xp = <float*>x.p
    cdef float* gwp = <float*>gw.p
    cdef float* gbp = <float*>gb.p
    # Tasks: a slot's images (in order, each through all its output channels, blocks and
    # passes while its block is in cache) for a G-th of the output channels (G > 1 only when
    # there are fewer than two slots per thread).
    cdef Py_ssize_t G = 1 if S >= 2 * nt else min(OC, (2 * nt + S - 1) // S)
    cdef Py_ssize_t nb = gb.shape[0], NT = S * G, B, t, b, i, i0, s, o, o0, o1, u, q, c, cb, kh, kw, e
    cdef Py_ssize_t nxt = 0, nxt2 = 0
    cdef int bad = 0
    try:
        with nogil:
            for b in prange(nt, schedule='static', num_threads=nt):
                while True:  # (the images, then the tasks, from shared counters)
                    i = fastcnn_next_unit(&nxt)
                    if i >= N:
                        break
                    bad |= fcd_pack_cl(xp + i * C * H * W, C, H, W, pt, pl, Hp, Wp, PS, tmp + b * H * W * VL,
                                       xc + i * IS)
                    bad |= _winners(up, i, OH, OW, sh * RS, sw * VL, &wo[i * OC, 0], &wv[i * OC, 0],
                                    &cnt[i * OC], &bsum[i, 0])
        if bad:
            return 1
        with nogil:
            B = min(<Py_ssize_t>nt, NT)
            for b in prange(B, schedule='static', num_threads=nt):
                while True:
                    t = fastcnn_next_unit(&nxt2)
                    if t >= NT:
                        break
                    s = t // G
                    o0 = _part(t - s * G, OC, G)
                    o1 = _part(t - s * G + 1, OC, G)
                    i0 = (s * N + S - 1) // S
                    for i in range(i0, ((s + 1) * N + S - 1) // S):
                        for cb in range(CB):
                            for o in range(o0, o1):
                                e = i * OC + o
                                for u in range(NP):
                                    fcd_spw_pass(xc + i * IS + cb * PS + pas[u, 2] * RS + pas[u, 0] * VL, &wo[e, 0],
                                                 &wv[e, 0], cnt[e], RS, pas[u, 1], pas[u, 3],
                                                 &part[s, o, (cb * KH + pas[u, 2]) * RP + pas[u, 0] * VL], RP, i > i0)
            # gw[o, c, kh, kw] = the slots' sums of part[., o, (c//VL*KH + kh)*RP + kw*VL + c%VL], in slot
            # order (each slot's row added into slot 0's by vectors).
            for o in prange(OC, schedule='static', num_threads=nt):
                for s in range(1, S):
                    for q in range(QS):
                        part[0, o, q] = part[0, o, q] + part[s, o, q]
                for c in range(C):
                    for kh in range(KH):
                        for kw in range(KW):
                            gwp[((o * C + c) * KH + kh) * KW + kw] = part[0, o, ((c // VL) * KH + kh) * RP + kw * VL + c % VL]
            for o in prange(nb, schedule='static', num_threads=nt):
                gbp[o] = <float>_sum_column(&bsum[0, 0], N, OC, o)
    finally:
        free(mem)
    return 0


cdef int _cells(const _Unpool* up, Py_ssize_t i, Py_ssize_t OW, Py_ssize_t ws,
                int* cnt,           # OUT (P,) winners per output cell (zeroed by the caller)
                Py_ssize_t* co,     # OUT (P, C_out + 1) their kernels' offsets (o * ws)
                float* cg) noexcept nogil:  # OUT (P, C_out + 1) their gradients
    """Image ``i``'s winners (as :func:`_winners`: gradient times the ReLU's 1 or 0, zeros
    dropped, NaN kept) bucketed by output cell, each cell's in output-channel order.  Returns 1
    if an index lies outside its own window (then nothing is valid)."""
    cdef Py_ssize_t PW = OW // 2, PHW = up.PHW, S = up.C + 1, o, k, c0, d, p, s, r, j
    cdef const float* gp
    cdef const int* ix
    cdef const float* yy
    cdef float v
    cdef int bad = 0, ok
    for o in range(up.C):
        k = (i * up.C + o) * PHW
        gp = up.gp + k
        ix = up.idx + k
        yy = up.y + k if up.y != NULL else NULL
        for r in range(PHW // PW):
            for j in range(PW):
                k = r * PW + j
                c0 = 2 * (r * OW + j)  # (the window's upper left cell)
                d = ix[k] - c0
                ok = (d == 0) | (d == 1) | (d == OW) | (d == OW + 1)
                bad |= 1 - ok
                p = c0 + d * ok
                v = gp[k]
                if yy != NULL:
                    v = v * (<float>1.0 if yy[k] > 0 else <float>0.0)
                s = cnt[p]  # (one slot more per cell: a dropped winner is written past the last one)
                co[p * S + s] = o * ws
                cg[p * S + s] = v
                cnt[p] = <int>(s + ((v != 0) & ok))
    return bad


cdef int _data_pooled(const _Unpool* up, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t pt, Py_ssize_t pl,
                      const _A* w,     # IN  (OC, C, KH, KW)
                      const _A* gx,    # OUT (N, C, H, W)
                      int nt) except -1:
    """The input gradient of a stride-1 pooled convolution from the pooling's winners
    (docs/PERFORMANCE.md, section 9, "Pooled input gradient"): per image and block of VL
    channels, pass by pass (a kernel row's run of vectors), cell by cell in pixel order, the
    kernels of the cell's winning output channels times their gradients (in channel order, one
    FMA each) added to the image's channels-last gradient (:c:func:`fcd_spd_row`).
    Returns 1 if an index lies outside its own window or ``w`` holds a value that is not finite
    (where a dropped zero term would be NaN): the caller then runs the dense kernel, which
    writes all of ``gx``."""
    cdef Py_ssize_t N = gx.shape[0], C = gx.shape[1], H = gx.shape[2], W = gx.shape[3]
    cdef Py_ssize_t OC = w.shape[0], KH = w.shape[2], KW = w.shape[3], VL = fcd_VL
    cdef Py_ssize_t Hp = max(pt + H, OH + KH - 1), Wp = max(pl + W, OW + KW - 1)
    cdef Py_ssize_t CB = (C + VL - 1) // VL, RS = Wp * VL, PS = Hp * RS, IS = CB * PS
    cdef Py_ssize_t KB = KH * KW * VL, WS = CB * KB, P = OH * OW, S = OC + 1
    # Passes (first vector, width, row, 1): one kernel row at a time (a pass's weights stay in
    # L1), its vectors in runs of up to 8; each sum follows their order (as the Numba backend's).
    cdef Py_ssize_t[:, ::1] pas = np.array([(v0, min(8, KW - v0), r, 1) for r in range(KH) for v0 in range(0, KW, 8)],
                                           np.intp).reshape(-1, 4)
    cdef Py_ssize_t NP = pas.shape[0]
    cdef Py_ssize_t b_w = _al64(OC * WS * sizeof(float)), b_x = _al64(IS * sizeof(float))
    cdef Py_ssize_t b_c = _al64(P * sizeof(int)), b_o = _al64(P * S * sizeof(Py_ssize_t))
    cdef Py_ssize_t size = b_x + b_c + b_o + _al64(P * S * sizeof(float))
    cdef char* mem = <char*>malloc(b_w + nt * size + 64)
    if mem == NULL:
        raise MemoryError()
    cdef float* wp = <float*>_al64(<Py_ssize_t>mem)
    cdef const float* wsrc = <float*>w.p
    cdef float* dxp = <float*>gx.p
    cdef char* sc
    cdef float* xc
    cdef int* cnt
    cdef Py_ssize_t* co
    cdef float* cg
    cdef const float* xs
    cdef float* xd
    cdef Py_ssize_t b, i, o, c, k, u, cb, h, x, l, nc, nxt = 0
    cdef unsigned nf = 0
    cdef int bad = 0
    try:
        with nogil:
            # wp[o][c // VL][kh][kw][c % VL], channels past C zero; nf: any value not finite.
            for o in prange(OC, schedule='static', num_threads=nt):
                memset(wp + o * WS, 0, WS * sizeof(float))
                for c in range(C):
                    for k in range(KH * KW):
                        wp[o * WS + (c // VL) * KB + k * VL + c % VL] = wsrc[(o * C + c) * KH * KW + k]
                        nf |= (~(<unsigned*>wsrc)[(o * C + c) * KH * KW + k] & 0x7f800000u) == 0u
        if nf:
            return 1
        with nogil:
            for b in prange(nt, schedule='static', num_threads=nt):
                sc = <char*>wp + b_w + b * size
                xc = <float*>sc
                cnt = <int*>(sc + b_x)
                co = <Py_ssize_t*>(sc + b_x + b_c)
                cg = <float*>(sc + b_x + b_c + b_o)
                while True:  # (the images from a shared counter)
                    i = fastcnn_next_unit(&nxt)
                    if i >= N:
                        break
                    memset(cnt, 0, P * sizeof(int))
                    bad |= _cells(up, i, OW, WS, cnt, co, cg)
                    memset(xc, 0, IS * sizeof(float))
                    for cb in range(CB):
                        for u in range(NP):
                            for h in range(OH):
                                fcd_spd_row(wp + cb * KB + (pas[u, 2] * KW + pas[u, 0]) * VL, co + h * OW * S,
                                            cg + h * OW * S, cnt + h * OW, S, OW, pas[u, 1],
                                            xc + cb * PS + (h + pas[u, 2]) * RS + pas[u, 0] * VL)
                    # xc (channels-last, padded) -> gx[i] (C, H, W), row by row of each plane
                    for cb in range(CB):
                        nc = min(VL, C - cb * VL)
                        for l in range(nc):
                            for h in range(H):
                                xs = xc + cb * PS + ((pt + h) * Wp + pl) * VL + l
                                xd = dxp + ((i * C + cb * VL + l) * H + h) * W
                                for x in range(W):
                                    xd[x] = xs[x * VL]
    finally:
        free(mem)
    return bad


cdef _Key _pool_bwd_ok


def conv2d_direct_backward_maxpool2(gp, idx, y, x, w, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                    Py_ssize_t oh, Py_ssize_t ow, gx, gw, gb):
    """Gradients of :func:`conv2d_direct_forward_maxpool2` from the gradient of its pooled
    output (see :func:`fastcnn._ref.conv2d_direct_backward_maxpool2`): from the pooling's
    winners where the kernel is large enough (:func:`_weight_pooled`, :func:`_data_pooled`),
    else each image's full-size output gradient is rebuilt in a thread's scratch where the
    kernels pack it, never as a whole array (at strides > 1 the input gradient still builds
    one).  gp (N, OC, oh // 2,
    ow // 2) float32 and idx int32 the same shape, y that shape or (0, 0, 0, 0) (no ReLU), x
    (N, C, H, W), w (OC, C, KH, KW), gx x's shape or (0, 0, 0, 0), gw w's, gb (OC,) or (0,)
    float32."""
    if _active is None:
        active_isa()
    cdef _A g_, i_, y_, a, f, dx, dw, db, fu
    _arr(gp, cnp.NPY_FLOAT32, 4, False, "gp", &g_)
    _arr(idx, cnp.NPY_INT32, 4, False, "idx", &i_)
    _arr(y, cnp.NPY_FLOAT32, 4, False, "y", &y_)
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", &a)
    _arr(w, cnp.NPY_FLOAT32, 4, False, "w", &f)
    _arr(gx, cnp.NPY_FLOAT32, 4, True, "gx", &dx)
    _arr(gw, cnp.NPY_FLOAT32, 4, True, "gw", &dw)
    _arr(gb, cnp.NPY_FLOAT32, 1, True, "gb", &db)
    cdef _Key k = _key(sh, sw, pt, pl, oh, ow)
    if _new(&_pool_bwd_ok, &k, g_.shape, i_.shape, y_.shape, a.shape, f.shape, dx.shape, dw.shape, db.shape):
        _passed(&_pool_bwd_ok, &k, _backend.sizes_conv2d_direct_backward_maxpool2(
            _dims(g_.shape, 4), _dims(i_.shape, 4), _dims(y_.shape, 4), _dims(a.shape, 4),
            _dims(f.shape, 4), sh, sw, pt, pl, oh, ow, _dims(dx.shape, 4), _dims(dw.shape, 4),
            _dims(db.shape, 1)))
    cdef Py_ssize_t N = a.shape[0], C = a.shape[1], OC = f.shape[0], KH = f.shape[2], KW = f.shape[3]
    cdef Py_ssize_t H = a.shape[2], W = a.shape[3], bad = 0, i
    if N == 0:
        memset(dw.p, 0, _size4(dw.shape) * sizeof(float))
        memset(db.p, 0, db.shape[0] * sizeof(float))
        return
    cdef _Unpool up
    up.gp = <float*>g_.p
    up.idx = <int*>i_.p
    up.y = <float*>y_.p if y_.shape[0] else NULL
    up.C, up.PHW, up.P = OC, g_.shape[2] * g_.shape[3], oh * ow
    cdef fcd_geo g
    fcd_geo_init(&g, C, H, W, 1, 1, OC, KH, KW, sh, sw, pt, pl, oh, ow, fcd_J)
    cdef int nw = _threads_for(N * OC * oh * ow)
    if C * KH * KW < POOLED_WGRAD_MIN_PATCH or _weight_pooled(&g, &up, &a, &dw, &db, nw):
        bad = _weight(&g, NULL, &up, &a, &dw, &db, nw)
    cdef int nt = _threads_for(N * C * H * W)
    if dx.shape[0] and sh == 1 and sw == 1:
        if C * KH * KW < POOLED_DGRAD_MIN_PATCH or _data_pooled(&up, oh, ow, pt, pl, &f, &dx, nt):
            fcd_geo_init(&g, OC, oh, ow, 1, 1, C, KH, KW, 1, 1, KH - 1 - pt, KW - 1 - pl, H, W, fcd_J)
            bad += _direct(&g, NULL, N, <float*>f.p, 1, NULL, 0, <float*>dx.p, nt, 0, NULL, &up)
    elif dx.shape[0]:  # (strided: the phases read a whole gradient array)
        full = np.empty((N, OC, oh, ow), np.float32)
        _arr(full, cnp.NPY_FLOAT32, 4, True, "full", &fu)
        with nogil:
            for i in prange(N, schedule='static', num_threads=nt):
                bad += _unpool_image(&up, i, <float*>fu.p + i * OC * oh * ow)
        _data_by_phases(&fu, w, sh, sw, pt, pl, &dx, nt)
    _in_range("conv2d_direct_backward_maxpool2", bad, "pooling indices (into the convolution's output plane)")


cdef void _winograd_blocks(const fcd_geo* g,
                           const float* src, Py_ssize_t N,   # IN  (N, g.C, g.Hs, g.Ws)
                           const float* vp, const Py_ssize_t* st, Py_ssize_t NI, Py_ssize_t U,
                           #                                   transformed weights, vector
                           #                                   starts, images per group, groups
                           const float* bias, int relu,      # IN  bias (or NULL), ReLU on output
                           char* blocks, Py_ssize_t size, Py_ssize_t xs, Py_ssize_t o_u,
                           Py_ssize_t o_m, Py_ssize_t o_z, Py_ssize_t Q,
                           #                                   scratch per block of images: NI
                           #                                   packings of xs floats, chunk buffers
                           float* out,                       # OUT (N, g.OC, OH, OW), pooled: halved
                           Py_ssize_t T, int R, int M, Py_ssize_t OH, Py_ssize_t OW,
                           Py_ssize_t o_yf, int* io,      # pooled (o_yf >= 0): a group's full
                           #                                output in the block's scratch; OUT
                           #                                the pooling's indices (or NULL)
                           double* sd,                    # OUT NULL or (N, g.OC, 2): each output
                           #                                plane's sums (:func:`_planes_stats`)
                           int nt) noexcept nogil:
    """``T`` blocks (one per thread), each with its own scratch, taking the groups of images
    from a shared counter: ``U`` near-equal runs of at most ``NI`` consecutive images
    (:func:`fastcnn._dispatch.winograd_units`; :c:func:`fcw_images`; ``R x R`` kernels, ``M x M``
    output tiles).  Pooled, ``out`` gets each group's 2x2 max pooling (the pooling kernels'
    plane loop) while the group's output is in cache; so are the statistics' sums."""
    cdef Py_ssize_t CHW = g.C * g.Hs * g.Ws, t, i, e, ni, j, npk, nxt = 0
    cdef Py_ssize_t OHW = OH * OW, PH = OH // 2, PW = OW // 2
    cdef Py_ssize_t out_is = g.OC * (PH * PW if o_yf >= 0 else OHW)
    cdef float* u
    cdef float* yf
    for t in prange(T, schedule='static', num_threads=nt):
        u = <float*>(blocks + t * size + o_u)
        for e in range((R + M - 1) * (R + M - 1) * fcw_u_stride(g.C, Q)):  # (lanes past a chunk's tiles stay finite)
            u[e] = 0.0
        npk = 0  # (the block's packings 0 .. npk-1 hold earlier images: their zeros in place)
        while True:
            j = fastcnn_next_unit(&nxt)
            if j >= U:
                break
            i = _part(j, N, U)
            ni = _part(j + 1, N, U) - i
            yf = <float*>(blocks + t * size + o_yf) if o_yf >= 0 else out + i * out_is
            fcw_images(g, src + i * CHW, ni, vp, st, bias, relu, OH, OW, yf, <float*>(blocks + t * size),
                       xs, ni <= npk, u, <float*>(blocks + t * size + o_m), <float*>(blocks + t * size + o_z), Q, R, M)
            npk = max(npk, ni)
            if o_yf >= 0:
                fcp_pool_planes(yf, out + i * out_is, io + i * g.OC * PH * PW if io != NULL else NULL,
                                <int*>(yf + NI * g.OC * OHW), ni * g.OC, OH, OW)
            elif sd != NULL:
                _planes_stats(yf, ni * g.OC, OHW, sd + i * g.OC * 2)


cdef int _winograd(const float* src, Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                   const float* w, int flip, Py_ssize_t OC, Py_ssize_t pt, Py_ssize_t pl,
                   const float* bias, int relu, float* out, Py_ssize_t OH, Py_ssize_t OW, int R, int M, int nt,
                   int pool=0, int* io=NULL, double* sd=NULL) except -1:
    """Winograd F(MxM, RxR) convolution of ``src`` (N, C, H, W) with RxR weights ``w`` (R = 3
    or 5, M = 2, or 4 with R = 3; packed with ``flip`` as :c:func:`fcd_pack_weights`) into ``out`` (N, OC, OH, OW), or
    with ``pool`` its 2x2 max pooling into ``out`` (N, OC, OH // 2, OW // 2) and the
    indices into ``io`` (if not NULL): scratch in one allocation (transformed weights, a
    chunk's vector starts, and per block of images the packed inputs of a group, the chunk
    buffers and, pooled, the group's full output and one plane's pooling positions)."""
    cdef Py_ssize_t o_yf = 0 if pool else -1
    cdef Py_ssize_t TH = (OH + M - 1) // M, TW = (OW + M - 1) // M
    cdef Py_ssize_t Tn = TH * TW, NI
    cdef Py_ssize_t T = min(<Py_ssize_t>nt, N), Q = min(WINOGRAD_VECTORS * fcd_VL, FCW_QMAX), v, xs
    cdef Py_ssize_t NX = (R + M - 1) * (R + M - 1)
    cdef fcd_geo g
    fcd_geo_init(&g, C, H, W, 1, 1, OC, R + M - 1, R + M - 1, M, M, pt, pl, TH, TW, fcd_J)
    xs = (g.xq_size + 15) // 16 * 16
    NI = winograd_group(N, Tn, xs * sizeof(float), fcd_VL)
    cdef Py_ssize_t U = winograd_units(N, NI, T)
    cdef Py_ssize_t b_vp = _al64(NX * g.OCP * C * sizeof(float))
    cdef Py_ssize_t b_st = _al64(WINOGRAD_VECTORS * sizeof(Py_ssize_t))
    cdef Py_ssize_t o_u = _al64(NI * xs * sizeof(float))
    cdef Py_ssize_t o_m = o_u + _al64(NX * fcw_u_stride(C, Q) * sizeof(float))
    cdef Py_ssize_t o_z = o_m + _al64(NX * fcw_m_stride(fcd_J, Q) * sizeof(float))
    cdef Py_ssize_t size = o_z + _al64((M * M * Q + 16) * sizeof(float))
    if o_yf == 0:
        o_yf = size
        size += _al64(NI * OC * OH * OW * sizeof(float) + (OH // 2) * (OW // 2) * sizeof(int))
    cdef char* mem = <char*>malloc(b_vp + b_st + T * size + 64)
    if mem == NULL:
        raise MemoryError()
    cdef char* base = <char*>_al64(<Py_ssize_t>mem)
    cdef Py_ssize_t* st = <Py_ssize_t*>(base + b_vp)
    cdef Py_ssize_t ob
    try:
        for v in range(WINOGRAD_VECTORS):
            st[v] = v * fcd_VL
        with nogil:
            for ob in prange(g.OCP // fcd_J, schedule='static', num_threads=nt):
                if NX == 36:
                    fcw_pack_weights6(OC, C, g.OCP, w, flip, ob, R, <float*>base)
                else:
                    fcw_pack_weights(OC, C, fcd_J, g.OCP, w, flip, ob, <float*>base)
            _winograd_blocks(&g, src, N, <float*>base, st, NI, U, bias, relu,
                             base + b_vp + b_st, size, xs, o_u, o_m, o_z, Q, out, T, R, M, OH, OW, o_yf, io, sd, nt)
    finally:
        free(mem)
    return 0


cdef _Key _wfwd_ok, _wpool_ok, _wdata_ok


def conv2d_winograd_forward(x, w, bias, Py_ssize_t pt, Py_ssize_t pl, int relu, y, m=2, stats=None):
    """Winograd F(2x2, 3x3), F(2x2, 5x5) or F(4x4, 3x3) convolution (see
    :func:`fastcnn._ref.conv2d_winograd_forward`); arrays as :func:`conv2d_direct_forward`'s
    (stats: each group of images' output planes summed while in cache)."""
    if _active is None:
        active_isa()
    cdef _A a, f, b, o
    _fwd_arrays(x, w, bias, y, &a, &f, &b, &o)
    cdef _Key k = _key(pt, pl, m if hasattr(m, "__index__") else -1)  # (-1: checked, refused)
    if _new(&_wfwd_ok, &k, a.shape, f.shape, b.shape, o.shape):
        _passed(&_wfwd_ok, &k, _backend.sizes_conv2d_winograd_forward(
            _dims(a.shape, 4), _dims(f.shape, 4), _dims(b.shape, 1), pt, pl, relu,
            _dims(o.shape, 4), m))
    cdef Py_ssize_t N = a.shape[0]
    cdef _A s
    cdef double* sd = _stats_scratch(stats, N, f.shape[0], &s, "conv2d_winograd_forward", f.shape)
    try:
        if N:
            _winograd(<float*>a.p, N, a.shape[1], a.shape[2], a.shape[3], <float*>f.p, 0, f.shape[0], pt, pl,
                      <float*>b.p, relu, <float*>o.p, o.shape[2], o.shape[3], <int>f.shape[2], <int>m,
                      _threads_for(N * f.shape[0] * o.shape[2] * o.shape[3]), 0, NULL, sd)
        if sd != NULL:
            fps_combine(sd, N, f.shape[0], o.shape[2] * o.shape[3], <double*>s.p, <double*>s.p + f.shape[0])
    finally:
        free(sd)


def conv2d_winograd_forward_maxpool2(x, w, bias, Py_ssize_t pt, Py_ssize_t pl, int relu, Py_ssize_t oh,
                                     Py_ssize_t ow, y, idx):
    """Winograd convolution, then 2x2 max pooling, per group of images (see
    :func:`fastcnn._ref.conv2d_winograd_forward_maxpool2`); arrays as
    :func:`conv2d_direct_forward_maxpool2`'s."""
    if _active is None:
        active_isa()
    cdef _A a, f, b, o, i
    _fwd_arrays(x, w, bias, y, &a, &f, &b, &o)
    _arr(idx, cnp.NPY_INT32, 4, True, "idx", &i)
    cdef _Key k = _key(pt, pl, oh, ow)
    if _new(&_wpool_ok, &k, a.shape, f.shape, b.shape, o.shape, i.shape):
        _passed(&_wpool_ok, &k, _backend.sizes_conv2d_winograd_forward_maxpool2(
            _dims(a.shape, 4), _dims(f.shape, 4), _dims(b.shape, 1), pt, pl, relu, oh, ow,
            _dims(o.shape, 4), _dims(i.shape, 4)))
    cdef Py_ssize_t N = a.shape[0]
    if N == 0:
        return
    _winograd(<float*>a.p, N, a.shape[1], a.shape[2], a.shape[3], <float*>f.p, 0, f.shape[0], pt, pl,
              <float*>b.p, relu, <float*>o.p, oh, ow, <int>f.shape[2], 2, _threads_for(N * f.shape[0] * oh * ow), 1,
              <int*>i.p if i.shape[0] else NULL)


cdef int _winograd_weight(const _A* gy,   # IN  (N, OC, OH, OW)
                          const _A* x,    # IN  (N, C, H, W)
                          Py_ssize_t pt, Py_ssize_t pl,
                          const _A* gw,   # OUT (OC, C, R, R)
                          const _A* gb,   # OUT (OC,) or (0,)
                          int nt) except -1:
    """The Winograd weight gradient (:c:func:`fcw_wgrad`): image i in slot i*S//N as the direct
    weight gradient's, the slots taken from a shared counter by a block per thread, each slot's
    groups of images in order; the slots' transformed sums added in slot order, then ``G^T Z
    G``.  The bias as the direct
    kernels' (each plane summed in float64, then the images in order)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], OC = gw.shape[0], OH = gy.shape[2], OW = gy.shape[3]
    cdef int R = <int>gw.shape[2]
    cdef Py_ssize_t TH = (OH + 1) // 2, TW = (OW + 1) // 2, Tn = TH * TW, P = OH * OW
    cdef Py_ssize_t NI = min(N, max(1, (WINOGRAD_TILES + Tn - 1) // Tn))
    cdef Py_ssize_t Q = min(WINOGRAD_VECTORS * fcd_VL, FCW_QMAX), NX = (R + 1) * (R + 1)
    cdef Py_ssize_t VL = fcd_VL, OCV = (OC + VL - 1) // VL * VL
    cdef int V = 2 if (OCV // VL) % 2 == 0 else 1
    cdef Py_ssize_t T = fcd_WT * (2 // V), NQB = (C + T - 1) // T, S = min(<Py_ssize_t>SLOTS, N)
    cdef Py_ssize_t B = min(<Py_ssize_t>nt, S), ZS = NQB * T * OCV
    cdef fcd_geo g, gg
    fcd_geo_init(&g, C, x.shape[2], x.shape[3], 1, 1, OC, R + 1, R + 1, 2, 2, pt, pl, TH, TW, fcd_J)
    fcd_geo_init(&gg, C, x.shape[2], x.shape[3], 1, 1, OC, R, R, 1, 1, pt, pl, OH, OW, fcd_J)
    cdef Py_ssize_t xs = (g.xq_size + 15) // 16 * 16, gs = (P * OCV + 15) // 16 * 16
    cdef Py_ssize_t o_gt = _al64(NI * xs * sizeof(float))
    cdef Py_ssize_t o_u = o_gt + _al64(NI * gs * sizeof(float))
    cdef Py_ssize_t o_mt = o_u + _al64(NX * fcw_u_stride(C, Q) * sizeof(float))
    cdef Py_ssize_t size = o_mt + _al64(NX * (Q * OCV + 16) * sizeof(float))
    cdef Py_ssize_t[::1] off = np.zeros(NQB * T, np.intp)
    cdef float[:, ::1] part = np.empty((S, NX * ZS), np.float32)
    cdef Py_ssize_t nb = gb.shape[0], CHW = C * x.shape[2] * x.shape[3], GS = OC * P
    cdef double[:, ::1] bsum = np.empty((N, nb), np.float64)
    cdef const float* gyp = <float*>gy.p
    cdef const float* xp = <float*>x.p
    cdef float* gbp = <float*>gb.p
    cdef Py_ssize_t b, s, i, i0, i1, ni, e, o, npk, c, nxt = 0
    cdef char* blk
    cdef float* u
    cdef char* mem = <char*>malloc(B * size + 64)
    if mem == NULL:
        raise MemoryError()
    cdef char* base = <char*>_al64(<Py_ssize_t>mem)
    try:
        for c in range(C):
            off[c] = c * Q
        with nogil:
            for b in prange(B, schedule='static', num_threads=nt):
                blk = base + b * size
                u = <float*>(blk + o_u)
                for e in range(NX * fcw_u_stride(C, Q)):  # (lanes past a chunk's tiles stay finite)
                    u[e] = 0.0
                npk = 0
                while True:  # (the slots from a shared counter)
                    s = fastcnn_next_unit(&nxt)
                    if s >= S:
                        break
                    i0 = (s * N + S - 1) // S
                    i1 = ((s + 1) * N + S - 1) // S
                    i = i0
                    while i < i1:
                        ni = min(NI, i1 - i)
                        for e in range(ni):
                            fcd_pack_grad_t(&gg, gyp + (i + e) * GS, OCV, <float*>(blk + o_gt) + e * gs)
                            if nb > 0:  # (the bias as the direct kernels': per image from the packed rows)
                                fcd_grad_t_sums(<float*>(blk + o_gt) + e * gs, P, OCV, nb, &bsum[i + e, 0])
                        fcw_wgrad(&g, xp + i * CHW, ni, <float*>(blk + o_gt), gs, OCV, OH, OW, <float*>blk, xs,
                                  ni <= npk, u, <float*>(blk + o_mt), Q, &off[0], T, V, &part[s, 0], i > i0, R)
                        npk = max(npk, ni)
                        i = i + ni
    finally:
        free(mem)
    with nogil:
        for e in prange(NX * ZS, schedule='static', num_threads=nt):  # the slots in order
            for s in range(1, S):
                part[0, e] = part[0, e] + part[s, e]
        for c in prange(C, schedule='static', num_threads=nt):
            fcw_unpack_wgrad(&part[0, 0], ZS, OCV, C, OC, R, c, c + 1, <float*>gw.p)
        for o in prange(nb, schedule='static', num_threads=nt):
            gbp[o] = <float>_sum_column(&bsum[0, 0], N, nb, o)
    return 0


cdef _Key _wweight_ok


def conv2d_winograd_backward_weight(gy, x, Py_ssize_t pt, Py_ssize_t pl, gw, gb):
    """Weight and bias gradients by Winograd's algorithm (see
    :func:`fastcnn._ref.conv2d_winograd_backward_weight`); arrays as
    :func:`conv2d_direct_backward_weight`'s."""
    if _active is None:
        active_isa()
    cdef _A g_, a, dw, db
    _arr(gy, cnp.NPY_FLOAT32, 4, False, "gy", &g_)
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", &a)
    _arr(gw, cnp.NPY_FLOAT32, 4, True, "gw", &dw)
    _arr(gb, cnp.NPY_FLOAT32, 1, True, "gb", &db)
    cdef _Key k = _key(pt, pl)
    if _new(&_wweight_ok, &k, g_.shape, a.shape, dw.shape, db.shape):
        _passed(&_wweight_ok, &k, _backend.sizes_conv2d_winograd_backward_weight(
            _dims(g_.shape, 4), _dims(a.shape, 4), pt, pl, _dims(dw.shape, 4), _dims(db.shape, 1)))
    if a.shape[0] == 0:
        memset(dw.p, 0, _size4(dw.shape) * sizeof(float))
        memset(db.p, 0, db.shape[0] * sizeof(float))
        return
    _winograd_weight(&g_, &a, pt, pl, &dw, &db, _threads_for(a.shape[0] * dw.shape[0] * g_.shape[2] * g_.shape[3]))


def conv2d_winograd_backward_data(gy, w, Py_ssize_t pt, Py_ssize_t pl, gx, m=2):
    """Input gradient of :func:`conv2d_winograd_forward` (see
    :func:`fastcnn._ref.conv2d_winograd_backward_data`): the same algorithm on the output
    gradient with the rotated, transposed weights; arrays as :func:`conv2d_direct_backward_data`'s."""
    if _active is None:
        active_isa()
    cdef _A g_, f, d
    _arr(gy, cnp.NPY_FLOAT32, 4, False, "gy", &g_)
    _arr(w, cnp.NPY_FLOAT32, 4, False, "w", &f)
    _arr(gx, cnp.NPY_FLOAT32, 4, True, "gx", &d)
    cdef _Key k = _key(pt, pl, m if hasattr(m, "__index__") else -1)
    if _new(&_wdata_ok, &k, g_.shape, f.shape, d.shape):
        _passed(&_wdata_ok, &k, _backend.sizes_conv2d_winograd_backward_data(
            _dims(g_.shape, 4), _dims(f.shape, 4), pt, pl, _dims(d.shape, 4), m))
    cdef Py_ssize_t N = g_.shape[0], C = f.shape[1]
    if N == 0:
        return
    cdef Py_ssize_t R = f.shape[2]
    _winograd(<float*>g_.p, N, g_.shape[1], g_.shape[2], g_.shape[3], <float*>f.p, 1, C, R - 1 - pt, R - 1 - pl,
              NULL, 0, <float*>d.p, d.shape[2], d.shape[3], <int>R, <int>m, _threads_for(N * C * d.shape[2] * d.shape[3]))


def fma_peak_probe(long iters, int threads):
    """Run ``iters`` x A independent vector FMA chains on each of ``threads`` threads with the
    active ISA (A: the forward tile's accumulators, 24 zmm or 12 ymm); returns the FP32 flops
    done (time the call to get the machine's measured FMA peak)."""
    active_isa()
    cdef int t
    cdef fcd_i chains = 0, mine
    cdef float sink = fcd_fma_probe(0, 1.0, &chains)
    with nogil:
        for t in prange(threads, schedule='static', num_threads=threads):
            mine = 0  # (thread-private)
            sink += fcd_fma_probe(iters, 0.999999, &mine)
    if sink != sink:  # (keeps the result alive)
        pass
    return float(iters) * chains * fcd_VL * 2 * threads
