"""fastcnn: fast CPU convolutional networks, Numba and Cython kernels under a small layer API."""
__version__ = "0.1.0"

import os as _os

from . import _config as _cfg  # (no NumPy: the settings below must precede it)

# Idle threads of OpenMP and OpenBLAS spin only briefly (docs/PERFORMANCE.md, section 2): defaults
# set before NumPy loads OpenBLAS; values in the environment win; FASTCNN_NO_THREAD_DEFAULTS=1 skips them.
if _os.environ.get("FASTCNN_NO_THREAD_DEFAULTS", "") not in ("1", "true", "yes"):
    if "torch" in __import__("sys").modules and "OMP_WAIT_POLICY" not in _os.environ:
        import warnings as _warnings

        _warnings.warn(
            "fastcnn was imported after torch: both now use torch's OpenMP runtime, whose idle "
            "threads spin and can slow fastcnn's kernels several-fold on few cores. Import "
            "fastcnn first, or set OMP_WAIT_POLICY=PASSIVE before starting Python "
            "(docs/PERFORMANCE.md).",
            RuntimeWarning,
            stacklevel=2,
        )
    for _name, _value in _cfg.THREAD_DEFAULTS.items():
        _os.environ.setdefault(_name, _value)

import numpy as _np  # noqa: F401  (NumPy's BLAS loads first, with the defaults above)

from . import _heap, _threads
from ._backend import available_backends, get_backend, set_backend
from ._dispatch import config, get_config
from ._threads import get_num_threads, set_num_threads

_heap.configure()  # freed memory is kept for the next step (docs/PERFORMANCE.md, "Freed memory is kept")

# Before the kernel modules import SciPy (one thread pool: docs/PERFORMANCE.md, section 3).
_threads.init_gemm_blas()

from . import data, export, functional, graph, layers, losses, models, optim, predict  # noqa: E402
from ._summary import summary  # noqa: E402
from .graph import Input, Model  # noqa: E402
from .layers import Parameter  # noqa: E402
from .model import Sequential, load, save  # noqa: E402
from .step import TrainStep  # noqa: E402

__all__ = [
    "__version__",
    "available_backends",
    "get_backend",
    "set_backend",
    "config",
    "get_config",
    "get_num_threads",
    "set_num_threads",
    "warmup",
    "release_memory",
    "data",
    "functional",
    "layers",
    "losses",
    "models",
    "optim",
    "Parameter",
    "Sequential",
    "Model",
    "Input",
    "graph",
    "export",
    "predict",
    "load",
    "save",
    "summary",
    "TrainStep",
]


def release_memory() -> int:
    """Give back to the system the freed memory fastcnn keeps for reuse (freed heap pages and
    NumPy arrays' large freed blocks; docs/PERFORMANCE.md, section 11), e.g. after a large
    inference in a long-running process.  Returns the bytes of large blocks released (the
    heap's pages are returned too but not counted).  Later steps fault their pages in again."""
    return _heap.release()


def warmup(backend: str | None = None) -> None:
    """Compile (or load from Numba's cache) every kernel of ``backend`` (default: all available)
    by running each op once on a tiny input, so the first training step pays no compile time.
    Numba kernels exist in a parallel and a serial compilation; both are loaded."""
    import numpy as np

    from . import _config
    from . import functional as F

    names = available_backends() if backend is None else (backend,)
    previous, threshold = get_backend(), _config.PAR_MIN_WORK
    try:
        for name in names:
            set_backend(name)
            for _config.PAR_MIN_WORK in ((0, 1 << 62) if name == "numba" else (threshold,)):
                _run_every_op(F, np)
    finally:
        _config.PAR_MIN_WORK = threshold
        set_backend(previous)


def _run_every_op(F, np):
    from .layers import Parameter
    from .optim import Adam

    x = np.ones((2, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = F.conv2d(x, w, np.zeros(3, np.float32), 1, 1)
    F.conv2d_backward(y, x, w, 1, 1)
    F.conv2d_backward(y[:1], x[:1], w, 1, 1)
    d = F.linear(x.reshape(2, -1), np.ones((4, 50), np.float32), np.zeros(4, np.float32))
    F.linear_backward(d, x.reshape(2, -1), np.ones((4, 50), np.float32))
    p, idx = F.max_pool2d(x, 2, return_indices=True)
    F.max_pool2d_backward(p, idx, x.shape)
    a = F.avg_pool2d(x, 2)
    F.avg_pool2d_backward(a, x.shape, 2)
    r = F.relu(x)
    F.relu_backward(r, r)
    loss, probs = F.softmax_cross_entropy(np.zeros((2, 3), np.float32), np.array([0, 2]))
    F.softmax_cross_entropy_backward(probs, np.array([0, 2]))
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    for training in (True, False):
        b, cache = F.batch_norm2d(x, ones, zeros, zeros.copy(), ones.copy(), training=training)
        F.batch_norm2d_backward(b, cache, ones)
    prm = Parameter(np.ones(3, np.float32))
    Adam([prm]).step()
