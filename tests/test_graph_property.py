"""Random graph models (spec section 8) against PyTorch, drawn by hypothesis.

Each example draws a description of a model with a `forward` block (float32, or float64 through
the model option `dtype=float64`): 1-3 inputs of random widths, sometimes with an axis before
the features (`x0: [2, 5]`; then every value has it), annotated at random, and always where no
layer or operation would fix the width; layers declared in a random order (Linear with or
without bias, ReLU, Tanh, GELU, Sigmoid, LayerNorm with literal weights, sometimes a nested
graph model `Inner` declared once or twice); statements and expressions of layer calls, `+ - *` between values or with numbers, unary minus and `cat`,
values inlined into the expression that uses them or bound to names, layers (and the nested
model) called more than once where the shapes allow, and 1-3 outputs. Every value and every
layer is used, so the checker has nothing to warn about (test_unused_values_and_layers_warn
checks the warnings on purpose).

The same description is rendered as .lyr text (Linear weights from `init = uniform(seed=K)`)
and built as a torch.nn.Module (layers registered in declaration order; `forward` evaluates the
same expressions in the same order, as Python evaluates the rendered source). The .lyr is
compiled, its state_dict loaded into the torch model, and then, on a random batch (no batch
axis, one, or two): state_dict keys and repr are torch's; outputs agree (no hooks: the fused
call); with global pre- and forward hooks on both sides, the outputs agree again and the hooks
fire in the same sequence (module path, kind, shapes), as many times as the description has
calls; a forward hook on one layer that replaces its output gives torch's outputs too; the
inputs are left unchanged.

Each example compiles a module (about 2 s), so by default 8 examples run, derandomized so CI
is deterministic (about 20 s). For a longer search, set LAYERC_GRAPH_EXAMPLES, and
LAYERC_GRAPH_SEED=N to draw another (reproducible) sequence of examples than CI's:

    LAYERC_GRAPH_EXAMPLES=200 python -m pytest -q tests/test_graph_property.py -p no:cacheprovider
    LAYERC_GRAPH_EXAMPLES=200 LAYERC_GRAPH_SEED=7 python -m pytest -q tests/test_graph_property.py

A failure prints the drawn description and the .lyr text it rendered. Hypothesis does not
shrink it (each attempt compiles a module) unless LAYERC_GRAPH_SHRINK=1 is set: then it reports
a minimal failing description, after some minutes.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.modules.module as torch_module
from conftest import compile_text
from hypothesis import Phase, given, seed, settings
from hypothesis import strategies as st
from torch import nn

import layerc
from layerc import syntax
from layerc.check import check

EXAMPLES = int(os.environ.get("LAYERC_GRAPH_EXAMPLES", "8"))
SEED = os.environ.get("LAYERC_GRAPH_SEED")
# Shrinking a failure compiles a module per attempt (minutes): only when asked for.
PHASES = tuple(
    phase
    for phase in Phase
    if os.environ.get("LAYERC_GRAPH_SHRINK") == "1" or phase not in (Phase.shrink, Phase.explain)
)

ACTIVATIONS = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "GELU": nn.GELU, "Sigmoid": nn.Sigmoid}
# Numbers float32 holds exactly (no 0: it would hide the value it multiplies).
NUMBERS = [0.5, 2.0, -1.5, 3.0, 0.25, -2.0, 1.0, -0.75]
# Widths: mostly small; sometimes wide enough that a Linear has more than lower.LOOPS_MAX = 256
# weights and multiplies with the register tiles (and folds the layers after it into them).
WIDTHS = st.sampled_from([1, 2, 3, 4, 5, 6, 2, 3, 17, 24])
OUT_WIDTHS = st.sampled_from([1, 2, 3, 4, 5, 6, 3, 17, 24, 64])  # a Linear's out_features
MAX_WIDTH = 80  # no cat wider than this


# ---------------------------------------------------------------------------- descriptions


@dataclass(eq=False)
class Layer:
    name: str
    kind: str  # a key of ACTIVATIONS, "Linear", "LayerNorm" or "Inner"
    in_widths: tuple[int, ...]
    out_width: int
    bias: bool = True
    seed: int = 0
    norm_weight: list[float] = field(default_factory=list)
    norm_bias: list[float] = field(default_factory=list)


@dataclass(eq=False)
class Node:
    """A value: an input, a layer call, a binary operation (an operand may be a number), a
    negation or a cat. `name` is set for inputs and for values bound by a statement."""

    op: str  # "input", "call", "+", "-", "*", "neg", "cat"
    width: int
    args: tuple[Any, ...] = ()
    layer: Layer | None = None
    name: str | None = None


@dataclass(eq=False)
class Graph:
    model: str
    inputs: list[Node]
    annotated: list[bool]
    layers: list[Layer]  # in declaration order
    statements: list[Node]  # bound values, in order
    outputs: list[Node]
    inner: Graph | None = None
    dtype: str = "float32"
    lead: tuple[int, ...] = ()  # axes before the features every value has: (2,) for [2, w]

    def shape(self, node: Node) -> tuple[int, ...]:
        return (*self.lead, node.width)

    def calls(self) -> int:
        """Module calls one forward makes: the model's own and every layer's, nested ones
        included."""
        total = 1
        for node in self.nodes():
            if node.op == "call":
                assert node.layer is not None
                total += self.inner.calls() if node.layer.kind == "Inner" else 1  # type: ignore[union-attr]
        return total

    def nodes(self) -> list[Node]:
        """Every value computed in forward (inputs excluded), each once."""
        seen: dict[int, Node] = {}

        def visit(node: Node) -> None:
            if id(node) in seen or node.op == "input":
                return
            for arg in node.args:
                if isinstance(arg, Node):
                    visit(arg)
            seen[id(node)] = node

        for node in [*self.statements, *self.outputs]:
            visit(node)
        return list(seen.values())


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


@st.composite
def graphs(
    draw: st.DrawFn,
    model: str = "Outer",
    outputs: int = 3,
    nested: bool = True,
    dtype: str | None = None,
    lead: tuple[int, ...] | None = None,
) -> Graph:
    dtype = dtype or draw(st.sampled_from(["float32", "float32", "float64"]))
    if lead is None:
        lead = draw(st.sampled_from([(), (), (), (2,)]))
    seeds = iter(range(1000))
    n_inputs = draw(st.integers(1, 3 if outputs > 1 else 2))
    inputs = [Node("input", draw(WIDTHS), name=f"x{i}") for i in range(n_inputs)]
    pool: list[Node] = list(inputs)
    layers: list[Layer] = []
    inner = draw(graphs("Inner", 1, False, dtype, lead)) if nested and draw(st.booleans()) else None

    def pick(width: int | None = None) -> Node | None:
        choices = [n for n in pool if width is None or n.width == width]
        return draw(st.sampled_from(choices)) if choices else None

    def layer(kind: str, in_widths: tuple[int, ...], out: int, **options: Any) -> Layer:
        """An existing layer of this kind and shape (sometimes), else a new one."""
        same = [
            lay for lay in layers if lay.kind == kind and lay.in_widths == in_widths
            and (kind != "Linear" or lay.out_width == out)
        ]  # fmt: skip
        if same and draw(st.booleans()):
            return draw(st.sampled_from(same))
        new = Layer(f"{kind.lower()}{len(layers)}", kind, in_widths, out, **options)
        if kind == "LayerNorm":
            values = st.integers(-16, 16).map(lambda k: k / 8)
            new.norm_weight = draw(st.lists(values, min_size=out, max_size=out))
            new.norm_bias = draw(st.lists(values, min_size=out, max_size=out))
        layers.append(new)
        return new

    def linear(src: Node, out: int, exact: bool = False) -> Node:
        """A call of a Linear on `src`: an existing one (of `out` features if `exact`) or a
        new one of `out` features."""
        same = [
            lay for lay in layers if lay.kind == "Linear" and lay.in_widths == (src.width,)
            and (not exact or lay.out_width == out)
        ]  # fmt: skip
        if same and draw(st.booleans()):
            lin = draw(st.sampled_from(same))
        else:
            lin = layer("Linear", (src.width,), out, bias=draw(st.booleans()), seed=next(seeds))
        return Node("call", lin.out_width, (src,), lin)

    steps = draw(st.integers(2, 7))
    inner_step = draw(st.integers(0, steps - 1)) if inner is not None else -1
    kinds = ["linear", "act", "norm", "binop", "number", "neg", "cat", "again"]
    for step in range(steps):
        what = "inner" if step == inner_step else draw(st.sampled_from(kinds))
        src = pick()
        assert src is not None
        again = [
            (lay, n) for lay in layers for n in pool
            if lay.kind != "Inner" and lay.in_widths == (n.width,)
        ]  # fmt: skip
        if what == "again" and again:  # call a layer once more, on a value of its width
            lay, src = draw(st.sampled_from(again))
            node = Node("call", lay.out_width, (src,), lay)
        elif what == "again":
            continue
        elif what == "linear":
            node = linear(src, draw(OUT_WIDTHS))
        elif what == "act":
            kind = draw(st.sampled_from(sorted(ACTIVATIONS)))
            node = Node("call", src.width, (src,), layer(kind, (src.width,), src.width))
        elif what == "norm":
            node = Node("call", src.width, (src,), layer("LayerNorm", (src.width,), src.width))
        elif what == "binop":
            other = pick(src.width)
            node = Node(draw(st.sampled_from("+-*")), src.width, (src, other))
        elif what == "number":
            number = draw(st.sampled_from(NUMBERS))
            args = (number, src) if draw(st.booleans()) else (src, number)
            node = Node(draw(st.sampled_from("+-*")), src.width, args)
        elif what == "neg":
            node = Node("neg", src.width, (src,))
        elif what == "cat":
            parts = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=3))
            if sum(p.width for p in parts) > MAX_WIDTH:
                continue
            node = Node("cat", sum(p.width for p in parts), tuple(parts))
        else:  # call the nested model once or twice (the same instance, or a second one)
            assert inner is not None
            widths = tuple(i.width for i in inner.inputs)
            width = inner.outputs[0].width
            for _ in range(draw(st.integers(1, 2))):
                args = []
                for arg_width in widths:
                    arg = pick(arg_width)
                    if arg is None:  # project a value to the width Inner takes
                        arg = linear(pick(), arg_width, exact=True)  # type: ignore[arg-type]
                        pool.append(arg)
                    args.append(arg)
                node = Node("call", width, tuple(args), layer("Inner", widths, width))
                pool.append(node)
            continue
        pool.append(node)

    uses = _uses(pool)
    n_outputs = draw(st.integers(1, outputs))
    unused = [n for n in pool if uses[id(n)] == 0]
    while len(unused) > n_outputs:  # join values nothing uses, two at a time
        a, b = unused[0], unused[1]
        op = draw(st.sampled_from("+-*")) if a.width == b.width and draw(st.booleans()) else "cat"
        width = a.width if op != "cat" else a.width + b.width
        pool.append(Node(op, width, (a, b)))
        uses = _uses(pool)
        unused = [n for n in pool if uses[id(n)] == 0]
    result = list(unused)
    others = [n for n in pool if n not in result]
    while len(result) < n_outputs and others:
        extra = draw(st.sampled_from(others))
        others.remove(extra)
        result.append(extra)

    # bind to a name every value used twice or more, and some of the others
    uses = _uses(pool, result)
    statements = []
    for node in pool:
        if node.op == "input":
            continue
        if uses[id(node)] > 1 or draw(st.booleans()):
            node.name = f"h{len(statements)}"
            statements.append(node)
    order = draw(st.permutations(range(len(layers))))
    graph = Graph(
        model,
        inputs,
        [draw(st.booleans()) for _ in inputs],
        [layers[i] for i in order],
        statements,
        result,
        inner,
        dtype,
        lead,
    )
    graph.annotated = _annotations(graph)
    return graph


def _uses(pool: list[Node], outputs: list[Node] = ()) -> dict[int, int]:  # type: ignore[assignment]
    uses = {id(n): 0 for n in pool}
    for node in pool:
        for arg in node.args:
            if isinstance(arg, Node):
                uses[id(arg)] += 1
    for node in outputs:
        uses[id(node)] += 1
    return uses


def _annotations(graph: Graph) -> list[bool]:
    """The drawn annotations, plus one on every input whose width nothing else fixes (a
    conservative inference: a Linear, LayerNorm or Inner call fixes its argument and result,
    operations and activations give their result the shape of their operands, and a cat's
    result is fixed once all its parts are). With axes before the features, every input is
    annotated: a layer fixes only the last axis."""
    if graph.lead:
        return [True for _ in graph.inputs]
    parent: dict[int, int] = {}

    def find(node: Node) -> int:
        key = id(node)
        parent.setdefault(key, key)
        while parent[key] != key:
            key = parent[key]
        return key

    def union(a: Node, b: Node) -> None:
        parent[find(a)] = find(b)

    nodes = graph.nodes()
    fixed_nodes: list[Node] = [i for i, a in zip(graph.inputs, graph.annotated, strict=True) if a]
    for node in nodes:
        values = [a for a in node.args if isinstance(a, Node)]
        if node.op == "call":
            assert node.layer is not None
            if node.layer.kind in ACTIVATIONS:
                union(values[0], node)
            else:
                fixed_nodes += [node, *values]
        elif node.op in ("+", "-", "*", "neg"):
            for value in values:
                union(value, node)
    fixed = {find(n) for n in fixed_nodes}
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if node.op == "cat" and find(node) not in fixed:
                if all(find(a) in fixed for a in node.args):
                    fixed.add(find(node))
                    changed = True
    return [a or find(i) not in fixed for i, a in zip(graph.inputs, graph.annotated, strict=True)]


# ---------------------------------------------------------------------------- rendering


def _expr(node: Node) -> str:
    if node.name is not None:
        return node.name
    if node.op == "call":
        assert node.layer is not None
        return f"{node.layer.name}({', '.join(_expr(a) for a in node.args)})"
    if node.op == "cat":
        return f"cat({', '.join(_expr(a) for a in node.args)})"
    if node.op == "neg":
        (arg,) = node.args
        return f"-{_operand(arg, node, left=False)}"
    left, right = node.args
    return f"{_operand(left, node, left=True)} {node.op} {_operand(right, node, left=False)}"


def _operand(value: Any, parent: Node, left: bool) -> str:
    """An operand as Python would need it: a product inside a sum, or a negation on the left,
    needs no parentheses; other operations do."""
    if not isinstance(value, Node):
        return _number(value)
    text = _expr(value)
    if value.name is not None or value.op in ("call", "cat", "input"):
        return text
    if parent.op in "+-" and value.op == "*":
        return text
    if left and parent.op != "neg" and value.op == "neg":
        return text
    return f"({text})"


def _render_model(graph: Graph) -> str:
    options = "(dtype=float64)" if graph.dtype == "float64" else ""
    lines = [f"model {graph.model}{options} {{"]
    for lay in graph.layers:
        if lay.kind == "Linear":
            options = "" if lay.bias else ", bias=false"
            lines.append(
                f"    {lay.name} = Linear({lay.in_widths[0]}, {lay.out_width}{options}) "
                f"{{ init = uniform(seed={lay.seed}) }}"
            )
        elif lay.kind == "LayerNorm":
            lines += [
                f"    {lay.name} = LayerNorm({lay.in_widths[0]}) {{",
                f"        weight = [{', '.join(map(_number, lay.norm_weight))}]",
                f"        bias = [{', '.join(map(_number, lay.norm_bias))}]",
                "    }",
            ]
        else:
            lines.append(f"    {lay.name} = {lay.kind}()")
    params = ", ".join(
        (
            f"{i.name}: [{', '.join(map(str, graph.shape(i)))}]"
            if graph.lead
            else f"{i.name}: {i.width}"
        )
        if annotated
        else str(i.name)
        for i, annotated in zip(graph.inputs, graph.annotated, strict=True)
    )
    lines += ["", f"    forward({params}) {{"]
    lines += [f"        {node.name} = {_expr(_unnamed(node))}" for node in graph.statements]
    lines += [f"        return {', '.join(_expr(o) for o in graph.outputs)}", "    }", "}"]
    return "\n".join(lines) + "\n"


def _unnamed(node: Node) -> Node:
    """`node` with its name dropped, to render the expression a statement binds."""
    return Node(node.op, node.width, node.args, node.layer)


def render(graph: Graph) -> str:
    inner = _render_model(graph.inner) + "\n" if graph.inner is not None else ""
    return inner + _render_model(graph)


# ---------------------------------------------------------------------------- torch


class GraphModule(nn.Module):
    """A description as a torch.nn.Module: the layers registered in declaration order, and a
    forward that evaluates the statements and then the returned expressions, each expression
    left to right and inside out, as Python runs the rendered source."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.peak = 0.0  # the largest magnitude of any value computed so far
        for lay in graph.layers:
            if lay.kind == "Linear":
                module: nn.Module = nn.Linear(lay.in_widths[0], lay.out_width, bias=lay.bias)
            elif lay.kind == "LayerNorm":
                module = nn.LayerNorm(lay.in_widths[0])
            elif lay.kind == "Inner":
                assert graph.inner is not None
                module = torch_model(graph.inner)
            else:
                module = ACTIVATIONS[lay.kind]()
            self.add_module(lay.name, module)

    def forward(self, *xs: torch.Tensor) -> Any:
        graph = self.graph
        assert len(xs) == len(graph.inputs)
        env = {id(i): x for i, x in zip(graph.inputs, xs, strict=True)}
        for x in xs:
            self._note(x)
        for node in graph.statements:
            env[id(node)] = self._eval(node, env)
        outputs = tuple(self._eval(o, env) for o in graph.outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    def _eval(self, node: Any, env: dict[int, torch.Tensor]) -> Any:
        if not isinstance(node, Node):
            return node  # a number
        if id(node) in env:
            return env[id(node)]
        args = [self._eval(a, env) for a in node.args]
        if node.op == "call":
            assert node.layer is not None
            value = getattr(self, node.layer.name)(*args)
        elif node.op == "cat":
            value = torch.cat(args, dim=-1)
        elif node.op == "neg":
            value = -args[0]
        else:
            left, right = args
            value = {"+": left + right, "-": left - right, "*": left * right}[node.op]
        return self._note(value)

    def _note(self, value: torch.Tensor) -> torch.Tensor:
        if value.numel():
            self.peak = max(self.peak, float(value.detach().abs().max()))
        return value


def torch_model(graph: Graph) -> nn.Module:
    """GraphModule under the model's own name (so its repr says `Outer(`)."""
    model = type(graph.model, (GraphModule,), {})(graph).eval()
    return model.double() if graph.dtype == "float64" else model


# ---------------------------------------------------------------------------- the property


def _shapes(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value)
    return tuple(value.shape)


def _run_with_hooks(net: Any, xs: list[Any], is_torch: bool) -> tuple[Any, list[tuple]]:
    paths = {module: path for path, module in net.named_modules()}
    log: list[tuple] = []

    def pre(module, args):
        log.append((paths.get(module, "?"), "pre", _shapes(args)))

    def fwd(module, args, output):
        log.append((paths.get(module, "?"), "fwd", _shapes(args), _shapes(output)))

    registry = torch_module if is_torch else layerc
    handles = [
        registry.register_module_forward_pre_hook(pre),
        registry.register_module_forward_hook(fwd),
    ]
    try:
        with torch.no_grad():
            output = net(*xs)
    finally:
        for handle in handles:
            handle.remove()
    return output, log


def _as_tuple(value: Any) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _compare(ours: Any, theirs: Any, scale: float, where: str) -> None:
    """One array for one output, a tuple of arrays for several, each of torch's dtype and shape,
    close to torch's within the dtype's rounding (relative to `scale`, the largest magnitude in
    the computation)."""
    assert type(ours) is type(theirs) or (
        isinstance(ours, np.ndarray) and isinstance(theirs, torch.Tensor)
    ), f"{where}: {type(ours).__name__} against torch's {type(theirs).__name__}"
    for i, (a, b) in enumerate(zip(_as_tuple(ours), _as_tuple(theirs), strict=True)):
        assert isinstance(a, np.ndarray), f"{where}[{i}]"
        assert a.dtype == b.numpy().dtype and a.shape == tuple(b.shape), f"{where}[{i}]"
        tol = 1e-5 if a.dtype == np.float32 else 1e-10
        torch.testing.assert_close(
            torch.from_numpy(a), b, rtol=tol, atol=tol * scale, msg=f"{where}[{i}]"
        )


def _check_example(graph: Graph, folder: Path) -> None:
    text = render(graph)
    program = check(syntax.parse(text, "drawn.lyr"), folder)
    assert program.warnings == (), (text, [str(w) for w in program.warnings])
    module = compile_text(text, folder)
    net = module.Outer()
    reference = torch_model(graph)
    ours_state, theirs_state = net.state_dict(), reference.state_dict()
    assert list(ours_state) == list(theirs_state), text
    reference.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours_state.items()})
    assert repr(net) == repr(reference), text

    rng = np.random.default_rng(len(text))
    k = [1, 2, 5, 7, 13, 31][int(rng.integers(0, 6))]  # tiles are of 6 samples
    batch = [(k,), (k,), (), (2, k)][int(rng.integers(0, 4))]
    xs = [rng.standard_normal((*batch, *graph.shape(i))).astype(graph.dtype) for i in graph.inputs]
    originals = [x.copy() for x in xs]
    tensors = [torch.from_numpy(x.copy()) for x in xs]
    expected, torch_log = _run_with_hooks(reference, tensors, is_torch=True)
    # the largest magnitude anywhere in the graph (nested models included) scales the rounding
    # error an output may carry
    scale = max([1.0, *(m.peak for m in reference.modules() if isinstance(m, GraphModule))])
    _compare(net(*xs), expected, scale, f"fused\n{text}")
    ours, log = _run_with_hooks(net, xs, is_torch=False)
    _compare(ours, expected, scale, f"with hooks\n{text}")
    assert log == torch_log, text
    assert len(log) == 2 * graph.calls(), text

    if graph.layers:  # a forward hook on one layer replaces its output at every call
        target = graph.layers[int(rng.integers(0, len(graph.layers)))].name

        def shift(module: Any, args: Any, output: Any) -> Any:
            return output * 0.5 + 0.25

        with net.get_submodule(target).register_forward_hook(shift):
            ours = net(*xs)
        with reference.get_submodule(target).register_forward_hook(shift), torch.no_grad():
            expected = reference(*tensors)
        scale = max([scale, *(m.peak for m in reference.modules() if isinstance(m, GraphModule))])
        _compare(ours, expected, scale, f"{target}'s output replaced\n{text}")
    for x, original in zip(xs, originals, strict=True):
        np.testing.assert_array_equal(x, original, err_msg=f"an input changed\n{text}")


@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=SEED is None, database=None, phases=PHASES
)
@seed(int(SEED or 0))
@given(graph=graphs())
def test_random_graph_models_match_torch(graph: Graph, tmp_path_factory: pytest.TempPathFactory):
    _check_example(graph, tmp_path_factory.mktemp("graph_property"))


# ---------------------------------------------------------------------------- checks of the generator


def _tiny() -> Graph:
    """x0 -> relu -> linear, with one number: a fixed description for the tests below."""
    x = Node("input", 3, name="x0")
    relu = Layer("relu0", "ReLU", (3,), 3)
    lin = Layer("linear1", "Linear", (3,), 2, bias=False, seed=5)
    h = Node("call", 3, (x,), relu, name="h0")
    out = Node("*", 2, (Node("call", 2, (Node("neg", 3, (h,)),), lin), 2.0))
    return Graph("Outer", [x], [False], [lin, relu], [h], [out, h])


def test_rendering_of_a_fixed_description():
    assert render(_tiny()) == textwrap.dedent(
        """\
        model Outer {
            linear1 = Linear(3, 2, bias=false) { init = uniform(seed=5) }
            relu0 = ReLU()

            forward(x0) {
                h0 = relu0(x0)
                return linear1(-h0) * 2, h0
            }
        }
        """
    )


def test_a_fixed_description_against_torch(tmp_path: Path):
    """The harness on a description written by hand: it compiles, matches torch, and a wrong
    torch twin (another number) is caught, so the property can fail."""
    graph = _tiny()
    _check_example(graph, tmp_path)
    wrong = _tiny()
    wrong.outputs[0].args = (wrong.outputs[0].args[0], 3.0)
    net = compile_text(render(graph), tmp_path).Outer()
    reference = torch_model(wrong)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    x = np.ones((2, 3), np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x))
    with pytest.raises(AssertionError):
        _compare(net(x), expected, 1.0, "wrong")


def test_unused_values_and_layers_warn(tmp_path: Path):
    """A description with an extra layer nobody calls and a statement nobody reads: the checker
    warns about exactly these two, and the model still compiles and matches torch."""
    graph = _tiny()
    spare = Layer("tanh9", "Tanh", (3,), 3)
    graph.layers.append(spare)
    x = graph.inputs[0]
    dead = Node("*", 3, (x, 2.0), name="dead")
    graph.statements.append(dead)
    text = render(graph)
    assert "tanh9 = Tanh()" in text and "dead = x0 * 2" in text
    program = check(syntax.parse(text, "w.lyr"), tmp_path)
    assert sorted(w.message for w in program.warnings) == [
        "'dead' is bound but never used",
        "layer 'tanh9' is never called in forward",
    ]
    lines = text.splitlines()
    for warning in program.warnings:
        word = "tanh9" if "tanh9" in warning.message else "dead"
        assert lines[warning.loc.line - 1].strip().startswith(word), warning


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(graph=graphs())
def test_drawn_descriptions_check_without_warnings(graph: Graph):
    """The generator's side of the property, cheaply and often: every drawn description checks
    (no error, no warning), with the widths it was drawn with, and each statement is used."""
    text = render(graph)
    program = check(syntax.parse(text, "drawn.lyr"), Path("."))
    assert program.warnings == (), text
    (outer,) = [m for m in program.models if m.name == "Outer"]
    assert [tuple(s) for s in outer.in_shapes] == [graph.shape(i) for i in graph.inputs], text
    assert [tuple(s) for s in outer.out_shapes] == [graph.shape(o) for o in graph.outputs], text
