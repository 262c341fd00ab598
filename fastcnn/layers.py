"""Stateful layers over :mod:`fastcnn.functional`, and the containers ``Sequential`` and ``Residual``.

Every layer has ``forward(x)`` (also ``__call__``), ``backward(grad_out) -> grad_in``,
``parameters()``, ``train()`` / ``eval()``, ``state_dict()`` / ``load_state_dict()``,
``config()`` (its type and constructor arguments, read from its public attributes;
:func:`from_config` rebuilds it) and ``save(path)``.  Weights use PyTorch's layouts and
default initialisation.

A layer checks its constructor arguments and keeps them as normalised public attributes
(``Conv2D(1, 8, 3).kernel_size == (3, 3)``); its input arrays are checked by the functional
ops it calls.  What a forward keeps for backward follows one rule for every layer
(:meth:`Layer._keep`; docs/ROBUSTNESS.md, "Train and eval mode").
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from threading import get_ident
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from . import _dispatch, _heap
from . import functional as F
from ._modelfile import save as _save_model
from ._shapes import IntOrPair, Padding, check_padding_arg, pair
from .predict import predict_proba

__all__ = ["Parameter", "Layer", "Conv2D", "MaxPool2D", "AvgPool2D", "SumPool2D", "GlobalAvgPool2D", "ReLU",
           "Sigmoid", "Tanh", "Flatten", "Dense", "BatchNorm2D", "Dropout", "Sequential", "Residual", "LAYERS",
           "register", "from_config"]


class Parameter:
    """A trainable array and its gradient (both float32, same shape).

    :meth:`zero_grad` is deferred: the gradient reads as zeros afterwards, but its memory is
    only cleared on the next read of ``grad``, and the next :meth:`accumulate` stores its
    gradient instead of adding it, as PyTorch's backward after ``zero_grad(set_to_none=True)``
    (a dense layer writes it there directly: :meth:`overwritable_grad`).
    """

    __slots__ = ("data", "_grad", "_stale", "_plain")

    def __init__(self, data: ArrayLike) -> None:
        self.data: np.ndarray = np.asarray(data, dtype=np.float32, order="C").copy()
        self._grad: np.ndarray = _heap.zeros_aligned(self.data.shape)  # (dense layers: docs/PERFORMANCE.md, 3)
        self._stale = False  # True: _grad holds old values that read as zeros
        self._plain = True  # _grad is a writeable C-contiguous float32 array (overwritable_grad)

    @property
    def grad(self) -> np.ndarray:
        if self._stale:
            self._grad[...] = 0.0
            self._stale = False
        return self._grad

    @grad.setter
    def grad(self, value: np.ndarray) -> None:
        self._grad = value
        self._stale = False
        self._plain = (type(value) is np.ndarray and value.dtype == np.float32 and value.flags.c_contiguous
                       and value.flags.writeable)

    def zero_grad(self) -> None:
        """Set the gradient to zeros (deferred, see the class)."""
        self._stale = True

    def overwritable_grad(self) -> np.ndarray | None:
        """The gradient's memory while it is stale (after :meth:`zero_grad`), for a backward
        to write its gradient into and then hand to :meth:`accumulate` (no copy); else None."""
        # (an assigned gradient of another kind: None, accumulate copies into it)
        return self._grad if self._stale and self._plain else None

    def accumulate(self, g: np.ndarray) -> None:
        """``grad += g``; after :meth:`zero_grad`, ``grad = g`` (bit for bit)."""
        if self._stale:
            if g is not self._grad:  # (else g was written in place: see overwritable_grad)
                np.copyto(self._grad, g)
            self._stale = False
        else:
            self._grad += g

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape})"


def _rng(rng: Any) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _uniform(rng: np.random.Generator, bound: float, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _symbolic_recorder(x: Any) -> Callable[..., Any] | None:
    """How to record a call on symbolic tensor(s) of :mod:`fastcnn.graph` (they carry it), else None."""
    items = x if isinstance(x, (list, tuple)) else (x,)
    if items and all(hasattr(t, "_fastcnn_record") for t in items):
        return items[0]._fastcnn_record
    return None


class Layer:
    """Base class of the layers and containers.

    ``forward`` hands what ``backward`` needs to :meth:`_keep`, ``backward`` reads it back
    with :meth:`_kept` (the one train/eval rule: docs/ROBUSTNESS.md, "Train and eval mode");
    scratch buffers and checked shapes are the layer's :class:`fastcnn.functional.Workspace`,
    given to every functional op it calls.
    """

    training: bool = True
    #: Set to False on a network's first layer to skip the input gradient.
    needs_input_grad: bool = True
    #: Attribute names of Parameters and of non-trainable state arrays, in state-dict order.
    _params: ClassVar[tuple[str, ...]] = ()
    _buffers: ClassVar[tuple[str, ...]] = ()
    #: Constructor arguments, read back from the public attributes of the same names by
    #: :meth:`config` and ``repr`` (for a Parameter's name: whether it exists).
    _config_args: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`_keep` keeps in eval mode too (an eval-mode computation of its own).
    _keeps_in_eval: ClassVar[bool] = False
    _saved: tuple[Any, ...] | None = None

    def __init__(self) -> None:
        self._ws = F.Workspace()

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        record = _symbolic_recorder(x)
        if record is not None:  # functional model API: record a node (fastcnn.graph)
            return record(self, x, **kwargs)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword arguments {sorted(kwargs)}")
        return self.forward(x)

    def forward(self, x: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_out: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _keeping(self) -> bool:
        """Whether a forward now keeps what backward needs: in training mode, or ``_keeps_in_eval``."""
        return self.training or self._keeps_in_eval

    def _keep(self, *values: Any) -> None:
        """Keep ``values`` for :meth:`backward` if :meth:`_keeping`, else nothing."""
        self._saved = values if self._keeping() else None

    def _kept(self) -> tuple[Any, ...]:
        saved = self._saved
        if saved is None:
            when = "forward" if self._keeps_in_eval else "a training-mode forward"
            raise RuntimeError(f"{type(self).__name__}.backward called before {when}")
        return saved

    def parameters(self) -> list[Parameter]:
        return [getattr(self, n) for n in self._params if getattr(self, n) is not None]

    def train(self, mode: bool = True) -> Layer:
        self.training = bool(mode)
        return self

    def eval(self) -> Layer:
        return self.train(False)

    def _arguments(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer, from its public attributes."""
        return {n: (getattr(self, n) is not None) if n in self._params else getattr(self, n)
                for n in self._config_args}

    def config(self) -> dict[str, Any]:
        """The architecture record of this layer (written into model files): type and arguments."""
        return {"type": type(self).__name__, "args": self._arguments()}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Layer:
        """Rebuild a layer of this type from its :meth:`config` (JSON lists back to tuples)."""
        args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.get("args", {}).items()}
        return cls(**args)

    def save(self, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None,
             format: str = "npz") -> None:
        """Write architecture and weights to ``path`` atomically (``.npz``, or
        ``format="safetensors"``); :func:`fastcnn.load` reads it back."""
        _save_model(self, path, metadata, format=format)

    def predict_proba(self, x: ArrayLike, batch_size: int = 256) -> np.ndarray:
        """Softmax of the outputs for inputs ``x``, in eval mode, ``batch_size`` samples at a time."""
        return predict_proba(self, x, batch_size)

    def predict(self, x: ArrayLike, batch_size: int = 256) -> np.ndarray:
        """Class index (argmax of the outputs) of each input in ``x``, as :meth:`predict_proba`."""
        return self.predict_proba(x, batch_size).argmax(axis=1)

    def children(self) -> dict[str, Layer]:
        """Named sub-layers (containers override this); their state is under ``name.``."""
        return {}

    def modules(self) -> Iterator[Layer]:
        """This layer and every layer inside it, depth first (as torch's ``Module.modules``)."""
        yield self
        for child in self.children().values():
            yield from child.modules()

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]:
        d = {}
        for n in self._params:
            p = getattr(self, n)
            if p is not None:
                d[prefix + n] = p.data.copy()
        for n in self._buffers:
            d[prefix + n] = np.array(getattr(self, n), copy=True)
        for name, child in self.children().items():
            d.update(child.state_dict(f"{prefix}{name}."))
        return d

    def load_state_dict(self, state: Mapping[str, ArrayLike], prefix: str = "") -> None:
        """Load arrays by name; shapes must match.  At the top of a container, missing or
        unexpected keys raise ``KeyError``."""
        kids = self.children()
        if kids and not prefix:
            expected = set(self.state_dict())
            unexpected, missing = sorted(set(state) - expected), sorted(expected - set(state))
            if unexpected or missing:
                raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                               f"unexpected keys {unexpected}")
        for n in self._params:
            p = getattr(self, n)
            if p is not None:
                p.data[...] = _take(state, prefix + n, p.data.shape, type(self).__name__)
        for n in self._buffers:
            cur = getattr(self, n)
            arr = _take(state, prefix + n, np.shape(cur), type(self).__name__)
            if isinstance(cur, np.ndarray):
                cur[...] = arr
            else:
                setattr(self, n, type(cur)(arr))
        for name, child in kids.items():
            child.load_state_dict(state, f"{prefix}{name}.")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"{type(self).__name__}({args})"


def _add_grads(weight: Parameter, bias: Parameter | None, gw: np.ndarray, gb: np.ndarray | None) -> None:
    """Accumulate a layer's weight and bias gradients."""
    weight.accumulate(gw)
    if bias is not None and gb is not None:
        bias.accumulate(gb)


def _shape(x: Any) -> tuple[int, ...]:
    """``np.shape(x)``, without its dispatch for arrays (backward of the shape-only layers)."""
    return x.shape if type(x) is np.ndarray else np.shape(x)


def _take(state: Mapping[str, ArrayLike], key: str, shape: tuple[int, ...], layer: str) -> np.ndarray:
    if key not in state:
        raise KeyError(f"{layer}: state dict has no entry {key!r}")
    arr = np.asarray(state[key])
    if arr.shape != tuple(shape):
        raise ValueError(f"{layer}: {key!r} has shape {arr.shape}, expected {tuple(shape)}")
    return arr


class Conv2D(Layer):
    """2-D convolution.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride : int or (int, int)
    padding : int, (int, int), ``"valid"`` or ``"same"`` (TensorFlow SAME, any stride)
    bias : bool
    rng : numpy Generator or seed, optional
        Initialisation as PyTorch: weight and bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    Attributes: ``in_channels``, ``out_channels``, ``kernel_size`` and ``stride`` (pairs),
    ``padding`` (a pair or ``"valid"``/``"same"``), ``weight``, ``bias`` (a Parameter or None).

    Shapes: x ``(N, in_channels, H, W)`` float32 -> ``(N, out_channels, OH, OW)`` float32.
    """

    _params = ("weight", "bias")
    _config_args = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "bias")

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair, stride: IntOrPair = 1,
                 padding: Padding = 0, bias: bool = True, rng: Any = None) -> None:
        super().__init__()
        op = "Conv2D"
        self.in_channels = pair(in_channels, "in_channels", op)[0]
        self.out_channels = pair(out_channels, "out_channels", op)[0]
        self.kernel_size = pair(kernel_size, "kernel_size", op)
        self.stride = pair(stride, "stride", op)
        self.padding = check_padding_arg(padding, op)
        gen = _rng(rng)
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])  # 1/sqrt(fan_in)
        self.weight = Parameter(_uniform(gen, bound, (self.out_channels, self.in_channels) + self.kernel_size))
        self.bias = Parameter(_uniform(gen, bound, (self.out_channels,))) if bias else None

    def forward(self, x: ArrayLike, relu: bool = False, batch_norm: BatchNorm2D | None = None,
                max_pool2: bool = False, stats: np.ndarray | None = None) -> np.ndarray:
        """``relu=True`` fuses ``max(conv, 0)`` into the convolution's store; ``max_pool2=True``
        returns the 2x2 max pooling (stride 2) of the result; :meth:`backward` then takes the
        gradient of what this returned.  ``batch_norm`` (inference only: an eval-mode
        ``BatchNorm2D`` of ``out_channels`` features) is folded into the weights and bias
        (:func:`fastcnn.functional.fold_batch_norm`), so the result is that layer's output
        (before the ReLU) up to float32 rounding.  ``stats`` (a (2, out_channels) float64
        array): filled with the result's batch statistics for the ``BatchNorm2D`` after it
        (:func:`fastcnn.functional.conv2d`'s)."""
        w, b = self.weight.data, (None if self.bias is None else self.bias.data)
        if batch_norm is not None:
            bn = batch_norm
            if self.training:
                raise ValueError("Conv2D.forward: batch_norm is for inference (eval mode) only")
            if type(bn) is not BatchNorm2D or bn.training or bn.num_features != self.out_channels:
                raise ValueError(f"Conv2D.forward: batch_norm must be an eval-mode BatchNorm2D of "
                                 f"{self.out_channels} features, got {bn!r}")
            w, b = F.fold_batch_norm(w, b, bn.running_mean, bn.running_var, bn.weight.data, bn.bias.data, bn.eps)
        if not (self.training and max_pool2):
            y = F.conv2d(x, w, b, self.stride, self.padding, relu=relu, max_pool2=max_pool2, stats=stats, ws=self._ws)
            self._keep(x, y if relu else None, None)
            return y
        y, idx = F.conv2d(x, w, b, self.stride, self.padding, relu=relu, max_pool2=True, return_indices=True,
                          stats=stats, ws=self._ws)
        self._keep(x, y if relu else None, idx)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray | None:
        x, y, idx = self._kept()  # (fused ReLU: y; pooling: idx, the gradient's at the pooled size)
        gx, gw, gb = F.conv2d_backward(grad_out, x, self.weight.data, self.stride, self.padding,
                                       bias=self.bias is not None, input_grad=self.needs_input_grad,
                                       pool_indices=idx, relu_output=y, ws=self._ws)
        _add_grads(self.weight, self.bias, gw, gb)
        return gx


class _Pool(Layer):
    """Pooling over windows: ``kernel_size`` and ``stride`` (pairs; stride defaults to the
    kernel), ``padding`` (a pair or ``"valid"``/``"same"``)."""

    _config_args = ("kernel_size", "stride", "padding")
    _op: ClassVar[Callable[..., np.ndarray]]
    _op_backward: ClassVar[Callable[..., np.ndarray]]

    def __init__(self, kernel_size: IntOrPair = 2, stride: IntOrPair | None = None, padding: Padding = 0) -> None:
        super().__init__()
        op = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", op)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", op)
        self.padding = check_padding_arg(padding, op)

    def forward(self, x: ArrayLike) -> np.ndarray:
        y = type(self)._op(x, self.kernel_size, self.stride, self.padding, ws=self._ws)
        self._keep(x)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        (x,) = self._kept()
        return type(self)._op_backward(grad_out, _shape(x), self.kernel_size, self.stride, self.padding,
                                       ws=self._ws)


class MaxPool2D(_Pool):
    """2-D max pooling; ``padding="same"`` follows TensorFlow (padded cells never win).

    Shapes: ``(N, C, H, W)`` float32 -> ``(N, C, OH, OW)`` float32.
    """

    def forward(self, x: ArrayLike) -> np.ndarray:
        if not self._keeping():  # (no indices needed)
            self._keep()
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, ws=self._ws)
        y, idx = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, return_indices=True, ws=self._ws)
        self._keep(x, idx)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        x, idx = self._kept()
        return F.max_pool2d_backward(grad_out, idx, _shape(x), ws=self._ws)


class AvgPool2D(_Pool):
    """2-D average pooling (padding counted as PyTorch for int padding, not for ``"same"``)."""

    _op = F.avg_pool2d
    _op_backward = F.avg_pool2d_backward


class SumPool2D(_Pool):
    """2-D sum pooling: the sum of each window (padded cells count as zeros), as ``torch``'s
    ``avg_pool2d`` with ``divisor_override=1`` (:func:`fastcnn.functional.sum_pool2d`)."""

    _op = F.sum_pool2d
    _op_backward = F.sum_pool2d_backward


class GlobalAvgPool2D(Layer):
    """Mean over each feature map: ``(N, C, H, W)`` -> ``(N, C, 1, 1)``, as
    ``torch.nn.AdaptiveAvgPool2d(1)`` (the compiled average-pooling kernel, window = H x W)."""

    def forward(self, x: ArrayLike) -> np.ndarray:
        y = F.global_avg_pool2d(x, ws=self._ws)
        self._keep(x)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        (x,) = self._kept()
        return F.global_avg_pool2d_backward(grad_out, _shape(x), ws=self._ws)


class _Elementwise(Layer):
    """An elementwise function of any shape whose gradient is computed from its output."""

    _op: ClassVar[Callable[[ArrayLike], np.ndarray]]
    _op_backward: ClassVar[Callable[[ArrayLike, ArrayLike], np.ndarray]]

    def forward(self, x: ArrayLike) -> np.ndarray:
        y = type(self)._op(x)
        self._keep(y)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        (y,) = self._kept()
        return type(self)._op_backward(grad_out, y)


class ReLU(_Elementwise):
    """Elementwise ``max(x, 0)``, any shape."""

    _op = F.relu
    _op_backward = F.relu_backward


class Sigmoid(_Elementwise):
    """Elementwise ``1 / (1 + exp(-x))`` (no overflow for large ``|x|``), any shape."""

    _op = F.sigmoid
    _op_backward = F.sigmoid_backward


class Tanh(_Elementwise):
    """Elementwise hyperbolic tangent, any shape."""

    _op = F.tanh
    _op_backward = F.tanh_backward


class Flatten(Layer):
    """``(N, ...)`` -> ``(N, prod(...))`` in C order, as ``torch.flatten(x, 1)``."""

    def forward(self, x: ArrayLike) -> np.ndarray:
        y = F.flatten(x)
        self._keep(x)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        (x,) = self._kept()
        return F.flatten_backward(grad_out, _shape(x))


class Dense(Layer):
    """Fully connected layer ``x @ W.T + b``.

    Shapes: ``(N, in_features)`` float32 -> ``(N, out_features)`` float32; weight
    ``(out_features, in_features)``.  Initialisation as PyTorch's ``nn.Linear``.
    Attributes: ``in_features``, ``out_features``, ``weight``, ``bias`` (a Parameter or None).
    """

    _params = ("weight", "bias")
    _config_args = ("in_features", "out_features", "bias")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng: Any = None) -> None:
        super().__init__()
        self.in_features = pair(in_features, "in_features", "Dense")[0]
        self.out_features = pair(out_features, "out_features", "Dense")[0]
        gen = _rng(rng)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(_uniform(gen, bound, (self.out_features, self.in_features)))
        self.bias = Parameter(_uniform(gen, bound, (self.out_features,))) if bias else None

    def forward(self, x: ArrayLike) -> np.ndarray:
        y = F.linear(x, self.weight.data, None if self.bias is None else self.bias.data, ws=self._ws)
        self._keep(x)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray | None:
        (x,) = self._kept()
        gx, gw, gb = F.linear_backward(grad_out, x, self.weight.data, bias=self.bias is not None,
                                       input_grad=self.needs_input_grad,
                                       weight_grad_out=self.weight.overwritable_grad(), ws=self._ws)
        _add_grads(self.weight, self.bias, gw, gb)
        return gx


class BatchNorm2D(Layer):
    """Batch normalisation per channel of ``(N, C, H, W)`` input, as ``torch.nn.BatchNorm2d``.

    Training mode normalises with batch statistics and updates ``running_mean`` /
    ``running_var`` (momentum rule and unbiased variance as PyTorch); eval mode uses them
    (and its backward is that of the eval-mode computation).
    ``sync``: None (statistics of this process's batch) or the object set by
    :func:`fastcnn.distributed.sync_batchnorm` (statistics of the global batch over MPI).
    """

    _params = ("weight", "bias")
    _buffers = ("running_mean", "running_var", "num_batches_tracked")
    _config_args = ("num_features", "eps", "momentum")
    _keeps_in_eval = True
    sync: Any = None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = pair(num_features, "num_features", "BatchNorm2D")[0]
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = Parameter(np.ones(self.num_features, np.float32))
        self.bias = Parameter(np.zeros(self.num_features, np.float32))
        self.running_mean = np.zeros(self.num_features, np.float32)
        self.running_var = np.ones(self.num_features, np.float32)
        self.num_batches_tracked = np.zeros((), np.int64)

    def forward(self, x: ArrayLike, relu: bool = False, max_pool2: bool = False,
                batch_stats: np.ndarray | None = None, residual: ArrayLike | None = None) -> np.ndarray:
        """``relu=True`` returns ``max(y, 0)``; ``max_pool2=True`` the 2x2 max pooling (stride 2)
        of that; :meth:`backward` then takes the gradient of what this returned.  ``batch_stats``
        (training): ``x``'s statistics, already computed (:func:`fastcnn.functional.batch_norm2d`'s).
        ``residual``: added before the ReLU (a residual block's sum, :class:`Residual`);
        :meth:`backward` then takes the gradient of the sum."""
        y, cache = F.batch_norm2d(x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                                  training=self.training, momentum=self.momentum, eps=self.eps, sync=self.sync,
                                  relu=relu, max_pool2=max_pool2, batch_stats=batch_stats, residual=residual)
        if self.training:
            self.num_batches_tracked += 1
        self._keep(cache)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        (cache,) = self._kept()
        gx, gw, gb = F.batch_norm2d_backward(grad_out, cache, self.weight.data)
        _add_grads(self.weight, self.bias, gw, gb)
        return gx


class Dropout(Layer):
    """Inverted dropout as ``torch.nn.Dropout``: in training mode each element is zeroed with
    probability ``p`` and the rest scaled by ``1 / (1 - p)``; identity in eval mode.

    The masks are seeded: a standalone layer draws from ``default_rng([seed, calls])``, counting
    its training forwards; :func:`fastcnn.train.fit` calls :meth:`reseed` before every step
    with ``(run seed, global step, layer index)``, so a resumed run draws the same masks.
    """

    _config_args = ("p", "seed")
    _keeps_in_eval = True

    def __init__(self, p: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p, self.seed = float(p), int(seed)
        self.calls = 0
        self._rng: np.random.Generator | None = None

    def reseed(self, entropy: Any) -> None:
        """Draw the next masks from ``numpy.random.default_rng(entropy)``."""
        self._rng = np.random.default_rng(entropy)

    def forward(self, x: ArrayLike) -> np.ndarray:
        rng = self._rng if self._rng is not None else [self.seed, self.calls]
        y, mask = F.dropout(x, self.p, rng=rng, training=self.training)
        if mask is not None:  # (a mask drawn: count the call)
            self.calls += 1
        self._keep(mask)
        return y

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        (mask,) = self._kept()
        return F.dropout_backward(grad_out, mask)


# --------------------------------------------------------------------------- containers

_STEP_GUARD = threading.Lock()  # taken only when a model changes training thread


def _claim_training(model: Sequential, me: int) -> None:
    """Make the calling thread (``me``) the one that takes ``model``'s training steps.

    Training mode keeps per-call state in the layers (inputs for backward, batch statistics),
    so one model cannot take training steps from two threads at once: a thread that finds the
    model in the middle of another live thread's step (forward ... backward) gets a
    ``RuntimeError`` instead of silently mixed gradients.  Inference (eval mode) is not
    restricted (the layers' scratch buffers are per thread).
    """
    with _STEP_GUARD:
        other = model._step_thread
        if (other is not None and other != me and model._in_step
                and other in {t.ident for t in threading.enumerate()}):
            raise RuntimeError("this model is in a training step (forward ... backward) in another thread; "
                               "training one model from two threads at once is not supported (inference in "
                               "eval mode is thread-safe)")
        model._step_thread = me


def _hooked(layer: Layer) -> bool:
    """Whether ``layer.forward`` is wrapped on the instance (e.g. by ``fastcnn.viz.trace``, which
    records every layer's output): such layers are run one by one, unfused."""
    return "forward" in vars(layer)


def _fusable(layer: Layer, training: bool) -> bool:
    """Whether ``Sequential`` may fuse ``layer`` into the convolution before it (same mode)."""
    return layer.training == training and not _hooked(layer)


def _residual_mask(layer: Layer, before: Layer) -> np.ndarray | None:
    """The ReLU output of ``before`` if ``layer``'s backward may return its input gradient through
    it (both unwrapped :class:`Residual` blocks, ``before`` holding its forward's output)."""
    if type(layer) is not Residual or type(before) is not Residual:
        return None
    if any(n in vars(b) for b in (layer, before) for n in ("forward", "backward")):
        return None
    saved = before._saved
    return saved[0] if saved is not None else None


def _pools_2x2(pool: MaxPool2D) -> bool:
    """Whether ``pool`` is the 2x2 max pooling of stride 2 without padding (fusable)."""
    return pool.kernel_size == (2, 2) and pool.stride == (2, 2) and pool.padding in ((0, 0), "valid")


def _fused_tail(layers: list[Layer], i: int, mode: bool) -> tuple[ReLU | None, MaxPool2D | None, int]:
    """The ``ReLU`` and 2x2 ``MaxPool2D`` (either or both, in that order, in ``mode``) from
    ``layers[i]`` that ``Sequential`` fuses into the layer before, and the index after them."""
    n = len(layers)
    nxt = layers[i] if i < n else None
    relu = pool = None
    if type(nxt) is ReLU and _fusable(nxt, mode):
        relu, i = nxt, i + 1
        nxt = layers[i] if i < n else None
    if type(nxt) is MaxPool2D and _fusable(nxt, mode) and _pools_2x2(nxt):
        pool, i = nxt, i + 1
    return relu, pool, i


class Sequential(Layer):
    """A chain of layers; itself a layer.

    ``state_dict()`` uses PyTorch-style dotted names (``"0.weight"``, ``"3.body.1.running_mean"``).
    A ``Conv2D`` or ``BatchNorm2D`` directly followed by a ``ReLU`` and a 2x2 ``MaxPool2D``
    (either or both, in that order, in the same mode) runs as one op, the ReLU and the pooling
    fused into its store, bit for bit the layers one by one; in training a ``Conv2D`` right
    before a ``BatchNorm2D`` computes that layer's batch statistics in its store (the same
    bytes); in eval mode a ``BatchNorm2D`` right after a ``Conv2D`` is folded into its weights
    (``fastcnn.config(fuse=..., fold_bn=...)``; docs/PERFORMANCE.md, sections 12 and 13).  In
    the backward a ``Residual`` right after another masks its input gradient with that block's
    ReLU output in its sum's pass (the same bytes).
    """

    def __init__(self, *layers: Layer) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a fastcnn layer")
        self.layers = list(layers)
        self._step_thread: int | None = None  # the thread taking training steps (see _claim_training)
        self._in_step = False  # between a training forward and its backward
        self._run: list[Layer] | None = None  # the layers the last forward called (see forward)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Sequential:
        return cls(*[from_config(c) for c in cfg["layers"]])

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def forward(self, x: Any) -> Any:
        return self._forward(x)[0]

    def _forward(self, x: Any, residual: np.ndarray | None = None) -> tuple[Any, bool]:
        """The forward, and whether ``residual`` was summed in: given, a last ``BatchNorm2D`` run
        through the fusion adds it and applies the ReLU in its pass (:class:`Residual`)."""
        if self.training:
            me = get_ident()
            if self._step_thread != me:
                _claim_training(self, me)
            self._in_step = True
        summed = False
        run: list[Layer] = []  # the layers called, fused ones left out: what backward walks back
        self._run = run
        layers, i, n = self.layers, 0, len(self.layers)
        fuse = _dispatch.fuse()
        stats = None  # a training Conv2D's batch statistics for the BatchNorm2D after it
        while i < n:  # a Conv2D or BatchNorm2D runs with the ReLU and 2x2 pooling after it fused in
            layer = layers[i]
            i += 1
            run.append(layer)
            head = type(layer)
            if (head is not Conv2D and head is not BatchNorm2D) or not fuse or _hooked(layer):
                x = layer.forward(x)
                continue
            mode = layer.training
            bn = relu = pool = None
            nxt = layers[i] if i < n else None
            if type(layer) is Conv2D and type(nxt) is BatchNorm2D and _fusable(nxt, mode):
                if not mode and _dispatch.fold_bn():
                    bn, i = nxt, i + 1  # folded (Conv2D.forward checks its size)
                elif mode and nxt.num_features == layer.out_channels:  # its statistics in the store
                    stats = np.empty((2, layer.out_channels))
                    x = layer.forward(x, stats=stats)
                    continue
            relu, pool, i = _fused_tail(layers, i, mode)
            if type(layer) is Conv2D:
                x = layer.forward(x, relu=relu is not None, batch_norm=bn, max_pool2=pool is not None)
            elif type(layer) is BatchNorm2D:
                if residual is not None and i == n and relu is None and pool is None:
                    x, summed = layer.forward(x, relu=True, batch_stats=stats, residual=residual), True
                else:
                    x = layer.forward(x, relu=relu is not None, max_pool2=pool is not None, batch_stats=stats)
                stats = None
            for fused in (bn, relu, pool):
                if fused is not None:
                    fused._saved = None  # (its backward is the head's)
        return x, summed

    def backward(self, grad_out: Any) -> Any:
        if self._in_step and self._step_thread != get_ident():
            _claim_training(self, get_ident())  # refuses a backward into another thread's step
        try:
            layers = self._run if self._run is not None else self.layers
            fuse, masked = _dispatch.fuse(), False
            for j in range(len(layers) - 1, -1, -1):
                layer = layers[j]
                if fuse and type(layer) is Residual:
                    # a Residual right after another masks its input gradient with that block's
                    # ReLU output in its sum's pass; that block's backward then skips its ReLU's
                    mask = _residual_mask(layer, layers[j - 1]) if j else None
                    if masked or mask is not None:
                        grad_out = layer._backward(grad_out, masked, mask)
                    else:
                        grad_out = layer.backward(grad_out)
                    masked = mask is not None
                else:
                    grad_out = layer.backward(grad_out)
                if grad_out is None:
                    break
        finally:
            self._in_step = False
        return grad_out

    def parameters(self) -> list[Parameter]:
        return [p for layer in self.layers for p in layer.parameters()]

    def train(self, mode: bool = True) -> Sequential:
        self.training = bool(mode)
        self._in_step = False
        for layer in self.layers:
            layer.train(mode)
        return self

    @property
    def needs_input_grad(self) -> bool:
        return self.layers[0].needs_input_grad if self.layers else True

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        if self.layers:
            self.layers[0].needs_input_grad = bool(value)

    def config(self) -> dict[str, Any]:
        return {"type": "Sequential", "layers": [layer.config() for layer in self.layers]}

    def children(self) -> dict[str, Layer]:
        return {str(i): layer for i, layer in enumerate(self.layers)}

    def __repr__(self) -> str:
        inner = ",\n".join("  " + repr(layer).replace("\n", "\n  ") for layer in self.layers)
        return f"Sequential(\n{inner}\n)"


class Residual(Layer):
    """``relu(body(x) + shortcut(x))``: the basic block of the CIFAR-10 ResNet.

    ``body`` and ``shortcut`` are :class:`Sequential` (an empty shortcut is the identity).
    """

    def __init__(self, body: Layer, shortcut: Layer | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else Sequential()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Residual:
        return cls(from_config(cfg["body"]), from_config(cfg["shortcut"]))

    def children(self) -> dict[str, Layer]:
        return {"body": self.body, "shortcut": self.shortcut}

    def parameters(self) -> list[Parameter]:
        return self.body.parameters() + self.shortcut.parameters()

    def train(self, mode: bool = True) -> Residual:
        self.training = bool(mode)
        self.body.train(mode)
        self.shortcut.train(mode)
        return self

    def config(self) -> dict[str, Any]:
        return {"type": "Residual", "body": self.body.config(), "shortcut": self.shortcut.config()}

    def forward(self, x: ArrayLike) -> np.ndarray:
        s = self.shortcut.forward(x)
        body = self.body
        if type(body) is Sequential and not _hooked(body) and _dispatch.fuse():
            # a last BatchNorm2D adds s and applies the ReLU in its pass (docs/PERFORMANCE.md, section 13)
            y, summed = body._forward(x, residual=s)
        else:
            y, summed = body.forward(x), False
        # (a new array, not in place: the body's last layer may keep its output for its backward)
        out = y if summed else F.add_relu(y, s)
        self._keep(out)
        return out

    def backward(self, grad_out: ArrayLike) -> np.ndarray:
        return self._backward(grad_out)

    def _backward(self, grad_out: ArrayLike, masked: bool = False, mask: np.ndarray | None = None) -> np.ndarray:
        """The backward; ``masked``: ``grad_out`` is already through this block's ReLU; ``mask``:
        the output of the ReLU before this block, through which the input gradient is returned
        (:class:`Sequential`'s fusion of consecutive blocks)."""
        (out,) = self._kept()
        g = grad_out if masked else F.relu_backward(grad_out, out)
        gx = self.body.backward(g)
        gs = self.shortcut.backward(g)
        # (the body's gradient is ours unless read-only: then summed in place)
        mine = gx.flags.writeable and gx.flags.c_contiguous and gx.dtype == np.float32
        if mask is not None:
            return F.add_relu_backward(gx, gs, mask, out=gx if mine else None)
        return F.add(gx, gs, out=gx if mine else None)


# --------------------------------------------------------------------------- architecture records

#: Every layer type an architecture record may name: type name -> class.  Complete once
#: ``fastcnn`` is imported (:mod:`fastcnn.graph` registers the graph model and merge layers).
LAYERS: dict[str, type[Layer]] = {}


def register(*classes: type[Layer]) -> None:
    """Let :func:`from_config` (and so :func:`fastcnn.load`) build these layer types by name."""
    for cls in classes:
        LAYERS[cls.__name__] = cls


register(Conv2D, MaxPool2D, AvgPool2D, ReLU, Flatten, Dense, BatchNorm2D, SumPool2D, GlobalAvgPool2D, Sigmoid,
         Tanh, Dropout, Sequential, Residual)


def from_config(cfg: Any) -> Layer:
    """Build a layer tree from :meth:`Layer.config` output."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ValueError(f"invalid layer config {cfg!r}")
    kind = cfg["type"]
    if kind not in LAYERS:
        raise ValueError(f"unknown layer type {kind!r} in checkpoint")
    return LAYERS[kind].from_config(cfg)
