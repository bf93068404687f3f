"""Whether numba can keep a generated module's compiled kernels on disk.

A generated module asks `kernel_cache(__file__)` once, before it defines its kernels, and passes
the answer to `numba.njit(cache=...)`. numba caches beside the module (`__pycache__`), in
NUMBA_CACHE_DIR or in the user's cache folder; when none of them is writable, `cache=True` makes
numba raise at import time. Then the kernels compile in memory in every process instead, with a
warning that says how to get a cache back.

A kernel inlines runtime code (the int8 product, the erf of GELU, the tiles' IR), but numba
checks a cached kernel only against its own module's file and bytecode: after an upgrade of
layerc, a module compiled before it would load kernels built from the old runtime. So the cache
of a generated module's kernels is stamped with a digest of the runtime's sources too
(`_Stamped`): kernels cached by another runtime are compiled again.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path
from typing import Any


def _probe() -> None:
    """A stand-in function: numba's cache locators read only its first line number."""


_RUNTIME_DIGEST: str | None = None


def runtime_digest() -> str:
    """A digest of the runtime's sources (this package's .py files), computed once."""
    global _RUNTIME_DIGEST
    if _RUNTIME_DIGEST is None:
        digest = hashlib.sha256()
        for path in sorted(Path(__file__).parent.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        _RUNTIME_DIGEST = digest.hexdigest()[:16]
    return _RUNTIME_DIGEST


def _stamping(impl: Any) -> Any:
    """The locator class that stamps generated kernels' caches with `runtime_digest()`, made
    once (it subclasses numba's private locator base); `impl` is numba's CacheImpl."""
    from numba.core import caching

    class _Stamped(caching._CacheLocator):  # type: ignore[name-defined,misc]
        """numba's own locator for a generated module's kernel (the first of numba's that
        accepts it), with the runtime's digest added to its source stamp."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def ensure_cache_path(self) -> None:
            self._inner.ensure_cache_path()

        def get_cache_path(self) -> str:
            return str(self._inner.get_cache_path())

        def get_source_stamp(self) -> Any:
            return (self._inner.get_source_stamp(), runtime_digest())

        def get_disambiguator(self) -> str:
            return str(self._inner.get_disambiguator())

        def __getattr__(self, name: str) -> Any:
            # What numba reads of a locator besides its methods (`_py_file`, for the warning
            # that a kernel cannot be cached) is the inner locator's.
            if name == "_inner":  # not set yet (a copy being made): no recursion
                raise AttributeError(name)
            return getattr(self._inner, name)

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            runtime = sys.modules.get("layerc.runtime")
            if runtime is None or getattr(py_func, "__globals__", {}).get("_rt") is not runtime:
                return None  # not a generated module's kernel: numba's own locators decide
            for locator in impl._locator_classes:
                if locator is not cls:
                    inner = locator.from_function(py_func, py_file)
                    if inner is not None:
                        return cls(inner)
            return None

    return _Stamped


def _install_stamping(impl: Any) -> None:
    """Put `_Stamped` first among numba's locators, once per process."""
    locators = impl._locator_classes
    if not any(getattr(c, "__name__", "") == "_Stamped" for c in locators):
        locators.insert(0, _stamping(impl))


def kernel_cache(module_file: str) -> bool:
    """True when numba has a writable cache location for kernels defined in `module_file`;
    otherwise warn and return False."""
    try:
        from numba.core import caching, config

        impl = getattr(caching, "CacheImpl", None)
        if impl is None:  # older numba
            impl = caching._CacheImpl  # type: ignore[attr-defined]
        _install_stamping(impl)
        if getattr(config, "CACHE_LOCATOR_CLASSES", None):
            return True  # the user chose locators; numba reports what they do
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
