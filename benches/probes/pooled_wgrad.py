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


def pooled_layer(k, rng, n, c, oc, hw, kk, p, wscale=1.0):
    """A ReLU'd, 2x2 max-pooled convolution's forward on random data (backend ops ``k``): its
    input, weights, pooled output, indices and a random pooled gradient."""
    x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
    w = rng.standard_normal((oc, c, kk, kk), dtype=np.float32) * np.float32(wscale)
    y = np.empty((n, oc, hw // 2, hw // 2), np.float32)
    idx = np.empty(y.shape, np.int32)
    k.conv2d_direct_forward_maxpool2(x, w, np.zeros(oc, np.float32), 1, 1, p, p, 1, hw, hw, y, idx)
    return x, w, y, idx, rng.standard_normal(y.shape, dtype=np.float32)


def label(n, c, oc, hw, kk, p, y, threshold):
    """The shape's description: its values per output channel against ``threshold`` (the
    winners' or the dense kernel's) and its share of positive windows (y: the pooled output)."""
    how = "winners" if c * kk * kk >= threshold else "dense"
    return (f"{n}x{c}x{hw}x{hw} -> {oc}, {kk}x{kk} pad {p} ({c * kk * kk} values per output channel: {how}; "
            f"{np.mean(y > 0):.0%} of the windows positive)")


def alternated(fns, reps):
    """Median ms of each of ``fns`` (name -> callable), called in turn ``reps`` times (the first
    round dropped)."""
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t[1:])) * 1e3 for name, t in times.items()}


def main(backend="cython", threads=2, reps=21):
    fastcnn.set_num_threads(int(threads))
    k = _backend.ops(backend)
    rng = np.random.default_rng(0)
    none = np.empty((0, 0, 0, 0), np.float32)
    print(f"backend={backend} threads={fastcnn.get_num_threads()}; median ms, primitive / composition")
    for n, c, oc, hw, kk, p in SHAPES:
        x, w, y, idx, gp = pooled_layer(k, rng, n, c, oc, hw, kk, p)
        out = {name: (np.empty_like(w), np.empty(oc, np.float32)) for name in ("winners", "dense")}
        g, full = np.empty_like(gp), np.empty((n, oc, hw, hw), np.float32)

        def winners():
            k.conv2d_direct_backward_maxpool2(gp, idx, y, x, w, 1, 1, p, p, hw, hw, none, *out["winners"])

        def dense():
            k.relu_backward(gp, y, g)
            k.maxpool2d_backward(g, idx, full)
            k.conv2d_direct_backward_weight(full, x, 1, 1, p, p, *out["dense"])

        med = alternated({"winners": winners, "dense": dense}, reps)
        same = all(a.tobytes() == b.tobytes() for a, b in zip(out["winners"], out["dense"]))
        wi, de = med["winners"], med["dense"]
        print(f"  {label(n, c, oc, hw, kk, p, y, _config.POOLED_WGRAD_MIN_PATCH)}: {wi:.2f} / {de:.2f} = "
              f"{wi / de:.2f}; {'same bytes' if same else 'DIFFERENT BYTES'}")


if __name__ == "__main__":
    main(*sys.argv[1:])
