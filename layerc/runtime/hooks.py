"""Hook handles and the global hook registries, with PyTorch 2.x semantics.

Handles have unique ids from one counter shared by module and global hooks, hold only weak
references to the dicts they remove from, are idempotent and work as context managers. Every
change to a hook registry bumps `state.version`, which modules use to decide whether the fused
(hook-free) forward may run.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class _State:
    """Global counters; `version` changes whenever hooks or a module tree change."""

    version = 0
    next_id = 0


state = _State()


def bump() -> None:
    state.version += 1


class RemovableHandle:
    """Removes the hook it was returned for; `with handle:` removes it on exit."""

    id: int

    def __init__(self, hooks_dict: dict, *, extra_dict: dict | list[dict] | None = None) -> None:
        self.hooks_dict_ref = weakref.ref(hooks_dict)
        self.id = state.next_id
        state.next_id += 1
        if isinstance(extra_dict, dict):
            self.extra_dict_ref: tuple = (weakref.ref(extra_dict),)
        elif isinstance(extra_dict, list):
            self.extra_dict_ref = tuple(weakref.ref(d) for d in extra_dict)
        else:
            self.extra_dict_ref = ()

    def remove(self) -> None:
        hooks_dict = self.hooks_dict_ref()
        if hooks_dict is not None and self.id in hooks_dict:
            del hooks_dict[self.id]
        for ref in self.extra_dict_ref:
            extra = ref()
            if extra is not None and self.id in extra:
                del extra[self.id]
        bump()

    def __getstate__(self) -> tuple:
        return (self.hooks_dict_ref(), self.id, tuple(ref() for ref in self.extra_dict_ref))

    def __setstate__(self, st: tuple) -> None:
        self.hooks_dict_ref = weakref.ref(st[0] if st[0] is not None else OrderedDict())
        self.id = st[1]
        state.next_id = max(state.next_id, self.id + 1)
        self.extra_dict_ref = tuple(
            weakref.ref(d) for d in (st[2] if len(st) > 2 else ()) if d is not None
        )

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


global_forward_pre_hooks: OrderedDict[int, Callable] = OrderedDict()
global_forward_hooks: OrderedDict[int, Callable] = OrderedDict()
global_forward_hooks_with_kwargs: OrderedDict[int, bool] = OrderedDict()
global_forward_hooks_always_called: OrderedDict[int, bool] = OrderedDict()


def register_module_forward_pre_hook(hook: Callable[..., Any]) -> RemovableHandle:
    """A pre-hook `hook(module, args)` run before every generated module's own pre-hooks."""
    handle = RemovableHandle(global_forward_pre_hooks)
    global_forward_pre_hooks[handle.id] = hook
    bump()
    return handle


def register_module_forward_hook(
    hook: Callable[..., Any], *, with_kwargs: bool = False, always_call: bool = False
) -> RemovableHandle:
    """A hook `hook(module, args, output)` run after every generated module's forward, before
    the module's own hooks; `always_call` runs it even when forward raises."""
    handle = RemovableHandle(
        global_forward_hooks,
        extra_dict=[global_forward_hooks_with_kwargs, global_forward_hooks_always_called],
    )
    global_forward_hooks[handle.id] = hook
    if with_kwargs:
        global_forward_hooks_with_kwargs[handle.id] = True
    if always_call:
        global_forward_hooks_always_called[handle.id] = True
    bump()
    return handle
