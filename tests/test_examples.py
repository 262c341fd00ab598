"""Every script in examples/ runs (small sizes) and prints what its docstring says it shows."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import data, models
from fastcnn.train import evaluate

from utils import CIFAR, DATA, NEUTRAL_CWD, needs_cifar, needs_mnist

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script, *args):
    r = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                       cwd=NEUTRAL_CWD, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def load(script):
    spec = importlib.util.spec_from_file_location(script[:-3], EXAMPLES / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("script,name", [("scratch_mnist.py", "scratch"), ("lenet_mnist.py", "lenet"),
                                         ("batchnorm_mnist.py", "bn")])
def test_example_networks_are_the_seed_networks(script, name):
    """Written out layer by layer in the example, the same network (and initial weights) as
    ``fastcnn.models.build``."""
    ours, seed = load(script).network(seed=0), models.build(name, seed=0)
    assert ours.config() == seed.config()
    a, b = ours.state_dict(), seed.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_edge_kernel():
    out = run("edge_kernel.py")
    losses = [float(m.group(2)) for m in map(re.compile(r"epoch (\d+), loss ([\d.]+)").fullmatch, out[:-1])]
    assert [ln.split(",")[0] for ln in out[:-1]] == [f"epoch {e}" for e in (2, 4, 6, 8, 10)]
    assert all(a > b for a, b in zip(losses, losses[1:])) and losses[-1] < 0.05
    k = [float(v) for v in re.fullmatch(r"learned kernel: \[(.*), (.*)\]", out[-1]).groups()]
    assert abs(k[0] - 1) < 0.05 and abs(k[1] + 1) < 0.05


@needs_mnist
def test_scratch_mnist():
    out = run("scratch_mnist.py", "--train", "200", "--test", "100", "--epochs", "2", "--data-dir", DATA)
    assert out.count("--- Epoch 1 ---") == 1 and out.count("--- Epoch 2 ---") == 1
    steps = [ln for ln in out if ln.startswith("[Step ")]
    assert len(steps) == 4 and all(re.fullmatch(r"\[Step \d00\] Past 100 steps: Average Loss [\d.]+ \| "
                                                r"Accuracy: \d+%", ln) for ln in steps)
    acc = float(out[-1].split(": ")[1])
    assert out[-1].startswith("Test Accuracy: ") and 0.3 < acc <= 1.0  # 400 SGD steps: well above chance


@needs_mnist
def test_lenet_mnist(tmp_path):
    png, model = tmp_path / "curves.png", tmp_path / "lenet.npz"
    out = run("lenet_mnist.py", "--steps", "100", "--batch-size", "8", "--test", "200", "--data-dir", DATA,
              "--out", str(png), "--save", str(model))
    assert re.fullmatch(r"step 100: loss [\d.]+, training accuracy [\d.]+", out[0])
    assert re.fullmatch(r"training: [\d.]+ s for 100 steps \(\w+, \d+ threads\)", out[1])
    acc = float(out[2].split(": ")[1])
    assert out[2].startswith("test accuracy: ") and acc > 0.5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    images, labels = data.load_mnist(DATA, "test")
    assert evaluate(fastcnn.load(model), images[:200], labels[:200])[0] == pytest.approx(acc, abs=1e-9)


@needs_mnist
def test_batchnorm_mnist():
    out = run("batchnorm_mnist.py", "--limit", "10000", "--test", "1000", "--data-dir", DATA)
    m = re.fullmatch(r"epoch 1 step 100: loss ([\d.]+)", out[0])
    assert m and float(m.group(1)) < 1.0  # from 2.3 at the start
    assert out[1].startswith("training: ")
    assert out[2].startswith("test accuracy: ") and float(out[2].split(": ")[1]) > 0.8


@needs_cifar
def test_cifar10_resnet():
    out = run("cifar10_resnet.py", "--limit", "200", "--test", "100", "--data-dir", str(CIFAR),
              "--test-file", "test_batch_first1000.bin.gz")
    assert out[0].startswith("epoch 1")
    assert out[-2].startswith("training: ")
    acc = float(out[-1].split(": ")[1])
    assert out[-1].startswith("test accuracy: ") and 0.0 <= acc <= 1.0
