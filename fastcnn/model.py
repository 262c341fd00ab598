"""``Sequential`` and checkpoint files (``.npz``, never pickle)."""
import json
import os
import tempfile
import threading
import zipfile

import numpy as np

from .layers import LAYERS, Layer, Residual

_CONFIG_KEY = "__fastcnn_config__"
FORMAT_VERSION = 1

_STEP_GUARD = threading.Lock()  # check-and-set of Sequential._step_thread


def _claim_training(model):
    """Mark ``model`` as in a training step (forward ... backward) of the calling thread.

    Training mode keeps per-call state (inputs for backward, batch statistics) in the layers,
    so one model cannot take training steps from two threads at once: the second thread gets
    a ``RuntimeError`` instead of silently mixed gradients.  Inference (eval mode) is not
    restricted (the layers' scratch buffers are per thread).
    """
    me = threading.get_ident()
    with _STEP_GUARD:
        other = model._step_thread
        if other is not None and other != me and other in {t.ident for t in threading.enumerate()}:
            raise RuntimeError("this model is in a training step (forward ... backward) in another thread; "
                               "training one model from two threads at once is not supported (inference in "
                               "eval mode is thread-safe)")
        model._step_thread = me


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
        self._step_thread = None

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        if self.training:
            _claim_training(self)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_out):
        if self._step_thread is not None:
            _claim_training(self)  # refuses a backward from another thread
        try:
            for layer in reversed(self.layers):
                grad_out = layer.backward(grad_out)
                if grad_out is None:
                    break
        finally:
            self._step_thread = None
        return grad_out

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def train(self, mode=True):
        self.training = bool(mode)
        self._step_thread = None
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

    def save(self, path, metadata=None):
        """Write architecture and weights to ``path`` (``.npz``) atomically."""
        save(self, path, metadata)

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
    if kind not in LAYERS:
        raise ValueError(f"unknown layer type {kind!r} in checkpoint")
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.get("args", {}).items()}
    return LAYERS[kind](**args)


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


def save(model, path, metadata=None, extra=None):
    """Save ``model`` (architecture + state dict + optional JSON metadata) to an ``.npz`` file.

    ``extra`` holds further arrays (optimizer state, training history) under names starting
    with ``"__"``; :func:`load` returns them with ``return_extra=True``.
    """
    cfg = {"format": FORMAT_VERSION, "model": model.config(), "metadata": metadata or {}}
    arrays = {k: np.asarray(v) for k, v in model.state_dict().items()}
    for k, v in (extra or {}).items():
        if not k.startswith("__"):
            raise ValueError(f"extra array names must start with '__', got {k!r}")
        arrays[k] = np.asarray(v)
    arrays[_CONFIG_KEY] = np.frombuffer(json.dumps(cfg).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path, return_metadata=False, return_extra=False):
    """Load a model written by :meth:`Sequential.save`.

    Refuses pickled content, files that are not fastcnn checkpoints and truncated files with
    ``ValueError``.  Returns the model, then the metadata dict and the extra arrays if asked.
    """
    path = os.fspath(path)
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
