"""The README is true, run the way a reader runs it: its quick-start commands work from the
repository root, its test command needs no root and is what CI runs, its kernel excerpt is what
`layerc compile` writes for the lesson sample, its Python snippets give the values their
comments show when run in a new Python process started where the snippet says, and its error
example is what the checker reports for the model it describes.

A ```python block whose first line is `# in a Python session started in DIR/` (or `... in the
repository root`) starts a new process in that folder of a copy of the repository; a block
without that line continues the session of the block before it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from layerc import driver
from layerc.errors import LayercError, render

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SESSION_START = re.compile(r"# in a Python session started in (the repository root|\S+/)$")


def blocks(lang: str) -> list[str]:
    """The bodies of the README's fenced blocks labelled `lang` ("" for unlabelled ones)."""
    found = []
    fences = re.finditer(r"^```(\S*)\n(.*?)^```$", README, flags=re.S | re.M)
    for fence in fences:
        if fence.group(1) == lang:
            found.append(fence.group(2))
    return found


def sessions() -> list[tuple[str, list[str]]]:
    """The README's Python snippets (the kernel excerpt aside) as sessions: (the folder each
    starts in, relative to the repository root, and its blocks in order)."""
    found: list[tuple[str, list[str]]] = []
    for block in blocks("python"):
        if "@_numba.njit" in block:
            continue
        start = SESSION_START.match(block.splitlines()[0])
        if start:
            folder = "." if start.group(1) == "the repository root" else start.group(1)
            found.append((folder, [block]))
        else:
            assert found, f"the first Python snippet does not say where it runs:\n{block}"
            found[-1][1].append(block)
    return found


def env_for(checkout: Path) -> dict[str, str]:
    """A reader's environment, with layerc's cache inside the test's folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "PYTHONPATH")}
    env["LAYERC_CACHE_DIR"] = str(checkout.parent / "cache")
    return env


def layerc_commands(block: str) -> list[list[str]]:
    """The `layerc ...` commands of an sh block's `a && b && c` line (pip steps left out)."""
    steps = [shlex.split(step) for step in block.strip().split("&&")]
    return [step for step in steps if step[0] == "layerc"]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's samples in a fresh folder that stands for the repository
    root, after the README's first command (its layerc steps, as a reader runs them there)."""
    root = tmp_path_factory.mktemp("readme") / "layerc"
    ignored = shutil.ignore_patterns("__pycache__", "*.py", "*.nbi", "*.nbc")
    shutil.copytree(ROOT / "samples", root / "samples", ignore=ignored)
    for argv in layerc_commands(blocks("sh")[0]):
        done = subprocess.run(
            [sys.executable, "-m", *argv],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=300,
            env=env_for(root),
        )
        assert done.returncode == 0, f"`{shlex.join(argv)}` failed:\n{done.stdout}{done.stderr}"
    return root


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
    lyr = blocks("lyr")[0]  # the first lyr block is the sample's source
    assert lyr == (ROOT / "samples" / "seed.lyr").read_text(encoding="utf-8")


def test_the_quick_start_runs_from_the_repository_root(checkout: Path) -> None:
    """The first command compiles the lesson beside its source and tests it."""
    first = blocks("sh")[0]
    assert first.startswith("pip install . && ")
    assert [argv[:2] for argv in layerc_commands(first)] == [
        ["layerc", "compile"],
        ["layerc", "test"],
    ]
    assert (checkout / "samples" / "seed.py").is_file()


def test_the_test_command_needs_no_root_and_ci_runs_it_as_written() -> None:
    """The README's test command is pip and pytest only (no apt-get, no sudo, nothing that
    needs root), and .ci/run runs that very line after its own set-up."""
    (command,) = [block.strip() for block in blocks("sh") if "pytest" in block]
    assert command == 'pip install -e ".[test]" && python -m pytest -q'
    for step in command.split("&&"):
        assert shlex.split(step)[0] in ("pip", "python"), step
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1] == command, "the last line of .ci/run is not the README's test command"


def test_the_readme_says_how_to_get_the_cpu_build_of_torch() -> None:
    """The README's CPU install pins the torch of the test extra, from PyTorch's CPU index.
    (CI's machine resolves the pin to the CPU build from its own package mirror and cannot
    reach that index, so .ci/run does not repeat the step.)"""
    (pin,) = re.findall(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text("utf-8"))
    (command,) = [block.strip() for block in blocks("sh") if "--index-url" in block]
    assert command == f"pip install {pin} --index-url https://download.pytorch.org/whl/cpu"


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


# Runs in the reader's Python process: each statement of the blocks (JSON on stdin) in turn, in
# one namespace; prints [code, what it showed, its comment] for each commented statement.
SESSION = r"""
import ast, contextlib, io, json, sys

namespace = {"__name__": "__main__"}
results = []
for block in json.load(sys.stdin):
    for statement in ast.parse(block).body:
        code = ast.get_source_segment(block, statement)
        line = block.splitlines()[statement.end_lineno - 1]
        comment = line.partition("  # ")[2] if "  # " in line else None
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            if isinstance(statement, ast.Expr):
                value = eval(compile(ast.Expression(statement.value), "README", "eval"), namespace)
            else:
                exec(compile(ast.Module([statement], []), "README", "exec"), namespace)
                value = None
        if comment is not None:
            shown = out.getvalue().strip() if out.getvalue() else repr(value)
            results.append([code, shown, comment])
print(json.dumps(results))
"""


def test_the_python_snippets_print_what_their_comments_say(checkout: Path) -> None:
    """Each session runs in a new `python` started in its folder, as a reader's would (the
    current folder first on sys.path, so `from seed import Seed` finds samples/seed.py only from
    samples/); every commented line shows what its comment says."""
    found = sessions()
    assert {folder for folder, _ in found} == {"samples/", "."}
    checked = 0
    for folder, session in found:
        before = sorted(p.name for p in (checkout / "samples").iterdir())
        done = subprocess.run(
            [sys.executable, "-c", SESSION],
            input=json.dumps(session),
            cwd=checkout / folder,
            capture_output=True,
            text=True,
            timeout=300,
            env=env_for(checkout),
        )
        assert done.returncode == 0, f"the README's snippets in {folder} fail:\n{done.stderr}"
        for code, shown, comment in json.loads(done.stdout):
            assert shown == comment, f"{folder}: {code}"
            checked += 1
        if folder == ".":  # layerc.load writes nothing beside the source
            assert sorted(p.name for p in (checkout / "samples").iterdir()) == before
    assert checked >= 6


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
