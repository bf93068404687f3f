"""The bundled samples: `layerc test` passes on every one of them, their test vectors are the
ones the make_ scripts compute with PyTorch (so data and scripts cannot drift apart), and the
test blocks do catch a wrong output."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layerc import driver
from layerc.tools.fmt import format_source

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SOURCES = sorted(SAMPLES.glob("*.lyr"))
SCRIPTS = sorted(SAMPLES.glob("make_*.py"))
# Committed data files whose values come out of BLAS: another CPU may round the last bit
# differently, so these are compared to within a few ulps; everything else byte for byte.
COMPUTED = re.compile(r".*_expect\.npy")


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_the_samples_are_there():
    assert {"mlp.lyr", "nested.lyr", "residual.lyr", "seed.lyr"} <= {p.name for p in SOURCES}
    assert {"make_mlp.py", "make_nested.py", "make_residual.py"} <= {p.name for p in SCRIPTS}
    # the lesson is the spec's seed.lyr (kept verbatim in spec_programs), in `layerc fmt` layout
    spec_seed = Path(__file__).parent / "spec_programs" / "seed.lyr"
    spec_text = spec_seed.read_text(encoding="utf-8")
    assert (SAMPLES / "seed.lyr").read_text(encoding="utf-8") == format_source(spec_text)


def test_layerc_test_passes_on_every_sample():
    """`layerc test samples/*.lyr` from the command line: every test block passes, each is
    reported with its errors, and nothing is written into samples/."""
    before = sorted(p.name for p in SAMPLES.iterdir() if p.name != "__pycache__")
    done = run("-m", "layerc.cli", "test", *(p.relative_to(ROOT) for p in SOURCES))
    assert done.returncode == 0, done.stdout + done.stderr
    blocks = {p.stem: len(re.findall(r"^test\s", p.read_text(), re.M)) for p in SOURCES}
    assert blocks["seed"] == 1 and blocks["mlp"] == 2 and blocks["nested"] == 2
    assert blocks["residual"] == 2
    report = r"^PASS samples/(\w+)\.lyr:\d+ test \w+: max abs error \S+, max rel error \S+"
    passes = re.findall(report, done.stdout, re.M)
    assert {name: passes.count(name) for name in blocks} == blocks
    assert f"{sum(blocks.values())} passed, 0 failed" in done.stdout
    after = sorted(p.name for p in SAMPLES.iterdir() if p.name != "__pycache__")
    assert after == before


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_make_script_reproduces_the_committed_data(script: Path, tmp_path: Path):
    done = run(script, "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made, f"{script.name} wrote nothing"
    for name in made:
        committed = SAMPLES / name
        assert committed.is_file(), f"{script.name} makes {name}, which is not in samples/"
        fresh = (tmp_path / name).read_bytes()
        if COMPUTED.fullmatch(name) and fresh != committed.read_bytes():
            new, old = np.load(tmp_path / name), np.load(committed)
            assert new.dtype == old.dtype and new.shape == old.shape, name
            np.testing.assert_allclose(new, old, rtol=1e-13, atol=1e-15, err_msg=name)
        else:
            assert fresh == committed.read_bytes(), f"{name} differs from what {script.name} makes"
        assert name.startswith(script.stem.removeprefix("make_") + "_"), "one prefix per sample"


def copy_sample(name: str, folder: Path) -> Path:
    """Copy samples/NAME.lyr and the data files it names into `folder`."""
    source = SAMPLES / f"{name}.lyr"
    shutil.copy(source, folder)
    for data in sorted(set(re.findall(r'load\("([^"]+)"', source.read_text()))):
        shutil.copy(SAMPLES / data, folder)
    return folder / source.name


def test_test_blocks_catch_a_wrong_output(tmp_path: Path):
    """Moving one expected value of mlp.lyr's batch by 1e-4 (ten times its atol) fails that
    test block and only that one."""
    source = copy_sample("mlp", tmp_path)
    expect = np.load(tmp_path / "mlp_expect.npy")
    expect[2, 1] += 1e-4
    np.save(tmp_path / "mlp_expect.npy", expect)
    _, results = driver.run_tests(source)
    assert [r.passed for r in results] == [False, True]
    assert results[0].max_abs == pytest.approx(1e-4, rel=0.01)


def test_compiled_sample_needs_no_weight_file(tmp_path: Path):
    """The module compiled from nested.lyr still runs, and gives the torch outputs, once the
    .safetensors file and the test vectors are gone: it never reads the original files."""
    source = copy_sample("nested", tmp_path)
    x = np.load(tmp_path / "nested_input.npy")
    expect = np.load(tmp_path / "nested_expect.npy")
    encoded = np.load(tmp_path / "nested_encoder_expect.npy")
    driver.compile_file(source)
    for path in tmp_path.iterdir():
        if path.suffix in (".safetensors", ".npy", ".lyr"):
            path.unlink()
    module = driver.import_module(tmp_path / "nested.py")
    net = module.Classifier()
    y = net(x)
    assert y.dtype == np.float64 and y.shape == (5, 3)
    np.testing.assert_allclose(y, expect, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(net.enc(x), encoded, rtol=1e-7, atol=1e-7)
    assert list(net.state_dict()) == [
        "enc.fc.weight",
        "enc.fc.bias",
        "head.weight",
        "head.bias",
        "out.weight",
        "out.bias",
    ]
