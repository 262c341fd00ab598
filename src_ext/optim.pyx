# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused optimizer update of the Cython backend (contract: :mod:`fastcnn._ref`).

The arrays may have any shape and are C-contiguous (a copy would lose the update), so the
kernel sees them as flat runs of floats, in fixed blocks of elements
(``_config.ELEMWISE_BLOCK``); every element is updated on its own with the reference's float32
operations in the reference's order, so it matches the reference bit for bit.
"""
from cython.parallel cimport prange
from libc.math cimport sqrtf

include "_common.pxi"

cdef enum:
    _BLOCK = FASTCNN_ELEMWISE_BLOCK


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


cdef void _adam(float* p, const float* g, float* m, float* v,  # IN/OUT, IN, IN/OUT, IN/OUT (M,)
                Py_ssize_t M, float lr_t, float c1, float b2, float c2, float eps, float bc2,
                int nt) noexcept nogil:
    cdef Py_ssize_t nb = (M + _BLOCK - 1) // _BLOCK, blk, n, o
    for blk in prange(nb, schedule='static', num_threads=nt):
        o = blk * _BLOCK
        n = min(M - o, _BLOCK)
        _adam_block(p + o, g + o, m + o, v + o, n, lr_t, c1, b2, c2, eps, bc2)


cdef _Key _adam_ok


def adam_step(p, g, m, v, double lr_t, double beta1, double beta2, double eps, double bc2_sqrt):
    """One ``torch.optim.Adam`` update in place (see :func:`fastcnn._ref.adam_step`)."""
    cdef float* pp
    cdef float* gp
    cdef float* mp
    cdef float* vp
    cdef Py_ssize_t np_, ng, nm, nv
    _flat(p, True, &pp, &np_)
    _flat(g, False, &gp, &ng)
    _flat(m, True, &mp, &nm)
    _flat(v, True, &vp, &nv)
    cdef _Key k = _key(np_, ng, nm, nv)
    if _new(&_adam_ok, &k):
        _passed(&_adam_ok, &k, _backend.sizes_adam_step(
            np_, ng, nm, nv, lr_t, beta1, beta2, eps, bc2_sqrt))
    if np_ == 0:
        return
    cdef float c1 = <float>(1.0 - beta1), c2 = <float>(1.0 - beta2)
    with nogil:
        _adam(pp, gp, mp, vp, np_, <float>lr_t, c1, <float>beta2, c2, <float>eps,
              <float>bc2_sqrt, _threads_for(np_))
