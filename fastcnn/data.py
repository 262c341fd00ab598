"""MNIST: IDX reading, verified downloading and mini-batch iteration.

The four standard MNIST files are IDX files, each distributed gzip-compressed::

    train-images-idx3-ubyte   60000 x 28 x 28 uint8
    train-labels-idx1-ubyte   60000 uint8
    t10k-images-idx3-ubyte    10000 x 28 x 28 uint8
    t10k-labels-idx1-ubyte    10000 uint8

:func:`load_mnist` reads them (``.gz`` or raw) from a directory: the ``root`` argument, else the
environment variable ``FASTCNN_DATA``, else ``~/.cache/fastcnn/mnist``.  With ``download=True``
missing files are fetched by :func:`download_mnist` from :data:`MIRRORS` and checked against
:data:`SHA256`.  Nothing is written to disk except downloaded files.

:func:`iterate_batches` (or :class:`DataLoader`) turns the ``uint8`` arrays into float32
mini-batches ``(B, 1, 28, 28)`` in ``[0, 1]`` with int64 labels, converting one batch at a time.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from numpy.typing import ArrayLike

#: A file or directory name.
PathLike = Union[str, "os.PathLike[str]"]
#: ``(images, labels)``.
Split = tuple[np.ndarray, np.ndarray]

__all__ = [
    "IDXError",
    "DownloadError",
    "MIRRORS",
    "SHA256",
    "FILES",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "load_dataset",
    "data_root",
    "download_mnist",
    "download_fashion_mnist",
    "download_cifar10",
    "DATASETS",
    "CLASSES",
    "to_float",
    "iterate_batches",
    "DataLoader",
]

#: Base URLs tried in order by :func:`download_mnist`; a file's URL is base + file name.
#: Every file is checked against :data:`SHA256`, so a plain-HTTP mirror cannot inject data.
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

#: SHA-256 of the four original gzipped MNIST files (the MD5s of these files equal the
#: published ones: f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d...).
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

#: Size in bytes of each file in :data:`SHA256`: a download stops there (a mirror sending
#: more, or endless data, fails), and a ``Content-Length`` that differs is refused at once.
SIZES = {
    "train-images-idx3-ubyte.gz": 9912422,
    "train-labels-idx1-ubyte.gz": 28881,
    "t10k-images-idx3-ubyte.gz": 1648877,
    "t10k-labels-idx1-ubyte.gz": 4542,
}

#: Images in each standard split: a file claiming more is refused from its header alone.
SPLIT_SIZES = {"train": 60000, "test": 10000}

#: Uncompressed base names of the (images, labels) files of each split.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_ENV_VAR = "FASTCNN_DATA"
_CACHE = Path("~") / ".cache" / "fastcnn"

#: Dataset names (also the sub-directory names under a data root, see :func:`data_root`).
DATASETS = ("mnist", "fashion-mnist", "cifar10")
_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}

#: Class names in label order.
CLASSES = {
    "mnist": [str(i) for i in range(10)],
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
}

#: Fashion-MNIST: the official download location (Zalando Research) and the GitHub copy.
FASHION_MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
]
#: MD5 of the four gzipped Fashion-MNIST files as published by Zalando Research (README of
#: github.com/zalandoresearch/fashion-mnist, also torchvision's ``FashionMNIST.resources``).
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
#: Sizes in bytes of the files in :data:`FASHION_MD5` (as :data:`SIZES` for MNIST).
FASHION_SIZES = {
    "train-images-idx3-ubyte.gz": 26421880,
    "train-labels-idx1-ubyte.gz": 29515,
    "t10k-images-idx3-ubyte.gz": 4422102,
    "t10k-labels-idx1-ubyte.gz": 5148,
}

#: CIFAR-10: the official binary archive (www.cs.toronto.edu/~kriz/cifar.html) and its
#: published MD5; the archive holds ``cifar-10-batches-bin/<name>`` for the names below.
CIFAR10_URLS = ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_ARCHIVE_SIZE = 170052171
#: SHA-256 of each uncompressed binary batch, as published with the per-file checksums of the
#: official archive's members (e.g. torchvision-ruby's ``cifar10.rb``); every file read or
#: extracted is checked against its entry on download.
CIFAR10_SHA256 = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}
CIFAR10_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
#: One CIFAR-10 record: a label byte, then 1024 red, 1024 green and 1024 blue bytes.
CIFAR10_RECORD = 1 + 3 * 32 * 32
CIFAR10_BATCH_RECORDS = 10000

# IDX type codes (third magic byte); all multi-byte types are big-endian on disk.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24          # bytes per read when loading IDX payloads
_NET_CHUNK = 1 << 20      # bytes per read when downloading


class IDXError(ValueError):
    """A file is not a valid IDX file (or not valid MNIST data).

    Attributes
    ----------
    path : str
        The offending file.
    """

    def __init__(self, path: PathLike, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class DownloadError(OSError):
    """A file could not be downloaded, or an existing file failed verification."""


# --------------------------------------------------------------------------- IDX reading

#: Deflate expands at most 1032:1, so a gzip file of C bytes holds at most this many times C.
_GZIP_MAX_RATIO = 1032


def _readinto_exact(f, buf):
    """Fill the writable buffer ``buf`` from ``f`` in bounded reads; return the bytes read."""
    view, pos = memoryview(buf).cast("B"), 0
    while pos < len(view):
        n = f.readinto(view[pos:pos + _CHUNK])
        if not n:
            break
        pos += n
    return pos


def _count_rest(f, limit=_CHUNK):
    """Bytes left in ``f``, counting at most ``limit`` (a stream may be endless)."""
    n = 0
    while n <= limit:
        chunk = f.read(min(_CHUNK, limit + 1 - n))
        if not chunk:
            return n, False
        n += len(chunk)
    return n, True


def _parse_idx(f, path, hint, capacity, expect=None):
    """Parse an IDX stream.  ``capacity``: the most payload bytes the file can hold (its size
    when raw, ``_GZIP_MAX_RATIO`` times it when compressed); ``expect(dtype, dims)`` may refuse
    the header.  Both are checked before any payload is read or allocated."""
    head = f.read(4)
    if len(head) < 4:
        raise IDXError(path, f"too short for an IDX header: need 4 bytes, found {len(head)}{hint}")
    if head[0] != 0 or head[1] != 0:
        raise IDXError(path, f"bad magic 0x{head.hex()}: an IDX file starts with two zero bytes{hint}")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise IDXError(path, f"bad magic 0x{head.hex()}: unknown data type code 0x{code:02x} "
                             f"(known: {known})")
    if ndim == 0:
        raise IDXError(path, f"bad magic 0x{head.hex()}: number of dimensions is 0")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise IDXError(path, f"header declares {ndim} dimensions ({4 * ndim} bytes of sizes) "
                             f"but only {len(raw_dims)} bytes follow the magic number")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    dtype = _IDX_DTYPES[code]
    nbytes = dtype.itemsize
    for d in dims:
        nbytes *= d
    if expect is not None:
        expect(dtype, dims)
    if nbytes > capacity:
        # the payload cannot be there: count what is (bounded), and never allocate nbytes
        found, more = _count_rest(f, min(capacity, _CHUNK))
        raise IDXError(path, f"truncated payload: header shape {dims} of {dtype.name} -> expected {nbytes} "
                             f"bytes of data, found {'more than ' if more else ''}{found}")
    buf = np.empty(nbytes, dtype=np.uint8)
    found = _readinto_exact(f, buf)
    if found < nbytes:
        raise IDXError(path, f"truncated payload: header shape {dims} of {dtype.name} -> "
                             f"expected {nbytes} bytes of data, found {found}")
    extra, more = _count_rest(f)
    if extra:
        found = f"{'more than ' if more else ''}{nbytes + extra}"
        raise IDXError(path, f"trailing data: header shape {dims} of {dtype.name} -> "
                             f"expected {nbytes} bytes of data, found {found} "
                             f"({'more than ' if more else ''}{extra} unexpected trailing bytes)")
    arr = buf.view(dtype).reshape(dims)
    if not dtype.isnative and dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def read_idx(path: PathLike, expect: Callable[[np.dtype, tuple[int, ...]], None] | None = None) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw.

    Compression is detected from the content (gzip magic ``1f 8b``), not the name.  The header
    is validated: two zero bytes, a known type code (``0x08`` uint8, ``0x09`` int8, ``0x0B``
    int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64; big-endian on disk), at least one
    dimension, and a payload of exactly ``prod(dims) * itemsize`` bytes.

    Memory is bounded by what the file can hold: a header declaring more payload than the file
    (or, compressed, 1032 times the file: deflate's limit) is refused before anything is
    allocated, and data is read in bounded chunks, never past the declared size (+ a bounded
    count of trailing bytes).

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.
    expect : callable(dtype, dims), optional
        Called with the header's dtype and dimensions before the payload is read; raises
        :class:`IDXError` to refuse a header the file type does not allow (e.g. more images
        than the split has).

    Returns
    -------
    numpy.ndarray
        Writable array of shape ``dims`` (from the header) in native byte order; for MNIST
        ``uint8 (N, 28, 28)`` images or ``uint8 (N,)`` labels.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    IDXError
        (a :class:`ValueError`) naming the file and the defect: bad magic, unknown type code,
        truncated header, truncated payload, trailing bytes, or corrupt gzip data.
    """
    path = os.fspath(path)
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        size = os.fstat(raw.fileno()).st_size
        if not is_gzip:
            hint = (" (the name ends in .gz but the file is not gzip-compressed)"
                    if path.endswith(".gz") else "")
            return _parse_idx(raw, path, hint, size, expect)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _parse_idx(f, path, "", size * _GZIP_MAX_RATIO, expect)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise IDXError(path, f"corrupt gzip data ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- MNIST loading

def data_root(name: str, root: PathLike | None = None) -> Path:
    """The directory :func:`load_mnist`, :func:`load_fashion_mnist` and :func:`load_cifar10`
    read dataset ``name`` (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``) from.

    One setting serves every dataset: ``root`` if given, else the environment variable
    ``FASTCNN_DATA``, is either a parent directory holding one sub-directory per dataset
    (``<root>/mnist``, ``<root>/fashion-mnist``, ``<root>/cifar10``) or the dataset's own
    directory (so ``FASTCNN_DATA`` pointing at an MNIST directory keeps working): the
    sub-directory is used when it exists.  Without either: ``~/.cache/fastcnn/<name>``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    given = root if root is not None else os.environ.get(_ENV_VAR)
    if not given:
        return (_CACHE / name).expanduser()
    base = Path(given).expanduser()
    sub = base / name
    return sub if sub.is_dir() else base


def _resolve_root(root, name="mnist"):
    return data_root(name, root)


def _find(root, base):
    """Path of ``base.gz`` or ``base`` under ``root`` (gz preferred), or None."""
    for name in (base + ".gz", base):
        p = root / name
        if p.is_file():
            return p
    return None


def _expect(path, what, item_shape, max_items):
    """An ``expect`` for :func:`read_idx`: uint8 ``(N,) + item_shape`` with ``N <= max_items``."""
    shape = "(N, " + ", ".join(map(str, item_shape)) + ")" if item_shape else "(N,)"

    def check(dtype, dims):
        if dtype != np.uint8 or tuple(dims[1:]) != tuple(item_shape) or dims[0] > max_items:
            raise IDXError(path, f"expected uint8 {what} of shape {shape} with N <= {max_items}, "
                                 f"found {dtype.name} {dims} (header)")
    return check


def load_mnist(root: PathLike | None = None, split: str = "train", download: bool = False) -> Split:
    """Load one MNIST split from the four standard IDX files.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Directory holding the files (each as ``name.gz`` or raw ``name``), or a parent of an
        ``mnist`` directory (see :func:`data_root`).  Defaults to the environment variable
        ``FASTCNN_DATA``, then ``~/.cache/fastcnn/mnist``.
    split : {"train", "test"}
        ``"train"`` (60000 images) or ``"test"`` (the 10000 ``t10k`` images).
    download : bool
        Fetch missing files of this split into ``root`` with :func:`download_mnist`
        (SHA-256 verified).  Files already present are used as they are.

    Returns
    -------
    images : numpy.ndarray
        ``uint8``, shape ``(N, 28, 28)``, pixel values 0..255.
    labels : numpy.ndarray
        ``uint8``, shape ``(N,)``, values 0..9.

    Raises
    ------
    ValueError
        If ``split`` is not ``"train"`` or ``"test"``.
    FileNotFoundError
        If a file is missing and ``download`` is false.
    IDXError
        If a file is malformed, the image and label counts differ, the images are not 28x28
        uint8, or a label is outside 0..9.
    DownloadError
        If ``download`` is true and a file cannot be fetched.
    """
    return _load_idx_dataset("mnist", root, split, download, download_mnist)


def load_fashion_mnist(root: PathLike | None = None, split: str = "train", download: bool = False) -> Split:
    """Load one Fashion-MNIST split: the same four IDX files, names and checks as
    :func:`load_mnist` (60000 training and 10000 test images, 28x28, labels 0..9 in the order
    of :data:`CLASSES` ``["fashion-mnist"]``).  ``root`` defaults as in :func:`data_root`
    (``~/.cache/fastcnn/fashion-mnist``); ``download=True`` uses :func:`download_fashion_mnist`
    (MD5 verified against the published checksums)."""
    return _load_idx_dataset("fashion-mnist", root, split, download, download_fashion_mnist)


def _load_idx_dataset(name, root, split, download, downloader):
    what = _TITLES[name]
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _resolve_root(root, name)
    bases = FILES[split]
    paths = [_find(root, b) for b in bases]
    missing = [b for b, p in zip(bases, paths) if p is None]
    if missing and download:
        downloader(root, files=[b + ".gz" for b in missing])
        paths = [_find(root, b) for b in bases]
        missing = [b for b, p in zip(bases, paths) if p is None]
    if missing:
        names = ", ".join(f"{b}.gz (or {b})" for b in missing)
        raise FileNotFoundError(
            f"{what} {split} file(s) not found in directory {str(root)!r}: {names}. "
            f"Pass download=True to fetch them, or set {_ENV_VAR} (or root=) to a directory "
            f"holding the standard {what} IDX files.")
    img_path, lbl_path = paths
    images = read_idx(img_path, expect=_expect(img_path, "images", (28, 28), SPLIT_SIZES[split]))
    labels = read_idx(lbl_path, expect=_expect(lbl_path, "labels", (), SPLIT_SIZES[split]))
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IDXError(img_path, f"expected uint8 images of shape (N, 28, 28), "
                                 f"found {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IDXError(lbl_path, f"expected uint8 labels of shape (N,), "
                                 f"found {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise IDXError(lbl_path, f"label count {labels.shape[0]} does not match image count "
                                 f"{images.shape[0]} in {img_path}")
    if labels.size and labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise IDXError(lbl_path, f"label {int(labels[bad])} at index {bad} is outside 0..9")
    return images, labels


# --------------------------------------------------------------------------- CIFAR-10

class CIFARError(ValueError):
    """A file is not valid CIFAR-10 binary data (names the file and the defect)."""

    def __init__(self, path: PathLike, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


def read_cifar10_batch(path: PathLike, expect_records: int | None = None) -> Split:
    """Read one CIFAR-10 binary batch file (raw or gzip-compressed, detected by content).

    Returns ``images uint8 (N, 3, 32, 32)`` and ``labels uint8 (N,)``.  The file must hold a
    whole number of 3073-byte records, every label must be 0..9, and with ``expect_records``
    the record count must equal it; otherwise :class:`CIFARError` names the file and defect.
    """
    path = os.fspath(path)
    cap = CIFAR10_BATCH_RECORDS * CIFAR10_RECORD  # an official batch; a larger payload is refused
    data = np.empty(cap + 1, np.uint8)  # bounded: a gzip bomb is read only this far
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        try:
            if is_gzip:
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    n = _readinto_exact(f, data)
            else:
                n = _readinto_exact(raw, data)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise CIFARError(path, f"corrupt gzip data ({type(exc).__name__}: {exc})") from exc
    if n > cap:
        raise CIFARError(path, f"more than {cap} bytes ({CIFAR10_BATCH_RECORDS} records, an official batch); "
                               f"not a CIFAR-10 binary batch")
    if n == 0:
        raise CIFARError(path, "empty file (no CIFAR-10 records)")
    if n % CIFAR10_RECORD:
        raise CIFARError(path, f"{n} bytes is not a whole number of {CIFAR10_RECORD}-byte records "
                               f"({n // CIFAR10_RECORD} records and {n % CIFAR10_RECORD} extra bytes); "
                               f"truncated or not a CIFAR-10 binary batch")
    count = n // CIFAR10_RECORD
    if expect_records is not None and count != expect_records:
        raise CIFARError(path, f"holds {count} records, expected {expect_records}")
    buf = data[:n].reshape(count, CIFAR10_RECORD)
    labels = buf[:, 0].copy()
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise CIFARError(path, f"label {int(labels[bad])} of record {bad} is outside 0..9 "
                               f"(not a CIFAR-10 batch; CIFAR-100 records are 3074 bytes)")
    images = buf[:, 1:].reshape(count, 3, 32, 32).copy()
    return images, labels


def load_cifar10(root: PathLike | None = None, split: str = "train", download: bool = False, *,
                 test_file: str | None = None, verbose: bool = False) -> Split:
    """Load one CIFAR-10 split from the official *binary* batches (never pickle).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Directory holding ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin``
        (each raw or as ``.bin.gz``), or a parent of a ``cifar10`` directory; default as in
        :func:`data_root` (``~/.cache/fastcnn/cifar10``).
    split : {"train", "test"}
        ``"train"``: the five training batches in order (50000 images); ``"test"``:
        ``test_batch.bin`` (10000 images).
    download : bool
        Fetch missing files with :func:`download_cifar10` (the official archive, MD5 checked,
        each extracted batch SHA-256 checked).
    test_file : str or os.PathLike, optional
        With ``split="test"``: read this file instead of ``test_batch.bin`` (a name under
        ``root`` or a path), e.g. a partial test set such as ``test_batch_first1000.bin.gz``.
        Any whole number of records is accepted; a :class:`UserWarning` says how many of the
        official 10000 were read.
    verbose : bool
        Also print what was read (files, record counts) to stderr.

    Returns
    -------
    images : numpy.ndarray
        ``uint8 (N, 3, 32, 32)``, channels R, G, B.
    labels : numpy.ndarray
        ``uint8 (N,)``, 0..9 in the order of :data:`CLASSES` ``["cifar10"]``.

    Raises
    ------
    FileNotFoundError
        A file is missing (the message names partial test files found instead, if any).
    CIFARError
        (a :class:`ValueError`) A file is not whole 3073-byte records, a label is outside
        0..9, or an official batch does not hold exactly 10000 records.
    """
    import sys
    import warnings

    if split not in CIFAR10_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if test_file is not None and split != "test":
        raise ValueError("test_file= applies to split='test' only")
    folder = data_root("cifar10", root)
    if test_file is not None:
        p = Path(test_file).expanduser()
        p = p if p.is_absolute() or p.exists() else folder / p
        if not p.is_file():
            raise FileNotFoundError(f"CIFAR-10 test file {str(p)!r} not found")
        images, labels = read_cifar10_batch(p)
        msg = (f"CIFAR-10 test: read {len(labels)} records from {str(p)!r}"
               + ("" if len(labels) == CIFAR10_BATCH_RECORDS else
                  f" (a partial test set: the official test_batch.bin has {CIFAR10_BATCH_RECORDS})"))
        if len(labels) != CIFAR10_BATCH_RECORDS:
            warnings.warn(msg, stacklevel=2)
        if verbose:
            print(msg, file=sys.stderr)
        return images, labels
    names = CIFAR10_FILES[split]
    paths = [_find(folder, n) for n in names]
    if any(p is None for p in paths) and download:
        download_cifar10(folder)
        paths = [_find(folder, n) for n in names]
    missing = [n for n, p in zip(names, paths) if p is None]
    if missing:
        partial = sorted(q.name for q in folder.glob("test_batch*") if q.is_file()) if folder.is_dir() else []
        hint = ""
        if split == "test" and partial:
            hint = (f" Found {', '.join(partial)} instead: to use a partial test set, name it "
                    f"with test_file= (command line: --test-file NAME).")
        raise FileNotFoundError(
            f"CIFAR-10 {split} file(s) not found in directory {str(folder)!r}: "
            f"{', '.join(n + '(.gz)' for n in missing)}.{hint} Pass download=True to fetch the "
            f"official binary archive, or set {_ENV_VAR} (or root=) to a directory holding the "
            f"binary batches.")
    parts = [read_cifar10_batch(p, CIFAR10_BATCH_RECORDS) for p in paths]
    images = np.concatenate([x for x, _ in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([y for _, y in parts]) if len(parts) > 1 else parts[0][1]
    if verbose:
        print(f"CIFAR-10 {split}: read {len(labels)} records from {len(paths)} file(s) in "
              f"{str(folder)!r}", file=sys.stderr)
    return images, labels


def _writer(blob: bytes) -> Callable[[Any], object]:
    """``atomic_write``'s writer of ``blob``."""
    return lambda f: f.write(blob)


def download_cifar10(root: PathLike | None = None, urls: Sequence[str] | None = None, *, timeout: float = 60.0,
                     progress: bool = False, force: bool = False) -> list[Path]:
    """Download the official CIFAR-10 binary archive, check its MD5, and extract the six
    batches into ``root`` as ``data_batch_N.bin`` / ``test_batch.bin``.

    The archive goes through the verified, atomic downloader of :func:`download_mnist`
    (temporary file, MD5 :data:`CIFAR10_ARCHIVE_MD5`, rename).  Only the six expected regular
    members are read from it (no path from the archive is ever used), each is checked
    against :data:`CIFAR10_SHA256` and written atomically.  Files already present with the
    right SHA-256 are kept; the archive is deleted afterwards.

    Returns
    -------
    list of pathlib.Path
        The six batch files.
    """
    import tarfile

    from .model import atomic_write

    folder = data_root("cifar10", root)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {n: folder / n for n in CIFAR10_SHA256}
    todo = {n: p for n, p in wanted.items()
            if force or not (p.is_file() and _sha256_file(p) == CIFAR10_SHA256[n])}
    if not todo:
        return list(wanted.values())
    urls = list(CIFAR10_URLS if urls is None else urls)
    mirrors = [u.rsplit("/", 1)[0] + "/" for u in urls]
    names = {u.rsplit("/", 1)[1] for u in urls}
    if names != {CIFAR10_ARCHIVE}:
        raise ValueError(f"CIFAR-10 URLs must end in /{CIFAR10_ARCHIVE}, got {urls}")
    (archive,) = _download_files(folder, mirrors, {CIFAR10_ARCHIVE: CIFAR10_ARCHIVE_MD5}, "md5",
                                 "CIFAR-10", sizes={CIFAR10_ARCHIVE: CIFAR10_ARCHIVE_SIZE}, force=True,
                                 files=None, timeout=timeout,
                                 progress=progress)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            for name, dest in todo.items():
                if name not in members:
                    raise DownloadError(f"{archive}: no member {name} in the CIFAR-10 archive")
                member = tar.extractfile(members[name])
                blob = member.read() if member is not None else b""  # (regular files only)
                digest = hashlib.sha256(blob).hexdigest()
                if digest != CIFAR10_SHA256[name]:
                    raise DownloadError(f"{archive}: member {name} has SHA-256 {digest}, "
                                        f"expected {CIFAR10_SHA256[name]}")
                atomic_write(dest, _writer(blob))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, DownloadError):
            raise
        raise DownloadError(f"{archive}: cannot read the CIFAR-10 archive ({exc})") from exc
    finally:
        archive.unlink(missing_ok=True)
    return list(wanted.values())


def download_fashion_mnist(root: PathLike | None = None, mirrors: Sequence[str] | None = None, force: bool = False,
                           *, files: Sequence[str] | None = None, timeout: float = 30.0,
                           progress: bool = False) -> list[Path]:
    """As :func:`download_mnist` for Fashion-MNIST (:data:`FASHION_MIRRORS`, checked against
    the published MD5s :data:`FASHION_MD5`)."""
    return _download_files(_resolve_root(root, "fashion-mnist"),
                           FASHION_MIRRORS if mirrors is None else mirrors, FASHION_MD5, "md5",
                           "Fashion-MNIST", sizes=FASHION_SIZES, force=force, files=files, timeout=timeout,
                           progress=progress)


_LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}


def load_dataset(name: str, root: PathLike | None = None, split: str = "train", download: bool = False,
                 **kw: Any) -> Split:
    """``load_mnist`` / ``load_fashion_mnist`` / ``load_cifar10`` by name (see :data:`DATASETS`);
    images come back as ``uint8 (N, C, H, W)`` (a channel axis is added to the MNIST-style
    ``(N, 28, 28)``)."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    images, labels = _LOADERS[name](root, split, download, **kw)
    if images.ndim == 3:
        images = images[:, None]
    return images, labels


# --------------------------------------------------------------------------- downloading

_ALGO_NAMES = {"sha256": "SHA-256", "md5": "MD5"}


def _sha256_file(path, algo="sha256"):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_NET_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _progress_bar(enabled, total, desc):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: tqdm switches itself off when the output is not a TTY
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=None, leave=False)


def _fetch(opener, url, dest, expected, timeout, progress, algo="sha256", *, size):
    """Download ``url`` to ``dest`` through a temp file in the same directory.

    ``expected`` is the hex digest under ``algo`` (a :mod:`hashlib` name).  ``size`` is the
    file's known length in bytes: a ``Content-Length`` that differs is refused before the body
    is read, and the body is read only up to ``size + 1`` bytes (a mirror that sends more, or
    endless data, fails at once).  The temp file is hashed while written, fsynced, verified,
    then renamed over ``dest``; on any failure it is removed and the exception propagates."""
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part",
                                      delete=False)
    done = False
    bar = None
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "fastcnn-data/1"})
        with opener.open(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if length is not None and length != size:
                raise DownloadError(f"the mirror announces {length} bytes; {dest.name} has {size}")
            bar = _progress_bar(progress, size, dest.name)
            h = hashlib.new(algo)
            got = 0
            while True:
                chunk = resp.read(min(_NET_CHUNK, size + 1 - got))
                if not chunk:
                    break
                if got + len(chunk) > size:
                    raise DownloadError(f"the mirror sent more than the {size} bytes of {dest.name}; "
                                        f"stopped reading")
                tmp.write(chunk)
                h.update(chunk)
                got += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        if got != size:
            raise DownloadError(f"incomplete transfer: received {got} of {size} bytes")
        tmp.flush()
        os.fsync(tmp.fileno())
        tmp.close()
        digest = h.hexdigest()
        if digest != expected:
            raise DownloadError(f"{_ALGO_NAMES.get(algo, algo)} mismatch: got {digest}, expected {expected} "
                                f"({got} bytes received)")
        os.replace(tmp.name, dest)
        done = True
    finally:
        if bar is not None:
            bar.close()
        if not done:
            tmp.close()
            try:
                os.unlink(tmp.name)
            except FileNotFoundError:
                pass
    try:  # make the rename durable; best effort (not possible on every platform)
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def download_mnist(root: PathLike | None = None, mirrors: Sequence[str] | None = None, force: bool = False, *,
                   files: Sequence[str] | None = None, timeout: float = 30.0, progress: bool = False) -> list[Path]:
    """Download the gzipped MNIST files into ``root``, verifying their SHA-256.

    For each file: if it already exists with the right hash it is kept (not fetched again);
    if it exists with a wrong hash a :class:`DownloadError` is raised unless ``force``.  Missing
    (or forced) files are fetched from each mirror in turn into a temporary file in ``root``,
    hashed while written, fsynced, checked, and only then renamed to the final name, so a
    partial or corrupt file never appears under that name.  A failed attempt deletes its
    temporary file and moves on to the next mirror.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Target directory (created if needed); default as in :func:`load_mnist`.
    mirrors : sequence of str, optional
        Base URLs to try in order (default :data:`MIRRORS`); the file name is appended.
    force : bool
        Download even if the file exists (a good copy is replaced only once the new download
        has been verified); this also replaces an existing file whose hash is wrong.
    files : sequence of str, optional
        Which ``.gz`` names (keys of :data:`SHA256`) to fetch; default all four.
    timeout : float
        Socket timeout in seconds for each connection and read.
    progress : bool
        Show a tqdm progress bar (only when tqdm is installed and stderr is a TTY).

    Returns
    -------
    list of pathlib.Path
        The paths of the requested files, all verified.

    Raises
    ------
    DownloadError
        If every mirror fails for some file (the message lists each URL and its error), or an
        existing file has the wrong hash and ``force`` is false.
    """
    return _download_files(_resolve_root(root, "mnist"), MIRRORS if mirrors is None else mirrors,
                           SHA256, "sha256", "MNIST", sizes=SIZES, force=force, files=files, timeout=timeout,
                           progress=progress)


def _download_files(root, mirrors, table, algo, what, *, sizes, force, files, timeout, progress):
    """Fetch the files ``files`` (keys of ``table``: name -> hex digest under ``algo``; ``sizes``:
    name -> length in bytes) into ``root`` from the first mirror that serves a verified copy;
    see :func:`download_mnist`."""
    root = Path(root)
    mirrors = list(mirrors)
    if isinstance(files, str):
        files = [files]
    names = list(table) if files is None else list(files)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown {what} file(s) {unknown}; known: {sorted(table)}")
    if not mirrors:
        raise ValueError("no mirrors given")
    root.mkdir(parents=True, exist_ok=True)
    # a fresh opener per call so proxy settings come from the environment at call time
    opener = urllib.request.build_opener()
    label = _ALGO_NAMES.get(algo, algo)
    out = []
    for name in names:
        expected = table[name].lower()
        dest = root / name
        if dest.exists() and not force:
            digest = _sha256_file(dest, algo)
            if digest == expected:
                out.append(dest)
                continue
            raise DownloadError(
                f"existing file {str(dest)!r} has {label} {digest}, expected {expected}; "
                f"it is corrupt or not the original {what} file. Delete it, or pass force=True "
                f"to replace it.")
        failures = []
        for base in mirrors:
            url = base if base.endswith("/") else base + "/"
            url += name
            try:
                _fetch(opener, url, dest, expected, timeout, progress, algo, size=sizes[name])
            except Exception as exc:  # noqa: BLE001 - any failure means: try the next mirror
                failures.append(f"  {url}: {type(exc).__name__}: {exc}")
                continue
            break
        else:
            raise DownloadError(f"could not download {name} into {str(root)!r}; every mirror "
                                f"failed:\n" + "\n".join(failures))
        out.append(dest)
    return out


# --------------------------------------------------------------------------- batches

def _check_images(images: ArrayLike, fn: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"{fn}: images must be uint8 (pixel values 0..255), got {images.dtype}")
    if images.ndim not in (3, 4):
        raise ValueError(f"{fn}: images must have shape (N, H, W) or (N, C, H, W), "
                         f"got {images.shape}")
    return images


def _scale(batch):
    x = batch.astype(np.float32)
    x /= np.float32(255.0)
    if x.ndim == 3:
        x = x[:, None, :, :]
    return x


def to_float(images: ArrayLike) -> np.ndarray:
    """Convert uint8 images to float32 in ``[0, 1]`` with a channel axis.

    Parameters
    ----------
    images : numpy.ndarray
        ``uint8``, shape ``(N, H, W)`` or ``(N, C, H, W)``.

    Returns
    -------
    numpy.ndarray
        ``float32``, shape ``(N, 1, H, W)`` (or ``(N, C, H, W)``), equal to ``images / 255``.
    """
    return _scale(_check_images(images, "to_float"))


def iterate_batches(images: ArrayLike, labels: ArrayLike, batch_size: int, shuffle: bool = True, seed: int = 0,
                    epoch: int = 0, drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield mini-batches ``(x, y)`` covering the data once.

    Each batch is gathered from the uint8 array by fancy indexing and converted on its own,
    so the whole data set is never converted at once.  With ``shuffle`` the order is a
    permutation drawn from ``numpy.random.default_rng([seed, epoch])``: the same
    ``(seed, epoch)`` always gives the same order, and different epochs give different orders.

    Parameters
    ----------
    images : numpy.ndarray
        ``uint8``, shape ``(N, H, W)`` or ``(N, C, H, W)``.
    labels : numpy.ndarray
        Integer labels, shape ``(N,)``.
    batch_size : int
        Samples per batch (positive).
    shuffle : bool
        Visit samples in a seeded random order (else in order).
    seed, epoch : int
        Non-negative integers selecting the permutation.
    drop_last : bool
        Skip the last batch if it has fewer than ``batch_size`` samples.

    Yields
    ------
    x : numpy.ndarray
        ``float32``, shape ``(B, 1, H, W)`` (or ``(B, C, H, W)``), values ``pixel / 255``.
    y : numpy.ndarray
        ``int64``, shape ``(B,)``.
    """
    images = _check_images(images, "iterate_batches")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"iterate_batches: labels must have shape ({images.shape[0]},), "
                         f"got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"iterate_batches: labels must be integers, got {labels.dtype}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size <= 0:
        raise ValueError(f"iterate_batches: batch_size must be a positive int, got {batch_size!r}")
    for nm, v in (("seed", seed), ("epoch", epoch)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"iterate_batches: {nm} must be a non-negative int, got {v!r}")
    return _batches(images, labels, int(batch_size), shuffle, int(seed), int(epoch), drop_last)


def _batches(images, labels, batch_size, shuffle, seed, epoch, drop_last):
    n = images.shape[0]
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            xb, yb = images[start:end], labels[start:end]
        else:
            idx = order[start:end]
            xb, yb = images[idx], labels[idx]
        yield _scale(xb), yb.astype(np.int64)


class DataLoader:
    """Re-iterable wrapper of :func:`iterate_batches` that advances the epoch on each pass.

    Parameters
    ----------
    images, labels, batch_size, shuffle, seed, drop_last
        As for :func:`iterate_batches`.
    epoch : int
        Epoch used by the next ``iter()``; incremented after each ``iter()``.

    Examples
    --------
    >>> loader = DataLoader(images, labels, 64, seed=1)   # doctest: +SKIP
    >>> for x, y in loader: ...                            # doctest: +SKIP
    """

    def __init__(self, images: ArrayLike, labels: ArrayLike, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, epoch: int = 0):
        self.images = _check_images(images, "DataLoader")
        self.labels = np.asarray(labels)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = epoch
        # validate eagerly
        iterate_batches(self.images, self.labels, batch_size, shuffle, seed, epoch, drop_last)

    def __len__(self) -> int:
        n, b = self.images.shape[0], self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        it = iterate_batches(self.images, self.labels, self.batch_size, self.shuffle, self.seed,
                             self.epoch, self.drop_last)
        self.epoch += 1
        return it
