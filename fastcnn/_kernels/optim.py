"""Numba kernel of the fused Adam update (flat arrays, fixed chunks of elements per iteration).

Every element is updated on its own with the reference's float32 operations in the
reference's order (``fastmath`` is off: no fused multiply-add; the square root is IEEE), so
the result matches :func:`fastcnn._ref.adam_step` bit for bit, for any thread count.
"""
import numpy as np
from numba import prange

from ._parallel import parallel_kernel
from .conv import _u

_CHUNK = 1 << 14


@parallel_kernel
def _adam(p, g, m, v, lr_t, c1, b2, c2, eps, bc2):
    # All scalars are float32, so every operation below is a float32 operation.
    size = p.shape[0]
    for blk in prange((size + _CHUNK - 1) // _CHUNK):
        lo = blk * _CHUNK
        hi = min(lo + _CHUNK, size)
        for e in range(lo, hi):
            gi = g[_u(e)]
            mi = m[_u(e)]
            mi = mi + c1 * (gi - mi)
            vi = v[_u(e)] * b2 + (gi * gi) * c2
            m[_u(e)] = mi
            v[_u(e)] = vi
            p[_u(e)] = p[_u(e)] - (mi / (np.sqrt(vi) / bc2 + eps)) * lr_t


def _flat_out(a, name):
    if not a.flags.c_contiguous:  # reshape would copy and the update would be lost
        raise ValueError(f"adam_step: {name} must be C-contiguous")
    return a.reshape(-1)


def adam_step(p, g, m, v, lr_t, beta1, beta2, eps, bc2_sqrt):
    """One ``torch.optim.Adam`` update in place (see :func:`fastcnn._ref.adam_step`)."""
    f = np.float32
    pf, mf, vf = _flat_out(p, "p"), _flat_out(m, "m"), _flat_out(v, "v")
    gf = g.reshape(-1)
    if not (gf.shape[0] == pf.shape[0] == mf.shape[0] == vf.shape[0]):
        raise ValueError("adam_step: p, g, m and v differ in size")
    _adam(pf, gf, mf, vf, f(lr_t), f(1.0 - beta1), f(beta2), f(1.0 - beta2), f(eps), f(bc2_sqrt))
