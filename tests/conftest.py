import os
from pathlib import Path

import fastcnn  # isort: skip  (before NumPy, so that fastcnn's OpenBLAS thread defaults apply: docs/PERFORMANCE.md)

import numpy as np
import pytest

# Tests read MNIST from $FASTCNN_DATA; default to the shared copy beside the repository.
_shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
if not os.environ.get("FASTCNN_DATA") and _shared.is_dir():
    os.environ["FASTCNN_DATA"] = str(_shared)

BACKENDS = fastcnn.available_backends()
COMPILED = tuple(b for b in BACKENDS if b != "numpy")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test under each available backend, restoring the previous one after."""
    previous = fastcnn.get_backend()
    fastcnn.set_backend(request.param)
    yield request.param
    fastcnn.set_backend(previous)


@pytest.fixture(params=COMPILED)
def compiled(request):
    previous = fastcnn.get_backend()
    fastcnn.set_backend(request.param)
    yield request.param
    fastcnn.set_backend(previous)


@pytest.fixture(params=["chunked", "per_image", "direct"])
def conv_path(request):
    """Run the test with each convolution strategy (``fastcnn.config(conv=...)``): chunked
    im2col + multi-threaded SGEMM, one image at a time per thread, direct kernels."""
    with fastcnn.config(conv=request.param):
        yield request.param


def assert_close(actual, desired, rtol=1e-5, atol=1e-7, what=""):
    """Max abs error within rtol times the output scale (max |desired|)."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} != {desired.shape}"
    scale = np.max(np.abs(desired)) if desired.size else 0.0
    err = np.max(np.abs(actual - desired)) if desired.size else 0.0
    assert err <= rtol * scale + atol, f"{what}: max abs err {err:.3g} > {rtol:g} * scale {scale:.3g} + {atol:g}"


try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:  # pragma: no cover
    HAVE_TORCH = False

needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (pip install .[compare])")


def pytest_report_header(config):
    return f"fastcnn {fastcnn.__version__} from {Path(fastcnn.__file__).parent}; backends {BACKENDS}"


# Subprocesses run from a neutral directory so that `python -m fastcnn` / `python -c` import
# the installed package, never the source tree in the current directory.
NEUTRAL_CWD = Path(__file__).resolve().parent / "_subprocess_cwd"
NEUTRAL_CWD.mkdir(exist_ok=True)
