"""Code generation: a `lower.Plan` in, the text of a Python module (and, for large or non-finite
weights, the bytes of one weights file) out.

The module holds the plan's numba kernels (one per layer kind and shape, one fused forward per
model), one runtime layer class per kind, arguments and shape, and one class per model built on
`layerc.runtime`. Every decision (fusion, BLAS paths, buffers, names, where weights go) is the
plan's; this module only renders it. Nothing from the source is pasted as text: identifiers come
checked from the plan, strings go through `repr()`, numbers are printed from parsed values.
Output is byte-identical run to run.
"""

from __future__ import annotations

import hashlib
import keyword
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from . import __version__, ir, kinds, lower
from .lower import (
    ForwardKernel,
    LayerClass,
    LayerKernel,
    LinearKernel,
    ModelClass,
    ModuleKernel,
    Plan,
    describe,
)
from .runtime import data as weights_data
from .runtime.layers import reserved_names

# No nnan/ninf: NaN and Inf keep IEEE semantics. `reassoc` lets LLVM vectorise dot products.
FASTMATH = '{"reassoc", "contract"}'

# The generated module's own globals: no kernel or class may take these names.
MODULE_GLOBALS = frozenset(
    {"_np", "_numba", "_math", "_rt", "_rt_data", "_WEIGHTS", "_FASTMATH", "_CACHE", "__all__"}
)

MODEL_CLASS_ATTRS = reserved_names()


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
    """Code generation met a plan it does not handle: a bug in layerc."""


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


def _dims(shape: tuple[int, ...]) -> str:
    """`3` or `1, 28, 28`: a shape's dimensions as in `(*, 1, 28, 28)`."""
    return ", ".join(map(str, shape))


def _shape(shape: tuple[int, ...]) -> str:
    return f"({_dims(shape)}{',' if len(shape) == 1 else ''})"


@dataclass(frozen=True)
class Output:
    source: str
    data: bytes | None  # the weights file's contents, if the weights are not inline
    data_name: str | None


def generate(program: ir.Program, module_name: str) -> Output:
    """Lower `program` and render the plan as the module `module_name`."""
    return render(lower.lower(program, MODULE_GLOBALS), module_name)


def render(plan: Plan, module_name: str) -> Output:
    return _Renderer(plan, module_name).run()


def _emit_input_check(e: Emitter, dtype: np.dtype, shape: tuple[int, ...] | None) -> None:
    """Kernels accept any real array: converted to the model's dtype and made C-contiguous
    (both free when already so), its trailing axes checked. The runtime calls them without
    checking in Python, and on an exception re-checks in Python for a detailed message."""
    e.line(f"x = _np.ascontiguousarray(_np.asarray(x, dtype=_np.{dtype.name}))")
    if shape is None:
        return
    if len(shape) == 1:
        e.line(f"if x.shape[-1] != {shape[0]}:")
    else:
        rank = len(shape)
        tests = [f"x.ndim < {rank}"] + [
            f"x.shape[x.ndim - {rank - i}] != {size}" for i, size in enumerate(shape)
        ]
        e.line(f"if {' or '.join(tests)}:")
    with e.indent():
        e.line(
            f'raise ValueError("expected input of shape {_shape(shape)} or (*, {_dims(shape)})")'
        )


class _Renderer:
    def __init__(self, plan: Plan, module_name: str):
        self.plan = plan
        self.module_name = module_name
        self.kernels = {k.name: k for k in plan.kernels}

    def run(self) -> Output:
        kernels = Emitter()
        for kernel in self.plan.kernels:
            kernels.line("@_numba.njit(cache=_CACHE, fastmath=_FASTMATH)")
            self.kernel(kernels, kernel)
            kernels.line()
            kernels.line()
        classes = Emitter()
        for cls in self.plan.layer_classes:
            self.layer_class(classes, cls)
            classes.line()
            classes.line()
        models = Emitter()
        for model in self.plan.models:
            self.model_class(models, model)
            models.line()
            models.line()
        head, data, data_name = self.header(uses_math="_math." in kernels.text())
        parts = [head, kernels.text(), classes.text(), models.text()]
        all_names = ", ".join(repr(m.name) for m in self.plan.models)
        source = "\n\n\n".join(p.rstrip("\n") for p in parts) + f"\n\n\n__all__ = [{all_names}]\n"
        return Output(source, data, data_name)

    def header(self, uses_math: bool) -> tuple[str, bytes | None, str | None]:
        e = Emitter()
        source = self.plan.source
        e.line(f"# Generated by layerc {__version__} from {source!r}. Do not edit:")
        e.line("# recompile with `layerc compile` instead.")
        models = ", ".join(m.model.name for m in self.plan.models)
        e.line(f'"""Models compiled by layerc from {_doc_repr(source)}: {models}."""')
        e.line()
        if uses_math:
            e.line("import math as _math")
            e.line()
        e.line("import numba as _numba")
        e.line("import numpy as _np")
        e.line()
        e.line("import layerc.runtime as _rt")
        e.line("import layerc.runtime.data as _rt_data")
        e.line()
        e.line(f"_rt.check_abi({self.plan.abi})")
        e.line()
        e.line("# No nnan/ninf: NaN and Inf keep IEEE semantics; reassoc lets LLVM vectorise sums.")
        e.line(f"_FASTMATH = {FASTMATH}")
        e.line("# Cache machine code beside this module (or in NUMBA_CACHE_DIR) when numba can.")
        e.line("_CACHE = _rt.kernel_cache(__file__)")
        e.line()
        data = data_name = None
        weights = self.plan.weights
        if self.plan.inline:
            e.line("# Weights, as compiled from the source (each instance gets its own copy).")
            e.line("_WEIGHTS = {")
            with e.indent():
                for key, array in weights:
                    e.line(f"{key!r}: _np.array(")
                    with e.indent():
                        for row in _literal_lines(array):
                            e.line(row)
                        e.line(f"dtype=_np.{array.dtype.name},")
                    e.line("),")
            e.line("}")
        else:
            data, offsets = weights_data.pack([a for _, a in weights])
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
                    for (key, array), offset in zip(weights, offsets, strict=True):
                        dt = array.dtype.newbyteorder("<").str
                        e.line(f"{key!r}: ({offset}, {tuple(array.shape)!r}, {dt!r}),")
                e.line("},")
            e.line(")")
        return e.text(), data, data_name

    # ------------------------------------------------------------------ kernels
    #
    # Calling convention: every kernel writes into an output it is given, so no array crosses
    # back from numba to Python (boxing a returned array costs more than the arithmetic of a
    # small layer). Core kernels work on C-contiguous 2-D (rows, values) arrays; module kernels
    # take any (*, *shape) input and reshape; the fused model kernel runs every layer.

    def kernel(self, e: Emitter, kernel: lower.Kernel) -> None:
        if isinstance(kernel, LinearKernel):
            self.linear_kernel(e, kernel)
        elif isinstance(kernel, LayerKernel):
            self.layer_kernel(e, kernel)
        elif isinstance(kernel, ModuleKernel):
            self.module_kernel(e, kernel)
        elif isinstance(kernel, ForwardKernel):
            self.forward_kernel(e, kernel)
        else:
            raise CodegenError(f"failed to render kernel {kernel!r}")

    def linear_kernel(self, e: Emitter, k: LinearKernel) -> None:
        layer = k.layer
        n_out, n_in = layer.out_features, layer.in_features
        has_bias = layer.bias is not None
        t = f"_np.{k.dtype.name}"
        e.line(f"def {k.name}({', '.join(['xs', 'ys', *k.params])}):")
        with e.indent():
            formula = "y = A x + b" if has_bias else "y = A x"
            then = "".join(f", then {fold.layer.kind}" for fold in k.folds)
            e.line(
                f'"""Linear {n_in} -> {n_out}, {k.dtype.name}: {formula} for each row x of xs{then}.'  # noqa: E501
            )
            e.line()
            e.line(f"A = weight, shape ({n_out}, {n_in}); xs (n, {n_in}) and ys (n, {n_out}) are")
            e.line("C-contiguous and do not overlap.")
            e.line('"""')
            e.line("n = xs.shape[0]")
            for index, fold in enumerate(k.folds, 1):
                native = fold.layer.spec.native
                if isinstance(native, kinds.Channelwise) and native.prepare is not None:
                    native.prepare(e, fold.layer.argdict, t, _prefixed(f"e{index}_"), str(n_out))
            if k.blas == lower.GEMV:  # BLAS for every batch size
                e.line("if n == 0:")
                with e.indent():
                    e.line("return")
                e.line("if n == 1:")
                with e.indent():
                    e.line("_np.dot(weight, xs[0], ys[0])  # BLAS gemv")
                e.line("else:")
                with e.indent():
                    e.line("_np.dot(xs, weight.T, ys)  # BLAS gemm")
                self.epilogue_loop(e, k, n_out, t)
                return
            if k.blas == lower.GEMM:  # BLAS for batches, loops for one sample
                e.line("if n >= 2:")
                with e.indent():
                    e.line("_np.dot(xs, weight.T, ys)  # BLAS gemm")
                    self.epilogue_loop(e, k, n_out, t)
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
                    self.epilogue(e, k, t)

    def epilogue_loop(self, e: Emitter, k: LinearKernel, n_out: int, t: str) -> None:
        """After BLAS: add the bias and apply the folded layers, in place."""
        has_bias = k.layer.bias is not None
        if not has_bias and not k.folds:
            return
        e.line("for s in range(n):")
        with e.indent():
            e.line(f"for o in range({n_out}):")
            with e.indent():
                e.line("v = ys[s, o] + bias[o]" if has_bias else "v = ys[s, o]")
                self.epilogue(e, k, t)

    @staticmethod
    def epilogue(e: Emitter, k: LinearKernel, t: str) -> None:
        """`ys[s, o] = ...` of the value `v`: each folded layer in turn, the output feature `o`
        being the channel of a per-channel one."""
        exprs = [
            _fold_expr(fold.layer, t, _prefixed(f"e{i}_"), "o") for i, fold in enumerate(k.folds, 1)
        ]
        for expr in exprs[:-1]:
            e.line(f"v = {expr}")
        e.line(f"ys[s, o] = {exprs[-1] if exprs else 'v'}")

    def layer_kernel(self, e: Emitter, k: LayerKernel) -> None:
        layer = k.layer
        spec = layer.spec
        native = spec.native
        t = f"_np.{k.dtype.name}"
        e.line(f"def {k.name}({', '.join(['xs', 'ys', *k.params])}):")
        with e.indent():
            if isinstance(native, kinds.Rowwise):
                e.line(f'"""{spec.doc}"""')
                native.emit(e, layer.argdict, t)
            elif isinstance(native, kinds.Elementwise):
                e.line(f'"""{spec.doc} ys may be xs."""')
                e.line("xf = xs.reshape(xs.size)")
                e.line("yf = ys.reshape(ys.size)")
                e.line("for i in range(xf.size):")
                with e.indent():
                    e.line("v = xf[i]")
                    e.line(f"yf[i] = {native.expr(layer.argdict, t)}")
            elif isinstance(native, kinds.Channelwise):
                e.line(f'"""{spec.doc} Rows of xs are samples of C channels; ys may be xs."""')
                e.line("m, w = xs.shape")
                e.line(f"C = {native.channels(layer.argdict)}")
                e.line("L = w // C")
                if native.prepare is not None:
                    native.prepare(e, layer.argdict, t, _plain, "C")
                e.line("for s in range(m):")
                with e.indent():
                    e.line("for c in range(C):")
                    with e.indent():
                        e.line("for j in range(c * L, c * L + L):")
                        with e.indent():
                            e.line("v = xs[s, j]")
                            e.line(f"ys[s, j] = {native.expr(layer.argdict, t, _plain, 'c')}")
            else:
                raise CodegenError(f"failed to render {layer.kind!r} of layer {layer.name!r}")

    def module_kernel(self, e: Emitter, k: ModuleKernel) -> None:
        """`kernel(x, y, *params)` for one layer's own class."""
        e.line(f"def {k.name}({', '.join(['x', 'y', *k.params])}):")
        params = "".join(f", {p}" for p in k.params)
        with e.indent():
            if k.accepts is None:
                e.line(f'"""{k.core} on x of any shape (*, f) into y of the same shape."""')
                _emit_input_check(e, k.dtype, None)
                e.line("if x.size == 0:")
                with e.indent():
                    e.line("return")
                e.line("f = x.shape[-1]")
                e.line("n = x.size // f")
                e.line(f"{k.core}(x.reshape((n, f)), y.reshape((n, f)){params})")
                return
            assert k.out_shape is not None
            size_in, size_out = math.prod(k.accepts), math.prod(k.out_shape)
            e.line(f'"""{k.core} on x (*, {_dims(k.accepts)}) into y (*, {_dims(k.out_shape)})."""')
            _emit_input_check(e, k.dtype, k.accepts)
            e.line(f"n = x.size // {size_in}")
            rows = "n" if k.rows == 1 else f"n * {k.rows}"
            e.line(
                f"{k.core}(x.reshape(({rows}, {size_in // k.rows})), "
                f"y.reshape(({rows}, {size_out // k.rows})){params})"
            )

    def forward_kernel(self, e: Emitter, k: ForwardKernel) -> None:
        """The fused forward: every step in one call."""
        model = k.model
        arg_names = [f"p{i}" for i in range(len(k.args))]
        t = f"_np.{model.dtype.name}"
        size_in, size_out = model.in_features, model.out_features
        e.line(f"def {k.name}({', '.join(['x', 'y', *arg_names])}):")
        with e.indent():
            e.line(
                f'"""{model.name}, fused: all layers in one native call, '
                f"x (*, {_dims(model.in_shape)}) into y (*, {_dims(model.out_shape)})."
            )
            if k.args:
                e.line()
                for arg_name, (key, shape) in zip(arg_names, k.args, strict=True):
                    e.line(f"{arg_name}: {key} {shape}")
            e.line('"""')
            _emit_input_check(e, model.dtype, model.in_shape)
            e.line(f"n = x.size // {size_in}")
            e.line("if n == 0:")
            with e.indent():
                e.line("return")
            e.line(f"h0 = x.reshape((n, {size_in}))")
            e.line(f"out = y.reshape((n, {size_out}))")
            values = {"x": "h0", "y": "out"}
            sizes = {b.name: b.size for b in k.buffers}
            for step in k.steps:
                if step.target not in values and step.target in sizes:
                    values[step.target] = step.target
                    e.line(f"{step.target} = _np.empty((n, {sizes[step.target]}), dtype={t})")
                source, target = values[step.source], values[step.target]
                if step.rows != 1:
                    source = f"{source}.reshape((n * {step.rows}, {step.in_width}))"
                    target = f"{target}.reshape((n * {step.rows}, {step.out_width}))"
                params = [arg_names[i] for i in step.args]
                described = ", ".join(describe(path, layer) for path, layer in step.layers if path)
                call = ", ".join([source, target, *params])
                e.line(f"{step.kernel}({call})" + (f"  # {described}" if described else ""))

    # ------------------------------------------------------------------ classes

    def layer_class(self, e: Emitter, cls: LayerClass) -> None:
        """A runtime layer subclass fixed to one shape and dtype, carrying its kernel."""
        layer = cls.layer
        spec = layer.spec
        dtype = cls.dtype
        module = self.kernels[cls.kernel]
        assert isinstance(module, ModuleKernel)
        e.line(f"class {cls.name}(_rt.{spec.runtime}):")
        with e.indent():
            if spec.name == "Linear":
                has_bias = layer.bias is not None
                e.line(
                    f'"""Linear({layer.in_features}, {layer.out_features}, bias={has_bias}), {dtype.name}."""'
                )
                e.line()
                e.line(f"in_features = {layer.in_features}")
                e.line(f"out_features = {layer.out_features}")
                e.line(f"has_bias = {has_bias}")
                e.line(f"dtype = _np.dtype({dtype.name!r})")
                e.line(f"_kernel = staticmethod({module.name})")
                self.kernel_params(e, layer)
                return
            if spec.runtime != "Layer":  # the activations with a runtime class of their own
                e.line(f"dtype = _np.dtype({dtype.name!r})")
                for name, value in layer.args:
                    e.line(f"{name} = {_py_value(value)}")
                e.line(f"_kernel = staticmethod({module.name})")
                return
            extra = spec.extra_repr(layer.argdict)
            e.line(f'"""{spec.name}({extra}), {dtype.name}."""')
            e.line()
            e.line(f"_layer_name = {spec.name!r}")
            e.line(f"_extra_repr = {extra!r}")
            tensor_names = {t.name for t in spec.tensors}
            for name, value in layer.args:
                if name not in tensor_names:
                    e.line(f"{name} = {_py_value(value)}")
            e.line(f"dtype = _np.dtype({dtype.name!r})")
            if cls.accepts is not None:
                assert cls.out_shape is not None
                e.line(f"in_shape = {cls.accepts!r}")
                e.line(f"out_shape = {cls.out_shape!r}")
            tensors = []
            for t in spec.tensors:
                value = layer.tensor(t.name)
                shape = None if value is None else tuple(int(d) for d in value.shape)
                fill = None if t.entry else t.initial_value(layer.argdict)
                tensors.append((t.name, shape, t.dtype or "", t.buffer, fill))
            if tensors:
                e.line(f"_tensors = {tuple(tensors)!r}")
            legacy = tuple(
                t.name
                for t in spec.tensors
                if t.legacy_default and layer.tensor(t.name) is not None
            )
            if legacy:
                e.line(f"_legacy_defaults = {legacy!r}")
            e.line(f"_kernel = staticmethod({module.name})")
            self.kernel_params(e, layer)

    @staticmethod
    def kernel_params(e: Emitter, layer: ir.Layer) -> None:
        params = []
        for name in lower.kernel_tensors(layer):
            value = layer.tensor(name)
            assert value is not None
            params.append((name, tuple(int(d) for d in value.shape)))
        if params:
            e.line(f"_kernel_params = {tuple(params)!r}")

    def model_class(self, e: Emitter, cls: ModelClass) -> None:
        model = cls.model
        e.line(f"class {cls.name}(_rt.Model):")
        with e.indent():
            e.line(
                f'"""{model.name}: x (*, {_dims(model.in_shape)}) -> y (*, {_dims(model.out_shape)}), '
                f"{model.dtype.name}; from {_doc_repr(self.plan.source)}, line {model.loc.line}."
            )
            e.line()
            for layer in model.layers:
                e.line(f"({layer.name}): {_describe(layer)}")
            e.line('"""')
            e.line()
            if cls.name != model.name:
                e.line(f"_name = {model.name!r}")
            if len(model.in_shape) == 1:
                e.line(f"in_features = {model.in_features}")
            else:
                e.line(f"in_shape = {model.in_shape!r}")
            if len(model.out_shape) == 1:
                e.line(f"out_features = {model.out_features}")
            else:
                e.line(f"out_shape = {model.out_shape!r}")
            e.line(f"dtype = _np.dtype({model.dtype.name!r})")
            forward = self.kernels[cls.forward]
            assert isinstance(forward, ForwardKernel)
            e.line(f"_kernel = staticmethod({forward.name})")
            e.line(f"_kernel_params = {forward.args!r}")
            for alias, key in _aliases(model):
                e.line(f"{alias} = _rt.child({key!r})")
            e.line()
            e.line("def __init__(self):")
            with e.indent():
                e.line("super().__init__()")
                for (child, class_name), layer in zip(cls.children, model.layers, strict=True):
                    e.line(
                        f"self.add_module({child!r}, {class_name}({self.weights(model, layer)}))"
                    )
            if cls.name != model.name:
                e.line()
                e.line("def _get_name(self):")
                with e.indent():
                    e.line("return self._name")

    @staticmethod
    def weights(model: ir.Model, layer: ir.Child) -> str:
        """The constructor's arguments: the layer's tensors from _WEIGHTS, as the plan stores them."""
        if isinstance(layer, ir.Submodel):
            return ""
        keys = [
            f"{model.name}/{layer.name}.{t.name}"
            for t in layer.spec.tensors
            if t.entry and layer.tensor(t.name) is not None
        ]
        return ", ".join(f"_WEIGHTS[{key!r}]" for key in keys)


def _plain(name: str) -> str:
    return name


def _prefixed(prefix: str) -> kinds.Ref:
    def ref(name: str) -> str:
        return prefix + name

    return ref


def _fold_expr(layer: ir.Layer, t: str, ref: kinds.Ref, channel: str) -> str:
    native = layer.spec.native
    if isinstance(native, kinds.Elementwise):
        return native.expr(layer.argdict, t)
    if isinstance(native, kinds.Channelwise):
        return native.expr(layer.argdict, t, ref, channel)
    raise CodegenError(f"failed to fold {layer.kind!r} of layer {layer.name!r} into a Linear")


def _aliases(model: ir.Model) -> list[tuple[str, str]]:
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


def _describe(layer: ir.Child) -> str:
    """A child as the model's docstring lists it: torch's repr of a layer, a nested model's
    name and sizes."""
    if isinstance(layer, ir.Submodel):
        sub = layer.model
        if len(sub.in_shape) == 1 and len(sub.out_shape) == 1:
            return f"{sub.name}, {sub.in_features} -> {sub.out_features}"
        return f"{sub.name}, {_shape(sub.in_shape)} -> {_shape(sub.out_shape)}"
    return f"{layer.kind}({layer.spec.extra_repr(layer.argdict)})"


def _literal_lines(array: np.ndarray) -> list[str]:
    """An array as Python list literal lines: one line per row for matrices (nested lists for
    more dimensions)."""
    if array.ndim == 1:
        return ["[" + ", ".join(_py_float(v) for v in array.tolist()) + "],"]
    if array.ndim == 2:
        rows = ["[" + ", ".join(_py_float(v) for v in row) + "]," for row in array.tolist()]
        return ["[", *["    " + r for r in rows], "],"]
    inner = [line for sub in array for line in _literal_lines(sub)]
    return ["[", *["    " + line for line in inner], "],"]


__all__ = ["generate", "render", "Output", "Emitter", "CodegenError", "MODULE_GLOBALS"]
