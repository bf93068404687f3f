"""The docs run: every code block of docs/tutorial.md, docs/cli.md and docs/language.md is executed
in order, in an empty folder, as a reader following along would.

- ```lyr blocks whose first line is `# NAME.lyr` are written to NAME.lyr; every lyr block is
  checked, and named ones are compiled to NAME.py (importable by later python blocks).
  ```lyr error``` blocks must fail to compile.
- ```python blocks run in one namespace per page, in order.
- ```sh blocks hold `layerc ...` commands (run in-process); a command must exit 0 unless the
  line ends with `# exit N`.
- A ```text block right after an sh block is that block's exact output (stdout, then
  stderr); right after a ```lyr error``` block it is the exact error message.
- Where graphviz's `dot` is not installed, the commands that need it (`layerc graph` drawing
  SVG, PNG or PDF) are left out, every other block still runs, and the test then skips,
  naming them.

Every ```lyr block of the docs and the README, and every sample, is in the layout `layerc fmt`
writes, so that readers copy the house style.

The references are checked against the code as well: the CLI reference documents every
subcommand and option of `layerc --help`, and the language reference every keyword of the
grammar, every layer kind, option and entry the checker accepts, and the grammar itself.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DOT_MISSING

from layerc import check as checker
from layerc import cli, driver, syntax
from layerc.errors import LayercError, render
from layerc.tools.graph import RENDERED
from layerc.weights import INITIALISERS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ("tutorial.md", "cli.md", "language.md")


@dataclass(frozen=True)
class Block:
    lang: str
    info: tuple[str, ...]
    text: str
    line: int  # of the opening fence
    after_gap: bool  # prose between the previous block and this one


def read_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    prose = False
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*(.*)$", lines[i])
        if not fence:
            prose = prose or bool(lines[i].strip())
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: unclosed code block"
        info = tuple(fence.group(2).split())
        blocks.append(Block(fence.group(1), info, "\n".join(body) + "\n", start + 1, prose))
        prose = False
        i += 1
    return blocks


def draws_with_dot(argv: list[str]) -> bool:
    """Whether a `layerc ...` command runs graphviz's `dot`: `layerc graph` drawing SVG, PNG or
    PDF (DOT text needs nothing)."""
    if argv[1:2] != ["graph"]:
        return False
    outputs = [argv[i + 1] for i, option in enumerate(argv[:-1]) if option in ("-o", "--output")]
    outputs += [arg.partition("=")[2] for arg in argv if arg.startswith("--output=")]
    return any(Path(out).suffix.lstrip(".").lower() in RENDERED for out in outputs)


def lyr_name(block: Block) -> str | None:
    """NAME.lyr from a first line `# NAME.lyr` or `# NAME.lyr: what it is`."""
    match = re.match(r"#\s*([A-Za-z_][A-Za-z0-9_]*\.lyr)\b", block.text)
    return match.group(1) if match else None


class PageRunner:
    """Runs a page's blocks in `folder` (the current directory while it runs)."""

    def __init__(self, page: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.page = page
        self.folder = folder
        self.capsys = capsys
        self.namespace: dict[str, object] = {"__name__": f"docs_{page.replace('.', '_')}"}
        self.modules: list[str] = []
        # the previous block and what it produced (None: a command of it was left out)
        self.last: tuple[Block, str | None] | None = None
        self.outputs_checked = 0
        self.left_out: list[str] = []  # commands not run: they need graphviz's `dot`

    def where(self, block: Block) -> str:
        return f"docs/{self.page}:{block.line}"

    def run(self, block: Block) -> None:
        handler = {
            "lyr": self.lyr,
            "python": self.python,
            "sh": self.sh,
            "text": self.text,
            "lark": self.lark,
        }
        if block.lang not in handler:
            raise AssertionError(f"{self.where(block)}: unknown block language {block.lang!r}")
        produced = handler[block.lang](block)
        self.last = (block, produced)

    def lyr(self, block: Block) -> str:
        name = lyr_name(block)
        path = self.folder / (name or "snippet.lyr")
        path.write_text(block.text, encoding="utf-8")
        if "error" in block.info:
            with pytest.raises(LayercError) as info:
                driver.check_file(Path(path.name))
            return render(info.value, block.text)
        driver.check_file(Path(path.name))
        if name is not None:
            module = Path(name).stem
            sys.modules.pop(module, None)
            self.modules.append(module)
            driver.compile_file(Path(name))
        return ""

    def lark(self, block: Block) -> str:
        """The grammar: compared with grammar/layerc.lark by its own test."""
        return ""

    def python(self, block: Block) -> str:
        code = compile(block.text, self.where(block), "exec")
        exec(code, self.namespace)  # noqa: S102 - the docs' own examples
        self.capsys.readouterr()
        return ""

    def sh(self, block: Block) -> str | None:
        outputs: list[str] | None = []
        for line in block.text.splitlines():
            command = line.strip()
            if not command or command.startswith("#"):
                continue
            expected = 0
            status = re.search(r"#\s*exit\s+(\d+)\s*$", command)
            if status:
                expected = int(status.group(1))
            argv = shlex.split(command, comments=True)
            assert argv[0] == "layerc", f"{self.where(block)}: not a layerc command: {command}"
            if draws_with_dot(argv) and shutil.which("dot") is None:
                self.left_out.append(f"{self.where(block)}: {command}")
                outputs = None
                continue
            self.capsys.readouterr()
            code = cli.main(argv[1:])
            out, err = self.capsys.readouterr()
            assert code == expected, (
                f"{self.where(block)}: `{command}` exited {code}, expected {expected}\n{out}{err}"
            )
            if outputs is not None:
                outputs.append(out + err)  # what a reader sees on the terminal
        return None if outputs is None else "".join(outputs)

    def text(self, block: Block) -> str:
        if self.last is None or block.after_gap:
            return ""  # an illustration, not an output
        previous, produced = self.last
        checked = previous.lang == "sh" or (previous.lang == "lyr" and "error" in previous.info)
        if checked and produced is not None:
            self.outputs_checked += 1
            assert produced.rstrip("\n") == block.text.rstrip("\n"), (
                f"{self.where(block)}: the text shown differs from what the command gives:\n"
                f"{produced}"
            )
        return ""

    def cleanup(self) -> None:
        for module in self.modules:
            sys.modules.pop(module, None)


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(
    page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every block of the page runs as the page says, in order."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LAYERC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    runner = PageRunner(page, tmp_path, capsys)
    blocks = read_blocks(DOCS / page)
    assert blocks, f"docs/{page} has no code blocks"
    try:
        for block in blocks:
            runner.run(block)
    finally:
        runner.cleanup()
    # The outputs shown on the page are really compared (summary tables, run results, errors).
    assert runner.outputs_checked >= 2
    if runner.left_out:
        pytest.skip(f"{DOT_MISSING}; every other block ran, not: " + "; ".join(runner.left_out))


def test_tutorial_teaches_the_lesson() -> None:
    """The tutorial has python, lyr and sh blocks and covers the lesson's ideas."""
    blocks = read_blocks(DOCS / "tutorial.md")
    langs = {b.lang for b in blocks}
    assert {"python", "lyr", "sh"} <= langs
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    for idea in ("y = Ax + b", "bias=false", "register_forward_hook", "__call__", "[30, 40, 50]"):
        assert idea in text


def test_the_docs_command_runner_knows_what_needs_graphviz() -> None:
    assert draws_with_dot(shlex.split("layerc graph model.lyr -o model.svg"))
    assert draws_with_dot(shlex.split("layerc graph model.lyr --output=net.PDF"))
    assert not draws_with_dot(shlex.split("layerc graph model.lyr -o model.dot"))
    assert not draws_with_dot(shlex.split("layerc graph model.lyr"))
    assert not draws_with_dot(shlex.split("layerc run model.lyr -i x.csv -o y.png"))


def test_docs_lyr_blocks_and_samples_pass_fmt_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`layerc fmt --check` passes on samples/*.lyr and on every ```lyr block of docs/ and the
    README (each written to a file of its own); an ```lyr error``` block that does not parse
    is left out, as fmt cannot lay it out."""
    where: dict[str, str] = {}
    for page in [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]:
        for block in read_blocks(page):
            if block.lang != "lyr":
                continue
            if "error" in block.info:
                try:
                    syntax.parse(block.text, "block.lyr")
                except LayercError:
                    continue
            path = tmp_path / f"{page.stem}_{block.line}.lyr"
            path.write_text(block.text, encoding="utf-8")
            where[str(path)] = f"{page.relative_to(ROOT)}:{block.line}"
    samples = sorted(str(p) for p in (ROOT / "samples").glob("*.lyr"))
    assert len(where) >= 10 and len(samples) >= 3
    code = cli.main(["fmt", "--check", *samples, *where])
    out, err = capsys.readouterr()
    for name, place in where.items():
        out = out.replace(name, f"the block at {place}")
    assert code == 0, f"not in `layerc fmt` layout:\n{out}{err}"


# --------------------------------------------------------------------------- the CLI reference


def _subcommands() -> dict[str, list[str]]:
    """Each subcommand of `layerc --help` with its option strings (long forms)."""
    parser = cli._parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    commands = {}
    for name, sub in action.choices.items():
        options = []
        for a in sub._actions:
            longs = [s for s in a.option_strings if s.startswith("--") and s != "--help"]
            options.extend(longs)
        commands[name] = options
    return commands


def test_cli_reference_documents_every_command_and_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    sections = {m.group(1): m.start() for m in re.finditer(r"^## `?layerc (\w+)", text, re.M)}
    commands = _subcommands()
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = capsys.readouterr().out
    for name, options in commands.items():
        assert name in help_text
        assert name in sections, f"docs/cli.md has no '## layerc {name}' section"
        start = sections[name]
        ends = [s for s in sections.values() if s > start]
        section = text[start : min(ends) if ends else len(text)]
        for option in options:
            assert option in section, f"docs/cli.md: 'layerc {name}' does not document {option}"
    for name in sections:
        assert name in commands, f"docs/cli.md documents 'layerc {name}', which does not exist"


# --------------------------------------------------------------------------- the language reference


def _grammar_literals(grammar: str) -> set[str]:
    """The quoted keywords and punctuation of the grammar's rules (terminals' regexes aside)."""
    rules = [
        line
        for line in re.sub(r"//[^\n]*", "", grammar).splitlines()
        if not re.match(r"\s*([A-Z_]+\s*:|%)", line)
    ]
    return set(re.findall(r'"([^"\\]+)"', "\n".join(rules)))


def test_language_reference_matches_the_grammar() -> None:
    """docs/language.md shows the grammar exactly as grammar/layerc.lark has it, and its prose
    mentions every keyword and punctuation mark the grammar uses."""
    grammar = syntax.grammar_path().read_text(encoding="utf-8")
    text = (DOCS / "language.md").read_text(encoding="utf-8")
    shown = [b.text for b in read_blocks(DOCS / "language.md") if b.lang == "lark"]
    assert shown, "docs/language.md shows no ```lark grammar block"
    assert shown[0].strip() == grammar.strip(), (
        "docs/language.md's grammar differs from grammar/layerc.lark: copy the file into it "
        "and describe what changed"
    )
    prose = text.replace(shown[0], "")
    for literal in _grammar_literals(grammar):
        assert f"`{literal}`" in prose, f"docs/language.md does not mention `{literal}`"
    terminals = re.findall(r"^([A-Z_]+)\s*:", grammar, re.M)
    rules = re.findall(r"^\??([a-z][a-z_]*)\s*:", grammar, re.M)
    aliases = re.findall(r"->\s*([a-z_]+)", grammar)
    assert terminals and rules
    for name in terminals:
        assert name in prose, f"docs/language.md does not describe the terminal {name}"
    for name in rules + aliases:
        assert f"`{name}`" in prose, f"docs/language.md does not describe the rule {name}"


def test_language_reference_covers_the_checker() -> None:
    """Every layer kind, argument and block entry of the kinds table, and every model option,
    test entry and initialiser the checker accepts, is documented."""
    from layerc.kinds import KINDS

    text = (DOCS / "language.md").read_text(encoding="utf-8")
    names = set(KINDS) | set(checker.MODEL_OPTIONS)
    names |= set(checker.TEST_ENTRIES) | set(INITIALISERS) | {"load"}
    for spec in KINDS.values():
        names |= {p.name for p in spec.params} | set(spec.entries())
    for name in sorted(names):
        assert f"`{name}" in text, f"docs/language.md does not document {name!r}"


def _lyr_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _signature(kind) -> str:
    """A kind's arguments as the language reference's table writes them."""
    from layerc.binder import REQUIRED

    cells = []
    for param in kind.params:
        if param.keyword_only and "`*`" not in cells:
            cells.append("`*`")
        default = "" if param.default is REQUIRED else f"={_lyr_value(param.default)}"
        cells.append(f"`{param.name}{default}`")
    return ", ".join(cells) or "none"


def test_language_reference_tables_every_kind() -> None:
    """The Layers table has one row per kind of layerc.kinds, in the table's order, with the
    kind's arguments (names, order, defaults) and its block entries."""
    from layerc.kinds import KINDS

    text = (DOCS / "language.md").read_text(encoding="utf-8")
    section = text[text.index("## Layers") : text.index("## Weights")]
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \| (.+?) \|$", section, flags=re.M)
    assert [kind for kind, _, _ in rows] == list(KINDS)
    for kind, arguments, entries in rows:
        spec = KINDS[kind]
        assert arguments == _signature(spec), kind
        names = re.findall(r"`(\w+)`", entries)
        assert [n for n in names if n != "init" or spec.initialiser] == [
            n for n in [*spec.entries(), *(t.name for t in spec.tensors if not t.entry)]
        ] or (not spec.tensors and entries == "none"), kind


def test_block_reader(tmp_path: Path) -> None:
    """The harness itself: fences, info strings and the gap between blocks."""
    page = textwrap.dedent(
        """\
        Intro.

        ```lyr error
        # bad.lyr
        model A {}
        ```
        ```text
        shown
        ```

        Prose.

        ```text
        other
        ```
        """
    )
    path = tmp_path / "page.md"
    path.write_text(page, encoding="utf-8")
    blocks = read_blocks(path)
    assert [(b.lang, b.info, b.after_gap) for b in blocks] == [
        ("lyr", ("error",), True),
        ("text", (), False),
        ("text", (), True),
    ]
    assert lyr_name(blocks[0]) == "bad.lyr"


def test_language_reference_states_the_checkers_limits() -> None:
    """The Limits table gives the values the front end, `layerc import` and `layerc run`
    enforce."""
    from layerc import onnx_io, weights
    from layerc.kinds import MAX_RANK
    from layerc.tools import run

    text = (DOCS / "language.md").read_text(encoding="utf-8")
    section = text[text.index("## Limits") : text.index("## The generated module")]
    rows = dict(re.findall(r"^\| (.+?) \| at most (\d+)", section, flags=re.M))
    assert {
        "`in_features`, `out_features`": checker.MAX_FEATURES,
        "axes of a per-sample shape (`input`, `normalized_shape`)": MAX_RANK,
        "weights in one layer": checker.MAX_WEIGHTS,
        "weights in one source, and in one model with its nested models expanded": (
            checker.MAX_WEIGHTS
        ),
        "layers in one model, nested models expanded": checker.MAX_LAYERS,
        "models nested inside each other": checker.MAX_MODEL_DEPTH,
        "brackets nested in a literal": syntax.MAX_NESTING,
        "operations nested in one expression of a `forward` block (`f(a + b)` is 2)": (
            syntax.MAX_EXPRESSION_DEPTH
        ),
        "a list literal, from its `[` to its `]`": syntax.MAX_LITERAL,
        "characters other than white space outside list literals, in one source": (
            syntax.MAX_STRUCTURE
        ),
        "values in a test's `input` or `expect`, from a literal or a file": (
            checker.MAX_TEST_VALUES
        ),
        "a model or layer name": checker.MAX_NAME_LENGTH,
        "a weights file": weights.MAX_FILE_BYTES,
        "weights of an ONNX model `layerc import` reads, an initializer counted once for each "
        "node that uses it": onnx_io.MAX_IMPORT_WEIGHTS,
        "a line of a CSV or JSON-lines input to `layerc run`": run.MAX_LINE_BYTES,
        "dimensions of a `.npy` input to `layerc run`": run.MAX_NPY_DIMS,
    } == {name: int(value) for name, value in rows.items()}
    assert f"or {run.LINE_BYTES_PER_FEATURE} bytes per input feature" in section
