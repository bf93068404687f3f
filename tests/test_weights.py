"""Weights from files and initialisers: what `load(...)` and `init = ...` give, checked against
NumPy and PyTorch, and every refusal (pickles, devices, FIFOs, lying headers, missing keys, wrong
shapes, lossy conversions) reported at the `load(...)` call, with nothing written or run."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save_safetensors
from safetensors.torch import save_file as torch_save_safetensors

from layerc import driver
from layerc.errors import LayercError

# --------------------------------------------------------------------------- helpers


def write_lyr(folder: Path, text: str, name: str = "m") -> Path:
    src = folder / f"{name}.lyr"
    src.write_text(text, encoding="utf-8")
    return src


def linear_source(weight: str, bias: str | None = None, shape=(3, 4), options: str = "") -> str:
    """A one-Linear model whose weight (and bias) are the given expressions."""
    out_f, in_f = shape
    lines = [
        f"model M{options} {{",
        f"    fc = Linear({in_f}, {out_f}, bias={'true' if bias else 'false'}) {{",
    ]
    lines.append(f"        weight = {weight}")
    if bias:
        lines.append(f"        bias = {bias}")
    lines += ["    }", "}", ""]
    return "\n".join(lines)


def checked_weights(folder: Path, text: str) -> tuple[np.ndarray, np.ndarray | None]:
    program, _ = driver.check_file(write_lyr(folder, text))
    fc = program.models[0].layers[0]
    return fc.weight, fc.bias


def loc_of(text: str, marker: str) -> tuple[int, int]:
    """(line, col) of the first occurrence of `marker`, counted from 1 as layerc does."""
    offset = text.index(marker)
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


def assert_refused(folder: Path, text: str, marker: str, *needles: str) -> LayercError:
    """Compiling `text` fails at `marker` with a message holding every needle; nothing is
    written (the folder's listing is unchanged)."""
    src = write_lyr(folder, text)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(LayercError) as info:
        driver.compile_file(src)
    error = info.value
    assert error.loc is not None, str(error)
    assert (error.loc.line, error.loc.col) == loc_of(text, marker), str(error)
    for needle in needles:
        assert needle in error.message, f"{needle!r} not in {error.message!r}"
    assert sorted(p.name for p in folder.iterdir()) == before
    return error


class Sentinel:
    """Unpickling this creates a file: proof that a loader ran code from its input."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


F32 = np.arange(12, dtype=np.float32).reshape(3, 4) / 7


# --------------------------------------------------------------------------- formats


def test_npy_npz_safetensors_load_the_saved_values(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", F32)
    np.savez(tmp_path / "w.npz", w=F32, b=F32[0, :3])
    np.savez_compressed(tmp_path / "c.npz", w=F32)
    np_save_safetensors({"w": F32, "b": F32[1, :3]}, str(tmp_path / "w.safetensors"))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(F32))
    np.save(tmp_path / "big_endian.npy", F32.astype(">f4"))
    cases = {
        'load("w.npy")': F32,
        'load("w.npz", "w")': F32,
        'load(path="c.npz", key="w")': F32,
        'load("w.safetensors", "w")': F32,
        'load("fortran.npy")': F32,
        'load("big_endian.npy")': F32,
    }
    for expr, expected in cases.items():
        weight, _ = checked_weights(tmp_path, linear_source(expr))
        assert weight.dtype == np.float32 and weight.flags.c_contiguous
        np.testing.assert_array_equal(weight, expected)
    weight, bias = checked_weights(
        tmp_path, linear_source('load("w.safetensors", "w")', 'load("w.safetensors", "b")')
    )
    np.testing.assert_array_equal(bias, F32[1, :3])


def test_float16_and_bfloat16_widen_exactly(tmp_path: Path) -> None:
    half = (np.arange(12).reshape(3, 4) / 3 - 1.5).astype(np.float16)
    np.save(tmp_path / "half.npy", half)
    source = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * 1e3
    bf16 = source.to(torch.bfloat16)
    torch_save_safetensors({"w": bf16, "h": source.half()}, str(tmp_path / "t.safetensors"))
    for options in ("", "(dtype=float64)"):
        dtype = np.float64 if options else np.float32
        weight, _ = checked_weights(tmp_path, linear_source('load("half.npy")', options=options))
        np.testing.assert_array_equal(weight, half.astype(dtype))
        weight, _ = checked_weights(
            tmp_path, linear_source('load("t.safetensors", "w")', options=options)
        )
        assert weight.dtype == dtype
        np.testing.assert_array_equal(weight, bf16.float().numpy().astype(dtype))
        weight, _ = checked_weights(
            tmp_path, linear_source('load("t.safetensors", "h")', options=options)
        )
        np.testing.assert_array_equal(weight, source.half().float().numpy().astype(dtype))


def test_float64_rounds_to_float32_and_overflow_is_reported(tmp_path: Path) -> None:
    values = np.linspace(-1, 1, 12).reshape(3, 4) / 3  # not representable in float32
    np.save(tmp_path / "f64.npy", values)
    weight, _ = checked_weights(tmp_path, linear_source('load("f64.npy")'))
    np.testing.assert_array_equal(weight, values.astype(np.float32))  # round to nearest
    weight, _ = checked_weights(
        tmp_path, linear_source('load("f64.npy")', options="(dtype=float64)")
    )
    np.testing.assert_array_equal(weight, values)
    huge = values.copy()
    huge[2, 1] = 1e39
    np.save(tmp_path / "huge.npy", huge)
    text = linear_source('load("huge.npy")')
    assert_refused(tmp_path, text, 'load("huge.npy")', "[2, 1]", "1e+39", "too large for float32")


def test_integers_convert_only_when_exact(tmp_path: Path) -> None:
    ok = np.array([[0, 1, -2, 2**24], [2**40, -(2**30), 3, 4], [5, 6, 7, 8]], dtype=np.int64)
    np.save(tmp_path / "ok.npy", ok)
    weight, _ = checked_weights(tmp_path, linear_source('load("ok.npy")'))
    np.testing.assert_array_equal(weight.astype(np.float64), ok.astype(np.float64))
    small = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.save(tmp_path / "u8.npy", small)
    weight, _ = checked_weights(tmp_path, linear_source('load("u8.npy")'))
    np.testing.assert_array_equal(weight, small.astype(np.float32))

    lossy = ok.copy()
    lossy[1, 2] = 2**24 + 1
    np.save(tmp_path / "lossy.npy", lossy)
    text = linear_source('load("lossy.npy")')
    assert_refused(
        tmp_path, text, "load(", "[1, 2] = 16777217", "not exactly representable in float32"
    )
    weight, _ = checked_weights(
        tmp_path, linear_source('load("lossy.npy")', options="(dtype=float64)")
    )
    assert int(weight[1, 2]) == 2**24 + 1

    np.save(tmp_path / "u64.npy", np.full((3, 4), 2**64 - 1, dtype=np.uint64))
    text = linear_source('load("u64.npy")', options="(dtype=float64)")
    assert_refused(tmp_path, text, "load(", "18446744073709551615", "float64")


def test_non_numeric_dtypes_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "complex.npy", np.ones((3, 4), dtype=np.complex64))
    np.save(tmp_path / "text.npy", np.full((3, 4), "x"))
    np.save(tmp_path / "record.npy", np.zeros((3, 4), dtype=[("a", "<f4")]))
    for name in ("complex", "text", "record"):
        text = linear_source(f'load("{name}.npy")')
        assert_refused(tmp_path, text, "load(", "not a real number type")
    torch_save_safetensors(
        {"w": torch.zeros(3, 4).to(torch.float8_e4m3fn)}, str(tmp_path / "f8.safetensors")
    )
    text = linear_source('load("f8.safetensors", "w")')
    assert_refused(tmp_path, text, "load(", "F8_E4M3", "does not read")


def test_non_finite_values_from_files_need_allow_nonfinite(tmp_path: Path) -> None:
    values = F32.copy()
    values[1, 3] = np.nan
    np.save(tmp_path / "nan.npy", values)
    text = linear_source('load("nan.npy")')
    assert_refused(tmp_path, text, "weight =", "weight[1, 3] is nan, not a finite number")
    weight, _ = checked_weights(
        tmp_path, linear_source('load("nan.npy")', options="(allow_nonfinite=true)")
    )
    np.testing.assert_array_equal(weight, values)


# --------------------------------------------------------------------------- refusals


def test_pickled_npy_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    payload = np.empty((3, 4), dtype=object)
    payload[0, 0] = Sentinel(sentinel)
    np.save(tmp_path / "evil.npy", payload, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", w=payload)
    assert not sentinel.exists()
    text = linear_source('load("evil.npy")')
    assert_refused(tmp_path, text, "load(", "Python objects", "never unpickles")
    text = linear_source('load("evil.npz", "w")')
    assert_refused(tmp_path, text, "load(", "Python objects", "never unpickles")
    assert not sentinel.exists()


def test_torch_save_files_are_never_read(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    # torch.save writes a zip whose data.pkl unpickles the Sentinel: disguised as an .npz it
    # must be read as npy bytes (and fail the magic check), never unpickled.
    torch.save({"w": torch.zeros(3, 4), "x": Sentinel(sentinel)}, tmp_path / "model.npz")
    torch.save({"w": torch.zeros(3, 4)}, tmp_path / "model.pt")
    with zipfile.ZipFile(tmp_path / "model.npz") as archive:
        pickle_member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
    text = linear_source(f'load("model.npz", "{pickle_member}")')
    assert_refused(tmp_path, text, "load(", "not a valid .npy file")
    text = linear_source('load("model.npz", "w")')
    assert_refused(tmp_path, text, "load(", "has no array 'w'", "data.pkl")
    text = linear_source('load("model.pt", "w")')
    assert_refused(tmp_path, text, "load(", "never reads pickled files")
    (tmp_path / "raw.npy").write_bytes(pickle.dumps(Sentinel(sentinel)))
    assert_refused(tmp_path, linear_source('load("raw.npy")'), "load(", "not a valid .npy file")
    assert not sentinel.exists()


def test_devices_and_folders_are_refused_before_opening(tmp_path: Path) -> None:
    os.symlink("/dev/zero", tmp_path / "zero.npy")
    (tmp_path / "folder.npz").mkdir()
    for expr in ('load("/dev/zero")', 'load("zero.npy")'):
        assert_refused(tmp_path, linear_source(expr), "load(", "is not a regular file")
    expr = 'load("folder.npz", "w")'
    assert_refused(tmp_path, linear_source(expr), "load(", "'folder.npz' is a directory")


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the compiler must not wait."""
    os.mkfifo(tmp_path / "pipe.npy")
    text = linear_source('load("pipe.npy")')
    src = write_lyr(tmp_path, text)
    result = subprocess.run(
        [sys.executable, "-m", "layerc.cli", "compile", str(src)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    line, col = loc_of(text, "load(")
    assert f"m.lyr:{line}:{col}: 'pipe.npy' is not a regular file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.py").exists()


def npy_header(
    shape: tuple[int, ...], descr: str = "<f4", version: int = 1, pad_to: int = 64
) -> bytes:
    """A .npy header written by hand, so it can lie about the data that follows."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode("latin1")
    size_format = "<H" if version == 1 else "<I"
    prefix = 8 + struct.calcsize(size_format)
    header += b" " * (-(prefix + len(header) + 1) % pad_to) + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(size_format, len(header)) + header


def test_npy_headers_are_checked_before_reading(tmp_path: Path) -> None:
    # A 1e12-element shape over 16 bytes of data: refused without allocating anything.
    (tmp_path / "liar.npy").write_bytes(npy_header((10**6, 10**6)) + b"\0" * 16)
    text = linear_source('load("liar.npy")')
    assert_refused(
        tmp_path, text, "load(", "has shape (1000000, 1000000)", "must have shape (3, 4)"
    )
    test_text = linear_source("[[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]") + (
        'test M { input = load("liar.npy"); expect = [0, 0, 0] }\n'
    )
    assert_refused(tmp_path, test_text, 'load("liar.npy")', "(1000000, 1000000)", "takes (4,)")
    (tmp_path / "liar.npy").write_bytes(npy_header((10**6, 4)) + b"\0" * 16)
    assert_refused(tmp_path, test_text, 'load("liar.npy")', "truncated", "(1000000, 4)")
    # Right shape, too few bytes.
    (tmp_path / "short.npy").write_bytes(npy_header((3, 4)) + b"\0" * 47)
    assert_refused(tmp_path, linear_source('load("short.npy")'), "load(", "truncated", "47 bytes")
    # A header that claims to be 4 GiB long.
    (tmp_path / "long.npy").write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**32 - 1))
    assert_refused(tmp_path, linear_source('load("long.npy")'), "load(", "not a valid .npy file")
    (tmp_path / "negative.npy").write_bytes(npy_header((-3, 4)) + b"\0" * 48)
    assert_refused(tmp_path, linear_source('load("negative.npy")'), "load(", "negative shape")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': os.sy")
    assert_refused(tmp_path, linear_source('load("bad.npy")'), "load(", "not a valid .npy file")


def test_npz_members_are_checked(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("w.npy", npy_header((10**6, 10**6)) + b"\0" * 16)
        archive.writestr("ok.npy", npy_header((3, 4)) + F32.tobytes())
    (tmp_path / "liar.npz").write_bytes(buffer.getvalue())
    text = linear_source('load("liar.npz", "w")')
    assert_refused(tmp_path, text, "load(", "has shape (1000000, 1000000)")
    weight, _ = checked_weights(tmp_path, linear_source('load("liar.npz", "ok")'))
    np.testing.assert_array_equal(weight, F32)
    np.savez(tmp_path / "full.npz", w=F32)
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert_refused(tmp_path, linear_source('load("cut.npz", "w")'), "load(", "not a valid .npz")


def source_with_test_from(load: str, entry: str = "input") -> str:
    """A 4 -> 3 model with a test whose `entry` (input or expect) is `load`."""
    values = {"input": "[1, 2, 3, 4]", "expect": "[0, 0, 0]", entry: load}
    return linear_source("[[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]") + (
        f"test M {{ input = {values['input']}; expect = {values['expect']} }}\n"
    )


def deflated_zeros_npz(path: Path, shape: tuple[int, ...], key: str = "x") -> None:
    """A .npz whose member declares `shape` of float64 zeros, deflated (about 1000:1), so a
    small file stands for a large array."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
            member.write(npy_header(shape, "<f8"))
            block = bytes(1 << 20)
            left = math.prod(shape) * 8
            while left:
                member.write(block[: min(left, len(block))])
                left -= min(left, len(block))


def peak_while_refused(folder: Path, text: str, marker: str, *needles: str) -> int:
    """Peak Python memory (tracemalloc) while `text` is refused at `marker`."""
    tracemalloc.start()
    try:
        assert_refused(folder, text, marker, *needles)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_test_arrays_are_bounded_before_their_data_is_read(tmp_path: Path) -> None:
    """A 130 KB .npz of deflated zeros declaring 2**22 + 1 rows of 4 float64 (134 MB): one row
    more than a test may hold. It is refused at the load(...) from its header, before a byte
    of it is decompressed: far less memory than the array (it used to be read whole)."""
    deflated_zeros_npz(tmp_path / "zeros.npz", (2**22 + 1, 4))
    assert (tmp_path / "zeros.npz").stat().st_size < 200_000
    text = source_with_test_from('load("zeros.npz", "x")')
    peak = peak_while_refused(tmp_path, text, "load(", "(4194305, 4)", "at most 16777216")
    assert peak < 16 * 2**20
    # The same bound for .npy and .safetensors files (here they hold the data: 134 MB).
    rows = np.lib.format.open_memmap(tmp_path / "big.npy", "w+", np.float64, (2**22 + 1, 4))
    del rows
    text = source_with_test_from('load("big.npy")')
    assert peak_while_refused(tmp_path, text, "load(", "at most 16777216") < 16 * 2**20


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".safetensors"])
def test_test_array_widths_are_checked_before_reading(tmp_path: Path, suffix: str) -> None:
    """A 40 MB array of the wrong width for the model is refused from its declared shape."""
    data = np.zeros((2**20, 5))
    if suffix == ".npy":
        np.save(tmp_path / "wide.npy", data)
        load = 'load("wide.npy")'
    elif suffix == ".npz":
        np.savez(tmp_path / "wide.npz", x=data)
        load = 'load("wide.npz", "x")'
    else:
        np_save_safetensors({"x": data}, str(tmp_path / "wide.safetensors"))
        load = 'load("wide.safetensors", "x")'
    del data
    text = source_with_test_from(load)
    peak = peak_while_refused(tmp_path, text, "load(", "(1048576, 5)", "takes (4,) or (N, 4)")
    assert peak < 8 * 2**20
    expect = source_with_test_from(load, "expect")
    assert peak_while_refused(tmp_path, expect, "load(", "gives (3,) or (N, 3)") < 8 * 2**20


def test_missing_keys_list_the_keys_that_exist(tmp_path: Path) -> None:
    np.savez(tmp_path / "w.npz", **{"fc1.weight": F32, "fc1.bias": F32[0, :3]})
    np_save_safetensors({"fc1.weight": F32, "fc2.weight": F32}, str(tmp_path / "w.safetensors"))
    error = assert_refused(
        tmp_path,
        linear_source('load("w.npz", "fc.weight")'),
        "load(",
        "has no array 'fc.weight'",
        "did you mean 'fc1.weight'",
        "'fc1.bias', 'fc1.weight'",
    )
    assert str(error).startswith(f"{tmp_path / 'm.lyr'}:")
    assert_refused(
        tmp_path,
        linear_source('load("w.safetensors", "fc3.weight")'),
        "load(",
        "has no tensor 'fc3.weight'",
        "(it has: 'fc1.weight', 'fc2.weight')",
    )
    many = {f"k{i:03d}": np.zeros(1, np.float32) for i in range(50)}
    np_save_safetensors(many, str(tmp_path / "many.safetensors"))
    assert_refused(
        tmp_path, linear_source('load("many.safetensors", "zzz")'), "load(", "'k019'", "and 30 more"
    )


def test_wrong_shape_and_wrong_key_use_are_reported(tmp_path: Path) -> None:
    np.savez(tmp_path / "w.npz", w=F32.T)
    np.save(tmp_path / "w.npy", F32)
    np_save_safetensors({"w": F32.T.copy()}, str(tmp_path / "w.safetensors"))
    assert_refused(
        tmp_path,
        linear_source('load("w.npz", "w")'),
        "load(",
        "'w.npz'['w'] has shape (4, 3) but must have shape (3, 4)",
    )
    assert_refused(
        tmp_path,
        linear_source('load("w.safetensors", "w")'),
        "load(",
        "has shape (4, 3) but must have shape (3, 4)",
    )
    text = linear_source('load("w.npy")', 'load("w.npy")')
    assert_refused(tmp_path, text, 'load("w.npy")\n    }', "must have shape (3,)")
    assert_refused(tmp_path, linear_source('load("w.npy", "w")'), "load(", "give no key")
    assert_refused(tmp_path, linear_source('load("w.npz")'), "load(", "name one")
    assert_refused(tmp_path, linear_source('load("nope.npz", "w")'), "load(", "no such file")
    assert_refused(tmp_path, linear_source('load(key="w", "w.npz")'), '"w.npz"', "positional")


def test_malformed_safetensors_are_refused(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 48]}})
    raw = header.encode()
    (tmp_path / "liar.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 48)
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    (tmp_path / "junk.safetensors").write_bytes(b"\x01\x02")
    np_save_safetensors({"w": F32}, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-5])
    for name in ("liar", "huge", "junk", "cut"):
        text = linear_source(f'load("{name}.safetensors", "w")')
        assert_refused(tmp_path, text, "load(", "not a valid .safetensors file")


# --------------------------------------------------------------------------- initialisers


def init_source(call: str, in_f: int = 512, out_f: int = 256, bias: bool = True) -> str:
    return (
        f"model M {{ fc = Linear({in_f}, {out_f}, bias={'true' if bias else 'false'}) "
        f"{{ init = {call} }} }}\n"
    )


def drawn(tmp_path: Path, call: str, **kw) -> tuple[np.ndarray, np.ndarray | None]:
    program, _ = driver.check_file(write_lyr(tmp_path, init_source(call, **kw)))
    fc = program.models[0].layers[0]
    return fc.weight.astype(np.float64), None if fc.bias is None else fc.bias.astype(np.float64)


def torch_weight(init, out_f: int = 256, in_f: int = 512, **kw) -> np.ndarray:
    """The same-shaped weight drawn by torch.nn.init: the reference distribution."""
    tensor = torch.empty(out_f, in_f, dtype=torch.float64)
    init(tensor, generator=torch.Generator().manual_seed(1234), **kw)
    return tensor.numpy()


def assert_same_uniform(ours: np.ndarray, reference: np.ndarray, bound: float) -> None:
    """Both samples of U(-bound, bound): within the bound, reaching it, the same spread."""
    for sample in (ours, reference):
        assert np.abs(sample).max() <= bound
        assert np.abs(sample).max() > 0.995 * bound
        assert abs(sample.mean()) < 0.01 * bound
    # std of U(-b, b) is b/sqrt(3); with 131072 draws the sample std is within ~0.3%.
    assert ours.std() == pytest.approx(bound / math.sqrt(3), rel=0.01)
    assert ours.std() == pytest.approx(reference.std(), rel=0.015)


def assert_torch_linear_bias(bias: np.ndarray | None, in_f: int) -> None:
    """torch.nn.Linear's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    assert bias is not None
    reference = torch.nn.Linear(in_f, 4096).bias.detach().numpy()
    bound = 1 / math.sqrt(in_f)
    assert np.abs(bias).max() <= bound and np.abs(reference).max() <= bound
    assert np.abs(bias).max() > 0.98 * bound
    assert bias.std() == pytest.approx(bound / math.sqrt(3), rel=0.15)


def test_uniform_is_torch_default_linear_init(tmp_path: Path) -> None:
    weight, bias = drawn(tmp_path, "uniform(seed=7)")
    reference = torch.nn.Linear(512, 256).weight.detach().double().numpy()
    assert_same_uniform(weight, reference, 1 / math.sqrt(512))
    assert_torch_linear_bias(bias, 512)


def test_xavier_uniform_matches_torch(tmp_path: Path) -> None:
    bound = math.sqrt(6 / (512 + 256))
    weight, bias = drawn(tmp_path, "xavier_uniform(seed=1)")
    assert_same_uniform(weight, torch_weight(torch.nn.init.xavier_uniform_), bound)
    assert_torch_linear_bias(bias, 512)
    gain = torch.nn.init.calculate_gain("tanh")
    weight, _ = drawn(tmp_path, "xavier_uniform(seed=1, gain=1.6666666666666667)")
    assert_same_uniform(
        weight, torch_weight(torch.nn.init.xavier_uniform_, gain=gain), gain * bound
    )


@pytest.mark.parametrize(
    ("args", "torch_kw", "fan"),
    [
        ("", {}, 512),  # a=0, fan_in, leaky_relu: gain sqrt(2), bound sqrt(6/fan_in)
        (', mode="fan_out", nonlinearity="relu"', {"mode": "fan_out", "nonlinearity": "relu"}, 256),
        (", a=0.2", {"a": 0.2}, 512),
        (", nonlinearity=tanh", {"nonlinearity": "tanh"}, 512),
        (", a=2.23606797749979", {"a": math.sqrt(5)}, 512),  # torch's own Linear default
    ],
)
def test_kaiming_uniform_matches_torch(tmp_path: Path, args: str, torch_kw: dict, fan: int) -> None:
    gain = torch.nn.init.calculate_gain(
        torch_kw.get("nonlinearity", "leaky_relu"), torch_kw.get("a", 0)
    )
    bound = gain * math.sqrt(3 / fan)
    weight, bias = drawn(tmp_path, f"kaiming_uniform(seed=3{args})")
    assert_same_uniform(weight, torch_weight(torch.nn.init.kaiming_uniform_, **torch_kw), bound)
    assert_torch_linear_bias(bias, 512)


def test_normal_matches_torch(tmp_path: Path) -> None:
    weight, bias = drawn(tmp_path, "normal(0.5, 0.02, seed=4)")
    reference = torch_weight(torch.nn.init.normal_, mean=0.5, std=0.02)
    for sample in (weight, reference):
        assert sample.mean() == pytest.approx(0.5, abs=0.02 * 5 / math.sqrt(sample.size))
        assert sample.std() == pytest.approx(0.02, rel=0.01)
    # Within 5 sigma everywhere, and the tails as heavy as torch's (kurtosis 3).
    assert np.abs(weight - 0.5).max() < 0.02 * 5.5
    kurtosis = ((weight - weight.mean()) ** 4).mean() / weight.var() ** 2
    ref_kurtosis = ((reference - reference.mean()) ** 4).mean() / reference.var() ** 2
    assert kurtosis == pytest.approx(ref_kurtosis, abs=0.1)
    assert_torch_linear_bias(bias, 512)
    default, _ = drawn(tmp_path, "normal(seed=4)", bias=False)
    assert default.mean() == pytest.approx(0.0, abs=0.02) and default.std() == pytest.approx(
        1, rel=0.01
    )


def test_zeros(tmp_path: Path) -> None:
    weight, bias = drawn(tmp_path, "zeros()", in_f=5, out_f=3)
    np.testing.assert_array_equal(weight, np.zeros((3, 5)))
    np.testing.assert_array_equal(bias, np.zeros(3))
    weight, bias = drawn(tmp_path, "zeros()", in_f=5, out_f=3, bias=False)
    assert bias is None


@pytest.mark.parametrize(
    "call",
    ["uniform(seed=5)", "normal(seed=5)", "xavier_uniform(5)", "kaiming_uniform(seed=5)"],
)
def test_seeded_initialisers_are_deterministic_and_seeds_differ(tmp_path: Path, call: str) -> None:
    first = drawn(tmp_path, call, in_f=16, out_f=8)
    again = drawn(tmp_path, call, in_f=16, out_f=8)
    other = drawn(tmp_path, call.replace("5", "6"), in_f=16, out_f=8)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])
    # A fresh interpreter draws the same numbers: nothing depends on process state.
    code = (
        "from pathlib import Path; from layerc.driver import check_file; "
        f"p, _ = check_file(Path({str(tmp_path / 'm.lyr')!r})); "
        "print(p.models[0].layers[0].weight.tobytes().hex())"
    )
    write_lyr(tmp_path, init_source(call, in_f=16, out_f=8))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == first[0].astype(np.float32).tobytes().hex()


@pytest.mark.parametrize(
    ("call", "marker", "needle"),
    [
        ("unifrom(seed=0)", "unifrom", "unknown initialiser 'unifrom'; did you mean 'uniform'?"),
        ("normal(std=1)", "normal", "normal() needs the argument 'seed', e.g. normal(seed=0)"),
        ("normal(std=-1, seed=0)", "-1", "std must be >= 0"),
        ("normal(mean=inf, seed=0)", "inf", "mean must be a finite number"),
        ('kaiming_uniform(seed=0, mode="fan_avg")', '"fan_avg"', "mode must be one of"),
        ("kaiming_uniform(seed=0, nonlinearity=gelu)", "gelu", "nonlinearity must be one of"),
        ("xavier_uniform(seed=0, scale=2)", "scale", "has no argument 'scale'"),
        ("zeros(0)", "0)", "zeros() takes 0 positional arguments but 1 was given"),
        ("uniform(seed=0, seed=1)", "seed=1", "'seed' is given twice"),
        ("uniform(seed=-1)", "-1", "seed must be a non-negative integer"),
        ("uniform(seed=18446744073709551616)", "1844", "below 2**64"),
        ("uniform(seed=1.5)", "1.5", "seed must be a non-negative integer"),
        ("uniform(seed=0, 1)", "1)", "positional argument after a keyword"),
        ("3", "3", "init must be an initialiser call"),
    ],
)
def test_initialiser_argument_errors_are_located(
    tmp_path: Path, call: str, marker: str, needle: str
) -> None:
    text = init_source(call, in_f=4, out_f=3)
    offset = text.index("init = ")
    marker_offset = text.index(marker, offset)
    with pytest.raises(LayercError) as info:
        driver.check_file(write_lyr(tmp_path, text))
    assert needle in info.value.message
    assert info.value.loc is not None and info.value.loc.col == marker_offset + 1


def test_largest_seed_is_accepted(tmp_path: Path) -> None:
    weight, _ = drawn(tmp_path, f"uniform(seed={2**64 - 1})", in_f=4, out_f=3)
    assert np.abs(weight).max() <= 0.5


# --------------------------------------------------------------------------- storage


def test_mlp_weights_are_stored_compactly(tmp_path: Path) -> None:
    """The 784-256-128-10 MLP: a small module and one raw weights file of 4 bytes a value."""
    text = (
        "model MLP {\n"
        "    fc1 = Linear(784, 256) { init = uniform(seed=1) }\n    ReLU()\n"
        "    fc2 = Linear(256, 128) { init = uniform(seed=2) }\n    ReLU()\n"
        "    fc3 = Linear(128, 10) { init = uniform(seed=3) }\n}\n"
    )
    src = write_lyr(tmp_path, text, "mlp")
    _, written = driver.compile_file(src)
    count = 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    data = [p for p in written if p.suffix == ".weights"]
    assert len(data) == 1
    assert count * 4 <= data[0].stat().st_size <= count * 4 + 6 * 64  # alignment padding only
    assert (tmp_path / "mlp.py").stat().st_size < 32 * 1024


# --------------------------------------------------------------------------- large literals


def test_errors_in_a_megabyte_literal_point_at_the_number(tmp_path: Path) -> None:
    """A 500 x 500 weight literal (about 1 MB of text) with one nan and one number float32
    cannot hold: each error points at its number, found from the text on demand, and checking
    stays within a few bytes of memory per byte of source (one node per number used to cost
    about 620)."""
    side = 500
    cells = [[f"{(r * side + c) % 997 / 1000:.6f}" for c in range(side)] for r in range(side)]
    cells[321][123] = "nan"

    def source() -> str:
        rows = ",\n                  ".join("[" + ", ".join(row) + "]" for row in cells)
        return linear_source(f"[{rows}]", shape=(side, side))

    text = source()
    assert len(text) > 1_000_000
    marker = text.index("nan")
    error = assert_refused(tmp_path, text, "nan", "weight[321, 123] is nan, not a finite number")
    assert error.loc.line == text.count("\n", 0, marker) + 1
    cells[321][123] = "0"
    cells[499][498] = "-1e39"
    text = source()
    tracemalloc.start()
    try:
        assert_refused(tmp_path, text, "-1e39", "weight[499, 498] = -1e+39 overflows float32")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * len(text), f"{peak / len(text):.0f} bytes per byte"
