"""PyTorch's module tree, recovered from an ONNX graph for `layerc import`.

torch.onnx.export keeps where each node came from: the TorchScript exporter in the node's name
(`/blocks/blocks.0/norm/LayerNormalization`), the dynamo exporter in the node's metadata
(`pkg.torch.onnx.name_scopes`, with the modules' classes in `pkg.torch.onnx.class_hierarchy`).
`node_scope` reads either as a module path (`blocks.0.norm`); `build_tree` groups the imported
operations by it into one model per PyTorch module that has submodules, so that the imported
model nests as the original did and its state_dict keys are the original's
(`blocks.0.norm.weight`). A module whose operations cannot be one nested model (one that
returns several values, or whose operations are interleaved with its parent's) is dissolved
into its parent, its members named `blocks_0_norm`; positions are kept where the exporter
dropped a layer that computes nothing in eval mode (a Dropout in an nn.Sequential: an Identity
takes its place). Names from the file are only used when they are plain identifiers or numbers.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

# torch.nn's containers: their class names say nothing a model name should
_CONTAINERS = ("Sequential", "ModuleList", "ModuleDict")
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}|[0-9]{1,6}")
_CALL_SUFFIX = re.compile(r"(.+)_([0-9]+)")


@dataclass(frozen=True)
class Scope:
    """Where a node came from: the module path, and the classes of the modules along it that
    the exporter recorded, by path (a container that is never called, an nn.ModuleList, has
    none)."""

    path: tuple[str, ...]
    classes: tuple[tuple[tuple[str, ...], str], ...] = ()

    def cls(self, depth: int) -> str | None:
        """The class of the module `path[:depth]` (depth 0: the model itself), if recorded."""
        return dict(self.classes).get(self.path[:depth])


def node_scope(node) -> Scope | None:  # type: ignore[no-untyped-def]
    """The module a node was exported from, or None when its name and metadata do not say."""
    meta = {p.key: p.value for p in getattr(node, "metadata_props", ())}
    scopes = _string_list(meta.get("pkg.torch.onnx.name_scopes"))
    if scopes is not None and len(scopes) >= 2:
        # one scope per module called on the way down to the node (the model's is ''), each
        # its full path, then the operator's; and one class for each
        module = scopes[-2]
        path = _path(module.split(".")) if module else ()
        if path is None:
            return None
        classes = _string_list(meta.get("pkg.torch.onnx.class_hierarchy")) or []
        by_path = []
        if len(classes) == len(scopes):
            for scope, cls in zip(scopes[:-1], classes[:-1], strict=True):
                where = _path(scope.split(".")) if scope else ()
                if where is not None and where == path[: len(where)]:
                    by_path.append((where, cls))
        return Scope(path, tuple(by_path))
    name = str(node.name)
    if not name.startswith("/") or name.count("/") < 2:
        return None
    parts: list[str] = []
    for component in name.split("/")[1:-1]:
        # TorchScript names a module inside a container by its path from the container
        # (`/blocks/blocks.0/norm`); inside anything else by its own name (`/encoder/layers.0`)
        here = ".".join(parts)
        if parts and component.startswith(here + "."):
            component = component[len(here) + 1 :]
        parts.extend(component.split("."))
    path = _path(parts)
    return None if path is None else Scope(path)


def _string_list(text: str | None) -> list[str] | None:
    if not text or len(text) > 10_000:
        return None
    try:
        value = ast.literal_eval(text)
    except Exception:  # anything but a literal (a set of lists is a TypeError): ignored
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return value


def _path(parts: list[str]) -> tuple[str, ...] | None:
    """A module path, if every part is a plain identifier (not `__...`, which layerc keeps for
    itself) or a number; None otherwise, and the node is taken to have none."""
    if not parts or len(parts) > 16:
        return None
    if not all(_SEGMENT.fullmatch(p) and not p.startswith("__") for p in parts):
        return None
    return tuple(parts)


def without_call_suffix(path: tuple[str, ...]) -> tuple[str, ...] | None:
    """`twice_1` -> `twice`: TorchScript's name for the second call of a module."""
    found = _CALL_SUFFIX.fullmatch(path[-1]) if path else None
    return None if found is None else (*path[:-1], found.group(1))


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Call:
    """`out = layers[layer](*sources)`: a layer (or, in a tree, a nested model) called."""

    layer: int
    sources: tuple[str, ...]
    out: str
    scope: Scope | None = None

    @property
    def reads(self) -> tuple[str, ...]:
        return self.sources


@dataclass(frozen=True)
class Arith:
    """`out = a op b` (op `+ - *`) or `out = -a` (op "neg"); an operand is a value's name or a
    number."""

    op: str
    operands: tuple[str | float, ...]
    out: str
    scope: Scope | None = None

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(o for o in self.operands if isinstance(o, str))


@dataclass(frozen=True)
class Cat:
    sources: tuple[str, ...]
    out: str
    scope: Scope | None = None

    @property
    def reads(self) -> tuple[str, ...]:
        return self.sources


Op = Call | Arith | Cat


# --------------------------------------------------------------------------- the tree


@dataclass
class Model:
    """One model of the tree: its module path, the values it takes and returns, its members
    (a layer of the import by index, or a nested model by its path) with their names, and its
    operations in an order that computes each value before it is read (a nested model's
    operations replaced by one `Call` of it, `layer` indexing `members`)."""

    path: tuple[str, ...]
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    members: list[int | tuple[str, ...]] = field(default_factory=list)
    names: list[str | None] = field(default_factory=list)  # None: the kind and a number
    ops: list[Op] = field(default_factory=list)
    cls: str | None = None
    positional: bool = False  # a pipeline of layers named by position (gaps: Identity)

    def is_chain(self) -> bool:
        """Whether the model is one chain of distinct members from its one input to its one
        output (a pipeline)."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            return False
        current, seen = self.inputs[0], set()
        for op in self.ops:
            if not isinstance(op, Call) or op.sources != (current,) or op.layer in seen:
                return False
            seen.add(op.layer)
            current = op.out
        return current == self.outputs[0]


def build_tree(
    ops: list[Op],
    layer_paths: list[tuple[str, ...] | None],
    inputs: list[str],
    outputs: list[str],
) -> list[Model]:
    """The models of the import, nested ones before the models that use them, the whole graph
    last. `layer_paths[i]` is the module path of layer i (None if unknown)."""
    homes = _homes(ops, layer_paths)
    while True:
        trees = _models(ops, homes, inputs, outputs)
        bad = next((m for m in trees if m.path and not _nestable(m, ops)), None)
        if bad is None:
            return _ordered(trees, ops, homes)
        homes = _dissolve(homes, bad.path)


# Where each operation lives: (the model's path, its name there or None). Layers are keyed by
# ("layer", index), other operations by ("op", position).
_Key = tuple[str, int]
_Home = tuple[tuple[str, ...], str | None]


def _homes(ops: list[Op], layer_paths: list[tuple[str, ...] | None]) -> dict[_Key, _Home]:
    arith_scopes = {
        op.scope.path for op in ops if not isinstance(op, Call) and op.scope is not None
    }
    called = sorted({op.layer for op in ops if isinstance(op, Call)})
    claims: dict[tuple[str, ...], int] = {}
    for i in called:
        path = layer_paths[i]
        if path:
            claims[path] = claims.get(path, 0) + 1
    prefixes = {p[:n] for p in claims for n in range(1, len(p))} | {
        p[:n] for p in arith_scopes for n in range(1, len(p) + 1)
    }
    homes: dict[_Key, _Home] = {}
    for i in called:
        path = layer_paths[i]
        if not path:
            homes[("layer", i)] = ((), None)
        elif claims[path] > 1 or path in prefixes:  # an operation inside module `path`
            homes[("layer", i)] = (path, None)
        else:
            homes[("layer", i)] = (path[:-1], path[-1])
    for position, op in enumerate(ops):
        if not isinstance(op, Call):
            homes[("op", position)] = (op.scope.path if op.scope is not None else (), None)
    return homes


def _key(position: int, op: Op) -> _Key:
    return ("layer", op.layer) if isinstance(op, Call) else ("op", position)


def _within(path: tuple[str, ...], model: tuple[str, ...]) -> bool:
    return path[: len(model)] == model


def _models(
    ops: list[Op], homes: dict[_Key, _Home], inputs: list[str], outputs: list[str]
) -> list[Model]:
    """Every model of the tree (the deepest first), with all the operations inside it (its own
    and its nested models', in the graph's order) and the values it takes and returns."""
    by_home: dict[tuple[str, ...], list[int]] = {}
    for position, op in enumerate(ops):
        by_home.setdefault(homes[_key(position, op)][0], []).append(position)
    paths = {()} | {home[:n] for home in by_home for n in range(1, len(home) + 1)}
    subtree: dict[tuple[str, ...], list[int]] = {path: [] for path in paths}
    for home, positions in by_home.items():
        for n in range(len(home) + 1):
            subtree[home[:n]].extend(positions)
    made = {op.out: position for position, op in enumerate(ops)}
    readers: dict[str, list[int]] = {}
    for position, op in enumerate(ops):
        for value in op.reads:
            readers.setdefault(value, []).append(position)
    returned = set(outputs)
    out = []
    for path in sorted(paths, key=lambda p: (-len(p), p)):
        inside = sorted(subtree[path])
        model = Model(path)
        if not path:
            model.inputs, model.outputs = list(inputs), list(outputs)
        else:
            members = set(inside)
            for position in inside:
                for value in ops[position].reads:
                    if made.get(value) not in members and value not in model.inputs:
                        model.inputs.append(value)
            model.outputs = [
                ops[p].out
                for p in inside
                if ops[p].out in returned
                or any(r not in members for r in readers.get(ops[p].out, ()))
            ]
        model.ops = [ops[p] for p in inside]  # all of them, for now; `_ordered` nests
        out.append(model)
    return out


def _nestable(model: Model, ops: list[Op]) -> bool:
    """Whether the operations of `model` can be one call of a nested model: one value out, at
    least one in, and none of the values it takes computed from one of its own (through
    operations outside it)."""
    if len(model.outputs) != 1 or not model.inputs:
        return False
    position = {id(op): i for i, op in enumerate(ops)}
    made = {op.out: i for i, op in enumerate(ops)}
    inside = {position[id(op)] for op in model.ops}
    first = min(inside)
    # The graph's nodes are in an order that computes each value before it is read, so only a
    # value made after the model's first operation can depend on it: walk back from those.
    todo = [made[v] for v in model.inputs if made.get(v, -1) > first]
    seen: set[int] = set()
    while todo:
        i = todo.pop()
        if i in inside:
            return False
        if i in seen:
            continue
        seen.add(i)
        todo.extend(made[v] for v in ops[i].reads if made.get(v, -1) > first)
    return True


def _dissolve(homes: dict[_Key, _Home], path: tuple[str, ...]) -> dict[_Key, _Home]:
    """`homes` with the model at `path` merged into its parent: `a.b` and its member `c` become
    the parent's `b_c`."""
    parent, last = path[:-1], path[-1]
    out: dict[_Key, _Home] = {}
    for key, (home, name) in homes.items():
        if not _within(home, path):
            out[key] = (home, name)
        elif len(home) > len(path):
            out[key] = ((*parent, f"{last}_{home[len(path)]}", *home[len(path) + 1 :]), name)
        else:
            out[key] = (parent, f"{last}_{name}" if name is not None else None)
    return out


def _ordered(trees: list[Model], ops: list[Op], homes: dict[_Key, _Home]) -> list[Model]:
    """Each model's own operations, a nested model's replaced by a call of it, in an order
    that computes every value before it is read; its members and their names."""
    by_path = {m.path: m for m in trees}
    for model in trees:
        units: list[tuple[int, Op]] = []  # (first position, operation) in the graph's order
        children: dict[tuple[str, ...], int] = {}
        for position, op in enumerate(ops):
            home, name = homes[_key(position, op)]
            if not _within(home, model.path):
                continue
            if home == model.path:
                if isinstance(op, Call):
                    member: int | tuple[str, ...] = op.layer
                    if member not in model.members:
                        model.members.append(member)
                        model.names.append(name)
                    op = Call(model.members.index(member), op.sources, op.out, op.scope)
                units.append((position, op))
                continue
            child = home[: len(model.path) + 1]
            if child in children:
                continue
            nested = by_path[child]
            children[child] = len(model.members)
            model.members.append(child)
            model.names.append(child[-1])
            units.append((position, Call(children[child], tuple(nested.inputs), nested.outputs[0])))
        model.cls = next(
            (
                op.scope.cls(len(model.path))
                for op in ops
                if op.scope is not None and _within(op.scope.path, model.path)
            ),
            None,
        )
        model.ops = _topological([op for _, op in units])
        model.positional = _positional(model)
    return trees


def _topological(ops: list[Op]) -> list[Op]:
    """`ops` in their order, but each after the operations that make what it reads."""
    made = {op.out: i for i, op in enumerate(ops)}
    done: set[int] = set()
    out: list[Op] = []
    for start in range(len(ops)):
        stack = [(start, False)]
        while stack:  # depth first, without recursion (a graph may be thousands deep)
            i, ready = stack.pop()
            if ready:
                out.append(ops[i])
                continue
            if i in done:
                continue
            done.add(i)
            stack.append((i, True))
            stack.extend((made[v], False) for v in reversed(ops[i].reads) if v in made)
    return out


def _positional(model: Model) -> bool:
    """Whether the model is a pipeline whose members torch named by position (an
    nn.Sequential), in increasing order."""
    if not model.is_chain():
        return False
    order = [model.names[op.layer] for op in model.ops if isinstance(op, Call)]
    if not order or not all(n is not None and n.isdigit() for n in order):
        return False
    numbers = [int(n) for n in order if n is not None]
    return numbers == sorted(set(numbers)) and numbers[-1] < 4096


def positions(model: Model) -> list[int | None]:
    """A positional pipeline's members in order of position: a member's index, or None where
    the exporter left out a layer that computes nothing (an Identity takes its place)."""
    by_position = {int(str(model.names[i])): i for i in range(len(model.members))}
    return [by_position.get(i) for i in range(max(by_position) + 1)]
