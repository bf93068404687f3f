"""`layerc export` of graph models: the forward block becomes the ONNX graph (Add, Sub, Mul,
Neg, Concat between the layers' nodes; a layer called twice shares its initializers; nested
models inlined), checked against ONNX Runtime, which runs the exported file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from scipy.special import erf

from layerc import cli

INIT = "{ init = uniform(seed=3) }"

SOURCE = f"""
model Block {{
    norm = LayerNorm(4)
    fc1 = Linear(4, 8) {INIT}
    act = GELU()
    fc2 = Linear(8, 4) {INIT}
    forward(x) {{
        h = fc2(act(fc1(norm(x))))
        return x + h
    }}
}}

model Heads (dtype=DTYPE) {{
    trunk = Linear(4, 4) {INIT}
    relu = ReLU()
    drop = Dropout(0.5)
    a = Linear(4, 2) {INIT}
    b = Linear(8, 3) {INIT}
    inner = Block()
    forward(x, mask: 4) {{
        h = drop(relu(trunk(x))) * mask
        g = 0.5 * -inner(h) - (h - 2)
        return a(g), b(cat(relu(h), g)), x, a(g)
    }}
}}
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exported_graph_runs_in_onnx_runtime_as_layerc_does(
    dtype: str, tmp_path: Path, compile_lyr, capsys
) -> None:
    text = SOURCE.replace("DTYPE", dtype)
    if dtype == "float64":  # a nested model has its parent's dtype; ORT has no float64 Erf
        text = text.replace("model Block {", "model Block (dtype=float64) {")
        text = text.replace("GELU()", "Tanh()")
    source = tmp_path / "heads.lyr"
    source.write_text(text, encoding="utf-8")
    out = tmp_path / "heads.onnx"
    assert cli.main(["export", str(source), "--onnx", str(out), "--model", "Heads"]) == 0
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["x", "mask"]
    assert [o.name for o in proto.graph.output] == [f"output_{i}" for i in range(4)]
    ops = [node.op_type for node in proto.graph.node]
    for op in ("Add", "Sub", "Mul", "Neg", "Concat", "LayerNormalization"):
        assert op in ops
    # `a` is called twice: two Gemm nodes, one copy of its weights
    assert ops.count("Gemm") == 6
    names = [init.name for init in proto.graph.initializer]
    assert names.count("a.weight") == 1 and "inner.fc1.weight" in names
    assert len({node.name for node in proto.graph.node}) == len(proto.graph.node)

    net = compile_lyr(text).Heads()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch in (1, 6):
        x = rng.standard_normal((batch, 4)).astype(dtype)
        mask = rng.standard_normal((batch, 4)).astype(dtype)
        want = sess.run(None, {"x": x, "mask": mask})
        got = net(x, mask)
        assert len(got) == len(want) == 4
        tol = 1e-5 if dtype == "float32" else 1e-10
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def test_a_single_output_graph_keeps_the_pipeline_names(tmp_path: Path, compile_lyr) -> None:
    source = tmp_path / "block.lyr"
    source.write_text(SOURCE.replace("DTYPE", "float32"), encoding="utf-8")
    out = tmp_path / "block.onnx"
    assert cli.main(["export", str(source), "--onnx", str(out), "--model", "Block"]) == 0
    proto = onnx.load(out)
    assert [i.name for i in proto.graph.input] == ["x"]
    assert [o.name for o in proto.graph.output] == ["output"]
    # the residual is in the graph: ONNX Runtime computes x + fc2(gelu(fc1(norm(x)))) as
    # NumPy float64 does from the weights
    sd = {
        k: np.asarray(v, np.float64)
        for k, v in compile_lyr(SOURCE.replace("DTYPE", "float32")).Block().state_dict().items()
    }
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    x64 = x.astype(np.float64)
    n = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    n = n * sd["norm.weight"] + sd["norm.bias"]
    h = n @ sd["fc1.weight"].T + sd["fc1.bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    want = x64 + h @ sd["fc2.weight"].T + sd["fc2.bias"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
