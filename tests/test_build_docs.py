"""docs/build.md runs as written: its C example (main.c, compiled and run with the page's own
commands, against the shared library and the static archive), its ctypes example and its
workspace fragment, on samples/mlp.lyr's Mlp built once with `layerc.build.build`; their
outputs must be PyTorch's float64 outputs (samples/mlp_sample_expect.npy, mlp_expect.npy) to
1e-5. The header excerpts must be lines of the headers layerc writes, and the errors shown
the errors `layerc build` prints.

The page marks each block it runs with an HTML comment `<!-- example: TAG -->` on the line
before its fence. Only the tests that compile C skip, naming the reason, when no C compiler is
found.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layerc import driver
from layerc.build import Library, build, find_compiler
from layerc.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "build.md"
SAMPLES = ROOT / "samples"
TOLERANCE = 1e-5


def example(tag: str) -> str:
    """The fenced block right after `<!-- example: TAG -->` in docs/build.md."""
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(
        r"^<!-- example: " + re.escape(tag) + r" -->\n```[a-z]*\n(.*?)^```$", text, re.M | re.S
    )
    assert len(found) == 1, f"docs/build.md: {len(found)} blocks marked 'example: {tag}'"
    return found[0]


def compiler_or_skip() -> str:
    try:
        return find_compiler()
    except UsageError as exc:
        pytest.skip(f"no C compiler: {exc}")


def build_sample(source: str, model_name: str, out: Path) -> Library:
    program, _ = driver.check_file(SAMPLES / source)
    model = next(m for m in program.models if m.name == model_name)
    return build(program, model, out)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as the page's examples expect the repository's root to be: `lib/`
    holding Mlp's library (as `layerc build samples/mlp.lyr -o lib/` writes it), and
    `samples/mlp_input.npy`."""
    compiler_or_skip()
    root = tmp_path_factory.mktemp("build_docs")
    library = build_sample("mlp.lyr", "Mlp", root / "lib")
    assert library.prefix == "mlp"
    (root / "samples").mkdir()
    shutil.copyfile(SAMPLES / "mlp_input.npy", root / "samples" / "mlp_input.npy")
    return root


def run_commands(tag: str, root: Path) -> str:
    """Run the ```sh block marked TAG in `root` as the page gives it, with the C compiler
    layerc finds in place of `cc`; the `layerc build` line is the fixture's build, so it is
    checked, not run. Returns what the commands printed."""
    compiler = find_compiler()
    printed = []
    for line in example(tag).splitlines():
        if not line.strip():
            continue
        if line.startswith("layerc build"):
            assert line == "layerc build samples/mlp.lyr -o lib/", line
            continue
        if line.startswith("cc "):
            line = compiler + line[len("cc") :]
        done = subprocess.run(
            line, shell=True, cwd=root, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"`{line}` failed:\n{done.stdout}{done.stderr}"
        if not line.startswith(compiler):
            printed.append(done.stdout)
    return "".join(printed)


def numbers(text: str) -> np.ndarray:
    """The rows of numbers `text` prints, one row a line."""
    return np.array([[float(v) for v in line.split()] for line in text.splitlines() if line])


def test_c_example_input_is_the_sample() -> None:
    """main.c's input is samples/mlp_sample.npy, value for value (as float32)."""
    values = re.findall(r"(-?\d+\.\d+)f\b", example("c"))
    sample = np.load(SAMPLES / "mlp_sample.npy")
    assert np.array_equal(np.array(values, dtype=np.float32), sample)


def test_c_example_runs_as_written(folder: Path) -> None:
    (folder / "main.c").write_text(example("c"), encoding="utf-8")
    printed = numbers(run_commands("c-run", folder))
    expect = np.load(SAMPLES / "mlp_sample_expect.npy").reshape(1, -1)
    assert printed.shape == expect.shape
    assert np.abs(printed - expect).max() <= TOLERANCE, (printed, expect)
    shown = numbers(example("c-output"))
    assert np.abs(shown - expect).max() <= TOLERANCE, "the page shows another output"
    assert np.abs(shown - printed).max() <= 2e-6, (shown, printed)


def test_c_example_links_statically(folder: Path) -> None:
    (folder / "main.c").write_text(example("c"), encoding="utf-8")
    printed = numbers(run_commands("c-static", folder))
    expect = np.load(SAMPLES / "mlp_sample_expect.npy").reshape(1, -1)
    assert np.abs(printed - expect).max() <= TOLERANCE, (printed, expect)
    undefined = subprocess.run(
        ["nm", "-u", str(folder / "main-static")], capture_output=True, text=True, check=False
    ).stdout
    assert "mlp_" not in undefined  # the model is in the program, not looked up at run time


def test_ctypes_example_runs_as_written(folder: Path) -> None:
    source = example("ctypes")
    assert 'np.load("samples/mlp_input.npy")' in source
    (folder / "mlp_ctypes.py").write_text(source, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "mlp_ctypes.py"], cwd=folder, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    printed = numbers(done.stdout)
    expect = np.load(SAMPLES / "mlp_expect.npy")
    assert printed.shape == expect.shape == (6, 3)
    assert np.abs(printed - expect).max() <= TOLERANCE, (printed, expect)


def test_workspace_fragment_compiles_and_computes(folder: Path) -> None:
    """The heap-workspace function compiles without warnings, and gives mlp_forward's outputs."""
    compiler = find_compiler()
    (folder / "workspace.c").write_text(example("c-workspace"), encoding="utf-8")
    driver_source = """#include <stdio.h>
#include "mlp.h"
int forward_on_heap(const float *x, float *y, int64_t n);
int main(void)
{
    float x[2 * MLP_IN_FEATURES], a[2 * MLP_OUT_FEATURES], b[2 * MLP_OUT_FEATURES];
    for (int i = 0; i < 2 * MLP_IN_FEATURES; i++) x[i] = (float)i / 7.0f - 1.0f;
    if (forward_on_heap(x, a, 2) != MLP_OK || mlp_forward(x, b, 2) != MLP_OK) return 1;
    for (int i = 0; i < 2 * MLP_OUT_FEATURES; i++) if (a[i] != b[i]) return 2;
    return 0;
}
"""
    (folder / "workspace_main.c").write_text(driver_source, encoding="utf-8")
    command = [
        *compiler.split(), "-O2", "-Wall", "-Wextra", "-I", "lib", "workspace.c",
        "workspace_main.c", "-o", "workspace", "-L", "lib", "-lmlp", "-Wl,-rpath,$ORIGIN/lib",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    assert subprocess.run([str(folder / "workspace")], check=False).returncode == 0


def test_header_excerpt_and_workspace_size(folder: Path) -> None:
    """Every line of the page's excerpt of mlp.h is a line of the header written, and the
    workspace size the page gives is the library's."""
    header = (folder / "lib" / "mlp.h").read_text(encoding="utf-8").splitlines()
    for line in example("header").splitlines():
        assert line in header, f"mlp.h has no line {line!r}"
    lib = ctypes.CDLL(str(folder / "lib" / "libmlp.so"))
    lib.mlp_workspace_size.restype = ctypes.c_size_t
    stated = re.search(r"\((\d+) bytes for `Mlp`", DOC.read_text(encoding="utf-8"))
    assert stated is not None
    assert lib.mlp_workspace_size() == int(stated.group(1))


def test_header_of_several_inputs_and_outputs(tmp_path: Path) -> None:
    compiler_or_skip()
    build_sample("residual.lyr", "Heads", tmp_path)
    header = (tmp_path / "heads.h").read_text(encoding="utf-8").splitlines()
    for line in example("header-heads").splitlines():
        assert line in header, f"heads.h has no line {line!r}"


def shown_error(tag: str) -> tuple[list[str], str]:
    """The command (after `$ `) and the error a ```text block marked TAG shows."""
    first, *rest = example(tag).splitlines()
    assert first.startswith("$ layerc ")
    return first[2:].split()[1:], "\n".join(rest) + "\n"


def test_refused_batch_statistics(tmp_path: Path) -> None:
    """The BatchNorm without running statistics: exit 1, the error the page shows, nothing
    written. (No compiler is needed: the model is refused first.)"""
    (tmp_path / "bn.lyr").write_text(example("refused"), encoding="utf-8")
    args, error = shown_error("refused-error")
    done = subprocess.run(
        [sys.executable, "-m", "layerc", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, NO_COLOR="1"),
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bn.lyr"]


def test_no_compiler_error(tmp_path: Path) -> None:
    """With no compiler on the PATH and no $CC: exit 2, the error the page shows."""
    samples = tmp_path / "samples"
    samples.mkdir()
    for path in SAMPLES.glob("mlp*"):  # the source, its weights and its tests' data
        if path.suffix != ".py":
            shutil.copyfile(path, samples / path.name)
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env.update(PATH=str(empty), NO_COLOR="1")
    args, error = shown_error("no-compiler")
    done = subprocess.run(
        [sys.executable, "-m", "layerc", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "samples"]
