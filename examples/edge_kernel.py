"""Learn an edge-detecting kernel by gradient descent (the "learning a kernel" tutorial).

A 6x8 image, white (1) with its middle four columns black (0); the target is its edge map,
the image cross-correlated with the kernel [1, -1] (1 where white turns black, -1 where
black turns white).  A 1x2 convolution without bias, started from random weights, learns
that kernel back by SGD (lr 0.03) on the summed squared error.

Prints the loss every 2 of 10 epochs (it falls to about 0.02 by epoch 10) and the learned
kernel, close to [1, -1].
"""
import argparse

import numpy as np

from fastcnn import layers as L
from fastcnn import optim
from fastcnn.functional import corr2d


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--seed", type=int, default=0, help="initial weights")
    args = p.parse_args(argv)

    X = np.ones((6, 8), np.float32)
    X[:, 2:6] = 0                                    # black in the middle columns
    Y = corr2d(X, np.array([[1.0, -1.0]], np.float32))   # the edges: 1 and -1
    x, y = X[None, None], Y[None, None]              # as (N, C, H, W) batches of one

    conv = L.Conv2D(1, 1, kernel_size=(1, 2), bias=False, rng=args.seed)
    opt = optim.SGD(conv.parameters(), lr=args.lr)
    for epoch in range(1, args.epochs + 1):
        opt.zero_grad()
        err = conv.forward(x) - y
        loss = float((err ** 2).sum())               # squared error, summed
        conv.backward(2 * err)                       # its gradient w.r.t. the output
        opt.step()
        if epoch % 2 == 0:
            print(f"epoch {epoch}, loss {loss:.3f}")
    kernel = conv.weight.data.reshape(-1)
    print(f"learned kernel: [{kernel[0]:.4f}, {kernel[1]:.4f}]")
    return loss, kernel


if __name__ == "__main__":
    main()
