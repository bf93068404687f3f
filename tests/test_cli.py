"""The command line (layerc/cli.py): `layerc compile | check | test`, run as users run them (in
a subprocess), and in-process where a failure has to be injected. Exit codes: 0 success, 1 a user
error or a failing test, 2 a usage error; user errors print `file:line:col: message`, the source
line and a caret, and never a traceback."""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LESSON

import layerc
from layerc import cli

LESSON_WEIGHT = np.array([[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]], dtype=np.float64)

# 100 * 50 = 5000 weights: more than code generation embeds, so it writes a `.weights` file
BIG = """\
model Big {{
    fc = Linear(100, 50) {{ init = uniform(seed={seed}) }}
    Tanh
}}
"""

BAD = "model M {\n  fc = Lineer(4, 3) { init = uniform(seed=0) }\n}\n"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m layerc.cli ARGS` in `cwd`, with the environment a user has at a pipe."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    return subprocess.run(
        [sys.executable, "-m", "layerc.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "seed.lyr").write_text(LESSON, encoding="utf-8")
    (folder / "bad.lyr").write_text(BAD, encoding="utf-8")
    return folder


# --------------------------------------------------------------------------- usage


def test_version_from_the_installed_script(work: Path) -> None:
    script = shutil.which("layerc") or str(Path(sys.executable).with_name("layerc"))
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"layerc {layerc.__version__}\n",
        "",
    )


def test_python_dash_m_runs_the_same_command_line(work: Path) -> None:
    lesson = work / "seed.lyr"
    lesson.write_text(LESSON, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "layerc", "test", str(lesson)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"PASS {lesson}:10 test Seed: max abs error 0")
    usage = subprocess.run(
        [sys.executable, "-m", "layerc", "frobnicate"], capture_output=True, text=True, timeout=120
    )
    assert usage.returncode == 2 and usage.stderr.startswith("usage: layerc ")


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ([], ["usage: layerc", "compile", "check", "test", "--version"]),
        (["compile"], ["usage: layerc compile", "FILE", "-o OUT", "a .py path, or a folder"]),
        (["check"], ["usage: layerc check", "FILE", "Writes nothing"]),
        (["test"], ["usage: layerc test", "FILE", "largest absolute and relative error"]),
    ],
)
def test_help_of_each_command(work: Path, command: list[str], words: list[str]) -> None:
    result = run(*command, "--help", cwd=work)
    assert result.returncode == 0 and result.stderr == ""
    text = " ".join(result.stdout.split())  # argparse wraps to the terminal's width
    for word in words:
        assert word in text


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ([], "usage: layerc"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["compile"], "the following arguments are required: FILE"),
        (["check", "seed.lyr", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_2(work: Path, command: list[str], message: str) -> None:
    result = run(*command, cwd=work)
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""
    no_traceback(result)


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["--help"], 0),  # argparse ignores a failed write of its help
        (["check", "seed.lyr"], 1),
        (["test", "seed.lyr"], 1),
        (["summary", "seed.lyr"], 1),
        (["graph", "seed.lyr"], 1),
        (["run", "seed.lyr", "-i", "x.csv"], 1),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else str(value),
)
def test_a_reader_gone_away_ends_the_command_quietly(
    work: Path, command: list[str], code: int
) -> None:
    """`layerc summary seed.lyr | head -1`: the reader closes the pipe, and the command ends
    with exit code 1 and nothing on stderr (no traceback, no "Exception ignored" from Python's
    last flush), as other filters do. The pipe is closed before the command starts, so every
    write meets it, however much the command prints."""
    (work / "x.csv").write_text("1,2,3,4\n", encoding="utf-8")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "layerc", *command],
            cwd=work,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (code, "")


# --------------------------------------------------------------------------- check


def test_check_reports_the_models_and_writes_nothing(work: Path) -> None:
    before = files_in(work)
    result = run("check", "seed.lyr", cwd=work)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "seed.lyr: ok: Seed (4 -> 3); 1 test(s)\n"
    assert files_in(work) == before


def test_check_error_prints_location_source_line_and_caret(work: Path) -> None:
    before = files_in(work)
    result = run("check", "bad.lyr", cwd=work)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "bad.lyr:2:8: unknown layer kind 'Lineer'; did you mean 'Linear'? (layer kinds: Linear, "
        "ReLU, Sigmoid, Tanh, Identity, LeakyReLU, Softmax, "
        "Dropout, AlphaDropout, Flatten, BatchNorm1d, LayerNorm, PReLU, GELU, ELU, CELU, Softplus, Hardtanh, SiLU, Mish, SELU, ReLU6, Hardsigmoid, Hardswish, LogSigmoid, Softsign, LogSoftmax, Hardshrink, Softshrink, Tanhshrink)\n"
        "      fc = Lineer(4, 3) { init = uniform(seed=0) }\n"
        "           ^\n"
    )
    assert files_in(work) == before


def test_an_unknown_kind_lists_the_kinds_there_are(tmp_path: Path) -> None:
    """Far from every kind (`Conv2d`) or close to one (`Gelu` ~ `GELU`), an unknown kind's
    message lists the kinds, and the models defined above it, in the order of the table of
    kinds."""
    from layerc.kinds import KINDS

    kinds = ", ".join(KINDS)
    (tmp_path / "kinds.lyr").write_text(
        "model Block {\n    Linear(4, 4) { init = zeros() }\n}\n\n"
        "model M {\n    Block()\n    Gelu()\n}\n\n"
        "model N {\n    Linear(4, 4) { init = zeros() }\n    Conv2d(4, 4)\n}\n",
        encoding="utf-8",
    )
    result = run("check", "kinds.lyr", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "kinds.lyr:7:5: unknown layer kind 'Gelu'; did you mean 'GELU'? "
        f"(layer kinds: {kinds}; models defined above: Block)\n"
        "        Gelu()\n"
        "        ^\n"
    )
    (tmp_path / "kinds.lyr").write_text(
        "model N {\n    Linear(4, 4) { init = zeros() }\n    Conv2d(4, 4)\n}\n", encoding="utf-8"
    )
    result = run("check", "kinds.lyr", cwd=tmp_path)
    assert result.stderr.splitlines()[0] == (
        f"kinds.lyr:3:5: unknown layer kind 'Conv2d' (layer kinds: {kinds})"
    )
    assert kinds.split(", ")[:7] == [
        "Linear",
        "ReLU",
        "Sigmoid",
        "Tanh",
        "Identity",
        "LeakyReLU",
        "Softmax",
    ]


def test_compile_syntax_error_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "syn.lyr").write_text('model M {\n  Linear(1, 1) { weight = load("w.npy) }\n}\n')
    result = run("compile", "syn.lyr", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        'syn.lyr:2:32: unterminated string: a string ends with " on the same line\n'
        '      Linear(1, 1) { weight = load("w.npy) }\n' + " " * (4 + 31) + "^\n"
    )
    assert sorted(os.listdir(tmp_path)) == ["syn.lyr"]


def test_unreadable_and_undecodable_files_are_user_errors(tmp_path: Path) -> None:
    """One `layerc test` run over files that are each wrong in another way: every one is
    reported, none with a traceback, and the run exits 1."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "latin1.lyr").write_bytes(b"# caf\xe9\nmodel M { ReLU }\n")
    (tmp_path / "nul.lyr").write_bytes(b"model M {\n  ReLU\x00\n}\n")
    (tmp_path / "noweights.lyr").write_text(
        'model M {\n  Linear(2, 2, bias=false) { weight = load("gone.npy") }\n}\n'
    )
    names = ["missing.lyr", "adir", "latin1.lyr", "nul.lyr", "noweights.lyr"]
    result = run("test", *names, cwd=tmp_path)
    no_traceback(result)
    assert result.returncode == 1
    assert result.stdout == "0 passed, 5 failed\n"
    heads = [line for line in result.stderr.splitlines() if not line.startswith("    ")]
    assert heads == [
        "missing.lyr: cannot read the file: No such file or directory",
        "adir: is a directory, not a .lyr file",
        "latin1.lyr:1:6: the file is not valid UTF-8 text (byte 0xe9)",
        "nul.lyr:2:7: the file contains a NUL character",
        f"noweights.lyr:2:39: no such file: 'gone.npy' (looked in {Path('.')})",
    ]


# --------------------------------------------------------------------------- compile


def test_compile_writes_the_module_beside_the_source(work: Path, monkeypatch) -> None:
    """The lesson of the spec's section 1, as a user runs it."""
    result = run("compile", "seed.lyr", cwd=work)
    assert (result.returncode, result.stdout, result.stderr) == (0, "wrote seed.py\n", "")
    assert (work / "seed.py").is_file()

    monkeypatch.syspath_prepend(str(work))
    monkeypatch.delitem(sys.modules, "seed", raising=False)
    try:
        from seed import Seed  # type: ignore[import-not-found]

        net = Seed()
        x = np.array([1, 2, 3, 4], dtype=np.float32)
        y = net(x)
        assert y.dtype == np.float32 and y.shape == (3,)
        np.testing.assert_array_equal(y, LESSON_WEIGHT @ x.astype(np.float64))
        assert y.tolist() == [30.0, 40.0, 50.0]
        assert repr(Seed().fc) == "Linear(in_features=4, out_features=3, bias=False)"
        assert net.fc.weight.shape == (3, 4)
    finally:
        sys.modules.pop("seed", None)
        importlib.invalidate_caches()


def test_compile_to_a_path_and_into_a_folder(work: Path) -> None:
    (work / "out").mkdir(exist_ok=True)
    result = run("compile", "seed.lyr", "-o", "elsewhere.py", cwd=work)
    assert (result.returncode, result.stdout) == (0, "wrote elsewhere.py\n")
    result = run("compile", "seed.lyr", "-o", "out", cwd=work)
    assert (result.returncode, result.stdout) == (0, f"wrote {Path('out', 'seed.py')}\n")
    # the module names the source, not where it was written, so all three are the same text
    reference = run("compile", "seed.lyr", "-o", "out/", cwd=work)
    assert reference.returncode == 0
    assert (work / "elsewhere.py").read_bytes() == (work / "out" / "seed.py").read_bytes()


def test_compile_into_a_folder_that_does_not_exist_is_an_error(work: Path) -> None:
    """`-o build/` means a folder: it must not become a file named `build`."""
    result = run("compile", "seed.lyr", "-o", "build/", cwd=work)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "build/: cannot write the module: no such folder\n"
    assert not (work / "build").exists()


@pytest.fixture
def big(tmp_path: Path) -> Path:
    """A source whose module keeps its weights in a `.weights` file, compiled once."""
    (tmp_path / "big.lyr").write_text(BIG.format(seed=0), encoding="utf-8")
    assert cli.main(["compile", str(tmp_path / "big.lyr")]) == 0
    names = set(os.listdir(tmp_path))
    (weights,) = names - {"big.lyr", "big.py"}
    assert len(names) == 3 and weights.startswith("big.") and weights.endswith(".weights")
    return tmp_path


def test_compiling_twice_gives_byte_identical_output(big: Path, tmp_path_factory) -> None:
    first = files_in(big)
    result = run("compile", "big.lyr", cwd=big)
    assert result.returncode == 0
    assert files_in(big) == first
    # ... also from another folder: nothing of where it ran leaks into the output
    other = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(big / "big.lyr", other / "big.lyr")
    assert run("compile", "big.lyr", cwd=other).returncode == 0
    assert files_in(other) == first


def test_failed_compile_leaves_earlier_output_untouched(big: Path) -> None:
    good = files_in(big)
    (big / "big.lyr").write_text(BIG.format(seed=0).replace("Tanh", "Tahn"), encoding="utf-8")
    result = run("compile", "big.lyr", cwd=big)
    assert result.returncode == 1
    assert result.stderr.startswith("big.lyr:3:5: unknown layer kind 'Tahn'; did you mean 'Tanh'?")
    after = files_in(big)
    del good["big.lyr"], after["big.lyr"]
    assert after == good


@pytest.mark.parametrize("failing", ["module-rename", "weights-fsync"])
def test_failed_write_leaves_earlier_output_and_no_temporary_files(
    big: Path, monkeypatch, capsys, failing: str
) -> None:
    """A disk that fills up while the new module (with new weights) is written: the module and
    weights file from before stay byte-identical, and nothing else is left in the folder."""
    good = files_in(big)
    (big / "big.lyr").write_text(BIG.format(seed=1), encoding="utf-8")
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if failing == "module-rename":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith(".py"):
                raise full
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
        what = "the module"
    else:
        real_fsync = os.fsync

        def fsync(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode):  # a file, not the folder synced after
                raise full
            return real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        what = "its weights file big."

    assert cli.main(["compile", str(big / "big.lyr")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{big / 'big.py'}: cannot write {what}")
    assert err.rstrip().endswith(os.strerror(errno.ENOSPC))
    monkeypatch.undo()
    after = files_in(big)
    assert after.pop("big.lyr") == BIG.format(seed=1).encode()
    del good["big.lyr"]
    assert after == good

    # once the disk has room again the same command succeeds and replaces both files
    assert cli.main(["compile", str(big / "big.lyr")]) == 0
    fresh = files_in(big)
    (old_weights,) = set(good) - {"big.py"}
    (new_weights,) = set(fresh) - {"big.py", "big.lyr"}
    assert new_weights != old_weights and fresh["big.py"] != good["big.py"]


# --------------------------------------------------------------------------- test


def test_layerc_test_on_the_lesson_passes(work: Path) -> None:
    result = run("test", "seed.lyr", cwd=work)
    no_traceback(result)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "PASS seed.lyr:10 test Seed: max abs error 0, max rel error 0 "
        "(atol 1e-05, rtol 1.3e-06)\n"
        "1 passed, 0 failed\n"
    )


def test_layerc_test_reports_each_test_and_fails_on_any_failure(work: Path) -> None:
    x = np.array([[1, 2, 3, 4], [0, 0, 0, 1]], dtype=np.float64)
    reference = x @ LESSON_WEIGHT.T  # NumPy float64: [[30, 40, 50], [4, 5, 6]]
    body = LESSON.split("test Seed")[0]
    (work / "tests.lyr").write_text(
        body
        + "test Seed { input = [1, 2, 3, 4]; expect = [30, 40, 51] }\n"
        + f"test Seed {{ input = {x.astype(int).tolist()}; "
        + f"expect = {reference.astype(int).tolist()} }}\n"
        + "test Seed { input = [1, 2, 3, 4]; expect = [30, 40, 51]; atol = 1 }\n",
        encoding="utf-8",
    )
    result = run("test", "tests.lyr", cwd=work)
    no_traceback(result)
    assert (result.returncode, result.stderr) == (1, "")
    rel = f"{1 / 51:.3g}"  # |50 - 51| / |51|
    assert result.stdout.splitlines() == [
        f"FAIL tests.lyr:10 test Seed: max abs error 1, max rel error {rel} "
        "(atol 1e-05, rtol 1.3e-06)",
        "    1 of 3 elements outside the tolerance:",
        "    index   got  expected  abs error  rel error",
        f"    [2]    50.0      51.0          1     {rel}",
        "PASS tests.lyr:11 test Seed: max abs error 0, max rel error 0 (atol 1e-05, rtol 1.3e-06)",
        f"PASS tests.lyr:12 test Seed: max abs error 1, max rel error {rel} (atol 1, rtol 1.3e-06)",
        "2 passed, 1 failed",
    ]


IDENTITY = """\
model Id {
    fc = Linear(4, 4, bias=false) {
        weight = [[1, 0, 0, 0],
                  [0, 1, 0, 0],
                  [0, 0, 1, 0],
                  [0, 0, 0, 1]]
    }
}

test Id {
    input = [[1, 2, 3, 4],
             [5, 6, 7, 8],
             [10, 20, 30, 40]]
    expect = [[1, 2.5, 3, 4],
              [5, 6, 7.001, 9],
              [10.1, 20.2, 30.3, 40.4]]
    atol = 0.0001
    rtol = 0
}
"""


def test_a_failing_test_shows_its_five_worst_elements_aligned(tmp_path: Path) -> None:
    """Seven of twelve outputs are off (by 1, 0.5, 0.4, 0.3, 0.2, 0.1 and 0.001): `layerc test`
    prints how many, then the five worst, worst first, as a table whose columns line up."""
    (tmp_path / "id.lyr").write_text(IDENTITY, encoding="utf-8")
    result = run("test", "id.lyr", cwd=tmp_path)
    no_traceback(result)
    assert (result.returncode, result.stderr) == (1, "")
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == "FAIL id.lyr:10 test Id: max abs error 1, max rel error 0.2 (atol 0.0001, rtol 0)"
    )
    assert lines[1:] == [
        "    7 of 12 elements outside the tolerance; the 5 worst:",
        "    index    got  expected  abs error  rel error",
        "    [1, 3]   8.0       9.0          1      0.111",
        "    [0, 1]   2.0       2.5        0.5        0.2",
        "    [2, 3]  40.0      40.4        0.4     0.0099",
        "    [2, 2]  30.0      30.3        0.3     0.0099",
        "    [2, 1]  20.0      20.2        0.2     0.0099",
        "0 passed, 1 failed",
    ]
    assert len({len(line) for line in lines[2:8]}) == 1  # right-aligned to one width


def test_worst_elements_rank_by_how_far_outside_the_tolerance() -> None:
    """The worst element is the one the most times its tolerance off, not the largest absolute
    error: 2 off 1000 (tolerance 1.0001, twice over) is less bad than 0.01 off 0 (tolerance
    1e-4, a hundred times over). A NaN
    where a number is expected is infinitely off; elements within tolerance are not listed."""
    from layerc.driver import Mismatch, worst_elements

    output = np.array([1002.0, 0.01, np.nan, 3.0], dtype=np.float32)
    expect = np.array([1000.0, 0.0, 2.0, 3.0])
    count, worst = worst_elements(output, expect, atol=1e-4, rtol=1e-3)
    assert count == 3
    assert [m.index for m in worst] == [(2,), (1,), (0,)]
    assert worst[1] == Mismatch((1,), float(np.float32(0.01)), 0.0, float(np.float32(0.01)), np.inf)
    assert worst_elements(output[3:], expect[3:], atol=1e-4, rtol=1e-3) == (0, ())
    count, worst = worst_elements(np.zeros((4, 5)), np.ones((4, 5)), atol=0, rtol=0, count=5)
    assert count == 20 and [m.index for m in worst] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
