"""Time of one training step of a recipe network (the step of ``benches/peers.py``'s fastcnn
child, a ``fastcnn.TrainStep``: zero_grad, forward, softmax cross-entropy, backward, optimizer;
``--layers``: the same as layer calls), as the minimum and
the median over timed blocks of one process.  Run trees alternately to compare them side by
side on a noisy machine:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=<tree> python benches/probes/step_time.py \\
        cython 2 resnet --blocks 8                        # ms per step, blocks of 1 step
    ... step_time.py cython 2 scratch --blocks 15 --block 300   # us per step, blocks of 300
    ... step_time.py cython 1 lenet --blocks 12 --alternate 2   # 1 and 2 threads, block by block

``--alternate T2`` switches the thread count between ``threads`` and ``T2`` before every block
(``fastcnn.set_num_threads``, the same model and step), so that both see the same phases of a
shared host; it reports each count's minimum and median and the median of the adjacent
blocks' time ratios (``threads`` over ``T2``: the speed-up from ``threads`` to ``T2``).
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
    p.add_argument("--alternate", type=int, default=0, metavar="T2", help="alternate the thread count with T2")
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

    counts = (a.threads, a.alternate) if a.alternate else (a.threads,)
    for t in counts:  # (warm-up at each thread count: plans and buffers per count)
        fastcnn.set_num_threads(t)
        for i in range(max(3, a.block)):
            step(*data[i % 3])
    per_step: dict = {t: [] for t in counts}
    for _ in range(a.blocks):
        for t in counts:
            fastcnn.set_num_threads(t)
            if fastcnn.get_num_threads() != t:
                raise SystemExit(f"step_time: asked for {t} threads, got {fastcnn.get_num_threads()}")
            t0 = time.perf_counter()
            for i in range(a.block):
                step(*data[i % 3])
            per_step[t].append((time.perf_counter() - t0) / a.block)
    unit, scale = ("us", 1e6) if a.block > 1 else ("ms", 1e3)
    for t in counts:
        times = sorted(per_step[t])
        print(json.dumps({"model": a.model, "backend": a.backend, "threads": t,
                          "step": "layers" if a.layers else "TrainStep", "unit": unit,
                          "min": round(times[0] * scale, 2), "median": round(times[len(times) // 2] * scale, 2)}))
    if a.alternate:
        ratios = sorted(p / q for p, q in zip(per_step[a.threads], per_step[a.alternate]))
        print(json.dumps({"speedup": f"{a.threads} -> {a.alternate} threads",
                          "median": round(ratios[len(ratios) // 2], 3), "min": round(ratios[0], 3),
                          "max": round(ratios[-1], 3), "pairs": len(ratios)}))

if __name__ == "__main__":
    main()
