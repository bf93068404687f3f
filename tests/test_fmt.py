"""`layerc fmt`: the canonical layout, comments kept in order, idempotence, and meaning kept:
the program checked before and after formatting gives identical models, weights and tests (on
the samples, the docs' examples and hypothesis-generated programs with comments anywhere)."""

from __future__ import annotations

import bisect
import os
import re
import stat
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from functools import lru_cache
from pathlib import Path

import lark
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark import Token, Tree

from layerc import ir, syntax
from layerc.check import check
from layerc.cli import main
from layerc.errors import LayercError
from layerc.tools.fmt import INDENT, WIDTH, format_source

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- comparisons


def syntax_shape(node: object) -> object:
    """A syntax tree without locations (and without whether a layer wrote its parentheses,
    which fmt normalises and the checker ignores), for comparing meaning."""
    if isinstance(node, tuple):
        return tuple(syntax_shape(n) for n in node)
    if isinstance(node, syntax.ListLit):  # read lazily from the text: compare its entries
        return ("ListLit", syntax_shape(node.items))
    if is_dataclass(node) and not isinstance(node, type):
        skip = {"loc", "kind_loc", "name_loc", "model_loc", "shape_loc", "has_parens", "file"}
        values = tuple(
            (f.name, syntax_shape(getattr(node, f.name)))
            for f in fields(node)
            if f.name not in skip
        )
        return (type(node).__name__, values)
    if isinstance(node, float) and np.isnan(node):
        return "nan"
    return node


def assert_same_ir(a: ir.Program, b: ir.Program) -> None:
    """Same models (names, dtypes, sizes, layers, weights bit for bit) and same tests."""
    assert [m.name for m in a.models] == [m.name for m in b.models]
    for ma, mb in zip(a.models, b.models, strict=True):
        assert_same_model(ma, mb)
    assert len(a.tests) == len(b.tests)
    for ta, tb in zip(a.tests, b.tests, strict=True):
        assert ta.model.name == tb.model.name
        assert (ta.atol, ta.rtol) == (tb.atol, tb.rtol)
        for xa, xb in zip(ta.inputs + ta.expects, tb.inputs + tb.expects, strict=True):
            assert_same_array(xa, xb)


def assert_same_model(a: ir.Model, b: ir.Model) -> None:
    assert (a.name, a.dtype, a.in_features, a.out_features, a.allow_nonfinite) == (
        b.name,
        b.dtype,
        b.in_features,
        b.out_features,
        b.allow_nonfinite,
    )
    assert (a.graph is None) == (b.graph is None)
    if a.graph is not None and b.graph is not None:  # the forward block: same values and ops
        assert syntax_shape(a.graph.inputs) == syntax_shape(b.graph.inputs)
        assert syntax_shape(a.graph.body) == syntax_shape(b.graph.body)
        assert syntax_shape(a.graph.result) == syntax_shape(b.graph.result)
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert type(la) is type(lb) and la.name == lb.name
        if isinstance(la, ir.Layer):
            assert isinstance(lb, ir.Layer)
            assert (la.kind, la.args) == (lb.kind, lb.args)
            assert (la.in_shape, la.out_shape) == (lb.in_shape, lb.out_shape)
            assert [key for key, _ in la.tensors] == [key for key, _ in lb.tensors]
            for (_, ta), (_, tb) in zip(la.tensors, lb.tensors, strict=True):
                assert (ta is None) == (tb is None)
                if ta is not None:
                    assert_same_array(ta, tb)
        else:
            assert isinstance(la, ir.Submodel) and isinstance(lb, ir.Submodel)
            assert la.model.name == lb.model.name


def assert_same_array(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def comment_texts(text: str) -> list[str]:
    from layerc.syntax import _parser

    return [str(t).rstrip() for t in _parser().lex(text, dont_ignore=True) if t.type == "COMMENT"]


def check_text(text: str, base: Path) -> ir.Program | str:
    """The checked program, or the error message (without its location)."""
    try:
        return check(syntax.parse(text, "f.lyr"), base)
    except LayercError as exc:
        return exc.message


def assert_formats_well(text: str, base: Path) -> str:
    """fmt keeps meaning, comments and is idempotent on `text`; return the formatted text."""
    out = format_source(text)
    if not re.search(r"\bforward\s*\(", text):
        # The oracle predates forward blocks and tuples; tests/test_forward_syntax.py checks
        # their layout.
        assert out == old_format_source(text), "not the layout of the tree formatter (the oracle)"
    assert format_source(out) == out, "formatting is not idempotent"
    assert syntax_shape(syntax.parse(out).items) == syntax_shape(syntax.parse(text).items)
    assert comment_texts(out) == comment_texts(text)
    before, after = check_text(text, base), check_text(out, base)
    if isinstance(before, str):
        assert after == before
    else:
        assert isinstance(after, ir.Program)
        assert_same_ir(before, after)
    return out


# --------------------------------------------------------------------------- the layout

MESSY = """\
# header comment

# about Enc
model Enc(dtype=float32,) {   # trailing on model
    fc = Linear(4,3,bias=false){weight=[[1,2,3,4],[2,3,4,5],[3,4,5,6]];}  # fc
    ReLU;


    # own line before act
    act = LeakyReLU(negative_slope=0.2)
}
model Net {
  enc = Enc
  head = Linear(3, 2) {
     weight = [[1, 2, 3],   # row 0
               [4, 5, 6]]   # row 1
     bias = [0.5,
             # inside
             -0.5]
  }
  # end of body
}
test Net { input = [1,2,3,4]; expect = [0, 0]; atol = 1e9 }
# the end
"""

CANONICAL = """\
# header comment

# about Enc
model Enc(dtype=float32) {  # trailing on model
    fc = Linear(4, 3, bias=false) {
        weight = [[1, 2, 3, 4],
                  [2, 3, 4, 5],
                  [3, 4, 5, 6]]
    }  # fc
    ReLU()

    # own line before act
    act = LeakyReLU(negative_slope=0.2)
}

model Net {
    enc = Enc()
    head = Linear(3, 2) {
        weight = [
            [1, 2, 3],  # row 0
            [4, 5, 6],
        ]  # row 1
        bias = [
            0.5,
            # inside
            -0.5,
        ]
    }
    # end of body
}

test Net {
    input = [1, 2, 3, 4]
    expect = [0, 0]
    atol = 1e9
}
# the end
"""


def test_canonical_layout(tmp_path: Path) -> None:
    assert assert_formats_well(MESSY, tmp_path) == CANONICAL


def test_comments_in_awkward_places_are_kept(tmp_path: Path) -> None:
    """A comment where the layout has no line break (inside a layer header, between a name and
    its '=') breaks the line there and continues one level deeper; what is inside brackets
    goes one level deeper than the line the bracket is on."""
    text = textwrap.dedent(
        """\
        model # a
        A { fc # b
        = # c
        Linear(2, 2, bias # d
        = false) { init
        # e
        = uniform(seed=0) } }
        """
    )
    out = assert_formats_well(text, tmp_path)
    assert out == textwrap.dedent(
        """\
        model  # a
            A {
                fc  # b
                    =  # c
                        Linear(
                            2,
                            2,
                            bias  # d
                                =false,
                        ) {
                            init
                                # e
                                = uniform(seed=0)
                        }
            }
        """
    )


def test_long_lists_wrap_at_the_width(tmp_path: Path) -> None:
    values = ", ".join(f"{i}.125" for i in range(60))
    text = f"model A {{ fc = Linear(60, 1, bias=false) {{ weight = [[{values}]] }} }}\n"
    out = assert_formats_well(text, tmp_path)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    assert sum("weight" in line for line in lines) == 1 and len(lines) > 5
    # continuation lines are aligned under the first number
    first = next(line for line in lines if "weight" in line)
    column = first.index("[[") + 2
    assert all(line[:column].strip() == "" for line in lines[lines.index(first) + 1 : -3])


def test_numbers_and_strings_are_copied_as_written(tmp_path: Path) -> None:
    text = "model A(allow_nonfinite=true){fc=Linear(2,1){weight=[[+2., -.5e-3]]; bias=[-inf]}}\n"
    out = assert_formats_well(text, tmp_path)
    assert "[[+2., -.5e-3]]" in out and "[-inf]" in out
    text = 'model A { fc = Linear(2, 1) { weight = load("we\\"ird\\\\.npz", "k") } }\n'
    out = format_source(text)
    assert 'load("we\\"ird\\\\.npz", "k")' in out


def test_empty_and_comment_only_files() -> None:
    assert format_source("") == ""
    assert format_source("\n\n  # only a comment   \n\n\n# two\n") == "# only a comment\n\n# two\n"


def test_syntax_errors_are_reported_as_the_compiler_does() -> None:
    with pytest.raises(LayercError) as info:
        format_source("model A { fc = Linear(2, 2 }\n", "bad.lyr")
    assert str(info.value).startswith("bad.lyr:1:")
    with pytest.raises(LayercError) as info:
        format_source("modle A {}\n", "bad.lyr")
    assert "did you mean 'model'?" in info.value.message


# --------------------------------------------------------------------------- samples and docs


def _example_sources() -> list[tuple[str, str, Path]]:
    """(name, text, folder) for every sample .lyr file and every ```lyr block of the docs."""
    found = [
        (str(p.relative_to(ROOT)), p.read_text(encoding="utf-8"), p.parent)
        for p in sorted((ROOT / "samples").rglob("*.lyr"))
    ]
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for i, block in enumerate(re.findall(r"^```lyr[^\n]*\n(.*?)^```", text, re.M | re.S)):
            found.append((f"{page.name}#{i}", block, page.parent))
    return found


@pytest.mark.parametrize(
    "text,folder", [pytest.param(t, f, id=name) for name, t, f in _example_sources()]
)
def test_examples_keep_their_meaning(text: str, folder: Path) -> None:
    assert_formats_well(text, folder)


# --------------------------------------------------------------------------- generated programs

_NUMBERS = ["0", "1", "-2", "3.5", "+4.", "-.25", "1e-3", "2E+1", "-0.0", "7"]
_COMMENT = st.text(alphabet='abc xyz,;{}[]()#="\\', max_size=8).map(lambda s: "#" + s)


@st.composite
def gaps(draw: st.DrawFn) -> str:
    """What may stand between two tokens: space, newlines, comments (each ended by a newline)."""
    kind = draw(
        st.sampled_from(["space", "space", "newline", "blank", "trailing", "own", "tab", "crlf"])
    )
    if kind == "space":
        return " "
    if kind == "crlf":
        return f"  {draw(_COMMENT)}\r\n" if draw(st.booleans()) else "\r\n"
    if kind == "tab":
        return "\t "
    if kind == "newline":
        return "\n  "
    if kind == "blank":
        return "\n\n"
    comment = draw(_COMMENT)
    return f"  {comment}\n" if kind == "trailing" else f"\n{comment}\n"


@st.composite
def programs(draw: st.DrawFn) -> list[str]:
    """A program as a list of tokens: models that mostly check (sizes chain, weights fit), a
    test, optional separators and trailing commas, layers with and without names and parens."""
    tokens: list[str] = []
    models: list[tuple[str, int, int]] = []
    for m in range(draw(st.integers(1, 3))):
        name = f"M{m}"
        width = draw(st.integers(1, 3))
        first = width
        tokens += ["model", name]
        if draw(st.booleans()):
            tokens += ["(", "dtype", "=", "float32", ")"]
        tokens += ["{"]
        for position in range(draw(st.integers(1, 3))):
            choice = (
                "linear"
                if position == 0
                else draw(st.sampled_from(["linear", "act", "act", "sub"]))
            )
            fits = [n for n, i, _ in models if i == width]
            if choice == "sub" and not fits:
                choice = "act"
            if draw(st.booleans()):
                tokens += [f"l{position}", "="]
            if choice == "linear":
                out = draw(st.integers(1, 3))
                bias = draw(st.booleans())
                tokens += ["Linear", "(", str(width), ",", str(out)]
                if not bias:
                    tokens += [",", "bias", "=", "false"]
                if draw(st.booleans()):
                    tokens += [","]
                tokens += [")", "{"]
                if draw(st.booleans()):
                    tokens += ["init", "=", "uniform", "(", "seed", "=", str(position), ")"]
                else:
                    tokens += ["weight", "=", *matrix(draw, out, width)]
                    if bias:
                        tokens += [draw(st.sampled_from(["", ";", ","]))]
                        tokens += ["bias", "=", *vector(draw, out)]
                tokens += ["}"]
                width = out
            elif choice == "act":
                kind = draw(st.sampled_from(["ReLU", "Tanh", "Sigmoid", "Identity", "LeakyReLU"]))
                tokens += [kind]
                if kind == "LeakyReLU":
                    tokens += ["(", "negative_slope", "=", draw(st.sampled_from(_NUMBERS)), ")"]
                elif draw(st.booleans()):
                    tokens += ["(", ")"]
            else:
                sub = draw(st.sampled_from(fits))
                tokens += [sub]
                width = next(o for n, _, o in models if n == sub)
            tokens += [draw(st.sampled_from(["", "", ";", ","]))]
        tokens += ["}"]
        models.append((name, first, width))
    name, first, last = draw(st.sampled_from(models))
    if draw(st.booleans()):
        tokens += [
            "test",
            name,
            "{",
            "input",
            "=",
            *vector(draw, first),
            "expect",
            "=",
            *vector(draw, last),
            "atol",
            "=",
            "1e9",
            "}",
        ]
    return [t for t in tokens if t]


def vector(draw: st.DrawFn, n: int) -> list[str]:
    items = [draw(st.sampled_from(_NUMBERS)) for _ in range(n)]
    tokens = ["["]
    for i, item in enumerate(items):
        tokens += ([","] if i else []) + [item]
    if draw(st.booleans()):
        tokens += [","]
    return tokens + ["]"]


def matrix(draw: st.DrawFn, rows: int, cols: int) -> list[str]:
    tokens = ["["]
    for r in range(rows):
        tokens += ([","] if r else []) + vector(draw, cols)
    return tokens + ["]"]


@st.composite
def program_texts(draw: st.DrawFn) -> str:
    tokens = draw(programs())
    parts = [tokens[0]]
    for token in tokens[1:]:
        parts.append(draw(gaps()))
        parts.append(token)
    return "".join(parts) + draw(st.sampled_from(["", "\n", "  # end\n", "\n\n# tail\n"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program_texts())
def test_generated_programs_keep_their_meaning(text: str) -> None:
    assert_formats_well(text, Path("."))


def test_generated_programs_mostly_check(tmp_path: Path) -> None:
    """The generator is worth its time: most of its programs pass the checker, so the meaning
    test compares real models, not just error messages."""
    from hypothesis import find

    ok = find(
        program_texts(),
        lambda t: isinstance(check_text(t, tmp_path), ir.Program) and "#" in t and "model M1" in t,
    )
    assert isinstance(check_text(ok, tmp_path), ir.Program)


# --------------------------------------------------------------------------- list literals
#
# fmt lays list literals out from their own text, in time and memory linear in it, and the rest
# of the program from the compiler's syntax tree (layerc.printer). The layout must be
# byte for byte the one of the formatter that laid out lark's tree of the whole text: that
# formatter is kept at the end of this file as the oracle (`old_format_source`), and these
# tests compare the two on sources whose values are anything the grammar allows (the checker is
# not involved: fmt only needs the syntax right).

_WORDS = ["inf", "nan", "-inf", "+nan", "+inf", "-nan", "true", "false", "x", "relu", "_k9"]
_SCALAR = st.one_of(
    st.sampled_from(_NUMBERS + _WORDS),
    st.integers(-(10**15), 10**15).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(alphabet='ab #[](),;{}="\\\t\r\u00e9\u2028', max_size=6).map(
        lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ),
)


def bracketed(draw: st.DrawFn, opening: str, items: list[list[str]], closing: str) -> list[str]:
    tokens = [opening]
    for i, item in enumerate(items):
        tokens += ([","] if i else []) + item
    if items and draw(st.booleans()):
        tokens.append(",")
    return tokens + [closing]


@st.composite
def values(draw: st.DrawFn, depth: int = 0) -> list[str]:
    """A value as tokens: a scalar, a list of scalars (long enough to wrap at WIDTH), a list
    of values (of rows alike, a matrix, or of anything) or a call with positional and keyword
    arguments, nested up to 4 deep."""
    kinds = ["scalar", "row", "row", "matrix", "list", "call"] if depth < 4 else ["scalar", "row"]
    kind = draw(st.sampled_from(kinds))
    if kind == "scalar":
        return [draw(_SCALAR)]
    if kind == "row":
        return bracketed(draw, "[", [[draw(_SCALAR)] for _ in range(draw(st.integers(0, 30)))], "]")
    if kind == "matrix":
        width = draw(st.integers(0, 20))
        rows = [
            bracketed(draw, "[", [[draw(_SCALAR)] for _ in range(width)], "]")
            for _ in range(draw(st.integers(1, 4)))
        ]
        return bracketed(draw, "[", rows, "]")
    if kind == "list":
        items = [draw(values(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
        return bracketed(draw, "[", items, "]")
    return [draw(st.sampled_from(["f", "load", "inf"])), *arguments(draw, depth + 1)]


def arguments(draw: st.DrawFn, depth: int) -> list[str]:
    args = []
    for _ in range(draw(st.integers(0, 3))):
        value = draw(values(depth))
        keyword = draw(st.sampled_from([None, None, "k", "seed"]))
        args.append([keyword, "=", *value] if keyword else value)
    return bracketed(draw, "(", args, ")")


@st.composite
def literal_programs(draw: st.DrawFn) -> list[str]:
    """A program as tokens, with values in every place the grammar has one: model options,
    layer arguments, entries of layers and tests, arguments of calls outside lists."""
    tokens: list[str] = []
    for i in range(draw(st.integers(1, 2))):
        if draw(st.booleans()):
            tokens += ["test", f"T{i}", "{"]
            for name in draw(st.lists(st.sampled_from(["x", "input", "long_name"]), max_size=3)):
                tokens += [name, "=", *draw(values()), draw(st.sampled_from(["", ";", ","]))]
        else:
            tokens += ["model", f"M{i}"]
            if draw(st.booleans()):
                tokens += arguments(draw, 1)
            tokens += ["{"]
            for j in range(draw(st.integers(0, 2))):
                if draw(st.booleans()):
                    tokens += [f"l{j}", "="]
                tokens += ["Linear"]
                if draw(st.booleans()):
                    tokens += arguments(draw, 1)
                if draw(st.booleans()):
                    tokens += ["{"]
                    for name in draw(st.lists(st.sampled_from(["w", "weight_matrix"]), max_size=2)):
                        tokens += [name, "=", *draw(values()), draw(st.sampled_from(["", ";"]))]
                    tokens += ["}"]
                tokens += [draw(st.sampled_from(["", "", ";", ","]))]
        tokens += ["}"]
    return [t for t in tokens if t]


@st.composite
def literal_texts(draw: st.DrawFn) -> str:
    """A program's tokens joined by white space only (so that long lists fill lines up to
    WIDTH), or by any gap, comments in and between brackets included."""
    tokens = draw(literal_programs())
    plain = st.sampled_from([" ", " ", " ", "\n", "\n    ", "\t", "\r\n"])
    spacing = plain if draw(st.booleans()) else gaps()
    parts = [draw(st.sampled_from(["", "# head\n"])), tokens[0]]
    for token in tokens[1:]:
        parts.append(draw(spacing))
        parts.append(token)
    return "".join(parts) + draw(st.sampled_from(["", "\n", "  # end\n"]))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(literal_texts())
def test_lists_are_laid_out_as_by_the_tree_formatter(text: str) -> None:
    """Byte for byte the oracle's output, on nested lists, matrices, rows that wrap, calls,
    strings and names in lists, and comments in and between brackets."""
    out = format_source(text)
    assert out == old_format_source(text)
    assert format_source(out) == out


CORNERS = [
    # rows that end at column 99, at 100 and (one character longer) wrap
    *(
        f"test T {{ {'x' * n} = [{', '.join(['1234567'] * 9)}, {'9' * k}] }}\n"
        for n in (1, 4)
        for k in (5, 6, 7)
    ),
    # rows wrap aligned after their bracket, inside a matrix, a call and layer arguments
    "test T { x = [[" + ", ".join(f"{i}.5" for i in range(40)) + "], [1]] }\n",
    "model M { fc = Linear([" + ", ".join(["12345"] * 30) + "], 3) { w = 1 } }\n",
    "test T { init = f(k=[" + ", ".join(["-.25e-3"] * 20) + "], [[1, 2], [3]]) }\n",
    'test T { x = [f(1, k=[1, 2]), [3, 4], g()] ; y = [f(), "a", nan] }\n',
    # comments in rows, between rows, in calls, between a call's name and its '('
    "test T { x = [[1, 2],  # first\n [3, 4]  # second\n ] }\n",
    "test T { x = [  # open\n 1, 2,\n # own line\n 3] }\n",
    "test T { x = [f # name\n (1, # one\n k # key\n = 2), 3] }\n",
    "test T { x = [[1, [2,  # deep\n 3]], [4]] ; y = [f(g(1 # deep\n ))] }\n",
    "model M { fc = Linear(2, [1, # c\n 2]) }\n",
    "model M([1 # c\n ]) { }\n",
    'test T { x = ["#", "[", "]", "(", "\\"", "\\\\"] # " [ \n }\n',
    # empty lists, trailing commas, nesting to the limit
    "test T { x = [] ; y = [[], [ ], [1,]] }\n",
    "test T { x = " + "[" * 32 + "1" + "]" * 32 + " }\n",
    "test T { x = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]] }\n",
    # a blank line after a literal that spans lines, and before one
    "test T {\n x = [1,\n\n 2]\n\n y = 3\n\n z = [4]\n}\n",
    "test T {\n x = [1,\n\n 2]\n y = [[3],\n\n [4]]\n z = 5\n}\n",
]


@pytest.mark.parametrize("text", CORNERS)
def test_corner_cases_are_laid_out_as_by_the_tree_formatter(text: str) -> None:
    """The oracle's output where a slip would show: at WIDTH, in comments, at the limits."""
    assert format_source(text) == old_format_source(text)


def test_formatting_a_large_literal_is_linear() -> None:
    """A 1 MB weight literal of single digits (the most numbers per byte) formats in a small
    multiple of its size in memory (the compiler's own parse included) and in well under a
    second of CPU time. Laid out from lark's tree of the whole text, as the oracle does, it took
    about 570 bytes and 11 us of CPU per source byte. Measured with tracemalloc and
    process_time, so that other processes do not count."""
    side = 700
    digits = np.random.default_rng(0).integers(0, 10, size=(side, side))
    rows = ",\n".join("[" + ",".join(map(str, row)) + "]" for row in digits)
    text = (
        f"model Big {{\n    fc = Linear({side}, {side}, bias=false) {{\n"
        f"        weight = [{rows}]\n    }}\n}}\n"
    )
    assert len(text) > 980_000
    start = time.process_time()
    out = format_source(text)
    cpu = time.process_time() - start
    tracemalloc.start()
    try:
        format_source(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * len(text), f"peak {peak / len(text):.0f} bytes per source byte"
    assert cpu < 3e-6 * len(text), f"{cpu:.1f} s of CPU"
    lines = out.splitlines()
    assert max(map(len, lines)) <= WIDTH and lines[2].startswith("        weight = [[")
    assert re.findall(r"\d", out[out.index("weight") :]) == [str(d) for d in digits.flat]


# --------------------------------------------------------------------------- the command


def test_cli_check_and_rewrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messy = tmp_path / "messy.lyr"
    clean = tmp_path / "clean.lyr"
    messy.write_text(MESSY, encoding="utf-8")
    clean.write_text(CANONICAL, encoding="utf-8")
    os.chmod(messy, 0o640)
    clean_mtime = clean.stat().st_mtime_ns

    assert main(["fmt", "--check", str(messy), str(clean)]) == 1
    out, err = capsys.readouterr()
    assert out == f"would reformat {messy}\n"
    assert "1 file would be reformatted, 1 unchanged" in err
    assert messy.read_text(encoding="utf-8") == MESSY  # --check writes nothing

    assert main(["fmt", str(messy), str(clean)]) == 0
    out, _ = capsys.readouterr()
    assert out == f"reformatted {messy}\n"
    assert messy.read_text(encoding="utf-8") == CANONICAL
    assert stat.S_IMODE(messy.stat().st_mode) == 0o640  # the file keeps its permissions
    assert clean.stat().st_mtime_ns == clean_mtime  # an unchanged file is not rewritten
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    assert main(["fmt", "--check", str(messy), str(clean)]) == 0


def test_cli_reports_errors_and_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.lyr"
    bad.write_text("model A {\n    fc = Linear(2, 2 {\n}\n", encoding="utf-8")
    messy = tmp_path / "messy.lyr"
    messy.write_text(MESSY, encoding="utf-8")
    assert main(["fmt", str(bad), str(messy), str(tmp_path / "missing.lyr")]) == 1
    out, err = capsys.readouterr()
    assert f"{bad}:2:22: unexpected '{{'" in err
    assert "    fc = Linear(2, 2 {\n" in err and "Traceback" not in err
    assert f"{tmp_path / 'missing.lyr'}: cannot read the file" in err
    assert out == f"reformatted {messy}\n"
    assert bad.read_text(encoding="utf-8") == "model A {\n    fc = Linear(2, 2 {\n}\n"


def test_cli_stdin_to_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(MESSY.encode("utf-8"))))
    assert main(["fmt", "-"]) == 0
    assert capsys.readouterr().out == CANONICAL


def test_cli_writes_through_a_symlink_and_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Formatting a symlinked source rewrites the file the link points to, in its own folder
    and with its own permissions, and leaves the link a link."""
    real = tmp_path / "real"
    real.mkdir()
    target = real / "messy.lyr"
    target.write_text(MESSY, encoding="utf-8")
    os.chmod(target, 0o640)
    link = tmp_path / "link.lyr"
    link.symlink_to(Path("real") / "messy.lyr")

    assert main(["fmt", str(link)]) == 0
    assert capsys.readouterr().out == f"reformatted {link}\n"
    assert link.is_symlink() and os.readlink(link) == str(Path("real") / "messy.lyr")
    assert target.read_text(encoding="utf-8") == CANONICAL
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["link.lyr", "messy.lyr", "real"]


def test_cli_reads_only_regular_files(tmp_path: Path) -> None:
    """A FIFO (reading it would block forever) and a device (reading /dev/zero never ends) are
    refused at once, each with its own error; the other files are formatted."""
    import subprocess
    import sys

    os.mkfifo(tmp_path / "pipe.lyr")
    (tmp_path / "zero.lyr").symlink_to("/dev/zero")
    (tmp_path / "messy.lyr").write_text(MESSY, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "layerc", "fmt", "pipe.lyr", "zero.lyr", "messy.lyr"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    refused = "is not a regular file (a device, pipe or socket), so layerc will not read it"
    assert (result.returncode, result.stdout) == (1, "reformatted messy.lyr\n")
    assert result.stderr == (
        f"pipe.lyr: {refused}\nzero.lyr: {refused}\n1 file reformatted, 0 unchanged\n"
    )
    assert (tmp_path / "messy.lyr").read_text(encoding="utf-8") == CANONICAL


# =========================================================================== test oracle
#
# TEST ORACLE, NOT PRODUCT CODE: the formatter as it was before it laid list literals out from
# their own text (layerc/tools/fmt.py up to that change), copied here as the reference that the
# differential tests above compare `format_source` with, byte for byte. It lays out lark's tree
# of the whole text, all tokens kept, which costs hundreds of bytes per source byte: only for
# small sources. Do not "fix" it to follow the product: a difference is what the tests look for.

_OLD_SCALARS = ("number", "true", "false", "string", "name")


@lru_cache(maxsize=1)
def _old_parser() -> lark.Lark:
    return lark.Lark(
        syntax.grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="basic",
        propagate_positions=True,
        maybe_placeholders=False,
        keep_all_tokens=True,
    )


def old_format_source(text: str, file: str = "<string>") -> str:
    syntax.parse(text, file)
    tree = _old_parser().parse(text)
    comments = [t for t in _old_parser().lex(text, dont_ignore=True) if t.type == "COMMENT"]
    printer = _OldPrinter(text, comments)
    _OldLayout(printer).program(tree)
    return printer.finish()


@dataclass
class _OldBreak:
    """A pending line break: the next token starts a line at `indent`; comments flushed before
    it go at `comment_indent`; `blank` says whether a blank line may come first ("none"),
    comes first ("force") or comes where the source had one ("keep")."""

    indent: int
    comment_indent: int
    blank: str


class _OldPrinter:
    """Collects output lines. Tokens carry their source position, so the comments that came
    before a token in the source are written out just before it."""

    def __init__(self, text: str, comments: list[Token]) -> None:
        self.text = text
        self.comments = comments
        self.comment_starts = [_old_start(c) for c in comments]
        self.next_comment = 0
        self.out: list[str] = []
        self.cur: str | None = None  # the line being built; None at the start of a line
        self.cur_indent = 0
        self.pending: _OldBreak | None = _OldBreak(0, 0, "none")
        self.space = False
        self.last_line: int | None = None  # index in `out` of the line with the last token
        self.commented: set[int] = set()  # indices in `out` of lines that end with a comment
        self.last_src = 0  # source line of the last thing written

    # ------------------------------------------------------------------ queries

    def has_comment(self, start: int, end: int) -> bool:
        """Whether a comment starts between source offsets `start` and `end`."""
        i = bisect.bisect_left(self.comment_starts, start)
        return i < len(self.comment_starts) and self.comment_starts[i] < end

    def column(self) -> int:
        if self.cur is not None:
            return len(self.cur) + (1 if self.space else 0)
        return self.pending.indent if self.pending is not None else 0

    # ------------------------------------------------------------------ output

    def brk(self, indent: int, blank: str = "none", comment_indent: int | None = None) -> None:
        """End the current line; the next token starts a new one."""
        self._end_line()
        self.pending = _OldBreak(
            indent, indent if comment_indent is None else comment_indent, blank
        )

    def sp(self) -> None:
        self.space = True

    def token(self, token: Token) -> None:
        """Write a source token, after the comments that came before it."""
        self._flush_comments(_old_start(token))
        self.text_(str(token), token.line or 1)

    def text_(self, text: str, src_line: int | None = None) -> None:
        """Write `text` (a token's text, or punctuation the layout adds)."""
        if self.cur is None:
            brk = self.pending or _OldBreak(self.cur_indent, self.cur_indent, "none")
            if src_line is not None:
                self._blank_before(brk, src_line)
            self.cur = " " * brk.indent
            self.cur_indent = brk.indent
            self.pending = None
        elif self.space:
            self.cur += " "
        self.space = False
        self.cur += text
        self.last_line = len(self.out)
        if src_line is not None:
            self.last_src = max(self.last_src, src_line)

    def finish(self) -> str:
        self._flush_comments(len(self.text) + 1, at_end=True)
        self._end_line()
        while self.out and not self.out[-1]:
            self.out.pop()
        return "\n".join(self.out) + "\n" if self.out else ""

    # ------------------------------------------------------------------ internals

    def _end_line(self) -> None:
        if self.cur is not None:
            self.out.append(self.cur.rstrip())
            self.cur = None
        self.space = False

    def _blank_before(self, brk: _OldBreak, src_line: int) -> None:
        """A blank line before the next thing, as the break's policy says; a forced blank
        line is spent on the first thing written after the break."""
        if not self.out or not self.out[-1]:
            return  # never at the top of the file, never two in a row
        if brk.blank == "force" or (brk.blank == "keep" and src_line - self.last_src >= 2):
            self.out.append("")
        if brk.blank == "force":
            brk.blank = "keep"

    def _flush_comments(self, before: int, at_end: bool = False) -> None:
        while self.next_comment < len(self.comments) and (
            _old_start(self.comments[self.next_comment]) < before
        ):
            comment = self.comments[self.next_comment]
            self.next_comment += 1
            self._comment(comment, at_end)

    def _trailing(self, comment: Token) -> bool:
        """Whether code comes before the comment on its source line."""
        start = self.text.rfind("\n", 0, _old_start(comment)) + 1
        return bool(self.text[start : _old_start(comment)].strip())

    def _comment(self, comment: Token, at_end: bool) -> None:
        text = str(comment).rstrip()
        line = comment.line or 1
        # A line takes one trailing comment: a second would merge into the first on re-reading.
        if (
            self._trailing(comment)
            and self.last_line is not None
            and (self.last_line not in self.commented)
        ):
            if self.cur is not None and self.last_line == len(self.out):
                # After code on the line being built: end the line with the comment; what
                # follows continues on the next line, indented one more level.
                self.cur += "  " + text
                self.commented.add(len(self.out))
                self._continue_after_comment(at_end)
                self.last_src = max(self.last_src, line)
                return
            if self.cur is None and self.last_line == len(self.out) - 1:
                self.out[-1] += "  " + text
                self.commented.add(len(self.out) - 1)
                self.last_src = max(self.last_src, line)
                return
        if self.cur is not None:
            # A comment on a line of its own in the middle of a construct that has no line
            # break there: break the line, and continue one level deeper.
            self._continue_after_comment(at_end)
        brk = self.pending or _OldBreak(self.cur_indent, self.cur_indent, "none")
        self.pending = brk
        self._blank_before(brk, line)
        self.out.append(" " * brk.comment_indent + text)
        self.last_src = max(self.last_src, line)

    def _continue_after_comment(self, at_end: bool) -> None:
        deeper = self.cur_indent + INDENT
        self._end_line()
        self.pending = _OldBreak(deeper, deeper, "none") if not at_end else _OldBreak(0, 0, "keep")


# --------------------------------------------------------------------------- the layout


def _old_start(token: Token) -> int:
    assert token.start_pos is not None  # the lexer places every token
    return token.start_pos


def _old_end(token: Token) -> int:
    assert token.end_pos is not None
    return token.end_pos


def _old_leaf(tree: Tree) -> Token:
    """The token of a scalar value's tree (`number`, `string`, `name`, ...)."""
    token = tree.children[0]
    assert isinstance(token, Token)
    return token


def _old_tokens(tree: Tree) -> list[Token]:
    return [c for c in tree.children if isinstance(c, Token)]


def _old_trees(tree: Tree) -> list[Tree]:
    return [c for c in tree.children if isinstance(c, Tree)]


class _OldLayout:
    """Walks lark's tree (all tokens kept) and tells the printer what to write where. Blocks and
    argument lists that go over several lines indent their items one level deeper than the line
    their opening bracket is on."""

    def __init__(self, printer: _OldPrinter) -> None:
        self.p = printer

    def program(self, tree: Tree) -> None:
        for i, item in enumerate(tree.children):
            self.p.brk(0, "keep" if i == 0 else "force")
            if item.data == "model":
                self.model(item)
            else:
                self.test(item)
        self.p.brk(0, "keep")

    def model(self, tree: Tree) -> None:
        keyword, name, *_ = _old_tokens(tree)
        self.p.token(keyword)
        self.p.sp()
        self.p.token(name)
        options = [t for t in _old_trees(tree) if t.data == "options"]
        if options and (_old_trees(options[0]) or self._comment_inside(options[0])):
            self.arguments(options[0])
        self.body(tree, [t for t in _old_trees(tree) if t.data == "layer"], self.layer)

    def test(self, tree: Tree) -> None:
        keyword, name, *_ = _old_tokens(tree)
        self.p.token(keyword)
        self.p.sp()
        self.p.token(name)
        self.body(tree, _old_trees(tree), self.entry)

    def body(self, tree: Tree, items: list[Tree], write: Callable[[Tree], None]) -> None:
        """`{ items }` closing `tree`: one item per line, one level deeper; `{}` when empty."""
        braces = [t for t in _old_tokens(tree) if t.type in ("LBRACE", "RBRACE")]
        lbrace, rbrace = braces[0], braces[-1]
        self.p.sp()
        self.p.token(lbrace)
        if not items and not self.p.has_comment(_old_start(lbrace), _old_start(rbrace)):
            self.p.token(rbrace)
            return
        outer = self.p.cur_indent
        inner = outer + INDENT
        for i, item in enumerate(items):
            self.p.brk(inner, "none" if i == 0 else "keep")
            write(item)
        self.p.brk(outer, "none", comment_indent=inner)
        self.p.token(rbrace)

    def layer(self, tree: Tree) -> None:
        tokens = _old_tokens(tree)
        if len(tokens) >= 2 and tokens[1].type == "EQUAL":
            self.p.token(tokens[0])
            self.p.sp()
            self.p.token(tokens[1])
            self.p.sp()
            kind = tokens[2]
        else:
            kind = tokens[0]
        self.p.token(kind)
        subtrees = _old_trees(tree)
        arguments = [t for t in subtrees if t.data == "arguments"]
        if arguments:
            self.arguments(arguments[0])
        else:
            self.p.text_("()")
        for block in (t for t in subtrees if t.data == "block"):
            self.body(block, _old_trees(block), self.entry)

    def entry(self, tree: Tree) -> None:
        name, equal, *_ = _old_tokens(tree)
        self.p.token(name)
        self.p.sp()
        self.p.token(equal)
        self.p.sp()
        self.value(_old_trees(tree)[0])

    # ------------------------------------------------------------------ values

    def _comment_inside(self, tree: Tree) -> bool:
        tokens = _old_tokens(tree)
        return self.p.has_comment(_old_start(tokens[0]), _old_end(tokens[-1]))

    def arguments(self, tree: Tree) -> None:
        """`(a, b=c)` for arguments and options; one per line with a comment inside."""
        brackets = [t for t in _old_tokens(tree) if t.type in ("LPAR", "RPAR")]
        self.items(brackets[0], brackets[-1], _old_trees(tree), self.argument)

    def argument(self, tree: Tree) -> None:
        if tree.data == "keyword":
            name, equal = _old_tokens(tree)
            self.p.token(name)
            self.p.token(equal)
        self.value(_old_trees(tree)[0])

    def items(
        self, open_: Token, close: Token, items: list[Tree], write: Callable[[Tree], None]
    ) -> None:
        """Bracketed items: on one line, or one per line when a comment is inside."""
        self.p.token(open_)
        if self.p.has_comment(_old_start(open_), _old_start(close)):
            outer = self.p.cur_indent
            inner = outer + INDENT
            for item in items:
                self.p.brk(inner)
                write(item)
                self.p.text_(",")
            self.p.brk(outer, comment_indent=inner)
        else:
            for i, item in enumerate(items):
                if i:
                    self.p.text_(",")
                    self.p.sp()
                write(item)
        self.p.token(close)

    def value(self, tree: Tree) -> None:
        if tree.data in _OLD_SCALARS:
            self.p.token(_old_leaf(tree))
        elif tree.data == "call":
            tokens = _old_tokens(tree)
            self.p.token(tokens[0])
            brackets = [t for t in tokens if t.type in ("LPAR", "RPAR")]
            self.items(brackets[0], brackets[-1], _old_trees(tree), self.argument)
        elif tree.data == "list":
            self.list_(tree)
        else:
            raise AssertionError(f"fmt cannot lay out a {tree.data!r} value")

    def list_(self, tree: Tree) -> None:
        tokens = _old_tokens(tree)
        open_, close = tokens[0], tokens[-1]
        items = _old_trees(tree)
        if self.p.has_comment(_old_start(open_), _old_start(close)):
            self.items(open_, close, items, self.value)
        elif len(items) >= 2 and any(item.data == "list" for item in items):
            self.matrix(open_, close, items)
        elif items and all(item.data in _OLD_SCALARS for item in items):
            self.scalars(open_, close, items)
        else:
            self.items(open_, close, items, self.value)

    def matrix(self, open_: Token, close: Token, items: list[Tree]) -> None:
        """A list of lists, one item per line, aligned under the first as a matrix is."""
        self.p.token(open_)
        column = self.p.column()
        for i, item in enumerate(items):
            if i:
                self.p.text_(",")
                self.p.brk(column)
            self.value(item)
        self.p.token(close)

    def scalars(self, open_: Token, close: Token, items: list[Tree]) -> None:
        """A list of numbers (or names): on one line if it fits in WIDTH columns, else filled
        line by line, continuation lines aligned after the bracket."""
        self.p.token(open_)
        column = self.p.column()
        texts = [str(_old_leaf(item)) for item in items]
        at = column
        for i, (item, text) in enumerate(zip(items, texts, strict=True)):
            tail = 1  # the ',' or ']' after the item
            if i:
                if at + 2 + len(text) + tail > WIDTH:
                    self.p.text_(",")
                    self.p.brk(column)
                    at = column
                else:
                    self.p.text_(",")
                    self.p.sp()
                    at += 2
            self.p.token(_old_leaf(item))
            at += len(text)
        self.p.token(close)
