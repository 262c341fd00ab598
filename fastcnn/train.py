"""Training and evaluation loops used by the ``fastcnn`` command line."""
import math
import time

import numpy as np

from . import data as _data
from .losses import SoftmaxCrossEntropy
from .optim import SGD, Adam


class NonFiniteLoss(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def make_optimizer(name, params, lr):
    """``"sgd"`` or ``"adam"`` over ``params`` with learning rate ``lr``."""
    if name == "sgd":
        return SGD(params, lr)
    if name == "adam":
        return Adam(params, lr)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adam")


def recipe_step(name, seed=0):
    """The seed network ``name`` with its recipe's optimizer, and ``step(x, y) -> loss``: one
    training step (zero the gradients, forward, softmax cross-entropy, backward, update).

    The first layer computes no input gradient.  Used by the benchmarks and profiling scripts.
    """
    from . import losses, models

    recipe = models.RECIPES[name]
    model = models.build(name, seed=seed)
    model.needs_input_grad = False
    opt = make_optimizer(recipe["optimizer"], model.parameters(), recipe["lr"])
    loss_fn = losses.SoftmaxCrossEntropy()

    def step(x, y):
        opt.zero_grad()
        loss = loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        return loss

    return model, step


def pad_to(x, size):
    """Zero-pad ``(N, C, H, W)`` images symmetrically to ``size x size`` (no-op if already)."""
    h, w = x.shape[2:]
    if (h, w) == (size, size):
        return x
    if h > size or w > size:
        raise ValueError(f"images of {h}x{w} are larger than the model input {size}x{size}")
    t, l = (size - h) // 2, (size - w) // 2
    out = np.zeros(x.shape[:2] + (size, size), np.float32)
    out[:, :, t:t + h, l:l + w] = x
    return out


def evaluate(model, images, labels, batch_size=1000, input_size=None):
    """Accuracy and mean loss of ``model`` (eval mode) on uint8 ``images (N, H, W)``.

    Returns
    -------
    accuracy : float
    loss : float
    """
    was_training = model.training
    model.eval()
    loss_fn = SoftmaxCrossEntropy()
    correct, total_loss, n = 0, 0.0, 0
    try:
        for x, y in _data.iterate_batches(images, labels, batch_size, shuffle=False):
            if input_size:
                x = pad_to(x, input_size)
            logits = model.forward(x)
            total_loss += loss_fn.forward(logits, y) * len(y)
            correct += int(np.sum(np.argmax(logits, axis=1) == y))
            n += len(y)
    finally:
        model.train(was_training)
    return correct / n, total_loss / n


def train_epoch(model, optimizer, images, labels, *, batch_size, seed, epoch, start_step=0,
                input_size=None, progress=None, on_step=None, history=None, detect_anomaly=False, dist=None,
                stop_requested=None):
    """One pass over the data in the seeded order of ``(seed, epoch)``.

    Parameters
    ----------
    start_step : int
        Skip this many batches first (resuming mid-epoch).
    progress : tqdm-like or None
        Updated with the number of images per step, postfix loss / accuracy / images/s.
    on_step : callable(step_in_epoch) or None
        Called after every optimizer step (checkpointing, interruption).
    history : dict of lists, optional
        ``"loss"`` and ``"accuracy"`` of every step are appended.
    detect_anomaly : bool
        Check every parameter and gradient for NaN/Inf after each step (slow; off by default).
    dist : fastcnn.distributed.DistributedCallback or None
        Data-parallel training: each rank trains on its shard of every batch and the
        gradients, loss and accuracy are those of the global batch (a final batch smaller
        than the number of ranks is skipped).  ``on_train_begin`` must have run.
    stop_requested : callable() -> bool or None
        Distributed: whether this rank wants to stop; all ranks then stop after the same step
        (``on_step`` sees ``dist.stop``).

    Returns
    -------
    images_seen : int  (all ranks' images when distributed)
    seconds : float
    """
    model.train()
    model.needs_input_grad = False  # nothing consumes the gradient w.r.t. the images
    loss_fn = SoftmaxCrossEntropy()
    history = {} if history is None else history
    losses = history.setdefault("loss", [])
    accs = history.setdefault("accuracy", [])
    batches = _data.iterate_batches(images, labels, batch_size, shuffle=True, seed=seed, epoch=epoch)
    if progress is not None and start_step:
        progress.update(min(start_step * batch_size, len(labels)))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # reported as NonFiniteLoss
        return _steps(model, optimizer, loss_fn, batches, epoch, start_step, input_size, progress, on_step,
                      losses, accs, detect_anomaly, dist, stop_requested)


class _StepState:
    """What :class:`fastcnn.distributed.DistributedCallback` reads and writes in a step."""

    def __init__(self, model, optimizer):
        self.model, self.optimizer = model, optimizer
        self.stop_training, self.step_metrics = False, None


def _steps(model, optimizer, loss_fn, batches, epoch, start_step, input_size, progress, on_step, losses, accs,
           detect_anomaly, dist=None, stop_requested=None):
    seen, t0, last_post = 0, time.perf_counter(), 0.0
    run_loss = run_acc = None
    trainer = _StepState(model, optimizer)
    for step, (x, y) in enumerate(batches):
        if step < start_step:
            continue
        n_global = len(y)
        if dist is not None:
            if n_global < dist.size:  # the same on every rank: all skip it
                continue
            x, y = dist.shard_batch(x, y)
        if input_size:
            x = pad_to(x, input_size)
        optimizer.zero_grad()
        logits = model.forward(x)
        loss = loss_fn.forward(logits, y)
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss {loss} at epoch {epoch}, step {step}")
        model.backward(loss_fn.backward())
        correct = int(np.sum(np.argmax(logits, axis=1) == y))
        acc = correct / len(y)
        if dist is not None:
            trainer.stop_training = bool(stop_requested()) if stop_requested is not None else False
            trainer.step_metrics = (loss, correct)
            dist.on_after_backward(trainer)  # gradients, loss and accuracy of the global batch
            loss, acc = trainer.step_metrics[0], trainer.step_metrics[1] / n_global
            dist.stop = trainer.stop_training
        if detect_anomaly:
            check_finite(model, f"after backward at epoch {epoch}, step {step}")
        optimizer.step()
        losses.append(loss)
        accs.append(acc)
        seen += n_global
        if progress is not None:
            run_loss = loss if run_loss is None else 0.99 * run_loss + 0.01 * loss
            run_acc = acc if run_acc is None else 0.99 * run_acc + 0.01 * acc
            progress.update(n_global)
            now = time.perf_counter()
            if now - last_post > 0.5:
                last_post = now
                progress.set_postfix(loss=f"{run_loss:.4f}", acc=f"{run_acc:.3f}",
                                     img_s=f"{seen / (now - t0):.0f}", refresh=False)
        if on_step is not None:
            on_step(step)
    return seen, time.perf_counter() - t0


# --------------------------------------------------------------------------- checkpoints

def check_finite(model, where):
    """Opt-in anomaly check: every parameter and gradient finite, else ``NonFiniteLoss``."""
    for i, p in enumerate(model.parameters()):
        for what, arr in (("value", p.data), ("gradient", p.grad)):
            if not np.all(np.isfinite(arr)):
                raise NonFiniteLoss(f"non-finite {what} in parameter {i} {p.data.shape} {where}")


def save_checkpoint(path, model, optimizer, state, history):
    """Write a resumable checkpoint: weights, optimizer state, trainer state and history.

    The data order is a function of ``(seed, epoch)``, so ``state`` (seed, epoch, next step)
    is the whole random state of a run.  The file is also a plain model file for
    :func:`fastcnn.load`.  Weights that are not finite are never written: ``NonFiniteLoss``
    is raised and the previous checkpoint stays.
    """
    from .model import save

    for i, p in enumerate(model.parameters()):
        if not np.all(np.isfinite(p.data)):
            raise NonFiniteLoss(f"non-finite weights in parameter {i} {p.data.shape} at epoch "
                                f"{state.get('epoch')}, step {state.get('step')}; checkpoint not written")

    extra = {"__optim__." + k: v for k, v in optimizer.state_dict().items()}
    for key in ("loss", "accuracy"):
        extra["__history__." + key] = np.asarray(history.get(key, []), np.float64)
    save(model, path, metadata={"model": state["model"], "trainer": state}, extra=extra)


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    model, optimizer_state (dict of arrays), trainer_state (dict), history (dict of lists)
    """
    from .model import load

    model, meta, extra = load(path, return_metadata=True, return_extra=True)
    if "trainer" not in meta:
        raise ValueError(f"{path}: a model file, not a training checkpoint (no trainer state)")
    opt_state = {k[len("__optim__."):]: v for k, v in extra.items() if k.startswith("__optim__.")}
    history = {k[len("__history__."):]: v.tolist() for k, v in extra.items() if k.startswith("__history__.")}
    return model, opt_state, meta["trainer"], history


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint."""

    def __init__(self, signum, path):
        import signal

        self.signum, self.path = signum, path
        super().__init__(f"interrupted by {signal.Signals(signum).name}; checkpoint saved to {path} "
                         f"(continue with --resume {path})")


class SignalFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop checks after each step."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
