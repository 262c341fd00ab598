"""Writing model files: the architecture record and the state dict in one ``.npz`` (never
pickle) or safetensors file, written atomically, finite values only.

Below the layers (a layer's :meth:`~fastcnn.layers.Layer.save` writes with :func:`save`);
reading, verifying and rebuilding is :mod:`fastcnn.model`, which re-exports these names.
"""
from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol

import numpy as np

from ._optional import require

_CONFIG_KEY = "__fastcnn_config__"
FORMAT_VERSION = 1


class Saveable(Protocol):
    """What :func:`save` needs of a model: its architecture record and its state dict."""

    def config(self) -> dict[str, Any]: ...

    def state_dict(self, prefix: str = "") -> dict[str, np.ndarray]: ...


def _umask() -> int:
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


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
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


def assert_all_finite(arrays: Mapping[str, Any], where: str, error: type[Exception] = FloatingPointError) -> None:
    """Raise ``error`` naming the first array of ``arrays`` (name -> array) holding NaN or Inf.

    Checked before every model or checkpoint is written: parameters, buffers (batch-norm
    running statistics) and optimizer state alike.
    """
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise error(f"non-finite values ({bad} of {arr.size}) in {name!r} {where}")


def save(model: Saveable, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None = None,
         extra: Mapping[str, Any] | None = None, format: str = "npz") -> None:
    """Save ``model`` (architecture + state dict + optional JSON metadata) to an ``.npz`` file.

    ``extra`` holds further arrays (optimizer state, training history) under names starting
    with ``"__"``; :func:`fastcnn.load` returns them with ``return_extra=True``.
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
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in model.state_dict().items()}
    for k, v in (extra or {}).items():
        if not k.startswith("__"):
            raise ValueError(f"extra array names must start with '__', got {k!r}")
        arrays[k] = np.asarray(v)
    assert_all_finite(arrays, f"of the model to be saved to {os.fspath(path)}; not written")
    arrays[_CONFIG_KEY] = np.frombuffer(json.dumps(cfg).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))
