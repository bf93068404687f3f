"""`layerc summary`: a checked model in, a table like torchinfo's out: one row per layer (nested
models expanded beneath their own row) with its path, the layer as torch prints it, its
per-sample output shape, its parameter and buffer counts, their bytes and FLOPs per sample, then
the totals.

Everything a row says about a layer comes from its kind in `kinds.KINDS`: the tensors it holds
(parameters and buffers, as the torch.nn class registers them, so the counts are torch's
`sum(p.numel() for p in model.parameters())` and the same over `buffers()`), and its text
(`Linear(in_features=4, out_features=3, bias=True)`, from the kind's `extra_repr`). The rows
come from `ir.walk`.

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
    counts: Counts

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


def rows(model: ir.Model) -> list[Row]:
    """The table's rows for `model`'s layers, in execution order, each nested model's row
    just before its own."""
    out: list[Row] = []
    for path, child in ir.walk(model, submodels=True):
        depth = path.count(".")
        if isinstance(child, ir.Submodel):
            total = Counts()
            for _, layer in ir.layers(child.model):
                total += layer_counts(layer)
            out.append(Row(path, depth, layer_repr(child), child.out_shape, total))
        else:
            out.append(Row(path, depth, layer_repr(child), child.out_shape, layer_counts(child)))
    return out


def totals(model: ir.Model) -> Counts:
    """The whole model's counts."""
    total = Counts()
    for _, layer in ir.layers(model):
        total += layer_counts(layer)
    return total


def fmt_bytes(count: int) -> str:
    """`268 B`, `1.5 KiB`, `3.2 MiB`."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count:,} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def summary(model: ir.Model) -> str:
    """The whole table as text, ending with a newline."""
    table = rows(model)
    headers = ("Layer", "Kind", "Output shape", "Params", "Buffers", "Bytes", "FLOPs")
    body = [
        (
            "  " * r.depth + r.path,
            r.kind,
            shape_text(r.shape),
            f"{r.params:,}",
            f"{r.buffers:,}",
            f"{r.bytes:,}",
            f"{r.flops:,}",
        )
        for r in table
    ]
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]
    numeric = (False, False, False, True, True, True, True)

    def fmt(line: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, right in zip(line, widths, numeric, strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "=" * len(fmt(tuple("x" * w for w in widths)))
    total = totals(model)
    weights = total.params - total.biases
    lines = [
        f"Model {model.name} ({model.dtype.name}): input {shape_text(model.in_shape)} -> "
        f"output {shape_text(model.out_shape)}",
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
        rule,
        "FLOPs count Linear layers: 2*in*out (a multiply and an add per weight),",
        "plus out when there is a bias (one add per output); other layers are not counted.",
    ]
    return "\n".join(lines) + "\n"
