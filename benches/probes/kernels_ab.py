"""Another tree's kernels against this one's, in one process, call by call, at 1 and 2 threads,
the two trees' calls alternated (their order swapped every round), after a check that both give
the same bytes.  ``--calls lenet`` (default): lenet's four convolution calls (conv1's pooled
direct forward, conv2's pooled Winograd forward, the pooled backward of conv2 and of conv1
(weights only)); ``--calls bn``: the batch norm backward (gradient sums and input gradient, with
the fused ReLU's mask) at the ResNet's three activation shapes; ``--calls resnet``: the ResNet's
3x3 convolutions by F(4x4, 3x3) Winograd (forward and input gradient) at its three stages.
``--flush MB`` writes MB megabytes on the call's threads before every call (cold caches:
repeated calls otherwise find each thread's share of the data in its own core's caches).

    python benches/probes/kernels_ab.py BASE_TREE cython --rounds 60
    python benches/probes/kernels_ab.py BASE_TREE numba --rounds 60 --calls bn
    python benches/probes/kernels_ab.py BASE_TREE numba --rounds 40 --calls resnet

BASE_TREE: a checkout with its extensions built (``git archive BASE | tar -x -C DIR``, then
``python setup.py build_ext --inplace`` there).  Cython: the base tree's ``conv_direct``
extension is loaded beside this tree's (``norm`` for ``bn``).  Numba: the base tree's package
is copied to a temporary directory as ``fastcnn_base`` (its backend table pointed at itself)
and imported beside ``fastcnn``; both set their thread counts together.  Prints per call the medians at 1
and 2 threads of each tree and the median of the rounds' base / this-tree ratios at 2 threads
(above 1: this tree faster).
"""
import fastcnn  # isort: skip  (first: fastcnn sets the thread defaults before NumPy loads)
import argparse
import glob
import hashlib
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from fastcnn import _backend


def _cython_pair(base, name):
    """(base module, this tree's module, set_threads) of the Cython extension ``name``."""
    path = glob.glob(os.path.join(base, "fastcnn", "_ext", f"{name}.cpython*.so"))
    if not path:
        raise SystemExit(f"kernels_ab: no built {name} extension under {base}/fastcnn/_ext")
    spec = importlib.util.spec_from_file_location(name, path[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fastcnn.set_backend("cython")
    mine = _backend.ops()

    def set_threads(t):
        fastcnn.set_num_threads(t)
        mod._set_num_threads(t)

    return mod, mine, set_threads


def _numba_pair(base, tmp):
    """The same for the Numba kernels: the base tree's package imported as ``fastcnn_base``."""
    dst = os.path.join(tmp, "fastcnn_base")
    shutil.copytree(os.path.join(base, "fastcnn"), dst, ignore=shutil.ignore_patterns("__pycache__"))
    table = os.path.join(dst, "_backend.py")
    with open(table) as f:
        text = f.read()
    for name in ("_ref", "_kernels", "_ext"):
        text = text.replace(f'"fastcnn.{name}"', f'"fastcnn_base.{name}"')
    with open(table, "w") as f:
        f.write(text)
    sys.path.insert(0, tmp)
    import fastcnn_base
    from fastcnn_base import _backend as base_backend

    fastcnn_base.set_backend("numba")
    fastcnn.set_backend("numba")

    def set_threads(t):
        fastcnn.set_num_threads(t)
        fastcnn_base.set_num_threads(t)

    return base_backend.ops(), _backend.ops(), set_threads


def _lenet_calls(k, n):
    """lenet's convolution calls on module ``k``: name -> (call, output arrays)."""
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    x1, w1, b1 = f32(n, 1, 28, 28), f32(32, 1, 5, 5), f32(32)
    x2, w2, b2 = np.maximum(f32(n, 32, 14, 14), 0), f32(64, 32, 5, 5) * 0.1, f32(64)
    g1, g2 = f32(n, 32, 14, 14), f32(n, 64, 7, 7)
    y1, y2 = np.empty((n, 32, 14, 14), np.float32), np.empty((n, 64, 7, 7), np.float32)
    i1, i2 = np.empty(y1.shape, np.int32), np.empty(y2.shape, np.int32)
    gx2, gw2, gb2 = np.empty(x2.shape, np.float32), np.empty(w2.shape, np.float32), np.empty(64, np.float32)
    gx1, gw1, gb1 = np.empty((0, 0, 0, 0), np.float32), np.empty(w1.shape, np.float32), np.empty(32, np.float32)
    return {
        "conv1 pooled direct forward": (
            lambda: k.conv2d_direct_forward_maxpool2(x1, w1, b1, 1, 1, 2, 2, 1, 28, 28, y1, i1), (y1, i1)),
        "conv2 pooled Winograd forward": (
            lambda: k.conv2d_winograd_forward_maxpool2(x2, w2, b2, 2, 2, 1, 14, 14, y2, i2), (y2, i2)),
        "conv2 pooled backward": (
            lambda: k.conv2d_direct_backward_maxpool2(g2, i2, y2, x2, w2, 1, 1, 2, 2, 14, 14, gx2, gw2, gb2),
            (gx2, gw2, gb2)),
        "conv1 pooled backward": (
            lambda: k.conv2d_direct_backward_maxpool2(g1, i1, y1, x1, w1, 1, 1, 2, 2, 28, 28, gx1, gw1, gb1),
            (gw1, gb1)),
    }


#: The ResNet's three stages: (channels, height = width) of their activations.
RESNET_STAGES = ((16, 32), (32, 16), (64, 8))


def _bn_calls(k, n):
    """The ResNet's batch norm backwards on module ``k`` (with the ReLU's mask, as after the
    first convolution of a block): name -> (call, output arrays)."""
    rng = np.random.default_rng(0)
    calls = {}
    for c, hw in RESNET_STAGES:
        shape = (n, c, hw, hw)
        x, gy = (rng.standard_normal(shape, dtype=np.float32) for _ in range(2))
        mean, inv_std = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
        w, b = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
        gs, gd, gx = np.empty(c), np.empty(c), np.empty(shape, np.float32)
        calls[f"batch norm backward {c} x {hw}x{hw}"] = (
            lambda a=(gy, x, mean, inv_std, w, b, 1, w * inv_std, float(n * hw * hw), gs, gd, gx):
            k.batchnorm_backward(*a), (gs, gd, gx))
    return calls


def _resnet_calls(k, n):
    """The ResNet's 3x3 convolutions on module ``k`` by F(4x4, 3x3) Winograd at its three stages
    (16, 32, 64 channels): the forward and the input gradient, name -> (call, output arrays)."""
    rng = np.random.default_rng(0)
    calls = {}
    for c, hw in RESNET_STAGES:
        x, gy = (rng.standard_normal((n, c, hw, hw), dtype=np.float32) for _ in range(2))
        w, b = rng.standard_normal((c, c, 3, 3), dtype=np.float32) * 0.1, rng.standard_normal(c).astype(np.float32)
        y, gx = np.empty(x.shape, np.float32), np.empty(x.shape, np.float32)
        calls[f"F(4x4) forward {c} x {hw}x{hw}"] = (
            lambda a=(x, w, b, 1, 1, 0, y, 4): k.conv2d_winograd_forward(*a), (y,))
        calls[f"F(4x4) input grad {c} x {hw}x{hw}"] = (
            lambda a=(gy, w, 1, 1, gx, 4): k.conv2d_winograd_backward_data(*a), (gx,))
    return calls


CALLS = {"lenet": ("conv_direct", _lenet_calls, 128), "bn": ("norm", _bn_calls, 100),
         "resnet": ("conv_direct", _resnet_calls, 100)}


def _digest(arrays):
    return hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("base", help="the other tree (extensions built)")
    p.add_argument("backend", choices=("cython", "numba"))
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--calls", choices=tuple(CALLS), default="lenet")
    p.add_argument("--batch", type=int, help="default: 128 (lenet), 100 (bn, resnet)")
    p.add_argument("--flush", type=int, metavar="MB", help="write MB megabytes before every call (cold caches)")
    a = p.parse_args()
    flush = None if not a.flush else np.zeros(a.flush << 18, np.float32)
    ext, calls_of, batch = CALLS[a.calls]
    a.batch = a.batch or batch
    with tempfile.TemporaryDirectory() as tmp:
        base, mine, set_threads = (_cython_pair(a.base, ext) if a.backend == "cython" else _numba_pair(a.base, tmp))
        trees = {"base": calls_of(base, a.batch), "this": calls_of(mine, a.batch)}
        for name in trees["base"]:  # (forwards first: the backward calls read their indices)
            digests = set()
            for calls in trees.values():
                for t in (1, 2, 2):
                    set_threads(t)
                    calls[name][0]()
                    digests.add(_digest(calls[name][1]))
            if len(digests) != 1:
                raise SystemExit(f"kernels_ab: {name}: the trees' or thread counts' bytes differ")
        spent = {(name, tree, t): [] for name in trees["base"] for tree in trees for t in (1, 2)}
        for r in range(a.rounds):
            for t in (1, 2):
                set_threads(t)
                for name in trees["base"]:
                    for tree in (("base", "this") if r % 2 == 0 else ("this", "base")):
                        if flush is not None:  # (on the call's threads: every core's caches)
                            mine.relu_forward(flush, flush)
                        t0 = time.perf_counter()
                        trees[tree][name][0]()
                        spent[(name, tree, t)].append(time.perf_counter() - t0)
    cold = f", {a.flush} MB written before each call" if a.flush else ""
    print(f"{a.backend}, batch {a.batch}, {a.rounds} rounds{cold}; medians in ms, 1 -> 2 threads; bytes equal")
    for name in trees["base"]:
        m = {(tree, t): statistics.median(spent[(name, tree, t)]) * 1e3 for tree in trees for t in (1, 2)}
        ratio = statistics.median(b / c for b, c in zip(spent[(name, "base", 2)], spent[(name, "this", 2)]))
        print(f"  {name:30s} base {m['base', 1]:7.3f} -> {m['base', 2]:7.3f} ({m['base', 1] / m['base', 2]:.2f}x)"
              f"   this {m['this', 1]:7.3f} -> {m['this', 2]:7.3f} ({m['this', 1] / m['this', 2]:.2f}x)"
              f"   2 threads base / this {ratio:.3f}")


if __name__ == "__main__":
    main()
