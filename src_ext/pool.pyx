# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Pooling kernels of the Cython backend: max and average pooling, forward and backward.

Contract: :mod:`fastcnn._ref`.  Every window holds at least one real cell (checked).
The parallel loops run over (n, c) planes; each plane is written by one iteration in a fixed
order, so results are bit-identical for any thread count.
"""
from cython.parallel cimport prange

from fastcnn._ref import avg_divisor, windows_tile

include "_common.pxi"

cdef extern from "pool2.h" nogil:
    void fcp_pool_planes(const float* full, float* out, int* io, int* scratch, Py_ssize_t planes,
                         Py_ssize_t OH, Py_ssize_t OW)  # 2x2 max pooling with indices
    void fcp_set_isa(int isa)


# --------------------------------------------------------------------------- helpers

cdef inline void _span(Py_ssize_t o, Py_ssize_t s, Py_ssize_t p, Py_ssize_t k, Py_ssize_t n,
                       Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """The real cells ``[lo, hi)`` of output ``o``'s window along one axis (stride ``s``,
    padding ``p``, kernel ``k``, input size ``n``)."""
    lo[0] = max(o * s - p, 0)
    hi[0] = min(o * s - p + k, n)


cdef inline void _maxpool_plane(const float* x, float* y, int* idx,
                                Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                                Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """Max pooling of one plane: each window scanned in row-major order from its first real
    cell.

    x : (H, W) plane  # IN
    y, idx : (OH, OW) planes  # OUT
    """
    cdef Py_ssize_t oh, ow, h, w, hlo, hhi, wlo, whi, bi, k
    cdef float b, v
    for oh in range(OH):
        _span(oh, sh, pt, kh, H, &hlo, &hhi)
        for ow in range(OW):
            _span(ow, sw, pl, kw, W, &wlo, &whi)
            bi = hlo * W + wlo
            b = x[bi]
            for h in range(hlo, hhi):
                for w in range(wlo, whi):
                    k = h * W + w
                    v = x[k]
                    if _replaces(v, b):
                        b = v
                        bi = k
            y[oh * OW + ow] = b
            idx[oh * OW + ow] = <int>bi


cdef inline float _cell(const float* xr, Py_ssize_t w, Py_ssize_t W) noexcept nogil:
    return xr[w] if 0 <= w < W else <float>0.0


cdef float _pairwise_row(const float* xr, Py_ssize_t w0, Py_ssize_t n,
                         Py_ssize_t W) noexcept nogil:
    """NumPy's float32 pairwise sum of the ``n`` cells of a zero-padded row from column ``w0``
    (cells outside ``[0, W)`` are padding zeros), in NumPy's order."""
    cdef Py_ssize_t i, n2, n8
    cdef float r0, r1, r2, r3, r4, r5, r6, r7, res
    if n < 8:
        res = 0.0
        for i in range(n):
            res = res + _cell(xr, w0 + i, W)
        return res
    if n <= 128:
        r0 = _cell(xr, w0, W)
        r1 = _cell(xr, w0 + 1, W)
        r2 = _cell(xr, w0 + 2, W)
        r3 = _cell(xr, w0 + 3, W)
        r4 = _cell(xr, w0 + 4, W)
        r5 = _cell(xr, w0 + 5, W)
        r6 = _cell(xr, w0 + 6, W)
        r7 = _cell(xr, w0 + 7, W)
        n8 = n - n % 8
        for i in range(8, n8, 8):
            r0 = r0 + _cell(xr, w0 + i, W)
            r1 = r1 + _cell(xr, w0 + i + 1, W)
            r2 = r2 + _cell(xr, w0 + i + 2, W)
            r3 = r3 + _cell(xr, w0 + i + 3, W)
            r4 = r4 + _cell(xr, w0 + i + 4, W)
            r5 = r5 + _cell(xr, w0 + i + 5, W)
            r6 = r6 + _cell(xr, w0 + i + 6, W)
            r7 = r7 + _cell(xr, w0 + i + 7, W)
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        for i in range(n8, n):
            res = res + _cell(xr, w0 + i, W)
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_row(xr, w0, n2, W) + _pairwise_row(xr, w0 + n2, n - n2, W)


cdef inline void _avgpool_plane(const float* x, const float* div, float* y,
                                Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                                Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """Average pooling of one plane, divided by ``div``.

    The float32 window sum follows the reference's order (NumPy's reduction over the last two
    axes): each window row is summed on its own (sequentially; NumPy's pairwise blocks when
    ``kw >= 8``), then the row sums are added in order.  Padding cells are zeros.
    x : (H, W) plane  # IN
    div : (OH, OW) divisors  # IN
    y : (OH, OW) plane  # OUT
    """
    cdef Py_ssize_t oh, ow, h, w, hlo, hhi, wlo, whi
    cdef float s, r
    cdef const float* xr
    for oh in range(OH):
        _span(oh, sh, pt, kh, H, &hlo, &hhi)
        for ow in range(OW):
            _span(ow, sw, pl, kw, W, &wlo, &whi)
            s = 0.0
            for h in range(hlo, hhi):
                xr = x + h * W
                if kw < 8:
                    r = 0.0
                    for w in range(wlo, whi):
                        r = r + xr[w]
                else:
                    r = _pairwise_row(xr, ow * sw - pl, kw, W)
                s = s + r
            y[oh * OW + ow] = s / div[oh * OW + ow]


cdef inline void _avgpool_plane_2x2(const float* x, const float* div, float* y,
                                    Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """:func:`_avgpool_plane` for 2x2 windows, stride 2, wholly inside the plane; the same
    float32 operations in the same order (the explicit ``0 +`` keep signed zeros identical),
    in a loop gcc vectorises."""
    cdef Py_ssize_t oh, ow
    cdef const float* r0
    cdef const float* r1
    cdef float zero = 0.0, s0, s1
    for oh in range(OH):
        r0 = x + 2 * oh * W
        r1 = r0 + W
        for ow in range(OW):
            s0 = (zero + r0[2 * ow]) + r0[2 * ow + 1]
            s1 = (zero + r1[2 * ow]) + r1[2 * ow + 1]
            y[oh * OW + ow] = ((zero + s0) + s1) / div[oh * OW + ow]


cdef inline void _avgpool_bwd_plane(const float* gy, const float* div, float* gx,
                                    Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                    Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """Gradient of average pooling for one plane; each cell sums ``gy / div`` of its windows in
    (i, j) kernel order, as the reference does.

    gy : (OH, OW) plane  # IN
    div : (OH, OW) divisors  # IN
    gx : (H, W) plane  # OUT
    """
    cdef Py_ssize_t i, j
    memset(gx, 0, H * W * sizeof(float))
    for i in range(kh):
        for j in range(kw):
            _fold_tap(gy, div, gx, i, j, H, W, sh, sw, pt, pl, OH, OW)


cdef inline void _avgpool_bwd_plane_tiled(const float* gy, const float* div, float* gx,
                                          Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                                          Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """:func:`_avgpool_bwd_plane` when the windows tile the plane (stride = kernel, no padding):
    every cell gets the share of its only window, ``0 + gy / div`` as the reference's sum;
    cells past the last window get 0.

    gy, div : (OH, OW) planes  # IN
    gx : (H, W) plane  # OUT
    """
    cdef Py_ssize_t ih, q, u, j
    cdef float* r
    cdef float g, zero = 0.0
    for ih in range(H):
        q = ih // kh
        r = gx + ih * W
        if q >= OH:
            memset(r, 0, W * sizeof(float))
            continue
        for u in range(OW):
            g = zero + gy[q * OW + u] / div[q * OW + u]
            for j in range(kw):
                r[u * kw + j] = g
        if OW * kw < W:
            memset(r + OW * kw, 0, (W - OW * kw) * sizeof(float))


# --------------------------------------------------------------------------- kernels

cdef void _maxpool_fwd(const float* xp,               # IN  (NC, H, W)
                       Py_ssize_t NC, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl,
                       bint fast,                      # IN  2x2/2 windows inside the plane
                       float* yp,                      # OUT (NC, OH, OW)
                       int* ip,                        # OUT (NC, OH, OW) int32
                       Py_ssize_t OH, Py_ssize_t OW, int nt) noexcept nogil:
    cdef Py_ssize_t HW = H * W, P = OH * OW, t
    if nt == 1:  # (a parallel region, even of one thread, costs: docs/PERFORMANCE.md, 5)
        for t in range(NC):
            if fast:
                fcp_pool_planes(xp + t * HW, yp + t * P, ip + t * P, NULL, 1, H, W)
            else:
                _maxpool_plane(xp + t * HW, yp + t * P, ip + t * P,
                               H, W, kh, kw, sh, sw, pt, pl, OH, OW)
        return
    for t in prange(NC, schedule='static', num_threads=nt):
        if fast:
            fcp_pool_planes(xp + t * HW, yp + t * P, ip + t * P, NULL, 1, H, W)
        else:
            _maxpool_plane(xp + t * HW, yp + t * P, ip + t * P,
                           H, W, kh, kw, sh, sw, pt, pl, OH, OW)


cdef Py_ssize_t _maxpool_bwd(const float* gp,        # IN  (NC, P)
                             const int* ip,          # IN  (NC, P) int32
                             float* xp,              # OUT (NC, HW), overwritten
                             Py_ssize_t NC, Py_ssize_t P, Py_ssize_t HW, int nt) noexcept nogil:
    """Returns the number of out-of-range indices (0 for valid input)."""
    cdef Py_ssize_t t, bad = 0
    if nt == 1:
        for t in range(NC):
            bad += _maxpool_bwd_plane(gp + t * P, ip + t * P, NULL, xp + t * HW, HW, P)
        return bad
    for t in prange(NC, schedule='static', num_threads=nt):
        bad += _maxpool_bwd_plane(gp + t * P, ip + t * P, NULL, xp + t * HW, HW, P)
    return bad


cdef void _avgpool_planes(bint forward,
                          const float* sp,                # IN  x (NC, H, W), or gy (NC, OH, OW)
                          Py_ssize_t NC, Py_ssize_t H, Py_ssize_t W,
                          Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t pt, Py_ssize_t pl,
                          bint fast,                      # IN  forward: 2x2/2 windows inside the plane;
                                                          #     backward: windows tiling the plane
                          const float* dp,                # IN  (OH, OW) divisors
                          float* op,                      # OUT y, or gx (overwritten)
                          Py_ssize_t OH, Py_ssize_t OW, int nt) noexcept nogil:
    """Average pooling (``forward``) or its gradient, one (n, c) plane per iteration."""
    cdef Py_ssize_t S = H * W if forward else OH * OW
    cdef Py_ssize_t D = OH * OW if forward else H * W
    cdef Py_ssize_t t
    if not forward:
        for t in prange(NC, schedule='static', num_threads=nt):
            if fast:
                _avgpool_bwd_plane_tiled(sp + t * S, dp, op + t * D, H, W, kh, kw, OH, OW)
            else:
                _avgpool_bwd_plane(sp + t * S, dp, op + t * D, H, W, kh, kw, sh, sw, pt, pl, OH, OW)
        return
    for t in prange(NC, schedule='static', num_threads=nt):
        if fast:
            _avgpool_plane_2x2(sp + t * S, dp, op + t * D, W, OH, OW)
        else:
            _avgpool_plane(sp + t * S, dp, op + t * D, H, W, kh, kw, sh, sw, pt, pl, OH, OW)


# --------------------------------------------------------------------------- Python API

cdef inline bint _fast(Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                       Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t OH,
                       Py_ssize_t OW) noexcept:
    """2x2/2 windows that lie wholly inside the input (no padding reached): branch-free path."""
    return (kh == 2 and kw == 2 and sh == 2 and sw == 2 and pt == 0 and pl == 0
            and 2 * OH <= H and 2 * OW <= W)


cdef _Key _maxf_ok, _maxb_ok, _avgf_ok, _avgb_ok


def maxpool2d_forward(x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                      Py_ssize_t pl, y, idx):
    """Max pooling with int32 arg-max indices (see :func:`fastcnn._ref.maxpool2d_forward`).
    x (N, C, H, W), y (N, C, OH, OW) float32; idx (N, C, OH, OW) int32."""
    cdef _A a, o, i
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", &a)
    _arr(y, cnp.NPY_FLOAT32, 4, True, "y", &o)
    _arr(idx, cnp.NPY_INT32, 4, True, "idx", &i)
    cdef _Key k = _key(kh, kw, sh, sw, pt, pl)
    if _new(&_maxf_ok, &k, a.shape, o.shape, i.shape):
        _passed(&_maxf_ok, &k, _backend.sizes_maxpool2d_forward(
            _dims(a.shape, 4), kh, kw, sh, sw, pt, pl, _dims(o.shape, 4), _dims(i.shape, 4)))
    if _size4(o.shape) == 0:
        return
    cdef bint fast = _fast(a.shape[2], a.shape[3], kh, kw, sh, sw, pt, pl, o.shape[2], o.shape[3])
    if fast and not _isa_set:
        _use_isa(fcp_set_isa)
    with nogil:
        _maxpool_fwd(<float*>a.p, a.shape[0] * a.shape[1], a.shape[2], a.shape[3], kh, kw, sh, sw, pt, pl, fast,
                     <float*>o.p, <int*>i.p, o.shape[2], o.shape[3], _threads_for(_size4(a.shape)))


def maxpool2d_backward(gy, idx, gx):
    """Route each output gradient to its arg-max (see :func:`fastcnn._ref.maxpool2d_backward`).
    gy (N, C, OH, OW) float32, idx (N, C, OH, OW) int32, gx (N, C, H, W) float32."""
    cdef _A g, i, o
    _arr(gy, cnp.NPY_FLOAT32, 4, False, "gy", &g)
    _arr(idx, cnp.NPY_INT32, 4, False, "idx", &i)
    _arr(gx, cnp.NPY_FLOAT32, 4, True, "gx", &o)
    cdef _Key k = _key()
    if _new(&_maxb_ok, &k, g.shape, i.shape, o.shape):
        _passed(&_maxb_ok, &k, _backend.sizes_maxpool2d_backward(
            _dims(g.shape, 4), _dims(i.shape, 4), _dims(o.shape, 4)))
    if _size4(o.shape) == 0:
        return
    if _size4(g.shape) == 0:
        memset(o.p, 0, _size4(o.shape) * sizeof(float))
        return
    cdef Py_ssize_t bad
    with nogil:
        bad = _maxpool_bwd(<float*>g.p, <int*>i.p, <float*>o.p, o.shape[0] * o.shape[1], g.shape[2] * g.shape[3],
                           o.shape[2] * o.shape[3], _threads_for(_size4(o.shape)))
    _in_range("maxpool2d_backward", bad, "indices (into the input plane)")


cdef int _avgpool(bint forward, src, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t pt, Py_ssize_t pl, bint include_pad, dst) except -1:
    """Average pooling (``forward``: src x, dst y) or its gradient (src gy, dst gx)."""
    cdef _A s, d
    _arr(src, cnp.NPY_FLOAT32, 4, False, "x" if forward else "gy", &s)
    _arr(dst, cnp.NPY_FLOAT32, 4, True, "y" if forward else "gx", &d)
    cdef _Key* last = &_avgf_ok if forward else &_avgb_ok
    cdef _Key k = _key(kh, kw, sh, sw, pt, pl, forward)
    if _new(last, &k, s.shape, d.shape):
        check = _backend.sizes_avgpool2d_forward if forward else _backend.sizes_avgpool2d_backward
        _passed(last, &k, check(
            _dims(s.shape, 4), kh, kw, sh, sw, pt, pl, include_pad, _dims(d.shape, 4)))
    cdef Py_ssize_t* xs = &s.shape[0] if forward else &d.shape[0]  # the input-sized array
    cdef Py_ssize_t* ys = &d.shape[0] if forward else &s.shape[0]
    if _size4(d.shape) == 0:
        return 0
    if _size4(s.shape) == 0:  # (gradient of an empty output)
        memset(d.p, 0, _size4(d.shape) * sizeof(float))
        return 0
    cdef const float[:, ::1] div = avg_divisor(xs[2], xs[3], kh, kw, sh, sw, pt, pl, ys[2], ys[3],
                                               include_pad)
    cdef bint fast = (_fast(xs[2], xs[3], kh, kw, sh, sw, pt, pl, ys[2], ys[3]) if forward else
                      windows_tile(xs[2], xs[3], kh, kw, sh, sw, pt, pl, ys[2], ys[3]))
    with nogil:
        _avgpool_planes(forward, <float*>s.p, xs[0] * xs[1], xs[2], xs[3], kh, kw, sh, sw, pt, pl, fast,
                        &div[0, 0], <float*>d.p, ys[2], ys[3], _threads_for(_size4(xs)))
    return 0


def avgpool2d_forward(x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                      Py_ssize_t pl, bint count_include_pad, y):
    """Average pooling (see :func:`fastcnn._ref.avgpool2d_forward`); x (N, C, H, W), y
    (N, C, OH, OW) float32."""
    _avgpool(True, x, kh, kw, sh, sw, pt, pl, count_include_pad, y)


def avgpool2d_backward(gy, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, bint count_include_pad, gx):
    """Gradient of average pooling (see :func:`fastcnn._ref.avgpool2d_backward`)."""
    _avgpool(False, gy, kh, kw, sh, sw, pt, pl, count_include_pad, gx)
