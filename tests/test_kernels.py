"""The Numba backend (``fastcnn._kernels``): its direct-convolution kernels
(``_kernels.conv_direct``) against naive float64 loops and the float64 reference; finite
differences; determinism across runs, thread counts and the serial/parallel compilations;
the code generated per ISA; the dense layers' GEMM (one FMA chain per output)."""
import os

import numpy as np
import pytest

import fastcnn
from fastcnn import _config, _ref
from fastcnn import functional as F
from fastcnn._kernels import conv_direct as D
from fastcnn.functional import ConvGeometry

import naive
from utils import (
    DENSE_CHAIN_SHAPES,
    DENSE_ROWS_FORCED_SHAPES,
    DENSE_ROWS_SHAPES,
    NEUTRAL_CWD,
    assert_close,
    check_dense_fma_chain,
    check_dense_rows,
    cores,
    run_direct,
)

# Float32 sums of up to C*kh*kw = 17*25 = 425 products (forward, input gradient) or
# N*OH*OW products (weight gradient: float32 partials per pixel over <= 6 images, then a
# float64 sum).  With FMA contraction each product is rounded once with its addition instead
# of twice, which keeps the error within the same bound: ~sqrt(K) * 2**-24 relative to the
# output scale, far below 2e-5 at these sizes.
RTOL = 2e-5

#: (N, C, H, W, OC, kernel, stride, padding): odd sizes, batch 1, strides 1/2/3, TF-"same"
#: (asymmetric for even kernels / strides), C = 1/3/16/17.
CASES = [
    (2, 3, 9, 11, 5, (3, 3), (1, 1), 1),
    (1, 1, 7, 6, 4, (5, 5), (1, 1), "same"),
    (3, 17, 8, 7, 6, (5, 5), (2, 2), "same"),
    (1, 16, 11, 9, 16, (3, 3), (3, 3), "same"),
    (2, 3, 10, 9, 17, (2, 4), (1, 2), "same"),
    (2, 1, 13, 12, 3, (3, 1), (2, 1), (1, 0)),
    (1, 17, 5, 5, 2, (5, 5), (1, 1), 2),
    (3, 16, 6, 9, 7, (1, 1), (1, 1), 0),
    (2, 3, 12, 13, 8, (3, 3), (2, 3), "valid"),
    # N >= 4 with kw <= 3 and stride 1: the weight gradient's 4-images-at-a-time path
    (5, 3, 7, 9, 4, (3, 3), (1, 1), 1),
    (6, 2, 5, 6, 3, (2, 2), (1, 1), "same"),
    (4, 3, 6, 5, 2, (3, 1), (1, 1), (1, 0)),
    # padding wider than the kernel minus one (the input gradient's padding is negative)
    (2, 3, 6, 7, 4, (3, 3), (1, 1), 3),
    (1, 2, 5, 6, 3, (2, 3), (2, 2), (3, 4)),
]


def _setup(case, seed=0):
    n, c, h, w, oc, k, s, pad = case
    g = ConvGeometry(k, s, pad, (h, w), "conv2d")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((oc, c) + tuple(k), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32)
    gy = rng.standard_normal((n, oc, g.oh, g.ow), dtype=np.float32)
    return g, x, wt, b, gy


@pytest.mark.parametrize("relu", [0, 1])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_naive_and_reference(case, relu):
    g, x, wt, b, gy = _setup(case)
    y, gx, gw, gb = run_direct(D, g, x, wt, b, gy, relu)
    want = naive.conv2d(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                        (g.sh, g.sw), (g.pt, g.pb, g.pl, g.pr))
    if relu:
        want = np.maximum(want, 0)
    assert_close(y, want, RTOL, what="forward")
    # The float64 reference (dtype-generic) for the gradients, itself checked against the
    # naive forward below (adjointness) and against finite differences.
    x64, w64, gy64 = x.astype(np.float64), wt.astype(np.float64), gy.astype(np.float64)
    rgx = np.empty(x.shape)
    _ref.conv2d_direct_backward_data(gy64, w64, g.sh, g.sw, g.pt, g.pl, rgx)
    rgw, rgb = np.empty(wt.shape), np.empty(wt.shape[0])
    _ref.conv2d_direct_backward_weight(gy64, x64, g.sh, g.sw, g.pt, g.pl, rgw, rgb)
    assert_close(gx, rgx, RTOL, what="input gradient")
    assert_close(gw, rgw, RTOL, what="weight gradient")
    assert_close(gb, rgb, 1e-6, what="bias gradient")
    # Reference adjointness: <conv(x), gy> = <x, gx> = <w, gw> (no bias), in float64.
    y0 = naive.conv2d(x64, w64, None, (g.sh, g.sw), (g.pt, g.pb, g.pl, g.pr))
    dot = np.vdot(y0, gy64)
    assert np.isclose(np.vdot(x64, rgx), dot, rtol=1e-10, atol=1e-9)
    assert np.isclose(np.vdot(w64, rgw), dot, rtol=1e-10, atol=1e-9)


def test_reference_forward_matches_naive():
    g, x, wt, b, gy = _setup(CASES[2])
    y = np.empty(gy.shape)
    _ref.conv2d_direct_forward(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                               g.sh, g.sw, g.pt, g.pl, 1, y)
    want = np.maximum(naive.conv2d(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64),
                                   (g.sh, g.sw), (g.pt, g.pb, g.pl, g.pr)), 0)
    assert_close(y, want, 1e-12)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=str)
def test_finite_differences(case):
    """Directional derivatives of L = sum(conv(x, w) * gy) by central differences of the
    compiled forward against the compiled gradients (L is bilinear: the difference quotient
    is exact up to float32 rounding of L, ~1e-6 relative here)."""
    g, x, wt, b, gy = _setup(case, seed=3)
    rng = np.random.default_rng(4)
    _, gx, gw, gb = run_direct(D, g, x, wt, b, gy)

    def loss(xx, ww, bb):
        y = np.empty(gy.shape, np.float32)
        D.conv2d_direct_forward(xx, ww, bb, g.sh, g.sw, g.pt, g.pl, 0, y)
        return np.vdot(y.astype(np.float64), gy.astype(np.float64))

    h = np.float32(0.5)
    for grad, arr, which in ((gx, x, 0), (gw, wt, 1), (gb, b, 2)):
        d = rng.standard_normal(arr.shape).astype(np.float32)
        args_p, args_m = [x, wt, b], [x, wt, b]
        args_p[which] = arr + h * d
        args_m[which] = arr - h * d
        fd = (loss(*args_p) - loss(*args_m)) / (2 * float(h))
        an = np.vdot(grad.astype(np.float64), d.astype(np.float64))
        assert abs(fd - an) <= 1e-4 * (abs(an) + np.abs(grad).sum()), (which, fd, an)


@pytest.mark.parametrize("k", [5, 3])
def test_bit_identical_runs_and_threads(k):
    if cores() < 2:
        pytest.skip("needs 2 cores")
    # Large enough for the parallel compilations (first array >= PAR_MIN_WORK elements).
    g, x, wt, b, gy = _setup((5, 16, 20, 19, 24, (k, k), (1, 1), "same"), seed=7)
    assert x.size >= _config.PAR_MIN_WORK
    before = fastcnn.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 2):
            fastcnn.set_num_threads(threads)
            runs.append(run_direct(D, g, x, wt, b, gy, relu=1))
    finally:
        fastcnn.set_num_threads(before)
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            assert a.tobytes() == c.tobytes()


@pytest.mark.parametrize("stride,k", [(1, 5), (2, 5), (1, 3)])
def test_serial_and_parallel_compilations_agree(monkeypatch, stride, k):
    """Small calls run the serial compilation, large ones the parallel one: same bytes
    (FMA contraction is decided alike in both)."""
    n, c, h, w, oc, k, _, pad = (5, 16, 20, 19, 24, (k, k), 1, "same")
    g, x, wt, b, gy = _setup((n, c, h, w, oc, k, (stride, stride), pad), seed=9)
    runs = []
    for threshold in (0, 1 << 62):
        monkeypatch.setattr(_config, "PAR_MIN_WORK", threshold)
        runs.append(run_direct(D, g, x, wt, b, gy))
    for a, c in zip(*runs):
        assert a.tobytes() == c.tobytes()


def test_input_gradient_overwrites_and_relu_clamps():
    g, x, wt, b, gy = _setup(CASES[1])
    y, gx, _, _ = run_direct(D, g, x, wt, b, gy, relu=1)
    assert np.isfinite(gx).all() and np.isfinite(y).all()  # (buffers started as NaN)
    assert (y >= 0).all() and (y == 0).any()


# --------------------------------------------------------------------------- FASTCNN_ISA for Numba


_ASM_PROBE = """
import os, re, numpy as np, fastcnn
from fastcnn._kernels import conv_direct as D
x, w = np.ones((1, 4, 9, 9), np.float32), np.ones((16, 4, 3, 3), np.float32)
# (16 x 16 outputs: pixel tiles on every path; 5 x 5 of 32 channels: channel tiles on every path)
x16 = np.ones((1, 4, 16, 16), np.float32)
D.conv2d_direct_forward(x16, w, np.zeros(16, np.float32), 1, 1, 1, 1, 0, np.empty((1, 16, 16, 16), np.float32))
D.conv2d_direct_forward(np.ones((1, 12, 5, 5), np.float32), np.ones((32, 12, 3, 3), np.float32),
                        np.zeros(32, np.float32), 1, 1, 1, 1, 0, np.empty((1, 32, 5, 5), np.float32))
for f in (D._forward.serial, D._forward_ct.serial):
    fma = re.findall(r"vfmadd\\w+\\s+([^\\n]*)", next(iter(f.inspect_asm().values())))
    print(fastcnn._config.NUMBA_ISA["isa"], sum("zmm" in f for f in fma), sum("ymm" in f for f in fma), len(fma))
# The weight gradient's tile loops (12+ FMAs in one basic block): vector moves to or from the
# stack there are spilled accumulators.
gw, gb = np.empty_like(w), np.empty(16, np.float32)
D.conv2d_direct_backward_weight(np.ones((1, 16, 9, 9), np.float32), x, 1, 1, 1, 1, gw, gb)
asm = next(iter(D._backward_weight.serial.inspect_asm().values()))
blocks = re.split(r"\\n\\.LBB\\w+:", asm)
print(sum(len(re.findall(r"v\\w+\\s+[^\\n]*mm\\d+[^\\n]*\\(%rsp\\)|v\\w+\\s+[^\\n]*\\(%rsp\\)[^\\n]*mm\\d+", b))
          for b in blocks if b.count("vfmadd") >= 12))
# Gathers and scatters (the vectoriser's, of strided scalar loops) in the strided forward's
# packing and the weight gradient's channels-last copy: none with _config.NUMBA_NO_GATHER.
D.conv2d_direct_forward(x, w, np.zeros(16, np.float32), 2, 2, 1, 1, 0, np.empty((1, 16, 5, 5), np.float32))
asm = "".join(next(iter(f.inspect_asm().values())) for f in (D._forward.serial, D._backward_weight.serial))
tuned = fastcnn._config.NUMBA_NO_GATHER in (os.environ.get("NUMBA_CPU_FEATURES") or "")
print(len(re.findall(r"\\tv(p?gather|p?scatter)", asm)), int(tuned))
"""


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
def test_generated_code_per_isa(isa, tmp_path):
    """The Numba direct forward (its register tiles: pixel and channel tiles) compiles to zmm
    FMAs under avx512 (the default on an AVX-512 CPU), ymm FMAs under avx2, and no FMA at all
    under baseline (SSE2)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    flags = Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    if isa != "baseline" and (" avx512f" if isa == "avx512" else " avx2") not in flags:
        pytest.skip(f"CPU without {isa}")
    # The same fastcnn as this process (installed or source tree); a fresh Numba cache, since
    # inspect_asm() shows nothing for a function loaded from the cache.
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastcnn.__file__)))
    env = dict(os.environ, FASTCNN_ISA=isa, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=root)
    env.pop("NUMBA_CPU_NAME", None)
    env.pop("NUMBA_CPU_FEATURES", None)
    out = subprocess.run([sys.executable, "-c", _ASM_PROBE], env=env, cwd=NEUTRAL_CWD,
                         capture_output=True, text=True, check=True).stdout.split()
    chosen, zmm, ymm, total = out[0], int(out[1]), int(out[2]), int(out[3])
    ct_chosen, ct_zmm, ct_ymm, ct_total = out[4], int(out[5]), int(out[6]), int(out[7])
    spills, gathers, tuned = int(out[8]), int(out[9]), int(out[10])
    assert chosen == ct_chosen == isa
    assert spills == 0  # (runtime unrolling spilled them on AVX2: _config.NUMBA_LLVM_OPTIONS)
    import llvmlite.binding as ll
    assert tuned == (isa != "baseline" and ll.llvm_version_info >= (17,))
    if tuned:
        assert gathers == 0
    if isa == "avx512":
        assert zmm >= 24  # (at least one whole tile: 8 channels x 3 vectors)
        assert ct_zmm >= 24  # (a channel tile of 12 pixels x 2 vectors)
    elif isa == "avx2":
        assert zmm == 0 and ymm > 0 and ct_zmm == 0 and ct_ymm > 0
    else:
        assert total == 0 and ct_total == 0


def test_read_only_bias_compiles_no_second_kernel():
    """A layer without a bias hands the kernels a shared read-only zeros array; Numba would
    compile each kernel it reaches once more for that array type (tens of seconds for the
    direct and Winograd forwards).  The kernels get it writeable: after forwards with a
    read-only and a writeable bias, no compilation of theirs takes a read-only array."""
    import numba

    from fastcnn._kernels import dense
    from fastcnn._kernels import winograd as W
    from fastcnn._kernels._common import writable

    def zeros(n):  # (as a layer without a bias hands the kernels: shared, read-only)
        z = np.zeros(n, np.float32)
        z.flags.writeable = False
        return z

    rng = np.random.default_rng(3)
    for hw, oc, ct in ((8, 16, False), (9, 32, True)):  # (pixel tiles, channel tiles on every path)
        assert D._use_ctile(3, 3, 1, 1, hw, hw, oc, 12) == ct
        x = rng.standard_normal((1, 12, hw, hw), dtype=np.float32)
        w = rng.standard_normal((oc, 12, 3, 3), dtype=np.float32)
        for b in (zeros(oc), np.zeros(oc, np.float32)):
            D.conv2d_direct_forward(x, w, b, 1, 1, 1, 1, 0, np.empty((1, oc, hw, hw), np.float32))
            W.conv2d_winograd_forward(x, w, b, 1, 1, 0, np.empty((1, oc, hw, hw), np.float32))
    xd, wd = rng.standard_normal((1, 20), dtype=np.float32), rng.standard_normal((7, 20), dtype=np.float32)
    with fastcnn.config(dense="rows"):
        for b in (zeros(7), np.zeros(7, np.float32)):
            dense.linear_forward(xd, wd, b, 1, np.empty((1, 7), np.float32))
    kernels = (D._forward.serial, D._forward_ct.serial, W._winograd.serial, dense._rows_forward.serial)
    for kernel in kernels:
        assert kernel.signatures, kernel  # (each ran)
        for sig in kernel.signatures:
            assert all(t.mutable for t in sig if isinstance(t, numba.types.Array)), (kernel, sig)
    ro = zeros(5)
    assert writable(ro) is not ro and writable(ro).flags.writeable and not writable(ro).any()
    rw = np.zeros(5, np.float32)
    assert writable(rw) is rw



def _mutable_only(kernel):
    """Whether every compilation of Numba dispatcher ``kernel`` takes writeable arrays only."""
    import numba
    return all(t.mutable for sig in kernel.signatures for t in sig if isinstance(t, numba.types.Array))


def test_pooling_indices_residuals_and_gemm_compile_once():
    """Each Numba kernel compiles once for its uses: the pooling indices a layer keeps
    (read-only for the user, trusted through its ``Workspace``) reach the pooled backward
    kernels writeable, as a caller's own do; ``batchnorm_forward`` compiles once with and
    without a residual; the pooled weight gradient's ``_winners`` once from the parallel and
    the serial loop; the dense GEMM of the forward and the weight gradient once for both
    (docs/PERFORMANCE.md, 16)."""
    from fastcnn import losses, optim
    from fastcnn._kernels import dense, norm, pool
    from fastcnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential

    rng = np.random.default_rng(5)
    previous = fastcnn.get_backend()
    fastcnn.set_backend("numba")
    try:
        with fastcnn.config(conv="direct"):
            # (48 x 3x3: weight and input gradients from the winners; 4 x 3x3: the dense kernels
            # unpooling; one 8 x 8 image serial, 16 of 16 x 16 parallel: _config.PAR_MIN_WORK)
            for n, c, h in ((1, 48, 8), (16, 48, 16), (1, 4, 8), (16, 4, 16)):
                x = rng.standard_normal((n, c, h, h), dtype=np.float32)
                w = rng.standard_normal((16, c, 3, 3), dtype=np.float32)
                ws = F.Workspace()
                y, idx = F.conv2d(x, w, None, 1, 1, relu=True, max_pool2=True, return_indices=True, ws=ws)
                assert not idx.flags.writeable
                gy = rng.standard_normal(y.shape, dtype=np.float32)
                trusted = F.conv2d_backward(gy, x, w, 1, 1, pool_indices=idx, relu_output=y, ws=ws)
                own = F.conv2d_backward(gy, x, w, 1, 1, pool_indices=np.array(idx), relu_output=y)
                for a, b in zip(trusted, own):
                    np.testing.assert_array_equal(a, b)
                full = F.conv2d(x, w, None, 1, 1)
                p, pidx = F.max_pool2d(full, 2, return_indices=True, ws=ws)
                np.testing.assert_array_equal(F.max_pool2d_backward(gy, pidx, full.shape, ws=ws),
                                              F.max_pool2d_backward(gy, np.array(pidx), full.shape))
        with fastcnn.config(conv="winograd"):  # (a TrainStep's pooled convolution through functional's forward)
            net = Sequential(Conv2D(48, 16, 3, padding=1, rng=rng), ReLU(), MaxPool2D(2), Flatten(),
                             Dense(16 * 8 * 8, 10, rng=rng))
            step = fastcnn.TrainStep(net, losses.SoftmaxCrossEntropy(), optim.SGD(net.parameters(), 0.01))
            for n in (1, 16):
                step(rng.standard_normal((n, 48, 16, 16), dtype=np.float32), rng.integers(0, 10, n))
            assert step.bound
        for n in (1, 6):
            x = rng.standard_normal((n, 3, 40, 40), dtype=np.float32)
            out = np.empty_like(x)
            p = [rng.random(3, dtype=np.float32) for _ in range(4)]
            norm.batchnorm_forward(x, *p, 1, out)
            norm.batchnorm_forward(x, *p, 1, out, None)
            norm.batchnorm_forward(x, *p, 1, out, x)
        for n in (64, 128):  # (the tiled forward and the GEMM gradients)
            xd, wd = rng.standard_normal((n, 40), dtype=np.float32), rng.standard_normal((24, 40), dtype=np.float32)
            with fastcnn.config(dense="gemm"):
                F.linear(xd, wd, np.zeros(24, np.float32))
                F.linear_backward(rng.standard_normal((n, 24), dtype=np.float32), xd, wd)
    finally:
        fastcnn.set_backend(previous)
    pooled = [D._pooled_pack, D._pooled_data, D._backward_weight, pool._maxpool2d_backward]
    for kernel in [k for pk in pooled for k in (pk.parallel, pk.serial)]:
        assert kernel.signatures, kernel  # (each ran: compiled or loaded from the cache)
        assert _mutable_only(kernel), (kernel, kernel.signatures)
    # The helpers compiled into them show their compilations only where the process compiled
    # them (not when their callers came from the cache: as in a fresh cache, CI's).
    for kernel in (D._cells, D._window_check, D._winners, D._unpool_channels_last):
        assert _mutable_only(kernel), (kernel, kernel.signatures)
    assert len(D._winners.signatures) <= 1, D._winners.signatures
    for kernel in (norm._batchnorm_forward.parallel, norm._batchnorm_forward.serial):
        assert len(kernel.signatures) == 1, kernel.signatures
    assert len(dense._gemm_a_rows.signatures) <= 1, dense._gemm_a_rows.signatures  # (a helper, as above)


def test_numba_winograd_is_exported_by_its_conv_direct_module():
    """The Numba backend's Winograd primitives live in ``_kernels.winograd`` and are collected
    through ``_kernels.conv_direct`` (the module of ``_config.KERNEL_MODULES``)."""
    assert fastcnn._kernels.conv2d_winograd_forward is D.conv2d_winograd_forward


def test_numba_pooled_forwards_are_the_composition():
    """The Numba fused forwards (direct and Winograd, 2x2 max pooling in the kernels, per work
    item while in cache) on a large batch of odd-sized planes: bit for bit the forward of the
    whole batch, then the pooling, with and without the indices."""
    rng = np.random.default_rng(21)
    n, oc, h = 37, 16, 65
    x = rng.standard_normal((n, 2, h, h), dtype=np.float32)
    w = rng.standard_normal((oc, 2, 3, 3), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32)
    for fwd, fused, args in [(lambda full: D.conv2d_direct_forward(x, w, b, 1, 1, 1, 1, 1, full),
                              D.conv2d_direct_forward_maxpool2, (1, 1, 1, 1, 1)),
                             (lambda full: D.conv2d_winograd_forward(x, w, b, 1, 1, 1, full),
                              D.conv2d_winograd_forward_maxpool2, (1, 1, 1))]:
        full = np.empty((n, oc, h, h), np.float32)
        fwd(full)
        want, want_idx = np.empty((n, oc, h // 2, h // 2), np.float32), np.empty((n, oc, h // 2, h // 2), np.int32)
        _ref.maxpool2d_forward(full, 2, 2, 2, 2, 0, 0, want, want_idx)
        y, idx = np.full(want.shape, np.nan, np.float32), np.full(want.shape, -1, np.int32)
        fused(x, w, b, *args, h, h, y, idx)
        assert y.tobytes() == want.tobytes() and idx.tobytes() == want_idx.tobytes()
        y = np.full(want.shape, np.nan, np.float32)
        fused(x, w, b, *args, h, h, y, np.empty((0, 0, 0, 0), np.int32))
        assert y.tobytes() == want.tobytes()


@pytest.mark.parametrize("shape", DENSE_CHAIN_SHAPES)
def test_dense_gemm_is_one_fma_chain_per_output(shape):
    """On the AVX2/AVX-512 paths every output of the Numba dense kernels is the FMA chain over
    the inner index in order, as the Cython kernels' (test_ext.py): the two backends give the
    same bytes."""
    from fastcnn._kernels import dense

    if not dense.TILED:
        pytest.skip("the baseline path calls SciPy's SGEMM (its own order)")
    check_dense_fma_chain(dense, shape)


@pytest.mark.parametrize("shape,strategy", [(s, "auto") for s in DENSE_ROWS_SHAPES]
                         + [(s, "rows") for s in DENSE_ROWS_FORCED_SHAPES])
def test_dense_rows_path_is_its_definition(shape, strategy):
    """The Numba rows path of small batches (and of any batch with ``config(dense="rows")``)
    gives rows_kern.h's bytes, as the Cython kernels' (test_ext.py): FMA on the SIMD paths, a
    multiply and an add on the baseline path."""
    from fastcnn._kernels import dense

    check_dense_rows(dense, shape, dense.TILED, strategy)


@pytest.mark.skipif("cython" not in fastcnn.available_backends(), reason="Cython backend not built")
@pytest.mark.parametrize("shape", [(128, 3136, 1024), (7, 33, 65), (1, 5, 3)])
def test_dense_same_bytes_as_cython_on_the_baseline_path(shape):
    """With FASTCNN_ISA=baseline (.ci/run) both backends make the same SciPy SGEMM calls: the
    same bytes (on the SIMD paths both are the FMA chain, the test above and test_ext.py)."""
    from fastcnn._kernels import dense

    if dense.TILED or os.environ.get("FASTCNN_ISA", "").strip().lower() != "baseline":
        pytest.skip("runs with FASTCNN_ISA=baseline (both backends on SciPy's SGEMM)")
    n, k_in, k_out = shape
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((n, k_in), dtype=np.float32), rng.standard_normal((k_out, k_in), dtype=np.float32)
    b, gy = rng.standard_normal(k_out, dtype=np.float32), rng.standard_normal((n, k_out), dtype=np.float32)
    outs, previous = [], fastcnn.get_backend()
    try:
        for name in ("numba", "cython"):
            fastcnn.set_backend(name)
            gx, gw, gb = F.linear_backward(gy, x, w)
            outs.append([a.tobytes() for a in (F.linear(x, w, b), gw, gb, gx)])
    finally:
        fastcnn.set_backend(previous)
    assert outs[0] == outs[1]
