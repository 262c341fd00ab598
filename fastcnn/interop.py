"""PyTorch interoperability (needs ``torch``: ``pip install fastcnn[compare]``)."""
import numpy as np

from . import graph as G
from . import layers as L
from .model import Sequential


def to_torch(model):
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


def _module(layer):
    from torch import nn

    T = _torch_classes()
    if isinstance(layer, Sequential):
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
        a = layer._args
        pad = layer.padding
        if pad == "same":
            kh, kw = a["kernel_size"]
            if a["stride"] != (1, 1) or not (kh % 2 and kw % 2):
                raise ValueError("to_torch: 'same' padding is supported for stride 1 and odd kernels only")
            pad = (kh // 2, kw // 2)
        elif pad == "valid":
            pad = 0
        return nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], pad, bias=a["bias"])
    if isinstance(layer, (L.MaxPool2D, L.AvgPool2D)):
        if layer.padding == "same":
            raise ValueError("to_torch: pooling with 'same' padding has no torch equivalent")
        cls = nn.MaxPool2d if isinstance(layer, L.MaxPool2D) else nn.AvgPool2d
        return cls(layer.kernel_size, layer.stride, 0 if layer.padding == "valid" else layer.padding)
    if isinstance(layer, L.ReLU):
        return nn.ReLU()
    if isinstance(layer, L.Flatten):
        return nn.Flatten()
    if isinstance(layer, L.Dense):
        a = layer._args
        return nn.Linear(a["in_features"], a["out_features"], bias=a["bias"])
    if isinstance(layer, L.BatchNorm2D):
        return nn.BatchNorm2d(layer._args["num_features"], layer.eps, layer.momentum)
    if isinstance(layer, L.SumPool2D):
        if layer.padding == "same":
            raise ValueError("to_torch: pooling with 'same' padding has no torch equivalent")
        pad = 0 if layer.padding == "valid" else layer.padding
        return nn.AvgPool2d(layer.kernel_size, layer.stride, pad, divisor_override=1)
    if isinstance(layer, L.GlobalAvgPool2D):
        return nn.AdaptiveAvgPool2d(1)
    if isinstance(layer, L.Sigmoid):
        return nn.Sigmoid()
    if isinstance(layer, L.Tanh):
        return nn.Tanh()
    if isinstance(layer, L.Dropout):
        return nn.Dropout(layer.p)
    raise TypeError(f"to_torch: no torch equivalent for {type(layer).__name__}")


_CLASSES = {}


def _torch_classes():
    if _CLASSES:
        return _CLASSES
    import torch
    from torch import nn

    class Residual(nn.Module):
        """``relu(body(x) + shortcut(x))``."""

        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    class Graph(nn.Module):
        """The nodes of a fastcnn graph Model as attributes, run in its topological order."""

        def __init__(self, model, modules):
            super().__init__()
            self._names = list(model.node_names)
            self._wiring = list(model._wiring)
            self._inputs = list(model.input_names)
            self._outputs = list(model._out_keys)
            self._single_out = model._single_out
            for name, m in zip(self._names, modules):
                self.add_module(name, m)

        def forward(self, *xs):
            if len(xs) == 1 and isinstance(xs[0], (list, tuple)):
                xs = tuple(xs[0])
            values = dict(zip(self._inputs, xs))
            for name, (srcs, multi) in zip(self._names, self._wiring):
                args = [values[s] for s in srcs]
                values[name] = getattr(self, name)(args if multi else args[0])
            outs = [values[k] for k in self._outputs]
            return outs[0] if self._single_out else outs

    class Add(nn.Module):
        def forward(self, xs):
            y = xs[0]
            for x in xs[1:]:
                y = y + x
            return y

    class Multiply(nn.Module):
        def forward(self, xs):
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y

    class Concatenate(nn.Module):
        def __init__(self, axis=1):
            super().__init__()
            self.axis = axis

        def forward(self, xs):
            return torch.cat(list(xs), dim=self.axis)

    _CLASSES.update(Residual=Residual, Graph=Graph, Add=Add, Multiply=Multiply, Concatenate=Concatenate)
    return _CLASSES


def state_dict_from_torch(module):
    """A torch module's state dict as NumPy arrays (for ``load_state_dict``)."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
