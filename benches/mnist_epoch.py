"""One MNIST training epoch of a recipe network: ``fastcnn train`` against the same loop in
PyTorch (same initial weights through ``fastcnn.interop.to_torch``, same batches in the same
order, Adam and batch size of the recipe), each in its own process, alternated, with the
same thread count.  The time is the epoch's training loop (fastcnn: ``history.csv``'s
``seconds``; PyTorch: the same loop timed around its batches), loading excluded.  Printed: the
medians of each and their ratio, and the median (min-max) of the rounds' own ratios (each
round's two runs back to back, so a slow phase of the host, minutes long, hits both).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/mnist_epoch.py \\
        --data-dir ../shared/data/mnist --threads 2 --rounds 3 [--model lenet] [--backend cython]
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def torch_epoch(a):
    import numpy as np
    import torch

    import fastcnn
    from fastcnn import augment, data, models
    from fastcnn.interop import to_torch

    torch.set_num_threads(a.threads)
    fastcnn.set_num_threads(a.threads)
    x, y = data.load_mnist(a.data_dir, "train")
    x = x[:, None] if x.ndim == 3 else x  # (N, 1, 28, 28), as fastcnn train feeds it
    rec = models.recipe(a.model, "mnist")
    pipe = augment.from_name("none")
    net = to_torch(models.build(a.model, seed=a.seed)).float().train()
    opt = (torch.optim.Adam if rec["optimizer"] == "adam" else torch.optim.SGD)(net.parameters(), lr=rec["lr"])
    bs, n = rec["batch_size"], len(y)
    order = np.random.default_rng([a.seed, 0]).permutation(n)
    t0 = time.perf_counter()
    for step in range(-(-n // bs)):
        idx = order[step * bs:(step + 1) * bs]
        xb = torch.from_numpy(pipe(x[idx], np.random.default_rng([a.seed, 0, step, 1])))
        yb = torch.from_numpy(y[idx].astype(np.int64))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step()
    seconds = time.perf_counter() - t0
    print(json.dumps({"framework": "torch", "seconds": seconds,
                      "threads": f"torch.get_num_threads()={torch.get_num_threads()}"}))


def fastcnn_epoch(a):
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fastcnn", "train", "--model", a.model, "--epochs", "1", "--threads",
               str(a.threads), "--backend", a.backend, "--data-dir", a.data_dir, "--seed", str(a.seed),
               "--out", out, "--no-progress"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "history.csv")) as f:
            row = next(csv.DictReader(f))
    return float(row["seconds"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True)
    p.add_argument("--model", default="lenet")
    p.add_argument("--backend", default="cython")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=["torch"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        return torch_epoch(a)
    times = {"fastcnn": [], "torch": []}
    for r in range(a.rounds):
        for name in (("fastcnn", "torch") if r % 2 == 0 else ("torch", "fastcnn")):
            if name == "fastcnn":
                t = fastcnn_epoch(a)
            else:
                out = subprocess.run([sys.executable, __file__, "--child", "torch"] + sys.argv[1:], check=True,
                                     capture_output=True, text=True).stdout
                t = json.loads(out.strip().splitlines()[-1])["seconds"]
            times[name].append(t)
            print(f"# round {r + 1} {name}: {t:.2f} s", flush=True)
    f, t = statistics.median(times["fastcnn"]), statistics.median(times["torch"])
    ratios = [x / y for x, y in zip(times["fastcnn"], times["torch"])]  # (each round's pair, side by side)
    print(f"{a.model} one MNIST epoch, {a.threads} thread(s), median of {a.rounds}: fastcnn ({a.backend}) "
          f"{f:.2f} s, PyTorch {t:.2f} s: {f / t:.2f}x the time; per round {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    main()
