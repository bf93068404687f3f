"""Hardening against hostile input: text from a .lyr source never becomes code, output is written
atomically and a failure leaves earlier output intact, a module refuses a weights file that is
not its own, and generated modules check what they are called with.

- Names: models and layers named like Python keywords, builtins, dunders, the generated
  module's own globals (`_np`, `_rt`, ...) and its kernels (`_forward_A`, `_linear_3x4_f32`)
  compile to a module that imports and computes what NumPy computes, with each name reachable
  as documented in docs/security.md, or are refused with a located error. Names longer than
  the limit are refused where they stand, and the longest allowed run with numba's cache on.
- Strings: file names of the source (encoding declarations with the code their decoding
  would uncover, quotes, triple quotes, backslashes, newlines, carriage returns, control
  characters, U+2028, non-UTF-8 bytes, 254-byte names), of the output's folder and of loaded
  weights, ONNX names brought in by `layerc import`, and sources exported, drawn and
  formatted, carrying payloads: they compile, import (in a fresh Python too) and run without
  the payload running (a sentinel file proves it), and every generated module passes
  `assert_inert`: its bytes read as Python reads them (an encoding declaration included)
  start with the fixed header, compile, call no eval/exec/compile/__import__, import only the
  runtime, define no name twice or shadowing a builtin, and hold the payload text only inside
  string literals and comments.
- Faults: a failing rename, a full disk, an I/O error, a read-only folder or a path through a
  file leave the previous module and weights file byte-identical and importable, leave no
  temporary or orphaned files, and give a LayercError (the CLI: one line, exit 1).
- Calls: inputs of every kind (lists, strided, Fortran-ordered, negative strides, bool, int,
  float16, big-endian, np.matrix) give NumPy's answer; wrong shapes, strings, complex, object
  and masked arrays raise an error naming the expected shape; hooks that modify inputs or
  outputs in place never reach the weights.
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import errno
import hashlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch

from layerc import cli, codegen, driver
from layerc.check import MAX_NAME_LENGTH, RESERVED_LAYER_NAMES
from layerc.errors import LayercError

# --------------------------------------------------------------------------- helpers

ALLOWED_IMPORTS = ("numba", "numpy", "math", "layerc.runtime")
FORBIDDEN_CALLS = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "open",
    "breakpoint",
    "globals",
    "locals",
    "vars",
}


def assert_inert(data: bytes, markers: tuple[str, ...] = ()) -> None:
    """Fail unless the generated module `data` is plain generated code, read from its bytes as
    Python reads them (a PEP 263 encoding declaration on line 1 or 2 decides how the rest
    decodes): its first two lines are layerc's fixed header and declare UTF-8; it compiles;
    it calls none of FORBIDDEN_CALLS; imports only the runtime and its libraries; defines no
    module-level or class-level name twice and no module-level builtin or dunder (but
    `__all__`); and every `marker` occurs only inside string literals and comments."""
    assert isinstance(data, bytes), "check the bytes: decoded text hides the declaration"
    assert data.split(b"\n", 2)[:2] == [line.encode() for line in codegen.FIXED_HEADER]
    assert tokenize.detect_encoding(io.BytesIO(data).readline)[0] == "utf-8"
    compile(data, "<generated>", "exec", dont_inherit=True)
    tree = ast.parse(data)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"line {node.lineno} calls {node.func.id}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.startswith(ALLOWED_IMPORTS), f"imports {alias.name}"
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").startswith(ALLOWED_IMPORTS), f"imports {node.module}"
        if isinstance(node, ast.ClassDef):
            _assert_unique(_defined(node.body), f"class {node.name}")
    top = _defined(tree.body)
    _assert_unique(top, "module")
    for name in top:
        assert name == "__all__" or not name.startswith("__"), f"module defines {name}"
        assert not hasattr(builtins, name), f"module-level {name} shadows a builtin"
    if markers:
        for token in tokenize.tokenize(io.BytesIO(data).readline):
            if token.type not in (tokenize.STRING, tokenize.COMMENT, tokenize.ENCODING):
                for marker in markers:
                    assert marker not in token.string, f"{marker!r} in code: {token.line!r}"


@contextlib.contextmanager
def time_limit(seconds: float, cpu: bool = False):
    """Turn a hang into a failure: a signal interrupts the compiler after `seconds` of wall-clock
    time (a blocked read burns no CPU), or with `cpu=True` after `seconds` of this process's CPU
    time, which a busy machine does not use up faster (for work that computes while it hangs)."""
    timer, signum = (
        (signal.ITIMER_PROF, signal.SIGPROF) if cpu else (signal.ITIMER_REAL, signal.SIGALRM)
    )
    clock = "CPU " if cpu else ""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} {clock}s")

    previous = signal.signal(signum, expire)
    signal.setitimer(timer, seconds)
    try:
        yield
    finally:
        signal.setitimer(timer, 0)
        signal.signal(signum, previous)


def _defined(body: list[ast.stmt]) -> list[str]:
    names = []
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            names.append(stmt.name)
        elif isinstance(stmt, ast.Assign):
            names.extend(t.id for t in stmt.targets if isinstance(t, ast.Name))
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names.extend((a.asname or a.name).split(".")[0] for a in stmt.names)
    return names


def _assert_unique(names: list[str], where: str) -> None:
    twice = sorted(n for n, count in collections.Counter(names).items() if count > 1)
    assert not twice, f"{where} defines {twice} more than once"


def compile_source(text: str, folder: Path, stem: str = "m", out: Path | None = None):
    """Write `text` to folder/<stem>.lyr, compile, assert the module is inert, import it."""
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"{stem}.lyr"
    src.write_text(textwrap.dedent(text), encoding="utf-8")
    out = out or src.with_suffix(".py")
    driver.compile_file(src, out)
    assert_inert(out.read_bytes())
    return driver.import_module(out)


def mlp(x, *layers) -> np.ndarray:
    """The float64 reference: `layers` are (W, b) pairs, "relu", "tanh" or "sigmoid"."""
    h = np.asarray(x, dtype=np.float64)
    for layer in layers:
        if layer == "relu":
            h = np.maximum(h, 0.0)
        elif layer == "tanh":
            h = np.tanh(h)
        elif layer == "sigmoid":
            h = 1.0 / (1.0 + np.exp(-h))
        else:
            w, b = layer
            h = h @ np.asarray(w, dtype=np.float64).T + (0.0 if b is None else np.asarray(b))
    return h


def close(actual, expected, dtype=np.float32) -> None:
    """torch.testing.assert_close's tolerances for `dtype`, NaN equal to NaN."""
    rtol, atol = (1.3e-6, 1e-5) if np.dtype(dtype) == np.float32 else (1e-7, 1e-7)
    actual = np.asarray(actual)
    assert actual.shape == np.shape(expected), (actual.shape, np.shape(expected))
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol)


def lyr_matrix(w) -> str:
    return "[" + ", ".join("[" + ", ".join(repr(float(v)) for v in row) + "]" for row in w) + "]"


def lyr_vector(b) -> str:
    return "[" + ", ".join(repr(float(v)) for v in b) + "]"


W43 = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 1.0], [-2.0, 0.75, 1.0, -1.25]])
W34 = np.array([[1.0, -0.5, 0.25], [0.5, 2.0, -1.0], [-1.5, 0.5, 1.0], [0.25, -0.75, 0.5]])
B4 = np.array([0.1, -0.2, 0.3, -0.4])
X4 = np.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0]])

# --------------------------------------------------------------------------- names

# Valid model names that are Python keywords or builtins, dunders, the generated module's own
# globals and kernel names, soft keywords, and names the runtime uses.
TRICKY_MODEL_NAMES = (
    "import",
    "class",
    "None",
    "True",
    "np",
    "_np",
    "_numba",
    "_rt",
    "_WEIGHTS",
    "_CACHE",
    "forward",
    "Module",
    "Model",
    "print",
    "super",
    "type",
    "x",
    "__class__",
    "__getattr__",
    "__file__",
    "__builtins__",
    "__",
    "_",
    "A",
    "_forward_A",
    "_linear_3x4_f32",
    "_linear_3x4_f32_relu",
    "_Linear_3x4_f32",
    "_relu_f32",
    "_forward_Outer",
)


def _plain(name: str) -> bool:
    """Whether a model's class is documented to carry exactly the source name."""
    import keyword

    return not (
        keyword.iskeyword(name)
        or hasattr(builtins, name)
        or name.startswith("__")
        or name.startswith("_")  # may clash with a generated name; checked below instead
    )


@pytest.fixture(scope="module")
def tricky_models(tmp_path_factory):
    """One module with a model per tricky name (model i adds bias i), and `Outer` chaining
    three of them with a Linear in between."""
    models = []
    for i, name in enumerate(TRICKY_MODEL_NAMES):
        bias = [float(i), -float(i), 0.5]
        models.append(
            f"model {name} {{\n"
            f"    Linear(4, 3) {{ weight = {lyr_matrix(W43)}; bias = {lyr_vector(bias)} }}\n"
            "    ReLU\n}\n"
        )
    models.append(
        "model Outer {\n    import\n"
        f"    Linear(3, 4) {{ weight = {lyr_matrix(W34)}; bias = {lyr_vector(B4)} }}\n"
        "    __getattr__\n}\n"
    )
    folder = tmp_path_factory.mktemp("tricky")
    return compile_source("".join(models), folder, "tricky")


def test_tricky_model_names_compile_import_and_compute(tricky_models):
    classes = [getattr(tricky_models, n) for n in tricky_models.__all__]
    by_source = {cls()._get_name(): cls for cls in classes}
    assert sorted(by_source) == sorted((*TRICKY_MODEL_NAMES, "Outer"))
    assert len(set(tricky_models.__all__)) == len(classes)
    for i, name in enumerate(TRICKY_MODEL_NAMES):
        cls = by_source[name]
        if _plain(name):
            assert cls.__name__ == name
        net = cls()
        bias = np.array([i, -i, 0.5])
        expected = mlp(X4, (W43, bias), "relu")
        close(net(X4), expected)  # the fused kernel
        close(net.forward(X4), expected)  # layer by layer
        assert repr(net).startswith(f"{name}(")
    outer = by_source["Outer"]()
    index = TRICKY_MODEL_NAMES.index("__getattr__")
    b0, b1 = np.array([0.0, 0.0, 0.5]), np.array([index, -index, 0.5])
    expected = mlp(X4, (W43, b0), "relu", (W34, B4), (W43, b1), "relu")
    close(outer(X4), expected)
    close(outer.forward(X4), expected)
    assert list(outer.state_dict()) == [
        "0.0.weight",
        "0.0.bias",
        "1.weight",
        "1.bias",
        "2.0.weight",
        "2.0.bias",
    ]


def test_renamed_models_keep_their_source_name(tricky_models):
    """A class named differently from its model says so: `_name` and repr carry the source
    name, and the module's own globals and kernels are untouched."""
    for name in ("import", "None", "print", "__class__", "__getattr__", "_np", "_rt"):
        matches = [
            n for n in tricky_models.__all__ if getattr(tricky_models, n)()._get_name() == name
        ]
        assert len(matches) == 1, name
        assert matches[0] != name
    assert tricky_models.__file__.endswith("tricky.py")
    assert not hasattr(tricky_models, "__getattr__")
    assert tricky_models._np is np
    assert tricky_models._rt.__name__ == "layerc.runtime"
    for generated in ("_forward_A", "_linear_3x4_f32", "_Linear_3x4_f32", "_relu_f32"):
        assert isinstance(getattr(tricky_models, generated), type)  # the model, not a kernel


LAYER_NAMES = ("import", "class", "None", "print", "np", "_np", "super", "self", "x", "inf")


@pytest.fixture(scope="module")
def tricky_layers(tmp_path_factory):
    """A model whose layers have keyword and builtin names, an unnamed layer at position 10
    and a layer named like that position's alias."""
    w33 = W43[:, :3]
    lines = [
        f"import = Linear(4, 3) {{ weight = {lyr_matrix(W43)}; bias = [1, 2, 3] }}",
        "class = ReLU",
        f"None = Linear(3, 3) {{ weight = {lyr_matrix(w33)}; bias = [0, 0, 0] }}",
        "print = Tanh",
        "np = Identity",
        "_np = Sigmoid",
        f"super = Linear(3, 4, bias=false) {{ weight = {lyr_matrix(W34)} }}",
        "self = Identity()",
        "x = LeakyReLU(0.5)",
        "inf = Identity",
        f"Linear(4, 3) {{ weight = {lyr_matrix(W43)}; bias = [0, 0, 0] }}",
        "layer_10 = ReLU",
    ]
    text = "model L {\n" + "\n".join("    " + line for line in lines) + "\n}\n"
    return compile_source(text, tmp_path_factory.mktemp("layers"), "layers")


def test_layer_names_reachable_and_compatible_with_torch(tricky_layers):
    net = tricky_layers.L()
    names = [*LAYER_NAMES, "10", "layer_10"]
    assert list(net._modules) == names
    for name in names:
        assert getattr(net, name) is net._modules[name]
    # Identifier aliases for keywords and positions, as docs/security.md says.
    assert net.import_ is net._modules["import"]
    assert net.class_ is net._modules["class"]
    assert net.None_ is net._modules["None"]
    assert net.layer_10_ is net._modules["10"]
    assert net.layer_10 is net._modules["layer_10"]
    w33 = W43[:, :3]
    h = mlp(X4, (W43, [1, 2, 3]), "relu", (w33, [0, 0, 0]), "tanh", "sigmoid", (W34, None))
    h = np.where(h > 0, h, 0.5 * h)
    expected = mlp(h, (W43, [0, 0, 0]), "relu")
    close(net(X4), expected)
    close(net.forward(X4), expected)
    # torch accepts the same names, so the state_dict moves across unchanged.
    seq = torch.nn.Module()
    for name, module in net.named_children():
        kind = type(module).__mro__[1].__name__
        if kind == "Linear":
            child = torch.nn.Linear(module.in_features, module.out_features, bias=module.has_bias)
        else:
            child = torch.nn.Identity()
        seq.add_module(name, child)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in net.state_dict().items()}
    assert seq.load_state_dict(sd).missing_keys == []
    assert list(net.state_dict()) == list(seq.state_dict())


@pytest.mark.parametrize("name", sorted(RESERVED_LAYER_NAMES | {"__class__", "__dict__", "__x"}))
def test_reserved_layer_names_are_refused_where_they_stand(tmp_path, name):
    src = tmp_path / "r.lyr"
    linear = "Linear(2, 2) { init = uniform(seed=0) }"
    src.write_text(f"model M {{\n    ReLU\n    {name} = ReLU\n    {linear}\n}}\n")
    with pytest.raises(LayercError) as info:
        driver.check_file(src)
    assert (info.value.loc.line, info.value.loc.col) == (3, 5)
    assert repr(name) in info.value.message


@pytest.mark.parametrize(
    "name", ["Linear", "ReLU", "Sigmoid", "Tanh", "Identity", "LeakyReLU", "Softmax"]
)
def test_model_named_like_a_layer_kind_is_refused(tmp_path, name):
    src = tmp_path / "k.lyr"
    src.write_text(f"# a comment\nmodel  {name} {{ Linear(2, 2) {{ init = uniform(seed=0) }} }}\n")
    with pytest.raises(LayercError) as info:
        driver.check_file(src)
    assert (info.value.loc.line, info.value.loc.col) == (2, 8)


@pytest.mark.parametrize("what", ["model", "layer"])
def test_names_longer_than_the_limit_are_refused_where_they_stand(tmp_path, what):
    src = tmp_path / "n.lyr"
    for length in (MAX_NAME_LENGTH, MAX_NAME_LENGTH + 1):
        name = "N" * length
        model, layer = (name, "fc") if what == "model" else ("M", name)
        src.write_text(
            f"# c\nmodel  {model} {{\n    {layer} = Linear(2, 2) {{ init = uniform(seed=0) }}\n}}\n"
        )
        if length == MAX_NAME_LENGTH:
            driver.check_file(src)
            continue
        with pytest.raises(LayercError) as info:
            driver.check_file(src)
        where = (2, 8) if what == "model" else (3, 5)
        assert (info.value.loc.line, info.value.loc.col) == where
        assert info.value.message == (
            f"this {what} name has {length} characters; names have at most {MAX_NAME_LENGTH}"
        )


def test_the_longest_names_run_with_numbas_cache(tmp_path):
    """A model named with MAX_NAME_LENGTH characters in a module named with MAX_MODULE_NAME:
    numba writes its cache (beside the module, and in NUMBA_CACHE_DIR), and a second process
    runs the kernels from it. (numba puts both names in one cache file name.)"""
    model, module = "M" * MAX_NAME_LENGTH, "m" * driver.MAX_MODULE_NAME
    src = tmp_path / "long.lyr"
    src.write_text(
        f"model {model} {{\n    {'f' * MAX_NAME_LENGTH} = Linear(2, 2) "
        "{ weight = [[1, 2], [3, 4]]; bias = [0.5, -0.5] }\n    ReLU\n}\n"
    )
    driver.compile_file(src, tmp_path / f"{module}.py")
    code = (
        f"import warnings; warnings.simplefilter('error')\n"
        f"import {module} as m\n"
        f"net = m.{model}()\n"
        "print([net([3.0, -1.0]).tolist(), net.forward([[3.0, -1.0]]).tolist(),\n"
        f"       min(1, sum(m._forward_{model}.stats.cache_hits.values()))])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = str(tmp_path)
    for where, cache in (
        ({}, tmp_path / "__pycache__"),
        ({"NUMBA_CACHE_DIR": str(tmp_path / "nc")}, tmp_path / "nc"),
    ):
        for hits in (0, 1):  # the first process compiles and writes, the second loads
            done = subprocess.run(
                [sys.executable, "-c", code],
                cwd=tmp_path,
                env={**env, **where},
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr
            assert ast.literal_eval(done.stdout) == [[1.5, 4.5], [[1.5, 4.5]], hits]
        index = [p.name for p in cache.rglob(f"{module}._forward_{model}-*.nbi")]
        assert len(index) == 1, sorted(p.name for p in cache.rglob("*"))


# --------------------------------------------------------------------------- strings and payloads

SENTINEL = "SENTINEL"
RUN = f"__import__('pathlib').Path('{SENTINEL}').touch()"
RUN2 = f'__import__("pathlib").Path("{SENTINEL}").touch()'
# File name fragments that would run RUN if pasted into a comment, a string or a docstring.
PAYLOADS = (
    f'a"""+{RUN}+"""',
    f"a'''+{RUN2}+'''",
    f'a"+{RUN}+"',
    f"a'+{RUN2}+'",
    f"a\n{RUN}\n#",
    f"a\r{RUN}\r#",
    f"a\\\n{RUN}",
    f"a\u2028{RUN}\u2029",
    f"a\x0c\x85{RUN}",
    f'a\\"""+{RUN}+"""\\',
    f"a\\N{{x}}\\x\\u12{RUN}",
)
# What must never be code in a generated module: the sentinel's name and the payload's call.
MARKERS = (SENTINEL, "__import__")
TINY = "model M { fc = Linear(2, 2) { weight = [[1, 2], [3, 4]]; bias = [0.5, -0.5] } }\n"
TINY_REF = mlp([[1.0, -1.0]], ([[1, 2], [3, 4]], [0.5, -0.5]))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path, so a payload's relative SENTINEL would land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Hostile file names. Python reads a source-encoding declaration (PEP 263) from a comment on line
# 1 or 2 of a module, and decodes the whole module with it: under `unicode_escape` the escapes
# that repr() writes (`\n`, `\"`) turn back into line breaks and quotes, and under `utf-7`
# `+ACIAIgAi-` is `"""`. Each declaration comes bare (it lands wherever the name is printed) and
# after a line break (one line further, where a header that printed the name raw would put it).
COOKIES = (
    "-*- coding: unicode_escape -*-",
    "vim: set fileencoding=raw_unicode_escape :",
    "coding=utf-7 ",
    "coding:latin-1 ",
)
# Names that carry code for the declared decoding to uncover: escaped quotes that close the
# docstring, an escaped line break that ends the comment, `"""` in UTF-7.
ATTACKS = (
    f'a"""+{RUN2}+""" {COOKIES[0]}',
    f"a\n{RUN}\n# {COOKIES[0]}",
    f"a+ACIAIgAi-+-{RUN}+-+ACIAIgAi- {COOKIES[2]}",
)
HOSTILE_NAMES: tuple[str | bytes, ...] = (
    *(f"x {cookie}" for cookie in COOKIES),
    *(f"x\n# {cookie}\n" for cookie in COOKIES),
    f"x\r# {COOKIES[0]}\r",
    *ATTACKS,
    *PAYLOADS,
    "\\",
    "a\\u0022\\x22\\N{QUOTATION MARK}\\",
    "a\x0b\x1b[2J\x7f\x1c\x1d\x1e\x1f",
    "\ufeffa\u2029b\u0085c\u200e",
    b"q\xff\xfe",  # not UTF-8: surrogate escapes
    b"s\xed\xa0\x80\xc0\xaf",  # an encoded surrogate and an overlong '/'
    (PAYLOADS[0] + " ") * 4 + "x" * (250 - 4 * len(PAYLOADS[0] + " ")),  # 250 + ".lyr": the most
)


def hostile_path(folder: Path, name: str | bytes, suffix: str) -> Path:
    """folder/<name><suffix>; a bytes name is taken as the raw bytes of a file name."""
    if isinstance(name, bytes):
        return Path(os.fsdecode(os.fsencode(str(folder)) + b"/" + name + suffix.encode()))
    return folder / f"{name}{suffix}"


@pytest.fixture(scope="module")
def hostile_modules(tmp_path_factory) -> Path:
    """A folder with a TINY source under each of HOSTILE_NAMES, compiled to m<i>.py."""
    folder = tmp_path_factory.mktemp("hostile")
    for index, name in enumerate(HOSTILE_NAMES):
        src = hostile_path(folder, name, ".lyr")
        src.write_text(TINY)
        driver.compile_file(src, folder / f"m{index}.py")
    return folder


@pytest.mark.parametrize("index", range(len(HOSTILE_NAMES)))
def test_source_file_names_never_become_code(hostile_modules, monkeypatch, index):
    """The module's bytes compile as Python compiles them, with the payload only in strings and
    comments; imported from those bytes it computes, and its docstring reads exactly as the
    repr of the file name."""
    monkeypatch.chdir(hostile_modules)
    out = hostile_modules / f"m{index}.py"
    assert_inert(out.read_bytes(), markers=MARKERS)
    module = driver.import_module(out)
    close(module.M()(np.array([[1.0, -1.0]])), TINY_REF)
    src = hostile_path(hostile_modules, HOSTILE_NAMES[index], ".lyr")
    assert repr(src.name) in module.__doc__
    assert not (hostile_modules / SENTINEL).exists()


def test_hostile_modules_import_in_a_fresh_python(hostile_modules):
    """`import m0, m1, ...` in a new interpreter, as a user's program does it. (Importing runs
    the module's top level, where a payload would run; the test above calls each model.)"""
    names = [f"m{index}" for index in range(len(HOSTILE_NAMES))]
    code = f"import {', '.join(names)}\nprint([m.M.in_features for m in ({', '.join(names)},)])\n"
    env = {**os.environ, "PYTHONPATH": str(hostile_modules)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=hostile_modules,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert ast.literal_eval(done.stdout) == [2] * len(names)
    assert not (hostile_modules / SENTINEL).exists()


TINY_TESTED = TINY + f"test M {{ input = [1, -1]; expect = {lyr_vector(TINY_REF[0])} }}\n"


@pytest.mark.parametrize("name", ATTACKS)
def test_commands_that_import_the_module_run_no_payload(in_tmp, monkeypatch, capsys, name):
    """`layerc test`, `layerc run` and `layerc compile --warm` import what they compile."""
    monkeypatch.setenv("LAYERC_CACHE_DIR", str(in_tmp / "cache"))
    src = in_tmp / f"{name}.lyr"
    src.write_text(TINY_TESTED)
    (in_tmp / "x.csv").write_text("1,-1\n")
    assert cli.main(["test", str(src)]) == 0
    assert cli.main(["run", str(src), "-i", "x.csv", "-o", "y.npy"]) == 0
    close(np.load(in_tmp / "y.npy"), TINY_REF)
    assert cli.main(["compile", str(src), "-o", "warmed.py", "--warm"]) == 0
    assert_inert((in_tmp / "warmed.py").read_bytes(), markers=MARKERS)
    assert "warmed 1 model(s)" in capsys.readouterr().err
    assert not (in_tmp / SENTINEL).exists()


# Model names are identifiers, so they cannot hold a declaration or a quote; these are the
# ones nearest to it: the words of a declaration, codec names, the longest name allowed.
HOSTILE_MODEL_NAMES = ("coding", "unicode_escape", "utf_7", "latin_1", "vim", "N" * MAX_NAME_LENGTH)


def test_model_names_never_become_code(in_tmp):
    models = "".join(
        f"model {name} {{ Linear(2, 2) {{ weight = [[1, 2], [3, 4]]; bias = [0.5, -0.5] }} }}\n"
        for name in HOSTILE_MODEL_NAMES
    )
    src = in_tmp / f"x {COOKIES[0]}.lyr"
    src.write_text(models)
    driver.compile_file(src, in_tmp / "names.py")
    assert_inert((in_tmp / "names.py").read_bytes(), markers=MARKERS)
    module = driver.import_module(in_tmp / "names.py")
    assert [getattr(module, n)()._get_name() for n in module.__all__] == list(HOSTILE_MODEL_NAMES)
    for name in module.__all__:
        close(getattr(module, name)()(np.array([[1.0, -1.0]])), TINY_REF)


def test_output_folders_never_become_code(in_tmp):
    """The output's folder reaches the module only as `__file__` at run time; its own name is
    a Python module name (see tests/test_output_names.py), as is the weights file's."""
    folder = hostile_path(in_tmp, f"{PAYLOADS[0]}\n{COOKIES[0]}\u2028", "")
    folder.mkdir()
    src = in_tmp / "n.lyr"
    src.write_text(
        "model M(allow_nonfinite=true) {\n"
        "    Linear(2, 2) { weight = [[1, 2], [3, nan]]; bias = [0.5, -inf] }\n}\n"
    )
    out = folder / "n.py"
    written = driver.compile_file(src, out)[1]
    assert [p.suffix for p in written] == [".weights", ".py"]
    data = out.read_bytes()
    assert_inert(data, markers=MARKERS)
    assert os.fsencode(folder.name) not in data and SENTINEL.encode() not in data
    module = driver.import_module(out)
    expected = mlp([[1.0, -1.0]], ([[1, 2], [3, np.nan]], [0.5, -np.inf]))
    np.testing.assert_array_equal(module.M()(np.array([[1.0, -1.0]])), expected)
    assert not (in_tmp / SENTINEL).exists()


def test_load_paths_and_test_strings_never_become_code(in_tmp):
    """Payloads in load(...) paths and keys, in test blocks and in comments: the files exist,
    so the source compiles, and `layerc test` runs it."""
    folder = in_tmp / f'w"""\\{RUN}#'  # quotes, a backslash, code
    folder.mkdir()
    np.save(folder / "w.npy", np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.savez(in_tmp / "b.npz", **{f"k'{RUN2}\"": np.array([0.5, -0.5])})
    np.save(in_tmp / "x.npy", np.array([[1.0, -1.0]]))
    path = str(folder.name + "/w.npy").replace("\\", "\\\\").replace('"', '\\"')
    key = f"k'{RUN2}\"".replace("\\", "\\\\").replace('"', '\\"')
    text = (
        f'# """ {RUN}\n'
        "model M {\n"
        f'    fc = Linear(2, 2) {{ weight = load("{path}"); bias = load("b.npz", "{key}") }}\n'
        "}\n"
        f"test M {{ input = load(\"x.npy\"); expect = {lyr_matrix(TINY_REF)} }}  # ''' {RUN}\n"
    )
    module = compile_source(text, in_tmp, "p")
    src = in_tmp / "p.lyr"
    assert_inert((in_tmp / "p.py").read_bytes(), markers=MARKERS)
    close(module.M()(np.array([[1.0, -1.0]])), TINY_REF)
    _, results = driver.run_tests(src)
    assert [r.passed for r in results] == [True]
    assert not (in_tmp / SENTINEL).exists()


@pytest.mark.parametrize(
    "text, where",
    [
        ('model M { Linear(2, 2) { weight = load("a\0b") } }', "\0"),
        ('model M { Linear(2, 2) { weight = load("a\\nb") } }', "\\n"),
        ('model M { Linear(2, 2) { weight = load("a\nb") } }', '"a'),
        ('model M { Linear(2, 2) { weight = load("a\u2028b.npy") } }', "load"),
        ("model M\u2028 { Linear(2, 2) { init = uniform(seed=0) } }", "\u2028"),
        ("model M\x0c{ Linear(2, 2) { init = uniform(seed=0) } };__import__('os')", ";"),
    ],
)
def test_hostile_strings_in_the_source_are_located_errors(tmp_path, text, where):
    """Each error points at the character or call that is wrong (`where`, on line 1)."""
    src = tmp_path / "s.lyr"
    src.write_text(text, encoding="utf-8")
    with pytest.raises(LayercError) as info:
        driver.check_file(src)
    assert info.value.loc is not None
    assert (info.value.loc.line, info.value.loc.col) == (1, text.index(where) + 1)


# --------------------------------------------------------------------------- other artifacts

# An ONNX name with every trick above, and a NUL (legal in ONNX, impossible in a file name).
ONNX_PAYLOAD = f'"""+{RUN}+"""\n# {COOKIES[0]}\r\x00\u2028\x85\\\'{RUN2}'
ONNX_X = np.array([[1.0, 2.0]], dtype=np.float32)


def hostile_onnx(path: Path) -> Path:
    """Gemm + Relu whose graph, nodes, initializers, input, output and doc strings all carry
    ONNX_PAYLOAD, saved at `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    p = ONNX_PAYLOAD
    w, b = np.array([[1, 2], [3, 4]], np.float32), np.array([0.5, -0.5], np.float32)
    x, h, y = f"x{p}", f"h{p}", f"y{p}"
    nodes = [
        helper.make_node("Gemm", [x, f"W{p}", f"B{p}"], [h], name=f"gemm{p}", transB=1),
        helper.make_node("Relu", [h], [y], name=f"relu{p}", doc_string=p),
    ]
    graph = helper.make_graph(
        nodes,
        f"graph{p}",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, f"W{p}"), numpy_helper.from_array(b, f"B{p}")],
        doc_string=p,
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, doc_string=p, producer_name=p)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("name", [f"x {COOKIES[0]}", ATTACKS[0], ATTACKS[2]])
def test_onnx_names_never_become_code(in_tmp, capsys, name):
    """`layerc import` of a model whose file name and every name inside carry payloads writes
    a .lyr whose payloads are all in comments; compiled, it imports without running them and
    computes what ONNX Runtime computes."""
    from test_onnx import run_ort

    from layerc.syntax import _parser
    from layerc.tools.fmt import format_source

    onnx_path = hostile_onnx(in_tmp / f"{name}.onnx")
    assert cli.main(["import", str(onnx_path)]) == 0
    lyr = onnx_path.with_suffix(".lyr")
    text = lyr.read_text(encoding="utf-8")
    # Lines 1-2 carry no ONNX name or file name (a coding declaration there steers editors
    # and tools that honour PEP 263 as it steers Python).
    assert not any(SENTINEL in line for line in text.splitlines()[:2])
    # The ONNX names are in comments; the file name is also in load("...") strings and, its
    # letters only, in the model's name.
    types = {t.type for t in _parser().lex(text, dont_ignore=True) if SENTINEL in t}
    assert "COMMENT" in types and types <= {"COMMENT", "STRING", "NAME"}
    assert format_source(text) == text  # written by the printer fmt uses
    assert cli.main(["compile", str(lyr), "-o", "imported.py"]) == 0
    # (SENTINEL is part of the model's name here, so the marker is the payload's call.)
    assert_inert((in_tmp / "imported.py").read_bytes(), markers=("__import__",))
    module = driver.import_module(in_tmp / "imported.py")
    (cls,) = (getattr(module, n) for n in module.__all__)
    close(cls()(ONNX_X), run_ort(onnx_path, ONNX_X))
    assert not (in_tmp / SENTINEL).exists()


def test_onnx_file_names_a_lyr_string_cannot_hold_are_refused(in_tmp, capsys):
    onnx_path = hostile_onnx(in_tmp / f"{ATTACKS[1]}.onnx")
    assert cli.main(["import", str(onnx_path)]) == 1
    err = capsys.readouterr().err
    assert "a .lyr string cannot hold" in err and "Traceback" not in err
    assert sorted(p.name for p in in_tmp.iterdir()) == [onnx_path.name]


@pytest.mark.parametrize("name", [ATTACKS[1], b"q\xff\xfe" + COOKIES[0].encode()])
def test_export_names_stay_data(in_tmp, capsys, name):
    """`layerc export` from a source with a hostile file name and keyword layer names: valid
    ONNX whose names are the state_dict keys, whose doc string holds the file name's repr,
    and which ONNX Runtime runs as the module computes; imported back, it compiles inert."""
    import onnx
    from test_onnx import run_ort

    src = hostile_path(in_tmp, name, ".lyr")
    src.write_text(
        "model M {\n"
        "    import = Linear(2, 2) { weight = [[1, 2], [3, 4]]; bias = [0.5, -0.5] }\n"
        "    class = ReLU\n}\n"
    )
    assert cli.main(["export", str(src), "--onnx", "out.onnx"]) == 0
    model = onnx.load(in_tmp / "out.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert model.doc_string == f"M, compiled by layerc from {src.name!r}"
    names = [model.graph.name, *(n.name for n in model.graph.node)]
    names += [t.name for t in model.graph.initializer]
    names += [v for n in model.graph.node for v in (*n.input, *n.output)]
    assert all(n.isascii() and n.isprintable() for n in names), names
    assert sorted(t.name for t in model.graph.initializer) == ["import.bias", "import.weight"]
    driver.compile_file(src, in_tmp / "exported.py")
    net = driver.import_module(in_tmp / "exported.py").M()
    close(run_ort(in_tmp / "out.onnx", ONNX_X), net(ONNX_X))
    assert cli.main(["import", "out.onnx", "-o", "back.lyr"]) == 0
    assert cli.main(["compile", "back.lyr"]) == 0
    assert_inert((in_tmp / "back.py").read_bytes(), markers=MARKERS)
    assert not (in_tmp / SENTINEL).exists()


DOT_KEYWORDS = ("graph", "node", "edge", "digraph", "subgraph", "strict")


def test_dot_text_quotes_every_name(tmp_path):
    """Model and layer names that are DOT keywords change only the insides of DOT's quoted
    strings: the same models under plain names give the same text once the strings are
    blanked, and each string is well-formed. (graphviz's own parser, where installed.)"""
    import re
    import shutil

    from layerc.tools.graph import to_dot

    def source(inner: str, outer: str, names: tuple[str, ...]) -> str:
        a, b, c, d, e, f = names
        return (
            f"model {inner} {{\n    {a} = Linear(2, 3) {{ init = uniform(seed=0) }}\n"
            f"    {b} = ReLU\n}}\n"
            f"model {outer} {{\n    {c} = {inner}\n    {d} = Linear(3, 2) {{ init = uniform(seed=1) }}"
            f"\n    {e} = Tanh\n    {f} = Softmax\n}}\n"
        )

    string = r'"(?:[^"\\\n]|\\.)*"'
    dots = []
    for label, names in (("plain", tuple("abcdef")), ("keywords", DOT_KEYWORDS)):
        src = tmp_path / f"{label}.lyr"
        inner, outer = ("Inner", "Outer") if label == "plain" else ("node", "digraph")
        src.write_text(source(inner, outer, names))
        program, _ = driver.check_file(src)
        dot = to_dot(program.models[-1])
        assert re.sub(string, "", dot).count('"') == 0, "a quote outside a string"
        dots.append(dot)
        if shutil.which("dot"):
            done = subprocess.run(["dot", "-Tcanon"], input=dot, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
    plain, keywords = (re.sub(string, '""', dot) for dot in dots)
    assert plain == keywords
    for name in DOT_KEYWORDS:
        assert re.search(rf'"[^"]*\b{name}\b[^"]*"', dots[1]), name


def test_fmt_keeps_hostile_text_in_comments_and_strings(in_tmp):
    """`layerc fmt` keeps comments (a coding declaration on line 1, payloads, line separators
    that are no line break to layerc) and strings as they are, and the formatted source
    compiles to the same bytes."""
    from test_fmt import assert_formats_well

    folder = in_tmp / f'w"""\\{RUN}'
    folder.mkdir()
    np.save(folder / "w.npy", np.array([[1.0, 2.0], [3.0, 4.0]]))
    path = str(folder.name + "/w.npy").replace("\\", "\\\\").replace('"', '\\"')
    text = (
        f"# {COOKIES[0]}\n# {COOKIES[2]}\n"
        f'model   M {{ fc = Linear(2, 2) {{ weight = load("{path}")\n'
        f'bias = [0.5, -0.5] }}  # a\r{RUN}\r#\u2028{RUN2}\x85\x0c """\n'
        "}\n"
    )
    formatted = assert_formats_well(text, in_tmp)
    assert formatted != text
    modules = []
    for label, body in (("a", text), ("b", formatted)):
        (in_tmp / label).mkdir()
        src = in_tmp / label / "m.lyr"
        src.write_text(body, encoding="utf-8")
        (in_tmp / label / folder.name).symlink_to(folder)
        driver.compile_file(src)
        modules.append((in_tmp / label / "m.py").read_bytes())
    assert modules[0] == modules[1]
    assert_inert(modules[0], markers=MARKERS)
    assert not (in_tmp / SENTINEL).exists()


# --------------------------------------------------------------------------- faults

V1 = (
    "model M(allow_nonfinite=true) {\n"
    "    Linear(2, 2) { weight = [[1, 2], [3, nan]]; bias = [0.5, -0.5] }\n}\n"
)
V2 = V1.replace("[[1, 2], [3, nan]]", "[[5, 6], [7, nan]]")
V1_REF = mlp([[1.0, -1.0]], ([[1, 2], [3, np.nan]], [0.5, -0.5]))


def _snapshot(folder: Path) -> dict[str, str]:
    """File name -> SHA-256 of everything in `folder` but numba's and Python's caches."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


class _FailingWrites:
    """Temporary files whose name contains `name` fail to be written, with `error`: the
    compiler's own mkstemp and fdopen calls, with the file object's write replaced."""

    def __init__(self, name: str, error: OSError, monkeypatch):
        self.name, self.error, self.failing = name, error, set()
        real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen

        def mkstemp(*args, **kwargs):
            fd, path = real_mkstemp(*args, **kwargs)
            if self.name in os.path.basename(path):
                self.failing.add(fd)
            return fd, path

        def fdopen(fd, mode="r", *args, **kwargs):
            f = real_fdopen(fd, mode, *args, **kwargs)
            if fd in self.failing:
                f.write = self.fail
            return f

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "fdopen", fdopen)

    def fail(self, data):
        raise self.error


def _fault(kind: str, monkeypatch) -> str:
    """Install one failure; return the reason the error message must give."""
    if kind == "module rename fails after the weights file landed":
        real = os.replace

        def replace(src, dst):
            if str(dst).endswith(".py"):
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
            return real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        return os.strerror(errno.EIO)
    if kind.startswith("disk full"):
        name = ".weights" if "weights" in kind else ".py"
        error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _FailingWrites(name, error, monkeypatch)
        return os.strerror(errno.ENOSPC)
    if kind == "fsync fails":

        def fsync(fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", fsync)
        return os.strerror(errno.EIO)
    assert kind == "folder not writable"

    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return os.strerror(errno.EACCES)


FAULTS = [
    "module rename fails after the weights file landed",
    "disk full writing the weights file",
    "disk full writing the module",
    "fsync fails",
    "folder not writable",
]


@pytest.mark.parametrize("kind", FAULTS)
def test_a_failed_compile_leaves_earlier_output_intact(tmp_path, monkeypatch, kind):
    src, out = tmp_path / "m.lyr", tmp_path / "m.py"
    src.write_text(V1)
    driver.compile_file(src, out)
    before = _snapshot(tmp_path)
    assert len([n for n in before if n.endswith(".weights")]) == 1
    src.write_text(V2)
    with monkeypatch.context() as m:
        reason = _fault(kind, m)
        with pytest.raises(LayercError) as info:
            driver.compile_file(src, out)
    assert info.value.loc is None and info.value.file == str(out)
    assert "cannot write" in info.value.message and reason in info.value.message
    assert _snapshot(tmp_path) == {**before, "m.lyr": _snapshot(tmp_path)["m.lyr"]}
    module = driver.import_module(out)
    np.testing.assert_array_equal(module.M()(np.array([[1.0, -1.0]])), V1_REF)


def test_cli_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    src = tmp_path / "m.lyr"
    src.write_text(V1)
    with monkeypatch.context() as m:
        reason = _fault("disk full writing the module", m)
        assert cli.main(["compile", str(src)]) == 1
    err = capsys.readouterr().err
    assert err == f"{tmp_path / 'm.py'}: cannot write the module: {reason}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.lyr"]  # no orphan weights file


def test_read_only_folder(tmp_path, monkeypatch):
    """A folder the compiler may not write to: the real permission check where it applies,
    and the error the OS gives otherwise (root ignores permission bits)."""
    src = tmp_path / "m.lyr"
    src.write_text(TINY)
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o555)
    try:
        if os.access(target, os.W_OK):
            _fault("folder not writable", monkeypatch)
        with pytest.raises(LayercError, match="cannot write the module: Permission denied"):
            driver.compile_file(src, target / "m.py")
        assert list(target.iterdir()) == []
    finally:
        target.chmod(0o755)


def test_cli_output_through_a_file_is_a_one_line_error(tmp_path):
    src = tmp_path / "m.lyr"
    src.write_text(TINY)
    (tmp_path / "file.txt").write_text("")
    out = tmp_path / "file.txt" / "m.py"
    proc = subprocess.run(
        [sys.executable, "-m", "layerc.cli", "compile", str(src), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"{out}: cannot write the module: Not a directory\n"


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "folder"])
def test_sources_that_are_not_regular_files_are_refused_at_once(tmp_path, kind):
    """A .lyr path in an untrusted checkout may be a FIFO (reading it blocks forever) or a
    symlink to /dev/zero (reading it never ends)."""
    src = tmp_path / "m.lyr"
    if kind == "fifo":
        os.mkfifo(src)
    elif kind == "folder":
        src.mkdir()
    else:
        src.symlink_to(kind)
    # A hang guard, not a speed test: refusing takes microseconds, a blocked read forever.
    with time_limit(120), pytest.raises(LayercError) as info:
        driver.compile_file(src, tmp_path / "m.py")
    assert info.value.file == str(src) and info.value.loc is None
    assert "not a regular file" in info.value.message or "is a directory" in info.value.message


def test_compiling_over_the_source_is_refused(tmp_path):
    """Given as the output, or as the default output of a source named like a module."""
    for name, out in (("m.lyr", "m.lyr"), ("m.py", None)):
        src = tmp_path / name
        src.write_text(TINY)
        with pytest.raises(LayercError, match="is the source file itself"):
            driver.compile_file(src, None if out is None else tmp_path / out)
        assert src.read_text() == TINY


def test_stale_weights_files_are_removed_only_after_success(tmp_path):
    src, out = tmp_path / "m.lyr", tmp_path / "m.py"
    src.write_text(V1)
    first = driver.compile_file(src, out)[1][0]
    src.write_text(V2)
    second = driver.compile_file(src, out)[1][0]
    assert first != second and not first.exists() and second.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        ["m.lyr", "m.py", second.name]
    )


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "remove", "swap"])
def test_module_refuses_a_weights_file_that_is_not_its_own(tmp_path, damage):
    src, out = tmp_path / "m.lyr", tmp_path / "m.py"
    src.write_text(V1)
    weights = driver.compile_file(src, out)[1][0]
    data = weights.read_bytes()
    if damage == "flip a byte":
        weights.write_bytes(data[:3] + bytes([data[3] ^ 1]) + data[4:])
    elif damage == "truncate":
        weights.write_bytes(data[:-1])
    elif damage == "remove":
        weights.unlink()
    else:  # the weights of another compile under this module's file name
        other = tmp_path / "other"
        other.mkdir()
        (other / "m.lyr").write_text(V2)
        weights.write_bytes(driver.compile_file(other / "m.lyr")[1][0].read_bytes())
    with pytest.raises(ImportError, match="recompile") as info:
        driver.import_module(out)
    assert weights.name in str(info.value)


# --------------------------------------------------------------------------- call-time checks

CALL_LYR = f"""
model M {{
    fc = Linear(4, 3) {{ weight = {lyr_matrix(W43)}; bias = [0.5, -1, 0.25] }}
    ReLU
}}
model D(dtype=float64) {{
    fc = Linear(4, 3) {{ weight = {lyr_matrix(W43)}; bias = [0.5, -1, 0.25] }}
    ReLU
}}
"""
CALL_B = np.array([0.5, -1.0, 0.25])


@pytest.fixture(scope="module")
def call_module(tmp_path_factory):
    return compile_source(CALL_LYR, tmp_path_factory.mktemp("calls"), "calls")


def _matrix(array: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix still exists
        return np.matrix(array)


def _inputs() -> dict[str, object]:
    base = np.arange(-12.0, 12.0).reshape(6, 4) / 4
    big = np.arange(-24.0, 24.0).reshape(6, 8) / 4
    return {
        "list": [[1, -2, 3, 0.5]],
        "tuple 1-d": (1.0, 2.0, -3.0, 4.0),
        "strided rows": base[::2],
        "strided columns": big[:, ::2],
        "fortran": np.asfortranarray(base),
        "negative strides": base[::-1, ::-1],
        "transposed 3-d": np.ascontiguousarray(base.reshape(2, 3, 4).transpose(1, 0, 2))[:, ::-1],
        "bool": np.array([[True, False, True, True]]),
        "int8": np.array([[1, -2, 3, -4]], dtype=np.int8),
        "uint64": np.array([1, 2, 3, 4], dtype=np.uint64),
        "int64 3-d": np.arange(24).reshape(2, 3, 4) - 12,
        "float16": base.astype(np.float16),
        "big-endian": base.astype(">f8"),
        "read-only": np.frombuffer(base.astype(np.float32).tobytes(), dtype=np.float32).reshape(
            6, 4
        ),
        "matrix": _matrix(base),
        "empty batch": np.zeros((0, 4)),
    }


@pytest.mark.parametrize("model", ["M", "D"])
def test_inputs_of_every_layout_and_real_dtype_give_numpys_answer(call_module, model):
    net = getattr(call_module, model)()
    dtype = net.dtype
    for label, x in _inputs().items():
        expected = mlp(np.asarray(x, dtype=np.float64), (W43, CALL_B), "relu")
        before = np.array(x, copy=True)
        for path, f in (("call", net), ("forward", net.forward)):
            y = f(x)
            assert type(y) is np.ndarray and y.dtype == dtype, (label, path)
            close(y, expected, dtype)
            assert not np.shares_memory(y, np.asarray(x)), (label, path)
        np.testing.assert_array_equal(np.asarray(x), before, err_msg=label)  # input untouched


BAD_INPUTS = {
    "wrong last dimension": (np.ones((2, 5)), ValueError, "got shape (2, 5)"),
    "1-d of the wrong size": (np.ones(3, np.float32), ValueError, "got shape (3,)"),
    "empty 1-d": (np.zeros(0), ValueError, "got shape (0,)"),
    "0-d array": (np.array(2.0), ValueError, "got shape ()"),
    "python float": (2.0, ValueError, "got shape ()"),
    "numeric strings": (np.array(["1", "2", "3", "4"]), TypeError, "dtype <U1"),
    "a str": ("1234", TypeError, ""),
    "bytes": (b"1234", TypeError, ""),
    "complex": (np.ones(4, np.complex128), TypeError, "complex128"),
    "complex, zero imaginary": (np.ones(4, np.complex64).real + 0j, TypeError, "complex"),
    "object array": (np.array([1, 2, 3, 4], dtype=object), TypeError, "object"),
    "None": (None, TypeError, ""),
    "ragged list": ([[1, 2, 3, 4], [1, 2]], TypeError, "list"),
    "masked array": (np.ma.masked_array(np.ones(4), mask=[0, 1, 0, 0]), TypeError, "masked"),
    "datetime": (np.array(["2020-01-01"] * 4, dtype="datetime64[D]"), TypeError, "datetime64"),
}


@pytest.mark.parametrize("label", list(BAD_INPUTS))
def test_bad_inputs_raise_an_error_naming_the_expected_shape(call_module, label):
    x, error, detail = BAD_INPUTS[label]
    net = call_module.M()
    for f in (net, net.forward, net.fc):
        with pytest.raises(error) as info:
            f(x)
        message = str(info.value)
        assert "expected" in message and "(4,) or (*, 4)" in message, message
        assert detail in message
    close(net(X4), mlp(X4, (W43, CALL_B), "relu"))  # nothing broke


def test_hooks_that_modify_inputs_and_outputs_in_place_never_reach_the_weights(call_module):
    net = call_module.M()
    weights = {k: v.copy() for k, v in net.state_dict().items()}

    def double_input(module, args):
        args[0][...] *= 2  # in place, as a torch pre-hook may

    def scribble_output(module, args, output):
        output[...] = 1e9

    def feed_weights(module, args):
        return (module.weight,)  # the layer's own weight as its input

    x = X4.astype(np.float32)
    handles = [
        net.register_forward_pre_hook(double_input),
        net.fc.register_forward_hook(scribble_output),
        net.register_forward_hook(scribble_output),
    ]
    y = net(x)
    assert np.all(y == 1e9)
    np.testing.assert_array_equal(x, 2 * X4)  # the user's array was changed by their hook
    for handle in handles:
        handle.remove()
    with (
        net.fc.register_forward_pre_hook(feed_weights),
        net.fc.register_forward_hook(scribble_output),
    ):
        net(X4)
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(value.view(np.uint32), weights[key].view(np.uint32))
    close(net(X4), mlp(X4, (W43, CALL_B), "relu"))
    close(call_module.M()(X4), mlp(X4, (W43, CALL_B), "relu"))  # a new instance too
