"""Keep freed memory for reuse: glibc heap thresholds and NumPy's handler for large blocks
(``fastcnn._heapcache``), set once at import (docs/PERFORMANCE.md, "Freed memory is kept").

A training step frees its activations and gradients at the end and allocates the same sizes
again in the next step.  With glibc's default (adaptive) thresholds the freed top of the heap
is returned to the system and every step faults its pages in again; blocks of 32 MB and more
(large-batch inference) glibc always maps afresh, so NumPy's handler keeps those.
"""
from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

from . import _config

if TYPE_CHECKING:  # (NumPy is imported when first needed: fastcnn imports this module before it)
    import numpy as np

M_TRIM_THRESHOLD = -1  # (mallopt parameters, glibc's malloc.h)
M_MMAP_THRESHOLD = -3

MODES = ("keep", "system")

#: What :func:`configure` did: ``"keep"`` (thresholds set), ``"system"`` (asked not to),
#: ``"environment"`` (the user's ``MALLOC_*_`` variables rule), or ``"unsupported: <why>"``.
state = "not configured"
#: Whether NumPy's large freed data blocks are kept (``fastcnn._heapcache``): ``"on"``, or
#: ``"off"`` / ``"off: <why>"``.
array_cache = "off"


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return False


def configure() -> str:
    """Set the thresholds and keep NumPy's large freed blocks unless ``FASTCNN_HEAP=system`` or
    glibc's own ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` are set; returns (and
    records in :data:`state` and :data:`array_cache`) what was done."""
    global state
    mode = os.environ.get(_config.ENV_HEAP, "").strip() or "keep"
    if mode not in MODES:
        raise ValueError(f"{_config.ENV_HEAP} must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "system":
        state = "system"
    elif any(v in os.environ for v in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        state = "environment"
    elif not _glibc():
        state = "unsupported: not glibc"
    else:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (AttributeError, OSError) as exc:
            state = f"unsupported: no mallopt ({exc})"
            return state
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        # (The mmap threshold first: setting either fixes both, ending glibc's adaptation.)
        ok = (mallopt(M_MMAP_THRESHOLD, _config.HEAP_MMAP_THRESHOLD) == 1
              and mallopt(M_TRIM_THRESHOLD, _config.HEAP_TRIM_THRESHOLD) == 1)
        state = "keep" if ok else "unsupported: mallopt refused the thresholds"
        if ok:
            _keep_large_arrays()
    return state


def _keep_large_arrays() -> None:
    """Install NumPy's data-memory handler that keeps freed blocks above glibc's mmap ceiling
    (in the importing thread's context: NumPy's handler is a context variable)."""
    global array_cache
    try:
        from . import _heapcache  # type: ignore[attr-defined]
    except ImportError as exc:  # (a source checkout that was never built)
        array_cache = f"off: {exc}"
        return
    try:
        _heapcache.install(_config.HEAP_CACHE_MIN, _config.HEAP_CACHE_BYTES, _config.HEAP_CACHE_SLACK_PCT)
    except ValueError as exc:  # (someone else's NumPy memory handler: left alone)
        array_cache = f"off: {exc}"
        return
    array_cache = "on"


def release() -> int:
    """Return the memory fastcnn keeps for reuse to the system: the large-array cache's blocks,
    then the free pages of glibc's heap (``malloc_trim``).  Returns the cache's bytes freed."""
    freed = 0
    if array_cache == "on":
        from . import _heapcache  # type: ignore[attr-defined]

        freed = int(_heapcache.release())
    if state == "keep":
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (AttributeError, OSError):  # (a C library without it: nothing more to return)
            pass
    return freed


def zeros_aligned(shape: tuple[int, ...], align: int = _config.GRAD_ALIGN) -> np.ndarray:
    """A C-contiguous float32 array of zeros whose data start ``align`` bytes aligned (a view of
    a slightly larger array)."""
    import numpy as np

    n = int(np.prod(shape, dtype=np.int64))
    raw = np.zeros(n + align // 4, np.float32)
    off = (-raw.ctypes.data % align) // 4
    return raw[off:off + n].reshape(shape)
