"""`layerc summary`: a checked model in, a table like torchinfo's out: one row per layer (nested
models expanded beneath their own row) with its path, kind, output shape, parameter count, bytes
and FLOPs per sample, then the totals.

FLOPs are counted per sample for Linear layers only: each of the in*out weights costs a multiply
and an add (2*in*out), and a bias adds one value per output (out). Activations are not counted,
as torchinfo and fvcore leave them out; they are cheap next to the matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import ir


@dataclass(frozen=True)
class Row:
    """One line of the table. A nested model's row totals the rows beneath it."""

    path: str
    depth: int
    kind: str
    width: int  # features of the layer's output
    params: int
    bytes: int
    flops: int


def kind_text(layer: ir.Child) -> str:
    """The layer as the source would write it: `Linear(4, 3, bias=false)`, `ReLU()`, a model's
    name."""
    if isinstance(layer, ir.Submodel):
        return layer.model.name
    if layer.kind == "Linear":
        bias = "" if layer.bias is not None else ", bias=false"
        return f"Linear({layer.in_features}, {layer.out_features}{bias})"
    args = ", ".join(f"{key}={_value(value)}" for key, value in layer.args)
    return f"{layer.kind}({args})"


def _value(value: object) -> str:
    """An argument as the source would write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def linear_flops(layer: ir.Layer) -> int:
    """2*in*out for the products and sums, plus out for the bias adds when there is a bias."""
    flops = 2 * layer.in_features * layer.out_features
    if layer.bias is not None:
        flops += layer.out_features
    return flops


def rows(model: ir.Model, prefix: str = "", depth: int = 0) -> list[Row]:
    """The table's rows for `model`'s layers, in execution order."""
    out: list[Row] = []
    width = model.in_features
    itemsize = model.dtype.itemsize
    for layer in model.layers:
        path = prefix + layer.name
        if isinstance(layer, ir.Layer) and layer.kind == "Linear":
            assert layer.weight is not None
            count = layer.weight.size + (layer.bias.size if layer.bias is not None else 0)
            width = layer.out_features
            out.append(
                Row(
                    path,
                    depth,
                    kind_text(layer),
                    width,
                    count,
                    count * itemsize,
                    linear_flops(layer),
                )
            )
        elif isinstance(layer, ir.Submodel):
            inner = rows(layer.model, path + ".", depth + 1)
            leaves = _leaves(inner)
            width = layer.model.out_features
            out.append(
                Row(
                    path,
                    depth,
                    kind_text(layer),
                    width,
                    sum(r.params for r in leaves),
                    sum(r.bytes for r in leaves),
                    sum(r.flops for r in leaves),
                )
            )
            out.extend(inner)
        else:
            out.append(Row(path, depth, kind_text(layer), width, 0, 0, 0))
    return out


def _leaves(table: list[Row]) -> list[Row]:
    """The rows that are layers of their own, not totals of a nested model."""
    return [
        r for i, r in enumerate(table) if not (i + 1 < len(table) and table[i + 1].depth > r.depth)
    ]


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
    leaves = _leaves(table)
    headers = ("Layer", "Kind", "Output shape", "Params", "Bytes", "FLOPs")
    body = [
        (
            "  " * r.depth + r.path,
            r.kind,
            f"(*, {r.width})",
            f"{r.params:,}",
            f"{r.bytes:,}",
            f"{r.flops:,}",
        )
        for r in table
    ]
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]
    numeric = (False, False, False, True, True, True)

    def fmt(line: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(w) if right else cell.ljust(w)
            for cell, w, right in zip(line, widths, numeric, strict=True)
        ]
        return "  ".join(cells).rstrip()

    rule = "=" * len(fmt(tuple("x" * w for w in widths)))
    params = sum(r.params for r in leaves)
    nbytes = sum(r.bytes for r in leaves)
    flops = sum(r.flops for r in leaves)
    weights = sum(lin.weight.size for _, lin in ir.linears(model) if lin.weight is not None)
    biases = params - weights
    lines = [
        f"Model {model.name} ({model.dtype.name}): input (*, {model.in_features}) -> "
        f"output (*, {model.out_features})",
        rule,
        fmt(headers),
        rule,
        *(fmt(line) for line in body),
        rule,
        f"Parameters:       {params:,} ({weights:,} weights, {biases:,} biases)",
        f"Parameter memory: {fmt_bytes(nbytes)} ({model.dtype.name}, "
        f"{model.dtype.itemsize} bytes each)",
        f"FLOPs per sample: {flops:,}",
        rule,
        "FLOPs count Linear layers: 2*in*out (a multiply and an add per weight),",
        "plus out when there is a bias (one add per output); activations are not counted.",
    ]
    return "\n".join(lines) + "\n"
