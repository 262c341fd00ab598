"""Numba kernels of the dense layer: blocks of a GEMM in one thread pool (docs/PERFORMANCE.md, 1).

Each ``prange`` iteration multiplies one block of features with a single-threaded SGEMM from
SciPy's BLAS (``np.dot``).  Blocks are of output features (``y``, ``gw``) or input features
(``gx``), so each thread packs only its part of the weights, and their bounds depend on the
shapes and ``nblocks`` only: the same SGEMM calls, hence the same bytes, at any thread count.
Contracts: :mod:`fastcnn._ref`.
"""
import numpy as np
from numba import prange

from .. import _backend
from ._common import block, parallel_kernel


@parallel_kernel
def linear_forward(x, w, bias, nblocks, y):
    """``y = x @ w.T + bias`` by blocks of output features
    (see :func:`fastcnn._ref.linear_forward`)."""
    _backend.sizes_linear_forward(x.shape, w.shape, bias.shape, nblocks, y.shape)
    n = x.shape[0]
    out = w.shape[0]
    for t in prange(nblocks):
        o0, o1 = block(t, out, nblocks)
        if o1 > o0:
            yb = np.empty((n, o1 - o0), np.float32)
            np.dot(x, w[o0:o1].T, yb)
            for i in range(n):
                for o in range(o0, o1):
                    y[i, o] = yb[i, o - o0] + bias[o]


@parallel_kernel
def linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx):
    """Gradients by blocks of output features (``gw``, ``gb``) and of input features (``gx``)
    (see :func:`fastcnn._ref.linear_backward`)."""
    _backend.sizes_linear_backward(gy.shape, x.shape, w.shape, input_grad, nblocks, gyt.shape, gw.shape,
                                   gb.shape, gx.shape)
    n, out = gy.shape
    k = x.shape[1]
    for t in prange(nblocks):
        o0, o1 = block(t, out, nblocks)
        if o1 > o0:
            for o in range(o0, o1):
                s = 0.0
                for i in range(n):
                    v = gy[i, o]
                    gyt[o, i] = v
                    s += np.float64(v)
                gb[o] = np.float32(s)
            np.dot(gyt[o0:o1], x, gw[o0:o1])
        i0, i1 = block(t, k, nblocks)
        if input_grad and i1 > i0:
            # gx[:, i0:i1] = gy @ w[:, i0:i1]; the weight columns copied contiguous for np.dot
            wb = np.empty((out, i1 - i0), np.float32)
            for o in range(out):
                for j in range(i0, i1):
                    wb[o, j - i0] = w[o, j]
            gxb = np.empty((n, i1 - i0), np.float32)
            np.dot(gy, wb, gxb)
            for i in range(n):
                for j in range(i0, i1):
                    gx[i, j] = gxb[i, j - i0]
