"""The matrix-product kernel every Linear runs (layerc.runtime.gemm) and the vectorisable erf
(layerc.runtime.vmath), checked against NumPy in float64 and the C library's erf.

Exactness: with small integer inputs every product and partial sum is an integer below 2^24, so
float32 holds it exactly and any order of summation gives the float64 result to the bit; a
wrong index, a missed tail or a stale accumulator cannot hide behind a tolerance.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from conftest import asm_loops

from layerc.runtime import gemm, vmath


@numba.njit
def _matmul(xs, weight, ys):  # type: ignore[no-untyped-def]
    gemm.matmul(xs, weight, ys)


@numba.njit
def _erf_all(xs, ys):  # type: ignore[no-untyped-def]
    for i in range(xs.size):
        ys[i] = vmath.erf_f32(xs[i])


# outputs: tails of every kind, and for one sample every mix of its 16-, 8- and 4-vector tiles
# (449 = 256 + 128 + 64 + 1 float32 outputs with AVX-512; 16 + 8 + 4 vectors and a tail too)
WIDTHS = (1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 47, 64, 100, 129, 192, 256, 449)
DEPTHS = (1, 3, 16, 65, 300)  # inputs
ROWS = (0, 1, 2, 5, 6, 7, 12, 13, 64)  # samples: full tiles of 6 and each remainder


def _guarded(n: int, m: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A C-contiguous (n, m) output inside a buffer whose tail holds a sentinel."""
    buf = np.full(n * m + 64, 7.5, dtype=dtype)
    return buf[: n * m].reshape(n, m), buf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["transposed", "C", "F"])
def test_integer_products_are_exact_for_every_tile_and_tail(dtype: type, layout: str) -> None:
    rng = np.random.default_rng(0)
    for m in WIDTHS:
        for k in DEPTHS:
            w = rng.integers(-8, 9, size=(m, k)).astype(dtype)
            stored = {
                "transposed": gemm.transposed(w),
                "C": np.ascontiguousarray(w),
                "F": np.asfortranarray(w),
            }[layout]
            np.testing.assert_array_equal(stored, w)
            for n in ROWS:
                x = rng.integers(-8, 9, size=(n, k)).astype(dtype)
                y, buf = _guarded(n, m, dtype)
                _matmul(x, stored, y)
                expected = x.astype(np.float64) @ w.T.astype(np.float64)
                np.testing.assert_array_equal(y, expected, err_msg=f"n={n} k={k} m={m}")
                assert (buf[n * m :] == 7.5).all(), "wrote past the output"
            np.testing.assert_array_equal(stored, w)  # the weights are only read


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_real_values_within_rounding_of_float64(dtype: type) -> None:
    rng = np.random.default_rng(1)
    eps = np.finfo(dtype).eps
    for m, k, n in [(256, 784, 64), (128, 256, 7), (10, 128, 1), (33, 1000, 13)]:
        w = rng.standard_normal((m, k)).astype(dtype)
        x = rng.standard_normal((n, k)).astype(dtype)
        y = np.empty((n, m), dtype)
        _matmul(x, gemm.transposed(w), y)
        exact = x.astype(np.float64) @ w.T.astype(np.float64)
        # Sequential summation: |error| <= k eps sum |x w| (Higham); the sums here are far
        # inside that, and a single wrong term (of size ~1) would be far outside it.
        bound = k * eps * (np.abs(x.astype(np.float64)) @ np.abs(w.T.astype(np.float64)))
        assert (np.abs(y - exact) <= bound).all()
        assert np.abs(y - exact).max() < 1e-3 if dtype == np.float32 else 1e-10


def test_nan_and_inf_propagate_as_in_ieee_arithmetic() -> None:
    w = np.ones((20, 5), np.float32)
    x = np.zeros((3, 5), np.float32)
    x[0, 2] = np.nan
    x[1, 4] = np.inf
    y = np.empty((3, 20), np.float32)
    _matmul(x, gemm.transposed(w), y)
    assert np.isnan(y[0]).all() and np.isposinf(y[1]).all() and (y[2] == 0).all()


def test_no_inputs_gives_zeros() -> None:
    y = np.full((4, 9), np.nan, np.float32)
    _matmul(np.zeros((4, 0), np.float32), gemm.transposed(np.zeros((9, 0), np.float32)), y)
    assert (y == 0).all()


def test_transposed_storage_is_aligned_and_padded() -> None:
    for m in (1, 10, 16, 256, 300):
        w = np.arange(m * 7, dtype=np.float32).reshape(m, 7)
        t = gemm.transposed(w)
        assert t.shape == w.shape and t.strides[0] == 4 and t.ctypes.data % 64 == 0
        assert t.strides[1] // 4 >= m and t.strides[1] % 64 == 0
        assert t.strides[1] // 64 % 2 == 1  # an odd number of cache lines: never 2^k bytes
        np.testing.assert_array_equal(t, w)


def _loops(asm: str) -> list[tuple[int, int]]:
    """For each loop of `asm`, its multiply-adds and broadcasts."""
    return [
        (sum("vfmadd" in b for b in body), sum("vbroadcasts" in b for b in body))
        for body in asm_loops(asm)
    ]


@pytest.mark.skipif("avx2" not in gemm.cpu_features(), reason="the tiles' vectors need AVX2")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_row_tiles_stream_the_weights_without_unrolling(dtype: type) -> None:
    """A single sample's tiles (16, 8 and 4 vectors of outputs) multiply-add each row of W^T
    once per pass, one input a pass: LLVM's unrolling (2 or 4 inputs a pass) made them a
    third slower on Zen 5, and `counted_loop(unroll=False)` forbids it. In the compiled
    product, each is a loop of one broadcast and 16, 8 or 4 multiply-adds, never a multiple;
    the tiles of several rows keep LLVM's unrolling."""
    product = numba.cfunc(gemm.PRODUCT_TYPE)(gemm.product_function(dtype))
    loops = _loops(product._library.get_asm_str())
    assert {(16, 1), (8, 1), (4, 1)} <= set(loops)
    for width in (16, 8, 4):
        assert not [(f, b) for f, b in loops if b > 1 and f == width * b]
    assert any(b > 1 and f == gemm.VECTORS * b for f, b in loops)  # several rows, unrolled


def test_erf_f32_against_the_c_library_on_a_dense_grid() -> None:
    xs = np.linspace(-7, 7, 400_001, dtype=np.float32)
    xs = np.concatenate([xs, np.float32(1e-30) * np.arange(-50, 50, dtype=np.float32)])
    ys = np.empty_like(xs)
    _erf_all(xs, ys)
    exact = np.array([math.erf(float(v)) for v in xs])
    assert np.abs(ys - exact).max() < 4e-7
    assert (np.sign(ys) == np.sign(exact)).all()
    assert (np.abs(ys) <= 1).all()


def test_erf_f32_special_values() -> None:
    xs = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30], np.float32)
    ys = np.empty_like(xs)
    _erf_all(xs, ys)
    assert np.isnan(ys[0])
    np.testing.assert_array_equal(ys[1:], [1, -1, 0, 0, 1, -1])
    assert math.copysign(1, ys[4]) == -1  # erf(-0) is -0


# ---------------------------------------------------------------- the weights of a compiled model

MODEL = """
model Net {
    fc1 = Linear(37, 70) { init = uniform(seed=1) }
    ReLU()
    fc2 = Linear(70, 1) { init = uniform(seed=2) }
}
"""


def _reference(net, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """NumPy float64 forward of MODEL with the module's current weights."""
    sd = {k: v.astype(np.float64) for k, v in net.state_dict().items()}
    h = np.maximum(x.astype(np.float64) @ sd["fc1.weight"].T + sd["fc1.bias"], 0)
    return h @ sd["fc2.weight"].T + sd["fc2.bias"]


def test_writes_into_a_weight_take_effect_at_once(compile_lyr) -> None:  # type: ignore[no-untyped-def]
    """As in torch (`with torch.no_grad(): fc.weight[3, 5] = 100`): nothing caches the weights."""
    net = compile_lyr(MODEL).Net()
    x = np.random.default_rng(3).standard_normal((9, 37)).astype(np.float32)
    for n in (1, 9):
        np.testing.assert_allclose(net(x[:n]), _reference(net, x[:n]), rtol=1e-5, atol=1e-5)
    before = net(x)
    net.fc1.weight[3, 5] = 100
    net.fc2.weight[0, 3] += 1
    view = net.fc1.weight.reshape(-1) if net.fc1.weight.flags.c_contiguous else net.fc1.weight.T
    view[7] *= -1  # through a view of the same memory as well
    after = net(x)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _reference(net, x), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(net(x[0]), _reference(net, x[:1])[0], rtol=1e-5, atol=1e-4)


def test_weights_assigned_in_any_layout_are_stored_as_the_kernel_reads_them(compile_lyr) -> None:  # type: ignore[no-untyped-def]
    net = compile_lyr(MODEL).Net()
    x = np.random.default_rng(4).standard_normal((5, 37)).astype(np.float32)
    w = np.random.default_rng(5).standard_normal((70, 37))
    for given in (w, np.asfortranarray(w), w[::-1][::-1], w.astype(np.float32)):
        net.fc1.weight = given
        stored = net.fc1.weight
        assert stored.dtype == np.float32 and stored.shape == (70, 37)
        assert gemm.reads_in_place(stored)
        np.testing.assert_array_equal(stored, w.astype(np.float32))
        np.testing.assert_allclose(net(x), _reference(net, x), rtol=1e-5, atol=1e-4)
    net.load_state_dict({k: np.ascontiguousarray(v) for k, v in net.state_dict().items()})
    assert gemm.reads_in_place(net.fc1.weight)
    f = net.njit()
    np.testing.assert_allclose(f(x), _reference(net, x), rtol=1e-5, atol=1e-4)
