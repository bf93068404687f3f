"""The front end: .lyr source text in, a syntax tree of frozen, located dataclasses out.

Lark parses with the LALR grammar in grammar/layerc.lark; `_Builder` then walks lark's tree and
builds nodes that mirror the text (no meaning is checked here beyond what the grammar says, and
the few rules of form the grammar leaves to the builder for clearer messages: a forward block
after the layers and only one, its return last, an input's shape, how deep an expression nests).
List literals, which can be megabytes of numbers, are read apart, before lark, in time and memory
linear in their text (see "list literals" below). Lexing and parsing failures become
`LayercError`s with the location of the offending token.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import lark
import numpy as np
from lark import Token, Tree
from lark.lark import PostLex

from .errors import LayercError, Loc

# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Number:
    value: float
    is_int: bool
    text: str
    loc: Loc


@dataclass(frozen=True)
class Bool:
    value: bool
    loc: Loc


@dataclass(frozen=True)
class String:
    value: str
    loc: Loc


@dataclass(frozen=True)
class Name:
    value: str
    loc: Loc


class ListLit:
    """A list literal, `[...]`, read from the source in one pass (see `ListScan`).

    What an array needs (its numbers, how each was written, its shape, or the first entry that
    keeps it from being one) is computed from the text without a node per element; where one
    number stands (`number_locs`), how it was written (`number_texts`) and the nested nodes
    (`items`) are derived from the text again when asked for, which only errors and tests do.
    """

    __slots__ = ("loc", "_text", "_start", "_end", "_scan", "_items")

    def __init__(self, loc: Loc, text: str, start: int, end: int, scan: ListScan | None = None):
        self.loc = loc
        self._text = text  # the whole source; the literal is text[start:end]
        self._start = start
        self._end = end
        self._scan = scan
        self._items: tuple[Value, ...] | None = None

    @classmethod
    def of(cls, numbers: Sequence[Number], loc: Loc) -> ListLit:
        """A literal of `numbers` built in code (`layerc import` does), its text theirs as
        written, comma-separated: the printer lays it out as it lays out any literal."""
        text = "[" + ",".join(number.text for number in numbers) + "]"
        return cls(loc, text, 0, len(text))

    @property
    def source(self) -> str:
        """The literal as written, from its '[' to its ']'."""
        return self._text[self._start : self._end]

    @property
    def extent(self) -> tuple[str, int, int]:
        """The text the literal stands in, and its offsets there: it is text[start:end]."""
        return self._text, self._start, self._end

    @property
    def scan(self) -> ListScan:
        if self._scan is None:
            result = _scan_list(self._text, self._start, len(self._text))
            assert isinstance(result, ListScan), "a parsed list scans without error"
            self._scan = result
        return self._scan

    @property
    def calls(self) -> tuple[Call, ...]:
        """The calls among the entries, at any depth of nested lists (not inside other calls).
        A literal of numbers has none, which `scan` knows without building its entries."""
        if not self.scan.has_calls:
            return ()
        found: list[Call] = []
        for item in self.items:
            if isinstance(item, Call):
                found.append(item)
            elif isinstance(item, ListLit):
                found.extend(item.calls)
        return tuple(found)

    @property
    def items(self) -> tuple[Value, ...]:
        """The entries as syntax nodes (parsed again from the text, so best kept to small lists)."""
        if self._items is None:
            self._items = _parse_items(self)
        return self._items

    def offset_loc(self, offset: int) -> Loc:
        """The location of source offset `offset` (inside this literal)."""
        return _loc_of_offset(self._text, offset, self.loc.file)

    def numbers(self, indices: Iterable[int]) -> Iterator[tuple[int, int, str]]:
        """(index, source offset, text) of each of the numbers `indices` (positions in
        `scan.values`, increasing), found in one pass over the literal's text. Only for a
        literal without `scan.problem`, whose names can only be inf and nan."""
        wanted = iter(indices)
        target = next(wanted, None)
        count = 0
        for m in _NUMBER_IN_LIST.finditer(self._text, self._start, self._end):
            if target is None:
                return
            if m.lastgroup != "number":
                continue
            if count == target:
                yield count, m.start(), m.group()
                target = next(wanted, None)
            count += 1

    def number_texts(self, indices: Iterable[int]) -> dict[int, str]:
        """How each of the numbers `indices` is written."""
        return {i: text for i, _, text in self.numbers(sorted(set(indices)))}

    def number_locs(self, indices: Iterable[int]) -> dict[int, Loc]:
        """Where each of the numbers `indices` stands."""
        return {i: self.offset_loc(off) for i, off, _ in self.numbers(sorted(set(indices)))}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ListLit):
            return NotImplemented
        return self.loc == other.loc and self.source == other.source

    def __hash__(self) -> int:
        return hash((self.loc, self._end - self._start))

    def __repr__(self) -> str:
        source = self.source
        shown = source if len(source) <= 60 else source[:57] + "..."
        return f"ListLit({shown!r}, {self.loc!r})"


@dataclass(frozen=True)
class Arg:
    """A positional (`name is None`) or keyword argument."""

    name: str | None
    value: Value
    loc: Loc


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Arg, ...]
    loc: Loc


Value = Number | Bool | String | Name | ListLit | Call


@dataclass(frozen=True)
class TupleLit:
    """A parenthesised tuple of values, `(a, b)`: the inputs or expectations of a test of a
    model with several inputs or outputs (section 8), in `forward` order."""

    items: tuple[Value, ...]
    loc: Loc  # its '('


@dataclass(frozen=True)
class Entry:
    name: str
    value: Value | TupleLit
    loc: Loc


# --------------------------------------------------------------------------- forward blocks
# A graph model's `forward(inputs) { statements; return values }`, in the notation of a
# PyTorch forward. Expressions are trees of the nodes below; `loc` is where each starts, except
# a BinOp's, which is its operator's (where a size mismatch is reported).


@dataclass(frozen=True)
class Ref:
    """A value by name: an input of forward, or a name bound by an earlier statement."""

    name: str
    loc: Loc


@dataclass(frozen=True)
class Num:
    """A number in an expression (`2 * x`, `x - 1`), as written but for a '-' sign: as in
    Python, `-1` is `Neg(Num("1"))` (a '+' sign stays in `text`)."""

    text: str
    loc: Loc

    @property
    def value(self) -> float:
        return float(self.text)


@dataclass(frozen=True)
class Apply:
    """`callee(args...)`: a call of one of the model's layers (or nested models), or of the
    built-in `cat` (concatenation along the feature axis)."""

    callee: str
    args: tuple[Expr, ...]
    loc: Loc  # the callee's name


@dataclass(frozen=True)
class BinOp:
    """`left op right` with op one of + - * (elementwise)."""

    op: str
    left: Expr
    right: Expr
    loc: Loc  # the operator


@dataclass(frozen=True)
class Neg:
    """Unary minus, `-x`."""

    operand: Expr
    loc: Loc  # the '-'


Expr = Ref | Num | Apply | BinOp | Neg


@dataclass(frozen=True)
class Input:
    """An input of forward, `x`, or annotated with its per-sample shape: `mask: 8` gives (8,),
    `img: [1, 28, 28]` gives (1, 28, 28)."""

    name: str
    shape: tuple[int, ...] | None
    loc: Loc  # the name
    shape_loc: Loc | None = None  # the annotation


@dataclass(frozen=True)
class Assign:
    """`name = expr`; each name is bound once."""

    name: str
    value: Expr
    loc: Loc  # the name


@dataclass(frozen=True)
class Return:
    """`return a, b, ...`: the model's outputs, in order (a tuple when there are several)."""

    values: tuple[Expr, ...]
    loc: Loc  # the keyword


@dataclass(frozen=True)
class ForwardDef:
    """`forward(inputs) { body; return ... }`: a model's graph (section 8), after its layers."""

    inputs: tuple[Input, ...]
    body: tuple[Assign, ...]
    result: Return
    loc: Loc  # the keyword `forward`


@dataclass(frozen=True)
class LayerDef:
    name: str | None
    kind: str
    kind_loc: Loc
    args: tuple[Arg, ...]
    has_parens: bool
    entries: tuple[Entry, ...] | None
    loc: Loc
    # Comment lines before it, in a tree built in code (a parsed tree keeps its comments in the
    # source text; see printer).
    comments: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelDef:
    name: str
    options: tuple[Arg, ...]
    layers: tuple[LayerDef, ...]
    loc: Loc
    name_loc: Loc
    comments: tuple[str, ...] = ()  # as a LayerDef's
    forward: ForwardDef | None = None  # a graph model (section 8); None: a pipeline


@dataclass(frozen=True)
class TestDef:
    model: str
    entries: tuple[Entry, ...]
    loc: Loc
    model_loc: Loc
    comments: tuple[str, ...] = ()  # as a LayerDef's


@dataclass(frozen=True)
class Program:
    file: str
    items: tuple[ModelDef | TestDef, ...]


# --------------------------------------------------------------------------- parser


def grammar_path() -> Path:
    """The grammar shipped in the wheel, or grammar/ of a source checkout."""
    packaged = Path(__file__).with_name("_grammar") / "layerc.lark"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[1] / "grammar" / "layerc.lark"


class _Keywords(PostLex):
    """Lark's contextual lexer reads only the terminals the parser can take next, which makes
    `forward` a keyword only where a forward block can start and keeps a sign out of a NUMBER
    after an operand (`x -1` is `x - 1`). NAME and the keywords model, test, true and false are
    read everywhere, so those four are never names, whatever the parser expects, and no keyword
    is read out of the start of a longer name (`modelx`). `return` is a keyword inside forward
    blocks, from `forward` to the block's closing brace (a layer may still be named `return`):
    there it ends an expression that lacks its last operand, as in Python."""

    always_accept = ("NAME", "MODEL", "TEST", "TRUE", "FALSE")

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = -1  # of braces inside a forward block; -1 outside one
        for token in stream:
            if token.type == "FORWARD":
                depth = 0
            elif depth >= 0:
                if token.type == "NAME" and token == "return":
                    token.type = "RETURN"
                elif token.type == "LBRACE":
                    depth += 1
                elif token.type == "RBRACE":
                    depth -= 1
                    if depth == 0:
                        depth = -1
            yield token


def _parser(start: str = "start") -> lark.Lark:
    """The parser of the grammar; with `start="value"`, of one value (a list literal's
    `items`). Built once per start symbol (`_parser()` and `_parser("start")` are one)."""
    return _built_parser(start)


@cache
def _built_parser(start: str) -> lark.Lark:
    return lark.Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        postlex=_Keywords(),
        propagate_positions=True,
        maybe_placeholders=False,
        start=start,
    )


MAX_NESTING = 32
# How deep operations (calls, operators, unary minus) may nest in an expression of a forward
# block: `a + b` is 1 deep, `f(a + b)` 2. Every stage after the parser walks expressions
# recursively; this keeps them far from Python's recursion limit. (Parentheses are bounded by
# MAX_NESTING, and the grammar reads chains like `a + b + c` and `--x` as flat lists.)
MAX_EXPRESSION_DEPTH = 100

_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "SIGNED_SPECIAL": "a number",
    "STRING": "a string",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "EQUAL": "'='",
    "COMMA": "','",
    "SEMICOLON": "';'",
    "MODEL": "'model'",
    "TEST": "'test'",
    "TRUE": "'true'",
    "FALSE": "'false'",
    "FORWARD": "'forward'",
    "RETURN": "'return'",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "COLON": "':'",
    "$END": "end of file",
}


# The tokens that can start a value, and an expression: when all are possible, the message says
# "a value" or "an expression".
_VALUE_STARTS = frozenset({"NUMBER", "SIGNED_SPECIAL", "STRING", "NAME", "TRUE", "FALSE", "LSQB"})
_EXPRESSION_STARTS = frozenset({"NUMBER", "NAME", "LPAR", "MINUS"})
# Characters that are tokens only in forward blocks: elsewhere they are reported as characters
# the language does not have, as they were before forward blocks (`Linear(- 1)`).
_FORWARD_PUNCTUATION = frozenset({"PLUS", "MINUS", "STAR", "COLON"})


def _describe_expected(expected: set[str]) -> str:
    # Where a layer may start so may a forward block; a message about a model's layers does not
    # list it (it would in every message about a pipeline model).
    expected = expected - {"FORWARD"}
    if _VALUE_STARTS <= expected:
        expected = (expected - _VALUE_STARTS) | {"a value"}
    elif _EXPRESSION_STARTS <= expected:
        expected = (expected - _EXPRESSION_STARTS) | {"an expression"}
    words = sorted({_TERMINAL_WORDS.get(t, t) for t in expected})
    if not words:
        return ""
    if len(words) == 1:
        return f"; expected {words[0]}"
    return "; expected " + ", ".join(words[:-1]) + " or " + words[-1]


def _suggest_keyword(word: str, expected: set[str]) -> str:
    """ "; did you mean 'model'?" when a misspelt keyword stands where a keyword may come."""
    keywords = [
        _TERMINAL_WORDS[t].strip("'") for t in ("MODEL", "TEST", "TRUE", "FALSE") if t in expected
    ]
    close = difflib.get_close_matches(word, keywords, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    text = str(token)
    if len(text) > 40:
        text = text[:37] + "..."
    return repr(text)


def decode_source(data: bytes, file: str) -> str:
    """UTF-8 text of a .lyr file; a bad byte or a NUL is reported where it stands."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        col = len(before) - (before.rfind("\n") + 1) + 1
        raise LayercError(
            f"the file is not valid UTF-8 text (byte 0x{data[exc.start]:02x})", Loc(file, line, col)
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    nul = text.find("\0")
    if nul >= 0:
        raise LayercError("the file contains a NUL character", _loc_of_offset(text, nul, file))
    return text


def _loc_of_offset(text: str, offset: int, file: str) -> Loc:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Loc(file, line, col)


# A comment, a string as the nesting check delimits it (to a closing quote or the end of its
# line; a backslash escapes any character), or a bracket.
_NESTING_TOKENS = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\[\s\S])*["\n]?|[\[\]()]')


def _check_nesting(text: str, file: str) -> None:
    """Refuse absurdly deep brackets before parsing, so no later stage can run out of stack."""
    depth = 0
    for m in _NESTING_TOKENS.finditer(text):
        ch = m.group()
        if ch in "[(":
            depth += 1
            if depth > MAX_NESTING:
                raise LayercError(
                    f"brackets nested more than {MAX_NESTING} deep",
                    _loc_of_offset(text, m.start(), file),
                )
        elif ch in "])":
            depth = max(depth - 1, 0)


# --------------------------------------------------------------------------- list literals
#
# A weight matrix written inline can be megabytes of numbers. Parsed by lark, every number would
# become a token, a tree node and a syntax node with its location (hundreds of bytes each, about
# 640 times the literal's size in all). So list literals are read here instead, before lark
# sees the text: a literal of numbers only is checked and converted in a few passes of `re` and
# NumPy over its text (`_scan_numeric`); anything else in a list (names, strings, calls, syntax
# errors) is read by a small recursive-descent reader of the grammar's `value` rule
# (`_ListReader`). Both keep a few bytes per number: the float64 value and how it was written.

MAX_LITERAL = 1 << 26  # characters in one list literal, from its '[' to its ']'
# Characters other than white space outside list literals: lark builds a node for each token
# there, at 150-300 bytes of memory per character of source, so this bounds a source's parse.
MAX_STRUCTURE = 1 << 21

# How a number is written: an integer (digits only), a decimal (a point or an exponent), or
# inf/nan. The checker reads integers exactly and rounds decimals (see weights.literal_array).
INT, DECIMAL, SPECIAL = 0, 1, 2


def number_kind(text: str) -> int:
    body = text.lstrip("+-")
    if body in ("inf", "nan"):
        return SPECIAL
    return INT if body.isdigit() else DECIMAL


@dataclass(frozen=True)
class Problem:
    """Why a list literal is not an array: an entry that is not a number (`shape` None), or an
    entry whose shape differs from the first entry's (`first_shape`) in the same list. It is
    the first such thing in the order in which the literal is read, where a list is judged at
    its closing bracket (so a bad entry inside a row comes before the row's length)."""

    offset: int  # of the entry
    shape: tuple[int, ...] | None = None
    first_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ListScan:
    """What reading a list literal found. `values` and `kinds` hold its numbers in source order
    (only when there is no `problem`); `shape` is its shape as an array."""

    end: int  # source offset just past the closing ']'
    values: np.ndarray  # float64, as Python's float() reads each number
    kinds: np.ndarray  # uint8: INT, DECIMAL or SPECIAL for each number
    shape: tuple[int, ...] | None  # None when there is a problem
    problem: Problem | None = None
    # The first string with an unknown escape: (offset of the backslash, the escaped character).
    bad_escape: tuple[int, str] | None = None
    has_calls: bool = False  # a call stands among the entries (see ListLit.calls)


@dataclass(frozen=True)
class _Refused:
    """A literal with a syntax error at `offset`. `keep` are the spans of the literal's text
    before the error that lark must see to stand where the reader stood (see `_prepare`)."""

    offset: int
    keep: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class _TooLong:
    pass


_EMPTY = np.zeros(0)
_NO_KINDS = np.zeros(0, dtype=np.uint8)

# --- the fast reader: a literal of numbers, brackets, commas, whitespace and comments only

# The characters such a literal can hold, and its comments; it ends at the first character
# that is none of these (where `_ListReader` takes over) or at its closing bracket.
_NUMERIC_RUN = re.compile(r"(?:[-+.0-9eEinfa,\[\] \t\f\r\n]+|#[^\n]*)*")
_COMMENT = re.compile(r"#[^\n]*")
# Numbers as the grammar's NUMBER and SIGNED_SPECIAL (and the names inf, nan) spell them, by
# kind; each is replaced by one letter to leave the literal's skeleton, e.g. "[[I,D],[S,I]]"
# (letters that `_NUMERIC_RUN` lets through cannot be mistaken for these).
_SPECIAL_NUMBER = re.compile(r"[+-]?(?:inf|nan)(?![A-Za-z0-9_])")
_DECIMAL_NUMBER = re.compile(
    r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?[0-9]+[eE][+-]?[0-9]+"
)
_INT_NUMBER = re.compile(r"[+-]?[0-9]+")
_DROP_SPACE = str.maketrans("", "", " \t\f\r\n")
_DROP_PUNCTUATION = str.maketrans("", "", "[],")
_BRACKETS_TO_SPACE = str.maketrans("[],", "   ")
_ONE_LETTER = str.maketrans("IDS", "nnn")
# A skeleton is valid when it holds nothing else and no two neighbours are out of place:
# after '[' or ',' comes a value or ']', after a value or ']' comes ',' or ']'.
_BAD_SKELETON = re.compile(r"[^\[\],IDS]|[\[,],|[IDS\]][\[IDS]")
_CHUNK = 1 << 20


def _lists_per_depth(skeleton: np.ndarray) -> list[int]:
    """How many lists open at each depth (1 for the outermost)."""
    counts = np.zeros(MAX_NESTING + 2, dtype=np.int64)
    depth = 0
    for begin in range(0, len(skeleton), _CHUNK):
        chunk = skeleton[begin : begin + _CHUNK]
        opens = chunk == 91
        step = opens.astype(np.int8) - (chunk == 93).astype(np.int8)
        running = np.cumsum(step, dtype=np.int32)
        running += depth
        counts += np.bincount(running[opens], minlength=len(counts))[: len(counts)]
        depth = int(running[-1])
    return [int(c) for c in counts[1:] if c]


def _rectangular_shape(skeleton: str) -> tuple[int, ...] | None:
    """The shape of a valid skeleton when every list at each depth has the same length and
    every number stands at the deepest level, else None."""
    codes = np.frombuffer(skeleton.encode("ascii"), dtype=np.uint8)
    lists = _lists_per_depth(codes)
    leaves = len(skeleton) - skeleton.count("[") - skeleton.count("]") - skeleton.count(",")
    shape = []
    for parent, child in zip(lists, [*lists[1:], leaves], strict=True):
        if child % parent:
            return None
        shape.append(child // parent)
    canonical = "n"
    for size in reversed(shape):
        canonical = "[" + ",".join([canonical] * size) + "]"
    plain = skeleton.translate(_ONE_LETTER).replace(",]", "]")
    return tuple(shape) if plain == canonical else None


def _numeric_end(text: str, start: int, limit: int) -> int | _TooLong | None:
    """The offset just past the ']' that closes the '[' at text[start], if the literal holds
    only characters a literal of numbers can (`_NUMERIC_RUN`); `_TooLong` if such characters
    run on for `limit` without closing it; None otherwise. Costs a step per bracket."""
    stop = min(len(text), start + limit)
    depth = 0
    for m in _BRACKET_OR_STOP.finditer(text, start, stop):
        ch = m.group()
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                end = m.end()
                run = _NUMERIC_RUN.match(text, start, end)
                return end if run is not None and run.end() == end else None
        elif ch == '"':
            return None
    if stop == start + limit:
        run = _NUMERIC_RUN.match(text, start, stop)
        if run is not None and run.end() == stop:
            return _TooLong()
    return None


# Brackets, comments (skipped whole) and quotes (which end a literal of numbers).
_BRACKET_OR_STOP = re.compile(r'[\[\]"]|#[^\n]*')


def _scan_numeric(text: str, start: int, end: int) -> ListScan | None:
    """Read text[start:end], a list literal of numbers only (see `_numeric_end`), or return
    None when it is not one after all (a ragged list, a misplaced comma or number)."""
    segment = text[start:end]
    if "#" in segment:
        segment = _COMMENT.sub(lambda m: " " * len(m.group()), segment)
    skeleton = _SPECIAL_NUMBER.sub("S", segment)
    skeleton = _DECIMAL_NUMBER.sub("D", skeleton)
    skeleton = _INT_NUMBER.sub("I", skeleton).translate(_DROP_SPACE)
    if _BAD_SKELETON.search(skeleton):
        return None
    shape = _rectangular_shape(skeleton)
    if shape is None:
        return None  # ragged: the reader below says where
    letters = np.frombuffer(skeleton.translate(_DROP_PUNCTUATION).encode("ascii"), np.uint8)
    kinds = (letters == ord("D")).astype(np.uint8)
    kinds[letters == ord("S")] = SPECIAL
    if letters.size:
        values = np.fromstring(segment.translate(_BRACKETS_TO_SPACE), dtype=np.float64, sep=" ")
    else:
        values = np.zeros(0)
    if values.size != letters.size:  # cannot happen for a valid skeleton; read it slowly
        return None
    special = np.flatnonzero(kinds == SPECIAL)
    if special.size:  # NumPy drops the sign of "-nan"; Python's float() keeps it
        texts = _SPECIAL_NUMBER.findall(segment)
        values[special] = [float(t) for t in texts]
    return ListScan(end, values, kinds, shape)


# --- the general reader

_TOKEN = re.compile(
    r"(?P<ws>[ \t\f\r\n]+|#[^\n]*)"
    r"|(?P<NUMBER>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<SIGNED_SPECIAL>[+-](?:inf|nan)(?![A-Za-z0-9_]))"
    r"|(?P<NAME>[A-Za-z_][A-Za-z0-9_]*)"
    r'|(?P<STRING>"(?:[^"\\\n]|\\[^\n])*")'
    r"|(?P<punct>[\[\](){}=,;])"
)
_PUNCTUATION = {
    "[": "LSQB",
    "]": "RSQB",
    "(": "LPAR",
    ")": "RPAR",
    "{": "LBRACE",
    "}": "RBRACE",
    "=": "EQUAL",
    ",": "COMMA",
    ";": "SEMICOLON",
}
_KEYWORDS = {"model": "MODEL", "test": "TEST", "true": "TRUE", "false": "FALSE"}
_ESCAPE = re.compile(r"\\(.)")
# The numbers of a list literal without problems (names there are inf and nan), comments apart.
_NUMBER_IN_LIST = re.compile(
    r"(?P<comment>#[^\n]*)|(?P<number>[+-](?:inf|nan)(?![A-Za-z0-9_])"
    r"|[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[A-Za-z_][A-Za-z0-9_]*)"
)


class _Stop(Exception):
    """A syntax error at `offset` (lark says which)."""

    def __init__(self, offset: int):
        self.offset = offset


class _Overlong(Exception):
    pass


@dataclass
class _Frame:
    """An open list, call or keyword argument: the spans of its opening tokens, of its last
    complete entry in its shortest form, and of the ',' after that entry if one was read."""

    opening: list[tuple[int, int]]
    last: list[tuple[int, int]] | None = None
    comma: tuple[int, int] | None = None


class _ListReader:
    """Reads a list literal by the grammar's rules for `value`, `list`, `call` and `arg`,
    token by token with the grammar's own terminals, keeping for the literal only what
    `ListScan` holds and, while reading, what lark would need to see to stop where it stops."""

    def __init__(self, text: str, start: int, stop: int):
        self.text = text
        self.pos = start
        self.stop = stop
        self.peeked: tuple[str, int, int] | None = None
        self.stack: list[_Frame] = []
        self.problem: Problem | None = None
        self.bad_escape: tuple[int, str] | None = None
        self.has_calls = False
        self.kinds = bytearray()
        self.pending: list[str] = []
        self.parts: list[np.ndarray] = []

    # ------------------------------------------------------------------ tokens

    def next(self) -> tuple[str, int, int]:
        if self.peeked is not None:
            token, self.peeked = self.peeked, None
            return token
        text, pos = self.text, self.pos
        while True:
            if pos >= len(text):
                self.pos = pos
                if pos > self.stop:
                    raise _Overlong
                return ("$END", pos, pos)
            m = _TOKEN.match(text, pos)
            if m is None:
                raise _Stop(pos)
            if m.lastgroup != "ws":
                break
            pos = m.end()
        self.pos = m.end()
        if self.pos > self.stop:
            raise _Overlong
        kind = m.lastgroup
        assert kind is not None
        if kind == "punct":
            kind = _PUNCTUATION[m.group()]
        elif kind == "NAME":
            kind = _KEYWORDS.get(m.group(), "NAME")
        return (kind, m.start(), m.end())

    def peek(self) -> tuple[str, int, int]:
        if self.peeked is None:
            self.peeked = self.next()
        return self.peeked

    def refused(self, offset: int) -> _Refused:
        keep: list[tuple[int, int]] = []
        for frame in self.stack:
            keep += frame.opening
            keep += frame.last or ()
            if frame.comma is not None:
                keep.append(frame.comma)
        return _Refused(offset, tuple(keep))

    # ------------------------------------------------------------------ grammar

    def read(self) -> ListScan:
        token = self.next()
        assert token[0] == "LSQB"
        shape = self.read_list(token, True)
        self.flush()
        if self.problem is not None:
            values, kinds = _EMPTY, _NO_KINDS
        else:
            values = np.concatenate(self.parts) if self.parts else np.zeros(0)
            kinds = np.frombuffer(bytes(self.kinds), dtype=np.uint8)
        return ListScan(
            self.pos, values, kinds, shape, self.problem, self.bad_escape, self.has_calls
        )

    def read_list(self, opening: tuple[str, int, int], entries: bool) -> tuple[int, ...] | None:
        """After '[': the list's shape when `entries` (its numbers are the literal's), else
        None. A list inside a call is only read."""
        frame = _Frame([opening[1:]])
        self.stack.append(frame)
        count = 0
        first: tuple[int, ...] | None = None
        mismatch: Problem | None = None
        token = self.next()
        while token[0] != "RSQB":
            shape, shortest = self.value(token, entries)
            frame.last, frame.comma = shortest, None
            if entries and self.problem is None:
                if count == 0:
                    first = shape
                elif mismatch is None and shape != first:
                    mismatch = Problem(token[1], shape, first)
            count += 1
            token = self.next()
            if token[0] == "COMMA":
                frame.comma = token[1:]
                token = self.next()
            elif token[0] != "RSQB":
                raise _Stop(token[1])
        self.stack.pop()
        if not entries:
            return None
        if self.problem is None and mismatch is not None:
            self.problem = mismatch
        if self.problem is not None:
            return None
        return (count, *first) if first is not None else (0,)

    def value(
        self, token: tuple[str, int, int], entries: bool
    ) -> tuple[tuple[int, ...] | None, list[tuple[int, int]]]:
        """One value starting with `token`: its shape as a list entry (when `entries`) and the
        spans of its shortest form (an empty list or call stands for a full one)."""
        kind, start, end = token
        if kind == "LSQB":
            shape = self.read_list(token, entries)
            return shape, [(start, end), (self.pos - 1, self.pos)]
        if kind in ("NUMBER", "SIGNED_SPECIAL"):
            return self.number(start, end, entries), [(start, end)]
        if kind == "NAME":
            if self.peek()[0] == "LPAR":
                lpar = self.next()
                self.call(token, lpar)
                self.has_calls = self.has_calls or entries
                self.not_a_number(start, entries)
                return None, [(start, end), lpar[1:], (self.pos - 1, self.pos)]
            if self.text[start:end] in ("inf", "nan"):
                return self.number(start, end, entries), [(start, end)]
        elif kind == "STRING":
            if self.bad_escape is None:
                for m in _ESCAPE.finditer(self.text, start + 1, end - 1):
                    if m.group(1) not in '"\\':
                        self.bad_escape = (m.start(), m.group(1))
                        break
        elif kind not in ("TRUE", "FALSE"):
            raise _Stop(start)
        self.not_a_number(start, entries)
        return None, [(start, end)]

    def call(self, name: tuple[str, int, int], lpar: tuple[str, int, int]) -> None:
        """After NAME '(': the arguments and ')'."""
        frame = _Frame([name[1:], lpar[1:]])
        self.stack.append(frame)
        token = self.next()
        while token[0] != "RPAR":
            if token[0] == "NAME" and self.peek()[0] == "EQUAL":
                equal = self.next()
                keyword = _Frame([token[1:], equal[1:]])
                self.stack.append(keyword)
                _, shortest = self.value(self.next(), False)
                self.stack.pop()
                frame.last = [token[1:], equal[1:], *shortest]
            else:
                frame.last = self.value(token, False)[1]
            frame.comma = None
            token = self.next()
            if token[0] == "COMMA":
                frame.comma = token[1:]
                token = self.next()
            elif token[0] != "RPAR":
                raise _Stop(token[1])
        self.stack.pop()

    def number(self, start: int, end: int, entries: bool) -> tuple[int, ...] | None:
        if not entries or self.problem is not None:
            return ()
        text = self.text[start:end]
        self.kinds.append(number_kind(text))
        self.pending.append(text)
        if len(self.pending) >= 1 << 16:
            self.flush()
        return ()

    def flush(self) -> None:
        if self.pending:
            self.parts.append(np.array(self.pending, dtype=np.float64))
            self.pending = []

    def not_a_number(self, start: int, entries: bool) -> None:
        if entries and self.problem is None:
            self.problem = Problem(start)


# Below this many characters a literal of numbers is read by `_ListReader` too: NumPy's
# per-call costs would outweigh its speed.
_FAST_MIN = 256


def _scan_list(text: str, start: int, limit: int) -> ListScan | _Refused | _TooLong:
    """Read the list literal whose '[' is text[start]; it may be at most `limit` characters."""
    end = _numeric_end(text, start, limit)
    if isinstance(end, _TooLong):
        return end
    if end is not None and end - start >= _FAST_MIN:
        fast = _scan_numeric(text, start, end)
        if fast is not None:
            return fast
    reader = _ListReader(text, start, start + limit)
    try:
        return reader.read()
    except _Stop as stop_at:
        return reader.refused(stop_at.offset)
    except _Overlong:
        return _TooLong()


def _blank(text: str) -> str:
    """`text` with every character but line breaks replaced by a space."""
    return "\n".join(" " * len(line) for line in text.split("\n"))


_SKIP_OR_LIST = re.compile(r'#[^\n]*|"|\[')
_STRING = re.compile(r'"([^"\\\n]|\\[^\n])*"')


def _prepare(text: str, file: str) -> tuple[dict[int, ListScan], str]:
    """Read every outermost list literal of `text` (`_scan_list`); return them by the offset
    of their '[' and the text for lark, in which each is blanked to `[ ... ]`.

    At the first literal with a syntax error, the text for lark keeps, of that literal up to
    the error, only the opening tokens of what is still open there, the last complete entry of
    each in its shortest form (an empty list or call for a full one) and a ',' after it: lark
    then stands where the reader stood, and stops at the same token with its own message,
    having read a few tokens rather than the whole literal. The text after the error is left
    as it is (lark stops there). A literal longer than MAX_LITERAL is refused at its '['."""
    scans: dict[int, ListScan] = {}
    pieces: list[str] = []
    done = 0  # text[:done] is in pieces
    pos = 0
    while True:
        m = _SKIP_OR_LIST.search(text, pos)
        if m is None:
            break
        start = m.start()
        if m.group() == '"':
            string = _STRING.match(text, start)
            if string is None:
                break  # lark stops at this quote
            pos = string.end()
            continue
        if m.group() != "[":
            pos = m.end()
            continue
        result = _scan_list(text, start, MAX_LITERAL)
        if isinstance(result, _TooLong):
            raise LayercError(
                f"this list literal is longer than {MAX_LITERAL} characters; "
                'write large arrays to a .npy or .safetensors file and load("file") them',
                _loc_of_offset(text, start, file),
            )
        pieces.append(text[done:start])
        if isinstance(result, ListScan):
            scans[start] = result
            pieces.append("[" + _blank(text[start + 1 : result.end - 1]) + "]")
            done = pos = result.end
            continue
        at = start
        for keep_start, keep_end in sorted(result.keep):
            pieces.append(_blank(text[at:keep_start]))
            pieces.append(text[keep_start:keep_end])
            at = keep_end
        pieces.append(_blank(text[at : result.offset]))
        done = result.offset
        break
    pieces.append(text[done:])
    return scans, "".join(pieces)


def _parse_items(node: ListLit) -> tuple[Value, ...]:
    """The entries of a list literal as nodes. Lark parses the literal alone, placed on a line
    of spaces as wide as what precedes it on its line, so that columns come out right."""
    text, start, end = node._text, node._start, node._end
    line_start = text.rfind("\n", 0, start) + 1
    fragment = " " * (start - line_start) + text[start:end]
    tree = _lark_parse(fragment, node.loc.file, start="value")
    builder = _Builder(node.loc.file, text, {}, line_offset=node.loc.line - 1, pos=line_start)
    return tuple(builder.value(child) for child in tree.children)


def parse(text: str, file: str = "<string>") -> Program:
    """Parse .lyr source text into a `Program`; raise `LayercError` on any syntax error.

    List literals are read by `_scan_list` before lark sees the text, and lark is given the text
    with each of them blanked out (same length, same line breaks, so every position stays
    where it was): it parses `[` spaces `]` in a literal's place, and the builder puts the
    scanned literal there. A literal with a syntax error is cut down so that lark reports the
    error, with its own message, at the same place (see `_prepare`)."""
    _check_nesting(text, file)
    scans, lark_text = _prepare(text, file)
    _check_structure(lark_text, file)
    tree = _lark_parse(lark_text, file)
    return _Builder(file, text, scans).program(tree)


def _check_structure(lark_text: str, file: str) -> None:
    """Refuse a source with more than MAX_STRUCTURE characters other than white space outside
    its list literals (blanked in `lark_text`), at the character that crosses the limit."""
    count = 0
    for run in re.finditer(r"\S+", lark_text):
        count += run.end() - run.start()
        if count > MAX_STRUCTURE:
            raise LayercError(
                f"this source has more than {MAX_STRUCTURE} characters outside its list "
                "literals (white space aside); split it, or move large data to a weights file "
                "with load(...)",
                _loc_of_offset(lark_text, run.end() - (count - MAX_STRUCTURE), file),
            )


def _lark_parse(text: str, file: str, start: str = "start") -> Tree:
    parser = _parser(start)
    try:
        return parser.parse(text)
    except lark.exceptions.UnexpectedCharacters as exc:
        pos = exc.pos_in_stream or 0
        ch = text[pos] if pos < len(text) else ""
        message = f"unexpected character {ch!r}"
        if ch == '"':
            # The only way a '"' fails to lex is a string with no closing quote on its line.
            message = 'unterminated string: a string ends with " on the same line'
        raise LayercError(message, Loc(file, exc.line, exc.column)) from None
    except lark.exceptions.UnexpectedToken as exc:
        token = exc.token
        if token.type == "$END":
            loc = _loc_of_offset(text, len(text), file)
        else:
            loc = Loc(file, token.line or 1, token.column or 1)
        expected = _acceptable(exc)
        message = f"unexpected {_describe_token(token)}{_describe_expected(expected)}"
        before = _token_before(text, token) if token.type == "EQUAL" else None
        stack = exc.interactive_parser.parser_state.value_stack if exc.interactive_parser else []
        in_forward = any(isinstance(v, Token) and v.type == "FORWARD" for v in stack)
        if token.type in ("MODEL", "TEST", "TRUE", "FALSE") and "NAME" in expected:
            message = f"'{token}' is a keyword and cannot be used as a name"
        elif token.type == "RETURN" and expected & {"NAME", "NUMBER"} == {"NAME"}:
            message = f"'{token}' is a keyword and cannot be used as a name"  # `forward(return)`
        elif before is not None and before.type in ("TRUE", "FALSE", "RETURN"):
            # `Linear(4, 3, false=1)`: `false` was read as a value, so the parser only trips
            # on the '='; the mistake is the keyword used as an argument name (or, in forward,
            # `return = ...`, as the name a statement assigns).
            message = f"'{before}' is a keyword and cannot be used as a name"
            loc = Loc(file, before.line or 1, before.column or 1)
        elif in_forward:
            message, loc = _in_forward(text, file, token, expected, stack, message, loc)
        elif token.type in _FORWARD_PUNCTUATION and not expected & _FORWARD_PUNCTUATION:
            message = f"unexpected character {str(token)!r}"
        elif token.type == "NAME":
            message += _suggest_keyword(str(token), expected)
        raise LayercError(message, loc) from None
    except lark.exceptions.UnexpectedEOF as exc:
        loc = _loc_of_offset(text, len(text), file)
        raise LayercError(
            f"unexpected end of file{_describe_expected(set(exc.expected))}", loc
        ) from None


# What follows a name that starts a statement (`h = ...`), or a number written in its place.
_ASSIGNMENT_NEXT = re.compile(r"(?:[ \t\f\r\n]|#[^\n]*\n)*=")


def _in_forward(
    text: str,
    file: str,
    token: Token,
    expected: set[str],
    stack: list[Token | Tree],
    message: str,
    loc: Loc,
) -> tuple[str, Loc]:
    """The message and location of a syntax error inside a forward block (`stack`, lark's value
    stack, holds the block's tokens so far): clearer than "unexpected ..." where the mistake is
    plain, as it is in Python."""
    statement_next = token.type in ("RBRACE", "$END", "RETURN") or (
        token.type == "NAME" and _ASSIGNMENT_NEXT.match(text, token.end_pos or 0) is not None
    )
    lpar = _open_parenthesis(stack)
    if lpar is not None and "RPAR" in expected and statement_next:
        # The statement has ended (a '}', a `return`, `h =`) with a '(' still open.
        return "'(' was never closed", Loc(file, lpar.line or 1, lpar.column or 1)
    if token.type == "RPAR" and lpar is None:
        return "unmatched ')'", loc
    if token.type == "NUMBER" and "RETURN" in expected:
        if _ASSIGNMENT_NEXT.match(text, token.end_pos or 0):
            return f"cannot assign to a number: {_STATEMENTS}", loc
    last = stack[-1] if stack else None
    if expected == {"EQUAL"} and isinstance(last, Token) and last.type == "NAME":
        # A name read as the start of a statement, without the '=' after it: a misspelt
        # `return` (`retrun h`), or a name that does not belong (`h = x y`, `h = x\n  relu`).
        where = Loc(file, last.line or 1, last.column or 1)
        if difflib.get_close_matches(str(last), ["return"], n=1, cutoff=0.6):
            return f"unexpected {_describe_token(last)}; did you mean 'return'?", where
        return f"unexpected {_describe_token(last)}: {_STATEMENTS}", where
    return message, loc


_STATEMENTS = "a statement is NAME = EXPR or return EXPR"


def _open_parenthesis(stack: list[Token | Tree]) -> Token | None:
    """The innermost '(' on lark's value stack that no ')' there closes."""
    closed = 0
    for item in reversed(stack):
        if isinstance(item, Token) and item.type == "RPAR":
            closed += 1
        elif isinstance(item, Token) and item.type == "LPAR":
            if not closed:
                return item
            closed -= 1
    return None


def _token_before(text: str, token: Token) -> Token | None:
    """The token just before `token` (comments skipped), or None at the start."""
    last = deque(_parser().lex(text[: token.start_pos or 0]), maxlen=1)
    return last[0] if last else None


def _acceptable(exc: lark.exceptions.UnexpectedToken) -> set[str]:
    """The tokens that could really come next. LALR merges states, so lark's `expected` may
    list tokens that the parser would reject one step later ("expected ']'" inside `Linear(4
    3)`); replaying the parser with each candidate keeps only those it accepts."""
    parser = exc.interactive_parser
    if parser is not None:
        try:
            return set(parser.accepts())
        except lark.exceptions.LarkError:
            pass
    return set(exc.expected)


def parse_file(path: Path, display: str | None = None) -> tuple[Program, str]:
    """Read and parse a file; return the program and its text (for error rendering)."""
    file = display if display is not None else str(path)
    text = decode_source(path.read_bytes(), file)
    return parse(text, file), text


# --------------------------------------------------------------------------- tree -> nodes


def _token(tree: Tree) -> Token:
    """The one token under a `number` or `string` node."""
    (token,) = tree.children
    assert isinstance(token, Token), token
    return token


class _Builder:
    """Turns lark's tree into nodes. Escapes in strings are the only thing that can fail here.

    `scans` are the list literals read before parsing, by the offset of their '['; lark saw
    them blanked. A list lark read itself (the entries of a literal, see `_parse_items`) is
    read again from `text` when it is first asked about. `line_offset` and `pos` place a tree
    parsed from a piece of the text: lark's line 1 is line `line_offset + 1`, its offset 0 is
    offset `pos`."""

    def __init__(
        self,
        file: str,
        text: str,
        scans: dict[int, ListScan],
        line_offset: int = 0,
        pos: int = 0,
    ):
        self.file = file
        self.text = text
        self.scans = scans
        self.line_offset = line_offset
        self.pos = pos

    def loc(self, item: Tree | Token) -> Loc:
        if isinstance(item, Token):
            return Loc(self.file, (item.line or 1) + self.line_offset, item.column or 1)
        return Loc(self.file, item.meta.line + self.line_offset, item.meta.column)

    def program(self, tree: Tree) -> Program:
        items: list[ModelDef | TestDef] = []
        for child in tree.children:
            if child.data == "model":
                items.append(self.model(child))
            else:
                items.append(self.test(child))
        return Program(self.file, tuple(items))

    def model(self, tree: Tree) -> ModelDef:
        name, *rest = tree.children
        options: tuple[Arg, ...] = ()
        layers = []
        forward: ForwardDef | None = None
        for child in rest:
            if child.data == "options":
                options = self.args(child)
            elif child.data == "forward":
                if forward is not None:
                    raise LayercError(
                        f"a model has one forward block; this one follows the one at line "
                        f"{forward.loc.line}",
                        self.loc(child),
                    )
                forward = self.forward(child)
            else:
                layer = self.layer(child)
                if forward is not None:
                    raise LayercError(
                        "a layer after forward: a model's layers come before its forward block",
                        layer.loc,
                    )
                layers.append(layer)
        return ModelDef(
            str(name), options, tuple(layers), self.loc(tree), self.loc(name), forward=forward
        )

    def layer(self, tree: Tree) -> LayerDef:
        tokens = [c for c in tree.children if isinstance(c, Token)]
        subtrees = [c for c in tree.children if isinstance(c, Tree)]
        if len(tokens) == 2:
            name: str | None = str(tokens[0])
            kind = tokens[1]
        else:
            name, kind = None, tokens[0]
        args: tuple[Arg, ...] = ()
        has_parens = False
        entries: tuple[Entry, ...] | None = None
        for sub in subtrees:
            if sub.data == "arguments":
                args = self.args(sub)
                has_parens = True
            else:
                entries = tuple(self.entry(e) for e in sub.children)
        return LayerDef(name, str(kind), self.loc(kind), args, has_parens, entries, self.loc(tree))

    def test(self, tree: Tree) -> TestDef:
        name, *entries = tree.children
        return TestDef(
            str(name), tuple(self.entry(e) for e in entries), self.loc(tree), self.loc(name)
        )

    def entry(self, tree: Tree) -> Entry:
        name, value = tree.children
        if isinstance(value, Tree) and value.data == "tuple":
            items = tuple(self.value(item) for item in value.children)
            return Entry(str(name), TupleLit(items, self.loc(value)), self.loc(name))
        return Entry(str(name), self.value(value), self.loc(name))

    # ------------------------------------------------------------------ forward blocks

    def forward(self, tree: Tree) -> ForwardDef:
        keyword, *rest = tree.children
        inputs = tuple(self.input(c) for c in rest if c.data == "input")
        body: list[Assign] = []
        result: Return | None = None
        for child in rest:
            if child.data == "input":
                continue
            if result is not None:
                raise LayercError(
                    "a statement after return: return is the last statement of forward",
                    self.loc(child),
                )
            if child.data == "assign":
                target, value = child.children
                body.append(Assign(str(target), self.expr(value), self.loc(target)))
            else:
                word, *values = child.children
                result = Return(tuple(self.expr(v) for v in values), self.loc(word))
        if result is None:
            # At the block's closing '}', where the return should have been.
            end = Loc(self.file, tree.meta.end_line + self.line_offset, tree.meta.end_column - 1)
            raise LayercError(
                "forward ends without a return: its last statement is return EXPR", end
            )
        return ForwardDef(inputs, tuple(body), result, self.loc(keyword))

    def input(self, tree: Tree) -> Input:
        name, *annotation = tree.children
        if not annotation:
            return Input(str(name), None, self.loc(name))
        (shape,) = annotation
        if isinstance(shape, Token):  # `mask: 8`
            return Input(str(name), (self.size(shape),), self.loc(name), self.loc(shape))
        literal = self.list_literal(shape)  # `img: [1, 28, 28]`
        scan = literal.scan
        if scan.problem is not None:  # an entry that is no number, or a ragged list
            raise LayercError(_SHAPE_MESSAGE, literal.offset_loc(scan.problem.offset))
        if scan.shape is None or len(scan.shape) != 1 or scan.shape == (0,):
            raise LayercError(_SHAPE_MESSAGE, literal.loc)  # nested, or empty
        sizes = []
        for _, offset, text in literal.numbers(range(scan.shape[0])):
            if not text.isdigit():
                raise LayercError(_SHAPE_MESSAGE, literal.offset_loc(offset))
            sizes.append(int(text))
        return Input(str(name), tuple(sizes), self.loc(name), literal.loc)

    def size(self, token: Token) -> int:
        if not str(token).isdigit():
            raise LayercError(_SHAPE_MESSAGE, self.loc(token))
        return int(str(token))

    def expr(self, item: Tree | Token) -> Expr:
        node, _ = self.expr_and_depth(item)
        return node

    def expr_and_depth(self, item: Tree | Token) -> tuple[Expr, int]:
        """An expression and how deep its operations nest (see MAX_EXPRESSION_DEPTH). Lark's
        tree nests only at parentheses (at most MAX_NESTING deep): chains of operators and
        runs of unary minus come as flat lists, folded here without recursion."""
        if isinstance(item, Token):  # a name or a number (lark's tree keeps them bare)
            if item.type == "NAME":
                return Ref(str(item), self.loc(item)), 0
            number = self.signed(item)
            return number, 1 if isinstance(number, Neg) else 0
        kind = item.data
        if kind == "apply":
            callee, *raw = item.children
            assert isinstance(callee, Token)
            args = [self.expr_and_depth(a) for a in raw]
            depth = self.deeper(max((d for _, d in args), default=0), callee)
            return Apply(str(callee), tuple(a for a, _ in args), self.loc(callee)), depth
        if kind == "unary":
            *signs, operand = item.children
            node, depth = self.expr_and_depth(operand)
            for sign in reversed(signs):
                assert isinstance(sign, Token)
                depth = self.deeper(depth, sign)
                node = Neg(node, self.loc(sign))
            return node, depth
        if kind in ("sum", "product"):
            first, *rest = item.children
            node, depth = self.expr_and_depth(first)
            for i in range(0, len(rest), 2):
                op = rest[i]
                assert isinstance(op, Token)
                right, right_depth = self.expr_and_depth(rest[i + 1])
                depth = self.deeper(max(depth, right_depth), op)
                node = BinOp(str(op), node, right, self.loc(op))
            return node, depth
        raise AssertionError(f"unhandled parse tree node {kind!r}")

    def deeper(self, depth: int, at: Token) -> int:
        """The depth of an operation at `at` whose operands nest `depth` deep."""
        if depth + 1 > MAX_EXPRESSION_DEPTH:
            raise LayercError(
                f"this expression nests operations more than {MAX_EXPRESSION_DEPTH} deep; "
                "split it into several statements",
                self.loc(at),
            )
        return depth + 1

    def signed(self, token: Token) -> Num | Neg:
        """A NUMBER token where an operand stands: `-1` is Neg(Num("1")), as in Python."""
        text = str(token)
        if not text.startswith("-"):
            return Num(text, self.loc(token))
        loc = self.loc(token)
        return Neg(Num(text[1:], Loc(loc.file, loc.line, loc.col + 1)), loc)

    def args(self, tree: Tree) -> tuple[Arg, ...]:
        out = []
        for arg in tree.children:
            if arg.data == "positional":
                value = self.value(arg.children[0])
                out.append(Arg(None, value, value.loc))
            else:
                name, raw = arg.children
                out.append(Arg(str(name), self.value(raw), self.loc(name)))
        return tuple(out)

    def value(self, item: Tree | Token) -> Value:
        # Lists nest at most MAX_NESTING deep (checked before parsing), so recursion is bounded.
        assert isinstance(item, Tree), item
        kind = item.data
        if kind == "number":
            return self.number(_token(item))
        if kind == "true":
            return Bool(True, self.loc(item))
        if kind == "false":
            return Bool(False, self.loc(item))
        if kind == "string":
            return self.string(_token(item))
        if kind == "name":
            token = item.children[0]
            if token in ("inf", "nan"):
                return Number(
                    math.inf if token == "inf" else math.nan, False, str(token), self.loc(token)
                )
            return Name(str(token), self.loc(token))
        if kind == "list":
            return self.list_literal(item)
        if kind == "call":
            func, *args = item.children
            return Call(str(func), self.args(Tree("arguments", args)), self.loc(func))
        raise AssertionError(f"unhandled parse tree node {kind!r}")

    def list_literal(self, item: Tree) -> ListLit:
        start = item.meta.start_pos + self.pos
        node = ListLit(
            self.loc(item), self.text, start, item.meta.end_pos + self.pos, self.scans.get(start)
        )
        if node.scan.bad_escape is not None:
            offset, ch = node.scan.bad_escape
            raise LayercError(_bad_escape_message(ch), node.offset_loc(offset))
        return node

    def number(self, token: Token) -> Number:
        text = str(token)
        body = text.lstrip("+-")
        negative = text.startswith("-")
        if body in ("inf", "nan"):
            value = math.inf if body == "inf" else math.nan
            return Number(-value if negative else value, False, text, self.loc(token))
        is_int = all(ch.isdigit() for ch in body)
        return Number(float(text), is_int, text, self.loc(token))

    def string(self, token: Token) -> String:
        raw = str(token)[1:-1]
        out = []
        i = 0
        while i < len(raw):
            ch = raw[i]
            if ch == "\\":
                nxt = raw[i + 1]
                if nxt not in ('"', "\\"):
                    col = (token.column or 1) + 1 + i
                    line = (token.line or 1) + self.line_offset
                    raise LayercError(_bad_escape_message(nxt), Loc(self.file, line, col))
                out.append(nxt)
                i += 2
            else:
                out.append(ch)
                i += 1
        return String("".join(out), self.loc(token))


_SHAPE_MESSAGE = (
    "an input's shape is a whole number or a list of whole numbers, "
    "like `mask: 8` or `img: [1, 28, 28]`"
)


def _bad_escape_message(ch: str) -> str:
    return f"unknown escape '\\{ch}' in string: only \\\" and \\\\ are escapes"
