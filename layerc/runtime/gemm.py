"""The matrix product of every Linear layer: ys = xs @ W^T, register-blocked, in native vectors.

A Linear layer keeps its weight as torch does, shape (out_features, in_features), but stored
column-major ("F" order): the memory holds W^T, so the `out_features` values that one input
feature multiplies are contiguous. The kernel then computes a tile of ROWS samples by 2 vectors
of outputs at a time, all in registers: for each input feature k it loads two vectors of W^T's
row k, broadcasts each sample's x[k], and adds the products with fused multiply-adds. Each
weight loaded serves ROWS samples and each x value a whole vector of outputs, so the loop runs
at the speed of the FMA units rather than of memory. The tile is written in LLVM IR (a numba
intrinsic), since numba cannot keep an array of vector accumulators in registers; the vector
width is the widest the CPU has (AVX-512: 16 float32, AVX2: 8), chosen when this module is
imported. The last tile of a layer whose width is not a multiple of the vectors loads and stores
through masks, so nothing outside the arrays is touched, and nothing is packed or cached: the
weights are read where they are, and writing to them (as torch allows) takes effect at once.

The kernel needs no BLAS and does not allocate (unless given a weight in another layout, which
it copies). It runs on the calling thread.
"""

from __future__ import annotations

import threading
from typing import Any

import llvmlite.binding as ll
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import config
from numba.extending import intrinsic

from .cache import kernel_cache
from .quantized import aligned_zeros

ROWS = 6  # samples per tile: 6 x 2 vector accumulators, with room for the weights and x
VECTORS = 2  # vectors of outputs per tile


def cpu_features() -> set[str]:
    """The features of the CPU numba compiles for: NUMBA_CPU_FEATURES when set (`layerc build
    --cpu` sets it), else this machine's."""
    features = getattr(config, "CPU_FEATURES", None)
    if features is None:
        return {name for name, on in ll.get_host_cpu_features().items() if on}
    return {f[1:] for f in features.split(",") if f.startswith("+")}


def _vector_bits() -> int:
    """512 where numba compiles for a CPU with AVX-512F, else 256 (AVX2 or narrower)."""
    return 512 if "avx512f" in cpu_features() else 256


BITS = _vector_bits()


def lanes(dtype: np.dtype | type) -> int:
    """Values of `dtype` in one vector register."""
    return BITS // (8 * np.dtype(dtype).itemsize)


def _declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    existing = module.globals.get(name)
    if isinstance(existing, ir.Function):
        return existing
    return ir.Function(module, fnty, name=name)


def _make_tile(rows: int, masked: bool, vectors: int = VECTORS) -> object:
    """An intrinsic `tile(x, ldx, w, ldw, k, y, ldy, nc, zero)` that writes the `rows` x NR
    block y[r, j] = sum_i x[r, i] * w[i, j] (NR = `vectors` vectors; addresses and leading
    dimensions in elements, `zero` a 0 of the element type). With `masked`, only the first `nc`
    columns are read and written."""

    @intrinsic
    def tile(typingctx, x, ldx, w, ldw, k, y, ldy, nc, zero):  # type: ignore[no-untyped-def]
        if not isinstance(zero, types.Float):
            return None
        sig = types.void(
            types.intp, types.intp, types.intp, types.intp, types.intp, types.intp, types.intp,
            types.intp, zero,
        )  # fmt: skip
        width = lanes(np.float64 if zero.bitwidth == 64 else np.float32)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            xa, ldx_, wa, ldw_, k_, ya, ldy_, nc_, _ = args
            i64, i32, i1 = ir.IntType(64), ir.IntType(32), ir.IntType(1)
            ft = ir.DoubleType() if zero.bitwidth == 64 else ir.FloatType()
            vt = ir.VectorType(ft, width)
            mt = ir.VectorType(i1, width)
            fp, vp = ft.as_pointer(), vt.as_pointer()
            bits = "f64" if zero.bitwidth == 64 else "f32"
            module = builder.module
            fma = _declare(module, f"llvm.fma.v{width}{bits}", ir.FunctionType(vt, [vt, vt, vt]))
            xp = builder.inttoptr(xa, fp)
            wp = builder.inttoptr(wa, fp)
            yp = builder.inttoptr(ya, fp)
            c = lambda v: ir.Constant(i64, v)  # noqa: E731
            vzero = ir.Constant(vt, [0.0] * width)
            masks = []
            if masked:
                mload = _declare(
                    module,
                    f"llvm.masked.load.v{width}{bits}.p0",
                    ir.FunctionType(vt, [vp, i32, mt, vt]),
                )
                mstore = _declare(
                    module,
                    f"llvm.masked.store.v{width}{bits}.p0",
                    ir.FunctionType(ir.VoidType(), [vt, vp, i32, mt]),
                )
                iota = ir.Constant(ir.VectorType(i64, width), list(range(width)))
                for v in range(vectors):
                    left = builder.sub(nc_, c(v * width))
                    splat = builder.insert_element(
                        ir.Constant(ir.VectorType(i64, width), ir.Undefined),
                        left,
                        ir.Constant(i32, 0),
                    )
                    splat = builder.shuffle_vector(
                        splat, splat, ir.Constant(ir.VectorType(i32, width), [0] * width)
                    )
                    masks.append(builder.icmp_signed("<", iota, splat))
            align = ir.Constant(i32, 8 if bits == "f64" else 4)

            def load(ptr, v):  # type: ignore[no-untyped-def]
                ptr = builder.bitcast(ptr, vp)
                if masked:
                    return builder.call(mload, [ptr, align, masks[v], vzero])
                return builder.load(ptr, align=align.constant)

            def store(value, ptr, v):  # type: ignore[no-untyped-def]
                ptr = builder.bitcast(ptr, vp)
                if masked:
                    builder.call(mstore, [value, ptr, align, masks[v]])
                else:
                    builder.store(value, ptr, align=align.constant)

            broadcast = ir.Constant(ir.VectorType(i32, width), [0] * width)
            undef = ir.Constant(vt, ir.Undefined)

            # The loop over the inputs: accumulators start at zero (phis of the loop block),
            # each input i loads the tile's vectors of W^T's row i and broadcasts x[r, i] of
            # each row r of the tile. (Several accumulator sets, for inputs i, i+1, ..., would
            # hide the FMA latency in tiles of one or two rows, but those are bound by reading
            # the weights: measured, no gain at batch 1; what gains there is reading each row
            # whole, in the wide single-row tiles below.)

            def step(i, acc):  # type: ignore[no-untyped-def]
                wrow = builder.mul(i, ldw_)
                wv = [
                    load(builder.gep(wp, [builder.add(wrow, c(v * width))]), v)
                    for v in range(vectors)
                ]
                new = []
                for r in range(rows):
                    xv = builder.load(builder.gep(xp, [builder.add(builder.mul(c(r), ldx_), i)]))
                    xv = builder.insert_element(undef, xv, ir.Constant(i32, 0))
                    xv = builder.shuffle_vector(xv, undef, broadcast)
                    new += [
                        builder.call(fma, [xv, wv[v], acc[r * vectors + v]]) for v in range(vectors)
                    ]
                return new

            flat = counted_loop(builder, k_, 1, [vzero] * (rows * vectors), step, unroll=rows > 1)
            total = [flat[r * vectors : (r + 1) * vectors] for r in range(rows)]
            for r in range(rows):
                for v in range(vectors):
                    offset = builder.add(builder.mul(c(r), ldy_), c(v * width))
                    store(total[r][v], builder.gep(yp, [offset]), v)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def counted_loop(builder, count, stride, initial, step, unroll=True):  # type: ignore[no-untyped-def]
    """LLVM IR of `for i in range(0, count, stride)` (i and count i64 values) that carries
    values from pass to pass: `step(i, values)` emits one pass and returns the new values; the
    values after the loop are returned (`initial` when count <= 0). The tiles here and in
    layerc/runtime/q8.py keep their accumulators in registers this way.

    With `unroll=False`, LLVM is told not to unroll the loop (`llvm.loop.unroll.disable`). The
    tiles of one row want that: they stream the weights, one pass per input, and LLVM's
    unrolling by 2 or 4 made them slower (on Zen 5, Linear(256, 128) at batch 1 called from
    C took 1.0 us unrolled and 0.70 us not; the MLP 784-256-128-10, 6.7 us and 5.7 us). The
    tiles of several rows run at the FMA units' speed and keep LLVM's choice."""
    i64 = ir.IntType(64)
    before = builder.block
    body = builder.append_basic_block("loop")
    after = builder.append_basic_block("loop.after")
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(i64, 0)), body, after)
    builder.position_at_end(body)
    i = builder.phi(i64)
    carried = [builder.phi(value.type) for value in initial]
    new = step(i, carried)
    end = builder.block
    following = builder.add(i, ir.Constant(i64, stride))
    i.add_incoming(ir.Constant(i64, 0), before)
    i.add_incoming(following, end)
    for phi, first, last in zip(carried, initial, new, strict=True):
        phi.add_incoming(first, before)
        phi.add_incoming(last, end)
    back = builder.cbranch(builder.icmp_signed("<", following, count), body, after)
    if not unroll:
        back.set_metadata("llvm.loop", _loop_without_unrolling(builder.module))
    builder.position_at_end(after)
    results = [builder.phi(value.type) for value in initial]
    for phi, first, last in zip(results, initial, new, strict=True):
        phi.add_incoming(first, before)
        phi.add_incoming(last, end)
    return results


def _loop_without_unrolling(module: ir.Module) -> ir.values.MDValue:
    """A loop's `llvm.loop` metadata that forbids unrolling it: a node of its own whose first
    operand is itself (as LLVM wants a loop's metadata to be; llvmlite's `add_metadata` would
    share equal nodes between loops), then `!{!"llvm.loop.unroll.disable"}`."""
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop = ir.values.MDValue(module, [disable], name=str(len(module.metadata)))
    loop.operands = (loop, disable)
    return loop


_t1, _t2, _t3, _t4, _t5, _t6 = (_make_tile(rows, masked=False) for rows in range(1, ROWS + 1))
# The masked tiles serve only the last block of columns of a layer: whole tiles of ROWS rows,
# then one row at a time (fewer variants, less for LLVM to compile into every caller).
_m1, _m6 = _make_tile(1, masked=True), _make_tile(ROWS, masked=True)
# A single sample (batch 1) reads every weight once for one multiply-add, so the product runs
# at the speed the weights arrive. Its tiles hold 16, 8 or 4 vectors of outputs, so that each
# row of W^T is read whole, front to back, rather than 2 vectors at a time in as many passes as
# there are blocks of columns: the MLP 784-256-128-10 at batch 1 took 6.7 us rather than 7.7
# called from C (`bench/bench.py --only c`), and 8.6 us rather than 9.5 from Python.
_w16, _w8, _w4 = (_make_tile(1, masked=False, vectors=v) for v in (16, 8, 4))


@numba.njit
def _block(x, ldx, w, ldw, k, y, ldy, n, nc, zero):  # type: ignore[no-untyped-def]
    """y[:n, :nc] = x[:n] @ w[:, :nc] for one block of nc <= NR columns, ROWS rows a tile
    (addresses in bytes, leading dimensions in elements)."""
    size = _itemsize(zero)
    i = 0
    if nc == VECTORS * (BITS // 8) // size:
        while i + ROWS <= n:
            _t6(x + i * ldx * size, ldx, w, ldw, k, y + i * ldy * size, ldy, nc, zero)
            i += ROWS
        xa = x + i * ldx * size
        ya = y + i * ldy * size
        r = n - i
        if r == 1:
            _t1(xa, ldx, w, ldw, k, ya, ldy, nc, zero)
        elif r == 2:
            _t2(xa, ldx, w, ldw, k, ya, ldy, nc, zero)
        elif r == 3:
            _t3(xa, ldx, w, ldw, k, ya, ldy, nc, zero)
        elif r == 4:
            _t4(xa, ldx, w, ldw, k, ya, ldy, nc, zero)
        elif r == 5:
            _t5(xa, ldx, w, ldw, k, ya, ldy, nc, zero)
        return
    while i + ROWS <= n:
        _m6(x + i * ldx * size, ldx, w, ldw, k, y + i * ldy * size, ldy, nc, zero)
        i += ROWS
    while i < n:
        _m1(x + i * ldx * size, ldx, w, ldw, k, y + i * ldy * size, ldy, nc, zero)
        i += 1


@intrinsic
def _itemsize(typingctx, value):  # type: ignore[no-untyped-def]
    """The size in bytes of a float scalar's type, as a compile-time constant."""
    if not isinstance(value, types.Float):
        return None
    size = value.bitwidth // 8

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return ir.Constant(ir.IntType(64), size)

    return types.intp(value), codegen


@intrinsic
def address(typingctx, array):  # type: ignore[no-untyped-def]
    """The address of an array's first element, as a signed integer (`array.ctypes.data` is
    unsigned, and numba turns unsigned plus signed arithmetic into floating point)."""
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, ir.IntType(64))

    return types.intp(array), codegen


@intrinsic
def stack_array(typingctx, count, zero):  # type: ignore[no-untyped-def]
    """`count` values of `zero`'s type (a float or an integer) on the calling kernel's stack, as
    a 1-D array, not initialised, that owns nothing: it needs no allocator, so kernels of a
    standalone library (layerc/runtime/standalone.py) may use it, and it costs nothing per call.
    (LLVM restores the stack after a call it inlines, so it does not grow in a caller's loop.)"""
    if not isinstance(count, types.Integer) or not isinstance(zero, (types.Float, types.Integer)):
        return None
    array = types.Array(zero, 1, "C")

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        n = context.cast(builder, args[0], signature.args[0], types.intp)
        data = builder.alloca(context.get_data_type(zero), size=n)
        data.align = 64
        size = context.get_constant(types.intp, context.get_abi_sizeof(data.type.pointee))
        out = context.make_array(array)(context, builder)
        context.populate_array(
            out, data=data, shape=[n], strides=[size], itemsize=size, meminfo=None
        )
        return out._getvalue()

    return array(count, zero), codegen


@intrinsic
def stack_save(typingctx):  # type: ignore[no-untyped-def]
    """The stack's position, for `stack_restore`: what `stack_array` takes between the two is
    given back, so that a function inlined into a caller's loop does not grow the stack at each
    pass (numba inlines `inline="always"` functions before LLVM sees them, so LLVM's own care for
    the allocations of the functions it inlines does not apply)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        fn = _declare(
            builder.module, "llvm.stacksave", ir.FunctionType(ir.IntType(8).as_pointer(), [])
        )
        return builder.ptrtoint(builder.call(fn, []), ir.IntType(64))

    return types.intp(), codegen


@intrinsic
def stack_restore(typingctx, position):  # type: ignore[no-untyped-def]
    """Give back the stack taken since `stack_save` returned `position`."""
    if not isinstance(position, types.Integer):
        return None

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i8p = ir.IntType(8).as_pointer()
        fn = _declare(builder.module, "llvm.stackrestore", ir.FunctionType(ir.VoidType(), [i8p]))
        builder.call(fn, [builder.inttoptr(args[0], i8p)])
        return context.get_dummy_value()

    return types.void(position), codegen


def product_function(dtype: type) -> Any:
    """The whole product for one dtype, `f(n, k, m, x, w, ldw, y)` on addresses, as a Python
    function for numba to compile: into a C function here (`_native`), inline into a kernel of
    a standalone library (layerc/runtime/standalone.py)."""
    zero = dtype(0)
    size = np.dtype(dtype).itemsize
    nr = VECTORS * (BITS // 8) // size

    lane = (BITS // 8) // size

    def product(n, k, m, x, w, ldw, y):  # type: ignore[no-untyped-def]
        j = 0
        if n == 1:  # one sample: as many outputs at a time as fit (see _ONE_ROW)
            while j + 16 * lane <= m:
                _w16(x, k, w + j * size, ldw, k, y + j * size, m, 16 * lane, zero)
                j += 16 * lane
            if j + 8 * lane <= m:
                _w8(x, k, w + j * size, ldw, k, y + j * size, m, 8 * lane, zero)
                j += 8 * lane
            if j + 4 * lane <= m:
                _w4(x, k, w + j * size, ldw, k, y + j * size, m, 4 * lane, zero)
                j += 4 * lane
        for c in range(j, m, nr):
            _block(x, k, w + c * size, ldw, k, y + c * size, m, n, min(nr, m - c), zero)

    return product


PRODUCT_TYPE = types.void(*[types.intp] * 7)


def _native(dtype: type) -> Any:
    """The product for one dtype as a C function, compiled (or loaded from numba's cache) once
    per process."""
    # Cached where numba can write (as a generated module's kernels; else compiled in memory).
    return numba.cfunc(PRODUCT_TYPE, cache=kernel_cache(__file__))(product_function(dtype))


# Kernels call the product by name, through the symbols below, rather than linking its code into
# each of them: LLVM would otherwise optimise the tiles again in every kernel that multiplies
# (a second per Linear at first call). The names carry a version: a change of their arguments
# gets new names, so a kernel cached by an older layerc fails to link rather than misbehave.
SYMBOLS = {np.dtype(np.float32): "layerc_gemm_v1_f32", np.dtype(np.float64): "layerc_gemm_v1_f64"}
_NATIVE: dict[np.dtype, Any] = {}
_LOADING = threading.Lock()


def load(dtype: type | np.dtype) -> None:
    """Compile (or load from numba's cache) the product for `dtype` and register its symbol,
    once per process. A generated module calls this for its dtypes when it is imported, before
    numba loads any cached kernel that calls the product; compiling a kernel calls it too."""
    dtype = np.dtype(dtype)
    if dtype in _NATIVE:
        return
    with _LOADING:  # one product per dtype, however many threads load it at once
        if dtype not in _NATIVE:
            native = _native(dtype.type)
            ll.add_symbol(SYMBOLS[dtype], native.address)
            _NATIVE[dtype] = native


@intrinsic
def _product(typingctx, n, k, m, x, w, ldw, y, zero, weight):  # type: ignore[no-untyped-def]
    """Call the registered product for `zero`'s type. `weight` is the array `w` points into:
    passed (and not read) so that numba keeps it alive until the product has read it, as it
    may be a copy made just before the call that nothing else holds."""
    if not isinstance(zero, types.Float) or not isinstance(weight, types.Array):
        return None
    dtype = np.dtype(np.float64 if zero.bitwidth == 64 else np.float32)
    symbol = SYMBOLS[dtype]
    load(dtype)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [i64] * 7)
        fn = _declare(builder.module, symbol, fnty)
        builder.call(fn, args[:7])
        return context.get_dummy_value()

    return types.void(*[types.intp] * 7, zero, weight), codegen


@numba.njit(inline="always")
def matmul(xs, weight, ys):  # type: ignore[no-untyped-def]
    """ys = xs @ weight.T. xs (n, k) and ys (n, m) are C-contiguous and do not overlap; weight
    (m, k) is read in place when stored column-major (as Linear stores it), copied otherwise."""
    n, k = xs.shape
    m = ys.shape[1]
    if n == 0 or m == 0:
        return
    wt = weight.T
    size = xs.itemsize
    if (m > 1 and wt.strides[1] != size) or wt.strides[0] % size != 0:  # as `reads_in_place`
        wt = np.ascontiguousarray(wt)
    _product(n, k, m, address(xs), address(wt), wt.strides[0] // size, address(ys), ys[0, 0], wt)


def reads_in_place(weight: np.ndarray) -> bool:
    """Whether `matmul` reads `weight` (m, k) where it is, without a copy per call: the values
    of each column (one input feature) must be adjacent, as in an F-ordered array."""
    m = weight.shape[0]
    size = weight.itemsize
    return (m <= 1 or weight.strides[0] == size) and weight.strides[1] % size == 0


def transposed(weight: np.ndarray) -> np.ndarray:
    """A copy of `weight` (m, k) as `matmul` reads it fastest: W^T in memory, 64-byte aligned
    (a vector load then never straddles two cache lines), its rows an odd number of cache lines
    apart, so that the rows a tile reads fall in different cache sets (a power-of-two row length
    makes them collide)."""
    m, k = weight.shape
    line = 64 // weight.dtype.itemsize  # values in a cache line, a whole number of vectors
    ld = -(-m // line) * line
    if ld // line % 2 == 0:
        ld += line
    storage = aligned_zeros((k, ld), weight.dtype)
    view = storage[:, :m].T
    view[...] = weight
    return view
