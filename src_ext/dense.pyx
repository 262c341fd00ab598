# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Dense-layer kernels of the Cython backend: blocks of a GEMM in one thread pool.

Each ``prange`` iteration multiplies one block: with the register-tiled SGEMM of the
AVX-512/AVX2 paths (``gemm.h``), or on the baseline path with SciPy's single-threaded SGEMM
(:func:`_gemm`; docs/PERFORMANCE.md, section 3).  Blocks are of output features (``y``,
``gw``) or input features (``gx``); their bounds depend on the shapes and ``nblocks`` only (the
same bytes at any thread count).  Contracts: :mod:`fastcnn._ref`.
"""
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

include "_common.pxi"

from fastcnn import _config

cdef extern from "gemm.h" nogil:
    ctypedef void (*fcg_gemm_fn)(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                 const float* a, Py_ssize_t ars, Py_ssize_t aps,  # IN
                                 const float* b, Py_ssize_t ldb, Py_ssize_t bts,  # IN
                                 float* c, Py_ssize_t ldc,  # OUT
                                 int nt) noexcept nogil  # IN  1: c stored past the caches (one block of k)
    ctypedef void (*fcg_transpose_fn)(const float* s, Py_ssize_t lds, Py_ssize_t rows,  # IN
                                      Py_ssize_t cols, const float* add,  # IN (rows,) or NULL
                                      float* d, Py_ssize_t ldd) noexcept nogil  # OUT
    fcg_gemm_fn fcg_gemm  # NULL on the baseline path
    fcg_transpose_fn fcg_transpose
    Py_ssize_t fcg_W      # column-tile width of fcg_gemm
    void fcg_set_isa(int isa) noexcept


cdef void _linear_fwd_tiled(const float[:, ::1] x,       # IN  (N, IN)
                            const float[:, ::1] w,       # IN  (OUT, IN)
                            const float[::1] bias,       # IN  (OUT,)
                            Py_ssize_t nblocks,
                            float* xt,                   # scratch: x^T in column tiles of fcg_W
                            float* yt,                   # scratch (OUT, N): y^T
                            float[:, ::1] y,             # OUT (N, OUT)
                            int nt) noexcept nogil:
    """``y^T = w @ x^T`` by fcg_gemm: w's rows are the broadcast operand, x^T (packed first,
    tile by tile) the vector operand; then ``y = (y^T)^T + bias``."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[0], W = fcg_W
    cdef Py_ssize_t NT = (N + W - 1) // W
    cdef const float* xp = &x[0, 0]
    cdef const float* wp = &w[0, 0]
    cdef float* yp = &y[0, 0]
    cdef Py_ssize_t t, o0, o1, jt
    for jt in prange(NT, schedule='static', num_threads=nt):  # (a last tile's lanes past N: never read)
        fcg_transpose(xp + jt * W * K, K, N - jt * W if N - jt * W < W else W, K, NULL, xt + jt * W * K, W)
    for t in prange(nblocks, schedule='static', num_threads=nt):
        o0 = _part(t, M, nblocks)
        o1 = _part(t + 1, M, nblocks)
        if o1 > o0:
            fcg_gemm(o1 - o0, N, K, wp + o0 * K, K, 1, xt, W, K * W, yt + o0 * N, N, 0)
            fcg_transpose(yt + o0 * N, N, o1 - o0, N, &bias[o0], yp + o0, M)


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


cdef inline void _bias_sums(const float* gp,       # IN  (N, M)
                            Py_ssize_t N, Py_ssize_t M, Py_ssize_t o0, Py_ssize_t o1,
                            float* gb) noexcept nogil:  # OUT gb[o0:o1]
    """gb[o] = sum over rows of gp[:, o] in float64, row by row (the reference's order), by
    chunks of 64 columns (vectorised across columns)."""
    cdef double acc[64]
    cdef Py_ssize_t c0, c1, i, o
    for c0 in range(o0, o1, 64):
        c1 = c0 + 64 if c0 + 64 < o1 else o1
        for o in range(c1 - c0):
            acc[o] = 0.0
        for i in range(N):
            for o in range(c1 - c0):
                acc[o] = acc[o] + gp[i * M + c0 + o]
        for o in range(c1 - c0):
            gb[c0 + o] = <float>acc[o]


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
    for t in prange(nblocks, schedule='static', num_threads=nt):
        o0 = _part(t, M, nblocks)
        o1 = _part(t + 1, M, nblocks)
        if o1 > o0 and fcg_gemm != NULL:  # (gy^T's rows broadcast, x's rows the vectors)
            fcg_transpose(gp + o0, M, N, o1 - o0, NULL, tp + o0 * N, N)
            _bias_sums(gp, N, M, o0, o1, &gb[0])
            fcg_gemm(o1 - o0, K, N, tp + o0 * N, N, 1, xp, K, fcg_W, gwp + o0 * K, K, 1)
        elif o1 > o0:  # gyt[o0:o1] = gy[:, o0:o1]^T, the bias sums
            for o in range(o0, o1):
                for i in range(N):
                    tp[o * N + i] = gp[i * M + o]
            _bias_sums(gp, N, M, o0, o1, &gb[0])
            _gemm(False, False, o1 - o0, K, N, tp + o0 * N, N, xp, K, 0.0, gwp + o0 * K, K)
        i0 = _part(t, K, nblocks)
        i1 = _part(t + 1, K, nblocks)
        if input_grad and i1 > i0 and fcg_gemm == NULL:  # gx[:, i0:i1] = gy @ w[:, i0:i1]
            _gemm(False, False, N, i1 - i0, M, gp, M, wp + i0, K, 0.0, gxp + i0, K)
    if input_grad and fcg_gemm != NULL:  # (all of gy^T first: its columns broadcast)
        for t in prange(nblocks, schedule='static', num_threads=nt):
            i0 = _part(t, K, nblocks)
            i1 = _part(t + 1, K, nblocks)
            if i1 > i0:
                fcg_gemm(N, i1 - i0, M, tp, 1, N, wp + i0, K, fcg_W, gxp + i0, K, 0)


cdef _Key _fwd_ok, _bwd_ok


def linear_forward(const float[:, ::1] x, const float[:, ::1] w, const float[::1] bias,
                   Py_ssize_t nblocks, float[:, ::1] y):
    """``y = x @ w.T + bias`` by blocks of output features (see :func:`fastcnn._ref.linear_forward`)."""
    cdef _Key k = _key(nblocks)
    if _new(&_fwd_ok, &k, x.shape, w.shape, bias.shape, y.shape):
        _passed(&_fwd_ok, &k, _backend.sizes_linear_forward(
            _dims(x.shape, 2), _dims(w.shape, 2), _dims(bias.shape, 1), nblocks, _dims(y.shape, 2)))
    if not _isa_set:
        _use_isa(fcg_set_isa)
    cdef int nt = _threads_for(x.shape[0] * x.shape[1])
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[0]
    cdef float* xt
    if fcg_gemm == NULL or not _config.dense_forward_tiled(N):
        with nogil:
            _linear_fwd(x, w, bias, nblocks, y, nt)
        return
    xt = <float*>malloc(((N + fcg_W - 1) // fcg_W * fcg_W * K + M * N) * sizeof(float))
    if xt == NULL:
        raise MemoryError("linear_forward: no memory for the scratch of x transposed")
    with nogil:
        _linear_fwd_tiled(x, w, bias, nblocks, xt, xt + (N + fcg_W - 1) // fcg_W * fcg_W * K, y, nt)
    free(xt)


def linear_backward(const float[:, ::1] gy, const float[:, ::1] x, const float[:, ::1] w,
                    bint input_grad, Py_ssize_t nblocks, float[:, ::1] gyt, float[:, ::1] gw,
                    float[::1] gb, float[:, ::1] gx):
    """Gradients by blocks of output and input features (see :func:`fastcnn._ref.linear_backward`)."""
    cdef _Key k = _key(input_grad, nblocks)
    if _new(&_bwd_ok, &k, gy.shape, x.shape, w.shape, gyt.shape, gw.shape, gb.shape, gx.shape):
        _passed(&_bwd_ok, &k, _backend.sizes_linear_backward(
            _dims(gy.shape, 2), _dims(x.shape, 2), _dims(w.shape, 2), input_grad, nblocks,
            _dims(gyt.shape, 2), _dims(gw.shape, 2), _dims(gb.shape, 1), _dims(gx.shape, 2)))
    if not _isa_set:
        _use_isa(fcg_set_isa)
    cdef int nt = _threads_for(gy.shape[0] * gy.shape[1] + x.shape[0] * x.shape[1])
    with nogil:
        _linear_bwd(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx, nt)
