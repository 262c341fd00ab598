# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Dense-layer kernels of the Cython backend: blocks of a GEMM in one thread pool.

Each ``prange`` iteration multiplies one block with SciPy's single-threaded SGEMM
(:func:`_gemm`; one thread pool, docs/PERFORMANCE.md, 1).  Blocks are of output features
(``y``, ``gw``) or input features (``gx``), so each thread packs only its part of the weights;
their bounds depend on the shapes and ``nblocks`` only (the same bytes at any thread count).
Contracts: :mod:`fastcnn._ref`.
"""
from cython.parallel cimport prange

include "_common.pxi"


cdef void _linear_fwd(const float[:, ::1] x,       # IN  (N, IN)
                      const float[:, ::1] w,       # IN  (OUT, IN)
                      const float[::1] bias,       # IN  (OUT,)
                      Py_ssize_t nblocks,
                      float[:, ::1] y,             # OUT (N, OUT)
                      int nt) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[0]
    cdef const float* xp = &x[0, 0]
    cdef const float* wp = &w[0, 0]
    cdef float* yp = &y[0, 0]
    cdef Py_ssize_t t, o0, o1, i, o
    for t in prange(nblocks, schedule='static', num_threads=nt):
        o0 = _part(t, M, nblocks)
        o1 = _part(t + 1, M, nblocks)
        if o1 > o0:  # y[:, o0:o1] = x @ w[o0:o1]^T + bias[o0:o1]
            _gemm(False, True, N, o1 - o0, K, xp, K, wp + o0 * K, K, 0.0, yp + o0, M)
            for i in range(N):
                for o in range(o0, o1):
                    yp[i * M + o] = yp[i * M + o] + bias[o]


cdef void _linear_bwd(const float[:, ::1] gy,      # IN  (N, OUT)
                      const float[:, ::1] x,       # IN  (N, IN)
                      const float[:, ::1] w,       # IN  (OUT, IN)
                      bint input_grad, Py_ssize_t nblocks,
                      float[:, ::1] gyt,           # scratch (OUT, N)
                      float[:, ::1] gw,            # OUT (OUT, IN)
                      float[::1] gb,               # OUT (OUT,)
                      float[:, ::1] gx,            # OUT (N, IN) if input_grad
                      int nt) noexcept nogil:
    cdef Py_ssize_t N = gy.shape[0], M = gy.shape[1], K = x.shape[1]
    cdef const float* gp = &gy[0, 0]
    cdef const float* xp = &x[0, 0]
    cdef const float* wp = &w[0, 0]
    cdef float* tp = &gyt[0, 0]
    cdef float* gwp = &gw[0, 0]
    cdef float* gxp = &gx[0, 0]
    cdef Py_ssize_t t, o0, o1, o, i, i0, i1
    cdef double s
    cdef float v
    for t in prange(nblocks, schedule='static', num_threads=nt):
        o0 = _part(t, M, nblocks)
        o1 = _part(t + 1, M, nblocks)
        if o1 > o0:
            # gyt[o0:o1] = gy[:, o0:o1]^T and the bias sums (float64, in row order)
            for o in range(o0, o1):
                s = 0.0
                for i in range(N):
                    v = gp[i * M + o]
                    tp[o * N + i] = v
                    s = s + v
                gb[o] = <float>s
            _gemm(False, False, o1 - o0, K, N, tp + o0 * N, N, xp, K, 0.0, gwp + o0 * K, K)
        i0 = _part(t, K, nblocks)
        i1 = _part(t + 1, K, nblocks)
        if input_grad and i1 > i0:  # gx[:, i0:i1] = gy @ w[:, i0:i1]
            _gemm(False, False, N, i1 - i0, M, gp, M, wp + i0, K, 0.0, gxp + i0, K)


cdef _Key _fwd_ok, _bwd_ok


def linear_forward(const float[:, ::1] x, const float[:, ::1] w, const float[::1] bias,
                   Py_ssize_t nblocks, float[:, ::1] y):
    """``y = x @ w.T + bias`` by blocks of output features (see :func:`fastcnn._ref.linear_forward`)."""
    cdef _Key k = _key(nblocks)
    if _new(&_fwd_ok, &k, x.shape, w.shape, bias.shape, y.shape):
        _passed(&_fwd_ok, &k, _backend.sizes_linear_forward(
            _dims(x.shape, 2), _dims(w.shape, 2), _dims(bias.shape, 1), nblocks, _dims(y.shape, 2)))
    cdef int nt = _threads_for(x.shape[0] * x.shape[1])
    with nogil:
        _linear_fwd(x, w, bias, nblocks, y, nt)


def linear_backward(const float[:, ::1] gy, const float[:, ::1] x, const float[:, ::1] w,
                    bint input_grad, Py_ssize_t nblocks, float[:, ::1] gyt, float[:, ::1] gw,
                    float[::1] gb, float[:, ::1] gx):
    """Gradients by blocks of output and input features (see :func:`fastcnn._ref.linear_backward`)."""
    cdef _Key k = _key(input_grad, nblocks)
    if _new(&_bwd_ok, &k, gy.shape, x.shape, w.shape, gyt.shape, gw.shape, gb.shape, gx.shape):
        _passed(&_bwd_ok, &k, _backend.sizes_linear_backward(
            _dims(gy.shape, 2), _dims(x.shape, 2), _dims(w.shape, 2), input_grad, nblocks,
            _dims(gyt.shape, 2), _dims(gw.shape, 2), _dims(gb.shape, 1), _dims(gx.shape, 2)))
    cdef int nt = _threads_for(gy.shape[0] * gy.shape[1] + x.shape[0] * x.shape[1])
    with nogil:
        _linear_bwd(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx, nt)
