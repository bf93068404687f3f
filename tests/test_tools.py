"""`layerc run`, `layerc summary`, `layerc graph`, coloured diagnostics, the progress bar and
"did you mean" suggestions.

Numbers are checked against NumPy in float64 (run) and PyTorch (summary's parameter counts and
FLOPs); the terminal behaviour is checked under a pseudo-terminal, as a user would see it.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from conftest import needs_dot

import layerc
from layerc import driver
from layerc.cli import main
from layerc.errors import LayercError, Loc, render
from layerc.runtime import threads
from layerc.tools import run as run_tool
from layerc.tools.summary import summary

RTOL, ATOL = 1.3e-6, 1e-5  # float32, as torch.testing.assert_close
ANSI = re.compile(r"\x1b\[[0-9;]*m")

rng = np.random.default_rng(7)
W1 = rng.normal(size=(6, 4))
B1 = rng.normal(size=6)
W2 = rng.normal(size=(3, 6))


def literal(array: np.ndarray) -> str:
    return json.dumps(array.tolist())


MODEL = f"""\
# net.lyr: Net uses Hidden, so Net is the file's one top-level model
model Hidden {{
    fc = Linear(4, 6) {{
        weight = {literal(W1)}
        bias = {literal(B1)}
    }}
    act = Tanh()
}}

model Net {{
    hidden = Hidden()
    out = Linear(6, 3, bias=false) {{
        weight = {literal(W2)}
    }}
}}
"""


def reference(x: np.ndarray) -> np.ndarray:
    """Net in float64 NumPy, on the float32 weights the model holds."""
    w1, b1, w2 = (a.astype(np.float32).astype(np.float64) for a in (W1, B1, W2))
    return np.tanh(x.astype(np.float32).astype(np.float64) @ w1.T + b1) @ w2.T


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tools")
    (path / "net.lyr").write_text(MODEL, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    monkeypatch.setenv("LAYERC_CACHE_DIR", str(folder / "cache"))
    monkeypatch.delenv("NO_COLOR", raising=False)


SAMPLES = np.random.default_rng(1).normal(size=(7, 4))


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)
    assert actual.shape == expected.shape


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- run: formats


def write_input(path: Path, fmt: str, data: np.ndarray, header: bool = False) -> None:
    if fmt == "npy":
        np.save(path, data)
    elif fmt == "csv":
        lines = ["a,b,c,d"] if header else []
        lines += [",".join(repr(float(v)) for v in row) for row in data]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(row.tolist()) + "\n" for row in data), encoding="utf-8")


def read_output(path: Path, fmt: str) -> np.ndarray:
    if fmt == "npy":
        array = np.load(path)
        assert array.dtype == np.float32
        return array
    if fmt == "csv":
        return np.loadtxt(path, delimiter=",", ndmin=2)
    return np.array([json.loads(line) for line in path.read_text().splitlines()])


@pytest.mark.parametrize("out_fmt", ["npy", "csv", "jsonl"])
@pytest.mark.parametrize("in_fmt", ["npy", "csv", "jsonl"])
def test_run_formats(
    in_fmt: str, out_fmt: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = folder / f"in_{in_fmt}.{in_fmt}", folder / f"out_{in_fmt}.{out_fmt}"
    write_input(src, in_fmt, SAMPLES, header=True)
    code, out, err = run_cli(capsys, "run", "net.lyr", "--input", str(src), "--output", str(dst))
    assert (code, err) == (0, "")
    assert out == f"wrote {dst} (7 rows)\n"
    close(read_output(dst, out_fmt), reference(SAMPLES))


def test_run_csv_to_stdout_with_and_without_header(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for header in (True, False):
        write_input(folder / "x.csv", "csv", SAMPLES, header=header)
        code, out, err = run_cli(capsys, "run", "net.lyr", "-i", "x.csv")
        assert (code, err) == (0, "")
        rows = [line.split(",") for line in out.splitlines()]
        assert len(rows) == 7 and all(len(r) == 3 for r in rows)
        printed = np.array(rows, dtype=np.float64)
        close(printed, reference(SAMPLES))
        # the shortest text that reads back to the same float32
        assert np.array_equal(
            printed.astype(np.float32), printed.astype(np.float32).astype(np.float64)
        )


def test_run_csv_with_a_byte_order_mark(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Spreadsheet programs start CSV files with a UTF-8 byte-order mark; it is not data."""
    for header in ("a,b,c,d\n", ""):
        text = "\ufeff" + header + "".join(",".join(map(repr, r)) + "\n" for r in SAMPLES.tolist())
        (folder / "bom.csv").write_text(text, encoding="utf-8")
        code, out, err = run_cli(capsys, "run", "net.lyr", "-i", "bom.csv")
        assert (code, err) == (0, "")
        close(np.loadtxt(io.StringIO(out), delimiter=","), reference(SAMPLES))


def test_run_jsonl_to_stdout_and_csv_from_stdin(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "".join(",".join(map(repr, row)) + "\n" for row in SAMPLES.tolist())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    code, out, _ = run_cli(capsys, "run", "net.lyr", "-i", "-", "--output-format", "jsonl")
    assert code == 0
    close(np.array([json.loads(line) for line in out.splitlines()]), reference(SAMPLES))


def test_run_keeps_the_batch_shape_of_npy(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(2).normal(size=(2, 5, 4)).astype(np.float32)
    np.save("x3.npy", x)
    assert main(["run", "net.lyr", "-i", "x3.npy", "-o", "y3.npy"]) == 0
    close(np.load("y3.npy"), reference(x))
    np.save("x1.npy", x[0, 0])
    assert main(["run", "net.lyr", "-i", "x1.npy", "-o", "y1.npy"]) == 0
    close(np.load("y1.npy"), reference(x[0, 0]))
    np.save("x0.npy", np.zeros((0, 4)))
    assert main(["run", "net.lyr", "-i", "x0.npy", "-o", "y0.npy"]) == 0
    assert np.load("y0.npy").shape == (0, 3)
    assert capsys.readouterr().out == (
        "wrote y3.npy (10 rows)\nwrote y1.npy (1 row)\nwrote y0.npy (0 rows)\n"
    )
    (folder / "empty.csv").write_text("a,b,c,d\n\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "run", "net.lyr", "-i", "empty.csv")
    assert (code, out) == (0, "")


def test_run_special_values(folder: Path) -> None:
    (folder / "special.csv").write_text(
        f"nan,0,0,0\n1e30,0,0,0\n{' 0.5'},-0,inf,1\n", encoding="utf-8"
    )
    assert main(["run", "net.lyr", "-i", "special.csv", "-o", "special.jsonl"]) == 0
    lines = (folder / "special.jsonl").read_text().splitlines()
    got = np.array([json.loads(line) for line in lines])  # NaN and Infinity read back
    x = np.array([[np.nan, 0, 0, 0], [1e30, 0, 0, 0], [0.5, -0.0, np.inf, 1]])
    with np.errstate(invalid="ignore", over="ignore"):
        expected = reference(x)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    assert np.isnan(got[0]).all()


def test_run_streams_in_chunks_with_bounded_memory(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV much larger than a chunk is read, run and written chunk by chunk: the results are
    right and the memory used stays at a chunk's worth, not the file's."""
    rows = 60_000
    data = np.random.default_rng(3).normal(size=(rows, 4))
    write_input(folder / "big.csv", "csv", data, header=True)
    assert (folder / "big.csv").stat().st_size > 4_000_000
    monkeypatch.setattr(run_tool, "CHUNK_VALUES", 4096)  # 1024 rows per chunk
    batches = []
    real = run_tool._parse_rows

    def counting(*args):
        batches.append(len(args[0]))
        return real(*args)

    monkeypatch.setattr(run_tool, "_parse_rows", counting)
    assert main(["run", "net.lyr", "-i", "big.csv", "-o", "big.npy"]) == 0  # warm: compiled once
    assert batches[:3] == [1024, 1024, 1024] and sum(batches) == rows
    close(np.load("big.npy"), reference(data))

    tracemalloc.start()
    try:
        assert main(["run", "net.lyr", "-i", "big.csv", "-o", "big.npy"]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Reading the whole file as rows of strings would take well over 20 MB.
    assert peak < 3_000_000, peak


# --------------------------------------------------------------------------- run: errors

BAD_DATA = [
    ("bad.csv", "a,b,c,d\n1,2,3,4\n5,6,x,8\n", "bad.csv:3:3: 'x' is not a number"),
    ("bad.csv", "1,2,3,4\n5,6,,8\n", "bad.csv:2:3: empty cell"),
    ("bad.csv", "1,2,3,4\n\n5,6,7\n", "bad.csv:3:4: the row has 3 values but model Net takes 4"),
    (
        "bad.csv",
        "1,2,3,4\n5,6,7,8,9,10\n",
        "bad.csv:2:5: the row has 6 values but model Net takes 4",
    ),
    ("bad.csv", "a,b,c\n1,2,3\n", "bad.csv:1:4: the header has 3 values but model Net takes 4"),
    ("bad.csv", "1,2,3,4\nfoo,2,3,4\n", "bad.csv:2:1: 'foo' is not a number"),
    ("bad.jsonl", "[1, 2, 3, 4]\n[1, 2, true, 4]\n", "bad.jsonl:2:3: true is not a number"),
    (
        "bad.jsonl",
        "[1, 2, 3, 4]\n[1, 2, 3\n",
        "bad.jsonl:2:9: not valid JSON: Expecting ',' delimiter",
    ),
    (
        "bad.jsonl",
        '{"x": [1, 2, 3, 4]}\n',
        "bad.jsonl:1:1: expected a JSON list of 4 numbers, got dict",
    ),
    ("bad.jsonl", "[1, 2]\n", "bad.jsonl:1:3: the row has 2 values but model Net takes 4"),
]


@pytest.mark.parametrize("name,content,message", BAD_DATA)
def test_run_reports_bad_data_where_it_is(
    name: str, content: str, message: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / name).write_text(content, encoding="utf-8")
    out_file = folder / "kept.npy"
    np.save(out_file, np.arange(3.0))
    before = out_file.read_bytes()
    code, out, err = run_cli(capsys, "run", "net.lyr", "-i", name, "-o", "kept.npy")
    assert code == 1
    assert err == message + "\n"  # one line: no traceback, no source excerpt
    assert out == ""
    assert out_file.read_bytes() == before  # the old output is untouched
    assert not [p for p in folder.iterdir() if p.name.startswith(".kept")]  # no partial file


def test_run_reports_bad_arrays(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save("wide.npy", np.zeros((2, 5)))
    np.save("objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save("scalar.npy", np.float64(3.0))
    np.save("text.npy", np.array([["a", "b", "c", "d"]]))
    expected = {
        "wide.npy": "wide.npy: the array has shape (2, 5) but model Net takes (4,) or (N, 4)",
        "objects.npy": "objects.npy: the array holds Python objects; layerc reads numeric .npy "
        "files only",
        "scalar.npy": "scalar.npy: the array has shape () but model Net takes (4,) or (N, 4)",
        "text.npy": "text.npy: the array has dtype <U1; layerc reads real numbers",
        "missing.csv": "missing.csv: cannot read the file: No such file or directory",
    }
    for name, message in expected.items():
        code, out, err = run_cli(capsys, "run", "net.lyr", "-i", name)
        assert (code, out, err) == (1, "", message + "\n")


def test_run_usage_errors(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_input(folder / "x.csv", "csv", SAMPLES)
    cases = [
        (["-i", "x.txt"], "cannot tell the format of the input 'x.txt' from its extension"),
        (["-i", "x.csv", "-o", "y.txt"], "cannot tell the format of the output 'y.txt'"),
        (["-i", "x.csv", "--output-format", "npy"], "a .npy output must be a file"),
        (
            ["-i", "x.csv", "--model", "Nte"],
            "net.lyr has no model 'Nte'; did you mean 'Net'? (models: Hidden, Net)",
        ),
    ]
    for extra, message in cases:
        code, out, err = run_cli(capsys, "run", "net.lyr", *extra)
        assert code == 2 and out == ""
        assert err.startswith("layerc run: error: ") and message in err, err


@pytest.fixture
def one_thread_after() -> Iterator[None]:
    """The process back on one thread after a test that gives `layerc run` more."""
    yield
    layerc.set_num_threads(1)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has one thread here")
def test_run_threads_split_the_batches_and_give_the_same_outputs(
    folder: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    one_thread_after: None,
) -> None:
    """`--threads 2` runs each chunk (1337 rows, one chunk) on the fused forward's parallel
    variant, whose outputs are the one-thread outputs bit for bit; `--threads 1` never does."""
    x = np.random.default_rng(3).normal(size=(1337, 4))
    np.save(folder / "many.npy", x)
    parallel_calls = []
    use_threads = threads.use_threads
    monkeypatch.setattr(threads, "use_threads", lambda: parallel_calls.append(1) or use_threads())
    outputs = {}
    for n in ("1", "2"):
        code, out, err = run_cli(
            capsys, "run", "net.lyr", "-i", "many.npy", "-o", f"y{n}.npy", "--threads", n
        )
        assert code == 0 and err == "", err
        outputs[n] = np.load(folder / f"y{n}.npy")
        assert len(parallel_calls) == (0 if n == "1" else 1)
    close(outputs["2"], reference(x))
    assert np.array_equal(outputs["1"], outputs["2"])
    assert layerc.get_num_threads() == 2


def test_run_threads_usage_errors(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_input(folder / "x.csv", "csv", SAMPLES)
    cases = [
        (["--threads", "0"], "--threads '0': give a number of threads, 1 or more"),
        (["--threads", "two"], "--threads 'two': give a number of threads, 1 or more"),
        (["--threads", "2", "--dask", "local:2", "-o", "out/"], "with --dask each worker"),
    ]
    for extra, message in cases:
        code, out, err = run_cli(capsys, "run", "net.lyr", "-i", "x.csv", *extra)
        assert code == 2 and out == ""
        assert err.startswith("layerc run: error: ") and message in err, err
    assert layerc.get_num_threads() == 1


def test_run_picks_the_model(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--model runs a nested model on its own; two top-level models need --model."""
    write_input(folder / "x.csv", "csv", SAMPLES)
    code, out, _ = run_cli(capsys, "run", "net.lyr", "-i", "x.csv", "--model", "Hidden")
    assert code == 0
    w1, b1 = W1.astype(np.float32).astype(np.float64), B1.astype(np.float32).astype(np.float64)
    close(np.loadtxt(io.StringIO(out), delimiter=","), np.tanh(SAMPLES @ w1.T + b1))

    (folder / "two.lyr").write_text(
        "model A { Linear(4, 1) { init = zeros() } }\n"
        "model B { Linear(4, 1) { init = zeros() } }\n",
        encoding="utf-8",
    )
    code, _, err = run_cli(capsys, "run", "two.lyr", "-i", "x.csv")
    assert code == 2
    assert "defines several models that no other model uses (A, B): choose one with --model" in err
    assert run_cli(capsys, "run", "two.lyr", "-i", "x.csv", "--model", "B")[0] == 0


def test_run_stops_quietly_when_the_reader_goes_away(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`layerc run ... | head`: a closed stdout ends the run with exit 1 and no traceback."""

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    write_input(folder / "x.csv", "csv", SAMPLES)
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", ClosedPipe())
        code = main(["run", "net.lyr", "-i", "x.csv"])
    assert code == 1
    assert capsys.readouterr().err == ""


def test_run_compile_errors_are_located(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "broken.lyr").write_text(
        "model A {\n    Linear(4, 2) { init = unifrom(seed=0) }\n}\n"
    )
    write_input(folder / "x.csv", "csv", SAMPLES)
    code, _, err = run_cli(capsys, "run", "broken.lyr", "-i", "x.csv")
    assert code == 1
    assert err.startswith("broken.lyr:2:27: unknown initialiser 'unifrom'; did you mean 'uniform'?")


def test_run_cache_is_reused_and_follows_the_source(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = folder / "cache-test"
    monkeypatch.setenv("LAYERC_CACHE_DIR", str(cache))
    for name in [n for n in sys.modules if n.startswith("_layerc_run_")]:
        del sys.modules[name]  # imported by earlier tests, from another cache folder
    program, _ = driver.check_file(Path("net.lyr"))
    module = run_tool.load_module(program, Path("net.lyr"))
    (entry,) = (cache / "run").iterdir()
    stamp = (entry / "net.py").stat().st_mtime_ns
    sys.modules.pop(module.__name__)
    again = run_tool.load_module(program, Path("net.lyr"))
    assert again is not module and [p.name for p in (cache / "run").iterdir()] == [entry.name]
    assert (entry / "net.py").stat().st_mtime_ns == stamp  # found, not rewritten
    assert run_tool.load_module(program, Path("net.lyr")) is again  # same process: same module

    edited = folder / "edited" / "net.lyr"
    edited.parent.mkdir(exist_ok=True)
    edited.write_text(MODEL.replace("Tanh", "ReLU"), encoding="utf-8")
    other, _ = driver.check_file(edited)
    run_tool.load_module(other, edited)
    assert len(list((cache / "run").iterdir())) == 2


def test_run_works_without_a_writable_cache(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = folder / "not-a-folder"
    blocker.write_text("a file where the cache folder would go", encoding="utf-8")
    monkeypatch.setenv("LAYERC_CACHE_DIR", str(blocker))
    for name in [n for n in sys.modules if n.startswith("_layerc_run_")]:
        monkeypatch.delitem(sys.modules, name)
    write_input(folder / "x.csv", "csv", SAMPLES)
    code, out, err = run_cli(capsys, "run", "net.lyr", "-i", "x.csv")
    assert (code, err) == (0, "")
    close(np.loadtxt(io.StringIO(out), delimiter=","), reference(SAMPLES))


def test_npy_header_is_what_numpy_writes() -> None:
    for dtype, shape in [(np.float32, (5, 3)), (np.float64, (2, 3, 4)), (np.float32, (3,))]:
        header = run_tool.npy_header(np.dtype(dtype), shape, 128)
        buffer = io.BytesIO(header + np.zeros(shape, dtype).tobytes())
        array = np.load(buffer)
        assert array.shape == shape and array.dtype == dtype and len(header) == 128


LINE_LIMIT = (
    "65536 bytes, the most layerc reads for a model of 4 input features (65536 bytes, or 64 per "
    "feature for wider models)"
)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("long.csv", b"1,2,3,4\n" + b"1," * 4_000_000, "long.csv:2: the line is longer than "),
        (
            "long.jsonl",
            b"[1, 2, 3, 4]\n[" + b"1," * 4_000_000,
            "long.jsonl:2: the line is longer than ",
        ),
        # 2,000,000 one-character cells, each quoted across a line break: one row of 8 MB
        (
            "rows.csv",
            b"1,2,3,4\n" + b'"\n",' * 2_000_000,
            "rows.csv:16387: the row is longer than ",
        ),
    ],
)
def test_run_stops_at_an_overlong_line_without_reading_it(
    name: str, content: bytes, message: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line (or a CSV row across lines) of 8 MB is an error at its line, found once the
    limit's worth of it is read: the memory used stays far below the line's size."""
    (folder / name).write_bytes(content)
    write_input(folder / "x.csv", "csv", SAMPLES)
    assert main(["run", "net.lyr", "-i", "x.csv"]) == 0  # the model compiled and imported
    capsys.readouterr()
    tracemalloc.start()
    try:
        code, out, err = run_cli(capsys, "run", "net.lyr", "-i", name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (code, out, err) == (1, "", message + LINE_LIMIT + "\n")
    assert peak < 2_000_000, peak


def test_run_line_limit_grows_with_the_model(folder: Path) -> None:
    assert run_tool.line_limit(4) == run_tool.MAX_LINE_BYTES == 65536
    assert run_tool.line_limit(10_000) == 640_000 == 10_000 * run_tool.LINE_BYTES_PER_FEATURE


def npy_with_header(path: Path, header: str, data: bytes = b"") -> None:
    """A .npy file (version 1.0) with the header dict `header`, as a hostile file may have."""
    body = header.ljust(-(-(len(header) + 11) // 64) * 64 - 11) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode() + data)


def test_run_checks_npy_headers_before_mapping_them(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A header that claims more data than the file holds, or too many dimensions, is a clean
    error; a 30-dimensional input runs, and its output keeps the 29 batch dimensions."""
    npy_with_header(
        folder / "huge.npy",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 4), }",
        b"\0" * 64,
    )
    np.save(folder / "d33.npy", np.zeros((1,) * 32 + (4,), np.float32))
    npy_with_header(
        folder / "long.npy",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }" + " " * 20_000,
    )
    expected = {
        "huge.npy": "huge.npy: the file is truncated: its header declares shape (1000000000000, 4) "
        "of float32 (16000000000000 bytes) but only 64 bytes follow",
        "d33.npy": "d33.npy: the array has 33 dimensions; layerc reads at most 32",
        "long.npy": "long.npy: is not a valid .npy file: its header is 20086 bytes long, more than "
        "layerc reads",
    }
    for name, message in expected.items():
        assert run_cli(capsys, "run", "net.lyr", "-i", name) == (1, "", message + "\n")

    x = np.random.default_rng(4).normal(size=(1,) * 29 + (2, 4))
    np.save(folder / "d31.npy", x)
    code, out, err = run_cli(capsys, "run", "net.lyr", "-i", "d31.npy", "-o", "d31-out.npy")
    assert (code, err) == (0, "")
    close(np.load(folder / "d31-out.npy"), reference(x))


def test_run_delimiter(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A CSV separated by ';' or tabs is misread as one value a row: the error says which
    --delimiter to give, and with it the file runs."""
    for separator, option in ((";", "';'"), ("\t", "tab")):
        rows = [separator.join(repr(v) for v in row) for row in SAMPLES.tolist()]
        (folder / "sep.csv").write_text(
            separator.join("abcd") + "\n" + "\n".join(rows) + "\n", encoding="utf-8"
        )
        code, out, err = run_cli(capsys, "run", "net.lyr", "-i", "sep.csv")
        assert (code, out) == (1, "")
        assert err == (
            "sep.csv:1:2: the header has 1 value but model Net takes 4; its values look "
            f"separated by {option}: use --delimiter {option}\n"
        )
        given = separator if separator != "\t" else "tab"
        code, out, err = run_cli(capsys, "run", "net.lyr", "-i", "sep.csv", "--delimiter", given)
        assert (code, err) == (0, "")
        close(np.loadtxt(io.StringIO(out), delimiter=","), reference(SAMPLES))
    write_input(folder / "x.jsonl", "jsonl", SAMPLES)
    for extra, message in [
        (["-i", "sep.csv", "--delimiter", ";;"], "--delimiter ';;' is not a separator"),
        (["-i", "sep.csv", "--delimiter", "."], "--delimiter '.' is not a separator"),
        (["-i", "x.jsonl", "--delimiter", ";"], "--delimiter is for CSV input, and the input is"),
    ]:
        code, out, err = run_cli(capsys, "run", "net.lyr", *extra)
        assert code == 2 and out == "" and message in err, err


RUN_CHILD = [sys.executable, "-m", "layerc", "run", "net.lyr", "-i"]


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "folder"])
@pytest.mark.parametrize("fmt", ["csv", "npy"])
def test_run_reads_only_regular_files(kind: str, fmt: str, folder: Path) -> None:
    """A FIFO (which would block), a device (endless) or a folder given as the input is
    refused at once."""
    path = folder / f"special-{kind.strip('/').replace('/', '-')}.{fmt}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(kind)
    result = subprocess.run(
        [*RUN_CHILD, path.name], capture_output=True, text=True, timeout=60, cwd=folder
    )
    what = "a data file" if fmt == "csv" else "a .npy file"
    message = (
        f"is a directory, not {what}"
        if kind == "folder"
        else "is not a regular file (a device, pipe or socket), so layerc will not read it"
    )
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"{path.name}: {message}\n")


def test_no_command_writes_over_its_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output that is the source, a weights file the source loads or the input data, by its
    own name or through a symlink, is refused before anything is written."""
    monkeypatch.chdir(tmp_path)
    np.save("w.npy", W2.astype(np.float32))
    Path("m.lyr").write_text(
        'model M {\n    fc = Linear(6, 3, bias=false) { weight = load("w.npy") }\n}\n'
    )
    write_input(tmp_path / "x.csv", "csv", SAMPLES @ W1.T)
    os.symlink("m.lyr", "link.py")
    os.symlink("m.lyr", "link.dot")
    before = {p.name: (p.is_symlink(), p.read_bytes()) for p in tmp_path.iterdir()}
    source, weights, data = "the source file", "the file 'w.npy' it loads", "the input data file"
    cases = [
        (["run", "m.lyr", "-i", "x.csv", "-o", "m.lyr", "--output-format", "csv"], "m.lyr", source),
        (["run", "m.lyr", "-i", "x.csv", "-o", "x.csv"], "x.csv", data),
        (["run", "m.lyr", "-i", "x.csv", "-o", "w.npy"], "w.npy", weights),
        (["compile", "m.lyr", "-o", "w.npy"], "w.npy", weights),
        (["compile", "m.lyr", "-o", "link.py"], "link.py", source),
        (["graph", "m.lyr", "-o", "link.dot"], "link.dot", source),
        (["export", "m.lyr", "--onnx", "w.npy"], "w.npy", weights),
    ]
    for argv, out, what in cases:
        code, stdout, err = run_cli(capsys, *argv)
        assert (code, stdout) == (1, ""), argv
        assert err == (
            f"{out}: the output {out} is {what} itself; layerc never writes over a command's "
            "inputs: choose another output\n"
        )
        assert {p.name: (p.is_symlink(), p.read_bytes()) for p in tmp_path.iterdir()} == before


def test_every_writer_removes_temporaries_whose_writer_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Temporary files name the process writing them. Those a dead process left beside an
    output are removed by the next command that writes that output (here: compile, run, graph
    as DOT text and drawn by `dot`, export, fmt and import); those of a running process are
    kept."""
    from layerc import files

    monkeypatch.chdir(tmp_path)
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    fake_dot = bin_folder / "dot"  # writes an SVG to the file after -o, as graphviz's would
    fake_dot.write_text(
        f"#!{sys.executable}\nimport sys\n"
        "open(sys.argv[sys.argv.index('-o') + 1], 'w').write('<svg/>')\n"
    )
    fake_dot.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    Path("net.lyr").write_text(MODEL, encoding="utf-8")
    write_input(tmp_path / "x.csv", "csv", SAMPLES)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    outputs = ["net.py", "out.npy", "net.dot", "net.svg", "net.onnx", "net.lyr", "imported.lyr"]
    stale = [f".{name}.layerc-{files._HOST}-{gone.pid}-abcd1234.tmp" for name in outputs]
    running = [f".{name}.layerc-{files._HOST}-{os.getpid()}-abcd1234.tmp" for name in outputs]
    for name in stale + running:
        Path(name).write_bytes(b"\0" * 100_000)
    Path("net.lyr").write_text(MODEL.replace("    act = Tanh()", "    act = Tanh"))  # for fmt
    commands = [
        ["compile", "net.lyr"],
        ["run", "net.lyr", "-i", "x.csv", "-o", "out.npy"],
        ["graph", "net.lyr", "-o", "net.dot"],
        ["graph", "net.lyr", "-o", "net.svg"],
        ["export", "net.lyr", "--onnx", "net.onnx"],
        ["fmt", "net.lyr"],
        ["import", "net.onnx", "-o", "imported.lyr"],
    ]
    for argv in commands:
        assert main(argv) == 0, capsys.readouterr().err
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert left == sorted(running)
    assert Path("net.svg").read_text() == "<svg/>"


def test_out_of_memory_is_a_one_line_error(tmp_path: Path) -> None:
    """Under a memory limit a source that needs more (8 GiB of weights to draw) ends in one
    line naming the file, and exit 1, not a traceback."""
    import resource

    (tmp_path / "big.lyr").write_text(
        "model Big {\n    fc = Linear(32768, 32768) { init = uniform(seed=0) }\n}\n"
    )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))  # 1.5 GiB

    result = subprocess.run(
        [sys.executable, "-m", "layerc", "check", "big.lyr"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        preexec_fn=limit,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("big.lyr: out of memory")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- summary


def torch_net() -> torch.nn.Sequential:
    net = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh()),
        torch.nn.Linear(6, 3, bias=False),
    )
    return net


def table_rows(text: str) -> dict[str, list[str]]:
    """The summary's rows by layer path: the cells, split where two spaces or more part them
    (a layer's repr has single spaces only)."""
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"="}]
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[rules[1] + 1 : rules[2]]]
    return {row[0]: row[1:] for row in cells}


def test_summary_counts_match_torch(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Parameter counts from torch's own parameters; FLOPs from torch's FlopCounterMode (which
    counts 2*in*out per matrix product and leaves bias adds out, so those are added); each
    layer as torch prints it."""
    from torch.utils.flop_counter import FlopCounterMode

    reference_net = torch_net()
    params = sum(p.numel() for p in reference_net.parameters())
    with FlopCounterMode(display=False) as counter:
        reference_net(torch.zeros(1, 4))
    flops = counter.get_total_flops() + 6  # one bias add per output of the biased Linear

    code, out, err = run_cli(capsys, "summary", "net.lyr")
    assert (code, err) == (0, "")
    assert f"Parameters:       {params:,} (42 weights, 6 biases)" in out
    assert f"Parameter memory: {params * 4:,} B (float32, 4 bytes each)" in out
    assert "Buffers:          0 (0 B)\n" in out
    assert f"FLOPs per sample: {flops:,}\n" in out
    rows = table_rows(out)
    fc, act = list(reference_net[0].children())
    assert rows["hidden"] == ["Hidden", "(*, 6)", "30", "0", "120", "54"]
    assert rows["hidden.fc"] == [repr(fc), "(*, 6)", "30", "0", "120", "54"]
    assert rows["hidden.act"] == [repr(act), "(*, 6)", "0", "0", "0", "0"]
    assert rows["out"] == [repr(reference_net[1]), "(*, 3)", "18", "0", "72", "36"]
    assert rows["out"][0] == "Linear(in_features=6, out_features=3, bias=False)"
    assert "\n  hidden.fc " in out  # nested layers are indented under their model


KINDS_MODEL = """\
model Head {
    norm = LayerNorm(6)
    slopes = PReLU(6)
    out = Linear(6, 3) {
        init = uniform(seed=1)
    }
}

model Kinds(input=[2, 3, 4]) {
    Flatten()
    fc = Linear(24, 6) {
        init = uniform(seed=0)
    }
    bn = BatchNorm1d(6)
    act = GELU()
    drop = Dropout(0.1)
    head = Head()
    plain = BatchNorm1d(3, affine=false, momentum=0.2)
    LogSoftmax(dim=-1)
}

model Channels(input=[4, 5], dtype=float64) {
    bn = BatchNorm1d(4, eps=0.001)
    fc = Linear(5, 3) {
        init = uniform(seed=2)
    }
    Tanh()
}
"""


def torch_kinds() -> torch.nn.Sequential:
    """Kinds as torch builds it: the same layers under the same state_dict keys."""
    head = torch.nn.Sequential()
    head.add_module("norm", torch.nn.LayerNorm(6))
    head.add_module("slopes", torch.nn.PReLU(6))
    head.add_module("out", torch.nn.Linear(6, 3))
    net = torch.nn.Sequential()
    net.add_module("0", torch.nn.Flatten())
    net.add_module("fc", torch.nn.Linear(24, 6))
    net.add_module("bn", torch.nn.BatchNorm1d(6))
    net.add_module("act", torch.nn.GELU())
    net.add_module("drop", torch.nn.Dropout(0.1))
    net.add_module("head", head)
    net.add_module("plain", torch.nn.BatchNorm1d(3, affine=False, momentum=0.2))
    net.add_module("7", torch.nn.LogSoftmax(dim=-1))
    return net.eval()


def test_summary_of_every_kinds_parameters_and_buffers_matches_torch(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BatchNorm1d's weight and bias are parameters and its running statistics and
    num_batches_tracked buffers, LayerNorm's and PReLU's weights parameters: every count
    (per layer, per nested model and in total), every byte and every layer's text is torch's
    for the same model; shapes of several axes are shown whole."""
    from torch.utils.flop_counter import FlopCounterMode

    (folder / "kinds.lyr").write_text(KINDS_MODEL, encoding="utf-8")
    reference_net = torch_kinds()
    code, out, err = run_cli(capsys, "summary", "kinds.lyr", "--model", "Kinds")
    assert (code, err) == (0, "")
    assert out.startswith("Model Kinds (float32): input (*, 2, 3, 4) -> output (*, 3)\n")
    rows = table_rows(out)
    modules = dict(reference_net.named_modules())
    assert list(rows) == [
        "0", "fc", "bn", "act", "drop", "head", "head.norm", "head.slopes", "head.out",
        "plain", "7",
    ]  # fmt: skip
    shape = torch.zeros(1, 2, 3, 4)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, module in reference_net.named_modules():
        if name:
            module.register_forward_hook(
                lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:]))
            )
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        reference_net(shape)
    for path, cells in rows.items():
        module = modules[path]
        held = list(module.parameters())
        kept = list(module.buffers())
        nbytes = sum(t.numel() * t.element_size() for t in [*held, *kept])
        kind = "Head" if path == "head" else repr(module)
        expected = [
            kind,
            "(*, " + ", ".join(map(str, shapes[path])) + ")",
            f"{sum(p.numel() for p in held):,}",
            f"{sum(b.numel() for b in kept):,}",
            f"{nbytes:,}",
        ]
        assert cells[:5] == expected, path
    assert rows["bn"][0] == (
        "BatchNorm1d(6, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"
    )
    assert rows["bn"][2:5] == ["12", "13", "104"]  # 4 * 12 + 4 * 12 + 8 (an int64 count)
    params = sum(p.numel() for p in reference_net.parameters())
    biases = sum(p.numel() for name, p in reference_net.named_parameters() if "bias" in name)
    buffers = sum(b.numel() for b in reference_net.buffers())
    buffer_bytes = sum(b.numel() * b.element_size() for b in reference_net.buffers())
    flops = counter.get_total_flops() + 6 + 3  # and the biased Linears' bias adds
    assert f"Parameters:       {params:,} ({params - biases:,} weights, {biases:,} biases)" in out
    assert f"Parameter memory: {params * 4:,} B (float32, 4 bytes each)" in out
    assert f"Buffers:          {buffers:,} ({buffer_bytes:,} B)" in out
    assert f"FLOPs per sample: {flops:,}" in out

    # A Linear over samples of shape (4, 5) runs over 4 rows of 5: its FLOPs are per sample.
    code, out, err = run_cli(capsys, "summary", "kinds.lyr", "--model", "Channels")
    assert (code, err) == (0, "")
    channels = torch.nn.Sequential(
        torch.nn.BatchNorm1d(4, eps=0.001), torch.nn.Linear(5, 3), torch.nn.Tanh()
    ).double()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        channels.eval()(torch.zeros(1, 4, 5, dtype=torch.float64))
    rows = table_rows(out)
    assert out.startswith("Model Channels (float64): input (*, 4, 5) -> output (*, 4, 3)\n")
    assert rows["bn"] == [repr(channels[0]), "(*, 4, 5)", "8", "9", f"{8 * 8 + 9 * 8:,}", "0"]
    assert rows["fc"] == [repr(channels[1]), "(*, 4, 3)", "18", "0", "144", f"{4 * 33}"]
    assert f"FLOPs per sample: {counter.get_total_flops() + 4 * 3:,}" in out


def test_summary_of_a_float64_model_and_large_counts(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "wide.lyr").write_text(
        "model Wide(dtype=float64) { Linear(1000, 2000) { init = zeros() } Softmax() }\n"
    )
    program, _ = driver.check_file(folder / "wide.lyr")
    text = summary(program.models[0])
    params = torch.nn.Linear(1000, 2000).weight.numel() + 2000
    assert f"{params:,}" in text and "(*, 2000)" in text and "Softmax(dim=-1)" in text
    assert repr(torch.nn.Linear(1000, 2000)) in text
    assert f"Parameter memory: {params * 8 / 2**20:.1f} MiB (float64, 8 bytes each)" in text
    assert f"FLOPs per sample: {2 * 1000 * 2000 + 2000:,}" in text


def test_summary_model_choice(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "summary", "net.lyr", "--model", "Hidden")
    assert code == 0 and out.startswith("Model Hidden (float32): input (*, 4) -> output (*, 6)")
    code, _, err = run_cli(capsys, "summary", "net.lyr", "--model", "hidden")
    assert code == 2 and "did you mean 'Hidden'?" in err


# --------------------------------------------------------------------------- graph


@needs_dot
def test_graph_dot_describes_the_layers(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The DOT text, laid out by graphviz itself: one node per layer in order, edges labelled
    with the shapes, the nested model as a cluster."""
    code, dot_text, _ = run_cli(capsys, "graph", "net.lyr")
    assert code == 0 and dot_text.startswith('digraph "Net" {')
    laid_out = subprocess.run(
        ["dot", "-Tjson"], input=dot_text, capture_output=True, text=True, check=True
    )
    graph = json.loads(laid_out.stdout)
    objects = graph["objects"]
    nodes = {o["_gvid"]: o["label"].split("\\n") for o in objects if "nodes" not in o}
    clusters = [o for o in objects if "nodes" in o]
    edges = [(e["tail"], e["head"], e["label"]) for e in graph["edges"]]
    chain = [nodes[edges[0][0]]] + [nodes[head] for _, head, _ in edges]
    assert [label[0] for label in chain] == ["input", "hidden.fc", "hidden.act", "out", "output"]
    assert chain[1][1:] == [repr(torch.nn.Linear(4, 6)), "30 parameters"]
    assert chain[2][1:] == [repr(torch.nn.Tanh())]
    assert [label for _, _, label in edges] == ["(*, 4)", "(*, 6)", "(*, 6)", "(*, 3)"]
    assert len(clusters) == 1 and clusters[0]["label"] == "hidden: Hidden"
    assert sorted(nodes[i][0] for i in clusters[0]["nodes"]) == ["hidden.act", "hidden.fc"]


def test_graph_labels_every_kind_from_the_table(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each box names the layer, shows it as torch prints it and says what it holds (torch's
    counts); edges carry shapes of several axes whole. Compared as DOT text, which needs no
    graphviz."""
    (folder / "kinds.lyr").write_text(KINDS_MODEL, encoding="utf-8")
    code, dot_text, err = run_cli(capsys, "graph", "kinds.lyr", "--model", "Kinds")
    assert (code, err) == (0, "")
    labels = re.findall(r'^ *n\d+ \[label="((?:[^"\\]|\\.)*)"', dot_text, re.M)
    nodes = [label.split("\\n") for label in labels]
    modules = dict(torch_kinds().named_modules())
    assert [n[0] for n in nodes] == [
        "input", "0", "fc", "bn", "act", "drop", "head.norm", "head.slopes", "head.out",
        "plain", "7", "output",
    ]  # fmt: skip
    for node in nodes[1:-1]:
        module = modules[node[0]]
        assert node[1] == repr(module), node[0]
        params = sum(p.numel() for p in module.parameters())
        buffers = sum(b.numel() for b in module.buffers())
        held = []
        if params:
            held.append(f"{params:,} parameters")
        if buffers:
            held.append(f"{buffers:,} buffer values")
        assert node[2:] == ([", ".join(held)] if held else []), node[0]
    assert nodes[3][1:] == [
        "BatchNorm1d(6, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)",
        "12 parameters, 13 buffer values",
    ]
    assert nodes[0] == ["input", "(*, 2, 3, 4)"] and nodes[-1] == ["output", "(*, 3)"]
    edges = re.findall(r'-> n\d+ \[label="([^"]*)"\]', dot_text)
    assert edges == ["(*, 2, 3, 4)", "(*, 24)", *["(*, 6)"] * 6, *["(*, 3)"] * 3]
    assert 'label="head: Head";' in dot_text


@needs_dot
def test_graph_renders_svg_png_and_dot(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "net.lyr", "-o", "net.svg"]) == 0
    svg = (folder / "net.svg").read_text()
    assert "<svg" in svg and "hidden.fc" in svg
    assert "Linear(in_features=6, out_features=3, bias=False)" in svg
    assert main(["graph", "net.lyr", "-o", "net.png"]) == 0
    assert (folder / "net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["graph", "net.lyr", "-o", "net.dot"]) == 0
    assert (folder / "net.dot").read_text().startswith('digraph "Net" {')
    assert capsys.readouterr().out == "wrote net.svg\nwrote net.png\nwrote net.dot\n"


def test_graph_without_graphviz(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = folder / "no-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None
    code, out, err = run_cli(capsys, "graph", "net.lyr", "-o", "nodot.svg")
    assert code == 1 and out == ""
    assert err.startswith("nodot.svg: cannot draw SVG: graphviz's 'dot' program is not installed")
    assert "-o nodot.dot" in err and not (folder / "nodot.svg").exists()
    assert main(["graph", "net.lyr", "-o", "nodot.dot"]) == 0  # DOT text needs no graphviz
    code, _, err = run_cli(capsys, "graph", "net.lyr", "-o", "net.jpeg")
    assert code == 2 and "use .svg, .png, .pdf, or .dot" in err


# --------------------------------------------------------------------------- diagnostics


def test_colour_adds_styles_around_the_plain_text() -> None:
    text = "model A {\n    fc = Linaer(2, 2)\n}\n"
    error = LayercError("unknown layer kind 'Linaer'; did you mean 'Linear'?", Loc("a.lyr", 2, 10))
    plain = render(error, text)
    coloured = render(error, text, colour=True)
    assert plain == (
        "a.lyr:2:10: unknown layer kind 'Linaer'; did you mean 'Linear'?\n"
        "        fc = Linaer(2, 2)\n"
        "             ^"
    )
    assert coloured != plain and ANSI.sub("", coloured) == plain
    assert coloured.startswith("\x1b[1ma.lyr:2:10:\x1b[0m \x1b[1;31munknown")
    file_only = LayercError("cannot read the file", file="a.lyr")
    assert ANSI.sub("", render(file_only, None, colour=True)) == "a.lyr: cannot read the file"


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "modle A {}\n",
            "1:1: unexpected 'modle'; expected 'model', 'test' or end of file; "
            "did you mean 'model'?",
        ),
        (
            "model A { Linear(2, 2) { init = zeros() } }\ntets A {}\n",
            "2:1: unexpected 'tets'; expected 'model', 'test' or end of file; did you mean 'test'?",
        ),
        (
            "model A { Linear(2, 2, bias=True) { init = zeros() } }\n",
            "1:29: bias must be true or false; did you mean 'true'?",
        ),
        (
            "model A { Linear(2, 2, bias=flase) { init = zeros() } }\n",
            "1:29: bias must be true or false; did you mean 'false'?",
        ),
        (
            "model A(dtype=float46) { Linear(2, 2) { init = zeros() } }\n",
            "1:15: dtype must be float32 or float64; did you mean 'float64'?",
        ),
        (
            "model A { Linear(2, 2) { init = zeros() } Relu() }\n",
            "1:43: unknown layer kind 'Relu'; did you mean 'ReLU'? (layer kinds: Linear, ReLU, "
            "Sigmoid, Tanh, Identity, LeakyReLU, Softmax, "
            "Dropout, AlphaDropout, Flatten, BatchNorm1d, LayerNorm, PReLU, GELU, ELU, CELU, Softplus, Hardtanh, SiLU, Mish, SELU, ReLU6, Hardsigmoid, Hardswish, LogSigmoid, Softsign, LogSoftmax, Hardshrink, Softshrink, Tanhshrink)",
        ),
        (
            "model A { Linear(2, 2) { init = zeros() } }\n"
            "test B { input = [1, 2]; expect = [0, 0] }\n",
            "2:6: test names unknown model 'B'",
        ),
    ],
)
def test_did_you_mean(
    text: str, message: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "typo.lyr").write_text(text, encoding="utf-8")
    code, _, err = run_cli(capsys, "check", "typo.lyr")
    assert code == 1
    assert err.splitlines()[0] == f"typo.lyr:{message}"


def run_with_terminal_stderr(
    args: list[str], cwd: Path, env: dict[str, str]
) -> tuple[int, str, str]:
    """Run `python -m layerc.cli ARGS` with stderr on a pseudo-terminal (stdout on a pipe);
    return the exit code, stdout and what the terminal showed (newlines as written)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerc.cli", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    shown = bytearray()
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end of the terminal
            break
        if not data:
            break
        shown += data
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    code = proc.wait(timeout=120)
    os.close(master)
    return code, out, shown.decode().replace("\r\n", "\n")


def run_piped(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layerc.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def term_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(TERM="xterm-256color", LAYERC_CACHE_DIR=str(folder / "cache"))
    return env


def test_terminal_gets_colour_pipes_and_no_color_do_not(
    folder: Path, term_env: dict[str, str]
) -> None:
    (folder / "typo.lyr").write_text("model A {\n    fc = Linaer(2, 2)\n}\n", encoding="utf-8")
    code, out, shown = run_with_terminal_stderr(["check", "typo.lyr"], folder, term_env)
    assert code == 1 and out == ""
    assert "\x1b[1mtypo.lyr:2:10:\x1b[0m \x1b[1;31munknown layer kind 'Linaer'" in shown
    piped = run_piped(["check", "typo.lyr"], folder, term_env)
    assert piped.returncode == 1 and "\x1b[" not in piped.stderr
    assert ANSI.sub("", shown) == piped.stderr
    assert piped.stderr == (
        "typo.lyr:2:10: unknown layer kind 'Linaer'; did you mean 'Linear'? (layer kinds: Linear, "
        "ReLU, Sigmoid, Tanh, Identity, LeakyReLU, Softmax, "
        "Dropout, AlphaDropout, Flatten, BatchNorm1d, LayerNorm, PReLU, GELU, ELU, CELU, Softplus, Hardtanh, SiLU, Mish, SELU, ReLU6, Hardsigmoid, Hardswish, LogSigmoid, Softsign, LogSoftmax, Hardshrink, Softshrink, Tanhshrink)\n"
        "        fc = Linaer(2, 2)\n"
        "             ^\n"
    )
    code, _, shown = run_with_terminal_stderr(
        ["check", "typo.lyr"], folder, {**term_env, "NO_COLOR": "1"}
    )
    assert code == 1 and shown == piped.stderr


def test_progress_bar_on_a_terminal_only(folder: Path, term_env: dict[str, str]) -> None:
    write_input(folder / "progress.csv", "csv", np.random.default_rng(4).normal(size=(3000, 4)))
    code, out, shown = run_with_terminal_stderr(
        ["run", "net.lyr", "-i", "progress.csv", "-o", "progress.npy"], folder, term_env
    )
    assert code == 0 and out == "wrote progress.npy (3,000 rows)\n"
    assert "\rNet: [........................]   0%  0 rows" in shown
    assert "\rNet: [########################] 100%  3,000 rows\n" in shown
    close(
        np.load(folder / "progress.npy"),
        reference(np.loadtxt(folder / "progress.csv", delimiter=",")),
    )

    piped = run_piped(
        ["run", "net.lyr", "-i", "progress.csv", "-o", "progress.npy"], folder, term_env
    )
    assert (piped.returncode, piped.stderr) == (0, "")

    # A data error after the bar has been drawn starts on a line of its own, in colour.
    (folder / "late.csv").write_text(
        textwrap.dedent("""\
        1,2,3,4
        1,2,3,four
        """),
        encoding="utf-8",
    )
    code, _, shown = run_with_terminal_stderr(
        ["run", "net.lyr", "-i", "late.csv", "-o", "l.npy"], folder, term_env
    )
    assert code == 1
    assert "\n\x1b[1mlate.csv:2:4:\x1b[0m \x1b[1;31m'four' is not a number\x1b[0m\n" in shown
