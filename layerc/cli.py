"""The command line: `layerc compile | check | test`. The only place that prints diagnostics and
picks exit codes: 0 success, 1 a user error or a failing test, 2 a usage error."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import io
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, ir
from .errors import LayercError, LayercWarning, UsageError, render

if TYPE_CHECKING:
    from .driver import OutputResult, TestResult
    from .ir import Program

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

    p = sub.add_parser(
        "compile",
        help="check a .lyr file and write the generated Python module",
        description="Check FILE and write the generated module (default: FILE with .py beside it).",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the .lyr source")
    # A str, not a Path: Path drops the trailing "/" that says OUT is meant as a folder.
    p.add_argument(
        "-o", "--output", metavar="OUT", help="where to write the module (a .py path, or a folder)"
    )
    p.add_argument(
        "--warm",
        action="store_true",
        help="also compile the numba kernels now and cache them beside the module, "
        "so the first call in a new process is fast",
    )

    p = sub.add_parser(
        "check",
        help="check a .lyr file without writing anything",
        description="Parse and check FILE: names, shapes, weights and tests. Writes nothing.",
    )
    p.add_argument("file", type=Path, metavar="FILE")

    p = sub.add_parser(
        "test",
        help="compile and run the test blocks of .lyr files",
        description=(
            "Compile each FILE into a temporary folder, run every test block against "
            "the generated module and print the largest absolute and relative error "
            "of each. Exits 1 if any test fails."
        ),
    )
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p = sub.add_parser(
        "build",
        help="build a model into a native library with a C header (no Python at run time)",
        description=(
            "Build one model of FILE into lib<name>.so, lib<name>.a and <name>.h (name: the "
            "model's name in lower case): a C ABI that needs only the C library and libm, "
            "with the weights inside. Needs a C compiler (cc, gcc or clang, or $CC)."
        ),
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the .lyr source")
    p.add_argument("--model", metavar="NAME", help="the model to build (default: the only one)")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("."), metavar="DIR",
        help="the folder to write into (default: the current folder)",
    )  # fmt: skip
    p.add_argument(
        "--cpu",
        default="native",
        metavar="CPU",
        help="the CPU to compile for: native (this machine's, the default), generic, x86-64, "
        "x86-64-v2, x86-64-v3 (AVX2) or x86-64-v4 (AVX-512)",
    )
    _add_interop_parsers(sub)
    _add_tool_parsers(sub)
    return parser


def entry() -> int:
    """The `layerc` command (and `python -m layerc`): `main`, in a process that ends with it.
    That process skips Python's last garbage collection at exit, which walks every object
    numba made and takes a quarter of a second once a model has run; the files are written
    and closed by then, and the memory goes back to the system all the same."""
    atexit.register(gc.freeze)
    return main()


def main(argv: list[str] | None = None) -> int:
    """The `layerc` command line `argv` (sys.argv's by default): its exit code."""
    try:
        code = _main(argv)
        # Written out here, so that a reader gone away is met below rather than at exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader of stdout went away (`layerc summary ... | head`): stop quietly, as other
        # filters do, pointing stdout at /dev/null so that Python's last flush is quiet too.
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return _command(args)
    except LayercError as exc:
        _report(exc)
        return EXIT_ERROR
    except UsageError as exc:
        print(f"layerc {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("layerc: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:
        # Out of memory (a machine's, or a limit such as `ulimit -v`): one line, as for any
        # other error, naming the file being worked on and what numpy could not allocate.
        where = getattr(args, "file", None) or f"layerc {args.command}"
        detail = str(exc).strip().splitlines()
        print(f"{where}: out of memory{': ' + detail[0] if detail else ''}", file=sys.stderr)
        return EXIT_ERROR


def _command(args: argparse.Namespace) -> int:
    """Run the command `args` name; its exit code."""
    if args.command == "compile":
        return _compile(args.file, args.output, args.warm)
    if args.command == "check":
        return _check(args.file)
    if args.command == "test":
        return _test(args.files)
    if args.command in ("import", "export"):
        return _interop(args)
    if args.command == "build":
        return _build(args)
    if args.command in _TOOLS:
        return _tool(args)
    raise AssertionError(f"unhandled command {args.command!r}")


def _source_text(file: str | None) -> str | None:
    from .files import read_regular

    if not file:
        return None
    try:
        # Bytes decoded by hand: text mode would turn a lone "\r" into a line break that the
        # lexer does not count, and the line shown would not be the line reported.
        return read_regular(Path(file), file).decode("utf-8", errors="replace")
    except LayercError:
        return None


def _report(exc: LayercError | LayercWarning) -> None:
    from .tools.term import colour_enabled

    text = _source_text(exc.file) if exc.loc else None
    print(render(exc, text, colour_enabled(sys.stderr)), file=sys.stderr)


def _warn(program: Program) -> None:
    """The checker's warnings, on stderr, as errors are shown: `file:line:col: warning: ...`."""
    for warning in program.warnings:
        _report(warning)


def _output_path(file: Path, output: str | None) -> Path | None:
    """Where `-o OUT` puts the module: OUT itself, or FILE's name with .py inside OUT when OUT
    is a folder (an existing one, or any path written with a trailing separator)."""
    if output is None:
        return None
    path = Path(output)
    if path.is_dir():
        return path / file.with_suffix(".py").name
    if output.endswith(("/", os.sep)):
        raise LayercError("cannot write the module: no such folder", file=output)
    return path


def _compile(file: Path, output: str | None, warm: bool = False) -> int:
    from .driver import compile_file

    program, written = compile_file(file, _output_path(file, output))
    _warn(program)
    for path in written:
        print(f"wrote {path}")
    if warm:
        from .warm import warm as warm_module

        warm_module(written[-1], lambda line: print(line, file=sys.stderr, flush=True))
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    from .build import build
    from .driver import check_file
    from .tools import pick_model

    program, _ = check_file(args.file)
    _warn(program)
    model = pick_model(program, args.model, str(args.file))
    library = build(program, model, args.output, args.cpu)
    for path in library.files:
        print(f"wrote {path}")
    return EXIT_OK


def _sizes(shapes: tuple[tuple[int, ...], ...]) -> str:
    """`4`, or `4, 8` for several inputs or outputs: values per sample of each."""
    return ", ".join(str(math.prod(shape)) for shape in shapes)


def _check(file: Path) -> int:
    from .driver import check_file

    program, _ = check_file(file)
    _warn(program)
    models = ", ".join(
        f"{m.name} ({_sizes(m.in_shapes)} -> {_sizes(m.out_shapes)})" for m in program.models
    )
    print(f"{file}: ok: {models}; {len(program.tests)} test(s)")
    return EXIT_OK


def _test(files: list[Path]) -> int:
    from .driver import run_tests

    passed = failed = 0
    for file in files:
        try:
            program, results = run_tests(file)
        except LayercError as exc:
            _report(exc)
            failed += 1
            continue
        _warn(program)
        if not results:
            print(f"{file}: no test blocks")
        for r in results:
            status = "PASS" if r.passed else "FAIL"
            print(
                f"{status} {file}:{r.test.loc.line} test {r.test.model.name}: "
                f"max abs error {r.max_abs:.3g}, max rel error {r.max_rel:.3g} "
                f"(atol {r.test.atol:g}, rtol {r.test.rtol:g})"
            )
            if r.quantization is not None:
                print(f"    {r.quantization.text()}")
            if r.passed:
                passed += 1
            else:
                failed += 1
                for line in _failure_report(r):
                    print(f"    {line}")
    print(f"{passed} passed, {failed} failed")
    return EXIT_OK if failed == 0 else EXIT_ERROR


def _failure_report(result: TestResult) -> list[str]:
    """The lines under a failed test. A model of one output: its worst elements. A model of
    several: each failing output by its place in the return (`output 2 of 2`) with its largest
    errors, and its worst elements beneath it."""
    if result.problem is not None:
        return [result.problem]
    if len(result.outputs) == 1:
        return _worst_table(result.outputs[0])
    lines = []
    count = len(result.outputs)
    for number, o in enumerate(result.outputs, 1):
        if o.passed:
            continue
        lines.append(
            f"output {number} of {count}: max abs error {o.max_abs:.3g}, "
            f"max rel error {o.max_rel:.3g}"
        )
        lines += [f"    {line}" for line in _worst_table(o)]
    return lines


def _worst_table(result: OutputResult) -> list[str]:
    """The lines under a failed output: how many elements are outside the tolerance, then the
    worst of them as a table (index, got, expected, abs error, rel error), columns aligned."""
    output, expect = result.output, result.expect
    if output.shape != expect.shape:
        return [f"output shape {output.shape}, expected shape {expect.shape}"]
    if not result.worst:
        return []
    n, size = result.failures, output.size
    head = f"{n} of {size} element{'' if size == 1 else 's'} outside the tolerance"
    head += f"; the {len(result.worst)} worst:" if n > len(result.worst) else ":"
    rows = [("index", "got", "expected", "abs error", "rel error")]
    for m in result.worst:
        rows.append(
            (
                "[" + ", ".join(map(str, m.index)) + "]",
                str(output.dtype.type(m.got)),
                str(m.expected),
                f"{m.abs_error:.3g}",
                f"{m.rel_error:.3g}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    # the index left-aligned, the numbers right-aligned
    table = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return [head, *table]


# --------------------------------------------------------------------------- import / export


def _add_interop_parsers(sub: argparse._SubParsersAction) -> None:
    """`layerc import` (ONNX -> .lyr + weights) and `layerc export` (.lyr -> ONNX)."""
    p = sub.add_parser(
        "import",
        help="turn an ONNX model into a .lyr file and a weights file",
        description=(
            "Read FILE (ONNX: Gemm, MatMul + Add, Relu, Sigmoid, Tanh, LeakyRelu, Softmax, "
            "Identity, Flatten) and write a .lyr file (default: FILE with .lyr beside it) and its "
            "weights as a .safetensors file of the same name beside it."
        ),
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the .onnx model")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT",
        help="where to write the .lyr file (a .lyr path, or a folder)",
    )
    p.add_argument(
        "--no-test",
        action="store_true",
        help="write no test block (by default the .lyr ends in one: a sample batch and what "
        "ONNX's reference implementation computes for it, which `layerc test` checks)",
    )
    p = sub.add_parser(
        "export",
        help="write a model of a .lyr file as an ONNX graph",
        description="Check FILE and write one of its models as ONNX (opset 17, dynamic batch).",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the .lyr source")
    p.add_argument(
        "--onnx", type=Path, metavar="OUT", required=True, help="where to write the .onnx file"
    )
    p.add_argument("--model", metavar="NAME", help=_MODEL_HELP)


def _interop(args: argparse.Namespace) -> int:
    if args.command == "import":
        from .onnx_io import import_onnx

        output = args.output
        if output is not None and output.is_dir():
            output = output / args.file.with_suffix(".lyr").name
        written = import_onnx(args.file, output, test=not args.no_test)
    else:
        from .driver import check_file
        from .onnx_io import export_onnx

        program, _ = check_file(args.file)
        written = [export_onnx(program, args.model, args.onnx, str(args.file))]
    for path in written:
        print(f"wrote {path}")
    return EXIT_OK


# ------------------------------------------------------------------ run / summary / graph / fmt

_TOOLS = ("run", "summary", "graph", "fmt")
_DATA_FORMATS = ("npy", "npz", "csv", "jsonl", "parquet")
_MODEL_HELP = (
    "the model to use (default: the file's one model that no other model uses; "
    "needed when there are several)"
)


def _add_tool_parsers(sub: argparse._SubParsersAction) -> None:
    """`layerc run`, `layerc summary`, `layerc graph` and `layerc fmt` (layerc/tools/)."""
    p = sub.add_parser(
        "run",
        help="run a model on a data file, or a folder of them (on Dask with --dask)",
        description=(
            "Compile FILE (into a cache, reused while the source is unchanged) and run a model "
            "on every sample of DATA: .npy (any shape ending in the model's input size), .csv "
            "(one sample per row; a first row without numbers is a header), .jsonl (one JSON "
            "list of numbers per line) or .parquet (one column per feature; needs pyarrow). "
            "Results go to OUT (.npy, .csv, .jsonl or .parquet, by extension) or, without "
            "--output, to stdout as CSV. A model with several inputs takes --input once per "
            "input (in forward order, or as NAME=DATA), or one .npz holding an array named "
            "after each; one with several outputs takes --output once per output (in return "
            "order), or one .npz (arrays output0, output1, ...). "
            "A folder run takes a folder or a glob pattern ('data/*.npy') as --input and a "
            "folder as --output, and writes one file per input file, OUT/<input name>, skipping "
            "outputs that an earlier run completed; --dask runs the files on a Dask cluster."
        ),
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the .lyr source")
    p.add_argument("--model", metavar="NAME", help=_MODEL_HELP)
    p.add_argument(
        "-i",
        "--input",
        required=True,
        action="append",
        metavar="DATA",
        help="the input data file ('-' reads CSV from stdin); once per input of the model, "
        "in forward order or as NAME=DATA, or one .npz for all; for a folder run, a folder "
        "or a quoted glob pattern ('data/*.npy'), as often as needed",
    )
    p.add_argument(
        "-o",
        "--output",
        action="append",
        metavar="OUT",
        help="where to write the results (default: CSV on stdout); once per output of the "
        "model, in return order, or one .npz for all; for a folder run, a folder (OUT/)",
    )
    p.add_argument(
        "--dask",
        metavar="WHERE",
        help="run a folder of files on Dask: local:N starts N worker processes here, an "
        "address (tcp://HOST:PORT) uses a running scheduler's workers; needs "
        "pip install 'layerc[dask]'",
    )
    p.add_argument(
        "--threads",
        metavar="N",
        help="compute on up to N threads of this process (layerc.set_num_threads; default 1): "
        "a batch of 512 samples or more is split among them, with the same results",
    )
    p.add_argument(
        "--input-format",
        choices=_DATA_FORMATS,
        help="the input's format when its extension does not say",
    )
    p.add_argument(
        "--output-format",
        choices=_DATA_FORMATS,
        help="the output's format when its extension does not say (e.g. jsonl on stdout)",
    )
    p.add_argument(
        "--delimiter",
        metavar="CHAR",
        help="the separator of a CSV input's values (default ','; e.g. ';', or tab)",
    )

    p = sub.add_parser(
        "summary",
        help="print a table of a model's layers, shapes, parameters and FLOPs",
        description=(
            "Print one row per layer (path, kind, output shape, parameter count, bytes, FLOPs "
            "per sample) and the totals. FLOPs count Linear layers: 2*in*out for the products "
            "and sums, plus out for the bias adds; activations are not counted."
        ),
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the .lyr source")
    p.add_argument("--model", metavar="NAME", help=_MODEL_HELP)

    p = sub.add_parser(
        "graph",
        help="draw a model's layers as a diagram (SVG, PNG, PDF or graphviz DOT)",
        description=(
            "Write a diagram of a model's layers with the shapes between them: DOT text for "
            ".dot/.gv or without --output (to stdout); .svg, .png and .pdf are drawn by "
            "graphviz's 'dot' program, which must be installed."
        ),
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the .lyr source")
    p.add_argument("--model", metavar="NAME", help=_MODEL_HELP)
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT",
        help="the diagram file: .svg, .png, .pdf or .dot (default: DOT on stdout)",
    )

    p = sub.add_parser(
        "fmt",
        help="rewrite .lyr files in the canonical layout (comments kept)",
        description=(
            "Rewrite each FILE in the canonical layout, keeping comments and meaning; files "
            "already formatted are left alone. '-' formats stdin to stdout."
        ),
    )
    p.add_argument("files", type=Path, nargs="+", metavar="FILE")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if any file would be reformatted",
    )


def _tool(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "summary":
        return _summary(args)
    if args.command == "graph":
        return _graph(args)
    return _fmt(args.files, args.check)


def _run(args: argparse.Namespace) -> int:
    from .driver import check_file, inputs_of
    from .tools import pick_model
    from .tools import run as r
    from .tools.term import Progress, colour_enabled, is_terminal

    _use_threads(args)
    if r.is_folder_run(args.input, args.output, args.dask):
        return _run_folder(args)
    if len(args.input) == 1 and "=" not in args.input[0] and len(args.output or []) <= 1:
        # One input and one output: usage mistakes are found before the source is compiled.
        r.format_of(args.input[0], args.input_format, r.INPUT_FORMATS, "input")
        out = args.output[0] if args.output else "-"
        r.format_of(out, args.output_format, r.OUTPUT_FORMATS, "output")
    program, _ = check_file(args.file)
    model = pick_model(program, args.model, str(args.file))
    sources_at = r.assign_inputs(args.input, model, args.input_format)
    places = r.assign_outputs(args.output, model, args.output_format)
    delimiter = ","
    if args.delimiter is not None:
        if all(fmt != "csv" for _, fmt in sources_at):
            formats = sorted({fmt for _, fmt in sources_at})
            raise UsageError(f"--delimiter is for CSV input, and the input is {', '.join(formats)}")
        delimiter = r.parse_delimiter(args.delimiter)
    inputs = list(inputs_of(program))
    inputs += [(Path(path), "the input data file") for path, _ in sources_at if path != "-"]
    ports = r.input_ports(model)
    to_stdout = [path for path, _ in places] in ([None], ["-"])
    try:
        if len(sources_at) == 1 and sources_at[0][1] == "npz":
            sources = r.open_npz(sources_at[0][0], ports)
        else:
            sources = [
                r.open_input(path, fmt, port, sys.stdin.buffer, delimiter)
                for (path, fmt), port in zip(sources_at, ports, strict=True)
            ]
        net = r.instantiate(r.load_module(program, args.file), model)
        leading = next((s.leading_shape for s in sources if s.leading_shape is not None), None)
        batch_ndim = 1 if leading is None else len(leading)
        writer = r.open_outputs(places, model, sys.stdout, inputs, batch_ndim)
        # A bar on the terminal only, and not while results are printed on that terminal.
        show = is_terminal(sys.stderr) and not (to_stdout and is_terminal(sys.stdout))
        progress = Progress(sys.stderr, sources[0].total, f"{model.name}", enabled=show)
        rows = r.run(net, sources, writer, progress, ports)
    except r.DataError as exc:
        print(render(exc, None, colour_enabled(sys.stderr)), file=sys.stderr)
        return EXIT_ERROR
    if not to_stdout:
        written = ", ".join(str(path) for path, _ in places)
        print(f"wrote {written} ({rows:,} row{'' if rows == 1 else 's'})")
    return EXIT_OK


def _use_threads(args: argparse.Namespace) -> None:
    """`--threads N`: let this process's kernels use N threads (before any model is made)."""
    if args.threads is None:
        return
    text = args.threads
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"--threads {text!r}: give a number of threads, 1 or more")
    if args.dask is not None:
        raise UsageError(
            "--threads is for runs in this process; with --dask each worker computes on one "
            "thread (start one worker a core: --dask local:N)"
        )
    from .runtime.threads import set_num_threads

    set_num_threads(int(text))


def _run_folder(args: argparse.Namespace) -> int:
    """`layerc run` on a folder of files (layerc/tools/run.py), here or on Dask: one output
    per input, complete ones skipped; a file that fails is reported by name as it fails, the
    others go on, and the exit code is 1 at the end."""
    from .driver import check_file, inputs_of
    from .files import refuse_inputs
    from .tools import pick_model
    from .tools import run as r
    from .tools.term import Progress, colour_enabled, is_terminal

    where = None
    if args.dask is not None:
        from .tools.run_dask import parse_where

        where = parse_where(args.dask)
    output = _folder_output(args)
    files = r.expand_inputs(args.input)
    program, _ = check_file(args.file)
    model = pick_model(program, args.model, str(args.file))
    jobs = r.plan_folder(files, output, model, args.input_format, args.output_format)
    delimiter = ","
    if args.delimiter is not None:
        if all(job.input_format != "csv" for job in jobs):
            formats = ", ".join(sorted({job.input_format for job in jobs}))
            raise UsageError(f"--delimiter is for CSV input, and the inputs are {formats}")
        delimiter = r.parse_delimiter(args.delimiter)
    sources = list(inputs_of(program))
    refuse_inputs(
        [Path(job.output_shown) for job in jobs],
        sources + [(Path(job.input), "the input data file") for job in jobs],
    )
    generated = r.Generated.of(program, args.file)
    recipe = r.recipe_for(model, generated.key, delimiter, sources)
    try:
        (Path(output) / r.RECORDS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LayercError(f"cannot make the output folder: {exc.strerror}", file=output) from None
    todo = [job for job in jobs if not r.is_complete(job, recipe)]
    total = sum(_size(job.input) for job in todo)
    progress = Progress(sys.stderr, total, model.name, enabled=is_terminal(sys.stderr))
    colour = colour_enabled(sys.stderr)
    done = {"files": 0, "bytes": 0, "rows": 0, "failed": 0}

    def report(result: r.FileResult) -> None:
        done["files"] += 1
        done["bytes"] += _size(result.job.input)
        if result.failed:
            done["failed"] += 1
            if progress.drawn:  # end the bar's line; it is drawn again below
                progress.abandon()
                progress.drawn = False
            print(render(result.error(), None, colour), file=sys.stderr, flush=True)
        else:
            done["rows"] += result.rows
        progress.label = f"{model.name}, {done['files']}/{len(todo)} files"
        progress.update(done["bytes"], done["rows"], force=result.failed)

    if todo:
        build = r.Build(generated, model.name)  # the module is imported only to run a file
        progress.label = f"{model.name}, 0/{len(todo)} files"
        progress.update(0, 0, force=True)
        try:
            if where is None:
                r.run_here(build(), recipe, todo, report)
            else:
                from .tools.run_dask import run_on_dask

                run_on_dask(where, build, recipe, todo, report)
        except BaseException:
            progress.abandon()
            raise
        progress.finish(total, done["rows"])
    written = len(todo) - done["failed"]
    rows = done["rows"]
    line = f"wrote {written} file{'' if written == 1 else 's'} to {output}"
    if written:
        line += f" ({rows:,} row{'' if rows == 1 else 's'})"
    if len(jobs) > len(todo):
        line += f"; {len(jobs) - len(todo)} already complete"
    if done["failed"]:
        line += f"; {done['failed']} failed"
    print(line)
    return EXIT_ERROR if done["failed"] else EXIT_OK


def _folder_output(args: argparse.Namespace) -> str:
    """The output folder of a folder run: its one --output, a folder (an existing one, a path
    ending in a separator, or a new path without a data file's extension)."""
    from .tools import run as r

    what = "--dask runs a folder of files" if args.dask is not None else "this is a folder run"
    outputs = args.output or []
    if len(outputs) != 1:
        raise UsageError(
            f"{what}, writing one file per input: give --output once, a folder (such as out/)"
        )
    output = outputs[0]
    folder = output.endswith(("/", os.sep)) or os.path.isdir(output)
    a_file = (
        output == "-" or os.path.exists(output) or Path(output).suffix.lower() in r.DATA_SUFFIXES
    )
    if not folder and a_file:
        raise UsageError(
            f"{what}, writing one file per input: --output {output!r} must be a folder "
            "(such as out/)"
        )
    return output


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _summary(args: argparse.Namespace) -> int:
    from .driver import check_file
    from .tools import pick_model
    from .tools.summary import summary

    program, _ = check_file(args.file)
    model = pick_model(program, args.model, str(args.file))
    print(summary(model), end="")
    if ir.quantized(model):
        from .driver import quantization_error

        error, samples = quantization_error(args.file, program, model)
        tested = any(t.model is model for t in program.tests)
        where = "its test inputs" if tested else "seeded standard-normal inputs"
        print(f"{error.text()}, on {samples} sample{'' if samples == 1 else 's'} of {where}")
    return EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    from .driver import check_file, inputs_of
    from .files import WriteFailed, write_atomically
    from .tools import pick_model
    from .tools.graph import output_format, render, to_dot

    out: Path | None = args.output
    fmt = output_format(out) if out is not None and str(out) != "-" else "dot"
    program, _ = check_file(args.file)
    dot = to_dot(pick_model(program, args.model, str(args.file)))
    if out is None or str(out) == "-":
        print(dot, end="")
        return EXIT_OK
    if fmt == "dot":
        try:
            write_atomically([(out, dot.encode("utf-8"))], inputs_of(program))
        except WriteFailed as exc:
            raise LayercError(f"cannot write {out}: {exc.reason}", file=str(out)) from None
    else:
        render(dot, fmt, out, inputs_of(program))
    print(f"wrote {out}")
    return EXIT_OK


def _fmt(files: list[Path], check: bool) -> int:
    from .syntax import decode_source
    from .tools.fmt import format_file, format_source

    changed = unchanged = errors = 0
    for file in files:
        try:
            if str(file) == "-":
                text = decode_source(sys.stdin.buffer.read(), "<stdin>")
                sys.stdout.write(format_source(text, "<stdin>"))
                continue
            if not format_file(file, check):
                unchanged += 1
                continue
            changed += 1
            print(f"would reformat {file}" if check else f"reformatted {file}")
        except LayercError as exc:
            _report(exc)
            errors += 1
    verb = "would be reformatted" if check else "reformatted"
    if changed or unchanged:
        print(
            f"{changed} file{'' if changed == 1 else 's'} {verb}, {unchanged} unchanged",
            file=sys.stderr,
        )
    return EXIT_ERROR if errors or (check and changed) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
