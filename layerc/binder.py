"""Argument binding: the arguments written at a call in the source (a layer `Linear(4, 3,
bias=false)`, an initialiser `uniform(seed=0)`, `load("w.npz", "fc.weight")`, a model's options)
and the callee's parameters in, a converted value for every parameter out.

Binding follows Python's rules: positional arguments first and in order, then keywords, each
parameter at most once, keyword-only parameters by keyword only, required ones always. Each
given value is then converted and checked by its parameter's converter, in parameter order.
Every mistake is a `LayercError` at the argument (or, for a missing one, at the call).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from . import syntax as S
from .errors import LayercError, Loc, suggest


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: object = _Required()

# A converter turns a written value into the parameter's Python value, or raises LayercError at
# the value: (value, parameter name, callee) -> value.
Convert = Callable[[S.Value, str, str], object]


@dataclass(frozen=True)
class Param:
    """One parameter: its name, how a written value is converted, its default (a Python value,
    or REQUIRED) and whether it may only be given by keyword (as torch's `*, bias=True`)."""

    name: str
    convert: Convert
    default: object = REQUIRED
    keyword_only: bool = False
    # What the parameter takes, for documentation: "int", "float", "bool", "str", ...
    type: str = ""


@dataclass(frozen=True)
class Bound:
    """The bound arguments of one call: a value for every parameter, in parameter order."""

    callee: str
    values: dict[str, object]
    locs: dict[str, Loc]  # where each value was written; the call for defaults
    given: frozenset[str] = field(default_factory=frozenset)

    def __getitem__(self, name: str) -> object:
        return self.values[name]

    def loc(self, name: str) -> Loc:
        return self.locs[name]

    def error(self, name: str, message: str) -> LayercError:
        """A LayercError at the argument `name` (at the call when it took its default)."""
        return LayercError(message, self.locs[name])


def bind(
    callee: str,
    params: Sequence[Param],
    args: Sequence[S.Arg],
    loc: Loc,
    *,
    missing_hint: Callable[[Param], str] | None = None,
) -> Bound:
    """Bind `args` (written at `loc`) to `params` of `callee` ("Linear", "uniform()")."""
    names = [p.name for p in params]
    positional = [p for p in params if not p.keyword_only]
    given: dict[str, S.Arg] = {}
    for i, arg in enumerate(args):
        if arg.name is None:
            if any(a.name is not None for a in args[:i]):
                raise LayercError("positional argument after a keyword argument", arg.loc)
            if i >= len(positional):
                count = sum(1 for a in args if a.name is None)
                raise LayercError(
                    f"{callee} takes {len(positional)} positional argument"
                    f"{'' if len(positional) == 1 else 's'} but {count} "
                    f"{'was' if count == 1 else 'were'} given",
                    arg.loc,
                )
            given[positional[i].name] = arg
            continue
        if arg.name not in names:
            allowed = ", ".join(names) if names else "none"
            raise LayercError(
                f"{callee} has no argument {arg.name!r}{suggest(arg.name, names)} "
                f"(arguments: {allowed})",
                arg.loc,
            )
        if arg.name in given:
            raise LayercError(f"argument {arg.name!r} is given twice", arg.loc)
        given[arg.name] = arg
    for p in params:
        if p.name not in given and p.default is REQUIRED:
            hint = missing_hint(p) if missing_hint is not None else ""
            raise LayercError(f"{callee} needs the argument {p.name!r}{hint}", loc)
    values: dict[str, object] = {}
    locs: dict[str, Loc] = {}
    for p in params:
        if p.name in given:
            value = given[p.name].value
            values[p.name] = p.convert(value, p.name, callee)
            locs[p.name] = value.loc
        else:
            values[p.name] = p.default
            locs[p.name] = loc
    return Bound(callee, values, locs, frozenset(given))


# --------------------------------------------------------------------------- converters


def _number(value: S.Value) -> S.Number | None:
    return value if isinstance(value, S.Number) else None


def boolean(value: S.Value, name: str, callee: str) -> bool:
    if not isinstance(value, S.Bool):
        # Python's True/False are the usual slip: suggest the .lyr spelling.
        hint = suggest(value.value, ["true", "false"]) if isinstance(value, S.Name) else ""
        raise LayercError(f"{name} must be true or false{hint}", value.loc)
    return value.value


def string(value: S.Value, name: str, callee: str) -> str:
    if not isinstance(value, S.String):
        raise LayercError(f'{callee} takes strings: {name} must be a "quoted string"', value.loc)
    return value.value


def _positive_int(value: S.Value, name: str, limit: int) -> int:
    number = _number(value)
    if number is None or not number.is_int:
        raise LayercError(f"{name} must be a positive integer", value.loc)
    if len(number.text.lstrip("+-")) > 12 or number.value > limit:
        raise LayercError(f"{name} = {number.text} is too large (at most {limit})", number.loc)
    if number.value <= 0:
        raise LayercError(f"{name} must be a positive integer, not {number.text}", number.loc)
    return int(number.value)


def positive_int(limit: int) -> Convert:
    """An integer from 1 to `limit`."""

    def convert(value: S.Value, name: str, callee: str) -> int:
        return _positive_int(value, name, limit)

    return convert


def integer(value: S.Value, name: str, callee: str) -> int:
    """Any integer of modest size (a dimension index)."""
    number = _number(value)
    if number is None or not number.is_int or len(number.text.lstrip("+-")) > 12:
        raise LayercError(f"{name} must be an integer", value.loc)
    return int(number.value)


def real(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    nonzero: bool = False,
    prefix: bool = False,
) -> Convert:
    """A finite number, optionally within [minimum, maximum] and not zero. An integer literal
    stays an int, as a Python int passed to torch does (`ELU(alpha=2)` prints `alpha=2` there
    too). With `prefix`, messages start with the callee ("normal(): ...")."""

    def convert(value: S.Value, name: str, callee: str) -> float | int:
        lead = f"{callee}: " if prefix else ""
        number = _number(value)
        if number is None or not math.isfinite(number.value):
            raise LayercError(f"{lead}{name} must be a finite number", value.loc)
        x = number.value
        if minimum is not None and x < minimum:
            raise LayercError(
                f"{lead}{name} must be >= {_fmt(minimum)}, not {number.text}", value.loc
            )
        if maximum is not None and x > maximum:
            raise LayercError(
                f"{lead}{name} must be <= {_fmt(maximum)}, not {number.text}", value.loc
            )
        if nonzero and x == 0:
            raise LayercError(f"{lead}{name} must not be zero", value.loc)
        return int(number.text) if number.is_int else float(x)

    return convert


def probability(value: S.Value, name: str, callee: str) -> float | int:
    """A number from 0 to 1 (a dropout probability)."""
    number = _number(value)
    if number is None or not 0 <= number.value <= 1:
        shown = f", not {number.text}" if number is not None else ""
        raise LayercError(f"{name} must be a probability between 0 and 1{shown}", value.loc)
    return int(number.text) if number.is_int else float(number.value)


def _fmt(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def choice(options: Sequence[str], *, prefix: bool = False) -> Convert:
    """One of `options`, written as a string (or, for initialisers, a bare name)."""

    def convert(value: S.Value, name: str, callee: str) -> str:
        text = value.value if isinstance(value, (S.String, S.Name)) else None
        if text not in options:
            shown = ", ".join(repr(c) for c in options)
            lead = f"{callee}: " if prefix else ""
            hint = suggest(text, list(options)) if isinstance(text, str) else ""
            raise LayercError(f"{lead}{name} must be one of {shown}{hint}", value.loc)
        assert isinstance(text, str)
        return text

    return convert


def shape(limit: int, max_rank: int) -> Convert:
    """A shape: a positive integer, or a list of 1 to `max_rank` of them whose product is at
    most `limit` (`16` or `[3, 4]`), as a tuple."""

    def convert(value: S.Value, name: str, callee: str) -> tuple[int, ...]:
        if isinstance(value, S.ListLit):
            if not value.items:
                raise LayercError(f"{name} must not be empty", value.loc)
            if len(value.items) > max_rank:
                raise LayercError(f"{name} has more than {max_rank} dimensions", value.loc)
            dims = tuple(_positive_int(item, name, limit) for item in value.items)
        elif isinstance(value, S.Number):
            dims = (_positive_int(value, name, limit),)
        else:
            raise LayercError(
                f"{name} must be a positive integer or a list of them, such as [1, 28, 28]",
                value.loc,
            )
        if math.prod(dims) > limit:
            raise LayercError(f"{name} holds more than {limit} values in all", value.loc)
        return dims

    return convert


def seed(value: S.Value, name: str, callee: str) -> int:
    number = _number(value)
    if number is None or not number.is_int or number.value < 0 or len(number.text) > 21:
        raise LayercError(f"{name} must be a non-negative integer below 2**64", value.loc)
    result = int(number.text.lstrip("+"))
    if result >= 2**64:
        raise LayercError(f"{name} must be a non-negative integer below 2**64", value.loc)
    return result


__all__ = [
    "REQUIRED",
    "Bound",
    "Param",
    "bind",
    "boolean",
    "choice",
    "integer",
    "positive_int",
    "probability",
    "real",
    "seed",
    "shape",
    "string",
]
