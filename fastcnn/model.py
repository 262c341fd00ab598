"""``Sequential`` and checkpoint files (``.npz``, never pickle)."""
import json
import os
import tempfile
import zipfile

import numpy as np

from ._optional import require
from .layers import LAYERS, Layer, Residual

_CONFIG_KEY = "__fastcnn_config__"
FORMAT_VERSION = 1


class Sequential(Layer):
    """A chain of layers; itself a layer.

    ``state_dict()`` uses PyTorch-style dotted names (``"0.weight"``, ``"3.body.1.running_mean"``).
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a fastcnn layer")
        self.layers = list(layers)
        self._args = {}

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out):
        for layer in reversed(self.layers):
            grad_out = layer.backward(grad_out)
            if grad_out is None:
                break
        return grad_out

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def train(self, mode=True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    @property
    def needs_input_grad(self):
        return self.layers[0].needs_input_grad if self.layers else True

    @needs_input_grad.setter
    def needs_input_grad(self, value):
        if self.layers:
            self.layers[0].needs_input_grad = bool(value)

    def config(self):
        return {"type": "Sequential", "layers": [layer.config() for layer in self.layers]}

    def state_dict(self, prefix=""):
        d = {}
        for i, layer in enumerate(self.layers):
            d.update(layer.state_dict(f"{prefix}{i}."))
        return d

    def load_state_dict(self, state, prefix=""):
        """Load arrays by name; shapes must match; missing or unexpected keys raise ``KeyError``."""
        if not prefix:
            expected = set(self.state_dict())
            unexpected = sorted(set(state) - expected)
            missing = sorted(expected - set(state))
            if unexpected or missing:
                raise KeyError(f"Sequential.load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for i, layer in enumerate(self.layers):
            layer.load_state_dict(state, f"{prefix}{i}.")

    def save(self, path, metadata=None, format="npz"):
        """Write architecture and weights to ``path`` atomically (``.npz``, or ``format="safetensors"``)."""
        save(self, path, metadata, format=format)

    def __repr__(self):
        inner = ",\n".join("  " + repr(layer).replace("\n", "\n  ") for layer in self.layers)
        return f"Sequential(\n{inner}\n)"


def from_config(cfg):
    """Build a layer tree from :meth:`Layer.config` output."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ValueError(f"invalid layer config {cfg!r}")
    kind = cfg["type"]
    if kind == "Sequential":
        return Sequential(*[from_config(c) for c in cfg["layers"]])
    if kind == "Residual":
        return Residual(from_config(cfg["body"]), from_config(cfg["shortcut"]))
    from . import graph

    if kind == "Model":
        return graph.Model.from_config(cfg)
    registry = {**LAYERS, **graph.LAYERS}
    if kind not in registry:
        raise ValueError(f"unknown layer type {kind!r} in checkpoint")
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.get("args", {}).items()}
    return registry[kind](**args)


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync, then rename over it.

    The previous file at ``path`` stays intact if anything fails.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save(model, path, metadata=None, extra=None, format="npz"):
    """Save ``model`` (architecture + state dict + optional JSON metadata) to an ``.npz`` file.

    ``extra`` holds further arrays (optimizer state, training history) under names starting
    with ``"__"``; :func:`load` returns them with ``return_extra=True``.
    ``format="safetensors"`` writes a safetensors file instead: tensors under the state-dict
    (= torch) names, the architecture and metadata as JSON in its string metadata
    (needs ``pip install "fastcnn[safetensors]"``).
    """
    cfg = {"format": FORMAT_VERSION, "model": model.config(), "metadata": metadata or {}}
    if format == "safetensors":
        if extra:
            raise ValueError("save: extra arrays are only stored in .npz checkpoints")
        st = require("safetensors.numpy", "safetensors", "saving safetensors")
        # (not ascontiguousarray: it turns num_batches_tracked's 0-d arrays into 1-d)
        tensors = {k: np.asarray(v, order="C") for k, v in model.state_dict().items()}
        blob = st.save(tensors, metadata={_CONFIG_KEY: json.dumps(cfg)})
        atomic_write(path, lambda f: f.write(blob))
        return
    if format != "npz":
        raise ValueError(f"save: format must be 'npz' or 'safetensors', got {format!r}")
    arrays = {k: np.asarray(v) for k, v in model.state_dict().items()}
    for k, v in (extra or {}).items():
        if not k.startswith("__"):
            raise ValueError(f"extra array names must start with '__', got {k!r}")
        arrays[k] = np.asarray(v)
    arrays[_CONFIG_KEY] = np.frombuffer(json.dumps(cfg).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path, return_metadata=False, return_extra=False):
    """Load a model written by :meth:`Sequential.save` (``.npz`` or safetensors, told apart by
    the file's first bytes).

    Refuses pickled content, files that are not fastcnn checkpoints and truncated files with
    ``ValueError``.  Returns the model, then the metadata dict and the extra arrays if asked.
    """
    path = os.fspath(path)
    if _is_safetensors(path):
        cfg, state = _read_safetensors(path)
        if cfg is None:
            raise ValueError(f"{path}: a safetensors file without a fastcnn architecture record; build the model "
                             "and use model.load_state_dict(fastcnn.model.read_state_dict(path))")
        extra = {}
    else:
        cfg, state, extra = _read_npz(path)
    if cfg.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {cfg.get('format')!r}")
    model = from_config(cfg["model"])
    model.load_state_dict(state)
    out = (model,)
    if return_metadata:
        out += (cfg.get("metadata", {}),)
    if return_extra:
        out += (extra,)
    return out if len(out) > 1 else model


def _is_safetensors(path):
    """safetensors: 8-byte little-endian header length, then a JSON header starting with '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def _read_safetensors(path):
    st = require("safetensors", "safetensors", "reading safetensors")
    try:
        with st.safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        cfg = json.loads(meta[_CONFIG_KEY]) if _CONFIG_KEY in meta else None
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable safetensors file ({exc})") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ValueError(f"{path}: unreadable safetensors file ({exc})") from exc
    return cfg, state


def read_state_dict(path):
    """The arrays of a weights file (fastcnn ``.npz`` or any safetensors file, e.g. one written
    by ``safetensors.torch.save_file``) by name, for ``model.load_state_dict``."""
    path = os.fspath(path)
    if _is_safetensors(path):
        return _read_safetensors(path)[1]
    return _read_npz(path)[1]


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            if _CONFIG_KEY not in z.files:
                raise ValueError(f"{path}: not a fastcnn checkpoint (no architecture record)")
            cfg = json.loads(z[_CONFIG_KEY].tobytes().decode("utf-8"))
            state = {k: z[k] for k in z.files if not k.startswith("__")}
            extra = {k: z[k] for k in z.files if k.startswith("__") and k != _CONFIG_KEY}
    except (zipfile.BadZipFile, EOFError, OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: unreadable or truncated checkpoint ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return cfg, state, extra
