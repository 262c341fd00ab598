"""Measurements for docs/DISTRIBUTED.md.

``python benches/probes/dist_bench.py throughput MODEL [--steps N]`` (plain, or under ``mpiexec -n K``
with ``--dist``): training images/s of the recipe's global batch on seeded synthetic MNIST-sized
images, timed after 3 warm-up steps; prints one line from rank 0.

``mpiexec -n K python benches/probes/dist_bench.py allreduce``: median time of one in-place float32
``Allreduce`` of each seed network's gradient size (as ``GradientBuffer`` does it).
"""
import argparse
import time

import numpy as np

import fastcnn
from fastcnn import losses, models
from fastcnn.augment import Pipeline
from fastcnn.train import Callback, fit, make_optimizer


def throughput(a):
    recipe = models.RECIPES[a.model]
    batch = a.batch or recipe["batch_size"]
    n = batch * (a.steps + 3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    model = models.build(a.model, seed=0, in_channels=1)
    opt = make_optimizer(recipe["optimizer"], model.parameters(), recipe["lr"])
    dist, rank, ranks = None, 0, 1
    if a.dist:
        from fastcnn import distributed

        comm = distributed.world()
        rank, ranks = comm.Get_rank(), comm.Get_size()
        dist = distributed.DistributedCallback(comm, overlap=a.overlap)
    fastcnn.warmup()
    times = []

    class Clock(Callback):
        def on_step_end(self, trainer, step, loss):
            times.append(time.perf_counter())

    fit(model, losses.SoftmaxCrossEntropy(), opt, (images, labels), epochs=1, batch_size=batch, seed=0,
        augment=Pipeline(input_size=models.INPUT_SIZE[a.model]), callbacks=[Clock()], progress=False,
        distributed=dist)
    if rank == 0:
        rate = a.steps * batch / (times[-1] - times[2])
        print(f"{a.model} batch {batch} ranks {ranks}{' overlap' if a.overlap else ''} "
              f"threads {fastcnn.get_num_threads()} backend {fastcnn.get_backend()}: {rate:.0f} images/s")


def allreduce(a):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    for name in ("bn", "resnet", "lenet"):
        n = sum(p.data.size for p in models.build(name, in_channels=1).parameters())
        buf = np.ones(n + 3, np.float32)
        times = []
        for _ in range(a.repeats):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, [buf, MPI.FLOAT], op=MPI.SUM)
            times.append(time.perf_counter() - t0)
        t = comm.allreduce(float(np.median(times)), op=MPI.MAX)
        if comm.Get_rank() == 0:
            print(f"{name}: {n} parameters, {4 * n / 1e6:.3f} MB, {comm.Get_size()} ranks: "
                  f"median allreduce {t * 1e3:.3f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("throughput", "allreduce"))
    ap.add_argument("model", nargs="?", default="bn")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--dist", action="store_true")
    ap.add_argument("--overlap", action="store_true")
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args()
    throughput(a) if a.what == "throughput" else allreduce(a)


if __name__ == "__main__":
    main()
