"""``Sequential`` and checkpoint files (``fastcnn.model``): save/load round trips, refusal of
pickles and foreign files, atomic writes, the declared state; Conv2D + ReLU fusion in eval mode."""
import os

import numpy as np
import pytest

import fastcnn
from fastcnn import layers as L
from fastcnn import models


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
