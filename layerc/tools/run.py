"""`layerc run`: inference from the shell. A checked model and an input file in (.npy, .csv with
or without a header, or JSON lines), the model's outputs out (.npy, .csv or JSON lines, or CSV on
stdout), in chunks of bounded size so a large CSV never has to fit in memory.

Data mistakes are `DataError`s located as `file:row:col`, where row is the line of the file (as
an editor counts it, header included) and col the 1-based column (CSV cell or JSON list item).
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import io
import json
import os
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Protocol, TextIO

import numpy as np

from .. import codegen, driver, ir
from ..errors import LayercError, Loc, UsageError
from ..files import mode_for
from .term import Progress

INPUT_FORMATS = ("npy", "csv", "jsonl")
OUTPUT_FORMATS = ("npy", "csv", "jsonl")
_EXTENSIONS = {".npy": "npy", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# A chunk holds at most this many values (input or output side), so memory stays bounded
# whatever the file's size: 1M float64 values are 8 MB.
CHUNK_VALUES = 1 << 20


class DataError(LayercError):
    """A mistake in an input data file (not in the .lyr source): reported as `file:row:col:
    message` without a source excerpt."""


def format_of(path: str, given: str | None, formats: tuple[str, ...], what: str) -> str:
    """The data format: `given` (from --input-format/--output-format), else the file's
    extension; stdin and stdout ("-") default to CSV."""
    if given is not None:
        return given
    if path == "-":
        return "csv"
    suffix = Path(path).suffix.lower()
    if suffix in _EXTENSIONS and _EXTENSIONS[suffix] in formats:
        return _EXTENSIONS[suffix]
    known = ", ".join(f".{f}" for f in formats)
    raise UsageError(
        f"cannot tell the format of the {what} {path!r} from its extension: use {known} "
        f"or --{what}-format"
    )


def chunk_rows(width: int) -> int:
    return max(1, CHUNK_VALUES // max(width, 1))


# --------------------------------------------------------------------------- compiling


def cache_root() -> Path:
    """Where compiled models are kept between runs: $LAYERC_CACHE_DIR, else
    $XDG_CACHE_HOME/layerc, else ~/.cache/layerc. Safe to delete at any time."""
    if os.environ.get("LAYERC_CACHE_DIR"):
        return Path(os.environ["LAYERC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "layerc"


def load_module(program: ir.Program, source: Path) -> ModuleType:
    """Generate the module for `program` and import it from the cache, writing it there first
    when missing. Folders are named by a hash of the generated code, so an edited source gets
    a new folder and numba's on-disk cache beside each module stays valid; where the cache
    cannot be written, a temporary folder is used instead."""
    stem = re.sub(r"[^0-9A-Za-z_]", "_", source.stem) or "model"
    if stem[0].isdigit():
        stem = "_" + stem
    output = driver.generate(program, Path(f"{stem}.py"))
    digest = hashlib.sha256(output.source.encode("utf-8"))
    if output.data is not None:
        digest.update(output.data)
    key = digest.hexdigest()[:20]
    # A name fixed by the content: numba's cache is keyed by the module's import name, and a
    # process that runs the same model again reuses the module it already imported.
    name = f"_layerc_run_{key}_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    try:
        folder = cache_root() / "run" / key
        folder.mkdir(parents=True, exist_ok=True)
        out = _write_if_changed(folder / f"{stem}.py", output)
    except (OSError, LayercError):
        folder = Path(tempfile.mkdtemp(prefix="layerc-run-"))
        atexit.register(shutil.rmtree, folder, True)
        out = _write_if_changed(folder / f"{stem}.py", output)
    return driver.import_module(out, name)


def _write_if_changed(out: Path, output: codegen.Output) -> Path:
    try:
        current = out.read_bytes()
    except OSError:
        current = None
    data_ok = output.data_name is None or (out.parent / output.data_name).is_file()
    if current != output.source.encode("utf-8") or not data_ok:
        driver.write_output(out, output)
    return out


def instantiate(module: ModuleType, model: ir.Model) -> Any:
    """An instance of `model`'s generated class."""
    for name in module.__all__:
        cls = getattr(module, name)
        if getattr(cls, "_name", cls.__name__) == model.name:
            return cls()
    raise AssertionError(f"the generated module has no class for model {model.name!r}")


# --------------------------------------------------------------------------- reading


@dataclass
class Source:
    """An opened input: `batches()` yields (rows, width) float arrays; `done()` says how far
    through the input it is, in the unit of `total` (bytes or rows; None when unknown)."""

    batches: Callable[[], Iterator[np.ndarray]]
    done: Callable[[], int]
    total: int | None
    leading_shape: tuple[int, ...] | None  # the batch shape of a .npy input, kept in a .npy output


def open_input(path: str, fmt: str, model: ir.Model, stdin: IO[bytes]) -> Source:
    """Open `path` ("-" for stdin) as `fmt` for `model`; nothing is read beyond headers yet."""
    if fmt == "npy":
        if path == "-":
            raise UsageError("a .npy input must be a file, not stdin")
        return _npy_source(path, model)
    if path == "-":
        stream: IO[bytes] = stdin
        total = None
        display = "<stdin>"
    else:
        try:
            stream = open(path, "rb")  # closed when the batches are exhausted
            total = os.fstat(stream.fileno()).st_size
        except OSError as exc:
            raise DataError(f"cannot read the input: {exc.strerror}", file=path) from None
        display = path
    counter = _ByteCounter(stream)
    reader = _csv_batches if fmt == "csv" else _jsonl_batches

    def batches() -> Iterator[np.ndarray]:
        try:
            yield from reader(counter.lines(), display, model)
        finally:
            if stream is not stdin:
                stream.close()

    return Source(batches, lambda: counter.count, total or None, None)


class _ByteCounter:
    """Decodes a binary stream line by line as UTF-8 and counts the bytes read (the progress)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.count = 0

    def lines(self) -> Iterator[str]:
        for raw in self.stream:
            # A byte-order mark (as spreadsheet programs write) is not part of the first cell.
            text = raw.decode("utf-8-sig" if self.count == 0 else "utf-8", errors="replace")
            self.count += len(raw)
            yield text


def _npy_source(path: str, model: ir.Model) -> Source:
    try:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc) or "object" in str(exc):
                raise
            array = np.load(path, allow_pickle=False)  # e.g. an empty array cannot be mapped
    except OSError as exc:
        raise DataError(f"cannot read the input: {exc.strerror or exc}", file=path) from None
    except ValueError as exc:
        if "pickle" in str(exc) or "object" in str(exc):
            raise DataError(
                "the array holds Python objects; layerc reads numeric .npy files only", file=path
            ) from None
        raise DataError(f"not a valid .npy file: {exc}", file=path) from None
    if not isinstance(array, np.ndarray):
        raise DataError("not a .npy file (an .npz archive?)", file=path)
    width = model.in_features
    if array.dtype.kind not in "biuf":
        raise DataError(f"the array has dtype {array.dtype}; layerc reads real numbers", file=path)
    if array.ndim == 0 or array.shape[-1] != width:
        raise DataError(
            f"the array has shape {_shape(array.shape)} but model {model.name} takes "
            f"({width},) or (N, {width})",
            file=path,
        )
    leading = array.shape[:-1]
    rows = array.reshape(-1, width) if array.ndim != 2 else array
    count = rows.shape[0]
    state = {"done": 0}

    def batches() -> Iterator[np.ndarray]:
        step = chunk_rows(width)
        for start in range(0, count, step):
            chunk = np.ascontiguousarray(rows[start : start + step])
            state["done"] = start + chunk.shape[0]
            yield chunk

    return Source(batches, lambda: state["done"], count or None, leading)


def _csv_batches(lines: Iterator[str], file: str, model: ir.Model) -> Iterator[np.ndarray]:
    """CSV rows in chunks. The first non-blank row is a header when none of its cells is a
    number; a row with some numbers and some words is data with a bad cell."""
    width = model.in_features
    reader = csv.reader(lines)
    step = chunk_rows(width)
    pending: list[list[str]] = []
    pending_lines: list[int] = []
    first = True
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines carry no sample
            if first:
                first = False
                if not any(_is_number(cell) for cell in row):
                    _check_width(len(row), width, file, reader.line_num, model, "the header")
                    continue
            _check_width(len(row), width, file, reader.line_num, model, "the row")
            pending.append(row)
            pending_lines.append(reader.line_num)
            if len(pending) >= step:
                yield _parse_rows(pending, pending_lines, file)
                pending, pending_lines = [], []
    except csv.Error as exc:
        raise DataError(f"not valid CSV: {exc}", Loc(file, reader.line_num, 1)) from None
    if pending:
        yield _parse_rows(pending, pending_lines, file)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_width(count: int, width: int, file: str, line: int, model: ir.Model, what: str) -> None:
    if count != width:
        col = width + 1 if count > width else count + 1
        raise DataError(
            f"{what} has {count} value{'' if count == 1 else 's'} but model {model.name} takes "
            f"{width}",
            Loc(file, line, col),
        )


def _parse_rows(rows: list[list[str]], lines: list[int], file: str) -> np.ndarray:
    """Rows of numeric strings as float64; the first bad cell is reported where it stands."""
    try:
        return np.array(rows, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty((len(rows), len(rows[0])), dtype=np.float64)
    for r, (row, line) in enumerate(zip(rows, lines, strict=True)):
        for c, cell in enumerate(row):
            try:
                out[r, c] = float(cell)
            except ValueError:
                text = cell.strip()
                message = "empty cell" if not text else f"{_clip(text)!r} is not a number"
                raise DataError(message, Loc(file, line, c + 1)) from None
    return out


def _clip(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _jsonl_batches(lines: Iterator[str], file: str, model: ir.Model) -> Iterator[np.ndarray]:
    """JSON lines: every non-blank line is one sample, a JSON list of numbers."""
    width = model.in_features
    step = chunk_rows(width)
    pending: list[list[float]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg}", Loc(file, number, exc.colno)) from None
        if not isinstance(value, list):
            raise DataError(
                f"expected a JSON list of {width} numbers, got {type(value).__name__}",
                Loc(file, number, 1),
            )
        _check_width(len(value), width, file, number, model, "the row")
        for col, item in enumerate(value, 1):
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise DataError(
                    f"{_clip(json.dumps(item))} is not a number", Loc(file, number, col)
                )
        pending.append([float(item) for item in value])
        if len(pending) >= step:
            yield np.array(pending, dtype=np.float64)
            pending = []
    if pending:
        yield np.array(pending, dtype=np.float64)


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------- writing


class Writer(Protocol):
    def write(self, rows: np.ndarray) -> None: ...
    def close(self, leading_shape: tuple[int, ...] | None) -> None: ...
    def abort(self) -> None: ...


def _text_rows(rows: np.ndarray) -> Iterator[list[str]]:
    """Each row's numbers as the shortest text that reads back to the same value in the
    array's dtype ("30.0", "0.1", "nan", "inf")."""
    if rows.dtype == np.float64:
        for row in rows.tolist():
            yield [repr(v) for v in row]
    else:
        for row in rows:
            yield [str(v) for v in row]


_JSON_SPECIAL = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


class _TextWriter:
    """CSV (no header) or JSON lines, to a stream; into a temporary file renamed at the end
    when writing to a path."""

    def __init__(self, fmt: str, stream: TextIO, target: Path | None, tmp: str | None) -> None:
        self.fmt = fmt
        self.stream = stream
        self.target = target
        self.tmp = tmp

    def write(self, rows: np.ndarray) -> None:
        if self.fmt == "csv":
            lines = [",".join(cells) for cells in _text_rows(rows)]
        else:
            lines = [
                "[" + ", ".join(_JSON_SPECIAL.get(c, c) for c in cells) + "]"
                for cells in _text_rows(rows)
            ]
        if lines:
            self.stream.write("\n".join(lines) + "\n")

    def close(self, leading_shape: tuple[int, ...] | None) -> None:
        self.stream.flush()
        if self.target is not None and self.tmp is not None:
            os.fsync(self.stream.fileno())
            self.stream.close()
            os.chmod(self.tmp, mode_for(self.target))
            os.replace(self.tmp, self.target)

    def abort(self) -> None:
        if self.tmp is not None:
            self.stream.close()
            _unlink(self.tmp)


class _NpyWriter:
    """A .npy file written as the rows come: the header is reserved at a fixed size and
    rewritten with the final shape at the end, so no chunk has to stay in memory."""

    HEADER = 128  # bytes: room for any shape layerc can produce, a multiple of 64 as numpy aligns

    def __init__(self, target: Path, tmp: str, stream: IO[bytes], dtype: np.dtype, width: int):
        self.target = target
        self.tmp = tmp
        self.stream = stream
        self.dtype = dtype
        self.width = width
        self.rows = 0
        stream.write(b"\0" * self.HEADER)

    def write(self, rows: np.ndarray) -> None:
        self.stream.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += rows.shape[0]

    def close(self, leading_shape: tuple[int, ...] | None) -> None:
        shape = (leading_shape if leading_shape is not None else (self.rows,)) + (self.width,)
        self.stream.seek(0)
        self.stream.write(npy_header(self.dtype, shape, self.HEADER))
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        os.chmod(self.tmp, mode_for(self.target))
        os.replace(self.tmp, self.target)

    def abort(self) -> None:
        self.stream.close()
        _unlink(self.tmp)


def npy_header(dtype: np.dtype, shape: tuple[int, ...], size: int) -> bytes:
    """A .npy version 1.0 header of exactly `size` bytes (the format's padding is spaces)."""
    text = repr(
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    body_len = size - 10  # magic (6), version (2), header length (2)
    if len(text) + 1 > body_len:
        raise ValueError(f"shape {shape} does not fit a {size}-byte .npy header")
    body = text.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", body_len) + body.encode("latin1")


def open_output(path: str | None, fmt: str, model: ir.Model, stdout: TextIO) -> Writer:
    """A writer for `path` (None or "-": stdout) in `fmt`."""
    if path is None or path == "-":
        if fmt == "npy":
            raise UsageError("a .npy output must be a file: give --output FILE.npy")
        return _TextWriter(fmt, stdout, None, None)
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"the output {path!r} is a folder; give a file name")
    folder = target.parent if str(target.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise DataError(f"cannot write the output: {exc.strerror}", file=path) from None
    if fmt == "npy":
        return _NpyWriter(target, tmp, os.fdopen(fd, "w+b"), model.dtype, model.out_features)
    stream = io.TextIOWrapper(os.fdopen(fd, "wb"), encoding="utf-8", newline="\n")
    return _TextWriter(fmt, stream, target, tmp)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --------------------------------------------------------------------------- running


def run(net: Any, source: Source, writer: Writer, progress: Progress) -> int:
    """Feed every batch of `source` through `net` into `writer`; return the number of rows.
    On any error the partial output is removed and the error passes on."""
    rows = 0
    try:
        progress.update(0, 0, force=True)
        for batch in source.batches():
            writer.write(np.asarray(net(batch)))
            rows += batch.shape[0]
            progress.update(source.done(), rows)
        progress.finish(source.total or source.done(), rows)
        writer.close(source.leading_shape)
    except BaseException:
        progress.abandon()
        writer.abort()
        raise
    return rows
