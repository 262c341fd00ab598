"""Losses with ``forward(prediction, target) -> float`` and ``backward() -> grad``, over the
loss ops of :mod:`fastcnn.functional` (which check the arguments)."""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from . import functional as F

__all__ = ["SoftmaxCrossEntropy", "MSE"]


class SoftmaxCrossEntropy:
    """Softmax + cross-entropy, mean over the batch (``torch.nn.CrossEntropyLoss``).

    ``forward(logits (N, K) float32, labels (N,) int) -> float``;
    ``backward() -> (N, K) float32`` gradient w.r.t. the logits.
    """

    def __init__(self) -> None:
        self._probs: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def __call__(self, logits: ArrayLike, labels: ArrayLike) -> float:
        return self.forward(logits, labels)

    def forward(self, logits: ArrayLike, labels: ArrayLike) -> float:
        loss, self._probs, self._labels = F.softmax_cross_entropy(logits, labels, return_labels=True)
        return loss

    @property
    def probs(self) -> np.ndarray | None:
        """Softmax of the last forward's logits, (N, K) float32."""
        return self._probs

    def backward(self) -> np.ndarray:
        if self._probs is None or self._labels is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return F._softmax_cross_entropy_backward(self._probs, self._labels)  # (checked by forward)


class MSE:
    """Mean squared error over all elements (``torch.nn.MSELoss``)."""

    def __init__(self) -> None:
        self._diff: np.ndarray | None = None

    def __call__(self, pred: ArrayLike, target: ArrayLike) -> float:
        return self.forward(pred, target)

    def forward(self, pred: ArrayLike, target: ArrayLike) -> float:
        loss, self._diff = F.mse_loss(pred, target)
        return loss

    def backward(self) -> np.ndarray:
        if self._diff is None:
            raise RuntimeError("MSE.backward called before forward")
        return F.mse_loss_backward(self._diff)
