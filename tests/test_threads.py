"""`layerc.set_num_threads`: with more than one thread a model's fused forward splits a batch of at
least 2 * BLOCK rows into blocks of BLOCK rows that numba's threads compute (the generated
`_forward_<Model>_par`). Each sample is computed as on one thread, so the outputs must equal the
one-thread outputs bit for bit: for a pipeline (samples/mlp.lyr), a graph model of two inputs and
two outputs (samples/residual.lyr's Heads) and a model of many kinds over per-sample shapes, in
float32 and float64, at batch sizes around the block boundaries. A model whose samples depend on
each other (a batch norm with the batch's statistics) has no parallel variant and still runs.
The one-thread kernels are checked against torch elsewhere; here the MLP is also checked against
NumPy in float64 from its state_dict."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numba
import numpy as np
import pytest
from conftest import compile_text

import layerc
from layerc import driver
from layerc.runtime import threads

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
BLOCK = threads.BLOCK
# 1337 and 100_003 rows make blocks of two sizes (167 and 168; 255 and 256)
BATCHES = [0, 1, BLOCK - 1, 2 * BLOCK, 2 * BLOCK + 1, 1000, 1337, 4096, 100_003]

needs_two = pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < 2, reason="numba has fewer than two threads here"
)


@pytest.fixture(autouse=True)
def restore_threads():
    """Every test leaves layerc's thread count as it found it."""
    before = layerc.get_num_threads()
    yield
    layerc.set_num_threads(before)


def _compiled(source: Path, folder: Path, name: str):
    out = folder / f"{name}.py"
    driver.compile_file(source, out)
    return driver.import_module(out)


@pytest.fixture(scope="module")
def mlp_module(tmp_path_factory):
    return _compiled(SAMPLES / "mlp.lyr", tmp_path_factory.mktemp("mlp"), "threads_mlp")


@pytest.fixture(scope="module")
def residual_module(tmp_path_factory):
    return _compiled(
        SAMPLES / "residual.lyr", tmp_path_factory.mktemp("residual"), "threads_residual"
    )


def _vector(values: np.ndarray) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


_R = np.random.default_rng(21)
_NORM = f"weight = {_vector(_R.uniform(0.5, 2, 16))}; bias = {_vector(_R.standard_normal(16))}"
_BN = (
    f"weight = {_vector(_R.uniform(0.5, 2, 48))}; bias = {_vector(_R.standard_normal(48))}; "
    f"running_mean = {_vector(_R.standard_normal(48))}; "
    f"running_var = {_vector(_R.uniform(0.2, 3, 48))}"
)
# Linear over (N, 3, 4) rows, LayerNorm, GELU, Flatten, BatchNorm1d with running statistics,
# a Linear of register tiles (48 x 64 weights) with SiLU and Tanh, Softmax.
KINDS_LYR = """
model Many{tag}(dtype={dtype}, input=[3, 4]) {{
    fc = Linear(4, 16) {{ init = uniform(seed=1) }}
    norm = LayerNorm(16) {{ NORM }}
    GELU()
    flat = Flatten(start_dim=-2)
    bn = BatchNorm1d(48) {{ BN }}
    wide = Linear(48, 64) {{ init = uniform(seed=4) }}
    SiLU()
    Tanh()
    out = Linear(64, 10) {{ init = uniform(seed=5) }}
    Softmax(dim=-1)
}}
"""


@pytest.fixture(scope="module")
def kinds_module(tmp_path_factory):
    text = "".join(
        KINDS_LYR.format(tag=tag, dtype=dtype).replace("NORM", _NORM).replace("BN", _BN)
        for tag, dtype in (("32", "float32"), ("64", "float64"))
    )
    return compile_text(text, tmp_path_factory.mktemp("kinds"), "threads_kinds")


def _both(call, *xs):
    """`call(*xs)` on one thread and on two, as tuples of outputs."""
    layerc.set_num_threads(1)
    one = call(*xs)
    layerc.set_num_threads(2)
    two = call(*xs)
    as_tuple = lambda v: v if isinstance(v, tuple) else (v,)  # noqa: E731
    return as_tuple(one), as_tuple(two)


def _assert_identical(one, two) -> None:
    assert len(one) == len(two)
    for a, b in zip(one, two, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        # bit for bit: the same bytes (NaN included)
        assert a.tobytes() == b.tobytes()


# --------------------------------------------------------------------------- the defaults


def test_default_is_one_thread_in_a_new_process() -> None:
    code = "import layerc, layerc.runtime.threads as t; print(layerc.get_num_threads(), t.count)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["1", "1"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", None, True])
def test_set_num_threads_refuses_what_is_not_a_positive_integer(bad) -> None:
    before = layerc.get_num_threads()
    with pytest.raises(ValueError, match="positive integer"):
        layerc.set_num_threads(bad)
    assert layerc.get_num_threads() == before


def test_get_num_threads_gives_the_count_set() -> None:
    layerc.set_num_threads(2)
    assert layerc.get_num_threads() == 2
    assert threads.count == min(2, numba.config.NUMBA_NUM_THREADS)
    # more than numba has: remembered, and numba's whole pool used
    layerc.set_num_threads(64)
    assert layerc.get_num_threads() == 64
    assert threads.count == numba.config.NUMBA_NUM_THREADS
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    layerc.set_num_threads(1)
    assert layerc.get_num_threads() == 1 and threads.count == 1
    assert numba.get_num_threads() == 1


# --------------------------------------------------------------------------- bit for bit


@needs_two
@pytest.mark.parametrize("batch", BATCHES)
def test_mlp_two_threads_equal_one(mlp_module, batch: int) -> None:
    net = mlp_module.Mlp()
    x = np.random.default_rng(batch).standard_normal((batch, 8), dtype=np.float32)
    _assert_identical(*_both(net, x))


@needs_two
@pytest.mark.parametrize("batch", BATCHES)
def test_graph_model_two_threads_equal_one(residual_module, batch: int) -> None:
    net = residual_module.Heads()
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, 8), dtype=np.float32)
    mask = (rng.random((batch, 16)) > 0.3).astype(np.float32)
    one, two = _both(net, x, mask)
    assert len(one) == 2
    _assert_identical(one, two)
    block = residual_module.Block()
    _assert_identical(*_both(block, rng.standard_normal((batch, 16), dtype=np.float32)))


@needs_two
@pytest.mark.parametrize("tag", ["32", "64"])
@pytest.mark.parametrize("batch", BATCHES)
def test_many_kinds_two_threads_equal_one(kinds_module, tag: str, batch: int) -> None:
    net = getattr(kinds_module, f"Many{tag}")()
    x = np.random.default_rng(batch).standard_normal((batch, 3, 4)) * 3
    x[: min(batch, 3), 0, 0] = [np.nan, np.inf, -np.inf][: min(batch, 3)]
    one, two = _both(net, x.astype(net.dtype))
    assert one[0].shape == (batch, 10)
    _assert_identical(one, two)


@needs_two
@pytest.mark.parametrize("batch", [1, 9, 20, 2 * BLOCK, 1337])
def test_the_parallel_variant_called_directly_equals_the_kernel(mlp_module, batch: int) -> None:
    """The parallel variant splits any batch into a multiple of 8 blocks, empty ones too when
    there are fewer rows than blocks (a call of its own; `net(x)` gives it 512 rows at least),
    and computes what the one-thread kernel computes, bit for bit."""
    net = mlp_module.Mlp()
    x = np.random.default_rng(batch).standard_normal((batch, 8), dtype=np.float32)
    expected = net(x)
    params = [net.get_parameter(key) for key, *_ in type(net)._kernel_params]
    layerc.set_num_threads(2)
    try:
        y = np.full_like(expected, np.nan)
        type(net)._kernel_par(x, y, *params)
    finally:
        layerc.set_num_threads(1)
    _assert_identical([expected], [y])


@needs_two
def test_batch_shapes_of_several_axes(kinds_module) -> None:
    net = kinds_module.Many32()
    x = np.random.default_rng(3).standard_normal((7, 150, 3, 4)).astype(np.float32)
    one, two = _both(net, x)
    assert one[0].shape == (7, 150, 10)
    _assert_identical(one, two)
    assert type(net)._kernel_par.signatures


@needs_two
def test_mlp_two_threads_against_numpy_float64(mlp_module) -> None:
    """The outside reference: NumPy in float64 from the state_dict."""
    net = mlp_module.Mlp()
    sd = {k: np.asarray(v, dtype=np.float64) for k, v in net.state_dict().items()}
    x = np.random.default_rng(7).standard_normal((4096, 8), dtype=np.float32)
    h = x.astype(np.float64)
    h = np.maximum(h @ sd["fc1.weight"].T + sd["fc1.bias"], 0)
    h = np.maximum(h @ sd["fc2.weight"].T + sd["fc2.bias"], 0)
    expected = h @ sd["fc3.weight"].T + sd["fc3.bias"]
    layerc.set_num_threads(2)
    got = net(x)
    assert type(net)._kernel_par.signatures  # the parallel variant computed it
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # the sample's own test vectors, too
    np.testing.assert_allclose(
        net(np.load(SAMPLES / "mlp_input.npy")), np.load(SAMPLES / "mlp_expect.npy"), atol=1e-5
    )


# --------------------------------------------------------------------------- when it is used


SMALL_LYR = """
model Small{tag}(input=[5]) {{
    fc = Linear(5, 7) {{ init = uniform(seed=9) }}
    ReLU()
}}
"""


@needs_two
def test_parallel_variant_compiled_only_when_used(tmp_path) -> None:
    module = compile_text(SMALL_LYR.format(tag=""), tmp_path, "threads_small")
    cls = module.Small
    assert cls._kernel_par is module._forward_Small_par
    assert cls._kernel_par.signatures == []  # not compiled at import
    net = cls()
    x = np.ones((2 * BLOCK, 5), np.float32)
    net(x)  # one thread: the sequential kernel
    assert cls._kernel_par.signatures == []
    layerc.set_num_threads(2)
    net(x[: 2 * BLOCK - 1])  # too few rows for threads
    net(x[:1])
    assert cls._kernel_par.signatures == []
    y = net(x)
    assert len(cls._kernel_par.signatures) == 1
    np.testing.assert_array_equal(y, np.maximum(x @ net.fc.weight.T + net.fc.bias, 0))
    # back to one thread: the sequential kernel again, the same values
    layerc.set_num_threads(1)
    np.testing.assert_array_equal(net(x), y)


@needs_two
def test_other_entry_points_with_two_threads(mlp_module) -> None:
    """`out=`, a list input, a call from another thread, `njit()` and the hooks path."""
    net = mlp_module.Mlp()
    x = np.random.default_rng(11).standard_normal((1000, 8), dtype=np.float32)
    layerc.set_num_threads(1)
    expected = net(x)
    layerc.set_num_threads(2)
    out = np.empty((1000, 3), np.float32)
    assert net(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(net(x.tolist()), expected)
    np.testing.assert_array_equal(net(x.astype(np.float64)), expected)
    results = []
    worker = threading.Thread(target=lambda: results.append(net(x)))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(results[0], expected)
    np.testing.assert_array_equal(net.njit()(x), expected)
    seen = []
    handle = net.fc1.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    try:
        np.testing.assert_array_equal(net(x), expected)  # layer by layer, one thread
    finally:
        handle.remove()
    assert seen == [(1000, 16)]
    np.testing.assert_array_equal(net(x), expected)  # the fast path again


@needs_two
def test_module_without_parallel_variant(mlp_module, monkeypatch) -> None:
    """A module generated before the parallel variant existed (`_kernel_par` absent: None)."""
    monkeypatch.setattr(mlp_module.Mlp, "_kernel_par", None)
    net = mlp_module.Mlp()
    x = np.random.default_rng(5).standard_normal((1000, 8), dtype=np.float32)
    _assert_identical(*_both(net, x))


BATCH_STATS_LYR = f"""
model Batchwise(dtype=float64) {{
    fc = Linear(8, 8) {{ init = uniform(seed=4) }}
    bn = BatchNorm1d(8, track_running_stats=false) {{
        weight = {_vector(_R.uniform(0.5, 2, 8))}; bias = {_vector(_R.standard_normal(8))}
    }}
    Tanh()
}}
"""


@needs_two
def test_batch_statistics_stay_on_one_thread(tmp_path) -> None:
    module = compile_text(BATCH_STATS_LYR, tmp_path, "threads_batchwise")
    assert module.Batchwise._kernel_par is None
    assert not hasattr(module, "_forward_Batchwise_par")
    net = module.Batchwise()
    x = np.random.default_rng(2).standard_normal((1000, 8))
    one, two = _both(net, x)
    _assert_identical(one, two)
    sd = net.state_dict()
    h = x @ sd["fc.weight"].T + sd["fc.bias"]
    h = (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + 1e-5) * sd["bn.weight"] + sd["bn.bias"]
    np.testing.assert_allclose(two[0], np.tanh(h), rtol=1e-12, atol=1e-12)
