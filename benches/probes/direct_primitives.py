"""The three direct primitives at every shape of ``benches/conv_direct_gflops.py``: median ms
of REPS calls each (default 11), 2 threads.  Run trees alternately (``PYTHONPATH=<tree>``) to
compare them; ``PASS`` (``forward``, ``data``, ``weight``; default ``all``) limits the output.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/direct_primitives.py [PASS] [REPS]
"""
import os
import sys

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import functional as F
from fastcnn._ext import conv_direct as k

from timing import median_seconds

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from conv_direct_gflops import SHAPES  # noqa: E402


def main(which=None, reps=11):
    fastcnn.set_num_threads(2)
    rng = np.random.default_rng(0)
    for name, (n, c, h, wd), oc, kk, s, pad in SHAPES:
        g = F.ConvGeometry((kk, kk), (s, s), pad, (h, wd), "probe")
        x = rng.standard_normal((n, c, h, wd), dtype=np.float32)
        w = rng.standard_normal((oc, c, kk, kk), dtype=np.float32)
        b = np.zeros(oc, np.float32)
        y = np.empty((n, oc, g.oh, g.ow), np.float32)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        gx, gw, gb = np.empty_like(x), np.empty_like(w), np.empty_like(b)
        a = (g.sh, g.sw, g.pt, g.pl)
        calls = {"forward": lambda: k.conv2d_direct_forward(x, w, b, *a, 0, y),
                 "data": lambda: k.conv2d_direct_backward_data(gy, w, *a, gx),
                 "weight": lambda: k.conv2d_direct_backward_weight(gy, x, *a, gw, gb)}
        cells = [f"{p} {median_seconds(f, int(reps)) * 1e3:.3f}" for p, f in calls.items()
                 if which in (None, "all", p)]
        print(f"{name}: " + ", ".join(cells) + " ms", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
