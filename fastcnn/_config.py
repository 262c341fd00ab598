"""The one source of the compiled kernels' tunables, lists and compilation flags.

``setup.py`` reads the literal values named in its ``FROM_CONFIG`` (module list, work
threshold, block size) from this file without importing it and generates the Cython side
from them (``fastcnn_config.h`` in the build directory): change them here, then rebuild.
Numba kernels get the tunables they use as arguments from their Python wrappers (Numba's
on-disk cache would keep a compiled-in global after it changed here).
"""
import os
import stat
import sys
import tempfile
import warnings

#: Options every parallel Numba kernel is compiled with.  ``fastmath`` stays off so that the
#: compiled kernels follow the same IEEE rounding as the NumPy reference (reductions keep a
#: fixed order, which the determinism guarantee relies on).
NUMBA_PARALLEL = dict(parallel=True, cache=True, nogil=True, fastmath=False, error_model="numpy")
#: Options for the small serial helpers.
NUMBA_SERIAL = dict(parallel=False, cache=True, nogil=True, fastmath=False, error_model="numpy")
#: The same with floating-point contraction only (``a*b + c`` may become one FMA, rounded
#: once): no reassociation, no other fast-math flag, so every sum keeps its written order and
#: results stay bit-identical whatever the thread count.  Without it LLVM forms no FMA at all
#: (only separate multiplies and adds), which halves the peak of the multiply-add kernels
#: (direct convolutions).  Results differ from the reference by at most the rounding of the
#: skipped intermediate product, within the tests' tolerances.
NUMBA_PARALLEL_FMA = dict(NUMBA_PARALLEL, fastmath={"contract"})
NUMBA_SERIAL_FMA = dict(NUMBA_SERIAL, fastmath={"contract"})
#: LLVM options ``import fastcnn`` sets (process-wide, before Numba compiles) unless
#: ``FASTCNN_NUMBA_LLVM_OPTIONS`` replaces them (empty: none): runtime unrolling kept two
#: iterations of the register tiles' loops live and spilled the accumulators (docs/PERFORMANCE.md,
#: section 10).  Code only, not values: the same bytes either way.
NUMBA_LLVM_OPTIONS = ("-unroll-runtime=false",)

#: Thread-runtime settings ``import fastcnn`` puts in ``os.environ`` (before NumPy and the
#: OpenMP runtimes load) unless already set (docs/PERFORMANCE.md, section 2): idle OpenMP
#: threads spin for ``GOMP_SPINCOUNT`` iterations after a parallel region (libgomp honours
#: it under ``PASSIVE``; a fraction of a millisecond), long enough to span the Python between
#: two kernels of a training step, then sleep; OpenBLAS's idle threads sleep after 4 units
#: of its timeout.
THREAD_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "20000", "OPENBLAS_THREAD_TIMEOUT": "4"}

#: Environment variables read at import time.
ENV_BACKEND = "FASTCNN_BACKEND"
ENV_THREADS = "FASTCNN_NUM_THREADS"
ENV_DATA = "FASTCNN_DATA"
ENV_ISA = "FASTCNN_ISA"
ENV_LLVM_OPTIONS = "FASTCNN_NUMBA_LLVM_OPTIONS"
ENV_HEAP = "FASTCNN_HEAP"

#: glibc heap thresholds set at import (``FASTCNN_HEAP=keep``, the default; docs/PERFORMANCE.md,
#: "Freed memory is kept"): blocks below ``HEAP_MMAP_THRESHOLD`` bytes come from the heap, and
#: the heap is returned to the system only when more than ``HEAP_TRIM_THRESHOLD`` bytes at its
#: top are free, so a training step reuses the pages the previous one freed.
HEAP_MMAP_THRESHOLD = 32 << 20
HEAP_TRIM_THRESHOLD = 512 << 20
#: NumPy arrays' freed data blocks of ``HEAP_CACHE_MIN`` bytes or more (which glibc would map
#: afresh each time) are kept, up to ``HEAP_CACHE_BYTES`` in all, and reused for requests they
#: exceed by at most ``HEAP_CACHE_SLACK_PCT`` % (``fastcnn._heapcache``; same section).
HEAP_CACHE_MIN = HEAP_MMAP_THRESHOLD
HEAP_CACHE_BYTES = 512 << 20
HEAP_CACHE_SLACK_PCT = 12

#: Byte alignment of the parameters' gradients (``Parameter``): the Cython dense weight
#: gradient stores such a gradient past the caches (streaming stores need 64-byte alignment;
#: docs/PERFORMANCE.md, section 3).
GRAD_ALIGN = 64

#: Seconds ``distributed.abort`` waits between printing its message and ``MPI_Abort``: the
#: launcher forwards a rank's stderr from a pipe and stops reading it once the abort reaches
#: it, so without the pause the one line saying which rank failed and why can be lost.
ABORT_GRACE_SECONDS = 0.5

#: Instruction sets ``FASTCNN_ISA`` may force (unset or ``auto``: the best this CPU has).
ISAS = ("baseline", "avx2", "avx512")

BACKENDS = ("numpy", "numba", "cython")


def env_threads():
    """Thread count requested through ``FASTCNN_NUM_THREADS`` (None when unset)."""
    value = os.environ.get(ENV_THREADS)
    if value is None or value.strip() == "":
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{ENV_THREADS} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{ENV_THREADS} must be a positive integer, got {value!r}")
    return n

#: The kernel modules of both compiled backends: ``fastcnn._kernels.<name>`` (Numba) and
#: ``fastcnn._ext.<name>`` (Cython, from ``src_ext/<name>.pyx``; ``_ext._omp``, the thread
#: control, is built beside them and sets the thread count of each).
KERNEL_MODULES = ("conv", "conv_direct", "dense", "pool", "activation", "loss", "norm", "optim")

#: Below this many elements of work a kernel runs serially: waking the other threads costs
#: more than it saves (batch-1 training).  Both compiled backends (docs/PERFORMANCE.md, 2).
PAR_MIN_WORK = 16384

#: Element-wise kernels (ReLU, Adam) run over blocks of this many elements, one block per
#: parallel iteration.
ELEMWISE_BLOCK = 16384

#: Partial weight-gradient sums of the per-image and direct convolution kernels: image ``i``
#: of ``N`` adds into slot ``i * SLOTS // N``, each slot summed by one thread in image order,
#: then the slots in order.  A constant, so results do not depend on the thread count.
SLOTS = 8

#: Direct weight gradients (Cython and Numba): bytes of packed images (input and channels-last output
#: gradient) a thread runs through all its register tiles at a time, so that they stay in
#: the core's L2 cache (docs/PERFORMANCE.md, section 9).  Any value gives the same bytes.
DIRECT_WGRAD_BYTES = 256 << 10

#: Direct weight gradients (both backends): while a thread runs its packed images through its
#: tiles, ask for the next images' input and output gradient into the caches, a share after
#: each tile.  Any value gives the same bytes (docs/PERFORMANCE.md, section 9: faster on the
#: AMD Zen 4 machine of the thirty-sixth session, slower on the Intel one of the tenth).
DIRECT_WGRAD_PREFETCH = True

#: The gradient of a convolution whose output was 2x2 max pooled: layers whose kernel has at
#: least this many values per output channel (input channels x taps) take the weight gradient
#: from the pooling's winners only (a quarter of the output positions at most;
#: docs/PERFORMANCE.md, section 9, "Pooled weight gradient").  Both compiled backends; either
#: way the same bytes.
POOLED_WGRAD_MIN_PATCH = 192

#: Its input gradient (stride 1) from the winners too, for kernels of at least this many
#: values per output channel (docs/PERFORMANCE.md, section 9, "Pooled input gradient"; at
#: 32 x 3x3 = 288 the winners were no faster than the dense kernel, slower than Winograd's):
#: its own order of the sums (cell by cell), not the dense kernel's, so not its bytes.
POOLED_DGRAD_MIN_PATCH = 400

#: The direct forward kernels run a layer on channel tiles (pixels x output-channel vectors,
#: inputs broadcast) instead of pixel vectors when the tiles' lanes hold at least this many
#: percent of the pixel vectors' share of valid outputs (outputs whose rows fill few vectors,
#: e.g. 8 x 8 or, with 8 lanes, 14 x 14) and each output sums at least DIRECT_CTILE_MIN_PATCH
#: products (input channels x taps): docs/PERFORMANCE.md, section 9.  Both compiled backends,
#: every instruction-set path.
DIRECT_CTILE_GAIN_PCT = 110
DIRECT_CTILE_MIN_PATCH = 100

#: Winograd convolutions (Cython and Numba): output tiles (2x2 outputs each) transformed and
#: multiplied together, whole images of a thread's block: small images are grouped so that the
#: register tiles' vectors are mostly full (docs/PERFORMANCE.md, "Winograd convolutions").
#: Any value gives the same bytes.
WINOGRAD_TILES = 128
#: Winograd convolutions: a group may take more images than ``WINOGRAD_TILES`` asks, up to this
#: many bytes of packed input, if that leaves fewer of its vectors' lanes empty (7 x 7 tiles an
#: image fill no whole vectors; :func:`fastcnn._dispatch.winograd_group`).  Same bytes.
WINOGRAD_GROUP_BYTES = 512 * 1024
#: Winograd convolutions (Cython): vectors of tiles per chunk taken through the three steps
#: (input transform, products, output transform) while their buffers are in cache.
WINOGRAD_VECTORS = 3

#: Numba col2im: images per work item (one input channel of that many images).
COL2IM_IMAGES = 8

#: Dense layers run as at most this many blocks of a GEMM (of output features for the output
#: and the weight gradient, of input features for the input gradient), each at least
#: ``DENSE_MIN_BLOCK`` output features wide.  The count depends on the layer's shape only,
#: never on the thread count, so the same SGEMM calls (and bytes) run at any thread count;
#: changing these constants changes the rounding, not the determinism.
DENSE_BLOCKS = 2
DENSE_MIN_BLOCK = 32


def dense_blocks(out_features):
    """Number of GEMM blocks of a dense layer with ``out_features`` outputs."""
    return max(1, min(DENSE_BLOCKS, out_features // DENSE_MIN_BLOCK))


#: The dense layers' own GEMM (AVX-512/AVX2 paths) runs the forward of a batch of ``n`` only
#: when ``n`` is a multiple of this (its column tiles of 64 images are then all full; other
#: batches ran 15-30 % slower than SciPy's SGEMM: BENCHMARKS.md, "thirteenth session"); their
#: gradients always.  Both backends follow it (the same bytes).
DENSE_TILED_BATCH = 64


def dense_forward_tiled(n):
    """Whether a dense forward of ``n`` images runs on the tiled GEMM where the path has one."""
    return n % DENSE_TILED_BATCH == 0


#: Batches of at most this many images run the dense layers' rows path (src_ext/rows_kern.h;
#: both backends, every SIMD path): the forward a dot product per output instead of a GEMM
#: (whose packing and call cost more than the arithmetic at such batches), the gradients one
#: chain of FMAs per element (on the AVX2/AVX-512 paths the GEMM's very chains, so the same
#: bytes; a tile of one vector: it loses to the GEMM's from 3 images on).
DENSE_ROWS_BATCH = 8
DENSE_ROWS_GRAD_BATCH = 2


def dense_rows(n, grads=False):
    """Whether a dense layer's forward (or with ``grads`` its gradients) of ``n`` images runs
    the rows path."""
    return n <= (DENSE_ROWS_GRAD_BATCH if grads else DENSE_ROWS_BATCH)


# --------------------------------------------------------------------------- Numba's cache
#: Where Numba's on-disk cache of the kernels goes (:func:`_setup_numba_cache`), for
#: ``fastcnn info`` and the tests.
NUMBA_CACHE = {"dir": None, "why": "not set up"}


def _writable_dir(path):
    """Whether ``path`` exists or can be made and takes a file (Numba's own test of a cache
    location)."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _private_dir(path):
    """Whether ``path`` can be made (mode 0700) and is then a directory of this user's that
    no one else may write: a shared temporary directory's entry must not be another user's,
    whose files Numba would load as machine code."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    uid = os.getuid() if hasattr(os, "getuid") else st.st_uid
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022
            and _writable_dir(path))


def _numba_cache_choice(environ, kernels_dir, tmp_dir, writable=_writable_dir, private=_private_dir):
    """``(location, set NUMBA_CACHE_DIR, why)`` following Numba's own order of locations
    (``NUMBA_CACHE_DIR``, next to the kernels' sources, the user-wide cache), then a private
    directory under ``tmp_dir``; location None: no cache at all.  (Numba, too, passes over a
    ``NUMBA_CACHE_DIR`` it cannot write to.)"""
    given = environ.get("NUMBA_CACHE_DIR")
    if given and writable(given):
        return given, False, "NUMBA_CACHE_DIR set by the user or a parent process"
    unusable = f" (NUMBA_CACHE_DIR={given} is not writable)" if given else ""
    in_tree = os.path.join(kernels_dir, "__pycache__")
    if writable(in_tree):
        return in_tree, False, "next to the kernels' sources" + unusable
    user = os.path.join(environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "numba")
    if writable(user):
        return user, False, "the user-wide cache: the package directory is read-only" + unusable
    private_tmp = os.path.join(tmp_dir, f"fastcnn-numba-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
    if private(private_tmp):
        return private_tmp, True, ("a private temporary directory: the package and the user-wide cache are "
                                   "read-only" + unusable)
    return None, False, "no writable location: the kernels compile anew in every process" + unusable


def _setup_numba_cache():
    """Make Numba's cache work wherever fastcnn is installed.  Numba refuses to decorate a
    ``cache=True`` function when none of its locations is writable (a read-only package and
    an unwritable HOME: a container run as another user), which would leave the Numba backend
    unavailable; fastcnn then points ``NUMBA_CACHE_DIR`` at a private temporary directory, or,
    failing that, compiles without a cache (docs/WHEELS.md)."""
    import importlib.util

    if "numba" not in sys.modules and importlib.util.find_spec("numba") is None:
        NUMBA_CACHE.update(dir=None, why="Numba is not installed")
        return
    kernels_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_kernels")
    location, set_env, why = _numba_cache_choice(os.environ, kernels_dir, tempfile.gettempdir())
    if set_env:
        if os.environ.get("NUMBA_CACHE_DIR"):
            warnings.warn(f"fastcnn: Numba's cache goes to {location}: {why}", RuntimeWarning, stacklevel=3)
        os.environ["NUMBA_CACHE_DIR"] = location
        if "numba" in sys.modules:  # Numba reads it when a kernel is decorated: update it now
            sys.modules["numba"].core.config.reload_config()
    if location is None:
        for options in (NUMBA_PARALLEL, NUMBA_SERIAL, NUMBA_PARALLEL_FMA, NUMBA_SERIAL_FMA):
            options["cache"] = False
    NUMBA_CACHE.update(dir=location, why=why)


_setup_numba_cache()


# --------------------------------------------------------------------------- Numba's target ISA
#: What :func:`_setup_numba_isa` did, for ``fastcnn info`` and the tests.
NUMBA_ISA = {"isa": None, "why": "not set up"}


def requested_isa():
    """The ISA forced by ``FASTCNN_ISA`` (one of :data:`ISAS`), or None for automatic."""
    value = os.environ.get(ENV_ISA, "").strip().lower()
    if value in ("", "auto", "native"):
        return None
    if value not in ISAS:
        raise ValueError(f"{ENV_ISA} must be one of auto, {', '.join(ISAS)}; got {value!r}")
    return value


#: LLVM tuning flags added to the avx2 and avx512 paths' features (LLVM 17 and newer know
#: them): the vectoriser turns strided loops (packing, transposes, sums over channels) into
#: gathers and scatters, microcoded on AMD Zen 4 and slow on Intel cores with the
#: gather-data-sampling fix; the kernels' hot loops are explicit vectors (docs/PERFORMANCE.md,
#: section 10).
NUMBA_NO_GATHER = ",+prefer-no-gather,+prefer-no-scatter"


def _numba_isa_env(isa, host_features, tuning=NUMBA_NO_GATHER):
    """``(NUMBA_CPU_NAME, NUMBA_CPU_FEATURES)`` for ``isa`` on a host whose LLVM feature string
    is ``host_features`` (None: leave Numba's default), ``tuning`` appended to the avx2 and
    avx512 paths' features.  Raises ValueError if the CPU lacks the ISA."""
    feats = host_features.split(",")
    has = {f[1:] for f in feats if f.startswith("+")}
    if isa == "baseline":  # x86-64 SSE2 (or the architecture's baseline): portable code
        return "generic", None  # (Numba's features default to "" for "generic")
    if isa == "avx2":
        if not {"avx2", "fma"} <= has:
            raise ValueError(f"{ENV_ISA}=avx2 but this CPU has no AVX2/FMA")
        # The host's features with AVX-512 (and AMX, AVX10, which imply it) switched off.
        off = ("avx512", "amx", "avx10", "evex512")
        return None, ",".join("-" + f[1:] if f.startswith("+") and f[1:].startswith(off) else f
                              for f in feats) + tuning
    if "avx512f" not in has:
        if isa == "avx512":
            raise ValueError(f"{ENV_ISA}=avx512 but this CPU has no AVX-512")
        if {"avx2", "fma"} <= has:  # automatic on an AVX2 CPU: the avx2 path, named as such
            return _numba_isa_env("avx2", host_features, tuning)
        return None, None  # automatic on a CPU without AVX2: Numba's default
    # AVX-512: LLVM's tuning for Intel server cores prefers 256-bit vectors (no zmm code at
    # all); ``-prefer-256-bit`` lets the vectoriser use 512-bit ones.  (AMD Zen 4/5 tuning
    # already does; the flag changes nothing there.)
    return None, host_features + ",-prefer-256-bit" + tuning


def _isa_of_target(name, features):
    """The SIMD path whose vector sizes the Numba kernels use for the target ``name`` /
    ``features`` (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES), as :func:`_setup_numba_isa` would have
    chosen them for it; ``"numba default"`` when the features are not given."""
    if features:
        has = {f[1:] for f in features.split(",") if f.startswith("+")}
        return "avx512" if "avx512f" in has else "avx2" if {"avx2", "fma"} <= has else "baseline"
    return "baseline" if name == "generic" else "numba default"


def _setup_numba_isa():
    """Set ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` for ``FASTCNN_ISA`` (default: wide vectors
    on AVX-512 CPUs) before Numba is first imported.  Values the user set win (a child process
    inherits its parent's); Numba's on-disk cache is keyed on the CPU name and features, not on
    the kernels' vector sizes (``_simd.VL``, ...), so those are a function of the name and
    features alone: each setting has its own cache entries, compiled with the same sizes."""
    isa = requested_isa()
    if "NUMBA_CPU_NAME" in os.environ or "NUMBA_CPU_FEATURES" in os.environ:
        NUMBA_ISA.update(isa=_isa_of_target(os.environ.get("NUMBA_CPU_NAME"), os.environ.get("NUMBA_CPU_FEATURES")),
                         why="NUMBA_CPU_NAME/NUMBA_CPU_FEATURES set by the user or a parent process")
        if isa is not None:
            warnings.warn(f"{ENV_ISA}={isa} is ignored by the Numba kernels: NUMBA_CPU_NAME or "
                          "NUMBA_CPU_FEATURES is set", RuntimeWarning, stacklevel=3)
        return
    if "numba" in sys.modules:
        NUMBA_ISA.update(isa="numba default", why="Numba was imported before fastcnn")
        if isa is not None:
            warnings.warn(f"{ENV_ISA}={isa} is ignored by the Numba kernels: Numba was imported "
                          "before fastcnn", RuntimeWarning, stacklevel=3)
        return
    try:
        import llvmlite.binding as ll  # (does not import Numba)

        host = ll.get_host_cpu_features().flatten()
    except Exception as exc:  # no llvmlite (no Numba backend) or no feature detection
        if isa is not None:
            raise ValueError(f"{ENV_ISA}={isa}: cannot read the CPU features ({exc})") from None
        NUMBA_ISA.update(isa="numba default", why=f"no llvmlite host features ({exc})")
        return
    name, features = _numba_isa_env(isa, host, NUMBA_NO_GATHER if ll.llvm_version_info >= (17,) else "")
    if name is not None:
        os.environ["NUMBA_CPU_NAME"] = name
    if features is not None:
        os.environ["NUMBA_CPU_FEATURES"] = features
    chosen = isa or _isa_of_target(name, features)
    NUMBA_ISA.update(isa=chosen, why=f"{ENV_ISA}={isa}" if isa else "automatic")


_setup_numba_isa()


def numba_llvm_options():
    """The LLVM options in effect: :data:`NUMBA_LLVM_OPTIONS`, or ``FASTCNN_NUMBA_LLVM_OPTIONS``
    (space-separated) when set."""
    value = os.environ.get(ENV_LLVM_OPTIONS)
    return NUMBA_LLVM_OPTIONS if value is None else tuple(value.split())


def _set_numba_llvm_options():
    """Pass :func:`numba_llvm_options` to LLVM; without llvmlite (no Numba backend) nothing to
    do."""
    options = numba_llvm_options()
    if not options:
        return
    try:
        import llvmlite.binding as ll
    except ImportError:
        return
    for option in options:
        ll.set_option("fastcnn", option)


_set_numba_llvm_options()
