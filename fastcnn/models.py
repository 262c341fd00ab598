"""The networks of the seed tutorials: ``build(name, seed=0)``."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .layers import AvgPool2D, BatchNorm2D, Conv2D, Dense, Flatten, Layer, MaxPool2D, ReLU, Residual, Sequential

#: Training recipe of each model: optimizer, learning rate, batch size (from the tutorials).
RECIPES: dict[str, dict[str, Any]] = {
    "scratch": dict(optimizer="sgd", lr=0.005, batch_size=1),
    "lenet": dict(optimizer="adam", lr=1e-3, batch_size=128),
    "bn": dict(optimizer="adam", lr=1e-3, batch_size=100),
    "resnet": dict(optimizer="adam", lr=1e-3, batch_size=100),
}
#: Input image size each model expects (MNIST is zero-padded to 32x32 for the CIFAR ResNet).
INPUT_SIZE = {"scratch": 28, "lenet": 28, "bn": 28, "resnet": 32}

NAMES = tuple(RECIPES)

#: Recipe changes for a model on a dataset: the PyTorch ResNet tutorial trains on CIFAR-10
#: with its augmentation (resize 40, flip, random crop 32) and the learning rate divided by 3
#: every 20 epochs.
DATASET_RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("resnet", "cifar10"): dict(augment="tutorial", schedule="step", step_size=20, gamma=1 / 3),
}


def recipe(name: str, dataset: str = "mnist") -> dict[str, Any]:
    """The training recipe of model ``name`` on ``dataset``: optimizer, lr, batch_size,
    augment (a name of :data:`fastcnn.augment.RECIPES`) and schedule (``"none"`` or ``"step"``
    with ``step_size`` and ``gamma``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(NAMES)}")
    r = dict(RECIPES[name], augment="none", schedule="none")
    r.update(DATASET_RECIPES.get((name, dataset), {}))
    return r


def _scratch(rng: np.random.Generator, in_channels: int) -> Sequential:
    return Sequential(
        Conv2D(in_channels, 8, 3, bias=False, rng=rng),
        MaxPool2D(2),
        Flatten(),
        Dense(13 * 13 * 8, 10, rng=rng),
    )


def _lenet(rng: np.random.Generator, in_channels: int) -> Sequential:
    return Sequential(
        Conv2D(in_channels, 32, 5, padding="same", rng=rng), ReLU(), MaxPool2D(2),
        Conv2D(32, 64, 5, padding="same", rng=rng), ReLU(), MaxPool2D(2),
        Flatten(),
        Dense(7 * 7 * 64, 1024, rng=rng), ReLU(),
        Dense(1024, 10, rng=rng),
    )


def _bn(rng: np.random.Generator, in_channels: int) -> Sequential:
    return Sequential(
        Conv2D(in_channels, 16, 5, padding=2, rng=rng), BatchNorm2D(16), ReLU(), MaxPool2D(2),
        Conv2D(16, 32, 5, padding=2, rng=rng), BatchNorm2D(32), ReLU(), MaxPool2D(2),
        Flatten(),
        Dense(7 * 7 * 32, 10, rng=rng),
    )


def _block(rng: np.random.Generator, cin: int, cout: int, stride: int) -> Residual:
    body = Sequential(
        Conv2D(cin, cout, 3, stride, 1, bias=False, rng=rng), BatchNorm2D(cout), ReLU(),
        Conv2D(cout, cout, 3, 1, 1, bias=False, rng=rng), BatchNorm2D(cout),
    )
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = Sequential(Conv2D(cin, cout, 3, stride, 1, bias=False, rng=rng), BatchNorm2D(cout))
    return Residual(body, shortcut)


def _resnet(rng: np.random.Generator, in_channels: int, blocks: tuple[int, ...] = (2, 2, 2)) -> Sequential:
    layers: list[Layer] = [Conv2D(in_channels, 16, 3, 1, 1, bias=False, rng=rng), BatchNorm2D(16), ReLU()]
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for i in range(blocks[stage]):
            stride = 2 if (stage > 0 and i == 0) else 1
            layers.append(_block(rng, cin, cout, stride))
            cin = cout
    layers += [AvgPool2D(8), Flatten(), Dense(64, 10, rng=rng)]
    return Sequential(*layers)


_BUILDERS: dict[str, Callable[..., Sequential]] = {"scratch": _scratch, "lenet": _lenet, "bn": _bn, "resnet": _resnet}


def build(name: str, seed: int = 0, in_channels: int | None = None) -> Sequential:
    """Build a seed-tutorial network with PyTorch's default initialisation.

    Parameters
    ----------
    name : {"scratch", "lenet", "bn", "resnet"}
    seed : int
        Seeds the initial weights.
    in_channels : int, optional
        Input channels (default 1; the CIFAR-10 ResNet's default is 3).

    Returns
    -------
    Sequential
        Input ``(N, C, 28, 28)`` float32 (``(N, C, 32, 32)`` for ``"resnet"``), output
        ``(N, 10)`` logits.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(NAMES)}")
    if in_channels is None:
        in_channels = 3 if name == "resnet" else 1
    rng = np.random.default_rng(seed)
    return _BUILDERS[name](rng, in_channels)
