"""Numba backend: the kernel primitives of :mod:`fastcnn._ref`, compiled with ``numba.njit``.

Same names, signatures, layouts and contracts as the NumPy reference; callers
(:mod:`fastcnn.functional`) validate arguments, so the kernels do not.
"""
from .._backend import PRIMITIVES
from .activation import relu_backward, relu_forward
from .conv import (cnp_to_ncp_bias, col2im, conv2d_backward_images, conv2d_forward_images, im2col,
                   ncp_to_cnp_sum)
# TEMPORARY: replaced by the Numba kernels at merge
from .._ref import (conv2d_direct_backward_data, conv2d_direct_backward_weight,  # noqa: F401
                    conv2d_direct_forward)
from .dense import linear_backward, linear_forward
from .loss import softmax_xent_backward, softmax_xent_forward
from .norm import batchnorm_backward_apply, batchnorm_backward_reduce, batchnorm_forward, batchnorm_stats
from .optim import adam_step
from .pool import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward

__all__ = list(PRIMITIVES)  # the registry's list: the one place primitives are named
