"""The checker (layerc/check.py): valid programs become IR that `ir.verify` accepts, and every
compile error of the spec (and what a careful user expects besides) is reported with its
message, line and column."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import LESSON
from hypothesis import given, settings
from hypothesis import strategies as st

from layerc import ir
from layerc import syntax as S
from layerc.check import check
from layerc.errors import LayercError, Loc

FILE = "m.lyr"
INIT = "{ init = uniform(seed=0) }"
M23 = f"model M {{ Linear(2, 3) {INIT} }}\n"  # a model for test blocks to test
NO_WEIGHTS = "has no weights: give 'weight = ...' or 'init = uniform(seed=0)' in a { ... } block"


def checked(text: str, base: Path = Path(".")) -> ir.Program:
    """Parse and check `text`; the IR must pass the verifier."""
    program = check(S.parse(textwrap.dedent(text), FILE), base)
    ir.verify(program)
    return program


def error(text: str, base: Path = Path(".")) -> LayercError:
    with pytest.raises(LayercError) as info:
        check(S.parse(textwrap.dedent(text), FILE), base)
    return info.value


def model(program: ir.Program, name: str) -> ir.Model:
    (found,) = [m for m in program.models if m.name == name]
    return found


# --------------------------------------------------------------------------- valid programs


def test_lesson_checks_into_the_expected_ir() -> None:
    program = checked(LESSON)
    assert program.source == FILE
    (seed,) = program.models
    assert (seed.name, seed.dtype, seed.in_features, seed.out_features) == (
        "Seed",
        np.dtype(np.float32),
        4,
        3,
    )
    (fc,) = seed.layers
    assert isinstance(fc, ir.Layer) and fc.kind == "Linear" and fc.name == "fc" and fc.bias is None
    assert fc.args == (("in_features", 4), ("out_features", 3), ("bias", False))
    assert (fc.in_shape, fc.out_shape) == ((4,), (3,))
    assert fc.weight.dtype == np.float32 and fc.weight.flags.c_contiguous
    np.testing.assert_array_equal(fc.weight, [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]])
    (test,) = program.tests
    assert test.model is seed and test.loc == Loc(FILE, 10, 1)
    assert test.input.dtype == np.float32
    np.testing.assert_array_equal(test.input, [1, 2, 3, 4])
    np.testing.assert_array_equal(test.expect, [30, 40, 50])
    assert (test.atol, test.rtol) == (1e-5, 1.3e-6)  # torch.testing.assert_close, float32


def test_float64_model_and_default_tolerances() -> None:
    program = checked(
        f"""
        model D(dtype=float64) {{ Linear(2, 2) {INIT} }}
        test D {{ input = [[1, 2], [3, 4]]; expect = [[0, 0], [0, 0]]; atol = 10 }}
        test D {{ input = [1, 2]; expect = [0, 0] }}
        """
    )
    (d,) = program.models
    assert d.dtype == np.float64 and d.layers[0].weight.dtype == np.float64
    first, second = program.tests
    assert (first.atol, first.rtol) == (10, 1e-7)
    assert (second.atol, second.rtol) == (1e-7, 1e-7)
    assert first.input.dtype == np.float64 and first.input.shape == (2, 2)


@pytest.mark.parametrize(
    "args",
    [
        "2, 3",
        "2, 3, true",
        "in_features=2, out_features=3",
        "2, out_features=3, bias=true",
        "bias=true, out_features=3, in_features=2",
    ],
)
def test_linear_positional_and_keyword_arguments_mean_the_same(args: str) -> None:
    program = checked(
        f"model M {{ Linear({args}) {{ weight = [[1, 2], [3, 4], [5, 6]]; bias = [7, 8, 9] }} }}"
    )
    (lin,) = program.models[0].layers
    assert (lin.in_features, lin.out_features) == (2, 3)
    np.testing.assert_array_equal(lin.weight, [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(lin.bias, [7, 8, 9])


def test_every_activation_and_unnamed_layers_named_by_position() -> None:
    program = checked(
        f"""
        model M {{
            Linear(3, 3) {INIT}
            ReLU
            s = Sigmoid()
            Tanh
            Identity()
            LeakyReLU
            LeakyReLU(0.2)
            LeakyReLU(negative_slope=-3)
            Softmax
            Softmax(-1)
            Softmax(dim=-1)
        }}
        """
    )
    layers = program.models[0].layers
    assert [layer.name for layer in layers] == [
        "0",
        "1",
        "s",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
        "10",
    ]
    assert all(isinstance(layer, ir.Layer) for layer in layers)
    assert [layer.kind for layer in layers[1:]] == [
        "ReLU",
        "Sigmoid",
        "Tanh",
        "Identity",
        "LeakyReLU",
        "LeakyReLU",
        "LeakyReLU",
        "Softmax",
        "Softmax",
        "Softmax",
    ]
    assert [layer.arg("negative_slope") for layer in layers[5:8]] == [0.01, 0.2, -3]
    assert [layer.arg("dim") for layer in layers[8:]] == [-1, -1, -1]


def test_nested_models_keep_their_own_weights() -> None:
    program = checked(
        """
        model Enc { fc = Linear(2, 3, bias=false) { weight = [[1, 0], [0, 1], [1, 1]] }; Tanh }
        model Net {
            enc = Enc
            head = Linear(3, 1) { weight = [[1, 2, 3]]; bias = [0.5] }
            Enc2 = Identity
        }
        model Deep {
            a = Enc; b = Linear(3, 2) { init = uniform(seed=3) }
            Linear(2, 2) { init = uniform(seed=4) }
        }
        model Top { inner = Net }
        """
    )
    enc, net, deep, top = program.models
    sub = net.layers[0]
    assert isinstance(sub, ir.Submodel) and sub.model is enc and sub.name == "enc"
    assert (net.in_features, net.out_features) == (2, 1)
    assert (deep.in_features, deep.out_features) == (2, 2)
    assert (top.in_features, top.out_features) == (2, 1)
    assert [path for path, _ in ir.linears(top)] == ["inner.enc.fc", "inner.head"]


def test_load_reads_weights_relative_to_the_source(tmp_path: Path) -> None:
    weight = np.arange(6, dtype=np.float32).reshape(3, 2) / 7
    np.save(tmp_path / "w.npy", weight)
    np.savez(tmp_path / "b.npz", **{"fc.bias": np.array([1.5, -2, 0.25], np.float32)})
    program = checked(
        'model M { fc = Linear(2, 3) { weight = load("w.npy"); bias = load(path="b.npz", '
        'key="fc.bias") } }',
        tmp_path,
    )
    (fc,) = program.models[0].layers
    np.testing.assert_array_equal(fc.weight, weight)
    np.testing.assert_array_equal(fc.bias, [1.5, -2, 0.25])


def test_init_draws_weights_and_bias_in_the_torch_range() -> None:
    program = checked(f"model M {{ Linear(16, 8) {INIT}; b = Linear(8, 4, bias=false) {INIT} }}")
    first, second = program.models[0].layers
    assert first.weight.shape == (8, 16) and first.bias.shape == (8,)
    bound = 1 / np.sqrt(16)
    assert np.abs(first.weight).max() <= bound and np.abs(first.bias).max() <= bound
    assert second.bias is None
    # the same seed draws the same values (the file stays reproducible), another seed others
    again = checked(f"model M {{ Linear(16, 8) {INIT} }}").models[0].layers[0]
    np.testing.assert_array_equal(again.weight, first.weight)
    other = checked("model M { Linear(16, 8) { init = uniform(seed=1) } }").models[0].layers[0]
    assert not np.array_equal(other.weight, first.weight)


def test_bias_values_may_replace_the_drawn_bias() -> None:
    (lin,) = (
        checked("model M { Linear(2, 2) { init = uniform(seed=0); bias = [1, 2] } }")
        .models[0]
        .layers
    )
    np.testing.assert_array_equal(lin.bias, [1, 2])


def test_test_blocks_may_hold_nan_and_inf() -> None:
    (test,) = checked(
        f"model M {{ Linear(2, 1) {INIT} }}\ntest M {{ input = [nan, inf]; expect = [nan] }}"
    ).tests
    assert np.isnan(test.input[0]) and np.isinf(test.input[1]) and np.isnan(test.expect[0])


def test_allow_nonfinite_accepts_nan_and_inf_weights(compile_lyr) -> None:
    text = """
        model M(allow_nonfinite=true) {
            fc = Linear(2, 3) { weight = [[1, nan], [inf, 0], [1, 2]]; bias = [0, -inf, 0.5] }
        }
    """
    program = checked(text)
    (fc,) = program.models[0].layers
    assert np.isnan(fc.weight[0, 1]) and fc.weight[1, 0] == np.inf and fc.bias[1] == -np.inf
    # ... and compiles; the outputs follow IEEE arithmetic as NumPy float64 computes it
    net = compile_lyr(text).M()
    x = np.array([2, 3], np.float32)
    with np.errstate(invalid="ignore"):
        reference = fc.weight.astype(np.float64) @ x.astype(np.float64) + fc.bias
    np.testing.assert_array_equal(net(x), reference.astype(np.float32))  # [nan, inf-inf=nan, 8.5]


def test_float64_model_holds_values_float32_cannot() -> None:
    (fc,) = (
        checked("model M(dtype=float64) { Linear(1, 1) { weight = [[1e39]]; bias = [-1e300] } }")
        .models[0]
        .layers
    )
    assert fc.weight[0, 0] == 1e39 and fc.bias[0] == -1e300


def test_strings_and_names_are_accepted_for_dtype() -> None:
    assert (
        checked(f'model M(dtype="float64") {{ Linear(1, 1) {INIT} }}').models[0].dtype == np.float64
    )


# --------------------------------------------------------------------------- errors

# fmt: off
# (id, source, line, col, message), kept as a table
ERRORS = [
    # --- layer kinds and arguments
    ("unknown-kind", f"model M {{\n  fc = Lineer(4, 3) {INIT}\n}}", 2, 8,
     "unknown layer kind 'Lineer'; did you mean 'Linear'? (layer kinds: Linear, ReLU, Sigmoid, "
     "Tanh, Identity, LeakyReLU, Softmax, "
     "Dropout, AlphaDropout, Flatten, BatchNorm1d, LayerNorm, PReLU, GELU, ELU, CELU, Softplus, Hardtanh, SiLU, Mish, SELU, ReLU6, Hardsigmoid, Hardswish, LogSigmoid, Softsign, LogSoftmax, Hardshrink, Softshrink, Tanhshrink)"),
    ("unknown-kind-case", f"model M {{\n  Linear(4, 3) {INIT}\n  relu\n}}", 3, 3,
     "unknown layer kind 'relu'; did you mean 'ReLU'? (layer kinds: Linear, ReLU, Sigmoid, Tanh, "
     "Identity, LeakyReLU, Softmax, "
     "Dropout, AlphaDropout, Flatten, BatchNorm1d, LayerNorm, PReLU, GELU, ELU, CELU, Softplus, Hardtanh, SiLU, Mish, SELU, ReLU6, Hardsigmoid, Hardswish, LogSigmoid, Softsign, LogSoftmax, Hardshrink, Softshrink, Tanhshrink)"),
    ("unknown-kind-model", f"model Encoder {{ Linear(4, 4) {INIT} }}\nmodel M {{\n  Encoderr\n}}",
     3, 3, "unknown layer kind 'Encoderr'; did you mean 'Encoder'? (layer kinds: Linear, ReLU, "
     "Sigmoid, Tanh, Identity, LeakyReLU, Softmax, "
     "Dropout, AlphaDropout, Flatten, BatchNorm1d, LayerNorm, PReLU, GELU, ELU, CELU, Softplus, Hardtanh, SiLU, Mish, SELU, ReLU6, Hardsigmoid, Hardswish, LogSigmoid, Softsign, LogSoftmax, Hardshrink, Softshrink, Tanhshrink; models defined above: Encoder)"),
    ("unknown-keyword", f"model M {{\n  Linear(4, 3, bais=false) {INIT}\n}}", 2, 16,
     "Linear has no argument 'bais'; did you mean 'bias'? (arguments: in_features, "
     "out_features, bias)"),
    ("unknown-keyword-relu", f"model M {{\n  Linear(4, 3) {INIT}\n  ReLU(inplace=true)\n}}", 3, 8,
     "ReLU has no argument 'inplace' (arguments: none)"),
    ("too-many-positional", f"model M {{\n  Linear(4, 3, false, 7) {INIT}\n}}", 2, 23,
     "Linear takes 3 positional arguments but 4 were given"),
    ("too-many-positional-one", f"model M {{\n  Linear(4, 3) {INIT}\n  ReLU(1)\n}}", 3, 8,
     "ReLU takes 0 positional arguments but 1 was given"),
    ("too-many-positional-leaky", f"model M {{\n  Linear(4, 3) {INIT}\n  LeakyReLU(1, 2)\n}}",
     3, 16, "LeakyReLU takes 1 positional argument but 2 were given"),
    ("positional-after-keyword", f"model M {{\n  Linear(in_features=4, 3) {INIT}\n}}", 2, 25,
     "positional argument after a keyword argument"),
    ("duplicate-argument", f"model M {{\n  Linear(4, 3, in_features=4) {INIT}\n}}", 2, 16,
     "argument 'in_features' is given twice"),
    ("duplicate-keyword", f"model M {{\n  Linear(4, 3, bias=true, bias=false) {INIT}\n}}", 2,
     27, "argument 'bias' is given twice"),
    ("missing-argument", f"model M {{\n  Linear(4) {INIT}\n}}", 2, 3,
     "Linear needs the argument 'out_features'"),
    ("linear-without-parens", "model M {\n  Linear\n}", 2, 3,
     "Linear needs the argument 'in_features'"),
    ("bias-not-bool", f"model M {{\n  Linear(4, 3, 1) {INIT}\n}}", 2, 16,
     "bias must be true or false"),
    ("bias-python-spelling", f"model M {{\n  Linear(4, 3, bias=False) {INIT}\n}}", 2, 21,
     "bias must be true or false; did you mean 'false'?"),
    ("activation-with-block", f"model M {{\n  Linear(4, 3) {INIT}\n  ReLU {{ }}\n}}", 3, 3,
     "ReLU takes no { ... } block"),
    ("leaky-slope-not-number", f"model M {{\n  Linear(4, 3) {INIT}\n  LeakyReLU(true)\n}}", 3,
     13, "negative_slope must be a finite number"),
    ("leaky-slope-nan", f"model M {{\n  Linear(4, 3) {INIT}\n  LeakyReLU(nan)\n}}", 3, 13,
     "negative_slope must be a finite number"),
    ("softmax-dim", f"model M {{\n  Linear(4, 3) {INIT}\n  Softmax(dim=0)\n}}", 3, 15,
     "Softmax supports dim=-1 only (the feature axis, which is the last axis of every input a "
     "layerc model takes)"),
    ("model-with-arguments", f"model E {{ Linear(2, 2) {INIT} }}\nmodel M {{\n  E(2)\n}}", 3, 5,
     "model 'E' used as a layer takes no arguments"),
    ("model-with-block", f"model E {{ Linear(2, 2) {INIT} }}\nmodel M {{\n  E {{ }}\n}}", 3, 3,
     "E takes no { ... } block"),
    # --- names
    ("duplicate-layer-name", f"model M {{\n  fc = Linear(4, 4) {INIT}\n  fc = ReLU\n}}", 3, 3,
     "layer name 'fc' is used twice in model 'M' (first at line 2)"),
    ("duplicate-model", f"model M {{ Linear(2, 2) {INIT} }}\n\nmodel M {{ ReLU }}", 3, 7,
     "model 'M' is defined twice (first at line 1)"),
    ("model-named-like-a-kind", f"model ReLU {{\n  Linear(2, 2) {INIT}\n}}", 1, 7,
     "a model cannot be named 'ReLU': that is a layer kind"),
    ("unknown-model", f"model M {{\n  Linear(4, 4) {INIT}\n  enc = Encoder\n}}", 3, 9,
     "unknown layer kind 'Encoder' (layer kinds: Linear, ReLU, Sigmoid, Tanh, Identity, "
     "LeakyReLU, Softmax, "
     "Dropout, AlphaDropout, Flatten, BatchNorm1d, LayerNorm, PReLU, GELU, ELU, CELU, Softplus, Hardtanh, SiLU, Mish, SELU, ReLU6, Hardsigmoid, Hardswish, LogSigmoid, Softsign, LogSoftmax, Hardshrink, Softshrink, Tanhshrink)"),
    ("model-before-definition",
     f"model M {{\n  Linear(4, 4) {INIT}\n  Enc\n}}\nmodel Enc {{ Linear(4, 4) {INIT} }}", 3, 3,
     "model 'Enc' is used before it is defined (line 5); define it earlier in the file"),
    ("model-contains-itself", f"model M {{\n  Linear(4, 4) {INIT}\n  again = M\n}}", 3, 11,
     "model 'M' cannot contain itself"),
    ("models-contain-each-other",
     f"model A {{\n  Linear(2, 2) {INIT}\n  B\n}}\n"
     f"model B {{ C }}\nmodel C {{ Linear(2, 2) {INIT}; A }}",
     3, 3, "model 'A' contains itself through A -> B -> C -> A; models cannot be recursive"),
    ("reserved-forward", f"model M {{\n  forward = Linear(2, 2) {INIT}\n}}", 2, 3,
     "a layer cannot be named 'forward': the generated module uses that name for its own API"),
    ("reserved-state-dict", f"model M {{\n  Linear(2, 2) {INIT}\n  state_dict = ReLU\n}}", 3, 3,
     "a layer cannot be named 'state_dict': the generated module uses that name for its own API"),
    ("reserved-training", f"model M {{\n  training = Linear(2, 2) {INIT}\n}}", 2, 3,
     "a layer cannot be named 'training': the generated module uses that name for its own API"),
    ("reserved-modules", f"model M {{\n  _modules = Linear(2, 2) {INIT}\n}}", 2, 3,
     "a layer cannot be named '_modules': the generated module uses that name for its own API"),
    ("reserved-dunder", f"model M {{\n  __class__ = Linear(2, 2) {INIT}\n}}", 2, 3,
     "a layer cannot be named '__class__': names starting with '__' are reserved"),
    ("reserved-dunder-other", f"model M {{\n  __x = Linear(2, 2) {INIT}\n}}", 2, 3,
     "a layer cannot be named '__x': names starting with '__' are reserved"),
    # --- features
    *[
        (f"features-{name}", f"model M {{\n  Linear({value}, 3) {INIT}\n}}", 2, 10, message)
        for name, value, message in [
            ("zero", "0", "in_features must be a positive integer, not 0"),
            ("negative", "-1", "in_features must be a positive integer, not -1"),
            ("fraction", "2.5", "in_features must be a positive integer"),
            ("decimal-integer", "4.0", "in_features must be a positive integer"),
            ("bool", "true", "in_features must be a positive integer"),
            ("name", "n", "in_features must be a positive integer"),
            ("string", '"4"', "in_features must be a positive integer"),
            ("list", "[4]", "in_features must be a positive integer"),
            ("inf", "inf", "in_features must be a positive integer"),
            ("large", "16777217", "in_features = 16777217 is too large (at most 16777216)"),
            ("huge", "1" + "0" * 40, f"in_features = 1{'0' * 40} is too large (at most 16777216)"),
        ]
    ],
    ("out-features-zero", f"model M {{\n  Linear(3, out_features=0) {INIT}\n}}", 2, 26,
     "out_features must be a positive integer, not 0"),
    # --- shape chains
    ("shape-chain", f"model M {{\n  a = Linear(4, 3) {INIT}\n  ReLU\n  b = Linear(5, 2) {INIT}\n}}",
     4, 3, "shape mismatch in model 'M': layer 'b' expects 5 input features, but the previous "
     "layer 'a' (line 2) gives 3"),
    ("shape-chain-unnamed", f"model M {{\n  Linear(4, 3) {INIT}\n  Linear(2, 2) {INIT}\n}}", 3, 3,
     "shape mismatch in model 'M': layer '1' expects 2 input features, but the previous layer "
     "'0' (line 2) gives 3"),
    ("shape-chain-nested",
     f"model E {{ Linear(2, 3) {INIT} }}\n"
     f"model M {{\n  a = Linear(2, 2) {INIT}\n  e = E\n  f = E\n}}",
     5, 3, "shape mismatch in model 'M': layer 'f' expects 2 input features, but the previous "
     "layer 'e' (line 4) gives 3"),
    # --- literal weights
    ("ragged-rows", "model M {\n  Linear(2, 2, bias=false) { weight = [[1, 2],\n      [3]] }\n}",
     3, 7, "ragged weight: this entry has shape (1,) but the first has shape (2,)"),
    ("ragged-depth", "model M {\n  Linear(2, 2, bias=false) { weight = [[1, 2], 3] }\n}",
     2, 48, "ragged weight: this entry has shape () but the first has shape (2,)"),
    ("wrong-row-count", "model M {\n  Linear(2, 2, bias=false) { weight = [[1, 2]] }\n}", 2, 39,
     "weight has shape (1, 2) but must have shape (2, 2)"),
    ("wrong-column-count",
     "model M {\n  Linear(2, 2, bias=false) { weight = [[1, 2, 3], [4, 5, 6]] }\n}", 2, 39,
     "weight has shape (2, 3) but must have shape (2, 2)"),
    ("transposed-weight",
     "model M {\n  Linear(3, 2, bias=false) { weight = [[1, 2], [3, 4], [5, 6]] }\n}", 2, 39,
     "weight has shape (3, 2) but must have shape (2, 3)"),
    ("one-dimensional-weight", "model M {\n  Linear(2, 1, bias=false) { weight = [1, 2] }\n}", 2,
     39, "weight has shape (2,) but must have shape (1, 2)"),
    ("scalar-weight", "model M {\n  Linear(1, 1, bias=false) { weight = 3 }\n}", 2, 39,
     "weight has shape () but must have shape (1, 1)"),
    ("weight-not-number", "model M {\n  Linear(2, 1, bias=false) { weight = [[1, true]] }\n}", 2,
     44, "weight must be a number or a list of numbers"),
    ("bias-length", "model M {\n  Linear(2, 2) { weight = [[1, 2], [3, 4]]; bias = [1] }\n}", 2,
     52, "bias has shape (1,) but must have shape (2,)"),
    ("bias-two-dimensional",
     "model M {\n  Linear(2, 2) { weight = [[1, 2], [3, 4]]; bias = [[1, 2]] }\n}", 2, 52,
     "bias has shape (1, 2) but must have shape (2,)"),
    ("bias-with-bias-false",
     "model M {\n  fc = Linear(2, 2, bias=false) {\n"
     "    weight = [[1, 2], [3, 4]]\n    bias = [1, 2]\n  }\n}",
     4, 5, "layer 'fc' is declared with bias=false but gives a bias"),
    ("bias-with-bias-false-and-init",
     "model M {\n  fc = Linear(2, 2, bias=false) { init = uniform(seed=0); bias = [1, 2] }\n}",
     2, 59,
     "layer 'fc' is declared with bias=false but gives a bias"),
    ("missing-weights", "model M {\n  fc = Linear(2, 2)\n}", 2, 3,
     f"layer 'fc' {NO_WEIGHTS}"),
    ("missing-weights-empty-block", "model M {\n  Linear(2, 2) { }\n}", 2, 3,
     f"layer '0' {NO_WEIGHTS}"),
    ("missing-weights-bias-only", "model M {\n  Linear(2, 2) { bias = [1, 2] }\n}", 2, 3,
     f"layer '0' {NO_WEIGHTS}"),
    ("missing-bias-values",
     "model M {\n  fc = Linear(2, 2) {\n    weight = [[1, 2], [3, 4]]\n  }\n}",
     3, 5, "layer 'fc' has a bias (bias=true) but no values for it: give 'bias = [...]', or "
     "declare bias=false"),
    ("weight-and-init",
     "model M {\n  Linear(2, 2) { init = uniform(seed=1)\n weight = [[1, 2], [3, 4]] }\n}",
     2, 18, "give either 'weight' or 'init', not both"),
    ("weight-twice",
     "model M {\n  Linear(1, 1, bias=false) { weight = [[1]]; weight = [[2]] }\n}", 2, 46,
     "'weight' is given twice"),
    ("unknown-entry", "model M {\n  Linear(1, 1) { wieght = [[1]]; bias = [0] }\n}", 2, 18,
     "unknown Linear entry 'wieght'; did you mean 'weight'? (entries: weight, bias, init)"),
    ("unknown-function", "model M {\n  Linear(1, 1, bias=false) { weight = lod(\"w.npy\") }\n}", 2,
     39, "unknown function 'lod': values are literals or load(\"file\", \"key\"); "
     "did you mean 'load'?"),
    # --- values that are not finite or do not fit float32
    ("nan-weight", "model M {\n  Linear(2, 2, bias=false) { weight = [[1, nan], [3, 4]] }\n}",
     2, 44, "weight[0, 1] is nan, not a finite number (write model NAME(allow_nonfinite=true) "
     "to allow inf and nan)"),
    ("inf-weight", "model M {\n  Linear(2, 2, bias=false) { weight = [[1, 2], [inf, 4]] }\n}",
     2, 49, "weight[1, 0] is inf, not a finite number (write model NAME(allow_nonfinite=true) "
     "to allow inf and nan)"),
    ("inf-bias",
     "model M {\n  Linear(2, 2) {\n    weight = [[1, 2], [3, 4]]\n    bias = [0, -inf]\n  }\n}",
     4, 16, "bias[1] is -inf, not a finite number (write model NAME(allow_nonfinite=true) to "
     "allow inf and nan)"),
    ("nonfinite-explicitly-off",
     "model M(allow_nonfinite=false) {\n  Linear(1, 1, bias=false) { weight = [[nan]] }\n}", 2, 41,
     "weight[0, 0] is nan, not a finite number (write model NAME(allow_nonfinite=true) to "
     "allow inf and nan)"),
    ("float32-overflow",
     "model M {\n  Linear(2, 2, bias=false) { weight = [[1, 2], [3, 1e39]] }\n}",
     2, 52, "weight[1, 1] = 1e+39 overflows float32"),
    ("float32-overflow-bias",
     "model M {\n  Linear(1, 1) { weight = [[1]]; bias = [-3.5e38] }\n}", 2, 42,
     "bias[0] = -3.5e+38 overflows float32"),
    ("float32-overflow-even-when-nonfinite-allowed",
     "model M(allow_nonfinite=true) {\n  Linear(1, 1, bias=false) { weight = [[1e39]] }\n}", 2, 41,
     "weight[0, 0] = 1e+39 overflows float32"),
    ("float32-overflow-test-input",
     f"model M {{ Linear(2, 1) {INIT} }}\ntest M {{\n  input = [1, 1e39]\n  expect = [0]\n}}",
     3, 15,
     "input[1] = 1e+39 overflows float32"),
    # --- tests
    ("test-unknown-model",
     f"model Net {{ Linear(2, 2) {INIT} }}\ntest Nte {{ input = [1, 2]; expect = [1, 2] }}",
     2, 6, "test names unknown model 'Nte'; did you mean 'Net'?"),
    ("test-input-width",
     M23 + "test M {\n  input = [1, 2, 3]\n  expect = [1, 2, 3]\n}",
     3, 11, "input has shape (3,) but the model takes (2,) or (N, 2)"),
    ("test-expect-width",
     M23 + "test M {\n  input = [[1, 2]]\n  expect = [[1, 2]]\n}",
     4, 12, "expect has shape (1, 2) but the model gives (3,) or (N, 3)"),
    ("test-sample-counts",
     M23 + "test M {\n  input = [[1, 2], [3, 4]]\n  expect = [[1, 2, 3]]\n}",
     4, 12, "input has (2, 2) but expect has (1, 3): they must hold the same number of samples"),
    ("test-one-against-batch",
     M23 + "test M {\n  input = [1, 2]\n  expect = [[1, 2, 3]]\n}",
     4, 12, "input has (2,) but expect has (1, 3): they must hold the same number of samples"),
    ("test-3d-input",
     M23 + "test M {\n  input = [[[1, 2]]]\n  expect = [[[1, 2, 3]]]\n}",
     3, 11, "input has shape (1, 1, 2) but the model takes (2,) or (N, 2)"),
    ("test-ragged-input",
     M23 + "test M {\n  input = [[1, 2], [3]]\n  expect = [1, 2, 3]\n}",
     3, 20, "ragged input: this entry has shape (1,) but the first has shape (2,)"),
    ("test-missing-expect",
     M23 + "test M {\n  input = [1, 2]\n}",
     2, 1, "test of 'M' has no 'expect'"),
    ("test-unknown-entry",
     M23 + "test M { input = [1, 2]; expected = [1, 2, 3] }",
     2, 26,
     "unknown test entry 'expected'; did you mean 'expect'? (entries: input, expect, atol, rtol)"),
    ("test-negative-atol",
     M23 + "test M { input = [1, 2]; expect = [1, 2, 3]; atol = -1 }",
     2, 53, "atol must be a finite number >= 0"),
    ("test-nan-rtol",
     M23 + "test M { input = [1, 2]; expect = [1, 2, 3]; rtol = nan }",
     2, 53, "rtol must be a finite number >= 0"),
    # --- model options
    ("bad-dtype", f"model M(dtype=float16) {{\n  Linear(2, 3) {INIT}\n}}", 1, 15,
     "dtype must be float32 or float64; did you mean 'float64'?"),
    ("bad-dtype-int", f"model M(dtype=int8) {{\n  Linear(2, 3) {INIT}\n}}", 1, 15,
     "dtype must be float32 or float64"),
    ("bad-dtype-number", f"model M(dtype=32) {{\n  Linear(2, 3) {INIT}\n}}", 1, 15,
     "dtype must be float32 or float64"),
    ("unknown-option", f"model M(dtpye=float64) {{\n  Linear(2, 3) {INIT}\n}}", 1, 9,
     "unknown model option 'dtpye'; did you mean 'dtype'? (options: dtype, allow_nonfinite, "
     "input, quantize)"),
    ("quantize-value", f"model M(quantize=int4) {{\n  Linear(2, 3) {INIT}\n}}", 1, 18,
     "quantize must be int8 or none; did you mean 'int8'?"),
    ("positional-option", f"model M(float64) {{\n  Linear(2, 3) {INIT}\n}}", 1, 9,
     "model options are keywords: write dtype=float32 or dtype=float64"),
    ("option-twice", f"model M(dtype=float64, dtype=float64) {{\n  Linear(2, 3) {INIT}\n}}", 1, 24,
     "option 'dtype' is given twice"),
    ("allow-nonfinite-not-bool", f"model M(allow_nonfinite=yes) {{\n  Linear(2, 3) {INIT}\n}}", 1,
     25, "allow_nonfinite must be true or false"),
    ("nested-dtype", f"model E(dtype=float64) {{ Linear(2, 2) {INIT} }}\nmodel M {{\n  E\n}}", 3, 3,
     "model 'E' is float64 but 'M' is float32; nested models must have the same dtype"),
    # --- empty models
    ("no-layers", "model M {\n}", 1, 7, "model 'M' has no layers"),
    ("no-linear", "model M {\n  ReLU\n  Softmax\n}", 1, 7,
     "model 'M' has no layer that fixes its input shape (such as a Linear): give it as the "
     "model option input=[...]"),
]
# fmt: on


@pytest.mark.parametrize(
    ("text", "line", "col", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in ERRORS],
)
def test_error_message_and_location(text: str, line: int, col: int, message: str) -> None:
    e = error(text)
    assert e.message == message
    assert e.loc == Loc(FILE, line, col)
    assert str(e) == f"{FILE}:{line}:{col}: {message}"


def test_error_ids_are_unique() -> None:
    ids = [case[0] for case in ERRORS]
    assert len(ids) == len(set(ids))


def test_a_file_without_models_is_an_error_about_the_file() -> None:
    for text in ("", "# only a comment\n"):
        e = error(text)
        assert (e.message, e.loc, e.file, str(e)) == (
            "the file defines no model",
            None,
            FILE,
            f"{FILE}: the file defines no model",
        )


def test_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    e = error('model M {\n  Linear(2, 2, bias=false) { weight = load("nope.npy") }\n}', tmp_path)
    assert e.loc == Loc(FILE, 2, 39)
    assert e.message == f"no such file: 'nope.npy' (looked in {tmp_path})"


def test_the_first_error_in_source_order_is_reported() -> None:
    """Models are checked top to bottom, and test blocks after every model."""
    e = error(
        f"model A {{\n  Linear(2, 2) {INIT}\n  Bad\n}}\nmodel B {{\n  Linear(0, 2) {INIT}\n}}\n"
    )
    assert (e.message.partition(" (")[0], e.loc.line) == ("unknown layer kind 'Bad'", 3)
    e = error(
        f"test Nope {{ input = [1]; expect = [1] }}\nmodel A {{\n  Linear(-2, 2) {INIT}\n}}\n"
    )
    assert (e.message, e.loc.line) == ("in_features must be a positive integer, not -2", 3)


# --------------------------------------------------------------------------- shape chains


@given(
    st.lists(st.integers(1, 4), min_size=2, max_size=6),
    st.lists(st.sampled_from(["", "ReLU", "Tanh; Identity"]), min_size=6, max_size=6),
)
@settings(max_examples=40, deadline=None)
def test_shape_chains_are_accepted_exactly_when_sizes_match(
    ins: list[int], between: list[str]
) -> None:
    """Layer i is Linear(ins[i], outs[i]) with outs[i] = ins[i + 1] except where we break it."""
    outs = ins[1:] + [3]
    broken = [i for i in range(len(ins) - 1) if ins[i] % 2 == 0]
    for i in broken:
        outs[i] = ins[i + 1] + 1
    lines = []
    for i, (a, b) in enumerate(zip(ins, outs, strict=True)):
        lines.append(f"  l{i} = Linear({a}, {b}) {INIT}")
        if between[i]:
            lines.append(f"  {between[i]}")
    text = "model M {\n" + "\n".join(lines) + "\n}"
    if not broken:
        m = checked(text).models[0]
        assert (m.in_features, m.out_features) == (ins[0], 3)
        return
    i = broken[0]
    e = error(text)
    line = (
        1
        + text.split("\n")[1:].index(f"  l{i + 1} = Linear({ins[i + 1]}, {outs[i + 1]}) {INIT}")
        + 1
    )
    assert e.message == (
        f"shape mismatch in model 'M': layer 'l{i + 1}' expects {ins[i + 1]} input features, "
        f"but the previous layer 'l{i}' (line {line - 1 - bool(between[i])}) gives {outs[i]}"
    )
    assert e.loc == Loc(FILE, line, 3)


# --------------------------------------------------------------------------- the IR verifier


def test_verifier_rejects_broken_ir() -> None:
    """The verifier the tests rely on does catch what it exists for."""
    good = checked(f"model M {{ a = Linear(2, 3) {INIT}; b = Linear(3, 1) {INIT} }}")
    m = good.models[0]
    a, b = m.layers
    loc = m.loc
    wrong_shape = dataclasses.replace(
        b, tensors=(("weight", np.zeros((3, 1), np.float32)),) + b.tensors[1:]
    )
    wrong_dtype = dataclasses.replace(
        b, tensors=(("weight", np.zeros((1, 3), np.float64)),) + b.tensors[1:]
    )
    wrong_chain = dataclasses.replace(b, in_shape=(2,))
    nonfinite = dataclasses.replace(
        b, tensors=(("weight", np.full((1, 3), np.nan, np.float32)),) + b.tensors[1:]
    )
    no_bias = dataclasses.replace(b, tensors=(("weight", b.weight), ("bias", None)))
    unknown = dataclasses.replace(b, kind="GELU", args=(), tensors=(), out_shape=(3,))
    for layers, out in [
        ((a, wrong_shape), 1),
        ((a, wrong_dtype), 1),
        ((a, wrong_chain), 1),
        ((a, nonfinite), 1),
        ((a, no_bias), 1),
        ((a, b), 2),
        ((a, a), 3),
        ((a, unknown, b), 1),
    ]:
        broken = ir.Model("M", m.dtype, layers, (2,), (out,), loc)
        with pytest.raises(ir.IRError):
            ir.verify(ir.Program(FILE, (broken,)))
    with pytest.raises(ir.IRError):
        ir.verify(ir.Program(FILE, (m, m)))
