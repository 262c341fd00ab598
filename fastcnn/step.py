"""A training step bound once per network: :class:`TrainStep` (docs/PERFORMANCE.md, section 5).

The layer API checks every argument, asks the dispatcher for a plan and finds the fusions on
every call; at batch 1 that Python is most of a step.  A :class:`TrainStep` finds the fusions
of a :class:`~fastcnn.layers.Sequential` once and then calls the functional ops' cores
(``fastcnn.functional._conv2d_forward`` ...) with arrays it has already checked: the same
kernels on the same arrays as the layers, so the same bytes.
"""
from __future__ import annotations

import threading
from threading import get_ident
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike

from . import _backend, _dispatch, _threads
from . import functional as F
from ._shapes import is_float32_array
from .layers import (
    BatchNorm2D,
    Conv2D,
    Dense,
    Flatten,
    Layer,
    MaxPool2D,
    Residual,
    Sequential,
    _add_grads,
    _claim_training,
    _fused_tail,
)
from .losses import SoftmaxCrossEntropy

__all__ = ["TrainStep"]

#: Layer types whose fusions a bound step would not reproduce (``Sequential`` fuses a batch
#: norm with its convolution and consecutive residual blocks' sums): such models run unbound.
_UNBOUND_TYPES = (BatchNorm2D, Residual)


class _Op:
    """A layer run through its own ``forward`` / ``backward`` (every type without a bound form)."""

    __slots__ = ("layer", "check_input", "check_grad")

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        # whether the input (the output gradient) may come from something other than a bound
        # op, and so is checked on every step (set by TrainStep._bind)
        self.check_input = self.check_grad = True

    def reset(self) -> None:
        """Forget the plan (the backend, threads or settings changed)."""

    def forward(self, k: Any, x: Any) -> Any:
        return self.layer.forward(x)

    def backward(self, k: Any, g: Any) -> Any:
        return self.layer.backward(g)


class _ParamOp(_Op):
    """A layer with ``weight`` and ``bias``, planned once per input shape and parameter arrays."""

    __slots__ = ("_xshape", "_w", "_b", "_args", "_gw_ok")
    layer: Conv2D | Dense

    def __init__(self, layer: Conv2D | Dense) -> None:
        super().__init__(layer)
        self._xshape: Any = None
        self._w: Any = None
        self._b: Any = None
        self._args: tuple[Any, ...] = ()  # (the layer's arguments the plan was made for)
        self._gw_ok: Any = None  # (weight gradient, weights) seen to share no memory

    def reset(self) -> None:
        self._xshape = None

    def _plan(self, k: Any, x: Any, w: Any, b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Check the arrays as the functional op does (and plan for their shapes); returns them checked."""
        raise NotImplementedError

    def _arguments(self) -> tuple[Any, ...]:
        """The layer's public attributes a plan depends on besides the arrays."""
        return (self.layer.needs_input_grad,)

    def _arrays(self, k: Any, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``x`` and the parameters' arrays, checked (and planned for) when they changed."""
        layer = self.layer
        w = layer.weight.data
        b = None if layer.bias is None else layer.bias.data
        args = self._arguments()
        if ((self.check_input and not is_float32_array(x)) or x.shape != self._xshape or w is not self._w
                or b is not self._b or args != self._args):
            self._xshape = None
            x2, w2, b2 = self._plan(k, x, w, b)
            if w2 is w and b2 is b:  # (else converted copies: checked again on every step)
                self._xshape, self._w, self._b, self._args = x2.shape, w, b, args
            return x2, w2, b2
        return x, w, b

    def _no_overlap(self, gw_out: np.ndarray, w: np.ndarray, others: tuple[np.ndarray, ...], remember: bool) -> bool:
        """Whether the weight gradient ``gw_out`` shares no memory with ``w`` and ``others``;
        remembered for these gradient and weight arrays if ``remember`` (``others`` are the
        bound ops' new arrays, which no array made before can share memory with)."""
        seen = self._gw_ok
        if seen is not None and seen[0] is gw_out and seen[1] is w:
            return True
        if F._may_overlap(gw_out, (w, *others)):
            return False
        if remember:
            self._gw_ok = (gw_out, w)
        return True


class _ConvOp(_ParamOp):
    """A ``Conv2D`` with the ReLU and 2x2 max pooling that ``Sequential`` fuses into it.

    Planned once per input shape, weight arrays, backend, thread count and settings
    (:meth:`_plan`): the strategies of ``functional.conv2d`` and ``conv2d_backward`` (the same
    ``conv_plan`` calls), then the direct kernels or the one-image GEMM called straight; other
    strategies through the functional ops' cores.
    """

    __slots__ = ("relu", "pool", "_yshape", "_g", "_fwd", "_bwd", "_zeros", "_cols", "_full", "_saved")
    layer: Conv2D

    def __init__(self, layer: Conv2D, relu: bool, pool: bool) -> None:
        super().__init__(layer)
        self.relu, self.pool = relu, pool
        self._saved: tuple[Any, ...] = ()

    def _arguments(self) -> tuple[Any, ...]:
        layer = self.layer
        return (layer.stride, layer.padding, layer.needs_input_grad)

    def _plan(self, k: Any, x: Any, w: Any, b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Check ``x`` and the weights as ``functional.conv2d`` does and choose the forward and
        backward forms for this shape; returns the checked arrays."""
        layer = self.layer
        x, w2, b2, g = F._conv_check(x, w, b, layer.stride, layer.padding)
        n, c = x.shape[:2]
        oc = w2.shape[0]
        strided, pad = g.sh * g.sw > 1, max(g.pt, g.pl)
        pooled = self.pool and g.oh >= 2 and g.ow >= 2
        fwd = _dispatch.conv_plan(k, n, c, oc, g.kh, g.kw, g.oh, g.ow, 4, strided=strided, pad=pad, pooled=pooled)
        bwd = _dispatch.conv_plan(k, n, c, oc, g.kh, g.kw, g.oh, g.ow, 4, True, layer.needs_input_grad, strided, pad)
        # (the op's own zeros bias, writeable: the Numba kernels copy a read-only one)
        self._g, self._zeros = g, np.zeros(oc, np.float32)
        self._fwd = self._forward_direct if fwd == "direct" and pooled == self.pool else self._forward_core
        if bwd == "single":
            self._cols = np.empty((c * g.kh * g.kw, g.oh * g.ow), np.float32)
            self._full = np.empty((n, oc, g.oh, g.ow), np.float32) if self.pool else None
            self._bwd = self._backward_single
        elif bwd == "direct" and pooled:
            self._bwd = self._backward_direct_pooled
        else:
            self._bwd = self._backward_core
        self._yshape = (n, oc, g.oh // 2, g.ow // 2) if self.pool else (n, oc, g.oh, g.ow)
        return x, w2, b2

    def forward(self, k: Any, x: Any) -> Any:
        x, w, b = self._arrays(k, x)
        y, idx = self._fwd(k, x, w, b)
        self._saved = (x, w, y if self.relu else None, idx)
        return y

    def _forward_core(self, k: Any, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> Any:
        if self.pool:
            y, idx = F._conv2d_forward(k, x, w, b, self._g, self.layer._ws, self.relu, True, True)
            return y, F._own_indices(idx)  # (writeable, as the other forms': one compilation of each kernel)
        return F._conv2d_forward(k, x, w, b, self._g, self.layer._ws, self.relu), None

    def _forward_direct(self, k: Any, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> Any:
        if b is None:
            b = self._zeros
        if self.pool:
            return F._pooled_forward(k, x, w, b, self._g, self.relu, True)
        return F._direct_forward(k, x, w, b, self._g, self.relu), None

    def backward(self, k: Any, g_out: Any) -> Any:
        layer = self.layer
        x, w, y, idx = self._saved
        self._saved = ()
        if layer.weight.data is not w or (self.check_grad and not (
                is_float32_array(g_out) and g_out.shape == self._yshape)):
            # (weights replaced since the forward, or a gradient from an unbound layer: checked)
            gx, gw, gb = F.conv2d_backward(g_out, x, layer.weight.data, layer.stride, layer.padding,
                                           bias=layer.bias is not None, input_grad=layer.needs_input_grad,
                                           pool_indices=idx, relu_output=y)
        else:
            gx, gw, gb = self._bwd(k, g_out, x, w, y, idx)
        _add_grads(layer.weight, layer.bias, gw, gb)
        return gx

    def _backward_core(self, k: Any, g_out: np.ndarray, x: np.ndarray, w: np.ndarray, y: Any, idx: Any) -> Any:
        layer = self.layer
        return F._conv2d_backward_fused(k, g_out, x, w, self._g, layer.bias is not None, layer.needs_input_grad,
                                        idx, y, layer._ws)

    def _backward_single(self, k: Any, g_out: np.ndarray, x: np.ndarray, w: np.ndarray, y: Any, idx: Any) -> Any:
        g, layer = self._g, self.layer
        oc = w.shape[0]
        if idx is not None:  # (into the op's own buffer: read only below)
            g_out = F._unpooled(k, g_out, idx, y, (1, oc, g.oh, g.ow), self._full)
        elif y is not None:
            g_out = F.relu_backward(g_out, y)
        gw_out = layer.weight.overwritable_grad()
        # (the input gradient reads the weights after the weight gradient is written; x and the
        # output gradient are read before it)
        if gw_out is not None and not self._no_overlap(gw_out, w, (), True):
            gw_out = None
        gx, gw, gb = F._conv2d_backward_single(k, g_out.reshape(oc, g.oh * g.ow), x, w, g, layer.bias is not None,
                                               layer.needs_input_grad, self._cols,
                                               None if gw_out is None else gw_out.reshape(oc, -1))
        return gx, (gw if gw_out is None else gw_out), gb

    def _backward_direct_pooled(self, k: Any, g_out: np.ndarray, x: np.ndarray, w: np.ndarray, y: Any,
                                idx: Any) -> Any:
        layer = self.layer
        bias, input_grad = layer.bias is not None, layer.needs_input_grad
        gx, gw, gb = F._pooled_backward(k, g_out, idx, y, x, w, self._g, bias, input_grad)
        return (gx if input_grad else None), gw, (gb if bias else None)


class _DenseOp(_ParamOp):
    """A ``Dense`` layer, checked once per input shape and parameter arrays."""

    __slots__ = ("_x",)
    layer: Dense

    def __init__(self, layer: Dense) -> None:
        super().__init__(layer)
        self._x: Any = None

    def _plan(self, k: Any, x: Any, w: Any, b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        return F._linear_check(x, w, b, "linear")

    def forward(self, k: Any, x: Any) -> Any:
        x, w, b = self._arrays(k, x)
        self._x = x
        return F._linear(k, x, w, b)

    def backward(self, k: Any, g_out: Any) -> Any:
        layer = self.layer
        x, self._x = self._x, None
        w = layer.weight.data
        gw_out = layer.weight.overwritable_grad()
        trusted = not self.check_grad or (is_float32_array(g_out) and g_out.shape == (x.shape[0], w.shape[0]))
        if w is self._w and trusted and (gw_out is None or self._no_overlap(
                gw_out, w, (x, g_out), not (self.check_input or self.check_grad))):
            gx, gw, gb = F._linear_backward(k, g_out, x, w, layer.bias is not None, layer.needs_input_grad,
                                            gw_out, layer._ws)
        else:  # (checked, with the error it names)
            gx, gw, gb = F.linear_backward(g_out, x, w, bias=layer.bias is not None,
                                           input_grad=layer.needs_input_grad, weight_grad_out=gw_out, ws=layer._ws)
        _add_grads(layer.weight, layer.bias, gw, gb)
        return gx


class _FlattenOp(_Op):
    """A ``Flatten`` layer: a view each way."""

    __slots__ = ("_shapes",)

    def __init__(self, layer: Flatten) -> None:
        super().__init__(layer)
        self._shapes: tuple[Any, ...] = ()

    def forward(self, k: Any, x: Any) -> Any:
        y = F.flatten(x) if self.check_input else x.reshape(x.shape[0], -1)
        self._shapes = (x.shape, y.shape)
        return y

    def backward(self, k: Any, g_out: Any) -> Any:
        shape, flat = self._shapes
        if not self.check_grad or (is_float32_array(g_out) and g_out.shape == flat):
            return g_out.reshape(shape)
        return F.flatten_backward(g_out, shape)


#: The bound forms of layer types; any other layer is an :class:`_Op`.
_BOUND = (_ConvOp, _DenseOp, _FlattenOp)


class TrainStep:
    """One training step of ``model`` with ``loss_fn`` and ``optimizer``: ``step(x, y) -> loss``.

    The same as ::

        optimizer.zero_grad()
        loss = loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        optimizer.step()

    and bit for bit the same weights, gradients and loss, with less Python per step: for a
    :class:`~fastcnn.layers.Sequential` in training mode (no ``BatchNorm2D`` or ``Residual``
    among its layers, none wrapped by a hook) the step finds the layers' fusions once, plans
    each ``Conv2D`` (with its fused ReLU and pooling) and ``Dense`` once per input shape, and
    then calls the kernels or the functional ops' cores with arrays it has checked; ``Flatten``
    is a view; other layers run through their own ``forward`` / ``backward``.  Anything else
    runs the lines above.  The binding is redone when the layers, their modes or hooks, a max
    pooling's arguments, the loss's type or ``fastcnn.config(fuse=...)`` change, an op's plan
    when its input shape, a parameter array, its layer's ``stride``, ``padding`` or
    ``needs_input_grad``, the backend, the thread count or a setting changes.

    :meth:`forward` and :meth:`backward` split the step for loops that look at the loss or the
    gradients before the update (as :func:`fastcnn.train.fit` does).  One step at a time:
    a call while another thread is inside the same step raises ``RuntimeError``.

    Attributes: ``model``, ``loss_fn``, ``optimizer``; ``logits`` (the last forward's output);
    ``bound`` (whether the last forward ran bound).
    """

    def __init__(self, model: Layer, loss_fn: Any, optimizer: Any) -> None:
        if not isinstance(model, Layer):
            raise TypeError(f"TrainStep: model must be a fastcnn layer, got {type(model).__name__}")
        if not (callable(getattr(loss_fn, "forward", None)) and callable(getattr(loss_fn, "backward", None))):
            raise TypeError(f"TrainStep: loss_fn needs forward and backward methods, got {type(loss_fn).__name__}")
        if not (callable(getattr(optimizer, "step", None)) and callable(getattr(optimizer, "zero_grad", None))):
            raise TypeError(f"TrainStep: optimizer needs step and zero_grad methods, got {type(optimizer).__name__}")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.logits: Any = None
        self.bound = False
        self._layers: list[Layer] = []
        self._structure: tuple[Any, ...] = ()
        self._stamp: tuple[Any, ...] = ()
        self._ops: list[_Op] = []
        self._run: list[_Op] | None = None  # the bound ops of the forward whose backward is next
        self._pending = False  # a forward ran and its backward has not
        self._busy = threading.Lock()

    def __call__(self, x: ArrayLike, y: ArrayLike) -> float:
        self._enter()
        try:
            self.optimizer.zero_grad()
            loss = self._forward(x, y)
            self._backward()
            self.optimizer.step()
        finally:
            self._busy.release()
        return loss

    def forward(self, x: ArrayLike, y: ArrayLike) -> float:
        """The forward pass and the loss (``logits`` keeps the network's output)."""
        self._enter()
        try:
            return self._forward(x, y)
        finally:
            self._busy.release()

    def backward(self) -> None:
        """The gradients of the last :meth:`forward`'s loss, accumulated into the parameters."""
        self._enter()
        try:
            self._backward()
        finally:
            self._busy.release()

    def _enter(self) -> None:
        """Take the step's lock (the caller releases it), or refuse a second thread."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("TrainStep: called while another thread is inside this step")

    def _bind(self) -> list[_Op] | None:
        """The bound ops of the model as it is now, or None (run unbound); rebuilt on a change."""
        model = self.model
        if type(model) is not Sequential or not model.training or "forward" in model.__dict__:
            return None
        layers = model.layers
        pools = []  # (what decides whether a pooling fuses)
        for layer in layers:
            d = layer.__dict__
            if not layer.training or "forward" in d or "backward" in d:
                return None
            if type(layer) is MaxPool2D:
                pools.append((layer.kernel_size, layer.stride, layer.padding))
        structure = (_dispatch.fuse(), type(self.loss_fn), pools)
        if layers == self._layers and structure == self._structure:
            return self._ops
        if any(isinstance(layer, _UNBOUND_TYPES) for layer in layers):
            return None
        ops: list[_Op] = []
        i, n = 0, len(layers)
        while i < n:
            layer = layers[i]
            i += 1
            if type(layer) is Conv2D:
                relu, pool, i = _fused_tail(layers, i, True) if structure[0] else (None, None, i)
                ops.append(_ConvOp(layer, relu is not None, pool is not None))
            elif type(layer) is Dense:
                ops.append(_DenseOp(layer))
            elif type(layer) is Flatten:
                ops.append(_FlattenOp(layer))
            else:
                ops.append(_Op(layer))
        for j, op in enumerate(ops):  # (a bound op's arrays need no checks in the next one)
            op.check_input = j == 0 or not isinstance(ops[j - 1], _BOUND)
            op.check_grad = (j + 1 < len(ops) and not isinstance(ops[j + 1], _BOUND)) or (
                j + 1 == len(ops) and structure[1] is not SoftmaxCrossEntropy)
        self._layers, self._structure, self._ops, self._stamp = list(layers), structure, ops, ()
        return ops

    def _forward(self, x: ArrayLike, y: ArrayLike) -> float:
        ops = self._bind()
        self.bound = ops is not None
        loss_fn = self.loss_fn
        self._run, self._pending = None, False
        if ops is None:
            self.logits = self.model.forward(x)
            loss = loss_fn.forward(self.logits, y)
            self._pending = True
            return loss
        model = cast(Sequential, self.model)
        me = get_ident()
        if model._step_thread != me:
            _claim_training(model, me)  # (refuses a model inside another thread's step)
        model._in_step = True
        k = _backend.ops()
        stamp = (k, _threads.get_num_threads(), _dispatch.changes())
        if stamp != self._stamp:
            for op in ops:
                op.reset()
            self._stamp = stamp
        out: Any = x
        for op in ops:
            out = op.forward(k, out)
        self.logits = out
        loss = loss_fn.forward(out, y)
        self._run, self._pending = ops, True
        return loss

    def _backward(self) -> None:
        if not self._pending:
            raise RuntimeError("TrainStep.backward called before forward (or twice after one)")
        loss_fn, ops = self.loss_fn, self._run
        self._run, self._pending = None, False
        if ops is None:
            self.model.backward(loss_fn.backward())
            return
        try:
            g = loss_fn.backward()
            k = _backend.ops()
            for j in range(len(ops) - 1, -1, -1):
                g = ops[j].backward(k, g)
                if g is None:
                    break
        finally:
            cast(Sequential, self.model)._in_step = False
