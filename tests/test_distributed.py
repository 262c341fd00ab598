"""Data-parallel training over MPI (fastcnn.distributed): ``mpiexec -n 2`` in subprocesses,
each under a time limit, against one plain process (tests/mpi_worker.py)."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastcnn
from fastcnn import distributed, models

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_worker.py")
# The subprocesses import the fastcnn this process imported (source tree or installed).
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [os.path.dirname(os.path.dirname(os.path.abspath(fastcnn.__file__)))]
    + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
TIMEOUT = 120  # seconds for any one job: a hang fails the test instead of blocking CI


def _have_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return shutil.which("mpiexec") is not None


needs_mpi = pytest.mark.skipif(not _have_mpi(), reason='needs mpi4py and mpiexec: pip install "fastcnn[distributed]"')


def run(args, ranks=None, check=True, cwd=None):
    cmd = ([shutil.which("mpiexec"), "-n", str(ranks)] if ranks else []) + [sys.executable] + args
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=cwd or os.path.dirname(WORKER), env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    proc.seconds = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def worker(tmp_path, mode, model, backend, batch, steps=20, ranks=None, *extra):
    out = str(tmp_path / f"{mode}-{ranks}.npz")
    run([WORKER, mode, model, backend, str(batch), str(steps), out, *extra], ranks=ranks)
    with np.load(out) as f:
        return dict(f)


def update_error(a, b, init):
    """Per tensor: ``|a - b| / |a - init|`` (norms): the difference of two runs relative to how
    far training moved the tensor."""
    return {k: np.linalg.norm((a[k].astype(np.float64) - b[k]).ravel())
            / max(np.linalg.norm((a[k].astype(np.float64) - init[k]).ravel()), 1e-30)
            for k in a if a[k].dtype == np.float32}


# Two ranks sum each batch's gradient as two half-batch sums (the kernels' fixed slot order
# and BLAS blocking differ from the whole batch's), so the two runs differ by float32 rounding
# in the gradients, compounded over 20 steps: observed <= 7e-6 of each tensor's total update;
# 1e-4 leaves a margin and still fails for any real error (a wrong weight per shard or a
# missed rank moves whole tensors by O(1) of their update).
RTOL = 1e-4
ADAM_TOL = 2e-2  # test_sync_batchnorm_matches_one_process_adam says why


# --------------------------------------------------------------------------- no MPI needed

def test_shard_covers_the_batch_in_order():
    for n in (0, 1, 5, 32, 33, 100):
        for size in (1, 2, 3, 4, 7):
            parts = [distributed.shard(np.arange(n), r, size) for r in range(size)]
            assert np.array_equal(np.concatenate(parts), np.arange(n))
            lengths = [len(p) for p in parts]
            assert max(lengths) - min(lengths) <= 1
    x, y = distributed.shard((np.zeros((5, 1, 2, 2)), np.arange(5)), 1, 2)
    assert x.shape == (3, 1, 2, 2) and list(y) == [2, 3, 4]


@pytest.mark.parametrize("args", [(np.arange(4), 2, 2), (np.arange(4), -1, 2), (np.arange(4), 0, 0),
                                  ((np.arange(4), np.arange(3)), 0, 2), (np.arange(4), 0.5, 2)])
def test_shard_rejects_bad_arguments(args):
    with pytest.raises((ValueError, TypeError)):
        distributed.shard(*args)


def test_import_and_training_without_mpi4py():
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "import numpy as np, fastcnn, fastcnn.distributed as d\n"
        "from fastcnn.train import fit, make_optimizer\n"
        "from fastcnn.losses import SoftmaxCrossEntropy\n"
        "m = fastcnn.models.build('scratch'); o = make_optimizer('sgd', m.parameters(), 0.01)\n"
        "x = np.zeros((4, 28, 28), np.uint8)\n"
        "fit(m, SoftmaxCrossEntropy(), o, (x, np.arange(4)), epochs=1, batch_size=2, progress=False)\n"
        "try:\n    d.world()\nexcept ImportError as e:\n    print('ERR', e)\n"
        "from fastcnn.cli import main\nprint('EXIT', main(['train', '--distributed', '--model', 'bn']))\n"
    )
    proc = run(["-c", code])
    assert 'ERR distributed training needs mpi4py: pip install "fastcnn[distributed]"' in proc.stdout
    assert "EXIT 1" in proc.stdout and 'pip install "fastcnn[distributed]"' in proc.stderr


class _FakeComm:
    """Enough of a communicator for DistributedCallback's constructor (no MPI)."""

    def __init__(self, size):
        self.size = size

    def Get_rank(self):
        return 0

    def Get_size(self):
        return self.size


@pytest.mark.parametrize("n,batch,match", [(301, 50, "last batch of each epoch has 1 image"),
                                           (300, 3, "batch size 3 .* smaller than the 4 ranks")])
def test_fit_refuses_batches_smaller_than_the_ranks(n, batch, match):
    from fastcnn import losses
    from fastcnn.train import fit, make_optimizer

    m = models.build("scratch")
    with pytest.raises(ValueError, match=match):
        fit(m, losses.SoftmaxCrossEntropy(), make_optimizer("sgd", m.parameters(), 0.01),
            (np.zeros((n, 28, 28), np.uint8), np.zeros(n, np.uint8)), epochs=1, batch_size=batch, progress=False,
            distributed=distributed.DistributedCallback(_FakeComm(4 if batch == 3 else 2)))


# --------------------------------------------------------------------------- under mpiexec

@needs_mpi
@pytest.mark.parametrize("model,backend,batch,opt", [("lenet", "cython", 32, "adam"), ("scratch", "numba", 33, "adam")])
def test_two_ranks_match_one_process(tmp_path, model, backend, batch, opt):
    """2 ranks x batch B/2 == 1 process x batch B after 20 steps (33: shards of 16 and 17)."""
    init = models.build(model, seed=0, in_channels=1).state_dict()
    plain = worker(tmp_path, "plain", model, backend, batch, 20, None, "--optimizer", opt)
    dist = worker(tmp_path, "dist", model, backend, batch, 20, 2, "--optimizer", opt)
    err = update_error(plain, dist, init)
    assert max(err.values()) < RTOL, err
    # 1 rank: the same arithmetic as no MPI at all, bit for bit.
    one = worker(tmp_path, "dist", model, backend, batch, 20, 1, "--optimizer", opt)
    assert all(np.array_equal(plain[k], one[k]) for k in plain)


@needs_mpi
@pytest.mark.parametrize("model,backend,batch", [("bn", "cython", 32), ("scratch", "numba", 33)])
def test_two_ranks_bit_identical_to_accumulated_shards(tmp_path, model, backend, batch):
    """Where the order of the sums is the same, the result is the same bit for bit: 2 ranks ==
    one process that runs both shards of every batch and adds their weighted gradients in
    rank order.  For bn (per-rank BatchNorm statistics) this is what the option means."""
    ghost = worker(tmp_path, "ghost", model, backend, batch, 20, None, "--shards", "2")
    dist = worker(tmp_path, "dist", model, backend, batch, 20, 2)
    params = [k for k in ghost if "running" not in k and "num_batches" not in k]
    assert params and all(np.array_equal(ghost[k], dist[k]) for k in params), \
        {k: float(np.max(np.abs(ghost[k] - dist[k]))) for k in params}


@needs_mpi
@pytest.mark.parametrize("model,sync", [("lenet", False), ("bn", True)])
def test_overlapped_allreduce_is_bit_identical(tmp_path, model, sync):
    """Per-layer Iallreduce during the backward pass: the same sums as the one Allreduce."""
    extra = ("--sync-bn",) if sync else ()
    one = worker(tmp_path, "dist", model, "cython", 16, 10, 2, *extra)
    over = worker(tmp_path, "dist", model, "cython", 16, 10, 2, "--overlap", *extra)
    assert all(np.array_equal(one[k], over[k]) for k in one)
    assert not all(np.array_equal(one[k], models.build(model, seed=0, in_channels=1).state_dict()[k]) for k in one)


@needs_mpi
def test_sync_batchnorm_matches_one_process_sgd(tmp_path):
    """Synchronised statistics: parameters and running statistics as one process (SGD), over 2
    steps (the second uses the first's running statistics and parameters).  Longer runs are
    chaotic: the two stay within 2e-5 of each tensor's update until one rounding-level
    difference flips a discrete choice (a ReLU or a pooling maximum), then part by ~3e-3 --
    at a step that depends on the data and the CPU's kernels (after step 17 on an AMD Zen 4,
    step 8 on an Intel Xeon; on an AMD Zen 3 within 4 of the 8 steps' data, yet not in 5, 6
    or 7 steps' data), while per-rank statistics move 1.weight and 9.weight by > 1e-2."""
    init = models.build("bn", seed=0, in_channels=1).state_dict()
    plain = worker(tmp_path, "plain", "bn", "cython", 32, 2, None, "--optimizer", "sgd")
    dist = worker(tmp_path, "dist", "bn", "cython", 32, 2, 2, "--optimizer", "sgd", "--sync-bn")
    err = update_error(plain, dist, init)
    assert len(err) == 14 and max(err.values()) < RTOL, err
    assert dist["1.num_batches_tracked"] == plain["1.num_batches_tracked"] == 2
    # Per-rank statistics differ from the global batch's: the option does something.
    per_rank = worker(tmp_path, "dist", "bn", "cython", 32, 2, 2, "--optimizer", "sgd")
    assert max(update_error(plain, per_rank, init)[k] for k in ("1.weight", "9.weight")) > 100 * RTOL


@needs_mpi
def test_sync_batchnorm_matches_one_process_adam(tmp_path):
    """The recipe's Adam over 20 steps.  The biases of the convolutions feeding a BatchNorm are
    left out: their true gradient is zero (the normalisation removes them), so Adam turns
    rounding noise into steps of +-lr and they differ between any two summation orders.
    Through the normalised activations that noise reaches the other tensors and, once it flips
    a discrete choice (a ReLU, a pooling maximum), parts the runs chaotically: the largest
    tensor difference is not monotone in the step count (on an AMD Zen 4, 2 / 5 / 10 / 15 / 20
    steps: 9.5e-5 / 5.3e-4 / 3.9e-3 / 1.0e-5 / 3.3e-3 of an update; one process on the numba
    backend against the cython one reads up to 5.3e-4).  ADAM_TOL = 2e-2 is 5x that chaos;
    the nearest real error, per-rank statistics instead of synchronised ones, moves tensors by
    0.19 of their update here, and must exceed 5x the tolerance for the test to mean anything."""
    init = models.build("bn", seed=0, in_channels=1).state_dict()
    plain = worker(tmp_path, "plain", "bn", "cython", 32, 20, None)
    dist = worker(tmp_path, "dist", "bn", "cython", 32, 20, 2, "--sync-bn")
    per_rank = worker(tmp_path, "dist", "bn", "cython", 32, 20, 2)

    def checked(err):
        return {k: v for k, v in err.items() if k not in ("0.bias", "4.bias") and "running" not in k}

    err = checked(update_error(plain, dist, init))
    assert len(err) == 8 and max(err.values()) < ADAM_TOL, err
    assert max(checked(update_error(plain, per_rank, init)).values()) > 5 * ADAM_TOL


@needs_mpi
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failing_rank_ends_the_job(tmp_path, how):
    """Rank 1 raises (-> MPI_Abort) or is killed at step 5 while rank 0 waits in the next
    Allreduce: the whole job exits non-zero, well within the time limit."""
    proc = run([WORKER, "fail", "lenet", "cython", "32", "20", str(tmp_path / "x.npz"), "--how", how],
               ranks=2, check=False)
    assert proc.returncode != 0
    assert proc.seconds < 60
    assert not (tmp_path / "x.npz").exists()
    if how == "raise":
        assert "rank 1 of 2: error: RuntimeError: injected failure at step 5; aborting all ranks" in proc.stderr


@needs_mpi
def test_a_stop_request_on_one_rank_stops_all_at_the_same_step(tmp_path):
    """Only rank 1 asks to stop (a signal) from its 6th step: the flag rides in that step's
    Allreduce, so both ranks end after the same step instead of one waiting forever."""
    out = tmp_path / "s.npz"
    run([WORKER, "stop", "scratch", "numpy", "8", "20", str(out)], ranks=2)
    assert [(tmp_path / f"s.npz.rank{r}").read_text() for r in (0, 1)] == ["6", "6"]


def _mnist():
    data = os.environ.get("FASTCNN_DATA")
    if not data or not os.path.isdir(data):
        pytest.skip("MNIST not found (FASTCNN_DATA)")


def _params(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if not k.startswith("__")}


@needs_mpi
def test_cli_distributed_end_to_end_and_resume(tmp_path):
    """``mpiexec -n 2 fastcnn train --distributed``: only rank 0 prints and writes (one banner,
    one line per epoch, one TensorBoard event file); validation is the whole held-out set; a
    run stopped after one epoch and resumed equals the straight run bit for bit."""
    import json

    _mnist()
    common = ["-m", "fastcnn", "train", "--distributed", "--sync-bn", "--model", "bn", "--limit", "350",
              "--val-split", "50", "--batch-size", "50", "--no-progress", "--checkpoint-every", "4"]
    straight = run(common + ["--epochs", "2", "--out", str(tmp_path / "a"), "--tensorboard", str(tmp_path / "tb")],
                   ranks=2)
    assert straight.stdout.count("test accuracy:") == 1
    assert straight.stderr.count("training bn on 300 mnist images (50 held out") == 1, straight.stderr
    assert "2 MPI ranks (batch 50 split among them, synchronised BatchNorm)" in straight.stderr
    assert straight.stderr.count("epoch 1/2") == 1 and straight.stderr.count("epoch 2/2") == 1
    assert sorted(os.listdir(tmp_path / "a")) == sorted(
        [".fastcnn.lock", "args.json", "best.npz", "checkpoint.npz", "curves.png", "history.csv", "metrics.json",
         "model.npz"])
    events = [f for _, _, files in os.walk(tmp_path / "tb") for f in files if "tfevents" in f]
    assert len(events) == 1, events
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["ranks"] == 2 and 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_images"] == 10000
    assert len(metrics["val_accuracy"]) == 2 and all(v * 50 == round(v * 50) for v in metrics["val_accuracy"])
    run(common + ["--epochs", "1", "--out", str(tmp_path / "b")], ranks=2)
    run(common + ["--resume", str(tmp_path / "b" / "checkpoint.npz"), "--epochs", "2",
                  "--out", str(tmp_path / "b")], ranks=2)
    a, b = _params(tmp_path / "a" / "model.npz"), _params(tmp_path / "b" / "model.npz")
    assert a and all(np.array_equal(a[k], b[k]) for k in a)


@needs_mpi
def test_cli_two_ranks_match_one_process(tmp_path):
    """The same command line on 2 ranks and on one process (SGD, synchronised BatchNorm,
    12 steps of 25: shards of 12 and 13, so the BatchNorm backward sums must be weighted by
    shard size): the same parameters to float32 rounding (RTOL; observed <= 1.1e-5, unweighted
    sums gave 5e-2), the same per-epoch loss to 1e-5.  The convolution biases feeding a
    BatchNorm are left out (true gradient zero: their few rounding-noise steps differ)."""
    import json

    _mnist()
    common = ["-m", "fastcnn", "train", "--model", "bn", "--optimizer", "sgd", "--lr", "0.01", "--limit", "300",
              "--batch-size", "25", "--no-progress", "--backend", "cython"]
    run(common + ["--out", str(tmp_path / "one")])
    run(common + ["--distributed", "--sync-bn", "--out", str(tmp_path / "two")], ranks=2)
    init = models.build("bn", seed=0, in_channels=1).state_dict()
    one, two = _params(tmp_path / "one" / "model.npz"), _params(tmp_path / "two" / "model.npz")
    err = {k: v for k, v in update_error(one, two, init).items() if k not in ("0.bias", "4.bias")}
    assert len(err) == 12 and max(err.values()) < RTOL, err
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert (m1["ranks"], m2["ranks"]) == (1, 2)
    assert abs(m1["train_loss"][0] - m2["train_loss"][0]) < 1e-5
    assert abs(m1["test_accuracy"] - m2["test_accuracy"]) <= 0.002  # a few of 10000 may flip


@needs_mpi
def test_cli_refuses_a_last_batch_smaller_than_the_ranks(tmp_path):
    """301 images in batches of 50 leave 1 image for 2 ranks: refused before training, on
    every rank, with the numbers named; nothing but the lock is written."""
    _mnist()
    proc = run(["-m", "fastcnn", "train", "--distributed", "--model", "scratch", "--limit", "301",
                "--batch-size", "50", "--no-progress", "--out", str(tmp_path / "o")], ranks=2, check=False)
    assert proc.returncode != 0
    assert ("--distributed with 2 ranks: the last batch of each epoch has 1 image(s) (301 images in batches "
            "of 50), fewer than the 2 ranks") in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "o") or os.listdir(tmp_path / "o") == [".fastcnn.lock"]


@needs_mpi
def test_cli_signal_stops_every_rank_and_resumes(tmp_path):
    """SIGTERM to mpiexec (forwarded to every rank) mid-epoch: all ranks stop after the same
    step, rank 0 writes the checkpoint, the job exits 128 + 15; --resume finishes the run."""
    import signal

    _mnist()
    out = tmp_path / "o"
    cmd = [shutil.which("mpiexec"), "-n", "2", sys.executable, "-m", "fastcnn", "train", "--distributed", "--model",
           "bn", "--limit", "3000", "--batch-size", "10", "--no-progress", "--checkpoint-every", "5",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=os.path.dirname(WORKER), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        t0 = time.perf_counter()
        while not (out / "checkpoint.npz").exists() and time.perf_counter() - t0 < TIMEOUT:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.count("interrupted by SIGTERM; checkpoint saved to") == 1, stderr
    assert "test accuracy" not in stdout and not (out / "model.npz").exists()
    from fastcnn.train import load_checkpoint

    _, _, state, steps = load_checkpoint(str(out / "checkpoint.npz"))
    assert state["epoch"] == 0 and 0 < state["step"] < 300 and len(steps["loss"]) == state["step"]
    done = run(["-m", "fastcnn", "train", "--distributed", "--resume", str(out / "checkpoint.npz"), "--no-progress",
                "--out", str(out)], ranks=2)
    assert done.stdout.count("test accuracy:") == 1 and (out / "model.npz").exists()
