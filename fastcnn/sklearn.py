"""A scikit-learn classifier over fastcnn networks (``pip install "fastcnn[sklearn]"``).

``CNNClassifier`` takes images ``(N, C, H, W)``, or any 2-D ``(N, features)`` array (reshaped
to ``input_shape`` when given, else fed to a small fully connected network), and integer or
string labels.  It works in ``Pipeline`` and ``GridSearchCV``; pickling (as joblib does)
stores the network as its config and arrays, never the layer objects.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._optional import require

require("sklearn", "sklearn", "fastcnn.sklearn")

from sklearn.base import BaseEstimator, ClassifierMixin  # noqa: E402
from sklearn.utils.multiclass import check_classification_targets  # noqa: E402
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data  # noqa: E402

__all__ = ["CNNClassifier"]


def _auto_network(input_shape, n_classes, seed, hidden_units):
    """Conv(3x3 same, 8) -> ReLU -> [MaxPool 2] -> Flatten -> Dense for images; for flat
    features Dense(hidden) -> ReLU -> Dense."""
    from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
    from .model import Sequential

    rng = np.random.default_rng(seed)
    if len(input_shape) == 3:
        c, h, w = input_shape
        layers = [Conv2D(c, 8, 3, padding="same", rng=rng), ReLU()]
        if h >= 2 and w >= 2:
            layers.append(MaxPool2D(2))
            h, w = h // 2, w // 2
        return Sequential(*layers, Flatten(), Dense(8 * h * w, n_classes, rng=rng))
    (f,) = input_shape
    return Sequential(Dense(f, hidden_units, rng=rng), ReLU(), Dense(hidden_units, n_classes, rng=rng))


class CNNClassifier(ClassifierMixin, BaseEstimator):
    """Train a fastcnn network as a scikit-learn classifier.

    Parameters
    ----------
    model : "auto", a seed-model name ("scratch", "lenet", "bn", "resnet"; 10 classes only)
        or a callable ``model(input_shape, n_classes, seed) -> fastcnn layer``
    input_shape : tuple, optional
        Reshape each 2-D row to this per-sample shape, e.g. ``(1, 28, 28)``.
    hidden_units : int
        Width of the hidden layer of the "auto" network for flat features.
    epochs, batch_size, lr : training length, mini-batch size, learning rate
    optimizer : "adam" or "sgd"
    random_state : int or None
        Seeds the initial weights and the batch order (None: fresh randomness).
    backend : str, optional
        fastcnn backend to train with (default: the current one).
    """

    def __init__(self, model: str | Callable[..., Any] = "auto", input_shape: Sequence[int] | None = None,
                 hidden_units: int = 32, epochs: int = 10, batch_size: int = 32, lr: float = 1e-2,
                 optimizer: str = "adam", random_state: int | None = 0, backend: str | None = None):
        self.model = model
        self.input_shape = input_shape
        self.hidden_units = hidden_units
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.random_state = random_state
        self.backend = backend

    # -- data ---------------------------------------------------------------------------
    def _x(self, X, reset):
        X = validate_data(self, X, reset=reset, allow_nd=True, dtype=np.float32, ensure_min_samples=1)
        return self._shape(X)

    def _shape(self, X):
        if self.input_shape is not None:
            shape = tuple(int(d) for d in self.input_shape)
            if int(np.prod(X.shape[1:])) != int(np.prod(shape)):
                raise ValueError(f"CNNClassifier: samples of {X.shape[1:]} do not fit input_shape {shape}")
            X = X.reshape((len(X),) + shape)
        if X.ndim not in (2, 4):
            raise ValueError(f"CNNClassifier: X must be (N, features) or (N, C, H, W), got shape {X.shape}")
        return np.ascontiguousarray(X, dtype=np.float32)

    # -- training -------------------------------------------------------------------------
    def _init(self, X, classes):
        from . import models
        from .losses import SoftmaxCrossEntropy
        from .train import make_optimizer

        self.classes_ = np.asarray(classes)
        if len(self.classes_) < 2:
            raise ValueError("CNNClassifier: the training labels hold only one class; need at least 2")
        if not (isinstance(self.epochs, int) and self.epochs >= 1 and isinstance(self.batch_size, int)
                and self.batch_size >= 1 and self.lr > 0):
            raise ValueError(f"CNNClassifier: epochs and batch_size must be ints >= 1 and lr > 0, got "
                             f"{self.epochs}, {self.batch_size}, {self.lr}")
        seed = self.random_state if self.random_state is not None else int(np.random.SeedSequence().entropy % 2**32)
        self._seed = int(seed)
        n = len(self.classes_)
        shape = X.shape[1:]
        if callable(self.model):
            net = self.model(shape, n, self._seed)
        elif self.model == "auto":
            net = _auto_network(shape, n, self._seed, self.hidden_units)
        elif self.model in models.NAMES:
            if n != 10:
                raise ValueError(f"CNNClassifier: model {self.model!r} has 10 outputs, the labels have {n} classes")
            net = models.build(self.model, seed=self._seed, in_channels=shape[0])
        else:
            raise ValueError(f"CNNClassifier: model must be 'auto', one of {models.NAMES} or a callable, "
                             f"got {self.model!r}")
        self.model_ = net
        self.optimizer_ = make_optimizer(self.optimizer, net.parameters(), self.lr)
        self._loss = SoftmaxCrossEntropy()
        self.n_iter_ = 0

    def _epoch(self, X, y):
        import fastcnn

        previous = fastcnn.get_backend()
        if self.backend:
            fastcnn.set_backend(self.backend)
        try:
            net, opt = self.model_, self.optimizer_
            net.train()
            net.needs_input_grad = False  # nothing consumes the gradient of X
            order = np.random.default_rng([self._seed, self.n_iter_]).permutation(len(X))
            for i in range(0, len(X), self.batch_size):
                idx = order[i:i + self.batch_size]
                opt.zero_grad()
                loss = self._loss.forward(net.forward(X[idx]), y[idx])
                if not np.isfinite(loss):
                    raise FloatingPointError(f"CNNClassifier: non-finite loss {loss} in epoch {self.n_iter_}")
                net.backward(self._loss.backward())
                opt.step()
            self.n_iter_ += 1
        finally:
            fastcnn.set_backend(previous)

    def _labels(self, y):
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        return y

    def _encode(self, y):
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        if not np.all(self.classes_[idx] == y):
            raise ValueError(f"CNNClassifier: labels {sorted(set(np.asarray(y)[self.classes_[idx] != y]))} "
                             "are not among the classes")
        return idx.astype(np.int64)

    def fit(self, X: ArrayLike, y: ArrayLike) -> CNNClassifier:
        """Train from scratch for ``epochs`` passes over ``(X, y)``."""
        X, y = validate_data(self, X, y, reset=True, allow_nd=True, dtype=np.float32)
        y = self._labels(y)
        X = self._shape(X)
        self._init(X, np.unique(y))
        yi = self._encode(y)
        for _ in range(self.epochs):
            self._epoch(X, yi)
        return self

    def partial_fit(self, X: ArrayLike, y: ArrayLike, classes: ArrayLike | None = None) -> CNNClassifier:
        """One pass over ``(X, y)``; the first call needs ``classes`` (all labels to expect)."""
        first = not hasattr(self, "model_")
        X, y = validate_data(self, X, y, reset=first, allow_nd=True, dtype=np.float32)
        y = self._labels(y)
        X = self._shape(X)
        if first:
            if classes is None:
                raise ValueError("CNNClassifier.partial_fit: the first call needs classes=")
            self._init(X, np.unique(classes))
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError("CNNClassifier.partial_fit: classes differ from the first call's")
        self._epoch(X, self._encode(y))
        return self

    # -- inference -----------------------------------------------------------------------
    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(self._x(X, reset=False)).astype(np.float64)

    def predict(self, X: ArrayLike) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    # -- pickling (joblib, GridSearchCV): the network as config + arrays, no layer objects --------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if "model_" in state:
            state["model_"] = {"config": self.model_.config(), "state": self.model_.state_dict()}
            state["optimizer_"] = self.optimizer_.state_dict()
            state.pop("_loss", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "model_" in state:
            from .losses import SoftmaxCrossEntropy
            from .model import from_config
            from .train import make_optimizer

            net = from_config(state["model_"]["config"])
            net.load_state_dict(state["model_"]["state"])
            opt = make_optimizer(state["optimizer"], net.parameters(), state["lr"])
            opt.load_state_dict(state["optimizer_"])
            state = dict(state, model_=net, optimizer_=opt, _loss=SoftmaxCrossEntropy())
        self.__dict__.update(state)
