"""Per-op time of the Cython and the Numba backend side by side (best of 5 x 5 calls, ms), at
ResNet/lenet shapes: ReLU, batch norm (training forward, backward, eval), pooling (max, 2x2
average, the ResNet's 8x8 average over an 8x8 plane, global average), Adam, softmax
cross-entropy.  Flags the ops where one backend takes over 1.5x the other's time.

    PYTHONPATH=. python benches/probes/backend_ops.py [THREADS]
"""
import fastcnn  # isort: skip  (first: fastcnn sets the thread defaults before NumPy loads)
import sys
import timeit

import numpy as np

from fastcnn import functional as F


def best_ms(f):
    f()
    return min(timeit.repeat(f, number=5, repeat=5)) / 5 * 1e3


def ops(rng):
    out = {}
    for s in [(100, 16, 32, 32), (100, 64, 8, 8), (128, 32, 28, 28)]:
        x, g = rng.standard_normal(s, dtype=np.float32), rng.standard_normal(s, dtype=np.float32)
        w, b = np.ones(s[1], np.float32), np.zeros(s[1], np.float32)
        rm, rv = np.zeros(s[1], np.float32), np.ones(s[1], np.float32)
        y = F.relu(x)
        _, cache = F.batch_norm2d(x, w, b, rm, rv, training=True)
        yp, idx = F.max_pool2d(x, 2, return_indices=True)
        k = s[2]  # (a window over the whole plane, as the ResNet's AvgPool2D(8))
        gk = np.ones((s[0], s[1], 1, 1), np.float32)
        out.update({
            (s, "relu"): lambda x=x: F.relu(x),
            (s, "relu backward"): lambda g=g, y=y: F.relu_backward(g, y),
            (s, "bn"): lambda x=x, w=w, b=b, rm=rm, rv=rv: F.batch_norm2d(x, w, b, rm, rv, training=True),
            (s, "bn backward"): lambda g=g, c=cache, w=w: F.batch_norm2d_backward(g, c, w),
            (s, "bn eval"): lambda x=x, w=w, b=b, rm=rm, rv=rv: F.batch_norm2d(x, w, b, rm, rv, training=False),
            (s, "maxpool"): lambda x=x: F.max_pool2d(x, 2, return_indices=True),
            (s, "maxpool backward"): lambda gp=np.ones_like(yp), idx=idx, sh=s: F.max_pool2d_backward(gp, idx, sh),
            (s, "avgpool 2x2"): lambda x=x: F.avg_pool2d(x, 2),
            (s, f"avgpool {k}x{k} backward"): lambda gk=gk, sh=s, k=k: F.avg_pool2d_backward(gk, sh, k),
            (s, "global avg"): lambda x=x: F.global_avg_pool2d(x),
            (s, "global avg backward"): lambda gk=gk, sh=s: F.global_avg_pool2d_backward(gk, sh),
        })
    ps = [rng.standard_normal(n, dtype=np.float32) for n in (2304, 4608, 9216, 18432, 36864, 640)]
    gs, ms, vs = ([np.ones_like(p) for p in ps], [np.zeros_like(p) for p in ps], [np.zeros_like(p) for p in ps])
    out[("ResNet parameters", "adam")] = lambda: F.adam_step(ps, gs, ms, vs, step=1, lr=1e-3)
    lg, lb = rng.standard_normal((128, 10), dtype=np.float32), rng.integers(0, 10, 128)
    out[((128, 10), "softmax cross-entropy")] = lambda: F.softmax_cross_entropy(lg, lb)
    return out


def main(threads=1):
    fastcnn.set_num_threads(int(threads))
    times = {}
    for backend in ("cython", "numba"):
        fastcnn.set_backend(backend)
        for key, f in ops(np.random.default_rng(0)).items():
            times.setdefault(key, {})[backend] = best_ms(f)
    for (shape, op), t in times.items():
        r = t["cython"] / t["numba"]
        flag = "  <--" if r > 1.5 or r < 1 / 1.5 else ""
        print(f"{str(shape):20s} {op:22s} cython {t['cython']:8.3f}  numba {t['numba']:8.3f}  ratio {r:5.2f}{flag}")


if __name__ == "__main__":
    main(*sys.argv[1:])
