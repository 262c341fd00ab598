"""PyTorch's own training step of a recipe network, in a process that imported fastcnn after
torch (PyTorch's OpenMP defaults kept, but fastcnn's glibc heap settings applied,
docs/PERFORMANCE.md section 11) or not: run it with and without ``FASTCNN_HEAP=system``
alternately.  Median ms of steps 10-40 (random batches, Adam).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE [FASTCNN_HEAP=system] python benches/probes/torch_heap.py resnet
"""
import sys
import time
import warnings

import torch  # isort: skip  (first: its OpenMP runtime starts with PyTorch's own defaults)

with warnings.catch_warnings():  # (fastcnn warns when imported after torch)
    warnings.simplefilter("ignore")
    import fastcnn  # noqa: F401  (sets its heap settings unless FASTCNN_HEAP=system)

import numpy as np

from fastcnn import models
from fastcnn.interop import to_torch


def main(name="resnet", threads=2):
    torch.set_num_threads(int(threads))
    bs = models.RECIPES[name]["batch_size"]
    c, s = (3, 32) if name == "resnet" else (1, models.INPUT_SIZE[name])
    net = to_torch(models.build(name, seed=0)).float().train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    ts = []
    for _ in range(40):
        x = torch.from_numpy(rng.random((bs, c, s, s), dtype=np.float32))
        y = torch.from_numpy(rng.integers(0, 10, bs))
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        ts.append(time.perf_counter() - t0)
    med = float(np.median(ts[10:]))
    print(f"{name} torch {torch.get_num_threads()} threads: {med * 1e3:.1f} ms per step, {bs / med:.0f} img/s")


if __name__ == "__main__":
    main(*sys.argv[1:])
