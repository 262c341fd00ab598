"""``Sequential`` and checkpoint files (``.npz``, never pickle)."""
import ast
import json
import math
import os
import re
import stat
import struct
import tempfile
import threading
import zipfile
from threading import get_ident

import numpy as np

from ._optional import require
from ._shapes import pair
from .layers import LAYERS, Conv2D, Layer, ReLU, Residual

_CONFIG_KEY = "__fastcnn_config__"
FORMAT_VERSION = 1

_STEP_GUARD = threading.Lock()  # taken only when a model changes training thread


def _claim_training(model, me):
    """Make the calling thread (``me``) the one that takes ``model``'s training steps.

    Training mode keeps per-call state in the layers (inputs for backward, batch statistics),
    so one model cannot take training steps from two threads at once: a thread that finds the
    model in the middle of another live thread's step (forward ... backward) gets a
    ``RuntimeError`` instead of silently mixed gradients.  Inference (eval mode) is not
    restricted (the layers' scratch buffers are per thread).
    """
    with _STEP_GUARD:
        other = model._step_thread
        if (other is not None and other != me and model._in_step
                and other in {t.ident for t in threading.enumerate()}):
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
        self._step_thread = None  # the thread taking training steps (see _claim_training)
        self._in_step = False  # between a training forward and its backward

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        if self.training:
            me = get_ident()
            if self._step_thread != me:
                _claim_training(self, me)
            self._in_step = True
            for layer in self.layers:
                x = layer.forward(x)
            return x
        layers, i = self.layers, 0
        while i < len(layers):  # inference: a Conv2D's following ReLU is fused into its store
            layer = layers[i]
            if (type(layer) is Conv2D and i + 1 < len(layers) and type(layers[i + 1]) is ReLU
                    and not layer.training and not layers[i + 1].training
                    and not _hooked(layer) and not _hooked(layers[i + 1])):
                x, i = layer.forward(x, relu=True), i + 2
                layers[i - 1]._y = None  # as ReLU.forward in eval mode
            else:
                x, i = layer.forward(x), i + 1
        return x

    def backward(self, grad_out):
        if self._in_step and self._step_thread != get_ident():
            _claim_training(self, get_ident())  # refuses a backward into another thread's step
        try:
            for layer in reversed(self.layers):
                grad_out = layer.backward(grad_out)
                if grad_out is None:
                    break
        finally:
            self._in_step = False
        return grad_out

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def train(self, mode=True):
        self.training = bool(mode)
        self._in_step = False
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

    def children(self):
        return {str(i): layer for i, layer in enumerate(self.layers)}

    def save(self, path, metadata=None, format="npz"):
        """Write architecture and weights to ``path`` atomically (``.npz``, or ``format="safetensors"``)."""
        save(self, path, metadata, format=format)

    def __repr__(self):
        inner = ",\n".join("  " + repr(layer).replace("\n", "\n  ") for layer in self.layers)
        return f"Sequential(\n{inner}\n)"


def _hooked(layer):
    """Whether ``layer.forward`` is wrapped on the instance (e.g. by ``fastcnn.viz.trace``, which
    records every layer's output): such layers are run one by one, unfused."""
    return "forward" in vars(layer)


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


def _umask():
    """The process umask, read without changing it (``/proc``), else by setting it back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


#: Name of :func:`atomic_write`'s temporary files: ``.<target name>.<8 random chars>.tmp``.
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def atomic_write(path, write):
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync, then rename over it.

    The previous file at ``path`` stays intact if anything fails.  The new file gets the mode
    of the file it replaces, or else the mode the umask gives a new file (``0o666 & ~umask``).
    Temporaries are named as :data:`TEMP_NAME`; one left by a killed process is removed by
    :func:`fastcnn._runio.clean_stale_temporaries`.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp creates 0600
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


def assert_all_finite(arrays, where, error=FloatingPointError):
    """Raise ``error`` naming the first array of ``arrays`` (name -> array) holding NaN or Inf.

    Checked before every model or checkpoint is written: parameters, buffers (batch-norm
    running statistics) and optimizer state alike.
    """
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise error(f"non-finite values ({bad} of {arr.size}) in {name!r} {where}")


def save(model, path, metadata=None, extra=None, format="npz"):
    """Save ``model`` (architecture + state dict + optional JSON metadata) to an ``.npz`` file.

    ``extra`` holds further arrays (optimizer state, training history) under names starting
    with ``"__"``; :func:`load` returns them with ``return_extra=True``.
    ``format="safetensors"`` writes a safetensors file instead: tensors under the state-dict
    (= torch) names, the architecture and metadata as JSON in its string metadata
    (needs ``pip install "fastcnn[safetensors]"``).  Nothing is written if any parameter,
    buffer or extra array holds NaN or Inf (``FloatingPointError``).
    """
    cfg = {"format": FORMAT_VERSION, "model": model.config(), "metadata": metadata or {}}
    if format == "safetensors":
        if extra:
            raise ValueError("save: extra arrays are only stored in .npz checkpoints")
        st = require("safetensors.numpy", "safetensors", "saving safetensors")
        # (not ascontiguousarray: it turns num_batches_tracked's 0-d arrays into 1-d)
        tensors = {k: np.asarray(v, order="C") for k, v in model.state_dict().items()}
        assert_all_finite(tensors, f"of the model to be saved to {os.fspath(path)}; not written")
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
    assert_all_finite(arrays, f"of the model to be saved to {os.fspath(path)}; not written")
    arrays[_CONFIG_KEY] = np.frombuffer(json.dumps(cfg).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


# --------------------------------------------------------------------------- verified reading

#: dtypes a checkpoint member may have (what :func:`save` writes, in either byte order).
_NPZ_KINDS = "fiub"
_MAX_NPY_HEADER = 10000  # as NumPy's own default limit


def _npy_array(buf, where):
    """Parse one ``.npy`` member held in ``buf`` (a bytearray), checking everything."""
    if len(buf) < 10 or bytes(buf[:6]) != b"\x93NUMPY":
        raise ValueError(f"{where}: not a .npy array (bad magic)")
    major = buf[6]
    if major == 1:
        hlen, start = struct.unpack("<H", bytes(buf[8:10]))[0], 10
    elif major in (2, 3) and len(buf) >= 12:
        hlen, start = struct.unpack("<I", bytes(buf[8:12]))[0], 12
    else:
        raise ValueError(f"{where}: unsupported .npy format version {major}.{buf[7]}")
    if hlen > _MAX_NPY_HEADER or start + hlen > len(buf):
        raise ValueError(f"{where}: .npy header length {hlen} is invalid for a member of {len(buf)} bytes")
    try:
        text = bytes(buf[start:start + hlen]).decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(text)
    except Exception as exc:  # noqa: BLE001 - SyntaxError, ValueError, MemoryError, RecursionError ...
        raise ValueError(f"{where}: corrupt .npy header ({type(exc).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"{where}: corrupt .npy header {text.strip()[:200]!r}")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if not isinstance(descr, str) or not isinstance(fortran, bool) or not isinstance(shape, tuple) or not all(
            type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"{where}: corrupt .npy header {text.strip()[:200]!r}")
    try:
        dtype = np.dtype(descr)
    except Exception:  # noqa: BLE001 - any invalid descr
        raise ValueError(f"{where}: corrupt .npy header: unknown dtype {descr[:50]!r}") from None
    if dtype.kind not in _NPZ_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{where}: dtype {dtype} is not allowed in a checkpoint")
    count = math.prod(shape)
    offset = start + hlen
    if count * dtype.itemsize != len(buf) - offset:
        raise ValueError(f"{where}: header declares {dtype} {shape} ({count * dtype.itemsize} bytes) but "
                         f"the member holds {len(buf) - offset} bytes of data")
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")
    return arr.astype(dtype.newbyteorder("="), order="C", copy=False)


def verify_npz(path):
    """Read every member of the ``.npz`` archive ``path`` and check its integrity.

    Each member must be a stored (uncompressed) ``.npy`` array, as :func:`save` writes: names
    unique, declared sizes within the file, the CRC-32 of every member verified by reading it
    to its end, the ``.npy`` header well formed with a plain numeric dtype and exactly as many
    data bytes as its shape and dtype need.  So nothing larger than the file is ever allocated.

    Returns
    -------
    dict
        member name without ``.npy`` -> array (native byte order, C-contiguous, writable).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming ``path`` and the defect, for anything else.
    """
    path = os.fspath(path)
    size = os.stat(path).st_size
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise ValueError("duplicate member names")
            total = 0
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename!r} is not a .npy array")
                if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
                    raise ValueError(f"member {info.filename!r} is compressed; fastcnn writes stored members")
                total += info.file_size
                if total > size or info.header_offset + info.file_size > size:
                    raise ValueError(f"member {info.filename!r} declares {info.file_size} bytes, more than "
                                     f"the file holds")
            arrays = {}
            for info in infos:
                buf = bytearray(info.file_size)
                view, pos = memoryview(buf), 0
                with zf.open(info) as f:  # the CRC-32 is checked when the member is read to its end
                    while pos < len(buf):
                        n = f.readinto(view[pos:pos + (1 << 24)])
                        if not n:
                            break
                        pos += n
                    if pos != len(buf) or f.read(1):
                        raise ValueError(f"member {info.filename!r}: size differs from its header")
                arrays[info.filename[:-4]] = _npy_array(buf, f"member {info.filename!r}")
    except FileNotFoundError:
        raise
    except ValueError as exc:
        raise ValueError(f"{path}: corrupt checkpoint: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile (bad CRC, header), EOFError, OSError
        raise ValueError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from None
    return arrays


def _declared_state(cfg, prefix="", depth=0):
    """``{name: (shape, dtype)}`` of the state dict the architecture record ``cfg`` declares,
    computed without building any layer (so a record declaring huge layers costs nothing).
    Mirrors the layer constructors; ``tests/test_faults.py`` checks it against them."""
    if depth > 64:
        raise ValueError("architecture record nested too deeply")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("type"), str):
        raise ValueError(f"invalid layer record {str(cfg)[:100]!r}")
    kind = cfg["type"]
    if kind == "Sequential":
        layers = cfg.get("layers")
        if not isinstance(layers, list):
            raise ValueError("Sequential record without a list of layers")
        out = {}
        for i, c in enumerate(layers):
            out.update(_declared_state(c, f"{prefix}{i}.", depth + 1))
        return out
    if kind == "Residual":
        return {**_declared_state(cfg.get("body"), prefix + "body.", depth + 1),
                **_declared_state(cfg.get("shortcut"), prefix + "shortcut.", depth + 1)}
    if kind == "Model":  # a graph model: its nodes' layers under the node names
        nodes = cfg.get("nodes")
        if not isinstance(nodes, list) or not all(isinstance(n, dict) and isinstance(n.get("name"), str)
                                                   for n in nodes):
            raise ValueError("Model record without a list of named nodes")
        out = {}
        for node in nodes:
            out.update(_declared_state(node.get("layer"), f"{prefix}{node['name']}.", depth + 1))
        return out
    from . import graph

    if kind in graph.LAYERS:  # merge layers: no state
        return {}
    if kind not in LAYERS:
        raise ValueError(f"unknown layer type {kind!r}")
    args = cfg.get("args", {})
    if not isinstance(args, dict):
        raise ValueError(f"{kind} record: args must be a mapping")
    f32, out = np.dtype(np.float32), {}
    if kind == "Conv2D":
        ic, oc = pair(args["in_channels"], "in_channels", kind)[0], pair(args["out_channels"], "out_channels", kind)[0]
        kh, kw = pair(args["kernel_size"], "kernel_size", kind)
        out[prefix + "weight"] = ((oc, ic, kh, kw), f32)
        if args.get("bias", True):
            out[prefix + "bias"] = ((oc,), f32)
    elif kind == "Dense":
        i, o = pair(args["in_features"], "in_features", kind)[0], pair(args["out_features"], "out_features", kind)[0]
        out[prefix + "weight"] = ((o, i), f32)
        if args.get("bias", True):
            out[prefix + "bias"] = ((o,), f32)
    elif kind == "BatchNorm2D":
        n = pair(args["num_features"], "num_features", kind)[0]
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[prefix + name] = ((n,), f32)
        out[prefix + "num_batches_tracked"] = ((), np.dtype(np.int64))
    return out


def load(path, return_metadata=False, return_extra=False):
    """Load a model written by :meth:`Sequential.save` (``.npz`` or safetensors, told apart by
    the file's first bytes).

    Every member is verified first (:func:`verify_npz`: CRC, sizes, dtypes, shapes); the
    architecture record must declare exactly the arrays the file holds (names, shapes,
    dtypes), checked before any layer is built, and every value must be finite.  Anything
    else raises ``ValueError`` naming the file (``FileNotFoundError`` if it does not exist).
    Returns the model, then the metadata dict and the extra arrays if asked.
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
    try:
        if not isinstance(cfg, dict):
            raise ValueError("architecture record is not a JSON object")
        if cfg.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported checkpoint format {cfg.get('format')!r}")
        if not isinstance(cfg.get("metadata", {}), dict):
            raise ValueError("metadata is not a JSON object")
        declared = _declared_state(cfg.get("model"))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise ValueError(f"{path}: invalid architecture record ({type(exc).__name__}: {exc})") from None
    missing, unexpected = sorted(set(declared) - set(state)), sorted(set(state) - set(declared))
    if missing or unexpected:
        raise ValueError(f"{path}: state does not match the architecture: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, (shape, dtype) in declared.items():
        if state[k].shape != shape or state[k].dtype != dtype:
            raise ValueError(f"{path}: {k!r} is {state[k].dtype} {state[k].shape}, the architecture declares "
                             f"{dtype} {shape}")
    assert_all_finite(state, f"in {path}", ValueError)
    try:
        model = from_config(cfg["model"])
        model.load_state_dict(state)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: invalid architecture record ({type(exc).__name__}: {exc})") from None
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
    """``(architecture record, state, extra arrays)`` of a verified ``.npz`` (:func:`verify_npz`)."""
    arrays = verify_npz(path)
    if _CONFIG_KEY not in arrays:
        raise ValueError(f"{path}: not a fastcnn checkpoint (no architecture record)")
    raw = arrays.pop(_CONFIG_KEY)
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("architecture record is not a byte string")
        cfg = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: invalid architecture record ({type(exc).__name__}: {exc})") from None
    state = {k: v for k, v in arrays.items() if not k.startswith("__")}
    extra = {k: v for k, v in arrays.items() if k.startswith("__")}
    return cfg, state, extra
