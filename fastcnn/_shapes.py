"""The one shape-and-dtype check helper, padding/output-size arithmetic, and the shared
read-only zeros."""
from __future__ import annotations

import functools
import numbers
import operator
from typing import Any, TypeGuard, Union

import numpy as np
from numpy.typing import ArrayLike

#: An int or a pair of ints (kernel sizes, strides).
IntOrPair = Union[int, tuple[int, int]]
#: A padding argument: an int, a pair of ints, ``"valid"`` or ``"same"``.
Padding = Union[int, tuple[int, int], str]


_F32 = np.dtype(np.float32)  # (native byte order; ``is`` compares it without a conversion)
_I64 = np.dtype(np.int64)


def is_float32_array(x: Any) -> TypeGuard[np.ndarray]:
    """Whether ``x`` is already a C-contiguous, aligned float32 ndarray (nothing to convert)."""
    if type(x) is not np.ndarray:
        return False
    if x.dtype is _F32 and x.flags.carray:  # (fast test: carray = C-contiguous, aligned, writeable)
        return True
    return x.dtype == np.float32 and x.flags.c_contiguous and x.flags.aligned


def as_float32(x: ArrayLike, name: str, ndim: int | tuple[int, ...] | None = None, op: str = "fastcnn") -> np.ndarray:
    """Validate an array argument and return it as a C-contiguous float32 array.

    Real floating dtypes (float16/float64) are converted to float32; integer, bool, complex
    and object arrays are refused with ``TypeError``.  Non-contiguous views are copied.

    Parameters
    ----------
    x : array_like
    name : str
        Argument name used in error messages.
    ndim : int or tuple of int, optional
        Required number of dimensions.
    op : str
        Operation or layer name used in error messages.
    """
    if (type(x) is np.ndarray and x.dtype is _F32 and x.flags.carray
            and (ndim is None or x.ndim == ndim or (type(ndim) is tuple and x.ndim in ndim))):
        return x  # fast path (is_float32_array inlined): nothing to check or convert
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple)) or np.isscalar(x):
            x = np.asarray(x)
        else:
            raise TypeError(f"{op}: {name} must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: {name} must be a floating array (float32), got dtype {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{op}: {name} must be {want}, got shape {x.shape} ({x.ndim}-D)")
    if x.dtype != np.float32 or not x.flags.c_contiguous or not x.flags.aligned:
        x = np.asarray(x, dtype=np.float32, order="C")  # (ascontiguousarray would make 0-d 1-d)
    return x


def as_labels(labels: ArrayLike, n: int, num_classes: int, op: str = "fastcnn") -> np.ndarray:
    """Validate class-index labels: integer dtype, shape ``(n,)``, values in ``[0, num_classes)``."""
    if type(labels) is np.ndarray and labels.dtype is _I64 and labels.shape == (n,) and 0 < n <= 64:
        if n == 1:
            lo = hi = labels.item()
        else:
            values = labels.tolist()  # small batches: Python's min/max beat two NumPy reductions
            lo, hi = min(values), max(values)
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{op}: labels must lie in [0, {num_classes}), got range [{lo}, {hi}]")
        return labels if labels.flags.c_contiguous else np.ascontiguousarray(labels)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{op}: labels must have shape ({n},), got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{op}: labels must lie in [0, {num_classes}), got range "
            f"[{labels.min()}, {labels.max()}]"
        )
    return np.ascontiguousarray(labels, dtype=np.int64)


_INT_CHECK = int.__instancecheck__


def as_shape(shape: Any, name: str, ndim: int | None = None, op: str = "fastcnn") -> tuple[int, ...]:
    """Validate a shape argument: a sequence of non-negative ints (``ndim`` of them if given)."""
    if (type(shape) is tuple and all(map(_INT_CHECK, shape)) and (ndim is None or len(shape) == ndim)
            and min(shape, default=0) >= 0):
        return shape  # fast path: already a tuple of ints
    try:
        out = tuple(map(operator.index, shape))
    except TypeError:
        raise TypeError(f"{op}: {name} must be a sequence of ints, got {shape!r}") from None
    if (ndim is not None and len(out) != ndim) or min(out, default=0) < 0:
        want = f"{ndim} " if ndim is not None else ""
        raise ValueError(f"{op}: {name} must be {want}non-negative ints, got {shape!r}")
    return out


def pair(value: Any, name: str, op: str = "fastcnn", minimum: int = 1) -> tuple[int, int]:
    """Turn an int or a pair of ints into a tuple ``(h, w)`` with both ``>= minimum``."""
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if min(value) < minimum:
            raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
        return value  # fast path
    if type(value) is int and value >= minimum:
        return (value, value)  # fast path
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        out = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)
    ):
        out = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return out


def check_padding_arg(padding: Any, op: str = "fastcnn") -> tuple[int, int] | str:
    """Validate a padding argument without knowing the input size yet."""
    if type(padding) is int and padding >= 0:
        return (padding, padding)  # fast path
    if isinstance(padding, str):
        p = padding.lower()
        if p not in ("same", "valid"):
            raise ValueError(f"{op}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        return p
    return pair(padding, "padding", op, minimum=0)


def resolve_padding(padding: Any, kernel: tuple[int, int], stride: tuple[int, int], size: tuple[int, ...],
                    op: str = "fastcnn") -> tuple[int, int, int, int]:
    """Return ``(top, bottom, left, right)`` zero padding.

    ``"same"`` follows TensorFlow: output size ``ceil(in / stride)``, total padding
    ``max((out - 1) * stride + k - in, 0)``, the odd cell going to the bottom/right.
    """
    padding = check_padding_arg(padding, op)
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        pads = []
        for k, s, n in zip(kernel, stride, size):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    ph, pw = padding
    return (ph, ph, pw, pw)


def output_size(size: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
                pads: tuple[int, int, int, int], op: str = "fastcnn") -> tuple[int, int]:
    """Spatial output size ``(OH, OW)``; raises if the kernel exceeds the padded input."""
    (h, w), (kh, kw), (sh, sw) = size, kernel, stride
    pt, pb, pl, pr = pads
    hp, wp = h + pt + pb, w + pl + pr
    if kh > hp or kw > wp:
        raise ValueError(
            f"{op}: kernel {kh}x{kw} is larger than the padded input {hp}x{wp} "
            f"(input {h}x{w}, padding {pads}); expected an input of at least "
            f"{max(kh - pt - pb, 1)}x{max(kw - pl - pr, 1)}"
        )
    return ((hp - kh) // sh + 1, (wp - kw) // sw + 1)


@functools.lru_cache(maxsize=64)
def zeros(n: int, dtype: Any = np.float32) -> np.ndarray:
    """A read-only array of ``n`` zeros: the bias of a layer without one, for the kernels that
    take a bias (shared: nothing writes it)."""
    z = np.zeros(n, dtype)
    z.flags.writeable = False
    return z
