"""The dense kernels' rows path of small batches against their GEMM path, and NumPy's ``np.dot``
(what the functional ops ran at batch 1 before), in one process: for each shape the three
alternated call by call, best of the repetitions (the host's slow phases only add; the
strategy is forced by ``fastcnn.config(dense="rows")`` / ``dense="gemm"``).

Usage: python benches/probes/dense_rows.py [BACKEND] [THREADS]
"""
import sys
import time

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import _backend, _config, _dispatch, _heap

#: (batch, in features, out features): the scratch network's dense layer, lenet's two, a square one
SHAPES = [(1, 1352, 10), (2, 1352, 10), (8, 1352, 10), (1, 3136, 1024), (2, 3136, 1024), (8, 3136, 1024),
          (1, 1024, 10), (1, 512, 512), (4, 512, 512)]


def best(fn, calls):
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return min(times) / 1e3


def main(backend="cython", threads=2, reps=15):
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(int(threads))
    k = _backend.ops()
    rng = np.random.default_rng(0)
    print(f"backend {backend}, {threads} thread(s); best of {reps} x (calls) in us")
    print("| batch, in, out | forward: rows | GEMM | np.dot | gradients: rows | GEMM | np.dot |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n, k_in, k_out in SHAPES:
        x, w = rng.standard_normal((n, k_in), dtype=np.float32), rng.standard_normal((k_out, k_in), dtype=np.float32)
        b, gy = rng.standard_normal(k_out, dtype=np.float32), rng.standard_normal((n, k_out), dtype=np.float32)
        y, gb, gx = (np.empty(s, np.float32) for s in ((n, k_out), (k_out,), x.shape))
        gw = _heap.zeros_aligned(w.shape)  # (as a Parameter's gradient: its GEMM may stream it)
        gyt, nb = np.empty((k_out, n), np.float32), _config.dense_blocks(k_out)

        def fwd():
            k.linear_forward(x, w, b, nb, y)

        def bwd():
            k.linear_backward(gy, x, w, True, nb, gyt, gw, gb, gx)

        def dot_fwd():  # (the functional op's batch-1 form before the rows path)
            np.dot(x, w.T, out=y)
            np.add(y, b, out=y)

        def dot_bwd():
            np.dot(gy.T, x, out=gw)
            np.dot(gy, w, out=gx)

        calls = max(5, min(2000, int(2e6 // (n * k_in * k_out + 1))))
        got = {key: [] for key in ("rf", "gf", "df", "rb", "gb", "db")}
        for _ in range(reps):
            with fastcnn.config(dense="rows"):
                got["rf"].append(best(fwd, calls))
                got["rb"].append(best(bwd, calls))
            with fastcnn.config(dense="gemm"):
                got["gf"].append(best(fwd, calls))
                got["gb"].append(best(bwd, calls))
            got["df"].append(best(dot_fwd, calls))
            got["db"].append(best(dot_bwd, calls))
        m = {key: min(v) for key, v in got.items()}
        grads_rows = "" if _dispatch.dense_rows(n, True) else " (not auto's)"
        print(f"| {n}, {k_in}, {k_out} | {m['rf']:.2f} | {m['gf']:.2f} | {m['df']:.2f} | "
              f"{m['rb']:.2f}{grads_rows} | {m['gb']:.2f} | {m['db']:.2f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
