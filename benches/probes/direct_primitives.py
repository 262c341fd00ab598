"""The three direct primitives at every shape of ``benches/conv_direct_gflops.py``: median ms
of REPS calls each (default 11), 2 threads.  Run trees alternately (``PYTHONPATH=<tree>``) to
compare them; ``PASS`` (``forward``, ``data``, ``weight``; default ``all``) limits the output.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/direct_primitives.py [PASS] [REPS]
"""
import os
import sys

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn._ext import conv_direct as k

from timing import median_seconds

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from conv_direct_gflops import SHAPES, case  # noqa: E402


def main(which=None, reps=11):
    fastcnn.set_num_threads(2)
    rng = np.random.default_rng(0)
    for name, x_shape, oc, kk, s, pad in SHAPES:
        calls = case(rng, x_shape, oc, kk, s, pad)[0](k)
        cells = [f"{p} {median_seconds(f, int(reps)) * 1e3:.3f}" for p, f in calls.items()
                 if which in (None, "all", p)]
        print(f"{name}: " + ", ".join(cells) + " ms", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
