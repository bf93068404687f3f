"""The layer kinds: every kind a model may use, declared once, in one table (`KINDS`).

A `Kind` says what the checker, the lowering stage, code generation, the runtime and the docs
need to know about a kind: its parameters (PyTorch's names, order, defaults and checks), its
weights and buffers (state_dict keys, shapes, PyTorch's initial values, which are block entries),
its shape rule, how it computes (an elementwise expression of `v`, a per-channel expression, a
row kernel or a matrix product), whether it may join a preceding Linear's epilogue, the
torch.nn class it must match (name and `extra_repr`), and its ONNX operator. Adding a kind is
one entry here (plus its tests and docs).

Nothing here reads source text: arguments arrive bound and converted (see `binder`), and every
number that reaches generated code is printed from a parsed value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from . import binder as B
from .binder import REQUIRED, Param

# Bound arguments by name; each value has the type its parameter's converter gives.
Args = Mapping[str, Any]
Shape = tuple[int, ...]

# Limits the checker enforces on sizes the source writes (see docs/language.md, "Limits").
MAX_FEATURES = 1 << 24  # 16,777,216: far beyond any model this compiler is for
MAX_RANK = 8  # dimensions of a per-sample shape (`input=[1, 28, 28]`, `LayerNorm([3, 4])`)


class ShapeError(Exception):
    """A layer cannot take the per-sample shape it is given. With `mismatch`, the message says
    what the layer expects ("expects 5 input features") and the checker adds what it was given;
    otherwise the message stands alone. `arg` names the argument at fault, if one is."""

    def __init__(self, message: str, arg: str | None = None, *, mismatch: bool = True):
        super().__init__(message)
        self.message = message
        self.arg = arg
        self.mismatch = mismatch


class Lines(Protocol):
    """What kernel bodies are emitted through (codegen's `Emitter`)."""

    def line(self, text: str = "") -> None: ...

    def indent(self) -> AbstractContextManager[None]: ...


# ref(name) -> the local name under which a kernel sees a tensor (or a prepared array)
Ref = Callable[[str], str]


# --------------------------------------------------------------------------- how a kind computes


@dataclass(frozen=True)
class Elementwise:
    """y = f(v) for every value v, whatever the shape: `expr(args, t)` is the numba expression
    of `v`, with `t` the dtype's constructor (`_np.float32`) for constants."""

    expr: Callable[[Args, str], str]


@dataclass(frozen=True)
class Channelwise:
    """y = f(v, c) for each value v of channel c, a sample being (C, L) (C channels of L values;
    a 1-D sample is (C, 1)). `prepare(e, args, t, ref, C)` emits lines that compute per-channel
    arrays of length C from the layer's tensors before the loop; `expr(args, t, ref, c)` is the
    expression of `v` in channel `c`. `ref(name)` is the local name of a tensor or prepared
    array. Folded into a Linear's epilogue, the channel is the Linear's output feature."""

    expr: Callable[[Args, str, Ref, str], str]
    prepare: Callable[[Lines, Args, str, Ref, str], None] | None = None


@dataclass(frozen=True)
class Rowwise:
    """A function of whole rows: `emit(e, args, t)` writes the body of `kernel(xs, ys,
    *tensors)` for C-contiguous (m, w) arrays, one row per normalised group. `ys` may be `xs`."""

    emit: Callable[[Lines, Args, str], None]


@dataclass(frozen=True)
class MatMul:
    """y = x W^T + b: code generation's matrix-product kernel, whose BLAS path the lowering
    stage picks from the layer's size."""


Native = Elementwise | Channelwise | Rowwise | MatMul


# --------------------------------------------------------------------------- weights and buffers


@dataclass(frozen=True)
class Tensor:
    """A weight (parameter) or buffer, as the torch.nn class registers it.

    `initial` is PyTorch's initial value (a number, or a function of the arguments); None means
    the source must give it (or an initialiser draws it). The tensor exists only when every
    boolean argument in `flags` is true; otherwise torch registers None under its name."""

    name: str
    shape: Callable[[Args], Shape]
    initial: float | Callable[[Args], float] | None
    buffer: bool = False
    flags: tuple[str, ...] = ()
    entry: bool = True  # may be given in the layer's { ... } block
    dtype: str | None = None  # None: the model's dtype
    kernel: bool = True  # an argument of the kind's kernel
    # torch fills it in (with `initial`) when a state_dict without version metadata lacks it
    legacy_default: bool = False

    def present(self, args: Args) -> bool:
        return all(bool(args[flag]) for flag in self.flags)

    def initial_value(self, args: Args) -> float:
        assert self.initial is not None, self.name
        return self.initial(args) if callable(self.initial) else self.initial


@dataclass(frozen=True)
class Onnx:
    """The ONNX operator a layer of the kind exports as: `inputs` are the layer's tensors that
    follow the data input (as initializers), `attributes(args)` the operator's attributes.
    (`layerc export` reads this for the kinds it exports.)"""

    op: str
    attributes: Callable[[Args], dict[str, object]] = lambda a: {}
    inputs: tuple[str, ...] = ()
    opset: int = 1


# --------------------------------------------------------------------------- shape rules


def same_shape(args: Args, shape: Shape) -> Shape:
    return shape


def any_shape(args: Args, shape: Shape) -> Shape | None:
    return None


def no_fixed_input(args: Args) -> Shape | None:
    return None


def whole_sample(args: Args, shape: Shape) -> tuple[int, int]:
    return 1, math.prod(shape)


def last_axis(args: Args, shape: Shape) -> tuple[int, int]:
    return math.prod(shape[:-1]), shape[-1]


def no_check(args: B.Bound) -> None:
    return None


def fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------- the kind


@dataclass(frozen=True)
class Kind:
    """One layer kind. See the module docstring; the defaults fit a parameter-free activation."""

    name: str  # the .lyr name, which is the torch.nn class name
    params: tuple[Param, ...]
    native: Native
    base: str  # stem of its kernels' names ("relu" -> `_relu_f32`)
    doc: str  # what it computes, one sentence (kernel docstrings)
    tensors: tuple[Tensor, ...] = ()
    # the per-sample output shape for a per-sample input shape; raises ShapeError
    shape: Callable[[Args, Shape], Shape] = same_shape
    # the per-sample input a model that starts with this layer takes, if the layer fixes it
    fixes: Callable[[Args], Shape | None] = no_fixed_input
    # the trailing input shape the layer's own module checks (None: any shape), given the
    # per-sample input shape it has in its model
    accepts: Callable[[Args, Shape], Shape | None] = any_shape
    # how its kernel views one sample: (rows per sample, values per row)
    rows: Callable[[Args, Shape], tuple[int, int]] = whole_sample
    # checks between arguments, once they are bound (raises LayercError at an argument)
    validate: Callable[[B.Bound], None] = no_check
    # "norm" or "activation": may join a preceding Linear's epilogue, in that order
    fuse: str | None = None
    # the fused forward leaves it out: identity at inference, or a reshape of contiguous data
    dropped: bool = False
    # torch's `extra_repr()` for these arguments
    extra_repr: Callable[[Args], str] = lambda a: ""
    # the class in layerc.runtime that its generated class derives from
    runtime: str = "Layer"
    onnx: Onnx | None = None
    # `init = NAME(...)` in the block draws the tensors: (call, args) -> {name: float64 array}
    initialiser: Callable[..., dict] | None = None
    noun: str = ""  # how messages name it, when not by its kind name

    @property
    def preserves_shape(self) -> bool:
        return self.shape is same_shape

    def entries(self) -> tuple[str, ...]:
        """The names its { ... } block takes."""
        names = tuple(t.name for t in self.tensors if t.entry)
        return (*names, "init") if self.initialiser is not None else names


# --------------------------------------------------------------------------- helpers for entries


def _const(t: str, value: float) -> str:
    """A constant of the kernel's dtype: `_np.float32(0.2)`; the value is a parsed number."""
    text = repr(float(value))
    if text in ("nan", "inf", "-inf"):
        raise ValueError(f"non-finite constant {text}")
    return f"{t}({text})"


def _clip(expr: str, low: str, high: str) -> str:
    """`expr` clipped to [low, high]; NaN passes through (every comparison with it is false),
    as torch's clamp propagates NaN."""
    return f"({low} if {expr} < {low} else ({high} if {expr} > {high} else {expr}))"


def _float(name: str, default: object = REQUIRED, **checks: float | bool) -> Param:
    """A finite number (PyTorch's `float` argument)."""
    return Param(name, B.real(**checks), default, type="float")  # type: ignore[arg-type]


def _linear_shape(args: Args, shape: Shape) -> Shape:
    if shape[-1] != args["in_features"]:
        raise ShapeError(f"expects {args['in_features']} input features")
    return (*shape[:-1], args["out_features"])


def _linear_init(call: object, args: Args) -> dict:
    from . import weights as W

    weight, bias = W.initialise(
        call,  # type: ignore[arg-type]
        args["out_features"],  # type: ignore[arg-type]
        args["in_features"],  # type: ignore[arg-type]
        bool(args["bias"]),
    )
    return {"weight": weight, "bias": bias}


def _softmax_dim(args: B.Bound) -> None:
    if args["dim"] != -1:
        raise args.error(
            "dim",
            f"{args.callee} supports dim=-1 only (the feature axis, which is the last axis of "
            "every input a layerc model takes)",
        )


def _emit_softmax(e: Lines, args: Args, t: str) -> None:
    e.line("n, f = xs.shape")
    e.line("for s in range(n):")
    with e.indent():
        e.line(f"m = {t}(-_np.inf)")
        e.line("for i in range(f):")
        with e.indent():
            e.line("if xs[s, i] > m:")
            with e.indent():
                e.line("m = xs[s, i]")
        e.line(f"total = {t}(0.0)")
        e.line("for i in range(f):")
        with e.indent():
            e.line("v = _np.exp(xs[s, i] - m)")
            e.line("ys[s, i] = v")
            e.line("total += v")
        e.line("for i in range(f):")
        with e.indent():
            e.line("ys[s, i] = ys[s, i] / total")


_NONE = ()


def _kinds(*kinds: Kind) -> dict[str, Kind]:
    table = {kind.name: kind for kind in kinds}
    assert len(table) == len(kinds), "a kind is declared twice"
    return table


# --------------------------------------------------------------------------- the table

KINDS: dict[str, Kind] = _kinds(
    Kind(
        "Linear",
        params=(
            Param("in_features", B.positive_int(MAX_FEATURES), type="int"),
            Param("out_features", B.positive_int(MAX_FEATURES), type="int"),
            Param("bias", B.boolean, True, type="bool"),
        ),
        native=MatMul(),
        base="linear",
        doc="y = A x + b",
        tensors=(
            Tensor("weight", lambda a: (a["out_features"], a["in_features"]), None),
            Tensor("bias", lambda a: (a["out_features"],), None, flags=("bias",)),
        ),
        shape=_linear_shape,
        fixes=lambda a: (a["in_features"],),
        accepts=lambda a, shape: (a["in_features"],),
        rows=last_axis,
        extra_repr=lambda a: (
            f"in_features={a['in_features']}, out_features={a['out_features']}, bias={a['bias']}"
        ),
        runtime="Linear",
        onnx=Onnx("Gemm", lambda a: {"transB": 1}, inputs=("weight", "bias")),
        initialiser=_linear_init,
    ),
    Kind(
        "ReLU",
        params=_NONE,
        native=Elementwise(lambda a, t: f"{t}(0.0) if v <= 0 else v"),
        base="relu",
        doc="ReLU: max(x, 0) elementwise; NaN stays NaN.",
        fuse="activation",
        runtime="ReLU",
        onnx=Onnx("Relu"),
    ),
    Kind(
        "Sigmoid",
        params=_NONE,
        native=Elementwise(lambda a, t: f"{t}(1.0) / ({t}(1.0) + _np.exp(-v))"),
        base="sigmoid",
        doc="Sigmoid: 1 / (1 + exp(-x)) elementwise.",
        fuse="activation",
        runtime="Sigmoid",
        onnx=Onnx("Sigmoid"),
    ),
    Kind(
        "Tanh",
        params=_NONE,
        native=Elementwise(lambda a, t: "_np.tanh(v)"),
        base="tanh",
        doc="Tanh: tanh(x) elementwise.",
        fuse="activation",
        runtime="Tanh",
        onnx=Onnx("Tanh"),
    ),
    Kind(
        "Identity",
        params=_NONE,
        native=Elementwise(lambda a, t: "v"),
        base="identity",
        doc="Identity: a copy of x.",
        dropped=True,
        runtime="Identity",
        onnx=Onnx("Identity"),
    ),
    Kind(
        "LeakyReLU",
        params=(_float("negative_slope", 0.01),),
        native=Elementwise(lambda a, t: f"v if v > 0 else v * {_const(t, a['negative_slope'])}"),
        base="leaky_relu",
        doc="LeakyReLU: x if x > 0 else negative_slope * x, elementwise.",
        fuse="activation",
        extra_repr=lambda a: f"negative_slope={a['negative_slope']}",
        runtime="LeakyReLU",
        onnx=Onnx("LeakyRelu", lambda a: {"alpha": a["negative_slope"]}),
    ),
    Kind(
        "Softmax",
        params=(Param("dim", B.integer, -1, type="int"),),
        native=Rowwise(_emit_softmax),
        base="softmax",
        doc="Softmax of each row: exp(x - max) / sum(exp(x - max)); ys may be xs.",
        rows=last_axis,
        validate=_softmax_dim,
        extra_repr=lambda a: f"dim={a['dim']}",
        runtime="Softmax",
        onnx=Onnx("Softmax", lambda a: {"axis": -1}),
    ),
)


__all__ = [
    "KINDS",
    "REQUIRED",
    "Channelwise",
    "Elementwise",
    "Kind",
    "Lines",
    "MatMul",
    "Onnx",
    "Rowwise",
    "ShapeError",
    "Tensor",
]
