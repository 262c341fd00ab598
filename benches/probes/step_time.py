"""Time of one training step of a recipe network (the step of ``benches/peers.py``'s fastcnn
child, a ``fastcnn.TrainStep``: zero_grad, forward, softmax cross-entropy, backward, optimizer;
``--layers``: the same as layer calls), as the minimum and
the median over timed blocks of one process.  Run trees alternately to compare them side by
side on a noisy machine:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=<tree> python benches/probes/step_time.py \\
        cython 2 resnet --blocks 8                        # ms per step, blocks of 1 step
    ... step_time.py cython 2 scratch --blocks 15 --block 300   # us per step, blocks of 300
"""
import fastcnn  # isort: skip  (first: fastcnn sets the thread defaults before NumPy loads)
import argparse
import json
import time

import numpy as np

from fastcnn import losses, models, optim


def main():
    p = argparse.ArgumentParser()
    p.add_argument("backend")
    p.add_argument("threads", type=int)
    p.add_argument("model", choices=models.NAMES)
    p.add_argument("--blocks", type=int, default=10, help="timed blocks")
    p.add_argument("--block", type=int, default=1, help="steps per block")
    p.add_argument("--layers", action="store_true", help="the step as layer calls, not a fastcnn.TrainStep")
    a = p.parse_args()
    fastcnn.set_backend(a.backend)
    fastcnn.set_num_threads(a.threads)
    c = 3 if a.model == "resnet" else 1
    model = models.build(a.model, in_channels=c)
    model.needs_input_grad = False
    rec = models.RECIPES[a.model]
    opt = (optim.Adam(model.parameters(), rec["lr"]) if rec["optimizer"] == "adam"
           else optim.SGD(model.parameters(), rec["lr"]))
    loss_fn = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    s, bs = models.INPUT_SIZE[a.model], rec["batch_size"]
    data = [(rng.random((bs, c, s, s), dtype=np.float32), rng.integers(0, 10, bs)) for _ in range(3)]

    def layer_step(x, y):
        opt.zero_grad()
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    step = layer_step if a.layers else fastcnn.TrainStep(model, loss_fn, opt)

    for i in range(max(3, a.block)):
        step(*data[i % 3])
    per_step = []
    for _ in range(a.blocks):
        t0 = time.perf_counter()
        for i in range(a.block):
            step(*data[i % 3])
        per_step.append((time.perf_counter() - t0) / a.block)
    per_step.sort()
    unit, scale = ("us", 1e6) if a.block > 1 else ("ms", 1e3)
    print(json.dumps({"model": a.model, "backend": a.backend, "threads": fastcnn.get_num_threads(),
                      "step": "layers" if a.layers else "TrainStep", "unit": unit,
                      "min": round(per_step[0] * scale, 2), "median": round(per_step[len(per_step) // 2] * scale, 2)}))


if __name__ == "__main__":
    main()
