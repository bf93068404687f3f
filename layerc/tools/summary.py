"""`layerc summary`: a checked model in, a table like torchinfo's out: one row per layer (nested
models expanded beneath their own row) with its path, the layer as torch prints it, its
per-sample output shape, its parameter and buffer counts, their bytes and FLOPs per sample, then
the totals.

Everything a row says about a layer comes from its kind in `kinds.KINDS`: the tensors it holds
(parameters and buffers, as the torch.nn class registers them, so the counts are torch's
`sum(p.numel() for p in model.parameters())` and the same over `buffers()`), and its text
(`Linear(in_features=4, out_features=3, bias=True)`, from the kind's `extra_repr`). The rows
come from `ir.walk`.

A graph model (one with a `forward` block) lists its layers in declaration order, as its
state_dict does, with two more columns: each layer's input shape and how many times it runs in
one forward of the summarised model (a layer called twice, or a layer of a nested model that is
called twice, runs twice). Parameters are counted once, as torch's `parameters()` counts a
shared module once; FLOPs are counted at every call.

FLOPs are counted per sample for matrix products (Linear) only: each of the in*out weights
costs a multiply and an add (2*in*out), and a bias adds one value per output (out), for each
row the product runs over (a sample of shape (4, 5) is 4 rows of 5). Other layers are not
counted, as torchinfo and fvcore leave them out; they are cheap next to the matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import ir
from ..kinds import MatMul


@dataclass(frozen=True)
class Counts:
    """What a layer (or a nested model, totalled) holds and costs per sample."""

    params: int = 0  # values in parameters
    buffers: int = 0  # values in buffers
    param_bytes: int = 0
    buffer_bytes: int = 0
    flops: int = 0
    biases: int = 0  # values in parameters named `bias`

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.params + other.params,
            self.buffers + other.buffers,
            self.param_bytes + other.param_bytes,
            self.buffer_bytes + other.buffer_bytes,
            self.flops + other.flops,
            self.biases + other.biases,
        )

    @property
    def bytes(self) -> int:
        return self.param_bytes + self.buffer_bytes


@dataclass(frozen=True)
class Row:
    """One line of the table. A nested model's row totals the rows beneath it."""

    path: str
    depth: int
    kind: str
    shape: ir.Shape  # per-sample output shape
    counts: Counts  # FLOPs at every call: per call times `calls`
    calls: int = 1  # runs per forward of the summarised model
    in_shapes: tuple[
        ir.Shape, ...
    ] = ()  # per-sample input shapes (a nested model may take several)

    @property
    def params(self) -> int:
        return self.counts.params

    @property
    def buffers(self) -> int:
        return self.counts.buffers

    @property
    def bytes(self) -> int:
        return self.counts.bytes

    @property
    def flops(self) -> int:
        return self.counts.flops


def layer_repr(layer: ir.Child) -> str:
    """The layer as torch prints it, from its kind's `extra_repr`:
    `Linear(in_features=4, out_features=3, bias=False)`, `ReLU()`; a nested model's name."""
    if isinstance(layer, ir.Submodel):
        return layer.model.name
    return f"{layer.kind}({layer.spec.extra_repr(layer.argdict)})"


def shape_text(shape: ir.Shape) -> str:
    """A per-sample shape behind any batch axes: `(*, 16)`, `(*, 1, 28, 28)`."""
    return "(" + ", ".join(["*", *map(str, shape)]) + ")"


def layer_counts(layer: ir.Layer) -> Counts:
    """The values and bytes of the layer's parameters and buffers (those present, as the
    kind's table declares them), and its FLOPs per sample."""
    counts = Counts(flops=flops(layer))
    for t in layer.spec.tensors:
        value = layer.tensor(t.name)
        if value is None:
            continue
        if t.buffer:
            counts += Counts(buffers=value.size, buffer_bytes=value.nbytes)
        else:
            bias = value.size if t.name == "bias" else 0
            counts += Counts(params=value.size, param_bytes=value.nbytes, biases=bias)
    return counts


def flops(layer: ir.Layer) -> int:
    """A matrix product's FLOPs per sample: 2*in*out for the products and sums, plus out for
    the bias adds when there is a bias, times the rows of a sample it runs over; 0 for other
    kinds."""
    if not isinstance(layer.spec.native, MatMul):
        return 0
    rows, _ = layer.spec.rows(layer.argdict, layer.in_shape)
    per_row = 2 * layer.in_features * layer.out_features
    if layer.bias is not None:
        per_row += layer.out_features
    return rows * per_row


def calls(model: ir.Model) -> dict[str, int]:
    """How many times each layer and nested model, by path, runs in one forward of `model`: once
    in a pipeline, as often as its model's forward calls it in a graph model, times the calls of
    the nested model it belongs to (0 for a layer no forward calls)."""
    out: dict[str, int] = {}

    def visit(m: ir.Model, prefix: str, times: int) -> None:
        for child in m.layers:
            n = times if m.graph is None else times * len(m.graph.calls(child.name))
            out[prefix + child.name] = n
            if isinstance(child, ir.Submodel):
                visit(child.model, prefix + child.name + ".", n)

    visit(model, "", 1)
    return out


def has_graph(model: ir.Model) -> bool:
    """Whether `model` or a model nested in it has a `forward` block."""
    return model.graph is not None or any(
        isinstance(child, ir.Submodel) and child.model.graph is not None
        for _, child in ir.walk(model, submodels=True)
    )


def rows(model: ir.Model) -> list[Row]:
    """The table's rows for `model`'s layers, in declaration order (a pipeline's execution
    order), each nested model's row just before its own; a layer's FLOPs are counted at each
    of its calls, a nested model's row totals its layers'."""
    runs = calls(model)
    out: list[Row] = []
    for path, child in ir.walk(model, submodels=True):
        if isinstance(child, ir.Submodel):
            inner = [
                layer_total(layer, runs[f"{path}.{sub}"]) for sub, layer in ir.layers(child.model)
            ]
            counts = sum(inner, Counts())
        else:
            counts = layer_total(child, runs[path])
        row = Row(
            path,
            path.count("."),
            layer_repr(child),
            child.out_shape,
            counts,
            runs[path],
            child.model.in_shapes if isinstance(child, ir.Submodel) else (child.in_shape,),
        )
        out.append(row)
    return out


def layer_total(layer: ir.Layer, runs: int) -> Counts:
    """What `layer` holds, and its FLOPs per sample over `runs` calls."""
    held = layer_counts(layer)
    return Counts(
        held.params,
        held.buffers,
        held.param_bytes,
        held.buffer_bytes,
        held.flops * runs,
        held.biases,
    )


def totals(model: ir.Model) -> Counts:
    """The whole model's counts: every weight and buffer once, FLOPs at every call."""
    runs = calls(model)
    return sum((layer_total(layer, runs[path]) for path, layer in ir.layers(model)), Counts())


def io_text(model: ir.Model) -> str:
    """`input (*, 4) -> output (*, 3)` for a pipeline; a graph model names its inputs and
    lists its outputs in return order: `inputs x (*, 8), mask (*, 8) -> outputs (*, 2), (*, 3)`."""
    if model.graph is None:
        return f"input {shape_text(model.in_shape)} -> output {shape_text(model.out_shape)}"
    ins = [f"{i.name} {shape_text(i.shape)}" for i in model.graph.inputs]
    outs = [shape_text(shape) for shape in model.out_shapes]
    return (
        f"input{'s' if len(ins) > 1 else ''} {', '.join(ins)} -> "
        f"output{'s' if len(outs) > 1 else ''} {', '.join(outs)}"
    )


def fmt_bytes(count: int) -> str:
    """`268 B`, `1.5 KiB`, `3.2 MiB`."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count:,} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def summary(model: ir.Model) -> str:
    """The whole table as text, ending with a newline. A model with a `forward` block (or one
    nested in it) gets the Input shape and Calls columns."""
    table = rows(model)
    graph = has_graph(model)
    headers: tuple[str, ...] = (
        "Layer",
        "Kind",
        "Output shape",
        "Params",
        "Buffers",
        "Bytes",
        "FLOPs",
    )
    numeric: tuple[bool, ...] = (False, False, False, True, True, True, True)
    if graph:
        headers = ("Layer", "Kind", "Input shape", "Output shape", "Calls", *headers[3:])
        numeric = (False, False, False, False, True, True, True, True, True)
    body = []
    for r in table:
        cells = [
            "  " * r.depth + r.path,
            r.kind,
            shape_text(r.shape),
            f"{r.params:,}",
            f"{r.buffers:,}",
            f"{r.bytes:,}",
            f"{r.flops:,}",
        ]
        if graph:
            cells[2:2] = [", ".join(map(shape_text, r.in_shapes))]
            cells[4:4] = [f"{r.calls:,}"]
        body.append(tuple(cells))
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]

    def fmt(line: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, right in zip(line, widths, numeric, strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "=" * len(fmt(tuple("x" * w for w in widths)))
    total = totals(model)
    weights = total.params - total.biases
    int8 = [layer for _, layer in ir.layers(model) if layer.quantized]
    lines = [
        f"Model {ir.heading(model)}: {io_text(model)}",
        rule,
        fmt(headers),
        rule,
        *(fmt(line) for line in body),
        rule,
        f"Parameters:       {total.params:,} ({weights:,} weights, {total.biases:,} biases)",
        f"Parameter memory: {fmt_bytes(total.param_bytes)} ({model.dtype.name}, "
        f"{model.dtype.itemsize} bytes each)",
        f"Buffers:          {total.buffers:,} ({fmt_bytes(total.buffer_bytes)})",
        f"FLOPs per sample: {total.flops:,}",
    ]
    if int8:
        count = sum(layer.in_features * layer.out_features for layer in int8)
        scales = sum(layer.out_features for layer in int8) * model.dtype.itemsize
        lines.append(
            f"Quantised:        {count:,} Linear weights as int8 ({fmt_bytes(count)}, with "
            f"{fmt_bytes(scales)} of scales); inputs quantised per row as they are multiplied"
        )
    lines += [
        rule,
        "FLOPs count Linear layers: 2*in*out (a multiply and an add per weight),",
        "plus out when there is a bias (one add per output); other layers are not counted.",
    ]
    if graph:
        lines += [
            "Calls: how many times a layer runs per sample; one that runs more than once counts",
            "its FLOPs at every call and its parameters once. +, -, * and cat are not counted.",
        ]
    return "\n".join(lines) + "\n"
