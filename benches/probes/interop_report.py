"""Figures of docs/INTEROP.md: ONNX agreement, DenseNet-block loss curve against torch, CIFAR-10
PNG prediction with a briefly trained ResNet, int8 accuracy.

    FASTCNN_DATA=/path/to/shared/data/mnist python benches/probes/interop_report.py [--steps 20]

Reuses the test builders (tests/utils.py, tests/test_graph.py).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import fastcnn  # noqa: E402  # isort: skip  (before NumPy: thread defaults, docs/PERFORMANCE.md)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from fastcnn import losses, models, optim  # noqa: E402
from fastcnn.export import quantize_int8, to_onnx  # noqa: E402
from fastcnn.predict import normalize, preprocess_info  # noqa: E402


def onnx_table(tmp):
    import utils

    nets = {n: (models.build(n, seed=0), (3, 32, 32) if n == "resnet" else (1, 28, 28))
            for n in ("scratch", "lenet", "bn", "resnet")}
    nets["inception graph"] = (utils.inception(np.random.default_rng(0)), (4, 9, 9))
    nets["densenet graph"] = (utils.densenet(np.random.default_rng(0)), (3, 8, 8))
    print("| network | batch | max abs diff | max abs output |")
    print("| --- | ---: | ---: | ---: |")
    for name, (m, shape) in nets.items():
        m.train().forward(np.random.default_rng(1).standard_normal((8,) + shape).astype(np.float32))
        m.eval()
        path = os.path.join(tmp, "m.onnx")
        to_onnx(m, path, shape)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for b in (1, 7):
            x = np.random.default_rng(b).standard_normal((b,) + shape).astype(np.float32)
            want = m.forward(x)
            err = np.max(np.abs(sess.run(None, {"input": x})[0] - want))
            print(f"| {name} | {b} | {err:.2e} | {np.max(np.abs(want)):.3g} |")


def densenet_curve():
    import test_graph as tg

    c = tg._densenet_loss_curves()
    gold = c["torch.float64"]
    for k in ("fastcnn", "torch.float32"):
        print(f"{k} vs torch float64: max rel loss difference over 20 steps "
              f"{np.max(np.abs(c[k] - gold) / gold):.2e}")
    print("loss (torch float64) steps 1, 10, 20:", ", ".join(f"{v:.4f}" for v in gold[[0, 9, 19]]))


def cifar_resnet(tmp, steps):
    from PIL import Image

    import utils as tp

    if tp.CIFAR is None:
        print("CIFAR-10 not found: skipped")
        return
    train_x, train_y = tp.cifar("train", 100 * steps)
    test_x, test_y = tp.cifar("test", 1000)
    scaled = train_x.astype(np.float64) / 255
    prep = {"dataset": "cifar10", "input_shape": [3, 32, 32], "mean": scaled.mean(axis=(0, 2, 3)).tolist(),
            "std": scaled.std(axis=(0, 2, 3)).tolist(), "classes": tp.CIFAR_CLASSES}
    info = preprocess_info({"preprocess": prep})
    model = models.build("resnet", seed=0)
    model.needs_input_grad = False
    opt, lf = optim.Adam(model.parameters(), 1e-3), losses.SoftmaxCrossEntropy()
    xs = normalize(train_x, info)
    t0 = time.perf_counter()
    for idx in np.random.default_rng(0).permutation(len(xs)).reshape(-1, 100):
        opt.zero_grad()
        lf.forward(model.forward(xs[idx]), train_y[idx])
        model.backward(lf.backward())
        opt.step()
    print(f"resnet: {steps} Adam steps of 100 CIFAR-10 training images in {time.perf_counter() - t0:.0f} s")
    ckpt = os.path.join(tmp, "resnet.npz")
    model.save(ckpt, metadata={"model": "resnet", "preprocess": prep})
    png = Path(tmp) / "png"
    png.mkdir()
    for i, img in enumerate(test_x):
        Image.fromarray(img.transpose(1, 2, 0)).save(png / f"{i:04d}.png")
    cmd = [sys.executable, "-m", "fastcnn", "predict", "--checkpoint", ckpt, str(png), "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    secs = time.perf_counter() - t0
    files = np.array([x["index"] for x in json.loads(r.stdout)])
    x = normalize(test_x, info)
    arrays = model.predict(x)
    print(f"fastcnn predict on 1,000 PNG files: accuracy {np.mean(files == test_y):.3f} ({secs:.1f} s incl. start-up); "
          f"arrays: {np.mean(arrays == test_y):.3f}; identical predictions: {np.array_equal(files, arrays)}")
    f32, q8 = os.path.join(tmp, "r.onnx"), os.path.join(tmp, "r8.onnx")
    to_onnx(model, f32, (3, 32, 32))
    quantize_int8(f32, q8, xs[:256])
    q = ort.InferenceSession(q8, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0].argmax(1)
    print(f"int8 (onnxruntime static, QDQ, 256 calibration images): accuracy {np.mean(q == test_y):.3f} "
          f"vs float {np.mean(arrays == test_y):.3f}; same answer on {np.mean(q == arrays):.3f} of images")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20, help="ResNet training steps (batch 100)")
    args = p.parse_args()
    print(f"fastcnn {fastcnn.__version__}, backend {fastcnn.get_backend()}, {fastcnn.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_table(tmp)
        densenet_curve()
        cifar_resnet(tmp, args.steps)


if __name__ == "__main__":
    main()
