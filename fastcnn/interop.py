"""PyTorch interoperability (needs ``torch``: ``pip install fastcnn[compare]``)."""
import numpy as np

from . import layers as L
from .model import Sequential


def to_torch(model):
    """A ``torch.nn.Sequential`` computing what ``model`` computes, with its weights.

    Supports Conv2D (int/pair padding, or ``"same"`` with stride 1 and odd kernels), the
    pooling layers (max, average, sum, global average), ReLU, Sigmoid, Tanh, Dropout, Flatten,
    Dense, BatchNorm2D, Residual and nested Sequential.
    """
    import torch
    from torch import nn

    mods = []
    for layer in model:
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
            mods.append(nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], pad,
                                  bias=a["bias"]))
        elif isinstance(layer, (L.MaxPool2D, L.AvgPool2D)):
            if layer.padding == "same":
                raise ValueError("to_torch: pooling with 'same' padding has no torch equivalent")
            cls = nn.MaxPool2d if isinstance(layer, L.MaxPool2D) else nn.AvgPool2d
            mods.append(cls(layer.kernel_size, layer.stride, 0 if layer.padding == "valid" else layer.padding))
        elif isinstance(layer, L.ReLU):
            mods.append(nn.ReLU())
        elif isinstance(layer, L.Flatten):
            mods.append(nn.Flatten())
        elif isinstance(layer, L.Dense):
            a = layer._args
            mods.append(nn.Linear(a["in_features"], a["out_features"], bias=a["bias"]))
        elif isinstance(layer, L.BatchNorm2D):
            mods.append(nn.BatchNorm2d(layer._args["num_features"], layer.eps, layer.momentum))
        elif isinstance(layer, L.SumPool2D):
            k, st, pad = layer.kernel_size, layer.stride, layer.padding
            if pad == "same":
                raise ValueError("to_torch: pooling with 'same' padding has no torch equivalent")
            mods.append(nn.AvgPool2d(k, st, 0 if pad == "valid" else pad, divisor_override=1))
        elif isinstance(layer, L.GlobalAvgPool2D):
            mods.append(nn.AdaptiveAvgPool2d(1))
        elif isinstance(layer, L.Sigmoid):
            mods.append(nn.Sigmoid())
        elif isinstance(layer, L.Tanh):
            mods.append(nn.Tanh())
        elif isinstance(layer, L.Dropout):
            mods.append(nn.Dropout(layer.p))
        elif isinstance(layer, L.Residual):
            mods.append(_TorchResidual(to_torch(layer.body), to_torch(layer.shortcut)))
        elif isinstance(layer, Sequential):
            mods.append(to_torch(layer))
        else:
            raise TypeError(f"to_torch: no torch equivalent for {type(layer).__name__}")
    twin = nn.Sequential(*mods)
    twin.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in model.state_dict().items()})
    twin.train(model.training)
    return twin


def _TorchResidual(body, shortcut):
    """``relu(body(x) + shortcut(x))`` as a torch module (state-dict names ``body.*``,
    ``shortcut.*`` as :class:`fastcnn.layers.Residual`)."""
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    return Residual(body, shortcut)


def state_dict_from_torch(module):
    """A torch module's state dict as NumPy arrays (for ``Sequential.load_state_dict``)."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
