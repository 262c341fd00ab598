# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Convolution helpers of the Cython backend: im2col, col2im, the GEMM-layout reorders and the
per-image convolutions.

Contract (signatures, layouts, ``# IN`` / ``# OUT`` buffers): :mod:`fastcnn._ref`.  Every
parallel loop writes disjoint parts of its outputs, and every sum runs in a fixed order inside
one iteration, so results are bit-identical for any thread count.
"""
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

include "_common.pxi"


# --------------------------------------------------------------------------- helpers

cdef inline void _im2col_seg(const float* xc, float* d,
                             Py_ssize_t i, Py_ssize_t j, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                             Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """One image's segment of one ``cols`` row: ``d[oh*OW + ow] = xc[oh*sh-pt+i, ow*sw-pl+j]``.

    xc : the (H, W) input plane  # IN
    d : OH*OW floats of the cols row  # OUT
    """
    cdef Py_ssize_t oh, ow, h, lo, hi
    cdef Py_ssize_t off = j - pl
    cdef const float* xr
    cdef float* dr
    _valid_range(off, sw, W, OW, &lo, &hi)
    for oh in range(OH):
        h = oh * sh - pt + i
        dr = d + oh * OW
        if h < 0 or h >= H:
            for ow in range(OW):
                dr[ow] = 0.0
            continue
        xr = xc + h * W
        for ow in range(lo):
            dr[ow] = 0.0
        if sw == 1:
            for ow in range(lo, hi):
                dr[ow] = xr[ow + off]
        else:
            for ow in range(lo, hi):
                dr[ow] = xr[ow * sw + off]
        for ow in range(hi, OW):
            dr[ow] = 0.0


cdef inline void _col2im_plane(const float* cols, float* dx, Py_ssize_t c, Py_ssize_t n,
                               Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t H, Py_ssize_t W,
                               Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                               Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t NP) noexcept nogil:
    """Fold the columns of image ``n``, channel ``c`` into the plane ``dx`` (zeroed here).

    Each cell sums its contributions in (i, j) kernel order, as the reference does.
    cols : (C*kh*kw, N*OH*OW)  # IN
    dx : the (H, W) plane of (n, c)  # OUT
    """
    cdef Py_ssize_t i, j, e
    for e in range(H * W):
        dx[e] = 0.0
    for i in range(kh):
        for j in range(kw):
            _fold_tap(cols + ((c * kh + i) * kw + j) * NP + n * OH * OW, NULL, dx, i, j, H, W,
                      sh, sw, pt, pl, OH, OW)


cdef inline void _add_bias_row(const float* src, float b, float* dst,
                               Py_ssize_t P) noexcept nogil:
    cdef Py_ssize_t p
    for p in range(P):
        dst[p] = src[p] + b


cdef inline float _copy_sum_rows(const float* gy, float* dst, Py_ssize_t N, Py_ssize_t rstride,
                                 Py_ssize_t P) noexcept nogil:
    """Copy ``N`` rows of ``P`` (row ``n`` at ``gy + n*rstride``) to ``dst`` back to back and
    return their float64 sum (in the order of :func:`_sum8_add`)."""
    cdef double acc[8]
    cdef Py_ssize_t n, p
    _sum8_zero(acc)
    for n in range(N):
        for p in range(P):
            dst[n * P + p] = gy[n * rstride + p]
        _sum8_add(acc, gy + n * rstride, P)
    return <float>_sum8_total(acc)


# --------------------------------------------------------------------------- kernels

cdef void _im2col(const float* xp,                # IN  (N, C, H, W)
                  Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t OH, Py_ssize_t OW,
                  float* cp,                        # OUT (C*kh*kw, N*OH*OW)
                  int nt) noexcept nogil:
    cdef Py_ssize_t P = OH * OW, NP = N * OH * OW, KK = kh * kw, HW = H * W
    cdef Py_ssize_t t, r, n, c, k, i, j
    if nt == 1:  # (a parallel region, even of one thread, costs: docs/PERFORMANCE.md, 5)
        for n in range(N):
            _im2col_image(xp + n * C * HW, cp + n * P, C, kh, kw, H, W, sh, sw, pt, pl, OH, OW, NP)
        return
    # One iteration per (cols row, image): a disjoint OH*OW segment of cols.
    for t in prange(C * KK * N, schedule='static', num_threads=nt):
        r = t // N
        n = t - r * N
        c = r // KK
        k = r - c * KK
        i = k // kw
        j = k - i * kw
        _im2col_seg(xp + (n * C + c) * HW, cp + r * NP + n * P, i, j, H, W, sh, sw, pt, pl, OH, OW)


cdef void _col2im(const float* cp,                 # IN  (C*kh*kw, N*OH*OW)
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                  Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t OH, Py_ssize_t OW,
                  float* dp,                        # OUT (N, C, H, W), overwritten
                  Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, int nt) noexcept nogil:
    cdef Py_ssize_t NP = N * OH * OW, HW = H * W
    cdef Py_ssize_t t, n, c
    # One iteration per (n, c) plane of dx, written by that iteration alone.
    for t in prange(N * C, schedule='static', num_threads=nt):
        n = t // C
        c = t - n * C
        _col2im_plane(cp, dp + t * HW, c, n, kh, kw, H, W, sh, sw, pt, pl, OH, OW, NP)


cdef void _cnp_to_ncp_bias(const float* src,       # IN  (OC, N*P)
                           const float* bp,        # IN  (OC,)
                           float* dst,             # OUT (N, OC, P)
                           Py_ssize_t N, Py_ssize_t OC, Py_ssize_t P, int nt) noexcept nogil:
    cdef Py_ssize_t NP = N * P
    cdef Py_ssize_t t, n, o
    # One iteration per (n, oc) row of y.
    for t in prange(N * OC, schedule='static', num_threads=nt):
        n = t // OC
        o = t - n * OC
        _add_bias_row(src + o * NP + n * P, bp[o], dst + t * P, P)


cdef void _ncp_to_cnp_sum(const float* src,        # IN  (N, OC, P)
                          float* dst,              # OUT (OC, N*P)
                          float* gbp,              # OUT (OC,)
                          Py_ssize_t N, Py_ssize_t OC, Py_ssize_t P, int nt) noexcept nogil:
    cdef Py_ssize_t NP = N * P
    cdef Py_ssize_t o
    # One iteration per output channel: its gcnp row and its bias sum (fixed order).
    for o in prange(OC, schedule='static', num_threads=nt):
        gbp[o] = _copy_sum_rows(src + o * P, dst + o * NP, N, OC * P, P)


# --------------------------------------------------------------------------- one image at a time
# One thread pool (docs/PERFORMANCE.md, 1): each thread unfolds one image into its own buffer
# and multiplies it with SciPy's single-threaded SGEMM (:func:`_gemm`).

cdef inline void _im2col_image(const float* xi, float* c, Py_ssize_t C, Py_ssize_t kh,
                               Py_ssize_t kw, Py_ssize_t H, Py_ssize_t W, Py_ssize_t sh,
                               Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t OH,
                               Py_ssize_t OW, Py_ssize_t ld) noexcept nogil:
    """Unfold one image ``xi`` (C, H, W) into the C*kh*kw rows of OH*OW floats at ``c``, row
    ``r`` starting at ``c + r*ld``."""
    cdef Py_ssize_t r, ci, i, j, e, q, u, lo, hi, qlo, qhi, P = OH * OW
    cdef const float* src
    cdef float* d
    cdef bint flat = sh == 1 and sw == 1 and OW == W
    for r in range(C * kh * kw):
        ci = r // (kh * kw)
        i = (r - ci * kh * kw) // kw
        j = r - ci * kh * kw - i * kw
        if not flat:
            _im2col_seg(xi + ci * H * W, c + r * ld, i, j, H, W, sh, sw, pt, pl, OH, OW)
            continue
        # Stride 1 with OW == W ("same" convolutions): the valid rows of one kernel offset
        # are one contiguous shifted run of the input plane; copy it at once, then zero the
        # rows and the columns that fall in the padding.
        d = c + r * ld
        _valid_range(i - pt, 1, H, OH, &qlo, &qhi)
        _valid_range(j - pl, 1, W, OW, &lo, &hi)
        for e in range(qlo * OW):
            d[e] = 0.0
        for e in range(qhi * OW, P):
            d[e] = 0.0
        if qhi <= qlo or hi <= lo:
            for e in range(qlo * OW, qhi * OW):
                d[e] = 0.0
            continue
        src = xi + ci * H * W + (i - pt) * W + (j - pl)
        for e in range(qlo * OW + lo, (qhi - 1) * OW + hi):
            d[e] = src[e]
        for q in range(qlo, qhi):
            for u in range(lo):
                d[q * OW + u] = 0.0
            for u in range(hi, OW):
                d[q * OW + u] = 0.0


cdef void _forward_images(const float* xp,         # IN  (N, C, H, W)
                          Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                          const float* wp,         # IN  (OC, K = C*kh*kw)
                          Py_ssize_t OC, Py_ssize_t K,
                          const float* bias,       # IN  (OC,)
                          Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t OH, Py_ssize_t OW,
                          float* cp, Py_ssize_t T, # scratch (T blocks, K, OH*OW)
                          float* yp,               # OUT (N, OC, OH*OW)
                          int nt) noexcept nogil:
    cdef Py_ssize_t P = OH * OW
    cdef Py_ssize_t t, i, o
    cdef float* c
    cdef float* yi
    # One iteration per block of consecutive images, with its own buffer cols[t].
    for t in prange(T, schedule='static', num_threads=nt):
        c = cp + t * K * P
        for i in range(_part(t, N, T), _part(t + 1, N, T)):
            _im2col_image(xp + i * C * H * W, c, C, kh, kw, H, W, sh, sw, pt, pl, OH, OW, P)
            yi = yp + i * OC * P
            _gemm(False, False, OC, P, K, wp, K, c, P, 0.0, yi, P)  # y_i = w2 @ c
            for o in range(OC):
                _add_bias_row(yi + o * P, bias[o], yi + o * P, P)


cdef void _backward_images(const float* gp,        # IN  (N, OC, OH*OW)
                           const float* xp,        # IN  (N, C, H, W)
                           Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                           const float* wp,        # IN  (OC, K = C*kh*kw)
                           Py_ssize_t OC, Py_ssize_t K,
                           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t OH, Py_ssize_t OW,
                           bint input_grad,
                           float* cp, Py_ssize_t T,  # scratch (T blocks, K, OH*OW)
                           float* gwp, Py_ssize_t S, # OUT (S slots, K, OC)
                           double* gbp,            # OUT (S, OC)
                           float* gxp,             # OUT (N, C, H, W) if input_grad
                           double* bacc,           # scratch (T, OC, OH*OW)
                           int nt) noexcept nogil:
    cdef Py_ssize_t P = OH * OW
    cdef Py_ssize_t t, s, i, o, e, ci
    cdef float* c
    cdef const float* g
    cdef double* ba
    cdef double sm
    # One iteration per block of consecutive slots, with its own buffer cols[t].  A slot is a
    # run of consecutive images whose weight gradients it sums in image order (SGEMM with
    # beta = 1), so the result does not depend on the number of blocks or threads.
    for t in prange(T, schedule='static', num_threads=nt):
        c = cp + t * K * P
        ba = bacc + t * OC * P
        for s in range(_part(t, S, T), _part(t + 1, S, T)):
            for e in range(K * OC):
                gwp[s * K * OC + e] = 0.0
            # Bias sums: element-wise double partial sums over the slot's images (vectorisable
            # without reassociating), then over positions, in order.
            for e in range(OC * P):
                ba[e] = 0.0
            for i in range((s * N + S - 1) // S, ((s + 1) * N + S - 1) // S):
                g = gp + i * OC * P
                _im2col_image(xp + i * C * H * W, c, C, kh, kw, H, W, sh, sw, pt, pl, OH, OW, P)
                _gemm(False, True, K, OC, P, c, P, g, P, 1.0, gwp + s * K * OC, OC)  # += c @ g^T
                for e in range(OC * P):
                    ba[e] = ba[e] + g[e]
                if input_grad:
                    _gemm(True, False, K, P, OC, wp, K, g, P, 0.0, c, P)  # c = w2^T @ g
                    for ci in range(C):
                        _col2im_plane(c, gxp + (i * C + ci) * H * W, ci, 0, kh, kw, H, W, sh,
                                      sw, pt, pl, OH, OW, P)
            for o in range(OC):
                sm = 0.0
                for e in range(P):
                    sm = sm + ba[o * P + e]
                gbp[s * OC + o] = sm


# --------------------------------------------------------------------------- Python API

cdef _Key _im2col_ok, _col2im_ok, _cnp_ok, _ncp_ok, _fwd_ok, _bwd_ok


def im2col(x, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
           Py_ssize_t oh, Py_ssize_t ow, cols):
    """Unfold convolution windows into ``cols`` (see :func:`fastcnn._ref.im2col`); x
    (N, C, H, W), cols (C*kh*kw, N*oh*ow) float32."""
    cdef _A a, c
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", &a)
    _arr(cols, cnp.NPY_FLOAT32, 2, True, "cols", &c)
    cdef _Key k = _key(kh, kw, sh, sw, pt, pl, oh, ow)
    if _new(&_im2col_ok, &k, a.shape, c.shape):
        _passed(&_im2col_ok, &k, _backend.sizes_im2col(
            _dims(a.shape, 4), kh, kw, sh, sw, pt, pl, oh, ow, _dims(c.shape, 2)))
    if c.shape[0] == 0 or c.shape[1] == 0:
        return
    with nogil:
        _im2col(<float*>a.p, a.shape[0], a.shape[1], a.shape[2], a.shape[3], kh, kw, sh, sw, pt, pl, oh, ow,
                <float*>c.p, _threads_for(c.shape[0] * c.shape[1]))


def col2im(cols, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
           Py_ssize_t oh, Py_ssize_t ow, dx):
    """Fold ``cols`` back into ``dx``, summing overlaps (see :func:`fastcnn._ref.col2im`); cols
    (C*kh*kw, N*oh*ow), dx (N, C, H, W) float32."""
    cdef _A c, d
    _arr(cols, cnp.NPY_FLOAT32, 2, False, "cols", &c)
    _arr(dx, cnp.NPY_FLOAT32, 4, True, "dx", &d)
    cdef _Key k = _key(kh, kw, sh, sw, pt, pl, oh, ow)
    if _new(&_col2im_ok, &k, c.shape, d.shape):
        _passed(&_col2im_ok, &k, _backend.sizes_col2im(
            _dims(c.shape, 2), kh, kw, sh, sw, pt, pl, oh, ow, _dims(d.shape, 4)))
    if _size4(d.shape) == 0:
        return
    if c.shape[0] == 0 or c.shape[1] == 0:
        memset(d.p, 0, _size4(d.shape) * sizeof(float))
        return
    with nogil:
        _col2im(<float*>c.p, kh, kw, sh, sw, pt, pl, oh, ow, <float*>d.p, d.shape[0], d.shape[1], d.shape[2],
                d.shape[3], _threads_for(c.shape[0] * c.shape[1]))


def cnp_to_ncp_bias(ycnp, bias, y):
    """``y[n, o, p] = ycnp[o, n*P + p] + bias[o]`` (see :func:`fastcnn._ref.cnp_to_ncp_bias`);
    ycnp (OC, N*P), bias (OC,), y (N, OC, P) float32."""
    cdef _A c, b, o
    _arr(ycnp, cnp.NPY_FLOAT32, 2, False, "ycnp", &c)
    _arr(bias, cnp.NPY_FLOAT32, 1, False, "bias", &b)
    _arr(y, cnp.NPY_FLOAT32, 3, True, "y", &o)
    cdef _Key k = _key()
    if _new(&_cnp_ok, &k, c.shape, b.shape, o.shape):
        _passed(&_cnp_ok, &k, _backend.sizes_cnp_to_ncp_bias(
            _dims(c.shape, 2), _dims(b.shape, 1), _dims(o.shape, 3)))
    if o.shape[0] == 0 or o.shape[1] == 0 or o.shape[2] == 0:
        return
    with nogil:
        _cnp_to_ncp_bias(<float*>c.p, <float*>b.p, <float*>o.p, o.shape[0], o.shape[1], o.shape[2],
                         _threads_for(o.shape[0] * o.shape[1] * o.shape[2]))


def ncp_to_cnp_sum(gy, gcnp, gb):
    """``gcnp[o, n*P + p] = gy[n, o, p]``; ``gb[o]`` = sum over n, p in float64
    (see :func:`fastcnn._ref.ncp_to_cnp_sum`); gy (N, OC, P), gcnp (OC, N*P), gb (OC,) float32."""
    cdef _A g, c, b
    _arr(gy, cnp.NPY_FLOAT32, 3, False, "gy", &g)
    _arr(gcnp, cnp.NPY_FLOAT32, 2, True, "gcnp", &c)
    _arr(gb, cnp.NPY_FLOAT32, 1, True, "gb", &b)
    cdef _Key k = _key()
    if _new(&_ncp_ok, &k, g.shape, c.shape, b.shape):
        _passed(&_ncp_ok, &k, _backend.sizes_ncp_to_cnp_sum(
            _dims(g.shape, 3), _dims(c.shape, 2), _dims(b.shape, 1)))
    if g.shape[0] == 0 or g.shape[1] == 0 or g.shape[2] == 0:
        memset(b.p, 0, b.shape[0] * sizeof(float))
        return
    with nogil:
        _ncp_to_cnp_sum(<float*>g.p, <float*>c.p, <float*>b.p, g.shape[0], g.shape[1], g.shape[2],
                        _threads_for(g.shape[0] * g.shape[1] * g.shape[2]))


def conv2d_forward_images(x, w2, bias, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t oh, Py_ssize_t ow, cols, y):
    """Convolution one image at a time (see :func:`fastcnn._ref.conv2d_forward_images`); x
    (N, C, H, W), w2 (OC, C*kh*kw), bias (OC,), cols (T, C*kh*kw, oh*ow), y (N, OC, oh*ow)
    float32."""
    cdef _A a, w, b, c, o
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", &a)
    _arr(w2, cnp.NPY_FLOAT32, 2, False, "w2", &w)
    _arr(bias, cnp.NPY_FLOAT32, 1, False, "bias", &b)
    _arr(cols, cnp.NPY_FLOAT32, 3, True, "cols", &c)
    _arr(y, cnp.NPY_FLOAT32, 3, True, "y", &o)
    cdef _Key k = _key(kh, kw, sh, sw, pt, pl, oh, ow)
    if _new(&_fwd_ok, &k, a.shape, w.shape, b.shape, c.shape, o.shape):
        _passed(&_fwd_ok, &k, _backend.sizes_conv2d_forward_images(
            _dims(a.shape, 4), _dims(w.shape, 2), _dims(b.shape, 1), kh, kw, sh, sw, pt, pl, oh,
            ow, _dims(c.shape, 3), _dims(o.shape, 3)))
    if a.shape[0] == 0 or w.shape[0] == 0:
        return
    cdef int nt = min(_threads_for(o.shape[0] * o.shape[1] * o.shape[2]), c.shape[0])
    with nogil:
        _forward_images(<float*>a.p, a.shape[0], a.shape[1], a.shape[2], a.shape[3], <float*>w.p, w.shape[0],
                        w.shape[1], <float*>b.p, kh, kw, sh, sw, pt, pl, oh, ow, <float*>c.p, c.shape[0],
                        <float*>o.p, nt)


def conv2d_backward_images(gy, x, w2, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t oh, Py_ssize_t ow, bint input_grad,
                           cols, gwt_tmp, gwt_part, gb_part, gx):
    """Gradients one image at a time (see :func:`fastcnn._ref.conv2d_backward_images`;
    ``gwt_tmp`` is not needed here: SGEMM accumulates into ``gwt_part`` directly); gy
    (N, OC, oh*ow), x (N, C, H, W), w2 (OC, C*kh*kw), cols (T, C*kh*kw, oh*ow), gwt_tmp
    (T, C*kh*kw, OC), gwt_part (SLOTS, C*kh*kw, OC), gx (N, C, H, W) float32; gb_part
    (SLOTS, OC) float64."""
    cdef _A g, a, w, c, t, gw, gb, d
    _arr(gy, cnp.NPY_FLOAT32, 3, False, "gy", &g)
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", &a)
    _arr(w2, cnp.NPY_FLOAT32, 2, False, "w2", &w)
    _arr(cols, cnp.NPY_FLOAT32, 3, True, "cols", &c)
    _arr(gwt_tmp, cnp.NPY_FLOAT32, 3, True, "gwt_tmp", &t)
    _arr(gwt_part, cnp.NPY_FLOAT32, 3, True, "gwt_part", &gw)
    _arr(gb_part, cnp.NPY_FLOAT64, 2, True, "gb_part", &gb)
    _arr(gx, cnp.NPY_FLOAT32, 4, True, "gx", &d)
    cdef _Key k = _key(kh, kw, sh, sw, pt, pl, oh, ow, input_grad)
    if _new(&_bwd_ok, &k, g.shape, a.shape, w.shape, c.shape, t.shape, gw.shape, gb.shape, d.shape):
        _passed(&_bwd_ok, &k, _backend.sizes_conv2d_backward_images(
            _dims(g.shape, 3), _dims(a.shape, 4), _dims(w.shape, 2), kh, kw, sh, sw, pt, pl, oh,
            ow, input_grad, _dims(c.shape, 3), _dims(t.shape, 3), _dims(gw.shape, 3),
            _dims(gb.shape, 2), _dims(d.shape, 4)))
    if a.shape[0] == 0 or w.shape[0] == 0:
        memset(gw.p, 0, gw.shape[0] * gw.shape[1] * gw.shape[2] * sizeof(float))
        memset(gb.p, 0, gb.shape[0] * gb.shape[1] * sizeof(double))
        return
    cdef int nt = min(_threads_for(g.shape[0] * g.shape[1] * g.shape[2]), c.shape[0])
    cdef double* bacc = <double*>malloc(c.shape[0] * g.shape[1] * g.shape[2] * sizeof(double))
    if bacc == NULL:
        raise MemoryError("conv2d_backward_images: no memory for the bias partial sums")
    try:
        with nogil:
            _backward_images(<float*>g.p, <float*>a.p, a.shape[0], a.shape[1], a.shape[2], a.shape[3],
                             <float*>w.p, w.shape[0], w.shape[1], kh, kw, sh, sw, pt, pl, oh, ow, input_grad,
                             <float*>c.p, c.shape[0], <float*>gw.p, gw.shape[0], <double*>gb.p, <float*>d.p,
                             bacc, nt)
    finally:
        free(bacc)
