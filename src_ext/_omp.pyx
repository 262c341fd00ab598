# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""OpenMP control and build information of the Cython kernels.

``OPENMP``
    Whether the kernels were compiled with OpenMP (otherwise their ``prange`` loops run serially).
``COMPILE_ARGS``, ``LINK_ARGS``
    The extra compiler and linker flags ``setup.py`` used (a space-separated string).
``COMPILER``
    The compiler command.
``BUILD_INFO``
    Compiler name and version, Cython version and platform of the build.
"""
import importlib
import operator

from fastcnn._config import KERNEL_MODULES

cdef extern from "_omp_shim.h" nogil:
    int fastcnn_omp_enabled()
    int fastcnn_omp_get_max_threads()
    void fastcnn_omp_set_num_threads(int n)

cdef extern from "fastcnn_buildinfo.h":
    const char* FASTCNN_COMPILE_ARGS
    const char* FASTCNN_LINK_ARGS
    const char* FASTCNN_COMPILER
    const char* FASTCNN_BUILD_INFO

OPENMP = bool(fastcnn_omp_enabled())
COMPILE_ARGS = FASTCNN_COMPILE_ARGS.decode("utf-8", "replace")
LINK_ARGS = FASTCNN_LINK_ARGS.decode("utf-8", "replace")
COMPILER = FASTCNN_COMPILER.decode("utf-8", "replace")
BUILD_INFO = FASTCNN_BUILD_INFO.decode("utf-8", "replace")

_requested = 0


def set_num_threads(n):
    """Use ``n >= 1`` threads in every Cython kernel (a no-op without OpenMP).

    Holds for kernels called from any Python thread: each kernel module keeps the count and
    passes it to its parallel loops.
    """
    global _requested
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if n > 1 << 16:
        raise ValueError(f"set_num_threads: n = {n} is unreasonably large")
    fastcnn_omp_set_num_threads(<int>n)
    for name in KERNEL_MODULES:
        importlib.import_module("fastcnn._ext." + name)._set_num_threads(n)
    _requested = n


def get_max_threads():
    """Threads the kernels use: the count set by :func:`set_num_threads`, else the OpenMP
    default (``OMP_NUM_THREADS`` or all cores); 1 without OpenMP."""
    if not OPENMP:
        return 1
    if _requested:
        return _requested
    return fastcnn_omp_get_max_threads()
