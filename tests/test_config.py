"""The compilation and threading settings (``fastcnn._config``): Numba's target ISA from
``FASTCNN_ISA``."""
import os

import pytest

from fastcnn import _config

AVX512_HOST = "+64bit,+avx,+avx2,+fma,+avx512f,+avx512vl,+evex512,-amx-tile,+sse2"
AVX2_HOST = "+64bit,+avx,+avx2,+fma,-avx512f,+sse2"


def test_numba_isa_environment_choices(monkeypatch):
    env = _config._numba_isa_env
    tune = _config.NUMBA_NO_GATHER
    assert env(None, AVX512_HOST) == (None, AVX512_HOST + ",-prefer-256-bit" + tune)
    assert env("avx512", AVX512_HOST) == (None, AVX512_HOST + ",-prefer-256-bit" + tune)
    assert env("avx512", AVX512_HOST, "") == (None, AVX512_HOST + ",-prefer-256-bit")  # (LLVM < 17)
    assert env("avx2", AVX512_HOST)[1].endswith(tune) and not env("avx2", AVX512_HOST, "")[1].endswith(tune)
    name, feats = env("avx2", AVX512_HOST)
    assert name is None and "+avx2" in feats.split(",") and "+fma" in feats.split(",")
    assert not [f for f in feats.split(",") if f.startswith("+") and ("avx512" in f or "evex512" in f)]
    assert env("baseline", AVX512_HOST) == ("generic", None)
    # Automatic on an AVX2 CPU: the avx2 path's setting, so that the label (and the kernels'
    # sizes) follow from the features; Numba's own default only without AVX2.
    assert env(None, AVX2_HOST) == env("avx2", AVX2_HOST) == (None, AVX2_HOST + tune)
    assert _config._isa_of_target(*env(None, AVX2_HOST)) == "avx2"
    assert env(None, "+64bit,+sse2,-avx2") == (None, None)
    with pytest.raises(ValueError, match="FASTCNN_ISA=avx512 but this CPU has no AVX-512"):
        env("avx512", AVX2_HOST)
    with pytest.raises(ValueError, match="no AVX2"):
        env("avx2", "+64bit,+sse2")
    monkeypatch.setenv("FASTCNN_ISA", "sse9")
    with pytest.raises(ValueError, match="FASTCNN_ISA must be one of"):
        _config.requested_isa()
    monkeypatch.setenv("FASTCNN_ISA", " AVX2 ")
    assert _config.requested_isa() == "avx2"


@pytest.mark.parametrize("value, expected", [(None, list(_config.NUMBA_LLVM_OPTIONS)), ("", []),
                                             (" -a=1  -b ", ["-a=1", "-b"])])
def test_numba_llvm_options_default_and_override(monkeypatch, value, expected):
    """``_config.NUMBA_LLVM_OPTIONS`` go to LLVM unless ``FASTCNN_NUMBA_LLVM_OPTIONS`` replaces
    them (empty: none)."""
    ll = pytest.importorskip("llvmlite.binding")
    seen = []
    monkeypatch.setattr(ll, "set_option", lambda name, option: seen.append(option))
    if value is None:
        monkeypatch.delenv(_config.ENV_LLVM_OPTIONS, raising=False)
    else:
        monkeypatch.setenv(_config.ENV_LLVM_OPTIONS, value)
    _config._set_numba_llvm_options()
    assert seen == expected


def test_numba_cache_location_order(tmp_path):
    """Numba's own order (NUMBA_CACHE_DIR, next to the sources, the user-wide cache), then a
    private temporary directory, then no cache; a foreign or group-writable temporary
    directory is refused (Numba would load its files as machine code)."""
    choice = _config._numba_cache_choice
    kernels, tmp = str(tmp_path / "pkg" / "_kernels"), str(tmp_path / "tmp")
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    def only(*ok):
        return lambda path: any(path.startswith(str(tmp_path / o)) for o in ok)
    given = {"NUMBA_CACHE_DIR": str(tmp_path / "given"), **env}
    assert choice(given, kernels, tmp, only("given"))[:2] == (str(tmp_path / "given"), False)
    location, set_env, why = choice(given, kernels, tmp, only("xdg"))  # (unwritable: passed over, as Numba does)
    assert location == str(tmp_path / "xdg" / "numba") and not set_env and "is not writable" in why
    assert choice(env, kernels, tmp, only("pkg", "xdg"))[:2] == (kernels + "/__pycache__", False)
    assert choice(env, kernels, tmp, only("xdg"))[:2] == (str(tmp_path / "xdg" / "numba"), False)
    location, set_env, why = choice(env, kernels, tmp, only())
    assert set_env and location.startswith(tmp) and "private temporary" in why
    assert os.stat(location).st_mode & 0o777 == 0o700  # made by the real _private_dir
    assert choice(env, kernels, tmp, only(), private=lambda p: False) == (
        None, False, "no writable location: the kernels compile anew in every process")
    # The real checks: a file where a directory should be, a group-writable directory.
    (tmp_path / "file").write_text("")
    assert not _config._writable_dir(str(tmp_path / "file" / "sub"))
    assert _config._writable_dir(str(tmp_path / "new" / "sub"))
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    assert not _config._private_dir(str(shared))
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root can give a directory away
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        assert not _config._private_dir(str(foreign))


def test_numba_backend_loads_from_a_read_only_package(tmp_path):
    """With no writable location of Numba's own (the kernels' ``__pycache__`` and HOME
    unusable, no NUMBA_CACHE_DIR), Numba would refuse the kernels and the backend would not
    load: it loads, runs, and caches in a private temporary directory."""
    import shutil
    import subprocess
    import sys

    import fastcnn

    from utils import NEUTRAL_CWD

    if "numba" not in fastcnn.available_backends():
        pytest.skip("no Numba backend in this installation")
    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(fastcnn.__file__), site / "fastcnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (site / "fastcnn" / "_kernels" / "__pycache__").write_text("")  # not a directory: unusable
    (tmp_path / "file").write_text("")
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), HOME=str(tmp_path / "file" / "home"), TMPDIR=str(tmp_path / "tmp"))
    code = ("import numpy as np, fastcnn; from fastcnn import _config; from fastcnn.functional import relu; "
            "print(fastcnn.available_backends()); "
            "x = np.linspace(-1, 1, 4099, dtype=np.float32); "
            "fastcnn.set_backend('numba'); y = relu(x); print(bool((y == np.maximum(x, 0)).all())); "
            "print(fastcnn.__file__, _config.NUMBA_CACHE['dir'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=NEUTRAL_CWD, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    backends, correct, where = out.stdout.strip().splitlines()[-3:]
    assert backends.startswith("('numpy', 'numba'"), backends  # (before: Numba refused the kernels)
    assert correct == "True"
    module, cache = where.split()
    assert module.startswith(str(site)) and cache.startswith(str(tmp_path / "tmp" / "fastcnn-numba-cache-"))
    assert any(p.suffix == ".nbi" for p in (tmp_path / "tmp").rglob("*"))


def test_numba_cache_dropped_when_a_compiled_in_source_changes(tmp_path):
    """Numba checks a cached kernel against its own file only: after an edit of a helper module
    (``_simd.py`` here) ``import fastcnn`` drops the package's cached kernels, once."""
    import shutil
    import subprocess
    import sys

    import fastcnn

    from utils import NEUTRAL_CWD

    if "numba" not in fastcnn.available_backends():
        pytest.skip("no Numba backend in this installation")
    site = tmp_path / "site"
    shutil.copytree(os.path.dirname(fastcnn.__file__), site / "fastcnn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cache = site / "fastcnn" / "_kernels" / "__pycache__"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    code = ("import sys, numpy as np, fastcnn; from fastcnn.functional import relu; "
            "from fastcnn._kernels import _common; import os; "
            f"print(sorted(f for f in os.listdir({str(cache)!r}) if f.endswith('.nbi'))); "
            "x = np.linspace(-1, 1, 11, dtype=np.float32); "
            "fastcnn.set_backend('numba'); y = relu(x); print(bool((y == np.maximum(x, 0)).all()))")

    def run():
        out = subprocess.run([sys.executable, "-c", code], cwd=NEUTRAL_CWD, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        listed, correct = out.stdout.strip().splitlines()[-2:]
        assert correct == "True"
        return eval(listed)

    assert not any(f.startswith("activation.") for f in run())  # nothing cached yet
    stamp = (cache / "fastcnn-kernels.sha256").read_text()
    assert any(f.startswith("activation.") for f in run())  # kept: same sources
    assert (cache / "fastcnn-kernels.sha256").read_text() == stamp
    with open(site / "fastcnn" / "_kernels" / "_simd.py", "a") as f:
        f.write("# an edit\n")
    assert run() == []  # every cached kernel dropped before use ...
    assert (cache / "fastcnn-kernels.sha256").read_text() != stamp
    assert any(f.startswith("activation.") for f in run())  # ... and cached again


@pytest.mark.parametrize("preset", [{}, {"GOMP_SPINCOUNT": "7", "OMP_WAIT_POLICY": "ACTIVE"},
                                    {"FASTCNN_NO_THREAD_DEFAULTS": "1"}])
def test_thread_runtime_defaults_are_set_before_numpy_unless_given(preset):
    """``import fastcnn`` puts ``_config.THREAD_DEFAULTS`` in ``os.environ``, keeps values the
    user set, and sets nothing with FASTCNN_NO_THREAD_DEFAULTS=1."""
    import json
    import os
    import subprocess
    import sys

    from utils import NEUTRAL_CWD

    code = ("import sys, os, json; import fastcnn; "
            f"print(json.dumps({{k: os.environ.get(k) for k in {sorted(_config.THREAD_DEFAULTS)!r}}}))")
    env = {k: v for k, v in os.environ.items() if k not in _config.THREAD_DEFAULTS
           and k != "FASTCNN_NO_THREAD_DEFAULTS"}
    env.update(preset)
    out = subprocess.run([sys.executable, "-c", code], cwd=NEUTRAL_CWD, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if "FASTCNN_NO_THREAD_DEFAULTS" in preset:
        assert got == {k: None for k in _config.THREAD_DEFAULTS}
    else:
        assert got == {k: preset.get(k, v) for k, v in _config.THREAD_DEFAULTS.items()}


def test_numba_vector_sizes_follow_the_target():
    """The Numba kernels' vector sizes are a function of NUMBA_CPU_NAME / NUMBA_CPU_FEATURES
    alone (the on-disk cache is keyed on them), whoever set them: each setting
    ``_numba_isa_env`` makes maps back to its ISA, and a child process, which inherits this
    process's settings, runs the same sizes (it once took them for a user's and ran default
    sizes against kernels cached with AVX-512 ones: wrong results)."""
    for isa, host in (("avx512", AVX512_HOST), ("avx2", AVX512_HOST), ("baseline", AVX512_HOST)):
        assert _config._isa_of_target(*_config._numba_isa_env(isa, host)) == isa
    assert _config._isa_of_target(None, None) == "numba default"
    import os
    import subprocess
    import sys

    import fastcnn  # noqa: F401  (sets this process's NUMBA_CPU_* for the child to inherit)
    code = "import fastcnn._config as c; print(c.NUMBA_ISA['isa'])"
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == _config.NUMBA_ISA["isa"]


def test_dense_rows_thresholds_as_the_tests_assume():
    """tests/utils.py's check of the dense rows path knows which batches' gradients run it."""
    import utils

    assert _config.DENSE_ROWS_GRAD_BATCH == utils.ROWS_GRAD_BATCH
    assert _config.dense_rows(utils.ROWS_GRAD_BATCH, True) and not _config.dense_rows(utils.ROWS_GRAD_BATCH + 1, True)
    assert max(n for n, _, _ in utils.DENSE_ROWS_SHAPES) <= _config.DENSE_ROWS_BATCH
    assert min(n for n, _, _ in utils.DENSE_ROWS_FORCED_SHAPES) > _config.DENSE_ROWS_BATCH  # beyond auto's
