"""Direct kernels against the per-image im2col path, forward and backward, at the ResNet's
strided and 1x1 shapes and the seed networks' first layers (the ``auto`` rule's evidence,
docs/PERFORMANCE.md section 9): median ms over alternated repetitions, and the ratio direct /
per_image.  First layers (C <= 3) are timed as in training: weight gradient only.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/plan_compare.py [BACKEND] [THREADS]
"""
import sys
import time

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import functional as F

#: (N, C, OC, kernel, stride, padding, input size)
SHAPES = [(100, 16, 32, 1, 2, 0, 32), (100, 32, 64, 1, 2, 0, 16), (100, 16, 32, 1, 1, 0, 32),
          (100, 32, 64, 1, 1, 0, 16), (100, 64, 64, 1, 1, 0, 8), (100, 16, 32, 3, 2, 1, 32),
          (100, 32, 64, 3, 2, 1, 16), (100, 32, 32, 3, 1, 1, 16),
          (128, 1, 32, 5, 1, 2, 28), (100, 1, 16, 5, 1, 2, 28), (100, 3, 16, 3, 1, 1, 32)]


def main(backend="cython", threads=2):
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(int(threads))
    rng = np.random.default_rng(0)
    print(f"backend={backend} threads={fastcnn.get_num_threads()}; median ms, direct / per_image")
    for n, c, oc, k, s, p, hw in SHAPES:
        x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
        w = rng.standard_normal((oc, c, k, k), dtype=np.float32)
        gy = rng.standard_normal(F.conv2d(x, w, None, s, p).shape, dtype=np.float32)
        runs = {(cv, part): [] for cv in ("direct", "per_image") for part in ("fwd", "bwd")}
        for _ in range(11):
            for cv in ("direct", "per_image"):
                with fastcnn.config(conv=cv):
                    t0 = time.perf_counter()
                    F.conv2d(x, w, None, s, p)
                    t1 = time.perf_counter()
                    F.conv2d_backward(gy, x, w, s, p, bias=False, input_grad=c > 3)
                    t2 = time.perf_counter()
                runs[cv, "fwd"].append(t1 - t0)
                runs[cv, "bwd"].append(t2 - t1)
        med = {key: np.median(v) * 1e3 for key, v in runs.items()}
        print(f"  {n}x{c}x{hw}x{hw} -> {oc}, {k}x{k} stride {s} pad {p}: "
              + "; ".join(f"{part} {med['direct', part]:.2f} / {med['per_image', part]:.2f} = "
                          f"{med['direct', part] / med['per_image', part]:.2f}" for part in ("fwd", "bwd")))


if __name__ == "__main__":
    main(*sys.argv[1:])
