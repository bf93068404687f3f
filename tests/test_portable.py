"""Self-contained pickles (layerc/runtime/portable.py): an instance of a generated model pickles
with its module's source and weights file, so a fresh Python process that has layerc but not the
generated file (the module is deleted before the pickle is loaded, and its folder is never on
`sys.path`) unpickles and runs it, computing what PyTorch computed for the samples (their test
blocks) or NumPy in float64; the module lands in $LAYERC_CACHE_DIR, where numba's cache serves
a second process every kernel the first compiled."""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from layerc import driver

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"

# The child: unpickle (net, inputs) from stdin, run, and pickle back the outputs, and for each
# numba kernel of the net's module how often numba's cache hit and missed.
CHILD = """
import pickle, sys
net, inputs = pickle.loads(sys.stdin.buffer.read())
outputs = net(*inputs)
module = sys.modules[type(net).__module__]
stats = {}
for name, value in vars(module).items():
    found = getattr(value, "stats", None)
    if found is not None and hasattr(found, "cache_hits"):
        stats[name] = (sum(found.cache_hits.values()), sum(found.cache_misses.values()))
sys.stdout.buffer.write(pickle.dumps((outputs, type(net).__module__, stats)))
"""


def in_fresh_process(blob: bytes, cache: Path, cwd: Path) -> tuple[object, str, dict]:
    """Run CHILD on `blob` in a new Python whose only path to layerc is the installed package
    (the repository root for an editable install), in the folder `cwd`."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    env["LAYERC_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = str(ROOT)  # layerc, as if installed; never the generated file's folder
    done = subprocess.run(
        [sys.executable, "-c", CHILD], input=blob, capture_output=True, env=env, cwd=cwd
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return pickle.loads(done.stdout)


def compiled(tmp_path: Path, source: Path, extra: tuple[Path, ...] = ()) -> tuple[object, object]:
    """The sample compiled in a folder of its own and imported: (program, module)."""
    folder = tmp_path / "compiled"
    folder.mkdir()
    for path in (source, *extra):
        shutil.copy(path, folder / path.name)
    program, written = driver.compile_file(folder / source.name)
    return program, driver.import_module(written[-1]), folder


@pytest.mark.parametrize("sample", ["seed", "mlp", "nested", "residual"])
def test_a_pickled_sample_runs_in_a_process_without_its_module(tmp_path: Path, sample: str) -> None:
    extra = tuple(p for p in SAMPLES.iterdir() if p.suffix in (".npy", ".npz", ".safetensors"))
    program, module, folder = compiled(tmp_path, SAMPLES / f"{sample}.lyr", extra)
    assert program.tests
    nets = {test.model.name: getattr(module, test.model.name)() for test in program.tests}
    blobs = [pickle.dumps((nets[test.model.name], test.inputs)) for test in program.tests]
    shutil.rmtree(folder)  # the generated module and its weights are gone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for test, blob in zip(program.tests, blobs, strict=True):
        outputs, name, _ = in_fresh_process(blob, tmp_path / "cache", elsewhere)
        assert name.startswith("_layerc_run_")  # imported from layerc's cache
        result = driver.check_outputs(test, outputs)  # against the torch outputs of the sample
        assert result.passed, (test.model.name, result.problem, result.max_abs)


BIG = """
model Big {
    fc1 = Linear(256, 256) { init = uniform(seed=0) }
    act = GELU()
    fc2 = Linear(256, 8) { init = uniform(seed=1) }
}
"""


def test_weights_file_state_and_numbas_cache_travel_with_the_pickle(tmp_path: Path) -> None:
    """A model large enough for a weights file beside its module, with weights changed after it
    was built: the unpickled copy computes with the changed weights (NumPy in float64), and a
    second process finds every kernel in numba's cache that the first compiled."""
    source = tmp_path / "big.lyr"
    source.write_text(BIG, encoding="utf-8")
    program, module, folder = compiled(tmp_path, source)
    assert list(folder.glob("*.weights")), "the model's weights should be in a weights file"
    net = module.Big()
    state = {k: np.asarray(v) for k, v in net.state_dict().items()}
    state["fc2.weight"] = state["fc2.weight"] * -3
    net.load_state_dict(state)
    x = np.random.default_rng(0).standard_normal((5, 256)).astype(np.float32)
    blob = pickle.dumps((net, (x,)))
    shutil.rmtree(folder)
    cache = tmp_path / "cache"
    first, _, first_stats = in_fresh_process(blob, cache, tmp_path)
    second, _, second_stats = in_fresh_process(blob, cache, tmp_path)

    from scipy.special import erf

    h = x.astype(np.float64) @ state["fc1.weight"].T.astype(np.float64) + state["fc1.bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    want = h @ state["fc2.weight"].T.astype(np.float64) + state["fc2.bias"]
    np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(second, first)
    assert first_stats and sum(misses for _, misses in first_stats.values()) > 0
    assert sum(misses for _, misses in second_stats.values()) == 0, second_stats
    assert sum(hits for hits, _ in second_stats.values()) > 0


def test_one_pickle_carries_a_module_once(tmp_path: Path) -> None:
    _, module, _ = compiled(tmp_path, SAMPLES / "seed.lyr")
    one = pickle.dumps(module.Seed())
    two = pickle.dumps([module.Seed(), module.Seed()])
    assert one.count(b"Generated by layerc") == two.count(b"Generated by layerc") == 1
    assert len(two) < 1.5 * len(one)


def test_in_the_same_process_a_copy_keeps_its_class(tmp_path: Path) -> None:
    _, module, _ = compiled(tmp_path, SAMPLES / "seed.lyr")
    net = module.Seed()
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net)), copy.copy(net)):
        assert type(twin) is module.Seed
        assert type(twin.fc) is type(net.fc)
    x = np.array([1, 2, 3, 4], dtype=np.float32)
    np.testing.assert_array_equal(copy.deepcopy(net)(x), [30, 40, 50])
