"""What the kernels of a standalone library (`layerc build`, layerc/build.py) call instead of the
rest of the runtime. Those kernels are compiled by numba without its runtime (`_nrt=False`): they
may not allocate, and everything they call ends up in one object file that needs only libc and
libm. So arrays are views of the caller's memory (`matrix_at`, `rows_of`), the weights are constants laid out as
the kernels read them (`laid_out`), and the matrix product is compiled into each kernel that
multiplies (`matmul`) rather than called through the symbol a Python process registers
(layerc/runtime/gemm.py).

A generated standalone module imports this module as `_rt_gemm`, so that its Linear kernels,
written once by code generation, call `_rt_gemm.matmul` here as in a Python module.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from . import gemm


def _matrix(context, builder, array_type, data, rows, width):  # type: ignore[no-untyped-def]
    """A C-contiguous (rows, width) array struct over `data`, owning nothing."""
    size = context.get_constant(types.intp, context.get_abi_sizeof(data.type.pointee))
    out = context.make_array(array_type)(context, builder)
    context.populate_array(
        out,
        data=data,
        shape=[rows, width],
        strides=[builder.mul(width, size), size],
        itemsize=size,
        meminfo=None,
    )
    return out._getvalue()


@intrinsic
def matrix_at(typingctx, pointer, offset, rows, width):  # type: ignore[no-untyped-def]
    """The (rows, width) values at `pointer` + `offset` (in values) as a C-contiguous array
    that owns nothing (numba's `carray` needs numba's runtime to return one)."""
    if not isinstance(pointer, types.CPointer):
        return None
    array = types.Array(pointer.dtype, 2, "C")

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        ptr, at, n, w = (
            context.cast(builder, value, ty, types.intp) if i else value
            for i, (value, ty) in enumerate(zip(args, signature.args, strict=True))
        )
        return _matrix(context, builder, array, builder.gep(ptr, [at]), n, w)

    return array(pointer, offset, rows, width), codegen


@intrinsic
def rows_of(typingctx, matrix, rows, width):  # type: ignore[no-untyped-def]
    """A C-contiguous array's values as (rows, width), for rows * width of them: `reshape`,
    without the runtime helper numba's reshape calls."""
    if not isinstance(matrix, types.Array) or matrix.layout != "C":
        return None
    array = types.Array(matrix.dtype, 2, "C")

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        n, w = (
            context.cast(builder, value, ty, types.intp)
            for value, ty in zip(args[1:], signature.args[1:], strict=True)
        )
        return _matrix(context, builder, array, data, n, w)

    return array(matrix, rows, width), codegen


# `count` values on the calling kernel's stack (numba's `np.empty` needs numba's runtime).
stack_vector = gemm.stack_array


@intrinsic
def _product(typingctx, n, k, m, x, w, ldw, y, zero):  # type: ignore[no-untyped-def]
    """gemm's product for `zero`'s type, compiled into the calling kernel."""
    if not isinstance(zero, types.Float):
        return None
    dtype = np.float64 if zero.bitwidth == 64 else np.float32
    product = gemm.product_function(dtype)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        context.compile_internal(builder, product, gemm.PRODUCT_TYPE, args[:7])
        return context.get_dummy_value()

    return types.void(*[types.intp] * 7, zero), codegen


@numba.njit(inline="always")
def matmul(xs, weight, ys):  # type: ignore[no-untyped-def]
    """ys = xs @ weight.T, as gemm.matmul, for a weight laid out as `laid_out` leaves it."""
    n, k = xs.shape
    m = ys.shape[1]
    if n == 0 or m == 0:
        return
    wt = weight.T
    size = xs.itemsize
    ld = wt.strides[0] // size
    _product(n, k, m, gemm.address(xs), gemm.address(wt), ld, gemm.address(ys), ys[0, 0])


def laid_out(array: np.ndarray) -> np.ndarray:
    """A kernel argument (as a generated module's instance lays it out) in one contiguous
    block, to be frozen into the library as a constant. A Linear weight that the product reads
    transposed (its columns adjacent) keeps the padding gemm.transposed gives it in the Python
    module, the columns an odd number of cache lines apart, as a column-major (ld, k) array
    whose rows past the weight's are zeros (the kernels read only the first out_features);
    anything else is in C order. (Without the padding, the MLP 784-256-128-10 called from C
    was no faster at batch 1 and up to a tenth slower at batch 64: `bench/bench.py --only c`.)"""
    if array.ndim == 2 and array.shape[0] > 1 and array.strides[0] == array.itemsize:
        m, k = array.shape
        ld = gemm.transposed(array).strides[1] // array.itemsize
        padded = np.zeros((ld, k), dtype=array.dtype, order="F")
        padded[:m] = array
        return padded
    return np.ascontiguousarray(array)
