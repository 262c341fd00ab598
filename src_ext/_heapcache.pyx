# cython: language_level=3
"""NumPy's data-memory handler that keeps large freed blocks for reuse (the C code:
``heapcache.h``; the design: docs/PERFORMANCE.md, section 11).  :mod:`fastcnn._heap` installs it."""
cimport numpy as cnp

cnp.import_array()

cdef extern from "heapcache.h":
    object fch_capsule()
    int fch_configure(object base, size_t min_bytes, size_t max_bytes, size_t slack_pct) except -1
    size_t fch_release()
    void fch_stats(size_t *blocks, size_t *nbytes, unsigned long long *hits, unsigned long long *misses,
                   size_t *min_bytes, size_t *max_bytes)

cdef extern from "numpy/arrayobject.h":
    object PyDataMem_SetHandler(object handler)
    object PyDataMem_GetHandler()

NAME = "fastcnn_heap_cache"
_base = None  # (NumPy's default handler, which ours wraps: kept alive here)


def install(size_t min_bytes, size_t max_bytes, size_t slack_pct):
    """Keep freed data blocks of ``min_bytes`` or more (up to ``max_bytes`` in all) of the NumPy
    arrays made in the current context from now on.  The context's handler must be NumPy's
    default one (``numpy._core.multiarray.get_handler_name() == "default_allocator"``), which
    ours wraps."""
    global _base
    base = PyDataMem_GetHandler()
    fch_configure(base, min_bytes, max_bytes, slack_pct)
    _base = base
    PyDataMem_SetHandler(fch_capsule())


def release():
    """Return every kept block to the C library; returns their bytes."""
    return fch_release()


def stats():
    """``{"blocks", "bytes", "hits", "misses", "min_bytes", "max_bytes"}``: the blocks kept now,
    the large requests served from them or not since the process started, and the limits."""
    cdef size_t blocks, nbytes, min_bytes, max_bytes
    cdef unsigned long long hits, misses
    fch_stats(&blocks, &nbytes, &hits, &misses, &min_bytes, &max_bytes)
    return {"blocks": blocks, "bytes": nbytes, "hits": hits, "misses": misses, "min_bytes": min_bytes,
            "max_bytes": max_bytes}
