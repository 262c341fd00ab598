"""The output directory of a training run: exclusive lock, writability, stale temporaries.

Used by ``fastcnn train`` (docs/ROBUSTNESS.md, "Output directory"):

* :func:`lock_output_dir` first, before anything is written to the directory;
* :func:`clean_stale_temporaries` right after taking the lock;
* :func:`check_writable` before the first training step;

:func:`claim_output_dir` does the three in that order.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from .model import TEMP_NAME

#: The lock file inside an output directory (holds the PID of the run that owns it).
LOCK_NAME = ".fastcnn.lock"


class OutputDirBusy(RuntimeError):
    """Another process holds the lock on an output directory."""


@contextlib.contextmanager
def lock_output_dir(out: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the directory ``out`` (created if needed) for the ``with`` block.

    The lock is ``flock`` on ``out/.fastcnn.lock``: the kernel releases it when the process
    ends, however it ends, so a killed run never leaves the directory locked.  A second run
    into the same directory fails at once with :class:`OutputDirBusy` naming the PID of the
    first (never waits).  Does nothing where ``fcntl`` does not exist (not POSIX).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise type(exc)(exc.errno, f"output directory {out!r} is not writable ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            except OSError:
                other = "unknown"
            raise OutputDirBusy(f"output directory {out!r} is in use by another fastcnn run (pid {other}); "
                                f"wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_writable(out: str | os.PathLike[str]) -> None:
    """Raise ``PermissionError``/``OSError`` naming ``out`` unless a file can be created in it.

    Creates and removes a small temporary file (as :func:`fastcnn.model.atomic_write` will),
    so an unwritable, read-only or full output directory is reported before training starts.
    """
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".fastcnn-write-test.", suffix=".tmp", dir=out)
    except OSError as exc:
        raise type(exc)(exc.errno, f"output directory {out!r} is not writable ({exc.strerror})") from None
    try:
        os.write(fd, b"x")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(tmp)


def clean_stale_temporaries(out: str | os.PathLike[str]) -> list[str]:
    """Remove temporary files of :func:`fastcnn.model.atomic_write` (``.NAME.XXXXXXXX.tmp``,
    :data:`fastcnn.model.TEMP_NAME`) left in ``out`` by a killed write.

    Only regular files of exactly that naming, directly in ``out``, are removed; call it while
    holding :func:`lock_output_dir`, so no other fastcnn run is writing there.  Returns the
    names removed.
    """
    removed = []
    try:
        entries = list(os.scandir(out))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                pass
    return removed


@contextlib.contextmanager
def claim_output_dir(out: str | os.PathLike[str]) -> Iterator[None]:
    """For the ``with`` block: :func:`lock_output_dir`, then :func:`clean_stale_temporaries` and
    :func:`check_writable` (before the data is read and the first step)."""
    with lock_output_dir(out):
        clean_stale_temporaries(out)
        check_writable(out)
        yield
