"""TensorBoard logging of training (``fastcnn train --tensorboard DIR``).

Writes event files through ``tensorboardX`` (``pip install "fastcnn[tensorboard]"``; no
TensorFlow or PyTorch needed); view them with ``tensorboard --logdir DIR``.

Tags: per epoch ``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``, ``lr``,
``images_per_s``, ``epoch_seconds`` (each only when the trainer reports it) at step
``logs["epoch"]``; every ``log_every`` optimizer steps ``train/step_loss`` at the global step;
per epoch a histogram ``weights/<name>`` of every parameter and BatchNorm running statistic.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .train import Callback, Logs, Trainer

__all__ = ["TensorBoardCallback", "SCALARS"]

#: ``logs`` key -> TensorBoard tag, for the per-epoch scalars.
SCALARS = {
    "loss": "train/loss", "accuracy": "train/accuracy", "val_loss": "val/loss", "val_accuracy": "val/accuracy",
    "lr": "lr", "images_per_s": "images_per_s", "seconds": "epoch_seconds",
}


def _summary_writer(logdir: str) -> Any:
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError('TensorBoard logging needs tensorboardX: pip install "fastcnn[tensorboard]"') from None
    return SummaryWriter(logdir)


class TensorBoardCallback(Callback):
    """Log a training run to TensorBoard event files in ``logdir``.

    Parameters
    ----------
    logdir : str or path
    log_every : int
        Log the step loss every this many optimizer steps (0: never).
    histograms : bool
        Write a histogram of every weight array at the end of each epoch.
    """

    def __init__(self, logdir: str | os.PathLike[str], log_every: int = 50, histograms: bool = True):
        if log_every < 0:
            raise ValueError(f"TensorBoardCallback: log_every must be >= 0, got {log_every}")
        self.logdir, self.log_every, self.histograms = str(logdir), int(log_every), bool(histograms)
        self.writer = _summary_writer(self.logdir)

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        g = int(trainer.global_step)
        if self.log_every and g % self.log_every == 0:
            self.writer.add_scalar("train/step_loss", float(loss), g)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        at = int(logs.get("epoch", epoch))
        for key, tag in SCALARS.items():
            value = logs.get(key)
            if value is not None:
                self.writer.add_scalar(tag, float(value), at)
        if self.histograms:
            for name, arr in trainer.model.state_dict().items():
                arr = np.asarray(arr)
                if arr.dtype.kind == "f" and arr.size:
                    self.writer.add_histogram("weights/" + name, arr, at)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        self.writer.close()
