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
import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "IDXError",
    "DownloadError",
    "MIRRORS",
    "SHA256",
    "FILES",
    "read_idx",
    "load_mnist",
    "download_mnist",
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
_DEFAULT_ROOT = Path("~") / ".cache" / "fastcnn" / "mnist"

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

    def __init__(self, path, message):
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


def read_idx(path, expect=None):
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

def _resolve_root(root):
    if root is None:
        root = os.environ.get(_ENV_VAR) or _DEFAULT_ROOT
    return Path(root).expanduser()


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


def load_mnist(root=None, split="train", download=False):
    """Load one MNIST split from the four standard IDX files.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Directory holding the files (each as ``name.gz`` or raw ``name``).  Defaults to the
        environment variable ``FASTCNN_DATA``, then ``~/.cache/fastcnn/mnist``.
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
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = _resolve_root(root)
    bases = FILES[split]
    paths = [_find(root, b) for b in bases]
    missing = [b for b, p in zip(bases, paths) if p is None]
    if missing and download:
        download_mnist(root, files=[b + ".gz" for b in missing])
        paths = [_find(root, b) for b in bases]
        missing = [b for b, p in zip(bases, paths) if p is None]
    if missing:
        names = ", ".join(f"{b}.gz (or {b})" for b in missing)
        raise FileNotFoundError(
            f"MNIST {split} file(s) not found in directory {str(root)!r}: {names}. "
            f"Pass download=True to fetch them, or set {_ENV_VAR} (or root=) to a directory "
            f"holding the standard MNIST IDX files.")
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


# --------------------------------------------------------------------------- downloading

def _sha256_file(path):
    h = hashlib.sha256()
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


def _fetch(opener, url, dest, expected, timeout, progress, *, size):
    """Download ``url`` to ``dest`` through a temp file in the same directory.

    ``size`` is the file's known length in bytes: a ``Content-Length`` that differs is refused
    before the body is read, and the body is read only up to ``size + 1`` bytes (a mirror that
    sends more, or endless data, fails at once).  The temp file is hashed while written,
    fsynced, verified, then renamed over ``dest``; on any failure it is removed and the
    exception propagates."""
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
            h = hashlib.sha256()
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
            raise DownloadError(f"SHA-256 mismatch: got {digest}, expected {expected} "
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


def download_mnist(root=None, mirrors=None, force=False, *, files=None, timeout=30.0,
                   progress=False):
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
    root = _resolve_root(root)
    mirrors = list(MIRRORS if mirrors is None else mirrors)
    if isinstance(files, str):
        files = [files]
    names = list(SHA256) if files is None else list(files)
    unknown = [n for n in names if n not in SHA256]
    if unknown:
        raise ValueError(f"unknown MNIST file(s) {unknown}; known: {sorted(SHA256)}")
    if not mirrors:
        raise ValueError("no mirrors given")
    root.mkdir(parents=True, exist_ok=True)
    # a fresh opener per call so proxy settings come from the environment at call time
    opener = urllib.request.build_opener()
    out = []
    for name in names:
        expected = SHA256[name].lower()
        dest = root / name
        if dest.exists() and not force:
            digest = _sha256_file(dest)
            if digest == expected:
                out.append(dest)
                continue
            raise DownloadError(
                f"existing file {str(dest)!r} has SHA-256 {digest}, expected {expected}; "
                f"it is corrupt or not the original MNIST file. Delete it, or pass force=True "
                f"to replace it.")
        failures = []
        for base in mirrors:
            url = base if base.endswith("/") else base + "/"
            url += name
            try:
                _fetch(opener, url, dest, expected, timeout, progress, size=SIZES[name])
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

def _check_images(images, fn):
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


def to_float(images):
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


def iterate_batches(images, labels, batch_size, shuffle=True, seed=0, epoch=0, drop_last=False):
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

    def __init__(self, images, labels, batch_size, shuffle=True, seed=0, drop_last=False,
                 epoch=0):
        self.images = _check_images(images, "DataLoader")
        self.labels = np.asarray(labels)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = epoch
        # validate eagerly
        iterate_batches(self.images, self.labels, batch_size, shuffle, seed, epoch, drop_last)

    def __len__(self):
        n, b = self.images.shape[0], self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self):
        it = iterate_batches(self.images, self.labels, self.batch_size, self.shuffle, self.seed,
                             self.epoch, self.drop_last)
        self.epoch += 1
        return it
