"""Where weights come from: literals in the source, files (.npy, .npz, .safetensors) and seeded
initialisers. Literals come back as float64 arrays of values the model's dtype holds by the same
rule as files (`literal_array`); files are converted to the dtype the caller asks for, exactly
or with a reported error (see `convert_exact`); initialisers draw in float64. Every user mistake
is a `LayercError` at the location of the expression (for a literal, of the offending number).

Files are never unpickled and are read only when they are regular files; sizes declared inside
a file (npy headers, npz members, safetensors headers) are checked against the file and against
the expected shape (or the caller's `accept`) before any data is read.
"""

from __future__ import annotations

import difflib
import io
import json
import math
import os
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from . import binder
from . import syntax as S
from .errors import LayercError, Loc
from .files import open_regular

# --------------------------------------------------------------------------- literals


def literal_array(value: S.Value, what: str, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """A number or nested list literal as a float64 array whose every number the model's
    `dtype` holds as the source means it (see `_check_literal_numbers`); a ragged list, an
    entry that is not a number and a number that does not fit are errors at the entry."""
    if isinstance(value, S.Number):
        values = np.array([value.value])
        kinds = np.array([S.number_kind(value.text)], dtype=np.uint8)
        shape: tuple[int, ...] = ()
    elif isinstance(value, S.ListLit):
        scan = value.scan
        problem = scan.problem
        if problem is not None:
            loc = value.offset_loc(problem.offset)
            if problem.first_shape is None:
                raise LayercError(f"{what} must be a number or a list of numbers", loc)
            raise LayercError(
                f"ragged {what}: this entry has shape {_fmt_shape(problem.shape or ())} but the "
                f"first has shape {_fmt_shape(problem.first_shape)}",
                loc,
            )
        assert scan.shape is not None
        values, kinds, shape = scan.values, scan.kinds, scan.shape
    else:
        raise LayercError(f"{what} must be a number or a list of numbers", value.loc)
    _check_literal_numbers(value, values, kinds, shape, np.dtype(dtype), what)
    return values.reshape(shape)


def element_loc(value: S.Value | None, index: tuple[int, ...]) -> Loc | None:
    """Where element `index` of a literal stands in the source (so that an error about one
    number of a large literal points at that number), or None if `value` is no literal."""
    if isinstance(value, S.Number):
        return value.loc if index == () else None
    if not isinstance(value, S.ListLit):
        return None
    shape = value.scan.shape
    if (
        shape is None
        or len(index) != len(shape)
        or not all(0 <= i < n for i, n in zip(index, shape, strict=True))
    ):
        return None
    flat = int(np.ravel_multi_index(index, shape))
    return value.number_locs([flat]).get(flat)


def _numbers(value: S.Value, indices: np.ndarray) -> Iterator[tuple[int, str, Loc]]:
    """(index, text, location) of the numbers `indices` (increasing) of a literal."""
    if isinstance(value, S.Number):
        yield 0, value.text, value.loc
    else:
        assert isinstance(value, S.ListLit)
        for i, offset, text in value.numbers(int(i) for i in indices):
            yield i, text, value.offset_loc(offset)


# Integers at least this large round to infinity in float32 (the midpoint between its largest
# value and 2**128 rounds to the even one, 2**128).
_FLOAT32_OVERFLOW = 2**128 - 2**103


def _check_literal_numbers(
    value: S.Value,
    values: np.ndarray,
    kinds: np.ndarray,
    shape: tuple[int, ...],
    dtype: np.dtype,
    what: str,
) -> None:
    """Literals follow the rule for files (`convert_exact`), with the source text as the file:

    - an integer (digits only) must be exactly representable in `dtype`, as an int64 array's
      values must be: 16777217 is an error in a float32 model, as 2**53 + 1 is in float64;
    - a decimal (with a point or an exponent) is read as a float64 by Python's float() and
      rounded to nearest in `dtype`, as a float64 array is; one that overflows (1e400, or 1e39
      in float32) is an error rather than an infinity;
    - inf and nan are left to the model's allow_nonfinite.

    The first number in source order that breaks the rule is reported where it stands.
    Candidates are found with NumPy; only integers from 2**53 on, whose float64 may have been
    rounded, need their text again, read in one pass."""
    bits = _SIGNIFICAND_BITS[dtype]
    ints = kinds == S.INT
    decimals = kinds == S.DECIMAL
    with np.errstate(over="ignore", invalid="ignore"):
        magnitude = np.abs(values)
        narrowed = values.astype(dtype)
        wrong = decimals & np.isinf(narrowed)  # overflows dtype (or float64 already)
        # From 2**53 on, float64 may have rounded the integer: its text says.
        wrong |= ints & ~(magnitude < float(1 << 53))
        if bits < 53:
            wrong |= ints & (magnitude > float(1 << bits)) & (narrowed != values)
    candidates = np.flatnonzero(wrong)
    if candidates.size == 0:
        return
    for index, text, loc in _numbers(value, candidates):
        message = _literal_number_error(text, kinds[index], dtype)
        if message is not None:
            where = (
                what if not shape else f"{what}{[int(i) for i in np.unravel_index(index, shape)]}"
            )
            raise LayercError(f"{where} = {message}", loc)


def _literal_number_error(text: str, kind: int, dtype: np.dtype) -> str | None:
    """What is wrong with number `text` in a literal of a `dtype` model, or None."""
    number = float(text)  # inf beyond float64's range, where int() would be slow or refuse
    if kind == S.DECIMAL:
        shown = repr(number) if math.isfinite(number) else text
        return f"{shown} overflows {dtype.name}"
    if not math.isfinite(number):
        return f"{text} overflows {dtype.name}"
    exact = _exact_integer(text)
    if dtype == np.float32 and abs(exact) >= _FLOAT32_OVERFLOW:
        return f"{text} overflows {dtype.name}"
    nearest = _nearest(exact, dtype)
    if nearest == exact:
        return None
    hint = ", or use dtype=float64" if dtype == np.float32 else ""
    return (
        f"{text} is not exactly representable in {dtype.name} (the nearest {dtype.name} is "
        f"{nearest}); write the value you mean{hint}"
    )


def _exact_integer(text: str) -> int:
    """An integer literal's value (leading zeros dropped, so no digit limit applies to them)."""
    body = text.lstrip("+-").lstrip("0") or "0"
    return -int(body) if text.startswith("-") else int(body)


def _nearest(n: int, dtype: np.dtype) -> int:
    """The value of `dtype` nearest to the integer `n` (ties to even), as an integer."""
    guess = float(n)  # correctly rounded to float64
    if dtype == np.float64:
        return int(guess)
    # float32 from float64 may round twice; look at the neighbours and pick by exact distance.
    with np.errstate(over="ignore"):
        y = np.float32(guess)
        up, down = np.nextafter(y, np.float32(np.inf)), np.nextafter(y, np.float32(-np.inf))
    neighbours = [y, up, down]
    finite = [c for c in neighbours if np.isfinite(c)]

    def key(c: np.float32) -> tuple[int, int]:
        return abs(int(c) - n), int(np.array(c).view(np.uint32)) & 1

    return int(min(finite, key=key))


def _fmt_shape(shape: tuple[int, ...]) -> str:
    if not shape:
        return "()"
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


fmt_shape = _fmt_shape


# --------------------------------------------------------------------------- dtype conversion


class ConversionError(ValueError):
    """A value cannot be converted to the target dtype without a loss layerc does not allow."""


# Bits of significand (with the implicit bit) of each target dtype: integers up to 2**p in
# magnitude are exact, larger ones only when their low bits are zero.
_SIGNIFICAND_BITS = {np.dtype(np.float32): 24, np.dtype(np.float64): 53}


def convert_exact(array: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """`array` as `dtype` (float32 or float64), C-contiguous; raise ConversionError on a loss.

    - bool, and floats no wider than the target (float16, bfloat16 read as float32, float32):
      exact.
    - integers: exact when every value is representable in the target (|v| <= 2**24 always is
      for float32, 2**53 for float64); the first value that is not is reported.
    - float64 (or longer) into float32: rounded to nearest, as literals are and as torch's
      `load_state_dict` does; a finite value too large for float32 is reported.
    - anything else (complex, strings, dates, records, Python objects): reported.
    """
    dtype = np.dtype(dtype)
    kind = array.dtype.kind
    if kind == "b" or (kind == "f" and array.dtype.itemsize <= dtype.itemsize):
        return np.ascontiguousarray(array, dtype=dtype)
    if kind in "iu":
        _check_integers_exact(array, dtype, what)
        return np.ascontiguousarray(array, dtype=dtype)
    if kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):  # "invalid": NaN payloads narrowed
            out = np.ascontiguousarray(array, dtype=dtype)
        overflow = np.isinf(out) & np.isfinite(array)
        if overflow.any():
            index = _first_index(overflow)
            raise ConversionError(
                f"{what}{list(index)} = {float(array[index])!r} is too large for {dtype.name}"
            )
        return out
    raise ConversionError(
        f"{what} has dtype {_dtype_name(array.dtype)}, not a real number type; save it as "
        "float32 or float64"
    )


def _check_integers_exact(array: np.ndarray, dtype: np.dtype, what: str) -> None:
    bits = _SIGNIFICAND_BITS[dtype]
    if array.dtype.itemsize * 8 - (array.dtype.kind == "i") <= bits or array.size == 0:
        return
    limit = 1 << bits
    # Compare in the array's own integer type, so nothing is rounded before the test.
    big = array > limit
    if array.dtype.kind == "i":
        big |= array < -limit
    for index in np.argwhere(big):
        where = tuple(int(i) for i in index)
        value = int(array[where])
        if int(dtype.type(value)) != value:
            raise ConversionError(
                f"{what}{list(where)} = {value} ({array.dtype.name}) is not exactly representable "
                f"in {dtype.name}; round it yourself or use a float64 model"
            )


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _dtype_name(dtype: np.dtype) -> str:
    return dtype.name if dtype.names is None and dtype.subdtype is None else str(dtype)


# --------------------------------------------------------------------------- files

MAX_FILE_BYTES = 1 << 34  # 16 GiB: more than any model layerc is for
MAX_NPY_HEADER = 10_000  # numpy's own limit for headers it parses without allow_pickle
MAX_KEYS_SHOWN = 20
SUFFIXES = (".npy", ".npz", ".safetensors")


def resolve_path(path: str, base_dir: Path, loc: Loc) -> Path:
    """A path relative to the .lyr file's folder that exists (`files.open_regular` checks it is a
    readable regular file when it is opened)."""
    if "\0" in path:
        raise LayercError("file path contains a NUL character", loc)
    full = base_dir / path
    try:
        os.stat(full)  # a stat never blocks, whatever the file is
    except FileNotFoundError:
        raise LayercError(f"no such file: {path!r} (looked in {base_dir or '.'})", loc) from None
    except OSError as exc:  # a name too long, a folder that cannot be searched
        raise LayercError(f"cannot read {path!r}: {exc.strerror}", loc) from None
    return full


@dataclass(frozen=True)
class _Source:
    """What is being loaded, for messages: `'w.npz'['fc.weight']`."""

    path: str
    key: str | None
    loc: Loc
    shape: tuple[int, ...] | None = None  # the shape the array must have, if known
    accept: Callable[[tuple[int, ...]], None] | None = None  # refuses other shapes by raising

    @property
    def what(self) -> str:
        return repr(self.path) if self.key is None else f"{self.path!r}[{self.key!r}]"

    def error(self, message: str) -> LayercError:
        return LayercError(message, self.loc)


def load_array(
    path: str,
    key: str | None,
    base_dir: Path,
    loc: Loc,
    *,
    dtype: np.dtype | type = np.float64,
    shape: tuple[int, ...] | None = None,
    accept: Callable[[tuple[int, ...]], None] | None = None,
) -> np.ndarray:
    """One array from .npy (no key), .npz or .safetensors (key required), as `dtype`.

    The shape the file declares is checked before its data is read (and, in a .npz, before
    the member is decompressed): it must be `shape` when one is given, and `accept`, when
    given, is called with it and refuses it by raising. Conversion follows `convert_exact`."""
    full = resolve_path(path, base_dir, loc)
    # Opened first: a device or FIFO is refused whatever its name, before anything else.
    fd = open_regular(full, path, what="a weights file", max_bytes=MAX_FILE_BYTES, loc=loc)
    try:
        return _load_open(fd, full, path, key, loc, dtype, shape, accept)
    finally:
        os.close(fd)


def _load_open(
    fd: int,
    full: Path,
    path: str,
    key: str | None,
    loc: Loc,
    dtype: np.dtype | type,
    shape: tuple[int, ...] | None,
    accept: Callable[[tuple[int, ...]], None] | None,
) -> np.ndarray:
    """`load_array` once the file is open as `fd`."""
    suffix = full.suffix.lower()
    src = _Source(path, key, loc, shape, accept)
    if suffix not in SUFFIXES:
        raise LayercError(
            f"cannot load {path!r}: the file must end in .npy, .npz or .safetensors (layerc "
            "never reads pickled files such as .pt, .pth, .pkl or .bin)",
            loc,
        )
    if suffix == ".npy" and key is not None:
        raise LayercError(f"{path!r} is a .npy file and holds one array: give no key", loc)
    if suffix != ".npy" and key is None:
        raise LayercError(f'{path!r} holds several arrays: name one, load({path!r}, "key")', loc)
    try:
        if suffix == ".npy":
            with os.fdopen(os.dup(fd), "rb") as f:
                array = _read_npy(f, os.fstat(fd).st_size, src)
        elif suffix == ".npz":
            array = _load_npz(fd, src)
        else:
            array = _load_safetensors(fd, full, src)
    except OSError as exc:
        raise LayercError(f"cannot read {path!r}: {exc.strerror or exc}", loc) from None
    try:
        return convert_exact(array, np.dtype(dtype), src.what)
    except ConversionError as exc:
        raise LayercError(str(exc), loc) from None


def _check_declared_shape(declared: tuple[int, ...], src: _Source) -> None:
    """The checks a file's declared shape must pass before any of its data is read."""
    if src.shape is not None and tuple(declared) != tuple(src.shape):
        raise src.error(
            f"{src.what} has shape {_fmt_shape(tuple(declared))} but must have shape "
            f"{_fmt_shape(src.shape)}"
        )
    if src.accept is not None:
        src.accept(tuple(declared))


def _read_npy(f: IO[bytes], size: int, src: _Source) -> np.ndarray:
    """Read a .npy stream of `size` bytes; its header is checked (no objects, sizes that fit the
    file, the shape `src` asks for) before the data is read."""
    declared, fortran, dtype = _read_npy_header(f, src)
    if dtype.hasobject:
        raise src.error(
            f"{src.what} holds Python objects (a pickled array), which layerc never unpickles; "
            "save a numeric array"
        )
    if dtype.kind not in "biuf" or dtype.names is not None or dtype.subdtype is not None:
        raise src.error(
            f"{src.what} has dtype {_dtype_name(dtype)}, not a real number type; save it as "
            "float32 or float64"
        )
    if any(d < 0 for d in declared):
        raise src.error(f"{src.what} is not a valid .npy file: negative shape {declared}")
    _check_declared_shape(declared, src)
    count = math.prod(declared)
    expected = count * dtype.itemsize
    remaining = size - f.tell()
    if remaining < expected:
        raise src.error(
            f"{src.what} is truncated: its header declares shape {_fmt_shape(declared)} of "
            f"{_dtype_name(dtype)} ({expected} bytes) but only {remaining} bytes follow"
        )
    data = f.read(expected)
    if len(data) != expected:
        raise src.error(f"{src.what} is truncated: {len(data)} of {expected} data bytes")
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(declared, order="F" if fortran else "C")


def _read_npy_header(f: IO[bytes], src: _Source) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from a .npy header, reading at most the header's bytes."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            length_format = "<H"
        elif version in ((2, 0), (3, 0)):
            length_format = "<I"
        else:
            raise ValueError(f"unsupported .npy version {version[0]}.{version[1]}")
        raw_length = f.read(struct.calcsize(length_format))
        if len(raw_length) != struct.calcsize(length_format):
            raise ValueError("the file ends inside the header")
        (length,) = struct.unpack(length_format, raw_length)
        if length > MAX_NPY_HEADER:
            raise ValueError(f"its header is {length} bytes long, more than layerc reads")
        header = f.read(length)
        if len(header) != length:
            raise ValueError("the file ends inside the header")
        # numpy parses the header with ast.literal_eval, which evaluates no code. (Version 3.0
        # differs from 2.0 only in allowing UTF-8 field names, which records would need.)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        prefix = raw_length + header
        shape, fortran, dtype = reader(io.BytesIO(prefix))
    except LayercError:
        raise
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, OverflowError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise src.error(f"{src.what} is not a valid .npy file: {reason}") from None
    return tuple(shape), bool(fortran), dtype


def _load_npz(fd: int, src: _Source) -> np.ndarray:
    assert src.key is not None
    f = os.fdopen(os.dup(fd), "rb")
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        f.close()
        raise src.error(f"{src.path!r} is not a valid .npz file: {exc}") from None
    with f, archive:
        members: dict[str, str] = {}
        for name in archive.namelist():
            members.setdefault(name[:-4] if name.endswith(".npy") else name, name)
        if src.key not in members:
            raise src.error(_missing_key(src, "array", list(members)))
        info = archive.getinfo(members[src.key])
        if info.is_dir() or info.file_size > MAX_FILE_BYTES:
            raise src.error(f"{src.what} is not an array member ({info.file_size} bytes)")
        try:
            with archive.open(info) as member:
                return _read_npy(member, info.file_size, src)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise src.error(f"{src.path!r}: cannot read member {src.key!r}: {exc}") from None


def _missing_key(src: _Source, noun: str, keys: list[str]) -> str:
    assert src.key is not None
    keys = sorted(keys)
    if not keys:
        return f"{src.path!r} has no {noun} {src.key!r}; it holds none"
    shown = ", ".join(map(repr, keys[:MAX_KEYS_SHOWN]))
    more = f" and {len(keys) - MAX_KEYS_SHOWN} more" if len(keys) > MAX_KEYS_SHOWN else ""
    close = difflib.get_close_matches(src.key, keys, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{src.path!r} has no {noun} {src.key!r}{hint} (it has: {shown}{more})"


# safetensors dtype names -> NumPy dtypes; BF16 is handled apart (see _read_bfloat16).
_SAFETENSORS_DTYPES = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "U32": np.uint32,
    "I32": np.int32,
    "U64": np.uint64,
    "I64": np.int64,
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
}


def _load_safetensors(fd: int, full: Path, src: _Source) -> np.ndarray:
    """A tensor through the safetensors package, which validates the header (size, offsets that
    cover the file exactly) before anything is read. It opens by path, so it is given this
    process's descriptor path where there is one: the file read is the file that was checked."""
    assert src.key is not None
    from safetensors import safe_open

    by_fd = f"/proc/self/fd/{fd}"
    open_path = by_fd if os.path.exists(by_fd) else str(full)
    try:
        with safe_open(open_path, framework="numpy") as f:
            keys = list(f.keys())
            if src.key not in keys:
                raise src.error(_missing_key(src, "tensor", keys))
            info = f.get_slice(src.key)
            declared = tuple(int(d) for d in info.get_shape())
            dtype = str(info.get_dtype())
            _check_declared_shape(declared, src)
            if dtype == "BF16":
                return _read_bfloat16(fd, src, declared)
            if dtype not in _SAFETENSORS_DTYPES:
                raise src.error(
                    f"{src.what} has dtype {dtype}, which layerc does not read; save it as "
                    "float32, float16 or bfloat16"
                )
            return np.asarray(f.get_tensor(src.key))
    except LayercError:
        raise
    except Exception as exc:  # safetensors raises its own error types for malformed files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise src.error(f"{src.path!r} is not a valid .safetensors file: {reason}") from None


def _read_bfloat16(fd: int, src: _Source, shape: tuple[int, ...]) -> np.ndarray:
    """A BF16 tensor as float32, exactly: bfloat16 is the top half of a float32.

    NumPy has no bfloat16, so the raw bytes are read at the offsets of the header (already
    validated by safetensors) and widened by a 16-bit shift."""
    assert src.key is not None
    (length,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    header = json.loads(os.pread(fd, length, 8))
    begin, end = header[src.key]["data_offsets"]
    count = math.prod(shape)
    if end - begin != 2 * count:
        raise src.error(f"{src.what}: {end - begin} bytes for {count} bfloat16 values")
    raw = os.pread(fd, end - begin, 8 + length + begin)
    if len(raw) != end - begin:
        raise src.error(f"{src.what} is truncated")
    halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
    return (halves << 16).view(np.float32).reshape(shape)


# --------------------------------------------------------------------------- initialisers


_SEED = binder.Param("seed", binder.seed, type="int")


def _real(name: str, default: float, minimum: float | None = None) -> binder.Param:
    return binder.Param(name, binder.real(minimum=minimum, prefix=True), default, type="float")


# name -> parameters in positional order, with torch.nn.init's names and defaults.
INITIALISER_PARAMS: dict[str, tuple[binder.Param, ...]] = {
    "uniform": (_SEED,),
    "zeros": (),
    "normal": (_real("mean", 0.0), _real("std", 1.0, minimum=0), _SEED),
    "xavier_uniform": (_SEED, _real("gain", 1.0, minimum=0)),
    "kaiming_uniform": (
        _SEED,
        _real("a", 0.0),
        binder.Param("mode", binder.choice(("fan_in", "fan_out"), prefix=True), "fan_in"),
        binder.Param(
            "nonlinearity",
            binder.choice(("leaky_relu", "relu", "linear", "sigmoid", "tanh", "selu"), prefix=True),
            "leaky_relu",
        ),
    ),
}
INITIALISERS = tuple(INITIALISER_PARAMS)

Arrays = tuple[np.ndarray, "np.ndarray | None"]


def initialise(call: S.Call, out_features: int, in_features: int, bias: bool) -> Arrays:
    """The weight (out, in) and bias (out,) or None that `init = call` gives, as float64.

    Arguments are checked here and reported at their location. Seeded initialisers draw from
    NumPy's PCG64 seeded with `seed`: the weight first, then the bias."""
    if call.func not in INITIALISER_PARAMS:
        close = difflib.get_close_matches(call.func, list(INITIALISERS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise LayercError(
            f"unknown initialiser {call.func!r}{hint} (initialisers: {', '.join(INITIALISERS)})",
            call.loc,
        )
    func = f"{call.func}()"
    args = binder.bind(
        func, INITIALISER_PARAMS[call.func], call.args, call.loc, missing_hint=_example(call.func)
    )
    if call.func == "zeros":
        return np.zeros((out_features, in_features)), (np.zeros(out_features) if bias else None)
    seed = args["seed"]
    assert isinstance(seed, int)
    if call.func == "uniform":
        return init_uniform(seed, out_features, in_features, bias)
    rng = np.random.Generator(np.random.PCG64(seed))
    shape = (out_features, in_features)
    if call.func == "normal":
        mean, std = float(args["mean"]), float(args["std"])  # type: ignore[arg-type]
        weight = rng.normal(mean, std, size=shape)
    elif call.func == "xavier_uniform":
        bound = xavier_bound(in_features, out_features, float(args["gain"]))  # type: ignore[arg-type]
        weight = rng.uniform(-bound, bound, size=shape)
    else:
        fan = in_features if args["mode"] == "fan_in" else out_features
        bound = kaiming_bound(fan, float(args["a"]), str(args["nonlinearity"]))  # type: ignore[arg-type]
        weight = rng.uniform(-bound, bound, size=shape)
    return weight, _default_bias(rng, in_features, out_features) if bias else None


def _example(func: str) -> Callable[[binder.Param], str]:
    """The hint for a missing initialiser argument: `, e.g. normal(seed=0)`."""

    def hint(p: binder.Param) -> str:
        return f", e.g. {func}({p.name}={'0' if p.name == 'seed' else '...'})"

    return hint


def uniform_bound(in_features: int) -> float:
    """torch.nn.Linear's default bound for weight and bias: 1/sqrt(fan_in)."""
    return 1.0 / math.sqrt(in_features)


def xavier_bound(fan_in: int, fan_out: int, gain: float = 1.0) -> float:
    """torch.nn.init.xavier_uniform_: gain * sqrt(6 / (fan_in + fan_out)), computed as torch
    does (sqrt(3) * gain * sqrt(2 / (fan_in + fan_out)))."""
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return math.sqrt(3.0) * std


def calculate_gain(nonlinearity: str, a: float) -> float:
    """torch.nn.init.calculate_gain for the nonlinearities kaiming_uniform accepts."""
    if nonlinearity in ("linear", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "selu":
        return 3.0 / 4
    assert nonlinearity == "leaky_relu", nonlinearity
    return math.sqrt(2.0 / (1 + a**2))


def kaiming_bound(fan: int, a: float = 0.0, nonlinearity: str = "leaky_relu") -> float:
    """torch.nn.init.kaiming_uniform_: sqrt(3) * gain / sqrt(fan); with the defaults (a=0,
    leaky_relu) the gain is sqrt(2), so the bound is sqrt(6 / fan_in)."""
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return math.sqrt(3.0) * std


def _default_bias(rng: np.random.Generator, in_features: int, out_features: int) -> np.ndarray:
    """torch.nn.Linear's bias initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)): what a torch
    Linear's bias holds when only its weight is re-initialised with torch.nn.init."""
    bound = uniform_bound(in_features)
    return rng.uniform(-bound, bound, size=(out_features,))


def init_uniform(seed: int, out_features: int, in_features: int, bias: bool) -> Arrays:
    """PyTorch's default Linear initialisation, seeded: weight and bias ~ U(-k, k), k = 1/sqrt(in).

    (torch's kaiming_uniform_(a=sqrt(5)) on the weight gives exactly this bound.) The draws come
    from NumPy's PCG64 seeded with `seed`, weight first, then bias, so the same source always
    gives the same weights on every machine.
    """
    bound = uniform_bound(in_features)
    rng = np.random.Generator(np.random.PCG64(seed))
    weight = rng.uniform(-bound, bound, size=(out_features, in_features))
    b = rng.uniform(-bound, bound, size=(out_features,)) if bias else None
    return weight, b
