"""Weights survive compilation bit for bit: NaN (quiet and signalling, both signs, with
payloads), +-inf, -0.0, subnormals and the extremes of float32 and float64, whether the module
embeds them as literals (at most 4096 values, all finite) or reads them from its weights file.

Each array goes in through a .npy file or a literal in the source and comes back through the
compiled module's `state_dict()`; the bit patterns (`.view(uint)`) must equal the ones NumPy
gives for the same values. A forward pass over non-finite weights must put NaN and inf where
NumPy's float64 matrix product puts them (no fast-math assumption that they do not occur).
"""

from __future__ import annotations

import math

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
# float64, NumPy rounds that to float32 (the rule docs/weights.md gives for decimals). The last
# three are decimals that float32 cannot hold: 16777217.0 rounds (to even, 16777216) where the
# integer 16777217 is an error, and 1.0000000596046448, the float64 nearest to the midpoint
# 1 + 2**-24, rounds to 1.0 although the decimal itself lies above the midpoint.
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
    "1.2345678901234568e29",
    "0.1",
    "16777217.0",
    "1.0000000596046448",
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


# --------------------------------------------------------------------------- the literal rule
#
# Literals follow the rule for files (docs/weights.md): an integer must be exactly
# representable in the model's dtype, as an int64 array's values must be; a decimal is read as
# a float64 and rounded to nearest, as a float64 array is; a finite decimal too large for the
# dtype is an error, not an infinity. References: Python's int and float, NumPy, torch.


def check_error(folder, text: str, name: str = "rule"):
    from layerc.errors import LayercError

    src = folder / f"{name}.lyr"
    src.write_text(text)
    with pytest.raises(LayercError) as info:
        driver.check_file(src)
    return info.value


def one_weight(dtype: str, number: str) -> str:
    return (
        f"model M(dtype={dtype}) {{\n"
        f"    fc = Linear(2, 1, bias=false) {{ weight = [[0.5, {number}]] }}\n}}\n"
    )


def exactly_representable(n: int, dtype: str) -> bool:
    """Whether `dtype` holds the integer n exactly, by integer arithmetic: |n| = m * 2**e with
    m below 2**24 (float32) or 2**53 (float64), within the dtype's range."""
    bits, top = (24, 128) if dtype == "float32" else (53, 1024)
    m = abs(n)
    while m and m % 2 == 0:
        m //= 2
    return m < 2**bits and abs(n) < 2**top


INTEGERS = [
    "16777216",
    "16777217",
    "-16777217",
    "16777218",
    "2147483648",
    "2147483649",
    "9007199254740992",
    "9007199254740993",
    "18014398509481988",
    "123456789012345678901234567890",
    "340282346638528859811704183484516925440",  # the largest float32, exactly
    "340282356779733661637539395458142568448",  # 2**128 - 2**103: rounds to inf in float32
    "00000000000000000000000000000000016777217",
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("number", INTEGERS)
def test_integer_literals_are_exact_or_an_error(tmp_path, dtype, number):
    """An integer literal the dtype cannot hold is an error at the number, as the same value
    in an int64 .npy file is; one it can hold is stored as that integer."""
    n = int(number)
    text = one_weight(dtype, number)
    if exactly_representable(n, dtype):
        module, _ = compile_model(tmp_path, text, "exact")
        assert int(module.M().state_dict()["fc.weight"][0, 1]) == n
    else:
        error = check_error(tmp_path, text)
        assert (error.loc.line, error.loc.col) == (2, text.splitlines()[1].index(number) + 1)
        assert error.message.startswith(f"weight[0, 1] = {number} ")
        if abs(n) >= 2**128 - 2**103 and dtype == "float32":
            assert error.message.endswith("overflows float32")
        else:
            assert f"is not exactly representable in {dtype}" in error.message
    if abs(n) < 2**63:  # the same value from a file follows the same rule
        np.save(tmp_path / "w.npy", np.array([[1, n]], dtype=np.int64))
        from_file = text.replace(f"[[0.5, {number}]]", 'load("w.npy")')
        if exactly_representable(n, dtype):
            compile_model(tmp_path, from_file, "exact_file")
        else:
            assert "not exactly representable" in check_error(tmp_path, from_file).message


def test_inexact_integer_errors_name_the_nearest_value(tmp_path):
    """The message gives the value the dtype would hold (ties to even), by exact arithmetic."""
    error = check_error(tmp_path, one_weight("float32", "16777217"))
    assert "(the nearest float32 is 16777216)" in error.message
    error = check_error(tmp_path, one_weight("float32", "16777219"))
    assert "(the nearest float32 is 16777220)" in error.message
    error = check_error(tmp_path, one_weight("float64", "9007199254740995"))
    assert "(the nearest float64 is 9007199254740996)" in error.message


@pytest.mark.parametrize(
    ("dtype", "number", "shown"),
    [
        ("float64", "1e400", "1e400"),
        ("float64", "-1.8e308", "-1.8e308"),
        ("float32", "1e400", "1e400"),
        ("float32", "3.5e38", "3.5e+38"),
        ("float32", "-3.4028235677973366e38", "-3.4028235677973366e+38"),
    ],
)
def test_finite_decimals_that_overflow_are_errors(tmp_path, dtype, number, shown):
    """Not infinities: an error at the number, also where the model allows inf and nan."""
    with np.errstate(over="ignore"):
        assert math.isinf(float(number)) or math.isinf(np.float32(float(number)))
    for options in ("", ", allow_nonfinite=true"):
        text = one_weight(dtype + options, number)
        error = check_error(tmp_path, text)
        assert error.message == f"weight[0, 1] = {shown} overflows {dtype}"
        assert error.loc.col == text.splitlines()[1].index(number) + 1


def decimal_texts() -> list[str]:
    """Decimals whose float32 rounding is easy to get wrong: shortest float64 reprs of random
    bit patterns, of float32 midpoints and their neighbours, and short fractions."""
    rng = np.random.default_rng(11)
    texts = ["0.1", "0.2", "0.3", "1.1", "-2.675", "1e-46", "7.006492321624085e-46"]
    for bits in rng.integers(0, 2**63, size=200, dtype=np.uint64):
        x = float(np.array(bits).view(np.float64))
        if math.isfinite(x) and abs(x) < 3e38:
            texts.append(repr(x))
    for f in rng.uniform(-4, 4, size=200).astype(np.float32):
        mid = (float(f) + float(np.nextafter(f, np.float32(np.inf)))) / 2  # exact in float64
        above, below = float(np.nextafter(mid, np.inf)), float(np.nextafter(mid, -np.inf))
        texts += [repr(mid), repr(above), repr(below)]
    return texts


def test_decimals_round_as_numpy_and_torch_round_them(tmp_path):
    """Every decimal becomes np.float32(float(text)), which is what torch.tensor([float(text)],
    dtype=torch.float32) gives and what a float64 file of the same values gives."""
    import torch

    texts = decimal_texts()
    width = 8
    texts += ["0"] * (-len(texts) % width)
    rows = [texts[i : i + width] for i in range(0, len(texts), width)]
    weight = "[" + ",\n".join("[" + ", ".join(row) + "]" for row in rows) + "]"
    text = f"model M {{\n    fc = Linear({width}, {len(rows)}, bias=false) {{ weight = {weight} }}\n}}\n"
    module, _ = compile_model(tmp_path, text, "decimals")
    got = module.M().state_dict()["fc.weight"].ravel()
    numpy_says = np.array([np.float32(float(t)) for t in texts])
    torch_says = torch.tensor([float(t) for t in texts], dtype=torch.float32).numpy()
    np.testing.assert_array_equal(bits(got), bits(numpy_says))
    np.testing.assert_array_equal(bits(got), bits(torch_says))


def test_double_rounding_is_the_deliberate_choice(tmp_path):
    """1.0000000596046448 lies above the float32 midpoint 1 + 2**-24 as a decimal, so rounding
    the decimal itself would give 1 + 2**-23; read as a float64 first, it is the midpoint, and
    rounds to even, 1.0: the value a float64 array holding it converts to (and torch gives).
    5.51215618153e-14 is a shorter decimal in the same position (the example docs/weights.md
    gives)."""
    from fractions import Fraction

    def once(text: str) -> np.float32:
        """The float32 nearest to the decimal itself, by exact rational arithmetic."""
        y = np.float32(float(text))
        near = [y, np.nextafter(y, np.float32(np.inf)), np.nextafter(y, np.float32(-np.inf))]
        return min(near, key=lambda c: abs(Fraction(float(c)) - Fraction(text)))

    text = "1.0000000596046448"
    midpoint = Fraction(1) + Fraction(1, 2**24)
    assert Fraction(text) > midpoint and Fraction(float(text)) == midpoint
    module, _ = compile_model(tmp_path, one_weight("float32", text), "twice")
    assert module.M().state_dict()["fc.weight"][0, 1] == np.float32(1.0) != once(text)
    short = "5.51215618153e-14"
    module, _ = compile_model(tmp_path, one_weight("float32", short), "short")
    got = module.M().state_dict()["fc.weight"][0, 1]
    assert got == np.float32(float(short)) != once(short)
    np.save(tmp_path / "w.npy", np.array([[0.5, float(text)]]))
    module, _ = compile_model(
        tmp_path, one_weight("float32", "0").replace("[[0.5, 0]]", 'load("w.npy")'), "file"
    )
    assert module.M().state_dict()["fc.weight"][0, 1] == np.float32(1.0)


def test_test_vectors_and_arguments_follow_the_rule(tmp_path):
    """input is read as the model's dtype, expect as float64 (it is compared in float64), and
    LeakyReLU's slope as the model's dtype; from literals and from files alike."""
    model = "model M {\n    fc = Linear(2, 1) { init = zeros() }\n    LeakyReLU(%s)\n}\n"
    cases = [
        ("test M { input = [1, 16777217]; expect = [0] }", "16777217", "input[1] = 16777217"),
        ("test M { input = [1, 1e39]; expect = [0] }", "1e39", "input[1] = 1e+39 overflows"),
        (
            "test M { input = [1, 2]; expect = [9007199254740993] }",
            "9007199254740993",
            "expect[0] = 9007199254740993 is not exactly representable in float64",
        ),
        ("test M { input = [1, 2]; expect = [-1e400] }", "-1e400", "expect[0] = -1e400 overflows"),
    ]
    for test, marker, message in cases:
        text = model % "0.01" + test + "\n"
        error = check_error(tmp_path, text)
        assert message in error.message
        assert error.loc.line == 5 and error.loc.col == test.index(marker) + 1
    for slope, message in [
        ("16777217", "negative_slope = 16777217 is not exactly representable in float32"),
        ("1e400", "negative_slope must be a finite number"),
    ]:
        error = check_error(tmp_path, model % slope)
        assert error.message.startswith(message) and (error.loc.line, error.loc.col) == (3, 15)
    np.save(tmp_path / "x.npy", np.array([[1, 2**24 + 1]], dtype=np.int64))
    text = model % "0.01" + 'test M { input = load("x.npy"); expect = [0] }\n'
    assert "= 16777217 (int64) is not exactly representable" in check_error(tmp_path, text).message
    # nan and inf written as such stay legitimate test values.
    (tmp_path / "ok.lyr").write_text(
        model % "0.01" + "test M { input = [inf, nan]; expect = [nan] }"
    )
    program, _ = driver.check_file(tmp_path / "ok.lyr")
    assert np.isinf(program.tests[0].input[0]) and np.isnan(program.tests[0].expect[0])
