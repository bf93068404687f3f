"""`layerc graph`: a checked model in, a diagram of its layers out, as graphviz DOT text (one box
per layer, edges labelled with the shape that flows along them, nested models drawn as
clusters), rendered to SVG, PNG or PDF by graphviz's `dot` program when it is installed.

Each box shows the layer's path, the layer as torch prints it (its kind with the arguments, from
the kind's `extra_repr` in `kinds.KINDS`) and what it holds; the layers come from `ir.walk`.

A graph model (one with a `forward` block) is drawn as the DAG its forward computes: an ellipse
per input (`input x`), a box per layer call, a circle per `+`, `-`, `*` and `neg` and a box per
`cat`, an ellipse per output (`output0`, `output1`, ... in return order when there are several).
A layer called twice is drawn twice, `call 1 of 2` and `call 2 of 2` (one box with edges from
both calls' inputs to both calls' outputs would draw a cycle the model does not have), and so
is a nested model, as a cluster per call. The operands of `-` and `cat`, whose order matters,
are numbered on their edges (`1: (*, 16)`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .. import ir
from ..errors import LayercError, UsageError
from ..files import Inputs, commit, refuse_inputs, temporary_for, unlink_quietly
from .summary import calls, layer_counts, layer_repr, shape_text

RENDERED = ("svg", "png", "pdf")
DOT_SUFFIXES = (".dot", ".gv")


def quote(text: str) -> str:
    """A DOT double-quoted string; `\\n` in `text` stays a DOT line break."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _Graph:
    """Builds the DOT lines; nodes are named n0, n1, ... in execution order."""

    def __init__(self, runs: dict[str, int]) -> None:
        self.lines: list[str] = []
        # Edges go after all nodes, outside every cluster: an edge written inside a cluster
        # would pull its other end into that cluster.
        self.edges: list[str] = []
        self.count = 0
        self.clusters = 0
        self.runs = runs  # how many times each layer and nested model runs, by path
        self.drawn: dict[str, int] = {}  # calls drawn so far, by path

    def node(self, label: str, indent: str, **attrs: str) -> str:
        name = f"n{self.count}"
        self.count += 1
        extra = "".join(f", {key}={quote(value)}" for key, value in sorted(attrs.items()))
        self.lines.append(f"{indent}{name} [label={quote(label)}{extra}];")
        return name

    def edge(self, a: str, b: str, shape: ir.Shape, position: int | None = None) -> None:
        label = shape_text(shape) if position is None else f"{position}: {shape_text(shape)}"
        self.edges.append(f"    {a} -> {b} [label={quote(label)}];")

    def call_text(self, path: str) -> str:
        """`call 2 of 3` for the next call of a layer or nested model that runs several times;
        "" for one that runs once."""
        runs = self.runs.get(path, 1)
        if runs < 2:
            return ""
        self.drawn[path] = self.drawn.get(path, 0) + 1
        return f"call {self.drawn[path]} of {runs}"

    def model(self, model: ir.Model, prefix: str, args: list[Value], depth: int) -> list[Value]:
        """Emit `model`'s layers (their paths after `prefix`, in clusters `depth` deep) given
        the nodes and shapes of its inputs; return those of its outputs."""
        if model.graph is None:
            (value,) = args
            for child in model.layers:
                value = self.call(child, prefix, [value], depth)
            return [value]
        graph = model.graph
        values: dict[int, Value] = {i.value: arg for i, arg in zip(graph.inputs, args, strict=True)}
        indent = "    " * (depth + 1)
        for op in graph.ops():
            if isinstance(op, ir.Call):
                child = model.child(op.child)
                values[op.out] = self.call(child, prefix, [values[a] for a in op.args], depth)
                continue
            if isinstance(op, ir.BinOp):
                label = op.op
                if isinstance(op.left, ir.Const):
                    label = f"{op.left.value:g} {op.op}"
                elif isinstance(op.right, ir.Const):
                    label = f"{op.op} {op.right.value:g}"
                operands = [v for v in (op.left, op.right) if isinstance(v, int)]
                node = self.node(label, indent, shape="circle", fillcolor=OP_FILL)
                ordered = op.op == "-" and len(operands) == 2
            elif isinstance(op, ir.Neg):
                operands = [op.operand]
                node = self.node("neg", indent, shape="circle", fillcolor=OP_FILL)
                ordered = False
            else:
                operands = list(op.args)
                node = self.node("cat", indent, fillcolor=OP_FILL)
                ordered = True
            for position, operand in enumerate(operands, 1):
                source, shape = values[operand]
                self.edge(source, node, shape, position if ordered else None)
            values[op.out] = (node, op.shape)
        return [values[v] for v in graph.outputs]

    def call(self, child: ir.Child, prefix: str, args: list[Value], depth: int) -> Value:
        """Emit one call of `child` (a box, or a cluster around a nested model's layers) taking
        `args`; return the node and shape of its output."""
        path = prefix + child.name
        indent = "    " * (depth + 1)
        calls = self.call_text(path)
        if isinstance(child, ir.Submodel):
            self.clusters += 1
            title = f"{path}: {child.model.name}" + (f" ({calls})" if calls else "")
            self.lines.append(f"{indent}subgraph cluster_{self.clusters} {{")
            self.lines.append(f"{indent}    label={quote(title)};")
            self.lines.append(f'{indent}    style="rounded,dashed"; color="#7f8c9d";')
            (out,) = self.model(child.model, path + ".", args, depth + 1)
            self.lines.append(f"{indent}}}")
            return out
        counts = layer_counts(child)
        label = f"{path}\n{layer_repr(child)}"
        held = []
        if counts.params:
            held.append(f"{counts.params:,} parameters")
        if counts.buffers:
            held.append(f"{counts.buffers:,} buffer values")
        if held:
            label += "\n" + ", ".join(held)
        if calls:
            label += "\n" + calls
        fill = "#dbe8f7" if counts.params or counts.buffers else "#eef5e9"
        name = self.node(label, indent, fillcolor=fill)
        ((source, shape),) = args
        self.edge(source, name, shape)
        return name, child.out_shape


Value = tuple[str, ir.Shape]  # the node giving a value, and its per-sample shape
OP_FILL = "#fdf2d0"


def to_dot(model: ir.Model) -> str:
    """The DOT text of `model`'s diagram, ending with a newline."""
    g = _Graph(calls(model))
    title = ir.heading(model)
    head = [
        f"digraph {quote(model.name)} {{",
        f"    graph [label={quote(title)}, labelloc=t, fontname=Helvetica, rankdir=TB];",
        '    node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=11];',
        "    edge [fontname=Helvetica, fontsize=10];",
    ]
    terminal = {"shape": "ellipse", "fillcolor": "#ffffff"}
    if model.graph is None:
        names = ["input"]
    else:
        names = [f"input {i.name}" for i in model.graph.inputs]
    args = [
        (g.node(f"{name}\n{shape_text(shape)}", "    ", **terminal), shape)
        for name, shape in zip(names, model.in_shapes, strict=True)
    ]
    results = g.model(model, "", args, 0)
    several = len(results) > 1
    for index, (last, shape) in enumerate(results):
        name = f"output{index}" if several else "output"
        end = g.node(f"{name}\n{shape_text(shape)}", "    ", **terminal)
        g.edge(last, end, shape)
    return "\n".join([*head, *g.lines, *g.edges, "}"]) + "\n"


def output_format(path: Path) -> str:
    """ "dot" for .dot/.gv, else the rendered format named by the extension."""
    suffix = path.suffix.lower()
    if suffix in DOT_SUFFIXES:
        return "dot"
    if suffix[1:] in RENDERED:
        return suffix[1:]
    raise UsageError(
        f"cannot tell what to write from {str(path)!r}: use .svg, .png, .pdf, or .dot for "
        "graphviz's text format"
    )


def render(dot_text: str, fmt: str, target: Path, inputs: Inputs = ()) -> None:
    """Run graphviz's `dot` to write `target` in `fmt` (through a temporary file and a rename;
    `target` may not be one of `inputs`). A missing `dot`, or one that fails, is a
    `LayercError` that says what to do."""
    program = shutil.which("dot")
    if program is None:
        raise LayercError(
            f"cannot draw {fmt.upper()}: graphviz's 'dot' program is not installed; install "
            "graphviz (e.g. apt-get install graphviz, brew install graphviz) or write DOT text "
            f"with -o {target.with_suffix('.dot').name}",
            file=str(target),
        )
    refuse_inputs([target], inputs)
    try:
        fd, tmp = temporary_for(target)
    except OSError as exc:
        raise LayercError(f"cannot write {target}: {exc.strerror}", file=str(target)) from None
    os.close(fd)
    try:
        result = subprocess.run(
            [program, f"-T{fmt}", "-o", str(tmp)],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            detail = result.stderr.decode("utf-8", errors="replace").strip()
            raise LayercError(f"graphviz's dot failed: {detail}", file=str(target))
        commit(tmp, target)
    except OSError as exc:
        unlink_quietly(tmp)
        raise LayercError(f"cannot write {target}: {exc.strerror}", file=str(target)) from None
    except BaseException:
        unlink_quietly(tmp)
        raise
