"""The test block `layerc import` writes: a sample batch run through ONNX's own reference
implementation (`onnx.reference.ReferenceEvaluator`), so that `layerc test` on the imported file
shows that it computes what the ONNX model does.

`reference_test` draws a small seeded batch for every graph input (standard normal values rounded
to two decimals, so that an inline input reads as it is) and runs the model the importer read on
it; `render_test` turns the result into a `test` block, printed by the one printer, with its arrays
inline when they are small and in the import's weights file (keys `test.input`, `test.expect`)
when they are not; `add_reference_test` is what `import_onnx` calls. A model the reference cannot
run (an op it does not implement, say) is imported without the block, with a one-line note on
stderr. The reference runs only on a model the importer accepted: a chain of the ops it reads,
with at most as many weights as a source may hold.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import syntax as S
from .check import MAX_TEST_VALUES
from .errors import LayercError, Loc
from .onnx_read import first_line as _first_line
from .onnx_read import quote as _q
from .printer import print_program

BATCH = 3  # samples in the test
SEED = 0
# A test whose inputs and outputs hold at most this many numbers in all is written inline;
# a larger one goes into the weights file.
MAX_INLINE_VALUES = 64
# (atol, rtol) as written in the block: what a model of the dtype must meet against the reference,
# which computes in the model's dtype too (in another order: float32 sums differ in the last
# bits, and a layer such as LayerNorm or Softmax can make that a few ulps of the output).
TOLERANCES = {
    np.dtype(np.float32): ("1e-5", "1e-4"),
    np.dtype(np.float64): ("1e-9", "1e-9"),
}
# Where the nodes of the block stand: nowhere in a source.
_BUILT = Loc("<layerc import>", 1, 1)


class Unverifiable(Exception):
    """Why the model gets no test block (one line)."""


@dataclass(frozen=True)
class ReferenceTest:
    """A batch through the reference: the inputs in the graph's order (its forward order) as the
    model's dtype, the outputs in the graph's order as the reference computed them."""

    inputs: tuple[np.ndarray, ...]
    outputs: tuple[np.ndarray, ...]
    dtype: np.dtype  # the model's: the widest of the inputs'
    # The inputs as drawn, in float64, whose shortest text is what an inline literal shows.
    drawn: tuple[np.ndarray, ...]


def reference_test(
    model,  # type: ignore[no-untyped-def]
    sample_shapes: Sequence[tuple[int, ...] | None] | None = None,
    *,
    batch: int = BATCH,
    seed: int = SEED,
) -> ReferenceTest:
    """Run the ModelProto `model` with onnx.reference on `batch` seeded samples of every graph
    input that is not an initializer. An input's per-sample shape is its declared one; where an
    axis after the batch has no fixed size, `sample_shapes[i]` (when given) says it. Raises
    `Unverifiable` when the inputs cannot be drawn or the reference cannot run the model."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    constants = {t.name for t in graph.initializer}
    values = [v for v in graph.input if v.name not in constants]
    if not values:
        raise Unverifiable("the graph has no input")
    fixed = [
        v.type.tensor_type.shape.dim[0].dim_value
        for v in values
        if v.type.tensor_type.HasField("shape") and v.type.tensor_type.shape.dim
    ]
    if fixed and fixed[0] > 0:  # an export with a fixed batch (torch's default) may rely on it
        batch = min(fixed[0], 64)
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    drawn: list[np.ndarray] = []
    for index, value in enumerate(values):
        hints = sample_shapes or ()
        hint = hints[index] if index < len(hints) else None
        shape, dtype = _input_type(value, hint, helper)
        sample = np.round(rng.standard_normal((batch, *shape)), 2)
        drawn.append(sample)
        feeds[value.name] = sample.astype(dtype)
    dtypes = {a.dtype for a in feeds.values()}
    model_dtype = min(dtypes, key=lambda d: d.itemsize)  # float32 if any input is
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the outputs are the test; its warnings, noise
            evaluator = ReferenceEvaluator(model, new_ops=[_inference_batch_norm()])
            results = evaluator.run(None, feeds)
    except MemoryError:
        raise
    except Exception as exc:  # an op the reference does not implement, and its own errors
        raise Unverifiable(
            f"onnx.reference cannot run the model: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    outputs = []
    for output, result in zip(graph.output, results, strict=True):
        array = np.asarray(result)
        if array.dtype.kind != "f" or array.ndim < 1 or array.shape[0] != batch:
            raise Unverifiable(
                f"output {_q(output.name)} of the reference is {array.dtype} of shape "
                f"{array.shape}, not a float batch of {batch} samples"
            )
        outputs.append(array)
    for array in (*feeds.values(), *outputs):
        if array.size > MAX_TEST_VALUES:
            raise Unverifiable(f"an array of the test holds more than {MAX_TEST_VALUES} values")
    return ReferenceTest(tuple(feeds.values()), tuple(outputs), model_dtype, tuple(drawn))


def _inference_batch_norm():  # type: ignore[no-untyped-def]
    """onnx.reference's BatchNormalization, in inference mode whatever its opset: before opset
    14 the reference takes a `momentum` attribute (which torch always writes, and whose default
    the reference fills in) for training mode, where the operator's one-output inference form
    does not depend on it. (layerc reads only BatchNormalization in inference mode.)"""
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=1e-5, **ignored):  # type: ignore[no-untyped-def]
            shape = (-1,) + (1,) * (x.ndim - 2)  # the channels are axis 1
            s, b, m, v = (t.reshape(shape) for t in (scale, bias, mean, var))
            return ((s * (x - m) / np.sqrt(v + epsilon) + b).astype(x.dtype),)

    return BatchNormalization


def _input_type(value, hint: tuple[int, ...] | None, helper) -> tuple[tuple[int, ...], np.dtype]:  # type: ignore[no-untyped-def]
    """A graph input's per-sample shape and dtype."""
    if not value.type.HasField("tensor_type"):
        raise Unverifiable(f"graph input {_q(value.name)} is not a tensor")
    tensor = value.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    if dtype not in TOLERANCES:
        raise Unverifiable(f"graph input {_q(value.name)} is {dtype}, not float32 or float64")
    dims = list(tensor.shape.dim)[1:] if tensor.HasField("shape") else None
    if dims is not None and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return tuple(int(d.dim_value) for d in dims), dtype
    if hint is not None and (dims is None or len(dims) == len(hint)):
        return tuple(hint), dtype
    raise Unverifiable(f"graph input {_q(value.name)} has a sample axis without a fixed size")


def render_test(
    ref: ReferenceTest, model_name: str, weights_name: str, arrays: dict[str, np.ndarray]
) -> str:
    """The text of a `test` block of `model_name` holding `ref`: inline when it is small, else
    loaded from `weights_name`, whose `arrays` it adds to (under keys no layer uses)."""
    total = sum(a.size for a in (*ref.inputs, *ref.outputs))
    inputs: list[S.Value]
    expects: list[S.Value]
    if total <= MAX_INLINE_VALUES:
        # The inputs as drawn (two decimals, which the model's dtype rounds as it rounded the
        # reference's input); the outputs in the shortest text that reads back as their dtype.
        inputs = [_literal(a, repr) for a in ref.drawn]
        expects = [_literal(a, _shortest(a.dtype)) for a in ref.outputs]
        where = ""
    else:
        prefix = "test"
        while any(key.startswith(f"{prefix}.") for key in arrays):
            prefix = f"_{prefix}"
        inputs = _stored(ref.inputs, f"{prefix}.input", weights_name, arrays)
        expects = _stored(ref.outputs, f"{prefix}.expect", weights_name, arrays)
        where = " (stored in the weights file)"
    atol, rtol = TOLERANCES[ref.dtype]
    entries = (
        S.Entry("input", _value(inputs), _BUILT),
        S.Entry("expect", _value(expects), _BUILT),
        S.Entry("atol", S.Number(float(atol), False, atol, _BUILT), _BUILT),
        S.Entry("rtol", S.Number(float(rtol), False, rtol, _BUILT), _BUILT),
    )
    comments = (
        f"What ONNX's reference implementation (onnx.reference) computes for "
        f"{ref.inputs[0].shape[0]} seeded samples{where}:",
        "`layerc test` checks that this file computes the same.",
    )
    test = S.TestDef(model_name, entries, _BUILT, _BUILT, comments)
    return print_program(S.Program("<layerc import>", (test,)))


def add_reference_test(
    model,  # type: ignore[no-untyped-def]
    imported: object,
    text: str,
    arrays: dict[str, np.ndarray],
    weights_name: str,
    display: str,
) -> str:
    """`text` (a rendered import) with a reference test block after it, its arrays added to
    `arrays` when they go to the weights file; `text` alone, with a note on stderr saying why,
    when the reference cannot give one. `imported` (what `_Reader` read) tells the size of an
    input (batch, n) whose n the file leaves open: the first Linear's in_features."""
    try:
        name = _tested_model(text)
        ref = reference_test(model, _hint(imported))
    except Unverifiable as exc:
        why = "".join(c if c.isprintable() else "?" for c in str(exc))  # one line, inert
        print(f"{display}: note: no test block: {why}", file=sys.stderr)
        return text
    return f"{text}\n{render_test(ref, name, weights_name, arrays)}"


def _hint(imported: object) -> list[tuple[int, ...] | None] | None:
    """The sample shape of the first input from what was imported: its `input_shape`, or the
    in_features of a first layer with a weight matrix. (A wrong guess, for a graph whose first
    layer does not read the input, only makes the reference refuse the batch.)"""
    shape = getattr(imported, "input_shape", None)
    if shape is not None:
        return [tuple(shape)]
    layers = getattr(imported, "layers", None) or [None]
    weight = getattr(layers[0], "weight", None)
    if isinstance(weight, np.ndarray) and weight.ndim == 2:
        return [(int(weight.shape[1]),)]
    return None


def _tested_model(text: str) -> str:
    """The model of the rendered file that no other model of it uses."""
    try:
        program = S.parse(text, "<layerc import>")
    except LayercError as exc:  # a bug of the importer; the file is refused when checked
        raise Unverifiable(f"the imported text does not parse: {exc}") from None
    models = [item for item in program.items if isinstance(item, S.ModelDef)]
    used = {layer.kind for m in models for layer in m.layers}
    top = [m.name for m in models if m.name not in used]
    if len(top) != 1:
        raise Unverifiable(f"the file has {len(top)} models that no other model uses, not one")
    return top[0]


def _literal(array: np.ndarray, text: Callable[[float], str]) -> S.ListLit:
    """A nested list literal of `array` (of at least one axis), each number as `text` writes
    it."""

    def nested(a: np.ndarray) -> str:
        if a.ndim == 1:
            return "[" + ",".join(text(v) for v in a.tolist()) + "]"
        return "[" + ",".join(nested(row) for row in a) + "]"

    source = nested(array)
    return S.ListLit(_BUILT, source, 0, len(source))


def _shortest(dtype: np.dtype) -> Callable[[float], str]:
    """The shortest text of a number of `dtype` that reads back as it (`nan`, `inf` as such)."""
    kind = dtype.type
    return lambda value: str(kind(value))


def _stored(
    values: Sequence[np.ndarray], key: str, weights_name: str, arrays: dict[str, np.ndarray]
) -> list[S.Value]:
    """`load(weights_name, key)` for each array, stored in `arrays` under `key` (one array),
    or `key.0`, `key.1`, ... (several)."""
    loads: list[S.Value] = []
    for index, array in enumerate(values):
        name = key if len(values) == 1 else f"{key}.{index}"
        arrays[name] = np.ascontiguousarray(array)
        args = tuple(S.Arg(None, S.String(t, _BUILT), _BUILT) for t in (weights_name, name))
        loads.append(S.Call("load", args, _BUILT))
    return loads


def _value(values: list[S.Value]) -> S.Value | S.TupleLit:
    """One value plainly; several as a tuple, in forward order."""
    return values[0] if len(values) == 1 else S.TupleLit(tuple(values), _BUILT)
