"""Data-parallel training over MPI (``mpi4py``): every rank holds the model, trains on its
shard of each global batch, and one in-place ``Allreduce`` per step sums the gradients.

Run with ``mpiexec -n K fastcnn train --distributed ...``; design, launch recipes and the
cost model are in docs/DISTRIBUTED.md.  Needs the optional extra: ``pip install
"fastcnn[distributed]"`` (mpi4py; the ``mpich`` wheel brings ``mpiexec``).  Nothing here
imports mpi4py until it is used, so ``import fastcnn`` does not need it.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from . import _config
from . import train as _train

if TYPE_CHECKING:
    from .layers import Layer, Parameter

#: An ``mpi4py.MPI.Comm`` (mpi4py is optional, so typed loosely).
Comm = Any

_HINT = 'pip install "fastcnn[distributed]"'


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"distributed training needs mpi4py: {_HINT} ({exc})") from None
    return MPI


def world() -> Comm:
    """``MPI.COMM_WORLD`` (initialising MPI on first use)."""
    return _mpi().COMM_WORLD


# --------------------------------------------------------------------------- sharding

def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``(lo, hi)``: rank ``rank`` of ``size`` takes items ``lo:hi`` of ``n``.  Contiguous
    blocks in rank order whose sizes differ by at most one, so the shards of all ranks,
    concatenated in rank order, are the whole batch."""
    for name, v in (("n", n), ("rank", rank), ("size", size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"shard: {name} must be an int, got {v!r}")
    if size < 1 or not 0 <= rank < size or n < 0:
        raise ValueError(f"shard: need 0 <= rank < size and n >= 0, got rank {rank}, size {size}, n {n}")
    return rank * n // size, (rank + 1) * n // size


def shard(batch: Any, rank: int, size: int) -> Any:
    """Rank ``rank``'s share of a global batch: an array (or index array) sliced along its
    first axis, or a tuple/list of them sliced alike (e.g. ``(x, y)``).  See
    :func:`shard_bounds`."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("shard: empty tuple")
        n = len(batch[0])
        if any(len(b) != n for b in batch):
            raise ValueError(f"shard: arrays of different lengths {[len(b) for b in batch]}")
        lo, hi = shard_bounds(n, rank, size)
        return type(batch)(b[lo:hi] for b in batch)
    lo, hi = shard_bounds(len(batch), rank, size)
    return batch[lo:hi]


# --------------------------------------------------------------------------- gradients

class GradientBuffer:
    """The gradients of ``params`` as views into one contiguous float32 buffer (``flat``),
    followed by ``extra`` scalar slots, so the whole step is one in-place ``Allreduce``
    without packing copies.  A parameter whose ``grad`` was replaced by another array is
    copied back in and re-attached (:meth:`attach`)."""

    def __init__(self, params: Iterable[Parameter], extra: int = 0):
        self.params = list(params)
        self.size = sum(p.data.size for p in self.params)
        self.flat = np.zeros(self.size + extra, np.float32)
        self.grads = self.flat[:self.size]
        self.extra = self.flat[self.size:]
        self._views: list[np.ndarray] = []
        self.offsets: list[int] = []
        off = 0
        for p in self.params:
            v = self.flat[off:off + p.data.size].reshape(p.data.shape)
            v[...] = p.grad
            p.grad = v
            self._views.append(v)
            self.offsets.append(off)
            off += p.data.size

    @property
    def nbytes(self) -> int:
        return self.grads.nbytes

    def attach(self) -> None:
        """Make every ``param.grad`` a view of :attr:`flat` again (copying its values in)."""
        for p, v in zip(self.params, self._views):
            if p.grad is not v:
                v[...] = p.grad
                p.grad = v

    def allreduce(self, comm: Comm, scale: float | None = None) -> None:
        """Scale the gradients by ``scale`` (this rank's share) and sum :attr:`flat` over
        ``comm`` in place: one ``Allreduce``."""
        MPI = _mpi()
        self.attach()
        if scale is not None and scale != 1.0:
            np.multiply(self.grads, np.float32(scale), out=self.grads)
        comm.Allreduce(MPI.IN_PLACE, [self.flat, MPI.FLOAT], op=MPI.SUM)


def broadcast_model(model: Layer, comm: Comm, root: int = 0) -> None:
    """Copy every parameter and buffer (BatchNorm running statistics) of ``root`` to all
    ranks, in place."""
    for p in model.parameters():
        comm.Bcast(p.data, root=root)
    broadcast_buffers(model, comm, root)


def broadcast_buffers(model: Layer, comm: Comm, root: int = 0) -> None:
    """Copy ``root``'s BatchNorm running statistics to every rank (what PyTorch DDP does by
    default before each forward; the ranks' own are overwritten)."""
    for layer in model.modules():
        for name in getattr(layer, "_buffers", ()):
            arr = getattr(layer, name)
            if isinstance(arr, np.ndarray):
                comm.Bcast(arr, root=root)


# --------------------------------------------------------------------------- BatchNorm

class BatchNormSync:
    """Synchronised BatchNorm statistics over ``comm`` (see :func:`sync_batchnorm`).

    Each rank's per-channel count, mean and biased variance (float64) are gathered and
    combined in rank order (Chan et al.'s pairwise formula: no catastrophic cancellation), so
    every rank computes bit-identical statistics; the backward sums likewise (weighted by
    the shard sizes, which may differ by one image).  Two small
    ``Allgather`` per BatchNorm layer and step (forward and backward).
    """

    def __init__(self, comm: Comm):
        self.comm = comm

    def _gather(self, *arrays):
        mine = np.concatenate([np.atleast_1d(np.asarray(a, np.float64)) for a in arrays])
        every = np.empty((self.comm.Get_size(), mine.size), np.float64)
        self.comm.Allgather(mine, every)
        return every

    def stats(self, count: int, mean: np.ndarray, var: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """The global batch's count, per-channel mean and biased variance (float64), from this
        rank's."""
        c = mean.size
        every = self._gather(count, mean, var)
        counts, means, varis = every[:, :1], every[:, 1:1 + c], every[:, 1 + c:]
        total = counts.sum()
        gmean = (counts * means).sum(axis=0) / total
        gvar = (counts * (varis + (means - gmean) ** 2)).sum(axis=0) / total
        return int(total), gmean, gvar

    def grad_sums(self, count: int, gsum: np.ndarray, gdot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The backward sums of the global batch, in this rank's scale.  Each rank's loss is
        the mean over its own shard (its gradients are weighted by its share ``count / total``
        only in the gradient ``Allreduce``), so rank r's sums enter weighted by
        ``count_r / count``: the plain sum when the shards are equal (factors exactly 1)."""
        c = gsum.size
        every = self._gather(count, gsum, gdot)
        every = (every[:, 1:] * (every[:, :1] / count)).sum(axis=0)
        return every[:c], every[c:]


def sync_batchnorm(model: Layer, comm: Comm, enabled: bool = True) -> int:
    """Make every ``BatchNorm2D`` of ``model`` normalise with the statistics of the global
    batch (``enabled=False``: back to per-rank statistics).  Returns the number of layers."""
    from .layers import BatchNorm2D

    sync = BatchNormSync(comm) if enabled else None
    n = 0
    for layer in model.modules():
        if isinstance(layer, BatchNorm2D):
            cast(Any, layer).sync = sync
            n += 1
    return n


# --------------------------------------------------------------------------- training

class DistributedCallback(_train.Callback):
    """Data parallelism as a training callback: ``fastcnn.train.fit(..., distributed=cb)``.

    - ``on_train_begin``: broadcast rank 0's parameters and buffers; pack the gradients
      (:class:`GradientBuffer`); synchronise BatchNorm if ``sync_bn``.
    - :meth:`shard_batch` (the loop calls it on every global batch): this rank's shard.
    - ``on_after_backward``: one in-place ``Allreduce`` of ``[gradients * n_rank / N, stop,
      loss sum, correct]`` so every rank steps with the gradient of the global batch; a
      non-zero ``trainer.stop_code`` on any rank becomes the largest one on every rank (so
      all stop after the same step); and (if the loop set ``trainer.step_metrics = (loss,
      correct)`` for its shard) the global batch's mean loss and number correct come back in
      ``trainer.step_metrics``.
    - :meth:`evaluate` (the loop's validation): each rank on its shard, the metrics of the
      whole set on every rank.
    - ``on_epoch_end``: ``seconds`` the slowest rank's, ``images_per_s`` the global batch
      throughput over that time (the loss and accuracy are already the global batch's).

    ``overlap=True`` (as Horovod): each layer's slice of the buffer starts its own
    non-blocking ``Iallreduce`` as soon as that layer's backward has run, while the earlier
    layers' backward continues; ``on_after_backward`` waits for them and reduces the three
    scalars.  Same sums, in the same order for 2 ranks (bit-identical to ``overlap=False``).
    """

    def __init__(self, comm: Comm = None, sync_bn: bool = False, overlap: bool = False):
        self.comm = world() if comm is None else comm
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.sync_bn, self.overlap = bool(sync_bn), bool(overlap)
        self._buckets: list[tuple[int, int]] = []
        self._started: set[int] = set()
        self._requests: list[Any] = []
        self.buffer: GradientBuffer | None = None
        self.n_local = self.n_global = 0

    # helpers the loop calls -------------------------------------------------------------
    def shard_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This rank's shard of the global batch ``(x, y)``; remembers both sizes."""
        if len(y) < self.size:
            raise ValueError(f"a global batch of {len(y)} images cannot be split over {self.size} ranks")
        self.n_global = len(y)
        x, y = shard((x, y), self.rank, self.size)
        self.n_local = len(y)
        return x, y

    def evaluate(self, model: Layer, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000,
                 **kwargs: Any) -> tuple[float, float]:
        """:func:`evaluate` over this callback's communicator."""
        return evaluate(model, images, labels, self.comm, batch_size=batch_size, **kwargs)

    # the callback protocol ---------------------------------------------------------------
    def on_train_begin(self, trainer: _train.Trainer) -> None:
        broadcast_model(trainer.model, self.comm)
        self.buffer = GradientBuffer(trainer.model.parameters(), extra=3)
        if self.sync_bn:
            sync_batchnorm(trainer.model, self.comm)
        if self.overlap:
            self._hook_layers(trainer.model)

    def _hook_layers(self, model):
        """One bucket per layer with parameters (consecutive in the buffer); its backward,
        once done, starts that bucket's ``Iallreduce``."""
        index = {id(p): i for i, p in enumerate(self.buffer.params)}
        ends = self.buffer.offsets[1:] + [self.buffer.size]
        for layer in model.modules():
            own = [getattr(layer, n) for n in getattr(layer, "_params", ()) if getattr(layer, n, None) is not None]
            if not own or layer.children():
                continue
            idx = sorted(index[id(p)] for p in own)
            if idx != list(range(idx[0], idx[-1] + 1)):
                raise RuntimeError(f"overlap: the parameters of {layer!r} are not consecutive")
            bucket = len(self._buckets)
            self._buckets.append((self.buffer.offsets[idx[0]], ends[idx[-1]]))
            layer.backward = self._hooked(layer.backward, bucket)
        covered = sum(hi - lo for lo, hi in self._buckets)
        if covered != self.buffer.size:
            raise RuntimeError(f"overlap: layers hold {covered} of the model's {self.buffer.size} parameters")

    def _hooked(self, backward, bucket):
        def hooked(grad_out):
            grad_in = backward(grad_out)
            self._start(bucket)
            return grad_in
        return hooked

    def _start(self, bucket):
        if bucket in self._started or self.n_global == 0:
            return
        MPI = _mpi()
        self.buffer.attach()
        lo, hi = self._buckets[bucket]
        seg = self.buffer.flat[lo:hi]
        scale = self.n_local / self.n_global
        if scale != 1.0:
            np.multiply(seg, np.float32(scale), out=seg)
        self._requests.append(self.comm.Iallreduce(MPI.IN_PLACE, [seg, MPI.FLOAT], op=MPI.SUM))
        self._started.add(bucket)
        MPI.Request.Testall(self._requests)  # lets MPI progress the transfers started so far

    def on_after_backward(self, trainer: _train.Trainer) -> None:
        if self.n_global == 0:
            raise RuntimeError("DistributedCallback: shard_batch was not called for this step")
        if self.buffer is None:
            raise RuntimeError("DistributedCallback: on_train_begin was not called")
        extra = self.buffer.extra
        metrics = getattr(trainer, "step_metrics", None)
        code = int(getattr(trainer, "stop_code", 0) or 0)
        extra[0] = 1.0 if code else 0.0
        if metrics is not None:
            loss, correct = metrics
            extra[1], extra[2] = loss * self.n_local, correct
        else:
            extra[1:] = 0.0
        if self.overlap:
            MPI = _mpi()
            for bucket in range(len(self._buckets)):  # any not started, in the same order everywhere
                self._start(bucket)
            MPI.Request.Waitall(self._requests)
            self._requests, self._started = [], set()
            self.comm.Allreduce(MPI.IN_PLACE, [extra, MPI.FLOAT], op=MPI.SUM)
        else:
            self.buffer.allreduce(self.comm, self.n_local / self.n_global)
        if extra[0] > 0:  # rare: agree on one value (e.g. the signal number) for all ranks
            trainer.stop_code = self.comm.allreduce(code, op=_mpi().MAX)
        if metrics is not None:
            trainer.step_metrics = (float(extra[1]) / self.n_global, float(extra[2]))
        self.n_global = 0

    def on_epoch_end(self, trainer: _train.Trainer, epoch: int, logs: _train.Logs) -> None:
        reduce_logs(logs, self.comm, len(trainer.labels))


def reduce_logs(logs: _train.Logs, comm: Comm, images: int) -> _train.Logs:
    """One epoch's ``logs`` (already those of the global batches) made the same on every
    rank, in place: ``seconds`` the slowest rank's and ``images_per_s`` the epoch's
    ``images`` (all ranks') over that time."""
    seconds = comm.allreduce(float(logs["seconds"]), op=_mpi().MAX)
    logs["seconds"], logs["images_per_s"] = seconds, float(images / max(seconds, 1e-9))
    return logs


def evaluate(model: Layer, images: np.ndarray, labels: np.ndarray, comm: Comm, **kwargs: Any) -> tuple[float, float]:
    """:func:`fastcnn.train.evaluate` with each rank on its shard of the data; the accuracy
    and mean loss of the whole set, on every rank.  BatchNorm running statistics are rank
    0's (:func:`broadcast_buffers`)."""
    MPI = _mpi()
    broadcast_buffers(model, comm)
    x, y = shard((images, labels), comm.Get_rank(), comm.Get_size())
    acc, loss = _train.evaluate(model, x, y, **kwargs) if len(y) else (0.0, 0.0)
    vals = np.array([len(y), round(acc * len(y)), loss * len(y)], np.float64)  # count, correct, loss sum
    comm.Allreduce(MPI.IN_PLACE, vals, op=MPI.SUM)
    return float(vals[1] / vals[0]), float(vals[2] / vals[0])


# --------------------------------------------------------------------------- processes

def default_threads(comm: Comm) -> int:
    """Threads per rank: the cores this rank may run on, divided among the ranks of this
    host whose core sets overlap it (``mpiexec`` without binding: all of them)."""
    MPI = _mpi()
    from ._threads import max_threads

    try:
        mine = set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        mine = set(range(max_threads()))
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        sets = node.allgather(mine)
    finally:
        node.Free()
    sharing = sum(1 for s in sets if s & mine)
    return max(1, len(mine) // max(sharing, 1))


def local_rank(comm: Comm) -> int:
    """This rank's index among the ranks of its host."""
    MPI = _mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank()
    finally:
        node.Free()


class abort_on_error:
    """``with abort_on_error(comm): ...``: an exception on this rank (other than those in
    ``passthrough``) prints one line naming the rank and ends every rank with ``MPI_Abort``,
    so the others never wait forever in a collective for it."""

    def __init__(self, comm: Comm, passthrough: Iterable[type[BaseException]] = ()):
        self.comm, self.passthrough = comm, tuple(passthrough)

    def __enter__(self) -> abort_on_error:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, self.passthrough) or (isinstance(exc, SystemExit) and not exc.code):
            return False
        msg = str(exc).splitlines()[0] if str(exc) else ""
        abort(self.comm, f"error: {type(exc).__name__}: {msg}".rstrip(": "))
        return False  # pragma: no cover - Abort does not return


def abort(comm: Comm, message: str, code: int = 1) -> None:
    """Print ``message`` (naming this rank) and end every rank of the job: ``MPI_Abort``."""
    print(f"fastcnn: rank {comm.Get_rank()} of {comm.Get_size()}: {message}; aborting all ranks",
          file=sys.stderr, flush=True)
    time.sleep(_config.ABORT_GRACE_SECONDS)
    comm.Abort(code)
