"""Thread control for generated modules. Batched Linear layers run in BLAS (SciPy's, called by
numba's np.dot), which uses every core by default; `set_num_threads(1)` pins layerc to one."""

from __future__ import annotations

from typing import Any

_limiter: Any = None


def set_num_threads(n: int) -> None:
    """Use at most `n` BLAS threads from now on (this also limits NumPy's BLAS)."""
    global _limiter
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of threads must be a positive integer, got {n!r}")
    # Load SciPy's BLAS first: threadpoolctl limits only libraries already loaded.
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import threadpool_limits

    _limiter = threadpool_limits(limits=n, user_api="blas")


def get_num_threads() -> int:
    """The largest thread count among the BLAS libraries loaded in this process."""
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import threadpool_info

    return max(
        (info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"), default=1
    )
