"""Fuzzing the compiler with generated and adversarial programs.

Property tests (hypothesis) generate programs from the grammar with this file's own strategies:
models of Linear and activation chains, nested models, weights as literals in every spelling
or loaded from .npy files, positional and keyword arguments, names that are Python keywords,
test blocks, separators, comments and random whitespace. Each valid program must compile, and
its modules must hold the weights the text gives and compute what NumPy computes in float64
(within torch.testing.assert_close's tolerances). Mutated programs (spans deleted, duplicated,
swapped, truncated, bytes and tokens inserted) and programs from `hypothesis.extra.lark.from_lark`
must compile or raise a LayercError at a location inside the text: never another exception,
a RecursionError or a hang. Fixed adversarial inputs (deep brackets, a megabyte-long line,
10^5 layers, exponential nesting, empty and binary files) must give a clean result or a
located error within a bounded amount of CPU time each (a few seconds; the bound is far wider,
and no test here measures wall-clock time).

Example counts are small in CI; set LAYERC_FUZZ_EXAMPLES=N for a longer run of N examples per
property (see docs/security.md).
"""

from __future__ import annotations

import keyword
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import lark
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from test_security import assert_inert, time_limit

from layerc import driver, lower, syntax
from layerc.check import MAX_LAYERS, MAX_MODEL_DEPTH, MAX_NAME_LENGTH, RESERVED_LAYER_NAMES
from layerc.errors import LayercError, render

# How much CPU time compiling one generated or adversarial program may take before the test
# fails: the slowest take a few seconds. CPU time rather than wall-clock time, so that a busy
# machine does not fail a test that a hang or a blow-up would.
CPU_LIMIT = 60


def examples(default: int) -> int:
    """`default` examples in CI; LAYERC_FUZZ_EXAMPLES overrides it for a long run."""
    return int(os.environ.get("LAYERC_FUZZ_EXAMPLES", default))


def fuzz_settings(default: int):
    return settings(
        max_examples=examples(default),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- program model


@dataclass
class Lin:
    name: str | None
    weight: np.ndarray  # float64, the values the text gives
    bias: np.ndarray | None
    text: str  # the layer as .lyr text


@dataclass
class Act:
    name: str | None
    kind: str
    slope: float
    text: str


@dataclass
class Sub:
    name: str | None
    model: Spec
    text: str


@dataclass
class Spec:
    name: str
    dtype: str
    layers: list = field(default_factory=list)
    width_in: int = 0
    width_out: int = 0


def forward(spec: Spec, x: np.ndarray) -> np.ndarray:
    """The float64 reference: what the model means, computed by NumPy."""
    h = x.astype(np.float64)
    for layer in spec.layers:
        if isinstance(layer, Lin):
            h = h @ layer.weight.T + (0.0 if layer.bias is None else layer.bias)
        elif isinstance(layer, Sub):
            h = forward(layer.model, h)
        elif layer.kind == "ReLU":
            h = np.maximum(h, 0.0)
        elif layer.kind == "Sigmoid":
            h = 1.0 / (1.0 + np.exp(-h))
        elif layer.kind == "Tanh":
            h = np.tanh(h)
        elif layer.kind == "LeakyReLU":
            h = np.where(h > 0, h, layer.slope * h)
        elif layer.kind == "Softmax":
            e = np.exp(h - h.max(axis=-1, keepdims=True))
            h = e / e.sum(axis=-1, keepdims=True)
    return h


def flat(spec: Spec) -> list:
    """The model's Linear and activation layers in order, nested models expanded."""
    out = []
    for layer in spec.layers:
        out.extend(flat(layer.model) if isinstance(layer, Sub) else [layer])
    return out


def rounding_bound(spec: Spec, x: np.ndarray) -> np.ndarray:
    """A bound on the rounding error of each output in the model's dtype, from the standard
    analysis of a dot product (error <= (n + 2) eps |W| |h|, carried through later layers):
    outputs that cancel to near 0 from large terms may miss atol + rtol |y| and be right."""
    eps = np.finfo(spec.dtype).eps
    magnitude, error = np.abs(x), np.zeros(x.shape)
    for layer in flat(spec):
        if isinstance(layer, Lin):
            w, b = np.abs(layer.weight), 0.0 if layer.bias is None else np.abs(layer.bias)
            magnitude = magnitude @ w.T + b
            error = error @ w.T + (w.shape[1] + 2) * eps * magnitude
        elif layer.kind == "Softmax":  # outputs in [0, 1], mixing the errors of a row
            error = error.max(axis=-1, keepdims=True) + 4 * eps * magnitude.shape[-1]
            error = np.broadcast_to(error, magnitude.shape)
            magnitude = np.ones_like(magnitude)
        else:  # 1-Lipschitz elementwise functions, each rounded once
            error = error + 4 * eps * (magnitude + 1)
            magnitude = magnitude + 1
    return error


def linears(spec: Spec, prefix: str = "") -> list[tuple[str, Lin]]:
    """(state_dict prefix, layer) of every Linear, nested ones included."""
    out = []
    for position, layer in enumerate(spec.layers):
        key = prefix + (layer.name if layer.name is not None else str(position))
        if isinstance(layer, Lin):
            out.append((key, layer))
        elif isinstance(layer, Sub):
            out.extend(linears(layer.model, key + "."))
    return out


# --------------------------------------------------------------------------- strategies

GAPS = st.sampled_from([" ", " ", "  ", "\n", "\t", "\n    ", "\r\n", " \f ", "\n\n"])
COMMENT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\0"), max_size=12
).map(lambda text: f"  # {text}\n")
LAYER_NAMES = st.one_of(
    st.sampled_from(["import", "class", "None", "print", "np", "x", "inf", "nan", "self", "fc"]),
    st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True),
).filter(lambda n: n not in RESERVED_LAYER_NAMES and n not in ("model", "test", "true", "false"))


MODEL_NAMES = ["M", "Net", "import", "None", "_np", "forward", "x", "__class__", "_forward_M"]


@st.composite
def gap(draw) -> str:
    """Whitespace or a comment between two tokens."""
    return draw(st.one_of(GAPS, COMMENT)) if draw(st.integers(0, 5)) == 0 else draw(GAPS)


@st.composite
def number(draw, small: bool = True) -> tuple[str, float]:
    """A number in one of the spellings the grammar allows, and its value as Python reads it."""
    m = draw(st.integers(-1000, 1000))
    sign = "-" if m < 0 else draw(st.sampled_from(["", "", "+"]))
    digits = str(abs(m)).rjust(4, "0")
    whole, frac = digits[:-3].lstrip("0") or "0", digits[-3:]
    form = draw(st.sampled_from(["dec", "dot", "exp", "EXP", "pad", "int"]))
    if form == "dot" and whole == "0":
        text = f"{sign}.{frac}"
    elif form == "exp":
        text = f"{sign}{abs(m)}e-3"
    elif form == "EXP":
        text = f"{sign}{abs(m) / 100!r}E-1"
    elif form == "pad":
        text = f"{sign}{whole}.{frac}0"
    elif form == "int" and m % 1000 == 0:
        text = f"{sign}{abs(m) // 1000}" + draw(st.sampled_from(["", "."]))
    else:
        text = f"{sign}{whole}.{frac}"
    return text, float(text)


def seps(draw) -> str:
    return draw(st.sampled_from(["", "", ";", ","]))


@st.composite
def matrix(draw, rows: int, cols: int) -> tuple[str, np.ndarray]:
    cells = [[draw(number()) for _ in range(cols)] for _ in range(rows)]
    values = np.array([[v for _, v in row] for row in cells], dtype=np.float64).reshape(rows, cols)
    inner = [
        f"[{draw(gap())}"
        + ", ".join(t for t, _ in row)
        + (", " if draw(st.booleans()) else "")
        + "]"
        for row in cells
    ]
    return "[" + f",{draw(gap())}".join(inner) + "]", values


@st.composite
def vector(draw, size: int) -> tuple[str, np.ndarray]:
    cells = [draw(number()) for _ in range(size)]
    return "[" + ", ".join(t for t, _ in cells) + "]", np.array([v for _, v in cells])


@st.composite
def linear(draw, width: int, files: dict) -> Lin:
    n_out = draw(st.integers(1, 4))
    has_bias = draw(st.booleans())
    w_text, weight = draw(matrix(n_out, width))
    if draw(st.integers(0, 3)) == 0:  # the same values from a .npy file
        file = f"w{len(files)}.npy"
        files[file] = weight
        w_text = f'load("{file}")'
    args = draw(
        st.sampled_from(
            [
                f"{width}, {n_out}",
                f"in_features={width}, out_features={n_out}",
                f"out_features={n_out}, in_features={width}",
                f"{width}, out_features={n_out}",
            ]
        )
    )
    bias = None
    entries = [f"weight = {w_text}{seps(draw)}"]
    if has_bias:
        b_text, bias = draw(vector(n_out))
        entries.append(f"bias = {b_text}{seps(draw)}")
        if draw(st.booleans()):
            args += ", bias=true"
    else:
        positional = "=" not in args
        args += draw(
            st.sampled_from([", bias=false", ", bias = false,"] + [", false"] * positional)
        )
    if draw(st.booleans()):
        entries.reverse()
    block = "{" + draw(gap()) + draw(gap()).join(entries) + draw(gap()) + "}"
    return Lin(None, weight, bias, f"Linear({args}){draw(gap())}{block}")


@st.composite
def activation(draw) -> Act:
    kind = draw(st.sampled_from(["ReLU", "Sigmoid", "Tanh", "Identity", "LeakyReLU", "Softmax"]))
    slope = 0.01
    if kind == "LeakyReLU":
        forms = ["LeakyReLU", "LeakyReLU()"]
        if draw(st.booleans()):
            text, slope = draw(number())
            forms = [f"LeakyReLU({text})", f"LeakyReLU(negative_slope={text})"]
        return Act(None, kind, slope, draw(st.sampled_from(forms)))
    if kind == "Softmax":
        return Act(
            None, kind, slope, draw(st.sampled_from(["Softmax", "Softmax(dim=-1)", "Softmax(-1)"]))
        )
    return Act(None, kind, slope, kind + draw(st.sampled_from(["", "()"])))


@st.composite
def model(draw, name: str, earlier: list[Spec], files: dict) -> tuple[Spec, str]:
    """A model over earlier ones, and its options text."""
    dtype = draw(st.sampled_from(["float32", "float64"]))
    options = {
        "float32": ["", "()", "(dtype=float32)", '(dtype="float32")'],
        "float64": ["(dtype=float64)", '( dtype = "float64", )'],
    }[dtype]
    spec = Spec(name, dtype)
    width = draw(st.integers(1, 4))
    spec.width_in = width
    has_sized = False
    names: set[str] = set()
    for _ in range(draw(st.integers(1, 5))):
        subs = [m for m in earlier if m.dtype == dtype and m.width_in == width]
        choice = draw(st.sampled_from(["linear", "linear", "act"] + (["sub"] if subs else [])))
        if choice == "linear":
            layer = draw(linear(width, files))
            width, has_sized = layer.weight.shape[0], True
        elif choice == "sub":
            sub = draw(st.sampled_from(subs))
            layer = Sub(None, sub, sub.name)
            width, has_sized = sub.width_out, True
        else:
            layer = draw(activation())
        if draw(st.booleans()):
            layer.name = draw(LAYER_NAMES.filter(lambda n: n not in names))
            names.add(layer.name)
            layer.text = f"{layer.name}{draw(gap())}={draw(gap())}{layer.text}"
        spec.layers.append(layer)
    if not has_sized:
        layer = draw(linear(width, files))
        width = layer.weight.shape[0]
        spec.layers.append(layer)
    spec.width_out = width
    return spec, draw(st.sampled_from(options))


@st.composite
def programs(draw) -> tuple[str, list[Spec], dict]:
    """A valid program: its text, its models, and the .npy files it loads."""
    files: dict[str, np.ndarray] = {}
    specs: list[Spec] = []
    parts = [draw(st.sampled_from(["", "# a layerc program\n", "\ufeff", "\n\n"]))]
    for index in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(MODEL_NAMES))
        if any(spec.name == name for spec in specs):
            name += str(index)
        spec, options = draw(model(name, specs, files))
        specs.append(spec)
        body = "".join(draw(gap()) + layer.text + seps(draw) for layer in spec.layers)
        parts.append(f"model {name}{options}{draw(gap())}{{{body}{draw(gap())}}}{draw(gap())}")
    if draw(st.booleans()):  # a test block with NumPy's answer
        spec = draw(st.sampled_from(specs))
        x = np.linspace(-1, 1, spec.width_in)
        y = forward(spec, x)
        parts.append(
            f"test {spec.name} {{ input = [{', '.join(map(repr, x.tolist()))}]; "
            f"expect = [{', '.join(map(repr, y.tolist()))}]; atol = 1e-4 }}\n"
        )
    return "".join(parts), specs, files


def compile_program(text: str, files: dict, folder: Path):
    """Write the program and its files into `folder`, compile, check the module is inert,
    import it."""
    for name, array in files.items():
        np.save(folder / name, array)
    src = folder / "prog.lyr"
    src.write_bytes(text.encode("utf-8"))
    out = src.with_suffix(".py")
    with time_limit(CPU_LIMIT, cpu=True):
        driver.compile_file(src, out)
    assert_inert(out.read_bytes())
    return driver.import_module(out)


def find_class(module, name: str):
    matches = [
        getattr(module, n) for n in module.__all__ if getattr(module, n)()._get_name() == name
    ]
    assert len(matches) == 1, (name, module.__all__)
    return matches[0]


TOLERANCES = {"float32": (1.3e-6, 1e-5), "float64": (1e-7, 1e-7)}


# --------------------------------------------------------------------------- valid programs


@fuzz_settings(40)
@given(programs())
def test_valid_programs_compile_with_the_weights_the_text_gives(program):
    text, specs, files = program
    with tempfile.TemporaryDirectory() as tmp:
        module = compile_program(text, files, Path(tmp))
        for spec in specs:
            net = find_class(module, spec.name)()
            assert (net.in_features, net.out_features) == (spec.width_in, spec.width_out)
            state = net.state_dict()
            expected = {}
            for key, layer in linears(spec):
                expected[f"{key}.weight"] = layer.weight.astype(spec.dtype)
                if layer.bias is not None:
                    expected[f"{key}.bias"] = layer.bias.astype(spec.dtype)
            assert list(state) == list(expected)
            for key, value in expected.items():
                assert state[key].dtype == value.dtype
                np.testing.assert_array_equal(state[key], value, err_msg=key)


@fuzz_settings(12)
@given(programs(), st.integers(0, 2**32 - 1))
def test_valid_programs_compute_what_numpy_computes(program, seed):
    text, specs, files = program
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        module = compile_program(text, files, Path(tmp))
        for spec in specs:
            net = find_class(module, spec.name)()
            rtol, atol = TOLERANCES[spec.dtype]
            # 2-D only: each number of dimensions is another numba compile (test_numeric.py
            # covers them); float64 input is converted by the kernel for float32 models.
            for shape in [(5, spec.width_in), (0, spec.width_in)]:
                x = rng.uniform(-1, 1, shape)
                y = net(x)
                assert y.shape == shape[:-1] + (spec.width_out,) and y.dtype == spec.dtype
                expected = forward(spec, x)
                allowed = atol + rtol * np.abs(expected) + rounding_bound(spec, x)
                excess = np.abs(y.astype(np.float64) - expected) - allowed
                assert not (excess > 0).any(), (y, expected, allowed)


# --------------------------------------------------------------------------- invalid programs

SNIPPETS = [
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "=",
    ",",
    ";",
    '"',
    "\\",
    "#",
    "\n",
    "model",
    "test",
    "Linear",
    "ReLU",
    "Softmax(dim=0)",
    "-",
    "+",
    ".",
    "e",
    "nan",
    "-inf",
    "0",
    "1e999",
    "99999999999999999999999",
    "\0",
    "\u2028",
    "é",
    "\ufeff",
    "\r",
    "\t",
    "__class__",
    "import",
    "true",
    "false",
    'load("x.npy")',
    'load("',
    "uniform(seed=0)",
    "init = uniform(seed=-1)",
    "M0",
    "[[",
    "]]",
    "bias = [1]",
    "weight",
    "Linear(0, 1)",
    "test M0 { input = [1] }",
    "model M0 { M0 }",
    "\x1b[2J",
    "\udcff",
]


@st.composite
def mutated(draw) -> bytes:
    """A valid program with one to three edits, as bytes (sometimes not UTF-8 any more)."""
    text = draw(programs())[0]
    for _ in range(draw(st.integers(1, 3))):
        n = len(text)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 12)))
        op = draw(st.sampled_from(["delete", "insert", "insert", "duplicate", "swap", "truncate"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            snippet = draw(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=3)))
            text = text[:i] + snippet + text[i:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "swap":
            k = draw(st.integers(j, n))
            text = text[:i] + text[j:k] + text[i:j] + text[k:]
        else:
            text = text[:i]
    data = text.encode("utf-8", errors="surrogateescape" if draw(st.booleans()) else "replace")
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(data)))
        data = (
            data[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]))
            + data[at:]
        )
    return data


def assert_clean_outcome(data: bytes, folder: Path) -> None:
    """Compiling `data` either works (the module is inert and imports) or raises a
    LayercError located inside the text, whose rendering works too."""
    src = folder / "fuzz.lyr"
    src.write_bytes(data)
    out = folder / "fuzz.py"
    try:
        with time_limit(CPU_LIMIT, cpu=True):
            driver.compile_file(src, out)
    except LayercError as exc:
        text = data.decode("utf-8", errors="replace")
        if exc.loc is None:
            assert exc.message == "the file defines no model", exc
        else:
            assert exc.loc.file == str(src)
            assert 1 <= exc.loc.line <= text.count("\n") + 1, exc
            assert exc.loc.col >= 1, exc
        assert render(exc, text).startswith(str(exc))
        return
    assert_inert(out.read_bytes())
    module = driver.import_module(out)
    for name in module.__all__:
        getattr(module, name)()


@fuzz_settings(60)
@given(mutated())
def test_mutated_programs_compile_or_give_a_located_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        assert_clean_outcome(data, Path(tmp))


def _grammar_strategy():
    grammar = lark.Lark(
        syntax.grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="basic",
        propagate_positions=True,
        maybe_placeholders=False,
    )
    words = {"model", "test", "true", "false"}
    names = st.one_of(
        st.sampled_from(
            [
                "Linear",
                "ReLU",
                "Softmax",
                "LeakyReLU",
                "weight",
                "bias",
                "init",
                "uniform",
                "seed",
                "load",
                "dtype",
                "float64",
                "input",
                "expect",
                "M",
            ]
        ),
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True).filter(
            lambda s: s not in words
        ),
    )
    return from_lark(
        grammar,
        explicit={
            "NAME": names,
            "SIGNED_SPECIAL": st.sampled_from(["-inf", "+inf", "-nan", "+nan"]),
        },
    )


@fuzz_settings(40)
@given(_grammar_strategy())
def test_programs_from_the_grammar_compile_or_give_a_located_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        assert_clean_outcome(text.encode("utf-8", errors="surrogateescape"), Path(tmp))


# --------------------------------------------------------------------------- adversarial inputs

LIN = "Linear(2, 2) { weight = [[1, 0], [0, 1]]; bias = [0, 0] }"


def _nested_models(depth: int, fan_out: int) -> str:
    lines = [f"model M0 {{ {LIN} }}"]
    lines += [f"model M{i} {{ " + f"M{i - 1} " * fan_out + "}" for i in range(1, depth)]
    return "\n".join(lines) + "\n"


ADVERSARIAL = {
    "empty file": (b"", "the file defines no model"),
    "only a BOM": (b"\xef\xbb\xbf", "the file defines no model"),
    "only comments": (b"# model M { }\n" * 1000, "the file defines no model"),
    "binary garbage": (bytes(range(256)) * 64, "not valid UTF-8"),
    "latin-1 text": ("model Mé { }".encode("latin-1"), "not valid UTF-8"),
    "a NUL": (b"model M { ReLU }\0", "NUL"),
    "deep brackets": (
        f"model M {{ Linear(1, 1) {{ weight = {'[' * 100000}1{']' * 100000} }} }}".encode(),
        "nested more than",
    ),
    "deep parentheses": (
        ("model M { Linear" + "(" * 100000 + ")" * 100000 + " }").encode(),
        "nested more than",
    ),
    "deep braces": (("model M " + "{" * 100000 + "}" * 100000).encode(), "unexpected"),
    "unclosed brackets": (
        ("model M { Linear(1, 1) { weight = " + "[" * 30 + "1").encode(),
        "unexpected end",
    ),
    "megabyte-long valid line": (f"model M {{ {LIN} {' ' * 1_000_000} ReLU }}".encode(), None),
    "megabyte-long error line": (
        ("model M { " + "ReLU " * 200_000 + "? }").encode(),
        "unexpected character",
    ),
    "megabyte-long name": (
        f"model M{'a' * 1_000_000} {{ {LIN} }}".encode(),
        f"names have at most {MAX_NAME_LENGTH}",
    ),
    "megabyte-long number": (
        (
            "model M { Linear(2, 2) { weight = [[1, 0], [0, 1]]; bias = [0, 0."
            + "1" * 1_000_000
            + "] } }"
        ).encode(),
        None,
    ),
    "megabyte-long integer": (
        ("model M { Linear(1" + "0" * 1_000_000 + ", 2) {} }").encode(),
        "too large",
    ),
    "megabyte-long string": (
        ('model M { Linear(2, 2) { weight = load("' + "a" * 1_000_000 + '") } }').encode(),
        "File name too long",
    ),
    "megabyte-long comment": (("#" + "x" * 1_000_000 + f"\nmodel M {{ {LIN} }}").encode(), None),
    "10^5 layers": (f"model M {{ {LIN} {'ReLU ' * (MAX_LAYERS - 1)}}}".encode(), None),
    "10^5 + 1 layers": (
        f"model M {{ {LIN} {'ReLU ' * MAX_LAYERS}}}".encode(),
        "more than 100000 layers",
    ),
    "models nested too deep": (
        _nested_models(2000, 1).encode(),
        f"more than {MAX_MODEL_DEPTH} deep",
    ),
    "exponential nesting": (_nested_models(12, 10).encode(), "once its nested models are expanded"),
    "3000 models": ("".join(f"model M{i} {{ ReLU; {LIN} }}\n" for i in range(3000)).encode(), None),
    "a huge init": (
        b"model M { Linear(16777216, 16777216) { init = uniform(seed=0) } }",
        "more than",
    ),
    "huge inits in all": (
        b"model M { Linear(4096, 4096) { init = uniform(seed=0) } }\n"
        b"model N { Linear(32768, 32768) { init = uniform(seed=0) } }",
        "in all",
    ),
    "1e999": (
        b"model M { Linear(1, 1) { weight = [[1e999]]; bias = [0] } }",
        "= 1e999 overflows float32",
    ),
    "CRLF and tabs": (f"model\tM\r\n{{\r\n\t{LIN}\r\n}}\r\n".encode(), None),
    "keywords as names": (b"model model { ReLU }", "keyword"),
}


@pytest.mark.parametrize("label", list(ADVERSARIAL))
def test_adversarial_inputs_give_a_clean_result_in_bounded_cpu_time(tmp_path, label):
    """Each input compiles, or is refused with a located error, within CPU_LIMIT seconds of CPU
    time (the slowest take a few; work quadratic in a megabyte would take hours)."""
    data, expected = ADVERSARIAL[label]
    src = tmp_path / "adv.lyr"
    src.write_bytes(data)
    start = time.process_time()
    try:
        with time_limit(CPU_LIMIT, cpu=True):
            program, written = driver.compile_file(src, tmp_path / "adv.py")
        outcome = None
    except LayercError as exc:
        outcome = exc
    used = time.process_time() - start  # a long call into C can finish past the signal
    assert used < CPU_LIMIT, f"{label}: {used:.1f} s of CPU time"
    if expected is None:
        assert outcome is None, outcome
        data = written[-1].read_bytes()
        if len(data) < 1_000_000:  # ast.parse takes seconds per 10 MB; these are not about names
            assert_inert(data)
        return
    assert outcome is not None, f"{label} compiled"
    assert expected in outcome.message, outcome
    text = data.decode("utf-8", errors="replace")
    if outcome.loc is not None:
        assert 1 <= outcome.loc.line <= text.count("\n") + 1
    else:
        assert outcome.message == "the file defines no model"
    render(outcome, text)


def test_ten_thousand_nested_layers_compile_import_and_build(tmp_path):
    """A model of 10^4 Linear layers, nested ten-fold four deep, compiles, imports and builds
    (10^5 compile too, above, but Python takes seconds to import a 30 MB module). The module
    grows linearly with what it builds: about 140 bytes per module instance, so each model
    is written once, however often it is nested, and never expanded inline."""
    src = tmp_path / "wide.lyr"
    src.write_text(_nested_models(5, 10))
    with time_limit(CPU_LIMIT, cpu=True):
        driver.compile_file(src)
        module = driver.import_module(src.with_suffix(".py"))
        net = module.M1()  # 10 layers; M4's fused kernel would take numba minutes to compile
        x = np.array([[1.0, -2.0]], dtype=np.float32)
        np.testing.assert_array_equal(net(x), x)
        # M4, 10 M3, 100 M2, 1000 M1, 10^4 M0 and their 10^4 Linear layers
        instances = len(list(module.M4().modules()))
    assert instances == 1 + 10 + 100 + 1000 + 2 * 10_000
    assert src.with_suffix(".py").stat().st_size < 400 * instances


def test_cli_never_prints_a_traceback_for_garbage(tmp_path):
    src = tmp_path / "garbage.lyr"
    src.write_bytes(bytes(range(256)) * 4)
    proc = subprocess.run(
        [sys.executable, "-m", "layerc.cli", "compile", str(src)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert re.match(re.escape(str(src)) + r":\d+:\d+: the file is not valid UTF-8", proc.stderr)
    assert "Traceback" not in proc.stderr


def test_name_claims_never_loop_or_collide():
    """Every wanted name gets a fresh, safe identifier, however many times it is asked for."""
    names = lower.Names({"_np", "_rt"})
    wanted = ["_", "__", "___", "_np", "np", "import", "print", "__x", "_x", "x"] * 5
    got = [names.claim(w) for w in wanted]
    assert len(set(got)) == len(got)
    for name in got:
        assert name.isidentifier() and not keyword.iskeyword(name)
        assert not name.startswith("__")
    with pytest.raises(AssertionError):
        names.claim("not an identifier")
