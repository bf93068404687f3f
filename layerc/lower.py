"""The lowering stage: a checked `ir.Program` in, a `Plan` out.

The plan is everything code generation needs to decide nothing: every numba kernel the module
holds, in emission order, with the choices behind it (which layers fuse into a Linear's
epilogue, which kernel a matrix product runs), every layer class and the
kernel it runs when hooks are registered, and for each model the steps of its fused forward, the
buffers they write and the weights the module stores. `Plan.text()` is its readable form, which
golden tests check (tests/golden/*.plan); `codegen` only renders the plan.
"""

from __future__ import annotations

import builtins
import functools
import keyword
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from . import ir
from .kinds import Channelwise, Elementwise, MatMul, Rowwise, Shape
from .runtime import quantized

# A Linear multiplies with `layerc.runtime.gemm.matmul`, register tiles of 6 samples by two
# vectors of outputs read from the weight stored transposed, for every batch size (no BLAS: no
# fixed cost per call, no packing, and faster than SciPy's BLAS at the batch sizes this project
# is for). A Linear of at most LOOPS_MAX weights runs plain loops instead: the lesson's formula
# as written, which at that size costs no more than the call into the tiles.
LOOPS_MAX = 256
LOOPS, TILES = "loops", "register tiles"


# A quantised Linear (quantize=int8) multiplies with `layerc.runtime.q8.matmul` whatever its size.
INT8 = "int8 tiles"


def matmul_path(layer: ir.Layer) -> str:
    if layer.quantized:
        return INT8
    return LOOPS if layer.in_features * layer.out_features <= LOOPS_MAX else TILES


# Models with at most this many weight values, all finite, embed them as readable literals.
INLINE_LIMIT = 4096


class LoweringError(AssertionError):
    """The lowering stage met IR it does not handle: a bug in layerc."""


# --------------------------------------------------------------------------- names


@dataclass
class Names:
    """Python names for everything generated, unique and safe: identifiers are checked, and a
    name that would clash (with a keyword, a builtin, the module's own globals or an earlier
    name) gets underscores appended."""

    taken: set[str] = field(default_factory=set)

    def claim(self, wanted: str) -> str:
        if not (wanted.isascii() and wanted.isidentifier()):
            raise LoweringError(f"failed to name {wanted!r}: not an ASCII identifier")
        name = wanted
        if name.startswith("__"):
            # Inside a class body `__x` is mangled (`_B__x`), and at module level a dunder such
            # as `__getattr__` or `__file__` changes how the module itself behaves.
            name = "_" + name.lstrip("_")
        while keyword.iskeyword(name) or hasattr(builtins, name) or name in self.taken:
            name += "_" if name.strip("_") else "x"  # "_" + "_" would be a "__" name again
        self.taken.add(name)
        return name


def dtype_tag(dtype: np.dtype) -> str:
    return {"float32": "f32", "float64": "f64"}[dtype.name]


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Fold:
    """A layer folded into a Linear's epilogue: applied to each output before it is stored."""

    path: str
    layer: ir.Layer


@dataclass(frozen=True)
class LinearKernel:
    """y = x W^T (+ b) over (n, in) rows, then the folded layers; `matmul` names the kernel."""

    name: str
    layer: ir.Layer
    dtype: np.dtype
    folds: tuple[Fold, ...]
    matmul: str  # LOOPS or TILES

    @property
    def params(self) -> tuple[str, ...]:
        """Argument names after (xs, ys): the Linear's tensors, then each fold's."""
        names = list(kernel_tensors(self.layer))
        for index, fold in enumerate(self.folds, 1):
            names += [f"e{index}_{name}" for name in kernel_tensors(fold.layer)]
        return tuple(names)


@dataclass(frozen=True)
class LayerKernel:
    """The kernel of one layer of another kind (elementwise, channelwise or rowwise), over
    C-contiguous (m, w) arrays; `ys` may be `xs`."""

    name: str
    layer: ir.Layer  # its arguments decide the code; its shapes do not
    dtype: np.dtype

    @property
    def params(self) -> tuple[str, ...]:
        return kernel_tensors(self.layer)


@dataclass(frozen=True)
class ModuleKernel:
    """What a layer's own class calls: any input (*, *accepts) (any shape when `accepts` is
    None), converted and checked, viewed as rows for `core`."""

    name: str
    core: str
    dtype: np.dtype
    accepts: Shape | None
    out_shape: Shape | None  # trailing output shape; None: the input's
    rows: int  # rows per accepted sample
    params: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """One call of the fused forward: `target = kernel(source; args)`, on (n*rows, width) views
    of buffers that hold (n, values per sample)."""

    kernel: str
    source: str  # "x", "h1", ...
    target: str  # "h2", ..., or "y"
    args: tuple[int, ...]  # indices into the forward's arguments
    layers: tuple[tuple[str, ir.Layer], ...]  # what it computes: the layer, then its folds
    rows: int
    in_width: int
    out_width: int
    matmul: str | None = None

    @property
    def in_place(self) -> bool:
        return self.source == self.target


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int  # values per sample


@dataclass(frozen=True)
class ForwardKernel:
    """A model's fused forward: every layer (nested models flattened) in one native call."""

    name: str
    model: ir.Model
    args: tuple[Arg, ...]  # (state_dict key, shape[, dtype]) in call order
    steps: tuple[Step, ...]
    buffers: tuple[Buffer, ...]
    dropped: tuple[tuple[str, ir.Layer], ...]  # left out: identity at inference, or a reshape
    # The variant that splits the rows across threads (None: a sample's output depends on the
    # other samples of the call, see `rows_independent`)
    parallel: str | None = None


@dataclass(frozen=True)
class Arith:
    """`target = a op b` (op `+ - *`), `target = -a` (op "neg") or `target = a` (op "copy"),
    elementwise over (n, width) buffers; an operand is a buffer's name or a number. `target`
    may be one of the operands."""

    op: str
    operands: tuple[str | float, ...]
    target: str
    width: int

    @property
    def in_place(self) -> bool:
        return self.target in self.operands


@dataclass(frozen=True)
class Concat:
    """`target = cat(sources)` along the last axis: on (n*rows, width) views of the buffers
    (rows: the values' other axes, which agree), each source (buffer, width) is copied into its
    columns of `target`."""

    sources: tuple[tuple[str, int], ...]
    target: str
    width: int
    rows: int = 1

    in_place = False


GraphStep = Step | Arith | Concat


@dataclass(frozen=True)
class GraphKernel:
    """A graph model's fused forward: its `forward` block (nested models inlined) in one native
    call, `kernel(x0, ..., y0, ..., params...)`. Values live in the inputs `x0...`, the
    outputs `y0...` (each output written where it is computed) and the buffers `h1...`, which
    are reused once the values they hold are dead; elementwise steps work in place on a value
    used for the last time."""

    name: str
    model: ir.Model
    args: tuple[Arg, ...]  # (state_dict key, shape[, dtype]) in call order
    steps: tuple[GraphStep, ...]
    buffers: tuple[Buffer, ...]
    dropped: tuple[tuple[str, ir.Layer], ...]
    parallel: str | None = None  # as ForwardKernel's

    @property
    def inputs(self) -> tuple[Shape, ...]:
        return self.model.in_shapes

    @property
    def outputs(self) -> tuple[Shape, ...]:
        return self.model.out_shapes


@dataclass(frozen=True)
class CallKernel:
    """`call(xs, params) -> ys` for a graph model with several inputs or outputs: allocates the
    outputs and runs its fused forward, tuples in and out (what `net.njit()` binds)."""

    name: str
    forward: str
    model: ir.Model


Kernel = LinearKernel | LayerKernel | ModuleKernel | ForwardKernel | GraphKernel | CallKernel


@dataclass(frozen=True)
class LayerClass:
    """A runtime layer subclass fixed to one kind, arguments, shape and dtype."""

    name: str
    layer: ir.Layer
    dtype: np.dtype
    kernel: str  # its ModuleKernel
    accepts: Shape | None
    out_shape: Shape | None


@dataclass(frozen=True)
class ModelClass:
    name: str  # the Python class name (the model's own unless it would clash)
    model: ir.Model
    forward: str
    children: tuple[tuple[str, str], ...]  # (child name, class name)
    call: str | None = None  # a graph model's CallKernel, when it has several inputs or outputs


@dataclass(frozen=True)
class Plan:
    source: str
    kernels: tuple[Kernel, ...]  # in emission order: each after the kernels it calls
    layer_classes: tuple[LayerClass, ...]
    models: tuple[ModelClass, ...]
    weights: tuple[tuple[str, np.ndarray], ...]  # (key, array) the classes are built from
    inline: bool  # weights as literals in the module, or in a weights file beside it
    abi: int  # the oldest runtime ABI that can run the module

    def text(self) -> str:
        return render_text(self)


def kernel_tensors(layer: ir.Layer) -> tuple[str, ...]:
    """The names of the tensors a layer's kernel takes, in order: a quantised Linear takes its
    quantised weight (`quantized.TENSORS`, which its module derives) in place of `weight`."""
    names = tuple(
        t.name for t in layer.spec.tensors if t.kernel and layer.tensor(t.name) is not None
    )
    if layer.quantized:
        return quantized.TENSORS + tuple(name for name in names if name != "weight")
    return names


# A kernel argument as modules list it: (name or state_dict key, shape), and a dtype's name as a
# third item when it is not the model's (a quantised Linear's int8 weight).
Arg = tuple[str, Shape] | tuple[str, Shape, str]


def kernel_args(layer: ir.Layer, path: str = "") -> tuple[Arg, ...]:
    """What a layer's kernel takes, in order, its names prefixed with `path` + "." if given."""
    prefix = f"{path}." if path else ""
    result: list[Arg] = []
    for name in kernel_tensors(layer):
        if name in quantized.TENSORS:
            index = quantized.TENSORS.index(name)
            shape = quantized.shapes(layer.out_features, layer.in_features)[index]
            result.append((prefix + name, shape, quantized.DTYPE.name))
        else:
            value = layer.tensor(name)
            assert value is not None
            result.append((prefix + name, tuple(int(d) for d in value.shape)))
    return tuple(result)


# --------------------------------------------------------------------------- lowering


def lower(program: ir.Program, reserved: Iterable[str] = ()) -> Plan:
    """The plan for `program`; `reserved` are names the generated module uses itself."""
    return _Lowering(program, set(reserved)).run()


class _Lowering:
    def __init__(self, program: ir.Program, reserved: set[str]):
        self.program = program
        self.names = Names(reserved)
        self.kernels: dict[tuple, Kernel] = {}
        self.classes: dict[tuple, LayerClass] = {}
        self.class_names: dict[str, str] = {}

    def run(self) -> Plan:
        for model in self.program.models:
            self.class_names[model.name] = self.names.claim(model.name)
        models = []
        weights: list[tuple[str, np.ndarray]] = []
        for model in self.program.models:
            children = []
            for child in model.layers:
                if isinstance(child, ir.Submodel):
                    children.append((child.name, self.class_names[child.model.name]))
                else:
                    children.append((child.name, self.layer_class(child, model.dtype).name))
            call = None
            if _has_graph(model):
                forward = self.graph_forward(model)
                if len(model.in_shapes) != 1 or len(model.out_shapes) != 1:
                    call = self.kernel(
                        ("call", model.name),
                        f"_call_{model.name}",
                        functools.partial(CallKernel, forward=forward.name, model=model),
                    ).name
            else:
                forward = self.forward(model)
            models.append(
                ModelClass(self.class_names[model.name], model, forward.name, tuple(children), call)
            )
            for child in model.layers:
                if isinstance(child, ir.Layer):
                    for t in child.spec.tensors:
                        value = child.tensor(t.name)
                        if value is not None and t.entry:
                            weights.append((f"{model.name}/{child.name}.{t.name}", value))
        inline = sum(a.size for _, a in weights) <= INLINE_LIMIT and all(
            np.isfinite(a).all() for _, a in weights
        )
        classes = tuple(self.classes.values())
        # ABI 2 added the generic layer class (weights and buffers from the table) and
        # per-sample shapes of more than one axis; modules that use neither run on ABI 1.
        # ABI 3 added `gemm.matmul` and Linear weights stored transposed.
        tiles = any(isinstance(k, LinearKernel) for k in self.kernels.values())  # all transposed
        new = any(c.layer.spec.runtime == "Layer" for c in classes) or any(
            len(m.in_shape) != 1 or len(m.out_shape) != 1 for m in self.program.models
        )
        # ABI 4 added graph models: a generated `forward`, `Model._inputs`, `TupleModel`.
        graphs = any(m.graph is not None for m in self.program.models)
        # ABI 5 added quantised Linear layers: `QLinear`, `q8.matmul`, kernel arguments of
        # another dtype than the model's.
        int8 = any(ir.quantized(m) for m in self.program.models)
        return Plan(
            self.program.source,
            tuple(self.kernels.values()),
            classes,
            tuple(models),
            tuple(weights),
            inline,
            5 if int8 else 4 if graphs else 3 if tiles else 2 if new else 1,
        )

    def kernel(self, key: tuple, wanted: str, make: Callable[[str], Kernel]) -> Kernel:
        """The kernel for `key`, made (under a fresh name based on `wanted`) the first time it
        is asked for; kernels it calls are made first, so they come first."""
        if key not in self.kernels:
            self.kernels[key] = make(self.names.claim(wanted))
        return self.kernels[key]

    def parallel_name(self, forward: str, model: ir.Model) -> str | None:
        """The name of the fused forward's parallel variant, if the model may have one."""
        return self.names.claim(f"{forward}_par") if rows_independent(model) else None

    # ------------------------------------------------------------------ cores

    def core(self, layer: ir.Layer, dtype: np.dtype, folds: tuple[Fold, ...] = ()) -> Kernel:
        native = layer.spec.native
        if isinstance(native, MatMul):
            n_out, n_in = layer.out_features, layer.in_features
            has_bias = layer.bias is not None
            wanted = f"_linear_{n_out}x{n_in}_{dtype_tag(dtype)}" + ("" if has_bias else "_nobias")
            wanted += "_q8" if layer.quantized else ""
            for fold in folds:
                wanted += "_" + fold.layer.spec.base
            key: tuple = ("linear", n_out, n_in, dtype.name, has_bias, layer.quantized)
            key += tuple((f.layer.kind, f.layer.args, kernel_tensors(f.layer)) for f in folds)
            return self.kernel(
                key,
                wanted,
                lambda name: LinearKernel(name, layer, dtype, folds, matmul_path(layer)),
            )
        if isinstance(native, (Elementwise, Channelwise, Rowwise)):
            key = ("act", layer.kind, layer.args, kernel_tensors(layer), dtype.name)
            wanted = f"_{layer.spec.base}_{dtype_tag(dtype)}"
            return self.kernel(key, wanted, lambda name: LayerKernel(name, layer, dtype))
        raise LoweringError(f"failed to lower {layer.kind!r} of layer {layer.name!r}")

    # ------------------------------------------------------------------ layers on their own

    def layer_class(self, layer: ir.Layer, dtype: np.dtype) -> LayerClass:
        spec = layer.spec
        accepts = spec.accepts(layer.argdict, layer.in_shape)
        out = None if accepts is None else spec.shape(layer.argdict, accepts)
        tag = dtype_tag(dtype)
        if spec.name == "Linear":
            has_bias = layer.bias is not None
            key: tuple = (
                "Linear", layer.out_features, layer.in_features, dtype.name, has_bias,
                layer.quantized,
            )  # fmt: skip
            wanted = f"_Linear_{layer.out_features}x{layer.in_features}_{tag}" + (
                "" if has_bias else "_nobias"
            )
            wanted += "_q8" if layer.quantized else ""
        else:
            key = ("act", layer.kind, layer.args, accepts, kernel_tensors(layer), dtype.name)
            wanted = f"_{layer.kind}_{tag}"
        if key not in self.classes:
            kernel = self.module_kernel(layer, dtype, accepts, out)
            name = self.names.claim(wanted)
            self.classes[key] = LayerClass(name, layer, dtype, kernel.name, accepts, out)
        return self.classes[key]

    def module_kernel(
        self, layer: ir.Layer, dtype: np.dtype, accepts: Shape | None, out: Shape | None
    ) -> Kernel:
        core = self.core(layer, dtype)
        rows = 1 if accepts is None else layer.spec.rows(layer.argdict, accepts)[0]
        params = core.params  # type: ignore[union-attr]
        return self.kernel(
            ("module", core.name, accepts, out, rows),
            f"{core.name}_any",
            lambda name: ModuleKernel(name, core.name, dtype, accepts, out, rows, params),
        )

    # ------------------------------------------------------------------ the fused forward

    def forward(self, model: ir.Model) -> Kernel:
        args: list[Arg] = []
        ops: list[tuple[str, ir.Layer, tuple[int, ...]]] = []
        dropped: list[tuple[str, ir.Layer]] = []
        for path, layer in ir.layers(model):
            indices = []
            for arg in kernel_args(layer, path):
                indices.append(len(args))
                args.append(arg)
            if layer.spec.dropped:
                dropped.append((path, layer))
            else:
                ops.append((path, layer, tuple(indices)))
        groups = _fuse(ops)
        if not groups:  # every layer is dropped: the forward copies its input
            copy = ir.Layer("copy", "Identity", (), (), model.in_shape, model.in_shape, model.loc)
            groups = [[("", copy, ())]]
        steps: list[Step] = []
        buffers: list[Buffer] = []
        current = "x"
        for index, group in enumerate(groups):
            head = group[0][1]
            folds = tuple(Fold(p, layer) for p, layer, _ in group[1:])
            core = self.core(head, model.dtype, folds)
            if index == len(groups) - 1:
                target = "y"
            elif isinstance(core, LinearKernel) or current == "x":
                target = f"h{len(buffers) + 1}"
                buffers.append(Buffer(target, math.prod(group[-1][1].out_shape)))
            else:
                target = current  # an elementwise or row kernel works in place
            rows, in_width = head.spec.rows(head.argdict, head.in_shape)
            out_width = math.prod(head.out_shape) // rows
            all_args = tuple(i for _, _, idx in group for i in idx)
            matmul = core.matmul if isinstance(core, LinearKernel) else None
            layers = tuple((p, layer) for p, layer, _ in group)
            steps.append(
                Step(
                    core.name, current, target, all_args, layers, rows, in_width, out_width, matmul
                )
            )
            current = target
        return self.kernel(
            ("model", model.name),
            f"_forward_{model.name}",
            lambda name: ForwardKernel(
                name,
                model,
                tuple(args),
                tuple(steps),
                tuple(buffers),
                tuple(dropped),
                self.parallel_name(name, model),
            ),
        )

    # ------------------------------------------------------------------ a graph's fused forward

    def graph_forward(self, model: ir.Model) -> Kernel:
        flat = _Flattened(model)
        groups = flat.fused()
        steps, buffers = _place(flat, groups, self, model.dtype)
        return self.kernel(
            ("model", model.name),
            f"_forward_{model.name}",
            lambda name: GraphKernel(
                name,
                model,
                tuple(flat.args),
                tuple(steps),
                tuple(buffers),
                tuple(flat.dropped),
                self.parallel_name(name, model),
            ),
        )


def batch_dependent(model: ir.Model) -> list[tuple[str, ir.Layer]]:
    """The layers (with their paths) whose output for one sample depends on the other samples
    of the call: a batch norm that normalises with the statistics of the whole call
    (track_running_stats=false). A model without any may compute its rows in blocks."""
    return [
        (path, layer)
        for path, layer in ir.layers(model)
        if layer.argdict.get("track_running_stats") is False
    ]


def rows_independent(model: ir.Model) -> bool:
    """Whether each sample's output depends only on that sample (see `batch_dependent`)."""
    return not batch_dependent(model)


def _has_graph(model: ir.Model) -> bool:
    """Whether `model` or a model nested in it has a forward block."""
    return model.graph is not None or any(
        _has_graph(child.model) for child in model.layers if isinstance(child, ir.Submodel)
    )


@dataclass
class _LayerOp:
    """A layer group of a flattened graph: a layer, then the layers folded into it."""

    members: list[tuple[str, ir.Layer, tuple[int, ...]]]  # (path, layer, argument indices)
    source: int
    out: int


@dataclass
class _ArithOp:
    op: str  # + - * neg
    operands: tuple[int | float, ...]
    out: int


@dataclass
class _CatOp:
    sources: tuple[int, ...]
    out: int


_FlatOp = _LayerOp | _ArithOp | _CatOp


class _Flattened:
    """A graph model's forward inlined (`ir.inline`) as the kernel runs it: layer operations
    with the indices of their tensors among the kernel's arguments (each layer's tensors once,
    however often it is called), and each value's size per sample. A layer dropped at inference
    (Identity, Dropout, a reshape) gives its input's value: buffers hold (n, size) whatever the
    shape."""

    def __init__(self, model: ir.Model):
        inlined = ir.inline(model)
        self.ops: list[_FlatOp] = []
        self.shapes = inlined.shapes
        self.sizes = {v: math.prod(shape) for v, shape in inlined.shapes.items()}
        self.args: list[Arg] = []
        self.dropped: list[tuple[str, ir.Layer]] = []
        arg_index: dict[str, tuple[int, ...]] = {}
        alias: dict[int, int] = {}

        def get(v: int | float) -> int | float:
            return alias.get(v, v) if isinstance(v, int) else v

        for op in inlined.ops:
            if isinstance(op, ir.FlatCall):
                path, layer = op.path, op.layer
                if layer.spec.dropped:
                    if (path, layer) not in self.dropped:
                        self.dropped.append((path, layer))
                    alias[op.out] = int(get(op.source))
                    continue
                if path not in arg_index:
                    indices = []
                    for arg in kernel_args(layer, path):
                        indices.append(len(self.args))
                        self.args.append(arg)
                    arg_index[path] = tuple(indices)
                members = [(path, layer, arg_index[path])]
                self.ops.append(_LayerOp(members, int(get(op.source)), op.out))
            elif isinstance(op, ir.FlatArith):
                self.ops.append(_ArithOp(op.op, tuple(get(o) for o in op.operands), op.out))
            else:
                self.ops.append(_CatOp(tuple(int(get(v)) for v in op.sources), op.out))
        self.inputs = list(inlined.inputs)
        self.outputs = [int(get(v)) for v in inlined.outputs]

    def uses(self) -> dict[int, int]:
        """How often each value is read (an output counts as a read)."""
        count: dict[int, int] = dict.fromkeys(self.sizes, 0)
        for op in self.ops:
            for value in _reads(op):
                count[value] += 1
        for value in self.outputs:
            count[value] += 1
        return count

    def fused(self) -> list[_FlatOp]:
        """The operations with layers folded into the Linear before them (as `_fuse` folds a
        pipeline's) where the Linear's value is read by that layer alone."""
        uses = self.uses()
        producer: dict[int, _LayerOp] = {}
        out: list[_FlatOp] = []
        for op in self.ops:
            if isinstance(op, _LayerOp):
                head = producer.get(op.source)
                (member,) = op.members
                if head is not None and uses[op.source] == 1 and _joins(head.members, member[1]):
                    head.members.append(member)
                    head.out = op.out
                    del producer[op.source]
                    producer[op.out] = head
                    continue
                if op.members[0][1].spec.name == "Linear":
                    producer[op.out] = op
            out.append(op)
        return out


def _reads(op: _FlatOp) -> tuple[int, ...]:
    if isinstance(op, _LayerOp):
        return (op.source,)
    if isinstance(op, _ArithOp):
        return tuple(o for o in op.operands if isinstance(o, int))
    return op.sources


def _place(
    flat: _Flattened, ops: list[_FlatOp], lowering: _Lowering, dtype: np.dtype
) -> tuple[list[GraphStep], list[Buffer]]:
    """Steps over named storage: inputs `x0...`, outputs `y0...` (a value returned is computed
    into its output), buffers `h1...` taken from a pool by size once their value is dead. An
    elementwise step (a layer other than a Linear, or + - * neg) writes over an operand it
    reads for the last time; a Linear or a cat never writes where it reads."""
    last: dict[int, int] = {}
    for index, op in enumerate(ops):
        for value in _reads(op):
            last[value] = index
    where: dict[int, str] = {v: f"x{i}" for i, v in enumerate(flat.inputs)}
    wanted_out: dict[int, str] = {}
    for index, value in enumerate(flat.outputs):
        if value not in where and value not in wanted_out:
            wanted_out[value] = f"y{index}"
    free: dict[int, list[str]] = {}
    buffers: list[Buffer] = []
    steps: list[GraphStep] = []
    for index, op in enumerate(ops):
        size = flat.sizes[op.out]
        dying = [v for v in dict.fromkeys(_reads(op)) if last[v] == index]
        elementwise = not isinstance(op, _CatOp) and not (
            isinstance(op, _LayerOp) and op.members[0][1].spec.name == "Linear"
        )
        target = wanted_out.get(op.out)
        reused = None
        if target is None and elementwise:
            for value in dying:
                slot = where[value]
                if slot.startswith("h") and flat.sizes[value] == size:
                    target, reused = slot, value
                    break
        if target is None:
            pool = free.get(size)
            if pool:
                target = pool.pop()
            else:
                target = f"h{len(buffers) + 1}"
                buffers.append(Buffer(target, size))
        where[op.out] = target
        steps.append(_graph_step(op, where, target, flat, lowering, dtype))
        for value in dying:
            slot = where[value]
            if value != reused and slot.startswith("h") and value not in flat.outputs:
                free.setdefault(flat.sizes[value], []).append(slot)
    for index, value in enumerate(flat.outputs):
        slot = where[value]
        if slot != f"y{index}":
            steps.append(Arith("copy", (slot,), f"y{index}", flat.sizes[value]))
    return steps, buffers


def _graph_step(
    op: _FlatOp,
    where: dict[int, str],
    target: str,
    flat: _Flattened,
    lowering: _Lowering,
    dtype: np.dtype,
) -> GraphStep:
    if isinstance(op, _ArithOp):
        operands = tuple(where[o] if isinstance(o, int) else o for o in op.operands)
        return Arith(op.op, operands, target, flat.sizes[op.out])
    if isinstance(op, _CatOp):
        shape = flat.shapes[op.out]
        sources = tuple((where[v], flat.shapes[v][-1]) for v in op.sources)
        return Concat(sources, target, shape[-1], math.prod(shape[:-1]))
    head = op.members[0][1]
    folds = tuple(Fold(p, layer) for p, layer, _ in op.members[1:])
    core = lowering.core(head, dtype, folds)
    rows, in_width = head.spec.rows(head.argdict, head.in_shape)
    out_width = math.prod(head.out_shape) // rows
    matmul = core.matmul if isinstance(core, LinearKernel) else None
    return Step(
        core.name,
        where[op.source],
        target,
        tuple(i for _, _, idx in op.members for i in idx),
        tuple((p, layer) for p, layer, _ in op.members),
        rows,
        in_width,
        out_width,
        matmul,
    )


def _fuse(
    ops: list[tuple[str, ir.Layer, tuple[int, ...]]],
) -> list[list[tuple[str, ir.Layer, tuple[int, ...]]]]:
    """Group the steps: a Linear takes the layers right after it into its epilogue while they
    can join it: first a "norm" (a BatchNorm1d with running statistics over its output
    features), then one "activation" (elementwise, or per output feature)."""
    groups: list[list[tuple[str, ir.Layer, tuple[int, ...]]]] = []
    for op in ops:
        group = groups[-1] if groups else None
        if group is not None and _joins(group, op[1]):
            group.append(op)
        else:
            groups.append([op])
    return groups


def _joins(group: list[tuple[str, ir.Layer, tuple[int, ...]]], layer: ir.Layer) -> bool:
    head = group[0][1]
    if head.spec.name != "Linear" or layer.spec.fuse is None:
        return False
    if not layer.spec.fuses(layer.argdict):
        return False
    roles = [folded.spec.fuse for _, folded, _ in group[1:]]
    if "activation" in roles or (layer.spec.fuse == "norm" and roles):
        return False
    if isinstance(layer.spec.native, Channelwise):
        # per output feature: the Linear's output must be one row of features, its channels
        return len(head.in_shape) == 1 and layer.in_shape == head.out_shape
    return isinstance(layer.spec.native, Elementwise)


# --------------------------------------------------------------------------- text


def describe(path: str, layer: ir.Layer) -> str:
    """`(fc1) Linear 3 -> 4`, `(1) ReLU`: a layer as comments and docstrings name it."""
    if layer.kind == "Linear":
        return f"({path}) Linear {layer.in_features} -> {layer.out_features}"
    return f"({path}) {layer.kind}"


def _shape_text(shape: Shape) -> str:
    return "(*, " + ", ".join(map(str, shape)) + ")"


def _step_text(step: GraphStep, args: tuple[Arg, ...]) -> str:
    if isinstance(step, Arith):
        a = [str(o) for o in step.operands]
        expr = {"neg": lambda: f"-{a[0]}", "copy": lambda: a[0]}.get(
            step.op, lambda: f"{a[0]} {step.op} {a[1]}"
        )()
        note = "  # in place" if step.in_place else ""
        return f"{step.target} = {expr}{note}"
    if isinstance(step, Concat):
        sources = ", ".join(source for source, _ in step.sources)
        view = f"  # on (n*{step.rows}, width) views" if step.rows != 1 else ""
        return f"{step.target} = cat({sources}){view}"
    source = step.source
    if step.rows != 1:
        source += f".view(n*{step.rows}, {step.in_width})"
    names = ", ".join(args[i][0] for i in step.args)
    call = f"{step.kernel}({source}{'; ' + names if names else ''})"
    notes = [", ".join(describe(p, layer) for p, layer in step.layers if p)]
    if step.matmul is not None:
        notes.append(step.matmul)
    if step.in_place:
        notes.append("in place")
    comment = "; ".join(n for n in notes if n)
    return f"{step.target} = {call}" + (f"  # {comment}" if comment else "")


def render_text(plan: Plan) -> str:
    """The plan as text: per model, its layers' own classes and kernels (the path taken when
    hooks are registered), then the fused forward step by step with its buffers; then where
    the weights go."""
    out = [f"plan for {plan.source!r}"]
    by_name = {k.name: k for k in plan.kernels}
    classes = {c.name: c for c in plan.layer_classes}
    for model_class in plan.models:
        model = model_class.model
        forward = by_name[model_class.forward]
        assert isinstance(forward, (ForwardKernel, GraphKernel))
        out.append("")
        if model.graph is None:
            signature = f"x {_shape_text(model.in_shape)} -> y {_shape_text(model.out_shape)}"
        else:
            inputs = ", ".join(f"{i.name} {_shape_text(i.shape)}" for i in model.graph.inputs)
            outputs = ", ".join(_shape_text(shape) for shape in model.out_shapes)
            signature = f"forward({inputs}) -> {outputs}"
        out.append(
            f"model {model.name}: {signature}, {model.dtype.name}"
            + (f" (class {model_class.name})" if model_class.name != model.name else "")
        )
        out.append("  layers, each on its own when hooks are registered:")
        width = max(len(child) for child, _ in model_class.children)
        for child, cls_name in model_class.children:
            cls = classes.get(cls_name)
            if cls is None:
                out.append(f"    {child:<{width}}  model {cls_name}")
                continue
            module = by_name[cls.kernel]
            assert isinstance(module, ModuleKernel)
            core = by_name[module.core]
            line = f"    {child:<{width}}  {cls_name}: {module.name} -> {core.name}"
            if isinstance(core, LinearKernel):
                line += f"  # {core.matmul}"
            out.append(line)
        out.append(f"  fused forward {forward.name}, with no hook anywhere:")
        for step in forward.steps:
            out.append("    " + _step_text(step, forward.args))
        if model_class.call is not None:
            out.append(f"  called with tuples (njit) through {model_class.call}")
        if forward.dropped:
            dropped = ", ".join(describe(p, layer) for p, layer in forward.dropped)
            out.append(f"  left out of the fused forward: {dropped}")
        buffers = ", ".join(f"{b.name} (n, {b.size})" for b in forward.buffers)
        out.append(f"  buffers: {buffers or 'none'}")
    count = sum(a.size for _, a in plan.weights)
    where = (
        f"inline (at most {INLINE_LIMIT} values, all finite)"
        if plan.inline
        else "in a weights file beside the module"
    )
    out.append("")
    arrays = f"{len(plan.weights)} array{'' if len(plan.weights) == 1 else 's'}"
    out.append(f"weights: {arrays}, {count} values, {where}")
    return "\n".join(out) + "\n"
