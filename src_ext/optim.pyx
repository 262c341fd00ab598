# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused optimizer update of the Cython backend (contract: :mod:`fastcnn._ref`).

The arrays may have any shape; they are C-contiguous (checked here: a copy would lose the
update), so the Python-level function flattens them to 1-D views.  The kernel runs over fixed
blocks of elements; every element is updated on its own with the reference's float32
operations in the reference's order, so it matches the reference bit for bit.
"""
from cython.parallel cimport prange
from libc.math cimport sqrtf

include "_common.pxi"

cdef Py_ssize_t _BLOCK = 16384


cdef inline void _adam_block(float* p, const float* g, float* m, float* v, Py_ssize_t n,
                             float lr_t, float c1, float b2, float c2, float eps,
                             float bc2) noexcept nogil:
    """Adam on ``n`` elements: p, m, v IN/OUT; g IN."""
    cdef Py_ssize_t e
    cdef float gi, mi, vi
    for e in range(n):
        gi = g[e]
        mi = m[e]
        mi = mi + c1 * (gi - mi)
        vi = v[e] * b2 + (gi * gi) * c2
        m[e] = mi
        v[e] = vi
        p[e] = p[e] - (mi / (sqrtf(vi) / bc2 + eps)) * lr_t


cdef void _adam(float[::1] p, const float[::1] g, float[::1] m, float[::1] v,
                float lr_t, float c1, float b2, float c2, float eps, float bc2,
                int nt) noexcept nogil:
    cdef Py_ssize_t M = p.shape[0], nb = (M + _BLOCK - 1) // _BLOCK, blk, n, o
    cdef float* pp = &p[0]
    cdef const float* gp = &g[0]
    cdef float* mp = &m[0]
    cdef float* vp = &v[0]
    for blk in prange(nb, schedule='static', num_threads=nt):
        o = blk * _BLOCK
        n = M - o
        if n > _BLOCK:
            n = _BLOCK
        _adam_block(pp + o, gp + o, mp + o, vp + o, n, lr_t, c1, b2, c2, eps, bc2)


def _flat_out(a, name):
    if not a.flags.c_contiguous:  # reshape would copy and the update would be lost
        raise ValueError(f"adam_step: {name} must be C-contiguous")
    return a.reshape(-1)


def adam_step(p, g, m, v, double lr_t, double beta1, double beta2, double eps, double bc2_sqrt):
    """One ``torch.optim.Adam`` update in place (see :func:`fastcnn._ref.adam_step`)."""
    cdef float[::1] pf = _flat_out(p, "p")
    cdef const float[::1] gf = g.reshape(-1)
    cdef float[::1] mf = _flat_out(m, "m")
    cdef float[::1] vf = _flat_out(v, "v")
    _check(gf.shape[0] == pf.shape[0] and mf.shape[0] == pf.shape[0]
           and vf.shape[0] == pf.shape[0], "adam_step: p, g, m and v differ in size")
    if pf.shape[0] == 0:
        return
    cdef float c1 = <float>(1.0 - beta1), c2 = <float>(1.0 - beta2)
    with nogil:
        _adam(pf, gf, mf, vf, <float>lr_t, c1, <float>beta2, c2, <float>eps, <float>bc2_sqrt,
              _threads_for(pf.shape[0]))
