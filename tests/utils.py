"""Helpers shared by the test modules and the benchmarks (``from utils import ...``).

conftest.py holds only the fixtures and hooks.  Nothing here imports a private name of
fastcnn (tests/test_layout.py checks it).
"""
import functools
import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import fastcnn
from fastcnn import data, losses, optim
from fastcnn.functional import ConvGeometry
from fastcnn.graph import Add, Concatenate, Input, Model, Multiply
from fastcnn.interop import state_dict_from_torch as to_numpy_state  # noqa: F401  (PyTorch state -> fastcnn)
from fastcnn.interop import to_torch as torch_twin  # noqa: F401  (a fastcnn model's PyTorch twin, same weights)
from fastcnn.layers import AvgPool2D, BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from fastcnn.predict import normalize, preprocess_info

# --------------------------------------------------------------------------- environment

# Tests read MNIST from $FASTCNN_DATA; default to the shared copy beside the repository.
_SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
if not os.environ.get("FASTCNN_DATA") and _SHARED_MNIST.is_dir():
    os.environ["FASTCNN_DATA"] = str(_SHARED_MNIST)
DATA = os.environ.get("FASTCNN_DATA")
needs_mnist = pytest.mark.skipif(not DATA or not Path(DATA).is_dir(), reason="FASTCNN_DATA not set to MNIST")

BACKENDS = fastcnn.available_backends()
COMPILED = tuple(b for b in BACKENDS if b != "numpy")

# Found, not imported: a process that never needs torch does not load its OpenMP runtime
# (benches/conftest.py; docs/PERFORMANCE.md).
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (pip install .[compare])")

# Subprocesses run from a neutral directory so that `python -m fastcnn` / `python -c` import
# the installed package, never the source tree in the current directory.
NEUTRAL_CWD = Path(__file__).resolve().parent / "_subprocess_cwd"
NEUTRAL_CWD.mkdir(exist_ok=True)


def cores():
    """Cores this process may run on (the thread counts fastcnn accepts go up to this)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def rng(seed=0):
    return np.random.default_rng(seed)


#: glibc only: fastcnn sets its heap thresholds and installs the large-array cache with them.
GLIBC = pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in os.confstr("CS_GNU_LIBC_VERSION"),
                           reason="the heap thresholds and the array cache are glibc's")


def heap_env(**env):
    """This process's environment without any heap setting (glibc's ``MALLOC_*``,
    ``FASTCNN_HEAP``), plus ``env``: for a fresh interpreter with fastcnn's heap defaults."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "FASTCNN_HEAP"}
    full.update(env)
    return full


def run_python(code, *args, timeout=180, **kw):
    """Run ``code`` in a fresh interpreter from a neutral directory (installed fastcnn)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], check=False, cwd=NEUTRAL_CWD,
                          capture_output=True, text=True, timeout=timeout, **kw)


# --------------------------------------------------------------------------- comparisons

def assert_close(actual, desired, rtol=1e-5, atol=1e-7, what="", scale=None):
    """Max abs error within rtol times the output scale (max |desired|, or ``scale``: e.g. the
    largest sum of |terms| where a sum may cancel)."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} != {desired.shape}"
    if scale is None:
        scale = np.max(np.abs(desired)) if desired.size else 0.0
    err = np.max(np.abs(actual - desired)) if desired.size else 0.0
    assert err <= rtol * scale + atol, f"{what}: max abs err {err:.3g} > {rtol:g} * scale {scale:.3g} + {atol:g}"


def _central(f, arr, idx, eps):
    """``(f(arr[idx] + eps) - f(arr[idx] - eps)) / (2 eps)``, ``arr`` changed in place and restored."""
    old = arr[idx]
    arr[idx] = old + eps
    fp = f()
    arr[idx] = old - eps
    fm = f()
    arr[idx] = old
    return (fp - fm) / (2 * eps)


def numgrad(f, x, eps=1e-6):
    """Central finite differences of the scalar ``f()`` with respect to every element of the
    float64 array ``x`` (changed in place and restored)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        gflat[i] = _central(f, flat, i, eps)
    return g


def assert_grad_at(f, checks, eps=1e-3, tol=5e-3):
    """Central differences of the scalar ``f()`` (computed in float64 from a float32 layer) at
    chosen elements of its input arrays, changed in place and restored, against the analytic
    gradients: ``checks`` lists ``(array, grad, indices)``.  Truncation is O(eps^2) and
    float32 rounding of ``f`` ~1e-4, so ``tol`` is relative to max(1, |difference|)."""
    for arr, grad, where in checks:
        for idx in where:
            num = _central(f, arr, idx, eps)
            assert abs(num - grad[idx]) <= tol * max(1.0, abs(num)), (idx, num, grad[idx])


# --------------------------------------------------------------------------- convolution geometries

HSET = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def geometries(draw, pool=False):
    n = draw(st.sampled_from([1, 2, 3]))
    c = draw(st.sampled_from([1, 2, 3, 5, 16, 33, 64])) if not pool else draw(st.integers(1, 7))
    kh = draw(st.sampled_from([1, 2, 3, 5]))
    kw = draw(st.sampled_from([kh, 1, 3]))
    sh = draw(st.sampled_from([1, 2, 3]))
    sw = draw(st.sampled_from([sh, 1, 2]))
    h = draw(st.integers(max(kh, 1), 13))
    w = draw(st.integers(max(kw, 1), 13))
    padding = draw(st.sampled_from(["valid", "same", 0, 1, 2, (1, 0)]))
    if pool and isinstance(padding, (int, tuple)):
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        if 2 * ph > kh or 2 * pw > kw:
            padding = "valid"
    g = ConvGeometry((kh, kw), (sh, sw), padding, (h, w), "test")
    if pool and (max(g.pt, g.pb) >= kh or max(g.pl, g.pr) >= kw):
        g = ConvGeometry((kh, kw), (sh, sw), "valid", (h, w), "test")
    seed = draw(st.integers(0, 2**31 - 1))
    return n, c, h, w, g, np.random.default_rng(seed)


# (n, c, h, w, oc, kh, kw, stride, padding): odd shapes, batch 1, strides 1/2/3, TF "same"
# (asymmetric), C = 1/3/16/17/64, kh != kw, OC not a multiple of 16, images smaller than
# the kernel, padding larger than the kernel.
DIRECT_CASES = [
    (2, 3, 7, 9, 5, 3, 3, 1, 1),
    (1, 1, 28, 28, 32, 5, 5, 1, "same"),
    (3, 16, 14, 14, 32, 5, 5, 1, 2),
    (2, 17, 11, 8, 9, 3, 2, (2, 3), (1, 0)),
    (1, 64, 8, 8, 64, 3, 3, 2, 1),
    (2, 3, 9, 13, 20, 4, 3, (3, 2), "same"),
    (3, 2, 10, 10, 3, 1, 1, 3, 0),
    (2, 4, 3, 2, 6, 5, 4, (1, 2), (3, 2)),
    (1, 5, 2, 3, 17, 3, 3, 1, 4),
    (2, 16, 6, 7, 16, 3, 3, 2, "same"),
    (4, 1, 9, 9, 8, 2, 5, 1, "valid"),
    (2, 3, 1, 1, 9, 1, 1, 1, 2),  # output cells made of padding only
    (2, 6, 15, 15, 40, 3, 3, 1, 1),  # pixel vectors aligned to rows (OW < 16 < Wq)
    (1, 5, 14, 14, 13, 5, 5, 1, "same"),  # rows of 14, OC % 4 != 0: pixel tiles (16 lanes), channel tiles (8, 4)
    (2, 3, 5, 37, 8, 3, 3, 2, 1),  # stride-2 phase rows of 16+ values: packed by vectors
    (2, 3, 6, 35, 4, 3, 3, 2, 0),  # stride 2, no padding: odd columns to phase 1 from column 0
    (1, 2, 7, 33, 5, 5, 5, 2, 2),  # stride 2, padding 2: both phases from column 1
    (2, 3, 7, 1, 4, 3, 3, (3, 2), 1),  # input gradient: a phase with taps but no input column
    (2, 12, 8, 8, 60, 3, 3, 1, 1),  # channel tiles (8 x 8 outputs, AVX-512): a part-filled channel block
    (1, 4, 9, 24, 32, 5, 5, 1, 0),  # channel tiles: rows of 20 cut into tiles
    (2, 3, 9, 70, 8, 5, 5, 4, 2),  # stride 4: rows dealt to four phases, 18 phase columns (two vectors)
    (1, 2, 11, 13, 5, 3, 3, 4, 0),  # stride 4, no padding
]


def direct_geometry(case):
    _, _, h, w, _, kh, kw, stride, padding = case
    stride = stride if isinstance(stride, tuple) else (stride, stride)
    return ConvGeometry((kh, kw), stride, padding, (h, w), "test")


def run_direct(mod, g, x, wt, b, gy, relu=0):
    """The three direct-convolution primitives of the primitive module ``mod`` on NaN-filled
    outputs: ``(y, gx, gw, gb)``."""
    y = np.full((x.shape[0], wt.shape[0], g.oh, g.ow), np.nan, np.float32)
    mod.conv2d_direct_forward(x, wt, b, g.sh, g.sw, g.pt, g.pl, relu, y)
    gx = np.full(x.shape, np.nan, np.float32)
    mod.conv2d_direct_backward_data(gy, wt, g.sh, g.sw, g.pt, g.pl, gx)
    gw = np.full(wt.shape, np.nan, np.float32)
    gb = np.full(wt.shape[0], np.nan, np.float32)
    mod.conv2d_direct_backward_weight(gy, x, g.sh, g.sw, g.pt, g.pl, gw, gb)
    return y, gx, gw, gb


def tile_max(scale, m):
    """Each element of ``scale`` (N, C, H, W) replaced by the largest in its m x m output tile
    (a Winograd F(m x m, r x r) tile's outputs share one transformed window: their rounding is
    relative to the tile's magnitude)."""
    n, c, h, w = scale.shape
    th, tw = -(-h // m), -(-w // m)
    pad = np.zeros((n, c, th * m, tw * m))
    pad[:, :, :h, :w] = scale
    t = pad.reshape(n, c, th, m, tw, m).max(axis=(3, 5))
    return np.repeat(np.repeat(t, m, 2), m, 3)[:, :, :h, :w]


def direct_data(case, seed=0):
    n, c, h, w, oc, kh, kw, _, _ = case
    g = direct_geometry(case)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w), dtype=np.float32)
    wt = rng.standard_normal((oc, c, kh, kw), dtype=np.float32)
    b = rng.standard_normal(oc, dtype=np.float32)
    gy = rng.standard_normal((n, oc, g.oh, g.ow), dtype=np.float32)
    return g, x, wt, b, gy


# --------------------------------------------------------------------------- CIFAR-10

def cifar10_root():
    """The real CIFAR-10 directory ($FASTCNN_CIFAR10, else ``cifar10`` beside $FASTCNN_DATA's MNIST
    directory); skips the calling test when it is not there."""
    mnist = os.environ.get("FASTCNN_DATA")
    root = Path(os.environ.get("FASTCNN_CIFAR10") or (Path(mnist).parent / "cifar10" if mnist else "none"))
    if not (root / "data_batch_1.bin.gz").is_file():
        pytest.skip("real CIFAR-10 not found (set FASTCNN_CIFAR10)")
    return root


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_dir():
    """../shared/data/cifar10 beside the repository, or beside $FASTCNN_DATA (the MNIST dir), if it
    holds the partial test set: ``CIFAR`` (None when absent) for ``cifar`` and ``needs_cifar``."""
    cands = [Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"]
    if os.environ.get("FASTCNN_DATA"):
        cands.append(Path(os.environ["FASTCNN_DATA"]).resolve().parent / "cifar10")
    return next((c for c in cands if (c / "test_batch_first1000.bin.gz").is_file()), None)


CIFAR = _cifar_dir()
needs_cifar = pytest.mark.skipif(CIFAR is None, reason="CIFAR-10 binary batches not found")


def cifar(split, limit=None):
    kw = {"test_file": "test_batch_first1000.bin.gz"} if split == "test" else {}
    with warnings.catch_warnings():  # (the partial test file is announced with a UserWarning)
        warnings.simplefilter("ignore", UserWarning)
        x, y = data.load_cifar10(str(CIFAR), split, **kw)
    return x[:limit], y[:limit]


def small_cifar_net(seed=0):
    rng = np.random.default_rng(seed)
    return fastcnn.Sequential(Conv2D(3, 16, 3, padding="same", rng=rng), ReLU(), MaxPool2D(2),
                              Conv2D(16, 32, 3, padding="same", rng=rng), ReLU(), MaxPool2D(2),
                              Flatten(), Dense(32 * 8 * 8, 10, rng=rng))


@functools.lru_cache(maxsize=1)
def trained_small_cifar():
    """A small CNN trained 2 epochs on the first 2,000 CIFAR-10 training images (~4 s):
    ``(model, preprocess record, preprocess info)``; normalisation from those images."""
    train_x, train_y = cifar("train", 2000)
    scaled = train_x.astype(np.float64) / 255
    prep = {"dataset": "cifar10", "input_shape": [3, 32, 32], "mean": scaled.mean(axis=(0, 2, 3)).tolist(),
            "std": scaled.std(axis=(0, 2, 3)).tolist(), "classes": CIFAR_CLASSES}
    info = preprocess_info({"preprocess": prep})
    model = small_cifar_net()
    opt, loss_fn = optim.Adam(model.parameters(), 1e-3), losses.SoftmaxCrossEntropy()
    xs = normalize(train_x, info)
    for epoch in range(2):
        for idx in np.random.default_rng([0, epoch]).permutation(2000).reshape(-1, 50):
            opt.zero_grad()
            loss_fn.forward(model.forward(xs[idx]), train_y[idx])
            model.backward(loss_fn.backward())
            opt.step()
    return model.eval(), prep, info


# --------------------------------------------------------------------------- graph models and their torch twins

def smooth_graph(seed=0):
    """Two inputs, a tensor read by three nodes, Add / Multiply / Concatenate, two outputs.
    No ReLU or max pooling, so central differences see no kinks."""
    rng = np.random.default_rng(seed)
    a = Input((2, 6, 6), name="a")
    b = Input((2, 6, 6), name="b")
    c1 = Conv2D(2, 3, 3, padding="same", rng=rng)(a)               # read by three nodes below
    c2 = Conv2D(2, 3, 1, rng=rng)(b)
    s = Add()([c1, c2])
    m = Multiply()([c1, s])
    cat = Concatenate()([m, c1, AvgPool2D(3, 1, padding=1)(c1)])    # 9 channels
    bn = BatchNorm2D(9)(cat)
    head = Dense(9 * 9, 4, rng=rng)(Flatten()(AvgPool2D(2)(bn)))
    side = Flatten()(Conv2D(3, 1, 6, rng=rng)(s))                 # second output (N, 1)
    model = Model([a, b], [head, side])
    # non-trivial affine BatchNorm parameters
    model.nodes[[type(n.layer) for n in model.nodes].index(BatchNorm2D)].layer.weight.data[:] = \
        rng.uniform(0.5, 1.5, 9).astype(np.float32)
    return model


def inception(rng):
    x = Input((4, 9, 9))
    b1 = ReLU()(BatchNorm2D(4)(Conv2D(4, 4, 1, rng=rng)(x, name="b1_conv"), name="b1_bn"))
    b2 = ReLU()(Conv2D(4, 3, 1, rng=rng)(x, name="b2_reduce"))
    b2 = ReLU()(Conv2D(3, 5, 3, padding=1, rng=rng)(b2, name="b2_conv"))
    b3 = ReLU()(Conv2D(4, 2, 1, rng=rng)(x, name="b3_reduce"))
    b3 = ReLU()(Conv2D(2, 3, 5, padding="same", rng=rng)(b3, name="b3_conv"))
    b4 = ReLU()(Conv2D(4, 2, 1, rng=rng)(MaxPool2D(3, 1, padding=1)(x), name="b4_proj"))
    cat = Concatenate()([b1, b2, b3, b4])                                  # 14 channels
    short = Conv2D(4, 14, 1, bias=False, rng=rng)(x, name="shortcut")
    y = ReLU()(Add()([cat, short]))
    y = Dense(14 * 9, 5, rng=rng)(Flatten()(AvgPool2D(3)(y)), name="fc")
    return Model(x, y)


def torch_inception():
    import torch
    from torch import nn

    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.b1_conv, self.b1_bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
            self.b2_reduce, self.b2_conv = nn.Conv2d(4, 3, 1), nn.Conv2d(3, 5, 3, padding=1)
            self.b3_reduce, self.b3_conv = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 3, 5, padding=2)
            self.b4_proj = nn.Conv2d(4, 2, 1)
            self.shortcut = nn.Conv2d(4, 14, 1, bias=False)
            self.fc = nn.Linear(14 * 9, 5)

        def forward(self, x):
            r = torch.relu
            b1 = r(self.b1_bn(self.b1_conv(x)))
            b2 = r(self.b2_conv(r(self.b2_reduce(x))))
            b3 = r(self.b3_conv(r(self.b3_reduce(x))))
            b4 = r(self.b4_proj(nn.functional.max_pool2d(x, 3, 1, 1)))
            y = r(torch.cat([b1, b2, b3, b4], 1) + self.shortcut(x))
            return self.fc(torch.flatten(nn.functional.avg_pool2d(y, 3), 1))

    return Inception()


def densenet(rng, growth=4):
    x = Input((3, 8, 8))
    feats = Conv2D(3, 6, 3, padding=1, rng=rng)(x, name="stem")
    ch = 6
    for i in range(1, 4):
        h = ReLU()(BatchNorm2D(ch)(feats, name=f"bn{i}"))
        h = Conv2D(ch, growth, 3, padding=1, rng=rng)(h, name=f"conv{i}")
        feats = Concatenate()([feats, h])
        ch += growth
    h = ReLU()(BatchNorm2D(ch)(feats, name="bn_t"))
    h = AvgPool2D(2)(Conv2D(ch, 8, 1, rng=rng)(h, name="conv_t"))
    return Model(x, Dense(8 * 16, 10, rng=rng)(Flatten()(h), name="fc"))


def torch_densenet(growth=4):
    import torch
    from torch import nn

    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 3, padding=1)
            ch = 6
            for i in range(1, 4):
                setattr(self, f"bn{i}", nn.BatchNorm2d(ch))
                setattr(self, f"conv{i}", nn.Conv2d(ch, growth, 3, padding=1))
                ch += growth
            self.bn_t, self.conv_t, self.fc = nn.BatchNorm2d(ch), nn.Conv2d(ch, 8, 1), nn.Linear(8 * 16, 10)

        def forward(self, x):
            f = self.stem(x)
            for i in range(1, 4):
                h = getattr(self, f"conv{i}")(torch.relu(getattr(self, f"bn{i}")(f)))
                f = torch.cat([f, h], 1)
            h = nn.functional.avg_pool2d(self.conv_t(torch.relu(self.bn_t(f))), 2)
            return self.fc(torch.flatten(h, 1))

    return Dense()


#: (batch, in features, out features) for :func:`check_dense_rows`: fewer than 16 inner
#: indices, not a multiple of 16, batch 1 and the largest batches of the rows path (forward 8,
#: gradients :data:`ROWS_GRAD_BATCH`), and one whose weights are split across threads.
DENSE_ROWS_SHAPES = [(1, 1, 1), (1, 15, 3), (1, 17, 6), (2, 1352, 10), (8, 100, 9), (1, 3000, 70)]
#: Batches beyond ``auto``'s rows path, for the path forced by ``fastcnn.config(dense="rows")``.
DENSE_ROWS_FORCED_SHAPES = [(9, 40, 5), (64, 130, 17)]
#: The largest batch whose dense gradients run the rows path (``DENSE_ROWS_GRAD_BATCH`` of
#: fastcnn/_config.py; test_config.py checks that they agree).
ROWS_GRAD_BATCH = 2


def check_dense_rows(dense, shape, fused, strategy="auto"):
    """Assert that the dense kernels of module ``dense`` run a batch of the rows path as
    src_ext/rows_kern.h defines it (:func:`naive.dot16`; the gradients :func:`naive.fma_chain`;
    ``fused``: FMA, else a multiply and an add), the same bytes at 1 and 2 threads, under the
    ``fastcnn.config(dense=strategy)`` setting (``"rows"``: the gradients too at any batch)."""
    import naive

    n, k_in, k_out = shape
    rng = np.random.default_rng(sum(shape))
    x, w = rng.standard_normal((n, k_in), dtype=np.float32), rng.standard_normal((k_out, k_in), dtype=np.float32)
    b, gy = rng.standard_normal(k_out, dtype=np.float32), rng.standard_normal((n, k_out), dtype=np.float32)
    outs = []
    before = fastcnn.get_num_threads()
    try:
        with fastcnn.config(dense=strategy):
            for t in (1, 2):
                fastcnn.set_num_threads(t)
                y, gw, gb, gx = (np.full(s, np.nan, np.float32) for s in ((n, k_out), w.shape, (k_out,), x.shape))
                dense.linear_forward(x, w, b, 2, y)
                dense.linear_backward(gy, x, w, True, 2, np.empty((k_out, n), np.float32), gw, gb, gx)
                outs.append([a.tobytes() for a in (y, gw, gb, gx)])
    finally:
        fastcnn.set_num_threads(before)
    assert outs[0] == outs[1], "the rows path's bytes depend on the thread count"
    y, gw, gb, gx = outs[0]
    assert y == (naive.dot16(x, w, fused) + b).tobytes()
    if strategy == "rows" or n <= ROWS_GRAD_BATCH:
        assert gw == naive.fma_chain(gy.T, x, fused).tobytes()
        assert gx == naive.fma_chain(gy, w, fused).tobytes()
        assert gb == gy.sum(axis=0, dtype=np.float64).astype(np.float32).tobytes()


#: (batch, in features, out features, blocks) for :func:`check_dense_fma_chain`: odd sizes,
#: batch 1, and batches of 64 and 128, whose forward runs on the tiled GEMM too (the others'
#: on SciPy's SGEMM: ``DENSE_TILED_BATCH`` of fastcnn/_config.py).
DENSE_CHAIN_SHAPES = [(1, 1, 1, 1), (5, 300, 17, 2), (20, 200, 70, 3), (64, 9, 131, 2), (128, 150, 33, 2),
                      (100, 208, 13, 2)]


def check_dense_fma_chain(dense, shape):
    """Assert that the dense kernels of module ``dense`` (``linear_forward``/``_backward``) on
    the GEMM path (``fastcnn.config(dense="gemm")``) give every output as the FMA chain over
    the inner index in order (:func:`naive.fma_chain`): the gradients always, the forward for
    batches of a multiple of 64.  ``shape``: (batch, in features, out features, blocks)."""
    import naive

    n, k_in, k_out, nblocks = shape
    rng = np.random.default_rng(sum(shape))
    x, w = rng.standard_normal((n, k_in), dtype=np.float32), rng.standard_normal((k_out, k_in), dtype=np.float32)
    b, gy = rng.standard_normal(k_out, dtype=np.float32), rng.standard_normal((n, k_out), dtype=np.float32)
    y, gw, gb, gx = (np.full(s, np.nan, np.float32) for s in ((n, k_out), w.shape, (k_out,), x.shape))
    with fastcnn.config(dense="gemm"):
        dense.linear_forward(x, w, b, nblocks, y)
        dense.linear_backward(gy, x, w, True, nblocks, np.empty((k_out, n), np.float32), gw, gb, gx)
    if n % 64 == 0:
        assert y.tobytes() == (naive.fma_chain(x, w.T) + b).tobytes()
    assert gw.tobytes() == naive.fma_chain(gy.T, x).tobytes()
    # a 64-byte aligned weight gradient (a Parameter's): stored past the caches when one block
    # of steps covers the batch and its rows stay aligned; the same bytes
    raw = np.full(w.size + 16, np.nan, np.float32)
    off = (-raw.ctypes.data % 64) // 4
    ga = raw[off:off + w.size].reshape(w.shape)
    with fastcnn.config(dense="gemm"):
        dense.linear_backward(gy, x, w, True, nblocks, np.empty((k_out, n), np.float32), ga, gb, gx)
    assert ga.tobytes() == gw.tobytes()
    assert gx.tobytes() == naive.fma_chain(gy, w).tobytes()
    assert gb.tobytes() == gy.sum(axis=0, dtype=np.float64).astype(np.float32).tobytes()
