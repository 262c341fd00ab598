"""Batch 1, the scratch network: Python function calls per training step (cProfile over 100
steps) and the direct convolution primitive with and without its fused pooling (``timeit``,
best of 5 x 20,000 calls).  Run it with ``PYTHONPATH=<tree>`` to compare trees.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/batch1_calls.py
"""
import cProfile
import pstats
import timeit

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import _backend
from fastcnn.train import recipe_step


def main():
    fastcnn.set_backend("cython")
    fastcnn.set_num_threads(2)
    _, train_step = recipe_step("scratch")
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    y = np.array([3])

    def step():
        train_step(x, y)

    for _ in range(50):
        step()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(100):
        step()
    prof.disable()
    print(f"Python function calls per step: {pstats.Stats(prof).total_calls / 100:.0f}")

    k = _backend.ops()
    w = np.random.default_rng(1).random((8, 1, 3, 3), dtype=np.float32)
    b = np.zeros(8, np.float32)
    full = np.empty((1, 8, 26, 26), np.float32)
    pooled, idx = np.empty((1, 8, 13, 13), np.float32), np.empty((1, 8, 13, 13), np.int32)
    calls = {
        "conv2d_direct_forward": lambda: k.conv2d_direct_forward(x, w, b, 1, 1, 0, 0, 0, full),
        "conv2d_direct_forward_maxpool2 (indices)":
            lambda: k.conv2d_direct_forward_maxpool2(x, w, b, 1, 1, 0, 0, 0, 26, 26, pooled, idx),
    }
    for name, f in calls.items():
        if not hasattr(k, name.split()[0]):  # (a tree before that primitive)
            continue
        print(f"{name}: {min(timeit.repeat(f, number=20000, repeat=5)) / 20000 * 1e6:.2f} us")


if __name__ == "__main__":
    main()
