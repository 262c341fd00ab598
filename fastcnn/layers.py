"""Stateful layers: thin objects over :mod:`fastcnn.functional`.

Every layer has ``forward(x)`` (also ``__call__``), ``backward(grad_out) -> grad_in``,
``parameters()``, ``train()`` / ``eval()``, ``state_dict()`` / ``load_state_dict()`` and
``config()`` (the constructor arguments, used by :func:`fastcnn.load`).  Weights use PyTorch's
layouts and default initialisation.
"""
import math

import numpy as np

from . import functional as F
from ._shapes import as_float32, check_padding_arg, pair


class Parameter:
    """A trainable array and its gradient (both float32, same shape)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = np.asarray(data, dtype=np.float32, order="C").copy()
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={self.data.shape})"


def _rng(rng):
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _uniform(rng, bound, shape):
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _is_symbolic(x):
    if isinstance(x, (list, tuple)):
        return bool(x) and all(getattr(t, "_fastcnn_symbolic", False) for t in x)
    return getattr(x, "_fastcnn_symbolic", False)


class Layer:
    """Base class."""

    training = True
    #: Set to False on a network's first layer to skip the input gradient.
    needs_input_grad = True
    _params = ()  # attribute names of Parameters, in state-dict order
    _buffers = ()  # attribute names of non-trainable state arrays

    def __call__(self, x, **kwargs):
        if _is_symbolic(x):  # functional model API: record a node (fastcnn.graph)
            from .graph import call_symbolic

            return call_symbolic(self, x, **kwargs)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected keyword arguments {sorted(kwargs)}")
        return self.forward(x)

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad_out):  # pragma: no cover - abstract
        raise NotImplementedError

    def parameters(self):
        return [getattr(self, n) for n in self._params if getattr(self, n) is not None]

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def config(self):
        return {"type": type(self).__name__, "args": self._args}

    def predict_proba(self, x, batch_size=256):
        """Softmax of the outputs for inputs ``x``, in eval mode, ``batch_size`` samples at a time."""
        from .predict import predict_proba

        return predict_proba(self, x, batch_size)

    def predict(self, x, batch_size=256):
        """Class index (argmax of the outputs) of each input in ``x``, as :meth:`predict_proba`."""
        return self.predict_proba(x, batch_size).argmax(axis=1)

    def children(self):
        """Named sub-layers (containers override this); their state is under ``name.``."""
        return {}

    def modules(self):
        """This layer and every layer inside it, depth first (as torch's ``Module.modules``)."""
        yield self
        for child in self.children().values():
            yield from child.modules()

    def state_dict(self, prefix=""):
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

    def load_state_dict(self, state, prefix=""):
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

    def _expect_cache(self, name):
        if getattr(self, name, None) is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before a training-mode forward")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._args.items())
        return f"{type(self).__name__}({args})"


def _take(state, key, shape, layer):
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

    Shapes: x ``(N, in_channels, H, W)`` float32 -> ``(N, out_channels, OH, OW)`` float32.
    """

    _params = ("weight", "bias")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, rng=None):
        op = "Conv2D"
        in_channels = pair(in_channels, "in_channels", op)[0]
        out_channels = pair(out_channels, "out_channels", op)[0]
        self.kernel_size = pair(kernel_size, "kernel_size", op)
        self.stride = pair(stride, "stride", op)
        self.padding = check_padding_arg(padding, op)
        self._args = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=self.kernel_size,
                          stride=self.stride, padding=self.padding, bias=bool(bias))
        rng = _rng(rng)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Parameter(_uniform(rng, bound, (out_channels, in_channels) + self.kernel_size))
        self.bias = Parameter(_uniform(rng, bound, (out_channels,))) if bias else None
        self._ws = F.Workspace()
        self._x = None

    def forward(self, x, relu=False):
        """``relu=True`` (inference only): ``max(conv, 0)`` fused into the convolution's store."""
        x = as_float32(x, "input", 4, "Conv2D")
        if relu and self.training:
            raise ValueError("Conv2D.forward: relu=True is for inference (eval mode) only")
        self._x = x if self.training else None
        b = None if self.bias is None else self.bias.data
        return F.conv2d(x, self.weight.data, b, self.stride, self.padding, relu=relu, ws=self._ws)

    def backward(self, grad_out):
        self._expect_cache("_x")
        gx, gw, gb = F.conv2d_backward(grad_out, self._x, self.weight.data, self.stride, self.padding,
                                       bias=self.bias is not None, input_grad=self.needs_input_grad,
                                       ws=self._ws)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += gb
        return gx


class _Pool(Layer):
    def __init__(self, kernel_size=2, stride=None, padding=0):
        op = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", op)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", op)
        self.padding = check_padding_arg(padding, op)
        self._args = dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)
        self._shape = None
        self._ws = F.Workspace()


class MaxPool2D(_Pool):
    """2-D max pooling; ``padding="same"`` follows TensorFlow (padded cells never win).

    Shapes: ``(N, C, H, W)`` float32 -> ``(N, C, OH, OW)`` float32.
    """

    def forward(self, x):
        y, idx = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, return_indices=True, ws=self._ws)
        self._idx, self._shape = idx, np.shape(x)
        return y

    def backward(self, grad_out):
        self._expect_cache("_shape")
        grad_out = as_float32(grad_out, "grad_out", 4, "MaxPool2D.backward")
        if grad_out.shape != self._idx.shape:
            raise ValueError(f"MaxPool2D.backward: grad_out must have shape {self._idx.shape}, got {grad_out.shape}")
        return F._max_pool2d_backward(grad_out, self._idx, self._shape)


class AvgPool2D(_Pool):
    """2-D average pooling (padding counted as PyTorch for int padding, not for ``"same"``)."""

    def forward(self, x):
        self._shape = np.shape(x)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, ws=self._ws)

    def backward(self, grad_out):
        self._expect_cache("_shape")
        return F.avg_pool2d_backward(grad_out, self._shape, self.kernel_size, self.stride, self.padding)


class ReLU(Layer):
    """Elementwise ``max(x, 0)``, any shape."""

    def __init__(self):
        self._args = {}
        self._y = None

    def forward(self, x):
        y = F.relu(x)
        self._y = y if self.training else None
        return y

    def backward(self, grad_out):
        self._expect_cache("_y")
        return F.relu_backward(grad_out, self._y)


class Flatten(Layer):
    """``(N, ...)`` -> ``(N, prod(...))`` in C order, as ``torch.flatten(x, 1)``."""

    def __init__(self):
        self._args = {}
        self._shape = None

    def forward(self, x):
        x = as_float32(x, "input", (2, 3, 4, 5), "Flatten")
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out):
        self._expect_cache("_shape")
        grad_out = as_float32(grad_out, "grad_out", 2, "Flatten.backward")
        if grad_out.size != math.prod(self._shape):
            raise ValueError(f"Flatten.backward: grad_out {grad_out.shape} does not match input {self._shape}")
        return grad_out.reshape(self._shape)


class Dense(Layer):
    """Fully connected layer ``x @ W.T + b`` (NumPy BLAS).

    Shapes: ``(N, in_features)`` float32 -> ``(N, out_features)`` float32; weight
    ``(out_features, in_features)``.  Initialisation as PyTorch's ``nn.Linear``.
    """

    _params = ("weight", "bias")

    def __init__(self, in_features, out_features, bias=True, rng=None):
        op = "Dense"
        in_features = pair(in_features, "in_features", op)[0]
        out_features = pair(out_features, "out_features", op)[0]
        self._args = dict(in_features=in_features, out_features=out_features, bias=bool(bias))
        rng = _rng(rng)
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform(rng, bound, (out_features, in_features)))
        self.bias = Parameter(_uniform(rng, bound, (out_features,))) if bias else None
        self._x = None
        self._ws = F.Workspace()

    def forward(self, x):
        y = F.linear(x, self.weight.data, None if self.bias is None else self.bias.data, ws=self._ws)
        self._x = as_float32(x, "input", 2, "Dense") if self.training else None
        return y

    def backward(self, grad_out):
        self._expect_cache("_x")
        gx, gw, gb = F.linear_backward(grad_out, self._x, self.weight.data, bias=self.bias is not None,
                                       input_grad=self.needs_input_grad, ws=self._ws)
        self.weight.grad += gw
        if self.bias is not None:
            self.bias.grad += gb
        return gx


class BatchNorm2D(Layer):
    """Batch normalisation per channel of ``(N, C, H, W)`` input, as ``torch.nn.BatchNorm2d``.

    Training mode normalises with batch statistics and updates ``running_mean`` /
    ``running_var`` (momentum rule and unbiased variance as PyTorch); eval mode uses them.
    ``sync``: None (statistics of this process's batch) or the object set by
    :func:`fastcnn.distributed.sync_batchnorm` (statistics of the global batch over MPI).
    """

    _params = ("weight", "bias")
    _buffers = ("running_mean", "running_var", "num_batches_tracked")
    sync = None

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        num_features = pair(num_features, "num_features", "BatchNorm2D")[0]
        self._args = dict(num_features=num_features, eps=float(eps), momentum=float(momentum))
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.running_mean = np.zeros(num_features, np.float32)
        self.running_var = np.ones(num_features, np.float32)
        self.num_batches_tracked = np.zeros((), np.int64)
        self._cache = None

    def forward(self, x):
        y, cache = F.batch_norm2d(x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                                  training=self.training, momentum=self.momentum, eps=self.eps,
                                  sync=self.sync)
        if self.training:
            self.num_batches_tracked += 1
        self._cache = cache
        return y

    def backward(self, grad_out):
        self._expect_cache("_cache")
        gx, gw, gb = F.batch_norm2d_backward(grad_out, self._cache, self.weight.data)
        self.weight.grad += gw
        self.bias.grad += gb
        return gx


class Residual(Layer):
    """``relu(body(x) + shortcut(x))``: the basic block of the CIFAR-10 ResNet.

    ``body`` and ``shortcut`` are :class:`Sequential` (an empty shortcut is the identity).
    """

    def __init__(self, body, shortcut=None):
        from .model import Sequential

        self.body = body
        self.shortcut = shortcut if shortcut is not None else Sequential()
        self._relu = ReLU()
        self._args = {}

    def children(self):
        return {"body": self.body, "shortcut": self.shortcut}

    def parameters(self):
        return self.body.parameters() + self.shortcut.parameters()

    def train(self, mode=True):
        self.training = bool(mode)
        self.body.train(mode)
        self.shortcut.train(mode)
        self._relu.train(mode)
        return self

    def config(self):
        return {"type": "Residual", "body": self.body.config(), "shortcut": self.shortcut.config()}

    def forward(self, x):
        s = self.shortcut.forward(x)
        y = self.body.forward(x)
        y += s
        return self._relu.forward(y)

    def backward(self, grad_out):
        g = self._relu.backward(grad_out)
        gx = self.body.backward(g)
        gs = self.shortcut.backward(g)
        return gx + gs


class SumPool2D(_Pool):
    """2-D sum pooling: the sum of each window (padded cells count as zeros); the compiled
    average-pooling kernels scaled by the window area (= ``torch``'s ``avg_pool2d`` with
    ``divisor_override=1``)."""

    def forward(self, x):
        self._shape = np.shape(x)
        y = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=True, ws=self._ws)
        y *= np.float32(self.kernel_size[0] * self.kernel_size[1])
        return y

    def backward(self, grad_out):
        self._expect_cache("_shape")
        gx = F.avg_pool2d_backward(grad_out, self._shape, self.kernel_size, self.stride, self.padding,
                                   count_include_pad=True)
        gx *= np.float32(self.kernel_size[0] * self.kernel_size[1])
        return gx


class GlobalAvgPool2D(Layer):
    """Mean over each feature map: ``(N, C, H, W)`` -> ``(N, C, 1, 1)``, as
    ``torch.nn.AdaptiveAvgPool2d(1)`` (the compiled average-pooling kernel, window = H x W)."""

    def __init__(self):
        self._args = {}
        self._shape = None
        self._ws = F.Workspace()

    def forward(self, x):
        x = as_float32(x, "input", 4, "GlobalAvgPool2D")
        self._shape = x.shape
        return F.avg_pool2d(x, x.shape[2:], x.shape[2:], 0, ws=self._ws)

    def backward(self, grad_out):
        self._expect_cache("_shape")
        k = self._shape[2:]
        return F.avg_pool2d_backward(grad_out, self._shape, k, k, 0)


class Sigmoid(Layer):
    """Elementwise ``1 / (1 + exp(-x))`` (no overflow for large ``|x|``), any shape."""

    def __init__(self):
        self._args = {}
        self._y = None

    def forward(self, x):
        x = as_float32(x, "input", None, "Sigmoid")
        e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
        y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)
        self._y = y if self.training else None
        return y

    def backward(self, grad_out):
        self._expect_cache("_y")
        grad_out = _same_shape(grad_out, self._y, "Sigmoid.backward")
        return grad_out * self._y * (1 - self._y)


class Tanh(Layer):
    """Elementwise hyperbolic tangent, any shape."""

    def __init__(self):
        self._args = {}
        self._y = None

    def forward(self, x):
        y = np.tanh(as_float32(x, "input", None, "Tanh"))
        self._y = y if self.training else None
        return y

    def backward(self, grad_out):
        self._expect_cache("_y")
        grad_out = _same_shape(grad_out, self._y, "Tanh.backward")
        return grad_out * (1 - self._y * self._y)


class Dropout(Layer):
    """Inverted dropout as ``torch.nn.Dropout``: in training mode each element is zeroed with
    probability ``p`` and the rest scaled by ``1 / (1 - p)``; identity in eval mode.

    The masks are seeded: a standalone layer draws from ``default_rng([seed, calls])``, counting
    its training forwards; :func:`fastcnn.train.fit` calls :meth:`reseed` before every step
    with ``(run seed, global step, layer index)``, so a resumed run draws the same masks.
    """

    def __init__(self, p=0.5, seed=0):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p, self.seed = float(p), int(seed)
        self._args = dict(p=self.p, seed=self.seed)
        self.calls = 0
        self._rng = None
        self._mask = None

    def reseed(self, entropy):
        """Draw the next masks from ``numpy.random.default_rng(entropy)``."""
        self._rng = np.random.default_rng(entropy)

    def forward(self, x):
        x = as_float32(x, "input", None, "Dropout")
        if not self.training or self.p == 0:
            self._mask = None
            return x.copy()
        rng = self._rng if self._rng is not None else np.random.default_rng([self.seed, self.calls])
        self.calls += 1
        keep = rng.random(x.shape, dtype=np.float32) >= np.float32(self.p)
        self._mask = keep.astype(np.float32) * np.float32(1 / (1 - self.p))
        return x * self._mask

    def backward(self, grad_out):
        grad_out = as_float32(grad_out, "grad_out", None, "Dropout.backward")
        if self._mask is None:
            return grad_out.copy()
        if grad_out.shape != self._mask.shape:
            raise ValueError(f"Dropout.backward: grad_out {grad_out.shape} does not match input {self._mask.shape}")
        return grad_out * self._mask


def _same_shape(grad_out, y, op):
    grad_out = as_float32(grad_out, "grad_out", None, op)
    if grad_out.shape != y.shape:
        raise ValueError(f"{op}: grad_out shape {grad_out.shape} does not match output shape {y.shape}")
    return grad_out


LAYERS = {cls.__name__: cls for cls in (Conv2D, MaxPool2D, AvgPool2D, ReLU, Flatten, Dense, BatchNorm2D,
                                        SumPool2D, GlobalAvgPool2D, Sigmoid, Tanh, Dropout)}
