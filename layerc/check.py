"""The checker: a syntax `Program` in, a resolved `ir.Program` out.

Every user error is found here (unknown names, bad arguments, shapes that do not chain, weights
that do not fit, tests that do not match their model) and raised as a located `LayercError`.
What each layer kind takes and gives comes from the table in `kinds`; arguments are bound by
`binder.bind`. Weights are read or drawn here, so later stages only see arrays of the model's
dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import binder, ir
from . import syntax as S
from . import weights as W
from .errors import LayercError, Loc, suggest
from .kinds import KINDS, MAX_FEATURES, MAX_RANK, Kind, Shape, ShapeError, fmt_shape
from .runtime.layers import reserved_names

__all__ = ["check", "MAX_FEATURES"]

MAX_WEIGHTS = 1 << 30  # values in one layer's largest weight (4 GiB of float32)
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


def _known_kinds(models: dict[str, ir.Model], shown: int = 10) -> str:
    """ "layer kinds: Linear, ReLU, ...; models defined above: A, B": what a layer may be, for
    the unknown-kind message (the kinds from the table; at most `shown` model names)."""
    text = "layer kinds: " + ", ".join(KINDS)
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


def _load_string(value: S.Value, name: str, callee: str) -> str:
    if not isinstance(value, S.String):
        raise LayercError('load() takes strings: load("file.npz", "key")', value.loc)
    return value.value


# load(path[, key]): a .npy file, or the array `key` of a .npz or .safetensors file
LOAD_PARAMS = (
    binder.Param("path", _load_string, type="str"),
    binder.Param("key", _load_string, None, type="str"),
)
_INPUT_SHAPE = binder.shape(MAX_FEATURES, MAX_RANK)
TEST_ENTRIES = ("input", "expect", "atol", "rtol")
MODEL_OPTIONS = ("dtype", "allow_nonfinite", "input")

DEFAULT_TOLERANCES = {
    np.dtype(np.float32): (1e-5, 1.3e-6),  # (atol, rtol) as torch.testing.assert_close
    np.dtype(np.float64): (1e-7, 1e-7),
}


def check(program: S.Program, base_dir: Path) -> ir.Program:
    """Resolve a parsed program; `base_dir` is where relative weight paths start."""
    return _Checker(program, base_dir).run()


@dataclass(frozen=True)
class _Built:
    """A layer of a kind, checked but not yet placed: its shapes come from the model."""

    spec: Kind
    args: binder.Bound
    tensors: tuple[tuple[str, np.ndarray | None], ...]


def _weights_count(spec: Kind, args: binder.Bound) -> int:
    """What a layer counts against the weight limits: the values of its largest tensor."""
    sizes = [math.prod(t.shape(args.values)) for t in spec.tensors if t.present(args.values)]
    return max(sizes, default=0)


def _describe_call(spec: Kind, args: binder.Bound) -> str:
    """`Linear(4, 3)`: the kind with its required arguments, for messages."""
    shown = ", ".join(str(args[p.name]) for p in spec.params if p.default is binder.REQUIRED)
    return f"{spec.name}({shown})"


def _gives(shape: Shape) -> str:
    return str(shape[0]) if len(shape) == 1 else f"shape {fmt_shape(shape)}"


def _entries(given: Sequence[S.Entry], allowed: Sequence[str], what: str) -> dict[str, S.Entry]:
    """A block's entries by name: each one `allowed` (what: "Linear", "test"), none twice."""
    entries: dict[str, S.Entry] = {}
    for entry in given:
        if entry.name not in allowed:
            raise LayercError(
                f"unknown {what} entry {entry.name!r}{suggest(entry.name, list(allowed))} "
                f"(entries: {', '.join(allowed)})",
                entry.loc,
            )
        if entry.name in entries:
            raise LayercError(f"{entry.name!r} is given twice", entry.loc)
        entries[entry.name] = entry
    return entries


class _Checker:
    def __init__(self, program: S.Program, base_dir: Path):
        self.program = program
        self.base_dir = base_dir
        self.models: dict[str, ir.Model] = {}
        self.defined: dict[str, S.ModelDef] = {}
        # model name -> (nesting depth, layers, weights) with nested models expanded
        self.expanded: dict[str, tuple[int, int, int]] = {}
        self.weights = 0  # in all layers of the source
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
                if item.name in KINDS:
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
        layers: list[ir.Child] = []
        totals = (1, 0, 0)  # see expand()
        names: dict[str, S.LayerDef] = {}
        # The per-sample shape flowing between layers: None until a layer (or the `input`
        # option) fixes it; the shape-preserving layers before that one wait in `pending`.
        in_shape: Shape | None = options.get("input")
        shape = in_shape
        pending: list[tuple[int, ir.Submodel | _Built, S.LayerDef]] = []
        shaper: tuple[str, S.LayerDef] | None = None  # the layer that last set the shape
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
            built = self.layer(layer_node, name, node, dtype, allow_nonfinite, all_models)
            if shape is None:
                shape = self.first_shape(built, layer_node, node)
                if shape is not None:
                    in_shape = shape
                    for index, waiting, waiting_node in pending:
                        self.out_shape(
                            waiting,
                            shape,
                            waiting_node.name or str(index),
                            waiting_node,
                            node,
                            None,
                        )
                        placed = layers[index]
                        assert isinstance(placed, ir.Layer)
                        layers[index] = dataclasses.replace(placed, in_shape=shape, out_shape=shape)
            if shape is None:
                pending.append((len(layers), built, layer_node))
                out: Shape = ()
            else:
                out = self.out_shape(built, shape, name, layer_node, node, shaper)
            if isinstance(built, ir.Submodel):
                layer: ir.Child = built
                shaper = (name, layer_node)
            else:
                layer = ir.Layer(
                    name,
                    built.spec.name,
                    tuple(built.args.values.items()),
                    built.tensors,
                    shape if shape is not None else (),
                    out,
                    layer_node.loc,
                )
                if not built.spec.keeps_shape:
                    shaper = (name, layer_node)
            shape = out if shape is not None else None
            layers.append(layer)
            totals = self.expand(totals, layer, layer_node, node.name)
        if in_shape is None or shape is None:
            raise LayercError(
                f"model {node.name!r} has no layer that fixes its input shape (such as a "
                "Linear): give it as the model option input=[...]",
                node.name_loc,
            )
        self.expanded[node.name] = totals
        return ir.Model(node.name, dtype, tuple(layers), in_shape, shape, node.loc, allow_nonfinite)

    def first_shape(
        self, built: ir.Submodel | _Built, node: S.LayerDef, model: S.ModelDef
    ) -> Shape | None:
        """The model's per-sample input shape if this layer fixes it (a Linear: its
        in_features); None for a layer that keeps any shape (the shape is not known yet). A
        layer that changes the shape but cannot fix it is an error."""
        if isinstance(built, ir.Submodel):
            return built.model.in_shape
        fixed = built.spec.fixes(built.args.values)
        if fixed is None and not built.spec.keeps_shape:
            raise LayercError(
                f"model {model.name!r} starts with {built.spec.name}, which cannot tell the shape "
                "of its input: give it as the model option input=[...], such as "
                "input=[1, 28, 28]",
                node.kind_loc,
            )
        return fixed

    def out_shape(
        self,
        built: ir.Submodel | _Built,
        shape: Shape,
        name: str,
        node: S.LayerDef,
        model: S.ModelDef,
        shaper: tuple[str, S.LayerDef] | None,
    ) -> Shape:
        """The layer's per-sample output for input `shape`, or the located error saying why
        it cannot take that input."""
        if isinstance(built, ir.Submodel):
            wanted = built.model.in_shape
            if wanted == shape:
                return built.model.out_shape
            expects = (
                f"expects {wanted[0]} input features"
                if len(wanted) == 1
                else f"expects input of shape {fmt_shape(wanted)}"
            )
            error = ShapeError(expects)
        else:
            try:
                return built.spec.shape(built.args.values, shape)
            except ShapeError as exc:
                error = exc
        loc = node.loc
        if error.arg is not None and not isinstance(built, ir.Submodel):
            loc = built.args.loc(error.arg) if error.arg in built.args.given else node.loc
        if not error.mismatch:
            raise LayercError(error.message, loc)
        if shaper is None:
            source = f"the model's input gives {_gives(shape)}"
        else:
            prev_name, prev_node = shaper
            source = f"the previous layer {prev_name!r} (line {prev_node.loc.line}) gives {_gives(shape)}"
        raise LayercError(
            f"shape mismatch in model {model.name!r}: layer {name!r} {error.message}, but {source}",
            loc,
        )

    def expand(
        self, totals: tuple[int, int, int], layer: ir.Child, node: S.LayerDef, model: str
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
            values += max((v.size for _, v in layer.tensors if v is not None), default=0)
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
                    hint = suggest(text, list(ir.DTYPES)) if isinstance(text, str) else ""
                    raise LayercError(f"dtype must be float32 or float64{hint}", value.loc)
                result["dtype"] = ir.DTYPES[text]
            elif arg.name == "allow_nonfinite":
                result["allow_nonfinite"] = binder.boolean(arg.value, "allow_nonfinite", "model")
            elif arg.name == "input":
                # the per-sample input shape, for models whose first layer does not fix it
                result["input"] = _INPUT_SHAPE(arg.value, "input", "model")
            else:
                raise LayercError(
                    f"unknown model option {arg.name!r}{suggest(arg.name, list(MODEL_OPTIONS))} "
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
    ) -> ir.Submodel | _Built:
        kind = node.kind
        if kind in KINDS:
            return self.kind_layer(node, name, KINDS[kind], dtype, allow_nonfinite)
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
        options = sorted(KINDS) + sorted(self.models)
        raise LayercError(
            f"unknown layer kind {kind!r}{suggest(kind, options)} ({_known_kinds(self.models)})",
            node.kind_loc,
        )

    def no_block(self, node: S.LayerDef) -> None:
        if node.entries is not None:
            raise LayercError(f"{node.kind} takes no {{ ... }} block", node.loc)

    # ------------------------------------------------------------------ layers of a kind

    def exact_reals(
        self, node: S.LayerDef, spec: Kind, args: binder.Bound, dtype: np.dtype
    ) -> None:
        """Real-number arguments written as literals follow the rule for literals in the
        model's dtype: an integer the dtype cannot hold exactly is an error, at the number."""
        written = {arg.value.loc: arg.value for arg in node.args}
        for param in spec.params:
            value = written.get(args.loc(param.name)) if param.name in args.given else None
            if param.type == "float" and isinstance(value, S.Number):
                W.literal_array(value, param.name, dtype)

    def kind_layer(
        self, node: S.LayerDef, name: str, spec: Kind, dtype: np.dtype, allow_nonfinite: bool
    ) -> _Built:
        """Bind the arguments, then read, draw or default every weight and buffer the kind
        declares; the shapes are checked by the model, which knows the layer's input."""
        args = binder.bind(spec.name, spec.params, node.args, node.kind_loc)
        self.exact_reals(node, spec, args, dtype)
        spec.validate(args)
        if not spec.entries():
            self.no_block(node)
        count = _weights_count(spec, args)
        if count > MAX_WEIGHTS:
            raise LayercError(
                f"{_describe_call(spec, args)} has more than {MAX_WEIGHTS} weights", node.kind_loc
            )
        # Counted before any value is read or drawn, so the memory asked for stays bounded.
        self.weights += count
        if self.weights > MAX_WEIGHTS:
            raise LayercError(
                f"the models of this file have more than {MAX_WEIGHTS} weights in all",
                node.kind_loc,
            )
        entries = self.entries(node, spec)
        values = args.values
        for t in spec.tensors:
            if t.name in entries and not t.present(values):
                off = next(flag for flag in t.flags if not values[flag])
                noun = f"a {t.name}" if t.name in ("weight", "bias") else repr(t.name)
                raise LayercError(
                    f"layer {name!r} is declared with {off}=false but gives {noun}",
                    entries[t.name].loc,
                )
        drawn = self.draw(node, name, spec, args, entries)
        tensors: list[tuple[str, np.ndarray | None]] = []
        for t in spec.tensors:
            if not t.present(values):
                tensors.append((t.name, None))
                continue
            shape = t.shape(values)
            tensor_dtype = np.dtype(t.dtype) if t.dtype is not None else dtype
            entry = entries.get(t.name)
            if entry is not None:
                array = self.array(entry, shape, t.name, tensor_dtype)
                array = self.convert(
                    array, tensor_dtype, allow_nonfinite, t.name, entry.loc, entry.value
                )
            elif t.name in drawn:
                source = entries.get("init")
                assert source is not None
                array = self.convert(
                    drawn[t.name], tensor_dtype, allow_nonfinite, t.name, source.loc, source.value
                )
            elif t.initial is not None:
                initial = np.full(shape, t.initial_value(values), dtype=np.float64)
                array = self.convert(initial, tensor_dtype, allow_nonfinite, t.name, node.kind_loc)
            else:
                raise self.missing(node, name, spec, t.name, entries)
            tensors.append((t.name, array))
        return _Built(spec, args, tuple(tensors))

    def entries(self, node: S.LayerDef, spec: Kind) -> dict[str, S.Entry]:
        return _entries(node.entries or (), spec.entries(), spec.name)

    def draw(
        self,
        node: S.LayerDef,
        name: str,
        spec: Kind,
        args: binder.Bound,
        entries: dict[str, S.Entry],
    ) -> dict[str, np.ndarray]:
        """The tensors `init = NAME(...)` draws (float64), or {} without an `init` entry. The
        first tensor cannot be given next to `init`; the others replace the drawn ones."""
        if "init" not in entries:
            return {}
        first = spec.tensors[0].name
        if first in entries:
            raise LayercError(f"give either {first!r} or 'init', not both", entries["init"].loc)
        value = entries["init"].value
        if not isinstance(value, S.Call):
            raise LayercError("init must be an initialiser call such as uniform(seed=0)", value.loc)
        assert spec.initialiser is not None
        drawn = spec.initialiser(value, args.values)
        return {key: array for key, array in drawn.items() if array is not None}

    def missing(
        self, node: S.LayerDef, name: str, spec: Kind, tensor: str, entries: dict[str, S.Entry]
    ) -> LayercError:
        """The error for a tensor that has no initial value and was not given."""
        t = next(t for t in spec.tensors if t.name == tensor)
        if tensor == spec.tensors[0].name or not entries:
            how = "'init = uniform(seed=0)'" if spec.initialiser is not None else "its values"
            return LayercError(
                f"layer {name!r} has no weights: give '{tensor} = ...' or {how} in a {{ ... }} "
                "block",
                node.loc,
            )
        flags = ", ".join(f"{flag}=true" for flag in t.flags)
        undo = " or ".join(f"declare {flag}=false" for flag in t.flags)
        first_given = next(iter(entries.values()))
        return LayercError(
            f"layer {name!r} has a {tensor} ({flags}) but no values for it: give "
            f"'{tensor} = [...]', or {undo}",
            first_given.loc,
        )

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
                f"{suggest(call.func, ['load'])}",
                call.loc,
            )
        args = binder.bind("load()", LOAD_PARAMS, call.args, call.loc)
        path, key = args["path"], args["key"]
        assert isinstance(path, str) and (key is None or isinstance(key, str))
        self.loaded[self.base_dir / path] = None
        return W.load_array(
            path, key, self.base_dir, call.loc, dtype=dtype, shape=shape, accept=accept
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
            converted = array.astype(dtype, order="C")
        overflow = np.isinf(converted) & np.isfinite(array)
        if overflow.any():
            index = tuple(int(i) for i in np.argwhere(overflow)[0])
            number = float(array[index])
            raise LayercError(
                f"{what}{list(index)} = {number!r} overflows {dtype.name}",
                _element_loc(value, index) or loc,
            )
        return converted

    # ------------------------------------------------------------------ tests

    def test(self, node: S.TestDef) -> ir.TestCase:
        if node.model not in self.models:
            raise LayercError(
                f"test names unknown model {node.model!r}{suggest(node.model, list(self.models))}",
                node.model_loc,
            )
        model = self.models[node.model]
        entries = _entries(node.entries, TEST_ENTRIES, "test")
        for needed in ("input", "expect"):
            if needed not in entries:
                raise LayercError(f"test of {node.model!r} has no {needed!r}", node.loc)
        # input is read as the model's dtype and expect as float64, the dtype it is compared in.
        inputs = self.test_array(entries["input"], model.in_shape, model.dtype)
        expect = self.test_array(entries["expect"], model.out_shape, np.dtype(np.float64))
        self.test_shape(inputs.shape, model.in_shape, "input", entries["input"].value.loc)
        self.test_shape(expect.shape, model.out_shape, "expect", entries["expect"].value.loc)
        in_batch = inputs.shape[: inputs.ndim - len(model.in_shape)]
        out_batch = expect.shape[: expect.ndim - len(model.out_shape)]
        if in_batch != out_batch:
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

    def test_array(self, entry: S.Entry, shape: Shape, dtype: np.dtype) -> np.ndarray:
        """A test's input or expect; a file's declared shape is checked (`test_shape`) before
        any of its data is read."""
        value = entry.value
        if isinstance(value, S.Call):

            def accept(declared: tuple[int, ...]) -> None:
                self.test_shape(declared, shape, entry.name, value.loc)

            return self.load(value, None, dtype, accept)
        return self.array(entry, None, entry.name, dtype)

    def test_shape(self, given: tuple[int, ...], shape: Shape, what: str, loc: Loc) -> None:
        """One sample (`shape`) or a batch of them (N, *shape), of at most MAX_TEST_VALUES."""
        if not (given == shape or (len(given) == len(shape) + 1 and given[1:] == shape)):
            verb = "takes" if what == "input" else "gives"
            raise LayercError(
                f"{what} has shape {W.fmt_shape(given)} but the model {verb} "
                f"{fmt_shape(shape)} or (N, {', '.join(map(str, shape))})",
                loc,
            )
        if math.prod(given) > MAX_TEST_VALUES:
            raise LayercError(
                f"{what} has shape {W.fmt_shape(given)}, {math.prod(given)} values; a test's "
                f"{what} holds at most {MAX_TEST_VALUES}",
                loc,
            )

    def tolerance(self, entry: S.Entry) -> float:
        value = entry.value
        if not isinstance(value, S.Number) or not value.value >= 0 or math.isinf(value.value):
            raise LayercError(f"{entry.name} must be a finite number >= 0", value.loc)
        return value.value
