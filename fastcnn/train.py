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
                input_size=None, progress=None, on_step=None, history=None):
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

    Returns
    -------
    images_seen : int
    seconds : float
    """
    model.train()
    model.needs_input_grad = False  # nothing consumes the gradient w.r.t. the images
    loss_fn = SoftmaxCrossEntropy()
    history = {} if history is None else history
    losses = history.setdefault("loss", [])
    accs = history.setdefault("accuracy", [])
    seen, t0, last_post = 0, time.perf_counter(), 0.0
    run_loss = run_acc = None
    batches = _data.iterate_batches(images, labels, batch_size, shuffle=True, seed=seed, epoch=epoch)
    for step, (x, y) in enumerate(batches):
        if step < start_step:
            continue
        if input_size:
            x = pad_to(x, input_size)
        optimizer.zero_grad()
        logits = model.forward(x)
        loss = loss_fn.forward(logits, y)
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"non-finite loss {loss} at epoch {epoch}, step {step}")
        model.backward(loss_fn.backward())
        optimizer.step()
        acc = float(np.mean(np.argmax(logits, axis=1) == y))
        losses.append(loss)
        accs.append(acc)
        seen += len(y)
        if progress is not None:
            run_loss = loss if run_loss is None else 0.99 * run_loss + 0.01 * loss
            run_acc = acc if run_acc is None else 0.99 * run_acc + 0.01 * acc
            progress.update(len(y))
            now = time.perf_counter()
            if now - last_post > 0.5:
                last_post = now
                progress.set_postfix(loss=f"{run_loss:.4f}", acc=f"{run_acc:.3f}",
                                     img_s=f"{seen / (now - t0):.0f}", refresh=False)
        if on_step is not None:
            on_step(step)
    return seen, time.perf_counter() - t0
