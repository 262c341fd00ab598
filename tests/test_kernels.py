"""Every backend's primitives against the NumPy reference, the reference against naive loops,
finite differences and PyTorch; determinism; errors."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastcnn
from fastcnn import _backend, _dispatch, _ref
from fastcnn import functional as F
from fastcnn.functional import ConvGeometry

import naive
from conftest import BACKENDS, COMPILED, assert_close, needs_torch
from utils import numgrad

HSET = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_all_backends_compiled():
    """An installed fastcnn has all three backends (the Cython extension and Numba)."""
    assert fastcnn.available_backends() == ("numpy", "numba", "cython"), {
        b: repr(_backend.backend_error(b)) for b in ("numba", "cython")
    }


@st.composite
def geometries(draw, pool=False):
    n = draw(st.sampled_from([1, 2, 3]))
    c = draw(st.sampled_from([1, 2, 3, 5, 16, 33, 64])) if not pool else draw(st.integers(1, 7))
    kh = draw(st.sampled_from([1, 2, 3, 5]))
    kw = draw(st.sampled_from([kh, 1, 3]))
    sh = draw(st.sampled_from([1, 2, 3]))
    sw = draw(st.sampled_from([sh, 1, 2]))
    h = draw(st.integers(max(kh, 1), 13))
    w = draw(st.integers(max(kw, 1), 13))
    padding = draw(st.sampled_from(["valid", "same", 0, 1, 2, (1, 0)]))
    if pool and isinstance(padding, (int, tuple)):
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        if 2 * ph > kh or 2 * pw > kw:
            padding = "valid"
    g = ConvGeometry((kh, kw), (sh, sw), padding, (h, w), "test")
    if pool and (max(g.pt, g.pb) >= kh or max(g.pl, g.pr) >= kw):
        g = ConvGeometry((kh, kw), (sh, sw), "valid", (h, w), "test")
    seed = draw(st.integers(0, 2**31 - 1))
    return n, c, h, w, g, np.random.default_rng(seed)


def _mod(name):
    return _backend.ops(name)


# ----------------------------------------------------------------------------- primitives

@pytest.mark.parametrize("name", COMPILED)
@HSET
@given(geo=geometries())
def test_im2col_col2im_match_reference(name, geo):
    n, c, h, w, g, rng = geo
    k = _mod(name)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    kdim, cols_n = c * g.kh * g.kw, n * g.oh * g.ow
    want = np.empty((kdim, cols_n), np.float32)
    got = np.full((kdim, cols_n), np.nan, np.float32)
    _ref.im2col(x, *g.args, g.oh, g.ow, want)
    k.im2col(x, *g.args, g.oh, g.ow, got)
    np.testing.assert_array_equal(got, want)
    cols = rng.standard_normal((kdim, cols_n), dtype=np.float32)
    want = np.empty(x.shape, np.float32)
    got = np.full(x.shape, np.nan, np.float32)
    _ref.col2im(cols, *g.args, g.oh, g.ow, want)
    k.col2im(cols, *g.args, g.oh, g.ow, got)
    assert_close(got, want, 1e-5, what="col2im")


@pytest.mark.parametrize("name", COMPILED)
@HSET
@given(n=st.integers(1, 4), oc=st.integers(1, 70), p=st.integers(1, 50), seed=st.integers(0, 99))
def test_reorders_match_reference(name, n, oc, p, seed):
    rng = np.random.default_rng(seed)
    k = _mod(name)
    ycnp = rng.standard_normal((oc, n * p), dtype=np.float32)
    bias = rng.standard_normal(oc, dtype=np.float32)
    want, got = np.empty((n, oc, p), np.float32), np.full((n, oc, p), np.nan, np.float32)
    _ref.cnp_to_ncp_bias(ycnp, bias, want)
    k.cnp_to_ncp_bias(ycnp, bias, got)
    np.testing.assert_array_equal(got, want)
    gy = rng.standard_normal((n, oc, p), dtype=np.float32)
    wc, gc = np.empty((oc, n * p), np.float32), np.full((oc, n * p), np.nan, np.float32)
    wb, gb = np.empty(oc, np.float32), np.full(oc, np.nan, np.float32)
    _ref.ncp_to_cnp_sum(gy, wc, wb)
    k.ncp_to_cnp_sum(gy, gc, gb)
    np.testing.assert_array_equal(gc, wc)
    assert_close(gb, wb, 1e-5, what="bias grad")


@st.composite
def batched_geometries(draw):
    n0, c, h, w, g, rng = draw(geometries())
    n = draw(st.sampled_from([1, 2, 3, 7, 8, 9, 20]))  # fewer, as many and more images than slots
    return n, min(c, 16), h, w, g, rng


@pytest.mark.parametrize("name", COMPILED)
@HSET
@given(geo=batched_geometries(), oc=st.sampled_from([1, 3, 8]), input_grad=st.booleans())
def test_per_image_primitives_match_reference(name, geo, oc, input_grad):
    n, c, h, w, g, rng = geo
    k = _mod(name)
    kdim, p = c * g.kh * g.kw, g.oh * g.ow
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    w2 = rng.standard_normal((oc, kdim), dtype=np.float32)
    bias = rng.standard_normal(oc, dtype=np.float32)
    slots = 3
    want, got = np.empty((n, oc, p), np.float32), np.full((n, oc, p), np.nan, np.float32)
    _ref.conv2d_forward_images(x, w2, bias, *g.args, g.oh, g.ow, np.empty((1, kdim, p), np.float32), want)
    k.conv2d_forward_images(x, w2, bias, *g.args, g.oh, g.ow, np.full((slots, kdim, p), np.nan, np.float32), got)
    assert_close(got, want, 1e-5, what="forward")
    gy = rng.standard_normal((n, oc, p), dtype=np.float32)
    outs = []
    for mod, t in ((_ref, 1), (k, slots)):
        parts = (np.full((_ref.SLOTS, kdim, oc), np.nan, np.float32), np.full((_ref.SLOTS, oc), np.nan))
        gx = np.full(x.shape if input_grad else (1, 1, 1, 1), np.nan, np.float32)
        mod.conv2d_backward_images(gy, x, w2, *g.args, g.oh, g.ow, input_grad,
                                   np.full((t, kdim, p), np.nan, np.float32),
                                   np.full((t, kdim, oc), np.nan, np.float32), *parts, gx)
        outs.append(parts + (gx,))
    (wgw, wgb, wgx), (ggw, ggb, ggx) = outs
    for s in range(_ref.SLOTS):  # every slot, including the empty ones (zeros)
        assert_close(ggw[s], wgw[s], 1e-5, what=f"weight-gradient slot {s}")
        assert_close(ggb[s], wgb[s], 1e-12, what=f"bias-gradient slot {s}")
    if input_grad:
        assert_close(ggx, wgx, 1e-5, what="input gradient")


@pytest.mark.parametrize("name", COMPILED)
@HSET
@given(n=st.integers(1, 40), k_in=st.integers(1, 70), k_out=st.integers(1, 70), nblocks=st.integers(1, 5),
       input_grad=st.booleans(), seed=st.integers(0, 99))
def test_linear_primitives_match_reference(name, n, k_in, k_out, nblocks, input_grad, seed):
    rng = np.random.default_rng(seed)
    k = _mod(name)
    x = rng.standard_normal((n, k_in), dtype=np.float32)
    w = rng.standard_normal((k_out, k_in), dtype=np.float32)
    b = rng.standard_normal(k_out, dtype=np.float32)
    want, got = np.empty((n, k_out), np.float32), np.full((n, k_out), np.nan, np.float32)
    _ref.linear_forward(x, w, b, nblocks, want)
    k.linear_forward(x, w, b, nblocks, got)
    assert_close(got, want, 1e-5, what="linear forward")
    gy = rng.standard_normal((n, k_out), dtype=np.float32)
    outs = []
    for mod in (_ref, k):
        gw, gb = np.full(w.shape, np.nan, np.float32), np.full(k_out, np.nan, np.float32)
        gx = np.full(x.shape if input_grad else (1, 1), np.nan, np.float32)
        mod.linear_backward(gy, x, w, input_grad, nblocks, np.full((k_out, n), np.nan, np.float32), gw, gb, gx)
        outs.append((gw, gb, gx))
    (wgw, wgb, wgx), (ggw, ggb, ggx) = outs
    assert_close(ggw, wgw, 1e-5, what="weight gradient")
    assert_close(ggb, wgb, 1e-6, what="bias gradient")
    if input_grad:
        assert_close(ggx, wgx, 1e-5, what="input gradient")


@pytest.mark.parametrize("n", [1, 3])
def test_linear_with_no_input_features(backend, conv_path, n):
    """K = 0: the output is the bias and the gradients are empty or zero, on every path."""
    b = np.array([1.5, -2.0], np.float32)
    y = F.linear(np.ones((n, 0), np.float32), np.ones((2, 0), np.float32), b)
    np.testing.assert_array_equal(y, np.tile(b, (n, 1)))
    gx, gw, gb = F.linear_backward(np.ones((n, 2), np.float32), np.ones((n, 0), np.float32),
                                   np.ones((2, 0), np.float32))
    assert gx.shape == (n, 0) and gw.shape == (2, 0)
    np.testing.assert_array_equal(gb, [n, n])


def test_per_image_path_choice(compiled, monkeypatch, request):
    """Auto mode, on a shape the direct kernels do not take (OC < 8): per image for the
    compiled backends when SciPy's BLAS is single-threaded, but never when one image's
    unfolded matrix exceeds CHUNK_BYTES (memory per thread)."""
    k = _backend.ops()
    request.addfinalizer(fastcnn.config(conv="auto").__exit__)  # (restored after the test)
    single = fastcnn._threads.gemm_blas_single()
    assert _dispatch.conv_plan(k, 3, 4, 5, 3, 3, 9, 9, 4) == ("per_image" if single else "chunked")
    big = _dispatch.CHUNK_BYTES // (4 * 9 * 4) + 1  # pixels whose 4x3x3 columns exceed it
    assert _dispatch.conv_plan(k, 3, 4, 5, 3, 3, big, 1, 4) == "chunked"
    assert _dispatch.conv_plan(_ref, 3, 4, 5, 3, 3, 9, 9, 4) == "chunked"
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 9, 9), dtype=np.float32)
    w = rng.standard_normal((5, 4, 3, 3), dtype=np.float32)
    want = F.conv2d(x, w, None, 1, 1)
    monkeypatch.setattr(_dispatch, "CHUNK_BYTES", 4 * 36 * 81 - 1)  # one image's columns no longer fit
    assert _dispatch.conv_plan(k, 3, 4, 5, 3, 3, 9, 9, 4) == "chunked"
    assert_close(F.conv2d(x, w, None, 1, 1), want, 1e-6)


@pytest.mark.parametrize("strategy", ["per_image", "direct"])
def test_per_image_results_do_not_depend_on_threads(compiled, strategy, request):
    """The per-image and direct paths sum the weight gradient in fixed slots: 1 and 2
    threads agree bit for bit."""
    if fastcnn._threads.max_threads() < 2:
        pytest.skip("needs 2 cores")
    request.addfinalizer(fastcnn.config(conv=strategy).__exit__)  # (restored after the test)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((13, 6, 12, 12), dtype=np.float32)
    w = rng.standard_normal((10, 6, 3, 3), dtype=np.float32)
    b = rng.standard_normal(10, dtype=np.float32)
    gy = rng.standard_normal((13, 10, 12, 12), dtype=np.float32)
    before = fastcnn.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            fastcnn.set_num_threads(threads)
            runs.append((F.conv2d(x, w, b, 1, 1),) + F.conv2d_backward(gy, x, w, 1, 1))
    finally:
        fastcnn.set_num_threads(before)
    for a, c in zip(*runs):
        assert a.tobytes() == c.tobytes()


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("values", ["normal", "ties", "special"])
@HSET
@given(geo=geometries(pool=True))
def test_pooling_matches_reference(name, values, geo):
    n, c, h, w, g, rng = geo
    k = _mod(name)
    if values == "normal":
        x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    elif values == "ties":
        x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float32)
    else:
        x = rng.choice(np.array([-np.inf, np.nan, 0.0, 1.0, -1.0], np.float32), (n, c, h, w))
    shape = (n, c, g.oh, g.ow)
    wy, gy_ = np.empty(shape, np.float32), np.full(shape, 7.0, np.float32)
    wi, gi = np.empty(shape, np.int32), np.full(shape, -1, np.int32)
    _ref.maxpool2d_forward(x, *g.args, wy, wi)
    k.maxpool2d_forward(x, *g.args, gy_, gi)
    np.testing.assert_array_equal(gi, wi)
    np.testing.assert_array_equal(gy_, wy)  # NaN positions compare equal
    grad = rng.standard_normal(shape, dtype=np.float32)
    want, got = np.empty(x.shape, np.float32), np.full(x.shape, np.nan, np.float32)
    _ref.maxpool2d_backward(grad, wi, want)
    k.maxpool2d_backward(grad, wi, got)
    assert_close(got, want, 1e-6, what="maxpool backward")
    if values == "special":
        return
    for include in (True, False):
        want, got = np.empty(shape, np.float32), np.full(shape, np.nan, np.float32)
        _ref.avgpool2d_forward(x, *g.args, include, want)
        k.avgpool2d_forward(x, *g.args, include, got)
        assert_close(got, want, 1e-6, what="avgpool forward")
        want, got = np.empty(x.shape, np.float32), np.full(x.shape, np.nan, np.float32)
        _ref.avgpool2d_backward(grad, *g.args, include, want)
        k.avgpool2d_backward(grad, *g.args, include, got)
        assert_close(got, want, 1e-6, what="avgpool backward")


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4, 5), (129, 1001)])
def test_relu_matches_reference(name, shape):
    rng = np.random.default_rng(1)
    k = _mod(name)
    x = rng.standard_normal(shape, dtype=np.float32)
    want, got = np.empty(shape, np.float32), np.full(shape, np.nan, np.float32)
    _ref.relu_forward(x, want)
    k.relu_forward(x, got)
    np.testing.assert_array_equal(got, want)
    gy = rng.standard_normal(shape, dtype=np.float32)
    _ref.relu_backward(gy, want, want.copy())
    w2, g2 = np.empty(shape, np.float32), np.empty(shape, np.float32)
    _ref.relu_backward(gy, x, w2)
    k.relu_backward(gy, x, g2)
    np.testing.assert_array_equal(g2, w2)


@pytest.mark.parametrize("name", COMPILED)
@HSET
@given(n=st.integers(1, 130), classes=st.integers(1, 20), scale=st.sampled_from([0.1, 1.0, 30.0, 300.0]),
       seed=st.integers(0, 99))
def test_softmax_xent_matches_reference(name, n, classes, scale, seed):
    rng = np.random.default_rng(seed)
    k = _mod(name)
    logits = (scale * rng.standard_normal((n, classes))).astype(np.float32)
    labels = rng.integers(0, classes, n).astype(np.int64)
    wp, gp = np.empty_like(logits), np.full_like(logits, np.nan)
    wl, gl = np.empty(n, np.float32), np.full(n, np.nan, np.float32)
    _ref.softmax_xent_forward(logits, labels, wp, wl)
    k.softmax_xent_forward(logits, labels, gp, gl)
    assert np.all(np.isfinite(gl)) and np.all(np.isfinite(gp))
    assert_close(gp, wp, 1e-5, what="probs")
    assert_close(gl, wl, 1e-5, atol=1e-6, what="losses")
    wg, gg = np.empty_like(logits), np.full_like(logits, np.nan)
    _ref.softmax_xent_backward(wp, labels, wg)
    k.softmax_xent_backward(wp, labels, gg)
    assert_close(gg, wg, 1e-6, what="xent grad")


# ----------------------------------------------------------------------------- whole ops vs naive loops

@HSET
@given(geo=geometries(), oc=st.sampled_from([1, 4, 7]), use_bias=st.booleans())
def test_conv2d_all_backends_match_naive(conv_path, geo, oc, use_bias):
    n, c, h, w, g, rng = geo
    c = min(c, 8)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((oc, c, g.kh, g.kw), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32) if use_bias else None
    pads = (g.pt, g.pb, g.pl, g.pr)
    want = naive.conv2d(x.astype(np.float64), wt.astype(np.float64), None if b is None else b.astype(np.float64),
                        (g.sh, g.sw), pads)
    previous = fastcnn.get_backend()
    try:
        for name in BACKENDS:
            fastcnn.set_backend(name)
            # pass explicit pads through an int/pair or string exactly as resolved
            y = F.conv2d(x, wt, b, (g.sh, g.sw), _padding_for(g, h, w))
            assert_close(y, want, 2e-5, what=f"conv2d[{name}]")
    finally:
        fastcnn.set_backend(previous)


def _padding_for(g, h, w):
    """A padding argument that resolves to g's pads (symmetric int pair or 'same')."""
    if g.pt == g.pb and g.pl == g.pr:
        return (g.pt, g.pl)
    return "same"


@HSET
@given(geo=geometries(pool=True))
def test_pools_all_backends_match_naive(geo):
    n, c, h, w, g, rng = geo
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    pads = (g.pt, g.pb, g.pl, g.pr)
    pad_arg = _padding_for(g, h, w)
    want_max, want_idx = naive.pool2d(x.astype(np.float64), (g.kh, g.kw), (g.sh, g.sw), pads, "max")
    include = pad_arg != "same"
    want_avg, _ = naive.pool2d(x.astype(np.float64), (g.kh, g.kw), (g.sh, g.sw), pads, "avg", include)
    previous = fastcnn.get_backend()
    try:
        for name in BACKENDS:
            fastcnn.set_backend(name)
            y, idx = F.max_pool2d(x, (g.kh, g.kw), (g.sh, g.sw), pad_arg, return_indices=True)
            np.testing.assert_array_equal(y, want_max.astype(np.float32))
            np.testing.assert_array_equal(idx, want_idx)
            assert_close(F.avg_pool2d(x, (g.kh, g.kw), (g.sh, g.sw), pad_arg), want_avg, 1e-6, what=name)
    finally:
        fastcnn.set_backend(previous)


# ----------------------------------------------------------------------------- finite differences (float64)


@pytest.mark.parametrize("stride,padding,kernel,size", [
    (1, 0, 3, (5, 6)), (2, "same", 3, (7, 5)), (2, "same", 2, (6, 7)), (1, (2, 1), 5, (4, 5)), (3, 1, 1, (5, 5)),
])
def test_conv2d_reference_backward_finite_differences(stride, padding, kernel, size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3) + size)
    w = rng.standard_normal((4, 3, kernel, kernel))
    b = rng.standard_normal(4)
    g = ConvGeometry((kernel, kernel), (stride, stride), padding, size, "test")
    y = F._conv2d_forward(_ref, x, w, b, g, None)
    r = rng.standard_normal(y.shape)  # loss = sum(r * y)
    gx, gw, gb = F._conv2d_backward(_ref, r, x, w, g, True, True, None)

    def loss():
        return float(np.sum(r * F._conv2d_forward(_ref, x, w, b, g, None)))

    for got, arr in ((gx, x), (gw, w), (gb, b)):
        np.testing.assert_allclose(got, numgrad(loss, arr), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel,stride,padding,size", [(2, 2, 0, (6, 6)), (3, 2, "same", (7, 6)), (3, 1, 1, (5, 4)),
                                                          (2, 1, 0, (3, 3))])
def test_pool_reference_backward_finite_differences(kernel, stride, padding, size):
    rng = np.random.default_rng(1)
    x = rng.permutation(2 * 3 * size[0] * size[1]).reshape((2, 3) + size).astype(np.float64)  # distinct: no ties
    g = ConvGeometry((kernel, kernel), (stride, stride), padding, size, "test")
    shape = (2, 3, g.oh, g.ow)
    r = rng.standard_normal(shape)
    xs = x / x.size  # O(1) values keep the central differences accurate
    for include in (True, False):
        def avg():
            y = np.empty(shape)
            _ref.avgpool2d_forward(xs, *g.args, include, y)
            return float(np.sum(r * y))
        gx = np.empty_like(x)
        _ref.avgpool2d_backward(r, *g.args, include, gx)
        np.testing.assert_allclose(gx, numgrad(avg, xs), rtol=1e-6, atol=1e-8)
    y, idx = np.empty(shape), np.empty(shape, np.int32)

    def mx():
        _ref.maxpool2d_forward(x, *g.args, y, idx)
        return float(np.sum(r * y))

    num = numgrad(mx, x, eps=1e-3)  # distinct integers 1 apart: eps well inside the gaps
    mx()
    gx = np.empty_like(x)
    _ref.maxpool2d_backward(r, idx, gx)
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-7)


def test_relu_and_softmax_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 7))
    x[np.abs(x) < 1e-3] = 0.5
    r = rng.standard_normal(x.shape)

    def relu_loss():
        y = np.empty_like(x)
        _ref.relu_forward(x, y)
        return float(np.sum(r * y))

    y = np.empty_like(x)
    _ref.relu_forward(x, y)
    gx = np.empty_like(x)
    _ref.relu_backward(r, y, gx)
    np.testing.assert_allclose(gx, numgrad(relu_loss, x), rtol=1e-6, atol=1e-8)

    labels = np.array([0, 6, 3, 3])

    def xent():
        p, l = np.empty_like(x), np.empty(4)
        _ref.softmax_xent_forward(x, labels, p, l)
        return float(l.mean())

    p, l = np.empty_like(x), np.empty(4)
    _ref.softmax_xent_forward(x, labels, p, l)
    gx = np.empty_like(x)
    _ref.softmax_xent_backward(p, labels, gx)
    np.testing.assert_allclose(gx, numgrad(xent, x), rtol=1e-6, atol=1e-8)
    loss, g = naive.softmax_xent(x, labels)
    assert abs(xent() - loss) < 1e-12
    np.testing.assert_allclose(gx, g, rtol=1e-12)


# ----------------------------------------------------------------------------- PyTorch

@needs_torch
@pytest.mark.parametrize("n,c,oc,hw,k,stride,padding", [
    (1, 1, 32, (28, 28), 5, 1, "same"), (3, 32, 64, (14, 14), 5, 1, "same"), (2, 3, 5, (9, 7), 3, 2, "same"),
    (2, 16, 8, (11, 11), 3, 2, 1), (1, 5, 3, (6, 9), 1, 1, 0), (2, 4, 6, (8, 8), 4, 2, "same"),
    (11, 3, 4, (7, 6), 3, 1, 1),
])
def test_conv2d_forward_backward_match_torch(backend, conv_path, n, c, oc, hw, k, stride, padding):
    import torch

    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c) + hw, dtype=np.float32)
    w = rng.standard_normal((oc, c, k, k), dtype=np.float32) * 0.1
    b = rng.standard_normal(oc, dtype=np.float32)
    g = ConvGeometry((k, k), (stride, stride), padding, hw, "test")
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ty = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (g.pl, g.pr, g.pt, g.pb)), tw, tb, stride)
    gy = rng.standard_normal(tuple(ty.shape), dtype=np.float32)
    ty.backward(torch.tensor(gy))
    y = F.conv2d(x, w, b, stride, padding)
    assert_close(y, ty.detach().numpy(), 1e-5, what="forward")
    gx, gw, gb = F.conv2d_backward(gy, x, w, stride, padding)
    assert_close(gx, tx.grad.numpy(), 1e-5, what="grad x")
    assert_close(gw, tw.grad.numpy(), 1e-5, what="grad w")
    assert_close(gb, tb.grad.numpy(), 1e-5, what="grad b")


@needs_torch
@pytest.mark.parametrize("shape,k,stride,padding", [((3, 32, 28, 28), 2, 2, 0), ((1, 3, 7, 7), 3, 2, 1),
                                                    ((2, 2, 9, 6), 3, 1, 1), ((2, 64, 14, 14), 2, 2, 0)])
def test_pools_match_torch(backend, shape, k, stride, padding):
    import torch

    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape, dtype=np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty, tidx = torch.nn.functional.max_pool2d(tx, k, stride, padding, return_indices=True)
    gy = rng.standard_normal(tuple(ty.shape), dtype=np.float32)
    ty.backward(torch.tensor(gy))
    y, idx = F.max_pool2d(x, k, stride, padding, return_indices=True)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    assert_close(F.max_pool2d_backward(gy, idx, x.shape), tx.grad.numpy(), 1e-6)
    tx.grad = None
    ta = torch.nn.functional.avg_pool2d(tx, k, stride, padding)
    ta.backward(torch.tensor(gy))
    assert_close(F.avg_pool2d(x, k, stride, padding), ta.detach().numpy(), 1e-6)
    assert_close(F.avg_pool2d_backward(gy, x.shape, k, stride, padding), tx.grad.numpy(), 1e-6)


@needs_torch
def test_softmax_cross_entropy_matches_torch(backend):
    import torch

    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((128, 10)) * 5).astype(np.float32)
    labels = rng.integers(0, 10, 128)
    tl = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tl, torch.tensor(labels))
    tloss.backward()
    loss, probs = F.softmax_cross_entropy(logits, labels)
    assert abs(loss - tloss.item()) <= 1e-5 * abs(tloss.item())
    assert_close(F.softmax_cross_entropy_backward(probs, labels), tl.grad.numpy(), 1e-5)


# ----------------------------------------------------------------------------- determinism, threads

@pytest.mark.parametrize("threads", [1, 2])
def test_conv_backward_is_bit_identical_run_to_run(backend, conv_path, threads):
    if threads > fastcnn._threads.max_threads():
        pytest.skip("needs 2 cores")
    before = fastcnn.get_num_threads()
    fastcnn.set_num_threads(threads)
    try:
        rng = np.random.default_rng(6)
        x = rng.standard_normal((16, 8, 14, 14), dtype=np.float32)
        w = rng.standard_normal((12, 8, 5, 5), dtype=np.float32)
        gy = rng.standard_normal((16, 12, 14, 14), dtype=np.float32)
        runs = [F.conv2d_backward(gy, x, w, 1, "same") for _ in range(3)]
        for gx, gw, gb in runs[1:]:
            assert gx.tobytes() == runs[0][0].tobytes()
            assert gw.tobytes() == runs[0][1].tobytes()
            assert gb.tobytes() == runs[0][2].tobytes()
    finally:
        fastcnn.set_num_threads(before)


def test_thread_knob():
    from threadpoolctl import threadpool_info

    before = fastcnn.get_num_threads()
    try:
        fastcnn.set_num_threads(1)
        assert fastcnn.get_num_threads() == 1
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
        import numba

        assert numba.get_num_threads() == 1
        with pytest.raises(ValueError, match="between 1 and"):
            fastcnn.set_num_threads(0)
        with pytest.raises(TypeError):
            fastcnn.set_num_threads("2")
    finally:
        fastcnn.set_num_threads(before)


def test_backend_registry_errors():
    with pytest.raises(ValueError, match="available: numpy"):
        fastcnn.set_backend("tensorflow")
    assert fastcnn.get_backend() in fastcnn.available_backends()


def _recorded_primitive_calls(name):
    """The primitive calls (name, args) a few functional ops make on backend ``name``."""
    from fastcnn.layers import Parameter
    from fastcnn.optim import Adam

    k, calls = _backend.ops(name), []

    class Recorder:
        def __getattr__(self, prim):
            def call(*args):
                calls.append((prim, args))
                return getattr(k, prim)(*args)
            return call

    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((3, 2, 7, 7), dtype=np.float32), rng.standard_normal((4, 2, 3, 3), dtype=np.float32)
    ops, previous = _backend.ops, fastcnn.get_backend()
    _backend.ops = lambda backend=None: Recorder()
    try:
        fastcnn.set_backend(name)
        for conv in ("direct", "per_image", "chunked"):
            with fastcnn.config(conv=conv):
                F.conv2d_backward(F.conv2d(x, w, None, 2, 1), x, w, 2, 1)
        y, idx = F.max_pool2d(x, 2, return_indices=True)
        F.max_pool2d_backward(y, idx, x.shape)
        F.avg_pool2d_backward(F.avg_pool2d(x, 3, 2, 1), x.shape, 3, 2, 1)
        F.relu_backward(x, F.relu(x))
        F.softmax_cross_entropy_backward(F.softmax_cross_entropy(x[:, 0, 0], [1, 2, 0])[1], [1, 2, 0])
        F.linear_backward(F.linear(x[:, 0, 0], x[0, 0]), x[:, 0, 0], x[0, 0])
        F.batch_norm2d_backward(*F.batch_norm2d(x, np.ones(2, np.float32), np.zeros(2, np.float32),
                                                np.zeros(2, np.float32), np.ones(2, np.float32),
                                                training=True), np.ones(2, np.float32))
        p = Parameter(w.copy())
        p.grad[...] = 1.0
        Adam([p]).step()
    finally:
        _backend.ops = ops
        fastcnn.set_backend(previous)
    return calls


@pytest.mark.parametrize("name", COMPILED)
def test_primitives_survive_bad_arrays(name):
    """A primitive of a compiled backend called with an array of the wrong size raises or
    runs safely, never crashes: the size check of the contract runs first in both backends.
    Cython's typed memoryviews also refuse other dtypes and layouts (Numba compiles a kernel
    for the dtype it gets, and refuses to flatten a non-contiguous array: not swept here, each
    would be a compilation)."""
    k = _backend.ops(name)
    calls = _recorded_primitive_calls(name)
    assert {prim for prim, _ in calls} >= set(_backend.PRIMITIVES) - {"linear_forward", "linear_backward"}
    for prim, args in calls:
        for i, a in enumerate(args):
            if not isinstance(a, np.ndarray) or a.size < 2:
                continue
            wrong = np.float32 if a.dtype != np.float32 else np.float64
            smaller = np.ascontiguousarray(a[..., 1:] if a.shape[-1] > 1 else a[1:])
            bads = (smaller,) if name == "numba" else (a.astype(wrong), np.repeat(a, 2, axis=-1)[..., ::2], smaller)
            for bad in bads:
                try:
                    getattr(k, prim)(*args[:i], bad, *args[i + 1:])
                except Exception:  # noqa: BLE001  (Numba's typing errors included)
                    continue
                assert name == "numba" or bad is smaller, f"{prim}: argument {i} {bad.dtype} accepted"


@pytest.mark.parametrize("name", COMPILED)
def test_size_checks_of_the_contract_are_the_same_for_both_compiled_backends(name):
    k = _backend.ops(name)
    f32 = np.zeros
    cases = [
        (k.im2col, (f32((2, 3, 6, 6), np.float32), 3, 3, 1, 1, 0, 0, 4, 4, f32((27, 31), np.float32))),
        (k.maxpool2d_forward, (f32((1, 2, 4, 4), np.float32), 2, 2, 2, 2, 0, 0, f32((1, 2, 2, 2), np.float32),
                               f32((1, 2, 2, 3), np.int32))),
        (k.maxpool2d_backward, (f32((1, 1, 2, 2), np.float32), np.full((1, 1, 2, 2), 99, np.int32),
                                f32((1, 1, 4, 4), np.float32))),
        (k.avgpool2d_forward, (f32((1, 2, 4, 4), np.float32), 2, 2, 2, 2, 2, 0, True, f32((1, 2, 3, 2), np.float32))),
        (k.softmax_xent_forward, (f32((2, 3), np.float32), np.array([0, 3]), f32((2, 3), np.float32),
                                  f32(2, np.float32))),
        (k.relu_forward, (f32((2, 3), np.float32), f32((2, 2), np.float32))),
        (k.adam_step, (f32(4, np.float32), f32(4, np.float32), f32(3, np.float32), f32(4, np.float32),
                       1e-3, 0.9, 0.999, 1e-8, 1.0)),
        (k.conv2d_direct_forward, (f32((1, 2, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                   f32(4, np.float32), 1, 1, 0, 0, 0, f32((1, 3, 3, 3), np.float32))),
        (k.batchnorm_forward, (f32((2, 3, 2, 2), np.float32), *[f32(3, np.float32)] * 3, f32(2, np.float32),
                               f32((2, 3, 2, 2), np.float32), f32((2, 3, 2, 2), np.float32))),
    ]
    for fn, args in cases:
        with pytest.raises(ValueError, match="shape|size|range|window|match"):
            fn(*args)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,exc,match", [
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8), np.float32)[0], np.zeros((4, 3, 3, 3), np.float32)), ValueError, "4-D"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8), np.int32), np.zeros((4, 3, 3, 3), np.float32)), TypeError, "floating"),
    (lambda: F.conv2d(np.zeros((1, 2, 8, 8), np.float32), np.zeros((4, 3, 3, 3), np.float32)), ValueError,
     r"expected input shape \(N, 3, H, W\)"),
    (lambda: F.conv2d(np.zeros((1, 3, 2, 2), np.float32), np.zeros((4, 3, 3, 3), np.float32)), ValueError,
     "larger than the padded input"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8), np.float32), np.zeros((4, 3, 3, 3), np.float32), np.zeros(5, np.float32)),
     ValueError, r"bias must have shape \(4,\)"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8), np.float32), np.zeros((4, 3, 3, 3), np.float32), padding="full"),
     ValueError, "padding"),
    (lambda: F.conv2d(np.zeros((1, 3, 8, 8), np.float32), np.zeros((4, 3, 3, 3), np.float32), stride=0),
     ValueError, "stride"),
    (lambda: F.conv2d(np.zeros((0, 3, 8, 8), np.float32), np.zeros((4, 3, 3, 3), np.float32)), ValueError, "empty"),
    (lambda: F.max_pool2d(np.zeros((1, 3, 1, 1), np.float32), 2), ValueError, "larger than the padded input"),
    # found by fuzzing: an empty plane with padding left windows with no real cell
    (lambda: F.max_pool2d(np.zeros((2, 1, 1, 0), np.float32), 4, 3, 2), ValueError, "empty input"),
    (lambda: F.avg_pool2d(np.zeros((2, 1, 0, 3), np.float32), 2, 1, 1), ValueError, "empty input"),
    (lambda: F.conv2d(np.zeros((1, 3, 0, 4), np.float32), np.zeros((4, 3, 3, 3), np.float32), padding=2),
     ValueError, "empty input"),
    (lambda: F.max_pool2d(np.zeros((1, 3, 8, 8), np.float32), 2, padding=2), ValueError, "padding"),
    (lambda: F.max_pool2d("x", 2), TypeError, "floating"),
    (lambda: F.max_pool2d(object(), 2), TypeError, "numpy array"),
    (lambda: F.softmax_cross_entropy(np.zeros((2, 3), np.float32), [0, 3]), ValueError, r"\[0, 3\)"),
    (lambda: F.softmax_cross_entropy(np.zeros((2, 3), np.float32), [0.0, 1.0]), TypeError, "integer"),
    (lambda: F.softmax_cross_entropy(np.zeros((2, 3), np.float32), [0]), ValueError, r"shape \(2,\)"),
    (lambda: F.linear(np.zeros((2, 5), np.float32), np.zeros((3, 4), np.float32)), ValueError,
     r"expected input shape \(N, 4\)"),
])
def test_bad_input_raises_clear_errors(backend, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_workspace_plan_cache_keeps_every_check():
    """A Workspace remembers checked geometry, but arguments that differ only by type (bool,
    float) still fail, and new shapes or dtypes are checked again."""
    ws = F.Workspace()
    x = np.ones((2, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    F.conv2d(x, w, None, 1, 1, ws=ws)
    F.max_pool2d(x, 2, ws=ws)
    with pytest.raises(TypeError, match="padding"):
        F.conv2d(x, w, None, 1, True, ws=ws)
    with pytest.raises(TypeError, match="stride"):
        F.conv2d(x, w, None, 1.0, 1, ws=ws)
    with pytest.raises(TypeError, match="kernel_size"):
        F.max_pool2d(x, 2.0, ws=ws)
    with pytest.raises(ValueError, match="channels"):
        F.conv2d(np.ones((2, 5, 8, 8), np.float32), w, None, 1, 1, ws=ws)
    with pytest.raises(ValueError, match="must be smaller than the kernel|at most half"):
        F.max_pool2d(x, 2, padding=2, ws=ws)
    y64 = F.conv2d(x.astype(np.float64), w, None, 1, 1, ws=ws)  # converted, same result
    assert y64.dtype == np.float32
    np.testing.assert_array_equal(y64, F.conv2d(x, w, None, 1, 1))
    small = F.conv2d(np.ones((1, 3, 5, 5), np.float32), w, None, 1, 1, ws=ws)
    assert small.shape == (1, 4, 5, 5)


def test_float64_and_noncontiguous_inputs_are_converted(backend):
    rng = np.random.default_rng(7)
    x64 = rng.standard_normal((2, 3, 9, 9))
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = F.conv2d(x64, w)
    assert y.dtype == np.float32
    assert_close(y, F.conv2d(x64.astype(np.float32), w), 1e-6)
    big = rng.standard_normal((2, 3, 18, 18), dtype=np.float32)
    view = big[:, :, ::2, ::2]
    assert not view.flags.c_contiguous
    assert_close(F.conv2d(view, w), F.conv2d(np.ascontiguousarray(view), w), 0)
    assert_close(F.max_pool2d(view, 2), F.max_pool2d(np.ascontiguousarray(view), 2), 0)


def test_zero_dim_and_empty_relu_keep_their_shape(backend):
    for x in (np.float64(-2.0) * np.ones(()), np.zeros((0, 3), np.float32)):
        y = F.relu(x)
        assert y.shape == x.shape and y.dtype == np.float32
        assert F.relu_backward(np.ones_like(y), y).shape == x.shape


def test_conv_chunking_matches_single_pass(backend, monkeypatch, request):
    """Several im2col chunks (uneven last one) give the single-chunk result."""
    request.addfinalizer(fastcnn.config(conv="chunked").__exit__)  # (restored after the test)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((7, 3, 9, 8), dtype=np.float32)
    w = rng.standard_normal((5, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(5, dtype=np.float32)
    gy = rng.standard_normal((7, 5, 5, 4), dtype=np.float32)
    whole = (F.conv2d(x, w, b, 2, "same"),) + F.conv2d_backward(gy, x, w, 2, "same")
    per_image = 27 * 20 * 4
    monkeypatch.setattr(_dispatch, "CHUNK_BYTES", 3 * per_image)  # chunks of 3, 3, 1 images
    assert _dispatch.chunks(7, 27 * 20, 4) == [(0, 3), (3, 6), (6, 7)]
    chunked = (F.conv2d(x, w, b, 2, "same"),) + F.conv2d_backward(gy, x, w, 2, "same")
    for a, c in zip(whole, chunked):
        assert_close(c, a, 1e-6)


@pytest.mark.parametrize("stride,padding,use_bias", [(1, "same", True), (2, 1, False), (1, 0, True), (3, "same", False)])
def test_conv_single_image_path_matches_batched(backend, stride, padding, use_bias):
    """Batch 1 skips the GEMM-layout reorders; each image of a batch gets the same result."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((3, 5, 11, 9), dtype=np.float32)
    w = rng.standard_normal((7, 5, 3, 3), dtype=np.float32)
    b = rng.standard_normal(7, dtype=np.float32) if use_bias else None
    y = F.conv2d(x, w, b, stride, padding)
    gy = rng.standard_normal(y.shape, dtype=np.float32)
    gx, gw, gb = F.conv2d_backward(gy, x, w, stride, padding, bias=use_bias)
    sum_gw = np.zeros_like(gw)
    for i in range(3):
        yi = F.conv2d(x[i:i + 1], w, b, stride, padding)
        assert_close(yi, y[i:i + 1], 1e-6, what="forward")
        gxi, gwi, gbi = F.conv2d_backward(gy[i:i + 1], x[i:i + 1], w, stride, padding, bias=use_bias)
        assert_close(gxi, gx[i:i + 1], 1e-6, what="grad x")
        want_gb = gy[i].sum(axis=(1, 2), dtype=np.float64).astype(np.float32)
        if use_bias:
            assert_close(gbi, want_gb, 1e-6, what="grad b")
        else:
            assert gbi is None
        sum_gw += gwi
    assert_close(sum_gw, gw, 1e-5, what="grad w summed over images")
    # The one-image weight gradient against naive loops: conv is linear in w, so
    # gw[o, c, i, j] = sum(gy[o] * conv(x, unit weight at (c, i, j))).
    _, gw1, _ = F.conv2d_backward(gy[:1], x[:1], w, stride, padding, input_grad=False)
    g = ConvGeometry((3, 3), (stride, stride), padding, (11, 9), "test")
    want = np.empty(w.shape)
    for c in range(5):
        for i in range(3):
            for j in range(3):
                unit = np.zeros((1, 5, 3, 3))
                unit[0, c, i, j] = 1.0
                resp = naive.conv2d(x[:1].astype(np.float64), unit, None, (stride, stride), (g.pt, g.pb, g.pl, g.pr))
                want[:, c, i, j] = (gy[0].astype(np.float64) * resp[0]).sum(axis=(1, 2))
    assert_close(gw1, want, 2e-5, what="grad w vs naive")


# ----------------------------------------------------------------------------- batch norm, Adam

def _unfused(name):
    """Whether backend ``name`` rounds every float32 operation (no fused multiply-add), so its
    element-wise kernels must match the reference bit for bit.  Numba runs with fastmath off;
    a Cython build with ``-march=native`` may let the C compiler contract ``a * b + c``."""
    if name != "cython":
        return True
    from fastcnn._ext import _omp

    return "-march" not in _omp.COMPILE_ARGS


def _assert_f32(got, want, exact, what):
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        assert_close(got, want, 1e-6, atol=1e-6, what=what)


@pytest.mark.parametrize("name", COMPILED)
@HSET
@given(n=st.integers(1, 4), c=st.integers(1, 33), h=st.integers(1, 15), w=st.integers(1, 15),
       loc=st.sampled_from([0.0, 3.0, 1000.0]), scale=st.sampled_from([1e-3, 1.0, 50.0]),
       seed=st.integers(0, 99))
def test_batchnorm_primitives_match_reference(name, n, c, h, w, loc, scale, seed):
    rng = np.random.default_rng(seed)
    k = _mod(name)
    exact = _unfused(name)
    shape = (n, c, h, w)
    x = (loc + scale * rng.standard_normal(shape)).astype(np.float32)
    # statistics: float64, fixed order of their own -> equal to rounding
    wm, wv = np.empty(c), np.empty(c)
    gm, gv = np.full(c, np.nan), np.full(c, np.nan)
    _ref.batchnorm_stats(x, wm, wv)
    k.batchnorm_stats(x, gm, gv)
    assert_close(gm, wm, 1e-13, atol=0, what="mean")
    assert_close(gv, wv, 1e-10, atol=1e-300, what="var")
    # normalisation: float32 operations in the reference's order
    mean = wm.astype(np.float32)
    inv_std = (1.0 / np.sqrt(wv + 1e-5)).astype(np.float32)
    weight = rng.uniform(0.5, 2, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    wh, wy = np.empty(shape, np.float32), np.empty(shape, np.float32)
    gh, gy_ = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
    _ref.batchnorm_forward(x, mean, inv_std, weight, bias, wh, wy)
    k.batchnorm_forward(x, mean, inv_std, weight, bias, gh, gy_)
    _assert_f32(gh, wh, exact, "xhat")
    _assert_f32(gy_, wy, exact, "y")
    # gradients
    grad = rng.standard_normal(shape, dtype=np.float32)
    ws_, wd = np.empty(c), np.empty(c)
    gs, gd = np.full(c, np.nan), np.full(c, np.nan)
    _ref.batchnorm_backward_reduce(grad, wh, ws_, wd)
    k.batchnorm_backward_reduce(grad, wh, gs, gd)
    assert_close(gs, ws_, 1e-12, atol=1e-12, what="gsum")
    assert_close(gd, wd, 1e-12, atol=1e-12, what="gdot")
    m = n * h * w
    for a, b in ((ws_ / m, wd / m), (np.zeros(c), np.zeros(c))):  # training, eval
        a, b = a.astype(np.float32), b.astype(np.float32)
        sc = weight * inv_std
        want, got = np.empty(shape, np.float32), np.full(shape, np.nan, np.float32)
        _ref.batchnorm_backward_apply(grad, wh, sc, a, b, want)
        k.batchnorm_backward_apply(grad, wh, sc, a, b, got)
        _assert_f32(got, want, exact, "gx")


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("loc", [0.0, 1000.0, -3e4])
def test_batchnorm_stats_accurate_for_large_mean(name, loc):
    """Mean 1000, std 1 (and worse): the variance keeps ~all its digits (two-pass, float64)."""
    rng = np.random.default_rng(11)
    x = (loc + rng.standard_normal((8, 3, 11, 13))).astype(np.float32)
    x64 = x.astype(np.float64)
    mean, var = np.empty(3), np.empty(3)
    _mod(name).batchnorm_stats(x, mean, var)
    assert_close(mean, x64.mean(axis=(0, 2, 3)), 1e-14, atol=0, what="mean")
    want = ((x64 - x64.mean(axis=(0, 2, 3), keepdims=True)) ** 2).mean(axis=(0, 2, 3))
    assert_close(var, want, 1e-12, atol=0, what="var")


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (1, 1, 1, 1)])
def test_batch_norm2d_training_needs_two_values(backend, shape):
    args = [np.ones(shape[1], np.float32), np.zeros(shape[1], np.float32),
            np.zeros(shape[1], np.float32), np.ones(shape[1], np.float32)]
    with pytest.raises(ValueError, match="more than one value per channel"):
        F.batch_norm2d(np.zeros(shape, np.float32), *args, training=True)
    y, cache = F.batch_norm2d(np.ones(shape, np.float32), *args, training=False)  # eval is fine
    assert y.shape == shape
    gx, gw, gb = F.batch_norm2d_backward(np.ones(shape, np.float32), cache, args[0])
    assert gx.shape == shape and gw.shape == gb.shape == (shape[1],)


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm2d_backends_agree(compiled, train):
    """The whole op (statistics, running stats, forward, backward) against the numpy backend."""
    rng = np.random.default_rng(12)
    x = (1000 + rng.standard_normal((3, 7, 5, 9))).astype(np.float32)
    gy = rng.standard_normal(x.shape, dtype=np.float32)
    weight = rng.uniform(0.5, 2, 7).astype(np.float32)
    bias = rng.standard_normal(7).astype(np.float32)
    out = {}
    for name in ("numpy", compiled):
        fastcnn.set_backend(name)
        rm, rv = np.full(7, 999.5, np.float32), np.linspace(0.5, 2, 7, dtype=np.float32)
        y, cache = F.batch_norm2d(x, weight, bias, rm, rv, training=train)
        out[name] = (y, rm, rv) + F.batch_norm2d_backward(gy, cache, weight)
    fastcnn.set_backend(compiled)
    names = ("y", "running_mean", "running_var", "gx", "gw", "gb")
    for what, a, b in zip(names, out[compiled], out["numpy"]):
        assert_close(a, b, 1e-5, atol=1e-6, what=what)


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm2d_is_bit_identical_run_to_run(backend, threads):
    if threads > fastcnn._threads.max_threads():
        pytest.skip("needs 2 cores")
    before = fastcnn.get_num_threads()
    rng = np.random.default_rng(13)
    x = (5 + 3 * rng.standard_normal((16, 12, 14, 14))).astype(np.float32)
    gy = rng.standard_normal(x.shape, dtype=np.float32)
    weight = rng.uniform(0.5, 2, 12).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)

    def run():
        rm, rv = np.zeros(12, np.float32), np.ones(12, np.float32)
        y, cache = F.batch_norm2d(x, weight, bias, rm, rv, training=True)
        return (y, rm, rv) + F.batch_norm2d_backward(gy, cache, weight)

    try:
        fastcnn.set_num_threads(1)
        single = run()
        fastcnn.set_num_threads(threads)
        runs = [run() for _ in range(3)]
    finally:
        fastcnn.set_num_threads(before)
    for r in runs:
        for a, b in zip(r, single):  # same bytes on repeat and for any thread count
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 7), (2 * 16384 + 5,), (64, 32, 5, 5)])
def test_adam_step_matches_reference(name, shape):
    rng = np.random.default_rng(14)
    k = _mod(name)
    p0 = rng.standard_normal(shape).astype(np.float32)
    want = [p0.copy(), np.zeros(shape, np.float32), np.zeros(shape, np.float32)]
    got = [p0.copy(), np.zeros(shape, np.float32), np.zeros(shape, np.float32)]
    lr, (b1, b2), eps = 1e-3, (0.9, 0.999), 1e-8
    for t in range(1, 11):
        g = rng.standard_normal(shape).astype(np.float32)
        g[rng.random(shape) < 0.1] = 0.0
        args = (lr / (1 - b1 ** t), b1, b2, eps, np.sqrt(1 - b2 ** t))
        _ref.adam_step(want[0], g, want[1], want[2], *args)
        k.adam_step(got[0], g, got[1], got[2], *args)
    for what, a, b in zip(("p", "m", "v"), got, want):
        _assert_f32(a, b, _unfused(name), what)
    with pytest.raises(ValueError, match="C-contiguous"):
        big = np.zeros((4, 6), np.float32)
        k.adam_step(big[:, ::2], np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32),
                    np.zeros((4, 3), np.float32), *args)


def test_adam_optimizer_backends_agree():
    """``optim.Adam`` through each backend: the same parameters after 10 steps."""
    from fastcnn import optim

    shapes = [(32, 1, 5, 5), (32,), (10, 33)]
    rng = np.random.default_rng(15)
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(10)]
    before = fastcnn.get_backend()
    result = {}
    try:
        for name in BACKENDS:
            fastcnn.set_backend(name)
            params = [fastcnn.Parameter(a) for a in init]
            opt = optim.Adam(params, lr=0.01)
            for step in grads:
                for p, g in zip(params, step):
                    p.grad[...] = g
                opt.step()
            result[name] = [p.data.copy() for p in params]
    finally:
        fastcnn.set_backend(before)
    for name in COMPILED:
        for a, b in zip(result[name], result["numpy"]):
            _assert_f32(a, b, _unfused(name), f"{name} Adam")


# ----------------------------------------------------------------------------- SciPy's BLAS for per-image GEMMs

_BLAS_PROBE = """
import json, sys
{pre}
import fastcnn
from threadpoolctl import threadpool_info
fastcnn.set_num_threads({threads})
libs = [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]
print(json.dumps(dict(single=fastcnn._threads.gemm_blas_single(), gemm=fastcnn._threads._gemm_blas,
                      libs=libs, path=fastcnn._threads.conv_path_description())))
"""


def _blas_probe(pre="", threads=1, env=None):
    import json
    import os
    import subprocess
    import sys

    from conftest import NEUTRAL_CWD

    full_env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "FASTCNN_NO_THREAD_DEFAULTS")}
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", _BLAS_PROBE.format(pre=pre, threads=threads)], cwd=NEUTRAL_CWD,
                         env=full_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pre", ["", "import numpy", "import scipy.linalg"])
def test_scipy_blas_runs_single_threaded_and_stays_so(pre):
    """Whatever was imported first, SciPy's BLAS (the one-pool GEMMs) runs one thread and
    keeps it when the threads knob changes; NumPy's BLAS follows the knob."""
    threads = min(2, fastcnn._threads.max_threads())
    r = _blas_probe(pre=pre, threads=threads)
    assert r["single"], r
    assert "one thread pool" in r["path"]
    by_path = dict(r["libs"])
    assert by_path[r["gemm"]["filepath"]] == 1
    others = [n for p, n in r["libs"] if p != r["gemm"]["filepath"]]
    assert others and all(n == threads for n in others), r


def test_two_pools_when_thread_defaults_are_off():
    why = "FASTCNN_NO_THREAD_DEFAULTS"
    r = _blas_probe(env={"FASTCNN_NO_THREAD_DEFAULTS": "1"})
    assert not r["single"] and why in r["gemm"]["why"], r
    assert "two thread pools" in r["path"]


@pytest.mark.parametrize("missing", ["threadpoolctl", "scipy"])
def test_import_and_ops_work_without_optional_blas_control(missing):
    """Without threadpoolctl or SciPy, ``import fastcnn`` still works and the ops take the
    two-pool path (the Cython backend needs SciPy's BLAS and reports itself unavailable)."""
    import os
    import subprocess
    import sys

    from conftest import NEUTRAL_CWD

    code = f"""
import sys
sys.modules[{missing!r}] = None
import numpy as np
import fastcnn
from fastcnn import functional as F
assert not fastcnn._threads.gemm_blas_single()
assert "cannot be imported" in fastcnn._threads.conv_path_description()
x, w = np.ones((3, 2, 6, 6), np.float32), np.ones((4, 2, 3, 3), np.float32)
for name in fastcnn.available_backends():
    fastcnn.set_backend(name)
    y = F.conv2d(x, w, None, 1, 1)
    assert float(y[0, 0, 2, 2]) == 18.0
    F.conv2d_backward(y, x, w, 1, 1)
    assert F.linear(np.ones((3, 5), np.float32), np.ones((2, 5), np.float32)).tolist() == [[5.0, 5.0]] * 3
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=NEUTRAL_CWD, capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items() if k != "FASTCNN_NO_THREAD_DEFAULTS"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr

