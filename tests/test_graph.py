"""Graph models (fastcnn.graph): finite-difference gradients through branches and merges,
Inception- and DenseNet-like blocks equal to hand-written torch modules, files, errors."""
import numpy as np
import pytest

import fastcnn
from fastcnn import losses
from fastcnn.graph import Add, Concatenate, Input, Model, Multiply
from fastcnn.layers import AvgPool2D, BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU

from conftest import assert_close, needs_torch


# ---------------------------------------------------------------- finite differences
def _smooth_graph(seed=0):
    """Two inputs, a tensor read by three nodes, Add / Multiply / Concatenate, two outputs.
    No ReLU or max pooling, so central differences see no kinks."""
    rng = np.random.default_rng(seed)
    a = Input((2, 6, 6), name="a")
    b = Input((2, 6, 6), name="b")
    c1 = Conv2D(2, 3, 3, padding="same", rng=rng)(a)               # read by three nodes below
    c2 = Conv2D(2, 3, 1, rng=rng)(b)
    s = Add()([c1, c2])
    m = Multiply()([c1, s])
    cat = Concatenate()([m, c1, AvgPool2D(3, 1, padding=1)(c1)])    # 9 channels
    bn = BatchNorm2D(9)(cat)
    head = Dense(9 * 9, 4, rng=rng)(Flatten()(AvgPool2D(2)(bn)))
    side = Flatten()(Conv2D(3, 1, 6, rng=rng)(s))                 # second output (N, 1)
    model = Model([a, b], [head, side])
    # non-trivial affine BatchNorm parameters
    model.nodes[[type(n.layer) for n in model.nodes].index(BatchNorm2D)].layer.weight.data[:] = \
        rng.uniform(0.5, 1.5, 9).astype(np.float32)
    return model


def _objective(model, xs, ws):
    outs = model.forward(xs)
    return sum(float(np.sum(o.astype(np.float64) * w)) for o, w in zip(outs, ws))


def test_gradients_by_finite_differences():
    """Training mode (layers keep their forward caches); BatchNorm's batch statistics make the
    objective a function of the whole batch, which central differences see as well."""
    model = _smooth_graph().train()
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((3, 2, 6, 6)).astype(np.float32) for _ in range(2)]
    outs = model.forward(xs)
    ws = [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
    for p in model.parameters():
        p.grad[...] = 0
    gin = model.backward(ws)
    eps = 1e-2  # float32 forward: rounding / (2 eps) ~ 1e-5, truncation O(eps^2)

    def numeric(arr, idx):
        old = arr[idx]
        arr[idx] = old + eps
        up = _objective(model, xs, ws)
        arr[idx] = old - eps
        down = _objective(model, xs, ws)
        arr[idx] = old
        return (up - down) / (2 * eps)

    for x, g in zip(xs, gin):
        for idx in [tuple(rng.integers(0, s) for s in x.shape) for _ in range(12)]:
            num = numeric(x, idx)
            assert abs(num - g[idx]) <= 2e-3 * max(1.0, abs(g[idx])), (idx, num, g[idx])
    for name, p in model.named_parameters():
        for idx in [tuple(rng.integers(0, s) for s in p.data.shape) for _ in range(4)]:
            num = numeric(p.data, idx)
            assert abs(num - p.grad[idx]) <= 2e-3 * max(1.0, abs(p.grad[idx])), (name, idx, num, p.grad[idx])


def test_gradient_of_a_shared_tensor_is_summed():
    x = Input((3,))
    d = Dense(3, 3, rng=0)
    h = d(x)
    y = Add()([h, h, Multiply()([h, h])])     # y = 2h + h^2  ->  dy/dh = 2 + 2h
    model = Model(x, y)
    xv = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    hv = d.forward(xv)
    model.forward(xv)
    g = model.backward(np.ones((2, 3), np.float32))
    expect = (2 + 2 * hv) @ d.weight.data
    assert_close(g, expect, 1e-6)


# ---------------------------------------------------------------- equal to torch
def _inception(rng):
    x = Input((4, 9, 9))
    b1 = ReLU()(BatchNorm2D(4)(Conv2D(4, 4, 1, rng=rng)(x, name="b1_conv"), name="b1_bn"))
    b2 = ReLU()(Conv2D(4, 3, 1, rng=rng)(x, name="b2_reduce"))
    b2 = ReLU()(Conv2D(3, 5, 3, padding=1, rng=rng)(b2, name="b2_conv"))
    b3 = ReLU()(Conv2D(4, 2, 1, rng=rng)(x, name="b3_reduce"))
    b3 = ReLU()(Conv2D(2, 3, 5, padding="same", rng=rng)(b3, name="b3_conv"))
    b4 = ReLU()(Conv2D(4, 2, 1, rng=rng)(MaxPool2D(3, 1, padding=1)(x), name="b4_proj"))
    cat = Concatenate()([b1, b2, b3, b4])                                  # 14 channels
    short = Conv2D(4, 14, 1, bias=False, rng=rng)(x, name="shortcut")
    y = ReLU()(Add()([cat, short]))
    y = Dense(14 * 9, 5, rng=rng)(Flatten()(AvgPool2D(3)(y)), name="fc")
    return Model(x, y)


def _torch_inception():
    import torch
    from torch import nn

    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.b1_conv, self.b1_bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
            self.b2_reduce, self.b2_conv = nn.Conv2d(4, 3, 1), nn.Conv2d(3, 5, 3, padding=1)
            self.b3_reduce, self.b3_conv = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 3, 5, padding=2)
            self.b4_proj = nn.Conv2d(4, 2, 1)
            self.shortcut = nn.Conv2d(4, 14, 1, bias=False)
            self.fc = nn.Linear(14 * 9, 5)

        def forward(self, x):
            r = torch.relu
            b1 = r(self.b1_bn(self.b1_conv(x)))
            b2 = r(self.b2_conv(r(self.b2_reduce(x))))
            b3 = r(self.b3_conv(r(self.b3_reduce(x))))
            b4 = r(self.b4_proj(nn.functional.max_pool2d(x, 3, 1, 1)))
            y = r(torch.cat([b1, b2, b3, b4], 1) + self.shortcut(x))
            return self.fc(torch.flatten(nn.functional.avg_pool2d(y, 3), 1))

    return Inception()


def _densenet(rng, growth=4):
    x = Input((3, 8, 8))
    feats = Conv2D(3, 6, 3, padding=1, rng=rng)(x, name="stem")
    ch = 6
    for i in range(1, 4):
        h = ReLU()(BatchNorm2D(ch)(feats, name=f"bn{i}"))
        h = Conv2D(ch, growth, 3, padding=1, rng=rng)(h, name=f"conv{i}")
        feats = Concatenate()([feats, h])
        ch += growth
    h = ReLU()(BatchNorm2D(ch)(feats, name="bn_t"))
    h = AvgPool2D(2)(Conv2D(ch, 8, 1, rng=rng)(h, name="conv_t"))
    return Model(x, Dense(8 * 16, 10, rng=rng)(Flatten()(h), name="fc"))


def _torch_densenet(growth=4):
    import torch
    from torch import nn

    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 3, padding=1)
            ch = 6
            for i in range(1, 4):
                setattr(self, f"bn{i}", nn.BatchNorm2d(ch))
                setattr(self, f"conv{i}", nn.Conv2d(ch, growth, 3, padding=1))
                ch += growth
            self.bn_t, self.conv_t, self.fc = nn.BatchNorm2d(ch), nn.Conv2d(ch, 8, 1), nn.Linear(8 * 16, 10)

        def forward(self, x):
            f = self.stem(x)
            for i in range(1, 4):
                h = getattr(self, f"conv{i}")(torch.relu(getattr(self, f"bn{i}")(f)))
                f = torch.cat([f, h], 1)
            h = nn.functional.avg_pool2d(self.conv_t(torch.relu(self.bn_t(f))), 2)
            return self.fc(torch.flatten(h, 1))

    return Dense()


BLOCKS = {"inception": (_inception, _torch_inception, (4, 9, 9), 5),
          "densenet": (_densenet, _torch_densenet, (3, 8, 8), 10)}


@needs_torch
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_equals_torch(backend, name):
    import torch

    build, torch_build, shape, classes = BLOCKS[name]
    model = build(np.random.default_rng(0))
    twin = torch_build()
    # state_dict names are torch's: the hand-written module loads them strictly
    twin.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6,) + shape).astype(np.float32)
    labels = np.arange(6) % classes
    for train in (False, True):
        model.train(train)
        twin.train(train)
        out = model.forward(x)
        tx = torch.tensor(x, requires_grad=True)
        tout = twin(tx)
        assert_close(out, tout.detach().numpy(), 1e-5, what=f"{name} logits (train={train})")
    loss_fn = losses.SoftmaxCrossEntropy()
    for p in model.parameters():
        p.grad[...] = 0
    loss = loss_fn.forward(out, labels)
    gx = model.backward(loss_fn.backward())
    tloss = torch.nn.functional.cross_entropy(tout, torch.tensor(labels))
    tloss.backward()
    assert abs(loss - tloss.item()) <= 1e-5 * abs(tloss.item())
    assert_close(gx, tx.grad.numpy(), 1e-4, atol=1e-7, what="input gradient")
    tparams = dict(twin.named_parameters())
    assert set(tparams) == {n for n, _ in model.named_parameters()}
    for pname, p in model.named_parameters():
        assert_close(p.grad, tparams[pname].grad.numpy(), 2e-4, atol=1e-6, what=pname)
    state = model.state_dict()
    for k, v in twin.state_dict().items():  # running statistics moved identically
        assert_close(state[k], v.numpy(), 1e-5, atol=1e-7, what=k)


def _densenet_loss_curves(steps=20):
    import torch

    model = _densenet(np.random.default_rng(0))
    init = {k: torch.tensor(v) for k, v in model.state_dict().items()}
    rng = np.random.default_rng(4)
    xs = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    ys = rng.integers(0, 10, 64)
    batches = [np.random.default_rng([4, s]).choice(64, 16, replace=False) for s in range(steps)]
    curves = {}
    opt = fastcnn.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = losses.SoftmaxCrossEntropy()
    ours = []
    for idx in batches:
        opt.zero_grad()
        ours.append(loss_fn.forward(model.forward(xs[idx]), ys[idx]))
        model.backward(loss_fn.backward())
        opt.step()
    curves["fastcnn"] = np.array(ours)
    for dtype in (torch.float64, torch.float32):
        twin = _torch_densenet()
        twin.load_state_dict(init)
        twin = twin.to(dtype)
        topt = torch.optim.Adam(twin.parameters(), lr=1e-3)
        out = []
        for idx in batches:
            topt.zero_grad()
            tl = torch.nn.functional.cross_entropy(twin(torch.tensor(xs[idx], dtype=dtype)), torch.tensor(ys[idx]))
            tl.backward()
            topt.step()
            out.append(tl.item())
        curves[str(dtype)] = np.array(out)
    return curves


@needs_torch
def test_densenet_block_follows_torch_loss_curve():
    """20 Adam steps: fastcnn float32 stays as close to torch float64 as torch float32 does."""
    c = _densenet_loss_curves()
    gold = c["torch.float64"]
    ours = np.max(np.abs(c["fastcnn"] - gold) / gold)
    theirs = np.max(np.abs(c["torch.float32"] - gold) / gold)
    assert ours <= max(2 * theirs, 1e-6), f"fastcnn {ours:.2e} vs torch float32 {theirs:.2e} (rel. to float64)"
    assert gold[-3:].mean() < gold[:3].mean()  # it is learning


# ---------------------------------------------------------------- API, files, errors
def test_save_load_npz_and_nesting(tmp_path):
    rng = np.random.default_rng(0)
    inner = _densenet(rng)
    x = Input((3, 8, 8))
    seq = fastcnn.Sequential(Conv2D(3, 3, 1, rng=rng), ReLU())
    y = inner(seq(x, name="pre"), name="dense")                 # Sequential and Model as nodes
    outer = Model(x, [y, Flatten()(x)])
    assert "dense.conv1.weight" in outer.state_dict() and "pre.0.weight" in outer.state_dict()
    outer.eval()
    xv = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = outer.forward(xv)
    outer.save(tmp_path / "g.npz", metadata={"k": 1})
    back, meta = fastcnn.load(tmp_path / "g.npz", return_metadata=True)
    assert meta == {"k": 1} and isinstance(back, Model)
    got = back.eval().forward(xv)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    wrapped = fastcnn.Sequential(back, )  # a Model inside a Sequential
    assert set(wrapped.state_dict()) == {"0." + k for k in back.state_dict()}


def test_train_eval_and_predict():
    model = _densenet(np.random.default_rng(0))
    model.eval()
    assert all(not n.layer.training for n in model.nodes)
    model.train()
    assert all(n.layer.training for n in model.nodes)
    x = np.random.default_rng(1).standard_normal((10, 3, 8, 8)).astype(np.float32)
    p = model.predict_proba(x, batch_size=3)
    assert model.training  # mode restored
    assert p.shape == (10, 10) and np.allclose(p.sum(1), 1, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x, batch_size=4), p.argmax(1))
    assert_close(p, fastcnn.predict.softmax(model.eval().forward(x)), 1e-6)


def test_needs_input_grad_false_skips_the_input_gradient():
    model = _inception(np.random.default_rng(0))
    model.needs_input_grad = False
    out = model.forward(np.zeros((2, 4, 9, 9), np.float32))
    assert model.backward(np.ones_like(out)) is None


def test_errors():
    x = Input((2, 4, 4))
    conv = Conv2D(2, 2, 1)
    h = conv(x)
    with pytest.raises(ValueError, match="more than one node"):
        Model(x, conv(h))
    with pytest.raises(ValueError, match="used twice"):
        Model(x, ReLU()(ReLU()(x, name="r"), name="r"))
    with pytest.raises(ValueError, match="identifier"):
        ReLU()(x, name="a.b")
    with pytest.raises(ValueError, match="not among the model's inputs"):
        Model(Input((2, 4, 4)), h)
    with pytest.raises(ValueError, match="Concatenate"):
        Concatenate()([x, Input((2, 5, 4))])
    with pytest.raises(ValueError, match="equal shapes"):
        Add()([x, Input((3, 4, 4))])
    with pytest.raises(ValueError, match="Conv2D cannot take input of shape .2, 4, 4.*channels"):
        Conv2D(3, 2, 1)(x)
    m = Model(x, h)
    with pytest.raises(ValueError, match="shape"):
        m.forward(np.zeros((1, 2, 5, 4), np.float32))
    with pytest.raises(KeyError, match="missing"):
        m.load_state_dict({})
