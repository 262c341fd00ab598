"""Explicit SIMD vectors for the Numba kernels' register tiles (docs/PERFORMANCE.md, section 10).

LLVM keeps a loop's scalar sums in registers but not an array of them: the direct
convolution's tile of output pixels x output channels is therefore a tuple of LLVM vectors
(``<VL x float>``), carried through the loop over the taps and updated by the intrinsics below,
each of which emits a fixed, small piece of IR (loads, broadcasts, ``llvm.fmuladd``).  The
loads and stores do no bounds checks: the callers' buffers are sized for any ``VL <= MAX_VL``.

``VL`` (lanes), ``J`` and ``V`` (output channels and pixel vectors of a forward tile) and ``WT``
(taps of a weight-gradient tile of two channel vectors) follow Numba's SIMD path
(:data:`fastcnn._config.NUMBA_ISA`), as the Cython kernels' per ISA: the accumulators, the
input vectors and one broadcast fit the register file (32 zmm with AVX-512, 16 ymm / xmm
otherwise).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from .. import _config

#: The largest VL of any path: callers size their buffers with it, so that a kernel compiled for
#: any path stays inside them.
MAX_VL = 16

_ISA = _config.NUMBA_ISA["isa"]
#: (lanes, output channels per forward tile, pixel vectors per forward tile, taps per
#: weight-gradient tile of 2 channel vectors), as the Cython kernels' per ISA; TAPS_MAX: the
#: taps of a weight-gradient tile of one channel vector, at most (the Cython FCD_TAPS_MAX).
VL, J, V, WT = {"avx512": (16, 8, 3, 12), "avx2": (8, 4, 3, 6), "baseline": (4, 4, 2, 6)}.get(_ISA, (8, 4, 3, 6))
TAPS_MAX = 27 if VL == 16 else 2 * WT
#: Channel tiles of the direct forward (as the Cython kernels' FCD_CV, FCD_CR): CV output-channel
#: vectors (JC channels) x up to CR pixels.
CV = 2
JC = CV * VL
CR = {"avx512": 12}.get(_ISA, 6)
#: Rows and vectors of the dense layers' GEMM tile (as src_ext/gemm.h): 24 / 12 accumulators.
GR, GV = {"avx512": (6, 4), "avx2": (6, 2)}.get(_ISA, (6, 2))


class Vec(types.Type):
    """``lanes`` float32 (or, with ``double``, float64) lanes in one LLVM vector value."""

    def __init__(self, lanes, double=False):
        self.lanes, self.double = lanes, double
        super().__init__(name=f"f{64 if double else 32}x{lanes}")


#: ``VL`` float32 lanes (the register tiles); ``J`` float64 lanes (the Winograd weight
#: transforms' sums, one lane per output channel of a block).
vec, dvec = Vec(VL), Vec(J, double=True)


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        lane = ir.DoubleType() if fe_type.double else ir.FloatType()
        super().__init__(dmm, fe_type, ir.VectorType(lane, fe_type.lanes))


_LLV = ir.VectorType(ir.FloatType(), VL)
_I32 = ir.IntType(32)
_LLD = ir.VectorType(ir.DoubleType(), J)


@intrinsic
def dvload(typingctx, arr, i):
    """``arr[i : i + J]`` of a float64 array."""
    def codegen(context, builder, sig, args):
        return builder.load(_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], _LLD), align=8)
    return dvec(arr, i), codegen


@intrinsic
def dvstore(typingctx, arr, i, v):
    """``arr[i : i + J] = v``: float64 lanes into a float64 array, or rounded into a float32 one."""
    def codegen(context, builder, sig, args):
        if sig.args[0].dtype == types.float32:
            x, vt = builder.fptrunc(args[2], ir.VectorType(ir.FloatType(), J)), ir.VectorType(ir.FloatType(), J)
        else:
            x, vt = args[2], _LLD
        builder.store(x, _ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], vt), align=4)
        return context.get_dummy_value()
    return types.none(arr, i, v), codegen


@intrinsic
def dvmul(typingctx, v, s):
    """``v * s`` lane by lane (``s`` a float64 scalar)."""
    def codegen(context, builder, sig, args):
        one = builder.insert_element(ir.Constant(_LLD, ir.Undefined), args[1], ir.Constant(_I32, 0))
        return builder.fmul(args[0], builder.shuffle_vector(one, ir.Constant(_LLD, ir.Undefined),
                                                            ir.Constant(ir.VectorType(_I32, J), [0] * J)))
    return dvec(v, types.float64), codegen


@intrinsic
def dvadd(typingctx, a, b):
    """``a + b`` lane by lane."""
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return dvec(a, b), codegen


def _ptr(context, builder, aty, arr, idx, ity, vt=None):
    """``&arr[idx]`` (1-D array ``arr``, no bounds check) as a pointer to a vector of type ``vt``
    (default ``VL`` floats)."""
    a = context.make_array(aty)(context, builder, arr)
    i = context.cast(builder, idx, ity, types.intp)
    return builder.bitcast(builder.gep(a.data, [i]), (vt or _LLV).as_pointer())


def _splat(builder, s, vt=_LLV):
    """``s`` in every lane of a vector of type ``vt`` (float lanes by default)."""
    one = builder.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, vt.count), [0] * vt.count))


def _zeros(per):
    """An intrinsic returning ``per * len(offs)`` zero vectors for a tuple ``offs``."""
    def zeros(typingctx, offs):
        tt = types.UniTuple(vec, per * offs.count)

        def codegen(context, builder, sig, args):
            return context.make_tuple(builder, tt, [ir.Constant(_LLV, [0.0] * VL)] * tt.count)
        return tt(offs), codegen
    return zeros


def _masked(builder, name, vt):
    """The declaration of ``llvm.masked.load`` or ``.store`` for vectors of type ``vt`` (float,
    double or int32 lanes; the mask a vector of as many i1)."""
    mt = ir.VectorType(ir.IntType(1), vt.count)
    el = {ir.FloatType(): "f32", ir.DoubleType(): "f64"}.get(vt.element, "i32")
    suffix = f"v{vt.count}{el}.p0"
    if name == "load":
        fty = ir.FunctionType(vt, [vt.as_pointer(), _I32, mt, vt])
    else:
        fty = ir.FunctionType(ir.VoidType(), [vt, vt.as_pointer(), _I32, mt])
    return cgutils.get_or_insert_function(builder.module, fty, f"llvm.masked.{name}.{suffix}")


#: Zero accumulators for a tile of ``J`` output channels x ``len(offs)`` pixel vectors.
tile_zero = intrinsic(_zeros(J))
ctile_zero = intrinsic(_zeros(CV))  # (CV vectors per pixel of a channel tile)
#: ``len(offs)`` zero vectors.
vzeros = intrinsic(_zeros(1))
#: Zero accumulators for a GEMM tile of ``GR`` rows x ``len(offs)`` vectors.
gtile_zero = intrinsic(_zeros(GR))


#: Floats per run of the batch-norm reductions, whose next run they prefetch (four cache lines;
#: ``FNK_RUN`` of src_ext/norm_kern.h).
PREFETCH_RUN = 64
#: Rows ahead of the one being packed that the input packings ask for, a cache line per 16
#: floats (``FCD_PACK_AHEAD`` of src_ext/conv_direct.h).
PACK_AHEAD = 16


def _prefetch(lines, locality=3):
    """An intrinsic ``(arr, i)`` asking for the ``lines`` cache lines from ``&arr[i]`` (no
    bounds check: a prefetch past the array does not fault); ``locality`` 3: into every cache
    level, 2: not into L1 (``__builtin_prefetch``'s)."""
    def prefetch(typingctx, arr, i):
        def codegen(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            i8p = ir.IntType(8).as_pointer()
            base = builder.bitcast(builder.gep(a.data, [context.cast(builder, args[1], sig.args[1], types.intp)]),
                                   i8p)
            fn = cgutils.get_or_insert_function(builder.module,
                                                ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                                                "llvm.prefetch.p0")
            for k in range(lines):  # (read, locality, data)
                builder.call(fn, [builder.gep(base, [ir.Constant(ir.IntType(64), 64 * k)]), ir.Constant(_I32, 0),
                                  ir.Constant(_I32, locality), ir.Constant(_I32, 1)])
            return context.get_dummy_value()
        return types.none(arr, i), codegen
    return prefetch


#: Four cache lines (a run of the batch-norm reductions: ``FNK_PREFETCH`` of src_ext/norm_kern.h),
#: and one (:func:`.conv_direct._row_ahead`: ``fcd_row_ahead`` of src_ext/conv_direct.h); one
#: into L2 (:func:`.conv_direct._prefetch_part`: ``fcd_prefetch_part``).
prefetch_run, prefetch_line = intrinsic(_prefetch(4)), intrinsic(_prefetch(1))
prefetch_line_l2 = intrinsic(_prefetch(1, 2))


@intrinsic
def vloads(typingctx, arr, base, offs):
    """The vectors ``arr[base + offs[v] : ... + VL]`` for each offset of the tuple ``offs``."""
    tt = types.UniTuple(vec, offs.count)

    def codegen(context, builder, sig, args):
        aty, bty, oty = sig.args
        b = context.cast(builder, args[1], bty, types.intp)
        out = []
        for v in range(oty.count):
            o = context.cast(builder, builder.extract_value(args[2], v), oty.dtype, types.intp)
            out.append(builder.load(_ptr(context, builder, aty, args[0], builder.add(b, o), types.intp), align=4))
        return context.make_tuple(builder, tt, out)
    return tt(arr, base, offs), codegen


@intrinsic
def vload_even(typingctx, arr, i):
    """``arr[i], arr[i + 2], ..., arr[i + 2*(VL - 1)]``: two plain loads and one shuffle (LLVM
    makes a gather of a stride-2 loop on AVX-512, slow on AMD Zen 4).  Reads ``arr[i : i +
    2*VL]``: the caller keeps that inside the array."""
    def codegen(context, builder, sig, args):
        p = _ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        lo = builder.load(p, align=4)
        hi = builder.load(builder.gep(p, [ir.Constant(_I32, 1)]), align=4)
        return builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(_I32, VL), list(range(0, 2 * VL, 2))))
    return vec(arr, i), codegen


def _split_pairs(builder, a, b):
    """The even and the odd lanes of the ``2*VL`` lanes of ``a`` then ``b``: two shuffles."""
    vi = ir.VectorType(_I32, VL)
    return (builder.shuffle_vector(a, b, ir.Constant(vi, list(range(0, 2 * VL, 2)))),
            builder.shuffle_vector(a, b, ir.Constant(vi, list(range(1, 2 * VL, 2)))))


@intrinsic
def vdeinterleave(typingctx, xs, s, n, xd, de, ne, dd, no):
    """``xd[de + m] = xs[s + 2m]`` for ``m < ne`` and ``xd[dd + m] = xs[s + 2m + 1]`` for ``m <
    no``: the ``n <= 2*VL`` floats ``xs[s : s + n]`` (masked loads: nothing else is read), split
    into their even and odd lanes by two shuffles, each stored as its first lanes
    (:func:`_store_first`)."""
    def codegen(context, builder, sig, args):
        xty, sty, nty, dty, dety, nety, ddty, noty = sig.args
        vi = ir.VectorType(_I32, VL)

        def i32(k):
            return builder.trunc(context.cast(builder, args[k], sig.args[k], types.intp), _I32)

        nn = _splat(builder, i32(2), vi)
        fn, zero = _masked(builder, "load", _LLV), ir.Constant(_LLV, [0.0] * VL)
        p = _ptr(context, builder, xty, args[0], args[1], sty)
        lo = builder.call(fn, [p, ir.Constant(_I32, 4), builder.icmp_signed("<", ir.Constant(vi, list(range(VL))), nn),
                               zero])
        hi = builder.call(fn, [builder.gep(p, [ir.Constant(_I32, 1)]), ir.Constant(_I32, 4),
                               builder.icmp_signed("<", ir.Constant(vi, list(range(VL, 2 * VL))), nn), zero])
        even, odd = _split_pairs(builder, lo, hi)
        _store_first(builder, even, _ptr(context, builder, dty, args[3], args[4], dety), i32(5))
        _store_first(builder, odd, _ptr(context, builder, dty, args[3], args[6], ddty), i32(7))
        return context.get_dummy_value()
    return types.none(xs, s, n, xd, de, ne, dd, no), codegen


@intrinsic
def vtranspose(typingctx, src, s0, sp, dst, d0, dp):
    """``dst[d0 + j*dp + i] = src[s0 + i*sp + j]`` for ``i, j < VL``: VL vectors loaded, transposed
    in registers by log2(VL) rounds of interleaving rows ``i`` and ``i + VL/2``, stored."""
    def codegen(context, builder, sig, args):
        def rows_at(k):  # pointers to the VL rows of argument k's array, base k + 1, pitch k + 2
            b, p = (context.cast(builder, args[k + e], sig.args[k + e], types.intp) for e in (1, 2))
            return [_ptr(context, builder, sig.args[k], args[k], builder.add(b, builder.mul(p, ir.Constant(p.type, i))),
                         types.intp) for i in range(VL)]
        rows = [builder.load(q, align=4) for q in rows_at(0)]
        half = VL // 2
        lo = ir.Constant(ir.VectorType(_I32, VL), [k // 2 + (VL if k % 2 else 0) for k in range(VL)])
        hi = ir.Constant(ir.VectorType(_I32, VL), [half + k // 2 + (VL if k % 2 else 0) for k in range(VL)])
        for _ in range(VL.bit_length() - 1):
            new = []
            for i in range(half):
                new += [builder.shuffle_vector(rows[i], rows[i + half], lo),
                        builder.shuffle_vector(rows[i], rows[i + half], hi)]
            rows = new
        for q, v in zip(rows_at(3), rows):
            builder.store(v, q, align=4)
        return context.get_dummy_value()
    return types.none(src, s0, sp, dst, d0, dp), codegen


def _fma_rows(context, builder, acc, xv, nv, scalars):
    """``acc[r*nv + v] = fmuladd(xv[v], splat(scalars[r]), acc[r*nv + v])``, row by row: one FMA
    where the target has them, a multiply and an add on the baseline path (``llvm.fma`` there
    would be a library call per lane)."""
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_LLV, [_LLV] * 3), f"llvm.fmuladd.v{VL}f32")
    xs = [builder.extract_value(xv, v) for v in range(nv)]
    for r, s in enumerate(scalars):
        b = _splat(builder, s)
        for v in range(nv):
            acc = builder.insert_value(acc, builder.call(fma, [xs[v], b, builder.extract_value(acc, r * nv + v)]),
                                       r * nv + v)
    return acc


def _elem(context, builder, aty, arr, i):
    """``arr[i]`` (1-D array, intp index, no bounds check)."""
    a = context.make_array(aty)(context, builder, arr)
    return builder.load(builder.gep(a.data, [i]))


@intrinsic
def tile_fma(typingctx, acc, xv, wp, wk):
    """``acc[r*V' + v] += xv[v] * wp[wk + r]`` (one FMA each; V' = len(xv), r < len(acc) / V')."""
    def codegen(context, builder, sig, args):
        aty, xty, wty, kty = sig.args
        k = context.cast(builder, args[3], kty, types.intp)
        rows = [_elem(context, builder, wty, args[2], builder.add(k, ir.Constant(k.type, r)))
                for r in range(aty.count // xty.count)]
        return _fma_rows(context, builder, args[0], args[1], xty.count, rows)
    return acc(acc, xv, wp, wk), codegen


def _tap_fma(width):
    """Code generator of the tile FMAs below: ``acc[r*V' + v] += xv[v] * src[base + off[o0 + r0]
    + r - r0]`` with ``r0 = r - r % width`` (args acc, xv, src, base, off, o0): one offset load
    per ``width`` rows."""
    def codegen(context, builder, sig, args):
        aty, xty, sty, bty, oty, o0ty = sig.args
        b = context.cast(builder, args[3], bty, types.intp)
        o0 = context.cast(builder, args[5], o0ty, types.intp)
        rows = []
        for r in range(0, aty.count // xty.count, width):
            o = _elem(context, builder, oty, args[4], builder.add(o0, ir.Constant(o0.type, r)))
            row = builder.add(b, context.cast(builder, o, oty.dtype, types.intp))
            rows += [_elem(context, builder, sty, args[2], builder.add(row, ir.Constant(row.type, j)))
                     for j in range(width)]
        return _fma_rows(context, builder, args[0], args[1], xty.count, rows)
    return codegen


@intrinsic
def tile_fma_at(typingctx, acc, xv, src, base, off, o0):
    """``acc[r*V' + v] += xv[v] * src[base + off[o0 + r]]`` (V' = len(xv), r < len(acc) / V')."""
    return acc(acc, xv, src, base, off, o0), _tap_fma(1)


@intrinsic
def tile_fma_rows3(typingctx, acc, xv, src, base, off, o0):
    """:func:`tile_fma_at` for taps in rows of 3 (``off[o0 + 3*i + j] = off[o0 + 3*i] + j``): one
    offset per row, the row's taps at constant displacements, so a tile's addresses fit the
    general registers."""
    return acc(acc, xv, src, base, off, o0), _tap_fma(3)


@intrinsic
def tile_fma_rows5(typingctx, acc, xv, src, base, off, o0):
    """:func:`tile_fma_rows3` for taps in rows of 5."""
    return acc(acc, xv, src, base, off, o0), _tap_fma(5)


@intrinsic
def rtile_zero(typingctx, rows, offs):
    """``len(rows) * len(offs)`` zero vectors (a tile of ``len(rows)`` rows of ``len(offs)`` vectors)."""
    tt = types.UniTuple(vec, rows.count * offs.count)

    def codegen(context, builder, sig, args):
        return context.make_tuple(builder, tt, [ir.Constant(_LLV, [0.0] * VL)] * tt.count)
    return tt(rows, offs), codegen


@intrinsic
def tile_fma_splat(typingctx, acc, src, base, pitch, q, offs, s):
    """``acc[r*V' + v] += s * src[base + r*pitch + q + offs[v] : ... + VL]`` (V' = len(offs), r <
    len(acc) / V'): the pooled gradients' tiles of whole rows, one broadcast of the winner's
    gradient ``s`` per tile.  Addressed as row pointers (``src + base + r*pitch``,
    loop invariants) + the winner's offset ``q`` + constants, so that a tile of 25 vectors needs
    one register per row, not one per vector."""
    def codegen(context, builder, sig, args):
        aty, sty, bty, pty, qty, oty, _ = sig.args
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_LLV, [_LLV] * 3),
                                             f"llvm.fmuladd.v{VL}f32")
        a = context.make_array(sty)(context, builder, args[1])
        b = context.cast(builder, args[2], bty, types.intp)
        p = context.cast(builder, args[3], pty, types.intp)
        q = context.cast(builder, args[4], qty, types.intp)
        g = _splat(builder, args[6])
        out = args[0]
        fty = ir.FunctionType(a.data.type, [a.data.type])
        for r in range(aty.count // oty.count):
            row = builder.gep(a.data, [builder.add(b, builder.mul(p, ir.Constant(p.type, r)))])
            # (an empty asm statement: the row pointer opaque in the loop, so that LLVM does not
            # hoist one pointer per vector, row + constant, out of it)
            row = builder.asm(fty, "", "=r,0", [row], True)
            at = builder.gep(row, [q])
            for v in range(oty.count):
                o = context.cast(builder, builder.extract_value(args[5], v), oty.dtype, types.intp)
                x = builder.load(builder.bitcast(builder.gep(at, [o]), _LLV.as_pointer()), align=4)
                k = r * oty.count + v
                out = builder.insert_value(out, builder.call(fma, [g, x, builder.extract_value(out, k)]), k)
        return out
    return acc(acc, src, base, pitch, q, offs, s), codegen


@intrinsic
def tile_roll(typingctx, acc, arr, st, ld):
    """A row tile rolled one vector along its row: ``acc[0]`` stored to ``arr[st : st + VL]``,
    then ``(acc[1], ..., acc[n - 1], arr[ld : ld + VL])`` (the pooled input gradient's tile,
    one cell further)."""
    def codegen(context, builder, sig, args):
        aty, rty, sty, lty = sig.args
        n = aty.count
        builder.store(builder.extract_value(args[0], 0), _ptr(context, builder, rty, args[1], args[2], sty), align=4)
        vals = [builder.extract_value(args[0], v) for v in range(1, n)]
        vals.append(builder.load(_ptr(context, builder, rty, args[1], args[3], lty), align=4))
        return context.make_tuple(builder, aty, vals)
    return acc(acc, arr, st, ld), codegen


@intrinsic
def tile_store_head(typingctx, arr, base, acc):
    """``arr[base + v*VL : ... + VL] = acc[v]`` for all but the last vector of ``acc``."""
    def codegen(context, builder, sig, args):
        rty, bty, aty = sig.args
        b = context.cast(builder, args[1], bty, types.intp)
        for v in range(aty.count - 1):
            builder.store(builder.extract_value(args[2], v),
                          _ptr(context, builder, rty, args[0], builder.add(b, ir.Constant(b.type, v * VL)), types.intp),
                          align=4)
        return context.get_dummy_value()
    return types.none(arr, base, acc), codegen


def _tile_ptrs(context, builder, sig, args, count):
    """Vector pointers to ``g[base + r*pitch + offs[v]]`` of a tile of ``count`` vectors, row by
    row (args g, base, pitch, offs)."""
    gty, bty, pty, oty = sig.args[:4]
    nv = oty.count
    b = context.cast(builder, args[1], bty, types.intp)
    p = context.cast(builder, args[2], pty, types.intp)
    out = []
    for r in range(count // nv):
        row = builder.add(b, builder.mul(p, ir.Constant(p.type, r)))
        for v in range(nv):
            o = context.cast(builder, builder.extract_value(args[3], v), oty.dtype, types.intp)
            out.append(_ptr(context, builder, gty, args[0], builder.add(row, o), types.intp))
    return out


def _tile_rows(context, builder, sig, args, count):
    """The ``count`` vectors ``g[base + r*pitch + offs[v] : ... + VL]``, row by row (args g,
    base, pitch, offs)."""
    return [builder.load(q, align=4) for q in _tile_ptrs(context, builder, sig, args, count)]


@intrinsic
def tile_load(typingctx, g, base, pitch, offs, like):
    """A tile of ``like``'s size from ``g[base + r*pitch + offs[v] : ... + VL]`` (the inverse of
    :func:`tile_store`)."""
    def codegen(context, builder, sig, args):
        return context.make_tuple(builder, sig.args[4], _tile_rows(context, builder, sig, args, sig.args[4].count))
    return like(g, base, pitch, offs, like), codegen


def _store_first(builder, v, ptr, n):
    """Store the first ``n`` lanes of vector ``v`` (an i32 ``n`` in 0 .. lanes) to ``ptr`` (a
    pointer to ``v``'s type), nothing else.  AVX-512: one masked store (as the Cython kernels'
    ``_mm512_mask_storeu_ps``); else the whole vector, or its halves, quarters, ... as ``n``'s
    bits say, high to low (``llvm.masked.store`` becomes vmaskmovps on AVX2, microcoded on AMD
    Zen)."""
    lanes = v.type.count
    if _ISA == "avx512":
        it = ir.VectorType(_I32, lanes)
        mask = builder.icmp_signed("<", ir.Constant(it, list(range(lanes))), _splat(builder, n, it))
        builder.call(_masked(builder, "store", v.type), [v, ptr, ir.Constant(_I32, 4), mask])
        return
    whole = builder.icmp_signed("==", n, ir.Constant(_I32, lanes))
    with builder.if_else(whole) as (all_, part):
        with all_:
            builder.store(v, ptr, align=4)
        with part:
            p = builder.bitcast(ptr, v.type.element.as_pointer())
            size = lanes // 2
            while size >= 1:
                lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, size), list(range(size))))
                hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, size), list(range(size, 2 * size))))
                bit = builder.icmp_signed("!=", builder.and_(n, ir.Constant(_I32, size)), ir.Constant(_I32, 0))
                with builder.if_then(bit):
                    builder.store(lo, builder.bitcast(p, lo.type.as_pointer()), align=4)
                p = builder.select(bit, builder.gep(p, [ir.Constant(_I32, size)]), p)
                v = builder.select(bit, hi, lo)
                size //= 2


def _lane_masks(context, builder, nty, nval, count):
    """Masks of ``count`` consecutive vectors: lane ``l`` of vector ``v`` set if
    ``v*VL + l < nval``."""
    vi = ir.VectorType(_I32, VL)
    n = _splat(builder, builder.trunc(context.cast(builder, nval, nty, types.intp), _I32), vi)
    return [builder.icmp_signed("<", ir.Constant(vi, [v * VL + lane for lane in range(VL)]), n) for v in range(count)]


@intrinsic
def tile_load_masked(typingctx, g, base, pitch, offs, like, nval):
    """:func:`tile_load` of the lanes before column ``nval`` of each row (``offs`` consecutive
    vectors, offs[v] = v*VL); the other lanes zero, their memory not read."""
    def codegen(context, builder, sig, args):
        nv, count = sig.args[3].count, sig.args[4].count
        masks = _lane_masks(context, builder, sig.args[5], args[5], nv)
        fn, zero = _masked(builder, "load", _LLV), ir.Constant(_LLV, [0.0] * VL)
        out = [builder.call(fn, [q, ir.Constant(_I32, 4), masks[i % nv], zero])
               for i, q in enumerate(_tile_ptrs(context, builder, sig, args, count))]
        return context.make_tuple(builder, sig.args[4], out)
    return like(g, base, pitch, offs, like, nval), codegen


@intrinsic
def tile_store_masked(typingctx, g, base, pitch, offs, acc, nval):
    """:func:`tile_store` of the lanes before column ``nval`` of each row (as
    :func:`tile_load_masked`); nothing else is written."""
    def codegen(context, builder, sig, args):
        nv, count = sig.args[3].count, sig.args[4].count
        nval = builder.trunc(context.cast(builder, args[5], sig.args[5], types.intp), _I32)
        lanes = [builder.select(builder.icmp_signed("<", k, ir.Constant(_I32, 0)), ir.Constant(_I32, 0),
                                builder.select(builder.icmp_signed(">", k, ir.Constant(_I32, VL)),
                                               ir.Constant(_I32, VL), k))
                 for k in (builder.sub(nval, ir.Constant(_I32, v * VL)) for v in range(nv))]
        for i, q in enumerate(_tile_ptrs(context, builder, sig, args, count)):
            _store_first(builder, builder.extract_value(args[4], i), q, lanes[i % nv])
        return context.get_dummy_value()
    return types.none(g, base, pitch, offs, acc, nval), codegen


@intrinsic
def tile_store(typingctx, g, base, pitch, offs, acc):
    """``g[base + r*pitch + offs[v] : ... + VL] = acc[r*V' + v]``."""
    def codegen(context, builder, sig, args):
        gty, bty, pty, oty, aty = sig.args
        nv = oty.count
        b = context.cast(builder, args[1], bty, types.intp)
        p = context.cast(builder, args[2], pty, types.intp)
        for r in range(aty.count // nv):
            row = builder.add(b, builder.mul(p, ir.Constant(p.type, r)))
            for v in range(nv):
                o = context.cast(builder, builder.extract_value(args[3], v), oty.dtype, types.intp)
                ptr = _ptr(context, builder, gty, args[0], builder.add(row, o), types.intp)
                builder.store(builder.extract_value(args[4], r * nv + v), ptr, align=4)
        return context.get_dummy_value()
    return types.none(g, base, pitch, offs, acc), codegen


def _bias_relu(context, builder, bias, bty, relu, rty):
    """The vector function ``f(v) = v + bias``, then the ReLU if ``relu`` (``v <= 0``: +0; NaN
    stays: the ReLU kernels' rule), the scalars ``bias`` (of type ``bty``) and ``relu`` (``rty``)
    cast once."""
    zero = ir.Constant(_LLV, [0.0] * VL)
    b = _splat(builder, context.cast(builder, bias, bty, types.float32))
    on = builder.icmp_signed("!=", context.cast(builder, relu, rty, types.intp), ir.Constant(ir.IntType(64), 0))

    def f(v):
        v = builder.fadd(v, b)
        return builder.select(on, builder.select(builder.fcmp_ordered("<=", v, zero), zero, v), v)
    return f


@intrinsic
def tile_put(typingctx, y, yo, plane, nval, acc, bias, o0, nj, relu):
    """The tile's rows ``r < nj`` (output channels ``o0 + r``) straight to the output:
    ``y[yo[v] + r*plane ...]`` = the first ``nval[v]`` lanes of ``f(acc[r*V' + v])`` (V' =
    len(yo)), ``f(v) = v + bias[o0 + r]``, then the ReLU if ``relu`` (``v <= 0``: +0; NaN stays,
    the ReLU kernels' rule); a vector of fewer lanes by :func:`_store_first` (the Cython
    kernels' ``fcd_fwd_tile_put``)."""
    def codegen(context, builder, sig, args):
        yty, oty, pty, nty, aty, bty, o0ty, njty, rty = sig.args
        nv = oty.count
        p = context.cast(builder, args[2], pty, types.intp)
        o0 = context.cast(builder, args[6], o0ty, types.intp)
        nj = context.cast(builder, args[7], njty, types.intp)
        for r in range(aty.count // nv):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(p.type, r), nj)):
                br = _elem(context, builder, bty, args[5], builder.add(o0, ir.Constant(p.type, r)))
                f = _bias_relu(context, builder, br, bty.dtype, args[8], rty)
                row = builder.mul(p, ir.Constant(p.type, r))
                for v in range(nv):
                    x = f(builder.extract_value(args[4], r * nv + v))
                    o = context.cast(builder, builder.extract_value(args[1], v), oty.dtype, types.intp)
                    n = context.cast(builder, builder.extract_value(args[3], v), nty.dtype, types.intp)
                    o, n = builder.add(o, row), builder.trunc(n, _I32)
                    _store_first(builder, x, _ptr(context, builder, yty, args[0], o, types.intp), n)
        return context.get_dummy_value()
    return types.none(y, yo, plane, nval, acc, bias, o0, nj, relu), codegen


@intrinsic
def vcolumn_sums(typingctx, arr, base, pitch, rows, offs, dst, d0):
    """``dst[d0 + offs[v] + l] = 0.0 + arr[base + offs[v] + l] + arr[base + pitch + ...] + ...``
    over ``rows`` rows, in float64, for ``l < 8`` and each offset of the tuple ``offs`` (float32
    ``arr``, float64 ``dst``): one ``<8 x double>`` accumulator per offset, kept in a register
    through the loop (a NumPy array of sums was stored and reloaded each row)."""
    def codegen(context, builder, sig, args):
        aty, _, _, _, oty, dty, _ = sig.args
        vt, ft = ir.VectorType(ir.DoubleType(), 8), ir.VectorType(ir.FloatType(), 8)
        b, p, n, d = (context.cast(builder, args[k], sig.args[k], types.intp) for k in (1, 2, 3, 6))
        offs = [context.cast(builder, builder.extract_value(args[4], v), oty.dtype, types.intp)
                for v in range(oty.count)]
        accs = [cgutils.alloca_once_value(builder, ir.Constant(vt, [0.0] * 8)) for _ in offs]
        with cgutils.for_range(builder, n) as loop:
            row = builder.add(b, builder.mul(loop.index, p))
            for acc, o in zip(accs, offs):
                x = builder.load(_ptr(context, builder, aty, args[0], builder.add(row, o), types.intp, ft), align=4)
                builder.store(builder.fadd(builder.load(acc), builder.fpext(x, vt)), acc)
        for acc, o in zip(accs, offs):
            builder.store(builder.load(acc), _ptr(context, builder, dty, args[5], builder.add(d, o), types.intp, vt),
                          align=8)
        return context.get_dummy_value()
    return types.none(arr, base, pitch, rows, offs, dst, d0), codegen


@intrinsic
def vplane_sums(typingctx, arr, a, n, k):
    """``(sum(d), sum(d * d))``, ``d = x - k`` (float64) over the plane ``x = arr[a:a + n]``
    (float32): src_ext/planestats.h's loop, value ``e`` into partial sums ``e % 64`` (eight
    ``<8 x double>`` accumulators each), the last block's missing values giving ``d = 0`` (a
    masked load), the partial sums folded in halves."""
    vt, ft, it = ir.VectorType(ir.DoubleType(), 8), ir.VectorType(ir.FloatType(), 8), ir.IntType(64)
    mt, i8 = ir.VectorType(ir.IntType(1), 8), ir.VectorType(_I32, 8)

    def codegen(context, builder, sig, args):
        aty = sig.args[0]
        a0, nn = (context.cast(builder, args[i], sig.args[i], types.intp) for i in (1, 2))
        kv = builder.insert_element(ir.Constant(vt, ir.Undefined), args[3], ir.Constant(_I32, 0))
        kv = builder.shuffle_vector(kv, ir.Constant(vt, ir.Undefined), ir.Constant(i8, [0] * 8))
        zero = ir.Constant(vt, [0.0] * 8)
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(16)]  # a_j, then q_j

        def term(j, x, keep=None):
            d = builder.fsub(builder.fpext(x, vt), kv)
            if keep is not None:
                d = builder.select(keep, d, zero)
            builder.store(builder.fadd(builder.load(sums[j]), d), sums[j])
            builder.store(builder.fadd(builder.load(sums[8 + j]), builder.fmul(d, d)), sums[8 + j])

        def at(base, j):
            return _ptr(context, builder, aty, args[0], builder.add(base, ir.Constant(it, 8 * j)), types.intp, ft)

        blocks = builder.sdiv(nn, ir.Constant(it, 64))
        with cgutils.for_range(builder, blocks) as loop:
            base = builder.add(a0, builder.mul(loop.index, ir.Constant(it, 64)))
            for j in range(8):
                term(j, builder.load(at(base, j), align=4))
        done = builder.mul(blocks, ir.Constant(it, 64))
        r = builder.sub(nn, done)
        with builder.if_then(builder.icmp_signed(">", r, ir.Constant(it, 0))):
            base = builder.add(a0, done)
            rv = builder.insert_element(ir.Constant(ir.VectorType(it, 8), ir.Undefined), r, ir.Constant(_I32, 0))
            rv = builder.shuffle_vector(rv, ir.Constant(ir.VectorType(it, 8), ir.Undefined), ir.Constant(i8, [0] * 8))
            load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ft, [ft.as_pointer(), _I32, mt, ft]),
                                                  "llvm.masked.load.v8f32.p0")
            for j in range(8):
                keep = builder.icmp_signed("<", ir.Constant(ir.VectorType(it, 8), [8 * j + e for e in range(8)]), rv)
                term(j, builder.call(load, [at(base, j), ir.Constant(_I32, 4), keep, ir.Constant(ft, [0.0] * 8)]), keep)
        out = []
        for first in (0, 8):
            v = [builder.load(acc) for acc in sums[first:first + 8]]
            for h in (4, 2, 1):
                for j in range(h):
                    v[j] = builder.fadd(v[j], v[j + h])
            d = v[0]
            for h in (4, 2, 1):
                lanes = ir.Constant(i8, list(range(h, 2 * h)) + [0] * (8 - h))
                d = builder.fadd(d, builder.shuffle_vector(d, d, lanes))
            out.append(builder.extract_element(d, ir.Constant(_I32, 0)))
        return context.make_tuple(builder, sig.return_type, out)
    return types.UniTuple(types.float64, 2)(arr, a, n, k), codegen


@intrinsic
def vstore(typingctx, arr, i, v):
    """``arr[i : i + VL] = v``."""
    def codegen(context, builder, sig, args):
        builder.store(args[2], _ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1]), align=4)
        return context.get_dummy_value()
    return types.none(arr, i, v), codegen


@intrinsic
def vadd(typingctx, a, b):
    """``a + b``, lane by lane."""
    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return vec(a, b), codegen


@intrinsic
def vfmas(typingctx, acc, a, b):
    """``acc[v] + a[v] * b[v]`` lane by lane for tuples of vectors (one FMA where the target has
    them, as :func:`_fma_rows`)."""
    def codegen(context, builder, sig, args):
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_LLV, [_LLV] * 3),
                                             f"llvm.fmuladd.v{VL}f32")
        out = [builder.call(fma, [builder.extract_value(args[1], v), builder.extract_value(args[2], v),
                                  builder.extract_value(args[0], v)]) for v in range(sig.args[0].count)]
        return context.make_tuple(builder, sig.return_type, out)
    return acc(acc, a, b), codegen


@intrinsic
def fmuladd32(typingctx, a, b, c):
    """``c + a * b`` of float32 scalars: one FMA where the target has them (the vectors' rule)."""
    f = ir.FloatType()

    def codegen(context, builder, sig, args):
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f, [f] * 3), "llvm.fmuladd.f32")
        return builder.call(fma, [context.cast(builder, v, t, types.float32) for v, t in zip(args, sig.args)])
    return types.float32(a, b, c), codegen


@intrinsic
def vsub(typingctx, a, b):
    """``a - b``, lane by lane."""
    def codegen(context, builder, sig, args):
        return builder.fsub(args[0], args[1])
    return vec(a, b), codegen


@intrinsic
def vloads_lanes(typingctx, acc, arr, base, offs, lo, hi):
    """``acc[v]`` with lanes ``lo .. hi - 1`` replaced by those of ``arr[base + offs[v] : ... + VL]``
    for each offset of ``offs`` (masked loads: no other lane of ``arr`` is read)."""
    tt = types.UniTuple(vec, offs.count)

    def codegen(context, builder, sig, args):
        _, aty, bty, oty, lty, hty = sig.args
        b = context.cast(builder, args[2], bty, types.intp)
        lanes = ir.Constant(ir.VectorType(_I32, VL), list(range(VL)))
        vi = ir.VectorType(_I32, VL)
        lo = _splat(builder, builder.trunc(context.cast(builder, args[4], lty, types.intp), _I32), vi)
        hi = _splat(builder, builder.trunc(context.cast(builder, args[5], hty, types.intp), _I32), vi)
        mask = builder.and_(builder.icmp_signed(">=", lanes, lo), builder.icmp_signed("<", lanes, hi))
        fn = _masked(builder, "load", _LLV)
        out = []
        for v in range(oty.count):
            o = context.cast(builder, builder.extract_value(args[3], v), oty.dtype, types.intp)
            p = _ptr(context, builder, aty, args[1], builder.add(b, o), types.intp)
            out.append(builder.call(fn, [p, ir.Constant(_I32, 4), mask, builder.extract_value(args[0], v)]))
        return context.make_tuple(builder, tt, out)
    return tt(acc, arr, base, offs, lo, hi), codegen


def _ir_in_tf(b, d):
    """``B^T d B`` of 16 vectors (rows, then columns) in IR: the Cython kernels' ``fcw_in_tf``
    operation by operation."""
    t = [None] * 16
    for j in range(4):
        t[j] = b.fsub(d[j], d[8 + j])
        t[4 + j] = b.fadd(d[4 + j], d[8 + j])
        t[8 + j] = b.fsub(d[8 + j], d[4 + j])
        t[12 + j] = b.fsub(d[4 + j], d[12 + j])
    out = []
    for i in range(4):
        out += [b.fsub(t[4 * i], t[4 * i + 2]), b.fadd(t[4 * i + 1], t[4 * i + 2]),
                b.fsub(t[4 * i + 2], t[4 * i + 1]), b.fsub(t[4 * i + 1], t[4 * i + 3])]
    return out


def _ir_bt6(b, v):
    """F(2x2, 5x5): ``B^T`` of 6 vectors in IR (products by 2 and 4 as exact sums): the Cython
    kernels' ``fcw_bt6`` operation by operation."""
    a = b.fsub(v[4], v[2])
    t = b.fsub(v[0], v[2])
    t = b.fadd(t, t)
    r0 = b.fadd(b.fadd(t, t), a)
    t = b.fadd(v[1], v[2])
    t = b.fadd(t, t)
    r1 = b.fsub(b.fadd(v[3], v[4]), b.fadd(t, t))
    t = b.fsub(v[1], v[2])
    t = b.fadd(t, t)
    r2 = b.fadd(b.fsub(v[4], v[3]), b.fadd(t, t))
    t = b.fsub(v[3], v[1])
    t = b.fadd(t, t)
    r3, r4 = b.fadd(a, t), b.fsub(a, t)
    t = b.fsub(v[1], v[3])
    t = b.fadd(t, t)
    return [r0, r1, r2, r3, r4, b.fadd(b.fadd(t, t), b.fsub(v[5], v[3]))]


@intrinsic
def in_tf_put(typingctx, arr, runs, offs, u, dst, uoffs):
    """Winograd input transform ``B^T d B`` of one vector of tiles, straight from the input:
    ``runs`` is ``(b0, lo0, hi0, b1, lo1, hi1, ...)``, disjoint runs of lanes: ``d[k]`` has lanes
    ``lo .. hi - 1`` of ``arr[b + offs[k] : ... + VL]`` for each run, zeros elsewhere (masked
    loads; run 0 of all lanes and the others empty: plain loads), for 16 offsets (F(2x2, 3x3))
    or 36 (F(2x2, 5x5): the columns of ``B^T d``, then its rows); transformed value ``k`` is
    stored at ``u[dst + uoffs[k]]``.  One straight piece of IR per vector, the Cython kernels'
    operations in their order."""
    def codegen(context, builder, sig, args):
        aty, rty, oty, uty = sig.args[0], sig.args[1], sig.args[2], sig.args[3]
        nk = oty.count
        lanes = ir.Constant(ir.VectorType(_I32, VL), list(range(VL)))
        vi = ir.VectorType(_I32, VL)
        zero = ir.Constant(_LLV, [0.0] * VL)
        fn = _masked(builder, "load", _LLV)
        run = [context.cast(builder, builder.extract_value(args[1], k), t, types.intp) for k, t in enumerate(rty.types)]
        bases = run[0::3]
        los = [builder.trunc(v, _I32) for v in run[1::3]]
        his = [builder.trunc(v, _I32) for v in run[2::3]]
        offs = [context.cast(builder, builder.extract_value(args[2], k), oty.dtype, types.intp) for k in range(nk)]
        full = builder.and_(builder.icmp_signed("==", los[0], ir.Constant(_I32, 0)),
                            builder.icmp_signed("==", his[0], ir.Constant(_I32, VL)))
        for lo, hi in zip(los[1:], his[1:]):
            full = builder.and_(full, builder.icmp_signed(">=", lo, hi))
        db = context.cast(builder, args[4], sig.args[4], types.intp)
        uo = sig.args[5]
        dsts = [_ptr(context, builder, uty, args[3],
                     builder.add(db, context.cast(builder, builder.extract_value(args[5], k), uo.dtype, types.intp)),
                     types.intp) for k in range(nk)]

        def transform(load):
            """Loads (``load(k)``: window value ``k``), transform and stores, in one branch: the
            36-value windows column by column (six vectors live, not 36: the C kernels' order)."""
            if nk == 16:
                out = _ir_in_tf(builder, [load(k) for k in range(16)])
            else:
                cols = [_ir_bt6(builder, [load(6 * i + j) for i in range(6)]) for j in range(6)]  # cols[j][i]
                out = [v for i in range(6) for v in _ir_bt6(builder, [cols[j][i] for j in range(6)])]
            for k in range(nk):
                builder.store(out[k], dsts[k], align=4)

        with builder.if_else(full) as (whole, part):
            with whole:
                transform(lambda k: builder.load(_ptr(context, builder, aty, args[0], builder.add(bases[0], offs[k]),
                                                      types.intp), align=4))
            with part:
                masks = [builder.and_(builder.icmp_signed(">=", lanes, _splat(builder, lo, vi)),
                                      builder.icmp_signed("<", lanes, _splat(builder, hi, vi)))
                         for lo, hi in zip(los, his)]

                def merged(k):  # (the runs' lanes are disjoint: their masked loads ORed)
                    parts = [builder.bitcast(builder.call(fn, [_ptr(context, builder, aty, args[0],
                                                                    builder.add(bb, offs[k]), types.intp),
                                                               ir.Constant(_I32, 4), m, zero]), vi)
                             for bb, m in zip(bases, masks)]
                    v = parts[0]
                    for q in parts[1:]:
                        v = builder.or_(v, q)
                    return builder.bitcast(v, _LLV)

                transform(merged)
        return context.get_dummy_value()
    return types.none(arr, runs, offs, u, dst, uoffs), codegen


@intrinsic
def vstores(typingctx, arr, base, offs, vs):
    """``arr[base + offs[v] : ... + VL] = vs[v]`` for each offset of ``offs``."""
    def codegen(context, builder, sig, args):
        aty, bty, oty, _ = sig.args
        b = context.cast(builder, args[1], bty, types.intp)
        for v in range(oty.count):
            o = context.cast(builder, builder.extract_value(args[2], v), oty.dtype, types.intp)
            builder.store(builder.extract_value(args[3], v),
                          _ptr(context, builder, aty, args[0], builder.add(b, o), types.intp), align=4)
        return context.get_dummy_value()
    return types.none(arr, base, offs, vs), codegen


def _pool2_row_codegen(biased):
    """The code of :func:`pool2_row` (``biased``: of :func:`pool2_row_biased`)."""
    def codegen(context, builder, sig, args):
        xty, a0t, a1t, nty, yty, jty, yot, bty, wty = sig.args[:9]
        vi = ir.VectorType(_I32, VL)
        lanes = ir.Constant(vi, list(range(VL)))
        i32 = lambda v, t: builder.trunc(context.cast(builder, v, t, types.intp), _I32)  # noqa: E731
        nn = i32(args[3], nty)
        two_n = _splat(builder, builder.add(nn, nn), vi)
        m_lo = builder.icmp_signed("<", lanes, two_n)
        m_hi = builder.icmp_signed("<", builder.add(lanes, ir.Constant(vi, [VL] * VL)), two_n)
        zero = ir.Constant(_LLV, [0.0] * VL)
        yo = context.cast(builder, args[6], yot, types.intp)
        ja = context.make_array(jty)(context, builder, args[5])
        jp = builder.bitcast(builder.gep(ja.data, [yo]), vi.as_pointer())
        yp = _ptr(context, builder, yty, args[4], yo, types.intp)
        f = _bias_relu(context, builder, args[9], sig.args[9], args[10], sig.args[10]) if biased else (lambda v: v)

        def body(masked):
            def load(ptr, mask):
                if masked:
                    return builder.call(_masked(builder, "load", _LLV), [ptr, ir.Constant(_I32, 4), mask, zero])
                return builder.load(ptr, align=4)

            def row(a, at):
                p = context.cast(builder, a, at, types.intp)
                lo = load(_ptr(context, builder, xty, args[0], p, types.intp), m_lo)
                hi = load(_ptr(context, builder, xty, args[0], builder.add(p, ir.Constant(p.type, VL)), types.intp),
                          m_hi)
                even = builder.shuffle_vector(lo, hi, ir.Constant(vi, [2 * e for e in range(VL)]))
                odd = builder.shuffle_vector(lo, hi, ir.Constant(vi, [2 * e + 1 for e in range(VL)]))
                return f(even), f(odd)

            m, c1 = row(args[1], a0t)
            c2, c3 = row(args[2], a1t)
            code = ir.Constant(vi, [0] * VL)
            for j, a in enumerate((c1, c2, c3)):
                take = builder.and_(builder.fcmp_unordered(">", a, m), builder.fcmp_ordered("ord", m, m))
                m = builder.select(take, a, m)
                code = builder.select(take, ir.Constant(vi, [j + 1] * VL), code)
            # flat index: base + 2e + (code & 1) + (code >> 1) * w
            half = builder.lshr(code, ir.Constant(vi, [1] * VL))
            row_off = builder.and_(builder.sub(ir.Constant(vi, [0] * VL), half), _splat(builder, i32(args[8], wty), vi))
            flat = builder.add(builder.add(_splat(builder, i32(args[7], bty), vi), builder.add(lanes, lanes)),
                               builder.add(builder.and_(code, ir.Constant(vi, [1] * VL)), row_off))
            if masked:
                _store_first(builder, m, yp, nn)
                _store_first(builder, flat, jp, nn)
            else:
                builder.store(m, yp, align=4)
                builder.store(flat, jp, align=4)

        with builder.if_else(builder.icmp_signed("==", nn, ir.Constant(_I32, VL))) as (whole, part):
            with whole:
                body(False)
            with part:
                body(True)
        return context.get_dummy_value()
    return codegen


@intrinsic
def pool2_row(typingctx, xf, a0, a1, n, yf, jf, yo, base, w):
    """One vector of ``n`` (<= VL) 2x2 max-pooling windows: window ``e`` is ``xf[a0 + 2e],
    xf[a0 + 2e + 1]`` over ``xf[a1 + 2e], xf[a1 + 2e + 1]``; its maximum goes to ``yf[yo + e]``
    and its flat index ``base + 2e + column + row * w`` to ``jf[yo + e]``, by the pooling
    kernels' scan rule (a later cell wins if not <= the best, unless the best is NaN).  Nothing
    outside the windows and the ``n`` outputs is touched: plain loads for ``n == VL``, masked
    ones otherwise; the stores by :func:`_store_first`."""
    return types.none(xf, a0, a1, n, yf, jf, yo, base, w), _pool2_row_codegen(False)


@intrinsic
def pool2_row_biased(typingctx, xf, a0, a1, n, yf, jf, yo, base, w, bias, relu):
    """:func:`pool2_row` of ``v + bias``, then the ReLU if ``relu``, for each cell ``v`` (as
    :func:`vpool4`): the pooling of a convolution's output without a pass that adds the bias to
    it in memory first."""
    return types.none(xf, a0, a1, n, yf, jf, yo, base, w, bias, relu), _pool2_row_codegen(True)


@intrinsic
def vpool4(typingctx, y00, y01, y10, y11, bias, relu):
    """2x2 max pooling of the four outputs of Winograd output tiles, lane by lane: each output
    ``v + bias``, then the ReLU if ``relu`` (as :func:`vput_pairs`), scanned in the order
    ``y00, y01, y10, y11`` with the pooling kernels' rule (a later ``v`` replaces the best
    ``b`` when ``v > b``, or ``v`` is NaN and ``b`` is not).  Returns ``(best, k)``: the values
    and the position ``k = 2a + b`` of ``y_ab`` as floats."""
    tt = types.UniTuple(vec, 2)

    def codegen(context, builder, sig, args):
        zero = ir.Constant(_LLV, [0.0] * VL)
        f = _bias_relu(context, builder, args[4], sig.args[4], args[5], sig.args[5])
        best, pos = f(args[0]), zero
        for k in (1, 2, 3):
            v = f(args[k])
            take = builder.or_(builder.fcmp_ordered(">", v, best),
                               builder.and_(builder.fcmp_unordered("uno", v, v),
                                            builder.fcmp_ordered("ord", best, best)))
            best = builder.select(take, v, best)
            pos = builder.select(take, ir.Constant(_LLV, [float(k)] * VL), pos)
        return context.make_tuple(builder, tt, [best, pos])
    return tt(y00, y01, y10, y11, bias, relu), codegen


def _pairs(context, builder, a, c, bias, bty, relu, rty):
    """``f(a)`` and ``f(c)`` zipped (``f(v) = v + bias``, then the ReLU if ``relu``: ``v <= 0``:
    +0; NaN stays): one vector of ``2*VL`` floats."""
    f = _bias_relu(context, builder, bias, bty, relu, rty)
    return builder.shuffle_vector(f(a), f(c), ir.Constant(ir.VectorType(_I32, 2 * VL),
                                                          [k // 2 + (k % 2) * VL for k in range(2 * VL)]))


#: The type of a zipped pair of vectors (:func:`_pairs`).
_LLV2 = ir.VectorType(ir.FloatType(), 2 * VL)


@intrinsic
def vput_pairs(typingctx, yf, d, z, s0, s1, n, bias, relu):
    """``yf[d + 2e] = f(z[s0 + e])``, ``yf[d + 2e + 1] = f(z[s1 + e])`` for ``e < n`` (<= VL),
    ``f(v) = v + bias``, then the ReLU if ``relu`` (``v <= 0``: +0; NaN stays): one vector of
    each row, zipped by a shuffle, stored as ``2n`` floats (:func:`_store_first`).
    Reads ``VL`` floats of each row (the caller's rows are padded)."""
    def codegen(context, builder, sig, args):
        yty, dty, zty, s0t, s1t, nty, bty, rty = sig.args
        a = builder.load(_ptr(context, builder, zty, args[2], args[3], s0t), align=4)
        c = builder.load(_ptr(context, builder, zty, args[2], args[4], s1t), align=4)
        nn = builder.trunc(context.cast(builder, args[5], nty, types.intp), _I32)
        _store_first(builder, _pairs(context, builder, a, c, args[6], bty, args[7], rty),
                     _ptr(context, builder, yty, args[0], args[1], dty, _LLV2), builder.add(nn, nn))
        return context.get_dummy_value()
    return types.none(yf, d, z, s0, s1, n, bias, relu), codegen


@intrinsic
def vput_pair_vectors(typingctx, yf, d, a, c, bias, relu):
    """``yf[d + 2e] = f(a[e])``, ``yf[d + 2e + 1] = f(c[e])`` for ``e < VL`` (``f`` as
    :func:`vput_pairs`'): two vectors zipped by a shuffle, stored whole."""
    def codegen(context, builder, sig, args):
        yty, dty, _, _, bty, rty = sig.args
        builder.store(_pairs(context, builder, args[2], args[3], args[4], bty, args[5], rty),
                      _ptr(context, builder, yty, args[0], args[1], dty, _LLV2), align=4)
        return context.get_dummy_value()
    return types.none(yf, d, a, c, bias, relu), codegen


@intrinsic
def vput_quads(typingctx, z, d, q0, q1, q2, q3, bias, relu):
    """``z[d + 4l + k] = f(q_k[l])`` for ``l < VL``, ``k < 4`` (``f`` as :func:`vput_pairs`'):
    four vectors zipped by two rounds of pair shuffles (the Cython kernels' ``fcw_quads``),
    stored whole."""
    def codegen(context, builder, sig, args):
        zty, dty, bty, rty = sig.args[0], sig.args[1], sig.args[6], sig.args[7]
        p02 = _pairs(context, builder, args[2], args[4], args[6], bty, args[7], rty)
        p13 = _pairs(context, builder, args[3], args[5], args[6], bty, args[7], rty)
        zipped = builder.shuffle_vector(p02, p13, ir.Constant(ir.VectorType(_I32, 4 * VL),
                                                              [k // 2 + (k % 2) * 2 * VL for k in range(4 * VL)]))
        builder.store(zipped, _ptr(context, builder, zty, args[0], args[1], dty, ir.VectorType(ir.FloatType(), 4 * VL)),
                      align=4)
        return context.get_dummy_value()
    return types.none(z, d, q0, q1, q2, q3, bias, relu), codegen


def _deal4(loads):
    """An intrinsic ``(xs, s, lo, hi, xd, d, ps, n)``: ``xd[d + b*ps + t] = v[4t + b]`` for ``b <
    4`` and ``t < n`` (<= VL), where ``v[k] = xs[s + k]`` for ``lo <= k < hi`` and 0 elsewhere
    (``k < 4*VL``; masked loads: nothing else is read): ``4*VL`` values split into their four
    column phases by two rounds of pair shuffles (the Cython kernels' ``fcd_deal4``), each stored
    as its first ``n`` lanes (:func:`_store_first`).  With ``loads`` = 2 the caller has ``hi <=
    2*VL``, so ``n <= VL/2``: two vectors loaded, each phase one shuffle of them into ``VL/2``
    lanes (as the Cython kernels' rows of up to 32 values)."""
    def deal4(typingctx, xs, s, lo, hi, xd, d, ps, n):
        def codegen(context, builder, sig, args):
            xty, sty, lty, hty, dty, dot, pty, nty = sig.args
            vi = ir.VectorType(_I32, VL)

            def i32(k):
                return builder.trunc(context.cast(builder, args[k], sig.args[k], types.intp), _I32)

            lo, hi = _splat(builder, i32(2), vi), _splat(builder, i32(3), vi)
            fn, zero = _masked(builder, "load", _LLV), ir.Constant(_LLV, [0.0] * VL)
            p = _ptr(context, builder, xty, args[0], args[1], sty)
            x = []
            for u in range(4):
                if u >= loads:
                    x.append(zero)
                    continue
                k = ir.Constant(vi, list(range(u * VL, (u + 1) * VL)))
                mask = builder.and_(builder.icmp_signed(">=", k, lo), builder.icmp_signed("<", k, hi))
                q = builder.gep(p, [ir.Constant(_I32, u)])  # (p points to vectors)
                x.append(builder.call(fn, [q, ir.Constant(_I32, 4), mask, zero]))
            if loads == 2:
                half = ir.VectorType(_I32, VL // 2)
                phases = [builder.shuffle_vector(x[0], x[1], ir.Constant(half, list(range(b, 2 * VL, 4))))
                          for b in range(4)]
            else:
                (e01, o01), (e23, o23) = _split_pairs(builder, x[0], x[1]), _split_pairs(builder, x[2], x[3])
                (p0, p2), (p1, p3) = _split_pairs(builder, e01, e23), _split_pairs(builder, o01, o23)
                phases = [p0, p1, p2, p3]
            d0 = context.cast(builder, args[5], dot, types.intp)
            pitch = context.cast(builder, args[6], pty, types.intp)
            for b, v in enumerate(phases):
                at = builder.add(d0, builder.mul(pitch, ir.Constant(pitch.type, b)))
                _store_first(builder, v, _ptr(context, builder, dty, args[4], at, types.intp, v.type), i32(7))
            return context.get_dummy_value()
        return types.none(xs, s, lo, hi, xd, d, ps, n), codegen
    return deal4


#: :func:`_deal4` of four loads, and of two (rows whose values lie in the first ``2*VL``).
vdeal4 = intrinsic(_deal4(4))
vdeal4_2 = intrinsic(_deal4(2))


@intrinsic
def vcopy_first(typingctx, dst, d, src, s, n):
    """``dst[d : d + n] = src[s : s + n]`` for ``n <= VL``: one vector load (``VL`` floats of
    ``src``: the caller's buffer is padded), its first ``n`` lanes stored (:func:`_store_first`)."""
    def codegen(context, builder, sig, args):
        dty, dt, sty, st, nty = sig.args
        v = builder.load(_ptr(context, builder, sty, args[2], args[3], st), align=4)
        _store_first(builder, v, _ptr(context, builder, dty, args[0], args[1], dt),
                     builder.trunc(context.cast(builder, args[4], nty, types.intp), _I32))
        return context.get_dummy_value()
    return types.none(dst, d, src, s, n), codegen
