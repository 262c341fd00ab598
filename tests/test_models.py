"""The seed networks (``fastcnn.models``): logits and gradients against their torch twins;
they build, run and learn."""
import numpy as np
import pytest

from fastcnn import losses, models, optim

from utils import assert_close, needs_torch, torch_twin


@needs_torch
@pytest.mark.parametrize("name", ["scratch", "lenet", "bn"])
def test_model_logits_and_gradients_match_torch(backend, conv_path, name):
    import torch

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


def test_resnet_builds_and_runs():
    model = models.build("resnet", seed=0, in_channels=1)
    x = np.random.default_rng(11).random((2, 1, 32, 32), dtype=np.float32)
    y = model.forward(x)
    assert y.shape == (2, 10)
    gx = model.backward(np.ones_like(y))
    assert gx.shape == x.shape and np.all(np.isfinite(gx))
