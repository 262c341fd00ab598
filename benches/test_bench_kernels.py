"""One benchmark per kernel x implementation at the shapes of the seed MNIST networks."""
import numpy as np
import pytest

from fastcnn import functional as F

from utils import BACKENDS, HAVE_TORCH, rng

IMPLS = BACKENDS + (("torch",) if HAVE_TORCH else ())

CONVS = {
    # name: (input shape, weight shape, padding, needs input grad)
    "lenet-conv1 128x1x28x28->32 k5 same": ((128, 1, 28, 28), (32, 1, 5, 5), 2, False),
    "lenet-conv2 128x32x14x14->64 k5 same": ((128, 32, 14, 14), (64, 32, 5, 5), 2, True),
    "bn-conv2 100x16x14x14->32 k5 p2": ((100, 16, 14, 14), (32, 16, 5, 5), 2, True),
}


def _conv_data(case):
    xs, ws, pad, need_gx = CONVS[case]
    r = rng()
    x = r.standard_normal(xs, dtype=np.float32)
    w = r.standard_normal(ws, dtype=np.float32) * 0.1
    b = r.standard_normal(ws[0], dtype=np.float32)
    return x, w, b, pad, need_gx


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CONVS))
def test_conv_forward(benchmark, use_backend, impl, case):
    x, w, b, pad, _ = _conv_data(case)
    benchmark.group = f"conv forward {case}"
    use_backend(impl)
    if impl == "torch":
        import torch

        tx, tw, tb = map(torch.tensor, (x, w, b))
        with torch.no_grad():
            benchmark(torch.nn.functional.conv2d, tx, tw, tb, 1, pad)
    else:
        ws = F.Workspace()
        benchmark(F.conv2d, x, w, b, 1, pad, ws=ws)
    benchmark.extra_info["gflop"] = 2 * np.prod(x.shape) / x.shape[1] * np.prod(w.shape) / 1e9


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CONVS))
def test_conv_backward(benchmark, use_backend, impl, case):
    x, w, b, pad, need_gx = _conv_data(case)
    benchmark.group = f"conv backward {case}"
    use_backend(impl)
    gy = rng(1).standard_normal((x.shape[0], w.shape[0]) + x.shape[2:], dtype=np.float32)
    if impl == "torch":
        import torch

        tx, tw, tgy = map(torch.tensor, (x, w, gy))
        mask = [need_gx, True, True]
        with torch.no_grad():
            benchmark(torch.ops.aten.convolution_backward, tgy, tx, tw, [w.shape[0]], [1, 1], [pad, pad], [1, 1],
                      False, [0, 0], 1, mask)
    else:
        ws = F.Workspace()
        benchmark(F.conv2d_backward, gy, x, w, 1, pad, input_grad=need_gx, ws=ws)


POOLS = {"128x32x28x28 2x2": (128, 32, 28, 28), "128x64x14x14 2x2": (128, 64, 14, 14)}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(POOLS))
def test_maxpool_forward_backward(benchmark, use_backend, impl, case):
    x = rng().standard_normal(POOLS[case], dtype=np.float32)
    benchmark.group = f"maxpool forward+backward {case}"
    use_backend(impl)
    if impl == "torch":
        import torch

        tx = torch.tensor(x, requires_grad=True)

        def run():
            y = torch.nn.functional.max_pool2d(tx, 2)
            y.backward(torch.ones_like(y))
            tx.grad = None

        benchmark(run)
    else:
        def run():
            y, idx = F.max_pool2d(x, 2, return_indices=True)
            return F.max_pool2d_backward(y, idx, x.shape)

        benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
def test_relu_forward_backward(benchmark, use_backend, impl):
    x = rng().standard_normal((128, 32, 28, 28), dtype=np.float32)
    benchmark.group = "relu forward+backward 128x32x28x28"
    use_backend(impl)
    if impl == "torch":
        import torch

        tx = torch.tensor(x)

        def run():
            y = torch.relu(tx)
            return torch.ops.aten.threshold_backward(y, y, 0)

        benchmark(run)
    else:
        benchmark(lambda: F.relu_backward(x, F.relu(x)))


@pytest.mark.parametrize("impl", IMPLS)
def test_softmax_xent_forward_backward(benchmark, use_backend, impl):
    r = rng()
    logits = r.standard_normal((128, 10), dtype=np.float32)
    labels = r.integers(0, 10, 128)
    benchmark.group = "softmax cross-entropy forward+backward 128x10"
    use_backend(impl)
    if impl == "torch":
        import torch

        tl, ty = torch.tensor(logits, requires_grad=True), torch.tensor(labels)

        def run():
            torch.nn.functional.cross_entropy(tl, ty).backward()
            tl.grad = None

        benchmark(run)
    else:
        def run():
            _, p = F.softmax_cross_entropy(logits, labels)
            return F.softmax_cross_entropy_backward(p, labels)

        benchmark(run)
