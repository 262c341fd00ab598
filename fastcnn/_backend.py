"""The one backend registry.

A backend is a module exposing the kernel primitives listed in ``PRIMITIVES`` with the
signatures documented in :mod:`fastcnn._ref` (the NumPy reference, which is the oracle).
``functional.py`` validates arguments and then calls the primitives of the active backend.
"""
import importlib
import os

import numpy as np

from ._config import BACKENDS, ENV_BACKEND, KERNEL_MODULES

PRIMITIVES = (
    "im2col",
    "col2im",
    "cnp_to_ncp_bias",
    "ncp_to_cnp_sum",
    "conv2d_forward_images",
    "conv2d_backward_images",
    "conv2d_direct_forward",
    "conv2d_direct_backward_data",
    "conv2d_direct_backward_weight",
    "linear_forward",
    "linear_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "relu_forward",
    "relu_backward",
    "softmax_xent_forward",
    "softmax_xent_backward",
    "batchnorm_stats",
    "batchnorm_forward",
    "batchnorm_backward_reduce",
    "batchnorm_backward_apply",
    "adam_step",
)

_MODULES = {
    "numpy": "fastcnn._ref",
    "numba": "fastcnn._kernels",
    "cython": "fastcnn._ext",
}



def collect_primitives(package):
    """``{name: function}`` of the primitives in the kernel modules of a compiled backend's
    package (``_config.KERNEL_MODULES``): what its ``__init__`` exports."""
    found = {}
    for module in KERNEL_MODULES:
        mod = importlib.import_module(f"{package}.{module}")
        found.update((name, getattr(mod, name)) for name in PRIMITIVES if hasattr(mod, name))
    return found


_loaded = {}
_errors = {}
_active = None


def _load(name):
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        return None
    try:
        mod = importlib.import_module(_MODULES[name])
        missing = [p for p in PRIMITIVES if not hasattr(mod, p)]
        if missing:
            raise ImportError(f"backend {name!r} lacks primitives {missing}")
    except Exception as exc:  # not compiled, numba missing, or no writable Numba cache
        _errors[name] = exc
        return None
    _loaded[name] = mod
    return mod


def available_backends():
    """Backends usable in this installation, in the order ``("numpy", "numba", "cython")``."""
    return tuple(name for name in BACKENDS if _load(name) is not None)


def backend_error(name):
    """Why a backend is unavailable (an exception), or None."""
    _load(name)
    return _errors.get(name)


def _default():
    for name in ("cython", "numba", "numpy"):
        if _load(name) is not None:
            return name
    raise RuntimeError("no fastcnn backend could be loaded")  # numpy always loads


def set_backend(name):
    """Select the kernel backend: ``"numpy"``, ``"numba"`` or ``"cython"``."""
    global _active
    if not isinstance(name, str) or name not in BACKENDS or _load(name) is None:
        avail = available_backends()
        extra = ""
        if isinstance(name, str) and name in BACKENDS:
            extra = f" ({name} failed to load: {_errors.get(name)})"
        raise ValueError(f"unknown or unavailable backend {name!r}{extra}; available: {', '.join(avail)}")
    _active = name


def get_backend():
    """Name of the active backend (default: ``"cython"`` if compiled, else ``"numba"``)."""
    global _active
    if _active is None:
        env = os.environ.get(ENV_BACKEND)
        if env:
            set_backend(env.strip().lower())
        else:
            _active = _default()
    return _active


def ops(name=None):
    """The primitive module of backend ``name`` (default: the active one)."""
    name = get_backend() if name is None else name
    mod = _load(name)
    if mod is None:
        set_backend(name)  # raises the ValueError listing available backends
    return mod


# --------------------------------------------------------------------------- boundary checks
# One check per primitive, called first by both compiled backends' primitives: whatever the
# arguments, a compiled kernel either gets arrays of the documented dtype, C-contiguous and
# of consistent shapes (so it reads and writes only inside them), or the call raises here.
# These are not the user-facing checks: ``fastcnn.functional`` validates (and converts) the
# user's input first, with messages in the user's terms; these guard direct calls.

_F32, _F64, _I32, _I64 = (np.dtype(t) for t in (np.float32, np.float64, np.int32, np.int64))


def _shape(op, name, a, ndim, dtype=_F32):
    """``a.shape`` after checking that ``a`` is a C-contiguous ndarray of ``dtype`` with
    ``ndim`` dimensions (any number for None)."""
    if (type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous
            or (ndim is not None and a.ndim != ndim)):
        want = f"{ndim}-D " if ndim is not None else ""
        got = (f"{a.ndim}-D {a.dtype} (C-contiguous: {a.flags.c_contiguous})"
               if isinstance(a, np.ndarray) else type(a).__name__)
        raise ValueError(f"{op}: {name} must be a {want}C-contiguous {dtype} array, got {got}")
    return a.shape


def _require(ok, op, what):
    if not ok:
        raise ValueError(f"{op}: {what}")


def _windows(op, h, w, kh, kw, sh, sw, pt, pl, oh, ow, real_cell):
    """Positive kernel and stride, non-negative padding and output size; with ``real_cell``
    every window of the (oh, ow) output holds at least one input cell."""
    _require(kh >= 1 and kw >= 1 and sh >= 1 and sw >= 1, op, "kernel and stride must be >= 1")
    _require(pt >= 0 and pl >= 0 and oh >= 0 and ow >= 0, op, "padding and output size must be >= 0")
    if real_cell and oh and ow:
        _require(h >= 1 and w >= 1 and pt < kh and pl < kw and (oh - 1) * sh - pt < h
                 and (ow - 1) * sw - pl < w, op, "a pooling window holds no input cell")


def check_in_range(op, bad, what):
    """After a kernel that skipped ``bad`` out-of-range index values (``what``): raise if any."""
    if bad:
        raise ValueError(f"{op}: {what} out of range")


def check_im2col(x, kh, kw, sh, sw, pt, pl, oh, ow, cols):
    n, c, h, w = _shape("im2col", "x", x, 4)
    _windows("im2col", h, w, kh, kw, sh, sw, pt, pl, oh, ow, False)
    _require(_shape("im2col", "cols", cols, 2) == (c * kh * kw, n * oh * ow), "im2col",
             "cols must have shape (C*kh*kw, N*oh*ow)")


def check_col2im(cols, kh, kw, sh, sw, pt, pl, oh, ow, dx):
    n, c, h, w = _shape("col2im", "dx", dx, 4)
    _windows("col2im", h, w, kh, kw, sh, sw, pt, pl, oh, ow, False)
    _require(_shape("col2im", "cols", cols, 2) == (c * kh * kw, n * oh * ow), "col2im",
             "cols must have shape (C*kh*kw, N*oh*ow)")


def check_cnp_to_ncp_bias(ycnp, bias, y):
    op = "cnp_to_ncp_bias"
    n, oc, p = _shape(op, "y", y, 3)
    _require(_shape(op, "ycnp", ycnp, 2) == (oc, n * p) and _shape(op, "bias", bias, 1) == (oc,),
             op, "shapes do not match")


def check_ncp_to_cnp_sum(gy, gcnp, gb):
    op = "ncp_to_cnp_sum"
    n, oc, p = _shape(op, "gy", gy, 3)
    _require(_shape(op, "gcnp", gcnp, 2) == (oc, n * p) and _shape(op, "gb", gb, 1) == (oc,),
             op, "shapes do not match")


def _per_image(op, x, w2, kh, kw, sh, sw, pt, pl, oh, ow, cols):
    """Shared by the per-image convolutions: ``(N, C, OC, C*kh*kw, OH*OW, T)``."""
    n, c, h, w = _shape(op, "x", x, 4)
    _windows(op, h, w, kh, kw, sh, sw, pt, pl, oh, ow, False)
    oc, kdim = _shape(op, "w2", w2, 2)
    t, *rest = _shape(op, "cols", cols, 3)
    _require(oh >= 1 and ow >= 1 and kdim == c * kh * kw and t >= 1 and rest == [kdim, oh * ow],
             op, "shapes do not match")
    return n, c, oc, kdim, oh * ow, t


def check_conv2d_forward_images(x, w2, bias, kh, kw, sh, sw, pt, pl, oh, ow, cols, y):
    op = "conv2d_forward_images"
    n, _, oc, _, p, _ = _per_image(op, x, w2, kh, kw, sh, sw, pt, pl, oh, ow, cols)
    _require(_shape(op, "bias", bias, 1) == (oc,) and _shape(op, "y", y, 3) == (n, oc, p), op,
             "shapes do not match")


def check_conv2d_backward_images(gy, x, w2, kh, kw, sh, sw, pt, pl, oh, ow, input_grad, cols,
                                 gwt_tmp, gwt_part, gb_part, gx):
    op = "conv2d_backward_images"
    n, _, oc, kdim, p, t = _per_image(op, x, w2, kh, kw, sh, sw, pt, pl, oh, ow, cols)
    s = _shape(op, "gwt_part", gwt_part, 3)[0]
    _require(_shape(op, "gy", gy, 3) == (n, oc, p) and _shape(op, "gwt_tmp", gwt_tmp, 3) == (t, kdim, oc)
             and s >= 1 and gwt_part.shape == (s, kdim, oc)
             and _shape(op, "gb_part", gb_part, 2, _F64) == (s, oc), op, "shapes do not match")
    _require(_shape(op, "gx", gx, 4) == x.shape or not input_grad, op, "gx must have the shape of x")


def _direct(op, x, w, y, gy_like):
    """Shared by the direct convolutions, over the forward's (x, w, y); ``gy_like`` names y."""
    n, c, h, wd = _shape(op, "gx" if gy_like else "x", x, 4)
    oc, c2, kh, kw = _shape(op, "w", w, 4)
    n2, oc2, oh, ow = _shape(op, gy_like or "y", y, 4)
    _require(c2 == c and n2 == n and oc2 == oc and c >= 1 and oc >= 1 and h >= 1 and wd >= 1
             and oh >= 1 and ow >= 1, op, "shapes do not match")
    return h, wd, kh, kw, oh, ow


def check_conv2d_direct_forward(x, w, bias, sh, sw, pt, pl, relu, y):
    op = "conv2d_direct_forward"
    h, wd, kh, kw, oh, ow = _direct(op, x, w, y, None)
    _windows(op, h, wd, kh, kw, sh, sw, pt, pl, oh, ow, False)
    _require(_shape(op, "bias", bias, 1) == (w.shape[0],), op, "shapes do not match")


def check_conv2d_direct_backward_data(gy, w, sh, sw, pt, pl, gx):
    op = "conv2d_direct_backward_data"
    h, wd, kh, kw, oh, ow = _direct(op, gx, w, gy, "gy")
    _windows(op, h, wd, kh, kw, sh, sw, pt, pl, oh, ow, False)


def check_conv2d_direct_backward_weight(gy, x, sh, sw, pt, pl, gw, gb):
    op = "conv2d_direct_backward_weight"
    h, wd, kh, kw, oh, ow = _direct(op, x, gw, gy, "gy")
    _windows(op, h, wd, kh, kw, sh, sw, pt, pl, oh, ow, False)
    _require(_shape(op, "gb", gb, 1) == (gw.shape[0],), op, "shapes do not match")


def _dense(op, x, w, nblocks):
    n, k = _shape(op, "x", x, 2)
    out = _shape(op, "w", w, 2)[0]
    _require(w.shape[1] == k and nblocks >= 1, op, "shapes do not match")
    _require(n >= 1 and k >= 1 and out >= 1, op, "empty dimension")
    return n, k, out


def check_linear_forward(x, w, bias, nblocks, y):
    n, _, out = _dense("linear_forward", x, w, nblocks)
    _require(_shape("linear_forward", "bias", bias, 1) == (out,)
             and _shape("linear_forward", "y", y, 2) == (n, out), "linear_forward",
             "shapes do not match")


def check_linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx):
    op = "linear_backward"
    n, k, out = _dense(op, x, w, nblocks)
    _require(_shape(op, "gy", gy, 2) == (n, out) and _shape(op, "gyt", gyt, 2) == (out, n)
             and _shape(op, "gw", gw, 2) == (out, k) and _shape(op, "gb", gb, 1) == (out,), op,
             "shapes do not match")
    _require(_shape(op, "gx", gx, 2) == (n, k) or not input_grad, op, "gx must have the shape of x")


def _pool(op, x, kh, kw, sh, sw, pt, pl, y, yname):
    """Shared by the pooling primitives over the input-sized ``x`` and output-sized ``y``."""
    n, c, h, w = _shape(op, "gx" if yname == "gy" else "x", x, 4)
    n2, c2, oh, ow = _shape(op, yname, y, 4)
    _require(n2 == n and c2 == c, op, "shapes do not match")
    _windows(op, h, w, kh, kw, sh, sw, pt, pl, oh, ow, True)


def check_maxpool2d_forward(x, kh, kw, sh, sw, pt, pl, y, idx):
    _pool("maxpool2d_forward", x, kh, kw, sh, sw, pt, pl, y, "y")
    _require(_shape("maxpool2d_forward", "idx", idx, 4, _I32) == y.shape, "maxpool2d_forward",
             "shapes do not match")


def check_maxpool2d_backward(gy, idx, gx):
    op = "maxpool2d_backward"
    n, c = _shape(op, "gx", gx, 4)[:2]
    _require(_shape(op, "gy", gy, 4)[:2] == (n, c) and _shape(op, "idx", idx, 4, _I32) == gy.shape,
             op, "shapes do not match")


def check_avgpool2d_forward(x, kh, kw, sh, sw, pt, pl, count_include_pad, y):
    _pool("avgpool2d_forward", x, kh, kw, sh, sw, pt, pl, y, "y")


def check_avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, count_include_pad, gx):
    _pool("avgpool2d_backward", gx, kh, kw, sh, sw, pt, pl, gy, "gy")


def check_relu_forward(x, y):
    _shape("relu_forward", "x", x, None)
    _shape("relu_forward", "y", y, None)
    _require(x.size == y.size, "relu_forward", "x and y differ in size")


def check_relu_backward(gy, y, gx):
    for name, a in (("gy", gy), ("y", y), ("gx", gx)):
        _shape("relu_backward", name, a, None)
    _require(gy.size == y.size == gx.size, "relu_backward", "gy, y and gx differ in size")


def _softmax(op, probs, labels, other):
    n, k = _shape(op, "probs", probs, 2)
    _require(_shape(op, "labels", labels, 1, _I64) == (n,) and _shape(op, other[0], other[1], 2) == (n, k),
             op, "shapes do not match")
    return n


def check_softmax_xent_forward(logits, labels, probs, losses):
    op = "softmax_xent_forward"
    n = _softmax(op, probs, labels, ("logits", logits))
    _require(_shape(op, "losses", losses, 1) == (n,), op, "shapes do not match")


def check_softmax_xent_backward(probs, labels, gx):
    _softmax("softmax_xent_backward", probs, labels, ("gx", gx))


def _channels(op, x, names, vectors, dtype=_F32):
    """Shared by the batch-norm primitives: ``x`` 4-D, each of ``vectors`` of shape (C,)."""
    c = _shape(op, "x", x, 4)[1]
    for name, v in zip(names, vectors):
        if _shape(op, name, v, 1, dtype) != (c,):
            raise ValueError(f"{op}: {name} must have shape ({c},)")


def _same(op, x, names, arrays):
    for name, a in zip(names, arrays):
        if _shape(op, name, a, 4) != x.shape:
            raise ValueError(f"{op}: {name} must have the shape of the input")


def check_batchnorm_stats(x, mean, var):
    _channels("batchnorm_stats", x, ("mean", "var"), (mean, var), _F64)


def check_batchnorm_forward(x, mean, inv_std, weight, bias, xhat, y):
    op = "batchnorm_forward"
    _channels(op, x, ("mean", "inv_std", "weight", "bias"), (mean, inv_std, weight, bias))
    _same(op, x, ("xhat", "y"), (xhat, y))


def check_batchnorm_backward_reduce(gy, xhat, gsum, gdot):
    op = "batchnorm_backward_reduce"
    _channels(op, gy, ("gsum", "gdot"), (gsum, gdot), _F64)
    _same(op, gy, ("xhat",), (xhat,))


def check_batchnorm_backward_apply(gy, xhat, scale, a, b, gx):
    op = "batchnorm_backward_apply"
    _channels(op, gy, ("scale", "a", "b"), (scale, a, b))
    _same(op, gy, ("xhat", "gx"), (xhat, gx))


def check_adam_step(p, g, m, v, lr_t, beta1, beta2, eps, bc2_sqrt):
    for name, a in (("p", p), ("g", g), ("m", m), ("v", v)):
        _shape("adam_step", name, a, None)
    _require(p.size == g.size == m.size == v.size, "adam_step", "p, g, m and v differ in size")
