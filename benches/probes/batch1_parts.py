"""Batch-1 training step of the scratch network, call by call (timeit, best of 5 x 20,000).

Usage: python benches/probes/batch1_parts.py [BACKEND]
"""
import sys
import timeit

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import losses, models
from fastcnn.train import make_optimizer


def timed(name, f, n=20000):
    f()
    t = min(timeit.repeat(f, number=n, repeat=5)) / n
    print(f"  {name:22s} {t * 1e6:7.2f} us")
    return t


def main(backend="numba"):
    fastcnn.set_backend(backend)
    model = models.build("scratch", seed=0)
    model.needs_input_grad = False
    opt = make_optimizer("sgd", model.parameters(), 0.005)
    loss_fn = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x = rng.random((1, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 1)
    layers = model.layers
    acts = [x]
    for layer in layers:
        acts.append(layer.forward(acts[-1]))
    print(f"scratch, batch 1, backend {backend}")
    total = timed("zero_grad", opt.zero_grad)
    for i, layer in enumerate(layers):
        total += timed(f"{type(layer).__name__} forward", lambda: layer.forward(acts[i]))
    total += timed("loss forward", lambda: loss_fn.forward(acts[-1], y))
    total += timed("loss backward", loss_fn.backward)
    grads = [loss_fn.backward()]
    for i in reversed(range(len(layers))):
        g = grads[-1]
        total += timed(f"{type(layers[i]).__name__} backward", lambda: layers[i].backward(g))
        grads.append(layers[i].backward(g))
        if grads[-1] is None:
            break
    total += timed("optimizer step", opt.step)
    print(f"  {'sum of the calls':22s} {total * 1e6:7.2f} us")

    def step():
        opt.zero_grad()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    timed("whole step", step)


if __name__ == "__main__":
    main(*sys.argv[1:])
