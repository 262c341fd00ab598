"""Numba kernels of the softmax cross-entropy loss (one ``prange`` iteration per sample)."""
import math

import numpy as np
from numba import prange

from .. import _backend
from ._common import helper, parallel_kernel


@helper
def _bad_labels(labels, k):
    """How many labels lie outside ``[0, k)``."""
    bad = 0
    for r in range(labels.shape[0]):
        if labels[r] < 0 or labels[r] >= k:
            bad += 1
    return bad


@parallel_kernel
def _softmax_xent_forward(logits, labels, probs, losses):
    _backend.sizes_softmax_xent_forward(logits.shape, labels.shape, probs.shape, losses.shape)
    n, k = logits.shape
    bad = _bad_labels(labels, k)
    if bad:
        return bad
    for r in prange(n):
        m = logits[r, 0]
        for e in range(1, k):
            v = logits[r, e]
            if v > m or v != v:
                m = v
        # z = logits - max in float32 as the reference; exp and the sum in float64.
        s = 0.0
        for e in range(k):
            z = logits[r, e] - m
            s += math.exp(np.float64(z))
        for e in range(k):
            z = logits[r, e] - m
            probs[r, e] = np.float32(math.exp(np.float64(z)) / s)
        zl = logits[r, labels[r]] - m
        losses[r] = np.float32(math.log(s) - np.float64(zl))
    return 0


def softmax_xent_forward(logits, labels, probs, losses):
    """Softmax and per-sample cross-entropy (see :func:`fastcnn._ref.softmax_xent_forward`)."""
    bad = _softmax_xent_forward(logits, labels, probs, losses)
    if bad:
        _backend.check_in_range("softmax_xent_forward", bad, "labels")


@parallel_kernel
def _softmax_xent_backward(probs, labels, gx):
    _backend.sizes_softmax_xent_backward(probs.shape, labels.shape, gx.shape)
    n, k = probs.shape
    bad = _bad_labels(labels, k)
    if bad:
        return bad
    scale = np.float32(1.0 / n)
    one = np.float32(1.0)
    for r in prange(n):
        lab = labels[r]
        for e in range(k):
            p = probs[r, e]
            if e == lab:
                p = p - one
            gx[r, e] = p * scale
    return 0


def softmax_xent_backward(probs, labels, gx):
    """``gx = (probs - onehot(labels)) / N`` (see :func:`fastcnn._ref.softmax_xent_backward`)."""
    bad = _softmax_xent_backward(probs, labels, gx)
    if bad:
        _backend.check_in_range("softmax_xent_backward", bad, "labels")
