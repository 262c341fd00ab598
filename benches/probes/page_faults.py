"""Minor page faults and step time of training steps of a recipe network (``getrusage`` over 5
steps after 3), e.g. with and without fastcnn's heap thresholds (docs/PERFORMANCE.md, 11):

    PYTHONPATH=. python benches/probes/page_faults.py cython 1 bn
    FASTCNN_HEAP=system PYTHONPATH=. python benches/probes/page_faults.py cython 1 bn
"""
import fastcnn  # isort: skip  (first: fastcnn sets the thread defaults before NumPy loads)
import resource
import sys
import time

import numpy as np

from fastcnn import _heap, losses, models, optim


def main(backend, threads, name):
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(int(threads))
    c = 3 if name == "resnet" else 1
    model = models.build(name, seed=0, in_channels=c)
    model.needs_input_grad = False
    bs, s = models.RECIPES[name]["batch_size"], models.INPUT_SIZE[name]
    opt = optim.Adam(model.parameters(), 1e-3)
    loss_fn = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x, y = rng.random((bs, c, s, s), dtype=np.float32), rng.integers(0, 10, bs)

    def step():
        opt.zero_grad()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    for _ in range(3):
        step()
    r0, t0, n = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 5
    for _ in range(n):
        step()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{name} heap={_heap.state}: minor faults per step {(r1.ru_minflt - r0.ru_minflt) / n:.1f}, "
          f"step {(time.perf_counter() - t0) / n * 1e3:.1f} ms, "
          f"system time per step {(r1.ru_stime - r0.ru_stime) / n * 1e3:.2f} ms")


if __name__ == "__main__":
    main(*sys.argv[1:])
