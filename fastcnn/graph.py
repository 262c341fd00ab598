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
import re

import numpy as np

from ._shapes import as_float32, pair
from .layers import Layer

__all__ = ["Input", "Model", "Add", "Multiply", "Concatenate", "SymbolicTensor"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SymbolicTensor:
    """The output of an :class:`Input` or of a layer called on symbolic tensors.

    ``shape`` excludes the batch dimension.
    """

    _fastcnn_symbolic = True

    def __init__(self, shape, node=None, name=None):
        self.shape = tuple(int(d) for d in shape)
        self.node = node
        self.name = name

    def __repr__(self):
        src = "input" if self.node is None else type(self.node.layer).__name__
        return f"SymbolicTensor(shape={self.shape}, from={src}, name={self.name!r})"


class _Node:
    __slots__ = ("layer", "inputs", "output", "name", "multi")

    def __init__(self, layer, inputs, multi, name):
        self.layer, self.inputs, self.multi, self.name = layer, inputs, multi, name
        self.output = None


def Input(shape, name=None):
    """A symbolic model input of per-sample ``shape`` (e.g. ``(C, H, W)``)."""
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    for d in shape:
        pair(d, "Input shape", "Input")
    if name is not None:
        _check_name(name)
    return SymbolicTensor(shape, None, name)


def _check_name(name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"graph: name must be a Python identifier (no dots), got {name!r}")


def call_symbolic(layer, x, name=None):
    """Record ``layer`` applied to symbolic tensor(s) ``x``; infer the output shape."""
    if name is not None:
        _check_name(name)
    multi = isinstance(x, (list, tuple))
    inputs = list(x) if multi else [x]
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


def _as_list(v, what):
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

    def __init__(self, inputs, outputs):
        self._single_in = not isinstance(inputs, (list, tuple))
        self._single_out = not isinstance(outputs, (list, tuple))
        self.inputs = _as_list(inputs, "inputs")
        self.outputs = _as_list(outputs, "outputs")
        self._args = {}
        for t in self.inputs:
            if t.node is not None:
                raise ValueError("Model: inputs must come from fastcnn.graph.Input")
        # Topological order: depth-first post-order from the outputs (deterministic).
        order, state = [], {}

        def visit(t):
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
        layers_seen = {}
        for node in order:
            if id(node.layer) in layers_seen:
                raise ValueError(f"Model: layer {node.layer!r} is used by more than one node; each node needs "
                                 "its own layer object (layers keep one forward pass for backward)")
            layers_seen[id(node.layer)] = node
        self.nodes = order
        # Names: given ones first, then <type>_<k> per type in topological order.
        names, counts = set(), {}
        self.input_names = [t.name or ("input" if len(self.inputs) == 1 else f"input_{i}")
                            for i, t in enumerate(self.inputs)]
        for n in self.input_names:
            self._claim(names, n)
        for node in order:
            if node.name is not None:
                self._claim(names, node.name)
        self.node_names = []
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
        self._key = {}  # id(tensor) -> name
        for t, n in zip(self.inputs, self.input_names):
            self._key[id(t)] = n
        for node, n in zip(order, self.node_names):
            self._key[id(node.output)] = n
        self._wiring = [([self._key[id(u)] for u in node.inputs], node.multi) for node in order]
        self._out_keys = [self._key[id(t)] for t in self.outputs]
        self._need = None  # gradient flow, set by needs_input_grad = False

    @staticmethod
    def _claim(names, name):
        if name in names:
            raise ValueError(f"Model: name {name!r} is used twice")
        names.add(name)

    # -- structure --------------------------------------------------------------------
    @property
    def input_shapes(self):
        return [t.shape for t in self.inputs]

    @property
    def output_shapes(self):
        return [t.shape for t in self.outputs]

    def named_layers(self):
        """``[(name, layer), ...]`` in topological order."""
        return list(zip(self.node_names, (n.layer for n in self.nodes)))

    def __getitem__(self, name):
        for n, layer in self.named_layers():
            if n == name:
                return layer
        raise KeyError(f"Model has no node {name!r}")

    def parameters(self):
        return [p for node in self.nodes for p in node.layer.parameters()]

    def named_parameters(self, prefix=""):
        """``[(dotted name, Parameter), ...]``, the names of ``state_dict`` (and of torch)."""
        return [item for name, layer in self.named_layers() for item in _named_parameters(layer, f"{prefix}{name}.")]

    def train(self, mode=True):
        self.training = bool(mode)
        for node in self.nodes:
            node.layer.train(mode)
        return self

    @property
    def needs_input_grad(self):
        return getattr(self, "_needs_input_grad", True)

    @needs_input_grad.setter
    def needs_input_grad(self, value):
        """False: no gradient for the inputs; nodes with nothing trainable upstream skip backward."""
        self._needs_input_grad = bool(value)
        self._set_grad_flow()

    def _set_grad_flow(self):
        """Which tensors need a gradient: the inputs if ``needs_input_grad``, and every
        output of a node that has parameters or reads a tensor that needs one."""
        need = {n: self.needs_input_grad for n in self.input_names}
        for node, name, (srcs, _) in zip(self.nodes, self.node_names, self._wiring):
            upstream = any(need[s] for s in srcs)
            if not isinstance(node.layer, _Merge):
                node.layer.needs_input_grad = upstream
            need[name] = upstream or bool(node.layer.parameters())
        self._need = need

    # -- forward / backward ---------------------------------------------------------------
    def forward(self, x):
        xs = [x] if self._single_in else list(x) if isinstance(x, (list, tuple)) else None
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
        for node, name, (srcs, multi) in zip(self.nodes, self.node_names, self._wiring):
            args = [values[s] for s in srcs]
            values[name] = node.layer.forward(args if multi else args[0])
        outs = [values[k] for k in self._out_keys]
        return outs[0] if self._single_out else outs

    def backward(self, grad_out):
        gs = [grad_out] if self._single_out else list(grad_out)
        if len(gs) != len(self.outputs):
            raise ValueError(f"Model.backward: expected {len(self.outputs)} output gradient(s), got {len(gs)}")
        grads = {}
        need = self._need

        def add(key, g):
            if g is None or (need is not None and not need[key]):
                return
            grads[key] = g if key not in grads else grads[key] + g  # never in place: g may be shared

        for key, g in zip(self._out_keys, gs):
            add(key, g)
        for node, name, (srcs, multi) in zip(reversed(self.nodes), reversed(self.node_names),
                                              reversed(self._wiring)):
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
        return res[0] if self._single_in else res

    # -- state and files ----------------------------------------------------------------------
    def children(self):
        return dict(self.named_layers())

    def config(self):
        return {
            "type": "Model",
            "inputs": [{"name": n, "shape": list(t.shape)} for n, t in zip(self.input_names, self.inputs)],
            "nodes": [{"name": name, "layer": node.layer.config(), "inputs": srcs, "list": multi}
                      for node, name, (srcs, multi) in zip(self.nodes, self.node_names, self._wiring)],
            "outputs": self._out_keys,
            "single_input": self._single_in,
            "single_output": self._single_out,
        }

    @classmethod
    def from_config(cls, cfg):
        from .model import from_config

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

    def save(self, path, metadata=None, format="npz"):
        """Write architecture and weights atomically (``.npz``, or ``format="safetensors"``)."""
        from .model import save

        save(self, path, metadata, format=format)

    def __repr__(self):
        lines = []
        for name, node, (srcs, _) in zip(self.node_names, self.nodes, self._wiring):
            lines.append(f"  {name}: {node.layer!r}".replace("\n", "\n  ") + f" <- {', '.join(srcs)}")
        ins = ", ".join(f"{n}{t.shape}" for n, t in zip(self.input_names, self.inputs))
        return f"Model(inputs: {ins}\n" + "\n".join(lines) + f"\n  outputs: {', '.join(self._out_keys)}\n)"


def _named_parameters(layer, prefix):
    from .layers import Residual
    from .model import Sequential

    if isinstance(layer, Model):
        return layer.named_parameters(prefix)
    if isinstance(layer, Sequential):
        return [it for i, sub in enumerate(layer) for it in _named_parameters(sub, f"{prefix}{i}.")]
    if isinstance(layer, Residual):
        return _named_parameters(layer.body, prefix + "body.") + _named_parameters(layer.shortcut, prefix + "shortcut.")
    return [(prefix + n, getattr(layer, n)) for n in layer._params if getattr(layer, n) is not None]


# -- merge layers ----------------------------------------------------------------------------
class _Merge(Layer):
    """Base of layers taking a list of arrays."""

    min_inputs = 2

    def __init__(self):
        self._args = {}
        self._xs = None

    def _check(self, xs):
        op = type(self).__name__
        if not isinstance(xs, (list, tuple)) or len(xs) < self.min_inputs:
            raise TypeError(f"{op}: expects a list of at least {self.min_inputs} arrays")
        return [as_float32(x, f"input {i}", None, op) for i, x in enumerate(xs)]

    def _same_shapes(self, xs):
        shapes = {x.shape for x in xs}
        if len(shapes) != 1:
            raise ValueError(f"{type(self).__name__}: inputs must have equal shapes, got {[x.shape for x in xs]}")


class Add(_Merge):
    """Elementwise sum of several equally shaped arrays."""

    def forward(self, xs):
        xs = self._check(xs)
        self._same_shapes(xs)
        self._n = len(xs)
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y

    def backward(self, grad_out):
        if getattr(self, "_n", None) is None:
            raise RuntimeError("Add.backward called before forward")
        g = as_float32(grad_out, "grad_out", None, "Add.backward")
        return [g] + [g.copy() for _ in range(self._n - 1)]


class Multiply(_Merge):
    """Elementwise product of several equally shaped arrays."""

    def forward(self, xs):
        xs = self._check(xs)
        self._same_shapes(xs)
        self._xs = xs if self.training else None
        y = xs[0] * xs[1]
        for x in xs[2:]:
            y *= x
        return y

    def backward(self, grad_out):
        self._expect_cache("_xs")
        g = as_float32(grad_out, "grad_out", self._xs[0].ndim, "Multiply.backward")
        out = []
        for i in range(len(self._xs)):
            gi = g.copy()
            for j, x in enumerate(self._xs):
                if j != i:
                    gi *= x
            out.append(gi)
        return out


class Concatenate(_Merge):
    """Concatenate along ``axis`` (default 1: channels of ``NCHW``, features of ``(N, F)``)."""

    def __init__(self, axis=1):
        if not isinstance(axis, int) or axis < 1:
            raise ValueError(f"Concatenate: axis must be an int >= 1 (axis 0 is the batch), got {axis!r}")
        self.axis = axis
        self._args = {"axis": axis}
        self._sizes = None

    def forward(self, xs):
        xs = self._check(xs)
        a = self.axis
        ref = xs[0]
        for x in xs[1:]:
            if x.ndim != ref.ndim or a >= x.ndim or x.shape[:a] + x.shape[a + 1:] != ref.shape[:a] + ref.shape[a + 1:]:
                raise ValueError(f"Concatenate(axis={a}): shapes {[x.shape for x in xs]} differ off the axis")
        self._sizes = [x.shape[a] for x in xs]
        return np.concatenate(xs, axis=a)

    def backward(self, grad_out):
        self._expect_cache("_sizes")
        g = as_float32(grad_out, "grad_out", None, "Concatenate.backward")
        if g.shape[self.axis] != sum(self._sizes):
            raise ValueError(f"Concatenate.backward: grad_out {g.shape} does not match the inputs")
        cuts = np.cumsum(self._sizes)[:-1]
        return [np.ascontiguousarray(p) for p in np.split(g, cuts, axis=self.axis)]


LAYERS = {cls.__name__: cls for cls in (Add, Multiply, Concatenate)}
