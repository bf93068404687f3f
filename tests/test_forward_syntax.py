"""Graph models' front end (spec section 8): forward blocks and test tuples parse into the
expected located nodes; expressions parse as Python parses them (checked against Python's own
`ast` on random expressions); syntax errors in forward blocks are located; the printer writes them
canonically and fmt keeps their meaning and comments; deep or very long expressions are refused or
handled in bounded time, with no RecursionError in the parser, the tree builder or the printer.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fmt import ROOT, comment_texts, gaps, syntax_shape
from test_spec_programs import spec_path

from layerc import syntax as S
from layerc.cli import main
from layerc.errors import LayercError, Loc
from layerc.printer import print_program
from layerc.tools.fmt import format_source

FILE = "g.lyr"

# The .lyr program of the spec's section 8, verbatim (the copy test_spec_programs.py checks).
SECTION_8 = (Path(__file__).parent / "spec_programs" / "section8.lyr").read_text(encoding="utf-8")


def parse(text: str) -> S.Program:
    return S.parse(text, FILE)


def parse_error(text: str) -> LayercError:
    with pytest.raises(LayercError) as info:
        parse(text)
    return info.value


def at(line: int, col: int) -> Loc:
    return Loc(FILE, line, col)


def models(text: str) -> dict[str, S.ModelDef]:
    return {m.name: m for m in parse(text).items if isinstance(m, S.ModelDef)}


def forward_of(body: str, inputs: str = "x") -> S.ForwardDef:
    """The forward block of a model whose forward has `inputs` and the statements `body`."""
    (model,) = parse(f"model M {{\n    forward({inputs}) {{\n{body}\n    }}\n}}\n").items
    assert isinstance(model, S.ModelDef) and model.forward is not None
    return model.forward


def returned(expression: str) -> S.Expr:
    (value,) = forward_of(f"return {expression}").result.values
    return value


# --------------------------------------------------------------------------- section 8


def _spec_section_8() -> str | None:
    """The ```lyr program of the spec's section 8, when the spec is reachable."""
    path = spec_path()
    if path is None:
        return None
    text = path.read_text(encoding="utf-8")
    block = re.search(r"^```lyr\n(.*?)^```", text[text.index("## 8.") :], re.M | re.S)
    assert block is not None, "section 8 has its program"
    return block.group(1)


def test_the_copy_is_the_spec_program() -> None:
    spec = _spec_section_8()
    if spec is None:
        pytest.skip("the spec is not beside the checkout")
    assert spec == SECTION_8


def test_section_8_parses_into_located_nodes() -> None:
    program = parse(SECTION_8)
    block, net, heads, pair, test = program.items
    assert isinstance(block, S.ModelDef) and block.forward is not None
    assert [layer.name for layer in block.layers] == ["norm", "fc1", "act", "fc2"]
    forward = block.forward
    assert forward.loc == at(7, 5)
    assert forward.inputs == (S.Input("x", None, at(7, 13)),)
    (h,) = forward.body
    x = S.Ref("x", at(8, 30))
    assert h == S.Assign(
        "h",
        S.Apply(
            "fc2",
            (
                S.Apply(
                    "act",
                    (S.Apply("fc1", (S.Apply("norm", (x,), at(8, 25)),), at(8, 21)),),
                    at(8, 17),
                ),
            ),
            at(8, 13),
        ),
        at(8, 9),
    )
    assert forward.result == S.Return(
        (S.BinOp("+", S.Ref("x", at(9, 16)), S.Ref("h", at(9, 20)), at(9, 18)),), at(9, 9)
    )

    assert isinstance(net, S.ModelDef) and net.forward is not None
    (e,) = net.forward.body
    assert e == S.Assign("e", S.Apply("embed", (S.Ref("x", at(20, 19)),), at(20, 13)), at(20, 9))
    (head,) = net.forward.result.values
    assert isinstance(head, S.Apply) and head.callee == "head"
    (cat,) = head.args
    assert isinstance(cat, S.Apply) and (cat.callee, cat.loc) == ("cat", at(21, 21))
    assert [type(a).__name__ for a in cat.args] == ["Ref", "Apply"]

    assert isinstance(heads, S.ModelDef) and heads.forward is not None
    assert heads.forward.inputs == (
        S.Input("x", None, at(31, 13)),
        S.Input("mask", (8,), at(31, 16), at(31, 22)),
    )
    (h,) = heads.forward.body
    assert isinstance(h.value, S.BinOp) and (h.value.op, h.value.loc) == ("*", at(32, 28))
    assert isinstance(h.value.right, S.Ref) and h.value.right.name == "mask"
    first, second = heads.forward.result.values
    assert (first.loc, second.loc) == (at(33, 16), at(33, 22))

    assert isinstance(pair, S.ModelDef) and pair.forward is not None
    assert pair.forward.inputs[1] == S.Input("y", (2,), at(40, 16), at(40, 19))
    assert [v.op for v in pair.forward.result.values if isinstance(v, S.BinOp)] == ["+", "*"]

    assert isinstance(test, S.TestDef)
    given_input, expect = test.entries
    assert isinstance(given_input.value, S.TupleLit) and given_input.value.loc == at(47, 13)
    assert [item.loc for item in given_input.value.items] == [at(47, 14), at(47, 22)]
    assert [[n.value for n in item.items] for item in given_input.value.items] == [[1, 1], [2, 0]]
    assert isinstance(expect.value, S.TupleLit) and len(expect.value.items) == 2


def test_section_8_prints_its_forward_blocks_and_tests_as_the_spec_writes_them() -> None:
    """The layers' blocks `{ init = ... }` are written one entry per line (the printer's layout
    for every block); everything else is as the spec has it."""
    printed = format_source(SECTION_8)
    assert print_program(parse(SECTION_8)) == printed
    for chunk in re.findall(r"\n(    forward.*?\n    }\n)", SECTION_8, re.S):
        assert chunk in printed
    assert SECTION_8[SECTION_8.index("test Pair") :] in printed
    assert (
        "    fc2 = Linear(64, 16) {\n        init = uniform(seed=1)\n    }\n\n    forward"
        in printed
    )
    assert_round_trips(SECTION_8)


def test_a_model_without_forward_is_a_pipeline() -> None:
    assert models("model M { ReLU }")["M"].forward is None


def test_forward_without_layers_and_optional_semicolons() -> None:
    forward = forward_of("h = x; g = h;\n return h, g;", "x,")
    assert [s.name for s in forward.body] == ["h", "g"]
    assert len(forward.result.values) == 2


def test_annotations() -> None:
    forward = forward_of("return x", "x, mask: 8, img: [1, 28, 28], v: [ 3 , ], big: 00012")
    assert [(i.name, i.shape) for i in forward.inputs] == [
        ("x", None),
        ("mask", (8,)),
        ("img", (1, 28, 28)),
        ("v", (3,)),
        ("big", (12,)),
    ]
    assert [i.shape_loc for i in forward.inputs] == [
        None,
        at(2, 22),
        at(2, 30),
        at(2, 46),
        at(2, 60),
    ]


# --------------------------------------------------------------------------- expressions


def shape(node: S.Expr) -> tuple:
    """An expression's structure, numbers by value."""
    if isinstance(node, S.Ref):
        return ("name", node.name)
    if isinstance(node, S.Num):
        return ("num", float(node.text))
    if isinstance(node, S.Neg):
        return ("neg", shape(node.operand))
    if isinstance(node, S.BinOp):
        return ("bin", node.op, shape(node.left), shape(node.right))
    assert isinstance(node, S.Apply)
    return ("call", node.callee, tuple(shape(a) for a in node.args))


_PY_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}


def python_shape(node: ast.expr) -> tuple:
    """The same structure, of Python's own tree."""
    if isinstance(node, ast.Name):
        return ("name", node.id)
    if isinstance(node, ast.Constant):
        return ("num", float(node.value))
    if isinstance(node, ast.UnaryOp):
        assert isinstance(node.op, ast.USub)
        return ("neg", python_shape(node.operand))
    if isinstance(node, ast.BinOp):
        return ("bin", _PY_OPS[type(node.op)], python_shape(node.left), python_shape(node.right))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return ("call", node.func.id, tuple(python_shape(a) for a in node.args))


def python_parse(expression: str) -> ast.expr:
    return ast.parse(expression, mode="eval").body


@pytest.mark.parametrize(
    "expression",
    [
        "x -1",
        "x - 1",
        "x-1",
        "x- 1",
        "2*-x",
        "-x*3",
        "x+-1",
        "x - -1",
        "x--1",
        "--x",
        "- -1",
        "-1",
        "- 1",
        "-(x)",
        "-(x + 1)",
        "1-2",
        "1e-3-x",
        "2.-x",
        ".5*x",
        "a + b * c",
        "(a + b) * c",
        "a - b - c",
        "a - (b - c)",
        "a * b * c",
        "a * (b * c)",
        "-a * b",
        "a * -b + -c",
        "f(a, g(b, c), -d)",
        "cat(a, b, c)",
        "f()",
        "f(x,)",
        "(((x)))",
    ],
)
def test_expressions_parse_as_python_parses_them(expression: str) -> None:
    assert shape(returned(expression)) == python_shape(python_parse(expression))


def test_a_sign_is_read_apart_from_its_number_where_an_operand_stood() -> None:
    """`x -1` is `x - 1`; a number's '-' is a unary minus located at the sign, the number just
    after it; a '+' sign stays part of the number."""
    value = returned("x -1")
    assert value == S.BinOp("-", S.Ref("x", at(3, 8)), S.Num("1", at(3, 11)), at(3, 10))
    assert returned("-1") == S.Neg(S.Num("1", at(3, 9)), at(3, 8))
    assert returned("x * +2") == S.BinOp(
        "*", S.Ref("x", at(3, 8)), S.Num("+2", at(3, 12)), at(3, 10)
    )
    assert returned("x * +2").right.value == 2.0


def test_locations_of_each_node() -> None:
    """A node's location is where it starts, a BinOp's its operator's."""
    forward = forward_of("    h = -(a +\n  b) * f(c)\n    return h")
    (h,) = forward.body
    assert h.loc == at(3, 5)
    product = h.value
    assert isinstance(product, S.BinOp) and product.loc == at(4, 6)
    neg = product.left
    assert isinstance(neg, S.Neg) and neg.loc == at(3, 9)
    assert isinstance(neg.operand, S.BinOp) and neg.operand.loc == at(3, 13)
    assert product.right == S.Apply("f", (S.Ref("c", at(4, 10)),), at(4, 8))
    assert forward.result.loc == at(5, 5)


_NAMES = ["x", "y", "h", "fc", "a1", "_b", "returns", "forwarded", "inf", "nan", "cat"]
_NUMS = ["0", "1", "2", "2.5", "10", "1e-3", "3.", ".5", "4E+2", "0.0"]


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> tuple:
    """A random expression tree (as `shape` writes one)."""
    choice = draw(st.integers(0, 6)) if depth < 4 else draw(st.integers(0, 1))
    if choice == 0:
        return ("name", draw(st.sampled_from(_NAMES)))
    if choice == 1:
        return ("num", draw(st.sampled_from(_NUMS)))
    if choice in (2, 3):
        op = draw(st.sampled_from(["+", "-", "*"]))
        return ("bin", op, draw(expressions(depth + 1)), draw(expressions(depth + 1)))
    if choice == 4:
        return ("neg", draw(expressions(depth + 1)))
    args = draw(st.lists(expressions(depth + 1), min_size=1, max_size=3))
    return ("call", draw(st.sampled_from(_NAMES)), tuple(args))


_LEVEL = {"+": 1, "-": 1, "*": 2}


def _level(node: tuple) -> int:
    return {"bin": 0, "neg": 3}.get(node[0], 4) or _LEVEL[node[1]]


def render(draw: st.DrawFn, node: tuple) -> list[str]:
    """Tokens of `node`, with the parentheses precedence needs and now and then more."""

    def wrapped(child: tuple, needed: bool) -> list[str]:
        tokens = render(draw, child)
        if needed or draw(st.integers(0, 5)) == 0:
            return ["(", *tokens, ")"]
        return tokens

    kind = node[0]
    if kind in ("name", "num"):
        return [node[1]]
    if kind == "neg":
        return ["-", *wrapped(node[1], _level(node[1]) < 3)]
    if kind == "bin":
        level = _LEVEL[node[1]]
        left = wrapped(node[2], _level(node[2]) < level)
        return [*left, node[1], *wrapped(node[3], _level(node[3]) <= level)]
    tokens = [node[1], "("]
    for i, arg in enumerate(node[2]):
        tokens += ([","] if i else []) + wrapped(arg, False)
    return [*tokens, ")"]


def join(draw: st.DrawFn, tokens: list[str], gap: st.SearchStrategy[str]) -> str:
    parts = [tokens[0]]
    for token in tokens[1:]:
        parts += [draw(gap), token]
    return "".join(parts)


def as_numbers(node: tuple) -> tuple:
    if node[0] == "num":
        return ("num", float(node[1]))
    if node[0] == "neg":
        return ("neg", as_numbers(node[1]))
    if node[0] == "bin":
        return ("bin", node[1], as_numbers(node[2]), as_numbers(node[3]))
    if node[0] == "call":
        return ("call", node[1], tuple(as_numbers(a) for a in node[2]))
    return node


@st.composite
def python_expressions(draw: st.DrawFn) -> tuple[str, tuple]:
    """An expression's text (tokens apart by nothing, one space or two: `x -1`, `x-1`, `- 1`)
    and its tree."""
    tree = draw(expressions())
    text = join(draw, render(draw, tree), st.sampled_from(["", "", " ", "  "]))
    return text, as_numbers(tree)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(python_expressions())
def test_random_expressions_parse_as_python_parses_them(case: tuple[str, tuple]) -> None:
    """Precedence, associativity, unary minus and signs, parentheses and calls: the tree is
    Python's (and the one the text was written from), and each name, number, unary minus and
    call stands where Python's tree places it."""
    text, tree = case
    prefix = "model M { forward(x) { return "
    (model,) = parse(prefix + text + " } }").items
    assert isinstance(model, S.ModelDef) and model.forward is not None
    (ours,) = model.forward.result.values
    python = python_parse(text)
    assert shape(ours) == python_shape(python) == tree
    assert located(ours, len(prefix)) == python_located(python)


def located(node: S.Expr, shift: int) -> list[tuple[str, int]]:
    """(kind, column from 0 in the expression) of the leaves, unary minuses and calls, in order;
    a BinOp's location is its operator, which Python's tree does not keep."""
    out: list[tuple[str, int]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, S.BinOp):
            stack += [item.right, item.left]
            continue
        out.append((type(item).__name__, item.loc.col - 1 - shift))
        if isinstance(item, S.Neg):
            stack.append(item.operand)
        elif isinstance(item, S.Apply):
            stack += reversed(item.args)
    return out


def python_located(node: ast.expr) -> list[tuple[str, int]]:
    names = {ast.Name: "Ref", ast.Constant: "Num", ast.UnaryOp: "Neg", ast.Call: "Apply"}
    out: list[tuple[str, int]] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.BinOp):
            stack += [item.right, item.left]
            continue
        out.append((names[type(item)], item.col_offset))
        if isinstance(item, ast.UnaryOp):
            stack.append(item.operand)
        elif isinstance(item, ast.Call):
            stack += reversed(item.args)
    return out


# --------------------------------------------------------------------------- keywords


def test_forward_and_return_are_keywords_only_where_they_stand() -> None:
    """`forward` is a keyword where a layer may start, followed by its '(' and an input;
    `return` inside a forward block. Elsewhere they, and names that begin with them, are names as
    before: a model, a layer, a layer's kind (a model named `forward`); in a forward block,
    `forward` still names a layer or an input."""
    text = """\
model forward { returns = ReLU() }
model forwarded {
    forward = forward()
    return = forward
    forward
    forward(
    )
}
model M {
    return = ReLU()
    forward = Linear(2, 2)
    forwarded = forward()

    forward(forward, returned: 2) {
        returns = forward(forward)
        return returns, forwarded(returned)
    }
}
"""
    first, second, third = parse(text).items
    assert isinstance(first, S.ModelDef) and first.name == "forward" and first.forward is None
    assert first.layers[0].name == "returns"
    assert isinstance(second, S.ModelDef) and second.forward is None
    assert [(la.name, la.kind, la.has_parens) for la in second.layers] == [
        ("forward", "forward", True),
        ("return", "forward", False),
        (None, "forward", False),
        (None, "forward", True),
    ]
    assert isinstance(third, S.ModelDef) and third.forward is not None
    assert [la.name for la in third.layers] == ["return", "forward", "forwarded"]
    assert [i.name for i in third.forward.inputs] == ["forward", "returned"]
    (assign,) = third.forward.body
    assert assign.name == "returns"
    assert shape(assign.value) == ("call", "forward", (("name", "forward"),))
    assert [shape(v) for v in third.forward.result.values] == [
        ("name", "returns"),
        ("call", "forwarded", (("name", "returned"),)),
    ]
    assert format_source(format_source(text)) == format_source(text)
    assert_round_trips(text)


@pytest.mark.parametrize(
    ("body", "inputs", "line", "col", "message"),
    [
        ("return = x\nreturn x", "x", 3, 1, "'return' is a keyword and cannot be used as a name"),
        ("return x", "return", 2, 13, "'return' is a keyword and cannot be used as a name"),
        ("h = return(x)\nreturn h", "x", 3, 5, "unexpected 'return'; expected an expression"),
        ("h = x +\nreturn h", "x", 4, 1, "unexpected 'return'; expected an expression"),
        ("return x, return", "x", 3, 11, "unexpected 'return'; expected an expression"),
    ],
)
def test_return_is_a_keyword_inside_forward(
    body: str, inputs: str, line: int, col: int, message: str
) -> None:
    error = parse_error(f"model M {{\n    forward({inputs}) {{\n{body}\n    }}\n}}\n")
    assert (error.message, error.loc) == (message, at(line, col))


def test_forward_after_a_comment_is_still_the_keyword() -> None:
    (model,) = parse("model M { forward # the graph\n (x) { return x } }").items
    assert isinstance(model, S.ModelDef) and model.forward is not None


def test_model_test_true_and_false_stay_keywords_everywhere() -> None:
    error = parse_error(
        "model M {\n    forward(x) {\n        model = x\n        return x\n    }\n}"
    )
    assert (error.message, error.loc) == (
        "'model' is a keyword and cannot be used as a name",
        at(3, 9),
    )
    error = parse_error("model M { forward(true) { return x } }")
    assert error.message == "'true' is a keyword and cannot be used as a name"
    # No keyword is read out of the start of a longer name.
    error = parse_error("modelx M { }")
    assert error.message.startswith("unexpected 'modelx'")
    (model,) = parse("model M { forward(x) { testing = x; return truex } }").items
    assert isinstance(model, S.ModelDef) and model.forward is not None


def test_signs_in_layer_arguments_and_literals_are_unchanged() -> None:
    (model, test) = parse(
        "model M { LeakyReLU(-1) Softmax(dim=+1) L { w = [1, -2, +3, -inf] } }\n"
        "test M { input = [-1, 2]; expect = ([-1], [+2.5]) }"
    ).items
    assert isinstance(model, S.ModelDef) and isinstance(test, S.TestDef)
    assert model.layers[0].args[0].value.text == "-1"
    assert model.layers[1].args[0].value.text == "+1"
    expect = test.entries[1].value
    assert isinstance(expect, S.TupleLit)
    assert [item.items[0].text for item in expect.items] == ["-1", "+2.5"]


def test_tuples() -> None:
    """At least one comma: `(a,)` is a tuple of one value, as in Python; `(a)` is not a tuple;
    a trailing comma is allowed. Only tests take tuples."""
    (test,) = parse('test M { input = ([1],); expect = (load("e.npy", "k"), [2, 3],) }').items
    assert isinstance(test, S.TestDef)
    one, two = (entry.value for entry in test.entries)
    assert isinstance(one, S.TupleLit) and len(one.items) == 1 and one.loc == at(1, 18)
    assert isinstance(two, S.TupleLit) and [type(i).__name__ for i in two.items] == [
        "Call",
        "ListLit",
    ]
    error = parse_error("test M { input = ([1]) }")
    assert (error.message, error.loc) == ("unexpected ')'; expected ','", at(1, 22))
    error = parse_error("test M { input = () }")
    assert (error.message, error.loc) == ("unexpected ')'; expected a value", at(1, 19))
    error = parse_error("model M { L { weight = ([1], [2]) } }")
    assert (error.message, error.loc) == ("unexpected '('; expected a value", at(1, 24))


# --------------------------------------------------------------------------- syntax errors

FWD = "model M {{\n    fc = Linear(2, 2)\n\n    forward(x) {{\n{}\n    }}\n}}\n"


# fmt: off
@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        pytest.param(
            FWD.format("        h = fc(x)"), 6, 5,
            "forward ends without a return: its last statement is return EXPR",
            id="missing-return",
        ),
        pytest.param(
            FWD.format("        return x\n        h = fc(x)"), 6, 9,
            "a statement after return: return is the last statement of forward",
            id="return-not-last",
        ),
        pytest.param(
            FWD.format("        return x\n        return x"), 6, 9,
            "a statement after return: return is the last statement of forward",
            id="two-returns",
        ),
        pytest.param(
            FWD.format("        3 = fc(x)\n        return x"), 5, 9,
            "cannot assign to a number: a statement is NAME = EXPR or return EXPR",
            id="assignment-to-a-number",
        ),
        pytest.param(
            FWD.format("        h = x\n        2.5 = h\n        return x"), 6, 9,
            "cannot assign to a number: a statement is NAME = EXPR or return EXPR",
            id="assignment-to-a-number-after-a-statement",
        ),
        pytest.param(
            FWD.format("        h = fc(x\n        return h"), 5, 15, "'(' was never closed",
            id="unclosed-call",
        ),
        pytest.param(
            FWD.format("        h = (x + fc(x)\n        g = h\n        return g"), 5, 13,
            "'(' was never closed",
            id="unclosed-parenthesis-before-an-assignment",
        ),
        pytest.param(
            FWD.format("        return cat(x, fc(x)"), 5, 19, "'(' was never closed",
            id="unclosed-before-the-brace",
        ),
        pytest.param(
            "model M {\n    forward(x) {\n        return f(x", 3, 17, "'(' was never closed",
            id="unclosed-at-end-of-file",
        ),
        pytest.param(
            FWD.format("        h = fc(x))\n        return h"), 5, 18,
            "unmatched ')'",
            id="extra-parenthesis",
        ),
        pytest.param(
            FWD.format("        h = x +\n        return h"), 6, 9,
            "unexpected 'return'; expected an expression",
            id="missing-operand",
        ),
        pytest.param(
            FWD.format("        h = +x\n        return h"), 5, 13,
            "unexpected '+'; expected an expression",
            id="unary-plus",
        ),
        pytest.param(
            FWD.format("        h = x y\n        return h"), 5, 15,
            "unexpected 'y': a statement is NAME = EXPR or return EXPR",
            id="missing-operator",
        ),
        pytest.param(
            FWD.format("        h = fc(x)\n        fc\n        return h"), 6, 9,
            "unexpected 'fc': a statement is NAME = EXPR or return EXPR",
            id="stray-name",
        ),
        pytest.param(
            FWD.format("        h = x\n        retrun h"), 6, 9,
            "unexpected 'retrun'; did you mean 'return'?",
            id="misspelt-return",
        ),
        pytest.param(
            FWD.format("        return x,"), 6, 5, "unexpected '}'; expected an expression",
            id="trailing-comma-in-return",
        ),
        pytest.param(
            FWD.format("        h = x, y\n        return h"), 5, 14,
            "unexpected ','; expected ';', 'return', '}' or a name",
            id="tuple-assignment",
        ),
        pytest.param(
            FWD.format("        h = [x]\n        return h"), 5, 13,
            "unexpected '['; expected an expression",
            id="list-in-an-expression",
        ),
        pytest.param(
            FWD.format("        h = x / 2\n        return h"), 5, 15, "unexpected character '/'",
            id="division",
        ),
        pytest.param(
            FWD.format("        h == x\n        return h"), 5, 12, "unexpected '='; expected an expression",
            id="double-equals",
        ),
        pytest.param(
            FWD.format("        return x\n    }\n    forward(y) {\n        return y"), 7, 5,
            "a model has one forward block; this one follows the one at line 4",
            id="forward-twice",
        ),
        pytest.param(
            "model M {\n    forward(x) { return x }\n    relu = ReLU()\n}", 3, 5,
            "a layer after forward: a model's layers come before its forward block",
            id="layer-after-forward",
        ),
        pytest.param(
            "model M {\n    forward(x) { return x }\n    ReLU\n}", 3, 5,
            "a layer after forward: a model's layers come before its forward block",
            id="unnamed-layer-after-forward",
        ),
        pytest.param(
            "model M {\n    forward(x, y: -2) { return x }\n}", 2, 19,
            "an input's shape is a whole number or a list of whole numbers, "
            "like `mask: 8` or `img: [1, 28, 28]`",
            id="negative-size",
        ),
        pytest.param(
            "model M {\n    forward(x, y: [1, 2.5]) { return x }\n}", 2, 23,
            "an input's shape is a whole number or a list of whole numbers, "
            "like `mask: 8` or `img: [1, 28, 28]`",
            id="decimal-size",
        ),
        pytest.param(
            "model M {\n    forward(x, y: [1, n]) { return x }\n}", 2, 23,
            "an input's shape is a whole number or a list of whole numbers, "
            "like `mask: 8` or `img: [1, 28, 28]`",
            id="name-as-size",
        ),
        pytest.param(
            "model M {\n    forward(x, y: []) { return x }\n}", 2, 19,
            "an input's shape is a whole number or a list of whole numbers, "
            "like `mask: 8` or `img: [1, 28, 28]`",
            id="empty-shape",
        ),
        pytest.param(
            "model M {\n    forward(x, y: [[2]]) { return x }\n}", 2, 19,
            "an input's shape is a whole number or a list of whole numbers, "
            "like `mask: 8` or `img: [1, 28, 28]`",
            id="nested-shape",
        ),
        pytest.param(
            "model M {\n    forward(x: y) { return x }\n}", 2, 16,
            "unexpected 'y'; expected '[' or a number",
            id="name-as-annotation",
        ),
        pytest.param(
            "model M {\n    forward(x y) { return x }\n}", 2, 15,
            "unexpected 'y'; expected ')', ',' or ':'",
            id="inputs-without-comma",
        ),
        pytest.param(
            "model M {\n    forward(x) return x\n}", 2, 16, "unexpected 'return'; expected '{'",
            id="missing-brace",
        ),
        pytest.param(
            "model M {\n    fc: Linear(2, 2)\n}", 2, 7, "unexpected character ':'",
            id="colon-outside-forward",
        ),
        pytest.param(
            "model M {\n    fc = Linear(2, 2) * 2\n}", 2, 23, "unexpected character '*'",
            id="operator-outside-forward",
        ),
        pytest.param(
            "model M {\n    forward(x) {\n        return " + "(" * 33 + "x" + ")" * 33 + "\n    }\n}",
            3, 48, "brackets nested more than 32 deep",
            id="parentheses-too-deep",
        ),
    ],
)
# fmt: on
def test_syntax_errors_in_forward_blocks(text: str, line: int, col: int, message: str) -> None:
    error = parse_error(text)
    assert (error.message, error.loc) == (message, at(line, col))
    with pytest.raises(LayercError) as info:
        format_source(text, FILE)  # fmt reports what the compiler does
    assert str(info.value) == f"{FILE}:{line}:{col}: {message}"


# --------------------------------------------------------------------------- bounds


def expression_program(expression: str) -> str:
    return "model M {\n    forward(a) {\n        return " + expression + "\n    }\n}\n"


def test_expressions_may_nest_exactly_max_expression_depth_operations() -> None:
    limit = S.MAX_EXPRESSION_DEPTH
    chain = "+".join(["a"] * (limit + 1))
    printed = assert_round_trips(expression_program(chain))
    assert printed.count("\n            + a") == limit
    error = parse_error(expression_program(chain + "+a"))
    assert error.message == (
        f"this expression nests operations more than {limit} deep; split it into several statements"
    )
    assert error.loc == at(3, 15 + 2 * (limit + 1))  # the operator that crosses the limit
    negs = "-" * limit + "a"
    assert_round_trips(expression_program(negs))
    assert parse_error(expression_program("-" + negs)).loc == at(3, 16)
    assert_round_trips(expression_program("-" * limit + "1"))  # -1 is Neg(Num("1"))
    assert parse_error(expression_program("-" * (limit + 1) + "1")).loc == at(3, 16)
    calls = "f(" * 31 + "-" * (limit - 31) + "a" + ")" * 31
    assert_round_trips(expression_program(calls))


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        pytest.param("+".join(["a"] * 100_000), "nests operations more than", id="long-sum"),
        pytest.param("*".join(["a"] * 100_000), "nests operations more than", id="long-product"),
        pytest.param("-" * 100_000 + "a", "nests operations more than", id="long-negation"),
        pytest.param("- " * 50_000 + "1", "nests operations more than", id="spaced-negation"),
        pytest.param("(" * 100_000 + "a" + ")" * 100_000, "brackets nested", id="parentheses"),
        pytest.param("-(" * 50_000 + "a" + ")" * 50_000, "brackets nested", id="negated-groups"),
        pytest.param("f(" * 50_000 + "a" + ")" * 50_000, "brackets nested", id="nested-calls"),
        pytest.param("a" + "+" * 100_000, "unexpected '+'", id="run-of-operators"),
        pytest.param("-" * 100_000, "unexpected '}'", id="negation-of-nothing"),
    ],
)
def test_huge_expressions_are_refused_quickly_and_located(expression: str, message: str) -> None:
    start = time.perf_counter()
    error = parse_error(expression_program(expression))
    assert message in error.message and error.loc.line in (3, 4)
    assert time.perf_counter() - start < 30


def test_a_wide_call_is_handled_in_linear_time() -> None:
    """Many arguments nest nothing: parsed, printed one per line, and formatted again."""
    text = expression_program("cat(" + ", ".join(["a"] * 20_000) + ")")
    start = time.perf_counter()
    printed = format_source(text)
    assert printed.count("            a,\n") == 20_000
    assert format_source(printed) == printed
    assert time.perf_counter() - start < 30


def test_the_printer_refuses_a_built_tree_deeper_than_the_parser_allows() -> None:
    node: S.Expr = S.Ref("a", at(1, 1))
    for _ in range(100_000):
        node = S.Neg(node, at(1, 1))
    with pytest.raises(ValueError, match="nests operations more than 100 deep"):
        print_program(built_program(S.Return((node,), at(1, 1))))


# --------------------------------------------------------------------------- the printer

AT = Loc("<built>", 1, 1)


def built_program(result: S.Return, body: tuple[S.Assign, ...] = (), inputs: tuple = ()) -> S.Program:
    forward = S.ForwardDef(inputs or (S.Input("a", None, AT),), body, result, AT)
    layer = S.LayerDef("fc", "Linear", AT, (), True, None, AT)
    return S.Program("b.lyr", (S.ModelDef("M", (), (layer,), AT, AT, forward=forward),))


def test_a_built_forward_block_prints_canonically() -> None:
    def ref(name: str) -> S.Ref:
        return S.Ref(name, AT)

    def num(text: str) -> S.Num:
        return S.Num(text, AT)

    h = S.BinOp("-", S.BinOp("+", ref("a"), ref("b"), AT), S.BinOp("-", ref("c"), ref("d"), AT), AT)
    g = S.BinOp("*", S.Neg(S.BinOp("+", ref("a"), num("1"), AT), AT), S.Neg(num("2.5"), AT), AT)
    k = S.Apply("fc", (S.Neg(S.Neg(ref("a"), AT), AT), S.BinOp("*", ref("a"), S.BinOp("*", ref("b"), ref("c"), AT), AT)), AT)
    program = built_program(
        S.Return((ref("h"), S.BinOp("-", ref("g"), S.Neg(num("1"), AT), AT)), AT),
        (S.Assign("h", h, AT), S.Assign("g", g, AT), S.Assign("k", k, AT)),
        (S.Input("a", None, AT), S.Input("mask", (8,), AT), S.Input("img", (1, 28, 28), AT)),
    )
    text = print_program(program)
    assert text == (
        "model M {\n"
        "    fc = Linear()\n"
        "\n"
        "    forward(a, mask: 8, img: [1, 28, 28]) {\n"
        "        h = a + b - (c - d)\n"
        "        g = -(a + 1) * -2.5\n"
        "        k = fc(--a, a * (b * c))\n"
        "        return h, g - -1\n"
        "    }\n"
        "}\n"
    )
    assert syntax_shape(parse(text).items) == syntax_shape(program.items)
    assert format_source(text) == text


@pytest.mark.parametrize(
    ("result", "body", "inputs", "message"),
    [
        (S.Return((S.Num("-1", AT),), AT), (), (), "'-1' is not a number of a .lyr expression"),
        (S.Return((S.Num("inf", AT),), AT), (), (), "'inf' is not a number of a .lyr expression"),
        (
            S.Return((S.BinOp("/", S.Ref("a", AT), S.Ref("a", AT), AT),), AT),
            (),
            (),
            "'/' is not an operator of .lyr expressions",
        ),
        (S.Return((S.Ref("model", AT),), AT), (), (), "'model' is not a .lyr name"),
        (S.Return((), AT), (), (), "return returns at least one value"),
        (
            S.Return((S.Ref("a", AT),), AT),
            (S.Assign("return", S.Ref("a", AT), AT),),
            (),
            "'return' is not a name in a forward block",
        ),
        (S.Return((S.Ref("a", AT),), AT), (), (S.Input("a", (-1,), AT),), "-1 is not a size"),
    ],
)
def test_what_no_lyr_text_can_hold_is_refused(result, body, inputs, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        print_program(built_program(result, body, inputs))


def test_a_forward_without_inputs_and_an_empty_tuple_are_refused() -> None:
    program = built_program(S.Return((S.Ref("a", AT),), AT))
    model = program.items[0]
    assert isinstance(model, S.ModelDef) and model.forward is not None
    empty = S.ForwardDef((), (), model.forward.result, AT)
    bare = S.Program("b.lyr", (S.ModelDef("M", (), (), AT, AT, forward=empty),))
    with pytest.raises(ValueError, match="at least one input"):
        print_program(bare)
    test = S.TestDef("M", (S.Entry("input", S.TupleLit((), AT), AT),), AT, AT)
    with pytest.raises(ValueError, match="at least one value"):
        print_program(S.Program("b.lyr", (test,)))


MESSY = """\
model M {
  fc = Linear(2,2)
  # the graph
  forward( x ,  # the input
     y : 2,img:[1,28, 28,]) {  # start
    h = ((fc((x))));  # trailing
    # own line
    g = (a + b) * c - (d - e) + -(f * g) - - h + (-1) * 2 - (x * 3)
    k = fc(x,   # inside a call
           y)

    m = a +  # after plus
       b
    return h,  # first
      g
  }
  # after forward
}
test M { input = ([1, 1], [2, 0],); expect = ([4, 8],) }
"""

CANONICAL = """\
model M {
    fc = Linear(2, 2)

    # the graph
    forward(
        x,  # the input
        y: 2,
        img: [1, 28, 28],
    ) {  # start
        h = fc(x)  # trailing
        # own line
        g = (a + b) * c - (d - e) + -(f * g) - -h + -1 * 2 - x * 3
        k = fc(
            x,  # inside a call
            y,
        )

        m = a +  # after plus
            b
        return h,  # first
            g
    }
    # after forward
}

test M {
    input = ([1, 1], [2, 0])
    expect = ([4, 8],)
}
"""


def test_fmt_lays_a_forward_block_out_and_keeps_its_comments() -> None:
    """Parentheses precedence does not need are dropped; every comment stays where it stood
    (a call with a comment inside is written one argument per line, as any bracketed group)."""
    assert format_source(MESSY) == CANONICAL
    assert format_source(CANONICAL) == CANONICAL
    assert comment_texts(CANONICAL) == comment_texts(MESSY)
    assert syntax_shape(parse(CANONICAL).items) == syntax_shape(parse(MESSY).items)


LONG = (
    "model M {\n forward(x) {\n h = "
    + " + ".join(f"layer_number_{i}(x)" for i in range(12))
    + "\n h2 = cat("
    + ", ".join(f"branch_{i}(norm_{i}(x))" for i in range(8))
    + ")\n return very_long_function_name_aaaaaaaaaaaaaa(h) * another_very_long_name_bbbbbbbbbbbbbbbbbbbbbb(h2), "
    "h2 + h, (h - h2) * (h + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2)\n"
    " }\n}\ntest M { input = ([[1, 2], [3, 4]], [5, 6]); expect = (["
    + ", ".join(["1.5"] * 30)
    + "], [1]) }\n"
)

LONG_CANONICAL = """\
model M {
    forward(x) {
        h = layer_number_0(x)
            + layer_number_1(x)
            + layer_number_2(x)
            + layer_number_3(x)
            + layer_number_4(x)
            + layer_number_5(x)
            + layer_number_6(x)
            + layer_number_7(x)
            + layer_number_8(x)
            + layer_number_9(x)
            + layer_number_10(x)
            + layer_number_11(x)
        h2 = cat(
            branch_0(norm_0(x)),
            branch_1(norm_1(x)),
            branch_2(norm_2(x)),
            branch_3(norm_3(x)),
            branch_4(norm_4(x)),
            branch_5(norm_5(x)),
            branch_6(norm_6(x)),
            branch_7(norm_7(x)),
        )
        return very_long_function_name_aaaaaaaaaaaaaa(h)
                   * another_very_long_name_bbbbbbbbbbbbbbbbbbbbbb(h2),
               h2 + h,
               (h - h2) * (h + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2 + h2)
    }
}

test M {
    input = (
        [[1, 2],
         [3, 4]],
        [5, 6],
    )
    expect = (
        [1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5,
         1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5],
        [1],
    )
}
"""


def test_long_lines_wrap_at_the_width() -> None:
    """A chain one operator per line, a call one argument per line, several returned values one
    per line aligned under the first, a tuple with a matrix or too long one item per line."""
    assert format_source(LONG) == LONG_CANONICAL
    assert print_program(parse(LONG)) == LONG_CANONICAL
    assert all(len(line) <= 100 for line in LONG_CANONICAL.splitlines())
    assert_round_trips(LONG)


def test_a_broken_expression_inside_parentheses_and_calls() -> None:
    long_name = "a_rather_long_layer_name_that_fills_the_line"
    text = expression_program(
        f"-({long_name}(x) + {long_name}(y)) * {long_name}({long_name}(x) - {long_name}(y), z)"
    )
    printed = assert_round_trips(text)
    assert printed == (
        "model M {\n"
        "    forward(a) {\n"
        "        return -(\n"
        f"            {long_name}(x)\n"
        f"                + {long_name}(y)\n"
        "        )\n"
        f"            * {long_name}(\n"
        f"                {long_name}(x)\n"
        f"                    - {long_name}(y),\n"
        "                z,\n"
        "            )\n"
        "    }\n"
        "}\n"
    )


def assert_round_trips(text: str) -> str:
    """parse -> print -> parse gives the same tree; printing is stable; with the source the
    printer is fmt, whose output is a fixed point and keeps every comment."""
    program = parse(text)
    printed = print_program(program)
    assert syntax_shape(parse(printed).items) == syntax_shape(program.items)
    assert print_program(parse(printed)) == printed
    assert format_source(printed) == printed
    formatted = format_source(text)
    assert print_program(program, text) == formatted
    assert format_source(formatted) == formatted
    assert syntax_shape(parse(formatted).items) == syntax_shape(program.items)
    assert comment_texts(formatted) == comment_texts(text)
    return printed


# --------------------------------------------------------------------------- random programs


@st.composite
def forward_program_tokens(draw: st.DrawFn) -> list[str]:
    """A graph model as tokens: layers, a forward block with annotated inputs and random
    statements, a test with tuples."""
    tokens = ["model", "G", "{"]
    for i in range(draw(st.integers(0, 2))):
        tokens += [f"l{i}", "=", "Linear", "(", "2", ",", "2", ")"]
    tokens += ["forward", "("]
    for i in range(draw(st.integers(1, 3))):
        tokens += ([","] if i else []) + [f"x{i}"]
        annotation = draw(st.sampled_from(["", "", "size", "shape"]))
        if annotation == "size":
            tokens += [":", "4"]
        elif annotation == "shape":
            tokens += [":", "[", "1", ",", "28", ",", "28", "]"]
    tokens += [")", "{"]
    for i in range(draw(st.integers(0, 3))):
        tokens += [f"h{i}", "=", *render(draw, draw(expressions()))]
        tokens += [draw(st.sampled_from(["", "", ";"]))]
    tokens += ["return"]
    for i in range(draw(st.integers(1, 3))):
        tokens += ([","] if i else []) + render(draw, draw(expressions()))
    tokens += [draw(st.sampled_from(["", ";"])), "}", "}"]
    if draw(st.booleans()):
        items = [["[", "1", ",", "-2", "]"], ["[", "[", "1", "]", ",", "[", "2", "]", "]"], ["[", "3", "]"]]
        chosen = draw(st.lists(st.sampled_from(items), min_size=1, max_size=3))
        tuple_tokens = ["("]
        for item in chosen:
            tuple_tokens += [*item, ","]
        if len(chosen) > 1 and draw(st.booleans()):
            tuple_tokens.pop()
        tokens += ["test", "G", "{", "input", "=", *tuple_tokens, ")", "}"]
    return [t for t in tokens if t]


_LONG_NAMES = {"fc": "a_rather_long_layer_name_to_wrap_lines", "h": "hidden_state_of_the_block"}


@st.composite
def forward_program_texts(draw: st.DrawFn) -> str:
    """Such a program with space, line breaks and comments between tokens (none where they
    may be left out), and now and then long names that make lines wrap."""
    tokens = draw(forward_program_tokens())
    if draw(st.booleans()):
        tokens = [_LONG_NAMES.get(t, t) for t in tokens]
    parts = [tokens[0]]
    for previous, token in zip(tokens, tokens[1:], strict=False):
        words = re.match(r"\w", previous[-1:]) and re.match(r"[\w.]", token[:1])
        none = not words and draw(st.integers(0, 3)) == 0
        parts += ["" if none else draw(gaps()), token]
    return "".join(parts) + "\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forward_program_texts())
def test_random_forward_programs_round_trip(text: str) -> None:
    assert_round_trips(text)


# --------------------------------------------------------------------------- the command line


def test_layerc_fmt_formats_a_file_with_a_forward_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "graph.lyr"
    path.write_text(MESSY, encoding="utf-8")
    assert main(["fmt", "--check", str(path)]) == 1
    assert capsys.readouterr().out == f"would reformat {path}\n"
    assert main(["fmt", str(path)]) == 0
    assert capsys.readouterr().out == f"reformatted {path}\n"
    assert path.read_text(encoding="utf-8") == CANONICAL
    done = subprocess.run(
        [sys.executable, "-m", "layerc", "fmt", "--check", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    bad = tmp_path / "bad.lyr"
    bad.write_text(FWD.format("        h = fc(x\n        return h"), encoding="utf-8")
    assert main(["fmt", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:5:15: '(' was never closed" in err and "Traceback" not in err
