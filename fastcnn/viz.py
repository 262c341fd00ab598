"""What the convolution layers respond to: feature maps, deconvnet projections, filters.

- :func:`feature_maps`: each convolution layer's activations for one image (after the
  BatchNorm/ReLU that follow it, if any).
- :func:`project`: Zeiler and Fergus's deconvnet.  The strongest activation of each chosen
  channel is kept, every other activation of the layer set to zero, and the signal is taken
  back to pixel space through the layers below with their backward kernels: ReLU again on the
  way down, unpooling with the max locations recorded in the forward pass
  (:func:`fastcnn.functional.max_pool2d_backward`), transposed convolution with the same
  filters (the input gradient of :func:`fastcnn.functional.conv2d_backward`).
- :func:`plot_maps`, :func:`plot_projections`, :func:`plot_filters`: PNG grids (matplotlib,
  written atomically).  :func:`visualize_checkpoint` is ``fastcnn visualize``.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import functional as F
from . import layers as L

#: A file name to write.
PathLike = str | os.PathLike[str]

__all__ = ["trace", "feature_maps", "project", "plot_maps", "plot_projections", "plot_filters",
           "visualize_checkpoint"]


class Record:
    """One leaf layer's call in a forward pass: ``name``, ``layer``, ``input``, ``output``
    (and ``indices``, the arg-max switches of a max pooling layer)."""

    __slots__ = ("name", "layer", "input", "output", "indices")

    def __init__(self, name: str, layer: L.Layer, x: np.ndarray, y: np.ndarray, indices: np.ndarray | None = None):
        self.name, self.layer, self.input, self.output, self.indices = name, layer, x, y, indices


def named_leaves(model: L.Layer, prefix: str = "") -> Iterator[tuple[str, L.Layer]]:
    """``(name, layer)`` of every leaf layer, with state-dict style names (``"3"``, ``"5.body.0"``)."""
    from .model import Sequential

    if isinstance(model, Sequential):
        for i, child in enumerate(model):
            yield from named_leaves(child, f"{prefix}{i}" if not prefix else f"{prefix}.{i}")
    elif isinstance(model, L.Residual):
        for part in ("body", "shortcut"):
            yield from named_leaves(getattr(model, part), f"{prefix}.{part}" if prefix else part)
    else:
        yield prefix or type(model).__name__, model


def _as_batch(x, op):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"{op}: expects one image (C, H, W) or (1, C, H, W), got shape {x.shape}")
    return x


def trace(model: L.Layer, x: np.ndarray) -> tuple[np.ndarray, list[Record]]:
    """Run ``model`` in eval mode on ``x`` and record every leaf layer's call, in order.

    Returns
    -------
    output : array
    records : list of :class:`Record`
    """
    records: list[Record] = []
    leaves = list(named_leaves(model))

    def wrap(name, layer):
        forward = type(layer).forward

        def recording(x):
            y = forward(layer, x)
            idx = None
            if isinstance(layer, L.MaxPool2D):  # (eval mode keeps nothing for backward: the arg-maxes again)
                idx = F.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding, return_indices=True)[1]
            records.append(Record(name, layer, x, y, idx))
            return y
        return recording

    was_training = model.training
    model.eval()
    try:
        for name, layer in leaves:
            setattr(layer, "forward", wrap(name, layer))  # an instance attribute, removed below
        out = model.forward(x)
    finally:
        for _, layer in leaves:
            layer.__dict__.pop("forward", None)
        model.train(was_training)
    return out, records


def _blocks(records):
    """Each Conv2D record with the records of the BatchNorm2D/ReLU that directly follow it."""
    out = []
    for i, r in enumerate(records):
        if isinstance(r.layer, L.Conv2D):
            block = [r]
            for nxt in records[i + 1:]:
                if isinstance(nxt.layer, (L.BatchNorm2D, L.ReLU)) and nxt.input is block[-1].output:
                    block.append(nxt)
                else:
                    break
            out.append(block)
    return out


def _title(block):
    return block[0].name + " " + " + ".join(type(r.layer).__name__ for r in block)


def feature_maps(model: L.Layer, x: ArrayLike) -> list[tuple[str, str, np.ndarray]]:
    """Activations of every convolution layer for one image.

    Parameters
    ----------
    model : fastcnn layer
    x : (C, H, W) or (1, C, H, W) float32 image

    Returns
    -------
    list of ``(name, title, maps)``
        ``name`` the convolution's layer name, ``title`` e.g. ``"0 Conv2D + ReLU"``,
        ``maps`` ``(channels, OH, OW)`` float32: the output of the convolution after the
        BatchNorm2D/ReLU that follow it.
    """
    _, records = trace(model, _as_batch(x, "feature_maps"))
    return [(b[0].name, _title(b), b[-1].output[0]) for b in _blocks(records)]


def _conv_names(records):
    return [b[0].name for b in _blocks(records)]


def project(model: L.Layer, x: ArrayLike, layer: str | int | None = None,
            top: int = 9) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """Deconvnet projections of a convolution layer's strongest activations to pixel space.

    Parameters
    ----------
    model : fastcnn Sequential whose layers up to ``layer`` form a chain of Conv2D,
        BatchNorm2D, ReLU and pooling layers (as in the seed networks other than ResNet)
    x : (C, H, W) or (1, C, H, W) float32 image
    layer : str or int, optional
        Name of the convolution layer (``"3"`` for lenet's second); default the last one.
    top : int
        Project the ``top`` channels with the largest activation, one projection each.

    Returns
    -------
    name : str
        The projected convolution layer.
    channels : (k,) int
        Channels, strongest first.
    values : (k,) float32
        Each channel's maximum activation (after its BatchNorm/ReLU).
    images : (k, C, H, W) float32
        The projections, in input space.
    """
    op = "project"
    batch = _as_batch(x, op)
    if top < 1:
        raise ValueError(f"{op}: top must be >= 1, got {top}")
    _, records = trace(model, batch)
    blocks = _blocks(records)
    names = [b[0].name for b in blocks]
    if not names:
        raise ValueError(f"{op}: the model has no Conv2D layer")
    name = names[-1] if layer is None else str(layer)
    if name not in names:
        raise ValueError(f"{op}: no convolution layer named {name!r}; choose one of {', '.join(names)}")
    block = blocks[names.index(name)]
    end = records.index(block[-1])
    chain = records[:end + 1]
    for prev, cur in zip([None, *chain[:-1]], chain):
        ok = isinstance(cur.layer, (L.Conv2D, L.BatchNorm2D, L.ReLU, L.MaxPool2D, L.AvgPool2D))
        if not ok or (prev is not None and cur.input is not prev.output):
            raise ValueError(f"{op}: layers below {name!r} must be a plain chain of Conv2D, BatchNorm2D, ReLU "
                             f"and pooling layers; it breaks at {cur.name} ({type(cur.layer).__name__}) "
                             "(residual networks are not supported)")
    act = block[-1].output[0]  # (C, H, W)
    flat = act.reshape(act.shape[0], -1)
    peak = flat.max(axis=1)
    channels = np.argsort(-peak, kind="stable")[:min(top, act.shape[0])]
    k = len(channels)
    r = np.zeros((k,) + act.shape, np.float32)  # one projection per channel, as a batch
    for i, c in enumerate(channels):
        pos = int(np.argmax(flat[c]))
        r[i, c].flat[pos] = flat[c, pos]
    for rec in reversed(chain):
        r = _down(rec, r, k)
    return name, channels, peak[channels].astype(np.float32), r


_project = project  # (visualize_checkpoint's argument of the same name shadows it)


def _down(rec, r, k):
    """One deconvnet step below ``rec``'s output, for a batch of ``k`` signals."""
    layer = rec.layer
    if isinstance(layer, L.ReLU):
        return F.relu(r)
    if isinstance(layer, L.MaxPool2D):  # unpool: each value back to its recorded max location
        idx = np.ascontiguousarray(np.broadcast_to(rec.indices, r.shape))
        return F.max_pool2d_backward(r, idx, (k,) + rec.input.shape[1:])
    if isinstance(layer, L.AvgPool2D):
        return F.avg_pool2d_backward(r, (k,) + rec.input.shape[1:], layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, L.Conv2D):  # transposed convolution with the same filters (no bias)
        xin = np.ascontiguousarray(np.broadcast_to(rec.input, (k,) + rec.input.shape[1:]))
        gx, _, _ = F.conv2d_backward(r, xin, layer.weight.data, layer.stride, layer.padding, bias=False)
        return gx
    if isinstance(layer, L.BatchNorm2D):  # the transpose of its (eval-mode) linear part
        scale = layer.weight.data / np.sqrt(layer.running_var + layer.eps)
        return (r * scale[None, :, None, None]).astype(np.float32)
    raise ValueError(f"project: cannot go back through {type(layer).__name__}")  # pragma: no cover


# --------------------------------------------------------------------------- drawing

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    from .model import atomic_write

    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return os.fspath(path)


def _grid(n, extra=0):
    cols = max(1, math.ceil(math.sqrt(n + extra)))
    return cols, math.ceil((n + extra) / cols)


def _show(ax, img, cmap="gray", vmin=None, vmax=None):
    """``img`` (H, W), or (C, H, W): one channel as grey, three as RGB (scaled to [0, 1])."""
    img = np.asarray(img, np.float32)
    if img.ndim == 3 and img.shape[0] == 3:
        lo, hi = img.min(), img.max()
        ax.imshow(np.transpose((img - lo) / (hi - lo if hi > lo else 1.0), (1, 2, 0)), interpolation="nearest")
    else:
        ax.imshow(img[0] if img.ndim == 3 else img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_maps(maps: ArrayLike, path: PathLike, title: str = "", tile: float = 1.0) -> str:
    """A grid of feature maps ``(channels, H, W)``, one titled tile per channel; writes ``path``.

    All tiles share one colour scale (black = the smallest activation of the layer, white =
    the largest), so tiles compare with each other.
    """
    plt = _pyplot()
    arr = np.asarray(maps, np.float32)
    cols, rows = _grid(len(arr))
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * tile, 4.5), rows * tile * 1.15 + 0.6), dpi=80,
                             squeeze=False, layout="constrained")
    lo, hi = float(arr.min()), float(arr.max())
    for i, ax in enumerate(axes.flat):
        if i < len(arr):
            _show(ax, arr[i], vmin=lo, vmax=hi)
            ax.set_title(f"ch {i}", fontsize=7, pad=2)
        else:
            ax.axis("off")
    fig.suptitle(f"{title}\nblack {lo:.2f} .. white {hi:.2f}", fontsize=8)
    return _save(fig, path)


def plot_projections(image: ArrayLike, channels: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray,
                     images: np.ndarray, path: PathLike, title: str = "") -> str:
    """The input image, then each deconvnet projection (each scaled to its own range)."""
    plt = _pyplot()
    cols, rows = _grid(len(images), extra=1)
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * 1.6, 4.5), rows * 1.75 + 0.6), dpi=80,
                             squeeze=False, layout="constrained")
    axes = list(axes.flat)
    _show(axes[0], np.asarray(image)[0] if np.asarray(image).ndim == 4 else image)
    axes[0].set_title("input", fontsize=8)
    for ax, c, v, img in zip(axes[1:], channels, values, images):
        g = img if img.shape[0] == 3 else img[0]
        m = float(np.abs(g).max()) or 1.0
        _show(ax, g, cmap="gray", vmin=-m, vmax=m)  # zero = mid grey
        ax.set_title(f"ch {c} ({v:.2f})", fontsize=8)
    for ax in axes[1 + len(images):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def plot_filters(model: L.Layer, path: PathLike) -> str:
    """The first convolution layer's kernels, one tile each (grey for one input channel, RGB
    for three, else the first input channel), on a shared scale centred at zero."""
    plt = _pyplot()
    conv = next((layer for _, layer in named_leaves(model) if isinstance(layer, L.Conv2D)), None)
    if conv is None:
        raise ValueError("plot_filters: the model has no Conv2D layer")
    w = conv.weight.data
    cols, rows = _grid(len(w))
    fig, axes = plt.subplots(rows, cols, figsize=(max(cols * 0.9, 4.5), rows * 1.0 + 0.6), dpi=80,
                             squeeze=False, layout="constrained")
    m = float(np.abs(w).max()) or 1.0
    for i, ax in enumerate(axes.flat):
        if i < len(w):
            _show(ax, w[i] if w.shape[1] == 3 else w[i, 0], cmap="gray", vmin=-m, vmax=m)
            ax.set_title(f"{i}", fontsize=7, pad=2)
        else:
            ax.axis("off")
    kh, kw = w.shape[2:]
    fig.suptitle(f"first layer: {len(w)} kernels {kh}x{kw}\n(grey = 0, black -{m:.2f}, white +{m:.2f})", fontsize=8)
    return _save(fig, path)


# --------------------------------------------------------------------------- command line

def visualize_checkpoint(checkpoint: PathLike, out: PathLike, dataset: str = "mnist", data_dir: PathLike | None = None,
                         index: int = 0, project: bool = False, layer: str | int | None = None, top: int = 9,
                         filters: bool = False) -> list[str]:
    """``fastcnn visualize``: draw test image ``index`` of ``dataset`` through ``checkpoint``.

    Writes to ``out``: ``input.png``, ``maps_<layer>.png`` for every convolution layer, and
    with ``project`` ``projection_<layer>.png``, with ``filters`` ``filters.png``.
    Returns the paths written.
    """
    import fastcnn

    from . import data, models
    from .train import pad_to

    model, meta = fastcnn.load(checkpoint, return_metadata=True)
    images, labels = data.load_dataset(dataset, data_dir, "test")
    if not 0 <= index < len(images):
        raise ValueError(f"--index {index} is out of range: the {dataset} test split has {len(images)} images")
    x = data.to_float(images[index:index + 1])
    size = models.INPUT_SIZE.get(str(meta.get("model")))
    if size:
        x = pad_to(x, size)
    logits = trace(model, x)[0]
    pred = int(np.argmax(logits[0]))
    os.makedirs(out, exist_ok=True)
    written = []
    fig_title = f"{dataset} test image {index}, label {int(labels[index])}, predicted {pred}"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2.2, 2.4), dpi=80, layout="constrained")
    _show(ax, x[0])
    ax.set_title(f"label {int(labels[index])}, predicted {pred}", fontsize=8)
    written.append(_save(fig, os.path.join(out, "input.png")))
    for name, title, maps in feature_maps(model, x):
        written.append(plot_maps(maps, os.path.join(out, f"maps_{name}.png"), f"layer {title}\n{fig_title}"))
    if project:
        name, channels, values, imgs = _project(model, x, layer=layer, top=top)
        written.append(plot_projections(x[0], channels, values, imgs, os.path.join(out, f"projection_{name}.png"),
                                        f"deconvnet: the strongest channels of layer {name}\nprojected to pixels "
                                        "(grey = 0; channel, activation)"))
    if filters:
        written.append(plot_filters(model, os.path.join(out, "filters.png")))
    return written
