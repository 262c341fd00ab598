"""Training-step time of a recipe network under several convolution strategies
(``fastcnn.config(conv=...)``; ``conv:tile`` also sets ``winograd_tile``, e.g. ``auto:2 auto:4``),
alternated within one process: block by block, the order of the strategies rotated each round,
so that a shared machine's slow spells hit every strategy alike.  Prints each strategy's
median step and its ratio to the first strategy's, per round
and overall (the median of the per-round ratios).

Usage (from the repository root):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/strategy_ab.py \\
        cython 2 resnet direct auto winograd [--rounds 12] [--block 2]
"""
import fastcnn  # isort: skip  (first: fastcnn sets the thread defaults before NumPy loads)
import argparse
import json
import time

import numpy as np

from fastcnn import models
from fastcnn.train import recipe_step


def _config(strategy):
    """``fastcnn.config`` of a strategy ``conv`` or ``conv:tile``."""
    conv, _, tile = strategy.partition(":")
    return fastcnn.config(conv=conv, winograd_tile=int(tile) if tile.isdigit() else tile or "auto")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("backend")
    p.add_argument("threads", type=int)
    p.add_argument("model", choices=models.NAMES)
    p.add_argument("strategies", nargs="+")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--block", type=int, default=2, help="steps per strategy and round")
    a = p.parse_args()
    fastcnn.set_backend(a.backend)
    fastcnn.set_num_threads(a.threads)
    _, step = recipe_step(a.model)
    c = 3 if a.model == "resnet" else 1
    rng = np.random.default_rng(0)
    s, bs = models.INPUT_SIZE[a.model], models.RECIPES[a.model]["batch_size"]
    data = [(rng.random((bs, c, s, s), dtype=np.float32), rng.integers(0, 10, bs)) for _ in range(3)]

    for conv in a.strategies:  # warm-up (Numba compilation, first-touch of buffers)
        with _config(conv):
            for i in range(3):
                step(*data[i % 3])
    times = {conv: [] for conv in a.strategies}
    ratios = {conv: [] for conv in a.strategies}
    for r in range(a.rounds):
        k = r % len(a.strategies)
        order = a.strategies[k:] + a.strategies[:k]
        this = {}
        for conv in order:
            with _config(conv):
                t0 = time.perf_counter()
                for i in range(a.block):
                    step(*data[i % 3])
                this[conv] = (time.perf_counter() - t0) / a.block
            times[conv].append(this[conv])
        for conv in a.strategies:
            ratios[conv].append(this[conv] / this[a.strategies[0]])
    print(json.dumps({"model": a.model, "backend": a.backend, "threads": fastcnn.get_num_threads(),
                      "rounds": a.rounds, "block": a.block,
                      "median_ms": {k: round(float(np.median(v)) * 1e3, 2) for k, v in times.items()},
                      "median_ratio": {k: round(float(np.median(v)), 3) for k, v in ratios.items()},
                      "rounds_faster": {k: int(sum(x < 1 for x in v)) for k, v in ratios.items()}}))


if __name__ == "__main__":
    main()
