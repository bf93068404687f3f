"""The checker of graph models (spec section 8, layerc/check.py's forward blocks): the spec's
programs check into the IR they mean (every value's shape, the operations of every statement),
shapes are inferred by unification, every error and warning is reported with its message and
location, and `ir.verify` holds the graph invariants."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from layerc import cli, ir
from layerc import syntax as S
from layerc.check import check
from layerc.errors import LayercError, Loc, render

FILE = "m.lyr"
HERE = Path(__file__).resolve().parent

# Section 8's program, verbatim (compared with the spec below when the spec is reachable).
SECTION8 = (Path(__file__).parent / "spec_programs" / "section8.lyr").read_text(encoding="utf-8")

INIT = "{ init = uniform(seed=0) }"
# Section 8's models and one of two inputs and one output, for models that use them.
MODELS = SECTION8[: SECTION8.index("test Pair")] + (
    "model Sum {\n    forward(a: 2, b: 2) {\n        return a + b\n    }\n}\n"
)


def parsed(text: str) -> S.Program:
    return S.parse(textwrap.dedent(text), FILE)


def checked(text: str | S.Program) -> ir.Program:
    """Check `text` (or a tree); the IR must pass the verifier."""
    tree = parsed(text) if isinstance(text, str) else text
    program = check(tree, Path("."))
    ir.verify(program)
    return program


def error(text: str | S.Program) -> LayercError:
    tree = parsed(text) if isinstance(text, str) else text
    with pytest.raises(LayercError) as info:
        check(tree, Path("."))
    return info.value


def model(program: ir.Program, name: str) -> ir.Model:
    (found,) = [m for m in program.models if m.name == name]
    return found


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _operand(operand: ir.Operand) -> str:
    return f"%{operand}" if isinstance(operand, int) else repr(operand.value)


def _op(op: ir.Op) -> str:
    if isinstance(op, ir.Call):
        text = f"{op.child}({', '.join(f'%{a}' for a in op.args)})"
    elif isinstance(op, ir.BinOp):
        text = f"{_operand(op.left)} {op.op} {_operand(op.right)}"
    elif isinstance(op, ir.Neg):
        text = f"-%{op.operand}"
    else:
        text = f"cat({', '.join(f'%{a}' for a in op.args)})"
    return f"%{op.out} = {text} {_shape(op.shape)}"


def graph_text(m: ir.Model) -> list[str]:
    """The graph as lines of SSA text: inputs, each statement's name and operations, the
    return's operations and values."""
    graph = m.graph
    assert graph is not None
    lines = [f"input {i.name} = %{i.value} {_shape(i.shape)}" for i in graph.inputs]
    for statement in graph.body:
        ops = "; ".join(_op(op) for op in statement.ops)
        lines.append(f"{statement.name} = %{statement.value}" + (f": {ops}" if ops else ""))
    ops = "; ".join(_op(op) for op in graph.result.ops)
    values = ", ".join(f"%{v}" for v in graph.outputs)
    lines.append(f"return {values}" + (f": {ops}" if ops else ""))
    return lines


def ops(m: ir.Model) -> list[ir.Op]:
    assert m.graph is not None
    return list(m.graph.ops())


def shapes(m: ir.Model) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    return {child.name: (child.in_shape, child.out_shape) for child in m.layers}


# --------------------------------------------------------------------------- section 8


def test_section_8_copy_is_the_spec() -> None:
    spec = HERE.parent.parent / "shared/spec/language.md"
    if not spec.is_file():
        pytest.skip("the spec is not beside the checkout")
    text = spec.read_text(encoding="utf-8")
    section = text[text.index("\n## 8. ") : text.index("\n## 9. ")]
    assert f"```lyr\n{SECTION8}```" in section


def test_section_8_block_and_net() -> None:
    program = checked(SECTION8)
    assert program.warnings == ()
    block, net = model(program, "Block"), model(program, "Net")
    assert graph_text(block) == [
        "input x = %0 [16]",
        "h = %4: %1 = norm(%0) [16]; %2 = fc1(%1) [64]; %3 = act(%2) [64]; %4 = fc2(%3) [16]",
        "return %5: %5 = %0 + %4 [16]",
    ]
    assert shapes(block) == {
        "norm": ((16,), (16,)),
        "fc1": ((16,), (64,)),
        "act": ((64,), (64,)),
        "fc2": ((64,), (16,)),
    }
    assert (block.in_shape, block.out_shape) == ((16,), (16,))
    assert (block.in_shapes, block.out_shapes) == (((16,),), ((16,),))
    assert graph_text(net) == [
        "input x = %0 [8]",
        "e = %1: %1 = embed(%0) [16]",
        "return %5: %2 = b1(%1) [16]; %3 = b2(%2) [16]; %4 = cat(%1, %3) [32]; %5 = head(%4) [3]",
    ]
    assert shapes(net) == {
        "embed": ((8,), (16,)),
        "b1": ((16,), (16,)),
        "b2": ((16,), (16,)),
        "head": ((32,), (3,)),
    }
    b1, b2 = net.child("b1"), net.child("b2")
    assert isinstance(b1, ir.Submodel) and b1.model is block and b2.model is block
    # the walk over nested models stays in declaration order (state_dict order)
    assert [path for path, _ in ir.walk(net)][:3] == ["embed", "b1.norm", "b1.fc1"]
    assert [path for path, _ in ir.walk(net)][-1] == "head"
    assert [key for key, _ in ir.tensors(net)][:4] == [
        "embed.weight",
        "embed.bias",
        "b1.norm.weight",
        "b1.norm.bias",
    ]


def test_section_8_two_heads_shares_the_relu() -> None:
    two = model(checked(SECTION8), "TwoHeads")
    assert graph_text(two) == [
        "input x = %0 [8]",
        "input mask = %1 [8]",
        "h = %4: %2 = trunk(%0) [8]; %3 = relu(%2) [8]; %4 = %3 * %1 [8]",
        "return %5, %7: %5 = a(%4) [2]; %6 = relu(%4) [8]; %7 = b(%6) [3]",
    ]
    assert (two.in_shapes, two.out_shapes) == (((8,), (8,)), ((2,), (3,)))
    assert (two.in_shape, two.out_shape) == ((8,), (2,))
    graph = two.graph
    assert graph is not None
    assert [call.out for call in graph.calls("relu")] == [3, 6]  # one layer, called twice
    assert shapes(two)["relu"] == ((8,), (8,))
    assert graph.inputs[1] == ir.Input("mask", 1, (8,), Loc(FILE, 31, 16))
    assert graph.body[0].loc == Loc(FILE, 32, 9)
    (mul,) = [op for op in graph.ops() if isinstance(op, ir.BinOp)]
    assert mul.loc == Loc(FILE, 32, 28)  # the operator


def test_section_8_pair_and_its_test_of_tuples() -> None:
    program = checked(SECTION8)
    pair = model(program, "Pair")
    assert graph_text(pair) == [
        "input x = %0 [2]",
        "input y = %1 [2]",
        "h = %2: %2 = fc(%0) [2]",
        "return %3, %4: %3 = %0 + %2 [2]; %4 = %2 * %1 [2]",
    ]
    (test,) = program.tests
    assert test.model is pair and len(test.inputs) == 2 and len(test.expects) == 2
    assert all(a.dtype == np.float32 for a in test.inputs)
    assert all(a.dtype == np.float64 for a in test.expects)
    assert [a.tolist() for a in test.inputs] == [[1, 1], [2, 0]]
    assert [a.tolist() for a in test.expects] == [[4, 8], [6, 0]]
    with pytest.raises(ValueError):
        test.input  # several inputs: `inputs` holds them  # noqa: B018


def test_single_input_tests_keep_one_array() -> None:
    program = checked(
        f"""
        model M {{
            fc = Linear(2, 3) {INIT}
            forward(x) {{
                return fc(x)
            }}
        }}
        test M {{ input = [[1, 2], [3, 4]]; expect = [[0, 0, 0], [0, 0, 0]]; atol = 100 }}
        """
    )
    (test,) = program.tests
    assert test.input.shape == (2, 2) and test.expect.shape == (2, 3)
    assert test.inputs == (test.input,)


def test_pipeline_uses_a_graph_model_as_a_layer() -> None:
    program = checked(
        f"""
        {textwrap.indent(SECTION8, "        ").strip()}

        model Piped {{
            Linear(4, 16) {INIT}
            Block()
            ReLU()
        }}
        """
    )
    piped = model(program, "Piped")
    assert piped.graph is None and (piped.in_shape, piped.out_shape) == ((4,), (16,))
    assert piped.in_shapes == ((4,),) and piped.out_shapes == ((16,),)
    block = piped.layers[1]
    assert isinstance(block, ir.Submodel) and block.model is model(program, "Block")


def test_graph_model_calls_a_pipeline_and_a_graph_model() -> None:
    program = checked(
        f"""
        model Piped {{
            Linear(4, 8) {INIT}
            ReLU()
        }}
        {textwrap.indent(MODELS, "        ").strip()}

        model Outer {{
            p = Piped()
            n = Net()
            sum = Sum()
            forward(x, z) {{
                h = p(x)
                return n(h - 1) * 2, sum(z, z)
            }}
        }}
        """
    )
    outer = model(program, "Outer")
    assert graph_text(outer) == [
        "input x = %0 [4]",
        "input z = %1 [2]",
        "h = %2: %2 = p(%0) [8]",
        "return %5, %6: %3 = %2 - 1.0 [8]; %4 = n(%3) [3]; %5 = %4 * 2.0 [3]; %6 = sum(%1, %1) [2]",
    ]
    assert outer.out_shapes == ((3,), (2,))
    assert shapes(outer) == {"p": ((4,), (8,)), "n": ((8,), (3,)), "sum": ((2,), (2,))}


# --------------------------------------------------------------------------- inference


def forward_model(layers: str, forward: str, extra: str = "") -> str:
    """The models `extra`, then a model M with `layers` and the forward block `forward`: with
    no `extra` and one line of layers, M is on line 1, its layer on line 2, forward on line 4
    and its first statement on line 5, at column 9."""
    return (
        f"{extra}model M {{\n"
        + textwrap.indent(textwrap.dedent(layers).strip(), "    ")
        + "\n\n"
        + textwrap.indent(textwrap.dedent(forward).strip(), "    ")
        + "\n}\n"
    )


def test_an_input_fixed_only_by_a_later_statement() -> None:
    m = model(
        checked(
            forward_model(
                f"relu = ReLU()\nfc = Linear(4, 3) {INIT}",
                """
                forward(x) {
                    a = relu(x)
                    b = relu(a)
                    return fc(b)
                }
                """,
            )
        ),
        "M",
    )
    assert graph_text(m) == [
        "input x = %0 [4]",
        "a = %1: %1 = relu(%0) [4]",
        "b = %2: %2 = relu(%1) [4]",
        "return %3: %3 = fc(%2) [3]",
    ]
    assert shapes(m) == {"relu": ((4,), (4,)), "fc": ((4,), (3,))}


def test_a_value_fixed_by_the_other_operand() -> None:
    m = model(
        checked(
            forward_model(
                "relu = ReLU()\nact = Tanh()",
                """
                forward(x, mask: [2, 5]) {
                    h = act(-relu(x)) * mask
                    return h + x, 2 - h
                }
                """,
            )
        ),
        "M",
    )
    assert graph_text(m) == [
        "input x = %0 [2, 5]",
        "input mask = %1 [2, 5]",
        "h = %5: %2 = relu(%0) [2, 5]; %3 = -%2 [2, 5]; %4 = act(%3) [2, 5]; %5 = %4 * %1 [2, 5]",
        "return %6, %7: %6 = %5 + %0 [2, 5]; %7 = 2.0 - %5 [2, 5]",
    ]


def test_a_value_fixed_by_a_nested_model() -> None:
    m = model(
        checked(
            forward_model(
                "relu = ReLU()\nb = Block()",
                """
                forward(x) {
                    h = relu(x)
                    return b(h)
                }
                """,
                extra=MODELS,
            )
        ),
        "M",
    )
    assert graph_text(m) == [
        "input x = %0 [16]",
        "h = %1: %1 = relu(%0) [16]",
        "return %2: %2 = b(%1) [16]",
    ]


def test_cat_waits_for_its_values_and_joins_the_last_axis() -> None:
    m = model(
        checked(
            forward_model(
                f"f = Linear(2, 1) {INIT}\ng = Linear(3, 1) {INIT}\nid = Identity()",
                """
                forward(a, b, img: [2, 3]) {
                    c = cat(a, b, a)
                    d = cat(img, id(img))
                    return f(a), g(b), c, d
                }
                """,
            )
        ),
        "M",
    )
    assert graph_text(m) == [
        "input a = %0 [2]",
        "input b = %1 [3]",
        "input img = %2 [2, 3]",
        "c = %3: %3 = cat(%0, %1, %0) [7]",
        "d = %5: %4 = id(%2) [2, 3]; %5 = cat(%2, %4) [2, 6]",
        "return %6, %7, %3, %5: %6 = f(%0) [1]; %7 = g(%1) [1]",
    ]


def test_flatten_takes_an_annotated_image() -> None:
    m = model(
        checked(
            forward_model(
                f"flat = Flatten()\nfc = Linear(784, 10) {INIT}",
                "forward(img: [1, 28, 28]) {\n    return fc(flat(img))\n}",
            )
        ),
        "M",
    )
    assert shapes(m) == {"flat": ((1, 28, 28), (784,)), "fc": ((784,), (10,))}
    assert m.in_shape == (1, 28, 28)


def test_numbers_fold_and_names_alias() -> None:
    m = model(
        checked(
            forward_model(
                "",
                """
                forward(x: 3) {
                    a = x * -2
                    b = 2 * (1 - 0.5) * x
                    c = a
                    return -(b + c), c
                }
                """,
            )
        ),
        "M",
    )
    assert graph_text(m) == [
        "input x = %0 [3]",
        "a = %1: %1 = %0 * -2.0 [3]",
        "b = %2: %2 = 1.0 * %0 [3]",
        "c = %1",
        "return %4, %1: %3 = %2 + %1 [3]; %4 = -%3 [3]",
    ]
    assert m.layers == ()


def test_a_linear_fixes_a_multi_axis_value_it_is_given() -> None:
    m = model(
        checked(
            forward_model(
                f"fc = Linear(4, 3) {INIT}\nnorm = LayerNorm(4)",
                "forward(x: [2, 4]) {\n    return fc(norm(x))\n}",
            )
        ),
        "M",
    )
    assert shapes(m) == {"fc": ((2, 4), (2, 3)), "norm": ((2, 4), (2, 4))}


def test_layers_never_called_get_a_shape_and_a_warning() -> None:
    program = checked(
        forward_model(
            f"fc = Linear(4, 3) {INIT}\nrelu = ReLU()\nnorm = LayerNorm([2, 3])\nsm = Softmax()",
            """
            forward(x: 5, y: 2) {
                unused = x * 2
                twice = unused
                return x
            }
            """,
        )
    )
    m = model(program, "M")
    assert shapes(m) == {
        "fc": ((4,), (3,)),
        "relu": ((1,), (1,)),
        "norm": ((2, 3), (2, 3)),
        "sm": ((1,), (1,)),
    }
    assert [(str(w.loc), w.message) for w in program.warnings] == [
        ("m.lyr:2:5", "layer 'fc' is never called in forward"),
        ("m.lyr:3:5", "layer 'relu' is never called in forward"),
        ("m.lyr:4:5", "layer 'norm' is never called in forward"),
        ("m.lyr:5:5", "layer 'sm' is never called in forward"),
        ("m.lyr:7:19", "input 'y' is never used"),
        ("m.lyr:9:9", "'twice' is bound but never used"),
    ]
    assert str(program.warnings[0]) == "m.lyr:2:5: warning: layer 'fc' is never called in forward"


def test_a_long_chain_of_statements_checks_quickly() -> None:
    statements = "\n".join(f"h{i} = relu(h{i - 1}) + h{i - 1}" for i in range(1, 3000))
    m = model(
        checked(
            forward_model(
                f"relu = ReLU()\nfc = Linear(4, 2) {INIT}",
                f"forward(h0) {{\n{statements}\nreturn fc(h2999)\n}}",
            )
        ),
        "M",
    )
    assert m.in_shape == (4,) and len(ops(m)) == 2 * 2999 + 1


def test_no_tree_is_too_deep_for_the_checker() -> None:
    """A tree built without the parser (which has its own limit) gets a located error, never
    a RecursionError."""
    tree = parsed(forward_model("relu = ReLU()", "forward(x: 4) {\n    return relu(x)\n}"))
    (m,) = tree.items
    assert isinstance(m, S.ModelDef) and m.forward is not None
    expr: S.Expr = S.Ref("x", Loc(FILE, 1, 1))
    for depth in range(1, 20_001):
        expr = S.Neg(expr, Loc(FILE, 2, depth))
    result = dataclasses.replace(m.forward.result, values=(expr,))
    deep = dataclasses.replace(m, forward=dataclasses.replace(m.forward, result=result))
    e = error(dataclasses.replace(tree, items=(deep,)))
    assert "this expression nests operations more than 100 deep" in e.message
    assert e.loc == Loc(FILE, 2, 20_000 - 100)


# --------------------------------------------------------------------------- errors


def case(
    layers: str, forward: str, where: tuple[int, int], message: str, id: str, models: bool = False
) -> object:
    """An error case: model M of `layers` and `forward` (after MODELS with `models`), the
    error's line and column counted from M's first line, and a fragment of its message."""
    return pytest.param(layers.replace("{INIT}", INIT), forward, models, where, message, id=id)


def forward_of(*lines: str, inputs: str = "x: 2") -> str:
    return f"forward({inputs}) {{\n" + "".join(f"    {line}\n" for line in lines) + "}"


FC = "fc = Linear(4, 3) {INIT}"
RELU = "relu = ReLU()"

GRAPH_ERRORS = [
    # names
    case(FC, forward_of("h = fc(x)", "return hh", inputs="x"), (6, 16),
         "unknown name 'hh'; did you mean 'h'?", "unknown-name"),
    case(RELU, forward_of("a = relu(h)", "h = relu(x)", "return a"), (5, 18),
         "'h' is used before it is bound (line 6)", "used-before-bound"),
    case(RELU, forward_of("h = relu(h)", "return h"), (5, 18),
         "'h' is used before it is bound (line 5)", "used-in-its-own-binding"),
    case(RELU, forward_of("h = relu(x)", "h = x", "return h"), (6, 9),
         "'h' is already bound (line 5); each name is bound once", "rebinding"),
    case(RELU, forward_of("x = relu(x)", "return x"), (5, 9),
         "'x' is an input of forward; each name is bound once", "binding-an-input"),
    case(RELU, forward_of("relu = relu(x)", "return relu"), (5, 9),
         "'relu' is a layer of model 'M'; a value cannot take its name", "binding-a-layer-name"),
    case(RELU, forward_of("return relu", inputs="relu: 2"), (4, 13),
         "input 'relu' has the name of a layer of model 'M'; give it another name",
         "input-named-as-a-layer"),
    case(RELU, forward_of("return relu(x)", inputs="x: 2, x: 2"), (4, 19),
         "input 'x' is given twice", "input-twice"),
    case(RELU, forward_of("return relu"), (5, 16),
         "'relu' is a layer of model 'M', not a value: call it, as in relu(x)",
         "a-layer-used-as-a-value"),
    # calls
    case(RELU, forward_of("h = relu(x)", "return h(x)"), (6, 16),
         "'h' is a value, not a layer: forward calls the layers of model 'M' and cat",
         "calling-a-value"),
    case(RELU, forward_of("return ReLU(x)"), (5, 16),
         "ReLU is a layer kind, not a layer of model 'M': declare one in the model (such as "
         "relu = ReLU(...)) and call it by its name", "calling-a-kind"),
    case(RELU, forward_of("return Sum(x, x)"), (5, 16),
         "'Sum' is a model, not a layer of model 'M': declare it in the model (such as "
         "sum = Sum()) and call it by its name", "calling-a-model", models=True),
    case(RELU, forward_of("return rleu(x)"), (5, 16),
         "unknown layer 'rleu' in model 'M'; did you mean 'relu'?", "unknown-layer"),
    case(RELU, forward_of("return relu(x, x)"), (5, 16),
         "layer 'relu' takes one argument, but 2 are given", "layer-two-arguments"),
    case("s = Sum()", forward_of("return s(x)"), (5, 16),
         "layer 's' (model 'Sum') takes 2 arguments (a, b), but 1 is given",
         "nested-model-argument-count", models=True),
    case(RELU, forward_of("return relu(cat(x))"), (5, 21),
         "cat takes at least two values, but 1 is given", "cat-one-value"),
    case("t = TwoHeads()", forward_of("h = t(x, x)", "return h", inputs="x: 8"), (5, 13),
         "layer 't' (model 'TwoHeads') returns 2 values, but a call gives one value: a model "
         "with several outputs cannot be called from another's forward",
         "nested-model-of-two-outputs", models=True),
    case(RELU, forward_of("return relu(3)"), (5, 21),
         "relu takes values, not numbers", "call-with-a-number"),
    case(RELU, forward_of("return cat(x, 1)"), (5, 23),
         "cat takes values, not numbers", "cat-with-a-number"),
    # shapes
    case(FC, forward_of("h = fc(x)", "return h + y", inputs="x, y: 5"), (6, 18),
         "shape mismatch in model 'M': '+' needs two values of one shape, but 'h' gives 3 and "
         "input 'y' gives 5", "size-mismatch-in-plus"),
    case(FC, forward_of("return y * fc(x)", inputs="x, y: [2, 3]"), (5, 18),
         "shape mismatch in model 'M': '*' needs two values of one shape, but input 'y' gives "
         "shape (2, 3) and fc(...) gives 3", "size-mismatch-in-times"),
    case(FC, forward_of("return fc(x) - (x - 1)", inputs="x"), (5, 22),
         "shape mismatch in model 'M': '-' needs two values of one shape, but fc(...) gives 3 "
         "and the right side gives 4", "size-mismatch-in-minus"),
    case(RELU, forward_of("return cat(a, relu(b))", inputs="a: [2, 3], b: [3, 3]"), (5, 16),
         "shape mismatch in model 'M': cat joins values along their last axis, so their other "
         "axes must agree, but input 'a' gives shape (2, 3) and relu(...) gives shape (3, 3)",
         "cat-other-axes"),
    case(FC, forward_of("return fc(y)", inputs="x: 2, y: 5"), (5, 16),
         "shape mismatch in model 'M': layer 'fc' (line 2) expects 4 input features, but input "
         "'y' gives 5", "layer-call-mismatch"),
    case("b = Block()", forward_of("return b(x)", inputs="x: 8"), (5, 16),
         "shape mismatch in model 'M': layer 'b' (model 'Block') expects 16 input features, but "
         "input 'x' gives 8", "nested-model-mismatch", models=True),
    case("s = Sum()\nfc = Linear(2, 3) {INIT}", forward_of("return s(x, fc(x))", inputs="x"),
         (6, 16),
         "shape mismatch in model 'M': layer 's' (model 'Sum') expects 2 input features for its "
         "input 'b', but fc(...) gives 3", "nested-model-second-input", models=True),
    case(RELU, forward_of("a = relu(x)", "b = relu(y)", "return a, b", inputs="x: 3, y: 4"),
         (6, 13),
         "shape mismatch in model 'M': layer 'relu' is called on 4 features here but on 3 "
         "features at line 5; a layer is compiled for one input shape, so declare another layer "
         "for this call", "layer-called-with-two-shapes"),
    case(f"{RELU}\n{FC}",
         forward_of("a = relu(x)", "b = fc(x)", "return x + y, a, b", inputs="x, y: 5"),
         (8, 18),
         "shape mismatch in model 'M': '+' needs two values of one shape, but input 'x' gives 4 "
         "(fixed at line 7) and input 'y' gives 5", "the-line-that-fixed-a-shape"),
    case("flat = Flatten()",
         forward_of("h = flat(x)", "a = h + y", "b = x + img", "return a, b",
                    inputs="x, y: 5, img: [2, 3]"),
         (5, 13),
         "shape mismatch in model 'M': layer 'flat' gives 6 here, but its result is used as 5",
         "layer-result-fixed-before-its-input"),
    case("b = Block()\nfc = Linear(8, 4) {INIT}",
         forward_of("h = b(x)", "return fc(x)", inputs="x"),
         (7, 16),
         "expects 8 input features, but input 'x' gives 16 (fixed at line ",
         "fixed-by-a-nested-model", models=True),
    # numbers
    case(RELU, forward_of("return 2"), (5, 16),
         "return gives a number: forward returns values computed from its inputs",
         "return-a-number"),
    case(RELU, forward_of("h = 2 * 3", "return relu(x)"), (5, 9),
         "'h' would be the number 6.0: a statement binds a value computed from forward's "
         "inputs, so write the number where it is used", "bind-a-number"),
    case(RELU, forward_of("return x * 16777217"), (5, 20),
         "number = 16777217 is not exactly representable in float32", "number-not-in-float32"),
    case(RELU, forward_of("return x * (1e30 * 1e30)"), (5, 26),
         "which overflows float32", "folded-number-overflows"),
    # inputs and layers
    case(RELU, forward_of("return relu(x)", inputs="x"), (4, 13),
         "no layer or operation fixes the shape of input 'x': annotate it, as in forward(x: 8, "
         "or x: [1, 28, 28])", "unknown-shape"),
    case(FC, forward_of("return fc(x)", inputs="x, y"), (4, 16),
         "input 'y' is never used, so nothing fixes its shape: remove it, or annotate it (y: 8, "
         "or y: [1, 28, 28])", "unused-input-without-shape"),
    case(FC, forward_of("return fc(x)", inputs="x: [2, 0]"), (4, 16),
         "the shape of input 'x' must be of integers from 1 to 16777216", "annotation-zero"),
    case("Linear(2, 2) {INIT}", forward_of("return x"), (2, 5),
         "the layers of model 'M' need names, as forward calls them by name: write NAME = "
         "Linear(...)", "unnamed-layer"),
    case("cat = ReLU()", forward_of("return x"), (2, 5),
         "a layer of a model with forward cannot be named 'cat': cat(a, b) is the built-in "
         "concatenation", "layer-named-cat"),
    case("flat = Flatten()", forward_of("return x"), (2, 5),
         "layer 'flat' is never called in forward, so nothing gives it an input shape: call it, "
         "or remove it", "flatten-never-called"),
]  # fmt: skip


@pytest.mark.parametrize(("layers", "forward", "models", "where", "message"), GRAPH_ERRORS)
def test_graph_error_message_and_location(
    layers: str, forward: str, models: bool, where: tuple[int, int], message: str
) -> None:
    extra = MODELS if models else ""
    e = error(forward_model(layers, forward, extra))
    assert message in e.message
    assert e.loc is not None
    assert (e.loc.line - extra.count("\n"), e.loc.col) == where, str(e)


def test_the_input_option_is_refused_on_a_graph_model() -> None:
    e = error(
        "model M(input=[3]) {\n    relu = ReLU()\n    forward(x) {\n        return relu(x)\n"
        "    }\n}\n"
    )
    assert e.message == (
        "model 'M' has a forward block: give the shapes of its inputs there, as in "
        "forward(img: [1, 28, 28]), not as the option input"
    )
    assert e.loc == Loc(FILE, 1, 9)


def test_a_pipeline_cannot_use_a_model_of_several_inputs_or_outputs() -> None:
    for name, message in (
        ("Pair", "model 'Pair' takes 2 inputs, but a layer of a pipeline takes one value"),
        ("TwoHeads", "model 'TwoHeads' takes 2 inputs"),
    ):
        e = error(SECTION8 + f"model P {{\n    {name}()\n}}\n")
        assert message in e.message and e.loc == Loc(FILE, SECTION8.count("\n") + 2, 5)
    one_in_two_out = (
        "model Two {\n    fc = Linear(2, 2) { init = uniform(seed=0) }\n    forward(x) {\n"
        "        return fc(x), x\n    }\n}\nmodel P {\n    Two()\n}\n"
    )
    e = error(one_in_two_out)
    assert "model 'Two' returns 2 values, but a layer of a pipeline" in e.message
    assert e.loc == Loc(FILE, 8, 5)


# --------------------------------------------------------------------------- test blocks

# (the entries of a test of Pair, where the error points in them, a fragment of its message)
TEST_ERRORS = [
    (
        "input = [1, 1]; expect = ([4, 8], [6, 0])",
        "[1, 1]",
        "model 'Pair' has 2 inputs: write input = (..., ...), one value for each, in forward's "
        "order",
    ),
    (
        "input = ([1, 1],); expect = ([4, 8], [6, 0])",
        "([1, 1],)",
        "model 'Pair' has 2 inputs, but input gives 1 value",
    ),
    (
        "input = ([1, 1], [2, 0], [3, 3]); expect = ([4, 8], [6, 0])",
        "([1, 1]",
        "model 'Pair' has 2 inputs, but input gives 3 values",
    ),
    (
        "input = ([1, 1], [2, 0, 1]); expect = ([4, 8], [6, 0])",
        "[2, 0, 1]",
        "input 'y' has shape (3,) but the model takes (2,) or (N, 2)",
    ),
    (
        "input = ([1, 1], [2, 0]); expect = ([4, 8], [6])",
        "[6]",
        "expect[1] has shape (1,) but the model gives (2,) or (N, 2)",
    ),
    (
        "input = ([1, 1], [[2, 0]]); expect = ([4, 8], [6, 0])",
        "[[2, 0]]",
        "input 'x' has (2,) but input 'y' has (1, 2): they must hold the same number of samples",
    ),
    (
        "input = ([[1, 1]], [[2, 0]]); expect = ([[4, 8]], [6, 0])",
        "[6, 0]",
        "input 'x' has (1, 2) but expect[1] has (2,): they must hold the same number of samples",
    ),
    (
        "input = ([1, 1], [2, 0]); expect = [4, 8]",
        "[4, 8]",
        "model 'Pair' has 2 outputs: write expect = (..., ...)",
    ),
]


@pytest.mark.parametrize(("entries", "at", "message"), TEST_ERRORS)
def test_test_of_tuples_errors(entries: str, at: str, message: str) -> None:
    text = SECTION8[: SECTION8.index("test Pair")] + f"test Pair {{\n    {entries}\n}}\n"
    e = error(text)
    assert message in e.message
    assert e.loc == Loc(FILE, text.count("\n") - 1, 5 + entries.index(at)), str(e)


def test_a_batch_test_of_tuples() -> None:
    text = SECTION8[: SECTION8.index("test Pair")] + (
        "test Pair {\n    input = ([[1, 1], [0, 0]], [[2, 0], [1, 1]])\n"
        "    expect = ([[4, 8], [0, 0]], [[6, 0], [0, 0]])\n}\n"
    )
    (test,) = checked(text).tests
    assert [a.shape for a in (*test.inputs, *test.expects)] == [(2, 2)] * 4


def test_a_tuple_for_a_model_of_one_input_is_an_error() -> None:
    e = error(
        SECTION8[: SECTION8.index("test Pair")]
        + "test Block {\n    input = ([1], [2]); expect = [1]\n}\n"
    )
    assert e.message == "model 'Block' has one input: write input = [...] without parentheses"


def test_a_tuple_as_a_weight_is_an_error() -> None:
    """The grammar has tuples only in tests; a tree built otherwise is refused by the checker."""
    tree = parsed("model M {\n    fc = Linear(2, 1) { weight = [[1, 2]] }\n}\n")
    (m,) = tree.items
    assert isinstance(m, S.ModelDef)
    (layer,) = m.layers
    assert layer.entries is not None
    (entry,) = layer.entries
    pair = S.TupleLit((entry.value, entry.value), Loc(FILE, 2, 34))  # type: ignore[arg-type]
    layer = dataclasses.replace(layer, entries=(dataclasses.replace(entry, value=pair),))
    e = error(dataclasses.replace(tree, items=(dataclasses.replace(m, layers=(layer,)),)))
    assert "weight must be a number or a list of numbers; a tuple (a, b) is only for" in e.message
    assert e.loc == Loc(FILE, 2, 34)


# --------------------------------------------------------------------------- warnings


def test_warnings_of_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "w.lyr"
    source.write_text(
        "model M {\n    fc = Linear(4, 3) { init = uniform(seed=0) }\n    drop = Dropout()\n\n"
        "    forward(x, y: 3) {\n        h = fc(x)\n        unused = h * 2\n"
        "        return h + y\n    }\n}\n",
        encoding="utf-8",
    )
    assert cli.main(["check", str(source)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{source}: ok: M (4, 3 -> 3); 0 test(s)\n"
    assert err == (
        f"{source}:3:5: warning: layer 'drop' is never called in forward\n"
        "        drop = Dropout()\n"
        "        ^\n"
        f"{source}:7:9: warning: 'unused' is bound but never used\n"
        "            unused = h * 2\n"
        "            ^\n"
    )


def test_pipelines_have_no_warnings() -> None:
    program = checked(f"model M {{ Linear(2, 3) {INIT} ReLU() }}\n")
    assert program.warnings == () and program.models[0].graph is None


# --------------------------------------------------------------------------- later stages


# --------------------------------------------------------------------------- the verifier


def test_verifier_holds_the_graph_invariants() -> None:
    program = checked(SECTION8)
    pair = model(program, "Pair")
    graph = pair.graph
    assert graph is not None
    (statement,) = graph.body
    (call,) = statement.ops
    add, mul = graph.result.ops

    def broken(**changes: object) -> ir.Program:
        return ir.Program(FILE, (dataclasses.replace(pair, **changes),))

    def with_graph(**changes: object) -> ir.Program:
        return broken(graph=dataclasses.replace(graph, **changes))

    def with_body_ops(*ops: ir.Op) -> ir.Program:
        return with_graph(body=(dataclasses.replace(statement, ops=ops),))

    def with_result_ops(*ops: ir.Op) -> ir.Program:
        return with_graph(result=dataclasses.replace(graph.result, ops=ops))

    cases = {
        "uses a value not yet defined": with_body_ops(dataclasses.replace(call, args=(7,))),
        "defines value 1 again": with_body_ops(dataclasses.replace(call, out=1)),
        "fc takes": with_body_ops(dataclasses.replace(call, args=(1,), shape=(3,))),
        "calls unknown child": with_body_ops(dataclasses.replace(call, child="nope")),
        "shape (3,) != (2,)": with_result_ops(dataclasses.replace(add, shape=(3,)), mul),
        "/ of": with_result_ops(dataclasses.replace(add, op="/"), mul),
        "not finite": with_result_ops(dataclasses.replace(add, right=ir.Const(float("inf"))), mul),
        "binds 'h' again": with_graph(body=(statement, dataclasses.replace(statement, ops=()))),
        "binds 'x' again": with_graph(body=(dataclasses.replace(statement, name="x"),)),
        "not its root": with_graph(body=(dataclasses.replace(statement, value=0),)),
        "value 5 is read 0 times": with_result_ops(add, mul, dataclasses.replace(mul, out=5)),
        "value 3 is read 2 times": with_result_ops(
            add, dataclasses.replace(mul, out=4, left=3, right=3, op="+")
        ),
        "outputs": with_graph(result=dataclasses.replace(graph.result, values=(9,))),
        "in_shape": broken(in_shape=(3,)),
        "cat of": with_result_ops(ir.Cat(3, (0,), (2,), add.loc), mul),
        "shape (5,)": with_result_ops(ir.Cat(3, (0, 1), (5,), add.loc), mul),
    }
    for message, program_ in cases.items():
        with pytest.raises(ir.IRError, match=re.escape(message)):
            ir.verify(program_)
    wider = with_result_ops(ir.Cat(3, (0, 1), (4,), add.loc), mul)
    with pytest.raises(ir.IRError, match="out_shape"):  # the first output is now 4 wide
        ir.verify(wider)


def test_verifier_holds_tests_to_their_model() -> None:
    program = checked(SECTION8)
    (test,) = program.tests
    for changes, message in (
        ({"inputs": test.inputs[:1]}, "1 inputs, 2 outputs"),
        ({"inputs": (test.inputs[0], test.inputs[1][None])}, "batches"),
        ({"expects": (test.expects[0], test.expects[1][:1])}, "test array of shape (1,)"),
    ):
        broken = dataclasses.replace(test, **changes)
        with pytest.raises(ir.IRError, match=re.escape(message)):
            ir.verify(dataclasses.replace(program, tests=(broken,)))


def test_a_warning_renders_as_an_error_does() -> None:
    text = "model M {\n    drop = Dropout()\n    forward(x: 2) {\n        return x\n    }\n}\n"
    (warning,) = checked(text).warnings
    assert render(warning, text) == (
        "m.lyr:2:5: warning: layer 'drop' is never called in forward\n"
        "        drop = Dropout()\n"
        "        ^"
    )
    coloured = render(warning, text, colour=True)
    assert coloured.startswith("\x1b[1mm.lyr:2:5: warning:\x1b[0m \x1b[1;35mlayer 'drop'")
