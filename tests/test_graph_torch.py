"""Section 8's graph models (Block, Net, TwoHeads, Pair) against PyTorch.

Each model of tests/spec_programs/section8.lyr (the spec's program, verbatim) has a hand-written
torch.nn.Module here with the same layers declared in the same order in `__init__` and the same
`forward`. The generated module's `state_dict()` is loaded into it, and then outputs (batches of
1, 7 and 64, no batch, a batch of shape (2, 3)), state_dict keys and order, repr and traversal
must be torch's. Hooks are registered on both sides (local pre-hooks and forward hooks on several
modules, TwoHeads.relu being called twice per forward, and global ones through
layerc.register_module_forward_hook/pre_hook and torch's) and every call is logged as
(module path, kind, tag, the arguments, the output): the logs must agree, with hooks that replace
an input or an output (the replacement flows into the statements after it) and a model-level
forward hook that sees TwoHeads' tuple. Also: inputs given as lists, errors for a wrong number
of inputs or inputs of different batch shapes, `net.njit()` against the call, and the njit
function inside a user's own `@numba.njit` loop (against torch).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pytest
import torch
from conftest import compile_text
from hook_harness import Side, assert_same, snap
from torch import nn

import layerc

HERE = Path(__file__).resolve().parent
SECTION8 = (HERE / "spec_programs" / "section8.lyr").read_text(encoding="utf-8")

MODELS = ("Block", "Net", "TwoHeads", "Pair")


# ---------------------------------------------------------------------------- torch twins


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 64)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(64, 16)

    def forward(self, x):
        h = self.fc2(self.act(self.fc1(self.norm(x))))
        return x + h


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.b1 = Block()
        self.b2 = Block()
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        e = self.embed(x)
        return self.head(torch.cat((e, self.b2(self.b1(e))), dim=-1))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(8, 8)
        self.relu = nn.ReLU()
        self.a = nn.Linear(8, 2)
        self.b = nn.Linear(8, 3)

    def forward(self, x, mask):
        h = self.relu(self.trunk(x)) * mask
        return self.a(h), self.b(self.relu(h))


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)

    def forward(self, x, y):
        h = self.fc(x)
        return x + h, h * y


TWINS: dict[str, type[nn.Module]] = {
    "Block": Block,
    "Net": Net,
    "TwoHeads": TwoHeads,
    "Pair": Pair,
}
# The feature shapes of each model's inputs, in forward order (from the source).
IN_SHAPES = {"Block": [(16,)], "Net": [(8,)], "TwoHeads": [(8,), (8,)], "Pair": [(2,), (2,)]}


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory):
    """The generated module of section 8's program, compiled once for this file."""
    return compile_text(SECTION8, tmp_path_factory.mktemp("graph_torch"), "graph_torch_section8")


def to_torch(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.array(value)) for key, value in state.items()}


def twin(net: Any, name: str) -> nn.Module:
    """The torch model `name` with the weights of the generated `net`."""
    reference = TWINS[name]().eval()
    reference.load_state_dict(to_torch(net.state_dict()))
    return reference


def inputs(name: str, batch: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((*batch, *shape)) * 1.5).astype(np.float32)
        for shape in IN_SHAPES[name]
    ]


def torch_run(reference: nn.Module, xs: list[np.ndarray]) -> Any:
    with torch.no_grad():
        return snap(reference(*[torch.from_numpy(x.copy()) for x in xs]))


# ---------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("batch", [(), (0,), (1,), (7,), (64,), (2, 3)], ids=str)
@pytest.mark.parametrize("name", MODELS)
def test_outputs_match_torch(gen, name: str, batch: tuple[int, ...]):
    """No hooks anywhere (the fused native call): the outputs are torch's, an array for one
    output and a tuple of arrays for several, float32, of shape (*batch, *out)."""
    net = getattr(gen, name)()
    reference = twin(net, name)
    seed = len(batch) * 100 + sum(batch)
    xs = inputs(name, batch, seed)
    ours = net(*xs)
    theirs = torch_run(reference, xs)
    assert_same(ours, theirs, name)
    outputs = ours if isinstance(ours, tuple) else (ours,)
    assert all(y.dtype == np.float32 and y.shape[: len(batch)] == batch for y in outputs)
    for x, original in zip(xs, inputs(name, batch, seed), strict=True):
        np.testing.assert_array_equal(x, original)  # the inputs are left as they were


def test_pair_matches_the_spec_test_and_torch(gen):
    """Pair's spec test, ([1, 1], [2, 0]) -> ([4, 8], [6, 0]), exactly, and torch agrees."""
    net = gen.Pair()
    x, y = np.array([1, 1], np.float32), np.array([2, 0], np.float32)
    ours = net(x, y)
    assert type(ours) is tuple and len(ours) == 2
    assert [o.tolist() for o in ours] == [[4, 8], [6, 0]]
    assert_same(ours, torch_run(twin(net, "Pair"), [x, y]))


def test_class_attributes_describe_inputs_and_outputs(gen):
    """input_names, in_shapes and out_shapes, as the source declares them and as torch's
    outputs are shaped."""
    names = {"Block": ("x",), "Net": ("x",), "TwoHeads": ("x", "mask"), "Pair": ("x", "y")}
    for name in MODELS:
        cls = getattr(gen, name)
        assert tuple(cls.input_names) == names[name], name
        assert [tuple(s) for s in cls.in_shapes] == IN_SHAPES[name], name
        theirs = torch_run(twin(cls(), name), inputs(name, ()))
        theirs = theirs if isinstance(theirs, tuple) else (theirs,)
        assert [tuple(s) for s in cls.out_shapes] == [y.shape for y in theirs], name


def test_inputs_as_lists(gen):
    """Several inputs given as lists (nested lists for a batch), or a list and an array."""
    net = gen.TwoHeads()
    reference = twin(net, "TwoHeads")
    for batch in [(), (5,), (2, 3)]:
        x, mask = inputs("TwoHeads", batch, seed=3)
        expected = torch_run(reference, [x, mask])
        assert_same(net(x.tolist(), mask.tolist()), expected, f"lists {batch}")
        assert_same(net(x.tolist(), mask), expected, f"list and array {batch}")
        assert_same(net(x, mask.tolist()), expected, f"array and list {batch}")
    pair = gen.Pair()
    assert [o.tolist() for o in pair([1, 1], [2, 0])] == [[4, 8], [6, 0]]
    assert [o.tolist() for o in pair([[1, 1], [0, 1]], [[2, 0], [1, 1]])] == [
        [[4, 8], [2, 5]],
        [[6, 0], [2, 4]],
    ]
    block = gen.Block()
    (x,) = inputs("Block", (3,), seed=4)
    assert_same(block(x.tolist()), torch_run(twin(block, "Block"), [x]), "Block of a list")


def test_torch_weights_load_into_the_generated_model(gen):
    """The other way round: torch's random initialisation (LayerNorm's affine made random too)
    loaded into the generated model; the fused call and the call with a hook are torch's."""
    torch.manual_seed(0)
    for name in MODELS:
        reference = TWINS[name]().eval()
        with torch.no_grad():
            for key, value in reference.state_dict().items():
                if key.split(".")[-2] == "norm":  # norm.weight, b1.norm.bias, ...
                    value.copy_(torch.randn_like(value))
        net = getattr(gen, name)()
        before = net(*inputs(name, (4,)))
        result = net.load_state_dict(
            {k: v.numpy().copy() for k, v in reference.state_dict().items()}
        )
        assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
        xs = inputs(name, (4,), seed=9)
        expected = torch_run(reference, xs)
        assert_same(net(*xs), expected, f"{name} fused")
        with net.register_forward_hook(lambda module, args, output: None):
            assert_same(net(*xs), expected, f"{name} with a hook")
        after = net(*inputs(name, (4,)))
        outs = zip(
            before if isinstance(before, tuple) else (before,),
            after if isinstance(after, tuple) else (after,),
            strict=True,
        )
        assert any(not np.allclose(a, b) for a, b in outs), f"{name}: the weights changed nothing"


# ---------------------------------------------------------------------------- structure


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_keys_order_and_shapes_are_torchs(gen, name: str):
    net = getattr(gen, name)()
    reference = TWINS[name]()
    ours, theirs = net.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert tuple(ours[key].shape) == tuple(theirs[key].shape), key
        assert ours[key].dtype == np.float32, key
    twin(net, name)  # torch's strict load_state_dict takes every key, shape and dtype


def test_state_dict_values_are_the_sources(gen):
    """Two instances of Block inside Net get the same compiled weights (seed=0 and seed=1 in
    Block's source), as their own copies; Pair's weight is written out in the source."""
    net = gen.Net()
    state = net.state_dict()
    for key in ("norm.weight", "fc1.weight", "fc1.bias", "fc2.weight"):
        np.testing.assert_array_equal(state[f"b1.{key}"], state[f"b2.{key}"])
    np.testing.assert_array_equal(state["b1.norm.weight"], np.ones(16, np.float32))
    np.testing.assert_array_equal(state["b1.norm.bias"], np.zeros(16, np.float32))
    net.b1.fc1.weight[:] = 0
    assert net.b2.fc1.weight.any()
    assert gen.Pair().state_dict()["fc.weight"].tolist() == [[1, 2], [3, 4]]
    # uniform(seed=...) is within torch's default init range for a Linear, 1/sqrt(in_features)
    for key, value in gen.TwoHeads().state_dict().items():
        assert 0 < np.abs(value).max() <= 1 / np.sqrt(8), key


@pytest.mark.parametrize("name", MODELS)
def test_repr_and_traversal_are_torchs(gen, name: str):
    net = getattr(gen, name)()
    reference = TWINS[name]()
    assert repr(net) == repr(reference)
    ours, theirs = list(net.named_modules()), list(reference.named_modules())
    assert [path for path, _ in ours] == [path for path, _ in theirs]
    for (path, a), (_, b) in zip(ours, theirs, strict=True):
        assert repr(a) == repr(b), path
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert [n for n, _ in net.named_children()] == [n for n, _ in reference.named_children()]


# ---------------------------------------------------------------------------- hooks


def sides(gen, name: str) -> tuple[Side, Side]:
    net = getattr(gen, name)()
    return Side("layerc", net), Side("torch", twin(net, name))


def run_both(pair: tuple[Side, Side], scenario: Callable[[Side], Any]) -> Any:
    """Run `scenario(side)` on both sides (global hooks removed afterwards, even on failure);
    the results and the logs must agree. Returns layerc's result."""
    results = []
    for side in pair:
        try:
            with torch.no_grad():
                results.append(snap(scenario(side)))
        finally:
            side.close()
    assert_same(results[0], results[1], "result")
    assert_same(pair[0].log, pair[1].log, "log")
    return results[0]


def events(side: Side) -> list[tuple[str, str]]:
    return [(entry[0], entry[1]) for entry in side.log]


def test_every_module_hooked_two_heads(gen):
    """Pre-hooks and forward hooks on every module of TwoHeads: relu's fire at both of its
    calls, the second seeing h; the root's hooks see both inputs and the tuple."""
    pair = sides(gen, "TwoHeads")
    x, mask = inputs("TwoHeads", (3,), seed=5)

    def scenario(side):
        for path, module in side.net.named_modules():
            module.register_forward_pre_hook(side.pre(path))
            module.register_forward_hook(side.fwd(path))
        return side.net(side.input(x), side.input(mask))

    run_both(pair, scenario)
    log = pair[0].log
    assert events(pair[0]) == [
        ("", "pre"),
        ("trunk", "pre"),
        ("trunk", "fwd"),
        ("relu", "pre"),
        ("relu", "fwd"),
        ("a", "pre"),
        ("a", "fwd"),
        ("relu", "pre"),
        ("relu", "fwd"),
        ("b", "pre"),
        ("b", "fwd"),
        ("", "fwd"),
    ]
    root_pre, root_fwd = log[0], log[-1]
    assert len(root_pre[3]) == 2 and root_pre[3][0].shape == (3, 8)
    assert type(root_fwd[4]) is tuple and [y.shape for y in root_fwd[4]] == [(3, 2), (3, 3)]
    h = log[6][3][0]  # a's input
    np.testing.assert_array_equal(log[7][3][0], h)  # relu's second call takes h


def test_every_module_hooked_net(gen):
    """Hooks on every module of Net, nested Blocks included: the order of a PyTorch forward,
    each Block's inputs and outputs, the residual sum seen by Block's own forward hook."""
    pair = sides(gen, "Net")
    (x,) = inputs("Net", (4,), seed=6)

    def scenario(side):
        for path, module in side.net.named_modules():
            module.register_forward_pre_hook(side.pre(path))
            module.register_forward_hook(side.fwd(path))
        return side.net(side.input(x))

    run_both(pair, scenario)
    fwd = [entry[0] for entry in pair[0].log if entry[1] == "fwd"]
    assert fwd == [
        "embed",
        "b1.norm",
        "b1.fc1",
        "b1.act",
        "b1.fc2",
        "b1",
        "b2.norm",
        "b2.fc1",
        "b2.act",
        "b2.fc2",
        "b2",
        "head",
        "",
    ]


@pytest.mark.parametrize("name", MODELS)
def test_global_hooks(gen, name: str):
    """Global pre-hooks and forward hooks (layerc's and torch's registries) fire for every
    module call, the root's included, before the modules' own hooks."""
    pair = sides(gen, name)
    xs = inputs(name, (2,), seed=7)

    def scenario(side):
        side.net.register_forward_hook(side.fwd("local"))
        side.register_global_pre(side.pre("global"))
        side.register_global(side.fwd("global"))
        return side.net(*[side.input(x) for x in xs])

    run_both(pair, scenario)
    log = pair[0].log
    calls = {"Block": 5, "Net": 13, "TwoHeads": 6, "Pair": 2}[name]
    assert [entry[2] for entry in log].count("global") == 2 * calls
    assert [(entry[0], entry[2]) for entry in log[-2:]] == [("", "global"), ("", "local")]


def test_global_hooks_are_removed(gen):
    """After its handle is removed, a global hook no longer fires (and the call is torch's)."""
    net = gen.TwoHeads()
    seen: list[str] = []
    handle = layerc.register_module_forward_hook(lambda m, a, o: seen.append(m._get_name()))
    xs = inputs("TwoHeads", (2,))
    try:
        net(*xs)
    finally:
        handle.remove()
    assert seen.count("ReLU") == 2 and seen[-1] == "TwoHeads" and len(seen) == 6
    net(*xs)
    assert len(seen) == 6
    assert_same(net(*xs), torch_run(twin(net, "TwoHeads"), xs))


def test_forward_hook_replacing_outputs_flows_on(gen):
    """A forward hook that replaces relu's output (differently at its two calls) and one that
    replaces trunk's: the replacements flow into the statements after them."""
    pair = sides(gen, "TwoHeads")
    x, mask = inputs("TwoHeads", (4,), seed=8)

    def scenario(side):
        calls = []

        def relu_replace(output):
            calls.append(None)
            return output * 3.0 if len(calls) == 1 else output - 0.25

        side.net.relu.register_forward_hook(side.fwd("relu", relu_replace))
        side.net.trunk.register_forward_hook(side.fwd("trunk", lambda output: output + 0.5))
        side.net.a.register_forward_pre_hook(side.pre("a"))
        side.net.b.register_forward_pre_hook(side.pre("b"))
        return side.net(side.input(x), side.input(mask))

    ours = run_both(pair, scenario)
    plain = gen.TwoHeads()(x, mask)  # a fresh instance: no hooks
    assert not np.allclose(ours[0], plain[0]) and not np.allclose(ours[1], plain[1])
    log = pair[0].log
    trunk_out = log[0][4]
    relu_first_in = log[1][3][0]
    np.testing.assert_allclose(relu_first_in, trunk_out + 0.5, rtol=1e-6)
    np.testing.assert_allclose(log[2][3][0], log[1][4] * 3.0 * mask, rtol=1e-6)  # a takes h


def test_nested_model_output_replaced(gen):
    """A forward hook on Net.b1 replaces the Block's output: b2 and head take the replacement;
    a forward hook on a Block's fc2 replaces h before the residual sum."""
    pair = sides(gen, "Net")
    (x,) = inputs("Net", (3,), seed=10)

    def scenario(side):
        side.net.b1.register_forward_hook(side.fwd("b1", lambda output: -output))
        side.net.b2.fc2.register_forward_hook(side.fwd("b2.fc2", lambda output: output * 0.0))
        side.net.b2.register_forward_hook(side.fwd("b2"))
        return side.net(side.input(x))

    ours = run_both(pair, scenario)
    assert not np.allclose(ours, gen.Net()(x))  # a fresh instance: no hooks
    b1, fc2, b2 = pair[0].log
    np.testing.assert_array_equal(b2[4], b2[3][0])  # h replaced by zeros: b2(e) is its input
    np.testing.assert_allclose(b2[3][0], -b1[4], rtol=1e-6)


def test_pre_hooks_replacing_inputs(gen):
    """A pre-hook on the root replacing mask (a tuple of both inputs), one on `a` replacing its
    one input (a bare value), and one on relu that replaces only at its second call."""
    pair = sides(gen, "TwoHeads")
    x, mask = inputs("TwoHeads", (3,), seed=11)

    def scenario(side):
        relu_calls = []

        def relu_replace(args):
            relu_calls.append(None)
            return None if len(relu_calls) == 1 else (args[0] + 1.0,)

        side.net.register_forward_pre_hook(side.pre("root", lambda args: (args[0], args[1] * 0.5)))
        side.net.a.register_forward_pre_hook(side.pre("a", lambda args: args[0] - 2.0))
        side.net.relu.register_forward_pre_hook(side.pre("relu", relu_replace))
        side.net.relu.register_forward_hook(side.fwd("relu"))
        side.net.register_forward_hook(side.fwd("root"))
        return side.net(side.input(x), side.input(mask))

    ours = run_both(pair, scenario)
    plain = gen.TwoHeads()(x, mask)  # a fresh instance: no hooks
    assert not np.allclose(ours[0], plain[0]) and not np.allclose(ours[1], plain[1])
    root_fwd = pair[0].log[-1]
    np.testing.assert_array_equal(root_fwd[3][1], mask * np.float32(0.5))  # the args it ran on


def test_model_forward_hook_sees_and_replaces_the_tuple(gen):
    """A forward hook on TwoHeads sees the tuple of both outputs; one that returns a new tuple
    replaces the call's result. On Pair too, with a global hook."""
    pair = sides(gen, "TwoHeads")
    xs = inputs("TwoHeads", (5,), seed=12)

    def scenario(side):
        side.net.register_forward_hook(side.fwd("sees"))
        side.net.register_forward_hook(side.fwd("swaps", lambda out: (out[1], out[0] * 2.0)))
        side.net.register_forward_hook(side.fwd("after"))
        return side.net(*[side.input(x) for x in xs])

    ours = run_both(pair, scenario)
    assert [y.shape for y in ours] == [(5, 3), (5, 2)]
    seen, after = pair[0].log[0][4], pair[0].log[2][4]
    assert type(seen) is tuple and [y.shape for y in seen] == [(5, 2), (5, 3)]
    np.testing.assert_array_equal(after[1], seen[0] * np.float32(2.0))

    pair = sides(gen, "Pair")
    xs = inputs("Pair", (), seed=13)

    def global_scenario(side):
        side.register_global(side.fwd("global"))
        return side.net(*[side.input(x) for x in xs])

    run_both(pair, global_scenario)
    assert [entry[0] for entry in pair[0].log] == ["fc", ""]
    assert type(pair[0].log[-1][4]) is tuple


def test_hooks_on_a_batch_of_two_axes(gen):
    """Hooks see arrays of the batch shape (2, 3) as torch's tensors are."""
    pair = sides(gen, "TwoHeads")
    xs = inputs("TwoHeads", (2, 3), seed=14)

    def scenario(side):
        side.register_global(side.fwd("global"))
        return side.net(*[side.input(x) for x in xs])

    ours = run_both(pair, scenario)
    assert [y.shape for y in ours] == [(2, 3, 2), (2, 3, 3)]


def test_removing_hooks_gives_the_fused_result_again(gen):
    net = gen.TwoHeads()
    xs = inputs("TwoHeads", (6,), seed=15)
    expected = torch_run(twin(net, "TwoHeads"), xs)
    handle = net.relu.register_forward_hook(lambda module, args, output: output * 0.0)
    hooked = net(*xs)
    assert not np.allclose(hooked[1], expected[1])
    handle.remove()
    assert_same(net(*xs), expected)


# ---------------------------------------------------------------------------- errors


def _message(call: Callable[[], Any]) -> str:
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("hooked", [False, True], ids=["fused", "hooked"])
def test_wrong_number_of_inputs(gen, hooked: bool):
    """TwoHeads takes two inputs: one or three raise, with a message that says how many or
    which is missing (torch raises TypeError too)."""
    net = gen.TwoHeads()
    if hooked:
        net.relu.register_forward_hook(lambda module, args, output: None)
    x, mask = inputs("TwoHeads", (3,))
    for args in [(x,), (x, mask, mask), ()]:
        message = _message(lambda args=args: net(*args))
        assert re.search(r"input|argument", message), message
        assert re.search(r"\d", message) or "'mask'" in message, message
        with pytest.raises(TypeError):
            TwoHeads()(*[torch.from_numpy(a) for a in args])
    message = _message(lambda: gen.Block()(x, x))
    assert re.search(r"input|argument", message), message


@pytest.mark.parametrize("hooked", [False, True], ids=["fused", "hooked"])
def test_inputs_of_different_batch_shapes(gen, hooked: bool):
    """x of 3 samples and mask of 4 raise (as torch does); the message shows both."""
    net = gen.TwoHeads()
    if hooked:
        net.trunk.register_forward_pre_hook(lambda module, args: None)
    x, _ = inputs("TwoHeads", (3,))
    _, mask = inputs("TwoHeads", (4,))
    message = _message(lambda: net(x, mask))
    assert re.search(r"\(3(, 8)?,?\)", message) and re.search(r"\(4(, 8)?,?\)", message), message
    with pytest.raises(RuntimeError):
        TwoHeads()(torch.from_numpy(x), torch.from_numpy(mask))
    x2, y2 = inputs("Pair", (2, 3))  # batch (2, 3) against (3,): torch would broadcast
    message = _message(lambda: gen.Pair()(x2, y2[0]))
    assert re.search(r"\(2, 3(, 2)?\)", message) and re.search(r"\(3,( 2)?\)", message), message


def test_inputs_of_the_wrong_width(gen):
    net = gen.TwoHeads()
    x, mask = inputs("TwoHeads", (3,))
    message = _message(lambda: net(x[:, :5], mask))
    assert "(8,)" in message, message
    message = _message(lambda: net(x, mask[:, :5]))
    assert "(8,)" in message, message


# ---------------------------------------------------------------------------- keywords


def test_inputs_by_keyword(gen):
    """As torch's forward takes its inputs by name, so does the generated one."""
    net = gen.TwoHeads()
    reference = twin(net, "TwoHeads")
    x, mask = inputs("TwoHeads", (4,), seed=20)
    expected = torch_run(reference, [x, mask])
    assert_same(net(x=x, mask=mask), expected, "keywords")
    assert_same(net(x, mask=mask), expected, "one keyword")
    assert_same(net(mask=mask, x=x), expected, "keywords in another order")


# ---------------------------------------------------------------------------- mixed nesting

# Section 8's models (without its test) and three more: a pipeline with a graph model inside,
# a graph model of no layers, and a graph model calling a pipeline, a graph model and that one.
MIXED = (
    SECTION8[: SECTION8.index("test Pair")]
    + """
model Piped {
    Linear(4, 16) { init = uniform(seed=7) }
    Block()
    ReLU()
}

model Sum {
    forward(a: 2, b: 2) {
        return a + b
    }
}

model Outer {
    p = Piped()
    n = Net()
    sum = Sum()
    proj = Linear(22, 8) { init = uniform(seed=8) }

    forward(x, z) {
        h = p(x)
        return n(proj(cat(h, x, z)) - 1) * 2, sum(z, -z * 3)
    }
}

model Img {
    norm = LayerNorm([2, 3])
    fc = Linear(3, 4) { init = uniform(seed=9) }
    flat = Flatten()
    relu = ReLU()

    forward(x: [2, 3], y) {
        a = norm(x)
        return cat(x, relu(a)), fc(a) * 2, flat(a) + y
    }
}
"""
)


class Piped(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 16), Block(), nn.ReLU())


class Sum(nn.Module):
    def forward(self, a, b):
        return a + b


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = Piped()
        self.n = Net()
        self.sum = Sum()
        self.proj = nn.Linear(22, 8)

    def forward(self, x, z):
        h = self.p(x)
        return self.n(self.proj(torch.cat((h, x, z), dim=-1)) - 1) * 2, self.sum(z, -z * 3)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory):
    return compile_text(MIXED, tmp_path_factory.mktemp("graph_mixed"), "graph_torch_mixed")


def test_pipelines_and_graph_models_nest_both_ways(mixed):
    """Outer (a graph model of a pipeline holding a graph model, a graph model holding two
    Blocks, and a layerless graph model) and Piped: repr, state_dict, outputs, and the log of
    hooks on every module, as torch's."""
    for name, build, shapes in [("Outer", Outer, [(4,), (2,)]), ("Piped", Piped, [(4,)])]:
        net = getattr(mixed, name)()
        reference = build().eval()
        assert repr(net) == repr(reference), name
        assert list(net.state_dict()) == list(reference.state_dict()), name
        reference.load_state_dict(to_torch(net.state_dict()))
        rng = np.random.default_rng(21)
        xs = [rng.standard_normal((3, *shape)).astype(np.float32) for shape in shapes]
        assert_same(net(*xs), torch_run(reference, xs), f"{name} fused")

        pair = (Side("layerc", net), Side("torch", reference))

        def scenario(side, xs=xs):
            for path, module in side.net.named_modules():
                module.register_forward_pre_hook(side.pre(path))
                module.register_forward_hook(side.fwd(path))
            return side.net(*[side.input(x) for x in xs])

        run_both(pair, scenario)
        assert len(pair[0].log) == 2 * len(list(net.named_modules())), name


class Img(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm([2, 3])
        self.fc = nn.Linear(3, 4)
        self.flat = nn.Flatten()
        self.relu = nn.ReLU()

    def forward(self, x, y):
        a = self.norm(x)
        return torch.cat((x, self.relu(a)), dim=-1), self.fc(a) * 2, self.flat(a) + y


@pytest.mark.parametrize("hooked", [False, True], ids=["fused", "hooked"])
@pytest.mark.parametrize("batch", [(), (1,), (5,)], ids=str)
def test_values_of_two_axes(mixed, batch: tuple[int, ...], hooked: bool):
    """Img's values are (2, 3) per sample: cat joins them along the last axis (to (2, 6)), fc
    maps the last axis, and Flatten gives 6 features; as torch computes them, fused or not."""
    net = mixed.Img()
    torch.manual_seed(1)
    reference = Img().eval()
    with torch.no_grad():
        reference.norm.weight.copy_(torch.randn(2, 3))
        reference.norm.bias.copy_(torch.randn(2, 3))
    net.load_state_dict({k: v.numpy().copy() for k, v in reference.state_dict().items()})
    assert repr(net) == repr(reference)
    assert [tuple(s) for s in net.in_shapes] == [(2, 3), (6,)]
    assert [tuple(s) for s in net.out_shapes] == [(2, 6), (2, 4), (6,)]
    rng = np.random.default_rng(22)
    xs = [rng.standard_normal((*batch, 2, 3)), rng.standard_normal((*batch, 6))]
    xs = [x.astype(np.float32) for x in xs]
    if hooked:
        net.relu.register_forward_hook(lambda module, args, output: None)
    if batch:
        expected = torch_run(reference, xs)
    else:  # torch's Flatten() flattens from axis 1 whatever the batch: give torch a batch of 1
        expected = tuple(y[0] for y in torch_run(reference, [x[None] for x in xs]))
    assert_same(net(*xs), expected)


# ---------------------------------------------------------------------------- njit


@pytest.mark.parametrize("name", MODELS)
def test_njit_equals_the_call(gen, name: str):
    net = getattr(gen, name)()
    f = net.njit()
    for batch in [(), (5,), (2, 3)]:
        xs = inputs(name, batch, seed=16)
        ours, call = f(*xs), net(*xs)
        assert type(ours) is type(call)
        for a, b in zip(
            ours if isinstance(ours, tuple) else (ours,),
            call if isinstance(call, tuple) else (call,),
            strict=True,
        ):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_njit_inside_a_user_loop_two_heads(gen):
    """The njit function of a model of two inputs and two outputs, called sample by sample in
    the user's own @numba.njit function, is torch's on the batch."""
    net = gen.TwoHeads()
    f = net.njit()

    @numba.njit
    def each_sample(xs, masks):
        n = xs.shape[0]
        first = np.empty((n, 2), dtype=np.float32)
        second = np.empty((n, 3), dtype=np.float32)
        for i in range(n):
            a, b = f(xs[i], masks[i])
            first[i] = a
            second[i] = b
        return first, second

    xs = inputs("TwoHeads", (9,), seed=17)
    assert_same(each_sample(*xs), torch_run(twin(net, "TwoHeads"), xs))


def test_njit_inside_a_user_loop_net_and_block(gen):
    """Block applied 5 times to its own output, and Net on every prefix of a batch, inside the
    user's @numba.njit code; torch runs the same loops."""
    block, net = gen.Block(), gen.Net()
    g, h = block.njit(), net.njit()

    @numba.njit
    def iterate(x, times):
        for _ in range(times):
            x = g(x)
        return x

    @numba.njit
    def prefixes(xs):
        total = np.zeros(3, dtype=np.float32)
        for i in range(1, xs.shape[0] + 1):
            total += h(xs[:i]).sum(axis=0)
        return total

    (x,) = inputs("Block", (4,), seed=18)
    torch_block = twin(block, "Block")
    expected = torch.from_numpy(x)
    with torch.no_grad():
        for _ in range(5):
            expected = torch_block(expected)
    torch.testing.assert_close(torch.from_numpy(iterate(x, 5)), expected, rtol=1e-5, atol=1e-5)

    (xs,) = inputs("Net", (6,), seed=19)
    torch_net = twin(net, "Net")
    with torch.no_grad():
        out = torch_net(torch.from_numpy(xs))
        total = sum(out[:i].sum(dim=0) for i in range(1, 7))
    torch.testing.assert_close(torch.from_numpy(prefixes(xs)), total, rtol=1e-5, atol=1e-4)
