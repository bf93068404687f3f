"""`layerc run`: inference from the shell. A checked model and an input file in (.npy, .csv with
or without a header, or JSON lines), the model's outputs out (.npy, .csv or JSON lines, or CSV on
stdout), in chunks of bounded size so a large CSV never has to fit in memory.

A graph model with several inputs reads one file per input, in step (a chunk of each, the same
rows), or one .npz holding an array per input, named as in `forward`; one with several outputs
writes one file per output, or one .npz holding `output0`, `output1`, ... in return order (the
index into the tuple the model returns). Every input must hold the same number of samples.

Data mistakes are `DataError`s located as `file:row:col`, where row is the line of the file (as
an editor counts it, header included) and col the 1-based column (CSV cell or JSON list item),
or as `file:row` for a line as a whole. Lines are read in bounded pieces (`line_limit`), and a
.npy header is checked against the file's size before anything is mapped, so no input can make
`layerc run` hold more than a chunk and a line in memory.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import math
import os
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Literal, Protocol, TextIO

import numpy as np

from .. import driver, ir
from .. import weights as W
from ..errors import LayercError, Loc, UsageError, suggest
from ..files import (
    Inputs,
    WriteFailed,
    commit,
    open_regular,
    refuse_inputs,
    temporary_for,
    unlink_quietly,
    write_atomically,
)
from ..runtime.portable import content_key
from .term import Progress

INPUT_FORMATS = ("npy", "npz", "csv", "jsonl", "parquet")
OUTPUT_FORMATS = ("npy", "npz", "csv", "jsonl", "parquet")
_EXTENSIONS = {
    ".npy": "npy",
    ".npz": "npz",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}

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
        return _available(given)
    if path == "-":
        return "csv"
    suffix = Path(path).suffix.lower()
    if suffix in _EXTENSIONS and _EXTENSIONS[suffix] in formats:
        return _available(_EXTENSIONS[suffix])
    known = ", ".join(f".{f}" for f in formats)
    raise UsageError(
        f"cannot tell the format of the {what} {path!r} from its extension: use {known} "
        f"or --{what}-format"
    )


def _available(fmt: str) -> str:
    """`fmt`, once its library is known to be installed: Parquet needs pyarrow, an optional
    package layerc itself never needs."""
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UsageError("Parquet files need pyarrow: pip install pyarrow")
    return fmt


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


# --------------------------------------------------------------------------- inputs and outputs


@dataclass(frozen=True)
class Port:
    """One input or output of the model being run: what data files are read for or written
    from. `name` is the forward input's name when the model takes several (messages name it),
    None for a model's only input and for outputs; `key` is the array's name in an .npz (the
    forward input's name, `output0`, `output1`, ...; None for a pipeline's input, which has no
    name)."""

    model: str
    name: str | None
    key: str | None
    shape: ir.Shape  # per sample
    dtype: np.dtype

    @property
    def width(self) -> int:
        """Values per sample: a CSV row's length."""
        return math.prod(self.shape)

    @property
    def what(self) -> str:
        """`model Net`, or `input mask of model TwoHeads`."""
        if self.name is None:
            return f"model {self.model}"
        return f"input {self.name} of model {self.model}"


def input_ports(model: ir.Model) -> list[Port]:
    """The model's inputs, in forward order (a pipeline has one)."""
    if model.graph is None:
        return [Port(model.name, None, None, model.in_shape, model.dtype)]
    several = len(model.graph.inputs) > 1
    return [
        Port(model.name, i.name if several else None, i.name, i.shape, model.dtype)
        for i in model.graph.inputs
    ]


def output_ports(model: ir.Model) -> list[Port]:
    """The model's outputs, in return order, named `output0`, `output1`, ... in an .npz."""
    return [
        Port(model.name, None, f"output{index}", shape, model.dtype)
        for index, shape in enumerate(model.out_shapes)
    ]


def _port(port: Port | ir.Model, ports: Callable[[ir.Model], list[Port]]) -> Port:
    return ports(port)[0] if isinstance(port, ir.Model) else port


def assign_inputs(
    specs: list[str], model: ir.Model, given: str | None = None
) -> list[tuple[str, str]]:
    """The data file and its format for each input of `model`, in forward order, from the
    `--input` values: one per input in forward order, or `NAME=FILE` for each (NAME a forward
    input's name, in any order), or one .npz for all of them (then the only item returned). The
    format is `given` (--input-format), else the file's extension. A usage error says what to
    give."""
    ports = input_ports(model)
    names = [p.key for p in ports if p.key is not None]
    named: dict[str, str] = {}
    plain: list[str] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if sep and name in names:
            if name in named:
                raise UsageError(f"--input {name}=... is given twice")
            named[name] = path
        elif sep and names and name.isidentifier() and not Path(spec).exists():
            raise UsageError(
                f"--input {spec!r}: model {model.name} has no input {name!r}"
                f"{suggest(name, names)} (its inputs: {', '.join(names)})"
            )
        else:
            plain.append(spec)
    if named and plain:
        raise UsageError("give every --input as NAME=FILE, or none of them")
    paths = list(named.values()) or plain
    formats = [format_of(path, given, INPUT_FORMATS, "input") for path in paths]
    if paths.count("-") > 1:
        raise UsageError("only one --input can be '-' (stdin)")
    if len(paths) == 1 and formats[0] == "npz":
        return [(paths[0], "npz")]
    if "npz" in formats:
        raise UsageError(
            "an .npz input holds an array for every input of the model: give it as the only --input"
        )
    if named:
        missing = [name for name in names if name not in named]
        if missing:
            raise UsageError(
                f"model {model.name} takes {len(ports)} inputs ({', '.join(names)}): "
                f"no --input for {', '.join(missing)}"
            )
        chosen = {
            name: (path, fmt) for (name, path), fmt in zip(named.items(), formats, strict=True)
        }
        return [chosen[name] for name in names]
    if len(plain) == len(ports):
        return list(zip(plain, formats, strict=True))
    if len(ports) == 1:
        raise UsageError(f"model {model.name} takes one input: give --input once")
    raise UsageError(
        f"model {model.name} takes {len(ports)} inputs ({', '.join(names)}) and "
        f"{len(plain)} --input {'was' if len(plain) == 1 else 'were'} given: give one per input "
        "in that order, or NAME=FILE for each, or one .npz holding an array named after each"
    )


def assign_outputs(
    specs: list[str] | None, model: ir.Model, given: str | None = None
) -> list[tuple[str | None, str]]:
    """Where each output of `model` goes and in what format, in return order, from the
    `--output` values: none or `-` (stdout, CSV unless `given`; a model of one output only),
    one file per output, or one .npz for all of them (then the only item returned)."""
    ports = output_ports(model)
    paths: list[str | None] = list(specs) if specs else [None]
    formats = [format_of(path or "-", given, OUTPUT_FORMATS, "output") for path in paths]
    if len(paths) == 1 and formats[0] == "npz":
        if paths[0] in (None, "-"):
            raise UsageError("an .npz output must be a file: give --output FILE.npz")
        return [(paths[0], "npz")]
    if len(ports) > 1 and len(paths) == 1:
        where = "stdout" if paths[0] in (None, "-") else repr(paths[0])
        raise UsageError(
            f"model {model.name} gives {len(ports)} outputs, which do not fit in one "
            f"{formats[0]} file ({where}): give --output once per output, in return order, "
            "or one .npz (--output OUT.npz, holding output0, output1, ...)"
        )
    if len(paths) != len(ports):
        raise UsageError(
            f"model {model.name} gives {len(ports)} output{'' if len(ports) == 1 else 's'} and "
            f"{len(paths)} --output were given: give one per output, in return order, or one .npz"
        )
    if "npz" in formats:
        raise UsageError(
            "an .npz output holds every output of the model: give it as the only --output"
        )
    real = [path for path in paths if path not in (None, "-")]
    if len(real) != len(paths) and len(paths) > 1:
        raise UsageError("with several outputs, every --output must be a file")
    if len({os.path.abspath(path) for path in real}) != len(real):
        raise UsageError("two --output name the same file")
    return list(zip(paths, formats, strict=True))


# --------------------------------------------------------------------------- compiling


def load_module(program: ir.Program, source: Path) -> ModuleType:
    """Generate the module for `program` and import it from the cache (`driver.import_cached`),
    writing it there first when missing."""
    return Generated.of(program, source).load()


@dataclass(frozen=True)
class Generated:
    """The module generated for a source, not imported yet: `key` is the content hash the
    cache names it by (its code and weights), which is what a folder run's completion records
    remember of the model, and `load` imports it."""

    stem: str
    output: Any  # codegen.Output

    @classmethod
    def of(cls, program: ir.Program, source: Path) -> Generated:
        stem = driver.safe_module_name(source.stem)
        return cls(stem, driver.generate(program, Path(f"{stem}.py")))

    @property
    def key(self) -> str:
        return content_key(self.output.source, self.output.data)

    def load(self) -> ModuleType:
        return driver.import_cached(self.stem, self.output)


def instantiate(module: ModuleType, model: ir.Model | str) -> Any:
    """An instance of `model`'s generated class (the model, or its name)."""
    wanted = model if isinstance(model, str) else model.name
    for name in module.__all__:
        cls = getattr(module, name)
        if getattr(cls, "_name", cls.__name__) == wanted:
            return cls()
    raise AssertionError(f"the generated module has no class for model {wanted!r}")


@dataclass(frozen=True)
class Build:
    """How to make the model of a folder run, in this process or in another one (a Dask worker
    unpickles it): import the generated module from the cache (`Generated.load`) and make an
    instance of one of its classes. A process that only hands out work (`layerc run --dask`)
    sends this instead of an instance, so that it never imports the module, numba or its
    kernels itself."""

    generated: Generated
    model: str

    def __call__(self) -> Any:
        return instantiate(self.generated.load(), self.model)


# --------------------------------------------------------------------------- reading


@dataclass
class Source:
    """An opened input: `batches()` yields (rows, width) float arrays; `done()` says how far
    through the input it is, in the unit of `total` (bytes or rows; None when unknown)."""

    batches: Callable[[], Iterator[np.ndarray]]
    done: Callable[[], int]
    total: int | None
    leading_shape: tuple[int, ...] | None  # the batch shape of a .npy input, kept in a .npy output
    file: str = ""  # where its errors are: the path ("<stdin>")
    key: str | None = None  # the array's name, for an array of an .npz
    samples: int | None = None  # how many samples it holds, when known before reading

    @property
    def name(self) -> str:
        """How another input's message names it: `x.csv`, or `array 'x'` of the same .npz."""
        return self.file if self.key is None else f"array {self.key!r}"


def open_input(
    path: str, fmt: str, port: Port | ir.Model, stdin: IO[bytes], delimiter: str = ","
) -> Source:
    """Open `path` ("-" for stdin) as `fmt` for one input of a model (`port`, or a model's only
    input); nothing is read beyond headers yet. A path must name a regular file (`-` reads a
    pipe)."""
    port = _port(port, input_ports)
    if fmt in ("npy", "npz", "parquet") and path == "-":
        raise UsageError(f"a .{fmt} input must be a file, not stdin")
    if fmt == "npy":
        return _npy_source(path, port)
    if fmt == "parquet":
        return _parquet_source(path, port)
    if fmt == "npz":
        (source,) = open_npz(path, [port])
        return source
    if path == "-":
        stream: IO[bytes] = stdin
        total = None
        display = "<stdin>"
    else:
        fd = open_regular(Path(path), path, what="a data file")
        stream = os.fdopen(fd, "rb")  # closed when the batches are exhausted
        total = os.fstat(fd).st_size
        display = path
    counter = _ByteCounter(stream, display, line_limit(port.width), port.width)

    def batches() -> Iterator[np.ndarray]:
        try:
            if fmt == "csv":
                yield from _csv_batches(counter, display, port, delimiter)
            else:
                yield from _jsonl_batches(counter.lines(), display, port)
        finally:
            if stream is not stdin:
                stream.close()

    return Source(batches, lambda: counter.count, total or None, None, display)


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


def _npy_source(path: str, port: Port) -> Source:
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
    width = port.width
    leading = batch_shape(array.shape, port)
    if leading is None:
        raise DataError(f"the array has shape {_shape(array.shape)} but {_takes(port)}", file=path)
    rows = array.reshape(-1, width) if array.ndim != 2 else array
    count = rows.shape[0]
    state = {"done": 0}

    def batches() -> Iterator[np.ndarray]:
        step = chunk_rows(width)
        for start in range(0, count, step):
            chunk = np.ascontiguousarray(rows[start : start + step])
            state["done"] = start + chunk.shape[0]
            yield chunk

    return Source(batches, lambda: state["done"], count or None, leading, path, None, count)


def _parquet_source(path: str, port: Port) -> Source:
    """A Parquet file whose columns are the features, one sample per row (as a pandas or Dask
    DataFrame writes it; the index pandas stores as a column is left out). Every column must
    be numeric; a missing value (null, as pandas writes NaN) reads as NaN. Row groups are read
    a chunk at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fd = open_regular(Path(path), path, what="a .parquet file")
    f = os.fdopen(fd, "rb")
    try:
        try:
            table = pq.ParquetFile(f)
            schema = table.schema_arrow
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DataError(f"not a valid Parquet file: {exc}", file=path) from None
        index = (schema.pandas_metadata or {}).get("index_columns", [])
        columns = [name for name in schema.names if name not in index]
        width = port.width
        if len(columns) != width:
            raise DataError(
                f"the file has {len(columns)} column{'' if len(columns) == 1 else 's'} but "
                f"{port.what} takes {width} (one column per feature)",
                file=path,
            )
        for number, name in enumerate(columns, 1):
            kind = schema.field(name).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
                raise DataError(
                    f"column {number} ({name!r}) holds {'text' if text else kind}, not numbers",
                    file=path,
                )
        count = table.metadata.num_rows
    except BaseException:
        f.close()
        raise
    state = {"done": 0}

    def batches() -> Iterator[np.ndarray]:
        try:
            for batch in table.iter_batches(batch_size=chunk_rows(width), columns=columns):
                values = [
                    column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                    if column.null_count
                    else column.to_numpy(zero_copy_only=False)
                    for column in batch.columns
                ]
                state["done"] += batch.num_rows
                yield np.stack(values, axis=1) if values else np.empty((batch.num_rows, 0))
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"cannot read the file: {exc}", file=path) from None
        finally:
            f.close()

    return Source(batches, lambda: state["done"], count or None, None, path, None, count)


def batch_shape(shape: tuple[int, ...], port: Port) -> tuple[int, ...] | None:
    """The batch axes of an array of `shape` holding samples for `port`: those before the
    per-sample shape (`(N, 1, 28, 28)` for `[1, 28, 28]`), or before a last axis of one sample's
    values (`(N, 784)`); None when it holds neither."""
    n = len(port.shape)
    if len(shape) >= n and shape[len(shape) - n :] == port.shape:
        return shape[: len(shape) - n]
    if shape and shape[-1] == port.width:
        return shape[:-1]
    return None


def _takes(port: Port) -> str:
    """`model Net takes (4,) or (N, 4)`; for samples of several axes, the flat form too."""
    width = port.width
    if len(port.shape) == 1:
        return f"{port.what} takes ({width},) or (N, {width})"
    axes = ", ".join(map(str, port.shape))
    return f"{port.what} takes {_shape(port.shape)} or (N, {axes}), or (N, {width}) flattened"


def _npy_header(f: IO[bytes], path: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the .npy header at the start of `f`, read and checked
    as for weights files (a bounded header, no code run); a bad one is a `DataError`."""
    source = W._Source(path, None, Loc(path, 1, 1))
    try:
        return W._read_npy_header(f, source)
    except LayercError as exc:
        raise DataError(exc.message.removeprefix(f"{source.what} "), file=path) from None


def open_npz(path: str, ports: list[Port]) -> list[Source]:
    """An .npz input holding an array for each of `ports`, named by its `key` (the forward
    input's name); a model of one input also takes an .npz of one array, whatever its name.
    Each array's header is checked before any data is read, and its data is read from the
    archive a chunk at a time (decompressed as it goes), never as a whole; an array saved in
    Fortran order, which cannot be read by rows, is read whole only when it is at most a
    chunk."""
    fd = open_regular(Path(path), path, what="an .npz file")
    f = os.fdopen(fd, "rb")
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        f.close()
        raise DataError(f"not a valid .npz file: {exc}", file=path) from None
    # Arrays by name: np.savez stores the array `x` as the member `x.npy`.
    members = {
        info.filename.removesuffix(".npy"): info for info in archive.infolist() if not info.is_dir()
    }
    sources = []
    open_count = [0]

    def release() -> None:
        open_count[0] -= 1
        if open_count[0] <= 0:
            archive.close()
            f.close()

    try:
        for port in ports:
            key = port.key
            if key not in members and len(ports) == 1 and len(members) == 1:
                key = next(iter(members))
            if key is None or key not in members:
                raise DataError(_missing_array(port, key, list(members)), file=path)
            sources.append(_npz_source(archive, members[key], key, path, port, release))
            open_count[0] += 1
    except BaseException:
        archive.close()
        f.close()
        raise
    return sources


def _missing_array(port: Port, key: str | None, keys: list[str]) -> str:
    have = ", ".join(map(repr, sorted(keys))) if keys else "none"
    if key is None:  # a pipeline's input has no name
        return f"holds {len(keys)} arrays ({have}); for {port.what} it must hold exactly one"
    return f"has no array {key!r} for {port.what}{suggest(key, keys)} (it has: {have})"


def _npz_source(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    key: str,
    path: str,
    port: Port,
    release: Callable[[], None],
) -> Source:
    """One array of an .npz, streamed from its member (see `open_npz`)."""

    def error(message: str) -> DataError:
        return DataError(f"array {key!r}: {message}", file=path)

    try:
        member = archive.open(info)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise error(f"cannot read it: {exc}") from None
    try:
        shape, fortran, dtype = _npy_header(member, path)
    except DataError as exc:  # "is not a valid .npy file: ..."
        member.close()
        raise DataError(f"array {key!r} {exc.message}", file=path) from None
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        member.close()
        raise error(f"cannot read it: {exc}") from None
    try:
        if dtype.hasobject:
            raise error("the array holds Python objects; layerc reads numeric arrays only")
        if dtype.kind not in "biuf" or dtype.names is not None or dtype.subdtype is not None:
            raise error(f"the array has dtype {dtype}; layerc reads real numbers")
        if len(shape) > MAX_NPY_DIMS or any(d < 0 for d in shape):
            raise error(
                f"the array has shape {_shape(shape)}; layerc reads at most {MAX_NPY_DIMS} axes"
            )
        count = math.prod(shape)
        needed = count * dtype.itemsize
        if needed > info.file_size - member.tell():
            raise error(
                f"the member is truncated: its header declares shape {_shape(shape)} of {dtype} "
                f"({needed} bytes) but only {info.file_size - member.tell()} bytes follow"
            )
        leading = batch_shape(shape, port)
        if leading is None:
            raise error(f"the array has shape {_shape(shape)} but {_takes(port)}")
        width = port.width
        rows = count // width if width else 0
        whole: np.ndarray | None = None
        if fortran and len(shape) > 1 and count > 0:
            if count > CHUNK_VALUES:
                raise error(
                    f"the array is saved in Fortran order, which layerc reads by rows only up "
                    f"to {CHUNK_VALUES:,} values; save np.ascontiguousarray(array) instead"
                )
            data = member.read(needed)
            if len(data) != needed:
                raise error(f"the member is truncated: {len(data)} of {needed} data bytes")
            whole = np.frombuffer(data, dtype=dtype).reshape(shape, order="F").reshape(-1, width)
    except BaseException:
        member.close()
        raise
    state = {"done": 0}

    def batches() -> Iterator[np.ndarray]:
        try:
            step = chunk_rows(width)
            for start in range(0, rows, step):
                n = min(step, rows - start)
                if whole is not None:
                    chunk = np.ascontiguousarray(whole[start : start + n])
                else:
                    try:
                        data = member.read(n * width * dtype.itemsize)
                    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                        raise error(f"cannot read it: {exc}") from None
                    if len(data) != n * width * dtype.itemsize:
                        raise error("the member is truncated")
                    chunk = np.frombuffer(data, dtype=dtype).reshape(n, width)
                state["done"] = start + n
                yield chunk
        finally:
            member.close()
            release()

    return Source(batches, lambda: state["done"], rows or None, leading, path, key, rows)


def together(sources: list[Source], ports: list[Port]) -> Iterator[list[np.ndarray]]:
    """The batches of several inputs read in step: each time, the same number of rows from
    each (as many as a chunk of all of them together holds). An input that holds fewer or more
    samples than the first is a `DataError`, found before anything is read when the inputs
    say how many they hold, else when the first of them ends."""
    first = sources[0]
    for source in sources[1:]:
        if first.samples is not None and source.samples is not None:
            _check_samples(first, first.samples, source, source.samples)
        if first.leading_shape is not None and source.leading_shape is not None:
            if first.leading_shape != source.leading_shape:
                raise DataError(
                    f"{_own(source)}has batch shape {_shape(source.leading_shape)} but "
                    f"{first.name} has {_shape(first.leading_shape)}; every input needs the "
                    "same batch shape",
                    file=source.file,
                )
    step = chunk_rows(sum(port.width for port in ports))
    streams = [source.batches() for source in sources]
    pending: list[list[np.ndarray]] = [[] for _ in sources]
    held = [0] * len(sources)  # rows pending, per input
    ended = [False] * len(sources)
    given = 0  # rows of each input handed on
    while True:
        for i, stream in enumerate(streams):
            while held[i] < step and not ended[i]:
                batch = next(stream, None)
                if batch is None:
                    ended[i] = True
                elif batch.shape[0]:
                    pending[i].append(batch)
                    held[i] += batch.shape[0]
        n = min(held)
        if n == 0:
            break
        out = []
        for i in range(len(sources)):
            rows = pending[i][0] if len(pending[i]) == 1 else np.concatenate(pending[i])
            out.append(rows[:n])
            pending[i] = [rows[n:]] if rows.shape[0] > n else []
            held[i] -= n
        given += n
        yield out
    if any(held):
        # One input ended before another: count the rest of each, for the message.
        totals = [
            given + held[i] + sum(b.shape[0] for b in stream) for i, stream in enumerate(streams)
        ]
        for source, total in zip(sources[1:], totals[1:], strict=True):
            _check_samples(first, totals[0], source, total)


def _check_samples(first: Source, count: int, other: Source, other_count: int) -> None:
    if count != other_count:
        raise DataError(
            f"{_own(other)}holds {other_count:,} sample{'' if other_count == 1 else 's'} but "
            f"{first.name} holds {count:,}; every input needs the same number of samples, in "
            "the same order",
            file=other.file,
        )


def _own(source: Source) -> str:
    """How a message at `source`'s file starts: "" for a file, `array 'x' ` in an .npz."""
    return "" if source.key is None else f"array {source.key!r} "


def _csv_batches(
    counter: _ByteCounter, file: str, port: Port, delimiter: str
) -> Iterator[np.ndarray]:
    """CSV rows in chunks. The first non-blank row is a header when none of its cells is a
    number; a row with some numbers and some words is data with a bad cell. A row that spans
    lines (a quoted line break) is held to the same length as a line."""
    width = port.width
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
                    _check_width(row, width, file, reader.line_num, port, "the header", delimiter)
                    continue
            _check_width(row, width, file, reader.line_num, port, "the row", delimiter)
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
    port: Port,
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
        f"{what} has {count} value{'' if count == 1 else 's'} but {port.what} takes {width}{hint}",
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


def _jsonl_batches(lines: Iterator[str], file: str, port: Port) -> Iterator[np.ndarray]:
    """JSON lines: every non-blank line is one sample, a JSON list of numbers."""
    width = port.width
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
        _check_width(value, width, file, number, port, "the row")
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
    """Where one output's rows go. `finish` completes the file (under its temporary name) and
    `commit` renames it into place, so that a model's several outputs are all complete before
    any is renamed (`Outputs.close`)."""

    def write(self, rows: np.ndarray) -> None: ...
    def finish(self, leading_shape: tuple[int, ...] | None) -> None: ...
    def commit(self) -> None: ...
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
    when writing to a path. A sample of several axes is one row of its values."""

    def __init__(self, fmt: str, stream: TextIO, target: Path | None, tmp: Path | None) -> None:
        self.fmt = fmt
        self.stream = stream
        self.target = target
        self.tmp = tmp

    def write(self, rows: np.ndarray) -> None:
        rows = rows.reshape(rows.shape[0], -1) if rows.ndim != 2 else rows
        if self.fmt == "csv":
            lines = [",".join(cells) for cells in _text_rows(rows)]
        else:
            lines = [
                "[" + ", ".join(_JSON_SPECIAL.get(c, c) for c in cells) + "]"
                for cells in _text_rows(rows)
            ]
        if lines:
            self.stream.write("\n".join(lines) + "\n")

    def finish(self, leading_shape: tuple[int, ...] | None) -> None:
        self.stream.flush()
        if self.target is not None and self.tmp is not None:
            os.fsync(self.stream.fileno())
            self.stream.close()

    def commit(self) -> None:
        if self.target is not None and self.tmp is not None:
            commit(self.tmp, self.target)

    def abort(self) -> None:
        if self.tmp is not None:
            self.stream.close()
            unlink_quietly(self.tmp)


class _NpyWriter:
    """A .npy file written as the rows come: the header is reserved at the size the largest
    shape of `ndim` dimensions needs and rewritten with the final shape at the end, so no chunk
    has to stay in memory. The final shape is the input's batch shape (or the rows written)
    followed by the per-sample `shape`."""

    HEADER = 128  # bytes, at least: a multiple of 64, as numpy aligns

    def __init__(
        self,
        target: Path,
        tmp: Path,
        stream: IO[bytes],
        dtype: np.dtype,
        shape: int | tuple[int, ...],
        ndim: int,
    ):
        self.target = target
        self.tmp = tmp
        self.stream = stream
        self.dtype = dtype
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.rows = 0
        largest = npy_header(dtype, (2**63 - 1,) * ndim, None)
        self.header = max(self.HEADER, len(largest))
        stream.write(b"\0" * self.header)

    def write(self, rows: np.ndarray) -> None:
        self.stream.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += rows.shape[0]

    def finish(self, leading_shape: tuple[int, ...] | None) -> None:
        shape = (leading_shape if leading_shape is not None else (self.rows,)) + self.shape
        self.stream.seek(0)
        self.stream.write(npy_header(self.dtype, shape, self.header))
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()

    def commit(self) -> None:
        commit(self.tmp, self.target)

    def abort(self) -> None:
        self.stream.close()
        unlink_quietly(self.tmp)


class _ParquetWriter:
    """A Parquet file of one column per output value, named "0", "1", ... (what pandas names
    the columns of `pd.DataFrame(array)`, as text), one row group per chunk, written into a
    temporary file renamed at the end. A sample of several axes is one row of its values."""

    def __init__(self, target: Path, tmp: Path, fd: int, port: Port) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.target = target
        self.tmp = tmp
        self.stream = os.fdopen(fd, "wb")
        kind = pa.from_numpy_dtype(port.dtype)
        self.schema = pa.schema([(str(i), kind) for i in range(port.width)])
        try:
            self.writer = pq.ParquetWriter(self.stream, self.schema)
        except BaseException:
            self.stream.close()
            raise

    def write(self, rows: np.ndarray) -> None:
        import pyarrow as pa

        columns = np.ascontiguousarray(rows.reshape(rows.shape[0], -1).T)
        self.writer.write_table(pa.Table.from_arrays(list(columns), schema=self.schema))

    def finish(self, leading_shape: tuple[int, ...] | None) -> None:
        self.writer.close()
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()

    def commit(self) -> None:
        commit(self.tmp, self.target)

    def abort(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away
            pass
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


def _temporary(target: Path, path: str) -> tuple[int, Path]:
    try:
        return temporary_for(target)
    except OSError as exc:
        raise DataError(f"cannot write the output: {exc.strerror}", file=path) from None


def open_output(
    path: str | None,
    fmt: str,
    port: Port | ir.Model,
    stdout: TextIO,
    inputs: Inputs = (),
    ndim: int = 2,
) -> Writer:
    """A writer for `path` (None or "-": stdout) in `fmt` for one output of a model (`port`,
    or a model's only output), for results of `ndim` dimensions (the batch axes and the
    sample's); `path` may not be one of the command's `inputs`."""
    port = _port(port, output_ports)
    if path is None or path == "-":
        if fmt in ("npy", "npz"):
            raise UsageError(f"a .{fmt} output must be a file: give --output FILE.{fmt}")
        return _TextWriter(fmt, stdout, None, None)
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"the output {path!r} is a folder; give a file name")
    refuse_inputs([target], inputs)
    fd, tmp = _temporary(target, path)
    if fmt == "npy":
        stream = os.fdopen(fd, "w+b")
        return _NpyWriter(target, tmp, stream, port.dtype, port.shape, ndim)
    if fmt == "parquet":
        try:
            return _ParquetWriter(target, tmp, fd, port)
        except BaseException:
            unlink_quietly(tmp)
            raise
    text = io.TextIOWrapper(os.fdopen(fd, "wb"), encoding="utf-8", newline="\n")
    return _TextWriter(fmt, text, target, tmp)


class _NpzWriter:
    """One .npz holding an array per output, named by the ports' keys (`output0`, ...): each
    is written as a .npy beside the target as the rows come, then they are stored (as
    `np.savez` stores them, uncompressed) in the archive, itself written to a temporary file
    and renamed into place."""

    def __init__(self, target: Path, path: str, ports: list[Port], ndim: int) -> None:
        self.target = target
        self.path = path
        self.keys = [port.key or f"output{i}" for i, port in enumerate(ports)]
        self.members: list[_NpyWriter] = []
        self.tmp: Path | None = None
        try:
            for port in ports:
                fd, tmp = _temporary(target, path)
                stream = os.fdopen(fd, "w+b")
                self.members.append(_NpyWriter(target, tmp, stream, port.dtype, port.shape, ndim))
        except BaseException:
            self.abort()
            raise

    def write_all(self, outputs: list[np.ndarray]) -> None:
        for member, rows in zip(self.members, outputs, strict=True):
            member.write(rows)

    def finish(self, leading_shape: tuple[int, ...] | None) -> None:
        for member in self.members:
            member.finish(leading_shape)
        fd, self.tmp = _temporary(self.target, self.path)
        with os.fdopen(fd, "w+b") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                for key, member in zip(self.keys, self.members, strict=True):
                    archive.write(member.tmp, arcname=f"{key}.npy")
            f.flush()
            os.fsync(f.fileno())
        for member in self.members:
            unlink_quietly(member.tmp)

    def commit(self) -> None:
        assert self.tmp is not None
        commit(self.tmp, self.target)

    def abort(self) -> None:
        for member in self.members:
            member.abort()
        if self.tmp is not None:
            unlink_quietly(self.tmp)


class Outputs:
    """Where every output of a run goes: one writer per output, or one .npz for all of them.
    Nothing is renamed into place until every output is complete."""

    def __init__(self, writers: list[Writer] | None = None, npz: _NpzWriter | None = None):
        self.writers = writers or []
        self.npz = npz

    def write(self, outputs: list[np.ndarray]) -> None:
        if self.npz is not None:
            self.npz.write_all(outputs)
            return
        for writer, rows in zip(self.writers, outputs, strict=True):
            writer.write(rows)

    def close(self, leading_shape: tuple[int, ...] | None) -> None:
        parts: list[Writer | _NpzWriter] = [self.npz] if self.npz is not None else [*self.writers]
        for part in parts:
            part.finish(leading_shape)
        for part in parts:
            part.commit()

    def abort(self) -> None:
        if self.npz is not None:
            self.npz.abort()
        for writer in self.writers:
            writer.abort()


def open_outputs(
    places: list[tuple[str | None, str]],
    model: ir.Model | list[Port],
    stdout: TextIO,
    inputs: Inputs = (),
    batch_ndim: int = 1,
) -> Outputs:
    """The writers for `model`'s outputs (or for these output ports) going to `places` (from
    `assign_outputs`), for results of `batch_ndim` batch axes; no path may be one of the
    command's `inputs`."""
    ports = output_ports(model) if isinstance(model, ir.Model) else model
    if len(places) == 1 and places[0][1] == "npz":
        path = places[0][0]
        assert path is not None
        target = Path(path)
        if target.is_dir():
            raise UsageError(f"the output {path!r} is a folder; give a file name")
        refuse_inputs([target], inputs)
        ndim = batch_ndim + max(len(port.shape) for port in ports)
        return Outputs(npz=_NpzWriter(target, path, ports, ndim))
    refuse_inputs([Path(path) for path, _ in places if path not in (None, "-")], inputs)
    writers: list[Writer] = []
    try:
        for (path, fmt), port in zip(places, ports, strict=True):
            ndim = batch_ndim + len(port.shape)
            writers.append(open_output(path, fmt, port, stdout, inputs, ndim))
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    return Outputs(writers)


# --------------------------------------------------------------------------- running


def run(
    net: Any,
    source: Source | list[Source],
    writer: Writer | Outputs,
    progress: Progress,
    ports: list[Port] | None = None,
) -> int:
    """Feed every batch of `source` (one per input of the model, read in step, for `ports`)
    through `net` into `writer` (one per output, or an `Outputs`); return the number of rows.
    Each input's rows are given the per-sample shape of its port. On any error the partial
    outputs are removed and the error passes on."""
    sources = source if isinstance(source, list) else [source]
    outputs = writer if isinstance(writer, Outputs) else Outputs([writer])
    shapes = [port.shape for port in ports] if ports is not None else [None] * len(sources)
    first = sources[0]
    batches: Iterator[list[np.ndarray]]
    if len(sources) == 1:
        batches = ([batch] for batch in first.batches())
    else:
        assert ports is not None
        batches = together(sources, ports)
    rows = 0
    try:
        progress.update(0, 0, force=True)
        for batch in batches:
            args = [
                b if shape is None or b.shape[1:] == shape else b.reshape(b.shape[0], *shape)
                for b, shape in zip(batch, shapes, strict=True)
            ]
            result = net(*args)
            results = list(result) if isinstance(result, tuple) else [result]
            outputs.write([np.asarray(r) for r in results])
            rows += batch[0].shape[0]
            progress.update(first.done(), rows)
        progress.finish(first.total or first.done(), rows)
        leading = next((s.leading_shape for s in sources if s.leading_shape is not None), None)
        outputs.close(leading)
    except BaseException:
        progress.abandon()
        outputs.abort()
        raise
    return rows


# --------------------------------------------------------------------------- a folder of files
#
# `layerc run FILE --input 'data/*.npy' --output out/` runs every input file through the model
# and writes one output file per input, `out/<input stem>.<format>`, each atomically; with
# `--dask` the files are spread over a Dask cluster (layerc/tools/run_dask.py), else run here,
# one after another. A file that fails is reported by name and the others go on.
#
# An output is complete when its completion record says so: `out/.layerc-run/<output>.json`,
# written (atomically) just after the output is renamed into place, holds the size and
# modification time of the input it was made from and of the output as written, and a
# fingerprint of the run's recipe (the generated model's code and weights, the model, the
# formats and the CSV delimiter). A rerun skips an output whose record matches all of these as
# they are now; any other is made again: a new or edited input, a changed model or option, an
# output deleted or changed since, or one whose record was never written (the run stopped
# between the two renames).

RECORDS = ".layerc-run"  # the folder of completion records, inside the output folder
DATA_SUFFIXES = tuple(_EXTENSIONS)


@dataclass(frozen=True)
class FileJob:
    """One input file of a folder run and where its results go. Paths are absolute, as every
    worker opens them; `shown` and `output_shown` are how messages name them (as the user's
    `--input` and `--output` spell them)."""

    input: str
    shown: str
    input_format: str
    output: str
    output_shown: str
    output_format: str

    @property
    def record(self) -> Path:
        output = Path(self.output)
        return output.parent / RECORDS / f"{output.name}.json"


@dataclass(frozen=True)
class Recipe:
    """What every file of a folder run shares: the model's ports, the CSV delimiter, the
    files the model was compiled from (never written over) and the fingerprint that
    completion records are checked against."""

    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    delimiter: str
    sources: tuple[tuple[str, str], ...]  # (absolute path, what it is)
    fingerprint: str


@dataclass(frozen=True)
class FileResult:
    """How one file of a folder run went: the rows written, or the problem (a `DataError`'s
    message and place, in the file it names: the input, the output, or another)."""

    job: FileJob
    rows: int = 0
    message: str | None = None
    file: str | None = None
    line: int | None = None
    col: int | None = None

    @property
    def failed(self) -> bool:
        return self.message is not None

    def error(self) -> DataError:
        """The problem as the CLI prints it: `data/b.csv:3:3: 'x' is not a number`."""
        assert self.message is not None
        file = self.file or self.job.shown
        if self.col is not None and self.line is not None:
            return DataError(self.message, Loc(file, self.line, self.col))
        return DataError(self.message, file=file, line=self.line)


def is_folder_run(inputs: list[str], outputs: list[str] | None, dask: str | None) -> bool:
    """Whether the command runs a folder of files: `--dask`, an `--output` that is a folder
    (an existing one, or a path ending in a separator), or an `--input` that is a glob pattern
    (and not the name of a file). A folder given as the `--input` of a one-file run is refused
    as any input that is not a regular file is."""
    if dask is not None:
        return True
    if any(_is_glob(spec) and not os.path.lexists(spec) for spec in inputs):
        return True
    return outputs is not None and len(outputs) == 1 and _names_folder(outputs[0])


def _is_glob(spec: str) -> bool:
    return any(char in spec for char in "*?[")


def _names_folder(path: str) -> bool:
    return path.endswith(("/", os.sep)) or os.path.isdir(path)


def expand_inputs(specs: list[str]) -> list[str]:
    """The input files of a folder run, as the user's `--input` values name them, in order:
    each value a glob pattern (`data/*.npy`, `data/**/*.csv`: the regular files it matches,
    sorted), a folder (its data files, by extension: .npy, .npz, .csv, .jsonl, .ndjson and
    .parquet; not those whose name starts with a dot), or a file. The same file named twice is
    run once. A pattern that matches nothing and a folder without data files are usage
    errors."""
    import glob

    found: list[str] = []
    for spec in specs:
        if spec == "-":
            raise UsageError("a folder run reads files: --input - (stdin) is for one input")
        if _is_glob(spec):
            matches = [
                path for path in sorted(glob.glob(spec, recursive=True)) if os.path.isfile(path)
            ]
            if not matches:
                raise UsageError(f"--input {spec!r} matches no files")
            found += matches
        elif os.path.isdir(spec):
            with os.scandir(spec) as entries:
                names = sorted(
                    entry.name
                    for entry in entries
                    if not entry.name.startswith(".")
                    and Path(entry.name).suffix.lower() in _EXTENSIONS
                    and entry.is_file()
                )
            if not names:
                known = ", ".join(DATA_SUFFIXES)
                raise UsageError(f"--input {spec!r} is a folder without data files ({known})")
            found += [os.path.join(spec, name) for name in names]
        else:
            found.append(spec)
    seen: set[str] = set()
    unique = []
    for path in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def plan_folder(
    files: list[str],
    output: str,
    model: ir.Model,
    input_format: str | None,
    output_format: str | None,
) -> list[FileJob]:
    """One job per input file: its format (`input_format`, else its extension) and its output,
    `OUTPUT/<input stem>.<format>` in `output_format`, else the input's format (an .npz for a
    model of several outputs, which an .npz holds together). A model of several inputs reads
    one .npz per file, holding an array per input. Two inputs whose outputs would have the same
    name are a usage error."""
    several_in = len(model.in_shapes) > 1
    several_out = len(model.out_shapes) > 1
    if several_out and output_format not in (None, "npz"):
        raise UsageError(
            f"model {model.name} gives {len(model.out_shapes)} outputs: a folder run writes "
            "them together, one .npz per input file (--output-format npz)"
        )
    jobs: list[FileJob] = []
    made: dict[str, str] = {}
    for path in files:
        fmt = format_of(path, input_format, INPUT_FORMATS, "input")
        if several_in and fmt != "npz":
            names = ", ".join(p.key or "" for p in input_ports(model))
            raise UsageError(
                f"model {model.name} takes {len(model.in_shapes)} inputs ({names}): a folder run "
                f"reads one .npz per file, holding an array for each, and {path!r} is {fmt}"
            )
        out_fmt = "npz" if several_out else (output_format or fmt)
        name = f"{Path(path).stem}.{out_fmt}"
        target = os.path.join(output, name)
        absolute = os.path.abspath(target)
        if absolute in made:
            raise UsageError(
                f"{made[absolute]} and {path} would both be written to {target}: give inputs of "
                "distinct names (the output is named after the input, without its extension)"
            )
        made[absolute] = path
        jobs.append(FileJob(os.path.abspath(path), path, fmt, absolute, target, out_fmt))
    return jobs


def recipe_for(model: ir.Model, module_key: str, delimiter: str, sources: Inputs) -> Recipe:
    """The recipe of a folder run of `model`, whose generated module has the content hash
    `module_key`: two runs that would compute the same outputs from the same inputs have the
    same fingerprint (a job's own formats are added to it, see `fingerprint`)."""
    from .. import __version__

    ports = input_ports(model)
    text = json.dumps([__version__, module_key, model.name, delimiter])
    return Recipe(
        tuple(ports),
        tuple(output_ports(model)),
        delimiter,
        tuple((os.path.abspath(path), what) for path, what in sources),
        hashlib.sha256(text.encode("utf-8")).hexdigest()[:32],
    )


def fingerprint(recipe: Recipe, job: FileJob) -> str:
    """What a job's completion record must say to skip it: the recipe's fingerprint and the
    job's input and output formats."""
    return f"{recipe.fingerprint}:{job.input_format}:{job.output_format}"


def _stamp(path: str) -> list[int] | None:
    """A file's size and modification time (ns), or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def is_complete(job: FileJob, recipe: Recipe) -> bool:
    """Whether `job`'s output is complete: its completion record matches the recipe, the input
    as it is now, and the output as it is now (see the comment at the top of this section)."""
    try:
        record = json.loads(job.record.read_bytes())
    except (OSError, ValueError):
        return False
    stamp = _stamp(job.output)
    return (
        isinstance(record, dict)
        and record.get("recipe") == fingerprint(recipe, job)
        and record.get("input") == job.input
        and record.get("input_stamp") == _stamp(job.input)
        and stamp is not None
        and record.get("output_stamp") == stamp
    )


def run_file(net: Any, recipe: Recipe, job: FileJob) -> FileResult:
    """Run one input file of a folder run through `net` into its output, renamed into place
    when complete, then write its completion record: the task each worker runs. A mistake in
    the data, or a file that cannot be read or written, is returned, not raised."""
    stamp = _stamp(job.input)  # before reading: an input changed meanwhile is redone next time
    inputs: list[tuple[Path, str]] = [(Path(job.input), "the input data file")]
    inputs += [(Path(path), what) for path, what in recipe.sources]
    ports = list(recipe.inputs)
    progress = Progress(io.StringIO(), None, "", enabled=False)
    try:
        if job.input_format == "npz":
            sources = open_npz(job.input, ports)
        else:
            sources = [
                open_input(job.input, job.input_format, ports[0], io.BytesIO(), recipe.delimiter)
            ]
        leading = next((s.leading_shape for s in sources if s.leading_shape is not None), None)
        batch_ndim = 1 if leading is None else len(leading)
        places: list[tuple[str | None, str]]
        if len(recipe.outputs) > 1 or job.output_format == "npz":
            places = [(job.output, "npz")]
        else:
            places = [(job.output, job.output_format)]
        writer = open_outputs(places, list(recipe.outputs), io.StringIO(), inputs, batch_ndim)
        rows = run(net, sources, writer, progress, ports)
        record = {
            "input": job.input,
            "input_stamp": stamp,
            "output_stamp": _stamp(job.output),
            "recipe": fingerprint(recipe, job),
            "rows": rows,
        }
        write_atomically([(job.record, json.dumps(record).encode("utf-8"))])
    except LayercError as exc:
        return _failure(job, exc.message, exc.file, exc.loc, getattr(exc, "line", None))
    except WriteFailed as exc:
        return _failure(job, f"cannot write the file: {exc.reason}", str(exc.target), None, None)
    except OSError as exc:
        return _failure(job, exc.strerror or str(exc), exc.filename, None, None)
    return FileResult(job, rows)


def _failure(
    job: FileJob, message: str, file: str | None, loc: Loc | None, line: int | None
) -> FileResult:
    """A failed job's result, naming the file as the user does."""
    shown = {job.input: job.shown, job.output: job.output_shown}
    file = loc.file if loc is not None else file
    file = shown.get(os.path.abspath(file), file) if file else job.shown
    if loc is not None:
        return FileResult(job, 0, message, file, loc.line, loc.col)
    return FileResult(job, 0, message, file, line)


def run_here(
    net: Any, recipe: Recipe, jobs: list[FileJob], report: Callable[[FileResult], None]
) -> None:
    """Run `jobs` one after another in this process, reporting each result as it comes."""
    for job in jobs:
        try:
            result = run_file(net, recipe, job)
        except Exception as exc:  # noqa: BLE001 - reported by the file's name; the others go on
            result = unexpected(job, exc)
        report(result)


def unexpected(job: FileJob, exc: BaseException) -> FileResult:
    """The result of a job that raised instead of returning (out of memory, or a bug)."""
    if isinstance(exc, MemoryError):
        detail = str(exc).strip().splitlines()
        return FileResult(job, 0, "out of memory" + (f": {detail[0]}" if detail else ""))
    return FileResult(job, 0, f"{type(exc).__name__}: {exc}")
