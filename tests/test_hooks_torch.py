"""Generated modules against torch.nn, scenario by scenario.

Every differential test runs the same scenario on a generated model and on the torch.nn model of
the same structure and weights (PyTorch 2.13 is the reference): hooks are registered on both,
each hook call is logged (the module's qualified name, the hook's kind and tag, and the values it
saw), and the outputs, the logs, the raised errors and the warnings must agree. The scenarios
cover hook order with `prepend`, global against local hooks, input and output replacement,
`with_kwargs`, `always_call` on exceptions, removal while hooks run, handles, nested modules,
direct `forward` calls, state_dict round trips, strict and non-strict loading, repr, traversal
and pickling; each forward-hook category of PyTorch's own test/nn/test_module_hooks.py has a
counterpart here (named in the test's docstring). `net.njit()` runs inside a user's
`@numba.njit` loop and is compared with torch too.
"""

from __future__ import annotations

import copy
import gc
import pickle
import re
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numba
import numpy as np
import pytest
import torch
import torch.nn.modules.module as torch_module
from conftest import compile_text
from hook_harness import F32, F64, Side, assert_same, snap
from torch import nn

import layerc
from layerc.runtime import hooks as layerc_hooks

LYR = """
# A small MLP with every feature the module API has to get right: layers without names (their
# position is their name), a nested model, Linears with and without bias, activations.
model Block {
    fc = Linear(6, 5) { init = uniform(seed=1) }
    Tanh()
}

model Net {
    Linear(4, 6) { init = uniform(seed=0) }
    ReLU()
    enc = Block()
    proj = Linear(5, 3, bias=false) { init = uniform(seed=2) }
    LeakyReLU(negative_slope=0.1)
    Softmax()
}

# A float64 vector field x' = f(x), for the simulation loop of the njit test.
model Field(dtype=float64) {
    inp = Linear(3, 16) { init = uniform(seed=3) }
    Tanh()
    out = Linear(16, 3) { init = uniform(seed=4) }
}
"""

X = (np.random.default_rng(0).standard_normal((3, 4)) * 2).astype(np.float32)
X_BAD = np.ones((2, 5), dtype=np.float32)  # 5 features where the model takes 4


def torch_net() -> nn.Sequential:
    """Net of LYR, written out by hand in torch.nn."""
    block = nn.Sequential(OrderedDict([("fc", nn.Linear(6, 5)), ("1", nn.Tanh())]))
    return nn.Sequential(
        OrderedDict(
            [
                ("0", nn.Linear(4, 6)),
                ("1", nn.ReLU()),
                ("enc", block),
                ("proj", nn.Linear(5, 3, bias=False)),
                ("4", nn.LeakyReLU(negative_slope=0.1)),
                ("5", nn.Softmax(dim=-1)),
            ]
        )
    )


def torch_field() -> nn.Sequential:
    """Field of LYR in torch.nn, float64."""
    layers = [("inp", nn.Linear(3, 16)), ("1", nn.Tanh()), ("out", nn.Linear(16, 3))]
    return nn.Sequential(OrderedDict(layers)).double()


def to_torch(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A layerc state_dict as torch tensors (copies, so torch never shares layerc's memory)."""
    return {key: torch.from_numpy(np.array(value)) for key, value in state.items()}


def to_numpy_state(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy().copy() for key, value in state.items()}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory):
    """The generated module of LYR, compiled once for this file."""
    return compile_text(LYR, tmp_path_factory.mktemp("hooks_torch"), "hooks_torch_net")


@pytest.fixture(autouse=True)
def no_global_hooks_left():
    """Remove every global hook a test registered, in layerc and in torch, even when it fails."""
    registries = [
        layerc_hooks.global_forward_pre_hooks,
        layerc_hooks.global_forward_hooks,
        layerc_hooks.global_forward_hooks_with_kwargs,
        layerc_hooks.global_forward_hooks_always_called,
        torch_module._global_forward_pre_hooks,
        torch_module._global_forward_hooks,
        torch_module._global_forward_hooks_with_kwargs,
        torch_module._global_forward_hooks_always_called,
    ]
    before = [set(registry) for registry in registries]
    yield
    for registry, keys in zip(registries, before, strict=True):
        for key in [k for k in registry if k not in keys]:
            del registry[key]
    layerc_hooks.bump()


@pytest.fixture
def pair(gen) -> tuple[Side, Side]:
    """A fresh generated Net and the torch Net with the same weights."""
    net = gen.Net()
    reference = torch_net()
    reference.load_state_dict(to_torch(net.state_dict()))
    return Side("layerc", net), Side("torch", reference)


# ---------------------------------------------------------------------------- the harness


@dataclass
class Outcome:
    value: Any = None
    error: BaseException | None = None
    warnings: list[str] = field(default_factory=list)


def run_both(pair: tuple[Side, Side], scenario: Callable[[Side], Any]) -> tuple[Outcome, Outcome]:
    """Run `scenario(side)` on both sides; both must return (or both raise), with equal results,
    logs and hook warnings. Returns the two outcomes for further checks."""
    outcomes = []
    for side in pair:
        outcome = Outcome()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome.value = snap(scenario(side))
            except Exception as exc:
                outcome.error = exc
        outcome.warnings = [str(w.message) for w in caught if "hook" in str(w.message)]
        outcomes.append(outcome)
    ours, theirs = outcomes
    assert (ours.error is None) == (theirs.error is None), (ours.error, theirs.error)
    assert_same(ours.value, theirs.value, "result")
    assert_same(pair[0].log, pair[1].log, "log")
    assert ours.warnings == theirs.warnings
    return ours, theirs


def tags(side: Side) -> list:
    """The tags of the hook calls logged, with the last item of each note between them."""
    return [
        entry[2] if len(entry) > 2 and entry[1] in HOOK_KINDS else entry[-1] for entry in side.log
    ]


HOOK_KINDS = ("pre", "fwd", "pre_kw", "fwd_kw")


def raised(side: Side, call: Callable[[], Any]) -> None:
    """Call; log the error a hook raised by type and message, or that forward refused the input
    (layerc and torch word shape errors differently, but both must raise)."""
    try:
        call()
    except RuntimeError as exc:
        if "failing" in str(exc):
            side.note("error", type(exc).__name__, str(exc))
        else:
            side.note("error", "forward")
    except ValueError:
        side.note("error", "forward")
    else:
        side.note("no error")


# ---------------------------------------------------------------------------- hook order


def test_forward_hooks_fire_in_registration_order_with_prepend(pair):
    """Counterpart of test_forward_hooks: five hooks on a nested model, two prepended."""

    def scenario(side):
        target = side.net.enc
        for tag, prepend in [(0, False), (1, True), (2, False), (3, False), (4, True)]:
            target.register_forward_hook(side.fwd(tag), prepend=prepend)
        assert side.log == []
        side.net(side.input(X))
        return side.net(side.input(X))

    run_both(pair, scenario)
    assert tags(pair[0]) == [4, 1, 0, 2, 3] * 2
    assert {entry[0] for entry in pair[0].log} == {"enc"}


def test_pre_hooks_fire_in_registration_order_with_prepend(pair):
    """Counterpart of test_forward_pre_hooks."""

    def scenario(side):
        target = side.net.enc
        for tag, prepend in [(0, True), (1, False), (2, False), (3, False), (4, True)]:
            target.register_forward_pre_hook(side.pre(tag), prepend=prepend)
        side.net(side.input(X))
        return side.net(side.input(X))

    run_both(pair, scenario)
    assert tags(pair[0]) == [4, 0, 1, 2, 3] * 2


def test_pre_hook_then_forward_hook_on_the_root(pair):
    """Counterpart of test_mixed_hooks (its forward part)."""

    def scenario(side):
        side.net.register_forward_pre_hook(side.pre(0))
        side.net.register_forward_hook(side.fwd(1))
        assert side.log == []
        side.net(side.input(X))
        return side.net(side.input(X))

    run_both(pair, scenario)
    assert tags(pair[0]) == [0, 1, 0, 1]


def test_every_module_sees_what_the_layer_before_produced(pair):
    """Hooks on every module, nested ones included, fire in execution order; each layer's input
    is the previous layer's output."""

    def scenario(side):
        for path, module in side.net.named_modules():
            module.register_forward_pre_hook(side.pre(path))
            module.register_forward_hook(side.fwd(path))
        return side.net(side.input(X))

    run_both(pair, scenario)
    log = pair[0].log
    order = [(entry[0], entry[1]) for entry in log]
    assert order[:4] == [("", "pre"), ("0", "pre"), ("0", "fwd"), ("1", "pre")]
    assert order[-2:] == [("5", "fwd"), ("", "fwd")]
    leaves = [entry for entry in log if entry[1] == "fwd" and entry[0] not in ("", "enc")]
    assert [entry[0] for entry in leaves] == ["0", "1", "enc.fc", "enc.1", "proj", "4", "5"]
    for before, after in zip(leaves, leaves[1:], strict=False):
        np.testing.assert_array_equal(after[3][0], before[4])


def test_global_hooks_run_before_the_modules_own(pair):
    """Counterpart of test_global_and_local_hooks_order: global pre-hooks before local ones,
    global forward hooks before local ones, whatever the registration order and `prepend`."""

    def scenario(side):
        side.net.register_forward_pre_hook(side.pre("local pre"))
        side.net.enc.register_forward_hook(side.fwd("local fwd"), prepend=True)
        side.register_global_pre(side.pre("global pre"))
        side.register_global(side.fwd("global fwd"))
        side.net.register_forward_pre_hook(side.pre("local pre, prepended"), prepend=True)
        return side.net(side.input(X))

    run_both(pair, scenario)
    root = [entry[2] for entry in pair[0].log if entry[0] == ""]
    assert root == ["global pre", "local pre, prepended", "local pre", "global fwd"]
    enc = [entry[2] for entry in pair[0].log if entry[0] == "enc"]
    assert enc == ["global pre", "global fwd", "local fwd"]


def test_global_hooks_fire_for_every_module_until_removed(pair):
    """Counterpart of test_module_global_hooks and TestModuleHookNN._test_hooks (forward part):
    counted calls on several modules while global and local hooks come and go."""

    def scenario(side):
        counts = {"global": 0, "local": 0}

        def counter(kind, increment):
            def hook(module, args, output):
                assert isinstance(args, tuple) and len(args) == 1
                counts[kind] += increment

            return hook

        modules = [side.net.proj, side.net.enc, side.net]
        inputs = [np.ones((2, 5), np.float32), np.ones((2, 6), np.float32), X]
        history = []

        def call_all():
            for module, x in zip(modules, inputs, strict=True):
                module(side.input(x))
            history.append(dict(counts))

        first = side.register_global(counter("global", 1))
        call_all()
        local = side.net.enc.register_forward_hook(counter("local", 1))
        call_all()
        second = side.register_global(counter("global", 2))
        local_2 = side.net.enc.register_forward_hook(counter("local", 2))
        call_all()
        second.remove()
        local_2.remove()
        call_all()
        first.remove()
        local.remove()
        call_all()
        return history

    ours, _ = run_both(pair, scenario)
    # 1 + 3 + 9 modules run per round: proj; enc, enc.fc, enc.1; Net and its 8 modules
    assert ours.value[0] == {"global": 13, "local": 0}
    assert ours.value[-1] == ours.value[-2]


# ---------------------------------------------------------------------------- replacing values


def test_pre_hooks_replace_inputs_and_forward_hooks_replace_outputs(pair):
    """A bare value returned by a pre-hook is wrapped into a tuple; the next pre-hook, forward
    and the forward hooks see the replaced inputs; a replaced output is what the next layer and
    the parent's hooks get."""

    def scenario(side):
        fc = side.net.enc.fc
        fc.register_forward_pre_hook(side.pre("double", lambda args: args[0] * 2))
        fc.register_forward_pre_hook(side.pre("sees doubled"))
        fc.register_forward_hook(side.fwd("sees doubled args"))
        side.net.proj.register_forward_pre_hook(side.pre("plus one", lambda a: (a[0] + 1,)))
        side.net[1].register_forward_hook(side.fwd("negate", lambda out: -out))
        side.net.enc.register_forward_hook(side.fwd("sees the replaced chain"))
        side.net.register_forward_hook(side.fwd("root"))
        return side.net(side.input(X))

    run_both(pair, scenario)
    seen = {entry[2]: entry for entry in pair[0].log}
    doubled = seen["sees doubled"][3]
    assert isinstance(doubled, tuple) and len(doubled) == 1
    np.testing.assert_array_equal(doubled[0], 2 * seen["double"][3][0])
    np.testing.assert_array_equal(seen["sees doubled args"][3][0], doubled[0])
    assert seen["negate"][4].max() >= 0 and seen["double"][3][0].max() <= 0


def test_global_pre_and_forward_hooks_replace_values(pair):
    """Counterpart of test_module_global_forward_preforward_hook_writeable: a global pre-hook
    returning relu(input) and a global forward hook returning -output act on every module."""

    def scenario(side):
        side.register_global_pre(side.pre("relu", lambda args: side.relu(args[0])))
        side.register_global(side.fwd("negate", lambda output: -output))
        return side.net(side.input(X))

    run_both(pair, scenario)


def test_local_pre_and_forward_hooks_replace_values(pair):
    """Counterpart of test_hook_forward_preforward_writable."""

    def scenario(side):
        side.net.register_forward_pre_hook(lambda m, args: side.relu(args[0]))
        side.net.register_forward_hook(lambda m, args, output: -output)
        return side.net(side.input(X))

    plain = pair[1].net(torch.relu(torch.from_numpy(X))).detach().numpy()
    ours, _ = run_both(pair, scenario)
    np.testing.assert_allclose(ours.value, -plain, **F32)


# ---------------------------------------------------------------------------- with_kwargs


def test_pre_hook_with_kwargs_replaces_args_and_kwargs(pair):
    """Counterpart of test_kwarg_hooks: a with_kwargs pre-hook consumes a keyword argument and
    returns (args, kwargs); forward and the with_kwargs forward hooks see what it returned."""

    def consume_scale(args, kwargs):
        kwargs = dict(kwargs)
        scale = kwargs.pop("scale")
        return (args[0] * scale,), kwargs

    def scenario(side):
        side.net.register_forward_pre_hook(side.pre("plain pre"))
        side.net.register_forward_pre_hook(side.pre_kw("kw pre", consume_scale), with_kwargs=True)
        side.net.register_forward_pre_hook(side.pre_kw("kw pre, after"), with_kwargs=True)
        side.net.register_forward_hook(side.fwd_kw("kw fwd"), with_kwargs=True)
        side.net.register_forward_hook(side.fwd("plain fwd"))
        side.net.enc.register_forward_pre_hook(side.pre_kw("child"), with_kwargs=True)
        return side.net(side.input(X), scale=3.0)

    run_both(pair, scenario)
    log = pair[0].log
    assert log[1][4] == {"scale": 3.0}
    assert log[2][4] == {}  # the pre-hook after it sees the kwargs it returned
    np.testing.assert_array_equal(log[2][3][0], 3 * X)


def test_global_forward_hook_with_kwargs(pair):
    """Counterpart of test_module_global_hooks_with_kwargs: a global with_kwargs forward hook
    gets each module's kwargs (the root's as its pre-hook left them) and may replace outputs."""

    def scenario(side):
        def strip(args, kwargs):
            return args, {key: v for key, v in kwargs.items() if key != "unused"}

        side.net.register_forward_pre_hook(side.pre_kw("strip", strip), with_kwargs=True)
        side.register_global(side.fwd_kw("global", lambda out: out + 1), with_kwargs=True)
        return side.net(side.input(X), unused=True)

    run_both(pair, scenario)
    assert [entry[4] for entry in pair[0].log] == [{"unused": True}] + [{}] * 9


def test_keyword_arguments_reach_forward_without_a_hook_to_take_them(pair):
    """Unknown keyword arguments reach forward, which refuses them (TypeError, as torch); the
    always_call hooks still run."""

    def scenario(side):
        side.net.register_forward_hook(side.fwd("always"), always_call=True)
        try:
            side.net(side.input(X), scale=3.0)
        except TypeError:
            side.note("TypeError")

    run_both(pair, scenario)
    assert pair[0].log[-1] == ("TypeError",)


@pytest.mark.parametrize("bad", [(1, 2, 3), "not a tuple", [(), {}], ((),)])
def test_pre_hook_with_kwargs_must_return_none_or_args_and_kwargs(pair, bad):
    """Anything else raises torch's RuntimeError, word for word; always_call hooks run."""

    def scenario(side):
        side.net.register_forward_pre_hook(lambda m, a, k: bad, with_kwargs=True)
        side.net.register_forward_hook(side.fwd("always"), always_call=True)
        side.net(side.input(X))

    ours, theirs = run_both(pair, scenario)
    assert type(ours.error) is RuntimeError and type(theirs.error) is RuntimeError
    assert str(ours.error) == str(theirs.error)
    assert str(ours.error).startswith("forward pre-hook must return None or a tuple")
    assert [entry[4] for entry in pair[0].log] == [None]  # forward never ran


def test_forward_hook_with_kwargs_sees_the_out_argument(gen, pair):
    """layerc's forward takes `out=`; a with_kwargs pre-hook can supply it and a with_kwargs
    forward hook sees it (the values checked against torch)."""
    net = pair[0].net
    buffer = np.empty((3, 3), np.float32)
    seen = []
    net.register_forward_pre_hook(lambda m, args, kwargs: (args, {"out": buffer}), with_kwargs=True)
    net.register_forward_hook(
        lambda m, args, kwargs, output: seen.append((kwargs["out"], output)), with_kwargs=True
    )
    result = net(X)
    assert result is buffer and seen[0][0] is buffer and seen[0][1] is buffer
    expected = pair[1].net(torch.from_numpy(X))
    torch.testing.assert_close(torch.from_numpy(buffer), expected.detach(), **F32)


class Offset:
    """A hook that is a bound method, as in torch's test (KwargModel.internal_forward_hook)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def add(self, module, args, kwargs, output):
        return output + self.value


def test_bound_method_as_forward_hook_with_kwargs(pair):
    """Counterpart of test_kwarg_hooks, part 3."""

    def scenario(side):
        side.net.register_forward_hook(Offset(0.5).add, with_kwargs=True)
        return side.net(side.input(X))

    ours, _ = run_both(pair, scenario)
    assert ours.value.min() >= 0.5  # softmax output, moved up


def test_removing_with_kwargs_hooks_clears_their_flags(pair):
    """Counterpart of test_remove_kwarg_hooks: after remove() the hook is gone from every
    registry, and the output goes back step by step."""

    def scenario(side):
        net = side.net
        fwd = net.register_forward_hook(side.fwd_kw("fwd", lambda o: o * 2), with_kwargs=True)
        pre = net.register_forward_pre_hook(
            side.pre_kw("pre", lambda a, k: ((a[0] + 1,), k)), with_kwargs=True
        )
        always = net.register_forward_hook(side.fwd("always"), always_call=True)
        outputs = [net(side.input(X))]
        fwd.remove()
        assert fwd.id not in net._forward_hooks_with_kwargs and fwd.id not in net._forward_hooks
        outputs.append(net(side.input(X)))
        pre.remove()
        assert pre.id not in net._forward_pre_hooks_with_kwargs
        outputs.append(net(side.input(X)))
        always.remove()
        assert always.id not in net._forward_hooks_always_called
        outputs.append(net(side.input(X)))
        return outputs

    run_both(pair, scenario)
    assert tags(pair[0]) == ["pre", "fwd", "always", "pre", "always", "always"]


# ---------------------------------------------------------------------------- always_call


def test_always_call_hooks_on_exceptions(pair):
    """Counterpart of test_always_called_forward_hooks: always_call hooks run when forward raises
    (an input of the wrong width), when a pre-hook raises and when another always_call hook
    raises; the original exception propagates, a failing always_call hook only warns, and no
    hook runs twice."""

    def scenario(side):
        net = side.net

        def enter(module, args):
            side.note("enter")

        def enter_and_fail(module, args):
            side.note("enter")
            raise RuntimeError("failing in setup")

        def leave(module, args, output):
            side.note("leave", output is None)

        def leave_and_fail(module, args, output):
            side.note("leave")
            raise RuntimeError("failing in teardown")

        def throw(module, args, output):
            raise RuntimeError("failing in throw")

        pre = net.register_forward_pre_hook(enter)
        post = net.register_forward_hook(leave, always_call=True)
        assert len(net._forward_hooks_always_called) == 1
        raised(side, lambda: net(side.input(X_BAD)))  # forward raises: leave sees no output
        raised(side, lambda: net(side.input(X)))  # no error: leave runs once, not twice
        pre.remove()
        net.register_forward_pre_hook(enter_and_fail)
        raised(side, lambda: net(side.input(X)))  # a pre-hook raises
        post_2 = net.register_forward_hook(throw, prepend=True, always_call=True)
        raised(side, lambda: net(side.input(X)))  # the first error wins; the second warns
        post.remove()
        post_2.remove()
        side.note("always-called left", len(net._forward_hooks_always_called))
        post_3 = net.register_forward_hook(leave_and_fail, always_call=True)
        raised(side, lambda: net(side.input(X)))  # it fails while running: not run again
        post_3.remove()
        everywhere = side.register_global(leave, always_call=True)
        raised(side, lambda: net(side.input(X)))  # a global always_call hook runs too
        everywhere.remove()
        raised(side, lambda: net(side.input(X)))  # and is gone after remove()

    ours, _ = run_both(pair, scenario)
    log = pair[0].log
    assert log[:5] == [
        ("enter",),
        ("leave", True),
        ("error", "forward"),
        ("enter",),
        ("leave", False),
    ]
    assert log.count(("error", "RuntimeError", "failing in setup")) == 5
    assert ("always-called left", 0) in log
    assert ours.warnings == [
        "module forward hook with ``always_call=True`` raised an exception that was silenced "
        "as another error was raised in forward: failing in throw",
        "module forward hook with ``always_call=True`` raised an exception that was silenced "
        "as another error was raised in forward: failing in teardown",
    ]


def test_always_call_hooks_of_nested_modules_when_a_layer_raises(pair):
    """The first Linear refuses the input: its own always_call hooks run, then the parent's; the
    hooks that are not always_call do not; each sees the inputs after pre-hooks."""

    def scenario(side):
        for module in (side.net, side.net[0], side.net.enc):
            path = side.where(module)
            module.register_forward_pre_hook(side.pre(path))
            module.register_forward_hook(side.fwd(path + " always"), always_call=True)
            module.register_forward_hook(side.fwd(path + " plain"))
        side.net.register_forward_pre_hook(side.pre("slice", lambda args: args[0][:, :5]))
        raised(side, lambda: side.net(side.input(np.ones((2, 7), np.float32))))

    run_both(pair, scenario)
    assert [entry[2] for entry in pair[0].log[:-1]] == ["", "slice", "0", "0 always", " always"]


def test_always_call_hook_runs_once_when_a_later_hook_raises(pair):
    """An always_call hook that already ran is not run again when a later hook raises; one that
    had not run yet runs with the output as replaced so far."""

    def scenario(side):
        net = side.net

        def fail(module, args, output):
            raise RuntimeError("failing in a forward hook")

        net.register_forward_hook(side.fwd("first, always", lambda out: out * 2), always_call=True)
        net.register_forward_hook(fail)
        net.register_forward_hook(side.fwd("after, always"), always_call=True)
        net.register_forward_hook(side.fwd("after, plain"))
        raised(side, lambda: net(side.input(X)))

    run_both(pair, scenario)
    assert tags(pair[0])[:2] == ["first, always", "after, always"]
    first, after = pair[0].log[0], pair[0].log[1]
    np.testing.assert_array_equal(after[4], first[4] * 2)


def test_always_call_with_kwargs_hooks_on_exceptions(pair):
    """On an exception a module's with_kwargs always_call hook gets (module, args, kwargs,
    result), while a global one gets (module, args, result) only, as torch calls them."""

    def scenario(side):
        def counted(name):
            def hook(*arguments):
                side.note(name, len(arguments))

            return hook

        side.net.register_forward_hook(counted("local"), with_kwargs=True, always_call=True)
        side.register_global(counted("global"), with_kwargs=True, always_call=True)
        raised(side, lambda: side.net(side.input(X_BAD)))
        side.net(side.input(X))

    run_both(pair, scenario)
    assert pair[0].log[:3] == [("global", 3), ("global", 3), ("local", 4)]


# ---------------------------------------------------------------------------- removal while running


def test_hooks_removing_themselves_while_running(pair):
    """Counterparts of test_module_forward_preforward_hook_removable and
    test_module_forward_forward_hook_removable."""

    def scenario(side):
        handles = {}

        def remove(name):
            def hook(module, *rest):
                side.note("ran", name)
                handles[name].remove()
                return rest[0] if len(rest) == 1 else rest[-1]

            return hook

        net = side.net.enc
        handles["pre 1"] = net.register_forward_pre_hook(remove("pre 1"))
        handles["pre 2"] = net.register_forward_pre_hook(remove("pre 2"))
        handles["fwd 1"] = net.register_forward_hook(remove("fwd 1"))
        handles["fwd 2"] = net.register_forward_hook(remove("fwd 2"))
        sizes = [len(handle.hooks_dict_ref()) for handle in handles.values()]
        outputs = [side.net(side.input(X)), side.net(side.input(X))]
        after = [
            (handle.id in handle.hooks_dict_ref(), len(handle.hooks_dict_ref()))
            for handle in handles.values()
        ]
        return sizes, after, outputs

    ours, _ = run_both(pair, scenario)
    assert ours.value[0] == [2, 2, 2, 2]
    assert ours.value[1] == [(False, 0)] * 4
    assert tags(pair[0]) == ["pre 1", "pre 2", "fwd 1", "fwd 2"]


def test_hooks_added_or_removed_by_a_running_hook(pair):
    """The hooks of a call are fixed when it starts: a hook removed by an earlier one still runs
    in that call, and a hook added during the call runs from the next call on."""

    def scenario(side):
        net = side.net
        later: dict[str, Any] = {}

        def first(module, args, output):
            side.note("first")
            if "victim" in later:
                later.pop("victim").remove()
            if "added" not in later:
                later["added"] = net.register_forward_hook(side.fwd("added"))

        net.register_forward_hook(first)
        later["victim"] = net.register_forward_hook(side.fwd("victim"))
        net(side.input(X))
        net(side.input(X))
        return net(side.input(X))

    run_both(pair, scenario)
    assert tags(pair[0]) == ["first", "victim", "first", "added", "first", "added"]


# ---------------------------------------------------------------------------- handles


def test_handle_ids_are_unique_across_modules_and_global_hooks(pair):
    net = pair[0].net
    handles = [
        net.register_forward_pre_hook(print),
        net.enc.register_forward_hook(print),
        layerc.register_module_forward_pre_hook(print),
        layerc.register_module_forward_hook(print),
        net.enc.fc.register_forward_pre_hook(print, prepend=True),
    ]
    ids = [handle.id for handle in handles]
    assert ids == sorted(set(ids))
    for handle in handles:
        handle.remove()


def test_remove_is_idempotent_and_touches_no_other_hook(pair):
    def scenario(side):
        keep = side.net.enc.register_forward_hook(side.fwd("keep"))
        drop = side.net.enc.register_forward_hook(side.fwd("drop"))
        drop.remove()
        drop.remove()
        side.net(side.input(X))
        keep.remove()
        keep.remove()
        drop.remove()
        return side.net(side.input(X))

    run_both(pair, scenario)
    assert tags(pair[0]) == ["keep"]


def test_handle_as_context_manager(pair):
    """`with handle:` removes the hook at the end of the block, also when the block raises."""

    def scenario(side):
        with side.net.enc.fc.register_forward_hook(side.fwd("inside")) as handle:
            side.net(side.input(X))
        side.note("removed", handle.id in side.net.enc.fc._forward_hooks)
        try:
            with side.net.register_forward_pre_hook(side.pre("raising block")):
                side.net(side.input(X))
                raise KeyError("leaving the block")
        except KeyError:
            pass
        with side.register_global(side.fwd("global")):
            side.net.proj(side.input(np.ones((1, 5), np.float32)))
        return side.net(side.input(X))

    run_both(pair, scenario)
    assert tags(pair[0]) == ["inside", False, "raising block", "global"]


@pytest.mark.parametrize("side_index", [0, 1], ids=["layerc", "torch"])
def test_a_handle_does_not_keep_its_module_alive(pair, side_index):
    """Counterpart of test_no_extra_ref_to_module, for forward hook handles: with the garbage
    collector off, dropping the last reference frees the module at once; a module whose hook
    refers back to it is collected; remove() is then a no-op."""
    net = pair[side_index].net
    cyclic = copy.deepcopy(net)
    pair[side_index].paths.clear()
    pair[side_index].net = None
    handles = [
        net.register_forward_hook(_record_call),
        net.enc.register_forward_pre_hook(_record_pre),
        net.register_forward_hook(_record_call, with_kwargs=True, always_call=True),
        # this hook keeps its module alive, so only the handle's weak references let it go
        cyclic.register_forward_hook(lambda module, args, output, keep=cyclic: None),
        cyclic.enc.register_forward_pre_hook(lambda module, args, keep=cyclic: None),
    ]
    refs = [weakref.ref(net), weakref.ref(net.enc)]
    gc.disable()
    try:
        del net
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()
    refs = [weakref.ref(cyclic), weakref.ref(cyclic.enc)]
    del cyclic
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    for handle in handles:
        handle.remove()
        handle.remove()


CALLS: list[tuple] = []


def _record_call(module, args, *rest):
    """A top-level (picklable) forward hook: logs the input and output shapes."""
    CALLS.append(("fwd", len(rest), tuple(args[0].shape), tuple(rest[-1].shape)))


def _record_pre(module, args):
    CALLS.append(("pre", tuple(args[0].shape)))


def _tagged(tag, module, args, output):
    """With functools.partial, a picklable forward hook that logs a tag and the output."""
    CALLS.append((tag, snap(output)))


def _halve_input(module, args, kwargs):
    return (args[0] / 2,), kwargs


def test_handle_pickled_with_its_module_still_removes_the_hook(pair):
    """torch pickles a handle with the hook registry it points to; so does layerc."""

    def scenario(side):
        handle = side.net.enc.register_forward_hook(partial(_tagged, "kept"))
        net, restored = pickle.loads(pickle.dumps((side.net, handle)))
        CALLS.clear()
        net(side.input(X))
        restored.remove()
        net(side.input(X))
        side.net(side.input(X))  # the original module keeps its own hook
        return [entry[0] for entry in CALLS], restored.id == handle.id

    ours, _ = run_both(pair, scenario)
    assert ours.value == (["kept", "kept"], True)


# ---------------------------------------------------------------------------- forward and calls


def test_direct_forward_runs_only_the_hooks_of_children(pair):
    """`forward` skips the module's own hooks; its children are called, so theirs run (torch's
    Sequential.forward calls its children the same way)."""

    def scenario(side):
        net = side.net
        for module in (net, net.enc, net.enc.fc, net.proj):
            module.register_forward_pre_hook(side.pre(side.where(module)))
            module.register_forward_hook(side.fwd(side.where(module)))
        outputs = [net.forward(side.input(X))]
        side.note("--")
        outputs.append(net.enc.forward(side.input(np.ones((2, 6), np.float32))))
        side.note("--")
        outputs.append(net.proj.forward(side.input(np.ones((2, 5), np.float32))))
        return outputs

    run_both(pair, scenario)
    order = [entry[2] if len(entry) > 1 else "--" for entry in pair[0].log]
    assert order == [
        "enc",
        "enc.fc",
        "enc.fc",
        "enc",
        "proj",
        "proj",
        "--",
        "enc.fc",
        "enc.fc",
        "--",
    ]


def test_hooks_added_after_fast_calls_fire_and_removal_restores_the_output(pair):
    """Calls without hooks take layerc's fused path; a hook registered on a nested layer, or a
    global one, turns it off at once and removing them turns it back on."""

    def scenario(side):
        net = side.net
        outputs = [net(side.input(X))]
        handle = net.enc[1].register_forward_hook(side.fwd("tanh", lambda out: out * 0))
        outputs.append(net(side.input(X)))
        handle.remove()
        outputs.append(net(side.input(X)))
        with side.register_global_pre(side.pre("global")):
            outputs.append(net.enc(side.input(np.ones((1, 6), np.float32))))
        outputs.append(net(side.input(X)))
        outputs.append(net(side.input(X[0])))  # one sample, no batch axis
        return outputs

    ours, _ = run_both(pair, scenario)
    np.testing.assert_array_equal(ours.value[0], ours.value[2])
    assert tags(pair[0]) == ["tanh", "global", "global", "global"]


def test_outputs_match_for_every_input_shape(pair):
    def scenario(side):
        rng = np.random.default_rng(1)
        shapes = [(4,), (1, 4), (5, 4), (2, 3, 4), (0, 4)]
        return [side.net(side.input(rng.standard_normal(s).astype(np.float32))) for s in shapes]

    run_both(pair, scenario)


# ---------------------------------------------------------------------------- state_dict


def test_state_dict_keys_order_and_values_match_torch(pair):
    net, reference = pair[0].net, pair[1].net
    ours, theirs = net.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert list(ours) == ["0.weight", "0.bias", "enc.fc.weight", "enc.fc.bias", "proj.weight"]
    assert_same(ours, to_numpy_state(theirs), "state_dict")
    assert list(net.state_dict(prefix="model.")) == list(reference.state_dict(prefix="model."))
    assert list(net.enc.state_dict()) == list(reference.enc.state_dict())


def test_state_dict_values_share_memory_with_the_parameters(pair):
    """As torch's state_dict tensors share storage: changing one in place changes the model."""

    def scenario(side):
        state = side.net.state_dict()
        state["enc.fc.bias"][:] = 1.5 if not side.is_torch else torch.tensor(1.5)
        return side.net(side.input(X))

    with torch.no_grad():
        run_both(pair, scenario)


def test_state_dict_round_trips_both_ways(gen):
    """torch -> layerc (torch's own init, tensors passed as they are), torch changed -> layerc,
    layerc -> a fresh torch model; outputs compared each time."""
    torch.manual_seed(0)
    reference = torch_net()
    net = gen.Net()
    assert repr(net.load_state_dict(reference.state_dict())) == "<All keys matched successfully>"
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal(shape).astype(np.float32) for shape in [(4,), (7, 4), (2, 2, 4)]]

    def check(torch_model):
        for x in inputs:
            expected = torch_model(torch.from_numpy(x)).detach().numpy()
            np.testing.assert_allclose(net(x), expected, **F32)

    check(reference)
    with torch.no_grad():
        for param in reference.parameters():
            param.mul_(-1.5).add_(0.25)
    net.load_state_dict({key: value for key, value in reference.state_dict().items()})
    check(reference)
    assert_same(net.state_dict(), to_numpy_state(reference.state_dict()), "after load")

    fresh = torch_net()
    fresh.load_state_dict(to_torch(net.state_dict()))
    check(fresh)


def test_loading_float64_values_rounds_as_torch_does(gen):
    """Values of another dtype are converted on copy, in both."""
    rng = np.random.default_rng(3)
    state = {key: rng.standard_normal(value.shape) for key, value in gen.Net().state_dict().items()}
    net = gen.Net()
    reference = torch_net()
    net.load_state_dict(state)
    reference.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()})
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[key], value.numpy())
        assert net.state_dict()[key].dtype == np.float32


def _torch_words(message: str) -> str:
    """torch's error message with its shape and class spellings in layerc's."""
    message = re.sub(r"torch\.Size\(\[([^\]]*)\]\)", lambda m: _tuple_text(m.group(1)), message)
    return message.replace("for Sequential:", "for Net:")


def _tuple_text(inside: str) -> str:
    parts = [p.strip() for p in inside.split(",") if p.strip()]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _drop(key):
    def change(state):
        del state[key]

    return change


def _add(key, shape):
    def change(state):
        state[key] = np.zeros(shape, np.float32)

    return change


def _both(*changes):
    def change(state):
        for one in changes:
            one(state)

    return change


LOAD_CASES = {
    "complete": lambda state: None,
    "missing": _drop("enc.fc.bias"),
    "two missing": _both(_drop("0.weight"), _drop("proj.weight")),
    "unexpected": _add("bogus", (2,)),
    # torch lists unexpected keys module by module, not in the order of the dict
    "unexpected, nested first": _both(_add("enc.fc.extra", (1,)), _add("bogus", (1,))),
    "bias of a Linear without bias": _add("proj.bias", (3,)),
    "unknown child": _both(_add("enc.nope.weight", (1,)), _add("nope.weight", (1,))),
    "missing and unexpected": _both(_drop("0.bias"), _add("enc.1.weight", (1,))),
    "size mismatch": _add("enc.fc.weight", (5, 7)),
    "size mismatch, rank": _add("0.bias", (6, 1)),
    "size mismatch and missing": _both(_add("proj.weight", (3, 4)), _drop("enc.fc.weight")),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non-strict"])
def test_load_state_dict_reports_as_torch(gen, case, strict):
    """The same state_dict into both: the same IncompatibleKeys (and repr), or the same
    RuntimeError message (shapes written as tuples instead of torch.Size); when loading fails,
    no parameter of the generated module has changed."""
    net = gen.Net()
    reference = torch_net()
    reference.load_state_dict(to_torch(net.state_dict()))  # missing keys keep these
    rng = np.random.default_rng(4)
    state = {
        key: rng.standard_normal(v.shape).astype(np.float32) for key, v in net.state_dict().items()
    }
    LOAD_CASES[case](state)
    before = {key: value.copy() for key, value in net.state_dict().items()}
    try:
        expected = reference.load_state_dict(to_torch(state), strict=strict)
    except RuntimeError as exc:
        with pytest.raises(RuntimeError) as info:
            net.load_state_dict(state, strict=strict)
        assert str(info.value) == _torch_words(str(exc))
        assert_same(net.state_dict(), before, "unchanged after a failed load")
        return
    result = net.load_state_dict(state, strict=strict)
    assert result == expected and repr(result) == repr(expected)
    assert result.missing_keys == expected.missing_keys
    assert_same(net.state_dict(), to_numpy_state(reference.state_dict()), "loaded")


def test_a_failed_load_changes_nothing(gen):
    """Every key, shape and value is checked before anything is copied (torch copies as it
    goes): a bad last entry, or a value that is not numeric, leaves every parameter as it was."""
    net = gen.Net()
    before = {key: value.copy() for key, value in net.state_dict().items()}
    output = net(X)
    good = {key: value + 1 for key, value in before.items()}
    bad_shape = dict(good, **{"proj.weight": np.zeros((3, 6), np.float32)})
    not_numbers = dict(good, **{"enc.fc.bias": np.array(["a"] * 5)})
    not_an_array = dict(good, **{"0.bias": object()})
    for state in (bad_shape, not_numbers, not_an_array):
        with pytest.raises(RuntimeError, match="Error\\(s\\) in loading state_dict for Net"):
            net.load_state_dict(state)
        assert_same(net.state_dict(), before, "unchanged")
        np.testing.assert_array_equal(net(X), output)


def test_load_state_dict_wants_a_mapping(gen):
    reference = torch_net()
    for value in ([("0.weight", np.zeros((6, 4)))], None):
        with pytest.raises(TypeError) as theirs:
            reference.load_state_dict(value)
        with pytest.raises(TypeError) as ours:
            gen.Net().load_state_dict(value)
        assert str(ours.value) == str(theirs.value)


def test_load_state_dict_assign_binds_the_given_arrays(gen):
    """assign=True keeps the state_dict's own arrays (when they already have the module's dtype
    and layout), as torch keeps its tensors."""
    net = gen.Net()
    state = {key: value * 2 for key, value in net.state_dict().items()}
    net.load_state_dict(state, assign=True)
    assert all(net.state_dict()[key] is value for key, value in state.items())
    reference = torch_net()
    reference.load_state_dict(to_torch(state), assign=True)
    np.testing.assert_allclose(net(X), reference(torch.from_numpy(X)).detach().numpy(), **F32)


# ---------------------------------------------------------------------------- repr and traversal


def _torch_class_names(text: str) -> str:
    return text.replace("Net(", "Sequential(").replace("Block(", "Sequential(")


def test_repr_has_torchs_form(pair):
    net, reference = pair[0].net, pair[1].net
    assert _torch_class_names(repr(net)) == repr(reference)
    for (path, ours), (_, theirs) in zip(
        net.named_modules(), reference.named_modules(), strict=True
    ):
        assert _torch_class_names(repr(ours)) == repr(theirs), path
        assert ours.extra_repr() == theirs.extra_repr(), path


def test_traversal_names_and_order_match_torch(pair):
    net, reference = pair[0].net, pair[1].net

    def names(pairs):
        return [name for name, _ in pairs]

    assert names(net.named_modules()) == names(reference.named_modules())
    assert names(net.named_modules(prefix="m", remove_duplicate=False)) == names(
        reference.named_modules(prefix="m", remove_duplicate=False)
    )
    assert names(net.named_children()) == names(reference.named_children())
    assert names(net.enc.named_children()) == names(reference.enc.named_children())
    assert len(list(net.children())) == len(list(reference.children()))
    assert [_torch_class_names(m._get_name() + "(") for m in net.modules()] == [
        m._get_name() + "(" for m in reference.modules()
    ]
    assert list(net.children()) == [m for _, m in net.named_children()]
    for kwargs in ({}, {"prefix": "p"}, {"recurse": False}, {"remove_duplicate": False}):
        assert names(net.named_parameters(**kwargs)) == names(reference.named_parameters(**kwargs))
    assert names(net.enc.fc.named_parameters(recurse=False)) == ["weight", "bias"]
    assert_same(
        [p for p in net.parameters()],
        [p.detach().numpy() for p in reference.parameters()],
        "parameters",
    )
    assert net.get_submodule("enc.fc") is net.enc.fc
    assert net.get_parameter("enc.fc.bias") is net.enc.fc.bias


# ---------------------------------------------------------------------------- pickling


def test_pickling_without_hooks_keeps_the_weights(gen):
    torch.manual_seed(1)
    reference = torch_net()
    net = gen.Net()
    net.load_state_dict(reference.state_dict())  # weights that differ from the compiled ones
    copy_ = pickle.loads(pickle.dumps(net))
    assert_same(copy_.state_dict(), to_numpy_state(reference.state_dict()), "unpickled")
    np.testing.assert_allclose(copy_(X), reference(torch.from_numpy(X)).detach().numpy(), **F32)
    net.enc.fc.bias[:] = 0  # the copy has its own arrays
    assert_same(copy_.state_dict(), to_numpy_state(reference.state_dict()), "independent")
    assert _torch_class_names(repr(copy_)) == repr(reference)


def test_pickling_with_hooks_keeps_them_in_order(pair):
    """Counterpart of test_pickled_hook, for forward hooks: top-level hooks (with prepend,
    with_kwargs and always_call) survive pickle and copy.deepcopy and fire as before; global hooks
    belong to no module and are not pickled."""

    def scenario(side):
        net = side.net
        net.register_forward_hook(partial(_tagged, "root"))
        net.register_forward_hook(partial(_tagged, "root first"), prepend=True)
        net.enc.fc.register_forward_pre_hook(_record_pre)
        net.enc.register_forward_pre_hook(_halve_input, with_kwargs=True)
        net.proj.register_forward_hook(_record_call, with_kwargs=True, always_call=True)
        side.register_global(partial(_tagged, "global"))
        CALLS.clear()
        outputs = [net(side.input(X))]
        before = list(CALLS)
        restored = pickle.loads(pickle.dumps(net))
        duplicate = copy.deepcopy(net)
        for model in (restored, duplicate):
            CALLS.clear()
            outputs.append(model(side.input(X)))
            assert_same(CALLS, before, "hooks after unpickling")
        return outputs, before

    ours, _ = run_both(pair, scenario)
    order = [entry[0] for entry in ours.value[1]]
    assert order.count("global") == 9 and "root first" in order and order[-1] == "root"


def test_unpickled_hooks_do_not_collide_with_new_ones(gen):
    """Hook ids restored from a pickle stay unique: a hook registered afterwards is added, not
    written over an unpickled one."""
    net = gen.Net()
    for _ in range(3):
        net.register_forward_hook(partial(_tagged, "old"))
    data = pickle.dumps(net)
    saved = layerc_hooks.state.next_id
    # as in a fresh process that has handed out fewer ids so far
    layerc_hooks.state.next_id = min(net._forward_hooks)
    try:
        restored = pickle.loads(data)
        restored.register_forward_hook(partial(_tagged, "new"))
    finally:
        layerc_hooks.state.next_id = max(saved, layerc_hooks.state.next_id)
    CALLS.clear()
    restored(X)
    assert [entry[0] for entry in CALLS] == ["old", "old", "old", "new"]


# ---------------------------------------------------------------------------- njit


def test_njit_inside_a_user_simulation_loop(gen):
    """x <- x + dt f(x) for 200 steps in the user's own @numba.njit function, calling the
    compiled model; the trajectory matches the same loop over the torch model (float64)."""
    field_net = gen.Field()
    reference = torch_field()
    reference.load_state_dict(to_torch(field_net.state_dict()))
    f = field_net.njit()

    @numba.njit
    def simulate(x0, steps, dt):
        trajectory = np.empty((steps + 1, x0.shape[0]))
        x = x0.copy()
        trajectory[0] = x
        for t in range(steps):
            x = x + dt * f(x)
            trajectory[t + 1] = x
        return trajectory

    x0 = np.array([0.5, -1.0, 2.0])
    ours = simulate(x0, 200, 0.05)
    x = torch.from_numpy(x0)
    expected = [x]
    with torch.no_grad():
        for _ in range(200):
            x = x + 0.05 * reference(x)
            expected.append(x)
    torch.testing.assert_close(torch.from_numpy(ours), torch.stack(expected), **F64)
    assert np.abs(ours[-1] - ours[0]).max() > 0.1  # the state really moved


def test_njit_batches_and_weight_snapshot(gen):
    """A float32 model's njit function on batches inside a numba loop; it keeps the weights it
    was made with when the module's weights change afterwards."""
    net = gen.Net()
    old = torch_net()
    old.load_state_dict(to_torch(net.state_dict()))
    f = net.njit()

    @numba.njit
    def scaled_runs(batch, runs):
        outputs = np.empty((runs, batch.shape[0], 3), dtype=np.float32)
        for r in range(runs):
            outputs[r] = f(batch * np.float32(r + 1))
        return outputs

    ours = scaled_runs(X, 4)
    with torch.no_grad():
        expected = torch.stack([old(torch.from_numpy(X) * (r + 1)) for r in range(4)])
    torch.testing.assert_close(torch.from_numpy(ours), expected, **F32)

    torch.manual_seed(5)
    new = torch_net()
    net.load_state_dict(new.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(f(X)), old(torch.from_numpy(X)), **F32)
        torch.testing.assert_close(torch.from_numpy(net(X)), new(torch.from_numpy(X)), **F32)
        torch.testing.assert_close(
            torch.from_numpy(net.njit()(X[0])), new(torch.from_numpy(X[0])), **F32
        )
