"""Where a Numba primitive spends its time, by function and by instruction: ``perf record -e
cpu-clock`` of this process while it calls one primitive of ``benches/conv_direct_gflops.py``'s
cases in a loop (or, as ``pooled forward`` / ``pooled backward``, the case's convolution with
ReLU and 2x2 max pooling, stride 1).  ``perf`` cannot name Numba's JIT code, so the probe
compiles in a fresh Numba cache (a kernel loaded from a cache keeps no object file), writes
``/tmp/perf-PID.map`` (each compiled function of the package's kernels: its address from the
JIT, its size from the object's symbol table) and maps each sample onto the object's
disassembly (``objdump -d``): the functions' shares, then the hottest instructions of the
hottest functions in address order.  The objects and ``samples.txt`` (object, function,
offset, samples) stay in the temporary directory it names, for a closer look.

Usage: python benches/probes/jit_profile.py SHAPE-SUBSTRING PRIMITIVE [SECONDS] [THREADS]
  e.g. env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benches/probes/jit_profile.py "lenet conv2" \
           "winograd forward" 8 1
"""
import bisect
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

# A fresh Numba cache: the code of a kernel loaded from the cache keeps no object file to read,
# one compiled in this process does (compiling the primitive's kernels takes a minute or two).
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp()

import fastcnn  # isort: skip  (before NumPy: docs/PERFORMANCE.md)

import numpy as np

from fastcnn import _backend

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conv_direct_gflops import SHAPES, case  # noqa: E402


def _libraries():
    """Every code library of the package's compiled kernels (with the libraries they link:
    the parallel loops' bodies), once each."""
    import numba

    seen, out = set(), []

    def walk(lib):
        if id(lib) in seen:
            return
        seen.add(id(lib))
        out.append(lib)
        for sub in getattr(lib, "_linking_libraries", ()):
            walk(sub)

    for mod in list(sys.modules.values()):
        if not getattr(mod, "__name__", "").startswith("fastcnn._kernels"):
            continue
        for obj in list(vars(mod).values()):
            for d in (getattr(obj, "parallel", None), getattr(obj, "serial", None), obj):
                if isinstance(d, numba.core.registry.CPUDispatcher):
                    for cres in d.overloads.values():
                        walk(cres.library)
    return out


def _symbols(libs, tmp):
    """``[(address, size, name, object file, offset in it)]`` of the libraries' functions."""
    syms = []
    for k, lib in enumerate(libs):
        try:
            obj = lib._get_compiled_object()
        except (RuntimeError, ValueError):  # (Numba's own runtime libraries: no object kept)
            continue
        path = os.path.join(tmp, f"lib{k}.o")
        with open(path, "wb") as f:
            f.write(obj)
        out = subprocess.run(["nm", "-S", "--defined-only", path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) != 4 or parts[2].lower() != "t":
                continue
            off, size, _, name = int(parts[0], 16), int(parts[1], 16), parts[2], parts[3]
            try:
                addr = lib.get_pointer_to_function(name)
            except Exception:  # (local symbols the engine does not export)
                continue
            if addr:
                syms.append((addr, size, name, path, off))
    return sorted(set(syms))


def _disassembly(path, name):
    """``{offset in the object: instruction text}`` of function ``name``."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={name}", path],
                         capture_output=True, text=True).stdout
    ins = {}
    for line in out.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
        if m:
            ins[int(m.group(1), 16)] = m.group(2).strip()
    return ins


def pooled(rng, x_shape, oc, k, s, pad):
    """``{"pooled forward": f, "pooled backward": f}``: the direct convolution with ReLU and 2x2
    max pooling of a ``SHAPES`` case (stride 1) and its backward as in training (the input
    gradient only past 3 input channels), on the Numba backend."""
    mod = _backend.ops("numba")
    n, c, h, wd = x_shape
    p = (k - 1) // 2 if pad == "same" else pad
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal((oc, c, k, k), dtype=np.float32)
    b = np.zeros(oc, np.float32)
    oh, ow = h + 2 * p - k + 1, wd + 2 * p - k + 1
    y = np.empty((n, oc, oh // 2, ow // 2), np.float32)
    idx = np.empty(y.shape, np.int32)
    mod.conv2d_direct_forward_maxpool2(x, w, b, 1, 1, p, p, 1, oh, ow, y, idx)
    gp = rng.standard_normal(y.shape, dtype=np.float32)
    gx = np.empty_like(x) if c > 3 else np.empty((0, 0, 0, 0), np.float32)
    gw, gb = np.empty_like(w), np.empty_like(b)
    return {"pooled forward": lambda: mod.conv2d_direct_forward_maxpool2(x, w, b, 1, 1, p, p, 1, oh, ow, y, idx),
            "pooled backward": lambda: mod.conv2d_direct_backward_maxpool2(gp, idx, y, x, w, 1, 1, p, p, oh, ow, gx,
                                                                           gw, gb)}


def main(shape, prim, seconds=8, threads=1):
    fastcnn.set_backend("numba")
    fastcnn.set_num_threads(int(threads))
    spec = next(s for s in SHAPES if shape in s[0])
    if prim.startswith("pooled"):
        fn = pooled(np.random.default_rng(0), *spec[1:])[prim]
    else:
        fn = case(np.random.default_rng(0), *spec[1:])[0](_backend.ops("numba"))[prim]
    fn()
    tmp = tempfile.mkdtemp()
    syms = _symbols(_libraries(), tmp)
    with open(f"/tmp/perf-{os.getpid()}.map", "w") as f:
        for addr, size, name, _, _ in syms:
            f.write(f"{addr:x} {size:x} {name}\n")
    data = os.path.join(tmp, "perf.data")
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4000", "-p", str(os.getpid()), "-o",
                             data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    t_end, calls_n = time.perf_counter() + float(seconds), 0
    while time.perf_counter() < t_end:
        fn()
        calls_n += 1
    perf.send_signal(signal.SIGINT)
    perf.wait()
    ips = subprocess.run(["perf", "script", "-i", data, "-F", "ip"], capture_output=True, text=True).stdout.split()
    starts = [s[0] for s in syms]
    by_fn, by_ins = collections.Counter(), collections.Counter()
    for t in ips:
        ip = int(t, 16)
        k = bisect.bisect_right(starts, ip) - 1
        if k >= 0 and ip < syms[k][0] + syms[k][1]:
            by_fn[k] += 1
            by_ins[k, ip - syms[k][0]] += 1
        else:
            by_fn[-1] += 1
    total = sum(by_fn.values())
    print(f"{spec[0]} {prim}, numba, {threads} thread(s): {calls_n} calls in {seconds} s, {total} samples "
          f"(objects and samples in {tmp})")
    with open(os.path.join(tmp, "samples.txt"), "w") as f:  # (function, offset, samples)
        for (k, o), c in sorted(by_ins.items()):
            f.write(f"{syms[k][3]} {syms[k][2]} {syms[k][4] + o:#x} {c}\n")
    for k, cnt in by_fn.most_common(12):
        name = "(outside the kernels' JIT code)" if k < 0 else syms[k][2]
        print(f"  {cnt / total:6.1%}  {name[:110]}")
    for k, cnt in by_fn.most_common(4):
        if k < 0 or cnt < 0.05 * total:
            continue
        addr, size, name, path, off = syms[k]
        ins = _disassembly(path, name)
        print(f"\n== {name[:100]}: hottest instructions (share of all samples), offset in the function")
        hot = sorted(((c, o) for (kk, o), c in by_ins.items() if kk == k), reverse=True)[:25]
        for c, o in sorted(hot, key=lambda t: t[1]):
            print(f"  {c / total:6.2%}  +{o:#07x}  {ins.get(off + o, '?')}")
    os.remove(f"/tmp/perf-{os.getpid()}.map")


if __name__ == "__main__":
    main(*sys.argv[1:])
