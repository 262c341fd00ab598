"""The one place a convolution strategy is chosen, and the public setting behind it.

``fastcnn.config(conv=...)`` selects how the compiled backends run convolutions
(docs/PERFORMANCE.md, "Direct convolution kernels"):

``"auto"`` (default)
    The fastest strategy for the layer's shape on this machine, by a fixed rule
    (:func:`conv_plan`).  The ``numpy`` backend keeps its reference path (chunked im2col).
``"direct"``
    The direct kernels (``conv2d_direct_*`` primitives), every batch size.
``"winograd"``
    Winograd kernels (``conv2d_winograd_*`` primitives) for every 3x3 and 5x5 convolution of
    stride 1 (forward, input and weight gradients; a first layer's weight gradient alone on the
    direct kernels; ``auto``'s Winograd layers keep the direct weight gradient, from the
    pooling's winners where the output was pooled); other layers as ``"direct"``.  The output
    tile of the forward and the input gradient is ``winograd_tile``'s: F(2x2, 3x3), F(4x4, 3x3)
    or F(2x2, 5x5); the weight gradient and a pooled forward are F(2x2, r x r).
``"per_image"``
    im2col + SGEMM one image per thread, dense layers by blocks: one thread pool
    (docs/PERFORMANCE.md, section 3).
``"chunked"``
    im2col of chunks of the batch + NumPy's multi-threaded SGEMM: two thread pools.

``fastcnn.config(winograd_tile=...)``: the Winograd output tile of 3x3 layers, ``"auto"``
(default: :func:`winograd_tile`'s rule), ``2`` (F(2x2, 3x3)) or ``4`` (F(4x4, 3x3): 2.25 instead
of 4 multiplications per output, larger transforms and rounding errors; docs/PERFORMANCE.md,
"Winograd convolutions").  5x5 layers are always F(2x2, 5x5).

The environment variable ``FASTCNN_CONV`` sets the initial strategy (read at first use).
A batch of one image takes a single GEMM with no reorders on the ``per_image`` and
``chunked`` strategies (and on ``auto`` where the rule picks no direct kernel).

``fastcnn.config(fuse=...)`` (default True): a ``Sequential`` runs each ``Conv2D`` with the
``ReLU`` and 2x2 ``MaxPool2D`` after it as one op (the ReLU and the pooling in the convolution's
store; bit for bit the layers one by one), in training and at inference, and in training a
``Conv2D`` before a ``BatchNorm2D`` computes its batch statistics in its store (docs/PERFORMANCE.md,
sections 12 and 13).  False runs every layer by itself.

``fastcnn.config(fold_bn=...)`` (default True): with ``fuse``, at inference a ``Sequential``
also runs each ``Conv2D`` followed by a ``BatchNorm2D`` as one convolution with the
normalisation folded into its weights and bias (:func:`fastcnn.functional.fold_batch_norm`;
docs/PERFORMANCE.md, section 12).  False runs them one by one, as in training mode's arithmetic.

``fastcnn.config(dense=...)`` selects how the compiled backends run dense layers
(docs/PERFORMANCE.md, section 3): ``"auto"`` (default) the rows path for small batches
(:func:`dense_rows`), else the GEMM; ``"rows"`` the rows path (a dot product per output, the
gradients one FMA chain per element) at every batch size; ``"gemm"`` the GEMM at every batch
size (the tiled GEMM where the SIMD path has one and the batch fills its tiles, else SciPy's
SGEMM).  The ``numpy`` backend keeps its reference path.
"""
from __future__ import annotations

import os
from typing import Any

from . import _config, _ref, _threads

CONV_STRATEGIES = ("auto", "direct", "winograd", "per_image", "chunked")
WINOGRAD_TILES = ("auto", 2, 4)
DENSE_STRATEGIES = ("auto", "rows", "gemm")

#: Target size of one chunk of the im2col matrix on the chunked strategy: the batch is
#: convolved a few images at a time so that the unfolded columns stay in cache (tuned on a
#: 32 MiB-L3 machine, docs/PERFORMANCE.md).  ``auto`` also avoids ``per_image`` when one
#: image's unfolded matrix exceeds it (one such buffer per thread).
CHUNK_BYTES = 8 << 20

#: Backend modules whose direct kernels ``auto`` may pick: Cython's and Numba's.
DIRECT_AUTO_MODULES = ("fastcnn._ext", "fastcnn._kernels")

ENV_CONV = "FASTCNN_CONV"

_settings: dict[str, Any] = {}
_changes = [0]  # how often the settings changed (plans made under other settings are stale)


def _current() -> dict[str, Any]:
    if not _settings:
        env = os.environ.get(ENV_CONV, "").strip().lower() or "auto"
        if env not in CONV_STRATEGIES:
            raise ValueError(f"{ENV_CONV} must be one of {', '.join(CONV_STRATEGIES)}, got {env!r}")
        _settings["conv"] = env
        _settings["winograd_tile"] = "auto"
        _settings["fuse"] = True
        _settings["fold_bn"] = True
        _settings["dense"] = "auto"
    return _settings


class _Config:
    """Returned by :func:`config`: the settings are already applied; as a context manager it
    restores the previous ones on exit."""

    def __init__(self, previous: dict[str, Any]):
        self._previous = previous

    def __enter__(self) -> _Config:
        return self

    def __exit__(self, *exc: object) -> None:
        _settings.clear()
        _settings.update(self._previous)
        _changes[0] += 1

    def __repr__(self) -> str:
        return f"fastcnn.config({', '.join(f'{k}={v!r}' for k, v in _settings.items())})"


def config(*, conv: str | None = None, winograd_tile: str | int | None = None, fuse: bool | None = None,
           fold_bn: bool | None = None, dense: str | None = None) -> _Config:
    """Set fastcnn's settings; usable as a context manager that restores them on exit.

    Parameters
    ----------
    conv : {"auto", "direct", "per_image", "chunked"}, optional
        Convolution strategy of the compiled backends (see :mod:`fastcnn._dispatch`).
        None leaves it unchanged.
    winograd_tile : {"auto", 2, 4}, optional
        Output tile of the Winograd kernels for 3x3 layers (see :mod:`fastcnn._dispatch`).
        None leaves it unchanged.
    fuse : bool, optional
        Whether ``Sequential`` models run a ``Conv2D`` with the ``ReLU`` and 2x2 ``MaxPool2D``
        after it as one op, and in training with the next ``BatchNorm2D``'s statistics (default
        True).  None leaves it unchanged.
    fold_bn : bool, optional
        Whether eval-mode ``Sequential`` models (with ``fuse``) fold a ``BatchNorm2D`` into the
        ``Conv2D`` before it (default True).  None leaves it unchanged.
    dense : {"auto", "rows", "gemm"}, optional
        Dense-layer strategy of the compiled backends (see :mod:`fastcnn._dispatch`).
        None leaves it unchanged.

    Examples
    --------
    >>> fastcnn.config(conv="direct")           # from now on
    >>> with fastcnn.config(conv="per_image"):  # only inside the block
    ...     y = fastcnn.functional.conv2d(x, w)
    """
    if conv is not None and (not isinstance(conv, str) or conv not in CONV_STRATEGIES):
        raise ValueError(f"config: conv must be one of {', '.join(map(repr, CONV_STRATEGIES))}, got {conv!r}")
    if winograd_tile is not None and (type(winograd_tile) not in (str, int) or winograd_tile not in WINOGRAD_TILES):
        raise ValueError(f"config: winograd_tile must be one of {', '.join(map(repr, WINOGRAD_TILES))}, "
                         f"got {winograd_tile!r}")
    if dense is not None and (not isinstance(dense, str) or dense not in DENSE_STRATEGIES):
        raise ValueError(f"config: dense must be one of {', '.join(map(repr, DENSE_STRATEGIES))}, got {dense!r}")
    for name, value in (("fuse", fuse), ("fold_bn", fold_bn)):
        if value is not None and type(value) is not bool:
            raise TypeError(f"config: {name} must be True or False, got {value!r}")
    previous = dict(_current())
    if conv is not None:
        _settings["conv"] = conv
    if winograd_tile is not None:
        _settings["winograd_tile"] = winograd_tile
    if fuse is not None:
        _settings["fuse"] = fuse
    if fold_bn is not None:
        _settings["fold_bn"] = fold_bn
    if dense is not None:
        _settings["dense"] = dense
    _changes[0] += 1
    return _Config(previous)


def changes() -> int:
    """A count of the settings' changes: a plan made when it read the same is still valid."""
    return _changes[0]


def get_config() -> dict[str, Any]:
    """The current settings, as a new dict (``{"conv": ..., "winograd_tile": ..., "fuse": ...,
    "fold_bn": ..., "dense": ...}``)."""
    return dict(_current())


def fuse() -> bool:
    """Whether ``Sequential`` models fuse a ``Conv2D`` with the ReLU and pooling after it (and
    in training with the next ``BatchNorm2D``'s statistics)."""
    return bool(_current()["fuse"])


def fold_bn() -> bool:
    """Whether eval-mode ``Sequential`` models fold batch norms into convolutions."""
    return bool(_current()["fold_bn"])


def dense_rows(n, grads=False):
    """Whether a compiled backend runs a dense layer's forward (or with ``grads`` its gradients)
    of ``n`` images on the rows path: the ``dense`` setting; on ``"auto"`` batches of at most
    ``_config.DENSE_ROWS_BATCH`` (gradients ``DENSE_ROWS_GRAD_BATCH``) images."""
    dense = _current()["dense"]
    if dense == "auto":
        return _config.dense_rows(n, grads)
    return dense == "rows"


def one_pool(k):
    """Whether dense layers (and per-image convolutions) run on the kernels' threads with
    SciPy's single-threaded BLAS, for backend module ``k``."""
    conv = _current()["conv"]
    if conv == "per_image":
        return True
    if conv == "chunked":
        return False
    return k is not _ref and _threads.gemm_blas_single()


def _direct_wins(module, n, c, oc, kh, kw, backward, input_grad=True, pooled=False):
    """The ``auto`` rule for the direct kernels of backend module ``module`` (its name), from
    benches/conv_direct_gflops.py and benches/probes/plan_compare.py (docs/PERFORMANCE.md,
    section 9).  Never for a 1x1 kernel (one SGEMM on the per-image path) or fewer than 8
    output channels.  Backward (both): with more than 3 input channels, or when only the
    weight gradient of a batch is wanted (first layers: an input gradient of 1-3 channels fills
    few lanes; at batch 1 one GEMM is faster; Numba's since the twenty-ninth session).
    Forward: Cython always; Numba with 3+ input channels, of a batch (one-channel first layers:
    direct since the tenth session), or with the fused 2x2 pooling (its pooling in the kernel
    since the twenty-second session)."""
    if (kh == 1 and kw == 1) or oc < 8:
        return False
    if backward:
        return c > 3 or (not input_grad and n > 1)
    return module != "fastcnn._kernels" or c >= 3 or n > 1 or pooled


def _winograd_wins(module, n, c, oc, k):
    """The ``auto`` rule for the Winograd kernels of backend module ``module`` (its name), for a
    ``k`` x ``k`` (3 or 5) convolution of stride 1 of more than one image, from
    benches/conv_direct_gflops.py and benches/probes/step_time.py (docs/PERFORMANCE.md,
    "Winograd convolutions"): both compiled backends with 16 or more input and output channels."""
    return module in ("fastcnn._ext", "fastcnn._kernels") and n > 1 and c >= 16 and oc >= 16


def winograd_tile(k, c, oc, kh):
    """The output tile ``m`` of the Winograd forward and input gradient of a ``kh`` x ``kh``
    convolution with ``c`` input and ``oc`` output channels on backend module ``k``: 2 for 5x5
    kernels; for 3x3 the ``winograd_tile`` setting, whose ``"auto"`` picks 4 for the compiled
    backends' layers of 16 or more channels (F(4x4, 3x3) against F(2x2, 3x3): docs/BENCHMARKS.md,
    "Issue 10, thirty-first session") and 2 elsewhere."""
    if kh != 3:
        return 2
    tile = _current()["winograd_tile"]
    if tile != "auto":
        return tile
    return 4 if getattr(k, "__name__", None) in DIRECT_AUTO_MODULES and c >= 16 and oc >= 16 else 2


def winograd_weight():
    """Whether a convolution on the ``"winograd"`` plan takes its weight gradient from the
    Winograd kernels too (``conv2d_winograd_backward_weight``): only when ``winograd`` is forced.
    ``auto`` keeps the direct weight gradient: the Winograd one, faster at 32+ channels (lenet's
    step 0.95x the time), rounds each tap relative to its kernel's largest (4-17x the direct
    kernels' error), enough to flip the sign of Adam's first steps on near-zero gradients
    (docs/PERFORMANCE.md, "Winograd convolutions")."""
    return _current()["conv"] == "winograd"


def pooled_input_grad_from_winners(c, kh, kw, sh, sw):
    """Whether ``conv2d_direct_backward_maxpool2`` (both compiled backends) takes the input
    gradient from the pooling's winners (docs/PERFORMANCE.md, section 9, "Pooled input
    gradient"): stride 1 and ``_config.POOLED_DGRAD_MIN_PATCH`` or more kernel values per output
    channel.  The Winograd plan of a pooled layer then takes it from there too, unless
    ``winograd`` is forced."""
    return sh == sw == 1 and c * kh * kw >= _config.POOLED_DGRAD_MIN_PATCH


def conv_plan(k, n, c, oc, kh, kw, oh, ow, itemsize, backward=False, input_grad=True, strided=False, pad=0,
              pooled=False):
    """Strategy for one convolution: ``"winograd"`` (3x3 or 5x5, stride 1: forward and input
    gradient), ``"direct"``, ``"single"`` (batch of one: one GEMM), ``"per_image"`` or
    ``"chunked"``.

    Parameters
    ----------
    k : the backend's primitive module
    n, c, oc, kh, kw, oh, ow : batch, channels, output channels, kernel and output sizes
    itemsize : bytes per element (the finite-difference tests run the reference in float64)
    backward : whether the plan is for the gradients (else the forward pass)
    input_grad : with ``backward``, whether the input gradient is wanted too
    strided : whether a stride is larger than 1
    pad : the larger of the top and left padding (Winograd: at most the kernel size - 1)
    pooled : whether the forward's output is 2x2 max pooled in the same call
    """
    conv = _current()["conv"]
    name = getattr(k, "__name__", None)
    if (kh == kw and kh in (3, 5) and not strided and pad <= kh - 1 and (not backward or input_grad)
            and (conv == "winograd" or (conv == "auto" and itemsize == 4 and _winograd_wins(name, n, c, oc, kh)))):
        return "winograd"
    if conv in ("direct", "winograd"):
        return "direct"
    if (conv == "auto" and name in DIRECT_AUTO_MODULES and itemsize == 4
            and _direct_wins(name, n, c, oc, kh, kw, backward, input_grad, pooled)):
        return "direct"
    if n == 1:
        return "single"
    if conv == "per_image":
        return "per_image"
    if conv == "chunked":
        return "chunked"
    cols_bytes = c * kh * kw * oh * ow * itemsize
    return "per_image" if one_pool(k) and cols_bytes <= CHUNK_BYTES else "chunked"


def chunks(n, cols_per_image, itemsize):
    """Chunks ``[(a, b), ...]`` of consecutive images for the chunked strategy."""
    per = max(1, min(n, CHUNK_BYTES // max(1, cols_per_image * itemsize)))
    return [(i, min(i + per, n)) for i in range(0, n, per)]


def winograd_group(n, tiles, image_bytes, lanes):
    """Images per group of a Winograd kernel (``n`` images, ``tiles`` output tiles each,
    ``image_bytes`` of packed input each, ``lanes`` tiles per vector): at least enough for
    ``_config.WINOGRAD_TILES`` tiles; more, within ``_config.WINOGRAD_GROUP_BYTES``, where fewer
    of the group's vector lanes are left empty (the fewest images of the least waste).  The
    empty lanes repeat with a period of at most ``lanes`` images, one of them none: the first
    ``lanes`` candidates hold the answer."""
    least = max(1, min(n, -(-_config.WINOGRAD_TILES // tiles)))
    most = max(least, min(n, _config.WINOGRAD_GROUP_BYTES // max(1, image_bytes), least + lanes - 1))
    return min(range(least, most + 1), key=lambda g: ((-g * tiles) % lanes / (g * tiles), g))


def winograd_units(n, group, threads):
    """Units of work of a Winograd kernel's threads (docs/PERFORMANCE.md, section 3, "Work
    taken as threads free up"): ``n`` images in that many near-equal runs of at most ``group``
    consecutive images, their count a multiple of the threads used (``min(threads, n)``), or
    ``n`` (one image each) if fewer."""
    t = max(1, min(threads, n))
    return min(n, t * -(-n // (t * group)))


def conv_isa():
    """SIMD path of the Cython direct kernels (``"avx512"``, ``"avx2"``, ``"baseline"``), or a
    sentence saying why they cannot run."""
    try:
        from ._ext import conv_direct
    except ImportError as exc:
        return f"unavailable (Cython backend not built: {exc})"
    try:
        return conv_direct.active_isa()
    except RuntimeError as exc:
        return f"unavailable: {exc}"
