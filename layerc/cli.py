"""The command line: `layerc compile | check | test`. The only place that prints diagnostics and
picks exit codes: 0 success, 1 a user error or a failing test, 2 a usage error."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import LayercError, render

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerc",
        description=(
            "Compile neural-network layer specs (.lyr) into Python modules whose layers run as "
            "numba-native code and behave like torch.nn.Module."
        ),
        epilog="Run 'layerc COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"layerc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("compile", help="check a .lyr file and write the generated Python module",
                       description="Check FILE and write the generated module (default: FILE with .py beside it).")
    p.add_argument("file", type=Path, metavar="FILE", help="the .lyr source")
    p.add_argument("-o", "--output", type=Path, metavar="OUT",
                   help="where to write the module (a .py path, or a folder)")
    p.add_argument("--warm", action="store_true",
                   help="also compile the numba kernels now and cache them beside the module, "
                        "so the first call in a new process is fast")

    p = sub.add_parser("check", help="check a .lyr file without writing anything",
                       description="Parse and check FILE: names, shapes, weights and tests. Writes nothing.")
    p.add_argument("file", type=Path, metavar="FILE")

    p = sub.add_parser("test", help="compile and run the test blocks of .lyr files",
                       description=(
                           "Compile each FILE into a temporary folder, run every test block against "
                           "the generated module and print the largest absolute and relative error "
                           "of each. Exits 1 if any test fails."))
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    _add_interop_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "compile":
            return _compile(args.file, args.output, args.warm)
        if args.command == "check":
            return _check(args.file)
        if args.command == "test":
            return _test(args.files)
        if args.command in ("import", "export"):
            return _interop(args)
    except LayercError as exc:
        _report(exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("layerc: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command!r}")


def _source_text(file: str | None) -> str | None:
    if not file:
        return None
    try:
        return Path(file).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _report(exc: LayercError) -> None:
    print(f"{render(exc, _source_text(exc.file) if exc.loc else None)}", file=sys.stderr)


def _compile(file: Path, output: Path | None, warm: bool = False) -> int:
    from .driver import compile_file

    if output is not None and output.is_dir():
        output = output / file.with_suffix(".py").name
    _, written = compile_file(file, output)
    for path in written:
        print(f"wrote {path}")
    if warm:
        from .warm import warm as warm_module

        warm_module(written[-1], lambda line: print(line, file=sys.stderr, flush=True))
    return EXIT_OK


def _check(file: Path) -> int:
    from .driver import check_file

    program, _ = check_file(file)
    models = ", ".join(f"{m.name} ({m.in_features} -> {m.out_features})" for m in program.models)
    print(f"{file}: ok: {models}; {len(program.tests)} test(s)")
    return EXIT_OK


def _test(files: list[Path]) -> int:
    from .driver import run_tests

    passed = failed = 0
    for file in files:
        try:
            _, results = run_tests(file)
        except LayercError as exc:
            _report(exc)
            failed += 1
            continue
        if not results:
            print(f"{file}: no test blocks")
        for r in results:
            status = "PASS" if r.passed else "FAIL"
            print(
                f"{status} {file}:{r.test.loc.line} test {r.test.model.name}: "
                f"max abs error {r.max_abs:.3g}, max rel error {r.max_rel:.3g} "
                f"(atol {r.test.atol:g}, rtol {r.test.rtol:g})"
            )
            if r.passed:
                passed += 1
            else:
                failed += 1
    print(f"{passed} passed, {failed} failed")
    return EXIT_OK if failed == 0 else EXIT_ERROR


# --------------------------------------------------------------------------- import / export


def _add_interop_parsers(sub: argparse._SubParsersAction) -> None:
    """`layerc import` (ONNX -> .lyr + weights) and `layerc export` (.lyr -> ONNX)."""
    p = sub.add_parser(
        "import", help="turn an ONNX model into a .lyr file and a weights file",
        description=(
            "Read FILE (ONNX: Gemm, MatMul + Add, Relu, Sigmoid, Tanh, LeakyRelu, Softmax, "
            "Identity, Flatten) and write a .lyr file (default: FILE with .lyr beside it) and its "
            "weights as a .safetensors file of the same name beside it."))
    p.add_argument("file", type=Path, metavar="FILE", help="the .onnx model")
    p.add_argument("-o", "--output", type=Path, metavar="OUT",
                   help="where to write the .lyr file (a .lyr path, or a folder)")
    p = sub.add_parser(
        "export", help="write a model of a .lyr file as an ONNX graph",
        description="Check FILE and write one of its models as ONNX (opset 17, dynamic batch).")
    p.add_argument("file", type=Path, metavar="FILE", help="the .lyr source")
    p.add_argument("--onnx", type=Path, metavar="OUT", required=True,
                   help="where to write the .onnx file")
    p.add_argument("--model", metavar="NAME",
                   help="the model to export (needed when the file defines several)")


def _interop(args: argparse.Namespace) -> int:
    if args.command == "import":
        from .onnx_io import import_onnx

        output = args.output
        if output is not None and output.is_dir():
            output = output / args.file.with_suffix(".lyr").name
        written = import_onnx(args.file, output)
    else:
        from .driver import check_file
        from .onnx_io import export_onnx

        program, _ = check_file(args.file)
        written = [export_onnx(program, args.model, args.onnx, str(args.onnx))]
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
