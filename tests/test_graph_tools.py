"""`layerc test`, `layerc run`, `layerc summary` and `layerc graph` on graph models (section 8 of
the spec): models with a `forward` block, several inputs and several outputs.

Numbers are checked against NumPy in float64 on the weights the models hold (run, test), and
against PyTorch for parameter counts and FLOPs (summary); diagrams are checked as DOT text, and
laid out by graphviz where its `dot` program is installed.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_dot

from layerc import driver, ir
from layerc.cli import main
from layerc.tools import run as run_tool

RTOL, ATOL = 1.3e-6, 1e-5  # float32, as torch.testing.assert_close

# Section 8 of the spec, verbatim (the copy tests/test_spec_programs.py compares with the spec).
SECTION8 = (Path(__file__).parent / "spec_programs" / "section8.lyr").read_text(encoding="utf-8")

# A layer called twice inside a model that is itself called twice: its weights count once,
# its FLOPs four times.
SHARED = """\
model Shared {
    fc = Linear(4, 4) { init = uniform(seed=0) }

    forward(x) {
        return fc(fc(x))
    }
}

model Outer {
    s = Shared()
    head = Linear(8, 2) { init = uniform(seed=1) }

    forward(x) {
        return head(cat(s(x), s(-x))) * 0.5, 1 - x
    }
}
"""

rng = np.random.default_rng(11)
WT, BT = rng.normal(size=(8, 8)), rng.normal(size=8)
WA, BA = rng.normal(size=(2, 8)), rng.normal(size=2)
WB, BB = rng.normal(size=(3, 8)), rng.normal(size=3)


def literal(array: np.ndarray) -> str:
    return json.dumps(array.tolist())


# TwoHeads with weights the test knows.
HEADS = f"""\
model Heads {{
    trunk = Linear(8, 8) {{
        weight = {literal(WT)}
        bias = {literal(BT)}
    }}
    relu = ReLU()
    a = Linear(8, 2) {{
        weight = {literal(WA)}
        bias = {literal(BA)}
    }}
    b = Linear(8, 3) {{
        weight = {literal(WB)}
        bias = {literal(BB)}
    }}

    forward(x, mask: 8) {{
        h = relu(trunk(x)) * mask
        return a(h), b(relu(h))
    }}
}}
"""


def f32(a: np.ndarray) -> np.ndarray:
    """What a float32 model holds of `a`, in float64."""
    return np.asarray(a).astype(np.float32).astype(np.float64)


def heads_reference(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Heads in float64 NumPy, on the float32 weights and inputs the model holds."""
    h = np.maximum(f32(x) @ f32(WT).T + f32(BT), 0) * f32(mask)
    return h @ f32(WA).T + f32(BA), np.maximum(h, 0) @ f32(WB).T + f32(BB)


def net_reference(model: ir.Model, x: np.ndarray) -> np.ndarray:
    """Section 8's Net in float64 NumPy, on the weights the checked model holds."""

    def linear(layer: ir.Layer, v: np.ndarray) -> np.ndarray:
        return v @ f32(layer.weight).T + f32(layer.bias)

    def block(sub: ir.Model, v: np.ndarray) -> np.ndarray:
        norm = sub.child("norm")
        mean = v.mean(-1, keepdims=True)
        var = v.var(-1, keepdims=True)
        u = (v - mean) / np.sqrt(var + 1e-5) * f32(norm.weight) + f32(norm.bias)
        u = linear(sub.child("fc1"), u)
        u = 0.5 * u * (1 + np.vectorize(math.erf)(u / math.sqrt(2)))
        return v + linear(sub.child("fc2"), u)

    e = linear(model.child("embed"), f32(x))
    b = block(model.child("b2").model, block(model.child("b1").model, e))
    return linear(model.child("head"), np.concatenate([e, b], axis=-1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("graph_tools")
    (path / "section8.lyr").write_text(SECTION8, encoding="utf-8")
    (path / "shared.lyr").write_text(SHARED, encoding="utf-8")
    (path / "heads.lyr").write_text(HEADS, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _isolated(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    monkeypatch.setenv("LAYERC_CACHE_DIR", str(folder / "cache"))
    monkeypatch.delenv("NO_COLOR", raising=False)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


X = np.random.default_rng(3).normal(size=(7, 8))
MASK = (np.random.default_rng(4).random((7, 8)) > 0.3).astype(np.float64)


def write_csv(path: Path, data: np.ndarray, header: str | None = None) -> None:
    lines = [header] if header else []
    lines += [",".join(repr(float(v)) for v in row) for row in data]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def model_of(source: str, name: str) -> ir.Model:
    program, _ = driver.check_file(Path(source))
    (model,) = [m for m in program.models if m.name == name]
    return model


# --------------------------------------------------------------------------- summary


def table_rows(text: str) -> dict[str, list[str]]:
    """The summary's rows by layer path: the cells, split where two spaces or more part them."""
    lines = text.splitlines()
    rules = [i for i, line in enumerate(lines) if line and set(line) == {"="}]
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[rules[1] + 1 : rules[2]]]
    assert lines[rules[0] + 1].split() == [
        "Layer", "Kind", "Input", "shape", "Output", "shape", "Calls", "Params", "Buffers",
        "Bytes", "FLOPs",
    ]  # fmt: skip
    return {row[0]: row[1:] for row in cells}


def torch_block() -> torch.nn.Module:
    block = torch.nn.Module()
    block.norm = torch.nn.LayerNorm(16)
    block.fc1 = torch.nn.Linear(16, 64)
    block.act = torch.nn.GELU()
    block.fc2 = torch.nn.Linear(64, 16)
    block.forward = lambda x: x + block.fc2(block.act(block.fc1(block.norm(x))))
    return block


def test_summary_of_a_graph_model_with_nested_graph_models(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Net: its layers in declaration order, each nested Block's rows beneath its own (which
    totals them); every count is torch's for the same modules, FLOPs torch's FlopCounterMode's
    plus the bias adds, input and output shapes of the model in the first line."""
    from torch.utils.flop_counter import FlopCounterMode

    embed, head = torch.nn.Linear(8, 16), torch.nn.Linear(32, 3)
    b1, b2 = torch_block(), torch_block()
    net = torch.nn.ModuleDict({"embed": embed, "b1": b1, "b2": b2, "head": head})
    seen: dict[str, tuple[str, str]] = {}  # path -> (input shape, output shape), as torch sees

    def text(t: torch.Tensor) -> str:
        return "(" + ", ".join(["*", *map(str, t.shape[1:])]) + ")"

    for name, module in net.named_modules():
        if name:
            module.register_forward_hook(
                lambda m, i, o, name=name: seen.__setitem__(name, (text(i[0]), text(o)))
            )
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        e = embed(torch.zeros(1, 8))
        head(torch.cat([e, b2(b1(e))], dim=-1))
    bias_adds = 16 + 2 * (64 + 16) + 3

    code, out, err = run_cli(capsys, "summary", "section8.lyr", "--model", "Net")
    assert (code, err) == (0, "")
    assert out.startswith("Model Net (float32): input x (*, 8) -> output (*, 3)\n")
    rows = table_rows(out)
    assert list(rows) == [
        "embed", "b1", "b1.norm", "b1.fc1", "b1.act", "b1.fc2",
        "b2", "b2.norm", "b2.fc1", "b2.act", "b2.fc2", "head",
    ]  # fmt: skip
    modules = dict(net.named_modules())
    for path, cells in rows.items():
        module = modules[path]
        params = sum(p.numel() for p in module.parameters())
        kind = "Block" if path in ("b1", "b2") else repr(module)
        assert cells[:6] == [kind, *seen[path], "1", f"{params:,}", "0"], path
    assert rows["b1"][-1] == f"{2 * 16 * 64 + 64 + 2 * 64 * 16 + 16:,}"  # the Block's FLOPs
    params = sum(p.numel() for p in net.parameters())
    assert f"Parameters:       {params:,} " in out
    assert f"FLOPs per sample: {counter.get_total_flops() + bias_adds:,}\n" in out
    assert "+, -, * and cat are not counted" in out


def test_summary_counts_a_shared_layer_once_and_its_flops_at_every_call(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Outer calls the nested Shared twice, and Shared calls its fc twice: fc runs four times a
    sample, so its FLOPs count four times, while its weights count once, as torch's
    `parameters()` counts a shared module once."""
    from torch.utils.flop_counter import FlopCounterMode

    fc, head = torch.nn.Linear(4, 4), torch.nn.Linear(8, 2)
    outer = torch.nn.ModuleDict({"fc": fc, "head": head})
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        x = torch.zeros(1, 4)
        head(torch.cat([fc(fc(x)), fc(fc(-x))], dim=-1))
    flops = counter.get_total_flops() + 4 * 4 + 2  # the bias adds: fc's at each of 4 runs

    code, out, err = run_cli(capsys, "summary", "shared.lyr")
    assert (code, err) == (0, "")
    assert out.startswith("Model Outer (float32): input x (*, 4) -> outputs (*, 2), (*, 4)\n")
    rows = table_rows(out)
    fc_flops = 2 * 4 * 4 + 4
    assert rows == {
        "s": ["Shared", "(*, 4)", "(*, 4)", "2", "20", "0", "80", f"{4 * fc_flops}"],
        "s.fc": [repr(fc), "(*, 4)", "(*, 4)", "4", "20", "0", "80", f"{4 * fc_flops}"],
        "head": [repr(head), "(*, 8)", "(*, 2)", "1", "18", "0", "72", "34"],
    }
    params = sum(p.numel() for p in outer.parameters())
    assert f"Parameters:       {params} (32 weights, 6 biases)" in out
    assert f"FLOPs per sample: {flops}\n" in out


def test_summary_of_a_model_of_several_inputs_and_outputs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(capsys, "summary", "section8.lyr", "--model", "TwoHeads")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == (
        "Model TwoHeads (float32): inputs x (*, 8), mask (*, 8) -> outputs (*, 2), (*, 3)"
    )
    rows = table_rows(out)
    assert list(rows) == ["trunk", "relu", "a", "b"]
    assert rows["relu"] == ["ReLU()", "(*, 8)", "(*, 8)", "2", "0", "0", "0", "0"]
    assert rows["b"] == [
        repr(torch.nn.Linear(8, 3)),
        "(*, 8)",
        "(*, 3)",
        "1",
        "27",
        "0",
        "108",
        "51",
    ]
    assert "FLOPs per sample: 221\n" in out  # 136 + 34 + 51


# --------------------------------------------------------------------------- graph


def dot_graph(text: str) -> tuple[dict[str, list[str]], list[tuple[str, str, str]], list[str]]:
    """The DOT text's nodes (name -> label lines), edges (tail, head, label) and cluster labels."""
    nodes = {
        name: label.split("\\n")
        for name, label in re.findall(r'^ *(n\d+) \[label="((?:[^"\\]|\\.)*)"', text, re.M)
    }
    edges = re.findall(r'^ *(n\d+) -> (n\d+) \[label="([^"]*)"\];', text, re.M)
    clusters = re.findall(r'^ *label="([^"]*)";$', text, re.M)
    return nodes, edges, clusters


def test_graph_draws_the_dag_of_a_model_of_several_inputs_and_outputs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TwoHeads: an ellipse per input and per output, a box per layer call (relu, called twice,
    twice, numbered), a circle for `*`, and the shapes on the edges."""
    code, text, err = run_cli(capsys, "graph", "section8.lyr", "--model", "TwoHeads")
    assert (code, err) == (0, "")
    nodes, edges, clusters = dot_graph(text)
    assert clusters == []
    labels = {name: label[0] for name, label in nodes.items()}
    assert list(labels.values()) == [
        "input x", "input mask", "trunk", "relu", "*", "a", "relu", "b", "output0", "output1",
    ]  # fmt: skip
    relu1, relu2 = [name for name, label in labels.items() if label == "relu"]
    assert nodes[relu1] == ["relu", "ReLU()", "call 1 of 2"]
    assert nodes[relu2] == ["relu", "ReLU()", "call 2 of 2"]
    assert nodes["n0"] == ["input x", "(*, 8)"] and nodes["n1"] == ["input mask", "(*, 8)"]
    assert [nodes[n] for n in ("n8", "n9")] == [["output0", "(*, 2)"], ["output1", "(*, 3)"]]
    assert nodes["n2"][1:] == [repr(torch.nn.Linear(8, 8)), "72 parameters"]
    named = sorted(
        (labels[a] + (f" {nodes[a][-1]}" if a in (relu1, relu2) else ""), labels[b], shape)
        for a, b, shape in edges
    )
    assert named == sorted(
        [
            ("input x", "trunk", "(*, 8)"),
            ("trunk", "relu", "(*, 8)"),
            ("relu call 1 of 2", "*", "(*, 8)"),
            ("input mask", "*", "(*, 8)"),
            ("*", "a", "(*, 8)"),
            ("*", "relu", "(*, 8)"),
            ("relu call 2 of 2", "b", "(*, 8)"),
            ("a", "output0", "(*, 2)"),
            ("b", "output1", "(*, 3)"),
        ]
    )
    assert re.search(rf"^ *{relu1} \[", text, re.M) and re.search(r'label="\*".*circle', text)


def test_graph_draws_nested_graph_models_as_clusters_per_call(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Net: each Block call is a cluster holding the Block's own DAG, its input flowing in from
    the caller; `cat`'s operands are numbered, as their order matters."""
    code, text, _ = run_cli(capsys, "graph", "section8.lyr", "--model", "Net")
    assert code == 0
    nodes, edges, clusters = dot_graph(text)
    assert clusters == ["b1: Block", "b2: Block"]
    labels = {name: label[0] for name, label in nodes.items()}
    assert list(labels.values()) == [
        "input x", "embed", "b1.norm", "b1.fc1", "b1.act", "b1.fc2", "+",
        "b2.norm", "b2.fc1", "b2.act", "b2.fc2", "+", "cat", "head", "output",
    ]  # fmt: skip
    embed, plus1, plus2, cat = "n1", "n6", "n11", "n12"
    assert (embed, "n2", "(*, 16)") in edges and (embed, plus1, "(*, 16)") in edges
    assert (plus1, "n7", "(*, 16)") in edges and (plus1, plus2, "(*, 16)") in edges
    assert (embed, cat, "1: (*, 16)") in edges and (plus2, cat, "2: (*, 16)") in edges
    assert (cat, "n13", "(*, 32)") in edges and ("n13", "n14", "(*, 3)") in edges
    assert len(edges) == 17
    # the clusters hold their Block's nodes
    body = text[text.index("subgraph cluster_1") : text.index("subgraph cluster_2")]
    assert re.findall(r"^ *(n\d+) \[", body, re.M) == ["n2", "n3", "n4", "n5", "n6"]


def test_graph_numbers_the_calls_of_a_model_called_twice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, text, _ = run_cli(capsys, "graph", "shared.lyr")
    assert code == 0
    nodes, edges, clusters = dot_graph(text)
    assert clusters == ["s: Shared (call 1 of 2)", "s: Shared (call 2 of 2)"]
    fcs = [label for label in nodes.values() if label[0] == "s.fc"]
    assert [label[-1] for label in fcs] == [f"call {k} of 4" for k in (1, 2, 3, 4)]
    assert [label[0] for label in nodes.values()].count("neg") == 1
    ops = [label[0] for label in nodes.values() if label[0] in ("* 0.5", "1 -", "cat")]
    assert ops == ["cat", "* 0.5", "1 -"]
    assert [label for label in nodes.values() if label[0].startswith("output")] == [
        ["output0", "(*, 2)"],
        ["output1", "(*, 4)"],
    ]


@needs_dot
def test_graph_of_a_graph_model_lays_out_and_renders(capsys: pytest.CaptureFixture[str]) -> None:
    """graphviz reads the DOT text: every node, edge and cluster is there, and SVG and PNG
    are drawn."""
    code, text, _ = run_cli(capsys, "graph", "section8.lyr", "--model", "Net")
    assert code == 0
    laid_out = subprocess.run(
        ["dot", "-Tjson"], input=text, capture_output=True, text=True, check=True
    )
    graph = json.loads(laid_out.stdout)
    clusters = [o for o in graph["objects"] if "nodes" in o]
    assert sorted(c["label"] for c in clusters) == ["b1: Block", "b2: Block"]
    assert len(graph["edges"]) == 17 and len(graph["objects"]) == 15 + 2
    assert main(["graph", "section8.lyr", "--model", "TwoHeads", "-o", "heads.svg"]) == 0
    svg = Path("heads.svg").read_text()
    assert "<svg" in svg and "call 2 of 2" in svg and "input mask" in svg
    assert main(["graph", "section8.lyr", "--model", "Net", "-o", "net.png"]) == 0
    assert Path("net.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out == "wrote heads.svg\nwrote net.png\n"


# --------------------------------------------------------------------------- run


def test_run_two_inputs_from_npy_and_csv_into_one_npz(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One --input per input, in forward order, each in its own format; the two outputs go to
    one .npz as output0 and output1, in return order."""
    np.save("x.npy", X.astype(np.float32))
    write_csv(folder / "mask.csv", MASK, header="m0,m1,m2,m3,m4,m5,m6,m7")
    code, out, err = run_cli(
        capsys, "run", "heads.lyr", "-i", "x.npy", "-i", "mask.csv", "-o", "out.npz"
    )
    assert (code, out, err) == (0, "wrote out.npz (7 rows)\n", "")
    with np.load("out.npz") as result:
        assert sorted(result.files) == ["output0", "output1"]
        first, second = heads_reference(X, MASK)
        close(result["output0"], first)
        close(result["output1"], second)
        assert result["output0"].dtype == np.float32


def test_run_inputs_by_name_and_one_file_per_output(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NAME=FILE in any order; --output once per output, in return order, each in the format
    of its extension."""
    write_csv(folder / "x.csv", X)
    (folder / "mask.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in MASK.tolist()), encoding="utf-8"
    )
    code, out, err = run_cli(
        capsys,
        "run", "heads.lyr", "-i", "mask=mask.jsonl", "--input", "x=x.csv",
        "-o", "a.csv", "--output", "b.npy",
    )  # fmt: skip
    assert (code, out, err) == (0, "wrote a.csv, b.npy (7 rows)\n", "")
    first, second = heads_reference(X, MASK)
    close(np.loadtxt("a.csv", delimiter=",", ndmin=2), first)
    close(np.load("b.npy"), second)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_run_inputs_from_one_npz(save, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An .npz holding an array per input, named as in forward (order and extra arrays do not
    matter); the batch shape of the arrays is kept in .npy and .npz outputs."""
    x = np.random.default_rng(5).normal(size=(2, 3, 8))
    mask = np.random.default_rng(6).random((2, 3, 8))
    save("in.npz", mask=mask, notes=np.arange(3.0), x=x.astype(np.float32))
    assert main(["run", "heads.lyr", "-i", "in.npz", "-o", "out3.npz"]) == 0
    assert main(["run", "heads.lyr", "-i", "in.npz", "-o", "y0.npy", "-o", "y1.jsonl"]) == 0
    first, second = heads_reference(x, mask)
    with np.load("out3.npz") as result:
        close(result["output0"], first)
        close(result["output1"], second)
    close(np.load("y0.npy"), first)
    lines = Path("y1.jsonl").read_text().splitlines()
    close(np.array([json.loads(line) for line in lines]), second.reshape(6, 3))
    assert capsys.readouterr().out == "wrote out3.npz (6 rows)\nwrote y0.npy, y1.jsonl (6 rows)\n"


def test_run_reads_several_inputs_in_step_chunk_by_chunk(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs much longer than a chunk are read together, a chunk at a time: the rows of each
    stay paired with the same rows of the other."""
    rows = 5000
    x = np.random.default_rng(8).normal(size=(rows, 8))
    mask = np.random.default_rng(9).normal(size=(rows, 8))
    write_csv(folder / "bigx.csv", x)
    np.savez_compressed("bigmask.npz", mask=mask)
    np.save("bigmask.npy", mask)
    monkeypatch.setattr(run_tool, "CHUNK_VALUES", 1000)  # 125 rows of one input
    calls = []
    real = run_tool.together

    def counting(*args):
        for batch in real(*args):
            calls.append([b.shape[0] for b in batch])
            yield batch

    monkeypatch.setattr(run_tool, "together", counting)
    assert main(["run", "heads.lyr", "-i", "bigx.csv", "-i", "bigmask.npy", "-o", "big.npz"]) == 0
    assert calls[0] == [125, 125] and len(calls) == 40
    assert all(a == b for a, b in calls) and sum(c[0] for c in calls) == rows
    first, second = heads_reference(x, mask)
    with np.load("big.npz") as result:
        close(result["output0"], first)
        close(result["output1"], second)


def test_run_a_graph_model_of_one_input(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Net keeps the plain single-input form; `x=FILE` names its one input, and an .npz of one
    array is read whatever the array's name."""
    net = model_of("section8.lyr", "Net")
    expected = net_reference(net, X)
    np.save("x.npy", X)
    np.savez("one.npz", samples=X)
    code, out, err = run_cli(capsys, "run", "section8.lyr", "--model", "Net", "-i", "x.npy")
    assert (code, err) == (0, "")
    close(np.loadtxt(out.splitlines(), delimiter=","), expected)
    for given in ("x=x.npy", "one.npz"):
        assert main(["run", "section8.lyr", "--model", "Net", "-i", given, "-o", "n.npy"]) == 0
        close(np.load("n.npy"), expected)


def test_run_refuses_a_wrong_count_of_inputs_and_outputs(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Usage errors (exit 2) that say what to give, before anything is written."""
    np.save("x.npy", X)
    np.save("m.npy", MASK)
    np.savez("both.npz", x=X, mask=MASK)
    base = ["run", "heads.lyr"]
    cases = [
        (
            ["-i", "x.npy", "-o", "o.npz"],
            "model Heads takes 2 inputs (x, mask) and 1 --input was given: give one per input "
            "in that order, or NAME=FILE for each, or one .npz holding an array named after each",
        ),
        (
            ["-i", "x.npy", "-i", "m.npy", "-i", "m.npy", "-o", "o.npz"],
            "model Heads takes 2 inputs (x, mask) and 3 --input were given",
        ),
        (
            ["-i", "x=x.npy", "-i", "m.npy", "-o", "o.npz"],
            "give every --input as NAME=FILE, or none",
        ),
        (
            ["-i", "x=x.npy", "-o", "o.npz"],
            "model Heads takes 2 inputs (x, mask): no --input for mask",
        ),
        (
            ["-i", "x=x.npy", "-i", "maks=m.npy", "-o", "o.npz"],
            "--input 'maks=m.npy': model Heads has no input 'maks'; did you mean 'mask'? "
            "(its inputs: x, mask)",
        ),
        (
            ["-i", "x.npy", "-i", "both.npz", "-o", "o.npz"],
            "an .npz input holds an array for every",
        ),
        (
            ["-i", "both.npz"],
            "model Heads gives 2 outputs, which do not fit in one csv file (stdout): give "
            "--output once per output, in return order, or one .npz (--output OUT.npz, "
            "holding output0, output1, ...)",
        ),
        (["-i", "both.npz", "-o", "o.npy"], "which do not fit in one npy file ('o.npy')"),
        (["-i", "both.npz", "-o", "a.csv", "-o", "b.csv", "-o", "c.csv"], "3 --output were given"),
        (["-i", "both.npz", "-o", "a.csv", "-o", "a.csv"], "two --output name the same file"),
        (["-i", "both.npz", "-o", "a.csv", "-o", "-"], "every --output must be a file"),
        (["-i", "both.npz", "-o", "-", "--output-format", "npz"], "an .npz output must be a file"),
        (["-i", "x.npy", "-i", "-", "-i", "-", "-o", "o.npz"], "only one --input can be '-'"),
    ]
    for extra, message in cases:
        code, out, err = run_cli(capsys, *base, *extra)
        assert (code, out) == (2, ""), extra
        assert err.startswith("layerc run: error: ") and message in err, (extra, err)
        assert err.count("\n") == 1
    assert not Path("o.npz").exists() and not Path("c.csv").exists()


def test_run_refuses_inputs_of_different_lengths(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every input must hold the same number of samples: known from .npy and .npz headers
    before anything runs, found at the end of the shorter one for CSV and JSON lines. The
    error names both, nothing is written and an earlier output is left as it was."""
    np.save("x.npy", X)
    np.save("m5.npy", MASK[:5])
    write_csv(folder / "m5.csv", MASK[:5])
    write_csv(folder / "x.csv", X)
    np.savez("short.npz", x=X, mask=MASK[:5])
    np.save("x23.npy", X[:6].reshape(2, 3, 8))
    np.save("m32.npy", MASK[:6].reshape(3, 2, 8))
    Path("kept.npz").write_bytes(b"earlier output")
    cases = [
        (["-i", "x.npy", "-i", "m5.npy"], "m5.npy: holds 5 samples but x.npy holds 7"),
        (["-i", "x.csv", "-i", "m5.csv"], "m5.csv: holds 5 samples but x.csv holds 7"),
        (["-i", "m5.csv", "-i", "x.csv"], "x.csv: holds 7 samples but m5.csv holds 5"),
        (["-i", "x.csv", "-i", "m5.npy"], "m5.npy: holds 5 samples but x.csv holds 7"),
        (["-i", "short.npz"], "short.npz: array 'mask' holds 5 samples but array 'x' holds 7"),
        (
            ["-i", "x23.npy", "-i", "m32.npy"],
            "m32.npy: has batch shape (3, 2) but x23.npy has (2, 3); every input needs the same "
            "batch shape",
        ),
    ]
    for extra, message in cases:
        code, out, err = run_cli(capsys, "run", "heads.lyr", *extra, "-o", "kept.npz")
        assert (code, out) == (1, ""), extra
        assert err.startswith(message) and err.count("\n") == 1, (extra, err)
        if "samples" in message:
            assert err.endswith(
                "; every input needs the same number of samples, in the same order\n"
            )
    assert Path("kept.npz").read_bytes() == b"earlier output"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_run_reports_npz_problems_at_the_file(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez("misnamed.npz", x=X, msk=MASK)
    np.savez("wide.npz", x=X, mask=np.zeros((7, 9)))
    np.savez("objects.npz", x=X, mask=np.array([{"a": 1}] * 7, dtype=object))
    Path("notzip.npz").write_bytes(b"not a zip file")
    cases = {
        "misnamed.npz": "misnamed.npz: has no array 'mask' for input mask of model Heads; did "
        "you mean 'msk'? (it has: 'msk', 'x')",
        "wide.npz": "wide.npz: array 'mask': the array has shape (7, 9) but input mask of model "
        "Heads takes (8,) or (N, 8)",
        "objects.npz": "objects.npz: array 'mask': the array holds Python objects; layerc reads "
        "numeric arrays only",
        "notzip.npz": "notzip.npz: not a valid .npz file: File is not a zip file",
        "missing.npz": "missing.npz: cannot read the file: No such file or directory",
    }
    for name, message in cases.items():
        code, out, err = run_cli(capsys, "run", "heads.lyr", "-i", name, "-o", "o.npz")
        assert (code, out, err) == (1, "", message + "\n")
    # a one-input model takes an .npz of one array whatever its name, not one of several
    np.savez("two.npz", a=X, b=X)
    code, _, err = run_cli(capsys, "run", "section8.lyr", "--model", "Net", "-i", "two.npz")
    assert code == 1
    assert err == "two.npz: has no array 'x' for model Net (it has: 'a', 'b')\n"


def test_run_writes_an_npz_that_numpy_reads_and_nothing_on_failure(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The .npz is a plain zip of .npy files, as np.savez writes; a run that fails after some
    chunks leaves no output and no temporary files."""
    np.savez("both.npz", x=X, mask=MASK)
    assert run_cli(capsys, "run", "heads.lyr", "-i", "both.npz", "-o", "plain.npz")[0] == 0
    with zipfile.ZipFile("plain.npz") as archive:
        assert archive.namelist() == ["output0.npy", "output1.npy"]
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
    write_csv(folder / "x.csv", X)
    bad = MASK.astype(str).tolist()
    bad[6][2] = "oops"
    Path("bad.csv").write_text("".join(",".join(row) + "\n" for row in bad), encoding="utf-8")
    monkeypatch.setattr(run_tool, "CHUNK_VALUES", 40)  # several chunks before the bad row
    before = Path("plain.npz").read_bytes()
    code, out, err = run_cli(
        capsys, "run", "heads.lyr", "-i", "x.csv", "-i", "bad.csv", "-o", "plain.npz"
    )
    assert (code, out, err) == (1, "", "bad.csv:7:3: 'oops' is not a number\n")
    assert Path("plain.npz").read_bytes() == before
    code, _, err = run_cli(
        capsys, "run", "heads.lyr", "-i", "x.csv", "-i", "bad.csv", "-o", "a.npy", "-o", "b.csv"
    )
    assert code == 1 and not Path("a.npy").exists() and not Path("b.csv").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_run_samples_of_several_axes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An input annotated `img: [2, 3]` takes .npy arrays of shape (N, 2, 3), or rows of 6
    values (CSV); a .npy output keeps the sample's axes."""
    w = np.random.default_rng(12).normal(size=(4, 3))
    (tmp_path / "img.lyr").write_text(
        "model Img {\n"
        f"    fc = Linear(3, 4, bias=false) {{ weight = {literal(w)} }}\n"
        "    forward(img: [2, 3], scale: 4) {\n"
        "        return fc(img) * 2, scale\n"
        "    }\n"
        "}\n",
        encoding="utf-8",
    )
    img = np.random.default_rng(13).normal(size=(5, 2, 3))
    scale = np.random.default_rng(14).normal(size=(5, 4))
    np.save(tmp_path / "img.npy", img)
    write_csv(tmp_path / "img.csv", img.reshape(5, 6))
    np.save(tmp_path / "scale.npy", scale)
    expected = f32(img) @ f32(w).T * 2
    for given in ("img.npy", "img.csv"):
        code, _, err = run_cli(
            capsys,
            "run", str(tmp_path / "img.lyr"), "-i", str(tmp_path / given),
            "-i", str(tmp_path / "scale.npy"),
            "-o", str(tmp_path / "y.npy"), "-o", str(tmp_path / "s.csv"),
        )  # fmt: skip
        assert (code, err) == (0, ""), err
        close(np.load(tmp_path / "y.npy"), expected)
        close(np.loadtxt(tmp_path / "s.csv", delimiter=",", ndmin=2), f32(scale))
    np.save(tmp_path / "bad.npy", np.zeros((5, 3, 2)))
    code, _, err = run_cli(
        capsys,
        "run", str(tmp_path / "img.lyr"), "-i", str(tmp_path / "bad.npy"),
        "-i", str(tmp_path / "scale.npy"), "-o", str(tmp_path / "o.npz"),
    )  # fmt: skip
    assert code == 1
    assert err.endswith(
        "bad.npy: the array has shape (5, 3, 2) but input img of model Img takes (2, 3) or "
        "(N, 2, 3), or (N, 6) flattened\n"
    )


# --------------------------------------------------------------------------- layerc test


def test_layerc_test_with_tuples_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """Section 8's test of Pair: two inputs, two outputs, as the spec writes it."""
    code, out, err = run_cli(capsys, "test", "section8.lyr")
    assert (code, err) == (0, "")
    assert out == (
        "PASS section8.lyr:46 test Pair: max abs error 0, max rel error 0 "
        "(atol 1e-05, rtol 1.3e-06)\n"
        "1 passed, 0 failed\n"
    )


def pair_outputs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(x, dtype=np.float64) @ np.array([[1.0, 2.0], [3.0, 4.0]]).T
    return x + h, h * np.asarray(y, dtype=np.float64)


def test_layerc_test_names_the_output_that_fails(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong expectation in the second output is reported as `output 2 of 2`, with its own
    largest errors and its worst elements; the output that matches is not listed."""
    x = np.array([[1, 1], [2, -1], [0, 3]], dtype=np.float64)
    y = np.array([[2, 0], [1, 1], [-1, 2]], dtype=np.float64)
    first, second = pair_outputs(x, y)  # [[4, 8], [2, 4], [6, 15]], [[6, 0], [0, 2], [-6, 24]]
    wrong = second.copy()
    wrong[2, 1] += 1  # 25 instead of 24
    pair = SECTION8[SECTION8.index("model Pair") : SECTION8.index("test Pair")]

    def tests(*blocks: tuple[np.ndarray, np.ndarray]) -> str:
        text = ""
        for out0, out1 in blocks:
            text += (
                f"\ntest Pair {{\n    input = ({x.astype(int).tolist()}, {y.astype(int).tolist()})\n"
                f"    expect = ({out0.astype(int).tolist()}, {out1.astype(int).tolist()})\n}}\n"
            )
        return text

    Path("pair.lyr").write_text(pair + tests((first, second), (first, wrong)), encoding="utf-8")
    code, out, err = run_cli(capsys, "test", "pair.lyr")
    assert (code, err) == (1, "")
    rel = f"{1 / 25:.3g}"
    assert out.splitlines() == [
        "PASS pair.lyr:11 test Pair: max abs error 0, max rel error 0 (atol 1e-05, rtol 1.3e-06)",
        f"FAIL pair.lyr:16 test Pair: max abs error 1, max rel error {rel} "
        "(atol 1e-05, rtol 1.3e-06)",
        f"    output 2 of 2: max abs error 1, max rel error {rel}",
        "        1 of 6 elements outside the tolerance:",
        "        index    got  expected  abs error  rel error",
        f"        [2, 1]  24.0      25.0          1  {rel:>9}",
        "1 passed, 1 failed",
    ]

    both = first.copy()
    both[0, 0] = 5  # 4 expected wrongly as 5
    Path("pair2.lyr").write_text(pair + tests((both, wrong)), encoding="utf-8")
    code, out, _ = run_cli(capsys, "test", "pair2.lyr")
    assert code == 1
    lines = out.splitlines()
    assert lines[1] == "    output 1 of 2: max abs error 1, max rel error 0.2"
    assert lines[2:5] == [
        "        1 of 6 elements outside the tolerance:",
        "        index   got  expected  abs error  rel error",
        "        [0, 0]  4.0       5.0          1        0.2",
    ]
    assert lines[5] == f"    output 2 of 2: max abs error 1, max rel error {rel}"


def test_layerc_test_of_a_graph_model_of_one_output(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Net, expected values from NumPy on its weights: one output is reported as before."""
    net = model_of("section8.lyr", "Net")
    x = np.random.default_rng(21).normal(size=(3, 8)).round(3)
    expected = net_reference(net, x)
    text = SECTION8[: SECTION8.index("model TwoHeads")] + (
        f"test Net {{\n    input = {x.tolist()}\n    expect = {expected.tolist()}\n"
        "    atol = 1e-5\n    rtol = 1e-5\n}\n"
    )
    Path("net.lyr").write_text(text, encoding="utf-8")
    code, out, err = run_cli(capsys, "test", "net.lyr")
    assert (code, err) == (0, ""), out
    assert out.startswith("PASS net.lyr:") and out.endswith("1 passed, 0 failed\n")


def test_a_model_giving_the_wrong_number_of_outputs_fails_its_test() -> None:
    """What `layerc test` says when a model does not return one array per expected output
    (which generated code never does; the report must still not crash)."""
    model = model_of("section8.lyr", "Pair")
    test = ir.TestCase(
        model,
        (np.ones(2, np.float32), np.ones(2, np.float32)),
        (np.ones(2), np.ones(2)),
        1e-5,
        1e-5,
        model.loc,
    )
    result = driver.check_outputs(test, np.ones(2, np.float32))
    assert not result.passed and result.problem == "the model gave 1 output(s), the test expects 2"
    good = driver.check_outputs(test, (np.ones(2, np.float32), np.ones(2, np.float32)))
    assert good.passed and len(good.outputs) == 2 and good.max_abs == 0


def test_run_npz_arrays_in_fortran_order(
    folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An array saved in Fortran order cannot be streamed by rows: it is read whole up to a
    chunk's worth of values, and refused, saying what to do, beyond that."""
    np.savez("fortran.npz", x=np.asfortranarray(X), mask=np.asfortranarray(MASK))
    with zipfile.ZipFile("fortran.npz") as archive, archive.open("x.npy") as member:
        assert b"'fortran_order': True" in member.read(128)
    assert run_cli(capsys, "run", "heads.lyr", "-i", "fortran.npz", "-o", "f.npz")[0] == 0
    first, second = heads_reference(X, MASK)
    with np.load("f.npz") as result:
        close(result["output0"], first)
        close(result["output1"], second)
    monkeypatch.setattr(run_tool, "CHUNK_VALUES", 50)
    code, out, err = run_cli(capsys, "run", "heads.lyr", "-i", "fortran.npz", "-o", "f.npz")
    assert (code, out) == (1, "")
    assert err == (
        "fortran.npz: array 'x': the array is saved in Fortran order, which layerc reads by "
        "rows only up to 50 values; save np.ascontiguousarray(array) instead\n"
    )
