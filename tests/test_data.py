"""Tests of fastcnn.data: IDX reading, MNIST loading, the downloader, and batch iteration;
CIFAR-10 (binary batches) and Fashion-MNIST loading and downloading, and the data root.

Real-MNIST tests read the directory named by the environment variable FASTCNN_DATA and are
skipped when it is unset or missing.  Real CIFAR-10 is looked for in $FASTCNN_CIFAR10, else in
the ``cifar10`` directory beside $FASTCNN_DATA's MNIST directory (../shared/data/cifar10);
tests needing it are skipped otherwise.  Downloader tests run against a local HTTP server.
"""
import gzip
import hashlib
import io
import os
import socket
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from fastcnn import data
from fastcnn.data import (
    CIFARError,
    DataLoader,
    DownloadError,
    IDXError,
    download_mnist,
    iterate_batches,
    load_mnist,
    read_idx,
    to_float,
)

from utils import cifar10_root

GZ_NAMES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --------------------------------------------------------------------------- helpers

def _real_dir():
    env = os.environ.get("FASTCNN_DATA")
    if not env:
        pytest.skip("real MNIST: environment variable FASTCNN_DATA is not set")
    root = Path(env)
    if not root.is_dir():
        pytest.skip(f"real MNIST: FASTCNN_DATA={env!r} is not a directory")
    return root


def idx_bytes(arr, code=0x08):
    """IDX encoding of ``arr`` (big-endian payload)."""
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    arr = np.asarray(arr)
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(dt).tobytes()


def write(path, payload, compress=False):
    path = Path(path)
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)
    return path


def synthetic(n=12, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_split(root, split, images, labels, compress=True):
    img, lbl = data.FILES[split]
    ext = ".gz" if compress else ""
    write(Path(root) / (img + ext), idx_bytes(images), compress)
    write(Path(root) / (lbl + ext), idx_bytes(labels), compress)


def gz_blobs(train=20, test=8):
    """gz bytes of the four MNIST-format files of a small synthetic dataset, by file name."""
    blobs = {}
    for split, n in (("train", train), ("test", test)):
        images, labels = synthetic(n, seed=n)
        img, lbl = data.FILES[split]
        blobs[img + ".gz"] = gzip.compress(idx_bytes(images), mtime=0)
        blobs[lbl + ".gz"] = gzip.compress(idx_bytes(labels), mtime=0)
    return blobs


def synthetic_gz_files():
    """gz bytes for all four names (small synthetic MNIST) and their SHA-256 table."""
    blobs = gz_blobs()
    sums = {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}
    return blobs, sums


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- real MNIST

@pytest.fixture(scope="module")
def real_train():
    return load_mnist(_real_dir(), "train")


@pytest.fixture(scope="module")
def real_test():
    return load_mnist(_real_dir(), "test")


def test_real_train(real_train):
    images, labels = real_train
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(labels, minlength=10).tolist() == TRAIN_CLASS_COUNTS
    assert images.max() == 255 and images.min() == 0
    assert abs(images.mean() - 33.32) < 0.01


def test_real_test(real_test):
    images, labels = real_test
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(labels, minlength=10).tolist() == TEST_CLASS_COUNTS
    assert abs(images.mean() - 33.79) < 0.01


def test_real_default_root_is_env(real_test, monkeypatch):
    monkeypatch.setenv("FASTCNN_DATA", str(_real_dir()))
    images, labels = load_mnist(split="test")
    np.testing.assert_array_equal(labels, real_test[1])
    np.testing.assert_array_equal(images, real_test[0])


def test_sha256_table_matches_sha256sums():
    sums_file = _real_dir() / "SHA256SUMS"
    if not sums_file.is_file():
        pytest.skip(f"no SHA256SUMS in {sums_file.parent}")
    listed = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            listed[name.lstrip("*")] = digest
    assert listed == data.SHA256
    assert sorted(data.SHA256) == sorted(GZ_NAMES)


def test_real_batches_one_epoch(real_test):
    images, labels = real_test
    seen = 0
    for x, y in iterate_batches(images, labels, 1000, seed=3):
        assert x.shape == (1000, 1, 28, 28) and x.dtype == np.float32
        assert y.dtype == np.int64
        seen += len(y)
    assert seen == 10000


# --------------------------------------------------------------------------- IDX reader

@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16),
                                        (0x0C, np.int32), (0x0D, np.float32),
                                        (0x0E, np.float64)])
def test_read_idx_round_trip(tmp_path, compress, code, dtype):
    rng = np.random.default_rng(code)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True, dtype=dtype)
    else:
        arr = rng.standard_normal((3, 4, 5)).astype(dtype)
    p = write(tmp_path / ("x.idx" + (".gz" if compress else "")), idx_bytes(arr, code), compress)
    out = read_idx(p)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_read_idx_mnist_like(tmp_path, compress):
    images, labels = synthetic(7)
    pi = write(tmp_path / "i", idx_bytes(images), compress)
    pl = write(tmp_path / "l", idx_bytes(labels), compress)
    np.testing.assert_array_equal(read_idx(pi), images)
    np.testing.assert_array_equal(read_idx(str(pl)), labels)


def test_read_idx_raw_content_with_gz_name(tmp_path):
    # e.g. a browser that transparently decompressed the download but kept the name
    labels = np.arange(10, dtype=np.uint8)
    p = write(tmp_path / "train-labels-idx1-ubyte.gz", idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(p), labels)


def test_read_idx_empty_dims(tmp_path):
    p = write(tmp_path / "e", idx_bytes(np.zeros((0, 28, 28), np.uint8)))
    assert read_idx(p).shape == (0, 28, 28)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_bad_magic(tmp_path, compress):
    payload = bytearray(idx_bytes(np.zeros(4, np.uint8)))
    payload[0] = 0x01
    p = write(tmp_path / "bad", bytes(payload), compress)
    with pytest.raises(IDXError, match=r"bad magic 0x01000801") as ei:
        read_idx(p)
    assert str(p) in str(ei.value)
    assert isinstance(ei.value, ValueError)


def test_bad_magic_gz_name_hint(tmp_path):
    p = write(tmp_path / "junk.gz", b"<html>404 Not Found</html>")
    with pytest.raises(IDXError, match=r"bad magic 0x3c68746d.*not gzip-compressed"):
        read_idx(p)


def test_unknown_dtype_code(tmp_path):
    p = write(tmp_path / "t", bytes([0, 0, 0x07, 1]) + struct.pack(">I", 2) + b"ab")
    with pytest.raises(IDXError, match=r"unknown data type code 0x07"):
        read_idx(p)


def test_zero_dims(tmp_path):
    p = write(tmp_path / "z", bytes([0, 0, 0x08, 0]))
    with pytest.raises(IDXError, match=r"number of dimensions is 0"):
        read_idx(p)


@pytest.mark.parametrize("content,msg", [
    (b"", r"too short for an IDX header: need 4 bytes, found 0"),
    (b"\x00\x00", r"too short for an IDX header: need 4 bytes, found 2"),
    (bytes([0, 0, 8, 3]) + struct.pack(">I", 60000), r"declares 3 dimensions .* only 4 bytes"),
])
def test_truncated_header(tmp_path, content, msg):
    p = write(tmp_path / "h", content)
    with pytest.raises(IDXError, match=msg):
        read_idx(p)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_truncated_payload(tmp_path, compress):
    head = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 60000, 28, 28)
    p = write(tmp_path / "train-images-idx3-ubyte", head + bytes(100), compress)
    with pytest.raises(IDXError, match=r"expected 47040000 bytes of data, found 100") as ei:
        read_idx(p)
    assert "truncated" in str(ei.value) and str(p) in str(ei.value)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_trailing_bytes(tmp_path, compress):
    payload = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3)) + b"xyz"
    p = write(tmp_path / "t", payload, compress)
    with pytest.raises(IDXError, match=r"expected 6 bytes of data, found 9 "
                                       r"\(3 unexpected trailing bytes\)"):
        read_idx(p)


def test_multibyte_truncated_counts_bytes(tmp_path):
    payload = idx_bytes(np.arange(4, dtype=np.int32), 0x0C)[:-2]
    p = write(tmp_path / "i32", payload)
    with pytest.raises(IDXError, match=r"expected 16 bytes of data, found 14"):
        read_idx(p)


def test_huge_declared_size_fails_cleanly(tmp_path):
    # a corrupt header claiming ~16 TiB must not try to allocate it
    head = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**32 - 1, 2**16, 2**8)
    for compress in (False, True):
        p = write(tmp_path / f"huge{int(compress)}", head + bytes(10), compress)
        with pytest.raises(IDXError, match=r"found 10$"):
            read_idx(p)


def _good_gz(tmp_path):
    images, _ = synthetic(50)
    return gzip.compress(idx_bytes(images), mtime=0)


def test_corrupt_gzip_deflate_stream(tmp_path):
    blob = bytearray(_good_gz(tmp_path))
    for i in range(20, 60):
        blob[i] ^= 0xFF
    p = write(tmp_path / "c.gz", bytes(blob))
    with pytest.raises(IDXError, match=r"corrupt gzip data") as ei:
        read_idx(p)
    assert str(p) in str(ei.value)


def test_corrupt_gzip_truncated(tmp_path):
    blob = _good_gz(tmp_path)
    p = write(tmp_path / "t.gz", blob[: len(blob) // 2])
    with pytest.raises(IDXError, match=r"corrupt gzip data \(EOFError"):
        read_idx(p)


def test_corrupt_gzip_crc(tmp_path):
    blob = bytearray(_good_gz(tmp_path))
    blob[-8] ^= 0x01   # CRC32 field of the trailer
    p = write(tmp_path / "crc.gz", bytes(blob))
    with pytest.raises(IDXError, match=r"corrupt gzip data .*CRC"):
        read_idx(p)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- load_mnist

@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_mnist_synthetic(tmp_path, split, compress):
    images, labels = synthetic(9)
    write_split(tmp_path, split, images, labels, compress)
    got_i, got_l = load_mnist(tmp_path, split)
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)
    assert got_i.dtype == np.uint8 and got_l.dtype == np.uint8
    assert sorted(os.listdir(tmp_path)) == sorted(
        f + (".gz" if compress else "") for f in data.FILES[split])  # nothing cached


def test_load_mnist_bad_split(tmp_path):
    with pytest.raises(ValueError, match=r"split must be 'train' or 'test', got 'val'"):
        load_mnist(tmp_path, "val")


def test_load_mnist_count_mismatch(tmp_path):
    images, labels = synthetic(9)
    write_split(tmp_path, "train", images, labels[:8])
    with pytest.raises(IDXError, match=r"label count 8 does not match image count 9"):
        load_mnist(tmp_path, "train")


def test_load_mnist_wrong_image_size(tmp_path):
    write_split(tmp_path, "test", np.zeros((3, 27, 28), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(IDXError, match=r"t10k-images-idx3-ubyte.gz.*\(N, 28, 28\).*\(3, 27, 28\)"):
        load_mnist(tmp_path, "test")


def test_load_mnist_wrong_dtype(tmp_path):
    img, lbl = data.FILES["test"]
    write(tmp_path / img, idx_bytes(np.zeros((3, 28, 28), np.float32), 0x0D))
    write(tmp_path / lbl, idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(IDXError, match=r"expected uint8 images.*float32"):
        load_mnist(tmp_path, "test")


def test_load_mnist_label_out_of_range(tmp_path):
    images, labels = synthetic(9)
    labels[4] = 10
    write_split(tmp_path, "train", images, labels)
    with pytest.raises(IDXError, match=r"label 10 at index 4 is outside 0..9"):
        load_mnist(tmp_path, "train")


def test_load_mnist_missing_files(tmp_path):
    images, labels = synthetic(3)
    write_split(tmp_path, "train", images, labels)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as ei:
        load_mnist(tmp_path, "train")
    msg = str(ei.value)
    assert str(tmp_path) in msg
    assert "train-labels-idx1-ubyte" in msg and "train-images" not in msg
    assert "download=True" in msg and "FASTCNN_DATA" in msg


def test_load_mnist_root_from_env(tmp_path, monkeypatch):
    images, labels = synthetic(5)
    write_split(tmp_path, "test", images, labels)
    monkeypatch.setenv("FASTCNN_DATA", str(tmp_path))
    np.testing.assert_array_equal(load_mnist(split="test")[1], labels)


def test_load_mnist_default_root_home(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTCNN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / ".cache" / "fastcnn" / "mnist")):
        load_mnist()
    root = tmp_path / ".cache" / "fastcnn" / "mnist"
    root.mkdir(parents=True)
    images, labels = synthetic(4)
    write_split(root, "train", images, labels)
    np.testing.assert_array_equal(load_mnist()[0], images)


# --------------------------------------------------------------------------- downloader

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.requests.append(self.path)
        entry = srv.routes.get(self.path)
        if entry is None:
            self.send_error(404, "Not Found")
            return
        body, mode = entry if isinstance(entry, tuple) else (entry, "ok")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncate":  # promise the full length, then hang up half way
            self.wfile.write(body[: len(body) // 2])
            return
        self.wfile.write(body)

    def log_message(self, format, *args):  # keep the test output quiet
        pass


class Server:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}
        self.httpd.requests = []
        self.httpd.lock = threading.Lock()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def mirror(self, prefix, files, mode="ok"):
        """Serve ``files`` (name -> bytes) under ``/prefix/``; return the mirror's base URL."""
        for name, body in files.items():
            self.httpd.routes[f"/{prefix}/{name}"] = (body, mode)
        return f"{self.base}/{prefix}/"

    @property
    def requests(self):
        return list(self.httpd.requests)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def fake_mnist(monkeypatch):
    """Small synthetic .gz files with the SHA256 table patched to match them."""
    blobs, sums = synthetic_gz_files()
    monkeypatch.setattr(data, "SHA256", sums)
    monkeypatch.setattr(data, "SIZES", {k: len(v) for k, v in blobs.items()})
    return blobs


def _refused_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def _corrupt(blobs):
    out = {}
    for k, v in blobs.items():
        b = bytearray(v)
        b[len(b) // 2] ^= 0x55
        out[k] = bytes(b)
    return out


def test_download_real_files(tmp_path, server):
    src = _real_dir()
    blobs = {}
    for name in GZ_NAMES:
        if not (src / name).is_file():
            pytest.skip(f"real MNIST: {src / name} missing")
        blobs[name] = (src / name).read_bytes()
    url = server.mirror("mnist", blobs)
    root = tmp_path / "new" / "dir"
    paths = download_mnist(root, mirrors=[url])
    assert [p.name for p in paths] == list(data.SHA256)
    assert sorted(os.listdir(root)) == sorted(GZ_NAMES)
    for name in GZ_NAMES:
        assert sha256(root / name) == data.SHA256[name]
    images, labels = load_mnist(root, "test")
    assert images.shape == (10000, 28, 28) and labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert sorted(server.requests) == sorted(f"/mnist/{n}" for n in GZ_NAMES)


def test_download_then_load(tmp_path, server, fake_mnist, monkeypatch):
    url = server.mirror("m", fake_mnist)
    monkeypatch.setattr(data, "MIRRORS", [url])
    images, labels = load_mnist(tmp_path, "test", download=True)
    assert images.shape == (8, 28, 28) and labels.shape == (8,)
    # only the test split was fetched
    assert sorted(os.listdir(tmp_path)) == ["t10k-images-idx3-ubyte.gz",
                                            "t10k-labels-idx1-ubyte.gz"]
    for name in os.listdir(tmp_path):
        assert sha256(tmp_path / name) == data.SHA256[name]
    n = len(server.requests)
    load_mnist(tmp_path, "test", download=True)
    assert len(server.requests) == n


def test_download_bad_mirror_then_good(tmp_path, server, fake_mnist):
    bad = server.mirror("bad", _corrupt(fake_mnist))
    good = server.mirror("good", fake_mnist)
    download_mnist(tmp_path, mirrors=[bad, good])
    assert sorted(os.listdir(tmp_path)) == sorted(GZ_NAMES)  # no temp files left
    for name in GZ_NAMES:
        assert (tmp_path / name).read_bytes() == fake_mnist[name]
    for name in GZ_NAMES:
        assert server.requests.count(f"/bad/{name}") == 1
        assert server.requests.count(f"/good/{name}") == 1
    np.testing.assert_array_equal(load_mnist(tmp_path, "train")[0].shape, (20, 28, 28))


def test_download_truncated_transfer_then_good(tmp_path, server, fake_mnist):
    short = server.mirror("short", fake_mnist, mode="truncate")
    good = server.mirror("good", fake_mnist)
    download_mnist(tmp_path, mirrors=[short, good], files=["train-labels-idx1-ubyte.gz"])
    assert os.listdir(tmp_path) == ["train-labels-idx1-ubyte.gz"]
    assert sha256(tmp_path / "train-labels-idx1-ubyte.gz") == data.SHA256[
        "train-labels-idx1-ubyte.gz"]


def test_download_all_mirrors_fail(tmp_path, server, fake_mnist):
    bad = server.mirror("bad", _corrupt(fake_mnist))
    short = server.mirror("short", fake_mnist, mode="truncate")
    missing = f"{server.base}/nothing/"
    refused = _refused_url()
    name = "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DownloadError) as ei:
        download_mnist(tmp_path, mirrors=[bad, short, missing, refused], files=[name],
                       timeout=5)
    msg = str(ei.value)
    assert f"could not download {name}" in msg
    assert f"{bad}{name}: DownloadError: SHA-256 mismatch" in msg
    assert f"{short}{name}: DownloadError: incomplete transfer" in msg
    assert f"{missing}{name}: HTTPError: HTTP Error 404" in msg
    assert f"{refused}{name}: URLError" in msg
    assert os.listdir(tmp_path) == []  # neither the final name nor a temp file


def test_download_existing_good_file_not_fetched(tmp_path, server, fake_mnist):
    url = server.mirror("m", fake_mnist)
    download_mnist(tmp_path, mirrors=[url])
    assert len(server.requests) == 4
    mtimes = {n: (tmp_path / n).stat().st_mtime_ns for n in GZ_NAMES}
    download_mnist(tmp_path, mirrors=[url])
    assert len(server.requests) == 4
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in GZ_NAMES} == mtimes
    # force fetches again, and the result is still verified and complete
    download_mnist(tmp_path, mirrors=[url], force=True)
    assert len(server.requests) == 8
    assert sorted(os.listdir(tmp_path)) == sorted(GZ_NAMES)


def test_download_existing_bad_file_reported(tmp_path, server, fake_mnist):
    url = server.mirror("m", fake_mnist)
    name = "train-labels-idx1-ubyte.gz"
    (tmp_path / name).write_bytes(b"not mnist")
    with pytest.raises(DownloadError, match=r"existing file .*has SHA-256 .*force=True"):
        download_mnist(tmp_path, mirrors=[url], files=[name])
    assert (tmp_path / name).read_bytes() == b"not mnist"
    assert server.requests == []
    download_mnist(tmp_path, mirrors=[url], files=[name], force=True)
    assert (tmp_path / name).read_bytes() == fake_mnist[name]
    assert os.listdir(tmp_path) == [name]


def test_download_force_failure_keeps_existing(tmp_path, server, fake_mnist):
    name = "t10k-labels-idx1-ubyte.gz"
    (tmp_path / name).write_bytes(fake_mnist[name])
    with pytest.raises(DownloadError):
        download_mnist(tmp_path, mirrors=[f"{server.base}/none/"], files=[name], force=True)
    assert (tmp_path / name).read_bytes() == fake_mnist[name]
    assert os.listdir(tmp_path) == [name]


def test_download_mirror_without_trailing_slash(tmp_path, server, fake_mnist):
    url = server.mirror("m", fake_mnist).rstrip("/")
    download_mnist(tmp_path, mirrors=[url], files="t10k-labels-idx1-ubyte.gz")
    assert os.listdir(tmp_path) == ["t10k-labels-idx1-ubyte.gz"]


def test_download_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown MNIST file"):
        download_mnist(tmp_path, mirrors=["http://127.0.0.1:9/"], files=["x.gz"])
    with pytest.raises(ValueError, match="no mirrors"):
        download_mnist(tmp_path, mirrors=[])


def test_mirrors_table():
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in data.MIRRORS
    assert "https://storage.googleapis.com/cvdf-datasets/mnist/" in data.MIRRORS
    assert all(m.endswith("/") for m in data.MIRRORS)
    assert sorted(data.SHA256) == sorted(GZ_NAMES)
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in data.SHA256.values())


# --------------------------------------------------------------------------- batches

def _ids_data(n=23, seed=1):
    """Images whose pixels encode the sample id, labels = ids (so batches can be checked)."""
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return images, np.arange(n)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("batch_size", [1, 5, 23, 100])
def test_batches_cover_all_once(shuffle, batch_size):
    images, ids = _ids_data()
    seen = []
    for x, y in iterate_batches(images, ids, batch_size, shuffle=shuffle, seed=7):
        assert x.dtype == np.float32 and x.shape == (len(y), 1, 28, 28)
        assert y.dtype == np.int64
        assert 1 <= len(y) <= batch_size
        np.testing.assert_array_equal(x[:, 0], images[y] / np.float32(255))
        seen.extend(y.tolist())
    assert sorted(seen) == list(range(23))
    if not shuffle:
        assert seen == list(range(23))


def test_batches_scale_exact():
    images = np.array([[[0, 1, 128, 255]]], dtype=np.uint8)
    (x, y), = list(iterate_batches(images, np.array([3], np.uint8), 4))
    assert x.shape == (1, 1, 1, 4)
    np.testing.assert_array_equal(x.ravel(), np.array([0, 1, 128, 255], np.float32) / 255)
    assert x.max() == 1.0 and x.min() == 0.0
    assert y.tolist() == [3] and y.dtype == np.int64


def _order(seed, epoch, n=50, bs=8):
    images, ids = _ids_data(n)
    return np.concatenate([y for _, y in iterate_batches(images, ids, bs, seed=seed,
                                                          epoch=epoch)])


def test_batches_deterministic_and_epoch_dependent():
    np.testing.assert_array_equal(_order(0, 0), _order(0, 0))
    np.testing.assert_array_equal(_order(5, 3), _order(5, 3))
    orders = [_order(0, e).tolist() for e in range(5)]
    assert len({tuple(o) for o in orders}) == 5
    assert _order(0, 1).tolist() != _order(1, 1).tolist()
    assert _order(0, 0).tolist() != list(range(50))


def test_batches_drop_last():
    images, ids = _ids_data(10)
    sizes = [len(y) for _, y in iterate_batches(images, ids, 4, drop_last=False)]
    assert sizes == [4, 4, 2]
    batches = list(iterate_batches(images, ids, 4, drop_last=True))
    assert [len(y) for _, y in batches] == [4, 4]
    assert len(set(np.concatenate([y for _, y in batches]).tolist())) == 8
    assert [len(y) for _, y in iterate_batches(images, ids, 5, drop_last=True)] == [5, 5]
    assert list(iterate_batches(images, ids, 11, drop_last=True)) == []


def test_batches_do_not_modify_input():
    images, ids = _ids_data()
    before = images.copy()
    for x, _ in iterate_batches(images, ids, 4):
        x[...] = -1
    np.testing.assert_array_equal(images, before)


def test_batches_argument_errors():
    images, ids = _ids_data(6)
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(images, ids, 0)
    with pytest.raises(ValueError, match="labels must have shape"):
        iterate_batches(images, ids[:5], 2)
    with pytest.raises(TypeError, match="uint8"):
        iterate_batches(images.astype(np.float32), ids, 2)
    with pytest.raises(ValueError, match="epoch"):
        iterate_batches(images, ids, 2, epoch=-1)
    with pytest.raises(TypeError, match="integers"):
        iterate_batches(images, ids.astype(float), 2)


def test_dataloader_advances_epochs():
    images, ids = _ids_data(30)
    loader = DataLoader(images, ids, 7, seed=2)
    assert len(loader) == 5
    e0 = np.concatenate([y for _, y in loader])
    e1 = np.concatenate([y for _, y in loader])
    assert loader.epoch == 2
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(30))
    assert e0.tolist() != e1.tolist()
    np.testing.assert_array_equal(e0, _order_of(images, ids, 7, 2, 0))
    np.testing.assert_array_equal(e1, _order_of(images, ids, 7, 2, 1))
    assert len(DataLoader(images, ids, 7, drop_last=True)) == 4


def _order_of(images, ids, bs, seed, epoch):
    return np.concatenate([y for _, y in iterate_batches(images, ids, bs, seed=seed,
                                                          epoch=epoch)])


def test_to_float():
    images, _ = synthetic(3)
    x = to_float(images)
    assert x.shape == (3, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0], images.astype(np.float32) / 255)
    assert to_float(images[:, None]).shape == (3, 1, 28, 28)
    with pytest.raises(TypeError):
        to_float(x)


def test_download_with_progress_flag(tmp_path, server, fake_mnist, capsys):
    # tqdm is used only on a TTY; under pytest (not a TTY) the bar stays silent
    url = server.mirror("m", fake_mnist)
    download_mnist(tmp_path, mirrors=[url], files=["t10k-images-idx3-ubyte.gz"], progress=True)
    assert os.listdir(tmp_path) == ["t10k-images-idx3-ubyte.gz"]
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- CIFAR-10, Fashion-MNIST: helpers

REC = data.CIFAR10_RECORD


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
    x, y = data.load_cifar10(cifar10_root(), "train")
    assert x.shape == (50000, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.uint8
    # published facts (the data README): counts, first labels, first pixels, channel means
    assert np.bincount(y).tolist() == [5000] * 10
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert x[0, :, 0, 0].tolist() == [59, 62, 63] and x[0, 0, 0, :3].tolist() == [59, 43, 50]
    np.testing.assert_allclose(x.reshape(50000, 3, -1).mean(axis=(0, 2)) / 255,
                               [0.49139968, 0.48215841, 0.44653091], atol=1e-7)


def test_real_cifar10_partial_test_file_is_named_and_reported(capsys):
    root = cifar10_root()
    with pytest.raises(FileNotFoundError, match="test_batch_first1000.bin.gz.*test_file="):
        data.load_cifar10(root, "test")
    with pytest.warns(UserWarning, match="read 1000 records.*partial"):
        x, y = data.load_cifar10(root, "test", test_file="test_batch_first1000.bin.gz", verbose=True)
    assert x.shape == (1000, 3, 32, 32)
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert x[0, 0, 0, :3].tolist() == [158, 159, 165]
    assert "read 1000 records" in capsys.readouterr().err


def test_real_cifar10_sha256_table_matches_the_files():
    root = cifar10_root()
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

def test_fashion_mnist_download_md5_verified(tmp_path, server, monkeypatch):
    blobs = gz_blobs(train=6, test=4)
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


def test_cifar10_download_extracts_verified_batches(tmp_path, server, monkeypatch, small_batches):
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


def test_cifar10_download_rejects_bad_archive_and_bad_member(tmp_path, server, monkeypatch):
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
