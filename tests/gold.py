"""PyTorch "gold" twins of fastcnn models, with the same weights (tests only)."""
import numpy as np

from fastcnn import layers as L
from fastcnn.model import Sequential


def torch_twin(model):
    """A ``torch.nn.Sequential`` computing what ``model`` computes, with its weights."""
    import torch
    from torch import nn

    mods = []
    for layer in model:
        if isinstance(layer, L.Conv2D):
            a = layer._args
            pad = layer.padding
            if pad == "same":
                kh, kw = a["kernel_size"]
                assert a["stride"] == (1, 1) and kh % 2 and kw % 2, "twin supports symmetric SAME only"
                pad = (kh // 2, kw // 2)
            elif pad == "valid":
                pad = 0
            mods.append(nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], pad,
                                  bias=a["bias"]))
        elif isinstance(layer, L.MaxPool2D):
            mods.append(nn.MaxPool2d(layer.kernel_size, layer.stride, 0 if layer.padding == "valid" else layer.padding))
        elif isinstance(layer, L.AvgPool2D):
            mods.append(nn.AvgPool2d(layer.kernel_size, layer.stride, 0 if layer.padding == "valid" else layer.padding))
        elif isinstance(layer, L.ReLU):
            mods.append(nn.ReLU())
        elif isinstance(layer, L.Flatten):
            mods.append(nn.Flatten())
        elif isinstance(layer, L.Dense):
            a = layer._args
            mods.append(nn.Linear(a["in_features"], a["out_features"], bias=a["bias"]))
        elif isinstance(layer, L.BatchNorm2D):
            mods.append(nn.BatchNorm2d(layer._args["num_features"], layer.eps, layer.momentum))
        elif isinstance(layer, Sequential):
            mods.append(torch_twin(layer))
        else:
            raise TypeError(f"no torch twin for {type(layer).__name__}")
    twin = nn.Sequential(*mods)
    twin.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in model.state_dict().items()})
    return twin


def to_numpy_state(torch_module):
    return {k: v.detach().cpu().numpy() for k, v in torch_module.state_dict().items()}
