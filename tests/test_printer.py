"""The one .lyr printer (layerc.printer), which `layerc fmt` and `layerc import` share: a parsed
tree printed without its source parses back to the same tree (the spec's programs, graph models
among them, the samples, the docs' examples, generated programs), in the canonical layout fmt
leaves alone; with its source, it is fmt; a tree built in code prints with its comments made safe
and its strings escaped, and what no .lyr text can hold is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from test_fmt import ROOT, _example_sources, literal_texts, program_texts, syntax_shape
from test_forward_syntax import LONG, SECTION_8, forward_program_texts
from test_forward_syntax import MESSY as MESSY_GRAPH

from layerc import syntax
from layerc import syntax as S
from layerc.errors import Loc
from layerc.printer import comment_line, print_program, string_literal
from layerc.tools.fmt import format_source

SPEC_PROGRAMS = sorted((ROOT / "tests" / "spec_programs").glob("*.lyr"))
SAMPLES = sorted((ROOT / "samples").glob("*.lyr"))
AT = Loc("<built>", 1, 1)


def assert_round_trips(text: str) -> str:
    """parse -> print -> parse gives the same tree; the printed text is canonical (fmt and the
    printer leave it as it is); with the source, the printer is fmt. Returns the printed text."""
    program = syntax.parse(text)
    printed = print_program(program)
    assert syntax_shape(syntax.parse(printed).items) == syntax_shape(program.items)
    assert print_program(syntax.parse(printed)) == printed
    assert format_source(printed) == printed
    assert print_program(program, text) == format_source(text)
    return printed


@pytest.mark.parametrize("path", SPEC_PROGRAMS + SAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_spec_programs_and_samples_round_trip(path: Path) -> None:
    assert_round_trips(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "text", [pytest.param(t, id=name) for name, t, _ in _example_sources() if ".md#" in name]
)
def test_docs_examples_round_trip(text: str) -> None:
    assert_round_trips(text)


def test_the_seed_prints_as_the_spec_writes_it_without_its_comment() -> None:
    text = (ROOT / "tests" / "spec_programs" / "seed.lyr").read_text(encoding="utf-8")
    printed = assert_round_trips(text)
    assert printed == "\n".join(format_source(text).splitlines()[1:]) + "\n"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program_texts())
def test_generated_programs_round_trip(text: str) -> None:
    assert_round_trips(text)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(literal_texts())
def test_generated_literals_round_trip(text: str) -> None:
    """Nested lists, matrices, wrapped rows, calls, strings and names in lists, comments inside
    lists (which a literal carries in its text, so they are printed even without the source)."""
    assert_round_trips(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(SECTION_8, id="spec-section-8"),
        pytest.param(MESSY_GRAPH, id="comments-everywhere"),
        pytest.param(LONG, id="long-lines"),
    ],
)
def test_graph_models_round_trip(text: str) -> None:
    """Forward blocks (section 8) and test tuples: parentheses precedence does not need are
    dropped, long expressions wrapped, comments kept; the tree comes back the same."""
    assert_round_trips(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(forward_program_texts())
def test_generated_graph_models_round_trip(text: str) -> None:
    """Random expressions (precedence, unary minus, signs, redundant parentheses, calls) with
    comments and line breaks between any two tokens, long names that make lines wrap."""
    assert_round_trips(text)


# --------------------------------------------------------------------------- built trees


def arg(name: str | None, value: S.Value) -> S.Arg:
    return S.Arg(name, value, AT)


def number(text: str) -> S.Number:
    return S.Number(float(text), text.lstrip("+-").isdigit(), text, AT)


def built(*, comment: str = "c", path: str = "w.safetensors", name: str = "fc") -> S.Program:
    load = S.Call("load", (arg(None, S.String(path, AT)), arg(None, S.String("0.weight", AT))), AT)
    layers = (
        S.LayerDef(
            name,
            "Linear",
            AT,
            (arg(None, number("2")), arg(None, number("3")), arg("bias", S.Bool(False, AT))),
            True,
            (S.Entry("weight", load, AT),),
            AT,
            (comment,),
        ),
        S.LayerDef(None, "ReLU", AT, (), False, None, AT, ("an activation", "on two lines")),
        S.LayerDef(None, "Softmax", AT, (arg("dim", number("-1")),), True, None, AT),
    )
    options = (arg("input", S.ListLit.of([number("2")], AT)), arg("dtype", S.Name("float64", AT)))
    model = S.ModelDef("Net", options, layers, AT, AT, ("header", "second line"))
    test = S.TestDef(
        "Net",
        (S.Entry("input", S.ListLit.of([number("1"), number("-2.5")], AT), AT),),
        AT,
        AT,
        ("a test",),
    )
    return S.Program("built.lyr", (model, test))


BUILT = """\
# header
# second line
model Net(input=[2], dtype=float64) {
    # c
    fc = Linear(2, 3, bias=false) {
        weight = load("w.safetensors", "0.weight")
    }
    # an activation
    # on two lines
    ReLU()
    Softmax(dim=-1)
}

# a test
test Net {
    input = [1, -2.5]
}
"""


def test_a_built_tree_prints_in_the_canonical_layout() -> None:
    text = print_program(built())
    assert text == BUILT
    assert format_source(text) == text


def test_a_built_trees_comments_are_one_safe_line_each() -> None:
    """Every character that is not printable (each kind of line break among them) becomes '?':
    nothing in a comment can end its line and start code."""
    hostile = "a\nmodel X {}\r\x0b\x0c\x1c\x85\u2028\u2029\x00\u200e\ufeffz  "
    text = print_program(built(comment=hostile))
    line = "# a?model X {}" + "?" * 10 + "z"
    assert text.splitlines()[3] == "    " + line
    assert comment_line(hostile) == line
    assert format_source(text) == text
    assert [getattr(t, "name", "test") for t in syntax.parse(text).items] == ["Net", "test"]


def test_a_built_trees_strings_are_escaped_and_parse_back() -> None:
    path = 'we"ird\\ "" \\" name.npz'
    text = print_program(built(path=path))
    assert 'load("we\\"ird\\\\ \\"\\" \\\\\\" name.npz", "0.weight")' in text
    (layer, *_) = syntax.parse(text).items[0].layers
    call = layer.entries[0].value
    assert call.args[0].value.value == path and format_source(text) == text


def test_strings_keep_every_character_but_a_line_break() -> None:
    """The grammar's strings hold any character but a line break; the printer writes them as
    they are (what a string may name is the checker's business, and import's)."""
    odd = "tab\t\r\x0c\u2028\x85 end"
    assert string_literal(odd) == f'"{odd}"'
    text = print_program(built(path=odd))
    (layer, *_) = syntax.parse(text).items[0].layers
    assert layer.entries[0].value.args[0].value.value == odd


@pytest.mark.parametrize("bad", ["a\nb", "\n", "a\r\n"])
def test_strings_with_a_line_break_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="a .lyr string cannot hold"):
        string_literal(bad)
    with pytest.raises(ValueError, match="a .lyr string cannot hold"):
        print_program(built(path=bad))


@pytest.mark.parametrize("bad", ["model", "true", "1x", "a-b", "a b", ""])
def test_names_that_are_not_lyr_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a .lyr name"):
        print_program(built(name=bad))


def test_numbers_that_are_not_lyr_numbers_are_refused() -> None:
    slope = arg(None, S.Number(0.1, False, "1/10", AT))
    bad = S.LayerDef(None, "LeakyReLU", AT, (slope,), True, None, AT)
    broken = S.Program("b.lyr", (S.ModelDef("Net", (), (bad,), AT, AT),))
    with pytest.raises(ValueError, match="'1/10' is not a .lyr number"):
        print_program(broken)
