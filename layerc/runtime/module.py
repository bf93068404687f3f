"""The `Module` base class of every generated layer and model, with torch.nn.Module's observable
behaviour: `__call__` runs global then local forward pre-hooks, `forward`, then global then local
forward hooks (PyTorch 2.x semantics, `always_call` included); parameters, buffers and submodules
are registered as torch registers them; `state_dict` keys and order, `repr` and the traversal
methods match PyTorch's.

Speed: each module class names a numba kernel that computes its whole forward (`_kernel`) and
the parameters it takes (`_kernel_params`). When no hook is registered anywhere in the tree or
globally, `__call__` makes one call into that kernel; the decision is cached against
`hooks.state.version`, which every hook registration, removal and module change bumps. The
kernel stands for the module's `forward` only while that is the runtime's own (a subclass that
overrides `forward` runs its own code, decided once per class) and while the tree of children has
the layout the kernel was generated for (a child replaced by one of another kind, deleted or added
makes the model run layer by layer, as torch.nn.Sequential would run what it holds).
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict, namedtuple
from collections.abc import Callable, Iterator, Mapping
from typing import Any, SupportsIndex, TypeVar

import numpy as np

from . import hooks as H
from . import portable, threads
from .hooks import RemovableHandle, state

__all__ = ["Module", "ShapeError"]

_ndarray = np.ndarray
_empty = np.empty
_NO_FAST_PATH: tuple = (-1, None, (), None, None, 1)
_F = TypeVar("_F", bound=Callable[..., Any])
# The `forward` methods the fused kernels compute: a class whose `forward` is one of these may
# take the fast path; one that overrides `forward` may not.
_KERNEL_FORWARDS: set[Callable[..., Any]] = set()


def _prod(shape: tuple[int, ...]) -> int:
    size = 1
    for d in shape:
        size *= d
    return size


def _threaded(kernel: Callable[..., Any], parallel: Callable[..., Any], size: int) -> Any:
    """`kernel(x, ...)`, or `parallel(x, ...)` on numba's threads when the first input holds
    at least `size` values (2 * BLOCK rows)."""
    use_threads = threads.use_threads

    def run(x: np.ndarray, *rest: Any) -> None:
        if x.size >= size:
            use_threads()
            parallel(x, *rest)
        else:
            kernel(x, *rest)

    return run


def kernel_forward(function: _F) -> _F:
    """Mark a runtime `forward` as one the module's kernel computes."""
    _KERNEL_FORWARDS.add(function)
    return function


class ShapeError(RuntimeError, ValueError):
    """An input whose last axis is not the width a layer takes. Its message names the layer by
    its path from the module that was called and by its repr. It is a RuntimeError, as torch's
    error for the same mistake is, and a ValueError, as layerc's was."""

    def __init__(self, layer: str, detail: str, path: str = "") -> None:
        self.layer = layer
        self.detail = detail
        self.path = path
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.path} ({self.layer})" if self.path else self.layer
        return f"{where} {self.detail}"

    def within(self, name: str) -> None:
        """The error passed through the child `name` of a model: put it in front of the path."""
        self.path = name + "." + self.path if self.path else name
        self.args = (self._message(),)

    def __reduce__(self) -> tuple:
        return (type(self), (self.layer, self.detail, self.path))


def _typename(value: Any) -> str:
    """torch.typename: `int`, `numpy.ndarray`, `torch.FloatTensor` (without importing torch)."""
    if _is_torch_tensor(value):
        return str(value.type())
    module = getattr(value, "__module__", "") or ""
    if hasattr(value, "__qualname__"):
        qualname = value.__qualname__
    elif hasattr(value, "__name__"):
        qualname = value.__name__
    else:
        module = type(value).__module__ or ""
        qualname = type(value).__qualname__
    return qualname if module in ("", "builtins") else f"{module}.{qualname}"


def _is_torch_tensor(value: Any) -> bool:
    return hasattr(value, "detach") and hasattr(value, "numpy") and hasattr(value, "dtype")


def _to_target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The (device, dtype) that torch.nn.Module.to's arguments ask for, either None: `to(device=
    None, dtype=None, non_blocking=False)`, `to(dtype, non_blocking=False)` or `to(tensor,
    non_blocking=False)`, each with the keywords `copy` and `memory_format` (which change
    nothing here). A dtype is torch's or NumPy's; a device a string, a torch.device or an int
    (a CUDA device, for torch)."""
    for key in kwargs:
        if key not in ("device", "dtype", "non_blocking", "copy", "memory_format"):
            raise TypeError(f"to() got an unexpected keyword argument '{key}'")
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    rest = list(args)
    if rest and _is_dtype(rest[0]):
        dtype = rest.pop(0)
    elif rest and not _is_device(rest[0]) and hasattr(rest[0], "device"):  # a tensor or array
        device, dtype = rest[0].device, rest.pop(0).dtype
    elif rest:
        device = rest.pop(0)
        if rest and (rest[0] is None or _is_dtype(rest[0])):
            dtype = rest.pop(0)
    if rest and isinstance(rest[0], bool):  # non_blocking: nothing here runs asynchronously
        rest.pop(0)
    if rest or not _is_device(device) or not (dtype is None or _is_dtype(dtype)):
        got = ", ".join(
            [*map(_typename, args), *(f"{k}={_typename(v)}" for k, v in kwargs.items())]
        )
        raise TypeError(
            f"to() received an invalid combination of arguments - got ({got}), but expected "
            "(device, dtype, non_blocking), (dtype, non_blocking) or (tensor, non_blocking)"
        )
    return device, dtype


def _is_dtype(value: Any) -> bool:
    """A torch dtype, a NumPy dtype or a NumPy scalar type."""
    if type(value).__name__ == "dtype" and type(value).__module__ == "torch":
        return True
    return isinstance(value, np.dtype) or (
        isinstance(value, type) and issubclass(value, np.generic)
    )


def _is_device(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return value is None or isinstance(value, (str, int)) or type(value).__name__ == "device"


def _layout(module: Module) -> tuple[tuple[str, type], ...]:
    """The names and classes of a module's children, in order: what its kernel was made for."""
    return tuple((name, type(child)) for name, child in module._modules.items())


def drop_stale_cache(module_name: str) -> bool:
    """Stop a generated module's kernels from loading numba's on-disk cache.

    numba pickles the import name of a function's module into its cache; a module cached under
    one name (`mlp`) and imported under another (`models.mlp`) fails to load it. Then layerc
    compiles in memory instead, once, with a warning. Returns whether anything changed.
    """
    import sys
    import warnings

    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher

    module = sys.modules.get(module_name)
    changed = False
    for value in vars(module).values() if module is not None else ():
        cache = getattr(value, "_cache", None)
        if isinstance(value, Dispatcher) and not isinstance(cache, NullCache):
            value._cache = NullCache()  # type: ignore[attr-defined]
            changed = True
    if changed:
        warnings.warn(
            f"numba's cache for {module_name} was written under another module name; "
            "compiling its kernels in memory (recompile with `layerc compile --warm` to refresh it)",
            RuntimeWarning,
            stacklevel=3,
        )
    return changed


class _IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    __slots__ = ()

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    first = lines.pop(0)
    rest = [(" " * spaces) + line if line.strip() else "" for line in lines]
    return first + "\n" + "\n".join(rest)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy view or copy of an array-like; torch tensors are detached first. A floating-point
    tensor of a dtype NumPy lacks (bfloat16, the float8 types) becomes float32, which holds every
    value of those exactly."""
    if _is_torch_tensor(value):  # a torch.Tensor, without importing torch
        tensor = value.detach().cpu()
        try:
            return np.asarray(tensor.numpy())
        except TypeError:
            if not tensor.is_floating_point():
                raise
            return np.asarray(tensor.float().numpy())
    return np.asarray(value)


def _expected(shape: tuple[int, ...] | None) -> str:
    """`(4,) or (*, 4)`: the inputs a module with per-sample shape `shape` takes."""
    if shape is None:
        return "of any shape"
    return f"{_fmt_shape(shape)} or (*, {', '.join(map(str, shape))})"


def _checked_value(key: str, param: np.ndarray, value: Any, errors: list[str]) -> np.ndarray | None:
    """`value` as an array that can be copied into `param` (real numbers of its shape, in its
    dtype and writeable), or None after appending torch's error for `key`."""
    try:
        array = to_numpy(value)
    except Exception:
        array = None
    if array is None or array.dtype.kind not in "biuf":
        kind = "" if array is None else f" of dtype {array.dtype}"
        errors.append(
            f'While copying the parameter named "{key}", expected an array of real numbers '
            f"from checkpoint but received {type(value)}{kind}"
        )
        return None
    if array.shape != param.shape:
        errors.append(
            f"size mismatch for {key}: copying a param with shape {_fmt_shape(array.shape)} "
            f"from checkpoint, the shape in current model is {_fmt_shape(param.shape)}."
        )
        return None
    array = np.asarray(array, dtype=param.dtype)  # the module lays it out (`_stored`)
    return array if array.flags.writeable else array.copy()


class child:
    """A class attribute that reads the child registered under a name that is not an identifier
    (an unnamed layer's position, "1"), so the generated class can offer `net.layer_1`."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, obj: Module | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return obj._modules[self.key]
        except KeyError:  # deleted, or not in this slice of the model
            raise AttributeError(f"'{obj._get_name()}' object has no child {self.key!r}") from None

    def __set__(self, obj: Module, value: Module) -> None:
        obj.add_module(self.key, value)


class Module:
    """Base class of generated modules. Subclasses set `_kernel`, `_kernel_params`, `dtype`, and
    the per-sample input and output shapes: `in_features` and `out_features` when they are 1-D,
    `in_shape` and `out_shape` otherwise (None: any shape, the output's being the input's)."""

    _kernel: Callable[..., np.ndarray] | None = None
    # A model's fused forward that splits the rows across threads (same arguments as
    # `_kernel`); None in modules generated before it existed and for models whose samples
    # depend on each other.
    _kernel_par: Callable[..., None] | None = None
    # (name or state_dict key, shape), with a dtype's name as a third item when the kernel takes
    # that argument in another dtype than the module's (a quantised Linear's int8 weight)
    _kernel_params: tuple[tuple[Any, ...], ...] = ()
    # Whether this class's `forward` is one the kernel computes (set per class).
    _kernel_forward: bool = True
    _version: int = 1  # torch's state_dict version of a module, in state_dict()._metadata
    dtype: np.dtype = np.dtype(np.float32)
    in_features: int | None = None
    out_features: int | None = None
    in_shape: tuple[int, ...] | None = None
    out_shape: tuple[int, ...] | None = None
    # The forward's inputs and outputs: names and per-sample shapes, in order (a graph model
    # may have several; other modules have one input and one output).
    input_names: tuple[str, ...] = ("input",)
    in_shapes: tuple[tuple[int, ...] | None, ...] = (None,)
    out_shapes: tuple[tuple[int, ...] | None, ...] = (None,)
    # Set per instance in __init__ (through __dict__, so __setattr__ is not involved).
    training: bool
    _parameters: dict[str, np.ndarray | None]
    _buffers: dict[str, np.ndarray | None]
    _modules: dict[str, Module | None]
    _forward_hooks: OrderedDict[int, Callable[..., Any]]
    _forward_hooks_with_kwargs: OrderedDict[int, bool]
    _forward_hooks_always_called: OrderedDict[int, bool]
    _forward_pre_hooks: OrderedDict[int, Callable[..., Any]]
    _forward_pre_hooks_with_kwargs: OrderedDict[int, bool]
    # (hook version, kernel, kernel arguments, output tail, dtype, input rank) of the fused fast
    # path, valid while the first item equals `hooks.state.version`: one lookup per call
    _fast: tuple[int, Any, tuple[np.ndarray, ...], tuple[int, ...] | None, np.dtype, int]
    _fast_checked: int
    _params_tuple: tuple[np.ndarray, ...]
    # The output's trailing shape, which replaces the input's last `_in_rank` axes (None: the
    # output has the input's shape)
    _out_tail: tuple[int, ...] | None = None
    _in_rank: int = 1
    # buffers a state_dict without version metadata may leave out (torch's BatchNorm)
    _legacy_defaults: tuple[str, ...] = ()
    # The children's names and classes when the generated __init__ returned (see _layout)
    _compiled_layout: tuple[tuple[str, type], ...]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        d = cls.__dict__
        if "in_features" in d and "in_shape" not in d:
            cls.in_shape = None if cls.in_features is None else (cls.in_features,)
        if "out_features" in d and "out_shape" not in d:
            cls.out_shape = None if cls.out_features is None else (cls.out_features,)
        if "in_shapes" not in d:
            cls.in_shapes = (cls.in_shape,)
        if "out_shapes" not in d:
            cls.out_shapes = (cls.out_shape,)
        cls._out_tail = cls.out_shape
        cls._in_rank = len(cls.in_shape) if cls.in_shape is not None else 1
        cls._kernel_forward = cls.forward in _KERNEL_FORWARDS
        init = d.get("__init__")
        if init is not None and "_kernel" in d:
            # A generated model: remember the children its __init__ made, which its kernel runs.
            @functools.wraps(init)
            def __init__(self: Module, *args: Any, **kwargs: Any) -> None:
                init(self, *args, **kwargs)
                self.__dict__["_compiled_layout"] = _layout(self)

            cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self) -> None:
        d = self.__dict__
        d["training"] = False
        d["_parameters"] = {}
        d["_buffers"] = {}
        d["_modules"] = {}
        d["_forward_hooks"] = OrderedDict()
        d["_forward_hooks_with_kwargs"] = OrderedDict()
        d["_forward_hooks_always_called"] = OrderedDict()
        d["_forward_pre_hooks"] = OrderedDict()
        d["_forward_pre_hooks_with_kwargs"] = OrderedDict()
        d["_fast"] = _NO_FAST_PATH
        d["_fast_checked"] = -1
        d["_params_tuple"] = ()
        d["_compiled_layout"] = ()

    # ------------------------------------------------------------------ calling

    @kernel_forward
    def forward(self, x: Any, *, out: np.ndarray | None = None) -> np.ndarray:
        """Run this module's kernel on `x`, into `out` if given; models override this to call
        their children one by one."""
        if out is None and type(x) is _ndarray:
            # As in __call__: the kernel converts and checks; on an exception, _run explains.
            shape = x.shape
            tail = self._out_tail
            y = _empty(
                shape if tail is None else shape[: len(shape) - self._in_rank] + tail, self.dtype
            )
            try:
                self._kernel(x, y, *self._params_tuple)  # type: ignore[misc]
                return y
            except Exception:
                pass
        return self._run(x, out, self._params_tuple)

    def _run(
        self,
        x: Any,
        out: np.ndarray | None,
        params: tuple[np.ndarray, ...],
        kernel: Callable[..., Any] | None = None,
    ) -> np.ndarray:
        if kernel is None:
            kernel = self._kernel
        assert kernel is not None
        x = self._as_input(x)
        y = self._output_for(x, out)
        try:
            kernel(x, y, *params)
        except ImportError:
            # numba's cache was written while this module had another import name
            if not drop_stale_cache(type(self).__module__):
                raise
            kernel(x, y, *params)
        except Exception:
            for (key, *_), value in zip(self._kernel_params, params, strict=False):
                if value is None:  # deleted with `del module.weight`, as torch's forward finds
                    raise AttributeError(
                        f"'{self._get_name()}' object has no attribute '{key}'"
                    ) from None
            raise
        return y

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The fast path: no hooks anywhere (cached against the hook version) and one ndarray:
        # one allocation and one native call. The kernel converts dtype and layout itself and
        # checks the width; if it raises, the checked path below reports the error in full.
        fast = self._fast
        if fast[0] == state.version and len(args) == 1 and not kwargs:
            x = args[0]
            if type(x) is _ndarray:
                _, kernel, params, tail, dtype, rank = fast
                shape = x.shape
                if tail is None:
                    y = _empty(shape, dtype)
                elif len(shape) == rank:
                    y = _empty(tail, dtype)
                else:
                    y = _empty(shape[: len(shape) - rank] + tail, dtype)
                try:
                    kernel(x, y, *params)
                    return y
                except Exception:
                    pass
            return self._run(x, None, fast[2], fast[1])
        # _call_impl, inlined: this runs once per module per call whenever any hook is set.
        if (
            self._forward_hooks
            or self._forward_pre_hooks
            or H.global_forward_hooks
            or H.global_forward_pre_hooks
        ):
            return self._call_with_hooks(args, kwargs)
        if (
            self._refresh_fast_path()
            and len(args) == 1
            and (not kwargs or kwargs.keys() == {"out"})
        ):
            return self._run(args[0], kwargs.get("out"), self._fast[2], self._fast[1])
        return self.forward(*args, **kwargs)

    def _call_impl(self, *args: Any, **kwargs: Any) -> Any:
        if not (
            self._forward_hooks
            or self._forward_pre_hooks
            or H.global_forward_hooks
            or H.global_forward_pre_hooks
        ):
            if (
                self._refresh_fast_path()
                and len(args) == 1
                and (not kwargs or kwargs.keys() == {"out"})
            ):
                return self._run(args[0], kwargs.get("out"), self._fast[2], self._fast[1])
            return self.forward(*args, **kwargs)
        return self._call_with_hooks(args, kwargs)

    def _call_with_hooks(self, args: tuple, kwargs: dict) -> Any:
        # PyTorch 2.x `Module._call_impl`, forward hooks only (layerc has no autograd).
        if not (
            kwargs
            or self._forward_pre_hooks
            or self._forward_hooks_always_called
            or self._forward_hooks_with_kwargs
            or H.global_forward_pre_hooks
            or H.global_forward_hooks
        ):
            # The common case (plain forward hooks on this module only), with the same
            # semantics as the general path below: hooks run in order from a snapshot taken
            # after forward, and an exception simply propagates (no always_call hook to run).
            output = self.forward(*args)
            for hook in tuple(self._forward_hooks.values()):
                replaced = hook(self, args, output)
                if replaced is not None:
                    output = replaced
            return output
        result = None
        called_always: set[int] = set()
        try:
            pre_hooks = (
                (*H.global_forward_pre_hooks.items(), *self._forward_pre_hooks.items())
                if H.global_forward_pre_hooks or self._forward_pre_hooks
                else ()
            )
            for hook_id, hook in pre_hooks:
                if hook_id in self._forward_pre_hooks_with_kwargs:
                    args_kwargs = hook(self, args, kwargs)
                    if args_kwargs is not None:
                        if isinstance(args_kwargs, tuple) and len(args_kwargs) == 2:
                            args, kwargs = args_kwargs
                        else:
                            raise RuntimeError(
                                "forward pre-hook must return None or a tuple "
                                f"of (new_args, new_kwargs), but got {args_kwargs}."
                            )
                else:
                    new_args = hook(self, args)
                    if new_args is not None:
                        args = new_args if isinstance(new_args, tuple) else (new_args,)
            result = self.forward(*args, **kwargs)
            hooks = (
                (*H.global_forward_hooks.items(), *self._forward_hooks.items())
                if H.global_forward_hooks or self._forward_hooks
                else ()
            )
            for hook_id, hook in hooks:
                if (
                    hook_id in self._forward_hooks_always_called
                    or hook_id in H.global_forward_hooks_always_called
                ):
                    called_always.add(hook_id)
                if (
                    hook_id in self._forward_hooks_with_kwargs
                    or hook_id in H.global_forward_hooks_with_kwargs
                ):
                    hook_result = hook(self, args, kwargs, result)
                else:
                    hook_result = hook(self, args, result)
                if hook_result is not None:
                    result = hook_result
            return result
        except Exception:
            import warnings

            for hook_id, hook in H.global_forward_hooks.items():
                if hook_id in H.global_forward_hooks_always_called and hook_id not in called_always:
                    try:
                        hook_result = hook(self, args, result)
                        if hook_result is not None:
                            result = hook_result
                    except Exception as exc:
                        warnings.warn(
                            "global module forward hook with ``always_call=True`` raised an "
                            f"exception that was silenced as another error was raised in forward: {exc}",
                            stacklevel=2,
                        )
            for hook_id, hook in self._forward_hooks.items():
                if hook_id in self._forward_hooks_always_called and hook_id not in called_always:
                    try:
                        if hook_id in self._forward_hooks_with_kwargs:
                            hook_result = hook(self, args, kwargs, result)
                        else:
                            hook_result = hook(self, args, result)
                        if hook_result is not None:
                            result = hook_result
                    except Exception as exc:
                        warnings.warn(
                            "module forward hook with ``always_call=True`` raised an exception "
                            f"that was silenced as another error was raised in forward: {exc}",
                            stacklevel=2,
                        )
            raise

    def _refresh_fast_path(self) -> bool:
        """Whether the fused kernel may run: the whole tree is hook-free and its parameters have
        the shapes the kernel was generated for. The answer (and, when yes, the kernel's
        arguments) is cached until `hooks.state.version` changes."""
        version = state.version
        if self._fast_checked == version:
            return self._fast[0] == version
        self.__dict__["_fast_checked"] = version
        if self._kernel is None or H.global_forward_hooks or H.global_forward_pre_hooks:
            return False
        for module in self.modules():
            cls = type(module)
            if (
                module._forward_hooks
                or module._forward_pre_hooks
                or cls._kernel is None
                or not cls._kernel_forward
                or "forward" in module.__dict__
                or _layout(module) != module.__dict__.get("_compiled_layout")
            ):
                return False
        args = []
        for key, shape, *dtype in self._kernel_params:
            array = self._lookup_param(key)
            if array is None or array.shape != shape or array.dtype != (dtype or [self.dtype])[0]:
                return False
            args.append(array)
        self.__dict__["_fast"] = (
            version,
            self._chosen_kernel(),
            tuple(args),
            self._out_tail,
            self.dtype,
            self._in_rank,
        )
        return True

    def _chosen_kernel(self) -> Callable[..., Any]:
        """The fused kernel a hook-free call runs: the model's own, or while layerc may use
        several threads (`set_num_threads`, which bumps the hook version) one that runs the
        parallel variant on batches of at least 2 * BLOCK rows."""
        kernel = self._kernel
        assert kernel is not None
        parallel: Any = None
        for cls in type(self).__mro__:  # the variant the class that set the kernel gives
            if "_kernel" in cls.__dict__:
                parallel = cls.__dict__.get("_kernel_par")
                break
        if isinstance(parallel, staticmethod):
            parallel = parallel.__func__
        if threads.count <= 1 or parallel is None or self.in_shapes[0] is None:
            return kernel
        return _threaded(kernel, parallel, 2 * threads.BLOCK * _prod(self.in_shapes[0]))

    def _lookup_param(self, key: str) -> np.ndarray | None:
        *path, name = key.split(".")
        module: Module | None = self
        for part in path:
            module = module._modules.get(part) if module is not None else None
        if module is None or type(module)._kernel is None:
            return None
        return module._tensor(name)

    def _tensor(self, name: str) -> np.ndarray | None:
        """The parameter or buffer `name` of this module, or None."""
        if name in self._parameters:
            return self._parameters[name]
        return self._buffers.get(name)

    def _update_params_tuple(self) -> None:
        """Cache this module's own kernel arguments (leaf modules: weight, bias, buffers)."""
        self.__dict__["_params_tuple"] = tuple(
            self._tensor(key) for key, *_ in self._kernel_params if "." not in key
        )

    def _output_for(
        self, x: np.ndarray, out: np.ndarray | None, shape: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """A new output array for input `x` (of `shape` when given), or `out` checked to fit."""
        if shape is None:
            tail = self._out_tail
            shape = x.shape if tail is None else x.shape[: x.ndim - self._in_rank] + tail
        if out is None:
            return np.empty(shape, self.dtype)
        if (
            type(out) is not np.ndarray
            or out.dtype != self.dtype
            or out.shape != shape
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ValueError(
                f"{self._get_name()}: out must be a writeable C-contiguous {self.dtype} array of "
                f"shape {_fmt_shape(shape)}"
            )
        if np.may_share_memory(out, x):
            raise ValueError(f"{self._get_name()}: out must not overlap the input")
        return out

    def _as_input(self, x: Any, index: int | None = None) -> np.ndarray:
        """`x` as a C-contiguous array of this module's dtype whose last axes are the
        per-sample `in_shape` (of the forward's input `index`, when given), or a clear error
        naming the expected shape."""
        shape = self.in_shape if index is None else self.in_shapes[index]
        expected = _expected(shape)
        if not isinstance(x, np.ndarray):
            try:
                x = to_numpy(x)
            except Exception as exc:
                raise TypeError(
                    f"{self._get_name()}: expected a numeric array of shape {expected}, "
                    f"got {type(x).__name__}"
                ) from exc
        if type(x) is not np.ndarray:
            # Kernels take plain arrays; a mask would be silently dropped, so refuse it.
            if isinstance(x, np.ma.MaskedArray):
                raise TypeError(
                    f"{self._get_name()}: expected a numeric array of shape {expected}, "
                    "got a masked array (pass x.filled(value))"
                )
            x = np.asarray(x)  # np.matrix, np.memmap: the plain array they hold
        if x.dtype != self.dtype:
            if x.dtype.kind not in "biuf":
                raise TypeError(
                    f"{self._get_name()}: expected real numbers of shape {expected}, "
                    f"got an array of dtype {x.dtype}"
                )
            x = x.astype(self.dtype)
        if x.ndim == 0 or (
            shape is not None and (x.ndim < len(shape) or x.shape[x.ndim - len(shape) :] != shape)
        ):
            if index is not None:
                raise ShapeError(
                    self._get_name(),
                    f"input {self.input_names[index]!r} expects shape {expected}, "
                    f"got shape {_fmt_shape(x.shape)}",
                )
            raise self._width_error(x.shape)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        return x

    def _inputs(self, *xs: Any) -> tuple[np.ndarray, ...]:
        """A graph model's inputs, checked: as many as its forward takes, each converted by
        `_as_input` to its per-sample shape, all with one batch shape."""
        names = self.input_names
        if len(xs) != len(names):
            raise TypeError(
                f"{self._get_name()}.forward() takes {len(names)} input"
                f"{'' if len(names) == 1 else 's'} ({', '.join(names)}), got {len(xs)}"
            )
        arrays = tuple(self._as_input(x, i) for i, x in enumerate(xs))
        batches = [
            a.shape[: a.ndim - len(s or (0,))] for a, s in zip(arrays, self.in_shapes, strict=True)
        ]
        if any(batch != batches[0] for batch in batches):
            shapes = ", ".join(
                f"{n} {_fmt_shape(a.shape)}" for n, a in zip(names, arrays, strict=True)
            )
            raise ShapeError(self._get_name(), f"inputs must share one batch shape, got {shapes}")
        return arrays

    def _width_error(self, shape: tuple[int, ...]) -> ShapeError:
        """The error for an input of `shape`, naming the layer that takes the input: this module,
        or in a model the first layer that has a width (its path from this module)."""
        path, layer = "", self
        for name, module in self.named_modules():
            if not module._modules and module.in_shape is not None:
                path, layer = name, module
                break
        # What the called module takes (a model over samples of several axes takes more than
        # its first layer does).
        shape_in = self.in_shape if self.in_shape is not None else layer.in_shape
        wanted = "expected input with at least one axis"
        if shape_in is not None and len(shape_in) == 1:
            n = shape_in[0]
            wanted = f"expected input with {n} features, shape ({n},) or (*, {n})"
        elif shape_in is not None:
            wanted = f"expected input of shape {_expected(shape_in)}"
        return ShapeError(repr(layer), f"{wanted}, got shape {_fmt_shape(shape)}", path)

    # ------------------------------------------------------------------ hooks

    def register_forward_pre_hook(
        self, hook: Callable[..., Any], *, prepend: bool = False, with_kwargs: bool = False
    ) -> RemovableHandle:
        """`hook(module, args)` (or `hook(module, args, kwargs)`) before forward; a non-None
        return replaces the arguments."""
        handle = RemovableHandle(
            self._forward_pre_hooks, extra_dict=self._forward_pre_hooks_with_kwargs
        )
        self._forward_pre_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_pre_hooks_with_kwargs[handle.id] = True
        if prepend:
            self._forward_pre_hooks.move_to_end(handle.id, last=False)
        H.bump()
        return handle

    def register_forward_hook(
        self,
        hook: Callable[..., Any],
        *,
        prepend: bool = False,
        with_kwargs: bool = False,
        always_call: bool = False,
    ) -> RemovableHandle:
        """`hook(module, args, output)` (or with kwargs) after forward; a non-None return
        replaces the output. `always_call` hooks run even when forward raises."""
        handle = RemovableHandle(
            self._forward_hooks,
            extra_dict=[self._forward_hooks_with_kwargs, self._forward_hooks_always_called],
        )
        self._forward_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_hooks_with_kwargs[handle.id] = True
        if always_call:
            self._forward_hooks_always_called[handle.id] = True
        if prepend:
            self._forward_hooks.move_to_end(handle.id, last=False)
        H.bump()
        return handle

    # ------------------------------------------------------------------ attributes

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if isinstance(value, Module):
            if "_modules" not in d:
                raise AttributeError("cannot assign module before Module.__init__() call")
            if name in d["_parameters"] or name in d.get("_buffers", ()):
                raise TypeError(f"cannot assign a module to parameter or buffer {name!r}")
            alias = getattr(type(self), name, None)
            if isinstance(alias, child):  # net.layer_1 = ... replaces the child "1"
                name = alias.key
            # As torch: whatever the name held before, it now names this child.
            self._set_child(name, value)
        elif name in d.get("_parameters", ()) or name in d.get("_buffers", ()):
            self._set_parameter(name, value)
        elif name in d.get("_modules", ()):
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as child module {name!r} (Module or None expected)"
                )
            d["_modules"][name] = None
            d[name] = None
            H.bump()
        else:
            object.__setattr__(self, name, value)
            if name == "forward":  # an instance's own forward: the kernel no longer stands for it
                H.bump()

    # No __getattr__: children and parameters live in the instance __dict__ too (positional
    # children such as "1" included, so getattr(net, "1") works), and a __getattr__ would turn
    # off CPython's attribute caches on the per-call path.

    def __delattr__(self, name: str) -> None:
        """As torch: `del net.fc` removes a child and `del net.fc.bias` a parameter (or a
        buffer). A model without one of its children runs the others in order; a layer without
        one of its parameters raises AttributeError when called, as torch's forward does."""
        d = self.__dict__
        if name in self._parameters or name in self._buffers:
            registry = self._parameters if name in self._parameters else self._buffers
            del registry[name]
            d.pop(name, None)
            self._update_params_tuple()
            H.bump()
        elif name in self._modules:
            del self._modules[name]
            d.pop(name, None)
            H.bump()
        else:
            object.__delattr__(self, name)
            if name == "forward":
                H.bump()

    def add_module(self, name: str, module: Module | None) -> None:
        """Register a child module under `name` (`"1"` for unnamed layers, as Sequential), with
        torch's checks, exception types and messages."""
        if not isinstance(module, Module) and module is not None:
            raise TypeError(f"{_typename(module)} is not a Module subclass")
        if not isinstance(name, str):
            raise TypeError(f"module name should be a string. Got {_typename(name)}")
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute '{name}' already exists")
        if "." in name:
            raise KeyError(f'module name can\'t contain ".", got: {name}')
        if name == "":
            raise KeyError('module name can\'t be empty string ""')
        self._set_child(name, module)

    register_module = add_module

    def _set_child(self, name: str, module: Module | None) -> None:
        self._modules[name] = module
        self.__dict__[name] = module
        H.bump()

    def _stored(self, name: str, array: np.ndarray) -> np.ndarray:
        """`array` (of this module's tensor `name`'s dtype) laid out as the kernels read it:
        C-contiguous, a copy only where needed; Linear stores its weight transposed."""
        return np.ascontiguousarray(array)

    def _register_parameter(self, name: str, value: np.ndarray | None) -> None:
        self._parameters[name] = value
        self.__dict__[name] = value
        self._update_params_tuple()

    def _register_buffer(self, name: str, value: np.ndarray | None) -> None:
        self._buffers[name] = value
        self.__dict__[name] = value
        self._update_params_tuple()

    def _set_parameter(self, name: str, value: Any) -> None:
        """Rebind a parameter or buffer; shape and dtype must stay what the kernels were built
        for."""
        registry = self._parameters if name in self._parameters else self._buffers
        current = registry[name]
        if value is None or current is None:
            if value is None and current is None:
                return
            what = "parameter" if registry is self._parameters else "buffer"
            raise TypeError(f"cannot add or remove {what} {name!r} of a compiled module")
        array = to_numpy(value)
        if array.shape != current.shape:
            raise ValueError(
                f"{name} must have shape {_fmt_shape(current.shape)}, got {_fmt_shape(array.shape)}"
            )
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
        array = self._stored(name, np.asarray(array, dtype=current.dtype))
        if registry is self._parameters:
            self._register_parameter(name, array)
        else:
            self._register_buffer(name, array)
        H.bump()

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))) | {k for k in self.__dict__ if k.isidentifier()})

    # ------------------------------------------------------------------ traversal

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        memo: set[int] = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in memo:
                memo.add(id(module))
                yield name, module

    def modules(self, remove_duplicate: bool = True) -> Iterator[Module]:
        for _, module in self.named_modules(remove_duplicate=remove_duplicate):
            yield module

    def named_modules(
        self, memo: set | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        if memo is None:
            memo = set()
        if self in memo:
            return
        if remove_duplicate:
            memo.add(self)
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            sub = prefix + ("." if prefix else "") + name
            yield from module.named_modules(memo, sub, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, np.ndarray]]:
        return self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        for _, buffer in self.named_buffers(recurse=recurse):
            yield buffer

    def named_buffers(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, np.ndarray]]:
        return self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def _named_members(
        self, registry: str, prefix: str, recurse: bool, remove_duplicate: bool
    ) -> Iterator[tuple[str, np.ndarray]]:
        """The arrays of each module's `registry` (`_parameters` or `_buffers`) under their
        dotted names, as torch's `_named_members`: each array once when `remove_duplicate`."""
        modules = (
            self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
            if recurse
            else [(prefix, self)]
        )
        seen: set[int] = set()
        for module_prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield module_prefix + ("." if module_prefix else "") + name, value

    def get_submodule(self, target: str) -> Module:
        module: Module = self
        if target == "":
            return module
        for part in target.split("."):
            child = module._modules.get(part)
            if child is None:
                raise AttributeError(f"{module._get_name()} has no attribute `{part}`")
            module = child
        return module

    def get_parameter(self, target: str) -> np.ndarray:
        module_path, _, name = target.rpartition(".")
        module = self.get_submodule(module_path)
        if module._parameters.get(name) is None:
            raise AttributeError(f"{module._get_name()} has no parameter `{name}`")
        return module._parameters[name]  # type: ignore[return-value]

    def get_buffer(self, target: str) -> np.ndarray:
        module_path, _, name = target.rpartition(".")
        module = self.get_submodule(module_path)
        if module._buffers.get(name) is None:
            raise AttributeError(f"{module._get_name()} has no buffer `{name}`")
        return module._buffers[name]  # type: ignore[return-value]

    # ------------------------------------------------------------------ state

    def state_dict(
        self,
        *args: Any,
        destination: dict | None = None,
        prefix: str = "",
        keep_vars: bool = False,
    ) -> OrderedDict[str, np.ndarray]:
        """Parameters and buffers under PyTorch's keys (`fc.weight`, `bn.running_mean`), in
        PyTorch's order (each module's parameters, then its buffers, then its children's). The
        values are the module's own arrays, as torch returns tensors sharing storage. A new
        dict carries torch's `_metadata` (each module's path -> `{"version": N}`); positional
        arguments `(destination, prefix, keep_vars)` work with a FutureWarning, as in torch."""
        if args:
            warnings.warn(
                "Positional args are being deprecated, use kwargs instead.",
                FutureWarning,
                stacklevel=2,
            )
            if destination is None:
                destination = args[0]
            if len(args) > 1 and prefix == "":
                prefix = args[1]
            if len(args) > 2 and keep_vars is False:
                keep_vars = args[2]
        if destination is None:
            destination = OrderedDict()
            destination._metadata = OrderedDict()  # type: ignore[attr-defined]
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None:
            metadata[prefix[:-1]] = {"version": self._version}
        for registry in (self._parameters, self._buffers):
            for name, value in registry.items():
                if value is not None:
                    destination[prefix + name] = value
        for name, module in self._modules.items():
            if module is not None:
                module.state_dict(
                    destination=destination, prefix=prefix + name + ".", keep_vars=keep_vars
                )
        return destination  # type: ignore[return-value]

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> _IncompatibleKeys:
        """Copy the values of `state_dict` into the parameters in place (with `assign`, bind
        them instead). Keys are matched module by module as torch matches them, and missing
        and unexpected keys are reported as torch reports them (an error when `strict`, the
        returned `IncompatibleKeys` otherwise). Unlike torch, every key, shape and value is
        checked before anything changes, so a failed load leaves the module as it was."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        missing: list[str] = []
        unexpected: list[str] = []
        errors: list[str] = []
        updates: list[tuple[Module, str, np.ndarray]] = []
        metadata = getattr(state_dict, "_metadata", None)
        self._check_state(
            dict(state_dict), "", missing, unexpected, errors, updates, metadata or {}
        )
        if strict:
            if unexpected:
                keys = ", ".join(f'"{key}"' for key in unexpected)
                errors.insert(0, f"Unexpected key(s) in state_dict: {keys}. ")
            if missing:
                keys = ", ".join(f'"{key}"' for key in missing)
                errors.insert(0, f"Missing key(s) in state_dict: {keys}. ")
        if errors:
            raise RuntimeError(
                "Error(s) in loading state_dict for {}:\n\t{}".format(
                    self._get_name(), "\n\t".join(errors)
                )
            )
        for module, name, value in updates:
            module._load_tensor(name, value, assign)
        return _IncompatibleKeys(missing, unexpected)

    def _load_tensor(self, name: str, value: np.ndarray, assign: bool) -> None:
        """load_state_dict's change of one checked tensor: copied into the array in place, or
        with `assign` the given array bound."""
        if assign:
            self._set_parameter(name, value)
        else:
            param = self._tensor(name)
            assert param is not None  # _check_state passes only present tensors
            np.copyto(param, value, casting="unsafe")

    def _check_state(
        self,
        state: dict[str, Any],
        prefix: str,
        missing: list[str],
        unexpected: list[str],
        errors: list[str],
        updates: list[tuple[Module, str, np.ndarray]],
        metadata: Mapping[str, Any],
    ) -> None:
        """torch's `_load_from_state_dict` and its walk over the children, without copying:
        appends this subtree's missing and unexpected keys and errors in torch's order, and
        the (module, tensor name, checked value) pairs to copy."""
        local = {
            name: value
            for registry in (self._parameters, self._buffers)
            for name, value in registry.items()
            if value is not None
        }
        # As torch's BatchNorm: a state_dict saved before a buffer existed (no version in its
        # metadata) may leave it out, and the module keeps its own value.
        version = metadata.get(prefix[:-1], {}).get("version")
        legacy = set(self._legacy_defaults) if version is None or version < 2 else set()
        for name, param in local.items():
            key = prefix + name
            if key not in state:
                if name not in legacy:
                    missing.append(key)
                continue
            value = _checked_value(key, param, state[key], errors)
            if value is not None:
                updates.append((self, name, value))
        for key in state:
            if key.startswith(prefix):
                head, dot, _ = key[len(prefix) :].partition(".")
                # a dotted key belongs to a child, which checks it; None children take anything
                if (dot and head not in self._modules) or (not dot and head not in local):
                    unexpected.append(key)
        for name, child in self._modules.items():
            if child is not None:
                child_prefix = prefix + name + "."
                child_state = {k: v for k, v in state.items() if k.startswith(child_prefix)}
                child._check_state(
                    child_state, child_prefix, missing, unexpected, errors, updates, metadata
                )

    # ------------------------------------------------------------------ misc

    def train(self, mode: bool = True) -> Module:
        """Set `training` here and in every child, as torch does; changes no computation."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.__dict__["training"] = mode
        for module in self.children():
            module.train(mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        return self

    def to(self, *args: Any, **kwargs: Any) -> Module:
        """torch.nn.Module.to, for a module that runs on the CPU in the dtype its kernels were
        compiled for: `net.to("cpu")`, `net.to(torch.float32)` (or NumPy's dtype),
        `net.to(device, dtype, non_blocking=True)` and `net.to(tensor)` return the module itself,
        unchanged, when they ask for the CPU and that dtype. Another device is a RuntimeError;
        a dtype that is not floating point is torch's TypeError, and another floating dtype a
        TypeError that says how to compile the model for it."""
        device, dtype = _to_target(args, kwargs)
        if device is not None:
            where = f"cuda:{device}" if isinstance(device, int) else str(device)
            if where.partition(":")[0] != "cpu":
                raise RuntimeError(
                    f"{self._get_name()} runs on the CPU (layerc compiles native code for it): "
                    f"it cannot move to the device {where!r}"
                )
        if dtype is not None:
            if type(dtype).__module__ == "torch":
                if not (dtype.is_floating_point or dtype.is_complex):
                    raise TypeError(
                        "nn.Module.to only accepts floating point or complex dtypes, but got "
                        f"desired dtype={dtype}"
                    )
                name = str(dtype).removeprefix("torch.")
            else:
                name = np.dtype(dtype).name
            self._keep_dtype(name)
        return self

    def cpu(self) -> Module:
        """The module itself: its kernels run on the CPU (torch.nn.Module.cpu)."""
        return self

    def float(self) -> Module:
        """The module itself when it computes in float32, else a TypeError: its kernels are
        compiled for one dtype (torch.nn.Module.float converts the parameters)."""
        return self._keep_dtype("float32")

    def double(self) -> Module:
        """The module itself when it computes in float64, else a TypeError (see `float`)."""
        return self._keep_dtype("float64")

    def half(self) -> Module:
        """A TypeError: layerc computes in float32 or float64 (see `float`)."""
        return self._keep_dtype("float16")

    def bfloat16(self) -> Module:
        """A TypeError: layerc computes in float32 or float64 (see `float`)."""
        return self._keep_dtype("bfloat16")

    def _keep_dtype(self, name: str) -> Module:
        """This module, when it and every module below it compute in the dtype `name`."""
        have = sorted({np.dtype(module.dtype).name for module in self.modules()})
        if have != [name]:
            which = " and ".join(have)
            model = self._get_name() if self._modules else "NAME"
            how = (
                f"compile its model for it (model {model}(dtype={name}) {{ ... }})"
                if name in ("float32", "float64")
                else "layerc compiles models for float32 or float64"
            )
            raise TypeError(
                f"{self._get_name()} computes in {which}, the dtype its kernels were compiled "
                f"for, and cannot be converted to {name}: {how}"
            )
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def apply(self, fn: Callable[[Module], None]) -> Module:
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    def _get_name(self) -> str:
        return type(self).__name__

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [
            "(" + key + "): " + _addindent(repr(module), 2) for key, module in self._modules.items()
        ]
        lines = extra_lines + child_lines
        main = self._get_name() + "("
        if lines:
            if len(extra_lines) == 1 and not child_lines:
                main += extra_lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"

    def __reduce_ex__(self, protocol: SupportsIndex) -> str | tuple[Any, ...]:
        """Pickled self-contained: with its generated module's source and weights, so that a
        process without the generated file unpickles it (layerc.runtime.portable)."""
        found = portable.payload(type(self).__module__)
        if found is None:  # not a generated class
            return super().__reduce_ex__(protocol)
        cls = type(self)
        return (portable.new, (found, cls.__qualname__, cls.__module__), self.__getstate__())

    def __getstate__(self) -> dict:
        st = self.__dict__.copy()
        st["_fast"] = _NO_FAST_PATH
        st["_fast_checked"] = -1
        if "_compiled_layout" in st:  # classes as references a fresh process can resolve
            st["_compiled_layout"] = tuple(
                (name, portable.class_ref(cls)) for name, cls in st["_compiled_layout"]
            )
        return st

    def __setstate__(self, st: dict) -> None:
        self.__dict__.update(st)
        if "_compiled_layout" not in st:  # pickled before layouts were recorded
            self.__dict__["_compiled_layout"] = _layout(self)
        else:
            self.__dict__["_compiled_layout"] = tuple(
                (name, portable.resolve(ref)) for name, ref in st["_compiled_layout"]
            )
        # pickle gives arrays back C-ordered: each tensor in the layout its kernel reads (a
        # Linear's weight transposed), as when it was built, rather than copied at every call
        restored = False
        for registry in (self._parameters, self._buffers):
            for name, value in registry.items():
                if isinstance(value, np.ndarray):
                    stored = self._stored(name, value)
                    if stored is not value:
                        registry[name] = self.__dict__[name] = stored
                        restored = True
        if restored and "_params_tuple" in self.__dict__:
            self._update_params_tuple()
        # Hook ids restored from a pickle must not be handed out again (torch does not guard
        # this: a new hook could silently replace an unpickled one in a fresh process).
        registries = (self._forward_hooks, self._forward_pre_hooks)
        H.state.next_id = max([H.state.next_id, *(key + 1 for r in registries for key in r)])
        H.bump()

    # ------------------------------------------------------------------ numba

    def njit(self) -> Callable[[np.ndarray], np.ndarray]:
        """A numba-compiled `f(x) -> y` with this module's current weights bound (copied), callable
        from Python and from inside the user's own `@numba.njit` code."""
        from .njit import bind

        arrays = self._njit_arrays()
        assert self._kernel is not None
        return bind(self._kernel, arrays, self.dtype, self._out_tail, self._in_rank)

    def _njit_arrays(self) -> tuple[np.ndarray, ...]:
        """Copies of the kernel's arguments as they are now, laid out as the kernel reads them."""
        if self._kernel is None:
            raise TypeError(f"{self._get_name()} has no compiled kernel")
        arrays = []
        for key, shape, *dtype in self._kernel_params:
            array = self._lookup_param(key)
            if array is None or array.shape != shape:
                raise TypeError(
                    f"{self._get_name()}.njit(): parameter {key!r} no longer has the shape "
                    f"{_fmt_shape(shape)} the kernel was generated for"
                )
            *path, name = key.split(".")
            owner = self.get_submodule(".".join(path)) if path else self
            copy = np.array(array, dtype=(dtype or [self.dtype])[0], copy=True)
            arrays.append(owner._stored(name, copy))
        return tuple(arrays)
