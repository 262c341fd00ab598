"""The one backend registry.

A backend is a module exposing the kernel primitives listed in ``PRIMITIVES`` with the
signatures documented in :mod:`fastcnn._ref` (the NumPy reference, which is the oracle).
``functional.py`` validates arguments and then calls the primitives of the active backend.
"""
import importlib
import os

from ._config import BACKENDS, ENV_BACKEND

PRIMITIVES = (
    "im2col",
    "col2im",
    "cnp_to_ncp_bias",
    "ncp_to_cnp_sum",
    "conv2d_forward_images",
    "conv2d_backward_images",
    "conv2d_direct_forward",
    "conv2d_direct_backward_data",
    "conv2d_direct_backward_weight",
    "linear_forward",
    "linear_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "relu_forward",
    "relu_backward",
    "softmax_xent_forward",
    "softmax_xent_backward",
    "batchnorm_stats",
    "batchnorm_forward",
    "batchnorm_backward_reduce",
    "batchnorm_backward_apply",
    "adam_step",
    # Direct convolutions (no im2col matrix).
    "conv2d_direct_forward",
    "conv2d_direct_backward_data",
    "conv2d_direct_backward_weight",
)

_MODULES = {
    "numpy": "fastcnn._ref",
    "numba": "fastcnn._kernels",
    "cython": "fastcnn._ext",
}

_loaded = {}
_errors = {}
_active = None


def _load(name):
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        return None
    try:
        mod = importlib.import_module(_MODULES[name])
        missing = [p for p in PRIMITIVES if not hasattr(mod, p)]
        if missing:
            raise ImportError(f"backend {name!r} lacks primitives {missing}")
    except Exception as exc:  # not compiled, numba missing, or no writable Numba cache
        _errors[name] = exc
        return None
    _loaded[name] = mod
    return mod


def available_backends():
    """Backends usable in this installation, in the order ``("numpy", "numba", "cython")``."""
    return tuple(name for name in BACKENDS if _load(name) is not None)


def backend_error(name):
    """Why a backend is unavailable (an exception), or None."""
    _load(name)
    return _errors.get(name)


def _default():
    for name in ("cython", "numba", "numpy"):
        if _load(name) is not None:
            return name
    raise RuntimeError("no fastcnn backend could be loaded")  # numpy always loads


def set_backend(name):
    """Select the kernel backend: ``"numpy"``, ``"numba"`` or ``"cython"``."""
    global _active
    if not isinstance(name, str) or name not in BACKENDS or _load(name) is None:
        avail = available_backends()
        extra = ""
        if isinstance(name, str) and name in BACKENDS:
            extra = f" ({name} failed to load: {_errors.get(name)})"
        raise ValueError(f"unknown or unavailable backend {name!r}{extra}; available: {', '.join(avail)}")
    _active = name


def get_backend():
    """Name of the active backend (default: ``"cython"`` if compiled, else ``"numba"``)."""
    global _active
    if _active is None:
        env = os.environ.get(ENV_BACKEND)
        if env:
            set_backend(env.strip().lower())
        else:
            _active = _default()
    return _active


def ops(name=None):
    """The primitive module of backend ``name`` (default: the active one)."""
    name = get_backend() if name is None else name
    mod = _load(name)
    if mod is None:
        set_backend(name)  # raises the ValueError listing available backends
    return mod
