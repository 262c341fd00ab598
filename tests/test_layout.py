"""The layout of the test suite: one ``test_<module>.py`` per module, public names only.

* Every test module is named for the module of fastcnn it tests, ``test_<m>.py`` for
  ``fastcnn.<m>`` or for the private ``fastcnn._<m>``, or for a behaviour across modules listed
  with the reason in ``CROSS_CUTTING``.
* A test module uses public names of fastcnn only, except ``test_<m>.py``, the tests of the
  private module ``fastcnn._<m>`` (or of the private names of a public module ``fastcnn.<m>``),
  which may use that module's private names, and the few other private modules listed with
  the reason in ``COLLABORATORS``.  Uses are found in imports, in attribute chains such as
  ``fastcnn._threads.max_threads()`` or ``F._conv2d_forward``, and in the code that tests run
  in subprocesses (string constants that parse as Python with an import).
* No module of the suite imports ``conftest`` (pytest provides the fixtures; helpers live in
  ``utils.py``) or a test module (``test_*``).
* The helper modules (``utils.py``, ``naive.py``, ...) use public names only.
"""
import ast
import importlib.util
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

#: Suites named for a behaviour that crosses modules rather than for one module.
CROSS_CUTTING = {
    "test_faults.py": "fault injection: forks, concurrent use, corrupt and hostile files, signals, "
                      "interruption and resume, non-finite state, a full disk, fuzzed layer inputs, "
                      "each through the public entry points a user would hit it by",
    "test_thread_determinism.py": "whole training runs bit-identical across runs and thread counts",
    "test_examples.py": "the scripts in examples/ end to end",
    "test_benches.py": "the analysis in the benchmark scripts of benches/ (their timed children need the peers)",
    "test_layout.py": "the test suite itself",
}

#: Private modules that the tests of a private module may use besides their own, and why.
COLLABORATORS = {
    "test_backend.py": {
        "_ref": "the reference primitives are the oracle of every compiled backend",
        "_ext": "the Cython build flags say whether its element-wise kernels may contract a * b + c "
                "(then they match the reference to rounding, else bit for bit)",
        "_config": "POOLED_DGRAD_MIN_PATCH says which pooled input gradients come from the winners (their "
                   "own order of the sums) and which are the composition's bit for bit",
    },
    "test_kernels.py": {
        "_ref": "the float64 reference primitives are the oracle of the Numba kernels",
        "_config": "PAR_MIN_WORK decides between the kernels' serial and parallel compilations; "
                   "NUMBA_ISA says which ISA the kernels were compiled for",
    },
    "test_ext.py": {
        "_ref": "the reference primitives are the oracle of the kernels under each SIMD path",
        "_config": "NUMBA_ISA says whether the Numba kernels run the Cython kernels' SIMD path (then "
                   "their Winograd kernels give the same bytes)",
    },
    "test_dispatch.py": {
        "_backend": "conv_plan takes a backend's primitive module, which the registry hands out",
        "_threads": "the auto rule depends on whether SciPy's BLAS runs single-threaded",
    },
    "test_ref.py": {
        "functional": "the reference's convolution is functional's driver over the reference "
                      "primitives, run in float64 for the finite differences",
    },
}


def _is_module(dotted):
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, AttributeError, ValueError):
        return False


def _owner(dotted):
    """Whose private name ``dotted`` is: ``"_m"`` for the private module ``fastcnn._m`` and the
    names in it, ``"m"`` for a private name of the public module ``fastcnn.m``, None if public."""
    parts = dotted.split(".")
    if parts[0] != "fastcnn":
        return None
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            if _is_module(".".join(parts[: i + 1])):
                return part
            return parts[i - 1] if i > 1 else "fastcnn"
    return None


def _code_strings(tree):
    """String constants that are Python code importing something (run in a subprocess)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            try:
                sub = ast.parse(textwrap.dedent(node.value))
            except SyntaxError:
                continue
            if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(sub)):
                yield node.lineno, sub


def _uses(tree, line=None):
    """``(line, dotted name)`` of every fastcnn name, and ``(line, "import <module>")`` of every
    module imported, in ``tree``."""
    aliases, out = {}, []
    for node in ast.walk(tree):
        where = line or getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((where, "import " + a.name))
                if a.name.split(".")[0] == "fastcnn":
                    out.append((where, a.name))
                    aliases[a.asname or "fastcnn"] = a.name if a.asname else "fastcnn"
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((where, "import " + node.module))
            if node.module.split(".")[0] == "fastcnn":
                out.append((where, node.module))
                for a in node.names:
                    out.append((where, f"{node.module}.{a.name}"))
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, base = [], node
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                out.append((line or node.lineno, ".".join([aliases[base.id]] + chain[::-1])))
    return out


def violations(source, filename, code_strings=True):
    """What breaks the layout in the module ``filename`` (a name in tests/) whose text is
    ``source``: one line per use, naming the file, the line and the use.  ``code_strings``:
    also check the code in string constants (this module's are examples of what to find)."""
    tree = ast.parse(source)
    uses = _uses(tree)
    for lineno, sub in _code_strings(tree) if code_strings else ():
        uses += _uses(sub, line=lineno)
    allowed = COLLABORATORS.get(filename, {})
    longest = {}
    for lineno, use in uses:  # per line and private module, the longest name used
        key = (lineno, _owner(use) if not use.startswith("import ") else use)
        if len(use) > len(longest.get(key, "")):
            longest[key] = use
    found = []
    for lineno, use in sorted((k[0], u) for k, u in longest.items()):
        if use.startswith("import "):
            top = use[len("import "):].split(".")[0]
            if top == "conftest":
                found.append(f"{filename}:{lineno}: imports conftest (helpers are in utils.py, fixtures come "
                             "from pytest)")
            elif top.startswith("test_"):
                found.append(f"{filename}:{lineno}: imports the test module {top} (shared helpers go to "
                             "utils.py)")
            continue
        owner = _owner(use)
        if owner is None or owner in allowed or filename == f"test_{owner.lstrip('_')}.py":
            continue
        home = f"test_{owner.lstrip('_')}.py"
        found.append(f"{filename}:{lineno}: uses the private name {use} (only {home} may)")
    return list(dict.fromkeys(found))


def layout_violations(directory):
    """``violations`` of every Python module in ``directory`` (the test suite)."""
    found = []
    for path in sorted(Path(directory).glob("*.py")):
        found += violations(path.read_text(), path.name, code_strings=path.name != Path(__file__).name)
    return found


def test_every_test_module_is_named_for_a_module_or_a_listed_behaviour():
    for path in sorted(TESTS.glob("test_*.py")):
        name = path.stem[len("test_"):]
        assert path.name in CROSS_CUTTING or _is_module(f"fastcnn.{name}") or _is_module(f"fastcnn._{name}"), (
            f"{path.name} is named for no module of fastcnn: name it test_<module>.py for the module it tests, "
            "or list the behaviour it tests in CROSS_CUTTING")


def test_the_suite_keeps_its_layout():
    found = layout_violations(TESTS)
    assert not found, "\n".join(found)


def test_collaborators_are_private_modules_of_private_module_tests():
    for filename, modules in COLLABORATORS.items():
        assert (TESTS / filename).is_file(), filename
        tested = "fastcnn._" + filename[len("test_"):-len(".py")]
        assert _is_module(tested), f"{filename} is not the test file of a private module"
        for name, why in modules.items():
            assert why and (name == "functional" or _is_module("fastcnn." + name)), (filename, name)


@pytest.mark.parametrize("filename,source,expected", [
    ("test_functional.py", "from fastcnn import _dispatch", "fastcnn._dispatch"),
    ("test_functional.py", "import fastcnn._threads as T\nT.max_threads()", "fastcnn._threads"),
    ("test_functional.py", "import fastcnn\nfastcnn._threads.max_threads()", "fastcnn._threads.max_threads"),
    ("test_functional.py", "from fastcnn._kernels import conv_direct", "fastcnn._kernels.conv_direct"),
    ("test_functional.py", "from fastcnn import _config\n_config.PAR_MIN_WORK", "fastcnn._config"),
    ("test_layers.py", "from fastcnn.model import Sequential, _declared_state", "fastcnn.model._declared_state"),
    ("test_layers.py", "from fastcnn import functional as F\nF._conv2d_forward", "fastcnn.functional._conv2d_forward"),
    ("test_faults.py", 'CODE = """\nimport sys\nfrom fastcnn._runio import lock_output_dir\n"""', "fastcnn._runio"),
    ("test_kernels.py", "from fastcnn import _dispatch", "fastcnn._dispatch"),
    ("utils.py", "from fastcnn import _ref", "fastcnn._ref"),
    ("test_train.py", "from conftest import NEUTRAL_CWD", "imports conftest"),
    ("test_train.py", "def f():\n    import conftest", "imports conftest"),
    ("test_export.py", "from test_graph import inception", "imports the test module test_graph"),
])
def test_the_check_finds_what_breaks_the_layout(tmp_path, filename, source, expected):
    found = violations(source, filename)
    assert found and all(f.startswith(filename + ":") for f in found), found
    assert any(expected in f for f in found), found
    (tmp_path / filename).write_text(source)  # the same, found in a directory of test modules
    assert layout_violations(tmp_path) == found


@pytest.mark.parametrize("filename,source", [
    ("test_dispatch.py", "from fastcnn import _dispatch\n_dispatch.conv_plan"),
    ("test_dispatch.py", "from fastcnn import _backend"),  # a listed collaborator
    ("test_kernels.py", "from fastcnn._kernels import conv_direct as D\nD._row_acc"),
    ("test_model.py", "from fastcnn.model import _declared_state"),
    ("test_functional.py", "import fastcnn\nimport numpy as np\nfastcnn.config(conv='direct')\nnp._core\n"
                           "fastcnn.__version__\nfrom fastcnn.functional import ConvGeometry"),
    ("test_faults.py", 'DOC = """Uses ``fastcnn._runio`` in prose; import nothing."""'),
])
def test_the_check_lets_the_layout_pass(filename, source):
    assert violations(source, filename) == []
