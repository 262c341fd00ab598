# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Dense-layer kernels of the Cython backend: blocks of a GEMM in one thread pool.

Each ``prange`` iteration multiplies one block with SciPy's single-threaded SGEMM (loaded with
one thread by ``fastcnn._threads.init_gemm_blas``).  Blocks are of output features (``y``,
``gw``) or input features (``gx``), so each thread packs only its part of the weights; their
bounds depend on the shapes and ``nblocks`` only (the same bytes at any thread count).  Row-major products are computed as their
column-major transposes: C = A @ B is C^T = B^T @ A^T.  Contracts: :mod:`fastcnn._ref`.
"""
from cython.parallel cimport prange
from scipy.linalg.cython_blas cimport sgemm

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
    cdef int n = <int>N, k = <int>K, ldc = <int>M, cnt
    cdef float one = 1.0, zero = 0.0
    # One iteration per block of output features: y[:, o0:o1] = x @ w[o0:o1]^T, as
    # y^T[o0:o1] (cnt x N, col-major with leading dimension OUT) = w[o0:o1] @ x^T.
    for t in prange(nblocks, schedule='static', num_threads=nt):
        o0 = t * M // nblocks
        o1 = (t + 1) * M // nblocks
        if o1 > o0:
            cnt = <int>(o1 - o0)
            sgemm("T", "N", &cnt, &n, &k, &one, <float*>(wp + o0 * K), &k, <float*>xp, &k,
                  &zero, yp + o0, &ldc)
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
    cdef int n = <int>N, k = <int>K, m = <int>M, cnt
    cdef float one = 1.0, zero = 0.0
    for t in prange(nblocks, schedule='static', num_threads=nt):
        o0 = t * M // nblocks
        o1 = (t + 1) * M // nblocks
        if o1 > o0:
            # gyt[o0:o1] = gy[:, o0:o1]^T and the bias sums (float64, in row order)
            for o in range(o0, o1):
                s = 0.0
                for i in range(N):
                    v = gp[i * M + o]
                    tp[o * N + i] = v
                    s = s + v
                gb[o] = <float>s
            # gw[o0:o1] (cnt x IN) = gyt[o0:o1] @ x, as gw^T (IN x cnt) = x^T @ gyt^T
            cnt = <int>(o1 - o0)
            sgemm("N", "N", &k, &cnt, &n, &one, <float*>xp, &k, tp + o0 * N, &n, &zero,
                  gwp + o0 * K, &k)
        i0 = t * K // nblocks
        i1 = (t + 1) * K // nblocks
        if input_grad and i1 > i0:
            # gx[:, i0:i1] = gy @ w[:, i0:i1], as gx^T[i0:i1] (cnt x N, leading dimension IN)
            # = w[:, i0:i1]^T @ gy^T
            cnt = <int>(i1 - i0)
            sgemm("N", "N", &cnt, &n, &m, &one, <float*>(wp + i0), &k, <float*>gp, &m, &zero,
                  gxp + i0, &k)


def linear_forward(const float[:, ::1] x, const float[:, ::1] w, const float[::1] bias,
                   Py_ssize_t nblocks, float[:, ::1] y):
    """``y = x @ w.T + bias`` by blocks of output features (see :func:`fastcnn._ref.linear_forward`)."""
    _check(w.shape[1] == x.shape[1] and bias.shape[0] == w.shape[0] and y.shape[0] == x.shape[0]
           and y.shape[1] == w.shape[0] and nblocks >= 1, "linear_forward: shapes do not match")
    _check(x.shape[0] >= 1 and x.shape[1] >= 1 and w.shape[0] >= 1, "linear_forward: empty dimension")
    cdef int nt = _threads_for(x.shape[0] * x.shape[1])
    with nogil:
        _linear_fwd(x, w, bias, nblocks, y, nt)


def linear_backward(const float[:, ::1] gy, const float[:, ::1] x, const float[:, ::1] w,
                    bint input_grad, Py_ssize_t nblocks, float[:, ::1] gyt, float[:, ::1] gw,
                    float[::1] gb, float[:, ::1] gx):
    """Gradients by blocks of output and input features (see :func:`fastcnn._ref.linear_backward`)."""
    _check(gy.shape[0] == x.shape[0] and gy.shape[1] == w.shape[0] and w.shape[1] == x.shape[1]
           and gyt.shape[0] == w.shape[0] and gyt.shape[1] == x.shape[0]
           and gw.shape[0] == w.shape[0] and gw.shape[1] == w.shape[1] and gb.shape[0] == w.shape[0]
           and nblocks >= 1, "linear_backward: shapes do not match")
    if input_grad:
        _check(gx.shape[0] == x.shape[0] and gx.shape[1] == x.shape[1],
               "linear_backward: gx has the wrong shape")
    _check(x.shape[0] >= 1 and x.shape[1] >= 1 and w.shape[0] >= 1,
           "linear_backward: empty dimension")
    cdef int nt = _threads_for(gy.shape[0] * gy.shape[1] + x.shape[0] * x.shape[1])
    with nogil:
        _linear_bwd(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx, nt)
