"""The one threads knob: Numba, OpenMP (Cython kernels) and BLAS together."""
import os

from ._config import env_threads

_state = {"n": None, "blas_limiter": None}


def max_threads():
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def set_num_threads(n):
    """Use ``n`` threads in the compiled kernels (Numba and OpenMP) and in BLAS.

    Parameters
    ----------
    n : int
        Between 1 and the number of cores this process may use.
    """
    import numbers

    if not isinstance(n, numbers.Integral) or isinstance(n, bool):
        raise TypeError(f"set_num_threads: n must be an int, got {n!r}")
    n = int(n)
    top = max_threads()
    try:
        import numba

        top = min(top, numba.config.NUMBA_NUM_THREADS)
    except ImportError:
        numba = None
    if not 1 <= n <= max(top, 1):
        raise ValueError(f"set_num_threads: n must be between 1 and {top}, got {n}")
    if numba is not None:
        numba.set_num_threads(n)
    try:
        from ._ext import _omp

        _omp.set_num_threads(n)
    except ImportError:
        pass
    from threadpoolctl import threadpool_limits

    # The limiter applies on construction and stays in force until restored; keep it so
    # a later call can restore before applying its own limit.
    if _state["blas_limiter"] is not None:
        _state["blas_limiter"].restore_original_limits()
    _state["blas_limiter"] = threadpool_limits(limits=n, user_api="blas")
    _state["n"] = n


def get_num_threads():
    """Threads the kernels and BLAS use (set by :func:`set_num_threads` or the env)."""
    if _state["n"] is None:
        n = env_threads()
        set_num_threads(n if n is not None else max_threads())
    return _state["n"]
