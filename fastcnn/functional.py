"""Stateless operations: arrays in, arrays out.

Each op validates its arguments (the one shape helper in ``_shapes``), then runs the kernel
primitives of the active backend (see :mod:`fastcnn._backend`).  Convolutions run on the
strategy :mod:`fastcnn._dispatch` picks per shape (public setting ``fastcnn.config(conv=...)``):
direct kernels, im2col + SGEMM one image per thread (dense layers then run as blocks of a GEMM
on the same threads), or chunks of the batch through NumPy's multi-threaded SGEMM.

Every op accepts ``ws``: a :class:`Workspace` whose scratch buffers (unfolded images or
chunks, GEMM results) and checked geometry are reused between calls of the same shape (the
layers keep one each).  Outputs and gradients are always new arrays.
"""
import functools
import threading
from threading import get_ident

import numpy as np

from . import _backend, _config, _dispatch, _ref, _threads
from ._shapes import (as_float32, as_labels, check_padding_arg, is_float32_array, output_size, pair,
                      resolve_padding)


class Workspace:
    """Named scratch buffers, reallocated only when the shape or dtype changes, and the
    checked geometry of recent argument combinations (so a layer called again with the same
    shapes skips re-deriving it; the arrays' dtype and layout are still checked every call).

    The buffers are per Python thread (keyed on :func:`threading.get_ident`), so one model can
    run inference from any number of threads at once: each thread gets its own scratch.  The
    buffers of threads that have ended are dropped when a new thread first asks.  The geometry
    cache holds immutable values and is shared.
    """

    def __init__(self):
        self._bufs = {}  # thread ident -> {name: array}
        self._plans = {}

    def get(self, name, shape, dtype=np.float32):
        bufs = self._bufs.get(get_ident())
        if bufs is None:
            bufs = self._thread_bufs()
        buf = bufs.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = np.empty(shape, dtype=dtype)
            bufs[name] = buf
        return buf

    def _thread_bufs(self):
        """A fresh buffer dict for the calling thread; forget threads that have ended."""
        alive = {t.ident for t in threading.enumerate()}
        for ident in list(self._bufs):
            if ident not in alive:
                self._bufs.pop(ident, None)
        bufs = self._bufs[get_ident()] = {}
        return bufs

    def clear(self):
        self._bufs.clear()
        self._plans.clear()

    def _plan(self, key):
        try:
            return self._plans.get(key)
        except TypeError:  # an unhashable argument (e.g. a list): no caching
            return None

    def _set_plan(self, key, value):
        try:
            if len(self._plans) >= 32:
                self._plans.clear()
            self._plans[key] = value
        except TypeError:
            pass


def _plain(v):
    """Whether a kernel/stride/padding argument is an int, a str or a pair of ints exactly
    (so equal cache keys mean equal arguments: ``True == 1`` and ``1.0 == 1`` must miss)."""
    t = type(v)
    return t is int or t is str or v is None or (t is tuple and len(v) == 2 and type(v[0]) is int
                                                 and type(v[1]) is int)


def _buf(ws, name, shape, dtype=np.float32):
    return np.empty(shape, dtype=dtype) if ws is None else ws.get(name, shape, dtype)


# --------------------------------------------------------------------------- convolution

class ConvGeometry:
    """Resolved geometry of a 2-D convolution or pooling window."""

    __slots__ = ("kh", "kw", "sh", "sw", "pt", "pb", "pl", "pr", "oh", "ow")

    def __init__(self, kernel, stride, padding, size, op):
        self.kh, self.kw = kernel
        self.sh, self.sw = stride
        self.pt, self.pb, self.pl, self.pr = resolve_padding(padding, kernel, stride, size, op)
        self.oh, self.ow = output_size(size, kernel, stride, (self.pt, self.pb, self.pl, self.pr), op)

    @property
    def args(self):
        """``(kh, kw, sh, sw, pt, pl)`` as the primitives take them."""
        return (self.kh, self.kw, self.sh, self.sw, self.pt, self.pl)


@functools.lru_cache(maxsize=256)
def _geometry(kernel, stride, padding, size, op):
    """Cached :class:`ConvGeometry` (arguments already normalised, so hashable)."""
    return ConvGeometry(kernel, stride, padding, size, op)


def _conv_check(x, weight, bias, stride, padding, op="conv2d", ws=None):
    ready = is_float32_array
    if (ws is not None and ready(x) and ready(weight) and (bias is None or ready(bias))
            and _plain(stride) and _plain(padding)):
        key = (op, x.shape, weight.shape, None if bias is None else bias.shape, stride, padding)
        g = ws._plan(key)
        if g is not None:  # these shapes and arguments passed every check before
            return x, weight, bias, g
        x, weight, bias, g = _conv_check(x, weight, bias, stride, padding, op)
        ws._set_plan(key, g)
        return x, weight, bias, g
    x = as_float32(x, "input", 4, op)
    weight = as_float32(weight, "weight", 4, op)
    oc, c, kh, kw = weight.shape
    if x.shape[1] != c:
        raise ValueError(
            f"{op}: input has {x.shape[1]} channels but weight {weight.shape} expects {c}; "
            f"expected input shape (N, {c}, H, W), got {x.shape}"
        )
    if min(weight.shape) < 1:
        raise ValueError(f"{op}: weight shape {weight.shape} has an empty dimension")
    if min(x.shape) < 1:
        raise ValueError(f"{op}: empty input of shape {x.shape}; expected (N, {c}, H, W) with N, H, W >= 1")
    if bias is not None:
        bias = as_float32(bias, "bias", 1, op)
        if bias.shape != (oc,):
            raise ValueError(f"{op}: bias must have shape ({oc},), got {bias.shape}")
    geo = _geometry((kh, kw), pair(stride, "stride", op), check_padding_arg(padding, op), x.shape[2:], op)
    return x, weight, bias, geo


def conv2d(x, weight, bias=None, stride=1, padding=0, *, relu=False, ws=None):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    Parameters
    ----------
    x : (N, C, H, W) float32
    weight : (OC, C, kh, kw) float32
    bias : (OC,) float32 or None
    stride : int or (int, int)
    padding : int, (int, int), ``"valid"`` or ``"same"`` (TensorFlow SAME, any stride)
    relu : bool
        Return ``max(conv, 0)`` (fused into the direct kernels).
    ws : Workspace, optional

    Returns
    -------
    y : (N, OC, OH, OW) float32
    """
    x, weight, bias, g = _conv_check(x, weight, bias, stride, padding, ws=ws)
    return _conv2d_forward(_backend.ops(), x, weight, bias, g, ws, relu)


def _conv2d_forward(k, x, weight, bias, g, ws, relu=False):
    """Forward with the primitives of backend module ``k`` (dtype of ``x``) on the strategy of
    :func:`fastcnn._dispatch.conv_plan`: direct kernels; one image (GEMM straight into the
    output); one image per thread at a time (``conv2d_forward_images``); or chunked im2col +
    NumPy GEMM + reorder."""
    n, c = x.shape[:2]
    oc = weight.shape[0]
    dt = x.dtype
    plan = _dispatch.conv_plan(k, n, c, oc, g.kh, g.kw, g.oh, g.ow, dt.itemsize, (g.sh, g.sw))
    if plan == "direct":
        y = np.empty((n, oc, g.oh, g.ow), dt)
        if bias is None:
            bias = _buf(ws, "zeros", (oc,), dt)
            bias[...] = 0
        k.conv2d_direct_forward(x, weight, bias, g.sh, g.sw, g.pt, g.pl, int(bool(relu)), y)
        return y
    y = _conv2d_forward_gemm(k, x, weight, bias, g, ws, plan)
    if relu:
        np.maximum(y, 0, out=y)
    return y


def _conv2d_forward_gemm(k, x, weight, bias, g, ws, plan):
    n, c = x.shape[:2]
    oc = weight.shape[0]
    p = g.oh * g.ow
    kdim = c * g.kh * g.kw
    dt = x.dtype
    w2 = weight.reshape(oc, kdim)
    y = np.empty((n, oc, p), dt)
    if plan == "single":  # one image: the GEMM result is already in (OC, OH*OW) order
        cols = _buf(ws, "cols1", (kdim, p), dt)
        k.im2col(x, *g.args, g.oh, g.ow, cols)
        np.dot(w2, cols, out=y[0])  # (np.dot: less call overhead than matmul for small arrays)
        if bias is not None:
            y[0] += bias[:, None]
        return y.reshape(n, oc, g.oh, g.ow)
    if bias is None:
        bias = _buf(ws, "zeros", (oc,), dt)
        bias[...] = 0
    if plan == "per_image":
        cols = _buf(ws, "icols", (_threads.get_num_threads(), kdim, p), dt)
        k.conv2d_forward_images(x, w2, bias, *g.args, g.oh, g.ow, cols, y)
        return y.reshape(n, oc, g.oh, g.ow)
    for a, b in _dispatch.chunks(n, kdim * p, dt.itemsize):
        cols = _buf(ws, f"cols{b - a}", (kdim, (b - a) * p), dt)
        k.im2col(x[a:b], *g.args, g.oh, g.ow, cols)
        ycnp = _buf(ws, f"ycnp{b - a}", (oc, (b - a) * p), dt)
        np.matmul(w2, cols, out=ycnp)
        k.cnp_to_ncp_bias(ycnp, bias, y[a:b])
    return y.reshape(n, oc, g.oh, g.ow)


def conv2d_backward(grad_out, x, weight, stride=1, padding=0, *, bias=True, input_grad=True, ws=None):
    """Gradients of :func:`conv2d`.

    Parameters
    ----------
    grad_out : (N, OC, OH, OW) float32
    x : (N, C, H, W) float32
        The forward input.
    weight : (OC, C, kh, kw) float32
    bias : bool
        Whether to return the bias gradient.
    input_grad : bool
        Whether to compute the input gradient (False for a network's first layer).

    Returns
    -------
    grad_x : (N, C, H, W) float32 or None
    grad_weight : (OC, C, kh, kw) float32
    grad_bias : (OC,) float32 or None
    """
    op = "conv2d_backward"
    x, weight, _, g = _conv_check(x, weight, None, stride, padding, op, ws)
    n, c = x.shape[:2]
    oc = weight.shape[0]
    grad_out = as_float32(grad_out, "grad_out", 4, op)
    if grad_out.shape != (n, oc, g.oh, g.ow):
        raise ValueError(f"{op}: grad_out must have shape {(n, oc, g.oh, g.ow)}, got {grad_out.shape}")
    return _conv2d_backward(_backend.ops(), grad_out, x, weight, g, bias, input_grad, ws)


def _conv2d_backward(k, grad_out, x, weight, g, bias, input_grad, ws):
    """Gradients on the strategy of :func:`fastcnn._dispatch.conv_plan`: direct kernels; one
    image (no reorders); one image per thread at a time (``conv2d_backward_images``); or per
    chunk: unfold again (cheaper than keeping the whole matrix), reorder the output gradient,
    accumulate the weight gradient in chunk order, fold the input gradient."""
    n, c = x.shape[:2]
    oc = weight.shape[0]
    p = g.oh * g.ow
    kdim = c * g.kh * g.kw
    dt = x.dtype
    plan = _dispatch.conv_plan(k, n, c, oc, g.kh, g.kw, g.oh, g.ow, dt.itemsize, (g.sh, g.sw), True)
    if plan == "direct":
        gw = np.empty(weight.shape, dt)
        gb = np.empty((oc,), dt)
        k.conv2d_direct_backward_weight(grad_out, x, g.sh, g.sw, g.pt, g.pl, gw, gb)
        gx = None
        if input_grad:
            gx = np.empty(x.shape, dt)
            k.conv2d_direct_backward_data(grad_out, weight, g.sh, g.sw, g.pt, g.pl, gx)
        return gx, gw, (gb if bias else None)
    w2 = weight.reshape(oc, kdim)
    gy = grad_out.reshape(n, oc, p)
    if plan == "single":  # one image: the output gradient is already in (OC, OH*OW) order
        g0 = gy[0]
        cols = _buf(ws, "cols1", (kdim, p), dt)
        k.im2col(x, *g.args, g.oh, g.ow, cols)
        gw = np.dot(g0, cols.T)
        gx = None
        if input_grad:
            np.dot(w2.T, g0, out=cols)
            gx = np.empty(x.shape, dtype=dt)
            k.col2im(cols, *g.args, g.oh, g.ow, gx)
        gb = g0.sum(axis=1, dtype=np.float64).astype(dt) if bias else None
        return gx, gw.reshape(weight.shape), gb
    if plan == "per_image":
        cols = _buf(ws, "icols", (_threads.get_num_threads(), kdim, p), dt)
        tmp = _buf(ws, "igwt", (_threads.get_num_threads(), kdim, oc), dt)
        gwt_part = _buf(ws, "igwt_part", (_ref.SLOTS, kdim, oc), dt)
        gb_part = _buf(ws, "igb_part", (_ref.SLOTS, oc), np.float64)
        gx = np.empty(x.shape, dtype=dt) if input_grad else _buf(ws, "nogx", (1, 1, 1, 1), dt)
        k.conv2d_backward_images(gy, x, w2, *g.args, g.oh, g.ow, bool(input_grad), cols, tmp, gwt_part,
                                 gb_part, gx)
        gwt = gwt_part[0]  # (a scratch buffer, rewritten by every call)
        for s in range(1, _ref.SLOTS):  # slot sums added in slot order
            gwt += gwt_part[s]
        gw = np.ascontiguousarray(gwt.T).reshape(weight.shape)
        return (gx if input_grad else None), gw, (gb_part.sum(axis=0).astype(dt) if bias else None)
    # The weight gradient is accumulated transposed, (kdim, OC) = cols @ gcnp.T: OpenBLAS
    # runs that orientation faster than gcnp @ cols.T (docs/PERFORMANCE.md).
    gwt = np.zeros((kdim, oc), dt)
    gb = np.zeros((oc,), np.float64)  # chunk sums added in chunk order
    gx = np.empty(x.shape, dtype=dt) if input_grad else None
    gb_c = _buf(ws, "gb_chunk", (oc,), dt)
    chunks = _dispatch.chunks(n, kdim * p, dt.itemsize)
    gwt_c = _buf(ws, "gwt_chunk", (kdim, oc), dt) if len(chunks) > 1 else gwt
    for a, b in chunks:
        m = (b - a) * p
        gcnp = _buf(ws, f"gcnp{b - a}", (oc, m), dt)
        k.ncp_to_cnp_sum(gy[a:b], gcnp, gb_c)
        gb += gb_c
        cols = _buf(ws, f"cols{b - a}", (kdim, m), dt)
        k.im2col(x[a:b], *g.args, g.oh, g.ow, cols)
        np.matmul(cols, gcnp.T, out=gwt_c)
        if gwt_c is not gwt:
            gwt += gwt_c
        if input_grad:
            np.matmul(w2.T, gcnp, out=cols)  # the columns' gradient, in place of the columns
            k.col2im(cols, *g.args, g.oh, g.ow, gx[a:b])
    gw = np.ascontiguousarray(gwt.T)
    return gx, gw.reshape(weight.shape), (gb.astype(dt) if bias else None)


# --------------------------------------------------------------------------- pooling

def _pool_geometry(x, kernel_size, stride, padding, op, ws=None):
    if ws is not None and is_float32_array(x) and _plain(kernel_size) and _plain(stride) and _plain(padding):
        key = (op, x.shape, kernel_size, stride, padding)
        hit = ws._plan(key)
        if hit is not None:  # these shapes and arguments passed every check before
            return (x,) + hit
        x, g, padding_ = _pool_geometry(x, kernel_size, stride, padding, op)
        ws._set_plan(key, (g, padding_))
        return x, g, padding_
    x = as_float32(x, "input", 4, op)
    if min(x.shape) < 1:  # (an empty plane would leave windows with no real cell)
        raise ValueError(f"{op}: empty input of shape {x.shape}; expected (N, C, H, W) with all sizes >= 1")
    kernel = pair(kernel_size, "kernel_size", op)
    stride = kernel if stride is None else pair(stride, "stride", op)
    padding = check_padding_arg(padding, op)
    g = _geometry(kernel, stride, padding, x.shape[2:], op)
    if max(g.pt, g.pb) >= g.kh or max(g.pl, g.pr) >= g.kw:
        raise ValueError(
            f"{op}: padding {(g.pt, g.pb, g.pl, g.pr)} must be smaller than the kernel {kernel} "
            "so that every window holds a real cell"
        )
    if isinstance(padding, tuple) and (2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]):
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel size {kernel}")
    return x, g, padding


def max_pool2d(x, kernel_size=2, stride=None, padding=0, *, ws=None, return_indices=False):
    """2-D max pooling (``torch.nn.functional.max_pool2d``; ``padding="same"`` as TensorFlow).

    Parameters
    ----------
    x : (N, C, H, W) float32
    kernel_size, stride : int or (int, int); ``stride`` defaults to ``kernel_size``
    padding : int, (int, int), ``"valid"`` or ``"same"``; padded cells never win

    Returns
    -------
    y : (N, C, OH, OW) float32
    indices : (N, C, OH, OW) int32, only if ``return_indices``; flat ``h*W + w`` per plane
    """
    x, g, _ = _pool_geometry(x, kernel_size, stride, padding, "max_pool2d", ws)
    n, c = x.shape[:2]
    y = np.empty((n, c, g.oh, g.ow), np.float32)
    idx = np.empty((n, c, g.oh, g.ow), np.int32)
    _backend.ops().maxpool2d_forward(x, *g.args, y, idx)
    return (y, idx) if return_indices else y


def max_pool2d_backward(grad_out, indices, input_shape, *, ws=None):
    """Gradient of :func:`max_pool2d`: each output gradient goes to its arg-max.

    Parameters
    ----------
    grad_out : (N, C, OH, OW) float32
    indices : (N, C, OH, OW) int32 from ``max_pool2d(..., return_indices=True)``
    input_shape : (N, C, H, W)

    Returns
    -------
    grad_x : (N, C, H, W) float32
    """
    op = "max_pool2d_backward"
    grad_out = as_float32(grad_out, "grad_out", 4, op)
    indices = np.asarray(indices)
    if indices.dtype != np.int32 or indices.shape != grad_out.shape:
        raise ValueError(f"{op}: indices must be int32 of shape {grad_out.shape}, got {indices.dtype} {indices.shape}")
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 4 or input_shape[:2] != grad_out.shape[:2]:
        raise ValueError(f"{op}: input_shape {input_shape} does not match grad_out {grad_out.shape}")
    plane = input_shape[2] * input_shape[3]
    if indices.size and (indices.min() < 0 or indices.max() >= plane):
        raise ValueError(f"{op}: indices out of range for input plane {input_shape[2:]}")
    return _max_pool2d_backward(grad_out, np.ascontiguousarray(indices), input_shape)


def _max_pool2d_backward(grad_out, indices, input_shape):
    """Arguments already checked (indices from :func:`max_pool2d`)."""
    gx = np.empty(input_shape, np.float32)
    _backend.ops().maxpool2d_backward(grad_out, indices, gx)
    return gx


def _include_pad(count_include_pad, padding):
    if count_include_pad is None:  # PyTorch counts padding; TensorFlow SAME does not
        return padding != "same"
    return bool(count_include_pad)


def avg_pool2d(x, kernel_size=2, stride=None, padding=0, count_include_pad=None, *, ws=None):
    """2-D average pooling.

    Parameters
    ----------
    x : (N, C, H, W) float32
    kernel_size, stride, padding : as :func:`max_pool2d`
    count_include_pad : bool or None
        Whether padded zeros count in the divisor.  None: True for int padding (PyTorch),
        False for ``"same"`` (TensorFlow).

    Returns
    -------
    y : (N, C, OH, OW) float32
    """
    x, g, padding = _pool_geometry(x, kernel_size, stride, padding, "avg_pool2d", ws)
    n, c = x.shape[:2]
    y = np.empty((n, c, g.oh, g.ow), np.float32)
    _backend.ops().avgpool2d_forward(x, *g.args, _include_pad(count_include_pad, padding), y)
    return y


def avg_pool2d_backward(grad_out, input_shape, kernel_size=2, stride=None, padding=0,
                        count_include_pad=None, *, ws=None):
    """Gradient of :func:`avg_pool2d`.

    Returns
    -------
    grad_x : (N, C, H, W) float32
    """
    op = "avg_pool2d_backward"
    dummy = np.empty((1, 1) + tuple(int(v) for v in input_shape[2:]), np.float32)
    _, g, padding = _pool_geometry(dummy, kernel_size, stride, padding, op)
    grad_out = as_float32(grad_out, "grad_out", 4, op)
    input_shape = tuple(int(v) for v in input_shape)
    if grad_out.shape != input_shape[:2] + (g.oh, g.ow):
        raise ValueError(f"{op}: grad_out must have shape {input_shape[:2] + (g.oh, g.ow)}, got {grad_out.shape}")
    gx = np.empty(input_shape, np.float32)
    _backend.ops().avgpool2d_backward(grad_out, *g.args, _include_pad(count_include_pad, padding), gx)
    return gx


# --------------------------------------------------------------------------- activations

def relu(x, *, ws=None):
    """Rectified linear unit. x : any shape float32. Returns a new array of the same shape."""
    x = as_float32(x, "input", None, "relu")
    y = np.empty(x.shape, np.float32)
    _backend.ops().relu_forward(x, y)
    return y


def relu_backward(grad_out, y, *, ws=None):
    """Gradient of :func:`relu` given its output ``y`` (same shape as ``grad_out``)."""
    op = "relu_backward"
    grad_out = as_float32(grad_out, "grad_out", None, op)
    y = as_float32(y, "output", None, op)
    if grad_out.shape != y.shape:
        raise ValueError(f"{op}: grad_out shape {grad_out.shape} does not match output shape {y.shape}")
    gx = np.empty(y.shape, np.float32)
    _backend.ops().relu_backward(grad_out, y, gx)
    return gx


# --------------------------------------------------------------------------- dense

def _linear_check(x, weight, bias, op):
    x = as_float32(x, "input", 2, op)
    weight = as_float32(weight, "weight", 2, op)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{op}: input has {x.shape[1]} features but weight {weight.shape} expects "
            f"{weight.shape[1]}; expected input shape (N, {weight.shape[1]}), got {x.shape}"
        )
    if x.shape[0] < 1:
        raise ValueError(f"{op}: empty batch, input shape {x.shape}")
    if bias is not None:
        bias = as_float32(bias, "bias", 1, op)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    return x, weight, bias


def linear(x, weight, bias=None, *, ws=None):
    """``x @ weight.T + bias`` through NumPy's BLAS.

    Parameters
    ----------
    x : (N, in_features) float32
    weight : (out_features, in_features) float32
    bias : (out_features,) float32 or None

    Returns
    -------
    y : (N, out_features) float32
    """
    x, weight, bias = _linear_check(x, weight, bias, "linear")
    y = np.empty((x.shape[0], weight.shape[0]), np.float32)
    k = _backend.ops()
    if x.shape[0] > 1 and x.shape[1] > 0 and _dispatch.one_pool(k):  # (no GEMM blocks for empty K)
        if bias is None:
            bias = _buf(ws, "zeros", (weight.shape[0],))
            bias[...] = 0
        k.linear_forward(x, weight, bias, _config.dense_blocks(weight.shape[0]), y)
        return y
    np.dot(x, weight.T, out=y)  # (np.dot: the same SGEMM as matmul, less call overhead)
    if bias is not None:
        y += bias
    return y


def linear_backward(grad_out, x, weight, *, bias=True, input_grad=True, ws=None):
    """Gradients of :func:`linear`: ``(grad_x, grad_weight, grad_bias)``."""
    op = "linear_backward"
    x, weight, _ = _linear_check(x, weight, None, op)
    grad_out = as_float32(grad_out, "grad_out", 2, op)
    if grad_out.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"{op}: grad_out must have shape {(x.shape[0], weight.shape[0])}, got {grad_out.shape}")
    k = _backend.ops()
    if x.shape[0] > 1 and x.shape[1] > 0 and _dispatch.one_pool(k):  # (no GEMM blocks for empty K)
        n, out = grad_out.shape
        gw = np.empty(weight.shape, np.float32)
        gb = np.empty((out,), np.float32)
        gx = np.empty(x.shape, np.float32) if input_grad else _buf(ws, "nogx", (1, 1))
        k.linear_backward(grad_out, x, weight, bool(input_grad), _config.dense_blocks(out),
                          _buf(ws, "gyt", (out, n)), gw, gb, gx)
        return (gx if input_grad else None), gw, (gb if bias else None)
    # np.dot, not matmul: for N = 1 (an outer product) matmul takes a slow non-BLAS loop
    # (15 us against 2.6 us at 10x1352); for N > 1 both call the same SGEMM.
    gw = np.dot(grad_out.T, x)
    if x.shape[0] == 1:
        gb = grad_out[0].copy() if bias else None  # (a sum of one term)
    else:
        gb = grad_out.sum(axis=0, dtype=np.float64).astype(np.float32) if bias else None
    gx = None
    if input_grad:
        gx = np.empty(x.shape, np.float32)
        np.dot(grad_out, weight, out=gx)
    return gx, gw, gb


# --------------------------------------------------------------------------- loss

def softmax_cross_entropy(logits, labels, *, ws=None, return_labels=False):
    """Mean softmax cross-entropy (``torch.nn.functional.cross_entropy``).

    Parameters
    ----------
    logits : (N, K) float32
    labels : (N,) integer class indices in ``[0, K)``

    Returns
    -------
    loss : float
        Mean over the batch.
    probs : (N, K) float32
        Softmax, for :func:`softmax_cross_entropy_backward`.
    labels : (N,) int64
        The validated labels, only if ``return_labels``.
    """
    op = "softmax_cross_entropy"
    logits = as_float32(logits, "logits", 2, op)
    if logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"{op}: logits must be (N, K) with N, K >= 1, got {logits.shape}")
    labels = as_labels(labels, logits.shape[0], logits.shape[1], op)
    probs = np.empty(logits.shape, np.float32)
    losses = _buf(ws, "losses", (logits.shape[0],))
    _backend.ops().softmax_xent_forward(logits, labels, probs, losses)
    loss = float(losses[0]) if len(losses) == 1 else float(losses.mean(dtype=np.float64))
    return (loss, probs, labels) if return_labels else (loss, probs)


def softmax_cross_entropy_backward(probs, labels, *, ws=None):
    """Gradient of the mean loss w.r.t. the logits: ``(probs - onehot) / N``, (N, K) float32."""
    op = "softmax_cross_entropy_backward"
    probs = as_float32(probs, "probs", 2, op)
    return _softmax_cross_entropy_backward(probs, as_labels(labels, probs.shape[0], probs.shape[1], op))


def _softmax_cross_entropy_backward(probs, labels):
    """Arguments already checked (labels int64, in range)."""
    gx = np.empty(probs.shape, np.float32)
    _backend.ops().softmax_xent_backward(probs, labels, gx)
    return gx


# --------------------------------------------------------------------------- batch norm

def batch_norm2d(x, weight, bias, running_mean, running_var, *, training, momentum=0.1, eps=1e-5, sync=None):
    """Batch normalisation over (N, H, W) per channel, as ``torch.nn.functional.batch_norm``.

    Parameters
    ----------
    x : (N, C, H, W) float32
    weight, bias : (C,) float32
    running_mean, running_var : (C,) float32
        Updated in place when ``training`` (unbiased variance, PyTorch's momentum rule).
    training : bool
        Normalise with the batch statistics (True) or the running ones (False).
    sync : object or None
        Synchronised statistics across processes (:mod:`fastcnn.distributed`): in training,
        ``sync.stats(count, mean, var) -> (count, mean, var)`` turns this batch's per-channel
        statistics into those of the global batch, and ``sync.grad_sums(count, gsum, gdot)``
        does the same for the backward sums (``count``: this batch's values per channel).

    Returns
    -------
    y : (N, C, H, W) float32
    cache : tuple
        For :func:`batch_norm2d_backward`.
    """
    op = "batch_norm2d"
    x = as_float32(x, "input", 4, op)
    c = x.shape[1]
    for name, arr in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                      ("running_var", running_var)):
        if arr.shape != (c,):
            raise ValueError(f"{op}: {name} must have shape ({c},) for input {x.shape}, got {arr.shape}")
    weight = as_float32(weight, "weight", 1, op)
    bias = as_float32(bias, "bias", 1, op)
    n, _, h, w = x.shape
    m = n * h * w
    k = _backend.ops()
    if training:
        if m < 2:
            raise ValueError(f"{op}: training needs more than one value per channel, got input {x.shape}")
        mean = np.empty(c, np.float64)
        var = np.empty(c, np.float64)
        k.batchnorm_stats(x, mean, var)  # biased variance, float64
        if sync is not None:
            m, mean, var = sync.stats(m, mean, var)
        running_mean *= 1.0 - momentum
        running_mean += (momentum * mean).astype(np.float32)
        running_var *= 1.0 - momentum
        running_var += (momentum * var * m / (m - 1)).astype(np.float32)
        inv_std = (1.0 / np.sqrt(var + eps)).astype(np.float32)
        center = mean.astype(np.float32)
    else:
        inv_std = (1.0 / np.sqrt(running_var.astype(np.float64) + eps)).astype(np.float32)
        center = np.ascontiguousarray(running_mean, dtype=np.float32)
    xhat = np.empty(x.shape, np.float32)
    y = np.empty(x.shape, np.float32)
    k.batchnorm_forward(x, center, inv_std, weight, bias, xhat, y)
    return y, (xhat, inv_std, training, m, sync if training else None)


def batch_norm2d_backward(grad_out, cache, weight):
    """Gradients of :func:`batch_norm2d`: ``(grad_x, grad_weight, grad_bias)``.

    With synchronised statistics the weight and bias gradients stay this process's share
    (summed with the other parameters' gradients later); the input gradient uses the sums
    over the global batch.
    """
    op = "batch_norm2d_backward"
    xhat, inv_std, training, m, sync = cache
    grad_out = as_float32(grad_out, "grad_out", 4, op)
    if grad_out.shape != xhat.shape:
        raise ValueError(f"{op}: grad_out must have shape {xhat.shape}, got {grad_out.shape}")
    weight = as_float32(weight, "weight", 1, op)
    c = xhat.shape[1]
    if weight.shape != (c,):
        raise ValueError(f"{op}: weight must have shape ({c},), got {weight.shape}")
    k = _backend.ops()
    gb = np.empty(c, np.float64)
    gw = np.empty(c, np.float64)
    k.batchnorm_backward_reduce(grad_out, xhat, gb, gw)  # sum(gy), sum(gy * xhat)
    scale = weight * inv_std
    if training:
        sb, sw = (gb, gw) if sync is None else sync.grad_sums(xhat.size // c, gb, gw)
        a = (sb / m).astype(np.float32)
        b = (sw / m).astype(np.float32)
    else:  # gx = gy * scale
        a = b = np.zeros(c, np.float32)
    gx = np.empty(xhat.shape, np.float32)
    k.batchnorm_backward_apply(grad_out, xhat, scale, a, b, gx)
    return gx, gw.astype(np.float32), gb.astype(np.float32)


# --------------------------------------------------------------------------- tutorial form

def corr2d(x, k):
    """Single-channel 2-D cross-correlation, the tutorials' ``corr2d(X, K)``.

    ``Y[i, j] = sum(X[i:i + h, j:j + w] * K)`` for a ``(h, w)`` kernel: "convolution" as deep
    learning uses the word (no kernel flip), computed by the :func:`conv2d` primitive with one
    input and one output channel, no padding, stride 1.

    Parameters
    ----------
    x : (H, W) float array
    k : (h, w) float array, ``h <= H`` and ``w <= W``

    Returns
    -------
    y : (H - h + 1, W - w + 1) float32

    Examples
    --------
    >>> import numpy as np
    >>> from fastcnn.functional import corr2d
    >>> corr2d(np.arange(9.0).reshape(3, 3), np.arange(4.0).reshape(2, 2))
    array([[19., 25.],
           [37., 43.]], dtype=float32)
    """
    x = as_float32(x, "input", 2, "corr2d")
    k = as_float32(k, "kernel", 2, "corr2d")
    return conv2d(x[None, None], k[None, None])[0, 0]
