"""Real PyTorch models through ONNX: each model is exported by torch.onnx.export exactly as a
torch user calls it, `torch.onnx.export(net, (x,), path, dynamo=..., opset_version=...)` (no
input names, no dynamic axes, no external-data argument: the batch of 2 the model was traced
with is fixed in the file, and the dynamo exporter puts the larger weights in `path.onnx.data`),
by both of torch's exporters, the TorchScript one (`dynamo=False`) at opsets 11 and 17 and the
dynamo one (the default) at opsets 18 and 20. `layerc.onnx_io.import_onnx` imports the file;
the compiled module must compute what torch does at batches 1 and 7, keep torch's state_dict
keys (the same set, Dropouts that vanish from the export included in the numbering), take
torch's state_dict directly (`load_state_dict` of a differently seeded twin, then of the
original, each checked against torch), and pass the test block the import appends (`layerc
test`, which onnx.reference computed).

The models: every layer kind layerc shares with torch, grouped into a few `nn.Sequential`
chains (a Linear(10, 10) re-spreads the values after a kind that squeezes them, so every kind
sees values on both sides of each of its kinks, which `test_chains_cross_every_kink` checks),
a Flatten of image-like input, a Linear over (N, T, F) input, and graph models: residual,
concatenating, two-input, two-output and nested (blocks in a Sequential, a head whose Dropout
leaves no trace in the export). CELU has no TorchScript export before opset 12, so its chain is
exported at 12 where the others use 11. Every model has one weight above onnx_ir's 256-byte
threshold, so the dynamo exports really have an external data file (asserted).

What the exporters do to a model is part of the test. The dynamo exporter's default
optimize=True folds a BatchNorm1d that follows a Linear into the Linear's weights ("norms"): the
import must still have torch's keys, so that torch's state_dict loads and restores torch's
model. The TorchScript exporter writes Softplus's threshold nowhere (see `as_exported`), and
a LayerNorm(bias=False) with a zero Constant for its bias.

Run time: the dynamo exports take about 0.5 s each (a few seconds for the first in a process),
about 15 s for the 24 of the matrix, so the full matrix runs at both dynamo opsets; the file
takes about 2.5 minutes, mostly numba compiling each import twice (the module, `layerc test`)."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from layerc import driver
from layerc.onnx_io import import_onnx
from layerc.tools import pick_model

TOL = {"rtol": 1e-5, "atol": 1e-5}
F = 10  # hidden width: a Linear(F, F) holds 400 bytes, above the external-data threshold
BATCHES = (1, 7)
EXPORT_BATCH = 2

# (exporter, opset): the TorchScript exporter's lowest opset every kind but CELU exports at and
# a recent one; the dynamo exporter supports 18 and later.
EXPORTS = [("torchscript", 11), ("torchscript", 17), ("dynamo", 18), ("dynamo", 20)]


# --------------------------------------------------------------------------- building models


def lin(n_in: int, n_out: int, gain: float = 1.5) -> nn.Linear:
    """A Linear whose output spreads `gain` times as wide as its input (normal weights with
    std gain/sqrt(n_in), biases in [-0.5, 0.5]), from torch's global generator."""
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.normal_(0.0, gain / math.sqrt(n_in))
        layer.bias.uniform_(-0.5, 0.5)
    return layer


def settle(net: nn.Module) -> nn.Module:
    """Everything that torch initialises to a neutral value made non-trivial (BatchNorm's
    running statistics and affine, LayerNorm's affine, PReLU's slopes), then eval mode."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.2, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
            elif isinstance(module, nn.LayerNorm):
                if module.weight is not None:
                    module.weight.uniform_(0.5, 1.5)
                if module.bias is not None:
                    module.bias.uniform_(-0.5, 0.5)
            elif isinstance(module, nn.PReLU):
                module.weight.uniform_(0.05, 0.5)
    return net.eval()


CHAINS: dict[str, Callable[[], list[nn.Module]]] = {
    "rectifiers": lambda: [
        lin(4, F, gain=2.0),  # values past ReLU6's 6
        nn.Identity(),
        nn.Dropout(0.2),
        nn.ReLU6(),
        lin(F, F, gain=1.0),
        nn.Hardtanh(-2.0, 1.0),
        lin(F, F, gain=2.0),
        nn.LeakyReLU(0.1),
        nn.PReLU(),
        lin(F, F, gain=1.0),
        nn.ReLU(),
        lin(F, 3, gain=1.0),
    ],
    "hard": lambda: [
        lin(4, F),
        nn.Hardsigmoid(),
        lin(F, F, gain=4.0),
        nn.Hardswish(),
        lin(F, F, gain=1.0),
        nn.Hardshrink(0.3),
        nn.Softshrink(0.3),
        nn.Tanhshrink(),
        nn.BatchNorm1d(F),  # after an activation: a node in every export (see "norms")
        nn.AlphaDropout(0.1),
        lin(F, 3, gain=1.0),
    ],
    "exponential": lambda: [
        lin(4, F),
        nn.ELU(0.5),
        lin(F, F, gain=1.0),
        nn.CELU(2.0),
        lin(F, F, gain=1.0),
        nn.SELU(),
        lin(F, F, gain=1.0),
        nn.Softplus(beta=2.0, threshold=5.0),
        lin(F, F, gain=1.0),
        nn.LogSigmoid(),
        lin(F, F, gain=1.0),
        nn.Softplus(),
        lin(F, 3, gain=1.0),
    ],
    "smooth": lambda: [
        lin(4, F),
        nn.GELU(),
        lin(F, F, gain=1.0),
        nn.GELU(approximate="tanh"),
        lin(F, F, gain=1.0),
        nn.SiLU(),
        lin(F, F, gain=1.0),
        nn.Mish(),
        lin(F, F, gain=1.0),
        nn.Softsign(),
        nn.Tanh(),
        nn.Sigmoid(),
        lin(F, 3),
    ],
    "norms": lambda: [
        lin(4, F, gain=1.0),
        nn.BatchNorm1d(F),  # the dynamo exporter folds it into the Linear before it
        nn.PReLU(F),
        nn.LayerNorm(F),
        nn.LayerNorm(F, elementwise_affine=False),
        nn.LayerNorm(F, bias=False),
        nn.Softmax(dim=-1),
        lin(F, F, gain=4.0),
        nn.LogSoftmax(dim=-1),
        lin(F, 3, gain=1.0),
    ],
    "image": lambda: [nn.Flatten(), lin(24, F), nn.Tanh(), lin(F, 3)],
    "sequence": lambda: [lin(8, F), nn.ReLU(), lin(F, 3, gain=1.0)],  # on the last of 3 axes
}

# The shape of one sample of each model's input(s).
SAMPLE_SHAPES: dict[str, list[tuple[int, ...]]] = {
    "image": [(2, 3, 4)],
    "sequence": [(5, 8)],
    "residual": [(F,)],
    "concat": [(F,)],
    "two_inputs": [(F,), (F,)],
    "two_outputs": [(F,)],
    "nested": [(F,)],
}

# Every kind layerc has under torch's name, each in some chain (the constructor arguments the
# chains use are checked by `test_every_kind_is_in_a_chain`).
KINDS = {
    "Linear", "ReLU", "Sigmoid", "Tanh", "Identity", "LeakyReLU", "Softmax", "Dropout",
    "AlphaDropout", "Flatten", "BatchNorm1d", "LayerNorm", "PReLU", "GELU", "ELU", "CELU",
    "Softplus", "Hardtanh", "SiLU", "Mish", "SELU", "ReLU6", "Hardsigmoid", "Hardswish",
    "LogSigmoid", "Softsign", "LogSoftmax", "Hardshrink", "Softshrink", "Tanhshrink",
}  # fmt: skip


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(F)
        self.fc = lin(F, F)
        self.act = nn.GELU()

    def forward(self, x):
        return x + self.act(self.fc(self.norm(x)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = lin(F, 8)
        self.b = lin(F, 5)
        self.head = lin(13, 3)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], dim=-1))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = lin(F, F)
        self.act = nn.Tanh()
        self.out = lin(F, 3)

    def forward(self, x, mask):
        return self.out(self.act(self.fc(x)) * mask)


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = lin(F, F)
        self.act = nn.ReLU()
        self.head1 = lin(F, 2)
        self.head2 = lin(F, 3)

    def forward(self, x):
        h = self.act(self.trunk(x))
        return self.head1(h), self.head2(h)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(F)
        self.fc = lin(F, F)
        self.act = nn.Tanh()

    def forward(self, x):
        return x + self.act(self.fc(self.norm(x)))


class Nested(nn.Module):
    """Keys two and three levels deep (blocks.1.norm.weight, head.2.weight): the head's
    Dropout, at position 1, is not in the export, and the Linear after it is still head.2."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.1), lin(F, 3))

    def forward(self, x):
        return self.head(self.blocks(x))


GRAPHS: dict[str, type[nn.Module]] = {
    "residual": Residual,
    "concat": Concat,
    "two_inputs": TwoInputs,
    "two_outputs": TwoOutputs,
    "nested": Nested,
}
MODELS = [*CHAINS, *GRAPHS]
MIN_OPSET = {"exponential": 12}  # CELU: the TorchScript exporter has it from opset 12


def build(name: str, seed: int = 0) -> nn.Module:
    """The torch model `name`, its weights drawn from `seed`."""
    torch.manual_seed(seed)
    net = nn.Sequential(*CHAINS[name]()) if name in CHAINS else GRAPHS[name]()
    return settle(net)


def as_exported(net: nn.Module, exporter: str) -> nn.Module:
    """What the exported file computes, as a torch model with `net`'s keys. The TorchScript
    exporter writes Softplus(beta, threshold) as Softplus(beta * x) / beta: the threshold, past
    which torch returns x, is lost, so with that exporter the reference is torch's Softplus
    without a threshold (the dynamo exporter keeps it, as a Where)."""
    if exporter == "torchscript":
        for module in net.modules():
            if isinstance(module, nn.Softplus):
                module.threshold = math.inf
    return net


def inputs(name: str, batch: int, seed: int) -> list[np.ndarray]:
    """Seeded float32 inputs with std 2 (a two-input model's mask is ones and zeros)."""
    rng = np.random.default_rng([seed, batch, MODELS.index(name)])
    shapes = SAMPLE_SHAPES.get(name, [(4,)])
    xs = [(rng.standard_normal((batch, *shape)) * 2).astype(np.float32) for shape in shapes]
    if name == "two_inputs":
        xs[1] = (rng.random((batch, *shapes[1])) < 0.7).astype(np.float32)
    return xs


def torch_outputs(net: nn.Module, xs: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        out = net(*[torch.from_numpy(x) for x in xs])
    return out if isinstance(out, tuple) else (out,)


def assert_matches_torch(ours: object, net: nn.Module, xs: list[np.ndarray], what: str) -> None:
    want = torch_outputs(net, xs)
    got = ours(*xs)  # type: ignore[operator]
    got = tuple(got) if isinstance(got, (tuple, list)) else (got,)
    assert len(got) == len(want), f"{what}: {len(got)} outputs, torch gives {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(
            torch.from_numpy(np.asarray(g)), w, **TOL, msg=lambda m, i=i: f"{what}, output {i}: {m}"
        )


def numpy_state(net: nn.Module) -> dict[str, np.ndarray]:
    return {key: value.detach().cpu().numpy() for key, value in net.state_dict().items()}


# --------------------------------------------------------------------------- exporting, importing


@contextlib.contextmanager
def quiet():
    """No warnings, no exporter progress lines on stdout, no log records (the exporters log
    through torch's and onnxscript's loggers; torch.export's structured trace logger decides
    for itself that it is enabled, so it is switched off as a logger)."""
    disabled = logging.root.manager.disable
    trace = logging.getLogger("torch.__trace")
    trace_disabled = trace.disabled
    logging.disable(logging.CRITICAL)
    trace.disabled = True
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        trace.disabled = trace_disabled
        logging.disable(disabled)


def export(net: nn.Module, xs: list[np.ndarray], path: Path, exporter: str, opset: int) -> None:
    """torch.onnx.export as a torch user types it: only the exporter and the opset chosen."""
    args = tuple(torch.from_numpy(x) for x in xs)
    with quiet():
        torch.onnx.export(net, args, str(path), dynamo=exporter == "dynamo", opset_version=opset)


def run_ort(path: Path, xs: list[np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs, strict=True)})


@dataclass
class Case:
    model: str
    exporter: str
    opset: int
    folder: Path
    net: nn.Module = field(init=False)  # the model exported
    reference: nn.Module = field(init=False)  # what the file computes (see as_exported)
    onnx_path: Path = field(init=False)
    _built: object = None

    def __post_init__(self) -> None:
        self.net = build(self.model)
        self.reference = as_exported(build(self.model), self.exporter)
        self.onnx_path = self.folder / f"{self.model}.onnx"
        xs = inputs(self.model, EXPORT_BATCH, seed=99)
        export(self.net, xs, self.onnx_path, self.exporter, self.opset)
        # The file means what the reference computes (at the batch it was traced with), in
        # ONNX Runtime, whose float32 Sigmoid, Tanh, Erf... are approximations: a looser bound.
        want = torch_outputs(self.reference, xs)
        for got, w in zip(run_ort(self.onnx_path, xs), want, strict=True):
            torch.testing.assert_close(torch.from_numpy(got), w, rtol=1e-4, atol=1e-4)
        if self.exporter == "dynamo":  # the default writes the larger weights beside the file
            data = self.onnx_path.with_name(self.onnx_path.name + ".data")
            assert data.is_file() and data.stat().st_size > 0

    @property
    def lyr(self) -> Path:
        return self.onnx_path.with_suffix(".lyr")

    def imported(self) -> object:
        """A new instance of the imported, compiled model (the import and compilation run once;
        their error, if any, is raised again for every test of the case)."""
        if self._built is None:
            try:
                lyr = import_onnx(self.onnx_path)[-1]
                assert lyr == self.lyr
                program, written = driver.compile_file(lyr)
                module = driver.import_module(written[-1])
                # the model no other model uses, as `layerc run` picks it (a nested torch
                # model imports as one model per submodule, the whole model last)
                self._built = getattr(module, pick_model(program, None, str(lyr)).name)
            except Exception as exc:  # kept, raised again by each test of the case
                self._built = exc
        if isinstance(self._built, Exception):
            raise self._built
        return self._built()  # type: ignore[operator]


def opset_for(model: str, opset: int) -> int:
    return max(opset, MIN_OPSET.get(model, 0))


CASES = [
    pytest.param(
        model, exporter, opset_for(model, opset), id=f"{model}-{exporter}{opset_for(model, opset)}"
    )
    for exporter, opset in EXPORTS
    for model in MODELS
]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str, int], Case]:
    """Each (model, exporter, opset) exported once, in a folder of its own."""
    made: dict[tuple[str, str, int], Case] = {}

    def get(model: str, exporter: str, opset: int) -> Case:
        key = (model, exporter, opset)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"{model}-{exporter}{opset}")
            made[key] = Case(model, exporter, opset, folder)
        return made[key]

    return get


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize(("model", "exporter", "opset"), CASES)
def test_imported_model_matches_torch(cases, model: str, exporter: str, opset: int) -> None:
    case = cases(model, exporter, opset)
    ours = case.imported()
    for batch in BATCHES:  # the export's batch was fixed at 2
        assert_matches_torch(ours, case.reference, inputs(model, batch, seed=0), f"batch {batch}")


@pytest.mark.parametrize(("model", "exporter", "opset"), CASES)
def test_state_dict_round_trips(cases, model: str, exporter: str, opset: int) -> None:
    case = cases(model, exporter, opset)
    ours = case.imported()
    ours_keys, torch_keys = set(ours.state_dict()), set(case.net.state_dict())
    assert ours_keys == torch_keys, (
        f"keys torch has and the import lacks: {sorted(torch_keys - ours_keys)}; "
        f"keys the import has and torch lacks: {sorted(ours_keys - torch_keys)}"
    )
    # a twin with other weights: every key must reach the layer torch gives it to
    twin = as_exported(build(model, seed=1), exporter)
    ours.load_state_dict(numpy_state(twin))
    for batch in BATCHES:
        assert_matches_torch(ours, twin, inputs(model, batch, seed=1), f"twin, batch {batch}")
    ours.load_state_dict(numpy_state(case.net))
    assert_matches_torch(ours, case.reference, inputs(model, 7, seed=2), "original again")


@pytest.mark.parametrize(("model", "exporter", "opset"), CASES)
def test_layerc_test_passes(cases, model: str, exporter: str, opset: int) -> None:
    """The test block the import appends (what onnx.reference computes) passes, checked as
    `layerc test` checks it (`driver.check_outputs`), on the module already compiled."""
    case = cases(model, exporter, opset)
    program, _ = driver.check_file(case.lyr)
    results = [driver.check_outputs(test, case.imported()(*test.inputs)) for test in program.tests]
    assert results, "the import wrote no test block"
    failed = [
        result.problem
        or f"{result.failures} element(s) off, max abs error {result.max_abs:.3g}, "
        f"max rel {result.max_rel:.3g}"
        for result in results
        if not result.passed
    ]
    assert not failed, f"layerc test fails: {'; '.join(failed)}"


# --------------------------------------------------------------------------- the models themselves


# Where each kind's formula switches (for the smooth ones, 0: they must see both signs).
KINKS: dict[type[nn.Module], Callable[[nn.Module], list[float]]] = {
    nn.ReLU: lambda m: [0.0],
    nn.LeakyReLU: lambda m: [0.0],
    nn.PReLU: lambda m: [0.0],
    nn.ELU: lambda m: [0.0],
    nn.CELU: lambda m: [0.0],
    nn.SELU: lambda m: [0.0],
    nn.ReLU6: lambda m: [0.0, 6.0],
    nn.Hardtanh: lambda m: [m.min_val, m.max_val],
    nn.Hardsigmoid: lambda m: [-3.0, 3.0],
    nn.Hardswish: lambda m: [-3.0, 3.0],
    nn.Hardshrink: lambda m: [-m.lambd, m.lambd],
    nn.Softshrink: lambda m: [-m.lambd, m.lambd],
    nn.Softplus: lambda m: [m.threshold / m.beta] if m.threshold / m.beta < 10 else [0.0],
    nn.GELU: lambda m: [0.0],
    nn.SiLU: lambda m: [0.0],
    nn.Mish: lambda m: [0.0],
    nn.Sigmoid: lambda m: [0.0],
    nn.Tanh: lambda m: [0.0],
    nn.LogSigmoid: lambda m: [0.0],
    nn.Softsign: lambda m: [0.0],
    nn.Tanhshrink: lambda m: [0.0],
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_chains_cross_every_kink(name: str) -> None:
    """With the inputs the tests use (batches 1 and 7), each kind in a chain sees values on
    both sides of each place its formula switches: a torch-only check of the models."""
    net = build(name)
    seen: dict[int, list[np.ndarray]] = {}
    handles = [
        module.register_forward_pre_hook(
            lambda m, args, i=i: seen.setdefault(i, []).append(args[0].numpy().ravel())
        )
        for i, module in enumerate(net)
    ]
    for batch in BATCHES:
        torch_outputs(net, inputs(name, batch, seed=0))
    for handle in handles:
        handle.remove()
    for i, module in enumerate(net):
        values = np.concatenate(seen[i])
        for kink in KINKS.get(type(module), lambda m: [])(module):
            below, above = int((values < kink).sum()), int((values > kink).sum())
            assert below >= 2 and above >= 2, (
                f"{i}: {module} at {kink}: {below} below, {above} above"
            )


def test_every_kind_is_in_a_chain() -> None:
    torch.manual_seed(0)
    layers = [layer for make in CHAINS.values() for layer in make()]
    assert {type(layer).__name__ for layer in layers} == KINDS
    reprs = {repr(layer) for layer in layers}
    for wanted in (
        "LeakyReLU(negative_slope=0.1)",
        "Softmax(dim=-1)",
        "LogSoftmax(dim=-1)",
        "Dropout(p=0.2, inplace=False)",
        "AlphaDropout(p=0.1, inplace=False)",
        "PReLU(num_parameters=1)",
        f"PReLU(num_parameters={F})",
        "GELU(approximate='none')",
        "GELU(approximate='tanh')",
        "ELU(alpha=0.5)",
        "CELU(alpha=2.0)",
        "Softplus(beta=1.0, threshold=20.0)",
        "Softplus(beta=2.0, threshold=5.0)",
        "Hardtanh(min_val=-2.0, max_val=1.0)",
        "Hardshrink(0.3)",
        "Softshrink(0.3)",
    ):
        assert wanted in reprs, wanted
    norms = [layer for layer in layers if isinstance(layer, nn.LayerNorm)]
    assert any(n.weight is None and n.bias is None for n in norms)  # elementwise_affine=False
    assert any(n.weight is not None and n.bias is None for n in norms)  # bias=False
    assert any(n.weight is not None and n.bias is not None for n in norms)


# --------------------------------------------------------------------------- refusals a torch user can act on


@pytest.mark.parametrize(("exporter", "opset"), [("torchscript", 17), ("dynamo", 18)])
def test_a_refusal_names_the_pytorch_module(tmp_path: Path, exporter: str, opset: int) -> None:
    """A node layerc cannot read is refused naming its operator, the node, and the module of
    the torch model it came from (its class too, where the exporter recorded it)."""
    from layerc.errors import LayercError

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Sequential(nn.ReLU(), nn.Softmax(dim=0))).eval()
    path = tmp_path / "net.onnx"
    export(net, [np.zeros((2, 4), np.float32)], path, exporter, opset)
    with pytest.raises(LayercError) as refused:
        import_onnx(path)
    message = str(refused.value)
    assert "(Softmax)" in message and "over axis 0" in message
    assert "from the PyTorch module '1.1'" in message
    if exporter == "dynamo":  # the dynamo exporter records the module's class
        assert "a 'Softmax'" in message
    assert not path.with_suffix(".lyr").exists()


def test_a_model_exported_in_training_mode_says_to_call_eval(tmp_path: Path) -> None:
    from layerc.errors import LayercError

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)).train()
    path = tmp_path / "net.onnx"
    with quiet():
        torch.onnx.export(
            net,
            (torch.randn(2, 4),),
            str(path),
            dynamo=False,
            opset_version=17,
            training=torch.onnx.TrainingMode.TRAINING,
        )
    with pytest.raises(LayercError, match=r"training mode.*model\.eval\(\) before torch\.onnx"):
        import_onnx(path)


def test_missing_external_data_says_how_to_export_without_it(tmp_path: Path) -> None:
    """The dynamo exporter's default writes the weights beside the model; a model copied
    without them is refused, saying where they should be and how to export without them."""
    from layerc.errors import LayercError

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    export(build("residual"), inputs("residual", EXPORT_BATCH, 0), path, "dynamo", 18)
    path.with_name("net.onnx.data").unlink()
    with pytest.raises(LayercError, match=r"missing from the model's folder.*external_data=False"):
        import_onnx(path)


class Pair(nn.Module):
    """A module that returns two values: no nested layerc model can (a call gives one value)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = lin(4, 3)
        self.b = lin(4, 3)

    def forward(self, x):
        return self.a(x), self.b(x)


class UsesPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair()
        self.head = lin(3, 2)

    def forward(self, x):
        a, b = self.pair(x)
        return self.head(torch.relu(a) * b)


@pytest.mark.parametrize(("exporter", "opset"), [("torchscript", 17), ("dynamo", 18)])
def test_a_module_that_cannot_nest_is_merged_into_its_parent(
    tmp_path: Path, exporter: str, opset: int
) -> None:
    """A submodule that returns two values becomes part of its parent, its layers named
    `pair_a`, `pair_b`: the model computes what torch does, and its keys are torch's with that
    one level joined by `_`."""
    torch.manual_seed(0)
    net = UsesPair().eval()
    path = tmp_path / "net.onnx"
    export(net, [np.zeros((2, 4), np.float32)], path, exporter, opset)
    lyr = import_onnx(path)[-1]
    program, written = driver.compile_file(lyr)
    ours = getattr(driver.import_module(written[-1]), pick_model(program, None, str(lyr)).name)()
    assert set(ours.state_dict()) == {k.replace("pair.", "pair_") for k in net.state_dict()}
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert_matches_torch(ours, net, [x], "merged")


class Listed(nn.Module):
    """Blocks in an nn.ModuleList, called in a loop: the list itself is never called, so the
    exporters record no scope (nor, in dynamo's metadata, class) for it."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = lin(F, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@pytest.mark.parametrize(("exporter", "opset"), [("torchscript", 17), ("dynamo", 18)])
def test_blocks_in_a_module_list_nest_by_position(
    tmp_path: Path, exporter: str, opset: int
) -> None:
    torch.manual_seed(0)
    net = settle(Listed())
    path = tmp_path / "net.onnx"
    export(net, [np.zeros((2, F), np.float32)], path, exporter, opset)
    lyr = import_onnx(path)[-1]
    text = lyr.read_text(encoding="utf-8")
    program, written = driver.compile_file(lyr)
    ours = getattr(driver.import_module(written[-1]), pick_model(program, None, str(lyr)).name)()
    assert set(ours.state_dict()) == set(net.state_dict())
    x = np.random.default_rng(0).standard_normal((5, F)).astype(np.float32)
    assert_matches_torch(ours, net, [x], "listed")
    assert "model Blocks {" in text  # the list: named by its path, as it has no class
    if exporter == "dynamo":  # the blocks: by their class, which the exporter recorded
        assert "model Block {" in text and "model Block_2 {" in text
        assert "# PyTorch module 'blocks.1' (" in text


def test_a_folded_batch_norm_without_affine_keeps_torchs_keys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(lin(4, F), nn.BatchNorm1d(F, affine=False), lin(F, 2)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    path = tmp_path / "net.onnx"
    export(net, [np.zeros((2, 4), np.float32)], path, "dynamo", 18)
    lyr = import_onnx(path)[-1]
    program, written = driver.compile_file(lyr)
    ours = getattr(driver.import_module(written[-1]), program.models[-1].name)()
    assert set(ours.state_dict()) == set(net.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    assert_matches_torch(ours, net, [x], "folded")
    ours.load_state_dict(numpy_state(net))  # the real Linear and BatchNorm
    assert_matches_torch(ours, net, [x], "loaded")


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(F), nn.Dropout(0.5)], ids=["bn", "dropout"])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_model_left_in_training_mode_is_refused_saying_to_call_eval(
    tmp_path: Path, layer: nn.Module, exporter: str
) -> None:
    from layerc.errors import LayercError

    torch.manual_seed(0)
    net = nn.Sequential(lin(4, F), layer, lin(F, 2)).train()
    path = tmp_path / "net.onnx"
    with quiet():
        torch.onnx.export(
            net,
            (torch.randn(4, 4),),
            str(path),
            dynamo=exporter == "dynamo",
            opset_version=17 if exporter == "torchscript" else 18,
            training=torch.onnx.TrainingMode.TRAINING,
        )
    with pytest.raises(LayercError, match=r"model\.eval\(\) before"):
        import_onnx(path)
