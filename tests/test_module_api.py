"""docs/module-api.md runs as written.

samples/seed.lyr is compiled into a temporary folder, which becomes the current directory and is
put on sys.path; then each ```python block of the page runs in a fresh namespace with a fresh
import of `seed`, so every block is self-contained given the compiled seed module, as the page
promises. The page's ```lyr block is samples/seed.lyr, no block leaves a global hook behind, and
the page covers the whole module API.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from layerc import driver
from layerc.runtime import hooks as layerc_hooks

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "module-api.md"
SEED = ROOT / "samples" / "seed.lyr"
IMPORTED_BY_THE_PAGE = ("seed", "probes")


def code_blocks(path: Path, lang: str) -> list[tuple[int, str]]:
    """The fenced ```lang blocks of a Markdown file: (line of the first code line, code)."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)", lines[i])
        i += 1
        if not fence:
            continue
        start = i
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        if fence.group(1) == lang:
            blocks.append((start + 1, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return blocks


PYTHON_BLOCKS = code_blocks(PAGE, "python")


def global_hook_count() -> int:
    return len(layerc_hooks.global_forward_hooks) + len(layerc_hooks.global_forward_pre_hooks)


@pytest.fixture(scope="module")
def seed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding samples/seed.lyr and the seed.py compiled from it."""
    folder = tmp_path_factory.mktemp("module_api")
    shutil.copy(SEED, folder / "seed.lyr")
    driver.compile_file(folder / "seed.lyr", folder / "seed.py")
    return folder


@pytest.fixture
def in_seed_folder(seed_folder: Path, monkeypatch: pytest.MonkeyPatch):
    """The seed folder as the current directory and on sys.path, with nothing the page imports
    already imported (and nothing left imported afterwards)."""
    monkeypatch.chdir(seed_folder)
    monkeypatch.syspath_prepend(str(seed_folder))
    for name in IMPORTED_BY_THE_PAGE:
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield seed_folder
    for name in IMPORTED_BY_THE_PAGE:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("line", "code"), PYTHON_BLOCKS, ids=[f"line {line}" for line, _ in PYTHON_BLOCKS]
)
def test_python_block_runs_on_its_own(line: int, code: str, in_seed_folder: Path) -> None:
    """The block runs in a namespace of its own; tracebacks point at the page's lines."""
    hooks_before = global_hook_count()
    program = compile("\n" * (line - 1) + code, str(PAGE), "exec")
    exec(program, {"__name__": "module_api_page"})  # noqa: S102 - the page's own examples
    assert global_hook_count() == hooks_before, "the block left a global hook registered"


def test_the_page_compiles_the_seed_sample() -> None:
    lyr = code_blocks(PAGE, "lyr")
    assert [code for _, code in lyr] == [SEED.read_text(encoding="utf-8")]


def test_the_page_covers_the_module_api() -> None:
    """Every method and option of the module API appears in a runnable example."""
    code = "".join(block for _, block in PYTHON_BLOCKS)
    api = [
        "register_forward_pre_hook",
        "register_forward_hook",
        "prepend=True",
        "with_kwargs=True",
        "always_call=True",
        "layerc.register_module_forward_hook",
        ".remove()",
        ".forward(",
        "children()",
        "named_modules()",
        "named_parameters()",
        "get_submodule",
        "state_dict()",
        "_metadata",
        "load_state_dict(",
        "strict=False",
        "extra_repr()",
        "pickle.dumps",
        ".njit()",
        "@numba.njit",
        "net[:]",
        "add_module(",
        "del net.fc",
        "except RuntimeError",
        "def forward(",
        ".to(",
        ".cpu()",
        "layerc.set_num_threads(2)",
        "get_num_threads()",
    ]
    assert [name for name in api if name not in code] == []
    assert len(PYTHON_BLOCKS) >= 10
