"""Per-layer time of one training step (forward, loss, backward, optimizer), median over steps.

Usage: python benches/probes/profile_step.py MODEL [BACKEND] [THREADS]
  e.g. env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/profile_step.py lenet cython 2
"""
import sys
import time
from collections import defaultdict

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import losses, models
from fastcnn.train import make_optimizer


def main(name, backend=None, threads=None):
    if backend:
        fastcnn.set_backend(backend)
    if threads:
        fastcnn.set_num_threads(int(threads))
    recipe = models.RECIPES[name]
    bs = recipe["batch_size"]
    model = models.build(name, seed=0)
    model.needs_input_grad = False
    opt = make_optimizer(recipe["optimizer"], model.parameters(), recipe["lr"])
    loss_fn = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x = rng.random((bs, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, bs)
    times = defaultdict(list)

    def timed(key, f, *a):
        t0 = time.perf_counter()
        out = f(*a)
        times[key].append(time.perf_counter() - t0)
        return out

    def step():
        opt.zero_grad()
        h = x
        for i, layer in enumerate(model.layers):
            h = timed(f"{i:2d} {type(layer).__name__} forward", layer.forward, h)
        timed("   loss forward+backward", loss_fn.forward, h, y)
        g = loss_fn.backward()
        for i in reversed(range(len(model.layers))):
            g = timed(f"{i:2d} {type(model.layers[i]).__name__} backward", model.layers[i].backward, g)
            if g is None:
                break
        timed("   optimizer step", opt.step)

    for _ in range(3):
        step()
    times.clear()
    steps = 20 if bs > 1 else 2000
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - t0) / steps
    print(f"{name} backend={fastcnn.get_backend()} threads={fastcnn.get_num_threads()}: "
          f"step {total * 1e3:.2f} ms, {bs / total:.0f} images/s")
    parts = sum(np.median(v) for v in times.values())
    for key, v in times.items():
        print(f"  {key:28s} {np.median(v) * 1e3:8.3f} ms")
    print(f"  {'sum of parts':28s} {parts * 1e3:8.3f} ms  (the rest is Python between the parts)")


if __name__ == "__main__":
    main(*sys.argv[1:])
