"""PyTorch interoperability (needs ``torch``: ``pip install fastcnn[compare]``)."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import graph as G
from . import layers as L


def to_torch(model: L.Layer) -> Any:
    """A torch module computing what ``model`` computes, with its weights and the same
    state-dict names.

    A :class:`~fastcnn.Sequential` becomes ``torch.nn.Sequential``; a ``Residual`` block and a
    :class:`fastcnn.graph.Model` become small ``nn.Module`` classes holding their layers as
    attributes under the same names.  Supports Conv2D (int/pair padding, or ``"same"`` with
    stride 1 and odd kernels), the pooling layers (max, average, sum, global average; not
    ``"same"``), ReLU, Sigmoid, Tanh, Dropout, Flatten, Dense, BatchNorm2D and the merge layers.
    """
    import torch

    twin = _module(model)
    twin.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in model.state_dict().items()})
    twin.train(model.training)
    return twin


def _module(layer: L.Layer) -> Any:
    from torch import nn

    T = _torch_classes()
    if isinstance(layer, L.Sequential):
        return nn.Sequential(*[_module(x) for x in layer])
    if isinstance(layer, L.Residual):
        return T["Residual"](_module(layer.body), _module(layer.shortcut))
    if isinstance(layer, G.Model):
        return T["Graph"](layer, [_module(x) for _, x in layer.named_layers()])
    if isinstance(layer, G.Add):
        return T["Add"]()
    if isinstance(layer, G.Multiply):
        return T["Multiply"]()
    if isinstance(layer, G.Concatenate):
        return T["Concatenate"](layer.axis)
    if isinstance(layer, L.Conv2D):
        pad: Any = layer.padding
        if pad == "same":
            kh, kw = layer.kernel_size
            if layer.stride != (1, 1) or not (kh % 2 and kw % 2):
                raise ValueError("to_torch: 'same' padding is supported for stride 1 and odd kernels only")
            pad = (kh // 2, kw // 2)
        elif pad == "valid":
            pad = 0
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, pad,
                         bias=layer.bias is not None)
    if isinstance(layer, L.MaxPool2D):
        return nn.MaxPool2d(layer.kernel_size, layer.stride, _pool_padding(layer))
    if isinstance(layer, L.AvgPool2D):
        return nn.AvgPool2d(layer.kernel_size, layer.stride, _pool_padding(layer))
    if isinstance(layer, L.ReLU):
        return nn.ReLU()
    if isinstance(layer, L.Flatten):
        return nn.Flatten()
    if isinstance(layer, L.Dense):
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, L.BatchNorm2D):
        return nn.BatchNorm2d(layer.num_features, layer.eps, layer.momentum)
    if isinstance(layer, L.SumPool2D):
        return nn.AvgPool2d(layer.kernel_size, layer.stride, _pool_padding(layer), divisor_override=1)
    if isinstance(layer, L.GlobalAvgPool2D):
        return nn.AdaptiveAvgPool2d(1)
    if isinstance(layer, L.Sigmoid):
        return nn.Sigmoid()
    if isinstance(layer, L.Tanh):
        return nn.Tanh()
    if isinstance(layer, L.Dropout):
        return nn.Dropout(layer.p)
    raise TypeError(f"to_torch: no torch equivalent for {type(layer).__name__}")


def _pool_padding(layer: L.MaxPool2D | L.AvgPool2D | L.SumPool2D) -> tuple[int, int]:
    if isinstance(layer.padding, str):
        if layer.padding == "same":
            raise ValueError("to_torch: pooling with 'same' padding has no torch equivalent")
        return (0, 0)  # "valid"
    return layer.padding


_CLASSES: dict[str, Any] = {}


def _torch_classes() -> dict[str, Any]:
    if _CLASSES:
        return _CLASSES
    import torch
    from torch import nn

    class Residual(nn.Module):
        """``relu(body(x) + shortcut(x))``."""

        def __init__(self, body: Any, shortcut: Any) -> None:
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x: Any) -> Any:
            return torch.relu(self.body(x) + self.shortcut(x))

    class Graph(nn.Module):
        """The nodes of a fastcnn graph Model as attributes, run in its topological order."""

        def __init__(self, model: G.Model, modules: list[Any]) -> None:
            super().__init__()
            self._names = list(model.node_names)
            self._wiring = list(model.wiring)
            self._inputs = list(model.input_names)
            self._outputs = list(model.output_names)
            self._single_out = model.single_output
            for name, m in zip(self._names, modules):
                self.add_module(name, m)

        def forward(self, *xs: Any) -> Any:
            if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
                xs = tuple(xs[0])
            values = dict(zip(self._inputs, xs))
            for name, (srcs, multi) in zip(self._names, self._wiring):
                args = [values[s] for s in srcs]
                values[name] = getattr(self, name)(args if multi else args[0])
            outs = [values[k] for k in self._outputs]
            return outs[0] if self._single_out else outs

    class Add(nn.Module):
        def forward(self, xs: Any) -> Any:
            y = xs[0]
            for x in xs[1:]:
                y = y + x
            return y

    class Multiply(nn.Module):
        def forward(self, xs: Any) -> Any:
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y

    class Concatenate(nn.Module):
        def __init__(self, axis: int = 1) -> None:
            super().__init__()
            self.axis = axis

        def forward(self, xs: Any) -> Any:
            return torch.cat(list(xs), dim=self.axis)

    _CLASSES.update(Residual=Residual, Graph=Graph, Add=Add, Multiply=Multiply, Concatenate=Concatenate)
    return _CLASSES


def state_dict_from_torch(module: Any) -> dict[str, np.ndarray]:
    """A torch module's state dict as NumPy arrays (for ``load_state_dict``)."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
