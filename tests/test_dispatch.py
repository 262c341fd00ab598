"""The convolution strategy (``fastcnn._dispatch``): the public setting ``fastcnn.config``,
the plan per shape, the chunks of the chunked path."""
import numpy as np
import pytest

import fastcnn
from fastcnn import _backend, _dispatch
from fastcnn import functional as F

from utils import assert_close

REF = _backend.ops("numpy")  # the numpy backend's primitives: the reference, fastcnn._ref


def test_per_image_path_choice(compiled, monkeypatch, request):
    """Auto mode, on a shape the direct kernels do not take (OC < 8): per image for the
    compiled backends when SciPy's BLAS is single-threaded, but never when one image's
    unfolded matrix exceeds CHUNK_BYTES (memory per thread)."""
    k = _backend.ops()
    request.addfinalizer(fastcnn.config(conv="auto").__exit__)  # (restored after the test)
    single = fastcnn._threads.gemm_blas_single()
    assert _dispatch.conv_plan(k, 3, 4, 5, 3, 3, 9, 9, 4) == ("per_image" if single else "chunked")
    big = _dispatch.CHUNK_BYTES // (4 * 9 * 4) + 1  # pixels whose 4x3x3 columns exceed it
    assert _dispatch.conv_plan(k, 3, 4, 5, 3, 3, big, 1, 4) == "chunked"
    assert _dispatch.conv_plan(REF, 3, 4, 5, 3, 3, 9, 9, 4) == "chunked"
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 9, 9), dtype=np.float32)
    w = rng.standard_normal((5, 4, 3, 3), dtype=np.float32)
    want = F.conv2d(x, w, None, 1, 1)
    monkeypatch.setattr(_dispatch, "CHUNK_BYTES", 4 * 36 * 81 - 1)  # one image's columns no longer fit
    assert _dispatch.conv_plan(k, 3, 4, 5, 3, 3, 9, 9, 4) == "chunked"
    assert_close(F.conv2d(x, w, None, 1, 1), want, 1e-6)


def test_conv_chunking_matches_single_pass(backend, monkeypatch, request):
    """Several im2col chunks (uneven last one) give the single-chunk result."""
    request.addfinalizer(fastcnn.config(conv="chunked").__exit__)  # (restored after the test)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((7, 3, 9, 8), dtype=np.float32)
    w = rng.standard_normal((5, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(5, dtype=np.float32)
    gy = rng.standard_normal((7, 5, 5, 4), dtype=np.float32)
    whole = (F.conv2d(x, w, b, 2, "same"),) + F.conv2d_backward(gy, x, w, 2, "same")
    per_image = 27 * 20 * 4
    monkeypatch.setattr(_dispatch, "CHUNK_BYTES", 3 * per_image)  # chunks of 3, 3, 1 images
    assert _dispatch.chunks(7, 27 * 20, 4) == [(0, 3), (3, 6), (6, 7)]
    chunked = (F.conv2d(x, w, b, 2, "same"),) + F.conv2d_backward(gy, x, w, 2, "same")
    for a, c in zip(whole, chunked):
        assert_close(c, a, 1e-6)


# ----------------------------------------------------------------------------- the setting and the plan

def test_config_sets_restores_and_validates():
    start = fastcnn.get_config()
    assert start["conv"] in _dispatch.CONV_STRATEGIES
    with fastcnn.config(conv="direct") as cfg:
        assert fastcnn.get_config() == {"conv": "direct", "winograd_tile": start["winograd_tile"],
                                        "fuse": start["fuse"], "fold_bn": start["fold_bn"],
                                        "dense": start["dense"]}
        assert "direct" in repr(cfg)
        with fastcnn.config(conv="chunked"):
            assert fastcnn.get_config()["conv"] == "chunked"
        assert fastcnn.get_config()["conv"] == "direct"
    assert fastcnn.get_config() == start
    for bad in ("fast", "", ["auto"], 1):
        with pytest.raises(ValueError, match="conv must be one of"):
            fastcnn.config(conv=bad)
    assert fastcnn.get_config() == start
    fastcnn.config()  # no change
    assert fastcnn.get_config() == start
    assert start["winograd_tile"] == "auto"  # the default
    for tile in (2, 4):
        with fastcnn.config(winograd_tile=tile):
            assert fastcnn.get_config() == dict(start, winograd_tile=tile)
        assert fastcnn.get_config() == start
    for bad in (3, "4", 4.0, True, None.__class__):
        with pytest.raises(ValueError, match="winograd_tile must be one of 'auto', 2, 4"):
            fastcnn.config(winograd_tile=bad)
    assert fastcnn.get_config() == start
    for flag in ("fuse", "fold_bn"):
        assert start[flag] is True  # the default
        with fastcnn.config(**{flag: False}):
            assert fastcnn.get_config() == dict(start, **{flag: False})
        assert fastcnn.get_config() == start
        for bad in ("yes", 1, None.__class__):
            with pytest.raises(TypeError, match=f"{flag} must be True or False"):
                fastcnn.config(**{flag: bad})
        assert fastcnn.get_config() == start


def test_dense_setting_chooses_the_rows_path():
    start = fastcnn.get_config()
    assert start["dense"] == "auto"  # the default: the rows path for one image, not for 1000
    small, large = 1, 1000
    assert _dispatch.dense_rows(small) and _dispatch.dense_rows(small, True)
    assert not _dispatch.dense_rows(large) and not _dispatch.dense_rows(large, True)
    with fastcnn.config(dense="rows"):
        assert fastcnn.get_config() == dict(start, dense="rows")
        assert _dispatch.dense_rows(large) and _dispatch.dense_rows(large, True)
    with fastcnn.config(dense="gemm"):
        assert not _dispatch.dense_rows(1) and not _dispatch.dense_rows(1, True)
    assert fastcnn.get_config() == start
    for bad in ("blas", "", ["auto"], 1):
        with pytest.raises(ValueError, match="dense must be one of 'auto', 'rows', 'gemm'"):
            fastcnn.config(dense=bad)
    assert fastcnn.get_config() == start


def test_conv_plan_rules():
    with fastcnn.config(conv="auto"):
        if "cython" in fastcnn.available_backends():
            k = _backend.ops("cython")
            assert _dispatch.conv_plan(k, 100, 8, 32, 5, 5, 14, 14, 4) == "direct"
            assert _dispatch.conv_plan(k, 1, 16, 32, 5, 5, 14, 14, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 5, 5, 14, 14, 8) not in ("direct", "winograd")  # float64
            assert _dispatch.conv_plan(k, 100, 8, 32, 5, 5, 14, 14, 4, backward=True) == "direct"
            # first layers: direct both ways when only the weight gradient is wanted
            assert _dispatch.conv_plan(k, 100, 1, 32, 5, 5, 28, 28, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 1, 32, 5, 5, 28, 28, 4, backward=True) != "direct"
            assert _dispatch.conv_plan(k, 100, 3, 16, 3, 3, 32, 32, 4, backward=True, input_grad=False) == "direct"
            assert _dispatch.conv_plan(k, 1, 1, 8, 3, 3, 26, 26, 4, backward=True, input_grad=False) == "single"
            # the ResNet's stride-2 shapes: direct both ways (stride 1: test_winograd_plan_rules)
            assert _dispatch.conv_plan(k, 100, 16, 32, 3, 3, 16, 16, 4, True, strided=True) == "direct"
            assert _dispatch.conv_plan(k, 100, 32, 64, 3, 3, 8, 8, 4, True, strided=True) == "direct"
            assert _dispatch.conv_plan(k, 100, 32, 64, 3, 3, 8, 8, 4, strided=True) == "direct"
            # 1x1 convolutions (the ResNet's shortcuts): one SGEMM per image
            for backward in (False, True):
                assert _dispatch.conv_plan(k, 100, 16, 32, 1, 1, 16, 16, 4, backward) == "per_image"
        if "numba" in fastcnn.available_backends():
            k = _backend.ops("numba")
            assert _dispatch.conv_plan(k, 100, 8, 16, 5, 5, 14, 14, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 8, 16, 5, 5, 14, 14, 4, backward=True) == "direct"
            assert _dispatch.conv_plan(k, 100, 3, 16, 3, 3, 32, 32, 4) == "direct"
            # first layers of one channel: direct forward of a batch, one GEMM for one image
            # unless pooled in the same call; their weight gradients of a batch: direct (as
            # Cython's), of one image: one GEMM; an input gradient of 1-3 channels: im2col;
            # strided backward: direct
            assert _dispatch.conv_plan(k, 100, 1, 32, 5, 5, 28, 28, 4) == "direct"
            assert _dispatch.conv_plan(k, 1, 1, 32, 5, 5, 28, 28, 4) == "single"
            assert _dispatch.conv_plan(k, 1, 1, 32, 5, 5, 28, 28, 4, pooled=True) == "direct"
            assert _dispatch.conv_plan(k, 100, 3, 16, 3, 3, 32, 32, 4, True, False) == "direct"
            assert _dispatch.conv_plan(k, 100, 1, 32, 5, 5, 28, 28, 4, True, False) == "direct"
            assert _dispatch.conv_plan(k, 1, 3, 16, 3, 3, 32, 32, 4, True, False) == "single"
            assert _dispatch.conv_plan(k, 100, 1, 32, 5, 5, 28, 28, 4, backward=True) != "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 3, 3, 16, 16, 4, strided=True) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 3, 3, 16, 16, 4, True, strided=True) == "direct"
            assert _dispatch.conv_plan(k, 100, 32, 64, 3, 3, 8, 8, 4, True, strided=True) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 1, 1, 16, 16, 4) == "per_image"
        # the numpy backend keeps its reference path
        assert _dispatch.conv_plan(REF, 100, 16, 32, 5, 5, 14, 14, 4) == "chunked"
        assert _dispatch.conv_plan(REF, 1, 16, 32, 5, 5, 14, 14, 4) == "single"
    for conv in ("direct", "per_image", "chunked"):
        with fastcnn.config(conv=conv):
            assert _dispatch.conv_plan(REF, 5, 3, 4, 5, 5, 8, 8, 4) == conv
            assert _dispatch.conv_plan(REF, 1, 3, 4, 5, 5, 8, 8, 4) == ("direct" if conv == "direct" else "single")


def test_winograd_group_rule():
    """A Winograd group takes at least ``WINOGRAD_TILES`` tiles' images, and more, within
    ``WINOGRAD_GROUP_BYTES`` of packed input, when fewer of its vectors' lanes stay empty
    (the fewest images of the least waste); never more images than the batch, never none."""
    group = _dispatch.winograd_group
    assert group(100, 64, 1000, 16) == 2  # 32x32 F(4x4): 128 tiles fill 8 vectors
    assert group(100, 4, 1000, 16) == 32
    # 7x7 tiles (14x14 F(2x2)): 3 images leave 13 of 160 lanes empty; 16 images none
    assert group(1000, 49, 1000, 16) == 16
    assert group(1000, 49, 1000, 8) == 8
    assert group(12, 49, 1000, 16) == 12  # (12 images: 4 of 592 lanes empty)
    assert group(1000, 49, 10 ** 12, 16) == 3  # (no room for more)
    assert group(5, 49, 1000, 16) == 5
    assert group(2, 49, 1000, 16) == 2
    assert group(1, 1, 10 ** 12, 16) == 1
    assert group(0, 49, 1000, 16) == 1


@pytest.mark.parametrize("n,group,threads", [(128, 12, 2), (128, 12, 1), (100, 2, 2), (1, 12, 2), (3, 12, 2),
                                              (5, 1, 2), (7, 3, 4), (13, 4, 3)])
def test_winograd_units_are_near_equal_runs_within_the_group(n, group, threads):
    """The units a Winograd kernel's threads take: near-equal runs (``j*n // U`` ...) of 1 to
    ``group`` images, ``U`` a multiple of the threads used, or one image each."""
    u = _dispatch.winograd_units(n, group, threads)
    sizes = [(j + 1) * n // u - j * n // u for j in range(u)]
    assert 1 <= min(sizes) and max(sizes) <= group and max(sizes) - min(sizes) <= 1
    assert u == n or u % min(threads, n) == 0


def test_winograd_plan_rules():
    """``auto`` picks Winograd for the compiled backends' 3x3 and 5x5 stride-1 layers of 16+
    input and output channels (forward and input gradient); ``winograd`` forces it
    wherever it applies and runs the rest as ``direct``."""
    with fastcnn.config(conv="auto"):
        if "cython" in fastcnn.available_backends():
            k = _backend.ops("cython")
            assert _dispatch.conv_plan(k, 100, 32, 32, 3, 3, 16, 16, 4) == "winograd"
            assert _dispatch.conv_plan(k, 100, 16, 16, 3, 3, 32, 32, 4) == "winograd"
            assert _dispatch.conv_plan(k, 100, 8, 16, 3, 3, 32, 32, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 32, 64, 3, 3, 8, 8, 4, backward=True) == "winograd"
            assert _dispatch.conv_plan(k, 100, 32, 32, 3, 3, 16, 16, 4, True, input_grad=False) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 3, 3, 16, 16, 4, strided=True) == "direct"
            assert _dispatch.conv_plan(k, 100, 3, 16, 3, 3, 32, 32, 4) == "direct"  # first layer
            assert _dispatch.conv_plan(k, 1, 32, 32, 3, 3, 16, 16, 4) == "direct"  # one image
            assert _dispatch.conv_plan(k, 100, 32, 32, 3, 3, 16, 16, 4, pad=3) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 5, 5, 14, 14, 4, pad=2) == "winograd"  # bn conv2
            assert _dispatch.conv_plan(k, 128, 32, 64, 5, 5, 14, 14, 4, True, pad=2) == "winograd"  # lenet conv2
            assert _dispatch.conv_plan(k, 128, 1, 32, 5, 5, 28, 28, 4, pad=2) == "direct"  # lenet conv1
            assert _dispatch.conv_plan(k, 100, 16, 32, 5, 5, 14, 14, 4, pad=5) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 7, 7, 14, 14, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 3, 5, 14, 14, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 32, 32, 3, 3, 16, 16, 8) != "winograd"  # float64
        if "numba" in fastcnn.available_backends():
            k = _backend.ops("numba")
            assert _dispatch.conv_plan(k, 100, 32, 32, 3, 3, 16, 16, 4) == "winograd"
            assert _dispatch.conv_plan(k, 100, 64, 64, 3, 3, 8, 8, 4, backward=True) == "winograd"
            assert _dispatch.conv_plan(k, 100, 16, 16, 3, 3, 32, 32, 4) == "winograd"
            assert _dispatch.conv_plan(k, 100, 8, 16, 3, 3, 32, 32, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 8, 3, 3, 32, 32, 4) == "direct"
            assert _dispatch.conv_plan(k, 100, 16, 32, 5, 5, 14, 14, 4, pad=2) == "winograd"  # bn conv2
            assert _dispatch.conv_plan(k, 100, 16, 32, 5, 5, 14, 14, 4, True, pad=2) == "winograd"
            assert _dispatch.conv_plan(k, 100, 16, 16, 5, 5, 14, 14, 4, pad=2) == "winograd"
            assert _dispatch.conv_plan(k, 100, 16, 32, 3, 3, 16, 16, 4) == "winograd"
            assert _dispatch.conv_plan(k, 128, 32, 64, 5, 5, 14, 14, 4, True, pad=2) == "winograd"  # lenet conv2
            assert _dispatch.conv_plan(k, 1, 32, 64, 5, 5, 14, 14, 4, pad=2) != "winograd"  # one image
        assert _dispatch.conv_plan(REF, 100, 16, 16, 3, 3, 32, 32, 4) == "chunked"
    with fastcnn.config(conv="auto"):
        assert not _dispatch.winograd_weight()  # (auto: the direct weight gradient, more accurate)
        for b in fastcnn.available_backends():  # the output tile: 4 for the compiled 3x3 layers of 16+ channels
            k = _backend.ops(b)
            m = 2 if b == "numpy" else 4
            assert [_dispatch.winograd_tile(k, c, oc, kh) for c, oc, kh in ((16, 16, 3), (64, 64, 3), (32, 64, 5))] \
                == [m, m, 2]
            assert _dispatch.winograd_tile(k, 8, 16, 3) == _dispatch.winograd_tile(k, 16, 8, 3) == 2
            for tile in (2, 4):
                with fastcnn.config(winograd_tile=tile):
                    assert _dispatch.winograd_tile(k, 8, 16, 3) == tile
                    assert _dispatch.winograd_tile(k, 64, 64, 5) == 2  # (5x5: F(2x2, 5x5) only)
    with fastcnn.config(conv="winograd"):
        assert _dispatch.winograd_weight()
        for k in [REF] + [_backend.ops(b) for b in fastcnn.available_backends() if b != "numpy"]:
            assert _dispatch.conv_plan(k, 1, 3, 4, 3, 3, 8, 8, 4) == "winograd"
            assert _dispatch.conv_plan(k, 5, 3, 4, 3, 3, 8, 8, 8, backward=True) == "winograd"
            assert _dispatch.conv_plan(k, 5, 3, 4, 3, 3, 8, 8, 4, True, input_grad=False) == "direct"
            assert _dispatch.conv_plan(k, 5, 3, 4, 5, 5, 8, 8, 4, pad=4) == "winograd"
            assert _dispatch.conv_plan(k, 5, 3, 4, 7, 7, 8, 8, 4) == "direct"
            assert _dispatch.conv_plan(k, 5, 3, 4, 3, 3, 8, 8, 4, strided=True) == "direct"
