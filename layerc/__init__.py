"""layerc: compile .lyr layer specs into numba-native Python modules that behave like
torch.nn.Module. `layerc.load` compiles a .lyr file in process (for notebooks and scripts);
`layerc.driver` runs the compiler (`layerc.cli` is its command line); `layerc.runtime` is what
generated modules import. The global hook functions and the BLAS thread controls are
re-exported here."""

from __future__ import annotations

__version__ = "0.1.0"

import os
from types import ModuleType

from .errors import LayercError
from .runtime import (
    get_num_threads,
    register_module_forward_hook,
    register_module_forward_pre_hook,
    set_num_threads,
)


def load(path: str | os.PathLike[str]) -> ModuleType:
    """Compile the .lyr file at `path` and return the generated module, imported: one class per
    model, as attributes (`layerc.load("seed.lyr").Seed()`).

    The module is written to layerc's per-user cache ($LAYERC_CACHE_DIR, else
    $XDG_CACHE_HOME/layerc, else ~/.cache/layerc; a temporary folder when that is not writable),
    in a folder named by a hash of the generated code and weights. An unchanged source gives the
    same module again in the same process, and numba's cache beside the module serves the
    kernels other processes compiled. A mistake in the source raises `LayercError`, whose text
    is `file:line:col: message`."""
    from .driver import load as load_file  # the compiler, imported only when it is used

    return load_file(path)


__all__ = [
    "LayercError",
    "__version__",
    "get_num_threads",
    "load",
    "register_module_forward_hook",
    "register_module_forward_pre_hook",
    "set_num_threads",
]
