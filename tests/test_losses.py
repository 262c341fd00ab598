"""Losses (``fastcnn.losses``) against PyTorch."""
import numpy as np

from fastcnn import losses

from utils import assert_close, needs_torch


@needs_torch
def test_mse_matches_torch():
    import torch

    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((4, 7)).astype(np.float32), rng.standard_normal((4, 7)).astype(np.float32)
    ta = torch.tensor(a, requires_grad=True)
    tl = torch.nn.functional.mse_loss(ta, torch.tensor(b))
    tl.backward()
    mse = losses.MSE()
    assert abs(mse.forward(a, b) - tl.item()) <= 1e-6 * tl.item()
    assert_close(mse.backward(), ta.grad.numpy(), 1e-6)
