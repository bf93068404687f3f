"""The weights file a generated module may have beside it: the raw little-endian bytes of each
array, 64-byte aligned, in an order the module records. No pickle, no header to parse: the
module knows every offset, shape and dtype, and checks the file's SHA-256 before using it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

ALIGN = 64


class WeightsFileError(ImportError):
    """The weights file is missing or does not belong to this module: recompile."""


def pack(arrays: list[np.ndarray]) -> tuple[bytes, list[int]]:
    """Concatenate arrays (as little-endian) with alignment; return the bytes and the offsets."""
    chunks: list[bytes] = []
    offsets = []
    size = 0
    for array in arrays:
        pad = -size % ALIGN
        chunks.append(b"\0" * pad)
        size += pad
        offsets.append(size)
        raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        chunks.append(raw)
        size += len(raw)
    return b"".join(chunks), offsets


# The weights file of each generated module loaded so far, by the module's file: what a
# self-contained pickle of its models carries (layerc.runtime.portable).
FILES: dict[str, str] = {}


def load(
    module_file: str, name: str, sha256: str, layout: dict[str, tuple[int, tuple[int, ...], str]]
) -> dict[str, np.ndarray]:
    """Read `name` beside `module_file` and return its arrays by key, read-only."""
    path = Path(module_file).with_name(name)
    FILES[module_file] = name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsFileError(
            f"{path}: cannot read the weights file of {Path(module_file).name}: {exc.strerror}; "
            "recompile the .lyr source"
        ) from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise WeightsFileError(
            f"{path} does not match {Path(module_file).name} (it was changed or belongs to another "
            "compile); recompile the .lyr source"
        )
    out = {}
    for key, (offset, shape, dtype) in layout.items():
        count = int(np.prod(shape, dtype=np.int64))
        array = np.frombuffer(data, dtype=np.dtype(dtype), count=count, offset=offset).reshape(
            shape
        )
        out[key] = array
    return out
