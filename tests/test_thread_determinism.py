"""Training is bit-identical at 1 and at 2 threads: every reduction (convolutions, dense
layers, batch norm, the loss) has an order that does not depend on the thread count.  At a
fixed thread count every backend trains bit-identically run to run, and its logits stay close
across thread counts."""
import numpy as np
import pytest

import fastcnn
from fastcnn import models
from fastcnn.train import recipe_step

from utils import COMPILED, cores


def _train(name, backend, threads, steps=3):
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(threads)
    model, step = recipe_step(name, seed=1)
    batch = models.RECIPES[name]["batch_size"]
    size = models.INPUT_SIZE[name]
    channels = 3 if name == "resnet" else 1
    rng = np.random.default_rng(5)
    for _ in range(steps):
        x = rng.random((batch, channels, size, size), dtype=np.float32)
        y = rng.integers(0, 10, batch)
        step(x, y)
    return {k: v.copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("name", ["lenet", "bn", "resnet"])
def test_training_bit_identical_at_1_and_2_threads(name, backend):
    if cores() < 2:
        pytest.skip("needs 2 cores")
    before_b, before_t = fastcnn.get_backend(), fastcnn.get_num_threads()
    try:
        one = _train(name, backend, 1)
        two = _train(name, backend, 2)
    finally:
        fastcnn.set_backend(before_b)
        fastcnn.set_num_threads(before_t)
    assert one.keys() == two.keys()
    differ = [k for k in one if one[k].tobytes() != two[k].tobytes()]
    assert not differ, f"{name}/{backend}: parameters differ between 1 and 2 threads: {differ}"


def _train_weights(name, backend, threads, steps=6):
    from fastcnn import losses, models
    from fastcnn.train import make_optimizer

    before_b, before_t = fastcnn.get_backend(), fastcnn.get_num_threads()
    fastcnn.set_backend(backend)
    fastcnn.set_num_threads(threads)
    try:
        recipe = models.RECIPES[name]
        model = models.build(name, seed=0)
        opt = make_optimizer(recipe["optimizer"], model.parameters(), recipe["lr"])
        loss_fn = losses.SoftmaxCrossEntropy()
        rng = np.random.default_rng(5)
        for _ in range(steps):
            x = rng.random((32, 1, 28, 28), dtype=np.float32)
            y = rng.integers(0, 10, 32)
            opt.zero_grad()
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
        model.train()  # batch statistics: a conv bias before BatchNorm cancels out
        logits = model.forward(np.random.default_rng(6).random((16, 1, 28, 28), dtype=np.float32))
        return model.state_dict(), logits
    finally:
        fastcnn.set_backend(before_b)
        fastcnn.set_num_threads(before_t)


@pytest.mark.parametrize("name", ["bn", "lenet"])
def test_training_is_bit_identical_at_fixed_threads_and_close_across_threads(backend, name):
    """Same seed, backend and threads: identical bytes.  Another thread count changes BLAS's
    summation order, so weights differ by rounding; Adam turns rounding noise in a gradient
    whose true value is 0 (a conv bias before BatchNorm) into steps of size lr, so the check
    across thread counts is on what the network computes: its logits."""
    top = cores()
    (a, la), (b, lb) = _train_weights(name, backend, top), _train_weights(name, backend, top)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    assert la.tobytes() == lb.tobytes()
    if top > 1:
        _, lc = _train_weights(name, backend, 1)
        assert float(np.max(np.abs(la.astype(np.float64) - lc))) <= 1e-3 * float(np.max(np.abs(la)))
