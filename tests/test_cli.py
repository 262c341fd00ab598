"""The ``fastcnn`` command line: train and evaluate on MNIST and CIFAR-10 (with --limit),
one-line errors, info; (marked slow) full-epoch accuracy targets."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn import augment, optim
from fastcnn.train import LOG_KEYS

from utils import DATA, NEUTRAL_CWD, cifar10_root, needs_mnist


def _cli(*args, timeout=900):
    """``python -m fastcnn *args`` from a neutral directory (the installed fastcnn is imported)."""
    return subprocess.run([sys.executable, "-m", "fastcnn", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=NEUTRAL_CWD)


@needs_mnist
@pytest.mark.parametrize("model,backend", [("bn", None), ("lenet", "numba"), ("scratch", "numpy")])
def test_cli_train_limit_smoke(tmp_path, model, backend):
    out = tmp_path / "run"
    extra = ["--backend", backend] if backend else []
    r = _cli("train", "--model", model, "--limit", "300", "--data-dir", DATA, "--out", str(out),
                 "--threads", "1", *extra)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("test accuracy: ")
    acc = float(last.split(": ")[1])
    assert 0.0 <= acc <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "epoch_seconds", "train_images_per_second", "backend", "threads"):
        assert key in metrics
    assert metrics["test_accuracy"] == pytest.approx(acc, abs=1e-4)
    assert metrics["threads"] == 1 and metrics["train_images"] == 300
    assert metrics["backend"] == (backend or os.environ.get("FASTCNN_BACKEND") or fastcnn.available_backends()[-1])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r2 = _cli("evaluate", "--checkpoint", str(out / "model.npz"), "--data-dir", DATA)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.strip().splitlines()[-1] == last


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    r = _cli("train", "--model", "bn", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr
    r = _cli("train", "--model", "bn", "--backend", "gpu", "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "available" in r.stderr
    r = _cli("evaluate", "--checkpoint", str(tmp_path / "missing.npz"))
    assert r.returncode != 0 and "missing.npz" in r.stderr


@needs_mnist
def test_resume_refuses_conflicting_arguments(tmp_path):
    r = _cli("train", "--model", "scratch", "--limit", "20", "--checkpoint-every", "5", "--no-progress",
             "--out", str(tmp_path), "--data-dir", DATA)
    assert r.returncode == 0, r.stderr
    r = _cli("train", "--resume", str(tmp_path / "checkpoint.npz"), "--model", "lenet",
             "--out", str(tmp_path), "--data-dir", DATA)
    assert r.returncode == 1 and "checkpoint has model 'scratch'" in r.stderr
    r = _cli("train", "--resume", str(tmp_path / "model.npz"), "--out", str(tmp_path),
             "--data-dir", DATA)
    assert r.returncode == 1 and "not a training checkpoint" in r.stderr


def test_cli_info():
    r = _cli("info")
    assert r.returncode == 0, r.stderr
    for word in ("fastcnn", "backends:", "threads:", "openmp:", "cpu simd:", "heap: "):
        assert word in r.stdout


# Full-epoch accuracy targets: python -m pytest -m slow tests/test_cli.py
TARGETS = {"scratch": 0.950, "lenet": 0.980, "bn": 0.978}


@pytest.mark.slow
@needs_mnist
@pytest.mark.parametrize("name", ["bn", "lenet", "scratch"])
def test_full_epoch_accuracy_target(tmp_path, name):
    r = _cli("train", "--model", name, "--epochs", "1", "--seed", "0", "--data-dir", DATA,
                 "--out", str(tmp_path / name), "--no-progress")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / name / "metrics.json").read_text())
    print(name, metrics["test_accuracy"], metrics["epoch_seconds"])
    assert metrics["test_accuracy"] >= TARGETS[name]


# --------------------------------------------------------------------------- CIFAR-10

def test_cli_cifar10_resnet_recipe_outputs_and_resume(tmp_path):
    root = cifar10_root()
    common = ["--model", "resnet", "--dataset", "cifar10", "--data-dir", str(root), "--limit", "150",
              "--val-split", "50", "--batch-size", "50", "--threads", "1", "--no-progress",
              "--test-file", "test_batch_first1000.bin.gz"]
    full = _cli("train", *common, "--epochs", "2", "--early-stop", "5", "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    err = full.stderr
    assert "augment tutorial" in err and "StepLR(step_size=20" in err and "adam lr 0.001" in err
    assert "1000 images from test_batch_first1000.bin.gz (a partial CIFAR-10 test set" in err
    assert sum(line.startswith("epoch 1/2") or line.startswith("epoch 2/2") for line in err.splitlines()) == 2
    out = tmp_path / "full"
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["val_accuracy"]) == 2 and metrics["test_images"] == 1000 and metrics["train_images"] == 100
    assert metrics["val_images"] == 50 and metrics["dataset"] == "cifar10"
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and set(rows[0]) == set(LOG_KEYS)
    args = json.loads((out / "args.json").read_text())
    assert args["augment"] == "tutorial" and args["schedule"] == {"type": "StepLR", "step_size": 20, "gamma": 1 / 3}
    for name in ("model.npz", "best.npz"):
        _, meta = fastcnn.load(out / name, return_metadata=True)
        pre = meta["preprocess"]
        assert pre["dataset"] == "cifar10" and pre["input_shape"] == [3, 32, 32]
        assert pre["mean"] == [0.0] * 3 and pre["std"] == [1.0] * 3 and pre["classes"][0] == "airplane"
    ev = _cli("evaluate", "--checkpoint", str(out / "model.npz"), "--data-dir", str(root),
              "--test-file", "test_batch_first1000.bin.gz")
    assert ev.returncode == 0, ev.stderr
    assert ev.stdout.strip().splitlines()[-1] == full.stdout.strip().splitlines()[-1]
    # one epoch, then --resume to two: the same weights as two epochs straight
    cut = tmp_path / "cut"
    r1 = _cli("train", *common, "--epochs", "1", "--early-stop", "5", "--checkpoint-every", "100", "--out", str(cut))
    assert r1.returncode == 0, r1.stderr
    r2 = _cli("train", "--resume", str(cut / "checkpoint.npz"), "--epochs", "2", "--data-dir", str(root),
              "--threads", "1", "--no-progress", "--out", str(cut))
    assert r2.returncode == 0, r2.stderr
    a, b = fastcnn.load(out / "model.npz").state_dict(), fastcnn.load(cut / "model.npz").state_dict()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert json.loads((cut / "metrics.json").read_text())["val_accuracy"] == metrics["val_accuracy"]


def test_cli_flags_build_optimizer_schedule_and_normalisation(tmp_path):
    root = cifar10_root()
    r = _cli("train", "--model", "resnet", "--dataset", "cifar10", "--data-dir", str(root), "--limit", "40",
             "--batch-size", "20", "--threads", "1", "--no-progress", "--test-file", "test_batch_first1000.bin.gz",
             "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9", "--nesterov", "--weight-decay", "5e-4",
             "--schedule", "cosine", "--warmup", "1", "--augment", "crop", "--normalize", "--epochs", "2",
             "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    hist = json.loads((tmp_path / "metrics.json").read_text())
    want = optim.Chained(optim.LinearLR(0.1, 1.0, 1), optim.CosineAnnealingLR(2))
    assert hist["lr_per_epoch"] == [want.lr_at(e, 0.1) for e in range(2)]
    pre = fastcnn.load(tmp_path / "model.npz", return_metadata=True)[1]["preprocess"]
    x, _ = fastcnn.data.load_cifar10(root, "train")
    np.testing.assert_allclose(pre["mean"], augment.channel_stats(x[:40])[0])
    bad = _cli("train", "--model", "resnet", "--dataset", "cifar10", "--data-dir", str(root), "--limit", "40",
               "--out", str(tmp_path / "b"))
    assert bad.returncode == 1 and "test_batch_first1000.bin.gz" in bad.stderr and "--test-file" in bad.stderr
    bad = _cli("train", "--model", "lenet", "--dataset", "cifar10", "--data-dir", str(root), "--limit", "40",
               "--test-file", "test_batch_first1000.bin.gz", "--out", str(tmp_path / "b"))
    assert bad.returncode == 1 and "28x28" in bad.stderr
    bad = _cli("train", "--model", "bn", "--early-stop", "2", "--out", str(tmp_path / "b"))
    assert bad.returncode == 1 and "--val-split" in bad.stderr
