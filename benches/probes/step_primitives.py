"""Time per training step spent in each backend primitive (conv2d_direct_forward, adam_step, ...),
and the rest (Python and NumPy between them), over 10 steps after 3 warm-up steps.

Usage: python benches/probes/step_primitives.py MODEL [BACKEND] [THREADS] [--alternate T2 [--steps S]]
  e.g. env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/step_primitives.py resnet cython 2
       ... step_primitives.py lenet cython 1 --alternate 2 --steps 40

``--alternate T2``: the thread count switches between THREADS and T2 before every step (the same
model), and each primitive call of the step (by its place in the step) is reported with its
median time at both counts and their ratio: which parts of a step scale with the threads, side
by side in the same phases of a shared host.
"""
import argparse
import statistics
import time
from collections import Counter, defaultdict

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)


from fastcnn import _backend
from fastcnn.train import recipe_step

from timing import recipe_batch, time_primitives


def _timed_step(name, backend, record):
    """``step()``: one training step of the recipe network ``name`` on ``backend``, every
    primitive call reported to ``record(primitive, seconds)``."""
    fastcnn.set_backend(backend)
    _, train_step = recipe_step(name)
    x, y = recipe_batch(name)
    time_primitives(_backend.ops(), record)
    return lambda: train_step(x, y)


def main(name, backend="cython", threads=2, steps=10):
    spent, calls = defaultdict(float), Counter()

    def record(n, seconds):
        spent[n] += seconds
        calls[n] += 1

    step = _timed_step(name, backend, record)
    fastcnn.set_num_threads(int(threads))
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


def alternate(name, backend, t1, t2, steps):
    """Per call of the step: median ms at ``t1`` and ``t2`` threads, switched before every step."""
    times = defaultdict(list)  # (threads, call index, primitive) -> seconds
    per_step = defaultdict(list)  # threads -> (step, in primitives) ms of each step
    now = {"threads": t1, "call": 0, "inside": 0.0}

    def record(n, seconds):
        times[(now["threads"], now["call"], n)].append(seconds)
        now["call"] += 1
        now["inside"] += seconds

    step = _timed_step(name, backend, record)
    for t in (t1, t2):  # (warm-up at both counts)
        fastcnn.set_num_threads(t)
        for _ in range(2):
            step()
    times.clear()
    for _ in range(steps):
        for t in (t1, t2):
            fastcnn.set_num_threads(t)
            now["threads"], now["call"], now["inside"] = t, 0, 0.0
            t0 = time.perf_counter()
            step()
            per_step[t].append((time.perf_counter() - t0, now["inside"]))
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{name} backend={backend}, {steps} steps at each of {t1} and {t2} threads, alternated; "
          f"medians in ms, ratio = {t1} threads' / {t2} threads'")
    for label, f in (("step", lambda s, i: s), ("in primitives", lambda s, i: i), ("the rest", lambda s, i: s - i)):
        a, b = (statistics.median(f(s, i) for s, i in per_step[t]) * 1e3 for t in (t1, t2))
        print(f"  {label:38s} {a:8.3f} {b:8.3f}  x{a / b:5.2f}")
    for i, n in sorted({(i, n) for (_, i, n) in med}):
        a, b = med.get((t1, i, n)), med.get((t2, i, n))
        if a is not None and b is not None and max(a, b) >= 0.05:
            print(f"  {i:3d} {n:34s} {a:8.3f} {b:8.3f}  x{a / b:5.2f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("backend", nargs="?", default="cython")
    p.add_argument("threads", nargs="?", type=int, default=2)
    p.add_argument("--alternate", type=int, metavar="T2", help="switch the thread count with T2 every step")
    p.add_argument("--steps", type=int, default=None, help="timed steps (at each count with --alternate)")
    a = p.parse_args()
    if a.alternate:
        alternate(a.model, a.backend, a.threads, a.alternate, a.steps or 30)
    else:
        main(a.model, a.backend, a.threads, a.steps or 10)
