"""Numba kernels of the ReLU activation (any shape, flattened to 1-D by the wrappers)."""
import numpy as np
from numba import prange

from ._parallel import parallel_kernel
from .conv import _u

_CHUNK = 1 << 14


@parallel_kernel
def _relu_forward(x, y):
    # ``np.maximum(x, 0)``: NaN propagates, -0.0 gives +0.0.
    m = x.shape[0]
    for blk in prange((m + _CHUNK - 1) // _CHUNK):
        a = blk * _CHUNK
        b = min(a + _CHUNK, m)
        for e in range(a, b):
            v = x[_u(e)]
            y[_u(e)] = v if (v > 0) | (v != v) else np.float32(0.0)


@parallel_kernel
def _relu_backward(gy, y, gx):
    # ``gy * (y > 0)``: multiplies by 1 or 0 (so NaN/inf gradients behave as in NumPy).
    m = gy.shape[0]
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for blk in prange((m + _CHUNK - 1) // _CHUNK):
        a = blk * _CHUNK
        b = min(a + _CHUNK, m)
        for e in range(a, b):
            gx[_u(e)] = gy[_u(e)] * (one if y[_u(e)] > 0 else zero)


def relu_forward(x, y):
    """``y = max(x, 0)``; x, y : any shape, float32, C-contiguous (y may be x)."""
    _relu_forward(x.reshape(-1), y.reshape(-1))


def relu_backward(gy, y, gx):
    """``gx = gy * (y > 0)``; gy, y IN; gx OUT (may be gy)."""
    _relu_backward(gy.reshape(-1), y.reshape(-1), gx.reshape(-1))
