"""The matrix product of a quantised Linear (`quantize=int8`): int8 weights, inputs quantised per
row at run time, products summed in int32.

Weights. Each output's row of the weight is quantised to int8 with a scale of its own, and kept
packed as `vpdpbusd` reads it (layerc/runtime/quantized.py): one 64-byte load holds 16 outputs'
weights for 4 inputs.

Inputs. Each row x of the input is quantised as ONNX Runtime's DynamicQuantizeLinear does, to
uint8 with a zero point: lo = min(0, min x), hi = max(0, max x), s = (hi - lo) / 255,
z = round(-lo / s), u = clamp(round(x / s) + z, 0, 255) (rounding half to even). A row of
zeros gives s = 1 and z = 0; a row holding nan or inf gives nan outputs.

The product. acc[o] = sum_k u[k] q[o, k] is exact in int32 (at most 255 * 127 * 65536 < 2^31),
and y[o] = (acc[o] - z * wsum[o]) * (s * scale[o]), where wsum[o] = sum_k q[o, k] removes the
zero point. The sums are computed on one of three paths, chosen for the CPU numba compiles for
(`PATH`): with AVX-512 VNNI, `vpdpbusd` adds 4 byte products to each of 16 int32 lanes in one
instruction; with AVX2, `vpmaddwd` multiplies 16-bit pairs (the bytes widened) into int32 lanes;
elsewhere plain loops. The tiles are LLVM IR, as layerc/runtime/gemm.py writes its float tiles.
The result is the same on every path: integer sums, then the same float operations.

Everything here is inlined into the kernel that calls it and allocates nothing (the quantised
rows go on the stack), so the same code serves a standalone library (`layerc build`).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import gemm
from .quantized import BLOCK, EXTRA_ROWS, LANES

ROWS = 4  # rows per tile: 4 x 4 accumulators, with room for the weights
CHUNK = 16384  # inputs up to which ROWS rows are quantised at once (ROWS * CHUNK bytes of stack)


def _path() -> str:
    """How the sums are computed on the CPU numba compiles for: "vnni" with AVX-512 VNNI (and
    512-bit vectors), "avx2" with AVX2, else "loops"."""
    has = gemm.cpu_features()
    if {"avx512f", "avx512bw", "avx512vnni"} <= has and gemm.BITS == 512:
        return "vnni"
    return "avx2" if "avx2" in has else "loops"


PATH = _path()


# --------------------------------------------------------------------------- the VNNI tiles


def _make_tile(rows: int, vectors: int) -> object:
    """An intrinsic `tile(x, ldx, w, ldw, groups, acc)` that writes the int32 sums
    acc[r * W + j] = sum_g sum_i x[r * ldx + 4g + i] * w[g * ldw + 4j + i] for the `rows` rows
    and W = `vectors` * LANES outputs (addresses and strides in bytes; x unsigned, w signed)."""

    @intrinsic
    def tile(typingctx, x, ldx, w, ldw, groups, acc):  # type: ignore[no-untyped-def]
        sig = types.void(*[types.intp] * 6)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            xa, ldx_, wa, ldw_, groups_, acca = args
            i64, i32, i8 = ir.IntType(64), ir.IntType(32), ir.IntType(8)
            vt = ir.VectorType(i32, LANES)
            dot = gemm._declare(
                builder.module, "llvm.x86.avx512.vpdpbusd.512", ir.FunctionType(vt, [vt] * 3)
            )
            c = lambda v: ir.Constant(i64, v)  # noqa: E731
            bytes_ = i8.as_pointer()
            xp = builder.inttoptr(xa, bytes_)
            wp = builder.inttoptr(wa, bytes_)
            ap = builder.inttoptr(acca, vt.as_pointer())
            vzero = ir.Constant(vt, [0] * LANES)
            undef = ir.Constant(vt, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)

            def step(g, acc):  # type: ignore[no-untyped-def]
                row = builder.gep(wp, [builder.mul(g, ldw_)])
                wv = [
                    builder.load(
                        builder.bitcast(builder.gep(row, [c(64 * v)]), vt.as_pointer()), align=1
                    )
                    for v in range(vectors)
                ]
                new = []
                for r in range(rows):
                    offset = builder.add(builder.mul(c(r), ldx_), builder.mul(g, c(4)))
                    at = builder.gep(xp, [offset])
                    word = builder.load(builder.bitcast(at, i32.as_pointer()), align=1)
                    xv = builder.insert_element(undef, word, ir.Constant(i32, 0))
                    xv = builder.shuffle_vector(xv, undef, splat)
                    new += [
                        builder.call(dot, [acc[r * vectors + v], xv, wv[v]]) for v in range(vectors)
                    ]
                return new

            totals = gemm.counted_loop(
                builder, groups_, 1, [vzero] * (rows * vectors), step, unroll=rows > 1
            )
            for index, total in enumerate(totals):
                builder.store(total, builder.gep(ap, [c(index)]), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_v1, _v2, _v3, _v4 = (_make_tile(rows, 4) for rows in range(1, ROWS + 1))
# One row reads each group's outputs whole, 16, 8 or 4 vectors at a time, as gemm's single-row
# tiles do, rather than in as many passes as there are blocks.
_w16, _w8 = _make_tile(1, 16), _make_tile(1, 8)


@numba.njit(inline="always")
def _vnni(r, x, ldx, w, ldw, groups, acc, width):  # type: ignore[no-untyped-def]
    """acc = the int32 sums of `r` quantised rows by `width` outputs of the packed weight at w
    (width: 16, 8 or 4 vectors for one row, 4 for several)."""
    if r == 1:
        if width == 16 * LANES:
            _w16(x, ldx, w, ldw, groups, acc)
        elif width == 8 * LANES:
            _w8(x, ldx, w, ldw, groups, acc)
        else:
            _v1(x, ldx, w, ldw, groups, acc)
    elif r == 2:
        _v2(x, ldx, w, ldw, groups, acc)
    elif r == 3:
        _v3(x, ldx, w, ldw, groups, acc)
    else:
        _v4(x, ldx, w, ldw, groups, acc)


# --------------------------------------------------------------------------- the AVX2 tile


def _make_avx2_tile(rows: int, vectors: int) -> object:
    """An intrinsic `tile(x, ldx, w, ldw, groups, acc, lda)` that writes the int32 sums of
    `rows` quantised rows at x by 8 * `vectors` outputs of the packed weight at w into acc
    (rows `lda` values apart), as `_make_tile` does, with AVX2's `vpmaddwd`: each 32 bytes of
    a group (8 outputs' 4 weights) widened to 16-bit, each pair of products added into an int32
    lane (exact: 2 * 255 * 127 < 2^31; AVX2's byte product `vpmaddubsw` would saturate), the
    two pairs of each output added at the end."""

    @intrinsic
    def tile(typingctx, x, ldx, w, ldw, groups, acc, lda):  # type: ignore[no-untyped-def]
        sig = types.void(*[types.intp] * 7)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            xa, ldx_, wa, ldw_, groups_, acca, lda_ = args
            i64, i32, i16, i8 = ir.IntType(64), ir.IntType(32), ir.IntType(16), ir.IntType(8)
            acc_t, wide_t = ir.VectorType(i32, 8), ir.VectorType(i16, 16)
            chunk_t = ir.VectorType(i8, 32)
            madd = gemm._declare(
                builder.module, "llvm.x86.avx2.pmadd.wd", ir.FunctionType(acc_t, [wide_t] * 2)
            )
            c = lambda v: ir.Constant(i64, v)  # noqa: E731
            lanes = lambda values: ir.Constant(ir.VectorType(i32, len(values)), values)  # noqa: E731
            xp = builder.inttoptr(xa, i8.as_pointer())
            wp = builder.inttoptr(wa, i8.as_pointer())
            ap = builder.inttoptr(acca, i32.as_pointer())
            vzero = ir.Constant(acc_t, [0] * 8)

            def step(g, acc):  # type: ignore[no-untyped-def]
                xs = []
                for r in range(rows):
                    offset = builder.add(builder.mul(c(r), ldx_), builder.mul(g, c(4)))
                    at = builder.bitcast(
                        builder.gep(xp, [offset]), ir.VectorType(i8, 4).as_pointer()
                    )
                    four = builder.zext(builder.load(at, align=1), ir.VectorType(i16, 4))
                    xs.append(builder.shuffle_vector(four, four, lanes([0, 1, 2, 3] * 4)))
                row = builder.gep(wp, [builder.mul(g, ldw_)])
                new = list(acc)
                for v in range(vectors):
                    chunk = builder.bitcast(builder.gep(row, [c(32 * v)]), chunk_t.as_pointer())
                    chunk = builder.load(chunk, align=1)
                    for half in range(2):
                        part = builder.shuffle_vector(
                            chunk, chunk, lanes(list(range(16 * half, 16 * half + 16)))
                        )
                        part = builder.sext(part, wide_t)
                        for r in range(rows):
                            at = (r * vectors + v) * 2 + half
                            new[at] = builder.add(acc[at], builder.call(madd, [part, xs[r]]))
                return new

            count = 2 * vectors * rows
            pairs = gemm.counted_loop(builder, groups_, 1, [vzero] * count, step, unroll=rows > 1)
            for r in range(rows):
                for v in range(vectors):  # the two halves' pairs added: 8 outputs in order
                    at = (r * vectors + v) * 2
                    a, b = pairs[at], pairs[at + 1]
                    even = builder.shuffle_vector(a, b, lanes(list(range(0, 16, 2))))
                    odd = builder.shuffle_vector(a, b, lanes(list(range(1, 16, 2))))
                    where = builder.gep(ap, [builder.add(builder.mul(c(r), lda_), c(8 * v))])
                    where = builder.bitcast(where, acc_t.as_pointer())
                    builder.store(builder.add(even, odd), where, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# AVX2 has 16 vector registers: 8 accumulators, for one row by 32 outputs or two by 16.
_a14, _a22 = _make_avx2_tile(1, 4), _make_avx2_tile(2, 2)


@numba.njit(inline="always")
def _avx2(r, x, ldx, w, ldw, groups, acc, width):  # type: ignore[no-untyped-def]
    """The sums `_vnni` computes, into acc (width values a row) with the AVX2 tiles: two rows
    by 16 outputs at a time (each weight read serves both), a last row by 32."""
    rr = 0
    while rr + 2 <= r:
        for j in range(0, width, 16):
            at = acc + 4 * (rr * width + j)
            _a22(x + rr * ldx, ldx, w + 4 * j, ldw, groups, at, width)
        rr += 2
    if rr < r:
        for j in range(0, width, 32):
            at = acc + 4 * (rr * width + j)
            _a14(x + rr * ldx, ldx, w + 4 * j, ldw, groups, at, width)


@numba.njit(inline="always")
def _portable(r, xq, kp, packed, o0, acc, width):  # type: ignore[no-untyped-def]
    """The sums `_vnni` computes, in loops of int32 arithmetic (each step cast back to int32,
    as numba would otherwise widen the products to int64), on views indexed from 0 so that
    LLVM vectorises them."""
    groups, ldw = packed.shape
    groups -= EXTRA_ROWS
    for rr in range(r):
        out = _vector_at(gemm.address(acc) + 4 * rr * width, width, np.int32(0))
        for j in range(width):
            out[j] = np.int32(0)
        x = _vector_at(gemm.address(xq) + rr * kp, kp, np.uint8(0))
        for g in range(groups):
            x0, x1 = np.int32(x[4 * g]), np.int32(x[4 * g + 1])
            x2, x3 = np.int32(x[4 * g + 2]), np.int32(x[4 * g + 3])
            w = _vector_at(gemm.address(packed) + g * ldw + 4 * o0, 4 * width, np.int8(0))
            for j in range(width):
                total = x0 * np.int32(w[4 * j]) + x1 * np.int32(w[4 * j + 1])
                total = np.int32(total) + np.int32(x2 * np.int32(w[4 * j + 2]))
                total = np.int32(total) + np.int32(x3 * np.int32(w[4 * j + 3]))
                out[j] = np.int32(out[j] + np.int32(total))


# --------------------------------------------------------------------------- the product


@intrinsic
def _range(typingctx, x, k, zero):  # type: ignore[no-untyped-def]
    """(min(0, min row), max(0, max row), c) of the k values at address x of `zero`'s type,
    with c nan when they hold a nan or an inf (a nan is never the minimum or maximum of the
    compares below, so c finds it). In vectors of the CPU's width, the last one loaded through
    a mask, its lanes past the row 0 (which changes neither min(0, ...) nor max(0, ...)): a
    scalar loop took four times as long on a row of 784."""
    if not isinstance(zero, types.Float):
        return None
    result = types.UniTuple(zero, 3)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        xa, k_, _ = args
        i64, i32, i1 = ir.IntType(64), ir.IntType(32), ir.IntType(1)
        ft = ir.DoubleType() if zero.bitwidth == 64 else ir.FloatType()
        width = gemm.BITS // zero.bitwidth
        vt, mt = ir.VectorType(ft, width), ir.VectorType(i1, width)
        bits = "f64" if zero.bitwidth == 64 else "f32"
        module = builder.module
        mload = gemm._declare(
            module,
            f"llvm.masked.load.v{width}{bits}.p0",
            ir.FunctionType(vt, [vt.as_pointer(), i32, mt, vt]),
        )
        c = lambda v: ir.Constant(i64, v)  # noqa: E731
        vzero = ir.Constant(vt, [0.0] * width)
        xp = builder.inttoptr(xa, ft.as_pointer())
        full = builder.mul(builder.sdiv(k_, c(width)), c(width))

        def step(v, lo, hi, chk):  # type: ignore[no-untyped-def]
            lo = builder.select(builder.fcmp_ordered("<", v, lo), v, lo)
            hi = builder.select(builder.fcmp_ordered(">", v, hi), v, hi)
            return lo, hi, builder.fadd(chk, builder.fsub(v, v))

        def loop_step(i, carried):  # type: ignore[no-untyped-def]
            v = builder.load(builder.bitcast(builder.gep(xp, [i]), vt.as_pointer()), align=1)
            return list(step(v, *carried))

        lo, hi, chk = gemm.counted_loop(builder, full, width, [vzero] * 3, loop_step)
        # the last values, fewer than a vector, through a mask
        left = builder.sub(k_, full)
        iota = ir.Constant(ir.VectorType(i64, width), list(range(width)))
        splat = builder.insert_element(
            ir.Constant(ir.VectorType(i64, width), ir.Undefined), left, ir.Constant(i32, 0)
        )
        splat = builder.shuffle_vector(
            splat, splat, ir.Constant(ir.VectorType(i32, width), [0] * width)
        )
        mask = builder.icmp_signed("<", iota, splat)
        tail = builder.bitcast(builder.gep(xp, [full]), vt.as_pointer())
        v = builder.call(mload, [tail, ir.Constant(i32, 1), mask, vzero])
        lo, hi, chk = step(v, lo, hi, chk)
        # across the lanes
        fmin = gemm._declare(
            module, f"llvm.vector.reduce.fmin.v{width}{bits}", ir.FunctionType(ft, [vt])
        )
        fmax = gemm._declare(
            module, f"llvm.vector.reduce.fmax.v{width}{bits}", ir.FunctionType(ft, [vt])
        )
        fadd = gemm._declare(
            module, f"llvm.vector.reduce.fadd.v{width}{bits}", ir.FunctionType(ft, [ft, vt])
        )
        values = [
            builder.call(fmin, [lo]),
            builder.call(fmax, [hi]),
            builder.call(fadd, [ir.Constant(ft, 0.0), chk]),
        ]
        return context.make_tuple(builder, result, values)

    return result(x, k, zero), codegen


@intrinsic
def _like(typingctx, value, like):  # type: ignore[no-untyped-def]
    """`value` as a number of `like`'s type (numba gives `float32 / 255` the type float64, and
    converts an int64 to float64)."""
    if not isinstance(value, (types.Integer, types.Float)) or not isinstance(like, types.Float):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return context.cast(builder, args[0], signature.args[0], like)

    return like(value, like), codegen


@numba.njit(inline="always")
def _quantize_rows(xs, first, r, xq, kp, scales, zeros):  # type: ignore[no-untyped-def]
    """Quantise rows first..first+r of xs into xq (kp bytes a row, the padding 0); a row's
    scale goes to scales (nan for a row that is not finite), its zero point to zeros."""
    k = xs.shape[1]
    for rr in range(r):
        row = xs[first + rr]
        lo, hi, check = _range(gemm.address(row), k, row[0])
        span = hi - lo
        at = rr * kp
        if not (np.isfinite(span) and np.isfinite(check)):
            scales[rr] = np.nan
            zeros[rr] = 0
            for i in range(kp):
                xq[at + i] = 0
            continue
        # in the row's dtype throughout, as the numbers of the module's doc
        scale = span / _like(255, span)
        if scale == 0:  # a row of zeros
            scale = _like(1, span)
        bottom, top = _like(0, span), _like(255, span)  # compared as they are, not as float64
        zero = np.rint(-lo / scale)
        zero = zero if zero < top else top
        scales[rr] = scale
        zeros[rr] = np.int32(zero)
        # (a view from the row's first byte: indices from 0, which LLVM knows are not
        # negative, so the stores are vectorised rather than made one byte at a time)
        out = _vector_at(gemm.address(xq) + at, kp, np.uint8(0))
        for i in range(k):
            # x / s, as ONNX's DynamicQuantizeLinear: x * (1 / s) rounds some values that
            # are a hair off a half to the other side (ONNX's own test case -2.5 does)
            v = np.rint(row[i] / scale) + zero
            v = v if v > bottom else bottom
            v = v if v < top else top
            out[i] = np.uint8(np.int32(v))
        for i in range(k, kp):
            out[i] = 0


@intrinsic
def _vector_at(typingctx, address, count, zero):  # type: ignore[no-untyped-def]
    """The `count` values of `zero`'s type at `address`, as a 1-D array that owns nothing."""
    if not isinstance(address, types.Integer) or not isinstance(count, types.Integer):
        return None
    array = types.Array(zero, 1, "C")

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        data_type = context.get_data_type(zero)
        data = builder.inttoptr(args[0], data_type.as_pointer())
        n = context.cast(builder, args[1], signature.args[1], types.intp)
        size = context.get_constant(types.intp, context.get_abi_sizeof(data_type))
        out = context.make_array(array)(context, builder)
        context.populate_array(
            out, data=data, shape=[n], strides=[size], itemsize=size, meminfo=None
        )
        return out._getvalue()

    return array(address, count, zero), codegen


def _make_matmul(path: str) -> object:
    # the tiles of `path` (numba drops the branch `loops` leaves out before it compiles
    # anything, so a CPU without VNNI never compiles VNNI's tiles)
    loops = path == "loops"
    tiles = _avx2 if path == "avx2" else _vnni

    @numba.njit(inline="always")
    def matmul(xs, packed, ys):  # type: ignore[no-untyped-def]
        """ys = the quantised product of xs (n, k) by the packed weight (see the module's
        doc and quantized.pack); xs and ys (n, m) are C-contiguous and do not overlap."""
        n, k = xs.shape
        m = ys.shape[1]
        if n == 0 or m == 0:
            return
        rows_, ldw = packed.shape
        groups = rows_ - EXTRA_ROWS
        size = ys.itemsize
        wsum = _vector_at(gemm.address(packed) + groups * ldw, m, np.int32(0))
        wscale = _vector_at(gemm.address(packed) + (groups + 1) * ldw, m, ys[0, 0])
        kp = 4 * groups
        rows = ROWS if kp <= CHUNK else 1
        position = gemm.stack_save()
        xq = gemm.stack_array(rows * kp, np.uint8(0))
        acc = gemm.stack_array(rows * 16 * LANES if rows == 1 else rows * BLOCK, np.int32(0))
        scales = gemm.stack_array(rows, ys[0, 0])
        zeros = gemm.stack_array(rows, np.int32(0))
        for first in range(0, n, rows):
            r = min(rows, n - first)
            _quantize_rows(xs, first, r, xq, kp, scales, zeros)
            o0 = 0
            while o0 < m:
                width = BLOCK
                if r == 1:  # one row: as many outputs at once as there are
                    if o0 + 16 * LANES <= m:
                        width = 16 * LANES
                    elif o0 + 8 * LANES <= m:
                        width = 8 * LANES
                if loops:
                    _portable(r, xq, kp, packed, o0, acc, width)
                else:
                    weights = gemm.address(packed) + 4 * o0
                    tiles(r, gemm.address(xq), kp, weights, ldw, groups, gemm.address(acc), width)
                end = min(o0 + width, m)
                count = end - o0
                # views that start at o0, indexed from 0: with indices LLVM knows are not
                # negative, this loop is vectorised rather than gathered
                sums = _vector_at(gemm.address(wsum) + 4 * o0, count, np.int32(0))
                scaled = _vector_at(gemm.address(wscale) + size * o0, count, ys[0, 0])
                for rr in range(r):
                    scale = scales[rr]
                    zero = np.int64(zeros[rr])
                    out = _vector_at(gemm.address(ys[first + rr]) + size * o0, count, scale)
                    got = _vector_at(gemm.address(acc) + 4 * rr * width, count, np.int32(0))
                    for j in range(count):
                        # exact in int64, then a value of the model's dtype
                        total = np.int64(got[j]) - zero * np.int64(sums[j])
                        out[j] = _like(total, scale) * (scale * scaled[j])
                o0 = end
        gemm.stack_restore(position)

    return matmul


matmul = _make_matmul(PATH)
# Each path on its own (tests compare them; "vnni" and "avx2" only run on CPUs that have them).
PATHS = {path: _make_matmul(path) for path in ("vnni", "avx2", "loops")}
