"""`Module.njit()`: a numba function `f(x) -> y` with a module's weights bound.

The weights are captured by the closure, which numba freezes into the compiled function as
constants: `f` is a snapshot of the weights at the time `njit()` was called, and calling it from
a user's `@numba.njit` loop crosses no Python object per call.
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np


def bind(kernel: Callable[..., np.ndarray], arrays: tuple[np.ndarray, ...]) -> Callable[[np.ndarray], np.ndarray]:
    @numba.njit
    def forward(x):  # type: ignore[no-untyped-def]
        return kernel(x, *arrays)

    return forward  # type: ignore[no-any-return]
