"""The layer classes generated modules build on: `Layer` (a layer of any kind of the compiler's
kinds table, whose weights and buffers its generated subclass declares), `Linear` and the first
activations (with classes of their own, which modules generated for runtime ABI 1 use), and
`Model` (an ordered pipeline, as torch.nn.Sequential). Generated code subclasses each one per
kind, arguments, shape and dtype and supplies the numba kernel as a class attribute, so
instances pickle by reference and the kernel lives in the generated file (where numba's cache
can see when it changes)."""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

import numpy as np

from . import hooks as H
from .hooks import state
from .module import Module, ShapeError, child, kernel_forward, to_numpy

__all__ = [
    "Identity",
    "LeakyReLU",
    "Linear",
    "Model",
    "QLinear",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "TupleModel",
    "child",
    "reserved_names",
]

_V = TypeVar("_V")


class Layer(Module):
    """A layer of one kind. The generated subclass sets torch's class name (`_layer_name`), its
    `extra_repr()` text, the arguments as attributes (`eps`, `num_features`), the shapes, dtype
    and kernel, and `_tensors`: each weight and buffer in torch's registration order as
    (name, shape or None where torch registers None, dtype name or "" for the module's dtype,
    whether it is a buffer, fill value or None when the constructor is given its values).
    The constructor takes the given values in that order."""

    _layer_name = "Layer"
    _extra_repr = ""
    _tensors: tuple[tuple[str, tuple[int, ...] | None, str, bool, float | None], ...] = ()

    def __init__(self, *values: Any) -> None:
        super().__init__()
        given = list(values)
        wanted = [t for t in self._tensors if t[1] is not None and t[4] is None]
        if len(given) != len(wanted):
            names = ", ".join(t[0] for t in wanted) or "nothing"
            raise TypeError(f"{self._layer_name}() takes {names}, got {len(given)} arrays")
        for name, shape, dtype_name, buffer, fill in self._tensors:
            value = None
            if shape is not None:
                dtype = np.dtype(dtype_name) if dtype_name else self.dtype
                if fill is None:
                    value = np.array(to_numpy(given.pop(0)), dtype=dtype, order="C", copy=True)
                    if value.shape != shape:
                        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
                else:
                    value = np.full(shape, fill, dtype=dtype)
            if buffer:
                self._register_buffer(name, value)
            else:
                self._register_parameter(name, value)

    def _get_name(self) -> str:
        return self._layer_name

    def extra_repr(self) -> str:
        return self._extra_repr


class Linear(Layer):
    """y = x W^T + b: `weight` has shape (out_features, in_features), as in torch.nn.Linear."""

    in_features: int
    out_features: int
    has_bias: bool = True
    # Set by generated modules whose kernels multiply with `gemm.matmul`: the weight is then
    # stored transposed (see `gemm.transposed`); its shape and values are torch's all the same.
    _weight_transposed: bool = False

    def __init__(self, weight: Any, bias: Any = None) -> None:
        Module.__init__(self)
        shape = (self.out_features, self.in_features)
        w = np.array(to_numpy(weight), dtype=self.dtype, order="C", copy=True)
        if w.shape != shape:
            raise ValueError(f"weight must have shape {shape}, got {w.shape}")
        self._register_parameter("weight", self._stored("weight", w))
        if self.has_bias:
            b = np.array(to_numpy(bias), dtype=self.dtype, order="C", copy=True)
            if b.shape != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), got {b.shape}")
            self._register_parameter("bias", b)
        else:
            self._register_parameter("bias", None)

    def _get_name(self) -> str:
        return "Linear"

    def _stored(self, name: str, array: np.ndarray) -> np.ndarray:
        if name == "weight" and self._weight_transposed:
            from . import gemm

            # An array the kernel reads in place is kept (load_state_dict(assign=True) binds
            # the arrays it is given, as torch does); any other is copied into that layout.
            if gemm.reads_in_place(array):
                return array
            return gemm.transposed(array)
        return super()._stored(name, array)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}"


class QLinear(Linear):
    """A Linear of a model with quantize=int8: its kernel multiplies an int8 copy of the weight
    (per-output scales, layerc/runtime/quantized.py) by each input row quantised at run time.
    `weight` holds the values that int8 copy stands for (the dequantised weight), read-only: a
    new weight is assigned (`layer.weight = w`) or loaded (`load_state_dict`), and is quantised
    again then. An in-place write would not reach the int8 copy, so it raises instead."""

    def _register_parameter(self, name: str, value: np.ndarray | None) -> None:
        if name == "weight" and value is not None:
            from . import quantized

            value, derived = quantized.tensors(value)
            value.flags.writeable = False
            self.__dict__["_q8"] = dict(zip(quantized.TENSORS, derived, strict=True))
        super()._register_parameter(name, value)

    def _tensor(self, name: str) -> np.ndarray | None:
        derived = self.__dict__.get("_q8")
        if derived is not None and name in derived:
            # what the kernel takes in place of the weight, while there is one (`del
            # layer.weight` makes a call raise, as torch's does)
            return derived[name] if "weight" in self._parameters else None
        return super()._tensor(name)

    def _load_tensor(self, name: str, value: np.ndarray, assign: bool) -> None:
        if name == "weight":  # quantised again, into new arrays
            self._set_parameter(name, value)
        else:
            super()._load_tensor(name, value, assign)

    def __getstate__(self) -> dict:
        st = super().__getstate__()
        st.pop("_q8", None)  # derived from the weight again when unpickled
        return st

    def __setstate__(self, st: dict) -> None:
        super().__setstate__(st)
        weight = self._parameters.get("weight")
        if weight is not None:
            self._register_parameter("weight", np.array(weight))
            H.bump()

    def extra_repr(self) -> str:
        return super().extra_repr() + ", quantize=int8"


class _Activation(Layer):
    """A parameter-free layer; its kernel takes any shape and keeps it."""

    name = "Activation"

    def _get_name(self) -> str:
        return self.name


class ReLU(_Activation):
    name = "ReLU"


class Sigmoid(_Activation):
    name = "Sigmoid"


class Tanh(_Activation):
    name = "Tanh"


class Identity(_Activation):
    name = "Identity"


class LeakyReLU(_Activation):
    name = "LeakyReLU"
    negative_slope: float = 0.01

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Softmax(_Activation):
    name = "Softmax"
    dim: int = -1

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Model(Module):
    """A compiled model: children run in order; its kernel runs them all in one native call.

    It is also torch.nn.Sequential's counterpart: `Model(layer, ...)` or
    `Model(OrderedDict(name=layer, ...))` holds the given modules and runs them in order (layer
    by layer, each through its own kernel), and indexing a model works as Sequential's."""

    def __init__(self, *args: Any) -> None:
        super().__init__()
        if not args:
            return
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            items = list(args[0].items())
        else:
            items = [(str(i), module) for i, module in enumerate(args)]
        for name, module in items:
            self.add_module(name, module)
        self._take_shape()

    # False for a graph model: its children are not a sequence (no slices, no `del net[i]`)
    _sequential = True

    @kernel_forward
    def forward(self, x: Any, *, out: np.ndarray | None = None) -> Any:
        y = x
        for name, module in self._modules.items():
            try:
                y = module(y)  # type: ignore[misc]  # a None child fails here, as in torch
            except ShapeError as error:
                error.within(name)
                raise
        if out is None:
            return y
        target = self._output_for(self._as_input(x), out, np.shape(y))
        np.copyto(target, y)
        return target

    def _take_shape(self) -> None:
        """Set this instance's width, dtype and output shape from its children (for a model
        built from given modules rather than by generated code)."""
        children = [m for m in self._modules.values() if m is not None]
        d = self.__dict__
        d["in_features"] = next(
            (m.in_features for m in children if m.in_features is not None), None
        )
        out = next((m.out_features for m in reversed(children) if m.out_features is not None), None)
        d["out_features"] = out
        d["_out_tail"] = None if out is None else (out,)
        if children:
            d["dtype"] = children[0].dtype

    # ------------------------------------------------------------------ torch.nn.Sequential

    def _get_item_by_idx(self, iterator: Iterable[_V], idx: Any) -> _V:
        size = len(self)
        idx = operator.index(idx)
        if not -size <= idx < size:
            raise IndexError(f"index {idx} is out of range")
        idx %= size
        return next(islice(iterator, idx, None))

    def __getitem__(self, idx: Any) -> Any:
        """`net[i]` is the i-th child (negative indices and NumPy integers too); `net[a:b]` is a
        new model of the same class holding those children (the same objects), as
        torch.nn.Sequential's slices. The new model runs its children in order; it takes the
        fused kernel only when it holds exactly the layers the kernel was generated for."""
        if isinstance(idx, slice):
            self._check_sequential("slicing")
            cls = type(self)
            new = cls.__new__(cls)
            Module.__init__(new)
            for name, module in list(self._modules.items())[idx]:
                new._set_child(name, module)
            new._take_shape()
            new.__dict__["_compiled_layout"] = self.__dict__.get("_compiled_layout", ())
            return new
        return self._get_item_by_idx(self._modules.values(), idx)

    def _check_sequential(self, what: str) -> None:
        """Refuse `what` on a graph model: its forward names its children, it is no sequence."""
        if not self._sequential:
            raise TypeError(
                f"{what} applies to a model whose layers run in order; {self._get_name()} has "
                "a forward block"
            )

    def __setitem__(self, idx: Any, module: Module) -> None:
        key: str = self._get_item_by_idx(self._modules.keys(), idx)
        setattr(self, key, module)

    def __delitem__(self, idx: Any) -> None:
        """Remove children by position; the rest are renamed "0", "1", ... as torch renames
        them (so state_dict keys change too)."""
        self._check_sequential("deleting children by position")
        if isinstance(idx, slice):
            for key in list(self._modules.keys())[idx]:
                delattr(self, key)
        else:
            delattr(self, self._get_item_by_idx(self._modules.keys(), idx))
        modules = list(self._modules.values())
        for key in list(self._modules):
            delattr(self, key)
        for i, module in enumerate(modules):
            self._set_child(str(i), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module | None]:
        return iter(self._modules.values())


class TupleModel(Model):
    """A graph model whose forward takes several inputs or gives several outputs: `net(x, m)`,
    a tuple of outputs when there are several. With no hook anywhere a call checks the inputs
    (`_inputs`), allocates the outputs and makes one native call; otherwise it runs the
    generated `forward` with every hook, as `Module.__call__` does."""

    _call: Callable[..., tuple[np.ndarray, ...]]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fast = self._fast
        if fast[0] == state.version and not kwargs:
            return self._run_graph(args, fast[2], fast[1])
        if (
            self._forward_hooks
            or self._forward_pre_hooks
            or H.global_forward_hooks
            or H.global_forward_pre_hooks
        ):
            return self._call_with_hooks(args, kwargs)
        if not kwargs and self._refresh_fast_path():
            return self._run_graph(args, self._fast[2], self._fast[1])
        return self.forward(*args, **kwargs)

    _call_impl = __call__

    def _run_graph(
        self, args: tuple, params: tuple[np.ndarray, ...], kernel: Callable[..., Any] | None = None
    ) -> Any:
        """The fused forward on `args`, by `kernel` (the model's own by default)."""
        if kernel is None:
            kernel = self._kernel
        assert kernel is not None
        xs = self._inputs(*args)
        first = xs[0]
        batch = first.shape[: first.ndim - len(self.in_shapes[0] or ())]
        ys = tuple(np.empty(batch + shape, self.dtype) for shape in self.out_shapes)  # type: ignore[operator]
        kernel(*xs, *ys, *params)
        return ys if len(ys) > 1 else ys[0]

    def njit(self) -> Callable[..., Any]:
        """A numba-compiled `f(x, ...)` with this model's current weights bound (copied): a
        tuple of outputs when there are several, callable from the user's `@numba.njit` code."""
        from .njit import bind_tuple

        return bind_tuple(self._call, self._njit_arrays(), len(self.out_shapes) > 1)


def reserved_names() -> frozenset[str]:
    """Names a layer may not take: every attribute a generated model class or instance has."""
    instance = Model()
    return (
        frozenset(n for n in dir(TupleModel) if not n.startswith("__"))
        | frozenset(instance.__dict__)
        | {
            "in_features",
            "out_features",
            "dtype",
            "_name",
        }
    )
