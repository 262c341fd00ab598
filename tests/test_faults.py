"""Fault injection (issue 12): fork children, concurrent inference, corrupt and hostile files,
signals at any moment, interruption and resume, non-finite state, a full disk, hostile layer
inputs (fuzzing).  Signals, forks and the fuzzer run in subprocesses with timeouts, so a hang or
a crash fails the test instead of stalling the run."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcnn

from utils import COMPILED, DATA, NEUTRAL_CWD, cores, needs_mnist, run_python

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
        fastcnn.set_num_threads(int(sys.argv[2]))  # every core
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
    r = subprocess.run([sys.executable, str(script), backend, str(cores())], check=False, cwd=NEUTRAL_CWD,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["fork", "ok", "forkserver", "ok", "spawn", "ok"], r.stdout


@pytest.mark.parametrize("backend", COMPILED)
def test_forked_child_asking_for_threads_gets_one_with_a_warning(backend):
    r = run_python("""
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


# --------------------------------------------------------------------------- checkpoint integrity

def _saved(tmp_path, name="scratch"):
    from fastcnn import models

    model = models.build(name, seed=0)
    path = tmp_path / "m.npz"
    model.save(path)
    return model, path


def _zip_header_spans(data):
    """Byte ranges of every zip local header, .npy header and the central directory."""
    import zipfile

    with zipfile.ZipFile(__import__("io").BytesIO(data)) as zf:
        spans = [(i.header_offset, i.header_offset + 30 + len(i.filename) + 20 + 128) for i in zf.infolist()]
        cd = min(i.header_offset for i in zf.infolist())
    end = data.rfind(b"PK\x01\x02")
    first_cd = data.find(b"PK\x01\x02")
    return spans + [(first_cd if first_cd >= 0 else end, len(data))] + [(cd, cd + 1)]


def test_every_single_byte_flip_in_headers_is_refused_or_harmless(tmp_path):
    """Flip each byte of every zip header, .npy header and the central directory (and a sample
    of the data): loading must raise ValueError naming the file, or give the same weights
    (fields zipfile does not use, e.g. a timestamp).  Never a shifted model, never another
    exception type."""
    model, path = _saved(tmp_path)
    ref = model.state_dict()
    data = path.read_bytes()
    positions = set()
    for a, b in _zip_header_spans(data):
        positions.update(range(a, min(b, len(data))))
    positions.update(np.random.default_rng(0).integers(0, len(data), 100).tolist())
    bad = tmp_path / "bad.npz"
    refused = 0
    for pos in sorted(positions):
        for flip in (0x01, 0x80) if pos < 200 else (0x04,):
            mutated = bytearray(data)
            mutated[pos] ^= flip
            bad.write_bytes(bytes(mutated))
            try:
                got = fastcnn.load(bad).state_dict()
            except ValueError as exc:
                assert str(bad) in str(exc)
                refused += 1
                continue
            assert got.keys() == ref.keys() and all(got[k].tobytes() == ref[k].tobytes() for k in ref), pos
    assert refused > len(positions) // 2  # most flips are detected


def test_truncated_and_garbage_checkpoints_raise_value_error(tmp_path):
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "bad.npz"
    for cut in list(range(0, 200, 7)) + [len(data) // 2, len(data) - 22, len(data) - 1]:
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="bad.npz"):
            fastcnn.load(bad)
    for junk in (b"\x93NUMPY\x01\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3,)", b"PK\x03\x04" * 50):
        bad.write_bytes(junk)
        with pytest.raises(ValueError, match="bad.npz"):
            fastcnn.load(bad)
    with pytest.raises(FileNotFoundError):
        fastcnn.load(tmp_path / "missing.npz")


def _write_npz(path, arrays, cfg):
    """A checkpoint written by hand: ``arrays`` plus the architecture record ``cfg``."""
    import json

    arrays = dict(arrays)
    arrays["__fastcnn_config__"] = np.frombuffer(json.dumps(cfg).encode(), np.uint8)
    np.savez(path, **arrays)


def test_tiny_checkpoint_declaring_a_huge_layer_is_refused_without_building_it(tmp_path):
    """A few hundred bytes declaring Dense(200000, 100000) (80 GB of weights) must be refused
    from the declared sizes alone: quickly and without allocating."""
    import time
    import tracemalloc

    cfg = {"format": 1, "metadata": {}, "model": {"type": "Sequential", "layers": [
        {"type": "Dense", "args": {"in_features": 200000, "out_features": 100000, "bias": True}}]}}
    path = tmp_path / "bomb.npz"
    _write_npz(path, {"0.weight": np.zeros((1, 1), np.float32), "0.bias": np.zeros(1, np.float32)}, cfg)
    assert path.stat().st_size < 2000
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="bomb.npz"):
        fastcnn.load(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < 10 << 20, peak


@pytest.mark.parametrize("case", ["object dtype", "wrong dtype", "extra key", "bad config", "bad args", "deep",
                                  "inf weight", "inf buffer"])
def test_inconsistent_checkpoints_are_refused(tmp_path, case):
    from fastcnn import models

    model = models.build("bn", seed=0)
    state, cfg = model.state_dict(), {"format": 1, "metadata": {}, "model": model.config()}
    path = tmp_path / "x.npz"
    if case == "object dtype":
        state["1.weight"] = np.array([None] * 16, dtype=object)
        arrays = dict(state)
        arrays["__fastcnn_config__"] = np.frombuffer(__import__("json").dumps(cfg).encode(), np.uint8)
        import io
        import zipfile

        with zipfile.ZipFile(path, "w") as zf:  # np.savez would pickle: write the member by hand
            for k, v in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, v, allow_pickle=True)
                zf.writestr(k + ".npy", buf.getvalue())
    else:
        if case == "wrong dtype":
            state["0.weight"] = state["0.weight"].astype(np.float64)
        elif case == "extra key":
            state["9.weight"] = np.zeros(3, np.float32)
        elif case == "bad config":
            cfg["model"] = {"type": "Sequential", "layers": [{"type": "Nope"}]}
        elif case == "bad args":
            cfg["model"]["layers"][0]["args"]["stride"] = -3
        elif case == "deep":
            inner = {"type": "Sequential", "layers": []}
            for _ in range(200):
                inner = {"type": "Sequential", "layers": [inner]}
            cfg["model"] = inner
        elif case == "inf weight":
            state["0.weight"][0, 0, 0, 0] = np.inf
        elif case == "inf buffer":
            state["1.running_var"][3] = np.inf
        _write_npz(path, state, cfg)
    with pytest.raises(ValueError, match="x.npz"):
        fastcnn.load(path)


def test_resume_refuses_a_corrupt_checkpoint(tmp_path):
    from fastcnn import models, optim
    from fastcnn.train import load_checkpoint, save_checkpoint

    model = models.build("scratch", seed=0)
    opt = optim.SGD(model.parameters(), 0.1, momentum=0.9)
    for p in model.parameters():
        p.grad[...] = 1.0
    opt.step()
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, model, opt, {"model": "scratch", "epoch": 0, "step": 3}, {"loss": [1.0]})
    load_checkpoint(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the weights: only the CRC can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checkpoint.npz"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- non-finite state

@pytest.mark.parametrize("where", ["parameter", "running statistic", "optimizer"])
def test_no_checkpoint_or_model_with_non_finite_state_is_written(tmp_path, where):
    from fastcnn import models, optim
    from fastcnn.train import NonFiniteLoss, save_checkpoint

    model = models.build("bn", seed=0)
    opt = optim.Adam(model.parameters(), 1e-3)
    for p in model.parameters():
        p.grad[...] = 1.0
    opt.step()
    path = tmp_path / "checkpoint.npz"
    state = {"model": "bn", "epoch": 0, "step": 1}
    save_checkpoint(path, model, opt, state, {"loss": [1.0]})
    before = path.read_bytes()
    if where == "parameter":
        model.parameters()[0].data[0, 0, 0, 0] = np.nan
    elif where == "running statistic":
        model[1].running_var[2] = np.inf
    else:
        opt._v[0][0, 0, 0, 0] = np.inf
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        save_checkpoint(path, model, opt, dict(state, step=2), {"loss": [1.0, 2.0]})
    assert path.read_bytes() == before
    if where != "optimizer":
        with pytest.raises(FloatingPointError, match="non-finite"):
            model.save(tmp_path / "model.npz")
        assert not (tmp_path / "model.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]


# --------------------------------------------------------------------------- resource bombs

def _gz_bomb(path, header, zeros):
    """``header`` followed by ``zeros`` zero bytes, gzip-compressed (written in pieces)."""
    import gzip

    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        block = bytes(1 << 20)
        for _ in range(zeros >> 20):
            f.write(block)


def _bounded(fn, seconds=1.0, megabytes=40):
    """Run ``fn`` (which must raise IDXError); check it was quick and allocated little."""
    import time
    import tracemalloc

    from fastcnn.data import IDXError

    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(IDXError) as ei:
        fn()
    elapsed, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < seconds and peak < megabytes << 20, (elapsed, peak)
    return str(ei.value)


def test_mnist_gz_claiming_a_billion_images_is_refused_from_its_header(tmp_path):
    import struct

    from fastcnn import data

    img, lbl = data.FILES["train"]
    _gz_bomb(tmp_path / (img + ".gz"), bytes([0, 0, 8, 3]) + struct.pack(">3I", 10**9, 28, 28), 64 << 20)
    _gz_bomb(tmp_path / (lbl + ".gz"), bytes([0, 0, 8, 1]) + struct.pack(">I", 10**9), 0)
    assert (tmp_path / (img + ".gz")).stat().st_size < 1 << 20
    msg = _bounded(lambda: data.load_mnist(tmp_path, "train"))
    assert "N <= 60000" in msg and img in msg


def test_gz_idx_declaring_more_than_it_can_inflate_to_is_refused_without_reading_it(tmp_path):
    import struct

    from fastcnn.data import read_idx

    p = tmp_path / "x.gz"
    _gz_bomb(p, bytes([0, 0, 8, 1]) + struct.pack(">I", 2**32 - 1), 32 << 20)  # 32 MiB of 4 GiB declared
    msg = _bounded(lambda: read_idx(p))
    assert "truncated" in msg and "x.gz" in msg


def test_gz_idx_with_endless_trailing_data_is_bounded(tmp_path):
    import struct

    from fastcnn.data import read_idx

    p = tmp_path / "t.gz"
    _gz_bomb(p, bytes([0, 0, 8, 1]) + struct.pack(">I", 4) + bytes(4), 128 << 20)
    msg = _bounded(lambda: read_idx(p))
    assert "trailing" in msg and "more than" in msg


@pytest.fixture
def evil_mirror():
    """A local HTTP mirror: ``/endless/<name>`` streams zeros forever (no Content-Length),
    ``/long/<name>`` sends the right file then junk, ``/good/<name>`` the file itself."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            kind, name = self.path.strip("/").split("/", 1)
            self.send_response(200)
            if kind == "good":
                self.send_header("Content-Length", str(len(files[name])))
            self.end_headers()
            try:
                if kind == "endless":
                    while True:
                        self.wfile.write(bytes(1 << 16))
                self.wfile.write(files[name] + (bytes(1 << 20) if kind == "long" else b""))
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()
    httpd.server_close()


def test_download_stops_at_the_expected_length(tmp_path, evil_mirror, monkeypatch):
    import gzip
    import hashlib
    import time

    from fastcnn import data

    base, files = evil_mirror
    name = "t10k-labels-idx1-ubyte.gz"
    files[name] = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 4]), mtime=0)
    monkeypatch.setattr(data, "SHA256", {name: hashlib.sha256(files[name]).hexdigest()})
    monkeypatch.setattr(data, "SIZES", {name: len(files[name])})
    t0 = time.perf_counter()
    out = data.download_mnist(tmp_path, mirrors=[f"{base}/endless/", f"{base}/long/", f"{base}/good/"],
                              files=[name], timeout=10)
    assert time.perf_counter() - t0 < 10
    assert out[0].read_bytes() == files[name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporaries left
    with pytest.raises(data.DownloadError, match="more than the"):
        data.download_mnist(tmp_path / "x", mirrors=[f"{base}/endless/"], files=[name], timeout=10)


# --------------------------------------------------------------------------- signals


# Runs ``fastcnn train`` in this child and sends itself ``signum`` at a chosen moment of the
# run (through a wrapper around the function named ``hook``), so the moment is exact.
_SIGNAL_AT = """
    import os, signal, sys
    import fastcnn.augment as augment, fastcnn.cli as cli, fastcnn.train as train, fastcnn.model as model
    hook, signum, out, data = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    mod, name = {"evaluate": (train, "evaluate"), "save": (model.Sequential, "save"),
                 "plot": (train, "plot_history"), "batch": (augment.Pipeline, "eval")}[hook]
    real = getattr(mod, name)
    calls = []

    def wrapped(*a, **k):
        calls.append(1)
        # evaluate: as it starts; batch: inside it, preparing its first batch (no validation
        # set, so the first call is the final evaluation's); save: during the first model write
        os.kill(os.getpid(), signum)
        return real(*a, **k)

    setattr(mod, name, wrapped)
    sys.exit(cli.main(["train", "--model", "scratch", "--limit", "50", "--no-progress", "--threads", "1",
                       "--out", out, "--data-dir", data]))
"""


@needs_mnist
@pytest.mark.parametrize("hook", ["batch", "evaluate", "save", "plot"])
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_after_training_keeps_the_trained_weights(tmp_path, hook, signame):
    """A signal during the final evaluation, the model write or the plot: exit 128 + signal
    with the trained model on disk and loadable (before: --out was left empty)."""
    import signal

    signum = getattr(signal, signame)
    out = tmp_path / "out"
    r = run_python(_SIGNAL_AT, hook, int(signum), out, DATA, timeout=300)
    assert r.returncode == 128 + signum, r.stderr[-3000:]
    assert "trained model is saved" in r.stderr
    model = fastcnn.load(out / "model.npz")
    assert model.state_dict()["3.weight"].shape == (10, 1352)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@needs_mnist
@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_sigterm_at_arbitrary_moments_leaves_a_loadable_checkpoint(tmp_path, delay):
    """SIGTERM at several moments after training has started: either the run finished (exit 0),
    or it exited 128 + 15 leaving checkpoint.npz or model.npz that loads."""
    import signal
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fastcnn", "train", "--model", "scratch", "--limit", "3000", "--no-progress",
           "--threads", "1", "--out", str(out), "--data-dir", DATA]
    proc = subprocess.Popen(cmd, cwd=NEUTRAL_CWD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    deadline = time.time() + 120
    while time.time() < deadline and "training scratch" not in line:
        line = proc.stderr.readline()
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=300)
    # -SIGTERM only once the run is complete (the signal came while the interpreter exited)
    done = (out / "metrics.json").exists() and "test accuracy" in stdout
    assert proc.returncode in (0, 128 + signal.SIGTERM) or (proc.returncode == -signal.SIGTERM and done), err
    files = [out / n for n in ("checkpoint.npz", "model.npz") if (out / n).exists()]
    assert files, (proc.returncode, err)
    for f in files:
        fastcnn.load(f)


@needs_mnist
def test_resume_from_a_checkpoint_without_trainer_state_fields_is_refused(tmp_path):
    from fastcnn import models, optim
    from fastcnn.train import save_checkpoint

    model = models.build("scratch", seed=0)
    save_checkpoint(tmp_path / "c.npz", model, optim.SGD(model.parameters(), 0.1), {"model": "scratch"}, {})
    r = run_python("import sys, fastcnn.cli as c; sys.exit(c.main(sys.argv[1:]))", "train", "--resume",
                tmp_path / "c.npz", "--out", tmp_path / "o", "--data-dir", DATA, timeout=120)
    assert r.returncode == 1 and "trainer state lacks" in r.stderr and "c.npz" in r.stderr, r.stderr


# --------------------------------------------------------------------------- interruption, non-finite loss, full disk

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
    c, k = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kind = draw(st.integers(0, 9))
    if kind < 3:  # well formed: float32 NCHW of the layer's channels, at least the kernel's size
        shape = [draw(st.integers(1, 3)), c, draw(st.integers(k, 9)), draw(st.integers(k, 9))]
    elif kind < 8:  # plausible NCHW / NC shapes
        shape = [draw(st.integers(0, 3)), draw(st.sampled_from([c, c, c, c + 1]))]
        shape += [draw(st.integers(0, 9)) for _ in range(draw(st.sampled_from([2, 2, 2, 0])))]
    else:  # anything
        shape = [draw(st.integers(0, 6)) for _ in range(draw(st.integers(0, 5)))]
    dtypes = ["float32"] if kind < 3 else ["float32"] * 4 + ["float64", "float16", "int32", "bool", "complex64",
                                                             "object"]
    return {
        "backend": draw(st.sampled_from(fastcnn.available_backends())),
        "layer": draw(st.sampled_from(["conv", "maxpool", "avgpool", "relu", "dense", "bn", "flatten"])),
        "shape": shape,
        "dtype": draw(st.sampled_from(dtypes)),
        "special": draw(st.sampled_from([None, None, None, "nan", "inf", "-inf"])),
        "view": draw(st.booleans()),
        "c": c,
        "k": k,
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
