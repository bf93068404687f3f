"""Generated modules against torch.nn where torch.nn.Module's own rules decide: which `forward`
runs, `train()`'s argument, `to()` and `cpu()`, indexing and slicing as torch.nn.Sequential,
`add_module`, `del`, `state_dict()._metadata`, bfloat16 tensors, and errors for inputs of the
wrong width.

Every test does the same thing to a generated model and to the torch.nn model of the same
structure and weights (PyTorch 2.13 is the reference) and compares outputs, exception types and
messages. Several are ports of PyTorch's own tests in test/test_nn.py (named in the docstring),
with generated modules and `layerc.runtime.Model` in place of torch's modules.
"""

from __future__ import annotations

import copy
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
from conftest import compile_text
from torch import nn

from layerc.runtime import Model

LYR = """
model Block {
    fc = Linear(6, 5) { init = uniform(seed=1) }
    Tanh()
}

model Net {
    Linear(4, 6) { init = uniform(seed=0) }
    ReLU()
    enc = Block()
    fc2 = Linear(5, 3) { init = uniform(seed=2) }
    Softmax()
}

model Outer {
    body = Net()
}

model Wide(dtype=float64) {
    inp = Linear(3, 8) { init = uniform(seed=3) }
    Tanh()
    out = Linear(8, 3) { init = uniform(seed=4) }
}

# Four layers for the ports of torch's Sequential tests (widths 10 -> 20 -> 30 -> 40 -> 50).
model Chain {
    l1 = Linear(10, 20) { init = uniform(seed=5) }
    l2 = Linear(20, 30) { init = uniform(seed=6) }
    l3 = Linear(30, 40) { init = uniform(seed=7) }
    l4 = Linear(40, 50) { init = uniform(seed=8) }
}
"""

F32 = {"rtol": 1.3e-6, "atol": 1e-5}
F64 = {"rtol": 1e-7, "atol": 1e-7}
X = (np.random.default_rng(0).standard_normal((3, 4)) * 2).astype(np.float32)


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory):
    return compile_text(LYR, tmp_path_factory.mktemp("torch_parity"), "torch_parity_net")


def torch_block() -> nn.Sequential:
    return nn.Sequential(OrderedDict([("fc", nn.Linear(6, 5)), ("1", nn.Tanh())]))


def torch_net_layers(block: nn.Module | None = None) -> OrderedDict[str, nn.Module]:
    return OrderedDict(
        [
            ("0", nn.Linear(4, 6)),
            ("1", nn.ReLU()),
            ("enc", torch_block() if block is None else block),
            ("fc2", nn.Linear(5, 3)),
            ("4", nn.Softmax(dim=-1)),
        ]
    )


def torch_twin(net: Any, build: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The torch model of the same structure as `net` (Net unless `build` says otherwise), with
    `net`'s weights."""
    reference = (build or (lambda: nn.Sequential(torch_net_layers())))()
    reference.load_state_dict(tensors(net.state_dict()))
    return reference


def torch_wide() -> nn.Sequential:
    layers = [("inp", nn.Linear(3, 8)), ("1", nn.Tanh()), ("out", nn.Linear(8, 3))]
    return nn.Sequential(OrderedDict(layers)).double()


def tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.array(value)) for key, value in state.items()}


def torch_linear(layer: Any) -> nn.Linear:
    """A torch Linear with the weights of the generated Linear `layer`."""
    twin = nn.Linear(layer.in_features, layer.out_features, bias=layer.has_bias)
    twin.load_state_dict(tensors(layer.state_dict()))
    return twin


def close(ours: np.ndarray, theirs: torch.Tensor, tolerance: dict[str, float] = F32) -> None:
    assert isinstance(ours, np.ndarray)
    torch.testing.assert_close(torch.from_numpy(ours), theirs.detach(), **tolerance)


def run(module: Any, x: np.ndarray) -> Any:
    """Call a layerc or a torch module on `x` (as a tensor for torch)."""
    if isinstance(module, nn.Module):
        return module(torch.from_numpy(x.copy()))
    return module(x.copy())


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", result) or ("error", the exception)."""
    try:
        return "ok", call()
    except Exception as exc:
        return "error", exc


def error_of(call: Callable[[], Any]) -> BaseException:
    kind, value = outcome(call)
    assert kind == "error", f"expected an exception, got {value!r}"
    return value


def same_error(ours: Callable[[], Any], theirs: Callable[[], Any]) -> BaseException:
    """Both raise, the same exception type and message; returns layerc's exception."""
    theirs_error = error_of(theirs)
    ours_error = error_of(ours)
    assert type(ours_error) is type(theirs_error), (ours_error, theirs_error)
    assert str(ours_error) == str(theirs_error)
    return ours_error


def agree(net: Any, reference: nn.Module, x: np.ndarray, tolerance=F32) -> None:
    """The same output, or both raise (torch a RuntimeError or TypeError: layerc the same)."""
    theirs = outcome(lambda: run(reference, x))
    ours = outcome(lambda: run(net, x))
    if theirs[0] == "error":
        assert ours[0] == "error", f"torch raised {theirs[1]!r}, layerc returned"
        assert isinstance(ours[1], type(theirs[1])), (ours[1], theirs[1])
        return
    assert ours[0] == "ok", ours[1]
    close(ours[1], theirs[1], tolerance)


def class_names_as_torch(text: str) -> str:
    return re.sub(r"\b(Net|Block|Model)\(", "Sequential(", text)


# ---------------------------------------------------------------------------- which forward runs


def test_a_subclass_that_overrides_forward_runs_it_without_hooks(gen):
    """A subclass's forward runs whether or not a hook is registered (the fused kernel computes
    only the generated forward); a subclass that does not override forward keeps it."""

    class Scaled(gen.Net):
        def forward(self, x):
            return super().forward(x) * 2 + 1

    class TorchScaled(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2 + 1

    net = Scaled()
    reference = torch_twin(net, lambda: TorchScaled(torch_net_layers()))
    agree(net, reference, X)  # no hook anywhere
    with net.fc2.register_forward_hook(lambda module, args, output: None):
        agree(net, reference, X)
    agree(net, reference, X)  # the hook removed again

    class Unchanged(gen.Net):
        pass

    plain = Unchanged()
    agree(plain, torch_twin(plain), X)


def test_a_child_whose_class_overrides_forward_is_not_skipped_by_its_parent(gen):
    class Shifted(gen.Block):
        def forward(self, x):
            return super().forward(x) - 0.5

    class TorchShifted(nn.Sequential):
        def forward(self, x):
            return super().forward(x) - 0.5

    net = gen.Net()
    reference = torch_twin(net)
    net.enc = Shifted()
    reference.enc = TorchShifted(OrderedDict([("fc", nn.Linear(6, 5)), ("1", nn.Tanh())]))
    reference.enc.load_state_dict(tensors(net.enc.state_dict()))
    agree(net, reference, X)
    agree(net.enc, reference.enc, np.ones((2, 6), np.float32))


def test_a_forward_set_on_an_instance_runs(gen):
    """`module.forward = f` on an instance replaces what calling it does, as in torch, until
    `del module.forward`."""
    net = gen.Net()
    reference = torch_twin(net)
    net.enc.forward = lambda x: np.zeros(x.shape[:-1] + (5,), np.float32)
    reference.enc.forward = lambda x: torch.zeros(x.shape[:-1] + (5,))
    agree(net, reference, X)
    del net.enc.forward
    del reference.enc.forward
    agree(net, reference, X)


# ---------------------------------------------------------------------------- train()


@pytest.mark.parametrize("mode", ["invalid_str", torch.device("cpu"), 1, None, np.bool_(True)])
def test_train_errors_for_invalid_mode(gen, mode):
    """Port of test_nn.py's test_train_errors_for_invalid_mode, on a model, a leaf and a
    `Model` built from modules: a mode that is not a bool is a ValueError with torch's message,
    and nothing changes."""
    net = gen.Net()
    reference = torch_twin(net)
    chain = gen.Chain()
    pairs = [
        (net, reference),
        (net.fc2, reference.fc2),
        (Model(chain.l1, chain.l2), nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 30))),
    ]
    for ours, theirs in pairs:
        ours.train()
        theirs.train()
        same_error(partial(ours.train, mode), partial(theirs.train, mode))
        assert [m.training for m in ours.modules()] == [m.training for m in theirs.modules()]


# The calls of torch.nn.Module.to that keep a float32 module on the CPU in float32: torch returns
# the module itself, with its parameters unchanged, and so does layerc.
SAME_PLACE = [
    ("cpu",),
    ("cpu:0",),
    (torch.device("cpu"),),
    (torch.float32,),
    ("cpu", torch.float32),
    (torch.device("cpu"), torch.float32, True),
    (torch.zeros(2),),
    (None,),
]


@pytest.mark.parametrize("args", SAME_PLACE, ids=repr)
def test_to_the_cpu_and_the_models_dtype_returns_the_module_itself(gen, args):
    net = gen.Net()
    reference = torch_twin(net)
    before = {key: np.array(value) for key, value in net.state_dict().items()}
    for ours, theirs in [(net, reference), (net.enc, reference.enc), (net.fc2, reference.fc2)]:
        assert theirs.to(*args) is theirs
        assert ours.to(*args) is ours
        assert ours.to(*args, non_blocking=True, memory_format=torch.preserve_format) is ours
    for keywords in ({"device": "cpu"}, {"dtype": torch.float32}, {"device": None}):
        assert reference.to(**keywords) is reference and net.to(**keywords) is net
    assert reference.cpu() is reference and net.cpu() is net
    assert reference.float() is reference and net.float() is net
    for key, value in net.state_dict().items():
        assert np.array_equal(value, before[key]) and value.dtype == np.float32
    agree(net, reference, X)


def test_to_takes_numpys_dtypes_and_arrays_too(gen):
    net = gen.Net()
    for args in [(np.float32,), (np.dtype("float32"),), ("cpu", np.float32), (X,)]:
        assert net.to(*args) is net
    wide = gen.Wide()
    assert wide.to(np.float64) is wide and wide.to(torch.float64) is wide
    assert wide.double() is wide and wide.inp.double() is wide.inp


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.uint8])
def test_to_a_dtype_that_is_not_floating_point_fails_as_torch(gen, dtype):
    net = gen.Net()
    same_error(lambda: net.to(dtype), lambda: torch_twin(net).to(dtype))
    same_error(lambda: net.to("cpu", dtype), lambda: torch_twin(net).to("cpu", dtype))


def test_to_another_floating_dtype_says_how_to_compile_for_it(gen):
    """torch converts the parameters; a layerc module's kernels are compiled for one dtype, so
    asking for another is a TypeError that names the model's option, and changes nothing."""
    net, wide = gen.Net(), gen.Wide()
    for call in (lambda: net.to(torch.float64), net.double, lambda: net.to(dtype=np.float64)):
        with pytest.raises(
            TypeError,
            match=r"Net computes in float32, .* cannot be converted "
            r"to float64: compile its model for it \(model Net\(dtype=float64\)",
        ):
            call()
    with pytest.raises(TypeError, match=r"Linear computes in float32, .*\(model NAME\(dtype="):
        net.fc2.double()
    with pytest.raises(TypeError, match=r"Wide computes in float64, .*\(model Wide\(dtype=float32"):
        wide.float()
    for call in (
        net.half,
        net.bfloat16,
        lambda: net.to(torch.float16),
        lambda: net.to(torch.complex64),
    ):
        with pytest.raises(TypeError, match="layerc compiles models for float32 or float64"):
            call()
    assert net.fc2.weight.dtype == np.float32 and wide.inp.weight.dtype == np.float64


@pytest.mark.parametrize("device", ["cuda", "cuda:1", 0, "meta", torch.device("meta")])
def test_to_another_device_is_refused(gen, device):
    net = gen.Net()
    where = f"cuda:{device}" if isinstance(device, int) else str(device)
    with pytest.raises(RuntimeError, match=f"Net runs on the CPU .* to the device '{where}'"):
        net.to(device)
    with pytest.raises(RuntimeError, match="runs on the CPU"):
        net.to(device, torch.float32)


def test_to_with_arguments_torch_refuses_is_a_type_error(gen):
    net = gen.Net()
    reference = torch_twin(net)
    for args, keywords in [
        (("cpu", "float32"), {}),
        ((), {"colour": 1}),
        (("cpu", torch.float32, "no"), {}),
    ]:
        with pytest.raises(TypeError):
            reference.to(*args, **keywords)
        with pytest.raises(TypeError, match=r"^to\(\) "):
            net.to(*args, **keywords)


def test_train_and_eval_reach_every_child_through_its_train(gen):
    """train() and eval() set every module's flag by calling each child's own `train`, so a
    subclass that overrides `train` sees the call, as in torch."""
    calls: list[tuple[str, bool]] = []

    class Logged(gen.Block):
        def train(self, mode=True):
            calls.append(("layerc", mode))
            return super().train(mode)

    class TorchLogged(nn.Sequential):
        def train(self, mode=True):
            calls.append(("torch", mode))
            return super().train(mode)

    net = gen.Net()
    reference = torch_twin(net)
    net.enc = Logged()
    reference.enc = TorchLogged(OrderedDict(torch_block().named_children()))
    for step in (
        lambda m: m.train(),
        lambda m: m.enc.eval(),
        lambda m: m.train(False),
        lambda m: m.enc.train(True),
    ):
        assert step(net) is not None and step(reference) is not None
        assert [m.training for m in net.modules()] == [m.training for m in reference.modules()]
    ours = [mode for side, mode in calls if side == "layerc"]
    assert ours == [mode for side, mode in calls if side == "torch"] == [True, False, False, True]


# ---------------------------------------------------------------------------- indexing


INDICES = [0, 1, 4, -1, -5, True, np.int64(2), np.int32(-2), np.intp(3), torch.tensor(3)]


def test_indexing_picks_the_same_child_as_sequential(gen):
    """Python, NumPy and torch integers, negative ones too, as Sequential's operator.index."""
    net = gen.Net()
    reference = torch_twin(net)
    ours_names = {id(module): name for name, module in net.named_children()}
    theirs_names = {id(module): name for name, module in reference.named_children()}
    picked = [ours_names[id(net[index])] for index in INDICES]
    assert picked == [theirs_names[id(reference[index])] for index in INDICES]


@pytest.mark.parametrize("index", [5, -6, 100, "0", "fc2", 1.0, None, slice], ids=repr)
def test_bad_indices_raise_as_sequential(gen, index):
    """Out of range: IndexError with torch's message; not an integer (names included, as
    Sequential takes no names): TypeError with Python's message."""
    net = gen.Net()
    reference = torch_twin(net)
    same_error(lambda: net[index], lambda: reference[index])


SLICES = [
    slice(1, None),
    slice(None, None, -1),
    slice(-3, None),
    slice(2, 4),
    slice(None),
    slice(0, 5, 2),
    slice(None, -1),
    slice(5, None),
    slice(10, 20),
    slice(None, 1),
]


@pytest.mark.parametrize("index", SLICES, ids=str)
def test_slices_are_models_of_the_same_class_that_run_their_layers(gen, index):
    """As torch.nn.Sequential's slices: a new module of the same class holding the same child
    objects under the same names (same repr and state_dict keys); called, it runs those
    layers, giving torch's output or failing where torch fails, with and without hooks. The
    model sliced is unchanged."""
    net = gen.Net()
    reference = torch_twin(net)
    ours, theirs = net[index], reference[index]
    assert type(ours) is type(net) and type(theirs) is type(reference)
    assert ours is not net
    assert list(ours._modules) == list(theirs._modules)
    assert all(ours._modules[key] is net._modules[key] for key in ours._modules)
    assert class_names_as_torch(repr(ours)) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert len(ours) == len(theirs)
    for width in (4, 5, 6):
        x = np.random.default_rng(width).standard_normal((2, width)).astype(np.float32)
        agree(ours, theirs, x)
        agree(ours[:], theirs[:], x)  # a slice of a slice
    handles = [m.register_forward_hook(lambda module, args, output: output * 2) for m in ours]
    handles += [m.register_forward_hook(lambda module, args, output: output * 2) for m in theirs]
    for width in (4, 5, 6):
        agree(ours, theirs, np.full((3, width), 0.25, np.float32))
    for handle in handles:
        handle.remove()
    assert [name for name, _ in net.named_children()] == ["0", "1", "enc", "fc2", "4"]
    agree(net, reference, X)


def test_an_empty_slice_returns_its_input(gen):
    net = gen.Net()
    reference = torch_twin(net)
    x = X.copy()
    assert reference[5:](torch.from_numpy(x)).data_ptr() == x.ctypes.data  # the same tensor
    assert net[5:](x) is x
    assert not net[5:] and not reference[5:]


def test_sequential_getitem_port(gen):
    """Port of test_nn.py's test_Sequential_getitem, with a `Model` holding generated Linears."""
    chain = gen.Chain()
    l1, l2, l3, l4 = chain.l1, chain.l2, chain.l3, chain.l4
    t1, t2, t3, t4 = (torch_linear(layer) for layer in (l1, l2, l3, l4))
    n = Model(l1, l2, l3, l4)
    reference = nn.Sequential(t1, t2, t3, t4)
    assert [n[i] for i in range(4)] == [l1, l2, l3, l4]
    assert n[torch.tensor(3, dtype=torch.int64)] is l4
    assert reference[torch.tensor(3, dtype=torch.int64)] is t4
    for index, expected in [
        (slice(1, None), [l2, l3, l4]),
        (slice(3, None), [l4]),
        (slice(None, -1), [l1, l2, l3]),
        (slice(None, -3), [l1]),
        (slice(None, None, -1), [l4, l3, l2, l1]),
    ]:
        assert list(n[index]) == expected
        assert type(n[index]) is Model
        assert list(n[index]._modules) == list(reference[index]._modules)
    x = np.random.default_rng(1).standard_normal((3, 10)).astype(np.float32)
    agree(n, reference, x)
    agree(n[:2], reference[:2], x)
    agree(n[2:], reference[2:], np.ones((2, 30), np.float32))
    assert class_names_as_torch(repr(n[1:])) == repr(reference[1:])


def test_sequential_setitem_and_delitem_ports(gen):
    """Ports of test_nn.py's test_Sequential_setitem, _setitem_named and _delitem: replace and
    delete by position (NumPy and torch integers too); deleting renumbers the rest."""
    chain = gen.Chain()
    l1, l2, l3, l4 = chain.l1, chain.l2, chain.l3, chain.l4
    n = Model(l1, l2, l3)
    n[0] = l4
    n[-1] = l4
    n[torch.tensor(1, dtype=torch.int16)] = l1
    assert (n[0], n[1], n[2]) == (l4, l1, l4)

    named = Model(OrderedDict([("linear1", l1), ("linear2", l2)]))
    named[0] = l3
    named[np.int64(1)] = l4
    assert named.linear1 is l3 and named.linear2 is l4

    t1, t2, t3, t4 = (torch_linear(layer) for layer in (l1, l2, l3, l4))
    n, reference = Model(l1, l2, l3, l4), nn.Sequential(t1, t2, t3, t4)
    del n[-1]
    del reference[-1]
    assert list(n) == [l1, l2, l3] and list(n._modules) == list(reference._modules)
    del n[1::2]
    del reference[1::2]
    assert list(n) == [l1, l3] and list(n._modules) == list(reference._modules) == ["0", "1"]
    agree(n, reference, np.ones((2, 10), np.float32))


def test_setitem_and_delitem_on_a_generated_model(gen):
    """Replacing a layer by one of another kind, or deleting one, changes what the model
    computes, as in torch; deleting renames the rest "0", "1", ... (state_dict keys too)."""
    net = gen.Net()
    reference = torch_twin(net)
    net[1] = gen.Block()[1]  # a Tanh where the ReLU was
    reference[1] = nn.Tanh()
    agree(net, reference, X)
    del net[1]
    del reference[1]
    assert list(net._modules) == list(reference._modules)
    assert list(net.state_dict()) == list(reference.state_dict())
    assert class_names_as_torch(repr(net)) == repr(reference)
    agree(net, reference, X)


def test_len_iteration_and_truth_values(gen):
    net = gen.Net()
    reference = torch_twin(net)
    assert len(net) == len(reference) == 5
    assert [type(m).__mro__[1].__name__ for m in net] == [
        "Linear",
        "ReLU",
        "Model",
        "Linear",
        "Softmax",
    ]
    assert [type(m).__name__ for m in reference] == [
        "Linear",
        "ReLU",
        "Sequential",
        "Linear",
        "Softmax",
    ]
    # a layer is no container: truthy, without len or indexing, as torch's layers
    assert bool(net.fc2) is bool(reference.fc2) is True
    for layer in (net.fc2, reference.fc2):
        with pytest.raises(TypeError):
            len(layer)
        with pytest.raises(TypeError):
            layer[0]
        with pytest.raises(TypeError):
            iter(layer)


# ---------------------------------------------------------------------------- add_module


def _tanh(gen):
    return gen.Block()[1]


ADD_MODULE_CASES: dict[str, tuple[str, Any, str]] = {
    # label: (the module's path, the name, what to add: "module", "none" or something else)
    "not a module": ("", "x", "non-module"),
    "an array": ("", "x", np.ones(3)),
    "int name": ("", 1, "module"),
    "None name": ("", None, "module"),
    "int name, not a module": ("", 1, "non-module"),
    "dotted name": ("", "a.b", "module"),
    "empty name": ("", "", "module"),
    "instance attribute": ("", "training", "module"),
    "method": ("", "forward", "module"),
    "other method": ("", "state_dict", "module"),
    "plain attribute set before": ("", "attribute_name", "module"),
    "a layer's weight": ("fc2", "weight", "module"),
    "a layer's bias": ("fc2", "bias", "module"),
    "a layer's class attribute": ("fc2", "in_features", "module"),
    "new name": ("", "extra", "module"),
    "existing child": ("", "fc2", "module"),
    "None child": ("", "empty", "none"),
}


@pytest.mark.parametrize("method", ["add_module", "register_module"])
def test_add_module_checks_as_torch(gen, method):
    """Ports of test_nn.py's test_add_module and test_add_module_raises_error_if_attr_exists,
    case by case on a fresh model: the same exception type and message for each bad call, or
    the same child registered; the model computes what torch's does afterwards (a None child
    fails both)."""
    for label, (path, name, what) in ADD_MODULE_CASES.items():
        net = gen.Net()
        reference = torch_twin(net)
        net.attribute_name = 5
        reference.attribute_name = 5
        ours_target = net.get_submodule(path)
        theirs_target = reference.get_submodule(path)
        ours_child: Any = _tanh(gen) if _is(what, "module") else None if _is(what, "none") else what
        theirs_child: Any = (
            nn.Tanh() if _is(what, "module") else None if _is(what, "none") else what
        )
        theirs = outcome(partial(getattr(theirs_target, method), name, theirs_child))
        ours = outcome(partial(getattr(ours_target, method), name, ours_child))
        assert ours[0] == theirs[0], (label, ours, theirs)
        if theirs[0] == "error":
            assert type(ours[1]) is type(theirs[1]), (label, ours[1], theirs[1])
            assert str(ours[1]) == str(theirs[1]), label
            assert net.training is False and net.attribute_name == 5, label
        else:
            assert getattr(ours_target, name) is ours_child, label
        assert list(ours_target._modules) == list(theirs_target._modules), label
        agree(net, reference, X)


def _is(what: Any, word: str) -> bool:
    return isinstance(what, str) and what == word


def test_assigning_a_module_replaces_a_plain_attribute(gen):
    """`net.x = module` registers the child whatever `x` held before, as torch's __setattr__
    does (only add_module refuses an existing attribute)."""
    net = gen.Net()
    reference = torch_twin(net)
    net.attribute_name = 5
    reference.attribute_name = 5
    net.attribute_name = _tanh(gen)
    reference.attribute_name = nn.Tanh()
    assert list(net._modules) == list(reference._modules)
    agree(net, reference, X)


# ---------------------------------------------------------------------------- del


def test_deleting_a_child_as_torch(gen):
    """`del` removes a child; the model runs the rest in order. A child added again goes to the
    end, in both."""
    net = gen.Net()
    reference = torch_twin(net)
    relu, fc2 = net[1], net.fc2
    delattr(net, "1")
    delattr(reference, "1")
    assert list(net._modules) == list(reference._modules)
    agree(net, reference, X)
    del net.fc2
    del reference.fc2
    assert list(net.state_dict()) == list(reference.state_dict())
    agree(net, reference, X)
    net.add_module("fc2", fc2)
    reference.add_module("fc2", torch_linear(fc2))
    net.add_module("1", relu)
    reference.add_module("1", nn.ReLU())
    assert list(net._modules) == list(reference._modules)
    assert class_names_as_torch(repr(net)) == repr(reference)
    agree(net, reference, X)


def test_deleting_a_child_that_sets_the_width_fails_as_torch(gen):
    net = gen.Net()
    reference = torch_twin(net)
    del net.enc
    del reference.enc
    agree(net, reference, X)
    error = error_of(lambda: net(X))
    assert str(error).startswith("fc2 (Linear(in_features=5, out_features=3, bias=True))")


def test_deleting_a_parameter_as_torch(gen):
    """`del layer.bias` takes the parameter out of state_dict; calling the layer (or a model
    holding it) then raises torch's AttributeError."""
    net = gen.Net()
    reference = torch_twin(net)
    del net.fc2.bias
    del reference.fc2.bias
    assert list(net.state_dict()) == list(reference.state_dict())
    same_error(
        lambda: net.fc2(np.ones((2, 5), np.float32)), lambda: reference.fc2(torch.ones(2, 5))
    )
    same_error(lambda: net(X), lambda: reference(torch.from_numpy(X)))
    with net.register_forward_hook(lambda module, args, output: None):
        same_error(lambda: net(X), lambda: reference(torch.from_numpy(X)))
    # plain attributes are deleted as usual
    net.note = 1
    reference.note = 1
    del net.note
    del reference.note
    assert not hasattr(net, "note") and not hasattr(reference, "note")
    ours = error_of(lambda: delattr(net, "nothing"))
    theirs = error_of(lambda: delattr(reference, "nothing"))
    assert type(ours) is type(theirs) is AttributeError
    assert str(ours) == str(theirs).replace("Sequential", "Net")


# ---------------------------------------------------------------------------- state_dict


def test_state_dict_metadata_matches_torch(gen):
    net = gen.Net()
    reference = torch_twin(net)
    assert net.state_dict()._metadata == reference.state_dict()._metadata
    assert list(net.state_dict()._metadata) == list(reference.state_dict()._metadata)
    for kwargs in ({"prefix": "model."}, {"keep_vars": True}):
        ours, theirs = net.state_dict(**kwargs), reference.state_dict(**kwargs)
        assert list(ours) == list(theirs)
        assert ours._metadata == theirs._metadata
    assert net.enc.state_dict()._metadata == reference.enc.state_dict()._metadata
    assert net.fc2.state_dict()._metadata == reference.fc2.state_dict()._metadata
    outer = gen.Outer()
    twin = nn.Sequential(OrderedDict(body=nn.Sequential(torch_net_layers())))
    assert outer.state_dict()._metadata == twin.state_dict()._metadata
    # copies keep it, in both
    assert copy.deepcopy(net.state_dict())._metadata == reference.state_dict()._metadata


def test_state_dict_destination_and_positional_arguments_as_torch(gen):
    """A destination given without `_metadata` gets none and no warning; positional arguments
    (destination, prefix, keep_vars) work with a FutureWarning, in both."""
    net = gen.Net()
    reference = torch_twin(net)
    for module in (net, reference):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            destination: dict = {}
            assert module.state_dict(destination=destination) is destination
            assert not hasattr(destination, "_metadata")
    results = []
    for module in (net, reference):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            given: OrderedDict = OrderedDict()
            state = module.state_dict(given, "p.", True)
            results.append(
                (
                    state is given,
                    list(state),
                    getattr(state, "_metadata", None),
                    [w.category for w in caught],
                    str(caught[0].message).split(".")[0],
                )
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = module.state_dict(None, "q.")
            results.append((list(state), state._metadata, [w.category for w in caught]))
    assert results[:2] == results[2:]
    assert results[0][3] == [FutureWarning]


def test_state_dict_port(gen):
    """Port of test_nn.py's test_state_dict: a shared layer under two names, a nested
    container and a None child; keys, `_metadata` entries and shared storage as torch."""
    chain = gen.Chain()
    layer = chain.l1
    block = Model()
    block.lin = chain.l2
    net = Model()
    net.linear1 = layer
    net.linear2 = layer
    net.block = block
    net.add_module("empty", None)

    t_layer = torch_linear(layer)
    t_block = nn.Module()
    t_block.lin = torch_linear(chain.l2)
    reference = nn.Module()
    reference.linear1 = t_layer
    reference.linear2 = t_layer
    reference.block = t_block
    reference.add_module("empty", None)

    ours, theirs = net.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs) and len(ours) == 6
    assert ours._metadata == theirs._metadata and len(ours._metadata) == 5
    assert "empty" not in ours._metadata and "block" in ours._metadata
    for key, value in ours.items():
        assert value is net.get_parameter(key)
    leaf = layer.state_dict()
    assert leaf._metadata == t_layer.state_dict()._metadata == {"": {"version": 1}}
    assert leaf["weight"] is layer.weight and leaf["bias"] is layer.bias


def test_state_dicts_with_metadata_load_both_ways(gen):
    torch.manual_seed(3)
    reference = nn.Sequential(torch_net_layers())
    state = reference.state_dict()
    assert hasattr(state, "_metadata")
    net = gen.Net()
    assert repr(net.load_state_dict(state)) == "<All keys matched successfully>"
    agree(net, reference, X)

    ours = net.state_dict()
    converted = OrderedDict(tensors(ours))
    converted._metadata = ours._metadata  # type: ignore[attr-defined]
    fresh = nn.Sequential(torch_net_layers())
    assert repr(fresh.load_state_dict(converted)) == "<All keys matched successfully>"
    agree(net, fresh, X)
    assert repr(net.load_state_dict(copy.deepcopy(ours))) == "<All keys matched successfully>"


# ---------------------------------------------------------------------------- bfloat16


def test_bfloat16_inputs_are_converted_exactly(gen):
    """A bfloat16 tensor is taken as the float32 (or float64) tensor of the same values, as
    `.float()` gives it: the output is torch's for that tensor, on every path."""
    net = gen.Net()
    reference = torch_twin(net)
    x = torch.from_numpy(X).to(torch.bfloat16)
    expected = reference(x.float())
    close(net(x), expected)
    close(net.forward(x), expected)
    with net.enc.register_forward_hook(lambda module, args, output: None):
        close(net(x), expected)
    x5 = torch.linspace(-2, 2, 10).reshape(2, 5).to(torch.bfloat16)
    close(net.fc2(x5), reference.fc2(x5.float()))
    wide = gen.Wide()
    wide_reference = torch_twin(wide, torch_wide)
    x3 = torch.tensor([[0.5, -1.25, 3.0]], dtype=torch.bfloat16)
    close(wide(x3), wide_reference(x3.double()), F64)


def test_bfloat16_state_dicts_load_as_torch_loads_them(gen):
    """torch copies bfloat16 values into float32 (and float64) parameters exactly; so does
    load_state_dict, and assignment to a parameter."""
    torch.manual_seed(4)
    source = nn.Sequential(torch_net_layers())
    state = {key: value.to(torch.bfloat16) for key, value in source.state_dict().items()}
    net = gen.Net()
    reference = nn.Sequential(torch_net_layers())
    assert repr(net.load_state_dict(state)) == repr(reference.load_state_dict(state))
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[key], value.numpy())
    agree(net, reference, X)

    wide = gen.Wide()
    wide_reference = torch_wide()
    wide_state = {key: value.to(torch.bfloat16) for key, value in torch_wide().state_dict().items()}
    wide.load_state_dict(wide_state)
    wide_reference.load_state_dict(wide_state)
    for key, value in wide_reference.state_dict().items():
        np.testing.assert_array_equal(wide.state_dict()[key], value.numpy())
        assert wide.state_dict()[key].dtype == np.float64

    net.fc2.weight = state["fc2.weight"]
    np.testing.assert_array_equal(net.fc2.weight, state["fc2.weight"].float().numpy())


# ---------------------------------------------------------------------------- shape errors


def _message_for(path: str, layer: str, width: int, shape: tuple[int, ...]) -> str:
    where = f"{path} ({layer})" if path else layer
    return (
        f"{where} expected input with {width} features, shape ({width},) or (*, {width}), "
        f"got shape {shape}"
    )


LINEAR_0 = "Linear(in_features=4, out_features=6, bias=True)"
LINEAR_FC = "Linear(in_features=6, out_features=5, bias=True)"
LINEAR_FC2 = "Linear(in_features=5, out_features=3, bias=True)"


def _both_raise_runtime_error(net: Any, reference: nn.Module, x: np.ndarray) -> str:
    """torch and layerc raise a RuntimeError (layerc's is a ValueError too); layerc's message."""
    theirs = error_of(lambda: run(reference, x))
    ours = error_of(lambda: run(net, x))
    assert type(theirs) is RuntimeError and "cannot be multiplied" in str(theirs)
    assert isinstance(ours, RuntimeError) and isinstance(ours, ValueError)
    return str(ours)


def test_a_wrong_width_names_the_layer_as_torch_raises(gen):
    """The first layer refuses the input: torch's exception type, and a message naming the
    layer by path and repr; the same with hooks anywhere in the model (layer by layer)."""
    net = gen.Net()
    reference = torch_twin(net)
    x = np.ones((2, 5), np.float32)
    expected = _message_for("0", LINEAR_0, 4, (2, 5))
    assert _both_raise_runtime_error(net, reference, x) == expected
    for module in (net, net[0], net.enc.fc):
        with module.register_forward_hook(lambda *args: None):
            assert _both_raise_runtime_error(net, reference, x) == expected
    assert _both_raise_runtime_error(net.fc2, reference.fc2, np.ones(4, np.float32)) == (
        _message_for("", LINEAR_FC2, 5, (4,))
    )
    assert _both_raise_runtime_error(net.enc, reference.enc, x) == (
        _message_for("fc", LINEAR_FC, 6, (2, 5))
    )


@pytest.mark.parametrize("hook_on", ["enc", "enc.fc", "fc2"])
def test_a_wrong_width_inside_a_submodule_names_its_path(gen, hook_on):
    """A pre-hook narrows what a layer deep in the model gets: torch and layerc both raise a
    RuntimeError, layerc's naming the layer's path from the module called; always_call hooks
    run on both sides."""
    outer = gen.Outer()
    reference = nn.Sequential(OrderedDict(body=torch_twin(outer.body)))
    path = {"enc": "body.enc.fc", "enc.fc": "body.enc.fc", "fc2": "body.fc2"}[hook_on]
    layer = {"body.enc.fc": LINEAR_FC, "body.fc2": LINEAR_FC2}[path]
    width = {"body.enc.fc": 6, "body.fc2": 5}[path]
    seen: list[tuple[str, bool]] = []
    for side, model in (("layerc", outer), ("torch", reference)):
        target = model.get_submodule("body." + hook_on)
        target.register_forward_pre_hook(lambda module, args: args[0][..., :-1])
        model.register_forward_hook(
            lambda module, args, output, side=side: seen.append((side, output is None)),
            always_call=True,
        )
    message = _both_raise_runtime_error(outer, reference, X)
    assert message == _message_for(path, layer, width, (3, width - 1))
    assert seen == [("torch", True), ("layerc", True)]
    error = error_of(lambda: outer(X))
    assert str(pickle.loads(pickle.dumps(error))) == message
