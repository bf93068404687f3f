"""What generated modules import: the `Module` base class, the layer classes, hook handles and
the global hook registries, and the reader for weights files."""

from .cache import kernel_cache
from .hooks import (
    RemovableHandle,
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from .layers import (
    Identity,
    Layer,
    LeakyReLU,
    Linear,
    Model,
    QLinear,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    TupleModel,
    child,
)
from .module import Module, ShapeError, kernel_forward
from .threads import get_num_threads, set_num_threads

# Generated modules call `check_abi(N)` with the oldest runtime ABI that runs them: a module
# this runtime cannot run must be recompiled rather than misbehave. ABI 2 added the generic
# `Layer` class, buffers and per-sample shapes of more than one axis; ABI 3 the matrix-product
# kernel `gemm.matmul`, with Linear weights stored transposed; ABI 4 graph models (a generated
# `forward` marked with `kernel_forward`, `Module._inputs`, `TupleModel`); ABI 5 quantised
# Linear layers (`QLinear`, `q8.matmul`, kernel arguments in another dtype than the module's).
# It runs older modules too.
ABI = 5
SUPPORTED_ABIS = (1, 2, 3, 4, 5)


def check_abi(abi: int) -> None:
    if abi not in SUPPORTED_ABIS:
        raise ImportError(
            f"this module was generated for layerc runtime ABI {abi}, but the installed layerc "
            f"has ABI {ABI}: recompile the .lyr source"
        )


__all__ = [
    "ABI",
    "Identity",
    "Layer",
    "LeakyReLU",
    "Linear",
    "Model",
    "Module",
    "QLinear",
    "ReLU",
    "RemovableHandle",
    "ShapeError",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "TupleModel",
    "check_abi",
    "kernel_forward",
    "get_num_threads",
    "kernel_cache",
    "set_num_threads",
    "child",
    "register_module_forward_hook",
    "register_module_forward_pre_hook",
]
