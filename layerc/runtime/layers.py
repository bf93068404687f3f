"""The layer classes generated modules build on: `Layer` (a layer of any kind of the compiler's
kinds table, whose weights and buffers its generated subclass declares), `Linear` and the first
activations (with classes of their own, which modules generated for runtime ABI 1 use), and
`Model` (an ordered pipeline, as torch.nn.Sequential). Generated code subclasses each one per
kind, arguments, shape and dtype and supplies the numba kernel as a class attribute, so
instances pickle by reference and the kernel lives in the generated file (where numba's cache
can see when it changes)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .module import Module, to_numpy


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

    def __init__(self, weight: Any, bias: Any = None) -> None:
        Module.__init__(self)
        shape = (self.out_features, self.in_features)
        w = np.array(to_numpy(weight), dtype=self.dtype, order="C", copy=True)
        if w.shape != shape:
            raise ValueError(f"weight must have shape {shape}, got {w.shape}")
        self._register_parameter("weight", w)
        if self.has_bias:
            b = np.array(to_numpy(bias), dtype=self.dtype, order="C", copy=True)
            if b.shape != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},), got {b.shape}")
            self._register_parameter("bias", b)
        else:
            self._register_parameter("bias", None)

    def _get_name(self) -> str:
        return "Linear"

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}"


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
    """A compiled model: children run in order; its kernel runs them all in one native call."""

    def forward(self, x: Any, *, out: np.ndarray | None = None) -> Any:
        y = x
        for module in self._modules.values():
            y = module(y)  # type: ignore[misc]  # a None child fails here, as in torch
        if out is None:
            return y
        target = self._output_for(self._as_input(x), out)
        np.copyto(target, y)
        return target


class child:
    """A class attribute that reads the child registered under a name that is not an identifier
    (an unnamed layer's position, "1"), so the generated class can offer `net.layer_1`."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, obj: Module | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return obj._modules[self.key]

    def __set__(self, obj: Module, value: Module) -> None:
        obj.add_module(self.key, value)


def reserved_names() -> frozenset[str]:
    """Names a layer may not take: every attribute a generated model class or instance has."""
    instance = Model()
    return (
        frozenset(n for n in dir(Model) if not n.startswith("__"))
        | frozenset(instance.__dict__)
        | {
            "in_features",
            "out_features",
            "dtype",
            "_name",
        }
    )
