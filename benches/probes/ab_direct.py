"""The direct primitives of two builds side by side in one process, calls interleaved (A, B,
A, B, ...), so that a noisy machine slows both alike: median ms of each and the ratio B / A
per shape of ``benches/conv_direct_gflops.py``.  Each tree must be built in place
(``python setup.py build_ext --inplace``); the other modules come from ``PYTHONPATH``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=<tree B> python benches/probes/ab_direct.py \\
        <tree A> <tree B> [forward|data|weight|all] [REPS]
"""
import glob
import importlib.machinery
import importlib.util
import os
import statistics
import sys
import time

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from conv_direct_gflops import SHAPES, case  # noqa: E402


def load(tree):
    """The ``conv_direct`` extension built in ``tree``, as a module of its own."""
    (path,) = glob.glob(os.path.join(tree, "fastcnn", "_ext", "conv_direct.*.so"))
    loader = importlib.machinery.ExtensionFileLoader("conv_direct", path)
    spec = importlib.util.spec_from_file_location("conv_direct", path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    mod._set_num_threads(2)
    return mod


def main(tree_a, tree_b, which="all", reps=15):
    fastcnn.set_num_threads(2)
    mods = [load(tree_a), load(tree_b)]
    print(f"A = {tree_a} ({mods[0].active_isa()}), B = {tree_b} ({mods[1].active_isa()}); "
          f"median ms of {reps} interleaved calls, 2 threads")
    rng = np.random.default_rng(0)
    for name, x_shape, oc, kk, s, pad in SHAPES:
        calls_of = case(rng, x_shape, oc, kk, s, pad)[0]
        cells = []
        for p in ("forward", "data", "weight"):
            if which not in ("all", p):
                continue
            calls = [calls_of(k)[p] for k in mods]
            times = [[], []]
            for f in calls:
                f()
            for _ in range(int(reps)):
                for i, f in enumerate(calls):
                    t0 = time.perf_counter()
                    f()
                    times[i].append(time.perf_counter() - t0)
            ta, tb = (statistics.median(t) * 1e3 for t in times)
            cells.append(f"{p} {ta:.3f} / {tb:.3f} = {tb / ta:.2f}")
        print(f"{name}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
