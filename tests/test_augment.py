"""fastcnn.augment: each transform against a per-image loop (and torch for resizing)."""
import timeit

import numpy as np
import pytest

from fastcnn import augment, models
from fastcnn.train import recipe_step

from utils import needs_torch


def _imgs(n=6, c=3, h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def test_random_crop_equals_per_image_loop():
    x = _imgs().astype(np.float32)
    crop = augment.RandomCrop(32, 4)
    y = crop(x, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    top, left = rng.integers(0, 9, 6), rng.integers(0, 9, 6)
    for i in range(6):
        padded = np.zeros((3, 40, 40), np.float32)
        padded[:, 4:36, 4:36] = x[i]
        np.testing.assert_array_equal(y[i], padded[:, top[i]:top[i] + 32, left[i]:left[i] + 32])
    # every offset 0..8 occurs and the crops differ between images
    many = crop(np.ones((2000, 1, 32, 32), np.float32), np.random.default_rng(1))
    zero_rows = (many[:, 0, :, 16] == 0).sum(axis=1)  # rows of padding seen in column 16
    assert set(np.unique(zero_rows)) == set(range(5))


def test_flip_equals_per_image_loop():
    x = _imgs().astype(np.float32)
    y = augment.HorizontalFlip(0.5)(x.copy(), np.random.default_rng(2))
    flips = np.random.default_rng(2).random(6) < 0.5
    assert 0 < flips.sum() < 6
    for i in range(6):
        np.testing.assert_array_equal(y[i], x[i, :, :, ::-1] if flips[i] else x[i])


@needs_torch
def test_resize_matches_torch_bilinear():
    """Enlarging 32 -> 40 equals torch's bilinear (align_corners=False, as PIL's when enlarging)."""
    import torch

    x = _imgs().astype(np.float32) / 255
    y = augment.Resize(40)(x)
    want = torch.nn.functional.interpolate(torch.tensor(x), size=(40, 40), mode="bilinear", align_corners=False)
    # float32, two separable passes of 2-tap sums in a different order: a few ulps of 1
    np.testing.assert_allclose(y, want.numpy(), atol=3e-6)


def test_pipeline_scales_normalises_and_is_seeded():
    x = _imgs()
    pipe = augment.from_name("tutorial", mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    a = pipe(x, np.random.default_rng([0, 1, 2, 1]))
    b = pipe(x, np.random.default_rng([0, 1, 2, 1]))
    c = pipe(x, np.random.default_rng([0, 1, 3, 1]))
    assert a.dtype == np.float32 and a.shape == (6, 3, 32, 32) and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    e = pipe.eval(x)
    want = (x / np.float32(255) - np.array([0.5, 0.4, 0.3], np.float32)[:, None, None]) \
        / np.array([0.2, 0.25, 0.3], np.float32)[:, None, None]
    np.testing.assert_allclose(e, want, rtol=1e-6, atol=1e-6)
    again = augment.Pipeline.from_config(pipe.config())
    np.testing.assert_array_equal(again(x, np.random.default_rng([0, 1, 2, 1])), a)


def test_pipeline_pads_mnist_for_resnet_and_rejects_bad_input():
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    y = augment.Pipeline(input_size=32).eval(x)
    assert y.shape == (3, 1, 32, 32)
    np.testing.assert_array_equal(y[:, 0, 2:30, 2:30], x / np.float32(255))
    with pytest.raises(TypeError, match="uint8"):
        augment.Pipeline().eval(x.astype(np.float32))
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment.from_name("mixup")
    with pytest.raises(ValueError, match="channel means"):
        augment.Pipeline(mean=[0.5], std=[0.5]).eval(_imgs())


def test_channel_stats():
    x = _imgs(50)
    mean, std = augment.channel_stats(x)
    np.testing.assert_allclose(mean, (x / 255).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, (x / 255).std(axis=(0, 2, 3)), rtol=1e-12)


def test_augmentation_costs_under_5_percent_of_a_resnet_step():
    """The issue's budget, measured on this machine: best of several runs of each."""
    x = _imgs(100)
    y = np.random.default_rng(0).integers(0, 10, 100)
    pipe = augment.from_name("tutorial")
    _, step = recipe_step("resnet")
    batch = pipe(x, np.random.default_rng(0))
    step(batch, y)  # warm up

    def best(fn, n):
        return min(timeit.repeat(fn, number=1, repeat=n))

    t_aug = best(lambda: pipe(x, np.random.default_rng(1)), 20)
    t_step = best(lambda: step(batch, y), 3)
    assert t_aug < 0.05 * t_step, f"augmentation {t_aug * 1e3:.2f} ms vs step {t_step * 1e3:.1f} ms"
    assert models.INPUT_SIZE["resnet"] == 32
