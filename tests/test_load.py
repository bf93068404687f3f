"""`layerc.load`, the in-process API for notebooks and scripts: a .lyr path in, the generated
module out (classes as attributes), written to layerc's per-user cache and not beside the
source; errors are located `LayercError`s; an unchanged source is not compiled again, in the
same process (the same module) or in the next one (numba's cache serves its kernels)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import LESSON

import layerc
from layerc.errors import Loc


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty layerc cache, and no generated module left in sys.modules by earlier tests."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LAYERC_CACHE_DIR", str(folder))
    for name in [n for n in sys.modules if n.startswith("_layerc_run_")]:
        monkeypatch.delitem(sys.modules, name)
    return folder


def test_load_returns_the_generated_module(tmp_path: Path, cache: Path) -> None:
    source = tmp_path / "src" / "seed.lyr"
    source.parent.mkdir()
    source.write_text(LESSON, encoding="utf-8")
    module = layerc.load(str(source))
    assert module.__all__ == ["Seed"]
    net = module.Seed()
    np.testing.assert_array_equal(net(np.array([1, 2, 3, 4], dtype=np.float32)), [30, 40, 50])
    assert repr(net.fc) == "Linear(in_features=4, out_features=3, bias=False)"
    # written into the cache, nothing beside the source
    assert Path(module.__file__).is_relative_to(cache)
    assert sorted(p.name for p in source.parent.iterdir()) == ["seed.lyr"]
    # a Path works as well as a str, and the same source gives the same module again
    assert layerc.load(source) is module


def test_load_follows_the_source_and_its_weights(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache is keyed by what is compiled, weights included: a new weights file under an
    unchanged source gives a new module with the new weights."""
    monkeypatch.chdir(tmp_path)
    np.save("w.npy", np.eye(2))
    Path("m.lyr").write_text(
        'model M {\n    Linear(2, 2, bias=false) {\n        weight = load("w.npy")\n    }\n}\n',
        encoding="utf-8",
    )
    first = layerc.load("m.lyr")
    np.save("w.npy", 2 * np.eye(2))
    second = layerc.load("m.lyr")
    assert second is not first
    x = np.array([1.0, -3.0], dtype=np.float32)
    np.testing.assert_array_equal(first.M()(x), x)
    np.testing.assert_array_equal(second.M()(x), 2 * x)
    assert len(list((cache / "run").iterdir())) == 2


def test_load_raises_located_layerc_errors(tmp_path: Path, cache: Path) -> None:
    bad = tmp_path / "bad.lyr"
    bad.write_text("model M {\n    fc = Lineer(4, 3)\n}\n", encoding="utf-8")
    with pytest.raises(layerc.LayercError) as info:
        layerc.load(bad)
    assert info.value.loc == Loc(str(bad), 2, 10)
    assert str(info.value).startswith(f"{bad}:2:10: unknown layer kind 'Lineer'")
    missing = tmp_path / "missing.lyr"
    with pytest.raises(layerc.LayercError) as info:
        layerc.load(missing)
    assert str(info.value) == f"{missing}: cannot read the file: {os.strerror(errno.ENOENT)}"
    assert not cache.exists() or not any(cache.rglob("*.py"))


# A new process: load the lesson, call it both ways, and report for each numba kernel of the
# module how many signatures were compiled and how many were loaded from numba's cache.
CHILD = r"""
import json, sys
import numpy as np
from numba.core.dispatcher import Dispatcher
import layerc
import layerc.runtime.cache
if len(sys.argv) > 2:  # as if the runtime's sources were other than the installed ones
    layerc.runtime.cache._RUNTIME_DIGEST = sys.argv[2]

module = layerc.load(sys.argv[1])
net = module.Seed()
net(np.ones(4, np.float32))
net.forward(np.ones((2, 4), np.float32))
stats = {}
for name, value in vars(module).items():
    if isinstance(value, Dispatcher):
        stats[name] = {
            "compiled": sum(value.stats.cache_misses.values()),
            "from_cache": sum(value.stats.cache_hits.values()),
        }
print(json.dumps(stats))
"""


def test_a_second_process_loads_the_kernels_from_numbas_cache(tmp_path: Path) -> None:
    """The first process compiles the kernels and numba caches them beside the module in
    layerc's cache; the second compiles none and loads what it calls from that cache."""
    source = tmp_path / "seed.lyr"
    source.write_text(LESSON, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["LAYERC_CACHE_DIR"] = str(tmp_path / "cache")

    def child(*digest: str) -> dict[str, dict[str, int]]:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(source), *digest],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first, second = child(), child()
    assert sum(k["compiled"] for k in first.values()) >= 2  # the fused kernel and a layer's
    assert sum(k["from_cache"] for k in first.values()) == 0
    assert sum(k["compiled"] for k in second.values()) == 0
    # every kernel a call needs comes from the cache (a layer's kernel compiled into the fused
    # one is loaded with it, so the counts need not match the first process's)
    assert sum(k["from_cache"] for k in second.values()) >= 2
    # A kernel inlines runtime code that numba's cache does not see: a process whose runtime
    # sources differ (an upgraded layerc) compiles the kernels again rather than load them.
    upgraded = child("another runtime")
    assert sum(k["compiled"] for k in upgraded.values()) >= 2
    assert sum(k["from_cache"] for k in upgraded.values()) == 0
    again = child("another runtime")
    assert sum(k["compiled"] for k in again.values()) == 0


def test_a_kernel_numba_cannot_cache_gets_numbas_warning(tmp_path: Path) -> None:
    """numba warns, and runs the kernel, when it cannot cache one (a ctypes pointer in it):
    layerc's cache locator, which stamps generated kernels with the runtime's digest, answers
    what numba's warning reads of it (it raised AttributeError: no `_py_file`)."""
    from numba.core.errors import NumbaWarning

    from layerc import driver

    source = tmp_path / "uncachable.py"
    source.write_text(
        "import numba as _numba\n"
        "import layerc.runtime as _rt\n"
        "_CACHE = _rt.kernel_cache(__file__)\n"
        "@_numba.njit(cache=_CACHE)\n"
        "def threads_now():\n"
        "    return _numba.get_num_threads()\n",
        encoding="utf-8",
    )
    module = driver.import_module(source)
    with pytest.warns(NumbaWarning, match="Cannot cache compiled function"):
        assert module.threads_now() >= 1
