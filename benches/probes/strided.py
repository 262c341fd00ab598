"""The three direct primitives at the ResNet's two stride-2 shapes (3x3, padding 1, batch
100): median ms of 15 calls each.  Run trees alternately (``PYTHONPATH=<tree>``) to compare
them.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/strided.py
"""
import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn._ext import conv_direct as k

from timing import median_seconds


def main():
    fastcnn.set_num_threads(2)
    rng = np.random.default_rng(0)
    out = []
    for c, h, oc in ((16, 32, 32), (32, 16, 64)):
        x = rng.standard_normal((100, c, h, h), dtype=np.float32)
        w = rng.standard_normal((oc, c, 3, 3), dtype=np.float32)
        b = np.zeros(oc, np.float32)
        gy = rng.standard_normal((100, oc, h // 2, h // 2), dtype=np.float32)
        y, gx, gw = np.empty(gy.shape, np.float32), np.empty(x.shape, np.float32), np.empty(w.shape, np.float32)
        gb = np.empty(oc, np.float32)
        times = {"forward": lambda: k.conv2d_direct_forward(x, w, b, 2, 2, 1, 1, 0, y),
                 "input gradient": lambda: k.conv2d_direct_backward_data(gy, w, 2, 2, 1, 1, gx),
                 "weight gradient": lambda: k.conv2d_direct_backward_weight(gy, x, 2, 2, 1, 1, gw, gb)}
        out.append(f"{c}->{oc} " + ", ".join(f"{name} {median_seconds(f, 15) * 1e3:.3f}"
                                             for name, f in times.items()))
    print(" | ".join(out), "(ms)")


if __name__ == "__main__":
    main()
