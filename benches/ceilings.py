"""Hardware ceilings and per-convolution times, each measured in its own process.

    python benches/ceilings.py                 # everything, a Markdown table on stdout
    python benches/ceilings.py --part fma      # one part, JSON on stdout

Parts:
  fma      FP32 FMA peak: a C kernel (gcc -O2 -mavx512f -mfma, compiled on the fly) with 24
           independent zmm accumulators (12 ymm ones for the AVX2 figure; zmm only on a CPU
           with AVX-512, the peak is then the ymm one), at 1 and 2 threads; and the running clock,
           from a chain of dependent integer adds (1 cycle each), next to /proc/cpuinfo's MHz.
  gemm     SGEMM 2048x2048x2048 through NumPy's BLAS at 1 and 2 threads (threadpoolctl).
  triad    Memory bandwidth: a[i] = b[i] + s*c[i] over 3 x 64 MiB (Numba prange), 1 and 2
           threads; bytes counted as 12 per element (STREAM's convention).
  balance  Whether the two cores run equal work equally fast: two threads run the fma part's
           kernel on equal chunks (~0.25 ms) in lockstep (a barrier before each), 2,000 rounds;
           per round the slower thread's time over the faster's (median, 90th percentile,
           share of rounds above 1.1 and 1.3) and the lockstep efficiency, the mean of the
           two times over the slower one summed over the rounds: the share of two cores a
           kernel splitting its work in equal static halves keeps (1.0 on symmetric cores).
  torch    PyTorch conv2d forward and backward at the seed networks' convolution shapes.
  fastcnn  fastcnn.functional.conv2d / conv2d_backward at the same shapes (numba and cython
           backends, the default path), and the dense layers of lenet.

GFLOP/s counts 2*N*OC*C*kh*kw*OH*OW per convolution pass (backward: weight gradient, plus
the input gradient except for first layers, whose input needs none).  Times are medians.
"""
import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from probes.timing import median_seconds

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: name: (N, C, H, W, OC, k, stride, pad, input_grad)
CONVS = {
    "lenet conv1": (128, 1, 28, 28, 32, 5, 1, 2, False),
    "lenet conv2": (128, 32, 14, 14, 64, 5, 1, 2, True),
    "bn conv1": (100, 1, 28, 28, 16, 5, 1, 2, False),
    "bn conv2": (100, 16, 14, 14, 32, 5, 1, 2, True),
    "resnet 16ch 32x32": (100, 16, 32, 32, 16, 3, 1, 1, True),
    "resnet 32ch 16x16": (100, 32, 16, 16, 32, 3, 1, 1, True),
    "resnet 64ch 8x8": (100, 64, 8, 8, 64, 3, 1, 1, True),
}

C_SRC = r"""
#include <immintrin.h>
#include <stdint.h>
#define BODY(T, SET1, FMA, ADD, W, ACC)                                         \
    T a[ACC]; T m = SET1(0.9999999f), c = SET1(1e-7f);                         \
    for (int k = 0; k < ACC; k++) a[k] = SET1((float)k);                       \
    for (int64_t i = 0; i < iters; i++) {                                      \
        _Pragma("GCC unroll 32") for (int k = 0; k < ACC; k++) a[k] = FMA(a[k], m, c); \
    }                                                                          \
    for (int k = 1; k < ACC; k++) a[0] = ADD(a[0], a[k]);                      \
    float out[W]; _mm_empty(); memcpy_(out, &a[0], sizeof out);                \
    return out[0];
static void memcpy_(void *d, const void *s, unsigned long n) {
    char *dd = d; const char *ss = s; while (n--) *dd++ = *ss++;
}
/* 24 zmm accumulators (of 32 registers); 12 ymm ones (16 registers without AVX512VL). */
float fma_zmm(int64_t iters) { BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, 16, 24) }
float fma_ymm(int64_t iters) { BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, 8, 12) }
/* n dependent register adds: n cycles (1-cycle latency); 8 per iteration hide the loop
   overhead.  Register operands, not immediates: some cores fold chains of immediate adds at
   rename, which made such a chain run several adds per cycle. */
uint64_t dep_adds(int64_t n) {
    uint64_t x = 0, one = 1;
    __asm__ volatile("" : "+r"(one));
    for (int64_t i = 0; i < n; i += 8)
        __asm__ volatile("add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                         "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0"
                         : "+r"(x) : "r"(one));
    return x;
}
"""


median = statistics.median_high


def in_threads(fn, nthreads):
    """Wall time of ``fn()`` run concurrently in ``nthreads`` threads (ctypes drops the GIL)."""
    barrier = threading.Barrier(nthreads + 1)
    ths = [threading.Thread(target=lambda: (barrier.wait(), fn())) for _ in range(nthreads)]
    for t in ths:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ths:
        t.join()
    return time.perf_counter() - t0


def _fma_lib():
    """The fma part's C kernels, compiled on the fly."""
    d = tempfile.mkdtemp(prefix="fastcnn_fma_")
    src, lib = os.path.join(d, "fma.c"), os.path.join(d, "fma.so")
    with open(src, "w") as f:
        f.write(C_SRC)
    subprocess.run(["gcc", "-O2", "-mavx512f", "-mfma", "-shared", "-fPIC", src, "-o", lib], check=True)
    so = ctypes.CDLL(lib)
    for name in ("fma_zmm", "fma_ymm"):
        getattr(so, name).restype = ctypes.c_float
        getattr(so, name).argtypes = [ctypes.c_int64]
    so.dep_adds.restype = ctypes.c_uint64
    so.dep_adds.argtypes = [ctypes.c_int64]
    return so


def part_fma():
    so = _fma_lib()
    with open("/proc/cpuinfo") as f:
        info = f.read().splitlines()
    mhz = [float(line.split(":")[1]) for line in info if line.startswith("cpu MHz")]
    flags = next((line.split(":")[1].split() for line in info if line.startswith("flags")), [])
    out = {"cpuinfo_mhz": mhz[0] if mhz else None}
    nadd = 400_000_000
    so.dep_adds(nadd // 10)
    ghz = []
    for nt in (1, 2):
        t = median([in_threads(lambda: so.dep_adds(nadd), nt) for _ in range(5)])
        ghz.append(nadd / t / 1e9)
    out["clock_ghz_1t"], out["clock_ghz_2t"] = ghz
    iters = 20_000_000
    for name, width, acc in (("zmm", 16, 24), ("ymm", 8, 12)):
        if name == "zmm" and "avx512f" not in flags:
            continue
        fn = getattr(so, "fma_" + name)
        fn(iters // 10)
        for nt in (1, 2):
            t = median([in_threads(lambda: fn(iters), nt) for _ in range(5)])
            gflops = nt * iters * acc * width * 2 / t / 1e9
            out[f"{name}_gflops_{nt}t"] = gflops
            out[f"{name}_flop_per_cycle_{nt}t"] = gflops / nt / ghz[nt - 1]
    return out


def part_balance(rounds=2000, iters=150_000):
    so = _fma_lib()
    fn = so.fma_ymm  # (every x86-64 CPU this project builds SIMD paths for has AVX2 and FMA)
    fn(iters)
    times = [[0.0] * rounds, [0.0] * rounds]
    barrier = threading.Barrier(2)

    def run(i):
        for r in range(rounds):
            barrier.wait()
            t0 = time.perf_counter()
            fn(iters)
            times[i][r] = time.perf_counter() - t0

    ths = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    pairs = list(zip(*times))
    ratios = sorted(max(a, b) / min(a, b) for a, b in pairs)
    return {"rounds": rounds, "chunk_ms": statistics.median(times[0] + times[1]) * 1e3,
            "ratio_median": statistics.median(ratios), "ratio_p90": ratios[int(0.9 * (rounds - 1))],
            "share_above_1.1": sum(q > 1.1 for q in ratios) / rounds,
            "share_above_1.3": sum(q > 1.3 for q in ratios) / rounds,
            "lockstep_efficiency": sum((a + b) / 2 for a, b in pairs) / sum(max(a, b) for a, b in pairs)}


def part_gemm():
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    n = 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    out = {"blas": [(i["internal_api"], i.get("architecture"), i["filepath"]) for i in threadpool_info()
                    if i["user_api"] == "blas"]}
    for nt in (1, 2):
        with threadpool_limits(nt, user_api="blas"):
            np.dot(a, b, out=c)
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                np.dot(a, b, out=c)
                ts.append(time.perf_counter() - t0)
        out[f"sgemm_gflops_{nt}t"] = 2 * n ** 3 / median(ts) / 1e9
    return out


def part_triad():
    import numba
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, fastmath=False)
    def triad(a, b, c, s):
        for i in prange(a.size):
            a[i] = b[i] + s * c[i]

    n = 16 << 20
    a, b, c = np.zeros(n, np.float32), np.ones(n, np.float32), np.full(n, 2, np.float32)
    out = {}
    for nt in (1, 2):
        numba.set_num_threads(nt)
        triad(a, b, c, np.float32(3))
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            triad(a, b, c, np.float32(3))
            ts.append(time.perf_counter() - t0)
        out[f"triad_gbs_{nt}t"] = 12 * n / median(ts) / 1e9
    return out


def conv_flops(shape):
    n, c, h, w, oc, k, s, p, _ = shape
    oh = (h + 2 * p - k) // s + 1
    ow = (w + 2 * p - k) // s + 1
    return 2.0 * n * oc * c * k * k * oh * ow


def _time(fn, reps):
    return median_seconds(fn, reps, median)


def part_torch(threads, reps):
    import torch

    torch.set_num_threads(threads)
    out = {"threads": torch.get_num_threads(), "version": torch.__version__}
    for name, shape in CONVS.items():
        n, c, h, w, oc, k, s, p, ig = shape
        x = torch.randn(n, c, h, w, requires_grad=ig)
        conv = torch.nn.Conv2d(c, oc, k, s, p)
        with torch.no_grad():
            fwd = _time(lambda: conv(x), reps)
        y = conv(x)
        gy = torch.randn_like(y)
        bwd = _time(lambda: torch.autograd.grad(y, [x, conv.weight, conv.bias] if ig else
                                                [conv.weight, conv.bias], gy, retain_graph=True), reps)
        out[name] = (fwd, bwd)
    return out


def part_fastcnn(threads, reps):
    sys.path.insert(0, ROOT)
    import numpy as np

    import fastcnn
    from fastcnn import functional as F

    fastcnn.set_num_threads(threads)
    out = {"threads": fastcnn.get_num_threads()}
    rng = np.random.default_rng(0)
    for backend in ("numba", "cython"):
        fastcnn.set_backend(backend)
        for name, shape in CONVS.items():
            n, c, h, w, oc, k, s, p, ig = shape
            x = rng.standard_normal((n, c, h, w), dtype=np.float32)
            wt = rng.standard_normal((oc, c, k, k), dtype=np.float32)
            b = np.zeros(oc, np.float32)
            ws = F.Workspace()
            fwd = _time(lambda: F.conv2d(x, wt, b, s, p, ws=ws), reps)
            gy = F.conv2d(x, wt, b, s, p)
            bwd = _time(lambda: F.conv2d_backward(gy, x, wt, s, p, input_grad=ig, ws=ws), reps)
            out[f"{backend} {name}"] = (fwd, bwd)
        # lenet's dense layers (N=128): 3136->1024 and 1024->10
        for (i, o) in ((3136, 1024), (1024, 10)):
            x = rng.standard_normal((128, i), dtype=np.float32)
            wt = rng.standard_normal((o, i), dtype=np.float32)
            b = np.zeros(o, np.float32)
            gy = rng.standard_normal((128, o), dtype=np.float32)
            fwd = _time(lambda: F.linear(x, wt, b), reps)
            bwd = _time(lambda: F.linear_backward(gy, x, wt), reps)
            out[f"{backend} dense {i}->{o}"] = (fwd, bwd, 2.0 * 128 * i * o)
    return out


def run_part(part, threads, reps):
    cmd = [sys.executable, os.path.abspath(__file__), "--part", part, "--threads", str(threads),
           "--reps", str(reps)]
    # As benches/run_benchmarks.sh: without the environment's forced (slower) OpenBLAS kernel.
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def report(threads, reps):
    fma = run_part("fma", threads, reps)
    gemm = run_part("gemm", threads, reps)
    triad = run_part("triad", threads, reps)
    tor = run_part("torch", threads, reps)
    fc = run_part("fastcnn", threads, reps)
    wide = "zmm" if "zmm_gflops_1t" in fma else "ymm"
    peak = fma[f"{wide}_gflops_{threads}t"]
    lines = [
        f"CPU clock (dependent adds): {fma['clock_ghz_1t']:.2f} GHz at 1 thread, "
        f"{fma['clock_ghz_2t']:.2f} GHz at 2 threads; /proc/cpuinfo says {fma['cpuinfo_mhz']:.0f} MHz.",
        "",
        "| ceiling | 1 thread | 2 threads |",
        "|---|---:|---:|",
        *(f"| FP32 FMA peak, {w} (GFLOP/s) | {fma[w + '_gflops_1t']:.0f} | {fma[w + '_gflops_2t']:.0f} |\n"
          f"| FP32 FMA, {w}, FLOP/cycle/core | {fma[w + '_flop_per_cycle_1t']:.1f} | "
          f"{fma[w + '_flop_per_cycle_2t']:.1f} |" for w in ("zmm", "ymm") if w + "_gflops_1t" in fma),
        f"| SGEMM 2048^3, NumPy's BLAS (GFLOP/s) | {gemm['sgemm_gflops_1t']:.0f} | {gemm['sgemm_gflops_2t']:.0f} |",
        f"| Triad bandwidth (GB/s) | {triad['triad_gbs_1t']:.1f} | {triad['triad_gbs_2t']:.1f} |",
        "",
        f"BLAS: {gemm['blas']}",
        "",
        f"Per convolution at {threads} threads: ms (GFLOP/s, % of the {threads}-thread {wide} FMA peak "
        f"{peak:.0f} GFLOP/s). PyTorch {tor['version']} ({tor['threads']} threads); fastcnn "
        f"({fc['threads']} threads, default path).",
        "",
        "| convolution | torch fwd | torch bwd | numba fwd | numba bwd | cython fwd | cython bwd |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(t, flop):
        g = flop / t / 1e9
        return f"{t * 1e3:.2f} ({g:.0f}, {100 * g / peak:.0f}%)"

    for name, shape in CONVS.items():
        f1 = conv_flops(shape)
        fb = f1 * (2 if shape[-1] else 1)
        row = [name]
        for res, key in ((tor, name), (fc, f"numba {name}"), (fc, f"cython {name}")):
            fwd, bwd = res[key]
            row += [cell(fwd, f1), cell(bwd, fb)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| dense layer (N=128) | numba fwd | numba bwd | cython fwd | cython bwd |",
              "|---|---:|---:|---:|---:|"]
    for key in ("dense 3136->1024", "dense 1024->10"):
        row = [key]
        for backend in ("numba", "cython"):
            fwd, bwd, flop = fc[f"{backend} {key}"]
            row += [cell(fwd, flop), cell(bwd, 2 * flop)]
        lines.append("| " + " | ".join(row) + " |")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["fma", "gemm", "triad", "balance", "torch", "fastcnn"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    if a.part is None:
        report(a.threads, a.reps)
        return
    fn = {"fma": part_fma, "gemm": part_gemm, "triad": part_triad, "balance": part_balance,
          "torch": lambda: part_torch(a.threads, a.reps),
          "fastcnn": lambda: part_fastcnn(a.threads, a.reps)}[a.part]
    print(json.dumps(fn()))


if __name__ == "__main__":
    main()
