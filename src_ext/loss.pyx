# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Softmax cross-entropy kernels of the Cython backend (contract: :mod:`fastcnn._ref`).

One row per iteration; the exponential sum of a row is accumulated in double in a fixed
order, so results do not depend on the thread count.
"""
from cython.parallel cimport prange
from libc.math cimport exp, log
from libc.stdint cimport int64_t

include "_common.pxi"


cdef inline float _softmax_row(const float* z, float* p, Py_ssize_t K,
                               int64_t label) noexcept nogil:
    """Softmax of one row into ``p`` and return ``logsumexp(z) - z[label]``.

    z : (K,) logits  # IN
    p : (K,) probabilities  # OUT (may be z)
    """
    cdef Py_ssize_t k
    cdef float m = z[0], d, zl
    cdef double s = 0.0
    for k in range(1, K):
        if z[k] > m:
            m = z[k]
    zl = z[label] - m                     # before p (possibly z) is written
    for k in range(K):
        d = z[k] - m                      # float32 subtraction, as the reference
        p[k] = <float>exp(<double>d)
        s += p[k]
    for k in range(K):
        p[k] = <float>(<double>p[k] / s)
    return <float>(log(s) - <double>zl)


cdef inline void _softmax_bwd_row(const float* p, float* g, Py_ssize_t K, int64_t label,
                                  float inv) noexcept nogil:
    """``g = (p - onehot(label)) * inv``, float32 as the reference's
    ``gx[n, label] -= 1.0; gx *= inv``.

    p : (K,) probabilities  # IN
    g : (K,) gradient  # OUT (may be p)
    """
    cdef Py_ssize_t k
    cdef float pl = p[label] - <float>1.0   # before g (possibly p) is written
    for k in range(K):
        g[k] = p[k] * inv
    g[label] = pl * inv


cdef Py_ssize_t _bad_labels(const int64_t* labels, Py_ssize_t N, Py_ssize_t K) noexcept nogil:
    """How many of the ``N`` labels lie outside ``[0, K)``."""
    cdef Py_ssize_t n, bad = 0
    for n in range(N):
        bad += labels[n] < 0 or labels[n] >= K
    return bad


cdef void _softmax_fwd(const float* zp,       # IN  (N, K) logits
                       const int64_t* lp,     # IN  (N,) labels, in [0, K)
                       float* pp,             # OUT (N, K) probabilities
                       float* op,             # OUT (N,) losses
                       Py_ssize_t N, Py_ssize_t K, int nt) noexcept nogil:
    cdef Py_ssize_t n
    if nt == 1:  # (a parallel region, even of one thread, costs: docs/PERFORMANCE.md, 5)
        for n in range(N):
            op[n] = _softmax_row(zp + n * K, pp + n * K, K, lp[n])
        return
    for n in prange(N, schedule='static', num_threads=nt):
        op[n] = _softmax_row(zp + n * K, pp + n * K, K, lp[n])


cdef void _softmax_bwd(const float* pp,       # IN  (N, K) probabilities
                       const int64_t* lp,     # IN  (N,) labels, in [0, K)
                       float* gp,             # OUT (N, K), may be pp
                       Py_ssize_t N, Py_ssize_t K, int nt) noexcept nogil:
    cdef Py_ssize_t n
    cdef float inv = <float>(1.0 / <double>N)
    if nt == 1:
        for n in range(N):
            _softmax_bwd_row(pp + n * K, gp + n * K, K, lp[n], inv)
        return
    for n in prange(N, schedule='static', num_threads=nt):
        _softmax_bwd_row(pp + n * K, gp + n * K, K, lp[n], inv)


cdef _Key _fwd_ok, _bwd_ok


def softmax_xent_forward(logits, labels, probs, losses):
    """Softmax and per-sample cross-entropy (see :func:`fastcnn._ref.softmax_xent_forward`).
    logits (N, K), probs (N, K) and losses (N,) float32, labels (N,) int64."""
    cdef _A z, lb, p, o
    _arr(logits, cnp.NPY_FLOAT32, 2, False, "logits", &z)
    _arr(labels, cnp.NPY_INT64, 1, False, "labels", &lb)
    _arr(probs, cnp.NPY_FLOAT32, 2, True, "probs", &p)
    _arr(losses, cnp.NPY_FLOAT32, 1, True, "losses", &o)
    cdef _Key k = _key()
    if _new(&_fwd_ok, &k, z.shape, lb.shape, p.shape, o.shape):
        _passed(&_fwd_ok, &k, _backend.sizes_softmax_xent_forward(
            _dims(z.shape, 2), _dims(lb.shape, 1), _dims(p.shape, 2), _dims(o.shape, 1)))
    cdef Py_ssize_t N = z.shape[0], K = z.shape[1]
    if N == 0 or K == 0:
        return
    _in_range("softmax_xent_forward", _bad_labels(<int64_t*>lb.p, N, K), "labels")
    with nogil:
        _softmax_fwd(<float*>z.p, <int64_t*>lb.p, <float*>p.p, <float*>o.p, N, K, _threads_for(8 * N * K))


def softmax_xent_backward(probs, labels, gx):
    """``gx = (probs - onehot(labels)) / N`` (see :func:`fastcnn._ref.softmax_xent_backward`).
    probs and gx (N, K) float32 (gx may be probs), labels (N,) int64."""
    cdef _A p, lb, g
    _arr(probs, cnp.NPY_FLOAT32, 2, False, "probs", &p)
    _arr(labels, cnp.NPY_INT64, 1, False, "labels", &lb)
    _arr(gx, cnp.NPY_FLOAT32, 2, True, "gx", &g)
    cdef _Key k = _key()
    if _new(&_bwd_ok, &k, p.shape, lb.shape, g.shape):
        _passed(&_bwd_ok, &k, _backend.sizes_softmax_xent_backward(
            _dims(p.shape, 2), _dims(lb.shape, 1), _dims(g.shape, 2)))
    cdef Py_ssize_t N = p.shape[0], K = p.shape[1]
    if N == 0 or K == 0:
        return
    _in_range("softmax_xent_backward", _bad_labels(<int64_t*>lb.p, N, K), "labels")
    with nogil:
        _softmax_bwd(<float*>p.p, <int64_t*>lb.p, <float*>g.p, N, K, _threads_for(N * K))
