"""layerc: compile .lyr layer specs into numba-native Python modules that behave like
torch.nn.Module. `layerc.compile_file` is the compiler; `layerc.runtime` is what generated
modules import; the global hook functions are re-exported here as torch exports them."""

__version__ = "0.1.0"

from .runtime import register_module_forward_hook, register_module_forward_pre_hook  # noqa: E402

__all__ = ["__version__", "register_module_forward_hook", "register_module_forward_pre_hook"]
