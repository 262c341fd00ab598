"""fastcnn._heap: freed memory is kept for the next training step (each case in a fresh process,
since the thresholds are set once per process at import)."""
import json
import os
import subprocess
import sys

import numpy as np

from fastcnn import _heap

from utils import GLIBC, NEUTRAL_CWD, heap_env, run_python

# Ten 4 MB arrays allocated, written and freed, eight times over: the pattern of a training
# step's activations.  Prints the minor page faults of the last seven rounds and the state.
_ROUNDS = """
import json, resource
import fastcnn, fastcnn._heap as heap
import numpy as np
def round_():
    arrays = [np.ones(1 << 20, np.float32) for _ in range(10)]
    del arrays
round_()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(7):
    round_()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0, "state": heap.state}))
"""


def _run(code=_ROUNDS, **env):
    r = run_python(code, env=heap_env(**env), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@GLIBC
def test_freed_memory_is_reused_without_page_faults():
    keep, system = _run(), _run(FASTCNN_HEAP="system")
    assert keep["state"] == "keep" and system["state"] == "system"
    # glibc's defaults return the freed memory each round and fault thousands of pages back in
    # (about 5,000 per round here); kept, the rounds reuse the same pages.
    assert system["faults"] > 7 * 1000, system
    assert keep["faults"] < system["faults"] / 20, (keep, system)


def test_glibc_environment_variables_rule():
    assert _run(MALLOC_TRIM_THRESHOLD_="131072")["state"] == "environment"


def test_bad_setting_is_refused_at_import():
    r = subprocess.run([sys.executable, "-c", "import fastcnn"], env=dict(os.environ, FASTCNN_HEAP="all"),
                       cwd=NEUTRAL_CWD, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0 and "FASTCNN_HEAP must be one of keep, system, got 'all'" in r.stderr


def test_zeros_aligned_is_an_aligned_contiguous_float32_array_of_zeros():
    for shape in ((1,), (3, 5), (1024, 3136), (0,), (2, 0, 3)):
        for align in (16, 64, 128):
            a = _heap.zeros_aligned(shape, align)
            assert a.shape == shape and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
            assert a.size == 0 or a.ctypes.data % align == 0
            assert not a.any()


# Large arrays (above glibc's 32 MB mmap ceiling): a block freed is handed to the next array of
# its size, written with no page fault; prints what each step saw.
_LARGE = """
import json, resource
import fastcnn, fastcnn._heap as heap
import numpy as np
from numpy._core.multiarray import get_handler_name
n = (64 << 20) // 4
out = {"state": heap.state, "cache": heap.array_cache, "handler": get_handler_name()}
a = np.ones(n, np.float32); first = a.ctypes.data; del a
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
b = np.full(n, 2.0, np.float32)
out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
out["same_block"] = b.ctypes.data == first
out["values_ok"] = bool((b == 2.0).all())
del b
z = np.zeros(n, np.float32)  # (a kept, written block: zeroed)
out["zeros_ok"] = not z.any()
out["zeros_same_block"] = z.ctypes.data == first
print(json.dumps(out))
"""


@GLIBC
def test_large_freed_arrays_are_reused_without_page_faults():
    keep, system = _run(_LARGE), _run(_LARGE, FASTCNN_HEAP="system")
    assert keep["cache"] == "on" and keep["handler"] == "fastcnn_heap_cache", keep
    assert keep["same_block"] and keep["values_ok"] and keep["zeros_ok"] and keep["zeros_same_block"], keep
    assert system["cache"] == "off" and system["handler"] == "default_allocator", system
    assert system["values_ok"] and system["zeros_ok"], system
    # 64 MB written: 16,384 pages of 4 KB (or 32 of 2 MB) faulted in afresh; kept, none (a few
    # allowed for the interpreter's own allocations).
    assert keep["faults"] < 8 and system["faults"] >= 32, (keep, system)


_RELEASE = """
import json
import fastcnn
import numpy as np
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
a = np.ones((100 << 20) // 4, np.float32); del a     # kept by the array cache
small = [np.ones((4 << 20) // 4, np.float32) for _ in range(25)]; del small   # 100 MB of heap
kept = rss()
freed = fastcnn.release_memory()
print(json.dumps({"freed": freed, "drop": kept - rss(), "again": fastcnn.release_memory()}))
"""


@GLIBC
def test_release_memory_gives_the_kept_memory_back():
    r = _run(_RELEASE)
    mb = 1 << 20
    assert 100 * mb <= r["freed"] < 101 * mb and r["again"] == 0, r
    # Both the cached block and the freed heap pages leave the resident set.
    assert r["drop"] > 180 * mb, r
