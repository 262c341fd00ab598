"""GFLOP/s of the Numba direct convolutions against the per-image im2col + SGEMM path.

    python benches/probes/conv_direct_numba.py [--threads 2] [--reps 7]

Forward (bias, no ReLU), backward data and backward weight at the convolution shapes of the
seed networks; median of ``--reps`` timed calls after a warm-up.  The im2col path is timed
through ``fastcnn.functional`` with the numba backend (its one-pool per-image kernels).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np

import fastcnn
from fastcnn import functional as F
from fastcnn._kernels import conv_direct as D

from timing import median_seconds

#: name: (N, C, H, W, OC, k, stride, pad)
SHAPES = {
    "lenet conv1": (128, 1, 28, 28, 32, 5, 1, 2),
    "lenet conv2": (128, 32, 14, 14, 64, 5, 1, 2),
    "bn conv1": (100, 1, 28, 28, 16, 5, 1, 2),
    "bn conv2": (100, 16, 14, 14, 32, 5, 1, 2),
    "resnet 16ch 32x32": (100, 16, 32, 32, 16, 3, 1, 1),
    "resnet 32ch 16x16": (100, 32, 16, 16, 32, 3, 1, 1),
    "resnet 64ch 8x8": (100, 64, 8, 8, 64, 3, 1, 1),
    "resnet 16->32 s2": (100, 16, 32, 32, 32, 3, 2, 1),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    fastcnn.set_backend("numba")
    fastcnn.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    print(f"threads={a.threads}  GFLOP/s (2*N*OC*C*k*k*OH*OW per pass), median of {a.reps}")
    print(f"{'shape':20s} {'fwd im2col':>10s} {'fwd direct':>10s} {'bwd-data im2col+w':>17s} "
          f"{'bwd-data direct':>15s} {'bwd-w direct':>12s}")
    for name, (n, c, h, w, oc, k, s, p) in SHAPES.items():
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = (rng.standard_normal((oc, c, k, k)) * 0.1).astype(np.float32)
        b = np.zeros(oc, np.float32)
        y = F.conv2d(x, wt, b, s, p)
        oh, ow = y.shape[2:]
        flop = 2.0 * n * oc * c * k * k * oh * ow
        ws = F.Workspace()
        yd = np.empty_like(y)
        gx = np.empty_like(x)
        gw = np.empty_like(wt)
        gb = np.empty(oc, np.float32)
        t_fi = median_seconds(lambda: F.conv2d(x, wt, b, s, p, ws=ws), a.reps)
        t_fd = median_seconds(lambda: D.conv2d_direct_forward(x, wt, b, s, s, p, p, 0, yd), a.reps)
        # im2col backward computes both gradients in one pass (2 GEMMs).
        t_bi = median_seconds(lambda: F.conv2d_backward(y, x, wt, s, p, ws=ws), a.reps)
        t_bd = median_seconds(lambda: D.conv2d_direct_backward_data(y, wt, s, s, p, p, gx), a.reps)
        t_bw = median_seconds(lambda: D.conv2d_direct_backward_weight(y, x, s, s, p, p, gw, gb), a.reps)

        def g(t, f=1, flop=flop):
            return f * flop / t / 1e9

        print(f"{name:20s} {g(t_fi):10.1f} {g(t_fd):10.1f} {g(t_bi, 2):17.1f} {g(t_bd):15.1f} {g(t_bw):12.1f}"
              f"   (ms: fwd {t_fi*1e3:.2f}/{t_fd*1e3:.2f}, bwd {t_bi*1e3:.2f} vs {(t_bd+t_bw)*1e3:.2f})")


if __name__ == "__main__":
    main()
