"""fastcnn.viz: traced activations, the deconvnet projection (against PyTorch's unpool and
transposed convolution), the PNG grids and ``fastcnn visualize``."""
import subprocess
import sys

import numpy as np
import pytest

import fastcnn
from fastcnn import layers as L
from fastcnn import models, viz

from utils import DATA, NEUTRAL_CWD, needs_mnist, needs_torch

PNG = b"\x89PNG\r\n\x1a\n"


def image(shape=(1, 28, 28), seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_trace_records_every_leaf_and_cleans_up():
    model = models.build("resnet").train()
    out, records = viz.trace(model, image((1, 3, 32, 32)))
    assert out.shape == (1, 10)
    names = [r.name for r in records]
    assert names[:3] == ["0", "1", "2"] and "5.shortcut.0" in names and names[-1] == "11"
    assert len(records) == len(list(viz.named_leaves(model)))
    assert model.training and all("forward" not in vars(layer) for _, layer in viz.named_leaves(model))
    with fastcnn.config(fold_bn=False):  # (traced layers run one by one: no folded batch norms)
        np.testing.assert_array_equal(out, model.eval().forward(image((1, 3, 32, 32))))


def test_feature_maps_are_the_conv_blocks_outputs():
    model = models.build("lenet").eval()
    x = image()
    maps = viz.feature_maps(model, x)
    assert [(n, t) for n, t, _ in maps] == [("0", "0 Conv2D + ReLU"), ("3", "3 Conv2D + ReLU")]
    h = model[1].forward(model[0].forward(x[None]))
    np.testing.assert_array_equal(maps[0][2], h[0])
    h = model[4].forward(model[3].forward(model[2].forward(h)))
    np.testing.assert_array_equal(maps[1][2], h[0])
    bn = viz.feature_maps(models.build("bn"), x)
    assert [t for _, t, _ in bn] == ["0 Conv2D + BatchNorm2D + ReLU", "4 Conv2D + BatchNorm2D + ReLU"]


def test_first_layer_projection_is_the_kernel_at_the_peak():
    """Below the first convolution there is only the transposed convolution: the projection of
    one activation a at (i, j) is a times the kernel pasted at (i, j) of the padded input."""
    model = fastcnn.Sequential(L.Conv2D(1, 4, 3, padding=1, rng=1), L.ReLU())
    x = image((1, 9, 9), seed=3)
    name, channels, values, imgs = viz.project(model, x, top=4)
    act = model.eval().forward(x[None])[0]
    assert name == "0" and list(channels) == list(np.argsort(-act.reshape(4, -1).max(1), kind="stable"))
    for c, v, img in zip(channels, values, imgs):
        i, j = np.unravel_index(np.argmax(act[c]), act[c].shape)
        pasted = np.zeros((11, 11), np.float32)
        pasted[i:i + 3, j:j + 3] = v * model[0].weight.data[c, 0]
        np.testing.assert_allclose(img[0], pasted[1:-1, 1:-1], rtol=1e-6, atol=1e-7)


@needs_torch
@pytest.mark.parametrize("name,layer", [("lenet", "3"), ("bn", "4"), ("bn", "0")])
def test_projection_equals_torch_deconvnet(name, layer):
    """The same deconvnet written with torch's MaxUnpool2d and conv_transpose2d."""
    import torch
    import torch.nn.functional as TF

    model = models.build(name, seed=2)
    if name == "bn":  # non-trivial running statistics
        for m in model:
            if isinstance(m, L.BatchNorm2D):
                m.running_var[:] = np.linspace(0.5, 2.0, len(m.running_var))
                m.running_mean[:] = 0.1
    x = image(seed=5)
    got_name, channels, values, imgs = viz.project(model, x, layer=layer, top=3)
    assert got_name == layer
    # forward in torch, keeping the pooling switches
    t = torch.tensor(x[None], dtype=torch.float64)
    stack = []  # (kind, module, extra) of every layer up to the projected block
    last = int(layer) + (3 if name == "bn" else 2)
    for m in list(model)[:last]:
        if isinstance(m, L.Conv2D):
            pad = 2
            w = torch.tensor(m.weight.data, dtype=torch.float64)
            stack.append(("conv", w, pad))
            t = TF.conv2d(t, w, torch.tensor(m.bias.data, dtype=torch.float64), padding=pad)
        elif isinstance(m, L.ReLU):
            stack.append(("relu", None, None))
            t = torch.relu(t)
        elif isinstance(m, L.MaxPool2D):
            size = t.shape[2:]
            t, idx = TF.max_pool2d(t, 2, return_indices=True)
            stack.append(("pool", idx, size))
        elif isinstance(m, L.BatchNorm2D):
            scale = m.weight.data / np.sqrt(m.running_var + m.eps)
            stack.append(("bn", torch.tensor(scale, dtype=torch.float64), None))
            t = TF.batch_norm(t, torch.tensor(m.running_mean, dtype=torch.float64),
                              torch.tensor(m.running_var, dtype=torch.float64),
                              torch.tensor(m.weight.data, dtype=torch.float64),
                              torch.tensor(m.bias.data, dtype=torch.float64), eps=m.eps)
    act = t[0].numpy()
    np.testing.assert_allclose(values, act.reshape(len(act), -1).max(1)[channels], rtol=1e-4)
    for c, img in zip(channels, imgs):
        r = torch.zeros_like(t)
        pos = np.unravel_index(int(np.argmax(act[c])), act[c].shape)
        r[0, c, pos[0], pos[1]] = t[0, c, pos[0], pos[1]]
        for kind, a, b in reversed(stack):
            if kind == "relu":
                r = torch.relu(r)
            elif kind == "pool":
                r = TF.max_unpool2d(r, a, 2, output_size=b)
            elif kind == "conv":
                r = TF.conv_transpose2d(r, a, padding=b)
            else:
                r = r * a[None, :, None, None]
        ref = r[0].numpy()
        scale = np.abs(ref).max()
        assert scale > 0
        np.testing.assert_allclose(img, ref, atol=1e-4 * scale)


def test_projection_refuses_residual_and_unknown_layer():
    with pytest.raises(ValueError, match="residual networks are not supported"):
        viz.project(models.build("resnet"), image((3, 32, 32)))
    with pytest.raises(ValueError, match="choose one of 0, 3"):
        viz.project(models.build("lenet"), image(), layer="7")
    with pytest.raises(ValueError, match="one image"):
        viz.project(models.build("lenet"), image((2, 1, 28, 28)))


def test_plots_write_pngs(tmp_path):
    model = models.build("resnet")
    x = image((3, 32, 32))
    maps = viz.feature_maps(model, x)
    assert viz.plot_maps(maps[0][2], tmp_path / "m.png", maps[0][1]) == str(tmp_path / "m.png")
    viz.plot_filters(model, tmp_path / "f.png")  # RGB kernels
    name, ch, v, imgs = viz.project(models.build("lenet"), image(), top=5)
    viz.plot_projections(image(), ch, v, imgs, tmp_path / "p.png")
    for f in ("m.png", "f.png", "p.png"):
        data = (tmp_path / f).read_bytes()
        assert data[:8] == PNG and len(data) < 200_000


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fastcnn", *args], capture_output=True, text=True,
                          cwd=NEUTRAL_CWD, timeout=300)


@needs_mnist
def test_cli_visualize(tmp_path):
    ckpt = tmp_path / "lenet.npz"
    models.build("lenet").save(ckpt, metadata={"model": "lenet"})
    out = tmp_path / "viz"
    r = _cli("visualize", "--checkpoint", str(ckpt), "--data-dir", DATA, "--index", "7", "--out", str(out),
             "--project", "--layer", "0", "--top", "4", "--filters")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["filters.png", "input.png", "maps_0.png", "maps_3.png", "projection_0.png"]
    assert r.stdout.split() == [str(out / n) for n in ("input.png", "maps_0.png", "maps_3.png",
                                                        "projection_0.png", "filters.png")]
    assert all((out / n).read_bytes()[:8] == PNG for n in names)
    r = _cli("visualize", "--checkpoint", str(ckpt), "--data-dir", DATA, "--index", "10000", "--out", str(out))
    assert r.returncode != 0 and "out of range" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("visualize", "--checkpoint", str(ckpt), "--dataset", "svhn", "--out", str(out))
    assert r.returncode != 0 and "unknown dataset" in r.stderr
