"""Fixtures and hooks of the test suite (the shared helpers are in utils.py)."""
from pathlib import Path

import fastcnn  # isort: skip  (before NumPy, so that fastcnn's OpenBLAS thread defaults apply: docs/PERFORMANCE.md)

# isort: split
import pytest

from utils import BACKENDS, COMPILED  # (also sets FASTCNN_DATA's default)


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


@pytest.fixture(params=["chunked", "per_image", "direct", "winograd"])
def conv_path(request):
    """Run the test with each convolution strategy (``fastcnn.config(conv=...)``): chunked
    im2col + multi-threaded SGEMM, one image at a time per thread, direct kernels, Winograd
    kernels (3x3 stride-1 layers; the others direct)."""
    with fastcnn.config(conv=request.param):
        yield request.param


def pytest_report_header(config):
    return f"fastcnn {fastcnn.__version__} from {Path(fastcnn.__file__).parent}; backends {BACKENDS}"
