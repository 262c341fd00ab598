# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""BatchNorm2D kernels of the Cython backend (contract: :mod:`fastcnn._ref`).

The gradient sums run one channel per parallel iteration and accumulate in double in a fixed
order: the channel's N planes are added element-wise, in order of n, into one double row of H*W
partial sums (a loop the compiler vectorises without reassociating anything), and that row is
summed by ``_sum8_runs`` (8 interleaved partial sums).  The batch statistics are summed per
plane, then per channel in order of n (``planestats.h``; the convolutions' fused statistics
sum the same way).  So results are bit-identical for any thread count (and equal to the Numba
backend's, same order).  The element-wise
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
        void (*acc_plane_sum_dot)(double* accs, double* accd, const float* g, const float* x, Py_ssize_t P,
                                  float mu, float s, float w, float b, int relu,
                                  Py_ssize_t D) noexcept nogil  # += g, g * xh; g masked if relu
        void (*fwd_plane)(const float* x, const float* r, float* y, Py_ssize_t P, float mu, float s, float w,
                          float b, int relu) noexcept nogil  # y = xh * w + b (+ r unless NULL; ReLU'd)
        void (*bwd_plane)(const float* gy, const float* x, float* gx, Py_ssize_t P, float mu, float s, float sc,
                          float a, float b, float w, float bb, int relu) noexcept nogil  # (g - (xh * b + a)) * sc
    const fnk_table* fnk
    void fcp_pool_planes(const float* full, float* out, int* io, int* scratch, Py_ssize_t planes,
                         Py_ssize_t OH, Py_ssize_t OW)  # 2x2 max pooling with indices (pool2.h)
    void fnk_set_isa(int isa)

cdef extern from "planestats.h" nogil:
    void fps_plane_stats(const float* x, Py_ssize_t P, double* sd)  # sd = sum(x), sum((x - mean)**2)
    void fps_combine(const double* sd, Py_ssize_t N, Py_ssize_t C, Py_ssize_t P, double* mean, double* var)

cdef inline void _zero(double* a, Py_ssize_t P) noexcept nogil:
    cdef Py_ssize_t e
    for e in range(P):
        a[e] = 0.0


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
# (arrays as checked by _arr; ``_f(a)``: a float32 array's data)

cdef inline float* _f(const _A* a) noexcept nogil:
    return <float*>a.p


cdef void _stats(const _A* x,      # IN  (N, C, H, W)
                 const _A* mean,   # OUT (C,) float64
                 const _A* var,    # OUT (C,) float64
                 double* sd,       # scratch (N, C, 2)
                 int nt) noexcept nogil:
    """Each plane's sums (``fps_plane_stats``, the planes in memory order), then each channel's
    combined in order of n (``fps_combine``)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], P = x.shape[2] * x.shape[3], e
    cdef const float* xp = _f(x)
    for e in prange(N * C, schedule='static', num_threads=nt):
        fps_plane_stats(xp + e * P, P, sd + 2 * e)
    fps_combine(sd, N, C, P, <double*>mean.p, <double*>var.p)


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


cdef void _backward(const _A* gy,      # IN  (N, C, H, W)
                    const _A* x,       # IN  (N, C, H, W) the forward's input
                    const _A* mean,    # IN  (C,) the forward's
                    const _A* inv_std, # IN  (C,)
                    const _A* weight,  # IN  (C,) with relu: the forward's
                    const _A* bias,    # IN  (C,)
                    int relu,          # IN  gy masked by the ReLU of xhat * weight + bias
                    const float* scale,  # IN  (C,) (with gx)
                    double count,      # IN  values per channel (training), 0 (eval)
                    const _A* gsum,    # OUT (C,) float64
                    const _A* gdot,    # OUT (C,) float64
                    float* gx,         # OUT (N, C, H, W), or NULL: the sums only
                    double* acc,       # scratch (C, 2, H*W)
                    int nt) noexcept nogil:
    cdef Py_ssize_t N = gy.shape[0], C = gy.shape[1], P = gy.shape[2] * gy.shape[3], c
    cdef const float* gp = _f(gy)
    cdef const float* xp = _f(x)
    cdef const float* mu = _f(mean)
    cdef const float* s = _f(inv_std)
    cdef const float* w = _f(weight)
    cdef const float* bb = _f(bias)
    cdef double* sp = <double*>gsum.p
    cdef double* dp = <double*>gdot.p
    for c in prange(C, schedule='static', num_threads=nt):
        _backward_channel(gp, xp, c, N, C, P, mu[c], s[c], w[c], bb[c], relu,
                          scale[c] if gx != NULL else 0.0, count, acc + 2 * c * P, sp + c, dp + c, gx)


cdef int _run_backward(const _A* gy, const _A* x, const _A* mean, const _A* inv_std, const _A* weight,
                       const _A* bias, int relu, const _A* scale, double count, const _A* gsum, const _A* gdot,
                       const _A* gx) except -1:
    """:func:`_backward` with its scratch, after the caller's checks (empty input: zero sums);
    ``scale`` and ``gx`` NULL: the sums only."""
    if _size4(gy.shape) == 0:
        memset(gsum.p, 0, gsum.shape[0] * sizeof(double))
        memset(gdot.p, 0, gdot.shape[0] * sizeof(double))
        return 0
    cdef const float* sp = NULL
    cdef float* gp = NULL
    if gx != NULL:
        sp = _f(scale)
        gp = _f(gx)
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


cdef void _forward(const _A* x,       # IN  (N, C, H, W)
                   const _A* mean,    # IN  (C,)
                   const _A* inv_std, # IN  (C,)
                   const _A* weight,  # IN  (C,)
                   const _A* bias,    # IN  (C,)
                   int relu,          # IN  ReLU on y
                   const float* res,  # IN  (N, C, H, W) added before the ReLU, or NULL
                   const _A* y,       # OUT (N, C, H, W)
                   int nt) noexcept nogil:
    cdef Py_ssize_t C = x.shape[1], P = x.shape[2] * x.shape[3], NC = x.shape[0] * C, t, c
    cdef const float* xp = _f(x)
    cdef float* yp = _f(y)
    for t in prange(NC, schedule='static', num_threads=nt):
        c = t % C
        fnk.fwd_plane(xp + t * P, res + t * P if res != NULL else NULL, yp + t * P, P, _f(mean)[c], _f(inv_std)[c],
                      _f(weight)[c], _f(bias)[c], relu)


cdef void _forward_pool(const _A* x,       # IN  (N, C, H, W), H and W >= 2
                        const _A* mean,    # IN  (C,)
                        const _A* inv_std, # IN  (C,)
                        const _A* weight,  # IN  (C,)
                        const _A* bias,    # IN  (C,)
                        int relu,          # IN  ReLU before pooling
                        const _A* y,       # OUT (N, C, H // 2, W // 2)
                        const _A* idx,     # OUT (N, C, H // 2, W // 2) int32
                        float* buf,        # scratch: one plane per block
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
            fnk.fwd_plane(_f(x) + i * P, NULL, yb, P, _f(mean)[c], _f(inv_std)[c], _f(weight)[c], _f(bias)[c], relu)
            fcp_pool_planes(yb, _f(y) + i * Q, <int*>idx.p + i * Q, NULL, 1, x.shape[2], W)


cdef void _apply(const _A* gy,      # IN  (N, C, H, W)
                 const _A* x,       # IN  (N, C, H, W) the forward's input
                 const _A* mean,    # IN  (C,) the forward's
                 const _A* inv_std, # IN  (C,)
                 const _A* weight,  # IN  (C,) with relu: the forward's
                 const _A* bias,    # IN  (C,)
                 int relu,          # IN  gy masked by the ReLU of xhat * weight + bias
                 const _A* scale,   # IN  (C,)
                 const _A* a,       # IN  (C,)
                 const _A* b,       # IN  (C,)
                 const _A* gx,      # OUT (N, C, H, W)
                 int nt) noexcept nogil:
    cdef Py_ssize_t C = gy.shape[1], P = gy.shape[2] * gy.shape[3], NC = gy.shape[0] * C, t, c
    cdef const float* gp = _f(gy)
    cdef const float* xp = _f(x)
    cdef float* op = _f(gx)
    for t in prange(NC, schedule='static', num_threads=nt):
        c = t % C
        fnk.bwd_plane(gp + t * P, xp + t * P, op + t * P, P, _f(mean)[c], _f(inv_std)[c], _f(scale)[c], _f(a)[c],
                      _f(b)[c], _f(weight)[c], _f(bias)[c], relu)


# --------------------------------------------------------------------------- Python API

cdef _Key _stats_ok, _fwd_ok, _pool_ok, _reduce_ok, _apply_ok, _bwd_ok


cdef inline int _params(mean, inv_std, weight, bias, _A* m, _A* s, _A* w, _A* b) except -1:
    """The four (C,) float32 parameter arrays of a batch-norm primitive, checked."""
    _arr(mean, cnp.NPY_FLOAT32, 1, False, "mean", m)
    _arr(inv_std, cnp.NPY_FLOAT32, 1, False, "inv_std", s)
    _arr(weight, cnp.NPY_FLOAT32, 1, False, "weight", w)
    _arr(bias, cnp.NPY_FLOAT32, 1, False, "bias", b)
    return 0


cdef inline int _grad_arrays(gy, x, mean, inv_std, weight, bias, _A* g, _A* a, _A* m, _A* s, _A* w,
                             _A* b) except -1:
    """The checked inputs of a batch-norm gradient: gy and x (N, C, H, W) float32, and the
    forward's parameters (:func:`_params`)."""
    _arr(gy, cnp.NPY_FLOAT32, 4, False, "gy", g)
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", a)
    _params(mean, inv_std, weight, bias, m, s, w, b)
    return 0


def batchnorm_stats(x, mean, var):
    """Per-channel mean and biased variance (see :func:`fastcnn._ref.batchnorm_stats`); x
    (N, C, H, W) float32, mean and var (C,) float64."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _A a, m, v
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", &a)
    _arr(mean, cnp.NPY_FLOAT64, 1, True, "mean", &m)
    _arr(var, cnp.NPY_FLOAT64, 1, True, "var", &v)
    cdef _Key k = _key()
    if _new(&_stats_ok, &k, a.shape, m.shape, v.shape):
        _passed(&_stats_ok, &k, _backend.sizes_batchnorm_stats(
            _dims(a.shape, 4), _dims(m.shape, 1), _dims(v.shape, 1)))
    cdef Py_ssize_t c
    if _size4(a.shape) == 0:  # M = 0: 0/0 as the reference (C = 0: nothing to write)
        for c in range(m.shape[0]):
            (<double*>m.p)[c] = float("nan")
            (<double*>v.p)[c] = float("nan")
        return
    cdef double* sd = <double*>malloc(a.shape[0] * a.shape[1] * 2 * sizeof(double))
    if sd == NULL:
        raise MemoryError()
    try:
        with nogil:
            _stats(&a, &m, &v, sd, _threads_for(2 * _size4(a.shape)))
    finally:
        free(sd)


def batchnorm_forward(x, mean, inv_std, weight, bias, int relu, y, res=None):
    """Normalise, scale and shift per channel, optionally add ``res`` and apply the ReLU (see
    :func:`fastcnn._ref.batchnorm_forward`); x, y and res (N, C, H, W), the rest (C,) float32."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _A a, m, s, w, b, o, r
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", &a)
    _params(mean, inv_std, weight, bias, &m, &s, &w, &b)
    _arr(y, cnp.NPY_FLOAT32, 4, True, "y", &o)
    cdef Py_ssize_t* rs = a.shape  # (the key's last shape: res's, or x's again)
    if res is not None:
        _arr(res, cnp.NPY_FLOAT32, 4, False, "res", &r)
        rs = r.shape
    cdef _Key k = _key(res is not None)
    if _new(&_fwd_ok, &k, a.shape, m.shape, s.shape, w.shape, b.shape, o.shape, rs):
        _passed(&_fwd_ok, &k, _backend.sizes_batchnorm_forward(
            _dims(a.shape, 4), _dims(m.shape, 1), _dims(s.shape, 1),
            _dims(w.shape, 1), _dims(b.shape, 1), _dims(o.shape, 4), None if res is None else _dims(r.shape, 4)))
    if _size4(a.shape) == 0:
        return
    cdef const float* rp = NULL
    if res is not None:
        rp = <const float*>r.p
    with nogil:
        _forward(&a, &m, &s, &w, &b, relu, rp, &o, _threads_for(_size4(a.shape)))


def batchnorm_forward_maxpool2(x, mean, inv_std, weight, bias, int relu, y, idx):
    """The forward, the ReLU and 2x2 max pooling, one plane at a time
    (see :func:`fastcnn._ref.batchnorm_forward_maxpool2`); y (N, C, H // 2, W // 2) float32 and
    idx int32 the same shape, the rest as :func:`batchnorm_forward`'s."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _A a, m, s, w, b, o, i
    _arr(x, cnp.NPY_FLOAT32, 4, False, "x", &a)
    _params(mean, inv_std, weight, bias, &m, &s, &w, &b)
    _arr(y, cnp.NPY_FLOAT32, 4, True, "y", &o)
    _arr(idx, cnp.NPY_INT32, 4, True, "idx", &i)
    cdef _Key k = _key(relu)
    if _new(&_pool_ok, &k, a.shape, m.shape, s.shape, w.shape, b.shape, o.shape, i.shape):
        _passed(&_pool_ok, &k, _backend.sizes_batchnorm_forward_maxpool2(
            _dims(a.shape, 4), _dims(m.shape, 1), _dims(s.shape, 1),
            _dims(w.shape, 1), _dims(b.shape, 1), relu, _dims(o.shape, 4), _dims(i.shape, 4)))
    if _size4(a.shape) == 0:
        return
    cdef int nt = _threads_for(_size4(a.shape))
    cdef float* buf = <float*>malloc(nt * a.shape[2] * a.shape[3] * sizeof(float))
    if buf == NULL:
        raise MemoryError()
    try:
        with nogil:
            _forward_pool(&a, &m, &s, &w, &b, relu, &o, &i, buf, nt)
    finally:
        free(buf)


def batchnorm_backward_reduce(gy, x, mean, inv_std, weight, bias, int relu, gsum, gdot):
    """Per-channel ``sum(g)`` and ``sum(g * xhat)`` in double, ``g`` = ``gy`` (masked by the
    forward's ReLU with ``relu``; see :func:`fastcnn._ref.batchnorm_backward_reduce`); gy and
    x (N, C, H, W), the parameters (C,) float32; gsum and gdot (C,) float64."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _A g_, a, m, s, w, b, gs, gd
    _grad_arrays(gy, x, mean, inv_std, weight, bias, &g_, &a, &m, &s, &w, &b)
    _arr(gsum, cnp.NPY_FLOAT64, 1, True, "gsum", &gs)
    _arr(gdot, cnp.NPY_FLOAT64, 1, True, "gdot", &gd)
    cdef _Key k = _key(m.shape[0], s.shape[0])
    if _new(&_reduce_ok, &k, g_.shape, a.shape, w.shape, b.shape, gs.shape, gd.shape):
        _passed(&_reduce_ok, &k, _backend.sizes_batchnorm_backward_reduce(
            _dims(g_.shape, 4), _dims(a.shape, 4), _dims(m.shape, 1), _dims(s.shape, 1),
            _dims(w.shape, 1), _dims(b.shape, 1), _dims(gs.shape, 1), _dims(gd.shape, 1)))
    _run_backward(&g_, &a, &m, &s, &w, &b, relu, NULL, 0.0, &gs, &gd, NULL)


def batchnorm_backward_apply(gy, x, mean, inv_std, weight, bias, int relu, scale, a, b, gx):
    """``gx = (g - (xhat * b + a)) * scale`` per channel, ``g`` as in
    :func:`batchnorm_backward_reduce` (see :func:`fastcnn._ref.batchnorm_backward_apply`);
    scale, a and b (C,), gx (N, C, H, W) float32."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _A g_, x_, m, s, w, bb, sc, a_, b_, d
    _grad_arrays(gy, x, mean, inv_std, weight, bias, &g_, &x_, &m, &s, &w, &bb)
    _arr(scale, cnp.NPY_FLOAT32, 1, False, "scale", &sc)
    _arr(a, cnp.NPY_FLOAT32, 1, False, "a", &a_)
    _arr(b, cnp.NPY_FLOAT32, 1, False, "b", &b_)
    _arr(gx, cnp.NPY_FLOAT32, 4, True, "gx", &d)
    cdef _Key k = _key(m.shape[0], s.shape[0], w.shape[0], bb.shape[0])
    if _new(&_apply_ok, &k, g_.shape, x_.shape, sc.shape, a_.shape, b_.shape, d.shape):
        _passed(&_apply_ok, &k, _backend.sizes_batchnorm_backward_apply(
            _dims(g_.shape, 4), _dims(x_.shape, 4), _dims(m.shape, 1), _dims(s.shape, 1),
            _dims(w.shape, 1), _dims(bb.shape, 1), _dims(sc.shape, 1), _dims(a_.shape, 1),
            _dims(b_.shape, 1), _dims(d.shape, 4)))
    if _size4(g_.shape) == 0:
        return
    with nogil:
        _apply(&g_, &x_, &m, &s, &w, &bb, relu, &sc, &a_, &b_, &d, _threads_for(_size4(g_.shape)))


def batchnorm_backward(gy, x, mean, inv_std, weight, bias, int relu, scale, double count, gsum, gdot, gx):
    """:func:`batchnorm_backward_reduce` and :func:`batchnorm_backward_apply` one channel at a
    time (see :func:`fastcnn._ref.batchnorm_backward`)."""
    if not _isa_set:
        _use_isa(fnk_set_isa)
    cdef _A g_, a, m, s, w, b, sc, gs, gd, d
    _grad_arrays(gy, x, mean, inv_std, weight, bias, &g_, &a, &m, &s, &w, &b)
    _arr(scale, cnp.NPY_FLOAT32, 1, False, "scale", &sc)
    _arr(gsum, cnp.NPY_FLOAT64, 1, True, "gsum", &gs)
    _arr(gdot, cnp.NPY_FLOAT64, 1, True, "gdot", &gd)
    _arr(gx, cnp.NPY_FLOAT32, 4, True, "gx", &d)
    cdef _Key k = _key(m.shape[0], s.shape[0], w.shape[0], b.shape[0])
    if _new(&_bwd_ok, &k, g_.shape, a.shape, sc.shape, gs.shape, gd.shape, d.shape):
        _passed(&_bwd_ok, &k, _backend.sizes_batchnorm_backward(
            _dims(g_.shape, 4), _dims(a.shape, 4), _dims(m.shape, 1), _dims(s.shape, 1),
            _dims(w.shape, 1), _dims(b.shape, 1), _dims(sc.shape, 1), _dims(gs.shape, 1),
            _dims(gd.shape, 1), _dims(d.shape, 4)))
    _run_backward(&g_, &a, &m, &s, &w, &b, relu, &sc, count, &gs, &gd, &d)
