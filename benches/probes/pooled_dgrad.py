"""Both gradients of a ReLU'd, 2x2 max-pooled convolution of stride 1: the primitive
``conv2d_direct_backward_maxpool2`` with the input gradient (from the pooling's winners when the
kernel has ``_config.POOLED_DGRAD_MIN_PATCH`` or more values per output channel; docs/PERFORMANCE.md,
section 9, "Pooled input gradient") against the Winograd plan's former way (the primitive for the
weights, then relu_backward, maxpool2d_backward and conv2d_winograd_backward_data on the full-size
gradient) and the dense composition (relu_backward, maxpool2d_backward, conv2d_direct_backward_weight
and _data): median ms of alternated calls, and the input gradient's largest difference from the
dense one in units of the direct kernels' bound (1e-5 of the sum of absolute terms).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/pooled_dgrad.py [BACKEND] [THREADS]
"""
import sys

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np
from pooled_wgrad import alternated, label, pooled_layer

from fastcnn import _backend, _config

#: (N, C, OC, input size, kernel, padding): lenet's conv2, bn's conv2 shape, 3x3 layers.
SHAPES = [(128, 32, 64, 14, 5, 2), (100, 16, 32, 14, 5, 2), (100, 32, 32, 16, 3, 1), (100, 64, 64, 8, 3, 1)]


def main(backend="cython", threads=2, reps=21):
    fastcnn.set_num_threads(int(threads))
    k = _backend.ops(backend)
    rng = np.random.default_rng(0)
    none = np.empty((0, 0, 0, 0), np.float32)
    print(f"backend={backend} threads={fastcnn.get_num_threads()}; median ms: primitive with the input gradient / "
          "primitive for the weights + Winograd input gradient / dense composition")
    for n, c, oc, hw, kk, p in SHAPES:
        x, w, y, idx, gp = pooled_layer(k, rng, n, c, oc, hw, kk, p, 0.1)
        out = {name: (np.empty_like(x), np.empty_like(w), np.empty(oc, np.float32))
               for name in ("primitive", "winograd", "dense")}
        g, full = np.empty_like(gp), np.empty((n, oc, hw, hw), np.float32)

        def primitive():
            k.conv2d_direct_backward_maxpool2(gp, idx, y, x, w, 1, 1, p, p, hw, hw, *out["primitive"])

        def winograd():
            gx, gw, gb = out["winograd"]
            k.conv2d_direct_backward_maxpool2(gp, idx, y, x, w, 1, 1, p, p, hw, hw, none, gw, gb)
            k.relu_backward(gp, y, g)
            k.maxpool2d_backward(g, idx, full)
            k.conv2d_winograd_backward_data(full, w, p, p, gx)

        def dense():
            gx, gw, gb = out["dense"]
            k.relu_backward(gp, y, g)
            k.maxpool2d_backward(g, idx, full)
            k.conv2d_direct_backward_weight(full, x, 1, 1, p, p, gw, gb)
            k.conv2d_direct_backward_data(full, w, 1, 1, p, p, gx)

        med = alternated({"primitive": primitive, "winograd": winograd, "dense": dense}, reps)
        scale = np.empty(x.shape, np.float32)
        k.conv2d_direct_backward_data(np.abs(full), np.abs(w), 1, 1, p, p, scale)
        err = np.abs(out["primitive"][0].astype(np.float64) - out["dense"][0]) / (1e-5 * scale.astype(np.float64)
                                                                                  + 1e-30)
        print(f"  {label(n, c, oc, hw, kk, p, y, _config.POOLED_DGRAD_MIN_PATCH)}: {med['primitive']:.2f} / "
              f"{med['winograd']:.2f} / {med['dense']:.2f} ms; input gradient within {err.max():.3f} x the bound "
              "of the dense one")


if __name__ == "__main__":
    main(*sys.argv[1:])
