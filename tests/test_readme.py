"""The README's tour is true: its kernel excerpt is what `layerc compile` writes for the lesson
sample, its Python lines give the values their comments show, and its error example is what the
checker reports for the model it describes."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from layerc import driver
from layerc.errors import LayercError, render

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    """The bodies of the README's fenced blocks labelled `lang` ("" for unlabelled ones)."""
    found = []
    fences = re.finditer(r"^```(\S*)\n(.*?)^```$", README, flags=re.S | re.M)
    for fence in fences:
        if fence.group(1) == lang:
            found.append(fence.group(2))
    return found


@pytest.fixture()
def seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    source = tmp_path / "seed.lyr"
    source.write_text((ROOT / "samples" / "seed.lyr").read_text(encoding="utf-8"))
    driver.compile_file(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "seed.py"
    sys.modules.pop("seed", None)


def test_the_readme_shows_the_lesson_sample_as_it_is() -> None:
    lyr = blocks("")[0]  # the first unlabelled block is the sample's source
    assert lyr == (ROOT / "samples" / "seed.lyr").read_text(encoding="utf-8")


def test_the_kernel_excerpt_is_the_generated_code(seed: Path) -> None:
    (excerpt,) = [b for b in blocks("python") if "@_numba.njit" in b]
    generated = seed.read_text(encoding="utf-8").splitlines()
    shown = [line for line in excerpt.splitlines() if line.strip() != "..."]
    # the excerpt's lines appear in the generated module in order, with nothing but the
    # docstring lines that "..." stands for skipped
    start = generated.index(shown[0])
    position = start
    for line in shown:
        found = generated.index(line, position)
        skipped = generated[position:found]
        assert all(not s.strip().startswith(("acc", "for", "ys", "n =")) for s in skipped), skipped
        position = found + 1


def test_the_python_lines_print_what_their_comments_say(seed: Path) -> None:
    namespace: dict[str, object] = {}
    checked = 0
    for block in blocks("python"):
        if "@_numba.njit" in block:
            continue
        for statement in ast.parse(block).body:
            code = ast.get_source_segment(block, statement)
            assert code is not None
            line = block.splitlines()[statement.end_lineno - 1]  # type: ignore[operator]
            comment = line.partition("  # ")[2] if "  # " in line else None
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                if isinstance(statement, ast.Expr):
                    value = eval(
                        compile(ast.Expression(statement.value), "README", "eval"), namespace
                    )
                else:
                    exec(compile(ast.Module([statement], []), "README", "exec"), namespace)
                    value = None
            if comment is None:
                continue
            shown = out.getvalue().strip() if out.getvalue() else repr(value)
            assert shown == comment, code
            checked += 1
    assert checked >= 5
    np.testing.assert_array_equal(namespace["net"](np.arange(1, 5, dtype=np.float32)), [30, 40, 50])  # type: ignore[operator]


def test_the_error_example_is_what_layerc_prints(tmp_path: Path) -> None:
    (example,) = [b for b in blocks("") if "shape mismatch" in b]
    first, line, _caret = example.rstrip("\n").split("\n")
    source = tmp_path / "model.lyr"
    source.write_text(
        "model A {\n"
        "  fc = Linear(4, 3) { init = uniform(seed=0) }\n"
        f"{line.strip().join(['  ', ''])}\n"
        "}\n"
    )
    with pytest.raises(LayercError) as info:
        driver.check_file(source)
    text = source.read_text()
    shown = render(info.value, text).replace(str(source), "model.lyr")
    assert shown.rstrip("\n") == example.rstrip("\n")
    assert first.startswith("model.lyr:3:3: ")
