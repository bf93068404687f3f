"""Patterns of ONNX nodes: a layer kind as an exporter writes it in several operators.

torch.onnx.export writes many of PyTorch's layers as several ONNX nodes: exact GELU as
Div/Erf/Add/Mul/Mul before opset 20, SiLU as Sigmoid and Mul, LayerNorm as ReduceMean, Sub, Pow,
Sqrt, Div before opset 17, Softplus with a beta as Mul/Softplus/Div, and the dynamo exporter
adds a Greater/Where for its threshold. A kind lists these forms in its table entry
(`Onnx.patterns`, layerc.kinds) as terms of the small language below, and `layerc import`
(layerc.onnx_match) finds them in a graph by structure and constants, never by the nodes' names.

A term is the input `X`, a `number` (a constant equal to it within float32 rounding), an `arg`
(a constant that becomes one of the kind's arguments, or its negation or inverse, the same
value wherever it appears), a `tensor` (a constant tensor that becomes one of the layer's block
entries), or an ONNX operator applied to terms (`op`). Products and sums match in any order and
grouping (`mul`, `add`: Mul(Mul(a, b), c) and Mul(a, Mul(c, b)) are one product of three; a
Div by a constant is a product with its inverse, a Sub of a constant a sum with its negation),
and `alt` gives forms that mean the same (x ** 3 or x * x * x). This module knows no ONNX
file; it only describes the terms (the kinds import it, and layerc.onnx_match matches it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

# The kinds of leaf term; any other `Term.op` is an ONNX operator.
INPUT, NUMBER, ARG, TENSOR, ALT = "<x>", "<number>", "<arg>", "<tensor>", "<alt>"
# Operators whose operands match in any order and grouping.
ASSOCIATIVE = ("Mul", "Add")
# Operators of two operands that match in either order.
COMMUTATIVE = ("Mul", "Add", "Or", "And")


@dataclass(frozen=True)
class Term:
    op: str
    operands: tuple[Term, ...] = ()
    value: float = 0.0  # a NUMBER's
    name: str = ""  # an ARG's or TENSOR's
    transform: str = ""  # an ARG's: "" (the constant is the argument), "neg" or "inv" of it
    attrs: tuple[tuple[str, object], ...] = ()  # an operator's attributes that must match

    @property
    def size(self) -> int:
        """How many operator terms (ONNX nodes) the term has: bigger patterns are tried
        first."""
        own = 0 if self.op in (INPUT, NUMBER, ARG, TENSOR, ALT) else 1
        return own + sum(t.size for t in self.operands)


X = Term(INPUT)


def number(value: float) -> Term:
    return Term(NUMBER, value=float(value))


def arg(name: str, transform: str = "") -> Term:
    assert transform in ("", "neg", "inv")
    return Term(ARG, name=name, transform=transform)


def tensor(name: str) -> Term:
    return Term(TENSOR, name=name)


def op(op_type: str, *operands: Term, **attrs: object) -> Term:
    return Term(op_type, tuple(operands), attrs=tuple(sorted(attrs.items())))


def mul(*operands: Term) -> Term:
    return op("Mul", *operands)


def add(*operands: Term) -> Term:
    return op("Add", *operands)


def alt(*terms: Term) -> Term:
    return Term(ALT, tuple(terms))


def arg_value(transform: str, constant: float) -> float:
    """The argument an ARG's constant stands for."""
    if transform == "neg":
        return -constant
    if transform == "inv":
        return 1.0 / constant if constant else float("inf")
    return constant


def variants(term: Term) -> list[Term]:
    """The term with every `alt` chosen in each way, and products and sums of products and sums
    flattened into one (so that a form matches however the graph groups it)."""
    if term.op in (INPUT, NUMBER, ARG, TENSOR):
        return [term]
    if term.op == ALT:
        return [v for t in term.operands for v in variants(t)]
    out = []
    for operands in itertools.product(*(variants(t) for t in term.operands)):
        if term.op in ASSOCIATIVE:
            flat: list[Term] = []
            for t in operands:
                flat.extend(t.operands if t.op == term.op and not t.attrs else (t,))
            operands = tuple(flat)
        out.append(Term(term.op, tuple(operands), attrs=term.attrs))
    return out


# What a matched pattern gives: the numbers bound to ARGs, and for each TENSOR the name of the
# ONNX constant bound to it.
Bound = dict[str, object]


@dataclass(frozen=True)
class OnnxPattern:
    """A kind as several ONNX nodes: `term`; the layer's arguments are the numbers its ARGs
    bound, the `fixed` ones, and `args(bound, sample)` for those that come from the per-sample
    shape of the input (None when unknown) or from which TENSORs the graph has."""

    term: Term
    fixed: tuple[tuple[str, object], ...] = ()
    args: Callable[[Bound, tuple[int, ...] | None], dict[str, object]] | None = None

    def arguments(self, bound: Bound, sample: tuple[int, ...] | None) -> dict[str, object]:
        out: dict[str, object] = {k: v for k, v in bound.items() if isinstance(v, float)}
        out.update(self.fixed)
        if self.args is not None:
            out.update(self.args(bound, sample))
        return out


__all__ = [
    "ALT",
    "ARG",
    "ASSOCIATIVE",
    "COMMUTATIVE",
    "INPUT",
    "NUMBER",
    "TENSOR",
    "Bound",
    "OnnxPattern",
    "Term",
    "X",
    "add",
    "alt",
    "arg",
    "arg_value",
    "mul",
    "number",
    "op",
    "tensor",
    "variants",
]
