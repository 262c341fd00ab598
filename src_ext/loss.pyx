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


cdef Py_ssize_t _bad_labels(const int64_t[::1] labels, Py_ssize_t K) noexcept nogil:
    """How many labels lie outside ``[0, K)``."""
    cdef Py_ssize_t n, bad = 0
    for n in range(labels.shape[0]):
        bad += labels[n] < 0 or labels[n] >= K
    return bad


cdef void _softmax_fwd(const float[:, ::1] logits,   # IN  (N, K)
                       const int64_t[::1] labels,     # IN  (N,), in [0, K)
                       float[:, ::1] probs,           # OUT (N, K)
                       float[::1] losses,             # OUT (N,)
                       int nt) noexcept nogil:
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1], n
    cdef const float* zp = &logits[0, 0]
    cdef const int64_t* lp = &labels[0]
    cdef float* pp = &probs[0, 0]
    cdef float* op = &losses[0]
    if nt == 1:  # (a parallel region, even of one thread, costs: docs/PERFORMANCE.md, 5)
        for n in range(N):
            op[n] = _softmax_row(zp + n * K, pp + n * K, K, lp[n])
        return
    for n in prange(N, schedule='static', num_threads=nt):
        op[n] = _softmax_row(zp + n * K, pp + n * K, K, lp[n])


cdef void _softmax_bwd(const float[:, ::1] probs,    # IN  (N, K)
                       const int64_t[::1] labels,     # IN  (N,), in [0, K)
                       float[:, ::1] gx,              # OUT (N, K), may be probs
                       int nt) noexcept nogil:
    cdef Py_ssize_t N = probs.shape[0], K = probs.shape[1], n
    cdef const float* pp = &probs[0, 0]
    cdef const int64_t* lp = &labels[0]
    cdef float* gp = &gx[0, 0]
    cdef float inv = <float>(1.0 / <double>N)
    if nt == 1:
        for n in range(N):
            _softmax_bwd_row(pp + n * K, gp + n * K, K, lp[n], inv)
        return
    for n in prange(N, schedule='static', num_threads=nt):
        _softmax_bwd_row(pp + n * K, gp + n * K, K, lp[n], inv)


cdef _Key _fwd_ok, _bwd_ok


def softmax_xent_forward(const float[:, ::1] logits, const int64_t[::1] labels,
                         float[:, ::1] probs, float[::1] losses):
    """Softmax and per-sample cross-entropy (see :func:`fastcnn._ref.softmax_xent_forward`)."""
    cdef _Key k = _key()
    if _new(&_fwd_ok, &k, logits.shape, labels.shape, probs.shape, losses.shape):
        _passed(&_fwd_ok, &k, _backend.sizes_softmax_xent_forward(
            _dims(logits.shape, 2), _dims(labels.shape, 1), _dims(probs.shape, 2),
            _dims(losses.shape, 1)))
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        return
    _in_range("softmax_xent_forward", _bad_labels(labels, logits.shape[1]), "labels")
    with nogil:
        _softmax_fwd(logits, labels, probs, losses,
                     _threads_for(8 * logits.shape[0] * logits.shape[1]))


def softmax_xent_backward(const float[:, ::1] probs, const int64_t[::1] labels,
                          float[:, ::1] gx):
    """``gx = (probs - onehot(labels)) / N`` (see :func:`fastcnn._ref.softmax_xent_backward`)."""
    cdef _Key k = _key()
    if _new(&_bwd_ok, &k, probs.shape, labels.shape, gx.shape):
        _passed(&_bwd_ok, &k, _backend.sizes_softmax_xent_backward(
            _dims(probs.shape, 2), _dims(labels.shape, 1), _dims(gx.shape, 2)))
    if probs.shape[0] == 0 or probs.shape[1] == 0:
        return
    _in_range("softmax_xent_backward", _bad_labels(labels, probs.shape[1]), "labels")
    with nogil:
        _softmax_bwd(probs, labels, gx, _threads_for(probs.shape[0] * probs.shape[1]))
