"""layerc.dask.predict: a model over dask arrays and dataframes, on a LocalCluster of two worker
processes and on Dask's local threaded scheduler.

The models are compiled into a folder of the test's own that is never on `sys.path`, so the
workers, whose layerc cache is another empty folder, get each model through its self-contained
pickle (layerc.runtime.portable). Results are checked against the model called on the whole
array in this process, and against outside references: the outputs PyTorch computed for the
samples' test blocks, or NumPy in float64 from the model's state_dict. The model must reach each
worker once per `predict`, not once per task: the workers count how often they unpickle it.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import dask.dataframe as dd  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from layerc import dask as ldask  # noqa: E402
from layerc import driver  # noqa: E402
from layerc.dask import predict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
FEATURES = [f"f{i}" for i in range(8)]

# A model over samples of several axes (docs/language.md): it takes (n, 1, 4, 4) or (n, 16).
IMAGES = """\
model Images(input=[1, 4, 4]) {
    Flatten()
    fc = Linear(16, 3) {
        init = uniform(seed=0)
    }
}
"""

# A quantised model (language section 11): its instance pickles its float weights, and each
# worker quantises them again.
QUANTIZED = """\
model Small(quantize=int8) {
    fc1 = Linear(8, 16) {
        init = uniform(seed=1)
    }
    act = ReLU()
    fc2 = Linear(16, 3) {
        init = uniform(seed=2)
    }
}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The samples mlp and residual and the Images model above, compiled into a folder of their
    own and imported: {file stem: (program, module)}."""
    folder = tmp_path_factory.mktemp("models")
    for path in SAMPLES.iterdir():
        if path.suffix in (".lyr", ".npy", ".npz", ".safetensors"):
            shutil.copy(path, folder / path.name)
    (folder / "images.lyr").write_text(IMAGES, encoding="utf-8")
    (folder / "small.lyr").write_text(QUANTIZED, encoding="utf-8")
    found = {}
    for stem in ("mlp", "residual", "images", "small"):
        program, written = driver.compile_file(folder / f"{stem}.lyr")
        found[stem] = (program, driver.import_module(written[-1]))
    return found


def _count_unpickling() -> None:
    """(On a worker) count, by class name, every layerc module unpickled from now on."""
    import builtins

    import layerc.runtime.module as module

    builtins._layerc_unpickled = []  # type: ignore[attr-defined]
    original = getattr(module.Module, "_uncounted_setstate", module.Module.__setstate__)

    def counting(self, state):
        builtins._layerc_unpickled.append(type(self).__name__)  # type: ignore[attr-defined]
        original(self, state)

    module.Module._uncounted_setstate = original
    module.Module.__setstate__ = counting


def _unpickled() -> list[str]:
    import builtins

    return list(builtins._layerc_unpickled)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-cache")


@pytest.fixture(scope="module")
def client(cache: Path):
    """Two worker processes, one thread each, whose layerc cache is an empty folder of the
    test's; not the default client, so the threaded tests stay local."""
    saved = dict(os.environ)  # distributed's nanny writes its workers' variables into ours
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERC_CACHE_DIR", str(cache / "client"))  # nothing of ours in ~/.cache
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port (None still takes 8787 here)
            env={"LAYERC_CACHE_DIR": str(cache)},
        )
        client = Client(cluster, set_as_default=False)
        try:
            client.run(_count_unpickling)
            yield client
        finally:
            client.close()
            cluster.close()
            os.environ.clear()
            os.environ.update(saved)


def _mlp_signatures() -> list[int]:
    """(On a worker) how many specialisations each MLP module imported from the layerc cache has
    of its fused kernel."""
    return [
        len(module._forward_Mlp.signatures)
        for name, module in list(sys.modules.items())
        if name.startswith("_layerc_run_") and name.endswith("_mlp")
    ]


def _reference_mlp(net, x: np.ndarray) -> np.ndarray:
    """The MLP in NumPy float64, from its state_dict."""
    sd = {k: np.asarray(v, dtype=np.float64) for k, v in net.state_dict().items()}
    h = np.maximum(x @ sd["fc1.weight"].T + sd["fc1.bias"], 0)
    h = np.maximum(h @ sd["fc2.weight"].T + sd["fc2.bias"], 0)
    return h @ sd["fc3.weight"].T + sd["fc3.bias"]


def _sample_test(program, model: str):
    return next(t for t in program.tests if t.model.name == model and len(t.inputs[0].shape) > 1)


class _Finder(pickle.Pickler):
    """A pickler that notes whether it meets `target`, and leaves it out."""

    def __init__(self, target: object) -> None:
        super().__init__(io.BytesIO())
        self.target = target
        self.found = False

    def reducer_override(self, value: object) -> object:
        if value is self.target:
            self.found = True
            return (str, ("the model",))
        return NotImplemented


def _holders(graph, obj) -> int:
    """How many nodes of a task graph hold `obj` itself, each pickled on its own (as a scheduler
    may send each task on its own)."""
    count = 0
    for node in dict(graph).values():
        finder = _Finder(obj)
        finder.dump(node)
        count += finder.found
    return count


# --------------------------------------------------------------------------- on the cluster


def test_mlp_rows_in_chunks_f_ordered_float64(models, client) -> None:
    program, module = models["mlp"]
    net = module.Mlp()
    x = np.random.default_rng(0).standard_normal((103, 8))
    array = da.from_array(np.asfortranarray(x), chunks=(25, 4))  # split features: rechunked
    y = predict(net, array, client=client)
    assert isinstance(y, da.Array)
    assert y.shape == (103, 3) and y.dtype == np.float32
    assert y.chunks == ((25, 25, 25, 25, 3), (3,))
    got = client.compute(y).result()
    assert got.dtype == np.float32 and got.shape == (103, 3)
    np.testing.assert_allclose(got, net(x.astype(np.float32)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, _reference_mlp(net, x), rtol=1e-5, atol=1e-5)

    # The sample's own inputs, against the outputs PyTorch computed for them.
    test = _sample_test(program, "Mlp")
    sample = predict(net, da.from_array(test.inputs[0], chunks=4), client=client)
    result = driver.check_outputs(test, client.compute(sample).result())
    assert result.passed, (result.problem, result.max_abs)

    # The tasks gave the kernel C-contiguous float32 rows only: each worker compiled it once.
    signatures = client.run(_mlp_signatures)
    assert all(found in ([], [1]) for found in signatures.values()), signatures
    assert [1] in signatures.values()


def test_quantized_model(models, client) -> None:
    _, module = models["small"]
    net = module.Small()
    x = np.random.default_rng(3).standard_normal((57, 8)).astype(np.float32)
    got = client.compute(predict(net, da.from_array(x, chunks=20), client=client)).result()
    assert np.array_equal(got, net(x))  # the workers' int8 weights are this process's


def test_the_model_reaches_each_worker_once(models, client, cache: Path) -> None:
    _, module = models["mlp"]
    net = module.Mlp()
    x = np.random.default_rng(1).standard_normal((120, 8)).astype(np.float32)
    client.run(_count_unpickling)  # from zero
    y = predict(net, da.from_array(x, chunks=10), client=client)  # 12 tasks
    assert _holders(y.__dask_graph__(), net) == 0  # the graph only refers to it
    got = client.compute(y).result()
    np.testing.assert_allclose(got, net(x), rtol=1e-6, atol=1e-6)
    counts = {w: names.count("Mlp") for w, names in client.run(_unpickled).items()}
    assert counts == dict.fromkeys(client.scheduler_info()["workers"], 1), counts

    # Each worker unpickled it from the pickle alone: its module came from the layerc cache.
    [future] = client.scatter([net], broadcast=True, hash=False)
    name, file = client.submit(
        lambda m: (type(m).__module__, sys.modules[type(m).__module__].__file__), future
    ).result()
    assert name.startswith("_layerc_run_")
    assert Path(file).is_relative_to(cache)


def test_current_client_is_used_by_default(models, client) -> None:
    _, module = models["mlp"]
    net = module.Mlp()
    x = np.random.default_rng(2).standard_normal((30, 8)).astype(np.float32)
    with client.as_current():
        y = predict(net, da.from_array(x, chunks=7))
        got = y.compute()
    assert _holders(y.__dask_graph__(), net) == 0
    np.testing.assert_allclose(got, net(x), rtol=1e-6, atol=1e-6)


def test_dataframe_columns(models, client) -> None:
    _, module = models["mlp"]
    net = module.Mlp()
    x = np.random.default_rng(3).standard_normal((50, 8))
    frame = pd.DataFrame(x[:, ::-1], columns=FEATURES[::-1])  # columns= puts them in order
    frame.insert(0, "id", [f"sample-{i}" for i in range(50)])
    frame["f3"] = (frame["f3"] * 1000).round().astype(np.int64)  # an integer feature
    x[:, 3] = frame["f3"].to_numpy()
    df = dd.from_pandas(frame, npartitions=3)
    y = predict(net, df, columns=FEATURES, client=client)
    assert y.dtype == np.float32 and y.shape[1:] == (3,) and y.numblocks == (3, 1)
    got = client.compute(y).result()
    np.testing.assert_allclose(got, net(x.astype(np.float32)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, _reference_mlp(net, x), rtol=1e-5, atol=1e-4)

    with pytest.raises(TypeError, match=r"'id' \(.*\).*columns="):
        predict(net, df, client=client)  # the id column is not a feature


def test_two_inputs_two_outputs(models, client) -> None:
    program, module = models["residual"]
    net = module.Heads()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((37, 8))
    mask = (rng.random((37, 16)) > 0.3).astype(np.float64)
    xs = da.from_array(x, chunks=10)
    masks = da.from_array(mask, chunks=(7, 16))  # other row chunks: rechunked to x's
    outputs = predict(net, xs, masks, client=client)
    assert isinstance(outputs, tuple) and len(outputs) == 2
    cls, reg = outputs
    assert cls.shape == (37, 4) and reg.shape == (37, 2)
    assert cls.chunks == ((10, 10, 10, 7), (4,)) and reg.chunks == ((10, 10, 10, 7), (2,))
    got = client.compute([cls, reg], sync=True)
    for value, expect in zip(got, net(x, mask), strict=True):
        np.testing.assert_allclose(value, expect, rtol=1e-6, atol=1e-6)

    test = _sample_test(program, "Heads")
    sample = predict(
        net, *(da.from_array(a, chunks=(4, a.shape[1])) for a in test.inputs), client=client
    )
    result = driver.check_outputs(test, tuple(client.compute(list(sample), sync=True)))
    assert result.passed, (result.problem, result.max_abs)


# --------------------------------------------------------------------------- local schedulers


@pytest.fixture
def local() -> None:
    assert ldask._current_client() is None, "a default distributed client is running"


def test_threaded_two_outputs_run_once_per_chunk(models, local) -> None:
    _, module = models["residual"]
    net = module.Heads()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((23, 8)).astype(np.float32)
    mask = np.ones((23, 16), dtype=np.float32)
    rows = []
    net.register_forward_hook(lambda module, args, output: rows.append(len(args[0])))
    cls, reg = predict(net, da.from_array(x, chunks=5), da.from_array(mask, chunks=5))
    assert _holders(cls.__dask_graph__(), net) == 1  # one node for the model, not one per task
    got = dask.compute(cls, reg, scheduler="threads")
    assert sorted(rows) == [3, 5, 5, 5, 5]  # each chunk ran once for both outputs
    rows.clear()
    for value, expect in zip(got, net(x, mask), strict=True):
        np.testing.assert_allclose(value, expect, rtol=1e-6, atol=1e-6)


def test_threaded_flattened_samples_and_a_layer(models, local) -> None:
    _, module = models["images"]
    net = module.Images()
    x = np.random.default_rng(6).standard_normal((11, 1, 4, 4)).astype(np.float32)
    expect = net(x)
    for array in (da.from_array(x, chunks=4), da.from_array(x.reshape(11, 16), chunks=4)):
        y = predict(net, array)
        assert y.shape == (11, 3) and y.chunks == ((4, 4, 3), (3,))
        np.testing.assert_allclose(y.compute(scheduler="threads"), expect, rtol=1e-6, atol=1e-6)

    # A layer of any shape: its output has the input's shape.
    relu = models["mlp"][1].Mlp().layer_1
    z = np.linspace(-1, 1, 24).reshape(6, 4)
    y = predict(relu, da.from_array(z, chunks=(2, 4)))
    assert y.shape == (6, 4) and y.dtype == np.float32
    np.testing.assert_array_equal(
        y.compute(scheduler="threads"), np.maximum(z, 0).astype(np.float32)
    )


# --------------------------------------------------------------------------- errors


def test_errors(models, local) -> None:
    net = models["mlp"][1].Mlp()
    heads = models["residual"][1].Heads()
    images = models["images"][1].Images()
    ones = da.ones((10, 8), chunks=5)
    with pytest.raises(TypeError, match=r"Mlp takes 1 input \(input\), got 2"):
        predict(net, ones, ones)
    with pytest.raises(TypeError, match=r"Heads takes 2 inputs \(x, mask\), got 1"):
        predict(heads, ones)
    with pytest.raises(TypeError, match="needs the model's input"):
        predict(net)
    with pytest.raises(TypeError, match="runs a layerc model, got function"):
        predict(lambda x: x, ones)
    with pytest.raises(
        ValueError, match=r"input 'input' of Mlp takes shape \(n, 8\), got shape \(10, 7\)"
    ):
        predict(net, da.ones((10, 7)))
    with pytest.raises(ValueError, match=r"takes shape \(n, 1, 4, 4\), or \(n, 16\) flattened"):
        predict(images, da.ones((10, 15)))
    with pytest.raises(ValueError, match=r"'x' has 10 rows, 'mask' has 11"):
        predict(heads, ones, da.ones((11, 16)))
    with pytest.raises(TypeError, match="dask array or a dask DataFrame, got ndarray"):
        predict(net, np.ones((10, 8)))
    with pytest.raises(TypeError, match="real numbers"):
        predict(net, da.from_array(np.array([["a"] * 8] * 4)))
    with pytest.raises(TypeError, match="columns= selects the features of a DataFrame"):
        predict(net, ones, columns=FEATURES)

    frame = pd.DataFrame(np.ones((6, 9)), columns=[*FEATURES, "extra"])
    df = dd.from_pandas(frame, npartitions=2)
    with pytest.raises(ValueError, match="Mlp takes 8 features per row, the DataFrame has 9"):
        predict(net, df)
    with pytest.raises(ValueError, match=r"\['nope'\] are not in the DataFrame"):
        predict(net, df, columns=["nope"])
    with pytest.raises(TypeError, match="a DataFrame gives one"):
        predict(heads, df)
    # Row chunks of unknown sizes that differ cannot be aligned.
    a = dd.from_pandas(pd.DataFrame(np.ones((10, 8))), npartitions=2).to_dask_array()
    b = dd.from_pandas(pd.DataFrame(np.ones((10, 16))), npartitions=3).to_dask_array()
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        predict(heads, a, b)


# --------------------------------------------------------------------------- imports


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_importing_layerc_does_not_import_dask() -> None:
    done = _python("import sys, layerc; print(sorted(m for m in sys.modules if 'dask' in m))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_dask_the_error_says_what_to_install() -> None:
    done = _python("import sys; sys.modules['dask'] = None; import layerc.dask")
    assert done.returncode != 0
    assert "ImportError: layerc.dask needs Dask" in done.stderr
    assert "pip install layerc[dask]" in done.stderr
