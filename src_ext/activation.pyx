# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""ReLU kernels and the sum of two arrays, of the Cython backend (contract: :mod:`fastcnn._ref`).

The arrays may have any shape and are C-contiguous, so the kernels see them as flat runs of
floats.  They run over fixed blocks of elements (``_config.ELEMWISE_BLOCK``); outputs may be
the inputs (in place).
"""
from cython.parallel cimport prange

include "_common.pxi"

cdef enum:
    _BLOCK = FASTCNN_ELEMWISE_BLOCK


ctypedef void (*_block_fn)(const float* a, const float* b, float* out,
                          Py_ssize_t m) noexcept nogil


cdef void _relu_block(const float* x, const float* unused, float* y, Py_ssize_t m) noexcept nogil:
    """``y = max(x, 0)`` (:func:`_relu`)."""
    cdef Py_ssize_t i
    for i in range(m):
        y[i] = _relu(x[i])


cdef void _relu_block_inplace(const float* unused, const float* unused2, float* y,
                              Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(m):
        y[i] = _relu(y[i])


cdef extern from *:
    """
    /* y = a + b, then with relu the ReLU kernels' rule (_relu); y may be a or b: no element
       depends on another, which ivdep tells GCC, so the loop vectorises with y aliasing an
       input too (GCC otherwise falls back to scalar code when it finds an exact alias). */
    #if defined(__GNUC__) && !defined(__clang__)
    #define FC_IVDEP _Pragma("GCC ivdep")
    #else
    #define FC_IVDEP
    #endif
    static inline void fc_add_run(const float* a, const float* b, float* y, Py_ssize_t m, int relu)
    {
        Py_ssize_t i;
        if (relu) {
            FC_IVDEP for (i = 0; i < m; i++) { float v = a[i] + b[i]; y[i] = v <= 0.0f ? 0.0f : v; }
        } else {
            FC_IVDEP for (i = 0; i < m; i++) y[i] = a[i] + b[i];
        }
    }
    static void fc_add_block(const float* a, const float* b, float* y, Py_ssize_t m) { fc_add_run(a, b, y, m, 0); }
    static void fc_add_relu_block(const float* a, const float* b, float* y, Py_ssize_t m) { fc_add_run(a, b, y, m, 1); }
    /* gx = g * (y > 0) as NumPy computes it (a float multiply by 1 or 0), or with g2 (unless
       NULL) (g + g2) * (y > 0): the sum, then that multiply; gx may be g or g2 (ivdep) */
    static void fc_relu_bwd_run(const float* g, const float* g2, const float* y, float* gx, Py_ssize_t m)
    {
        Py_ssize_t i;
        if (g2) {
            FC_IVDEP for (i = 0; i < m; i++) gx[i] = (g[i] + g2[i]) * (y[i] > 0.0f ? 1.0f : 0.0f);
        } else {
            FC_IVDEP for (i = 0; i < m; i++) gx[i] = g[i] * (y[i] > 0.0f ? 1.0f : 0.0f);
        }
    }
    """
    void fc_add_block(const float* a, const float* b, float* y, Py_ssize_t m) noexcept nogil
    void fc_add_relu_block(const float* a, const float* b, float* y, Py_ssize_t m) noexcept nogil
    void fc_relu_bwd_run(const float* g, const float* g2, const float* y, float* gx, Py_ssize_t m) noexcept nogil


cdef void _blocks(_block_fn f, const float* a,   # IN  (M,)
                  const float* b,                 # IN  (M,)
                  float* out,                     # OUT (M,)
                  Py_ssize_t M, int nt) noexcept nogil:
    """``f`` over the fixed blocks of the M elements, one per parallel iteration."""
    cdef Py_ssize_t nb = (M + _BLOCK - 1) // _BLOCK, t
    for t in prange(nb, schedule='static', num_threads=nt):
        f(a + t * _BLOCK, b + t * _BLOCK, out + t * _BLOCK, min(M - t * _BLOCK, _BLOCK))


cdef void _bwd_blocks(const float* g, const float* g2, const float* y,  # IN  (M,) each; g2 may be NULL
                      float* gx,                                        # OUT (M,)
                      Py_ssize_t M, int nt) noexcept nogil:
    """``fc_relu_bwd_run`` over the fixed blocks of the M elements, as :func:`_blocks`."""
    cdef Py_ssize_t nb = (M + _BLOCK - 1) // _BLOCK, t, o
    for t in prange(nb, schedule='static', num_threads=nt):
        o = t * _BLOCK
        fc_relu_bwd_run(g + o, g2 + o if g2 != NULL else NULL, y + o, gx + o, min(M - o, _BLOCK))


cdef _Key _fwd_ok, _bwd_ok, _add_ok, _add_relu_ok, _add_relu_bwd_ok


cdef Py_ssize_t _flat3(a, b, y, tuple names, float** ap, float** bp, float** yp, _Key* last, sizes) except -1:
    """Two inputs and an output as flat runs of floats, their sizes checked by ``sizes`` (the
    contract's, once per new combination of sizes; ``names``: theirs, for errors); returns the
    output's size."""
    cdef Py_ssize_t na, nb, ny
    _flat(a, False, names[0], ap, &na)
    _flat(b, False, names[1], bp, &nb)
    _flat(y, True, names[2], yp, &ny)
    cdef _Key k = _key(na, nb, ny)
    if _new(last, &k):
        _passed(last, &k, sizes(na, nb, ny))
    return ny


cdef _add(a, b, y, bint relu):
    """``y = a + b`` (with ``relu``: then ``max(., 0)``); a, b IN; y OUT (may be a or b)."""
    cdef float* ap
    cdef float* bp
    cdef float* yp
    cdef Py_ssize_t n = _flat3(a, b, y, ("a", "b", "y"), &ap, &bp, &yp, &_add_relu_ok if relu else &_add_ok,
                               _backend.sizes_add_relu_forward if relu else _backend.sizes_add_forward)
    if n:
        with nogil:
            _blocks(fc_add_relu_block if relu else fc_add_block, ap, bp, yp, n, _threads_for(n))


def add_forward(a, b, y):
    """``y = a + b``; a, b, y : any shape, the same size, float32, C-contiguous (y may be a or b)."""
    _add(a, b, y, False)


def add_relu_forward(a, b, y):
    """``y = max(a + b, 0)``; as :func:`add_forward`."""
    _add(a, b, y, True)


def relu_forward(x, y):
    """``y = max(x, 0)``; x, y : any shape, float32, C-contiguous (y may be x)."""
    cdef float* xp
    cdef float* yp
    cdef Py_ssize_t nx, ny
    _flat(x, False, "x", &xp, &nx)
    _flat(y, True, "y", &yp, &ny)
    cdef _Key k = _key(nx, ny)
    if _new(&_fwd_ok, &k):
        _passed(&_fwd_ok, &k, _backend.sizes_relu_forward(nx, ny))
    if nx == 0:
        return
    with nogil:  # (in place: a loop of its own, so that it still vectorises)
        _blocks(_relu_block_inplace if yp == xp else _relu_block, xp, xp, yp, nx, _threads_for(nx))


def relu_backward(gy, y, gx):
    """``gx = gy * (y > 0)``; gy, y IN; gx OUT (may be gy)."""
    cdef float* gp
    cdef float* yp
    cdef float* xp
    cdef Py_ssize_t nx = _flat3(gy, y, gx, ("gy", "y", "gx"), &gp, &yp, &xp, &_bwd_ok, _backend.sizes_relu_backward)
    if nx == 0:
        return
    with nogil:
        _bwd_blocks(gp, NULL, yp, xp, nx, _threads_for(nx))


def add_relu_backward(ga, gb, y, gx):
    """``gx = (ga + gb) * (y > 0)``; ga, gb, y IN; gx OUT (may be ga or gb)."""
    cdef float* ap
    cdef float* bp
    cdef float* yp
    cdef float* gp
    cdef Py_ssize_t na, nb, ny, ng
    _flat(ga, False, "ga", &ap, &na)
    _flat(gb, False, "gb", &bp, &nb)
    _flat(y, False, "y", &yp, &ny)
    _flat(gx, True, "gx", &gp, &ng)
    cdef _Key k = _key(na, nb, ny, ng)
    if _new(&_add_relu_bwd_ok, &k):
        _passed(&_add_relu_bwd_ok, &k, _backend.sizes_add_relu_backward(na, nb, ny, ng))
    if ng == 0:
        return
    with nogil:
        _bwd_blocks(ap, bp, yp, gp, ng, _threads_for(ng))
