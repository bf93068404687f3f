"""ONNX in and out: an .onnx file in, a .lyr file plus one .safetensors weights file out
(`import_onnx`), or a checked program in and a validated ONNX graph out (`export_onnx`).

Import reads Gemm / MatMul (+ Add), Identity, Flatten, Reshape, Dropout and the ops the table of
kinds exports as (`Kind.onnx` in layerc.kinds, read backwards: `KINDS_BY_OP`) as layers, the
groups of nodes that exporters write a kind as (`Onnx.patterns`, found by layerc.onnx_match) as
that kind, and Add / Sub / Mul / Neg / Concat between values as a forward block's operations,
from inputs of shape (batch, features) or (batch, *sample shape); it refuses anything else,
naming the node and the PyTorch module it came from. The models nest as the exporter recorded
the PyTorch modules (layerc.onnx_tree), so that the state_dict keys are the original's; the .lyr
file is built as a syntax tree and printed with the one printer (layerc.printer).
Export writes each layer as the table says: its kind's op where that op computes the layer, the
kind's subgraph where it does not, and on samples of several axes the kind's form for them. What a
kind is in ONNX lives in its entry of the table (`Onnx`); this module knows ONNX files and the
graph, and reads by hand only the ops that make the graph's structure (a Linear's Gemm, MatMul and
Add; Flatten and Reshape, which change the sample's shape; Dropout, Identity, Constant and
Transpose; the arithmetic). ONNX files have no lines, so every problem with one is a file-level
`LayercError`. The file is read by `layerc.onnx_read` (external data only from inside the model's
folder, checked before it is read: the source of CVE-2022-25882 and CVE-2024-27318), and nothing
is written until the whole model has been read.
"""

from __future__ import annotations

import keyword
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, ir
from . import binder as B
from . import onnx_tree as T
from . import patterns as P
from . import syntax as S
from . import weights as W
from .check import MAX_NAME_LENGTH, MAX_WEIGHTS
from .errors import LayercError, Loc
from .files import Inputs, WriteFailed, open_regular, refuse_inputs, write_atomically
from .kinds import KINDS, KINDS_BY_OP, MAX_FEATURES, MAX_RANK, Elementwise, Onnx, Rowwise
from .onnx_match import PATTERN_DOMAIN, fuse_patterns
from .onnx_read import first_line as _first_line
from .onnx_read import quote as _q
from .onnx_read import read_model as _read_model
from .printer import print_program

MIN_OPSET = 7  # Gemm took its modern form (C broadcast, no `broadcast` attribute) in opset 7
EXPORT_OPSET = 17
# The most weights an imported model may have, an initializer counted once for every node that
# uses it (as the compiled model holds a copy for each layer): what the compiler accepts in one
# source. Counted from the tensors' shapes before any of them is read.
MAX_IMPORT_WEIGHTS = MAX_WEIGHTS
EXPORT_IR_VERSION = 8  # the IR version that came with opset 17: readable by older runtimes


# Ops read by hand: a Linear's parts, ops that compute nothing, and constants.
_STRUCTURAL_OPS = (
    *("Gemm", "MatMul", "Add", "Identity", "Flatten", "Reshape", "Dropout"),
    *("Constant", "Transpose", "Sub", "Mul", "Neg", "Concat"),
)
SUPPORTED_OPS = (*_STRUCTURAL_OPS, *sorted(op for op in KINDS_BY_OP if op not in _STRUCTURAL_OPS))
# The operators of a quantised graph (ONNX Runtime's quantize_dynamic, QDQ models): not
# imported, but named as such, since a model's quantize=int8 is the way to the same computation.
QUANTIZED_OPS = frozenset(
    {
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearMatMul",
    }
)


def _where(node) -> str:  # type: ignore[no-untyped-def]
    """A node as messages name it: its name and operator, and the PyTorch module it came from
    where the exporter recorded it."""
    where = f"node {_q(node.name or '(unnamed)')} ({node.op_type})"
    scope = T.node_scope(node)
    if scope is not None and scope.path:
        cls = scope.cls(len(scope.path))
        kind = f", a {_q(cls.rsplit('.', 1)[-1])}" if cls else ""
        where += f", from the PyTorch module {_q('.'.join(scope.path))}{kind}"
    return where


def _folded_batch_norm(scope: T.Scope | None) -> bool:
    """Whether a Gemm's recorded module is a BatchNorm: the dynamo exporter folded it into the
    Linear before it."""
    cls = scope.cls(len(scope.path)) if scope is not None and scope.path else None
    return cls is not None and "BatchNorm" in cls.rsplit(".", 1)[-1]


# torch's call of a BatchNorm in eval mode, as the dynamo exporter records it: (x, weight or
# None, bias or None, running_mean, running_var, momentum, eps)
_BATCH_NORM_CALL = re.compile(
    r"_native_batch_norm_legit_no_training\.default\]\(args = \(([^()]{0,2000})\), kwargs"
)
# A parameter's name as torch's exporters write it: its state_dict key.
_PARAMETER_NAME = re.compile(r"(?:[A-Za-z0-9_]+\.)+(?:weight|bias)")
# Ops that, on a constant, give a constant (read as one: `_Reader.fold`).
_FOLDED = ("Identity", "Transpose", "Reshape")
# Attributes each op read by hand may carry; any other would change its meaning. (The ops of
# the table may carry the attributes their schema declares: each is matched to an argument of
# the kind, or must have the value the kind exports.)
_KNOWN_ATTRIBUTES = {
    "Gemm": {"alpha", "beta", "transA", "transB"},
    "Flatten": {"axis"},
    "Reshape": {"allowzero"},
    "Transpose": {"perm"},
    "Constant": {"value"},
    "Dropout": {"ratio", "seed"},
    "BatchNormalization": {"epsilon", "momentum", "training_mode"},
    "LayerNormalization": {"axis", "epsilon", "stash_type"},
    "Clip": {"min", "max"},
    "Concat": {"axis"},
}


# =========================================================================== import


@dataclass
class _Linear:
    weight: np.ndarray  # (out, in), float64
    bias: np.ndarray | None  # (out,), float64
    nodes: list[str]  # descriptions of the ONNX nodes it came from
    # What the weight and bias were made from, when other layers may share them (an
    # initializer and how it was transposed and scaled): equal keys, one array in the weights
    # file. None for a value of this layer's own.
    weight_key: tuple[object, ...] | None = None
    bias_key: tuple[object, ...] | None = None


@dataclass
class _Activation:
    kind: str
    args: tuple[S.Arg, ...]  # those that differ from the kind's defaults
    nodes: list[str]
    tensors: list[tuple[str, np.ndarray]] = field(default_factory=list)  # its block's entries


@dataclass
class _Imported:
    dtype: np.dtype
    layers: list[_Linear | _Activation] = field(default_factory=list)
    opset: int = 0
    graph_name: str = ""
    input_shape: tuple[int, ...] | None = None  # the one input's sample shape, if of several axes
    # The graph as read: its inputs (ONNX name, per-sample shape or None for (batch, n) with n
    # unknown), the operations in order, and the values it returns.
    inputs: list[tuple[str, tuple[int, ...] | None]] = field(default_factory=list)
    ops: list[T.Op] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # every value's per-sample shape (None: one axis of unknown size)
    samples: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the user should know of the import


def import_onnx(path: Path, out: Path | None = None, *, test: bool = True) -> list[Path]:
    """`layerc import`: read the ONNX model at `path`, write `out` (default: `path` with .lyr)
    and the weights file beside it; return the paths written (weights first). With `test`, the
    .lyr ends in a test block of what ONNX's reference implementation computes (layerc.onnx_verify;
    a note on stderr says why when it cannot)."""
    display = str(path)
    _require_onnx(display)
    out = out if out is not None else path.with_suffix(".lyr")
    if out.suffix != ".lyr":
        raise LayercError(f"the output {str(out)!r} must be a .lyr file", file=display)
    weights_path = out.with_suffix(".safetensors")
    inputs = ((path, "the ONNX model"),)
    refuse_inputs([weights_path, out], inputs)
    model = _read_model(path, display)
    imported = _Reader(model, display).run()
    text, arrays = _render(imported, path.name, out.stem, weights_path.name, display)
    for note in imported.notes:
        print(f"{display}: note: {note}", file=sys.stderr)
    if test:
        from .onnx_verify import add_reference_test

        text = add_reference_test(model, imported, text, arrays, weights_path.name, display)
    from safetensors.numpy import save

    data = save(arrays, metadata={"producer": f"layerc {__version__}"})
    _check_not_users_file(out, weights_path)
    write_files([(weights_path, data), (out, text.encode("utf-8"))], inputs)
    return [weights_path, out]


IMPORT_HEADER = "# Imported by layerc "


def _check_not_users_file(lyr: Path, weights: Path) -> None:
    """Refuse to replace a .lyr or .safetensors that an earlier `layerc import` did not write
    (say, the user's own `model.safetensors` beside `model.onnx`)."""
    for path in (lyr, weights):
        if (path.exists() or path.is_symlink()) and not _written_by_import(path):
            raise LayercError(
                "would replace this file, which `layerc import` did not write; choose another "
                "output with -o",
                file=str(path),
            )


def _written_by_import(path: Path) -> bool:
    """Whether `path` is a regular file that `layerc import` wrote: a .lyr starting with its
    header, or a .safetensors whose metadata names layerc as the producer."""
    if path.is_symlink() or not path.is_file():
        return False
    if path.suffix == ".lyr":
        try:
            fd = open_regular(path, str(path))
        except LayercError:
            return False
        with os.fdopen(fd, "rb") as f:
            return f.read(len(IMPORT_HEADER)) == IMPORT_HEADER.encode()
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return str((f.metadata() or {}).get("producer", "")).startswith("layerc ")
    except Exception:  # not a valid .safetensors file
        return False


def _require_onnx(display: str) -> None:
    """The onnx package is an extra (`pip install "layerc[onnx]"`): say so instead of failing
    with an ImportError."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise LayercError(
            'ONNX import and export need the onnx package: pip install "layerc[onnx]"',
            file=display,
        ) from None


class _Reader:
    """Walks the graph's nodes in order. Each value between nodes has a per-sample shape; a
    node of one value (a layer) becomes a call of a layer, Add, Sub, Mul, Neg and Concat
    between values the operations of a forward block, and a node that computes nothing makes
    its output another name of its input. The node being read sees its value as `current`,
    with its shape `sample`."""

    def __init__(self, model, file: str):  # type: ignore[no-untyped-def]
        self.model = model
        self.graph = model.graph
        self.file = file
        self.constants: dict[str, object] = {}  # name -> TensorProto
        self.fixed_batch: int | None = None
        self.current = ""  # the name of the value the node being read takes
        # The per-sample shape of that value; None for one axis of unknown size (a graph input
        # (batch, n) with a symbolic n).
        self.sample: tuple[int, ...] | None = None
        self.samples: dict[str, tuple[int, ...] | None] = {}  # every value's
        self.alias: dict[str, str] = {}  # a node's output that is its input under a new name
        self.linear_of: dict[str, int] = {}  # a Linear's output -> the Linear
        self.readers: dict[str, int] = {}  # how many nodes (and graph outputs) read a value
        # Each tensor is read and converted once, however many nodes use it, and so is each
        # weight matrix and bias made from one: layers that share an initializer share arrays.
        self.arrays: dict[str, np.ndarray] = {}
        self.shared: dict[tuple[object, ...], np.ndarray] = {}

    def error(self, message: str) -> LayercError:
        return LayercError(message, file=self.file)

    @staticmethod
    def quote(name: str) -> str:
        return _q(name)

    def run(self) -> _Imported:
        opset = self.opset_version = self.opset()
        for tensor in self.graph.initializer:
            self.constants[tensor.name] = tensor
        if self.graph.sparse_initializer:
            raise self.error("sparse initializers are not supported")
        inputs = self.graph_inputs()
        dtype = inputs[0][1]
        dims = [
            v.type.tensor_type.shape.dim[0].dim_value
            for v in self.graph.input
            if v.name not in self.constants
            and v.type.tensor_type.HasField("shape")
            and v.type.tensor_type.shape.dim
        ]
        # the batch size every graph input declares, when the export fixed it
        self.fixed_batch = dims[0] if dims and dims[0] > 0 and len(set(dims)) == 1 else None
        self.count_weights()
        imported = _Imported(dtype, opset=opset, graph_name=self.graph.name)
        for name, _, sample in inputs:
            self.samples[name] = sample
            imported.inputs.append((name, sample))
        if len(inputs) == 1 and inputs[0][2] is not None and len(inputs[0][2]) > 1:
            imported.input_shape = inputs[0][2]
        nodes = fuse_patterns(list(self.graph.node), self.graph)
        for node in nodes:
            for name in node.input:
                self.readers[name] = self.readers.get(name, 0) + 1
        for value in self.graph.output:
            self.readers[value.name] = self.readers.get(value.name, 0) + 1
        for node in nodes:
            self.node(node, imported)
        self.finish(imported)
        return imported

    def resolve(self, name: str) -> str:
        """The value a name stands for (through nodes that compute nothing)."""
        while name in self.alias:
            name = self.alias[name]
        return name

    def opset(self) -> int:
        versions = [o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")]
        if not versions:
            raise self.error("the model imports no version of the default ONNX operator set")
        if versions[0] < MIN_OPSET:
            raise self.error(f"ONNX opset {versions[0]} is older than layerc reads ({MIN_OPSET}+)")
        return int(versions[0])

    def graph_inputs(self) -> list[tuple[str, np.dtype, tuple[int, ...] | None]]:
        """The graph inputs that are not initializers, each with its dtype (one for all) and
        per-sample shape."""
        inputs = [self.graph_input(i) for i in self.graph.input if i.name not in self.constants]
        if not inputs:
            raise self.error("the graph has no input")
        if len({dtype for _, dtype, _ in inputs}) > 1:
            raise self.error("the graph's inputs have different dtypes; a layerc model has one")
        return inputs

    def graph_input(self, value) -> tuple[str, np.dtype, tuple[int, ...] | None]:  # type: ignore[no-untyped-def]
        """A graph input: its name, dtype and per-sample shape (None for (batch, n) with n
        unknown)."""
        from onnx import TensorProto

        if not value.type.HasField("tensor_type"):
            raise self.error(f"graph input {_q(value.name)} is not a tensor")
        elem = value.type.tensor_type.elem_type
        dtypes: dict[int, np.dtype] = {
            TensorProto.FLOAT: np.dtype(np.float32),
            TensorProto.DOUBLE: np.dtype(np.float64),
        }
        if elem not in dtypes:
            raise self.error(
                f"graph input {_q(value.name)} is {TensorProto.DataType.Name(elem).lower()}; "
                "layerc models are float32 or float64"
            )
        if not value.type.tensor_type.HasField("shape"):
            return str(value.name), dtypes[elem], None
        dims = value.type.tensor_type.shape.dim
        if not 2 <= len(dims) <= MAX_RANK + 1:
            raise self.error(
                f"graph input {_q(value.name)} has {len(dims)} dimension"
                f"{'' if len(dims) == 1 else 's'}; layerc imports models "
                f"whose input is (batch, features) or (batch, *sample shape) with at most "
                f"{MAX_RANK} axes per sample"
            )
        if len(dims) == 2:
            features = int(dims[1].dim_value) if dims[1].HasField("dim_value") else None
            return str(value.name), dtypes[elem], None if features is None else (features,)
        sample = tuple(int(d.dim_value) if d.HasField("dim_value") else 0 for d in dims[1:])
        if not all(0 < d <= MAX_FEATURES for d in sample):
            raise self.error(
                f"graph input {_q(value.name)} has a sample axis without a fixed size (or of "
                f"more than {MAX_FEATURES}); layerc imports samples of several axes only with "
                "every size fixed (torch.onnx.export: make only the batch axis dynamic, or none)"
            )
        return str(value.name), dtypes[elem], sample

    def count_weights(self) -> None:
        """Refuse a model with more than MAX_IMPORT_WEIGHTS weights before any tensor is read,
        counting from the shapes of the Gemm and MatMul weights, an initializer once for each
        node that uses it."""
        dims = {name: tuple(tensor.dims) for name, tensor in self.constants.items()}  # type: ignore[attr-defined]
        total = 0
        for node in self.graph.node:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and attr.HasField("t"):
                        dims[node.output[0]] = tuple(attr.t.dims)
            elif node.op_type in _FOLDED and node.input and node.input[0] in dims:
                dims[node.output[0]] = dims[node.input[0]]  # as many values, in any shape
            elif (
                node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in dims
            ):
                total += math.prod(max(int(d), 0) for d in dims[node.input[1]])
                if total > MAX_IMPORT_WEIGHTS:
                    raise self.error(
                        f"the model has more than {MAX_IMPORT_WEIGHTS} weights (an initializer "
                        "counted once for each node that uses it, as the compiled model keeps a "
                        "copy for each layer), more than layerc compiles from one source"
                    )

    # ------------------------------------------------------------------ nodes

    def node(self, node, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        where = _where(node)
        if node.domain == PATTERN_DOMAIN:  # several nodes that compute one layer kind
            self.pattern(node, where, imported)
            return
        if node.domain not in ("", "ai.onnx"):
            raise self.error(
                f"unsupported operator {node.domain}.{node.op_type} in {where}; layerc imports "
                f"only these ONNX operators: {', '.join(SUPPORTED_OPS)}"
            )
        if node.op_type not in SUPPORTED_OPS:
            hint = ""
            if node.op_type in QUANTIZED_OPS:
                hint = (
                    ": this graph is quantised (as ONNX Runtime's quantize_dynamic writes it); "
                    "import the float model it was made from and add quantize=int8 to its model "
                    "line (int8 weights with a scale per output, inputs quantised row by row)"
                )
            raise self.error(
                f"unsupported ONNX operator {node.op_type!r} in {where}; layerc imports only "
                f"{', '.join(SUPPORTED_OPS)}{hint}"
            )
        attrs = self.attributes(node, where)
        outputs = len([name for name in node.output if name])
        if outputs != 1:
            if node.op_type == "BatchNormalization" and outputs > 1:
                # the batch's statistics, which only training mode gives
                raise self.error(
                    f"{where} has {outputs} outputs: it is in training mode; layerc models run "
                    "in eval mode (call model.eval() before torch.onnx.export)"
                )
            if node.op_type == "Dropout" and outputs > 1:
                raise self.error(
                    f"{where} has {outputs} outputs; layerc expects one (a Dropout's mask: "
                    "torch.onnx.export writes one for a model in training mode; call "
                    "model.eval() before it)"
                )
            raise self.error(f"{where} has {len(node.output)} outputs; layerc expects one")
        if node.op_type == "Constant":
            if "value" not in attrs:
                raise self.error(f"{where}: only Constant nodes with a 'value' tensor are read")
            self.constants[node.output[0]] = attrs["value"]
            return
        if node.op_type in _FOLDED and node.input and node.input[0] in self.constants:
            self.fold(node, attrs, where)
            return
        data = [self.resolve(n) for n in node.input if n and n not in self.constants]
        for name in data:
            if name not in self.samples:
                raise self.error(f"{where} reads {_q(name)}, which no earlier node computes")
        if node.op_type in _ARITHMETIC and self.arithmetic(node, data, where, imported):
            return
        if node.op_type == "Concat":
            self.concat(node, attrs, data, where, imported)
            return
        # Add is commutative; every other op must take the value as its first input
        # (MatMul(W, x) would multiply from the other side, which no Linear does).
        first_ok = node.op_type == "Add" or (node.input and self.resolve(node.input[0]) in data)
        if len(data) != 1 or not first_ok:
            raise self.error(
                f"{where} does not take one value as its first input and constants otherwise; "
                "layerc reads such a node as a layer of one input"
            )
        self.current = data[0]
        self.sample = self.samples[self.current]
        before = len(imported.layers)
        handler = getattr(self, f"op_{node.op_type}", self.op_kind)
        handler(node, attrs, where, imported)
        out = node.output[0]
        if len(imported.layers) > before:
            index = len(imported.layers) - 1
            scope = T.node_scope(node)
            folded = isinstance(imported.layers[index], _Linear) and _folded_batch_norm(scope)
            if folded:  # the Linear, then the BatchNorm that the exporter folded into it
                assert scope is not None
                inner = f"{out}/before {scope.path[-1]}"
                imported.ops.append(T.Call(index, (self.current,), inner))
                self.samples[inner] = self.sample
                self.batch_norm_folded(node, scope, where, imported)
                imported.ops.append(T.Call(index + 1, (inner,), out, scope))
            else:
                imported.ops.append(T.Call(index, (self.current,), out, scope))
                if isinstance(imported.layers[index], _Linear):
                    self.linear_of[out] = index
        else:  # computes nothing (an Identity), or a Linear's bias (the Linear's value)
            self.alias[out] = self.current
            # what reads the output reads the value
            self.readers[self.current] += self.readers.get(out, 0) - 1
        self.samples[out] = self.sample

    def batch_norm_folded(self, node, scope: T.Scope, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """The BatchNorm that the dynamo exporter folded into the Linear just read (its
        optimize=True, the default): a BatchNorm1d that computes nothing (weight 1, bias 0,
        mean 0, variance 1 - eps), under the module's name, so that the state_dict keys are
        torch's and loading torch's state_dict gives back the model as it was. Its eps and
        momentum are the ones the exporter recorded in the node's metadata (torch's defaults
        where it did not), and a note says what happened."""
        layer = imported.layers[-1]
        assert isinstance(layer, _Linear)
        channels = layer.weight.shape[0]
        meta = {p.key: p.value for p in node.metadata_props}
        call = meta.get("pkg.torch.onnx.fx_node", "")[:10_000]
        module = ".".join(scope.path)
        if "batch_norm" in call and "_native_batch_norm_legit_no_training" not in call:
            raise self.error(
                f"{where}: the BatchNorm {module!r} folded into it was exported in training "
                "mode (its batch's statistics); layerc models run in eval mode (call "
                "model.eval() before torch.onnx.export)"
            )
        found = _BATCH_NORM_CALL.search(call)
        args_text = found.group(1).split(", ") if found else []
        momentum, eps, affine = 0.1, 1e-5, True
        if len(args_text) == 7:  # (x, weight, bias, running_mean, running_var, momentum, eps)
            try:
                momentum, eps = float(args_text[5]), float(args_text[6])
            except ValueError:
                pass
            affine = args_text[1] != "None"
        if not (0 <= momentum <= 1 and 0 <= eps < 1):
            momentum, eps = 0.1, 1e-5
        tensors = [
            ("weight", np.ones(channels)),
            ("bias", np.zeros(channels)),
            ("running_mean", np.zeros(channels)),
            ("running_var", np.full(channels, 1.0 - eps)),
        ][0 if affine else 2 :]
        args = {"num_features": channels, "eps": eps, "momentum": momentum, "affine": affine}
        self.activation(
            "BatchNorm1d", args, f"{where}, where the exporter folded it", imported, tensors
        )
        imported.notes.append(
            f"the exporter folded the BatchNorm {module!r} into the Linear before it "
            "(torch.onnx.export's optimize=True): the import computes the same, with that "
            f"Linear's weights folded and {module!r} a BatchNorm1d that changes nothing, so that "
            "torch's state_dict loads into it; export with optimize=False to keep it as it was"
        )

    def pattern(self, node, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """A layer `fuse_patterns` (layerc.onnx_match) recognised in several nodes: `node.op_type` is its kind,
        its attributes the numbers the pattern bound, its inputs after the first the tensors
        (vectors along the last axis)."""
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kind = node.op_type
        pattern = _onnx(kind).patterns[int(attrs.pop("pattern"))]
        keys = [k for k in attrs.pop("tensors").decode().split(",") if k]
        bound: P.Bound = {name: float(value) for name, value in attrs.items()}
        bound.update(zip(keys, node.input[1:], strict=True))
        where = f"{where}, from {node.doc_string}"
        self.current = self.resolve(node.input[0])
        self.sample = self.samples[self.current]
        tensors: list[tuple[str, np.ndarray]] = []
        if keys:
            if self.sample is None:
                raise self.error(f"{where} needs the size of its input, which is not known")
            found = [
                (key, name, self.array(name, where))
                for key, name in zip(keys, node.input[1:], strict=True)
            ]
            tensors = self.shaped(found, (self.sample[-1],), where)
        self.activation(kind, pattern.arguments(bound, self.sample), where, imported, tensors)
        index = len(imported.layers) - 1
        imported.ops.append(T.Call(index, (self.current,), node.output[0], T.node_scope(node)))
        self.samples[node.output[0]] = self.sample

    def arithmetic(self, node, data: list[str], where: str, imported: _Imported) -> bool:  # type: ignore[no-untyped-def]
        """Add, Sub, Mul of two values of one shape, or of a value and one number; Neg of a
        value. False for an Add that is a bias (a constant added to a Linear's value that
        nothing else reads), which `op_Add` reads."""
        op = _ARITHMETIC[node.op_type]
        if op == "neg":
            if len(data) != 1:
                raise self.error(f"{where} negates a constant; layerc reads Neg of a value")
            operands: tuple[str | float, ...] = (data[0],)
        elif len(data) == 2:
            a, b = data
            sa, sb = self.samples[a], self.samples[b]
            if sa is not None and sb is not None and sa != sb:
                raise self.error(
                    f"{where} combines values of shapes {W.fmt_shape(sa)} and "
                    f"{W.fmt_shape(sb)}; a forward block combines values of one shape (no "
                    "broadcasting)"
                )
            operands = (a, b)
        elif len(data) == 1:
            (value,) = data
            if op == "+" and self.is_bias(value):
                return False
            numbers = []
            for name in node.input:
                if name in self.constants:
                    array = self.array(name, where)
                    if array.size != 1:
                        raise self.error(
                            f"{where} combines a value with a constant of shape "
                            f"{W.fmt_shape(array.shape)}; a forward block combines a value with "
                            "a number or with a value of its shape"
                        )
                    numbers.append(float(array.reshape(())))
            operands = tuple(
                self.resolve(n) if n not in self.constants else numbers.pop(0) for n in node.input
            )
        else:
            raise self.error(f"{where} computes on constants only; layerc reads it on values")
        out = node.output[0]
        imported.ops.append(T.Arith(op, operands, out, T.node_scope(node)))
        self.samples[out] = self.samples[data[0]]
        return True

    def is_bias(self, value: str) -> bool:
        """Whether `value` is the output of a Gemm or MatMul that nothing else reads (so a
        constant added to it is the Linear's bias)."""
        return value in self.linear_of and self.readers.get(value, 0) == 1

    def concat(self, node, attrs: dict, data: list[str], where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """Concat of values along their last axis: `cat`."""
        if len(data) != len([n for n in node.input if n]):
            raise self.error(f"{where} joins a constant to a value; layerc's cat joins values")
        samples = [self.samples[v] for v in data]
        ranks = {1 if s is None else len(s) for s in samples}
        rank = ranks.pop() if len(ranks) == 1 else None
        axis = int(attrs.get("axis", 0))
        if rank is None or axis not in (-1, rank):
            raise self.error(
                f"{where} joins values along axis {axis}; layerc's cat joins them along their "
                "last axis"
            )
        out = node.output[0]
        if all(s is not None for s in samples):
            first = samples[0]
            assert first is not None
            if any(s[:-1] != first[:-1] for s in samples if s is not None):
                raise self.error(f"{where} joins values whose other axes differ")
            self.samples[out] = (*first[:-1], sum(s[-1] for s in samples if s is not None))
        else:
            self.samples[out] = None
        imported.ops.append(T.Cat(tuple(data), out, T.node_scope(node)))

    def attributes(self, node, where: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
        import onnx

        if node.op_type in _KNOWN_ATTRIBUTES:
            known = _KNOWN_ATTRIBUTES[node.op_type]
        else:
            known = set(self.schema(node.op_type).attributes)
        out = {}
        for attr in node.attribute:
            if attr.name not in known:
                raise self.error(
                    f"{where} has the attribute {attr.name!r}, which layerc does not read"
                )
            out[attr.name] = _text(onnx.helper.get_attribute_value(attr))
        return out

    def array(self, name: str, where: str) -> np.ndarray:
        """The constant `name` as float64 (checked to be finite and exactly representable), read
        once however many nodes use it."""
        if name not in self.arrays:
            self.arrays[name] = self.read_array(name, where)
        return self.arrays[name]

    def read_array(self, name: str, where: str) -> np.ndarray:
        from onnx import TensorProto, numpy_helper

        tensor = self.constants[name]
        allowed = {
            TensorProto.BOOL,  # Dropout's training_mode
            TensorProto.FLOAT,
            TensorProto.DOUBLE,
            TensorProto.FLOAT16,
            TensorProto.BFLOAT16,
            TensorProto.INT8,
            TensorProto.INT16,
            TensorProto.INT32,
            TensorProto.INT64,
            TensorProto.UINT8,
            TensorProto.UINT16,
            TensorProto.UINT32,
            TensorProto.UINT64,
        }
        if tensor.data_type not in allowed:  # type: ignore[attr-defined]
            kind = TensorProto.DataType.Name(tensor.data_type)  # type: ignore[attr-defined]
            raise self.error(
                f"{where}: tensor {_q(name)} has type {kind}, which layerc does not read"
            )
        try:
            array = numpy_helper.to_array(tensor)  # type: ignore[arg-type]
        except Exception as exc:
            raise self.error(
                f"{where}: cannot read tensor {_q(name)}: {_first_line(exc)}"
            ) from None
        if tensor.data_type == TensorProto.BFLOAT16:  # type: ignore[attr-defined]
            array = array.astype(np.float32)  # ml_dtypes' bfloat16 widens exactly
        try:
            array = W.convert_exact(np.asarray(array), np.dtype(np.float64), f"tensor {_q(name)}")
        except W.ConversionError as exc:
            raise self.error(f"{where}: {exc}") from None
        if not np.isfinite(array).all():
            raise self.error(f"{where}: tensor {_q(name)} holds values that are not finite")
        return array

    def weight_matrix(self, name: str, where: str) -> np.ndarray:
        if not name or name not in self.constants:
            raise self.error(f"{where}: the weight must be an initializer or a Constant")
        array = self.array(name, where)
        if array.ndim != 2:
            raise self.error(
                f"{where}: weight {_q(name)} has shape {W.fmt_shape(array.shape)}; a Linear "
                "needs a 2-D weight"
            )
        return array

    def bias_vector(self, name: str, out_features: int, where: str) -> np.ndarray:
        """A constant that broadcasts over the batch as a bias of `out_features` values."""
        array = self.array(name, where)
        shape = array.shape
        if (
            len(shape) > 1 + self.rank()
            or any(d != 1 for d in shape[:-1])
            or (shape and shape[-1] not in (1, out_features))
        ):
            raise self.error(
                f"{where}: the added tensor {_q(name)} has shape {W.fmt_shape(shape)}; only a "
                f"bias of shape ({out_features},), (1, {out_features}) or a scalar maps to a Linear"
            )
        return np.broadcast_to(array.reshape(-1) if shape else array, (out_features,)).copy()

    def once(
        self, key: tuple[object, ...], make: Callable[[], np.ndarray]
    ) -> tuple[np.ndarray, tuple[object, ...]]:
        """The array `make()` gives, made only the first time `key` is asked for."""
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key], key

    def linear(
        self,
        weight: tuple[np.ndarray, tuple[object, ...]],
        bias: tuple[np.ndarray, tuple[object, ...]] | None,
        where: str,
        imported: _Imported,
    ) -> None:
        """A Linear on the last axis of the chain's value."""
        out_features, in_features = weight[0].shape
        previous = self.sample[-1] if self.sample is not None else None
        if previous is not None and previous != in_features:
            linears = any(isinstance(layer, _Linear) for layer in imported.layers)
            source = "the previous Linear layer" if linears else "the graph input"
            raise self.error(f"{where} takes {in_features} features but {source} gives {previous}")
        layer = _Linear(weight[0], None, [where], weight_key=weight[1])
        if bias is not None:
            layer.bias, layer.bias_key = bias
        imported.layers.append(layer)
        self.sample = (*self.sample[:-1], out_features) if self.sample else (out_features,)

    def rank(self) -> int:
        """How many axes the chain's value has per sample."""
        return 1 if self.sample is None else len(self.sample)

    def axis(self, axis: int) -> int | None:
        """An ONNX axis of the chain's value (batch axis 0; negative from the end) as a
        non-negative one, or None when it is out of range."""
        ndim = 1 + self.rank()
        return axis % ndim if -ndim <= axis < ndim else None

    def op_Gemm(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        if self.rank() > 1:
            assert self.sample is not None
            raise self.error(
                f"{where} takes (batch, features) values, but its input has samples of shape "
                f"{W.fmt_shape(self.sample)}; a Linear on their last axis is a MatMul"
            )
        if attrs.get("transA", 0):
            raise self.error(
                f"{where} has transA=1, which transposes the batch input; no Linear layer "
                "computes that"
            )
        alpha = float(attrs.get("alpha", 1.0))
        beta = float(attrs.get("beta", 1.0))
        b = self.weight_matrix(node.input[1], where)
        transposed = not attrs.get("transB", 0)
        oriented = b.T if transposed else b
        weight = self.once(
            ("weight", node.input[1], transposed, alpha),
            lambda: alpha * oriented if alpha != 1.0 else oriented,
        )
        bias = None
        if len(node.input) > 2 and node.input[2] and beta != 0.0:
            if node.input[2] not in self.constants:
                raise self.error(f"{where}: C must be an initializer or a Constant")
            c, out_features = node.input[2], weight[0].shape[0]
            bias = self.once(
                ("bias", c, out_features, beta),
                lambda: beta * self.bias_vector(c, out_features, where),
            )
        self.linear(weight, bias, where, imported)

    def op_MatMul(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        b = self.weight_matrix(node.input[1], where)
        self.linear(
            self.once(("weight", node.input[1], True, 1.0), lambda: b.T), None, where, imported
        )

    def op_Add(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """A constant added to a Linear's value: its bias (added to the one it has)."""
        constant = [name for name in node.input if self.resolve(name) != self.current]
        index = self.linear_of.get(self.current)
        layer = imported.layers[index] if index is not None else None
        if len(constant) != 1 or not isinstance(layer, _Linear) or not self.is_bias(self.current):
            raise self.error(
                f"{where} adds a constant to something other than the output of a Gemm or "
                "MatMul; layerc maps such an Add to the bias of the Linear layer before it"
            )
        out_features = layer.weight.shape[0]
        bias, key = self.once(
            ("bias", constant[0], out_features, 1.0),
            lambda: self.bias_vector(constant[0], out_features, where),
        )
        if layer.bias is None:
            layer.bias, layer.bias_key = bias, key
        else:
            layer.bias, layer.bias_key = layer.bias + bias, None
        layer.nodes.append(where)

    def schema(self, op: str):  # type: ignore[no-untyped-def]
        import onnx

        return onnx.defs.get_schema(op, self.opset_version, "")

    def with_defaults(self, op: str, attrs: dict) -> dict[str, object]:
        """`attrs` and the defaults of the attributes the node leaves out."""
        import onnx

        full = dict(attrs)
        for name, attr in self.schema(op).attributes.items():
            if name not in full and attr.default_value.type != onnx.AttributeProto.UNDEFINED:
                full[name] = _text(onnx.helper.get_attribute_value(attr.default_value))
        return full

    def activation(
        self,
        kind: str,
        args: dict[str, object],
        where: str,
        imported: _Imported,
        tensors: list[tuple[str, np.ndarray]] | None = None,
    ) -> None:
        """A layer of `kind` with the arguments `args` (those with their default left out);
        arguments the kind refuses (as the checker would) refuse the node."""
        written = self.arguments(kind, args, where, imported)
        why = _refusal(kind, written)
        if why is not None:
            raise self.error(f"{where} reads as a {kind} that layerc refuses: {why}")
        imported.layers.append(_Activation(kind, written, [where], tensors or []))

    def arguments(
        self, kind: str, args: dict[str, object], where: str, imported: _Imported
    ) -> tuple[S.Arg, ...]:
        """The arguments `args` of a layer of `kind` as the .lyr writes them: in the kind's
        order, those that differ from their default."""
        defaults = {p.name: p.default for p in KINDS[kind].params}
        order = list(defaults)
        written = []
        for name, value in sorted(args.items(), key=lambda item: order.index(item[0])):
            default = defaults.get(name)
            if isinstance(value, float):
                if not math.isfinite(value):
                    raise self.error(f"{where}: {name} = {value} is not a finite number")
                if isinstance(default, float) and np.float32(value) == np.float32(default):
                    continue
                node: S.Value = _number(value, self.number(value, imported))
            elif value == default:
                continue
            elif isinstance(value, bool):
                node = S.Bool(value, _BUILT)
            elif isinstance(value, int):
                node = _number(value, str(value))
            elif isinstance(value, tuple):  # a shape (LayerNorm's normalized_shape)
                node = S.ListLit.of([_number(v, str(v)) for v in value], _BUILT)
            else:
                if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,40}", value):
                    raise self.error(
                        f"{where}: {name} = {_q(str(value))} is not a value layerc reads"
                    )
                node = S.String(value, _BUILT)
            written.append(S.Arg(name, node, _BUILT))
        return tuple(written)

    @staticmethod
    def number(value: float, imported: _Imported) -> str:
        # float32 models get the shortest text that rounds to the same float32; float64 models
        # get the float32 value exactly, as ONNX Runtime widens it (ONNX attributes are float32).
        if imported.dtype == np.float32:
            return str(np.format_float_positional(np.float32(value), unique=True, trim="0"))
        return repr(float(value))

    def op_kind(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """An op of the table of kinds: read by the first kind that exports as it and reads it
        itself (`Onnx.read`: tensor inputs, arguments from the value's shape), else as the
        first kind whose attributes match, each node attribute either an argument of the kind
        or the constant the kind exports."""
        for kind in KINDS_BY_OP[node.op_type]:
            read = _onnx(kind).read
            if read is not None:
                read_args, tensors = read(self, node, attrs, where)
                self.activation(kind, read_args, where, imported, tensors)
                return
        full = self.with_defaults(node.op_type, attrs)
        refused = []  # the kinds whose attributes match, but not their arguments' checks
        for kind in KINDS_BY_OP[node.op_type]:
            args = _match_attributes(kind, full)
            if args is None:
                continue
            written = self.arguments(kind, args, where, imported)
            why = _refusal(kind, written)
            if why is None:
                imported.layers.append(_Activation(kind, written, [where], []))
                return
            refused.append(f"; as a {kind}, {why}")
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(full.items()))
        raise self.error(
            f"{where} has attributes ({shown}) that no layer kind computes "
            f"(layerc maps {node.op_type} to {', '.join(KINDS_BY_OP[node.op_type])}"
            f"{''.join(refused)})"
        )

    def op_Softmax(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        # opset >= 13: softmax along `axis` (default -1). Before 13: the input is flattened to 2-D
        # at `axis` (default 1) and softmax taken over the second part. On the chain's values
        # both mean the last axis exactly when `axis` is the last axis.
        axis = int(attrs.get("axis", -1 if imported.opset >= 13 else 1))
        if self.axis(axis) != self.rank():
            what = node.op_type.lower()
            raise self.error(
                f"{where} takes {what} over axis {axis}; layerc supports only the last (feature) "
                "axis"
            )
        self.op_kind(node, {"axis": -1}, where, imported)

    op_LogSoftmax = op_Softmax

    def op_Clip(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """Clip with constant bounds (attributes before opset 11, inputs since)."""
        bounds = dict(attrs)
        for name, input_name in zip(("min", "max"), node.input[1:], strict=False):
            if input_name:
                value = self.array(input_name, where)
                if value.size != 1:
                    raise self.error(f"{where}: {name} must be a single number")
                bounds[name] = float(value.reshape(()))
        if set(bounds) != {"min", "max"}:
            raise self.error(
                f"{where} has no {' or '.join(sorted({'min', 'max'} - set(bounds)))} bound; "
                f"layerc maps a Clip with both bounds to {' or '.join(KINDS_BY_OP['Clip'])}"
            )
        self.op_kind(node, bounds, where, imported)

    def op_Dropout(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """Dropout at inference: the identity, as a Dropout layer (with its rate, when given)."""
        ratio = attrs.get("ratio")
        if len(node.input) > 2 and node.input[2]:
            if self.array(node.input[2], where).any():
                raise self.error(
                    f"{where} is in training mode; layerc models run in eval mode (call "
                    "model.eval() before torch.onnx.export)"
                )
        if len(node.input) > 1 and node.input[1]:
            ratio = float(self.array(node.input[1], where).reshape(-1)[0])
        args: dict[str, object] = {}
        if ratio is not None:
            if not 0.0 <= float(ratio) <= 1.0:  # type: ignore[arg-type]
                raise self.error(f"{where}: ratio = {ratio} is not a probability")
            args["p"] = float(ratio)  # type: ignore[arg-type]
        self.activation("Dropout", args, where, imported)

    def tensors(
        self, node, kind: str, where: str, *, required: int
    ) -> list[tuple[str, str, np.ndarray]]:  # type: ignore[no-untyped-def]
        """The constant inputs after the data input: (the kind's name for it, the input's name,
        the array), in the order of the kind's ONNX inputs; the first `required` must be
        there."""
        spec = _onnx(kind)
        out = [
            (name, input_name, self.array(input_name, where))
            for name, input_name in zip(spec.inputs, node.input[1:], strict=False)
            if input_name
        ]
        if len(out) < required:
            raise self.error(
                f"{where} needs {', '.join(spec.inputs[:required])} as constant inputs"
            )
        return out

    def is_parameter(self, name: str) -> bool:
        return _PARAMETER_NAME.fullmatch(name) is not None

    def shaped(
        self, tensors: list[tuple[str, str, np.ndarray]], shape: tuple[int, ...], where: str
    ) -> list[tuple[str, np.ndarray]]:
        """Each tensor as an array of `shape` (it may have leading axes of size 1 more or
        fewer), named by the kind."""
        out = []
        for name, input_name, array in tensors:
            if _strip_ones(array.shape) != _strip_ones(shape):
                raise self.error(
                    f"{where}: {name} {_q(input_name)} has shape {W.fmt_shape(array.shape)}, "
                    f"but the layer needs {W.fmt_shape(shape)} for its input"
                )
            out.append((name, array.reshape(shape)))
        return out

    def channels(self, where: str) -> int | None:
        """The channels of the chain's value, for a layer that takes samples (C,) or (C, L)."""
        if self.rank() > 2:
            assert self.sample is not None
            raise self.error(
                f"{where} takes samples of shape {W.fmt_shape(self.sample)}; layerc's "
                "per-channel layers take (C,) or (C, L)"
            )
        return None if self.sample is None else self.sample[0]

    def op_Identity(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """Nothing to compute: the output is another name of the value (`node` aliases it)."""

    def op_Flatten(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """ONNX's Flatten makes a value 2-D: at axis 1 it keeps the batch axis and flattens each
        sample, a Flatten layer (nothing, on (batch, features) values)."""
        axis = int(attrs.get("axis", 1))
        if self.axis(axis) != 1:
            raise self.error(
                f"{where} flattens at axis {axis}, which would mix the batch into the features; "
                "layerc reads a Flatten at axis 1, which flattens each sample"
            )
        if self.sample is not None and len(self.sample) > 1:
            self.activation("Flatten", {}, where, imported)
            self.sample = (math.prod(self.sample),)
        self.op_Identity(node, attrs, where, imported)

    def op_Reshape(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """A Reshape that keeps the batch axis and merges neighbouring axes of each sample into
        one is a Flatten layer (layerc export writes a Flatten to several axes so)."""
        if self.sample is None:
            raise self.error(f"{where} reshapes a value whose shape is not known")
        if len(node.input) < 2 or node.input[1] not in self.constants:
            raise self.error(f"{where}: the shape must be an initializer or a Constant")
        target = [int(v) for v in self.array(node.input[1], where).reshape(-1)]
        copies = not attrs.get("allowzero", 0)  # a 0 copies the input's size on that axis
        batch, *dims = target or [1]
        dims = [
            self.sample[i] if d == 0 and copies and i < len(self.sample) else d
            for i, d in enumerate(dims)
        ]
        if dims.count(-1) == 1 and batch == 0 and copies:
            known = math.prod(d for d in dims if d != -1)
            if known > 0 and math.prod(self.sample) % known == 0:
                dims[dims.index(-1)] = math.prod(self.sample) // known
        # 0 copies the batch, -1 infers it; an export with a fixed batch (torch.onnx.export's
        # default) writes that size, which a model of any batch reads as the batch
        keeps_batch = (batch == 0 and copies) or batch == -1 or batch == self.fixed_batch
        new = tuple(dims)
        run = _merged_axes(self.sample, new) if keeps_batch else None
        if run is None and not (keeps_batch and new == self.sample):
            raise self.error(
                f"{where} reshapes samples of shape {W.fmt_shape(self.sample)} to {target[1:]} "
                f"(batch {target[0]}); layerc reads a Reshape that keeps the batch axis and "
                "merges neighbouring axes of each sample (a Flatten)"
            )
        if run is not None:
            start, end = run
            last = end + 1 == len(self.sample)
            args: dict[str, object] = {"start_dim": start + 1, "end_dim": -1 if last else end + 1}
            self.activation("Flatten", args, where, imported)
            self.sample = new
        self.op_Identity(node, attrs, where, imported)

    def op_Transpose(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        raise self.error(
            f"{where} transposes the output of the previous layer, which no layer kind does; "
            "layerc reads a Transpose only of a constant (a weight)"
        )

    def fold(self, node, attrs: dict, where: str) -> None:  # type: ignore[no-untyped-def]
        """A node that only rearranges a constant is a constant: a copy (torch.onnx.export
        writes them for shared weights), a transposed weight or a reshaped slope (layerc export
        writes these on samples of several axes)."""
        data, out = node.input[0], node.output[0]
        self.constants[out] = self.constants[data]  # (its dims still count its values)
        if node.op_type == "Identity":
            return
        array = self.array(data, where)
        if node.op_type == "Transpose":
            perm = attrs.get("perm")
            target = list(perm) if perm else list(range(array.ndim))[::-1]  # type: ignore[call-overload]
        else:
            if len(node.input) < 2 or node.input[1] not in self.constants:
                raise self.error(f"{where}: the shape must be an initializer or a Constant")
            target = [int(v) for v in self.array(node.input[1], where).reshape(-1)]
            if not attrs.get("allowzero", 0):  # a 0 copies the input's size on that axis
                target = [
                    array.shape[i] if d == 0 and i < array.ndim else d for i, d in enumerate(target)
                ]
        try:
            if node.op_type == "Transpose":
                self.arrays[out] = array.transpose(target)
            else:
                self.arrays[out] = array.reshape(target)
        except ValueError:
            raise self.error(
                f"{where} cannot {node.op_type.lower()} tensor {_q(data)} of shape "
                f"{W.fmt_shape(array.shape)} by {target}"
            ) from None

    def finish(self, imported: _Imported) -> None:
        for value in self.graph.output:
            name = self.resolve(value.name)
            if name not in self.samples:
                raise self.error(f"the graph's output {_q(value.name)} is not computed by any node")
            imported.outputs.append(name)
        _drop_unused(imported)
        imported.samples = self.samples


def _drop_unused(imported: _Imported) -> None:
    """Leave out the operations no output depends on, and the layers only they call (an export
    may hold nodes whose values nothing reads)."""
    live = set(imported.outputs)
    kept: list[T.Op] = []
    for op in reversed(imported.ops):
        if op.out in live:
            kept.append(op)
            live.update(op.reads)
    kept.reverse()
    used = sorted({op.layer for op in kept if isinstance(op, T.Call)})
    index = {old: new for new, old in enumerate(used)}
    imported.layers = [imported.layers[i] for i in used]
    imported.ops = [
        T.Call(index[op.layer], op.sources, op.out, op.scope) if isinstance(op, T.Call) else op
        for op in kept
    ]


def _text(value: object) -> object:
    """An ONNX string attribute (bytes) as text; any other value as it is."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape` without its leading axes of size 1."""
    i = 0
    while i < len(shape) and shape[i] == 1:
        i += 1
    return shape[i:]


def _merged_axes(old: tuple[int, ...], new: tuple[int, ...]) -> tuple[int, int] | None:
    """The run of neighbouring axes `old[start:end + 1]`, two or more, that merged into one
    gives `new` (the first such run), or None."""
    extra = len(old) - len(new)
    if extra < 1:
        return None
    for start in range(len(new)):
        end = start + extra
        if (
            old[:start] == new[:start]
            and old[end + 1 :] == new[start + 1 :]
            and math.prod(old[start : end + 1]) == new[start]
        ):
            return start, end
    return None


def _onnx(kind: str) -> Onnx:
    """The table's ONNX form of `kind`, which has one (it is in `KINDS_BY_OP`)."""
    spec = KINDS[kind].onnx
    assert spec is not None, kind
    return spec


def _match_attributes(kind: str, attrs: dict[str, object]) -> dict[str, object] | None:
    """The arguments of a layer of `kind` that exports as an op with the attributes `attrs`
    (every attribute, defaults filled in), or None if none does. An attribute the kind's
    `Onnx.attributes` copies from an argument gives that argument (found by passing a marker
    for each argument in turn); any other must equal, as a float32, the value the kind exports.
    The arguments the op has no attribute for take the values at which it computes the kind
    (`Onnx.fixed`: ONNX's Softplus is torch's with beta=1 and threshold=20)."""
    spec = KINDS[kind]
    onnx = _onnx(kind)
    fixed = dict(onnx.fixed)
    defaults = {p.name: p.default for p in spec.params} | fixed
    source: dict[str, str] = {}  # attribute -> the argument it copies
    for param in spec.params:
        if param.name in fixed:
            continue
        marker = object()
        try:
            probed = onnx.attributes({**defaults, param.name: marker})
        except Exception:  # an attribute computed from the argument: not a copy
            continue
        for name, value in probed.items():
            if value is marker:
                source[name] = param.name
    exported = onnx.attributes(defaults)
    args: dict[str, object] = dict(fixed)
    for name, value in attrs.items():
        if name in source:
            copied = source[name]
            if copied in args and not _same_attribute(value, args[copied]):
                return None  # two attributes that copy one argument (Softshrink's bias, lambd)
            args[copied] = value
        elif name in exported:
            if not _same_attribute(value, exported[name]):
                return None
        else:
            return None
    return args


def _refusal(kind: str, args: tuple[S.Arg, ...]) -> str | None:
    """Why the checker would refuse a layer of `kind` with the arguments `args`, or None: each
    argument converted and checked by its parameter, then the kind's checks between them."""
    spec = KINDS[kind]
    try:
        spec.validate(B.bind(kind, spec.params, args, _BUILT))
    except LayercError as exc:
        return exc.message
    return None


def _same_attribute(value: object, exported: object) -> bool:
    if isinstance(exported, float) or isinstance(value, float):
        try:
            return bool(np.float32(value) == np.float32(exported))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    return value == exported


# --------------------------------------------------------------------------- .lyr text


def model_name_for(stem: str) -> str:
    """A model name from a file name: 'mnist_mlp' -> 'MnistMlp'; never a layer kind."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", stem) if p]
    name = "".join(p[:1].upper() + p[1:] for p in parts)
    if not name or not name[0].isalpha() or not name.isascii():
        name = "Model" + name
    if name in KINDS:
        name += "Model"
    return name[:MAX_NAME_LENGTH]


# Where the nodes of a tree built in code stand: nowhere in a source.
_BUILT = Loc("<layerc import>", 1, 1)


def _number(value: float, text: str) -> S.Number:
    return S.Number(float(value), isinstance(value, int), text, _BUILT)


def _load(path: str, key: str) -> S.Call:
    """`load(path, key)`."""
    args = (S.Arg(None, S.String(path, _BUILT), _BUILT), S.Arg(None, S.String(key, _BUILT), _BUILT))
    return S.Call("load", args, _BUILT)


def _render(
    imported: _Imported, source: str, stem: str, weights_name: str, display: str | None = None
) -> tuple[str, dict[str, np.ndarray]]:
    """The .lyr text (a syntax tree, printed by the one printer) and the arrays of its weights
    file, keyed as the state_dict will be; a weight or bias that several layers share is stored
    once, under the first one's key. The models nest as the original PyTorch modules did, where
    the exporter recorded them (layerc.onnx_tree). Text from the ONNX file goes only into
    comments, which the printer makes safe, and names that are plain identifiers; the weights
    file's name, into strings that it escapes."""
    dtype = imported.dtype
    if not weights_name.isprintable():  # a line break, or a character no reader would see
        raise LayercError(
            f"the file name {weights_name!r} has characters a .lyr string cannot hold",
            file=source,
        )
    arrays: dict[str, np.ndarray] = {}
    stored: dict[tuple[object, ...], str] = {}  # what layers share -> the key it is stored under

    def load(array: np.ndarray, key: tuple[object, ...] | None, name: str) -> S.Call:
        """`load` of `array` from the weights file: under `name`, or where a layer sharing it
        put it."""
        if key is not None and key in stored:
            return _load(weights_name, stored[key])
        arrays[name] = W.convert_exact(array, dtype, name.split(".")[-1])
        if key is not None:
            stored[key] = name
        return _load(weights_name, name)

    paths = _layer_paths(imported)  # (merges the layers that are one module called twice)
    tree = T.build_tree(imported.ops, paths, [n for n, _ in imported.inputs], imported.outputs)
    model_names = _model_names(tree, model_name_for(stem))
    header = (
        # Lines 1 and 2 hold no text from the ONNX file or its name (an editor or tool that
        # honours a coding declaration there must not be steered by a hostile name).
        f"{IMPORT_HEADER.removeprefix('# ')}{__version__} from an ONNX model; edit freely, or "
        "import it again.",
        f"ONNX opset {imported.opset}.",
        f"Source: {source!r}, graph {_q(imported.graph_name)}.",
        f"The weights are in {weights_name}, beside this file.",
    )
    models: list[S.ModelDef] = []
    for model in tree:
        layers, forward = _members(model, imported, model_names, load)
        if not layers and forward is None:  # the graph returns its input
            layers = [S.LayerDef(None, "Identity", _BUILT, (), True, None, _BUILT)]
        options: tuple[S.Arg, ...] = ()
        sample = imported.samples.get(model.inputs[0]) if model.inputs else None
        first = _first_member(model)
        if forward is None and (
            first is None
            or (isinstance(first, int) and not isinstance(imported.layers[first], _Linear))
            or (sample is not None and len(sample) > 1)
        ):
            if sample is None:
                raise LayercError(
                    f"the input {_q(model.inputs[0])} of {model_names[model.path]} has no fixed "
                    "feature size, and the model does not start with a Gemm or MatMul that would "
                    "give it one (torch.onnx.export: make only the batch axis dynamic, or none)",
                    file=display or source,
                )
            shape = S.ListLit.of([_number(d, str(d)) for d in sample], _BUILT)
            options += (S.Arg("input", shape, _BUILT),)
        if dtype == np.float64:
            options += (S.Arg("dtype", S.Name("float64", _BUILT), _BUILT),)
        comments = (header if not models else ()) + _model_comment(model)
        models.append(
            S.ModelDef(
                model_names[model.path],
                options,
                tuple(layers),
                _BUILT,
                _BUILT,
                comments,
                forward,
            )
        )
    text = print_program(S.Program(f"{stem}.lyr", tuple(models)))
    assert text.startswith(IMPORT_HEADER), "the header `_written_by_import` looks for"
    return text, arrays


def _model_comment(model: T.Model) -> tuple[str, ...]:
    """What a model of the tree was in the PyTorch model, where the exporter said."""
    cls = f" ({model.cls})" if model.cls else ""
    if not model.path:
        return (f"The PyTorch model{cls}.",) if cls else ()
    return (f"PyTorch module {'.'.join(model.path)!r}{cls}.",)


def _first_member(model: T.Model) -> int | tuple[str, ...] | None:
    first = model.ops[0] if model.ops else None
    return model.members[first.layer] if isinstance(first, T.Call) else None


Load = Callable[[np.ndarray, "tuple[object, ...] | None", str], S.Call]


def _members(
    model: T.Model,
    imported: _Imported,
    model_names: dict[tuple[str, ...], str],
    load: Load,
) -> tuple[list[S.LayerDef], S.ForwardDef | None]:
    """A model's layer definitions and, unless it is a pipeline, its forward block."""
    where = ".".join(model.path)
    if model.positional or (model.is_chain() and all(n is None for n in model.names)):
        order = (
            T.positions(model)
            if model.positional
            else [op.layer for op in model.ops if isinstance(op, T.Call)]
        )
        layers = []
        for position, member in enumerate(order):
            key = f"{where}.{position}" if where else str(position)
            if member is None:
                layers.append(
                    S.LayerDef(
                        None,
                        "Identity",
                        _BUILT,
                        (),
                        True,
                        None,
                        _BUILT,
                        (
                            f"position {position}: nothing in the ONNX graph (a layer that computes "
                            "nothing in eval mode, such as Dropout)",
                        ),
                    )  # fmt: skip
                )
                continue
            layers.append(_layer_def(model.members[member], None, key, imported, model_names, load))
        return layers, None
    names = _member_names(model, imported)
    layers = [
        _layer_def(member, name, f"{where}.{name}" if where else name, imported, model_names, load)
        for member, name in zip(model.members, names, strict=True)
    ]
    if model.is_chain():
        ordered = [op.layer for op in model.ops if isinstance(op, T.Call)]
        return [layers[i] for i in ordered], None
    sub = _Imported(
        imported.dtype,
        inputs=[(v, imported.samples.get(v)) for v in model.inputs],
        ops=model.ops,
        outputs=model.outputs,
    )
    # the graph's inputs keep their names (torch's forward's arguments); a nested model's are
    # named by position, as the names of values inside the graph mean nothing there
    count = len(model.inputs)
    inputs = (
        None if not model.path else ["x"] if count == 1 else [f"x{i + 1}" for i in range(count)]
    )
    return layers, _forward(sub, names, inputs)


def _layer_def(
    member: int | tuple[str, ...],
    name: str | None,
    key: str,
    imported: _Imported,
    model_names: dict[tuple[str, ...], str],
    load: Load,
) -> S.LayerDef:
    """One layer of a model: a layer read from the graph (its weights under `key.weight`...),
    or a nested model."""
    if isinstance(member, tuple):
        return S.LayerDef(name, model_names[member], _BUILT, (), True, None, _BUILT)
    layer = imported.layers[member]
    comments = (f"from {', '.join(layer.nodes)}",)
    if isinstance(layer, _Activation):
        tensors = tuple(
            S.Entry(entry, load(array, None, f"{key}.{entry}"), _BUILT)
            for entry, array in layer.tensors
        )
        return S.LayerDef(
            name, layer.kind, _BUILT, layer.args, True, tensors or None, _BUILT, comments
        )
    out_features, in_features = layer.weight.shape
    args = (
        S.Arg("in_features", _number(in_features, str(in_features)), _BUILT),
        S.Arg("out_features", _number(out_features, str(out_features)), _BUILT),
        S.Arg("bias", S.Bool(layer.bias is not None, _BUILT), _BUILT),
    )
    entries: tuple[S.Entry, ...] = (
        S.Entry("weight", load(layer.weight, layer.weight_key, f"{key}.weight"), _BUILT),
    )
    if layer.bias is not None:
        entries += (S.Entry("bias", load(layer.bias, layer.bias_key, f"{key}.bias"), _BUILT),)
    return S.LayerDef(name, "Linear", _BUILT, args, True, entries, _BUILT, comments)


def _layer_paths(imported: _Imported) -> list[tuple[str, ...] | None]:
    """Each layer's module path in the original PyTorch model: where the exporter recorded the
    node (layerc.onnx_tree.node_scope), else a Linear's weight initializer (`fc1.weight`);
    None where neither says. Layers that are one module called twice (the same path, kind,
    arguments and tensors) become one layer called twice."""
    scopes: dict[int, T.Scope] = {}
    for op in imported.ops:
        if isinstance(op, T.Call) and op.scope is not None:
            scopes.setdefault(op.layer, op.scope)
    paths: list[tuple[str, ...] | None] = []
    for index, layer in enumerate(imported.layers):
        scope = scopes.get(index)
        path = scope.path if scope is not None else None
        if isinstance(layer, _Linear) and path is None:
            path = _weight_path(layer)
        paths.append(path)
    # one module called twice: TorchScript names the second call `fc_1`, dynamo `fc` again
    first: dict[tuple[str, ...], int] = {}
    merged: dict[int, int] = {}
    for index, path in enumerate(paths):
        if path is None:
            continue
        for candidate in (path, T.without_call_suffix(path)):
            other = first.get(candidate) if candidate is not None else None
            if other is not None and _same_layer(imported.layers[other], imported.layers[index]):
                merged[index] = other
                break
        else:
            first.setdefault(path, index)
    if merged:
        imported.ops = [
            T.Call(merged.get(op.layer, op.layer), op.sources, op.out, op.scope)
            if isinstance(op, T.Call)
            else op
            for op in imported.ops
        ]
        kept = [i for i in range(len(paths)) if i not in merged]
        _drop_unused(imported)  # renumbers the layers still called, in order
        paths = [paths[i] for i in kept]
    return paths


def _weight_path(layer: _Linear) -> tuple[str, ...] | None:
    """`fc1.weight` -> ("fc1",): the module a Linear's weight initializer names."""
    if layer.weight_key is None:
        return None
    source = str(layer.weight_key[1])
    if not source.endswith(".weight"):
        return None
    parts = source.removesuffix(".weight").split(".")
    return tuple(parts) if all(_NAME_PART.fullmatch(p) for p in parts) else None


def _same_layer(a: _Linear | _Activation, b: _Linear | _Activation) -> bool:
    """Whether two layers read from the graph are one module (called twice)."""
    if isinstance(a, _Linear) and isinstance(b, _Linear):
        return (
            a.weight_key is not None
            and a.weight_key == b.weight_key
            and a.bias_key == b.bias_key
            and (a.bias is None) == (b.bias is None)
        )
    if isinstance(a, _Activation) and isinstance(b, _Activation):
        return (
            a.kind == b.kind
            and a.args == b.args
            and len(a.tensors) == len(b.tensors)
            and all(
                ka == kb and np.array_equal(va, vb)
                for (ka, va), (kb, vb) in zip(a.tensors, b.tensors, strict=True)
            )
        )
    return False


def _model_names(tree: list[T.Model], root: str) -> dict[tuple[str, ...], str]:
    """A name for each model of the tree: the whole graph's `root`; a nested one its PyTorch
    class's where the exporter recorded it (not torch.nn's containers), else its path's
    (`blocks.0` -> Blocks0); unique, never a layer kind."""
    taken = {root, *KINDS}
    names: dict[tuple[str, ...], str] = {(): root}
    for model in tree:
        if not model.path:
            continue
        short = (model.cls or "").rsplit(".", 1)[-1]
        wanted = short if re.fullmatch(r"[A-Z][A-Za-z0-9_]{0,40}", short) else ""
        if not wanted or wanted in _CONTAINER_CLASSES:
            wanted = model_name_for("_".join(model.path))
        name, n = wanted, 1
        while name in taken:
            n += 1
            name = f"{wanted}_{n}"
        taken.add(name)
        names[model.path] = name
    return names


_CONTAINER_CLASSES = ("Sequential", "ModuleList", "ModuleDict")


_NAME_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
# Names a layer of a graph model cannot take (the checker refuses them).
_NOT_LAYER_NAMES = {"cat", "forward", "return", "model", "test", "true", "false"}


def _member_names(model: T.Model, imported: _Imported) -> list[str]:
    """A name for each member of a model that is not a positional pipeline: PyTorch's, where
    the exporter kept it (a number becomes `layer_2`), else the kind and a number (`relu2`);
    unique and valid."""
    from .runtime.layers import reserved_names

    reserved = reserved_names() | _NOT_LAYER_NAMES
    taken: set[str] = set()
    out = []
    for index, (member, wanted) in enumerate(zip(model.members, model.names, strict=True)):
        name = wanted
        if name is not None and name[0].isdigit():
            name = "layer_" + name
        if name is None or len(name) > MAX_NAME_LENGTH // 2 or name.startswith("__"):
            if isinstance(member, tuple):
                name = f"block{index}"
            else:
                layer = imported.layers[member]
                kind = "linear" if isinstance(layer, _Linear) else layer.kind.lower()
                name = f"{kind}{index}"
        while name in taken or name in reserved or keyword.iskeyword(name):
            name += "_"
        taken.add(name)
        out.append(name)
    return out


def _forward(
    imported: _Imported, names: list[str], input_names: list[str] | None = None
) -> S.ForwardDef:
    """The forward block of the graph read: an input per graph input (annotated with its shape
    when known), a statement for each value read more than once, other values written inside
    the expression that reads them, and the outputs returned in order."""
    layer_names = set(names)
    taken = set(layer_names) | _NOT_LAYER_NAMES

    def fresh(wanted: str) -> str:
        name = wanted if re.fullmatch(r"(?!__)[A-Za-z_][A-Za-z0-9_]{0,63}", wanted) else "x"
        while name in taken or keyword.iskeyword(name):
            name += "_"
        taken.add(name)
        return name

    inputs = []
    refs: dict[str, str] = {}
    for position, (onnx_name, sample) in enumerate(imported.inputs):
        refs[onnx_name] = fresh(onnx_name if input_names is None else input_names[position])
        inputs.append(S.Input(refs[onnx_name], sample, _BUILT, _BUILT if sample else None))
    made = {op.out: op for op in imported.ops}
    reads: dict[str, int] = {}
    for op in imported.ops:
        for value in op.reads:
            reads[value] = reads.get(value, 0) + 1
    for value in imported.outputs:
        reads[value] = reads.get(value, 0) + 1
    depth: dict[str, int] = {}

    def expr(value: str | float) -> S.Expr:
        if not isinstance(value, str):
            text = S.Num(repr(abs(float(value))), _BUILT)
            return S.Neg(text, _BUILT) if math.copysign(1, value) < 0 else text
        if value in refs:
            return S.Ref(refs[value], _BUILT)
        return written(made[value])

    def written(op: T.Op) -> S.Expr:
        if isinstance(op, T.Call):
            return S.Apply(names[op.layer], tuple(expr(v) for v in op.sources), _BUILT)
        if isinstance(op, T.Cat):
            return S.Apply("cat", tuple(expr(v) for v in op.sources), _BUILT)
        if op.op == "neg":
            return S.Neg(expr(op.operands[0]), _BUILT)
        left, right = (expr(o) for o in op.operands)
        return S.BinOp(op.op, left, right, _BUILT)

    body: list[S.Assign] = []
    for op in imported.ops:
        sources = [s for s in op.reads if s not in refs]
        depth[op.out] = 1 + max((depth[s] for s in sources), default=0)
        if reads.get(op.out, 0) != 1 or depth[op.out] >= _INLINE_DEPTH:
            statement = S.Assign(fresh(f"h{len(body) + 1}"), written(op), _BUILT)
            refs[op.out] = statement.name
            depth[op.out] = 0
            body.append(statement)
    result = S.Return(tuple(expr(v) for v in imported.outputs), _BUILT)
    return S.ForwardDef(tuple(inputs), tuple(body), result, _BUILT)


# An expression of the forward block nests at most this many operations; deeper ones are cut
# into statements (the parser allows MAX_EXPRESSION_DEPTH).
_INLINE_DEPTH = 24


# =========================================================================== export


def export_onnx(program: ir.Program, model_name: str | None, out: Path, source: str) -> Path:
    """`layerc export --onnx`: write the chosen model of `program` (checked from the .lyr file
    `source`) to `out` as an ONNX graph (dynamic batch), validated by onnx.checker;
    return the path written."""
    _require_onnx(source)
    from .driver import inputs_of
    from .tools import pick_model

    model = pick_model(program, model_name, source)
    inputs = inputs_of(program) or ((Path(source), "the source file"),)
    refuse_inputs([out], inputs)
    proto = build_onnx(model, program.source)
    write_files([(out, proto.SerializeToString(deterministic=True))], inputs)
    return out


def build_onnx(model: ir.Model, source: str):  # type: ignore[no-untyped-def]
    """The ModelProto of `model`: input 'input' and output 'output' of shape (batch, *sample
    shape) with a symbolic batch dimension, and each layer as its kind's ONNX operator
    (`Kind.onnx` in layerc.kinds; Gemm with transB=1 for a Linear) with its weights and buffers
    as initializers named by their state_dict keys, or as a small subgraph where that operator
    does not compute the layer (`_form`). The opset is EXPORT_OPSET, or the newest its operators
    need. A layer that cannot be written is a LayercError at the layer."""
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if model.dtype == np.float32 else TensorProto.DOUBLE
    inlined = ir.inline(model)
    forms: dict[str, _Form] = {}
    for op in inlined.ops:
        if isinstance(op, ir.FlatCall) and op.path not in forms:
            forms[op.path] = _form(op.path, op.layer, model)
    opset = max([EXPORT_OPSET, *(form_opset for form_opset, _ in forms.values())])
    graph = _Graph(model.dtype, opset, model.name)
    if model.graph is None:
        in_names, out_names = ["input"], ["output"]
    else:
        in_names = [i.name for i in model.graph.inputs]
        several = len(inlined.outputs) > 1
        out_names = [f"output_{i}" if several else "output" for i in range(len(inlined.outputs))]
    names = dict(zip(inlined.inputs, in_names, strict=True))
    returned: dict[int, str] = {}
    for value, name in zip(inlined.outputs, out_names, strict=True):
        if value not in names:
            returned.setdefault(value, name)
    calls: dict[str, int] = {}
    for index, op in enumerate(inlined.ops):
        if isinstance(op, ir.FlatCall):
            calls[op.path] = calls.get(op.path, 0) + 1
            count = calls[op.path]
            suffix = "" if count == 1 else f"_{count}"
            out = returned.get(op.out, f"/{op.path}/output{suffix}")
            first_node = len(graph.nodes)
            forms[op.path][1](graph, op.path, op.layer, names[op.source], out)
            if suffix:
                graph.rename_since(first_node, suffix, keep=out)
        else:
            out = returned.get(
                op.out,
                f"/{_ARITH_OPS[op.op] if isinstance(op, ir.FlatArith) else 'Concat'}_{index}/output",
            )
            if isinstance(op, ir.FlatArith):
                inputs = [
                    names[o] if isinstance(o, int) else graph.constant(f"/Constant_{index}_{k}", o)
                    for k, o in enumerate(op.operands)
                ]
                graph.node(_ARITH_OPS[op.op], inputs, out, f"/{_ARITH_OPS[op.op]}_{index}")
            else:
                graph.node(
                    "Concat", [names[v] for v in op.sources], out, f"/Concat_{index}", axis=-1
                )
        names[op.out] = out
    for value, name in zip(inlined.outputs, out_names, strict=True):
        if names[value] != name:
            graph.node("Identity", [names[value]], name, f"/Identity_{name}")
    onnx_graph = helper.make_graph(
        graph.nodes,
        model.name,
        [
            helper.make_tensor_value_info(name, elem, ["batch", *shape])
            for name, shape in zip(in_names, model.in_shapes, strict=True)
        ],
        [
            helper.make_tensor_value_info(name, elem, ["batch", *shape])
            for name, shape in zip(out_names, model.out_shapes, strict=True)
        ],
        graph.initializers,
    )
    opset_id = helper.make_opsetid("", opset)
    proto = helper.make_model(
        onnx_graph,
        opset_imports=[opset_id],
        ir_version=max(EXPORT_IR_VERSION, helper.find_min_ir_version_for([opset_id])),
        producer_name="layerc",
        producer_version=__version__,
        doc_string=f"{model.name}, compiled by layerc from {source!r}",
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


# The ONNX operators of a forward block's arithmetic, and back.
_ARITH_OPS = {"+": "Add", "-": "Sub", "*": "Mul", "neg": "Neg"}
_ARITHMETIC = {op: sign for sign, op in _ARITH_OPS.items()}

# How a layer is written: (the opset it needs, writer(graph, path, layer, input, output)).
_Form = tuple[int, Callable[["_Graph", str, ir.Layer, str, str], None]]


def _form(path: str, layer: ir.Layer, model: ir.Model) -> _Form:
    """How `layer` (at `path` in `model`) is written, as the table of kinds says (`Onnx`): its
    kind's operator, where that computes the layer (`_op_computes`); else the kind's subgraph.
    On samples of several axes, a kind with a form for them (`Onnx.several_axes`) is written so,
    and any other must compute value by value or along the last axes (`_any_shape`). What fits
    none is an error at the layer."""
    spec = layer.spec.onnx
    if layer.quantized:
        return EXPORT_OPSET, _quantized_linear
    if len(layer.in_shape) > 1:
        if spec is not None and spec.several_axes is not None:
            return spec.several_axes.opset, spec.several_axes.write
        if not _any_shape(layer):
            raise _cannot_write(
                path,
                layer,
                model,
                f"on samples of shape {W.fmt_shape(layer.in_shape)}, its ONNX form takes "
                "only (batch, features) values",
            )
    if spec is not None and _op_computes(layer, model.dtype):
        return spec.opset, _Graph.op
    if spec is not None and spec.subgraph is not None:
        return spec.subgraph.opset, spec.subgraph.write
    raise _cannot_write(path, layer, model, "ONNX has no operator of the same meaning")


def _quantized_linear(g: _Graph, path: str, layer: ir.Layer, x: str, out: str) -> None:
    """A Linear of a model with quantize=int8, as layerc computes it (the language reference,
    "Quantised models"): each row of x (along the last axis) quantised to 0..255 with its own
    scale s and zero point z, the integers (u - z) multiplied by the int8 weight in int32
    (MatMul of int32, exact, where ONNX's DynamicQuantizeLinear and MatMulInteger quantise a
    whole tensor with one scale), then scaled by s * scale[o], plus the bias. A row holding nan
    or inf gives nan, as in layerc."""
    from onnx import TensorProto

    from .runtime import quantized

    at = f"/{path}"
    weight = layer.tensor("weight")
    assert weight is not None
    q, scale = quantized.quantize_weight(weight.astype(g.dtype))
    zero, one, top = (
        g.constant(f"{at}/q8_{n}", v) for n, v in (("zero", 0), ("one", 1), ("top", 255))
    )
    axes = g.shape(f"{at}/q8_axes", [-1])

    def node(op: str, inputs: list[str], name: str, **attrs: object) -> str:
        return g.node(op, inputs, f"{at}/q8_{name}", f"{at}/{op}_q8_{name}", **attrs)

    def reduce(op: str, name: str) -> str:
        if g.opset >= 18:
            return node(op, [x, axes], name, keepdims=1)
        return node(op, [x], name, axes=[-1], keepdims=1)

    lo = node("Min", [reduce("ReduceMin", "min"), zero], "lo")
    hi = node("Max", [reduce("ReduceMax", "max"), zero], "hi")
    step = node("Div", [node("Sub", [hi, lo], "span"), top], "step")
    step = node("Where", [node("Equal", [step, zero], "flat"), one, step], "scale")
    z = node("Round", [node("Div", [node("Neg", [lo], "minus_lo"), step], "z_real")], "z_round")
    z = node("Clip", [z, zero, top], "z")
    u = node("Div", [x, step], "x_scaled")
    u = node("Clip", [node("Add", [node("Round", [u], "x_round"), z], "x_shifted"), zero, top], "u")
    ints = node("Cast", [node("Sub", [u, z], "centred")], "centred_int", to=TensorProto.INT32)
    qt = g.initializer(f"{path}.weight_int8_t", np.ascontiguousarray(q.T.astype(np.int32)))
    sums = node("MatMul", [ints, qt], "sums")
    elem = TensorProto.FLOAT if g.dtype == np.float32 else TensorProto.DOUBLE
    product = node("Cast", [sums], "sums_float", to=elem)
    factor = node("Mul", [step, g.initializer(f"{path}.weight_scale", scale)], "factor")
    y = node("Mul", [product, factor], "product")
    # + 0 per row, or nan for a row holding nan or inf (x - x)
    check = node("Sub", [x, x], "finite")
    check = node("ReduceSum", [check, axes], "check", keepdims=1)
    y = node("Add", [y, check], "checked")
    if layer.bias is None:
        g.node("Identity", [y], out, f"{at}/Identity_q8")
    else:
        g.node("Add", [y, g.tensor_input(path, layer, "bias")], out, f"{at}/Add_q8")


def _cannot_write(path: str, layer: ir.Layer, model: ir.Model, why: str) -> LayercError:
    return LayercError(
        f"layerc export cannot write layer {path!r} ({layer.kind}) of model {model.name!r}: {why}",
        layer.loc,
    )


def _op_computes(layer: ir.Layer, dtype: np.dtype) -> bool:
    """Whether the kind's ONNX operator computes `layer`: the layer has the arguments the op
    stands for (`Onnx.fixed`), the table says it computes the kind in the model's dtype
    (`Onnx.dtypes`), and the op's schema takes that dtype (ONNX's Celu takes float32 only)."""
    import onnx

    spec = layer.spec.onnx
    if spec is None or spec.op is None or not spec.computes(layer.argdict):
        return False
    if spec.dtypes is not None and np.dtype(dtype).name not in spec.dtypes:
        return False
    schema = onnx.defs.get_schema(spec.op, max(EXPORT_OPSET, spec.opset), "")
    (allowed,) = [
        c.allowed_type_strs
        for c in schema.type_constraints
        if c.type_param_str == schema.inputs[0].type_str
    ]
    return ("tensor(float)" if dtype == np.float32 else "tensor(double)") in allowed


def _any_shape(layer: ir.Layer) -> bool:
    """Whether the kind's ONNX form computes on samples of any shape as the kind does: it keeps
    the shape and computes value by value (an op, a subgraph of elementwise ops, an Identity),
    along the last axes (the table writes a negative axis for those ops), or per channel on
    axis 1 (`Onnx.channels_on_axis_1`)."""
    spec = layer.spec
    on_axis_1 = spec.onnx is not None and spec.onnx.channels_on_axis_1
    return spec.keeps_shape and (isinstance(spec.native, (Elementwise, Rowwise)) or on_axis_1)


def _typed(op: str, opset: int, attrs: dict[str, object]) -> dict[str, object]:
    """`attrs` with the types the op's schema gives them: an integer argument (`ELU(alpha=2)`,
    `Hardshrink(1)`) for a float attribute is a float (make_node would write an int one)."""
    import onnx

    schema = onnx.defs.get_schema(op, opset, "")
    floats = {
        name
        for name, attr in schema.attributes.items()
        if attr.type == onnx.defs.OpSchema.AttrType.FLOAT
    }
    return {
        name: float(value)
        if name in floats and isinstance(value, int) and not isinstance(value, bool)
        else value
        for name, value in attrs.items()
    }


# Attributes that became inputs in a later opset: op -> (that opset, the attributes in input order)
_ATTRIBUTE_INPUTS = {"Clip": (11, ("min", "max"))}


class _Graph:
    """The nodes and initializers of an exported graph, built layer by layer."""

    def __init__(self, dtype: np.dtype, opset: int, model: str):
        self.dtype = np.dtype(dtype)
        self.opset = opset
        self.model = model
        self.nodes: list = []
        self.initializers: list = []
        self.initializer_names: set[str] = set()

    def constant(self, name: str, value: np.ndarray | float) -> str:
        """An initializer of the model's dtype."""
        return self.initializer(name, np.asarray(value, dtype=self.dtype))

    def shape(self, name: str, dims: Sequence[int]) -> str:
        """An int64 initializer: a shape for Reshape."""
        return self.initializer(name, np.asarray(dims, dtype=np.int64))

    def initializer(self, name: str, array: np.ndarray) -> str:
        """The initializer `name`, added once (a layer called twice shares its tensors)."""
        from onnx import numpy_helper

        if name not in self.initializer_names:
            self.initializer_names.add(name)
            self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def rename_since(self, first: int, suffix: str, keep: str) -> None:
        """Give the nodes from index `first` on (a repeated call of a layer) and the values they
        compute, other than `keep`, names of their own: `suffix` appended."""
        new = self.nodes[first:]
        renamed = {out: out + suffix for node in new for out in node.output if out != keep}
        for node in new:
            node.name += suffix
            for i, name in enumerate(node.input):
                node.input[i] = renamed.get(name, name)
            for i, name in enumerate(node.output):
                node.output[i] = renamed.get(name, name)

    def node(self, op: str, inputs: list[str], out: str, name: str, **attrs: object) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))  # type: ignore[arg-type]
        return out

    def op(self, path: str, layer: ir.Layer, value: str, out: str) -> None:
        """The layer as its kind's operator: the table's attributes, its tensors as inputs."""
        spec = layer.spec.onnx
        assert spec is not None and spec.op is not None, layer.kind
        attrs = _typed(spec.op, self.opset, spec.attributes(layer.argdict))
        inputs = [value]
        for name in spec.inputs:
            inputs.append(self.tensor_input(path, layer, name))
        while inputs[-1] == "":  # absent optional trailing inputs (a Linear's bias)
            inputs.pop()
        later = _ATTRIBUTE_INPUTS.get(spec.op)
        if later is not None and self.opset >= later[0]:
            for name in later[1]:
                inputs.append(self.constant(f"/{path}/{name}", float(attrs.pop(name))))  # type: ignore[arg-type]
        self.node(spec.op, inputs, out, f"/{path}/{spec.op}", **attrs)

    def tensor_input(self, path: str, layer: ir.Layer, name: str) -> str:
        """The initializer of the layer's tensor `name`, under its state_dict key; a tensor the
        layer does not have (affine=false) is its torch initial value, which changes nothing
        (weight 1, bias 0), or left out when the kind has no such value (a Linear's bias)."""
        array = layer.tensor(name)
        if array is not None:
            return self.initializer(f"{path}.{name}", array)
        (tensor,) = [t for t in layer.spec.tensors if t.name == name]
        if tensor.buffer:
            raise LayercError(
                f"layerc export cannot write layer {path!r} ({layer.kind}) of model "
                f"{self.model!r}: a {layer.kind} without {name} computes with each batch's own "
                "statistics, which its ONNX operator does not",
                layer.loc,
            )
        if tensor.initial is None:
            return ""
        args = layer.argdict
        value = np.full(tensor.shape(args), tensor.initial_value(args), dtype=self.dtype)
        return self.constant(f"/{path}/{name}", value)


# =========================================================================== writing


def write_files(files: list[tuple[Path, bytes]], inputs: Inputs = ()) -> None:
    """Write every (path, bytes) atomically, in order (so a .lyr never names a weights file that
    is not there yet), none of them over one of `inputs`; an error is reported at the file that
    could not be written."""
    for target, _ in files:
        if target.is_dir():
            raise LayercError("cannot write here: it is a folder", file=str(target))
    try:
        write_atomically(files, inputs)
    except WriteFailed as exc:
        raise LayercError(f"cannot write the file: {exc.reason}", file=str(exc.target)) from None
