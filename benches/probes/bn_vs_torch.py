"""One training-mode batch-norm step at a ResNet shape, fastcnn and PyTorch float32 against
PyTorch float64: maximum error (relative to the largest value) and mean signed error of the
output, the three gradients and the running statistics.  Tells whether one framework's batch
norm is less accurate, or biased, per call.

    PYTHONPATH=. python benches/probes/bn_vs_torch.py
"""
import fastcnn  # isort: skip  (first: fastcnn sets the thread defaults before NumPy loads)
import numpy as np
import torch

from fastcnn import functional as F

NAMES = ("y", "grad x", "grad weight", "grad bias", "running_mean", "running_var")


def torch_bn(x, gy, w, b, dtype):
    xt, wt, bt = (torch.tensor(a, dtype=dtype, requires_grad=True) for a in (x, w, b))
    rm, rv = torch.zeros(len(w), dtype=dtype), torch.ones(len(w), dtype=dtype)
    y = torch.nn.functional.batch_norm(xt, rm, rv, wt, bt, training=True, momentum=0.1, eps=1e-5)
    y.backward(torch.tensor(gy, dtype=dtype))
    return [a.detach().numpy().astype(np.float64) for a in (y, xt.grad, wt.grad, bt.grad, rm, rv)]


def main():
    fastcnn.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((100, 16, 32, 32)) * 3 + 1.5).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32) * 1e-3
    w = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    gold, t32 = torch_bn(x, gy, w, b, torch.float64), torch_bn(x, gy, w, b, torch.float32)
    rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
    y, cache = F.batch_norm2d(x, w, b, rm, rv, training=True)
    ours = [a.astype(np.float64) for a in (y, *F.batch_norm2d_backward(gy, cache, w), rm, rv)]
    print(f"{'':13s} {'max error':>21s}   {'mean signed error':>21s}\n{'':13s} {'fastcnn':>10s} {'torch32':>10s}"
          f"   {'fastcnn':>10s} {'torch32':>10s}")
    for name, a, c, g in zip(NAMES, ours, t32, gold):
        s = np.abs(g).max()
        print(f"{name:13s} {np.abs(a - g).max() / s:10.2e} {np.abs(c - g).max() / s:10.2e}   "
              f"{np.mean(a - g) / s:+10.2e} {np.mean(c - g) / s:+10.2e}")


if __name__ == "__main__":
    main()
