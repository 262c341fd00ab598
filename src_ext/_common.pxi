# Shared by the kernel modules (textually included): the OpenMP shim and the thread count.
#
# The thread count is kept in a C global of each kernel module and passed to every ``prange``
# as ``num_threads``, so it holds for kernels called from any Python thread (an OpenMP
# ``omp_set_num_threads`` only sets the calling OS thread's default).  ``fastcnn._ext._omp``
# ``set_num_threads`` updates it in every kernel module.

cdef extern from "_omp_shim.h" nogil:
    int fastcnn_omp_enabled()
    int fastcnn_omp_get_max_threads()

# 0: not set, use the OpenMP default (OMP_NUM_THREADS or all cores).
cdef int _nthreads = 0

# Below this many elements of work a kernel runs on one thread (fork/join costs more).
cdef Py_ssize_t _PAR_MIN_WORK = 16384


def _set_num_threads(int n):
    """Threads the kernels of this module use (``n <= 0``: the OpenMP default)."""
    global _nthreads
    _nthreads = n if n > 0 else 0


cdef inline int _threads_for(Py_ssize_t work) noexcept nogil:
    """Threads for a kernel that touches about ``work`` elements."""
    if work < _PAR_MIN_WORK:
        return 1
    if _nthreads > 0:
        return _nthreads
    return fastcnn_omp_get_max_threads()


# Cheap argument checks in the Python-level functions.  The callers (``fastcnn.functional``)
# validate everything already; these only make a mistaken direct call raise instead of
# reading or writing out of bounds.

cdef inline int _check(bint ok, str what) except -1:
    if not ok:
        raise ValueError(what)
    return 0


cdef inline int _check_windows(Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh, Py_ssize_t kw,
                               Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                               Py_ssize_t OH, Py_ssize_t OW, bint real_cell) except -1:
    """Positive kernel and stride, non-negative padding; with ``real_cell`` every window of the
    (OH, OW) output must hold at least one input cell."""
    _check(kh >= 1 and kw >= 1 and sh >= 1 and sw >= 1, "kernel and stride must be >= 1")
    _check(pt >= 0 and pl >= 0, "padding must be >= 0")
    if real_cell and OH > 0 and OW > 0:
        _check(pt < kh and pl < kw and (OH - 1) * sh - pt < H and (OW - 1) * sw - pl < W,
               "a pooling window holds no input cell")
    return 0


cdef inline void _valid_range(Py_ssize_t off, Py_ssize_t s, Py_ssize_t W, Py_ssize_t OW,
                              Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Output columns ``[lo, hi)`` whose input column ``o*s + off`` lies in ``[0, W)``."""
    cdef Py_ssize_t a = 0, b
    if off < 0:
        a = (-off + s - 1) // s
    if W - off <= 0:
        b = 0
    else:
        b = (W - off + s - 1) // s
    if a > OW:
        a = OW
    if b > OW:
        b = OW
    if b < a:
        b = a
    lo[0] = a
    hi[0] = b
