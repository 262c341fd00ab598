"""The backend registry (``fastcnn._backend``): every compiled backend's primitives against
the NumPy reference (``_ref``), which test_ref.py checks against naive loops."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastcnn
from fastcnn import _backend, _config, _ref
from fastcnn import functional as F

from utils import (
    BACKENDS,
    COMPILED,
    DIRECT_CASES,
    HSET,
    assert_close,
    cores,
    direct_data,
    geometries,
    run_direct,
    tile_max,
)


def test_all_backends_compiled():
    """An installed fastcnn has all three backends (the Cython extension and Numba)."""
    assert fastcnn.available_backends() == ("numpy", "numba", "cython"), {
        b: repr(_backend.backend_error(b)) for b in ("numba", "cython")
    }


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
    # (each output is a sum that may cancel: errors relative to the sum of |terms|; the
    # backends' BLAS calls sum in another order than the reference's)
    ax, aw = np.abs(x).astype(np.float64), np.abs(w).astype(np.float64)
    assert_close(got, want, 1e-5, what="linear forward", scale=np.max(ax @ aw.T + np.abs(b)))
    gy = rng.standard_normal((n, k_out), dtype=np.float32)
    outs = []
    for mod in (_ref, k):
        gw, gb = np.full(w.shape, np.nan, np.float32), np.full(k_out, np.nan, np.float32)
        gx = np.full(x.shape if input_grad else (1, 1), np.nan, np.float32)
        mod.linear_backward(gy, x, w, input_grad, nblocks, np.full((k_out, n), np.nan, np.float32), gw, gb, gx)
        outs.append((gw, gb, gx))
    (wgw, wgb, wgx), (ggw, ggb, ggx) = outs
    ag = np.abs(gy).astype(np.float64)
    assert_close(ggw, wgw, 1e-5, what="weight gradient", scale=np.max(ag.T @ ax))
    assert_close(ggb, wgb, 1e-6, what="bias gradient", scale=np.max(ag.sum(axis=0)))
    if input_grad:
        assert_close(ggx, wgx, 1e-5, what="input gradient", scale=np.max(ag @ aw))


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
@pytest.mark.parametrize("shape", [(2, 3, 37, 35), (1, 2, 28, 28), (3, 1, 5, 4), (1, 1, 2, 65)])
def test_maxpool_2x2_rows_of_any_width(name, shape):
    """2x2 stride-2 max pooling (the vector rows of the compiled kernels: 16 windows at a time,
    the last vector masked) is bit for bit the reference's, indices included, on normal
    values, ties and NaN / -inf."""
    k = _mod(name)
    rng = np.random.default_rng(4)
    pooled = shape[:2] + (shape[2] // 2, shape[3] // 2)
    for x in (rng.standard_normal(shape, dtype=np.float32), rng.integers(-1, 2, shape).astype(np.float32),
              rng.choice(np.array([-np.inf, np.nan, 0.0, 1.0], np.float32), shape)):
        wy, wi = np.empty(pooled, np.float32), np.empty(pooled, np.int32)
        gy_, gi = np.full(pooled, 7.0, np.float32), np.full(pooled, -1, np.int32)
        _ref.maxpool2d_forward(x, 2, 2, 2, 2, 0, 0, wy, wi)
        k.maxpool2d_forward(x, 2, 2, 2, 2, 0, 0, gy_, gi)
        assert gy_.tobytes() == wy.tobytes() and gi.tobytes() == wi.tobytes()


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("hw,k", [((8, 8), 8), ((7, 9), 2), ((10, 11), 3), ((4, 6), (4, 3)), ((1, 5), 1)])
def test_avgpool_backward_tiling_windows_bit_identical(name, hw, k):
    """Windows that tile the plane (stride = kernel, no padding; rows and columns past the last
    window get 0) take the kernels' one-window path: the same bytes as the reference,
    including ``0 + (-0.0) = +0.0``."""
    k = (k, k) if isinstance(k, int) else k
    oh, ow = hw[0] // k[0], hw[1] // k[1]
    grad = np.random.default_rng(0).standard_normal((2, 3, oh, ow), dtype=np.float32)
    grad.flat[0], grad.flat[1] = -0.0, 0.0
    for include in (True, False):
        want, got = np.empty((2, 3) + hw, np.float32), np.full((2, 3) + hw, np.nan, np.float32)
        _ref.avgpool2d_backward(grad, *k, *k, 0, 0, include, want)
        _mod(name).avgpool2d_backward(grad, *k, *k, 0, 0, include, got)
        assert got.tobytes() == want.tobytes()


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
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4, 5), (129, 1001)])
@pytest.mark.parametrize("relu", [False, True])
def test_add_matches_reference(name, shape, relu):
    """``add_forward`` / ``add_relu_forward``, into a new array and in place into either
    addend: the reference's bytes (NaN, infinities and signed zeros included)."""
    rng = np.random.default_rng(2)
    prim = "add_relu_forward" if relu else "add_forward"
    a, b = (rng.standard_normal(shape, dtype=np.float32) for _ in range(2))
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0], np.float32)
    other = np.array([1.0, -1.0, 0.0, -0.0, -0.0, np.nan], np.float32)  # (-0 + -0: -0, ReLU'd +0)
    a.ravel()[:6], b.ravel()[:6] = special[:a.size], other[:a.size]
    want = np.empty(shape, np.float32)
    getattr(_ref, prim)(a, b, want)
    got = np.full(shape, 7.0, np.float32)
    getattr(_mod(name), prim)(a, b, got)
    assert got.tobytes() == want.tobytes()
    for into in (0, 1):
        arrays = [a.copy(), b.copy()]
        getattr(_mod(name), prim)(arrays[0], arrays[1], arrays[into])
        assert arrays[into].tobytes() == want.tobytes()
        assert arrays[1 - into].tobytes() == (a, b)[1 - into].tobytes()


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4, 5), (129, 1001)])
def test_add_relu_backward_matches_reference(name, shape):
    """``add_relu_backward`` into a new array and in place into either gradient: the reference's
    bytes, which are ``add_forward`` then ``relu_backward``'s (NaN, infinities and signed zeros
    included, in the gradients and in the ReLU's output)."""
    rng = np.random.default_rng(4)
    a, b, y = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    a.ravel()[:6] = np.array([np.nan, np.inf, -np.inf, -0.0, -1.0, 2.0], np.float32)[:a.size]
    b.ravel()[:6] = np.array([1.0, -1.0, 1.0, -0.0, 0.5, np.inf], np.float32)[:a.size]
    y.ravel()[:6] = np.array([1.0, 0.0, -0.0, 1.0, np.nan, np.inf], np.float32)[:a.size]
    want, two = np.empty(shape, np.float32), np.empty(shape, np.float32)
    with np.errstate(invalid="ignore"):  # (inf * 0 in NumPy's multiply)
        _ref.add_relu_backward(a, b, y, want)
        _ref.add_forward(a, b, two)
        _ref.relu_backward(two, y, two)
    assert want.tobytes() == two.tobytes()
    k = _mod(name)
    got = np.full(shape, 7.0, np.float32)
    k.add_relu_backward(a, b, y, got)
    assert got.tobytes() == want.tobytes()
    for into in (0, 1):
        arrays = [a.copy(), b.copy()]
        k.add_relu_backward(arrays[0], arrays[1], y, arrays[into])
        assert arrays[into].tobytes() == want.tobytes()
        assert arrays[1 - into].tobytes() == (a, b)[1 - into].tobytes()


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


# ----------------------------------------------------------------------------- registry


def test_backend_registry_errors():
    with pytest.raises(ValueError, match="available: numpy"):
        fastcnn.set_backend("tensorflow")
    assert fastcnn.get_backend() in fastcnn.available_backends()


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
    wy, gy_ = np.empty(shape, np.float32), np.full(shape, np.nan, np.float32)
    _ref.batchnorm_forward(x, mean, inv_std, weight, bias, 0, wy)
    k.batchnorm_forward(x, mean, inv_std, weight, bias, 0, gy_)
    _assert_f32(gy_, wy, exact, "y")
    # the fused ReLU: the ReLU kernel's rule on y, bit for bit
    wr, gr = np.empty(shape, np.float32), np.full(shape, np.nan, np.float32)
    _ref.relu_forward(wy, wr)
    k.batchnorm_forward(x, mean, inv_std, weight, bias, 1, gr)
    _assert_f32(gr, wr, exact, "y, relu")
    # a residual sum in the same pass: add_forward / add_relu_forward of y and res, bit for bit
    res = (loc + scale * rng.standard_normal(shape)).astype(np.float32)
    res.flat[::5] = np.nan
    for relu, add in ((0, _ref.add_forward), (1, _ref.add_relu_forward)):
        want, got = np.empty(shape, np.float32), np.full(shape, np.nan, np.float32)
        add(wy, res, want)
        k.batchnorm_forward(x, mean, inv_std, weight, bias, relu, got, res)
        _assert_f32(got, want, exact, f"y + res, relu={relu}")
    xhat = (x - mean[:, None, None]) * inv_std[:, None, None]  # (float32, the kernels' two roundings)
    # gradients; with relu=1 the gradient of the ReLU'd output, masked as relu_backward with
    # that output (recomputed from x by the kernels)
    grad = rng.standard_normal(shape, dtype=np.float32)
    masked = np.empty(shape, np.float32)
    _ref.relu_backward(grad, wr, masked)
    m = n * h * w
    for relu in (0, 1):
        ws_, wd = np.empty(c), np.empty(c)
        gs, gd = np.full(c, np.nan), np.full(c, np.nan)
        ws_[...] = (masked if relu else grad).sum(axis=(0, 2, 3), dtype=np.float64)
        wd[...] = np.einsum("nchw,nchw->c", masked if relu else grad, xhat, dtype=np.float64)
        k.batchnorm_backward_reduce(grad, x, mean, inv_std, weight, bias, relu, gs, gd)
        assert_close(gs, ws_, 1e-12, atol=1e-12, what=f"gsum relu={relu}")
        assert_close(gd, wd, 1e-12, atol=1e-12, what=f"gdot relu={relu}")
        for a, b in ((ws_ / m, wd / m), (np.zeros(c), np.zeros(c))):  # training, eval
            a, b = a.astype(np.float32), b.astype(np.float32)
            sc = weight * inv_std
            want, got = np.empty(shape, np.float32), np.full(shape, np.nan, np.float32)
            want[...] = ((masked if relu else grad) - (xhat * b[:, None, None] + a[:, None, None])) * sc[:, None, None]
            k.batchnorm_backward_apply(grad, x, mean, inv_std, weight, bias, relu, sc, a, b, got)
            _assert_f32(got, want, exact, f"gx relu={relu}")
        # the whole backward, one channel at a time: the two primitives' bytes (a, b from gs, gd)
        for count in (float(m), 0.0):  # training, eval
            a = (gs / m if count else np.zeros(c)).astype(np.float32)
            b = (gd / m if count else np.zeros(c)).astype(np.float32)
            want = np.empty(shape, np.float32)
            k.batchnorm_backward_apply(grad, x, mean, inv_std, weight, bias, relu, sc, a, b, want)
            fs, fd, fx = np.full(c, np.nan), np.full(c, np.nan), np.full(shape, np.nan, np.float32)
            k.batchnorm_backward(grad, x, mean, inv_std, weight, bias, relu, sc, count, fs, fd, fx)
            np.testing.assert_array_equal(fs, gs)
            np.testing.assert_array_equal(fd, gd)
            np.testing.assert_array_equal(fx, want)
    if h >= 2 and w >= 2:  # the fused ReLU and pooling: the three primitives in sequence
        for relu in (0, 1):
            pooled = (n, c, h // 2, w // 2)
            wy2, wi = np.empty(pooled, np.float32), np.empty(pooled, np.int32)
            _ref.maxpool2d_forward(np.maximum(wy, 0) if relu else wy, 2, 2, 2, 2, 0, 0, wy2, wi)
            gy2, gi = np.full(pooled, np.nan, np.float32), np.full(pooled, -1, np.int32)
            k.batchnorm_forward_maxpool2(x, mean, inv_std, weight, bias, relu, gy2, gi)
            _assert_f32(gy2, wy2, exact, "y, pooled")
            if exact:
                np.testing.assert_array_equal(gi, wi)


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("shape", [(8, 16, 28, 28), (3, 5, 15, 17), (1, 40, 31, 30)])
def test_batchnorm_forward_maxpool2_is_the_composition(name, shape):
    """``batchnorm_forward_maxpool2`` (one plane at a time through a buffer) gives bit for bit
    the backend's own batchnorm_forward and 2x2 maxpool2d_forward, with and without the ReLU
    (NaNs, zeros and odd sizes included), on the parallel path (planes past PAR_MIN_WORK) at
    1 and 2 threads, and at batch 1."""
    k = _backend.ops(name)
    rng = np.random.default_rng(5)
    n, c, h, w = shape
    x = rng.standard_normal(shape, dtype=np.float32)
    x.flat[::97] = np.nan
    x.flat[1::89] = 0.0
    mean, inv_std = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    weight, bias = rng.uniform(-2, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    pooled = (n, c, h // 2, w // 2)
    before = fastcnn.get_num_threads()
    try:
        for relu in (0, 1):
            full = np.empty(shape, np.float32)
            k.batchnorm_forward(x, mean, inv_std, weight, bias, relu, full)
            want, want_idx = np.empty(pooled, np.float32), np.empty(pooled, np.int32)
            k.maxpool2d_forward(full, 2, 2, 2, 2, 0, 0, want, want_idx)
            for threads in (1, min(2, cores())):
                fastcnn.set_num_threads(threads)
                y, idx = np.full(pooled, -7.0, np.float32), np.full(pooled, -1, np.int32)
                k.batchnorm_forward_maxpool2(x, mean, inv_std, weight, bias, relu, y, idx)
                assert y.tobytes() == want.tobytes() and idx.tobytes() == want_idx.tobytes(), (shape, relu, threads)
    finally:
        fastcnn.set_num_threads(before)


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("shape", [(8, 5, 30, 30), (4, 33, 12, 12), (2, 1, 100, 90), (300, 3, 8, 8)])
def test_batchnorm_backward_same_bytes_at_1_and_2_threads(name, shape):
    """The gradient sums and the input gradient on the parallel path (past PAR_MIN_WORK; channel
    counts that two threads do not split evenly, one channel): every channel written, the
    reference's sums (float64, to rounding), the apply primitive's bytes (itself checked
    against the reference above), and the same bytes at 1 and 2 threads."""
    k = _backend.ops(name)
    rng = np.random.default_rng(11)
    n, c, h, w = shape
    x, gy = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
    mean, inv_std = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    weight, bias = rng.uniform(-2, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    sc, m = weight * inv_std, float(n * h * w)
    before = fastcnn.get_num_threads()
    try:
        for relu in (0, 1):
            ws_, wd = np.empty(c), np.empty(c)
            _ref.batchnorm_backward_reduce(gy, x, mean, inv_std, weight, bias, relu, ws_, wd)
            seen = set()
            for threads in (1, min(2, cores())):
                fastcnn.set_num_threads(threads)
                gs, gd = np.full(c, np.nan), np.full(c, np.nan)
                k.batchnorm_backward_reduce(gy, x, mean, inv_std, weight, bias, relu, gs, gd)
                assert_close(gs, ws_, 1e-12, atol=1e-12, what=f"gsum relu={relu} threads={threads}")
                assert_close(gd, wd, 1e-12, atol=1e-12, what=f"gdot relu={relu} threads={threads}")
                want = np.empty(shape, np.float32)
                k.batchnorm_backward_apply(gy, x, mean, inv_std, weight, bias, relu, sc,
                                           (gs / m).astype(np.float32), (gd / m).astype(np.float32), want)
                fs, fd, fx = np.full(c, np.nan), np.full(c, np.nan), np.full(shape, np.nan, np.float32)
                k.batchnorm_backward(gy, x, mean, inv_std, weight, bias, relu, sc, m, fs, fd, fx)
                np.testing.assert_array_equal(fs, gs)
                np.testing.assert_array_equal(fd, gd)
                np.testing.assert_array_equal(fx, want)
                seen.add(gs.tobytes() + gd.tobytes() + fx.tobytes())
            assert len(seen) == 1, (shape, relu)
    finally:
        fastcnn.set_num_threads(before)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("loc", [0.0, 1000.0, -3e4])
def test_batchnorm_stats_accurate_for_large_mean(name, loc):
    """Mean 1000, std 1 (and worse): the variance keeps ~all its digits (float64 sums around
    each plane's first value, combined by the exact split of the squared deviations)."""
    rng = np.random.default_rng(11)
    x = (loc + rng.standard_normal((8, 3, 11, 13))).astype(np.float32)
    x64 = x.astype(np.float64)
    mean, var = np.empty(3), np.empty(3)
    _mod(name).batchnorm_stats(x, mean, var)
    assert_close(mean, x64.mean(axis=(0, 2, 3)), 1e-14, atol=0, what="mean")
    want = ((x64 - x64.mean(axis=(0, 2, 3), keepdims=True)) ** 2).mean(axis=(0, 2, 3))
    assert_close(var, want, 1e-12, atol=0, what="var")


#: Parameter shapes of one optimizer call: one element, odd sizes, empty, above and below
#: ``_config.PAR_MIN_WORK`` (parallel and serial runs in one call), several dimensionalities.
UPDATE_SHAPES = [(1,), (7,), (3, 5, 7), (0,), (2 * 16384 + 5,), (64, 32, 5, 5), (10, 1352), (8, 1, 3, 3)]


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("shapes", [UPDATE_SHAPES, UPDATE_SHAPES[:1], UPDATE_SHAPES * 3])
def test_adam_step_matches_reference(name, shapes):
    """All parameters in one call (lists or tuples, the same tuples again: the Numba kernel's
    kept table), bit for bit."""
    rng = np.random.default_rng(14)
    k = _mod(name)
    p0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    want = [[p.copy() for p in p0], [np.zeros(s, np.float32) for s in shapes],
            [np.zeros(s, np.float32) for s in shapes]]
    got = [tuple(p.copy() for p in p0), tuple(np.zeros(s, np.float32) for s in shapes),
           tuple(np.zeros(s, np.float32) for s in shapes)]
    g = tuple(np.empty(s, np.float32) for s in shapes)
    lr, (b1, b2), eps = 1e-3, (0.9, 0.999), 1e-8
    for t in range(1, 11):
        for a in g:
            a[...] = rng.standard_normal(a.shape)
            a[rng.random(a.shape) < 0.1] = 0.0
        args = (lr / (1 - b1 ** t), b1, b2, eps, np.sqrt(1 - b2 ** t))
        _ref.adam_step(want[0], g, want[1], want[2], *args)
        if t % 2:
            k.adam_step(got[0], g, got[1], got[2], *args)
        else:
            k.adam_step(list(got[0]), list(g), list(got[1]), list(got[2]), *args)
    for what, a, b in zip(("p", "m", "v"), got, want):
        for x, y in zip(a, b):
            _assert_f32(x, y, _unfused(name), what)
    z = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"ps\[1\] must be .*C-contiguous"):
        big = np.zeros((4, 6), np.float32)
        k.adam_step((z.copy(), big[:, ::2]), (z, z), (z.copy(), z.copy()), (z.copy(), z.copy()), *args)
    with pytest.raises(ValueError, match="1 gs for 2 ps"):
        k.adam_step((z.copy(), z.copy()), (z,), (z.copy(), z.copy()), (z.copy(), z.copy()), *args)


@pytest.mark.parametrize("name", COMPILED)
@pytest.mark.parametrize("momentum, dampening, nesterov, weight_decay",
                         [(0.0, 0.0, False, 0.0), (0.0, 0.0, False, 5e-4), (0.9, 0.0, False, 0.0),
                          (0.9, 0.1, False, 5e-4), (0.9, 0.0, True, 1e-2)])
def test_sgd_step_matches_reference(name, momentum, dampening, nesterov, weight_decay):
    """Every variant of the SGD update, the buffers' first update included, all parameters in
    one call, bit for bit (no fused multiply-add in the element-wise kernels); a NaN gradient
    stays in its element."""
    rng = np.random.default_rng(16)
    k = _mod(name)
    shapes = UPDATE_SHAPES
    p0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    want = [[p.copy() for p in p0], [np.zeros(s, np.float32) for s in shapes]]
    got = [tuple(p.copy() for p in p0), tuple(np.zeros(s, np.float32) for s in shapes)]
    g = tuple(np.empty(s, np.float32) for s in shapes)
    if not momentum:  # (buffers unused: any sizes)
        want[1] = got[1] = (np.empty(0, np.float32),) * len(shapes)
    for t in range(6):
        for a in g:
            a[...] = rng.standard_normal(a.shape)
            a[rng.random(a.shape) < 0.1] = 0.0
        if t == 3:
            g[0].flat[0] = np.nan
        args = (0.05, weight_decay, momentum, dampening, nesterov, t == 0)
        _ref.sgd_step(want[0], g, want[1], *args)
        k.sgd_step(got[0], g, got[1], *args)
    for what, a, b in zip(("p", "buf"), got, want):
        for x, y in zip(a, b):
            _assert_f32(x, y, _unfused(name), what)
    assert np.isnan(got[0][0].flat[0]) and np.isfinite(got[0][1]).all()
    z = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"ps\[0\] must be .*C-contiguous"):
        big = np.zeros((4, 6), np.float32)
        k.sgd_step((big[:, ::2],), (z,), (z.copy(),), *args)
    z.flags.writeable = False
    with pytest.raises(ValueError, match=r"ps\[0\] .*(read-only|writable)"):
        k.sgd_step((z,), (z,), (np.zeros(12, np.float32),), *args)


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


# ----------------------------------------------------------------------------- direct convolution primitives

# Backends whose direct primitives are real kernels (not the reference itself).
DIRECT = [b for b in COMPILED if _backend.ops(b).conv2d_direct_forward is not _ref.conv2d_direct_forward]


# Tolerance: the kernels sum the K = C*kh*kw (forward), OC*kh*kw (input gradient) or
# N*OH*OW (weight gradient) float32 products of an output in another order than the
# reference (FMA, lanes).  Rounding then stays within ~sqrt(K) * eps32 * sum|terms|
# (worst case K * eps32); with K <= 1600 here, sqrt(K) * eps32 <= 2.4e-6, so 1e-5 of the
# sum of absolute terms (computed in float64) leaves a 4x margin.
RTOL = 1e-5


def _close(got, want, abs_scale, what):
    """Element-wise: |got - want| <= RTOL * (sum of absolute terms) (+ a denormal floor)."""
    err = np.abs(got.astype(np.float64) - want)
    bound = RTOL * abs_scale + 1e-30
    worst = np.max(err / bound)
    assert worst <= 1.0, f"{what}: error {worst:.3g} x the bound"


@pytest.mark.parametrize("name", DIRECT)
@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_primitives_match_reference(name, case):
    """Every direct primitive of a compiled backend against the reference (float64), with
    the bound on the rounding above; every output element is written."""
    k = _backend.ops(name)
    g, x, wt, b, gy = direct_data(case)
    for relu in (0, 1):
        y, gx, gw, gb = run_direct(k, g, x, wt, b, gy, relu)
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
@HSET
@given(geo=geometries(), oc=st.sampled_from([1, 5, 16, 19]))
def test_direct_primitives_match_reference_on_drawn_geometries(name, geo, oc):
    """The three direct primitives against the reference (float64) on drawn shapes, strides
    and paddings (the strided input gradient's phases included: a phase with taps but no
    positions in the input once shifted the next phases' weights)."""
    n, c, h, w, g, rng = geo
    k = _backend.ops(name)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((oc, c, g.kh, g.kw), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32)
    gy = rng.standard_normal((n, oc, g.oh, g.ow), dtype=np.float32)
    got = run_direct(k, g, x, wt, b, gy)

    def reference(xx, ww, bb, gg):
        out = [np.empty(a.shape) for a in got]
        _ref.conv2d_direct_forward(xx, ww, bb, g.sh, g.sw, g.pt, g.pl, 0, out[0])
        _ref.conv2d_direct_backward_data(gg, ww, g.sh, g.sw, g.pt, g.pl, out[1])
        _ref.conv2d_direct_backward_weight(gg, xx, g.sh, g.sw, g.pt, g.pl, out[2], out[3])
        return out

    arrays = [a.astype(np.float64) for a in (x, wt, b, gy)]
    want, scale = reference(*arrays), reference(*(np.abs(a) for a in arrays))
    for a, w_, sc, what in zip(got, want, scale, ("y", "gx", "gw", "gb")):
        assert np.isfinite(a).all(), what
        _close(a, w_, sc, f"{name} {(n, c, h, w, oc)} {g.kh}x{g.kw} stride {(g.sh, g.sw)} pad {(g.pt, g.pl)} {what}")


@pytest.mark.parametrize("name", ["numpy"] + DIRECT)
def test_direct_weight_gradient_without_bias(name):
    """An empty ``gb`` asks for no bias gradient (a layer without bias): the weight gradient
    is the same bytes, nothing else is written; any other wrong length is refused."""
    k = _backend.ops(name)
    g, x, wt, b, gy = direct_data(DIRECT_CASES[0])
    gw, gb = np.empty(wt.shape, np.float32), np.empty(wt.shape[0], np.float32)
    k.conv2d_direct_backward_weight(gy, x, g.sh, g.sw, g.pt, g.pl, gw, gb)
    gw0, empty = np.full(wt.shape, np.nan, np.float32), np.empty(0, np.float32)
    k.conv2d_direct_backward_weight(gy, x, g.sh, g.sw, g.pt, g.pl, gw0, empty)
    assert gw0.tobytes() == gw.tobytes()
    if name == "numpy":  # (the reference is the spec; the compiled backends check sizes)
        return
    with pytest.raises(ValueError, match=r"gb must have shape \(OC,\) or \(0,\)"):
        k.conv2d_direct_backward_weight(gy, x, g.sh, g.sw, g.pt, g.pl, gw0, np.empty(wt.shape[0] + 1, np.float32))


@pytest.mark.parametrize("name", DIRECT)
def test_direct_fused_relu_is_max_of_plain(name):
    k = _backend.ops(name)
    case = (3, 16, 9, 11, 24, 3, 3, 1, 1)
    g, x, wt, b, gy = direct_data(case, 3)
    plain, _, _, _ = run_direct(k, g, x, wt, b, gy, 0)
    fused, _, _, _ = run_direct(k, g, x, wt, b, gy, 1)
    assert (plain < 0).any() and (plain > 0).any()
    np.testing.assert_array_equal(fused, np.maximum(plain, 0))
    # The ReLU kernels' rule, byte for byte: NaN stays NaN (a NaN input is never hidden), and
    # -0.0 becomes +0.0 (all-zero weights of sign -, bias -0.0, inputs >= 0: the Numba kernels
    # sum to -0.0 there; accumulators started at +0.0 give +0.0).
    x = np.abs(x)
    x[0, 0, 4, 5] = np.nan
    for wt_, b_ in ((wt, b), (np.full_like(wt, -0.0), np.full_like(b, -0.0))):
        plain, _, _, _ = run_direct(k, g, x, wt_, b_, gy, 0)
        fused, _, _, _ = run_direct(k, g, x, wt_, b_, gy, 1)
        want = np.empty_like(plain)
        _ref.relu_forward(plain, want)
        assert np.isnan(plain).any() and fused.tobytes() == want.tobytes()


def _assert_pooled_forward(full, fused, what):
    """``fused(y, idx)`` (a fused forward with 2x2 max pooling) writes bit for bit the reference
    pooling of ``full`` (its unfused forward), at 1 and 2 threads, with and without indices."""
    want = np.empty(full.shape[:2] + (full.shape[2] // 2, full.shape[3] // 2), np.float32)
    want_idx = np.empty(want.shape, np.int32)
    _ref.maxpool2d_forward(full, 2, 2, 2, 2, 0, 0, want, want_idx)
    for threads in (1, 2):
        fastcnn.set_num_threads(min(threads, cores()))
        for with_idx in (False, True):
            y = np.full(want.shape, -7.0, np.float32)
            idx = np.full(want.shape if with_idx else (0, 0, 0, 0), -7, np.int32)
            fused(y, idx)
            assert y.tobytes() == want.tobytes(), (what, threads)
            assert not with_idx or idx.tobytes() == want_idx.tobytes(), (what, threads)


@pytest.mark.parametrize("name", DIRECT)
@pytest.mark.parametrize("case", [c for c in DIRECT_CASES if direct_data(c)[0].oh >= 2 and direct_data(c)[0].ow >= 2]
                         + [(2, 3, 37, 35, 8, 3, 3, 1, 1)])  # (rows of more than 16 windows)
def test_direct_maxpool2_is_the_pool_of_the_forward(name, case):
    """``conv2d_direct_forward_maxpool2`` is bit for bit the reference's 2x2 max pooling of the
    same backend's ``conv2d_direct_forward`` (odd sizes drop the last row or column; NaNs win
    as in the pooling kernels), at 1 and 2 threads, every output written; the indices, when
    asked for, are the pooling's."""
    k = _backend.ops(name)
    g, x, wt, b, gy = direct_data(case, 7)
    x[0, 0, 0, 0] = np.nan  # (a few NaN outputs: the scan rule's NaN case)
    before = fastcnn.get_num_threads()
    try:
        for relu in (0, 1):
            full, _, _, _ = run_direct(k, g, x, wt, b, gy, relu)
            _assert_pooled_forward(full, lambda y, idx: k.conv2d_direct_forward_maxpool2(
                x, wt, b, g.sh, g.sw, g.pt, g.pl, relu, g.oh, g.ow, y, idx), (case, relu))
    finally:
        fastcnn.set_num_threads(before)


_GUARD = 61  # elements of a guard (an odd count: the guarded array is not vector-aligned)


def _guarded(shape, dtype, fill):
    """A C-contiguous array of ``shape`` inside a buffer with ``_GUARD`` elements of ``fill`` on
    each side: ``(array, buffer)``."""
    size = int(np.prod(shape))
    buf = np.full(size + 2 * _GUARD, fill, dtype)
    return buf[_GUARD:_GUARD + size].reshape(shape), buf


def _guards_intact(buf, fill):
    """Whether both guards of a :func:`_guarded` buffer still hold ``fill`` only."""
    return bool((buf[:_GUARD] == fill).all() and (buf[-_GUARD:] == fill).all())


@pytest.mark.parametrize("name", DIRECT)
@pytest.mark.parametrize("c", [1, 16])
def test_rows_of_any_width_write_exactly_the_output(name, c):
    """Output rows of 1 to 17 columns (every partial vector of 4, 8 and 16 lanes, which the AVX2
    paths store 4, 2 and 1 floats at a time): the direct and Winograd forwards (F(2x2, 3x3) and
    F(4x4, 3x3)) and their fused
    pooled forwards write every element of their outputs and nothing before or after them; the
    forwards within their rounding bounds of the reference, the pooled forwards (values and
    indices) bit for bit the reference pooling of the same kernel's forward."""
    k = _backend.ops(name)
    for w in range(1, 18):
        case = (2, c, 5, w, 3, 3, 3, 1, 1)
        g, x, wt, b, gy = direct_data(case, w)
        ref = _wdirect64(x, wt, b, gy, 1, 1, 0, g.oh, g.ow)
        for algo, close in (("direct", _close), ("winograd", _wclose)):
            forward, pooled = getattr(k, f"conv2d_{algo}_forward"), getattr(k, f"conv2d_{algo}_forward_maxpool2")
            args = (1, 1, 1, 1) if algo == "direct" else (1, 1)
            what = f"{name} {algo} width {w}"
            y, ybuf = _guarded((2, 3, g.oh, g.ow), np.float32, 1e30)
            forward(x, wt, b, *args, 0, y)
            close(y, ref["want"][0], ref["scale"][0], what)
            assert _guards_intact(ybuf, 1e30), f"{what}: wrote outside y"
            if algo == "winograd":  # (and F(4x4, 3x3): rows of every width in quadruples)
                y4, y4buf = _guarded((2, 3, g.oh, g.ow), np.float32, 1e30)
                forward(x, wt, b, *args, 0, y4, 4)
                close(y4, ref["want"][0], tile_max(ref["scale"][0], 4), f"{what} m=4")
                assert _guards_intact(y4buf, 1e30), f"{what} m=4: wrote outside y"
            if w < 2:
                continue
            yp, ypbuf = _guarded((2, 3, g.oh // 2, g.ow // 2), np.float32, 1e30)
            idx, ibuf = _guarded(yp.shape, np.int32, -7)
            pooled(x, wt, b, *args, 0, g.oh, g.ow, yp, idx)
            want_p, want_i = np.empty(yp.shape, np.float32), np.empty(yp.shape, np.int32)
            _ref.maxpool2d_forward(y, 2, 2, 2, 2, 0, 0, want_p, want_i)
            assert yp.tobytes() == want_p.tobytes() and idx.tobytes() == want_i.tobytes(), what
            assert _guards_intact(ypbuf, 1e30), f"{what}: wrote outside the pooled y"
            assert _guards_intact(ibuf, -7), f"{what}: wrote outside the indices"


@pytest.mark.parametrize("name", DIRECT)
@pytest.mark.parametrize("case", [c for c in DIRECT_CASES if direct_data(c)[0].oh >= 2 and direct_data(c)[0].ow >= 2]
                         + [(9, 17, 8, 8, 20, 3, 3, 1, 1),
                            # the weight gradient from the winners (C x taps >= POOLED_WGRAD_MIN_PATCH):
                            (3, 13, 9, 11, 10, 5, 5, (1, 2), (2, 1)),  # odd sizes, patch rows of 65 floats
                            (2, 64, 7, 6, 9, 5, 5, 1, 2),  # rows of 320 floats: tiles of several widths
                            (10, 8, 12, 12, 6, 7, 7, 1, 3),  # 7 rows of taps, more images than slots
                            # the input gradient from the winners (stride 1, C x taps >= POOLED_DGRAD_MIN_PATCH):
                            (3, 19, 11, 9, 13, 5, 5, 1, 2),  # odd sizes, a block of 3 channels
                            (2, 5, 12, 13, 7, 9, 9, 1, 4)])  # rows of 9 vectors: runs of 8 and 1
def test_direct_backward_maxpool2_is_the_composition(name, case):
    """``conv2d_direct_backward_maxpool2`` gives bit for bit the backend's own relu_backward,
    maxpool2d_backward, conv2d_direct_backward_weight and _data in sequence, with and without
    the ReLU and the input gradient, at 1 and 2 threads (a -0.0 and a NaN gradient included),
    with indices outside their own windows, and with an infinite input or weight (where the
    gradients from the winners alone would differ: a zero term is NaN); out-of-range indices
    raise.  The input gradient from the winners (stride 1, C x taps >=
    POOLED_DGRAD_MIN_PATCH) sums in its own order: within the direct kernels' bound of the
    composition, NaN where it is NaN, the same bytes at 1 and 2 threads."""
    k = _backend.ops(name)
    g, x, wt, b, _ = direct_data(case, 9)
    n, oc = x.shape[0], wt.shape[0]
    winners_gx = g.sh == g.sw == 1 and x.shape[1] * g.kh * g.kw >= _config.POOLED_DGRAD_MIN_PATCH
    rng = np.random.default_rng(2)
    before = fastcnn.get_num_threads()
    try:
        for relu in (0, 1):
            y = np.empty((n, oc, g.oh // 2, g.ow // 2), np.float32)
            idx = np.empty(y.shape, np.int32)
            k.conv2d_direct_forward_maxpool2(x, wt, b, g.sh, g.sw, g.pt, g.pl, relu, g.oh, g.ow, y, idx)
            gp = rng.standard_normal(y.shape, dtype=np.float32)
            gp.flat[0], gp.flat[-1] = -0.0, np.nan
            g1 = gp
            if relu:
                g1 = np.empty_like(gp)
                k.relu_backward(gp, y, g1)
            full = np.empty((n, oc, g.oh, g.ow), np.float32)
            k.maxpool2d_backward(g1, idx, full)
            want = [np.empty(x.shape, np.float32), np.empty(wt.shape, np.float32), np.empty(oc, np.float32)]
            k.conv2d_direct_backward_data(full, wt, g.sh, g.sw, g.pt, g.pl, want[0])
            k.conv2d_direct_backward_weight(full, x, g.sh, g.sw, g.pt, g.pl, want[1], want[2])
            mask = y if relu else np.empty((0, 0, 0, 0), np.float32)
            gxs = []
            for threads in (1, min(2, cores())):
                fastcnn.set_num_threads(threads)
                for with_gx in (True, False):
                    gx = np.full(x.shape if with_gx else (0, 0, 0, 0), np.nan, np.float32)
                    gw, gb = np.full(wt.shape, np.nan, np.float32), np.full(oc, np.nan, np.float32)
                    k.conv2d_direct_backward_maxpool2(gp, idx, mask, x, wt, g.sh, g.sw, g.pt, g.pl, g.oh, g.ow,
                                                      gx, gw, gb)
                    what = (case, relu, threads, with_gx)
                    assert gw.tobytes() == want[1].tobytes() and gb.tobytes() == want[2].tobytes(), what
                    if with_gx and not winners_gx:
                        assert gx.tobytes() == want[0].tobytes(), what
                    elif with_gx:
                        gxs.append(gx)
            if winners_gx:
                assert all(a.tobytes() == gxs[0].tobytes() for a in gxs[1:]), (case, relu)
                full64, w64 = full.astype(np.float64), wt.astype(np.float64)
                ref, scale = np.empty(x.shape), np.empty(x.shape)
                _ref.conv2d_direct_backward_data(full64, w64, 1, 1, g.pt, g.pl, ref)
                _ref.conv2d_direct_backward_data(np.abs(full64), np.abs(w64), 1, 1, g.pt, g.pl, scale)
                nan = np.isnan(ref)
                assert np.array_equal(np.isnan(gxs[0]), nan), (case, relu)
                _close(gxs[0][~nan], ref[~nan], scale[~nan], f"{name} {case} relu={relu} gx")
    finally:
        fastcnn.set_num_threads(before)
    stray = idx.copy()  # in range, but outside their own windows (and twice the same): as well
    stray.flat[0] = stray.flat[-1] = g.oh * g.ow - 1
    gp = rng.standard_normal(y.shape, dtype=np.float32)
    full = np.empty((n, oc, g.oh, g.ow), np.float32)
    k.maxpool2d_backward(gp, stray, full)
    k.conv2d_direct_backward_weight(full, x, g.sh, g.sw, g.pt, g.pl, want[1], want[2])
    k.conv2d_direct_backward_data(full, wt, g.sh, g.sw, g.pt, g.pl, want[0])
    none = np.empty((0, 0, 0, 0), np.float32)
    gx = np.empty(x.shape, np.float32)
    k.conv2d_direct_backward_maxpool2(gp, stray, none, x, wt, g.sh, g.sw, g.pt, g.pl, g.oh, g.ow, gx, gw, gb)
    assert gw.tobytes() == want[1].tobytes() and gb.tobytes() == want[2].tobytes(), case
    assert gx.tobytes() == want[0].tobytes(), case
    xinf, winf = x.copy(), wt.copy()
    xinf.flat[x.size // 2] = winf.flat[wt.size // 2] = np.inf
    k.maxpool2d_backward(gp, idx, full)
    k.conv2d_direct_backward_weight(full, xinf, g.sh, g.sw, g.pt, g.pl, want[1], want[2])
    k.conv2d_direct_backward_data(full, winf, g.sh, g.sw, g.pt, g.pl, want[0])
    k.conv2d_direct_backward_maxpool2(gp, idx, none, xinf, winf, g.sh, g.sw, g.pt, g.pl, g.oh, g.ow, gx, gw, gb)
    assert gw.tobytes() == want[1].tobytes() and gb.tobytes() == want[2].tobytes(), case
    assert gx.tobytes() == want[0].tobytes(), case
    bad = idx.copy()  # (the reference, a composition, is the spec: its BLAS sums vary with alignment)
    bad.flat[-1] = g.oh * g.ow
    with pytest.raises(ValueError, match="out of range"):
        k.conv2d_direct_backward_maxpool2(gp, bad, mask, x, wt, g.sh, g.sw, g.pt, g.pl, g.oh, g.ow,
                                          np.empty(x.shape, np.float32), gw, gb)


def test_pooled_input_grad_same_bytes_in_both_backends():
    """The input gradient from the winners sums in one order in both compiled backends (passes
    of kernel rows and runs of up to 8 vectors, cells in pixel order, channels in order): the
    same bytes on the active instruction set, kernels wider than 8 vectors included."""
    if len(DIRECT) < 2:
        pytest.skip("needs both compiled backends")
    cases = [(3, 32, 14, 14, 64, 5, 5, 1, 2), (2, 33, 13, 13, 5, 7, 7, 1, 3), (2, 5, 12, 11, 6, 9, 11, 1, 4),
             (1, 29, 9, 10, 9, 5, 3, 1, (1, 0))]
    for case in cases:
        g, x, wt, b, _ = direct_data(case, 4)
        assert x.shape[1] * g.kh * g.kw >= _config.POOLED_DGRAD_MIN_PATCH
        got = []
        for name in DIRECT:
            k = _backend.ops(name)
            y = np.empty((x.shape[0], wt.shape[0], g.oh // 2, g.ow // 2), np.float32)
            idx = np.empty(y.shape, np.int32)
            k.conv2d_direct_forward_maxpool2(x, wt, b, 1, 1, g.pt, g.pl, 1, g.oh, g.ow, y, idx)
            gp = np.random.default_rng(5).standard_normal(y.shape, dtype=np.float32)
            gx, gw, gb = np.empty(x.shape, np.float32), np.empty(wt.shape, np.float32), np.empty(0, np.float32)
            k.conv2d_direct_backward_maxpool2(gp, idx, y, x, wt, 1, 1, g.pt, g.pl, g.oh, g.ow, gx, gw, gb)
            got.append(gx)
        assert all(a.tobytes() == got[0].tobytes() for a in got[1:]), case


def test_direct_weight_grad_same_bytes_in_both_backends():
    """The direct weight and bias gradients sum in one order in both compiled backends (each
    tap and channel over the images in slots, the slots in order; the bias per image in pixel
    order, then the images): the same bytes on the active instruction set, through every tile
    kind (a whole one-channel 5x5 and three-channel 3x3 kernel in one vector's tile, rows of 5
    and of 3 taps, single taps at stride 2 and for 7-wide rows), and from the pooled gradient
    (each image unpooled where it is packed) as from the unpooled one."""
    if len(DIRECT) < 2:
        pytest.skip("needs both compiled backends")
    cases = [(3, 1, 14, 13, 16, 5, 5, 1, 2), (2, 3, 11, 12, 16, 3, 3, 1, 1), (9, 1, 12, 12, 32, 5, 5, 1, 2),
             (2, 5, 9, 10, 20, 3, 3, 1, 1), (2, 3, 13, 12, 24, 3, 3, 2, 1), (1, 2, 10, 11, 9, 7, 7, 1, 3)]
    for case in cases:
        g, x, wt, b, gy = direct_data(case, 6)
        got = []
        for name in DIRECT:
            k = _backend.ops(name)
            gw, gb = np.empty(wt.shape, np.float32), np.empty(wt.shape[0], np.float32)
            k.conv2d_direct_backward_weight(gy, x, g.sh, g.sw, g.pt, g.pl, gw, gb)
            out = [gw, gb]
            if g.sh == g.sw == 1 and g.oh > 1 and g.ow > 1:
                y = np.empty((x.shape[0], wt.shape[0], g.oh // 2, g.ow // 2), np.float32)
                idx = np.empty(y.shape, np.int32)
                k.conv2d_direct_forward_maxpool2(x, wt, b, 1, 1, g.pt, g.pl, 1, g.oh, g.ow, y, idx)
                gp = np.random.default_rng(7).standard_normal(y.shape, dtype=np.float32)
                pw, pb = np.empty_like(gw), np.empty_like(gb)
                k.conv2d_direct_backward_maxpool2(gp, idx, y, x, wt, 1, 1, g.pt, g.pl, g.oh, g.ow,
                                                  np.empty((0, 0, 0, 0), np.float32), pw, pb)
                out += [pw, pb]
            got.append(out)
        for a, want in zip(got[1], got[0]):
            assert a.tobytes() == want.tobytes(), case


@pytest.mark.parametrize("name", DIRECT)
def test_direct_bit_identical_run_to_run_and_across_threads(name):
    """Fixed summation order: repeated runs, and 1 vs 2 threads, agree bit for bit (the
    weight gradient is summed in fixed slots of consecutive images)."""
    k = _backend.ops(name)
    case = (13, 17, 12, 11, 20, 3, 5, (1, 2), "same")
    g, x, wt, b, gy = direct_data(case, 5)
    _assert_same_bytes_at_1_and_2_threads(lambda: run_direct(k, g, x, wt, b, gy, 1))


def _assert_same_bytes_at_1_and_2_threads(run):
    """``run()`` (a tuple of arrays) twice at 1 thread and twice at 2 (as the cores allow):
    the same bytes every time."""
    before = fastcnn.get_num_threads()
    runs = []
    try:
        for threads in (1, 1, 2, 2):
            if threads <= cores():
                fastcnn.set_num_threads(threads)
                runs.append(run())
    finally:
        fastcnn.set_num_threads(before)
    assert len(runs) >= 2
    for other in runs[1:]:
        for a, c in zip(other, runs[0]):
            assert a.tobytes() == c.tobytes()


@pytest.mark.parametrize("name", DIRECT)
@pytest.mark.parametrize("case", [
    (40, 16, 26, 26, 16, 3, 3, 1, 1),  # Cython: 2 images per pass (L2 budget), slots of 5: 2, 2, 1
    (37, 8, 9, 9, 40, 3, 3, 2, 1),     # many small images per pass, slots of 4 and 5
    (1, 16, 12, 12, 32, 5, 5, 1, 2),   # one slot: the tiles split across threads
    (3, 20, 7, 7, 16, 3, 3, 1, 1),
    (5, 1, 13, 11, 16, 5, 5, 1, 2),    # weight gradient: the one-channel 5x5 kernel as one tile
    (4, 3, 9, 10, 9, 3, 3, 1, 1),      # ... the three-channel 3x3 kernel as one tile
])
def test_direct_primitives_many_images_any_threads(name, case):
    """All three primitives against the reference, and the same bytes at 1 and 2 threads, with
    many images per thread (each packing reuses its buffer's zeros) and, for the weight
    gradient, however a thread's images are packed and its tiles grouped (each slot sums its
    images in order)."""
    k = _backend.ops(name)
    g, x, wt, b, gy = direct_data(case, 11)
    x64, w64, b64, gy64 = (a.astype(np.float64) for a in (x, wt, b, gy))
    want = [np.empty((case[0], case[4], g.oh, g.ow)), np.empty(x.shape), np.empty(wt.shape), np.empty(case[4])]
    scale = [np.empty_like(a) for a in want]
    for arrs, out in (((x64, w64, b64, gy64), want), ((np.abs(x64), np.abs(w64), np.abs(b64), np.abs(gy64)), scale)):
        xx, ww, bb, gg = arrs
        _ref.conv2d_direct_forward(xx, ww, bb, g.sh, g.sw, g.pt, g.pl, 0, out[0])
        _ref.conv2d_direct_backward_data(gg, ww, g.sh, g.sw, g.pt, g.pl, out[1])
        _ref.conv2d_direct_backward_weight(gg, xx, g.sh, g.sw, g.pt, g.pl, out[2], out[3])
    before = fastcnn.get_num_threads()
    runs = []
    try:
        for threads in (1, min(2, cores())):
            fastcnn.set_num_threads(threads)
            got = run_direct(k, g, x, wt, b, gy)
            runs.append([a.tobytes() for a in got])
            for a, w_, sc, what in zip(got, want, scale, ("y", "gx", "gw", "gb")):
                _close(a, w_, sc, f"{name} {case} {what}, {threads} threads")
    finally:
        fastcnn.set_num_threads(before)
    assert runs[1] == runs[0]


def _recorded_primitive_calls(name):
    """The primitive calls (name, args) a few functional ops make on backend ``name``."""
    from fastcnn.layers import Parameter
    from fastcnn.optim import SGD, Adam

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
        for conv in ("direct", "winograd", "per_image", "chunked"):
            with fastcnn.config(conv=conv):
                F.conv2d_backward(F.conv2d(x, w, None, 1, 1), x, w, 1, 1)
                F.conv2d_backward(F.conv2d(x, w, None, 2, 1), x, w, 2, 1)
                F.conv2d(x, w, None, 1, 1, relu=True, max_pool2=True)
                F.conv2d(x, w, None, 1, 1, max_pool2=True, return_indices=True)
                yp, ip = F.conv2d(x, w, None, 1, 1, relu=True, max_pool2=True, return_indices=True)
                F.conv2d_backward(yp, x, w, 1, 1, pool_indices=ip, relu_output=yp)
        y, idx = F.max_pool2d(x, 2, return_indices=True)
        F.max_pool2d_backward(y, idx, x.shape)
        F.avg_pool2d_backward(F.avg_pool2d(x, 3, 2, 1), x.shape, 3, 2, 1)
        F.relu_backward(x, F.relu(x))
        F.add(x, F.add_relu(x, x[::-1].copy()))
        F.add_relu_backward(x, x[::-1].copy(), F.relu(x))
        F.softmax_cross_entropy_backward(F.softmax_cross_entropy(x[:, 0, 0], [1, 2, 0])[1], [1, 2, 0])
        F.linear_backward(F.linear(x[:, 0, 0], x[0, 0]), x[:, 0, 0], x[0, 0])
        F.batch_norm2d_backward(*F.batch_norm2d(x, np.ones(2, np.float32), np.zeros(2, np.float32),
                                                np.zeros(2, np.float32), np.ones(2, np.float32),
                                                training=True), np.ones(2, np.float32))
        y, cache = F.batch_norm2d(x, np.ones(2, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32),
                                  np.ones(2, np.float32), training=True, relu=True, max_pool2=True)
        F.batch_norm2d_backward(y, cache, np.ones(2, np.float32))

        class OneProcess:  # synchronised statistics of one process: the separate sums and apply
            stats = staticmethod(lambda m, mean, var: (m, mean, var))
            grad_sums = staticmethod(lambda count, gsum, gdot: (gsum, gdot))

        F.batch_norm2d_backward(*F.batch_norm2d(x, np.ones(2, np.float32), np.zeros(2, np.float32),
                                                np.zeros(2, np.float32), np.ones(2, np.float32), training=True,
                                                sync=OneProcess()), np.ones(2, np.float32))
        p = Parameter(w.copy())
        p.grad[...] = 1.0
        Adam([p]).step()
        sgd = SGD([p], 0.1, momentum=0.9)
        sgd.step()
        sgd.step()
    finally:
        _backend.ops = ops
        fastcnn.set_backend(previous)
    return calls


@pytest.mark.parametrize("name", COMPILED)
def test_primitives_survive_bad_arrays(name):
    """A primitive of a compiled backend called with an array of the wrong size raises or
    runs safely, never crashes: the size check of the contract runs first in both backends.
    Cython's wrappers also refuse other dtypes and layouts (Numba compiles a kernel
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
def test_size_check_passed_once_is_run_again_for_new_sizes(name):
    """The wrappers skip the size check for arguments equal to the last ones that passed it
    (Cython ``_new``, Numba ``check_once``): a call with other sizes after a good one is
    checked again, and the good one passes again after it."""
    k = _backend.ops(name)
    x, w, b = np.zeros((1, 2, 5, 5), np.float32), np.zeros((3, 2, 3, 3), np.float32), np.zeros(3, np.float32)
    good = (np.empty((1, 3, 1, 1), np.float32), np.empty((1, 3, 1, 1), np.int32))
    bad = (np.empty((1, 3, 1, 2), np.float32), np.empty((1, 3, 1, 2), np.int32))
    for y, idx in (good, bad, good, bad):
        if y is bad[0]:
            with pytest.raises(ValueError, match="shape|size"):
                k.conv2d_direct_forward_maxpool2(x, w, b, 1, 1, 0, 0, 0, 3, 3, y, idx)
        else:
            k.conv2d_direct_forward_maxpool2(x, w, b, 1, 1, 0, 0, 0, 3, 3, y, idx)
            assert (y == 0).all() and (idx >= 0).all()


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
        (k.add_forward, (f32((2, 3), np.float32), f32(6, np.float32), f32((2, 2), np.float32))),
        (k.add_relu_forward, (f32((2, 3), np.float32), f32(5, np.float32), f32((2, 3), np.float32))),
        (k.add_relu_backward, (f32((2, 3), np.float32), f32(6, np.float32), f32(5, np.float32),
                               f32((2, 3), np.float32))),
        (k.adam_step, ((f32(4, np.float32),), (f32(4, np.float32),), (f32(3, np.float32),), (f32(4, np.float32),),
                       1e-3, 0.9, 0.999, 1e-8, 1.0)),
        (k.sgd_step, ((f32(4, np.float32),), (f32(3, np.float32),), (f32(4, np.float32),), 0.1, 0.0, 0.9, 0.0, False,
                      False)),
        (k.sgd_step, ((f32(2, np.float32), f32(4, np.float32)), (f32(2, np.float32), f32(4, np.float32)),
                      (f32(2, np.float32), f32(3, np.float32)), 0.1, 0.0, 0.9, 0.0, False, False)),
        (k.conv2d_direct_forward, (f32((1, 2, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                   f32(4, np.float32), 1, 1, 0, 0, 0, f32((1, 3, 3, 3), np.float32))),
        (k.conv2d_direct_forward_maxpool2, (f32((1, 2, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                            f32(3, np.float32), 1, 1, 0, 0, 0, 3, 3, f32((1, 3, 2, 2), np.float32),
                                            np.empty((0, 0, 0, 0), np.int32))),
        (k.conv2d_direct_forward_maxpool2, (f32((1, 2, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                            f32(3, np.float32), 1, 1, 0, 0, 0, 3, 3, f32((1, 3, 1, 2), np.float32),
                                            np.empty((0, 0, 0, 0), np.int32))),
        (k.conv2d_direct_forward_maxpool2, (f32((1, 2, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                            f32(3, np.float32), 1, 1, 0, 0, 0, 3, 3, f32((1, 3, 1, 1), np.float32),
                                            np.empty((1, 3, 2, 1), np.int32))),
        (k.conv2d_direct_backward_maxpool2, (f32((1, 3, 2, 2), np.float32), np.zeros((1, 3, 2, 2), np.int32),
                                             np.empty((0, 0, 0, 0), np.float32), f32((1, 2, 5, 5), np.float32),
                                             f32((3, 2, 3, 3), np.float32), 1, 1, 0, 0, 3, 3,
                                             np.empty((0, 0, 0, 0), np.float32), f32((3, 2, 3, 3), np.float32),
                                             f32(3, np.float32))),
        (k.conv2d_direct_backward_maxpool2, (f32((1, 3, 1, 1), np.float32), np.zeros((1, 3, 1, 1), np.int32),
                                             f32((1, 3, 1, 2), np.float32), f32((1, 2, 4, 4), np.float32),
                                             f32((3, 2, 3, 3), np.float32), 1, 1, 0, 0, 2, 2,
                                             f32((1, 2, 4, 4), np.float32), f32((3, 2, 3, 3), np.float32),
                                             f32(0, np.float32))),
        (k.conv2d_direct_backward_maxpool2, (f32((1, 3, 1, 1), np.float32), np.zeros((1, 3, 1, 1), np.int32),
                                             np.empty((0, 0, 0, 0), np.float32), f32((1, 2, 4, 4), np.float32),
                                             f32((3, 2, 3, 3), np.float32), 1, 1, 0, 0, 2, 2,
                                             f32((1, 2, 4, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                             f32(3, np.float32))),
        (k.conv2d_winograd_forward, (f32((1, 2, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                     f32(4, np.float32), 1, 1, 0, f32((1, 3, 5, 5), np.float32))),
        (k.conv2d_winograd_forward, (f32((1, 2, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                     f32(3, np.float32), 1, 1, 0, f32((2, 3, 5, 5), np.float32))),
        (k.conv2d_winograd_backward_data, (f32((1, 3, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32), 1, 1,
                                           f32((1, 3, 5, 5), np.float32))),
        (k.conv2d_winograd_forward_maxpool2, (f32((1, 2, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                              f32(3, np.float32), 1, 1, 0, 5, 5, f32((1, 3, 3, 2), np.float32),
                                              np.empty((0, 0, 0, 0), np.int32))),
        (k.conv2d_winograd_forward_maxpool2, (f32((1, 2, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                              f32(3, np.float32), 1, 1, 0, 5, 5, f32((1, 3, 2, 2), np.float32),
                                              np.empty((1, 3, 2, 1), np.int32))),
        (k.conv2d_winograd_forward_maxpool2, (f32((1, 2, 5, 5), np.float32), f32((3, 2, 3, 3), np.float32),
                                              f32(3, np.float32), 1, 1, 0, 5, 1, f32((1, 3, 2, 0), np.float32),
                                              np.empty((0, 0, 0, 0), np.int32))),
        (k.batchnorm_forward, (f32((2, 3, 2, 2), np.float32), *[f32(3, np.float32)] * 3, f32(2, np.float32), 0,
                               f32((2, 3, 2, 2), np.float32))),
        (k.batchnorm_forward, (f32((2, 3, 2, 2), np.float32), *[f32(3, np.float32)] * 4, 1,
                               f32((2, 3, 2, 2), np.float32), f32((2, 3, 2, 1), np.float32))),
        (k.batchnorm_backward_reduce, (f32((2, 3, 2, 2), np.float32), f32((2, 3, 2, 2), np.float32),
                                       *[f32(3, np.float32)] * 3, f32(2, np.float32), 1, f32(3), f32(3))),
        (k.batchnorm_backward_reduce, (f32((2, 3, 2, 2), np.float32), f32((2, 3, 2, 1), np.float32),
                                       *[f32(3, np.float32)] * 4, 1, f32(3), f32(3))),
        (k.batchnorm_backward_apply, (f32((2, 3, 2, 2), np.float32), f32((2, 3, 2, 2), np.float32),
                                      *[f32(3, np.float32)] * 3, f32(2, np.float32), 1, *[f32(3, np.float32)] * 3,
                                      f32((2, 3, 2, 2), np.float32))),
        (k.batchnorm_backward_apply, (f32((2, 3, 2, 2), np.float32), f32((2, 3, 2, 2), np.float32),
                                      *[f32(3, np.float32)] * 4, 1, *[f32(3, np.float32)] * 3,
                                      f32((1, 3, 2, 2), np.float32))),
        (k.batchnorm_backward, (f32((2, 3, 2, 2), np.float32), f32((2, 3, 2, 2), np.float32),
                                *[f32(3, np.float32)] * 4, 1, f32(2, np.float32), 8.0, f32(3), f32(3),
                                f32((2, 3, 2, 2), np.float32))),
        (k.batchnorm_backward, (f32((2, 3, 2, 2), np.float32), f32((2, 3, 2, 2), np.float32),
                                *[f32(3, np.float32)] * 4, 1, f32(3, np.float32), 8.0, f32(3), f32(3),
                                f32((2, 3, 2, 1), np.float32))),
        (k.batchnorm_forward_maxpool2, (f32((2, 3, 4, 5), np.float32), *[f32(3, np.float32)] * 4, 1,
                                        f32((2, 3, 2, 2), np.float32), np.empty((2, 3, 2, 3), np.int32))),
        (k.batchnorm_forward_maxpool2, (f32((2, 3, 1, 5), np.float32), *[f32(3, np.float32)] * 4, 1,
                                        f32((2, 3, 0, 2), np.float32), np.empty((2, 3, 0, 2), np.int32))),
    ]
    for fn, args in cases:
        with pytest.raises(ValueError, match="shape|size|range|window|match"):
            fn(*args)


# --------------------------------------------------------------------------- Winograd

# (N, C, H, W, OC, pt, pl, OH, OW): odd sizes, batch 1, paddings 0-2 (bottom/right padding as
# implied by the output, which may cut the last tile), OC not a multiple of any tile, many
# small images (grouped), channel counts of the ResNet.
WINOGRAD_CASES = [
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
# F(2x2, 5x5) (a tenth field: the kernel size; padding up to 4)
WINOGRAD_CASES += [
    (2, 3, 9, 7, 5, 2, 2, 9, 7, 5),
    (3, 16, 14, 14, 32, 2, 2, 14, 14, 5),
    (1, 5, 6, 11, 4, 0, 1, 2, 9, 5),
    (4, 7, 5, 5, 9, 4, 4, 9, 9, 5),
    (5, 17, 8, 8, 16, 2, 2, 8, 8, 5),
    (2, 4, 13, 6, 3, 3, 1, 13, 4, 5),
    (3, 2, 1, 1, 2, 2, 2, 1, 1, 5),  # one output of a 1x1 image: all but the centre tap padding
    (2, 32, 14, 14, 64, 2, 2, 14, 14, 5),
]

# Tolerance: Winograd's F(2x2, 3x3) sums other terms than the direct convolution: per output,
# sum_c of 16 products u*v of transformed values (|u| <= 4 max|x|: B^T d B adds 4 inputs;
# |v| <= 9/4 max|w|: G g G^T), then A^T m A adds 9 of them.  Its float32 rounding is a
# multiple of eps32 times the direct sum of absolute terms sum |x||w| (Barabasz et al., "Error
# analysis and improving the accuracy of Winograd convolution", 2020: a small constant for
# F(2x2, 3x3), larger for F(2x2, 5x5), whose points 2 and -2 weight inputs by up to 5);
# these cases stay within the direct kernels' bound, 1e-5 = 84 eps32 of that sum (their worst,
# over five seeds, compiled kernels: 6.6 eps32 for 3x3, 28 eps32 for 5x5).  The weight
# gradient G^T Z G mixes all taps of a kernel (a tap that sees only padding gets rounding noise,
# not an exact 0): its bound is relative to the largest of the kernel's tap sums (worst: 1.6
# eps32 of it for 3x3, 19 eps32 for 5x5).  F(4x4, 3x3) (the same points as F(2x2, 5x5), A^T
# weighting products by up to 8) computes a 4x4 tile's sixteen outputs from one transformed window,
# so an output's rounding is relative to its tile's magnitude, not to its own terms (one output of
# a corner with few terms next to large ones: 116 eps32 of its own sum): its bound is relative to
# the largest sum of |terms| in the output's tile (worst over the 3x3 cases and five seeds: 24
# eps32, the reference; 20, the compiled kernels).
WINOGRAD_RTOL = 1e-5
#: (case, m): every case with each output tile its kernel has (F(4x4, r x r) only for 3x3).
WINOGRAD_RUNS = [(c, m) for c in WINOGRAD_CASES for m in ((2, 4) if len(c) == 9 else (2,))]


def _wdata(case, seed=0):
    n, c, h, w, oc, pt, pl, oh, ow = case[:9]
    r = case[9] if len(case) > 9 else 3
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((oc, c, r, r), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32)
    gy = rng.standard_normal((n, oc, oh, ow), dtype=np.float32)
    return x, wt, b, gy


def _wdirect64(x, wt, b, gy, pt, pl, relu, oh, ow):
    """The direct reference in float64: forward, input and weight gradients, and their sums of
    |terms|."""
    x64, w64, b64, gy64 = (a.astype(np.float64) for a in (x, wt, b, gy))
    out = {}
    for key, (xx, ww, bb, gg, r) in {"want": (x64, w64, b64, gy64, relu),
                                     "scale": (np.abs(x64), np.abs(w64), np.abs(b64), np.abs(gy64), 0)}.items():
        y = np.empty(gy.shape)
        _ref.conv2d_direct_forward(xx, ww, bb, 1, 1, pt, pl, r, y)
        gx = np.empty(x.shape)
        _ref.conv2d_direct_backward_data(gg, ww, 1, 1, pt, pl, gx)
        gw, gb = np.empty(wt.shape), np.empty(wt.shape[0])
        _ref.conv2d_direct_backward_weight(gg, xx, 1, 1, pt, pl, gw, gb)
        if key == "scale":  # (G^T Z G mixes a kernel's taps: each bounded by the kernel's largest sum)
            gw[...] = gw.max(axis=(2, 3), keepdims=True)
        out[key] = (y, gx, gw)
    return out


def _wrun(k, x, wt, b, gy, pt, pl, relu, m=2):
    y = np.full(gy.shape, np.nan, x.dtype)
    k.conv2d_winograd_forward(x, wt, b, pt, pl, relu, y, m)
    gx = np.full(x.shape, np.nan, x.dtype)
    k.conv2d_winograd_backward_data(gy, wt, pt, pl, gx, m)
    gw, gb = np.full(wt.shape, np.nan, x.dtype), np.full(wt.shape[0], np.nan, x.dtype)
    k.conv2d_winograd_backward_weight(gy, x, pt, pl, gw, gb)
    return y, gx, gw


def _wclose(got, want, scale, what):
    err = np.abs(got.astype(np.float64) - want)
    worst = np.max(err / (WINOGRAD_RTOL * scale + 1e-30))
    assert worst <= 1.0, f"{what}: error {worst:.3g} x the bound"


@pytest.mark.parametrize("case,m", WINOGRAD_RUNS)
def test_winograd_reference_is_the_direct_reference(case, m):
    """In float64 the reference's Winograd algorithm equals the direct correlation to rounding."""
    x, wt, b, gy = (a.astype(np.float64) for a in _wdata(case))
    pt, pl, oh, ow = case[5:9]
    ref = _wdirect64(x, wt, b, gy, pt, pl, 1, oh, ow)
    got = _wrun(_ref, x, wt, b, gy, pt, pl, 1, m)
    for g, w_, s in zip(got, ref["want"], ref["scale"]):
        assert np.all(np.abs(g - w_) <= 1e-13 * (s if m == 2 or s.shape == wt.shape else tile_max(s, m)) + 1e-300)


@pytest.mark.parametrize("name", ["numpy"] + list(COMPILED))
@pytest.mark.parametrize("case,m", WINOGRAD_RUNS)
def test_winograd_primitives_match_reference(name, case, m):
    """Forward (with and without ReLU, with bias), input and weight gradients of each backend
    against the float64 direct reference, with the bounds above (``m``: the forward's and the
    input gradient's output tile); every output element is written."""
    k = _backend.ops(name)
    x, wt, b, gy = _wdata(case, 3)
    pt, pl, oh, ow = case[5:9]
    for relu in (0, 1):
        ref = _wdirect64(x, wt, b, gy, pt, pl, relu, oh, ow)
        for got, want, scale, what in zip(_wrun(k, x, wt, b, gy, pt, pl, relu, m), ref["want"], ref["scale"],
                                          ("y", "gx", "gw")):
            assert np.isfinite(got).all(), what
            if m == 4 and what != "gw":
                scale = tile_max(scale, m)
            _wclose(got, want, scale, f"{name} {case} m={m} relu={relu} {what}")


@pytest.mark.parametrize("name", COMPILED)
def test_winograd_fused_relu_is_max_of_plain(name):
    """The ReLU rule of the ReLU kernels (NaN stays, -0 -> +0), bit for bit."""
    k = _backend.ops(name)
    for case, m in [((2, 5, 9, 7, 6, 1, 1, 9, 7), 2), ((2, 5, 9, 7, 6, 1, 1, 9, 7), 4),
                    ((2, 5, 9, 7, 6, 2, 2, 9, 7, 5), 2)]:
        x, wt, b, gy = _wdata(case, 4)
        x[0, 0, 3, 3] = np.nan
        y0, _, _ = _wrun(k, x, wt, b, gy, case[5], case[6], 0, m)
        y1, _, _ = _wrun(k, x, wt, b, gy, case[5], case[6], 1, m)
        want = np.where(y0 <= 0, np.float32(0), y0)
        assert np.isnan(y0).any()
        assert want.tobytes() == y1.tobytes()


@pytest.mark.parametrize("name", ["numpy"] + list(COMPILED))
@pytest.mark.parametrize("case", [c for c in WINOGRAD_CASES if c[7] >= 2 and c[8] >= 2])
def test_winograd_maxpool2_is_the_pool_of_the_forward(name, case):
    """``conv2d_winograd_forward_maxpool2`` is bit for bit the backend's Winograd forward then
    the reference's 2x2 max pooling (odd sizes drop the last row or column; NaNs win as in the
    pooling kernels), at 1 and 2 threads, every output written; the indices, when asked for,
    are the pooling's."""
    k = _backend.ops(name)
    x, wt, b, _ = _wdata(case, 8)
    pt, pl, oh, ow = case[5:9]
    x[0, 0, 0, 0] = np.nan
    before = fastcnn.get_num_threads()
    try:
        for relu in (0, 1):
            full = np.empty((x.shape[0], wt.shape[0], oh, ow), np.float32)
            k.conv2d_winograd_forward(x, wt, b, pt, pl, relu, full)
            _assert_pooled_forward(full, lambda y, idx: k.conv2d_winograd_forward_maxpool2(
                x, wt, b, pt, pl, relu, oh, ow, y, idx), (case, relu))
    finally:
        fastcnn.set_num_threads(before)


@pytest.mark.parametrize("name", COMPILED)
def test_winograd_bit_identical_run_to_run_and_across_threads(name):
    """Each output is summed in one fixed order: repeated runs and 1 vs 2 threads agree bit
    for bit, for whole images and for grouped small ones."""
    k = _backend.ops(name)
    for case, m in [((13, 17, 12, 11, 20, 1, 1, 12, 11), 2), ((37, 16, 8, 8, 16, 1, 1, 8, 8), 2),
                    ((13, 17, 12, 11, 20, 1, 1, 12, 11), 4), ((37, 16, 8, 8, 16, 1, 1, 8, 8), 4),
                    ((11, 16, 14, 14, 32, 2, 2, 14, 14, 5), 2), ((29, 9, 6, 7, 12, 2, 2, 6, 7, 5), 2)]:
        x, wt, b, gy = _wdata(case, 5)
        _assert_same_bytes_at_1_and_2_threads(lambda: _wrun(k, x, wt, b, gy, case[5], case[6], 1, m))


# ----------------------------------------------------------------------------- fused statistics

def _stats_match(k, conv, y_shape, oc, threads_too=True):
    """``conv(y, stats)`` (a forward primitive, ``stats`` None or (2, oc)): with stats its output
    is that without, bit for bit, and its stats are ``k.batchnorm_stats`` of that output bit for
    bit; the same bytes at 1 and 2 threads if ``threads_too`` (compiled backends only: the
    NumPy backend's products are its BLAS's, whose bytes may depend on the thread count, as
    OpenBLAS's AVX2 kernels' do)."""
    def run(with_stats=True):
        y = np.full(y_shape, np.nan, np.float32)
        st = np.full((2, oc), np.nan) if with_stats else None
        conv(y, st)
        return y, st

    y, st = run()
    plain, _ = run(False)
    assert y.tobytes() == plain.tobytes()
    mean, var = np.full(oc, np.nan), np.full(oc, np.nan)
    k.batchnorm_stats(y, mean, var)
    assert st[0].tobytes() == mean.tobytes() and st[1].tobytes() == var.tobytes()
    if threads_too:
        _assert_same_bytes_at_1_and_2_threads(run)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_forward_stats_are_the_batchnorm_stats(name, case):
    """``conv2d_direct_forward(..., stats)``: each image's output planes summed while in cache
    give ``batchnorm_stats`` of the output bit for bit (odd shapes, batch 1, strides, padding,
    channel tiles; with and without the fused ReLU)."""
    k = _mod(name)
    g, x, wt, b, _ = direct_data(case, 7)
    for relu in (0, 1):
        _stats_match(k, lambda y, st: k.conv2d_direct_forward(x, wt, b, g.sh, g.sw, g.pt, g.pl, relu, y, st),
                     (x.shape[0], wt.shape[0], g.oh, g.ow), wt.shape[0], threads_too=relu == 0 and name in COMPILED)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("case,m", WINOGRAD_RUNS)
def test_winograd_forward_stats_are_the_batchnorm_stats(name, case, m):
    """``conv2d_winograd_forward(..., stats)``: each group of images' output planes summed while
    in cache give ``batchnorm_stats`` of the output bit for bit (both tiles, grouped small images)."""
    k = _mod(name)
    x, wt, b, gy = _wdata(case, 7)
    pt, pl = case[5:7]
    _stats_match(k, lambda y, st: k.conv2d_winograd_forward(x, wt, b, pt, pl, 0, y, m, st), gy.shape, wt.shape[0],
                 threads_too=name in COMPILED)


@pytest.mark.parametrize("name", COMPILED)
def test_conv_forward_stats_checked(name):
    """Stats of the wrong shape or dtype are refused with a ValueError naming them; an empty
    batch gives NaN statistics (as ``batchnorm_stats`` of no values)."""
    k = _mod(name)
    g, x, wt, b, _ = direct_data(DIRECT_CASES[0])
    y = np.empty((x.shape[0], wt.shape[0], g.oh, g.ow), np.float32)
    for bad in (np.empty((2, wt.shape[0] + 1)), np.empty((wt.shape[0], 2)), np.empty((2, wt.shape[0]), np.float32),
                np.empty((2, 2 * wt.shape[0]))[:, ::2]):
        with pytest.raises(ValueError, match="stats"):
            k.conv2d_direct_forward(x, wt, b, g.sh, g.sw, g.pt, g.pl, 0, y, bad)
        with pytest.raises(ValueError, match="stats"):
            k.conv2d_winograd_forward(x, wt, b, 1, 1, 0, y, 2, bad)
    st = np.zeros((2, wt.shape[0]))
    k.conv2d_direct_forward(x[:0], wt, b, g.sh, g.sw, g.pt, g.pl, 0, y[:0], st)
    assert np.isnan(st).all()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (2, 0, 4, 4)])
def test_batchnorm_stats_of_no_values_are_nan(name, shape):
    """No values per channel: NaN statistics (0/0, as the reference), never a read past the array."""
    mean, var = np.zeros(shape[1]), np.zeros(shape[1])
    with np.errstate(invalid="ignore"):  # (the reference's 0/0)
        _mod(name).batchnorm_stats(np.empty(shape, np.float32), mean, var)
    assert np.isnan(mean).all() and np.isnan(var).all()


@pytest.mark.parametrize("shape", [(3, 5, 9, 7), (2, 16, 32, 32), (5, 64, 8, 8), (1, 3, 1, 37), (2, 1, 1, 1),
                                   (2, 2, 1, 65), (1, 2, 1, 127)])
def test_batchnorm_stats_same_bytes_in_both_backends(shape):
    """The Numba and Cython statistics sum each plane in one order (src_ext/planestats.h): the
    same bytes, whole blocks of 64 values and cut ones, with a large mean too."""
    rng = np.random.default_rng(1)
    for loc in (0.0, 1000.0):
        x = (loc + rng.standard_normal(shape)).astype(np.float32)
        got = []
        for name in COMPILED:
            mean, var = np.empty(shape[1]), np.empty(shape[1])
            _mod(name).batchnorm_stats(x, mean, var)
            got.append(mean.tobytes() + var.tobytes())
        assert got[0] == got[1], (shape, loc)


@pytest.mark.parametrize("name", COMPILED)
def test_winograd_size_checks(name):
    """Shapes the Winograd kernels do not take are refused with a ValueError naming the
    problem (never a crash): other kernel sizes, padding beyond the kernel size - 1,
    mismatched outputs."""
    k = _backend.ops(name)
    x = np.zeros((2, 3, 8, 8), np.float32)
    y = np.zeros((2, 4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="must be 3 x 3 or 5 x 5, got 7 x 7"):
        k.conv2d_winograd_forward(x, np.zeros((4, 3, 7, 7), np.float32), np.zeros(4, np.float32), 3, 3, 0,
                                  y)
    with pytest.raises(ValueError, match="3 x 3 or 5 x 5, got 3 x 5"):
        k.conv2d_winograd_backward_data(np.zeros((2, 4, 8, 6), np.float32), np.zeros((4, 3, 3, 5), np.float32),
                                        1, 1, x)
    with pytest.raises(ValueError, match="padding must be at most 2 for a 3 x 3 kernel"):
        k.conv2d_winograd_forward(x, np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32), 3, 3, 0,
                                  np.zeros((2, 4, 12, 12), np.float32))
    with pytest.raises(ValueError, match="output tile m must be 2, or 4 for a 3 x 3 kernel, got 4 for a 5 x 5"):
        k.conv2d_winograd_forward(x, np.zeros((4, 3, 5, 5), np.float32), np.zeros(4, np.float32), 2, 2, 0,
                                  y, 4)
    with pytest.raises(ValueError, match="output tile m must be 2, or 4 for a 3 x 3 kernel, got 3"):
        k.conv2d_winograd_backward_data(y, np.zeros((4, 3, 3, 3), np.float32), 1, 1, x, 3)
    with pytest.raises(ValueError, match="output tile m must be 2, or 4 for a 3 x 3 kernel, got 4.0"):
        k.conv2d_winograd_forward(x, np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32), 1, 1, 0, y, 4.0)
    with pytest.raises(ValueError, match="padding must be at most 4 for a 5 x 5 kernel"):
        k.conv2d_winograd_forward(x, np.zeros((4, 3, 5, 5), np.float32), np.zeros(4, np.float32), 5, 5, 0,
                                  np.zeros((2, 4, 14, 14), np.float32))
    with pytest.raises(ValueError, match="3 x 3 or 5 x 5, got 7 x 7"):
        k.conv2d_winograd_backward_weight(np.zeros((2, 4, 8, 8), np.float32), x, 3, 3,
                                          np.zeros((4, 3, 7, 7), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="gb must have shape"):
        k.conv2d_winograd_backward_weight(y, x, 1, 1, np.zeros((4, 3, 3, 3), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        k.conv2d_winograd_backward_weight(np.zeros((2, 5, 8, 8), np.float32), x, 1, 1,
                                          np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError):
        k.conv2d_winograd_forward(x, np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32), 1, 1, 0,
                                  np.zeros((2, 5, 8, 8), np.float32))
    with pytest.raises(ValueError):
        k.conv2d_winograd_backward_data(y, np.zeros((4, 3, 3, 3), np.float32), 1, 1,
                                        np.zeros((2, 5, 8, 8), np.float32))
