"""`layerc graph`: a checked model in, a diagram of its layers out, as graphviz DOT text (one box
per layer, edges labelled with the shape that flows along them, nested models drawn as
clusters), rendered to SVG, PNG or PDF by graphviz's `dot` program when it is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .. import ir
from ..errors import LayercError, UsageError
from ..files import Inputs, commit, refuse_inputs, temporary_for, unlink_quietly
from .summary import kind_text

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

    def layers(
        self, model: ir.Model, prefix: str, indent: str, previous: str, width: int
    ) -> tuple[str, int]:
        """Emit `model`'s layers after node `previous` (whose output has `width` features);
        return the last node and its width."""
        for layer in model.layers:
            path = prefix + layer.name
            if isinstance(layer, ir.Submodel):
                self.clusters += 1
                self.lines.append(f"{indent}subgraph cluster_{self.clusters} {{")
                self.lines.append(f"{indent}    label={quote(f'{path}: {layer.model.name}')};")
                self.lines.append(f'{indent}    style="rounded,dashed"; color="#7f8c9d";')
                previous, width = self.layers(
                    layer.model, path + ".", indent + "    ", previous, width
                )
                self.lines.append(f"{indent}}}")
                continue
            out = ir.layer_sizes(layer)
            new_width = out[1] if out is not None else width
            label = f"{path}\n{kind_text(layer)}"
            if layer.kind == "Linear":
                assert layer.weight is not None
                count = layer.weight.size + (layer.bias.size if layer.bias is not None else 0)
                label += f"\n{count:,} parameters"
                name = self.node(label, indent, fillcolor="#dbe8f7")
            else:
                name = self.node(label, indent, fillcolor="#eef5e9")
            self.edge(previous, name, width)
            previous, width = name, new_width
        return previous, width

    def edge(self, a: str, b: str, width: int) -> None:
        self.edges.append(f"    {a} -> {b} [label={quote(f'(*, {width})')}];")


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
    first = g.node(f"input\n(*, {model.in_features})", "    ", shape="ellipse", fillcolor="#ffffff")
    last, width = g.layers(model, "", "    ", first, model.in_features)
    end = g.node(f"output\n(*, {model.out_features})", "    ", shape="ellipse", fillcolor="#ffffff")
    g.edge(last, end, width)
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
