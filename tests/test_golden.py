"""Golden files: the module layerc writes for each `tests/golden/NAME.lyr` must equal
`tests/golden/NAME.py.golden` byte for byte, so a refactor that changes the generated code shows
up as a diff to read; and the lowering stage's plan for it (which layers fuse, which BLAS path
each step takes, which buffers) must equal `tests/golden/NAME.plan`, which shows why the code
looks as it does.

After an intended change to lowering or code generation, rewrite the golden files with

    python -m pytest tests/test_golden.py --update-golden

and read `git diff tests/golden` before committing. Also here: compiling is deterministic (the
same source gives the same bytes in another folder, another process and another hash seed),
and the header names the source and the layerc version and leaks no path or time.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import layerc
from layerc import codegen, driver

GOLDEN = Path(__file__).parent / "golden"
NAMES = sorted(path.stem for path in GOLDEN.glob("*.lyr"))


def compile_copy(name: str, folder: Path) -> tuple[str, dict[str, bytes]]:
    """Copy `golden/NAME.lyr` into `folder`, compile it beside itself (as `NAME.py`, from an
    absolute path) and return the module's text and every weights file written, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"{name}.lyr"
    shutil.copyfile(GOLDEN / f"{name}.lyr", src)
    out = src.with_suffix(".py")
    driver.compile_file(src.resolve(), out.resolve())
    weights = {p.name: p.read_bytes() for p in sorted(folder.glob(f"{name}.*.weights"))}
    return out.read_text(encoding="utf-8"), weights


def test_golden_sources_are_the_representative_ones():
    """The lesson, an MLP with every activation, a nested model, a float64 model, a model
    whose weights go to a weights file, the kinds with weights and buffers, per-sample
    shapes and fusion, and graph models (forward blocks)."""
    assert NAMES == ["activations", "big", "float64", "graph", "kinds", "lesson", "nested"]
    spec_seed = Path(__file__).parent / "spec_programs" / "seed.lyr"
    assert (GOLDEN / "lesson.lyr").read_bytes() == spec_seed.read_bytes()


def assert_golden(text: str, golden: Path, what: str, update: bool) -> None:
    """`text` equals the golden file (or, with --update-golden, becomes it); a difference fails
    with a unified diff and the command that accepts it."""
    if update:
        golden.write_text(text, encoding="utf-8", newline="\n")
        return
    assert golden.exists(), f"no {golden.name}: run pytest {__file__} --update-golden"
    expected = golden.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"golden/{golden.name}",
                "now",
                n=2,
            )
        )
        pytest.fail(
            f"{what} differs from {golden.name}; if intended, run "
            f"`python -m pytest tests/test_golden.py --update-golden` and review the diff:\n{diff}"
        )


@pytest.mark.parametrize("name", NAMES)
def test_generated_module_matches_golden(name: str, tmp_path: Path, update_golden: bool):
    source, _ = compile_copy(name, tmp_path)
    golden = GOLDEN / f"{name}.py.golden"
    assert_golden(source, golden, f"generated code for {name}.lyr", update_golden)


@pytest.mark.parametrize("name", NAMES)
def test_plan_matches_golden(name: str, update_golden: bool):
    """Source in, plan text out."""
    program, _ = driver.check_file(GOLDEN / f"{name}.lyr")
    golden = GOLDEN / f"{name}.plan"
    assert_golden(driver.plan_text(program), golden, f"the plan for {name}.lyr", update_golden)


@pytest.mark.parametrize("name", NAMES)
def test_same_source_gives_same_bytes(name: str, tmp_path: Path):
    """Two compiles in two folders: identical module text and weights file bytes. A third
    compile over the first leaves exactly one weights file."""
    first_source, first_weights = compile_copy(name, tmp_path / "a")
    second_source, second_weights = compile_copy(name, tmp_path / "deeper" / "b")
    assert first_source == second_source
    assert first_weights == second_weights
    again_source, again_weights = compile_copy(name, tmp_path / "a")
    assert (again_source, again_weights) == (first_source, first_weights)
    assert len(first_weights) == (1 if name == "big" else 0)


@pytest.mark.parametrize("name", ["big", "nested"])
def test_output_does_not_depend_on_the_process(name: str, tmp_path: Path):
    """`layerc compile` in fresh interpreters with different hash seeds (set and dict order of
    strings) and working folders writes the same bytes as the in-process compile."""
    expected_source, expected_weights = compile_copy(name, tmp_path / "here")
    for seed in ("1", "2"):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        shutil.copyfile(GOLDEN / f"{name}.lyr", folder / f"{name}.lyr")
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-m", "layerc.cli", "compile", f"{name}.lyr"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert (folder / f"{name}.py").read_text(encoding="utf-8") == expected_source
        weights = {p.name: p.read_bytes() for p in sorted(folder.glob(f"{name}.*.weights"))}
        assert weights == expected_weights


@pytest.mark.parametrize("name", NAMES)
def test_header_names_source_and_version_and_nothing_local(name: str, tmp_path: Path):
    source, _ = compile_copy(name, tmp_path)
    lines = source.splitlines()
    # Lines 1 and 2 are fixed (Python reads an encoding declaration there); the source after.
    assert tuple(lines[:2]) == codegen.FIXED_HEADER
    assert f"layerc {layerc.__version__}" in lines[1]
    assert lines[2] == f"# Source: '{name}.lyr'"
    for local in {str(tmp_path), str(tmp_path.resolve()), os.getcwd(), str(Path.home())}:
        assert local not in source
    assert not re.search(r"(?<![\w.])/(tmp|home|usr|root|Users|var)/", source)
    assert not re.search(r"\b(19|20)\d\d-[01]\d-[0-3]\d\b", source), "a date"
    assert not re.search(r"\b[0-2]\d:[0-5]\d(:[0-5]\d)?\b", source), "a time of day"


def test_weights_file_holds_the_drawn_weights(tmp_path: Path):
    """big.lyr's weights live in the weights file, not in the source, and the module reads
    them back: U(-1/sqrt(in), 1/sqrt(in)) draws, rounded once to float32."""
    source, weights = compile_copy("big", tmp_path)
    (name,) = weights
    assert repr(name) in source
    assert "_np.array(" not in source
    net = driver.import_module(tmp_path / "big.py").Big()
    assert net.fc1.weight.dtype == np.float32 and net.fc1.weight.shape == (80, 64)
    for param, fan_in in ((net.fc1.weight, 64), (net.fc1.bias, 64), (net.fc2.weight, 80)):
        bound = 1 / np.sqrt(fan_in)
        values = param.astype(np.float64).ravel()
        assert np.all(np.abs(values) <= np.float32(bound))
        # U(-b, b) has mean 0 and standard deviation b/sqrt(3); allow 5 standard errors
        assert abs(values.mean()) < 5 * bound / np.sqrt(3 * values.size)
        assert abs(values.std() - bound / np.sqrt(3)) < 5 * bound / np.sqrt(values.size)
        assert values.max() > 0.9 * bound and values.min() < -0.9 * bound
    assert not np.array_equal(net.fc1.weight[:10, :10], net.fc2.weight[:10, :10])
    assert net.fc2.bias is None


def test_literals_round_trip_exactly(tmp_path: Path):
    """float64.lyr's weights need all 17 significant digits (and one is the largest float64):
    the generated module holds exactly the numbers written in the source."""
    compile_copy("float64", tmp_path)
    net = driver.import_module(tmp_path / "float64.py").Precise()
    weight = np.array([[0.1, 0.2], [0.30000000000000004, -1e-300]])
    bias = np.array([1.7976931348623157e308, -2.2250738585072014e-308])
    assert net.fc.weight.dtype == np.float64
    assert net.fc.weight.tobytes() == weight.tobytes()
    assert net.fc.bias.tobytes() == bias.tobytes()
