"""fastcnn.summary: the tutorial's counting formulas, and torchinfo on the torch twin."""
import numpy as np
import pytest

import fastcnn
from fastcnn import layers as L
from fastcnn import models, summary

from utils import NEUTRAL_CWD, needs_torch

SHAPES = {"scratch": (1, 28, 28), "lenet": (1, 28, 28), "bn": (1, 28, 28), "resnet": (3, 32, 32)}


def tutorial_conv(i, j, m, n, k, l):  # noqa: E741  (the tutorial's letters)
    """MACs and parameters of a K-in, L-out convolution, I x J kernel, M x N output."""
    return i * j * m * n * k * l, i * j * k * l


def test_tutorial_formulas_scratch_and_lenet():
    s = summary(models.build("scratch"), (1, 28, 28))
    conv = s.rows[0]
    assert conv.shape == (8, 26, 26)
    assert (conv.macs, conv.params) == tutorial_conv(3, 3, 26, 26, 1, 8)  # no bias: exactly the formula
    assert s.rows[1].shape == (8, 13, 13) and s.rows[2].shape == (1352,)
    assert (s.rows[3].params, s.rows[3].macs) == (1352 * 10 + 10, 1352 * 10 + 10)
    s = summary(models.build("lenet"), (1, 28, 28))
    c1, c2 = s.rows[0], s.rows[3]
    macs, params = tutorial_conv(5, 5, 28, 28, 1, 32)
    assert c1.shape == (32, 28, 28) and c1.params == params + 32 and c1.macs == macs + 32 * 28 * 28
    macs, params = tutorial_conv(5, 5, 14, 14, 32, 64)
    assert c2.shape == (64, 14, 14) and c2.params == params + 64 and c2.macs == macs + 64 * 14 * 14
    assert s.total_params == sum(p.data.size for p in models.build("lenet").parameters())


def test_nested_rows_and_batch():
    s = summary(models.build("resnet"), (100, 3, 32, 32))
    assert s.batch_size == 100 and s.macs_per_batch == 100 * s.macs
    assert s.output_shape == (10,)
    names = [r.name for r in s.rows]
    assert "5.shortcut.0" in names and "5.body.3" in names
    block = s.rows[names.index("5")]
    assert not block.leaf and block.depth == 0
    inner = [r for r in s.rows if r.leaf and r.name.startswith("5.")]
    assert block.params == sum(r.params for r in inner) and block.macs == sum(r.macs for r in inner)
    assert s.rows[names.index("5.shortcut.0")].depth == 2
    text = str(s)
    assert "    5.shortcut.0 Conv2D" in text  # indented by depth
    assert s.non_trainable_state == sum(v.size for k, v in models.build("resnet").state_dict().items()
                                        if k.endswith(("running_mean", "running_var")))
    # activation memory: float32 outputs of every leaf (incl. each block's final ReLU)
    assert s.activation_bytes == 4 * sum(int(np.prod(r.shape)) for r in s.rows if r.leaf)


def test_shapes_match_a_forward_pass():
    model = models.build("bn").eval()
    s = summary(model, (1, 28, 28))
    x = np.zeros((2, 1, 28, 28), np.float32)
    for layer, row in zip(model, [r for r in s.rows if r.leaf]):
        x = layer.forward(x)
        assert x.shape[1:] == row.shape, row.name


def test_bad_input_shape_is_named():
    with pytest.raises(ValueError, match="Conv2D expects"):
        summary(models.build("lenet"), (3, 28, 28))
    with pytest.raises(ValueError, match="Dense expects"):
        summary(models.build("lenet"), (1, 32, 32))
    with pytest.raises(ValueError, match="input_shape"):
        summary(models.build("lenet"), (28, 28))
    with pytest.raises(TypeError, match="fastcnn layer"):
        summary(object(), (1, 28, 28))


@needs_torch
@pytest.mark.parametrize("name", ["lenet", "bn", "scratch", "resnet"])
def test_totals_equal_torchinfo(name):
    torchinfo = pytest.importorskip("torchinfo")
    import torch

    from fastcnn.interop import to_torch

    model = models.build(name)
    twin = to_torch(model)
    shape = SHAPES[name]
    x = np.random.default_rng(0).random((2,) + shape, dtype=np.float32)
    model.eval(), twin.eval()
    np.testing.assert_allclose(model.forward(x), twin(torch.tensor(x)).detach().numpy(), rtol=1e-4, atol=1e-5)
    ref = torchinfo.summary(twin, input_size=(4,) + shape, verbose=0)
    ours = summary(model, (4,) + shape)
    assert ours.total_params == ref.total_params == ref.trainable_params
    assert ours.macs_per_batch == ref.total_mult_adds
    # layer by layer: the leaves torch has as modules (our residual ReLU is functional there)
    theirs = [(tuple(li.output_size[1:]), li.macs // 4) for li in ref.summary_list if li.is_leaf_layer
              and li.class_name != "Sequential"]
    mine = [(r.shape, r.macs) for r in ours.rows if r.leaf and not r.name.endswith("relu")]
    assert mine == theirs


def test_cli_summary(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fastcnn", "summary", "--model", "lenet"], capture_output=True,
                       text=True, cwd=NEUTRAL_CWD, timeout=300)
    assert r.returncode == 0, r.stderr
    total = [ln for ln in r.stdout.splitlines() if "Total params" in ln]
    macs = [ln for ln in r.stdout.splitlines() if "Total MACs" in ln]
    assert len(total) == 1 and len(macs) == 1
    assert int(total[0].split(":")[1].split()[0].replace(",", "")) == 3274634
    assert int(macs[0].split(":")[1].split()[0].replace(",", "")) == 13922570
    path = tmp_path / "m.npz"
    model = fastcnn.Sequential(L.Conv2D(3, 4, 3), L.ReLU(), L.Flatten(), L.Dense(4 * 6 * 6, 2))
    model.save(path)
    r = subprocess.run([sys.executable, "-m", "fastcnn", "summary", "--checkpoint", str(path),
                        "--input-shape", "3,8,8"], capture_output=True, text=True, cwd=NEUTRAL_CWD, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"Total params: {4 * 27 + 4 + 144 * 2 + 2:,}" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fastcnn", "summary", "--checkpoint", str(path)],
                       capture_output=True, text=True, cwd=NEUTRAL_CWD, timeout=300)
    assert r.returncode != 0 and "--input-shape" in r.stderr and len(r.stderr.strip().splitlines()) == 1
