"""Interruption and resume, non-finite losses, crash-free handling of hostile layer inputs."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcnn

from conftest import NEUTRAL_CWD

DATA = os.environ.get("FASTCNN_DATA")
needs_mnist = pytest.mark.skipif(not DATA or not Path(DATA).is_dir(), reason="FASTCNN_DATA not set to MNIST")


def _cli(*args):
    return [sys.executable, "-m", "fastcnn", *args]


def _run(args, **kw):
    """Run a command from a neutral directory (the installed fastcnn is imported)."""
    return subprocess.run(args, cwd=NEUTRAL_CWD, **kw)


def _weights(path):
    return fastcnn.load(path).state_dict()


@needs_mnist
def test_sigint_mid_epoch_then_resume_is_bit_identical(tmp_path):
    common = ["--model", "bn", "--limit", "30000", "--threads", "1", "--no-progress", "--data-dir", DATA]
    full = _run(_cli("train", *common, "--out", str(tmp_path / "full")), capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen(_cli("train", *common, "--out", str(out)), cwd=NEUTRAL_CWD, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # wait until training has started (the progress line is printed before the first step)
    deadline = time.time() + 300
    line = ""
    while time.time() < deadline and "training bn" not in line:
        line = proc.stderr.readline()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.fail("training finished before the signal arrived; raise --limit")
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "checkpoint saved" in err
    meta = fastcnn.load(out / "checkpoint.npz", return_metadata=True)[1]
    assert 0 < meta["trainer"]["step"] < 300  # mid-epoch (300 steps of 100 images)
    res = _run(_cli("train", "--resume", str(out / "checkpoint.npz"), "--out", str(out), "--no-progress",
                              "--threads", "1", "--data-dir", DATA), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    a, b = _weights(tmp_path / "full" / "model.npz"), _weights(out / "model.npz")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert res.stdout.strip().splitlines()[-1] == full.stdout.strip().splitlines()[-1]


@needs_mnist
def test_resume_refuses_conflicting_arguments(tmp_path):
    r = _run(_cli("train", "--model", "scratch", "--limit", "20", "--checkpoint-every", "5", "--no-progress",
                            "--out", str(tmp_path), "--data-dir", DATA), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    r = _run(_cli("train", "--resume", str(tmp_path / "checkpoint.npz"), "--model", "lenet",
                            "--out", str(tmp_path), "--data-dir", DATA), capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "checkpoint has model 'scratch'" in r.stderr
    r = _run(_cli("train", "--resume", str(tmp_path / "model.npz"), "--out", str(tmp_path),
                            "--data-dir", DATA), capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "not a training checkpoint" in r.stderr


@needs_mnist
def test_non_finite_loss_stops_training_and_keeps_checkpoint(tmp_path):
    r = _run(_cli("train", "--model", "scratch", "--limit", "400", "--lr", "1e5", "--checkpoint-every",
                            "1", "--no-progress", "--out", str(tmp_path), "--data-dir", DATA),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1
    assert "non-finite" in r.stderr and len(r.stderr.strip().splitlines()) == 2  # banner + one error line
    model = fastcnn.load(tmp_path / "checkpoint.npz")
    assert all(np.all(np.isfinite(v)) for v in model.state_dict().values())
    assert not (tmp_path / "model.npz").exists()


def test_checkpoint_write_failure_keeps_previous(tmp_path, monkeypatch):
    from fastcnn import models, optim
    from fastcnn.train import load_checkpoint, save_checkpoint

    model = models.build("scratch", seed=0)
    opt = optim.SGD(model.parameters(), 0.1, momentum=0.9)
    path = tmp_path / "checkpoint.npz"
    state = {"model": "scratch", "epoch": 0, "step": 3}
    save_checkpoint(path, model, opt, state, {"loss": [1.0, 0.5]})
    before = path.read_bytes()
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, model, opt, dict(state, step=4), {"loss": [1.0, 0.5, 0.2]})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]
    _, _, st, hist = load_checkpoint(path)
    assert st["step"] == 3 and hist["loss"] == [1.0, 0.5]


# --------------------------------------------------------------------------- fuzzing layer inputs

_FUZZ_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import fastcnn
    from fastcnn import layers as L

    def run(case):
        fastcnn.set_backend(case["backend"])
        rng = np.random.default_rng(case["seed"])
        shape = tuple(case["shape"])
        if case["dtype"] == "object":
            x = np.empty(shape, dtype=object)
        else:
            x = rng.standard_normal(shape).astype(case["dtype"])
        if case["special"] and x.size and x.dtype.kind == "f":
            x.flat[:: max(1, x.size // 3)] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[case["special"]]
        if case["view"] and x.ndim >= 1 and x.shape[-1] > 1:
            x = x[..., ::2]
        make = {
            "conv": lambda: L.Conv2D(case["c"], 3, case["k"], case["stride"], case["padding"], rng=0),
            "maxpool": lambda: L.MaxPool2D(case["k"], case["stride"], case["padding"]),
            "avgpool": lambda: L.AvgPool2D(case["k"], case["stride"], case["padding"]),
            "relu": lambda: L.ReLU(),
            "dense": lambda: L.Dense(case["c"], 4, rng=0),
            "bn": lambda: L.BatchNorm2D(case["c"]),
            "flatten": lambda: L.Flatten(),
        }[case["layer"]]
        try:
            layer = make()
            y = layer.forward(x)
            g = layer.backward(np.ones_like(y))
            assert y.dtype == np.float32
            assert g is None or g.shape == np.shape(x), (g.shape, np.shape(x))
            if case["special"] is None and x.dtype.kind == "f" and x.dtype.itemsize >= 4:
                assert np.all(np.isfinite(y)), "non-finite output from finite input"
            return "OK"
        except (ValueError, TypeError) as exc:
            assert str(exc), "empty error message"
            return "ERR " + type(exc).__name__

    for case in json.loads(sys.stdin.read()):
        print(run(case), flush=True)
""")


@st.composite
def fuzz_cases(draw):
    c = draw(st.integers(1, 4))
    if draw(st.integers(0, 9)) < 7:  # mostly plausible NCHW / NC shapes, sometimes anything
        shape = [draw(st.integers(0, 3)), draw(st.sampled_from([c, c, c, c + 1]))]
        shape += [draw(st.integers(0, 9)) for _ in range(draw(st.sampled_from([2, 2, 2, 0])))]
    else:
        shape = [draw(st.integers(0, 6)) for _ in range(draw(st.integers(0, 5)))]
    return {
        "backend": draw(st.sampled_from(fastcnn.available_backends())),
        "layer": draw(st.sampled_from(["conv", "maxpool", "avgpool", "relu", "dense", "bn", "flatten"])),
        "shape": shape,
        "dtype": draw(st.sampled_from(["float32"] * 4 + ["float64", "float16", "int32", "bool", "complex64",
                                                          "object"])),
        "special": draw(st.sampled_from([None, None, None, "nan", "inf", "-inf"])),
        "view": draw(st.booleans()),
        "c": c,
        "k": draw(st.integers(1, 4)),
        "stride": draw(st.integers(1, 3)),
        "padding": draw(st.sampled_from([0, 1, 2, "same", "valid"])),
        "seed": draw(st.integers(0, 1000)),
    }


def _run_cases(cases):
    return _run([sys.executable, "-c", _FUZZ_CHILD], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=600)


FUZZ_CASES = int(os.environ.get("FASTCNN_FUZZ_EXAMPLES", "400"))


def test_fuzz_layer_inputs_never_crash():
    """Hypothesis-drawn layer inputs, run in a subprocess so a crash cannot take pytest down.

    Every case must end in a correct float32 result or a ValueError/TypeError with a message.
    The cases run in one child process; if it dies, each case is rerun alone to name the culprit.
    """
    cases = []

    @settings(max_examples=FUZZ_CASES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=fuzz_cases())
    def collect(case):
        cases.append(case)

    collect()
    r = _run_cases(cases)
    if r.returncode != 0:
        for case in cases:
            one = _run_cases([case])
            assert one.returncode == 0, f"case {case} exited {one.returncode}: {one.stderr[-2000:]}"
        pytest.fail(f"child exited {r.returncode}: {r.stderr[-2000:]}")
    outcomes = r.stdout.split()
    lines = r.stdout.strip().splitlines()
    assert len(lines) == len(cases)
    from collections import Counter

    counts = Counter(lines)
    print(f"fuzz: {len(cases)} cases: {dict(counts)}")
    assert counts["OK"] > len(cases) // 10, counts  # the generator reaches real computations
    assert "ERR ValueError" in counts and "ERR TypeError" in counts
    assert outcomes


def _train_weights(name, backend, threads, steps=6):
    from fastcnn import losses, models
    from fastcnn.train import make_optimizer

    before_b, before_t = fastcnn.get_backend(), fastcnn.get_num_threads()
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(threads)
    try:
        recipe = models.RECIPES[name]
        model = models.build(name, seed=0)
        opt = make_optimizer(recipe["optimizer"], model.parameters(), recipe["lr"])
        loss_fn = losses.SoftmaxCrossEntropy()
        rng = np.random.default_rng(5)
        for _ in range(steps):
            x = rng.random((32, 1, 28, 28), dtype=np.float32)
            y = rng.integers(0, 10, 32)
            opt.zero_grad()
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
        model.train()  # batch statistics: a conv bias before BatchNorm cancels out
        logits = model.forward(np.random.default_rng(6).random((16, 1, 28, 28), dtype=np.float32))
        return model.state_dict(), logits
    finally:
        fastcnn.set_backend(before_b)
        fastcnn.set_num_threads(before_t)


@pytest.mark.parametrize("name", ["bn", "lenet"])
def test_training_is_bit_identical_at_fixed_threads_and_close_across_threads(backend, name):
    """Same seed, backend and threads: identical bytes.  Another thread count changes BLAS's
    summation order, so weights differ by rounding; Adam turns rounding noise in a gradient
    whose true value is 0 (a conv bias before BatchNorm) into steps of size lr, so the check
    across thread counts is on what the network computes: its logits."""
    top = fastcnn._threads.max_threads()
    (a, la), (b, lb) = _train_weights(name, backend, top), _train_weights(name, backend, top)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert la.tobytes() == lb.tobytes()
    if top > 1:
        _, lc = _train_weights(name, backend, 1)
        assert float(np.max(np.abs(la.astype(np.float64) - lc))) <= 1e-3 * float(np.max(np.abs(la)))
