"""`layerc build`: one model as a native library with a C ABI, `lib<name>.so` (and `lib<name>.a`)
and `<name>.h`, that needs nothing at run time beyond the C library and libm: no Python, numba,
NumPy or BLAS.

How it is made:
1. Code generation writes the model's kernels once more, as a module for numba to compile without
   its runtime (`codegen.render_standalone`): they cannot allocate, and their entry computes the
   caller's rows in blocks, with the buffers between layers in a workspace the caller gives.
2. A process of its own (`python -m layerc.build`, below) imports that module beside the usual
   generated module, freezes the model's weights into the kernels as constants (laid out as the
   kernels read them), compiles the entry with numba for the CPU `--cpu` names, and writes the
   LLVM module as an object file through llvmlite: every function but the entry made internal,
   the code nothing calls removed, position-independent. The CPU must be chosen before numba is
   imported (numba reads NUMBA_CPU_NAME and NUMBA_CPU_FEATURES once), hence the process. A large
   model's weights move into a buffer that the library fills as it is loaded (`hot_weights`).
3. A small C file (`c_source`) checks the arguments, puts the workspace on the stack when it is
   small, and calls the entry; the system's C compiler builds it with the object into the
   shared and static libraries. Every exported symbol starts with the model's name in lower
   case; everything else is internal or hidden, so several models link into one program.

The entry is called with numba's calling convention for a function of no result (a status, a
pointer for the result and one for exception information, then the arguments); it never raises
(bounds are not checked, floating-point errors give inf and NaN), and the C side treats any
non-zero status as an internal error all the same.

All files are made in a temporary folder and renamed into the output folder only when all of
them built, so a failed build leaves what was there before.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, codegen, ir, lower
from .driver import inputs_of
from .errors import LayercError, UsageError
from .files import WriteFailed, refuse_inputs, write_atomically

# --cpu: what numba compiles for. None: this machine (numba's default). Otherwise the LLVM CPU
# name and its features, spelled out so that the matrix product picks its vector width from
# them (layerc/runtime/gemm.py) as it does from the host's.
_V2 = "+cx16,+popcnt,+sahf,+sse3,+sse4.1,+sse4.2,+ssse3"
_V3 = _V2 + ",+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+lzcnt,+movbe,+xsave"
_V4 = _V3 + ",+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl"
CPUS: dict[str, tuple[str, str] | None] = {
    "native": None,
    "generic": ("generic", ""),
    "x86-64": ("x86-64", ""),
    "x86-64-v2": ("x86-64-v2", _V2),
    "x86-64-v3": ("x86-64-v3", _V3),
    "x86-64-v4": ("x86-64-v4", _V4),
}

ROWS = 64  # samples per block: a batch of up to 64 runs through the layers in one go
STACK_LIMIT = 256 * 1024  # bytes of workspace `<name>_forward` may put on the caller's stack
# Weights from which a library copies them, as it is loaded, into a buffer of huge pages (see
# `hot_weights`), and the size of a huge page.
HOT_MIN = 256 * 1024
HUGE_PAGE = 2 * 1024 * 1024

# Return codes, as the header defines them (with the model's prefix).
CODES = (
    ("OK", 0, "success"),
    ("ERR_NULL", 1, "a pointer argument is NULL while n > 0"),
    ("ERR_N", 2, "n < 0"),
    ("ERR_WORKSPACE", 3, "the workspace is NULL, or too large for the stack: use _forward_ws"),
    ("ERR_INTERNAL", 4, "the kernels failed: a bug in layerc, please report it"),
)

COMPILERS = ("cc", "gcc", "clang")


@dataclass(frozen=True)
class Library:
    """What `build` wrote: the files, and the C names a caller uses."""

    files: tuple[Path, ...]
    prefix: str  # the model's name in lower case: `<prefix>_forward`


def c_prefix(model: ir.Model) -> str:
    """The prefix of every symbol and macro of `model`'s library: its name in lower case (a
    .lyr identifier, so a C identifier too)."""
    prefix = model.name.lower()
    assert prefix.isascii() and prefix.isidentifier(), prefix
    return prefix


def find_compiler() -> str:
    """The C compiler to build with: $CC, else the first of cc, gcc and clang on PATH."""
    chosen = os.environ.get("CC")
    if chosen:
        found = shutil.which(chosen.split()[0]) if chosen.split() else None
        if found is None:
            raise UsageError(f"CC={chosen!r}: no such program; set CC to a C compiler")
        return chosen
    for name in COMPILERS:
        if shutil.which(name):
            return name
    raise UsageError(
        "layerc build needs a C compiler and linker, and found none (looked for $CC, "
        + ", ".join(COMPILERS)
        + "): install one, e.g. `apt install gcc` (Debian, Ubuntu), `dnf install gcc` "
        "(Fedora), `xcode-select --install` (macOS)"
    )


def build(
    program: ir.Program, model: ir.Model, out_dir: Path, cpu: str = "native", static: bool = True
) -> Library:
    """Build `model` of `program` into `out_dir`: lib<prefix>.so, <prefix>.h and, with `static`,
    lib<prefix>.a."""
    if cpu not in CPUS:
        raise UsageError(f"--cpu {cpu!r}: choose one of {', '.join(CPUS)}")
    _refuse_batch_statistics(model)
    compiler = find_compiler()
    prefix = c_prefix(model)
    plan = lower.lower(program, codegen.MODULE_GLOBALS)
    standalone = codegen.render_standalone(plan, model.name)
    usual = codegen.render(plan, "layerc_build_model")
    names = [f"lib{prefix}.so", f"{prefix}.h"] + ([f"lib{prefix}.a"] if static else [])
    targets = [out_dir / name for name in names]
    refuse_inputs(targets, inputs_of(program))
    archiver = shutil.which("ar") if static else None
    if static and archiver is None:
        raise UsageError("layerc build needs `ar` for the static library: install binutils")
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: not a folder")
    with tempfile.TemporaryDirectory(prefix="layerc-build-") as tmp:
        work = Path(tmp)
        (work / "layerc_build_model.py").write_text(usual.source, encoding="utf-8")
        if usual.data_name is not None and usual.data is not None:
            (work / usual.data_name).write_bytes(usual.data)
        (work / "layerc_build_kernels.py").write_text(standalone.output.source, encoding="utf-8")
        symbol = f"{prefix}__layerc_kernel"
        spec = {
            "model": model.name,
            "prefix": prefix,
            "symbol": symbol,
            "dtype": standalone.dtype.name,
            "inputs": len(standalone.inputs),
            "outputs": len(standalone.outputs),
        }
        (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        _compile_kernels(work, cpu, plan.source)
        header = c_header(prefix, model, standalone, plan.source)
        (work / f"{prefix}.h").write_text(header, encoding="utf-8")
        hot = json.loads((work / "hot.json").read_text(encoding="utf-8"))
        (work / f"{prefix}.c").write_text(
            c_source(prefix, standalone, symbol, hot), encoding="utf-8"
        )
        _run_compiler(
            [*compiler.split(), "-O2", "-fPIC", "-fvisibility=hidden", "-c", f"{prefix}.c",
             "-o", f"{prefix}.o"], work)  # fmt: skip
        # Anything left undefined beyond the C library and libm fails the link, not a load.
        strict = [] if sys.platform == "darwin" else ["-Wl,-z,defs"]
        _run_compiler(
            [*compiler.split(), "-shared", *strict, "-o", f"lib{prefix}.so", f"{prefix}.o",
             "kernels.o", "-lm"], work)  # fmt: skip
        if archiver is not None:
            _run_compiler([archiver, "rcs", f"lib{prefix}.a", f"{prefix}.o", "kernels.o"], work)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            files = [
                (target, (work / name).read_bytes())
                for name, target in zip(names, targets, strict=True)
            ]
            write_atomically(files, inputs_of(program))
        except OSError as exc:
            raise LayercError(
                f"cannot make the folder: {exc.strerror}", file=str(out_dir)
            ) from None
        except WriteFailed as exc:
            raise LayercError(
                f"cannot write {exc.target.name}: {exc.reason}", file=str(out_dir)
            ) from None
    return Library(tuple(targets), prefix)


def _refuse_batch_statistics(model: ir.Model) -> None:
    """A library computes its rows in blocks: a layer whose output for one sample depends on
    the others of the call cannot be built."""
    for path, layer in lower.batch_dependent(model):
        raise LayercError(
            f"cannot build layer {path!r}: {layer.kind}(track_running_stats=false) "
            "normalises with the statistics of the whole call, which a library that "
            "computes its rows in blocks cannot give (use running statistics)",
            layer.loc,
        )


def _compile_kernels(work: Path, cpu: str, source: str) -> None:
    """kernels.o in `work`, made by a process of its own for the CPU `cpu` names."""
    env = dict(os.environ)
    target = CPUS[cpu]
    if target is not None:
        env["NUMBA_CPU_NAME"], env["NUMBA_CPU_FEATURES"] = target
    env["NUMBA_CACHE_DIR"] = str(work / "numba-cache")  # nothing of the user's cache is used
    done = subprocess.run(
        [sys.executable, "-m", "layerc.build", str(work)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise LayercError(
            "could not compile the model's kernels: "
            + (lines[-1] if lines else f"exit code {done.returncode}"),
            file=source,
        )


def _run_compiler(command: list[str], work: Path) -> None:
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LayercError(
            f"layerc build: `{' '.join(command)}` failed:\n{done.stderr.strip() or done.stdout}"
        )


# --------------------------------------------------------------------------- C


def _comment(text: str) -> str:
    """`text` safe inside a C comment."""
    return "".join(c if c.isprintable() and c not in "*/\\" else "?" for c in text)


def c_header(prefix: str, model: ir.Model, kernels: codegen.Standalone, source: str) -> str:
    """`<prefix>.h`: the sizes, the return codes and the functions."""
    up = prefix.upper()
    ctype = _CTYPES[kernels.dtype.name]
    ins, outs = kernels.inputs, kernels.outputs
    lines = [
        f"/* {prefix}.h, generated by layerc {__version__} from {_comment(source)}"
        f" (model {model.name}). */",
        f"#ifndef {up}_LAYERC_H",
        f"#define {up}_LAYERC_H",
        "",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"/* Values per sample ({ctype}, C order, samples one after another). */",
    ]
    names = _port_names(model)
    if len(ins) == 1:
        lines.append(f"#define {up}_IN_FEATURES {math.prod(ins[0])}  /* {_shape(ins[0])} */")
    for i, shape in enumerate(ins if len(ins) > 1 else ()):
        lines.append(
            f"#define {up}_IN{i}_FEATURES {math.prod(shape)}  /* {names[0][i]}: {_shape(shape)} */"
        )
    if len(outs) == 1:
        lines.append(f"#define {up}_OUT_FEATURES {math.prod(outs[0])}  /* {_shape(outs[0])} */")
    for i, shape in enumerate(outs if len(outs) > 1 else ()):
        lines.append(
            f"#define {up}_OUT{i}_FEATURES {math.prod(shape)}  /* output {i}: {_shape(shape)} */"
        )
    lines += ["", "/* Return codes. */"]
    lines += [f"#define {up}_{name} {code}  /* {what} */" for name, code, what in CODES]
    params = _c_params(ctype, len(ins), len(outs))
    lines += [
        "",
        f"/* {model.name} on n samples: the inputs in forward order, then the outputs, each n",
        "   samples of its FEATURES values; returns 0, or a code above. Reentrant: it writes",
        "   only to the outputs and its workspace on the stack, so threads may call it at once",
        "   (each with its own outputs). The outputs must not overlap the inputs. */",
        f"int {prefix}_forward({params}, int64_t n);",
        "",
        f"/* Bytes of workspace {prefix}_forward_ws needs for any n (0: none). */",
        f"size_t {prefix}_workspace_size(void);",
        "",
        f"/* {prefix}_forward with a workspace of {prefix}_workspace_size() bytes from the",
        "   caller, aligned to 64 bytes, for threads with small stacks; one workspace per",
        "   concurrent call. */",
        f"int {prefix}_forward_ws({params}, int64_t n, void *workspace);",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"#endif /* {up}_LAYERC_H */",
    ]
    return "\n".join(lines) + "\n"


_CTYPES = {"float32": "float", "float64": "double"}


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _port_names(model: ir.Model) -> tuple[list[str], list[str]]:
    """The inputs' names (a graph model's, from `forward`; `x` for a pipeline's)."""
    if model.graph is None:
        return ["x"], ["y"]
    return [i.name for i in model.graph.inputs], [f"y{i}" for i in range(len(model.out_shapes))]


def _c_params(ctype: str, ins: int, outs: int) -> str:
    if ins == 1 and outs == 1:
        return f"const {ctype} *x, {ctype} *y"
    return ", ".join(
        [f"const {ctype} *x{i}" for i in range(ins)] + [f"{ctype} *y{i}" for i in range(outs)]
    )


def c_source(
    prefix: str, kernels: codegen.Standalone, symbol: str, hot: dict[str, int] | None = None
) -> str:
    """`<prefix>.c`: the exported functions around the kernels' entry; with `hot` (what
    `hot_weights` made of the kernels: the weights' bytes and the buffer's size), the function
    that copies the weights into their buffer as the library is loaded."""
    up = prefix.upper()
    ctype = _CTYPES[kernels.dtype.name]
    size = kernels.dtype.itemsize
    ins, outs = len(kernels.inputs), len(kernels.outputs)
    single = ins == 1 and outs == 1
    xs = ["x"] if single else [f"x{i}" for i in range(ins)]
    ys = ["y"] if single else [f"y{i}" for i in range(outs)]
    params = _c_params(ctype, ins, outs)
    scratch = kernels.scratch
    rows = ROWS
    while rows > 1 and rows * scratch * size > STACK_LIMIT:
        rows //= 2
    on_stack = rows * scratch * size <= STACK_LIMIT
    workspace = rows * scratch * size
    pointers = ", ".join(xs + ys)
    kernel_params = ", ".join(
        [f"const {ctype} *" for _ in xs] + [f"{ctype} *" for _ in ys]
        + ["int64_t", f"{ctype} *", "int64_t"]
    )  # fmt: skip
    checks = " || ".join(f"{p} == NULL" for p in xs + ys)
    lines = [
        f"/* {prefix}.c, generated by layerc {__version__}: the exported functions of",
        f"   lib{prefix} around its kernels (kernels.o). */",
        "#include <stddef.h>",
        "#include <stdint.h>",
        f'#include "{prefix}.h"',
        "",
        '#define LAYERC_API __attribute__((visibility("default")))',
        f"#define ROWS {rows}",
        f"#define WORKSPACE {workspace}",
        "",
        "/* The kernels' entry, in numba's calling convention: a status, then a result and an",
        "   exception slot (neither used), then the arguments. */",
        f"int32_t {symbol}(void **result, void **exception, {kernel_params});",
        "",
        *_hot_source(prefix, hot),
        "static int run(" + params + ", int64_t n, void *workspace)",
        "{",
        f"    if (n < 0) return {up}_ERR_N;",
        f"    if (n == 0) return {up}_OK;",
        f"    if ({checks}) return {up}_ERR_NULL;",
        f"    if (WORKSPACE > 0 && workspace == NULL) return {up}_ERR_WORKSPACE;",
        "    void *result = NULL, *exception = NULL;",
        f"    int32_t status = {symbol}(&result, &exception, {pointers}, n, "
        f"({ctype} *)workspace, ROWS);",
        f"    return status == 0 ? {up}_OK : {up}_ERR_INTERNAL;",
        "}",
        "",
        f"LAYERC_API size_t {prefix}_workspace_size(void) {{ return WORKSPACE; }}",
        "",
        f"LAYERC_API int {prefix}_forward_ws({params}, int64_t n, void *workspace)",
        "{",
        f"    return run({pointers}, n, workspace);",
        "}",
        "",
        f"LAYERC_API int {prefix}_forward({params}, int64_t n)",
        "{",
    ]
    if workspace == 0:
        lines.append(f"    return run({pointers}, n, NULL);")
    elif on_stack:
        lines += [
            f"    _Alignas(64) {ctype} workspace[WORKSPACE / sizeof({ctype})];",
            f"    return run({pointers}, n, workspace);",
        ]
    else:
        lines += [
            f"    (void)n; {', '.join(f'(void){p}' for p in xs + ys)};",
            f"    return {up}_ERR_WORKSPACE;",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def weights_symbols(prefix: str) -> tuple[str, str]:
    """The names `hot_weights` gives the weights' constant and the buffer the kernels read them
    from: hidden symbols, so that the library's C file fills the buffer (`_hot_source`)."""
    return f"{prefix}__layerc_weights_data", f"{prefix}__layerc_weights"


def _hot_source(prefix: str, hot: dict[str, int] | None) -> list[str]:
    """The C of `hot_weights`: the copy of the weights into their buffer of huge pages, run as
    the library is loaded (a constructor), before anything can call it."""
    if not hot:
        return []
    data, weights = weights_symbols(prefix)
    return [
        "/* The weights, and the buffer the kernels read them from: aligned to a huge page, so",
        "   that they spread evenly over the CPU's cache (layerc's docs/build.md, Large models). */",
        "#include <string.h>",
        "#include <sys/mman.h>",
        f'extern const unsigned char {data}[] __attribute__((visibility("hidden")));',
        f'extern unsigned char {weights}[] __attribute__((visibility("hidden")));',
        "",
        "/* Priority 101, the first a program may use: before the constructors of C++ statics",
        "   and other default ones, which may call the model when linked statically. */",
        "__attribute__((constructor(101))) static void layerc_load_weights(void)",
        "{",
        "#ifdef MADV_HUGEPAGE",
        f"    (void)madvise({weights}, {hot['size']}, MADV_HUGEPAGE);",
        "#endif",
        f"    memcpy({weights}, {data}, {hot['bytes']});",
        f"    (void)mprotect({weights}, {hot['size']}, PROT_READ);",
        "}",
        "",
    ]


# --------------------------------------------------------------------------- the kernels' process

# A reference to a constant array numba made of an array the kernels read (the model's weights
# and biases), and the array's definition: its name, its size in bytes and its value.
_CONSTANT_NAME = r'@"?(\.const\.array\.data(?:\.\d+)?)"?'
_CONSTANT_ARRAY = re.compile(
    rf"^{_CONSTANT_NAME} = (?:internal|private) (?:unnamed_addr )?"
    r"constant \[(\d+) x i8\] (.*), align \d+$",
    re.M,
)


def hot_weights(text: str, prefix: str) -> tuple[str, dict[str, int]]:
    """The LLVM module `text` with its constant arrays, when they hold HOT_MIN bytes or more,
    moved into a buffer of huge pages, and what `c_source` needs to fill it (else `text` as it
    is, and {}).

    Why: the weights of a model as large as the MLP 784-256-128-10 (0.94 MB) fill a core's L2
    cache (1 MB on Zen 5), and at batch 1 every call streams them from there. Whether they all
    stay there depends on the physical pages the system gave the library's file: the cache
    picks its sets by physical address, and with 4 KiB pages some sets get more lines than they
    hold: six copies of one library file ran the MLP's first layer in 4.2 to 5.5 us, each copy
    steadily. A huge page of 2 MiB is physically contiguous, so the weights spread evenly over
    the sets.

    How: the arrays become one constant, `<prefix>__layerc_weights_data` (each at a multiple of
    64 bytes), and the kernels read them at the same offsets in `<prefix>__layerc_weights`, a
    zeroed buffer aligned to and a whole number of huge pages long. The library's constructor
    (`_hot_source`) asks the system for huge pages there, copies the weights in and makes the
    buffer read-only. Where the system gives no huge pages, it still works, with 4 KiB pages."""
    arrays = list(_CONSTANT_ARRAY.finditer(text))
    if sum(int(m.group(2)) for m in arrays) < HOT_MIN:
        return text, {}
    data, weights = weights_symbols(prefix)
    types: list[str] = []
    values: list[str] = []
    offsets: dict[str, int] = {}
    at = 0
    for m in arrays:
        name, size, value = m.group(1), int(m.group(2)), m.group(3)
        if at % 64:
            types.append(f"[{64 - at % 64} x i8]")
            values.append(f"{types[-1]} zeroinitializer")
            at += 64 - at % 64
        offsets[name] = at
        types.append(f"[{size} x i8]")
        values.append(f"{types[-1]} {value}")
        at += size
    size = -(-at // HUGE_PAGE) * HUGE_PAGE
    text = _CONSTANT_ARRAY.sub("", text)
    text = re.sub(
        rf"{_CONSTANT_NAME}(?![\w.])",
        lambda m: (
            f"getelementptr inbounds (i8, ptr @{weights}, i64 {offsets[m.group(1)]})"
            if m.group(1) in offsets
            else m.group(0)
        ),
        text,
    )
    text += (
        f"\n@{data} = hidden constant <{{ {', '.join(types)} }}> <{{ {', '.join(values)} }}>, "
        "align 64\n"
        f"@{weights} = hidden global [{size} x i8] zeroinitializer, align {HUGE_PAGE}\n"
    )
    return text, {"bytes": at, "size": size}


def _kernels_object(work: Path) -> None:
    """Compile the entry of `work`/layerc_build_kernels.py into `work`/kernels.o (this runs in
    the process `_compile_kernels` starts, with numba's CPU already chosen)."""
    import llvmlite.binding as ll
    import numba
    from numba import types
    from numba.core import config
    from numba.core.registry import cpu_target

    from .driver import import_module
    from .runtime import standalone

    # Every array the kernels read is frozen into the code as a constant, however large: numba
    # otherwise refers to an array over 1 MB where it lies in this process.
    context = cpu_target.target_context
    make_constant_array = context.make_constant_array

    def frozen(builder: Any, typ: Any, array: np.ndarray) -> Any:
        context.allow_dynamic_globals = False
        try:
            return make_constant_array(builder, typ, array)
        finally:
            context.allow_dynamic_globals = True

    context.make_constant_array = frozen

    spec = json.loads((work / "spec.json").read_text(encoding="utf-8"))
    usual = import_module(work / "layerc_build_model.py", "layerc_build_model")
    kernels = import_module(work / "layerc_build_kernels.py", "layerc_build_kernels")
    net = getattr(usual, spec["model"])()
    for i, array in enumerate(net._njit_arrays()):
        setattr(kernels, f"_p{i}", standalone.laid_out(array))
    scalar = numba.from_dtype(np.dtype(spec["dtype"]))
    pointer = types.CPointer(scalar)
    signature = types.void(
        *[pointer] * (spec["inputs"] + spec["outputs"]), types.int64, pointer, types.int64
    )
    # Without numba's runtime (nothing allocates), and no wrapper for Python or C callers: the
    # C file calls the function itself. (Options numba's stubs do not list.)
    options: dict[str, Any] = {
        "_nrt": False,
        "no_cpython_wrapper": True,
        "no_cfunc_wrapper": True,
    }
    entry = numba.njit(signature, fastmath={"reassoc", "contract"}, error_model="numpy", **options)(
        getattr(kernels, codegen.ENTRY)
    )
    compiled: Any = entry.overloads[signature.args]  # library and fndesc: numba internals
    text = compiled.library.get_llvm_str()
    # The weights' constants on cache-line boundaries, as the Python module's own weights.
    text = re.sub(
        r'^(@"?\.const\.array\.data[^\n]*), align \d+$', r"\1, align 64", text, flags=re.M
    )
    text, hot = hot_weights(text, spec["prefix"])
    (work / "hot.json").write_text(json.dumps(hot), encoding="utf-8")
    module = ll.parse_assembly(text)
    function = module.get_function(compiled.fndesc.llvm_func_name)
    function.name = spec["symbol"]
    function.visibility = "hidden"
    for fn in module.functions:
        if not fn.is_declaration and fn.name != spec["symbol"]:
            fn.linkage = "internal"
    shared = set(weights_symbols(spec["prefix"]))
    for variable in module.global_variables:
        if not variable.is_declaration and variable.name not in shared:
            variable.linkage = "internal"
    cpu = getattr(config, "CPU_NAME", None) or ll.get_host_cpu_name()  # NUMBA_CPU_NAME
    features = getattr(config, "CPU_FEATURES", None)  # NUMBA_CPU_FEATURES
    if features is None:
        features = ll.get_host_cpu_features().flatten()
    target = ll.Target.from_triple(module.triple or ll.get_process_triple())
    machine = target.create_target_machine(
        cpu=cpu, features=features, opt=3, reloc="pic", codemodel="default"
    )
    passes = ll.create_new_module_pass_manager()
    passes.add_global_dead_code_eliminate_pass()
    passes.add_strip_dead_prototype_pass()
    passes.run(module, ll.create_pass_builder(machine, ll.create_pipeline_tuning_options()))
    module.verify()
    if re.search(r"inttoptr \(i64 -?[0-9]+ to", str(module)):
        # An address in this process, meaningless in a library.
        raise RuntimeError("the kernels refer to this process's memory")
    (work / "kernels.o").write_bytes(machine.emit_object(module))


if __name__ == "__main__":
    try:
        _kernels_object(Path(sys.argv[1]))
    except Exception as exc:  # noqa: BLE001 - reported by the parent, on one line
        first = str(exc).strip().splitlines()
        print(f"{type(exc).__name__}: {first[0] if first else ''}", file=sys.stderr)
        sys.exit(1)
