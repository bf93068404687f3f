"""ONNX in and out: an .onnx file in, a .lyr file plus one .safetensors weights file out
(`import_onnx`), or a checked program in and a validated ONNX graph out (`export_onnx`).

Import reads a single chain of Gemm / MatMul (+ Add), Identity, Flatten, Dropout and the ops
the table of kinds exports as (`Kind.onnx` in layerc.kinds, read backwards: `KINDS_BY_OP`), and
refuses anything else, naming the node. Export writes each layer as its kind's op, or as a small
subgraph where ONNX has no op of the same meaning (SiLU, LogSigmoid, Softplus with beta or
threshold). ONNX files have no
lines, so every problem is a file-level `LayercError`. The file is parsed from bytes read through
a checked descriptor; external data (paths inside the model, the source of CVE-2022-25882 and
CVE-2024-27318) is refused, and nothing is written until the whole model has been read.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, ir
from . import weights as W
from .check import MAX_NAME_LENGTH, MAX_WEIGHTS
from .errors import LayercError
from .files import Inputs, WriteFailed, open_regular, read_regular, refuse_inputs, write_atomically
from .kinds import KINDS

MIN_OPSET = 7  # Gemm took its modern form (C broadcast, no `broadcast` attribute) in opset 7
EXPORT_OPSET = 17
# The most weights an imported model may have, an initializer counted once for every node that
# uses it (as the compiled model holds a copy for each layer): what the compiler accepts in one
# source. Counted from the tensors' shapes before any of them is read.
MAX_IMPORT_WEIGHTS = MAX_WEIGHTS
EXPORT_IR_VERSION = 8  # the IR version that came with opset 17: readable by older runtimes


# Kinds the table gives no op (export writes a subgraph) that a single op computes with the
# kind's default arguments: op -> kind. Export writes that op for those arguments.
_PLAIN_FORMS = {"Softplus": "Softplus"}


def _reverse_index() -> dict[str, tuple[str, ...]]:
    """ONNX op -> the layer kinds that export as it (from `Kind.onnx` in layerc.kinds), kinds
    with fewer parameters first (Clip(0, 6) is a ReLU6 before it is a Hardtanh)."""
    index: dict[str, list[str]] = {}
    for kind in sorted(KINDS.values(), key=lambda k: len(k.params)):
        if kind.onnx is not None:
            index.setdefault(kind.onnx.op, []).append(kind.name)
    for op, kind_name in _PLAIN_FORMS.items():
        index.setdefault(op, []).append(kind_name)
    return {op: tuple(kinds) for op, kinds in index.items()}


# ONNX op -> .lyr layer kinds, read from the table of kinds.
KINDS_BY_OP = _reverse_index()
# Ops read by hand: a Linear's parts, ops that compute nothing, and constants.
_STRUCTURAL_OPS = ("Gemm", "MatMul", "Add", "Identity", "Flatten", "Dropout", "Constant")
SUPPORTED_OPS = (*_STRUCTURAL_OPS, *sorted(op for op in KINDS_BY_OP if op not in _STRUCTURAL_OPS))
# Attributes each op read by hand may carry; any other would change its meaning. (The ops of
# the table may carry the attributes their schema declares: each is matched to an argument of
# the kind, or must have the value the kind exports.)
_KNOWN_ATTRIBUTES = {
    "Gemm": {"alpha", "beta", "transA", "transB"},
    "Flatten": {"axis"},
    "Constant": {"value"},
    "Dropout": {"ratio", "seed"},
    "BatchNormalization": {"epsilon", "momentum", "training_mode"},
    "LayerNormalization": {"axis", "epsilon", "stash_type"},
    "Clip": {"min", "max"},
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
    args: str  # the argument text, already formatted
    nodes: list[str]
    tensors: list[tuple[str, np.ndarray]] = field(default_factory=list)  # its block's entries


@dataclass
class _Imported:
    dtype: np.dtype
    layers: list[_Linear | _Activation] = field(default_factory=list)
    opset: int = 0
    graph_name: str = ""


def import_onnx(path: Path, out: Path | None = None) -> list[Path]:
    """`layerc import`: read the ONNX model at `path`, write `out` (default: `path` with .lyr)
    and the weights file beside it; return the paths written (weights first)."""
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
    text, arrays = _render(imported, path.name, out.stem, weights_path.name)
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


def _read_model(path: Path, display: str):  # type: ignore[no-untyped-def]
    """The ModelProto in `path`, parsed from bytes; a model with external data is refused."""
    import onnx

    data = read_regular(path, display, what="an ONNX model", max_bytes=W.MAX_FILE_BYTES)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise LayercError(f"not a valid ONNX model: {_first_line(exc)}", file=display) from None
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise LayercError(
                f"tensor {_q(tensor.name)} is stored in an external file; layerc reads only "
                "self-contained ONNX models (save with save_as_external_data=False)",
                file=display,
            )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError, and C++ errors from the checker
        raise LayercError(f"not a valid ONNX model: {_first_line(exc)}", file=display) from None
    return model


def _all_tensors(graph) -> Iterator:  # type: ignore[no-untyped-def]
    """Every TensorProto in a graph: initializers, sparse ones, attribute values, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse_tensors = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sparse in [*sparse_tensors, *attr.sparse_tensors]:
                yield sparse.values
                yield sparse.indices
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _q(name: str) -> str:
    """A name from the ONNX file, quoted and shortened so it cannot flood or mangle a message."""
    return repr(name if len(name) <= 80 else name[:77] + "...")


class _Reader:
    """Walks the graph's nodes in order, keeping the one value that flows through the chain."""

    def __init__(self, model, file: str):  # type: ignore[no-untyped-def]
        self.model = model
        self.graph = model.graph
        self.file = file
        self.constants: dict[str, object] = {}  # name -> TensorProto
        self.current = ""  # the name of the chain's value
        self.last_linear_output: str | None = None
        self.in_features: int | None = None
        # Each tensor is read and converted once, however many nodes use it, and so is each
        # weight matrix and bias made from one: layers that share an initializer share arrays.
        self.arrays: dict[str, np.ndarray] = {}
        self.shared: dict[tuple[object, ...], np.ndarray] = {}

    def error(self, message: str) -> LayercError:
        return LayercError(message, file=self.file)

    def run(self) -> _Imported:
        opset = self.opset_version = self.opset()
        for tensor in self.graph.initializer:
            self.constants[tensor.name] = tensor
        if self.graph.sparse_initializer:
            raise self.error("sparse initializers are not supported")
        self.current, dtype, self.in_features = self.graph_input()
        self.count_weights()
        imported = _Imported(dtype, opset=opset, graph_name=self.graph.name)
        for node in self.graph.node:
            self.node(node, imported)
        self.finish(imported)
        return imported

    def opset(self) -> int:
        versions = [o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")]
        if not versions:
            raise self.error("the model imports no version of the default ONNX operator set")
        if versions[0] < MIN_OPSET:
            raise self.error(f"ONNX opset {versions[0]} is older than layerc reads ({MIN_OPSET}+)")
        return int(versions[0])

    def graph_input(self) -> tuple[str, np.dtype, int | None]:
        """The one graph input that is not an initializer: its name, dtype and feature count."""
        from onnx import TensorProto

        inputs = [i for i in self.graph.input if i.name not in self.constants]
        if len(inputs) != 1:
            names = ", ".join(_q(i.name) for i in inputs) or "none"
            raise self.error(f"the graph must have exactly one input, not {len(inputs)} ({names})")
        (value,) = inputs
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
        features = None
        if value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            if len(dims) != 2:
                raise self.error(
                    f"graph input {_q(value.name)} has {len(dims)} dimensions; layerc imports "
                    "models whose input is (batch, features)"
                )
            if dims[1].HasField("dim_value"):
                features = int(dims[1].dim_value)
        return str(value.name), dtypes[elem], features

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
            elif node.op_type == "Identity" and node.input and node.input[0] in dims:
                dims[node.output[0]] = dims[node.input[0]]
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
        where = f"node {_q(node.name or '(unnamed)')} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            raise self.error(
                f"unsupported operator {node.domain}.{node.op_type} in {where}; layerc imports "
                f"only these ONNX operators: {', '.join(SUPPORTED_OPS)}"
            )
        if node.op_type not in SUPPORTED_OPS:
            raise self.error(
                f"unsupported ONNX operator {node.op_type!r} in {where}; layerc imports only "
                f"{', '.join(SUPPORTED_OPS)}"
            )
        attrs = self.attributes(node, where)
        if len(node.output) != 1:
            raise self.error(f"{where} has {len(node.output)} outputs; layerc expects one")
        if node.op_type == "Constant":
            if "value" not in attrs:
                raise self.error(f"{where}: only Constant nodes with a 'value' tensor are read")
            self.constants[node.output[0]] = attrs["value"]
            return
        if node.op_type == "Identity" and node.input and node.input[0] in self.constants:
            # a copy of a constant (torch.onnx.export writes these for shared weights)
            self.constants[node.output[0]] = self.constants[node.input[0]]
            return
        data = [name for name in node.input if name and name not in self.constants]
        # Add is commutative; every other op must take the chain's value as its first input
        # (MatMul(W, x) would multiply from the other side, which no Linear does).
        first_ok = node.op_type == "Add" or (node.input and node.input[0] == self.current)
        if data != [self.current] or not first_ok:
            raise self.error(
                f"{where} does not take the output of the previous layer as its first input; "
                "layerc imports a single chain of layers from the graph input to its output"
            )
        handler = getattr(self, f"op_{node.op_type}", self.op_kind)
        handler(node, attrs, where, imported)
        self.current = node.output[0]

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
            len(shape) > 2
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
        in_features = weight[0].shape[1]
        previous = self.features(imported)
        if previous is not None and previous != in_features:
            linears = any(isinstance(layer, _Linear) for layer in imported.layers)
            source = "the previous Linear layer" if linears else "the graph input"
            raise self.error(f"{where} takes {in_features} features but {source} gives {previous}")
        layer = _Linear(weight[0], None, [where], weight_key=weight[1])
        if bias is not None:
            layer.bias, layer.bias_key = bias
        imported.layers.append(layer)

    def features(self, imported: _Imported) -> int | None:
        for layer in reversed(imported.layers):
            if isinstance(layer, _Linear):
                return layer.weight.shape[0]
        return self.in_features

    def op_Gemm(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
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
        self.last_linear_output = node.output[0]

    def op_MatMul(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        b = self.weight_matrix(node.input[1], where)
        self.linear(
            self.once(("weight", node.input[1], True, 1.0), lambda: b.T), None, where, imported
        )
        self.last_linear_output = node.output[0]

    def op_Add(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        constant = [name for name in node.input if name != self.current]
        layer = imported.layers[-1] if imported.layers else None
        if (
            len(constant) != 1
            or self.current != self.last_linear_output
            or not isinstance(layer, _Linear)
        ):
            raise self.error(
                f"{where} adds to something other than the output of a Gemm or MatMul; layerc "
                "maps an Add only to the bias of the Linear layer right before it"
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
        self.last_linear_output = node.output[0]

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
        """A layer of `kind` with the arguments `args` (those with their default left out)."""
        defaults = {p.name: p.default for p in KINDS[kind].params}
        parts = []
        order = list(defaults)
        for name, value in sorted(args.items(), key=lambda item: order.index(item[0])):
            if isinstance(value, float):
                if not math.isfinite(value):
                    raise self.error(f"{where}: {name} = {value} is not a finite number")
                default = defaults.get(name)
                if isinstance(default, float) and np.float32(value) == np.float32(default):
                    continue
                parts.append(f"{name}={self.number(value, imported)}")
            elif value != defaults.get(name):
                if isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9_]{1,40}", value):
                    raise self.error(f"{where}: {name} = {_q(value)} is not a value layerc reads")
                text = f'"{value}"' if isinstance(value, str) else str(value).lower()
                parts.append(f"{name}={text}")
        imported.layers.append(_Activation(kind, ", ".join(parts), [where], tensors or []))

    @staticmethod
    def number(value: float, imported: _Imported) -> str:
        # float32 models get the shortest text that rounds to the same float32; float64 models
        # get the float32 value exactly, as ONNX Runtime widens it (ONNX attributes are float32).
        if imported.dtype == np.float32:
            return str(np.format_float_positional(np.float32(value), unique=True, trim="0"))
        return repr(float(value))

    def op_kind(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """An op of the table of kinds without tensors: the first kind it exports from whose
        attributes match, each node attribute either an argument of the kind or the constant
        the kind exports."""
        full = self.with_defaults(node.op_type, attrs)
        for kind in KINDS_BY_OP[node.op_type]:
            args = _match_attributes(kind, full)
            if args is not None:
                self.activation(kind, args, where, imported)
                return
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(full.items()))
        raise self.error(
            f"{where} has attributes ({shown}) that no layer kind computes "
            f"(layerc maps {node.op_type} to {', '.join(KINDS_BY_OP[node.op_type])})"
        )

    def op_Softmax(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        # opset >= 13: softmax along `axis` (default -1). Before 13: the input is flattened to 2-D
        # at `axis` (default 1) and softmax taken over the second part. On the (batch, features)
        # values of a chain both mean the last axis exactly when axis is 1 or -1.
        axis = int(attrs.get("axis", -1 if imported.opset >= 13 else 1))
        if axis not in (1, -1):
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
                "layerc maps a Clip with both bounds to Hardtanh or ReLU6"
            )
        self.op_kind(node, bounds, where, imported)

    def op_Dropout(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """Dropout at inference: the identity, as a Dropout layer (with its rate, when given)."""
        ratio = attrs.get("ratio")
        if len(node.input) > 2 and node.input[2]:
            if self.array(node.input[2], where).any():
                raise self.error(f"{where} is in training mode; layerc models run in eval mode")
        if len(node.input) > 1 and node.input[1]:
            ratio = float(self.array(node.input[1], where).reshape(-1)[0])
        args: dict[str, object] = {}
        if ratio is not None:
            if not 0.0 <= float(ratio) <= 1.0:  # type: ignore[arg-type]
                raise self.error(f"{where}: ratio = {ratio} is not a probability")
            args["p"] = float(ratio)  # type: ignore[arg-type]
        self.activation("Dropout", args, where, imported)

    def tensors(
        self, node, kind: str, where: str, imported: _Imported, *, required: int
    ) -> tuple[list[tuple[str, np.ndarray]], int]:  # type: ignore[no-untyped-def]
        """The constant inputs after the data input, named by the kind's ONNX inputs, as 1-D
        arrays of one size (the channels); the first `required` must be there."""
        spec = KINDS[kind].onnx
        assert spec is not None
        out = []
        for name, input_name in zip(spec.inputs, node.input[1:], strict=False):
            if not input_name:
                continue
            array = self.array(input_name, where)
            if array.ndim > 1 and any(d != 1 for d in array.shape[:-1]):
                raise self.error(
                    f"{where}: {name} {_q(input_name)} has shape {W.fmt_shape(array.shape)}; "
                    "layerc reads one value per feature"
                )
            out.append((name, array.reshape(-1)))
        if len(out) < required or len({a.size for _, a in out}) > 1:
            raise self.error(
                f"{where} needs {', '.join(spec.inputs[:required])} as constant inputs of one size"
            )
        size = out[0][1].size
        features = self.features(imported)
        if features is not None and size != features and not (kind == "PReLU" and size == 1):
            raise self.error(f"{where} has {size} values per input but its input has {features}")
        return out, size

    def op_PRelu(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        tensors, size = self.tensors(node, "PReLU", where, imported, required=1)
        self.activation("PReLU", {"num_parameters": size}, where, imported, tensors)

    def op_BatchNormalization(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        if attrs.get("training_mode", 0):
            raise self.error(f"{where} is in training mode; layerc models run in eval mode")
        tensors, size = self.tensors(node, "BatchNorm1d", where, imported, required=4)
        eps = float(attrs.get("epsilon", 1e-5))  # type: ignore[arg-type]
        args: dict[str, object] = {"num_features": size, "eps": eps}
        self.activation("BatchNorm1d", args, where, imported, tensors)

    def op_LayerNormalization(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        axis = int(attrs.get("axis", -1))  # type: ignore[call-overload]
        if axis not in (1, -1):
            raise self.error(
                f"{where} normalises from axis {axis}; layerc supports only the last (feature) axis"
            )
        tensors, size = self.tensors(node, "LayerNorm", where, imported, required=1)
        eps = float(attrs.get("epsilon", 1e-5))  # type: ignore[arg-type]
        args: dict[str, object] = {"normalized_shape": size, "eps": eps}
        if len(tensors) == 1:
            args["bias"] = False
        self.activation("LayerNorm", args, where, imported, tensors)

    def op_Identity(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        """Nothing to compute: the chain's value just takes the output's name."""
        if self.current == self.last_linear_output:
            self.last_linear_output = node.output[0]

    def op_Flatten(self, node, attrs: dict, where: str, imported: _Imported) -> None:  # type: ignore[no-untyped-def]
        axis = int(attrs.get("axis", 1))
        if axis not in (1, -1):
            raise self.error(
                f"{where} flattens at axis {axis}, which would mix the batch into the features; "
                "only a Flatten of a (batch, features) value at axis 1 is supported"
            )
        self.op_Identity(node, attrs, where, imported)

    def finish(self, imported: _Imported) -> None:
        outputs = [o.name for o in self.graph.output]
        if outputs != [self.current]:
            raise self.error(
                f"the graph's outputs ({', '.join(map(_q, outputs)) or 'none'}) are not the end of "
                "the chain of layers; layerc imports models with one output"
            )
        if not any(isinstance(layer, _Linear) for layer in imported.layers):
            raise self.error("the model has no Gemm or MatMul, so there is no Linear layer")


def _text(value: object) -> object:
    """An ONNX string attribute (bytes) as text; any other value as it is."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _match_attributes(kind: str, attrs: dict[str, object]) -> dict[str, object] | None:
    """The arguments of a layer of `kind` that exports as an op with the attributes `attrs`
    (every attribute, defaults filled in), or None if none does. An attribute the kind's
    `Onnx.attributes` copies from an argument gives that argument (found by passing a marker
    for each argument in turn); any other must equal, as a float32, the value the kind exports."""
    spec = KINDS[kind]
    if spec.onnx is None:  # a plain form (_PLAIN_FORMS): the op without attributes
        return {} if not attrs else None
    defaults = {p.name: p.default for p in spec.params}
    source: dict[str, str] = {}  # attribute -> the argument it copies
    for param in spec.params:
        marker = object()
        try:
            probed = spec.onnx.attributes({**defaults, param.name: marker})
        except Exception:  # an attribute computed from the argument: not a copy
            continue
        for name, value in probed.items():
            if value is marker:
                source[name] = param.name
    exported = spec.onnx.attributes(defaults)
    args: dict[str, object] = {}
    for name, value in attrs.items():
        if name in source:
            args[source[name]] = value
        elif name in exported:
            if not _same_attribute(value, exported[name]):
                return None
        else:
            return None
    return args


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


def _lyr_string(text: str, display: str) -> str:
    """`text` as a .lyr string literal (which knows only the escapes \\" and \\\\)."""
    if any(not ch.isprintable() for ch in text):
        raise LayercError(
            f"the file name {text!r} has characters a .lyr string cannot hold", file=display
        )
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    """Text from the ONNX file made safe for a one-line comment."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _render(
    imported: _Imported, source: str, stem: str, weights_name: str
) -> tuple[str, dict[str, np.ndarray]]:
    """The .lyr text and the arrays of its weights file, keyed as the state_dict will be; a
    weight or bias that several layers share is stored once, under the first one's key."""
    dtype = imported.dtype
    path = _lyr_string(weights_name, source)
    options = "(dtype=float64)" if dtype == np.float64 else ""
    lines = [
        # Lines 1 and 2 hold no text from the ONNX file or its name (an editor or tool that
        # honours a coding declaration there must not be steered by a hostile name).
        f"{IMPORT_HEADER}{__version__} from an ONNX model; edit freely, or import it again.",
        f"# ONNX opset {imported.opset}.",
        f"# Source: {_comment(repr(source))}, graph {_comment(_q(imported.graph_name))}.",
        f"# The weights are in {_comment(weights_name)}, beside this file.",
        f"model {model_name_for(stem)}{options} {{",
    ]
    arrays: dict[str, np.ndarray] = {}
    stored: dict[tuple[object, ...], str] = {}  # what layers share -> the key it is stored under

    def store(array: np.ndarray, key: tuple[object, ...] | None, name: str) -> str:
        """The key of `array` in the weights file: `name`, or where a layer sharing it put it."""
        if key is not None and key in stored:
            return stored[key]
        arrays[name] = W.convert_exact(array, dtype, name.split(".")[-1])
        if key is not None:
            stored[key] = name
        return name

    for position, layer in enumerate(imported.layers):
        lines.append(f"    # from {_comment(', '.join(layer.nodes))}")
        if isinstance(layer, _Activation):
            if not layer.tensors:
                lines.append(f"    {layer.kind}({layer.args})")
                continue
            lines.append(f"    {layer.kind}({layer.args}) {{")
            for name, array in layer.tensors:
                key = store(array, None, f"{position}.{name}")
                lines.append(f'        {name} = load({path}, "{key}")')
            lines.append("    }")
            continue
        out_features, in_features = layer.weight.shape
        has_bias = layer.bias is not None
        lines.append(
            f"    Linear(in_features={in_features}, out_features={out_features}, "
            f"bias={'true' if has_bias else 'false'}) {{"
        )
        key = store(layer.weight, layer.weight_key, f"{position}.weight")
        lines.append(f'        weight = load({path}, "{key}")')
        if layer.bias is not None:
            key = store(layer.bias, layer.bias_key, f"{position}.bias")
            lines.append(f'        bias = load({path}, "{key}")')
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n", arrays


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
    """The ModelProto of `model`: each layer as its kind's ONNX operator (`Kind.onnx` in
    layerc.kinds; Gemm with transB=1 for a Linear), its weights and buffers as initializers named
    by their state_dict keys, or as a small subgraph where ONNX has no operator of the same
    meaning (`_SUBGRAPHS`); input 'input' and output 'output' of shape (batch, features) with a
    symbolic batch dimension. The opset is EXPORT_OPSET, or the newest its operators need."""
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if model.dtype == np.float32 else TensorProto.DOUBLE
    layers = list(ir.layers(model))
    for path, layer in layers:
        if layer.spec.onnx is None and layer.kind not in _SUBGRAPHS:
            raise LayercError(
                f"layerc export cannot write {layer.kind} layers (layer {path!r} of model "
                f"{model.name!r}): ONNX has no operator of the same meaning",
                file=source,
            )
    if len(model.in_shape) != 1:
        raise LayercError(
            f"layerc export writes models whose input is (batch, features); {model.name!r} "
            f"takes samples of shape {model.in_shape}",
            file=source,
        )
    opset = export_opset(model)
    graph = _Graph(model.dtype, opset, source, model.name)
    value = "input"
    for index, (path, layer) in enumerate(layers):
        out = "output" if index == len(layers) - 1 else f"/{path}/output"
        graph.layer(path, layer, value, out)
        value = out
    onnx_graph = helper.make_graph(
        graph.nodes,
        model.name,
        [helper.make_tensor_value_info("input", elem, ["batch", model.in_features])],
        [helper.make_tensor_value_info("output", elem, ["batch", model.out_features])],
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


def export_opset(model: ir.Model) -> int:
    """EXPORT_OPSET, or the newest opset that one of the model's operators needs."""
    needed = [EXPORT_OPSET]
    for _, layer in ir.layers(model):
        if layer.kind in _SUBGRAPHS:
            needed.append(_SUBGRAPHS[layer.kind][0])
        if layer.spec.onnx is not None:
            needed.append(layer.spec.onnx.opset)
    return max(needed)


# Attributes that became inputs in a later opset: op -> (that opset, the attributes in input order)
_ATTRIBUTE_INPUTS = {"Clip": (11, ("min", "max"))}


class _Graph:
    """The nodes and initializers of an exported graph, built layer by layer."""

    def __init__(self, dtype: np.dtype, opset: int, source: str, model: str):
        self.dtype = np.dtype(dtype)
        self.opset = opset
        self.source = source
        self.model = model
        self.nodes: list = []
        self.initializers: list = []

    def constant(self, name: str, value: np.ndarray | float) -> str:
        from onnx import numpy_helper

        array = np.asarray(value, dtype=self.dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], out: str, name: str, **attrs: object) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))  # type: ignore[arg-type]
        return out

    def layer(self, path: str, layer: ir.Layer, value: str, out: str) -> None:
        if layer.kind in _SUBGRAPHS:
            if _SUBGRAPHS[layer.kind][1](self, layer.argdict, value, out, f"/{path}"):
                return
        spec = layer.spec.onnx
        assert spec is not None, layer.kind
        attrs = dict(spec.attributes(layer.argdict))
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
            from onnx import numpy_helper

            self.initializers.append(numpy_helper.from_array(array, f"{path}.{name}"))
            return f"{path}.{name}"
        (tensor,) = [t for t in layer.spec.tensors if t.name == name]
        if tensor.buffer:
            raise LayercError(
                f"layerc export cannot write layer {path!r} of model {self.model!r}: a "
                f"{layer.kind} without {name} computes with each batch's own statistics, "
                "which its ONNX operator does not",
                file=self.source,
            )
        if tensor.initial is None:
            return ""
        args = layer.argdict
        value = np.full(tensor.shape(args), tensor.initial_value(args), dtype=self.dtype)
        return self.constant(f"/{path}/{name}", value)


def _silu(g: _Graph, args: dict, x: str, out: str, at: str) -> bool:
    """x * Sigmoid(x)."""
    s = g.node("Sigmoid", [x], f"{at}/sigmoid", f"{at}/Sigmoid")
    g.node("Mul", [x, s], out, f"{at}/Mul")
    return True


def _log_sigmoid(g: _Graph, args: dict, x: str, out: str, at: str) -> bool:
    """-Softplus(-x)."""
    neg = g.node("Neg", [x], f"{at}/neg", f"{at}/Neg")
    sp = g.node("Softplus", [neg], f"{at}/softplus", f"{at}/Softplus")
    g.node("Neg", [sp], out, f"{at}/Neg_1")
    return True


# torch's defaults, for which a single Softplus computes the same (to rounding: past the
# threshold log(1 + exp(x)) is x + exp(-x), and exp(-20) is below a float32 ulp of 20)
_PLAIN_SOFTPLUS = {"beta": 1.0, "threshold": 20.0}


def _softplus(g: _Graph, args: dict, x: str, out: str, at: str) -> bool:
    """Softplus; with other beta or threshold, Where(x * beta > threshold, x,
    Softplus(x * beta) / beta)."""
    if {k: float(args[k]) for k in _PLAIN_SOFTPLUS} == _PLAIN_SOFTPLUS:
        g.node("Softplus", [x], out, f"{at}/Softplus")
        return True
    beta = g.constant(f"{at}/beta", float(args["beta"]))
    threshold = g.constant(f"{at}/threshold", float(args["threshold"]))
    scaled = g.node("Mul", [x, beta], f"{at}/scaled", f"{at}/Mul")
    sp = g.node("Softplus", [scaled], f"{at}/softplus", f"{at}/Softplus")
    soft = g.node("Div", [sp, beta], f"{at}/soft", f"{at}/Div")
    above = g.node("Greater", [scaled, threshold], f"{at}/above", f"{at}/Greater")
    g.node("Where", [above, x, soft], out, f"{at}/Where")
    return True


def _celu(g: _Graph, args: dict, x: str, out: str, at: str) -> bool:
    """ONNX's Celu takes float32 only: in float64, Where(x > 0, x, alpha * (Exp(x / alpha) - 1));
    in float32, the table's Celu (returns False)."""
    if g.dtype == np.float32:
        return False
    alpha = g.constant(f"{at}/alpha", float(args["alpha"]))
    zero = g.constant(f"{at}/zero", 0.0)
    one = g.constant(f"{at}/one", 1.0)
    scaled = g.node("Div", [x, alpha], f"{at}/scaled", f"{at}/Div")
    exp = g.node("Exp", [scaled], f"{at}/exp", f"{at}/Exp")
    minus = g.node("Sub", [exp, one], f"{at}/expm1", f"{at}/Sub")
    below = g.node("Mul", [minus, alpha], f"{at}/below", f"{at}/Mul")
    positive = g.node("Greater", [x, zero], f"{at}/positive", f"{at}/Greater")
    g.node("Where", [positive, x, below], out, f"{at}/Where")
    return True


# Kinds whose ONNX form is a small subgraph: kind -> (opset it needs, writer); a writer that
# returns False leaves the layer to its kind's op.
_SUBGRAPHS: dict[str, tuple[int, Callable[[_Graph, dict, str, str, str], bool]]] = {
    "SiLU": (1, _silu),
    "LogSigmoid": (1, _log_sigmoid),
    "Softplus": (1, _softplus),
    "CELU": (1, _celu),
}


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
