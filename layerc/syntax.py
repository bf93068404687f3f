"""The front end: .lyr source text in, a syntax tree of frozen, located dataclasses out.

Lark parses with the LALR grammar in grammar/layerc.lark; `_Builder` then walks lark's tree and
builds nodes that mirror the text (no meaning is checked here beyond what the grammar says).
Lexing and parsing failures become `LayercError`s with the location of the offending token.
"""

from __future__ import annotations

import difflib
import math
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import lark
from lark import Token, Tree

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


@dataclass(frozen=True)
class ListLit:
    items: tuple[Value, ...]
    loc: Loc


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
class Entry:
    name: str
    value: Value
    loc: Loc


@dataclass(frozen=True)
class LayerDef:
    name: str | None
    kind: str
    kind_loc: Loc
    args: tuple[Arg, ...]
    has_parens: bool
    entries: tuple[Entry, ...] | None
    loc: Loc


@dataclass(frozen=True)
class ModelDef:
    name: str
    options: tuple[Arg, ...]
    layers: tuple[LayerDef, ...]
    loc: Loc
    name_loc: Loc


@dataclass(frozen=True)
class TestDef:
    model: str
    entries: tuple[Entry, ...]
    loc: Loc
    model_loc: Loc


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


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="basic",  # keywords are never names, whatever the parser expects
        propagate_positions=True,
        maybe_placeholders=False,
    )


MAX_NESTING = 32

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
    "$END": "end of file",
}


# The tokens that can start a value: when all are possible, the message says "a value".
_VALUE_STARTS = frozenset({"NUMBER", "SIGNED_SPECIAL", "STRING", "NAME", "TRUE", "FALSE", "LSQB"})


def _describe_expected(expected: set[str]) -> str:
    if _VALUE_STARTS <= expected:
        expected = (expected - _VALUE_STARTS) | {"a value"}
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


def _check_nesting(text: str, file: str) -> None:
    """Refuse absurdly deep brackets before parsing, so no later stage can run out of stack."""
    depth = 0
    in_string = in_comment = escaped = False
    for i, ch in enumerate(text):
        if in_comment:
            in_comment = ch != "\n"
        elif in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"' or ch == "\n":
                in_string = False
        elif ch == "#":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch in "[(":
            depth += 1
            if depth > MAX_NESTING:
                raise LayercError(
                    f"brackets nested more than {MAX_NESTING} deep", _loc_of_offset(text, i, file)
                )
        elif ch in "])":
            depth = max(depth - 1, 0)


def parse(text: str, file: str = "<string>") -> Program:
    """Parse .lyr source text into a `Program`; raise `LayercError` on any syntax error."""
    _check_nesting(text, file)
    try:
        tree = _parser().parse(text)
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
        if token.type in ("MODEL", "TEST", "TRUE", "FALSE") and "NAME" in expected:
            message = f"'{token}' is a keyword and cannot be used as a name"
        elif before is not None and before.type in ("TRUE", "FALSE"):
            # `Linear(4, 3, false=1)`: `false` was read as a value, so the parser only trips
            # on the '='; the mistake is the keyword used as an argument name.
            message = f"'{before}' is a keyword and cannot be used as a name"
            loc = Loc(file, before.line or 1, before.column or 1)
        elif token.type == "NAME":
            message += _suggest_keyword(str(token), expected)
        raise LayercError(message, loc) from None
    except lark.exceptions.UnexpectedEOF as exc:
        loc = _loc_of_offset(text, len(text), file)
        raise LayercError(
            f"unexpected end of file{_describe_expected(set(exc.expected))}", loc
        ) from None
    return _Builder(file).program(tree)


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
    """Turns lark's tree into nodes. Escapes in strings are the only thing that can fail here."""

    def __init__(self, file: str):
        self.file = file

    def loc(self, item: Tree | Token) -> Loc:
        if isinstance(item, Token):
            return Loc(self.file, item.line or 1, item.column or 1)
        return Loc(self.file, item.meta.line, item.meta.column)

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
        for child in rest:
            if child.data == "options":
                options = self.args(child)
            else:
                layers.append(self.layer(child))
        return ModelDef(str(name), options, tuple(layers), self.loc(tree), self.loc(name))

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
        return Entry(str(name), self.value(value), self.loc(name))

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
            return ListLit(tuple(self.value(c) for c in item.children), self.loc(item))
        if kind == "call":
            func, *args = item.children
            return Call(str(func), self.args(Tree("arguments", args)), self.loc(func))
        raise AssertionError(f"unhandled parse tree node {kind!r}")

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
                    raise LayercError(
                        f"unknown escape '\\{nxt}' in string: only \\\" and \\\\ are escapes",
                        Loc(self.file, token.line or 1, col),
                    )
                out.append(nxt)
                i += 2
            else:
                out.append(ch)
                i += 1
        return String("".join(out), self.loc(token))
