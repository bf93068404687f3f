"""`layerc fmt`: .lyr source text in, the same program in canonical layout out, comments kept.

The text is first parsed by the compiler (so fmt accepts exactly what the compiler does, with
its messages). List literals, which can be megabytes of numbers, are then laid out apart from
the rest, in time and memory linear in their text: one pass over the source finds each
outermost `[...]` and what the layout needs to know about every bracket inside it
(`_scan_literals`); lark parses, keeping every token's position, the text with each of those
literals blanked to spaces (same length and line breaks, so positions stay right), which leaves
it only the small skeleton of models, layers and entries; and each literal is laid out from a
light stream of its own tokens (`_ListLayout`). Comments come from lexing the blanked text
without dropping them, and from the literals' token streams.

The printer writes tokens in order with canonical spacing, and puts each comment back before the
first token that followed it in the source: a comment that ended a line of code stays at the end
of that line, one on a line of its own stays on its own line. Only layout changes: numbers and
strings are copied as written, so the program means the same.

The layout: four spaces per level; one statement per line; one blank line between top-level
items and blank lines between statements kept (at most one); `name = value` in entries and
`name=value` in arguments, as in Python; a list of lists written one row per line, aligned like
a matrix; a long list wrapped at 100 columns; `;` and `,` separators dropped; `ReLU` written
`ReLU()`. A list or argument list with a comment inside is written one item per line.
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import lark
from lark import Token, Tree

from .. import syntax
from ..errors import LayercError
from ..files import WriteFailed, read_regular, write_atomically

WIDTH = 100
INDENT = 4
_SCALARS = ("number", "true", "false", "string", "name")


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    """The compiler's grammar, keeping every token (brackets and separators too) and its place."""
    return lark.Lark(
        syntax.grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="basic",
        propagate_positions=True,
        maybe_placeholders=False,
        keep_all_tokens=True,
    )


def format_file(path: Path, check: bool = False) -> bool:
    """`layerc fmt FILE`: whether the file at `path` would change; unless `check`, rewrite it
    when it does. Only a regular file is read (a symlink to one is followed), and the rewrite is
    atomic and goes through a symlink: the file it points to is replaced and the link kept. An
    unreadable file, a syntax error or a failed write is a `LayercError`."""
    display = str(path)
    data = read_regular(path, display, what="a .lyr file")
    formatted = format_source(syntax.decode_source(data, display), display).encode("utf-8")
    if formatted == data:
        return False
    if not check:
        try:
            write_atomically([(path, formatted)], follow_links=True)
        except WriteFailed as exc:
            raise LayercError(f"cannot write the file: {exc.reason}", file=display) from None
    return True


def format_source(text: str, file: str = "<string>") -> str:
    """The canonical form of `text`; raises `LayercError` where the compiler's parser would."""
    syntax.parse(text, file)  # the compiler's own checks and messages, before anything else
    blanked, literals = _scan_literals(text)
    tree = _parser().parse(blanked)
    comments = [
        _Comment(_start(t), t.line or 1, str(t))
        for t in _parser().lex(blanked, dont_ignore=True)
        if t.type == "COMMENT"
    ]
    del blanked
    printer = _Printer(text, comments, literals.commented)
    _Layout(printer, text, literals).program(tree)
    return printer.finish()


# --------------------------------------------------------------------------- list literals
#
# How a list is laid out depends on what is inside it: a comment (then one item per line), a
# list among its items (then one item per line, aligned under the first as a matrix is), a call
# (then all on one line), or nothing but scalars (then filled line by line up to WIDTH). That
# must be known before its first item is written, so `_scan_literals` finds it out for every
# bracket of every literal in one pass over the source, and keeps it in a byte per bracket with
# the offset of the closing bracket, numbered in source order as `_ListLayout` numbers them
# while it reads. A list of scalars without comments, a row, is then read as one token.
#
# The patterns here repeat groups only where the text needs one step per group (per escape in a
# string, say), not per character: `re` keeps a backtracking record per repetition of a group,
# about 190 bytes, which for a group repeated over a row of numbers is 190 bytes per byte.

_IS_LIST = 1  # a '[' (else a call's '(')
_HAS_COMMENT = 2  # a comment stands between the bracket and its closing one
_HAS_LIST = 4  # a list among the list's items
_HAS_CALL = 8  # a call among the list's items
_NOT_A_ROW = _HAS_COMMENT | _HAS_LIST | _HAS_CALL

# What a pass over a literal stops at: comments and strings (read whole, so that the brackets
# and quotes inside them are skipped) and brackets. The text has passed `syntax.parse`, so every
# '"' opens a string the grammar's STRING reads whole and every '#' outside one a comment.
_STRING = r'"[^"\\\n]*(?:\\[^\n][^"\\\n]*)*"'  # the grammar's STRING, one step per escape
_EVENT = re.compile(rf"#[^\n]*|{_STRING}|[\[\]()]")


class _Blanks(dict[int, int]):
    """A `str.translate` table that maps every character but a line break to a space: ASCII
    characters from the table (for `str.translate`'s fast path), the others by `__missing__`,
    which does not store them, so that the table stays small."""

    def __missing__(self, code: int) -> int:
        return 32


_BLANKS = _Blanks({code: 32 for code in range(128)} | {10: 10})


@dataclass
class _Literals:
    """The outermost list literals of a source, as `_scan_literals` found them."""

    spans: dict[int, tuple[int, int]]  # offset of a literal's '[': (offset past its ']', number)
    codes: bytearray  # for each bracket inside literals, by number: the flags above
    closes: array[int]  # for each bracket: the offset just past its closing bracket
    commented: list[int]  # offsets of the literals with a comment inside, increasing


def _scan_literals(text: str) -> tuple[str, _Literals]:
    """Find the outermost list literals of `text` (a source `syntax.parse` accepts) and what is
    inside each of their brackets. Return them with the text for lark: `text` with each literal
    blanked to its '[', spaces and line breaks, and its ']'."""
    codes = bytearray()
    closes: array[int] = array("q")
    spans: dict[int, tuple[int, int]] = {}
    commented: list[int] = []
    pieces: list[str] = []
    done = 0  # text[:done] is in pieces
    stack: list[int] = []  # the numbers of the open brackets of the literal being read
    literal = 0  # offset of its '['
    for m in _EVENT.finditer(text):
        at = m.start()
        ch = text[at]
        if ch == "[" or ch == "(":
            if stack:
                if codes[stack[-1]] & _IS_LIST:
                    codes[stack[-1]] |= _HAS_LIST if ch == "[" else _HAS_CALL
            elif ch == "[":
                literal = at
                spans[at] = (0, len(codes))
            else:
                continue  # the arguments of a layer, call or model outside any literal
            stack.append(len(codes))
            codes.append(_IS_LIST if ch == "[" else 0)
            closes.append(0)
        elif ch == "]" or ch == ")":
            if not stack:
                continue
            bracket = stack.pop()
            closes[bracket] = m.end()
            comment = codes[bracket] & _HAS_COMMENT
            if stack:
                codes[stack[-1]] |= comment
                continue
            spans[literal] = (m.end(), spans[literal][1])
            if comment:
                commented.append(literal)
            pieces += (text[done : literal + 1], text[literal + 1 : at].translate(_BLANKS))
            done = at
        elif ch == "#" and stack:
            codes[stack[-1]] |= _HAS_COMMENT
    pieces.append(text[done:])
    return "".join(pieces), _Literals(spans, codes, closes, commented)


# A string or a number as the grammar's STRING, NUMBER and SIGNED_SPECIAL write them.
_STRING_OR_NUMBER = (
    rf"{_STRING}|[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-](?:inf|nan)(?![A-Za-z0-9_])"
)
# A literal's tokens, after any white space: a comment; a string or number; a name (inf, nan,
# true, false, or a call's or a keyword argument's); a bracket, ',' or '='.
_LIST_TOKEN = re.compile(
    r"[ \t\f\r\n]*(?:"
    r"(?P<comment>#[^\n]*)"
    rf"|(?P<scalar>{_STRING_OR_NUMBER})"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<punct>[\[\](),=]))"
)
# The items of a row: its tokens but the commas.
_ROW_ITEM = re.compile(rf"{_STRING_OR_NUMBER}|[A-Za-z_][A-Za-z0-9_]*")


class _Tok(NamedTuple):
    """A token of a list literal. `kind` is "row", "scalar", "name" or the punctuation."""

    kind: str
    start: int
    end: int
    line: int  # source line of its start
    bracket: int  # the number of a '[', '(' or row (see `_scan_literals`); -1 for the others


class _ListLayout:
    """Reads one list literal's tokens and tells the printer what to write where, as the
    layout of lark's tree of the literal would: the literal follows the grammar's `value`,
    `list`, `call` and `arg` rules (`syntax.parse` has checked it). Comments met on the way are
    queued in the printer, which writes them before the first token that follows them."""

    def __init__(self, printer: _Printer, text: str, literals: _Literals, start: int, line: int):
        self.p = printer
        self.text = text
        self.codes = literals.codes
        self.closes = literals.closes
        self.end, self.bracket = literals.spans[start]
        self.pos = start
        self.line = line
        self.line_pos = start  # text[line_pos] is on source line `line`
        self.peeked: _Tok | None = None

    def run(self) -> None:
        self.value(self.next())
        assert self.pos == self.end and self.peeked is None

    # ------------------------------------------------------------------ tokens

    def next(self) -> _Tok:
        if self.peeked is not None:
            token, self.peeked = self.peeked, None
            return token
        while True:
            m = _LIST_TOKEN.match(self.text, self.pos, self.end)
            assert m is not None, "the literal was parsed"
            self.pos = m.end()
            kind = m.lastgroup
            assert kind is not None
            start = m.start(kind)
            self.line += self.text.count("\n", self.line_pos, start)
            self.line_pos = start
            if kind == "comment":
                self.p.inner.append(_Comment(start, self.line, m.group(kind)))
                continue
            bracket = -1
            if kind == "punct":
                kind = m.group(kind)
                if kind == "[" or kind == "(":
                    bracket = self.bracket
                    self.bracket += 1
                    if kind == "[" and not self.codes[bracket] & _NOT_A_ROW:
                        kind = "row"  # read whole: up to its closing bracket
                        self.pos = self.closes[bracket]
            return _Tok(kind, start, self.pos, self.line, bracket)

    def peek(self) -> _Tok:
        if self.peeked is None:
            self.peeked = self.next()
        return self.peeked

    def put(self, token: _Tok) -> None:
        self.p.put(self.text[token.start : token.end], token.start, token.line)

    # ------------------------------------------------------------------ layout

    def value(self, token: _Tok) -> None:
        if token.kind == "row":
            self.row(token)
        elif token.kind == "[":
            self.list_(token)
        elif token.kind == "name" and self.peek().kind == "(":
            self.put(token)
            self.items(self.next(), ")", self.argument)
        else:
            self.put(token)

    def argument(self, token: _Tok) -> None:
        if token.kind == "name" and self.peek().kind == "=":
            self.put(token)
            self.put(self.next())
            token = self.next()
        self.value(token)

    def items(self, opening: _Tok, close: str, write: Callable[[_Tok], None]) -> None:
        """Bracketed items: on one line, or one per line when a comment is inside."""
        self.put(opening)
        token = self.next()
        if self.codes[opening.bracket] & _HAS_COMMENT:
            outer = self.p.cur_indent
            inner = outer + INDENT
            while token.kind != close:
                self.p.brk(inner)
                write(token)
                self.p.text_(",")
                token = self.after_item()
            self.p.brk(outer, comment_indent=inner)
        else:
            first = True
            while token.kind != close:
                if not first:
                    self.p.text_(",")
                    self.p.sp()
                first = False
                write(token)
                token = self.after_item()
        self.put(token)

    def after_item(self) -> _Tok:
        """The token after an item and its ',' if one follows: the next item or the bracket."""
        token = self.next()
        return self.next() if token.kind == "," else token

    def list_(self, opening: _Tok) -> None:
        """A list with a comment, a list or a call inside (else it is a row)."""
        code = self.codes[opening.bracket]
        if code & _HAS_LIST and not code & _HAS_COMMENT:
            self.matrix(opening)
        else:
            self.items(opening, "]", self.value)

    def matrix(self, opening: _Tok) -> None:
        """A list of lists, one item per line, aligned under the first as a matrix is. (With
        one item, this is what `items` writes.)"""
        self.put(opening)
        column = self.p.column()
        token = self.next()
        first = True
        while token.kind != "]":
            if not first:
                self.p.text_(",")
                self.p.brk(column)
            first = False
            self.value(token)
            token = self.after_item()
        self.put(token)

    def row(self, token: _Tok) -> None:
        """A list of scalars (numbers, names, strings): on one line if it fits in WIDTH columns,
        else filled line by line, continuation lines aligned after the bracket."""
        start, end = token.start, token.end
        self.p.put("[", start, token.line)
        self.p.fill(_ROW_ITEM.findall(self.text, start + 1, end - 1))
        self.p.put("]", end - 1, token.line + self.text.count("\n", start, end))


# --------------------------------------------------------------------------- the printer


class _Comment(NamedTuple):
    start: int  # source offset
    line: int  # source line
    text: str  # from its '#' to the end of its line


@dataclass
class _Break:
    """A pending line break: the next token starts a line at `indent`; comments flushed before
    it go at `comment_indent`; `blank` says whether a blank line may come first ("none"),
    comes first ("force") or comes where the source had one ("keep")."""

    indent: int
    comment_indent: int
    blank: str


class _Printer:
    """Collects output lines. Tokens carry their source position, so the comments that came
    before a token in the source are written out just before it. Comments come from two
    places, in source order each: those outside list literals, all known at the start
    (`comments`), and those inside the literal being laid out, queued as it is read (`inner`)."""

    def __init__(self, text: str, comments: list[_Comment], commented_lists: list[int]) -> None:
        self.text = text
        self.comments = deque(comments)  # those not written yet
        self.comment_starts = [c.start for c in comments]
        self.commented_lists = commented_lists  # offsets of literals with a comment inside
        self.inner: deque[_Comment] = deque()
        self.out: list[str] = []
        self.cur: list[str] | None = None  # the line being built; None at the start of a line
        self.cur_len = 0  # its length
        self.cur_indent = 0
        self.pending: _Break | None = _Break(0, 0, "none")
        self.space = False
        self.last_line: int | None = None  # index in `out` of the line with the last token
        self.commented: set[int] = set()  # indices in `out` of lines that end with a comment
        self.last_src = 0  # source line of the last thing written

    # ------------------------------------------------------------------ queries

    def has_comment(self, start: int, end: int) -> bool:
        """Whether a comment starts between source offsets `start` and `end` (one inside a
        list literal counts when the literal starts there)."""
        return _any_between(self.comment_starts, start, end) or _any_between(
            self.commented_lists, start, end
        )

    def column(self) -> int:
        if self.cur is not None:
            return self.cur_len + (1 if self.space else 0)
        return self.pending.indent if self.pending is not None else 0

    # ------------------------------------------------------------------ output

    def brk(self, indent: int, blank: str = "none", comment_indent: int | None = None) -> None:
        """End the current line; the next token starts a new one."""
        self._end_line()
        self.pending = _Break(indent, indent if comment_indent is None else comment_indent, blank)

    def sp(self) -> None:
        self.space = True

    def token(self, token: Token) -> None:
        """Write a source token, after the comments that came before it."""
        self.put(str(token), _start(token), token.line or 1)

    def put(self, text: str, start: int, line: int) -> None:
        """Write `text`, which stands at source offset `start` and line `line`, after the
        comments that came before it."""
        if self.inner or (self.comments and self.comments[0].start < start):
            self._flush_comments(start)
        self.text_(text, line)

    def text_(self, text: str, src_line: int | None = None) -> None:
        """Write `text` (a token's text, or punctuation the layout adds)."""
        if self.cur is None:
            brk = self.pending or _Break(self.cur_indent, self.cur_indent, "none")
            if src_line is not None:
                self._blank_before(brk, src_line)
            self.cur = [" " * brk.indent]
            self.cur_len = brk.indent
            self.cur_indent = brk.indent
            self.pending = None
        elif self.space:
            self.cur.append(" ")
            self.cur_len += 1
        self.space = False
        self.cur.append(text)
        self.cur_len += len(text)
        self.last_line = len(self.out)
        if src_line is not None:
            self.last_src = max(self.last_src, src_line)

    def fill(self, items: list[str]) -> None:
        """Write a row's items, just after its '[': ", " between two items, or "," and a line
        break when the next item and the ',' or ']' after it would end past WIDTH, continuation
        lines starting under the first item. This is what `text_`, `sp` and `brk` would do item
        by item (no comment stands among them, so none is written), in one loop for the sake of
        rows of thousands of numbers."""
        cur = self.cur
        assert cur is not None and not self.space
        column = at = self.cur_len
        for i, item in enumerate(items):
            if i:
                if at + 3 + len(item) > WIDTH:  # ", ", the item and the ',' or ']' after it
                    cur.append(",")
                    self.out.append("".join(cur).rstrip())
                    cur = self.cur = [" " * column]
                    self.cur_indent = at = column
                else:
                    cur.append(", ")
                    at += 2
            cur.append(item)
            at += len(item)
        self.cur_len = at
        self.last_line = len(self.out)

    def finish(self) -> str:
        self._flush_comments(len(self.text) + 1, at_end=True)
        self._end_line()
        while self.out and not self.out[-1]:
            self.out.pop()
        if not self.out:
            return ""
        self.out.append("")  # the final line break, without copying the text once more
        return "\n".join(self.out)

    # ------------------------------------------------------------------ internals

    def _end_line(self) -> None:
        if self.cur is not None:
            self.out.append("".join(self.cur).rstrip())
            self.cur = None
        self.space = False

    def _blank_before(self, brk: _Break, src_line: int) -> None:
        """A blank line before the next thing, as the break's policy says; a forced blank
        line is spent on the first thing written after the break."""
        if not self.out or not self.out[-1]:
            return  # never at the top of the file, never two in a row
        if brk.blank == "force" or (brk.blank == "keep" and src_line - self.last_src >= 2):
            self.out.append("")
        if brk.blank == "force":
            brk.blank = "keep"

    def _flush_comments(self, before: int, at_end: bool = False) -> None:
        """Write the comments that start before source offset `before`, in source order."""
        inner, outer = self.inner, self.comments
        while True:
            first = inner if inner and (not outer or inner[0].start < outer[0].start) else outer
            if not first or first[0].start >= before:
                return
            self._comment(first.popleft(), at_end)

    def _trailing(self, comment: _Comment) -> bool:
        """Whether code comes before the comment on its source line."""
        start = self.text.rfind("\n", 0, comment.start) + 1
        return bool(self.text[start : comment.start].strip())

    def _comment(self, comment: _Comment, at_end: bool) -> None:
        text = comment.text.rstrip()
        line = comment.line
        # A line takes one trailing comment: a second would merge into the first on re-reading.
        if (
            self._trailing(comment)
            and self.last_line is not None
            and (self.last_line not in self.commented)
        ):
            if self.cur is not None and self.last_line == len(self.out):
                # After code on the line being built: end the line with the comment; what
                # follows continues on the next line, indented one more level.
                self.cur.append("  " + text)
                self.cur_len += 2 + len(text)
                self.commented.add(len(self.out))
                self._continue_after_comment(at_end)
                self.last_src = max(self.last_src, line)
                return
            if self.cur is None and self.last_line == len(self.out) - 1:
                self.out[-1] += "  " + text
                self.commented.add(len(self.out) - 1)
                self.last_src = max(self.last_src, line)
                return
        if self.cur is not None:
            # A comment on a line of its own in the middle of a construct that has no line
            # break there: break the line, and continue one level deeper.
            self._continue_after_comment(at_end)
        brk = self.pending or _Break(self.cur_indent, self.cur_indent, "none")
        self.pending = brk
        self._blank_before(brk, line)
        self.out.append(" " * brk.comment_indent + text)
        self.last_src = max(self.last_src, line)

    def _continue_after_comment(self, at_end: bool) -> None:
        deeper = self.cur_indent + INDENT
        self._end_line()
        self.pending = _Break(deeper, deeper, "none") if not at_end else _Break(0, 0, "keep")


def _any_between(offsets: list[int], start: int, end: int) -> bool:
    """Whether one of the increasing `offsets` is in [start, end)."""
    i = bisect.bisect_left(offsets, start)
    return i < len(offsets) and offsets[i] < end


# --------------------------------------------------------------------------- the layout


def _start(token: Token) -> int:
    assert token.start_pos is not None  # the lexer places every token
    return token.start_pos


def _end(token: Token) -> int:
    assert token.end_pos is not None
    return token.end_pos


def _leaf(tree: Tree) -> Token:
    """The token of a scalar value's tree (`number`, `string`, `name`, ...)."""
    token = tree.children[0]
    assert isinstance(token, Token)
    return token


def _tokens(tree: Tree) -> list[Token]:
    return [c for c in tree.children if isinstance(c, Token)]


def _trees(tree: Tree) -> list[Tree]:
    return [c for c in tree.children if isinstance(c, Tree)]


class _Layout:
    """Walks lark's tree of the blanked text (all tokens kept) and tells the printer what to
    write where; a list literal, blanked to `[ ]` there, is laid out from its text by
    `_ListLayout`. Blocks and argument lists that go over several lines indent their items one
    level deeper than the line their opening bracket is on."""

    def __init__(self, printer: _Printer, text: str, literals: _Literals) -> None:
        self.p = printer
        self.text = text
        self.literals = literals

    def program(self, tree: Tree) -> None:
        for i, item in enumerate(tree.children):
            self.p.brk(0, "keep" if i == 0 else "force")
            if item.data == "model":
                self.model(item)
            else:
                self.test(item)
        self.p.brk(0, "keep")

    def model(self, tree: Tree) -> None:
        keyword, name, *_ = _tokens(tree)
        self.p.token(keyword)
        self.p.sp()
        self.p.token(name)
        options = [t for t in _trees(tree) if t.data == "options"]
        if options and (_trees(options[0]) or self._comment_inside(options[0])):
            self.arguments(options[0])
        self.body(tree, [t for t in _trees(tree) if t.data == "layer"], self.layer)

    def test(self, tree: Tree) -> None:
        keyword, name, *_ = _tokens(tree)
        self.p.token(keyword)
        self.p.sp()
        self.p.token(name)
        self.body(tree, _trees(tree), self.entry)

    def body(self, tree: Tree, items: list[Tree], write: Callable[[Tree], None]) -> None:
        """`{ items }` closing `tree`: one item per line, one level deeper; `{}` when empty."""
        braces = [t for t in _tokens(tree) if t.type in ("LBRACE", "RBRACE")]
        lbrace, rbrace = braces[0], braces[-1]
        self.p.sp()
        self.p.token(lbrace)
        if not items and not self.p.has_comment(_start(lbrace), _start(rbrace)):
            self.p.token(rbrace)
            return
        outer = self.p.cur_indent
        inner = outer + INDENT
        for i, item in enumerate(items):
            self.p.brk(inner, "none" if i == 0 else "keep")
            write(item)
        self.p.brk(outer, "none", comment_indent=inner)
        self.p.token(rbrace)

    def layer(self, tree: Tree) -> None:
        tokens = _tokens(tree)
        if len(tokens) >= 2 and tokens[1].type == "EQUAL":
            self.p.token(tokens[0])
            self.p.sp()
            self.p.token(tokens[1])
            self.p.sp()
            kind = tokens[2]
        else:
            kind = tokens[0]
        self.p.token(kind)
        subtrees = _trees(tree)
        arguments = [t for t in subtrees if t.data == "arguments"]
        if arguments:
            self.arguments(arguments[0])
        else:
            self.p.text_("()")
        for block in (t for t in subtrees if t.data == "block"):
            self.body(block, _trees(block), self.entry)

    def entry(self, tree: Tree) -> None:
        name, equal, *_ = _tokens(tree)
        self.p.token(name)
        self.p.sp()
        self.p.token(equal)
        self.p.sp()
        self.value(_trees(tree)[0])

    # ------------------------------------------------------------------ values

    def _comment_inside(self, tree: Tree) -> bool:
        tokens = _tokens(tree)
        return self.p.has_comment(_start(tokens[0]), _end(tokens[-1]))

    def arguments(self, tree: Tree) -> None:
        """`(a, b=c)` for arguments and options; one per line with a comment inside."""
        brackets = [t for t in _tokens(tree) if t.type in ("LPAR", "RPAR")]
        self.items(brackets[0], brackets[-1], _trees(tree), self.argument)

    def argument(self, tree: Tree) -> None:
        if tree.data == "keyword":
            name, equal = _tokens(tree)
            self.p.token(name)
            self.p.token(equal)
        self.value(_trees(tree)[0])

    def items(
        self, open_: Token, close: Token, items: list[Tree], write: Callable[[Tree], None]
    ) -> None:
        """Bracketed items: on one line, or one per line when a comment is inside."""
        self.p.token(open_)
        if self.p.has_comment(_start(open_), _start(close)):
            outer = self.p.cur_indent
            inner = outer + INDENT
            for item in items:
                self.p.brk(inner)
                write(item)
                self.p.text_(",")
            self.p.brk(outer, comment_indent=inner)
        else:
            for i, item in enumerate(items):
                if i:
                    self.p.text_(",")
                    self.p.sp()
                write(item)
        self.p.token(close)

    def value(self, tree: Tree) -> None:
        if tree.data in _SCALARS:
            self.p.token(_leaf(tree))
        elif tree.data == "call":
            tokens = _tokens(tree)
            self.p.token(tokens[0])
            brackets = [t for t in tokens if t.type in ("LPAR", "RPAR")]
            self.items(brackets[0], brackets[-1], _trees(tree), self.argument)
        elif tree.data == "list":
            opening = _tokens(tree)[0]
            _ListLayout(self.p, self.text, self.literals, _start(opening), opening.line or 1).run()
        else:
            raise AssertionError(f"fmt cannot lay out a {tree.data!r} value")
