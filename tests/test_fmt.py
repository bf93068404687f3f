"""`layerc fmt`: the canonical layout, comments kept in order, idempotence, and meaning kept:
the program checked before and after formatting gives identical models, weights and tests (on
the samples, the docs' examples and hypothesis-generated programs with comments anywhere)."""

from __future__ import annotations

import os
import re
import stat
import textwrap
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layerc import ir, syntax
from layerc.check import check
from layerc.cli import main
from layerc.errors import LayercError
from layerc.tools.fmt import WIDTH, format_source

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- comparisons


def syntax_shape(node: object) -> object:
    """A syntax tree without locations (and without whether a layer wrote its parentheses,
    which fmt normalises and the checker ignores), for comparing meaning."""
    if isinstance(node, tuple):
        return tuple(syntax_shape(n) for n in node)
    if is_dataclass(node) and not isinstance(node, type):
        skip = {"loc", "kind_loc", "name_loc", "model_loc", "has_parens", "file"}
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
        assert_same_array(ta.input, tb.input)
        assert_same_array(ta.expect, tb.expect)


def assert_same_model(a: ir.Model, b: ir.Model) -> None:
    assert (a.name, a.dtype, a.in_features, a.out_features, a.allow_nonfinite) == (
        b.name,
        b.dtype,
        b.in_features,
        b.out_features,
        b.allow_nonfinite,
    )
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
    from layerc.tools.fmt import _parser

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
