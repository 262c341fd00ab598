"""CIFAR-10 (binary batches) and Fashion-MNIST loading and downloading, and the data root.

Real CIFAR-10 is looked for in $FASTCNN_CIFAR10, else in the ``cifar10`` directory beside
$FASTCNN_DATA's MNIST directory (../shared/data/cifar10); tests needing it are skipped
otherwise.  Downloads run against the local HTTP server of test_data.py.
"""
import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fastcnn import data
from fastcnn.data import CIFARError, DownloadError, IDXError

from test_data import Server, idx_bytes, server, synthetic  # noqa: F401  (server: fixture)

REC = data.CIFAR10_RECORD


def _cifar_dir():
    env = os.environ.get("FASTCNN_CIFAR10")
    if env:
        root = Path(env)
    else:
        mnist = os.environ.get("FASTCNN_DATA")
        root = Path(mnist).parent / "cifar10" if mnist else None
    if root is None or not (root / "data_batch_1.bin.gz").is_file():
        pytest.skip("real CIFAR-10 not found (set FASTCNN_CIFAR10)")
    return root


def records(n, seed=0, labels=None):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 10, n, dtype=np.uint8) if labels is None else np.asarray(labels, np.uint8)
    img = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    raw = np.concatenate([lab[:, None], img.reshape(n, -1)], axis=1).tobytes()
    return raw, img, lab


@pytest.fixture
def small_batches(monkeypatch):
    """Official batches of 20 records instead of 10000 (keeps the tests fast)."""
    monkeypatch.setattr(data, "CIFAR10_BATCH_RECORDS", 20)
    return 20


def write_cifar(root, n=20, compress=False, test=True):
    """Synthetic CIFAR-10 directory (full-size batches); returns {name: (images, labels)}."""
    root = Path(root)
    out = {}
    names = data.CIFAR10_FILES["train"] + (data.CIFAR10_FILES["test"] if test else [])
    for i, name in enumerate(names):
        raw, img, lab = records(n, seed=i)
        p = root / (name + (".gz" if compress else ""))
        p.write_bytes(gzip.compress(raw, compresslevel=1, mtime=0) if compress else raw)
        out[name] = (img, lab)
    return out


# --------------------------------------------------------------------------- real data

def test_real_cifar10_train():
    x, y = data.load_cifar10(_cifar_dir(), "train")
    assert x.shape == (50000, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.uint8
    # published facts (the data README): counts, first labels, first pixels, channel means
    assert np.bincount(y).tolist() == [5000] * 10
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert x[0, :, 0, 0].tolist() == [59, 62, 63] and x[0, 0, 0, :3].tolist() == [59, 43, 50]
    np.testing.assert_allclose(x.reshape(50000, 3, -1).mean(axis=(0, 2)) / 255,
                               [0.49139968, 0.48215841, 0.44653091], atol=1e-7)


def test_real_cifar10_partial_test_file_is_named_and_reported(capsys):
    root = _cifar_dir()
    with pytest.raises(FileNotFoundError, match="test_batch_first1000.bin.gz.*test_file="):
        data.load_cifar10(root, "test")
    with pytest.warns(UserWarning, match="read 1000 records.*partial"):
        x, y = data.load_cifar10(root, "test", test_file="test_batch_first1000.bin.gz", verbose=True)
    assert x.shape == (1000, 3, 32, 32)
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert x[0, 0, 0, :3].tolist() == [158, 159, 165]
    assert "read 1000 records" in capsys.readouterr().err


def test_real_cifar10_sha256_table_matches_the_files():
    root = _cifar_dir()
    sums = dict(line.split()[::-1] for line in (root / "SHA256SUMS").read_text().splitlines() if line.strip())
    for name in data.CIFAR10_FILES["train"]:
        assert sums[name] == data.CIFAR10_SHA256[name]
    classes = (root / "batches.meta.txt").read_text().split()
    assert classes == data.CLASSES["cifar10"]


# --------------------------------------------------------------------------- reading and validation

@pytest.mark.parametrize("compress", [False, True])
def test_load_cifar10_synthetic(tmp_path, compress, small_batches):
    want = write_cifar(tmp_path, compress=compress)
    x, y = data.load_cifar10(tmp_path, "train")
    assert x.shape == (100, 3, 32, 32)
    np.testing.assert_array_equal(x[:20], want["data_batch_1.bin"][0])
    np.testing.assert_array_equal(y[80:], want["data_batch_5.bin"][1])
    x, y = data.load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(x, want["test_batch.bin"][0])


def test_read_batch_errors(tmp_path):
    raw, _, _ = records(3)
    p = tmp_path / "b.bin"
    p.write_bytes(raw[:-5])
    with pytest.raises(CIFARError, match="not a whole number of 3073-byte records"):
        data.read_cifar10_batch(p)
    p.write_bytes(b"")
    with pytest.raises(CIFARError, match="empty"):
        data.read_cifar10_batch(p)
    raw, _, _ = records(3, labels=[1, 12, 3])
    p.write_bytes(raw)
    with pytest.raises(CIFARError, match="label 12 of record 1 is outside 0..9"):
        data.read_cifar10_batch(p)
    raw, _, _ = records(3)
    p.write_bytes(raw)
    with pytest.raises(CIFARError, match="holds 3 records, expected 10000"):
        data.read_cifar10_batch(p, 10000)
    g = tmp_path / "b.bin.gz"
    g.write_bytes(gzip.compress(raw)[:-10])
    with pytest.raises(CIFARError, match="corrupt gzip"):
        data.read_cifar10_batch(g)


def test_load_cifar10_short_official_batch_is_refused(tmp_path, small_batches):
    write_cifar(tmp_path)
    raw, _, _ = records(19)
    (tmp_path / "data_batch_3.bin").write_bytes(raw)
    with pytest.raises(CIFARError, match="data_batch_3.bin: holds 19 records, expected 20"):
        data.load_cifar10(tmp_path, "train")


def test_load_cifar10_missing_and_bad_args(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin.*download=True"):
        data.load_cifar10(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        data.load_cifar10(tmp_path, "valid")
    with pytest.raises(ValueError, match="test_file"):
        data.load_cifar10(tmp_path, "train", test_file="x.bin")
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        data.load_cifar10(tmp_path, "test", test_file="nope.bin")


# --------------------------------------------------------------------------- data root

def test_data_root_one_setting_for_every_dataset(tmp_path, monkeypatch):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "fashion-mnist").mkdir()
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path))
    assert data.data_root("cifar10") == tmp_path / "cifar10"
    assert data.data_root("fashion-mnist") == tmp_path / "fashion-mnist"
    assert data.data_root("mnist") == tmp_path  # no mnist/ sub-directory: the directory itself
    assert data.data_root("cifar10", tmp_path / "elsewhere") == tmp_path / "elsewhere"
    monkeypatch.delenv("FASTCNN_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.data_root("cifar10") == tmp_path / ".cache" / "fastcnn" / "cifar10"
    with pytest.raises(ValueError, match="unknown dataset"):
        data.data_root("imagenet")


def test_load_dataset_by_name_adds_channel_axis(tmp_path):
    images, labels = synthetic(5)
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for split in ("train", "test"):
        img, lbl = data.FILES[split]
        (d / img).write_bytes(idx_bytes(images))
        (d / lbl).write_bytes(idx_bytes(labels))
    x, y = data.load_dataset("fashion-mnist", tmp_path, "test")
    assert x.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(x[:, 0], images)
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST train"):
        data.load_fashion_mnist(tmp_path / "none", "train")
    bad = idx_bytes(np.full(5, 11, np.uint8))
    (d / data.FILES["test"][1]).write_bytes(bad)
    with pytest.raises(IDXError, match="outside 0..9"):
        data.load_fashion_mnist(d, "test")


# --------------------------------------------------------------------------- downloading

def test_fashion_mnist_download_md5_verified(tmp_path, server, monkeypatch):  # noqa: F811
    blobs = {}
    for split, n in (("train", 6), ("test", 4)):
        images, labels = synthetic(n, seed=n)
        img, lbl = data.FILES[split]
        blobs[img + ".gz"] = gzip.compress(idx_bytes(images), mtime=0)
        blobs[lbl + ".gz"] = gzip.compress(idx_bytes(labels), mtime=0)
    monkeypatch.setattr(data, "FASHION_MD5", {k: hashlib.md5(v).hexdigest() for k, v in blobs.items()})
    monkeypatch.setattr(data, "FASHION_SIZES", {k: len(v) for k, v in blobs.items()})
    bad = server.mirror("bad", {k: v[:-1] + b"x" for k, v in blobs.items()})
    good = server.mirror("good", blobs)
    monkeypatch.setattr(data, "FASHION_MIRRORS", [bad, good])
    x, y = data.load_fashion_mnist(tmp_path, "test", download=True)
    assert x.shape == (4, 28, 28)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        data.download_fashion_mnist(tmp_path / "b", mirrors=[bad], files=["train-labels-idx1-ubyte.gz"])
    assert not list((tmp_path / "b").iterdir())  # no partial file left


def _archive(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def test_cifar10_download_extracts_verified_batches(tmp_path, server, monkeypatch, small_batches):  # noqa: F811
    blobs = {name: records(20, seed=i)[0]
             for i, name in enumerate(data.CIFAR10_SHA256)}
    members = {f"cifar-10-batches-bin/{k}": v for k, v in blobs.items()}
    members["cifar-10-batches-bin/../../evil.bin"] = b"never written"
    arch = _archive(members)
    monkeypatch.setattr(data, "CIFAR10_SHA256", {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()})
    monkeypatch.setattr(data, "CIFAR10_ARCHIVE_MD5", hashlib.md5(arch).hexdigest())
    monkeypatch.setattr(data, "CIFAR10_ARCHIVE_SIZE", len(arch))
    base = server.mirror("kriz", {data.CIFAR10_ARCHIVE: arch})
    monkeypatch.setattr(data, "CIFAR10_URLS", [base + data.CIFAR10_ARCHIVE])
    root = tmp_path / "c"
    x, y = data.load_cifar10(root, "test", download=True)
    assert x.shape == (20, 3, 32, 32)
    assert sorted(p.name for p in root.iterdir()) == sorted(data.CIFAR10_SHA256)  # archive removed
    assert not (tmp_path / "evil.bin").exists()
    # files present and good: nothing fetched again
    n = len(server.requests)
    data.download_cifar10(root)
    assert len(server.requests) == n


def test_cifar10_download_rejects_bad_archive_and_bad_member(tmp_path, server, monkeypatch):  # noqa: F811
    blob = records(10, seed=0)[0]
    arch = _archive({"cifar-10-batches-bin/data_batch_1.bin": blob})
    base = server.mirror("k", {data.CIFAR10_ARCHIVE: arch})
    monkeypatch.setattr(data, "CIFAR10_URLS", [base + data.CIFAR10_ARCHIVE])
    with pytest.raises(DownloadError, match="announces"):  # the real size: refused before reading
        data.download_cifar10(tmp_path / "s")
    monkeypatch.setattr(data, "CIFAR10_ARCHIVE_SIZE", len(arch))
    with pytest.raises(DownloadError, match="MD5 mismatch"):  # the real MD5 table: refused
        data.download_cifar10(tmp_path / "a")
    assert not list((tmp_path / "a").iterdir())
    monkeypatch.setattr(data, "CIFAR10_ARCHIVE_MD5", hashlib.md5(arch).hexdigest())
    with pytest.raises(DownloadError, match="data_batch_1.bin has SHA-256"):  # the real SHA-256s
        data.download_cifar10(tmp_path / "b")
    assert not list((tmp_path / "b").iterdir())
