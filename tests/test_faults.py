"""Fault injection (issue 12): fork children, concurrent inference, corrupt and hostile files,
signals at any moment, non-finite state, output-directory housekeeping.  Signals and forks run
in subprocesses with timeouts, so a hang fails the test instead of stalling the run."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastcnn

from conftest import COMPILED, NEUTRAL_CWD


def _python(code, *args, timeout=180, **kw):
    """Run ``code`` in a fresh interpreter from a neutral directory (installed fastcnn)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=NEUTRAL_CWD,
                          capture_output=True, text=True, timeout=timeout, **kw)


# --------------------------------------------------------------------------- fork safety

_FORK_CHILD = """
    import multiprocessing as mp, sys, warnings
    import numpy as np
    import fastcnn
    from fastcnn import models

    def work(backend):
        fastcnn.set_backend(backend)
        model = models.build("lenet", seed=0).eval()
        x = np.random.default_rng(1).random((64, 1, 28, 28), dtype=np.float32)
        return model.forward(x), fastcnn.get_num_threads()

    if __name__ == "__main__":
        backend = sys.argv[1]
        fastcnn.set_backend(backend)
        fastcnn.set_num_threads(fastcnn._threads.max_threads())
        ref, _ = work(backend)  # the parent's thread pools are now running
        for method in ("fork", "forkserver", "spawn"):
            with mp.get_context(method).Pool(2) as pool:
                outs = pool.map(work, [backend] * 2, chunksize=1)
            for out, threads in outs:
                # one thread in a forked child: the dense layers' GEMM blocks sum in another
                # order than at two threads, so agreement is to float32 rounding
                np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
                assert threads == (1 if method == "fork" else fastcnn.get_num_threads()), (method, threads)
            print(method, "ok", flush=True)
"""


@pytest.mark.parametrize("backend", COMPILED)
def test_fork_forkserver_spawn_children_after_threads_work(backend, tmp_path):
    script = tmp_path / "forkcheck.py"  # spawn/forkserver children re-import the main module
    script.write_text(textwrap.dedent(_FORK_CHILD))
    r = subprocess.run([sys.executable, str(script), backend], cwd=NEUTRAL_CWD, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["fork", "ok", "forkserver", "ok", "spawn", "ok"], r.stdout


@pytest.mark.parametrize("backend", COMPILED)
def test_forked_child_asking_for_threads_gets_one_with_a_warning(backend):
    r = _python("""
        import os, sys, warnings
        import numpy as np
        import fastcnn
        from fastcnn import models
        fastcnn.set_backend(sys.argv[1]); fastcnn.set_num_threads(2)
        m = models.build("bn", seed=0)
        x = np.random.default_rng(0).random((100, 1, 28, 28), dtype=np.float32)
        m.forward(x)
        pid = os.fork()
        if pid == 0:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                fastcnn.set_num_threads(2)
            ok = fastcnn.get_num_threads() == 1 and any("fork" in str(i.message) for i in w)
            m.forward(x)  # would hang (Cython) or abort (Numba) in a thread pool
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """, backend, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "0", r.stdout + r.stderr[-2000:]


# --------------------------------------------------------------------------- concurrency

@pytest.mark.parametrize("name", ["lenet", "bn"])
def test_inference_from_many_threads_is_exact(backend, name):
    """One model, 4 threads, batches of mixed sizes (1, odd, chunked): every output equals the
    single-threaded one byte for byte.  (Before per-thread workspaces the layers' shared
    scratch buffers gave wrong logits without an error.)"""
    import threading

    from fastcnn import models

    model = models.build(name, seed=0).eval()
    rng = np.random.default_rng(0)
    sizes = (1, 3, 17, 40) if backend != "numpy" else (1, 3)  # (the NumPy reference is slow)
    xs = [rng.random((n, 1, 28, 28), dtype=np.float32) for n in sizes]
    refs = [model.forward(x) for x in xs]
    bad, errors = [], []

    def serve(i):
        try:
            for r in range(6 if backend != "numpy" else 2):
                k = (i + r) % len(xs)
                if model.forward(xs[k]).tobytes() != refs[k].tobytes():
                    bad.append((i, k))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not bad, (errors, bad)


def test_training_one_model_from_two_threads_is_refused():
    import threading

    from fastcnn import losses, models

    model = models.build("scratch", seed=0)
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    loss = losses.SoftmaxCrossEntropy()
    loss.forward(model.forward(x), np.array([1, 2]))  # a step in progress in this thread
    seen = []

    def other():
        try:
            model.forward(x)
        except RuntimeError as exc:
            seen.append(str(exc))

    t = threading.Thread(target=other)
    t.start()
    t.join(60)
    assert seen and "two threads" in seen[0]
    model.backward(loss.backward())  # the step completes here
    t = threading.Thread(target=other)  # and then another thread may train
    t.start()
    t.join(60)
    assert len(seen) == 1
    model.eval()
    t = threading.Thread(target=other)  # inference is never refused
    t.start()
    t.join(60)
    assert len(seen) == 1
