"""Every program of the language spec compiles as written, and section 1's claims about the
generated module hold.

The spec lives outside the repository, so its programs are copied verbatim into
tests/spec_programs/ (one file per fenced .lyr block, in order). When the spec is reachable
(LAYERC_SPEC, or ../shared/spec/language.md beside the checkout) the copies are also compared
with it, so an edited spec shows up here.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from layerc import cli, driver

HERE = Path(__file__).resolve().parent
PROGRAMS = sorted((HERE / "spec_programs").glob("*.lyr"))


def spec_path() -> Path | None:
    candidates = [os.environ.get("LAYERC_SPEC"), HERE.parent.parent / "shared/spec/language.md"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def lyr_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of the spec that are .lyr programs (no language tag, not Python)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", markdown, re.S | re.M)
    return [body for tag, body in blocks if not tag]


def test_copies_are_the_spec_programs():
    assert [p.name for p in PROGRAMS] == ["seed.lyr"]
    copies = [p.read_text(encoding="utf-8") for p in PROGRAMS]
    assert copies[0].startswith("# seed.lyr: the 4 -> 3 linear layer without bias\nmodel Seed {")
    spec = spec_path()
    if spec is not None:  # in CI the spec may live elsewhere; the copies are then the contract
        assert lyr_blocks(spec.read_text(encoding="utf-8")) == copies


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_program_compiles_and_its_tests_pass(program: Path, tmp_path: Path, capsys):
    source = tmp_path / program.name
    source.write_bytes(program.read_bytes())
    assert cli.main(["check", str(source)]) == 0
    assert cli.main(["compile", str(source)]) == 0
    assert source.with_suffix(".py").is_file()
    assert cli.main(["test", str(source)]) == 0
    assert "0 failed" in capsys.readouterr().out


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
