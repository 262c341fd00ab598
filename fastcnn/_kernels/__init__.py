"""Numba backend: the kernel primitives of :mod:`fastcnn._ref`, compiled with ``numba.njit``.

Same names, signatures, layouts and contracts as the NumPy reference, collected from the
modules of ``_config.KERNEL_MODULES``.
"""
from .._backend import PRIMITIVES, collect_primitives

globals().update(collect_primitives(__name__))

__all__ = list(PRIMITIVES)  # the registry's list: the one place primitives are named
