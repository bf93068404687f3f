"""Graph models at run time, beyond what the comparisons with PyTorch cover
(tests/test_graph_torch.py): inputs checked by name, the Sequential API refused where a forward
block makes it meaningless, the buffers the lowering stage plans, `compile --warm` and the
runtime ABI of graph modules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layerc import cli, driver, lower

INIT = "{ init = uniform(seed=1) }"

HEADS = f"""
model Heads {{
    trunk = Linear(3, 4) {INIT}
    act = Tanh()
    a = Linear(4, 2) {INIT}
    forward(x, mask: 4) {{
        h = act(trunk(x)) * mask
        return a(h), h - mask * 0 + 0 * h, x
    }}
}}
model Chain {{
    fc = Linear(3, 3) {INIT}
    ReLU()
}}
"""


def test_inputs_are_checked_by_name(compile_lyr) -> None:
    net = compile_lyr(HEADS).Heads()
    with pytest.raises(TypeError, match=r"Heads.forward\(\) takes 2 inputs \(x, mask\), got 1"):
        net(np.zeros(3))
    with pytest.raises(ValueError, match=r"input 'mask' expects shape \(4,\) or \(\*, 4\), got"):
        net(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"one batch shape, got x \(2, 3\), mask \(3, 4\)"):
        net(np.zeros((2, 3)), np.zeros((3, 4)))
    with pytest.raises(TypeError, match="real numbers"):
        net(np.array(["a", "b", "c"]), np.zeros(4))


def test_values_flow_as_written(compile_lyr) -> None:
    """NumPy float64 reference from the weights; lists, batches of two axes, empty batches."""
    net = compile_lyr(HEADS).Heads()
    sd = {k: np.asarray(v, np.float64) for k, v in net.state_dict().items()}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    m = rng.standard_normal((2, 5, 4)).astype(np.float32)
    h = np.tanh(x @ sd["trunk.weight"].T + sd["trunk.bias"]) * m
    want = (h @ sd["a.weight"].T + sd["a.bias"], h, x)
    for got in (net(x, m), net.forward(x, m), net.njit()(x, m), net(x.tolist(), m)):
        assert len(got) == 3
        for g, w in zip(got, want, strict=True):
            assert g.dtype == np.float32 and g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # the input returned as it is comes back as a new array from the fused call
    third = net(x, m)[2]
    assert not np.shares_memory(third, x)
    empty = net(np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float32))
    assert [e.shape for e in empty] == [(0, 2), (0, 4), (0, 3)]


def test_sequential_api_is_refused_for_graph_models(compile_lyr) -> None:
    module = compile_lyr(HEADS)
    net = module.Heads()
    assert net[0] is net.trunk  # indexing a child is harmless
    with pytest.raises(TypeError, match="Heads has a forward block"):
        net[0:2]
    with pytest.raises(TypeError, match="Heads has a forward block"):
        del net[0]
    chain = module.Chain()
    assert len(chain[0:1]) == 1  # pipelines keep torch.nn.Sequential's API


def test_planned_buffers_are_reused_and_outputs_written_in_place(tmp_path: Path) -> None:
    source = f"""
    model Deep {{
        a = Linear(8, 8) {INIT}
        b = Linear(8, 8) {INIT}
        c = Linear(8, 8) {INIT}
        forward(x) {{
            h1 = a(x)
            h2 = b(h1)
            h3 = c(h2)
            return -(h3 + x)
        }}
    }}
    """
    path = tmp_path / "deep.lyr"
    path.write_text(source, encoding="utf-8")
    program, _ = driver.check_file(path)
    plan = lower.lower(program)
    (kernel,) = [k for k in plan.kernels if isinstance(k, lower.GraphKernel)]
    # a chain needs two buffers, whatever its length; the last step writes the output
    assert [b.name for b in kernel.buffers] == ["h1", "h2"]
    assert kernel.steps[-1].target == "y0"
    assert plan.text().splitlines()[-5:-2] == [
        "    h1 = h1 + x0  # in place",
        "    y0 = -h1",
        "  buffers: h1 (n, 8), h2 (n, 8)",
    ]


def test_compile_warm_runs_every_input(tmp_path: Path, capsys) -> None:
    source = tmp_path / "heads.lyr"
    source.write_text(HEADS, encoding="utf-8")
    assert cli.main(["compile", str(source), "--warm"]) == 0
    err = capsys.readouterr().err
    assert "Heads: fused forward, a batch" in err and "warmed 2 model(s)" in err


def test_graph_modules_need_runtime_abi_4(tmp_path: Path) -> None:
    source = tmp_path / "heads.lyr"
    source.write_text(HEADS, encoding="utf-8")
    program, _ = driver.check_file(source)
    text = driver.generate(program, tmp_path / "heads.py").source
    assert "_rt.check_abi(4)" in text
    # one line of Python per statement, calling the submodules
    assert "        h = self.act(self.trunk(x)) * mask\n" in text
    assert "        return self.a(h), h - mask * 0.0 + 0.0 * h, x\n" in text
