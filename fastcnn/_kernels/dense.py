"""Numba kernels of the dense layer: blocks of a GEMM in one thread pool.

Each ``prange`` iteration multiplies one block with a single-threaded SGEMM from SciPy's BLAS
(``np.dot``; see ``fastcnn._threads.init_gemm_blas``), so a training step runs on the
kernels' threads only.  Contracts: :mod:`fastcnn._ref`.
"""
import numpy as np
from numba import prange

from ._parallel import parallel_kernel


@parallel_kernel
def linear_forward(x, w, bias, nblocks, y):
    """``y = x @ w.T + bias`` by blocks of rows (see :func:`fastcnn._ref.linear_forward`)."""
    n = x.shape[0]
    out = w.shape[0]
    wt = w.T
    for t in prange(nblocks):
        a = t * n // nblocks
        b = (t + 1) * n // nblocks
        if b > a:
            yb = y[a:b]
            np.dot(x[a:b], wt, yb)
            for i in range(b - a):
                for o in range(out):
                    yb[i, o] += bias[o]


@parallel_kernel
def linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx):
    """Gradients by blocks of output features and of rows
    (see :func:`fastcnn._ref.linear_backward`)."""
    n, out = gy.shape
    for t in prange(nblocks):
        o0 = t * out // nblocks
        o1 = (t + 1) * out // nblocks
        if o1 > o0:
            for o in range(o0, o1):
                s = 0.0
                for i in range(n):
                    v = gy[i, o]
                    gyt[o, i] = v
                    s += np.float64(v)
                gb[o] = np.float32(s)
            np.dot(gyt[o0:o1], x, gw[o0:o1])
        a = t * n // nblocks
        b = (t + 1) * n // nblocks
        if input_grad and b > a:
            np.dot(gy[a:b], w, gx[a:b])
