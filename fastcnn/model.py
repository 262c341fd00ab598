"""Model files (``.npz``, never pickle, or safetensors): reading them back, verified.

:func:`load` checks every member (:func:`verify_npz`) and the architecture record against
the arrays before any layer is built.  Writing (:func:`save`, :func:`atomic_write`,
:func:`assert_all_finite`) is :mod:`fastcnn._modelfile`, below the layers (whose ``save``
uses it); it is re-exported here, as are ``Sequential`` and ``from_config`` of
:mod:`fastcnn.layers`.
"""
from __future__ import annotations

import ast
import json
import math
import os
import struct
import zipfile
from typing import Any, cast

import numpy as np

from ._modelfile import _CONFIG_KEY, FORMAT_VERSION, TEMP_NAME, assert_all_finite, atomic_write, save
from ._optional import require
from ._shapes import pair
from .layers import LAYERS, Sequential, from_config

__all__ = ["FORMAT_VERSION", "TEMP_NAME", "Sequential", "assert_all_finite", "atomic_write", "from_config", "load",
           "read_state_dict", "save", "verify_npz"]


# --------------------------------------------------------------------------- verified reading

#: dtypes a checkpoint member may have (what :func:`save` writes, in either byte order).
_NPZ_KINDS = "fiub"
_MAX_NPY_HEADER = 10000  # as NumPy's own default limit


def _npy_array(buf: bytearray, where: str) -> np.ndarray:
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


def verify_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
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
                        n = cast(zipfile.ZipExtFile, f).readinto(view[pos:pos + (1 << 24)])
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


def _declared_state(cfg: Any, prefix: str = "", depth: int = 0) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
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


def load(path: str | os.PathLike[str], return_metadata: bool = False, return_extra: bool = False) -> Any:
    """Load a model written by :func:`save` or a layer's ``save`` (``.npz`` or safetensors, told apart by
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
        extra: dict[str, np.ndarray] = {}
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
    out: tuple[Any, ...] = (model,)
    if return_metadata:
        out += (cfg.get("metadata", {}),)
    if return_extra:
        out += (extra,)
    return out if len(out) > 1 else model


def _is_safetensors(path: str) -> bool:
    """safetensors: 8-byte little-endian header length, then a JSON header starting with '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def _read_safetensors(path: str) -> tuple[Any, dict[str, np.ndarray]]:
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


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of a weights file (fastcnn ``.npz`` or any safetensors file, e.g. one written
    by ``safetensors.torch.save_file``) by name, for ``model.load_state_dict``."""
    path = os.fspath(path)
    if _is_safetensors(path):
        return _read_safetensors(path)[1]
    return _read_npz(path)[1]


def _read_npz(path: str) -> tuple[Any, dict[str, np.ndarray], dict[str, np.ndarray]]:
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
