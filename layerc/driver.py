"""The compiler driver: a .lyr path in, a checked program, a generated module written atomically,
or test results out. It strings the stages together (syntax -> check -> lower -> codegen) and
owns every file the compiler writes; it never prints (the CLI does)."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import re
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from . import codegen, ir, lower, syntax
from .check import check
from .errors import LayercError
from .files import WriteFailed, forget_numba_source_hashes, unlink_quietly, write_atomically


def check_file(path: Path) -> tuple[ir.Program, str]:
    """Parse and check a .lyr file; return the program and the source text."""
    display = str(path)
    text = syntax.decode_source(_read_source(path, display), display)
    program = syntax.parse(text, display)
    return check(program, path.parent), text


def _read_source(path: Path, display: str) -> bytes:
    """The bytes of a .lyr file. Only a regular file is read: a FIFO or a device (a symlink to
    /dev/zero in an untrusted checkout) would hang the compiler or never end."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise LayercError("is a directory, not a .lyr file", file=display) from None
    except OSError as exc:
        raise LayercError(f"cannot read the file: {exc.strerror}", file=display) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise LayercError("is a directory, not a .lyr file", file=display)
        raise LayercError(
            "is not a regular file (a device, pipe or socket), so layerc will not read it",
            file=display,
        )
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read()
        except OSError as exc:
            raise LayercError(f"cannot read the file: {exc.strerror}", file=display) from None


def default_output(path: Path) -> Path:
    return path.with_suffix(".py")


def module_name_for(out: Path) -> str:
    return out.stem


def generate(program: ir.Program, out: Path) -> codegen.Output:
    return codegen.generate(program, module_name_for(out))


def plan_text(program: ir.Program) -> str:
    """The lowering stage's plan for `program`, as text: what the generated module will run,
    and why (which layers fuse, which BLAS path, which buffers)."""
    return lower.lower(program, codegen.MODULE_GLOBALS).text()


# --------------------------------------------------------------------------- writing


def write_output(out: Path, output: codegen.Output) -> list[Path]:
    """Write the module and its weights file (if any) atomically, the weights file (named by
    its content hash) renamed into place before the module that refers to it. A failure is a
    `LayercError` naming the file, and leaves earlier output intact: a weights file this call
    created for a module it then could not write is removed again. Return the paths written."""
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
        write_atomically(files)
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
    if out.exists() and path.exists() and out.samefile(path):
        raise LayercError(f"the output {out} is the source file itself", file=str(path))
    return program, write_output(out, generate(program, out))


# --------------------------------------------------------------------------- loading and tests

_counter = itertools.count()


def import_module(path: Path, name: str | None = None) -> ModuleType:
    """Import a generated module from its path (registered in sys.modules, so it pickles)."""
    name = name or f"_layerc_generated_{next(_counter)}_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
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


@dataclass(frozen=True)
class TestResult:
    test: ir.TestCase
    output: np.ndarray
    max_abs: float
    max_rel: float
    passed: bool


def compare(
    output: np.ndarray, expect: np.ndarray, atol: float, rtol: float
) -> tuple[float, float, bool]:
    """Largest absolute and relative error, and whether |out - expect| <= atol + rtol*|expect|
    everywhere (NaN matches NaN; the shapes must agree)."""
    if output.shape != expect.shape:
        return math.inf, math.inf, False
    out = output.astype(np.float64)
    exact = (np.isnan(out) & np.isnan(expect)) | (np.isinf(out) & (out == expect))
    finite = np.isfinite(out) & np.isfinite(expect)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(out - expect), np.where(exact, 0.0, np.inf))
    scale = np.where(np.isfinite(expect), np.abs(expect), 0.0)
    ok = bool(np.all(diff <= atol + rtol * scale))
    rel = np.divide(diff, scale, out=np.where(diff > 0, np.inf, 0.0), where=scale > 0)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float(rel.max()) if rel.size else 0.0
    return max_abs, max_rel, ok


def run_tests(path: Path) -> tuple[ir.Program, list[TestResult]]:
    """`layerc test`: compile into a temporary folder, import, run every test block."""
    program, _ = check_file(path)
    if not program.tests:
        return program, []
    with tempfile.TemporaryDirectory(prefix="layerc-test-") as tmp:
        out = Path(tmp) / (re.sub(r"[^0-9A-Za-z_]", "_", path.stem) or "model")
        out = out.with_suffix(".py")
        write_output(out, generate(program, out))
        module = import_module(out)
        classes = {}
        for name in module.__all__:
            cls = getattr(module, name)
            classes[getattr(cls, "_name", cls.__name__)] = cls
        results = []
        instances: dict[str, object] = {}
        for test in program.tests:
            net = instances.setdefault(test.model.name, classes[test.model.name]())
            output = np.asarray(net(test.input))  # type: ignore[operator]
            max_abs, max_rel, ok = compare(output, test.expect, test.atol, test.rtol)
            results.append(TestResult(test, output, max_abs, max_rel, ok))
        sys.modules.pop(module.__name__, None)
    return program, results
