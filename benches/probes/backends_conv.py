"""The convolution primitives of both compiled backends side by side in one process: each
primitive of ``benches/conv_direct_gflops.py``'s shapes (direct forward, input and weight
gradients; Winograd forward and input gradient where they apply) called alternately by the
Cython and the Numba module on the same arrays, medians of REPS calls each, as ms, % of the
probe's FMA peak and the time ratio Numba / Cython.  On a noisy host this compares the
backends' kernels where separate processes cannot.

Usage: python benches/probes/backends_conv.py [REPS] [SHAPE-SUBSTRING ...]
  e.g. env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/backends_conv.py 15 resnet
"""
import os
import sys
import time

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import _backend

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conv_direct_gflops import SHAPES, case, peak  # noqa: E402

BACKENDS = ("cython", "numba")


def main(reps=15, *only):
    fastcnn.set_num_threads(2)
    mods = {b: _backend.ops(b) for b in BACKENDS}
    rng = np.random.default_rng(0)
    pw = peak(2)[0]
    print(f"2 threads, medians of {int(reps)} alternated calls; probe {pw / 1e9:.0f} GFLOP/s (wall)")
    print("| shape | primitive | cython ms | % peak | numba ms | % peak | numba / cython |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, xs, oc, k, s, pad in SHAPES:
        if only and not any(t in name for t in only):
            continue
        calls, flops = case(rng, xs, oc, k, s, pad)
        fns = {b: calls(m) for b, m in mods.items()}
        for prim in fns["cython"]:
            ts = {b: [] for b in BACKENDS}
            for b in BACKENDS:
                for _ in range(3):
                    fns[b][prim]()
            for r in range(int(reps)):
                for b in (BACKENDS if r % 2 == 0 else BACKENDS[::-1]):
                    t0 = time.perf_counter()
                    fns[b][prim]()
                    ts[b].append(time.perf_counter() - t0)
            c, m = (float(np.median(ts[b])) for b in BACKENDS)
            print(f"| {name} | {prim} | {c * 1e3:.2f} | {flops / c / pw:.0%} | {m * 1e3:.2f} | {flops / m / pw:.0%} | "
                  f"{m / c:.2f} |", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
