"""Helpers shared by the test modules (import as ``from utils import ...``)."""
import numpy as np


def numgrad(f, x, eps=1e-6):
    """Central finite differences of the scalar ``f()`` with respect to every element of the
    float64 array ``x`` (changed in place and restored)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g
