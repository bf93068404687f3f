"""The checker: a syntax `Program` in, a resolved `ir.Program` out.

Every user error is found here (unknown names, bad arguments, shapes that do not chain, weights
that do not fit, tests that do not match their model) and raised as a located `LayercError`.
Weights are read or drawn here, so code generation only sees arrays of the model's dtype.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ir
from . import syntax as S
from . import weights as W
from .errors import LayercError, Loc
from .runtime.layers import reserved_names

MAX_FEATURES = 1 << 24  # 16,777,216: far beyond any model this compiler is for
MAX_WEIGHTS = 1 << 30  # values per Linear (4 GiB of float32)
MAX_LAYERS = 100_000
# Nested models: how deep they may nest, and what one model may hold once they are expanded
# (layers, weights); each source also gets MAX_WEIGHTS weights in all. These keep a small
# hostile source from asking for exponential output or unbounded memory.
MAX_MODEL_DEPTH = 32
# Values in a test's input or expect. Checked against a file's declared shape before its data is
# read, so a small compressed .npz cannot make a test allocate gigabytes.
MAX_TEST_VALUES = 1 << 24
# Model and layer names. A model's name is part of its kernel's name, which numba puts in the
# file name of its on-disk cache (driver.MAX_MODULE_NAME has the arithmetic).
MAX_NAME_LENGTH = 100

# Names a layer may not take: they would hide the module API the generated class offers.
RESERVED_LAYER_NAMES = reserved_names()


def _suggest(name: str, options: list[str]) -> str:
    """ "; did you mean 'X'?" for the option closest to `name`, ignoring case (so that `Relu`
    finds `ReLU`), or "" when none is close."""
    by_lower = {option.lower(): option for option in options}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def _known_kinds(models: dict[str, ir.Model], shown: int = 10) -> str:
    """ "layer kinds: Linear, ReLU, ...; models defined above: A, B": what a layer may be, for
    the unknown-kind message (the kinds from LAYER_PARAMS; at most `shown` model names)."""
    text = "layer kinds: " + ", ".join(LAYER_PARAMS)
    if models:
        names = list(models)
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        text += "; models defined above: " + ", ".join(names[:shown]) + more
    return text


def _check_name_length(name: str, what: str, loc: Loc) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise LayercError(
            f"this {what} name has {len(name)} characters; names have at most {MAX_NAME_LENGTH}",
            loc,
        )


def _cycle(start: str, target: str, models: dict[str, S.ModelDef]) -> list[str] | None:
    """The chain of model names by which model `start` uses model `target` (`[start, ...,
    target]`), or None when it does not. Layer kinds that are not models are skipped."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen = {start}
    while stack:
        name, path = stack.pop()
        for layer in models[name].layers:
            if layer.kind == target:
                return [*path, target]
            if layer.kind in models and layer.kind not in seen:
                seen.add(layer.kind)
                stack.append((layer.kind, [*path, layer.kind]))
    return None


_element_loc = W.element_loc


@dataclass(frozen=True)
class _Param:
    name: str
    default: object  # `_REQUIRED` when the argument must be given


_REQUIRED = object()

# kind -> its arguments in PyTorch's positional order
LAYER_PARAMS: dict[str, tuple[_Param, ...]] = {
    "Linear": (
        _Param("in_features", _REQUIRED),
        _Param("out_features", _REQUIRED),
        _Param("bias", True),
    ),
    "ReLU": (),
    "Sigmoid": (),
    "Tanh": (),
    "Identity": (),
    "LeakyReLU": (_Param("negative_slope", 0.01),),
    "Softmax": (_Param("dim", -1),),
}

LINEAR_ENTRIES = ("weight", "bias", "init")
TEST_ENTRIES = ("input", "expect", "atol", "rtol")
MODEL_OPTIONS = ("dtype", "allow_nonfinite")

DEFAULT_TOLERANCES = {
    np.dtype(np.float32): (1e-5, 1.3e-6),  # (atol, rtol) as torch.testing.assert_close
    np.dtype(np.float64): (1e-7, 1e-7),
}


def check(program: S.Program, base_dir: Path) -> ir.Program:
    """Resolve a parsed program; `base_dir` is where relative weight paths start."""
    return _Checker(program, base_dir).run()


class _Checker:
    def __init__(self, program: S.Program, base_dir: Path):
        self.program = program
        self.base_dir = base_dir
        self.models: dict[str, ir.Model] = {}
        self.defined: dict[str, S.ModelDef] = {}
        # model name -> (nesting depth, layers, weights) with nested models expanded
        self.expanded: dict[str, tuple[int, int, int]] = {}
        self.weights = 0  # in all Linear layers of the source
        self.loaded: dict[Path, None] = {}  # the files `load(...)` read, in order

    def run(self) -> ir.Program:
        all_models = {
            item.name: item for item in self.program.items if isinstance(item, S.ModelDef)
        }
        tests = []
        for item in self.program.items:
            if isinstance(item, S.ModelDef):
                if item.name in self.defined:
                    first = self.defined[item.name].name_loc
                    raise LayercError(
                        f"model {item.name!r} is defined twice (first at line {first.line})",
                        item.name_loc,
                    )
                _check_name_length(item.name, "model", item.name_loc)
                if item.name in LAYER_PARAMS:
                    raise LayercError(
                        f"a model cannot be named {item.name!r}: that is a layer kind",
                        item.name_loc,
                    )
                self.defined[item.name] = item
                self.models[item.name] = self.model(item, all_models)
        for item in self.program.items:
            if isinstance(item, S.TestDef):
                tests.append(self.test(item))
        if not self.models:
            raise LayercError("the file defines no model", file=self.program.file)
        result = ir.Program(
            Path(self.program.file).name,
            tuple(self.models.values()),
            tuple(tests),
            (Path(self.program.file), *self.loaded),
        )
        ir.verify(result)
        return result

    # ------------------------------------------------------------------ models

    def model(self, node: S.ModelDef, all_models: dict[str, S.ModelDef]) -> ir.Model:
        options = self.options(node)
        dtype = options["dtype"]
        allow_nonfinite = options["allow_nonfinite"]
        if not node.layers:
            raise LayercError(f"model {node.name!r} has no layers", node.name_loc)
        if len(node.layers) > MAX_LAYERS:
            raise LayercError(
                f"model {node.name!r} has more than {MAX_LAYERS} layers", node.name_loc
            )
        layers: list[ir.Layer] = []
        totals = (1, 0, 0)  # see expand()
        names: dict[str, S.LayerDef] = {}
        size: int | None = None
        previous: tuple[str, S.LayerDef] | None = None
        in_features: int | None = None
        for position, layer_node in enumerate(node.layers):
            name = layer_node.name if layer_node.name is not None else str(position)
            if layer_node.name is not None:
                self.check_layer_name(layer_node)
            if name in names:
                first = names[name].loc
                raise LayercError(
                    f"layer name {name!r} is used twice in model {node.name!r} "
                    f"(first at line {first.line})",
                    layer_node.loc,
                )
            names[name] = layer_node
            layer = self.layer(layer_node, name, node, dtype, allow_nonfinite, all_models)
            sizes = ir.layer_sizes(layer)
            if sizes is not None:
                if size is not None and sizes[0] != size:
                    assert previous is not None
                    prev_name, prev_node = previous
                    raise LayercError(
                        f"shape mismatch in model {node.name!r}: layer {name!r} expects "
                        f"{sizes[0]} input features, but the previous layer {prev_name!r} "
                        f"(line {prev_node.loc.line}) gives {size}",
                        layer_node.loc,
                    )
                if in_features is None:
                    in_features = sizes[0]
                size = sizes[1]
                previous = (name, layer_node)
            layers.append(layer)
            totals = self.expand(totals, layer, layer_node, node.name)
        if in_features is None or size is None:
            raise LayercError(
                f"model {node.name!r} has no Linear layer, so its input size is unknown",
                node.name_loc,
            )
        self.expanded[node.name] = totals
        return ir.Model(
            node.name, dtype, tuple(layers), in_features, size, node.loc, allow_nonfinite
        )

    def expand(
        self, totals: tuple[int, int, int], layer: ir.Layer, node: S.LayerDef, model: str
    ) -> tuple[int, int, int]:
        """(depth, layers, weights) of a model so far, with `layer` added: a nested
        model counts with everything it holds. Limits are reported at the layer that crosses."""
        depth, count, values = totals
        if isinstance(layer, ir.Submodel):
            sub_depth, sub_count, sub_values = self.expanded[layer.model.name]
            depth = max(depth, sub_depth + 1)
            count += sub_count
            values += sub_values
            if depth > MAX_MODEL_DEPTH:
                raise LayercError(
                    f"models nest more than {MAX_MODEL_DEPTH} deep here: {layer.model.name!r} "
                    f"is {sub_depth} levels deep",
                    node.kind_loc,
                )
        else:
            count += 1
            if isinstance(layer, ir.Linear):
                values += layer.weight.size
        if count > MAX_LAYERS:
            raise LayercError(
                f"model {model!r} has more than {MAX_LAYERS} layers once its nested models are "
                "expanded",
                node.loc,
            )
        if values > MAX_WEIGHTS:
            raise LayercError(
                f"model {model!r} has more than {MAX_WEIGHTS} weights once its nested models are "
                "expanded",
                node.loc,
            )
        return depth, count, values

    def options(self, node: S.ModelDef) -> dict:
        result: dict[str, object] = {"dtype": ir.DTYPES["float32"], "allow_nonfinite": False}
        seen: set[str] = set()
        for arg in node.options:
            if arg.name is None:
                raise LayercError(
                    "model options are keywords: write dtype=float32 or dtype=float64", arg.loc
                )
            if arg.name in seen:
                raise LayercError(f"option {arg.name!r} is given twice", arg.loc)
            seen.add(arg.name)
            if arg.name == "dtype":
                value = arg.value
                text = value.value if isinstance(value, (S.Name, S.String)) else None
                if text not in ir.DTYPES:
                    hint = _suggest(text, list(ir.DTYPES)) if isinstance(text, str) else ""
                    raise LayercError(f"dtype must be float32 or float64{hint}", value.loc)
                result["dtype"] = ir.DTYPES[text]
            elif arg.name == "allow_nonfinite":
                result["allow_nonfinite"] = self.boolean(arg.value, "allow_nonfinite")
            else:
                raise LayercError(
                    f"unknown model option {arg.name!r}{_suggest(arg.name, list(MODEL_OPTIONS))} "
                    f"(options: {', '.join(MODEL_OPTIONS)})",
                    arg.loc,
                )
        return result

    def check_layer_name(self, layer: S.LayerDef) -> None:
        name = layer.name
        assert name is not None
        _check_name_length(name, "layer", layer.loc)
        if name in RESERVED_LAYER_NAMES:
            raise LayercError(
                f"a layer cannot be named {name!r}: the generated module uses that name for its "
                "own API",
                layer.loc,
            )
        if name.startswith("__"):
            raise LayercError(
                f"a layer cannot be named {name!r}: names starting with '__' are reserved",
                layer.loc,
            )

    def layer(
        self,
        node: S.LayerDef,
        name: str,
        model: S.ModelDef,
        dtype: np.dtype,
        allow_nonfinite: bool,
        all_models: dict[str, S.ModelDef],
    ) -> ir.Layer:
        kind = node.kind
        if kind == "Linear":
            return self.linear(node, name, dtype, allow_nonfinite)
        if kind in LAYER_PARAMS:
            args = self.bind_args(node, LAYER_PARAMS[kind])
            self.no_block(node)
            params: list[tuple[str, float | int]] = []
            if kind == "LeakyReLU":
                slope = self.real(node, args, "negative_slope", dtype)
                params.append(("negative_slope", slope))
            elif kind == "Softmax":
                dim = args["dim"]
                dim_value = dim.value if isinstance(dim, S.Number) else dim
                if dim_value != -1:
                    loc = dim.loc if isinstance(dim, S.Number) else node.kind_loc
                    raise LayercError(
                        "Softmax supports dim=-1 only (the feature axis, which is the last axis "
                        "of every input a layerc model takes)",
                        loc,
                    )
                params.append(("dim", -1))
            return ir.Activation(name, kind, tuple(params), node.loc)
        if kind in self.models:
            if node.args:
                raise LayercError(
                    f"model {kind!r} used as a layer takes no arguments", node.args[0].loc
                )
            self.no_block(node)
            sub = self.models[kind]
            if sub.dtype != dtype:
                raise LayercError(
                    f"model {kind!r} is {sub.dtype.name} but {model.name!r} is {dtype.name}; "
                    "nested models must have the same dtype",
                    node.kind_loc,
                )
            return ir.Submodel(name, sub, node.loc)
        if kind == model.name:
            raise LayercError(f"model {kind!r} cannot contain itself", node.kind_loc)
        if kind in all_models:
            cycle = _cycle(kind, model.name, all_models)
            if cycle is not None:
                raise LayercError(
                    f"model {model.name!r} contains itself through "
                    f"{' -> '.join([model.name, *cycle])}; models cannot be recursive",
                    node.kind_loc,
                )
            raise LayercError(
                f"model {kind!r} is used before it is defined (line "
                f"{all_models[kind].name_loc.line}); define it earlier in the file",
                node.kind_loc,
            )
        options = sorted(LAYER_PARAMS) + sorted(self.models)
        raise LayercError(
            f"unknown layer kind {kind!r}{_suggest(kind, options)} ({_known_kinds(self.models)})",
            node.kind_loc,
        )

    def no_block(self, node: S.LayerDef) -> None:
        if node.entries is not None:
            raise LayercError(f"{node.kind} takes no {{ ... }} block", node.loc)

    def bind_args(self, node: S.LayerDef, params: tuple[_Param, ...]) -> dict[str, object]:
        """Match positional and keyword arguments to parameters as Python does."""
        bound: dict[str, object] = {}
        names = [p.name for p in params]
        for i, arg in enumerate(node.args):
            if arg.name is None:
                if any(a.name is not None for a in node.args[:i]):
                    raise LayercError("positional argument after a keyword argument", arg.loc)
                if i >= len(params):
                    given = sum(1 for a in node.args if a.name is None)
                    raise LayercError(
                        f"{node.kind} takes {len(params)} positional argument"
                        f"{'' if len(params) == 1 else 's'} but {given} "
                        f"{'was' if given == 1 else 'were'} given",
                        arg.loc,
                    )
                bound[names[i]] = arg.value
            else:
                if arg.name not in names:
                    hint = _suggest(arg.name, names)
                    allowed = ", ".join(names) if names else "none"
                    raise LayercError(
                        f"{node.kind} has no argument {arg.name!r}{hint} (arguments: {allowed})",
                        arg.loc,
                    )
                if arg.name in bound:
                    raise LayercError(f"argument {arg.name!r} is given twice", arg.loc)
                bound[arg.name] = arg.value
        for p in params:
            if p.name not in bound:
                if p.default is _REQUIRED:
                    raise LayercError(f"{node.kind} needs the argument {p.name!r}", node.kind_loc)
                bound[p.name] = p.default
        return bound

    # ------------------------------------------------------------------ Linear

    def linear(
        self, node: S.LayerDef, name: str, dtype: np.dtype, allow_nonfinite: bool
    ) -> ir.Linear:
        args = self.bind_args(node, LAYER_PARAMS["Linear"])
        in_features = self.features(args["in_features"], "in_features", node)
        out_features = self.features(args["out_features"], "out_features", node)
        has_bias = args["bias"]
        if not isinstance(has_bias, bool):
            has_bias = self.boolean(has_bias, "bias")  # type: ignore[arg-type]
        if in_features * out_features > MAX_WEIGHTS:
            raise LayercError(
                f"Linear({in_features}, {out_features}) has more than {MAX_WEIGHTS} weights",
                node.kind_loc,
            )
        # Counted before any value is read or drawn, so the memory asked for stays bounded.
        self.weights += in_features * out_features
        if self.weights > MAX_WEIGHTS:
            raise LayercError(
                f"the models of this file have more than {MAX_WEIGHTS} weights in all",
                node.kind_loc,
            )
        entries: dict[str, S.Entry] = {}
        for entry in node.entries or ():
            if entry.name not in LINEAR_ENTRIES:
                raise LayercError(
                    f"unknown Linear entry {entry.name!r}{_suggest(entry.name, list(LINEAR_ENTRIES))} "
                    f"(entries: {', '.join(LINEAR_ENTRIES)})",
                    entry.loc,
                )
            if entry.name in entries:
                raise LayercError(f"{entry.name!r} is given twice", entry.loc)
            entries[entry.name] = entry
        if "bias" in entries and not has_bias:
            raise LayercError(
                f"layer {name!r} is declared with bias=false but gives a bias", entries["bias"].loc
            )
        weight_shape = (out_features, in_features)
        weight: np.ndarray | None = None
        bias: np.ndarray | None = None
        if "init" in entries:
            if "weight" in entries:
                raise LayercError("give either 'weight' or 'init', not both", entries["init"].loc)
            weight, bias = self.init(entries["init"], in_features, out_features, has_bias)
        elif "weight" in entries:
            weight = self.array(entries["weight"], weight_shape, "weight", dtype)
        else:
            raise LayercError(
                f"layer {name!r} has no weights: give 'weight = ...' or 'init = uniform(seed=0)' "
                "in a { ... } block",
                node.loc,
            )
        if "bias" in entries:
            bias = self.array(entries["bias"], (out_features,), "bias", dtype)
        elif has_bias and bias is None:
            raise LayercError(
                f"layer {name!r} has a bias (bias=true) but no values for it: give 'bias = [...]', "
                "or declare bias=false",
                entries["weight"].loc,
            )
        source = entries.get("weight") or entries["init"]
        weight = self.convert(weight, dtype, allow_nonfinite, "weight", source.loc, source.value)
        if bias is not None:
            source = entries.get("bias") or entries.get("init") or entries["weight"]
            bias = self.convert(bias, dtype, allow_nonfinite, "bias", source.loc, source.value)
        return ir.Linear(name, in_features, out_features, weight, bias, node.loc)

    def features(self, value: object, what: str, node: S.LayerDef) -> int:
        if not isinstance(value, S.Number) or not value.is_int:
            loc = getattr(value, "loc", node.kind_loc)
            raise LayercError(f"{what} must be a positive integer", loc)
        if len(value.text.lstrip("+-")) > 12 or value.value > MAX_FEATURES:
            raise LayercError(
                f"{what} = {value.text} is too large (at most {MAX_FEATURES})", value.loc
            )
        number = int(value.value)
        if number <= 0:
            raise LayercError(f"{what} must be a positive integer, not {value.text}", value.loc)
        return number

    def init(
        self, entry: S.Entry, in_features: int, out_features: int, bias: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`init = NAME(args)`: the drawn weight and bias (float64); weights.initialise checks
        the initialiser's name and arguments."""
        value = entry.value
        if not isinstance(value, S.Call):
            raise LayercError("init must be an initialiser call such as uniform(seed=0)", value.loc)
        return W.initialise(value, out_features, in_features, bias)

    # ------------------------------------------------------------------ values

    def array(
        self,
        entry: S.Entry,
        shape: tuple[int, ...] | None,
        what: str,
        dtype: np.dtype | None = None,
    ) -> np.ndarray:
        """A literal (float64 values that `dtype` holds by the literal rule) or load(...)
        (converted to `dtype`); `dtype` defaults to float64; either way a number `dtype`
        cannot hold is a reported error. Checked against `shape` when one is given."""
        value = entry.value
        dtype = dtype if dtype is not None else np.dtype(np.float64)
        if isinstance(value, S.Call):
            array = self.load(value, shape, dtype)
        else:
            array = W.literal_array(value, what, dtype)
        if shape is not None and array.shape != shape:
            raise LayercError(
                f"{what} has shape {W.fmt_shape(array.shape)} but must have shape {W.fmt_shape(shape)}",
                value.loc,
            )
        return array

    def load(
        self,
        call: S.Call,
        shape: tuple[int, ...] | None,
        dtype: np.dtype,
        accept: Callable[[tuple[int, ...]], None] | None = None,
    ) -> np.ndarray:
        """`load(path[, key])` as `dtype`; a declared shape other than `shape`, or one that
        `accept` refuses (by raising), is reported before the file's data is read."""
        if call.func != "load":
            raise LayercError(
                f'unknown function {call.func!r}: values are literals or load("file", "key")'
                f"{_suggest(call.func, ['load'])}",
                call.loc,
            )
        positional = []
        for i, arg in enumerate(call.args):
            if arg.name is None and any(a.name is not None for a in call.args[:i]):
                raise LayercError("positional argument after a keyword argument", arg.loc)
            if arg.name not in (None, "path", "key"):
                raise LayercError(
                    f"load() has no argument {arg.name!r} (arguments: path, key)", arg.loc
                )
            if not isinstance(arg.value, S.String):
                raise LayercError('load() takes strings: load("file.npz", "key")', arg.value.loc)
            positional.append(arg)
        by_name: dict[str, str] = {}
        order = ["path", "key"]
        for i, arg in enumerate(positional):
            key = arg.name or (order[i] if i < 2 else None)
            if key is None:
                raise LayercError("load() takes at most two arguments: a path and a key", arg.loc)
            if key in by_name:
                raise LayercError(f"load() got {key!r} twice", arg.loc)
            assert isinstance(arg.value, S.String)
            by_name[key] = arg.value.value
        if "path" not in by_name:
            raise LayercError("load() needs a file path", call.loc)
        self.loaded[self.base_dir / by_name["path"]] = None
        return W.load_array(
            by_name["path"],
            by_name.get("key"),
            self.base_dir,
            call.loc,
            dtype=dtype,
            shape=shape,
            accept=accept,
        )

    def convert(
        self,
        array: np.ndarray,
        dtype: np.dtype,
        allow_nonfinite: bool,
        what: str,
        loc: Loc,
        value: S.Value | None = None,
    ) -> np.ndarray:
        """float64 -> the model's dtype; non-finite values and float32 overflow are errors,
        reported at the offending number when `value` is the literal the array came from."""
        if not allow_nonfinite:
            bad = ~np.isfinite(array)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise LayercError(
                    f"{what}{list(index)} is {float(array[index])!r}, not a finite number "
                    "(write model NAME(allow_nonfinite=true) to allow inf and nan)",
                    _element_loc(value, index) or loc,
                )
        with np.errstate(over="ignore"):
            converted = array.astype(dtype)
        overflow = np.isinf(converted) & np.isfinite(array)
        if overflow.any():
            index = tuple(int(i) for i in np.argwhere(overflow)[0])
            number = float(array[index])
            raise LayercError(
                f"{what}{list(index)} = {number!r} overflows {dtype.name}",
                _element_loc(value, index) or loc,
            )
        return np.ascontiguousarray(converted)

    def boolean(self, value: S.Value, what: str) -> bool:
        if not isinstance(value, S.Bool):
            # Python's True/False are the usual slip: suggest the .lyr spelling.
            hint = _suggest(value.value, ["true", "false"]) if isinstance(value, S.Name) else ""
            raise LayercError(f"{what} must be true or false{hint}", value.loc)
        return value.value

    def real(self, node: S.LayerDef, args: dict[str, object], key: str, dtype: np.dtype) -> float:
        """A finite number argument, read by the rule for literals in `dtype` (an integer
        exactly, a decimal that does not overflow)."""
        value = args[key]
        if isinstance(value, float):
            return value
        if not isinstance(value, S.Number) or S.number_kind(value.text) == S.SPECIAL:
            loc = getattr(value, "loc", node.kind_loc)
            raise LayercError(f"{key} must be a finite number", loc)
        return float(W.literal_array(value, key, dtype))

    # ------------------------------------------------------------------ tests

    def test(self, node: S.TestDef) -> ir.TestCase:
        if node.model not in self.models:
            raise LayercError(
                f"test names unknown model {node.model!r}{_suggest(node.model, list(self.models))}",
                node.model_loc,
            )
        model = self.models[node.model]
        entries: dict[str, S.Entry] = {}
        for entry in node.entries:
            if entry.name not in TEST_ENTRIES:
                raise LayercError(
                    f"unknown test entry {entry.name!r}{_suggest(entry.name, list(TEST_ENTRIES))} "
                    f"(entries: {', '.join(TEST_ENTRIES)})",
                    entry.loc,
                )
            if entry.name in entries:
                raise LayercError(f"{entry.name!r} is given twice", entry.loc)
            entries[entry.name] = entry
        for needed in ("input", "expect"):
            if needed not in entries:
                raise LayercError(f"test of {node.model!r} has no {needed!r}", node.loc)
        # input is read as the model's dtype and expect as float64, the dtype it is compared in.
        inputs = self.test_array(entries["input"], model.in_features, model.dtype)
        expect = self.test_array(entries["expect"], model.out_features, np.dtype(np.float64))
        self.test_shape(inputs.shape, model.in_features, "input", entries["input"].value.loc)
        self.test_shape(expect.shape, model.out_features, "expect", entries["expect"].value.loc)
        if inputs.shape[:-1] != expect.shape[:-1]:
            raise LayercError(
                f"input has {W.fmt_shape(inputs.shape)} but expect has {W.fmt_shape(expect.shape)}: "
                "they must hold the same number of samples",
                entries["expect"].value.loc,
            )
        atol, rtol = DEFAULT_TOLERANCES[model.dtype]
        if "atol" in entries:
            atol = self.tolerance(entries["atol"])
        if "rtol" in entries:
            rtol = self.tolerance(entries["rtol"])
        # nan and inf are legitimate test inputs; a finite number the dtype cannot hold is not.
        source = entries["input"].value
        inputs = self.convert(inputs, model.dtype, True, "input", source.loc, source)
        return ir.TestCase(model, inputs, expect, atol, rtol, node.loc)

    def test_array(self, entry: S.Entry, width: int, dtype: np.dtype) -> np.ndarray:
        """A test's input or expect; a file's declared shape is checked (`test_shape`) before
        any of its data is read."""
        value = entry.value
        if isinstance(value, S.Call):

            def accept(shape: tuple[int, ...]) -> None:
                self.test_shape(shape, width, entry.name, value.loc)

            return self.load(value, None, dtype, accept)
        return self.array(entry, None, entry.name, dtype)

    def test_shape(self, shape: tuple[int, ...], width: int, what: str, loc: Loc) -> None:
        if len(shape) not in (1, 2) or shape[-1] != width:
            raise LayercError(
                f"{what} has shape {W.fmt_shape(shape)} but the model takes ({width},) "
                f"or (N, {width})"
                if what == "input"
                else f"{what} has shape {W.fmt_shape(shape)} but the model gives ({width},) "
                f"or (N, {width})",
                loc,
            )
        if math.prod(shape) > MAX_TEST_VALUES:
            raise LayercError(
                f"{what} has shape {W.fmt_shape(shape)}, {math.prod(shape)} values; a test's "
                f"{what} holds at most {MAX_TEST_VALUES}",
                loc,
            )

    def tolerance(self, entry: S.Entry) -> float:
        value = entry.value
        if not isinstance(value, S.Number) or not value.value >= 0 or math.isinf(value.value):
            raise LayercError(f"{entry.name} must be a finite number >= 0", value.loc)
        return value.value
