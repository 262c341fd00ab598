"""Why SciPy's OpenBLAS must run single-threaded on the one-pool path: the per-image
convolution forward (lenet conv2 and bn conv2 shapes, numba, 2 threads) with SciPy's BLAS as
fastcnn sets it (one thread), with SciPy imported before fastcnn (its OpenBLAS started with
its own threads, then limited to one by fastcnn), and with SciPy's BLAS at two threads.
Each case runs in its own process; median ms of 15 calls.

Usage: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/blas_threads_probe.py
"""
import subprocess
import sys

CASE = r'''
import sys, time
if sys.argv[1] == "scipy-first":
    import scipy.linalg  # SciPy's OpenBLAS starts with its own threads
import fastcnn
import numpy as np
from fastcnn import functional as F
from threadpoolctl import ThreadpoolController
fastcnn.set_backend("numba")
fastcnn.set_num_threads(2)
assert fastcnn._threads.gemm_blas_single()
if sys.argv[1] == "two-threads":
    for lc in ThreadpoolController().lib_controllers:
        if lc.filepath == fastcnn._threads._gemm_blas["filepath"]:
            lc.set_num_threads(2)
rng = np.random.default_rng(0)
out = []
for shape, oc in [((128, 32, 14, 14), 64), ((100, 16, 14, 14), 32)]:
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal((oc, shape[1], 5, 5), dtype=np.float32)
    ws = F.Workspace()
    F.conv2d(x, w, None, 1, 2, ws=ws)
    ts = []
    for _ in range(15):
        t0 = time.perf_counter()
        F.conv2d(x, w, None, 1, 2, ws=ws)
        ts.append(time.perf_counter() - t0)
    out.append(f"{np.median(ts) * 1e3:.1f}")
print(" / ".join(out))
'''

for mode, label in [("default", "fastcnn's default (one thread)"),
                    ("scipy-first", "SciPy imported first, limited to one thread by fastcnn"),
                    ("two-threads", "at two threads")]:
    res = subprocess.run([sys.executable, "-c", CASE, mode], capture_output=True, text=True, check=True)
    print(f"SciPy's BLAS {label}: lenet conv2 / bn conv2 forward ms = {res.stdout.strip()}")
