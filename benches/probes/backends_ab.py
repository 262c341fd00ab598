"""Both compiled backends on one recipe network in one process: the training step run
alternately by Cython and Numba (one model, its workspaces shared; the backend switched
between steps), the step's median per backend and each primitive's median time per step
side by side.  On a noisy host this compares the backends where separate processes cannot.

Usage: python benches/probes/backends_ab.py MODEL [STEPS]
  e.g. env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/backends_ab.py resnet 12
"""
import sys
import time
from collections import defaultdict

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import _backend
from fastcnn.train import recipe_step

from timing import recipe_batch, time_primitives

BACKENDS = ("cython", "numba")


def main(name, steps=12, threads=2):
    fastcnn.set_num_threads(int(threads))
    _, train_step = recipe_step(name)
    x, y = recipe_batch(name)
    spent = {b: defaultdict(list) for b in BACKENDS}  # primitive -> its time in each step
    step_times = {b: [] for b in BACKENDS}
    now: dict = {}

    def record(n, seconds):
        now[n] = now.get(n, 0.0) + seconds

    for b in BACKENDS:
        time_primitives(_backend.ops(b), record)
    for b in BACKENDS:
        fastcnn.set_backend(b)
        for _ in range(3):
            train_step(x, y)
    for i in range(int(steps)):
        for b in (BACKENDS if i % 2 == 0 else BACKENDS[::-1]):
            fastcnn.set_backend(b)
            now.clear()
            t0 = time.perf_counter()
            train_step(x, y)
            step_times[b].append(time.perf_counter() - t0)
            for n, v in now.items():
                spent[b][n].append(v)
    med = {b: {n: float(np.median(v)) * 1e3 for n, v in spent[b].items()} for b in BACKENDS}
    print(f"{name}, {fastcnn.get_num_threads()} threads, {steps} steps each, alternated: step cython "
          f"{np.median(step_times['cython']) * 1e3:.2f} ms, numba {np.median(step_times['numba']) * 1e3:.2f} ms")
    print("| primitive | cython ms | numba ms | numba - cython |")
    print("|---|---:|---:|---:|")
    for n in sorted(set(med["cython"]) | set(med["numba"]), key=lambda n: -max(med["cython"].get(n, 0),
                                                                              med["numba"].get(n, 0))):
        c, m = med["cython"].get(n, 0.0), med["numba"].get(n, 0.0)
        print(f"| {n} | {c:.3f} | {m:.3f} | {m - c:+.3f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
