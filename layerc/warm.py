"""`layerc compile --warm`: fill numba's on-disk cache at compile time, so that the first call in
a new process loads machine code instead of compiling it. A generated module path in; each
model's fused kernel and its layers' own kernels compiled for one sample and for a batch (of
every input of a graph model), with a
line of progress per step."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .driver import import_module
from .errors import UsageError


def warm(module_path: Path, report: Callable[[str], None]) -> int:
    """Compile and cache every kernel of the module at `module_path`; return how many models."""
    start = time.perf_counter()
    # numba's cache records the module's import name, so warm under the name users import.
    # `compile` refuses names Python already knows; a module in use is never replaced, and the
    # warmed one is not left behind in sys.modules.
    import_name = module_path.stem
    if import_name in sys.modules:
        raise UsageError(
            f"cannot warm {module_path}: a module named {import_name!r} is already imported"
        )
    module = import_module(module_path, import_name)
    try:
        classes = [getattr(module, name) for name in module.__all__]
        for index, cls in enumerate(classes, 1):
            net = cls()
            name = net._get_name()
            for label, batch in (("one sample", ()), ("a batch", (2,))):
                xs = [np.zeros(batch + shape, dtype=net.dtype) for shape in net.in_shapes]
                report(f"[{index}/{len(classes)}] {name}: fused forward, {label}")
                net(*xs)
                report(f"[{index}/{len(classes)}] {name}: layer by layer, {label}")
                net.forward(*xs)
    finally:
        sys.modules.pop(import_name, None)
    report(f"warmed {len(classes)} model(s) in {time.perf_counter() - start:.1f} s")
    return len(classes)
