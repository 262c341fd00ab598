"""ONNX export checked with onnxruntime, safetensors both ways with torch, the export
command."""
import numpy as np
import pytest

import fastcnn
from fastcnn import cli, models
from fastcnn.export import to_onnx
from fastcnn.layers import AvgPool2D, BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from fastcnn.predict import normalize

from utils import (
    cifar,
    densenet,
    inception,
    needs_cifar,
    needs_torch,
    smooth_graph,
    torch_inception,
    trained_small_cifar,
)

onnx = pytest.importorskip("onnx", reason="pip install .[onnx]")
ort = pytest.importorskip("onnxruntime", reason="pip install .[onnx]")

SHAPES = {"scratch": (1, 28, 28), "lenet": (1, 28, 28), "bn": (1, 28, 28), "resnet": (3, 32, 32)}


def _warm_stats(model, shape, seed=1):
    """One training-mode forward so BatchNorm running statistics are not 0/1."""
    model.train()
    model.forward(np.random.default_rng(seed).standard_normal((8,) + shape).astype(np.float32))
    return model.eval()


def _same_padding_net():
    """Odd sizes with TensorFlow SAME on a strided conv and on both pools (asymmetric pads)."""
    rng = np.random.default_rng(2)
    return fastcnn.Sequential(
        Conv2D(2, 4, 4, stride=2, padding="same", rng=rng), BatchNorm2D(4), ReLU(),    # 11 -> 6
        MaxPool2D(3, 2, padding="same"), AvgPool2D(2, 1, padding="same"),              # 6 -> 3 -> 3
        AvgPool2D(2, 1, padding=1), Conv2D(4, 3, (2, 3), padding="valid", rng=rng),   # 3 -> 4 -> (3, 2)
        Flatten(), Dense(18, 5, rng=rng))


def _graph_net():
    return inception(np.random.default_rng(0))


NETS = {**{n: (lambda n=n: models.build(n, seed=0), SHAPES[n]) for n in SHAPES},
        "same_padding": (_same_padding_net, (2, 11, 11)),
        "inception_graph": (_graph_net, (4, 9, 9)),
        "densenet_graph": (lambda: densenet(np.random.default_rng(0)), (3, 8, 8))}


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", sorted(NETS))
def test_onnx_runtime_equals_fastcnn(tmp_path, name):
    build, shape = NETS[name]
    model = _warm_stats(build(), shape)
    path = tmp_path / f"{name}.onnx"
    proto = to_onnx(model, path, shape)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.opset_import[0].version == 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    sess = _session(path)
    for batch in (1, 7):
        x = np.random.default_rng(batch).standard_normal((batch,) + shape).astype(np.float32)
        got = sess.run(None, {"input": x})[0]
        want = model.forward(x)
        err = float(np.max(np.abs(got - want)))
        assert got.shape == want.shape and err <= 1e-5, f"{name} batch {batch}: max abs {err:.2e}"
    assert not model.training


def test_onnx_two_inputs_two_outputs(tmp_path):
    model = smooth_graph().eval()
    path = tmp_path / "two.onnx"
    to_onnx(model, path)   # a graph Model knows its input shapes
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == ["a", "b"]
    xs = [np.random.default_rng(i).standard_normal((3, 2, 6, 6)).astype(np.float32) for i in range(2)]
    got = sess.run(None, {"a": xs[0], "b": xs[1]})
    for g, w in zip(got, model.forward(xs)):
        assert np.max(np.abs(g - w)) <= 1e-5


def test_onnx_input_shape_errors(tmp_path):
    with pytest.raises(ValueError, match="input_shape is required"):
        to_onnx(models.build("lenet"), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="differs"):
        to_onnx(_graph_net(), tmp_path / "x.onnx", (3, 9, 9))
    assert not (tmp_path / "x.onnx").exists()


@needs_cifar
def test_int8_quantization_keeps_accuracy(tmp_path):
    """Static int8 (onnxruntime, calibrated on 256 training images) of a small trained CIFAR-10
    net: accuracy on the 1,000 test records within 2 points of float, 95% same answers."""
    from fastcnn.export import quantize_int8

    model, _, info = trained_small_cifar()
    calib = normalize(cifar("train", 256)[0], info)
    test_x, test_y = cifar("test", 1000)
    x = normalize(test_x, info)
    to_onnx(model, tmp_path / "f.onnx", (3, 32, 32))
    quantize_int8(tmp_path / "f.onnx", tmp_path / "q.onnx", calib)
    onnx.checker.check_model(onnx.load(str(tmp_path / "q.onnx")), full_check=True)
    q = _session(tmp_path / "q.onnx").run(None, {"input": x})[0].argmax(1)
    f = model.predict(x)
    acc_f, acc_q = np.mean(f == test_y), np.mean(q == test_y)
    assert abs(acc_f - acc_q) <= 0.02 and np.mean(f == q) >= 0.95, (acc_f, acc_q, np.mean(f == q))


# ---------------------------------------------------------------- safetensors
@needs_torch
@pytest.mark.parametrize("name", ["bn", "resnet", "inception_graph"])
def test_safetensors_fastcnn_to_torch(tmp_path, name):
    import torch
    from safetensors.torch import load_file

    from fastcnn.interop import to_torch

    build, shape = NETS[name]
    model = _warm_stats(build(), shape)
    model.save(tmp_path / "m.safetensors", format="safetensors", metadata={"note": "x"})
    # a torch module with other weights takes the file as is (strict names, no pickle)
    twin = torch_inception() if name == "inception_graph" else to_torch(models.build(name, seed=5))
    twin.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    twin.eval()
    x = np.random.default_rng(0).standard_normal((3,) + shape).astype(np.float32)
    with torch.no_grad():
        assert np.max(np.abs(twin(torch.tensor(x)).numpy() - model.forward(x))) <= 1e-5
    back, meta = fastcnn.load(tmp_path / "m.safetensors", return_metadata=True)
    assert meta == {"note": "x"}
    np.testing.assert_array_equal(back.eval().forward(x), model.forward(x))


@needs_torch
@pytest.mark.parametrize("name", ["bn", "resnet"])
def test_safetensors_torch_to_fastcnn(tmp_path, name):
    import torch
    from safetensors.torch import save_file

    from fastcnn.interop import to_torch

    shape = SHAPES[name]
    twin = to_torch(models.build(name, seed=7))
    with torch.no_grad():
        twin.train()(torch.randn((8,) + shape))   # move running statistics
    twin.eval()
    save_file(twin.state_dict(), str(tmp_path / "t.safetensors"))
    model = models.build(name, seed=0)
    model.load_state_dict(fastcnn.model.read_state_dict(tmp_path / "t.safetensors"))
    model.eval()
    x = np.random.default_rng(0).standard_normal((3,) + shape).astype(np.float32)
    with torch.no_grad():
        assert np.max(np.abs(twin(torch.tensor(x)).numpy() - model.forward(x))) <= 1e-5
    with pytest.raises(ValueError, match="without a fastcnn architecture"):
        fastcnn.load(tmp_path / "t.safetensors")


def test_safetensors_truncated_file_is_refused(tmp_path):
    p = tmp_path / "m.safetensors"
    models.build("scratch").save(p, format="safetensors")
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ValueError, match="unreadable"):
        fastcnn.load(p)


# ---------------------------------------------------------------- command line
def test_cli_export(tmp_path, capsys):
    model = _warm_stats(models.build("resnet", seed=0), (3, 32, 32))
    prep = {"dataset": "cifar10", "input_shape": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3,
            "classes": [str(i) for i in range(10)]}
    ckpt = tmp_path / "model.npz"
    model.save(ckpt, metadata={"model": "resnet", "preprocess": prep})
    assert cli.main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert np.max(np.abs(_session(tmp_path / "m.onnx").run(None, {"input": x})[0] - model.forward(x))) <= 1e-5
    assert cli.main(["export", "--checkpoint", str(ckpt), "--format", "safetensors",
                     "--out", str(tmp_path / "m.safetensors")]) == 0
    back, meta = fastcnn.load(tmp_path / "m.safetensors", return_metadata=True)
    assert meta["preprocess"] == prep
    # a graph model knows its input shape
    graph = _warm_stats(_graph_net(), (4, 9, 9))
    graph.save(tmp_path / "graph.npz")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "graph.npz"), "--format", "onnx",
                     "--out", str(tmp_path / "graph.onnx")]) == 0
    x = np.random.default_rng(1).standard_normal((3, 4, 9, 9)).astype(np.float32)
    assert np.max(np.abs(_session(tmp_path / "graph.onnx").run(None, {"input": x})[0] - graph.forward(x))) <= 1e-5
    # an old MNIST checkpoint: input shape from the fallback; a wrong override fails in one line
    models.build("lenet").save(tmp_path / "old.npz")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "old.npz"), "--format", "onnx",
                     "--out", str(tmp_path / "old.onnx")]) == 0
    capsys.readouterr()
    assert cli.main(["export", "--checkpoint", str(tmp_path / "old.npz"), "--format", "onnx",
                     "--out", str(tmp_path / "bad.onnx"), "--input-shape", "3,28,28"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "channels" in err
