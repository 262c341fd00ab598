"""Numba kernels of the ReLU activation (any shape, flattened to 1-D by the wrappers)."""
import numpy as np
from numba import prange

from .. import _backend, _config
from ._common import _u, chunk, parallel_kernel


@parallel_kernel
def _relu_forward(x, y, blk):
    # ``np.maximum(x, 0)``: NaN propagates, -0.0 gives +0.0.
    m = x.shape[0]
    for t in prange((m + blk - 1) // blk):
        lo, hi = chunk(t, m, blk)
        for e in range(lo, hi):
            v = x[_u(e)]
            y[_u(e)] = v if (v > 0) | (v != v) else np.float32(0.0)


@parallel_kernel
def _relu_backward(gy, y, gx, blk):
    # ``gy * (y > 0)``: multiplies by 1 or 0 (so NaN/inf gradients behave as in NumPy).
    m = gy.shape[0]
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for t in prange((m + blk - 1) // blk):
        lo, hi = chunk(t, m, blk)
        for e in range(lo, hi):
            gx[_u(e)] = gy[_u(e)] * (one if y[_u(e)] > 0 else zero)


def relu_forward(x, y):
    """``y = max(x, 0)``; x, y : any shape, float32, C-contiguous (y may be x)."""
    _backend.check_relu_forward(x, y)
    _relu_forward(x.reshape(-1), y.reshape(-1), _config.ELEMWISE_BLOCK)


def relu_backward(gy, y, gx):
    """``gx = gy * (y > 0)``; gy, y IN; gx OUT (may be gy)."""
    _backend.check_relu_backward(gy, y, gx)
    _relu_backward(gy.reshape(-1), y.reshape(-1), gx.reshape(-1), _config.ELEMWISE_BLOCK)
