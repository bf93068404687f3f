"""Every layer kind of the language against torch.nn in eval mode (PyTorch 2.13 is the reference).

For each kind, in float32 and float64: a model of that layer alone and a model of a Linear
followed by it (so that kinds which fuse run inside the Linear's epilogue) are compiled; their
weights and buffers move to the torch twin through `state_dict`, and the outputs on random
inputs and on the inputs where the formulas change (thresholds, clip bounds, zeros of both
signs, large magnitudes, NaN and infinities) must agree with torch's within
`torch.testing.assert_close`'s default tolerances, on the fused path (no hooks) and on the path
that runs each layer on its own (a hook registered). Also here: state_dicts both ways (buffers
included, `num_batches_tracked` as torch loads it), `repr`, the `input=` option, BatchNorm1d
folded into a Linear with every hook seeing what torch's sees, and the checker's errors.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import around, compile_text
from torch import nn

from layerc import driver
from layerc.errors import LayercError, Loc
from layerc.kinds import KINDS

TOLERANCES = {np.float32: {"rtol": 1.3e-6, "atol": 1e-5}, np.float64: {"rtol": 1e-7, "atol": 1e-7}}
WIDTH = 8
RNG = np.random.default_rng(12)

# Where the formulas change: zero (both signs), clip bounds (+-1, +-3, 6), Softplus's threshold
# (20 with beta 1, 5 / 2 with beta 2), exp's overflow and underflow, large magnitudes.
FINITE_SPECIALS = [
    0.0, -0.0, 1.0, -1.0, 1e-7, -1e-7, 0.5, -0.5, 2.5, -2.5, 2.4999, 2.5001, 3.0, -3.0, 2.9999,
    -2.9999, 6.0, 5.9999, 6.0001, 19.9999, 20.0, 20.0001, 30.0, -30.0, 80.0, -80.0, 89.0, -89.0,
    100.0, -100.0, 1e4, -1e4, 1e30, -1e30,
]  # fmt: skip
NONFINITE = [math.nan, math.inf, -math.inf]


def _w(values) -> str:
    """A literal for the .lyr source, every number printed with repr (exact)."""
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if isinstance(values, list):
        return "[" + ", ".join(_w(v) for v in values) + "]"
    return repr(float(values))


_RUNNING_MEAN = RNG.standard_normal(WIDTH)
_RUNNING_VAR = RNG.uniform(0.2, 3.0, WIDTH)
_GAMMA = RNG.uniform(-2.0, 2.0, WIDTH)
_BETA = RNG.standard_normal(WIDTH)
_SLOPES = RNG.uniform(-0.5, 0.5, WIDTH)
_BN_STATS = f"running_mean = {_w(_RUNNING_MEAN)}; running_var = {_w(_RUNNING_VAR)}"
_AFFINE = f"weight = {_w(_GAMMA)}; bias = {_w(_BETA)}"


@dataclass(frozen=True)
class Case:
    id: str
    lyr: str  # the layer as the source writes it
    torch: object  # () -> the torch.nn module
    # the torch module is too inaccurate or inconsistent for these inputs to be a reference
    specials: tuple[float, ...] = tuple(FINITE_SPECIALS + NONFINITE)
    # computes with the statistics of the whole batch (BatchNorm1d without running statistics)
    batch: bool = False


def _no_inf(values: list[float]) -> tuple[float, ...]:
    return tuple(v for v in values if not math.isinf(v))


def _moderate(values: list[float]) -> tuple[float, ...]:
    """torch accumulates the moments of float32 values in float32, which overflows for |x| near
    1e20: large magnitudes are left out where a layer normalises with computed statistics."""
    return tuple(v for v in values if not abs(v) >= 1e20)


CASES = [
    Case("ReLU", "ReLU()", nn.ReLU),
    Case("Sigmoid", "Sigmoid()", nn.Sigmoid),
    Case("Tanh", "Tanh()", nn.Tanh),
    Case("Identity", "Identity()", nn.Identity),
    Case("LeakyReLU", "LeakyReLU(0.2)", lambda: nn.LeakyReLU(0.2)),
    Case("Softmax", "Softmax(dim=-1)", lambda: nn.Softmax(dim=-1)),
    Case("Dropout", "Dropout(0.3)", lambda: nn.Dropout(0.3)),
    Case("AlphaDropout", "AlphaDropout(p=0.1, inplace=false)", lambda: nn.AlphaDropout(p=0.1)),
    # torch's float32 GELU gives inf or NaN for +inf depending on where the value sits in
    # the tensor (its vectorised erf), so infinities are left out of its reference.
    Case("GELU", "GELU()", nn.GELU, _no_inf(FINITE_SPECIALS + NONFINITE)),
    Case("GELU-tanh", 'GELU(approximate="tanh")', lambda: nn.GELU(approximate="tanh")),
    Case("ELU", "ELU()", nn.ELU),
    Case("ELU-alpha", "ELU(alpha=0.5)", lambda: nn.ELU(alpha=0.5)),
    Case("CELU", "CELU()", nn.CELU),
    Case("CELU-alpha", "CELU(2.5)", lambda: nn.CELU(2.5)),
    Case("Softplus", "Softplus()", nn.Softplus),
    Case(
        "Softplus-beta", "Softplus(beta=2, threshold=5)", lambda: nn.Softplus(beta=2, threshold=5)
    ),
    Case("Hardtanh", "Hardtanh()", nn.Hardtanh),
    Case("Hardtanh-bounds", "Hardtanh(-2.5, 0.5)", lambda: nn.Hardtanh(-2.5, 0.5)),
    Case("SiLU", "SiLU()", nn.SiLU),
    Case("Mish", "Mish()", nn.Mish),
    Case("SELU", "SELU()", nn.SELU),
    Case("ReLU6", "ReLU6()", nn.ReLU6),
    Case("Hardsigmoid", "Hardsigmoid()", nn.Hardsigmoid),
    Case("Hardswish", "Hardswish()", nn.Hardswish),
    Case("LogSigmoid", "LogSigmoid()", nn.LogSigmoid),
    Case("Softsign", "Softsign()", nn.Softsign),
    Case("LogSoftmax", "LogSoftmax(dim=-1)", lambda: nn.LogSoftmax(dim=-1)),
    # The shrinks switch at +-lambd: FINITE_SPECIALS hold +-0.5, +-2.5 and +-3 with neighbours,
    # and around(0.1) a lambd that float32 does not hold, exactly and one step to either side.
    Case("Hardshrink", "Hardshrink()", nn.Hardshrink),
    Case("Hardshrink-lambd", "Hardshrink(2.5)", lambda: nn.Hardshrink(2.5)),
    Case(
        "Hardshrink-inexact",
        "Hardshrink(lambd=0.1)",
        lambda: nn.Hardshrink(lambd=0.1),
        tuple(FINITE_SPECIALS + NONFINITE + around(0.1)),
    ),
    Case("Hardshrink-zero", "Hardshrink(0)", lambda: nn.Hardshrink(0)),
    # torch's Hardshrink takes a negative lambd (it is then the identity), as layerc does
    Case("Hardshrink-negative", "Hardshrink(-1.0)", lambda: nn.Hardshrink(-1.0)),
    Case("Softshrink", "Softshrink()", nn.Softshrink),
    Case("Softshrink-lambd", "Softshrink(lambd=3)", lambda: nn.Softshrink(lambd=3)),
    Case(
        "Softshrink-inexact",
        "Softshrink(0.1)",
        lambda: nn.Softshrink(0.1),
        tuple(FINITE_SPECIALS + NONFINITE + around(0.1)),
    ),
    Case("Softshrink-zero", "Softshrink(0.0)", lambda: nn.Softshrink(0.0)),
    Case("Tanhshrink", "Tanhshrink()", nn.Tanhshrink),
    Case("PReLU", "PReLU()", nn.PReLU),
    Case("PReLU-init", "PReLU(init=-0.1)", lambda: nn.PReLU(init=-0.1)),
    Case("PReLU-channels", f"PReLU({WIDTH}) {{ weight = {_w(_SLOPES)} }}", lambda: nn.PReLU(WIDTH)),
    Case(
        "BatchNorm1d",
        f"BatchNorm1d({WIDTH}) {{ {_AFFINE}; {_BN_STATS} }}",
        lambda: nn.BatchNorm1d(WIDTH),
    ),
    Case(
        "BatchNorm1d-no-affine",
        f"BatchNorm1d({WIDTH}, 0.001, affine=false) {{ {_BN_STATS} }}",
        lambda: nn.BatchNorm1d(WIDTH, 0.001, affine=False),
    ),
    Case(
        "BatchNorm1d-no-bias",
        f"BatchNorm1d(num_features={WIDTH}, bias=false) {{ weight = {_w(_GAMMA)}; {_BN_STATS} }}",
        lambda: nn.BatchNorm1d(WIDTH, bias=False),
    ),
    Case("BatchNorm1d-defaults", f"BatchNorm1d({WIDTH})", lambda: nn.BatchNorm1d(WIDTH)),
    Case(
        "BatchNorm1d-batch-statistics",
        f"BatchNorm1d({WIDTH}, track_running_stats=false) {{ {_AFFINE} }}",
        lambda: nn.BatchNorm1d(WIDTH, track_running_stats=False),
        _moderate(FINITE_SPECIALS + NONFINITE),
        batch=True,
    ),
    Case(
        "BatchNorm1d-batch-statistics-no-affine",
        f"BatchNorm1d({WIDTH}, affine=false, track_running_stats=false)",
        lambda: nn.BatchNorm1d(WIDTH, affine=False, track_running_stats=False),
        _moderate(FINITE_SPECIALS + NONFINITE),
        batch=True,
    ),
    Case(
        "LayerNorm",
        f"LayerNorm({WIDTH}) {{ {_AFFINE} }}",
        lambda: nn.LayerNorm(WIDTH),
        _moderate(FINITE_SPECIALS + NONFINITE),
    ),
    Case(
        "LayerNorm-no-affine",
        f"LayerNorm([{WIDTH}], eps=0.01, elementwise_affine=false)",
        lambda: nn.LayerNorm([WIDTH], eps=0.01, elementwise_affine=False),
        _moderate(FINITE_SPECIALS + NONFINITE),
    ),
    Case(
        "LayerNorm-no-bias",
        f"LayerNorm({WIDTH}, bias=false) {{ weight = {_w(_GAMMA)} }}",
        lambda: nn.LayerNorm(WIDTH, bias=False),
        _moderate(FINITE_SPECIALS + NONFINITE),
    ),
]
IDS = [case.id for case in CASES]
# The Linear before the layer is a signed permutation: its products and sums are exact in
# torch and in layerc alike, so the special values reach the layer unchanged (up to sign and
# position), and a per-channel layer's channels are the Linear's outputs.
LINEAR_WEIGHT = np.eye(WIDTH)[RNG.permutation(WIDTH)] * RNG.choice([-1.0, 1.0], WIDTH)[:, None]
LINEAR_BIAS = np.zeros(WIDTH)


def source(dtype: str) -> str:
    """For each case, `Alone{i}` (the layer by itself, input=[8]) and `After{i}` (a Linear,
    then the layer)."""
    linear = f"fc = Linear({WIDTH}, {WIDTH}) {{ weight = {_w(LINEAR_WEIGHT)}; bias = {_w(LINEAR_BIAS)} }}"
    models = []
    for i, case in enumerate(CASES):
        models.append(f"model Alone{i}(dtype={dtype}, input=[{WIDTH}]) {{\n    l = {case.lyr}\n}}")
        models.append(f"model After{i}(dtype={dtype}) {{\n    {linear}\n    l = {case.lyr}\n}}")
    return "\n".join(models) + "\n"


@pytest.fixture(scope="module", params=["float32", "float64"])
def module(request, tmp_path_factory):
    dtype = request.param
    return dtype, compile_text(
        source(dtype), tmp_path_factory.mktemp(f"kinds_{dtype}"), f"kinds_{dtype}"
    )


def to_torch(state) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.array(value)) for key, value in state.items()}


def torch_twin(case: Case, net, dtype: str, after: bool) -> nn.Module:
    layers = [("l", case.torch())]
    if after:
        layers.insert(0, ("fc", nn.Linear(WIDTH, WIDTH)))
    model = nn.Sequential(OrderedDict(layers)).to(getattr(torch, dtype)).eval()
    result = model.load_state_dict(to_torch(net.state_dict()))
    assert repr(result) == "<All keys matched successfully>"
    return model


def inputs(case: Case, dtype: np.dtype, finite: bool) -> np.ndarray:
    """Random rows, then the special values (finite ones only for `finite`), WIDTH per row."""
    specials = [v for v in case.specials if math.isfinite(v) or not finite]
    specials += [0.0] * (-len(specials) % WIDTH)
    rows = np.concatenate(
        [RNG.standard_normal((6, WIDTH)) * 3, np.array(specials).reshape(-1, WIDTH)]
    )
    return rows.astype(dtype)


def assert_matches(ours: np.ndarray, theirs: torch.Tensor, dtype: type) -> None:
    assert isinstance(ours, np.ndarray) and ours.dtype == dtype
    torch.testing.assert_close(
        torch.from_numpy(np.array(ours)), theirs, equal_nan=True, **TOLERANCES[dtype]
    )


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
@pytest.mark.parametrize("after", [False, True], ids=["alone", "after-linear"])
def test_kind_computes_what_torch_computes(module, index: int, after: bool) -> None:
    dtype_name, gen = module
    dtype = np.dtype(dtype_name).type
    case = CASES[index]
    net = getattr(gen, f"{'After' if after else 'Alone'}{index}")()
    reference = torch_twin(case, net, dtype_name, after)
    # After a Linear, 0 * inf is NaN in every output: the non-finite values go through the
    # layer alone.
    x = inputs(case, dtype, finite=after)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x))
    assert_matches(net(x), expected, dtype)  # the fused path
    if case.batch:  # one value per channel has no variance: torch refuses it, and so does layerc
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            reference(torch.from_numpy(x[3:4]))
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            net(x[3])
    else:
        assert_matches(net(x[3]), expected[3], dtype)  # one sample
        batched = x[:6].reshape(2, 3, WIDTH)  # more than one batch axis
        assert_matches(net(batched), expected[:6].reshape(2, 3, WIDTH), dtype)
    with net.register_forward_hook(lambda module, args, output: None):
        assert_matches(net(x), expected, dtype)  # each layer on its own
    assert_matches(net.l(np.asarray(net.fc(x)) if after else x), expected, dtype)
    assert_matches(net.njit()(x), expected, dtype)


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_state_dict_and_repr_are_torchs(module, index: int) -> None:
    dtype_name, gen = module
    case = CASES[index]
    net = gen.__dict__[f"After{index}"]()
    reference = torch_twin(case, net, dtype_name, after=True)
    theirs = reference.state_dict()
    ours = net.state_dict()
    assert list(ours) == list(theirs)
    for key, value in ours.items():
        assert value.dtype == np.dtype(str(theirs[key].dtype).removeprefix("torch."))
        np.testing.assert_array_equal(value, theirs[key].numpy())
    assert [k for k, _ in net.named_parameters()] == [k for k, _ in reference.named_parameters()]
    assert [k for k, _ in net.named_buffers()] == [k for k, _ in reference.named_buffers()]
    assert len(list(net.buffers())) == len(list(reference.buffers()))
    assert repr(net) == repr(reference).replace("Sequential", f"After{index}", 1)
    assert net.l.extra_repr() == reference.l.extra_repr()


@pytest.mark.parametrize(
    "index",
    [i for i, c in enumerate(CASES) if any(True for _ in c.torch().parameters()) or "Norm" in c.id],
)
def test_state_dict_moves_from_torch(module, index: int) -> None:
    """Random weights and buffers set in torch load into the generated module, which then
    computes what torch computes."""
    dtype_name, gen = module
    dtype = np.dtype(dtype_name).type
    case = CASES[index]
    net = gen.__dict__[f"After{index}"]()
    reference = torch_twin(case, net, dtype_name, after=True)
    generator = torch.Generator().manual_seed(index)
    with torch.no_grad():
        for key, tensor in reference.state_dict().items():
            if not key.startswith("l."):
                continue  # the Linear stays a signed permutation (see LINEAR_WEIGHT)
            if tensor.dtype.is_floating_point:
                tensor.copy_(
                    torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype) + 0.5
                )
            else:
                tensor.fill_(7)  # num_batches_tracked
    result = net.load_state_dict(reference.state_dict())
    assert repr(result) == "<All keys matched successfully>"
    x = inputs(case, dtype, finite=True)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x))
    assert_matches(net(x), expected, dtype)
    with net.register_forward_hook(lambda module, args, output: None):
        assert_matches(net(x), expected, dtype)
    if "BatchNorm" in case.id and case.batch:
        assert net.l.num_batches_tracked is None and reference.l.num_batches_tracked is None
    elif "BatchNorm" in case.id:
        assert net.l.num_batches_tracked.dtype == np.int64 and int(net.l.num_batches_tracked) == 7


# --------------------------------------------------------------------------- num_batches_tracked


BN_LYR = """
model Net {
    fc = Linear(4, 3) { init = uniform(seed=0) }
    bn = BatchNorm1d(3) { running_mean = [0.5, -1, 2]; running_var = [1, 4, 0.25] }
    ReLU()
}
"""


def torch_bn_net() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict([("fc", nn.Linear(4, 3)), ("bn", nn.BatchNorm1d(3)), ("2", nn.ReLU())])
    ).eval()


@pytest.fixture(scope="module")
def bn_module(tmp_path_factory):
    return compile_text(BN_LYR, tmp_path_factory.mktemp("bn"), "bn_net")


def test_num_batches_tracked_loads_as_torch_loads_it(bn_module) -> None:
    """A plain dict without num_batches_tracked loads (torch fills it in for a state_dict
    without version metadata); torch's own state_dict without it is missing a key."""
    net, reference = bn_module.Net(), torch_bn_net()
    reference.load_state_dict(to_torch(net.state_dict()))
    assert net.bn.num_batches_tracked.shape == () and net.bn.num_batches_tracked.dtype == np.int64
    plain = {k: v for k, v in reference.state_dict().items() if "num_batches" not in k}
    assert repr(net.load_state_dict(plain)) == repr(reference.load_state_dict(plain))
    versioned = reference.state_dict()
    del versioned["bn.num_batches_tracked"]
    with pytest.raises(RuntimeError) as theirs:
        reference.load_state_dict(versioned)
    with pytest.raises(RuntimeError) as ours:
        net.load_state_dict(versioned)
    assert str(ours.value).replace("Net", "Sequential") == str(theirs.value)
    ours_result = net.load_state_dict(versioned, strict=False)
    assert ours_result == reference.load_state_dict(versioned, strict=False)


def test_buffers_are_set_as_torch_sets_them(bn_module) -> None:
    net = bn_module.Net()
    net.bn.running_mean = np.array([1.0, 2.0, 3.0])
    assert net.bn.running_mean.dtype == np.float32
    assert net.get_buffer("bn.running_var").tolist() == [1, 4, 0.25]
    with pytest.raises(ValueError):
        net.bn.running_var = np.zeros(4)
    # As torch: a buffer can be deleted, and the layer then fails when called.
    reference = torch.nn.BatchNorm1d(3).eval()
    del reference.running_mean
    del net.bn.running_mean
    assert "running_mean" not in dict(net.named_buffers())
    x = np.ones((2, 3), np.float32)
    with pytest.raises(AttributeError) as theirs:
        reference(torch.from_numpy(x))
    with pytest.raises(AttributeError) as ours:
        net.bn(x)
    assert str(ours.value) == str(theirs.value)


def test_batchnorm_folded_into_linear_and_hooks_see_what_torchs_see(bn_module) -> None:
    """The fused forward folds bn into fc's epilogue (the plan says so); with hooks on every
    module each layer runs on its own, and every hook sees the values torch's hooks see."""
    program, _ = driver.check_file(Path(bn_module.__file__).with_suffix(".lyr"))
    plan = driver.plan_text(program)
    assert "(fc) Linear 4 -> 3, (bn) BatchNorm1d, (2) ReLU" in plan
    net, reference = bn_module.Net(), torch_bn_net()
    reference.load_state_dict(to_torch(net.state_dict()))
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x))
    assert_matches(net(x), expected, np.float32)
    seen: dict[str, list] = {"layerc": [], "torch": []}

    def recorder(side: str, name: str):
        def hook(module, args, output):
            arrays = [np.array(a.detach().numpy() if hasattr(a, "detach") else a) for a in args]
            out = output.detach().numpy() if hasattr(output, "detach") else output
            seen[side].append((name, arrays, np.array(out)))

        return hook

    handles = [m.register_forward_hook(recorder("layerc", n)) for n, m in net.named_modules()]
    handles += [m.register_forward_hook(recorder("torch", n)) for n, m in reference.named_modules()]
    with torch.no_grad():
        assert_matches(net(x), reference(torch.from_numpy(x)), np.float32)
    for handle in handles:
        handle.remove()
    assert [name for name, _, _ in seen["layerc"]] == ["fc", "bn", "2", ""]
    assert [name for name, _, _ in seen["layerc"]] == [name for name, _, _ in seen["torch"]]
    for (_, our_args, our_out), (_, their_args, their_out) in zip(
        seen["layerc"], seen["torch"], strict=True
    ):
        for a, b in zip(our_args, their_args, strict=True):
            assert_matches(a, torch.from_numpy(b), np.float32)
        assert_matches(our_out, torch.from_numpy(their_out), np.float32)
    # editing a buffer in place changes the fused path too (nothing is folded at compile time)
    net.bn.running_var[:] = [2.0, 2.0, 2.0]
    reference.bn.running_var.data[:] = 2.0
    with torch.no_grad():
        assert_matches(net(x), reference(torch.from_numpy(x)), np.float32)


# --------------------------------------------------------------------------- shapes


SHAPES_LYR = """
model Mnist(input=[1, 4, 4]) {
    Flatten()
    fc = Linear(16, 5) { init = uniform(seed=0) }
    bn = BatchNorm1d(5)
    GELU()
}

model Rows(input=[3, 4]) {
    fc = Linear(4, 2) { init = uniform(seed=1) }
    norm = LayerNorm([3, 2])
    Tanh()
    flat = Flatten(start_dim=-2)
    p = PReLU(6) { weight = [0.1, 0.2, 0.3, -0.1, -0.2, -0.3] }
}

model Middle(input=[2, 3, 4]) {
    f = Flatten(2, 3)
    bn = BatchNorm1d(2) { running_mean = [1, -1]; running_var = [2, 0.5] }
    p = PReLU(2)
    out = Flatten()
    LogSoftmax()
}

model Copy(input=[2, 2]) {
    Dropout()
    Flatten()
}
"""


def torch_shapes() -> dict[str, nn.Module]:
    return {
        "Mnist": nn.Sequential(
            OrderedDict(
                [
                    ("0", nn.Flatten()),
                    ("fc", nn.Linear(16, 5)),
                    ("bn", nn.BatchNorm1d(5)),
                    ("3", nn.GELU()),
                ]
            )
        ),
        "Rows": nn.Sequential(
            OrderedDict(
                [
                    ("fc", nn.Linear(4, 2)),
                    ("norm", nn.LayerNorm([3, 2])),
                    ("2", nn.Tanh()),
                    ("flat", nn.Flatten(start_dim=-2)),
                    ("p", nn.PReLU(6)),
                ]
            )
        ),
        "Middle": nn.Sequential(
            OrderedDict(
                [
                    ("f", nn.Flatten(2, 3)),
                    ("bn", nn.BatchNorm1d(2)),
                    ("p", nn.PReLU(2)),
                    ("out", nn.Flatten()),
                    ("4", nn.LogSoftmax(dim=-1)),
                ]
            )
        ),
        "Copy": nn.Sequential(OrderedDict([("0", nn.Dropout()), ("1", nn.Flatten())])),
    }


@pytest.fixture(scope="module")
def shapes_module(tmp_path_factory):
    return compile_text(SHAPES_LYR, tmp_path_factory.mktemp("shapes"), "shapes_net")


@pytest.mark.parametrize(
    ("name", "shape"),
    [("Mnist", (1, 4, 4)), ("Rows", (3, 4)), ("Middle", (2, 3, 4)), ("Copy", (2, 2))],
)
def test_models_over_per_sample_shapes(shapes_module, name: str, shape: tuple[int, ...]) -> None:
    """`input=` gives the per-sample shape: one sample (shape) or a batch (*, shape); Linear works
    on the last axis and Flatten's dims count one batch axis, as torch's do."""
    net = getattr(shapes_module, name)()
    reference = torch_shapes()[name].eval()
    reference.load_state_dict(to_torch(net.state_dict()))
    assert repr(net) == repr(reference).replace("Sequential", name, 1)
    x = RNG.standard_normal((5, *shape)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x))
    assert_matches(net(x), expected, np.float32)
    assert_matches(net(x[2]), expected[2], np.float32)
    assert_matches(net(x.reshape(5, 1, *shape))[:, 0], expected, np.float32)
    with net.register_forward_hook(lambda module, args, output: None):
        assert_matches(net(x), expected, np.float32)
    assert_matches(net.njit()(x), expected, np.float32)
    assert net(x[:0]).shape == (0, *expected.shape[1:])
    with pytest.raises(
        ValueError, match=r"expected input of shape \(.*\) or \(\*, .*\), got shape"
    ):
        net(np.zeros((5, *shape[:-1], shape[-1] + 1), np.float32))
    assert net.in_shape == shape
    assert (net.in_features is not None) == (len(shape) == 1)


# --------------------------------------------------------------------------- errors

FILE = "m.lyr"
LIN = "fc = Linear(2, 4) { init = uniform(seed=0) }"

# fmt: off
ERRORS = [
    ("dropout-negative", "model M {\n  " + LIN + "\n  Dropout(p=-0.1)\n}", 3, 13,
     "p must be a probability between 0 and 1, not -0.1"),
    ("dropout-above-one", "model M {\n  " + LIN + "\n  Dropout(1.5)\n}", 3, 11,
     "p must be a probability between 0 and 1, not 1.5"),
    ("dropout-not-number", "model M {\n  " + LIN + "\n  AlphaDropout(true)\n}", 3, 16,
     "p must be a probability between 0 and 1"),
    ("dropout-inplace", "model M {\n  " + LIN + "\n  Dropout(0.5, 1)\n}", 3, 16,
     "inplace must be true or false"),
    ("bn-features", "model M {\n  " + LIN + "\n  bn = BatchNorm1d(3)\n}", 3, 20,
     "shape mismatch in model 'M': layer 'bn' expects 3 input features (num_features), but "
     "the previous layer 'fc' (line 2) gives 4"),
    ("bn-features-keyword", "model M {\n  " + LIN + "\n  bn = BatchNorm1d(num_features=5)\n}",
     3, 33, "shape mismatch in model 'M': layer 'bn' expects 5 input features (num_features), "
     "but the previous layer 'fc' (line 2) gives 4"),
    ("bn-zero", "model M {\n  " + LIN + "\n  BatchNorm1d(0)\n}", 3, 15,
     "num_features must be a positive integer, not 0"),
    ("bn-rank", "model M(input=[2, 3, 4]) {\n  BatchNorm1d(2)\n}", 2, 3,
     "shape mismatch in model 'M': layer '0' expects samples of shape (2,) or (2, L) (input "
     "(N, C) or (N, C, L) as torch's BatchNorm1d), but the model's input gives shape (2, 3, 4)"),
    ("bn-stats-without-tracking",
     "model M {\n  " + LIN + "\n  bn = BatchNorm1d(4, 1e-5, 0.1, true, false) { running_mean = [0, 0, 0, 0] }\n}",
     3, 49, "layer 'bn' is declared with track_running_stats=false but gives 'running_mean'"),
    ("bn-entry-shape", "model M {\n  " + LIN + "\n  BatchNorm1d(4) { running_var = [1, 2] }\n}",
     3, 34, "running_var has shape (2,) but must have shape (4,)"),
    ("bn-weight-without-affine",
     "model M {\n  " + LIN + "\n  bn = BatchNorm1d(4, affine=false) { weight = [1, 1, 1, 1] }\n}",
     3, 39, "layer 'bn' is declared with affine=false but gives a weight"),
    ("bn-counter-entry", "model M {\n  " + LIN + "\n  BatchNorm1d(4) { num_batches_tracked = 3 }\n}",
     3, 20, "unknown BatchNorm1d entry 'num_batches_tracked' (entries: weight, bias, "
     "running_mean, running_var)"),
    ("bn-bias-positional", "model M {\n  " + LIN + "\n  BatchNorm1d(4, 1e-5, 0.1, true, true, false)\n}",
     3, 41, "BatchNorm1d takes 5 positional arguments but 6 were given"),
    ("bn-nan-variance", "model M {\n  " + LIN + "\n  BatchNorm1d(4) { running_var = [1, nan, 1, 1] }\n}",
     3, 38, "running_var[1] is nan, not a finite number (write model NAME(allow_nonfinite=true) "
     "to allow inf and nan)"),
    ("ln-features", "model M {\n  " + LIN + "\n  ln = LayerNorm(5)\n}", 3, 18,
     "shape mismatch in model 'M': layer 'ln' expects 5 input features (normalized_shape), but "
     "the previous layer 'fc' (line 2) gives 4"),
    ("ln-trailing", "model M(input=[3, 4]) {\n  ln = LayerNorm([4, 3])\n}", 2, 18,
     "shape mismatch in model 'M': layer 'ln' expects samples whose last axes are (4, 3) "
     "(normalized_shape), but the model's input gives shape (3, 4)"),
    ("ln-empty", "model M {\n  " + LIN + "\n  LayerNorm([])\n}", 3, 13,
     "normalized_shape must not be empty"),
    ("ln-string", "model M {\n  " + LIN + "\n  LayerNorm(\"4\")\n}", 3, 13,
     "normalized_shape must be a positive integer or a list of them, such as [1, 28, 28]"),
    ("ln-weight-shape", "model M {\n  " + LIN + "\n  LayerNorm(4) { weight = [1, 2] }\n}", 3, 27,
     "weight has shape (2,) but must have shape (4,)"),
    ("prelu-channels", "model M {\n  " + LIN + "\n  p = PReLU(3)\n}", 3, 13,
     "shape mismatch in model 'M': layer 'p' expects 3 input features (num_parameters: 1, or "
     "the number of channels), but the previous layer 'fc' (line 2) gives 4"),
    ("prelu-zero", "model M {\n  " + LIN + "\n  PReLU(0)\n}", 3, 9,
     "num_parameters must be a positive integer, not 0"),
    ("prelu-init", "model M {\n  " + LIN + "\n  PReLU(init=inf)\n}", 3, 14,
     "init must be a finite number"),
    ("gelu-approximate", "model M {\n  " + LIN + "\n  GELU(approximate=\"exact\")\n}", 3, 20,
     "approximate must be one of 'none', 'tanh'"),
    ("gelu-approximate-number", "model M {\n  " + LIN + "\n  GELU(1)\n}", 3, 8,
     "approximate must be one of 'none', 'tanh'"),
    ("elu-alpha", "model M {\n  " + LIN + "\n  ELU(alpha=nan)\n}", 3, 13,
     "alpha must be a finite number"),
    ("celu-zero", "model M {\n  " + LIN + "\n  CELU(0)\n}", 3, 8, "alpha must not be zero"),
    ("softplus-beta", "model M {\n  " + LIN + "\n  Softplus(beta=0)\n}", 3, 17,
     "beta must not be zero"),
    ("hardtanh-bounds", "model M {\n  " + LIN + "\n  Hardtanh(1, -1)\n}", 3, 15,
     "Hardtanh needs max_val > min_val, but max_val=-1 and min_val=1"),
    ("silu-argument", "model M {\n  " + LIN + "\n  SiLU(true)\n}", 3, 8,
     "SiLU takes 0 positional arguments but 1 was given"),
    ("softshrink-negative", "model M {\n  " + LIN + "\n  Softshrink(-0.5)\n}", 3, 14,
     "lambd must be >= 0, not -0.5"),
    ("softshrink-negative-keyword", "model M {\n  " + LIN + "\n  s = Softshrink(lambd=-1e-3)\n}",
     3, 24, "lambd must be >= 0, not -1e-3"),
    ("softshrink-inf", "model M {\n  " + LIN + "\n  Softshrink(inf)\n}", 3, 14,
     "lambd must be a finite number"),
    ("hardshrink-nan", "model M {\n  " + LIN + "\n  Hardshrink(lambd=nan)\n}", 3, 20,
     "lambd must be a finite number"),
    ("hardshrink-string", "model M {\n  " + LIN + "\n  Hardshrink(\"0.5\")\n}", 3, 14,
     "lambd must be a finite number"),
    ("hardshrink-bool", "model M {\n  " + LIN + "\n  Hardshrink(true)\n}", 3, 14,
     "lambd must be a finite number"),
    ("hardshrink-list", "model M {\n  " + LIN + "\n  Hardshrink([0.5])\n}", 3, 14,
     "lambd must be a finite number"),
    ("hardshrink-lambda", "model M {\n  " + LIN + "\n  Hardshrink(lambda=0.5)\n}", 3, 14,
     "Hardshrink has no argument 'lambda'; did you mean 'lambd'? (arguments: lambd)"),
    ("softshrink-twice", "model M {\n  " + LIN + "\n  Softshrink(0.5, lambd=0.5)\n}", 3, 19,
     "argument 'lambd' is given twice"),
    ("tanhshrink-argument", "model M {\n  " + LIN + "\n  Tanhshrink(0.5)\n}", 3, 14,
     "Tanhshrink takes 0 positional arguments but 1 was given"),
    ("log-softmax-dim", "model M {\n  " + LIN + "\n  LogSoftmax(dim=0)\n}", 3, 18,
     "LogSoftmax supports dim=-1 only (the feature axis, which is the last axis of every input "
     "a layerc model takes)"),
    ("flatten-needs-input", "model M {\n  Flatten()\n  " + LIN + "\n}", 2, 3,
     "model 'M' starts with Flatten, which cannot tell the shape of its input: give it as the "
     "model option input=[...], such as input=[1, 28, 28]"),
    ("flatten-range", "model M(input=[1, 4, 4]) {\n  Flatten(start_dim=4)\n}", 2, 21,
     "Flatten's start_dim=4 is out of range: its input (N, 1, 4, 4) has 4 dimensions, so dims "
     "go from -4 to 3"),
    ("flatten-range-end", "model M(input=[1, 4, 4]) {\n  Flatten(1, -5)\n}", 2, 14,
     "Flatten's end_dim=-5 is out of range: its input (N, 1, 4, 4) has 4 dimensions, so dims "
     "go from -4 to 3"),
    ("flatten-batch", "model M(input=[1, 4, 4]) {\n  Flatten(0)\n}", 2, 11,
     "Flatten(start_dim=0) would flatten the batch axis into the features; a layerc model keeps "
     "its batch axis, so start_dim must be at least 1"),
    ("flatten-order", "model M(input=[1, 4, 4]) {\n  Flatten(3, 2)\n}", 2, 11,
     "Flatten's start_dim=3 comes after its end_dim=2 on an input (N, 1, 4, 4)"),
    ("input-zero", "model M(input=[1, 0]) {\n  ReLU()\n}", 1, 19,
     "input must be a positive integer, not 0"),
    ("input-empty", "model M(input=[]) {\n  ReLU()\n}", 1, 15, "input must not be empty"),
    ("input-not-shape", "model M(input=true) {\n  ReLU()\n}", 1, 15,
     "input must be a positive integer or a list of them, such as [1, 28, 28]"),
    ("input-mismatch", "model M(input=[3]) {\n  " + LIN + "\n}", 2, 3,
     "shape mismatch in model 'M': layer 'fc' expects 2 input features, but the model's input "
     "gives 3"),
    ("input-rank", "model M(input=[1, 1, 1, 1, 1, 1, 1, 1, 1]) {\n  ReLU()\n}", 1, 15,
     "input has more than 8 dimensions"),
    ("test-input-shape", "model M(input=[2, 2]) {\n  Flatten()\n}\ntest M { input = [1, 2, 3, 4]; expect = [1, 2, 3, 4] }",
     4, 18, "input has shape (4,) but the model takes (2, 2) or (N, 2, 2)"),
]
# fmt: on


@pytest.mark.parametrize(
    ("text", "line", "col", "message"), [pytest.param(*c[1:], id=c[0]) for c in ERRORS]
)
def test_error_message_and_location(text: str, line: int, col: int, message: str) -> None:
    from layerc import syntax
    from layerc.check import check

    with pytest.raises(LayercError) as info:
        check(syntax.parse(text, FILE), Path("."))
    assert info.value.message == message
    assert info.value.loc == Loc(FILE, line, col)


def test_every_kind_is_tested_against_torch() -> None:
    tested = {case.lyr.split("(")[0] for case in CASES}
    assert tested | {"Linear", "Flatten"} == set(KINDS)
    for kind in KINDS.values():
        assert kind.name == getattr(nn, kind.name).__name__
