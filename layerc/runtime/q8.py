"""The matrix product of a quantised Linear (`quantize=int8`): int8 weights, inputs quantised per
row at run time, products summed in int32.

Weights. Each output's row of the weight is quantised to int8 with a scale of its own, and kept
packed as `vpdpbusd` reads it (layerc/runtime/quantized.py): one 64-byte load holds 16 outputs'
weights for 4 inputs.

Inputs. Each row x of the input is quantised as ONNX Runtime's DynamicQuantizeLinear does, to
uint8 with a zero point: lo = min(0, min x), hi = max(0, max x), s = (hi - lo) / 255,
z = round(-lo / s), u = clamp(round(x * (1 / s)) + z, 0, 255) (rounding half to even). A row of
zeros gives s = 1 and z = 0; a row holding nan or inf gives nan outputs.

The product. acc[o] = sum_k u[k] q[o, k] is exact in int32 (at most 255 * 127 * 65536 < 2^31),
and y[o] = (acc[o] - z * wsum[o]) * (s * scale[o]), where wsum[o] = sum_k q[o, k] removes the
zero point. On a CPU with AVX-512 VNNI, `vpdpbusd` adds 4 byte products to each of 16 int32
lanes in one instruction (tiles in LLVM IR, as layerc/runtime/gemm.py writes its float tiles);
elsewhere plain loops compute the same integers. The result is the same on both paths: integer
sums, then the same float operations.

Everything here is inlined into the kernel that calls it and allocates nothing (the quantised
rows go on the stack), so the same code serves a standalone library (`layerc build`).
"""

from __future__ import annotations

import llvmlite.binding as ll
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import config
from numba.extending import intrinsic

from . import gemm
from .quantized import BLOCK, EXTRA_ROWS, LANES

ROWS = 4  # rows per tile: 4 x 4 accumulators, with room for the weights
CHUNK = 16384  # inputs up to which ROWS rows are quantised at once (ROWS * CHUNK bytes of stack)


def _has_vnni() -> bool:
    """Whether numba compiles for a CPU with AVX-512 VNNI (and 512-bit vectors)."""
    features = getattr(config, "CPU_FEATURES", None)  # NUMBA_CPU_FEATURES, when set
    if features is None:
        host = ll.get_host_cpu_features()
        has = {name for name, on in host.items() if on}
    else:
        has = {f[1:] for f in features.split(",") if f.startswith("+")}
    return {"avx512f", "avx512bw", "avx512vnni"} <= has and gemm.BITS == 512


VNNI = _has_vnni()


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

            totals = gemm.counted_loop(builder, groups_, 1, [vzero] * (rows * vectors), step)
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


@numba.njit(inline="always")
def _portable(r, xq, kp, packed, o0, acc, width):  # type: ignore[no-untyped-def]
    """The sums `_vnni` computes, in loops of int32 arithmetic (each step cast back to int32,
    as numba would otherwise widen the products to int64)."""
    groups = packed.shape[0] - EXTRA_ROWS
    for rr in range(r):
        base = rr * width
        for j in range(width):
            acc[base + j] = np.int32(0)
        for g in range(groups):
            x0 = np.int32(xq[rr * kp + 4 * g])
            x1 = np.int32(xq[rr * kp + 4 * g + 1])
            x2 = np.int32(xq[rr * kp + 4 * g + 2])
            x3 = np.int32(xq[rr * kp + 4 * g + 3])
            for j in range(width):
                at = 4 * (o0 + j)
                total = x0 * np.int32(packed[g, at]) + x1 * np.int32(packed[g, at + 1])
                total = np.int32(total) + np.int32(x2 * np.int32(packed[g, at + 2]))
                total = np.int32(total) + np.int32(x3 * np.int32(packed[g, at + 3]))
                acc[base + j] = np.int32(acc[base + j] + np.int32(total))


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
        zero = np.rint(-lo / scale)
        zero = zero if zero < 255 else _like(255, span)
        scales[rr] = scale
        zeros[rr] = np.int32(zero)
        inverse = _like(1, span) / scale  # a product per value rather than a division
        for i in range(k):
            v = np.rint(row[i] * inverse) + zero
            v = v if v > 0 else v * 0
            v = v if v < 255 else _like(255, span)
            xq[at + i] = np.uint8(np.int32(v))
        for i in range(k, kp):
            xq[at + i] = 0


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


def _make_matmul(vnni: bool) -> object:
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
                if vnni:
                    _vnni(
                        r,
                        gemm.address(xq),
                        kp,
                        gemm.address(packed) + 4 * o0,
                        ldw,
                        groups,
                        gemm.address(acc),
                        width,
                    )
                else:
                    _portable(r, xq, kp, packed, o0, acc, width)
                end = min(o0 + width, m)
                for rr in range(r):
                    scale = scales[rr]
                    zero = np.int64(zeros[rr])
                    out = ys[first + rr]
                    base = rr * width - o0
                    for o in range(o0, end):
                        # exact in int64, then a value of the model's dtype
                        total = np.int64(acc[base + o]) - zero * np.int64(wsum[o])
                        out[o] = _like(total, scale) * (scale * wscale[o])
                o0 = end
        gemm.stack_restore(position)

    return matmul


matmul = _make_matmul(VNNI)
# The loops alone, whatever the CPU (tests compare both paths).
matmul_portable = _make_matmul(False)
