"""Numba compile time per kernel and per test, as a pytest plugin.

Usage (a fresh Numba cache, so that every kernel compiles):
    NUMBA_CACHE_DIR=$(mktemp -d) PYTHONPATH=benches/probes python -m pytest -p compile_time \
        -p no:cacheprovider tests/test_backend.py -k numba

At the end it prints the seconds spent in Numba's outermost compilations (a kernel's time
includes the helpers compiled into it), by kernel and by test, and their total.
"""
import time

import fastcnn  # noqa: F401  # isort: skip  (before Numba: fastcnn chooses its target)

# isort: split
import pytest
from numba.core import dispatcher

_by_kernel: dict = {}
_by_test: dict = {}
_state = {"depth": 0, "test": "(collection)"}
_compile = dispatcher.Dispatcher.compile


def _timed_compile(self, sig):
    _state["depth"] += 1
    t0 = time.perf_counter()
    try:
        return _compile(self, sig)
    finally:
        _state["depth"] -= 1
        dt = time.perf_counter() - t0
        if _state["depth"] == 0 and dt > 0.05:  # (a cache load takes milliseconds)
            f = self.py_func
            name = f"{f.__module__.rsplit('.', 1)[-1]}.{f.__qualname__}"
            _by_kernel[name] = _by_kernel.get(name, 0.0) + dt
            _by_test[_state["test"]] = _by_test.get(_state["test"], 0.0) + dt


dispatcher.Dispatcher.compile = _timed_compile


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _state["test"] = item.nodeid
    yield


def pytest_terminal_summary(terminalreporter):
    write = terminalreporter.write_line
    write(f"Numba compile time: {sum(_by_kernel.values()):.1f} s")
    for title, table in (("by kernel", _by_kernel), ("by test", _by_test)):
        write(f"-- {title} (s)")
        for name, s in sorted(table.items(), key=lambda kv: -kv[1])[:40]:
            write(f"{s:8.1f}  {name}")
