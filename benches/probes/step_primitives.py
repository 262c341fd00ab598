"""Time per training step spent in each backend primitive (conv2d_direct_forward, adam_step, ...),
and the rest (Python and NumPy between them), over 10 steps after 3 warm-up steps.

Usage: python benches/probes/step_primitives.py MODEL [BACKEND] [THREADS]
  e.g. env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/step_primitives.py resnet cython 2
"""
import sys
import time
from collections import Counter, defaultdict

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)


from fastcnn import _backend
from fastcnn.train import recipe_step

from timing import recipe_batch, time_primitives


def main(name, backend="cython", threads=2, steps=10):
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(int(threads))
    _, train_step = recipe_step(name)
    x, y = recipe_batch(name)
    spent, calls = defaultdict(float), Counter()

    def record(n, seconds):
        spent[n] += seconds
        calls[n] += 1

    time_primitives(_backend.ops(), record)

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
