"""Layers, models, losses and optimizers against PyTorch gold modules; checkpoints."""
import numpy as np
import pytest

import fastcnn
from fastcnn import layers as L
from fastcnn import losses, models, optim

from conftest import assert_close, needs_torch
from gold import to_numpy_state, torch_twin


def _torch():
    import torch

    return torch


def _check_layer(layer, twin, x, rtol=1e-5, train=True):
    """Forward, input gradient and parameter gradients of ``layer`` equal ``twin``'s."""
    torch = _torch()
    layer.train(train)
    twin.train(train)
    tx = torch.tensor(x, requires_grad=True)
    ty = twin(tx)
    y = layer.forward(x)
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
@pytest.mark.parametrize("make", [lambda: L.MaxPool2D(2), lambda: L.MaxPool2D(3, 2, 1), lambda: L.AvgPool2D(2),
                                  lambda: L.AvgPool2D(3, 1, 1), lambda: L.ReLU(), lambda: L.Flatten()])
def test_parameterless_layers_match_torch(backend, make):
    layer = make()
    x = np.random.default_rng(2).standard_normal((3, 4, 9, 9)).astype(np.float32)
    _check_layer(layer, torch_twin(fastcnn.Sequential(layer))[0], x)


@needs_torch
@pytest.mark.parametrize("n", [1, 5, 64])
def test_dense_layer_matches_torch(backend, conv_path, n):
    layer = L.Dense(37, 11, rng=3)
    _check_layer(layer, torch_twin(fastcnn.Sequential(layer))[0],
                 np.random.default_rng(3).standard_normal((n, 37)).astype(np.float32))


@needs_torch
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_layer_matches_torch(backend, train):
    layer = L.BatchNorm2D(6)
    rng = np.random.default_rng(4)
    layer.weight.data[...] = rng.uniform(0.5, 2, 6)
    layer.bias.data[...] = rng.standard_normal(6)
    layer.running_mean[...] = rng.standard_normal(6)
    layer.running_var[...] = rng.uniform(0.5, 2, 6)
    twin = torch_twin(fastcnn.Sequential(layer))[0]
    x = (3 * rng.standard_normal((4, 6, 5, 3)) + 1).astype(np.float32)
    _check_layer(layer, twin, x, train=train)
    assert_close(layer.running_mean, twin.running_mean.numpy(), 1e-6)
    assert_close(layer.running_var, twin.running_var.numpy(), 1e-6)
    assert int(layer.num_batches_tracked) == int(twin.num_batches_tracked)


@needs_torch
@pytest.mark.parametrize("name", ["scratch", "lenet", "bn"])
def test_model_logits_and_gradients_match_torch(backend, conv_path, name):
    torch = _torch()
    model = models.build(name, seed=0)
    twin = torch_twin(model)
    x = np.random.default_rng(5).random((8, 1, 28, 28), dtype=np.float32)
    labels = np.arange(8) % 10
    for train in (True, False):
        model.train(train)
        twin.train(train)
        logits = model.forward(x)
        tlogits = twin(torch.tensor(x))
        assert np.max(np.abs(logits - tlogits.detach().numpy())) <= 1e-4
    model.train()
    twin.train()
    loss_fn = losses.SoftmaxCrossEntropy()
    loss = loss_fn.forward(model.forward(x), labels)
    tloss = torch.nn.functional.cross_entropy(twin(torch.tensor(x)), torch.tensor(labels))
    assert abs(loss - tloss.item()) <= 1e-5 * abs(tloss.item())
    tloss.backward()
    model.backward(loss_fn.backward())
    for p, (pname, tp) in zip(model.parameters(), twin.named_parameters()):
        # (a conv bias before BatchNorm has a true gradient of 0: compare it on an absolute scale)
        assert_close(p.grad, tp.grad.numpy(), 2e-4, atol=1e-5, what=pname)


@needs_torch
def test_torch_state_dict_loads_as_is():
    torch = _torch()
    model = models.build("bn", seed=1)
    twin = torch_twin(models.build("bn", seed=2))  # different weights
    with torch.no_grad():
        twin(torch.rand(4, 1, 28, 28))  # move running stats
    model.load_state_dict(to_numpy_state(twin))
    model.eval()
    twin.eval()
    x = np.random.default_rng(6).random((3, 1, 28, 28), dtype=np.float32)
    assert np.max(np.abs(model.forward(x) - twin(torch.tensor(x)).detach().numpy())) <= 1e-5


@needs_torch
@pytest.mark.parametrize("kind", ["sgd", "sgd_momentum", "adam"])
def test_optimizers_match_torch(kind):
    torch = _torch()
    rng = np.random.default_rng(7)
    w0 = rng.standard_normal((5, 3)).astype(np.float32)
    p = fastcnn.Parameter(w0.copy())
    tp = torch.nn.Parameter(torch.tensor(w0.copy()))
    if kind == "adam":
        opt, topt = optim.Adam([p], lr=0.01), torch.optim.Adam([tp], lr=0.01)
    else:
        m = 0.9 if kind == "sgd_momentum" else 0.0
        opt, topt = optim.SGD([p], lr=0.05, momentum=m), torch.optim.SGD([tp], lr=0.05, momentum=m)
    for _ in range(20):
        g = rng.standard_normal((5, 3)).astype(np.float32)
        opt.zero_grad()
        topt.zero_grad()
        p.grad += g
        tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    assert_close(p.data, tp.detach().numpy(), 1e-5)


@needs_torch
def test_mse_matches_torch():
    torch = _torch()
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((4, 7)).astype(np.float32), rng.standard_normal((4, 7)).astype(np.float32)
    ta = torch.tensor(a, requires_grad=True)
    tl = torch.nn.functional.mse_loss(ta, torch.tensor(b))
    tl.backward()
    mse = losses.MSE()
    assert abs(mse.forward(a, b) - tl.item()) <= 1e-6 * tl.item()
    assert_close(mse.backward(), ta.grad.numpy(), 1e-6)


def test_training_reduces_loss(backend):
    rng = np.random.default_rng(9)
    x = rng.random((64, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    model = models.build("bn", seed=0)
    opt = optim.Adam(model.parameters(), 1e-3)
    loss_fn = losses.SoftmaxCrossEntropy()
    first = None
    for step in range(15):
        opt.zero_grad()
        loss = loss_fn.forward(model.forward(x), y)
        first = loss if first is None else first
        model.backward(loss_fn.backward())
        opt.step()
    assert loss < 0.5 * first


@pytest.mark.parametrize("name", ["lenet", "bn"])
def test_save_load_roundtrip(tmp_path, name):
    model = models.build(name, seed=3)
    model.forward(np.random.default_rng(1).random((4, 1, 28, 28), dtype=np.float32))  # move BN statistics
    path = tmp_path / "m.npz"
    model.save(path, metadata={"model": name})
    loaded, meta = fastcnn.load(path, return_metadata=True)
    assert meta == {"model": name}
    x = np.random.default_rng(10).random((2, 1, 28, 28), dtype=np.float32)
    model.eval()
    loaded.eval()
    np.testing.assert_array_equal(model.forward(x), loaded.forward(x))
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_load_refuses_pickles_truncation_and_foreign_files(tmp_path):
    import pickle

    bad = tmp_path / "pickled.npz"
    np.savez(bad, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        fastcnn.load(bad)
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ValueError):
        fastcnn.load(raw)
    good = tmp_path / "good.npz"
    models.build("scratch").save(good)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated|unreadable"):
        fastcnn.load(trunc)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, w=np.zeros(3))
    with pytest.raises(ValueError, match="not a fastcnn checkpoint"):
        fastcnn.load(foreign)


def test_load_state_dict_rejects_wrong_architecture():
    model = models.build("lenet")
    state = models.build("bn").state_dict()
    with pytest.raises(KeyError, match="missing keys"):
        model.load_state_dict(state)
    state = model.state_dict()
    state["0.weight"] = np.zeros((3, 1, 5, 5), np.float32)
    with pytest.raises(ValueError, match="expected"):
        model.load_state_dict(state)


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    models.build("scratch", seed=1).save(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="No space"):
        models.build("scratch", seed=2).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_resnet_builds_and_runs():
    model = models.build("resnet", seed=0, in_channels=1)
    x = np.random.default_rng(11).random((2, 1, 32, 32), dtype=np.float32)
    y = model.forward(x)
    assert y.shape == (2, 10)
    gx = model.backward(np.ones_like(y))
    assert gx.shape == x.shape and np.all(np.isfinite(gx))


@pytest.mark.parametrize("name", ["lenet", "bn", "resnet"])
def test_eval_forward_fuses_conv_relu_bit_identically(backend, name):
    """In eval mode a Sequential fuses each Conv2D + ReLU pair (the ReLU in the convolution's
    store); the logits equal the layer-by-layer ones bit for bit, on every strategy."""
    from fastcnn import models

    m = models.build(name, seed=3).eval()
    c, s = (3, 32) if name == "resnet" else (1, models.INPUT_SIZE[name])
    x = np.random.default_rng(0).random((5, c, s, s), dtype=np.float32)

    def unfused(layer, h):
        if isinstance(layer, fastcnn.Sequential):
            for child in layer:
                h = unfused(child, h)
            return h
        if isinstance(layer, L.Residual):
            return np.maximum(unfused(layer.body, h) + unfused(layer.shortcut, h), 0)
        return layer.forward(h)

    for conv in ("direct", "per_image", "chunked"):
        with fastcnn.config(conv=conv):
            np.testing.assert_array_equal(m.forward(x), unfused(m, x))
    with pytest.raises(ValueError, match="eval mode"):
        m.train()[0].forward(x, relu=True)
