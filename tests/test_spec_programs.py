"""Every program of the language spec compiles as written, and section 1's claims about the
generated module hold; section 7's table of layer kinds is the compiler's.

The spec lives outside the repository, so its programs are copied verbatim into
tests/spec_programs/ (one file per fenced .lyr block, in the spec's order: seed.lyr is section
1's untagged block, section8.lyr section 8's block tagged `lyr`, the graph models), and its
section 7 (the layer kinds, whose one program is inline) into tests/spec_programs/section7.md.
When the spec is reachable (LAYERC_SPEC, or ../shared/spec/language.md beside the checkout) the
copies are also compared with it, so an edited spec shows up here. Every copy checks, compiles
and passes its own `test` blocks with the command line (section 8's test of Pair is one of
tuples: two inputs, two outputs); tests/test_graph_torch.py compares section 8's models with
PyTorch.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from layerc import cli, driver
from layerc.binder import REQUIRED
from layerc.kinds import KINDS

HERE = Path(__file__).resolve().parent
# The copies in the spec's order (file names sort otherwise).
PROGRAMS = [HERE / "spec_programs" / name for name in ("seed.lyr", "section8.lyr")]


def spec_path() -> Path | None:
    candidates = [os.environ.get("LAYERC_SPEC"), HERE.parent.parent / "shared/spec/language.md"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def lyr_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of the spec that are .lyr programs (no language tag, or `lyr`;
    not Python, not C), in order."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", markdown, re.S | re.M)
    return [body for tag, body in blocks if tag in ("", "lyr")]


def test_lyr_blocks_takes_untagged_and_lyr_blocks_only():
    markdown = "```\na\n```\n```python\nb\n```\n```lyr\nc\n```\n```c\nd\n```\n"
    assert lyr_blocks(markdown) == ["a\n", "c\n"]


def test_copies_are_the_spec_programs():
    assert sorted(p.name for p in (HERE / "spec_programs").glob("*.lyr")) == sorted(
        p.name for p in PROGRAMS
    )
    copies = [p.read_text(encoding="utf-8") for p in PROGRAMS]
    assert copies[0].startswith("# seed.lyr: the 4 -> 3 linear layer without bias\nmodel Seed {")
    assert copies[1].startswith("model Block {\n    norm = LayerNorm(16)\n")
    assert [m for m in re.findall(r"^model (\w+)", copies[1], re.M)] == [
        "Block",
        "Net",
        "TwoHeads",
        "Pair",
    ]
    assert "test Pair {\n    input = ([1, 1], [2, 0])\n" in copies[1]
    spec = spec_path()
    if spec is not None:  # in CI the spec may live elsewhere; the copies are then the contract
        markdown = spec.read_text(encoding="utf-8")
        assert lyr_blocks(markdown) == copies
        assert f"```lyr\n{copies[1]}```" in spec_section(markdown, 8)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_program_compiles_and_its_tests_pass(program: Path, tmp_path: Path, capsys):
    source = tmp_path / program.name
    source.write_bytes(program.read_bytes())
    assert cli.main(["check", str(source)]) == 0
    assert capsys.readouterr().err == ""  # no warning either
    assert cli.main(["compile", str(source)]) == 0
    assert source.with_suffix(".py").is_file()
    capsys.readouterr()
    assert cli.main(["test", str(source)]) == 0
    out = capsys.readouterr().out
    tests = len(re.findall(r"^test \w+", program.read_text(encoding="utf-8"), re.M))
    assert tests >= 1 and len(re.findall(r"^PASS ", out, re.M)) == tests, out
    assert f"{tests} passed, 0 failed" in out


def test_section_8_test_of_tuples_can_fail(tmp_path: Path, capsys):
    """The test of Pair compares both outputs: a wrong value in the second one fails it."""
    text = (HERE / "spec_programs" / "section8.lyr").read_text(encoding="utf-8")
    assert "expect = ([4, 8], [6, 0])" in text
    source = tmp_path / "wrong.lyr"
    source.write_text(text.replace("expect = ([4, 8], [6, 0])", "expect = ([4, 8], [6, 1])"))
    assert cli.main(["test", str(source)]) != 0
    out = capsys.readouterr().out
    assert "FAIL" in out and "0 passed, 1 failed" in out, out


def test_section_1_runtime_claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`layerc compile seed.lyr` writes seed.py beside it; then, as the spec's Python block:
    Seed()([1, 2, 3, 4]) is exactly [30, 40, 50] in float32, net.fc's repr is torch's and the
    weight is (out_features, in_features)."""
    source = tmp_path / "seed.lyr"
    source.write_bytes((HERE / "spec_programs" / "seed.lyr").read_bytes())
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compile", "seed.lyr"]) == 0
    assert (tmp_path / "seed.py").is_file()

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "seed", raising=False)
    from seed import Seed  # the spec's own import line

    try:
        net = Seed()
        y = net(np.array([1, 2, 3, 4], dtype=np.float32))
        assert type(y) is np.ndarray and y.dtype == np.float32 and y.shape == (3,)
        assert y.tolist() == [30.0, 40.0, 50.0]
        assert repr(y) == "array([30., 40., 50.], dtype=float32)"
        assert repr(net.fc) == "Linear(in_features=4, out_features=3, bias=False)"
        assert net.fc.weight.shape == (3, 4)
        assert net.fc.weight.tolist() == [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]]
        assert net.fc.bias is None
        assert repr(net) == "Seed(\n  (fc): Linear(in_features=4, out_features=3, bias=False)\n)"
    finally:
        sys.modules.pop("seed", None)


def test_output_option_writes_elsewhere(tmp_path: Path):
    """`-o PATH` writes the module there instead of beside the source."""
    source = tmp_path / "seed.lyr"
    source.write_bytes((HERE / "spec_programs" / "seed.lyr").read_bytes())
    out = tmp_path / "build" / "lesson.py"
    out.parent.mkdir()
    assert cli.main(["compile", str(source), "-o", str(out)]) == 0
    assert out.is_file() and not (tmp_path / "seed.py").exists()
    net = driver.import_module(out).Seed()
    assert net(np.array([[1, 2, 3, 4], [0, 0, 0, 1]], np.float32)).tolist() == [
        [30, 40, 50],
        [4, 5, 6],
    ]


# --------------------------------------------------------------------------- section 7

SECTION7 = HERE / "spec_programs" / "section7.md"


def spec_section(markdown: str, number: int) -> str:
    """Section `number` of the spec, from its heading to the next section's."""
    start = markdown.index(f"\n## {number}. ") + 1
    return markdown[start : markdown.index(f"\n## {number + 1}. ") + 1]


def test_section_7_copy_is_the_spec():
    text = SECTION7.read_text(encoding="utf-8")
    assert text.startswith("## 7. More layer kinds")
    spec = spec_path()
    if spec is not None:
        assert spec_section(spec.read_text(encoding="utf-8"), 7) == text


def _lyr_literal(text: str) -> object:
    """A default as the spec writes it: true, false, a number or a string."""
    if text in ("true", "false"):
        return text == "true"
    if text.startswith('"'):
        return text.strip('"')
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text)


def section7_rows() -> list[tuple[list[str], list[tuple[str, object]], list[str]]]:
    """(kinds, [(argument, default or REQUIRED)], [weight and buffer names]) per table row."""
    out = []
    for row in re.findall(r"^\| (`.+?) \| (.+?) \| (.+?) \|$", SECTION7.read_text("utf-8"), re.M):
        kinds = re.findall(r"`(\w+)`", row[0])
        arguments = []
        for name, default in re.findall(r"`(\w+)(?:=([^`]+))?`", row[1]):
            arguments.append((name, _lyr_literal(default) if default else REQUIRED))
        out.append((kinds, arguments, re.findall(r"`(\w+)`", row[2])))
    return out


def test_section_7_table_is_the_kinds_table():
    """Each kind of the spec's table has exactly its arguments (names, order, defaults) in
    layerc.kinds, and the weights and buffers (state_dict keys) the table names. (torch 2.13's
    BatchNorm1d also takes a keyword-only `bias=True`, which the table does not list.)"""
    rows = section7_rows()
    assert len(rows) == 11
    for kinds, arguments, tensors in rows:
        for name in kinds:
            spec = KINDS[name]
            ours = [(p.name, p.default) for p in spec.params if not p.keyword_only]
            assert ours == arguments, name
            extra = [p.name for p in spec.params if p.keyword_only]
            assert extra == (["bias"] if name == "BatchNorm1d" else []), name
            assert [t.name for t in spec.tensors] == tensors, name


def test_section_7_program(tmp_path: Path):
    """The section's program (its Linear's block elided as `{...}`, which this test fills with
    an initialiser) takes (1, 28, 28) and (*, 1, 28, 28), as the torch model of the same layers
    and weights does."""
    import torch

    (program,) = re.findall(r"`(model [^`]+)`", SECTION7.read_text(encoding="utf-8"))
    assert "{...}" in program
    source = program.replace("{...}", "{ init = uniform(seed=0) }")
    src = tmp_path / "mnist.lyr"
    src.write_text(source + "\n", encoding="utf-8")
    driver.compile_file(src)
    net = driver.import_module(src.with_suffix(".py")).Mnist()
    reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    x = np.random.default_rng(7).random((5, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net(x), expected, rtol=1.3e-6, atol=1e-5)
    np.testing.assert_allclose(net(x[0]), expected[0], rtol=1.3e-6, atol=1e-5)
    assert net(x.reshape(5, 1, 1, 28, 28)).shape == (5, 1, 10)
    with pytest.raises(
        ValueError, match=r"expected input of shape \(1, 28, 28\) or \(\*, 1, 28, 28\)"
    ):
        net(np.zeros((5, 784), np.float32))
