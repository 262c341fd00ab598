# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""ReLU kernels of the Cython backend (contract: :mod:`fastcnn._ref`).

The arrays may have any shape; they are C-contiguous (the callers check), so the Python-level
functions flatten them to 1-D views.  The kernels run over fixed blocks of elements; outputs
may be the inputs (in place), which gets its own loop so that it still vectorises.
"""
from cython.parallel cimport prange

include "_common.pxi"

cdef Py_ssize_t _BLOCK = 16384


cdef inline void _relu_block(const float* x, float* y, Py_ssize_t m) noexcept nogil:
    """``y = max(x, 0)`` as ``np.maximum(x, 0.0)``: NaN stays NaN, -0.0 becomes +0.0."""
    cdef Py_ssize_t i
    cdef float v
    for i in range(m):
        v = x[i]
        y[i] = 0.0 if v <= 0.0 else v


cdef inline void _relu_block_inplace(float* y, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    cdef float v
    for i in range(m):
        v = y[i]
        y[i] = 0.0 if v <= 0.0 else v


cdef inline void _relu_bwd_block(const float* gy, const float* y, float* gx,
                                 Py_ssize_t m) noexcept nogil:
    """``gx = gy * (y > 0)`` as NumPy computes it (a float multiply by 1 or 0)."""
    cdef Py_ssize_t i
    cdef float one = 1.0, zero = 0.0
    for i in range(m):
        gx[i] = gy[i] * (one if y[i] > 0.0 else zero)


cdef inline void _relu_bwd_block_inplace(float* g, const float* y, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    cdef float one = 1.0, zero = 0.0
    for i in range(m):
        g[i] = g[i] * (one if y[i] > 0.0 else zero)


cdef void _relu_fwd(const float[::1] x,   # IN  (M,)
                    float[::1] y,         # OUT (M,), may be x
                    int nt) noexcept nogil:
    cdef Py_ssize_t M = x.shape[0], nb = (M + _BLOCK - 1) // _BLOCK, b, m
    cdef const float* xp = &x[0]
    cdef float* yp = &y[0]
    cdef bint inplace = <const float*>yp == xp
    for b in prange(nb, schedule='static', num_threads=nt):
        m = M - b * _BLOCK
        if m > _BLOCK:
            m = _BLOCK
        if inplace:
            _relu_block_inplace(yp + b * _BLOCK, m)
        else:
            _relu_block(xp + b * _BLOCK, yp + b * _BLOCK, m)


cdef void _relu_bwd(const float[::1] gy,  # IN  (M,)
                    const float[::1] y,   # IN  (M,)
                    float[::1] gx,        # OUT (M,), may be gy
                    int nt) noexcept nogil:
    cdef Py_ssize_t M = gy.shape[0], nb = (M + _BLOCK - 1) // _BLOCK, b, m
    cdef const float* gp = &gy[0]
    cdef const float* yp = &y[0]
    cdef float* xp = &gx[0]
    cdef bint inplace = <const float*>xp == gp
    for b in prange(nb, schedule='static', num_threads=nt):
        m = M - b * _BLOCK
        if m > _BLOCK:
            m = _BLOCK
        if inplace:
            _relu_bwd_block_inplace(xp + b * _BLOCK, yp + b * _BLOCK, m)
        else:
            _relu_bwd_block(gp + b * _BLOCK, yp + b * _BLOCK, xp + b * _BLOCK, m)


def _flat_out(a, name):
    if not a.flags.c_contiguous:  # reshape would copy and the result would be lost
        raise ValueError(f"{name} must be C-contiguous")
    return a.reshape(-1)


def relu_forward(x, y):
    """``y = max(x, 0)``; x, y : any shape, float32, C-contiguous (y may be x)."""
    cdef const float[::1] xf = x.reshape(-1)
    cdef float[::1] yf = _flat_out(y, "y")
    if xf.shape[0] != yf.shape[0]:
        raise ValueError("relu_forward: x and y differ in size")
    if xf.shape[0] == 0:
        return
    with nogil:
        _relu_fwd(xf, yf, _threads_for(xf.shape[0]))


def relu_backward(gy, y, gx):
    """``gx = gy * (y > 0)``; gy, y IN; gx OUT (may be gy)."""
    cdef const float[::1] gf = gy.reshape(-1)
    cdef const float[::1] yf = y.reshape(-1)
    cdef float[::1] xf = _flat_out(gx, "gx")
    if not (gf.shape[0] == yf.shape[0] == xf.shape[0]):
        raise ValueError("relu_backward: gy, y and gx differ in size")
    if xf.shape[0] == 0:
        return
    with nogil:
        _relu_bwd(gf, yf, xf, _threads_for(xf.shape[0]))
