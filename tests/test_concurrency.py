"""Generated modules under concurrency and numba's on-disk cache.

- Eight processes import and call a freshly compiled module at the same moment (numba's cache
  cold, so all of them compile and write it); a ninth loads what they wrote. All agree with
  NumPy.
- A module in a folder where numba cannot cache beside it still works: with NUMBA_CACHE_DIR,
  with the user's cache folder, and with no writable cache at all (a warning, no crash).
- Recompiling a module never runs the old machine code: new literal weights with the same
  kernels, a changed shape, new weights in the weights file, and a rewrite that keeps the
  module's size and modification time (a coarse filesystem clock) within one process.
- Eight threads calling one instance at once, while another thread adds and removes a hook,
  all get NumPy's answer, and identical answers for identical inputs.

Processes are expensive (each imports numba and compiles), so the models are tiny.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from layerc import driver, files

W1 = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5], [-2.0, 0.75, 1.0], [0.125, -0.25, 0.5]])
B1 = np.array([0.1, -0.2, 0.3, -0.4])
W2 = np.array([[1.0, -0.5, 0.25, 2.0], [0.5, 2.0, -1.0, -0.75]])
B2 = np.array([0.05, -0.15])
X = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0], [3.0, 0.25, -0.5]])


def matrix(w: np.ndarray) -> str:
    return "[" + ", ".join("[" + ", ".join(repr(float(v)) for v in row) + "]" for row in w) + "]"


def vector(b: np.ndarray) -> str:
    return "[" + ", ".join(repr(float(v)) for v in b) + "]"


def linear(name: str, w: np.ndarray, b: np.ndarray) -> str:
    n_out, n_in = w.shape
    return f"    {name} = Linear({n_in}, {n_out}) {{ weight = {matrix(w)}; bias = {vector(b)} }}\n"


def two_layer(w1, b1, w2, b2, dtype: str = "float64") -> str:
    """Net: fc1, Tanh, fc2."""
    layers = linear("fc1", w1, b1) + "    act = Tanh\n" + linear("fc2", w2, b2)
    return f"model Net(dtype={dtype}) {{\n{layers}}}\n"


def reference(x, w1, b1, w2, b2) -> np.ndarray:
    return np.tanh(x @ w1.T + b1) @ w2.T + b2


# A child process: wait for the start signal (if any), import the module by name from its
# folder, call it on the input and print the outputs of the fused and layer-by-layer paths.
CHILD = r"""
import json, os, sys, time, warnings
import numpy as np
folder, name, go = sys.argv[1], sys.argv[2], sys.argv[3]
while go != "-" and not os.path.exists(go):
    time.sleep(0.005)
sys.path.insert(0, folder)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    module = __import__(name)
    net = module.Net()
    x = np.array(json.loads(sys.argv[4]))
    fused, forward = net(x), net.forward(x)
print(json.dumps({"fused": fused.tolist(), "forward": forward.tolist(),
                  "warnings": [str(w.message) for w in caught]}))
"""


def child_env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NUMBA_CACHE_DIR", None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def spawn(tmp: Path, folder: Path, go: str = "-", env: dict | None = None, name: str = "net"):
    script = tmp / "child.py"
    if not script.exists():
        script.write_text(CHILD)
    return subprocess.Popen(
        [sys.executable, str(script), str(folder), name, go, json.dumps(X.tolist())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or child_env(),
    )


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return json.loads(out)


def compile_in(folder: Path, text: str, name: str = "net") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"{name}.lyr"
    src.write_text(text)
    return driver.compile_file(src)[1][-1]


def assert_matches(outputs: dict, expected: np.ndarray) -> None:
    for path in ("fused", "forward"):
        np.testing.assert_allclose(np.array(outputs[path]), expected, rtol=1e-7, atol=1e-7)


def test_eight_processes_import_and_call_a_fresh_module_at_once(tmp_path):
    folder = tmp_path / "mod"
    compile_in(folder, two_layer(W1, B1, W2, B2))
    go = tmp_path / "go"
    procs = [spawn(tmp_path, folder, str(go)) for _ in range(8)]
    time.sleep(1.0)  # let them import numpy and numba, then start them together
    go.write_text("")
    expected = reference(X, W1, B1, W2, B2)
    outputs = [result(p) for p in procs]
    for outcome in outputs:
        assert_matches(outcome, expected)
        assert outcome["warnings"] == []
    assert len({json.dumps(o["fused"]) for o in outputs}) == 1  # bit-identical
    cached = sorted(p.name for p in (folder / "__pycache__").glob("net.*.nbi"))
    assert cached, "numba wrote no cache"
    assert_matches(result(spawn(tmp_path, folder)), expected)  # from the cache they wrote


def _block_in_tree_cache(folder: Path) -> None:
    """Make the module's folder unwritable for numba's cache: a read-only folder, and (for
    root, whom permission bits do not stop) a file where numba would create __pycache__."""
    (folder / "__pycache__").write_text("not a folder")
    folder.chmod(0o555)


@pytest.mark.parametrize("where", ["NUMBA_CACHE_DIR", "user cache", "nowhere"])
def test_a_read_only_module_folder_still_works(tmp_path, where):
    folder = tmp_path / "ro"
    compile_in(folder, two_layer(W1, B1, W2, B2))
    _block_in_tree_cache(folder)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    cache = tmp_path / "cache"
    env = {
        "NUMBA_CACHE_DIR": child_env(NUMBA_CACHE_DIR=str(cache)),
        "user cache": child_env(XDG_CACHE_HOME=str(cache), HOME=str(tmp_path)),
        "nowhere": child_env(XDG_CACHE_HOME=str(not_a_folder / "x"), HOME=str(not_a_folder)),
    }[where]
    try:
        outcome = result(spawn(tmp_path, folder, env=env))
    finally:
        folder.chmod(0o755)
    assert_matches(outcome, reference(X, W1, B1, W2, B2))
    if where == "nowhere":
        assert len(outcome["warnings"]) == 1
        assert "numba cannot cache the kernels" in outcome["warnings"][0]
        assert "NUMBA_CACHE_DIR" in outcome["warnings"][0]
    else:
        assert outcome["warnings"] == []
        assert list(cache.rglob("net.*.nbi")), f"nothing cached under {cache}"


def test_recompiled_modules_never_run_stale_code(tmp_path):
    """Each version is compiled over the last one and run in a fresh process, which finds
    numba's cache of the previous version beside the module."""
    folder = tmp_path / "mod"
    rng = np.random.default_rng(5)
    w1b = rng.uniform(-1, 1, (4, 3))  # new literal values, same kernels
    w1c, w2c = rng.uniform(-1, 1, (6, 3)), rng.uniform(-1, 1, (2, 6))  # a new hidden width
    b1c = rng.uniform(-1, 1, 6)
    versions = [
        (W1, B1, W2, B2),
        (w1b, B1, W2, B2),
        (w1c, b1c, w2c, B2),
    ]
    for w1, b1, w2, b2 in versions:
        compile_in(folder, two_layer(w1, b1, w2, b2))
        assert_matches(result(spawn(tmp_path, folder)), reference(X, w1, b1, w2, b2))


def test_recompiled_weights_files_never_run_stale_code(tmp_path):
    """Weights beyond the inline limit: the module changes only in its weights file's name."""
    folder = tmp_path / "mod"
    rng = np.random.default_rng(6)
    for _ in range(2):
        w1, b1 = rng.uniform(-1, 1, (1400, 3)), rng.uniform(-1, 1, 1400)
        w2, b2 = rng.uniform(-0.1, 0.1, (2, 1400)), rng.uniform(-1, 1, 2)
        written = compile_in(folder, two_layer(w1, b1, w2, b2))
        assert len(list(folder.glob("net.*.weights"))) == 1
        assert written.stat().st_size < 8000  # the weights are not in the module
        assert_matches(result(spawn(tmp_path, folder)), reference(X, w1, b1, w2, b2))


# In one process: compile, import and call; recompile to a module of the same size and give it
# the old modification time (as a filesystem with a coarse clock would); import and call again.
SAME_PROCESS = r"""
import importlib, json, os, sys
import numpy as np
from pathlib import Path
from layerc import driver
folder = Path(sys.argv[1])
sys.path.insert(0, str(folder))
x = np.array(json.loads(sys.argv[2]))
out = []
stamp = None
for step, text in enumerate(json.loads(Path(sys.argv[3]).read_text())):
    (folder / "same.lyr").write_text(text)
    driver.compile_file(folder / "same.lyr")
    module_file = folder / "same.py"
    if stamp is None:
        stamp = os.stat(module_file)
    else:
        assert os.stat(module_file).st_size == stamp.st_size
        os.utime(module_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    sys.modules.pop("same", None)
    module = importlib.import_module("same")
    out.append(module.Net()(x).tolist())
print(json.dumps(out))
"""


def test_a_rewrite_with_the_same_size_and_time_is_not_taken_for_the_old_module(tmp_path):
    """numba remembers each source file's hash by (path, mtime, size) for the life of a
    process; a recompiled module must not run the machine code of the one it replaced."""
    rng = np.random.default_rng(7)
    texts, expected = [], []
    for hidden in (1024, 1042):  # same number of digits: the modules have the same size
        w1, b1 = rng.uniform(-1, 1, (hidden, 3)), rng.uniform(-1, 1, hidden)
        w2, b2 = rng.uniform(-0.1, 0.1, (2, hidden)), rng.uniform(-1, 1, 2)
        texts.append(two_layer(w1, b1, w2, b2))
        expected.append(reference(X, w1, b1, w2, b2))
    folder = tmp_path / "modules"  # not "same": a folder of that name would shadow same.py
    folder.mkdir()
    script = tmp_path / "same_process.py"
    script.write_text(SAME_PROCESS)
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps(texts))
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), json.dumps(X.tolist()), str(sources)],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    for got, want in zip(json.loads(proc.stdout), expected, strict=True):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-7, atol=1e-7)


def test_a_rewrite_gets_a_modification_time_of_its_own(tmp_path):
    """Another process that imported the old module keeps numba's memo of its hash; the
    driver gives a same-size rewrite a different mtime even when the clock has not moved."""
    old, new = tmp_path / "old.py", tmp_path / "new.py"
    old.write_text("x = 1\n")
    new.write_text("x = 2\n")
    stamp = os.stat(old).st_mtime_ns
    os.utime(new, ns=(stamp, stamp))
    files._distinct_stamp(new, old)
    assert os.stat(new).st_mtime != os.stat(old).st_mtime
    new.write_text("x = 22\n")  # another size: left alone
    os.utime(new, ns=(stamp, stamp))
    files._distinct_stamp(new, old)
    assert os.stat(new).st_mtime_ns == stamp


def test_eight_threads_share_one_instance(tmp_path):
    folder = tmp_path / "threads"
    module = driver.import_module(compile_in(folder, two_layer(W1, B1, W2, B2, "float32")))
    net = module.Net()
    weights = {k: v.copy() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(8)
    inputs = [rng.uniform(-2, 2, (5, 3)) for _ in range(8)]
    common = rng.uniform(-2, 2, (7, 3))
    barrier = threading.Barrier(9)
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(index: int) -> None:
        try:
            barrier.wait()
            mine = []
            for step in range(20):  # cold: the first calls compile, concurrently
                f = net if step % 2 == 0 else net.forward
                mine.append((f(inputs[index]), f(common)))
            results[index] = mine
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    def toggle_hooks() -> None:
        barrier.wait()
        while not stop.is_set():
            handle = net.fc1.register_forward_hook(lambda module, args, output: None)
            time.sleep(0.0005)
            handle.remove()
            time.sleep(0.0005)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    toggler = threading.Thread(target=toggle_hooks)
    for t in [*threads, toggler]:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    toggler.join(timeout=30)
    assert not errors, errors
    want_common = reference(common, W1, B1, W2, B2)
    first = results[0][0][1]
    for index, calls in results.items():
        want = reference(inputs[index], W1, B1, W2, B2)
        for mine, shared in calls:
            np.testing.assert_allclose(mine, want, rtol=1.3e-6, atol=1e-5)
            np.testing.assert_allclose(shared, want_common, rtol=1.3e-6, atol=1e-5)
            np.testing.assert_array_equal(shared, first)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value, weights[key])


# A compile that stops between writing its files and renaming them into place: "die" ends the
# process there, as a kill would (no clean-up runs); "hold" waits for a line on stdin, then
# renames them.
STOPPED_WRITER = r"""
import os, sys
from pathlib import Path
from layerc import driver
src, mode = Path(sys.argv[1]), sys.argv[2]
real_replace = os.replace
def replace(tmp, target):
    global mode
    if mode == "die":
        os._exit(3)
    if mode == "hold":
        mode = "go"
        print("written", flush=True)
        sys.stdin.readline()
    return real_replace(tmp, target)
os.replace = replace
driver.compile_file(src)
print("done", flush=True)
"""


OLD_SHAPES = [(1400, 3), (1400,), (2, 1400), (2,)]


def test_a_killed_compile_leaves_temporaries_that_the_next_one_removes(tmp_path):
    """A compile killed mid-write leaves its (large) temporary files; the next compile in the
    folder removes them, even for a weights file of another name (the source changed since),
    but not those of a compile that is still running, which then finishes as usual."""
    folder = tmp_path / "mod"
    folder.mkdir()
    rng = np.random.default_rng(9)
    src = folder / "net.lyr"
    src.write_text(two_layer(*(rng.uniform(-1, 1, shape) for shape in OLD_SHAPES)))
    w1, b1 = rng.uniform(-1, 1, (1400, 3)), rng.uniform(-1, 1, 1400)
    w2, b2 = rng.uniform(-0.1, 0.1, (2, 1400)), rng.uniform(-1, 1, 2)
    script = tmp_path / "writer.py"
    script.write_text(STOPPED_WRITER)

    def temporaries() -> set[str]:
        return {p.name for p in folder.iterdir() if p.name.endswith(".tmp")}

    killed = subprocess.run(
        [sys.executable, str(script), str(src), "die"], capture_output=True, timeout=120
    )
    assert killed.returncode == 3, killed.stderr
    stale = temporaries()
    assert len(stale) == 2  # the weights file's and the module's
    assert sum((folder / name).stat().st_size for name in stale) > 30_000

    src.write_text(two_layer(w1, b1, w2, b2))  # new weights: a weights file of another name
    live = subprocess.Popen(
        [sys.executable, str(script), str(src), "hold"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout is not None and live.stdout.readline() == "written\n"
        running = temporaries() - stale
        assert len(running) == 2 and all(f"-{live.pid}-" in name for name in running)
        targets = {name.split(".layerc-")[0] for name in running}
        assert targets != {name.split(".layerc-")[0] for name in stale}  # another weights file

        driver.compile_file(src)
        assert temporaries() == running  # the killed compile's are gone, the live one's kept

        out, err = live.communicate("\n", timeout=120)
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert live.returncode == 0 and out == "done\n", err
    assert temporaries() == set()
    module = driver.import_module(folder / "net.py")
    np.testing.assert_allclose(module.Net()(X), reference(X, w1, b1, w2, b2), rtol=1e-7)
