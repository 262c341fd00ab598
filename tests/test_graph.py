"""Graph models (fastcnn.graph): finite-difference gradients through branches and merges,
Inception- and DenseNet-like blocks equal to hand-written torch modules, files, errors."""
import numpy as np
import pytest

import fastcnn
from fastcnn import losses
from fastcnn.graph import Add, Concatenate, Input, Model, Multiply
from fastcnn.layers import Conv2D, Dense, Flatten, ReLU

from utils import assert_close, densenet, inception, needs_torch, smooth_graph, torch_densenet, torch_inception

# ---------------------------------------------------------------- finite differences


def _objective(model, xs, ws):
    outs = model.forward(xs)
    return sum(float(np.sum(o.astype(np.float64) * w)) for o, w in zip(outs, ws))


def test_gradients_by_finite_differences():
    """Training mode (layers keep their forward caches); BatchNorm's batch statistics make the
    objective a function of the whole batch, which central differences see as well."""
    model = smooth_graph().train()
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


BLOCKS = {"inception": (inception, torch_inception, (4, 9, 9), 5),
          "densenet": (densenet, torch_densenet, (3, 8, 8), 10)}


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

    model = densenet(np.random.default_rng(0))
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
        twin = torch_densenet()
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
    inner = densenet(rng)
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
    model = densenet(np.random.default_rng(0))
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
    model = inception(np.random.default_rng(0))
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
