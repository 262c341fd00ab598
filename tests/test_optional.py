"""Optional dependencies (``fastcnn._optional``): a missing extra is one line naming the
``pip install`` to run; importing and training need no extra."""
import os
import subprocess
import sys

import pytest

from fastcnn import models
from fastcnn.export import to_onnx

from utils import NEUTRAL_CWD


def test_missing_extra_message(monkeypatch, tmp_path):
    for mod in ("onnx", "onnx.numpy_helper", "safetensors", "safetensors.numpy", "PIL", "PIL.Image"):
        monkeypatch.setitem(sys.modules, mod, None)   # import of these now raises ImportError
    from fastcnn._optional import MissingExtra

    with pytest.raises(MissingExtra, match=r'pip install "fastcnn\[onnx\]"'):
        to_onnx(models.build("scratch"), tmp_path / "m.onnx", (1, 28, 28))
    with pytest.raises(MissingExtra, match=r'pip install "fastcnn\[safetensors\]"'):
        models.build("scratch").save(tmp_path / "m.st", format="safetensors")
    from fastcnn.predict import load_images

    with pytest.raises(MissingExtra, match=r'pip install "fastcnn\[images\]"'):
        load_images(["x.png"], {"input_shape": [1, 28, 28]})


_NO_EXTRAS = r"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("onnx", "onnxruntime", "safetensors", "PIL", "sklearn", "torch"):
            raise ImportError(f"blocked {name}")
sys.meta_path.insert(0, Block())
import numpy as np, fastcnn
from fastcnn import models, losses, optim
m = models.build("scratch"); opt = optim.SGD(m.parameters(), 0.01); lf = losses.SoftmaxCrossEntropy()
x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
lf.forward(m.forward(x), np.arange(4)); m.backward(lf.backward()); opt.step()
try:
    import fastcnn.sklearn
except ImportError as e:
    print(e)
try:
    fastcnn.export.to_onnx(m, "never.onnx", (1, 28, 28))
except ImportError as e:
    print(e)
print("trained")
"""


def test_import_and_training_need_no_extra():
    r = subprocess.run([sys.executable, "-c", _NO_EXTRAS], capture_output=True, text=True, cwd=NEUTRAL_CWD,
                       env=dict(os.environ), timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines == ["fastcnn.sklearn needs the 'sklearn' package: pip install \"fastcnn[sklearn]\"",
                     "ONNX export needs the 'onnx' package: pip install \"fastcnn[onnx]\"", "trained"]
