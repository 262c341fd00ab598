"""Numba kernels of the ReLU activation and of the sum of two arrays (any shape, flattened to
1-D by the wrappers)."""
import numpy as np
from numba import prange

from .. import _backend, _config
from ._common import _u, chunk, flat, parallel_kernel


@parallel_kernel
def _relu_forward(x, y, blk):
    # ``np.maximum(x, 0)``: NaN propagates, -0.0 gives +0.0.
    _backend.sizes_relu_forward(x.size, y.size)
    m = x.size
    for t in prange((m + blk - 1) // blk):
        lo, hi = chunk(t, m, blk)
        for e in range(lo, hi):
            v = x[_u(e)]
            y[_u(e)] = v if (v > 0) | (v != v) else np.float32(0.0)


@parallel_kernel
def _relu_backward(gy, y, gx, blk, g2):
    # ``gy * (y > 0)``, with ``g2`` ``(gy + g2) * (y > 0)``: multiplies by 1 or 0 (so NaN/inf
    # gradients behave as in NumPy).
    m = gy.size
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for t in prange((m + blk - 1) // blk):
        lo, hi = chunk(t, m, blk)
        if g2 is None:
            for e in range(lo, hi):
                gx[_u(e)] = gy[_u(e)] * (one if y[_u(e)] > 0 else zero)
        else:
            for e in range(lo, hi):
                gx[_u(e)] = (gy[_u(e)] + g2[_u(e)]) * (one if y[_u(e)] > 0 else zero)


@parallel_kernel
def _add(a, b, y, blk, relu):
    # ``a + b``, then with ``relu`` the rule of _relu_forward.
    m = a.size
    for t in prange((m + blk - 1) // blk):
        lo, hi = chunk(t, m, blk)
        for e in range(lo, hi):
            v = a[_u(e)] + b[_u(e)]
            y[_u(e)] = v if (not relu) | (v > 0) | (v != v) else np.float32(0.0)


def _add_arrays(a, b, y, relu, op):
    a, b, y = flat(a, "a", op), flat(b, "b", op), flat(y, "y", op)
    (_backend.sizes_add_relu_forward if relu else _backend.sizes_add_forward)(a.size, b.size, y.size)
    _add(a, b, y, _config.ELEMWISE_BLOCK, relu)


def add_forward(a, b, y):
    """``y = a + b``; a, b, y : any shape, the same size, float32, C-contiguous (y may be a or b)."""
    _add_arrays(a, b, y, False, "add_forward")


def add_relu_forward(a, b, y):
    """``y = max(a + b, 0)``; as :func:`add_forward`."""
    _add_arrays(a, b, y, True, "add_relu_forward")


def add_relu_backward(ga, gb, y, gx):
    """``gx = (ga + gb) * (y > 0)``; ga, gb, y IN; gx OUT (may be ga or gb)."""
    op = "add_relu_backward"
    ga, gb, y, gx = flat(ga, "ga", op), flat(gb, "gb", op), flat(y, "y", op), flat(gx, "gx", op)
    _backend.sizes_add_relu_backward(ga.size, gb.size, y.size, gx.size)
    _relu_backward(ga, y, gx, _config.ELEMWISE_BLOCK, gb)


def relu_forward(x, y):
    """``y = max(x, 0)``; x, y : any shape, float32, C-contiguous (y may be x)."""
    _relu_forward(flat(x, "x", "relu_forward"), flat(y, "y", "relu_forward"), _config.ELEMWISE_BLOCK)


def relu_backward(gy, y, gx):
    """``gx = gy * (y > 0)``; gy, y IN; gx OUT (may be gy)."""
    op = "relu_backward"
    gy, y, gx = flat(gy, "gy", op), flat(y, "y", op), flat(gx, "gx", op)
    _backend.sizes_relu_backward(gy.size, y.size, gx.size)
    _relu_backward(gy, y, gx, _config.ELEMWISE_BLOCK, None)
