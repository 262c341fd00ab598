"""The one threads knob: Numba, OpenMP (Cython kernels) and BLAS together."""
import os

from ._config import env_threads

_state = {"n": None, "blas_limiter": None, "forked": False}

#: SciPy's BLAS, which the kernels call from their own threads (``np.dot`` in Numba,
#: ``scipy.linalg.cython_blas`` in Cython).  See :func:`init_gemm_blas`.
_gemm_blas = {"filepath": None, "why": "not initialised"}


def init_gemm_blas():
    """Run SciPy's BLAS single-threaded, for the GEMMs the convolution and dense kernels call
    from their own threads (the one-thread-pool design: docs/PERFORMANCE.md, sections 1, 3).

    SciPy's OpenBLAS (the one importing ``scipy.linalg.cython_blas`` loads, or, if SciPy was
    imported earlier, the one inside SciPy's installation) is limited to one thread
    (threadpoolctl) and :func:`set_num_threads` leaves it there; NumPy's BLAS, a separate
    library in the wheels, keeps its threads.  If there is no such separate OpenBLAS (e.g. one
    BLAS shared with NumPy), or SciPy or threadpoolctl cannot be imported, or
    ``FASTCNN_NO_THREAD_DEFAULTS=1``, :func:`gemm_blas_single` is False and convolutions and
    dense layers take the two-pool path with NumPy's multi-threaded BLAS.  Never raises.
    """
    if _gemm_blas["why"] != "not initialised":
        return
    if os.environ.get("FASTCNN_NO_THREAD_DEFAULTS", "") in ("1", "true", "yes"):
        _gemm_blas["why"] = "FASTCNN_NO_THREAD_DEFAULTS is set"
        return
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError as exc:  # a dependency, but keep ``import fastcnn`` working without it
        _gemm_blas["why"] = f"threadpoolctl cannot be imported ({exc})"
        return
    before = {lc.filepath for lc in ThreadpoolController().lib_controllers}
    try:
        import scipy
        import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS)
    except ImportError as exc:
        _gemm_blas["why"] = f"SciPy's BLAS cannot be imported ({exc})"
        return
    scipy_root = os.path.dirname(os.path.dirname(os.path.realpath(scipy.__file__)))
    libs = [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
    # Loaded just now, or (SciPy imported before fastcnn) shipped in SciPy's own directories.
    mine = [lc for lc in libs if lc.filepath not in before] or [
        lc for lc in libs
        if os.path.realpath(lc.filepath).startswith(scipy_root + os.sep)
        and os.path.relpath(os.path.realpath(lc.filepath), scipy_root).startswith("scipy")]
    if len(mine) == 1 and mine[0].internal_api == "openblas":
        mine[0].set_num_threads(1)
        _gemm_blas.update(filepath=mine[0].filepath, why="")
    else:
        _gemm_blas["why"] = "SciPy's BLAS is not a separate OpenBLAS: " + repr(
            [(lc.internal_api, lc.filepath) for lc in mine])


def conv_path_description():
    """One line: which convolution path the compiled backends take, and why."""
    if gemm_blas_single():
        return ("one thread pool: convolutions per image, dense layers by blocks (SciPy's BLAS "
                "single-threaded: " + _gemm_blas["filepath"] + ")")
    return "two thread pools: chunked im2col + NumPy's multi-threaded SGEMM (" + _gemm_blas["why"] + ")"


def gemm_blas_single():
    """Whether SciPy's BLAS runs single-threaded for the per-image convolution kernels."""
    return _gemm_blas["filepath"] is not None


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
    if _state["forked"] and n > 1:
        import warnings

        warnings.warn(f"set_num_threads({n}) in a process created by fork(): fastcnn's kernels run on one "
                      "thread here (OpenMP cannot be used after fork; start workers with the 'spawn' or "
                      "'forkserver' method to use threads, docs/ROBUSTNESS.md)", RuntimeWarning, stacklevel=2)
        n = 1
    if numba is not None:
        numba.set_num_threads(n)
    try:
        from ._ext import _omp

        _omp.set_num_threads(n)
    except ImportError:
        pass
    _state["n"] = n
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # BLAS keeps its own default thread count
        return
    # The limiter applies on construction and stays in force until restored; keep it so
    # a later call can restore before applying its own limit.  SciPy's BLAS, when the
    # kernels call it from their own threads, stays at one thread.
    if _state["blas_limiter"] is not None:
        _state["blas_limiter"].restore_original_limits()
    ctl = ThreadpoolController()
    others = [lc.filepath for lc in ctl.lib_controllers
              if lc.user_api == "blas" and lc.filepath != _gemm_blas["filepath"]]
    _state["blas_limiter"] = ctl.select(filepath=others).limit(limits=n) if others else None


def get_num_threads():
    """Threads the kernels and BLAS use (set by :func:`set_num_threads` or the env)."""
    if _state["n"] is None:
        n = env_threads()
        set_num_threads(n if n is not None else max_threads())
    return _state["n"]


def in_forked_child():
    """Whether this process was created by ``fork()`` from a process that had imported fastcnn."""
    return _state["forked"]


def _after_fork_in_child():
    """Run every kernel on one thread, without entering a thread pool, in a forked child.

    GNU OpenMP's thread pool and Numba's OpenMP layer do not survive ``fork()``: the child's
    first parallel region waits forever for threads that were not copied (Cython) or aborts
    (Numba).  The child therefore takes the serial paths only: the Cython kernels get one
    thread (``_threads_for`` then never starts a team) and the Numba dispatch
    (``_kernels._common``) calls the serial compilations, whatever the work size.  Results
    are the same bytes as at one thread in the parent.  Runs between ``fork()`` and the return
    to Python in the child, so it only sets numbers.
    """
    from . import _config

    _state["forked"] = True
    _state["n"] = 1
    _config.PAR_MIN_WORK = 1 << 62  # Numba: serial compilations only
    try:
        from ._ext import _omp
    except ImportError:
        return
    try:
        _omp.set_num_threads(1)
    except Exception:  # pragma: no cover - never let a fork handler raise
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
