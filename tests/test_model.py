"""``Sequential`` and checkpoint files (``fastcnn.model``): save/load round trips, refusal of
pickles and foreign files, atomic writes, the declared state; Conv2D + BatchNorm2D + ReLU fusion in
eval mode."""
import os

import numpy as np
import pytest

import fastcnn
from fastcnn import functional as F
from fastcnn import layers as L
from fastcnn import models, viz


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


@pytest.mark.parametrize("name", ["lenet", "bn", "resnet"])
def test_eval_forward_fuses_conv_relu_bit_identically(backend, name):
    """In eval mode a Sequential fuses each Conv2D + ReLU pair (the ReLU in the convolution's
    store); without batch-norm folding the logits equal the layer-by-layer ones bit for bit,
    on every strategy."""
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
        with fastcnn.config(conv=conv, fold_bn=False):
            np.testing.assert_array_equal(m.forward(x), unfused(m, x))
        with fastcnn.config(conv=conv, fuse=False):
            np.testing.assert_array_equal(m.forward(x), unfused(m, x))


@pytest.mark.parametrize("name", ["scratch", "lenet", "bn", "resnet"])
def test_training_fuses_relu_and_pooling_bit_identically(backend, name):
    """In training mode a Sequential runs each Conv2D or BatchNorm2D with the ReLU and 2x2
    MaxPool2D after it as one op (pooling indices from its store; the ReLU's mask applied to the
    pooled gradient), and a Conv2D before a BatchNorm2D computes its batch statistics in its
    store: three Adam steps give the parameters, gradients, losses and input
    gradients of the layer-by-layer run (``fuse=False``) bit for bit, on every strategy; the
    batch of one image included (two for the batch norms); but for an input gradient from the
    pooling's winners (lenet's second convolution on the direct kernels), within rounding."""
    from fastcnn import losses, models
    from fastcnn.train import make_optimizer

    s = models.INPUT_SIZE[name]
    c = 3 if name == "resnet" else 1
    for n in ((2,) if name == "resnet" else (1, 6) if name != "bn" else (2, 6)):
        rng = np.random.default_rng(n)
        x = rng.random((n, c, s, s), dtype=np.float32)
        y = rng.integers(0, 10, n)
        for conv in ("direct", "winograd", "per_image", "chunked"):
            runs = []
            for fuse in (False, True):
                with fastcnn.config(conv=conv, fuse=fuse):
                    m = models.build(name, seed=4)
                    opt = make_optimizer("adam", m.parameters(), 1e-2)
                    loss_fn = losses.SoftmaxCrossEntropy()
                    seen = []
                    for _ in range(3):
                        opt.zero_grad()
                        seen.append(loss_fn.forward(m.forward(x), y))
                        gx = m.backward(loss_fn.backward())
                        seen += [gx] + [p.grad.copy() for p in m.parameters()]
                        opt.step()
                    runs.append(seen + [p.data for p in m.parameters()])
            assert len(runs[0]) == len(runs[1])
            if conv == "direct" and name == "lenet":
                # Its second convolution's input gradient comes from the pooling's winners when
                # fused (32 x 5 x 5 >= POOLED_DGRAD_MIN_PATCH: docs/PERFORMANCE.md, section 13):
                # another order of the same sums, so the first step within rounding (the loss
                # and the layers after it bit for bit), Adam's later steps not compared.
                first = 2 + len(m.parameters())
                assert np.asarray(runs[0][0]).tobytes() == np.asarray(runs[1][0]).tobytes()
                for a, b in zip(runs[0][1:first], runs[1][1:first]):
                    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max(), err_msg=name)
                for a, b in zip(runs[0][4:first], runs[1][4:first]):  # (conv2's and the dense layers')
                    assert a.tobytes() == b.tobytes(), (name, n, conv)
                continue
            for a, b in zip(*runs):
                assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), (name, n, conv)


def test_training_fusion_skips_hooked_and_mixed_mode_layers():
    """A layer wrapped on the instance (as ``viz.trace`` does) or in the other mode than the
    convolution is run by itself: its own forward and backward are called."""
    m = fastcnn.Sequential(L.Conv2D(1, 8, 3, rng=0), L.ReLU(), L.MaxPool2D(2))
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8), dtype=np.float32)
    calls = []
    pool = m[2]
    pool.forward = lambda h, f=pool.forward: calls.append("forward") or f(h)
    pool.backward = lambda g, f=pool.backward: calls.append("backward") or f(g)
    y = m.forward(x)
    m.backward(np.ones_like(y))
    assert calls == ["forward", "backward"]
    del pool.forward, pool.backward
    m[1].eval()  # the ReLU runs by itself, in eval mode: it keeps nothing, so the backward stops there
    y = m.forward(x)
    assert y.shape == (2, 8, 3, 3)
    with pytest.raises(RuntimeError, match="ReLU.backward called before a training-mode forward"):
        m.backward(np.ones_like(y))


def _random_bn(bn, rng):
    bn.running_mean[...] = rng.normal(0, 0.5, bn.num_features)
    bn.running_var[...] = rng.uniform(0.2, 3.0, bn.num_features)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.num_features)
    bn.bias.data[...] = rng.normal(0, 0.3, bn.num_features)


@pytest.mark.parametrize("bias", [True, False])
def test_eval_forward_folds_batch_norm_into_the_conv(backend, bias):
    """Eval mode runs Conv2D + BatchNorm2D (+ ReLU) as one convolution with the folded weights:
    bit for bit ``conv2d(x, *fold_batch_norm(...), relu=True)``, and within float32 rounding of
    the layer-by-layer result (which ``fold_bn=False`` gives bit for bit)."""
    rng = np.random.default_rng(5)
    conv, bn = L.Conv2D(3, 16, 3, 1, 1, bias=bias, rng=1), L.BatchNorm2D(16, eps=1e-3)
    _random_bn(bn, rng)
    m = fastcnn.Sequential(conv, bn, L.ReLU()).eval()
    x = rng.random((4, 3, 9, 11), dtype=np.float32)
    w, b = F.fold_batch_norm(conv.weight.data, None if conv.bias is None else conv.bias.data,
                             bn.running_mean, bn.running_var, bn.weight.data, bn.bias.data, bn.eps)
    folded = m.forward(x)
    np.testing.assert_array_equal(folded, F.conv2d(x, w, b, 1, 1, relu=True))
    plain = np.maximum(bn.forward(conv.forward(x)), 0)
    # Folding rounds each weight once (2^-24 relative) where the plain path rounds the
    # convolution's sum and then three normalisation steps: a few units of float32 rounding of
    # the largest activation (27-term sums, values of order 1).
    np.testing.assert_allclose(folded, plain, rtol=0, atol=1e-6 * max(1.0, np.abs(plain).max()))
    with fastcnn.config(fold_bn=False):
        np.testing.assert_array_equal(m.forward(x), plain)
    with pytest.raises(ValueError, match="eval mode"):
        conv.train().forward(x, batch_norm=bn)
    conv.eval()
    with pytest.raises(ValueError, match="eval-mode BatchNorm2D of 16 features"):
        conv.forward(x, batch_norm=bn.train())
    with pytest.raises(ValueError, match="eval-mode BatchNorm2D of 16 features"):
        conv.forward(x, batch_norm=L.BatchNorm2D(8).eval())


@pytest.mark.parametrize("pool", [dict(kernel_size=2), dict(kernel_size=2, padding=1), dict(kernel_size=3),
                                  dict(kernel_size=2, stride=1), dict(kernel_size=2, padding="same")])
def test_eval_forward_fuses_only_the_plain_2x2_pooling(backend, pool):
    """Conv2D + ReLU + MaxPool2D in eval mode: whatever the pooling's geometry (only 2x2 of
    stride 2 without padding is fused into the convolution), the result is the layers' own,
    bit for bit, on odd sizes too."""
    m = fastcnn.Sequential(L.Conv2D(3, 8, 3, padding=1, rng=0), L.ReLU(), L.MaxPool2D(**pool)).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 7), dtype=np.float32)
    for conv in ("direct", "per_image"):
        with fastcnn.config(conv=conv):
            want = m[2].forward(m[1].forward(m[0].forward(x)))
            got = m.forward(x)
            assert got.shape == want.shape and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("name", ["bn", "resnet"])
def test_eval_logits_with_folded_batch_norms_stay_within_rounding(backend, name):
    """The recipe networks with random batch-norm statistics: folded and unfused logits agree
    to float32 rounding compounded over the layers (observed 1e-6 of the largest logit)."""
    from fastcnn import models

    rng = np.random.default_rng(2)
    m = models.build(name, seed=3)
    bns = [v for _, v in viz.named_leaves(m) if isinstance(v, L.BatchNorm2D)]
    assert len(bns) == (2 if name == "bn" else 15)
    for bn in bns:
        _random_bn(bn, rng)
    m.eval()
    c, s = (3, 32) if name == "resnet" else (1, models.INPUT_SIZE[name])
    x = rng.random((3, c, s, s), dtype=np.float32)
    folded = m.forward(x)
    with fastcnn.config(fold_bn=False):
        plain = m.forward(x)
    np.testing.assert_allclose(folded, plain, rtol=0, atol=1e-5 * np.abs(plain).max())


def test_declared_state_matches_the_layers():
    """The sizes checked before building (model._declared_state) are those the layers build."""
    from fastcnn import layers as L
    from fastcnn import models
    from fastcnn.model import Sequential, _declared_state

    nets = [models.build(n, seed=0) for n in models.NAMES]
    nets.append(Sequential(L.Conv2D(2, 3, (1, 2), bias=False), L.Dense(4, 5, bias=False), L.BatchNorm2D(7)))
    for net in nets:
        got = _declared_state(net.config())
        assert got == {k: (v.shape, v.dtype) for k, v in net.state_dict().items()}


def test_written_files_follow_the_umask_and_keep_an_existing_mode(tmp_path):
    import stat

    from fastcnn.model import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a", lambda f: f.write(b"1"))
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write(tmp_path / "b", lambda f: f.write(b"1"))
        assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o600
        (tmp_path / "a").chmod(0o640)
        atomic_write(tmp_path / "a", lambda f: f.write(b"2"))  # replaced, mode kept
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640
    finally:
        os.umask(old)
