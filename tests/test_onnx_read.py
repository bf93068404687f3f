"""Reading ONNX models whose weights are external data (what torch.onnx.export writes by
default: `m.onnx` beside `m.onnx.data`), safely, and models of opsets older than the importer
reads (upgraded with onnx's version converter); see layerc/onnx_read.py.

torch's TorchScript exporter ignores `external_data=True` (it writes one self-contained file), so
a real export is saved with external data by `onnx.save(..., save_as_external_data=True)`, and the
layout of the dynamo exporter (onnx_ir: offsets aligned, zero padding between tensors) is written
by hand (`externalize`), so that every case can be made; tests/test_onnx_exporters.py imports
what the dynamo exporter itself writes, `net.onnx.data` and all."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from layerc import cli, driver, onnx_read
from layerc import weights as W
from layerc.errors import LayercError
from layerc.onnx_io import MIN_OPSET

F32_TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(autouse=True)
def no_onnx_external_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnx's own external-data loader follows paths: layerc must never call it (nor may these
    tests, which load only self-contained models with it)."""

    def refuse(*args, **kwargs):
        raise AssertionError("onnx's external data loader was called")

    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_tensor", refuse)


def compiled(lyr: Path):  # type: ignore[no-untyped-def]
    """The model class compiled from `lyr`, instantiated."""
    _, written = driver.compile_file(lyr)
    module = driver.import_module(written[-1])
    return getattr(module, module.__all__[0])()


def torch_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 9),
        torch.nn.ReLU(),
        torch.nn.Linear(9, 5),
        torch.nn.Tanh(),
        torch.nn.Linear(5, 4),
    ).eval()


def torch_export(net: torch.nn.Module, path: Path) -> None:
    """torch.onnx.export with the TorchScript exporter, the batch axis dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(2, 6),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            dynamo=False,
            external_data=True,
        )


def externalize(
    model: onnx.ModelProto, folder: Path, name: str, location: str, align: int = 64
) -> Path:
    """Save `model` as `folder/name.onnx` with every initializer in the file `location` (relative
    to `folder`), each at an offset aligned to `align` bytes with zeros between, as the dynamo
    exporter writes them."""
    data = bytearray()
    for tensor in model.graph.initializer:
        raw = numpy_helper.to_array(tensor).tobytes()
        data += b"\0" * (-len(data) % align)
        offset = len(data)
        data += raw
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", offset), ("length", len(raw))):
            tensor.external_data.add(key=key, value=str(value))
    target = folder / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(data))
    path = folder / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def gemm_relu(rng: np.random.Generator, opset: int = 17, batch: str | int = "N"):  # type: ignore[no-untyped-def]
    """y = relu(x @ W.T + b), W (3, 4), as a model, with W and b."""
    weight = rng.standard_normal((3, 4)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    gemm_attrs = {"transB": 1, **({"broadcast": 1} if opset < 7 else {})}
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="g", **gemm_attrs),
            helper.make_node("Relu", ["h"], ["y"], name="r"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model, weight, bias


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_refused(path: Path, capsys: pytest.CaptureFixture, *needles: str) -> None:
    """`layerc import path` exits 1 with a file-level message holding the needles; no traceback,
    nothing written anywhere under the model's folder."""
    before = listing(path.parent)
    assert cli.main(["import", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert "Traceback" not in err
    assert listing(path.parent) == before
    assert not list(path.parent.rglob("*.lyr")) and not list(path.parent.rglob("*.safetensors"))


# --------------------------------------------------------------------------- models that import


def test_torch_export_with_external_data_imports_and_matches_torch(tmp_path: Path) -> None:
    net = torch_net()
    path = tmp_path / "m.onnx"
    torch_export(net, path)
    model = onnx.load(path)
    onnx.save(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.onnx.data",
        size_threshold=0,
    )
    stored = onnx.load(path, load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer)
    assert (tmp_path / "m.onnx.data").stat().st_size > 0

    assert cli.main(["import", str(path)]) == 0
    module = compiled(tmp_path / "m.lyr")
    x = np.random.default_rng(1).standard_normal((7, 6)).astype(np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(module(x), expected, **F32_TOL)


def test_the_dynamo_layout_aligned_in_a_subfolder_and_through_a_link_inside_imports(
    tmp_path: Path,
) -> None:
    """Offsets aligned with zeros between tensors (the dynamo exporter's layout); a data file in
    a subfolder; a data file reached through a symbolic link that stays inside the folder."""
    net = torch_net()
    x = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    for name, location in [
        ("aligned", "aligned.onnx.data"),
        ("nested", "weights/nested.data"),
        ("linked", "linked.onnx.data"),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        torch_export(net, folder / "plain.onnx")
        model = onnx.load(folder / "plain.onnx")
        (folder / "plain.onnx").unlink()
        if name == "linked":
            path = externalize(model, folder, name, "real/data.bin")
            (folder / location).symlink_to("real/data.bin")
            for tensor in model.graph.initializer:
                tensor.external_data[0].value = location
            path.write_bytes(model.SerializeToString())
        else:
            path = externalize(model, folder, name, location)
        assert cli.main(["import", str(path)]) == 0
        np.testing.assert_allclose(compiled(path.with_suffix(".lyr"))(x), expected, **F32_TOL)


def test_read_model_leaves_no_tensor_external(tmp_path: Path) -> None:
    """Initializers and a Constant node's value are read in; the model is self-contained."""
    rng = np.random.default_rng(3)
    model, weight, bias = gemm_relu(rng)
    const = numpy_helper.from_array(bias, "c")
    const.ClearField("raw_data")
    const.data_location = TensorProto.EXTERNAL
    (tmp_path / "c.bin").write_bytes(b"\0" * 5 + bias.tobytes())
    for key, value in (("location", "c.bin"), ("offset", "5")):
        const.external_data.add(key=key, value=value)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["unused"], value=const))
    path = externalize(model, tmp_path, "m", "m.data")
    read = onnx_read.read_model(path, str(path))
    for tensor in onnx_read.model_tensors(read):
        assert tensor.data_location == TensorProto.DEFAULT and not tensor.external_data
    arrays = {t.name: numpy_helper.to_array(t) for t in onnx_read.model_tensors(read)}
    np.testing.assert_array_equal(arrays["W"], weight)
    np.testing.assert_array_equal(arrays["b"], bias)
    np.testing.assert_array_equal(arrays["c"], bias)


# --------------------------------------------------------------------------- attacks


def external_model(tmp_path: Path) -> tuple[onnx.ModelProto, Path]:
    """A Gemm + Relu model with W and b in `model/w.data`; the folder `outside/` beside `model/`
    holds a copy of that file."""
    folder = tmp_path / "model"
    folder.mkdir()
    model, _, _ = gemm_relu(np.random.default_rng(4))
    path = externalize(model, folder, "m", "w.data")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "w.data").write_bytes((folder / "w.data").read_bytes())
    return model, path


def set_key(model: onnx.ModelProto, key: str, value: str | None, tensor: int = 0) -> None:
    """Set (or, with None, remove) one external data key of an initializer."""
    entries = model.graph.initializer[tensor].external_data
    kept = [(e.key, e.value) for e in entries if e.key != key]
    del entries[:]
    for k, v in kept + ([(key, value)] if value is not None else []):
        entries.add(key=k, value=v)


def _location(value: str):  # type: ignore[no-untyped-def]
    return lambda model, path: set_key(model, "location", value)


def _absolute_to_real_file(model: onnx.ModelProto, path: Path) -> None:
    set_key(model, "location", str(path.parent / "w.data"))


def _link_out(model: onnx.ModelProto, path: Path) -> None:
    (path.parent / "w.data").unlink()
    (path.parent / "w.data").symlink_to(path.parent.parent / "outside" / "w.data")


def _folder_link_out(model: onnx.ModelProto, path: Path) -> None:
    (path.parent / "sub").symlink_to(path.parent.parent / "outside")
    set_key(model, "location", "sub/w.data")


def _link_to_dev_zero(model: onnx.ModelProto, path: Path) -> None:
    (path.parent / "w.data").unlink()
    (path.parent / "w.data").symlink_to("/dev/zero")


def _fifo(model: onnx.ModelProto, path: Path) -> None:
    (path.parent / "w.data").unlink()
    os.mkfifo(path.parent / "w.data")


def _link_to_fifo(model: onnx.ModelProto, path: Path) -> None:
    (path.parent / "w.data").rename(path.parent / "real.data")
    os.mkfifo(path.parent / "pipe")
    (path.parent / "w.data").symlink_to("pipe")


def _folder(model: onnx.ModelProto, path: Path) -> None:
    (path.parent / "w.data").rename(path.parent / "real.data")
    (path.parent / "w.data").mkdir()


def _truncated(model: onnx.ModelProto, path: Path) -> None:
    data = (path.parent / "w.data").read_bytes()
    (path.parent / "w.data").write_bytes(data[:40])  # the end of W (48 bytes at 0) is cut


def _missing(model: onnx.ModelProto, path: Path) -> None:
    (path.parent / "w.data").unlink()


def _keys(**keys: str | None):  # type: ignore[no-untyped-def]
    def change(model: onnx.ModelProto, path: Path) -> None:
        for key, value in keys.items():
            set_key(model, key, value)

    return change


def _also_raw_data(model: onnx.ModelProto, path: Path) -> None:
    model.graph.initializer[0].raw_data = np.zeros(12, np.float32).tobytes()


def _not_marked_external(model: onnx.ModelProto, path: Path) -> None:
    model.graph.initializer[0].ClearField("data_location")


def _huge(model: onnx.ModelProto, path: Path) -> None:
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([1 << 20, 1 << 20])  # 4 TiB of float32
    set_key(model, "length", None)


def _string_type(model: onnx.ModelProto, path: Path) -> None:
    model.graph.initializer[0].data_type = TensorProto.STRING


ATTACKS = [
    ("absolute", _location("/etc/passwd"), "an absolute path"),
    ("absolute_real_file", _absolute_to_real_file, "an absolute path"),
    ("dotdot", _location("../outside/w.data"), "a '..' component"),
    ("dotdot_inside", _location("sub/../w.data"), "a '..' component"),
    ("backslash_dotdot", _location("..\\outside\\w.data"), "a '..' component"),
    ("windows_drive", _location("C:/Windows/win.ini"), "an absolute path"),
    ("link_out", _link_out, "leads out of the model's folder through a symbolic link"),
    ("folder_link_out", _folder_link_out, "leads out of the model's folder"),
    ("link_to_dev_zero", _link_to_dev_zero, "leads out of the model's folder"),
    ("fifo", _fifo, "is not a regular file"),
    ("link_to_fifo", _link_to_fifo, "is not a regular file"),
    ("folder", _folder, "is a directory"),
    ("length_past_end", _truncated, "at bytes 0 to 48, past the end of the file (40 bytes)"),
    ("offset_past_end", _keys(offset="4096"), "at bytes 4096 to 4144, past the end of the file"),
    ("length_not_dims", _keys(length="40"), "of shape (3, 4) and type FLOAT holds 48 bytes"),
    ("no_length_rest_of_file", _keys(length=None), "to the end of the file (no length given)"),
    ("negative_offset", _keys(offset="-1"), "the external data offset '-1', which is not a number"),
    ("hex_length", _keys(length="0x30"), "the external data length '0x30', which is not a number"),
    ("no_location", _keys(location=None), "names no location"),
    ("unknown_key", _keys(compression="zstd"), "the external data key 'compression'"),
    ("bad_checksum", _keys(checksum="0" * 40), "does not match its checksum"),
    ("also_raw_data", _also_raw_data, "also holds data of its own"),
    ("not_marked", _not_marked_external, "its data_location is not EXTERNAL"),
    ("huge", _huge, f"past {W.MAX_FILE_BYTES} bytes"),
    ("string", _string_type, "has type STRING, which layerc does not read"),
    ("missing", _missing, "must sit beside the .onnx file, as torch.onnx.export wrote it"),
]


@pytest.mark.parametrize("change, needle", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_external_data_attacks_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, change, needle: str
) -> None:
    model, path = external_model(tmp_path)
    change(model, path)
    path.write_bytes(model.SerializeToString())
    assert_refused(path, capsys, "tensor 'W'", needle)


def test_a_checksum_that_matches_is_accepted(tmp_path: Path) -> None:
    import hashlib

    model, path = external_model(tmp_path)
    data = (path.parent / "w.data").read_bytes()[:48]
    set_key(model, "checksum", hashlib.sha1(data).hexdigest())
    path.write_bytes(model.SerializeToString())
    assert cli.main(["import", str(path)]) == 0


def test_a_link_swapped_after_the_check_is_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the descriptor was opened on is checked again (Linux's /proc/self/fd): a file that
    was inside the folder when checked but outside when opened is refused."""
    _, path = external_model(tmp_path)
    monkeypatch.setattr(onnx_read, "_opened_path", lambda fd: "/etc/passwd")
    assert_refused(path, capsys, "tensor 'W'", "changed while layerc opened it")


def test_the_opened_path_is_known_on_linux(tmp_path: Path) -> None:
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc")
    (tmp_path / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert onnx_read._opened_path(fd) == os.path.realpath(tmp_path / "f")
    finally:
        os.close(fd)


def test_refused_in_read_model_as_layerc_errors(tmp_path: Path) -> None:
    model, path = external_model(tmp_path)
    set_key(model, "location", "../outside/w.data")
    path.write_bytes(model.SerializeToString())
    with pytest.raises(LayercError) as info:
        onnx_read.read_model(path, "shown.onnx")
    assert info.value.file == "shown.onnx" and info.value.loc is None


# --------------------------------------------------------------------------- old opsets


def numpy_gemm_relu(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    h = x.astype(np.float64) @ weight.astype(np.float64).T + bias.astype(np.float64)
    return np.maximum(h, 0)


@pytest.mark.parametrize("opset", [1, 6])
@pytest.mark.parametrize("batch", ["N", 2])
def test_old_opsets_are_upgraded_and_match_numpy(
    tmp_path: Path, opset: int, batch: str | int
) -> None:
    model, weight, bias = gemm_relu(np.random.default_rng(5), opset=opset, batch=batch)
    path = tmp_path / "old.onnx"
    path.write_bytes(model.SerializeToString())
    read = onnx_read.read_model(path, str(path))
    assert [o.version for o in read.opset_import if o.domain == ""] == [MIN_OPSET]
    # The graph's input and output keep their sizes (a symbolic batch stays symbolic).
    dims = read.graph.input[0].type.tensor_type.shape.dim
    assert (dims[0].dim_param or dims[0].dim_value) == batch
    assert cli.main(["import", str(path)]) == 0
    module = compiled(path.with_suffix(".lyr"))
    for n in (1, 2, 5):
        x = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        np.testing.assert_allclose(module(x), numpy_gemm_relu(x, weight, bias), **F32_TOL)


def test_old_opset_with_external_data(tmp_path: Path) -> None:
    model, weight, bias = gemm_relu(np.random.default_rng(6), opset=6)
    path = externalize(model, tmp_path, "old", "old.data")
    assert cli.main(["import", str(path)]) == 0
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    module = compiled(path.with_suffix(".lyr"))
    np.testing.assert_allclose(module(x), numpy_gemm_relu(x, weight, bias), **F32_TOL)


def test_an_old_opset_the_converter_cannot_upgrade_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Gemm at opset 6 without `broadcast`: C must be (M, N), here (2, 3) with M the batch,
    which no batch size but 2 fits; the converter refuses it."""
    model, _, _ = gemm_relu(np.random.default_rng(7), opset=6)
    model.graph.node[0].ClearField("attribute")
    model.graph.node[0].attribute.extend([helper.make_attribute("transB", 1)])
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones((2, 3), np.float32), "b"))
    path = tmp_path / "old.onnx"
    path.write_bytes(model.SerializeToString())
    assert_refused(
        path,
        capsys,
        f"the model's ONNX opset 6 is older than layerc reads ({MIN_OPSET}+), and onnx's "
        "version converter cannot upgrade it: ",
    )


def test_an_upgrade_that_bakes_in_the_placeholder_size_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the converter needs fixed sizes and writes the placeholder into a constant, the
    upgrade would hold for one batch size only: it is refused."""
    from onnx import version_converter

    real = version_converter.convert_version

    def convert(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
        dims = model.graph.input[0].type.tensor_type.shape.dim
        if dims[0].HasField("dim_param"):
            raise RuntimeError("Dimension is a param instead of an int")
        converted = real(model, target)
        converted.graph.initializer.append(
            numpy_helper.from_array(np.array([dims[0].dim_value, 3], np.int64), "shape")
        )
        return converted

    monkeypatch.setattr(version_converter, "convert_version", convert)
    model, _, _ = gemm_relu(np.random.default_rng(8), opset=6)
    path = tmp_path / "old.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(LayercError, match="cannot upgrade it: Dimension is a param"):
        onnx_read.read_model(path, str(path))
