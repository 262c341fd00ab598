"""The one backend registry, and the size checks of the backend contract.

A backend is a module exposing the kernel primitives listed in ``PRIMITIVES`` with the
signatures documented in :mod:`fastcnn._ref` (the NumPy reference, which is the oracle).
``functional.py`` validates arguments and then calls the primitives of the active backend;
the compiled backends run ``sizes_<primitive>`` first (see "size checks" below).
"""
import importlib
import os

from ._config import BACKENDS, ENV_BACKEND, KERNEL_MODULES

PRIMITIVES = (
    "im2col",
    "col2im",
    "cnp_to_ncp_bias",
    "ncp_to_cnp_sum",
    "conv2d_forward_images",
    "conv2d_backward_images",
    "conv2d_direct_forward",
    "conv2d_direct_forward_maxpool2",
    "conv2d_direct_backward_data",
    "conv2d_direct_backward_weight",
    "conv2d_direct_backward_maxpool2",
    "conv2d_winograd_forward",
    "conv2d_winograd_forward_maxpool2",
    "conv2d_winograd_backward_data",
    "conv2d_winograd_backward_weight",
    "linear_forward",
    "linear_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "relu_forward",
    "relu_backward",
    "add_forward",
    "add_relu_forward",
    "add_relu_backward",
    "softmax_xent_forward",
    "softmax_xent_backward",
    "batchnorm_stats",
    "batchnorm_forward",
    "batchnorm_forward_maxpool2",
    "batchnorm_backward_reduce",
    "batchnorm_backward_apply",
    "batchnorm_backward",
    "adam_step",
    "sgd_step",
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
_active_ops = None  # _loaded[_active], once chosen: ops() is called by every functional op


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
    global _active, _active_ops
    if not isinstance(name, str) or name not in BACKENDS or _load(name) is None:
        avail = available_backends()
        extra = ""
        if isinstance(name, str) and name in BACKENDS:
            extra = f" ({name} failed to load: {_errors.get(name)})"
        raise ValueError(f"unknown or unavailable backend {name!r}{extra}; available: {', '.join(avail)}")
    _active, _active_ops = name, _loaded[name]


def get_backend():
    """Name of the active backend (default: ``"cython"`` if compiled, else ``"numba"``)."""
    global _active, _active_ops
    if _active is None:
        env = os.environ.get(ENV_BACKEND)
        if env:
            set_backend(env.strip().lower())
        else:
            _active = _default()
            _active_ops = _loaded[_active]
    return _active


def ops(name=None):
    """The primitive module of backend ``name`` (default: the active one)."""
    if name is None:
        if _active_ops is not None:
            return _active_ops
        name = get_backend()
    mod = _load(name)
    if mod is None:
        set_backend(name)  # raises the ValueError listing available backends
    return mod


# --------------------------------------------------------------------------- size checks
# One check per primitive of the sizes and integer arguments its kernels index with, run by
# both compiled backends before a kernel touches memory: compiled into the Numba kernels
# (``_kernels._common`` registers these functions with Numba), called by the Cython wrappers
# for each new combination of sizes (``src_ext/_common.pxi``).  Arrays come in as their
# shapes; dtype, dimensions and C-contiguity are fixed by each backend's own means (the Cython
# wrappers check each array, ``_arr`` in ``src_ext/_common.pxi``; Numba compiles for the
# dtype it is given and refuses to flatten a non-contiguous array).  Plain functions of tuples
# and integers that raise ValueError with constant messages, so that Numba can compile them.
# These are not the user-facing checks: ``fastcnn.functional`` validates the user's input
# first, in the user's terms.


def check_in_range(op, bad, what):
    """After a kernel that skipped ``bad`` out-of-range index values (``what``): raise if any."""
    if bad:
        raise ValueError(f"{op}: {what} out of range")


def sizes_windows(h, w, kh, kw, sh, sw, pt, pl, oh, ow, real_cell):
    """Positive kernel and stride, non-negative padding and output size; with ``real_cell``
    every window of the (oh, ow) output holds at least one of the (h, w) input cells."""
    if not (kh >= 1 and kw >= 1 and sh >= 1 and sw >= 1):
        raise ValueError("kernel and stride must be >= 1")
    if not (pt >= 0 and pl >= 0 and oh >= 0 and ow >= 0):
        raise ValueError("padding and output size must be >= 0")
    if real_cell and oh > 0 and ow > 0 and not (
            h >= 1 and w >= 1 and pt < kh and pl < kw and (oh - 1) * sh - pt < h
            and (ow - 1) * sw - pl < w):
        raise ValueError("a pooling window holds no input cell")


def sizes_im2col(x, kh, kw, sh, sw, pt, pl, oh, ow, cols):
    n, c, h, w = x
    sizes_windows(h, w, kh, kw, sh, sw, pt, pl, oh, ow, False)
    if cols != (c * kh * kw, n * oh * ow):
        raise ValueError("im2col/col2im: cols must have shape (C*kh*kw, N*oh*ow)")


def sizes_col2im(cols, kh, kw, sh, sw, pt, pl, oh, ow, dx):
    sizes_im2col(dx, kh, kw, sh, sw, pt, pl, oh, ow, cols)


def sizes_cnp_to_ncp_bias(ycnp, bias, y):
    n, oc, p = y
    if ycnp != (oc, n * p) or bias != (oc,):
        raise ValueError("GEMM reorder: shapes do not match")


def sizes_ncp_to_cnp_sum(gy, gcnp, gb):
    sizes_cnp_to_ncp_bias(gcnp, gb, gy)


def _sizes_per_image(x, w2, kh, kw, sh, sw, pt, pl, oh, ow, cols):
    """Shared by the per-image convolutions."""
    n, c, h, w = x
    sizes_windows(h, w, kh, kw, sh, sw, pt, pl, oh, ow, False)
    if not (oh >= 1 and ow >= 1 and w2[1] == c * kh * kw and cols[0] >= 1
            and cols[1:] == (w2[1], oh * ow)):
        raise ValueError("per-image convolution: shapes do not match")


def sizes_conv2d_forward_images(x, w2, bias, kh, kw, sh, sw, pt, pl, oh, ow, cols, y):
    _sizes_per_image(x, w2, kh, kw, sh, sw, pt, pl, oh, ow, cols)
    if bias != w2[:1] or y != (x[0], w2[0], oh * ow):
        raise ValueError("conv2d_forward_images: shapes do not match")


def sizes_conv2d_backward_images(gy, x, w2, kh, kw, sh, sw, pt, pl, oh, ow, input_grad, cols,
                                 gwt_tmp, gwt_part, gb_part, gx):
    _sizes_per_image(x, w2, kh, kw, sh, sw, pt, pl, oh, ow, cols)
    if not (gy == (x[0], w2[0], oh * ow) and gwt_tmp == (cols[0], w2[1], w2[0])
            and gwt_part[0] >= 1 and gwt_part[1:] == (w2[1], w2[0])
            and gb_part == (gwt_part[0], w2[0]) and (gx == x or not input_grad)):
        raise ValueError("conv2d_backward_images: shapes do not match")


def _sizes_direct(x, w, y, sh, sw, pt, pl):
    """Shared by the direct convolutions, over the forward's (x, w, y) shapes."""
    n, c, h, wd = x
    oc, _, kh, kw = w
    if not (w[1] == c and y[:2] == (n, oc) and c >= 1 and oc >= 1 and h >= 1 and wd >= 1
            and y[2] >= 1 and y[3] >= 1):
        raise ValueError("direct convolution: shapes do not match")
    sizes_windows(h, wd, kh, kw, sh, sw, pt, pl, y[2], y[3], False)


def sizes_stats(op, w, stats):
    """The fused batch-norm statistics of a convolution's output: ``(2, OC)`` (weights ``w``)."""
    if stats != (2, w[0]):
        raise ValueError(f"{op}: stats must have shape (2, OC) = (2, {w[0]}), got {stats}")


def sizes_conv2d_direct_forward(x, w, bias, sh, sw, pt, pl, relu, y, stats=None):
    _sizes_direct(x, w, y, sh, sw, pt, pl)
    if bias != w[:1]:
        raise ValueError("conv2d_direct_forward: bias must have shape (OC,)")
    if stats is not None:
        sizes_stats("conv2d_direct_forward", w, stats)


def sizes_conv2d_direct_forward_maxpool2(x, w, bias, sh, sw, pt, pl, relu, oh, ow, y, idx):
    sizes_conv2d_direct_forward(x, w, bias, sh, sw, pt, pl, relu, y[:2] + (oh, ow))
    if y[2:] != (oh // 2, ow // 2) or oh < 2 or ow < 2:
        raise ValueError("conv2d_direct_forward_maxpool2: y must have shape (N, OC, oh // 2, ow // 2), "
                         "the convolution's output (oh, ow) at least 2 x 2")
    if idx != y and idx != (0, 0, 0, 0):
        raise ValueError("conv2d_direct_forward_maxpool2: idx must have the shape of y, or (0, 0, 0, 0) for none")


def sizes_conv2d_direct_backward_data(gy, w, sh, sw, pt, pl, gx):
    _sizes_direct(gx, w, gy, sh, sw, pt, pl)


def sizes_conv2d_direct_backward_weight(gy, x, sh, sw, pt, pl, gw, gb):
    _sizes_direct(x, gw, gy, sh, sw, pt, pl)
    if gb != gw[:1] and gb != (0,):
        raise ValueError("conv2d_direct_backward_weight: gb must have shape (OC,) or (0,)")


def _sizes_winograd(op, w, pt, pl, m=2):
    if w[2:] not in ((3, 3), (5, 5)):
        raise ValueError(f"{op}: the kernel must be 3 x 3 or 5 x 5, got {w[2]} x {w[3]}")
    if max(pt, pl) > w[2] - 1:
        raise ValueError(f"{op}: the padding must be at most {w[2] - 1} for a {w[2]} x {w[3]} kernel, "
                         f"got {pt}, {pl}")
    if not hasattr(m, "__index__") or m not in (2, 4) or (m == 4 and w[2] != 3):
        raise ValueError(f"{op}: the output tile m must be 2, or 4 for a 3 x 3 kernel, got {m} "
                         f"for a {w[2]} x {w[3]} kernel")


def sizes_conv2d_winograd_forward(x, w, bias, pt, pl, relu, y, m=2, stats=None):
    _sizes_direct(x, w, y, 1, 1, pt, pl)
    _sizes_winograd("conv2d_winograd_forward", w, pt, pl, m)
    if bias != w[:1]:
        raise ValueError("conv2d_winograd_forward: bias must have shape (OC,)")
    if stats is not None:
        sizes_stats("conv2d_winograd_forward", w, stats)


def sizes_conv2d_winograd_forward_maxpool2(x, w, bias, pt, pl, relu, oh, ow, y, idx):
    sizes_conv2d_winograd_forward(x, w, bias, pt, pl, relu, y[:2] + (oh, ow))
    if y[2:] != (oh // 2, ow // 2) or oh < 2 or ow < 2:
        raise ValueError("conv2d_winograd_forward_maxpool2: y must have shape (N, OC, oh // 2, ow // 2), "
                         "the convolution's output (oh, ow) at least 2 x 2")
    if idx != y and idx != (0, 0, 0, 0):
        raise ValueError("conv2d_winograd_forward_maxpool2: idx must have the shape of y, or (0, 0, 0, 0) for none")


def sizes_conv2d_winograd_backward_data(gy, w, pt, pl, gx, m=2):
    _sizes_direct(gx, w, gy, 1, 1, pt, pl)
    _sizes_winograd("conv2d_winograd_backward_data", w, pt, pl, m)


def sizes_conv2d_winograd_backward_weight(gy, x, pt, pl, gw, gb):
    _sizes_direct(x, gw, gy, 1, 1, pt, pl)
    _sizes_winograd("conv2d_winograd_backward_weight", gw, pt, pl)
    if gb != gw[:1] and gb != (0,):
        raise ValueError("conv2d_winograd_backward_weight: gb must have shape (OC,) or (0,)")


def sizes_conv2d_direct_backward_maxpool2(gp, idx, y, x, w, sh, sw, pt, pl, oh, ow, gx, gw, gb):
    sizes_conv2d_direct_forward_maxpool2(x, w, w[:1], sh, sw, pt, pl, 0, oh, ow, gp, idx)
    if idx != gp:
        raise ValueError("conv2d_direct_backward_maxpool2: idx must have the shape of gp")
    if y != gp and y != (0, 0, 0, 0):
        raise ValueError("conv2d_direct_backward_maxpool2: y must have the shape of gp, or (0, 0, 0, 0) for no ReLU")
    if gx != x and gx != (0, 0, 0, 0):
        raise ValueError("conv2d_direct_backward_maxpool2: gx must have the shape of x, or (0, 0, 0, 0) for none")
    if gw != w:
        raise ValueError("conv2d_direct_backward_maxpool2: gw must have the shape of w")
    if gb != w[:1] and gb != (0,):
        raise ValueError("conv2d_direct_backward_maxpool2: gb must have shape (OC,) or (0,)")


def sizes_linear_forward(x, w, bias, nblocks, y):
    if not (w[1] == x[1] and bias == w[:1] and y == (x[0], w[0]) and nblocks >= 1):
        raise ValueError("dense layer: shapes do not match")
    if not (x[0] >= 1 and x[1] >= 1 and w[0] >= 1):
        raise ValueError("dense layer: empty dimension")


def sizes_linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx):
    sizes_linear_forward(x, w, gb, nblocks, gy)
    if not (gyt == (w[0], x[0]) and gw == w and (gx == x or not input_grad)):
        raise ValueError("linear_backward: gyt, gw or gx has the wrong shape")


def sizes_maxpool2d_forward(x, kh, kw, sh, sw, pt, pl, y, idx):
    sizes_avgpool2d_forward(x, kh, kw, sh, sw, pt, pl, False, y)
    if idx != y:
        raise ValueError("maxpool2d_forward: idx must have the shape of y")


def sizes_maxpool2d_backward(gy, idx, gx):
    if gy[:2] != gx[:2] or idx != gy:
        raise ValueError("maxpool2d_backward: shapes do not match")


def sizes_avgpool2d_forward(x, kh, kw, sh, sw, pt, pl, count_include_pad, y):
    if y[:2] != x[:2]:
        raise ValueError("pooling: input and output differ in batch size or channels")
    sizes_windows(x[2], x[3], kh, kw, sh, sw, pt, pl, y[2], y[3], True)


def sizes_avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, count_include_pad, gx):
    sizes_avgpool2d_forward(gx, kh, kw, sh, sw, pt, pl, count_include_pad, gy)


def sizes_relu_forward(x, y):
    """(Sizes, not shapes: the arrays may have any shape.)"""
    if x != y:
        raise ValueError("relu_forward: x and y differ in size")


def sizes_relu_backward(gy, y, gx):
    if not (gy == y and y == gx):
        raise ValueError("relu_backward: gy, y and gx differ in size")


def _sizes_sum(op, a, b, y):
    if not (a == b and b == y):
        raise ValueError(f"{op}: a, b and y differ in size")


def sizes_add_forward(a, b, y):
    _sizes_sum("add_forward", a, b, y)


def sizes_add_relu_forward(a, b, y):
    _sizes_sum("add_relu_forward", a, b, y)


def sizes_add_relu_backward(ga, gb, y, gx):
    if not (ga == gb and gb == y and y == gx):
        raise ValueError("add_relu_backward: ga, gb, y and gx differ in size")


def sizes_softmax_xent_forward(logits, labels, probs, losses):
    if probs != logits or labels != logits[:1] or losses != logits[:1]:
        raise ValueError("softmax_xent_forward: shapes do not match")


def sizes_softmax_xent_backward(probs, labels, gx):
    if gx != probs or labels != probs[:1]:
        raise ValueError("softmax_xent_backward: shapes do not match")


def sizes_batchnorm_stats(x, mean, var):
    if mean != x[1:2] or var != x[1:2]:
        raise ValueError("batch norm: the per-channel sums must have shape (C,)")


def sizes_batchnorm_forward(x, mean, inv_std, weight, bias, y, res=None):
    if not (mean == x[1:2] and inv_std == x[1:2] and weight == x[1:2] and bias == x[1:2] and y == x):
        raise ValueError("batch norm: shapes do not match")
    if res is not None and res != x:
        raise ValueError("batchnorm_forward: res must have the shape of x")


def sizes_batchnorm_forward_maxpool2(x, mean, inv_std, weight, bias, relu, y, idx):
    sizes_batchnorm_forward(x, mean, inv_std, weight, bias, x)
    if y != x[:2] + (x[2] // 2, x[3] // 2) or idx != y or x[2] < 2 or x[3] < 2:
        raise ValueError("batchnorm_forward_maxpool2: y and idx must have shape (N, C, H // 2, W // 2), "
                         "the input (H, W) at least 2 x 2")


def sizes_batchnorm_backward_reduce(gy, x, mean, inv_std, weight, bias, gsum, gdot):
    sizes_batchnorm_stats(gy, gsum, gdot)
    sizes_batchnorm_forward(gy, mean, inv_std, weight, bias, x)


def sizes_batchnorm_backward_apply(gy, x, mean, inv_std, weight, bias, scale, a, b, gx):
    sizes_batchnorm_forward(gy, mean, inv_std, weight, bias, x)
    sizes_batchnorm_forward(gy, scale, a, b, scale, gx)


def sizes_batchnorm_backward(gy, x, mean, inv_std, weight, bias, scale, gsum, gdot, gx):
    sizes_batchnorm_backward_reduce(gy, x, mean, inv_std, weight, bias, gsum, gdot)
    sizes_batchnorm_forward(gy, scale, scale, scale, scale, gx)


def sizes_sgd_step(p, g, buf, lr, weight_decay, momentum, dampening, nesterov, first):
    """(Sizes, not shapes: the arrays may have any shape.)"""
    if p != g:
        raise ValueError("sgd_step: p and g differ in size")
    if momentum != 0 and buf != p:
        raise ValueError("sgd_step: buf and p differ in size (momentum is not 0)")


def sizes_adam_step(p, g, m, v, lr_t, beta1, beta2, eps, bc2_sqrt):
    """(Sizes, not shapes: the arrays may have any shape.)"""
    if not (p == g and g == m and m == v):
        raise ValueError("adam_step: p, g, m and v differ in size")
