"""Time per training step spent in each backend primitive (conv2d_direct_forward, adam_step, ...),
and the rest (Python and NumPy between them), over 10 steps after 3 warm-up steps.

Usage: python benches/probes/step_primitives.py MODEL [BACKEND] [THREADS]
  e.g. env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/step_primitives.py resnet cython 2
"""
import sys
import time
from collections import Counter, defaultdict

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import _backend, models
from fastcnn.train import recipe_step


def main(name, backend="cython", threads=2, steps=10):
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(int(threads))
    _, train_step = recipe_step(name)
    rng = np.random.default_rng(0)
    size, batch = models.INPUT_SIZE[name], models.RECIPES[name]["batch_size"]
    x = rng.random((batch, 3 if name == "resnet" else 1, size, size), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    k = _backend.ops()
    spent, calls = defaultdict(float), Counter()
    for attr in dir(k):  # (a timer around every primitive of the backend module)
        f = getattr(k, attr)
        if callable(f) and not attr.startswith(("_", "sizes")):
            def timed(*a, _f=f, _n=attr, **kw):
                t0 = time.perf_counter()
                out = _f(*a, **kw)
                spent[_n] += time.perf_counter() - t0
                calls[_n] += 1
                return out
            setattr(k, attr, timed)

    def step():
        train_step(x, y)

    for _ in range(3):
        step()
    spent.clear()
    calls.clear()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - t0) / steps
    inside = sum(spent.values()) / steps
    print(f"{name} backend={backend} threads={fastcnn.get_num_threads()}: step {total * 1e3:.2f} ms, "
          f"in primitives {inside * 1e3:.2f} ms, the rest {(total - inside) * 1e3:.2f} ms")
    for n, t in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {n:34s} {t / steps * 1e3:8.3f} ms  ({calls[n] // steps} calls)")


if __name__ == "__main__":
    main(*sys.argv[1:])
