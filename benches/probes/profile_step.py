"""Per-layer time of one training step (forward, loss, backward, optimizer), median over steps.

Usage: python benches/probes/profile_step.py MODEL [BACKEND] [THREADS] [fuse|nofuse]
  e.g. env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/profile_step.py lenet cython 2
"""
import sys
import time
from collections import defaultdict

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import losses, models, viz
from fastcnn.train import make_optimizer


def main(name, backend=None, threads=None, fuse="fuse"):
    fastcnn.config(fuse=fuse == "fuse")
    if backend:
        fastcnn.set_backend(backend)
    if threads:
        fastcnn.set_num_threads(int(threads))
    recipe = models.RECIPES[name]
    bs = recipe["batch_size"]
    model = models.build(name, seed=0)
    model.needs_input_grad = False
    opt = make_optimizer(recipe["optimizer"], model.parameters(), recipe["lr"])
    loss_fn = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    c = 3 if name == "resnet" else 1
    x = rng.random((bs, c, models.INPUT_SIZE[name], models.INPUT_SIZE[name]), dtype=np.float32)
    y = rng.integers(0, 10, bs)
    times = defaultdict(list)
    leaves = list(viz.named_leaves(model))
    index = {id(layer): name for name, layer in leaves}

    def timed(key, f, *a, **kw):
        t0 = time.perf_counter()
        out = f(*a, **kw)
        times[key].append(time.perf_counter() - t0)
        return out

    # Timers on the layer classes, not the instances: a Sequential fuses only unwrapped
    # instances, so the step runs as in training (a fused Conv2D's time includes its ReLU and
    # pooling; the fused layers then show no time).
    for cls in {type(layer) for _, layer in leaves}:
        for what in ("forward", "backward"):
            def wrapper(self, *a, _f=getattr(cls, what), _what=what, **kw):
                where = index.get(id(self), "(a Residual's)")  # (its closing ReLU is no leaf)
                return timed(f"{where:>6s} {type(self).__name__} {_what}", _f, self, *a, **kw)
            setattr(cls, what, wrapper)

    def step():
        opt.zero_grad()
        h = model.forward(x)
        timed("   loss forward+backward", loss_fn.forward, h, y)
        model.backward(loss_fn.backward())
        timed("   optimizer step", opt.step)

    for _ in range(3):
        step()
    times.clear()
    steps = 20 if bs > 1 else 2000
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - t0) / steps
    print(f"{name} backend={fastcnn.get_backend()} threads={fastcnn.get_num_threads()} {fuse}: "
          f"step {total * 1e3:.2f} ms, {bs / total:.0f} images/s")
    parts = sum(np.median(v) for v in times.values())
    for key, v in sorted(times.items(), key=lambda kv: (kv[0].endswith("backward"), kv[0].split()[0].zfill(3))):
        print(f"  {key:28s} {np.median(v) * 1e3:8.3f} ms")
    print(f"  {'sum of parts':28s} {parts * 1e3:8.3f} ms  (the rest is Python between the parts)")


if __name__ == "__main__":
    main(*sys.argv[1:])
