"""Weights survive compilation bit for bit: NaN (quiet and signalling, both signs, with
payloads), +-inf, -0.0, subnormals and the extremes of float32 and float64, whether the module
embeds them as literals (at most 4096 values, all finite) or reads them from its weights file.

Each array goes in through a .npy file or a literal in the source and comes back through the
compiled module's `state_dict()`; the bit patterns (`.view(uint)`) must equal the ones NumPy
gives for the same values. A forward pass over non-finite weights must put NaN and inf where
NumPy's float64 matrix product puts them (no fast-math assumption that they do not occur).
"""

from __future__ import annotations

import numpy as np
import pytest

from layerc import driver

F32 = np.array(
    [
        0x7FC00000,
        0xFFC00000,  # quiet NaN, both signs
        0x7FC12345,
        0xFFD00001,  # quiet NaN with payloads
        0x7F800001,
        0xFF800123,  # signalling NaN with payloads
        0x7F800000,
        0xFF800000,  # +-inf
        0x80000000,
        0x00000000,  # -0.0, +0.0
        0x00000001,
        0x807FFFFF,  # smallest subnormal, most negative subnormal
        0x00800000,
        0x7F7FFFFF,  # smallest normal, largest finite
        0xFF7FFFFF,
        0x3F800001,  # most negative finite, 1 + ulp
    ],
    dtype=np.uint32,
)
F64 = np.array(
    [
        0x7FF8000000000000,
        0xFFF8000000000000,
        0x7FF8DEADBEEF0001,
        0xFFFC000000000042,
        0x7FF0000000000001,
        0xFFF00000000ABCDE,
        0x7FF0000000000000,
        0xFFF0000000000000,
        0x8000000000000000,
        0x0000000000000000,
        0x0000000000000001,
        0x800FFFFFFFFFFFFF,
        0x0010000000000000,
        0x7FEFFFFFFFFFFFFF,
        0xFFEFFFFFFFFFFFFF,
        0x3FF0000000000001,
    ],
    dtype=np.uint64,
)
FINITE = slice(8, 16)  # the finite ones: what may be written as literals
UINT = {"float32": np.uint32, "float64": np.uint64}
BITS = {"float32": F32, "float64": F64}


def values(dtype: str) -> np.ndarray:
    return BITS[dtype].view(dtype)


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).view(UINT[array.dtype.name])


def compile_model(folder, text: str, name: str):
    """Compile `text` as folder/name.lyr; return the module and whether it has a weights file."""
    src = folder / f"{name}.lyr"
    src.write_text(text)
    written = driver.compile_file(src)[1]
    return driver.import_module(written[-1]), written[0].suffix == ".weights"


def big_tail(width: int) -> str:
    """A Linear that takes the model past 4096 weights, so they go to a weights file."""
    return f"    tail = Linear({width}, 2100) {{ init = uniform(seed=7) }}\n"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_special_value_survives_the_weights_file(tmp_path, dtype):
    weight = values(dtype).reshape(4, 4)
    bias = values(dtype)[[2, 5, 8, 10]]
    np.save(tmp_path / "w.npy", weight)
    np.save(tmp_path / "b.npy", bias)
    text = (
        f"model M(dtype={dtype}, allow_nonfinite=true) {{\n"
        '    fc = Linear(4, 4) { weight = load("w.npy"); bias = load("b.npy") }\n}\n'
    )
    module, has_file = compile_model(tmp_path, text, "special")
    assert has_file
    state = module.M().state_dict()
    np.testing.assert_array_equal(bits(state["fc.weight"]), bits(weight))
    np.testing.assert_array_equal(bits(state["fc.bias"]), bits(bias))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", ["inline", "weights file"])
def test_finite_extremes_survive_both_paths(tmp_path, dtype, path):
    weight = values(dtype)[FINITE].reshape(2, 4)
    np.save(tmp_path / "w.npy", weight)
    tail = big_tail(2) if path == "weights file" else ""
    text = (
        f"model M(dtype={dtype}) {{\n"
        '    fc = Linear(4, 2, bias=false) { weight = load("w.npy") }\n'
        f"{tail}}}\n"
    )
    module, has_file = compile_model(tmp_path, text, "finite")
    assert has_file == (path == "weights file")
    np.testing.assert_array_equal(bits(module.M().state_dict()["fc.weight"]), bits(weight))


# Literal spellings of extremes, and the value each must become: Python parses the text as a
# float64, NumPy rounds that to float32 (the rule docs/language.md gives for literals).
LITERALS = [
    "-0.0",
    "-0",
    "+0.",
    "0e0",
    "5e-324",
    "-4.9406564584124654e-324",
    "2.2250738585072014e-308",
    "1.7976931348623157e308",
    "-1.7976931348623157e+308",
    "2.225073858507201e-308",
    "1.401298464324817e-45",
    "1e-45",
    "-1.1754943508222875e-38",
    "3.4028234663852886e38",
    "3.4028235e38",
    "1.0000001",
    ".5e-40",
    "123456789012345678901234567890",
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", ["inline", "weights file"])
def test_literal_extremes_become_the_nearest_value(tmp_path, dtype, path):
    texts = [t for t in LITERALS if dtype == "float64" or abs(float(t)) <= 3.4028235e38]
    texts += ["0"] * (-len(texts) % 4)
    rows = [texts[i : i + 4] for i in range(0, len(texts), 4)]
    weight = "[" + ", ".join("[" + ", ".join(row) + "]" for row in rows) + "]"
    tail = big_tail(len(rows)) if path == "weights file" else ""
    text = (
        f"model M(dtype={dtype}) {{\n"
        f"    fc = Linear(4, {len(rows)}, bias=false) {{ weight = {weight} }}\n"
        f"{tail}}}\n"
    )
    module, has_file = compile_model(tmp_path, text, "literal")
    assert has_file == (path == "weights file")
    expected = np.array([float(t) for t in texts], dtype=np.float64).astype(dtype)
    got = module.M().state_dict()["fc.weight"].ravel()
    np.testing.assert_array_equal(bits(got), bits(expected))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nonfinite_literals_keep_their_sign(tmp_path, dtype):
    texts = ["nan", "-nan", "+nan", "inf", "-inf", "+inf", "-0.0", "0"]
    weight = "[[" + ", ".join(texts[:4]) + "], [" + ", ".join(texts[4:]) + "]]"
    text = (
        f"model M(dtype={dtype}, allow_nonfinite=true) {{\n"
        f"    fc = Linear(4, 2) {{ weight = {weight}; bias = [-nan, nan] }}\n}}\n"
    )
    module, _ = compile_model(tmp_path, text, "signs")
    state = module.M().state_dict()
    python = [float(t) for t in texts]  # Python's own nan, -nan and inf
    expected = np.array(python, dtype=np.float64).astype(dtype).reshape(2, 4)
    np.testing.assert_array_equal(bits(state["fc.weight"]), bits(expected))
    expected_bias = np.array([float("-nan"), float("nan")]).astype(dtype)
    np.testing.assert_array_equal(bits(state["fc.bias"]), bits(expected_bias))
    assert np.signbit(state["fc.bias"]).tolist() == [True, False]


def test_float64_files_into_float32_models_round_as_numpy_does(tmp_path):
    """NaN payloads and extremes of a float64 file, converted for a float32 model: the bits
    NumPy's own conversion gives (payloads truncated, quiet bit set; values rounded)."""
    weight = values("float64").reshape(4, 4).copy()
    weight[3, 1:3] = 0.0  # +-max float64 overflow float32: an error, tested elsewhere
    np.save(tmp_path / "w.npy", weight)
    text = (
        "model M(allow_nonfinite=true) {\n"
        '    fc = Linear(4, 4, bias=false) { weight = load("w.npy") }\n}\n'
    )
    module, _ = compile_model(tmp_path, text, "narrow")
    with np.errstate(over="ignore", invalid="ignore"):
        expected = weight.astype(np.float32)
    np.testing.assert_array_equal(bits(module.M().state_dict()["fc.weight"]), bits(expected))


def test_forward_over_nonfinite_weights_matches_numpy(tmp_path):
    weight = np.array(
        [[np.nan, 1.0, 0.0, 2.0], [np.inf, 0.0, 1.0, -1.0], [-np.inf, np.inf, 0.5, 0.0]]
    )
    bias = np.array([0.0, -np.inf, 1.0])
    np.save(tmp_path / "w.npy", weight)
    np.save(tmp_path / "b.npy", bias)
    text = (
        "model M(dtype=float64, allow_nonfinite=true) {\n"
        '    fc = Linear(4, 3) { weight = load("w.npy"); bias = load("b.npy") }\n'
        "    ReLU\n}\n"
    )
    module, _ = compile_model(tmp_path, text, "forward")
    x = np.array(
        [[0.0, 1.0, -1.0, 2.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, 2.0, 0.5]]
    )
    with np.errstate(invalid="ignore"):
        h = np.array(
            [
                [sum(w * v for w, v in zip(row, sample, strict=True)) for row in weight]
                for sample in x
            ]
        )
        expected = np.where(np.isnan(h + bias), np.nan, np.maximum(h + bias, 0.0))
    net = module.M()
    for y in (net(x), net.forward(x)):
        np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
        finite = ~np.isnan(expected)
        np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-7, atol=1e-7)
