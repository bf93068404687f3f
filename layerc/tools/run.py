"""`layerc run`: inference from the shell. A checked model and an input file in (.npy, .csv with
or without a header, or JSON lines), the model's outputs out (.npy, .csv or JSON lines, or CSV on
stdout), in chunks of bounded size so a large CSV never has to fit in memory.

Data mistakes are `DataError`s located as `file:row:col`, where row is the line of the file (as
an editor counts it, header included) and col the 1-based column (CSV cell or JSON list item),
or as `file:row` for a line as a whole. Lines are read in bounded pieces (`line_limit`), and a
.npy header is checked against the file's size before anything is mapped, so no input can make
`layerc run` hold more than a chunk and a line in memory.
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import io
import json
import math
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Literal, Protocol, TextIO

import numpy as np

from .. import codegen, driver, ir
from .. import weights as W
from ..errors import LayercError, Loc, UsageError
from ..files import (
    Inputs,
    commit,
    open_regular,
    read_regular,
    refuse_inputs,
    temporary_for,
    unlink_quietly,
)
from .term import Progress

INPUT_FORMATS = ("npy", "csv", "jsonl")
OUTPUT_FORMATS = ("npy", "csv", "jsonl")
_EXTENSIONS = {".npy": "npy", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# A chunk holds at most this many values (input or output side), so memory stays bounded
# whatever the file's size: 1M float64 values are 8 MB.
CHUNK_VALUES = 1 << 20

# The longest line of a CSV or JSON-lines input, in bytes: MAX_LINE_BYTES, or
# LINE_BYTES_PER_FEATURE for each input feature of a wider model (a number written out in full
# takes 25 characters). A longer line is an error, found without reading the rest of it.
MAX_LINE_BYTES = 1 << 16
LINE_BYTES_PER_FEATURE = 64

# The most dimensions a .npy input may have (the batch dimensions and the features).
MAX_NPY_DIMS = 32

# What `--delimiter` may be called besides the character itself, and the separators a one-cell
# row is checked for, to suggest the right `--delimiter`.
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "space": " "}
_LIKELY_DELIMITERS = (";", "\t", "|")


class DataError(LayercError):
    """A mistake in an input data file (not in the .lyr source): reported as `file:row:col:
    message`, or `file:row: message` when given a `line` and no `loc`, without a source
    excerpt."""

    def __init__(
        self,
        message: str,
        loc: Loc | None = None,
        *,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message, loc, file=file)
        self.line = line

    def __str__(self) -> str:
        if self.loc is None and self.line is not None:
            return f"{self.file}:{self.line}: {self.message}"
        return super().__str__()


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


def line_limit(width: int) -> int:
    """The longest line, in bytes (its line break not counted), read for `width` features."""
    return max(MAX_LINE_BYTES, LINE_BYTES_PER_FEATURE * width)


def parse_delimiter(text: str) -> str:
    """The CSV separator `--delimiter` names: one character, or `tab` (also written `\\t`) or
    `space`. A character that can be part of a number, a quote or a line break is refused."""
    char = _DELIMITER_NAMES.get(text, text)
    if len(char) != 1 or char.isalnum() or char in '.+-"\r\n':
        raise UsageError(
            f"--delimiter {text!r} is not a separator layerc can use: give one character that "
            "is not part of a number (such as ';' or '|'), or tab or space"
        )
    return char


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
    stem = driver.safe_module_name(source.stem)
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
        current: bytes | None = read_regular(out, str(out))
    except LayercError:
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


def open_input(
    path: str, fmt: str, model: ir.Model, stdin: IO[bytes], delimiter: str = ","
) -> Source:
    """Open `path` ("-" for stdin) as `fmt` for `model`; nothing is read beyond headers yet.
    A path must name a regular file (`-` reads a pipe)."""
    if fmt == "npy":
        if path == "-":
            raise UsageError("a .npy input must be a file, not stdin")
        return _npy_source(path, model)
    if path == "-":
        stream: IO[bytes] = stdin
        total = None
        display = "<stdin>"
    else:
        fd = open_regular(Path(path), path, what="a data file")
        stream = os.fdopen(fd, "rb")  # closed when the batches are exhausted
        total = os.fstat(fd).st_size
        display = path
    counter = _ByteCounter(stream, display, line_limit(model.in_features), model.in_features)

    def batches() -> Iterator[np.ndarray]:
        try:
            if fmt == "csv":
                yield from _csv_batches(counter, display, model, delimiter)
            else:
                yield from _jsonl_batches(counter.lines(), display, model)
        finally:
            if stream is not stdin:
                stream.close()

    return Source(batches, lambda: counter.count, total or None, None)


class _ByteCounter:
    """Decodes a binary stream line by line as UTF-8, reading no line longer than `limit` bytes
    (a longer one is a `DataError`), and counts the bytes read (the progress) and the lines."""

    def __init__(self, stream: IO[bytes], file: str, limit: int, width: int) -> None:
        self.stream = stream
        self.file = file
        self.limit = limit
        self.width = width
        self.count = 0
        self.line = 0

    def lines(self) -> Iterator[str]:
        while raw := self.stream.readline(self.limit + 1):
            self.line += 1
            if len(raw) > self.limit and not raw.endswith(b"\n"):
                raise self.too_long("the line")
            # A byte-order mark (as spreadsheet programs write) is not part of the first cell.
            text = raw.decode("utf-8-sig" if self.count == 0 else "utf-8", errors="replace")
            self.count += len(raw)
            yield text

    def too_long(self, what: str) -> DataError:
        return DataError(
            f"{what} is longer than {self.limit} bytes, the most layerc reads for a model of "
            f"{self.width} input feature{'' if self.width == 1 else 's'} ({MAX_LINE_BYTES} bytes, "
            f"or {LINE_BYTES_PER_FEATURE} per feature for wider models)",
            file=self.file,
            line=self.line,
        )


def _npy_source(path: str, model: ir.Model) -> Source:
    """A .npy input, mapped into memory rather than read: its header is checked first (dtype,
    at most MAX_NPY_DIMS dimensions, a size the file holds)."""
    fd = open_regular(Path(path), path, what="a .npy file")
    with os.fdopen(fd, "rb") as f:
        shape, fortran, dtype = _npy_header(f, path)
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
        if dtype.hasobject:
            raise DataError(
                "the array holds Python objects; layerc reads numeric .npy files only", file=path
            )
        if dtype.kind not in "biuf" or dtype.names is not None or dtype.subdtype is not None:
            raise DataError(f"the array has dtype {dtype}; layerc reads real numbers", file=path)
        if len(shape) > MAX_NPY_DIMS:
            raise DataError(
                f"the array has {len(shape)} dimensions; layerc reads at most {MAX_NPY_DIMS}",
                file=path,
            )
        if any(d < 0 for d in shape):
            raise DataError(f"the header declares a negative shape {shape}", file=path)
        needed = math.prod(shape) * dtype.itemsize
        if needed > size - offset:
            raise DataError(
                f"the file is truncated: its header declares shape {_shape(shape)} of {dtype} "
                f"({needed} bytes) but only {size - offset} bytes follow",
                file=path,
            )
        order: Literal["F", "C"] = "F" if fortran else "C"
        array: np.ndarray
        if needed == 0:
            array = np.empty(shape, dtype=dtype, order=order)
        else:
            try:
                array = np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot map the file into memory: {exc}", file=path) from None
    width = model.in_features
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


def _npy_header(f: IO[bytes], path: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the .npy header at the start of `f`, read and checked
    as for weights files (a bounded header, no code run); a bad one is a `DataError`."""
    source = W._Source(path, None, Loc(path, 1, 1))
    try:
        return W._read_npy_header(f, source)
    except LayercError as exc:
        raise DataError(exc.message.removeprefix(f"{source.what} "), file=path) from None


def _csv_batches(
    counter: _ByteCounter, file: str, model: ir.Model, delimiter: str
) -> Iterator[np.ndarray]:
    """CSV rows in chunks. The first non-blank row is a header when none of its cells is a
    number; a row with some numbers and some words is data with a bad cell. A row that spans
    lines (a quoted line break) is held to the same length as a line."""
    width = model.in_features
    record = 0  # bytes of the row being read so far

    def lines() -> Iterator[str]:
        nonlocal record
        for line in counter.lines():
            record += len(line)
            if record > counter.limit + 2:  # a line's own break ("\r\n") is not counted
                raise counter.too_long("the row")
            yield line

    reader = csv.reader(lines(), delimiter=delimiter)
    step = chunk_rows(width)
    pending: list[list[str]] = []
    pending_lines: list[int] = []
    first = True
    try:
        for row in reader:
            record = 0
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines carry no sample
            if first:
                first = False
                if not any(_is_number(cell) for cell in row):
                    _check_width(row, width, file, reader.line_num, model, "the header", delimiter)
                    continue
            _check_width(row, width, file, reader.line_num, model, "the row", delimiter)
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


def _check_width(
    row: list[Any],
    width: int,
    file: str,
    line: int,
    model: ir.Model,
    what: str,
    delimiter: str | None = None,
) -> None:
    """Refuse a CSV row (given its `delimiter`) or JSON list of other than `width` values. A
    CSV row of one cell that another common separator splits gets a `--delimiter` hint."""
    count = len(row)
    if count == width:
        return
    hint = ""
    if delimiter is not None and count == 1 and width > 1:
        found = [d for d in _LIKELY_DELIMITERS if d != delimiter and d in row[0]]
        if found:
            best = max(found, key=lambda d: (row[0].count(d) + 1 == width, row[0].count(d)))
            name = "tab" if best == "\t" else repr(best)
            hint = f"; its values look separated by {name}: use --delimiter {name}"
    col = width + 1 if count > width else count + 1
    raise DataError(
        f"{what} has {count} value{'' if count == 1 else 's'} but model {model.name} takes "
        f"{width}{hint}",
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
        _check_width(value, width, file, number, model, "the row")
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

    def __init__(self, fmt: str, stream: TextIO, target: Path | None, tmp: Path | None) -> None:
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
            commit(self.tmp, self.target)

    def abort(self) -> None:
        if self.tmp is not None:
            self.stream.close()
            unlink_quietly(self.tmp)


class _NpyWriter:
    """A .npy file written as the rows come: the header is reserved at the size the largest
    shape of `ndim` dimensions needs and rewritten with the final shape at the end, so no chunk
    has to stay in memory."""

    HEADER = 128  # bytes, at least: a multiple of 64, as numpy aligns

    def __init__(
        self, target: Path, tmp: Path, stream: IO[bytes], dtype: np.dtype, width: int, ndim: int
    ):
        self.target = target
        self.tmp = tmp
        self.stream = stream
        self.dtype = dtype
        self.width = width
        self.rows = 0
        largest = npy_header(dtype, (2**63 - 1,) * ndim, None)
        self.header = max(self.HEADER, len(largest))
        stream.write(b"\0" * self.header)

    def write(self, rows: np.ndarray) -> None:
        self.stream.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += rows.shape[0]

    def close(self, leading_shape: tuple[int, ...] | None) -> None:
        shape = (leading_shape if leading_shape is not None else (self.rows,)) + (self.width,)
        self.stream.seek(0)
        self.stream.write(npy_header(self.dtype, shape, self.header))
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        commit(self.tmp, self.target)

    def abort(self) -> None:
        self.stream.close()
        unlink_quietly(self.tmp)


def npy_header(dtype: np.dtype, shape: tuple[int, ...], size: int | None) -> bytes:
    """A .npy version 1.0 header of exactly `size` bytes (the format's padding is spaces), or
    of the smallest multiple of 64 bytes that holds it when `size` is None."""
    text = repr(
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    if size is None:
        size = -(-(len(text) + 11) // 64) * 64
    body_len = size - 10  # magic (6), version (2), header length (2)
    if len(text) + 1 > body_len:
        raise ValueError(f"shape {shape} does not fit a {size}-byte .npy header")
    body = text.ljust(body_len - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", body_len) + body.encode("latin1")


def open_output(
    path: str | None,
    fmt: str,
    model: ir.Model,
    stdout: TextIO,
    inputs: Inputs = (),
    ndim: int = 2,
) -> Writer:
    """A writer for `path` (None or "-": stdout) in `fmt`, for results of `ndim` dimensions;
    `path` may not be one of the command's `inputs`."""
    if path is None or path == "-":
        if fmt == "npy":
            raise UsageError("a .npy output must be a file: give --output FILE.npy")
        return _TextWriter(fmt, stdout, None, None)
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"the output {path!r} is a folder; give a file name")
    refuse_inputs([target], inputs)
    try:
        fd, tmp = temporary_for(target)
    except OSError as exc:
        raise DataError(f"cannot write the output: {exc.strerror}", file=path) from None
    if fmt == "npy":
        stream = os.fdopen(fd, "w+b")
        return _NpyWriter(target, tmp, stream, model.dtype, model.out_features, ndim)
    text = io.TextIOWrapper(os.fdopen(fd, "wb"), encoding="utf-8", newline="\n")
    return _TextWriter(fmt, text, target, tmp)


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
