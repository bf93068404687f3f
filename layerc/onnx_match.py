"""The kinds' ONNX patterns (layerc.patterns, `Onnx.patterns` in layerc.kinds) found in a
graph's nodes, for `layerc import` (layerc.onnx_io).

Each pattern is tried at every node, from the last, the biggest patterns first; a match is a
set of nodes in which every value but the last is read only inside the set, and it is replaced by
one node of `PATTERN_DOMAIN` whose op_type is the kind, whose attributes are the numbers the
pattern bound (and `pattern`, its index in the kind's list, `tensors`, the names of the
tensors), and whose inputs are the layer's input and those tensors. Matching reads structure and
constants only, never names: products and sums in any order and grouping, a Div by a constant as
a product with its inverse, a Sub of a constant as a sum with its negation, constants equal
within float32 rounding, attributes equal to the pattern's or, left out, to their default.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from . import patterns as P
from .kinds import KINDS
from .onnx_read import quote as _q

# The domain of the nodes `fuse_patterns` makes: one node per layer that an exporter wrote as
# several, its op_type the layer's kind.
PATTERN_DOMAIN = "layerc.pattern"


@functools.cache
def _all_patterns() -> list[tuple[str, int, P.Term]]:
    """(kind, the index of the pattern in its `Onnx.patterns`, one variant of its term) for
    every kind's ONNX patterns, biggest first (a LayerNorm with its weight and bias before the
    same without them)."""
    found = [
        (kind.name, index, term)
        for kind in KINDS.values()
        if kind.onnx is not None
        for index, pattern in enumerate(kind.onnx.patterns)
        for term in P.variants(pattern.term)
    ]
    return sorted(found, key=lambda item: -item[2].size)


@dataclass
class _Match:
    """What a term matched so far: the input, the ARGs' numbers and TENSORs' constants, the
    nodes."""

    x: str | None = None
    bound: dict[str, object] = field(default_factory=dict)
    nodes: tuple[object, ...] = ()

    def but(self, **changes: object) -> _Match:
        new = _Match(self.x, dict(self.bound), self.nodes)
        for name, value in changes.items():
            setattr(new, name, value)
        return new


class _Matcher:
    """Finds the kinds' ONNX patterns (layerc.patterns) in a graph's nodes."""

    def __init__(self, nodes: list, graph) -> None:  # type: ignore[no-untyped-def]
        from onnx import numpy_helper

        self.nodes = nodes
        self.constants: dict[str, np.ndarray] = {}
        for tensor in graph.initializer:
            if math.prod(tensor.dims) <= 64:  # numbers and small shapes; big ones by name
                self.constants[tensor.name] = numpy_helper.to_array(tensor)
            else:
                self.constants[tensor.name] = np.empty(0)
        for node in nodes:
            if node.op_type == "Constant" and node.output and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.HasField("t"):
                        self.constants[node.output[0]] = numpy_helper.to_array(attr.t)
                    elif attr.name == "value_float":
                        self.constants[node.output[0]] = np.float32(attr.f)
            elif node.op_type == "Identity" and node.input and node.input[0] in self.constants:
                self.constants[node.output[0]] = self.constants[node.input[0]]  # a shared weight
        self.made = {out: node for node in nodes for out in node.output}
        self.readers: dict[str, list] = {}
        for node in nodes:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs = {value.name for value in graph.output}

    def scalar(self, value: str | float) -> float | None:
        if isinstance(value, float):
            return value
        array = self.constants.get(value)
        if (
            array is None
            or np.size(array) != 1
            or not np.issubdtype(np.asarray(array).dtype, np.number)
        ):
            return None
        return float(np.asarray(array).reshape(()))

    def once(self, value: str) -> bool:
        """Whether one node, and no graph output, reads `value`."""
        return len(self.readers.get(value, ())) == 1 and value not in self.outputs

    def node_of(self, value: str | float):  # type: ignore[no-untyped-def]
        if not isinstance(value, str) or value in self.constants:
            return None
        node = self.made.get(value)
        if node is None or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            return None
        return node

    def operands(self, value: str, op: str) -> tuple[list[str | float], list]:
        """The operands of the product (or sum) `value`, flattened through the products (sums)
        only it reads, a Div by a constant as a product with its inverse and a Sub of a
        constant as a sum with its negation; with the nodes passed through."""
        node = self.node_of(value)
        if node is None or len(node.input) != 2:
            return [value], []
        a, b = node.input
        if node.op_type == op:
            parts = [a, b]
        elif (op, node.op_type) in (("Mul", "Div"), ("Add", "Sub")) and self.scalar(b) is not None:
            c = self.scalar(b)
            assert c is not None
            if op == "Mul" and c == 0:
                return [value], []
            parts = [a, 1.0 / c if op == "Mul" else -c]
        else:
            return [value], []
        leaves: list[str | float] = []
        nodes = [node]
        for part in parts:
            if isinstance(part, str) and self.once(part):
                more, passed = self.operands(part, op)
                leaves.extend(more)
                nodes.extend(passed)
            else:
                leaves.append(part)
        return leaves, nodes

    def match(self, term: P.Term, value: str | float, m: _Match):  # type: ignore[no-untyped-def]
        """Every way `term` matches `value`, from what `m` matched so far."""
        if term.op == P.INPUT:
            if isinstance(value, str) and value not in self.constants and m.x in (None, value):
                yield m.but(x=value)
            return
        if term.op in (P.NUMBER, P.ARG):
            c = self.scalar(value)
            if c is None:
                return
            if term.op == P.NUMBER:
                if _close(c, term.value):
                    yield m
                return
            wanted = P.arg_value(term.transform, c)
            seen = m.bound.get(term.name)
            if seen is None:
                yield m.but(bound={**m.bound, term.name: wanted})
            elif isinstance(seen, float) and _close(seen, wanted):
                yield m
            return
        if term.op == P.TENSOR:
            if isinstance(value, str) and value in self.constants:
                if m.bound.get(term.name, value) == value:
                    yield m.but(bound={**m.bound, term.name: value})
            return
        node = self.node_of(value)
        if node is None or not isinstance(value, str):
            return
        if term.op in P.ASSOCIATIVE:
            leaves, passed = self.operands(value, term.op)
            tries = [(leaves, passed)]
            if node.op_type == term.op and len(leaves) != 2 and len(term.operands) == 2:
                tries.append((list(node.input), [node]))
            for operands, nodes in tries:
                if len(operands) != len(term.operands):
                    continue
                for order in set(itertools.permutations(range(len(operands)))):
                    yield from self.all_of(
                        term.operands,
                        [operands[i] for i in order],
                        m.but(nodes=m.nodes + tuple(nodes)),
                    )
            return
        if node.op_type != term.op or not self.attributes_match(node, term):
            return
        inputs = list(node.input)
        if node.op_type == "ReduceMean":
            inputs = inputs[:1]
        if len(inputs) != len(term.operands):
            return
        orders = [inputs, inputs[::-1]] if term.op in P.COMMUTATIVE else [inputs]
        for ordered in orders:
            yield from self.all_of(term.operands, ordered, m.but(nodes=m.nodes + (node,)))

    def all_of(self, terms, values, m: _Match):  # type: ignore[no-untyped-def]
        if not terms:
            yield m
            return
        for first in self.match(terms[0], values[0], m):
            yield from self.all_of(terms[1:], values[1:], first)

    def attributes_match(self, node, term: P.Term) -> bool:  # type: ignore[no-untyped-def]
        """Whether the node has the term's attributes (ReduceMean: its axes, as an attribute
        or, since opset 18, an input; keeping the dims), and no other that changes its meaning
        (any attribute not in the term but the ones left at their default)."""
        import onnx
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        wanted = dict(term.attrs)
        if node.op_type == "ReduceMean":
            axes = attrs.pop("axes", None)
            if axes is None and len(node.input) > 1 and node.input[1]:
                array = self.constants.get(node.input[1])
                axes = None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]
            if axes is None or [int(a) for a in axes] != list(wanted.pop("axes")):  # type: ignore[call-overload]
                return False
            if attrs.pop("keepdims", 1) != 1 or attrs.pop("noop_with_empty_axes", 0) != 0:
                return False
        for name, value in wanted.items():
            have = attrs.pop(name, None)
            if have is None:  # left at its default
                default = onnx.defs.get_schema(node.op_type).attributes[name].default_value
                if default.type == onnx.AttributeProto.UNDEFINED:
                    return False
                have = helper.get_attribute_value(default)
            if isinstance(value, float):
                if not isinstance(have, (int, float)) or not _close(float(have), value):
                    return False
            elif have != value:
                return False
        return not attrs

    def find(self) -> list:
        """The nodes, each pattern found replaced by one node of `PATTERN_DOMAIN` (its kind,
        the bound numbers and tensors as `doc_string`-free attributes and inputs)."""
        from onnx import helper

        patterns = _all_patterns()
        used: set[int] = set()
        replaced: dict[int, object] = {}
        for index in range(len(self.nodes) - 1, -1, -1):
            root = self.nodes[index]
            if id(root) in used or len(root.output) != 1:
                continue
            for kind, pattern, term in patterns:
                found = self.first(term, root)
                if found is None or any(id(n) in used for n in found.nodes):
                    continue
                used.update(id(n) for n in found.nodes)
                numbers = {k: v for k, v in found.bound.items() if isinstance(v, float)}
                tensors = {k: v for k, v in found.bound.items() if isinstance(v, str)}
                assert found.x is not None
                fused = helper.make_node(
                    kind,
                    [found.x, *tensors.values()],
                    [root.output[0]],
                    name=root.name,
                    domain=PATTERN_DOMAIN,
                    doc_string="nodes "
                    + ", ".join(
                        _q(n.name or n.op_type)  # type: ignore[attr-defined]
                        for n in sorted(found.nodes, key=self.nodes.index)
                    ),
                )
                for key, number in numbers.items():
                    fused.attribute.append(helper.make_attribute(key, number))
                fused.attribute.append(helper.make_attribute("pattern", pattern))
                fused.attribute.append(helper.make_attribute("tensors", ",".join(tensors)))
                _copy_metadata(root, fused)
                replaced[index] = fused
                break
        if not replaced:
            return self.nodes
        return [
            replaced.get(i, node)
            for i, node in enumerate(self.nodes)
            if id(node) not in used or i in replaced
        ]

    def first(self, term: P.Term, root) -> _Match | None:  # type: ignore[no-untyped-def]
        """The first way `term` matches the output of `root` in which every node but the root
        is read only inside the match."""
        for m in self.match(term, root.output[0], _Match()):
            if m.x is None or not m.nodes or m.nodes[0] is not root:
                continue
            inside = {id(n) for n in m.nodes}
            if all(
                n is root
                or (
                    n.output[0] not in self.outputs
                    and all(id(r) in inside for r in self.readers.get(n.output[0], ()))
                )
                for n in m.nodes
            ):
                return m
        return None


def _close(a: float, b: float) -> bool:
    """Equal within float32 rounding (exporters write their constants in float32)."""
    return abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _copy_metadata(source, target) -> None:  # type: ignore[no-untyped-def]
    for prop in getattr(source, "metadata_props", ()):
        entry = target.metadata_props.add()
        entry.key, entry.value = prop.key, prop.value


def fuse_patterns(nodes: list, graph) -> list:  # type: ignore[no-untyped-def]
    """The nodes with each group that computes one layer kind as one of the kinds' ONNX
    patterns (`Onnx.patterns`) replaced by one node of `PATTERN_DOMAIN`: matched by structure
    and constants, never by names; each pattern tried at every node from the last, biggest
    first."""
    return _Matcher(nodes, graph).find()
