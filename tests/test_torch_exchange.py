"""PyTorch exchange: a torch model's safetensors state_dict compiles by key and matches torch
(float32, float64, bfloat16 weights), a generated module's state_dict loads into the torch model
of the same structure and matches it, and the recipe in docs/weights.md runs as written."""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from layerc import cli, driver

ROOT = Path(__file__).resolve().parents[1]
F32_TOL = {"rtol": 1.3e-6, "atol": 1e-5}
F64_TOL = {"rtol": 1e-7, "atol": 1e-7}


def torch_mlp(dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(1)
    return (
        torch.nn.Sequential(
            torch.nn.Linear(12, 16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 8),
            torch.nn.Tanh(),
            torch.nn.Linear(8, 3, bias=False),
            torch.nn.Sigmoid(),
        )
        .to(dtype)
        .eval()
    )


def mlp_source(weights: str, options: str = "") -> str:
    """The .lyr twin of torch_mlp: unnamed layers, so the keys are torch's positions."""

    def linear(position: int, shape: tuple[int, int], bias: bool) -> str:
        lines = [
            f"    Linear({shape[0]}, {shape[1]}, bias={'true' if bias else 'false'}) {{",
            f'        weight = load("{weights}", "{position}.weight")',
        ]
        if bias:
            lines.append(f'        bias = load("{weights}", "{position}.bias")')
        return "\n".join([*lines, "    }"])

    return "\n".join(
        [
            f"model Mlp{options} {{",
            linear(0, (12, 16), True),
            "    ReLU()",
            linear(2, (16, 8), True),
            "    Tanh()",
            linear(4, (8, 3), False),
            "    Sigmoid()",
            "}",
            "",
        ]
    )


@pytest.fixture(scope="module", params=["float32", "float64"])
def from_torch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A torch model saved with safetensors.torch.save_file, loaded by key and compiled."""
    folder = tmp_path_factory.mktemp(f"from_torch_{request.param}")
    dtype = getattr(torch, request.param)
    net = torch_mlp(dtype)
    save_file(net.state_dict(), str(folder / "mlp.safetensors"))
    options = "(dtype=float64)" if request.param == "float64" else ""
    src = folder / "mlp.lyr"
    src.write_text(mlp_source("mlp.safetensors", options))
    _, written = driver.compile_file(src)
    return net, driver.import_module(written[-1]).Mlp(), np.dtype(request.param)


def test_safetensors_state_dict_compiles_and_matches_torch(from_torch) -> None:
    net, ours, dtype = from_torch
    for key, tensor in net.state_dict().items():
        np.testing.assert_array_equal(ours.state_dict()[key], tensor.numpy())
    x = np.random.default_rng(0).standard_normal((33, 12)).astype(dtype) * 2
    expected = net(torch.from_numpy(x)).detach().numpy()
    got = ours(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, **(F32_TOL if dtype == np.float32 else F64_TOL))


def test_generated_state_dict_loads_into_torch(from_torch) -> None:
    net, ours, dtype = from_torch
    twin = torch_mlp(net[0].weight.dtype)
    for parameter in twin.parameters():  # forget torch's weights: only ours may be in there
        torch.nn.init.zeros_(parameter)
    result = twin.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()}
    )
    assert not result.missing_keys and not result.unexpected_keys
    x = np.random.default_rng(1).standard_normal((4, 12)).astype(dtype)
    np.testing.assert_allclose(
        twin(torch.from_numpy(x)).detach().numpy(),
        ours(x),
        **(F32_TOL if dtype == np.float32 else F64_TOL),
    )


def test_torch_state_dict_loads_into_the_generated_module(from_torch) -> None:
    """The reverse at run time: torch tensors into the compiled module, no recompiling."""
    net, ours, dtype = from_torch
    other = torch_mlp(net[0].weight.dtype)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(-0.5)
    ours.load_state_dict(other.state_dict())
    x = np.random.default_rng(2).standard_normal((6, 12)).astype(dtype)
    np.testing.assert_allclose(
        ours(x),
        other(torch.from_numpy(x)).detach().numpy(),
        **(F32_TOL if dtype == np.float32 else F64_TOL),
    )
    ours.load_state_dict(net.state_dict())  # leave the module-scoped model as it was


def test_bfloat16_and_float16_state_dicts_widen_exactly(tmp_path: Path) -> None:
    for dtype in (torch.bfloat16, torch.float16):
        net = torch_mlp(dtype)
        save_file(net.state_dict(), str(tmp_path / "half.safetensors"))
        (tmp_path / "half.lyr").write_text(mlp_source("half.safetensors"))
        program, _ = driver.check_file(tmp_path / "half.lyr")
        linears = [
            layer for layer in program.models[0].layers if getattr(layer, "kind", None) == "Linear"
        ]
        for position, layer in zip((0, 2, 4), linears, strict=True):
            expected = net.state_dict()[f"{position}.weight"].float().numpy()
            np.testing.assert_array_equal(layer.weight, expected)


def test_named_layers_and_nested_models_use_torch_keys(tmp_path: Path) -> None:
    """`fc1 = Linear(...)` has the key fc1.weight; a nested model gives enc.fc.weight."""

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(5, 4)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(3)
    net = torch.nn.Sequential(
        OrderedDict(enc=Encoder(), act=torch.nn.LeakyReLU(0.1), head=torch.nn.Linear(4, 2))
    ).eval()
    save_file(net.state_dict(), str(tmp_path / "net.safetensors"))
    (tmp_path / "net.lyr").write_text(
        'model Encoder { fc = Linear(5, 4) { weight = load("net.safetensors", "enc.fc.weight");'
        ' bias = load("net.safetensors", "enc.fc.bias") } }\n'
        "model Net {\n  enc = Encoder\n  act = LeakyReLU(0.1)\n"
        '  head = Linear(4, 2) { weight = load("net.safetensors", "head.weight");'
        ' bias = load("net.safetensors", "head.bias") }\n}\n'
    )
    _, written = driver.compile_file(tmp_path / "net.lyr")
    ours = driver.import_module(written[-1]).Net()
    assert sorted(ours.state_dict()) == sorted(net.state_dict())
    x = np.random.default_rng(4).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_allclose(ours(x), net(torch.from_numpy(x)).detach().numpy(), **F32_TOL)


# --------------------------------------------------------------------------- the docs recipe

FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def test_docs_recipe_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Run docs/weights.md in an empty folder: `lyr` blocks that start with `# NAME.lyr` are
    written to NAME.lyr, `sh` lines run through the CLI, `python` blocks run in one namespace."""
    text = (ROOT / "docs" / "weights.md").read_text(encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict = {"__name__": "docs_weights"}
    ran = {"lyr": 0, "sh": 0, "python": 0}
    for lang, body in FENCE.findall(text):
        if lang == "lyr":
            first = body.splitlines()[0]
            match = re.fullmatch(r"# (\w+\.lyr)", first)
            if match:
                (tmp_path / match.group(1)).write_text(body, encoding="utf-8")
                ran["lyr"] += 1
        elif lang == "sh":
            for line in body.splitlines():
                argv = line.split()
                assert argv[0] == "layerc", line
                assert cli.main(argv[1:]) == 0, capsys.readouterr().err
                ran["sh"] += 1
        elif lang == "python":
            exec(compile(body, "docs/weights.md", "exec"), namespace)  # noqa: S102
            ran["python"] += 1
    assert ran == {"lyr": 1, "sh": 3, "python": 4}
    assert (tmp_path / "reimported.lyr").exists() and (tmp_path / "reimported.safetensors").exists()
    sys.modules.pop("classifier", None)
