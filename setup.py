"""Build of the Cython backend ``fastcnn._ext`` (metadata lives in ``pyproject.toml``).

Each ``src_ext/<name>.pyx`` becomes the extension ``fastcnn._ext.<name>``, compiled with
``-O3 -fno-math-errno`` and, when the configured C compiler supports it, OpenMP (``-fopenmp``,
compile and link).  Support is detected by compiling and linking a small OpenMP program with
that very compiler; without it the kernels build serially (their ``prange`` loops run on one
thread).

Environment variables read at build time:

``FASTCNN_NO_OPENMP=1``
    Build without OpenMP even when the compiler supports it.
``FASTCNN_NATIVE=1``
    Add ``-march=native`` (for local builds only: the result may not run on other CPUs).
``FASTCNN_ANNOTATE=1``
    Also write Cython's HTML annotation next to the generated C files.

The kernel modules and the tunables the C code uses come from ``fastcnn/_config.py``, read as
text (``FROM_CONFIG``): the module list names the extensions, the tunables become the
generated header ``fastcnn_config.h`` (in the build directory), included by
``src_ext/_common.pxi``.

The flags used are recorded in the generated header ``fastcnn_buildinfo.h`` (in the build
directory) and exposed as ``fastcnn._ext._omp.COMPILE_ARGS`` / ``LINK_ARGS`` / ``OPENMP``.  The
header also holds ``FASTCNN_BUILD_INFO``: the compiler's name and version (first line of
``<cc> --version``, or MSVC's banner), the Cython version and the build platform; it is exposed
as ``fastcnn._ext._omp.BUILD_INFO`` and printed by ``fastcnn info``.

Distributable wheels: ``scripts/build_wheel.sh`` (never sets ``FASTCNN_NATIVE``); see
``docs/WHEELS.md``.
"""
import ast
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CONFIG = os.path.join("fastcnn", "_config.py")
#: Literal values of ``fastcnn/_config.py`` the build uses; the integers become
#: ``FASTCNN_<NAME>`` in ``fastcnn_config.h``.
FROM_CONFIG = ("KERNEL_MODULES", "PAR_MIN_WORK", "ELEMWISE_BLOCK", "DIRECT_CTILE_GAIN_PCT",
               "DIRECT_CTILE_MIN_PATCH")
SRC_DIR = "src_ext"
CYTHON_BUILD_DIR = os.path.join("build", "cython")

COMPILER_DIRECTIVES = {
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "language_level": 3,
}

OPENMP_TEST = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return (n >= 1 && omp_get_max_threads() >= 1) ? 0 : 1;
}
"""

PLAIN_TEST = "int main(void) { return 0; }\n"


def _read_config(path=CONFIG, names=FROM_CONFIG):
    """The literal values of the top-level assignments ``names`` in ``path``, read without
    importing the package (the build needs neither NumPy nor Numba)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    values = {}
    for node in tree.body:
        target = (node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
                  else node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and target.id in names and node.value is not None:
            values[target.id] = ast.literal_eval(node.value)
    missing = [n for n in names if n not in values]
    if missing:
        raise RuntimeError(f"{path} assigns no literal value to {', '.join(missing)}")
    return values


TUNABLES = _read_config()
MODULES = ("_omp",) + tuple(TUNABLES["KERNEL_MODULES"])


def _write_if_changed(path, text):
    """Write ``text`` unless ``path`` holds it already (a change rebuilds every extension)."""
    old = None
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if old != text:
        with open(path, "w") as f:
            f.write(text)


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _log(msg):
    print(f"fastcnn setup: {msg}", flush=True)


@contextlib.contextmanager
def _silenced():
    """Silence the compiler's stdout/stderr (file descriptors) during a probe."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _compiles(compiler, code, compile_args=(), link_args=()):
    """Whether ``code`` compiles and links with ``compiler`` and the given flags."""
    tmp = tempfile.mkdtemp(prefix="fastcnn_probe_")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        with _silenced():
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=list(compile_args))
            compiler.link_executable(objs, "probe", output_dir=tmp,
                                     extra_postargs=list(link_args))
        return True
    except Exception:  # CompileError, LinkError, a missing compiler...: not supported
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _c_string(s):
    # A valid C string literal: non-ASCII characters are replaced first (json.dumps would
    # write them as \uXXXX escapes, which C reads differently).
    return json.dumps(s.encode("ascii", "replace").decode("ascii"))


def _first_line(cmd):
    """First non-empty line a command prints (stdout, else stderr), or None."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, LC_ALL="C", LANG="C"))
    except (OSError, subprocess.SubprocessError):
        return None
    for stream in (out.stdout, out.stderr):
        for line in (stream or "").splitlines():
            if line.strip():
                return line.strip()
    return None


def _compiler_version(compiler):
    """The C compiler's name and version, e.g. ``gcc (Debian 12.2.0-14) 12.2.0``."""
    if compiler.compiler_type == "msvc":
        # cl.exe prints its banner ("Microsoft (R) C/C++ Optimizing Compiler Version ...") to
        # stderr when run without arguments; ``compiler.cc`` is set once the compiler has
        # been initialised (the OpenMP probe compiles first).
        banner = _first_line([getattr(compiler, "cc", None) or "cl.exe"])
        return banner or "msvc (version unknown)"
    cmd = list(getattr(compiler, "compiler_so", None) or [])
    while cmd and os.path.basename(cmd[0]) in ("ccache", "sccache", "distcc"):
        cmd = cmd[1:]
    exe = cmd[0] if cmd else (sysconfig.get_config_var("CC") or "cc").split()[0]
    return _first_line([exe, "--version"]) or f"{exe} (version unknown)"


def _build_info(compiler, openmp):
    """One line describing the build, compiled into ``fastcnn._ext._omp.BUILD_INFO``."""
    try:
        import Cython
        cython_version = Cython.__version__
    except ImportError:  # pragma: no cover - build_ext needs Cython anyway
        cython_version = "?"
    return "; ".join([
        f"compiler: {_compiler_version(compiler)}",
        f"CC={sysconfig.get_config_var('CC') or compiler.compiler_type}",
        f"Cython {cython_version}",
        f"{platform.python_implementation()} {platform.python_version()}",
        f"platform {sysconfig.get_platform()}",
        f"OpenMP {'on' if openmp else 'off'}",
    ])


class BuildExt(build_ext):
    """Cythonize, probe the compiler for OpenMP, then build with the chosen flags."""

    def build_extensions(self):
        from Cython.Build import cythonize

        compiler = self.compiler
        msvc = compiler.compiler_type == "msvc"
        # -fno-math-errno: the kernels never read errno, and without it GCC keeps a libm call
        # path beside every sqrtf, which stops the Adam loop from vectorising (results are the
        # same: IEEE square root either way).
        # -ffp-contract=off: no multiply-add is fused unless written as an FMA intrinsic (the direct
        # convolutions), so the kernels compiled for AVX2/AVX-512 (or -march=native) give the
        # reference's bytes.
        # -fno-trapping-math: the kernels never read the floating-point exception flags; with
        # them GCC will not turn a loop's `c ? 1.0f : 0.0f` into a vector select without AVX-512
        # masks, and the batch-norm loops (ReLU masks) stayed scalar on AVX2 (values unchanged:
        # it allows no reassociation and no contraction).
        compile_args = ["/O2"] if msvc else ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fno-trapping-math"]
        link_args = []

        if _env_flag("FASTCNN_NATIVE") and not msvc:
            if _compiles(compiler, PLAIN_TEST, ["-march=native"]):
                compile_args.append("-march=native")
            else:
                _log("FASTCNN_NATIVE=1 but the compiler refuses -march=native; ignored")

        omp_compile, omp_link = (["/openmp"], []) if msvc else (["-fopenmp"], ["-fopenmp"])
        if _env_flag("FASTCNN_NO_OPENMP"):
            openmp = False
            _log("FASTCNN_NO_OPENMP=1: building serial kernels (no OpenMP)")
        else:
            openmp = _compiles(compiler, OPENMP_TEST, omp_compile, omp_link)
            if openmp:
                _log(f"OpenMP available: compiling with {' '.join(omp_compile)}")
            else:
                _log("the C compiler does not support OpenMP: building serial kernels")
        if openmp:
            compile_args += omp_compile
            link_args += omp_link

        # Build information, compiled into fastcnn._ext._omp, and the tunables of _config.py.
        gen_dir = os.path.abspath(os.path.join(self.build_temp, "fastcnn_gen"))
        os.makedirs(gen_dir, exist_ok=True)
        cc = getattr(compiler, "compiler_so", None) or [compiler.compiler_type]
        build_info = _build_info(compiler, openmp)
        _log(f"build info: {build_info}")
        headers = {
            "fastcnn_buildinfo.h": (
                f"#define FASTCNN_COMPILE_ARGS {_c_string(' '.join(compile_args))}\n"
                f"#define FASTCNN_LINK_ARGS {_c_string(' '.join(link_args))}\n"
                f"#define FASTCNN_COMPILER {_c_string(' '.join(cc))}\n"
                f"#define FASTCNN_OPENMP_REQUESTED {int(openmp)}\n"
                f"#define FASTCNN_BUILD_INFO {_c_string(build_info)}\n"),
            "fastcnn_config.h": "".join(
                f"#define FASTCNN_{name} {value}\n" for name, value in TUNABLES.items()
                if type(value) is int),
        }
        for name, body in headers.items():
            guard = name.upper().replace(".", "_")
            _write_if_changed(os.path.join(gen_dir, name), (
                f"/* Generated by fastcnn's setup.py: do not edit. */\n"
                f"#ifndef {guard}\n#define {guard}\n{body}#endif\n"))

        # .pyx -> .c; keep setuptools' own Extension objects (finalized by build_ext), only
        # swap their sources for the generated C files.
        generated = cythonize(
            self.extensions,
            build_dir=CYTHON_BUILD_DIR,
            compiler_directives=COMPILER_DIRECTIVES,
            annotate=_env_flag("FASTCNN_ANNOTATE"),
            force=self.force,
            quiet=True,
        )
        sources = {ext.name: ext.sources for ext in generated}
        for ext in self.extensions:
            ext.sources = list(sources[ext.name])
        import numpy  # (the kernels' argument check, _common.pxi, reads NumPy's array struct)
        for ext in self.extensions:
            ext.include_dirs = [SRC_DIR, gen_dir, numpy.get_include()] + list(ext.include_dirs)
            ext.define_macros = list(ext.define_macros) + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
            ext.extra_compile_args = compile_args + list(ext.extra_compile_args)
            ext.extra_link_args = link_args + list(ext.extra_link_args)
            ext.depends = list(ext.depends) + [os.path.join(gen_dir, h) for h in headers]
            if openmp:
                ext.define_macros = list(ext.define_macros) + [("FASTCNN_OPENMP", "1")]
        super().build_extensions()


def extensions():
    common = [os.path.join(SRC_DIR, f) for f in
              ("_common.pxi", "_omp_shim.h", "conv_direct.h", "conv_direct_kern.h", "winograd_kern.h", "norm_kern.h",
               "optim_kern.h", "_simd.h", "planestats.h", "pool2_kern.h", "pool2.h", "gemm.h", "gemm_kern.h",
               "rows_kern.h", "transpose16.h", "transpose8.h")]
    return [
        Extension(f"fastcnn._ext.{name}", [os.path.join(SRC_DIR, f"{name}.pyx")], depends=common)
        for name in MODULES
    ] + [  # (outside fastcnn._ext, whose package imports every kernel: fastcnn imports this one first)
        Extension("fastcnn._heapcache", [os.path.join(SRC_DIR, "_heapcache.pyx")],
                  depends=[os.path.join(SRC_DIR, "heapcache.h")]),
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
