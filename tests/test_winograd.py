"""Winograd F(2x2, 3x3) convolutions: the reference (``_ref.conv2d_winograd_*``) against the
direct reference, the compiled kernels against both, their determinism, their size checks,
and the ``winograd`` strategy through the functional ops (gradients by finite differences)."""
import numpy as np
import pytest

import fastcnn
from fastcnn import _backend, _config, _dispatch, _ref
from fastcnn import functional as F
from fastcnn._kernels import conv_direct as numba_direct

from utils import COMPILED, cores, numgrad

# (N, C, H, W, OC, pt, pl, OH, OW): odd sizes, batch 1, paddings 0-2 (bottom/right padding as
# implied by the output, which may cut the last tile), OC not a multiple of any tile, many
# small images (grouped), channel counts of the ResNet.
CASES = [
    (2, 3, 7, 9, 5, 1, 1, 7, 9),
    (1, 1, 5, 5, 1, 0, 0, 3, 3),
    (3, 5, 9, 11, 7, 1, 1, 9, 11),
    (1, 3, 5, 6, 9, 0, 0, 3, 4),
    (2, 4, 7, 7, 8, 2, 2, 9, 9),
    (2, 2, 6, 6, 3, 1, 0, 5, 4),
    (1, 16, 32, 32, 16, 1, 1, 32, 32),
    (20, 17, 8, 8, 33, 1, 1, 8, 8),
    (3, 32, 16, 16, 32, 1, 1, 16, 16),
    (2, 6, 1, 1, 4, 1, 1, 1, 1),  # one output of a 1x1 image: all but the centre tap padding
    (2, 7, 2, 19, 10, 2, 1, 4, 19),
]
WINOGRAD = list(COMPILED)

# Tolerance: Winograd's F(2x2, 3x3) sums other terms than the direct convolution: per output,
# sum_c of 16 products u*v of transformed values (|u| <= 4 max|x|: B^T d B adds 4 inputs;
# |v| <= 9/4 max|w|: G g G^T), then A^T m A adds 9 of them.  Its float32 rounding is a
# multiple of eps32 times the direct sum of absolute terms sum |x||w| (Barabasz et al., "Error
# analysis and improving the accuracy of Winograd convolution", 2020: a small constant for
# F(2x2, 3x3)); these cases stay within the direct kernels' bound, 1e-5 = 84 eps32 of that sum
# (their worst, over five seeds, is below a tenth of it).
RTOL = 1e-5


def _data(case, seed=0):
    n, c, h, w, oc, pt, pl, oh, ow = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((oc, c, 3, 3), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32)
    gy = rng.standard_normal((n, oc, oh, ow), dtype=np.float32)
    return x, wt, b, gy


def _direct64(x, wt, b, gy, pt, pl, relu, oh, ow):
    """The direct reference in float64: forward, input gradient, and their sums of |terms|."""
    x64, w64, b64, gy64 = (a.astype(np.float64) for a in (x, wt, b, gy))
    out = {}
    for key, (xx, ww, bb, gg, r) in {"want": (x64, w64, b64, gy64, relu),
                                     "scale": (np.abs(x64), np.abs(w64), np.abs(b64), np.abs(gy64), 0)}.items():
        y = np.empty(gy.shape)
        _ref.conv2d_direct_forward(xx, ww, bb, 1, 1, pt, pl, r, y)
        gx = np.empty(x.shape)
        _ref.conv2d_direct_backward_data(gg, ww, 1, 1, pt, pl, gx)
        out[key] = (y, gx)
    return out


def _run(k, x, wt, b, gy, pt, pl, relu):
    y = np.full(gy.shape, np.nan, x.dtype)
    k.conv2d_winograd_forward(x, wt, b, pt, pl, relu, y)
    gx = np.full(x.shape, np.nan, x.dtype)
    k.conv2d_winograd_backward_data(gy, wt, pt, pl, gx)
    return y, gx


def _close(got, want, scale, what):
    err = np.abs(got.astype(np.float64) - want)
    worst = np.max(err / (RTOL * scale + 1e-30))
    assert worst <= 1.0, f"{what}: error {worst:.3g} x the bound"


@pytest.mark.parametrize("case", CASES)
def test_winograd_reference_is_the_direct_reference(case):
    """In float64 the reference's Winograd algorithm equals the direct correlation to rounding."""
    x, wt, b, gy = (a.astype(np.float64) for a in _data(case))
    pt, pl, oh, ow = case[5:]
    ref = _direct64(x, wt, b, gy, pt, pl, 1, oh, ow)
    got = _run(_ref, x, wt, b, gy, pt, pl, 1)
    for g, w_, s in zip(got, ref["want"], ref["scale"]):
        assert np.all(np.abs(g - w_) <= 1e-13 * s + 1e-300)


@pytest.mark.parametrize("name", ["numpy"] + WINOGRAD)
@pytest.mark.parametrize("case", CASES)
def test_winograd_primitives_match_reference(name, case):
    """Forward (with and without ReLU, with bias) and input gradient of each backend against
    the float64 direct reference, with the bound above; every output element is written."""
    k = _backend.ops(name)
    x, wt, b, gy = _data(case, 3)
    pt, pl, oh, ow = case[5:]
    for relu in (0, 1):
        ref = _direct64(x, wt, b, gy, pt, pl, relu, oh, ow)
        for got, want, scale, what in zip(_run(k, x, wt, b, gy, pt, pl, relu), ref["want"], ref["scale"], ("y", "gx")):
            assert np.isfinite(got).all(), what
            _close(got, want, scale, f"{name} {case} relu={relu} {what}")


@pytest.mark.parametrize("name", WINOGRAD)
def test_winograd_fused_relu_is_max_of_plain(name):
    """The ReLU rule of the ReLU kernels (NaN stays, -0 -> +0), bit for bit."""
    k = _backend.ops(name)
    x, wt, b, gy = _data((2, 5, 9, 7, 6, 1, 1, 9, 7), 4)
    x[0, 0, 3, 3] = np.nan
    y0, _ = _run(k, x, wt, b, gy, 1, 1, 0)
    y1, _ = _run(k, x, wt, b, gy, 1, 1, 1)
    want = np.where(y0 <= 0, np.float32(0), y0)
    assert np.isnan(y0).any()
    assert want.tobytes() == y1.tobytes()


@pytest.mark.parametrize("name", WINOGRAD)
def test_winograd_bit_identical_run_to_run_and_across_threads(name):
    """Each output is summed in one fixed order: repeated runs and 1 vs 2 threads agree bit
    for bit, for whole images and for grouped small ones."""
    k = _backend.ops(name)
    before = fastcnn.get_num_threads()
    for case in [(13, 17, 12, 11, 20, 1, 1, 12, 11), (37, 16, 8, 8, 16, 1, 1, 8, 8)]:
        x, wt, b, gy = _data(case, 5)
        runs = []
        try:
            for threads in (1, 1, 2, 2):
                if threads <= cores():
                    fastcnn.set_num_threads(threads)
                    runs.append(_run(k, x, wt, b, gy, 1, 1, 1))
        finally:
            fastcnn.set_num_threads(before)
        assert len(runs) >= 2
        for run in runs[1:]:
            for a, c in zip(run, runs[0]):
                assert a.tobytes() == c.tobytes()


def test_winograd_numba_and_cython_give_the_same_bytes():
    """The two compiled backends run the same operations in the same order (transforms,
    FMAs over the channels): where both use one SIMD path, the same bytes."""
    if not {"numba", "cython"} <= set(COMPILED):
        pytest.skip("needs both compiled backends")
    from fastcnn._ext import conv_direct as cython_direct
    if _config.NUMBA_ISA["isa"] != cython_direct.active_isa():
        pytest.skip(f"Numba path {_config.NUMBA_ISA['isa']}, Cython path {cython_direct.active_isa()}")
    for case in CASES:
        x, wt, b, gy = _data(case, 6)
        a = _run(_backend.ops("numba"), x, wt, b, gy, case[5], case[6], 1)
        c = _run(_backend.ops("cython"), x, wt, b, gy, case[5], case[6], 1)
        for u, v in zip(a, c):
            assert u.tobytes() == v.tobytes(), case


@pytest.mark.parametrize("name", WINOGRAD)
def test_winograd_size_checks(name):
    """Shapes the Winograd kernels do not take are refused with a ValueError naming the
    problem (never a crash): other kernel sizes, padding beyond 2, mismatched outputs."""
    k = _backend.ops(name)
    x = np.zeros((2, 3, 8, 8), np.float32)
    y = np.zeros((2, 4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="3 x 3"):
        k.conv2d_winograd_forward(x, np.zeros((4, 3, 5, 5), np.float32), np.zeros(4, np.float32), 2, 2, 0,
                                  y)
    with pytest.raises(ValueError, match="padding at most 2"):
        k.conv2d_winograd_forward(x, np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32), 3, 3, 0,
                                  np.zeros((2, 4, 12, 12), np.float32))
    with pytest.raises(ValueError):
        k.conv2d_winograd_forward(x, np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32), 1, 1, 0,
                                  np.zeros((2, 5, 8, 8), np.float32))
    with pytest.raises(ValueError):
        k.conv2d_winograd_backward_data(y, np.zeros((4, 3, 3, 3), np.float32), 1, 1,
                                        np.zeros((2, 5, 8, 8), np.float32))


@pytest.mark.parametrize("padding", [1, 0, 2, "same"])
def test_winograd_strategy_gradients_match_finite_differences(compiled, padding):
    """F.conv2d / F.conv2d_backward on the ``winograd`` strategy (forward and input gradient
    by Winograd, weight gradient by the direct kernels) against central differences of the
    float64 reference (loss = sum(r * conv))."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 7, 6), dtype=np.float32)
    w = rng.standard_normal((5, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(5, dtype=np.float32)
    with fastcnn.config(conv="winograd"):
        y = F.conv2d(x, w, b, 1, padding)
        r = rng.standard_normal(y.shape).astype(np.float32)
        gx, gw, gb = F.conv2d_backward(r, x, w, 1, padding)
    with fastcnn.config(conv="direct"):
        assert np.allclose(y, F.conv2d(x, w, b, 1, padding), rtol=1e-5, atol=1e-5)
    pt = {1: 1, 0: 0, 2: 2, "same": 1}[padding]
    x64, w64, b64, r64 = (a.astype(np.float64) for a in (x, w, b, r))

    def loss():
        out = np.empty(y.shape)
        _ref.conv2d_direct_forward(x64, w64, b64, 1, 1, pt, pt, 0, out)
        return float(np.sum(r64 * out))

    # float32 gradients against float64 differences: a few float32 roundings of sums of
    # ~30 terms of size ~3 -> 1e-4 absolute.
    np.testing.assert_allclose(gx, numgrad(loss, x64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, numgrad(loss, w64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, numgrad(loss, b64), rtol=1e-4, atol=1e-4)


def test_winograd_strategy_with_fused_pooling_and_relu(compiled):
    """On the ``winograd`` strategy ``conv2d(relu=True, max_pool2=True)`` is the ReLU'd
    Winograd forward pooled, and its backward with the indices is the composition."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 4, 10, 9), dtype=np.float32)
    w = rng.standard_normal((6, 4, 3, 3), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    with fastcnn.config(conv="winograd"):
        full = F.conv2d(x, w, b, 1, 1, relu=True)
        y, idx = F.conv2d(x, w, b, 1, 1, relu=True, max_pool2=True, return_indices=True)
        want, want_idx = F.max_pool2d(full, 2, return_indices=True)
        assert y.tobytes() == want.tobytes() and np.array_equal(idx, want_idx)
        gp = rng.standard_normal(y.shape).astype(np.float32)
        got = F.conv2d_backward(gp, x, w, 1, 1, pool_indices=idx, relu_output=y)
        g_full = F.max_pool2d_backward(F.relu_backward(gp, y), idx, full.shape)
        comp = F.conv2d_backward(g_full, x, w, 1, 1)
    for a, c in zip(got, comp):
        assert a.tobytes() == c.tobytes()


def test_winograd_plan_rules():
    """``auto`` picks Winograd for the Cython backend's 3x3 stride-1 layers of 16+ channels
    (forward and input gradient), never for Numba's; ``winograd`` forces it wherever it
    applies and runs the rest as ``direct``."""
    ref = _backend.ops("numpy")
    with fastcnn.config(conv="auto"):
        if "cython" in COMPILED:
            k = _backend.ops("cython")
            assert _dispatch.conv_plan(k, 100, 16, 16, 3, 3, 32, 32, 4) == "winograd"
            assert _dispatch.conv_plan(k, 100, 32, 64, 3, 3, 8, 8, 4, backward=True) == "winograd"
            assert _dispatch.conv_plan(k, 100, 16, 16, 3, 3, 32, 32, 4, True, input_grad=False) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 3, 3, 16, 16, 4, strided=True) == "direct"
            assert _dispatch.conv_plan(k, 100, 3, 16, 3, 3, 32, 32, 4) == "direct"  # first layer
            assert _dispatch.conv_plan(k, 1, 16, 16, 3, 3, 32, 32, 4) == "direct"  # one image
            assert _dispatch.conv_plan(k, 100, 16, 16, 3, 3, 32, 32, 4, pad=3) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 5, 5, 14, 14, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 16, 3, 3, 32, 32, 8) != "winograd"  # float64
        if "numba" in COMPILED:
            k = _backend.ops("numba")
            assert _dispatch.conv_plan(k, 100, 16, 16, 3, 3, 32, 32, 4) == "direct"
        assert _dispatch.conv_plan(ref, 100, 16, 16, 3, 3, 32, 32, 4) == "chunked"
    with fastcnn.config(conv="winograd"):
        for k in [ref] + [_backend.ops(b) for b in COMPILED]:
            assert _dispatch.conv_plan(k, 1, 3, 4, 3, 3, 8, 8, 4) == "winograd"
            assert _dispatch.conv_plan(k, 5, 3, 4, 3, 3, 8, 8, 8, backward=True) == "winograd"
            assert _dispatch.conv_plan(k, 5, 3, 4, 3, 3, 8, 8, 4, True, input_grad=False) == "direct"
            assert _dispatch.conv_plan(k, 5, 3, 4, 5, 5, 8, 8, 4) == "direct"
            assert _dispatch.conv_plan(k, 5, 3, 4, 3, 3, 8, 8, 4, strided=True) == "direct"


def test_numba_winograd_is_exported_by_its_conv_direct_module():
    """The Numba backend's Winograd primitives live in ``_kernels.winograd`` and are collected
    through ``_kernels.conv_direct`` (the module of ``_config.KERNEL_MODULES``)."""
    assert _backend.ops("numba").conv2d_winograd_forward is numba_direct.conv2d_winograd_forward
