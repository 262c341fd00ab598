"""Stateless operations: arrays in, arrays out.

Every public op here is the one place its arguments are checked (with the helpers of
``_shapes``); it then runs the kernel primitives of the active backend
(:mod:`fastcnn._backend`) on the checked arrays.  Convolutions run on the strategy
:mod:`fastcnn._dispatch` picks per shape (docs/PERFORMANCE.md, sections 1 and 3).

The ops of the layers accept ``ws``: a :class:`Workspace` whose scratch buffers (unfolded
images or chunks, GEMM results) and checked geometry ("plans") are reused between calls of
the same shapes (each layer keeps one).  Outputs and gradients are new arrays (``flatten``:
a view).
"""
from __future__ import annotations

import functools
import math
import operator
import threading
from collections.abc import Hashable, Sequence
from threading import get_ident
from types import ModuleType
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _backend, _config, _dispatch, _ref, _threads
from ._shapes import (
    IntOrPair,
    Padding,
    as_float32,
    as_labels,
    as_shape,
    check_padding_arg,
    is_float32_array,
    output_size,
    pair,
    resolve_padding,
    zeros,
)

__all__ = [
    "Workspace", "ConvGeometry",
    "conv2d", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "sum_pool2d", "sum_pool2d_backward", "global_avg_pool2d", "global_avg_pool2d_backward",
    "relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "add", "add_relu", "add_relu_backward",
    "flatten", "flatten_backward", "dropout", "dropout_backward",
    "linear", "linear_backward",
    "softmax_cross_entropy", "softmax_cross_entropy_backward", "mse_loss", "mse_loss_backward",
    "batch_norm2d", "batch_norm2d_backward", "fold_batch_norm",
    "adam_step", "sgd_step",
    "corr2d",
]


class Workspace:
    """Named scratch buffers, reallocated only when the shape or dtype changes; the checked
    geometry of recent argument combinations (so a layer called again with the same shapes
    skips re-deriving it; the arrays' dtype and layout are still checked every call); and what
    a forward op made and checked for its backward (``max_pool2d``'s indices, read-only), so
    that the backward given the same workspace and arrays does not check them again.

    The buffers and those records are per Python thread (docs/ROBUSTNESS.md, "Threads"); those
    of threads that have ended are dropped when a new thread first asks.  The plans hold
    immutable values and are shared.
    """

    def __init__(self) -> None:
        self._bufs: dict[int, dict[str, Any]] = {}  # thread ident -> {name: array or record}
        self._plans: dict[Hashable, Any] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: DTypeLike = np.float32) -> np.ndarray:
        bufs = self._bufs.get(get_ident())
        if bufs is None:
            bufs = self._thread_bufs()
        buf = bufs.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = np.empty(shape, dtype=dtype)
            bufs[name] = buf
        return buf

    def _thread_bufs(self) -> dict[str, Any]:
        """A fresh buffer dict for the calling thread; forget threads that have ended."""
        alive = {t.ident for t in threading.enumerate()}
        for ident in list(self._bufs):
            if ident not in alive:
                self._bufs.pop(ident, None)
        bufs: dict[str, Any] = {}
        self._bufs[get_ident()] = bufs
        return bufs

    def _record(self, op: str, *values: Any) -> None:
        """Remember, for this thread, what forward op ``op`` made and checked for its backward."""
        bufs = self._bufs.get(get_ident())
        if bufs is None:
            bufs = self._thread_bufs()
        bufs["record " + op] = values

    def _recorded(self, op: str) -> tuple[Any, ...] | None:
        bufs = self._bufs.get(get_ident())
        return None if bufs is None else bufs.get("record " + op)

    def clear(self) -> None:
        self._bufs.clear()
        self._plans.clear()

    def _plan(self, key: Hashable) -> Any:
        """The plan stored under ``key`` (arguments checked before), or None."""
        return self._plans.get(key)

    def _set_plan(self, key: Hashable, value: Any) -> None:
        if len(self._plans) >= 32:
            self._plans.clear()
        self._plans[key] = value


def _plain(v: object) -> bool:
    """Whether a kernel/stride/padding argument is an int, a str or a pair of ints exactly
    (so equal cache keys mean equal arguments: ``True == 1`` and ``1.0 == 1`` must miss)."""
    t = type(v)
    if t is int or t is str or v is None:
        return True
    return type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int


def _buf(ws: Workspace | None, name: str, shape: tuple[int, ...], dtype: DTypeLike = np.float32) -> np.ndarray:
    return np.empty(shape, dtype=dtype) if ws is None else ws.get(name, shape, dtype)


# --------------------------------------------------------------------------- convolution

class ConvGeometry:
    """Resolved geometry of a 2-D convolution or pooling window over ``size = (H, W)``;
    raises ``ValueError`` if the kernel does not fit the padded input."""

    __slots__ = ("kh", "kw", "sh", "sw", "pt", "pb", "pl", "pr", "oh", "ow")

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], padding: Padding,
                 size: tuple[int, ...], op: str) -> None:
        self.kh, self.kw = kernel
        self.sh, self.sw = stride
        self.pt, self.pb, self.pl, self.pr = resolve_padding(padding, kernel, stride, size, op)
        self.oh, self.ow = output_size(size, kernel, stride, (self.pt, self.pb, self.pl, self.pr), op)

    @property
    def args(self) -> tuple[int, int, int, int, int, int]:
        """``(kh, kw, sh, sw, pt, pl)`` as the primitives take them."""
        return (self.kh, self.kw, self.sh, self.sw, self.pt, self.pl)


def _conv_check(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None, stride: IntOrPair, padding: Padding,
                op: str = "conv2d", ws: Workspace | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, ConvGeometry]:
    """The checked arrays and geometry of a convolution; remembered per shapes in ``ws``."""
    key = None
    if (ws is not None and is_float32_array(x) and is_float32_array(weight)
            and (bias is None or is_float32_array(bias)) and _plain(stride) and _plain(padding)):
        key = (op, x.shape, weight.shape, None if bias is None else bias.shape, stride, padding)
        g = ws._plan(key)
        if g is not None:  # these shapes and arguments passed every check before
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
    g = ConvGeometry((kh, kw), pair(stride, "stride", op), check_padding_arg(padding, op), x.shape[2:], op)
    if ws is not None and key is not None:
        ws._set_plan(key, g)
    return x, weight, bias, g


def conv2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: IntOrPair = 1,
           padding: Padding = 0, *, relu: bool = False, max_pool2: bool = False,
           return_indices: bool = False, stats: np.ndarray | None = None, ws: Workspace | None = None) -> Any:
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
    max_pool2 : bool
        Return ``max_pool2d(y, 2)`` of that instead, fused into the direct and Winograd kernels
        (each image or group of images pooled while its output is in cache), bit for bit the
        two ops in sequence.
    return_indices : bool
        With ``max_pool2``: also return the pooling's indices, as ``max_pool2d``'s (for
        :func:`max_pool2d_backward` into the convolution's output shape).
    stats : (2, OC) float64 array, optional
        Filled with the output's per-channel batch mean (``stats[0]``) and biased variance
        (``stats[1]``), as :func:`batch_norm2d` computes them in training (pass them to it as
        ``batch_stats``): the direct and Winograd kernels sum each image's output planes while
        they are in cache, bit for bit a separate pass.  Not with ``max_pool2``.
    ws : Workspace, optional

    Returns
    -------
    y : (N, OC, OH, OW) float32; with ``max_pool2`` (N, OC, OH // 2, OW // 2)
    indices : (N, OC, OH // 2, OW // 2) int32, with ``return_indices`` (read-only with ``ws``,
        as ``max_pool2d``'s)
    """
    if return_indices and not max_pool2:
        raise ValueError("conv2d: return_indices=True needs max_pool2=True")
    x, weight, bias, g = _conv_check(x, weight, bias, stride, padding, ws=ws)
    if stats is not None:
        if max_pool2:
            raise ValueError("conv2d: stats are of the full-size output; not with max_pool2=True")
        _stats_check("conv2d", stats, weight.shape[0])
    return _conv2d_forward(_backend.ops(), x, weight, bias, g, ws, relu, max_pool2, return_indices, stats)


def _stats_check(op: str, stats: Any, c: int) -> None:
    """Refuse anything but a writable C-contiguous (2, c) float64 array of batch statistics."""
    if not (isinstance(stats, np.ndarray) and stats.dtype == np.float64 and stats.shape == (2, c)
            and stats.flags.c_contiguous and stats.flags.writeable):
        got = (f"{stats.dtype} array of shape {stats.shape}" if isinstance(stats, np.ndarray)
               else type(stats).__name__)
        raise ValueError(f"{op}: stats must be a writable C-contiguous float64 array of shape (2, {c}), got {got}")


def _conv2d_forward(k: ModuleType, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, g: ConvGeometry,
                    ws: Workspace | None, relu: bool = False, max_pool2: bool = False,
                    return_indices: bool = False, stats: np.ndarray | None = None) -> Any:
    """Forward with the primitives of backend module ``k`` (dtype of ``x``) on the strategy of
    :func:`fastcnn._dispatch.conv_plan`: direct kernels; one image (GEMM straight into the
    output); one image per thread at a time (``conv2d_forward_images``); or chunked im2col +
    NumPy GEMM + reorder.  ``stats`` (checked, not pooled): the direct and Winograd kernels
    fill them; the other strategies by ``batchnorm_stats`` after."""
    n, c = x.shape[:2]
    oc = weight.shape[0]
    dt = x.dtype
    pooled = max_pool2 and g.oh >= 2 and g.ow >= 2  # (else too small to pool: max_pool2d says so below)
    plan = _dispatch.conv_plan(k, n, c, oc, g.kh, g.kw, g.oh, g.ow, dt.itemsize, strided=g.sh * g.sw > 1,
                               pad=max(g.pt, g.pl), pooled=pooled)
    b0 = zeros(oc, dt) if bias is None else bias  # (the direct and Winograd kernels take a bias)
    if plan in ("direct", "winograd") and pooled:  # (the pooling in the kernels)
        y, idx = _pooled_forward(k, x, weight, b0, g, relu, return_indices, plan == "winograd")
        if not return_indices:
            return y
        if ws is not None:  # as max_pool2d's: trusted by max_pool2d_backward with this ws
            return y, _trusted_indices(ws, idx, (n, oc, g.oh, g.ow))
        return y, idx
    if plan == "winograd":
        y = np.empty((n, oc, g.oh, g.ow), dt)
        k.conv2d_winograd_forward(x, weight, b0, g.pt, g.pl, int(bool(relu)), y,
                                  _dispatch.winograd_tile(k, c, oc, g.kh), stats)
    elif plan == "direct":
        y = _direct_forward(k, x, weight, b0, g, relu, stats)
    else:
        y = _conv2d_forward_gemm(k, x, weight, bias, g, ws, plan)
        if relu:
            np.maximum(y, 0, out=y)
        if stats is not None:
            k.batchnorm_stats(y, stats[0], stats[1])
    if not max_pool2:
        return y
    return max_pool2d(y, 2, return_indices=return_indices, ws=ws)  # (too small to pool: it says so)


def _direct_forward(k: ModuleType, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, g: ConvGeometry, relu: bool,
                    stats: np.ndarray | None = None) -> np.ndarray:
    """The direct kernels' forward into a new array (``bias``: zeros for none)."""
    y = np.empty((x.shape[0], weight.shape[0], g.oh, g.ow), x.dtype)
    k.conv2d_direct_forward(x, weight, bias, g.sh, g.sw, g.pt, g.pl, int(bool(relu)), y, stats)
    return y


def _pooled_forward(k: ModuleType, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, g: ConvGeometry, relu: bool,
                    indices: bool, winograd: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The direct (or Winograd) kernels' forward with the 2x2 pooling, into new arrays: the
    pooled output and its indices (an empty array unless ``indices``)."""
    y = np.empty((x.shape[0], weight.shape[0], g.oh // 2, g.ow // 2), x.dtype)
    idx = np.empty(y.shape if indices else (0, 0, 0, 0), np.int32)
    if winograd:
        k.conv2d_winograd_forward_maxpool2(x, weight, bias, g.pt, g.pl, int(bool(relu)), g.oh, g.ow, y, idx)
    else:
        k.conv2d_direct_forward_maxpool2(x, weight, bias, g.sh, g.sw, g.pt, g.pl, int(bool(relu)), g.oh, g.ow, y, idx)
    return y, idx


def _conv2d_forward_gemm(k: ModuleType, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                         g: ConvGeometry, ws: Workspace | None, plan: str) -> np.ndarray:
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
        bias = zeros(oc, dt)
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


def conv2d_backward(grad_out: ArrayLike, x: ArrayLike, weight: ArrayLike, stride: IntOrPair = 1,
                    padding: Padding = 0, *, bias: bool = True, input_grad: bool = True,
                    pool_indices: ArrayLike | None = None, relu_output: ArrayLike | None = None,
                    ws: Workspace | None = None) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`conv2d`.

    Parameters
    ----------
    grad_out : (N, OC, OH, OW) float32
        With ``pool_indices``: the gradient of the pooled output, (N, OC, OH // 2, OW // 2).
    x : (N, C, H, W) float32
        The forward input.
    weight : (OC, C, kh, kw) float32
    bias : bool
        Whether to return the bias gradient.
    input_grad : bool
        Whether to compute the input gradient (False for a network's first layer).
    pool_indices : int32, optional
        The indices of ``conv2d(..., max_pool2=True, return_indices=True)``: the gradients of
        that fused pooling (and of its ReLU, with ``relu_output``) too.  On the direct kernels
        one primitive takes the pooled gradient and rebuilds each image's full-size gradient
        where it is packed (``conv2d_direct_backward_maxpool2``; its weight gradient from the
        windows' winners alone, which the Winograd plan uses too); the other strategies run
        :func:`relu_backward` and :func:`max_pool2d_backward` first.  The same bytes either way.
    relu_output : float32, optional
        The output of ``conv2d(..., relu=True)`` (the pooled one with ``pool_indices``):
        ``grad_out`` is masked by ``relu_output > 0`` first (:func:`relu_backward`).

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
    full = (n, oc, g.oh, g.ow)
    want = full if pool_indices is None else (n, oc, g.oh // 2, g.ow // 2)
    grad_out = as_float32(grad_out, "grad_out", 4, op)
    if grad_out.shape != want:
        raise ValueError(f"{op}: grad_out must have shape {want}, got {grad_out.shape}")
    k = _backend.ops()
    if relu_output is not None:
        relu_output = as_float32(relu_output, "relu_output", 4, op)
        if relu_output.shape != want:
            raise ValueError(f"{op}: relu_output must have shape {want}, got {relu_output.shape}")
    idx = None if pool_indices is None else _pool_indices(grad_out, pool_indices, full, op, ws)[0]
    return _conv2d_backward_fused(k, grad_out, x, weight, g, bias, input_grad, idx, relu_output, ws)


def _conv2d_backward_fused(k: ModuleType, grad_out: np.ndarray, x: np.ndarray, weight: np.ndarray,
                           g: ConvGeometry, bias: bool, input_grad: bool, idx: np.ndarray | None,
                           relu_output: np.ndarray | None, ws: Workspace | None,
                           ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """:func:`conv2d_backward` of arrays it checked (``idx``: the pooling's indices, checked, or None)."""
    n, c = x.shape[:2]
    oc = weight.shape[0]
    full = (n, oc, g.oh, g.ow)
    plan = _dispatch.conv_plan(k, n, c, oc, g.kh, g.kw, g.oh, g.ow, x.dtype.itemsize, True, input_grad,
                               g.sh * g.sw > 1, max(g.pt, g.pl))
    if idx is not None:
        # The direct plan's pooled primitive (its gradients from the pooling's winners,
        # docs/PERFORMANCE.md, section 9); on the Winograd plan for the weights, and for the
        # input where it takes that from the winners.
        if plan == "direct" or (plan == "winograd" and not _dispatch.winograd_weight()):
            direct_gx = input_grad and (plan == "direct" or _dispatch.pooled_input_grad_from_winners(
                c, g.kh, g.kw, g.sh, g.sw))
            gx, gw, gb = _pooled_backward(k, grad_out, idx, relu_output, x, weight, g, bias, direct_gx)
            if input_grad and not direct_gx:
                gx = np.empty(x.shape, np.float32)
                k.conv2d_winograd_backward_data(_unpooled(k, grad_out, idx, relu_output, full), weight, g.pt, g.pl,
                                                gx, _dispatch.winograd_tile(k, c, oc, g.kh))
            return (gx if input_grad else None), gw, (gb if bias else None)
        grad_out = _unpooled(k, grad_out, idx, relu_output, full)
    elif relu_output is not None:
        grad_out = relu_backward(grad_out, relu_output, ws=ws)
    return _conv2d_backward(k, grad_out, x, weight, g, bias, input_grad, ws, plan)


_NO_Y = np.empty((0, 0, 0, 0), np.float32)  # (no fused ReLU: the pooled backward's empty output; never written)


def _pooled_backward(k: ModuleType, grad_out: np.ndarray, idx: np.ndarray, relu_output: np.ndarray | None,
                     x: np.ndarray, weight: np.ndarray, g: ConvGeometry, bias: bool, input_grad: bool
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``conv2d_direct_backward_maxpool2`` (from the pooled gradient and the pooling's winners)
    into new arrays: the input, weight and bias gradients (empty arrays unless ``input_grad`` /
    ``bias``)."""
    gx = np.empty(x.shape if input_grad else (0, 0, 0, 0), np.float32)
    gw = np.empty(weight.shape, np.float32)
    gb = np.empty((weight.shape[0] if bias else 0,), np.float32)
    k.conv2d_direct_backward_maxpool2(grad_out, idx, _NO_Y if relu_output is None else relu_output, x, weight,
                                      g.sh, g.sw, g.pt, g.pl, g.oh, g.ow, gx, gw, gb)
    return gx, gw, gb


def _conv2d_backward_single(k: ModuleType, g0: np.ndarray, x: np.ndarray, weight: np.ndarray, g: ConvGeometry,
                            bias: bool, input_grad: bool, cols: np.ndarray, gw_out: np.ndarray | None = None
                            ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """The gradients of one image (the ``"single"`` plan) from ``g0``, its output gradient as
    (OC, OH*OW) (no reorders), with ``cols`` (C*kh*kw, OH*OW) as scratch; the weight gradient
    written into ``gw_out`` (OC, C*kh*kw) if given (C-contiguous, sharing no memory with the
    others)."""
    k.im2col(x, *g.args, g.oh, g.ow, cols)
    gw = np.dot(g0, cols.T, out=gw_out)
    gx = None
    if input_grad:
        np.dot(weight.reshape(weight.shape[0], -1).T, g0, out=cols)
        gx = np.empty(x.shape, dtype=x.dtype)
        k.col2im(cols, *g.args, g.oh, g.ow, gx)
    gb = g0.sum(axis=1, dtype=np.float64).astype(x.dtype) if bias else None
    return gx, gw.reshape(weight.shape), gb


def _conv2d_backward(k: ModuleType, grad_out: np.ndarray, x: np.ndarray, weight: np.ndarray, g: ConvGeometry,
                     bias: bool, input_grad: bool, ws: Workspace | None, plan: str | None = None
                     ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients on the strategy of :func:`fastcnn._dispatch.conv_plan` (``plan``, if the
    caller has it): direct kernels; one image (no reorders); one image per thread at a time
    (``conv2d_backward_images``); or per chunk: unfold again (cheaper than keeping the whole
    matrix), reorder the output gradient, accumulate the weight gradient in chunk order, fold
    the input gradient."""
    n, c = x.shape[:2]
    oc = weight.shape[0]
    p = g.oh * g.ow
    kdim = c * g.kh * g.kw
    dt = x.dtype
    if plan is None:
        plan = _dispatch.conv_plan(k, n, c, oc, g.kh, g.kw, g.oh, g.ow, dt.itemsize, True, input_grad,
                                   g.sh * g.sw > 1, max(g.pt, g.pl))
    gx: np.ndarray | None
    if plan in ("direct", "winograd"):  # (Winograd: the input gradient; the weights' if forced)
        gw = np.empty(weight.shape, dt)
        gb = np.empty((oc if bias else 0,), dt)  # (empty: the kernels skip the bias sum)
        if plan == "winograd" and _dispatch.winograd_weight():
            k.conv2d_winograd_backward_weight(grad_out, x, g.pt, g.pl, gw, gb)
        else:
            k.conv2d_direct_backward_weight(grad_out, x, g.sh, g.sw, g.pt, g.pl, gw, gb)
        gx = None
        if input_grad and plan == "winograd":
            gx = np.empty(x.shape, dt)
            k.conv2d_winograd_backward_data(grad_out, weight, g.pt, g.pl, gx,
                                            _dispatch.winograd_tile(k, c, oc, g.kh))
        elif input_grad:
            gx = np.empty(x.shape, dt)
            k.conv2d_direct_backward_data(grad_out, weight, g.sh, g.sw, g.pt, g.pl, gx)
        return gx, gw, (gb if bias else None)
    w2 = weight.reshape(oc, kdim)
    gy = grad_out.reshape(n, oc, p)
    if plan == "single":
        return _conv2d_backward_single(k, gy[0], x, weight, g, bias, input_grad, _buf(ws, "cols1", (kdim, p), dt))
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
    # runs that orientation faster than gcnp @ cols.T (docs/PERFORMANCE.md, section 6).
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
        if gx is not None:
            np.matmul(w2.T, gcnp, out=cols)  # the columns' gradient, in place of the columns
            k.col2im(cols, *g.args, g.oh, g.ow, gx[a:b])
    gw = np.ascontiguousarray(gwt.T)
    return gx, gw.reshape(weight.shape), (gb.astype(dt) if bias else None)


# --------------------------------------------------------------------------- pooling

def _pool_check(shape: tuple[int, ...], kernel_size: IntOrPair, stride: IntOrPair | None, padding: Padding,
                op: str, ws: Workspace | None) -> tuple[ConvGeometry, tuple[int, int] | str]:
    """Checked geometry and padding of a pooling window over an input of ``shape``
    (N, C, H, W); remembered per shape and arguments in ``ws``."""
    key = None
    if ws is not None and _plain(kernel_size) and _plain(stride) and _plain(padding):
        key = (op, shape, kernel_size, stride, padding)
        hit = ws._plan(key)
        if hit is not None:  # these shapes and arguments passed every check before
            return hit
    if min(shape) < 1:  # (an empty plane would leave windows with no real cell)
        raise ValueError(f"{op}: empty input of shape {shape}; expected (N, C, H, W) with all sizes >= 1")
    kernel = pair(kernel_size, "kernel_size", op)
    strides = kernel if stride is None else pair(stride, "stride", op)
    pad = check_padding_arg(padding, op)
    g = ConvGeometry(kernel, strides, pad, shape[2:], op)
    if max(g.pt, g.pb) >= g.kh or max(g.pl, g.pr) >= g.kw:
        raise ValueError(
            f"{op}: padding {(g.pt, g.pb, g.pl, g.pr)} must be smaller than the kernel {kernel} "
            "so that every window holds a real cell"
        )
    if isinstance(pad, tuple) and (2 * pad[0] > kernel[0] or 2 * pad[1] > kernel[1]):
        raise ValueError(f"{op}: padding {pad} must be at most half the kernel size {kernel}")
    if ws is not None and key is not None:
        ws._set_plan(key, (g, pad))
    return g, pad


def _pool_grad_check(grad_out: ArrayLike, input_shape: Sequence[int], kernel_size: IntOrPair | None,
                     stride: IntOrPair | None, padding: Padding, op: str, ws: Workspace | None
                     ) -> tuple[np.ndarray, tuple[int, ...], ConvGeometry, tuple[int, int] | str]:
    """Checked arguments of a pooling gradient (average, sum, global average: ``kernel_size``
    None, the whole plane)."""
    shape = as_shape(input_shape, "input_shape", 4, op)
    kernel = shape[2:] if kernel_size is None else kernel_size
    g, pad = _pool_check(shape, kernel, stride, padding, op, ws)  # type: ignore[arg-type]
    grad_out = as_float32(grad_out, "grad_out", 4, op)
    if grad_out.shape != shape[:2] + (g.oh, g.ow):
        raise ValueError(f"{op}: grad_out must have shape {shape[:2] + (g.oh, g.ow)}, got {grad_out.shape}")
    return grad_out, shape, g, pad


@overload
def max_pool2d(x: ArrayLike, kernel_size: IntOrPair = ..., stride: IntOrPair | None = ..., padding: Padding = ...,
               *, ws: Workspace | None = ..., return_indices: Literal[False] = ...) -> np.ndarray: ...
@overload
def max_pool2d(x: ArrayLike, kernel_size: IntOrPair = ..., stride: IntOrPair | None = ..., padding: Padding = ...,
               *, ws: Workspace | None = ..., return_indices: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def max_pool2d(x: ArrayLike, kernel_size: IntOrPair = ..., stride: IntOrPair | None = ..., padding: Padding = ...,
               *, ws: Workspace | None = ..., return_indices: bool = ...
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]: ...
def max_pool2d(x: ArrayLike, kernel_size: IntOrPair = 2, stride: IntOrPair | None = None, padding: Padding = 0,
               *, ws: Workspace | None = None, return_indices: bool = False
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """2-D max pooling (``torch.nn.functional.max_pool2d``; ``padding="same"`` as TensorFlow).

    Parameters
    ----------
    x : (N, C, H, W) float32
    kernel_size, stride : int or (int, int); ``stride`` defaults to ``kernel_size``
    padding : int, (int, int), ``"valid"`` or ``"same"``; padded cells never win

    Returns
    -------
    y : (N, C, OH, OW) float32
    indices : (N, C, OH, OW) int32, only if ``return_indices``; flat ``h*W + w`` per plane;
        read-only with ``ws`` (:func:`max_pool2d_backward` given the same ``ws`` does not check
        them again)
    """
    op = "max_pool2d"
    x = as_float32(x, "input", 4, op)
    g, _ = _pool_check(x.shape, kernel_size, stride, padding, op, ws)
    shape = x.shape[:2] + (g.oh, g.ow)
    y = np.empty(shape, np.float32)
    idx = np.empty(shape, np.int32)
    _backend.ops().maxpool2d_forward(x, *g.args, y, idx)
    if not return_indices:
        return y
    if ws is not None:  # made here, for this input shape: max_pool2d_backward with ws trusts them
        return y, _trusted_indices(ws, idx, x.shape)
    return y, idx


def max_pool2d_backward(grad_out: ArrayLike, indices: ArrayLike, input_shape: Sequence[int], *,
                        ws: Workspace | None = None) -> np.ndarray:
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
    indices, shape = _pool_indices(grad_out, indices, input_shape, op, ws)
    gx = np.empty(shape, np.float32)
    _backend.ops().maxpool2d_backward(grad_out, indices, gx)
    return gx


def _unpooled(k: ModuleType, grad_out: np.ndarray, idx: np.ndarray, relu_output: np.ndarray | None,
              shape: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray:
    """The full-size gradient of a fused ReLU (its pooled output ``relu_output``, or None) and
    2x2 max pooling (indices ``idx``) from the pooled ``grad_out``, all checked by the caller
    (``out``, if given, too): the primitives ``relu_backward`` and ``maxpool2d_backward`` of
    backend module ``k``."""
    if relu_output is not None:
        g = np.empty(grad_out.shape, np.float32)
        k.relu_backward(grad_out, relu_output, g)
        grad_out = g
    full = np.empty(shape, np.float32) if out is None else out
    k.maxpool2d_backward(grad_out, idx, full)
    return full


def _trusted_indices(ws: Workspace, idx: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """A read-only view of the indices ``idx`` a max pooling made for ``input_shape``, recorded
    in ``ws``; the kernels get ``idx`` itself (:func:`_own_indices`; writeable: Numba compiles
    a kernel once more for a read-only array)."""
    view = idx.view()
    view.flags.writeable = False
    ws._record("max_pool2d", view, input_shape)
    return view


def _own_indices(idx: np.ndarray) -> np.ndarray:
    """Indices a max pooling of this module made, as the kernels take them (of a view from
    :func:`_trusted_indices`, its writeable array)."""
    return idx if idx.flags.writeable or idx.base is None else idx.base


def _pool_indices(grad_out: np.ndarray, indices: ArrayLike, input_shape: Sequence[int], op: str,
                  ws: Workspace | None) -> tuple[np.ndarray, tuple[int, ...]]:
    """:func:`_check_pool_indices`, unless ``indices`` were made by a max pooling with ``ws``
    (``max_pool2d`` or a pooled ``conv2d``: :func:`_trusted_indices`) and are unchanged since."""
    made: tuple[np.ndarray, tuple[int, ...]] | None = None if ws is None else ws._recorded("max_pool2d")
    if (made is not None and indices is made[0] and tuple(input_shape) == made[1]
            and grad_out.shape == made[0].shape and not made[0].flags.writeable):
        return _own_indices(made[0]), made[1]
    return _check_pool_indices(grad_out, indices, input_shape, op)


def _check_pool_indices(grad_out: np.ndarray, indices: ArrayLike, input_shape: Sequence[int], op: str
                        ) -> tuple[np.ndarray, tuple[int, ...]]:
    """Arg-max indices for ``grad_out`` and the input shape they index into, checked."""
    if type(indices) is not np.ndarray:
        indices = np.asarray(indices)
    if indices.dtype != np.int32:
        raise ValueError(f"{op}: indices must be int32 (from max_pool2d), got {indices.dtype}")
    if grad_out.shape != indices.shape:
        raise ValueError(f"{op}: grad_out must have the shape of indices {indices.shape}, got {grad_out.shape}")
    shape = as_shape(input_shape, "input_shape", 4, op)
    if shape[:2] != grad_out.shape[:2]:
        raise ValueError(f"{op}: input_shape {shape} does not match grad_out {grad_out.shape}")
    # (viewed as unsigned, a negative index is out of range too: one pass over the indices)
    if indices.size and int(np.maximum.reduce(indices.view(np.uint32), axis=None)) >= shape[2] * shape[3]:
        raise ValueError(f"{op}: indices out of range for input plane {shape[2:]}")
    return np.ascontiguousarray(indices), shape


def _include_pad(count_include_pad: bool | None, padding: tuple[int, int] | str) -> bool:
    if count_include_pad is None:  # PyTorch counts padding; TensorFlow SAME does not
        return padding != "same"
    return bool(count_include_pad)


def _avg_pool(x: np.ndarray, g: ConvGeometry, include_pad: bool) -> np.ndarray:
    y = np.empty(x.shape[:2] + (g.oh, g.ow), np.float32)
    _backend.ops().avgpool2d_forward(x, *g.args, include_pad, y)
    return y


def _avg_pool_grad(grad_out: np.ndarray, shape: tuple[int, ...], g: ConvGeometry, include_pad: bool) -> np.ndarray:
    gx = np.empty(shape, np.float32)
    _backend.ops().avgpool2d_backward(grad_out, *g.args, include_pad, gx)
    return gx


def avg_pool2d(x: ArrayLike, kernel_size: IntOrPair = 2, stride: IntOrPair | None = None, padding: Padding = 0,
               count_include_pad: bool | None = None, *, ws: Workspace | None = None) -> np.ndarray:
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
    op = "avg_pool2d"
    x = as_float32(x, "input", 4, op)
    g, pad = _pool_check(x.shape, kernel_size, stride, padding, op, ws)
    return _avg_pool(x, g, _include_pad(count_include_pad, pad))


def avg_pool2d_backward(grad_out: ArrayLike, input_shape: Sequence[int], kernel_size: IntOrPair = 2,
                        stride: IntOrPair | None = None, padding: Padding = 0, count_include_pad: bool | None = None,
                        *, ws: Workspace | None = None) -> np.ndarray:
    """Gradient of :func:`avg_pool2d`: ``grad_x`` (N, C, H, W) float32 for ``input_shape``."""
    grad_out, shape, g, pad = _pool_grad_check(grad_out, input_shape, kernel_size, stride, padding,
                                               "avg_pool2d_backward", ws)
    return _avg_pool_grad(grad_out, shape, g, _include_pad(count_include_pad, pad))


def sum_pool2d(x: ArrayLike, kernel_size: IntOrPair = 2, stride: IntOrPair | None = None, padding: Padding = 0,
               *, ws: Workspace | None = None) -> np.ndarray:
    """2-D sum pooling: the sum of each window, padded cells counting as zeros (= ``torch``'s
    ``avg_pool2d`` with ``divisor_override=1``); the average-pooling kernels scaled by the
    window area.  Arguments as :func:`max_pool2d`."""
    op = "sum_pool2d"
    x = as_float32(x, "input", 4, op)
    g, _ = _pool_check(x.shape, kernel_size, stride, padding, op, ws)
    y = _avg_pool(x, g, True)
    y *= np.float32(g.kh * g.kw)
    return y


def sum_pool2d_backward(grad_out: ArrayLike, input_shape: Sequence[int], kernel_size: IntOrPair = 2,
                        stride: IntOrPair | None = None, padding: Padding = 0, *,
                        ws: Workspace | None = None) -> np.ndarray:
    """Gradient of :func:`sum_pool2d`: ``grad_x`` (N, C, H, W) float32 for ``input_shape``."""
    grad_out, shape, g, _ = _pool_grad_check(grad_out, input_shape, kernel_size, stride, padding,
                                             "sum_pool2d_backward", ws)
    gx = _avg_pool_grad(grad_out, shape, g, True)
    gx *= np.float32(g.kh * g.kw)
    return gx


def global_avg_pool2d(x: ArrayLike, *, ws: Workspace | None = None) -> np.ndarray:
    """Mean over each feature map: ``(N, C, H, W)`` -> ``(N, C, 1, 1)`` float32, as
    ``torch.nn.functional.adaptive_avg_pool2d(x, 1)`` (the average-pooling kernel, window H x W)."""
    op = "global_avg_pool2d"
    x = as_float32(x, "input", 4, op)
    g, _ = _pool_check(x.shape, x.shape[2:], None, 0, op, ws)
    return _avg_pool(x, g, True)


def global_avg_pool2d_backward(grad_out: ArrayLike, input_shape: Sequence[int], *,
                               ws: Workspace | None = None) -> np.ndarray:
    """Gradient of :func:`global_avg_pool2d`: ``grad_x`` (N, C, H, W) float32 for ``input_shape``."""
    grad_out, shape, g, _ = _pool_grad_check(grad_out, input_shape, None, None, 0, "global_avg_pool2d_backward", ws)
    return _avg_pool_grad(grad_out, shape, g, True)


# --------------------------------------------------------------------------- activations

def _same_shape(a: ArrayLike, b: ArrayLike, names: tuple[str, str], op: str) -> tuple[np.ndarray, np.ndarray]:
    """Two checked float32 arrays of one shape (no broadcasting), named ``names`` in errors."""
    a = as_float32(a, names[0], None, op)
    b = as_float32(b, names[1], None, op)
    if a.shape != b.shape:
        raise ValueError(f"{op}: {names[0]} shape {a.shape} does not match {names[1]} shape {b.shape}")
    return a, b


def _grad_and_output(grad_out: ArrayLike, y: ArrayLike, op: str) -> tuple[np.ndarray, np.ndarray]:
    """An elementwise op's checked output gradient and forward output (equal shapes)."""
    return _same_shape(grad_out, y, ("grad_out", "output"), op)


def relu(x: ArrayLike, *, ws: Workspace | None = None) -> np.ndarray:
    """Rectified linear unit. x : any shape float32. Returns a new array of the same shape."""
    x = as_float32(x, "input", None, "relu")
    y = np.empty(x.shape, np.float32)
    _backend.ops().relu_forward(x, y)
    return y


def relu_backward(grad_out: ArrayLike, y: ArrayLike, *, ws: Workspace | None = None) -> np.ndarray:
    """Gradient of :func:`relu` given its output ``y`` (same shape as ``grad_out``)."""
    grad_out, y = _grad_and_output(grad_out, y, "relu_backward")
    gx = np.empty(y.shape, np.float32)
    _backend.ops().relu_backward(grad_out, y, gx)
    return gx


def add(a: ArrayLike, b: ArrayLike, *, out: np.ndarray | None = None) -> np.ndarray:
    """``a + b`` of two float32 arrays of one shape (no broadcasting), on fastcnn's threads
    (a residual block's two branches, or two gradients).  ``out``: a writable C-contiguous
    float32 array of that shape to receive it (it may be ``a`` or ``b``); by default a new one."""
    a, b = _same_shape(a, b, ("a", "b"), "add")
    out = _sum_out(out, a, b, "add")
    _backend.ops().add_forward(a, b, out)
    return out


def _sum_out(out: np.ndarray | None, a: np.ndarray, b: np.ndarray, op: str) -> np.ndarray:
    """The checked output array of a sum of ``a`` and ``b`` (see :func:`add`), or a new one."""
    if out is None:
        return np.empty(a.shape, np.float32)
    if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == a.shape
            and out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{op}: out must be a writable C-contiguous float32 array of shape {a.shape}")
    for arr, name in ((a, "a"), (b, "b")):  # (the kernels sum element by element in place)
        if np.may_share_memory(out, arr) and out.ctypes.data != arr.ctypes.data:
            raise ValueError(f"{op}: out overlaps part of {name}; it may be {name} itself, or separate")
    return out


def add_relu_backward(a: ArrayLike, b: ArrayLike, y: ArrayLike, *, out: np.ndarray | None = None) -> np.ndarray:
    """:func:`relu_backward` of the sum of two gradients, ``(a + b) * (y > 0)``, in one pass:
    bit for bit :func:`add` then :func:`relu_backward` at the ReLU's output ``y`` (a residual
    block's input gradient, masked by the ReLU of the block before it).  ``out`` as :func:`add`'s
    (it may be ``a`` or ``b``, not ``y``)."""
    a, b = _same_shape(a, b, ("a", "b"), "add_relu_backward")
    a, y = _same_shape(a, y, ("a", "output"), "add_relu_backward")
    out = _sum_out(out, a, b, "add_relu_backward")
    if np.may_share_memory(out, y):
        raise ValueError("add_relu_backward: out overlaps the output y")
    _backend.ops().add_relu_backward(a, b, y, out)
    return out


def add_relu(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """``relu(a + b)`` in one pass (a new array; arguments as :func:`add`).  Its gradient is
    :func:`relu_backward` of its output, passed on to both addends."""
    a, b = _same_shape(a, b, ("a", "b"), "add_relu")
    y = np.empty(a.shape, np.float32)
    _backend.ops().add_relu_forward(a, b, y)
    return y


def sigmoid(x: ArrayLike) -> np.ndarray:
    """Elementwise ``1 / (1 + exp(-x))`` of any shape, float32 (no overflow for large ``|x|``)."""
    x = as_float32(x, "input", None, "sigmoid")
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


def sigmoid_backward(grad_out: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Gradient of :func:`sigmoid` given its output ``y``: ``grad_out * y * (1 - y)``."""
    grad_out, y = _grad_and_output(grad_out, y, "sigmoid_backward")
    return grad_out * y * (1 - y)


def tanh(x: ArrayLike) -> np.ndarray:
    """Elementwise hyperbolic tangent of any shape, float32."""
    return np.tanh(as_float32(x, "input", None, "tanh"))


def tanh_backward(grad_out: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Gradient of :func:`tanh` given its output ``y``: ``grad_out * (1 - y * y)``."""
    grad_out, y = _grad_and_output(grad_out, y, "tanh_backward")
    return grad_out * (1 - y * y)


def flatten(x: ArrayLike) -> np.ndarray:
    """``(N, ...)`` -> ``(N, prod(...))`` in C order, as ``torch.flatten(x, 1)`` (2-D to 5-D input;
    a view of ``x`` when it is already a C-contiguous float32 array)."""
    x = as_float32(x, "input", (2, 3, 4, 5), "flatten")
    return x.reshape(x.shape[0], -1)


def flatten_backward(grad_out: ArrayLike, input_shape: Sequence[int]) -> np.ndarray:
    """Gradient of :func:`flatten`: ``grad_out`` (N, F) reshaped to ``input_shape``."""
    op = "flatten_backward"
    grad_out = as_float32(grad_out, "grad_out", 2, op)
    try:  # (the size, no negative size, and NumPy's reshape checks that the sizes are ints)
        if grad_out.size == math.prod(input_shape) and min(input_shape, default=0) >= 0:
            return grad_out.reshape(input_shape)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"{op}: grad_out {grad_out.shape} does not match input shape {input_shape!r}")


def dropout(x: ArrayLike, p: float = 0.5, *, rng: Any = None, training: bool = True
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Inverted dropout as ``torch.nn.functional.dropout``: each element zeroed with probability
    ``p``, the rest scaled by ``1 / (1 - p)``; the identity (a copy) if not ``training`` or ``p == 0``.

    Parameters
    ----------
    x : any shape, float32
    p : float in [0, 1)
    rng : numpy Generator, or a seed for ``numpy.random.default_rng`` (drawn from only when
        elements are dropped)
    training : bool

    Returns
    -------
    y : float32, the shape of ``x``
    mask : float32 (``keep / (1 - p)``) for :func:`dropout_backward`, or None for the identity
    """
    op = "dropout"
    x = as_float32(x, "input", None, op)
    if not 0 <= p < 1:
        raise ValueError(f"{op}: p must be in [0, 1), got {p!r}")
    if not training or p == 0:
        return x.copy(), None
    keep = np.random.default_rng(rng).random(x.shape, dtype=np.float32) >= np.float32(p)
    mask = keep.astype(np.float32) * np.float32(1 / (1 - p))
    return x * mask, mask


def dropout_backward(grad_out: ArrayLike, mask: ArrayLike | None) -> np.ndarray:
    """Gradient of :func:`dropout` given its ``mask`` (None: the identity, a copy)."""
    op = "dropout_backward"
    grad_out = as_float32(grad_out, "grad_out", None, op)
    if mask is None:
        return grad_out.copy()
    mask = as_float32(mask, "mask", None, op)
    if grad_out.shape != mask.shape:
        raise ValueError(f"{op}: grad_out {grad_out.shape} does not match input {mask.shape}")
    return grad_out * mask


# --------------------------------------------------------------------------- dense

def _linear_check(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None, op: str
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
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


def linear(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
           ws: Workspace | None = None) -> np.ndarray:
    """``x @ weight.T + bias``: GEMM blocks on the kernels' threads (one thread pool) or
    NumPy's BLAS (docs/PERFORMANCE.md, section 3).

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
    return _linear(_backend.ops(), x, weight, bias)


def _linear(k: ModuleType, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """:func:`linear` of checked arrays, on backend module ``k``."""
    y = np.empty((x.shape[0], weight.shape[0]), np.float32)
    if x.shape[1] > 0 and _dispatch.one_pool(k):  # (no GEMM blocks for empty K)
        if bias is None:
            bias = zeros(weight.shape[0])
        k.linear_forward(x, weight, bias, _config.dense_blocks(weight.shape[0]), y)
        return y
    np.dot(x, weight.T, out=y)  # (np.dot: the same SGEMM as matmul, less call overhead)
    if bias is not None:
        y += bias
    return y


def _root(a: np.ndarray) -> Any:
    """The object at the end of ``a``'s chain of bases (``a`` itself if it owns its memory)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a if a.base is None else a.base


def _may_overlap(a: np.ndarray, others: tuple[np.ndarray, ...]) -> bool:
    """Whether ``np.may_share_memory(a, b)`` for any ``b`` of ``others``, skipped for arrays that
    own separate memory (a few attribute reads instead of its ~0.4 us each, which the batch-1
    step notices); asked whenever either memory belongs to another object (a buffer, which
    another array may view too)."""
    ra = _root(a)
    for b in others:
        rb = _root(b)
        if (ra is rb or type(ra) is not np.ndarray or type(rb) is not np.ndarray) and np.may_share_memory(a, b):
            return True
    return False


def linear_backward(grad_out: ArrayLike, x: ArrayLike, weight: ArrayLike, *, bias: bool = True,
                    input_grad: bool = True, weight_grad_out: np.ndarray | None = None,
                    ws: Workspace | None = None
                    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`linear`: ``(grad_x, grad_weight, grad_bias)``.

    ``weight_grad_out``: a writeable C-contiguous float32 array of the weight's shape, sharing
    no memory with the inputs, to write ``grad_weight`` into (it is then the one returned).
    """
    op = "linear_backward"
    x, weight, _ = _linear_check(x, weight, None, op)
    grad_out = as_float32(grad_out, "grad_out", 2, op)
    if grad_out.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"{op}: grad_out must have shape {(x.shape[0], weight.shape[0])}, got {grad_out.shape}")
    gw_out = weight_grad_out
    if gw_out is not None and not (
            type(gw_out) is np.ndarray and gw_out.dtype == np.float32 and gw_out.shape == weight.shape
            and gw_out.flags.c_contiguous and gw_out.flags.writeable
            and not _may_overlap(gw_out, (x, grad_out, weight))):
        raise ValueError(f"{op}: weight_grad_out must be a writeable C-contiguous float32 array of shape "
                         f"{weight.shape} sharing no memory with the inputs, got "
                         f"{type(gw_out).__name__} {getattr(gw_out, 'dtype', '')} {getattr(gw_out, 'shape', '')}")
    return _linear_backward(_backend.ops(), grad_out, x, weight, bias, input_grad, gw_out, ws)


def _linear_backward(k: ModuleType, grad_out: np.ndarray, x: np.ndarray, weight: np.ndarray, bias: bool,
                     input_grad: bool, gw_out: np.ndarray | None, ws: Workspace | None
                     ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """:func:`linear_backward` of checked arrays (``gw_out`` too), on backend module ``k``."""
    if x.shape[1] > 0 and _dispatch.one_pool(k):  # (no GEMM blocks for empty K)
        n, out = grad_out.shape
        gw = np.empty(weight.shape, np.float32) if gw_out is None else gw_out
        gb = np.empty((out,), np.float32)
        gx = np.empty(x.shape, np.float32) if input_grad else _buf(ws, "nogx", (1, 1))
        k.linear_backward(grad_out, x, weight, bool(input_grad), _config.dense_blocks(out),
                          _buf(ws, "gyt", (out, n)), gw, gb, gx)
        return (gx if input_grad else None), gw, (gb if bias else None)
    # np.dot, not matmul: for N = 1 (an outer product) matmul takes a slow non-BLAS loop
    # (docs/PERFORMANCE.md, section 5); for N > 1 both call the same SGEMM.
    gw = np.dot(grad_out.T, x, out=gw_out)
    if x.shape[0] == 1:
        gb1 = grad_out[0].copy() if bias else None  # (a sum of one term)
    else:
        gb1 = grad_out.sum(axis=0, dtype=np.float64).astype(np.float32) if bias else None
    gx1 = None
    if input_grad:
        gx1 = np.empty(x.shape, np.float32)
        np.dot(grad_out, weight, out=gx1)
    return gx1, gw, gb1


# --------------------------------------------------------------------------- losses

@overload
def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, *, ws: Workspace | None = ...,
                          return_labels: Literal[False] = ...) -> tuple[float, np.ndarray]: ...
@overload
def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, *, ws: Workspace | None = ...,
                          return_labels: Literal[True]) -> tuple[float, np.ndarray, np.ndarray]: ...
@overload
def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, *, ws: Workspace | None = ...,
                          return_labels: bool = ...
                          ) -> tuple[float, np.ndarray] | tuple[float, np.ndarray, np.ndarray]: ...
def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, *, ws: Workspace | None = None,
                          return_labels: bool = False
                          ) -> tuple[float, np.ndarray] | tuple[float, np.ndarray, np.ndarray]:
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
        The checked labels, only if ``return_labels``.
    """
    op = "softmax_cross_entropy"
    logits = as_float32(logits, "logits", 2, op)
    if logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"{op}: logits must be (N, K) with N, K >= 1, got {logits.shape}")
    labels = as_labels(labels, logits.shape[0], logits.shape[1], op)
    loss, probs = _softmax_cross_entropy(_backend.ops(), logits, labels, ws)
    return (loss, probs, labels) if return_labels else (loss, probs)


def _softmax_cross_entropy(k: ModuleType, logits: np.ndarray, labels: np.ndarray, ws: Workspace | None
                           ) -> tuple[float, np.ndarray]:
    """:func:`softmax_cross_entropy` of checked arrays, on backend module ``k``."""
    probs = np.empty(logits.shape, np.float32)
    losses = _buf(ws, "losses", (logits.shape[0],))
    k.softmax_xent_forward(logits, labels, probs, losses)
    loss = float(losses[0]) if len(losses) == 1 else float(losses.mean(dtype=np.float64))
    return loss, probs


def softmax_cross_entropy_backward(probs: ArrayLike, labels: ArrayLike, *, ws: Workspace | None = None) -> np.ndarray:
    """Gradient of the mean loss w.r.t. the logits: ``(probs - onehot) / N``, (N, K) float32."""
    op = "softmax_cross_entropy_backward"
    probs = as_float32(probs, "probs", 2, op)
    return _softmax_cross_entropy_backward(probs, as_labels(labels, probs.shape[0], probs.shape[1], op))


def _softmax_cross_entropy_backward(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """:func:`softmax_cross_entropy_backward` of arrays checked by its forward (the kernels check
    sizes and the labels' range again before they write)."""
    gx = np.empty(probs.shape, np.float32)
    _backend.ops().softmax_xent_backward(probs, labels, gx)
    return gx


def mse_loss(pred: ArrayLike, target: ArrayLike) -> tuple[float, np.ndarray]:
    """Mean squared error over all elements (``torch.nn.functional.mse_loss``).

    Returns
    -------
    loss : float
    diff : float32 ``pred - target``, for :func:`mse_loss_backward`
    """
    op = "mse_loss"
    pred = as_float32(pred, "prediction", None, op)
    target = as_float32(target, "target", None, op)
    if pred.shape != target.shape:
        raise ValueError(f"{op}: prediction shape {pred.shape} does not match target shape {target.shape}")
    if pred.size == 0:
        raise ValueError(f"{op}: empty input")
    diff = pred - target
    return float(np.mean(np.square(diff, dtype=np.float64))), diff


def mse_loss_backward(diff: ArrayLike) -> np.ndarray:
    """Gradient of :func:`mse_loss` w.r.t. the prediction: ``2 * diff / diff.size``."""
    op = "mse_loss_backward"
    diff = as_float32(diff, "diff", None, op)
    if diff.size == 0:
        raise ValueError(f"{op}: empty input")
    return diff * np.float32(2.0 / diff.size)


# --------------------------------------------------------------------------- batch norm

def batch_norm2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike, running_mean: np.ndarray,
                 running_var: np.ndarray, *, training: bool, momentum: float = 0.1, eps: float = 1e-5,
                 sync: Any = None, relu: bool = False, max_pool2: bool = False,
                 batch_stats: np.ndarray | None = None, residual: ArrayLike | None = None
                 ) -> tuple[np.ndarray, tuple[Any, ...]]:
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
    relu : bool
        Return ``max(y, 0)`` (:func:`relu`'s rule).
    max_pool2 : bool
        Return ``max_pool2d(y, 2)`` of that instead (each plane pooled while in cache; needs
        ``H, W >= 2``), bit for bit the ops in sequence.
    batch_stats : (2, C) float64 array, optional
        Training only: this batch's per-channel mean and biased variance of ``x`` if already
        computed (by :func:`conv2d`'s ``stats``, which fills them with the bytes this function
        computes); they are then not computed again.
    residual : (N, C, H, W) float32, optional
        Added to the normalised output before the ReLU, in the same pass: ``relu=True`` gives
        a residual block's ``max(y + residual, 0)``, bit for bit :func:`add_relu` after this
        function (not with ``max_pool2``).  The backward then takes the gradient of that sum
        (before the ReLU: mask it with :func:`relu_backward` and the output first), which is
        also the residual's gradient.

    Returns
    -------
    y : (N, C, H, W) float32; with ``max_pool2`` (N, C, H // 2, W // 2)
    cache : tuple
        For :func:`batch_norm2d_backward`, which then takes the gradient of this ``y``.  It
        refers to ``x`` itself (the backward recomputes the normalised values from it): leave
        ``x`` unchanged until then.
    """
    op = "batch_norm2d"
    x = as_float32(x, "input", 4, op)
    c = x.shape[1]
    for name, arr in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                      ("running_var", running_var)):
        if np.shape(arr) != (c,):
            raise ValueError(f"{op}: {name} must have shape ({c},) for input {x.shape}, got {np.shape(arr)}")
    weight = as_float32(weight, "weight", 1, op)
    bias = as_float32(bias, "bias", 1, op)
    n, _, h, w = x.shape
    m = n * h * w
    k = _backend.ops()
    if batch_stats is not None and not training:
        raise ValueError(f"{op}: batch_stats are for training only")
    if training:
        if m < 2:
            raise ValueError(f"{op}: training needs more than one value per channel, got input {x.shape}")
        if batch_stats is None:
            mean = np.empty(c, np.float64)
            var = np.empty(c, np.float64)
            k.batchnorm_stats(x, mean, var)  # biased variance, float64
        else:
            _stats_check(op, batch_stats, c)
            mean, var = batch_stats[0], batch_stats[1]
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
    res = None
    if residual is not None:
        if max_pool2:
            raise ValueError(f"{op}: residual and max_pool2 do not go together")
        res = as_float32(residual, "residual", 4, op)
        if res.shape != x.shape:
            raise ValueError(f"{op}: residual must have the input's shape {x.shape}, got {res.shape}")
    if max_pool2:
        if h < 2 or w < 2:
            raise ValueError(f"{op}: max_pool2 needs an input of at least 2 x 2, got {x.shape}")
        y = np.empty((n, c, h // 2, w // 2), np.float32)
        idx = np.empty(y.shape, np.int32)
        k.batchnorm_forward_maxpool2(x, center, inv_std, weight, bias, int(bool(relu)), y, idx)
        post: tuple[Any, ...] | None = (y if relu else None, idx)
        affine = None
    else:
        y = np.empty(x.shape, np.float32)
        k.batchnorm_forward(x, center, inv_std, weight, bias, int(bool(relu)), y, res)
        post = None
        # the ReLU's mask is recomputed from x by the backward kernels: y is not kept (after a
        # residual sum the caller masks the gradient)
        affine = (weight.copy(), bias.copy()) if relu and res is None else None
    # x is kept, not the normalised values (the backward kernels recompute them from it)
    return y, (x, center, inv_std, training, m, sync if training else None, post, affine)


def batch_norm2d_backward(grad_out: ArrayLike, cache: tuple[Any, ...], weight: ArrayLike
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`batch_norm2d`: ``(grad_x, grad_weight, grad_bias)``.

    With synchronised statistics the weight and bias gradients stay this process's share
    (summed with the other parameters' gradients later); the input gradient uses the sums
    over the global batch.
    """
    op = "batch_norm2d_backward"
    x, center, inv_std, training, m, sync, post, affine = cache
    grad_out = as_float32(grad_out, "grad_out", 4, op)
    if post is not None:  # the fused pooling (and ReLU: its mask from the pooled output)
        y, idx = post
        if grad_out.shape != idx.shape:
            raise ValueError(f"{op}: grad_out must have shape {idx.shape}, got {grad_out.shape}")
        grad_out = _unpooled(_backend.ops(), grad_out, idx, y, x.shape)
    if grad_out.shape != x.shape:
        raise ValueError(f"{op}: grad_out must have shape {x.shape}, got {grad_out.shape}")
    weight = as_float32(weight, "weight", 1, op)
    c = x.shape[1]
    if weight.shape != (c,):
        raise ValueError(f"{op}: weight must have shape ({c},), got {weight.shape}")
    k = _backend.ops()
    gb = np.empty(c, np.float64)
    gw = np.empty(c, np.float64)
    relu = affine is not None  # the fused ReLU alone: the kernels mask with the forward's affine
    fw, fb = affine if relu else (weight, weight)  # (unused without the ReLU)
    scale = weight * inv_std
    gx = np.empty(x.shape, np.float32)
    if sync is None:  # (the sums and gx one channel at a time in the compiled kernels)
        k.batchnorm_backward(grad_out, x, center, inv_std, fw, fb, int(relu), scale, float(m) if training else 0.0,
                             gb, gw, gx)
    else:  # synchronised statistics (training only): gx from the global batch's sums
        k.batchnorm_backward_reduce(grad_out, x, center, inv_std, fw, fb, int(relu), gb, gw)  # sum(g), sum(g * xhat)
        sb, sw = sync.grad_sums(x.size // c, gb, gw)
        a = (sb / m).astype(np.float32)
        b = (sw / m).astype(np.float32)
        k.batchnorm_backward_apply(grad_out, x, center, inv_std, fw, fb, int(relu), scale, a, b, gx)
    return gx, gw.astype(np.float32), gb.astype(np.float32)


def fold_batch_norm(weight: ArrayLike, bias: ArrayLike | None, running_mean: ArrayLike, running_var: ArrayLike,
                    bn_weight: ArrayLike, bn_bias: ArrayLike, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """A convolution followed by an eval-mode batch norm, as one convolution.

    ``conv2d(x, w, b)`` equals ``batch_norm2d(conv2d(x, weight, bias), ..., training=False)``
    up to float32 rounding, with ``s = bn_weight / sqrt(running_var + eps)``,
    ``w = weight * s`` (per output channel) and ``b = bn_bias + (bias - running_mean) * s``
    (``bias`` None: zero), computed in float64 and rounded once.

    Returns
    -------
    w : (OC, C, kh, kw) float32
    b : (OC,) float32
    """
    op = "fold_batch_norm"
    weight = as_float32(weight, "weight", 4, op)
    oc = weight.shape[0]
    named = {"running_mean": running_mean, "running_var": running_var, "bn_weight": bn_weight, "bn_bias": bn_bias}
    if bias is not None:
        named["bias"] = bias
    vec = {}
    for name, arr in named.items():
        vec[name] = as_float32(arr, name, 1, op).astype(np.float64)
        if vec[name].shape != (oc,):
            raise ValueError(f"{op}: {name} must have shape ({oc},) for weight {weight.shape}, got {vec[name].shape}")
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {eps!r}")
    s = vec["bn_weight"] / np.sqrt(vec["running_var"] + eps)
    w = (weight * s[:, None, None, None]).astype(np.float32)
    b = (vec["bn_bias"] + (vec.get("bias", 0.0) - vec["running_mean"]) * s).astype(np.float32)
    return w, b


# --------------------------------------------------------------------------- optimizer updates

def _check_update_arrays(op: str, params: Sequence[Any], **state: Sequence[Any]) -> None:
    """Per parameter: its gradient and state C-contiguous float32 arrays of its shape, the
    parameter and the state (all but ``grads``) writeable: they are updated in place."""
    for name, arrays in state.items():
        if len(arrays) != len(params):
            raise ValueError(f"{op}: {len(arrays)} {name} for {len(params)} params")
    f32 = np.dtype(np.float32)
    for arrays in (params, *state.values()):  # (fast path: ``carray`` is C-contiguous, aligned, writeable)
        for p, a in zip(params, arrays):
            if not (type(a) is np.ndarray and a.dtype is f32 and a.flags.carray and a.shape == p.shape):
                break
        else:
            continue
        break
    else:
        return
    for i, p in enumerate(params):
        for name, a in [("params", p)] + [(n, arrays[i]) for n, arrays in state.items()]:
            if not is_float32_array(a) or a.shape != p.shape:
                of = "" if name == "params" else f" of shape {getattr(p, 'shape', None)}"
                raise TypeError(f"{op}: {name}[{i}] must be a C-contiguous float32 array{of}, got "
                                f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}".rstrip())
            if name != "grads" and not a.flags.writeable:
                raise ValueError(f"{op}: {name}[{i}] is read-only; it is updated in place")


def _update_arrays_checked(op: str, ws: Workspace | None, params: Sequence[Any],
                           **state: Sequence[Any]) -> tuple[tuple[Any, ...], ...]:
    """:func:`_check_update_arrays`, skipped when these very array objects passed it in the last
    call with ``ws`` (an optimizer's: its parameters' arrays stay the same step after step; the
    kernels check dtype, contiguity and sizes again before they write).  Returns ``params`` and
    the ``state`` sequences as tuples, the same tuple objects while the arrays are the same (the
    Numba kernels build their table of addresses once per tuple objects: docs/PERFORMANCE.md,
    5)."""
    seqs = (params, *state.values())
    if ws is not None:
        seen = ws._recorded(op)
        if seen is not None and len(seen) == len(seqs):
            for old, new in zip(seen, seqs):
                if len(old) != len(new) or not all(map(operator.is_, old, new)):
                    break
            else:
                return seen
    _check_update_arrays(op, params, **state)
    tuples = tuple(map(tuple, seqs))
    if ws is not None:
        ws._record(op, *tuples)
    return tuples


def adam_step(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], exp_avgs: Sequence[np.ndarray],
              exp_avg_sqs: Sequence[np.ndarray], *, step: int, lr: float = 1e-3,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
              decoupled_weight_decay: bool = False, ws: Workspace | None = None) -> None:
    """One Adam update of every array of ``params`` and of their ``exp_avgs`` and ``exp_avg_sqs``
    in place (``step``: 1 for the first), as ``torch.optim.Adam`` (no amsgrad), or
    ``torch.optim.AdamW`` with ``decoupled_weight_decay``: ``param *= 1 - lr * weight_decay``
    first, instead of adding ``weight_decay * param`` to the gradient.

    One fused compiled pass per parameter, float32 in torch's order (its ``lerp_``/``addcmul_``
    forms): ``m += (1 - b1) (g - m)``; ``v = b2 v + (1 - b2) g^2``; ``param -= step_size * m /
    (sqrt(v) / sqrt(1 - b2^step) + eps)`` with ``step_size = lr / (1 - b1^step)``
    (:func:`fastcnn._ref.adam_step`).  The arrays are checked here (with ``ws``, once for the
    same array objects); the hyperparameters by :class:`fastcnn.optim.Adam`.
    """
    ps, gs, ms, vs = _update_arrays_checked("adam_step", ws, params, grads=grads, exp_avgs=exp_avgs,
                                            exp_avg_sqs=exp_avg_sqs)
    b1, b2 = betas
    step_size = lr / (1.0 - b1 ** step)  # both rounded to float32 by the kernel
    bc2_sqrt = float(np.sqrt(1.0 - b2 ** step))
    if weight_decay and decoupled_weight_decay:
        for param in ps:
            param *= np.float32(1.0 - lr * weight_decay)
    elif weight_decay:
        gs = tuple(grad + np.float32(weight_decay) * param for param, grad in zip(ps, gs))
    _backend.ops().adam_step(ps, gs, ms, vs, step_size, b1, b2, eps, bc2_sqrt)


def sgd_step(params: Sequence[np.ndarray], grads: Sequence[np.ndarray], momentum_buffers: list[np.ndarray | None],
             *, lr: float, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
             nesterov: bool = False, ws: Workspace | None = None) -> None:
    """One SGD update of every array of ``params`` in place, as ``torch.optim.SGD``: ``d = grad
    + weight_decay * param``; with momentum ``buf = momentum * buf + (1 - dampening) * d``
    (``buf = d`` at its first update), then ``d = d + momentum * buf`` (Nesterov) or ``d =
    buf``; ``param -= lr * d``.  One fused compiled pass per parameter, float32 in that order
    (:func:`fastcnn._ref.sgd_step`).

    ``momentum_buffers`` has one entry per parameter (not used without momentum); an entry
    ``None`` is a buffer not yet made: it is created and stored in the list (PyTorch's
    ``momentum_buffer_list``).  The arrays are checked here (with ``ws``, once for the same
    array objects); the hyperparameters by :class:`fastcnn.optim.SGD`.
    """
    k = _backend.ops()
    if not momentum:
        ps, gs = _update_arrays_checked("sgd_step", ws, params, grads=grads)
        k.sgd_step(ps, gs, _no_buffers(len(ps)), lr, weight_decay, 0.0, dampening, nesterov, False)
        return
    if len(momentum_buffers) != len(params):
        raise ValueError(f"sgd_step: {len(momentum_buffers)} momentum_buffers for {len(params)} params")
    first = [b is None for b in momentum_buffers]
    bufs = [np.empty_like(p) if b is None and is_float32_array(p) else b for p, b in zip(params, momentum_buffers)]
    ps, gs, bs = _update_arrays_checked("sgd_step", ws, params, grads=grads, momentum_buffers=bufs)
    if any(first) and not all(first):  # (buffers made now and buffers given: two calls)
        for is_first in (True, False):
            pick = [i for i, f in enumerate(first) if f is is_first]
            k.sgd_step(tuple(ps[i] for i in pick), tuple(gs[i] for i in pick), tuple(bs[i] for i in pick), lr,
                       weight_decay, momentum, dampening, nesterov, is_first)
    else:
        k.sgd_step(ps, gs, bs, lr, weight_decay, momentum, dampening, nesterov, bool(first) and first[0])
    for i, is_first in enumerate(first):
        if is_first:
            momentum_buffers[i] = bufs[i]


_NO_BUFFER = np.empty(0, np.float32)  # (sgd_step without momentum)


@functools.lru_cache(maxsize=16)
def _no_buffers(n: int) -> tuple[np.ndarray, ...]:
    """``n`` times :data:`_NO_BUFFER`, the same tuple object each call (see
    :func:`_update_arrays_checked`)."""
    return (_NO_BUFFER,) * n


# --------------------------------------------------------------------------- tutorial form

def corr2d(x: ArrayLike, k: ArrayLike) -> np.ndarray:
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
