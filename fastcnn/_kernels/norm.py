"""Numba kernels of BatchNorm2D (statistics, normalisation and its gradients).

The gradient sums run one channel per ``prange`` iteration and accumulate in float64 in a
fixed order: the channel's N planes are added element-wise, in order of n, into one float64 row
of H*W partial sums (a loop without a loop-carried dependency, which LLVM vectorises without
reassociating anything), and that row is summed with 8 interleaved partial sums.  The batch
statistics are summed per plane (:func:`plane_stats`), then per channel in order of n (the
convolutions' fused statistics sum the same way).  So results are bit-identical run after run
and whatever the number of threads (and equal to the Cython backend's, which sums in the same
order).

The element-wise kernels run one (n, c) plane per iteration with the reference's float32
operations in the reference's order (``fastmath`` is off: no fused multiply-add), so they
match it bit for bit.
"""
import numpy as np
from numba import njit, prange

from .. import _backend
from .._config import NUMBA_SERIAL
from ._common import _u, helper, parallel_kernel
from ._simd import PREFETCH_RUN, VL, pool2_row, prefetch_run, vplane_sums


@njit(**NUMBA_SERIAL)
def plane_stats(xf, a, n, sd):
    """``sd[0] = sum(x)``, ``sd[1] = sum((x - mean)**2)`` of the plane ``x = xf[a:a + n]`` (``n >=
    1``), float64, in src_ext/planestats.h's order: one pass around ``K = x[0]``
    (:func:`._simd.vplane_sums`), then ``K * n + S'`` and ``max(Q - (S' * S') / n, 0)``.  Its own
    function, never inlined, so that no caller's contraction flags reach its products."""
    k = np.float64(xf[a])
    s, q = vplane_sums(xf, a, n, k)
    ss = q - (s * s) / np.float64(n)
    sd[0] = k * np.float64(n) + s
    sd[1] = ss if ss > 0.0 else 0.0


@njit(**NUMBA_SERIAL)
def combine_stats(sd, p, mean, var):
    """``mean[ch]``, ``var[ch]`` of every channel from its planes' sums ``sd[i, ch] = (S, D)``
    (``(n, c, 2)``; :func:`plane_stats`, ``p`` values each), in order of ``i``: planestats.h's
    ``fps_combine``."""
    n, c = sd.shape[0], sd.shape[1]
    m = np.float64(n) * np.float64(p)
    for ch in range(c):
        s = 0.0
        for i in range(n):
            s += sd[i, ch, 0]
        mu = s / m
        v = 0.0
        for i in range(n):
            t = sd[i, ch, 0] / np.float64(p) - mu
            v += sd[i, ch, 1] + (t * t) * np.float64(p)
        mean[ch] = mu
        var[ch] = v / m


@parallel_kernel
def _stats(xf, p, sd):
    for e in prange(sd.shape[0]):  # (planes in memory order; sd: (planes, 2))
        plane_stats(xf, e * p, p, sd[e])


#: No plane sums: a convolution without fused statistics.
NO_SD = np.empty((0, 0, 2))


def stats_scratch(op, stats, wshape, yshape):
    """The plane sums' scratch of a convolution's fused statistics: ``(N, OC, 2)`` float64 after
    checking ``stats`` (the ``(2, OC)`` float64 output), or an empty one if ``stats`` is None."""
    if stats is None:
        return NO_SD
    if not (type(stats) is np.ndarray and stats.dtype == np.float64 and stats.flags.c_contiguous
            and stats.flags.writeable):
        got = f"{type(stats).__name__} {getattr(stats, 'dtype', '')}"
        raise ValueError(f"{op}: stats must be a writable C-contiguous float64 array, got {got}")
    _backend.sizes_stats(op, wshape, stats.shape)
    return np.empty((yshape[0], wshape[0], 2))


@njit(**NUMBA_SERIAL)
def _acc_plane_sum_dot(accs, accd, gf, xf, a, p, mu, s, wt, bs, relu, d):
    """``accs[e] += g``, ``accd[e] += g * h`` in float64 (exact products), ``h = (xf[a + e] - mu)
    * s`` (float32, the forward's xhat), ``g`` = ``gf[a + e]``, with ``relu`` masked by
    :func:`_relu_mask`; prefetching as :func:`_acc_plane`."""
    for e0 in range(0, p, PREFETCH_RUN):
        prefetch_run(gf, a + d + e0)
        prefetch_run(xf, a + d + e0)
        for e in range(e0, min(e0 + PREFETCH_RUN, p)):
            h = (xf[_u(a + e)] - mu) * s
            gv = gf[_u(a + e)]
            if relu:
                gv = _relu_mask(gv, h, wt, bs)
            g = np.float64(gv)
            accs[_u(e)] += g
            accd[_u(e)] += g * np.float64(h)


@njit(**NUMBA_SERIAL)
def _row_sum(acc, p):
    """``sum(acc[:p])``, 8 interleaved partial sums (as ``_sum8_runs`` of the Cython kernels)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    e8 = p - p % 8
    for e in range(0, e8, 8):
        s0 += acc[e]
        s1 += acc[e + 1]
        s2 += acc[e + 2]
        s3 += acc[e + 3]
        s4 += acc[e + 4]
        s5 += acc[e + 5]
        s6 += acc[e + 6]
        s7 += acc[e + 7]
    for e in range(e8, p):
        s0 += acc[e]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@helper
def _fwd_plane(xf, a, yf, b, p, mu, s, wt, bs, relu, rf):
    """``y = ((x - mu) * s) * wt + bs`` (plus ``rf[a:]`` if ``rf`` has elements; then the ReLU
    kernels' rule) over one plane, ``xf[a:]`` into ``yf[b:]``, float32 as the reference."""
    if rf.size:
        for e in range(p):
            r = (((xf[_u(a + e)] - mu) * s) * wt + bs) + rf[_u(a + e)]
            if relu and r <= 0.0:
                r = np.float32(0.0)
            yf[_u(b + e)] = r
    else:
        for e in range(p):
            r = ((xf[_u(a + e)] - mu) * s) * wt + bs
            if relu and r <= 0.0:
                r = np.float32(0.0)
            yf[_u(b + e)] = r


@helper
def _relu_mask(g, h, wt, bs):
    """``g`` through the ReLU of ``h * wt + bs`` (float32, :func:`fastcnn._ref.relu_backward`)."""
    return g * np.float32(1.0 if h * wt + bs > 0.0 else 0.0)


@helper
def _bwd_plane(gf, xf, of, a, p, mu, s, sc, ac, bc, wt, bs, relu):
    """``gx = (g - (xhat * bc + ac)) * sc``, ``xhat = (x - mu) * s``, over one plane, float32 as
    the reference (``g``: ``gy``, with ``relu`` masked by :func:`_relu_mask`)."""
    for e in range(a, a + p):
        h = (xf[_u(e)] - mu) * s
        g = gf[_u(e)]
        if relu:
            g = _relu_mask(g, h, wt, bs)
        of[_u(e)] = (g - (h * bc + ac)) * sc


@helper
def _channel_sums(acc, gf, xf, n, c, ch, p, mean, inv_std, weight, bias, relu, gsum, gdot):
    """``gsum[ch]``, ``gdot[ch]``: channel ``ch``'s planes through :func:`_acc_plane_sum_dot`
    into the two float64 rows ``acc`` (zeros), image by image, then each row's sum."""
    for b in range(n):
        _acc_plane_sum_dot(acc[0], acc[1], gf, xf, (b * c + ch) * p, p, mean[ch], inv_std[ch], weight[ch],
                           bias[ch], relu, c * p)
    gsum[ch] = _row_sum(acc[0], p)
    gdot[ch] = _row_sum(acc[1], p)


def batchnorm_stats(x, mean, var):
    """Per-channel mean and biased variance (see :func:`fastcnn._ref.batchnorm_stats`): each
    plane's sums (:func:`plane_stats`), then each channel's combined in order of n."""
    _backend.sizes_batchnorm_stats(x.shape, mean.shape, var.shape)
    n, c, h, w = x.shape
    if x.size == 0:  # (no values: 0/0 as the reference)
        mean[:] = np.nan
        var[:] = np.nan
        return
    sd = np.empty((n, c, 2))
    _stats(x.reshape(x.size), h * w, sd.reshape(n * c, 2))
    combine_stats(sd, h * w, mean, var)


_NO_RES = np.empty((0, 0, 0, 0), np.float32)  # (no residual: never read or written)


def batchnorm_forward(x, mean, inv_std, weight, bias, relu, y, res=None):
    """``y = xhat * weight + bias``, ``xhat = (x - mean) * inv_std`` (plus ``res``; ``relu``: then
    the ReLU) per channel (see :func:`fastcnn._ref.batchnorm_forward`)."""
    # (one compilation with and without a residual, whether or not ``res`` is given: docs/PERFORMANCE.md, 16)
    _batchnorm_forward(x, mean, inv_std, weight, bias, relu, y, _NO_RES if res is None else res, res is not None)


@parallel_kernel
def _batchnorm_forward(x, mean, inv_std, weight, bias, relu, y, res, has_res):
    if has_res:
        _backend.sizes_batchnorm_forward(x.shape, mean.shape, inv_std.shape, weight.shape, bias.shape, y.shape,
                                         res.shape)
    else:
        _backend.sizes_batchnorm_forward(x.shape, mean.shape, inv_std.shape, weight.shape, bias.shape, y.shape)
    rf = res.reshape(res.size)  # (empty without a residual)
    c, p = x.shape[1], x.shape[2] * x.shape[3]
    xf, yf = x.reshape(x.size), y.reshape(y.size)
    for t in prange(x.shape[0] * c):
        _fwd_plane(xf, t * p, yf, t * p, p, mean[t % c], inv_std[t % c], weight[t % c], bias[t % c], relu != 0, rf)


#: Planes of the pooled forward are run in at most this many chunks of consecutive ones, each
#: with one plane buffer.
_CHUNKS = 64


@parallel_kernel
def batchnorm_forward_maxpool2(x, mean, inv_std, weight, bias, relu, y, idx):
    """The forward and the ReLU of one plane at a time into a buffer (in cache), then the 2x2
    max pooling of that plane by the pooling kernels' vectors (:func:`._simd.pool2_row`): the
    bytes of :func:`batchnorm_forward` and :func:`.pool.maxpool2d_forward` in sequence (see
    :func:`fastcnn._ref.batchnorm_forward_maxpool2`)."""
    _backend.sizes_batchnorm_forward_maxpool2(x.shape, mean.shape, inv_std.shape, weight.shape, bias.shape, relu,
                                              y.shape, idx.shape)
    n, c, h, w = x.shape
    p, oh, ow = h * w, h // 2, w // 2
    xf, yf, jf = x.reshape(x.size), y.reshape(y.size), idx.reshape(idx.size)
    planes = n * c
    chunks = min(planes, _CHUNKS)
    nores = np.empty(0, np.float32)  # (no residual)
    for ch in prange(chunks):
        buf = np.empty(p, np.float32)
        for t in range(ch * planes // chunks, (ch + 1) * planes // chunks):
            _fwd_plane(xf, t * p, buf, 0, p, mean[t % c], inv_std[t % c], weight[t % c], bias[t % c], relu != 0,
                       nores)
            for q in range(oh):
                for u0 in range(0, ow, VL):
                    pool2_row(buf, 2 * q * w + 2 * u0, (2 * q + 1) * w + 2 * u0, min(VL, ow - u0), yf, jf,
                              (t * oh + q) * ow + u0, 2 * q * w + 2 * u0, w)


@parallel_kernel
def batchnorm_backward_reduce(gy, x, mean, inv_std, weight, bias, relu, gsum, gdot):
    """Per-channel ``sum(g)`` and ``sum(g * xhat)`` in float64, ``g`` = ``gy`` (masked by the
    ReLU with ``relu``; see :func:`fastcnn._ref.batchnorm_backward_reduce`)."""
    _backend.sizes_batchnorm_backward_reduce(gy.shape, x.shape, mean.shape, inv_std.shape, weight.shape,
                                             bias.shape, gsum.shape, gdot.shape)
    n, c = gy.shape[:2]
    p = gy.shape[2] * gy.shape[3]
    gf, xf = gy.reshape(gy.size), x.reshape(x.size)
    acc = np.zeros((c, 2, p))
    for ch in prange(c):
        _channel_sums(acc[ch], gf, xf, n, c, ch, p, mean, inv_std, weight, bias, relu != 0, gsum, gdot)


@parallel_kernel
def batchnorm_backward_apply(gy, x, mean, inv_std, weight, bias, relu, scale, a, b, gx):
    """``gx = (g - (xhat * b + a)) * scale`` per channel, ``g`` as in :func:`batchnorm_backward_reduce`
    (see :func:`fastcnn._ref.batchnorm_backward_apply`)."""
    _backend.sizes_batchnorm_backward_apply(gy.shape, x.shape, mean.shape, inv_std.shape, weight.shape,
                                            bias.shape, scale.shape, a.shape, b.shape, gx.shape)
    c, p = gy.shape[1], gy.shape[2] * gy.shape[3]
    gf, xf, of = gy.reshape(gy.size), x.reshape(x.size), gx.reshape(gx.size)
    for t in prange(gy.shape[0] * c):
        ch = t % c
        _bwd_plane(gf, xf, of, t * p, p, mean[ch], inv_std[ch], scale[ch], a[ch], b[ch], weight[ch], bias[ch],
                   relu != 0)


@parallel_kernel
def batchnorm_backward(gy, x, mean, inv_std, weight, bias, relu, scale, count, gsum, gdot, gx):
    """:func:`batchnorm_backward_reduce` and :func:`batchnorm_backward_apply` one channel at a
    time, its planes read again while in cache (see :func:`fastcnn._ref.batchnorm_backward`)."""
    _backend.sizes_batchnorm_backward(gy.shape, x.shape, mean.shape, inv_std.shape, weight.shape, bias.shape,
                                      scale.shape, gsum.shape, gdot.shape, gx.shape)
    n, c = gy.shape[:2]
    p = gy.shape[2] * gy.shape[3]
    gf, xf, of = gy.reshape(gy.size), x.reshape(x.size), gx.reshape(gx.size)
    acc = np.zeros((c, 2, p))
    for ch in prange(c):
        _channel_sums(acc[ch], gf, xf, n, c, ch, p, mean, inv_std, weight, bias, relu != 0, gsum, gdot)
        a = np.float32(gsum[ch] / count) if count > 0 else np.float32(0.0)
        bd = np.float32(gdot[ch] / count) if count > 0 else np.float32(0.0)
        for b in range(n):
            _bwd_plane(gf, xf, of, (b * c + ch) * p, p, mean[ch], inv_std[ch], scale[ch], a, bd, weight[ch],
                       bias[ch], relu != 0)
