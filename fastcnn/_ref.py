"""NumPy reference backend: the oracle every compiled kernel is tested against.

These primitives (dtype-generic: the finite-difference tests run them in float64) define the
contract shared by all backends (``fastcnn._kernels`` for Numba, ``fastcnn._ext`` for Cython):
arrays are C-contiguous, dtypes are exactly as documented, shapes agree, every pooling window
holds at least one real (non-padding) cell.  The compiled backends check the sizes first
(``fastcnn._backend.sizes_<primitive>``); callers (``functional.py``) validate the user's
input before.  Primitives write into the ``# OUT`` buffers the caller passes and return
nothing.

Layouts
-------
``cols`` (im2col matrix) : (C*kh*kw, N*OH*OW) float32
    ``cols[c*kh*kw + i*kw + j, n*OH*OW + oh*OW + ow] = x[n, c, oh*sh - pt + i, ow*sw - pl + j]``
    and 0 where that input cell lies in the zero padding.
Pooling ``idx`` : (N, C, OH, OW) int32
    Flat index ``h*W + w`` into the input plane of the window's maximum; ties go to the first
    maximum in row-major window order; padded cells never win.
"""
import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._config import SLOTS


def _padded(x, kh, kw, sh, sw, pt, pl, oh, ow, fill=0.0):
    """x padded so that windows start at (oh*sh, ow*sw); right/bottom padding as needed."""
    n, c, h, w = x.shape
    hp = max((oh - 1) * sh + kh, pt + h)
    wp = max((ow - 1) * sw + kw, pl + w)
    xp = np.full((n, c, hp, wp), fill, dtype=x.dtype)
    xp[:, :, pt:pt + h, pl:pl + w] = x
    return xp


def _windows(xp, kh, kw, sh, sw, oh, ow):
    """(N, C, OH, OW, kh, kw) view of the windows of a padded input."""
    v = sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return v[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]


def im2col(x, kh, kw, sh, sw, pt, pl, oh, ow, cols):
    """Unfold convolution windows into columns.

    Parameters
    ----------
    x : (N, C, H, W) float32  # IN
    kh, kw, sh, sw, pt, pl, oh, ow : int
        Kernel, stride, top/left padding and output size.
    cols : (C*kh*kw, N*OH*OW) float32  # OUT
    """
    n, c = x.shape[:2]
    win = _windows(_padded(x, kh, kw, sh, sw, pt, pl, oh, ow), kh, kw, sh, sw, oh, ow)
    # (N, C, OH, OW, kh, kw) -> (C, kh, kw, N, OH, OW)
    cols.reshape(c, kh, kw, n, oh, ow)[...] = win.transpose(1, 4, 5, 0, 2, 3)


def col2im(cols, kh, kw, sh, sw, pt, pl, oh, ow, dx):
    """Fold columns back, summing overlapping windows (adjoint of :func:`im2col`).

    Parameters
    ----------
    cols : (C*kh*kw, N*OH*OW) float32  # IN
    dx : (N, C, H, W) float32  # OUT, overwritten
    """
    n, c, h, w = dx.shape
    xp = np.zeros(_padded_shape(dx.shape, kh, kw, sh, sw, pt, pl, oh, ow), dtype=dx.dtype)
    v = cols.reshape(c, kh, kw, n, oh, ow)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw] += v[:, i, j].transpose(1, 0, 2, 3)
    dx[...] = xp[:, :, pt : pt + h, pl : pl + w]


def conv2d_forward_images(x, w2, bias, kh, kw, sh, sw, pt, pl, oh, ow, cols, y):
    """Convolution one image at a time: unfold the image, one GEMM into its output.

    Parameters
    ----------
    x : (N, C, H, W) float32  # IN
    w2 : (OC, C*kh*kw) float32  # IN  the weight as a matrix
    bias : (OC,) float32  # IN
    cols : (T, C*kh*kw, OH*OW) float32  # scratch: T >= 1 blocks of consecutive images, one
        buffer each (the compiled kernels run the blocks in parallel; T = the thread count)
    y : (N, OC, OH*OW) float32  # OUT  ``y[i] = w2 @ im2col(x[i]) + bias[:, None]``
    """
    for i in range(x.shape[0]):
        im2col(x[i:i + 1], kh, kw, sh, sw, pt, pl, oh, ow, cols[0])
        np.matmul(w2, cols[0], out=y[i])
        y[i] += bias[:, None]


def conv2d_backward_images(gy, x, w2, kh, kw, sh, sw, pt, pl, oh, ow, input_grad, cols, gwt_tmp,
                           gwt_part, gb_part, gx):
    """Gradients of :func:`conv2d_forward_images`, one image at a time.

    Parameters
    ----------
    gy : (N, OC, OH*OW) float32  # IN
    x : (N, C, H, W) float32  # IN
    w2 : (OC, C*kh*kw) float32  # IN
    input_grad : bool
        Whether to write ``gx``.
    cols : (T, C*kh*kw, OH*OW) float32  # scratch: T >= 1 blocks of consecutive slots, one
        buffer each (the compiled kernels run the blocks in parallel; T = the thread count)
    gwt_tmp : (T, C*kh*kw, OC) float32  # scratch, one per block
    gwt_part : (SLOTS, C*kh*kw, OC) float32  # OUT  slot ``s``: sum over its images (in order)
        of ``im2col(x[i]) @ gy[i].T`` (the transposed weight gradient); image ``i`` belongs to
        slot ``i * SLOTS // N`` (``_config.SLOTS``)
    gb_part : (SLOTS, OC) float64  # OUT  slot sums of ``gy[i]`` over its images and OH*OW
    gx : (N, C, H, W) float32  # OUT if ``input_grad``: ``col2im(w2.T @ gy[i])``
    """
    n = x.shape[0]
    gwt_part[...] = 0
    gb_part[...] = 0
    for i in range(n):
        s = i * SLOTS // n
        im2col(x[i:i + 1], kh, kw, sh, sw, pt, pl, oh, ow, cols[0])
        np.matmul(cols[0], gy[i].T, out=gwt_tmp[0])
        gwt_part[s] += gwt_tmp[0]
        gb_part[s] += gy[i].sum(axis=1, dtype=np.float64)
        if input_grad:
            np.matmul(w2.T, gy[i], out=cols[0])
            col2im(cols[0], kh, kw, sh, sw, pt, pl, oh, ow, gx[i:i + 1])


def linear_forward(x, w, bias, nblocks, y):
    """Dense layer ``y = x @ w.T + bias``, split into ``nblocks`` blocks of output features.

    Parameters
    ----------
    x : (N, IN) float32  # IN
    w : (OUT, IN) float32  # IN
    bias : (OUT,) float32  # IN
    nblocks : int
        Blocks of consecutive output features (the compiled kernels run them in parallel,
        each with a single-threaded SGEMM).  Block bounds depend on the shapes and
        ``nblocks`` only, so the result does not depend on the number of threads.  Small
        batches (``fastcnn.config(dense=...)``, ``_dispatch.dense_rows``) run a dot product per
        output instead, whatever the blocks (docs/PERFORMANCE.md, section 3).
    y : (N, OUT) float32  # OUT
    """
    np.matmul(x, w.T, out=y)
    y += bias


def linear_backward(gy, x, w, input_grad, nblocks, gyt, gw, gb, gx):
    """Gradients of :func:`linear_forward`.

    Parameters
    ----------
    gy : (N, OUT) float32  # IN
    x : (N, IN) float32  # IN
    w : (OUT, IN) float32  # IN
    input_grad : bool
        Whether to write ``gx``.
    nblocks : int
        Blocks of output features for ``gw`` and of input features for ``gx`` (see
        :func:`linear_forward`).
    gyt : (OUT, N) float32  # scratch: ``gy`` transposed
    gw : (OUT, IN) float32  # OUT  ``gy.T @ x``
    gb : (OUT,) float32  # OUT  ``gy`` summed over N in float64
    gx : (N, IN) float32  # OUT if ``input_grad``: ``gy @ w``
    """
    gyt[...] = gy.T
    np.matmul(gyt, x, out=gw)
    gb[...] = gy.sum(axis=0, dtype=np.float64)
    if input_grad:
        np.matmul(gy, w, out=gx)


def _padded_shape(shape, kh, kw, sh, sw, pt, pl, oh, ow):
    n, c, h, w = shape
    return (n, c, max((oh - 1) * sh + kh, pt + h), max((ow - 1) * sw + kw, pl + w))


def cnp_to_ncp_bias(ycnp, bias, y):
    """Reorder a GEMM result to NCHW and add the bias.

    Parameters
    ----------
    ycnp : (OC, N*P) float32  # IN
    bias : (OC,) float32  # IN
    y : (N, OC, P) float32  # OUT  ``y[n, o, p] = ycnp[o, n*P + p] + bias[o]``
    """
    n, oc, p = y.shape
    y[...] = ycnp.reshape(oc, n, p).transpose(1, 0, 2) + bias[None, :, None]


def ncp_to_cnp_sum(gy, gcnp, gb):
    """Reorder an NCHW gradient for GEMM and reduce it for the bias gradient.

    Parameters
    ----------
    gy : (N, OC, P) float32  # IN
    gcnp : (OC, N*P) float32  # OUT  ``gcnp[o, n*P + p] = gy[n, o, p]``
    gb : (OC,) float32  # OUT  sum of ``gy`` over N and P (accumulated in float64)
    """
    n, oc, p = gy.shape
    gcnp.reshape(oc, n, p)[...] = gy.transpose(1, 0, 2)
    gb[...] = gy.sum(axis=(0, 2), dtype=np.float64)


def maxpool2d_forward(x, kh, kw, sh, sw, pt, pl, y, idx):
    """Max pooling with arg-max indices.

    Parameters
    ----------
    x : (N, C, H, W) float32  # IN
    y : (N, C, OH, OW) float32  # OUT
    idx : (N, C, OH, OW) int32  # OUT  flat ``h*W + w`` of the first maximum (row-major)

    Every window holds at least one real cell (the caller checks).  Padded cells never win.
    Scan rule shared by all backends: start from the window's first real cell; a later real
    cell ``v`` replaces the best ``b`` when ``v > b`` or (``v`` is NaN and ``b`` is not).
    """
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    xp = _padded(x, kh, kw, sh, sw, pt, pl, oh, ow, fill=-np.inf)
    win = _windows(xp, kh, kw, sh, sw, oh, ow).reshape(n, c, oh, ow, kh * kw)
    arg = np.argmax(win, axis=-1)  # NaN wins (first NaN), like torch
    # A window whose real cells are all -inf: argmax may point at padding; use its first real cell.
    real = _windows(_padded(np.ones((1, 1, h, w), bool), kh, kw, sh, sw, pt, pl, oh, ow, fill=False),
                    kh, kw, sh, sw, oh, ow).reshape(oh, ow, kh * kw)
    first_real = np.argmax(real, axis=-1)
    val = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    arg = np.where(val == -np.inf, first_real, arg)
    y[...] = np.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    hh = np.arange(oh)[:, None] * sh - pt + arg // kw
    ww = np.arange(ow)[None, :] * sw - pl + arg % kw
    idx[...] = hh * w + ww


def maxpool2d_backward(gy, idx, gx):
    """Route each output gradient to its arg-max.

    Parameters
    ----------
    gy, idx : (N, C, OH, OW) float32 and int32 (from :func:`maxpool2d_forward`)  # IN
    gx : (N, C, H, W) float32  # OUT, overwritten
    """
    n, c, h, w = gx.shape
    flat = np.zeros((n * c, h * w), dtype=gx.dtype)
    rows = np.repeat(np.arange(n * c), gy.shape[2] * gy.shape[3])
    np.add.at(flat, (rows, idx.reshape(-1)), gy.reshape(-1))
    gx[...] = flat.reshape(gx.shape)


def windows_tile(h, w, kh, kw, sh, sw, pt, pl, oh, ow):
    """Whether the pooling windows tile the (h, w) plane: stride = kernel, no padding, so every
    cell lies in at most one window (the compiled average-pool gradients then write each
    cell's one share directly; cells past the last window get 0)."""
    return kh == sh and kw == sw and pt == 0 and pl == 0 and oh * kh <= h and ow * kw <= w


@functools.lru_cache(maxsize=64)
def avg_divisor(h, w, kh, kw, sh, sw, pt, pl, oh, ow, count_include_pad):
    """The (OH, OW) float32 divisors of average pooling (read-only, cached): ``kh*kw``, or
    with ``count_include_pad`` false the number of real cells of each window.  The compiled
    backends divide by these too."""
    if count_include_pad:
        d = np.full((oh, ow), float(kh * kw), dtype=np.float32)
    else:
        hs = np.arange(oh) * sh - pt
        ws = np.arange(ow) * sw - pl
        rh = np.minimum(hs + kh, h) - np.maximum(hs, 0)
        rw = np.minimum(ws + kw, w) - np.maximum(ws, 0)
        d = (rh[:, None] * rw[None, :]).astype(np.float32)
    d.flags.writeable = False
    return d


def avgpool2d_forward(x, kh, kw, sh, sw, pt, pl, count_include_pad, y):
    """Average pooling.

    Parameters
    ----------
    x : (N, C, H, W) float32  # IN
    count_include_pad : bool
        True: divide by ``kh*kw`` (PyTorch default); False: by the number of real cells
        (TensorFlow ``"same"``).
    y : (N, C, OH, OW) float32  # OUT
    """
    n, c, h, w = x.shape
    oh, ow = y.shape[2:]
    win = _windows(_padded(x, kh, kw, sh, sw, pt, pl, oh, ow), kh, kw, sh, sw, oh, ow)
    s = win.sum(axis=(-2, -1), dtype=y.dtype)
    y[...] = s / avg_divisor(h, w, kh, kw, sh, sw, pt, pl, oh, ow, count_include_pad)


def avgpool2d_backward(gy, kh, kw, sh, sw, pt, pl, count_include_pad, gx):
    """Gradient of :func:`avgpool2d_forward`.

    Parameters
    ----------
    gy : (N, C, OH, OW) float32  # IN
    gx : (N, C, H, W) float32  # OUT, overwritten
    """
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2:]
    g = gy / avg_divisor(h, w, kh, kw, sh, sw, pt, pl, oh, ow, count_include_pad)
    xp = np.zeros(_padded_shape(gx.shape, kh, kw, sh, sw, pt, pl, oh, ow), dtype=gx.dtype)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw] += g
    gx[...] = xp[:, :, pt : pt + h, pl : pl + w]


def relu_forward(x, y):
    """``y = max(x, 0)``; x, y : any shape, float32, C-contiguous (y may be x)."""
    np.maximum(x, 0.0, out=y)


def relu_backward(gy, y, gx):
    """``gx = gy * (y > 0)``; gy, y IN; gx OUT (may be gy)."""
    np.multiply(gy, y > 0, out=gx)


def add_forward(a, b, y):
    """``y = a + b`` (float32); a, b, y : any shape, the same size, C-contiguous (y may be a or
    b): the sum of a residual block's two branches, or of two gradients."""
    np.add(a, b, out=y)


def add_relu_forward(a, b, y):
    """``y = max(a + b, 0)``: :func:`add_forward`, then :func:`relu_forward`'s rule (NaN stays
    NaN, -0.0 becomes +0.0), one pass; the same arrays as :func:`add_forward`."""
    np.add(a, b, out=y)
    np.maximum(y, 0.0, out=y)


def add_relu_backward(ga, gb, y, gx):
    """``gx = (ga + gb) * (y > 0)``: :func:`add_forward` of two gradients, then
    :func:`relu_backward` at the ReLU's output ``y``, one pass (a residual block's input
    gradient, masked by the ReLU of the block before it); all four the same size, C-contiguous
    float32; gx may be ga or gb."""
    np.add(ga, gb, out=gx)
    np.multiply(gx, y > 0, out=gx)


def softmax_xent_forward(logits, labels, probs, losses):
    """Softmax and per-sample cross-entropy, log-sum-exp stable.

    Parameters
    ----------
    logits : (N, K) float32  # IN
    labels : (N,) int64  # IN, values in [0, K)
    probs : (N, K) float32  # OUT  softmax(logits)
    losses : (N,) float32  # OUT  ``logsumexp(logits[n]) - logits[n, labels[n]]``
    """
    m = logits.max(axis=1, keepdims=True)
    z = logits - m
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    probs[...] = e / s
    losses[...] = (np.log(s[:, 0]) - z[np.arange(len(labels)), labels])


def softmax_xent_backward(probs, labels, gx):
    """``gx = (probs - onehot(labels)) / N``.

    Parameters
    ----------
    probs : (N, K) float32  # IN
    labels : (N,) int64  # IN
    gx : (N, K) float32  # OUT (may be probs)
    """
    n = probs.shape[0]
    gx[...] = probs
    gx[np.arange(n), labels] -= 1.0
    gx *= gx.dtype.type(1.0 / n)


def _per_channel(a):
    return a[None, :, None, None]


def batchnorm_stats(x, mean, var):
    """Per-channel batch mean and biased variance over (N, H, W), two passes in float64.

    Parameters
    ----------
    x : (N, C, H, W) float32  # IN, with ``M = N*H*W >= 1``
    mean : (C,) float64  # OUT  ``sum(x[:, c]) / M``
    var : (C,) float64  # OUT  ``sum((x[:, c] - mean[c])**2) / M``; the deviations are taken in
        float64 from the float64 mean, so data with a large mean (1000, std 1) stays accurate.

    The compiled kernels sum in a fixed order of their own (float64), so they agree with this
    reference to rounding (about 1e-15 relative), not bit for bit.
    """
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean[...] = x.sum(axis=(0, 2, 3), dtype=np.float64) / m
    d = x.astype(np.float64) - _per_channel(mean)
    var[...] = np.einsum("nchw,nchw->c", d, d) / m


def _xhat(x, mean, inv_std):
    """``(x - mean[c]) * inv_std[c]``, float32: the normalised values every batch-norm kernel
    computes from ``x`` with these two roundings (the forward keeps ``x``, not its result)."""
    xhat = np.subtract(x, _per_channel(mean))
    xhat *= _per_channel(inv_std)
    return xhat


def batchnorm_forward(x, mean, inv_std, weight, bias, relu, y, res=None):
    """Normalise, scale and shift per channel.

    Parameters
    ----------
    x : (N, C, H, W) float32  # IN
    mean, inv_std, weight, bias : (C,) float32  # IN
    relu : int  # IN  1: ``y`` is ``max(xhat * weight[c] + bias[c], 0)`` (:func:`relu_forward`'s rule)
    y : (N, C, H, W) float32  # OUT  ``xhat * weight[c] + bias[c]``, ``xhat = (x - mean[c]) * inv_std[c]``
    res : (N, C, H, W) float32 or None  # IN  added before the ReLU: ``y = (xhat * weight[c] +
        bias[c]) + res`` (a residual block's sum, :func:`add_relu_forward` in the same pass)

    Every operation is rounded to float32 in this order (no fused multiply-add), so the
    compiled kernels match this reference bit for bit.  ``y`` must not alias ``x`` or ``res``.
    ``xhat`` is not stored: the backward kernels recompute it from ``x`` with the same operations.
    """
    np.multiply(_xhat(x, mean, inv_std), _per_channel(weight), out=y)
    y += _per_channel(bias)
    if res is not None:
        y += res
    if relu:
        relu_forward(y, y)


def batchnorm_forward_maxpool2(x, mean, inv_std, weight, bias, relu, y, idx):
    """:func:`batchnorm_forward`, an optional ReLU, then a 2x2 max pooling of stride 2, without
    the full-size output.

    Parameters
    ----------
    x, mean, inv_std, weight, bias
        As :func:`batchnorm_forward`; ``x`` is ``(N, C, H, W)`` with ``H, W >= 2``.
    relu : int
        1: pool ``max(y, 0)`` (:func:`relu_forward`'s rule); 0: pool ``y``.
    y : (N, C, H // 2, W // 2) float32  # OUT  bit for bit :func:`maxpool2d_forward` (2x2,
        stride 2) of the normalised (and ReLU'd) values; an odd last row or column is dropped
    idx : (N, C, H // 2, W // 2) int32  # OUT  its indices (flat into the ``(H, W)`` plane)
    """
    full = np.empty(x.shape, np.float32)
    batchnorm_forward(x, mean, inv_std, weight, bias, relu, full)
    maxpool2d_forward(full, 2, 2, 2, 2, 0, 0, y, idx)


def _relu_masked(gy, xhat, weight, bias):
    """:func:`relu_backward` of ``gy`` through ``max(xhat * weight[c] + bias[c], 0)``, that
    output recomputed from ``xhat`` with :func:`batchnorm_forward`'s float32 operations."""
    v = np.multiply(xhat, _per_channel(weight))
    v += _per_channel(bias)
    g = np.empty(gy.shape, gy.dtype)
    relu_backward(gy, v, g)
    return g


def batchnorm_backward_reduce(gy, x, mean, inv_std, weight, bias, relu, gsum, gdot):
    """Per-channel sums for the BatchNorm gradients (float64 accumulation).

    Parameters
    ----------
    gy, x : (N, C, H, W) float32  # IN  the output's gradient, the forward's input
    mean, inv_std : (C,) float32  # IN  the forward's (``xhat`` recomputed as it did)
    weight, bias : (C,) float32  # IN  the forward's (used with ``relu`` only)
    relu : int  # IN  1: ``gy`` is the gradient of :func:`batchnorm_forward`'s output with
        ``relu=1``; the ReLU's mask is applied first (:func:`relu_backward`, the output
        recomputed from ``xhat``), so the forward's output need not be kept
    gsum : (C,) float64  # OUT  ``sum(g[:, c])`` (the bias gradient), ``g`` = ``gy`` masked
    gdot : (C,) float64  # OUT  ``sum(g[:, c] * xhat[:, c])`` (the weight gradient)

    As for :func:`batchnorm_stats`, the compiled kernels agree to rounding, in a fixed order.
    """
    xhat = _xhat(x, mean, inv_std)
    g = _relu_masked(gy, xhat, weight, bias) if relu else gy
    gsum[...] = g.sum(axis=(0, 2, 3), dtype=np.float64)
    gdot[...] = np.einsum("nchw,nchw->c", g, xhat, dtype=np.float64)


def batchnorm_backward_apply(gy, x, mean, inv_std, weight, bias, relu, scale, a, b, gx):
    """Input gradient of BatchNorm: ``gx = (g - (xhat * b[c] + a[c])) * scale[c]``, ``g`` =
    ``gy`` masked as in :func:`batchnorm_backward_reduce`.

    Parameters
    ----------
    gy, x, mean, inv_std, weight, bias, relu : as :func:`batchnorm_backward_reduce`  # IN
    scale, a, b : (C,) float32  # IN  training: ``scale = weight * inv_std``, ``a = gsum / M``,
        ``b = gdot / M``; eval: ``a = b = 0``
    gx : (N, C, H, W) float32  # OUT, must not alias ``gy`` or ``x``

    Every operation is rounded to float32 in this order (bit-identical across backends).
    """
    xhat = _xhat(x, mean, inv_std)
    g = _relu_masked(gy, xhat, weight, bias) if relu else gy
    np.multiply(xhat, _per_channel(b), out=gx)
    gx += _per_channel(a)
    np.subtract(g, gx, out=gx)
    gx *= _per_channel(scale)


def batchnorm_backward(gy, x, mean, inv_std, weight, bias, relu, scale, count, gsum, gdot, gx):
    """:func:`batchnorm_backward_reduce`, then :func:`batchnorm_backward_apply` with ``a = gsum /
    count`` and ``b = gdot / count`` (float64, rounded once to float32) if ``count > 0``
    (training: ``count`` = N*H*W), else ``a = b = 0`` (eval): the whole BatchNorm backward
    without synchronised statistics.  The compiled kernels take it one channel at a time (its
    gradient and input read again while in cache) and give the two primitives' bytes.

    Parameters
    ----------
    gy, x, mean, inv_std, weight, bias, relu : as :func:`batchnorm_backward_reduce`  # IN
    scale : (C,) float32  # IN  ``weight * inv_std``
    count : float  # IN  values per channel (training), or 0 (eval)
    gsum, gdot : (C,) float64  # OUT  as :func:`batchnorm_backward_reduce`'s
    gx : (N, C, H, W) float32  # OUT  as :func:`batchnorm_backward_apply`'s
    """
    batchnorm_backward_reduce(gy, x, mean, inv_std, weight, bias, relu, gsum, gdot)
    if count > 0:
        a, b = (gsum / count).astype(np.float32), (gdot / count).astype(np.float32)
    else:
        a = b = np.zeros(gsum.shape, np.float32)
    batchnorm_backward_apply(gy, x, mean, inv_std, weight, bias, relu, scale, a, b, gx)


def adam_step(ps, gs, ms, vs, lr_t, beta1, beta2, eps, bc2_sqrt):
    """One ``torch.optim.Adam`` update (no weight decay, no amsgrad) of every parameter of
    ``ps``, in place: one call per optimizer step (PyTorch's "foreach" form).

    Parameters
    ----------
    ps : sequence of float32 arrays  # IN/OUT  parameters
    gs : sequence of float32 arrays  # IN  gradients
    ms, vs : sequences of float32 arrays  # IN/OUT  first and second moment estimates
        Four sequences of one length; the ``i``-th arrays of all four have one size (any
        shape) and are C-contiguous.
    lr_t : float
        Step size ``lr / (1 - beta1**t)``.
    beta1, beta2 : float
        The constants used are ``float32(1 - beta1)``, ``float32(beta2)``, ``float32(1 - beta2)``.
    eps : float
    bc2_sqrt : float
        ``sqrt(1 - beta2**t)``.

    Element-wise, every operation rounded to float32 in this order (torch's ``lerp_`` /
    ``addcmul_`` forms; bit-identical across backends)::

        m = m + float32(1 - beta1) * (g - m)
        v = v * float32(beta2) + (g * g) * float32(1 - beta2)
        p = p - (m / (sqrt(v) / bc2_sqrt + eps)) * lr_t
    """
    for p, g, m, v in zip(ps, gs, ms, vs, strict=True):
        p, g, m, v = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)  # (views: C-contiguous)
        f = p.dtype.type
        tmp = np.subtract(g, m)
        tmp *= f(1.0 - beta1)
        m += tmp
        v *= f(beta2)
        np.multiply(g, g, out=tmp)
        tmp *= f(1.0 - beta2)
        v += tmp
        np.sqrt(v, out=tmp)
        tmp /= f(bc2_sqrt)
        tmp += f(eps)
        np.divide(m, tmp, out=tmp)
        tmp *= f(lr_t)
        p -= tmp


def sgd_step(ps, gs, bufs, lr, weight_decay, momentum, dampening, nesterov, first):
    """One ``torch.optim.SGD`` update of every parameter of ``ps``, in place: one call per
    optimizer step.

    Parameters
    ----------
    ps : sequence of float32 arrays  # IN/OUT  parameters
    gs : sequence of float32 arrays  # IN  gradients
    bufs : sequence of float32 arrays  # IN/OUT  momentum buffers (unused when ``momentum`` is 0:
        any sizes)
        Three sequences of one length; the ``i``-th parameter and gradient (and buffer when
        ``momentum`` is not 0) have one size (any shape); all C-contiguous.
    lr, weight_decay, momentum, dampening : float
        The constants used are ``float32(lr)``, ``float32(weight_decay)``,
        ``float32(momentum)``, ``float32(1 - dampening)``.
    nesterov, first : bool
        Nesterov momentum; ``first``: the buffers' first update (they are set, not blended).

    Element-wise, every operation rounded to float32 in this order (torch's; bit-identical
    across backends)::

        d = g + weight_decay * p                          # if weight_decay != 0
        buf = d if first else buf * momentum + (1 - dampening) * d  # if momentum != 0,
        d = d + momentum * buf if nesterov else buf                 # these two
        p = p - lr * d
    """
    f = np.float32
    for p, g, buf in zip(ps, gs, bufs, strict=True):
        p, g, buf = p.reshape(-1), g.reshape(-1), buf.reshape(-1)  # (views: C-contiguous)
        d = g
        if weight_decay:
            d = g + f(weight_decay) * p
        if momentum:
            if first:
                buf[...] = d
            else:
                buf *= f(momentum)
                buf += f(1.0 - dampening) * d
            d = d + f(momentum) * buf if nesterov else buf
        p -= f(lr) * d


def conv2d_direct_forward(x, w, bias, sh, sw, pt, pl, relu, y, stats=None):
    """Direct convolution with an optional fused ReLU and batch-norm statistics.

    Parameters
    ----------
    x : (N, C, H, W) float32  # IN
    w : (OC, C, KH, KW) float32  # IN
    bias : (OC,) float32  # IN  (zeros for a layer without bias)
    sh, sw, pt, pl : int
        Stride and top/left padding; bottom/right padding as implied by the output size.
    relu : int
        1: ``y = max(conv + bias, 0)``; 0: ``y = conv + bias``.
    y : (N, OC, OH, OW) float32  # OUT
    stats : None or (2, OC) float64  # OUT  :func:`batchnorm_stats` of ``y`` (mean, then biased
        variance): the compiled kernels sum each image's output planes while they are in cache,
        then combine them as their ``batchnorm_stats`` does, whose bytes they give.
    """
    kh, kw = w.shape[2:]
    oh, ow = y.shape[2:]
    win = _windows(_padded(x, kh, kw, sh, sw, pt, pl, oh, ow), kh, kw, sh, sw, oh, ow)
    # (N, C, OH, OW, kh, kw) x (OC, C, kh, kw) -> (N, OH, OW, OC)
    out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    y[...] = out + bias[None, :, None, None]
    if relu:
        np.maximum(y, 0, out=y)
    if stats is not None:
        batchnorm_stats(y, stats[0], stats[1])


def conv2d_direct_forward_maxpool2(x, w, bias, sh, sw, pt, pl, relu, oh, ow, y, idx):
    """:func:`conv2d_direct_forward` followed by a 2x2 max pooling of stride 2, without the
    full-size output.

    Parameters
    ----------
    x, w, bias, sh, sw, pt, pl, relu
        As :func:`conv2d_direct_forward`, whose output is ``(N, OC, oh, ow)``.
    oh, ow : int
        The convolution's output size (>= 2 each).
    y : (N, OC, oh // 2, ow // 2) float32  # OUT
        Window ``(i, j)`` covers rows ``2i, 2i + 1`` and columns ``2j, 2j + 1`` of the
        convolution's output (an odd last row or column is dropped); :func:`maxpool2d_forward`'s
        scan rule, so the result equals that of the two primitives in sequence bit for bit.
    idx : (N, OC, oh // 2, ow // 2) int32  # OUT  as :func:`maxpool2d_forward`'s (flat into
        the ``(oh, ow)`` plane), or shape ``(0, 0, 0, 0)``: no indices (inference)
    """
    n, oc = y.shape[:2]
    full = np.empty((n, oc, oh, ow), np.float32)
    conv2d_direct_forward(x, w, bias, sh, sw, pt, pl, relu, full)
    maxpool2d_forward(full, 2, 2, 2, 2, 0, 0, y, idx if idx.size else np.empty(y.shape, np.int32))


def conv2d_direct_backward_data(gy, w, sh, sw, pt, pl, gx):
    """Input gradient of :func:`conv2d_direct_forward` (without the ReLU).

    Parameters
    ----------
    gy : (N, OC, OH, OW) float32  # IN
    w : (OC, C, KH, KW) float32  # IN
    gx : (N, C, H, W) float32  # OUT, overwritten
    """
    n, _, oh, ow = gy.shape
    _, c, kh, kw = w.shape
    # The unfolded gradient (C*kh*kw, N*OH*OW), folded back by the adjoint of im2col.
    g = np.tensordot(w, gy, axes=([0], [1]))  # (C, kh, kw, N, OH, OW)
    col2im(np.ascontiguousarray(g.reshape(c * kh * kw, n * oh * ow)), kh, kw, sh, sw, pt, pl, oh, ow, gx)


def conv2d_direct_backward_weight(gy, x, sh, sw, pt, pl, gw, gb):
    """Weight and bias gradients of :func:`conv2d_direct_forward` (without the ReLU).

    Parameters
    ----------
    gy : (N, OC, OH, OW) float32  # IN
    x : (N, C, H, W) float32  # IN
    gw : (OC, C, KH, KW) float32  # OUT  sum over images and positions of gy * window
    gb : (OC,) float32  # OUT  ``gy`` summed over N, OH, OW (in float64); or (0,): no bias
        gradient (a layer without bias)

    The compiled kernels sum images in ``_config.SLOTS`` fixed slots of consecutive images,
    then the slots in order, so their result does not depend on the thread count.
    """
    kh, kw = gw.shape[2:]
    oh, ow = gy.shape[2:]
    win = _windows(_padded(x, kh, kw, sh, sw, pt, pl, oh, ow), kh, kw, sh, sw, oh, ow)
    gw[...] = np.tensordot(gy, win, axes=([0, 2, 3], [0, 2, 3]))
    if gb.size:
        gb[...] = gy.sum(axis=(0, 2, 3), dtype=np.float64)


def conv2d_direct_backward_maxpool2(gp, idx, y, x, w, sh, sw, pt, pl, oh, ow, gx, gw, gb):
    """Gradients of :func:`conv2d_direct_forward_maxpool2` (and of its ReLU) from the gradient
    of its pooled output, without a full-size gradient array: the same bytes as
    :func:`relu_backward` (if ``y`` has elements), :func:`maxpool2d_backward` into
    ``(N, OC, oh, ow)``, :func:`conv2d_direct_backward_weight` and (if ``gx`` has elements)
    :func:`conv2d_direct_backward_data` in sequence; but the compiled backends' ``gx`` at
    stride 1 for kernels of ``_config.POOLED_DGRAD_MIN_PATCH`` or more values per output
    channel: the same sums from the pooling's winners in their own order (docs/PERFORMANCE.md,
    section 9, "Pooled input gradient"), within the direct kernels' bound of these.

    Parameters
    ----------
    gp : (N, OC, oh // 2, ow // 2) float32  # IN  gradient of the pooled output
    idx : (N, OC, oh // 2, ow // 2) int32  # IN  the forward's pooling indices (flat into (oh, ow))
    y : (N, OC, oh // 2, ow // 2) float32  # IN  the pooled output after the fused ReLU (its
        mask ``y > 0``), or shape (0, 0, 0, 0): no ReLU
    x, w : the forward's input and weights  # IN
    sh, sw, pt, pl, oh, ow : as :func:`conv2d_direct_forward_maxpool2`
    gx : (N, C, H, W) float32  # OUT, or shape (0, 0, 0, 0): no input gradient
    gw, gb : as :func:`conv2d_direct_backward_weight`  # OUT
    """
    g = gp
    if y.size:
        g = np.empty_like(gp)
        relu_backward(gp, y, g)
    full = np.empty(gp.shape[:2] + (oh, ow), np.float32)
    maxpool2d_backward(g, idx, full)
    conv2d_direct_backward_weight(full, x, sh, sw, pt, pl, gw, gb)
    if gx.size:
        conv2d_direct_backward_data(full, w, sh, sw, pt, pl, gx)


# Winograd's minimal filtering F(m x m, r x r) (docs/PERFORMANCE.md, "Winograd convolutions"):
# an m x m output tile of an r x r correlation from its (m + r - 1) x (m + r - 1) input window d
# and kernel g is A^T [(G g G^T) * (B^T d B)] A: (m + r - 1)**2 multiplications instead of
# m**2 r**2.  F(2x2, 3x3): the points 0, 1, -1 and infinity.
WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
# F(2x2, 5x5) and F(4x4, 3x3): the points 0, 1, -1, 2, -2 and infinity (one B^T).
WINOGRAD5_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
WINOGRAD5_G = np.array([[1 / 4, 0, 0, 0, 0], [-1 / 6] * 5, [-1 / 6, 1 / 6, -1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6, 1 / 3, 2 / 3], [1 / 24, -1 / 12, 1 / 6, -1 / 3, 2 / 3],
                        [0, 0, 0, 0, 1]], np.float64)
WINOGRAD5_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]], np.float64)
WINOGRAD43_G = np.array([[1 / 4, 0, 0], [-1 / 6] * 3, [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
WINOGRAD43_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                         np.float64)
#: ``(m, r)`` -> ``(B^T, G, A^T)``: the output tile ``m`` and the kernel size ``r`` of each algorithm.
WINOGRAD_MATRICES = {(2, 3): (WINOGRAD_BT, WINOGRAD_G, WINOGRAD_AT), (2, 5): (WINOGRAD5_BT, WINOGRAD5_G, WINOGRAD5_AT),
                     (4, 3): (WINOGRAD5_BT, WINOGRAD43_G, WINOGRAD43_AT)}


def conv2d_winograd_forward(x, w, bias, pt, pl, relu, y, m=2, stats=None):
    """3x3 or 5x5 convolution of stride 1 by Winograd's F(m x m, r x r) (F(2x2, 3x3),
    F(2x2, 5x5) or F(4x4, 3x3)): the same result as :func:`conv2d_direct_forward`
    (``sh = sw = 1``) up to rounding.

    Parameters
    ----------
    x : (N, C, H, W) float32  # IN
    w : (OC, C, r, r) float32  # IN, r = 3 or 5
    bias : (OC,) float32  # IN
    pt, pl : int
        Top/left padding, at most ``r - 1``; bottom/right padding as implied by the output size.
    relu : int
        As :func:`conv2d_direct_forward`.
    y : (N, OC, OH, OW) float32  # OUT
    m : int
        The output tile's side: 2, or 4 for a 3x3 kernel.
    stats : None or (2, OC) float64  # OUT  as :func:`conv2d_direct_forward`'s

    Output tile ``(ty, tx)`` (rows ``m ty`` to ``m ty + m - 1``, columns likewise; the last ones
    cut to ``OH x OW``) reads the ``(m + r - 1) x (m + r - 1)`` window of the padded input at
    ``(m ty, m tx)``; the kernel is transformed in float64 and rounded once; the input and the
    products are transformed in the input's precision.
    """
    dt = x.dtype
    oh, ow = y.shape[2:]
    r = w.shape[2]
    a = m + r - 1
    bt, g, at = WINOGRAD_MATRICES[m, r]
    th, tw = -(-oh // m), -(-ow // m)
    win = _windows(_padded(x, a, a, m, m, pt, pl, th, tw), a, a, m, m, th, tw)  # (N, C, th, tw, a, a)
    bt, at = bt.astype(dt), at.astype(dt)
    u = np.einsum("ai,nctwij,bj->nctwab", bt, win, bt)
    v = np.einsum("ai,ocij,bj->ocab", g, w.astype(np.float64), g).astype(dt)
    p = np.einsum("nctwab,ocab->notwab", u, v)
    t = np.einsum("ai,notwij,bj->notwab", at, p, at)  # (N, OC, th, tw, m, m)
    full = t.transpose(0, 1, 2, 4, 3, 5).reshape(y.shape[:2] + (m * th, m * tw))
    y[...] = full[:, :, :oh, :ow] + bias[None, :, None, None]
    if relu:
        np.maximum(y, 0, out=y)
    if stats is not None:
        batchnorm_stats(y, stats[0], stats[1])


def conv2d_winograd_backward_weight(gy, x, pt, pl, gw, gb):
    """Weight and bias gradients of :func:`conv2d_winograd_forward` (without the ReLU) by the same
    algorithm: with ``U`` the input transform of every tile and ``M = A dY A^T`` of its 2x2 output
    gradient ``dY`` (zeros past the output), ``gw[o, c] = G^T Z G`` with ``Z = sum over the tiles
    of M[o] * U[c]`` (element-wise); the same result as :func:`conv2d_direct_backward_weight` up
    to rounding.

    Parameters
    ----------
    gy : (N, OC, OH, OW) float32  # IN
    x : (N, C, H, W) float32  # IN
    pt, pl : int  # the forward's padding, at most ``r - 1``
    gw : (OC, C, r, r) float32  # OUT, r = 3 or 5
    gb : (OC,) float32  # OUT  as :func:`conv2d_direct_backward_weight`'s, or shape (0,)

    ``Z`` is summed in the input's precision, the back transform in float64, rounded once.
    """
    dt = x.dtype
    n, oc, oh, ow = gy.shape
    r = gw.shape[2]
    a = r + 1
    bt, g, at = WINOGRAD_MATRICES[2, r]
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    win = _windows(_padded(x, a, a, 2, 2, pt, pl, th, tw), a, a, 2, 2, th, tw)  # (N, C, th, tw, a, a)
    u = np.einsum("ai,nctwij,bj->nctwab", bt.astype(dt), win, bt.astype(dt))
    dy = np.zeros((n, oc, 2 * th, 2 * tw), dt)
    dy[:, :, :oh, :ow] = gy
    dy = dy.reshape(n, oc, th, 2, tw, 2).transpose(0, 1, 2, 4, 3, 5)  # (N, OC, th, tw, 2, 2)
    m = np.einsum("ai,notwab,bj->notwij", at.astype(dt), dy, at.astype(dt))  # A dY A^T
    z = np.einsum("notwij,nctwij->ocij", m, u)
    gw[...] = np.einsum("ia,ocij,jb->ocab", g, z.astype(np.float64), g)
    if gb.size:
        gb[...] = gy.sum(axis=(0, 2, 3), dtype=np.float64)


def conv2d_winograd_forward_maxpool2(x, w, bias, pt, pl, relu, oh, ow, y, idx):
    """:func:`conv2d_winograd_forward` followed by a 2x2 max pooling of stride 2, without the
    full-size output: as :func:`conv2d_direct_forward_maxpool2` (``oh, ow``: the convolution's
    output, at least 2 x 2; ``idx`` of shape ``(0, 0, 0, 0)``: no indices), bit for bit the two
    primitives in sequence."""
    n, oc = y.shape[:2]
    full = np.empty((n, oc, oh, ow), np.float32)
    conv2d_winograd_forward(x, w, bias, pt, pl, relu, full)
    maxpool2d_forward(full, 2, 2, 2, 2, 0, 0, y, idx if idx.size else np.empty(y.shape, np.int32))


def conv2d_winograd_backward_data(gy, w, pt, pl, gx, m=2):
    """Input gradient of :func:`conv2d_winograd_forward` (without the ReLU):
    :func:`conv2d_winograd_forward` of ``gy`` with the kernel rotated by 180 degrees and its
    channels swapped, padding ``r - 1 - pt, r - 1 - pl``, output tile ``m``.

    Parameters
    ----------
    gy : (N, OC, OH, OW) float32  # IN
    w : (OC, C, r, r) float32  # IN
    gx : (N, C, H, W) float32  # OUT
    m : int  # as :func:`conv2d_winograd_forward`'s
    """
    r = w.shape[2]
    wt = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    conv2d_winograd_forward(gy, wt, np.zeros(wt.shape[0], gy.dtype), r - 1 - pt, r - 1 - pl, 0, gx, m)
