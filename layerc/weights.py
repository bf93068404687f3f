"""Where weights come from: literals in the source, files (.npy, .npz, .safetensors) and seeded
initialisers. Each function returns a float64 NumPy array (or raises `LayercError` at the
location of the expression); the checker converts to the model's dtype and checks shapes.

Files are read without ever unpickling, and only when they are regular files.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from pathlib import Path

import numpy as np

from . import syntax as S
from .errors import LayercError, Loc

# --------------------------------------------------------------------------- literals


def literal_array(value: S.Value, what: str) -> np.ndarray:
    """A nested list literal of numbers as a float64 array; ragged rows are an error."""
    shape = _literal_shape(value, what)
    flat: list[float] = []
    _flatten(value, flat)
    return np.array(flat, dtype=np.float64).reshape(shape)


def _literal_shape(value: S.Value, what: str) -> tuple[int, ...]:
    if isinstance(value, S.Number):
        return ()
    if not isinstance(value, S.ListLit):
        raise LayercError(f"{what} must be a number or a list of numbers", value.loc)
    if not value.items:
        return (0,)
    shapes = [_literal_shape(item, what) for item in value.items]
    first = shapes[0]
    for item, shape in zip(value.items, shapes):
        if shape != first:
            raise LayercError(
                f"ragged {what}: this entry has shape {_fmt_shape(shape)} but the first has "
                f"shape {_fmt_shape(first)}",
                item.loc,
            )
    return (len(value.items), *first)


def _flatten(value: S.Value, out: list[float]) -> None:
    if isinstance(value, S.Number):
        out.append(value.value)
    else:
        assert isinstance(value, S.ListLit)
        for item in value.items:
            _flatten(item, out)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "()" if not shape else "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


fmt_shape = _fmt_shape


# --------------------------------------------------------------------------- files

MAX_FILE_BYTES = 1 << 34  # 16 GiB: more than any model layerc is for


def resolve_path(path: str, base_dir: Path, loc: Loc) -> Path:
    """A path relative to the .lyr file's folder, checked to be a readable regular file."""
    if "\0" in path:
        raise LayercError("file path contains a NUL character", loc)
    full = base_dir / path
    try:
        st = os.stat(full)
    except FileNotFoundError:
        raise LayercError(f"no such file: {path!r} (looked in {base_dir or '.'})", loc) from None
    except OSError as exc:
        raise LayercError(f"cannot read {path!r}: {exc.strerror}", loc) from None
    if not stat.S_ISREG(st.st_mode):
        raise LayercError(f"{path!r} is not a regular file", loc)
    if st.st_size > MAX_FILE_BYTES:
        raise LayercError(f"{path!r} is too large ({st.st_size} bytes)", loc)
    return full


def load_array(path: str, key: str | None, base_dir: Path, loc: Loc) -> np.ndarray:
    """One array from .npy (no key), .npz or .safetensors (key required), as float64."""
    full = resolve_path(path, base_dir, loc)
    suffix = full.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise LayercError(f"{path!r} is a .npy file and holds one array: give no key", loc)
        array = _load_npy(full, path, loc)
    elif suffix == ".npz":
        if key is None:
            raise LayercError(f"{path!r} holds several arrays: name one, load({path!r}, \"key\")", loc)
        array = _load_npz(full, path, key, loc)
    elif suffix == ".safetensors":
        if key is None:
            raise LayercError(f"{path!r} holds several tensors: name one, load({path!r}, \"key\")", loc)
        array = _load_safetensors(full, path, key, loc)
    else:
        raise LayercError(
            f"cannot load {path!r}: the file must end in .npy, .npz or .safetensors", loc
        )
    return _to_float64(array, path if key is None else f"{path}[{key!r}]", loc)


def _load_npy(full: Path, path: str, loc: Loc) -> np.ndarray:
    try:
        with open(full, "rb") as f:
            return _read_npy(f, os.fstat(f.fileno()).st_size, path, loc)
    except OSError as exc:
        raise LayercError(f"cannot read {path!r}: {exc.strerror}", loc) from None


def _read_npy(f, size: int, path: str, loc: Loc) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Read a .npy stream after checking its header's shape and dtype against its size."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise LayercError(f"{path!r} is not a valid .npy file: {exc}", loc) from None
    if dtype.hasobject:
        raise LayercError(
            f"{path!r} holds Python objects, which layerc never unpickles; save a numeric array",
            loc,
        )
    count = math.prod(shape)
    expected = count * dtype.itemsize
    remaining = size - f.tell()
    if remaining < expected:
        raise LayercError(
            f"{path!r} is truncated: its header declares shape {_fmt_shape(shape)} "
            f"({expected} bytes) but only {remaining} bytes follow",
            loc,
        )
    data = f.read(expected)
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C")


def _load_npz(full: Path, path: str, key: str, loc: Loc) -> np.ndarray:
    try:
        archive = zipfile.ZipFile(full)
    except (zipfile.BadZipFile, OSError) as exc:
        raise LayercError(f"{path!r} is not a valid .npz file: {exc}", loc) from None
    with archive:
        members = {name[:-4] if name.endswith(".npy") else name: name for name in archive.namelist()}
        if key not in members:
            raise LayercError(
                f"{path!r} has no array {key!r}; it has: {', '.join(map(repr, sorted(members)))}",
                loc,
            )
        info = archive.getinfo(members[key])
        if info.file_size > MAX_FILE_BYTES:
            raise LayercError(f"{path!r}: member {key!r} is too large ({info.file_size} bytes)", loc)
        try:
            with archive.open(info) as member:
                return _read_npy(member, info.file_size, f"{path}[{key!r}]", loc)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise LayercError(f"{path!r}: cannot read member {key!r}: {exc}", loc) from None


def _load_safetensors(full: Path, path: str, key: str, loc: Loc) -> np.ndarray:
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - safetensors is a dependency
        raise LayercError("loading .safetensors needs the 'safetensors' package", loc) from None
    try:
        with safe_open(str(full), framework="numpy") as f:
            keys = list(f.keys())
            if key not in keys:
                raise LayercError(
                    f"{path!r} has no tensor {key!r}; it has: {', '.join(map(repr, sorted(keys)))}",
                    loc,
                )
            return f.get_tensor(key)
    except LayercError:
        raise
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise LayercError(f"{path!r} is not a valid .safetensors file: {exc}", loc) from None


def _to_float64(array: np.ndarray, what: str, loc: Loc) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise LayercError(f"{what} has dtype {array.dtype}, not a real number type", loc)
    return np.asarray(array, dtype=np.float64)


# --------------------------------------------------------------------------- initialisers

INITIALISERS = ("uniform",)


def init_uniform(seed: int, out_features: int, in_features: int, bias: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """PyTorch's default Linear initialisation, seeded: weight and bias ~ U(-k, k), k = 1/sqrt(in).

    (torch's kaiming_uniform_(a=sqrt(5)) on the weight gives exactly this bound.) The draws come
    from NumPy's PCG64 seeded with `seed`, weight first, then bias, so the same source always
    gives the same weights on every machine.
    """
    bound = 1.0 / math.sqrt(in_features)
    rng = np.random.Generator(np.random.PCG64(seed))
    weight = rng.uniform(-bound, bound, size=(out_features, in_features))
    b = rng.uniform(-bound, bound, size=(out_features,)) if bias else None
    return weight, b
