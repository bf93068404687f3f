"""`layerc import` and `layerc export`: ONNX models built with onnx.helper (Gemm in every form
that maps to a Linear, MatMul + Add) and by torch.onnx.export import, compile and match ONNX
Runtime; exported models pass onnx.checker and match the generated module in ONNX Runtime; every
refusal names the op and the node, exits 1 without a traceback and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import around
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from safetensors.numpy import save_file as save_file_np

from layerc import cli, driver
from layerc.errors import LayercError
from layerc.onnx_io import build_onnx, import_onnx
from layerc.tools.fmt import format_source

F32_TOL = {"rtol": 1.3e-6, "atol": 1e-5}
F64_TOL = {"rtol": 1e-7, "atol": 1e-7}


def session(model_path: Path) -> ort.InferenceSession:
    """A single-threaded ONNX Runtime session: the reference."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def run_ort(model_path: Path, x: np.ndarray) -> np.ndarray:
    sess = session(model_path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def make_model(
    nodes: list,
    initializers: list,
    in_features: int | None,
    out_features: int | None,
    *,
    opset: int = 17,
    elem: int = TensorProto.FLOAT,
    input_shape: list | None = None,
    outputs: list[str] | None = None,
) -> onnx.ModelProto:
    shape = input_shape if input_shape is not None else ["N", in_features]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info(o, elem, ["N", out_features]) for o in (outputs or ["y"])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def save(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return path


def rand(rng: np.random.Generator, *shape: int, dtype=np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def imported_forward(lyr: Path, x: np.ndarray) -> np.ndarray:
    """The imported model computed in float64 from the .lyr's weights file, by NumPy: checks the
    mapping from ONNX to Linear layers without compiling."""
    program, _ = driver.check_file(lyr)
    h = x.astype(np.float64)
    for layer in program.models[0].layers:
        if getattr(layer, "kind", None) == "Linear":
            h = h @ layer.weight.astype(np.float64).T
            if layer.bias is not None:
                h = h + layer.bias
        elif layer.kind == "ReLU":
            h = np.maximum(h, 0)
        else:
            raise AssertionError(layer.kind)
    return h


# --------------------------------------------------------------------------- import, compiled


def gemm_model(rng: np.random.Generator) -> onnx.ModelProto:
    """Gemm with alpha/beta and B as (in, out), LeakyRelu, Gemm with transB and a (1, out) C,
    Softmax over the default (last) axis."""
    return make_model(
        [
            helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], name="g1", alpha=0.5, beta=2.0),
            helper.make_node("LeakyRelu", ["h1"], ["h2"], name="act", alpha=0.1),
            helper.make_node("Gemm", ["h2", "W2", "b2"], ["h3"], name="g2", transB=1),
            helper.make_node("Softmax", ["h3"], ["y"], name="sm"),
        ],
        [
            init("W1", rand(rng, 5, 7)),
            init("b1", rand(rng, 7)),
            init("W2", rand(rng, 4, 7)),
            init("b2", rand(rng, 1, 4)),
        ],
        5,
        4,
    )


def matmul_model(rng: np.random.Generator) -> onnx.ModelProto:
    """MatMul + Add (constant first), Relu, MatMul without bias, Identity, Sigmoid, MatMul + Add,
    Tanh and a trivial Flatten; one weight arrives through a Constant node."""
    weight2 = helper.make_tensor("W2", TensorProto.FLOAT, [8, 6], rand(rng, 8, 6).ravel())
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["m1"], name="mm1"),
            helper.make_node("Add", ["b1", "m1"], ["a1"], name="add1"),
            helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
            helper.make_node("Constant", [], ["W2"], name="const_w2", value=weight2),
            helper.make_node("MatMul", ["r1", "W2"], ["m2"], name="mm2"),
            helper.make_node("Identity", ["m2"], ["i2"], name="id"),
            helper.make_node("Sigmoid", ["i2"], ["s2"], name="sig"),
            helper.make_node("MatMul", ["s2", "W3"], ["m3"], name="mm3"),
            helper.make_node("Add", ["m3", "b3"], ["a3"], name="add3"),
            helper.make_node("Tanh", ["a3"], ["t3"], name="tanh"),
            helper.make_node("Flatten", ["t3"], ["y"], name="flat", axis=1),
        ],
        [
            init("W1", rand(rng, 10, 8)),
            init("b1", rand(rng, 8)),
            init("W3", rand(rng, 6, 3)),
            init("b3", rand(rng, 1, 3)),
        ],
        10,
        3,
        opset=13,
    )


def opset11_float64_model(rng: np.random.Generator) -> onnx.ModelProto:
    """float64; Gemm without C then an Add bias; Softmax with opset-11 semantics (axis 1)."""
    f64 = np.float64
    return make_model(
        [
            helper.make_node("Gemm", ["x", "W"], ["g"], name="gemm", transB=1, alpha=2.0),
            helper.make_node("Add", ["g", "b"], ["a"], name="bias"),
            helper.make_node("Softmax", ["a"], ["y"], name="softmax"),
        ],
        [init("W", rand(rng, 6, 4, dtype=f64)), init("b", rand(rng, 6, dtype=f64))],
        4,
        6,
        opset=11,
        elem=TensorProto.DOUBLE,
    )


def torch_export(net: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    """torch.onnx.export with the TorchScript exporter, the batch axis dynamic (both exporters
    with their default options: tests/test_onnx_exporters.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (x,),
            str(path),
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
            dynamo=False,
        )


def torch_exported_model(folder: Path) -> tuple[Path, torch.nn.Module]:
    """A torch.nn.Sequential through torch.onnx.export (the TorchScript exporter)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 9),
        torch.nn.ReLU(),
        torch.nn.Linear(9, 5),
        torch.nn.LeakyReLU(0.05),
        torch.nn.Linear(5, 4),
        torch.nn.Softmax(dim=-1),
    ).eval()
    path = folder / "from_torch.onnx"
    torch_export(net, torch.zeros(2, 6), path)
    return path, net


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every model above imported and compiled once: name -> (onnx path, module, class name)."""
    folder = tmp_path_factory.mktemp("onnx_import")
    rng = np.random.default_rng(42)
    paths = {
        "gemm": save(gemm_model(rng), folder, "gemm"),
        "matmul_add": save(matmul_model(rng), folder, "matmul_add"),
        "opset11_f64": save(opset11_float64_model(rng), folder, "opset11_f64"),
    }
    paths["from_torch"], torch_net = torch_exported_model(folder)
    out = {"torch_net": torch_net}
    for name, path in paths.items():
        assert cli.main(["import", str(path)]) == 0
        lyr = path.with_suffix(".lyr")
        _, written = driver.compile_file(lyr)
        module = driver.import_module(written[-1])
        out[name] = (path, module, module.__all__[0])
    return out


@pytest.mark.parametrize("name", ["gemm", "matmul_add", "opset11_f64", "from_torch"])
@pytest.mark.parametrize("batch", [1, 7])
def test_imported_models_match_onnx_runtime(imported: dict, name: str, batch: int) -> None:
    path, module, cls = imported[name]
    net = getattr(module, cls)()
    sess = session(path)
    dtype = np.float64 if sess.get_inputs()[0].type == "tensor(double)" else np.float32
    x = np.random.default_rng(batch).standard_normal((batch, net.in_features)).astype(dtype) * 2
    expected = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    got = net(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, **(F64_TOL if dtype == np.float64 else F32_TOL))


def test_torch_exported_model_matches_torch_and_keeps_its_keys(imported: dict) -> None:
    path, module, cls = imported["from_torch"]
    net = getattr(module, cls)()
    torch_net = imported["torch_net"]
    assert sorted(net.state_dict()) == sorted(torch_net.state_dict())
    x = np.random.default_rng(3).standard_normal((5, 6)).astype(np.float32)
    expected = torch_net(torch.from_numpy(x)).detach().numpy()
    torch.testing.assert_close(torch.from_numpy(net(x)), torch.from_numpy(expected))


def test_import_writes_a_lyr_and_one_weights_file(imported: dict) -> None:
    path, _, _ = imported["matmul_add"]
    text = path.with_suffix(".lyr").read_text()
    assert "model MatmulAdd {" in text
    assert text.count('load("matmul_add.safetensors"') == 5  # 3 weights, 2 biases
    for node in ("node 'mm1' (MatMul), node 'add1' (Add)", "node 'mm2' (MatMul)", "'tanh'"):
        assert node in text
    weights = load_file(str(path.with_suffix(".safetensors")))
    assert sorted(weights) == ["0.bias", "0.weight", "2.weight", "4.bias", "4.weight"]
    assert all(a.dtype == np.float32 for a in weights.values())
    text64 = imported["opset11_f64"][0].with_suffix(".lyr").read_text()
    assert "model Opset11F64(dtype=float64) {" in text64


def test_imported_text_is_a_fixed_point_of_fmt(imported: dict, tmp_path: Path) -> None:
    """`layerc import` writes through the printer fmt uses, so fmt leaves what it writes as it
    is: float32 and float64 models, shared weights, layers with tensors (BatchNorm1d, LayerNorm,
    PReLU) and arguments (ELU's alpha, GELU's approximate, Hardtanh's bounds)."""
    lyrs = [imported[name][0].with_suffix(".lyr") for name in ("gemm", "matmul_add", "opset11_f64")]
    lyrs.append(import_onnx(save(shared_model(3, 8), tmp_path, "shared"))[-1])
    for name, layers in TORCH_CHAINS.items():
        (tmp_path / name).mkdir()
        lyrs.append(import_onnx(torch_chain(tmp_path / name, *layers())[0])[-1])
    texts = {lyr.parent.name if lyr.stem == "net" else lyr.stem: lyr.read_text() for lyr in lyrs}
    for text in texts.values():
        assert format_source(text) == text
        assert text.splitlines()[0].startswith("# Imported by layerc ")
    assert "model Opset11F64(dtype=float64) {" in texts["opset11_f64"]
    assert texts["shared"].count('weight = load("shared.safetensors", "0.weight")') == 3
    assert "    PReLU(num_parameters=6) {\n        weight = load(" in texts["norms"]
    assert '    GELU(approximate="tanh")\n' in texts["smooth"]
    assert "    Hardtanh(min_val=-2.0)\n" in texts["hard"]


# --------------------------------------------------------------------------- Gemm forms


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.25, -3.0), (-2.0, 0.0)])
@pytest.mark.parametrize("c_shape", [None, (), (1,), (4,), (1, 4), (1, 1)])
def test_every_gemm_form_maps_to_a_linear(
    tmp_path: Path, trans_b: int, alpha: float, beta: float, c_shape: tuple | None
) -> None:
    rng = np.random.default_rng(7)
    b = rand(rng, 4, 3) if trans_b else rand(rng, 3, 4)
    inputs = ["x", "B"] + ([] if c_shape is None else ["C"])
    inits = [init("B", b)] + ([] if c_shape is None else [init("C", rand(rng, *c_shape))])
    node = helper.make_node(
        "Gemm", inputs, ["h"], name="gemm", alpha=alpha, beta=beta, transB=trans_b
    )
    relu = helper.make_node("Relu", ["h"], ["y"], name="relu")
    path = save(make_model([node, relu], inits, 3, 4), tmp_path, "g")
    lyr = import_onnx(path)[-1]
    x = rand(rng, 6, 3)
    np.testing.assert_allclose(imported_forward(lyr, x), run_ort(path, x), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- export


EXPORT_SOURCE = """
model Block{opt} {{
    fc = Linear(6, 5) {{ init = xavier_uniform(seed=1) }}
    LeakyReLU(negative_slope=0.2)
}}
model Net{opt} {{
    enc = Block
    Sigmoid()
    Tanh()
    Identity()
    ReLU()
    mid = Linear(5, 5, bias=false) {{ init = kaiming_uniform(seed=2) }}
    ReLU()
    head = Linear(5, 4) {{ init = uniform(seed=3) }}
    Softmax(dim=-1)
}}
"""


@pytest.fixture(scope="module", params=["float32", "float64"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp(f"export_{request.param}")
    opt = "" if request.param == "float32" else "(dtype=float64)"
    src = folder / "net.lyr"
    src.write_text(EXPORT_SOURCE.format(opt=opt))
    out = folder / "net.onnx"
    assert cli.main(["export", str(src), "--onnx", str(out), "--model", "Net"]) == 0
    _, written = driver.compile_file(src)
    module = driver.import_module(written[-1])
    return src, out, module, np.dtype(request.param)


def test_export_is_valid_onnx_with_a_dynamic_batch(exported) -> None:
    _, out, _, dtype = exported
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain == ""] == [17]
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value")
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    assert model.graph.input[0].type.tensor_type.elem_type == elem
    names = sorted(i.name for i in model.graph.initializer)
    assert names == ["enc.fc.bias", "enc.fc.weight", "head.bias", "head.weight", "mid.weight"]


@pytest.mark.parametrize("batch", [0, 1, 9])
def test_export_matches_the_generated_module_in_onnx_runtime(exported, batch: int) -> None:
    _, out, module, dtype = exported
    net = module.Net()
    x = (np.random.default_rng(batch).standard_normal((batch, 6)) * 3).astype(dtype)
    expected = run_ort(out, x)
    tol = F32_TOL if dtype == np.float32 else F64_TOL
    np.testing.assert_allclose(net(x), expected, **tol)


def test_export_is_deterministic_and_round_trips_through_import(exported, tmp_path: Path) -> None:
    src, out, module, _ = exported
    again = tmp_path / "again.onnx"
    assert cli.main(["export", str(src), "--onnx", str(again), "--model", "Net"]) == 0
    assert again.read_bytes() == out.read_bytes()
    lyr = import_onnx(out, tmp_path / "back.lyr")[-1]
    program, written = driver.compile_file(lyr)
    back = getattr(driver.import_module(written[-1]), program.models[-1].name)()
    state = module.Net().state_dict()
    assert back.state_dict().keys() == state.keys()  # nested as it was: enc.fc, mid, head
    for key, value in back.state_dict().items():
        np.testing.assert_array_equal(value, state[key])


def test_export_picks_the_model_no_other_model_uses(
    exported, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """As `layerc run` does: without --model, the one top-level model (Net, not Block); with two
    top-level models, a usage error that names them."""
    src, out, _, _ = exported
    default = tmp_path / "default.onnx"
    assert cli.main(["export", str(src), "--onnx", str(default)]) == 0
    assert default.read_bytes() == out.read_bytes()
    two = tmp_path / "two.lyr"
    two.write_text(src.read_text() + "model Other { Linear(2, 2) { init = zeros() } }\n")
    assert cli.main(["export", str(two), "--onnx", str(tmp_path / "two.onnx")]) == 2
    err = capsys.readouterr().err
    assert "several models that no other model uses (Net, Other): choose one with --model" in err
    assert not (tmp_path / "two.onnx").exists()


def test_export_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "two.lyr"
    src.write_text(EXPORT_SOURCE.format(opt=""))
    out = tmp_path / "two.onnx"
    cases = [
        (
            ["export", str(src), "--onnx", str(out), "--model", "Nett"],
            2,
            "no model 'Nett'; did you mean 'Net'?",
        ),
        (
            ["export", str(src), "--onnx", str(src), "--model", "Net"],
            1,
            "is the source file itself",
        ),
        (
            ["export", str(src), "--onnx", str(tmp_path / "no" / "x.onnx"), "--model", "Net"],
            1,
            "cannot write",
        ),
    ]
    for argv, code, needle in cases:
        assert cli.main(argv) == code
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.lyr"]


def test_build_onnx_writes_every_kind() -> None:
    """Every kind of the table exports (as its op or a subgraph) and passes onnx.checker with
    full_check; the opset is 17 unless an op needs a newer one (Mish 18, Gelu 20)."""
    from layerc import syntax
    from layerc.check import check
    from layerc.kinds import KINDS

    for kind in KINDS:
        if kind == "Linear":
            continue
        args = {"LeakyReLU": "(0.3)", "BatchNorm1d": "(2)", "LayerNorm": "(2)"}.get(kind, "()")
        text = f"model M {{ fc = Linear(2, 2, bias=false) {{ init = zeros() }}; a = {kind}{args} }}"
        program = check(syntax.parse(text, "m.lyr"), Path("."))
        proto = build_onnx(program.models[0], "m.lyr")
        expected = {"GELU": 20, "Mish": 18}.get(kind, 17)
        assert [o.version for o in proto.opset_import] == [expected], kind


def test_batch_norm_without_running_stats_is_refused() -> None:
    from layerc import syntax
    from layerc.check import check

    text = "model M { fc = Linear(2, 2) { init = zeros() }; bn = BatchNorm1d(2, track_running_stats=false) }"
    program = check(syntax.parse(text, "m.lyr"), Path("."))
    with pytest.raises(
        LayercError, match="cannot write layer 'bn'.*BatchNorm1d without running_mean"
    ) as info:
        build_onnx(program.models[0], "m.lyr")
    assert str(info.value.loc) == f"m.lyr:1:{text.index('bn =') + 1}"  # at the layer


# --------------------------------------------------------------------------- every kind


def _values(rng: np.random.Generator, n: int, low: float, high: float) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in rng.uniform(low, high, n)) + "]"


_R = np.random.default_rng(5)
# (name, .lyr layer, torch layer): each in `model M(input=[8]) { a = LAYER; fc = Linear(8, 3) }`
KIND_CASES = [
    ("ReLU", "ReLU()", "ReLU()"),
    ("Sigmoid", "Sigmoid()", "Sigmoid()"),
    ("Tanh", "Tanh()", "Tanh()"),
    ("Identity", "Identity()", "Identity()"),
    ("LeakyReLU", "LeakyReLU(0.3)", "LeakyReLU(0.3)"),
    ("Softmax", "Softmax(dim=-1)", "Softmax(dim=-1)"),
    ("Dropout", "Dropout(p=0.3)", "Dropout(p=0.3)"),
    ("AlphaDropout", "AlphaDropout()", "AlphaDropout()"),
    ("Flatten", "Flatten()", "Flatten()"),
    (
        "BatchNorm1d",
        f"BatchNorm1d(8, eps=0.001) {{ weight = {_values(_R, 8, -2, 2)}; bias = "
        f"{_values(_R, 8, -1, 1)}; running_mean = {_values(_R, 8, -1, 1)}; running_var = "
        f"{_values(_R, 8, 0.1, 3)} }}",
        "BatchNorm1d(8, eps=0.001)",
    ),
    (
        "BatchNorm1d-no-affine",
        f"BatchNorm1d(8, affine=false) {{ running_mean = {_values(_R, 8, -1, 1)}; "
        f"running_var = {_values(_R, 8, 0.1, 3)} }}",
        "BatchNorm1d(8, affine=False)",
    ),
    (
        "LayerNorm",
        f"LayerNorm(8) {{ weight = {_values(_R, 8, -2, 2)}; bias = {_values(_R, 8, -1, 1)} }}",
        "LayerNorm(8)",
    ),
    (
        "LayerNorm-no-affine",
        "LayerNorm(8, eps=0.01, elementwise_affine=false)",
        "LayerNorm(8, eps=0.01, elementwise_affine=False)",
    ),
    (
        "LayerNorm-no-bias",
        f"LayerNorm(8, bias=false) {{ weight = {_values(_R, 8, -2, 2)} }}",
        "LayerNorm(8, bias=False)",
    ),
    ("PReLU", "PReLU(init=0.1)", "PReLU(init=0.1)"),
    ("PReLU-8", f"PReLU(8) {{ weight = {_values(_R, 8, -1, 1)} }}", "PReLU(8)"),
    ("GELU", "GELU()", "GELU()"),
    ("GELU-tanh", 'GELU(approximate="tanh")', 'GELU(approximate="tanh")'),
    ("ELU", "ELU(alpha=0.5)", "ELU(alpha=0.5)"),
    ("CELU", "CELU(alpha=2.0)", "CELU(alpha=2.0)"),
    ("Softplus", "Softplus()", "Softplus()"),
    ("Softplus-beta", "Softplus(beta=2.0, threshold=1.5)", "Softplus(beta=2.0, threshold=1.5)"),
    (
        "Softplus-negative",
        "Softplus(beta=-0.5, threshold=2.0)",
        "Softplus(beta=-0.5, threshold=2.0)",
    ),
    ("Hardtanh", "Hardtanh(min_val=-2.0, max_val=0.5)", "Hardtanh(min_val=-2.0, max_val=0.5)"),
    ("SiLU", "SiLU()", "SiLU()"),
    ("Mish", "Mish()", "Mish()"),
    ("SELU", "SELU()", "SELU()"),
    ("ReLU6", "ReLU6()", "ReLU6()"),
    ("Hardsigmoid", "Hardsigmoid()", "Hardsigmoid()"),
    ("Hardswish", "Hardswish()", "Hardswish()"),
    ("LogSigmoid", "LogSigmoid()", "LogSigmoid()"),
    ("Softsign", "Softsign()", "Softsign()"),
    ("LogSoftmax", "LogSoftmax(dim=-1)", "LogSoftmax(dim=-1)"),
    ("Hardshrink", "Hardshrink(lambd=0.75)", "Hardshrink(lambd=0.75)"),
    ("Hardshrink-negative", "Hardshrink(-0.5)", "Hardshrink(-0.5)"),
    ("Softshrink", "Softshrink(lambd=0.75)", "Softshrink(lambd=0.75)"),
    ("Softshrink-zero", "Softshrink(0.0)", "Softshrink(0.0)"),
    ("Tanhshrink", "Tanhshrink()", "Tanhshrink()"),
]
# What each exports as that import reads back as another kind, or not at all
ROUND_TRIP = {
    "Dropout": None,  # exported as Identity, which imports as no layer
    "AlphaDropout": None,
    "Identity": None,
    "Flatten": None,
    # (the subgraphs of Softplus with a beta, SiLU, LogSigmoid and Tanhshrink are the kinds'
    # ONNX patterns: they import as the kind)
    # Shrink with bias = lambd = 0 is also a Hardshrink(0), the first kind that matches: the
    # identity, as Softshrink(0) is
    "Softshrink-zero": "Hardshrink",
}
# Values on and around the points where the kinds' formulas switch
SWITCHES = [0.0, -3.0, 3.0, 6.0, -1.0, 1.0, 0.75, 0.5, -2.0, 2.0, 20.0, 10.0, -4.0, 40.0, -40.0]
SWITCHES += [-0.75, -0.5]


def kind_source(layer: str, opt: str = "") -> str:
    options = "(input=[8], dtype=float64)" if opt else "(input=[8])"
    return f"model M{options} {{\n    a = {layer}\n    fc = Linear(8, 3) {{ init = uniform(seed=4) }}\n}}\n"


def kind_inputs(batch: int, dtype) -> np.ndarray:
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 8)) * 6
    switches = np.array(SWITCHES + [v + d for v in SWITCHES for d in (1e-3, -1e-3)])
    flat = x.reshape(-1)
    flat[: min(flat.size, switches.size)] = switches[: flat.size]
    return x.astype(dtype)


@pytest.fixture(scope="module")
def kind_models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each case compiled, exported and (where it round-trips) imported and compiled again."""
    out = {}
    for name, layer, torch_layer in KIND_CASES:
        for dtype in ("float32", "float64"):
            folder = tmp_path_factory.mktemp(f"kind_{name}_{dtype}")
            src = folder / "m.lyr"
            src.write_text(kind_source(layer, "" if dtype == "float32" else "f64"))
            onnx_path = folder / "m.onnx"
            assert cli.main(["export", str(src), "--onnx", str(onnx_path)]) == 0
            _, written = driver.compile_file(src)
            module = driver.import_module(written[-1]).M()
            torch_net = torch.nn.Sequential()
            torch_net.add_module("a", eval(f"torch.nn.{torch_layer}"))
            torch_net.add_module("fc", torch.nn.Linear(8, 3))
            torch_net = torch_net.to(getattr(torch, dtype)).eval()
            torch_net.load_state_dict(
                {k: torch.as_tensor(np.asarray(v)) for k, v in module.state_dict().items()}
            )
            out[name, dtype] = (folder, onnx_path, module, torch_net, np.dtype(dtype))
    return out


def ort_or_skip(path: Path, x: np.ndarray) -> np.ndarray:
    try:
        return run_ort(path, x)
    except Exception as exc:  # an op ONNX Runtime has no kernel for in this type
        if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc):
            pytest.skip(f"ONNX Runtime cannot run this in {x.dtype}: {str(exc)[:120]}")
        raise


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", [case[0] for case in KIND_CASES])
def test_every_kind_exports_and_matches_onnx_runtime_and_torch(
    kind_models: dict, name: str, dtype: str
) -> None:
    _, onnx_path, module, torch_net, dt = kind_models[name, dtype]
    model = onnx.load(onnx_path)
    onnx.checker.check_model(model, full_check=True)
    names = {i.name for i in model.graph.initializer}
    assert {"fc.weight", "fc.bias"} <= names
    assert {k for k in module.state_dict() if not k.endswith("num_batches_tracked")} <= names
    tol = F32_TOL if dt == np.float32 else F64_TOL
    for batch in (1, 16):
        x = kind_inputs(batch, dt)
        ours = np.asarray(module(x))
        with torch.no_grad():
            expected = torch_net(torch.from_numpy(x))
        torch.testing.assert_close(torch.from_numpy(ours), expected, **tol)
        got = ort_or_skip(onnx_path, x)
        torch.testing.assert_close(torch.from_numpy(got), expected, **tol)


@pytest.mark.parametrize("name", [case[0] for case in KIND_CASES])
def test_every_kind_round_trips_through_import(kind_models: dict, name: str) -> None:
    folder, onnx_path, module, _, dt = kind_models[name, "float32"]
    lyr = folder / "back.lyr"
    kind = name.split("-")[0]
    expect = ROUND_TRIP.get(name, kind)
    if expect == "refused":
        with pytest.raises(LayercError, match="unsupported ONNX operator"):
            import_onnx(onnx_path, lyr)
        return
    import_onnx(onnx_path, lyr)
    program, written = driver.compile_file(lyr)
    kinds = [layer.kind for layer in program.models[0].layers]
    assert kinds == ([] if expect is None else [expect]) + ["Linear"], kinds
    back = getattr(driver.import_module(written[-1]), program.models[0].name)()
    assert back.state_dict().keys() == module.state_dict().keys()  # the layers' names kept
    x = kind_inputs(16, dt)
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(back(x))), torch.from_numpy(np.asarray(module(x))), **F32_TOL
    )


def torch_chain(
    folder: Path, *layers: torch.nn.Module, features: int = 6
) -> tuple[Path, torch.nn.Module]:
    """nn.Sequential(Linear, *layers, Linear) through torch.onnx.export's TorchScript exporter at
    opset 20, the batch dynamic (both exporters with their default options:
    tests/test_onnx_exporters.py)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, features), *layers, torch.nn.Linear(features, 3))
    for module in net.modules():  # running statistics that are not the identity
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.2, 2)
    net.eval()
    path = folder / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(2, 4),),
            str(path),
            dynamo=False,
            opset_version=20,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )
    return path, net


TORCH_CHAINS = {
    "norms": lambda: (
        torch.nn.BatchNorm1d(6),
        torch.nn.GELU(),
        torch.nn.Dropout(0.2),
        torch.nn.LayerNorm(6),
        torch.nn.ELU(0.5),
        torch.nn.PReLU(6),
    ),
    "hard": lambda: (
        torch.nn.Hardswish(),
        torch.nn.Hardsigmoid(),
        torch.nn.ReLU6(),
        torch.nn.Hardtanh(-2.0, 1.0),
        torch.nn.PReLU(),
    ),
    "smooth": lambda: (
        torch.nn.CELU(2.0),
        torch.nn.SELU(),
        torch.nn.Softplus(),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.LayerNorm(6, elementwise_affine=False),
        torch.nn.LogSoftmax(dim=-1),
    ),
}


@pytest.mark.parametrize("name", sorted(TORCH_CHAINS))
def test_torch_exported_kinds_import_and_match_torch(tmp_path: Path, name: str) -> None:
    layers = TORCH_CHAINS[name]()
    path, net = torch_chain(tmp_path, *layers)
    lyr = import_onnx(path, tmp_path / "net.lyr")[-1]
    program, written = driver.compile_file(lyr)
    kinds = [layer.kind for layer in program.models[0].layers]
    expected = [  # an Identity where the exporter left out a Dropout, keeping the positions
        "Linear",
        *("Identity" if isinstance(m, torch.nn.Dropout) else type(m).__name__ for m in layers),
    ]
    assert kinds == [*expected, "Linear"]
    module = driver.import_module(written[-1])
    ours = module.__dict__[program.models[0].name]()
    assert ours.state_dict().keys() == net.state_dict().keys()
    x = kind_inputs(16, np.float32)[:, :4]
    with torch.no_grad():
        expected_out = net(torch.from_numpy(x))
    torch.testing.assert_close(torch.from_numpy(np.asarray(ours(x))), expected_out, **F32_TOL)
    torch.testing.assert_close(torch.from_numpy(run_ort(path, x)), expected_out, **F32_TOL)


def after_linear(node: onnx.NodeProto, inits: list, opset: int = 17) -> onnx.ModelProto:
    """Gemm(x: 3 -> 4) then `node` from 'h' to 'y'."""
    gemm = helper.make_node("Gemm", ["x", "W", "C"], ["h"], name="fc")
    w = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    c = np.full(4, 0.5, np.float32)
    return make_model([gemm, node], [init("W", w), init("C", c), *inits], 3, 4, opset=opset)


@pytest.mark.parametrize(
    ("node", "inits", "opset", "layer"),
    [
        (helper.make_node("Clip", ["h"], ["y"], min=0.0, max=6.0), [], 10, "ReLU6()"),
        (
            helper.make_node("Clip", ["h"], ["y"], min=-2.0, max=0.5),
            [],
            10,
            "Hardtanh(min_val=-2.0, max_val=0.5)",
        ),
        (
            helper.make_node("Clip", ["h", "lo", "hi"], ["y"]),
            [init("lo", np.array(-1, np.float32)), init("hi", np.array(1, np.float32))],
            17,
            "Hardtanh()",
        ),
        (helper.make_node("HardSigmoid", ["h"], ["y"], alpha=1 / 6), [], 17, "Hardsigmoid()"),
        (helper.make_node("Elu", ["h"], ["y"]), [], 17, "ELU()"),
        (helper.make_node("Elu", ["h"], ["y"], alpha=0.25), [], 17, "ELU(alpha=0.25)"),
        (
            helper.make_node("Gelu", ["h"], ["y"], approximate="tanh"),
            [],
            20,
            'GELU(approximate="tanh")',
        ),
        (helper.make_node("Selu", ["h"], ["y"]), [], 17, "SELU()"),
        (helper.make_node("Softplus", ["h"], ["y"]), [], 17, "Softplus()"),
        (helper.make_node("LogSoftmax", ["h"], ["y"], axis=1), [], 11, "LogSoftmax()"),
        (
            helper.make_node("Dropout", ["h", "r"], ["y"]),
            [init("r", np.array(0.25, np.float32))],
            17,
            "Dropout(p=0.25)",
        ),
        (
            helper.make_node("LayerNormalization", ["h", "s"], ["y"], epsilon=1e-3),
            [init("s", np.full(4, 2, np.float32))],
            17,
            "LayerNorm(normalized_shape=4, eps=0.001, bias=false) {",
        ),
        # Shrink is a Hardshrink with bias 0 and a Softshrink with bias = lambd
        (helper.make_node("Shrink", ["h"], ["y"]), [], 9, "Hardshrink()"),
        (helper.make_node("Shrink", ["h"], ["y"], lambd=0.25), [], 17, "Hardshrink(lambd=0.25)"),
        (
            helper.make_node("Shrink", ["h"], ["y"], bias=0.0, lambd=-1.0),
            [],
            17,
            "Hardshrink(lambd=-1.0)",
        ),
        (helper.make_node("Shrink", ["h"], ["y"], bias=0.5), [], 17, "Softshrink()"),
        (
            helper.make_node("Shrink", ["h"], ["y"], bias=0.3, lambd=0.3),
            [],
            9,
            "Softshrink(lambd=0.3)",
        ),
        (
            helper.make_node("Shrink", ["h"], ["y"], bias=0.0, lambd=0.0),
            [],
            17,
            "Hardshrink(lambd=0.0)",
        ),
    ],
)
def test_single_ops_import_as_kinds(tmp_path: Path, node, inits, opset: int, layer: str) -> None:
    model = after_linear(node, inits, opset)
    onnx.checker.check_model(model, full_check=True)
    path = save(model, tmp_path, "m")
    lyr = import_onnx(path)[-1]
    assert f"    {layer}\n" in lyr.read_text()
    program, written = driver.compile_file(lyr)
    net = getattr(driver.import_module(written[-1]), program.models[0].name)()
    x = kind_inputs(9, np.float32)[:, :3]
    expected = ort_or_skip(path, x)
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(net(x))), torch.from_numpy(expected), **F32_TOL
    )


@pytest.mark.parametrize(
    ("node", "inits", "opset", "needles"),
    [
        (
            helper.make_node("HardSigmoid", ["h"], ["y"], name="hs"),
            [],
            17,
            ("node 'hs' (HardSigmoid) has attributes (alpha=0.2", "Hardsigmoid"),
        ),
        (
            helper.make_node("Clip", ["h", "lo"], ["y"], name="c"),
            [init("lo", np.array(0, np.float32))],
            17,
            ("node 'c' (Clip) has no max bound",),
        ),
        (
            helper.make_node("LogSoftmax", ["h"], ["y"], name="ls", axis=0),
            [],
            17,
            ("node 'ls' (LogSoftmax) takes logsoftmax over axis 0",),
        ),
        (
            helper.make_node("LayerNormalization", ["h", "s"], ["y"], name="ln", axis=0),
            [init("s", np.ones(4, np.float32))],
            17,
            ("node 'ln' (LayerNormalization) normalises from axis 0",),
        ),
        (
            helper.make_node("PRelu", ["h", "s"], ["y"], name="pr"),
            [init("s", np.ones(3, np.float32))],
            17,
            ("node 'pr' (PRelu) has 3 values per input but its input has 4",),
        ),
        (
            helper.make_node(
                "BatchNormalization", ["h", "s", "b", "m", "v"], ["y"], name="bn", training_mode=1
            ),
            [init(n, np.ones(4, np.float32)) for n in "sbmv"],
            17,
            ("node 'bn' (BatchNormalization) is in training mode",),
        ),
        (
            helper.make_node("Gelu", ["h"], ["y"], name="g", approximate='x") }'),
            [],
            20,
            ("node 'g' (Gelu): approximate = ", "is not a value layerc reads"),
        ),
        (
            # arguments the checker would refuse are refused at import, naming the node
            helper.make_node("Celu", ["h"], ["y"], name="c", alpha=0.0),
            [],
            17,
            (
                "node 'c' (Celu) has attributes (alpha=0.0) that no layer kind computes (layerc "
                "maps Celu to CELU; as a CELU, alpha must not be zero)",
            ),
        ),
        (
            helper.make_node(
                "BatchNormalization", ["h", "s", "b", "m", "v"], ["y"], name="bn", epsilon=-1.0
            ),
            [init(n, np.ones(4, np.float32)) for n in "sbmv"],
            17,
            (
                "node 'bn' (BatchNormalization) reads as a BatchNorm1d that layerc refuses: eps "
                "must be >= 0, not -1.0",
            ),
        ),
        (
            helper.make_node("Shrink", ["h"], ["y"], name="s", bias=0.25, lambd=0.5),
            [],
            17,
            (
                "node 's' (Shrink) has attributes (bias=0.25, lambd=0.5) that no layer kind "
                "computes (layerc maps Shrink to Hardshrink, Softshrink)",
            ),
        ),
        (
            helper.make_node("Shrink", ["h"], ["y"], name="s", bias=-0.5),
            [],
            17,
            ("node 's' (Shrink) has attributes (bias=-0.5, lambd=0.5) that no layer kind",),
        ),
        (
            # bias = lambd, as a Softshrink's, but torch's Softshrink takes no negative lambd
            # (and this Shrink computes x - 0.5 below 0.5, x + 0.5 above: no shrink at all)
            helper.make_node("Shrink", ["h"], ["y"], name="s", bias=-0.5, lambd=-0.5),
            [],
            17,
            (
                "node 's' (Shrink) has attributes (bias=-0.5, lambd=-0.5) that no layer kind "
                "computes (layerc maps Shrink to Hardshrink, Softshrink; as a Softshrink, lambd "
                "must be >= 0, not -0.5)",
            ),
        ),
    ],
)
def test_single_ops_that_no_kind_computes_are_refused(
    tmp_path: Path, capsys, node, inits, opset: int, needles: tuple[str, ...]
) -> None:
    model = after_linear(node, inits, opset)
    assert_import_refused(tmp_path, model, capsys, *needles)


# --------------------------------------------------------------------------- refusals


def assert_import_refused(
    folder: Path,
    model: onnx.ModelProto | bytes,
    capsys,
    *needles: str,
    argv_extra: tuple[str, ...] = (),
) -> None:
    """`layerc import` exits 1 with a file-level message holding the needles; no traceback,
    nothing written."""
    path = folder / "bad.onnx"
    if isinstance(model, bytes):
        path.write_bytes(model)
    else:
        path.write_bytes(model.SerializeToString())
    before = sorted(p.name for p in folder.iterdir())
    assert cli.main(["import", str(path), *argv_extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == before


def relu_after(node, inits, **kw) -> onnx.ModelProto:
    return make_model([node, helper.make_node("Relu", ["h"], ["y"], name="r")], inits, 3, 4, **kw)


W34 = np.ones((3, 4), np.float32)


def test_unsupported_ops_are_refused_by_name(tmp_path: Path, capsys) -> None:
    conv = make_model(
        [
            helper.make_node("Gemm", ["x", "W"], ["h"], name="fc"),
            helper.make_node("Conv", ["h", "K"], ["y"], name="conv_7"),
        ],
        [init("W", W34), init("K", np.ones((1, 1, 1), np.float32))],
        3,
        4,
    )
    assert_import_refused(
        tmp_path, conv, capsys, "unsupported ONNX operator 'Conv'", "node 'conv_7'"
    )
    custom = make_model(
        [helper.make_node("Fancy", ["x"], ["y"], name="f", domain="com.x")], [], 3, 3
    )
    custom.opset_import.append(helper.make_opsetid("com.x", 1))
    assert_import_refused(tmp_path, custom, capsys, "com.x.Fancy", "node 'f'")
    sine = relu_after(helper.make_node("Sin", ["x"], ["h"], name="sq"), [])
    assert_import_refused(tmp_path, sine, capsys, "'Sin'", "node 'sq'")


@pytest.mark.parametrize(
    ("nodes", "inits", "needles"),
    [
        (
            [helper.make_node("Gemm", ["x", "W"], ["h"], name="t", transA=1)],
            [init("W", W34)],
            ("node 't' (Gemm) has transA=1",),
        ),
        (
            [helper.make_node("Gemm", ["x", "W", "C"], ["h"], name="c")],
            [init("W", W34), init("C", np.ones((5, 4), np.float32))],
            ("the added tensor 'C' has shape (5, 4)",),
        ),
        (
            [helper.make_node("MatMul", ["W", "x"], ["h"], name="wx")],
            [init("W", np.ones((4, 3), np.float32))],
            ("node 'wx' (MatMul) does not take one value as its first input",),
        ),
        (
            [
                helper.make_node("Transpose", ["W"], ["Wt"], name="t", perm=[1, 0, 2]),
                helper.make_node("MatMul", ["x", "Wt"], ["h"], name="mm"),
            ],
            [init("W", np.ones((4, 3), np.float32))],
            ("node 't' (Transpose) cannot transpose tensor 'W' of shape (4, 3) by [1, 0, 2]",),
        ),
        (
            [
                helper.make_node("Gemm", ["x", "W"], ["h0"], name="g"),
                helper.make_node("Relu", ["h0"], ["h1"], name="r0"),
                helper.make_node("Add", ["h1", "b"], ["h"], name="late_add"),
            ],
            [init("W", W34), init("b", np.ones(4, np.float32))],
            ("node 'late_add' (Add) combines a value with a constant of shape (4,)",),
        ),
        (
            [
                helper.make_node("Gemm", ["x", "W"], ["h0"], name="g"),
                helper.make_node("Softmax", ["h0"], ["h"], name="sm0", axis=0),
            ],
            [init("W", W34)],
            ("node 'sm0' (Softmax) takes softmax over axis 0",),
        ),
        (
            [
                helper.make_node("Gemm", ["x", "W"], ["h0"], name="g"),
                helper.make_node("Flatten", ["h0"], ["h"], name="fl", axis=0),
            ],
            [init("W", W34)],
            ("node 'fl' (Flatten) flattens at axis 0",),
        ),
        (
            [helper.make_node("Gemm", ["x", "W"], ["h"], name="big")],
            [init("W", np.ones((5, 4), np.float32))],
            ("node 'big' (Gemm) takes 5 features but the graph input gives 3",),
        ),
        (
            [helper.make_node("Gemm", ["x", "W"], ["h"], name="g", transB=0)],
            [init("W", np.array([[1, np.inf, 0, 0]] * 3, np.float32))],
            ("tensor 'W' holds values that are not finite",),
        ),
        (
            [
                helper.make_node("Gemm", ["x", "W"], ["h0"], name="g"),
                helper.make_node("LeakyRelu", ["h0"], ["h"], name="lr", alpha=0.1, beta=2.0),
            ],
            [init("W", W34)],
            ("not a valid ONNX model: Unrecognized attribute: beta",),
        ),
    ],
)
def test_graphs_that_are_not_a_chain_of_linears_are_refused(
    tmp_path: Path, capsys, nodes: list, inits: list, needles: tuple
) -> None:
    model = make_model([*nodes, helper.make_node("Relu", ["h"], ["y"], name="end")], inits, 3, None)
    assert_import_refused(tmp_path, model, capsys, *needles)


def test_opset11_softmax_over_axis_0_is_refused(tmp_path: Path, capsys) -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"], name="g"),
        helper.make_node("Softmax", ["h"], ["y"], name="s", axis=0),
    ]
    model = make_model(nodes, [init("W", W34)], 3, 4, opset=11)
    assert_import_refused(tmp_path, model, capsys, "node 's' (Softmax) takes softmax over axis 0")


def test_inputs_and_outputs_that_do_not_fit_are_refused(tmp_path: Path, capsys) -> None:
    gemm = helper.make_node("Gemm", ["x", "W"], ["y"], name="g")
    three_d = make_model([gemm], [init("W", W34)], 3, 4, input_shape=["N", 2, 3])
    assert_import_refused(
        tmp_path,
        three_d,
        capsys,
        "node 'g' (Gemm) takes (batch, features) values, but its input has samples of shape (2, 3)",
    )
    one_d = make_model([gemm], [init("W", W34)], 3, 4, input_shape=["N"])
    assert_import_refused(tmp_path, one_d, capsys, "graph input 'x' has 1 dimension;")
    unsized = make_model([gemm], [init("W", W34)], 3, 4, input_shape=["N", "C", 3])
    assert_import_refused(tmp_path, unsized, capsys, "has a sample axis without a fixed size")
    ints = make_model([helper.make_node("Relu", ["x"], ["y"])], [], 3, 3, elem=TensorProto.INT32)
    assert_import_refused(tmp_path, ints, capsys, "graph input 'x' is int32")
    unknown_output = make_model(
        [helper.make_node("Gemm", ["x", "W"], ["h"], name="g")], [init("W", W34)], 3, 4,
        outputs=["h", "nowhere"],
    )  # fmt: skip
    assert_import_refused(
        tmp_path, unknown_output, capsys, "output 'nowhere' is not an output of any node"
    )
    unsized_relu = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [], None, None)
    assert_import_refused(tmp_path, unsized_relu, capsys, "has no fixed feature size")
    good = relu_after(helper.make_node("Gemm", ["x", "W"], ["h"], name="g"), [init("W", W34)])
    assert_import_refused(
        tmp_path, good, capsys, "must be a .lyr file", argv_extra=("-o", str(tmp_path / "out.py"))
    )


def test_external_data_is_refused_without_reading_it(tmp_path: Path, capsys) -> None:
    model = relu_after(helper.make_node("Gemm", ["x", "W"], ["h"], name="g"), [init("W", W34)])
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../../../etc/passwd"), ("offset", "0"), ("length", "48")):
        tensor.external_data.add(key=key, value=value)
    needle = "tensor 'W' is stored in '../../../../etc/passwd', a path with a '..' component"
    assert_import_refused(tmp_path, model, capsys, needle)


def test_files_that_are_not_onnx_models_are_refused(tmp_path: Path, capsys) -> None:
    assert_import_refused(tmp_path, b"\x08\x07garbage\xff\xff", capsys, "not a valid ONNX model")
    assert_import_refused(tmp_path, b"", capsys, "not a valid ONNX model")
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, needle in [
        (["import", "/dev/zero", "-o", str(tmp_path / "z.lyr")], "is not a regular file"),
        (["import", str(tmp_path / "missing.onnx")], "No such file"),
        (["import", str(tmp_path)], "is a directory, not an ONNX model"),
    ]:
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_fifo_onnx_is_refused_without_hanging(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.onnx")
    result = subprocess.run(
        [sys.executable, "-m", "layerc.cli", "import", "pipe.onnx"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("pipe.onnx: is not a regular file")
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.onnx"]


def test_import_error_leaves_earlier_output_untouched(tmp_path: Path, capsys) -> None:
    good = relu_after(helper.make_node("Gemm", ["x", "W"], ["h"], name="g"), [init("W", W34)])
    path = save(good, tmp_path, "m")
    assert cli.main(["import", str(path)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad = relu_after(
        helper.make_node("Gemm", ["x", "W"], ["h"], name="g", transA=1), [init("W", W34)]
    )
    onnx.save(bad, path)
    before[path.name] = path.read_bytes()
    assert cli.main(["import", str(path)]) == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(LayercError):
        import_onnx(path)


def test_import_replaces_its_own_output_but_never_the_users_files(tmp_path: Path, capsys) -> None:
    good = relu_after(helper.make_node("Gemm", ["x", "W"], ["h"], name="g"), [init("W", W34)])
    path = save(good, tmp_path, "m")
    assert cli.main(["import", str(path)]) == 0
    assert cli.main(["import", str(path)]) == 0  # its own output: replaced
    capsys.readouterr()
    users = tmp_path / "users.safetensors"
    save_file_np({"w": W34}, str(users))
    (tmp_path / "hand.lyr").write_text("model Hand { Linear(1, 1) { weight = [[1]] } }\n")
    cases = [("users.lyr", "users.safetensors"), ("hand.lyr", "hand.lyr")]
    for output, victim in cases:
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        assert cli.main(["import", str(path), "-o", str(tmp_path / output)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"{tmp_path / victim}: would replace this file"), err
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_missing_onnx_package_is_a_clear_error(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(
        relu_after(helper.make_node("Gemm", ["x", "W"], ["h"]), [init("W", W34)]), tmp_path, "m"
    )
    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` sees when it is absent
    assert cli.main(["import", str(path)]) == 1
    err = capsys.readouterr().err
    assert 'need the onnx package: pip install "layerc[onnx]"' in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --------------------------------------------------------------------------- shared initializers


def shared_model(uses: int, size: int = 256) -> onnx.ModelProto:
    """A chain of `uses` MatMul + Add pairs and two Gemm (transB=1) nodes that all take one
    weight W (a permutation, so values stay exact) and one bias b: a small file whose weights,
    copied for every use, would be `uses + 2` times its size."""
    rng = np.random.default_rng(11)
    w = np.eye(size, dtype=np.float32)[rng.permutation(size)]
    b = (rng.standard_normal(size) / 64).astype(np.float32)
    nodes, value = [], "x"
    for i in range(uses):
        nodes.append(helper.make_node("MatMul", [value, "W"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Add", [f"m{i}", "b"], [f"a{i}"], name=f"add{i}"))
        value = f"a{i}"
    nodes.append(helper.make_node("Gemm", [value, "W", "b"], ["g0"], name="g0", transB=1))
    nodes.append(helper.make_node("Gemm", ["g0", "W", "b"], ["y"], name="g1", transB=1))
    return make_model(nodes, [init("W", w), init("b", b)], size, size)


def test_a_shared_initializer_is_read_and_stored_once(tmp_path: Path) -> None:
    """One 256 KB initializer used by 62 nodes: read once, stored once per orientation in the
    weights file (every layer loads it from there), in memory bounded by the file's size, not
    by the number of uses; the imported model computes what ONNX Runtime does."""
    path = save(shared_model(60), tmp_path, "shared")
    assert path.stat().st_size < 300_000
    import onnx.reference  # noqa: F401  (the reference test's code, loaded before counting)

    tracemalloc.start()
    try:
        import_onnx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6_000_000, peak  # 62 float64 copies of W alone would be 32 MB
    weights = load_file(str(tmp_path / "shared.safetensors"))
    # (and the reference test's batch: 3 samples of 256 values in and out)
    assert sorted(weights) == ["0.bias", "0.weight", "60.weight", "test.expect", "test.input"]
    assert (tmp_path / "shared.safetensors").stat().st_size < 600_000
    text = (tmp_path / "shared.lyr").read_text()
    assert text.count('load("shared.safetensors", "0.weight")') == 60
    assert text.count('load("shared.safetensors", "60.weight")') == 2
    assert text.count('load("shared.safetensors", "0.bias")') == 62
    x = np.random.default_rng(12).standard_normal((3, 256)).astype(np.float32)
    np.testing.assert_allclose(
        imported_forward(tmp_path / "shared.lyr", x), run_ort(path, x), **F32_TOL
    )


def test_too_many_weights_are_refused_before_any_is_read(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights are counted from the tensors' shapes, each initializer once per node that
    uses it, and a model over the limit is refused before any tensor is read or copied."""
    from layerc import onnx_io

    path = save(shared_model(60), tmp_path, "shared")
    monkeypatch.setattr(onnx_io, "MAX_IMPORT_WEIGHTS", 61 * 256 * 256)

    def no_reading(*args, **kwargs):
        raise AssertionError("a tensor was read")

    monkeypatch.setattr(numpy_helper, "to_array", no_reading)
    assert cli.main(["import", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"{path}: the model has more than {61 * 256 * 256} weights (an initializer counted once "
        "for each node that uses it, as the compiled model keeps a copy for each layer), more "
        "than layerc compiles from one source\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.onnx"]


# --------------------------------------------------------------------------- arguments an op fixes


def softplus_model(tmp_path: Path, layer: str) -> tuple[Path, Path]:
    """`layer` between two Linears, written to a .lyr and exported: (the .lyr, the .onnx)."""
    src = tmp_path / "sp.lyr"
    src.write_text(
        "model Sp {\n    fc = Linear(4, 6) { init = uniform(seed=0) }\n"
        f"    act = {layer}\n    head = Linear(6, 2) {{ init = uniform(seed=1) }}\n}}\n"
    )
    out = tmp_path / "sp.onnx"
    assert cli.main(["export", str(src), "--onnx", str(out)]) == 0
    return src, out


def test_softplus_exports_as_onnx_softplus_only_at_the_arguments_the_table_fixes(
    tmp_path: Path,
) -> None:
    """ONNX's Softplus has no beta or threshold; the table of kinds says it is torch's Softplus
    at beta=1, threshold=20 (`Onnx.fixed`). So Softplus() exports as the one op and imports back
    as Softplus(); Softplus(beta=2) exports as a subgraph that computes it, which import reads
    back as the kind (one of its `Onnx.patterns`). Both match torch and the generated module in
    ONNX Runtime."""
    from layerc.kinds import KINDS

    assert KINDS["Softplus"].onnx is not None
    assert dict(KINDS["Softplus"].onnx.fixed) == {"beta": 1.0, "threshold": 20.0}
    x = kind_inputs(16, np.float32)[:, :4]
    for layer, ops in [
        ("Softplus()", ["Softplus"]),
        ("Softplus(beta=2.0)", ["Mul", "Softplus", "Div", "Greater", "Where"]),
    ]:
        folder = tmp_path / layer.replace("=", "").replace("(", "_").replace(")", "")
        folder.mkdir()
        src, out = softplus_model(folder, layer)
        graph = onnx.load(out).graph
        assert [n.op_type for n in graph.node if n.name.startswith("/act/")] == ops
        _, written = driver.compile_file(src)
        net = driver.import_module(written[-1]).Sp()
        twin = torch.nn.Sequential()
        twin.add_module("fc", torch.nn.Linear(4, 6))
        twin.add_module("act", eval(f"torch.nn.{layer}"))
        twin.add_module("head", torch.nn.Linear(6, 2))
        twin.load_state_dict(
            {k: torch.from_numpy(np.asarray(v)) for k, v in net.state_dict().items()}
        )
        with torch.no_grad():
            expected = twin.eval()(torch.from_numpy(x))
        torch.testing.assert_close(torch.from_numpy(run_ort(out, x)), expected, **F32_TOL)
        torch.testing.assert_close(torch.from_numpy(np.asarray(net(x))), expected, **F32_TOL)
        back = folder / "back.lyr"
        import_onnx(out, back)
        assert f"    act = {layer}\n" in back.read_text()


def test_the_table_alone_says_where_an_op_computes_a_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export and import read `Onnx.fixed` and nothing else: with the table saying ONNX's
    Softplus were torch's at beta=2 (it is not; this checks the plumbing), Softplus(beta=2.0)
    exports as the one op, Softplus() as the subgraph, and the op imports as Softplus(beta=2.0)."""
    import dataclasses

    from layerc.kinds import KINDS

    spec = KINDS["Softplus"]
    assert spec.onnx is not None
    onnx_form = dataclasses.replace(spec.onnx, fixed=(("beta", 2.0), ("threshold", 20.0)))
    monkeypatch.setitem(KINDS, "Softplus", dataclasses.replace(spec, onnx=onnx_form))
    for layer, ops in [("Softplus(beta=2.0)", ["Softplus"]), ("Softplus()", ["Mul", "Softplus"])]:
        folder = tmp_path / str(len(ops))
        folder.mkdir()
        _, out = softplus_model(folder, layer)
        graph = onnx.load(out).graph
        assert [n.op_type for n in graph.node if n.name.startswith("/act/")][:2] == ops
        if ops == ["Softplus"]:
            lyr = import_onnx(out, folder / "back.lyr")[-1]
            assert "    act = Softplus(beta=2.0)\n" in lyr.read_text()


# --------------------------------------------------------------------------- the shrinks


# The float64 forms: Where(|x| <= lambd, 0, x), and
# Where(x > lambd, x - lambd, Where(x < -lambd, x + lambd, x * 0))
HARD64 = ["Abs", "LessOrEqual", "Where"]
SOFT64 = ["Greater", "Sub", "Less", "Add", "Mul", "Where", "Where"]
# (layer, the ops it exports as in float32, in float64, where its formula switches)
SHRINKS = [
    ("Hardshrink()", ["Shrink"], HARD64, 0.5),
    ("Hardshrink(lambd=0.1)", ["Shrink"], HARD64, 0.1),
    ("Hardshrink(1)", ["Shrink"], HARD64, 1.0),
    ("Hardshrink(-0.5)", ["Shrink"], HARD64, 0.5),
    ("Hardshrink(0)", ["Shrink"], HARD64, 0.0),
    ("Softshrink(0.1)", ["Shrink"], SOFT64, 0.1),
    ("Softshrink(lambd=2)", ["Shrink"], SOFT64, 2.0),
    ("Softshrink(0)", ["Shrink"], SOFT64, 0.0),
    ("Tanhshrink()", ["Tanh", "Sub"], ["Tanh", "Sub"], 1.0),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("layer", "ops32", "ops64", "switch"), SHRINKS, ids=[c[0] for c in SHRINKS]
)
def test_shrinks_export_as_the_table_says_and_match_torch(
    tmp_path: Path, layer: str, ops32: list[str], ops64: list[str], switch: float, dtype: str
) -> None:
    """Hardshrink is ONNX's Shrink with bias 0, Softshrink Shrink with bias = lambd (float
    attributes, an integer lambd included); in float64, where Shrink's float32 lambd would move
    the switch (and ONNX Runtime computes Shrink in float32), each is a subgraph in the model's
    dtype; Tanhshrink is x - Tanh(x). In ONNX Runtime each computes what torch does, at +-lambd
    and either side of it, at zeros of both signs and infinities; NaN stays NaN, except through
    ONNX's Shrink, which gives 0 for it."""
    src = tmp_path / "m.lyr"
    src.write_text(f"model M(input=[8], dtype={dtype}) {{\n    a = {layer}\n}}\n")
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(src), "--onnx", str(out)]) == 0
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import] == [17]
    assert [n.op_type for n in model.graph.node] == (ops32 if dtype == "float32" else ops64)
    twin = eval(f"torch.nn.{layer}")
    if model.graph.node[0].op_type == "Shrink":
        attrs = {a.name: a for a in model.graph.node[0].attribute}
        assert {a.type for a in attrs.values()} == {onnx.AttributeProto.FLOAT}
        lambd = np.float32(twin.lambd)
        bias = lambd if isinstance(twin, torch.nn.Softshrink) else np.float32(0)
        assert (attrs["lambd"].f, attrs["bias"].f) == (lambd, bias)
    _, written = driver.compile_file(src)
    net = driver.import_module(written[-1]).M()
    nonfinite = [np.inf, -np.inf] + ([np.nan] if ops32 != ["Shrink"] or dtype == "float64" else [])
    values = [0.0, -0.0, *around(switch), *nonfinite]
    values += list(np.random.default_rng(0).standard_normal(32 - len(values)) * 3)
    x = np.array(values, dtype).reshape(4, 8)
    tol = F32_TOL if dtype == "float32" else F64_TOL
    expected = twin(torch.from_numpy(x))
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(net(x))), expected, equal_nan=True, **tol
    )
    got = torch.from_numpy(run_ort(out, x))
    torch.testing.assert_close(got, expected, equal_nan=True, **tol)


def test_shrink_gives_0_for_nan_where_torch_and_layerc_give_nan(tmp_path: Path) -> None:
    """The one difference the float32 export keeps: ONNX's Shrink is 0 outside (-inf, -lambd)
    and (lambd, inf), NaN included (ONNX Runtime does so), where torch and layerc keep NaN."""
    src = tmp_path / "m.lyr"
    src.write_text("model M(input=[2]) {\n    h = Hardshrink()\n}\n")
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(src), "--onnx", str(out)]) == 0
    _, written = driver.compile_file(src)
    x = np.array([[np.nan, 1.0]], np.float32)
    assert np.isnan(driver.import_module(written[-1]).M()(x)[0, 0])
    assert torch.isnan(torch.nn.Hardshrink()(torch.from_numpy(x))[0, 0])
    assert run_ort(out, x).tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize(
    ("layer", "back"),
    [
        ("ELU(alpha=2)", "ELU(alpha=2.0)"),
        ("LeakyReLU(1)", "LeakyReLU(negative_slope=1.0)"),
        ("CELU(3)", "CELU(alpha=3.0)"),
        ("Hardshrink(1)", "Hardshrink(lambd=1.0)"),
        ("Softshrink(lambd=2)", "Softshrink(lambd=2.0)"),
    ],
)
def test_integer_arguments_export_as_float_attributes(
    tmp_path: Path, layer: str, back: str
) -> None:
    """An integer literal for a float argument is written as the FLOAT attribute the op's
    schema declares (not an INT one, which onnx.checker refuses), computes what the module
    does in ONNX Runtime and reads back as the same layer."""
    src = tmp_path / "m.lyr"
    src.write_text(
        f"model M {{\n    fc = Linear(4, 6) {{ init = uniform(seed=0) }}\n    a = {layer}\n}}\n"
    )
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(src), "--onnx", str(out)]) == 0
    (node,) = [n for n in onnx.load(out).graph.node if n.name.startswith("/a/")]
    assert {a.type for a in node.attribute} == {onnx.AttributeProto.FLOAT}
    _, written = driver.compile_file(src)
    x = kind_inputs(16, np.float32)[:, :4]
    ours = np.asarray(driver.import_module(written[-1]).M()(x))
    torch.testing.assert_close(torch.from_numpy(run_ort(out, x)), torch.from_numpy(ours), **F32_TOL)
    lyr = import_onnx(out, tmp_path / "back.lyr")[-1]
    assert f"    a = {back}\n" in lyr.read_text()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_exported_shrinks_match_torch_and_layerc(tmp_path: Path, dtype: str) -> None:
    """torch.onnx.export writes Hardshrink and Softshrink as comparisons and Where, Tanhshrink
    as Tanh and Sub: in ONNX Runtime the model computes what torch computes, and what the
    layerc model of the same layers computes with torch's state_dict loaded; `layerc import`
    reads those subgraphs back as the three kinds (their `Onnx.patterns`), with torch's keys."""
    torch.manual_seed(3)
    layers = [torch.nn.Hardshrink(0.3), torch.nn.Softshrink(0.2), torch.nn.Tanhshrink()]
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), *layers, torch.nn.Linear(6, 3))
    net = net.to(getattr(torch, dtype)).eval()
    path = tmp_path / "net.onnx"
    torch_export(net, torch.zeros(2, 4, dtype=getattr(torch, dtype)), path)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "Tanh" in ops and "Shrink" not in ops
    src = tmp_path / "same.lyr"
    src.write_text(
        f"model Same(dtype={dtype}) {{\n    Linear(4, 6) {{ init = zeros() }}\n"
        "    Hardshrink(0.3)\n    Softshrink(0.2)\n    Tanhshrink()\n"
        "    Linear(6, 3) { init = zeros() }\n}\n"
    )
    _, written = driver.compile_file(src)
    ours = driver.import_module(written[-1]).Same()
    result = ours.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})
    assert repr(result) == "<All keys matched successfully>"
    assert repr(ours) == repr(net).replace("Sequential", "Same", 1)
    x = kind_inputs(64, np.dtype(dtype))[:, :4] / 4
    with torch.no_grad():
        expected = net(torch.from_numpy(x))
    tol = F32_TOL if dtype == "float32" else F64_TOL
    torch.testing.assert_close(torch.from_numpy(run_ort(path, x)), expected, **tol)
    torch.testing.assert_close(torch.from_numpy(np.asarray(ours(x))), expected, **tol)
    lyr = import_onnx(path, tmp_path / "back.lyr")[-1]
    program, written = driver.compile_file(lyr)
    assert [layer.kind for layer in program.models[0].layers] == [
        *("Linear", "Hardshrink", "Softshrink", "Tanhshrink", "Linear")
    ]
    back = driver.import_module(written[-1]).Back()
    assert back.state_dict().keys() == net.state_dict().keys()
    torch.testing.assert_close(torch.from_numpy(np.asarray(back(x))), expected, **tol)


# --------------------------------------------------------------------------- samples of several axes

# (name, options, .lyr layers, torch layers, sample shape): models whose samples have several
# axes, exported with input (batch, *sample shape). Between them they use every kind whose ONNX
# form depends on the shape: a Linear on the last axis (MatMul), Flatten to one axis (Flatten)
# and to several (Reshape), PReLU per channel (its weight reshaped for PRelu's broadcasting),
# BatchNorm1d on (C, L), LayerNorm over one and two axes, Softmax and LogSoftmax; and the
# kinds written as subgraphs.
SEVERAL_AXES = [
    (
        "mnist",
        "",
        """
    Flatten()
    Linear(36, 16) { init = uniform(seed=0) }
    BatchNorm1d(16) { running_mean = RM16; running_var = RV16 }
    GELU()
    Dropout(0.1)
    Linear(16, 10) { init = uniform(seed=1) }
    LogSoftmax(dim=-1)""",
        "Flatten(), Linear(36, 16), BatchNorm1d(16), GELU(), Dropout(0.1), Linear(16, 10), "
        "LogSoftmax(dim=-1)",
        (1, 6, 6),
    ),
    (
        "sequence",
        "",
        """
    LayerNorm(6)
    Linear(6, 8) { init = uniform(seed=2) }
    PReLU(4) { weight = [0.25, -0.5, 0.1, 2.0] }
    BatchNorm1d(4) {
        weight = [1.5, 0.5, -1.0, 2.0]
        running_mean = [0.1, -0.2, 0.3, 0.0]
        running_var = [0.5, 2.0, 1.0, 1.5]
    }
    Linear(8, 8, bias=false) { init = uniform(seed=3) }
    PReLU(init=0.1)
    Softmax(dim=-1)
    Flatten()
    Linear(32, 3) { init = uniform(seed=4) }""",
        "LayerNorm(6), Linear(6, 8), PReLU(4), BatchNorm1d(4), Linear(8, 8, bias=False), "
        "PReLU(init=0.1), Softmax(dim=-1), Flatten(), Linear(32, 3)",
        (4, 6),
    ),
    (
        "reshape",
        "",
        """
    Flatten(start_dim=2)
    LayerNorm([2, 12])
    Linear(12, 5) { init = uniform(seed=5) }
    CELU(alpha=2.0)
    Flatten(start_dim=1, end_dim=2)
    Linear(10, 2) { init = uniform(seed=6) }""",
        "Flatten(start_dim=2), LayerNorm([2, 12]), Linear(12, 5), CELU(alpha=2.0), "
        "Flatten(start_dim=1, end_dim=2), Linear(10, 2)",
        (2, 3, 4),
    ),
    (
        "subgraphs",
        "",
        """
    SiLU()
    Softplus(beta=2.0, threshold=1.5)
    LogSigmoid()
    Tanhshrink()
    Flatten()
    Linear(12, 2) { init = uniform(seed=7) }""",
        "SiLU(), Softplus(beta=2.0, threshold=1.5), LogSigmoid(), Tanhshrink(), Flatten(), "
        "Linear(12, 2)",
        (3, 4),
    ),
    (
        "shrink",
        "",
        """
    Hardshrink(0.25)
    Linear(4, 4) { init = uniform(seed=8) }
    Softshrink(lambd=0.5)
    Flatten()
    Linear(12, 2) { init = uniform(seed=9) }""",
        "Hardshrink(0.25), Linear(4, 4), Softshrink(lambd=0.5), Flatten(), Linear(12, 2)",
        (3, 4),
    ),
]
SEVERAL_AXES.append(("sequence64", ", dtype=float64", *SEVERAL_AXES[1][2:]))
SEVERAL_AXES.append(("shrink64", ", dtype=float64", *SEVERAL_AXES[4][2:]))
# What an import of the export reads back: the same kinds (Dropout is written as Identity, which
# reads back as no layer), or a refusal where a subgraph stands.
SEVERAL_AXES_BACK = {
    # (an Identity where export left out the Dropout, so that the positions stay)
    "mnist": ["Flatten", "Linear", "BatchNorm1d", "GELU", "Identity", "Linear", "LogSoftmax"],
    "sequence": [
        *("LayerNorm", "Linear", "PReLU", "BatchNorm1d", "Linear", "PReLU", "Softmax"),
        *("Flatten", "Linear"),
    ],
    "reshape": ["Flatten", "LayerNorm", "Linear", "CELU", "Flatten", "Linear"],
    "subgraphs": ["SiLU", "Softplus", "LogSigmoid", "Tanhshrink", "Flatten", "Linear"],
    "shrink": ["Hardshrink", "Linear", "Softshrink", "Flatten", "Linear"],
    "shrink64": ["Hardshrink", "Linear", "Softshrink", "Flatten", "Linear"],  # the subgraphs
}
SEVERAL_AXES_BACK["sequence64"] = SEVERAL_AXES_BACK["sequence"]


@pytest.fixture(scope="module")
def several_axes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each model of SEVERAL_AXES written, compiled, exported, and its torch twin loaded with
    the module's state_dict: name -> (folder, onnx path, module, torch net, dtype)."""
    rng = np.random.default_rng(8)
    out = {}
    for name, options, layers, torch_layers, shape in SEVERAL_AXES:
        folder = tmp_path_factory.mktemp(f"axes_{name}")
        layers = layers.replace("RM16", _values(rng, 16, -1, 1))
        layers = layers.replace("RV16", _values(rng, 16, 0.2, 2))
        input_option = f"input=[{', '.join(map(str, shape))}]"
        src = folder / "m.lyr"
        src.write_text(f"model M({input_option}{options}) {{{layers}\n}}\n")
        onnx_path = folder / "m.onnx"
        assert cli.main(["export", str(src), "--onnx", str(onnx_path)]) == 0
        _, written = driver.compile_file(src)
        module = driver.import_module(written[-1]).M()
        dtype = np.dtype(np.float64 if "float64" in options else np.float32)
        twin = eval(f"Sequential({torch_layers})", vars(torch.nn)).to(
            torch.float64 if dtype == np.float64 else torch.float32
        )
        twin.load_state_dict(
            {k: torch.as_tensor(np.asarray(v)) for k, v in module.state_dict().items()}
        )
        out[name] = (folder, onnx_path, module, twin.eval(), dtype)
    return out


def several_axes_inputs(batch: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return (np.random.default_rng(batch).standard_normal((batch, *shape)) * 2).astype(dtype)


@pytest.mark.parametrize("name", [case[0] for case in SEVERAL_AXES])
def test_models_with_samples_of_several_axes_export_and_match_torch(
    several_axes: dict, name: str
) -> None:
    """The graph takes (batch, *sample shape), the batch symbolic, and computes in ONNX Runtime
    what torch and the generated module compute, batch 0 included."""
    folder, onnx_path, module, twin, dtype = several_axes[name]
    shape = next(case[4] for case in SEVERAL_AXES if case[0] == name)
    model = onnx.load(onnx_path)
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == list(shape)
    tol = F32_TOL if dtype == np.float32 else F64_TOL
    for batch in (0, 1, 7):
        x = several_axes_inputs(batch, shape, dtype)
        with torch.no_grad():
            expected = twin(torch.from_numpy(x))
        torch.testing.assert_close(torch.from_numpy(np.asarray(module(x))), expected, **tol)
        torch.testing.assert_close(torch.from_numpy(ort_or_skip(onnx_path, x)), expected, **tol)


@pytest.mark.parametrize("name", [case[0] for case in SEVERAL_AXES])
def test_models_with_samples_of_several_axes_import_back(several_axes: dict, name: str) -> None:
    """Imported back, the export is the same model (`input=[...]` and all), computing the same
    outputs; where a subgraph stands, import refuses it at its first node."""
    folder, onnx_path, module, _, dtype = several_axes[name]
    (options, shape) = next((case[1], case[4]) for case in SEVERAL_AXES if case[0] == name)
    lyr = folder / "back.lyr"
    expect = SEVERAL_AXES_BACK[name]
    if isinstance(expect, str):
        with pytest.raises(LayercError, match=expect):
            import_onnx(onnx_path, lyr)
        return
    import_onnx(onnx_path, lyr)
    text = lyr.read_text()
    assert f"model Back(input=[{', '.join(map(str, shape))}]{options}) {{" in text
    assert format_source(text) == text
    program, written = driver.compile_file(lyr)
    assert [layer.kind for layer in program.models[0].layers] == expect
    back = driver.import_module(written[-1]).Back()
    x = several_axes_inputs(7, shape, dtype)
    tol = F32_TOL if dtype == np.float32 else F64_TOL
    torch.testing.assert_close(
        torch.from_numpy(np.asarray(back(x))), torch.from_numpy(np.asarray(module(x))), **tol
    )


def test_build_onnx_writes_every_kind_on_samples_of_several_axes() -> None:
    """Every kind of the table exports on samples of shape (2, 4) (so none meets the error
    below), with the input and output (batch, *sample shape), and passes onnx.checker."""
    from layerc import syntax
    from layerc.check import check
    from layerc.kinds import KINDS

    args = {"Linear": "(4, 3)", "BatchNorm1d": "(2)", "LayerNorm": "([2, 4])", "PReLU": "(2)"}
    for kind in KINDS:
        text = f"model M(input=[2, 4]) {{ a = {kind}{args.get(kind, '()')} {{ }} }}"
        text = text.replace("{ }", "{ init = zeros() }" if kind == "Linear" else "")
        model = check(syntax.parse(text, "m.lyr"), Path(".")).models[0]
        proto = build_onnx(model, "m.lyr")
        for value, shape in ((proto.graph.input[0], (2, 4)), (proto.graph.output[0], None)):
            dims = [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
            assert dims == ["batch", *(shape or model.out_shape)], kind


def test_a_layer_without_a_form_for_several_axes_is_a_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every kind exports on samples of several axes; one whose ONNX form needs (batch,
    features) values and that has no form for more (here PReLU's, taken out of the table) is
    refused at the layer, naming it, its model, its kind, the shape and why, and nothing is
    written."""
    import dataclasses

    from layerc.kinds import KINDS

    spec = KINDS["PReLU"]
    assert spec.onnx is not None and spec.onnx.several_axes is not None
    onnx_form = dataclasses.replace(spec.onnx, several_axes=None)
    monkeypatch.setitem(KINDS, "PReLU", dataclasses.replace(spec, onnx=onnx_form))
    src = tmp_path / "m.lyr"
    src.write_text(
        "model Enc(input=[4, 6]) {\n    fc = Linear(6, 8) { init = uniform(seed=0) }\n"
        "    act = PReLU(4)\n}\n\nmodel M(input=[4, 6]) {\n    enc = Enc()\n    Flatten()\n}\n"
    )
    out = tmp_path / "m.onnx"
    assert cli.main(["export", str(src), "--onnx", str(out), "--model", "M"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"{src}:3:5: layerc export cannot write layer 'enc.act' (PReLU) of model 'M': on samples "
        "of shape (4, 8), its ONNX form takes only (batch, features) values\n"
        "        act = PReLU(4)\n        ^"
    ), err
    assert not out.exists()


def test_torch_exported_model_with_samples_of_several_axes_imports(tmp_path: Path) -> None:
    """torch.onnx.export writes PReLU on (N, C, L) with a (C, 1) slope and Flatten as Flatten:
    imported with `input=[4, 3]`, the model computes what torch does."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(
        torch.nn.PReLU(4), torch.nn.BatchNorm1d(4), torch.nn.Flatten(), torch.nn.Linear(12, 2)
    )
    net[0].weight.data.uniform_(-1, 1)
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.2, 2)
    net.eval()
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(2, 4, 3),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )
    lyr = import_onnx(path)[-1]
    assert "model Net(input=[4, 3]) {" in lyr.read_text()
    program, written = driver.compile_file(lyr)
    kinds = [layer.kind for layer in program.models[0].layers]
    assert kinds == ["PReLU", "BatchNorm1d", "Flatten", "Linear"]
    ours = driver.import_module(written[-1]).Net()
    x = several_axes_inputs(5, (4, 3), np.dtype(np.float32))
    with torch.no_grad():
        expected = net(torch.from_numpy(x))
    torch.testing.assert_close(torch.from_numpy(np.asarray(ours(x))), expected, **F32_TOL)


@pytest.mark.parametrize(
    ("node", "inits", "needles"),
    [
        (
            helper.make_node("Reshape", ["x", "s"], ["h"], name="rs"),
            [init("s", np.array([0, 3, 4], np.int64))],
            ("node 'rs' (Reshape) reshapes samples of shape (2, 6) to [3, 4]",),
        ),
        (
            helper.make_node("Reshape", ["x", "s"], ["h"], name="rs"),
            [init("s", np.array([-1, 6], np.int64))],
            ("node 'rs' (Reshape) reshapes samples of shape (2, 6) to [6] (batch -1)",),
        ),
        (
            helper.make_node("Transpose", ["x"], ["h"], name="t", perm=[0, 2, 1]),
            [],
            ("node 't' (Transpose) transposes the output of the previous layer",),
        ),
        (
            helper.make_node("PRelu", ["x", "s"], ["h"], name="pr"),
            [init("s", np.ones(6, np.float32))],
            ("node 'pr' (PRelu): slope 's' has shape (6,); layerc reads one value, or one per",),
        ),
        (
            helper.make_node("PRelu", ["x", "s"], ["h"], name="pr"),
            [init("s", np.ones((3, 1), np.float32))],
            ("node 'pr' (PRelu) has 3 values but its input has 2 channels",),
        ),
        (
            helper.make_node("Softmax", ["x"], ["h"], name="sm", axis=1),
            [],
            ("node 'sm' (Softmax) takes softmax over axis 1",),
        ),
        (
            helper.make_node("Flatten", ["x"], ["h"], name="fl", axis=2),
            [],
            ("node 'fl' (Flatten) flattens at axis 2, which would mix the batch",),
        ),
        (
            helper.make_node("LayerNormalization", ["x", "s"], ["h"], name="ln", axis=1),
            [init("s", np.ones((2, 5), np.float32))],
            (
                "node 'ln' (LayerNormalization): weight 's' has shape (2, 5), but the layer needs (2, 6)",
            ),
        ),
    ],
)
def test_ops_on_samples_of_several_axes_that_no_layer_computes_are_refused(
    tmp_path: Path, capsys, node, inits, needles: tuple[str, ...]
) -> None:
    """On a (batch, 2, 6) input: reshapes that are not a Flatten, a Transpose of the value,
    a slope that is not per channel, softmax or Flatten at an inner axis, tensors that do not
    fit the normalised axes."""
    flat = helper.make_node("Flatten", ["h"], ["f"], name="flat")
    gemm = helper.make_node("Gemm", ["f", "W"], ["y"], name="g")
    w = init("W", np.ones((12, 2), np.float32))
    model = make_model([node, flat, gemm], [*inits, w], None, 2, input_shape=["N", 2, 6])
    assert_import_refused(tmp_path, model, capsys, *needles)


def test_batch_norm_on_samples_of_three_axes_is_refused(tmp_path: Path, capsys) -> None:
    """BatchNorm1d takes (C,) or (C, L) samples; BatchNormalization on (batch, C, H, W) is a
    BatchNorm2d."""
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["h"], name="bn")
    flat = helper.make_node("Flatten", ["h"], ["f"], name="flat")
    gemm = helper.make_node("Gemm", ["f", "W"], ["y"], name="g")
    inits = [init(n, np.ones(2, np.float32)) for n in "sbmv"]
    inits.append(init("W", np.ones((24, 2), np.float32)))
    model = make_model([bn, flat, gemm], inits, None, 2, input_shape=["N", 2, 3, 4])
    assert_import_refused(
        tmp_path,
        model,
        capsys,
        "node 'bn' (BatchNormalization) takes samples of shape (2, 3, 4); layerc's per-channel "
        "layers take (C,) or (C, L)",
    )
