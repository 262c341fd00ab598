"""Inference: class probabilities for arrays, and classification of image files.

Images go through the preprocessing the model was trained with, read from the checkpoint's
metadata ``"preprocess"``: ``{"dataset", "input_shape": [C, H, W], "mean": [...],
"std": [...], "classes": [...]}`` (pixels scaled to ``[0, 1]``, then ``(x - mean) / std``
per channel).  Checkpoints without it are MNIST models: ``[1, 28, 28]``, ``[0, 1]`` scaling
(:func:`fastcnn.data.to_float`), classes ``"0"``..``"9"``, zero-padded to the model's input
size (the ResNet takes 32x32).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ._optional import require
from ._shapes import as_float32

__all__ = ["softmax", "predict_proba", "preprocess_info", "normalize", "load_images", "list_images",
           "predict_files", "IMAGE_EXTENSIONS"]

if TYPE_CHECKING:
    from .layers import Layer

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def softmax(logits: ArrayLike) -> np.ndarray:
    """Row-wise softmax (computed in float64, returned as float32)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def predict_proba(model: Layer, x: ArrayLike, batch_size: int = 256) -> np.ndarray:
    """Softmax of ``model``'s outputs for ``x`` (``(N, ...)`` float), in eval mode, batched.

    The model's train/eval mode is restored afterwards.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"predict_proba: batch_size must be a positive int, got {batch_size!r}")
    inputs: np.ndarray = as_float32(x, "x", None, "predict_proba")
    if inputs.ndim < 2:
        raise ValueError(f"predict_proba: x must have a batch dimension, got shape {inputs.shape}")
    was = model.training
    model.eval()
    try:
        outs = []
        for i in range(0, len(inputs), batch_size):
            y = model.forward(inputs[i:i + batch_size])
            if isinstance(y, (list, tuple)) or np.ndim(y) != 2:
                raise ValueError("predict_proba: the model must have one output of shape (N, classes)")
            outs.append(softmax(y))
    finally:
        model.train(was)
    if not outs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outs)


def preprocess_info(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's ``"preprocess"`` record, or the MNIST fallback of older checkpoints."""
    from . import models

    meta = metadata or {}
    prep = meta.get("preprocess")
    if prep:
        c = int(prep["input_shape"][0])
        out = {"dataset": prep.get("dataset"), "input_shape": [int(v) for v in prep["input_shape"]],
               "mean": [float(v) for v in prep.get("mean", [0.0] * c)],
               "std": [float(v) for v in prep.get("std", [1.0] * c)],
               "classes": [str(v) for v in prep.get("classes", [])], "pad_to": prep.get("pad_to")}
        if len(out["mean"]) != c or len(out["std"]) != c:
            raise ValueError(f"checkpoint preprocess: mean/std need {c} values, got {out['mean']}, {out['std']}")
        return out
    size = models.INPUT_SIZE.get(str(meta.get("model")), 28)
    return {"dataset": "mnist", "input_shape": [1, 28, 28], "mean": None, "std": None,
            "classes": [str(i) for i in range(10)], "pad_to": size if size != 28 else None}


def normalize(images: ArrayLike, prep: dict[str, Any]) -> np.ndarray:
    """uint8 images ``(N, C, H, W)`` (or ``(N, H, W)``) -> the float32 model input, exactly as
    training prepared its evaluation input (:meth:`fastcnn.augment.Pipeline.eval`)."""
    from .augment import Pipeline

    return Pipeline(mean=prep.get("mean"), std=prep.get("std"), input_size=prep.get("pad_to")).eval(images)


def list_images(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Expand directories (sorted, image extensions only); files are kept as given."""
    files = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"{p}: directory holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return files


def load_images(files: Sequence[str], prep: dict[str, Any]) -> np.ndarray:
    """Read image files as uint8 ``(N, C, H, W)``: converted to grayscale (C=1) or RGB (C=3)
    and resized (bilinear) to the model's input size when they differ."""
    Image = require("PIL.Image", "images", "reading image files")
    c, h, w = prep["input_shape"]
    if c not in (1, 3):
        raise ValueError(f"image input needs 1 or 3 channels, the model expects {c}")
    out = np.empty((len(files), c, h, w), np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert("L" if c == 1 else "RGB")
                if img.size != (w, h):
                    img = img.resize((w, h), Image.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read image ({exc})") from exc
        out[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
    return out


def predict_files(model: Layer, metadata: dict[str, Any] | None, paths: Sequence[str | os.PathLike[str]],
                  top_k: int = 5, batch_size: int = 256) -> list[dict[str, Any]]:
    """Classify image files (or directories of them).

    Returns a list, one dict per file: ``{"file", "class", "index", "top": [{"class",
    "index", "probability"}, ...]}`` with the ``top_k`` most probable classes.
    """
    prep = preprocess_info(metadata)
    files = list_images(paths)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    results = []
    for i in range(0, len(files), batch_size):
        chunk = files[i:i + batch_size]
        probs = predict_proba(model, normalize(load_images(chunk, prep), prep), batch_size)
        names = prep["classes"] or [str(k) for k in range(probs.shape[1])]
        if len(names) != probs.shape[1]:
            names = [str(k) for k in range(probs.shape[1])]
        for f, p in zip(chunk, probs):
            order = np.argsort(-p, kind="stable")[:top_k]
            top = [{"class": names[k], "index": int(k), "probability": float(p[k])} for k in order]
            results.append({"file": f, "class": top[0]["class"], "index": top[0]["index"], "top": top})
    return results
