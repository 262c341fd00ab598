"""One place for compilation and threading flags of the compiled kernels."""
import os

#: Options every parallel Numba kernel is compiled with.  ``fastmath`` stays off so that the
#: compiled kernels follow the same IEEE rounding as the NumPy reference (reductions keep a
#: fixed order, which the determinism guarantee relies on).
NUMBA_PARALLEL = dict(parallel=True, cache=True, nogil=True, fastmath=False, error_model="numpy")
#: Options for the small serial helpers.
NUMBA_SERIAL = dict(parallel=False, cache=True, nogil=True, fastmath=False, error_model="numpy")

#: Environment variables read at import time.
ENV_BACKEND = "FASTCNN_BACKEND"
ENV_THREADS = "FASTCNN_NUM_THREADS"
ENV_DATA = "FASTCNN_DATA"

BACKENDS = ("numpy", "numba", "cython")


def env_threads():
    """Thread count requested through ``FASTCNN_NUM_THREADS`` (None when unset)."""
    value = os.environ.get(ENV_THREADS)
    if value is None or value.strip() == "":
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{ENV_THREADS} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{ENV_THREADS} must be a positive integer, got {value!r}")
    return n

#: Below this many elements of work a kernel runs serially: waking the other threads costs
#: more than it saves (batch-1 training).  The Cython kernels use the same number
#: (``_PAR_MIN_WORK`` in ``src_ext/_common.pxi``).
PAR_MIN_WORK = 16384
