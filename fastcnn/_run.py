"""One run of ``fastcnn train`` into an output directory (docs/TRAINING.md, "Command line").

:mod:`fastcnn.cli` turns the flags into :class:`Settings` (a new run: the model's recipe
overridden by the flags; ``--resume``: the settings saved in the checkpoint, :func:`resume`)
and calls :func:`run`: load the data, build the model and optimizer, train with
:func:`fastcnn.train.fit` and its callbacks, write the outputs.  The settings are the flags of
``fastcnn train`` (one field each), and error messages name the flags.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import warnings
from typing import Any

import numpy as np

import fastcnn

from . import augment, data, losses, models, optim, train
from .model import atomic_write

#: The fields of :class:`Settings`: written to checkpoints (trainer state) and ``args.json``.
SAVED = ("model", "dataset", "seed", "batch_size", "lr", "optimizer", "momentum", "nesterov", "weight_decay",
         "epochs", "limit", "val_split", "early_stop", "augment", "normalize", "test_file", "schedule", "mean",
         "std")

#: Trainer-state entries ``--resume`` needs (written by every ``fastcnn train`` checkpoint).
RESUME_KEYS = ("model", "seed", "batch_size", "lr", "optimizer", "epochs", "limit", "epoch", "step",
               "global_step", "epoch_logs", "epoch_seconds", "images_seen", "seconds")

#: Settings a ``--resume`` refuses to change (a command line that contradicts them is an error).
RESUME_CHECKED = ("model", "dataset", "batch_size", "lr", "optimizer", "seed", "limit", "val_split",
                  "momentum", "weight_decay", "augment")

#: Entries of a checkpoint's trainer state that position the loop (``fit(state=...)``).
FIT_STATE = ("epoch", "step", "global_step", "epoch_logs", "epoch_seconds", "images_seen", "seconds",
             "partial_seconds", "callbacks")


@dataclasses.dataclass
class Settings:
    """What a run trains, on what and how: one field per flag of ``fastcnn train``.

    ``schedule`` is a :meth:`fastcnn.optim.Schedule.config` dict (None: a constant learning
    rate); ``mean`` and ``std`` (per channel) are set by :func:`run` from the training images
    when ``normalize`` is on, and kept for a resumed run.
    """

    model: str
    batch_size: int
    lr: float
    optimizer: str
    dataset: str = "mnist"
    seed: int = 0
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float | None = None
    epochs: int = 1
    limit: int | None = None
    val_split: int = 0
    early_stop: int | None = None
    augment: str = "none"
    normalize: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    test_file: str | None = None
    schedule: dict[str, Any] | None = None

    def saved(self) -> dict[str, Any]:
        """The settings as written to checkpoints and ``args.json`` (``mean``/``std`` only once set)."""
        d = dataclasses.asdict(self)
        return {k: d[k] for k in SAVED if not (k in ("mean", "std") and d[k] is None)}


@dataclasses.dataclass
class Resumed:
    """What ``--resume PATH`` continues from (:func:`resume`)."""

    path: str
    model: Any
    optimizer_state: dict[str, np.ndarray]
    fit_state: dict[str, Any]
    steps: dict[str, list[float]]


def resume(path: str) -> tuple[Settings, Resumed]:
    """The settings and the model, optimizer and loop state of a ``fastcnn train`` checkpoint."""
    model, opt_state, state, steps = train.load_checkpoint(path)
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing or state["model"] not in models.RECIPES:
        raise ValueError(f"{path}: not a checkpoint of fastcnn train (trainer state lacks {missing} "
                         f"or names an unknown model)")
    names = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: v for k, v in state.items() if k in names})  # older checkpoints: the defaults
    fit_state = {k: state[k] for k in FIT_STATE if k in state}
    return settings, Resumed(path, model, opt_state, fit_state, steps)


# --------------------------------------------------------------------------- data and preprocessing

def load_data(s: Settings, data_dir: str | None, download: bool = False) -> tuple[Any, Any, Any]:
    """``(train, val, test)`` uint8 image/label pairs, with ``limit`` and ``val_split`` applied
    (``val`` None without a validation split)."""
    kw = {"test_file": s.test_file} if s.test_file else {}
    if kw and s.dataset != "cifar10":
        raise ValueError("--test-file applies to --dataset cifar10 only")
    train_x, train_y = data.load_dataset(s.dataset, data_dir, "train", download=download)
    with warnings.catch_warnings():  # a partial test file: the banner says what was read
        warnings.simplefilter("ignore", UserWarning)
        test_x, test_y = data.load_dataset(s.dataset, data_dir, "test", download=download, **kw)
    size = models.INPUT_SIZE[s.model]
    if train_x.shape[2] > size:
        raise ValueError(f"model {s.model} takes {size}x{size} images; {s.dataset} images are "
                         f"{train_x.shape[2]}x{train_x.shape[3]} (use --model resnet)")
    if s.limit:
        train_x, train_y = train_x[:s.limit], train_y[:s.limit]
    v = s.val_split or 0
    if v >= len(train_y):
        raise ValueError(f"--val-split {v} leaves no training images (only {len(train_y)})")
    val = (train_x[len(train_y) - v:], train_y[len(train_y) - v:]) if v else None
    return (train_x[:len(train_y) - v], train_y[:len(train_y) - v]), val, (test_x, test_y)


def _load_data_once_per_host(s: Settings, data_dir: str | None, download: bool, comm: Any) -> tuple[Any, Any, Any]:
    """:func:`load_data`; with ``download`` under MPI, one rank per host downloads first."""
    if comm is None or not download:
        return load_data(s, data_dir, download)
    from . import distributed

    first = distributed.local_rank(comm) == 0
    if first:
        out = load_data(s, data_dir, download)
    comm.Barrier()
    return out if first else load_data(s, data_dir, False)


def pipeline(s: Settings, train_images: np.ndarray) -> augment.Pipeline:
    """The augmentation/preprocessing pipeline; with ``normalize`` the per-channel mean and std
    of the training images (computed once, then kept in ``s``)."""
    if s.normalize and s.mean is None:
        s.mean, s.std = augment.channel_stats(train_images)
    size = models.INPUT_SIZE[s.model]
    pad = size if train_images.shape[-1] < size else None
    return augment.from_name(s.augment, s.mean, s.std, input_size=pad)


def preprocess_record(s: Settings, pipe: augment.Pipeline, images: np.ndarray) -> dict[str, Any]:
    """What ``fastcnn predict`` needs to prepare an image as training did: pixels of
    ``input_shape`` scaled to ``[0, 1]``, zero-padded to ``pad_to`` (None: no padding), then
    ``(x - mean) / std`` per channel."""
    c, h, w = (1, *images.shape[1:]) if images.ndim == 3 else images.shape[1:]
    return {"dataset": s.dataset, "input_shape": [c, h, w], "pad_to": pipe.input_size,
            "mean": pipe.mean or [0.0] * c, "std": pipe.std or [1.0] * c, "classes": data.CLASSES[s.dataset]}


# --------------------------------------------------------------------------- checkpoints and outputs

class Checkpointing(train.Callback):
    """``checkpoint.npz`` every ``every`` steps and after each epoch (``every`` None: never),
    and on SIGINT/SIGTERM (``trainer.stop_code``, the signal number; distributed: the same
    step on every rank) save and raise :class:`fastcnn.train.Interrupted`.  ``write=False``
    (ranks other than 0): never write, only stop."""

    def __init__(self, path: str, every: int | None, settings: dict[str, Any], write: bool = True):
        self.path, self.every, self.settings, self.write = path, every, settings, write

    def save(self, trainer: train.Trainer, partial: bool = False) -> None:
        if not self.write:
            return
        st = trainer.partial_state() if partial else trainer.state_dict()
        train.save_checkpoint(self.path, trainer.model, trainer.optimizer, {**self.settings, **st}, trainer.steps)

    def on_step_end(self, trainer: train.Trainer, step: int, loss: float) -> None:
        if trainer.stop_code:
            self.save(trainer, partial=True)
            raise train.Interrupted(trainer.stop_code, self.path)
        if self.every and trainer.step % self.every == 0:
            self.save(trainer, partial=True)

    def on_epoch_end(self, trainer: train.Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if self.every:
            self.save(trainer)


def write_outputs(out: str, s: Settings, model: Any, history: list[dict[str, Any]], steps: dict[str, list[float]],
                  test: tuple[Any, Any], pipe: augment.Pipeline, n_train: int, preprocess: dict[str, Any],
                  resumed: bool, flag: train.SignalFlag, dist: Any = None) -> dict[str, Any] | None:
    """model.npz first; then (a signal now stops at once: the weights are safe) the final
    evaluation on the test split, model.npz with its test accuracy, metrics.json,
    history.csv, curves.png.  Distributed (``dist``): every rank evaluates its shard of the
    test split, only rank 0 writes (the others return None)."""
    write = dist is None or dist.rank == 0
    model_path = os.path.join(out, "model.npz")
    if write:
        model.save(model_path, metadata={"model": s.model, "seed": s.seed, "preprocess": preprocess})
    evaluate = train.evaluate  # looked up now: the tests replace it to time a signal
    if dist is not None:
        dist.comm.Barrier()  # model.npz is on disk before any rank may stop (and abort the job) on a signal
        evaluate = dist.evaluate
    flag.stop_at_once(model_path)
    test_x, test_y = test
    test_acc, test_loss = evaluate(model, test_x, test_y, preprocess=pipe.eval)
    if not write:
        return None
    seconds = sum(e["seconds"] for e in history)
    images = sum(e["images_per_s"] * e["seconds"] for e in history)
    vals = [e["val_accuracy"] for e in history if e.get("val_accuracy") is not None]
    metrics = {
        "model": s.model, "dataset": s.dataset, "test_accuracy": test_acc, "test_loss": test_loss,
        "test_images": int(len(test_y)), "test_file": s.test_file,
        "epoch_seconds": [e["seconds"] for e in history],
        "train_images_per_second": images / max(seconds, 1e-9),
        "backend": fastcnn.get_backend(), "threads": fastcnn.get_num_threads(), "epochs": s.epochs,
        "epochs_run": len(history), "batch_size": s.batch_size, "lr": s.lr, "optimizer": s.optimizer,
        "seed": s.seed, "train_images": int(n_train), "val_images": int(s.val_split or 0),
        "resumed": bool(resumed),
        "final_train_loss": float(np.mean(steps["loss"][-100:])) if steps.get("loss") else None,
        "train_loss": [e["loss"] for e in history], "train_accuracy": [e["accuracy"] for e in history],
        "lr_per_epoch": [e["lr"] for e in history],
        "fastcnn_version": fastcnn.__version__, "ranks": 1 if dist is None else dist.size,
    }
    if vals:
        best = int(np.argmax(vals))
        metrics.update(val_accuracy=vals, val_loss=[e["val_loss"] for e in history],
                       best_val_accuracy=vals[best], best_epoch=best + 1)
    model.save(model_path, metadata={"model": s.model, "test_accuracy": test_acc, "seed": s.seed,
                                     "preprocess": preprocess})
    atomic_write(os.path.join(out, "metrics.json"),
                 lambda f: f.write(json.dumps(metrics, indent=2).encode() + b"\n"))
    train.write_history_csv(os.path.join(out, "history.csv"), history)
    train.plot_history(os.path.join(out, "curves.png"), history, steps, test_acc)
    return metrics


def _banner(s: Settings, train_set: Any, val: Any, test: Any, schedule: Any, resumed: Resumed | None,
            dist: Any, sync_bn: bool) -> str:
    return (f"training {s.model} on {len(train_set[1])} {s.dataset} images"
            + (f" ({len(val[1])} held out for validation)" if val else "")
            + f": {s.optimizer} lr {s.lr}, batch {s.batch_size}, {s.epochs} epoch(s), "
            f"augment {s.augment}, schedule {schedule}, backend {fastcnn.get_backend()}, "
            f"{fastcnn.get_num_threads()} thread(s); test: {len(test[1])} images"
            + (f" from {s.test_file}" if s.test_file else "")
            + (" (a partial CIFAR-10 test set; the official one has 10000)"
               if s.dataset == "cifar10" and len(test[1]) != 10000 else "")
            + (f", resuming at epoch {resumed.fit_state['epoch'] + 1} step {resumed.fit_state['step']}"
               if resumed else "")
            + (f"; {dist.size} MPI ranks (batch {s.batch_size} split among them"
               f"{', synchronised BatchNorm' if sync_bn else ''})" if dist is not None else ""))


# --------------------------------------------------------------------------- the run

def run(s: Settings, out: str, *, resumed: Resumed | None = None, data_dir: str | None = None,
        download: bool = False, checkpoint_every: int | None = None, detect_anomaly: bool = False,
        tensorboard: str | None = None, progress: bool = True, comm: Any = None, sync_bn: bool = False) -> int:
    """Train as ``fastcnn train`` does and write ``out``'s files; returns the exit status (0).

    ``comm``: one rank of ``--distributed`` (only rank 0 prints and writes files).  The caller
    holds the output directory (:func:`fastcnn._runio.claim_output_dir`) on rank 0.
    """
    dist = None
    if comm is not None:
        from . import distributed

        dist = distributed.DistributedCallback(comm, sync_bn=sync_bn)
    rank0 = dist is None or dist.rank == 0  # only rank 0 prints and writes files
    log = sys.stderr if rank0 else io.StringIO()
    train_set, val, test = _load_data_once_per_host(s, data_dir, download, comm)
    if dist is not None:  # before the first step, with the flags named
        try:
            train.check_shards(len(train_set[1]), s.batch_size, dist.size)
        except ValueError as exc:
            raise ValueError(f"--distributed with {dist.size} ranks: {str(exc).removeprefix('fit: ')}") from None
    pipe = pipeline(s, train_set[0])
    model = resumed.model if resumed else models.build(s.model, seed=s.seed, in_channels=train_set[0].shape[1])
    optimizer = train.make_optimizer(s.optimizer, model.parameters(), s.lr, momentum=s.momentum,
                                     nesterov=s.nesterov, weight_decay=s.weight_decay)
    if resumed:
        optimizer.load_state_dict(resumed.optimizer_state)
    fastcnn.warmup(fastcnn.get_backend())
    saved = s.saved()
    if rank0:
        os.makedirs(out, exist_ok=True)
        atomic_write(os.path.join(out, "args.json"),
                     lambda f: f.write(json.dumps({**saved, "backend": fastcnn.get_backend(),
                                                   "threads": fastcnn.get_num_threads(), "data_dir": data_dir,
                                                   "out": out, "checkpoint_every": checkpoint_every,
                                                   "resume": resumed.path if resumed else None,
                                                   "ranks": 1 if dist is None else dist.size,
                                                   "sync_bn": bool(sync_bn)}, indent=2).encode() + b"\n"))
    pre = preprocess_record(s, pipe, train_set[0])
    schedule = optim.schedule_from_config(s.schedule)
    print(_banner(s, train_set, val, test, schedule, resumed, dist, sync_bn), file=log, flush=True)
    progress = rank0 and progress and sys.stderr.isatty()
    callbacks: list[train.Callback] = []
    if rank0:  # the callbacks that print or write files
        callbacks.append(train.CSVLogger(os.path.join(out, "history.csv")))
        if not progress:
            callbacks.append(train.EpochLog())
        if val:
            callbacks.append(train.BestCheckpoint(os.path.join(out, "best.npz"),
                                                  metadata={"model": s.model, "seed": s.seed, "preprocess": pre}))
    if s.early_stop:  # the same validation metrics, so the same decision, on every rank
        callbacks.append(train.EarlyStopping(s.early_stop))
    if tensorboard and rank0:
        from .tensorboard import TensorBoardCallback

        callbacks.append(TensorBoardCallback(tensorboard))
    steps = resumed.steps if resumed else {}
    with train.SignalFlag() as flag:
        callbacks.append(Checkpointing(os.path.join(out, "checkpoint.npz"), checkpoint_every, saved, write=rank0))
        history = train.fit(model, losses.SoftmaxCrossEntropy(), optimizer, train_set, epochs=s.epochs,
                            batch_size=s.batch_size, val_data=val, schedule=schedule, augment=pipe,
                            callbacks=callbacks, seed=s.seed, progress=progress, detect_anomaly=detect_anomaly,
                            state=resumed.fit_state if resumed else None, step_history=steps, base_lr=s.lr,
                            distributed=dist, stop_requested=lambda: flag.signum or 0)
        metrics = write_outputs(out, s, model, history, steps, test, pipe, len(train_set[1]), pre,
                                resumed is not None, flag, dist)
        if metrics is None:
            return 0
        if len(history) < s.epochs:
            print(f"early stop after epoch {len(history)}: no better validation accuracy for {s.early_stop} epochs",
                  file=sys.stderr)
        if "best_val_accuracy" in metrics:
            print(f"best validation accuracy: {metrics['best_val_accuracy']:.4f} (epoch {metrics['best_epoch']}, "
                  f"{os.path.join(out, 'best.npz')})", file=sys.stderr)
        print(f"epoch seconds: {', '.join(f'{t:.1f}' for t in metrics['epoch_seconds'])}; "
              f"{metrics['train_images_per_second']:.0f} images/s; wrote {out}", file=sys.stderr)
        print(f"test accuracy: {metrics['test_accuracy']:.4f}")
    return 0
