"""Numba backend: the kernel primitives of :mod:`fastcnn._ref`, compiled with ``numba.njit``.

Same names, signatures, layouts and contracts as the NumPy reference, collected from the
modules of ``_config.KERNEL_MODULES``.
"""
from .._backend import PRIMITIVES, collect_primitives
from ._common import drop_stale_cache

globals().update(collect_primitives(__name__))
drop_stale_cache()  # before any kernel is loaded from the cache (at its first call)

__all__ = list(PRIMITIVES)  # the registry's list: the one place primitives are named
