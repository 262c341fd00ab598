"""fastcnn.TrainStep: bit for bit the layer API's step, bound or not, and its checks."""
import threading

import numpy as np
import pytest

import fastcnn
from fastcnn import losses, models, optim
from fastcnn.layers import (
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    ReLU,
    Sequential,
    Tanh,
)

from utils import rng


def _net(kind, seed=0):
    """Small networks covering the bound forms: fused ReLU / pooling or not, stride, padding,
    bias or not, layers without a bound form between bound ones."""
    g = np.random.default_rng(seed)
    if kind == "scratch":
        return models.build("scratch", seed=seed), (1, 28, 28)
    if kind == "lenetish":  # conv-relu-pool twice, dense-relu-dense
        return Sequential(Conv2D(1, 6, 5, padding=2, rng=g), ReLU(), MaxPool2D(2), Conv2D(6, 16, 5, rng=g), ReLU(),
                          MaxPool2D(2), Flatten(), Dense(16 * 2 * 2, 12, rng=g), ReLU(),
                          Dense(12, 10, rng=g)), (1, 17, 17)
    if kind == "strided":  # stride 2, padding 1, bias, ReLU without pooling; odd sizes
        return Sequential(Conv2D(3, 5, 3, stride=2, padding=1, rng=g), ReLU(), Conv2D(5, 4, 3, bias=False, rng=g),
                          Flatten(), Dense(4 * 4 * 3, 10, bias=False, rng=g)), (3, 11, 9)
    if kind == "unfused":  # a pooling that does not fuse (3x3), Tanh and Dropout between bound layers
        return Sequential(Conv2D(2, 4, 3, padding="same", rng=g), MaxPool2D(3), Tanh(), Flatten(),
                          Dropout(0.25, seed=3), Dense(4 * 3 * 3, 10, rng=g)), (2, 10, 10)
    if kind == "mlp":
        return Sequential(Flatten(), Dense(36, 16, rng=g), ReLU(), Dense(16, 10, rng=g)), (1, 6, 6)
    raise ValueError(kind)


def _opt(name, params):
    if name == "sgd":
        return optim.SGD(params, 0.05)
    if name == "momentum":
        return optim.SGD(params, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    return optim.Adam(params, 1e-2)


def _layer_step(model, loss_fn, opt, x, y):
    """The step as the layer API's calls (the oracle)."""
    opt.zero_grad()
    loss = loss_fn.forward(model.forward(x), y)
    model.backward(loss_fn.backward())
    opt.step()
    return loss


def _twins(kind, opt="sgd", first_grad=False, seed=0):
    """Two identical networks, one trained by layer calls, one by a TrainStep."""
    out = []
    for _ in range(2):
        model, shape = _net(kind, seed)
        model.needs_input_grad = first_grad
        out.append((model, losses.SoftmaxCrossEntropy(), _opt(opt, model.parameters())))
    (m1, l1, o1), (m2, l2, o2) = out
    return (m1, l1, o1), fastcnn.TrainStep(m2, l2, o2), shape


def _same(m1, m2):
    for (name, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert a.tobytes() == b.tobytes(), name
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert p.grad.tobytes() == q.grad.tobytes()


def _batch(shape, n, seed):
    g = rng(seed)
    return g.random((n, *shape), dtype=np.float32), g.integers(0, 10, n)


@pytest.mark.parametrize("kind", ["scratch", "lenetish", "strided", "unfused", "mlp"])
@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_bound_step_is_the_layer_step(backend, kind, opt):
    """Loss, weights, gradients and optimizer state bit for bit those of the layer calls,
    over batches of 1, 3 and 1 again (plans remade for each shape), and the step ran bound."""
    (m1, l1, o1), step, shape = _twins(kind, opt)
    for i, n in enumerate((1, 1, 3, 3, 1)):
        x, y = _batch(shape, n, i)
        a = _layer_step(m1, l1, o1, x, y)
        b = step(x, y)
        assert step.bound
        assert a == b
        assert step.logits.shape == (n, 10)
        _same(m1, step.model)
    for (k, a), b in zip(o1.state_dict().items(), step.optimizer.state_dict().values()):
        assert np.array_equal(a, b), k


@pytest.mark.parametrize("kind", ["scratch", "lenetish", "strided"])
def test_bound_step_on_every_strategy(compiled, conv_path, kind):
    """Each convolution strategy (direct kernels, one-image GEMM, per image, chunked, Winograd)
    through the bound step, the first layer's input gradient computed too."""
    (m1, l1, o1), step, shape = _twins(kind, "momentum", first_grad=True)
    for i, n in enumerate((1, 2, 1)):
        x, y = _batch(shape, n, 10 + i)
        assert _layer_step(m1, l1, o1, x, y) == step(x, y)
        assert step.bound
        _same(m1, step.model)


def test_settings_backend_and_threads_changed_between_steps(compiled):
    (m1, l1, o1), step, shape = _twins("lenetish", "adam")
    threads = fastcnn.get_num_threads()
    try:
        for i, (conv, t) in enumerate([("auto", 1), ("per_image", 1), ("direct", 2), ("chunked", 2), ("auto", 2)]):
            fastcnn.set_num_threads(min(t, threads))
            with fastcnn.config(conv=conv):
                x, y = _batch(shape, 2, 20 + i)
                assert _layer_step(m1, l1, o1, x, y) == step(x, y)
            _same(m1, step.model)
        fastcnn.set_backend("numpy")  # (the other backend, between two steps)
        x, y = _batch(shape, 2, 30)
        assert _layer_step(m1, l1, o1, x, y) == step(x, y)
        _same(m1, step.model)
    finally:
        fastcnn.set_num_threads(threads)


def test_unfused_setting_and_changed_layers():
    """``config(fuse=False)`` runs every layer by itself; a layer appended, a weight array
    replaced or a state dict loaded between steps is seen by the next step."""
    (m1, l1, o1), step, shape = _twins("lenetish", "sgd")
    x, y = _batch(shape, 2, 40)
    with fastcnn.config(fuse=False):
        assert _layer_step(m1, l1, o1, x, y) == step(x, y)
    assert step.bound
    _same(m1, step.model)
    for m in (m1, step.model):  # replaced arrays (the same values, then new ones)
        m.layers[0].weight.data = m.layers[0].weight.data.copy()
        m.layers[0].weight.data *= np.float32(0.5)
        m.layers[-1].bias.data = np.ascontiguousarray(m.layers[-1].bias.data[::-1])
    assert _layer_step(m1, l1, o1, x, y) == step(x, y)
    _same(m1, step.model)
    state = {k: v * np.float32(0.9) for k, v in m1.state_dict().items()}
    m1.load_state_dict(state)
    step.model.load_state_dict(state)
    assert _layer_step(m1, l1, o1, x, y) == step(x, y)
    _same(m1, step.model)
    for m in (m1, step.model):
        m.layers.append(ReLU())
    assert _layer_step(m1, l1, o1, x, y) == step(x, y)
    assert step.bound
    _same(m1, step.model)


def test_models_it_does_not_bind_run_the_layer_step():
    """Batch norm, residual blocks, eval mode, graph models, hooked layers: unbound, same bytes."""
    g = np.random.default_rng(0)
    nets = [lambda: Sequential(Conv2D(1, 4, 3, rng=np.random.default_rng(1)), BatchNorm2D(4), ReLU(), Flatten(),
                               Dense(4 * 6 * 6, 10, rng=np.random.default_rng(2))),
            lambda: models.build("resnet", seed=0, in_channels=1)]
    for build in nets:
        pair = []
        for _ in range(2):
            m = build()
            pair.append((m, losses.SoftmaxCrossEntropy(), optim.Adam(m.parameters(), 1e-2)))
        (m1, l1, o1), step = pair[0], fastcnn.TrainStep(*pair[1])
        size = 32 if len(m1.layers) > 6 else 8
        x, y = g.random((2, 1, size, size), dtype=np.float32), g.integers(0, 10, 2)
        for _ in range(2):
            assert _layer_step(m1, l1, o1, x, y) == step(x, y)
            assert not step.bound
        _same(m1, step.model)
    # a hooked layer (its forward wrapped on the instance): unbound while wrapped
    (m1, l1, o1), step, shape = _twins("scratch")
    x, y = _batch(shape, 1, 50)
    assert _layer_step(m1, l1, o1, x, y) == step(x, y)
    assert step.bound
    layer = step.model.layers[2]
    layer.forward = lambda v, _f=layer.forward: _f(v)
    assert _layer_step(m1, l1, o1, x, y) == step(x, y)
    assert not step.bound
    del layer.forward
    assert _layer_step(m1, l1, o1, x, y) == step(x, y)
    assert step.bound
    _same(m1, step.model)


def test_other_losses_and_a_split_step():
    """A loss without a bound form (MSE on one-hot targets) and forward/backward called apart."""
    (m1, _, o1), step, shape = _twins("mlp")
    step.loss_fn = losses.MSE()
    l1 = losses.MSE()
    x, _ = _batch(shape, 3, 60)
    t = np.eye(10, dtype=np.float32)[[1, 4, 7]]
    o1.zero_grad()
    a = l1.forward(m1.forward(x), t)
    m1.backward(l1.backward())
    step.optimizer.zero_grad()
    b = step.forward(x, t)
    step.backward()
    assert step.bound and a == b
    _same(m1, step.model)


def test_float64_input_is_converted_as_by_the_layers():
    (m1, l1, o1), step, shape = _twins("scratch")
    x, y = _batch(shape, 1, 70)
    assert _layer_step(m1, l1, o1, x.astype(np.float64), y) == step(x.astype(np.float64), y)
    assert _layer_step(m1, l1, o1, x, y) == step(x, y)
    _same(m1, step.model)


def test_bad_input_names_what_is_wrong():
    _, step, shape = _twins("lenetish")
    x, y = _batch(shape, 2, 80)
    step(x, y)
    with pytest.raises(ValueError, match="input has 3 channels"):
        step(np.zeros((2, 3, 17, 17), np.float32), y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        step(x, np.array([0, 10]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        step(x, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="input must be a floating array"):
        step("images", y)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        step.backward()
    with pytest.raises(TypeError, match="loss_fn needs forward and backward"):
        fastcnn.TrainStep(step.model, object(), step.optimizer)
    with pytest.raises(TypeError, match="model must be a fastcnn layer"):
        fastcnn.TrainStep(object(), losses.SoftmaxCrossEntropy(), step.optimizer)
    step(x, y)  # (still usable)
    assert step.bound


def test_one_step_at_a_time():
    """A second thread calling the step while the first is inside it gets a RuntimeError."""
    inside, release = threading.Event(), threading.Event()

    class SlowLoss(losses.SoftmaxCrossEntropy):
        def forward(self, logits, labels):
            inside.set()
            release.wait(10)
            return super().forward(logits, labels)

    model, shape = _net("scratch")
    step = fastcnn.TrainStep(model, SlowLoss(), optim.SGD(model.parameters(), 0.1))
    x, y = _batch(shape, 1, 90)
    errors = []
    t = threading.Thread(target=lambda: step(x, y))
    t.start()
    assert inside.wait(10)
    try:
        step(x, y)
    except RuntimeError as exc:
        errors.append(str(exc))
    release.set()
    t.join(10)
    assert errors and "another thread is inside this step" in errors[0]
    assert np.isfinite(step(x, y))


def test_a_gradient_array_sharing_the_weights_memory_is_refused():
    """A weight gradient assigned as a view of the weights: refused as by the layers, not overwritten."""
    (m1, l1, o1), step, shape = _twins("mlp")
    x, y = _batch(shape, 1, 95)
    step(x, y)
    for model, run in ((m1, lambda: _layer_step(m1, l1, o1, x, y)), (step.model, lambda: step(x, y))):
        dense = model.layers[-1]
        dense.weight.grad = dense.weight.data
        before = dense.weight.data.copy()
        with pytest.raises(ValueError, match="weight_grad_out must be"):
            run()
        assert np.array_equal(dense.weight.data, before)


def test_a_conv_gradient_array_sharing_the_weights_memory_gives_the_layers_bytes():
    """A convolution's weight gradient assigned as its weights' own array (the layers then copy
    the gradient over the weights after the input gradient read them): the same bytes."""
    (m1, l1, o1), step, shape = _twins("strided")
    for i in range(2):
        for m in (m1, step.model):
            conv = m.layers[2]  # (its input gradient computed, on the one-image GEMM at batch 1)
            conv.weight.grad = conv.weight.data
        x, y = _batch(shape, 1, 97 + i)
        assert _layer_step(m1, l1, o1, x, y) == step(x, y)
        assert step.bound
        for (name, a), b in zip(m1.state_dict().items(), step.model.state_dict().values()):
            assert a.tobytes() == b.tobytes(), name


def test_input_gradient_switched_between_steps(compiled):
    """A layer's ``needs_input_grad`` changed between steps: the plan follows it (the strategy of
    a convolution's backward may depend on it; here 16 -> 16 3x3: direct without, Winograd with)."""
    def build():
        g = np.random.default_rng(5)
        return Sequential(Conv2D(3, 16, 3, padding=1, rng=g), ReLU(), Conv2D(16, 16, 3, padding=1, rng=g), ReLU(),
                          MaxPool2D(2), Flatten(), Dense(16 * 4 * 4, 10, rng=g))
    m1, m2 = build(), build()
    l1, o1 = losses.SoftmaxCrossEntropy(), optim.SGD(m1.parameters(), 0.05)
    step = fastcnn.TrainStep(m2, losses.SoftmaxCrossEntropy(), optim.SGD(m2.parameters(), 0.05))
    for i, flag in enumerate((False, True, False, True)):
        for m in (m1, m2):
            m.layers[2].needs_input_grad = flag
        x, y = _batch((3, 8, 8), 4, 120 + i)
        assert _layer_step(m1, l1, o1, x, y) == step(x, y)
        assert step.bound
        _same(m1, m2)


def test_layer_arguments_changed_between_steps():
    """A convolution's padding and stride, and a pooling's stride (which decides whether it
    fuses), changed between steps: the next step follows them, as the layer calls do."""
    def build():
        g = np.random.default_rng(7)
        return Sequential(Conv2D(2, 4, 3, padding=1, rng=g), ReLU(), MaxPool2D(2), GlobalAvgPool2D(), Flatten(),
                          Dense(4, 10, rng=g))
    m1, m2 = build(), build()
    l1, o1 = losses.SoftmaxCrossEntropy(), optim.SGD(m1.parameters(), 0.05)
    step = fastcnn.TrainStep(m2, losses.SoftmaxCrossEntropy(), optim.SGD(m2.parameters(), 0.05))
    changes = [lambda m: None, lambda m: setattr(m.layers[0], "padding", (0, 0)),
               lambda m: setattr(m.layers[0], "stride", (2, 1)), lambda m: setattr(m.layers[2], "stride", (1, 1)),
               lambda m: setattr(m.layers[2], "stride", (2, 2))]
    for i, change in enumerate(changes):
        change(m1)
        change(m2)
        x, y = _batch((2, 9, 9), 2, 130 + i)
        assert _layer_step(m1, l1, o1, x, y) == step(x, y)
        assert step.bound
        _same(m1, m2)
