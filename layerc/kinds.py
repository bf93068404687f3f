"""The layer kinds: every kind a model may use, declared once, in one table (`KINDS`).

A `Kind` says what the checker, the lowering stage, code generation, the runtime and the docs
need to know about a kind: its parameters (PyTorch's names, order, defaults and checks), its
weights and buffers (state_dict keys, shapes, PyTorch's initial values, which are block entries),
its shape rule, how it computes (an elementwise expression of `v`, a per-channel expression, a
row kernel or a matrix product), whether it may join a preceding Linear's epilogue, the
torch.nn class it must match (name and `extra_repr`), and what it is in ONNX (`Onnx`: the
operator, or the subgraph, it is written as, and how an import reads it back). Adding a kind is
one entry here (plus its tests and docs).

Nothing here reads source text: arguments arrive bound and converted (see `binder`), and every
number that reaches generated code is printed from a parsed value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import binder as B
from . import syntax as S
from .binder import REQUIRED, Param
from .patterns import OnnxPattern, X, add, alt, arg, mul, number, op, tensor

if TYPE_CHECKING:
    import numpy as np

    from .ir import Layer

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

    def empty(self, count: str, t: str) -> str:
        """An expression for a new 1-D array of `count` values of type `t` (`_np.float32`)."""
        ...

    def flat(self, array: str) -> str:
        """An expression for the C-contiguous array `array` as a 1-D array (a view)."""
        ...


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
    """y = f(v, c) for each value v of channel c, a sample being (C, L) (`channels(args)`
    channels of L values; a 1-D sample is (C, 1)). `prepare(e, args, t, ref, C)` emits lines
    that compute per-channel arrays of length C from the layer's tensors before the loop (in
    a layer's own kernel it may also read the batch: `xs` of `m` rows of C * L values);
    `expr(args, t, ref, c)` is the expression of `v` in channel `c`. `ref(name)` is the local
    name of a tensor or prepared array. Folded into a Linear's epilogue, the channel is the
    Linear's output feature."""

    expr: Callable[[Args, str, Ref, str], str]
    channels: Callable[[Args], int]
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


class OnnxGraph(Protocol):
    """What an ONNX form writes a layer through (onnx_io's graph builder). Every name it makes
    for the layer at `path` starts with `/{path}/`; values are named by the strings returned."""

    def node(self, op: str, inputs: list[str], out: str, name: str, **attrs: object) -> str:
        """An ONNX node `op` from `inputs` to `out`; returns `out`."""
        ...

    def op(self, path: str, layer: Layer, value: str, out: str) -> None:
        """The layer as its kind's operator (`Onnx.op`, `attributes`, `inputs`)."""
        ...

    def constant(self, name: str, value: float) -> str:
        """An initializer of the model's dtype."""
        ...

    def shape(self, name: str, dims: Sequence[int]) -> str:
        """An int64 initializer (a shape for Reshape)."""
        ...

    def tensor_input(self, path: str, layer: Layer, name: str) -> str:
        """The initializer of the layer's tensor `name`, under its state_dict key."""
        ...


class OnnxReader(Protocol):
    """What an `Onnx.read` reads a node through (onnx_io's importer), at the node's place in
    the chain of layers it imports."""

    # the per-sample shape of the value the node takes; None for one axis of unknown size
    sample: tuple[int, ...] | None

    def error(self, message: str) -> Exception:
        """The error that refuses the ONNX file with `message`."""
        ...

    def quote(self, name: str) -> str:
        """A name from the ONNX file, quoted and shortened for a message."""
        ...

    def rank(self) -> int:
        """How many axes the value has per sample."""
        ...

    def axis(self, axis: int) -> int | None:
        """An ONNX axis of the value (batch axis 0; negative from the end) as a non-negative
        one, or None when it is out of range."""
        ...

    def channels(self, where: str) -> int | None:
        """The channels of a value of samples (C,) or (C, L) (None if unknown); refuses more
        axes."""
        ...

    def tensors(
        self, node: Any, kind: str, where: str, *, required: int
    ) -> list[tuple[str, str, np.ndarray]]:
        """The node's constant inputs after the data input, as (the kind's name for it, the
        input's name, the array in float64), in the order of `Onnx.inputs`; the first
        `required` must be there."""
        ...

    def is_parameter(self, name: str) -> bool:
        """Whether the constant `name` is one of the model's parameters, as the exporters name
        them (an initializer `<module>.weight` or `.bias`), rather than a constant of the
        exporter's own making (a Constant node, `val_2`)."""
        ...

    def shaped(
        self, tensors: list[tuple[str, str, np.ndarray]], shape: Shape, where: str
    ) -> list[tuple[str, np.ndarray]]:
        """Each tensor reshaped to `shape` (give or take leading axes of size 1), named by the
        kind; refuses one that does not fit."""
        ...


@dataclass(frozen=True)
class OnnxForm:
    """A layer written as ONNX nodes of its own making: `write(graph, path, layer, x, out)`
    adds the nodes that compute the layer from the value `x` into `out`; `opset` is the oldest
    operator set that has every node it writes."""

    write: Callable[[OnnxGraph, str, Layer, str, str], None]
    opset: int = 1


# How a kind reads a node of its operator back: (reader, node, its attributes, where) -> (the
# layer's arguments, its block entries as (name, float64 array)).
OnnxRead = Callable[
    [OnnxReader, Any, dict[str, object], str],
    tuple[dict[str, object], list[tuple[str, "np.ndarray"]]],
]


@dataclass(frozen=True)
class Onnx:
    """How a layer of the kind is written in ONNX, and read back. (Export knows nothing of any
    kind but this; import reads it for every op but those that make the chain's structure.)

    `op` is the ONNX operator that computes the kind: `inputs` are the layer's tensors that
    follow the data input (as initializers), `attributes(args)` the operator's attributes.
    `fixed` names the arguments the operator has no attribute for, with the values at which it
    computes the kind: `layerc export` writes the operator only for a layer with those values,
    and `layerc import` gives them to the layer it reads from the operator. `dtypes` names the
    model dtypes in which it computes the kind (None: every dtype its schema takes).

    `subgraph` writes the layer as several operators where `op` does not compute it (there is
    no such operator, the arguments are not the `fixed` ones, or the model's dtype is not one
    it computes the kind in). On samples of several axes, a kind that keeps the shape and
    computes value by value or along the last axes is written as on (batch, features) values;
    `channels_on_axis_1` says the operator takes samples (C, L) with their channels on axis 1,
    as the kind does; any other kind needs `several_axes`, its form there.

    Import reads a node of `op` as the first kind (fewest parameters first, see `KINDS_BY_OP`)
    whose exported attributes it has: each attribute either one that `attributes` copies from
    an argument (attributes that copy the same argument must agree), or equal to the value the
    kind exports; arguments the kind refuses rule it out. A kind whose node has tensor inputs,
    or whose arguments depend on the value's shape, reads it with `read` instead.

    `patterns` are the forms in several nodes that exporters write the kind as (layerc's own
    `subgraph` among them), which import recognises by structure and constants
    (layerc.patterns)."""

    op: str | None = None
    attributes: Callable[[Args], dict[str, object]] = lambda a: {}
    inputs: tuple[str, ...] = ()
    opset: int = 1
    fixed: tuple[tuple[str, object], ...] = ()
    dtypes: tuple[str, ...] | None = None
    subgraph: OnnxForm | None = None
    several_axes: OnnxForm | None = None
    channels_on_axis_1: bool = False
    read: OnnxRead | None = None
    patterns: tuple[OnnxPattern, ...] = ()

    def computes(self, args: Args) -> bool:
        """Whether the operator computes a layer with these arguments (`fixed`)."""
        return self.op is not None and all(args[name] == value for name, value in self.fixed)


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
    # the output always has the input's shape (the layer may still check it)
    keeps_shape: bool = True
    # the per-sample input a model that starts with this layer takes, if the layer fixes it
    fixes: Callable[[Args], Shape | None] = no_fixed_input
    # the trailing input shape the layer's own module checks (None: any shape), given the
    # per-sample input shape it has in its model
    accepts: Callable[[Args, Shape], Shape | None] = any_shape
    # how its kernel views one sample: (rows per sample, values per row)
    rows: Callable[[Args, Shape], tuple[int, int]] = whole_sample
    # checks between arguments, once they are bound (raises LayercError at an argument)
    validate: Callable[[B.Bound], None] = no_check
    # "norm" or "activation": may join a preceding Linear's epilogue, in that order (when
    # `fuses` says so for its arguments)
    fuse: str | None = None
    fuses: Callable[[Args], bool] = lambda a: True
    # the fused forward leaves it out: identity at inference, or a reshape of contiguous data
    dropped: bool = False
    # torch's `extra_repr()` for these arguments
    extra_repr: Callable[[Args], str] = lambda a: ""
    # the class in layerc.runtime that its generated class derives from
    runtime: str = "Layer"
    onnx: Onnx | None = None
    # `init = NAME(...)` in the block draws the tensors: (call, args) -> {name: float64 array}
    initialiser: Callable[[S.Call, Args], dict] | None = None

    def entries(self) -> tuple[str, ...]:
        """The names its { ... } block takes."""
        names = tuple(t.name for t in self.tensors if t.entry)
        return (*names, "init") if self.initialiser is not None else names


# --------------------------------------------------------------------------- helpers for the table


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


def _linear_init(call: S.Call, args: Args) -> dict:
    """torch.nn.init's initialisers for a Linear's weight and bias (see weights.initialise)."""
    from . import weights as W

    weight, bias = W.initialise(call, args["out_features"], args["in_features"], args["bias"])
    return {"weight": weight, "bias": bias}


def _softmax_dim(args: B.Bound) -> None:
    if args["dim"] != -1:
        raise args.error(
            "dim",
            f"{args.callee} supports dim=-1 only (the feature axis, which is the last axis of "
            "every input a layerc model takes)",
        )


def _emit_row_max(e: Lines, t: str) -> None:
    """`m = max(xs[s, :])`, inside the loop over rows `s`: the shift that keeps exp in range."""
    e.line(f"m = {t}(-_np.inf)")
    e.line("for i in range(f):")
    with e.indent():
        e.line("if xs[s, i] > m:")
        with e.indent():
            e.line("m = xs[s, i]")


def _emit_softmax(e: Lines, args: Args, t: str) -> None:
    e.line("n, f = xs.shape")
    e.line("for s in range(n):")
    with e.indent():
        _emit_row_max(e, t)
        e.line(f"total = {t}(0.0)")
        e.line("for i in range(f):")
        with e.indent():
            e.line("v = _np.exp(xs[s, i] - m)")
            e.line("ys[s, i] = v")
            e.line("total += v")
        e.line("for i in range(f):")
        with e.indent():
            e.line("ys[s, i] = ys[s, i] / total")


def _emit_log_softmax(e: Lines, args: Args, t: str) -> None:
    e.line("n, f = xs.shape")
    e.line("for s in range(n):")
    with e.indent():
        _emit_row_max(e, t)
        e.line(f"total = {t}(0.0)")
        e.line("for i in range(f):")
        with e.indent():
            e.line("total += _np.exp(xs[s, i] - m)")
        e.line("lse = _np.log(total)")
        e.line("for i in range(f):")
        with e.indent():
            e.line("ys[s, i] = xs[s, i] - m - lse")


def _emit_layer_norm(e: Lines, args: Args, t: str) -> None:
    # Mean and biased variance in float64 (two passes); then torch's own formula,
    # y = (x * rstd + (-rstd * mean)) * weight + bias, in the model's dtype.
    affine = args["elementwise_affine"]
    with_bias = affine and args["bias"]
    e.line("n, f = xs.shape")
    if affine:
        e.line(f"gamma = {e.flat('weight')}")
    if with_bias:
        e.line(f"beta = {e.flat('bias')}")
    e.line("for s in range(n):")
    with e.indent():
        e.line("mean = 0.0")
        e.line("for i in range(f):")
        with e.indent():
            e.line("mean += xs[s, i]")
        e.line("mean = mean / f")
        e.line("var = 0.0")
        e.line("for i in range(f):")
        with e.indent():
            e.line("d = xs[s, i] - mean")
            e.line("var += d * d")
        e.line("var = var / f")
        e.line(f"rstd = {t}(1.0 / _np.sqrt(var + {float(args['eps'])!r}))")
        e.line(f"shift = -rstd * {t}(mean)")
        e.line("for i in range(f):")
        with e.indent():
            value = "xs[s, i] * rstd + shift"
            if affine:
                value = f"({value}) * gamma[i]"
            if with_bias:
                value += " + beta[i]"
            e.line(f"ys[s, i] = {value}")


def _bn_prepare(e: Lines, args: Args, t: str, ref: Ref, channels: str) -> None:
    """torch's eval-mode batch norm folded per channel: alpha = 1 / sqrt(var + eps) * weight,
    beta = bias - mean * alpha; then y = x * alpha + beta. The mean and variance are the running
    statistics, or with track_running_stats=false the batch's own (the mean and biased variance
    of each channel over every sample of the call, accumulated in float64), as torch computes
    them even in eval mode when it keeps no running statistics."""
    weight = f"{ref('weight')}[c]" if args["affine"] else f"{t}(1.0)"
    bias = f"{ref('bias')}[c]" if args["affine"] and args["bias"] else f"{t}(0.0)"
    alpha, beta = ref("alpha"), ref("beta")
    eps = _const(t, args["eps"])
    e.line(f"{alpha} = {e.empty(channels, t)}")
    e.line(f"{beta} = {e.empty(channels, t)}")
    if args["track_running_stats"]:
        e.line(f"for c in range({channels}):")
        with e.indent():
            e.line(f"{alpha}[c] = {t}(1.0) / _np.sqrt({ref('running_var')}[c] + {eps}) * {weight}")
            e.line(f"{beta}[c] = {bias} - {ref('running_mean')}[c] * {alpha}[c]")
        return
    e.line("if m * L == 1:")
    with e.indent():
        e.line(
            'raise ValueError("BatchNorm1d(track_running_stats=False) expected more than 1 '
            'value per channel")'
        )
    e.line(f"for c in range({channels}):")
    with e.indent():
        e.line("mean = 0.0")
        e.line("for s in range(m):")
        with e.indent():
            e.line("for j in range(c * L, c * L + L):")
            with e.indent():
                e.line("mean += xs[s, j]")
        e.line("mean = mean / (m * L)")
        e.line("var = 0.0")
        e.line("for s in range(m):")
        with e.indent():
            e.line("for j in range(c * L, c * L + L):")
            with e.indent():
                e.line("d = xs[s, j] - mean")
                e.line("var += d * d")
        e.line("var = var / (m * L)")
        e.line(f"{alpha}[c] = {t}(1.0 / _np.sqrt(var + {float(args['eps'])!r})) * {weight}")
        e.line(f"{beta}[c] = {bias} - {t}(mean) * {alpha}[c]")


def _bn_shape(args: Args, shape: Shape) -> Shape:
    channels = args["num_features"]
    if len(shape) not in (1, 2):
        raise ShapeError(
            f"expects samples of shape ({channels},) or ({channels}, L) (input (N, C) or "
            "(N, C, L) as torch's BatchNorm1d)"
        )
    if shape[0] != channels:
        what = "input features" if len(shape) == 1 else "channels on each sample's first axis"
        raise ShapeError(f"expects {channels} {what} (num_features)", "num_features")
    return shape


def _layer_norm_shape(args: Args, shape: Shape) -> Shape:
    normalized: Shape = args["normalized_shape"]
    if shape[len(shape) - len(normalized) :] != normalized or len(shape) < len(normalized):
        if len(normalized) == 1 and len(shape) == 1:
            raise ShapeError(
                f"expects {normalized[0]} input features (normalized_shape)", "normalized_shape"
            )
        raise ShapeError(
            f"expects samples whose last axes are {fmt_shape(normalized)} (normalized_shape)",
            "normalized_shape",
        )
    return shape


def _layer_norm_rows(args: Args, shape: Shape) -> tuple[int, int]:
    k = len(args["normalized_shape"])
    return math.prod(shape[: len(shape) - k]), math.prod(shape[len(shape) - k :])


def _prelu_shape(args: Args, shape: Shape) -> Shape:
    channels = args["num_parameters"]
    if channels != 1 and shape[0] != channels:
        what = "input features" if len(shape) == 1 else "channels on each sample's first axis"
        raise ShapeError(
            f"expects {channels} {what} (num_parameters: 1, or the number of channels)",
            "num_parameters",
        )
    return shape


def _prelu_expr(args: Args, t: str, ref: Ref, channel: str) -> str:
    index = "0" if args["num_parameters"] == 1 else channel
    return f"v if v > 0 else {ref('weight')}[{index}] * v"


def _flatten_shape(args: Args, shape: Shape) -> Shape:
    """torch's Flatten on (N, *shape): its dims count the batch axis as 0."""
    ndim = len(shape) + 1
    dims = []
    for name in ("start_dim", "end_dim"):
        dim = args[name]
        if not -ndim <= dim < ndim:
            raise ShapeError(
                f"Flatten's {name}={dim} is out of range: its input (N, {', '.join(map(str, shape))}) "
                f"has {ndim} dimensions, so dims go from {-ndim} to {ndim - 1}",
                name,
                mismatch=False,
            )
        dims.append(dim % ndim)
    start, end = dims
    if start == 0:
        raise ShapeError(
            "Flatten(start_dim=0) would flatten the batch axis into the features; a layerc model "
            "keeps its batch axis, so start_dim must be at least 1",
            "start_dim",
            mismatch=False,
        )
    if start > end:
        raise ShapeError(
            f"Flatten's start_dim={args['start_dim']} comes after its end_dim={args['end_dim']} "
            f"on an input (N, {', '.join(map(str, shape))})",
            "start_dim",
            mismatch=False,
        )
    return (*shape[: start - 1], math.prod(shape[start - 1 : end]), *shape[end:])


def _hardtanh_validate(args: B.Bound) -> None:
    low, high = args.values["min_val"], args.values["max_val"]
    assert isinstance(low, (int, float)) and isinstance(high, (int, float))
    if not high > low:
        raise args.error(
            "max_val",
            f"Hardtanh needs max_val > min_val, but max_val={args['max_val']} and "
            f"min_val={args['min_val']}",
        )


def _no_extra_repr(args: Args) -> str:
    """torch's extra_repr of activations whose only argument is `inplace` (always false)."""
    return ""


def _context(args: Args, shape: Shape) -> Shape:
    """The layer's own module takes the per-sample shape it has in its model."""
    return shape


def _gelu(args: Args, t: str) -> str:
    """torch's GELU: 0.5 * x * (1 + erf(x / sqrt(2))), or with approximate="tanh",
    0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))."""
    half, one = f"{t}(0.5)", f"{t}(1.0)"
    if args["approximate"] == "tanh":
        inner = f"{_const(t, math.sqrt(2 / math.pi))} * (v + {_const(t, 0.044715)} * v * v * v)"
        return f"{half} * v * ({one} + _np.tanh({inner}))"
    # float32: an erf that LLVM vectorises (layerc.runtime.vmath); float64: the C library's.
    erf = "_rt_vmath.erf_f32" if t == "_np.float32" else "_math.erf"
    return f"{half} * v * ({one} + {erf}(v * {_const(t, math.sqrt(0.5))}))"


# SELU's constants, as torch (and the SELU paper) give them
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _dropout(name: str, base: str) -> Kind:
    return Kind(
        name,
        params=(
            Param("p", B.probability, 0.5, type="float"),
            Param("inplace", B.boolean, False, type="bool"),
        ),
        native=Elementwise(lambda a, t: "v"),
        base=base,
        doc=f"{name}: identity at inference (eval mode), a copy of x.",
        dropped=True,
        extra_repr=lambda a: f"p={a['p']}, inplace={a['inplace']}",
        onnx=Onnx("Identity"),
    )


def _activation(
    name: str,
    base: str,
    doc: str,
    expr: Callable[[Args, str], str],
    params: tuple[Param, ...] = (),
    extra_repr: Callable[[Args], str] = _no_extra_repr,
    onnx: Onnx | None = None,
    validate: Callable[[B.Bound], None] = no_check,
) -> Kind:
    """An elementwise activation, which may join a preceding Linear's epilogue."""
    return Kind(
        name,
        params=params,
        native=Elementwise(expr),
        base=base,
        doc=doc,
        fuse="activation",
        extra_repr=extra_repr,
        onnx=onnx,
        validate=validate,
    )


# --------------------------------------------------------------------------- ONNX forms
#
# Each writes one layer, `write(graph, path, layer, x, out)`, from the value `x` to `out`.


# --------------------------------------------------------------------------- ONNX patterns
#
# The forms in several nodes that torch.onnx.export (TorchScript and dynamo, at the opsets that
# lack the kind's operator) and layerc's own export write a kind as.

_SQRT_2 = math.sqrt(2.0)
_GELU_ERF = mul(X, number(0.5), add(op("Erf", mul(X, number(1 / _SQRT_2))), number(1.0)))
_CUBE = alt(op("Pow", X, number(3.0)), mul(X, X, X))
_GELU_TANH = mul(
    X,
    number(0.5),
    add(
        number(1.0),
        op("Tanh", mul(number(math.sqrt(2 / math.pi)), add(X, mul(number(0.044715), _CUBE)))),
    ),
)
_SCALED = mul(X, arg("beta"))  # x * beta
_SOFTPLUS_PATTERNS = (
    # TorchScript: Softplus(x * beta) / beta (its threshold left out: torch's default, past
    # which the two differ by less than exp(-20))
    OnnxPattern(mul(op("Softplus", _SCALED), arg("beta", "inv"))),
    # dynamo and layerc: Where(x * beta > threshold, x, Softplus(x * beta) / beta)
    OnnxPattern(
        op(
            "Where",
            op("Greater", _SCALED, arg("threshold")),
            X,
            mul(op("Softplus", _SCALED), arg("beta", "inv")),
        )
    ),
    # dynamo at beta = 1: Where(x > threshold, x, Softplus(x))
    OnnxPattern(op("Where", op("Greater", X, arg("threshold")), X, op("Softplus", X))),
)
_HARDSHRINK_PATTERNS = (
    # dynamo and layerc: Where(|x| <= lambd, 0, x)
    OnnxPattern(op("Where", op("LessOrEqual", op("Abs", X), arg("lambd")), number(0.0), X)),
    # TorchScript: Where(x > lambd or x < -lambd, x, 0)
    OnnxPattern(
        op(
            "Where",
            op(
                "Or",
                op("Cast", op("Greater", X, arg("lambd")), to=9),
                op("Cast", op("Less", X, arg("lambd", "neg")), to=9),
            ),
            X,
            number(0.0),
        )
    ),
)
_SOFTSHRINK_PATTERNS = (
    # TorchScript: Where(x > lambd, x - lambd, 0) + Where(x < -lambd, x + lambd, 0)
    OnnxPattern(
        add(
            op("Where", op("Greater", X, arg("lambd")), add(X, arg("lambd", "neg")), number(0.0)),
            op("Where", op("Less", X, arg("lambd", "neg")), add(X, arg("lambd")), number(0.0)),
        )
    ),
    # dynamo: Where(|x| > lambd, x - sign(x) * lambd, x * 0)
    OnnxPattern(
        op(
            "Where",
            op("Greater", op("Abs", X), arg("lambd")),
            op("Sub", X, mul(op("Sign", X), arg("lambd"))),
            mul(X, number(0.0)),
        )
    ),
    # layerc: Where(x > lambd, x - lambd, Where(x < -lambd, x + lambd, x * 0))
    OnnxPattern(
        op(
            "Where",
            op("Greater", X, arg("lambd")),
            add(X, arg("lambd", "neg")),
            op(
                "Where",
                op("Less", X, arg("lambd", "neg")),
                add(X, arg("lambd")),
                mul(X, number(0.0)),
            ),
        )
    ),
)
# LayerNorm over the last axis before opset 17 (TorchScript): (x - mean) / sqrt(var + eps),
# then * weight + bias, * weight, or neither.
_CENTRED = op("Sub", X, op("ReduceMean", X, axes=(-1,)))
_NORMED = op(
    "Div",
    _CENTRED,
    op(
        "Sqrt",
        add(
            op(
                "ReduceMean",
                alt(op("Pow", _CENTRED, number(2.0)), mul(_CENTRED, _CENTRED)),
                axes=(-1,),
            ),
            arg("eps"),
        ),
    ),
)


def _layer_norm_args(bound: Mapping[str, object], sample: Shape | None) -> dict[str, object]:
    args: dict[str, object] = {"elementwise_affine": "weight" in bound}
    if "weight" in bound:
        args["bias"] = "bias" in bound
    if sample is not None:
        args["normalized_shape"] = sample[-1]
    return args


# layerc's CELU in float64: Where(x > 0, x, alpha * (Exp(x / alpha) - 1))
_CELU_PATTERN = OnnxPattern(
    op(
        "Where",
        op("Greater", X, number(0.0)),
        X,
        mul(add(op("Exp", mul(X, arg("alpha", "inv"))), number(-1.0)), arg("alpha")),
    )
)
_LAYER_NORM_PATTERNS = tuple(
    OnnxPattern(term, args=_layer_norm_args)
    for term in (
        add(mul(_NORMED, tensor("weight")), tensor("bias")),
        mul(_NORMED, tensor("weight")),
        _NORMED,
    )
)


def _silu_onnx(g: OnnxGraph, path: str, layer: Layer, x: str, out: str) -> None:
    """x * Sigmoid(x)."""
    s = g.node("Sigmoid", [x], f"/{path}/sigmoid", f"/{path}/Sigmoid")
    g.node("Mul", [x, s], out, f"/{path}/Mul")


def _log_sigmoid_onnx(g: OnnxGraph, path: str, layer: Layer, x: str, out: str) -> None:
    """-Softplus(-x)."""
    neg = g.node("Neg", [x], f"/{path}/neg", f"/{path}/Neg")
    sp = g.node("Softplus", [neg], f"/{path}/softplus", f"/{path}/Softplus")
    g.node("Neg", [sp], out, f"/{path}/Neg_1")


def _softplus_onnx(g: OnnxGraph, path: str, layer: Layer, x: str, out: str) -> None:
    """Softplus with a beta or threshold that ONNX's Softplus does not compute:
    Where(x * beta > threshold, x, Softplus(x * beta) / beta)."""
    at = f"/{path}"
    beta = g.constant(f"{at}/beta", float(layer.arg("beta")))  # type: ignore[arg-type]
    threshold = g.constant(f"{at}/threshold", float(layer.arg("threshold")))  # type: ignore[arg-type]
    scaled = g.node("Mul", [x, beta], f"{at}/scaled", f"{at}/Mul")
    sp = g.node("Softplus", [scaled], f"{at}/softplus", f"{at}/Softplus")
    soft = g.node("Div", [sp, beta], f"{at}/soft", f"{at}/Div")
    above = g.node("Greater", [scaled, threshold], f"{at}/above", f"{at}/Greater")
    g.node("Where", [above, x, soft], out, f"{at}/Where")


def _celu_onnx(g: OnnxGraph, path: str, layer: Layer, x: str, out: str) -> None:
    """CELU in float64, which ONNX's Celu does not take:
    Where(x > 0, x, alpha * (Exp(x / alpha) - 1))."""
    at = f"/{path}"
    alpha = g.constant(f"{at}/alpha", float(layer.arg("alpha")))  # type: ignore[arg-type]
    zero = g.constant(f"{at}/zero", 0.0)
    one = g.constant(f"{at}/one", 1.0)
    scaled = g.node("Div", [x, alpha], f"{at}/scaled", f"{at}/Div")
    exp = g.node("Exp", [scaled], f"{at}/exp", f"{at}/Exp")
    minus = g.node("Sub", [exp, one], f"{at}/expm1", f"{at}/Sub")
    below = g.node("Mul", [minus, alpha], f"{at}/below", f"{at}/Mul")
    positive = g.node("Greater", [x, zero], f"{at}/positive", f"{at}/Greater")
    g.node("Where", [positive, x, below], out, f"{at}/Where")


def _hardshrink_onnx(g: OnnxGraph, path: str, layer: Layer, x: str, out: str) -> None:
    """Hardshrink in float64: Where(|x| <= lambd, 0, x), with lambd in the model's dtype (NaN
    stays NaN, as in torch)."""
    at = f"/{path}"
    lambd = g.constant(f"{at}/lambd", float(layer.arg("lambd")))  # type: ignore[arg-type]
    zero = g.constant(f"{at}/zero", 0.0)
    magnitude = g.node("Abs", [x], f"{at}/abs", f"{at}/Abs")
    inside = g.node("LessOrEqual", [magnitude, lambd], f"{at}/inside", f"{at}/LessOrEqual")
    g.node("Where", [inside, zero, x], out, f"{at}/Where")


def _softshrink_onnx(g: OnnxGraph, path: str, layer: Layer, x: str, out: str) -> None:
    """Softshrink in float64: Where(x > lambd, x - lambd, Where(x < -lambd, x + lambd, x * 0)),
    with lambd in the model's dtype (x * 0 keeps NaN, as torch's formula does)."""
    at = f"/{path}"
    value = float(layer.arg("lambd"))  # type: ignore[arg-type]
    lambd = g.constant(f"{at}/lambd", value)
    minus_lambd = g.constant(f"{at}/minus_lambd", -value)
    zero = g.constant(f"{at}/zero", 0.0)
    above = g.node("Greater", [x, lambd], f"{at}/above", f"{at}/Greater")
    lowered = g.node("Sub", [x, lambd], f"{at}/lowered", f"{at}/Sub")
    below = g.node("Less", [x, minus_lambd], f"{at}/below", f"{at}/Less")
    raised = g.node("Add", [x, lambd], f"{at}/raised", f"{at}/Add")
    zeroed = g.node("Mul", [x, zero], f"{at}/zeroed", f"{at}/Mul")
    rest = g.node("Where", [below, raised, zeroed], f"{at}/rest", f"{at}/Where")
    g.node("Where", [above, lowered, rest], out, f"{at}/Where_1")


def _tanhshrink_onnx(g: OnnxGraph, path: str, layer: Layer, x: str, out: str) -> None:
    """x - Tanh(x)."""
    tanh = g.node("Tanh", [x], f"/{path}/tanh", f"/{path}/Tanh")
    g.node("Sub", [x, tanh], out, f"/{path}/Sub")


def _linear_matmul_onnx(g: OnnxGraph, path: str, layer: Layer, x: str, out: str) -> None:
    """A Linear on the last axis of samples of several axes, which Gemm (2-D only) cannot take:
    MatMul by the transposed weight, then Add of the bias."""
    at = f"/{path}"
    weight = g.tensor_input(path, layer, "weight")
    transposed = g.node("Transpose", [weight], f"{at}/weight_t", f"{at}/Transpose", perm=[1, 0])
    if layer.bias is None:
        g.node("MatMul", [x, transposed], out, f"{at}/MatMul")
        return
    product = g.node("MatMul", [x, transposed], f"{at}/matmul", f"{at}/MatMul")
    g.node("Add", [product, g.tensor_input(path, layer, "bias")], out, f"{at}/Add")


def _flatten_reshape_onnx(g: OnnxGraph, path: str, layer: Layer, x: str, out: str) -> None:
    """Flatten to one axis per sample is ONNX's Flatten (the table's); to several axes, ONNX's
    Flatten (always 2-D) cannot: Reshape to (batch, *output shape), the 0 copying the batch."""
    if len(layer.out_shape) == 1:
        g.op(path, layer, x, out)
        return
    shape = g.shape(f"/{path}/shape", [0, *layer.out_shape])
    g.node("Reshape", [x, shape], out, f"/{path}/Reshape")


def _prelu_channels_onnx(g: OnnxGraph, path: str, layer: Layer, x: str, out: str) -> None:
    """PRelu's slope broadcasts from the last axis, PReLU's weight applies along channel axis 1:
    on samples (C, *rest), the weight reshaped to (C, 1, ...) (one weight: as it is)."""
    if layer.arg("num_parameters") == 1:
        g.op(path, layer, x, out)
        return
    weight = g.tensor_input(path, layer, "weight")
    channels = (layer.in_shape[0], *[1] * (len(layer.in_shape) - 1))
    shape = g.shape(f"/{path}/slope_shape", channels)
    slope = g.node("Reshape", [weight, shape], f"/{path}/slope", f"/{path}/Reshape")
    g.node("PRelu", [x, slope], out, f"/{path}/PRelu")


# --------------------------------------------------------------------------- ONNX readers
#
# Each reads a node of its kind's operator: (reader, node, attributes, where) -> (arguments,
# block entries).


def _read_prelu(
    r: OnnxReader, node: Any, attrs: dict[str, object], where: str
) -> tuple[dict[str, object], list[tuple[str, np.ndarray]]]:
    """PRelu's slope broadcasts against the value from its last axis; PReLU has one weight,
    or one per channel (axis 1): a slope of shape (C,) on (batch, C), (C, 1) on
    (batch, C, L), or of one value."""
    ((name, input_name, slope),) = r.tensors(node, "PReLU", where, required=1)
    ndim = 1 + r.rank()
    padded = (1,) * (ndim - slope.ndim) + slope.shape
    if len(padded) > ndim or any(d != 1 for i, d in enumerate(padded) if i != 1):
        raise r.error(
            f"{where}: slope {r.quote(input_name)} has shape {fmt_shape(slope.shape)}; layerc "
            "reads one value, or one per channel (axis 1), as PReLU's weight"
        )
    size = padded[1]
    channels = r.sample[0] if r.sample is not None else None
    if size != 1 and channels is not None and size != channels:
        what = "per input but its input has" if r.rank() == 1 else "but its input has"
        unit = "" if r.rank() == 1 else " channels"
        raise r.error(f"{where} has {size} values {what} {channels}{unit}")
    return {"num_parameters": size}, [(name, slope.reshape(-1))]


def _read_batch_norm(
    r: OnnxReader, node: Any, attrs: dict[str, object], where: str
) -> tuple[dict[str, object], list[tuple[str, np.ndarray]]]:
    """BatchNormalization in inference mode, with its four tensors, on samples (C,) or (C, L)."""
    if attrs.get("training_mode", 0):
        raise r.error(
            f"{where} is in training mode; layerc models run in eval mode (call model.eval() "
            "before torch.onnx.export)"
        )
    found = r.tensors(node, "BatchNorm1d", where, required=4)
    channels = r.channels(where) or found[0][2].size
    tensors = r.shaped(found, (channels,), where)
    eps = float(attrs.get("epsilon", 1e-5))  # type: ignore[arg-type]
    args: dict[str, object] = {"num_features": channels, "eps": eps}
    if _no_affine(r, found[:2]):  # torch's BatchNorm1d(affine=False)
        args["affine"] = False
        return args, tensors[2:]
    return args, tensors


def _no_affine(r: OnnxReader, found: list[tuple[str, str, np.ndarray]]) -> bool:
    """Whether a normalisation's scale (and bias) are the exporter's constants of ones (and
    zeros), not parameters of the model: the layer has no affine transform of its own."""
    scale, *bias = found
    return (
        not any(r.is_parameter(name) for _, name, _ in found)
        and bool((scale[2] == 1).all())
        and all(bool((b[2] == 0).all()) for b in bias)
    )


def _read_layer_norm(
    r: OnnxReader, node: Any, attrs: dict[str, object], where: str
) -> tuple[dict[str, object], list[tuple[str, np.ndarray]]]:
    """LayerNormalization from an axis of the sample to its end, with a scale and perhaps a
    bias: normalized_shape is the sample's axes from there."""
    axis = int(attrs.get("axis", -1))  # type: ignore[call-overload]
    start = r.axis(axis)
    if not start:
        raise r.error(
            f"{where} normalises from axis {axis}, which takes in the batch axis; layerc "
            "normalises the last axes of each sample"
        )
    found = r.tensors(node, "LayerNorm", where, required=1)
    if r.sample is not None:
        normalized = r.sample[start - 1 :]
    else:
        normalized = (found[0][2].size,)
    tensors = r.shaped(found, normalized, where)
    eps = float(attrs.get("epsilon", 1e-5))  # type: ignore[arg-type]
    shape: object = normalized[0] if len(normalized) == 1 else normalized
    args: dict[str, object] = {"normalized_shape": shape, "eps": eps}
    if _no_affine(r, found):  # torch's LayerNorm(elementwise_affine=False)
        args["elementwise_affine"] = False
        return args, []
    if len(found) == 1 or (not r.is_parameter(found[1][1]) and not found[1][2].any()):
        args["bias"] = False  # LayerNorm(bias=False): no bias, or the exporter's zeros
        return args, tensors[:1]
    return args, tensors


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
        keeps_shape=False,
        fixes=lambda a: (a["in_features"],),
        accepts=lambda a, shape: (a["in_features"],),
        rows=last_axis,
        extra_repr=lambda a: (
            f"in_features={a['in_features']}, out_features={a['out_features']}, bias={a['bias']}"
        ),
        runtime="Linear",
        onnx=Onnx(
            "Gemm",
            lambda a: {"transB": 1},
            inputs=("weight", "bias"),
            several_axes=OnnxForm(_linear_matmul_onnx),
        ),
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
    _dropout("Dropout", "dropout"),
    _dropout("AlphaDropout", "alpha_dropout"),
    Kind(
        "Flatten",
        params=(
            Param("start_dim", B.integer, 1, type="int"),
            Param("end_dim", B.integer, -1, type="int"),
        ),
        native=Elementwise(lambda a, t: "v"),
        base="flatten",
        doc="Flatten: the sample's axes from start_dim to end_dim as one, a copy of x.",
        shape=_flatten_shape,
        keeps_shape=False,
        accepts=_context,
        dropped=True,
        extra_repr=lambda a: f"start_dim={a['start_dim']}, end_dim={a['end_dim']}",
        # (Reshape with a shape input: opset 5)
        onnx=Onnx(
            "Flatten",
            lambda a: {"axis": a["start_dim"]},
            several_axes=OnnxForm(_flatten_reshape_onnx, opset=5),
        ),
    ),
    Kind(
        "BatchNorm1d",
        params=(
            Param("num_features", B.positive_int(MAX_FEATURES), type="int"),
            _float("eps", 1e-05, minimum=0),
            _float("momentum", 0.1),
            Param("affine", B.boolean, True, type="bool"),
            Param("track_running_stats", B.boolean, True, type="bool"),
            Param("bias", B.boolean, True, keyword_only=True, type="bool"),
        ),
        native=Channelwise(
            lambda a, t, ref, c: f"v * {ref('alpha')}[{c}] + {ref('beta')}[{c}]",
            lambda a: a["num_features"],
            _bn_prepare,
        ),
        base="batch_norm1d",
        doc=(
            "BatchNorm1d as in eval mode: (x - mean) / sqrt(var + eps) * weight + bias per "
            "channel, with the running statistics (or, without them, the batch's)."
        ),
        tensors=(
            Tensor("weight", lambda a: (a["num_features"],), 1.0, flags=("affine",)),
            Tensor("bias", lambda a: (a["num_features"],), 0.0, flags=("affine", "bias")),
            Tensor(
                "running_mean",
                lambda a: (a["num_features"],),
                0.0,
                buffer=True,
                flags=("track_running_stats",),
            ),
            Tensor(
                "running_var",
                lambda a: (a["num_features"],),
                1.0,
                buffer=True,
                flags=("track_running_stats",),
            ),
            Tensor(
                "num_batches_tracked",
                lambda a: (),
                0,
                buffer=True,
                flags=("track_running_stats",),
                entry=False,
                dtype="int64",
                kernel=False,
                legacy_default=True,
            ),
        ),
        shape=_bn_shape,
        fixes=lambda a: (a["num_features"],),
        accepts=_context,
        fuse="norm",
        fuses=lambda a: a["track_running_stats"],  # the batch's statistics need the batch
        extra_repr=lambda a: (
            f"{a['num_features']}, eps={a['eps']}, momentum={a['momentum']}, "
            f"affine={a['affine']}, bias={a['affine'] and a['bias']}, "
            f"track_running_stats={a['track_running_stats']}"
        ),
        onnx=Onnx(
            "BatchNormalization",
            lambda a: {"epsilon": a["eps"], "momentum": 1 - a["momentum"]},
            inputs=("weight", "bias", "running_mean", "running_var"),
            opset=15,
            channels_on_axis_1=True,
            read=_read_batch_norm,
        ),
    ),
    Kind(
        "LayerNorm",
        params=(
            Param("normalized_shape", B.shape(MAX_FEATURES, MAX_RANK), type="int or list of int"),
            _float("eps", 1e-05, minimum=0),
            Param("elementwise_affine", B.boolean, True, type="bool"),
            Param("bias", B.boolean, True, type="bool"),
        ),
        native=Rowwise(_emit_layer_norm),
        base="layer_norm",
        doc="LayerNorm of each row: (x - mean) / sqrt(var + eps) * weight + bias, the variance biased; ys may be xs.",
        tensors=(
            Tensor("weight", lambda a: a["normalized_shape"], 1.0, flags=("elementwise_affine",)),
            Tensor(
                "bias", lambda a: a["normalized_shape"], 0.0, flags=("elementwise_affine", "bias")
            ),
        ),
        shape=_layer_norm_shape,
        fixes=lambda a: a["normalized_shape"],
        accepts=lambda a, shape: a["normalized_shape"],
        rows=_layer_norm_rows,
        extra_repr=lambda a: (
            f"{a['normalized_shape']}, eps={a['eps']}, "
            f"elementwise_affine={a['elementwise_affine']}, "
            f"bias={a['elementwise_affine'] and a['bias']}"
        ),
        onnx=Onnx(
            "LayerNormalization",
            lambda a: {"axis": -len(a["normalized_shape"]), "epsilon": a["eps"]},
            inputs=("weight", "bias"),
            opset=17,
            read=_read_layer_norm,
            patterns=_LAYER_NORM_PATTERNS,
        ),
    ),
    Kind(
        "PReLU",
        params=(
            Param("num_parameters", B.positive_int(MAX_FEATURES), 1, type="int"),
            _float("init", 0.25),
        ),
        native=Channelwise(_prelu_expr, lambda a: a["num_parameters"]),
        base="prelu",
        doc="PReLU: x if x > 0 else weight[c] * x, with one weight per channel (or one for all).",
        tensors=(Tensor("weight", lambda a: (a["num_parameters"],), lambda a: a["init"]),),
        shape=_prelu_shape,
        fixes=lambda a: (a["num_parameters"],) if a["num_parameters"] > 1 else None,
        accepts=lambda a, shape: shape if a["num_parameters"] > 1 else None,
        fuse="activation",
        extra_repr=lambda a: f"num_parameters={a['num_parameters']}",
        onnx=Onnx(
            "PRelu",
            inputs=("weight",),
            several_axes=OnnxForm(_prelu_channels_onnx, opset=7),
            read=_read_prelu,
        ),
    ),
    _activation(
        "GELU",
        "gelu",
        "GELU: x * Phi(x), exactly (with erf) or with torch's tanh approximation, elementwise.",
        lambda a, t: _gelu(a, t),
        params=(Param("approximate", B.choice(("none", "tanh")), "none", type="str"),),
        extra_repr=lambda a: f"approximate={a['approximate']!r}",
        onnx=Onnx(
            "Gelu",
            lambda a: {"approximate": a["approximate"]},
            opset=20,
            patterns=(
                OnnxPattern(_GELU_ERF),
                OnnxPattern(_GELU_TANH, fixed=(("approximate", "tanh"),)),
            ),
        ),
    ),
    _activation(
        "ELU",
        "elu",
        "ELU: x if x > 0 else alpha * (exp(x) - 1), elementwise.",
        lambda a, t: f"v if v > 0 else {_const(t, a['alpha'])} * _np.expm1(v)",
        params=(_float("alpha", 1.0),),
        extra_repr=lambda a: f"alpha={a['alpha']}",
        onnx=Onnx("Elu", lambda a: {"alpha": a["alpha"]}),
    ),
    _activation(
        "CELU",
        "celu",
        "CELU: x if x > 0 else alpha * (exp(x / alpha) - 1), elementwise.",
        lambda a, t: (
            f"v if v > 0 else {_const(t, a['alpha'])} * _np.expm1(v * {_const(t, 1.0 / a['alpha'])})"
        ),
        params=(_float("alpha", 1.0, nonzero=True),),
        extra_repr=lambda a: f"alpha={a['alpha']}",
        # ONNX's Celu takes float32 only: in float64, the subgraph
        onnx=Onnx(
            "Celu",
            lambda a: {"alpha": a["alpha"]},
            opset=12,
            subgraph=OnnxForm(_celu_onnx),
            patterns=(_CELU_PATTERN,),
        ),
    ),
    _activation(
        "Softplus",
        "softplus",
        "Softplus: log(1 + exp(beta * x)) / beta, or x where beta * x > threshold, elementwise.",
        lambda a, t: (
            f"v if v * {_const(t, a['beta'])} > {_const(t, a['threshold'])} else "
            f"_np.log1p(_np.exp(v * {_const(t, a['beta'])})) / {_const(t, a['beta'])}"
        ),
        params=(_float("beta", 1.0, nonzero=True), _float("threshold", 20.0)),
        extra_repr=lambda a: f"beta={a['beta']}, threshold={a['threshold']}",
        # ONNX's Softplus, log(1 + exp(x)), has neither beta nor threshold: it is torch's at
        # beta=1, threshold=20 (past 20, torch's x and log(1 + exp(x)) differ by less than
        # exp(-20) = 2e-9: less than float32's rounding of x, and 1e-10 of x in float64)
        onnx=Onnx(
            "Softplus",
            fixed=(("beta", 1.0), ("threshold", 20.0)),
            subgraph=OnnxForm(_softplus_onnx),
            patterns=_SOFTPLUS_PATTERNS,
        ),
    ),
    _activation(
        "Hardtanh",
        "hardtanh",
        "Hardtanh: x clipped to [min_val, max_val] elementwise; NaN stays NaN.",
        lambda a, t: _clip("v", _const(t, a["min_val"]), _const(t, a["max_val"])),
        params=(_float("min_val", -1.0), _float("max_val", 1.0)),
        extra_repr=lambda a: f"min_val={a['min_val']}, max_val={a['max_val']}",
        onnx=Onnx("Clip", lambda a: {"min": a["min_val"], "max": a["max_val"]}, opset=6),
        validate=_hardtanh_validate,
    ),
    _activation(
        "SiLU",
        "silu",
        "SiLU: x / (1 + exp(-x)), elementwise.",
        lambda a, t: f"v / ({t}(1.0) + _np.exp(-v))",
        onnx=Onnx(  # x * Sigmoid(x): two ONNX ops
            subgraph=OnnxForm(_silu_onnx), patterns=(OnnxPattern(mul(X, op("Sigmoid", X))),)
        ),
    ),
    _activation(
        "Mish",
        "mish",
        "Mish: x * tanh(log(1 + exp(x))), elementwise.",
        lambda a, t: "v * _np.tanh(_np.log1p(_np.exp(v)))",
        onnx=Onnx(  # before opset 18: x * Tanh(Softplus(x))
            "Mish", opset=18, patterns=(OnnxPattern(mul(X, op("Tanh", op("Softplus", X)))),)
        ),
    ),
    _activation(
        "SELU",
        "selu",
        "SELU: scale * (x if x > 0 else alpha * (exp(x) - 1)), elementwise.",
        lambda a, t: (
            f"{_const(t, SELU_SCALE)} * v if v > 0 else "
            f"{_const(t, SELU_ALPHA * SELU_SCALE)} * _np.expm1(v)"
        ),
        onnx=Onnx("Selu", lambda a: {"alpha": SELU_ALPHA, "gamma": SELU_SCALE}),
    ),
    _activation(
        "ReLU6",
        "relu6",
        "ReLU6: x clipped to [0, 6] elementwise; NaN stays NaN.",
        lambda a, t: _clip("v", f"{t}(0.0)", f"{t}(6.0)"),
        onnx=Onnx("Clip", lambda a: {"min": 0.0, "max": 6.0}, opset=6),
    ),
    _activation(
        "Hardsigmoid",
        "hardsigmoid",
        "Hardsigmoid: (x + 3) clipped to [0, 6], divided by 6, elementwise.",
        lambda a, t: _clip(f"(v + {t}(3.0))", f"{t}(0.0)", f"{t}(6.0)") + f" / {t}(6.0)",
        onnx=Onnx("HardSigmoid", lambda a: {"alpha": 1 / 6, "beta": 0.5}),
    ),
    _activation(
        "Hardswish",
        "hardswish",
        "Hardswish: x * ((x + 3) clipped to [0, 6]) / 6, elementwise.",
        lambda a, t: "v * " + _clip(f"(v + {t}(3.0))", f"{t}(0.0)", f"{t}(6.0)") + f" / {t}(6.0)",
        onnx=Onnx(  # before opset 14: x * HardSigmoid(x)
            "HardSwish",
            opset=14,
            patterns=(OnnxPattern(mul(X, op("HardSigmoid", X, alpha=1 / 6, beta=0.5))),),
        ),
    ),
    _activation(
        "LogSigmoid",
        "log_sigmoid",
        "LogSigmoid: log(1 / (1 + exp(-x))) = min(x, 0) - log(1 + exp(-|x|)), elementwise.",
        lambda a, t: f"({t}(0.0) if v > 0 else v) - _np.log1p(_np.exp(-_np.abs(v)))",
        onnx=Onnx(  # -Softplus(-x): three ONNX ops; the exporters write Log(Sigmoid(x))
            subgraph=OnnxForm(_log_sigmoid_onnx),
            patterns=(
                OnnxPattern(op("Neg", op("Softplus", op("Neg", X)))),
                OnnxPattern(op("Log", op("Sigmoid", X))),
            ),
        ),
    ),
    _activation(
        "Softsign",
        "softsign",
        "Softsign: x / (1 + |x|), elementwise.",
        lambda a, t: f"v / ({t}(1.0) + _np.abs(v))",
        onnx=Onnx(  # the exporters: x / (|x| + 1)
            "Softsign", patterns=(OnnxPattern(op("Div", X, add(op("Abs", X), number(1.0)))),)
        ),
    ),
    Kind(
        "LogSoftmax",
        params=(Param("dim", B.integer, -1, type="int"),),
        native=Rowwise(_emit_log_softmax),
        base="log_softmax",
        doc="LogSoftmax of each row: x - max - log(sum(exp(x - max))); ys may be xs.",
        rows=last_axis,
        validate=_softmax_dim,
        extra_repr=lambda a: f"dim={a['dim']}",
        onnx=Onnx("LogSoftmax", lambda a: {"axis": -1}),
    ),
    _activation(
        "Hardshrink",
        "hardshrink",
        "Hardshrink: 0 where -lambd <= x <= lambd, else x, elementwise; NaN stays NaN.",
        lambda a, t: (
            f"{t}(0.0) if v >= {_const(t, -a['lambd'])} and v <= {_const(t, a['lambd'])} else v"
        ),
        params=(_float("lambd", 0.5),),
        extra_repr=lambda a: f"{a['lambd']}",
        # ONNX's Shrink with bias 0. Its lambd is a float32 attribute (and ONNX Runtime
        # computes it in float32 even on doubles): in float64, the subgraph. ONNX's Shrink
        # gives 0 for NaN, where torch's Hardshrink (and layerc) give NaN.
        onnx=Onnx(
            "Shrink",
            lambda a: {"bias": 0.0, "lambd": a["lambd"]},
            opset=9,
            dtypes=("float32",),
            subgraph=OnnxForm(_hardshrink_onnx, opset=12),
            patterns=_HARDSHRINK_PATTERNS,
        ),
    ),
    _activation(
        "Softshrink",
        "softshrink",
        "Softshrink: x - lambd above lambd, x + lambd below -lambd, else 0, elementwise; NaN "
        "stays NaN.",
        lambda a, t: (
            f"v - {_const(t, a['lambd'])} if v > {_const(t, a['lambd'])} else "
            f"(v + {_const(t, a['lambd'])} if v < {_const(t, -a['lambd'])} else v * {t}(0.0))"
        ),
        # torch refuses a negative lambd ("lambda must be in range [0, ...]") when called
        params=(_float("lambd", 0.5, minimum=0),),
        extra_repr=lambda a: f"{a['lambd']}",
        # ONNX's Shrink with bias = lambd; in float64, the subgraph (as Hardshrink's)
        onnx=Onnx(
            "Shrink",
            lambda a: {"bias": a["lambd"], "lambd": a["lambd"]},
            opset=9,
            dtypes=("float32",),
            subgraph=OnnxForm(_softshrink_onnx, opset=9),
            patterns=_SOFTSHRINK_PATTERNS,
        ),
    ),
    _activation(
        "Tanhshrink",
        "tanhshrink",
        "Tanhshrink: x - tanh(x), elementwise.",
        lambda a, t: "v - _np.tanh(v)",
        onnx=Onnx(  # x - Tanh(x): two ONNX ops
            subgraph=OnnxForm(_tanhshrink_onnx),
            patterns=(OnnxPattern(op("Sub", X, op("Tanh", X))),),
        ),
    ),
)


def _kinds_by_op() -> dict[str, tuple[str, ...]]:
    """ONNX op -> the kinds that export as it (`Onnx.op`), kinds with fewer parameters first
    (Clip(0, 6) is a ReLU6 before it is a Hardtanh)."""
    index: dict[str, list[str]] = {}
    for kind in sorted(KINDS.values(), key=lambda k: len(k.params)):
        if kind.onnx is not None and kind.onnx.op is not None:
            index.setdefault(kind.onnx.op, []).append(kind.name)
    return {op: tuple(kinds) for op, kinds in index.items()}


# The table read backwards, as `layerc import` reads it: ONNX op -> layer kinds.
KINDS_BY_OP = _kinds_by_op()


__all__ = [
    "KINDS",
    "KINDS_BY_OP",
    "REQUIRED",
    "Channelwise",
    "Elementwise",
    "Kind",
    "Lines",
    "MatMul",
    "Onnx",
    "OnnxForm",
    "OnnxGraph",
    "OnnxReader",
    "Rowwise",
    "ShapeError",
    "Tensor",
]
