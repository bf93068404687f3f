"""`layerc import` of ONNX graphs that are not a single chain: residual connections,
concatenation, several inputs and outputs become a graph model (a forward block), checked
against PyTorch (the model exported) and against the graph layerc itself exported (a round
trip through ONNX Runtime's reading of the file)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from layerc import cli, driver
from layerc.onnx_io import import_onnx

F32 = {"rtol": 1.3e-6, "atol": 1e-5}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.b1 = Block()
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        e = self.embed(x)
        return self.head(torch.cat((e, self.b1(e)), -1))


class TwoInputsTwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.a = nn.Linear(8, 2)
        self.b = nn.Linear(8, 3)

    def forward(self, x, mask):
        h = self.relu(self.trunk(x)) * mask
        return self.a(h), self.b(-self.relu(h) - 0.5 * h)


def export(
    net: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    names: list[str],
    opset: int = 20,
) -> None:
    """torch.onnx.export with the TorchScript exporter (at opset 20 Gelu is one operator; before,
    exact GELU is Div, Erf, Add, Mul, Mul), the batch axis dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            inputs,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            dynamic_axes={name: {0: "n"} for name in names},
        )


def imported(path: Path) -> object:
    lyr = import_onnx(path, path.with_suffix(".lyr"))[-1]
    program, written = driver.compile_file(lyr)
    module = driver.import_module(written[-1])
    return getattr(module, program.models[-1].name)()  # the last: nested models come first


@pytest.mark.parametrize(
    ("make", "widths", "opset"),
    [(Residual, [8], 17), (Residual, [8], 20), (TwoInputsTwoOutputs, [8, 8], 17)],
    ids=["residual-17", "residual-20", "two-17"],
)
def test_torch_graphs_import_as_graph_models(
    tmp_path: Path, make, widths: list[int], opset: int
) -> None:
    torch.manual_seed(3)
    net = make()
    for module in net.modules():  # LayerNorm's affine away from torch's initial 1 and 0
        if isinstance(module, nn.LayerNorm):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    names = ["x", "mask"][: len(widths)]
    path = tmp_path / "net.onnx"
    export(net, tuple(torch.randn(2, w) for w in widths), path, names, opset)
    ours = imported(path)
    text = path.with_suffix(".lyr").read_text(encoding="utf-8")
    assert "forward(" in text
    if make is Residual:  # the exporter's GELU, one node or five, is one GELU layer, and the
        # block nests as the torch module did
        assert "    act = GELU()\n" in text
        assert "    b1 = B1()\n" in text
    rng = np.random.default_rng(0)
    for batch in (1, 5):
        xs = [rng.standard_normal((batch, w)).astype(np.float32) for w in widths]
        with torch.no_grad():
            want = net(*[torch.from_numpy(x) for x in xs])
        got = ours(*xs)
        want = want if isinstance(want, tuple) else (want,)
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(torch.from_numpy(g), w, **F32)
    assert list(ours.state_dict()) == list(net.state_dict())  # torch's names and nesting
    if make is TwoInputsTwoOutputs:
        assert "forward(x: 8, mask: 8) {" in text
        assert "return a(h1), b(-relu(h1) - h1 * 0.5)" in text  # relu: one module, twice


EXPORTED = """
model Block {
    norm = LayerNorm(4)
    fc1 = Linear(4, 8) { init = uniform(seed=0) }
    act = Tanh()
    fc2 = Linear(8, 4) { init = uniform(seed=1) }
    forward(x) {
        h = fc2(act(fc1(norm(x))))
        return x + h
    }
}

model Heads {
    trunk = Linear(4, 4) { init = uniform(seed=2) }
    relu = ReLU()
    a = Linear(4, 2) { init = uniform(seed=3) }
    b = Linear(8, 3) { init = uniform(seed=4) }
    inner = Block()
    forward(x, mask: 4) {
        h = relu(trunk(x)) * mask
        g = 0.5 * -inner(h) - (h - 2)
        return a(g), b(cat(relu(h), g)), x, a(g)
    }
}
"""


def test_a_graph_layerc_exported_imports_back(tmp_path: Path) -> None:
    """Export (numbers, unary minus, a layer called twice, an input returned, a nested model),
    import, and compare all three: the original, ONNX Runtime on the file, the import."""
    source = tmp_path / "original.lyr"
    source.write_text(EXPORTED, encoding="utf-8")
    out = tmp_path / "heads.onnx"
    assert cli.main(["export", str(source), "--onnx", str(out), "--model", "Heads"]) == 0
    original = driver.import_module(driver.compile_file(source)[1][-1]).Heads()
    back = imported(out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    mask = rng.standard_normal((6, 4)).astype(np.float32)
    want = session.run(None, {"x": x, "mask": mask})
    for got in (original(x, mask), back(x, mask)):
        assert len(got) == 4
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    text = (tmp_path / "heads.lyr").read_text(encoding="utf-8")
    # the layer called twice is one layer again, and the nested model nests again
    assert text.count('"a.weight"') == 1
    assert "    inner = Inner()\n" in text
    # (in the order the graph computes them: ONNX does not keep the order of declaration)
    assert sorted(back.state_dict()) == sorted(original.state_dict())


def test_unused_nodes_are_left_out(tmp_path: Path) -> None:
    """A node whose value nothing reads does not become a layer."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"], name="g", transB=1),
        helper.make_node("Relu", ["h"], ["dead"], name="unused"),
        helper.make_node("Tanh", ["h"], ["y"], name="t"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    net = imported(path)
    assert [m._get_name() for m in net.children()] == ["Linear", "Tanh"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 10
    np.testing.assert_allclose(net(x), np.tanh(x.astype(np.float64) @ np.ones((4, 3))), rtol=1e-6)


@pytest.mark.parametrize("order", ["x*(1+erf)*0.5", "(0.5*x)*(1+erf)"])
def test_exact_gelu_written_as_five_nodes_is_one_layer(tmp_path: Path, order: str) -> None:
    """Both orders of the products, with Mul by 1/sqrt(2) instead of Div, and constants as
    initializers: matched by structure and values, whatever the nodes are called."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 4)).astype(np.float32)

    def const(name: str, value: float) -> object:
        return numpy_helper.from_array(np.array(value, np.float32), name)

    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"], name="n0", transB=1),
        helper.make_node("Mul", ["h", "inv_sqrt2"], ["s"], name="n1"),
        helper.make_node("Erf", ["s"], ["e"], name="n2"),
        helper.make_node("Add", ["one", "e"], ["p"], name="n3"),
    ]
    if order == "x*(1+erf)*0.5":
        nodes += [
            helper.make_node("Mul", ["h", "p"], ["q"], name="n4"),
            helper.make_node("Mul", ["q", "half"], ["y"], name="n5"),
        ]
    else:
        nodes += [
            helper.make_node("Mul", ["half", "h"], ["hh"], name="n4"),
            helper.make_node("Mul", ["p", "hh"], ["y"], name="n5"),
        ]
    inits = [
        numpy_helper.from_array(w, "W"),
        const("inv_sqrt2", 1 / np.sqrt(2)),
        const("one", 1.0),
        const("half", 0.5),
    ]
    graph = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        inits,
    )
    path = tmp_path / "gelu.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    net = imported(path)
    assert [m._get_name() for m in net.children()] == ["Linear", "GELU"]
    x = rng.standard_normal((3, 4)).astype(np.float32)
    h = torch.from_numpy(x).double() @ torch.from_numpy(w).double().T
    want = torch.nn.functional.gelu(h)
    torch.testing.assert_close(torch.from_numpy(net(x)).double(), want, rtol=1e-5, atol=1e-6)


def imported_code(path: Path, graph: object) -> tuple[object, str, list[str]]:
    """The graph saved at `path` (opset 17) and imported: the model, the .lyr text, and its
    lines that are not comments."""
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    net = imported(path)
    text = path.with_suffix(".lyr").read_text(encoding="utf-8")
    return net, text, [line for line in text.splitlines() if not line.lstrip().startswith("#")]


def test_hostile_names_become_plain_identifiers(tmp_path: Path) -> None:
    """Initializer, node and input names of a graph model reach the .lyr only as checked
    identifiers (and comments): nothing in them becomes code."""
    from onnx import TensorProto, helper, numpy_helper

    evil = 'x"); __import__("os").system("touch PWNED"); ("'
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "__class__.weight")
    v = numpy_helper.from_array(np.eye(3, dtype=np.float32) * 2, f"{evil}.weight")
    nodes = [
        helper.make_node("Gemm", [evil, "__class__.weight"], ["h"], name="/__init__/Gemm"),
        helper.make_node("Gemm", ["h", f"{evil}.weight"], ["y1"], name=f"/{evil}/Gemm"),
        helper.make_node("Relu", ["h"], ["y2"], name="/forward/Relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(evil, TensorProto.FLOAT, ["n", 3])],
        [
            helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["n", 3]),
        ],
        [w, v],
    )
    net, text, code = imported_code(tmp_path / "evil.onnx", graph)
    assert not any("__import__" in line or "system" in line for line in code)
    assert [name for name, _ in net.named_children()] == ["linear0", "linear1", "forward_"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    y1, y2 = net(x)
    np.testing.assert_array_equal(y1, 2 * x)
    np.testing.assert_array_equal(y2, np.maximum(x, 0))
    assert not (tmp_path / "PWNED").exists()


def test_hostile_metadata_is_ignored_or_checked(tmp_path: Path) -> None:
    """The dynamo exporter's node metadata (module paths and classes) is read as a list of
    strings or not at all: a literal of another type, a path part that is not a plain name or
    that starts with `__`, and a class that is not a plain name, give nothing but checked
    identifiers, never code and never a crash."""
    from onnx import TensorProto, helper, numpy_helper

    def gemm(x: str, w: str, y: str, scopes: str, classes: str = "") -> object:
        node = helper.make_node("Gemm", [x, w], [y], name=f"g_{y}")
        for key, value in (
            ("pkg.torch.onnx.name_scopes", scopes),
            ("pkg.torch.onnx.class_hierarchy", classes),
        ):
            if value:
                entry = node.metadata_props.add()
                entry.key, entry.value = key, value
        return node

    evil = '__import__("os").system("touch PWNED")'
    nodes = [
        gemm("x", "w1", "h1", "{[]: 1}"),  # a TypeError in literal_eval
        gemm("h1", "w2", "h2", "['', '__class__', 'linear']", "['A', 'B', 'c']"),
        gemm("h2", "w3", "h3", f"['', 'a', {evil!r}, 'linear']"),
        gemm("h3", "w4", "h4", "['', 'b', 'b.c', 'linear']", f"['M', {evil!r}, 'Evil', 'l']"),
        gemm("h4", "w5", "y", "['', " + "'z', " * 5000 + "'linear']"),  # past the size limit
    ]
    eye = np.eye(3, dtype=np.float32)
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(eye * (i + 1), f"w{i + 1}") for i in range(5)],
    )
    net, text, code = imported_code(tmp_path / "meta.onnx", graph)
    assert not any("__" in line or "system" in line for line in code), text
    assert "model B {" in text  # `b`: a plain path, its class not a plain name
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(net(x), x * 120)  # 1 * 2 * 3 * 4 * 5
    assert not (tmp_path / "PWNED").exists()


def test_numbers_added_after_any_layer_are_arithmetic(tmp_path: Path) -> None:
    """A number added to a Linear's value is its bias; added to another layer's value, it is
    `+ 2.0` in the forward block (torch writes `relu(fc(x)) + 2` so)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"], name="/fc/Gemm", transB=1),
        helper.make_node("Add", ["h", "two"], ["hb"], name="/Add"),
        helper.make_node("Relu", ["hb"], ["r"], name="/act/Relu"),
        helper.make_node("Add", ["r", "two"], ["y"], name="/Add_1"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    path = tmp_path / "m.onnx"
    path.write_bytes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    net = imported(path)
    text = path.with_suffix(".lyr").read_text(encoding="utf-8")
    assert "return act(fc(x)) + 2.0" in text
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    want = np.maximum(x.astype(np.float64) @ w.T.astype(np.float64) + 2, 0) + 2
    np.testing.assert_allclose(net(x), want, rtol=1e-6, atol=1e-6)
