"""`layerc build` (layerc/build.py): a model as lib<name>.so, lib<name>.a and <name>.h, used as a
C program uses them. Programs written here are compiled with the compiler the build uses and run
on inputs passed in files; their outputs must agree with outside references (the samples' torch
float64 expectations, and a NumPy float64 forward of the model's state_dict, itself checked
against torch's) and with the Python module layerc generates, on the same input, at batch sizes
that fill blocks of 64 rows, cross them and end inside one. Also: a library loaded with ctypes
by a Python that never imports NumPy or numba; the symbols each library exports and needs (nm);
two models in one program, shared and static; eight threads calling one library at once; the
return codes for bad arguments and the caller's workspace; every layer kind of
tests/test_kinds.py in float32 and float64; `--cpu`; the errors of `layerc build`, which leave
the output folder as it was; the header as C and as C++.

Each build compiles with numba in a process of its own (seconds), so the libraries are built once
for the module, on first use, and shared by its tests."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import math
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import layerc
from layerc import build, cli, driver, tools
from layerc.errors import UsageError

try:
    CC = build.find_compiler().split()
except UsageError as exc:  # the one reason to skip the whole module
    pytest.skip(f"no C compiler to build or use a library with: {exc}", allow_module_level=True)

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
BATCHES = (1, 7, 64, 65, 300)  # the library computes blocks of 64 rows
ROWS = max(BATCHES)
CFLAGS = ["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror"]
NM = shutil.which("nm")
NM_MISSING = "binutils' `nm` is not installed"
# Undefined in every shared library the C compiler links (crt's weak references).
WEAK = {
    "__cxa_finalize",
    "__gmon_start__",
    "_ITM_deregisterTMCloneTable",
    "_ITM_registerTMCloneTable",
}
RNG = np.random.default_rng(20240531)


# --------------------------------------------------------------------------- the libraries


@dataclass(frozen=True)
class Lib:
    """A built library: its folder and what a C caller needs to know of it."""

    folder: Path
    prefix: str
    dtype: type  # np.float32 or np.float64
    ins: tuple[int, ...]  # values per sample of each input
    outs: tuple[int, ...]  # and of each output

    @property
    def up(self) -> str:
        return self.prefix.upper()

    @property
    def ctype(self) -> str:
        return "float" if self.dtype == np.float32 else "double"

    @property
    def single(self) -> bool:
        return len(self.ins) == 1 and len(self.outs) == 1

    @property
    def so(self) -> Path:
        return self.folder / f"lib{self.prefix}.so"

    @property
    def a(self) -> Path:
        return self.folder / f"lib{self.prefix}.a"

    def in_macro(self, i: int) -> str:
        return f"{self.up}_IN_FEATURES" if len(self.ins) == 1 else f"{self.up}_IN{i}_FEATURES"

    def out_macro(self, i: int) -> str:
        return f"{self.up}_OUT_FEATURES" if len(self.outs) == 1 else f"{self.up}_OUT{i}_FEATURES"

    def params(self) -> tuple[list[str], list[str]]:
        """The C names of forward's pointer parameters, as the header writes them."""
        if self.single:
            return ["x"], ["y"]
        return [f"x{i}" for i in range(len(self.ins))], [f"y{i}" for i in range(len(self.outs))]


@dataclass(frozen=True)
class Sample:
    file: str
    model: str
    dtype: type
    ins: tuple[int, ...]
    outs: tuple[int, ...]


SAMPLES = {
    "mlp": Sample("mlp.lyr", "Mlp", np.float32, (8,), (3,)),
    "seed": Sample("seed.lyr", "Seed", np.float32, (4,), (3,)),
    "classifier": Sample("nested.lyr", "Classifier", np.float64, (6,), (3,)),
    "heads": Sample("residual.lyr", "Heads", np.float32, (8, 16), (4, 2)),
}

# The layer kinds of tests/test_kinds.py's CASES, spelt as there (but for the two BatchNorm1d
# without running statistics, which a library refuses: test_batch_statistics_are_refused).
WIDTH = 8


def _w(values) -> str:
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, list):
        return "[" + ", ".join(_w(v) for v in values) + "]"
    return repr(float(values))


_STATS = (
    f"running_mean = {_w(RNG.standard_normal(WIDTH))}; "
    f"running_var = {_w(RNG.uniform(0.2, 3.0, WIDTH))}"
)
_GAMMA = _w(RNG.uniform(-2.0, 2.0, WIDTH))
_AFFINE = f"weight = {_GAMMA}; bias = {_w(RNG.standard_normal(WIDTH))}"
KINDS = [
    "ReLU()", "Sigmoid()", "Tanh()", "Identity()", "LeakyReLU(0.2)", "Softmax(dim=-1)",
    "Dropout(0.3)", "AlphaDropout(p=0.1, inplace=false)", "GELU()", 'GELU(approximate="tanh")',
    "ELU()", "ELU(alpha=0.5)", "CELU()", "CELU(2.5)", "Softplus()",
    "Softplus(beta=2, threshold=5)", "Hardtanh()", "Hardtanh(-2.5, 0.5)", "SiLU()", "Mish()",
    "SELU()", "ReLU6()", "Hardsigmoid()", "Hardswish()", "LogSigmoid()", "Softsign()",
    "LogSoftmax(dim=-1)", "Hardshrink()", "Hardshrink(2.5)", "Hardshrink(lambd=0.1)",
    "Hardshrink(0)", "Hardshrink(-1.0)", "Softshrink()", "Softshrink(lambd=3)",
    "Softshrink(0.1)", "Softshrink(0.0)", "Tanhshrink()", "PReLU()", "PReLU(init=-0.1)",
    f"PReLU({WIDTH}) {{ weight = {_w(RNG.uniform(-0.5, 0.5, WIDTH))} }}",
    f"BatchNorm1d({WIDTH}) {{ {_AFFINE}; {_STATS} }}",
    f"BatchNorm1d({WIDTH}, 0.001, affine=false) {{ {_STATS} }}",
    f"BatchNorm1d(num_features={WIDTH}, bias=false) {{ weight = {_GAMMA}; {_STATS} }}",
    f"BatchNorm1d({WIDTH})",
    f"LayerNorm({WIDTH}) {{ {_AFFINE} }}",
    f"LayerNorm([{WIDTH}], eps=0.01, elementwise_affine=false)",
    f"LayerNorm({WIDTH}, bias=false) {{ weight = {_GAMMA} }}",
]  # fmt: skip


def after_linear(dtype: str, index: int) -> bool:
    """Whether the kinds model of `dtype` applies kind `index` to fc's output (folded into the
    Linear's epilogue where the kind can be) or to the input itself: every other kind, the
    other half in float64, so that each kind runs both ways across the two dtypes."""
    return (index % 2 == 0) == (dtype == "float32")


def kinds_source(dtype: str) -> str:
    """A graph model of one input and one output per kind: `k{i}(fc(x))` or `k{i}(x)`."""
    layers = [f"fc = Linear({WIDTH}, {WIDTH}) {{ init = uniform(seed=3) }}"]
    layers += [f"k{i} = {kind}" for i, kind in enumerate(KINDS)]
    outs = [f"k{i}(fc(x))" if after_linear(dtype, i) else f"k{i}(x)" for i in range(len(KINDS))]
    body = "\n".join(f"    {line}" for line in layers)
    returned = ",\n            ".join(outs)
    return (
        f"model Kinds(dtype={dtype}) {{\n{body}\n\n"
        f"    forward(x) {{\n        return {returned}\n    }}\n}}\n"
    )


class Libraries:
    """Every library the tests use, built on first use (once) into a folder of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, Lib] = {}
        self.modules: dict[Path, object] = {}
        (root / "src").mkdir()
        for dtype in ("float32", "float64"):
            (root / "src" / f"kinds_{dtype}.lyr").write_text(kinds_source(dtype), encoding="utf-8")

    def source(self, key: str) -> tuple[Path, str]:
        """The .lyr file and model of `key` (a sample, `kinds-<dtype>`, or `<sample>@<cpu>`)."""
        key = key.split("@")[0]
        if key.startswith("kinds-"):
            return self.root / "src" / f"kinds_{key.removeprefix('kinds-')}.lyr", "Kinds"
        return SAMPLES_DIR / SAMPLES[key].file, SAMPLES[key].model

    def __getitem__(self, key: str) -> Lib:
        if key not in self.built:
            path, name = self.source(key)
            cpu = key.split("@")[1] if "@" in key else "native"
            program, _ = driver.check_file(path)
            model = tools.pick_model(program, name, str(path))
            folder = self.root / key.replace("@", "-")
            library = build.build(program, model, folder, cpu=cpu)
            assert sorted(p.name for p in library.files) == sorted(
                [f"lib{library.prefix}.so", f"lib{library.prefix}.a", f"{library.prefix}.h"]
            )
            lib = Lib(
                folder,
                library.prefix,
                np.dtype(model.dtype).type,
                tuple(math.prod(s) for s in model.in_shapes),
                tuple(math.prod(s) for s in model.out_shapes),
            )
            sample = SAMPLES.get(key.split("@")[0])
            if sample is not None:
                assert (lib.prefix, lib.dtype, lib.ins, lib.outs) == (
                    sample.model.lower(),
                    sample.dtype,
                    sample.ins,
                    sample.outs,
                )
            self.built[key] = lib
        return self.built[key]

    def net(self, key: str):
        """An instance of `key`'s model from the Python module layerc generates."""
        path, name = self.source(key)
        if path not in self.modules:
            self.modules[path] = layerc.load(path)
        return getattr(self.modules[path], name)()


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libraries]:
    """The libraries, and the generated Python modules in a cache of the tests' own."""
    root = tmp_path_factory.mktemp("build")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAYERC_CACHE_DIR", str(root / "cache"))
        yield Libraries(root)


# --------------------------------------------------------------------------- references


@functools.cache
def sample_data(key: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """ROWS samples of each input of `key` in float64 (the sample's own inputs first, then
    random ones, the same in every test), and torch's float64 outputs for the first of them."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))

    def load(name: str) -> np.ndarray:
        return np.load(SAMPLES_DIR / name).astype(np.float64)

    if key == "mlp":
        given = [np.concatenate([load("mlp_sample.npy")[None], load("mlp_input.npy")])]
        expect = [np.concatenate([load("mlp_sample_expect.npy")[None], load("mlp_expect.npy")])]
    elif key == "seed":  # small whole numbers: every product and sum is exact in float32
        given = [np.array([[1.0, 2.0, 3.0, 4.0]])]
        expect = [np.array([[30.0, 40.0, 50.0]])]
        rest = rng.integers(-9, 10, (ROWS - 1, 4)).astype(np.float64)
        return [np.concatenate([given[0], rest])], expect
    elif key == "classifier":
        given, expect = [load("nested_input.npy")], [load("nested_expect.npy")]
    else:
        given = [load("residual_x.npy"), load("residual_mask.npy")]
        expect = [load("residual_cls_expect.npy"), load("residual_reg_expect.npy")]
    rows = ROWS - len(given[0])
    rest = [rng.standard_normal((rows, g.shape[1])) * 1.5 for g in given]
    if key == "heads":
        rest[1] = rng.uniform(0.0, 1.0, rest[1].shape).round(1)  # a mask of weights
    return [np.concatenate([g, r]) for g, r in zip(given, rest, strict=True)], expect


def numpy_forward(key: str, state: dict[str, np.ndarray], xs: list[np.ndarray]) -> list:
    """`key`'s forward in NumPy float64, from its state_dict."""
    sd = {k: np.asarray(v, np.float64) for k, v in state.items()}

    def linear(h: np.ndarray, name: str) -> np.ndarray:
        out = h @ sd[f"{name}.weight"].T
        return out + sd[f"{name}.bias"] if f"{name}.bias" in sd else out

    def relu(h: np.ndarray) -> np.ndarray:
        return np.maximum(h, 0.0)

    x = np.asarray(xs[0], np.float64)
    if key == "mlp":
        return [linear(relu(linear(relu(linear(x, "fc1")), "fc2")), "fc3")]
    if key == "seed":
        return [x @ np.array([[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]], np.float64).T]
    if key == "classifier":
        z = linear(relu(linear(np.tanh(linear(x, "enc.fc")), "head")), "out")
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return [z / z.sum(axis=-1, keepdims=True)]
    e = linear(x, "embed")
    mean = e.mean(axis=-1, keepdims=True)
    norm = (e - mean) / np.sqrt(((e - mean) ** 2).mean(axis=-1, keepdims=True) + 1e-5)
    norm = norm * sd["block.norm.weight"] + sd["block.norm.bias"]
    a = linear(norm, "block.fc1")
    gelu = 0.5 * a * (1.0 + np.vectorize(math.erf)(a / math.sqrt(2.0)))
    h = (e + linear(gelu, "block.fc2")) * np.asarray(xs[1], np.float64)
    return [linear(h, "cls"), linear(np.concatenate([e, h], axis=-1), "reg")]


def tolerance(dtype: type) -> dict[str, float]:
    """For outputs against the Python module (on the same input) and a float64 reference."""
    if dtype == np.float64:
        return {"rtol": 1e-12, "atol": 1e-12}
    return {"rtol": 1e-5, "atol": 1e-6}


def python_outputs(libs: Libraries, key: str, xs: list[np.ndarray]) -> list[np.ndarray]:
    result = libs.net(key)(*xs)
    return list(result) if isinstance(result, tuple) else [result]


def check_outputs(libs: Libraries, key: str, xs: list[np.ndarray], outs: list[np.ndarray]) -> None:
    """`outs`, a library's outputs on the float32/float64 inputs `xs`, against the Python module
    on `xs`, NumPy's float64 forward, and torch's expectations for the rows that have them."""
    lib = libs[key]
    base = key.split("@")[0]
    module = python_outputs(libs, key, xs)
    state = libs.net(key).state_dict()
    numpy = numpy_forward(base, state, xs)
    _, expect = sample_data(base)
    for i, out in enumerate(outs):
        assert out.dtype == lib.dtype and out.shape == module[i].shape
        np.testing.assert_allclose(out, module[i], **tolerance(lib.dtype))
        np.testing.assert_allclose(out, numpy[i], **tolerance(lib.dtype))
        rows = min(len(out), len(expect[i]))
        np.testing.assert_allclose(out[:rows], expect[i][:rows], **tolerance(lib.dtype))


@pytest.mark.parametrize("key", list(SAMPLES))
def test_numpy_reference_is_torchs(libs: Libraries, key: str) -> None:
    """The NumPy float64 forward the libraries are checked against computes, on the samples'
    inputs, what torch computed for them."""
    xs, expect = sample_data(key)
    ours = numpy_forward(key, libs.net(key).state_dict(), [x[: len(expect[0])] for x in xs])
    for mine, theirs in zip(ours, expect, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- C programs


def compile_program(
    source: str,
    folder: Path,
    name: str,
    libraries: list[Lib],
    static: bool = False,
    compiler: list[str] | None = None,
    flags: tuple[str, ...] = (),
) -> Path:
    """`source` compiled and linked against `libraries` (their .so, found through the rpath,
    or their .a), with warnings as errors."""
    suffix = ".cc" if compiler else ".c"
    src = folder / f"{name}{suffix}"
    src.write_text(source, encoding="utf-8")
    exe = folder / name
    command = [*(compiler or [*CC, *CFLAGS])]
    command += [f"-I{lib.folder}" for lib in libraries] + [str(src), "-o", str(exe), *flags]
    for lib in libraries:
        if static:
            command.append(str(lib.a))
        else:
            command += [f"-L{lib.folder}", f"-l{lib.prefix}", f"-Wl,-rpath,{lib.folder}"]
    command.append("-lm")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stderr}"
    return exe


C_HELPERS = """\
#define GUARD 64 /* bytes past each output that forward must leave alone */

static void *load(const char *path, size_t bytes)
{
    void *data = malloc(bytes + 1);
    FILE *f = fopen(path, "rb");
    if (data == NULL || f == NULL || fread(data, 1, bytes, f) != bytes) {
        fprintf(stderr, "cannot read %s\\n", path);
        exit(20);
    }
    fclose(f);
    return data;
}

static void *output(size_t bytes)
{
    unsigned char *data = malloc(bytes + GUARD);
    if (data == NULL) exit(21);
    memset(data, 0xA5, bytes + GUARD);
    return data;
}

static void save(const char *path, const void *data, size_t bytes)
{
    const unsigned char *tail = (const unsigned char *)data + bytes;
    for (int i = 0; i < GUARD; i++) {
        if (tail[i] != 0xA5) {
            fprintf(stderr, "%s: forward wrote past the n samples\\n", path);
            exit(22);
        }
    }
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\\n", path);
        exit(23);
    }
}
"""

C_HEAD = """\
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
"""


def run_program(libraries: list[Lib]) -> str:
    """A program that runs each of `libraries` on the same n samples: `prog N`, then for each
    library its input files and its output files (raw values, C order). Each output has a
    guard after it that forward must not touch."""
    lines = [C_HEAD, *[f'#include "{lib.prefix}.h"' for lib in libraries], "", C_HELPERS]
    argc = 2 + sum(len(lib.ins) + len(lib.outs) for lib in libraries)
    lines += [
        "int main(int argc, char **argv)",
        "{",
        f"    if (argc != {argc}) return 2;",
        "    int64_t n = atoll(argv[1]);",
        "    int arg = 2;",
    ]
    for lib in libraries:
        xs, ys = lib.params()
        t = lib.ctype
        lines.append("    {")
        for i, x in enumerate(xs):
            size = f"(size_t)n * {lib.in_macro(i)} * sizeof({t})"
            lines.append(f"        const {t} *{x} = load(argv[arg++], {size});")
        for i, y in enumerate(ys):
            lines.append(
                f"        {t} *{y} = output((size_t)n * {lib.out_macro(i)} * sizeof({t}));"
            )
        call = ", ".join([*xs, *ys, "n"])
        lines += [
            f"        int code = {lib.prefix}_forward({call});",
            f"        if (code != {lib.up}_OK) {{",
            f'            fprintf(stderr, "{lib.prefix}_forward: %d\\n", code);',
            "            return 10;",
            "        }",
        ]
        for i, y in enumerate(ys):
            lines.append(
                f"        save(argv[arg++], {y}, (size_t)n * {lib.out_macro(i)} * sizeof({t}));"
            )
        lines.append("    }")
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def run(
    exe: Path, folder: Path, n: int, jobs: list[tuple[Lib, list[np.ndarray]]]
) -> list[list[np.ndarray]]:
    """Run `exe` on n samples of each library's inputs (written to files in `folder`), giving
    each library's outputs as read back."""
    args = [str(exe), str(n)]
    outputs = []
    for j, (lib, xs) in enumerate(jobs):
        for i, x in enumerate(xs):
            path = folder / f"in{j}_{i}_{n}.bin"
            np.ascontiguousarray(x[:n], dtype=lib.dtype).tofile(path)
            args.append(str(path))
        paths = [folder / f"out{j}_{i}_{n}.bin" for i in range(len(lib.outs))]
        args += [str(p) for p in paths]
        outputs.append((lib, paths))
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"exit code {done.returncode}: {done.stderr}"
    return [
        [
            np.fromfile(p, dtype=lib.dtype).reshape(n, f)
            for p, f in zip(paths, lib.outs, strict=True)
        ]
        for lib, paths in outputs
    ]


def inputs(key: str, dtype: type) -> list[np.ndarray]:
    return [x.astype(dtype) for x in sample_data(key)[0]]


@pytest.fixture(scope="module")
def programs(libs: Libraries, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """For each sample, `run_program` of its library alone (built on first use)."""
    folder = tmp_path_factory.mktemp("programs")

    class Programs(dict):
        def __missing__(self, key: str) -> Path:
            self[key] = compile_program(
                run_program([libs[key]]), folder, f"run_{key.replace('@', '_')}", [libs[key]]
            )
            return self[key]

    return Programs()


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("key", list(SAMPLES))
def test_c_program_computes_the_model(
    libs: Libraries, programs: dict[str, Path], tmp_path: Path, key: str, n: int
) -> None:
    """A C program linked against the sample's library computes, for n samples (one block, the
    end of one, a whole one, one past, several), what torch, NumPy's float64 forward and the
    Python module compute, and writes nothing past the n samples."""
    lib = libs[key]
    xs = [x[:n] for x in inputs(key, lib.dtype)]
    (outs,) = run(programs[key], tmp_path, n, [(lib, xs)])
    check_outputs(libs, key, xs, outs)
    if key == "seed":  # the lesson: whole numbers, computed exactly
        np.testing.assert_array_equal(outs[0], numpy_forward("seed", {}, xs)[0])
        assert outs[0][0].tolist() == [30.0, 40.0, 50.0]


# --------------------------------------------------------------------------- ctypes


CTYPES_SCRIPT = r"""
import array, ctypes, json, sys

job = json.load(sys.stdin)
code = "f" if job["ctype"] == "float" else "d"
scalar = ctypes.c_float if code == "f" else ctypes.c_double
lib = ctypes.CDLL(job["so"])
forward = getattr(lib, job["prefix"] + "_forward")
ports = len(job["inputs"]) + len(job["outs"])
forward.argtypes = [ctypes.POINTER(scalar)] * ports + [ctypes.c_int64]
forward.restype = ctypes.c_int
size = getattr(lib, job["prefix"] + "_workspace_size")
size.argtypes, size.restype = [], ctypes.c_size_t
n = job["n"]
xs = [(scalar * len(x))(*x) for x in job["inputs"]]
ys = [(scalar * (n * f))() for f in job["outs"]]
status = forward(*xs, *ys, n)
assert status == 0, status
for y, want in zip(ys, job["expect"]):
    got = array.array(code, bytes(y)).tolist()
    assert len(got) == len(want), (len(got), len(want))
    for a, b in zip(got, want):
        assert abs(a - b) <= job["atol"] + job["rtol"] * abs(b), (a, b)
assert "numpy" not in sys.modules and "numba" not in sys.modules, sorted(sys.modules)
print("ok", size())
"""


@pytest.mark.parametrize("key", list(SAMPLES))
def test_ctypes_without_numpy_or_numba(libs: Libraries, key: str) -> None:
    """A Python process that never imports NumPy or numba loads the library with ctypes, runs
    it on 65 samples and gets the float64 reference's numbers: the library needs neither."""
    lib = libs[key]
    n = 65
    xs = [x[:n] for x in inputs(key, lib.dtype)]
    expect = numpy_forward(key, libs.net(key).state_dict(), xs)
    job = {
        "so": str(lib.so),
        "prefix": lib.prefix,
        "ctype": lib.ctype,
        "n": n,
        "inputs": [x.ravel().tolist() for x in xs],
        "outs": list(lib.outs),
        "expect": [e.ravel().tolist() for e in expect],
        **tolerance(lib.dtype),
    }
    assert isolated_python(CTYPES_SCRIPT, job).startswith("ok ")


def isolated_python(script: str, job: dict[str, object]) -> str:
    """What `script` prints, run by `python -I` (isolated from the environment and from the
    tests' folder; the scripts check that NumPy and numba were never imported) with `job` as
    JSON on its stdin; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", script],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# --------------------------------------------------------------------------- symbols


def nm(*args: str) -> list[tuple[str, str]]:
    """(type, name) of each symbol `nm ARGS` lists, the version (`@GLIBC_2.27`) dropped."""
    assert NM is not None
    done = subprocess.run([NM, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) < 2 or line.endswith(":"):
            continue  # a blank line, or an archive member's name
        out.append((fields[-2], fields[-1].split("@")[0]))
    return out


@functools.cache
def in_c_library(name: str) -> bool:
    """Whether the C library or libm defines `name` (dlsym searches each and what it needs)."""
    for library in ("c", "m"):
        found = ctypes.util.find_library(library)
        if found and hasattr(ctypes.CDLL(found), name):
            return True
    return False


@pytest.mark.skipif(NM is None, reason=NM_MISSING)
@pytest.mark.parametrize("key", [*SAMPLES, "kinds-float32", "kinds-float64"])
def test_symbols(libs: Libraries, key: str) -> None:
    """The shared library exports its three functions, all `<prefix>_`, and needs only the C
    library's and libm's symbols (and the weak ones every shared library has); in the static
    library every global symbol starts with the prefix too, and what it leaves undefined is
    its own or the C library's."""
    lib = libs[key]
    exported = {name for _, name in nm("-D", "--defined-only", str(lib.so))}
    assert exported == {f"{lib.prefix}_{f}" for f in ("forward", "forward_ws", "workspace_size")}
    needed = {name for _, name in nm("-D", "--undefined-only", str(lib.so))} - WEAK
    assert all(in_c_library(name) for name in needed), needed
    defined = nm("-g", "--defined-only", str(lib.a))
    assert defined and all(name.startswith(f"{lib.prefix}_") for _, name in defined), defined
    own = {name for _, name in defined}
    undefined = {name for _, name in nm("-g", "--undefined-only", str(lib.a))} - own
    assert all(in_c_library(name) for name in undefined), undefined
    readelf = shutil.which("readelf")
    if readelf:
        dynamic = subprocess.run([readelf, "-d", str(lib.so)], capture_output=True, text=True)
        libraries = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic.stdout))
        assert libraries <= {"libc.so.6", "libm.so.6"}, libraries


# --------------------------------------------------------------------------- two models


@pytest.mark.parametrize("static", [False, True], ids=["shared", "static"])
def test_two_models_in_one_program(libs: Libraries, tmp_path: Path, static: bool) -> None:
    """Mlp (a pipeline) and Heads (a graph of two inputs and two outputs) link into one
    program, through both shared libraries or both static ones, and each computes its model."""
    mlp, heads = libs["mlp"], libs["heads"]
    exe = compile_program(run_program([mlp, heads]), tmp_path, "two", [mlp, heads], static)
    if static and NM is not None:  # the models are in the program, not loaded from elsewhere
        symbols = {name for kind, name in nm(str(exe)) if kind == "T"}
        assert {"mlp_forward", "heads_forward"} <= symbols
    n = 65
    x_mlp = [x[:n] for x in inputs("mlp", np.float32)]
    x_heads = [x[:n] for x in inputs("heads", np.float32)]
    outs_mlp, outs_heads = run(exe, tmp_path, n, [(mlp, x_mlp), (heads, x_heads)])
    check_outputs(libs, "mlp", x_mlp, outs_mlp)
    check_outputs(libs, "heads", x_heads, outs_heads)


# --------------------------------------------------------------------------- large weights

WIDE = """\
model Wide {
    fc1 = Linear(784, 256) { init = uniform(seed=1) }
    ReLU()
    fc2 = Linear(256, 128) { init = uniform(seed=2) }
    ReLU()
    fc3 = Linear(128, 10) { init = uniform(seed=3) }
}
"""

# Run with `python -I` (no NumPy, no numba): load the library, find the buffer its constructor
# filled (the address of the local symbol `<prefix>__layerc_weights`: the library's base in
# /proc/self/maps plus the offset nm gives), and print its mapping as /proc/self/smaps shows
# it, with the kernel's count of huge pages that could not be had, before and after the load.
HUGE_SCRIPT = r"""
import ctypes, json, sys

job = json.load(sys.stdin)

def fallbacks():
    for line in open("/proc/vmstat"):
        if line.startswith("thp_fault_fallback "):
            return int(line.split()[1])
    return 0

before = fallbacks()
lib = ctypes.CDLL(job["so"])
after = fallbacks()
base = min(
    int(line.split("-")[0], 16)
    for line in open("/proc/self/maps")
    if line.rstrip().endswith(job["so"])
)
address = base + job["offset"]
mapping, fields = None, {}
for line in open("/proc/self/smaps"):
    head = line.split()
    if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
        start, end = (int(v, 16) for v in head[0].split("-"))
        mapping = head if start <= address < end else None
        if mapping:
            fields = {"start": start, "end": end, "perms": head[1]}
    elif mapping and head[0] == "AnonHugePages:":
        fields["huge_kb"] = int(head[1])
fields["address"] = address
fields["fallbacks"] = after - before
scalar = ctypes.c_float
forward = getattr(lib, job["prefix"] + "_forward")
forward.argtypes = [ctypes.POINTER(scalar)] * 2 + [ctypes.c_int64]
x = (scalar * len(job["x"]))(*job["x"])
y = (scalar * job["outs"])()
assert forward(x, y, len(job["x"]) // job["ins"]) == 0
fields["y"] = list(y)
assert "numpy" not in sys.modules and "numba" not in sys.modules
print(json.dumps(fields))
"""


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Lib, object]:
    """The MLP 784-256-128-10 (0.94 MB of float32 weights, over build.HOT_MIN) as a library,
    and an instance of its Python module's model."""
    folder = tmp_path_factory.mktemp("wide")
    path = folder / "wide.lyr"
    path.write_text(WIDE, encoding="utf-8")
    program, _ = driver.check_file(path)
    model = tools.pick_model(program, "Wide", str(path))
    library = build.build(program, model, folder / "lib")
    lib = Lib(folder / "lib", library.prefix, np.float32, (784,), (10,))
    return lib, layerc.load(path).Wide()


def wide_reference(net: object, x: np.ndarray) -> np.ndarray:
    sd = {k: np.asarray(v, np.float64) for k, v in net.state_dict().items()}  # type: ignore[attr-defined]
    h = np.asarray(x, np.float64)
    for name, relu in (("fc1", True), ("fc2", True), ("fc3", False)):
        h = h @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]
        h = np.maximum(h, 0.0) if relu else h
    return h


def transparent_huge_pages() -> str:
    """The system's setting for transparent huge pages (always, madvise, never), "" if none."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""
    chosen = re.search(r"\[(\w+)\]", text)
    return chosen.group(1) if chosen else ""


@pytest.mark.skipif(NM is None, reason=NM_MISSING)
@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/smaps is Linux's")
def test_large_weights_are_read_from_a_read_only_buffer_of_huge_pages(
    wide: tuple[Lib, object], libs: Libraries
) -> None:
    """A model whose weights reach build.HOT_MIN keeps them, once loaded, in a buffer aligned
    to a huge page and a whole number of them long, read-only, and backed by huge pages where
    the system gives them (its setting is not `never`, and the kernel reports no huge page it
    could not give at the load); the library computes the model from there. A small model's
    library has no such buffer."""
    lib, net = wide
    listed = subprocess.run(
        [NM, "--defined-only", str(lib.so)], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    symbols = {
        name: (kind, int(address, 16))
        for address, kind, name in (line.split() for line in listed if "layerc_weights" in line)
    }
    assert {name: kind for name, (kind, _) in symbols.items()} == {
        f"{lib.prefix}__layerc_weights": "b",  # zeroed, filled as the library loads
        f"{lib.prefix}__layerc_weights_data": "r",  # the weights themselves
    }
    offset = symbols[f"{lib.prefix}__layerc_weights"][1]
    x = np.random.default_rng(5).standard_normal((3, 784)).astype(np.float32)
    job = {"so": str(lib.so), "prefix": lib.prefix, "offset": offset, "ins": 784,
           "outs": 30, "x": x.ravel().tolist()}  # fmt: skip
    found = json.loads(isolated_python(HUGE_SCRIPT, job))
    assert found["address"] % build.HUGE_PAGE == 0
    assert found["start"] <= found["address"] and found["end"] - found["address"] >= build.HUGE_PAGE
    assert found["perms"].startswith("r-"), found  # read-only once filled
    if transparent_huge_pages() in ("always", "madvise") and found["fallbacks"] == 0:
        assert found["huge_kb"] >= build.HUGE_PAGE // 1024, found
    y = np.array(found["y"], np.float32).reshape(3, 10)
    np.testing.assert_allclose(y, np.asarray(net(x)), rtol=1e-5, atol=1e-6)  # type: ignore[operator]
    np.testing.assert_allclose(y, wide_reference(net, x), rtol=1e-5, atol=1e-6)
    small = libs["seed"]
    assert not [name for _, name in nm(str(small.so)) if "layerc_weights" in name]


@pytest.mark.parametrize("static", [False, True], ids=["shared", "static"])
def test_large_weights_in_a_c_program(
    wide: tuple[Lib, object], tmp_path: Path, static: bool
) -> None:
    """A C program linked against the large model's shared or static library (whose
    constructor must then run at the program's start) computes the model."""
    lib, net = wide
    exe = compile_program(run_program([lib]), tmp_path, "wide", [lib], static)
    x = np.random.default_rng(6).standard_normal((65, 784)).astype(np.float32)
    ((y,),) = run(exe, tmp_path, 65, [(lib, [x])])
    np.testing.assert_allclose(y, np.asarray(net(x)), rtol=1e-5, atol=1e-6)  # type: ignore[operator]
    np.testing.assert_allclose(y, wide_reference(net, x), rtol=1e-5, atol=1e-6)


EARLY_PROGRAM = """\
#include <stdio.h>
#include "{prefix}.h"

static float x[{ins}], y[{outs}];
static int code = -1;

/* A constructor of the program's own, which runs before main, as C++ statics do. */
__attribute__((constructor)) static void early(void)
{{
    for (int i = 0; i < {ins}; i++) x[i] = (float)((i % 7) - 3) / 4.0f;
    code = {prefix}_forward(x, y, 1);
}}

int main(void)
{{
    if (code != 0) return 3;
    for (int i = 0; i < {outs}; i++) printf("%.9g\\n", y[i]);
    return 0;
}}
"""


def test_large_weights_are_ready_for_a_static_programs_own_constructors(
    wide: tuple[Lib, object], tmp_path: Path
) -> None:
    """A program linked with the static archive that calls the model from a constructor of its
    own (as a C++ static's initialiser would, before main) gets the model's outputs: the
    library's constructor, which fills the weights' buffer, runs first (its priority is 101)."""
    lib, net = wide
    source = EARLY_PROGRAM.format(prefix=lib.prefix, ins=784, outs=10)
    exe = compile_program(source, tmp_path, "early", [lib], static=True)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    y = np.array(done.stdout.split(), np.float32)
    x = (np.arange(784) % 7 - 3).astype(np.float32) / 4
    np.testing.assert_allclose(y, np.asarray(net(x)), rtol=1e-5, atol=1e-6)  # type: ignore[operator]
    np.testing.assert_allclose(y, wide_reference(net, x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- threads


def threads_program(lib: Lib) -> str:
    """8 threads, each calling forward (half of them forward_ws, with a workspace of their own)
    ROUNDS times on an input of its own (the n samples rotated), all started at once; each
    result must equal, byte for byte, that of a single-threaded call made before. Writes the
    outputs of the unrotated input; prints the mismatches and failed calls."""
    xs, ys = lib.params()
    t = lib.ctype
    n_in, n_out = len(xs), len(ys)
    ins = ", ".join(lib.in_macro(i) for i in range(n_in))
    outs = ", ".join(lib.out_macro(i) for i in range(n_out))
    args = [f"j->x[{i}]" for i in range(n_in)] + [f"j->y[{i}]" for i in range(n_out)]
    refs = [f"j->x[{i}]" for i in range(n_in)] + [f"j->expect[{i}]" for i in range(n_out)]
    return "\n".join(
        [C_HEAD, "#include <pthread.h>", f'#include "{lib.prefix}.h"', "", C_HELPERS]
    ) + textwrap.dedent(f"""
        #define THREADS 8
        #define ROUNDS 1000
        typedef {t} real;
        static const size_t IN[{n_in}] = {{{ins}}};
        static const size_t OUT[{n_out}] = {{{outs}}};
        static int64_t n;
        static pthread_barrier_t start;

        typedef struct {{
            real *x[{n_in}], *y[{n_out}], *expect[{n_out}];
            void *workspace;
            int mismatches, failures;
        }} job;

        static void *work(void *arg)
        {{
            job *j = arg;
            pthread_barrier_wait(&start);
            for (int r = 0; r < ROUNDS; r++) {{
                for (int o = 0; o < {n_out}; o++) memset(j->y[o], 0xFF, n * OUT[o] * sizeof(real));
                int code = j->workspace
                    ? {lib.prefix}_forward_ws({", ".join(args)}, n, j->workspace)
                    : {lib.prefix}_forward({", ".join(args)}, n);
                if (code != {lib.up}_OK) j->failures++;
                for (int o = 0; o < {n_out}; o++)
                    if (memcmp(j->y[o], j->expect[o], n * OUT[o] * sizeof(real)) != 0)
                        j->mismatches++;
            }}
            return NULL;
        }}

        int main(int argc, char **argv)
        {{
            if (argc != {2 + n_in + n_out}) return 2;
            n = atoll(argv[1]);
            real *given[{n_in}];
            for (int i = 0; i < {n_in}; i++)
                given[i] = load(argv[2 + i], n * IN[i] * sizeof(real));
            job jobs[THREADS];
            size_t size = ({lib.prefix}_workspace_size() + 63) / 64 * 64;
            for (int t = 0; t < THREADS; t++) {{
                job *j = &jobs[t];
                j->mismatches = j->failures = 0;
                j->workspace = t % 2 ? aligned_alloc(64, size ? size : 64) : NULL;
                for (int i = 0; i < {n_in}; i++) {{
                    j->x[i] = malloc(n * IN[i] * sizeof(real));
                    for (int64_t s = 0; s < n; s++)  /* sample s of thread t: (s + 11 t) mod n */
                        memcpy(j->x[i] + s * IN[i], given[i] + (s + 11 * t) % n * IN[i],
                               IN[i] * sizeof(real));
                }}
                for (int o = 0; o < {n_out}; o++) {{
                    j->y[o] = malloc(n * OUT[o] * sizeof(real));
                    j->expect[o] = output(n * OUT[o] * sizeof(real));
                }}
                if ({lib.prefix}_forward({", ".join(refs)}, n) != {lib.up}_OK) return 10;
            }}
            for (int o = 0; o < {n_out}; o++)
                save(argv[2 + {n_in} + o], jobs[0].expect[o], n * OUT[o] * sizeof(real));
            pthread_t threads[THREADS];
            pthread_barrier_init(&start, NULL, THREADS);
            for (int t = 0; t < THREADS; t++)
                if (pthread_create(&threads[t], NULL, work, &jobs[t]) != 0) return 11;
            int mismatches = 0, failures = 0;
            for (int t = 0; t < THREADS; t++) {{
                pthread_join(threads[t], NULL);
                mismatches += jobs[t].mismatches;
                failures += jobs[t].failures;
            }}
            printf("%d mismatches, %d failures\\n", mismatches, failures);
            return 0;
        }}
        """)


def test_threads_call_one_library_at_once(libs: Libraries, tmp_path: Path) -> None:
    """Eight threads run Heads at once, 1000 times each on inputs of their own (150 samples:
    blocks of 64 and a part), through forward and forward_ws: every result is the
    single-threaded one, byte for byte, and that one is the model's."""
    lib = libs["heads"]
    exe = compile_program(threads_program(lib), tmp_path, "threads", [lib], flags=("-pthread",))
    n = 150
    xs = [x[:n] for x in inputs("heads", np.float32)]
    args = [str(exe), str(n)]
    for i, x in enumerate(xs):
        x.tofile(tmp_path / f"x{i}.bin")
        args.append(str(tmp_path / f"x{i}.bin"))
    args += [str(tmp_path / f"y{i}.bin") for i in range(len(lib.outs))]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "0 mismatches, 0 failures\n"
    outs = [
        np.fromfile(tmp_path / f"y{i}.bin", np.float32).reshape(n, f)
        for i, f in enumerate(lib.outs)
    ]
    check_outputs(libs, "heads", xs, outs)


# --------------------------------------------------------------------------- bad arguments


def arguments_program(lib: Lib) -> str:
    """Prints `name code` for forward and forward_ws given NULL pointers, a negative n, n = 0,
    no workspace; and whether forward_ws with a workspace of its own (filled with 0xFF bytes)
    gives forward's outputs, byte for byte, on 100 samples."""
    xs, ys = lib.params()
    t = lib.ctype
    ports = xs + ys
    sizes = [lib.in_macro(i) for i in range(len(xs))] + [lib.out_macro(i) for i in range(len(ys))]
    lines = [
        C_HEAD,
        f'#include "{lib.prefix}.h"',
        "",
        "int main(void)",
        "{",
        "    int64_t n = 100;",
    ]
    for p, size in zip(ports, sizes, strict=True):
        lines.append(f"    {t} *{p} = calloc((size_t)n * {size}, sizeof({t}));")
    for i, x in enumerate(xs):
        lines.append(
            f"    for (int64_t k = 0; k < n * {sizes[i]}; k++) {x}[k] = ({t})(k % 13) / 4 - 1.5;"
        )
    fw, ws = f"{lib.prefix}_forward", f"{lib.prefix}_forward_ws"

    def call(function: str, pointers: list[str], n: str, *rest: str) -> str:
        return f"{function}({', '.join([*pointers, n, *rest])})"

    nulls = ["NULL"] * len(ports)
    for p in ports:
        with_null = [q if q != p else "NULL" for q in ports]
        lines.append(f'    printf("null_{p} %d\\n", {call(fw, with_null, "2")});')
        lines.append(f'    printf("ws_null_{p} %d\\n", {call(ws, with_null, "2", "NULL")});')
    lines += [
        f'    printf("negative %d\\n", {call(fw, ports, "-1")});',
        f'    printf("negative_null %d\\n", {call(fw, nulls, "-1")});',
        f'    printf("zero_null %d\\n", {call(fw, nulls, "0")});',
        f'    printf("ws_zero_null %d\\n", {call(ws, nulls, "0", "NULL")});',
        f'    printf("ws_negative %d\\n", {call(ws, ports, "-5", "NULL")});',
        f'    printf("ws_no_workspace %d\\n", {call(ws, ports, "n", "NULL")});',
        f'    printf("size %zu\\n", {lib.prefix}_workspace_size());',
        f"    size_t size = ({lib.prefix}_workspace_size() + 63) / 64 * 64;",
        "    void *workspace = aligned_alloc(64, size ? size : 64);",
        "    memset(workspace, 0xFF, size ? size : 64);",
    ]
    mine = [f"{y}_ws" for y in ys]
    for y, size in zip(ys, sizes[len(xs) :], strict=True):
        lines.append(f"    {t} *{y}_ws = calloc((size_t)n * {size}, sizeof({t}));")
    lines += [
        f'    printf("forward %d\\n", {call(fw, ports, "n")});',
        f'    printf("ws_forward %d\\n", {call(ws, xs + mine, "n", "workspace")});',
        "    int same = 1;",
    ]
    for y, size in zip(ys, sizes[len(xs) :], strict=True):
        lines.append(
            f"    same = same && memcmp({y}, {y}_ws, (size_t)n * {size} * sizeof({t})) == 0;"
        )
        lines.append(f"    same = same && {y}[0] == {y}[0];  /* a number */")
    lines += ['    printf("same %d\\n", same);', "    return 0;", "}", ""]
    return "\n".join(lines)


@pytest.mark.parametrize("key", ["mlp", "seed", "heads"])
def test_bad_arguments(libs: Libraries, tmp_path: Path, key: str) -> None:
    """Each NULL pointer with n > 0 is ERR_NULL, n < 0 is ERR_N (before the pointers are looked
    at), n = 0 is OK whatever the pointers; forward_ws without a workspace is ERR_WORKSPACE when
    it needs one (Mlp and Heads keep values between layers; Seed's one Linear does not) and
    computes otherwise; with an aligned workspace of its own it computes forward's numbers."""
    lib = libs[key]
    exe = compile_program(arguments_program(lib), tmp_path, "arguments", [lib])
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    codes = {
        name: int(value) for name, value in (line.split() for line in done.stdout.splitlines())
    }
    ok, null, bad_n, no_ws = 0, 1, 2, 3
    xs, ys = lib.params()
    for p in xs + ys:
        assert codes[f"null_{p}"] == null and codes[f"ws_null_{p}"] == null, p
    assert codes["negative"] == codes["negative_null"] == codes["ws_negative"] == bad_n
    assert codes["zero_null"] == codes["ws_zero_null"] == ok
    needs = key != "seed"
    assert (codes["size"] > 0) == needs
    assert codes["ws_no_workspace"] == (no_ws if needs else ok)
    assert codes["forward"] == codes["ws_forward"] == ok and codes["same"] == 1
    header = (lib.folder / f"{lib.prefix}.h").read_text(encoding="utf-8")
    for name, value in (("OK", ok), ("ERR_NULL", null), ("ERR_N", bad_n), ("ERR_WORKSPACE", no_ws)):
        assert f"#define {lib.up}_{name} {value} " in header


# --------------------------------------------------------------------------- every kind


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_kind(libs: Libraries, dtype: str) -> None:
    """A graph model with one output per layer kind of tests/test_kinds.py (each applied to the
    input, or to a Linear's output and folded into it where it folds; the other way round in
    the other dtype) builds into one library, which computes, on 65 samples of moderate
    values, each output the Python module computes."""
    key = f"kinds-{dtype}"
    lib = libs[key]
    assert lib.ins == (WIDTH,) and lib.outs == (WIDTH,) * len(KINDS)
    n = 65
    x = (np.random.default_rng(7).standard_normal((n, WIDTH)) * 2).astype(lib.dtype)
    expected = python_outputs(libs, key, [x])
    loaded = ctypes.CDLL(str(lib.so))
    forward = loaded.kinds_forward
    forward.argtypes = [ctypes.c_void_p] * (1 + len(KINDS)) + [ctypes.c_int64]
    forward.restype = ctypes.c_int
    outs = [np.full((n, WIDTH), np.nan, lib.dtype) for _ in KINDS]
    assert forward(x.ctypes.data, *[y.ctypes.data for y in outs], n) == 0
    wrong = []
    for i, (kind, out, want) in enumerate(zip(KINDS, outs, expected, strict=True)):
        assert np.isfinite(want).all(), kind
        if not np.allclose(out, want, **tolerance(lib.dtype)):
            where = "after Linear" if after_linear(dtype, i) else "alone"
            wrong.append(f"{kind} ({where}): max error {np.abs(out - want).max()}")
    assert not wrong, wrong


# --------------------------------------------------------------------------- --cpu


def host_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(match.group(1).split()) if match else set()


def disassembly(path: Path) -> str | None:
    objdump = shutil.which("objdump")
    if objdump is None or platform.machine() not in ("x86_64", "AMD64"):
        return None
    return subprocess.run([objdump, "-d", str(path)], capture_output=True, text=True).stdout


def test_cpu_generic(libs: Libraries, programs: dict[str, Path], tmp_path: Path) -> None:
    """`--cpu generic` builds code without AVX (no ymm or zmm register in it on x86-64) that
    computes the model."""
    key = "mlp@generic"
    lib = libs[key]
    code = disassembly(lib.so)
    if code is not None:
        assert "%ymm" not in code and "%zmm" not in code
    n = 65
    xs = [x[:n] for x in inputs("mlp", np.float32)]
    (outs,) = run(programs[key], tmp_path, n, [(lib, xs)])
    check_outputs(libs, key, xs, outs)


def test_cpu_x86_64_v3(libs: Libraries, programs: dict[str, Path], tmp_path: Path) -> None:
    """`--cpu x86-64-v3` builds AVX2 code (ymm registers), which computes the model where the
    CPU has AVX2 and FMA."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"x86-64-v3 is an x86-64 CPU; this machine is {platform.machine()}")
    key = "mlp@x86-64-v3"
    lib = libs[key]
    code = disassembly(lib.so)
    if code is not None:
        assert "%ymm" in code
    missing = {"avx2", "fma", "bmi2"} - host_flags()
    if missing:
        pytest.skip(f"built, not run: this CPU lacks {', '.join(sorted(missing))}")
    n = 300
    xs = [x[:n] for x in inputs("mlp", np.float32)]
    (outs,) = run(programs[key], tmp_path, n, [(lib, xs)])
    check_outputs(libs, key, xs, outs)


# --------------------------------------------------------------------------- errors


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes); {} when there is no folder."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def layerc_build(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["build", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cpu_bogus_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An unknown --cpu is a usage error that names every choice, and writes nothing."""
    out_dir = tmp_path / "out"
    code, out, err = layerc_build(
        capsys, str(SAMPLES_DIR / "seed.lyr"), "--cpu", "bogus", "-o", str(out_dir)
    )
    assert (code, out) == (2, "")
    assert "bogus" in err and "Traceback" not in err
    for choice in build.CPUS:
        assert choice in err
    assert not out_dir.exists()


def test_no_c_compiler(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without $CC and with no compiler on PATH, the build is a usage error (exit code 2) that
    says what to install, and writes nothing."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CC", raising=False)
    out_dir = tmp_path / "out"
    code, out, err = layerc_build(capsys, str(SAMPLES_DIR / "seed.lyr"), "-o", str(out_dir))
    assert (code, out) == (2, "")
    assert err.startswith("layerc build: error: ") and "Traceback" not in err
    assert "C compiler" in err and "install" in err and "gcc" in err
    assert not out_dir.exists()


BATCH_STATISTICS = """\
model Seed {
    fc = Linear(4, 8) { init = uniform(seed=0) }
    bn = BatchNorm1d(8, track_running_stats=false)
}
"""


@pytest.fixture
def previous(libs: Libraries, tmp_path: Path) -> Path:
    """A folder holding Seed's library, as an earlier build left it."""
    folder = tmp_path / "out"
    folder.mkdir()
    lib = libs["seed"]
    for name in ("libseed.so", "libseed.a", "seed.h"):
        shutil.copyfile(lib.folder / name, folder / name)
    return folder


def test_batch_statistics_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, previous: Path
) -> None:
    """A BatchNorm1d without running statistics (its output depends on the whole call) is an
    error at the layer, `file:line:col: ...` (exit code 1), and the library of the same name
    in the output folder stays as it was."""
    source = tmp_path / "stats.lyr"
    source.write_text(BATCH_STATISTICS, encoding="utf-8")
    before = files_in(previous)
    code, out, err = layerc_build(capsys, str(source), "-o", str(previous))
    assert (code, out) == (1, "")
    first = err.splitlines()[0]
    assert re.match(rf"{re.escape(str(source))}:3:\d+: cannot build layer 'bn'", first), err
    assert "track_running_stats=false" in first and "Traceback" not in err
    assert "BatchNorm1d(8, track_running_stats=false)" in err  # the source line
    assert files_in(previous) == before


def test_failed_build_leaves_the_previous_library(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    previous: Path,
) -> None:
    """A build that fails once the kernels are compiled (the C compiler fails) is an error
    (exit code 1) that shows the compiler's message, and leaves the library it was to replace
    byte for byte as it was, with nothing beside it."""
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'no, not today' >&2\nexit 1\n", encoding="utf-8")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    before = files_in(previous)
    code, out, err = layerc_build(capsys, str(SAMPLES_DIR / "seed.lyr"), "-o", str(previous))
    assert (code, out) == (1, "")
    assert "failed" in err and "no, not today" in err and "Traceback" not in err
    assert files_in(previous) == before


# --------------------------------------------------------------------------- the header


def declarations_program(libraries: list[Lib], expected: dict[str, Sample]) -> str:
    """A C/C++ source that checks each header's sizes and prototypes at compile time (function
    pointers of the exact types) and calls each library on n = 0 and on one sample."""
    lines = [
        "#include <stdio.h>",
        *[f'#include "{lib.prefix}.h"' for lib in libraries],
        "#ifdef __cplusplus",
        "#define CHECK(c) static_assert(c, #c)",
        "#else",
        "#define CHECK(c) _Static_assert(c, #c)",
        "#endif",
        "",
        "int main(void)",
        "{",
        "    int failures = 0;",
    ]
    for lib, sample in zip(libraries, expected.values(), strict=True):
        t, p = lib.ctype, lib.prefix
        xs, ys = lib.params()
        for i, f in enumerate(sample.ins):
            lines.append(f"    CHECK({lib.in_macro(i)} == {f});")
        for i, f in enumerate(sample.outs):
            lines.append(f"    CHECK({lib.out_macro(i)} == {f});")
        for name, value in (("OK", 0), ("ERR_NULL", 1), ("ERR_N", 2), ("ERR_WORKSPACE", 3),
                            ("ERR_INTERNAL", 4)):  # fmt: skip
            lines.append(f"    CHECK({lib.up}_{name} == {value});")
        pointers = [f"const {t} *"] * len(xs) + [f"{t} *"] * len(ys)
        lines += [
            f"    int (*{p}_f)({', '.join([*pointers, 'int64_t'])}) = {p}_forward;",
            f"    int (*{p}_ws)({', '.join([*pointers, 'int64_t', 'void *'])}) = {p}_forward_ws;",
            f"    size_t (*{p}_size)(void) = {p}_workspace_size;",
        ]
        for i, x in enumerate(xs):
            lines.append(f"    {t} {p}_{x}[{lib.in_macro(i)}] = {{0}};")
        for i, y in enumerate(ys):
            lines.append(f"    {t} {p}_{y}[{lib.out_macro(i)}] = {{0}};")
        args = ", ".join(f"{p}_{q}" for q in xs + ys)
        lines += [
            f"    failures += {p}_f({args}, 1) != {lib.up}_OK;",
            f"    failures += {p}_f({', '.join(['NULL'] * len(xs + ys))}, 0) != {lib.up}_OK;",
            f"    (void){p}_ws;",
            f"    (void){p}_size();",
            f'    printf("{p}");',
        ]
        for i, y in enumerate(ys):
            lines.append(f"    for (int i = 0; i < {lib.out_macro(i)}; i++)")
            lines.append(f'        printf(" %.9g", (double){p}_{y}[i]);')
        lines.append('    printf("\\n");')
    lines += ["    return failures;", "}", ""]
    return "\n".join(lines)


@pytest.mark.parametrize("language", ["c", "c++"])
def test_headers_declare_what_callers_use(libs: Libraries, tmp_path: Path, language: str) -> None:
    """The four samples' headers together in one C file, or one C++ file (g++ or c++): the
    sizes, the return codes and the three functions with their exact types; linked against
    the four libraries (extern "C" in C++), each computes its model on one sample of zeros."""
    if language == "c":
        compiler = None
    else:
        found = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
        if found is None:
            pytest.skip("no C++ compiler (g++, c++ or clang++) to compile the headers as C++")
        compiler = [found, "-std=c++11", "-Wall", "-Wextra", "-Werror"]
    keys = list(SAMPLES)
    libraries = [libs[key] for key in keys]
    exe = compile_program(
        declarations_program(libraries, SAMPLES), tmp_path, "declarations", libraries,
        compiler=compiler,
    )  # fmt: skip
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    printed = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    for key, lib in zip(keys, libraries, strict=True):
        zeros = [np.zeros((1, f), lib.dtype) for f in lib.ins]
        want = np.concatenate([o.ravel() for o in python_outputs(libs, key, zeros)])
        got = np.array([float(v) for v in printed[lib.prefix].split()])
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)
