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
from . import syntax as S
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


@dataclass(frozen=True)
class Onnx:
    """The ONNX operator a layer of the kind exports as: `inputs` are the layer's tensors that
    follow the data input (as initializers), `attributes(args)` the operator's attributes.
    `fixed` names the arguments the operator has no attribute for, with the values at which it
    computes the kind: `layerc export` writes the operator only for a layer with those values,
    and `layerc import` gives them to the layer it reads from the operator. (Export and import
    read this for every kind.)"""

    op: str
    attributes: Callable[[Args], dict[str, object]] = lambda a: {}
    inputs: tuple[str, ...] = ()
    opset: int = 1
    fixed: tuple[tuple[str, object], ...] = ()

    def computes(self, args: Args) -> bool:
        """Whether the operator computes a layer with these arguments (`fixed`)."""
        return all(args[name] == value for name, value in self.fixed)


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
        e.line("gamma = weight.reshape(weight.size)")
    if with_bias:
        e.line("beta = bias.reshape(bias.size)")
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
    e.line(f"{alpha} = _np.empty({channels}, dtype={t})")
    e.line(f"{beta} = _np.empty({channels}, dtype={t})")
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
        onnx=Onnx("Flatten", lambda a: {"axis": a["start_dim"]}),
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
        onnx=Onnx("PRelu", inputs=("weight",)),
    ),
    _activation(
        "GELU",
        "gelu",
        "GELU: x * Phi(x), exactly (with erf) or with torch's tanh approximation, elementwise.",
        lambda a, t: _gelu(a, t),
        params=(Param("approximate", B.choice(("none", "tanh")), "none", type="str"),),
        extra_repr=lambda a: f"approximate={a['approximate']!r}",
        onnx=Onnx("Gelu", lambda a: {"approximate": a["approximate"]}, opset=20),
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
        onnx=Onnx("Celu", lambda a: {"alpha": a["alpha"]}, opset=12),
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
        onnx=Onnx("Softplus", fixed=(("beta", 1.0), ("threshold", 20.0))),
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
        onnx=None,  # x * Sigmoid(x): two ONNX ops
    ),
    _activation(
        "Mish",
        "mish",
        "Mish: x * tanh(log(1 + exp(x))), elementwise.",
        lambda a, t: "v * _np.tanh(_np.log1p(_np.exp(v)))",
        onnx=Onnx("Mish", opset=18),
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
        onnx=Onnx("HardSwish", opset=14),
    ),
    _activation(
        "LogSigmoid",
        "log_sigmoid",
        "LogSigmoid: log(1 / (1 + exp(-x))) = min(x, 0) - log(1 + exp(-|x|)), elementwise.",
        lambda a, t: f"({t}(0.0) if v > 0 else v) - _np.log1p(_np.exp(-_np.abs(v)))",
        onnx=None,  # -Softplus(-x): two ONNX ops
    ),
    _activation(
        "Softsign",
        "softsign",
        "Softsign: x / (1 + |x|), elementwise.",
        lambda a, t: f"v / ({t}(1.0) + _np.abs(v))",
        onnx=Onnx("Softsign"),
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
