# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""BatchNorm2D kernels of the Cython backend (contract: :mod:`fastcnn._ref`).

The reductions (batch statistics, gradient sums) run one channel per parallel iteration and
accumulate in double in a fixed order: the channel's N planes are added element-wise, in order
of n, into one double row of H*W partial sums (a loop the compiler vectorises without
reassociating anything), and that row is summed by ``_sum8_runs`` (8 interleaved partial sums).  So results
are bit-identical for any thread count (and equal to the Numba backend's, same order).  The element-wise
kernels run one (n, c) plane per iteration with the reference's float32 operations in the
reference's order, so they match it bit for bit.  The plane loops are C (``norm_kern.h``),
compiled for each SIMD path; the path is the direct convolutions' (``FASTCNN_ISA`` forces it).
"""
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

include "_common.pxi"


# --------------------------------------------------------------------------- plane helpers

cdef extern from "norm_kern.h" nogil:
    ctypedef struct fnk_table:  # (the loops of one SIMD path; xh = (x - mu) * s, float32)
        void (*acc_plane)(double* acc, const float* x, Py_ssize_t P, Py_ssize_t D) noexcept nogil  # acc[e] += x[e]
        void (*acc_plane_sqdev)(double* acc, const float* x, Py_ssize_t P, double mu) noexcept nogil  # += (x[e]-mu)**2
        void (*acc_plane_sum_dot)(double* accs, double* accd, const float* g, const float* x, Py_ssize_t P,
                                  float mu, float s, float w, float b, int relu,
                                  Py_ssize_t D) noexcept nogil  # += g, g * xh; g masked if relu
        void (*fwd_plane)(const float* x, float* y, Py_ssize_t P, float mu, float s, float w, float b,
                          int relu) noexcept nogil  # y = xh * w + b (ReLU'd)
        void (*bwd_plane)(const float* gy, const float* x, float* gx, Py_ssize_t P, float mu, float s, float sc,
                          float a, float b, float w, float bb, int relu) noexcept nogil  # (g - (xh * b + a)) * sc
    const fnk_table* fnk
    void fcp_pool_planes(const float* full, float* out, int* io, int* scratch, Py_ssize_t planes,
                         Py_ssize_t OH, Py_ssize_t OW)  # 2x2 max pooling with indices (pool2.h)
    void fnk_set_isa(int isa)

cdef inline void _zero(double* a, Py_ssize_t P) noexcept nogil:
    cdef Py_ssize_t e
    for e in range(P):
        a[e] = 0.0


cdef inline void _stats_channel(const float* x, Py_ssize_t c, Py_ssize_t N, Py_ssize_t C,
                                Py_ssize_t P, double* acc, double* mean,
                                double* var) noexcept nogil:
    """Mean and biased variance of channel ``c`` (two passes; the second over cached data).

    x : (N, C, P)  # IN
    acc : P doubles of scratch
    mean, var : the channel's outputs  # OUT
    """
    cdef Py_ssize_t b
    cdef double M = <double>(N * P), mu
    _zero(acc, P)
    for b in range(N):
        fnk.acc_plane(acc, x + (b * C + c) * P, P, C * P)
    mu = _sum8_runs(acc, 1, 0, P) / M
    _zero(acc, P)
    for b in range(N):
        fnk.acc_plane_sqdev(acc, x + (b * C + c) * P, P, mu)
    mean[0] = mu
    var[0] = _sum8_runs(acc, 1, 0, P) / M


cdef inline void _reduce_channel(const float* gy, const float* x, Py_ssize_t c, Py_ssize_t N,
                                 Py_ssize_t C, Py_ssize_t P, float mu, float s, float w, float bb, int relu,
                                 double* acc, double* gsum, double* gdot) noexcept nogil:
    """``sum(g)`` and ``sum(g * xhat)`` of channel ``c``, ``xhat = (x - mu) * s``, ``g`` = ``gy``
    (with ``relu``: masked by the ReLU of ``xhat * w + bb``).

    gy, x : (N, C, P)  # IN
    acc : 2*P doubles of scratch
    gsum, gdot : the channel's outputs  # OUT
    """
    cdef Py_ssize_t b, o
    _zero(acc, 2 * P)
    for b in range(N):
        o = (b * C + c) * P
        fnk.acc_plane_sum_dot(acc, acc + P, gy + o, x + o, P, mu, s, w, bb, relu, C * P)
    gsum[0] = _sum8_runs(acc, 1, 0, P)
    gdot[0] = _sum8_runs(acc + P, 1, 0, P)


# --------------------------------------------------------------------------- kernels

cdef void _stats(const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                 double[::1] mean,              # OUT (C,)
                 double[::1] var,               # OUT (C,)
                 double* acc,                   # scratch (C, H*W)
                 int nt) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2] * x.shape[3], c
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef double* mp = &mean[0]
    cdef double* vp = &var[0]
    for c in prange(C, schedule='static', num_threads=nt):
        _stats_channel(xp, c, N, C, P, acc + c * P, mp + c, vp + c)


cdef inline void _backward_channel(const float* gy, const float* x, Py_ssize_t c, Py_ssize_t N, Py_ssize_t C,
                                   Py_ssize_t P, float mu, float s, float w, float bb, int relu, float sc,
                                   double count, double* acc, double* gsum, double* gdot,
                                   float* gx) noexcept nogil:
    """:func:`_reduce_channel`, then (unless ``gx`` is NULL) the input gradient of channel ``c``
    (its planes again, in cache): ``a = gsum / count``, ``b = gdot / count`` rounded to float32
    (0 if ``count`` is 0).

    gy, x : (N, C, P)  # IN
    gx : (N, C, P) or NULL  # OUT
    """
    cdef Py_ssize_t b, o
    cdef float a = 0.0, bd = 0.0
    _reduce_channel(gy, x, c, N, C, P, mu, s, w, bb, relu, acc, gsum, gdot)
    if gx == NULL:
        return
    if count > 0:
        a = <float>(gsum[0] / count)
        bd = <float>(gdot[0] / count)
    for b in range(N):
        o = (b * C + c) * P
        fnk.bwd_plane(gy + o, x + o, gx + o, P, mu, s, sc, a, bd, w, bb, relu)


cdef void _backward(const float[:, :, :, ::1] gy,    # IN  (N, C, H, W)
                    const float[:, :, :, ::1] x,     # IN  (N, C, H, W) the forward's input
                    const float[::1] mean,           # IN  (C,) the forward's
                    const float[::1] inv_std,        # IN  (C,)
                    const float[::1] weight,         # IN  (C,) with relu: the forward's
                    const float[::1] bias,           # IN  (C,)
                    int relu,                        # IN  gy masked by the ReLU of xhat * weight + bias
                    const float* scale,              # IN  (C,) (with gx)
                    double count,                    # IN  values per channel (training), 0 (eval)
                    double[::1] gsum,                # OUT (C,)
                    double[::1] gdot,                # OUT (C,)
                    float* gx,                       # OUT (N, C, H, W), or NULL: the sums only
                    double* acc,                     # scratch (C, 2, H*W)
                    int nt) noexcept nogil:
    cdef Py_ssize_t N = gy.shape[0], C = gy.shape[1], P = gy.shape[2] * gy.shape[3], c
    cdef const float* gp = &gy[0, 0, 0, 0]
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef double* sp = &gsum[0]
    cdef double* dp = &gdot[0]
    for c in prange(C, schedule='static', num_threads=nt):
        _backward_channel(gp, xp, c, N, C, P, mean[c], inv_std[c], weight[c], bias[c], relu,
                          scale[c] if gx != NULL else 0.0, count, acc + 2 * c * P, sp + c, dp + c, gx)


cdef int _run_backward(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x, const float[::1] mean,
                       const float[::1] inv_std, const float[::1] weight, const float[::1] bias, int relu,
                       const float[::1] scale, double count, double[::1] gsum, double[::1] gdot,
                       float[:, :, :, ::1] gx) except -1:
    """:func:`_backward` with its scratch, after the caller's checks (empty input: zero sums);
    ``scale`` and ``gx`` None: the sums only."""
    if _size4(gy.shape) == 0:
        gsum[:] = 0.0
        gdot[:] = 0.0
        return 0
    cdef const float* sp = NULL
    cdef float* gp = NULL
    if gx is not None:
        sp = &scale[0]
        gp = &gx[0, 0, 0, 0]
    cdef double* acc = <double*>malloc(2 * gy.shape[1] * gy.shape[2] * gy.shape[3] * sizeof(double))
    if acc == NULL:
        raise MemoryError()
    try:
        with nogil:
            _backward(gy, x, mean, inv_std, weight, bias, relu, sp, count, gsum, gdot, gp, acc,
                      _threads_for((2 if gp == NULL else 3) * _size4(gy.shape)))
    finally:
        free(acc)
    return 0


cdef void _forward(const float[:, :, :, ::1] x,   # IN  (N, C, H, W)
                   const float[::1] mean,          # IN  (C,)
                   const float[::1] inv_std,       # IN  (C,)
                   const float[::1] weight,        # IN  (C,)
                   const float[::1] bias,          # IN  (C,)
                   int relu,                       # IN  ReLU on y
                   float[:, :, :, ::1] y,          # OUT (N, C, H, W)
                   int nt) noexcept nogil:
    cdef Py_ssize_t C = x.shape[1], P = x.shape[2] * x.shape[3], NC = x.shape[0] * C, t, c
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef float* yp = &y[0, 0, 0, 0]
    for t in prange(NC, schedule='static', num_threads=nt):
        c = t % C
        fnk.fwd_plane(xp + t * P, yp + t * P, P, mean[c], inv_std[c], weight[c], bias[c], relu)


cdef void _forward_pool(const float[:, :, :, ::1] x,   # IN  (N, C, H, W), H and W >= 2
                        const float[::1] mean,          # IN  (C,)
                        const float[::1] inv_std,       # IN  (C,)
                        const float[::1] weight,        # IN  (C,)
                        const float[::1] bias,          # IN  (C,)
                        int relu,                       # IN  ReLU before pooling
                        float[:, :, :, ::1] y,          # OUT (N, C, H // 2, W // 2)
                        int[:, :, :, ::1] idx,          # OUT (N, C, H // 2, W // 2)
                        float* buf,                     # scratch: one plane per block
                        int nt) noexcept nogil:
    """:func:`_forward` one plane at a time into ``buf`` (in cache), then the pooling kernels'
    2x2 plane of it: blocks of consecutive planes, one per thread."""
    cdef Py_ssize_t C = x.shape[1], W = x.shape[3], P = x.shape[2] * W, NC = x.shape[0] * C
    cdef Py_ssize_t Q = (x.shape[2] // 2) * (W // 2), T = min(<Py_ssize_t>nt, NC), t, i, c
    cdef float* yb
    for t in prange(T, schedule='static', num_threads=nt):
        yb = buf + t * P
        for i in range(_part(t, NC, T), _part(t + 1, NC, T)):
            c = i % C
            fnk.fwd_plane(&x[0, 0, 0, 0] + i * P, yb, P, mean[c], inv_std[c], weight[c], bias[c], relu)
            fcp_pool_planes(yb, &y[0, 0, 0, 0] + i * Q, &idx[0, 0, 0, 0] + i * Q, NULL, 1, x.shape[2], W)


cdef void _apply(const float[:, :, :, ::1] gy,    # IN  (N, C, H, W)
                 const float[:, :, :, ::1] x,     # IN  (N, C, H, W) the forward's input
                 const float[::1] mean,           # IN  (C,) the forward's
                 const float[::1] inv_std,        # IN  (C,)
                 const float[::1] weight,         # IN  (C,) with relu: the forward's
                 const float[::1] bias,           # IN  (C,)
                 int relu,                        # IN  gy masked by the ReLU of xhat * weight + bias
                 const float[::1] scale,          # IN  (C,)
                 const float[::1] a,              # IN  (C,)
                 const float[::1] b,              # IN  (C,)
                 float[:, :, :, ::1] gx,          # OUT (N, C, H, W)
                 int nt) noexcept nogil:
    cdef Py_ssize_t C = gy.shape[1], P = gy.shape[2] * gy.shape[3], NC = gy.shape[0] * C, t, c
    cdef const float* gp = &gy[0, 0, 0, 0]
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef float* op = &gx[0, 0, 0, 0]
    for t in prange(NC, schedule='static', num_threads=nt):
        c = t % C
        fnk.bwd_plane(gp + t * P, xp + t * P, op + t * P, P, mean[c], inv_std[c], scale[c], a[c], b[c],
                      weight[c], bias[c], relu)


# --------------------------------------------------------------------------- Python API

cdef _Key _stats_ok, _fwd_ok, _pool_ok, _reduce_ok, _apply_ok, _bwd_ok


def batchnorm_stats(const float[:, :, :, ::1] x, double[::1] mean, double[::1] var):
    """Per-channel mean and biased variance (see :func:`fastcnn._ref.batchnorm_stats`)."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _Key k = _key()
    if _new(&_stats_ok, &k, x.shape, mean.shape, var.shape):
        _passed(&_stats_ok, &k, _backend.sizes_batchnorm_stats(
            _dims(x.shape, 4), _dims(mean.shape, 1), _dims(var.shape, 1)))
    if _size4(x.shape) == 0:  # M = 0: 0/0 as the reference (C = 0: nothing to write)
        mean[:] = float("nan")
        var[:] = float("nan")
        return
    cdef double* acc = <double*>malloc(x.shape[1] * x.shape[2] * x.shape[3] * sizeof(double))
    if acc == NULL:
        raise MemoryError()
    try:
        with nogil:
            _stats(x, mean, var, acc, _threads_for(2 * _size4(x.shape)))
    finally:
        free(acc)


def batchnorm_forward(const float[:, :, :, ::1] x, const float[::1] mean,
                      const float[::1] inv_std, const float[::1] weight, const float[::1] bias,
                      int relu, float[:, :, :, ::1] y):
    """Normalise, scale and shift per channel, optionally the ReLU (see
    :func:`fastcnn._ref.batchnorm_forward`)."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _Key k = _key()
    if _new(&_fwd_ok, &k, x.shape, mean.shape, inv_std.shape, weight.shape, bias.shape, y.shape):
        _passed(&_fwd_ok, &k, _backend.sizes_batchnorm_forward(
            _dims(x.shape, 4), _dims(mean.shape, 1), _dims(inv_std.shape, 1),
            _dims(weight.shape, 1), _dims(bias.shape, 1), _dims(y.shape, 4)))
    if _size4(x.shape) == 0:
        return
    with nogil:
        _forward(x, mean, inv_std, weight, bias, relu, y, _threads_for(_size4(x.shape)))


def batchnorm_forward_maxpool2(const float[:, :, :, ::1] x, const float[::1] mean,
                               const float[::1] inv_std, const float[::1] weight, const float[::1] bias,
                               int relu, float[:, :, :, ::1] y, int[:, :, :, ::1] idx):
    """The forward, the ReLU and 2x2 max pooling, one plane at a time
    (see :func:`fastcnn._ref.batchnorm_forward_maxpool2`)."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _Key k = _key(relu)
    if _new(&_pool_ok, &k, x.shape, mean.shape, inv_std.shape, weight.shape, bias.shape, y.shape, idx.shape):
        _passed(&_pool_ok, &k, _backend.sizes_batchnorm_forward_maxpool2(
            _dims(x.shape, 4), _dims(mean.shape, 1), _dims(inv_std.shape, 1),
            _dims(weight.shape, 1), _dims(bias.shape, 1), relu, _dims(y.shape, 4), _dims(idx.shape, 4)))
    if _size4(x.shape) == 0:
        return
    cdef int nt = _threads_for(_size4(x.shape))
    cdef float* buf = <float*>malloc(nt * x.shape[2] * x.shape[3] * sizeof(float))
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            _forward_pool(x, mean, inv_std, weight, bias, relu, y, idx, buf, nt)
    finally:
        free(buf)


def batchnorm_backward_reduce(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                              const float[::1] mean, const float[::1] inv_std,
                              const float[::1] weight, const float[::1] bias, int relu,
                              double[::1] gsum, double[::1] gdot):
    """Per-channel ``sum(g)`` and ``sum(g * xhat)`` in double, ``g`` = ``gy`` (masked by the
    forward's ReLU with ``relu``; see :func:`fastcnn._ref.batchnorm_backward_reduce`)."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _Key k = _key(mean.shape[0], inv_std.shape[0])
    if _new(&_reduce_ok, &k, gy.shape, x.shape, weight.shape, bias.shape, gsum.shape, gdot.shape):
        _passed(&_reduce_ok, &k, _backend.sizes_batchnorm_backward_reduce(
            _dims(gy.shape, 4), _dims(x.shape, 4), _dims(mean.shape, 1), _dims(inv_std.shape, 1),
            _dims(weight.shape, 1), _dims(bias.shape, 1), _dims(gsum.shape, 1), _dims(gdot.shape, 1)))
    _run_backward(gy, x, mean, inv_std, weight, bias, relu, None, 0.0, gsum, gdot, None)


def batchnorm_backward_apply(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                             const float[::1] mean, const float[::1] inv_std,
                             const float[::1] weight, const float[::1] bias, int relu,
                             const float[::1] scale, const float[::1] a, const float[::1] b,
                             float[:, :, :, ::1] gx):
    """``gx = (g - (xhat * b + a)) * scale`` per channel, ``g`` as in
    :func:`batchnorm_backward_reduce` (see :func:`fastcnn._ref.batchnorm_backward_apply`)."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _Key k = _key(mean.shape[0], inv_std.shape[0], weight.shape[0], bias.shape[0])
    if _new(&_apply_ok, &k, gy.shape, x.shape, scale.shape, a.shape, b.shape, gx.shape):
        _passed(&_apply_ok, &k, _backend.sizes_batchnorm_backward_apply(
            _dims(gy.shape, 4), _dims(x.shape, 4), _dims(mean.shape, 1), _dims(inv_std.shape, 1),
            _dims(weight.shape, 1), _dims(bias.shape, 1), _dims(scale.shape, 1), _dims(a.shape, 1),
            _dims(b.shape, 1), _dims(gx.shape, 4)))
    if _size4(gy.shape) == 0:
        return
    with nogil:
        _apply(gy, x, mean, inv_std, weight, bias, relu, scale, a, b, gx, _threads_for(_size4(gy.shape)))


def batchnorm_backward(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                       const float[::1] mean, const float[::1] inv_std,
                       const float[::1] weight, const float[::1] bias, int relu,
                       const float[::1] scale, double count, double[::1] gsum, double[::1] gdot,
                       float[:, :, :, ::1] gx):
    """:func:`batchnorm_backward_reduce` and :func:`batchnorm_backward_apply` one channel at a
    time (see :func:`fastcnn._ref.batchnorm_backward`)."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _Key k = _key(mean.shape[0], inv_std.shape[0], weight.shape[0], bias.shape[0])
    if _new(&_bwd_ok, &k, gy.shape, x.shape, scale.shape, gsum.shape, gdot.shape, gx.shape):
        _passed(&_bwd_ok, &k, _backend.sizes_batchnorm_backward(
            _dims(gy.shape, 4), _dims(x.shape, 4), _dims(mean.shape, 1), _dims(inv_std.shape, 1),
            _dims(weight.shape, 1), _dims(bias.shape, 1), _dims(scale.shape, 1), _dims(gsum.shape, 1),
            _dims(gdot.shape, 1), _dims(gx.shape, 4)))
    _run_backward(gy, x, mean, inv_std, weight, bias, relu, scale, count, gsum, gdot, gx)
