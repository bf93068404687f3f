"""Shared fixtures: compile .lyr text into a fresh folder and import the generated module."""

from __future__ import annotations

import itertools
import math
import re
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from layerc import driver

_count = itertools.count()

# No test depends on how fast the machine is: hypothesis's per-example deadline and its
# too-slow health check both time wall-clock runs, so both are off for every property test
# (a test's own @settings changes only the settings it names).
settings.register_profile("layerc", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("layerc")

# Tests that draw with graphviz's `dot` program (SVG, PNG, JSON layout) skip where it is not
# installed; .ci/run installs it, so CI runs them.
DOT_MISSING = "graphviz's 'dot' program is not installed"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason=DOT_MISSING)

# The lesson sample's source, for tests that want the canonical program as text.
LESSON = (Path(__file__).resolve().parents[1] / "samples" / "seed.lyr").read_text(encoding="utf-8")


def asm_loops(asm: str) -> list[list[str]]:
    """The body of each loop of `asm` (x86 assembly as LLVM prints it: a label, then a jump
    back to it), its instructions from the label to that jump, stripped."""
    lines = [line.strip() for line in asm.splitlines()]
    labels: dict[str, int] = {}
    loops = []
    for i, line in enumerate(lines):
        label = re.match(r"^(\.LBB\S+):", line)
        if label:
            labels[label.group(1)] = i
        jump = re.match(r"^j\w+\s+(\.LBB\S+)$", line)
        if jump and jump.group(1) in labels:
            loops.append(lines[labels[jump.group(1)] : i])
    return loops


def compile_text(text: str, folder: Path, name: str | None = None):
    """Write `text` as a .lyr file in `folder`, compile it beside itself, import the module."""
    name = name or f"model_{next(_count)}"
    src = folder / f"{name}.lyr"
    src.write_text(textwrap.dedent(text), encoding="utf-8")
    out = src.with_suffix(".py")
    driver.compile_file(src, out)
    return driver.import_module(out)


@pytest.fixture
def compile_lyr(tmp_path: Path):
    """`compile_lyr(text)` -> the imported generated module."""

    def _compile(text: str, name: str | None = None):
        return compile_text(text, tmp_path, name)

    return _compile


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.golden from the current code generator (read the diff!)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """Whether golden files are to be rewritten instead of compared (`--update-golden`)."""
    return bool(request.config.getoption("--update-golden"))


def around(threshold: float) -> list[float]:
    """`threshold` and `-threshold`, each with its neighbours in float32 and in float64 (a value
    the model's dtype holds exactly on either side of a switch in a formula)."""
    out = []
    for x in (threshold, -threshold):
        out.append(x)
        for dtype in (np.float32, np.float64):
            value = dtype(x)
            out += [
                float(np.nextafter(value, dtype(-math.inf))),
                float(np.nextafter(value, dtype(math.inf))),
            ]
    return out
