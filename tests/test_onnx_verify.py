"""`layerc import` ends the .lyr in a test block of what ONNX's reference implementation
(onnx.reference) computes for a seeded sample batch, so that `layerc test` proves the import:
the block passes, a corrupted expectation fails it, `--no-test` leaves it out, large tests go
into the weights file, and a model the reference cannot run is imported without one, with a
one-line note."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.numpy import load_file, save_file
from test_onnx import init, make_model, rand, save, torch_chain, torch_exported_model

from layerc import cli
from layerc.onnx_verify import ReferenceTest, reference_test, render_test
from layerc.tools.fmt import format_source

TEST_BLOCK = re.compile(r"^test (\w+) \{$", re.MULTILINE)


def import_and_test(
    path: Path, capsys: pytest.CaptureFixture, *options: str
) -> tuple[str, str, int]:
    """`layerc import` then `layerc test` on the .lyr: (its text, import's stderr, test's exit)."""
    assert cli.main(["import", str(path), *options]) == 0
    err = capsys.readouterr().err
    lyr = path.with_suffix(".lyr")
    code = cli.main(["test", str(lyr)])
    return lyr.read_text(encoding="utf-8"), err, code


def test_a_torch_exported_model_is_imported_with_a_passing_test(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path, net = torch_exported_model(tmp_path)
    text, err, code = import_and_test(path, capsys)
    out = capsys.readouterr().out
    assert code == 0 and err == ""
    assert "PASS" in out and "1 passed, 0 failed" in out
    assert TEST_BLOCK.findall(text) == ["FromTorch"]
    assert "# What ONNX's reference implementation (onnx.reference) computes for 3 " in text
    assert "    atol = 1e-5\n    rtol = 1e-4\n}\n" in text
    assert format_source(text) == text  # printed by the printer fmt uses
    assert cli.main(["check", str(path.with_suffix(".lyr"))]) == 0
    # The expectation is torch's output too (6 inputs and 4 outputs per sample: inline).
    block = text[text.index("test FromTorch") :]
    assert "load(" not in block
    x = np.array(_literal(block, "input"), dtype=np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_literal(block, "expect"), expected, rtol=1e-4, atol=1e-6)
    assert sorted(load_file(str(path.with_suffix(".safetensors")))) == sorted(net.state_dict())


def _literal(block: str, entry: str) -> list:
    """The list literal of `entry` in a printed test block, read as Python."""
    match = re.search(rf"^    {entry} = (\[.*?\]\])$", block, re.MULTILINE | re.DOTALL)
    assert match is not None, block
    return eval(match.group(1))


def test_a_corrupted_expectation_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The block really tests: one expected number moved by 1e-3 of itself makes it fail."""
    path, _ = torch_chain(tmp_path, torch.nn.GELU(), torch.nn.LayerNorm(6))
    text, _, code = import_and_test(path, capsys)
    assert code == 0
    start = text.index("    expect = [[") + len("    expect = [[")
    end = text.index(",", start)
    number = float(text[start:end])
    corrupted = text[:start] + repr(number * 1.001 + 1e-4) + text[end:]
    path.with_suffix(".lyr").write_text(corrupted, encoding="utf-8")
    capsys.readouterr()
    assert cli.main(["test", str(path.with_suffix(".lyr"))]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "0 passed, 1 failed" in out and "[0, 0]" in out


def test_no_test_writes_no_block(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path, _ = torch_chain(tmp_path, torch.nn.ReLU())
    assert cli.main(["import", str(path), "--no-test"]) == 0
    assert capsys.readouterr().err == ""
    text = path.with_suffix(".lyr").read_text(encoding="utf-8")
    assert "test " not in text and "onnx.reference" not in text
    assert cli.main(["test", str(path.with_suffix(".lyr"))]) == 0
    assert capsys.readouterr().out.startswith(f"{path.with_suffix('.lyr')}: no test blocks\n")
    (tmp_path / "again").mkdir()
    assert cli.main(["import", str(path), "-o", str(tmp_path / "again")]) == 0
    with_test = (tmp_path / "again" / "net.lyr").read_text(encoding="utf-8")
    assert with_test.startswith(f"{text}\n# What ONNX's reference implementation")


def test_a_float64_model_gets_tighter_tolerances(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(5)
    f64 = np.float64
    model = make_model(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="gemm", transB=1),
            helper.make_node("Tanh", ["h"], ["t"], name="tanh"),
            helper.make_node("Softmax", ["t"], ["y"], name="softmax", axis=-1),
        ],
        [init("W", rand(rng, 3, 4, dtype=f64)), init("b", rand(rng, 3, dtype=f64))],
        4,
        3,
        elem=TensorProto.DOUBLE,
    )
    text, err, code = import_and_test(save(model, tmp_path, "double"), capsys)
    assert code == 0 and err == ""
    assert "model Double(dtype=float64) {" in text
    assert "    atol = 1e-9\n    rtol = 1e-9\n}\n" in text
    assert "max abs error" in capsys.readouterr().out
    assert format_source(text) == text


def test_a_large_test_goes_into_the_weights_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """More numbers than fit a readable block: `load("net.safetensors", "test.input")`, the
    arrays beside the weights (input in the model's dtype, expect as the reference gave it)."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(20, 12), torch.nn.Tanh(), torch.nn.Linear(12, 10))
    path = tmp_path / "wide.onnx"
    from test_onnx import torch_export

    torch_export(net.eval(), torch.zeros(2, 20), path)
    text, err, code = import_and_test(path, capsys)
    assert code == 0 and err == ""
    assert (
        'test Wide {\n    input = load("wide.safetensors", "test.input")\n'
        '    expect = load("wide.safetensors", "test.expect")\n'
    ) in text
    arrays = load_file(str(path.with_suffix(".safetensors")))
    assert sorted(arrays) == sorted([*net.state_dict(), "test.input", "test.expect"])
    assert arrays["test.input"].shape == (3, 20) and arrays["test.input"].dtype == np.float32
    assert arrays["test.expect"].shape == (3, 10) and arrays["test.expect"].dtype == np.float32
    with torch.no_grad():
        expected = net(torch.from_numpy(arrays["test.input"])).numpy()
    np.testing.assert_allclose(arrays["test.expect"], expected, rtol=1e-4, atol=1e-6)
    assert cli.main(["check", str(path.with_suffix(".lyr"))]) == 0
    # Corrupted in the weights file, the expectation fails the test.
    arrays["test.expect"][2, 9] += 0.01
    save_file(arrays, str(path.with_suffix(".safetensors")))
    capsys.readouterr()
    assert cli.main(["test", str(path.with_suffix(".lyr"))]) == 1
    assert "[2, 9]" in capsys.readouterr().out


def test_samples_of_several_axes_and_an_open_feature_count(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An input (batch, 2, 3) is drawn as such (nested literals); one (batch, F) with F
    symbolic is drawn with the first Linear's in_features."""
    rng = np.random.default_rng(6)
    flat = make_model(
        [
            helper.make_node("Flatten", ["x"], ["f"], name="flat"),
            helper.make_node("Gemm", ["f", "W"], ["y"], name="gemm", transB=1),
        ],
        [init("W", rand(rng, 2, 6))],
        None,
        2,
        input_shape=["N", 2, 3],
    )
    text, err, code = import_and_test(save(flat, tmp_path, "flat"), capsys)
    assert code == 0 and err == ""
    assert "model Flat(input=[2, 3]) {" in text
    assert "    input = [[[" in text
    open_features = make_model(
        [helper.make_node("Gemm", ["x", "W"], ["y"], name="gemm")],
        [init("W", rand(rng, 5, 2))],
        None,
        2,
        input_shape=["N", "F"],
    )
    text, err, code = import_and_test(save(open_features, tmp_path, "open"), capsys)
    assert code == 0 and err == ""
    assert len(_literal(text[text.index("test Open") :], "input")[0]) == 5


def test_a_model_the_reference_cannot_run_is_imported_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx.reference

    class Failing:
        def __init__(self, model: onnx.ModelProto, **options: object) -> None:
            raise NotImplementedError("no implementation for op 'Relu'\nsecond line")

    monkeypatch.setattr(onnx.reference, "ReferenceEvaluator", Failing)
    path, _ = torch_chain(tmp_path, torch.nn.ReLU())
    assert cli.main(["import", str(path)]) == 0
    err = capsys.readouterr().err
    assert err == (
        f"{path}: note: no test block: onnx.reference cannot run the model: "
        "NotImplementedError: no implementation for op 'Relu'\n"
    )
    text = path.with_suffix(".lyr").read_text(encoding="utf-8")
    assert "test " not in text
    assert cli.main(["compile", str(path.with_suffix(".lyr"))]) == 0
    assert cli.main(["import", str(path), "--no-test", "-o", str(tmp_path / "quiet.lyr")]) == 0
    assert capsys.readouterr().err == ""


def test_several_inputs_and_outputs_are_tuples_in_forward_order(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """For a graph of two inputs and two outputs the reference's batch is written as tuples,
    inline or in the weights file, and `layerc test` runs it on the same model written by hand."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "y"], ["s"], name="add"),
            helper.make_node("Sub", ["x", "y"], ["d"], name="sub"),
        ],
        "pair",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in ("x", "y")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in ("s", "d")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ref = reference_test(model)
    assert [a.shape for a in (*ref.inputs, *ref.outputs)] == [(3, 2)] * 4
    np.testing.assert_array_equal(ref.outputs[0], ref.inputs[0] + ref.inputs[1])
    source = "model Pair {\n    forward(x: 2, y: 2) {\n        return x + y, x - y\n    }\n}\n"
    arrays: dict[str, np.ndarray] = {}
    inline = render_test(ref, "Pair", "pair.safetensors", arrays)
    assert "    input = (" in inline and "    expect = (" in inline and not arrays
    many = reference_test(model, batch=20)
    stored = render_test(many, "Pair", "pair.safetensors", arrays)
    assert sorted(arrays) == ["test.expect.0", "test.expect.1", "test.input.0", "test.input.1"]
    assert 'load("pair.safetensors", "test.input.1")' in stored
    save_file(arrays, str(tmp_path / "pair.safetensors"))
    lyr = tmp_path / "pair.lyr"
    lyr.write_text(f"{source}\n{inline}\n{stored}", encoding="utf-8")
    assert cli.main(["test", str(lyr)]) == 0
    assert "2 passed, 0 failed" in capsys.readouterr().out


def test_the_batch_is_seeded_and_readable() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [], 4, 4, opset=17)
    first, again = reference_test(model), reference_test(model)
    for a, b in zip((*first.inputs, *first.outputs), (*again.inputs, *again.outputs), strict=True):
        np.testing.assert_array_equal(a, b)
    assert isinstance(first, ReferenceTest) and first.dtype == np.float32
    assert np.array_equal(first.drawn[0], np.round(first.drawn[0], 2))  # two decimals
    text = render_test(first, "M", "m.safetensors", {})
    assert "0.13, -0.13, 0.64, 0.1" in text
    assert not np.array_equal(reference_test(model, seed=1).inputs[0], first.inputs[0])
    onnx.checker.check_model(model)
