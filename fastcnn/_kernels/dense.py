"""Numba kernels of the dense layer: blocks of a GEMM in one thread pool (docs/PERFORMANCE.md, 1).

Each ``prange`` iteration multiplies one block of features with a single-threaded SGEMM from
SciPy's BLAS (:func:`._common.gemm`: the Cython kernels' calls, the same bytes).  Blocks are
of output features (``y``, ``gw``) or input features (``gx``), so each thread packs only its
part of the weights, and their bounds depend on the shapes and ``nblocks`` only: the same
SGEMM calls, hence the same bytes, at any thread count.
Contracts: :mod:`fastcnn._ref`.
"""
import numpy as np
from numba import prange

from .. import _backend
from ._common import SGEMM, block, gemm, parallel_kernel


@parallel_kernel
def _linear_forward(x, w, bias, nblocks, y, sgemm):
    _backend.sizes_linear_forward(x.shape, w.shape, bias.shape, nblocks, y.shape)
    n, k = x.shape
    out = w.shape[0]
    for t in prange(nblocks):
        o0, o1 = block(t, out, nblocks)
        if o1 > o0:  # y[:, o0:o1] = x @ w[o0:o1]^T + bias[o0:o1]
            gemm(sgemm, False, True, n, o1 - o0, k, x.ctypes.data, k, w.ctypes.data + 4 * o0 * k, k,
                 y.ctypes.data + 4 * o0, out)
            for i in range(n):
                for o in range(o0, o1):
                    y[i, o] = y[i, o] + bias[o]


def linear_forward(x, w, bias, nblocks, y):
    """``y = x @ w.T + bias`` by blocks of output features
    (see :func:`fastcnn._ref.linear_forward`)."""
    _linear_forward(x, w, bias, nblocks, y, SGEMM)


@parallel_kernel
def _linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx, sgemm):
    _backend.sizes_linear_backward(gy.shape, x.shape, w.shape, input_grad, nblocks, gyt.shape, gw.shape,
                                   gb.shape, gx.shape)
    n, out = gy.shape
    k = x.shape[1]
    for t in prange(nblocks):
        o0, o1 = block(t, out, nblocks)
        if o1 > o0:  # gyt[o0:o1] = gy[:, o0:o1]^T and the bias sums (float64, in row order)
            for o in range(o0, o1):
                s = 0.0
                for i in range(n):
                    v = gy[i, o]
                    gyt[o, i] = v
                    s += np.float64(v)
                gb[o] = np.float32(s)
            gemm(sgemm, False, False, o1 - o0, k, n, gyt.ctypes.data + 4 * o0 * n, n, x.ctypes.data, k,
                 gw.ctypes.data + 4 * o0 * k, k)
        i0, i1 = block(t, k, nblocks)
        if input_grad and i1 > i0:  # gx[:, i0:i1] = gy @ w[:, i0:i1]
            gemm(sgemm, False, False, n, i1 - i0, out, gy.ctypes.data, out, w.ctypes.data + 4 * i0, k,
                 gx.ctypes.data + 4 * i0, k)


def linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx):
    """Gradients by blocks of output features (``gw``, ``gb``) and of input features (``gx``)
    (see :func:`fastcnn._ref.linear_backward`)."""
    _linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx, SGEMM)
