"""fastcnn.layers against PyTorch gold modules (float32 twins; float64 twins for the layers
the tutorials name that fastcnn added later: Dropout, Sigmoid, Tanh, SumPool2D,
GlobalAvgPool2D), finite differences and each other."""
import numpy as np
import pytest

import fastcnn
from fastcnn import functional as F
from fastcnn import layers as L

from utils import assert_close, assert_grad_at, needs_torch, torch_twin


def _check_layer(layer, twin, x, rtol=1e-5, train=True, after=None, **fused):
    """Forward, input gradient and parameter gradients of ``layer`` equal ``twin``'s; with
    ``fused`` (``relu``, ``max_pool2``) those of ``layer.forward(x, **fused)`` equal
    ``after(twin(x))``'s."""
    import torch

    layer.train(train)
    twin.train(train)
    tx = torch.tensor(x, requires_grad=True)
    ty = twin(tx) if after is None else after(twin(tx))
    y = layer.forward(x, **fused)
    assert_close(y, ty.detach().numpy(), rtol, what="forward")
    rng = np.random.default_rng(0)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.tensor(gy))
    for p in layer.parameters():
        p.grad[...] = 0
    gx = layer.backward(gy)
    assert_close(gx, tx.grad.numpy(), rtol, what="grad input")
    for p, (name, tp) in zip(layer.parameters(), twin.named_parameters()):
        assert_close(p.grad, tp.grad.numpy(), rtol, what=f"grad {name}")


@needs_torch
@pytest.mark.parametrize("args,shape", [
    (dict(in_channels=1, out_channels=32, kernel_size=5, padding="same"), (4, 1, 28, 28)),
    (dict(in_channels=3, out_channels=5, kernel_size=3, stride=2, padding=1), (1, 3, 9, 8)),
    (dict(in_channels=2, out_channels=4, kernel_size=(3, 1), padding=(1, 0), bias=False), (2, 2, 5, 7)),
    (dict(in_channels=4, out_channels=3, kernel_size=1), (3, 4, 1, 1)),
])
def test_conv2d_layer_matches_torch(backend, conv_path, args, shape):
    layer = L.Conv2D(**args, rng=1)
    _check_layer(layer, torch_twin(fastcnn.Sequential(layer))[0],
                 np.random.default_rng(1).standard_normal(shape).astype(np.float32))


@needs_torch
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("args,shape", [
    (dict(in_channels=1, out_channels=8, kernel_size=5, padding="same"), (3, 1, 12, 12)),
    (dict(in_channels=3, out_channels=16, kernel_size=3, stride=2, padding=1), (1, 3, 11, 9)),
    (dict(in_channels=5, out_channels=9, kernel_size=(3, 2), padding=(1, 0), bias=False), (2, 5, 7, 8)),
])
def test_conv2d_fused_relu_and_pooling_in_training_match_torch(backend, conv_path, relu, args, shape):
    """``Conv2D.forward(x, relu, max_pool2=True)`` in training mode, and its backward (the
    gradient of the pooled output), are torch's conv2d -> relu -> max_pool2d(2) (odd sizes drop
    the last row or column)."""
    import torch

    def after(t):
        return torch.nn.functional.max_pool2d(torch.relu(t) if relu else t, 2)

    layer = L.Conv2D(**args, rng=1)
    _check_layer(layer, torch_twin(fastcnn.Sequential(layer))[0],
                 np.random.default_rng(1).standard_normal(shape).astype(np.float32), after=after, relu=relu,
                 max_pool2=True)


def _fused_finite_differences(layer, x, x_at, w_at, seed):
    """d(sum(y * r))/dx and /dweight of ``layer.forward(x, relu=True, max_pool2=True)`` in
    training mode by central differences in float64 of the float32 layer (a fixed draw: a
    window's winner or a ReLU flipping within eps at a probed point would show as a mismatch)."""
    r = np.random.default_rng(seed).standard_normal(layer.forward(x, relu=True, max_pool2=True).shape)
    r = r.astype(np.float32)
    layer.weight.grad[...] = 0
    gx = layer.backward(r)
    gw = layer.weight.grad.copy()
    assert_grad_at(lambda: np.sum(layer.forward(x, relu=True, max_pool2=True).astype(np.float64) * r),
                   [(x, gx, x_at), (layer.weight.data, gw, w_at)])


def test_conv2d_fused_relu_and_pooling_finite_difference_gradient(backend):
    x = np.random.default_rng(6).standard_normal((2, 2, 7, 6)).astype(np.float32)
    _fused_finite_differences(L.Conv2D(2, 8, 3, padding=1, rng=2), x,
                              [(0, 0, 0, 0), (1, 1, 3, 4), (0, 1, 6, 5), (1, 0, 2, 2)],
                              [(0, 0, 0, 0), (7, 1, 2, 1), (3, 0, 1, 1)], 6)


@needs_torch
@pytest.mark.parametrize("make", [lambda: L.MaxPool2D(2), lambda: L.MaxPool2D(3, 2, 1), lambda: L.AvgPool2D(2),
                                  lambda: L.AvgPool2D(3, 1, 1), lambda: L.ReLU(), lambda: L.Flatten()])
def test_parameterless_layers_match_torch(backend, make):
    layer = make()
    x = np.random.default_rng(2).standard_normal((3, 4, 9, 9)).astype(np.float32)
    _check_layer(layer, torch_twin(fastcnn.Sequential(layer))[0], x)


def test_conv2d_stats_feed_batchnorm2d(backend):
    """``Conv2D.forward(x, stats=)`` fills its output's batch statistics; a training
    ``BatchNorm2D`` given them as ``batch_stats`` returns what it computes itself, and updates its
    running statistics the same; with the fused pooling the stats are refused, in either mode."""
    conv, x = L.Conv2D(3, 8, 3, padding=1, rng=1), np.random.default_rng(2).standard_normal((4, 3, 9, 9), np.float32)
    st = np.full((2, 8), np.nan)
    y = conv.forward(x, stats=st)
    outs = []
    for kw in ({"batch_stats": st}, {}):
        bn = L.BatchNorm2D(8)
        outs.append((bn.forward(y, relu=True, **kw), bn.running_mean, bn.running_var))
    for a, c in zip(*outs):
        assert a.tobytes() == c.tobytes()
    for mode in (True, False):
        conv.train(mode)
        with pytest.raises(ValueError, match="not with max_pool2"):
            conv.forward(x, max_pool2=True, stats=st)


@needs_torch
@pytest.mark.parametrize("n", [1, 5, 64])
def test_dense_layer_matches_torch(backend, conv_path, n):
    layer = L.Dense(37, 11, rng=3)
    _check_layer(layer, torch_twin(fastcnn.Sequential(layer))[0],
                 np.random.default_rng(3).standard_normal((n, 37)).astype(np.float32))


@pytest.mark.parametrize("n", [1, 5])
def test_dense_writes_a_zeroed_gradient_in_place(backend, n):
    """After ``zero_grad`` a Dense backward writes its weight gradient into the gradient's own
    memory (no copy, the array kept: views such as distributed's flat buffer stay valid);
    the second backward adds to it."""
    layer = L.Dense(37, 11, rng=3)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, 37)).astype(np.float32)
    gy = rng.standard_normal((n, 11)).astype(np.float32)
    want = F.linear_backward(gy, x, layer.weight.data)[1]
    buf = layer.weight.grad
    buf[...] = 9.0
    layer.weight.zero_grad()
    layer.forward(x)
    layer.backward(gy)
    assert layer.weight.grad is buf and buf.tobytes() == want.tobytes()
    layer.forward(x)
    layer.backward(gy)
    assert layer.weight.grad is buf and buf.tobytes() == (want + want).tobytes()


@needs_torch
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("fused,shape", [(False, (4, 6, 5, 3)), (True, (4, 6, 5, 3)), (True, (1, 6, 8, 8))])
def test_batchnorm_layer_matches_torch(backend, train, fused, shape):
    """Running statistics included; ``fused``: ``forward(x, relu=True, max_pool2=True)`` and its
    backward are torch's batch_norm -> relu -> max_pool2d(2)."""
    import torch

    layer = L.BatchNorm2D(6)
    rng = np.random.default_rng(4)
    layer.weight.data[...] = rng.uniform(0.5, 2, 6)
    layer.bias.data[...] = rng.standard_normal(6)
    layer.running_mean[...] = rng.standard_normal(6)
    layer.running_var[...] = rng.uniform(0.5, 2, 6)
    twin = torch_twin(fastcnn.Sequential(layer))[0]
    x = (3 * rng.standard_normal(shape) + 1).astype(np.float32)
    if fused:
        _check_layer(layer, twin, x, train=train, after=lambda t: torch.nn.functional.max_pool2d(torch.relu(t), 2),
                     relu=True, max_pool2=True)
    else:
        _check_layer(layer, twin, x, train=train)
    assert_close(layer.running_mean, twin.running_mean.numpy(), 1e-6)
    assert_close(layer.running_var, twin.running_var.numpy(), 1e-6)
    assert int(layer.num_batches_tracked) == int(twin.num_batches_tracked)


def test_batchnorm_fused_relu_and_pooling_finite_difference_gradient(backend):
    rng = np.random.default_rng(7)
    layer = L.BatchNorm2D(3)
    layer.weight.data[...] = rng.uniform(0.5, 2, 3)
    layer.bias.data[...] = rng.standard_normal(3)
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    _fused_finite_differences(layer, x, [(0, 0, 0, 0), (1, 2, 3, 4), (0, 1, 5, 2), (1, 0, 2, 2)],
                              [(0,), (1,), (2,)], 7)


# ---------------------------------------------------------------- Dropout, Sigmoid, Tanh, SumPool2D, GlobalAvgPool2D

def _check(layer, x, rtol=1e-5):
    """Forward and input gradient equal the float64 torch twin's (float32 rounding: 1e-5)."""
    import torch

    twin = torch_twin(fastcnn.Sequential(layer))[0].double()
    tx = torch.tensor(x.astype(np.float64), requires_grad=True)
    ty = twin(tx)
    y = layer.forward(x)
    assert y.dtype == np.float32
    assert_close(y, ty.detach().numpy(), rtol, what="forward")
    gy = np.random.default_rng(0).standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.tensor(gy, dtype=torch.float64))
    assert_close(layer.backward(gy), tx.grad.numpy(), rtol, what="grad input")


SHAPES = [(3, 4, 9, 9), (1, 1, 5, 7), (2, 3, 8, 8)]


@needs_torch
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("make", [lambda: L.SumPool2D(2), lambda: L.SumPool2D(3, 2, 1), lambda: L.SumPool2D((2, 3), 1),
                                  lambda: L.GlobalAvgPool2D()], ids=["sum2", "sum3s2p1", "sum23s1", "gap"])
def test_pooling_layers_match_torch(backend, make, shape):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    _check(make(), x)


@needs_torch
@pytest.mark.parametrize("make", [L.Sigmoid, L.Tanh])
def test_activations_match_torch(make):
    x = np.random.default_rng(3).standard_normal((3, 5, 4, 3)).astype(np.float32) * 4
    x[0, 0, 0, :] = [-100.0, 100.0, 0.0]  # saturation, no overflow warning
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        _check(make(), x)


@pytest.mark.parametrize("make", [L.Sigmoid, L.Tanh, lambda: L.SumPool2D(3, 2, 1), L.GlobalAvgPool2D])
def test_finite_difference_gradient(make):
    """d(sum(y * r))/dx by central differences in float64 of the float32 layer."""
    rng = np.random.default_rng(4)
    layer = make()
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    r = rng.standard_normal(layer.forward(x).shape).astype(np.float32)
    layer.forward(x)
    g = layer.backward(r)
    assert_grad_at(lambda: np.sum(layer.forward(x).astype(np.float64) * r),
                   [(x, g, [(0, 0, 0, 0), (1, 1, 2, 3), (0, 1, 4, 4), (1, 0, 3, 1)])], eps=1e-2, tol=2e-3)


def test_sum_pool_equals_area_times_average(backend):
    x = np.random.default_rng(5).random((2, 3, 6, 6)).astype(np.float32)
    y = L.SumPool2D(2).forward(x)
    # the sum of a 2x2 window, computed directly in float64
    want = x.reshape(2, 3, 3, 2, 3, 2).astype(np.float64).sum(axis=(3, 5))
    np.testing.assert_allclose(y, want, rtol=1e-6)


def test_global_avg_pool_shapes_and_errors():
    layer = L.GlobalAvgPool2D()
    x = np.random.default_rng(6).random((1, 7, 3, 5)).astype(np.float32)
    y = layer.forward(x)
    assert y.shape == (1, 7, 1, 1)
    np.testing.assert_allclose(y[:, :, 0, 0], x.mean(axis=(2, 3)), rtol=1e-6)
    with pytest.raises(ValueError, match="4-D"):
        layer.forward(np.zeros((2, 3), np.float32))


def test_dropout_is_seeded_scaled_and_identity_in_eval():
    x = np.ones((64, 32, 4, 4), np.float32)
    d = L.Dropout(0.25, seed=7)
    y1 = d.forward(x)
    kept = y1 != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_array_equal(y1[kept], np.float32(1 / 0.75))
    g = d.backward(np.full(x.shape, 2.0, np.float32))
    np.testing.assert_array_equal(g, np.where(kept, np.float32(2 / 0.75), 0))
    y2 = d.forward(x)
    assert not np.array_equal(y1, y2)  # a new mask every call
    d2 = L.Dropout(0.25, seed=7)
    np.testing.assert_array_equal(d2.forward(x), y1)  # same seed, same masks
    np.testing.assert_array_equal(d2.forward(x), y2)
    d.reseed([0, 5, 1])
    d2.reseed([0, 5, 1])
    np.testing.assert_array_equal(d.forward(x), d2.forward(x))  # reseeded: the trainer's way
    d.eval()
    np.testing.assert_array_equal(d.forward(x), x)
    np.testing.assert_array_equal(d.backward(x), x)
    with pytest.raises(ValueError, match="p must be"):
        L.Dropout(1.0)


@needs_torch
def test_dropout_matches_torch_given_the_mask():
    """torch's Dropout is ``x * mask / (1 - p)``; with the mask fastcnn drew, equal outputs."""
    import torch

    d = L.Dropout(0.4, seed=1)
    x = np.random.default_rng(8).standard_normal((5, 6)).astype(np.float32)
    y = d.forward(x)
    mask = torch.tensor(y != 0, dtype=torch.float32)
    want = torch.tensor(x) * mask / (1 - 0.4)
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-6)


def test_new_layers_round_trip_through_checkpoint(tmp_path):
    model = fastcnn.Sequential(L.Conv2D(1, 2, 3, rng=0), L.Tanh(), L.SumPool2D(2), L.Dropout(0.3, seed=2),
                               L.Sigmoid(), L.GlobalAvgPool2D(), L.Flatten(), L.Dense(2, 3, rng=0))
    model.eval()
    x = np.random.default_rng(9).random((2, 1, 8, 8)).astype(np.float32)
    model.save(tmp_path / "m.npz")
    again = fastcnn.load(tmp_path / "m.npz").eval()
    np.testing.assert_array_equal(again.forward(x), model.forward(x))


@pytest.mark.parametrize("last", [L.ReLU, L.Sigmoid, L.Tanh])
def test_residual_gradient_when_the_body_keeps_its_output(last):
    """A body whose last layer keeps its output for its backward (ReLU, Sigmoid, Tanh): the
    block's sum must not overwrite it (it did: ``y += s`` in place gave wrong gradients)."""
    rng = np.random.default_rng(0)
    res = L.Residual(L.Sequential(L.Conv2D(2, 2, 3, 1, 1, rng=rng), last()))
    x = rng.standard_normal((2, 2, 5, 4)).astype(np.float32)
    r = rng.standard_normal((2, 2, 5, 4))
    res.forward(x)
    gx = res.backward(r.astype(np.float32))
    assert_grad_at(lambda: np.sum(res.forward(x).astype(np.float64) * r),
                   [(x, gx, [(0, 0, 1, 1), (1, 1, 4, 3), (0, 1, 2, 0), (1, 0, 0, 2)])])


@pytest.mark.parametrize("shortcut", [False, True])
def test_residual_sum_in_the_last_batch_norm(shortcut):
    """A body ending in a BatchNorm2D adds the shortcut and applies the ReLU in that layer's pass
    (fused; not when that layer is wrapped on the instance, nor with ``fuse=False``): the same
    output bit for bit in training and in eval, and the input gradient by finite differences."""
    rng = np.random.default_rng(1)
    body = L.Sequential(L.Conv2D(3, 3, 3, 1, 1, bias=False, rng=rng), L.BatchNorm2D(3))
    short = L.Sequential(L.Conv2D(3, 3, 1, rng=rng), L.BatchNorm2D(3)) if shortcut else None
    res = L.Residual(body, short)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    s = short.forward(x) if shortcut else x
    assert body._forward(x, residual=s)[1]
    for training in (True, False):
        res.train(training)
        with fastcnn.config(fuse=False):
            plain = res.forward(x)
        with fastcnn.config(fold_bn=False):  # (folded into the convolution, no BatchNorm2D runs)
            assert res.forward(x).tobytes() == plain.tobytes()
            assert body._run is not None and body._run[-1] is body[1]
        if training:
            r = rng.standard_normal(plain.shape)
            gx = res.backward(r.astype(np.float32))
            assert_grad_at(lambda: np.sum(res.forward(x).astype(np.float64) * r),
                           [(x, gx, [(0, 0, 1, 1), (1, 1, 4, 3), (0, 2, 2, 0), (1, 0, 0, 2)])])
    bn = body[1]
    bn.forward = bn.forward  # (wrapped on the instance: run by itself)
    assert not body._forward(x, residual=s)[1]


def test_consecutive_residual_blocks_mask_in_the_sum():
    """A Residual right after another returns its input gradient through that block's ReLU in
    its sum's pass (``F.add_relu_backward``; that block then skips its ``relu_backward``): every
    gradient bit for bit as with ``fuse=False`` and as with a block wrapped on the instance (run
    by itself), and the input gradient by finite differences."""
    rng = np.random.default_rng(3)

    def block(shortcut):
        body = L.Sequential(L.Conv2D(3, 3, 3, 1, 1, bias=False, rng=rng), L.BatchNorm2D(3), L.ReLU(),
                            L.Conv2D(3, 3, 3, 1, 1, bias=False, rng=rng), L.BatchNorm2D(3))
        return L.Residual(body, L.Sequential(L.Conv2D(3, 3, 1, rng=rng)) if shortcut else None)

    net = L.Sequential(L.Conv2D(2, 3, 3, 1, 1, rng=rng), L.ReLU(), block(False), block(True), block(False),
                       L.Flatten(), L.Dense(3 * 5 * 4, 2, rng=rng))
    x = rng.standard_normal((2, 2, 5, 4)).astype(np.float32)
    r = rng.standard_normal((2, 2))

    def grads():
        for p in net.parameters():
            p.zero_grad()
        net.forward(x)
        gx = net.backward(r.astype(np.float32))
        return [gx.tobytes()] + [p.grad.tobytes() for p in net.parameters()], gx

    with fastcnn.config(fuse=False):
        plain, _ = grads()
    fused, gx = grads()
    assert L._residual_mask(net[3], net[2]) is net[2]._saved[0]  # (the pairs (3, 2) and (4, 3) fused)
    assert fused == plain
    net[3].backward = net[3].backward  # (wrapped on the instance: neither of its pairs fused)
    assert L._residual_mask(net[3], net[2]) is None and L._residual_mask(net[4], net[3]) is None
    assert grads()[0] == plain
    del net[3].backward
    assert_grad_at(lambda: np.sum(net.forward(x).astype(np.float64) * r),
                   [(x, gx, [(0, 0, 1, 1), (1, 1, 4, 3), (0, 1, 2, 0), (1, 0, 0, 2)])])
