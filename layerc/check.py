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
import operator
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import binder, ir
from . import syntax as S
from . import weights as W
from .errors import LayercError, LayercWarning, Loc, suggest
from .kinds import KINDS, MAX_FEATURES, MAX_RANK, Kind, Shape, ShapeError, fmt_shape
from .runtime import quantized
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
MODEL_OPTIONS = ("dtype", "allow_nonfinite", "input", "quantize")
QUANTIZE = ("int8", "none")  # quantize=...; "none", the default, computes in the dtype
# The widest Linear a model with quantize=int8 may have: one input row, quantised to bytes, goes
# on the stack, and its sums must be exact in int32.
QUANTIZED_MAX_IN = quantized.MAX_IN

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
        self.warnings: list[LayercWarning] = []

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
            tuple(self.warnings),
        )
        ir.verify(result)
        return result

    # ------------------------------------------------------------------ models

    def model(self, node: S.ModelDef, all_models: dict[str, S.ModelDef]) -> ir.Model:
        options = self.options(node)
        if node.forward is not None:
            return self.graph_model(node, node.forward, options, all_models)
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
            self.declare(layer_node, name, names, node)
            built = self.layer(layer_node, name, node, dtype, allow_nonfinite, all_models)
            if isinstance(built, ir.Submodel):
                self.one_in_one_out(built, layer_node)
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
            totals = self.expand(totals, built, layer_node, node.name)
        if in_shape is None or shape is None:
            raise LayercError(
                f"model {node.name!r} has no layer that fixes its input shape (such as a "
                "Linear): give it as the model option input=[...]",
                node.name_loc,
            )
        self.expanded[node.name] = totals
        return ir.Model(
            node.name,
            dtype,
            self.mark_quantized(layers, options, node),
            in_shape,
            shape,
            node.loc,
            allow_nonfinite,
            quantize=options["quantize"],
        )

    def graph_model(
        self,
        node: S.ModelDef,
        forward: S.ForwardDef,
        options: dict,
        all_models: dict[str, S.ModelDef],
    ) -> ir.Model:
        """A model with a forward block: its layers are built as a pipeline's (names,
        arguments, weights, the limits), and `_Forward` gives their shapes from the calls."""
        if "input" in options:
            loc = next(arg.loc for arg in node.options if arg.name == "input")
            raise LayercError(
                f"model {node.name!r} has a forward block: give the shapes of its inputs "
                "there, as in forward(img: [1, 28, 28]), not as the option input",
                loc,
            )
        dtype, allow_nonfinite = options["dtype"], options["allow_nonfinite"]
        if len(node.layers) > MAX_LAYERS:
            raise LayercError(
                f"model {node.name!r} has more than {MAX_LAYERS} layers", node.name_loc
            )
        built: dict[str, ir.Submodel | _Built] = {}
        names: dict[str, S.LayerDef] = {}
        totals = (1, 0, 0)  # see expand()
        for layer_node in node.layers:
            name = layer_node.name
            if name is None:
                raise LayercError(
                    f"the layers of model {node.name!r} need names, as forward calls them by "
                    f"name: write NAME = {layer_node.kind}(...)",
                    layer_node.loc,
                )
            if name == "cat":
                raise LayercError(
                    "a layer of a model with forward cannot be named 'cat': cat(a, b) is the "
                    "built-in concatenation",
                    layer_node.loc,
                )
            self.declare(layer_node, name, names, node)
            built[name] = self.layer(layer_node, name, node, dtype, allow_nonfinite, all_models)
            totals = self.expand(totals, built[name], layer_node, node.name)
        self.expanded[node.name] = totals
        checked = _Forward(node, forward, built, names, dtype, set(self.models)).run()
        self.warnings.extend(checked.warnings)
        layers: list[ir.Child] = []
        for name, child in built.items():
            if isinstance(child, ir.Submodel):
                layers.append(child)
                continue
            in_shape, out_shape = checked.layer_shapes[name]
            args = tuple(child.args.values.items())
            layers.append(
                ir.Layer(
                    name, child.spec.name, args, child.tensors, in_shape, out_shape, names[name].loc
                )
            )
        graph = checked.graph
        return ir.Model(
            node.name,
            dtype,
            self.mark_quantized(layers, options, node),
            graph.inputs[0].shape,
            graph.shapes()[graph.outputs[0]],
            node.loc,
            allow_nonfinite,
            graph,
            options["quantize"],
        )

    def mark_quantized(
        self, layers: list[ir.Child], options: dict, node: S.ModelDef
    ) -> tuple[ir.Child, ...]:
        """The model's layers, its Linear layers marked quantized under quantize=int8. Its
        nested models must be quantized too: the option means every Linear of the model."""
        if options["quantize"] is None:
            return tuple(layers)
        result: list[ir.Child] = []
        for child in layers:
            if isinstance(child, ir.Submodel):
                if child.model.quantize is None:
                    raise LayercError(
                        f"model {node.name!r} has quantize=int8 but its nested model "
                        f"{child.model.name!r} does not: give {child.model.name!r} the option "
                        "quantize=int8 too, so that every Linear of the model is quantized",
                        child.loc,
                    )
            elif child.kind == "Linear":
                if child.in_features > QUANTIZED_MAX_IN:
                    raise LayercError(
                        f"layer {child.name!r} has {child.in_features} input features; with "
                        f"quantize=int8 a Linear may have at most {QUANTIZED_MAX_IN}",
                        child.loc,
                    )
                child = dataclasses.replace(child, quantized=True)
            result.append(child)
        return tuple(result)

    def declare(
        self, layer: S.LayerDef, name: str, names: dict[str, S.LayerDef], model: S.ModelDef
    ) -> None:
        """Check a layer's name, new in its model, and add it to `names`."""
        if layer.name is not None:
            self.check_layer_name(layer)
        if name in names:
            first = names[name].loc
            raise LayercError(
                f"layer name {name!r} is used twice in model {model.name!r} "
                f"(first at line {first.line})",
                layer.loc,
            )
        names[name] = layer

    def one_in_one_out(self, built: ir.Submodel, node: S.LayerDef) -> None:
        """A layer of a pipeline takes one value and gives one; so must a graph model in it."""
        sub = built.model
        for count, noun in ((len(sub.in_shapes), "takes"), (len(sub.out_shapes), "returns")):
            if count != 1:
                what = "inputs" if noun == "takes" else "values"
                raise LayercError(
                    f"model {sub.name!r} {noun} {count} {what}, but a layer of a pipeline takes "
                    "one value and gives one: use it from a forward block",
                    node.kind_loc,
                )

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
        self,
        totals: tuple[int, int, int],
        layer: ir.Submodel | _Built,
        node: S.LayerDef,
        model: str,
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
        result: dict[str, object] = {
            "dtype": ir.DTYPES["float32"],
            "allow_nonfinite": False,
            "quantize": None,
        }
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
            elif arg.name == "quantize":
                value = arg.value
                text = value.value if isinstance(value, (S.Name, S.String)) else None
                if text not in QUANTIZE:
                    hint = suggest(text, list(QUANTIZE)) if isinstance(text, str) else ""
                    raise LayercError(f"quantize must be int8 or none{hint}", value.loc)
                result["quantize"] = None if text == "none" else text
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
        if isinstance(value, S.TupleLit):
            raise LayercError(
                f"{what} must be a number or a list of numbers; a tuple (a, b) is only for the "
                "input or expect of a test of a model with several inputs or outputs",
                value.loc,
            )
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
        value: S.Value | S.TupleLit | None = None,
    ) -> np.ndarray:
        """float64 -> the model's dtype; non-finite values and float32 overflow are errors,
        reported at the offending number when `value` is the literal the array came from."""
        literal = value if not isinstance(value, S.TupleLit) else None
        if not allow_nonfinite:
            bad = ~np.isfinite(array)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise LayercError(
                    f"{what}{list(index)} is {float(array[index])!r}, not a finite number "
                    "(write model NAME(allow_nonfinite=true) to allow inf and nan)",
                    _element_loc(literal, index) or loc,
                )
        with np.errstate(over="ignore"):
            converted = array.astype(dtype, order="C")
        overflow = np.isinf(converted) & np.isfinite(array)
        if overflow.any():
            index = tuple(int(i) for i in np.argwhere(overflow)[0])
            number = float(array[index])
            raise LayercError(
                f"{what}{list(index)} = {number!r} overflows {dtype.name}",
                _element_loc(literal, index) or loc,
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
        inputs = self.test_values(entries["input"], model, model.in_shapes, model.dtype)
        expects = self.test_values(entries["expect"], model, model.out_shapes, np.dtype(np.float64))
        first = inputs[0][1]
        first_batch = first.shape[: first.ndim - len(model.in_shapes[0])]
        shapes = (*model.in_shapes, *model.out_shapes)
        for (what, array, value), shape in zip((*inputs, *expects), shapes, strict=True):
            if array.shape[: array.ndim - len(shape)] != first_batch:
                raise LayercError(
                    f"{inputs[0][0]} has {W.fmt_shape(first.shape)} but {what} has "
                    f"{W.fmt_shape(array.shape)}: they must hold the same number of samples",
                    value.loc,
                )
        atol, rtol = DEFAULT_TOLERANCES[model.dtype]
        if "atol" in entries:
            atol = self.tolerance(entries["atol"])
        if "rtol" in entries:
            rtol = self.tolerance(entries["rtol"])
        # nan and inf are legitimate test inputs; a finite number the dtype cannot hold is not.
        converted = tuple(
            self.convert(array, model.dtype, True, what, value.loc, value)
            for what, array, value in inputs
        )
        return ir.TestCase(
            model, converted, tuple(array for _, array, _ in expects), atol, rtol, node.loc
        )

    def test_values(
        self, entry: S.Entry, model: ir.Model, shapes: tuple[Shape, ...], dtype: np.dtype
    ) -> list[tuple[str, np.ndarray, S.Value]]:
        """A test's input or expect, one array per input or output of the model (what each is
        called in messages, the array, its source): a value for a model with one, a tuple
        `(a, b)` in forward order for a model with several."""
        value = entry.value
        noun = "inputs" if entry.name == "input" else "outputs"
        if len(shapes) == 1:
            if isinstance(value, S.TupleLit):
                raise LayercError(
                    f"model {model.name!r} has one {noun[:-1]}: write {entry.name} = [...] "
                    "without parentheses",
                    value.loc,
                )
            return [(entry.name, self.test_array(value, entry.name, shapes[0], dtype), value)]
        if model.graph is not None and entry.name == "input":
            names = [f"{i.name!r}" for i in model.graph.inputs]
        else:
            names = [f"{entry.name}[{index}]" for index in range(len(shapes))]
        if not isinstance(value, S.TupleLit):
            raise LayercError(
                f"model {model.name!r} has {len(shapes)} {noun}: write {entry.name} = "
                f"({', '.join('...' for _ in shapes)}), one value for each, in forward's order",
                value.loc,
            )
        if len(value.items) != len(shapes):
            raise LayercError(
                f"model {model.name!r} has {len(shapes)} {noun}, but {entry.name} gives "
                f"{len(value.items)} value{'' if len(value.items) == 1 else 's'}",
                value.loc,
            )
        result = []
        for name, item, shape in zip(names, value.items, shapes, strict=True):
            what = f"input {name}" if entry.name == "input" else name
            result.append((what, self.test_array(item, what, shape, dtype), item))
        return result

    def test_array(self, value: S.Value, what: str, shape: Shape, dtype: np.dtype) -> np.ndarray:
        """One array of a test's input or expect, checked by `test_shape`; a file's declared
        shape is checked before any of its data is read."""
        if isinstance(value, S.Call):

            def accept(declared: tuple[int, ...]) -> None:
                self.test_shape(declared, shape, what, value.loc)

            array = self.load(value, None, dtype, accept)
        else:
            array = W.literal_array(value, what, dtype)
        self.test_shape(array.shape, shape, what, value.loc)
        return array

    def test_shape(self, given: tuple[int, ...], shape: Shape, what: str, loc: Loc) -> None:
        """One sample (`shape`) or a batch of them (N, *shape), of at most MAX_TEST_VALUES."""
        if not (given == shape or (len(given) == len(shape) + 1 and given[1:] == shape)):
            verb = "takes" if what.startswith("input") else "gives"
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


# --------------------------------------------------------------------------- forward blocks


class _Unifier:
    """Per-sample shapes as variables in classes (union-find): a class's shape is known once
    any of its members' is. A callback given to `when_known` runs once its class is known;
    callbacks wait in a queue that `run` drains, so that no chain of inferences recurses.

    A known class remembers where its shape came from (`origin`, None for an annotation), for
    messages that say why a value has the shape it has."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.shape: list[Shape | None] = []
        self.origin: list[Loc | None] = []
        self.waiting: list[list[Callable[[Shape], None]]] = []
        self.ready: deque[tuple[Callable[[Shape], None], Shape]] = deque()

    def new(self) -> int:
        self.parent.append(len(self.parent))
        self.size.append(1)
        self.shape.append(None)
        self.origin.append(None)
        self.waiting.append([])
        return len(self.parent) - 1

    def find(self, var: int) -> int:
        root = var
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[var] != root:  # path compression
            self.parent[var], var = root, self.parent[var]
        return root

    def known(self, var: int) -> Shape | None:
        return self.shape[self.find(var)]

    def origin_of(self, var: int) -> Loc | None:
        return self.origin[self.find(var)]

    def set(
        self, var: int, shape: Shape, origin: Loc | None, conflict: Callable[[Shape], Exception]
    ) -> None:
        """The class of `var` has `shape`; `conflict(known)` is the error when it has another."""
        root = self.find(var)
        known = self.shape[root]
        if known is None:
            self.shape[root], self.origin[root] = shape, origin
            self.wake(root)
        elif known != shape:
            raise conflict(known)

    def union(self, a: int, b: int, conflict: Callable[[Shape, Shape], Exception]) -> None:
        """`a` and `b` have one shape; `conflict(shape_a, shape_b)` is the error when both are
        known and differ."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        sa, sb = self.shape[ra], self.shape[rb]
        if sa is not None and sb is not None and sa != sb:
            raise conflict(sa, sb)
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        self.waiting[ra].extend(self.waiting[rb])
        self.waiting[rb] = []
        if self.shape[ra] is None and self.shape[rb] is not None:
            self.shape[ra], self.origin[ra] = self.shape[rb], self.origin[rb]
        if self.shape[ra] is not None:
            self.wake(ra)

    def when_known(self, var: int, callback: Callable[[Shape], None]) -> None:
        root = self.find(var)
        shape = self.shape[root]
        if shape is None:
            self.waiting[root].append(callback)
        else:
            self.ready.append((callback, shape))

    def when_all_known(self, variables: Sequence[int], callback: Callable[[], None]) -> None:
        pending = list(reversed(variables))

        def step(_: Shape | None = None) -> None:
            while pending:
                if self.known(pending[-1]) is None:
                    self.when_known(pending[-1], step)
                    return
                pending.pop()
            callback()

        step()

    def wake(self, root: int) -> None:
        shape = self.shape[root]
        assert shape is not None
        self.ready.extend((callback, shape) for callback in self.waiting[root])
        self.waiting[root] = []

    def run(self) -> None:
        while self.ready:
            callback, shape = self.ready.popleft()
            callback(shape)


def _fresh(known: Shape) -> Exception:
    """The conflict of setting a variable that cannot be known yet: a bug if it happens."""
    return AssertionError(f"a fresh shape variable is already {known}")


def _operands(node: S.Expr) -> tuple[S.Expr, ...]:
    """The subexpressions of an expression node, in source order."""
    if isinstance(node, S.Apply):
        return node.args
    if isinstance(node, S.BinOp):
        return (node.left, node.right)
    if isinstance(node, S.Neg):
        return (node.operand,)
    return ()


def _features(shape: Shape) -> str:
    """ "3 features" or "shape (2, 3)": the size of a value, for messages."""
    if len(shape) == 1:
        return f"{shape[0]} feature{'' if shape[0] == 1 else 's'}"
    return f"shape {fmt_shape(shape)}"


def _expects(shape: Shape) -> str:
    return f"{shape[0]} input features" if len(shape) == 1 else f"input of shape {fmt_shape(shape)}"


_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul}


@dataclass(frozen=True)
class _Checked:
    graph: ir.Graph
    layer_shapes: dict[str, tuple[Shape, Shape]]  # (in, out) of every layer of a kind
    warnings: list[LayercWarning]


class _Forward:
    """A model's forward block, checked: every name bound once and before use, every call of a
    layer of the model (or of cat) with the right number of values, and every value's per-sample
    shape inferred. Shapes are found by unification (`_Unifier`): a call of a layer makes its
    argument take the layer's input shape (one shape for all calls of a layer, as its kernel is
    compiled for one), + - * make their two values one shape, shape-keeping layers and
    operations pass a shape through in either direction, and a layer whose kind fixes its input
    (a Linear's in_features) gives that shape to a value nothing has fixed before its call.
    Expressions are walked with an explicit stack; operations nest at most
    syntax.MAX_EXPRESSION_DEPTH deep, which the parser enforces and trees built otherwise are
    held to here (the generated forward writes each statement as one Python line)."""

    def __init__(
        self,
        model: S.ModelDef,
        forward: S.ForwardDef,
        children: dict[str, ir.Submodel | _Built],
        nodes: dict[str, S.LayerDef],
        dtype: np.dtype,
        models: set[str],
    ):
        self.model = model
        self.forward = forward
        self.children = children
        self.nodes = nodes
        self.dtype = dtype
        self.models = models  # the models defined above, for messages
        self.shapes = _Unifier()
        self.var: list[int] = []  # value id -> its shape variable
        self.defined_at: list[Loc] = []  # value id -> where it is computed
        self.scope: dict[str, int] = {}  # name -> value id, for the names bound so far
        self.bound_at: dict[str, Loc] = {}
        self.inputs: dict[str, S.Input] = {}
        self.statements: dict[str, S.Assign] = {}  # each statement's name -> its first binding
        self.used: set[str] = set()  # names read by some expression
        # layer name -> its input and output shape variables, from its first call on
        self.layer_vars: dict[str, tuple[int, int]] = {}
        self.first_call: dict[str, tuple[S.Apply, int]] = {}  # with the value it is given
        self.ops: list[ir.Op] = []  # the operations of the statement being checked

    # ------------------------------------------------------------------ the whole block

    def run(self) -> _Checked:
        inputs = [self.input(node) for node in self.forward.inputs]
        if not inputs:
            raise LayercError(
                f"forward of model {self.model.name!r} takes no inputs; write forward(x)",
                self.forward.loc,
            )
        for statement in reversed(self.forward.body):
            self.statements[statement.name] = statement
        body: list[tuple[S.Assign, list[ir.Op], int]] = []
        for statement in self.forward.body:
            self.bind(statement)
            self.ops = []
            value = self.expression(statement.value)
            if isinstance(value, ir.Const):
                raise LayercError(
                    f"{statement.name!r} would be the number {value.value!r}: a statement binds "
                    "a value computed from forward's inputs, so write the number where it is used",
                    statement.loc,
                )
            self.scope[statement.name] = value
            self.bound_at[statement.name] = statement.loc
            body.append((statement, self.ops, value))
        result = self.forward.result
        if not result.values:
            raise LayercError("return needs at least one value", result.loc)
        self.ops = []
        outputs = []
        for expr in result.values:
            value = self.expression(expr)
            if isinstance(value, ir.Const):
                raise LayercError(
                    "return gives a number: forward returns values computed from its inputs",
                    expr.loc,
                )
            outputs.append(value)
        for node, value in zip(self.forward.inputs, inputs, strict=True):
            if self.shapes.known(self.var[value]) is None:
                raise self.unknown_input(node)
        graph = ir.Graph(
            tuple(
                ir.Input(node.name, value, self.shape(value), node.loc)
                for node, value in zip(self.forward.inputs, inputs, strict=True)
            ),
            tuple(
                ir.Assign(node.name, self.finished(ops), value, node.loc)
                for node, ops, value in body
            ),
            ir.Return(self.finished(self.ops), tuple(outputs), result.loc),
        )
        return _Checked(graph, self.layer_shapes(), self.warnings(body))

    def shape(self, value: int) -> Shape:
        shape = self.shapes.known(self.var[value])
        assert shape is not None, f"value {value} of {self.model.name} has no shape"
        return shape

    def finished(self, ops: list[ir.Op]) -> tuple[ir.Op, ...]:
        """The operations with their inferred shapes."""
        return tuple(dataclasses.replace(op, shape=self.shape(op.out)) for op in ops)

    def new_value(self, var: int, loc: Loc) -> int:
        self.var.append(var)
        self.defined_at.append(loc)
        return len(self.var) - 1

    def mismatch(self, text: str, loc: Loc) -> LayercError:
        return LayercError(f"shape mismatch in model {self.model.name!r}: {text}", loc)

    # ------------------------------------------------------------------ names

    def input(self, node: S.Input) -> int:
        name = node.name
        if name in self.inputs:
            raise LayercError(f"input {name!r} is given twice", node.loc)
        if name in self.children:
            raise LayercError(
                f"input {name!r} has the name of a layer of model {self.model.name!r}; "
                "give it another name",
                node.loc,
            )
        var = self.shapes.new()
        if node.shape is not None:
            self.check_annotation(node, node.shape)
            self.shapes.set(var, node.shape, None, _fresh)
        value = self.new_value(var, node.loc)
        self.inputs[name] = node
        self.scope[name] = value
        self.bound_at[name] = node.loc
        return value

    def check_annotation(self, node: S.Input, shape: Shape) -> None:
        loc = node.shape_loc or node.loc
        if not shape:
            raise LayercError(f"the shape of input {node.name!r} must not be empty", loc)
        if len(shape) > MAX_RANK:
            raise LayercError(
                f"the shape of input {node.name!r} has more than {MAX_RANK} dimensions", loc
            )
        if not all(isinstance(size, int) and 1 <= size <= MAX_FEATURES for size in shape):
            raise LayercError(
                f"the shape of input {node.name!r} must be of integers from 1 to {MAX_FEATURES}",
                loc,
            )
        if math.prod(shape) > MAX_FEATURES:
            raise LayercError(
                f"the shape of input {node.name!r} holds more than {MAX_FEATURES} values in all",
                loc,
            )

    def bind(self, statement: S.Assign) -> None:
        name = statement.name
        if name in self.inputs:
            raise LayercError(
                f"{name!r} is an input of forward; each name is bound once", statement.loc
            )
        if name in self.scope:
            raise LayercError(
                f"{name!r} is already bound (line {self.bound_at[name].line}); each name is "
                "bound once",
                statement.loc,
            )
        if name in self.children:
            raise LayercError(
                f"{name!r} is a layer of model {self.model.name!r}; a value cannot take its name",
                statement.loc,
            )

    def ref(self, node: S.Ref) -> int:
        name = node.name
        if name in self.scope:
            self.used.add(name)
            return self.scope[name]
        if name in self.children:
            raise LayercError(
                f"{name!r} is a layer of model {self.model.name!r}, not a value: call it, as in "
                f"{name}(x)",
                node.loc,
            )
        if name in self.statements:
            line = self.statements[name].loc.line
            raise LayercError(f"{name!r} is used before it is bound (line {line})", node.loc)
        if name in ("inf", "nan"):
            raise LayercError(
                f"unknown name {name!r}: the numbers of a forward block are finite", node.loc
            )
        raise LayercError(f"unknown name {name!r}{suggest(name, list(self.scope))}", node.loc)

    def describe(self, expr: S.Expr, value: int, otherwise: str) -> str:
        """ "'h' gives 8" and the like: what a value is and its shape, for messages; with the
        line that fixed its shape when that is not where the value is computed."""
        if isinstance(expr, S.Ref):
            what = f"input {expr.name!r}" if expr.name in self.inputs else repr(expr.name)
        elif isinstance(expr, S.Apply):
            what = f"{expr.callee}(...)"
        else:
            what = otherwise
        var = self.var[value]
        shape = self.shapes.known(var)
        assert shape is not None
        origin = self.shapes.origin_of(var)
        fixed = ""
        if origin is not None and origin.line != self.defined_at[value].line:
            fixed = f" (fixed at line {origin.line})"
        return f"{what} gives {_gives(shape)}{fixed}"

    # ------------------------------------------------------------------ expressions

    def expression(self, root: S.Expr) -> int | ir.Const:
        """The value of an expression (a value id, or a number when it holds no value); its
        operations are appended to `self.ops` in execution order. Walked with an explicit
        stack: children are pushed after their parent's callee is checked (errors come in
        source order) and combined once all are done."""
        results: list[int | ir.Const] = []
        # (node, how many operations enclose it and it, whether its operands are done)
        stack: list[tuple[S.Expr, int, bool]] = [(root, 1, False)]
        while stack:
            node, depth, combine = stack.pop()
            if depth > S.MAX_EXPRESSION_DEPTH and isinstance(node, (S.Apply, S.BinOp, S.Neg)):
                raise LayercError(
                    f"this expression nests operations more than {S.MAX_EXPRESSION_DEPTH} "
                    "deep; split it into several statements",
                    node.loc,
                )
            if isinstance(node, S.Ref):
                results.append(self.ref(node))
            elif isinstance(node, S.Num):
                results.append(self.number(node))
            elif not combine:
                if isinstance(node, S.Apply):
                    self.check_callee(node)
                stack.append((node, depth, True))
                stack.extend((child, depth + 1, False) for child in reversed(_operands(node)))
            else:
                count = len(_operands(node))
                args = results[len(results) - count :]
                del results[len(results) - count :]
                results.append(self.combine(node, args))
            self.shapes.run()
        (result,) = results
        return result

    def combine(self, node: S.Expr, args: list[int | ir.Const]) -> int | ir.Const:
        if isinstance(node, S.Apply):
            return self.call(node, args)
        if isinstance(node, S.Neg):
            (operand,) = args
            if isinstance(operand, ir.Const):
                return self.constant(-operand.value, node.loc)
            out = self.new_value(self.var[operand], node.loc)
            self.ops.append(ir.Neg(out, operand, (), node.loc))
            return out
        assert isinstance(node, S.BinOp)
        return self.binary(node, args[0], args[1])

    def number(self, node: S.Num) -> ir.Const:
        """A number follows the rule for literals in the model's dtype (an integer the dtype
        cannot hold exactly, or a decimal that overflows it, is an error); it must be finite."""
        kind = S.number_kind(node.text)
        if kind == S.SPECIAL:
            raise LayercError(f"{node.text} is not a finite number", node.loc)
        W.literal_array(
            S.Number(node.value, kind == S.INT, node.text, node.loc), "number", self.dtype
        )
        return ir.Const(node.value)

    def constant(self, value: float, loc: Loc) -> ir.Const:
        """A number computed from numbers (in float64, as Python would): it must be finite in
        the model's dtype."""
        with np.errstate(over="ignore"):
            fits = math.isfinite(value) and bool(np.isfinite(self.dtype.type(value)))
        if not fits:
            raise LayercError(f"this gives {value!r}, which overflows {self.dtype.name}", loc)
        return ir.Const(value)

    def binary(self, node: S.BinOp, left: int | ir.Const, right: int | ir.Const) -> int | ir.Const:
        if node.op not in _BINARY:
            raise LayercError(f"unknown operator {node.op!r} (operators: + - *)", node.loc)
        if isinstance(left, ir.Const) and isinstance(right, ir.Const):
            return self.constant(_BINARY[node.op](left.value, right.value), node.loc)
        if isinstance(left, ir.Const) or isinstance(right, ir.Const):
            value = right if isinstance(left, ir.Const) else left
            assert isinstance(value, int)
            var = self.var[value]
        else:
            l_value, r_value = left, right

            def conflict(a: Shape, b: Shape) -> LayercError:
                sides = (
                    self.describe(node.left, l_value, "the left side"),
                    self.describe(node.right, r_value, "the right side"),
                )
                return self.mismatch(
                    f"'{node.op}' needs two values of one shape, but {sides[0]} and {sides[1]}",
                    node.loc,
                )

            self.shapes.union(self.var[left], self.var[right], conflict)
            var = self.var[left]
        out = self.new_value(var, node.loc)
        self.ops.append(ir.BinOp(out, node.op, left, right, (), node.loc))
        return out

    # ------------------------------------------------------------------ calls

    def check_callee(self, node: S.Apply) -> None:
        """What is called exists and takes as many values as it is given."""
        callee, count = node.callee, len(node.args)
        given = f"{count} {'is' if count == 1 else 'are'} given"
        if callee == "cat":
            if count < 2:
                raise LayercError(f"cat takes at least two values, but {given}", node.loc)
            return
        child = self.children.get(callee)
        if child is None:
            raise self.not_callable(node)
        if isinstance(child, ir.Submodel):
            sub = child.model
            if len(sub.out_shapes) != 1:
                raise LayercError(
                    f"layer {callee!r} (model {sub.name!r}) returns {len(sub.out_shapes)} values, "
                    "but a call gives one value: a model with several outputs cannot be called "
                    "from another's forward",
                    node.loc,
                )
            takes = len(sub.in_shapes)
            if count != takes:
                names = ""
                if sub.graph is not None:
                    names = f" ({', '.join(i.name for i in sub.graph.inputs)})"
                plural = "argument" if takes == 1 else "arguments"
                raise LayercError(
                    f"layer {callee!r} (model {sub.name!r}) takes {takes} {plural}{names}, but "
                    f"{given}",
                    node.loc,
                )
        elif count != 1:
            raise LayercError(f"layer {callee!r} takes one argument, but {given}", node.loc)

    def not_callable(self, node: S.Apply) -> LayercError:
        callee, model = node.callee, self.model.name
        if callee in self.scope or callee in self.statements:
            text = (
                f"{callee!r} is a value, not a layer: forward calls the layers of model "
                f"{model!r} and cat"
            )
        elif callee in KINDS:
            text = (
                f"{callee} is a layer kind, not a layer of model {model!r}: declare one in the "
                f"model (such as {callee.lower()} = {callee}(...)) and call it by its name"
            )
        elif callee in self.models:
            text = (
                f"{callee!r} is a model, not a layer of model {model!r}: declare it in the model "
                f"(such as {callee.lower()} = {callee}()) and call it by its name"
            )
        else:
            options = [*self.children, "cat"]
            text = f"unknown layer {callee!r} in model {model!r}{suggest(callee, options)}"
        return LayercError(text, node.loc)

    def call(self, node: S.Apply, args: list[int | ir.Const]) -> int:
        values: list[int] = []
        for arg, expr in zip(args, node.args, strict=True):
            if isinstance(arg, ir.Const):
                raise LayercError(f"{node.callee} takes values, not numbers", expr.loc)
            values.append(arg)
        if node.callee == "cat":
            return self.cat(node, values)
        name = node.callee
        child = self.children[name]
        self.first_call.setdefault(name, (node, values[0]))
        if isinstance(child, ir.Submodel):
            for index, value in enumerate(values):
                self.submodel_input(node, child, index, value)
            out_var = self.shapes.new()
            self.shapes.set(out_var, child.model.out_shapes[0], node.loc, _fresh)
        else:
            in_var, out_var = self.layer_variables(name, child)
            value = values[0]
            first, _ = self.first_call[name]

            def conflict(given: Shape, taken: Shape) -> LayercError:
                return self.mismatch(
                    f"layer {name!r} is called on {_features(given)} here but on "
                    f"{_features(taken)} at line {first.loc.line}; a layer is compiled for one "
                    "input shape, so declare another layer for this call",
                    node.loc,
                )

            self.shapes.union(self.var[value], in_var, conflict)
            fixed = child.spec.fixes(child.args.values)
            if fixed is not None and self.shapes.known(in_var) is None:
                # A value nothing else has fixed yet takes the input the kind fixes (a Linear:
                # (in_features,)), as a pipeline's input does; annotations ask for others.
                self.shapes.set(in_var, fixed, node.loc, _fresh)
        out = self.new_value(out_var, node.loc)
        self.ops.append(ir.Call(out, name, tuple(values), (), node.loc))
        return out

    def submodel_input(self, node: S.Apply, child: ir.Submodel, index: int, value: int) -> None:
        sub = child.model
        wanted = sub.in_shapes[index]
        which = ""
        if len(sub.in_shapes) > 1:
            assert sub.graph is not None
            which = f" for its input {sub.graph.inputs[index].name!r}"

        def conflict(known: Shape) -> LayercError:
            gives = self.describe(node.args[index], value, "its argument")
            return self.mismatch(
                f"layer {child.name!r} (model {sub.name!r}) expects {_expects(wanted)}{which}, "
                f"but {gives}",
                node.loc,
            )

        self.shapes.set(self.var[value], wanted, node.loc, conflict)

    def layer_variables(self, name: str, built: _Built) -> tuple[int, int]:
        """The shape variables of a layer's input and output, made at its first call: one
        variable for both when the kind keeps the shape; otherwise the output is computed by
        the kind's shape rule once the input is known. Either way the rule checks the input."""
        if name in self.layer_vars:
            return self.layer_vars[name]
        spec, args = built.spec, built.args
        in_var = self.shapes.new()
        out_var = in_var if spec.keeps_shape else self.shapes.new()
        self.layer_vars[name] = (in_var, out_var)

        def apply_rule(shape: Shape) -> None:
            try:
                out = spec.shape(args.values, shape)
            except ShapeError as error:
                raise self.layer_error(name, built, error) from None
            if out_var != in_var:
                call, _ = self.first_call[name]

                def conflict(known: Shape) -> LayercError:
                    return self.mismatch(
                        f"layer {name!r} gives {_gives(out)} here, but its result is used as "
                        f"{_gives(known)}{self.fixed_at(out_var)}",
                        call.loc,
                    )

                self.shapes.set(out_var, out, call.loc, conflict)

        self.shapes.when_known(in_var, apply_rule)
        return in_var, out_var

    def fixed_at(self, var: int) -> str:
        origin = self.shapes.origin_of(var)
        return f" (line {origin.line})" if origin is not None else ""

    def layer_error(self, name: str, built: _Built, error: ShapeError) -> LayercError:
        """A layer's shape rule refused its input: reported at its first call, as the
        pipeline reports it (an argument at fault that the source gives is pointed at)."""
        call, value = self.first_call[name]
        if not error.mismatch:
            given = error.arg is not None and error.arg in built.args.given
            loc = built.args.loc(error.arg) if given and error.arg is not None else call.loc
            return LayercError(error.message, loc)
        line = self.nodes[name].loc.line
        gives = self.describe(call.args[0], value, "its argument")
        return self.mismatch(f"layer {name!r} (line {line}) {error.message}, but {gives}", call.loc)

    def cat(self, node: S.Apply, values: list[int]) -> int:
        out_var = self.shapes.new()

        def concatenate() -> None:
            shapes = [self.shape(value) for value in values]
            first = shapes[0]
            for index, shape in enumerate(shapes[1:], 1):
                if len(shape) != len(first) or shape[:-1] != first[:-1]:
                    a = self.describe(node.args[0], values[0], "the first value")
                    b = self.describe(node.args[index], values[index], f"value {index + 1}")
                    raise self.mismatch(
                        f"cat joins values along their last axis, so their other axes must "
                        f"agree, but {a} and {b}",
                        node.loc,
                    )
            out = (*first[:-1], sum(shape[-1] for shape in shapes))
            if math.prod(out) > MAX_FEATURES:
                raise LayercError(
                    f"cat gives {math.prod(out)} values per sample; a value holds at most "
                    f"{MAX_FEATURES}",
                    node.loc,
                )

            def conflict(known: Shape) -> LayercError:
                return self.mismatch(
                    f"cat gives {_gives(out)} here, but its result is used as {_gives(known)}"
                    f"{self.fixed_at(out_var)}",
                    node.loc,
                )

            self.shapes.set(out_var, out, node.loc, conflict)

        self.shapes.when_all_known([self.var[value] for value in values], concatenate)
        out = self.new_value(out_var, node.loc)
        self.ops.append(ir.Cat(out, tuple(values), (), node.loc))
        return out

    # ------------------------------------------------------------------ what is left

    def unknown_input(self, node: S.Input) -> LayercError:
        name = node.name
        example = f"{name}: 8, or {name}: [1, 28, 28]"
        if name not in self.used:
            return LayercError(
                f"input {name!r} is never used, so nothing fixes its shape: remove it, or "
                f"annotate it ({example})",
                node.loc,
            )
        return LayercError(
            f"no layer or operation fixes the shape of input {name!r}: annotate it, as in "
            f"forward({example})",
            node.loc,
        )

    def layer_shapes(self) -> dict[str, tuple[Shape, Shape]]:
        """(in, out) per-sample shapes of each layer of a kind: those of its calls; a layer
        never called gets the input its kind fixes, or one feature when its kind keeps any
        shape (its module takes any shape then)."""
        result = {}
        for name, built in self.children.items():
            if isinstance(built, ir.Submodel):
                continue
            if name in self.layer_vars:
                in_var, out_var = self.layer_vars[name]
                in_shape, out_shape = self.shapes.known(in_var), self.shapes.known(out_var)
                assert in_shape is not None and out_shape is not None
                result[name] = (in_shape, out_shape)
                continue
            spec, args = built.spec, built.args.values
            fixed = spec.fixes(args)
            if fixed is None and not spec.keeps_shape:
                raise LayercError(
                    f"layer {name!r} is never called in forward, so nothing gives it an input "
                    "shape: call it, or remove it",
                    self.nodes[name].loc,
                )
            shape = fixed if fixed is not None else (1,)
            result[name] = (shape, spec.shape(args, shape))
        return result

    def warnings(self, body: list[tuple[S.Assign, list[ir.Op], int]]) -> list[LayercWarning]:
        """Layers never called, and inputs and values never used, in source order."""
        found = [
            LayercWarning(f"layer {name!r} is never called in forward", node.loc)
            for name, node in self.nodes.items()
            if name not in self.first_call
        ]
        found += [
            LayercWarning(f"input {name!r} is never used", node.loc)
            for name, node in self.inputs.items()
            if name not in self.used
        ]
        found += [
            LayercWarning(f"{node.name!r} is bound but never used", node.loc)
            for node, _, _ in body
            if node.name not in self.used
        ]
        return sorted(found, key=lambda w: (w.loc.line, w.loc.col))
