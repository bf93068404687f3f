"""quantize=int8 (language section 11): int8 weights per output channel, inputs quantised per row
at run time as ONNX Runtime's dynamic quantisation does.

The kernels are checked against a NumPy float64 rendering of the documented scheme (the integer
sums are exact, so they must agree to float rounding), the VNNI tiles against the portable loops
bit for bit, and whole models against ONNX Runtime running the same scheme as ONNX operators
(DynamicQuantizeLinear, MatMulInteger). The module API (state_dict, load_state_dict, pickling,
hooks, njit, threads), the language's errors, `layerc test` and `layerc summary`'s reports and
`layerc build` are checked on compiled models."""

from __future__ import annotations

import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from conftest import compile_text

from layerc import check, cli, driver, ir
from layerc.errors import LayercError
from layerc.runtime import q8, quantized

RNG = np.random.default_rng(20261130)


def reference(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The documented scheme in NumPy, sums in int64, the scaling in float64: x (n, k) by the
    float weight (m, k), without bias."""
    q, scale = quantized.quantize_weight(weight)
    t = x.dtype.type
    out = np.zeros((x.shape[0], weight.shape[0]))
    for s, row in enumerate(x):
        if not np.isfinite(row).all():
            out[s] = np.nan
            continue
        lo, hi = min(t(0), row.min()), max(t(0), row.max())
        step = t((hi - lo) / t(255))
        step = step if step != 0 else t(1)
        zero = np.clip(np.rint(-lo / step), 0, 255)
        u = np.clip(np.rint(row / step) + zero, 0, 255).astype(np.int64)
        acc = q.astype(np.int64) @ u - int(zero) * q.astype(np.int64).sum(axis=1)
        out[s] = acc * (np.float64(step) * scale.astype(np.float64))
    return out


def _host() -> set[str]:
    import llvmlite.binding as ll

    return {name for name, on in ll.get_host_cpu_features().items() if on}


# The paths this CPU runs: VNNI's tiles, AVX2's, the plain loops (each a jitted caller).
RUNNABLE = [
    path
    for path, needs in (("vnni", {"avx512vnni", "avx512bw"}), ("avx2", {"avx2"}), ("loops", set()))
    if needs <= _host() and (path != "vnni" or q8.gemm.BITS == 512)
]


def _caller(function):  # type: ignore[no-untyped-def]
    @numba.njit
    def call(xs, packed, ys):  # type: ignore[no-untyped-def]
        function(xs, packed, ys)

    return call


CALLERS = {path: _caller(q8.PATHS[path]) for path in RUNNABLE}
_vnni = _caller(q8.matmul)  # the path this CPU uses


@numba.njit
def _in_a_loop(xs, packed, ys, times):  # type: ignore[no-untyped-def]
    for _ in range(times):
        q8.matmul(xs, packed, ys)


SHAPES = [
    (1, 784, 256),
    (1, 256, 128),
    (1, 128, 10),
    (1, 3, 1000),
    (2, 5, 3),
    (3, 1, 1),
    (4, 64, 64),
    (5, 33, 70),
    (9, 100, 300),
    (64, 17, 129),
    (5, 20000, 17),  # past CHUNK: one row at a time
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "k", "m"), SHAPES)
def test_product_is_the_documented_scheme(dtype: type, n: int, k: int, m: int) -> None:
    x = RNG.standard_normal((n, k)).astype(dtype)
    x[0, 0] = 0  # rows of mixed signs, and one of a single sign
    x[-1] = np.abs(x[-1])
    w = RNG.standard_normal((m, k)).astype(dtype)
    _, (packed,) = quantized.tensors(w)
    want = reference(x, w)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    outputs = {}
    for path, call in CALLERS.items():
        got = np.full((n, m), 7, dtype)
        call(x, packed, got)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())
        outputs[path] = got
    first = outputs[RUNNABLE[0]]  # VNNI's tiles, AVX2's and the loops: the same numbers
    assert all(np.array_equal(first, got) for got in outputs.values())


def test_rows_of_zeros_nan_and_inf() -> None:
    w = RNG.standard_normal((20, 8)).astype(np.float32)
    _, (packed,) = quantized.tensors(w)
    x = RNG.standard_normal((5, 8)).astype(np.float32)
    x[1] = 0
    x[2, 3] = np.nan
    x[3, 0] = np.inf
    x[4, 7] = -np.inf
    y = np.zeros((5, 20), np.float32)
    _vnni(x, packed, y)
    assert np.isfinite(y[0]).all()
    assert (y[1] == 0).all()
    assert np.isnan(y[2:]).all()
    np.testing.assert_allclose(y[0], reference(x[:1], w)[0], rtol=1e-6, atol=1e-6)


def test_stack_is_given_back_in_a_callers_loop() -> None:
    # q8.matmul puts quantised rows on the stack and is inlined into its callers: a caller's
    # loop of many calls must not grow the stack (it crashed before stack_restore).
    w = RNG.standard_normal((64, 16000)).astype(np.float32)
    _, (packed,) = quantized.tensors(w)
    x = RNG.standard_normal((4, 16000)).astype(np.float32)
    y = np.zeros((4, 64), np.float32)
    _in_a_loop(x, packed, y, 3000)  # 3000 x 64 KB would overflow an 8 MB stack
    np.testing.assert_allclose(y, reference(x, w), rtol=1e-6, atol=1e-4)


def test_the_path_is_the_cpus_best() -> None:
    assert q8.PATH == RUNNABLE[0]
    assert len(RUNNABLE) >= 2  # CI's machines have AVX2 at least: two paths compared


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_quantisation(dtype: type) -> None:
    w = RNG.standard_normal((50, 33)).astype(dtype)
    w[3] = 0  # a row of zeros
    w[4, 5] = 1e-30  # a row with one tiny value
    w[4, :5] = 0
    w[4, 6:] = 0
    q, scale = quantized.quantize_weight(w)
    assert q.dtype == np.int8 and scale.dtype == dtype
    assert np.abs(q.astype(int)).max() <= 127
    nonzero = np.abs(w).max(axis=1) > 0
    assert (np.abs(q[nonzero].astype(int)).max(axis=1) == 127).all()
    assert (q[3] == 0).all() and scale[3] == 0
    np.testing.assert_allclose(scale, np.abs(w).max(axis=1) / 127, rtol=1e-6)
    # the nearest step: every weight within half a step of its dequantised value
    dq = quantized.dequantize(q, scale)
    assert (np.abs(dq - w) <= scale[:, None] * 0.5000001).all()
    # a fixed point: the dequantised weight quantises to the same q and scale
    q2, scale2 = quantized.quantize_weight(dq)
    assert np.array_equal(q2, q) and np.array_equal(scale2, scale)
    assert np.array_equal(quantized.dequantize(q2, scale2), dq)


def test_packed_layout() -> None:
    w = RNG.standard_normal((70, 9)).astype(np.float32)
    q, scale = quantized.quantize_weight(w)
    packed = quantized.pack(q, scale)
    groups, width = 3, 128
    assert packed.shape == quantized.shapes(70, 9)[0] == (groups + quantized.EXTRA_ROWS, 4 * width)
    assert packed.ctypes.data % 64 == 0
    for o in (0, 17, 69):
        for i in range(9):
            assert packed[i // 4, 4 * o + i % 4] == q[o, i]
    assert (packed[2, 4 * np.arange(70) + 1] == 0).all()  # inputs 9..11 are padding
    assert (packed[:groups, 4 * 70 :] == 0).all()  # outputs 70..127 are padding
    flat = packed.reshape(-1)
    sums = flat[groups * 4 * width : groups * 4 * width + 4 * 70].view(np.int32)
    assert np.array_equal(sums, q.astype(np.int32).sum(axis=1))
    at = (groups + 1) * 4 * width
    assert np.array_equal(flat[at : at + 4 * 70].view(np.float32), scale)


# --------------------------------------------------------------------------- models

MLP = """
model Mlp(quantize=int8) {
  fc1 = Linear(784, 256) { init = uniform(seed=1) }
  act1 = ReLU()
  fc2 = Linear(256, 128) { init = uniform(seed=2) }
  act2 = ReLU()
  fc3 = Linear(128, 10) { init = uniform(seed=3) }
}
model Plain {
  fc1 = Linear(784, 256) { init = uniform(seed=1) }
  act1 = ReLU()
  fc2 = Linear(256, 128) { init = uniform(seed=2) }
  act2 = ReLU()
  fc3 = Linear(128, 10) { init = uniform(seed=3) }
}
"""


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return compile_text(MLP, tmp_path_factory.mktemp("q8"), "qmlp")


def numpy_mlp(state: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The quantised MLP by `reference`, in float64 between the layers' quantisation."""
    h = x
    for index in (1, 2, 3):
        w, b = state[f"fc{index}.weight"], state[f"fc{index}.bias"]
        h = (reference(h.astype(np.float32), w) + b).astype(np.float32)
        if index < 3:
            h = np.maximum(h, 0)
    return h


def test_model_against_numpy(mlp) -> None:  # type: ignore[no-untyped-def]
    net, plain = mlp.Mlp(), mlp.Plain()
    x = RNG.standard_normal((37, 784)).astype(np.float32)
    y = net(x)
    floats = {k: v for k, v in plain.state_dict().items()}
    np.testing.assert_allclose(y, numpy_mlp(floats, x), rtol=1e-5, atol=1e-5)
    # and against the float model: close, not equal
    error = np.abs(y - plain(x)).max() / np.abs(plain(x)).max()
    assert 1e-4 < error < 5e-2


def ort_quantised_mlp(state: dict[str, np.ndarray]) -> bytes:
    """The quantised MLP as ONNX operators: DynamicQuantizeLinear of each layer's input,
    MatMulInteger with the int8 weight, then the per-output scales and the bias."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    h = "x"
    for index in (1, 2, 3):
        q, scale = quantized.quantize_weight(state[f"fc{index}.weight"])
        p = f"l{index}"
        inits += [
            numpy_helper.from_array(np.ascontiguousarray(q.T), f"{p}_w"),
            numpy_helper.from_array(scale.astype(np.float32), f"{p}_ws"),
            numpy_helper.from_array(state[f"fc{index}.bias"].astype(np.float32), f"{p}_b"),
        ]
        nodes += [
            helper.make_node("DynamicQuantizeLinear", [h], [f"{p}_q", f"{p}_s", f"{p}_z"]),
            helper.make_node("MatMulInteger", [f"{p}_q", f"{p}_w", f"{p}_z"], [f"{p}_i"]),
            helper.make_node("Cast", [f"{p}_i"], [f"{p}_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_s", f"{p}_ws"], [f"{p}_k"]),
            helper.make_node("Mul", [f"{p}_f", f"{p}_k"], [f"{p}_m"]),
            helper.make_node("Add", [f"{p}_m", f"{p}_b"], [f"{p}_y"]),
        ]
        h = f"{p}_y"
        if index < 3:
            nodes.append(helper.make_node("Relu", [h], [f"{p}_r"]))
            h = f"{p}_r"
    graph = helper.make_graph(
        nodes,
        "q8",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 784])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model.SerializeToString()


def test_model_against_onnxruntime(mlp) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    net, plain = mlp.Mlp(), mlp.Plain()
    session = ort.InferenceSession(
        ort_quantised_mlp(plain.state_dict()), providers=["CPUExecutionProvider"]
    )
    worst = 0.0
    for _ in range(40):  # one row at a time: DynamicQuantizeLinear quantises a whole tensor
        x = RNG.standard_normal((1, 784)).astype(np.float32)
        (want,) = session.run(None, {"x": x})
        worst = max(worst, float(np.abs(net(x) - want).max() / np.abs(want).max()))
    # The same integers, then the same float operations but for the order of two products
    # (ONNX's Mul of the scales, then of the sums): float rounding apart. A different scheme
    # (symmetric inputs, per-tensor weights) would be a thousand times further off.
    assert worst < 1e-5


def test_state_dict_is_the_dequantised_weight(mlp) -> None:  # type: ignore[no-untyped-def]
    net, plain = mlp.Mlp(), mlp.Plain()
    state = net.state_dict()
    assert list(state) == list(plain.state_dict())
    for key, value in plain.state_dict().items():
        assert state[key].dtype == np.float32 and state[key].shape == value.shape
        if key.endswith("weight"):
            q, scale = quantized.quantize_weight(value)
            assert np.array_equal(state[key], quantized.dequantize(q, scale))
        else:
            assert np.array_equal(state[key], value)
    # a quantised model's state_dict loads back unchanged; a float one's is quantised
    x = RNG.standard_normal((3, 784)).astype(np.float32)
    other = mlp.Mlp()
    other.load_state_dict(state)
    assert np.array_equal(other(x), net(x))
    again = other.state_dict()
    assert all(np.array_equal(again[key], value) for key, value in state.items())
    other.load_state_dict(plain.state_dict())
    assert np.array_equal(other(x), net(x))


def test_new_weights_are_quantised(mlp) -> None:  # type: ignore[no-untyped-def]
    net, plain = mlp.Mlp(), mlp.Plain()
    x = RNG.standard_normal((4, 784)).astype(np.float32)
    w = RNG.standard_normal((128, 256)).astype(np.float32) * 0.1
    net.fc2.weight = w  # assignment
    plain.fc2.weight = w
    state = plain.state_dict()
    np.testing.assert_allclose(net(x), numpy_mlp(state, x), rtol=1e-5, atol=1e-5)
    fresh = mlp.Mlp()
    fresh.load_state_dict(plain.state_dict(), assign=True)
    assert np.array_equal(fresh(x), net(x))
    with pytest.raises(ValueError, match="read-only"):
        net.fc1.weight[0, 0] = 1.0  # would not reach the int8 copy
    net.fc1.bias[:] = 1.0  # biases stay float, written in place as torch's
    state["fc1.bias"] = np.ones(256, np.float32)
    np.testing.assert_allclose(net(x), numpy_mlp(state, x), rtol=1e-5, atol=1e-5)


def test_module_api(mlp) -> None:  # type: ignore[no-untyped-def]
    import layerc

    net = mlp.Mlp()
    x = RNG.standard_normal((700, 784)).astype(np.float32)
    y = net(x)
    assert "Linear(in_features=784, out_features=256, bias=True, quantize=int8)" in repr(net)
    assert isinstance(net.fc1, layerc.runtime.QLinear)
    assert np.array_equal(pickle.loads(pickle.dumps(net))(x), y)
    assert np.array_equal(net.njit()(x), y)
    seen = []
    handle = net.fc2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert np.array_equal(net(x), y)  # layer by layer, each layer's own kernel
    assert seen == [(700, 128)]
    handle.remove()
    assert np.array_equal(net.fc1(x), mlp.Mlp().fc1(x))
    layerc.set_num_threads(2)
    try:
        assert np.array_equal(net(x), y)  # the parallel variant: blocks of rows, same numbers
    finally:
        layerc.set_num_threads(1)


GRAPH = """
model Enc(quantize=int8) {
  fc = Linear(6, 5) { init = uniform(seed=4) }
  act = Tanh()
}
model Heads(quantize=int8) {
  enc = Enc
  a = Linear(5, 3) { init = uniform(seed=5) }
  b = Linear(11, 2, bias=false) { init = uniform(seed=6) }
  forward(x: [6], z: [6]) {
    h = enc(x)
    return a(h) + 1, b(cat(h, z))
  }
}
model Outer {
  enc = Enc
  head = Linear(5, 2) { init = uniform(seed=7) }
}
"""


def test_graph_and_nested_models(tmp_path: Path) -> None:
    module = compile_text(GRAPH, tmp_path, "qgraph")
    heads, outer = module.Heads(), module.Outer()
    x = RNG.standard_normal((9, 6)).astype(np.float32)
    z = RNG.standard_normal((9, 6)).astype(np.float32)
    s = heads.state_dict()
    h = np.tanh(reference(x, s["enc.fc.weight"]) + s["enc.fc.bias"]).astype(np.float32)
    want_a = reference(h, s["a.weight"]) + s["a.bias"] + 1
    want_b = reference(np.concatenate([h, z], axis=1), s["b.weight"])
    got_a, got_b = heads(x, z)
    np.testing.assert_allclose(got_a, want_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_b, want_b, rtol=1e-5, atol=1e-5)
    # a float model may nest a quantised one: its own Linear stays float
    o = outer.state_dict()
    assert not isinstance(outer.head, type(outer.enc.fc))
    want = h @ o["head.weight"].T.astype(np.float64) + o["head.bias"]
    np.testing.assert_allclose(outer(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("model M(quantize=int4) { Linear(2, 2) { init = uniform(seed=0) } }", "quantize must"),
        ('model M(quantize="8") { Linear(2, 2) { init = uniform(seed=0) } }', "quantize must"),
        (
            "model E { Linear(2, 2) { init = uniform(seed=0) } }\nmodel M(quantize=int8) { e = E }",
            "give 'E' the option quantize=int8 too",
        ),
        (
            f"model M(quantize=int8) {{ Linear({check.QUANTIZED_MAX_IN + 1}, 1) "
            "{ init = uniform(seed=0) } }",
            "at most 65536",
        ),
    ],
)
def test_errors(tmp_path: Path, source: str, message: str) -> None:
    path = tmp_path / "bad.lyr"
    path.write_text(source + "\n", encoding="utf-8")
    with pytest.raises(LayercError, match=message) as info:
        driver.check_file(path)
    assert info.value.loc is not None


def test_limits_agree() -> None:
    assert check.QUANTIZED_MAX_IN == quantized.MAX_IN
    assert 255 * 127 * quantized.MAX_IN < 2**31  # the int32 sums are exact


def test_quantize_none_is_the_float_model(tmp_path: Path) -> None:
    source = MLP.replace("model Mlp(quantize=int8)", "model Mlp(quantize=none)")
    module = compile_text(source, tmp_path, "qnone")
    x = RNG.standard_normal((3, 784)).astype(np.float32)
    assert np.array_equal(module.Mlp()(x), module.Plain()(x))


def test_unquantized_program(tmp_path: Path) -> None:
    path = tmp_path / "g.lyr"
    path.write_text(GRAPH, encoding="utf-8")
    program, _ = driver.check_file(path)
    assert ir.quantized(program.models[1])
    plain = ir.unquantized(program)
    assert not any(ir.quantized(m) for m in plain.models)
    assert [m.name for m in plain.models] == [m.name for m in program.models]


# --------------------------------------------------------------------------- commands

LESSON = """
model Lesson(quantize=int8) {
  fc = Linear(4, 3) {
    weight = [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]]
    bias = [0, 0, 0]
  }
}
test Lesson {
  input = [1, 2, 3, 4]
  expect = [30, 40, 50]
  atol = 0.5
}
"""


def test_layerc_test_reports_the_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "lesson.lyr"
    path.write_text(LESSON, encoding="utf-8")
    assert cli.main(["test", str(path)]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if "int8 against the float model" in line]
    # the float model gives exactly 30, 40, 50; the int8 one what the scheme gives
    x = np.array([[1, 2, 3, 4]], np.float32)
    w = np.array([[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]], np.float32)
    diff = np.abs(reference(x, w) - [30, 40, 50]).max()
    assert diff > 0
    assert f"max abs error {diff:.3g}" in line
    assert f"relative error {diff / 50:.3g}" in line


def test_layerc_summary_reports_the_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "mlp.lyr"
    path.write_text(MLP, encoding="utf-8")
    assert cli.main(["summary", str(path), "--model", "Mlp"]) == 0
    out = capsys.readouterr().out
    assert "Model Mlp (float32, quantize=int8)" in out
    assert "234,752 Linear weights as int8" in out
    (line,) = [line for line in out.splitlines() if "int8 against the float model" in line]
    assert f"on {driver.SUMMARY_SAMPLES} samples of seeded standard-normal inputs" in line
    relative = float(line.split("relative error ")[1].split()[0])
    assert 1e-3 < relative < 5e-2
    assert cli.main(["summary", str(path), "--model", "Plain"]) == 0
    assert "int8" not in capsys.readouterr().out


def test_layerc_graph_titles_the_model_as_summary_does(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "mlp.lyr"
    path.write_text(MLP, encoding="utf-8")
    assert cli.main(["graph", str(path), "--model", "Mlp"]) == 0
    assert 'graph [label="Mlp (float32, quantize=int8)"' in capsys.readouterr().out
    assert cli.main(["graph", str(path), "--model", "Plain"]) == 0
    assert 'graph [label="Plain (float32)"' in capsys.readouterr().out


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)
@pytest.mark.parametrize("cpu", ["native", "x86-64-v4", "x86-64-v3", "generic"])
def test_layerc_build(mlp, tmp_path: Path, cpu: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "mlp.lyr"
    path.write_text(MLP, encoding="utf-8")
    out = tmp_path / "lib"
    assert cli.main(["build", str(path), "--model", "Mlp", "-o", str(out), "--cpu", cpu]) == 0
    so = out / "libmlp.so"
    code = (
        "import ctypes, sys\n"
        "lib = ctypes.CDLL(sys.argv[1])\n"
        "n = int(sys.argv[2])\n"
        "x = (ctypes.c_float * (n * 784)).from_buffer_copy(sys.stdin.buffer.read())\n"
        "y = (ctypes.c_float * (n * 10))()\n"
        "assert lib.mlp_forward(x, y, ctypes.c_int64(n)) == 0\n"
        "sys.stdout.buffer.write(bytes(y))\n"
    )
    net = mlp.Mlp()
    for n in (1, 7, 64, 65):
        x = RNG.standard_normal((n, 784)).astype(np.float32)
        done = subprocess.run(
            [sys.executable, "-I", "-c", code, str(so), str(n)],
            input=x.tobytes(),
            capture_output=True,
            check=True,
        )
        y = np.frombuffer(done.stdout, np.float32).reshape(n, 10)
        # the library computes what the Python module computes, on every path: the same
        # integers (VNNI's tiles natively here, AVX2's for x86-64-v3, the loops for generic)
        assert np.array_equal(y, net(x))
    if shutil.which("objdump"):
        text = subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True).stdout
        assert ("vpdpbusd" in text) == (cpu == "native" and q8.PATH == "vnni")
        if cpu in ("x86-64-v3", "x86-64-v4"):  # AVX2's tiles (v4: AVX-512 without VNNI)
            assert re.search(r"vpmaddwd\s.*%ymm", text)
        if cpu == "generic":
            assert "%ymm" not in text and "%zmm" not in text


def test_layerc_export_computes_the_same(tmp_path: Path) -> None:
    # The ONNX graph quantises each row as layerc does, so ONNX Runtime gives layerc's numbers
    # (to float rounding): the MLP, and a graph model of two inputs and two outputs.
    import onnxruntime as ort

    path = tmp_path / "models.lyr"
    path.write_text(MLP + GRAPH, encoding="utf-8")
    module = compile_text(MLP + GRAPH, tmp_path, "qexport")
    for name, shapes in (("Mlp", [(784,)]), ("Heads", [(6,), (6,)])):
        onnx_path = tmp_path / f"{name}.onnx"
        assert cli.main(["export", str(path), "--model", name, "--onnx", str(onnx_path)]) == 0
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        xs = [RNG.standard_normal((20, *shape)).astype(np.float32) for shape in shapes]
        xs[0][3, 2] = np.nan  # a row with a nan: nan in both
        xs[0][4] = 0  # a row of zeros
        feeds = {i.name: x for i, x in zip(session.get_inputs(), xs, strict=True)}
        got = session.run(None, feeds)
        want = module.__dict__[name]()(*xs)
        want = list(want) if isinstance(want, tuple) else [want]
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(np.isnan(a), np.isnan(b))
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_deleted_weight_raises(mlp) -> None:  # type: ignore[no-untyped-def]
    # as torch's forward: a Linear without its weight cannot run (its int8 copy is not used)
    net = mlp.Mlp()
    del net.fc2.weight
    x = RNG.standard_normal((2, 784)).astype(np.float32)
    with pytest.raises(AttributeError, match="weight"):
        net(x)
    with pytest.raises(AttributeError, match="weight"):
        net.fc2(RNG.standard_normal((2, 256)).astype(np.float32))


@numba.njit
def _quantize_one_row(x, xq, scales, zeros):  # type: ignore[no-untyped-def]
    q8._quantize_rows(x, 0, 1, xq, xq.size, scales, zeros)


# ONNX's own test cases for DynamicQuantizeLinear (onnx/backend/test/case/node/
# dynamicquantizelinear.py): the inputs and the uint8 values, scales and zero points it expects.
# A row of layerc's is quantised as one of those tensors.
ONNX_CASES = [
    ([0, 2, -3, -2.5, 1.34, 0.5], 0.0196078438, 153),
    ([-1.0, -2.1, -1.3, -2.5, -3.34, -4.0], 0.0156862754, 255),
    ([1, 2.1, 1.3, 2.5, 3.34, 4.0, 1.5, 2.6, 3.9, 4.0, 3.0, 2.345], 0.0156862754, 0),
]


@pytest.mark.parametrize(("values", "scale", "zero"), ONNX_CASES)
def test_rows_are_quantised_as_onnx_dynamicquantizelinear(
    values: list[float], scale: float, zero: int
) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = np.array([values], np.float32)
    k = x.shape[1]
    xq = np.full(-(-k // 4) * 4, 7, np.uint8)
    scales, zeros = np.zeros(1, np.float32), np.zeros(1, np.int32)
    _quantize_one_row(x, xq, scales, zeros)
    # ONNX's expectation, by the formulas of its test
    want_scale = np.float32((max(0, x.max()) - min(0, x.min())) / 255)
    want_zero = np.clip(round((0 - min(0, x.min())) / want_scale), 0, 255)
    want = np.clip(np.round(x[0] / want_scale) + want_zero, 0, 255).astype(np.uint8)
    assert scales[0] == want_scale and scales[0] == np.float32(scale)
    assert zeros[0] == want_zero == zero
    assert np.array_equal(xq[:k], want)
    assert (xq[k:] == 0).all()  # the padding of the row's last group
    # and ONNX Runtime's operator on the same tensor
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    graph = helper.make_graph(
        [node],
        "dql",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [
            helper.make_tensor_value_info("y", TensorProto.UINT8, [1, k]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("z", TensorProto.UINT8, []),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, s, z = session.run(None, {"x": x})
    assert np.array_equal(xq[:k], y[0]) and scales[0] == s and zeros[0] == z


def test_importing_onnx_runtimes_quantised_graph_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # A user brings ONNX Runtime's quantize_dynamic output: the error names the way to the same
    # kind of model (import the float one, add quantize=int8), located at the node.
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import quantize_dynamic

    w = numpy_helper.from_array(RNG.standard_normal((8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "float",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    (tmp_path / "float.onnx").write_bytes(model.SerializeToString())
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "int8.onnx")
    out = tmp_path / "imported.lyr"
    assert cli.main(["import", str(tmp_path / "int8.onnx"), "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert "unsupported ONNX operator 'DynamicQuantizeLinear'" in err
    assert "add quantize=int8 to its model line" in err
    assert not out.exists()
