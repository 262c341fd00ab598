"""The two im2col convolution paths side by side: per image in one thread pool against
chunked im2col + NumPy's multi-threaded SGEMM, at the lenet and bn shapes, forward and
backward, alternating rounds; then whole training steps of lenet and bn under each
``fastcnn.config(conv=...)`` strategy (auto: the direct kernels where they win).  Median ms.

Usage: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/conv_paths.py [BACKEND] [THREADS]
"""
import sys

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import functional as F
from fastcnn import models
from fastcnn.train import recipe_step

from timing import median_seconds

SHAPES = [("lenet conv1 128x1x28x28->32", (128, 1, 28, 28), 32, False),
          ("lenet conv2 128x32x14x14->64", (128, 32, 14, 14), 64, True),
          ("bn conv1 100x1x28x28->16", (100, 1, 28, 28), 16, False),
          ("bn conv2 100x16x14x14->32", (100, 16, 14, 14), 32, True)]


def median_ms(f, reps):
    return median_seconds(f, reps) * 1e3


def main(backend="numba", threads=2):
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(int(threads))
    print(f"backend {backend}, {threads} thread(s); {fastcnn._threads.conv_path_description()}")
    rng = np.random.default_rng(0)
    print("| convolution (5x5, pad 2) | per image fwd | chunked fwd | per image bwd | chunked bwd |")
    print("|---|---:|---:|---:|---:|")
    for name, shape, oc, input_grad in SHAPES:
        x = rng.standard_normal(shape, dtype=np.float32)
        w = rng.standard_normal((oc, shape[1], 5, 5), dtype=np.float32)
        b = rng.standard_normal(oc, dtype=np.float32)
        gy = rng.standard_normal((shape[0], oc) + shape[2:], dtype=np.float32)
        ws = F.Workspace()
        res = {}
        for _ in range(3):
            for per_image in (True, False):
                fastcnn.config(conv="per_image" if per_image else "chunked")
                res.setdefault(("f", per_image), []).append(median_ms(lambda: F.conv2d(x, w, b, 1, 2, ws=ws), 15))
                res.setdefault(("b", per_image), []).append(median_ms(
                    lambda: F.conv2d_backward(gy, x, w, 1, 2, input_grad=input_grad, ws=ws), 15))
        cells = [f"{np.median(res[(k, p)]):.2f}" for k in "fb" for p in (True, False)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("| training step | auto (direct where it wins) | per image | chunked |")
    print("|---|---:|---:|---:|")
    for name in ("lenet", "bn"):
        bs = models.RECIPES[name]["batch_size"]
        _, train_step = recipe_step(name)
        xb = rng.random((bs, 1, 28, 28), dtype=np.float32)
        yb = rng.integers(0, 10, bs)

        def step():
            train_step(xb, yb)

        res = {}
        for _ in range(3):
            for conv in ("auto", "per_image", "chunked"):
                fastcnn.config(conv=conv)
                res.setdefault(conv, []).append(median_ms(step, 8))
        print(f"| {name} (batch {bs}) | " + " | ".join(f"{np.median(v):.1f}" for v in res.values()) + " |")
    fastcnn.config(conv="auto")


if __name__ == "__main__":
    main(*sys.argv[1:])
