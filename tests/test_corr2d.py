"""fastcnn.functional.corr2d: the tutorials' single-channel cross-correlation."""
import doctest

import numpy as np
import pytest

from fastcnn import functional as F

import naive
from conftest import assert_close


def test_worked_example_and_docstring():
    y = F.corr2d(np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]], np.float32), np.array([[0, 1], [2, 3]], np.float32))
    assert y.dtype == np.float32 and y.tolist() == [[19, 25], [37, 43]]
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(F.corr2d, "corr2d"):
        runner.run(test)
    assert runner.failures == 0 and runner.tries == 3


def test_edge_detector_of_the_tutorial():
    x = np.ones((6, 8), np.float32)
    x[:, 2:6] = 0
    y = F.corr2d(x, np.array([[1.0, -1.0]], np.float32))
    expected = np.zeros((6, 7))
    expected[:, 1], expected[:, 5] = 1, -1  # white->black edge 1, black->white edge -1
    assert y.tolist() == expected.tolist()
    assert F.corr2d(x.T, np.array([[1.0, -1.0]], np.float32)).tolist() == np.zeros((8, 5)).tolist()


@pytest.mark.parametrize("shape,kshape", [((7, 9), (3, 2)), ((1, 5), (1, 5)), ((4, 4), (1, 1)), ((10, 3), (4, 3))])
def test_equals_loops_and_conv2d(backend, shape, kshape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    k = rng.standard_normal(kshape).astype(np.float32)
    y = F.corr2d(x, k)
    assert_close(y, naive.corr2d(x.astype(np.float64), k.astype(np.float64)), rtol=1e-5, what="corr2d")
    # the same numbers as the 4-D primitive (same kernels, so bit-identical)
    assert np.array_equal(y, F.conv2d(x[None, None], k[None, None])[0, 0])


def test_bad_input():
    with pytest.raises(ValueError, match="corr2d: input must be 2-D"):
        F.corr2d(np.ones((1, 3, 3), np.float32), np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="kernel"):
        F.corr2d(np.ones((3, 3), np.float32), np.ones((2, 2), np.int64))
    with pytest.raises(ValueError, match="larger"):
        F.corr2d(np.ones((2, 2), np.float32), np.ones((3, 3), np.float32))
