# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Pooling kernels of the Cython backend: max and average pooling, forward and backward.

Contract: :mod:`fastcnn._ref`.  Every window holds at least one real cell (the callers check).
The parallel loops run over (n, c) planes; each plane is written by one iteration in a fixed
order, so results are bit-identical for any thread count.
"""
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free
from libc.string cimport memset

include "_common.pxi"


# --------------------------------------------------------------------------- helpers

cdef inline Py_ssize_t _imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline Py_ssize_t _imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef void _fill_divisor(float* div, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t OH, Py_ssize_t OW, bint include_pad) noexcept nogil:
    """The (OH, OW) divisors of average pooling, as ``fastcnn._ref._avg_divisor``.

    div : OH*OW floats  # OUT
    """
    cdef Py_ssize_t oh, ow, hs, ws, rh, rw
    for oh in range(OH):
        hs = oh * sh - pt
        rh = _imin(hs + kh, H) - _imax(hs, 0)
        for ow in range(OW):
            if include_pad:
                div[oh * OW + ow] = <float>(kh * kw)
            else:
                ws = ow * sw - pl
                rw = _imin(ws + kw, W) - _imax(ws, 0)
                div[oh * OW + ow] = <float>(rh * rw)


cdef float* _new_divisor(Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                         Py_ssize_t OH, Py_ssize_t OW, bint include_pad) except NULL:
    """A malloc'ed, filled divisor array of ``OH*OW`` floats; the caller frees it."""
    cdef float* div = <float*>malloc(OH * OW * sizeof(float))
    if div == NULL:
        raise MemoryError()
    _fill_divisor(div, H, W, kh, kw, sh, sw, pt, pl, OH, OW, include_pad)
    return div


cdef inline void _maxpool_plane(const float* x, float* y, int* idx,
                                Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                                Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """Max pooling of one plane.

    Scan rule (shared by all backends): start from the window's first real cell; a later real
    cell ``v`` replaces the best ``b`` when ``v > b`` or (``v`` is NaN and ``b`` is not).
    x : (H, W) plane  # IN
    y, idx : (OH, OW) planes  # OUT
    """
    cdef Py_ssize_t oh, ow, h, w, h0, w0, hlo, hhi, wlo, whi, bi, k
    cdef float b, v
    for oh in range(OH):
        h0 = oh * sh - pt
        hlo = _imax(h0, 0)
        hhi = _imin(h0 + kh, H)
        for ow in range(OW):
            w0 = ow * sw - pl
            wlo = _imax(w0, 0)
            whi = _imin(w0 + kw, W)
            bi = hlo * W + wlo
            b = x[bi]
            for h in range(hlo, hhi):
                for w in range(wlo, whi):
                    k = h * W + w
                    v = x[k]
                    if v > b or (v != v and b == b):
                        b = v
                        bi = k
            y[oh * OW + ow] = b
            idx[oh * OW + ow] = <int>bi


cdef inline void _maxpool_plane_2x2(const float* x, float* y, int* idx,
                                    Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """:func:`_maxpool_plane` for a 2x2 kernel, stride 2, windows wholly inside the plane
    (``2*OH <= H``, ``2*OW <= W``), written so that gcc vectorises the ``ow`` loops.

    Same scan order and rule, with the rule in the equivalent form
    ``not (v <= b) and b == b`` (NaN ``b`` never moves; otherwise ``v > b`` or ``v`` is NaN).
    The first loop stores the winner's window position 0..3 in ``idx``, the second turns it
    into the flat input index (two simple loops vectorise better than one).
    """
    cdef Py_ssize_t oh, ow
    cdef const float* r0
    cdef const float* r1
    cdef float* yr
    cdef int* ir
    cdef float a0, a1, a2, a3, b
    cdef int base, code, w = <int>W
    for oh in range(OH):
        r0 = x + 2 * oh * W
        r1 = r0 + W
        yr = y + oh * OW
        ir = idx + oh * OW
        for ow in range(OW):
            a0 = r0[2 * ow]
            a1 = r0[2 * ow + 1]
            a2 = r1[2 * ow]
            a3 = r1[2 * ow + 1]
            b = a0
            code = 0
            if not (a1 <= b):
                if b == b:
                    b = a1
                    code = 1
            if not (a2 <= b):
                if b == b:
                    b = a2
                    code = 2
            if not (a3 <= b):
                if b == b:
                    b = a3
                    code = 3
            yr[ow] = b
            ir[ow] = code
        base = <int>(2 * oh * W)
        for ow in range(OW):
            code = ir[ow]
            # (code & 1) columns right, (code >> 1) rows down
            ir[ow] = base + 2 * <int>ow + (code & 1) + (-(code >> 1) & w)


cdef inline Py_ssize_t _maxpool_bwd_plane(const float* gy, const int* idx, float* gx,
                                          Py_ssize_t HW, Py_ssize_t P) noexcept nogil:
    """Zero the plane, then scatter-add ``gy`` to ``idx`` in row-major output order; return the
    number of indices outside ``[0, HW)`` (skipped).

    gy, idx : (OH, OW) planes  # IN
    gx : (H, W) plane  # OUT
    """
    cdef Py_ssize_t k, bad = 0
    cdef int i
    memset(gx, 0, HW * sizeof(float))
    for k in range(P):
        i = idx[k]
        if 0 <= i < HW:
            gx[i] += gy[k]
        else:
            bad += 1
    return bad


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
    cdef Py_ssize_t oh, ow, h, w, h0, w0, hlo, hhi, wlo, whi
    cdef float s, r
    cdef const float* xr
    for oh in range(OH):
        h0 = oh * sh - pt
        hlo = _imax(h0, 0)
        hhi = _imin(h0 + kh, H)
        for ow in range(OW):
            w0 = ow * sw - pl
            wlo = _imax(w0, 0)
            whi = _imin(w0 + kw, W)
            s = 0.0
            for h in range(hlo, hhi):
                xr = x + h * W
                if kw < 8:
                    r = 0.0
                    for w in range(wlo, whi):
                        r = r + xr[w]
                else:
                    r = _pairwise_row(xr, w0, kw, W)
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
    cdef const float* dv
    cdef float* yr
    cdef float zero = 0.0, s0, s1
    for oh in range(OH):
        r0 = x + 2 * oh * W
        r1 = r0 + W
        dv = div + oh * OW
        yr = y + oh * OW
        for ow in range(OW):
            s0 = (zero + r0[2 * ow]) + r0[2 * ow + 1]
            s1 = (zero + r1[2 * ow]) + r1[2 * ow + 1]
            yr[ow] = ((zero + s0) + s1) / dv[ow]


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
    cdef Py_ssize_t i, j, oh, ow, h, lo, hi, off
    cdef const float* g
    cdef const float* dv
    cdef float* dr
    memset(gx, 0, H * W * sizeof(float))
    for i in range(kh):
        for j in range(kw):
            off = j - pl
            _valid_range(off, sw, W, OW, &lo, &hi)
            if lo >= hi:
                continue
            for oh in range(OH):
                h = oh * sh - pt + i
                if h < 0 or h >= H:
                    continue
                dr = gx + h * W
                g = gy + oh * OW
                dv = div + oh * OW
                if sw == 1:
                    for ow in range(lo, hi):
                        dr[ow + off] += g[ow] / dv[ow]
                else:
                    for ow in range(lo, hi):
                        dr[ow * sw + off] += g[ow] / dv[ow]


# --------------------------------------------------------------------------- kernels

cdef void _maxpool_fwd(const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl,
                       float[:, :, :, ::1] y,          # OUT (N, C, OH, OW)
                       int[:, :, :, ::1] idx,          # OUT (N, C, OH, OW) int32
                       int nt) noexcept nogil:
    cdef Py_ssize_t NC = x.shape[0] * x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3], HW = H * W, P = OH * OW
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef float* yp = &y[0, 0, 0, 0]
    cdef int* ip = &idx[0, 0, 0, 0]
    cdef Py_ssize_t t
    # 2x2/2 windows that lie wholly inside the input (no padding reached): branch-free path.
    cdef bint fast = (kh == 2 and kw == 2 and sh == 2 and sw == 2 and pt == 0 and pl == 0
                      and 2 * OH <= H and 2 * OW <= W)
    if nt == 1:  # (a parallel region, even of one thread, costs ~0.7 us: batch-1 steps)
        for t in range(NC):
            if fast:
                _maxpool_plane_2x2(xp + t * HW, yp + t * P, ip + t * P, W, OH, OW)
            else:
                _maxpool_plane(xp + t * HW, yp + t * P, ip + t * P,
                               H, W, kh, kw, sh, sw, pt, pl, OH, OW)
        return
    for t in prange(NC, schedule='static', num_threads=nt):
        if fast:
            _maxpool_plane_2x2(xp + t * HW, yp + t * P, ip + t * P, W, OH, OW)
        else:
            _maxpool_plane(xp + t * HW, yp + t * P, ip + t * P,
                           H, W, kh, kw, sh, sw, pt, pl, OH, OW)


cdef Py_ssize_t _maxpool_bwd(const float[:, :, :, ::1] gy,  # IN  (N, C, OH, OW)
                             const int[:, :, :, ::1] idx,    # IN  (N, C, OH, OW) int32
                             float[:, :, :, ::1] gx,         # OUT (N, C, H, W), overwritten
                             int nt) noexcept nogil:
    """Returns the number of out-of-range indices (0 for valid input)."""
    cdef Py_ssize_t NC = gx.shape[0] * gx.shape[1], HW = gx.shape[2] * gx.shape[3]
    cdef Py_ssize_t P = gy.shape[2] * gy.shape[3]
    cdef const float* gp = &gy[0, 0, 0, 0]
    cdef const int* ip = &idx[0, 0, 0, 0]
    cdef float* xp = &gx[0, 0, 0, 0]
    cdef Py_ssize_t t, bad = 0
    if nt == 1:
        for t in range(NC):
            bad += _maxpool_bwd_plane(gp + t * P, ip + t * P, xp + t * HW, HW, P)
        return bad
    for t in prange(NC, schedule='static', num_threads=nt):
        bad += _maxpool_bwd_plane(gp + t * P, ip + t * P, xp + t * HW, HW, P)
    return bad


cdef void _avgpool_fwd(const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl,
                       const float* div,               # IN  (OH, OW) divisors
                       float[:, :, :, ::1] y,          # OUT (N, C, OH, OW)
                       int nt) noexcept nogil:
    cdef Py_ssize_t NC = x.shape[0] * x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3], HW = H * W, P = OH * OW
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef float* yp = &y[0, 0, 0, 0]
    cdef Py_ssize_t t
    cdef bint fast = (kh == 2 and kw == 2 and sh == 2 and sw == 2 and pt == 0 and pl == 0
                      and 2 * OH <= H and 2 * OW <= W)
    for t in prange(NC, schedule='static', num_threads=nt):
        if fast:
            _avgpool_plane_2x2(xp + t * HW, div, yp + t * P, W, OH, OW)
        else:
            _avgpool_plane(xp + t * HW, div, yp + t * P, H, W, kh, kw, sh, sw, pt, pl, OH, OW)


cdef void _avgpool_bwd(const float[:, :, :, ::1] gy,  # IN  (N, C, OH, OW)
                       Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl,
                       const float* div,               # IN  (OH, OW) divisors
                       float[:, :, :, ::1] gx,         # OUT (N, C, H, W), overwritten
                       int nt) noexcept nogil:
    cdef Py_ssize_t NC = gx.shape[0] * gx.shape[1], H = gx.shape[2], W = gx.shape[3]
    cdef Py_ssize_t OH = gy.shape[2], OW = gy.shape[3], HW = H * W, P = OH * OW
    cdef const float* gp = &gy[0, 0, 0, 0]
    cdef float* xp = &gx[0, 0, 0, 0]
    cdef Py_ssize_t t
    for t in prange(NC, schedule='static', num_threads=nt):
        _avgpool_bwd_plane(gp + t * P, div, xp + t * HW, H, W, kh, kw, sh, sw, pt, pl, OH, OW)


# --------------------------------------------------------------------------- Python API

cdef inline bint _empty4(Py_ssize_t* shape) noexcept:
    return shape[0] == 0 or shape[1] == 0 or shape[2] == 0 or shape[3] == 0


def maxpool2d_forward(const float[:, :, :, ::1] x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                      Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                      float[:, :, :, ::1] y, int[:, :, :, ::1] idx):
    """Max pooling with int32 arg-max indices (see :func:`fastcnn._ref.maxpool2d_forward`)."""
    _check(y.shape[0] == x.shape[0] and y.shape[1] == x.shape[1]
           and idx.shape[0] == y.shape[0] and idx.shape[1] == y.shape[1]
           and idx.shape[2] == y.shape[2] and idx.shape[3] == y.shape[3],
           "maxpool2d_forward: shapes do not match")
    _check_windows(x.shape[2], x.shape[3], kh, kw, sh, sw, pt, pl, y.shape[2], y.shape[3], True)
    if _empty4(y.shape) or _empty4(x.shape):
        return
    with nogil:
        _maxpool_fwd(x, kh, kw, sh, sw, pt, pl, y, idx,
                     _threads_for(x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3]))


def maxpool2d_backward(const float[:, :, :, ::1] gy, const int[:, :, :, ::1] idx,
                       float[:, :, :, ::1] gx):
    """Route each output gradient to its arg-max (see :func:`fastcnn._ref.maxpool2d_backward`)."""
    _check(gy.shape[0] == gx.shape[0] and gy.shape[1] == gx.shape[1]
           and idx.shape[0] == gy.shape[0] and idx.shape[1] == gy.shape[1]
           and idx.shape[2] == gy.shape[2] and idx.shape[3] == gy.shape[3],
           "maxpool2d_backward: shapes do not match")
    if _empty4(gx.shape):
        return
    if _empty4(gy.shape):
        gx[...] = 0.0
        return
    cdef Py_ssize_t bad
    with nogil:
        bad = _maxpool_bwd(gy, idx, gx,
                           _threads_for(gx.shape[0] * gx.shape[1] * gx.shape[2] * gx.shape[3]))
    _check(bad == 0, "maxpool2d_backward: indices out of range for the input plane")


def avgpool2d_forward(const float[:, :, :, ::1] x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                      Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, bint count_include_pad,
                      float[:, :, :, ::1] y):
    """Average pooling (see :func:`fastcnn._ref.avgpool2d_forward`)."""
    _check(y.shape[0] == x.shape[0] and y.shape[1] == x.shape[1],
           "avgpool2d_forward: shapes do not match")
    _check_windows(x.shape[2], x.shape[3], kh, kw, sh, sw, pt, pl, y.shape[2], y.shape[3], True)
    if _empty4(y.shape) or _empty4(x.shape):
        return
    cdef float* div = _new_divisor(x.shape[2], x.shape[3], kh, kw, sh, sw, pt, pl,
                                   y.shape[2], y.shape[3], count_include_pad)
    try:
        with nogil:
            _avgpool_fwd(x, kh, kw, sh, sw, pt, pl, div, y,
                         _threads_for(x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3]))
    finally:
        free(div)


def avgpool2d_backward(const float[:, :, :, ::1] gy, Py_ssize_t kh, Py_ssize_t kw,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                       bint count_include_pad, float[:, :, :, ::1] gx):
    """Gradient of average pooling (see :func:`fastcnn._ref.avgpool2d_backward`)."""
    _check(gy.shape[0] == gx.shape[0] and gy.shape[1] == gx.shape[1],
           "avgpool2d_backward: shapes do not match")
    _check_windows(gx.shape[2], gx.shape[3], kh, kw, sh, sw, pt, pl, gy.shape[2], gy.shape[3], True)
    if _empty4(gx.shape):
        return
    if _empty4(gy.shape):
        gx[...] = 0.0
        return
    cdef float* div = _new_divisor(gx.shape[2], gx.shape[3], kh, kw, sh, sw, pt, pl,
                                   gy.shape[2], gy.shape[3], count_include_pad)
    try:
        with nogil:
            _avgpool_bwd(gy, kh, kw, sh, sw, pt, pl, div, gx,
                         _threads_for(gx.shape[0] * gx.shape[1] * gx.shape[2] * gx.shape[3]))
    finally:
        free(div)
