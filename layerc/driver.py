"""The compiler driver: a .lyr path in, a checked program, a generated module written atomically,
or test results out. It strings the stages together (syntax -> check -> lower -> codegen) and
owns every file the compiler writes; it never prints (the CLI does)."""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import itertools
import keyword
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from . import codegen, ir, lower, syntax
from .check import check
from .errors import LayercError, UsageError
from .files import (
    Inputs,
    WriteFailed,
    forget_numba_source_hashes,
    read_regular,
    refuse_inputs,
    unlink_quietly,
    write_atomically,
)
from .runtime.portable import content_key


def check_file(path: Path) -> tuple[ir.Program, str]:
    """Parse and check a .lyr file; return the program and the source text."""
    display = str(path)
    text = syntax.decode_source(read_regular(path, display, what="a .lyr file"), display)
    return check(syntax.parse(text, display), path.parent), text


def inputs_of(program: ir.Program) -> Inputs:
    """The files `program` was read from, each with what it is, for `refuse_inputs`: a command
    never writes its output over its source or a file the source loads."""
    if not program.inputs:
        return ()
    source, *loaded = program.inputs
    return ((source, "the source file"), *((p, f"the file {p.name!r} it loads") for p in loaded))


def default_output(path: Path) -> Path:
    return path.with_suffix(".py")


def module_name_for(out: Path) -> str:
    return out.stem


# The longest module name `compile` writes. numba names each cached kernel
# `<module>.<kernel>-<line>.pyXY.<n>.nbc` (plus `.tmp.<16 hex>` while writing), and the kernel of
# a model is `_forward_<model>`: with check.MAX_NAME_LENGTH that stays under the 255 bytes a
# file name may have, with room to spare.
MAX_MODULE_NAME = 64


def safe_module_name(stem: str) -> str:
    """`stem` made a module name layerc writes: characters other than ASCII letters, digits and
    '_' become '_', a leading digit gets `model_` before it, and the result is cut to
    MAX_MODULE_NAME characters."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", stem) or "model"
    if name[0].isdigit():
        name = "model_" + name
    return name[:MAX_MODULE_NAME]


def check_output_name(out: Path) -> None:
    """Refuse to write a module that `import` could not load under its name, or that would
    shadow (or be shadowed by) a module Python can already import: a `UsageError` that names
    the output and says what to write instead."""
    name = module_name_for(out)
    problem = _module_name_problem(name, out)
    if problem is None:
        return
    suffixes = ("", "_model", *(f"_model{n}" for n in range(2, 10)))
    base = safe_module_name(name)[: MAX_MODULE_NAME - len(suffixes[-1])]
    for suffix in suffixes:  # each one that fails is the name of yet another module
        suggestion = base + suffix
        if _module_name_problem(suggestion, out.with_name(f"{suggestion}.py")) is None:
            break
    raise UsageError(
        f"cannot write the module {out}: {problem}; write -o {out.with_name(suggestion + '.py')}"
    )


def _module_name_problem(name: str, out: Path) -> str | None:
    """Why a module named `name` written to `out` would not work, or None."""
    if out.suffix != ".py":
        return "Python imports a module only from a file whose name ends in .py"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or keyword.iskeyword(name):
        return (
            f"{name!r} is not a Python module name (ASCII letters, digits and '_', not starting "
            "with a digit, not a keyword), so `import` cannot load it"
        )
    if name.startswith("__") and name.endswith("__"):
        return f"{name!r} is a name Python reserves for itself"
    if len(name) > MAX_MODULE_NAME:
        return f"its name is longer than {MAX_MODULE_NAME} characters"
    if name in sys.stdlib_module_names or name in sys.builtin_module_names:
        return f"it would shadow the standard library's module {name!r}"
    other = _importable_elsewhere(name, out)
    if other is not None:
        return f"it would shadow the module {name!r} that Python imports from {other}"
    return None


def _importable_elsewhere(name: str, out: Path) -> str | None:
    """Where Python finds a module or package `name` other than `out` itself: on sys.path
    (each entry on its own, so that `out` found first does not hide a package further on),
    beside `out`, or through an import hook; None when nowhere. The current folder counts
    only as the output's folder: it is on sys.path only when Python was started with -m or
    -c, and `layerc` and `python -m layerc` must agree."""
    from importlib.machinery import PathFinder

    target = out.resolve()
    folder = target.parent

    def elsewhere(spec: object, in_folder: bool) -> str | None:
        origin = getattr(spec, "origin", None)
        locations = list(getattr(spec, "submodule_search_locations", None) or [])
        if origin in (None, "namespace"):
            # A plain folder: `out` beside it wins over it, but hides it anywhere else.
            return None if in_folder or not locations else locations[0]
        return None if Path(origin).resolve() == target else str(origin)

    try:
        cwd: Path | None = Path.cwd().resolve()
    except OSError:
        cwd = None
    for entry in [str(folder), *sys.path]:
        try:
            where = Path(entry or ".").resolve()
            if where == cwd and where != folder:
                continue
            spec = PathFinder.find_spec(name, [entry or "."])
            found = elsewhere(spec, where == folder) if spec else None
        except (ImportError, OSError, ValueError):
            continue
        if found is not None:
            return found
    for finder in sys.meta_path:
        if finder is PathFinder or not hasattr(finder, "find_spec"):
            continue
        try:
            spec = finder.find_spec(name, None)
        except Exception:  # an import hook of the environment; its trouble is not ours
            continue
        found = elsewhere(spec, False) if spec else None
        if found is not None:
            return found
    return None


def generate(program: ir.Program, out: Path) -> codegen.Output:
    return codegen.generate(program, module_name_for(out))


def plan_text(program: ir.Program) -> str:
    """The lowering stage's plan for `program`, as text: what the generated module will run,
    and why (which layers fuse, which BLAS path, which buffers)."""
    return lower.lower(program, codegen.MODULE_GLOBALS).text()


# --------------------------------------------------------------------------- writing


def write_output(out: Path, output: codegen.Output, inputs: Inputs = ()) -> list[Path]:
    """Write the module and its weights file (if any) atomically, the weights file (named by
    its content hash) renamed into place before the module that refers to it; neither may be
    one of `inputs`. A failure is a `LayercError` naming the file, and leaves earlier output
    intact: a weights file this call created for a module it then could not write is removed
    again. Return the paths written."""
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise LayercError(f"cannot write {out}: it is a directory", file=str(out))
    files = [(out, output.source.encode("utf-8"))]
    created = None
    if output.data is not None and output.data_name is not None:
        weights = folder / output.data_name
        created = None if weights.exists() else weights
        files.insert(0, (weights, output.data))
    try:
        write_atomically(files, inputs)
    except WriteFailed as exc:
        if created is not None and exc.target == out:
            unlink_quietly(created)
        what = "the module" if exc.target == out else f"its weights file {exc.target.name}"
        raise LayercError(f"cannot write {what}: {exc.reason}", file=str(out)) from None
    _remove_stale_weights(out, output.data_name)
    return [target for target, _ in files]


def _remove_stale_weights(out: Path, keep: str | None) -> None:
    """Remove weights files that earlier compiles of this module left behind."""
    pattern = re.compile(re.escape(out.stem) + r"\.[0-9a-f]{16}\.weights")
    try:
        entries = list(out.parent.iterdir()) if str(out.parent) else list(Path(".").iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name != keep and pattern.fullmatch(entry.name):
            unlink_quietly(entry)


def compile_file(path: Path, out: Path | None = None) -> tuple[ir.Program, list[Path]]:
    """`layerc compile`: check `path`, generate, write to `out` (default: beside the source)."""
    program, _ = check_file(path)
    out = out if out is not None else default_output(path)
    refuse_inputs([out], inputs_of(program))  # before naming: writing over an input is worse
    check_output_name(out)
    return program, write_output(out, generate(program, out), inputs_of(program))


# --------------------------------------------------------------------------- loading and tests

_counter = itertools.count()


def import_module(path: Path, name: str | None = None) -> ModuleType:
    """Import a generated module from its path (registered in sys.modules, so it pickles)."""
    name = name or f"_layerc_generated_{next(_counter)}_{safe_module_name(path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    forget_numba_source_hashes()  # the file may have been rewritten since numba last read it
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def cache_root() -> Path:
    """Where compiled models are kept between runs: $LAYERC_CACHE_DIR, else
    $XDG_CACHE_HOME/layerc, else ~/.cache/layerc. Safe to delete at any time."""
    if os.environ.get("LAYERC_CACHE_DIR"):
        return Path(os.environ["LAYERC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "layerc"


def import_cached(stem: str, output: codegen.Output) -> ModuleType:
    """Import the generated module `output` (named `stem`.py) from the per-user cache, writing
    it there first when missing: `layerc run`, `layerc.load` and the unpickling of a model
    (layerc.runtime.portable) all come here. Folders are named by a hash of the generated code
    and its weights, so an edited source gets a new folder and numba's on-disk cache beside each
    module stays valid, and the module's name is fixed by the same hash: numba's cache is keyed
    by the import name, and a process that needs the same model again reuses the module it
    already imported. Where the cache cannot be written, a temporary folder is used instead."""
    key = content_key(output.source, output.data)
    name = f"_layerc_run_{key}_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    try:
        folder = cache_root() / "run" / key
        folder.mkdir(parents=True, exist_ok=True)
        out = _write_if_changed(folder / f"{stem}.py", output)
    except (OSError, LayercError):
        folder = Path(tempfile.mkdtemp(prefix="layerc-run-"))
        atexit.register(shutil.rmtree, folder, True)
        out = _write_if_changed(folder / f"{stem}.py", output)
    return import_module(out, name)


def _write_if_changed(out: Path, output: codegen.Output) -> Path:
    try:
        current: bytes | None = read_regular(out, str(out))
    except LayercError:
        current = None
    data_ok = output.data_name is None or (out.parent / output.data_name).is_file()
    if current != output.source.encode("utf-8") or not data_ok:
        write_output(out, output)
    return out


def load(path: str | os.PathLike[str]) -> ModuleType:
    """`layerc.load`: check the .lyr file at `path` and return its generated module, imported
    (one class per model, as attributes). The module is written to the per-user cache that
    `layerc run` uses, in a folder named by a hash of the generated code and its weights, so
    numba's on-disk cache beside it serves the kernels compiled by earlier processes; loading an
    unchanged source again in the same process returns the same module. Errors in the source
    are `LayercError`s whose text is `file:line:col: message`."""
    from .tools.run import load_module

    source = Path(os.fspath(path))
    program, _ = check_file(source)
    return load_module(program, source)


@dataclass(frozen=True)
class Mismatch:
    """One output element outside its test's tolerance."""

    index: tuple[int, ...]
    got: float
    expected: float
    abs_error: float
    rel_error: float


# How many of a failing test's elements `layerc test` shows.
WORST_SHOWN = 5


@dataclass(frozen=True)
class OutputResult:
    """How one output of a test compares with its expectation."""

    output: np.ndarray  # what the model gave
    expect: np.ndarray
    max_abs: float
    max_rel: float
    passed: bool
    failures: int = 0  # elements outside the tolerance
    worst: tuple[Mismatch, ...] = ()  # the furthest outside it, worst first


@dataclass(frozen=True)
class TestResult:
    """A test block's outcome: one `OutputResult` per output of the model, in return order
    (`outputs[i]` for the model's output i + 1 of n). The largest errors and the verdict are
    over every output; `output`, `failures` and `worst` are a one-output model's."""

    test: ir.TestCase
    outputs: tuple[OutputResult, ...]
    # Set when the model did not give as many outputs as the test expects (no output compared).
    problem: str | None = None
    # A quantised model's outputs against the same model without quantisation.
    quantization: QuantizationError | None = None

    @property
    def passed(self) -> bool:
        return self.problem is None and all(o.passed for o in self.outputs)

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=math.inf)

    @property
    def max_rel(self) -> float:
        return max((o.max_rel for o in self.outputs), default=math.inf)

    @property
    def output(self) -> np.ndarray:
        return self.outputs[0].output

    @property
    def failures(self) -> int:
        return sum(o.failures for o in self.outputs)

    @property
    def worst(self) -> tuple[Mismatch, ...]:
        return self.outputs[0].worst if len(self.outputs) == 1 else ()


def _errors(output: np.ndarray, expect: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elementwise absolute error, |expect| (0 where not finite) and relative error of two
    arrays of one shape. NaN matches NaN and an infinity the same infinity; any other
    non-finite pair is an infinite error."""
    out = output.astype(np.float64)
    exact = (np.isnan(out) & np.isnan(expect)) | (np.isinf(out) & (out == expect))
    finite = np.isfinite(out) & np.isfinite(expect)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(out - expect), np.where(exact, 0.0, np.inf))
    scale = np.where(np.isfinite(expect), np.abs(expect), 0.0)
    rel = np.divide(diff, scale, out=np.where(diff > 0, np.inf, 0.0), where=scale > 0)
    return diff, scale, rel


def compare(
    output: np.ndarray, expect: np.ndarray, atol: float, rtol: float
) -> tuple[float, float, bool]:
    """Largest absolute and relative error, and whether |out - expect| <= atol + rtol*|expect|
    everywhere (NaN matches NaN; the shapes must agree)."""
    if output.shape != expect.shape:
        return math.inf, math.inf, False
    diff, scale, rel = _errors(output, expect)
    ok = bool(np.all(diff <= atol + rtol * scale))
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float(rel.max()) if rel.size else 0.0
    return max_abs, max_rel, ok


def worst_elements(
    output: np.ndarray, expect: np.ndarray, atol: float, rtol: float, count: int = WORST_SHOWN
) -> tuple[int, tuple[Mismatch, ...]]:
    """How many elements are outside |out - expect| <= atol + rtol*|expect|, and the `count` of
    them furthest outside (the most times their tolerance off), worst first; ties in index
    order. Nothing when the shapes differ."""
    if output.shape != expect.shape:
        return 0, ()
    diff, scale, rel = _errors(output, expect)
    allowed = atol + rtol * scale
    bad = np.flatnonzero(diff > allowed)
    if not bad.size:
        return 0, ()
    with np.errstate(divide="ignore", invalid="ignore"):
        times = np.where(allowed.ravel()[bad] > 0, diff.ravel()[bad] / allowed.ravel()[bad], np.inf)
    chosen = bad[np.argsort(-times, kind="stable")[:count]]
    worst = []
    for flat in chosen:
        index = tuple(int(i) for i in np.unravel_index(flat, output.shape))
        worst.append(
            Mismatch(
                index,
                float(output[index]),
                float(expect[index]),
                float(diff[index]),
                float(rel[index]),
            )
        )
    return int(bad.size), tuple(worst)


def check_outputs(test: ir.TestCase, returned: object) -> TestResult:
    """Compare what a model returned for `test` (an array for a model of one output, a tuple
    of arrays for one of several) with the test's expectations, output by output."""
    expects = test.expects
    if len(expects) == 1:
        got: tuple[object, ...] = (returned,)
    elif isinstance(returned, (tuple, list)):
        got = tuple(returned)
    else:
        got = (returned,)
    if len(got) != len(expects):
        return TestResult(
            test, (), f"the model gave {len(got)} output(s), the test expects {len(expects)}"
        )
    outputs = []
    for value, expect in zip(got, expects, strict=True):
        output = np.asarray(value)
        max_abs, max_rel, ok = compare(output, expect, test.atol, test.rtol)
        failures, worst = worst_elements(output, expect, test.atol, test.rtol)
        outputs.append(OutputResult(output, expect, max_abs, max_rel, ok, failures, worst))
    return TestResult(test, tuple(outputs))


@dataclass(frozen=True)
class QuantizationError:
    """How far a quantised model's outputs are from the same model's without quantisation, over
    every output: the largest absolute difference, and that over the largest float output."""

    max_abs: float
    relative: float

    @staticmethod
    def of(quantized: tuple[np.ndarray, ...], floats: tuple[np.ndarray, ...]) -> QuantizationError:
        diff = max(
            (
                float(np.max(np.abs(q - f), initial=0.0))
                for q, f in zip(quantized, floats, strict=True)
            ),
            default=0.0,
        )
        scale = max((float(np.max(np.abs(f), initial=0.0)) for f in floats), default=0.0)
        return QuantizationError(diff, diff / scale if scale else diff)

    def text(self) -> str:
        return (
            f"int8 against the float model: max abs error {self.max_abs:.3g}, relative error "
            f"{self.relative:.3g} (max |difference| / max |float output|)"
        )


def _as_outputs(returned: object) -> tuple[np.ndarray, ...]:
    if isinstance(returned, (tuple, list)):
        return tuple(np.asarray(r, dtype=np.float64) for r in returned)
    return (np.asarray(returned, dtype=np.float64),)


class _Compiled:
    """The classes of `program`, compiled into `folder` and imported as the module `name`
    (removed from sys.modules on `close`), by model name."""

    def __init__(self, program: ir.Program, folder: Path, name: str) -> None:
        out = folder / f"{name}.py"
        write_output(out, generate(program, out))
        self.module = import_module(out)
        self.classes = {}
        for attr in self.module.__all__:
            cls = getattr(self.module, attr)
            self.classes[getattr(cls, "_name", cls.__name__)] = cls
        self.instances: dict[str, object] = {}

    def net(self, model: str) -> object:
        return self.instances.setdefault(model, self.classes[model]())

    def close(self) -> None:
        sys.modules.pop(self.module.__name__, None)


def run_tests(path: Path) -> tuple[ir.Program, list[TestResult]]:
    """`layerc test`: compile into a temporary folder, import, run every test block: the model
    is called with the test's inputs in forward order, `net(*test.inputs)`, and each output is
    compared with its expectation. A quantised model's outputs are also compared with the same
    model's without quantisation (`TestResult.quantization`)."""
    program, _ = check_file(path)
    if not program.tests:
        return program, []
    with tempfile.TemporaryDirectory(prefix="layerc-test-") as tmp:
        stem = safe_module_name(path.stem)
        compiled = _Compiled(program, Path(tmp), stem)
        floats = None
        if any(ir.quantized(test.model) for test in program.tests):
            floats = _Compiled(ir.unquantized(program), Path(tmp), f"{stem}_float")
        results = []
        for test in program.tests:
            returned = compiled.net(test.model.name)(*test.inputs)  # type: ignore[operator]
            result = check_outputs(test, returned)
            if floats is not None and ir.quantized(test.model):
                plain = floats.net(test.model.name)(*test.inputs)  # type: ignore[operator]
                error = QuantizationError.of(_as_outputs(returned), _as_outputs(plain))
                result = dataclasses.replace(result, quantization=error)
            results.append(result)
        compiled.close()
        if floats is not None:
            floats.close()
    return program, results


SUMMARY_SAMPLES = 256  # seeded standard-normal samples a quantised model's summary measures


def quantization_error(
    path: Path, program: ir.Program, model: ir.Model
) -> tuple[QuantizationError, int]:
    """`layerc summary` of a quantised model: its outputs against the same model's without
    quantisation, on the inputs of its test blocks, or without any on SUMMARY_SAMPLES seeded
    standard-normal samples; and how many samples."""
    tests = [t for t in program.tests if t.model.name == model.name]
    if tests:
        inputs = [tuple(t.inputs) for t in tests]
    else:
        rng = np.random.default_rng(0)
        inputs = [
            tuple(
                rng.standard_normal((SUMMARY_SAMPLES, *shape)).astype(model.dtype)
                for shape in model.in_shapes
            )
        ]
    quantized: list[np.ndarray] = []
    floats: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="layerc-summary-") as tmp:
        stem = safe_module_name(path.stem)
        compiled = _Compiled(program, Path(tmp), stem)
        plain = _Compiled(ir.unquantized(program), Path(tmp), f"{stem}_float")
        for xs in inputs:
            quantized += _as_outputs(compiled.net(model.name)(*xs))  # type: ignore[operator]
            floats += _as_outputs(plain.net(model.name)(*xs))  # type: ignore[operator]
        compiled.close()
        plain.close()
    samples = sum(len(xs[0]) if xs[0].ndim > len(model.in_shapes[0]) else 1 for xs in inputs)
    return QuantizationError.of(tuple(quantized), tuple(floats)), samples
