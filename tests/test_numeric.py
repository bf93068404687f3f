"""Numeric correctness of generated modules against outside references.

Random models (seeded NumPy RNG) are written as .lyr text: chains of Linear layers (with and
without bias, 1..40 features) and activations, nested models, both dtypes, weights inline or
loaded from an .npz file. Each compiled model's output is compared with

- a NumPy float64 forward pass over the same weights (rounded to the model's dtype), and
- the torch==2.13.0 `nn.Sequential` of the same structure, in the model's dtype, with its
  state_dict loaded from the generated model's `state_dict()` (so the keys must match torch's),

for 1-D, batched, 3-D and empty inputs. The fused path (`net(x)` without hooks) and the
per-module paths (`net.forward(x)`, or every module behind a global no-op hook) must give
identical arrays, and `net.njit()` must match the reference too.

Each model costs numba compile time, so there are few of them (one module per case, built once
per test module) and many checks per model.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compile_text

import layerc

# torch.testing.assert_close's defaults, per dtype: (rtol, atol)
TOLERANCES = {"float32": (1.3e-6, 1e-5), "float64": (1e-7, 1e-7)}
TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
ELEMENTWISE = ("ReLU", "Sigmoid", "Tanh", "Identity", "LeakyReLU")

# Input shapes, by the size of the model's input: one sample, a batch, a 3-D batch, empty ones.
SHAPES = {
    "1d": lambda n: (n,),
    "batch": lambda n: (7, n),
    "3d": lambda n: (2, 3, n),
    "empty": lambda n: (0, n),
    "empty3d": lambda n: (2, 0, n),
}


# --------------------------------------------------------------------------- model descriptions


@dataclass
class Lin:
    """A Linear layer: float64 values as drawn; `source` says how the .lyr text gives them."""

    name: str | None
    weight: np.ndarray  # (out, in)
    bias: np.ndarray | None
    source: str  # "inline", "load" (float64 in the .npz) or "load32" (float32 in the .npz)
    keyword_args: bool


@dataclass
class Act:
    name: str | None
    kind: str
    slope: float | None = None  # LeakyReLU's negative_slope, None for its default


@dataclass
class Sub:
    name: str | None
    model: ModelSpec


@dataclass
class ModelSpec:
    name: str
    dtype: str
    layers: list[Lin | Act | Sub] = field(default_factory=list)

    def keys(self) -> list[str]:
        """Each layer's key: its name, or its position as torch.nn.Sequential numbers it."""
        return [layer.name or str(i) for i, layer in enumerate(self.layers)]

    @property
    def in_features(self) -> int:
        for layer in self.layers:
            if isinstance(layer, Lin):
                return layer.weight.shape[1]
            if isinstance(layer, Sub):
                return layer.model.in_features
        raise AssertionError("a model needs a Linear")

    @property
    def out_features(self) -> int:
        for layer in reversed(self.layers):
            if isinstance(layer, Lin):
                return layer.weight.shape[0]
            if isinstance(layer, Sub):
                return layer.model.out_features
        raise AssertionError("a model needs a Linear")


def random_linear(rng: np.random.Generator, name: str | None, n_in: int, n_out: int) -> Lin:
    """Weights as torch initialises them, scaled so that some activations saturate."""
    bound = rng.uniform(0.5, 2.0) / np.sqrt(n_in)
    weight = rng.uniform(-bound, bound, size=(n_out, n_in))
    bias = rng.uniform(-bound, bound, size=n_out) if rng.random() < 0.7 else None
    source = str(rng.choice(["inline", "load", "load32"]))
    return Lin(name, weight, bias, source, bool(rng.random() < 0.5))


def random_activation(rng: np.random.Generator, name: str | None) -> Act:
    kind = str(rng.choice(ELEMENTWISE))
    slope = None
    if kind == "LeakyReLU" and rng.random() < 0.8:
        slope = float(rng.uniform(0.0, 0.5))
    return Act(name, kind, slope)


def random_model(seed: int, dtype: str) -> ModelSpec:
    """A chain of 1..4 Linear layers (1..40 features), each maybe followed by activations,
    sometimes an activation before the first Linear, sometimes Softmax last. About half the
    layers are named; the others take their position as name."""
    rng = np.random.default_rng(seed)
    spec = ModelSpec(f"Random{seed}", dtype)

    def name(prefix: str) -> str | None:
        return f"{prefix}{len(spec.layers)}" if rng.random() < 0.5 else None

    width = int(rng.integers(1, 41))
    if rng.random() < 0.2:
        spec.layers.append(random_activation(rng, name("act")))
    for _ in range(int(rng.integers(1, 5))):
        out = int(rng.integers(1, 41))
        spec.layers.append(random_linear(rng, name("fc"), width, out))
        width = out
        for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
            spec.layers.append(random_activation(rng, name("act")))
    if rng.random() < 0.4:
        spec.layers.append(Act(name("softmax"), "Softmax"))
    return spec


def nested_models(dtype: str) -> list[ModelSpec]:
    """Enc (a model of its own) used twice inside Mid, and Mid inside Net, unnamed once."""
    rng = np.random.default_rng(1000 if dtype == "float32" else 1001)
    enc = ModelSpec(
        f"Enc_{dtype}",
        dtype,
        [
            random_linear(rng, "fc", 6, 9),
            Act("act", "Tanh"),
        ],
    )
    mid = ModelSpec(
        f"Mid_{dtype}",
        dtype,
        [
            Sub("first", enc),
            random_linear(rng, "back", 9, 6),
            Act(None, "LeakyReLU", 0.125),
            Sub("second", enc),
        ],
    )
    net = ModelSpec(
        f"Net_{dtype}",
        dtype,
        [
            Sub(None, mid),
            random_linear(rng, "head", 9, 4),
            Act(None, "ReLU"),
            random_linear(rng, None, 4, 3),
            Act("probs", "Softmax"),
        ],
    )
    return [enc, mid, net]


def wide_model(dtype: str) -> ModelSpec:
    """Layers big enough for the kernels' BLAS paths (gemv for one sample, gemm for batches)
    and for the weights to go to a weights file instead of the generated source."""
    rng = np.random.default_rng(2000)
    return ModelSpec(
        "Wide",
        dtype,
        [
            random_linear(rng, "fc1", 200, 100),
            Act(None, "ReLU"),
            random_linear(rng, "fc2", 100, 64),
            Act(None, "Tanh"),
            random_linear(rng, "fc3", 64, 5),
        ],
    )


# --------------------------------------------------------------------------- .lyr text


def _number(value: float) -> str:
    return repr(float(value))


def _literal(array: np.ndarray) -> str:
    if array.ndim == 1:
        return "[" + ", ".join(map(_number, array)) + "]"
    rows = ",\n            ".join(_literal(row) for row in array)
    return "[\n            " + rows + "\n        ]"


def render(models: list[ModelSpec]) -> tuple[str, dict[str, np.ndarray]]:
    """The .lyr text of `models` and the arrays it loads from "w.npz", by key."""
    lines: list[str] = [f"# {len(models)} model(s) written by tests/test_numeric.py"]
    arrays: dict[str, np.ndarray] = {}
    for model in models:
        lines.append(f"model {model.name}(dtype={model.dtype}) {{")
        for key, layer in zip(model.keys(), model.layers, strict=True):
            lhs = f"    {layer.name} = " if layer.name else "    "
            if isinstance(layer, Lin):
                lines.extend(_render_linear(f"{model.name}.{key}", lhs, layer, arrays))
            elif isinstance(layer, Sub):
                lines.append(f"{lhs}{layer.model.name}()")
            elif layer.kind == "LeakyReLU" and layer.slope is not None:
                lines.append(f"{lhs}LeakyReLU(negative_slope={_number(layer.slope)});")
            elif layer.kind == "Softmax":
                lines.append(f"{lhs}Softmax(dim=-1)")
            else:
                lines.append(f"{lhs}{layer.kind}(),")
        lines.append("}")
        lines.append("")
    return "\n".join(lines), arrays


def _render_linear(key: str, lhs: str, layer: Lin, arrays: dict[str, np.ndarray]) -> list[str]:
    n_out, n_in = layer.weight.shape
    has_bias = layer.bias is not None
    if layer.keyword_args:
        args = f"in_features={n_in}, out_features={n_out}"
        args += "" if has_bias else ", bias=false"
    else:
        args = f"{n_in}, {n_out}" + ("" if has_bias else ", false")
    entries = {"weight": layer.weight, "bias": layer.bias}
    body = []
    for entry, value in entries.items():
        if value is None:
            continue
        if layer.source == "inline":
            body.append(f"        {entry} = {_literal(value)}")
        else:
            stored = value.astype(np.float32) if layer.source == "load32" else value
            arrays[f"{key}.{entry}"] = stored
            body.append(f'        {entry} = load("w.npz", "{key}.{entry}")')
    return [f"{lhs}Linear({args}) {{", *body, "    }"]


# --------------------------------------------------------------------------- references


def rounded(array: np.ndarray, dtype: str) -> np.ndarray:
    """What the model holds: `array` rounded to the model's dtype (through float32 when the
    .npz stored it as float32), as float64."""
    return array.astype(dtype).astype(np.float64)


def stored(layer: Lin, array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if layer.source == "load32" else array


def reference_forward(model: ModelSpec, x: np.ndarray) -> np.ndarray:
    """The model's output computed by NumPy in float64 from dtype-rounded weights."""
    h = x.astype(np.float64)
    for layer in model.layers:
        if isinstance(layer, Lin):
            h = h @ rounded(stored(layer, layer.weight), model.dtype).T
            if layer.bias is not None:
                h = h + rounded(stored(layer, layer.bias), model.dtype)
        elif isinstance(layer, Sub):
            h = reference_forward(layer.model, h)
        else:
            h = _reference_activation(layer, h)
    return h


def _reference_activation(layer: Act, h: np.ndarray) -> np.ndarray:
    if layer.kind == "ReLU":
        return np.maximum(h, 0.0)
    if layer.kind == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-h))
    if layer.kind == "Tanh":
        return np.tanh(h)
    if layer.kind == "Identity":
        return h
    if layer.kind == "LeakyReLU":
        slope = 0.01 if layer.slope is None else layer.slope
        return np.where(h > 0, h, h * slope)
    if layer.kind == "Softmax":
        if h.size == 0:
            return h
        e = np.exp(h - h.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise AssertionError(layer.kind)


def torch_model(model: ModelSpec) -> torch.nn.Sequential:
    """The torch.nn.Sequential of the same structure (untrained weights; load a state_dict)."""
    children: OrderedDict[str, torch.nn.Module] = OrderedDict()
    for key, layer in zip(model.keys(), model.layers, strict=True):
        if isinstance(layer, Lin):
            n_out, n_in = layer.weight.shape
            children[key] = torch.nn.Linear(n_in, n_out, bias=layer.bias is not None)
        elif isinstance(layer, Sub):
            children[key] = torch_model(layer.model)
        elif layer.kind == "LeakyReLU":
            children[key] = torch.nn.LeakyReLU(0.01 if layer.slope is None else layer.slope)
        elif layer.kind == "Softmax":
            children[key] = torch.nn.Softmax(dim=-1)
        else:
            children[key] = getattr(torch.nn, layer.kind)()
    return torch.nn.Sequential(children).to(TORCH_DTYPES[model.dtype])


def expected_state(model: ModelSpec, prefix: str = "") -> OrderedDict[str, np.ndarray]:
    """PyTorch's state_dict keys, in torch's order, with the dtype-rounded values."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, layer in zip(model.keys(), model.layers, strict=True):
        if isinstance(layer, Lin):
            out[f"{prefix}{key}.weight"] = rounded(stored(layer, layer.weight), model.dtype)
            if layer.bias is not None:
                out[f"{prefix}{key}.bias"] = rounded(stored(layer, layer.bias), model.dtype)
        elif isinstance(layer, Sub):
            out.update(expected_state(layer.model, f"{prefix}{key}."))
    return out


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One model under test: its description, the generated class and an instance."""

    spec: ModelSpec
    cls: type
    net: object

    def input(self, shape_id: str) -> np.ndarray:
        seed = sum(map(ord, self.spec.name + shape_id))
        rng = np.random.default_rng(seed)
        return rng.standard_normal(SHAPES[shape_id](self.spec.in_features)).astype(self.spec.dtype)


# (case id, the models of its .lyr file, the model under test)
# Seeds picked so that together they draw every feature (see the first test); dtypes alternate.
SEEDS = [0, 3, 7, 17, 21, 27, 29, 31]
RANDOM = [
    (f"random{seed}-{dtype}", seed, dtype)
    for seed, dtype in zip(SEEDS, ["float32", "float64"] * 4, strict=True)
]
CASE_IDS = [case_id for case_id, _, _ in RANDOM] + [
    "nested-float32",
    "nested-float64",
    "nested-float32-enc",
    "blas-float32",
]


def _models_for(case_id: str) -> tuple[list[ModelSpec], str]:
    for rid, seed, dtype in RANDOM:
        if rid == case_id:
            spec = random_model(seed, dtype)
            return [spec], spec.name
    kind, dtype = case_id.split("-")[:2]
    if kind not in ("nested", "blas"):
        raise KeyError(case_id)
    if kind == "blas":
        return [wide_model(dtype)], "Wide"
    models = nested_models(dtype)
    return models, (models[0] if case_id.endswith("-enc") else models[-1]).name


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory):
    """`build(case_id)` -> the compiled `Case`, compiled once per .lyr file per test module."""
    modules: dict[str, object] = {}

    def _build(case_id: str) -> Case:
        models, target = _models_for(case_id)
        file_key = case_id.removesuffix("-enc")
        if file_key not in modules:
            folder: Path = tmp_path_factory.mktemp(file_key)
            text, arrays = render(models)
            if arrays:
                np.savez(folder / "w.npz", **arrays)
            modules[file_key] = compile_text(text, folder, file_key.replace("-", "_"))
        spec = next(m for m in models if m.name == target)
        cls = getattr(modules[file_key], target)
        return Case(spec, cls, cls())

    return _build


def assert_matches(actual: np.ndarray, expected: np.ndarray, dtype: str) -> None:
    """Shape and dtype exact, values within torch.testing.assert_close's tolerances."""
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == np.dtype(dtype)
    assert actual.shape == expected.shape
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol)


def test_random_models_cover_the_language():
    """The seeds above draw every activation, both bias settings, every weight source, both
    argument styles, unnamed layers, Softmax last and an activation before the first Linear,
    and sizes from 1 to 40 (so a change to the generator cannot silently narrow the tests)."""
    specs = [random_model(seed, dtype) for _, seed, dtype in RANDOM]
    layers = [layer for spec in specs for layer in spec.layers]
    linears = [layer for layer in layers if isinstance(layer, Lin)]
    kinds = {layer.kind for layer in layers if isinstance(layer, Act)}
    assert kinds == {*ELEMENTWISE, "Softmax"}
    assert {lin.bias is None for lin in linears} == {True, False}
    assert {lin.source for lin in linears} == {"inline", "load", "load32"}
    assert {lin.keyword_args for lin in linears} == {True, False}
    assert any(layer.name is None for layer in layers)
    assert any(isinstance(spec.layers[0], Act) for spec in specs)
    last = [spec.layers[-1] for spec in specs]
    assert any(isinstance(layer, Act) and layer.kind == "Softmax" for layer in last)
    sizes = {size for lin in linears for size in lin.weight.shape}
    assert 1 in sizes and max(sizes) >= 38
    leaky = [a for a in layers if isinstance(a, Act) and a.kind == "LeakyReLU"]
    assert {a.slope is None for a in leaky} == {True, False}


@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_matches_numpy_float64(build, case_id: str, shape_id: str):
    case = build(case_id)
    x = case.input(shape_id)
    y = case.net(x)
    expected = reference_forward(case.spec, x)
    assert expected.shape == SHAPES[shape_id](case.spec.out_features)
    assert_matches(y, expected, case.spec.dtype)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_matches_torch(build, case_id: str):
    case = build(case_id)
    reference = torch_model(case.spec)
    state = case.net.state_dict()
    assert list(state) == list(reference.state_dict())
    reference.load_state_dict({key: torch.from_numpy(np.array(v)) for key, v in state.items()})
    rtol, atol = TOLERANCES[case.spec.dtype]
    for shape_id in SHAPES:
        x = case.input(shape_id)
        with torch.no_grad():
            expected = reference(torch.from_numpy(x))
        y = case.net(x)
        assert isinstance(y, np.ndarray) and y.dtype == np.dtype(case.spec.dtype)
        torch.testing.assert_close(torch.from_numpy(y), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_weights_are_the_source_values(build, case_id: str):
    """Every parameter holds the value the source gave, rounded once to the model's dtype,
    under torch's key, in torch's order."""
    case = build(case_id)
    state = case.net.state_dict()
    expected = expected_state(case.spec)
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == np.dtype(case.spec.dtype), key
        np.testing.assert_array_equal(state[key].astype(np.float64), value, err_msg=key)


def assert_same(actual: np.ndarray, expected: np.ndarray, spec: ModelSpec, what: str) -> None:
    """Shape and dtype exact, values within torch.testing.assert_close's tolerances. Not bit for
    bit: each path is a different kernel, and under `reassoc` LLVM may vectorise one sum in
    another order than the other (seen on AMD EPYC, not on Intel Rocket Lake), as may a BLAS
    library for another memory layout or alignment of the same numbers."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    rtol, atol = TOLERANCES[spec.dtype]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_fused_and_per_module_paths_agree(build, case_id: str):
    """`net(x)` runs the fused kernel; `net.forward(x)` calls the children; under a global
    no-op hook every module runs its own kernel. All three agree (see `assert_same`)."""
    case = build(case_id)
    # Every path reshapes to (n, features) before its kernels, so 1-D inputs (whose path differs
    # only in that reshape) are left to the reference tests; each shape costs compile time.
    for shape_id in ("batch", "3d", "empty3d"):
        x = case.input(shape_id)
        fused = case.net(x)
        children = case.net.forward(x)
        handle = layerc.register_module_forward_hook(lambda module, args, output: None)
        try:
            per_module = case.net(x)
        finally:
            handle.remove()
        again = case.net(x)  # the fast path comes back once the hook is gone
        for other in (children, per_module, again):
            assert_same(other, fused, case.spec, shape_id)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_input_layout_and_dtype_do_not_matter(build, case_id: str):
    """A non-contiguous view, a Fortran-ordered copy and a float64 input give the outputs of
    the same values as a C-contiguous array of the model's dtype (see `assert_same`)."""
    case = build(case_id)
    x = case.input("batch")
    expected = case.net(x)
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), x.dtype)
    wide[:, ::2] = x
    assert_same(case.net(wide[:, ::2]), expected, case.spec, "strided")
    assert_same(case.net(np.asfortranarray(x)), expected, case.spec, "Fortran order")
    assert_same(case.net(x.astype(np.float64)), expected, case.spec, "float64 input")
    assert_same(case.net(x[::-1])[::-1], expected, case.spec, "rows reversed")


@pytest.mark.parametrize("case_id", ["random0-float32", "random3-float64", "nested-float32"])
def test_njit_matches_reference(build, case_id: str):
    case = build(case_id)
    f = case.net.njit()
    for shape_id in ("1d", "batch", "empty"):
        x = case.input(shape_id)
        assert_matches(f(x), reference_forward(case.spec, x), case.spec.dtype)


def test_fresh_instances_and_classes_are_independent(build):
    """Each instance owns its weights: changing one instance's weights changes its output (now
    matching the reference with the new weights) and no other instance's."""
    case = build("random7-float32")
    first, second = case.cls(), case.cls()
    x = case.input("batch")
    before = second(x)
    state = first.state_dict()
    key = next(iter(state))
    state[key][...] = state[key] * 0.5
    assert not np.array_equal(first(x), before)
    np.testing.assert_array_equal(second(x), before)
    halved = _scaled_first_weight(case.spec, 0.5)
    assert_matches(first(x), reference_forward(halved, x), case.spec.dtype)


def _scaled_first_weight(spec: ModelSpec, factor: float) -> ModelSpec:
    """`spec` with its first Linear's weight scaled (after rounding to the dtype)."""
    layers = list(spec.layers)
    for i, layer in enumerate(layers):
        if isinstance(layer, Lin):
            weight = rounded(stored(layer, layer.weight), spec.dtype) * factor
            layers[i] = Lin(layer.name, weight, layer.bias, layer.source, layer.keyword_args)
            break
    return ModelSpec(spec.name, spec.dtype, layers)
