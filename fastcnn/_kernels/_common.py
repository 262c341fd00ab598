"""Shared by the Numba kernel modules: ``parallel_kernel`` and the small jitted helpers (the
twin of ``src_ext/_common.pxi``).

Numba's on-disk cache tracks each kernel's own source file only, not the helpers, intrinsics
and size checks compiled into it: :func:`drop_stale_cache` (run when the package is imported)
drops the package's cached kernels whenever any of those sources changed.
"""
import ctypes
import functools
import glob
import hashlib
import os
import types

import numpy as np
from numba import njit
from numba import types as nbtypes
from numba.extending import get_cython_function_address, intrinsic, overload, register_jitable

from .. import _backend, _config

#: Index cast used for every computed flat index.  Numba wraps negative signed indices
#: around, and that (unprovable) branch keeps LLVM from vectorising the inner loops; an
#: unsigned index has no wraparound.  All indices computed are in range once the size check of
#: the primitive (``_backend.sizes_<primitive>``) has passed.
_u = np.uint64

#: Decorator of the small helpers the kernels call: compiled into each caller.
helper = njit(inline="always", **_config.NUMBA_SERIAL)

# The size checks of the backend contract (``_backend.sizes_<primitive>``): the kernels call
# them first, compiled; the wrappers that prepare arrays in Python call them there, through
# check_once.
for _name, _fn in vars(_backend).items():
    if "sizes_" in _name and callable(_fn):
        register_jitable(_fn)

_PASSED: dict = {}


def writable(a):
    """``a``, or a writeable copy of it if it is read-only (the shared zeros bias of a layer
    without one): Numba compiles a kernel once more for each read-only array type it is
    given, so inputs that may come read-only reach the kernels writeable (docs/PERFORMANCE.md,
    "Compile time")."""
    return a if a.flags.writeable else a.copy()


def check_once(check, *args):
    """``check(*args)`` (a size check of the contract, its arrays' shapes and the integer
    arguments) unless the last call of that check that passed had equal arguments: a training
    loop pays for it once per shape (as the Cython wrappers' ``_new``)."""
    if _PASSED.get(check) != args:
        check(*args)
        _PASSED[check] = args


def parallel_kernel(fn=None, *, fma=False):
    """Decorator for a ``prange`` kernel whose first argument is its main array.

    Calls with fewer than ``_config.PAR_MIN_WORK`` elements in that array run the serial
    compilation (``prange`` as ``range``), the others the parallel one; both give the same
    bytes since every kernel is race-free and reduces in a fixed order.  ``fma=True``
    compiles with FMA contraction (``_config.NUMBA_PARALLEL_FMA``).
    """
    if fn is None:
        return functools.partial(parallel_kernel, fma=fma)
    par = njit(**(_config.NUMBA_PARALLEL_FMA if fma else _config.NUMBA_PARALLEL))(fn)
    # A copy with its own qualified name: Numba's on-disk cache is keyed by the function's
    # name and source line, so two compilations of one function would overwrite each other.
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    twin.__doc__ = fn.__doc__
    ser = njit(**(_config.NUMBA_SERIAL_FMA if fma else _config.NUMBA_SERIAL))(twin)

    @functools.wraps(fn)
    def call(*args):
        return (par if args[0].size >= _config.PAR_MIN_WORK else ser)(*args)

    call.parallel, call.serial = par, ser
    return call


def flat_or_none(a):
    """In a kernel: ``a`` as a 1-D view, or None for None (compiled for each case on its own:
    the result is never an optional)."""


@overload(flat_or_none)
def _flat_or_none(a):
    if isinstance(a, nbtypes.NoneType):
        return lambda a: None
    return lambda a: a.reshape(a.size)


def not_contiguous(op, **arrays):
    """Raise for the first of ``arrays`` (by name) that is not C-contiguous: the element-wise
    kernels flatten their arrays (here or in the kernel), which needs them contiguous (a
    flattened copy would lose what a kernel writes)."""
    name = next(n for n, a in arrays.items() if not a.flags.c_contiguous)
    raise ValueError(f"{op}: {name} must be C-contiguous")


def flat(a, name, op):
    """``a`` (any shape) as a 1-D view for the element-wise kernels; refuses an array that is
    not C-contiguous, whose reshape would be a copy (what a kernel writes there would be lost).
    As ``_flat`` in ``src_ext/_common.pxi``."""
    if not a.flags.c_contiguous:
        not_contiguous(op, **{name: a})
    return a.reshape(-1)


@helper
def block(t, size, nblocks):
    """``[lo, hi)``: block ``t`` of ``nblocks`` near-equal blocks of ``range(size)``."""
    return t * size // nblocks, (t + 1) * size // nblocks


def _sgemm():
    """SciPy's single-threaded SGEMM (the one NumPy-in-Numba's ``np.dot`` and the Cython
    kernels call) as a ctypes function of 13 pointers.  Kernels take it as an argument: a
    function pointer in a kernel's globals would keep Numba from caching the kernel."""
    vp = ctypes.c_void_p
    return ctypes.CFUNCTYPE(None, *(vp,) * 13)(get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))


#: Pass this to the kernels that call :func:`gemm`.
SGEMM = _sgemm()


@helper
def gemm(sgemm, ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
    """Row-major ``c (m x n) = op(a) @ op(b)`` by ``sgemm`` (:data:`SGEMM`), the Cython
    backend's ``_gemm``: ``a``, ``b``, ``c`` are the addresses of float32 matrices with row
    lengths (as stored) ``lda``, ``ldb``, ``ldc``; ``op(a)`` is (m x k), stored transposed with
    ``ta``; likewise ``op(b)`` (k x n).  BLAS is column-major: it computes ``c^T = op(b)^T @
    op(a)^T``."""
    ch = np.empty(2, np.uint8)
    ch[0] = 84 if tb else 78  # ('T', 'N')
    ch[1] = 84 if ta else 78
    iv = np.empty(6, np.int32)
    iv[0], iv[1], iv[2], iv[3], iv[4], iv[5] = n, m, k, ldb, lda, ldc
    fv = np.empty(2, np.float32)
    fv[0], fv[1] = 1.0, 0.0
    p = iv.ctypes.data
    sgemm(ch.ctypes.data, ch.ctypes.data + 1, p, p + 4, p + 8, fv.ctypes.data, b, p + 12, a, p + 16,
          fv.ctypes.data + 4, c, p + 20)


@intrinsic
def f32_ptr(typingctx, addr):
    """The integer ``addr`` as a float32 pointer (for ``numba.carray``): the address of an array
    that the caller keeps alive (the optimizer kernels' tables)."""
    sig = nbtypes.CPointer(nbtypes.float32)(addr)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return sig, codegen


@intrinsic
def next_unit(typingctx, counter):
    """The next unit of a kernel's shared work counter ``counter[0]`` (an int64 array made
    outside the ``prange``), incremented atomically: each thread of a parallel loop takes units
    until it passes the last (docs/PERFORMANCE.md, "Work taken as threads free up"); as
    ``fastcnn_next_unit`` in ``src_ext/_omp_shim.h``."""
    if not (isinstance(counter, nbtypes.Array) and counter.dtype == nbtypes.int64):
        return None
    sig = nbtypes.int64(counter)

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", data, context.get_constant(nbtypes.int64, 1), "monotonic")

    return sig, codegen


@helper
def chunk(t, size, step):
    """``[lo, hi)``: chunk ``t`` of ``range(size)`` cut into runs of ``step``."""
    lo = t * step
    return lo, min(lo + step, size)


@helper
def valid_range(off, s, w, o):
    """Outputs ``q`` in ``[lo, hi)`` with ``0 <= q*s + off < w``, clamped to ``[0, o]`` (an
    empty range has ``lo == hi``); as ``_valid_range`` in ``src_ext/_common.pxi``."""
    lo = (-off + s - 1) // s if off < 0 else 0
    hi = (w - off + s - 1) // s if w - off > 0 else 0
    lo = min(lo, o)
    return lo, max(min(hi, o), lo)


@helper
def add_plane(acc, a0, src, s0, n):
    """``acc[a0 + e] += float64(src[s0 + e])`` for ``e < n``: element-wise partial sums (over
    images, say) that vectorise without reassociating anything; :func:`total` sums them."""
    for e in range(n):
        acc[_u(a0 + e)] += np.float64(src[_u(s0 + e)])


@helper
def total(acc, a0, n):
    """``sum(acc[a0:a0 + n])`` in index order."""
    s = 0.0
    for e in range(n):
        s += acc[_u(a0 + e)]
    return s


@njit(**_config.NUMBA_SERIAL)
def _add_row(df, dd, cf, s0, lo, hi, sw):
    """``df[dd + u*sw] += cf[s0 + u]`` for u in [lo, hi) (literal ``sw`` for stride 1)."""
    for u in range(lo, hi):
        df[_u(dd + u * sw)] += cf[_u(s0 + u)]


@njit(**_config.NUMBA_SERIAL)
def fold_tap(dst, d0, src, s0, div, i, j, h, w, sh, sw, pt, pl, oh, ow):
    """Add an output plane to the input cells kernel tap ``(i, j)`` reads:
    ``dst[d0 + (q*sh - pt + i)*w + u*sw - pl + j] += src[s0 + q*ow + u]`` (``/ div[q*ow + u]``
    unless ``div`` is None), for the cells inside the (h, w) plane (col2im, average-pool
    gradient); as ``_fold_tap`` in ``src_ext/_common.pxi``."""
    qlo, qhi = valid_range(i - pt, sh, h, oh)
    lo, hi = valid_range(j - pl, sw, w, ow)
    for q in range(qlo, qhi):
        dd = d0 + (q * sh - pt + i) * w + j - pl
        ss = s0 + q * ow
        if div is None:
            if sw == 1:
                _add_row(dst, dd, src, ss, lo, hi, 1)
            else:
                _add_row(dst, dd, src, ss, lo, hi, sw)
        else:
            for u in range(lo, hi):
                dst[_u(dd + u * sw)] += src[_u(ss + u)] / div[_u(q * ow + u)]


#: The sources compiled into the cached kernels besides each kernel's own file: every module
#: of this package (helpers, intrinsics), the size checks and the compile flags.
_CACHE_SOURCES = ("_kernels/*.py", "_backend.py", "_config.py")
_CACHE_STAMP = "fastcnn-kernels.sha256"


@njit(**_config.NUMBA_SERIAL)
def _cache_probe():  # (never called: its cache object names the package's cache directory)
    return 0


def _sources_digest():
    """Digest of :data:`_CACHE_SOURCES` and of the LLVM options in effect (code, not values:
    Numba's cache keys on neither)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = hashlib.sha256(repr(_config.numba_llvm_options()).encode())
    for pattern in _CACHE_SOURCES:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            with open(path, "rb") as f:
                h.update(os.path.basename(path).encode() + b"\0" + f.read())
    return h.hexdigest()


def drop_stale_cache():
    """Delete the package's cached kernels (``*.nbi``, ``*.nbc`` in its Numba cache directory)
    unless they were compiled from the present sources (:data:`_CACHE_SOURCES`, their digest
    kept in :data:`_CACHE_STAMP` beside them), then record the present digest; returns whether
    it deleted.  Numba alone would keep a kernel compiled with an older helper or intrinsic
    (after ``git pull`` into an editable install, say).  Nothing to do without a cache."""
    cache = getattr(_cache_probe, "_cache", None)
    where = getattr(cache, "cache_path", None)
    if not where or not os.path.isdir(where):
        return False
    digest = _sources_digest()
    stamp = os.path.join(where, _CACHE_STAMP)
    try:
        with open(stamp) as f:
            if f.read().strip() == digest:
                return False
    except OSError:
        pass
    try:
        for path in glob.glob(os.path.join(where, "*.nb[ic]")):
            os.remove(path)  # (a process loading one meanwhile recompiles it)
        tmp = f"{stamp}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(digest + "\n")
        os.replace(tmp, stamp)
    except OSError:  # (another process's deletion first, or a read-only cache: Numba copes)
        pass
    return True
