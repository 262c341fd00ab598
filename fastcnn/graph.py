"""Graph models: a functional API for any directed acyclic graph of layers.

::

    x = fastcnn.graph.Input((3, 32, 32), name="image")
    a = Conv2D(3, 8, 1)(x, name="branch1")
    b = Conv2D(3, 8, 3, padding=1)(x, name="branch3")
    y = Concatenate()([a, b])            # merge layers take a list
    model = fastcnn.graph.Model(x, y)

Calling a layer on symbolic tensors records a node; :class:`Model` orders the nodes
topologically, runs ``forward`` in that order and ``backward`` in reverse, summing the
gradients of a tensor read by several nodes.  A node's name (``name=`` at the call, else
``<type>_<k>`` numbered per layer type in topological order) is the prefix of its
parameters in ``state_dict()``, so the names are those of a torch module holding the same
layers as attributes.  ``Sequential`` stays the plain chain; both are layers and nest in
each other (docs/GRAPH.md).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from ._shapes import as_float32, pair
from .layers import Layer, Parameter, Residual, Sequential, from_config, register

__all__ = ["Input", "Model", "Add", "Multiply", "Concatenate", "SymbolicTensor"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SymbolicTensor:
    """The output of an :class:`Input` or of a layer called on symbolic tensors.

    ``shape`` excludes the batch dimension.  A layer called on symbolic tensors records a
    node through :meth:`_fastcnn_record` instead of computing.
    """

    def __init__(self, shape: Sequence[int], node: _Node | None = None, name: str | None = None) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.node = node
        self.name = name

    def _fastcnn_record(self, layer: Layer, x: SymbolicTensor | Sequence[SymbolicTensor],
                        name: str | None = None) -> SymbolicTensor:
        """What :meth:`fastcnn.layers.Layer.__call__` does on symbolic input: :func:`call_symbolic`."""
        return call_symbolic(layer, x, name)

    def __repr__(self) -> str:
        src = "input" if self.node is None else type(self.node.layer).__name__
        return f"SymbolicTensor(shape={self.shape}, from={src}, name={self.name!r})"


class _Node:
    __slots__ = ("layer", "inputs", "output", "name", "multi")

    def __init__(self, layer: Layer, inputs: list[SymbolicTensor], multi: bool, name: str | None) -> None:
        self.layer, self.inputs, self.multi, self.name = layer, inputs, multi, name
        self.output: SymbolicTensor | None = None


def Input(shape: int | Sequence[int], name: str | None = None) -> SymbolicTensor:
    """A symbolic model input of per-sample ``shape`` (e.g. ``(C, H, W)``)."""
    dims = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    for d in dims:
        pair(d, "Input shape", "Input")
    if name is not None:
        _check_name(name)
    return SymbolicTensor(dims, None, name)


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"graph: name must be a Python identifier (no dots), got {name!r}")


def call_symbolic(layer: Layer, x: SymbolicTensor | Sequence[SymbolicTensor],
                  name: str | None = None) -> SymbolicTensor:
    """Record ``layer`` applied to symbolic tensor(s) ``x``; infer the output shape."""
    if name is not None:
        _check_name(name)
    multi = isinstance(x, (list, tuple))
    inputs: list[SymbolicTensor] = list(x) if isinstance(x, (list, tuple)) else [cast(SymbolicTensor, x)]
    node = _Node(layer, inputs, multi, name)
    # Output shape: run the layer once in eval mode on zeros of batch 2 (also validates the
    # wiring now, with the layer's own error message, instead of at the first forward).
    dummies = [np.zeros((2,) + t.shape, np.float32) for t in inputs]
    was = layer.training
    layer.train(False)
    try:
        y = layer.forward(dummies if multi else dummies[0])
    except (ValueError, TypeError) as exc:
        shapes = ", ".join(str(t.shape) for t in inputs)
        raise type(exc)(f"graph: {type(layer).__name__} cannot take input of shape {shapes} "
                        f"(per sample): {exc}") from exc
    finally:
        layer.train(was)
    if isinstance(y, (list, tuple)):
        raise TypeError(f"graph: {type(layer).__name__} returns several outputs; only one per node is supported")
    node.output = SymbolicTensor(np.shape(y)[1:], node, name)
    return node.output


def _as_list(v: Any, what: str) -> list[SymbolicTensor]:
    items = list(v) if isinstance(v, (list, tuple)) else [v]
    if not items or not all(isinstance(t, SymbolicTensor) for t in items):
        raise TypeError(f"Model: {what} must be symbolic tensors (from Input or a layer call)")
    return items


class Model(Layer):
    """A layer made of a directed acyclic graph of layers, with one or more inputs and outputs.

    ``forward(x)`` takes an array (one input) or a list of arrays (one per input, in the
    order given) and returns an array or a list (one per output).  ``backward`` takes the
    gradient(s) of the output(s) (``None`` for an output that receives none) and returns
    the gradient(s) of the input(s).  Each layer object may appear in one node only.
    """

    def __init__(self, inputs: SymbolicTensor | Sequence[SymbolicTensor],
                 outputs: SymbolicTensor | Sequence[SymbolicTensor]) -> None:
        super().__init__()
        self.single_input = not isinstance(inputs, (list, tuple))
        self.single_output = not isinstance(outputs, (list, tuple))
        self.inputs = _as_list(inputs, "inputs")
        self.outputs = _as_list(outputs, "outputs")
        for t in self.inputs:
            if t.node is not None:
                raise ValueError("Model: inputs must come from fastcnn.graph.Input")
        # Topological order: depth-first post-order from the outputs (deterministic).
        order: list[_Node] = []
        state: dict[int, int] = {}

        def visit(t: SymbolicTensor) -> None:
            node = t.node
            if node is None:
                if not any(t is i for i in self.inputs):
                    raise ValueError(f"Model: the graph reads an Input {t.name or ''} that is not among "
                                     "the model's inputs")
                return
            s = state.get(id(node))
            if s == 1:
                return
            if s == 0:  # cannot happen with the call API; guards hand-made graphs
                raise ValueError("Model: the graph has a cycle")
            state[id(node)] = 0
            for u in node.inputs:
                visit(u)
            state[id(node)] = 1
            order.append(node)

        for t in self.outputs:
            visit(t)
        layers_seen: dict[int, _Node] = {}
        for node in order:
            if id(node.layer) in layers_seen:
                raise ValueError(f"Model: layer {node.layer!r} is used by more than one node; each node needs "
                                 "its own layer object (layers keep one forward pass for backward)")
            layers_seen[id(node.layer)] = node
        self.nodes = order
        # Names: given ones first, then <type>_<k> per type in topological order.
        names: set[str] = set()
        counts: dict[str, int] = {}
        self.input_names = [t.name or ("input" if len(self.inputs) == 1 else f"input_{i}")
                            for i, t in enumerate(self.inputs)]
        for n in self.input_names:
            self._claim(names, n)
        for node in order:
            if node.name is not None:
                self._claim(names, node.name)
        self.node_names: list[str] = []
        for node in order:
            name = node.name
            if name is None:
                base = type(node.layer).__name__.lower()
                while True:
                    k = counts.get(base, 0)
                    counts[base] = k + 1
                    name = f"{base}_{k}"
                    if name not in names:
                        break
                names.add(name)
            self.node_names.append(name)
        key = {id(t): n for t, n in zip(self.inputs, self.input_names)}  # id(tensor) -> name
        for node, n in zip(order, self.node_names):
            key[id(node.output)] = n
        #: Per node in topological order: (names of the tensors it reads, whether it takes a list).
        self.wiring = [([key[id(u)] for u in node.inputs], node.multi) for node in order]
        #: Names of the output tensors (input or node names), in the order of ``outputs``.
        self.output_names = [key[id(t)] for t in self.outputs]
        self._need: dict[str, bool] | None = None  # gradient flow, set by needs_input_grad = False

    @staticmethod
    def _claim(names: set[str], name: str) -> None:
        if name in names:
            raise ValueError(f"Model: name {name!r} is used twice")
        names.add(name)

    # -- structure --------------------------------------------------------------------
    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for t in self.inputs]

    @property
    def output_shapes(self) -> list[tuple[int, ...]]:
        return [t.shape for t in self.outputs]

    def named_layers(self) -> list[tuple[str, Layer]]:
        """``[(name, layer), ...]`` in topological order."""
        return list(zip(self.node_names, (n.layer for n in self.nodes)))

    def __getitem__(self, name: str) -> Layer:
        for n, layer in self.named_layers():
            if n == name:
                return layer
        raise KeyError(f"Model has no node {name!r}")

    def parameters(self) -> list[Parameter]:
        return [p for node in self.nodes for p in node.layer.parameters()]

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        """``[(dotted name, Parameter), ...]``, the names of ``state_dict`` (and of torch)."""
        return [item for name, layer in self.named_layers() for item in _named_parameters(layer, f"{prefix}{name}.")]

    def train(self, mode: bool = True) -> Model:
        self.training = bool(mode)
        for node in self.nodes:
            node.layer.train(mode)
        return self

    @property
    def needs_input_grad(self) -> bool:
        return getattr(self, "_needs_input_grad", True)

    @needs_input_grad.setter
    def needs_input_grad(self, value: bool) -> None:
        """False: no gradient for the inputs; nodes with nothing trainable upstream skip backward."""
        self._needs_input_grad = bool(value)
        self._set_grad_flow()

    def _set_grad_flow(self) -> None:
        """Which tensors need a gradient: the inputs if ``needs_input_grad``, and every
        output of a node that has parameters or reads a tensor that needs one."""
        need = {n: self.needs_input_grad for n in self.input_names}
        for node, name, (srcs, _) in zip(self.nodes, self.node_names, self.wiring):
            upstream = any(need[s] for s in srcs)
            if not isinstance(node.layer, _Merge):
                node.layer.needs_input_grad = upstream
            need[name] = upstream or bool(node.layer.parameters())
        self._need = need

    # -- forward / backward ---------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        xs = [x] if self.single_input else list(x) if isinstance(x, (list, tuple)) else None
        if xs is None or len(xs) != len(self.inputs):
            raise ValueError(f"Model.forward: expected {len(self.inputs)} input array(s) in a list, got "
                             f"{type(x).__name__}")
        values = {}
        for name, t, v in zip(self.input_names, self.inputs, xs):
            v = as_float32(v, name, len(t.shape) + 1, "Model.forward")
            if v.shape[1:] != t.shape:
                raise ValueError(f"Model.forward: input {name!r} must have shape (N, {', '.join(map(str, t.shape))}),"
                                 f" got {v.shape}")
            values[name] = v
        for node, name, (srcs, multi) in zip(self.nodes, self.node_names, self.wiring):
            args = [values[s] for s in srcs]
            values[name] = node.layer.forward(args if multi else args[0])
        outs = [values[k] for k in self.output_names]
        return outs[0] if self.single_output else outs

    def backward(self, grad_out: Any) -> Any:
        gs = [grad_out] if self.single_output else list(grad_out)
        if len(gs) != len(self.outputs):
            raise ValueError(f"Model.backward: expected {len(self.outputs)} output gradient(s), got {len(gs)}")
        grads: dict[str, Any] = {}
        need = self._need

        def add(key: str, g: Any) -> None:
            if g is None or (need is not None and not need[key]):
                return
            grads[key] = g if key not in grads else grads[key] + g  # never in place: g may be shared

        for key, g in zip(self.output_names, gs):
            add(key, g)
        for node, name, (srcs, multi) in zip(reversed(self.nodes), reversed(self.node_names),
                                              reversed(self.wiring)):
            g = grads.pop(name, None)
            if g is None:
                continue  # this node does not reach any output gradient
            gin = node.layer.backward(g)
            if multi:
                for s, gi in zip(srcs, gin):
                    add(s, gi)
            else:
                add(srcs[0], gin)
        res = [grads.get(n) for n in self.input_names]
        return res[0] if self.single_input else res

    # -- state and files ----------------------------------------------------------------------
    def children(self) -> dict[str, Layer]:
        return dict(self.named_layers())

    def config(self) -> dict[str, Any]:
        return {
            "type": "Model",
            "inputs": [{"name": n, "shape": list(t.shape)} for n, t in zip(self.input_names, self.inputs)],
            "nodes": [{"name": name, "layer": node.layer.config(), "inputs": srcs, "list": multi}
                      for node, name, (srcs, multi) in zip(self.nodes, self.node_names, self.wiring)],
            "outputs": self.output_names,
            "single_input": self.single_input,
            "single_output": self.single_output,
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Model:
        tensors = {}
        for spec in cfg["inputs"]:
            tensors[spec["name"]] = Input(spec["shape"], name=spec["name"])
        for spec in cfg["nodes"]:
            missing = [s for s in spec["inputs"] if s not in tensors]
            if missing:
                raise ValueError(f"Model config: node {spec['name']!r} reads unknown tensors {missing}")
            args = [tensors[s] for s in spec["inputs"]]
            tensors[spec["name"]] = from_config(spec["layer"])(args if spec["list"] else args[0], name=spec["name"])
        ins = [tensors[s["name"]] for s in cfg["inputs"]]
        outs = [tensors[k] for k in cfg["outputs"]]
        return cls(ins[0] if cfg.get("single_input", True) and len(ins) == 1 else ins,
                   outs[0] if cfg.get("single_output", True) and len(outs) == 1 else outs)

    def __repr__(self) -> str:
        lines = []
        for name, node, (srcs, _) in zip(self.node_names, self.nodes, self.wiring):
            lines.append(f"  {name}: {node.layer!r}".replace("\n", "\n  ") + f" <- {', '.join(srcs)}")
        ins = ", ".join(f"{n}{t.shape}" for n, t in zip(self.input_names, self.inputs))
        return f"Model(inputs: {ins}\n" + "\n".join(lines) + f"\n  outputs: {', '.join(self.output_names)}\n)"


def _named_parameters(layer: Layer, prefix: str) -> list[tuple[str, Parameter]]:
    if isinstance(layer, Model):
        return layer.named_parameters(prefix)
    if isinstance(layer, Sequential):
        return [it for i, sub in enumerate(layer) for it in _named_parameters(sub, f"{prefix}{i}.")]
    if isinstance(layer, Residual):
        return _named_parameters(layer.body, prefix + "body.") + _named_parameters(layer.shortcut, prefix + "shortcut.")
    return [(prefix + n, getattr(layer, n)) for n in layer._params if getattr(layer, n) is not None]


# -- merge layers ----------------------------------------------------------------------------
class _Merge(Layer):
    """Base of layers taking a list of arrays; each checks its own inputs (no functional op)."""

    min_inputs = 2

    def _check(self, xs: Any) -> list[np.ndarray]:
        op = type(self).__name__
        if not isinstance(xs, (list, tuple)) or len(xs) < self.min_inputs:
            raise TypeError(f"{op}: expects a list of at least {self.min_inputs} arrays")
        return [as_float32(x, f"input {i}", None, op) for i, x in enumerate(xs)]

    def _same_shapes(self, xs: list[np.ndarray]) -> None:
        shapes = {x.shape for x in xs}
        if len(shapes) != 1:
            raise ValueError(f"{type(self).__name__}: inputs must have equal shapes, got {[x.shape for x in xs]}")


class Add(_Merge):
    """Elementwise sum of several equally shaped arrays."""

    def forward(self, xs: Sequence[Any]) -> np.ndarray:
        arrays = self._check(xs)
        self._same_shapes(arrays)
        self._keep(len(arrays))
        y = arrays[0] + arrays[1]
        for x in arrays[2:]:
            y += x
        return y

    def backward(self, grad_out: Any) -> list[np.ndarray]:
        (n,) = self._kept()
        g = as_float32(grad_out, "grad_out", None, "Add.backward")
        return [g] + [g.copy() for _ in range(n - 1)]


class Multiply(_Merge):
    """Elementwise product of several equally shaped arrays."""

    def forward(self, xs: Sequence[Any]) -> np.ndarray:
        arrays = self._check(xs)
        self._same_shapes(arrays)
        self._keep(arrays)
        y = arrays[0] * arrays[1]
        for x in arrays[2:]:
            y *= x
        return y

    def backward(self, grad_out: Any) -> list[np.ndarray]:
        (arrays,) = self._kept()
        g = as_float32(grad_out, "grad_out", arrays[0].ndim, "Multiply.backward")
        out = []
        for i in range(len(arrays)):
            gi = g.copy()
            for j, x in enumerate(arrays):
                if j != i:
                    gi *= x
            out.append(gi)
        return out


class Concatenate(_Merge):
    """Concatenate along ``axis`` (default 1: channels of ``NCHW``, features of ``(N, F)``)."""

    _config_args = ("axis",)

    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        if not isinstance(axis, int) or axis < 1:
            raise ValueError(f"Concatenate: axis must be an int >= 1 (axis 0 is the batch), got {axis!r}")
        self.axis = axis

    def forward(self, xs: Sequence[Any]) -> np.ndarray:
        arrays = self._check(xs)
        a = self.axis
        ref = arrays[0]
        for x in arrays[1:]:
            if x.ndim != ref.ndim or a >= x.ndim or x.shape[:a] + x.shape[a + 1:] != ref.shape[:a] + ref.shape[a + 1:]:
                raise ValueError(f"Concatenate(axis={a}): shapes {[x.shape for x in arrays]} differ off the axis")
        self._keep([x.shape[a] for x in arrays])
        return np.concatenate(arrays, axis=a)

    def backward(self, grad_out: Any) -> list[np.ndarray]:
        (sizes,) = self._kept()
        g = as_float32(grad_out, "grad_out", None, "Concatenate.backward")
        if g.shape[self.axis] != sum(sizes):
            raise ValueError(f"Concatenate.backward: grad_out {g.shape} does not match the inputs")
        cuts = np.cumsum(sizes)[:-1]
        return [np.ascontiguousarray(p) for p in np.split(g, cuts, axis=self.axis)]


register(Model, Add, Multiply, Concatenate)
