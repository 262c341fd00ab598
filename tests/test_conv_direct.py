"""The direct convolution primitives (``conv2d_direct_*``) against the NumPy reference and
naive float64 loops; the conv strategy setting; the SIMD paths (``FASTCNN_ISA``)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import _backend, _dispatch, _ref
from fastcnn import functional as F
from fastcnn.functional import ConvGeometry

import naive
from utils import numgrad
from conftest import COMPILED, NEUTRAL_CWD

# Backends whose direct primitives are real kernels (not the reference itself).
DIRECT = [b for b in COMPILED if _backend.ops(b).conv2d_direct_forward is not _ref.conv2d_direct_forward]

# Tolerance: the kernels sum the K = C*kh*kw (forward), OC*kh*kw (input gradient) or
# N*OH*OW (weight gradient) float32 products of an output in another order than the
# reference (FMA, lanes).  Rounding then stays within ~sqrt(K) * eps32 * sum|terms|
# (worst case K * eps32); with K <= 1600 here, sqrt(K) * eps32 <= 2.4e-6, so 1e-5 of the
# sum of absolute terms (computed in float64) leaves a 4x margin.
RTOL = 1e-5

# (n, c, h, w, oc, kh, kw, stride, padding): odd shapes, batch 1, strides 1/2/3, TF "same"
# (asymmetric), C = 1/3/16/17/64, kh != kw, OC not a multiple of 16, images smaller than
# the kernel, padding larger than the kernel.
CASES = [
    (2, 3, 7, 9, 5, 3, 3, 1, 1),
    (1, 1, 28, 28, 32, 5, 5, 1, "same"),
    (3, 16, 14, 14, 32, 5, 5, 1, 2),
    (2, 17, 11, 8, 9, 3, 2, (2, 3), (1, 0)),
    (1, 64, 8, 8, 64, 3, 3, 2, 1),
    (2, 3, 9, 13, 20, 4, 3, (3, 2), "same"),
    (3, 2, 10, 10, 3, 1, 1, 3, 0),
    (2, 4, 3, 2, 6, 5, 4, (1, 2), (3, 2)),
    (1, 5, 2, 3, 17, 3, 3, 1, 4),
    (2, 16, 6, 7, 16, 3, 3, 2, "same"),
    (4, 1, 9, 9, 8, 2, 5, 1, "valid"),
    (2, 3, 1, 1, 9, 1, 1, 1, 2),  # output cells made of padding only
    (2, 6, 15, 15, 40, 3, 3, 1, 1),  # pixel vectors aligned to rows (OW < 16 < Wq)
    (1, 5, 14, 14, 13, 5, 5, 1, "same"),  # rows, stored directly, OC not a multiple of 4
]


def _geo(case):
    _, _, h, w, _, kh, kw, stride, padding = case
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    return ConvGeometry((kh, kw), stride, padding, (h, w), "test")


def _data(case, seed=0):
    n, c, h, w, oc, kh, kw, _, _ = case
    g = _geo(case)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((oc, c, kh, kw), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32)
    gy = rng.standard_normal((n, oc, g.oh, g.ow), dtype=np.float32)
    return g, x, wt, b, gy


def _close(got, want, abs_scale, what):
    """Element-wise: |got - want| <= RTOL * (sum of absolute terms) (+ a denormal floor)."""
    err = np.abs(got.astype(np.float64) - want)
    bound = RTOL * abs_scale + 1e-30
    worst = np.max(err / bound)
    assert worst <= 1.0, f"{what}: error {worst:.3g} x the bound"


def _run(mod, case, g, x, wt, b, gy, relu=0):
    y = np.full((x.shape[0], wt.shape[0], g.oh, g.ow), np.nan, np.float32)
    mod.conv2d_direct_forward(x, wt, b, g.sh, g.sw, g.pt, g.pl, relu, y)
    gx = np.full(x.shape, np.nan, np.float32)
    mod.conv2d_direct_backward_data(gy, wt, g.sh, g.sw, g.pt, g.pl, gx)
    gw = np.full(wt.shape, np.nan, np.float32)
    gb = np.full(wt.shape[0], np.nan, np.float32)
    mod.conv2d_direct_backward_weight(gy, x, g.sh, g.sw, g.pt, g.pl, gw, gb)
    return y, gx, gw, gb


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_naive_loops(case):
    """The reference primitives (the contract) against naive float64 loops."""
    g, x, wt, b, gy = _data(case)
    x, wt, b, gy = (a.astype(np.float64) for a in (x, wt, b, gy))
    pads = (g.pt, g.pb, g.pl, g.pr)
    y, gx, gw, gb = (np.empty(a.shape) for a in (gy, x, wt, b))
    _ref.conv2d_direct_forward(x, wt, b, g.sh, g.sw, g.pt, g.pl, 0, y)
    _ref.conv2d_direct_backward_data(gy, wt, g.sh, g.sw, g.pt, g.pl, gx)
    _ref.conv2d_direct_backward_weight(gy, x, g.sh, g.sw, g.pt, g.pl, gw, gb)
    want_y = naive.conv2d(x, wt, b, (g.sh, g.sw), pads)
    want_gx, want_gw, want_gb = naive.conv2d_backward(gy, x, wt, (g.sh, g.sw), pads)
    for got, want in ((y, want_y), (gx, want_gx), (gw, want_gw), (gb, want_gb)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    relu = np.empty(y.shape)
    _ref.conv2d_direct_forward(x, wt, b, g.sh, g.sw, g.pt, g.pl, 1, relu)
    np.testing.assert_array_equal(relu, np.maximum(y, 0))


@pytest.mark.parametrize("name", DIRECT)
@pytest.mark.parametrize("case", CASES)
def test_primitives_match_reference(name, case):
    """Every direct primitive of a compiled backend against the reference (float64), with
    the bound on the rounding above; every output element is written."""
    k = _backend.ops(name)
    g, x, wt, b, gy = _data(case)
    for relu in (0, 1):
        y, gx, gw, gb = _run(k, case, g, x, wt, b, gy, relu)
        x64, w64, b64, gy64 = (a.astype(np.float64) for a in (x, wt, b, gy))
        want = [np.empty(a.shape) for a in (y, gx, gw, gb)]
        _ref.conv2d_direct_forward(x64, w64, b64, g.sh, g.sw, g.pt, g.pl, relu, want[0])
        _ref.conv2d_direct_backward_data(gy64, w64, g.sh, g.sw, g.pt, g.pl, want[1])
        _ref.conv2d_direct_backward_weight(gy64, x64, g.sh, g.sw, g.pt, g.pl, want[2], want[3])
        scale = [np.empty(a.shape) for a in want]
        _ref.conv2d_direct_forward(np.abs(x64), np.abs(w64), np.abs(b64), g.sh, g.sw, g.pt, g.pl, 0, scale[0])
        _ref.conv2d_direct_backward_data(np.abs(gy64), np.abs(w64), g.sh, g.sw, g.pt, g.pl, scale[1])
        _ref.conv2d_direct_backward_weight(np.abs(gy64), np.abs(x64), g.sh, g.sw, g.pt, g.pl, scale[2], scale[3])
        for got, w_, s, what in zip((y, gx, gw, gb), want, scale, ("y", "gx", "gw", "gb")):
            assert np.isfinite(got).all(), what
            _close(got, w_, s, f"{name} {case} relu={relu} {what}")
        if relu:
            assert (y >= 0).all()


@pytest.mark.parametrize("name", DIRECT)
def test_fused_relu_is_max_of_plain(name):
    k = _backend.ops(name)
    case = (3, 16, 9, 11, 24, 3, 3, 1, 1)
    g, x, wt, b, gy = _data(case, 3)
    plain, _, _, _ = _run(k, case, g, x, wt, b, gy, 0)
    fused, _, _, _ = _run(k, case, g, x, wt, b, gy, 1)
    assert (plain < 0).any() and (plain > 0).any()
    np.testing.assert_array_equal(fused, np.maximum(plain, 0))


@pytest.mark.parametrize("name", DIRECT)
def test_bit_identical_run_to_run_and_across_threads(name):
    """Fixed summation order: repeated runs, and 1 vs 2 threads, agree bit for bit (the
    weight gradient is summed in fixed slots of consecutive images)."""
    k = _backend.ops(name)
    case = (13, 17, 12, 11, 20, 3, 5, (1, 2), "same")
    g, x, wt, b, gy = _data(case, 5)
    before = fastcnn.get_num_threads()
    runs = []
    try:
        for threads in (1, 1, 2, 2):
            if threads > fastcnn._threads.max_threads():
                continue
            fastcnn.set_num_threads(threads)
            runs.append(_run(k, case, g, x, wt, b, gy, 1))
    finally:
        fastcnn.set_num_threads(before)
    assert len(runs) >= 2
    for run in runs[1:]:
        for a, c in zip(run, runs[0]):
            assert a.tobytes() == c.tobytes()


@pytest.mark.parametrize("name", DIRECT)
@pytest.mark.parametrize("stride,padding", [(1, "same"), (2, 1), ((1, 3), (2, 0))])
def test_functional_gradients_through_direct_path_match_finite_differences(name, stride, padding):
    """F.conv2d_backward on the direct strategy against central differences of the float64
    reference forward (loss = sum(r * conv))."""
    previous = fastcnn.get_backend()
    fastcnn.set_backend(name)
    try:
        with fastcnn.config(conv="direct"):
            rng = np.random.default_rng(11)
            x = rng.standard_normal((2, 3, 6, 5), dtype=np.float32)
            w = rng.standard_normal((9, 3, 3, 2), dtype=np.float32)
            b = rng.standard_normal(9, dtype=np.float32)
            y = F.conv2d(x, w, b, stride, padding)
            r = rng.standard_normal(y.shape).astype(np.float32)
            gx, gw, gb = F.conv2d_backward(r, x, w, stride, padding)
    finally:
        fastcnn.set_backend(previous)
    s = stride if isinstance(stride, tuple) else (stride, stride)
    g = ConvGeometry((3, 2), s, padding, (6, 5), "test")
    x64, w64, b64, r64 = (a.astype(np.float64) for a in (x, w, b, r))

    def loss():
        return float(np.sum(r64 * F._conv2d_forward(_ref, x64, w64, b64, g, None)))

    # float32 gradients against float64 differences: a few float32 roundings of sums of
    # ~50 terms of size ~3 -> 1e-4 absolute.
    np.testing.assert_allclose(gx, numgrad(loss, x64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, numgrad(loss, w64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, numgrad(loss, b64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", DIRECT)
def test_functional_relu_flag(name):
    previous = fastcnn.get_backend()
    fastcnn.set_backend(name)
    try:
        rng = np.random.default_rng(2)
        x = rng.standard_normal((3, 4, 8, 8), dtype=np.float32)
        w = rng.standard_normal((16, 4, 3, 3), dtype=np.float32)
        for conv in ("direct", "per_image", "chunked"):
            with fastcnn.config(conv=conv):
                np.testing.assert_array_equal(F.conv2d(x, w, None, 1, 1, relu=True),
                                              np.maximum(F.conv2d(x, w, None, 1, 1), 0))
    finally:
        fastcnn.set_backend(previous)


# ----------------------------------------------------------------------------- the setting

def test_config_sets_restores_and_validates():
    start = fastcnn.get_config()
    assert start["conv"] in _dispatch.CONV_STRATEGIES
    with fastcnn.config(conv="direct") as cfg:
        assert fastcnn.get_config() == {"conv": "direct"}
        assert "direct" in repr(cfg)
        with fastcnn.config(conv="chunked"):
            assert fastcnn.get_config()["conv"] == "chunked"
        assert fastcnn.get_config()["conv"] == "direct"
    assert fastcnn.get_config() == start
    for bad in ("fast", "", ["auto"], 1):
        with pytest.raises(ValueError, match="conv must be one of"):
            fastcnn.config(conv=bad)
    assert fastcnn.get_config() == start
    fastcnn.config()  # no change
    assert fastcnn.get_config() == start


def test_conv_plan_rules():
    with fastcnn.config(conv="auto"):
        if "cython" in fastcnn.available_backends():
            k = _backend.ops("cython")
            assert _dispatch.conv_plan(k, 100, 16, 32, 5, 5, 14, 14, 4) == "direct"
            assert _dispatch.conv_plan(k, 1, 16, 32, 5, 5, 14, 14, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 5, 5, 14, 14, 8) != "direct"  # float64
            assert _dispatch.conv_plan(k, 100, 16, 32, 5, 5, 14, 14, 4, backward=True) == "direct"
            # first layers and strided convolutions: direct forward, im2col backward
            assert _dispatch.conv_plan(k, 100, 1, 32, 5, 5, 28, 28, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 1, 32, 5, 5, 28, 28, 4, backward=True) != "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 3, 3, 16, 16, 4, (2, 2), True) != "direct"
        # the numpy backend keeps its reference path
        assert _dispatch.conv_plan(_ref, 100, 16, 32, 5, 5, 14, 14, 4) == "chunked"
        assert _dispatch.conv_plan(_ref, 1, 16, 32, 5, 5, 14, 14, 4) == "single"
    for conv in ("direct", "per_image", "chunked"):
        with fastcnn.config(conv=conv):
            assert _dispatch.conv_plan(_ref, 5, 3, 4, 3, 3, 8, 8, 4) == conv
            assert _dispatch.conv_plan(_ref, 1, 3, 4, 3, 3, 8, 8, 4) == ("direct" if conv == "direct" else "single")


# ----------------------------------------------------------------------------- SIMD paths

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
