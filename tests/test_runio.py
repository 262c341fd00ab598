"""The output directory of a training run (``fastcnn._runio``): exclusive lock, writability
checked before training, stale temporaries cleaned."""
import os

import pytest

from utils import DATA, needs_mnist, run_python


@needs_mnist
def test_second_run_into_the_same_out_is_refused(tmp_path):
    from fastcnn._runio import lock_output_dir

    out = tmp_path / "out"
    with lock_output_dir(out):  # as a first run would hold it
        r = run_python("import sys, fastcnn.cli as c; sys.exit(c.main(sys.argv[1:]))", "train", "--model", "scratch",
                    "--limit", "10", "--no-progress", "--out", out, "--data-dir", DATA, timeout=120)
    assert r.returncode == 1
    assert f"in use by another fastcnn run (pid {os.getpid()})" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [".fastcnn.lock"]


def test_lock_is_exclusive_and_released_when_the_holder_dies(tmp_path):
    from fastcnn._runio import lock_output_dir

    r = run_python("""
        import os, sys
        from fastcnn._runio import lock_output_dir
        with lock_output_dir(sys.argv[1]):
            os._exit(9)  # killed while holding the lock
    """, tmp_path)
    assert r.returncode == 9
    with lock_output_dir(tmp_path):  # the kernel released it
        r = run_python("""
            import sys
            from fastcnn._runio import OutputDirBusy, lock_output_dir
            try:
                with lock_output_dir(sys.argv[1]):
                    sys.exit(4)
            except OutputDirBusy as exc:
                print(exc)
                sys.exit(3)
        """, tmp_path)
    assert r.returncode == 3 and f"pid {os.getpid()}" in r.stdout, r.stdout + r.stderr


@needs_mnist
def test_unwritable_out_is_reported_before_training(tmp_path, monkeypatch, capsys):
    """An existing --out where no file can be created (simulated: the tests may run as root)
    fails before any data is loaded or any step taken."""
    import tempfile

    from fastcnn import cli, data

    out = tmp_path / "ro"
    out.mkdir()
    real = tempfile.mkstemp

    def no_write(*a, dir=None, **k):
        if dir is not None and os.path.samefile(dir, out):
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", no_write)
    monkeypatch.setattr(data, "load_mnist", lambda *a, **k: pytest.fail("data loaded before the check"))
    rc = cli.main(["train", "--model", "scratch", "--limit", "10", "--no-progress", "--out", str(out),
                   "--data-dir", DATA])
    assert rc == 1
    assert "not writable" in capsys.readouterr().err


def test_stale_temporaries_are_cleaned_and_nothing_else(tmp_path):
    from fastcnn._runio import clean_stale_temporaries

    ours = [".model.npz.ab12_xyz.tmp", ".checkpoint.npz.k3j4h5g6.tmp", ".metrics.json.zzzzzzzz.tmp"]
    others = ["model.npz", ".keep.tmp", "notes.tmp", ".model.npz.TOOLONG123.tmp", ".x.abcdefgh.tmp.bak"]
    for n in ours + others:
        (tmp_path / n).write_bytes(b"x" * 100)
    (tmp_path / ".sub.abcdefgh.tmp").mkdir()  # a directory of that name is not ours
    assert sorted(clean_stale_temporaries(tmp_path)) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + [".sub.abcdefgh.tmp"])


@needs_mnist
def test_train_cleans_stale_temporaries_in_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".model.npz.q1w2e3r4.tmp").write_bytes(bytes(1000))
    r = run_python("import sys, fastcnn.cli as c; sys.exit(c.main(sys.argv[1:]))", "train", "--model", "scratch",
                "--limit", "10", "--no-progress", "--out", out, "--data-dir", DATA, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
