"""layerc: compile .lyr layer specs into numba-native Python modules that behave like
torch.nn.Module. `layerc.driver` runs the compiler (`layerc.cli` is its command line);
`layerc.runtime` is what generated modules import. The global hook functions and the BLAS
thread controls are re-exported here."""

__version__ = "0.1.0"

from .runtime import (  # noqa: E402
    get_num_threads,
    register_module_forward_hook,
    register_module_forward_pre_hook,
    set_num_threads,
)

__all__ = [
    "__version__",
    "get_num_threads",
    "register_module_forward_hook",
    "register_module_forward_pre_hook",
    "set_num_threads",
]
