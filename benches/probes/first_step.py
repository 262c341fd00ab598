"""Wall time from process start to the end of the first lenet training step.

Usage: python benches/probes/first_step.py {numba,cython}   (run twice: the first run fills the Numba cache)
"""
import sys
import time

t0 = time.perf_counter()

import fastcnn  # noqa: E402  # isort: skip  (timed from before the import; before NumPy, docs/PERFORMANCE.md)

import numpy as np  # noqa: E402

from fastcnn import losses, models  # noqa: E402
from fastcnn.train import make_optimizer  # noqa: E402

fastcnn.set_backend(sys.argv[1])
m = models.build("lenet", seed=0)
opt = make_optimizer("adam", m.parameters(), 1e-3)
lf = losses.SoftmaxCrossEntropy()
x = np.random.rand(128, 1, 28, 28).astype(np.float32)
y = np.random.randint(0, 10, 128)
t1 = time.perf_counter()
opt.zero_grad()
lf.forward(m.forward(x), y)
m.backward(lf.backward())
opt.step()
t2 = time.perf_counter()
print(f"{sys.argv[1]}: import+build {t1 - t0:.2f} s, first step {t2 - t1:.2f} s, total {t2 - t0:.2f} s")
