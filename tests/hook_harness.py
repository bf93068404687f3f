"""The harness of the hook tests against PyTorch: a `Side` is one implementation under test
(layerc's model or its torch twin) with the log its hooks write; `snap` freezes what a hook saw.
tests/test_hooks_torch.py and tests/test_graph_torch.py run each scenario on both sides and
compare the logs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.modules.module as torch_module

import layerc

# torch.testing.assert_close's defaults for float32 and float64
F32 = {"rtol": 1.3e-6, "atol": 1e-5}
F64 = {"rtol": 1e-7, "atol": 1e-7}


def snap(value: Any) -> Any:
    """What a hook saw, frozen: arrays and tensors as NumPy copies (dtype kept), containers
    recursively, anything else as is."""
    if isinstance(value, torch.Tensor):
        return value.detach().numpy().copy()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, tuple):
        return tuple(snap(v) for v in value)
    if isinstance(value, list):
        return [snap(v) for v in value]
    if isinstance(value, dict):
        return {key: snap(v) for key, v in value.items()}
    return value


class Side:
    """One implementation under test: its model, and the log its hooks write."""

    def __init__(self, kind: str, net: Any) -> None:
        self.kind = kind
        self.net = net
        self.log: list[tuple] = []
        self.paths = {module: path for path, module in net.named_modules()}
        self.handles: list[Any] = []  # the global hooks' handles, removed by close()

    @property
    def is_torch(self) -> bool:
        return self.kind == "torch"

    def input(self, x: np.ndarray) -> Any:
        """`x` as this side's input type (a NumPy array or a torch tensor), a fresh copy."""
        return torch.from_numpy(x.copy()) if self.is_torch else x.copy()

    def relu(self, value: Any) -> Any:
        return torch.relu(value) if self.is_torch else np.maximum(value, value.dtype.type(0))

    def register_global_pre(self, hook: Callable) -> Any:
        if self.is_torch:
            handle = torch_module.register_module_forward_pre_hook(hook)
        else:
            handle = layerc.register_module_forward_pre_hook(hook)
        self.handles.append(handle)
        return handle

    def register_global(self, hook: Callable, **options: bool) -> Any:
        if self.is_torch:
            handle = torch_module.register_module_forward_hook(hook, **options)
        else:
            handle = layerc.register_module_forward_hook(hook, **options)
        self.handles.append(handle)
        return handle

    def where(self, module: Any) -> str:
        return self.paths.get(module, "?")

    # Hook factories: each logs (module path, kind, tag, what it saw) and may replace a value.

    def pre(self, tag: Any, replace: Callable | None = None) -> Callable:
        def hook(module, args):
            self.log.append((self.where(module), "pre", tag, snap(args)))
            return None if replace is None else replace(args)

        return hook

    def fwd(self, tag: Any, replace: Callable | None = None) -> Callable:
        def hook(module, args, output):
            self.log.append((self.where(module), "fwd", tag, snap(args), snap(output)))
            return None if replace is None else replace(output)

        return hook

    def pre_kw(self, tag: Any, replace: Callable | None = None) -> Callable:
        def hook(module, args, kwargs):
            self.log.append((self.where(module), "pre_kw", tag, snap(args), snap(kwargs)))
            return None if replace is None else replace(args, kwargs)

        return hook

    def fwd_kw(self, tag: Any, replace: Callable | None = None) -> Callable:
        def hook(module, args, kwargs, output):
            entry = (self.where(module), "fwd_kw", tag, snap(args), snap(kwargs), snap(output))
            self.log.append(entry)
            return None if replace is None else replace(output)

        return hook

    def note(self, *entry: Any) -> None:
        self.log.append(entry)

    def close(self) -> None:
        """Remove the global hooks this side registered."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def assert_same(ours: Any, theirs: Any, where: str = "") -> None:
    """`ours` (layerc) equals `theirs` (torch): the same structure (a tuple is not a list, an
    array not a tuple), arrays of the same dtype and shape within the tolerances of their dtype,
    anything else equal."""
    if isinstance(ours, np.ndarray) or isinstance(theirs, np.ndarray):
        assert isinstance(ours, np.ndarray), f"{where}: {type(ours).__name__} is not an array"
        assert isinstance(theirs, np.ndarray), f"{where}: torch gave {type(theirs).__name__}"
        assert ours.dtype == theirs.dtype, f"{where}: {ours.dtype} != {theirs.dtype}"
        assert ours.shape == theirs.shape, f"{where}: {ours.shape} != {theirs.shape}"
        tolerance = F64 if ours.dtype == np.float64 else F32
        torch.testing.assert_close(
            torch.from_numpy(ours), torch.from_numpy(theirs), **tolerance, msg=where
        )
    elif isinstance(ours, (tuple, list)) or isinstance(theirs, (tuple, list)):
        assert type(ours) is type(theirs), f"{where}: {type(ours)} != {type(theirs)}"
        assert len(ours) == len(theirs), f"{where}: {len(ours)} != {len(theirs)} items"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(ours, dict):
        assert isinstance(theirs, dict) and list(ours) == list(theirs), f"{where}: {ours} {theirs}"
        for key in ours:
            assert_same(ours[key], theirs[key], f"{where}[{key!r}]")
    else:
        assert ours == theirs, f"{where}: {ours!r} != {theirs!r}"
