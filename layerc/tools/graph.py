"""`layerc graph`: a checked model in, a diagram of its layers out, as graphviz DOT text (one box
per layer, edges labelled with the shape that flows along them, nested models drawn as
clusters), rendered to SVG, PNG or PDF by graphviz's `dot` program when it is installed.

Each box shows the layer's path, the layer as torch prints it (its kind with the arguments, from
the kind's `extra_repr` in `kinds.KINDS`) and what it holds; the layers come from `ir.walk`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .. import ir
from ..errors import LayercError, UsageError
from ..files import Inputs, commit, refuse_inputs, temporary_for, unlink_quietly
from .summary import layer_counts, layer_repr, shape_text

RENDERED = ("svg", "png", "pdf")
DOT_SUFFIXES = (".dot", ".gv")


def quote(text: str) -> str:
    """A DOT double-quoted string; `\\n` in `text` stays a DOT line break."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _Graph:
    """Builds the DOT lines; nodes are named n0, n1, ... in execution order."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        # Edges go after all nodes, outside every cluster: an edge written inside a cluster
        # would pull its other end into that cluster.
        self.edges: list[str] = []
        self.count = 0
        self.clusters = 0

    def node(self, label: str, indent: str, **attrs: str) -> str:
        name = f"n{self.count}"
        self.count += 1
        extra = "".join(f", {key}={quote(value)}" for key, value in sorted(attrs.items()))
        self.lines.append(f"{indent}{name} [label={quote(label)}{extra}];")
        return name

    def layers(self, model: ir.Model, previous: str) -> tuple[str, ir.Shape]:
        """Emit `model`'s layers (from `ir.walk`, each nested model a cluster around its own)
        after node `previous`, which gives the model's input; return the last node and the
        shape it gives."""
        shape = model.in_shape
        open_clusters: list[str] = []  # path prefixes ("enc.") of the clusters being written
        for path, layer in ir.walk(model, submodels=True):
            while open_clusters and not path.startswith(open_clusters[-1]):
                open_clusters.pop()
                self.lines.append("    " * (len(open_clusters) + 1) + "}")
            indent = "    " * (len(open_clusters) + 1)
            if isinstance(layer, ir.Submodel):
                self.clusters += 1
                self.lines.append(f"{indent}subgraph cluster_{self.clusters} {{")
                self.lines.append(f"{indent}    label={quote(f'{path}: {layer.model.name}')};")
                self.lines.append(f'{indent}    style="rounded,dashed"; color="#7f8c9d";')
                open_clusters.append(path + ".")
                continue
            counts = layer_counts(layer)
            label = f"{path}\n{layer_repr(layer)}"
            held = []
            if counts.params:
                held.append(f"{counts.params:,} parameters")
            if counts.buffers:
                held.append(f"{counts.buffers:,} buffer values")
            if held:
                label += "\n" + ", ".join(held)
            fill = "#dbe8f7" if counts.params or counts.buffers else "#eef5e9"
            name = self.node(label, indent, fillcolor=fill)
            self.edge(previous, name, shape)
            previous, shape = name, layer.out_shape
        while open_clusters:
            open_clusters.pop()
            self.lines.append("    " * (len(open_clusters) + 1) + "}")
        return previous, shape

    def edge(self, a: str, b: str, shape: ir.Shape) -> None:
        self.edges.append(f"    {a} -> {b} [label={quote(shape_text(shape))}];")


def to_dot(model: ir.Model) -> str:
    """The DOT text of `model`'s diagram, ending with a newline."""
    g = _Graph()
    title = f"{model.name} ({model.dtype.name})"
    head = [
        f"digraph {quote(model.name)} {{",
        f"    graph [label={quote(title)}, labelloc=t, fontname=Helvetica, rankdir=TB];",
        '    node [shape=box, style="rounded,filled", fontname=Helvetica, fontsize=11];',
        "    edge [fontname=Helvetica, fontsize=10];",
    ]
    inputs = f"input\n{shape_text(model.in_shape)}"
    first = g.node(inputs, "    ", shape="ellipse", fillcolor="#ffffff")
    last, shape = g.layers(model, first)
    outputs = f"output\n{shape_text(model.out_shape)}"
    end = g.node(outputs, "    ", shape="ellipse", fillcolor="#ffffff")
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
