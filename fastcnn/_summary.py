"""``fastcnn.summary(model, input_shape)``: every layer's output shape, parameters, MACs and
activation memory, worked out from the layer arguments alone (nothing is run).

Counting rules (docs/TUTORIALS.md derives them):

- Conv2D with a ``K``-in, ``L``-out, ``I x J`` kernel and an ``M x N`` output: parameters
  ``I*J*K*L`` (+ ``L`` bias), MACs ``I*J*M*N*K*L`` (+ ``L*M*N``: each bias add counted as
  one MAC, as torchinfo counts it).
- Dense ``in -> out``: parameters and MACs ``in*out`` (+ ``out`` bias).
- BatchNorm2D: parameters ``2*C`` (weight and bias); its running mean and variance are
  non-trainable state, not parameters (as in PyTorch).  MACs ``2*C`` per image, torchinfo's
  convention (its scale and shift; in eval mode it folds into the convolution before it).
- Pooling, ReLU, Flatten and the residual addition: no MACs.
- Activation memory: every leaf layer's output, float32, summed (what a forward pass in
  training mode keeps for the backward pass, roughly).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import layers as L
from .functional import ConvGeometry

__all__ = ["summary", "Summary", "Row"]


class Row:
    """One line of the table; counts are per image."""

    __slots__ = ("name", "kind", "depth", "shape", "params", "state", "macs", "act", "leaf", "desc")

    def __init__(self, name: str, kind: str, depth: int, shape: tuple[int, ...], params: int, state: int,
                 macs: int, act: int, leaf: bool, desc: str = "") -> None:
        self.name, self.kind, self.depth, self.shape = name, kind, depth, shape
        self.params, self.state, self.macs, self.act, self.leaf, self.desc = params, state, macs, act, leaf, desc

    def __repr__(self) -> str:
        return (f"Row({self.name!r}, {self.kind}, shape={self.shape}, params={self.params}, "
                f"macs={self.macs}, act={self.act})")


def _short(v: tuple[int, int] | str) -> Any:
    """A pair written as one int when both are equal."""
    return v if isinstance(v, str) or v[0] != v[1] else v[0]


def _stride_pad(layer: L.Conv2D | L.MaxPool2D | L.AvgPool2D, default_stride: tuple[int, int]) -> str:
    s = "" if layer.stride == default_stride else f", stride {_short(layer.stride)}"
    p = "" if layer.padding in ((0, 0), "valid") else f", pad {_short(layer.padding)}"
    return s + p


def _conv_desc(layer: L.Conv2D) -> str:
    kh, kw = layer.kernel_size
    return (f"{layer.in_channels}->{layer.out_channels}, {kh}x{kw}{_stride_pad(layer, (1, 1))}"
            + ("" if layer.bias is not None else ", no bias"))


def _pool_desc(layer: L.MaxPool2D | L.AvgPool2D) -> str:
    return f"{_short(layer.kernel_size)}{_stride_pad(layer, layer.kernel_size)}"


def _leaf(layer: L.Layer, shape: tuple[int, ...], op: str) -> tuple[tuple[int, ...], int, int, int, str]:
    """``(out_shape, params, state, macs, description)`` of one leaf layer for a per-image
    input ``shape`` (no batch axis).  Raises ValueError when the shapes do not fit."""
    kind = type(layer).__name__
    nparams = sum(p.data.size for p in layer.parameters())
    if isinstance(layer, L.Conv2D):
        if len(shape) != 3 or shape[0] != layer.in_channels:
            raise ValueError(f"{op}: Conv2D expects (C={layer.in_channels}, H, W) per image, gets {shape}")
        g = ConvGeometry(layer.kernel_size, layer.stride, layer.padding, shape[1:], op)
        out = (layer.out_channels, g.oh, g.ow)
        kh, kw = layer.kernel_size
        macs = kh * kw * g.oh * g.ow * layer.in_channels * layer.out_channels  # I*J*M*N*K*L
        if layer.bias is not None:
            macs += layer.out_channels * g.oh * g.ow
        return out, nparams, 0, macs, _conv_desc(layer)
    if isinstance(layer, (L.MaxPool2D, L.AvgPool2D)):
        if len(shape) != 3:
            raise ValueError(f"{op}: {kind} expects (C, H, W) per image, gets {shape}")
        g = ConvGeometry(layer.kernel_size, layer.stride, layer.padding, shape[1:], op)
        return (shape[0], g.oh, g.ow), 0, 0, 0, _pool_desc(layer)
    if isinstance(layer, L.ReLU):
        return shape, 0, 0, 0, ""
    if isinstance(layer, L.Flatten):
        return (math.prod(shape),), 0, 0, 0, ""
    if isinstance(layer, L.Dense):
        i, o = layer.in_features, layer.out_features
        if shape != (i,):
            raise ValueError(f"{op}: Dense expects ({i},) per image, gets {shape}")
        macs = i * o + (o if layer.bias is not None else 0)
        return (o,), nparams, 0, macs, f"{i}->{o}"
    if isinstance(layer, L.BatchNorm2D):
        c = layer.num_features
        if len(shape) != 3 or shape[0] != c:
            raise ValueError(f"{op}: BatchNorm2D expects (C={c}, H, W) per image, gets {shape}")
        return shape, nparams, layer.running_mean.size + layer.running_var.size, 2 * c, str(c)
    raise TypeError(f"{op}: no shape rule for layer type {kind}")


def _walk(layer: L.Layer, shape: tuple[int, ...], name: str, depth: int, rows: list[Any], op: str
          ) -> tuple[int, ...]:
    """Append the rows of ``layer`` (and its children) to ``rows``; return its output shape."""
    if isinstance(layer, (L.Sequential, L.Residual)):
        at = len(rows)
        if depth >= 0:
            rows.append(None)  # the container's own row, filled in below
        pre = f"{name}." if name else ""
        if isinstance(layer, L.Sequential):
            out = shape
            for i, child in enumerate(layer):
                out = _walk(child, out, f"{pre}{i}", depth + 1, rows, op)
        else:
            out = _walk(layer.body, shape, f"{pre}body", depth + 1, rows, op)
            s = _walk(layer.shortcut, shape, f"{pre}shortcut", depth + 1, rows, op)
            if s != out:
                raise ValueError(f"{op}: residual block {name!r}: body gives {out}, shortcut gives {s}")
            rows.append(Row(f"{pre}relu", "ReLU", depth + 1, out, 0, 0, 0, math.prod(out), True, "body + shortcut"))
        if depth >= 0:
            kids = [r for r in rows[at + 1:] if r.leaf]
            rows[at] = Row(name, type(layer).__name__, depth, out, sum(r.params for r in kids),
                           sum(r.state for r in kids), sum(r.macs for r in kids), sum(r.act for r in kids),
                           False, _container_desc(layer))
        return out
    out, params, state, macs, desc = _leaf(layer, shape, op)
    rows.append(Row(name, type(layer).__name__, depth, out, params, state, macs, math.prod(out), True, desc))
    return out


def _container_desc(layer: L.Sequential | L.Residual) -> str:
    if isinstance(layer, L.Residual):
        return "relu(body + shortcut)"
    return f"{len(layer)} layers" if len(layer) else "identity"


class Summary:
    """The result of :func:`summary`: ``rows`` (list of :class:`Row`, per image), totals as
    attributes, and the printed table as ``str(summary)``."""

    def __init__(self, rows: list[Row], input_shape: Sequence[int], batch_size: int) -> None:
        self.rows, self.input_shape, self.batch_size = rows, tuple(input_shape), int(batch_size)
        leaves = [r for r in rows if r.leaf]
        self.output_shape = leaves[-1].shape if leaves else self.input_shape
        self.total_params = sum(r.params for r in leaves)
        self.trainable_params = self.total_params  # every fastcnn Parameter is trained
        self.non_trainable_state = sum(r.state for r in leaves)
        self.macs = sum(r.macs for r in leaves)  # per image
        self.activation_bytes = 4 * sum(r.act for r in leaves)  # per image, float32
        self.input_bytes = 4 * math.prod(self.input_shape)
        self.param_bytes = 4 * (self.total_params + self.non_trainable_state)

    @property
    def macs_per_batch(self) -> int:
        return self.macs * self.batch_size

    def __str__(self) -> str:
        return self.table()

    def table(self) -> str:
        head = ("Layer (type)", "Output shape", "Params", "Non-train", "MACs", "Activations")
        body = []
        for r in self.rows:
            label = "  " * r.depth + f"{r.name} {r.kind}" + (f"({r.desc})" if r.desc else "")
            fmt = (lambda v: f"{v:,}") if r.leaf else (lambda v: f"({v:,})")
            body.append((label, str(r.shape), fmt(r.params), fmt(r.state), fmt(r.macs), _bytes(4 * r.act)))
        width = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(width[0]) if i == 0 else c.rjust(width[i]) for i, c in enumerate(cells))

        rule = "-" * len(line(head))
        b = self.batch_size
        out = [f"input (C, H, W) {self.input_shape}; counts per image; (bracketed) rows sum their layers",
               rule, line(head), rule, *map(line, body), rule,
               f"Total params: {self.total_params:,}",
               f"Trainable params: {self.trainable_params:,}",
               f"Non-trainable params: 0 (BatchNorm running statistics: {self.non_trainable_state:,} values)",
               f"Total MACs: {self.macs:,} (per image)",
               f"MACs per batch of {b}: {self.macs_per_batch:,}",
               f"Activation memory: {_bytes(self.activation_bytes)} per image, "
               f"{_bytes(self.activation_bytes * b)} per batch of {b}",
               f"Input: {_bytes(self.input_bytes)} per image; parameters and state: {_bytes(self.param_bytes)}",
               rule]
        return "\n".join(out)


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    n /= 1024
    return f"{n:.1f} KiB" if n < 1024 else f"{n / 1024:.1f} MiB"


def summary(model: L.Layer, input_shape: Sequence[int], batch_size: int | None = None) -> Summary:
    """Layer table of ``model``: output shapes, parameters, MACs and activation memory.

    Parameters
    ----------
    model : fastcnn layer (usually a ``Sequential``)
    input_shape : (C, H, W) or (N, C, H, W)
        One image's shape; a leading batch size sets ``batch_size``.
    batch_size : int, optional
        For the per-batch totals (default: ``N`` of ``input_shape``, else 1).

    Returns
    -------
    Summary
        ``print()`` it for the table; ``.total_params``, ``.macs`` (per image),
        ``.macs_per_batch``, ``.activation_bytes`` (per image), ``.rows``.
    """
    op = "summary"
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 4:
        batch_size = shape[0] if batch_size is None else batch_size
        shape = shape[1:]
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"{op}: input_shape must be (C, H, W) or (N, C, H, W) with sizes >= 1, got {input_shape}")
    batch_size = 1 if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"{op}: batch_size must be >= 1, got {batch_size}")
    if not isinstance(model, L.Layer):
        raise TypeError(f"{op}: model must be a fastcnn layer, got {type(model).__name__}")
    rows: list[Row] = []
    _walk(model, shape, "", -1, rows, op)
    return Summary(rows, shape, batch_size)
