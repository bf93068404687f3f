"""Thread control for generated modules.

By default (one thread) layerc's kernels run on the calling thread: every Linear multiplies with
layerc's own kernel (`layerc.runtime.gemm`), not with BLAS, so no call of a generated module
starts threads. `set_num_threads(n)` with n > 1 lets a model's fused forward split a batch of at
least 2 * BLOCK rows into blocks of at most BLOCK rows, a multiple of 8 of them (so that 2, 4 or
8 threads get equal shares), which numba's threads compute in parallel (each block runs every
layer on its own rows, so the outputs are the one-thread outputs bit for bit).
It also limits the BLAS libraries NumPy (and anything else loaded) uses, so that code around a
model, a NumPy reference for instance, keeps to the same budget."""

from __future__ import annotations

from typing import Any

from .hooks import bump

# The most rows in a block of a fused forward's parallel variant; a batch of fewer than
# 2 * BLOCK rows runs on the calling thread.
BLOCK = 256

_limiter: Any = None
# The count set_num_threads was last given, and the threads the kernels may use (at most numba's
# NUMBA_NUM_THREADS): read by modules when they choose their kernel.
_requested = 1
count = 1


def set_num_threads(n: int) -> None:
    """Let layerc's fused forwards use up to `n` threads (as many as numba has, at most), and use
    at most `n` BLAS threads from now on (in every BLAS library loaded, NumPy's too)."""
    global _limiter, _requested, count
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of threads must be a positive integer, got {n!r}")
    import numba
    from threadpoolctl import threadpool_limits

    usable = min(n, int(numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    if usable > 1 or count > 1:  # numba starts its threads here: not for one thread alone
        numba.set_num_threads(usable)
    _limiter = threadpool_limits(limits=n, user_api="blas")
    if usable != count:
        count = usable
        bump()  # every module chooses its kernel again
    _requested = n


def get_num_threads() -> int:
    """The count last given to `set_num_threads` (1 until it is called)."""
    return _requested


def use_threads() -> None:
    """Before a parallel kernel runs: numba's thread count is per calling thread, so set it on
    this one (a call from another thread than set_num_threads's would use all of numba's)."""
    import numba

    if numba.get_num_threads() != count:
        numba.set_num_threads(count)
