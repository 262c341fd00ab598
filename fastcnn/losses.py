"""Losses with ``forward(prediction, target) -> float`` and ``backward() -> grad``."""
import numpy as np

from . import functional as F
from ._shapes import as_float32


class SoftmaxCrossEntropy:
    """Softmax + cross-entropy, mean over the batch (``torch.nn.CrossEntropyLoss``).

    ``forward(logits (N, K) float32, labels (N,) int) -> float``;
    ``backward() -> (N, K) float32`` gradient w.r.t. the logits.
    """

    def __init__(self):
        self._probs = self._labels = None

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        loss, self._probs, self._labels = F.softmax_cross_entropy(logits, labels, return_labels=True)
        return loss

    @property
    def probs(self):
        """Softmax of the last forward's logits, (N, K) float32."""
        return self._probs

    def backward(self):
        if self._probs is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return F._softmax_cross_entropy_backward(self._probs, self._labels)


class MSE:
    """Mean squared error over all elements (``torch.nn.MSELoss``)."""

    def __init__(self):
        self._diff = None

    def __call__(self, pred, target):
        return self.forward(pred, target)

    def forward(self, pred, target):
        pred = as_float32(pred, "prediction", None, "MSE")
        target = as_float32(target, "target", None, "MSE")
        if pred.shape != target.shape:
            raise ValueError(f"MSE: prediction shape {pred.shape} does not match target shape {target.shape}")
        if pred.size == 0:
            raise ValueError("MSE: empty input")
        self._diff = pred - target
        return float(np.mean(np.square(self._diff, dtype=np.float64)))

    def backward(self):
        if self._diff is None:
            raise RuntimeError("MSE.backward called before forward")
        return self._diff * np.float32(2.0 / self._diff.size)
