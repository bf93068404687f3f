"""Whether numba can keep a generated module's compiled kernels on disk.

A generated module asks `kernel_cache(__file__)` once, before it defines its kernels, and passes
the answer to `numba.njit(cache=...)`. numba caches beside the module (`__pycache__`), in
NUMBA_CACHE_DIR or in the user's cache folder; when none of them is writable, `cache=True` makes
numba raise at import time. Then the kernels compile in memory in every process instead, with a
warning that says how to get a cache back.
"""

from __future__ import annotations

import warnings


def _probe() -> None:
    """A stand-in function: numba's cache locators read only its first line number."""


def kernel_cache(module_file: str) -> bool:
    """True when numba has a writable cache location for kernels defined in `module_file`;
    otherwise warn and return False."""
    try:
        from numba.core import caching, config

        if getattr(config, "CACHE_LOCATOR_CLASSES", None):
            return True  # the user chose locators; numba reports what they do
        impl = getattr(caching, "CacheImpl", None)
        if impl is None:  # older numba
            impl = caching._CacheImpl  # type: ignore[attr-defined]
        for locator in impl._locator_classes:
            if locator.from_function(_probe, module_file) is not None:
                return True
    except Exception:
        return True  # a numba this code does not know: leave the decision to numba
    warnings.warn(
        f"numba cannot cache the kernels of {module_file}: neither the __pycache__ folder beside "
        "it, NUMBA_CACHE_DIR nor the user cache folder is writable, so they compile in memory "
        "in every process. Set NUMBA_CACHE_DIR to a writable folder to cache them.",
        RuntimeWarning,
        stacklevel=2,
    )
    return False
