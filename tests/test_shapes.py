"""fastcnn._shapes: the argument checks every public op runs first; their fast paths must
accept exactly what the full checks accept."""
import numpy as np
import pytest

from fastcnn._shapes import as_float32, as_labels, is_float32_array


def test_as_float32_passes_ready_arrays_through_unchanged():
    x = np.zeros((2, 3), np.float32)
    assert as_float32(x, "x", 2) is x
    assert as_float32(x, "x", (2, 3)) is x
    ro = np.zeros((2, 3), np.float32)
    ro.flags.writeable = False  # (not the fast path's test, still no copy)
    assert as_float32(ro, "x", 2) is ro and is_float32_array(ro)


def test_as_float32_converts_what_the_fast_path_refuses():
    be = np.arange(6, dtype=">f4").reshape(2, 3)  # float32, non-native byte order
    out = as_float32(be, "x", 2)
    assert out.dtype == np.float32 and out.dtype.isnative and np.array_equal(out, be)
    assert not is_float32_array(np.zeros((4, 4), np.float32)[:, ::2])
    view = as_float32(np.arange(16, dtype=np.float32).reshape(4, 4)[:, ::2], "x", 2)
    assert view.flags.c_contiguous and view.tolist() == [[0, 2], [4, 6], [8, 10], [12, 14]]
    with pytest.raises(ValueError, match=r"op: x must be 3-D, got shape \(2, 3\) \(2-D\)"):
        as_float32(np.zeros((2, 3), np.float32), "x", 3, "op")
    with pytest.raises(TypeError, match="op: x must be a floating array"):
        as_float32(np.zeros(3, np.int32), "x", 1, "op")


@pytest.mark.parametrize("n", [1, 5, 65])
def test_as_labels_range_checked_on_every_path(n):
    good = np.arange(n, dtype=np.int64) % 10
    assert as_labels(good, n, 10) is good
    assert as_labels(good.astype(">i8"), n, 10).tolist() == good.tolist()
    bad = good.copy()
    bad[-1] = 10
    with pytest.raises(ValueError, match=r"op: labels must lie in \[0, 10\), got range \[\d+, 10\]"):
        as_labels(bad, n, 10, "op")
    bad[-1] = -1
    with pytest.raises(ValueError, match=r"got range \[-1, -?\d+\]"):
        as_labels(bad, n, 10, "op")
