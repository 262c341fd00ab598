"""Numba kernels of the fused Adam and SGD updates: one compiled call per optimizer step updates
every parameter (sequences of C-contiguous arrays of any shape; fixed chunks of elements per
iteration).

The kernel takes one table of the arrays' addresses and sizes (:func:`_table`) instead of the
arrays: Numba converts each array argument in ~0.17 us, a table of any length in one
conversion.  The table is built and its arrays checked once per sequence objects: an optimizer
hands the same tuples every step (docs/PERFORMANCE.md, section 5), and the table is kept with
them, so the addresses stay valid while it is used.  Every element is updated on its own with
the reference's float32 operations in the reference's order (``fastmath`` is off: no fused
multiply-add; the square root is IEEE), so the results match :func:`fastcnn._ref.adam_step` and
:func:`fastcnn._ref.sgd_step` bit for bit, for any thread count.
"""
import operator

import numpy as np
from numba import carray, njit, prange

from .. import _backend, _config
from ._common import _u, chunk, f32_ptr, helper

_F32 = np.dtype(np.float32)
_LAST: dict = {}  # key -> (the sequences last checked: tuples, and their table)


def _table(op, key, seqs, names, written, sizes):
    """``(n, len(seqs) + 1)`` int64: per parameter ``i`` the addresses of the ``i``-th arrays
    of the equal-length sequences ``seqs``, then the size, after checking each array: a float32
    NumPy array, C-contiguous (the kernel updates it as a flat run), writable where ``written``
    (where not even read, ``None``: address 0), sizes by ``sizes(*sizes of the i-th arrays)``.
    The table is kept with its sequences (under ``key``) when they are tuples (immutable: the
    same objects hold the same arrays, which they keep alive); :func:`_kept` finds it."""
    n = len(seqs[0])
    for name, s in zip(names, seqs):
        if len(s) != n:
            raise ValueError(f"{op}: {len(s)} {name} for {n} {names[0]}")
    table = np.zeros((n, len(seqs) + 1), np.int64)
    for j, (name, s, w) in enumerate(zip(names, seqs, written)):
        if w is None:
            continue
        for i, a in enumerate(s):
            if not (type(a) is np.ndarray and a.dtype == _F32 and a.flags.c_contiguous and a.flags.aligned):
                got = f"{type(a).__name__} {getattr(a, 'dtype', '')}"
                if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
                    got += " not C-contiguous"
                raise ValueError(f"{op}: {name}[{i}] must be a C-contiguous float32 array, got {got}")
            if w and not a.flags.writeable:
                raise ValueError(f"{op}: {name}[{i}] is read-only; it is updated in place")
            table[i, j] = a.ctypes.data
    for i, arrays in enumerate(zip(*seqs)):
        sizes(*(getattr(a, "size", 0) for a in arrays))
        table[i, -1] = arrays[0].size
    if all(type(s) is tuple for s in seqs):
        _LAST[key] = (seqs, table)
    else:  # (kept for the call only)
        _LAST.pop(key, None)
    return table


def _kept(key, *seqs):
    """The table :func:`_table` kept for these very sequence objects, or None."""
    last = _LAST.get(key)
    return last[1] if last is not None and all(map(operator.is_, seqs, last[0])) else None


@helper
def _adam_run(p, g, m, v, lo, hi, lr_t, c1, b2, c2, eps, bc2):
    for e in range(lo, hi):
        gi = g[_u(e)]
        mi = m[_u(e)]
        mi = mi + c1 * (gi - mi)
        vi = v[_u(e)] * b2 + (gi * gi) * c2
        m[_u(e)] = mi
        v[_u(e)] = vi
        p[_u(e)] = p[_u(e)] - (mi / (np.sqrt(vi) / bc2 + eps)) * lr_t


@njit(**_config.NUMBA_PARALLEL)
def _adam(table, lr_t, c1, b2, c2, eps, bc2, blk, par_min):
    # The scalars rounded to float32 here (not by the caller: cheaper at batch 1), so every
    # operation below is a float32 operation.  Arrays of fewer than ``par_min`` elements run
    # on this thread (waking the others costs more: docs/PERFORMANCE.md, section 2).
    f = np.float32
    lr_t, c1, b2, c2, eps, bc2 = f(lr_t), f(c1), f(b2), f(c2), f(eps), f(bc2)
    for i in range(table.shape[0]):
        size = table[i, 4]
        p, g = carray(f32_ptr(table[i, 0]), size), carray(f32_ptr(table[i, 1]), size)
        m, v = carray(f32_ptr(table[i, 2]), size), carray(f32_ptr(table[i, 3]), size)
        if size >= par_min:
            for t in prange((size + blk - 1) // blk):
                lo, hi = chunk(t, size, blk)
                _adam_run(p, g, m, v, lo, hi, lr_t, c1, b2, c2, eps, bc2)
        else:
            _adam_run(p, g, m, v, 0, size, lr_t, c1, b2, c2, eps, bc2)


def adam_step(ps, gs, ms, vs, lr_t, beta1, beta2, eps, bc2_sqrt):
    """One ``torch.optim.Adam`` update of every parameter in place (see
    :func:`fastcnn._ref.adam_step`)."""
    table = _kept("adam_step", ps, gs, ms, vs)
    if table is None:
        table = _table("adam_step", "adam_step", (ps, gs, ms, vs), ("ps", "gs", "ms", "vs"), (True, False, True, True),
                       lambda p, g, m, v: _backend.sizes_adam_step(p, g, m, v, lr_t, beta1, beta2, eps, bc2_sqrt))
    _adam(table, lr_t, 1.0 - beta1, beta2, 1.0 - beta2, eps, bc2_sqrt, _config.ELEMWISE_BLOCK,
          _config.PAR_MIN_WORK)


@helper
def _sgd_run(p, g, buf, lo, hi, lr, wd, mom, c, use_wd, use_mom, nesterov, first):
    for e in range(lo, hi):
        d = g[_u(e)]
        if use_wd:
            d = d + wd * p[_u(e)]
        if use_mom:
            b = d if first else buf[_u(e)] * mom + c * d
            buf[_u(e)] = b
            d = d + mom * b if nesterov else b
        p[_u(e)] = p[_u(e)] - lr * d


@njit(**_config.NUMBA_PARALLEL)
def _sgd(table, lr, wd, mom, c, use_wd, use_mom, nesterov, first, blk, par_min):
    # (as _adam's; without momentum the buffers' addresses are 0 and never read)
    f = np.float32
    lr, wd, mom, c = f(lr), f(wd), f(mom), f(c)
    for i in range(table.shape[0]):
        size = table[i, 3]
        p, g = carray(f32_ptr(table[i, 0]), size), carray(f32_ptr(table[i, 1]), size)
        buf = carray(f32_ptr(table[i, 2]), size if use_mom else 0)
        if size >= par_min:
            for t in prange((size + blk - 1) // blk):
                lo, hi = chunk(t, size, blk)
                _sgd_run(p, g, buf, lo, hi, lr, wd, mom, c, use_wd, use_mom, nesterov, first)
        else:
            _sgd_run(p, g, buf, 0, size, lr, wd, mom, c, use_wd, use_mom, nesterov, first)


def sgd_step(ps, gs, bufs, lr, weight_decay, momentum, dampening, nesterov, first):
    """One ``torch.optim.SGD`` update of every parameter in place (see
    :func:`fastcnn._ref.sgd_step`)."""
    use_mom = momentum != 0
    key = "sgd_step" if use_mom else "sgd_step, no momentum"
    table = _kept(key, ps, gs, bufs)
    if table is None:
        table = _table("sgd_step", key, (ps, gs, bufs), ("ps", "gs", "bufs"), (True, False, True if use_mom else None),
                       lambda p, g, b: _backend.sizes_sgd_step(p, g, b, lr, weight_decay, momentum, dampening, nesterov,
                                                               first))
    _sgd(table, lr, weight_decay, momentum, 1.0 - dampening, weight_decay != 0, use_mom, bool(nesterov),
         bool(first), _config.ELEMWISE_BLOCK, _config.PAR_MIN_WORK)
