"""lenet conv2 forward (128x32x14x14 -> 64, 5x5 same) GFLOP/s as a share of SGEMM 2048^2 GFLOP/s,
measured alternately in one process, 3 rounds.

Usage: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/conv_gemm_share.py
"""
import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import functional as F

from timing import median_seconds


def main():
    fastcnn.set_num_threads(2)
    r = np.random.default_rng(0)
    a = r.random((2048, 2048), dtype=np.float32)
    b = r.random((2048, 2048), dtype=np.float32)
    o = np.empty_like(a)
    x = r.standard_normal((128, 32, 14, 14), dtype=np.float32)
    w = r.standard_normal((64, 32, 5, 5), dtype=np.float32)
    bias = np.zeros(64, np.float32)
    flop = 2 * 128 * 196 * 64 * 800
    for _ in range(3):
        g = 2 * 2048**3 / median_seconds(lambda: np.matmul(a, b, out=o), 15) / 1e9
        row = [f"sgemm {g:.0f} GFLOP/s"]
        for be in ("numba", "cython"):
            fastcnn.set_backend(be)
            ws = F.Workspace()
            c = flop / median_seconds(lambda: F.conv2d(x, w, bias, 1, 2, ws=ws), 15) / 1e9
            row.append(f"{be} conv2 fwd {c:.0f} GFLOP/s = {100 * c / g:.0f}%")
        print(" | ".join(row))


if __name__ == "__main__":
    main()
