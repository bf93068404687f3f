"""Code generation: a checked `ir.Program` in, the text of a Python module (and, for large or
non-finite weights, the bytes of one weights file) out.

The module holds one numba kernel per layer kind and shape, one fused kernel per model that runs
all its layers in one native call, and one class per model built on `layerc.runtime`. Nothing
from the source is pasted as text: identifiers are validated and renamed on clashes, strings go
through `repr()`, numbers are printed from parsed values. Output is byte-identical run to run.
"""

from __future__ import annotations

import builtins
import hashlib
import keyword
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from . import __version__, ir, kinds
from .runtime import ABI
from .runtime import data as weights_data
from .runtime.layers import reserved_names

# Models with at most this many weight values, all finite, embed them as readable literals.
INLINE_LIMIT = 4096

# No nnan/ninf: NaN and Inf keep IEEE semantics. `reassoc` lets LLVM vectorise dot products.
FASTMATH = '{"reassoc", "contract"}'


# Shapes decide the kernels: a layer with at least this many weights multiplies a batch with
# BLAS gemm (numba's np.dot, through SciPy's BLAS), and a single sample with BLAS gemv from
# BLAS_GEMV_MIN on; smaller layers use plain loops, which beat a BLAS call's fixed cost there.
BLAS_GEMM_MIN = 4096
BLAS_GEMV_MIN = 16384


def _elementwise(layer: ir.Layer, t: str) -> str:
    """The expression an elementwise layer computes from `v` (numba code, dtype `t`)."""
    native = layer.spec.native
    if not isinstance(native, kinds.Elementwise):
        raise CodegenError(f"failed to render {layer.kind!r} of layer {layer.name!r} elementwise")
    return native.expr(layer.argdict, t)


def _emit_input_check(e: Emitter, dtype: np.dtype, width: int | None) -> None:
    """Kernels accept any real array: converted to the model's dtype and made C-contiguous
    (both free when already so), its last axis checked. The runtime calls them without
    checking in Python, and on an exception re-checks in Python for a detailed message."""
    e.line(f"x = _np.ascontiguousarray(_np.asarray(x, dtype=_np.{dtype.name}))")
    if width is not None:
        e.line(f"if x.shape[-1] != {width}:")
        with e.indent():
            e.line(f'raise ValueError("expected input of shape ({width},) or (*, {width})")')


@dataclass(frozen=True)
class _Op:
    """One step of a fused forward: a Linear (maybe with an activation folded in) or an
    activation, with the indices of its parameters among the fused kernel's arguments."""

    path: str
    layer: ir.Layer
    params: tuple[int, ...]
    width: int  # features of the step's output
    epilogue: ir.Layer | None = None
    epilogue_path: str = ""

    def describe(self) -> str:
        if self.layer.kind == "Linear":
            text = f"({self.path}) Linear {self.layer.in_features} -> {self.layer.out_features}"
        else:
            text = f"({self.path}) {self.layer.kind}"
        if self.epilogue is not None:
            text += f", ({self.epilogue_path}) {self.epilogue.kind}"
        return text


def _flatten(model: ir.Model) -> list[_Op]:
    """The model's layers in execution order, nested models expanded, Identity dropped."""
    ops: list[_Op] = []
    index = 0
    for path, layer in ir.layers(model):
        count = sum(1 for _, value in layer.tensors if value is not None)
        if layer.spec.dropped:
            index += count
            continue
        ops.append(_Op(path, layer, tuple(range(index, index + count)), layer.out_features))
        index += count
    return ops


def _fuse(ops: list[_Op]) -> list[_Op]:
    """Fold each elementwise activation that directly follows a Linear into its epilogue."""
    out: list[_Op] = []
    for op in ops:
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev.layer.kind == "Linear"
            and prev.epilogue is None
            and op.layer.spec.fuse == "activation"
        ):
            out[-1] = _Op(prev.path, prev.layer, prev.params, prev.width, op.layer, op.path)
        else:
            out.append(op)
    return out


class Emitter:
    """An indenting line buffer: code is emitted line by line, never by counting spaces."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.level = 0

    def line(self, text: str = "") -> None:
        self.lines.append(("    " * self.level + text) if text else "")

    @contextmanager
    def indent(self) -> Iterator[None]:
        self.level += 1
        try:
            yield
        finally:
            self.level -= 1

    def text(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"


class CodegenError(AssertionError):
    """Code generation met IR it does not handle: a bug in layerc."""


def _py_float(value: float) -> str:
    text = repr(float(value))
    if text in ("nan", "inf", "-inf"):
        raise CodegenError(f"non-finite value {text} cannot be a literal")
    return text


def _py_value(value: object) -> str:
    """An argument's value as Python source: numbers from their parsed values, strings and
    tuples through repr()."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return _py_float(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, tuple) and all(type(v) is int for v in value):
        return repr(tuple(int(v) for v in value))
    raise CodegenError(f"failed to render the value {value!r}")


def _doc_repr(text: str) -> str:
    """`repr(text)` for use inside a triple-quoted docstring, escaped once more so that the
    docstring's value is exactly the repr: a `\"\"\"` in a file name cannot close the
    docstring, and repr's own escapes (`\\n`, `\\udcff`) stay text."""
    return repr(text).replace("\\", "\\\\").replace('"', '\\"')


def _dtype_tag(dtype: np.dtype) -> str:
    return {"float32": "f32", "float64": "f64"}[dtype.name]


MODEL_CLASS_ATTRS = reserved_names()


@dataclass
class _Names:
    """Python names for everything generated, unique and safe."""

    taken: set[str] = field(default_factory=set)

    def claim(self, wanted: str) -> str:
        if not (wanted.isascii() and wanted.isidentifier()):
            raise CodegenError(f"failed to name {wanted!r}: not an ASCII identifier")
        name = wanted
        if name.startswith("__"):
            # Inside a class body `__x` is mangled (`_B__x`), and at module level a dunder such
            # as `__getattr__` or `__file__` changes how the module itself behaves.
            name = "_" + name.lstrip("_")
        while keyword.iskeyword(name) or hasattr(builtins, name) or name in self.taken:
            name += "_" if name.strip("_") else "x"  # "_" + "_" would be a "__" name again
        self.taken.add(name)
        return name


@dataclass(frozen=True)
class Output:
    source: str
    data: bytes | None  # the weights file's contents, if the weights are not inline
    data_name: str | None


def generate(program: ir.Program, module_name: str) -> Output:
    return _Generator(program, module_name).run()


class _Generator:
    def __init__(self, program: ir.Program, module_name: str):
        self.program = program
        self.module_name = module_name
        self.names = _Names(
            {"_np", "_numba", "_rt", "_rt_data", "_WEIGHTS", "_FASTMATH", "_CACHE", "__all__"}
        )
        self.kernels = Emitter()
        self.kernel_names: dict[tuple, str] = {}
        self.layer_classes = Emitter()
        self.layer_class_names: dict[tuple, str] = {}
        # Python class name per model: the model's own name unless it would clash
        self.class_names: dict[str, str] = {}
        self.weights: list[tuple[str, np.ndarray]] = []  # (key, array), in emission order

    # ------------------------------------------------------------------ driver

    def run(self) -> Output:
        for model in self.program.models:
            self.class_names[model.name] = self.names.claim(model.name)
        model_code = Emitter()
        for model in self.program.models:
            self.model_kernel(model)
            self.model_class(model, model_code)
            model_code.line()
            model_code.line()
        inline = sum(a.size for _, a in self.weights) <= INLINE_LIMIT and all(
            np.isfinite(a).all() for _, a in self.weights
        )
        head, data, data_name = self.header(inline)
        parts = [head, self.kernels.text(), self.layer_classes.text(), model_code.text()]
        all_names = ", ".join(repr(self.class_names[m.name]) for m in self.program.models)
        source = "\n\n\n".join(p.rstrip("\n") for p in parts) + f"\n\n\n__all__ = [{all_names}]\n"
        return Output(source, data, data_name)

    def header(self, inline: bool) -> tuple[str, bytes | None, str | None]:
        e = Emitter()
        source = self.program.source
        e.line(f"# Generated by layerc {__version__} from {source!r}. Do not edit:")
        e.line("# recompile with `layerc compile` instead.")
        models = ", ".join(m.name for m in self.program.models)
        e.line(f'"""Models compiled by layerc from {_doc_repr(source)}: {models}."""')
        e.line()
        e.line("import numba as _numba")
        e.line("import numpy as _np")
        e.line()
        e.line("import layerc.runtime as _rt")
        e.line("import layerc.runtime.data as _rt_data")
        e.line()
        e.line(f"_rt.check_abi({ABI})")
        e.line()
        e.line("# No nnan/ninf: NaN and Inf keep IEEE semantics; reassoc lets LLVM vectorise sums.")
        e.line(f"_FASTMATH = {FASTMATH}")
        e.line("# Cache machine code beside this module (or in NUMBA_CACHE_DIR) when numba can.")
        e.line("_CACHE = _rt.kernel_cache(__file__)")
        e.line()
        data = data_name = None
        if inline:
            e.line("# Weights, as compiled from the source (each instance gets its own copy).")
            e.line("_WEIGHTS = {")
            with e.indent():
                for key, array in self.weights:
                    e.line(f"{key!r}: _np.array(")
                    with e.indent():
                        for row in _literal_lines(array):
                            e.line(row)
                        e.line(f"dtype=_np.{array.dtype.name},")
                    e.line("),")
            e.line("}")
        else:
            data, offsets = weights_data.pack([a for _, a in self.weights])
            digest = hashlib.sha256(data).hexdigest()
            data_name = f"{self.module_name}.{digest[:16]}.weights"
            e.line(
                "# Weights: raw little-endian arrays in the file beside this module (SHA-256 checked)."
            )
            e.line("_WEIGHTS = _rt_data.load(")
            with e.indent():
                e.line("__file__,")
                e.line(f"{data_name!r},")
                e.line(f"{digest!r},")
                e.line("{")
                with e.indent():
                    for (key, array), offset in zip(self.weights, offsets, strict=True):
                        dt = array.dtype.newbyteorder("<").str
                        e.line(f"{key!r}: ({offset}, {tuple(array.shape)!r}, {dt!r}),")
                e.line("},")
            e.line(")")
        return e.text(), data, data_name

    # ------------------------------------------------------------------ kernels
    #
    # Calling convention: every kernel writes into an output it is given, so no array crosses
    # back from numba to Python (boxing a returned array costs more than the arithmetic of a
    # small layer). Core kernels work on C-contiguous 2-D (n, features) arrays; module kernels
    # take any (*, features) input and reshape; the fused model kernel runs every layer, with
    # elementwise activations folded into the preceding Linear's epilogue.

    def kernel(self, key: tuple, wanted: str, emit: Callable[[Emitter, str], None]) -> str:
        """The kernel for `key`, emitting it (under a fresh name based on `wanted`) the first
        time it is asked for."""
        if key not in self.kernel_names:
            name = self.names.claim(wanted)
            self.kernel_names[key] = name
            e = self.kernels
            e.line("@_numba.njit(cache=_CACHE, fastmath=_FASTMATH)")
            emit(e, name)
            e.line()
            e.line()
        return self.kernel_names[key]

    def linear_core(self, layer: ir.Layer, dtype: np.dtype, epilogue: ir.Layer | None) -> str:
        n_out, n_in = layer.out_features, layer.in_features
        has_bias = layer.bias is not None
        t = f"_np.{dtype.name}"
        act_key = None if epilogue is None else (epilogue.kind, epilogue.args)
        wanted = f"_linear_{n_out}x{n_in}_{_dtype_tag(dtype)}" + ("" if has_bias else "_nobias")
        if epilogue is not None:
            wanted += "_" + epilogue.spec.base
        expr = "v" if epilogue is None else _elementwise(epilogue, t)
        gemm = n_in * n_out >= BLAS_GEMM_MIN
        gemv = n_in * n_out >= BLAS_GEMV_MIN

        def emit(e: Emitter, name: str) -> None:
            e.line(f"def {name}(xs, ys, weight{', bias' if has_bias else ''}):")
            with e.indent():
                formula = "y = A x + b" if has_bias else "y = A x"
                then = "" if epilogue is None else f", then {epilogue.kind}"
                e.line(
                    f'"""Linear {n_in} -> {n_out}, {dtype.name}: {formula} for each row x of xs{then}.'  # noqa: E501
                )
                e.line()
                e.line(
                    f"A = weight, shape ({n_out}, {n_in}); xs (n, {n_in}) and ys (n, {n_out}) are"
                )
                e.line("C-contiguous and do not overlap.")
                e.line('"""')
                e.line("n = xs.shape[0]")
                if gemv:  # BLAS for every batch size
                    e.line("if n == 0:")
                    with e.indent():
                        e.line("return")
                    e.line("if n == 1:")
                    with e.indent():
                        e.line("_np.dot(weight, xs[0], ys[0])  # BLAS gemv")
                    e.line("else:")
                    with e.indent():
                        e.line("_np.dot(xs, weight.T, ys)  # BLAS gemm")
                    self.epilogue_loop(e, n_out, has_bias, epilogue, expr)
                    return
                if gemm:  # BLAS for batches, loops for one sample
                    e.line("if n >= 2:")
                    with e.indent():
                        e.line("_np.dot(xs, weight.T, ys)  # BLAS gemm")
                        self.epilogue_loop(e, n_out, has_bias, epilogue, expr)
                        e.line("return")
                e.line("for s in range(n):")
                with e.indent():
                    e.line(f"for o in range({n_out}):")
                    with e.indent():
                        e.line(f"acc = {t}(0.0)")
                        e.line(f"for i in range({n_in}):")
                        with e.indent():
                            e.line("acc += weight[o, i] * xs[s, i]")
                        e.line("v = acc + bias[o]" if has_bias else "v = acc")
                        e.line(f"ys[s, o] = {expr}")

        return self.kernel(("linear", n_out, n_in, dtype.name, has_bias, act_key), wanted, emit)

    @staticmethod
    def epilogue_loop(
        e: Emitter, n_out: int, has_bias: bool, epilogue: ir.Layer | None, expr: str
    ) -> None:
        """After BLAS: add the bias and apply the folded activation, in place."""
        if not has_bias and epilogue is None:
            return
        e.line("for s in range(n):")
        with e.indent():
            e.line(f"for o in range({n_out}):")
            with e.indent():
                e.line("v = ys[s, o] + bias[o]" if has_bias else "v = ys[s, o]")
                e.line(f"ys[s, o] = {expr}")

    def activation_core(self, layer: ir.Layer, dtype: np.dtype) -> str:
        t = f"_np.{dtype.name}"
        spec = layer.spec
        wanted = f"_{spec.base}_{_dtype_tag(dtype)}"

        def emit(e: Emitter, name: str) -> None:
            e.line(f"def {name}(xs, ys):")
            with e.indent():
                native = spec.native
                if isinstance(native, kinds.Rowwise):
                    e.line(f'"""{spec.doc}"""')
                    native.emit(e, layer.argdict, t)
                else:
                    e.line(f'"""{spec.doc} ys may be xs."""')
                    e.line("xf = xs.reshape(xs.size)")
                    e.line("yf = ys.reshape(ys.size)")
                    e.line("for i in range(xf.size):")
                    with e.indent():
                        e.line("v = xf[i]")
                        e.line(f"yf[i] = {_elementwise(layer, t)}")

        return self.kernel(("act", layer.kind, layer.args, dtype.name), wanted, emit)

    def module_kernel(self, layer: ir.Layer, dtype: np.dtype) -> str:
        """`kernel(x, y, *params)` for one layer's own class: any (*, features) input."""
        if layer.kind == "Linear":
            core = self.linear_core(layer, dtype, None)
            n_in, n_out = layer.in_features, layer.out_features
            params = "weight, bias" if layer.bias is not None else "weight"

            def emit_linear(e: Emitter, name: str) -> None:
                e.line(f"def {name}(x, y, {params}):")
                with e.indent():
                    e.line(f'"""{core} on x (*, {n_in}) into y (*, {n_out})."""')
                    _emit_input_check(e, dtype, n_in)
                    e.line(f"n = x.size // {n_in}")
                    e.line(f"{core}(x.reshape((n, {n_in})), y.reshape((n, {n_out})), {params})")

            return self.kernel(("module", core), f"{core}_any", emit_linear)
        core = self.activation_core(layer, dtype)

        def emit_act(e: Emitter, name: str) -> None:
            e.line(f"def {name}(x, y):")
            with e.indent():
                e.line(f'"""{core} on x of any shape (*, f) into y of the same shape."""')
                _emit_input_check(e, dtype, None)
                e.line("if x.size == 0:")
                with e.indent():
                    e.line("return")
                e.line("f = x.shape[-1]")
                e.line("n = x.size // f")
                e.line(f"{core}(x.reshape((n, f)), y.reshape((n, f)))")

        return self.kernel(("module", core), f"{core}_any", emit_act)

    def kernel_args(self, model: ir.Model) -> list[tuple[str, tuple[int, ...]]]:
        """The fused kernel's parameters: (state_dict key, shape) in call order."""
        out: list[tuple[str, tuple[int, ...]]] = []
        for path, lin in ir.linears(model):
            out.append((f"{path}.weight", (lin.out_features, lin.in_features)))
            if lin.bias is not None:
                out.append((f"{path}.bias", (lin.out_features,)))
        return out

    def model_kernel(self, model: ir.Model) -> str:
        """The fused forward: every layer of the model (nested models flattened) in one call."""
        for layer in model.layers:
            if isinstance(layer, ir.Layer):
                self.layer_class(layer, model.dtype)
        ops = _fuse(_flatten(model))
        args = self.kernel_args(model)
        arg_names = [f"p{i}" for i in range(len(args))]
        t = f"_np.{model.dtype.name}"
        # Resolve every core first, so the cores are emitted before the fused kernel.
        cores = [
            self.linear_core(op.layer, model.dtype, op.epilogue)
            if op.layer.kind == "Linear"
            else self.activation_core(op.layer, model.dtype)
            for op in ops
        ]

        def emit(e: Emitter, name: str) -> None:
            e.line(f"def {name}({', '.join(['x', 'y', *arg_names])}):")
            with e.indent():
                e.line(
                    f'"""{model.name}, fused: all layers in one native call, '
                    f"x (*, {model.in_features}) into y (*, {model.out_features})."
                )
                if args:
                    e.line()
                    for arg_name, (param_key, shape) in zip(arg_names, args, strict=True):
                        e.line(f"{arg_name}: {param_key} {shape}")
                e.line('"""')
                _emit_input_check(e, model.dtype, model.in_features)
                e.line(f"n = x.size // {model.in_features}")
                e.line("if n == 0:")
                with e.indent():
                    e.line("return")
                e.line(f"h0 = x.reshape((n, {model.in_features}))")
                e.line(f"out = y.reshape((n, {model.out_features}))")
                current, is_input, buffers = "h0", True, 0
                for index, (op, core) in enumerate(zip(ops, cores, strict=True)):
                    last = index == len(ops) - 1
                    if last:
                        target = "out"
                    elif op.layer.kind == "Linear" or is_input:
                        buffers += 1
                        target = f"h{buffers}"
                        e.line(f"{target} = _np.empty((n, {op.width}), dtype={t})")
                    else:
                        target = current  # an activation works in place on an intermediate
                    params = ", ".join(arg_names[i] for i in op.params)
                    call = ", ".join(p for p in (current, target, params) if p)
                    e.line(f"{core}({call})  # {op.describe()}")
                    current, is_input = target, False

        return self.kernel(("model", model.name), f"_forward_{model.name}", emit)

    def layer_class(self, layer: ir.Layer, dtype: np.dtype) -> str:
        """A runtime layer subclass fixed to one shape and dtype, carrying its kernel."""
        tag = _dtype_tag(dtype)
        if layer.kind == "Linear":
            has_bias = layer.bias is not None
            key: tuple = ("Linear", layer.out_features, layer.in_features, dtype.name, has_bias)
            wanted = f"_Linear_{layer.out_features}x{layer.in_features}_{tag}" + (
                "" if has_bias else "_nobias"
            )
        else:
            key = ("act", layer.kind, layer.args, dtype.name)
            wanted = f"_{layer.kind}_{tag}"
        if key in self.layer_class_names:
            return self.layer_class_names[key]
        kernel = self.module_kernel(layer, dtype)
        name = self.names.claim(wanted)
        self.layer_class_names[key] = name
        e = self.layer_classes
        if layer.kind == "Linear":
            e.line(f"class {name}(_rt.Linear):")
            with e.indent():
                e.line(
                    f'"""Linear({layer.in_features}, {layer.out_features}, bias={has_bias}), {dtype.name}."""'
                )
                e.line()
                e.line(f"in_features = {layer.in_features}")
                e.line(f"out_features = {layer.out_features}")
                e.line(f"has_bias = {has_bias}")
                e.line(f"dtype = _np.dtype({dtype.name!r})")
                e.line(f"_kernel = staticmethod({kernel})")
                params: list[tuple[str, tuple[int, ...]]] = [
                    ("weight", (layer.out_features, layer.in_features))
                ]
                if has_bias:
                    params.append(("bias", (layer.out_features,)))
                e.line(f"_kernel_params = {tuple(params)!r}")
        else:
            e.line(f"class {name}(_rt.{layer.kind}):")
            with e.indent():
                e.line(f"dtype = _np.dtype({dtype.name!r})")
                for pname, value in layer.args:
                    e.line(f"{pname} = {_py_value(value)}")
                e.line(f"_kernel = staticmethod({kernel})")
        e.line()
        e.line()
        return name

    # ------------------------------------------------------------------ models

    def model_class(self, model: ir.Model, e: Emitter) -> None:
        cls = self.class_names[model.name]
        e.line(f"class {cls}(_rt.Model):")
        with e.indent():
            e.line(
                f'"""{model.name}: x (*, {model.in_features}) -> y (*, {model.out_features}), '
                f"{model.dtype.name}; from {_doc_repr(self.program.source)}, line {model.loc.line}."
            )
            e.line()
            for layer in model.layers:
                e.line(f"({layer.name}): {_describe(layer)}")
            e.line('"""')
            e.line()
            if cls != model.name:
                e.line(f"_name = {model.name!r}")
            e.line(f"in_features = {model.in_features}")
            e.line(f"out_features = {model.out_features}")
            e.line(f"dtype = _np.dtype({model.dtype.name!r})")
            e.line(f"_kernel = staticmethod({self.kernel_names[('model', model.name)]})")
            e.line(f"_kernel_params = {tuple(self.kernel_args(model))!r}")
            aliases = self.aliases(model)
            for alias, key in aliases:
                e.line(f"{alias} = _rt.child({key!r})")
            e.line()
            e.line("def __init__(self):")
            with e.indent():
                e.line("super().__init__()")
                for layer in model.layers:
                    e.line(f"self.add_module({layer.name!r}, {self.construct(model, layer)})")
            if cls != model.name:
                e.line()
                e.line("def _get_name(self):")
                with e.indent():
                    e.line("return self._name")

    def aliases(self, model: ir.Model) -> list[tuple[str, str]]:
        """Identifier attributes for children whose names are not (positions, keywords)."""
        names = {layer.name for layer in model.layers}
        out = []
        for layer in model.layers:
            name = layer.name
            if name.isidentifier() and not keyword.iskeyword(name):
                continue
            alias = f"layer_{name}" if name.isdigit() else f"{name}_"
            while alias in names or alias in MODEL_CLASS_ATTRS or keyword.iskeyword(alias):
                alias += "_"
            names.add(alias)
            out.append((alias, name))
        return out

    def construct(self, model: ir.Model, layer: ir.Child) -> str:
        if isinstance(layer, ir.Layer) and layer.kind == "Linear":
            cls = self.layer_class(layer, model.dtype)
            key = f"{model.name}/{layer.name}"
            assert layer.weight is not None
            self.weights.append((f"{key}.weight", layer.weight))
            args = f"_WEIGHTS[{key + '.weight'!r}]"
            if layer.bias is not None:
                self.weights.append((f"{key}.bias", layer.bias))
                args += f", _WEIGHTS[{key + '.bias'!r}]"
            return f"{cls}({args})"
        if isinstance(layer, ir.Layer):
            return f"{self.layer_class(layer, model.dtype)}()"
        if isinstance(layer, ir.Submodel):
            return f"{self.class_names[layer.model.name]}()"
        raise CodegenError(f"failed to render layer {layer!r}")


def _describe(layer: ir.Child) -> str:
    if isinstance(layer, ir.Layer) and layer.kind == "Linear":
        return f"Linear(in_features={layer.in_features}, out_features={layer.out_features}, bias={layer.bias is not None})"
    if isinstance(layer, ir.Submodel):
        return f"{layer.model.name}, {layer.model.in_features} -> {layer.model.out_features}"
    args = ", ".join(f"{k}={v!r}" for k, v in layer.args)
    return f"{layer.kind}({args})"


def _literal_lines(array: np.ndarray) -> list[str]:
    """An array as Python list literal lines: one line per row for matrices."""
    if array.ndim == 1:
        return ["[" + ", ".join(_py_float(v) for v in array.tolist()) + "],"]
    rows = ["[" + ", ".join(_py_float(v) for v in row) + "]," for row in array.tolist()]
    return ["[", *["    " + r for r in rows], "],"]


__all__ = ["generate", "Output", "Emitter", "CodegenError"]
