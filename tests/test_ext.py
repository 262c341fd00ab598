"""The Cython backend (``fastcnn._ext``): the SIMD paths of the direct convolution kernels
(``FASTCNN_ISA``)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastcnn

from utils import (
    DENSE_CHAIN_SHAPES,
    DENSE_ROWS_FORCED_SHAPES,
    DENSE_ROWS_SHAPES,
    NEUTRAL_CWD,
    check_dense_fma_chain,
    check_dense_rows,
    cores,
)

_ISA_SCRIPT = """
import numpy as np
import fastcnn
from fastcnn import _ref
from fastcnn._ext import conv_direct as d
print(d.active_isa(), fastcnn.get_config()["conv"])
rng = np.random.default_rng(0)
x = rng.standard_normal((3, 5, 9, 7), dtype=np.float32)
w = rng.standard_normal((11, 5, 3, 2), dtype=np.float32)
b = rng.standard_normal(11, dtype=np.float32)
y, want = (np.empty((3, 11, 5, 4), np.float32) for _ in range(2))
d.conv2d_direct_forward(x, w, b, 2, 2, 1, 1, 0, y)
_ref.conv2d_direct_forward(x, w, b, 2, 2, 1, 1, 0, want)
assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max(), "mismatch"
"""


def _isa_run(isa, extra_env=None):
    env = dict(os.environ, FASTCNN_ISA=isa, FASTCNN_BACKEND="cython")
    # the package under test, also when it is not installed (a source checkout)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(fastcnn.__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-c", _ISA_SCRIPT], cwd=NEUTRAL_CWD, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.skipif("cython" not in fastcnn.available_backends(), reason="Cython backend not built")
def test_every_supported_isa_runs_and_can_be_forced():
    """Each SIMD path this CPU supports can be forced with FASTCNN_ISA and computes the
    reference's result (the whole module runs under each in .ci/run)."""
    from fastcnn._ext import conv_direct

    supported = conv_direct.supported_isas()
    assert supported[0] == "baseline"
    for isa in supported:
        out = _isa_run(isa, {"FASTCNN_CONV": "direct"})
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [isa, "direct"], out.stdout


_BN_SCRIPT = """
import hashlib
import numpy as np
from fastcnn._ext import conv_direct, norm
rng = np.random.default_rng(0)
h = hashlib.sha256()
for shape in ((3, 5, 9, 7), (2, 16, 32, 32), (1, 3, 1, 37)):
    x = (3 + rng.standard_normal(shape)).astype(np.float32)
    g = rng.standard_normal(shape, dtype=np.float32)
    c = shape[1]
    mean, var, gs, gd = (np.empty(c) for _ in range(4))
    y, gx = (np.empty(shape, np.float32) for _ in range(2))
    pooled = shape[:2] + (shape[2] // 2, shape[3] // 2)
    yp, idx = np.empty(pooled, np.float32), np.empty(pooled, np.int32)
    p = [rng.standard_normal(c, dtype=np.float32) for _ in range(5)]
    norm.batchnorm_stats(x, mean, var)
    for relu in (0, 1):
        norm.batchnorm_forward(x, *p[:4], relu, y)
        h.update(y.tobytes())
        norm.batchnorm_forward(x, *p[:4], relu, y, g)
        norm.batchnorm_backward_reduce(g, x, *p[:4], relu, gs, gd)
        norm.batchnorm_backward_apply(g, x, *p[:4], relu, *p[2:], gx)
        for a in (mean, var, y, gs, gd, gx):
            h.update(a.tobytes())
        norm.batchnorm_backward(g, x, *p[:4], relu, p[4], 7.0, gs, gd, gx)
        for a in (gs, gd, gx):
            h.update(a.tobytes())
        if shape[2] >= 2:
            norm.batchnorm_forward_maxpool2(x, *p[:4], relu, yp, idx)
            h.update(yp.tobytes())
            h.update(idx.tobytes())
print(conv_direct.active_isa(), h.hexdigest())
"""


def _digests_per_isa(script):
    """{isa: the digest ``script`` prints} for each SIMD path this CPU supports, each run in a
    process of its own with FASTCNN_ISA set (the script prints the active path and a digest)."""
    from fastcnn._ext import conv_direct

    outs = {}
    for isa in conv_direct.supported_isas():
        env = dict(os.environ, FASTCNN_ISA=isa)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(fastcnn.__file__).resolve().parents[1]),
                                             env.get("PYTHONPATH", "")])
        r = subprocess.run([sys.executable, "-c", script], cwd=NEUTRAL_CWD, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        got_isa, digest = r.stdout.split()
        assert got_isa == isa
        outs[isa] = digest
    return outs


@pytest.mark.skipif("cython" not in fastcnn.available_backends(), reason="Cython backend not built")
def test_batchnorm_loops_give_the_same_bytes_on_every_isa():
    """The batch-norm plane loops are compiled for each SIMD path (norm_kern.h): statistics,
    normalisation and gradients must not depend on which one runs."""
    outs = _digests_per_isa(_BN_SCRIPT)
    assert len(set(outs.values())) == 1, outs


_ADAM_SCRIPT = """
import hashlib
import numpy as np
from fastcnn import _ref
from fastcnn._ext import _omp, conv_direct, optim
rng = np.random.default_rng(0)
h = hashlib.sha256()
# sizes: under one vector, odd tails, several element blocks (the parallel path)
for n in (1, 7, 33, 1000, 70001):
    p, g, m = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    v = rng.random(n).astype(np.float32) * 1e-3
    g[::97] = 0.0
    args = (1e-3, 0.9, 0.999, 1e-8, 0.5)
    want = [a.copy() for a in (p, m, v)]
    _ref.adam_step([want[0]], [g], [want[1]], [want[2]], *args)
    for step in range(2):  # (two steps: the moments' second update reads the first's)
        optim.adam_step([p], [g], [m], [v], *args)
        if step == 0 and "-march" not in _omp.COMPILE_ARGS:
            for got, ref in zip((p, m, v), want):
                assert got.tobytes() == ref.tobytes(), ("not the reference's bytes", n)
    for a in (p, m, v):
        h.update(a.tobytes())
print(conv_direct.active_isa(), h.hexdigest())
"""


@pytest.mark.skipif("cython" not in fastcnn.available_backends(), reason="Cython backend not built")
def test_adam_loop_gives_the_reference_bytes_on_every_isa():
    """Adam's element loop is compiled for each SIMD path (optim_kern.h): every path gives the
    reference's bytes (IEEE square root and division, no contraction), two steps running."""
    outs = _digests_per_isa(_ADAM_SCRIPT)
    assert len(set(outs.values())) == 1, outs


_DENSE_SCRIPT = """
import hashlib
import numpy as np
from fastcnn._ext import conv_direct, dense
rng = np.random.default_rng(0)
h = hashlib.sha256()
for n, k_in, k_out, nblocks in ((1, 1, 1, 1), (3, 5, 7, 2), (7, 129, 200, 3), (65, 300, 130, 2),
                                (128, 3136, 64, 2), (2, 1000, 9, 1)):
    x = rng.standard_normal((n, k_in), dtype=np.float32)
    w = rng.standard_normal((k_out, k_in), dtype=np.float32)
    b, gy = rng.standard_normal(k_out, dtype=np.float32), rng.standard_normal((n, k_out), dtype=np.float32)
    y, gw, gb, gx = (np.full(s, np.nan, np.float32) for s in ((n, k_out), w.shape, (k_out,), x.shape))
    dense.linear_forward(x, w, b, nblocks, y)
    dense.linear_backward(gy, x, w, True, nblocks, np.empty((k_out, n), np.float32), gw, gb, gx)
    for a in (y, gw, gb, gx):
        h.update(a.tobytes())
print(conv_direct.active_isa(), h.hexdigest())
"""


@pytest.mark.skipif("cython" not in fastcnn.available_backends(), reason="Cython backend not built")
def test_dense_gemm_gives_the_same_bytes_on_every_simd_isa():
    """The dense layers' GEMM (gemm_kern.h) sums every output as one chain of FMAs in the
    order of the inner index, whatever the vector width and blocking: AVX2 and AVX-512 give
    the same bytes (the baseline path calls SciPy's SGEMM)."""
    outs = _digests_per_isa(_DENSE_SCRIPT)
    simd = {outs[isa] for isa in outs if isa != "baseline"}
    if not simd:
        pytest.skip("this CPU has neither AVX2 nor AVX-512")
    assert len(simd) == 1, outs


@pytest.mark.skipif("cython" not in fastcnn.available_backends(), reason="Cython backend not built")
@pytest.mark.parametrize("shape", DENSE_CHAIN_SHAPES)
def test_dense_gemm_is_one_fma_chain_per_output(shape):
    """On the AVX2/AVX-512 paths every output of the dense kernels is the FMA chain over the
    inner index in order (so it does not depend on blocks, threads or vector width)."""
    from fastcnn._ext import conv_direct, dense

    if conv_direct.active_isa() == "baseline":
        pytest.skip("the baseline path calls SciPy's SGEMM (its own order)")
    check_dense_fma_chain(dense, shape)


@pytest.mark.skipif("cython" not in fastcnn.available_backends(), reason="Cython backend not built")
@pytest.mark.parametrize("shape,strategy", [(s, "auto") for s in DENSE_ROWS_SHAPES]
                         + [(s, "rows") for s in DENSE_ROWS_FORCED_SHAPES])
def test_dense_rows_path_is_its_definition(shape, strategy):
    """Small batches (any batch with ``config(dense="rows")``) run the rows path (rows_kern.h)
    on every path: sixteen lanes of FMA chains per output (a multiply and an add on the
    baseline path), the gradients FMA chains."""
    from fastcnn._ext import conv_direct, dense

    check_dense_rows(dense, shape, conv_direct.active_isa() != "baseline", strategy)


@pytest.mark.skipif("cython" not in fastcnn.available_backends(), reason="Cython backend not built")
def test_bad_or_unsupported_isa_is_a_clear_error():
    from fastcnn._ext import conv_direct

    out = _isa_run("sse9")
    assert out.returncode != 0 and "FASTCNN_ISA must be one of auto, baseline, avx2, avx512" in out.stderr
    missing = [isa for isa in conv_direct.ISAS if isa not in conv_direct.supported_isas()]
    for isa in missing:  # (none on an AVX-512 machine)
        out = _isa_run(isa)
        assert out.returncode != 0 and f"FASTCNN_ISA={isa}" in out.stderr and "this CPU" in out.stderr
    out = _isa_run("", {"FASTCNN_CONV": "sideways"})
    assert out.returncode != 0 and "FASTCNN_CONV must be one of" in out.stderr


@pytest.mark.skipif("cython" not in fastcnn.available_backends(), reason="Cython backend not built")
def test_every_cython_kernel_module_uses_the_thread_count_from_any_thread():
    """``set_num_threads`` reaches every compiled kernel module (each keeps its own count), so
    kernels called from a non-main Python thread, whose OpenMP default is all cores, use it."""
    import importlib
    import pkgutil
    import threading

    import fastcnn._ext

    if cores() < 2:
        pytest.skip("needs 2 cores")
    names = [m.name for m in pkgutil.iter_modules(fastcnn._ext.__path__) if m.name != "_omp"]
    assert "dense" in names
    seen = {}

    def probe():  # threads a kernel with plenty of work would use, asked from this thread
        for name in names:
            seen[name] = importlib.import_module(f"fastcnn._ext.{name}")._threads_for_work(1 << 40)

    before = fastcnn.get_num_threads()
    try:
        fastcnn.set_num_threads(1)
        t = threading.Thread(target=probe)
        t.start()
        t.join()
    finally:
        fastcnn.set_num_threads(before)
    assert seen == dict.fromkeys(names, 1)


@pytest.mark.skipif(not {"cython", "numba"} <= set(fastcnn.available_backends()), reason="needs both compiled backends")
def test_winograd_numba_and_cython_give_the_same_bytes():
    """The Winograd kernels of the two compiled backends run the same operations in the same
    order (transforms, then FMAs over the channels): on one SIMD path, the same bytes, forward
    and input gradient, F(2x2, r x r) and F(4x4, 3x3)."""

    from fastcnn import _config
    from fastcnn import functional as F
    from fastcnn._ext import conv_direct

    if _config.NUMBA_ISA["isa"] != conv_direct.active_isa():
        pytest.skip(f"Numba runs {_config.NUMBA_ISA['isa']}, Cython {conv_direct.active_isa()}")
    rng = np.random.default_rng(6)
    previous = fastcnn.get_backend()
    try:
        for n, c, oc, h, w, padding, r in [(3, 5, 7, 9, 11, 1, 3), (1, 3, 9, 5, 6, 0, 3), (20, 17, 33, 8, 8, 1, 3),
                                           (2, 16, 16, 32, 32, 1, 3), (2, 4, 8, 7, 7, 2, 3),
                                           (3, 32, 64, 14, 14, 2, 5), (2, 5, 7, 9, 11, 4, 5), (1, 3, 9, 6, 5, 0, 5),
                                           # tile rows of exactly one vector (16, 8 or 4 lanes), an odd last row
                                           (2, 8, 16, 16, 16, 1, 3), (1, 4, 8, 15, 32, 1, 3), (1, 4, 8, 32, 32, 2, 5),
                                           (1, 3, 8, 7, 16, 1, 3), (2, 3, 5, 7, 8, 1, 3),
                                           # vectors of five to eight tile rows (and more, 1x1 images)
                                           (3, 3, 5, 6, 6, 0, 3), (3, 3, 5, 6, 6, 2, 5), (9, 4, 6, 1, 1, 1, 3)]:
            x = rng.standard_normal((n, c, h, w), dtype=np.float32)
            wt = rng.standard_normal((oc, c, r, r), dtype=np.float32)
            b = rng.standard_normal(oc, dtype=np.float32)
            for tile in (2, 4) if r == 3 else (2,):
                got = {}
                for backend in ("numba", "cython"):
                    fastcnn.set_backend(backend)
                    with fastcnn.config(conv="winograd", winograd_tile=tile):
                        y = F.conv2d(x, wt, b, 1, padding, relu=True)
                        gx, _, _ = F.conv2d_backward(y, x, wt, 1, padding)
                    got[backend] = (y.tobytes(), gx.tobytes())
                assert got["numba"] == got["cython"], (n, c, oc, h, w, padding, r, tile)
    finally:
        fastcnn.set_backend(previous)


def test_primitives_refuse_arrays_a_kernel_cannot_take_by_name():
    """Every array argument is checked before a kernel runs (``_arr`` in _common.pxi): a
    read-only output, a byte-swapped or misaligned input, another integer width and a
    non-array are refused, naming the argument; nothing is written."""
    from fastcnn._ext import conv, loss, optim, pool
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 4), dtype=np.float32)
    labels = np.array([0, 3, 1])
    probs, losses = np.zeros((3, 4), np.float32), np.zeros(3, np.float32)
    loss.softmax_xent_forward(logits, labels, probs, losses)  # (all well-formed: runs)
    assert np.isfinite(losses).all() and losses.min() > 0
    readonly = np.zeros((3, 4), np.float32)
    readonly.flags.writeable = False
    raw = np.zeros(4 * 12 + 1, np.uint8)
    misaligned = raw[1:].view(np.float32).reshape(3, 4)
    misaligned[...] = logits
    assert not misaligned.flags.aligned
    cases = [
        ((logits, labels, readonly, losses), ValueError, r"probs must be .*writable.*writable False"),
        ((logits.astype(">f4"), labels, probs, losses), ValueError, r"logits must be .*native-order"),
        ((misaligned, labels, probs, losses), ValueError, r"logits must be .*aligned.*aligned False"),
        ((logits, labels.astype(np.int32), probs, losses), ValueError, r"labels must be .*int64.*got <i4"),
        ((logits, labels, probs, losses[None]), ValueError, r"losses must be .*of 1 dimensions; got .* \(1, 3\)"),
        ((logits.tolist(), labels, probs, losses), TypeError, r"logits must be a numpy.ndarray, got list"),
    ]
    for args, exc, match in cases:
        before = [a.copy() for a in args[2:]]
        with pytest.raises(exc, match=match):
            loss.softmax_xent_forward(*args)
        assert all(np.array_equal(a, b) for a, b in zip(args[2:], before))
    x = rng.standard_normal((1, 2, 4, 4), dtype=np.float32)
    cols = np.zeros((18, 4), np.float32)
    cols.flags.writeable = False
    with pytest.raises(ValueError, match=r"cols must be .*writable"):
        conv.im2col(x, 3, 3, 1, 1, 0, 0, 2, 2, cols)
    with pytest.raises(ValueError, match=r"idx must be .*int32"):
        pool.maxpool2d_backward(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2), np.int64),
                                np.zeros((1, 2, 4, 4), np.float32))
    p = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"gs\[0\] must be .*float32.*got <f8"):
        optim.sgd_step((p,), (np.zeros(5),), (np.zeros(0, np.float32),), 0.1, 0.0, 0.0, 0.0, False, False)
