# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused optimizer updates of the Cython backend (contract: :mod:`fastcnn._ref`).

The arrays may have any shape and are C-contiguous (a copy would lose the update), so the
kernel sees them as flat runs of floats, in fixed blocks of elements
(``_config.ELEMWISE_BLOCK``); every element is updated on its own with the reference's float32
operations in the reference's order, so it matches the reference bit for bit.  Adam's loop is
C (``optim_kern.h``), compiled for each SIMD path (the direct convolutions' path;
``FASTCNN_ISA`` forces it).
"""
from cython.parallel cimport prange

include "_common.pxi"

cdef extern from "optim_kern.h" nogil:
    ctypedef void (*fok_adam_fn)(float* p, const float* g, float* m, float* v,  # IN/OUT, IN, IN/OUT, IN/OUT
                                 Py_ssize_t n, float lr_t, float c1, float b2, float c2, float eps,
                                 float bc2) noexcept nogil
    fok_adam_fn fok_adam  # Adam on n elements, the selected SIMD path's loop
    void fok_set_isa(int isa)

cdef enum:
    _BLOCK = FASTCNN_ELEMWISE_BLOCK


cdef void _adam(float* p, const float* g, float* m, float* v,  # IN/OUT, IN, IN/OUT, IN/OUT (M,)
                Py_ssize_t M, float lr_t, float c1, float b2, float c2, float eps, float bc2,
                int nt) noexcept nogil:
    cdef Py_ssize_t nb = (M + _BLOCK - 1) // _BLOCK, blk, n, o
    if nt == 1:  # (one pass: element-wise; a parallel region, even of one thread, costs: docs/PERFORMANCE.md, 5)
        fok_adam(p, g, m, v, M, lr_t, c1, b2, c2, eps, bc2)
        return
    for blk in prange(nb, schedule='static', num_threads=nt):
        o = blk * _BLOCK
        n = min(M - o, _BLOCK)
        fok_adam(p + o, g + o, m + o, v + o, n, lr_t, c1, b2, c2, eps, bc2)


cdef int _same_lengths(str op, tuple seqs, tuple names) except -1:
    """Raise unless every sequence of ``seqs`` is as long as the first."""
    cdef Py_ssize_t k, n = len(seqs[0])
    for k in range(1, len(seqs)):
        if len(seqs[k]) != n:
            raise ValueError(f"{op}: {len(seqs[k])} {names[k]} for {n} {names[0]}")
    return 0


def adam_step(ps, gs, ms, vs, double lr_t, double beta1, double beta2, double eps, double bc2_sqrt):
    """One ``torch.optim.Adam`` update of every parameter in place (see
    :func:`fastcnn._ref.adam_step`): one kernel per parameter, each array checked (sizes by
    ``_backend.sizes_adam_step`` when they differ)."""
    cdef float* pp
    cdef float* gp
    cdef float* mp
    cdef float* vp
    cdef Py_ssize_t np_, ng, nm, nv, i, n = len(ps)
    cdef float c1 = <float>(1.0 - beta1), c2 = <float>(1.0 - beta2)
    if not _isa_set:
        _use_isa(fok_set_isa)
    _same_lengths("adam_step", (ps, gs, ms, vs), ("ps", "gs", "ms", "vs"))
    for i in range(n):
        _flat_item(ps, i, True, "ps", &pp, &np_)
        _flat_item(gs, i, False, "gs", &gp, &ng)
        _flat_item(ms, i, True, "ms", &mp, &nm)
        _flat_item(vs, i, True, "vs", &vp, &nv)
        if not (np_ == ng and ng == nm and nm == nv):
            _backend.sizes_adam_step(np_, ng, nm, nv, lr_t, beta1, beta2, eps, bc2_sqrt)
        if np_ == 0:
            continue
        with nogil:
            _adam(pp, gp, mp, vp, np_, <float>lr_t, c1, <float>beta2, c2, <float>eps,
                  <float>bc2_sqrt, _threads_for(np_))


cdef inline void _sgd_block(float* p, const float* g, float* buf, Py_ssize_t n, float lr, float wd,
                            float mom, float c, int use_wd, int use_mom, int nesterov,
                            int first) noexcept nogil:
    """SGD on ``n`` elements: p, buf IN/OUT (buf unused without momentum); g IN."""
    cdef Py_ssize_t e
    cdef float d, b
    if not use_mom:  # (loops without branches: GCC vectorises them wherever this is inlined)
        if use_wd:
            for e in range(n):
                p[e] = p[e] - lr * (g[e] + wd * p[e])
        else:
            for e in range(n):
                p[e] = p[e] - lr * g[e]
        return
    if first:  # (the buffer's first update: buf = d)
        for e in range(n):
            d = g[e] + wd * p[e] if use_wd else g[e]
            buf[e] = d
            p[e] = p[e] - lr * (d + mom * d if nesterov else d)
        return
    if use_wd:
        for e in range(n):
            d = g[e] + wd * p[e]
            b = buf[e] * mom + c * d
            buf[e] = b
            p[e] = p[e] - lr * (d + mom * b if nesterov else b)
    else:
        for e in range(n):
            d = g[e]
            b = buf[e] * mom + c * d
            buf[e] = b
            p[e] = p[e] - lr * (d + mom * b if nesterov else b)


cdef void _sgd(float* p, const float* g, float* buf,  # IN/OUT, IN, IN/OUT (M,)
               Py_ssize_t M, float lr, float wd, float mom, float c, int use_wd, int use_mom,
               int nesterov, int first, int nt) noexcept nogil:
    cdef Py_ssize_t nb = (M + _BLOCK - 1) // _BLOCK, blk, n, o
    if nt == 1:  # (as _adam's)
        _sgd_block(p, g, buf, M, lr, wd, mom, c, use_wd, use_mom, nesterov, first)
        return
    for blk in prange(nb, schedule='static', num_threads=nt):
        o = blk * _BLOCK
        n = min(M - o, _BLOCK)
        _sgd_block(p + o, g + o, buf + o if use_mom else buf, n, lr, wd, mom, c, use_wd, use_mom,
                   nesterov, first)


def sgd_step(ps, gs, bufs, double lr, double weight_decay, double momentum, double dampening,
             bint nesterov, bint first):
    """One ``torch.optim.SGD`` update of every parameter in place (see
    :func:`fastcnn._ref.sgd_step`): as :func:`adam_step`."""
    cdef float* pp
    cdef float* gp
    cdef float* bp
    cdef Py_ssize_t np_, ng, nb, i, n = len(ps)
    cdef int use_mom = momentum != 0
    _same_lengths("sgd_step", (ps, gs, bufs), ("ps", "gs", "bufs"))
    for i in range(n):
        _flat_item(ps, i, True, "ps", &pp, &np_)
        _flat_item(gs, i, False, "gs", &gp, &ng)
        _flat_item(bufs, i, True, "bufs", &bp, &nb)
        if np_ != ng or (use_mom and nb != np_):
            _backend.sizes_sgd_step(np_, ng, nb, lr, weight_decay, momentum, dampening, nesterov, first)
        if np_ == 0:
            continue
        with nogil:
            _sgd(pp, gp, bp, np_, <float>lr, <float>weight_decay, <float>momentum,
                 <float>(1.0 - dampening), weight_decay != 0, use_mom, nesterov, first,
                 _threads_for(np_))
