"""Per-step loss of fastcnn and PyTorch (float32 at 1 and 2 threads, and float64) from the same
initial weights and batches of real MNIST; prints the relative differences per step.

Usage: FASTCNN_DATA=../shared/data/mnist python benches/probes/parity_drift.py lenet 30
"""
import sys

from fastcnn import data, losses, models  # isort: skip  (before NumPy and torch: docs/PERFORMANCE.md)

import numpy as np
import torch

from fastcnn.interop import to_torch
from fastcnn.train import make_optimizer


def main(name, steps):
    images, labels = data.load_mnist(None, "train")
    r = models.RECIPES[name]

    def batches():
        return zip(range(steps), data.iterate_batches(images, labels, r["batch_size"], seed=0, epoch=0))

    def run_torch(threads, dtype=torch.float32):
        torch.set_num_threads(threads)
        twin = to_torch(models.build(name, seed=0)).to(dtype)
        opt = (torch.optim.Adam(twin.parameters(), lr=r["lr"]) if r["optimizer"] == "adam"
               else torch.optim.SGD(twin.parameters(), lr=r["lr"]))
        out = []
        for _, (x, y) in batches():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(twin(torch.tensor(x).to(dtype)), torch.tensor(y))
            loss.backward()
            opt.step()
            out.append(loss.item())
        return np.array(out)

    def run_ours():
        m = models.build(name, seed=0)
        opt = make_optimizer(r["optimizer"], m.parameters(), r["lr"])
        lf = losses.SoftmaxCrossEntropy()
        out = []
        for _, (x, y) in batches():
            opt.zero_grad()
            out.append(lf.forward(m.forward(x), y))
            m.backward(lf.backward())
            opt.step()
        return np.array(out)

    t64, t2, t1, ours = run_torch(2, torch.float64), run_torch(2), run_torch(1), run_ours()
    np.set_printoptions(precision=1, linewidth=200)
    print("torch fp32 (2 threads) vs torch fp64:", np.abs(t2 - t64) / t64)
    print("torch fp32 1 vs 2 threads:          ", np.abs(t1 - t2) / t2)
    print("fastcnn vs torch fp64:               ", np.abs(ours - t64) / t64)
    print("max:", {k: float(v.max()) for k, v in (("torch32_vs_64", np.abs(t2 - t64) / t64),
                                                  ("torch_threads", np.abs(t1 - t2) / t2),
                                                  ("fastcnn_vs_64", np.abs(ours - t64) / t64))})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
