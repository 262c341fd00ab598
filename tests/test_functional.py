"""fastcnn.functional: every op on every backend against naive loops and PyTorch; the
convolution paths; determinism across runs and threads; bad input; corr2d."""
import doctest

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastcnn
from fastcnn import functional as F
from fastcnn.functional import ConvGeometry

import naive
from utils import BACKENDS, HSET, assert_close, cores, geometries, needs_torch, numgrad, tile_max

# ----------------------------------------------------------------------------- against naive loops and PyTorch

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


# ----------------------------------------------------------------------------- the convolution and dense paths

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


@pytest.mark.parametrize("n", [1, 5])
def test_linear_backward_writes_the_weight_gradient_into_weight_grad_out(backend, n):
    """``weight_grad_out`` receives the same bytes as the returned gradient without it (the
    N = 1 outer product and the batched GEMMs); anything else given there is refused."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, 37), dtype=np.float32)
    w = rng.standard_normal((19, 37), dtype=np.float32)
    gy = rng.standard_normal((n, 19), dtype=np.float32)
    want = F.linear_backward(gy, x, w)
    out = np.full(w.shape, np.nan, np.float32)
    got = F.linear_backward(gy, x, w, weight_grad_out=out)
    assert got[1] is out
    for a, b in zip(got, want):
        assert a.tobytes() == b.tobytes()
    for bad in (np.empty((37, 19), np.float32), np.empty(w.shape, np.float64),
                np.empty((19, 74), np.float32)[:, ::2], w, x[:1].reshape(37)[None].repeat(19, 0)[:, :0], [[0.0]]):
        with pytest.raises(ValueError, match="linear_backward: weight_grad_out must be"):
            F.linear_backward(gy, x, w, weight_grad_out=bad)
    ro = np.empty(w.shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="weight_grad_out"):
        F.linear_backward(gy, x, w, weight_grad_out=ro)
    raw = bytearray(4 * (x.size + w.size))  # (two arrays over one buffer: views of different objects)
    xb = np.frombuffer(raw, np.float32)[:x.size].reshape(x.shape)
    xb[...] = x
    with pytest.raises(ValueError, match="weight_grad_out"):
        F.linear_backward(gy, xb, w, weight_grad_out=np.frombuffer(raw, np.float32)[3:3 + w.size].reshape(w.shape))



@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("stride,padding", [(1, "same"), (2, 1)])
def test_conv2d_backward_through_the_fused_pooling(backend, conv_path, relu, stride, padding):
    """``conv2d_backward(..., pool_indices=, relu_output=)`` takes the gradient of the pooled
    (and ReLU'd) output: the same bytes as relu_backward, max_pool2d_backward and the plain
    backward on every strategy; wrong shapes are refused."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 5, 11, 10), dtype=np.float32)
    w = rng.standard_normal((9, 5, 3, 3), dtype=np.float32)
    b = rng.standard_normal(9, dtype=np.float32)
    full = F.conv2d(x, w, b, stride, padding, relu=relu)
    y, idx = F.conv2d(x, w, b, stride, padding, relu=relu, max_pool2=True, return_indices=True)
    gp = rng.standard_normal(y.shape, dtype=np.float32)
    g = F.relu_backward(gp, y) if relu else gp
    want = F.conv2d_backward(F.max_pool2d_backward(g, idx, full.shape), x, w, stride, padding)
    got = F.conv2d_backward(gp, x, w, stride, padding, pool_indices=idx, relu_output=y if relu else None)
    for a, c in zip(got, want):
        if backend == "numpy":  # (the reference's BLAS sums may round differently with alignment)
            assert_close(a, c, 1e-5)
        else:
            assert a.tobytes() == c.tobytes()
    gx, gw, gb = F.conv2d_backward(gp, x, w, stride, padding, bias=False, input_grad=False, pool_indices=idx)
    assert gx is None and gb is None
    with pytest.raises(ValueError, match="conv2d_backward: grad_out must have shape"):
        F.conv2d_backward(full, x, w, stride, padding, pool_indices=idx)
    with pytest.raises(ValueError, match="conv2d_backward: relu_output must have shape"):
        F.conv2d_backward(gp, x, w, stride, padding, pool_indices=idx, relu_output=full)
    with pytest.raises(ValueError, match="indices out of range"):
        F.conv2d_backward(gp, x, w, stride, padding, pool_indices=np.full(idx.shape, 10**6, np.int32))


@pytest.mark.parametrize("stride,padding,use_bias",
                         [(1, "same", True), (2, 1, False), (1, 0, True), (3, "same", False)])
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



@pytest.mark.parametrize("stride,padding", [(1, "same"), (2, 1), ((1, 3), (2, 0))])
def test_functional_gradients_through_direct_path_match_finite_differences(compiled, stride, padding):
    """F.conv2d_backward on the direct strategy against central differences of the float64
    naive forward (loss = sum(r * conv))."""
    with fastcnn.config(conv="direct"):
        rng = np.random.default_rng(11)
        x = rng.standard_normal((2, 3, 6, 5), dtype=np.float32)
        w = rng.standard_normal((9, 3, 3, 2), dtype=np.float32)
        b = rng.standard_normal(9, dtype=np.float32)
        y = F.conv2d(x, w, b, stride, padding)
        r = rng.standard_normal(y.shape).astype(np.float32)
        gx, gw, gb = F.conv2d_backward(r, x, w, stride, padding)
    s = stride if isinstance(stride, tuple) else (stride, stride)
    g = ConvGeometry((3, 2), s, padding, (6, 5), "test")
    x64, w64, b64, r64 = (a.astype(np.float64) for a in (x, w, b, r))

    def loss():
        return float(np.sum(r64 * naive.conv2d(x64, w64, b64, s, (g.pt, g.pb, g.pl, g.pr))))

    # float32 gradients against float64 differences: a few float32 roundings of sums of
    # ~50 terms of size ~3 -> 1e-4 absolute.
    np.testing.assert_allclose(gx, numgrad(loss, x64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, numgrad(loss, w64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, numgrad(loss, b64), rtol=1e-4, atol=1e-4)



@pytest.mark.parametrize("kernel,padding,tile", [(3, 1, 2), (3, 0, 2), (3, 2, 2), (3, "same", 2), (3, 1, 4),
                                                 (3, 0, 4), (3, 2, 4), (5, 2, 2), (5, 0, 2), (5, 4, 2)])
def test_winograd_strategy_gradients_match_finite_differences(compiled, kernel, padding, tile):
    """F.conv2d / F.conv2d_backward on the ``winograd`` strategy (forward and input gradient
    by Winograd, F(tile x tile, kernel x kernel), weight gradient by the Winograd kernels)
    against central differences of the float64 naive forward (loss = sum(r * conv))."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 7, 6), dtype=np.float32)
    w = rng.standard_normal((5, 3, kernel, kernel), dtype=np.float32)
    b = rng.standard_normal(5, dtype=np.float32)
    with fastcnn.config(conv="winograd", winograd_tile=tile):
        y = F.conv2d(x, w, b, 1, padding)
        r = rng.standard_normal(y.shape).astype(np.float32)
        gx, gw, gb = F.conv2d_backward(r, x, w, 1, padding)
    p = (kernel - 1) // 2 if padding == "same" else padding
    x64, w64, b64, r64 = (a.astype(np.float64) for a in (x, w, b, r))
    with fastcnn.config(conv="direct"):  # each within 1e-5 of the sum of |terms| (test_backend.py)
        scale = naive.conv2d(np.abs(x64), np.abs(w64), np.abs(b64), (1, 1), (p, p, p, p))
        if tile == 4:  # (F(4x4, 3x3): relative to the output tile's largest sum, test_backend.py)
            scale = tile_max(scale, 4)
        assert np.all(np.abs(y - F.conv2d(x, w, b, 1, padding)) <= 2e-5 * scale)

    def loss():
        return float(np.sum(r64 * naive.conv2d(x64, w64, b64, (1, 1), (p, p, p, p))))

    # float32 gradients against float64 differences: a few float32 roundings of sums of
    # ~30 (5x5: ~80) terms of size ~3 -> 1e-4 absolute.
    np.testing.assert_allclose(gx, numgrad(loss, x64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, numgrad(loss, w64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gb, numgrad(loss, b64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", [3, 5])
def test_winograd_strategy_with_fused_pooling_and_relu(compiled, kernel):
    """On the ``winograd`` strategy ``conv2d(relu=True, max_pool2=True)`` is the ReLU'd
    Winograd forward pooled, and its backward with the indices is the composition."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 4, 10, 9), dtype=np.float32)
    w = rng.standard_normal((6, 4, kernel, kernel), dtype=np.float32)
    b = rng.standard_normal(6, dtype=np.float32)
    p = kernel // 2
    with fastcnn.config(conv="winograd"):
        full = F.conv2d(x, w, b, 1, p, relu=True)
        y, idx = F.conv2d(x, w, b, 1, p, relu=True, max_pool2=True, return_indices=True)
        want, want_idx = F.max_pool2d(full, 2, return_indices=True)
        assert y.tobytes() == want.tobytes() and np.array_equal(idx, want_idx)
        gp = rng.standard_normal(y.shape).astype(np.float32)
        got = F.conv2d_backward(gp, x, w, 1, p, pool_indices=idx, relu_output=y)
        g_full = F.max_pool2d_backward(F.relu_backward(gp, y), idx, full.shape)
        comp = F.conv2d_backward(g_full, x, w, 1, p)
    for a, c in zip(got, comp):
        assert a.tobytes() == c.tobytes()



def test_conv2d_relu_flag_on_direct_and_gemm_paths(compiled):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 8, 8), dtype=np.float32)
    w = rng.standard_normal((16, 4, 3, 3), dtype=np.float32)
    for conv in ("direct", "winograd", "per_image", "chunked"):
        with fastcnn.config(conv=conv):
            np.testing.assert_array_equal(F.conv2d(x, w, None, 1, 1, relu=True),
                                          np.maximum(F.conv2d(x, w, None, 1, 1), 0))



@pytest.mark.parametrize("size", [(8, 8), (9, 7), (2, 3)])
def test_conv2d_max_pool2_flag_is_the_two_ops_in_sequence(compiled, size):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4) + size, dtype=np.float32)
    w = rng.standard_normal((16, 4, 3, 3), dtype=np.float32)
    b = rng.standard_normal(16, dtype=np.float32)
    for conv in ("direct", "winograd", "per_image", "chunked"):
        with fastcnn.config(conv=conv):
            for relu in (False, True):
                got = F.conv2d(x, w, b, 1, 1, relu=relu, max_pool2=True)
                assert got.shape == (3, 16, size[0] // 2, size[1] // 2)
                np.testing.assert_array_equal(got, F.max_pool2d(F.conv2d(x, w, b, 1, 1, relu=relu), 2))
                ws = F.Workspace()
                got, idx = F.conv2d(x, w, b, 1, 1, relu=relu, max_pool2=True, return_indices=True, ws=ws)
                full = F.conv2d(x, w, b, 1, 1, relu=relu)
                want, want_idx = F.max_pool2d(full, 2, return_indices=True)
                np.testing.assert_array_equal(got, want)
                np.testing.assert_array_equal(idx, want_idx)
                gy = rng.standard_normal(got.shape, dtype=np.float32)
                np.testing.assert_array_equal(F.max_pool2d_backward(gy, idx, full.shape, ws=ws),
                                              F.max_pool2d_backward(gy, want_idx, full.shape))


@pytest.mark.parametrize("shape", [(3, 4, 8, 8), (1, 4, 9, 7), (2, 16, 16, 16)])
def test_conv2d_stats_are_batch_norm2d_statistics(backend, shape):
    """``conv2d(..., stats=)`` fills the output's batch statistics (fused into the direct and
    Winograd kernels, a separate pass on the GEMM strategies); handed to ``batch_norm2d`` as
    ``batch_stats`` they give its output and running statistics bit for bit."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal((16, shape[1], 3, 3), dtype=np.float32)
    b = rng.standard_normal(16, dtype=np.float32)
    gamma, beta = rng.uniform(0.5, 2, 16).astype(np.float32), rng.standard_normal(16, dtype=np.float32)
    for conv in ("direct", "winograd", "per_image", "chunked"):
        with fastcnn.config(conv=conv):
            for stride in (1, 2):
                st = np.full((2, 16), np.nan)
                y = F.conv2d(x, w, b, stride, 1, stats=st)
                np.testing.assert_array_equal(y, F.conv2d(x, w, b, stride, 1))
                got, want = [], []
                for out, kw in ((got, {"batch_stats": st}), (want, {})):
                    rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
                    out += [F.batch_norm2d(y, gamma, beta, rm, rv, training=True, **kw)[0], rm, rv]
                for a, c in zip(got, want):
                    assert a.tobytes() == c.tobytes(), (conv, stride)


def test_conv2d_stats_and_batch_stats_checked():
    x, w = np.ones((2, 1, 4, 4), np.float32), np.ones((8, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="not with max_pool2"):
        F.conv2d(x, w, stats=np.empty((2, 8)), max_pool2=True)
    for bad in (np.empty((2, 7)), np.empty((2, 8), np.float32), [[0.0] * 8] * 2, np.empty((2, 16))[:, ::2]):
        with pytest.raises(ValueError, match=r"conv2d: stats must be .*\(2, 8\)"):
            F.conv2d(x, w, stats=bad)
    y = F.conv2d(x, w)
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    with pytest.raises(ValueError, match="batch_stats are for training only"):
        F.batch_norm2d(y, np.ones(8), np.zeros(8), rm, rv, training=False, batch_stats=np.zeros((2, 8)))
    with pytest.raises(ValueError, match=r"batch_norm2d: stats must be .*\(2, 8\)"):
        F.batch_norm2d(y, np.ones(8), np.zeros(8), rm, rv, training=True, batch_stats=np.zeros((2, 4)))


def test_conv2d_return_indices_needs_max_pool2():
    with pytest.raises(ValueError, match="return_indices=True needs max_pool2=True"):
        F.conv2d(np.ones((1, 1, 4, 4), np.float32), np.ones((8, 1, 1, 1), np.float32), return_indices=True)


def test_conv2d_max_pool2_of_a_one_row_output_is_refused_as_the_pooling_would_be(compiled):
    x, w = np.ones((1, 1, 1, 5), np.float32), np.ones((8, 1, 1, 1), np.float32)
    for conv in ("direct", "per_image"):
        with fastcnn.config(conv=conv), pytest.raises(ValueError, match="max_pool2d"):
            F.conv2d(x, w, max_pool2=True)


# ----------------------------------------------------------------------------- determinism across runs and threads

@pytest.mark.parametrize("strategy", ["per_image", "direct"])
def test_per_image_results_do_not_depend_on_threads(compiled, strategy, request):
    """The per-image and direct paths sum the weight gradient in fixed slots: 1 and 2
    threads agree bit for bit."""
    if cores() < 2:
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



@pytest.mark.parametrize("threads", [1, 2])
def test_conv_backward_is_bit_identical_run_to_run(backend, conv_path, threads):
    if threads > cores():
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


# ----------------------------------------------------------------------------- batch norm

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



def _fold_args(oc=6, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.3, (oc, c, 3, 3)).astype(np.float32), rng.normal(0, 0.1, oc).astype(np.float32),
            rng.normal(0, 0.5, oc).astype(np.float32), rng.uniform(0.1, 4, oc).astype(np.float32),
            rng.uniform(0.5, 1.5, oc).astype(np.float32), rng.normal(0, 0.3, oc).astype(np.float32))


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_batch_norm_equals_conv_then_eval_batch_norm(backend, with_bias):
    w, b, mean, var, gamma, beta = _fold_args()
    b = b if with_bias else None
    x = np.random.default_rng(1).random((2, 4, 7, 5), dtype=np.float32)
    wf, bf = F.fold_batch_norm(w, b, mean, var, gamma, beta, 1e-3)
    assert wf.dtype == bf.dtype == np.float32 and wf.shape == w.shape and bf.shape == (6,)
    plain, _ = F.batch_norm2d(F.conv2d(x, w, b, 1, 1), gamma, beta, mean.copy(), var.copy(),
                              training=False, eps=1e-3)
    # 36-term sums of values of order 1, rounded differently (weights scaled before, not after):
    # a few float32 units of the largest output.
    np.testing.assert_allclose(F.conv2d(x, wf, bf, 1, 1), plain, rtol=0, atol=2e-6 * np.abs(plain).max())


@needs_torch
def test_fold_batch_norm_matches_torch():
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    w, b, mean, var, gamma, beta = _fold_args(seed=3)
    wf, bf = F.fold_batch_norm(w, b, mean, var, gamma, beta, 1e-5)
    tw, tb = fuse_conv_bn_weights(*map(torch.from_numpy, (w, b, mean, var)), 1e-5, torch.from_numpy(gamma),
                                  torch.from_numpy(beta))
    # torch folds in float32 (two roundings per value), fastcnn in float64 (one): 2 units.
    np.testing.assert_allclose(wf, tw.detach().numpy(), rtol=2.5e-7, atol=0)
    np.testing.assert_allclose(bf, tb.detach().numpy(), rtol=0, atol=4.8e-7 * np.abs(bf).max())


def test_fold_batch_norm_refuses_mismatched_shapes():
    w, b, mean, var, gamma, beta = _fold_args()
    with pytest.raises(ValueError, match=r"fold_batch_norm: running_var must have shape \(6,\)"):
        F.fold_batch_norm(w, b, mean, var[:5], gamma, beta)
    with pytest.raises(ValueError, match=r"fold_batch_norm: bias must have shape \(6,\)"):
        F.fold_batch_norm(w, b[:3], mean, var, gamma, beta)
    with pytest.raises(ValueError, match="fold_batch_norm: weight"):
        F.fold_batch_norm(w[0], b, mean, var, gamma, beta)
    with pytest.raises(ValueError, match="eps must be > 0"):
        F.fold_batch_norm(w, b, mean, var, gamma, beta, 0.0)


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



@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (1, 2, 7, 5), (2, 3, 2, 3)])
def test_batch_norm2d_fused_relu_and_pooling_are_the_ops_in_sequence(backend, train, shape):
    """``batch_norm2d(relu=..., max_pool2=...)`` and its backward (given the gradient of what
    it returned) equal batch_norm2d -> relu -> max_pool2d and back, bit for bit, with the same
    running statistics."""
    rng = np.random.default_rng(14)
    c = shape[1]
    x = (2 + rng.standard_normal(shape)).astype(np.float32)
    weight = rng.uniform(0.5, 2, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    for relu in (False, True):
        for pool in (False, True):
            rm0, rv0 = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
            rm, rv = rm0.copy(), rv0.copy()
            y, cache = F.batch_norm2d(x, weight, bias, rm, rv, training=train, relu=relu, max_pool2=pool)
            srm, srv = rm0.copy(), rv0.copy()
            t, scache = F.batch_norm2d(x, weight, bias, srm, srv, training=train)
            r = F.relu(t) if relu else t
            want, idx = F.max_pool2d(r, 2, return_indices=True) if pool else (r, None)
            assert y.tobytes() == want.tobytes() and rm.tobytes() == srm.tobytes() and rv.tobytes() == srv.tobytes()
            gy = rng.standard_normal(y.shape, dtype=np.float32)
            g = F.max_pool2d_backward(gy, idx, r.shape) if pool else gy
            g = F.relu_backward(g, r) if relu else g
            for got, exp in zip(F.batch_norm2d_backward(gy, cache, weight), F.batch_norm2d_backward(g, scache, weight)):
                np.testing.assert_array_equal(got, exp)
            with pytest.raises(ValueError, match="grad_out must have shape"):
                F.batch_norm2d_backward(np.zeros((1,) + y.shape, np.float32)[0, :, :1], cache, weight)
    with pytest.raises(ValueError, match="max_pool2 needs an input of at least 2 x 2"):
        F.batch_norm2d(x[:, :, :1], weight, bias, rm, rv, training=train, max_pool2=True)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (1, 2, 7, 5), (2, 3, 1, 3), (8, 16, 16, 16)])
def test_batch_norm2d_residual_is_the_sum_in_the_same_pass(backend, train, shape):
    """``batch_norm2d(residual=r, relu=...)`` returns ``add_relu`` (``add``) of batch_norm2d's
    output and ``r`` bit for bit (the last shape past ``PAR_MIN_WORK``: the kernels' parallel
    path), and its backward takes the gradient of the sum (the ReLU's mask is the caller's); a
    residual of another shape, or with max_pool2, is refused."""
    rng = np.random.default_rng(15)
    c = shape[1]
    x = (2 + rng.standard_normal(shape)).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32)
    weight = rng.uniform(0.5, 2, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    for relu in (False, True):
        rm, srm = np.zeros(c, np.float32), np.zeros(c, np.float32)
        rv, srv = np.ones(c, np.float32), np.ones(c, np.float32)
        y, cache = F.batch_norm2d(x, weight, bias, rm, rv, training=train, relu=relu, residual=r)
        t, scache = F.batch_norm2d(x, weight, bias, srm, srv, training=train)
        want = F.add_relu(t, r) if relu else F.add(t, r)
        assert y.tobytes() == want.tobytes() and rm.tobytes() == srm.tobytes() and rv.tobytes() == srv.tobytes()
        g = rng.standard_normal(shape, dtype=np.float32)
        for got, exp in zip(F.batch_norm2d_backward(g, cache, weight), F.batch_norm2d_backward(g, scache, weight)):
            np.testing.assert_array_equal(got, exp)
    with pytest.raises(ValueError, match=r"residual must have the input's shape"):
        F.batch_norm2d(x, weight, bias, rm, rv, training=train, residual=r[:, :1])
    with pytest.raises(ValueError, match="residual and max_pool2"):
        F.batch_norm2d(x, weight, bias, rm, rv, training=train, residual=r, max_pool2=True)


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_norm2d_is_bit_identical_run_to_run(backend, threads):
    if threads > cores():
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



def test_add_and_add_relu(backend):
    """``F.add`` (new array or ``out``, which may be either addend) and ``F.add_relu`` equal
    NumPy's sum and ``F.relu`` of it; mismatched shapes and unusable ``out`` are refused."""
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal((3, 4, 5, 6)).astype(np.float32) for _ in range(2))
    want = a + b
    np.testing.assert_array_equal(F.add(a, b), want)
    np.testing.assert_array_equal(F.add_relu(a, b), F.relu(want))
    for into in (0, 1):
        pair = [a.copy(), b.copy()]
        assert F.add(*pair, out=pair[into]) is pair[into]
        np.testing.assert_array_equal(pair[into], want)
    with pytest.raises(ValueError, match=r"add: a shape \(3, 4, 5, 6\) does not match b shape \(3, 4, 5\)"):
        F.add(a, b[..., 0])
    with pytest.raises(ValueError, match="add_relu: a shape"):
        F.add_relu(a[0], b)
    buf = np.zeros(a.size + 1, np.float32)
    shifted_a, shifted_out = buf[:-1].reshape(a.shape), buf[1:].reshape(a.shape)
    with pytest.raises(ValueError, match="out overlaps part of a"):
        F.add(shifted_a, b, out=shifted_out)
    read_only = np.empty(a.shape, np.float32)
    read_only.flags.writeable = False
    for bad in (np.empty(a.shape, np.float64), np.empty((3, 4, 5, 7), np.float32)[..., :6],
                np.empty((2, 4, 5, 6), np.float32), read_only):
        with pytest.raises(ValueError, match="out must be a writable C-contiguous float32 array"):
            F.add(a, b, out=bad)


def test_add_relu_backward(backend):
    """``F.add_relu_backward`` (new array or ``out``, which may be either gradient) is ``F.add``
    then ``F.relu_backward`` bit for bit; mismatched shapes and an ``out`` on the ReLU's output
    are refused."""
    rng = np.random.default_rng(5)
    a, b, y = (rng.standard_normal((3, 4, 5, 6)).astype(np.float32) for _ in range(3))
    want = F.relu_backward(F.add(a, b), y)
    assert F.add_relu_backward(a, b, y).tobytes() == want.tobytes()
    for into in (0, 1):
        pair = [a.copy(), b.copy()]
        assert F.add_relu_backward(*pair, y, out=pair[into]) is pair[into]
        assert pair[into].tobytes() == want.tobytes()
    with pytest.raises(ValueError, match=r"add_relu_backward: a shape \(3, 4, 5, 6\) does not match output shape"):
        F.add_relu_backward(a, b, y[0])
    with pytest.raises(ValueError, match="add_relu_backward: a shape"):
        F.add_relu_backward(a, b[0], y)
    with pytest.raises(ValueError, match="add_relu_backward: out overlaps the output y"):
        F.add_relu_backward(a, b, y, out=y)
    with pytest.raises(ValueError, match="add_relu_backward: out must be a writable"):
        F.add_relu_backward(a, b, y, out=np.empty(a.shape, np.float64))


def test_zero_dim_and_empty_relu_keep_their_shape(backend):
    for x in (np.float64(-2.0) * np.ones(()), np.zeros((0, 3), np.float32)):
        y = F.relu(x)
        assert y.shape == x.shape and y.dtype == np.float32
        assert F.relu_backward(np.ones_like(y), y).shape == x.shape


# ----------------------------------------------------------------------------- corr2d

def test_corr2d_worked_example_and_docstring():
    y = F.corr2d(np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]], np.float32), np.array([[0, 1], [2, 3]], np.float32))
    assert y.dtype == np.float32 and y.tolist() == [[19, 25], [37, 43]]
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(F.corr2d, "corr2d"):
        runner.run(test)
    assert runner.failures == 0 and runner.tries == 3



def test_corr2d_edge_detector_of_the_tutorial():
    x = np.ones((6, 8), np.float32)
    x[:, 2:6] = 0
    y = F.corr2d(x, np.array([[1.0, -1.0]], np.float32))
    expected = np.zeros((6, 7))
    expected[:, 1], expected[:, 5] = 1, -1  # white->black edge 1, black->white edge -1
    assert y.tolist() == expected.tolist()
    assert F.corr2d(x.T, np.array([[1.0, -1.0]], np.float32)).tolist() == np.zeros((8, 5)).tolist()



@pytest.mark.parametrize("shape,kshape", [((7, 9), (3, 2)), ((1, 5), (1, 5)), ((4, 4), (1, 1)), ((10, 3), (4, 3))])
def test_corr2d_equals_loops_and_conv2d(backend, shape, kshape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    k = rng.standard_normal(kshape).astype(np.float32)
    y = F.corr2d(x, k)
    assert_close(y, naive.corr2d(x.astype(np.float64), k.astype(np.float64)), rtol=1e-5, what="corr2d")
    # the same numbers as the 4-D primitive (same kernels, so bit-identical)
    assert np.array_equal(y, F.conv2d(x[None, None], k[None, None])[0, 0])



def test_corr2d_bad_input():
    with pytest.raises(ValueError, match="corr2d: input must be 2-D"):
        F.corr2d(np.ones((1, 3, 3), np.float32), np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="kernel"):
        F.corr2d(np.ones((3, 3), np.float32), np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="larger"):
        F.corr2d(np.ones((2, 2), np.float32), np.ones((3, 3), np.float32))


def test_update_workspace_checks_once_per_array_objects():
    """With a Workspace the update functions skip the checks only for the very array objects
    that passed them in the previous call: results are those without it, and an array put in
    place of one (wrong dtype, read-only, another shape) is refused before anything changes."""
    rng = np.random.default_rng(6)
    p = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    g = [rng.standard_normal(a.shape).astype(np.float32) for a in p]
    ref = [a.copy() for a in p]
    ws = F.Workspace()
    m, v, mr, vr = ([np.zeros_like(a) for a in p] for _ in range(4))
    for step in (1, 2, 3):
        F.sgd_step(p, g, [], lr=0.1, weight_decay=0.01, ws=ws)
        F.sgd_step(ref, g, [], lr=0.1, weight_decay=0.01)
        F.adam_step(p, g, m, v, step=step, lr=0.1, ws=ws)
        F.adam_step(ref, g, mr, vr, step=step, lr=0.1)
    for a, b in zip(p + m + v, ref + mr + vr):
        np.testing.assert_array_equal(a, b)
    before = [a.copy() for a in p]
    readonly = p[1].copy()
    readonly.flags.writeable = False
    for bad_p, bad_g, exc, match in (
            (p, [g[0], g[1].astype(np.float64)], TypeError, r"grads\[1\] must be a C-contiguous float32"),
            ([p[0], readonly], g, ValueError, r"params\[1\] is read-only"),
            (p, [g[0], np.zeros(4, np.float32)], TypeError, r"grads\[1\] must be .* of shape \(5,\)")):
        with pytest.raises(exc, match=match):
            F.sgd_step(bad_p, bad_g, [], lr=0.1, ws=ws)
        with pytest.raises(exc, match=match):
            F.adam_step(bad_p, bad_g, m, v, step=4, lr=0.1, ws=ws)
        for a, b in zip(p, before):
            np.testing.assert_array_equal(a, b)  # (nothing was updated)


def test_sgd_step_creates_missing_momentum_buffers_and_checks_arrays():
    """``sgd_step`` makes the momentum buffers given as None (set to the first step's
    direction, stored in the list) and refuses arrays that do not match their parameter."""
    rng = np.random.default_rng(5)
    p = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    g = [rng.standard_normal(a.shape).astype(np.float32) for a in p]
    before = [a.copy() for a in p]
    bufs = [None, None]
    F.sgd_step(p, g, bufs, lr=0.1, momentum=0.9, weight_decay=0.01)
    for a, b, grad, buf in zip(p, before, g, bufs):
        d = grad + np.float32(0.01) * b
        np.testing.assert_array_equal(buf, d)
        np.testing.assert_array_equal(a, b - np.float32(0.1) * d)
    plain = [b.copy() for b in before]
    F.sgd_step(plain, g, [], lr=0.1)  # (no momentum: no buffers needed)
    np.testing.assert_array_equal(plain[1], before[1] - np.float32(0.1) * g[1])
    # one buffer given, one made now: each parameter's own first-update rule (torch's order)
    mixed = [b.copy() for b in before]
    given = np.full(p[0].shape, 0.5, np.float32)
    mbufs = [given.copy(), None]
    F.sgd_step(mixed, g, mbufs, lr=0.1, momentum=0.9, weight_decay=0.01)
    f = np.float32
    d = [grad + f(0.01) * b for grad, b in zip(g, before)]
    want_bufs = [given * f(0.9) + f(1.0) * d[0], d[1]]
    for a, b, buf, wbuf in zip(mixed, before, mbufs, want_bufs):
        np.testing.assert_array_equal(buf, wbuf)
        np.testing.assert_array_equal(a, b - f(0.1) * wbuf)
    with pytest.raises(ValueError, match="1 momentum_buffers for 2 params"):
        F.sgd_step(p, g, [None], lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"momentum_buffers\[1\] must be a C-contiguous float32 array of shape \(5,\)"):
        F.sgd_step(p, g, [bufs[0], np.zeros(4, np.float32)], lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a C-contiguous float32 array"):
        F.sgd_step(p, [g[0].astype(np.float64), g[1]], [], lr=0.1)
