"""The resolved model: what the checker produces and what the lowering stage reads.

Names are bound, per-sample shapes known and weights are NumPy arrays of the model's dtype. Every
layer is a `Layer` of a kind in `kinds.KINDS` (its bound arguments, its weights and buffers in
state_dict order), or a `Submodel`. A pipeline runs its layers in order; a graph model (one with
a `forward` block) holds a `Graph`: its inputs, its statements as operations in SSA form, and
its outputs. `walk` is the one walk over nested models; `verify` re-checks the invariants the
later stages rely on, and tests call it after checking.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import LayercWarning, Loc
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
    # A Linear of a model with quantize=int8: int8 weights, inputs quantised at run time
    # (layerc/runtime/q8.py). Its tensors keep the float values the model was written with.
    quantized: bool = False

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
    """A model used as a layer of another; it keeps its own fixed weights. In a pipeline it
    takes one value and gives one; a graph model calls it with as many values as its forward
    has inputs, and it gives one (a model of several outputs cannot be called)."""

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


# --------------------------------------------------------------------------- graphs
# A graph model's forward, in SSA form: every value has an id (an int, unique in the graph) and a
# per-sample shape; inputs define the first ids, then every operation defines one, in execution
# order. Statements keep the source's structure: each `name = expr` holds the operations that
# compute its expression (the root last) and the value it binds, so the generated `forward` can
# be written one Python line per statement.


@dataclass(frozen=True)
class Const:
    """A number in an expression (`x * 0.5`); number-only subexpressions are folded (in
    float64, as Python computes them in a torch forward)."""

    value: float


Operand = int | Const  # a value id, or a number


@dataclass(frozen=True)
class Input:
    """An input of forward: its name, the value id it defines, its per-sample shape."""

    name: str
    value: int
    shape: Shape
    loc: Loc


@dataclass(frozen=True)
class Call:
    """`out = child(args...)`: a layer of the model (one argument) or a nested model (one per
    input of its forward, giving its one output). A child may be called several times (its
    weights shared); every call of a layer has the layer's `in_shape`."""

    out: int
    child: str  # the name of one of the model's layers
    args: tuple[int, ...]
    shape: Shape
    loc: Loc  # the callee's name


@dataclass(frozen=True)
class BinOp:
    """`out = left op right`, op one of + - *, elementwise: both sides values of one shape, or
    one side a number."""

    out: int
    op: str
    left: Operand
    right: Operand
    shape: Shape
    loc: Loc  # the operator


@dataclass(frozen=True)
class Neg:
    """`out = -operand`."""

    out: int
    operand: int
    shape: Shape
    loc: Loc


@dataclass(frozen=True)
class Cat:
    """`out = cat(args...)` along the last axis: the other axes agree, the last ones add up."""

    out: int
    args: tuple[int, ...]
    shape: Shape
    loc: Loc


Op = Call | BinOp | Neg | Cat
BINARY_OPS = ("+", "-", "*")


@dataclass(frozen=True)
class Assign:
    """`name = expr`: `ops` compute the expression in execution order, its root last, and
    `value` is what `name` is bound to (the root, or an earlier value when the expression is a
    bare name and `ops` is empty)."""

    name: str
    ops: tuple[Op, ...]
    value: int
    loc: Loc  # the name


@dataclass(frozen=True)
class Return:
    """`return expr, ...`: `ops` compute the expressions, `values` are the outputs in order."""

    ops: tuple[Op, ...]
    values: tuple[int, ...]
    loc: Loc


@dataclass(frozen=True, eq=False)
class Graph:
    inputs: tuple[Input, ...]
    body: tuple[Assign, ...]
    result: Return

    @property
    def outputs(self) -> tuple[int, ...]:
        return self.result.values

    def ops(self) -> Iterator[Op]:
        """Every operation in execution order: the statements', then the return's."""
        for statement in self.body:
            yield from statement.ops
        yield from self.result.ops

    def shapes(self) -> dict[int, Shape]:
        """The per-sample shape of every value, by id."""
        shapes = {i.value: i.shape for i in self.inputs}
        shapes.update((op.out, op.shape) for op in self.ops())
        return shapes

    @cached_property
    def output_shapes(self) -> tuple[Shape, ...]:
        """The per-sample shape of each output, in return order."""
        shapes = self.shapes()
        return tuple(shapes[value] for value in self.outputs)

    def calls(self, child: str) -> list[Call]:
        """The calls of the child named `child`, in execution order."""
        return [op for op in self.ops() if isinstance(op, Call) and op.child == child]


@dataclass(frozen=True, eq=False)
class Model:
    name: str
    dtype: np.dtype
    layers: tuple[Child, ...]  # in declaration order, which is state_dict order
    # per sample: the model takes (*in_shape) or (*, *in_shape); a graph model's first input's
    in_shape: Shape
    out_shape: Shape  # a graph model's first output's
    loc: Loc
    allow_nonfinite: bool = False
    graph: Graph | None = None  # a graph model's forward; None: a pipeline
    quantize: str | None = None  # "int8": its own Linear layers are quantized (Layer.quantized)

    @property
    def in_shapes(self) -> tuple[Shape, ...]:
        """The per-sample shape of each input, in forward order (a pipeline has one)."""
        if self.graph is None:
            return (self.in_shape,)
        return tuple(i.shape for i in self.graph.inputs)

    @property
    def out_shapes(self) -> tuple[Shape, ...]:
        """The per-sample shape of each output, in return order (a pipeline has one)."""
        if self.graph is None:
            return (self.out_shape,)
        return self.graph.output_shapes

    def child(self, name: str) -> Child:
        """The layer or nested model named `name`."""
        (found,) = [child for child in self.layers if child.name == name]
        return found

    @property
    def in_features(self) -> int:
        """Values per input sample (the feature count when the input is 1-D)."""
        return math.prod(self.in_shape)

    @property
    def out_features(self) -> int:
        return math.prod(self.out_shape)


@dataclass(frozen=True, eq=False)
class TestCase:
    """A test block: one array per input and per output of the model, in forward order (each
    one sample, or all a batch of the same number of samples). Inputs are of the model's
    dtype, expectations float64."""

    model: Model
    inputs: tuple[np.ndarray, ...]
    expects: tuple[np.ndarray, ...]
    atol: float
    rtol: float
    loc: Loc

    @property
    def input(self) -> np.ndarray:
        """The input of a test of a model that takes one."""
        (array,) = self.inputs
        return array

    @property
    def expect(self) -> np.ndarray:
        """The expected output of a test of a model that gives one."""
        (array,) = self.expects
        return array


@dataclass(frozen=True, eq=False)
class Program:
    source: str  # the source file's name as given to the compiler (basename in generated code)
    models: tuple[Model, ...]
    tests: tuple[TestCase, ...] = field(default=())
    # The files the program was read from: the source as given, then each file a `load(...)`
    # names, in order. No command writes its output over one of them.
    inputs: tuple[Path, ...] = field(default=())
    # What the checker found legal but probably unintended (a value never used), in source order.
    warnings: tuple[LayercWarning, ...] = field(default=())


def unquantized(program: Program) -> Program:
    """`program` with every model as written but without quantize=int8: the float models that
    `layerc test` and `layerc summary` measure a quantised model's error against."""
    done: dict[str, Model] = {}

    def plain(model: Model) -> Model:
        if model.name not in done:
            layers: list[Child] = []
            for child in model.layers:
                if isinstance(child, Submodel):
                    layers.append(dataclasses.replace(child, model=plain(child.model)))
                else:
                    layers.append(dataclasses.replace(child, quantized=False))
            done[model.name] = dataclasses.replace(model, layers=tuple(layers), quantize=None)
        return done[model.name]

    models = tuple(plain(model) for model in program.models)
    tests = tuple(dataclasses.replace(t, model=done[t.model.name]) for t in program.tests)
    return dataclasses.replace(program, models=models, tests=tests)


def quantized(model: Model) -> bool:
    """Whether any Linear of `model`, nested models included, is quantised."""
    return any(layer.quantized for _, layer in layers(model))


def heading(model: Model) -> str:
    """How `layerc summary` and `layerc graph` title `model`: its name, dtype and, when any of
    its Linear layers are quantised, `quantize=int8`: `MLP (float32, quantize=int8)`."""
    quantize = ", quantize=int8" if quantized(model) else ""
    return f"{model.name} ({model.dtype.name}{quantize})"


# --------------------------------------------------------------------------- the walker


def walk(model: Model, prefix: str = "", *, submodels: bool = False) -> Iterator[tuple[str, Child]]:
    """Every layer of `model` in declaration order (a pipeline's execution order, and always
    state_dict order), with its path from the model ("enc.fc", the prefix of its state_dict
    keys): nested models are expanded in place and, with `submodels`, yielded themselves just
    before their layers."""
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


# --------------------------------------------------------------------------- inlined graphs


@dataclass(frozen=True)
class FlatCall:
    """`out = layer(source)`: the layer at `path` from the model (a layer called twice appears
    once per call)."""

    path: str
    layer: Layer
    source: int
    out: int


@dataclass(frozen=True)
class FlatArith:
    """`out = a op b` (op `+ - *`) or `out = -a` (op "neg"); an operand is a value or a number."""

    op: str
    operands: tuple[int | float, ...]
    out: int


@dataclass(frozen=True)
class FlatCat:
    """`out = cat(sources)` along the last axis."""

    sources: tuple[int, ...]
    out: int


FlatOp = FlatCall | FlatArith | FlatCat


@dataclass(frozen=True, eq=False)
class Inlined:
    """A model's computation with nested models inlined: operations on value ids in execution
    order (a pipeline is a chain of calls), from the inputs' ids to the outputs'."""

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    ops: tuple[FlatOp, ...]
    shapes: dict[int, Shape]  # every value's per-sample shape

    def reads(self, op: FlatOp) -> tuple[int, ...]:
        """The values `op` reads."""
        if isinstance(op, FlatCall):
            return (op.source,)
        if isinstance(op, FlatArith):
            return tuple(o for o in op.operands if isinstance(o, int))
        return op.sources


def inline(model: Model) -> Inlined:
    """`model`'s forward (a graph model's block, a pipeline's chain) with every nested model's
    operations put in place of its call, and each layer named by its path ("b1.fc1")."""
    shapes: dict[int, Shape] = {}
    ops: list[FlatOp] = []

    def value(shape: Shape) -> int:
        shapes[len(shapes)] = shape
        return len(shapes) - 1

    def call(child: Child, path: str, args: list[int]) -> list[int]:
        if isinstance(child, Submodel):
            return expand(child.model, path + ".", args)
        (source,) = args
        out = value(child.out_shape)
        ops.append(FlatCall(path, child, source, out))
        return [out]

    def expand(model: Model, prefix: str, inputs: list[int]) -> list[int]:
        graph = model.graph
        if graph is None:
            (current,) = inputs
            for child in model.layers:
                (current,) = call(child, prefix + child.name, [current])
            return [current]
        env = {i.value: v for i, v in zip(graph.inputs, inputs, strict=True)}

        def operand(o: Operand) -> int | float:
            return o.value if isinstance(o, Const) else env[o]

        for op in graph.ops():
            if isinstance(op, Call):
                outs = call(model.child(op.child), prefix + op.child, [env[a] for a in op.args])
                env[op.out] = outs[0]
                continue
            out = value(op.shape)
            if isinstance(op, BinOp):
                ops.append(FlatArith(op.op, (operand(op.left), operand(op.right)), out))
            elif isinstance(op, Neg):
                ops.append(FlatArith("neg", (env[op.operand],), out))
            else:
                ops.append(FlatCat(tuple(env[a] for a in op.args), out))
            env[op.out] = out
        return [env[v] for v in graph.outputs]

    inputs = tuple(value(shape) for shape in model.in_shapes)
    outputs = tuple(expand(model, "", list(inputs)))
    return Inlined(inputs, outputs, tuple(ops), shapes)


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
        _verify_test(test, seen)


def _verify_test(test: TestCase, defined: set[str]) -> None:
    model = test.model
    if model.name not in defined:
        raise IRError(f"test refers to unknown model {model.name!r}")
    if len(test.inputs) != len(model.in_shapes) or len(test.expects) != len(model.out_shapes):
        raise IRError(
            f"test of {model.name}: {len(test.inputs)} inputs, {len(test.expects)} outputs"
        )
    batches = set()
    pairs = [
        *zip(test.inputs, model.in_shapes, strict=True),
        *zip(test.expects, model.out_shapes, strict=True),
    ]
    for array, shape in pairs:
        batch = array.shape[: array.ndim - len(shape)]
        if array.shape[len(batch) :] != shape or len(batch) > 1:
            raise IRError(f"test array of shape {array.shape} for {model.name}: {shape}")
        batches.add(batch)
    if len(batches) != 1:
        raise IRError(f"test of {model.name}: batches {sorted(batches)}")
    if any(array.dtype != model.dtype for array in test.inputs):
        raise IRError(f"test of {model.name}: input dtype")


def _verify_model(model: Model, defined: set[str]) -> None:
    if model.dtype not in DTYPES.values():
        raise IRError(f"{model.name}: dtype {model.dtype}")
    names = [layer.name for layer in model.layers]
    if len(set(names)) != len(names):
        raise IRError(f"{model.name}: duplicate layer names {names}")
    for layer in model.layers:
        where = f"{model.name}.{layer.name}"
        if isinstance(layer, Submodel):
            if layer.model.name not in defined or layer.model.dtype != model.dtype:
                raise IRError(f"{where}: submodel {layer.model.name}")
            if len(layer.model.out_shapes) != 1:
                raise IRError(f"{where}: submodel {layer.model.name} gives several outputs")
        else:
            _verify_layer(layer, model, where)
    if model.graph is None:
        _verify_pipeline(model)
    else:
        _verify_graph(model, model.graph)


def _verify_pipeline(model: Model) -> None:
    shape = model.in_shape
    for layer in model.layers:
        where = f"{model.name}.{layer.name}"
        if layer.in_shape != shape:
            raise IRError(f"{where}: takes {layer.in_shape}, gets {shape}")
        if isinstance(layer, Submodel) and len(layer.model.in_shapes) != 1:
            raise IRError(f"{where}: submodel {layer.model.name} takes several inputs")
        shape = layer.out_shape
    if shape != model.out_shape:
        raise IRError(f"{model.name}: out_shape {model.out_shape} != {shape}")


def _verify_graph(model: Model, graph: Graph) -> None:
    """Ids defined once and before use, shapes as each operation's rule gives them, every
    child called with the shape recorded on it, statements binding distinct names, and each
    statement's operations a tree (what one line of Python computes): an operation reads
    inputs, values bound by earlier statements and its own statement's operations, and each
    of those is read once, by one operation, except the statement's values."""
    name = model.name
    shapes: dict[int, Shape] = {}
    children = {child.name: child for child in model.layers}
    bound = set(children)

    def define(value: int, shape: Shape, what: str) -> None:
        if value in shapes:
            raise IRError(f"{name}: {what} defines value {value} again")
        if not shape or any(size < 1 for size in shape):
            raise IRError(f"{name}: {what} has shape {shape}")
        shapes[value] = shape

    def bind(binding: str, what: str) -> None:
        if binding in bound or binding == "cat":
            raise IRError(f"{name}: {what} binds {binding!r} again")
        bound.add(binding)

    if not graph.inputs:
        raise IRError(f"{name}: forward has no inputs")
    for i in graph.inputs:
        bind(i.name, "an input")
        define(i.value, i.shape, f"input {i.name}")
    visible = {i.value for i in graph.inputs}
    for statement in graph.body:
        _verify_ops(model, statement.ops, shapes, children, define)
        computed = {op.out for op in statement.ops}
        if statement.value not in visible and statement.value not in computed:
            raise IRError(f"{name}: {statement.name} binds undefined value {statement.value}")
        if statement.ops and statement.ops[-1].out != statement.value:
            raise IRError(f"{name}: {statement.name} binds {statement.value}, not its root")
        _verify_tree(model, statement.ops, visible, {statement.value})
        bind(statement.name, "a statement")
        visible.add(statement.value)
    _verify_ops(model, graph.result.ops, shapes, children, define)
    computed = {op.out for op in graph.result.ops}
    if not graph.outputs or any(v not in visible and v not in computed for v in graph.outputs):
        raise IRError(f"{name}: outputs {graph.outputs}")
    _verify_tree(model, graph.result.ops, visible, set(graph.outputs))
    if model.in_shape != graph.inputs[0].shape or model.out_shape != shapes[graph.outputs[0]]:
        raise IRError(f"{name}: in_shape {model.in_shape} or out_shape {model.out_shape}")


def _verify_ops(
    model: Model,
    ops: tuple[Op, ...],
    shapes: dict[int, Shape],
    children: dict[str, Child],
    define: Callable[[int, Shape, str], None],
) -> None:
    for op in ops:
        where = f"{model.name}: {type(op).__name__} {op.out}"
        operands = [a for a in _operands(op) if isinstance(a, int)]
        if any(value not in shapes for value in operands):
            raise IRError(f"{where}: uses a value not yet defined")
        given = [shapes[value] for value in operands]
        if isinstance(op, Call):
            child = children.get(op.child)
            if child is None:
                raise IRError(f"{where}: calls unknown child {op.child!r}")
            if isinstance(child, Submodel):
                takes, gives = child.model.in_shapes, child.model.out_shapes[0]
            else:
                takes, gives = (child.in_shape,), child.out_shape
            if tuple(given) != takes or op.shape != gives:
                raise IRError(f"{where}: {op.child} takes {takes}, gets {given}")
        elif isinstance(op, BinOp):
            if op.op not in BINARY_OPS or not given or len(set(given)) != 1:
                raise IRError(f"{where}: {op.op} of {given}")
            if any(
                isinstance(c, Const) and not math.isfinite(c.value) for c in (op.left, op.right)
            ):
                raise IRError(f"{where}: a number that is not finite")
            if op.shape != given[0]:
                raise IRError(f"{where}: shape {op.shape} != {given[0]}")
        elif isinstance(op, Neg):
            if not given or op.shape != given[0]:
                raise IRError(f"{where}: shape {op.shape} != {given[0]}")
        else:
            leading = {shape[:-1] for shape in given}
            if len(given) < 2 or len(leading) != 1:
                raise IRError(f"{where}: cat of {given}")
            if op.shape != (*given[0][:-1], sum(shape[-1] for shape in given)):
                raise IRError(f"{where}: shape {op.shape}")
        define(op.out, op.shape, f"{type(op).__name__} {op.out}")


def _verify_tree(model: Model, ops: tuple[Op, ...], visible: set[int], roots: set[int]) -> None:
    local: dict[int, int] = {}  # operation -> how many operations read it
    for op in ops:
        for value in _operands(op):
            if isinstance(value, int) and value in local:
                local[value] += 1
            elif isinstance(value, int) and value not in visible:
                raise IRError(f"{model.name}: {type(op).__name__} {op.out} reads {value}")
        local[op.out] = 0
    for out, reads in local.items():
        if reads != (0 if out in roots else 1):
            raise IRError(f"{model.name}: value {out} is read {reads} times in its statement")


def _operands(op: Op) -> tuple[Operand, ...]:
    if isinstance(op, (Call, Cat)):
        return op.args
    if isinstance(op, BinOp):
        return (op.left, op.right)
    return (op.operand,)


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
