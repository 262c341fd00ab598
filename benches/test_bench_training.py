"""Whole training steps and inference of the seed networks: fastcnn backends vs PyTorch, and
the seed's naive per-image NumPy loops."""
import numpy as np
import pytest

from fastcnn import models
from fastcnn.train import recipe_step

from naive_seed import NaiveScratchNet
from utils import COMPILED, HAVE_TORCH, rng

TRAIN_IMPLS = COMPILED + (("torch",) if HAVE_TORCH else ())
STEPS = {"lenet": 4, "bn": 8, "scratch": 200}  # steps per benchmark round


def _batches(name, steps):
    bs = models.RECIPES[name]["batch_size"]
    r = rng(2)
    return [(r.random((bs, 1, 28, 28), dtype=np.float32), r.integers(0, 10, bs)) for _ in range(steps)]


def _fastcnn_trainer(name):
    return recipe_step(name, seed=0)


def _torch_trainer(name):
    import torch

    from fastcnn.interop import to_torch

    recipe = models.RECIPES[name]
    twin = to_torch(models.build(name, seed=0))
    opt = (torch.optim.SGD(twin.parameters(), lr=recipe["lr"]) if recipe["optimizer"] == "sgd"
           else torch.optim.Adam(twin.parameters(), lr=recipe["lr"]))

    def step(x, y):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(twin(x), y)
        loss.backward()
        opt.step()
        return loss

    return twin, step


@pytest.mark.parametrize("impl", TRAIN_IMPLS)
@pytest.mark.parametrize("name", ["lenet", "bn", "scratch"])
def test_train_steps(benchmark, use_backend, impl, name):
    batches = _batches(name, STEPS[name])
    images = sum(len(y) for _, y in batches)
    benchmark.group = f"train {name} (batch {models.RECIPES[name]['batch_size']}, {images} images per round)"
    benchmark.extra_info["images_per_round"] = images
    use_backend(impl)
    if impl == "torch":
        import torch

        batches = [(torch.tensor(x), torch.tensor(y)) for x, y in batches]
        _, step = _torch_trainer(name)
    else:
        _, step = _fastcnn_trainer(name)

    def run():
        for x, y in batches:
            step(x, y)

    run()  # warm-up: compile, allocate
    benchmark(run)


def test_train_scratch_naive_seed_loops(benchmark):
    """The seed tutorial's per-image Python loops (the naive baseline)."""
    batches = _batches("scratch", 20)
    net = NaiveScratchNet()
    benchmark.group = "train scratch naive (20 images per round)"
    benchmark.extra_info["images_per_round"] = 20

    def run():
        for x, y in batches:
            net.train_step(x[0, 0], int(y[0]))

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("impl", COMPILED + (("torch",) if HAVE_TORCH else ()))
@pytest.mark.parametrize("name", ["lenet", "bn"])
def test_inference(benchmark, use_backend, impl, name):
    x = rng(3).random((1000, 1, 28, 28), dtype=np.float32)
    benchmark.group = f"inference {name} (batch 1000)"
    benchmark.extra_info["images_per_round"] = 1000
    use_backend(impl)
    if impl == "torch":
        import torch

        from fastcnn.interop import to_torch

        twin = to_torch(models.build(name, seed=0)).eval()
        tx = torch.tensor(x)

        def run():
            with torch.no_grad():
                return twin(tx)
    else:
        model = models.build(name, seed=0).eval()

        def run():
            return model.forward(x)

    run()
    benchmark(run)
