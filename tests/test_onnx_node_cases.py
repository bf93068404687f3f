"""ONNX's own operator test cases through `layerc import`: material nobody on the project wrote.

The cases are those of `onnx.backend.test.case.node`, each a model of one operator (or of the
function it expands to, `*_expanded`) with inputs and the outputs ONNX computes for them. Older
onnx releases ship them as files, `onnx/backend/test/data/node/<case>/model.onnx` with
`test_data_set_0/input_*.pb` and `output_*.pb`; newer ones (onnx PR #7959) build them in
memory instead. `onnx.backend.test.loader.load_model_tests(kind="node")` gives them either way,
and `case_model` / `case_data` read both forms.

Every case whose op types are all in `SUPPORTED_OPS` is listed in exactly one of two lists:
IMPORTED, inside layerc's language (float32 or float64 tensors, axis 0 of each input the batch,
constants for every node input but the value it computes on, arithmetic between values of one
shape, Softmax, LogSoftmax and Concat on the last axis), whose import compiles and computes the
case's expected outputs; and REFUSED, outside it, whose import raises a `LayercError` that says
why and writes nothing. A new onnx release that adds such a case, or a change to SUPPORTED_OPS,
fails `test_every_case_of_the_ops_layerc_reads_is_listed_once` until the case is listed."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx.backend.test.case.test_case import TestCase
from onnx.backend.test.loader import load_model_tests

from layerc import driver
from layerc.errors import LayercError
from layerc.onnx_io import SUPPORTED_OPS, import_onnx

# ONNX computes the expected outputs with NumPy formulas of its own: layerc's float32 agrees to
# a few ulps (5e-6 relative at most, GELU near 0); the tolerance leaves room for another libm.
# float64 agrees to rounding.
TOLERANCE = {
    np.dtype(np.float32): {"rtol": 1e-4, "atol": 1e-5},
    np.dtype(np.float64): {"rtol": 1e-9, "atol": 1e-12},
}

# Inside the language: each imports, compiles and computes the case's outputs.
IMPORTED = [
    "test_add",
    "test_celu",
    "test_concat_2d_axis_1",
    "test_concat_2d_axis_negative_1",
    "test_concat_3d_axis_2",
    "test_concat_3d_axis_negative_1",
    "test_dropout_default",
    "test_dropout_random_old",
    "test_elu",
    "test_elu_default",
    "test_flatten_axis1",
    "test_flatten_default_axis",
    "test_flatten_negative_axis3",
    "test_gelu_default_2",
    "test_gelu_tanh_2",
    "test_hardswish",
    "test_hardswish_expanded",
    "test_identity",  # imports as Identity()
    "test_leakyrelu",
    "test_leakyrelu_default",
    "test_logsoftmax_axis_2",
    "test_logsoftmax_default_axis",
    "test_logsoftmax_example_1",
    "test_logsoftmax_large_number",
    "test_logsoftmax_negative_axis",
    "test_mul",
    "test_neg",
    "test_relu",
    "test_selu_default",
    "test_sigmoid",
    "test_softmax_axis_2",
    "test_softmax_default_axis",
    "test_softmax_example",
    "test_softmax_large_number",
    "test_softmax_negative_axis",
    "test_softplus",
    "test_softsign",
    "test_sub",
    "test_tanh",
]

# Outside the language, by family: (what the refusal says, the cases).
REFUSED_FAMILIES: list[tuple[str, list[str]]] = [
    # Integer, float16 and bfloat16 tensors (a Reshape's shape given as an int64 graph input).
    (
        "float32 or float64",
        [
            *(f"test_{op}_{t}" for op in ("add", "mul", "sub") for t in ("int8", "int16")),
            *(f"test_{op}_uint{n}" for op in ("add", "mul", "sub") for n in (8, 16, 32, 64)),
            "test_celu_bfloat16",
            "test_celu_float16",
            "test_clip_default_int8_inbounds",
            "test_clip_default_int8_inbounds_expanded",
            "test_clip_default_int8_max",
            "test_clip_default_int8_min",
            "test_reshape_allowzero_reordered",
            "test_reshape_extended_dims",
            "test_reshape_negative_dim",
            "test_reshape_negative_extended_dims",
            "test_reshape_one_dim",
            "test_reshape_reduced_dims",
            "test_reshape_reordered_all_dims",
            "test_reshape_reordered_last_dims",
            "test_reshape_zero_and_negative_dim",
            "test_reshape_zero_dim",
        ],
    ),
    # Optional and sequence inputs.
    ("is not a tensor", ["test_identity_opt", "test_identity_sequence"]),
    # A 1-D input: a batch of scalars, where a layerc sample has at least one axis.
    (
        "(batch, features)",
        [
            "test_clip_default_inbounds",
            "test_clip_default_inbounds_expanded",
            "test_clip_example",
            "test_clip_inbounds",
            "test_clip_min_greater_than_max",
            "test_clip_outbounds",
            "test_clip_splitbounds",
            "test_concat_1d_axis_0",
            "test_concat_1d_axis_negative_1",
            "test_dropout_default_old",
            "test_elu_example",
            "test_gelu_default_1",
            "test_gelu_tanh_1",
            "test_hardsigmoid_example",
            "test_leakyrelu_example",
            "test_matmul_1d_1d",
            "test_matmul_1d_3d",
            "test_mish",
            "test_mish_expanded",
            "test_mul_example",
            "test_neg_example",
            "test_selu_example",
            "test_shrink_hard",
            "test_shrink_soft",
            "test_sigmoid_example",
            "test_softplus_example",
            "test_softsign_example",
            "test_sub_example",
            "test_tanh_example",
        ],
    ),
    # A parameter given as a 0-D or 1-D graph input where layerc needs a constant (Clip's
    # bounds, Dropout's ratio and training mode, BatchNormalization's statistics, Gemm's C,
    # LayerNormalization's scale, PRelu's slope), or a second operand that broadcasts.
    (
        "(batch, features)",
        [
            "test_add_bcast",
            "test_batchnorm_epsilon",
            "test_batchnorm_epsilon_training_mode",
            "test_batchnorm_example",
            "test_batchnorm_example_training_mode",
            "test_clip",
            "test_clip_default_max",
            "test_clip_default_min",
            "test_dropout_default_mask_ratio",
            "test_dropout_default_ratio",
            "test_gemm_default_scalar_bias",
            "test_gemm_default_single_elem_vector_bias",
            "test_layer_normalization_2d_axis1",
            "test_layer_normalization_2d_axis_negative_1",
            "test_layer_normalization_3d_axis2_epsilon",
            "test_layer_normalization_3d_axis_negative_1_epsilon",
            "test_layer_normalization_4d_axis3",
            "test_layer_normalization_4d_axis_negative_1",
            "test_layer_normalization_default_axis",
            "test_matmul_4d_1d",
            "test_mul_bcast",
            "test_prelu_broadcast",
            "test_sub_bcast",
            "test_training_dropout",
            "test_training_dropout_default",
            "test_training_dropout_default_mask",
            "test_training_dropout_mask",
            "test_training_dropout_zero_ratio",
            "test_training_dropout_zero_ratio_mask",
        ],
    ),
    # A weight given as a graph input (Gemm's B, PRelu's slope), or MatMul of two values.
    (
        "constants otherwise",
        [
            "test_gemm_all_attributes",
            "test_gemm_alpha",
            "test_gemm_beta",
            "test_gemm_default_matrix_bias",
            "test_gemm_default_no_bias",
            "test_gemm_default_vector_bias",
            "test_gemm_default_zero_bias",
            "test_gemm_transposeA",
            "test_gemm_transposeB",
            "test_matmul_2d",
            "test_matmul_3d",
            "test_matmul_4d",
            "test_matmul_bcast",
            "test_prelu_example",
        ],
    ),
    # Softmax and LogSoftmax over an axis other than the last.
    (
        "only the last (feature) axis",
        [
            "test_logsoftmax_axis_0",
            "test_logsoftmax_axis_1",
            "test_softmax_axis_0",
            "test_softmax_axis_1",
        ],
    ),
    # Concat along an axis other than the last.
    (
        "along their last axis",
        [
            "test_concat_2d_axis_0",
            "test_concat_2d_axis_negative_2",
            "test_concat_3d_axis_0",
            "test_concat_3d_axis_1",
            "test_concat_3d_axis_negative_2",
            "test_concat_3d_axis_negative_3",
        ],
    ),
    # Flatten at an axis other than 1, which mixes the batch with the sample's axes.
    (
        "flattens at axis",
        [
            "test_flatten_axis0",
            "test_flatten_axis2",
            "test_flatten_axis3",
            "test_flatten_negative_axis1",
            "test_flatten_negative_axis2",
            "test_flatten_negative_axis4",
        ],
    ),
    # More than one output per node: Dropout's mask, LayerNormalization's mean and inverse
    # standard deviation.
    (
        "outputs; layerc expects one",
        [
            "test_dropout_default_mask",
            "test_layer_normalization_2d_axis0",
            "test_layer_normalization_2d_axis_negative_2",
            "test_layer_normalization_3d_axis0_epsilon",
            "test_layer_normalization_3d_axis1_epsilon",
            "test_layer_normalization_3d_axis_negative_2_epsilon",
            "test_layer_normalization_3d_axis_negative_3_epsilon",
            "test_layer_normalization_4d_axis0",
            "test_layer_normalization_4d_axis1",
            "test_layer_normalization_4d_axis2",
            "test_layer_normalization_4d_axis_negative_2",
            "test_layer_normalization_4d_axis_negative_3",
            "test_layer_normalization_4d_axis_negative_4",
        ],
    ),
    # Constants no kind computes: HardSigmoid's alpha other than torch's 1/6 (ONNX's default
    # is 0.2), Selu's alpha and gamma other than torch's.
    ("that no layer kind computes", ["test_hardsigmoid", "test_hardsigmoid_default", "test_selu"]),
    # Transpose of a value (layerc transposes only constants, weights).
    (
        "transposes the output",
        [*(f"test_transpose_all_permutations_{i}" for i in range(6)), "test_transpose_default"],
    ),
    # A model without input.
    ("the graph has no input", ["test_constant"]),
]

REFUSED = sorted((name, needle) for needle, names in REFUSED_FAMILIES for name in names)


# --------------------------------------------------------------------------- the cases


@functools.cache
def node_cases() -> dict[str, TestCase]:
    """ONNX's node test cases by name (read once: building them all takes a few seconds)."""
    with warnings.catch_warnings():  # some cases overflow casts on purpose
        warnings.simplefilter("ignore")
        return {case.name: case for case in load_model_tests(kind="node")}


def case_model(case: TestCase) -> onnx.ModelProto:
    """The case's model: built in memory, or read from the case's folder."""
    if case.model is not None:
        return case.model
    assert case.model_dir is not None
    return onnx.load(Path(case.model_dir) / "model.onnx")


def read_tensors(folder: Path, kind: str) -> list[np.ndarray]:
    """`folder`'s `<kind>_0.pb`, `<kind>_1.pb`, ... as arrays, in order."""
    paths = sorted(folder.glob(f"{kind}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
    tensors = []
    for path in paths:
        tensor = TensorProto()
        tensor.ParseFromString(path.read_bytes())
        tensors.append(numpy_helper.to_array(tensor))
    return tensors


def as_array(value: object) -> np.ndarray:
    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


def case_data(case: TestCase) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The inputs and expected outputs of the case's first data set."""
    if case.data_sets is not None:
        inputs, outputs = case.data_sets[0]
        return [as_array(x) for x in inputs], [as_array(y) for y in outputs]
    assert case.model_dir is not None
    folder = Path(case.model_dir) / "test_data_set_0"
    return read_tensors(folder, "input"), read_tensors(folder, "output")


def reads_only_supported_ops(case: TestCase) -> bool:
    return {node.op_type for node in case_model(case).graph.node} <= set(SUPPORTED_OPS)


def copy_model(folder: Path, name: str) -> Path:
    """The case's model.onnx, written into `folder` (never into the onnx package)."""
    path = folder / "model.onnx"
    path.write_bytes(case_model(node_cases()[name]).SerializeToString())
    return path


def run_imported(lyr: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Compile the imported .lyr beside itself and call its model on `inputs`."""
    program, written = driver.compile_file(lyr)
    module = driver.import_module(written[-1])
    net = getattr(module, program.models[0].name)()
    got = net(*inputs)
    return [np.asarray(y) for y in (got if isinstance(got, tuple) else (got,))]


# --------------------------------------------------------------------------- tests


def test_every_case_of_the_ops_layerc_reads_is_listed_once() -> None:
    candidates = {name for name, case in node_cases().items() if reads_only_supported_ops(case)}
    listed = IMPORTED + [name for name, _ in REFUSED]
    assert IMPORTED == sorted(IMPORTED)
    assert len(listed) == len(set(listed)), "a case is listed twice"
    assert sorted(candidates - set(listed)) == [], "cases to list as IMPORTED or REFUSED"
    assert sorted(set(listed) - candidates) == [], "listed cases this onnx does not have"


@pytest.mark.parametrize("name", IMPORTED)
def test_cases_inside_the_language_import_and_match_onnx(tmp_path: Path, name: str) -> None:
    inputs, expected = case_data(node_cases()[name])
    lyr = import_onnx(copy_model(tmp_path, name), tmp_path / "model.lyr")[-1]
    got = run_imported(lyr, inputs)
    assert len(got) == len(expected)
    for ours, want in zip(got, expected, strict=True):
        assert (ours.dtype, ours.shape) == (want.dtype, want.shape)
        np.testing.assert_allclose(ours, want, **TOLERANCE[want.dtype])


@pytest.mark.parametrize(("name", "needle"), REFUSED, ids=[name for name, _ in REFUSED])
def test_cases_outside_the_language_are_refused(tmp_path: Path, name: str, needle: str) -> None:
    path = copy_model(tmp_path, name)
    with pytest.raises(LayercError) as refused:
        import_onnx(path, tmp_path / "model.lyr")
    assert refused.value.message.strip()
    assert needle in refused.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
