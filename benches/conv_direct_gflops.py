"""GFLOP/s of the convolution strategies per layer shape, as % of a measured FMA peak.

Usage (from the repository root):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/conv_direct_gflops.py [THREADS] [REPS] [BACKEND]
    python benches/conv_direct_gflops.py kernels [THREADS] [BACKEND]   # the primitives alone (wall clock)

Forward and backward (input + weight gradients; weight gradient only for the first layers,
C <= 3, as in training) of each shape on BACKEND (``cython``, the default, or ``numba``),
under ``fastcnn.config(conv=...)`` = direct, winograd (3x3 and 5x5, stride 1; the other
shapes run direct), per_image and chunked.  Medians of REPS calls
(default 15).  The peak is this machine's measured FP32 FMA throughput on the same threads (``fma_peak_probe``: the
forward tile's 24 zmm or 12 ymm FMA chains per thread with the active SIMD path), re-measured before each shape.
Two figures: wall-clock (GFLOP/s / peak GFLOP/s, both wall) and CPU-time (flops per
CPU-second of the process, against the probe's).  The CPU-time figure is unreliable since
idle OpenMP threads spin between regions (``GOMP_SPINCOUNT``, docs/PERFORMANCE.md, section 2):
a thread that never sleeps has its CPU time accounted late, so short calls look cheap (figures
above 100 %); ``kernels`` reports wall-clock figures, each against the probe run right before it,
round by round (``peak_share``).  One "FLOP" = one multiply or add of the convolution
(2 * N * OC * OH * OW * C * KH * KW per pass; for the Winograd kernels, which do fewer,
the same count: "direct-equivalent" GFLOP/s).
"""
import sys
import time

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import functional as F

SHAPES = [  # name, (N, C, H, W), OC, kernel, stride, padding
    ("lenet conv1", (128, 1, 28, 28), 32, 5, 1, "same"),
    ("lenet conv2", (128, 32, 14, 14), 64, 5, 1, "same"),
    ("bn conv1", (100, 1, 28, 28), 16, 5, 1, 2),
    ("bn conv2", (100, 16, 14, 14), 32, 5, 1, 2),
    ("resnet conv 3->16 32x32", (100, 3, 32, 32), 16, 3, 1, 1),
    ("resnet 16->16 32x32", (100, 16, 32, 32), 16, 3, 1, 1),
    ("resnet 32->32 16x16", (100, 32, 16, 16), 32, 3, 1, 1),
    ("resnet 64->64 8x8", (100, 64, 8, 8), 64, 3, 1, 1),
    ("resnet 16->32 s2", (100, 16, 32, 32), 32, 3, 2, 1),
    ("resnet 32->64 s2", (100, 32, 16, 16), 64, 3, 2, 1),
]
STRATEGIES = ("direct", "winograd", "per_image", "chunked")


def timed(fn, reps, warm=0.3):
    """Medians of ``reps`` calls' wall and CPU time, after calls for ``warm`` seconds (at least
    one: a single warm-up call left the first shape's figure erratic)."""
    walls, cpus = [], []
    t_end = time.perf_counter() + warm
    fn()
    while time.perf_counter() < t_end:
        fn()
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.median(cpus))


def peak(threads):
    from fastcnn._ext import conv_direct

    iters = 10_000_000  # (2,000,000 read half the peak on an AVX2 CPU: threads still waking)
    conv_direct.fma_peak_probe(iters // 10, threads)
    best = None
    for _ in range(3):
        w0, c0 = time.perf_counter(), time.process_time()
        flops = conv_direct.fma_peak_probe(iters, threads)
        w, c = time.perf_counter() - w0, time.process_time() - c0
        best = max(best or (0, 0), (flops / w, flops / c))
    return best  # (flops per wall second, flops per CPU second)


def case(rng, x_shape, oc, k, s, pad):
    """Random arrays for one shape of ``SHAPES``: ``(calls, flops)``, where ``calls(mod)`` is
    ``{"forward": f, "data": f, "weight": f}``, the direct primitives of the primitive module
    ``mod`` on those arrays (and, for a 3x3 or 5x5 stride-1 shape of more than 3 input
    channels, ``"winograd forward"``, ``"winograd data"`` on F(2x2, r x r) tiles, and for 3x3
    ``"winograd4 forward"``, ``"winograd4 data"`` on F(4x4, 3x3) tiles), and ``flops`` those of
    one pass."""
    n, c, h, wd = x_shape
    g = F.ConvGeometry((k, k), (s, s), pad, (h, wd), "bench")
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal((oc, c, k, k), dtype=np.float32)
    b = np.zeros(oc, np.float32)
    y = np.empty((n, oc, g.oh, g.ow), np.float32)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gx, gw, gb = np.empty_like(x), np.empty_like(w), np.empty_like(b)
    a = (g.sh, g.sw, g.pt, g.pl)

    def calls(mod):
        out = {"forward": lambda: mod.conv2d_direct_forward(x, w, b, *a, 0, y),
               "data": lambda: mod.conv2d_direct_backward_data(gy, w, *a, gx),
               "weight": lambda: mod.conv2d_direct_backward_weight(gy, x, *a, gw, gb)}
        if k in (3, 5) and s == 1 and c > 3:
            out["winograd forward"] = lambda: mod.conv2d_winograd_forward(x, w, b, g.pt, g.pl, 0, y)
            out["winograd data"] = lambda: mod.conv2d_winograd_backward_data(gy, w, g.pt, g.pl, gx)
        if k == 3 and s == 1 and c > 3:
            out["winograd4 forward"] = lambda: mod.conv2d_winograd_forward(x, w, b, g.pt, g.pl, 0, y, 4)
            out["winograd4 data"] = lambda: mod.conv2d_winograd_backward_data(gy, w, g.pt, g.pl, gx, 4)
        return out

    return calls, 2.0 * y.size * c * k * k


def peak_share(fn, flops, threads, rounds):
    """``fn``'s GFLOP/s as shares of the FMA peak measured side by side: per round the probe
    (best of two runs) right before the median of three calls; the rounds' median, min and max
    (the host's slow phases, seconds long, then slow the probe and the call alike)."""
    from fastcnn._ext import conv_direct

    timed(fn, 1)
    shares = []
    for _ in range(rounds):
        best = 0.0
        for _ in range(2):
            t0 = time.perf_counter()
            f = conv_direct.fma_peak_probe(10_000_000, threads)
            best = max(best, f / (time.perf_counter() - t0))
        shares.append(flops / timed(fn, 3, warm=0)[0] / best)
    return float(np.median(shares)), min(shares), max(shares)


def kernels(threads, backend="cython", rounds=9):
    """The direct primitives alone (no functional layer), % of the probe's wall-clock peak
    measured beside each (:func:`peak_share`): median (min-max) of ``rounds``."""
    from fastcnn import _backend

    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(threads)
    d = _backend.ops(backend)
    pw = peak(threads)[0]
    print(f"{backend} direct primitives, {_isa(backend)}, {threads} thread(s); % of the probe's peak measured "
          f"beside each, median (min-max) of {rounds} rounds; probe at the start {pw / 1e9:.0f} GFLOP/s (wall)")
    print("| shape | forward | input gradient | weight gradient | Winograd forward | Winograd input gradient "
          "| F(4x4) forward | F(4x4) input gradient |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for name, (n, c, h, wd), oc, k, s, pad in SHAPES:
        calls, flops = case(rng, (n, c, h, wd), oc, k, s, pad)
        cells = ["{:.0%} ({:.0%}-{:.0%})".format(*peak_share(fn, flops, threads, rounds)) for fn in calls(d).values()]
        cells += [""] * (7 - len(cells))
        print(f"| {name} {(n, c, h, wd)}->{oc} k{k} s{s} | " + " | ".join(cells) + " |", flush=True)


def _isa(backend):
    """The SIMD path of ``backend``'s direct kernels."""
    if backend == "numba":
        from fastcnn import _config
        return f"Numba {_config.NUMBA_ISA['isa']}"
    from fastcnn._ext import conv_direct
    return conv_direct.active_isa()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "kernels":
        return kernels(int(sys.argv[2]) if len(sys.argv) > 2 else 1, sys.argv[3] if len(sys.argv) > 3 else "cython")
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    backend = sys.argv[3] if len(sys.argv) > 3 else "cython"
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(threads)

    print(f"{backend} backend, {threads} thread(s), direct kernels: {_isa(backend)}, "
          f"median of {reps}")
    print("| shape | pass | peak GF/s (wall) | " + " | ".join(
        f"{s} GF/s, % peak wall / cpu" for s in STRATEGIES) + " |")
    print("|---|---|---:|" + "---:|" * len(STRATEGIES))
    rng = np.random.default_rng(0)
    for name, xs, oc, k, stride, pad in SHAPES:
        x = rng.standard_normal(xs, dtype=np.float32)
        w = (rng.standard_normal((oc, xs[1], k, k)) * 0.1).astype(np.float32)
        b = np.zeros(oc, np.float32)
        y = F.conv2d(x, w, b, stride, pad)
        gy = rng.standard_normal(y.shape, dtype=np.float32)
        flops = 2.0 * y.size * xs[1] * k * k
        input_grad = xs[1] > 3
        pw, pc = peak(threads)
        rows = {"forward": [], "backward": []}
        for s in STRATEGIES:
            ws = F.Workspace()
            with fastcnn.config(conv=s):
                fw, fc = timed(lambda: F.conv2d(x, w, b, stride, pad, ws=ws), reps)
                bw, bc = timed(lambda: F.conv2d_backward(gy, x, w, stride, pad, input_grad=input_grad, ws=ws), reps)
            bflops = flops * (2 if input_grad else 1)
            rows["forward"].append((flops / fw, flops / fw / pw, flops / fc / pc))
            rows["backward"].append((bflops / bw, bflops / bw / pw, bflops / bc / pc))
        for p, vals in rows.items():
            label = p if p == "forward" or input_grad else "backward (weights)"
            cells = " | ".join(f"{g / 1e9:.1f}, {a:.0%} / {c:.0%}" for g, a, c in vals)
            print(f"| {name} {xs}->{oc} k{k} s{stride} | {label} | {pw / 1e9:.0f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
