"""The resolved model: what the checker produces and what the lowering stage reads.

Names are bound, per-sample shapes known and weights are NumPy arrays of the model's dtype. Every
layer is a `Layer` of a kind in `kinds.KINDS` (its bound arguments, its weights and buffers in
state_dict order), or a `Submodel`. `walk` is the one walk over nested models; `verify` re-checks
the invariants the later stages rely on, and tests call it after checking.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import Loc
from .kinds import KINDS, Kind, ShapeError

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}

Shape = tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Layer:
    """A layer of kind `kind`: every argument of the kind (defaults filled in) in the kind's
    order, every weight and buffer it declares in state_dict order (None where torch registers
    None, as `bias` with bias=false), and its per-sample input and output shapes."""

    name: str
    kind: str
    args: tuple[tuple[str, object], ...]
    tensors: tuple[tuple[str, np.ndarray | None], ...]
    in_shape: Shape
    out_shape: Shape
    loc: Loc

    @property
    def spec(self) -> Kind:
        return KINDS[self.kind]

    @property
    def argdict(self) -> dict[str, object]:
        return dict(self.args)

    def arg(self, key: str) -> object:
        return self.argdict[key]

    def tensor(self, key: str) -> np.ndarray | None:
        """The weight or buffer `key`, or None when the layer has none by that name."""
        return dict(self.tensors).get(key)

    @property
    def weight(self) -> np.ndarray | None:
        return self.tensor("weight")

    @property
    def bias(self) -> np.ndarray | None:
        return self.tensor("bias")

    @property
    def in_features(self) -> int:
        """Values along the last axis of the input (a Linear's `in_features`)."""
        return self.in_shape[-1]

    @property
    def out_features(self) -> int:
        return self.out_shape[-1]


@dataclass(frozen=True, eq=False)
class Submodel:
    """A model used as a layer of another; it keeps its own fixed weights."""

    name: str
    model: Model
    loc: Loc

    @property
    def in_shape(self) -> Shape:
        return self.model.in_shape

    @property
    def out_shape(self) -> Shape:
        return self.model.out_shape


Child = Layer | Submodel


@dataclass(frozen=True, eq=False)
class Model:
    name: str
    dtype: np.dtype
    layers: tuple[Child, ...]
    in_shape: Shape  # per sample: the model takes (*in_shape) or (*, *in_shape)
    out_shape: Shape
    loc: Loc
    allow_nonfinite: bool = False

    @property
    def in_features(self) -> int:
        """Values per input sample (the feature count when the input is 1-D)."""
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_shape)


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


# --------------------------------------------------------------------------- the walker


def walk(model: Model, prefix: str = "", *, submodels: bool = False) -> Iterator[tuple[str, Child]]:
    """Every layer of `model` in execution order, with its path from the model ("enc.fc", the
    prefix of its state_dict keys): nested models are expanded in place and, with `submodels`,
    yielded themselves just before their layers."""
    for child in model.layers:
        path = prefix + child.name
        if isinstance(child, Submodel):
            if submodels:
                yield path, child
            yield from walk(child.model, path + ".", submodels=submodels)
        else:
            yield path, child


def layers(model: Model) -> Iterator[tuple[str, Layer]]:
    """The layers `walk` gives, nested models expanded (the models themselves left out)."""
    for path, child in walk(model):
        assert isinstance(child, Layer)
        yield path, child


def linears(model: Model) -> list[tuple[str, Layer]]:
    """Every Linear in the model, nested ones included, with its state_dict prefix."""
    return [(path, layer) for path, layer in layers(model) if layer.kind == "Linear"]


def tensors(model: Model) -> Iterator[tuple[str, np.ndarray]]:
    """Every weight and buffer the model holds, under its state_dict key, in state_dict order
    (each layer's parameters, then its buffers)."""
    for path, layer in layers(model):
        spec = layer.spec
        for buffers in (False, True):
            for t in spec.tensors:
                value = layer.tensor(t.name)
                if t.buffer == buffers and value is not None:
                    yield f"{path}.{t.name}", value


def layer_sizes(layer: Child) -> tuple[int, int] | None:
    """(in, out) features of a layer that changes the shape, or None for a shape-preserving one."""
    if isinstance(layer, Layer) and layer.spec.keeps_shape:
        return None
    return math.prod(layer.in_shape), math.prod(layer.out_shape)


# --------------------------------------------------------------------------- the verifier


class IRError(AssertionError):
    """The IR broke an invariant: a bug in layerc, never a user error."""


def verify(program: Program) -> None:
    """Check the invariants the later stages rely on; raise IRError naming the first broken."""
    seen: set[str] = set()
    for model in program.models:
        if model.name in seen:
            raise IRError(f"model {model.name!r} defined twice")
        seen.add(model.name)
        _verify_model(model, seen)
    for test in program.tests:
        if test.model.name not in seen:
            raise IRError(f"test refers to unknown model {test.model.name!r}")
        rank = len(test.model.in_shape)
        if test.input.shape[test.input.ndim - rank :] != test.model.in_shape:
            raise IRError(f"test input shape {test.input.shape} for {test.model.name}")


def _verify_model(model: Model, defined: set[str]) -> None:
    if model.dtype not in DTYPES.values():
        raise IRError(f"{model.name}: dtype {model.dtype}")
    names = [layer.name for layer in model.layers]
    if len(set(names)) != len(names):
        raise IRError(f"{model.name}: duplicate layer names {names}")
    shape = model.in_shape
    for layer in model.layers:
        where = f"{model.name}.{layer.name}"
        if layer.in_shape != shape:
            raise IRError(f"{where}: takes {layer.in_shape}, gets {shape}")
        if isinstance(layer, Submodel):
            if layer.model.name not in defined or layer.model.dtype != model.dtype:
                raise IRError(f"{where}: submodel {layer.model.name}")
        else:
            _verify_layer(layer, model, where)
        shape = layer.out_shape
    if shape != model.out_shape:
        raise IRError(f"{model.name}: out_shape {model.out_shape} != {shape}")


def _verify_layer(layer: Layer, model: Model, where: str) -> None:
    spec = KINDS.get(layer.kind)
    if spec is None:
        raise IRError(f"{where}: unknown kind {layer.kind}")
    args = layer.argdict
    if [name for name, _ in layer.args] != [p.name for p in spec.params]:
        raise IRError(f"{where}: arguments {list(args)}")
    try:
        out = spec.shape(args, layer.in_shape)
    except ShapeError as exc:
        raise IRError(f"{where}: shape rule: {exc.message}") from None
    if out != layer.out_shape:
        raise IRError(f"{where}: out_shape {layer.out_shape} != {out}")
    if [name for name, _ in layer.tensors] != [t.name for t in spec.tensors]:
        raise IRError(f"{where}: tensors {[name for name, _ in layer.tensors]}")
    for t in spec.tensors:
        value = layer.tensor(t.name)
        if (value is not None) != t.present(args):
            raise IRError(f"{where}: {t.name} present={value is not None}")
        if value is None:
            continue
        dtype = np.dtype(t.dtype) if t.dtype is not None else model.dtype
        if value.shape != t.shape(args) or value.dtype != dtype:
            raise IRError(f"{where}: {t.name} {value.shape} {value.dtype}")
        if not value.flags.c_contiguous:
            raise IRError(f"{where}: {t.name} is not C-contiguous")
        if dtype.kind == "f" and not model.allow_nonfinite and not np.isfinite(value).all():
            raise IRError(f"{where}: non-finite {t.name}")
