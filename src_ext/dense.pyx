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

from fastcnn import _config, _dispatch

cdef extern from "gemm.h" nogil:
    ctypedef void (*fcg_gemm_fn)(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                 const float* a, Py_ssize_t ars, Py_ssize_t aps,  # IN
                                 const float* b, Py_ssize_t ldb, Py_ssize_t bts,  # IN
                                 float* c, Py_ssize_t ldc,  # OUT
                                 int nt) noexcept nogil  # IN  1: c stored past the caches (one block of k)
    ctypedef void (*fcg_transpose_fn)(const float* s, Py_ssize_t lds, Py_ssize_t rows,  # IN
                                      Py_ssize_t cols, const float* add,  # IN (rows,) or NULL
                                      float* d, Py_ssize_t ldd) noexcept nogil  # OUT
    ctypedef void (*fcr_forward_fn)(Py_ssize_t n, Py_ssize_t k, Py_ssize_t m,
                                    const float* x, const float* w, const float* bias,  # IN
                                    float* y,  # OUT
                                    Py_ssize_t o0, Py_ssize_t o1) noexcept nogil
    ctypedef void (*fcr_chains_fn)(Py_ssize_t rows, Py_ssize_t T, const float* a, Py_ssize_t ars,  # IN
                                   Py_ssize_t ats, const float* b, Py_ssize_t ldb,  # IN
                                   float* c, Py_ssize_t ldc,  # OUT
                                   Py_ssize_t q0, Py_ssize_t q1) noexcept nogil
    fcr_forward_fn fcr_forward  # the rows path (rows_kern.h), every path
    fcr_chains_fn fcr_chains
    fcg_gemm_fn fcg_gemm  # NULL on the baseline path
    fcg_transpose_fn fcg_transpose
    Py_ssize_t fcg_W      # column-tile width of fcg_gemm
    void fcg_set_isa(int isa) noexcept


cdef void _linear_fwd_tiled(const _A* x,                 # IN  (N, IN)
                            const _A* w,                 # IN  (OUT, IN)
                            const _A* bias,              # IN  (OUT,)
                            Py_ssize_t nblocks,
                            float* xt,                   # scratch: x^T in column tiles of fcg_W
                            float* yt,                   # scratch (OUT, N): y^T
                            const _A* y,                 # OUT (N, OUT)
                            int nt) noexcept nogil:
    """``y^T = w @ x^T`` by fcg_gemm: w's rows are the broadcast operand, x^T (packed first,
    tile by tile) the vector operand; then ``y = (y^T)^T + bias``."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[0], W = fcg_W
    cdef Py_ssize_t NT = (N + W - 1) // W
    cdef const float* xp = <float*>x.p
    cdef const float* wp = <float*>w.p
    cdef const float* bp = <float*>bias.p
    cdef float* yp = <float*>y.p
    cdef Py_ssize_t t, o0, o1, jt
    for jt in prange(NT, schedule='static', num_threads=nt):  # (a last tile's lanes past N: never read)
        fcg_transpose(xp + jt * W * K, K, N - jt * W if N - jt * W < W else W, K, NULL, xt + jt * W * K, W)
    for t in prange(nblocks, schedule='static', num_threads=nt):
        o0 = _part(t, M, nblocks)
        o1 = _part(t + 1, M, nblocks)
        if o1 > o0:
            fcg_gemm(o1 - o0, N, K, wp + o0 * K, K, 1, xt, W, K * W, yt + o0 * N, N, 0)
            fcg_transpose(yt + o0 * N, N, o1 - o0, N, bp + o0, yp + o0, M)


cdef void _linear_fwd(const _A* x,                 # IN  (N, IN)
                      const _A* w,                 # IN  (OUT, IN)
                      const _A* bias,              # IN  (OUT,)
                      Py_ssize_t nblocks,
                      const _A* y,                 # OUT (N, OUT)
                      int nt) noexcept nogil:
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[0]
    cdef const float* xp = <float*>x.p
    cdef const float* wp = <float*>w.p
    cdef const float* bp = <float*>bias.p
    cdef float* yp = <float*>y.p
    cdef Py_ssize_t t, o0, o1, i, o
    for t in prange(nblocks, schedule='static', num_threads=nt):
        o0 = _part(t, M, nblocks)
        o1 = _part(t + 1, M, nblocks)
        if o1 > o0:  # y[:, o0:o1] = x @ w[o0:o1]^T + bias[o0:o1]
            _gemm(False, True, N, o1 - o0, K, xp, K, wp + o0 * K, K, 0.0, yp + o0, M)
            for i in range(N):
                for o in range(o0, o1):
                    yp[i * M + o] = yp[i * M + o] + bp[o]


cdef void _rows_fwd(const _A* x,                   # IN  (N, IN)
                    const _A* w,                   # IN  (OUT, IN)
                    const _A* bias,                # IN  (OUT,)
                    const _A* y,                   # OUT (N, OUT)
                    int nt) noexcept nogil:
    """The rows path (``rows_kern.h``): ``nt`` blocks of output features."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = w.shape[0], t, o0, o1
    cdef const float* xp = <float*>x.p
    cdef const float* wp = <float*>w.p
    cdef const float* bp = <float*>bias.p
    cdef float* yp = <float*>y.p
    if nt > M:
        nt = <int>M
    if nt <= 1:
        fcr_forward(N, K, M, xp, wp, bp, yp, 0, M)
        return
    for t in prange(nt, schedule='static', num_threads=nt):
        o0 = _part(t, M, nt)
        o1 = _part(t + 1, M, nt)
        fcr_forward(N, K, M, xp, wp, bp, yp, o0, o1)


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


cdef void _linear_bwd(const _A* gy,                # IN  (N, OUT)
                      const _A* x,                 # IN  (N, IN)
                      const _A* w,                 # IN  (OUT, IN)
                      bint input_grad, Py_ssize_t nblocks,
                      const _A* gyt,               # scratch (OUT, N)
                      const _A* gw,                # OUT (OUT, IN)
                      const _A* gb,                # OUT (OUT,)
                      const _A* gx,                # OUT (N, IN) if input_grad
                      int nt) noexcept nogil:
    cdef Py_ssize_t N = gy.shape[0], M = gy.shape[1], K = x.shape[1]
    cdef const float* gp = <float*>gy.p
    cdef const float* xp = <float*>x.p
    cdef const float* wp = <float*>w.p
    cdef float* tp = <float*>gyt.p
    cdef float* gwp = <float*>gw.p
    cdef float* gbp = <float*>gb.p
    cdef float* gxp = <float*>gx.p
    cdef Py_ssize_t t, o0, o1, o, i, i0, i1
    for t in prange(nblocks, schedule='static', num_threads=nt):
        o0 = _part(t, M, nblocks)
        o1 = _part(t + 1, M, nblocks)
        if o1 > o0 and fcg_gemm != NULL:  # (gy^T's rows broadcast, x's rows the vectors)
            fcg_transpose(gp + o0, M, N, o1 - o0, NULL, tp + o0 * N, N)
            _bias_sums(gp, N, M, o0, o1, gbp)
            fcg_gemm(o1 - o0, K, N, tp + o0 * N, N, 1, xp, K, fcg_W, gwp + o0 * K, K, 1)
        elif o1 > o0:  # gyt[o0:o1] = gy[:, o0:o1]^T, the bias sums
            for o in range(o0, o1):
                for i in range(N):
                    tp[o * N + i] = gp[i * M + o]
            _bias_sums(gp, N, M, o0, o1, gbp)
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


cdef void _rows_bwd(const _A* gy,                  # IN  (N, OUT)
                    const _A* x,                   # IN  (N, IN)
                    const _A* w,                   # IN  (OUT, IN)
                    bint input_grad,
                    const _A* gw,                  # OUT (OUT, IN)
                    const _A* gb,                  # OUT (OUT,)
                    const _A* gx,                  # OUT (N, IN) if input_grad
                    int nt) noexcept nogil:
    """The rows path's gradients: ``nt`` blocks of input features (columns of gw and gx)."""
    cdef Py_ssize_t N = gy.shape[0], M = gy.shape[1], K = x.shape[1], t, q0, q1
    cdef const float* gp = <float*>gy.p
    cdef const float* xp = <float*>x.p
    cdef const float* wp = <float*>w.p
    cdef float* gwp = <float*>gw.p
    cdef float* gxp = <float*>gx.p
    _bias_sums(gp, N, M, 0, M, <float*>gb.p)
    if nt > K:
        nt = <int>K
    if nt <= 1:
        fcr_chains(M, N, gp, 1, M, xp, K, gwp, K, 0, K)
        if input_grad:
            fcr_chains(N, M, gp, M, 1, wp, K, gxp, K, 0, K)
        return
    for t in prange(nt, schedule='static', num_threads=nt):
        q0 = _part(t, K, nt)
        q1 = _part(t + 1, K, nt)
        fcr_chains(M, N, gp, 1, M, xp, K, gwp, K, q0, q1)
        if input_grad:
            fcr_chains(N, M, gp, M, 1, wp, K, gxp, K, q0, q1)


cdef _Key _fwd_ok, _bwd_ok


def linear_forward(x, w, bias, Py_ssize_t nblocks, y):
    """``y = x @ w.T + bias`` by blocks of output features (see :func:`fastcnn._ref.linear_forward`);
    x (N, IN), w (OUT, IN), bias (OUT,), y (N, OUT) float32."""
    cdef _A a, f, b, o
    _arr(x, cnp.NPY_FLOAT32, 2, False, "x", &a)
    _arr(w, cnp.NPY_FLOAT32, 2, False, "w", &f)
    _arr(bias, cnp.NPY_FLOAT32, 1, False, "bias", &b)
    _arr(y, cnp.NPY_FLOAT32, 2, True, "y", &o)
    cdef _Key k = _key(nblocks)
    if _new(&_fwd_ok, &k, a.shape, f.shape, b.shape, o.shape):
        _passed(&_fwd_ok, &k, _backend.sizes_linear_forward(
            _dims(a.shape, 2), _dims(f.shape, 2), _dims(b.shape, 1), nblocks, _dims(o.shape, 2)))
    if not _isa_set:
        _use_isa(fcg_set_isa)
    cdef Py_ssize_t N = a.shape[0], K = a.shape[1], M = f.shape[0]
    cdef int nt
    cdef float* xt
    if _dispatch.dense_rows(N):
        nt = _threads_for(M * K)
        with nogil:
            _rows_fwd(&a, &f, &b, &o, nt)
        return
    nt = _threads_for(N * K)
    if fcg_gemm == NULL or not _config.dense_forward_tiled(N):
        with nogil:
            _linear_fwd(&a, &f, &b, nblocks, &o, nt)
        return
    xt = <float*>malloc(((N + fcg_W - 1) // fcg_W * fcg_W * K + M * N) * sizeof(float))
    if xt == NULL:
        raise MemoryError("linear_forward: no memory for the scratch of x transposed")
    with nogil:
        _linear_fwd_tiled(&a, &f, &b, nblocks, xt, xt + (N + fcg_W - 1) // fcg_W * fcg_W * K, &o, nt)
    free(xt)


def linear_backward(gy, x, w, bint input_grad, Py_ssize_t nblocks, gyt, gw, gb, gx):
    """Gradients by blocks of output and input features (see :func:`fastcnn._ref.linear_backward`);
    gy (N, OUT), x (N, IN), w (OUT, IN), gyt (OUT, N), gw (OUT, IN), gb (OUT,), gx (N, IN) float32."""
    cdef _A g_, a, f, t, dw, db, dx
    _arr(gy, cnp.NPY_FLOAT32, 2, False, "gy", &g_)
    _arr(x, cnp.NPY_FLOAT32, 2, False, "x", &a)
    _arr(w, cnp.NPY_FLOAT32, 2, False, "w", &f)
    _arr(gyt, cnp.NPY_FLOAT32, 2, True, "gyt", &t)
    _arr(gw, cnp.NPY_FLOAT32, 2, True, "gw", &dw)
    _arr(gb, cnp.NPY_FLOAT32, 1, True, "gb", &db)
    _arr(gx, cnp.NPY_FLOAT32, 2, True, "gx", &dx)
    cdef _Key k = _key(input_grad, nblocks)
    if _new(&_bwd_ok, &k, g_.shape, a.shape, f.shape, t.shape, dw.shape, db.shape, dx.shape):
        _passed(&_bwd_ok, &k, _backend.sizes_linear_backward(
            _dims(g_.shape, 2), _dims(a.shape, 2), _dims(f.shape, 2), input_grad, nblocks,
            _dims(t.shape, 2), _dims(dw.shape, 2), _dims(db.shape, 1), _dims(dx.shape, 2)))
    if not _isa_set:
        _use_isa(fcg_set_isa)
    cdef int nt
    if _dispatch.dense_rows(g_.shape[0], True):
        nt = _threads_for(f.shape[0] * f.shape[1])
        with nogil:
            _rows_bwd(&g_, &a, &f, input_grad, &dw, &db, &dx, nt)
        return
    nt = _threads_for(g_.shape[0] * g_.shape[1] + a.shape[0] * a.shape[1])
    with nogil:
        _linear_bwd(&g_, &a, &f, input_grad, nblocks, &t, &dw, &db, &dx, nt)
