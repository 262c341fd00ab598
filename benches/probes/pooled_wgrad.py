"""The weight gradient of a ReLU'd, 2x2 max-pooled convolution: the primitive
``conv2d_direct_backward_maxpool2`` without the input gradient (from the pooling's winners when
the kernel has ``_config.POOLED_WGRAD_MIN_PATCH`` or more values per output channel, else its
dense kernels; docs/PERFORMANCE.md, section 9, "Pooled weight gradient") against the
composition it equals bit for bit (relu_backward, maxpool2d_backward,
conv2d_direct_backward_weight): median ms of alternated calls, and whether the bytes agree.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/pooled_wgrad.py [BACKEND] [THREADS]
"""
import sys
import time

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import _backend, _config

#: (N, C, OC, input size, kernel, padding): lenet's conv2 and conv1, bn's conv2 shape, a 3x3 layer.
SHAPES = [(128, 32, 64, 14, 5, 2), (128, 1, 32, 28, 5, 2), (100, 16, 32, 14, 5, 2), (100, 32, 32, 16, 3, 1)]


def main(backend="cython", threads=2, reps=21):
    fastcnn.set_num_threads(int(threads))
    k = _backend.ops(backend)
    rng = np.random.default_rng(0)
    none = np.empty((0, 0, 0, 0), np.float32)
    print(f"backend={backend} threads={fastcnn.get_num_threads()}; median ms, primitive / composition")
    for n, c, oc, hw, kk, p in SHAPES:
        x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
        w = rng.standard_normal((oc, c, kk, kk), dtype=np.float32)
        y = np.empty((n, oc, hw // 2, hw // 2), np.float32)
        idx = np.empty(y.shape, np.int32)
        k.conv2d_direct_forward_maxpool2(x, w, np.zeros(oc, np.float32), 1, 1, p, p, 1, hw, hw, y, idx)
        gp = rng.standard_normal(y.shape, dtype=np.float32)
        out = {name: (np.empty_like(w), np.empty(oc, np.float32)) for name in ("winners", "dense")}
        g, full = np.empty_like(gp), np.empty((n, oc, hw, hw), np.float32)

        def winners():
            k.conv2d_direct_backward_maxpool2(gp, idx, y, x, w, 1, 1, p, p, hw, hw, none, *out["winners"])

        def dense():
            k.relu_backward(gp, y, g)
            k.maxpool2d_backward(g, idx, full)
            k.conv2d_direct_backward_weight(full, x, 1, 1, p, p, *out["dense"])

        times = {"winners": [], "dense": []}
        for _ in range(reps):
            for name, fn in (("winners", winners), ("dense", dense)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        same = all(a.tobytes() == b.tobytes() for a, b in zip(out["winners"], out["dense"]))
        wi, de = (float(np.median(times[name][1:])) * 1e3 for name in ("winners", "dense"))
        how = "winners" if c * kk * kk >= _config.POOLED_WGRAD_MIN_PATCH else "dense"
        print(f"  {n}x{c}x{hw}x{hw} -> {oc}, {kk}x{kk} pad {p} ({c * kk * kk} values per output channel: {how}; "
              f"{np.mean(y > 0):.0%} of the windows positive): {wi:.2f} / {de:.2f} = {wi / de:.2f}; "
              f"{'same bytes' if same else 'DIFFERENT BYTES'}")


if __name__ == "__main__":
    main(*sys.argv[1:])
