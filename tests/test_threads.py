"""The threads knob (``fastcnn._threads``): Numba, OpenMP and BLAS together; SciPy's BLAS
single-threaded for the one-pool GEMMs."""
import pytest

import fastcnn

from utils import NEUTRAL_CWD


def test_thread_knob():
    from threadpoolctl import threadpool_info

    before = fastcnn.get_num_threads()
    try:
        fastcnn.set_num_threads(1)
        assert fastcnn.get_num_threads() == 1
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
        import numba

        assert numba.get_num_threads() == 1
        with pytest.raises(ValueError, match="between 1 and"):
            fastcnn.set_num_threads(0)
        with pytest.raises(TypeError):
            fastcnn.set_num_threads("2")
    finally:
        fastcnn.set_num_threads(before)


_BLAS_PROBE = """
import json, sys
{pre}
import fastcnn
from threadpoolctl import threadpool_info
fastcnn.set_num_threads({threads})
libs = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps(dict(single=fastcnn._threads.gemm_blas_single(), gemm=fastcnn._threads._gemm_blas,
                      libs=libs, path=fastcnn._threads.conv_path_description())))
"""


def _blas_probe(pre="", threads=1, env=None):
    import json
    import os
    import subprocess
    import sys

    drop = ("OPENBLAS_THREAD_TIMEOUT", "FASTCNN_NO_THREAD_DEFAULTS")
    full_env = {k: v for k, v in os.environ.items() if k not in drop}
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", _BLAS_PROBE.format(pre=pre, threads=threads)], cwd=NEUTRAL_CWD,
                         env=full_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pre", ["", "import numpy", "import scipy.linalg"])
def test_scipy_blas_runs_single_threaded_and_stays_so(pre):
    """Whatever was imported first, SciPy's BLAS (the one-pool GEMMs) runs one thread and
    keeps it when the threads knob changes; NumPy's BLAS follows the knob."""
    threads = min(2, fastcnn._threads.max_threads())
    r = _blas_probe(pre=pre, threads=threads)
    assert r["single"], r
    assert "one thread pool" in r["path"]
    by_path = dict(r["libs"])
    assert by_path[r["gemm"]["filepath"]] == 1
    others = [n for p, n in r["libs"] if p != r["gemm"]["filepath"]]
    assert others and all(n == threads for n in others), r


def test_two_pools_when_thread_defaults_are_off():
    why = "FASTCNN_NO_THREAD_DEFAULTS"
    r = _blas_probe(env={"FASTCNN_NO_THREAD_DEFAULTS": "1"})
    assert not r["single"] and why in r["gemm"]["why"], r
    assert "two thread pools" in r["path"]


@pytest.mark.parametrize("missing", ["threadpoolctl", "scipy"])
def test_import_and_ops_work_without_optional_blas_control(missing):
    """Without threadpoolctl or SciPy, ``import fastcnn`` still works and the ops take the
    two-pool path (the Cython backend needs SciPy's BLAS and reports itself unavailable)."""
    import os
    import subprocess
    import sys

    code = f"""
import sys
sys.modules[{missing!r}] = None
import numpy as np
import fastcnn
from fastcnn import functional as F
assert not fastcnn._threads.gemm_blas_single()
assert "cannot be imported" in fastcnn._threads.conv_path_description()
x, w = np.ones((3, 2, 6, 6), np.float32), np.ones((4, 2, 3, 3), np.float32)
for name in fastcnn.available_backends():
    fastcnn.set_backend(name)
    y = F.conv2d(x, w, None, 1, 1)
    assert float(y[0, 0, 2, 2]) == 18.0
    F.conv2d_backward(y, x, w, 1, 1)
    assert F.linear(np.ones((3, 5), np.float32), np.ones((2, 5), np.float32)).tolist() == [[5.0, 5.0]] * 3
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=NEUTRAL_CWD, capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items() if k != "FASTCNN_NO_THREAD_DEFAULTS"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
