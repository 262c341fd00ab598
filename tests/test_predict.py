"""Prediction: predict/predict_proba, and `fastcnn predict` on image files (CIFAR-10 test
records written as PNG classify exactly as the arrays do)."""
import json
from pathlib import Path

import numpy as np
import pytest

import fastcnn
from fastcnn import cli, data, models
from fastcnn.predict import normalize

from utils import CIFAR_CLASSES, cifar, needs_cifar, trained_small_cifar

Image = pytest.importorskip("PIL.Image", reason="pip install .[images]")


@needs_cifar
def test_predict_cifar_png_files_equal_array_evaluation(tmp_path, capsys):
    model, prep, info = trained_small_cifar()
    test_x, test_y = cifar("test", 1000)
    assert test_x.shape == (1000, 3, 32, 32)
    ckpt = tmp_path / "model.npz"
    model.save(ckpt, metadata={"preprocess": prep})
    pngs = tmp_path / "png"
    pngs.mkdir()
    for i, img in enumerate(test_x):
        Image.fromarray(img.transpose(1, 2, 0)).save(pngs / f"{i:04d}.png")   # lossless
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(pngs), "--json", "--top-k", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [Path(r["file"]).name for r in results] == [f"{i:04d}.png" for i in range(1000)]
    file_pred = np.array([r["index"] for r in results])
    assert all(r["class"] == CIFAR_CLASSES[r["index"]] and len(r["top"]) == 3 for r in results)
    array_pred = model.predict(normalize(test_x, info))
    file_acc, array_acc = np.mean(file_pred == test_y), np.mean(array_pred == test_y)
    assert file_acc == array_acc and np.array_equal(file_pred, array_pred)
    assert array_acc > 0.2, array_acc  # it learnt something: 10 classes, chance is 0.1


def test_predict_proba_is_batched_softmax():
    model = models.build("bn", seed=0)
    x = np.random.default_rng(0).random((11, 1, 28, 28), dtype=np.float32)
    model.train()
    p = model.predict_proba(x, batch_size=4)
    assert model.training and p.shape == (11, 10) and p.dtype == np.float32
    model.eval()
    logits = model.forward(x)
    z = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p, z / z.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model.predict(x, batch_size=3), logits.argmax(1))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(x, batch_size=0)


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_old_checkpoint_falls_back_to_mnist(tmp_path, capsys, name):
    """No "preprocess" record: 1x28x28, scaled to [0, 1], classes 0-9, zero-padded for the ResNet."""
    model = models.build(name, seed=0, in_channels=1)
    model.save(tmp_path / "m.npz", metadata={"model": name})
    imgs = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    files = []
    for i, img in enumerate(imgs):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).convert("RGB").save(files[-1])   # RGB files: converted to grayscale
    assert cli.main(["predict", "--checkpoint", str(tmp_path / "m.npz"), *files]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    gray = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    x = data.to_float(gray)
    if name == "resnet":
        x = fastcnn.train.pad_to(x, 32)
    want = model.predict(x)
    assert [line.split(": ")[1].split()[0] for line in lines] == [str(k) for k in want]


def test_images_are_resized_to_the_model_input(tmp_path):
    from fastcnn.predict import load_images

    big = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    got = load_images([tmp_path / "big.png"], {"input_shape": [3, 32, 32]})
    want = np.asarray(Image.fromarray(big).resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(got[0], want)


def test_predict_errors(tmp_path, capsys):
    models.build("scratch").save(tmp_path / "m.npz")
    (tmp_path / "notimage.png").write_bytes(b"not a png")
    (tmp_path / "empty").mkdir()
    for target, msg in ((tmp_path / "missing.png", "no such file"), (tmp_path / "notimage.png", "cannot read image"),
                        (tmp_path / "empty", "no image files")):
        assert cli.main(["predict", "--checkpoint", str(tmp_path / "m.npz"), str(target)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
