"""Tabulate paired CIFAR-10 runs, fastcnn against PyTorch, one pair per seed: the epoch-5 (last
epoch) validation accuracy of each, their difference, its mean, standard deviation and
standard error, and a two-sided sign test.

A pair is a ``fastcnn train ... --seed S --out DIR`` run directory (``history.csv``,
``metrics.json``) and the JSON lines of ``benches/probes/cifar_torch.py --seed S --out FILE``.

    python benches/probes/cifar_seeds.py runs/f_s{S} runs/t_s{S}.jsonl 0 1 2 3
    (the literal "{S}" in both patterns is replaced by each seed)
"""
import csv
import json
import math
import os
import sys


def fastcnn_run(path):
    rows = list(csv.DictReader(open(os.path.join(path, "history.csv"))))
    metrics = json.load(open(os.path.join(path, "metrics.json")))
    return {"val": [float(r["val_accuracy"]) for r in rows], "loss": float(rows[-1]["loss"]),
            "test": metrics.get("test_accuracy"), "seconds": [float(r["seconds"]) for r in rows]}


def torch_run(path):
    lines = [json.loads(line) for line in open(path)]
    epochs = [r for r in lines if "epoch" in r]
    test = next((r["test_accuracy"] for r in lines if "test_accuracy" in r), None)
    return {"val": [r["val_accuracy"] for r in epochs], "loss": epochs[-1]["loss"], "test": test,
            "seconds": [r["seconds"] for r in epochs]}


def sign_test(diffs):
    """Two-sided p-value of the signs of the non-zero differences (binomial, p = 1/2)."""
    d = [x for x in diffs if x != 0]
    n, k = len(d), sum(x > 0 for x in d)
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def main(f_pattern, t_pattern, *seeds):
    diffs = []
    print("| seed | training loss | validation accuracy | difference | test (1,000) | epoch s |")
    print("|---|---|---|---:|---|---|")
    for s in seeds:
        f, t = fastcnn_run(f_pattern.replace("{S}", s)), torch_run(t_pattern.replace("{S}", s))
        d = f["val"][-1] - t["val"][-1]
        diffs.append(d)
        secs = f"{min(f['seconds']):.0f}-{max(f['seconds']):.0f} / {min(t['seconds']):.0f}-{max(t['seconds']):.0f}"
        print(f"| {s} | {f['loss']:.4f} / {t['loss']:.4f} | {f['val'][-1]:.4f} / {t['val'][-1]:.4f} | {d:+.4f} "
              f"| {f['test']:.3f} / {t['test']:.3f} | {secs} |")
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / (n - 1)) if n > 1 else float("nan")
    print(f"\n{n} seeds: mean difference {mean * 100:+.2f} points, standard deviation {sd * 100:.2f}, "
          f"standard error {sd / math.sqrt(n) * 100:.2f}; fastcnn lower in {sum(x < 0 for x in diffs)}, "
          f"sign test p = {sign_test(diffs):.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
