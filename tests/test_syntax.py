"""The front end (layerc/syntax.py, grammar/layerc.lark): the whole language of the spec's
sections 2-5 parses into the expected located nodes, and every syntax error is reported with the
right message, line and column."""

from __future__ import annotations

import keyword
import math
import re
import string
import tracemalloc
from unittest import mock

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from layerc import syntax as S
from layerc.errors import LayercError, Loc, render

FILE = "t.lyr"


def parse(text: str) -> S.Program:
    return S.parse(text, FILE)


def parse_error(text: str) -> LayercError:
    with pytest.raises(LayercError) as info:
        parse(text)
    return info.value


def only_model(text: str) -> S.ModelDef:
    (model,) = parse(text).items
    assert isinstance(model, S.ModelDef)
    return model


def at(line: int, col: int) -> Loc:
    return Loc(FILE, line, col)


# --------------------------------------------------------------------------- the language

FULL_PROGRAM = """\
# every construct of the language, one after another
model Encoder(dtype=float64) {
    fc = Linear(in_features=4, out_features=3, bias=false) {
        weight = [[1, 2, 3, 4],
                  [2, 3, 4, 5],
                  [3, 4, 5, 6]]   # a comment after a value
    }
    act = Tanh
}

model Net(dtype=float64, allow_nonfinite=true) {
    enc = Encoder;
    Linear(3, 2) { weight = load("w.npz", "fc1.weight"); bias = load("b.npy") }
    ReLU()
    Sigmoid,
    Identity
    LeakyReLU(0.2)
    LeakyReLU(negative_slope=-1e-2)
    out = Linear(2, 2, true) { init = uniform(seed=7) }
    Softmax(dim=-1)
    Encoder
}

test Net {
    input = [[1, 2, 3, 4], [0.5, -1, 3e-4, +2.]];
    expect = [[inf, -inf], [nan, 0]],
    atol = 1e-3
    rtol = 0
}
test Encoder { input = [1, 2, 3, 4]; expect = [30, 40, 50] }
"""


def test_full_program_parses_into_located_nodes() -> None:
    program = parse(FULL_PROGRAM)
    assert program.file == FILE
    encoder, net, test_net, test_enc = program.items

    assert isinstance(encoder, S.ModelDef)
    assert (encoder.name, encoder.loc, encoder.name_loc) == ("Encoder", at(2, 1), at(2, 7))
    (dtype,) = encoder.options
    assert dtype.name == "dtype" and dtype.value == S.Name("float64", at(2, 21))
    fc, act = encoder.layers
    assert (fc.name, fc.kind, fc.loc, fc.kind_loc) == ("fc", "Linear", at(3, 5), at(3, 10))
    assert [(a.name, a.value.value) for a in fc.args] == [
        ("in_features", 4),
        ("out_features", 3),
        ("bias", False),
    ]
    assert fc.has_parens
    (weight,) = fc.entries
    assert (weight.name, weight.loc) == ("weight", at(4, 9))
    rows = weight.value
    assert isinstance(rows, S.ListLit) and rows.loc == at(4, 18)
    assert [[n.value for n in row.items] for row in rows.items] == [
        [1, 2, 3, 4],
        [2, 3, 4, 5],
        [3, 4, 5, 6],
    ]
    assert rows.items[2].loc == at(6, 19)
    assert (act.name, act.kind, act.args, act.has_parens, act.entries) == (
        "act",
        "Tanh",
        (),
        False,
        None,
    )

    assert isinstance(net, S.ModelDef)
    assert [(o.name, type(o.value).__name__) for o in net.options] == [
        ("dtype", "Name"),
        ("allow_nonfinite", "Bool"),
    ]
    kinds = [(layer.name, layer.kind, layer.has_parens) for layer in net.layers]
    assert kinds == [
        ("enc", "Encoder", False),
        (None, "Linear", True),
        (None, "ReLU", True),
        (None, "Sigmoid", False),
        (None, "Identity", False),
        (None, "LeakyReLU", True),
        (None, "LeakyReLU", True),
        ("out", "Linear", True),
        (None, "Softmax", True),
        (None, "Encoder", False),
    ]
    weight, bias = net.layers[1].entries
    assert weight.value == S.Call(
        "load",
        (
            S.Arg(None, S.String("w.npz", at(13, 34)), at(13, 34)),
            S.Arg(None, S.String("fc1.weight", at(13, 43)), at(13, 43)),
        ),
        at(13, 29),
    )
    assert bias.value.func == "load" and [a.value.value for a in bias.value.args] == ["b.npy"]
    assert net.layers[5].args[0].value.value == 0.2
    slope = net.layers[6].args[0]
    assert slope.name == "negative_slope" and slope.value.value == -0.01
    out = net.layers[7]
    assert [a.value.value for a in out.args] == [2, 2, True]
    (init,) = out.entries
    assert init.name == "init" and init.value.func == "uniform"
    (seed,) = init.value.args
    assert seed.name == "seed" and seed.value.value == 7 and seed.value.is_int
    (dim,) = net.layers[8].args
    assert dim.name == "dim" and dim.value.value == -1 and dim.value.is_int

    assert isinstance(test_net, S.TestDef)
    assert (test_net.model, test_net.loc, test_net.model_loc) == ("Net", at(24, 1), at(24, 6))
    entries = {e.name: e.value for e in test_net.entries}
    assert list(entries) == ["input", "expect", "atol", "rtol"]
    assert [n.value for n in entries["input"].items[1].items] == [0.5, -1, 3e-4, 2.0]
    first, second = entries["expect"].items
    assert [n.value for n in first.items] == [math.inf, -math.inf]
    assert math.isnan(second.items[0].value) and second.items[1].value == 0
    assert entries["atol"].value == 1e-3 and entries["rtol"].value == 0
    assert isinstance(test_enc, S.TestDef) and test_enc.model == "Encoder"


def test_empty_source_and_comment_only_source_have_no_items() -> None:
    assert parse("").items == ()
    assert parse("# nothing here\n   # at all\n").items == ()


@pytest.mark.parametrize(
    "layer",
    [
        "Linear(4, 3, false)",
        "Linear(4, 3, bias=false)",
        "Linear(4, out_features=3, bias=false)",
        "Linear(in_features=4, out_features=3, bias=false)",
        "Linear(bias=false, out_features=3, in_features=4)",
    ],
)
def test_linear_arguments_positional_and_keyword(layer: str) -> None:
    (node,) = only_model(f"model M {{ {layer} }}").layers
    assert node.kind == "Linear" and node.has_parens and node.entries is None
    values = {a.name: a.value.value for a in node.args if a.name is not None}
    positional = [a.value.value for a in node.args if a.name is None]
    names = ["in_features", "out_features", "bias"]
    bound = dict(zip(names, positional, strict=False)) | values
    assert bound == {"in_features": 4, "out_features": 3, "bias": False}


@pytest.mark.parametrize("kind", ["ReLU", "Sigmoid", "Tanh", "Identity", "LeakyReLU", "Softmax"])
@pytest.mark.parametrize("parens", [False, True])
def test_activations_with_and_without_parens(kind: str, parens: bool) -> None:
    text = f"model M {{\n  a = {kind}{'()' if parens else ''}\n  {kind}{'()' if parens else ''}\n}}"
    named, unnamed = only_model(text).layers
    assert (named.name, named.kind, named.has_parens, named.args) == ("a", kind, parens, ())
    assert (unnamed.name, unnamed.kind, unnamed.loc) == (None, kind, at(3, 3))


@pytest.mark.parametrize("sep", [";", ","])
def test_optional_separators_after_every_entry(sep: str) -> None:
    text = (
        f"model M(dtype=float32,) {{ a = Linear(2, 2,) {{ weight = [[1, 2,], [3, 4],]{sep} "
        f"bias = [0, 0]{sep} }}{sep} ReLU{sep} Tanh() }}\n"
        f"test M {{ input = [1, 2]{sep} expect = [3, 4]{sep} atol = 0{sep} }}"
    )
    model, test = parse(text).items
    assert [layer.kind for layer in model.layers] == ["Linear", "ReLU", "Tanh"]
    assert [e.name for e in model.layers[0].entries] == ["weight", "bias"]
    assert [e.name for e in test.entries] == ["input", "expect", "atol"]
    # the separators are optional: without them it is the same program
    bare = parse(
        "model M(dtype=float32) { a = Linear(2, 2) { weight = [[1, 2], [3, 4]] bias = [0, 0] } "
        "ReLU Tanh() }\ntest M { input = [1, 2] expect = [3, 4] atol = 0 }"
    )
    assert _shape(bare) == _shape(parse(text))


def _shape(program: S.Program) -> list:
    """A program's structure without locations or number spellings, for comparing two texts."""

    def value(v: S.Value) -> object:
        if isinstance(v, S.ListLit):
            return [value(item) for item in v.items]
        return getattr(v, "value", None)

    out: list = []
    for item in program.items:
        if isinstance(item, S.ModelDef):
            out.append([(o.name, value(o.value)) for o in item.options])
            for layer in item.layers:
                args = [(a.name, value(a.value)) for a in layer.args]
                entries = [(e.name, value(e.value)) for e in layer.entries or ()]
                out.append((layer.name, layer.kind, args, entries))
        else:
            out.append((item.model, [(e.name, value(e.value)) for e in item.entries]))
    return out


def test_layers_and_entries_may_share_a_line_without_separators() -> None:
    model = only_model("model M { a = Linear(1, 1) { weight = [[2]] bias = [1] } ReLU Tanh }")
    assert [layer.kind for layer in model.layers] == ["Linear", "ReLU", "Tanh"]


def test_nested_model_reference_is_a_layer_of_that_kind() -> None:
    inner, outer = parse("model Inner { ReLU }\nmodel Outer { enc = Inner\n Inner }").items
    assert [(layer.name, layer.kind, layer.loc) for layer in outer.layers] == [
        ("enc", "Inner", at(2, 15)),
        (None, "Inner", at(3, 2)),
    ]


@pytest.mark.parametrize(
    ("text", "value", "is_int"),
    [
        ("0", 0.0, True),
        ("7", 7.0, True),
        ("-1", -1.0, True),
        ("+3", 3.0, True),
        ("0.5", 0.5, False),
        (".5", 0.5, False),
        ("-.25", -0.25, False),
        ("2.", 2.0, False),
        ("+2.", 2.0, False),
        ("3e-4", 3e-4, False),
        ("1E+3", 1000.0, False),
        ("-6.5e2", -650.0, False),
        ("inf", math.inf, False),
        ("+inf", math.inf, False),
        ("-inf", -math.inf, False),
        ("123456789012345678901234567890", 1.2345678901234568e29, True),
    ],
)
def test_numbers(text: str, value: float, is_int: bool) -> None:
    (layer,) = only_model(f"model M {{ L {{ w = {text} }} }}").layers
    number = layer.entries[0].value
    assert isinstance(number, S.Number)
    assert (number.value, number.is_int, number.text, number.loc) == (
        value,
        is_int,
        text,
        at(1, 19),
    )


@pytest.mark.parametrize("text", ["nan", "+nan", "-nan"])
def test_nan(text: str) -> None:
    (layer,) = only_model(f"model M {{ L {{ w = [1, {text}] }} }}").layers
    number = layer.entries[0].value.items[1]
    assert isinstance(number, S.Number) and math.isnan(number.value) and not number.is_int


def test_inf_and_nan_are_still_usable_as_names() -> None:
    """They are not keywords (spec section 2 lists model, test, true, false), so a layer named
    `inf` stays a layer name; only where a value stands do they mean numbers."""
    (layer,) = only_model("model M { inf = ReLU }").layers
    assert layer.name == "inf"
    (layer,) = only_model("model M { L { w = infinity } }").layers
    assert layer.entries[0].value == S.Name("infinity", at(1, 19))


@given(st.floats(allow_nan=False, width=64))
@settings(max_examples=60, deadline=None)
def test_any_python_float_repr_reads_back_exactly(x: float) -> None:
    (layer,) = only_model(f"model M {{ L {{ w = {x!r} }} }}").layers
    number = layer.entries[0].value
    assert number.value == x and math.copysign(1, number.value) == math.copysign(1, x)


_FIRST = string.ascii_letters + "_"
_NAMES = st.text(_FIRST, min_size=1, max_size=1).flatmap(
    lambda first: st.text(_FIRST + string.digits, max_size=12).map(lambda rest: first + rest)
)


@given(_NAMES)
@settings(max_examples=60, deadline=None)
def test_names_and_keywords(name: str) -> None:
    text = f"model M {{\n  {name} = ReLU\n}}"
    if name in ("model", "test", "true", "false"):
        error = parse_error(text)
        assert error.message == f"'{name}' is a keyword and cannot be used as a name"
        assert error.loc == at(2, 3)
    else:
        (layer,) = only_model(text).layers
        assert layer.name == name


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r'"plain.npz"', "plain.npz"),
        (r'"a \"quoted\" name"', 'a "quoted" name'),
        (r'"C:\\weights\\w.npy"', "C:\\weights\\w.npy"),
        (r'"\\\""', '\\"'),
        (r'""', ""),
        (r'"# not a comment"', "# not a comment"),
        ('"gewichte-ü.npz"', "gewichte-ü.npz"),
    ],
)
def test_strings_and_their_escapes(literal: str, value: str) -> None:
    (layer,) = only_model(f"model M {{ L {{ weight = load({literal}) }} }}").layers
    (arg,) = layer.entries[0].value.args
    assert arg.value == S.String(value, at(1, 29))


def test_python_keywords_are_valid_lyr_names() -> None:
    """`class` or `None` are names in .lyr; code generation renames what Python cannot take."""
    for word in ("class", "None", "lambda", "self"):
        assert word in keyword.kwlist or word == "self"
        (layer,) = only_model(f"model {word} {{ {word} = ReLU }}").layers
        assert layer.name == word


# --------------------------------------------------------------------------- syntax errors


# fmt: off
@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [
        pytest.param(
            "model M {\n  fc = Linear(4 3)\n}\n", 2, 17, "unexpected '3'; expected ')' or ','",
            id="unexpected-token-in-arguments",
        ),
        pytest.param(
            "model M {\n  a = Linear(1, 2) { weight = [1 2] }\n}",
            2, 34, "unexpected '2'; expected ',' or ']'",
            id="unexpected-token-in-list",
        ),
        pytest.param(
            "model M {\n  a = Linear(1, 1) { weight = }\n}",
            2, 31, "unexpected '}'; expected a value",
            id="missing-value",
        ),
        pytest.param(
            "model M {\n  fc = }\n", 2, 8, "unexpected '}'; expected a name", id="missing-kind",
        ),
        pytest.param(
            "model M { ReLU;; }", 1, 16, "unexpected ';'; expected '}' or a name",
            id="double-separator",
        ),
        pytest.param(
            "model M { ReLU }\n  }", 2, 3,
            "unexpected '}'; expected 'model', 'test' or end of file",
            id="stray-brace",
        ),
        pytest.param(
            "modle M { ReLU }", 1, 1,
            "unexpected 'modle'; expected 'model', 'test' or end of file; did you mean 'model'?",
            id="misspelt-keyword",
        ),
        pytest.param(
            "model M { ReLU }\nTest M { }", 2, 1,
            "unexpected 'Test'; expected 'model', 'test' or end of file; did you mean 'test'?",
            id="capitalised-keyword",
        ),
        pytest.param(
            "model 3M { }", 1, 7, "unexpected '3'; expected a name", id="number-as-model-name",
        ),
        pytest.param(
            "model M {\n  fc = Linear(4, 3) @\n}\n", 2, 21, "unexpected character '@'",
            id="unexpected-character",
        ),
        pytest.param(
            "model M {\n\tx = Linear(- 1)\n}", 2, 13, "unexpected character '-'",
            id="sign-apart-from-number",
        ),
        pytest.param(
            "model M {\n  é = ReLU\n}", 2, 3, "unexpected character 'é'", id="non-ascii-name",
        ),
        pytest.param(
            'model M {\n  L { weight = load("w.npy) }\n}', 2, 21,
            'unterminated string: a string ends with " on the same line',
            id="unterminated-string",
        ),
        pytest.param(
            'model M {\n  L { weight = load("w\n.npy") }\n}', 2, 21,
            'unterminated string: a string ends with " on the same line',
            id="string-across-lines",
        ),
        pytest.param(
            'model M { L { weight = load("w.npy', 1, 29,
            'unterminated string: a string ends with " on the same line',
            id="string-at-end-of-file",
        ),
        pytest.param(
            'model M {\n  L { weight = load("dir\\new.npy") }\n}', 2, 25,
            "unknown escape '\\n' in string: only \\\" and \\\\ are escapes",
            id="unknown-escape",
        ),
        pytest.param(
            "model M {\n  fc = Linear(4, 3)\n", 3, 1,
            "unexpected end of file; expected ',', ';', '{', '}' or a name",
            id="end-of-file-in-model",
        ),
        pytest.param(
            "model M { L { weight = [[1, 2]", 1, 31,
            "unexpected end of file; expected ',' or ']'",
            id="end-of-file-in-list",
        ),
        pytest.param(
            "model M {  # the closing brace is missing\n", 2, 1,
            "unexpected end of file; expected '}' or a name",
            id="end-of-file-after-comment",
        ),
        pytest.param(
            "model test { ReLU }", 1, 7, "'test' is a keyword and cannot be used as a name",
            id="keyword-as-model-name",
        ),
        pytest.param(
            "model M {\n  true = ReLU\n}", 2, 3, "'true' is a keyword and cannot be used as a name",
            id="keyword-as-layer-name",
        ),
        pytest.param(
            "model M {\n  fc = model\n}", 2, 8, "'model' is a keyword and cannot be used as a name",
            id="keyword-as-kind",
        ),
        pytest.param(
            "model M {\n  Linear(4, 3, false=1)\n}", 2, 16,
            "'false' is a keyword and cannot be used as a name",
            id="keyword-as-argument-name",
        ),
        pytest.param(
            "model M(true = 1) { ReLU }", 1, 9, "'true' is a keyword and cannot be used as a name",
            id="keyword-as-option-name",
        ),
        pytest.param(
            "test model { }", 1, 6, "'model' is a keyword and cannot be used as a name",
            id="keyword-as-test-model",
        ),
        pytest.param(
            "model M {\n  L { weight = " + "[" * 40 + "1" + "]" * 40 + " }\n}", 2, 48,
            "brackets nested more than 32 deep",
            id="brackets-too-deep",
        ),
        pytest.param(
            "model M { Linear" + "(" * 33 + ")" * 33 + " }", 1, 49,
            "brackets nested more than 32 deep",
            id="parentheses-too-deep",
        ),
    ],
)
# fmt: on
def test_syntax_error_message_and_location(text: str, line: int, col: int, message: str) -> None:
    error = parse_error(text)
    assert (error.message, error.loc) == (message, at(line, col))
    assert str(error) == f"{FILE}:{line}:{col}: {message}"


def test_nesting_limit_is_exactly_32() -> None:
    deep = "model M { L { weight = " + "[" * 32 + "1" + "]" * 32 + " } }"
    (layer,) = only_model(deep).layers
    value = layer.entries[0].value
    for _ in range(32):
        assert isinstance(value, S.ListLit)
        (value,) = value.items
    assert value.value == 1


def test_brackets_inside_strings_and_comments_do_not_count_as_nesting() -> None:
    text = 'model M { # ' + "[" * 100 + '\n L { weight = load("' + "(" * 100 + '") } }'
    (layer,) = only_model(text).layers
    assert layer.entries[0].value.args[0].value.value == "(" * 100


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    ("data", "line", "col", "message"),
    [
        (b"model M {\n  fc = \xff\n}", 2, 8, "the file is not valid UTF-8 text (byte 0xff)"),
        (b"# caf\xc3\xa9 \xc3\n", 1, 8, "the file is not valid UTF-8 text (byte 0xc3)"),
        (b"model M {\n\n  ReLU \x00\n}", 3, 8, "the file contains a NUL character"),
        ("# é\nmodel \0M".encode(), 2, 7, "the file contains a NUL character"),
    ],
)
def test_decode_source_reports_bad_bytes_where_they_stand(
    data: bytes, line: int, col: int, message: str
) -> None:
    with pytest.raises(LayercError) as info:
        S.decode_source(data, FILE)
    assert (info.value.message, info.value.loc) == (message, at(line, col))


def test_decode_source_drops_a_byte_order_mark() -> None:
    text = S.decode_source(b"\xef\xbb\xbfmodel M { ReLU }", FILE)
    assert text == "model M { ReLU }"
    assert only_model(text).loc == at(1, 1)


# --------------------------------------------------------------------------- rendering


def rendered(data: bytes) -> str:
    """The error of a source as the CLI prints it (decoded as the CLI reads the file)."""
    with pytest.raises(LayercError) as info:
        S.parse(S.decode_source(data, FILE), FILE)
    return render(info.value, data.decode("utf-8", errors="replace"))


def test_render_shows_the_line_and_a_caret_under_the_column() -> None:
    assert rendered(b"model M {\n  fc = Linear(4 3)\n}\n") == (
        "t.lyr:2:17: unexpected '3'; expected ')' or ','\n"
        "      fc = Linear(4 3)\n" + " " * (4 + 16) + "^"
    )


def test_render_keeps_tabs_so_the_caret_lines_up() -> None:
    assert rendered(b"model M {\n\tfc = @\n}") == (
        "t.lyr:2:7: unexpected character '@'\n    \tfc = @\n    \t     ^"
    )


@pytest.mark.parametrize(
    "data",
    [
        "# a\u2028b\fc\x1cd\nmodel M {\n  fc = Lin @\n}\n".encode(),  # splitlines would split these
        b"# old Mac line end\r in a comment\nmodel M {\n  fc = Lin @\n}\n",
        b"# windows\r\nmodel M {\r\n  fc = Lin @\r\n}\r\n",
    ],
    ids=["unicode-separators", "lone-cr", "crlf"],
)
def test_render_counts_lines_as_the_lexer_does(data: bytes) -> None:
    assert rendered(data) == (
        "t.lyr:3:12: unexpected character '@'\n      fc = Lin @\n" + " " * (4 + 11) + "^"
    )


def test_render_after_a_byte_order_mark() -> None:
    assert rendered(b"\xef\xbb\xbfmodel M @") == (
        "t.lyr:1:9: unexpected character '@'\n    model M @\n" + " " * (4 + 8) + "^"
    )


def test_render_at_end_of_file() -> None:
    assert rendered(b"model M {\n") == (
        "t.lyr:2:1: unexpected end of file; expected '}' or a name\n    \n    ^"
    )


# --------------------------------------------------------------------------- list literals


def digit_matrix(side: int) -> tuple[str, np.ndarray]:
    """A side x side matrix of single digits written `[[3,1,...],...]`: two characters a
    number, the most numbers a megabyte can hold."""
    digits = np.random.default_rng(0).integers(0, 10, size=(side, side))
    text = "[" + ",\n".join("[" + ",".join(map(str, row)) + "]" for row in digits) + "]"
    return text, digits.astype(np.float64)


def decimal_matrix(side: int) -> tuple[str, np.ndarray]:
    """A side x side matrix of 7-decimal fractions with some comments, as exported weights
    look; the reference values are Python's float() of each number's text."""
    weights = np.random.default_rng(1).uniform(-1, 1, size=(side, side))
    rows = [[f"{v:.7f}" for v in row] for row in weights]
    text = "[" + ",  # a row\n".join("[" + ", ".join(row) + "]" for row in rows) + "]"
    return text, np.array([[float(t) for t in row] for row in rows])


def weight_of(program: S.Program) -> S.Value:
    (model,) = program.items
    return model.layers[0].entries[0].value


def in_model(literal: str) -> str:
    return f"model M {{\n    fc = Linear(1, 1) {{\n        weight = {literal}\n    }}\n}}\n"


@pytest.mark.parametrize("matrix", [digit_matrix, decimal_matrix], ids=["digits", "decimals"])
def test_a_megabyte_literal_parses_in_a_few_bytes_per_byte(matrix) -> None:
    """A ~1 MB weight literal: lark with one token and node per number took about 620 bytes of
    Python memory per byte of text (and 9 s); the list reader keeps the float64 values and a
    byte per number. Bounded at 40 bytes per byte, a wide margin over what it takes (~13)."""
    literal, expected = matrix(710 if matrix is digit_matrix else 280)
    text = in_model(literal)
    assert len(text) > 900_000
    tracemalloc.start()
    try:
        program = parse(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * len(text), f"{peak / len(text):.0f} bytes per byte"
    node = weight_of(program)
    assert isinstance(node, S.ListLit) and node.loc == at(3, 18)
    assert node.scan.shape == expected.shape
    np.testing.assert_array_equal(node.scan.values.reshape(expected.shape), expected)


def loc_at(text: str, offset: int) -> Loc:
    """The line and column of text[offset], counted with str methods."""
    return at(text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset))


def test_a_syntax_error_deep_in_a_large_literal_is_cheap_and_located() -> None:
    """A missing comma near the end of a ~1 MB literal: lark reports it, with its own message,
    having read a few tokens rather than the million before it."""
    literal, _ = digit_matrix(710)
    text = in_model(literal)
    cut = text.rindex(",", 0, len(text) - 40)
    text = text[:cut] + " " + text[cut + 1 :]
    tracemalloc.start()
    try:
        error = parse_error(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * len(text)
    assert error.message == f"unexpected {text[cut + 1]!r}; expected ',' or ']'"
    assert error.loc == loc_at(text, cut + 1)


def test_a_literal_longer_than_the_limit_is_refused_at_its_bracket(monkeypatch) -> None:
    """Both readers stop at MAX_LITERAL characters: a literal of numbers only and one with a
    name in it. The limit counts from '[' to ']' inclusive."""
    monkeypatch.setattr(S, "MAX_LITERAL", 40)
    exactly = "[" + "1, " * 11 + "12345]"
    assert len(exactly) == 40
    for literal in (exactly, exactly.replace("12345", "x2345")):
        assert isinstance(weight_of(parse(in_model(literal))), S.ListLit)
        longer = literal.replace("2345", "23456")
        error = parse_error(in_model(longer))
        assert error.message.startswith("this list literal is longer than 40 characters")
        assert error.loc == at(3, 18)
        # Refused before lark reads it, even with a syntax error further on.
        assert parse_error(in_model(longer[:-1] + " 2]")).message == error.message


def test_the_text_outside_literals_is_bounded_before_lark_reads_it(monkeypatch) -> None:
    """MAX_STRUCTURE counts the characters other than white space outside list literals (a
    literal's inside is free, its brackets count); the error stands at the first character
    past the limit, and comes before any syntax error lark would find further on."""
    text = "model A {\n  fc = Linear(2, 2) { weight = [[1, 2], [3, 4]] }\n}\n"
    outside = sum(len(run) for run in re.sub(r"\[\[.*\]\]", "[]", text).split())
    monkeypatch.setattr(S, "MAX_STRUCTURE", outside)
    assert parse(text).items[0].name == "A"
    monkeypatch.setattr(S, "MAX_STRUCTURE", outside - 1)
    error = parse_error(text + "model !")
    assert error.message.startswith(f"this source has more than {outside - 1} characters")
    assert error.loc == loc_at(text, text.rindex("}"))


def test_a_long_source_is_refused_in_bounded_memory() -> None:
    """Without the bound, lark reads a few megabytes of layers at 150-300 bytes of memory per
    character; with it, the source is refused after a linear scan."""
    layers = "".join(f"    l{i} = ReLU()\n" for i in range(S.MAX_STRUCTURE // 8))
    text = "model A {\n" + layers + "}\n"
    tracemalloc.start()
    try:
        error = parse_error(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert error.message.startswith(f"this source has more than {S.MAX_STRUCTURE} characters")
    assert peak < 8 * len(text), peak


def test_list_entries_are_nodes_with_their_locations() -> None:
    """`items` gives the entries of any list literal as nodes, located as lark places them."""
    text = in_model('[[1, -inf], # note\n  [x, "s"], f(1, k=[2]), true]')
    node = weight_of(parse(text))
    first, second, call, flag = node.items
    assert first.items == (
        S.Number(1.0, True, "1", at(3, 20)),
        S.Number(-math.inf, False, "-inf", at(3, 23)),
    )
    assert second.items == (S.Name("x", at(4, 4)), S.String("s", at(4, 7)))
    assert (call.func, call.loc) == ("f", loc_at(text, text.index("f(")))
    assert flag == S.Bool(True, loc_at(text, text.index("true")))
    (keyword,) = [a for a in call.args if a.name == "k"]
    assert keyword.value.loc == loc_at(text, text.index("[2]"))
    assert keyword.value.items[0].loc == loc_at(text, text.index("2]"))
    assert node.calls == (call,)
    assert node.scan.problem == S.Problem(text.index("x,"))


# The spellings a number can have, and the other values a list may hold.
_NUMBER_SPELLINGS = st.one_of(
    st.sampled_from(
        ["0", "-0", "7", "+3", "0.5", ".5", "-.25", "2.", "+2.", "3e-4", "1E+3", "-6.5e2",
         "1e400", "-1e-400", "00012", "inf", "-inf", "+inf", "nan", "-nan", "+nan"]
    ),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**30), 10**30).map(str),
)
_OTHER_VALUES = st.sampled_from(
    ["x", "NaN", "infinity", "true", "false", '"s"', '"a\\"b"', "f()", "load(\"w.npy\", k=[1, x])"]
)
_GAPS = st.sampled_from(["", " ", "\n", "  ", " # note\n", "\t", "\r\n"])


@st.composite
def list_literals(draw, depth: int = 3, numbers_only: bool = False) -> str:
    """A list literal's text: numbers (and, unless `numbers_only`, other values) in nested
    lists, rectangular or ragged, with whitespace, comments and trailing commas between."""
    count = draw(st.integers(0, 4))
    entries = []
    for _ in range(count):
        if depth > 0 and draw(st.booleans()):
            entries.append(draw(list_literals(depth - 1, numbers_only)))
        elif numbers_only or draw(st.integers(0, 5)):
            entries.append(draw(_NUMBER_SPELLINGS))
        else:
            entries.append(draw(_OTHER_VALUES))
    gaps = [draw(_GAPS) for _ in range(2 * count + 2)]
    body = "".join(f"{gaps[2 * i]}{e}{gaps[2 * i + 1]}," for i, e in enumerate(entries))
    if entries and not draw(st.booleans()):
        body = body[:-1]  # no trailing comma
    return "[" + body + gaps[-1] + "]"


@st.composite
def damaged(draw, text: str) -> str:
    """`text` with up to two characters deleted, replaced or inserted."""
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(text)))
        new = draw(st.sampled_from(list("[](){},;=@-+.e\"#\n 1x")) | st.just(""))
        text = text[:i] + new + text[i + draw(st.integers(0, 1)) :]
    return text


def reference_array(value: S.Value):
    """What a literal means as an array, from the entries lark builds (`items`), by the
    definition: every list's entries have the shape of its first; the first entry that is
    not a number or breaks that rule, in reading order, is the problem."""

    class Bad(Exception):
        pass

    numbers: list[S.Number] = []

    def shape(v: S.Value) -> tuple[int, ...]:
        if isinstance(v, S.Number):
            numbers.append(v)
            return ()
        if not isinstance(v, S.ListLit):
            raise Bad(v.loc, None, None)
        shapes = [shape(item) for item in v.items]
        for item, s in zip(v.items, shapes, strict=True):
            if s != shapes[0]:
                raise Bad(item.loc, s, shapes[0])
        return (len(shapes), *shapes[0]) if shapes else (0,)

    try:
        return shape(value), numbers
    except Bad as bad:
        return bad.args, None


def outcome(function) -> object:
    try:
        return function()
    except LayercError as error:
        return (error.message, error.loc)


@given(list_literals().flatmap(damaged), st.booleans())
@settings(max_examples=500, deadline=None)
def test_list_literals_read_as_lark_reads_them(literal: str, fast: bool) -> None:
    """Any list text, valid or damaged: the list readers refuse exactly what lark refuses, with
    lark's message at lark's place; what they accept means what lark's own tree of it means
    (shape, first problem, each number as Python's float() reads its text). With `fast`, the
    NumPy reader takes every literal of numbers, however short."""
    with mock.patch.object(S, "_FAST_MIN", 0 if fast else S._FAST_MIN):
        check_against_lark(in_model(literal))


def check_against_lark(text: str) -> None:
    lark_alone = outcome(lambda: S._lark_parse(text, FILE))
    program = outcome(lambda: parse(text))
    if isinstance(lark_alone, tuple):
        assert program == lark_alone
        return
    strings = [t for t in S._parser().lex(text) if t.type == "STRING"]
    escapes = [(t, m) for t in strings for m in re.finditer(r"\\(.)", str(t)[1:-1])]
    bad = [(t, m) for t, m in escapes if m.group(1) not in '"\\']
    if bad:  # the first unknown escape in the text is the error
        token, m = bad[0]
        assert program == (
            f"unknown escape '\\{m.group(1)}' in string: only \\\" and \\\\ are escapes",
            at(token.line, token.column + 1 + m.start()),
        )
        return
    assert isinstance(program, S.Program), program
    node = weight_of(program)
    if not isinstance(node, S.ListLit):
        return  # the damage made it something else (a number, a call)
    shape, numbers = reference_array(node)
    scan = node.scan
    if numbers is None:
        loc, bad_shape, first_shape = shape
        problem = scan.problem
        assert problem is not None and node.offset_loc(problem.offset) == loc
        assert (problem.shape, problem.first_shape) == (bad_shape, first_shape)
        return
    assert scan.problem is None and scan.shape == shape
    expected = np.array([float(n.text) for n in numbers], dtype=np.float64)
    np.testing.assert_array_equal(scan.values.view(np.uint64), expected.view(np.uint64))
    integer = [bool(re.fullmatch(r"[+-]?[0-9]+", n.text)) for n in numbers]
    assert [k == S.INT for k in scan.kinds] == integer
    assert node.number_locs(range(len(numbers))) == {i: n.loc for i, n in enumerate(numbers)}


@st.composite
def rectangular_literals(draw) -> str:
    """A list of numbers of a drawn shape (sizes 0 to 3, up to 4 deep)."""
    shape = draw(st.lists(st.integers(0, 3), min_size=1, max_size=4))

    def build(dims: list[int]) -> str:
        if not dims:
            return draw(_NUMBER_SPELLINGS)
        entries = [build(dims[1:]) for _ in range(dims[0])]
        return "[" + draw(_GAPS) + f",{draw(_GAPS)}".join(entries) + draw(_GAPS) + "]"

    return build(shape)


@given((list_literals(numbers_only=True) | rectangular_literals()).flatmap(damaged))
@settings(max_examples=500, deadline=None)
def test_the_fast_and_the_general_reader_agree(literal: str) -> None:
    """A list of numbers is read by NumPy passes over its text; the token-by-token reader must
    read it the same. The NumPy reader leaves anything else to it: ragged lists, and text
    that is no list of numbers at all."""
    assume(literal.startswith("["))
    end = S._numeric_end(literal, 0, len(literal))
    fast = S._scan_numeric(literal, 0, end) if isinstance(end, int) else None
    try:
        slow = S._ListReader(literal, 0, len(literal)).read()
    except S._Stop:
        assert fast is None
        return
    if fast is None:
        assert not isinstance(end, int) or slow.problem is not None
        return
    assert isinstance(fast, S.ListScan)
    assert (fast.end, fast.shape, fast.problem) == (slow.end, slow.shape, None)
    np.testing.assert_array_equal(fast.values.view(np.uint64), slow.values.view(np.uint64))
    np.testing.assert_array_equal(fast.kinds, slow.kinds)
