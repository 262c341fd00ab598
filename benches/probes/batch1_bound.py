"""The batch-1 scratch step against the same step as bare primitive calls, part by part.

Both run in one process, alternated in blocks of 500 steps; each part is timed in place
(``perf_counter_ns`` around it, medians).  "layers" is the training step as a user writes it
(``opt.zero_grad(); loss.forward(model.forward(x), y); model.backward(loss.backward());
opt.step()``, the layers called one by one so that each can be timed); "primitives" is the
same arithmetic as the backend's primitive calls with every array allocated as the layers
do, with no checks, plans or bookkeeping: what is left of a step once the Python layer
costs nothing (docs/PERFORMANCE.md, section 5).  A third variant, the step as a
``fastcnn.TrainStep``, is timed whole in the same rotation.

Usage: python benches/probes/batch1_bound.py [BACKEND] [THREADS]
"""
import sys
import time

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import _backend, _dispatch, losses, models
from fastcnn.train import make_optimizer

PARTS = ("conv+pool forward", "flatten forward", "dense forward", "loss forward", "loss backward",
         "dense backward", "flatten backward", "conv+pool backward", "sgd")


def main(backend="cython", threads=1, blocks=24, per_block=500):
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(int(threads))
    k = _backend.ops()
    model = models.build("scratch", seed=0)
    model.needs_input_grad = False
    conv, _, flat, dense = model.layers
    opt = make_optimizer("sgd", model.parameters(), 0.005)
    loss_fn = losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x = rng.random((1, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 1)
    w1, w2, b2 = conv.weight.data, dense.weight.data, dense.bias.data
    w1c, w2c, b2c = w1.copy(), w2.copy(), b2.copy()  # (the primitives update copies)
    zeros8 = np.zeros(8, np.float32)
    labels = y.astype(np.int64)
    none = np.empty(0, np.float32)
    # the gradients in arrays kept from step to step, as the layers keep them (the update
    # takes the same tuples every step, as an optimizer hands them)
    gw1, gw2, gb2 = np.empty((8, 1, 3, 3), np.float32), np.empty((10, 1352), np.float32), np.empty(10, np.float32)
    ps, gs, nones = (w1c, w2c, b2c), (gw1, gw2, gb2), (none, none, none)
    # the strategy the layers run for this convolution (one image, one channel, 8 outputs)
    direct = _dispatch.conv_plan(k, 1, 1, 8, 3, 3, 26, 26, 4, pooled=True) == "direct"
    pc = time.perf_counter_ns

    def layers(t):
        t0 = pc()
        opt.zero_grad()
        a = conv.forward(x, max_pool2=True)  # (what Sequential runs: the pooling fused)
        t1 = pc()
        b = flat.forward(a)
        t2 = pc()
        c = dense.forward(b)
        t3 = pc()
        loss_fn.forward(c, y)
        t4 = pc()
        g = loss_fn.backward()
        t5 = pc()
        g = dense.backward(g)
        t6 = pc()
        g = flat.backward(g)
        t7 = pc()
        conv.backward(g)
        t8 = pc()
        opt.step()
        t9 = pc()
        t.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7, t9 - t8))

    def primitives(t):
        t0 = pc()
        yp = np.empty((1, 8, 13, 13), np.float32)
        idx = np.empty((1, 8, 13, 13), np.int32)
        if direct:  # (the pooling fused into the kernel)
            k.conv2d_direct_forward_maxpool2(x, w1c, zeros8, 1, 1, 0, 0, 0, 26, 26, yp, idx)
        else:  # (one GEMM, then the pooling)
            cols = np.empty((9, 676), np.float32)
            k.im2col(x, 3, 3, 1, 1, 0, 0, 26, 26, cols)
            full = np.dot(w1c.reshape(8, 9), cols).reshape(1, 8, 26, 26)
            k.maxpool2d_forward(full, 2, 2, 2, 2, 0, 0, yp, idx)
        t1 = pc()
        f = yp.reshape(1, 1352)
        t2 = pc()
        logits = np.dot(f, w2c.T)
        logits += b2c
        t3 = pc()
        probs = np.empty((1, 10), np.float32)
        lss = np.empty(1, np.float32)
        k.softmax_xent_forward(logits, labels, probs, lss)
        float(lss[0])  # (the loss value the layers return)
        t4 = pc()
        glog = np.empty((1, 10), np.float32)
        k.softmax_xent_backward(probs, labels, glog)
        t5 = pc()
        np.dot(glog.T, f, out=gw2)
        gb2[...] = glog[0]
        gx = np.dot(glog, w2c)
        t6 = pc()
        g4 = gx.reshape(1, 8, 13, 13)
        t7 = pc()
        full = np.empty((1, 8, 26, 26), np.float32)
        k.maxpool2d_backward(g4, idx, full)
        cols = np.empty((9, 676), np.float32)
        k.im2col(x, 3, 3, 1, 1, 0, 0, 26, 26, cols)
        np.dot(full.reshape(8, 676), cols.T, out=gw1.reshape(8, 9))
        t8 = pc()
        k.sgd_step(ps, gs, nones, 0.005, 0.0, 0.0, 0.0, False, False)
        t9 = pc()
        t.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7, t9 - t8))

    # the same step as a fastcnn.TrainStep on a copy of the network (timed whole)
    model2 = models.build("scratch", seed=0)
    model2.needs_input_grad = False
    step = fastcnn.TrainStep(model2, losses.SoftmaxCrossEntropy(), make_optimizer("sgd", model2.parameters(), 0.005))

    def bound(t):
        t0 = pc()
        step(x, y)
        t.append(pc() - t0)

    times = {"layers": [], "primitives": [], "bound": []}
    fns = {"layers": layers, "primitives": primitives, "bound": bound}
    for r in range(blocks):
        for name in (("layers", "bound", "primitives") if r % 2 == 0 else ("primitives", "bound", "layers")):
            fn, t = fns[name], times[name]
            for _ in range(per_block):
                fn(t)
    print(f"scratch, batch 1, backend {backend}, {threads} thread(s); medians in us, in place")
    print("| part | layers | primitives | difference |\n|---|---:|---:|---:|")
    sums = [0.0, 0.0]
    for i, part in enumerate(PARTS):
        a, b = (np.median([s[i] for s in times[n][per_block:]]) / 1e3 for n in ("layers", "primitives"))
        sums[0] += a
        sums[1] += b
        print(f"| {part} | {a:.2f} | {b:.2f} | {a - b:.2f} |")
    print(f"| sum | {sums[0]:.2f} | {sums[1]:.2f} | {sums[0] - sums[1]:.2f} |")
    whole = np.median(times["bound"][per_block:]) / 1e3
    print(f"\nWhole step as a fastcnn.TrainStep (timed whole, median): {whole:.2f} us (step.bound={step.bound})")


if __name__ == "__main__":
    main(*sys.argv[1:])
