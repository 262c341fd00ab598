"""Every convolution strategy of both compiled backends at the CIFAR ResNet's shapes against
float64 PyTorch: max error relative to the largest float64 value, of the output and the input
and weight gradients.

    PYTHONPATH=. python benches/probes/conv_vs_float64.py
"""
import fastcnn  # isort: skip  (first: fastcnn sets the thread defaults before NumPy loads)
import numpy as np
import torch

from fastcnn import functional as F

# (N, C, H, W, OC, stride), 3x3 kernels, padding 1
SHAPES = [(100, 64, 8, 8, 64, 1), (100, 32, 16, 16, 32, 1), (100, 16, 32, 32, 16, 1), (100, 3, 32, 32, 16, 1),
          (100, 16, 32, 32, 32, 2), (100, 32, 16, 16, 64, 2), (7, 64, 8, 8, 64, 1)]


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def main():
    fastcnn.set_num_threads(2)
    r = np.random.default_rng(0)
    for backend in ("cython", "numba"):
        fastcnn.set_backend(backend)
        for conv in ("direct", "per_image", "chunked", "auto"):
            with fastcnn.config(conv=conv):
                for n, c, h, w, oc, s in SHAPES:
                    x = r.standard_normal((n, c, h, w)).astype(np.float32)
                    wt = (r.standard_normal((oc, c, 3, 3)) * 0.1).astype(np.float32)
                    y = F.conv2d(x, wt, None, s, 1)
                    go = r.standard_normal(y.shape).astype(np.float32)
                    gx, gw, _ = F.conv2d_backward(go, x, wt, s, 1, bias=True)
                    tx = torch.from_numpy(x).double().requires_grad_()
                    tw = torch.from_numpy(wt).double().requires_grad_()
                    ty = torch.nn.functional.conv2d(tx, tw, None, s, 1)
                    ty.backward(torch.from_numpy(go).double())
                    print(backend, conv, (n, c, h, w, oc, s), f"y {rel(y, ty.detach().numpy()):.2e}",
                          f"gx {rel(gx, tx.grad.numpy()):.2e} gw {rel(gw, tw.grad.numpy()):.2e}")


if __name__ == "__main__":
    main()
