"""Slow, obviously right float64 versions of the ops: the reference's reference."""
import numpy as np


def pad_amounts(padding, kernel, stride, size):
    """(top, bottom, left, right), written out independently of fastcnn._shapes."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        out = []
        for k, s, n in zip(kernel, stride, size):
            o = (n + s - 1) // s
            t = max((o - 1) * s + k - n, 0)
            out += [t // 2, t - t // 2]
        return tuple(out)
    if isinstance(padding, int):
        return (padding,) * 4
    return (padding[0], padding[0], padding[1], padding[1])


def conv2d(x, w, b, stride, pads):
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    pt, pb, pl, pr = pads
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    oh = (h + pt + pb - kh) // stride[0] + 1
    ow = (wd + pl + pr - kw) // stride[1] + 1
    y = np.zeros((n, oc, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        y += b[None, :, None, None]
    return y


def pool2d(x, kernel, stride, pads, mode, count_include_pad=True):
    """Returns (y, argmax flat indices or None)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    pt, pb, pl, pr = pads
    oh = (h + pt + pb - kh) // stride[0] + 1
    ow = (w + pl + pr - kw) // stride[1] + 1
    y = np.zeros((n, c, oh, ow))
    idx = np.zeros((n, c, oh, ow), dtype=np.int64)
    for a in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, besti, total, count = None, -1, 0.0, 0
                    for di in range(kh):
                        for dj in range(kw):
                            hh, ww = i * stride[0] - pt + di, j * stride[1] - pl + dj
                            if 0 <= hh < h and 0 <= ww < w:
                                v = x[a, ch, hh, ww]
                                total += v
                                count += 1
                                if best is None or v > best:
                                    best, besti = v, hh * w + ww
                    if mode == "max":
                        y[a, ch, i, j], idx[a, ch, i, j] = best, besti
                    else:
                        y[a, ch, i, j] = total / (kh * kw if count_include_pad else count)
    return y, (idx if mode == "max" else None)


def softmax_xent(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(p[np.arange(len(labels)), labels]))
    g = p.copy()
    g[np.arange(len(labels)), labels] -= 1
    return loss, g / len(labels)


def corr2d(X, K):
    """The tutorials' cross-correlation, loop for loop."""
    h, w = K.shape
    Y = np.zeros((X.shape[0] - h + 1, X.shape[1] - w + 1))
    for i in range(Y.shape[0]):
        for j in range(Y.shape[1]):
            Y[i, j] = (X[i:i + h, j:j + w] * K).sum()
    return Y


def conv2d_backward(gy, x, w, stride, pads):
    """(gx, gw, gb) of :func:`conv2d`: the adjoint of its loops, in float64."""
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    pt, pb, pl, pr = pads
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    gxp = np.zeros_like(xp)
    gw = np.zeros(w.shape)
    for i in range(gy.shape[2]):
        for j in range(gy.shape[3]):
            rows = slice(i * stride[0], i * stride[0] + kh)
            cols = slice(j * stride[1], j * stride[1] + kw)
            g = gy[:, :, i, j]  # (N, OC)
            gw += np.tensordot(g, xp[:, :, rows, cols], axes=([0], [0]))
            gxp[:, :, rows, cols] += np.tensordot(g, w, axes=([1], [0]))
    return gxp[:, :, pt:pt + h, pl:pl + wd], gw, gy.sum(axis=(0, 2, 3))


def _fma_step(c, a, b, fused):
    """``c + outer(a, b)``: one FMA each (in float64, rounded once to float32) or, not
    ``fused``, a float32 multiply and a float32 add."""
    if fused:
        return (np.outer(a.astype(np.float64), b.astype(np.float64)) + c).astype(np.float32)
    return c + np.outer(a, b).astype(np.float32)


def fma_chain(a, b, fused=True):
    """``a @ b`` (float32) as one FMA per inner index in order: each step in float64 (the
    float32 product is exact there), rounded once to float32.  That equals a float32 FMA
    unless the float64 sum itself was rounded onto a float32 rounding midpoint (chance about
    2**-29 a step; the fixed seeds below never hit it).  ``fused=False``: a multiply and an
    add per step (the baseline path's)."""
    c = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for p in range(a.shape[1]):
        c = _fma_step(c, a[:, p], b[p], fused)
    return c


def dot16(x, w, fused=True):
    """The dense rows path's ``x @ w.T`` (src_ext/rows_kern.h): lane ``j`` of each output the
    chain of :func:`fma_chain` over the inner indices ``p = j mod 16`` in order, then the lanes
    summed 16 -> 8 -> 4 -> 2 -> 1 in float32."""
    lanes = np.zeros((16, x.shape[0], w.shape[0]), np.float32)
    for p in range(x.shape[1]):
        lanes[p % 16] = _fma_step(lanes[p % 16], x[:, p], w[:, p], fused)
    h = 8
    while h >= 1:
        lanes[:h] = lanes[:h] + lanes[h:2 * h]
        h //= 2
    return lanes[0]
