"""`layerc run` on a folder of files, here and on Dask (`--dask`): one output per input, written
atomically, checked against a NumPy float64 forward of the model's state_dict; a rerun skips
the outputs that are complete and redoes those whose input, model or output changed; a bad file
is reported by name and place while the others complete; a worker killed mid-run costs only its
task, which runs again on another worker. The clusters are `distributed.LocalCluster`s of two
worker processes. No test times anything: the benchmark (bench/bench.py --only dask) does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from layerc import cli, driver

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")
pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

ROOT = Path(__file__).resolve().parents[1]

# Wide enough that a weight is larger than malloc's mmap threshold (Dask's workers run with
# MALLOC_TRIM_THRESHOLD_ set): a kernel that read freed memory would crash the workers here.
MLP = """\
model MLP {
    fc1 = Linear(196, 192) {
        init = uniform(seed=1)
    }
    ReLU()
    fc2 = Linear(192, 10) {
        init = uniform(seed=2)
    }
}
"""

HEADS = """\
model Heads {
    trunk = Linear(4, 8) {
        init = uniform(seed=0)
    }
    relu = ReLU()
    scores = Linear(8, 2) {
        init = uniform(seed=1)
    }
    probs = Linear(8, 3) {
        init = uniform(seed=2)
    }
    soft = Softmax()

    forward(x, mask: 8) {
        h = relu(trunk(x)) * mask
        return scores(h), soft(probs(relu(h)))
    }
}
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding mlp.lyr and heads.lyr, with the model cache in it: set before any
    cluster starts, so that its workers (which inherit the environment) use it too. The
    environment is put back as it was at the end: Dask's nanny sets its workers' variables
    (MALLOC_TRIM_THRESHOLD_, PYTHONHASHSEED...) in the environment of the process that starts
    them, and leaves them there, for the processes that later tests start to inherit."""
    folder = tmp_path_factory.mktemp("dask_run")
    (folder / "mlp.lyr").write_text(MLP, encoding="utf-8")
    (folder / "heads.lyr").write_text(HEADS, encoding="utf-8")
    environ = dict(os.environ)
    try:
        os.environ["LAYERC_CACHE_DIR"] = str(folder / "cache")
        yield folder
    finally:
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture(scope="module")
def weights(home: Path) -> dict[str, np.ndarray]:
    """MLP's state_dict in float64, from the module layerc generates (the reference's input)."""
    module = driver.load(home / "mlp.lyr")
    return {k: np.asarray(v, np.float64) for k, v in module.MLP().state_dict().items()}


def reference(sd: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """MLP's forward in NumPy float64, on samples of 196 values (any batch shape)."""
    x = np.asarray(x, np.float64).reshape(-1, 196)
    h = np.maximum(x @ sd["fc1.weight"].T + sd["fc1.bias"], 0.0)
    return h @ sd["fc2.weight"].T + sd["fc2.bias"]


def assert_matches(out: np.ndarray, sd: dict[str, np.ndarray], x: np.ndarray) -> None:
    want = reference(sd, x)
    np.testing.assert_allclose(np.asarray(out).reshape(want.shape), want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def cluster(home: Path) -> Iterator[str]:
    """The address of a LocalCluster of two single-threaded worker processes."""
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=50,
    ) as local:
        yield local.scheduler_address


@pytest.fixture
def layerc_run(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str, str]]:
    """`layerc_run(*args)`: `layerc run ARGS` in `home`, giving (exit code, stdout, stderr)."""
    monkeypatch.chdir(home)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(["run", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def stamps(folder: Path) -> dict[str, int]:
    """Each visible file of `folder` and its modification time, in ns."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if not p.name.startswith(".")}


def leftovers(folder: Path) -> list[str]:
    """Temporary files left in `folder` (none once every write has been renamed into place)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def make_inputs(folder: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One input file of each format, and the samples each holds."""
    folder.mkdir()
    data = {
        name: rng.standard_normal((rows, 196))
        for name, rows in [("a", 40), ("b", 7), ("c", 13), ("d", 5), ("e", 11), ("f", 9)]
    }
    np.save(folder / "a.npy", data["a"].astype(np.float32))
    np.save(folder / "b.npy", data["b"].reshape(7, 1, 196))  # a batch shape, kept in the output
    np.savetxt(folder / "c.csv", data["c"], delimiter=",", header=",".join(["v"] * 196))
    with open(folder / "d.jsonl", "w") as f:
        for row in data["d"]:
            f.write(json.dumps(row.tolist()) + "\n")
    pd.DataFrame(data["e"], columns=[f"x{i}" for i in range(196)]).to_parquet(folder / "e.parquet")
    np.savez(folder / "f.npz", x=data["f"])
    return data


def check_outputs(out: Path, data: dict[str, np.ndarray], sd: dict[str, np.ndarray]) -> None:
    assert sorted(stamps(out)) == ["a.npy", "b.npy", "c.csv", "d.jsonl", "e.parquet", "f.npz"]
    assert_matches(np.load(out / "a.npy"), sd, data["a"])
    b = np.load(out / "b.npy")
    assert b.shape == (7, 1, 10)
    assert_matches(b, sd, data["b"])
    assert_matches(np.loadtxt(out / "c.csv", delimiter=","), sd, data["c"])
    with open(out / "d.jsonl") as f:
        assert_matches(np.array([json.loads(line) for line in f]), sd, data["d"])
    e = pd.read_parquet(out / "e.parquet")
    assert list(e.columns) == [str(i) for i in range(10)]
    assert_matches(e.to_numpy(), sd, data["e"])
    with np.load(out / "f.npz") as f:
        assert f.files == ["output0"]
        assert_matches(f["output0"], sd, data["f"])
    assert leftovers(out) == []


# --------------------------------------------------------------------------- on a cluster


def test_dask_run_writes_every_output_and_a_rerun_skips_the_complete_ones(
    home: Path, cluster: str, weights: dict, layerc_run: Callable[..., tuple[int, str, str]]
) -> None:
    rng = np.random.default_rng(0)
    data = make_inputs(home / "data", rng)
    code, out, err = layerc_run("mlp.lyr", "-i", "data/", "-o", "out/", "--dask", cluster)
    assert (code, err) == (0, "")
    assert out == "wrote 6 files to out/ (85 rows)\n"
    check_outputs(home / "out", data, weights)

    # Nothing changed: nothing is written again.
    before = stamps(home / "out")
    code, out, err = layerc_run("mlp.lyr", "-i", "data/*", "-o", "out", "--dask", cluster)
    assert (code, out, err) == (0, "wrote 0 files to out; 6 already complete\n", "")
    assert stamps(home / "out") == before

    # An input rewritten, an output deleted and another edited: those three are made again.
    data["c"] = rng.standard_normal((4, 196))
    np.savetxt(home / "data" / "c.csv", data["c"], delimiter=",")
    (home / "out" / "a.npy").unlink()
    with open(home / "out" / "d.jsonl", "a") as f:
        f.write("[1, 2, 3]\n")
    code, out, err = layerc_run("mlp.lyr", "-i", "data", "-o", "out/", "--dask", cluster)
    assert (code, err) == (0, "")
    assert out == "wrote 3 files to out/ (49 rows); 3 already complete\n"
    check_outputs(home / "out", data, weights)
    after = stamps(home / "out")
    assert {name for name in after if after[name] != before.get(name)} == {
        "a.npy",
        "c.csv",
        "d.jsonl",
    }

    # Another model (its weights changed) makes every output stale.
    (home / "mlp.lyr").write_text(MLP.replace("seed=2", "seed=3"), encoding="utf-8")
    try:
        code, out, _ = layerc_run("mlp.lyr", "-i", "data", "-o", "out/", "--dask", cluster)
        assert (code, out) == (0, "wrote 6 files to out/ (76 rows)\n")
    finally:
        (home / "mlp.lyr").write_text(MLP, encoding="utf-8")


def test_dask_run_reports_bad_files_by_name_and_completes_the_others(
    home: Path, cluster: str, weights: dict, layerc_run: Callable[..., tuple[int, str, str]]
) -> None:
    data = home / "mixed"
    data.mkdir()
    good = np.random.default_rng(1).standard_normal((30, 196))
    np.save(data / "good.npy", good)
    np.save(data / "narrow.npy", np.zeros((3, 195)))
    row = ",".join(["1"] * 196)
    (data / "cell.csv").write_text(f"{row}\n{row[:-1]}x\n")
    (data / "broken.npy").write_bytes(b"not an array at all")
    frame = pd.DataFrame(np.ones((3, 196)), columns=[f"x{i}" for i in range(196)])
    frame["x5"] = "one"
    frame.to_parquet(data / "words.parquet")
    np.savetxt(data / "fine.csv", good[:4], delimiter=",")

    code, out, err = layerc_run("mlp.lyr", "-i", "mixed", "-o", "mixed_out", "--dask", cluster)
    assert code == 1
    assert out == "wrote 2 files to mixed_out (34 rows); 4 failed\n"
    assert sorted(err.splitlines()) == [
        "mixed/broken.npy: is not a valid .npy file: the magic string is not correct; "
        "expected b'\\x93NUMPY', got b'not an'",
        "mixed/cell.csv:2:196: 'x' is not a number",
        "mixed/narrow.npy: the array has shape (3, 195) but model MLP takes (196,) or (N, 196)",
        "mixed/words.parquet: column 6 ('x5') holds text, not numbers",
    ]
    outputs = home / "mixed_out"
    assert sorted(stamps(outputs)) == ["fine.csv", "good.npy"]
    assert_matches(np.load(outputs / "good.npy"), weights, good)
    assert_matches(np.loadtxt(outputs / "fine.csv", delimiter=","), weights, good[:4])
    assert leftovers(outputs) == []

    # A rerun tries the bad files again, and only them.
    code, out, err = layerc_run("mlp.lyr", "-i", "mixed", "-o", "mixed_out", "--dask", cluster)
    assert code == 1
    assert out == "wrote 0 files to mixed_out; 2 already complete; 4 failed\n"
    assert len(err.splitlines()) == 4


def test_dask_run_of_a_model_of_several_inputs_and_outputs(
    home: Path, cluster: str, layerc_run: Callable[..., tuple[int, str, str]]
) -> None:
    """Each input file is an .npz holding an array per input; each output an .npz holding
    output0 and output1."""
    data = home / "pairs"
    data.mkdir()
    rng = np.random.default_rng(2)
    pairs = {}
    for name, rows in (("p", 5), ("q", 3)):
        pairs[name] = (rng.standard_normal((rows, 4)), (rng.random((rows, 8)) > 0.5) * 1.0)
        np.savez(data / f"{name}.npz", x=pairs[name][0], mask=pairs[name][1])
    code, out, err = layerc_run(
        "heads.lyr", "-i", "pairs/*.npz", "-o", "heads_out/", "--dask", cluster
    )
    assert (code, out, err) == (0, "wrote 2 files to heads_out/ (8 rows)\n", "")
    module = driver.load(home / "heads.lyr")
    sd = {k: np.asarray(v, np.float64) for k, v in module.Heads().state_dict().items()}
    for name, (x, mask) in pairs.items():
        x = x.astype(np.float32).astype(np.float64)
        h = np.maximum(x @ sd["trunk.weight"].T + sd["trunk.bias"], 0) * mask
        scores = h @ sd["scores.weight"].T + sd["scores.bias"]
        logits = np.maximum(h, 0) @ sd["probs.weight"].T + sd["probs.bias"]
        probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        with np.load(home / "heads_out" / f"{name}.npz") as result:
            assert result.files == ["output0", "output1"]
            np.testing.assert_allclose(result["output0"], scores, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(result["output1"], probs, rtol=1e-5, atol=1e-6)


class KillOnce(distributed.WorkerPlugin):
    """Ends the worker process that starts the task of one file (its key begins with
    `prefix`), the first time any worker starts it: `flag` is created, atomically, by the one
    worker that dies. Nothing depends on timing: the task is lost whenever it runs."""

    def __init__(self, prefix: str, flag: str) -> None:
        self.prefix = prefix
        self.flag = flag

    def transition(self, key: object, start: str, finish: str, **kwargs: object) -> None:
        if finish == "executing" and str(key).startswith(self.prefix):
            try:
                os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os._exit(1)


def test_a_worker_killed_mid_run_costs_only_its_task(
    home: Path, weights: dict, layerc_run: Callable[..., tuple[int, str, str]]
) -> None:
    data = home / "many"
    data.mkdir()
    rng = np.random.default_rng(3)
    samples = {f"m{i}": rng.standard_normal((20 + i, 196)) for i in range(6)}
    for name, x in samples.items():
        np.save(data / f"{name}.npy", x)
    flag = home / "killed"
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=50,
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        client.register_plugin(KillOnce("layerc-run-m3.npy-", str(flag)))
        first = set(client.run(os.getpid).values())
        code, out, err = layerc_run(
            "mlp.lyr", "-i", "many", "-o", "many_out", "--dask", local.scheduler_address
        )
        now = set(client.run(os.getpid).values())
    assert flag.exists()  # the worker running m3.npy died
    assert first - now  # and a new process replaced it
    assert (code, err) == (0, "")
    assert out == "wrote 6 files to many_out (135 rows)\n"
    for name, x in samples.items():
        assert_matches(np.load(home / "many_out" / f"{name}.npy"), weights, x)
    assert leftovers(home / "many_out") == []


class KillAlways(distributed.WorkerPlugin):
    """Ends every worker process that starts the task of one file."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def transition(self, key: object, start: str, finish: str, **kwargs: object) -> None:
        if finish == "executing" and str(key).startswith(self.prefix):
            os._exit(1)


def test_a_file_whose_workers_keep_dying_is_given_up_and_the_others_complete(
    home: Path, weights: dict, layerc_run: Callable[..., tuple[int, str, str]]
) -> None:
    """Dask gives a task up once `allowed-failures` workers died running it (1 here, so two
    deaths); one task at a time per worker, so that no other file is on a worker that dies."""
    data = home / "doomed"
    data.mkdir()
    rng = np.random.default_rng(6)
    samples = {f"d{i}": rng.standard_normal((10, 196)) for i in range(6)}
    for name, x in samples.items():
        np.save(data / f"{name}.npy", x)
    settings = {
        "distributed.scheduler.allowed-failures": 1,
        "distributed.scheduler.worker-saturation": 1.0,
    }
    with (
        dask.config.set(settings),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=50,
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        client.register_plugin(KillAlways("layerc-run-d2.npy-"))
        code, out, err = layerc_run(
            "mlp.lyr", "-i", "doomed", "-o", "doomed_out", "--dask", local.scheduler_address
        )
    assert code == 1
    assert out == "wrote 5 files to doomed_out (50 rows); 1 failed\n"
    assert err.startswith(
        "doomed/d2.npy: the Dask workers running it died 2 times (out of memory? killed?), so "
        "it was given up (its task: layerc-run-d2.npy-"
    ), err
    assert sorted(stamps(home / "doomed_out")) == [f"d{i}.npy" for i in range(6) if i != 2]
    for name, x in samples.items():
        if name != "d2":
            assert_matches(np.load(home / "doomed_out" / f"{name}.npy"), weights, x)


def test_dask_local_starts_and_stops_its_own_workers(
    home: Path, weights: dict, layerc_run: Callable[..., tuple[int, str, str]]
) -> None:
    """`--dask local:2`, the spec's form, gives what a run in this process gives, byte for
    byte, and leaves this process's environment as it was."""
    data = home / "local"
    data.mkdir()
    x = np.random.default_rng(4).standard_normal((3, 8, 196)).astype(np.float32)
    for i in range(3):
        np.save(data / f"x{i}.npy", x[i])
    code, out, err = layerc_run("mlp.lyr", "-i", "local/*.npy", "-o", "here/")
    assert (code, out, err) == (0, "wrote 3 files to here/ (24 rows)\n", "")
    environ = dict(os.environ)
    code, out, err = layerc_run("mlp.lyr", "-i", "local/*.npy", "-o", "there/", "--dask", "local:2")
    assert (code, out, err) == (0, "wrote 3 files to there/ (24 rows)\n", "")
    assert dict(os.environ) == environ  # what Dask's nanny set for its workers is undone
    for i in range(3):
        mine, theirs = (
            (home / "here" / f"x{i}.npy").read_bytes(),
            (home / "there" / f"x{i}.npy").read_bytes(),
        )
        assert mine == theirs
        assert_matches(np.load(home / "there" / f"x{i}.npy"), weights, x[i])


# --------------------------------------------------------------------------- no cluster needed


def test_a_folder_run_here_reports_bad_files_and_skips_complete_ones(
    home: Path, weights: dict, layerc_run: Callable[..., tuple[int, str, str]]
) -> None:
    data = home / "here_data"
    data.mkdir()
    x = np.random.default_rng(5).standard_normal((6, 196))
    np.save(data / "one.npy", x)
    (data / "two.jsonl").write_text("[1, 2]\n")
    code, out, err = layerc_run(
        "mlp.lyr", "-i", "here_data/*", "-o", "here_out/", "--output-format", "csv"
    )
    assert code == 1
    assert out == "wrote 1 file to here_out/ (6 rows); 1 failed\n"
    assert err == "here_data/two.jsonl:1:3: the row has 2 values but model MLP takes 196\n"
    assert_matches(np.loadtxt(home / "here_out" / "one.csv", delimiter=","), weights, x)
    (data / "two.jsonl").write_text(json.dumps(x[0].tolist()) + "\n")
    code, out, err = layerc_run(
        "mlp.lyr", "-i", "here_data/*", "-o", "here_out/", "--output-format", "csv"
    )
    assert (code, out, err) == (0, "wrote 1 file to here_out/ (1 row); 1 already complete\n", "")
    # Another output format is another recipe: nothing is complete in it yet.
    code, out, _ = layerc_run("mlp.lyr", "-i", "here_data/*", "-o", "here_out/")
    assert (code, out) == (0, "wrote 2 files to here_out/ (7 rows)\n")
    assert sorted(stamps(home / "here_out")) == ["one.csv", "one.npy", "two.csv", "two.jsonl"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-i", "clash/", "-o", "o/", "--output-format", "npy"],
            "clash/a.csv and clash/a.npy would both be written to o/a.npy",
        ),
        (
            ["-i", "clash/*.npy", "-o", "o.npy", "--dask", "local:2"],
            "--dask runs a folder of files, writing one file per input: --output 'o.npy' must be a folder",
        ),
        (
            ["-i", "clash/*.npy", "--dask", "local:2"],
            "--dask runs a folder of files, writing one file per input: give --output once",
        ),
        (["-i", "clash/*.npy", "-o", "o/", "--dask", "local:0"], "--dask 'local:0': give local:N"),
        (["-i", "nothing/*.npy", "-o", "o/"], "--input 'nothing/*.npy' matches no files"),
        (["-i", "-", "-o", "o/"], "a folder run reads files: --input - (stdin) is for one input"),
        (["-i", "clash/*.npy", "-o", "o/", "--delimiter", ";"], "--delimiter is for CSV input"),
    ],
)
def test_folder_run_usage_errors(
    home: Path, layerc_run: Callable[..., tuple[int, str, str]], args: list[str], message: str
) -> None:
    clash = home / "clash"
    if not clash.exists():
        clash.mkdir()
        np.save(clash / "a.npy", np.zeros((1, 196)))
        (clash / "a.csv").write_text(",".join(["0"] * 196) + "\n")
    code, out, err = layerc_run("mlp.lyr", *args)
    assert code == 2
    assert out == ""
    assert err.startswith("layerc run: error: ") and message in err, err
    assert not (home / "o").exists()


def test_folder_run_usage_errors_for_models_of_several_inputs_or_outputs(
    home: Path, layerc_run: Callable[..., tuple[int, str, str]]
) -> None:
    (home / "csvs").mkdir()
    (home / "csvs" / "x.csv").write_text("1,2,3,4\n")
    code, _, err = layerc_run("heads.lyr", "-i", "csvs/", "-o", "o/")
    assert code == 2
    assert "model Heads takes 2 inputs (x, mask): a folder run reads one .npz per file" in err
    code, _, err = layerc_run("heads.lyr", "-i", "csvs/", "-o", "o/", "--output-format", "csv")
    assert code == 2
    assert "model Heads gives 2 outputs: a folder run writes them together, one .npz" in err


def test_an_output_is_never_an_input(
    home: Path, layerc_run: Callable[..., tuple[int, str, str]]
) -> None:
    (home / "inplace").mkdir()
    np.save(home / "inplace" / "z.npy", np.zeros((1, 196)))
    code, out, err = layerc_run("mlp.lyr", "-i", "inplace/", "-o", "inplace/")
    assert (code, out) == (1, "")
    assert "the output inplace/z.npy is the input data file itself" in err


def test_the_core_does_not_import_dask() -> None:
    """Dask is an extra: the package, the CLI and `layerc run` import it only for --dask."""
    code = textwrap.dedent(
        """
        import sys
        import layerc, layerc.cli, layerc.tools.run
        assert not {"dask", "distributed"} & set(sys.modules), sorted(sys.modules)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
