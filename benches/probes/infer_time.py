"""Inference time of a recipe network (eval mode, one batch of random images), as the minimum
and the median over rounds.  ``--fold both`` alternates batch norms folded into the
convolutions and not (``fastcnn.config(fold_bn=...)``) in one process; ``--fold none`` leaves
the settings alone (trees without the setting: run trees alternately to compare them):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=. python benches/probes/infer_time.py \\
        cython 2 resnet --batch 1000 --rounds 5 [--fold both|none]
"""
import fastcnn  # isort: skip  (first: fastcnn sets the thread defaults before NumPy loads)
import argparse
import json
import statistics
import time

import numpy as np

from fastcnn import models


def main():
    p = argparse.ArgumentParser()
    p.add_argument("backend")
    p.add_argument("threads", type=int)
    p.add_argument("model", choices=models.NAMES)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--fold", choices=["both", "none"], default="both")
    a = p.parse_args()
    fastcnn.set_backend(a.backend)
    fastcnn.set_num_threads(a.threads)
    c = 3 if a.model == "resnet" else 1
    s = models.INPUT_SIZE[a.model]
    model = models.build(a.model, in_channels=c)
    x = np.random.default_rng(0).random((a.batch, c, s, s), dtype=np.float32)
    model.forward(x[:100])  # (training mode: moves the batch-norm statistics)
    model.eval()
    settings = (True, False) if a.fold == "both" else (None,)
    times: dict = {f: [] for f in settings}

    def run(fold):
        if fold is None:
            return model.forward(x)
        with fastcnn.config(fold_bn=fold):
            return model.forward(x)

    for fold in settings:  # warm-up
        run(fold)
    for _ in range(a.rounds):
        for fold in settings:
            t0 = time.perf_counter()
            run(fold)
            times[fold].append(time.perf_counter() - t0)
    for fold, ts in times.items():
        print(json.dumps({"model": a.model, "backend": a.backend, "threads": fastcnn.get_num_threads(),
                          "fold_bn": fold, "min_ms": round(min(ts) * 1e3, 1),
                          "median_ms": round(statistics.median(ts) * 1e3, 1),
                          "images_per_s": round(a.batch / statistics.median(ts))}))

if __name__ == "__main__":
    main()
