"""Benchmarks: every kernel and training step for each backend and for PyTorch, side by side.

Run: ``pytest benches --benchmark-only --benchmark-group-by=group`` (threads from
``FASTCNN_NUM_THREADS``; PyTorch is given the same number).
"""
import numpy as np
import pytest

import fastcnn

try:
    import torch

    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False

BACKENDS = fastcnn.available_backends()
IMPLS = BACKENDS + (("torch",) if HAVE_TORCH else ())


@pytest.fixture(scope="session", autouse=True)
def _threads():
    n = fastcnn.get_num_threads()
    if HAVE_TORCH:
        torch.set_num_threads(n)
    fastcnn.warmup()
    return n


@pytest.fixture
def use_backend():
    previous = fastcnn.get_backend()

    def use(name):
        if name != "torch":
            fastcnn.set_backend(name)

    yield use
    fastcnn.set_backend(previous)


def rng(seed=0):
    return np.random.default_rng(seed)
