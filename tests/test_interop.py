"""PyTorch interoperability (``fastcnn.interop``): a torch state dict loads as is."""
import numpy as np

from fastcnn import models

from utils import needs_torch, to_numpy_state, torch_twin


@needs_torch
def test_torch_state_dict_loads_as_is():
    import torch

    model = models.build("bn", seed=1)
    twin = torch_twin(models.build("bn", seed=2))  # different weights
    with torch.no_grad():
        twin(torch.rand(4, 1, 28, 28))  # move running stats
    model.load_state_dict(to_numpy_state(twin))
    model.eval()
    twin.eval()
    x = np.random.default_rng(6).random((3, 1, 28, 28), dtype=np.float32)
    assert np.max(np.abs(model.forward(x) - twin(torch.tensor(x)).detach().numpy())) <= 1e-5
