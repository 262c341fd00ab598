"""Cython backend: the kernel primitives of :mod:`fastcnn._ref`, compiled with OpenMP.

The compiled modules are built by ``setup.py`` from ``src_ext/*.pyx``, one per name in
``_config.KERNEL_MODULES``, and their primitives collected here.  When they are missing (a
source checkout that was never built) importing this package raises ``ImportError``, and the
backend registry reports the ``"cython"`` backend as unavailable.

``_omp`` holds the thread control (``set_num_threads``, ``get_max_threads``) and the build
information (``OPENMP``, ``COMPILE_ARGS``, ``LINK_ARGS``).
"""
from .._backend import PRIMITIVES, collect_primitives
from . import _omp

globals().update(collect_primitives(__name__))

OPENMP = _omp.OPENMP

__all__ = list(PRIMITIVES)  # the registry's list: the one place primitives are named
