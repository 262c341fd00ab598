"""Run by tests/test_distributed.py, under ``mpiexec -n K`` or as one plain process.

``python tests/mpi_worker.py MODE MODEL BACKEND BATCH STEPS OUT [options]``

Trains ``MODEL`` for ``STEPS`` steps of global batch ``BATCH`` on seeded synthetic images and
writes the parameters and buffers (rank 0) to ``OUT`` (.npz):

- ``plain``: one process, no MPI (the reference).
- ``dist``: ``fastcnn.train.fit(..., distributed=DistributedCallback(...))``; also checks that
  every rank ends with bit-identical parameters.
- ``ghost``: one process, no MPI, each global batch cut into ``--shards`` shards whose
  gradients are combined as the ranks' are (what per-rank BatchNorm statistics amount to).
- ``fail``: as ``dist``, but rank ``--fail-rank`` raises (``--how raise``) or kills itself
  (``--how kill``) at step 5.
- ``stop``: as ``dist``, but only rank 1 asks to stop (as on a signal) from step 5; every rank
  writes ``OUT.rankR`` with the number of steps it took.
"""
import argparse
import os
import signal

import numpy as np

import fastcnn
from fastcnn import losses, models
from fastcnn.augment import Pipeline
from fastcnn.train import Callback, fit, make_optimizer


def data(n, size):
    rng = np.random.default_rng(1234)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    return images, labels


def build(name, optimizer):
    model = models.build(name, seed=0, in_channels=1)
    recipe = models.RECIPES[name]
    opt = make_optimizer(optimizer or recipe["optimizer"], model.parameters(), recipe["lr"])
    return model, opt


def train(model, opt, images, labels, batch, input_size, **kwargs):
    """One epoch of ``fit`` (seed 0, the default preprocessing padded to the model's input)."""
    fit(model, losses.SoftmaxCrossEntropy(), opt, (images, labels), epochs=1, batch_size=batch, seed=0,
        augment=Pipeline(input_size=input_size), progress=False, **kwargs)


def ghost(model, opt, images, labels, batch, shards, input_size):
    """fit's batches (the order of ``(seed 0, epoch 0)``), each cut into ``shards`` shards."""
    from fastcnn.distributed import shard

    model.train()
    model.needs_input_grad = False
    loss_fn = losses.SoftmaxCrossEntropy()
    pipe = Pipeline(input_size=input_size)
    order = np.random.default_rng([0, 0]).permutation(len(labels))
    acc = [np.zeros_like(p.data) for p in model.parameters()]
    for start in range(0, len(labels), batch):
        idx = order[start:start + batch]
        x, y = pipe(images[idx], None), labels[idx].astype(np.int64)
        for a in acc:
            a[...] = 0
        for r in range(shards):
            xs, ys = shard((x, y), r, shards)
            opt.zero_grad()
            loss_fn.forward(model.forward(xs), ys)
            model.backward(loss_fn.backward())
            for a, p in zip(acc, model.parameters()):
                a += p.grad * np.float32(len(ys) / len(y))
        for a, p in zip(acc, model.parameters()):
            p.grad[...] = a
        opt.step()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("plain", "dist", "ghost", "fail", "stop"))
    ap.add_argument("model")
    ap.add_argument("backend")
    ap.add_argument("batch", type=int)
    ap.add_argument("steps", type=int)
    ap.add_argument("out")
    ap.add_argument("--sync-bn", action="store_true")
    ap.add_argument("--overlap", action="store_true")
    ap.add_argument("--optimizer", default=None)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fail-rank", type=int, default=1)
    ap.add_argument("--how", default="raise")
    a = ap.parse_args()
    fastcnn.set_backend(a.backend)
    fastcnn.set_num_threads(a.threads)
    size = models.INPUT_SIZE[a.model]
    images, labels = data(a.batch * a.steps, 28)
    model, opt = build(a.model, a.optimizer)
    rank = 0
    if a.mode == "plain":
        train(model, opt, images, labels, a.batch, size)
    elif a.mode == "ghost":
        ghost(model, opt, images, labels, a.batch, a.shards, size)
    else:
        from fastcnn import distributed

        comm = distributed.world()
        rank = comm.Get_rank()
        with distributed.abort_on_error(comm):
            dist = distributed.DistributedCallback(comm, sync_bn=a.sync_bn, overlap=a.overlap)
            callbacks = []
            if a.mode == "fail":
                class Fail(Callback):
                    def on_step_end(self, trainer, step, loss):
                        if step == 6 and rank == a.fail_rank:  # after the 6th step, "step 5" counting from 0
                            if a.how == "kill":
                                os.kill(os.getpid(), signal.SIGKILL)
                            raise RuntimeError("injected failure at step 5")
                callbacks.append(Fail())
            if a.mode == "stop":
                done = []

                class Stopped(Exception):
                    pass

                class Stop(Callback):  # what the command line's checkpointing callback does
                    def on_step_end(self, trainer, step, loss):
                        done.append(step)
                        if trainer.stop_code:
                            raise Stopped

                try:
                    train(model, opt, images, labels, a.batch, size, distributed=dist, callbacks=[Stop()],
                          stop_requested=lambda: rank == 1 and len(done) >= 5)
                except Stopped:
                    pass
                with open(f"{a.out}.rank{rank}", "w") as f:
                    f.write(str(len(done)))
                return
            train(model, opt, images, labels, a.batch, size, distributed=dist, callbacks=callbacks)
            if not a.sync_bn:  # running statistics are per rank: keep rank 0's, as DDP does
                distributed.broadcast_buffers(model, comm)
            state = model.state_dict()
            every = comm.gather(state, root=0)
            if rank == 0:
                for r, other in enumerate(every[1:], 1):
                    for k, v in state.items():
                        if not np.array_equal(v, other[k]):
                            raise AssertionError(f"rank {r} differs from rank 0 in {k}")
    if rank == 0:
        np.savez(a.out, **model.state_dict())
        print(f"wrote {a.out} ({len(opt.params)} parameters, {opt.steps} steps)")


if __name__ == "__main__":
    main()
