"""Reading an .onnx file for `layerc import`: the bytes of the model, the bytes of its external
data, and an upgrade of an old operator set, giving a self-contained, checked ModelProto.

External data. `torch.onnx.export` (the default, dynamo exporter) writes the weights beside the
model, `m.onnx` beside `m.onnx.data`: each large tensor has data_location EXTERNAL and the keys
`location` (a file, relative to the model's folder), `offset` and `length` (in bytes) and maybe
`checksum` (SHA-1, hex). The paths come from the model, so they are an attacker's when the model
is (CVE-2022-25882, CVE-2024-27318: onnx's own loader read files outside the model's folder).
So onnx's loader is never used, and every tensor's metadata is checked before any data is read:
the location is a relative path with no `..` component; the byte count is what the tensor's
type and dims hold (and `length`, when given, is that count); the counts of all tensors add up
to at most `W.MAX_FILE_BYTES`. Then each file is resolved with its symbolic links and must stay
inside the model's folder (the folder of the path the user gave), is opened through
`files.open_regular` (a regular file only: no FIFO, device or folder), checked again through
the descriptor on Linux (a link swapped between the check and the open is caught), and must be
long enough for every slice read from it; without a `length` a tensor's data runs to the end of
the file, as ONNX says, so the rest of the file must be exactly its bytes. The bytes go into the
tensor's raw_data and its external fields are cleared: the importer sees a self-contained model.
onnx's checker runs before anything is read, on a copy whose external tensors are empty (so it
never resolves a path itself, and a model of more than 2 GiB of weights can be checked); their
sizes are checked here instead.

Old operator sets. A model of a default-domain opset older than the importer reads
(`onnx_io.MIN_OPSET`) is upgraded with onnx's version converter. The converter needs fixed sizes
where ops broadcast (Gemm and Add before opset 7), so when it fails on a model whose graph inputs
or outputs have symbolic sizes (a batch axis `N`), it is run again on a copy with those sizes set
to a placeholder, and the converted model gets the original inputs and outputs back; it is
refused if the placeholder turns up in a constant the converter made (the upgrade then depends on
the batch size).

Every problem is a file-level `LayercError` at the model, naming the tensor and the problem.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from . import weights as W
from .errors import LayercError
from .files import open_regular, read_regular

# What a torch user changes so that a model has no external data at all.
_KEEP_INSIDE = (
    " (or export with torch.onnx.export(..., external_data=False), which keeps the weights in"
    " the .onnx file)"
)
# The keys of an external tensor's `external_data` (onnx's own loader also writes `basepath`,
# which it never follows, and neither does layerc); any other is refused, as it may change
# what the bytes mean.
_KNOWN_KEYS = ("location", "offset", "length", "checksum", "basepath")
_MAX_LOCATION = 4096  # characters in a location: PATH_MAX
# Bits of one element, by TensorProto data type name: the types whose raw bytes have a fixed
# width (4-bit types pack two elements in a byte). STRING, UNDEFINED and the 2- and 6-bit types
# are refused.
_BITS = {
    **dict.fromkeys(("FLOAT", "INT32", "UINT32"), 32),
    **dict.fromkeys(("DOUBLE", "INT64", "UINT64", "COMPLEX64"), 64),
    "COMPLEX128": 128,
    **dict.fromkeys(("FLOAT16", "BFLOAT16", "INT16", "UINT16"), 16),
    **dict.fromkeys(("UINT8", "INT8", "BOOL"), 8),
    **dict.fromkeys(
        ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0"), 8
    ),
    **dict.fromkeys(("UINT4", "INT4", "FLOAT4E2M1"), 4),
}
# The fields a TensorProto holds its values in, besides raw_data.
_DATA_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)
# What a symbolic size of a graph input or output is set to while the version converter runs:
# a size no real model uses for a constant, so that one it leaks into is found.
_PLACEHOLDER_SIZE = 9973


def read_model(path: Path, display: str):  # type: ignore[no-untyped-def]
    """The ModelProto in `path`, parsed from bytes, with its external data read into it and its
    operator set upgraded to one the importer reads; checked by onnx's checker."""
    import onnx

    data = read_regular(path, display, what="an ONNX model", max_bytes=W.MAX_FILE_BYTES)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise LayercError(f"not a valid ONNX model: {first_line(exc)}", file=display) from None
    external = _external_tensors(model, display)
    if external:
        blank = onnx.ModelProto()
        blank.CopyFrom(model)
        for tensor in model_tensors(blank):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                _blank(tensor)
        _check(blank, display)
        _read_external(external, path.parent, display)
    else:
        _check(data, display)
    return _upgrade(model, display)


def _check(model, display: str, what: str = "not a valid ONNX model") -> None:  # type: ignore[no-untyped-def]
    import onnx

    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError, and C++ errors from the checker
        raise LayercError(f"{what}: {first_line(exc)}", file=display) from None


# --------------------------------------------------------------------------- tensors


def all_tensors(graph) -> Iterator:  # type: ignore[no-untyped-def]
    """Every TensorProto in a graph: initializers, sparse ones, attribute values, subgraphs."""
    for tensor, _ in _tensors(graph):
        yield tensor


def model_tensors(model) -> Iterator:  # type: ignore[no-untyped-def]
    """Every TensorProto in a model: its graph's, its functions' and its training graphs'."""
    for tensor, _ in _model_tensors(model):
        yield tensor


def _model_tensors(model) -> Iterator[tuple]:  # type: ignore[no-untyped-def]
    """(tensor, whether it is part of a sparse tensor) for every TensorProto in a model."""
    yield from _tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)
    for training in model.training_info:
        yield from _tensors(training.initialization)
        yield from _tensors(training.algorithm)


def _tensors(graph) -> Iterator[tuple]:  # type: ignore[no-untyped-def]
    for tensor in graph.initializer:
        yield tensor, False
    for sparse in graph.sparse_initializer:
        yield sparse.values, True
        yield sparse.indices, True
    yield from _node_tensors(graph.node)


def _node_tensors(nodes) -> Iterator[tuple]:  # type: ignore[no-untyped-def]
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t, False
            for tensor in attr.tensors:
                yield tensor, False
            sparse_tensors = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sparse in [*sparse_tensors, *attr.sparse_tensors]:
                yield sparse.values, True
                yield sparse.indices, True
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


# --------------------------------------------------------------------------- external data


@dataclass
class _External:
    """A tensor stored in an external file, its metadata checked."""

    tensor: object  # the TensorProto
    name: str  # quoted for messages
    location: str
    offset: int
    length: int  # the bytes its type and dims hold
    to_end: bool  # no `length` key: the data runs to the end of the file
    checksum: str | None


def _external_tensors(model, display: str) -> list[_External]:  # type: ignore[no-untyped-def]
    """The model's external tensors, each one's metadata checked, their byte counts added up
    and bounded; nothing is read."""
    from onnx import TensorProto

    found: list[_External] = []
    total = 0
    for tensor, sparse in _model_tensors(model):
        external = tensor.data_location == TensorProto.EXTERNAL
        if not external and not tensor.external_data:
            continue
        name = quote(tensor.name or "(unnamed)")

        def refuse(message: str, name: str = name) -> LayercError:
            return LayercError(f"tensor {name} {message}", file=display)

        if not external:
            raise refuse("has external_data entries, but its data_location is not EXTERNAL")
        if sparse:
            raise refuse(
                "is part of a sparse tensor stored in an external file, which layerc does not read"
            )
        if tensor.HasField("raw_data") or any(len(getattr(tensor, f)) for f in _DATA_FIELDS):
            raise refuse("is stored in an external file but also holds data of its own")
        keys: dict[str, str] = {}
        for entry in tensor.external_data:
            if entry.key not in _KNOWN_KEYS:
                raise refuse(
                    f"has the external data key {quote(entry.key)}, which layerc does not know"
                )
            if entry.key in keys:
                raise refuse(f"has the external data key {quote(entry.key)} twice")
            keys[entry.key] = entry.value
        location = keys.get("location", "")
        if not location:
            raise refuse("is stored in an external file but names no location")
        problem = _unsafe_location(location)
        if problem:
            raise refuse(f"is stored in {quote(location)}, {problem}{_KEEP_INSIDE}")
        offset = _number(keys, "offset", refuse)
        given = _number(keys, "length", refuse)
        types = TensorProto.DataType
        kind = types.Name(tensor.data_type) if tensor.data_type in types.values() else "unknown"
        if kind not in _BITS:
            raise refuse(f"has type {kind}, which layerc does not read from an external file")
        dims = tuple(int(d) for d in tensor.dims)
        if any(d < 0 for d in dims):
            raise refuse(f"has a negative dimension in its shape {dims}")
        size = math.ceil(math.prod(dims) * _BITS[kind] / 8)
        if given is not None and given != size:
            raise refuse(
                f"of shape {_shape(dims)} and type {kind} holds {size} bytes, but its external data "
                f"gives a length of {given} bytes"
            )
        total += size
        if total > W.MAX_FILE_BYTES:
            raise refuse(
                f"of shape {_shape(dims)} and type {kind} holds {size} bytes, which takes the "
                f"model's external data past {W.MAX_FILE_BYTES} bytes, the most layerc reads"
            )
        checksum = keys.get("checksum")
        if checksum is not None and not re.fullmatch(r"[0-9a-fA-F]{40}", checksum):
            raise refuse(f"has the checksum {quote(checksum)}, which is not a SHA-1 digest in hex")
        found.append(_External(tensor, name, location, offset or 0, size, given is None, checksum))
    return found


def _number(keys: dict[str, str], key: str, refuse) -> int | None:  # type: ignore[no-untyped-def]
    if key not in keys:
        return None
    value = keys[key]
    if not re.fullmatch(r"[0-9]{1,20}", value):
        raise refuse(f"has the external data {key} {quote(value)}, which is not a number of bytes")
    return int(value)


def _unsafe_location(location: str) -> str | None:
    """Why `location` is not a relative path inside the model's folder, or None. A backslash
    counts as a separator too (as on Windows), so `..\\x` is refused on every platform."""
    if len(location) > _MAX_LOCATION or "\0" in location:
        return "which is not a file name"
    windows = PureWindowsPath(location)
    if PurePosixPath(location).is_absolute() or windows.anchor or windows.drive:
        return "an absolute path; external data must be a relative path inside the model's folder"
    if ".." in windows.parts or ".." in PurePosixPath(location).parts:
        return "a path with a '..' component; external data must be inside the model's folder"
    return None


def _inside(folder: str, path: str) -> bool:
    try:
        return os.path.commonpath([folder, path]) == folder and path != folder
    except ValueError:  # another drive, on Windows
        return False


def _read_external(external: list[_External], folder: Path, display: str) -> None:
    """Open each external file once, check every slice against its size, then read the slices
    into their tensors."""
    base = os.path.realpath(folder)
    fds: dict[str, tuple[int, int]] = {}  # location -> (descriptor, size)
    try:
        for ext in external:
            if ext.location not in fds:
                fds[ext.location] = _open_external(ext, base, display)
            _, size = fds[ext.location]
            end = ext.offset + ext.length
            where = f"tensor {ext.name} is stored in {quote(ext.location)}"
            if end > size:
                raise LayercError(
                    f"{where} at bytes {ext.offset} to {end}, past the end of the file "
                    f"({size} bytes)",
                    file=display,
                )
            if ext.to_end and end != size:
                raise LayercError(
                    f"{where} from byte {ext.offset} to the end of the file (no length given), "
                    f"which is {size - ext.offset} bytes, but the tensor holds {ext.length}",
                    file=display,
                )
        for ext in external:
            fd, _ = fds[ext.location]
            data = _pread(fd, ext.length, ext.offset)
            if len(data) != ext.length:
                raise LayercError(
                    f"tensor {ext.name}: {quote(ext.location)} got shorter while layerc read it",
                    file=display,
                )
            if ext.checksum is not None and hashlib.sha1(data).hexdigest() != ext.checksum.lower():
                raise LayercError(
                    f"tensor {ext.name}: the data in {quote(ext.location)} does not match its "
                    "checksum",
                    file=display,
                )
            _make_internal(ext.tensor, data)
    finally:
        for fd, _ in fds.values():
            os.close(fd)


def _open_external(ext: _External, base: str, display: str) -> tuple[int, int]:
    """A descriptor of the regular file `ext.location` inside the model's folder `base` (its
    real path), and the file's size."""
    where = f"tensor {ext.name} is stored in {quote(ext.location)}"
    joined = os.path.join(base, ext.location)
    real = os.path.realpath(joined)
    if real == base:
        raise LayercError(f"{where}, which is the model's folder, not a file", file=display)
    if not _inside(base, real):
        raise LayercError(
            f"{where}, which leads out of the model's folder through a symbolic link; external "
            f"data must be inside the model's folder{_KEEP_INSIDE}",
            file=display,
        )
    if not os.path.lexists(real):
        raise LayercError(
            f"{where}, which is missing from the model's folder ({base}); the external data "
            f"file must sit beside the .onnx file, as torch.onnx.export wrote it{_KEEP_INSIDE}",
            file=display,
        )
    try:
        fd = open_regular(Path(real), ext.location, what="a file of external data")
    except LayercError as exc:
        sep = ": " if exc.message.startswith("cannot") else ", which "
        raise LayercError(f"{where}{sep}{exc.message}", file=display) from None
    try:
        opened = _opened_path(fd)
        if opened is not None and not _inside(base, opened):
            raise LayercError(
                f"{where}, which changed while layerc opened it and leads out of the model's "
                "folder",
                file=display,
            )
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # open_regular checked it; kept for the reader's sake
            raise LayercError(f"{where}, which is not a regular file", file=display)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _opened_path(fd: int) -> str | None:
    """The path of the file open at `fd`, where the system says (Linux), else None."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _pread(fd: int, length: int, offset: int) -> bytes:
    """`length` bytes at `offset` (fewer at the end of the file)."""
    chunks: list[bytes] = []
    done = 0
    while done < length:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, min(length - done, 1 << 30), offset + done)
        else:  # Windows
            os.lseek(fd, offset + done, os.SEEK_SET)
            chunk = os.read(fd, min(length - done, 1 << 30))
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def _blank(tensor) -> None:  # type: ignore[no-untyped-def]
    """Make `tensor` an empty one, for the checker (which would resolve its location itself and
    wants the data a shape holds; its shape meets nothing else without shape inference)."""
    del tensor.external_data[:]
    tensor.ClearField("data_location")
    del tensor.dims[:]
    tensor.dims.append(0)


def _make_internal(tensor, data: bytes) -> None:  # type: ignore[no-untyped-def]
    tensor.raw_data = data
    del tensor.external_data[:]
    tensor.ClearField("data_location")


# --------------------------------------------------------------------------- old opsets


def _default_opset(model) -> int | None:  # type: ignore[no-untyped-def]
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return int(versions[0]) if versions else None


def _upgrade(model, display: str):  # type: ignore[no-untyped-def]
    """`model` itself, or, when its default opset is older than the importer reads, the model
    upgraded to the oldest it reads (see the module docstring)."""
    from .onnx_io import MIN_OPSET  # imported here: onnx_io imports this module

    old = _default_opset(model)
    if old is None or old >= MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter's C++ assertions arrive as RuntimeError
        converted = _convert_with_fixed_sizes(model, MIN_OPSET)
        if converted is None:
            raise LayercError(
                f"the model's ONNX opset {old} is older than layerc reads ({MIN_OPSET}+), and "
                f"onnx's version converter cannot upgrade it: {first_line(exc)} (export with "
                "torch.onnx.export(..., opset_version=17) or later)",
                file=display,
            ) from None
    _check(
        converted, display, f"the model upgraded from ONNX opset {old} to {MIN_OPSET} is not valid"
    )
    return converted


def _convert_with_fixed_sizes(model, target: int):  # type: ignore[no-untyped-def]
    """The model converted to opset `target` with the symbolic sizes of its graph inputs and
    outputs set to a placeholder, then given back; None when it has no symbolic size, the
    converter fails all the same, or the placeholder turns up in a constant it made."""
    import onnx
    from onnx import version_converter

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    changed = False
    for value in [*fixed.graph.input, *fixed.graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            for dim in value.type.tensor_type.shape.dim:
                if not dim.HasField("dim_value"):
                    dim.dim_value = _PLACEHOLDER_SIZE
                    changed = True
    if not changed:
        return None
    del fixed.graph.value_info[:]
    try:
        converted = version_converter.convert_version(fixed, target)
    except Exception:
        return None
    if _placeholders(converted) > _placeholders(model):
        return None
    originals = {value.name: value for value in [*model.graph.input, *model.graph.output]}
    for value in [*converted.graph.input, *converted.graph.output]:
        if value.name in originals:
            value.type.CopyFrom(originals[value.name].type)
    del converted.graph.value_info[:]
    converted.graph.value_info.extend(model.graph.value_info)
    return converted


def _placeholders(model) -> int:  # type: ignore[no-untyped-def]
    """How often `_PLACEHOLDER_SIZE` appears in the model's integer tensors."""
    from onnx import TensorProto, numpy_helper

    count = 0
    for tensor in model_tensors(model):
        if tensor.data_type in (TensorProto.INT64, TensorProto.INT32):
            try:
                count += int((numpy_helper.to_array(tensor) == _PLACEHOLDER_SIZE).sum())
            except Exception:
                continue
    for node in _all_nodes(model.graph):
        for attr in node.attribute:
            count += sum(1 for i in attr.ints if i == _PLACEHOLDER_SIZE)
            count += attr.i == _PLACEHOLDER_SIZE
    return count


def _all_nodes(graph) -> Iterator:  # type: ignore[no-untyped-def]
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


# --------------------------------------------------------------------------- messages


def _shape(dims: tuple[int, ...]) -> str:
    return f"({dims[0]},)" if len(dims) == 1 else str(dims)


def first_line(exc: BaseException) -> str:
    """An exception's first line, for a one-line message (at most 200 characters)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def quote(name: str) -> str:
    """A name from the ONNX file, quoted and shortened so it cannot flood or mangle a message."""
    return repr(name if len(name) <= 80 else name[:77] + "...")
