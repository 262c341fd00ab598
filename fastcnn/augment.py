"""Seeded, vectorised data augmentation for uint8 image batches.

A :class:`Pipeline` turns a ``uint8 (B, C, H, W)`` batch into the float32 network input:
``pixel / 255`` (as torchvision's ``ToTensor``), then each random transform, then per-channel
normalisation ``(x - mean) / std``.  Every random draw comes from the ``numpy.random.Generator``
passed in; :func:`fastcnn.train.fit` passes ``default_rng([seed, epoch, step, 1])`` (None to a
pipeline without random transforms: nothing to draw), so a batch's augmentation depends only on
where it is in the run, and an interrupted run resumes bit-identically.  Each transform works on
the whole batch at once (padding, one gathered index per batch, two small matrix products for
resizing), never a Python loop per image.

Recipes (``from_name``):

- ``"none"``: no random transform.
- ``"crop"``: zero-pad 4, random 32x32 crop, horizontal flip (the common CIFAR recipe).
- ``"tutorial"``: resize to 40x40 (bilinear), random 32x32 crop, horizontal flip (the recipe
  of the PyTorch ResNet tutorial: ``Scale(40)``, ``RandomHorizontalFlip``, ``RandomCrop(32)``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["RandomCrop", "Resize", "HorizontalFlip", "Pipeline", "RECIPES", "from_name",
           "channel_stats"]


class RandomCrop:
    """Zero-pad by ``padding`` on every side, then crop a random ``size x size`` window per
    image (offsets uniform over all positions, as torchvision's ``RandomCrop``)."""

    def __init__(self, size: int = 32, padding: int = 4):
        self.size, self.padding = int(size), int(padding)
        if self.size < 1 or self.padding < 0:
            raise ValueError(f"RandomCrop: size must be >= 1 and padding >= 0, got {size}, {padding}")

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p, s = self.padding, self.size
        if p:
            x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        n, c, h, w = x.shape
        if h < s or w < s:
            raise ValueError(f"RandomCrop: crop {s}x{s} larger than the padded image {h}x{w}")
        top = rng.integers(0, h - s + 1, n)
        left = rng.integers(0, w - s + 1, n)
        ar = np.arange(s)
        rows = (top[:, None] + ar)[:, None, :, None]
        cols = (left[:, None] + ar)[:, None, None, :]
        return x[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]

    def config(self) -> dict[str, Any]:
        return {"type": "RandomCrop", "size": self.size, "padding": self.padding}


def _bilinear_matrix(n_in, n_out):
    """``(n_out, n_in)`` weights of half-pixel bilinear resampling, edges clamped (PIL's and
    torchvision's bilinear filter when enlarging)."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m.astype(np.float32)


class Resize:
    """Deterministic bilinear resize to ``size x size`` (enlarging; as two matrix products)."""

    def __init__(self, size: int = 40):
        self.size = int(size)
        self._mats: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        h, w = x.shape[2:]
        if (h, w) not in self._mats:
            self._mats[(h, w)] = (_bilinear_matrix(h, self.size), _bilinear_matrix(w, self.size).T.copy())
        mh, mwt = self._mats[(h, w)]
        return np.ascontiguousarray(np.matmul(np.matmul(mh, x), mwt))

    def config(self) -> dict[str, Any]:
        return {"type": "Resize", "size": self.size}


class HorizontalFlip:
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        flip = rng.random(len(x)) < self.p
        if flip.any():
            x = x.copy() if not x.flags.writeable else x
            x[flip] = x[flip, :, :, ::-1]
        return x

    def config(self) -> dict[str, Any]:
        return {"type": "HorizontalFlip", "p": self.p}


class Transform(Protocol):
    """A transform of float32 batches, ``t(x, rng) -> x``, with its ``config()``."""

    def __call__(self, x: np.ndarray, rng: np.random.Generator, /) -> np.ndarray: ...

    def config(self) -> dict[str, Any]: ...


_TRANSFORMS: dict[str, Callable[..., Transform]] = {
    "RandomCrop": RandomCrop, "Resize": Resize, "HorizontalFlip": HorizontalFlip}

#: Named recipes: lists of transform configs.
RECIPES: dict[str, list[dict[str, Any]]] = {
    "none": [],
    "crop": [{"type": "RandomCrop", "size": 32, "padding": 4}, {"type": "HorizontalFlip", "p": 0.5}],
    "tutorial": [{"type": "Resize", "size": 40}, {"type": "HorizontalFlip", "p": 0.5},
                 {"type": "RandomCrop", "size": 32, "padding": 0}],
}


class Pipeline:
    """``uint8 (B, C, H, W)`` -> float32 network input.

    Parameters
    ----------
    transforms : sequence
        Random transforms applied in order to the ``[0, 1]`` floats (``t(x, rng) -> x``).
    mean, std : sequence of float, optional
        Per-channel normalisation after the transforms (default none: mean 0, std 1).
    input_size : int, optional
        Zero-pad smaller images symmetrically to ``input_size x input_size`` (MNIST into the
        32x32 ResNet) before the transforms.
    """

    def __init__(self, transforms: Sequence[Transform] = (), mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, input_size: int | None = None):
        self.transforms = list(transforms)
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        if (self.mean is None) != (self.std is None):
            raise ValueError("Pipeline: give both mean and std, or neither")
        if self.std is not None and not all(s > 0 for s in self.std):
            raise ValueError(f"Pipeline: std must be positive, got {self.std}")
        self.input_size = input_size

    def _to_float(self, x: ArrayLike) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != np.uint8:
            raise TypeError(f"augment: images must be uint8, got {x.dtype}")
        if x.ndim == 3:
            x = x[:, None]
        out = x.astype(np.float32)
        out /= np.float32(255.0)  # as data.to_float and torchvision ToTensor
        if self.input_size:
            from .train import pad_to

            out = pad_to(out, self.input_size)
        return out

    def _normalize(self, x: np.ndarray) -> np.ndarray:
        if self.mean is not None:
            c = x.shape[1]
            if len(self.mean) != c:
                raise ValueError(f"augment: {len(self.mean)} channel means for {c}-channel images")
            x = (x - np.asarray(self.mean, np.float32)[:, None, None]) / np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray(x, dtype=np.float32)

    def __call__(self, x: ArrayLike, rng: np.random.Generator | None) -> np.ndarray:
        """Training input: random transforms drawn from ``rng`` (None only without transforms)."""
        x = self._to_float(x)
        if self.transforms:
            if rng is None:
                raise TypeError("augment: a Pipeline with random transforms needs a numpy Generator, got None")
            for t in self.transforms:
                x = t(x, rng)
        return self._normalize(x)

    def eval(self, x: ArrayLike) -> np.ndarray:
        """Evaluation input: scaling, padding and normalisation only (no random transform)."""
        return self._normalize(self._to_float(x))

    def config(self) -> dict[str, Any]:
        return {"transforms": [t.config() for t in self.transforms], "mean": self.mean,
                "std": self.std, "input_size": self.input_size}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Pipeline:
        ts = []
        for t in cfg.get("transforms", []):
            t = dict(t)
            kind = t.pop("type")
            if kind not in _TRANSFORMS:
                raise ValueError(f"unknown transform {kind!r}; known: {', '.join(_TRANSFORMS)}")
            ts.append(_TRANSFORMS[kind](**t))
        return cls(ts, cfg.get("mean"), cfg.get("std"), cfg.get("input_size"))


def from_name(name: str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              input_size: int | None = None) -> Pipeline:
    """A :class:`Pipeline` for a recipe of :data:`RECIPES` (``"none"``, ``"crop"``, ``"tutorial"``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {', '.join(RECIPES)}")
    return Pipeline.from_config({"transforms": RECIPES[name], "mean": mean, "std": std,
                                 "input_size": input_size})


def channel_stats(images: ArrayLike) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images scaled to ``[0, 1]``
    (float64 accumulation), as lists: the values to normalise with."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    c = x.shape[1]
    mean, std = [], []
    for ch in range(c):
        plane = x[:, ch].astype(np.float64) / 255.0
        mean.append(float(plane.mean()))
        std.append(float(plane.std()))
    return mean, std
