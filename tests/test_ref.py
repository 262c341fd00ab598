"""The NumPy reference primitives (``fastcnn._ref``, the oracle of every compiled kernel)
against naive float64 loops and central finite differences."""
import numpy as np
import pytest

from fastcnn import _ref
from fastcnn import functional as F
from fastcnn.functional import ConvGeometry

import naive
from utils import DIRECT_CASES, direct_data, numgrad


@pytest.mark.parametrize("stride,padding,kernel,size", [
    (1, 0, 3, (5, 6)), (2, "same", 3, (7, 5)), (2, "same", 2, (6, 7)), (1, (2, 1), 5, (4, 5)), (3, 1, 1, (5, 5)),
])
def test_conv2d_reference_backward_finite_differences(stride, padding, kernel, size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3) + size)
    w = rng.standard_normal((4, 3, kernel, kernel))
    b = rng.standard_normal(4)
    g = ConvGeometry((kernel, kernel), (stride, stride), padding, size, "test")
    y = F._conv2d_forward(_ref, x, w, b, g, None)
    r = rng.standard_normal(y.shape)  # loss = sum(r * y)
    gx, gw, gb = F._conv2d_backward(_ref, r, x, w, g, True, True, None)

    def loss():
        return float(np.sum(r * F._conv2d_forward(_ref, x, w, b, g, None)))

    for got, arr in ((gx, x), (gw, w), (gb, b)):
        np.testing.assert_allclose(got, numgrad(loss, arr), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel,stride,padding,size", [(2, 2, 0, (6, 6)), (3, 2, "same", (7, 6)), (3, 1, 1, (5, 4)),
                                                          (2, 1, 0, (3, 3))])
def test_pool_reference_backward_finite_differences(kernel, stride, padding, size):
    rng = np.random.default_rng(1)
    x = rng.permutation(2 * 3 * size[0] * size[1]).reshape((2, 3) + size).astype(np.float64)  # distinct: no ties
    g = ConvGeometry((kernel, kernel), (stride, stride), padding, size, "test")
    shape = (2, 3, g.oh, g.ow)
    r = rng.standard_normal(shape)
    xs = x / x.size  # O(1) values keep the central differences accurate
    for include in (True, False):
        def avg():
            y = np.empty(shape)
            _ref.avgpool2d_forward(xs, *g.args, include, y)
            return float(np.sum(r * y))
        gx = np.empty_like(x)
        _ref.avgpool2d_backward(r, *g.args, include, gx)
        np.testing.assert_allclose(gx, numgrad(avg, xs), rtol=1e-6, atol=1e-8)
    y, idx = np.empty(shape), np.empty(shape, np.int32)

    def mx():
        _ref.maxpool2d_forward(x, *g.args, y, idx)
        return float(np.sum(r * y))

    num = numgrad(mx, x, eps=1e-3)  # distinct integers 1 apart: eps well inside the gaps
    mx()
    gx = np.empty_like(x)
    _ref.maxpool2d_backward(r, idx, gx)
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-7)


def test_relu_and_softmax_reference_backward_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 7))
    x[np.abs(x) < 1e-3] = 0.5
    r = rng.standard_normal(x.shape)

    def relu_loss():
        y = np.empty_like(x)
        _ref.relu_forward(x, y)
        return float(np.sum(r * y))

    y = np.empty_like(x)
    _ref.relu_forward(x, y)
    gx = np.empty_like(x)
    _ref.relu_backward(r, y, gx)
    np.testing.assert_allclose(gx, numgrad(relu_loss, x), rtol=1e-6, atol=1e-8)

    labels = np.array([0, 6, 3, 3])

    def xent():
        p, losses = np.empty_like(x), np.empty(4)
        _ref.softmax_xent_forward(x, labels, p, losses)
        return float(losses.mean())

    p, losses = np.empty_like(x), np.empty(4)
    _ref.softmax_xent_forward(x, labels, p, losses)
    gx = np.empty_like(x)
    _ref.softmax_xent_backward(p, labels, gx)
    np.testing.assert_allclose(gx, numgrad(xent, x), rtol=1e-6, atol=1e-8)
    loss, g = naive.softmax_xent(x, labels)
    assert abs(xent() - loss) < 1e-12
    np.testing.assert_allclose(gx, g, rtol=1e-12)


# ----------------------------------------------------------------------------- direct convolution against naive loops

@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_reference_matches_naive_loops(case):
    """The reference primitives (the contract) against naive float64 loops."""
    g, x, wt, b, gy = direct_data(case)
    x, wt, b, gy = (a.astype(np.float64) for a in (x, wt, b, gy))
    pads = (g.pt, g.pb, g.pl, g.pr)
    y, gx, gw, gb = (np.empty(a.shape) for a in (gy, x, wt, b))
    _ref.conv2d_direct_forward(x, wt, b, g.sh, g.sw, g.pt, g.pl, 0, y)
    _ref.conv2d_direct_backward_data(gy, wt, g.sh, g.sw, g.pt, g.pl, gx)
    _ref.conv2d_direct_backward_weight(gy, x, g.sh, g.sw, g.pt, g.pl, gw, gb)
    want_y = naive.conv2d(x, wt, b, (g.sh, g.sw), pads)
    want_gx, want_gw, want_gb = naive.conv2d_backward(gy, x, wt, (g.sh, g.sw), pads)
    for got, want in ((y, want_y), (gx, want_gx), (gw, want_gw), (gb, want_gb)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    relu = np.empty(y.shape)
    _ref.conv2d_direct_forward(x, wt, b, g.sh, g.sw, g.pt, g.pl, 1, relu)
    np.testing.assert_array_equal(relu, np.maximum(y, 0))
