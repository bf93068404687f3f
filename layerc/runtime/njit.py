"""`Module.njit()`: a numba function `f(x) -> y` with a module's weights bound.

The weights are captured by the closure, which numba freezes into the compiled function as
constants: `f` is a snapshot of the weights at the time `njit()` was called, and calling it from
a user's `@numba.njit` loop crosses no Python object per call. `x` may have any shape
(*, *in_shape) and is converted to the module's dtype (a no-op when it already has it).
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np


def bind(
    kernel: Callable[..., object],
    arrays: tuple[np.ndarray, ...],
    dtype: np.dtype,
    tail: tuple[int, ...] | None,
    rank: int = 1,
) -> Callable[[np.ndarray], np.ndarray]:
    """`f(x) -> y` running `kernel(x, y, *arrays)`: y has x's shape (`tail` None), or x's with
    the last `rank` axes replaced by `tail`."""
    scalar = dtype.type
    if tail is None:  # the output has the input's shape

        @numba.njit
        def forward(x):  # type: ignore[no-untyped-def]
            xc = np.ascontiguousarray(np.asarray(x, dtype=scalar))
            y = np.empty(xc.shape, dtype=scalar)
            kernel(xc, y, *arrays)
            return y

        return forward  # type: ignore[no-any-return]

    cut = -rank  # a closure constant, so numba slices the shape tuple statically

    @numba.njit
    def forward_shaped(x):  # type: ignore[no-untyped-def]
        xc = np.ascontiguousarray(np.asarray(x, dtype=scalar))
        y = np.empty(xc.shape[:cut] + tail, dtype=scalar)
        kernel(xc, y, *arrays)
        return y

    return forward_shaped  # type: ignore[no-any-return]


def bind_tuple(
    call: Callable[..., tuple[np.ndarray, ...]], arrays: tuple[np.ndarray, ...], several: bool
) -> Callable[..., object]:
    """`f(*xs)` running a graph model's `call(xs, arrays)`: its tuple of outputs, or the one
    output when there is one."""
    if several:

        @numba.njit
        def forward_tuple(*xs):  # type: ignore[no-untyped-def]
            return call(xs, arrays)

        return forward_tuple  # type: ignore[no-any-return]

    @numba.njit
    def forward_one(*xs):  # type: ignore[no-untyped-def]
        return call(xs, arrays)[0]

    return forward_one  # type: ignore[no-any-return]
