"""The resolved model: what the checker produces and the only thing code generation reads.

Names are bound, sizes known and weights are NumPy arrays of the model's dtype. `verify`
re-checks the invariants code generation relies on; tests call it after checking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import Loc

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}

ACTIVATIONS = ("ReLU", "Sigmoid", "Tanh", "Identity", "LeakyReLU", "Softmax")


@dataclass(frozen=True, eq=False)
class Linear:
    """y = x W^T + b, with W of shape (out_features, in_features)."""

    name: str
    in_features: int
    out_features: int
    weight: np.ndarray
    bias: np.ndarray | None
    loc: Loc


@dataclass(frozen=True, eq=False)
class Activation:
    """An elementwise (or, for Softmax, last-axis) function; `params` holds its arguments."""

    name: str
    kind: str
    params: tuple[tuple[str, float | int], ...]
    loc: Loc

    def param(self, key: str) -> float | int:
        return dict(self.params)[key]


@dataclass(frozen=True, eq=False)
class Submodel:
    """A model used as a layer of another; it keeps its own fixed weights."""

    name: str
    model: Model
    loc: Loc


Layer = Linear | Activation | Submodel


@dataclass(frozen=True, eq=False)
class Model:
    name: str
    dtype: np.dtype
    layers: tuple[Layer, ...]
    in_features: int
    out_features: int
    loc: Loc
    allow_nonfinite: bool = False


@dataclass(frozen=True, eq=False)
class TestCase:
    model: Model
    input: np.ndarray
    expect: np.ndarray
    atol: float
    rtol: float
    loc: Loc


@dataclass(frozen=True, eq=False)
class Program:
    source: str  # the source file's name as given to the compiler (basename in generated code)
    models: tuple[Model, ...]
    tests: tuple[TestCase, ...] = field(default=())
    # The files the program was read from: the source as given, then each file a `load(...)`
    # names, in order. No command writes its output over one of them.
    inputs: tuple[Path, ...] = field(default=())


def layer_sizes(layer: Layer) -> tuple[int, int] | None:
    """(in, out) of a layer, or None for a size-preserving activation."""
    if isinstance(layer, Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Submodel):
        return layer.model.in_features, layer.model.out_features
    return None


def linears(model: Model) -> list[tuple[str, Linear]]:
    """Every Linear in the model, nested ones included, with its state_dict prefix."""
    out: list[tuple[str, Linear]] = []
    for layer in model.layers:
        if isinstance(layer, Linear):
            out.append((layer.name, layer))
        elif isinstance(layer, Submodel):
            out.extend((f"{layer.name}.{path}", lin) for path, lin in linears(layer.model))
    return out


class IRError(AssertionError):
    """The IR broke an invariant: a bug in layerc, never a user error."""


def verify(program: Program) -> None:
    """Check the invariants code generation relies on; raise IRError naming the first broken."""
    seen: set[str] = set()
    for model in program.models:
        if model.name in seen:
            raise IRError(f"model {model.name!r} defined twice")
        seen.add(model.name)
        _verify_model(model, seen)
    for test in program.tests:
        if test.model.name not in seen:
            raise IRError(f"test refers to unknown model {test.model.name!r}")
        if test.input.shape[-1] != test.model.in_features:
            raise IRError(f"test input width {test.input.shape} for {test.model.name}")


def _verify_model(model: Model, defined: set[str]) -> None:
    if model.dtype not in DTYPES.values():
        raise IRError(f"{model.name}: dtype {model.dtype}")
    names = [layer.name for layer in model.layers]
    if len(set(names)) != len(names):
        raise IRError(f"{model.name}: duplicate layer names {names}")
    size: int | None = None
    for layer in model.layers:
        if isinstance(layer, Linear):
            shape = (layer.out_features, layer.in_features)
            if layer.weight.shape != shape or layer.weight.dtype != model.dtype:
                raise IRError(f"{model.name}.{layer.name}: weight {layer.weight.shape}")
            if layer.bias is not None and (
                layer.bias.shape != (layer.out_features,) or layer.bias.dtype != model.dtype
            ):
                raise IRError(f"{model.name}.{layer.name}: bias {layer.bias.shape}")
            if not model.allow_nonfinite and not np.isfinite(layer.weight).all():
                raise IRError(f"{model.name}.{layer.name}: non-finite weight")
        elif isinstance(layer, Submodel):
            if layer.model.name not in defined or layer.model.dtype != model.dtype:
                raise IRError(f"{model.name}.{layer.name}: submodel {layer.model.name}")
        elif layer.kind not in ACTIVATIONS:
            raise IRError(f"{model.name}.{layer.name}: activation {layer.kind}")
        sizes = layer_sizes(layer)
        if sizes is not None:
            if size is not None and sizes[0] != size:
                raise IRError(f"{model.name}.{layer.name}: takes {sizes[0]}, gets {size}")
            if size is None and sizes[0] != model.in_features:
                raise IRError(f"{model.name}: in_features {model.in_features} != {sizes[0]}")
            size = sizes[1]
    if size != model.out_features:
        raise IRError(f"{model.name}: out_features {model.out_features} != {size}")
