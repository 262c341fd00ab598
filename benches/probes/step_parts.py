"""Per-part CPU time of one batch-1 training step of the scratch net, 1 thread, best of 7 x 3000
calls (µs): forward, loss forward, loss backward, backward, zero_grad, SGD step.

    PYTHONPATH=. python benches/probes/step_parts.py
"""
import fastcnn  # isort: skip  (first: fastcnn sets the thread defaults before NumPy loads)
import time

import numpy as np

from fastcnn import losses, models, optim


def best_us(fn, n=3000):
    for _ in range(200):
        fn()
    best = float("inf")
    for _ in range(7):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n * 1e6)
    return round(best, 2)


def main():
    fastcnn.set_num_threads(1)
    model = models.build("scratch", seed=0).train()
    opt = optim.SGD(model.parameters(), lr=0.005)
    loss = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x, y = rng.random((1, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 1)
    out = model.forward(x)
    loss.forward(out, y)
    g = loss.backward()
    print("fwd", best_us(lambda: model.forward(x)), "loss_f", best_us(lambda: loss.forward(out, y)),
          "loss_b", best_us(loss.backward), "bwd", best_us(lambda: model.backward(g)),
          "zero", best_us(opt.zero_grad), "step", best_us(opt.step))


if __name__ == "__main__":
    main()
