"""Cython backend: the kernel primitives of :mod:`fastcnn._ref`, compiled with OpenMP.

The compiled modules are built by ``setup.py`` from ``src_ext/*.pyx``.  When they are missing
(a source checkout that was never built) importing this package raises ``ImportError``, and the
backend registry reports the ``"cython"`` backend as unavailable.

``_omp`` holds the thread control (``set_num_threads``, ``get_max_threads``) and the build
information (``OPENMP``, ``COMPILE_ARGS``, ``LINK_ARGS``).
"""
from . import _omp
from .._backend import PRIMITIVES
from .activation import relu_backward, relu_forward
from .conv import (cnp_to_ncp_bias, col2im, conv2d_backward_images, conv2d_forward_images, im2col,
                   ncp_to_cnp_sum)
from .conv_direct import (conv2d_direct_backward_data, conv2d_direct_backward_weight,
                          conv2d_direct_forward)
from .dense import linear_backward, linear_forward
from .loss import softmax_xent_backward, softmax_xent_forward
from .norm import batchnorm_backward_apply, batchnorm_backward_reduce, batchnorm_forward, batchnorm_stats
from .optim import adam_step
from .pool import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward

OPENMP = _omp.OPENMP

__all__ = list(PRIMITIVES)  # the registry's list: the one place primitives are named
