"""Benchmarks: every kernel and training step for each backend and for PyTorch, side by side.

Run: ``pytest benches --benchmark-only --benchmark-group-by=group`` (threads from
``FASTCNN_NUM_THREADS``; PyTorch is given the same number).  ``benches/run_benchmarks.sh``
runs them at 1 and 2 threads and writes the tables of docs/BENCHMARKS.md.
"""
import os
import sys
import time
from pathlib import Path

import fastcnn  # isort: skip  (before NumPy: fastcnn's OpenBLAS thread defaults apply, docs/PERFORMANCE.md)

# isort: split
import pytest

# The helpers shared with the tests (tests/utils.py): BACKENDS, HAVE_TORCH, rng, ...
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# torch is imported only by the torch benchmarks (utils.HAVE_TORCH finds it without importing
# it).  benches/run_benchmarks.sh runs those in processes of their own: torch ships its own
# libgomp.so.1, and whichever OpenMP runtime a process loads first is the one both libraries
# use, with that library's threading settings (docs/PERFORMANCE.md).  Separate processes give
# each side its own defaults.


@pytest.fixture(scope="session", autouse=True)
def _threads():
    n = fastcnn.get_num_threads()
    fastcnn.warmup()
    return n


@pytest.fixture
def use_backend():
    previous = fastcnn.get_backend()

    def use(name):
        if name == "torch":
            import torch

            torch.set_num_threads(fastcnn.get_num_threads())
        else:
            fastcnn.set_backend(name)

    yield use
    fastcnn.set_backend(previous)


def _busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(t) for t in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]  # all but idle and iowait


@pytest.fixture(autouse=True)
def _foreign_load(request):
    """Record how much CPU other processes took while a benchmark ran (from /proc/stat), so a
    disturbed measurement shows in the report instead of passing as a slow kernel."""
    if not os.path.exists("/proc/stat"):
        yield
        return
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count() or 1
    t0, b0, c0 = time.perf_counter(), _busy_jiffies(), sum(os.times()[:2])
    yield
    wall = time.perf_counter() - t0
    others = (_busy_jiffies() - b0) / hz - (sum(os.times()[:2]) - c0)
    bench = request.node.funcargs.get("benchmark")
    if bench is not None and wall > 0:
        bench.extra_info["foreign_cpu_share"] = round(max(0.0, others) / (wall * ncpu), 3)


def pytest_report_header(config):
    return f"fastcnn convolution path: {fastcnn._threads.conv_path_description()}"
