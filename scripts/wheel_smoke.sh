#!/usr/bin/env bash
# Smoke-test a built fastcnn wheel the way a user gets it.
#
#   FASTCNN_DATA=/path/to/mnist bash scripts/wheel_smoke.sh wheelhouse/fastcnn-*.whl
#
# In a NEW virtual environment outside the source tree (mktemp -d; removed afterwards unless
# FASTCNN_SMOKE_KEEP=1): checks that Cython is not installed (before and after installing the
# wheel: the wheel must need no compiler toolchain), `pip install WHEEL`, then from a
# directory outside the source tree checks that fastcnn and its compiled extensions are
# imported from the venv's site-packages, runs `fastcnn info` (which must print the build
# information) and a short training run that must exit 0 and end with `test accuracy: X`.
#
# Environment: FASTCNN_DATA (MNIST directory, required), PYTHON (default python3; must match
# the wheel's cpXY tag).
set -euo pipefail

die() { printf 'wheel_smoke: FAIL: %s\n' "$*" >&2; exit 1; }
say() { printf '\n== wheel_smoke: %s\n' "$*"; }

[ $# -eq 1 ] || die "usage: $0 WHEEL (exactly one wheel; got $# arguments)"
[ -f "$1" ] || die "no such wheel: $1"
wheel=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
[ -n "${FASTCNN_DATA:-}" ] || die "FASTCNN_DATA is not set (the MNIST directory)"
[ -d "$FASTCNN_DATA" ] || die "FASTCNN_DATA=$FASTCNN_DATA is not a directory"
export FASTCNN_DATA
# Nothing may leak in from the source tree or the user's site-packages.
unset PYTHONPATH PYTHONHOME
export PYTHONNOUSERSITE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fastcnn-smoke.XXXXXX")
case "$tmp/" in "$repo"/*) die "temporary directory $tmp is inside the source tree" ;; esac
if [ "${FASTCNN_SMOKE_KEEP:-0}" = 1 ]; then
    echo "keeping $tmp"
else
    trap 'rm -rf "$tmp"' EXIT
fi
venv=$tmp/venv
work=$tmp/work
mkdir -p "$work"

say "fresh venv $venv"
"$PYTHON" -m venv "$venv"
py=$venv/bin/python
if "$py" -c 'import Cython' 2>/dev/null; then die "Cython is importable in the fresh venv"; fi
echo "Cython: not installed (good)"

say "pip install ${wheel##*/}"
"$py" -m pip install --quiet "$wheel"
if "$py" -c 'import Cython' 2>/dev/null; then die "installing the wheel pulled in Cython"; fi
echo "Cython: still not installed (good)"

cd "$work"   # outside the source tree: 'import fastcnn' cannot pick up the checkout
say "import location (cwd $work)"
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
site=$(cd "$site" && pwd -P)
loc=$("$py" -c 'import fastcnn, sys; print(fastcnn.__file__)')
ext=$("$py" -c 'import fastcnn._ext._omp as m; print(m.__file__)')
echo "fastcnn.__file__       = $loc"
echo "fastcnn._ext._omp file = $ext"
for f in "$loc" "$ext"; do
    real=$(cd "$(dirname "$f")" && pwd -P)/$(basename "$f")
    case "$real" in
        "$site"/*) ;;
        *) die "$f is not in the venv's site-packages ($site)" ;;
    esac
    case "$real" in "$repo"/*) die "$f is in the source tree" ;; esac
done
# Packaging check (hard): every compiled extension loads (bundled libgomp found through the
# RPATH auditwheel set) and the Numba backend loads.  Whether the registry accepts the
# Cython backend also depends on the kernels implementing every primitive, which is a
# source, not a packaging, matter: reported, not required.
"$py" - <<'PY' || die "the compiled extensions or the Numba backend do not load"
import importlib, pkgutil, sys
import fastcnn
import fastcnn._ext._omp as omp
names = sorted(m.name for m in pkgutil.iter_modules([omp.__file__.rsplit("/", 1)[0]]))
for name in names:
    importlib.import_module("fastcnn._ext." + name)
print("compiled extensions import OK:", " ".join(names))
import fastcnn._heapcache  # (the large-array cache: outside fastcnn._ext)
print("heap:", fastcnn._heap.state, "array cache:", fastcnn._heap.array_cache)
if fastcnn._heap.state == "keep" and fastcnn._heap.array_cache != "on":
    sys.exit(1)
b = fastcnn.available_backends()
print("backends:", ", ".join(b))
if "numba" not in b:
    print("numba backend unavailable:", fastcnn._backend.backend_error("numba"))
    sys.exit(1)
if "cython" not in b:
    print("WARNING: cython backend unavailable:", fastcnn._backend.backend_error("cython"))
PY

say "fastcnn info"
"$venv/bin/fastcnn" info | tee "$tmp/info.txt"
grep -q '^build: .*compiler: ' "$tmp/info.txt" || die "fastcnn info printed no build information"
if grep -q 'march=native' "$tmp/info.txt"; then die "the wheel was compiled with -march=native"; fi

say "fastcnn train --model bn --limit 2000 --epochs 1"
set +e
"$venv/bin/fastcnn" train --model bn --limit 2000 --epochs 1 --out "$tmp/run" --no-progress \
    2>&1 | tee "$tmp/train.log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -eq 0 ] || die "fastcnn train exited with status $rc"
last=$(grep -v '^[[:space:]]*$' "$tmp/train.log" | tail -n 1)
[[ "$last" =~ ^test\ accuracy:\ [0-9]+(\.[0-9]+)?$ ]] \
    || die "the last line of fastcnn train is not 'test accuracy: X' but: $last"
for f in model.npz metrics.json; do
    [ -s "$tmp/run/$f" ] || die "fastcnn train did not write $f"
done

say "OK: ${wheel##*/} installs and runs from $site ($last)"
