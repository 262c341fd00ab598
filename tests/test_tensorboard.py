"""TensorBoardCallback: events written through tensorboardX, read back with TensorBoard's reader."""
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import fastcnn
from fastcnn import models

from utils import DATA, NEUTRAL_CWD, needs_mnist

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    hists = {t: acc.Histograms(t) for t in tags["histograms"]}
    return scalars, hists


def test_callback_with_a_fake_trainer(tmp_path):
    from fastcnn.tensorboard import TensorBoardCallback

    model = models.build("bn")
    trainer = SimpleNamespace(model=model, optimizer=None, history={}, epoch=0, global_step=0, stop_training=False)
    cb = TensorBoardCallback(tmp_path / "tb", log_every=2)
    cb.on_train_begin(trainer)
    losses = [2.0, 1.5, 1.25, 1.0, 0.75]
    for epoch in range(2):
        cb.on_epoch_begin(trainer, epoch)
        for step, loss in enumerate(losses):
            trainer.global_step += 1
            cb.on_after_backward(trainer)
            cb.on_step_end(trainer, step, loss - epoch)
        cb.on_epoch_end(trainer, epoch, {"epoch": epoch + 1, "loss": 1.3 - epoch / 2, "accuracy": 0.5 + epoch / 4,
                                         "val_loss": None if epoch == 0 else 0.4, "val_accuracy": 0.875,
                                         "lr": 1e-3, "seconds": 2.5, "images_per_s": 1234.5})
    cb.on_train_end(trainer)
    scalars, hists = read(tmp_path / "tb")
    assert scalars["train/step_loss"] == [(2, 1.5), (4, 1.0), (6, 1.0), (8, 0.25), (10, -0.25)]
    assert scalars["train/loss"] == [(1, pytest.approx(1.3)), (2, pytest.approx(0.8))]
    assert [v for _, v in scalars["train/accuracy"]] == [0.5, 0.75]
    assert scalars["val/loss"] == [(2, pytest.approx(0.4))]  # None is not logged
    assert [v for _, v in scalars["val/accuracy"]] == [0.875, 0.875]
    assert scalars["lr"][0][1] == pytest.approx(1e-3)
    assert scalars["images_per_s"][1] == (2, 1234.5) and scalars["epoch_seconds"][0] == (1, 2.5)
    w = model.state_dict()["0.weight"]
    h = hists["weights/0.weight"]
    assert [e.step for e in h] == [1, 2]
    hv = h[-1].histogram_value
    assert hv.num == w.size and hv.min == pytest.approx(w.min()) and hv.max == pytest.approx(w.max())
    assert hv.sum == pytest.approx(float(w.astype(np.float64).sum()), abs=1e-4)
    assert "weights/1.running_var" in hists and "weights/1.num_batches_tracked" not in hists


def test_missing_tensorboardx_is_one_line(monkeypatch):
    import fastcnn.tensorboard as T

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r'pip install "fastcnn\[tensorboard\]"'):
        T.TensorBoardCallback("unused")


@needs_mnist
def test_cli_train_tensorboard(tmp_path):
    tb = tmp_path / "tb"
    r = subprocess.run([sys.executable, "-m", "fastcnn", "train", "--model", "scratch", "--limit", "120",
                        "--epochs", "2", "--data-dir", DATA, "--out", str(tmp_path / "run"), "--no-progress",
                        "--tensorboard", str(tb), "--checkpoint-every", "1000"],
                       capture_output=True, text=True, cwd=NEUTRAL_CWD, timeout=600)
    assert r.returncode == 0, r.stderr
    scalars, hists = read(tb)
    extra = fastcnn.load(tmp_path / "run" / "checkpoint.npz", return_extra=True)[1]
    step_losses = extra["__history__.loss"].reshape(2, 120)  # batch 1: 120 steps per epoch
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert scalars["train/loss"] == [(1, pytest.approx(step_losses[0].mean(), rel=1e-6)),
                                     (2, pytest.approx(step_losses[1].mean(), rel=1e-6))]
    assert scalars["train/step_loss"] == [(g, pytest.approx(step_losses.flat[g - 1], rel=1e-6))
                                          for g in (50, 100, 150, 200)]
    assert [v for _, v in scalars["lr"]] == [pytest.approx(0.005)] * 2
    assert all(0 <= v <= 1 for _, v in scalars["train/accuracy"])
    seconds = [v for _, v in scalars["epoch_seconds"]]
    assert seconds == pytest.approx(metrics["epoch_seconds"], rel=1e-6)
    ips = [v for _, v in scalars["images_per_s"]]
    assert ips == pytest.approx([120 / s for s in metrics["epoch_seconds"]], rel=1e-5)
    assert "val/loss" not in scalars
    assert sorted(hists) == ["weights/0.weight", "weights/3.bias", "weights/3.weight"]
