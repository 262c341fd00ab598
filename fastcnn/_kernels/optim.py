"""Numba kernels of the fused Adam and SGD updates (C-contiguous arrays of any shape, flattened
in the kernel; fixed chunks of elements per iteration).

Every element is updated on its own with the reference's float32 operations in the
reference's order (``fastmath`` is off: no fused multiply-add; the square root is IEEE), so
the results match :func:`fastcnn._ref.adam_step` and :func:`fastcnn._ref.sgd_step` bit for
bit, for any thread count.
"""
import numpy as np
from numba import prange

from .. import _backend, _config
from ._common import _u, chunk, not_contiguous, parallel_kernel


@parallel_kernel
def _adam(p_, g_, m_, v_, lr_t, c1, b2, c2, eps, bc2, blk):
    # The arrays flattened and the scalars rounded to float32 here (not by the caller:
    # cheaper at batch 1), so every operation below is a float32 operation.
    p, g, m, v = p_.reshape(p_.size), g_.reshape(g_.size), m_.reshape(m_.size), v_.reshape(v_.size)
    f = np.float32
    lr_t, c1, b2, c2, eps, bc2 = f(lr_t), f(c1), f(b2), f(c2), f(eps), f(bc2)
    size = p.shape[0]
    _backend.sizes_adam_step(size, g.size, m.size, v.size, lr_t, c1, b2, eps, bc2)
    for t in prange((size + blk - 1) // blk):
        lo, hi = chunk(t, size, blk)
        for e in range(lo, hi):
            gi = g[_u(e)]
            mi = m[_u(e)]
            mi = mi + c1 * (gi - mi)
            vi = v[_u(e)] * b2 + (gi * gi) * c2
            m[_u(e)] = mi
            v[_u(e)] = vi
            p[_u(e)] = p[_u(e)] - (mi / (np.sqrt(vi) / bc2 + eps)) * lr_t


def adam_step(p, g, m, v, lr_t, beta1, beta2, eps, bc2_sqrt):
    """One ``torch.optim.Adam`` update in place (see :func:`fastcnn._ref.adam_step`)."""
    if not (p.flags.c_contiguous and g.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
        not_contiguous("adam_step", p=p, g=g, m=m, v=v)
    f = float
    _adam(p, g, m, v, f(lr_t), f(1.0 - beta1), f(beta2), f(1.0 - beta2), f(eps), f(bc2_sqrt), _config.ELEMWISE_BLOCK)


@parallel_kernel
def _sgd(p_, g_, buf_, lr, wd, mom, c, use_wd, use_mom, nesterov, first, blk):
    # The arrays flattened and the scalars rounded to float32 here (as _adam's).
    p, g, buf = p_.reshape(p_.size), g_.reshape(g_.size), buf_.reshape(buf_.size)
    f = np.float32
    lr, wd, mom, c = f(lr), f(wd), f(mom), f(c)
    size = p.shape[0]
    _backend.sizes_sgd_step(size, g.size, buf.size, lr, wd, use_mom, c, nesterov, first)
    for t in prange((size + blk - 1) // blk):
        lo, hi = chunk(t, size, blk)
        for e in range(lo, hi):
            d = g[_u(e)]
            if use_wd:
                d = d + wd * p[_u(e)]
            if use_mom:
                b = d if first else buf[_u(e)] * mom + c * d
                buf[_u(e)] = b
                d = d + mom * b if nesterov else b
            p[_u(e)] = p[_u(e)] - lr * d


def sgd_step(p, g, buf, lr, weight_decay, momentum, dampening, nesterov, first):
    """One ``torch.optim.SGD`` update in place (see :func:`fastcnn._ref.sgd_step`)."""
    if not (p.flags.c_contiguous and g.flags.c_contiguous and buf.flags.c_contiguous):
        not_contiguous("sgd_step", p=p, g=g, buf=buf)
    f = float
    _sgd(p, g, buf, f(lr), f(weight_decay), f(momentum), f(1.0 - dampening), weight_decay != 0, momentum != 0,
         bool(nesterov), bool(first), _config.ELEMWISE_BLOCK)
