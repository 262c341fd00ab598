"""Training and evaluation loops used by the ``fastcnn`` command line."""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from . import data as _data
from .augment import Pipeline
from .losses import SoftmaxCrossEntropy
from .optim import SGD, Adam, AdamW
from .step import TrainStep

if TYPE_CHECKING:
    from .distributed import DistributedCallback
    from .layers import Layer, Parameter
    from .optim import Optimizer, Schedule

#: Per-epoch logs: the keys of :data:`LOG_KEYS`.
Logs = dict[str, Any]
#: ``(images, labels)``: uint8 images and integer labels.
Dataset = tuple[np.ndarray, np.ndarray]


class Loss(Protocol):
    """What :func:`fit` needs of a loss (:class:`fastcnn.losses.SoftmaxCrossEntropy`)."""

    def forward(self, prediction: np.ndarray, target: np.ndarray, /) -> float: ...

    def backward(self) -> np.ndarray: ...


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or infinite loss."""


OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(name: str, params: Iterable[Parameter], lr: float, *, momentum: float = 0.0,
                   nesterov: bool = False, weight_decay: float | None = None) -> SGD | Adam:
    """``"sgd"``, ``"adam"`` or ``"adamw"`` over ``params`` with learning rate ``lr``
    (``weight_decay`` None: torch's default, 0 for SGD/Adam and 0.01 for AdamW)."""
    if name == "sgd":
        return SGD(params, lr, momentum, nesterov=nesterov, weight_decay=weight_decay or 0.0)
    if momentum or nesterov:
        raise ValueError(f"momentum/nesterov apply to sgd only, not {name}")
    if name == "adam":
        return Adam(params, lr, weight_decay=weight_decay or 0.0)
    if name == "adamw":
        return AdamW(params, lr, weight_decay=0.01 if weight_decay is None else weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def recipe_step(name: str, seed: int = 0) -> tuple[Layer, Callable[[np.ndarray, np.ndarray], float]]:
    """The seed network ``name`` with its recipe's optimizer, and ``step(x, y) -> loss``: one
    training step (zero the gradients, forward, softmax cross-entropy, backward, update), a
    :class:`fastcnn.step.TrainStep`.

    The first layer computes no input gradient.  Used by the benchmarks and profiling scripts.
    """
    from . import losses, models

    recipe: dict[str, Any] = models.RECIPES[name]
    model = models.build(name, seed=seed)
    model.needs_input_grad = False
    opt = make_optimizer(recipe["optimizer"], model.parameters(), recipe["lr"])
    loss_fn = losses.SoftmaxCrossEntropy()

    return model, TrainStep(model, loss_fn, opt)


def pad_to(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad ``(N, C, H, W)`` images symmetrically to ``size x size`` (no-op if already)."""
    h, w = x.shape[2:]
    if (h, w) == (size, size):
        return x
    if h > size or w > size:
        raise ValueError(f"images of {h}x{w} are larger than the model input {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros(x.shape[:2] + (size, size), np.float32)
    out[:, :, top:top + h, left:left + w] = x
    return out


def evaluate(model: Layer, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000,
             input_size: int | None = None,
             preprocess: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[float, float]:
    """Accuracy and mean loss of ``model`` (eval mode) on uint8 ``images`` ``(N, H, W)`` or
    ``(N, C, H, W)``.

    ``preprocess`` maps a uint8 batch to the network input (default ``pixel / 255``, padded to
    ``input_size``); pass the training :class:`fastcnn.augment.Pipeline`'s ``eval``.

    Returns
    -------
    accuracy : float
    loss : float
    """
    was_training = model.training
    model.eval()
    loss_fn = SoftmaxCrossEntropy()
    correct, total_loss, n = 0, 0.0, 0
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("evaluate: no images")
    try:
        for start in range(0, len(labels), batch_size):
            xb, y = images[start:start + batch_size], labels[start:start + batch_size].astype(np.int64)
            if preprocess is not None:
                x = preprocess(xb)
            else:
                x = _data.to_float(xb)
                if input_size:
                    x = pad_to(x, input_size)
            logits = model.forward(x)
            total_loss += loss_fn.forward(logits, y) * len(y)
            correct += int(np.sum(np.argmax(logits, axis=1) == y))
            n += len(y)
    finally:
        model.train(was_training)
    return correct / n, total_loss / n


# --------------------------------------------------------------------------- the training loop

#: Keys of the ``logs`` dict given to :meth:`Callback.on_epoch_end` (None where not applicable).
LOG_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "images_per_s")


class Callback:
    """Hooks into :func:`fit`; override any of these no-op methods.

    ``trainer`` (a :class:`Trainer`) exposes ``model``, ``optimizer``, ``history`` (list of
    per-epoch logs dicts), ``epoch`` (0-based, the current epoch), ``global_step`` (optimizer
    steps taken so far), a settable ``stop_training`` (checked after each epoch) and
    ``stop_code`` (see ``stop_requested`` in :func:`fit`).

    A callback that keeps state across epochs (a best value, a patience counter) should
    implement ``state_dict() -> JSON-able dict`` and ``load_state_dict(d)``: the trainer
    stores it in resumable checkpoints.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        pass

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        pass

    def on_after_backward(self, trainer: Trainer) -> None:
        """Gradients are ready (``p.grad`` of ``trainer.model.parameters()``); before the
        optimizer step."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float) -> None:
        """After the optimizer step; ``step`` is the global step count (1 after the first)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        pass

    def on_train_end(self, trainer: Trainer) -> None:
        pass


class Trainer:
    """The state and loop behind :func:`fit` (see there for the arguments).

    ``state`` (from :meth:`state_dict` of an interrupted run) resumes mid-epoch; with the
    model and optimizer restored from the same checkpoint the run continues bit-identically.
    """

    def __init__(self, model: Layer, loss_fn: Loss, optimizer: Optimizer, train_data: Dataset, *, epochs: int,
                 batch_size: int, val_data: Dataset | None = None, schedule: Schedule | None = None,
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 callbacks: Sequence[Callback] = (), seed: int = 0, progress: bool | None = None,
                 detect_anomaly: bool = False, state: dict[str, Any] | None = None,
                 step_history: dict[str, list[float]] | None = None, base_lr: float | None = None,
                 eval_batch_size: int = 1000, distributed: DistributedCallback | None = None,
                 stop_requested: Callable[[], int] | None = None):
        images, labels = train_data
        labels = np.asarray(labels)
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError(f"fit: train_data needs as many labels as images (>0), got {len(images)} images "
                             f"and {len(labels)} labels")
        for name, v in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"fit: {name} must be a positive int, got {v!r}")
        if val_data is not None and len(val_data[1]) == 0:
            val_data = None
        self.model, self.loss_fn, self.optimizer, self.schedule = model, loss_fn, optimizer, schedule
        self.images, self.labels, self.val_data = images, labels, val_data
        self.epochs, self.batch_size, self.seed = int(epochs), int(batch_size), int(seed)
        self.base_lr = float(optimizer.lr if base_lr is None else base_lr)
        self.augment = augment if augment is not None else Pipeline()
        self.preprocess: Callable[[np.ndarray], np.ndarray] | None = getattr(self.augment, "eval", None)
        # the distributed callback first: the others see global gradients and epoch logs
        self.callbacks: list[Callback] = [*([distributed] if distributed is not None else []), *callbacks]
        self.distributed, self.progress, self.detect_anomaly = distributed, progress, detect_anomaly
        self.eval_batch_size = eval_batch_size
        self.stop_requested, self.stop_code, self.stop_training = stop_requested, 0, False
        self.step_metrics: tuple[float, float] | None = None
        self._bound_step: TrainStep | None = None  # (made at the first step: docs/PERFORMANCE.md, section 5)
        self._epoch_done = False
        self.steps_per_epoch = -(-len(labels) // self.batch_size)
        if distributed is not None:
            check_shards(len(labels), self.batch_size, distributed.size)
        self._dropouts = [layer for layer in model.modules() if hasattr(layer, "reseed")]
        st = dict(state or {})
        self.epoch = int(st.get("epoch", 0))
        self.step = int(st.get("step", 0))  # next step within the epoch
        self.global_step = int(st.get("global_step", self.epoch * self.steps_per_epoch + self.step))
        self.history: list[Logs] = list(st.get("epoch_logs", []))
        self.epoch_seconds = list(st.get("epoch_seconds", []))
        self.images_seen = int(st.get("images_seen", 0))
        self.seconds = float(st.get("seconds", 0.0))
        self._partial_seconds = float(st.get("partial_seconds", 0.0))
        self.steps: dict[str, list[float]] = step_history if step_history is not None else {}
        self.steps.setdefault("loss", [])
        self.steps.setdefault("accuracy", [])
        for key, cb in self._stateful_callbacks():
            if key in st.get("callbacks", {}):
                cb.load_state_dict(st["callbacks"][key])

    def _stateful_callbacks(self) -> list[tuple[str, Any]]:
        """(key, callback) of callbacks with state; the key is the class name and its
        occurrence, so adding a stateless callback on resume does not shift the keys."""
        out: list[tuple[str, Any]] = []
        seen: dict[str, int] = {}
        for cb in self.callbacks:
            if hasattr(cb, "state_dict"):
                name = type(cb).__name__
                seen[name] = seen.get(name, -1) + 1
                out.append((f"{name}.{seen[name]}", cb))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (JSON-able): position, timings, epoch logs, callbacks."""
        epoch, step = (self.epoch + 1, 0) if self._epoch_done else (self.epoch, self.step)
        return {"epoch": epoch, "step": step, "global_step": self.global_step,
                "epoch_logs": self.history, "epoch_seconds": self.epoch_seconds,
                "images_seen": self.images_seen, "seconds": self.seconds,
                "partial_seconds": self._partial_seconds,
                "callbacks": {k: cb.state_dict() for k, cb in self._stateful_callbacks()}}

    @property
    def lr(self) -> float:
        return self.optimizer.lr

    def _call(self, hook, *args):
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def run(self) -> list[Logs]:
        """Train until ``epochs`` or ``stop_training``; returns :attr:`history`."""
        self._call("on_train_begin")
        while self.epoch < self.epochs and not self.stop_training:
            self._run_epoch()
        self._call("on_train_end")
        return self.history

    def _set_lr(self):
        if self.schedule is not None:
            self.optimizer.lr = self.schedule.lr_at(self.epoch, self.base_lr)

    def _batch(self, order, step):
        idx = order[step * self.batch_size:(step + 1) * self.batch_size]
        aug = self.augment
        if type(aug) is Pipeline and not aug.transforms:  # (nothing to draw: no generator made)
            x = aug(self.images[idx], None)
        else:
            x = aug(self.images[idx], np.random.default_rng([self.seed, self.epoch, step, 1]))
        return x, self.labels[idx].astype(np.int64)

    def _run_epoch(self):
        epoch = self.epoch
        self._set_lr()
        self._call("on_epoch_begin", epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.labels))
        self.model.train()
        self.model.needs_input_grad = False  # nothing consumes the gradient w.r.t. the images
        bar = self._bar(epoch)
        t0 = time.perf_counter()
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # reported as NonFiniteLoss
                while self.step < self.steps_per_epoch:
                    self._train_step(order, bar, t0)
        finally:
            if bar is not None:
                bar.close()
        seconds = self._partial_seconds + time.perf_counter() - t0
        self._partial_seconds = 0.0
        logs = self._epoch_logs(epoch, seconds)
        self.history.append(logs)
        self.epoch_seconds.append(seconds)
        self.images_seen += len(self.labels)
        self.seconds += seconds
        self._epoch_done = True  # state_dict() now points at the next epoch
        try:
            self._call("on_epoch_end", epoch, logs)
        finally:
            self._epoch_done = False
        self.epoch, self.step = epoch + 1, 0

    def _train_step(self, order, bar, t0):
        x, y = self._batch(order, self.step)  # the global batch (same augmentation draws on every rank)
        n = len(y)
        dist = self.distributed
        if dist is not None:
            x, y = dist.shard_batch(x, y)
        for i, d in enumerate(self._dropouts):  # distributed: each rank its own masks
            d.reseed([self.seed, self.global_step, i, 2] + ([dist.rank] if dist is not None and dist.size > 1 else []))
        step = self._bound_step
        if (step is None or step.model is not self.model or step.loss_fn is not self.loss_fn
                or step.optimizer is not self.optimizer):
            step = self._bound_step = TrainStep(self.model, self.loss_fn, self.optimizer)
        self.optimizer.zero_grad()
        loss = step.forward(x, y)
        logits = step.logits
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss {loss} at epoch {self.epoch}, step {self.step}")
        step.backward()
        if self.stop_requested is not None:
            self.stop_code = self.stop_requested() or 0
        if dist is not None:  # this shard's; the callback puts the global batch's in their place
            self.step_metrics = (loss, int(np.sum(np.argmax(logits, axis=1) == y)))
        self._call("on_after_backward")
        if self.detect_anomaly:
            check_finite(self.model, f"after backward at epoch {self.epoch}, step {self.step}")
        self.optimizer.step()
        if dist is not None:
            loss, correct = self.step_metrics
            acc = correct / n
        else:
            acc = np.count_nonzero(np.argmax(logits, axis=1) == y) / n  # (np.mean's value, cheaper)
        self.steps["loss"].append(loss)
        self.steps["accuracy"].append(acc)
        self.step += 1
        self.global_step += 1
        if bar is not None:
            bar.update(n)
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", lr=f"{self.optimizer.lr:.3g}", refresh=False)
        # time so far in this epoch, so a checkpoint written now can carry it
        self._step_time = time.perf_counter() - t0
        self._call("on_step_end", self.global_step, loss)

    def partial_state(self) -> dict[str, Any]:
        """:meth:`state_dict` including the time spent so far in the current epoch (for a
        checkpoint written mid-epoch)."""
        st = self.state_dict()
        st["partial_seconds"] = self._partial_seconds + getattr(self, "_step_time", 0.0)
        return st

    def _epoch_logs(self, epoch, seconds):
        n = len(self.labels)
        sizes = np.minimum(self.batch_size, n - self.batch_size * np.arange(self.steps_per_epoch))
        losses = np.asarray(self.steps["loss"][-self.steps_per_epoch:])
        accs = np.asarray(self.steps["accuracy"][-self.steps_per_epoch:])
        logs = dict.fromkeys(LOG_KEYS)
        logs.update(epoch=epoch + 1, loss=float(losses @ sizes / n), accuracy=float(accs @ sizes / n),
                    lr=float(self.optimizer.lr), seconds=float(seconds), images_per_s=float(n / max(seconds, 1e-9)))
        if self.val_data is not None:
            vx, vy = self.val_data
            ev = evaluate if self.distributed is None else self.distributed.evaluate  # the same on every rank
            logs["val_accuracy"], logs["val_loss"] = ev(self.model, vx, vy, self.eval_batch_size,
                                                        preprocess=self.preprocess)
        return logs

    def _bar(self, epoch):
        if not self.progress:
            return None
        from tqdm import tqdm

        bar = tqdm(total=len(self.labels), desc=f"epoch {epoch + 1}/{self.epochs}", unit="img",
                   mininterval=0.5, file=sys.stderr)
        if self.step:
            bar.update(min(self.step * self.batch_size, len(self.labels)))
        return bar


def check_shards(n: int, batch_size: int, ranks: int) -> None:
    """Every batch of an epoch (the last one too) must give each rank at least one image."""
    last = n - (-(-n // batch_size) - 1) * batch_size
    if batch_size < ranks:
        raise ValueError(f"fit: the batch size {batch_size} (the global batch) is smaller than the {ranks} ranks")
    if last < ranks:
        raise ValueError(f"fit: the last batch of each epoch has {last} image(s) ({n} images in batches of "
                         f"{batch_size}), fewer than the {ranks} ranks; change the batch size or the number "
                         f"of images (--limit, --val-split)")


def fit(model: Layer, loss_fn: Loss, optimizer: Optimizer, train_data: Dataset, *, epochs: int, batch_size: int,
        val_data: Dataset | None = None, schedule: Schedule | None = None,
        augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        callbacks: Sequence[Callback] = (), seed: int = 0, progress: bool | None = None,
        detect_anomaly: bool = False, state: dict[str, Any] | None = None,
        step_history: dict[str, list[float]] | None = None, base_lr: float | None = None,
        distributed: DistributedCallback | None = None, stop_requested: Callable[[], int] | None = None,
        ) -> list[Logs]:
    """Train ``model`` for ``epochs`` epochs; return the history (one logs dict per epoch).

    Parameters
    ----------
    model : fastcnn.Sequential
    loss_fn : fastcnn.losses.SoftmaxCrossEntropy (or a loss with ``forward``/``backward``)
    optimizer : fastcnn.optim.Optimizer
    train_data : (images, labels)
        ``uint8`` images ``(N, C, H, W)`` (or ``(N, H, W)``) and integer labels ``(N,)``.
    epochs, batch_size : int
        The last batch of an epoch may be smaller.
    val_data : (images, labels), optional
        Evaluated (eval mode, no augmentation) after every epoch: ``val_loss`` and
        ``val_accuracy`` in the logs.
    schedule : fastcnn.optim.Schedule, optional
        Sets ``optimizer.lr = schedule.lr_at(epoch, base_lr)`` at the start of each epoch.
    augment : fastcnn.augment.Pipeline or callable, optional
        ``augment(uint8_batch, rng) -> float32 batch``; its ``eval`` method (if any)
        preprocesses validation images.  Default: ``pixel / 255``.
    callbacks : sequence of :class:`Callback`
    seed : int
        The data order of epoch ``e`` is ``default_rng([seed, e]).permutation(N)``, the
        augmentation of step ``s`` draws from ``default_rng([seed, e, s, 1])`` and Dropout
        layers from ``default_rng([seed, global_step, i, 2])``: a run is a function of its
        seed, and resuming from a checkpoint continues it exactly.
    progress : bool, optional
        A tqdm bar per epoch (default: only when stderr is a terminal).
    detect_anomaly : bool
        Check all parameters and gradients for NaN/Inf after every backward (slow).
    state, step_history : optional
        Resume: :meth:`Trainer.state_dict` and the per-step ``{"loss": [...], "accuracy":
        [...]}`` lists of an interrupted run.
    base_lr : float, optional
        The schedule's base learning rate (default: ``optimizer.lr``).
    distributed : fastcnn.distributed.DistributedCallback, optional
        Data-parallel training over MPI (docs/DISTRIBUTED.md): call ``fit`` with the same
        arguments on every rank; each trains on its shard of every global batch of
        ``batch_size`` images and steps with the global batch's gradient; the per-step and
        per-epoch loss and accuracy and the validation metrics are the global ones, the same
        on every rank.  The callback goes first among ``callbacks``.  Every batch (the last
        one of an epoch too) must hold at least one image per rank (else ``ValueError``).
    stop_requested : callable, optional
        ``stop_requested() -> int``, called once per step after the backward pass: non-zero
        (e.g. a signal number) asks to stop after this step.  The value is
        ``trainer.stop_code`` from ``on_after_backward`` on; with ``distributed`` it is the
        largest over all ranks, so every rank sees the request after the same step.  The
        trainer does not stop by itself: a callback acts on it in ``on_step_end`` (the
        command line saves a checkpoint and raises :class:`Interrupted`).

    Returns
    -------
    list of dict
        Per epoch, the keys of :data:`LOG_KEYS`.

    Examples
    --------
    >>> from fastcnn import augment, data, losses, models, optim, train   # doctest: +SKIP
    >>> x, y = data.load_cifar10(split="train")
    >>> model = models.build("resnet")
    >>> opt = optim.Adam(model.parameters(), 1e-3)
    >>> hist = train.fit(model, losses.SoftmaxCrossEntropy(), opt, (x[:45000], y[:45000]),
    ...                  epochs=5, batch_size=100, val_data=(x[45000:], y[45000:]),
    ...                  schedule=optim.StepLR(20, 1 / 3), augment=augment.from_name("tutorial"),
    ...                  callbacks=[train.EarlyStopping(3), train.CSVLogger("history.csv")])
    """
    if progress is None:
        progress = sys.stderr.isatty()
    trainer = Trainer(model, loss_fn, optimizer, train_data, epochs=epochs, batch_size=batch_size,
                      val_data=val_data, schedule=schedule, augment=augment, callbacks=callbacks, seed=seed,
                      progress=progress, detect_anomaly=detect_anomaly, state=state, step_history=step_history,
                      base_lr=base_lr, distributed=distributed, stop_requested=stop_requested)
    return trainer.run()


# --------------------------------------------------------------------------- callbacks

def _monitor_value(logs: Logs, monitor: str) -> float:
    v = logs.get(monitor)
    if v is None:
        raise ValueError(f"monitored value {monitor!r} is not in the epoch logs (validation data given?)")
    return v


class BestCheckpoint(Callback):
    """Save the model to ``path`` whenever ``monitor`` (default ``val_accuracy``, higher is
    better; ``mode="min"`` for losses) improves; ``metadata`` goes into the file."""

    def __init__(self, path: str, monitor: str = "val_accuracy", mode: str = "max",
                 metadata: dict[str, Any] | None = None):
        self.path, self.monitor, self.mode = path, monitor, mode
        self.metadata = dict(metadata or {})
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        from .model import save

        v = _monitor_value(logs, self.monitor)
        if self.best is None or (v > self.best if self.mode == "max" else v < self.best):
            self.best, self.best_epoch = v, epoch + 1
            save(trainer.model, self.path, metadata={**self.metadata, "epoch": epoch + 1, self.monitor: v})

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.best, self.best_epoch = d["best"], d["best_epoch"]


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs (Keras's ``EarlyStopping``)."""

    def __init__(self, patience: int, monitor: str = "val_accuracy", mode: str = "max", min_delta: float = 0.0):
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}")
        self.patience, self.monitor, self.mode, self.min_delta = int(patience), monitor, mode, float(min_delta)
        self.best: float | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        v = _monitor_value(logs, self.monitor)
        better = self.best is None or (v > self.best + self.min_delta if self.mode == "max"
                                       else v < self.best - self.min_delta)
        if better:
            self.best, self.wait = v, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.stop_training = True
                self.stopped_epoch = epoch + 1

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.best, self.wait, self.stopped_epoch = d["best"], d["wait"], d["stopped_epoch"]


def write_history_csv(path: str, history: Sequence[Logs]) -> None:
    """Write per-epoch logs as CSV (columns :data:`LOG_KEYS`), atomically."""
    import csv
    import io

    from .model import atomic_write

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LOG_KEYS)
    for logs in history:
        w.writerow(["" if logs.get(k) is None else logs[k] for k in LOG_KEYS])
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def plot_history(path: str, history: Sequence[Logs], steps: dict[str, list[float]],
                 test_accuracy: float | None = None) -> None:
    """Write the training curves to the PNG ``path``, atomically: per-step loss (log scale)
    and accuracies (training mean per window, validation per epoch, ``test_accuracy``).

    ``history``: per-epoch logs (:func:`fit`'s result); ``steps``: the per-step ``{"loss":
    [...], "accuracy": [...]}`` lists (``fit(step_history=...)``)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .model import atomic_write

    loss = np.asarray(steps["loss"])
    acc = np.asarray(steps["accuracy"])
    win = max(1, min(len(loss) // 50, 1000))
    kernel = np.ones(win) / win
    x = np.arange(len(loss))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(x, loss, alpha=0.25, lw=0.5, label="per step")
    if len(loss) >= win:
        a1.plot(x[win - 1:], np.convolve(loss, kernel, "valid"), label=f"mean of {win}")
    a1.set_xlabel("step")
    a1.set_ylabel("training loss")
    a1.set_yscale("log")
    a1.legend()
    if len(acc) >= win:
        a2.plot(x[win - 1:], np.convolve(acc, kernel, "valid"), label=f"training (mean of {win})")
    val = [(e["epoch"], e["val_accuracy"]) for e in history if e.get("val_accuracy") is not None]
    if val and len(loss):
        per_epoch = len(loss) / max(e["epoch"] for e in history)
        a2.plot([ep * per_epoch for ep, _ in val], [v for _, v in val], "o-", label="validation")
    if test_accuracy is not None:
        a2.axhline(test_accuracy, color="C3", ls="--", label=f"test {test_accuracy:.4f}")
    a2.set_xlabel("step")
    a2.set_ylabel("accuracy")
    a2.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


class CSVLogger(Callback):
    """Rewrite ``path`` (``history.csv``) after every epoch with all epochs so far."""

    def __init__(self, path: str):
        self.path = path

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        write_history_csv(self.path, trainer.history)


def format_logs(logs: Logs, epochs: int | None = None) -> str:
    """One summary line for an epoch's logs."""
    parts = [f"epoch {logs['epoch']}" + (f"/{epochs}" if epochs else ""),
             f"loss {logs['loss']:.4f}", f"acc {logs['accuracy']:.4f}"]
    if logs.get("val_accuracy") is not None:
        parts += [f"val_loss {logs['val_loss']:.4f}", f"val_acc {logs['val_accuracy']:.4f}"]
    parts += [f"lr {logs['lr']:.3g}", f"{logs['seconds']:.1f} s", f"{logs['images_per_s']:.0f} img/s"]
    return "  ".join(parts)


class EpochLog(Callback):
    """Print :func:`format_logs` after each epoch to ``file`` (default stderr)."""

    def __init__(self, file: IO[str] | None = None):
        self.file = file

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Logs) -> None:
        print(format_logs(logs, trainer.epochs), file=self.file or sys.stderr, flush=True)


# --------------------------------------------------------------------------- checkpoints

def check_finite(model: Layer, where: str) -> None:
    """Opt-in anomaly check: every parameter and gradient finite, else ``NonFiniteLoss``."""
    for i, p in enumerate(model.parameters()):
        for what, arr in (("value", p.data), ("gradient", p.grad)):
            if not np.all(np.isfinite(arr)):
                raise NonFiniteLoss(f"non-finite {what} in parameter {i} {p.data.shape} {where}")


def save_checkpoint(path: str, model: Layer, optimizer: Optimizer, state: dict[str, Any],
                    history: dict[str, list[float]]) -> None:
    """Write a resumable checkpoint: weights, optimizer state, trainer state and history.

    The data order is a function of ``(seed, epoch)``, so ``state`` (seed, epoch, next step)
    is the whole random state of a run.  The file is also a plain model file for
    :func:`fastcnn.load`.  Nothing non-finite is ever written (parameters, batch-norm running
    statistics, optimizer state): ``NonFiniteLoss`` is raised and the previous checkpoint stays.
    """
    from .model import assert_all_finite, save

    where = (f"at epoch {state.get('epoch')}, step {state.get('step')}; checkpoint not written "
             f"(the previous one is kept)")
    assert_all_finite(model.state_dict(), where, NonFiniteLoss)  # parameters and buffers
    opt_state = optimizer.state_dict()
    assert_all_finite({"optimizer " + k: v for k, v in opt_state.items()}, where, NonFiniteLoss)

    extra = {"__optim__." + k: v for k, v in opt_state.items()}
    for key in ("loss", "accuracy"):
        extra["__history__." + key] = np.asarray(history.get(key, []), np.float64)
    save(model, path, metadata={"model": state.get("model"), "trainer": state}, extra=extra)


def load_checkpoint(path: str) -> tuple[Layer, dict[str, np.ndarray], dict[str, Any], dict[str, list[float]]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    model, optimizer_state (dict of arrays), trainer_state (dict), history (dict of lists)
    """
    from .model import load

    model, meta, extra = load(path, return_metadata=True, return_extra=True)
    if "trainer" not in meta:
        raise ValueError(f"{path}: a model file, not a training checkpoint (no trainer state)")
    state = meta["trainer"]
    opt_state = {k[len("__optim__."):]: v for k, v in extra.items() if k.startswith("__optim__.")}
    history = {k[len("__history__."):]: v.tolist() for k, v in extra.items() if k.startswith("__history__.")}
    _check_trainer_state(path, model, state, opt_state)
    return model, opt_state, state, history


_TRAINER_KEYS = {"model": str, "seed": int, "batch_size": int, "lr": (int, float), "optimizer": str,
                 "epochs": int, "epoch": int, "step": int}


def _check_trainer_state(path, model, state, opt_state):
    """The trainer and optimizer state of a checkpoint: types, ranges, shapes, finiteness."""
    from .model import assert_all_finite

    if not isinstance(state, dict):
        raise ValueError(f"{path}: trainer state is not a mapping")
    for key, kind in _TRAINER_KEYS.items():
        if key in state and (not isinstance(state[key], kind) or isinstance(state[key], bool)):
            raise ValueError(f"{path}: trainer state {key!r} = {state[key]!r} has the wrong type")
        if key in ("seed", "epoch", "step") and isinstance(state.get(key), int) and state[key] < 0:
            raise ValueError(f"{path}: trainer state {key!r} = {state[key]} is negative")
    steps = opt_state.get("steps")
    if opt_state and (steps is None or steps.shape != () or steps.dtype.kind not in "iu" or steps < 0):
        raise ValueError(f"{path}: optimizer state has no valid step count")
    shapes = [p.data.shape for p in model.parameters()]
    for key, arr in opt_state.items():
        if key == "steps":
            continue
        name, _, idx = key.rpartition(".")
        if not idx.isdigit() or int(idx) >= len(shapes) or arr.shape != shapes[int(idx)] or arr.dtype.kind != "f":
            raise ValueError(f"{path}: optimizer state {key!r} ({arr.dtype} {arr.shape}) does not match the model")
    assert_all_finite(opt_state, f"of the optimizer state in {path}", ValueError)


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint (``resumable``) or, once training
    has finished, after saving the trained model."""

    def __init__(self, signum: int, path: str, resumable: bool = True):
        import signal

        self.signum, self.path, self.resumable = signum, path, resumable
        name = signal.Signals(signum).name
        if resumable:
            msg = f"interrupted by {name}; checkpoint saved to {path} (continue with --resume {path})"
        else:
            msg = f"interrupted by {name} after training; the trained model is saved to {path}"
        super().__init__(msg)


class SignalFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop checks after each step.

    After :meth:`stop_at_once` (called once the trained weights are on disk) a pending or new
    signal raises :class:`Interrupted` right away, e.g. in the middle of the final evaluation.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._saved: str | None = None

    def __enter__(self) -> SignalFlag:
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self._saved is not None:
            raise Interrupted(signum, self._saved, resumable=False)
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def stop_at_once(self, saved_path: str) -> None:
        """From now on a signal stops at once: the trained model is saved at ``saved_path``."""
        self._saved = saved_path
        if self.signum is not None:
            raise Interrupted(self.signum, saved_path, resumable=False)

    def __exit__(self, *exc: object) -> Literal[False]:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
