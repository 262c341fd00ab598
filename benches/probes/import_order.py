"""Training steps with NumPy imported *before* fastcnn (the usual order in user code): one
thread pool against two, alternating rounds, median ms per step (numba, 2 threads).

Usage: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/import_order.py [BACKEND]
"""
import sys

import numpy as np  # first, on purpose

import fastcnn
from fastcnn import models
from fastcnn.train import recipe_step

from timing import median_seconds


def median_ms(step, x, y, reps=8):
    return median_seconds(lambda: step(x, y), reps) * 1e3


def main(backend="numba"):
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(2)
    print(f"NumPy imported first; backend {backend}; {fastcnn._threads.conv_path_description()}")
    rng = np.random.default_rng(0)
    for name in ("lenet", "bn"):
        bs = models.RECIPES[name]["batch_size"]
        _, step = recipe_step(name)
        x = rng.random((bs, 1, 28, 28), dtype=np.float32)
        y = rng.integers(0, 10, bs)
        res = {True: [], False: []}
        for _ in range(3):
            for one_pool in (True, False):
                fastcnn.config(conv="per_image" if one_pool else "chunked")
                res[one_pool].append(median_ms(step, x, y))
        fastcnn.config(conv="auto")
        fmt = " / ".join
        print(f"{name}: one pool {fmt(f'{v:.1f}' for v in res[True])} ms, "
              f"two pools {fmt(f'{v:.1f}' for v in res[False])} ms")


if __name__ == "__main__":
    main(*sys.argv[1:])
