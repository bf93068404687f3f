"""Thread control for generated modules.

layerc's kernels run on the calling thread: every Linear multiplies with layerc's own kernel
(`layerc.runtime.gemm`), not with BLAS, so no call of a generated module starts threads.
`set_num_threads` limits the BLAS libraries NumPy (and anything else loaded) uses, so that code
around a model, a NumPy reference for instance, keeps to the same budget."""

from __future__ import annotations

from typing import Any

_limiter: Any = None


def set_num_threads(n: int) -> None:
    """Use at most `n` BLAS threads from now on (in every BLAS library loaded, NumPy's too)."""
    global _limiter
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of threads must be a positive integer, got {n!r}")
    from threadpoolctl import threadpool_limits

    _limiter = threadpool_limits(limits=n, user_api="blas")


def get_num_threads() -> int:
    """The largest thread count among the BLAS libraries loaded in this process."""
    from threadpoolctl import threadpool_info

    return max(
        (info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"), default=1
    )
