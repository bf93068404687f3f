"""The one .lyr printer: a syntax tree in, its canonical text out.

Every .lyr text layerc writes comes from here. `layerc fmt` parses a source and prints its tree
with the source beside it (`print_program(program, source)`), which puts every comment and blank
line back where it stood; `layerc import` builds a tree from an ONNX graph and prints it alone
(`print_program(program)`), its comments carried by the tree (`comments` of models, tests and
layers, each written on its own line before the item).

The layout: four spaces per level; one statement per line; one blank line between top-level items
(and, with the source, blank lines between statements where it had one); `name = value` in entries
and `name=value` in arguments, as in Python; `Kind()` with its parentheses; a list of lists written
one row per line, aligned like a matrix; a long list wrapped at 100 columns; `;` and `,`
separators dropped. A graph model's forward block comes after its layers, a blank line apart; its
expressions are written as Python writes them (`h = fc2(act(x)) * -y`: spaces around binary
operators, none after a unary minus, parentheses only where precedence needs them), wrapped at 100
columns (see "expressions" below); a test's tuple is `(a, b)`, or one item per line when it holds a
matrix or does not fit. A bracketed group with a comment inside is written one item per line. A
comment is one line, `# text`; a comment of a built tree has every character that is not printable
(line breaks of any kind among them) replaced by '?', so nothing in it can end the line and start
code. Only layout changes: numbers are written as their `text`, strings in double quotes with the
grammar's two escapes (`\\"` and `\\\\`), so the text parses back to the same tree; a name that
is not a .lyr name, a number text that is not a .lyr number, a string with a line break or an
expression nested deeper than the parser allows is a bug in the tree, refused with ValueError.

With the source, each comment goes back before the first token that followed it there: a comment
that ended a line of code stays at the end of that line, one on a line of its own stays on its own
line. List literals, which can be megabytes of numbers, are laid out from their text, in time and
memory linear in it: one pass over the source finds what the layout must know about every bracket
(`_scan`), and each literal is laid out from a light stream of its own tokens (`_ListLayout`).
"""

from __future__ import annotations

import bisect
import math
import re
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import syntax as S

WIDTH = 100
INDENT = 4
_KEYWORDS = frozenset({"model", "test", "true", "false"})
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The grammar's NUMBER and SIGNED_SPECIAL, and the names inf and nan, which read as numbers.
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|nan)")


def print_program(program: S.Program, source: str | None = None) -> str:
    """The canonical text of `program`. With `source`, the text `program` was parsed from, its
    comments and blank lines are kept; without it, the tree is printed alone (the comments of a
    tree built in code, and any inside its list literals, which carry their text)."""
    if source is None:
        writer = _Writer([], [])
        _Layout(writer, None).program(program)
    else:
        scan = _scan(source)
        writer = _Writer(scan.comments, scan.commented)
        _Layout(writer, _Source(source, scan)).program(program)
    return writer.finish()


def string_literal(value: str) -> str:
    """`value` as a .lyr string: in double quotes, `\\` and `"` escaped (the grammar's only
    escapes). A string cannot hold a line break: one raises ValueError."""
    if "\n" in value:
        raise ValueError(f"{value!r} has characters a .lyr string cannot hold (a line break)")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment_line(text: str) -> str:
    """`text` as a comment line: `# text`, every character that is not printable replaced by
    '?' (so that no line break of any kind, or a character that hides text, gets in)."""
    safe = "".join(ch if ch.isprintable() else "?" for ch in text)
    return f"# {safe}".rstrip()


def _name(text: str) -> str:
    """A name as the grammar reads it (not a keyword); anything else is a bug in the tree."""
    if not _NAME.fullmatch(text) or text in _KEYWORDS:
        raise ValueError(f"{text!r} is not a .lyr name")
    return text


def _number(node: S.Number) -> str:
    if not _NUMBER_TEXT.fullmatch(node.text):
        raise ValueError(f"{node.text!r} is not a .lyr number")
    return node.text


# --------------------------------------------------------------------------- the source
#
# How a list is laid out depends on what is inside it: a comment (then one item per line), a
# list among its items (then one item per line, aligned under the first as a matrix is), a call
# (then all on one line), or nothing but scalars (then filled line by line up to WIDTH). That
# must be known before its first item is written, so `_scan` finds it out for every bracket of
# every literal in one pass over the text, and keeps it in a byte per bracket with the offset of
# the closing bracket, numbered in source order as `_ListLayout` numbers them while it reads. A
# list of scalars without comments, a row, is then read as one token. The same pass finds the
# comments outside literals and where each '(' and '{' outside them closes.
#
# The patterns here repeat groups only where the text needs one step per group (per escape in a
# string, say), not per character: `re` keeps a backtracking record per repetition of a group,
# about 190 bytes, which for a group repeated over a row of numbers is 190 bytes per byte.

_IS_LIST = 1  # a '[' (else a call's '(')
_HAS_COMMENT = 2  # a comment stands between the bracket and its closing one
_HAS_LIST = 4  # a list among the list's items
_HAS_CALL = 8  # a call among the list's items
_NOT_A_ROW = _HAS_COMMENT | _HAS_LIST | _HAS_CALL

# What a pass over the text stops at: comments and strings (read whole, so that the brackets and
# quotes inside them are skipped) and brackets. The text has parsed, so every '"' opens a string
# the grammar's STRING reads whole and every '#' outside one a comment.
_STRING = r'"[^"\\\n]*(?:\\[^\n][^"\\\n]*)*"'  # the grammar's STRING, one step per escape
_EVENT = re.compile(rf"#[^\n]*|{_STRING}|[\[\](){{}}]")
# What stands between two tokens: white space, comments, and the separators ',' and ';', which
# the layout drops (and writes again where it wants them).
_GAP = re.compile(r"(?:[ \t\f\r\n,;]+|#[^\n]*)*")


class _Comment(NamedTuple):
    start: int  # source offset
    line: int  # source line
    text: str  # from its '#' to the end of its line
    trailing: bool  # code comes before it on its source line


@dataclass
class _Scan:
    """What one pass over a text found (see above)."""

    spans: dict[int, tuple[int, int]]  # offset of a literal's '[': (offset past its ']', number)
    codes: bytearray  # for each bracket inside literals, by number: the flags above
    closes: array[int]  # for each bracket inside literals: the offset just past its closing one
    commented: list[int]  # offsets of the literals with a comment inside, increasing
    comments: list[_Comment]  # the comments outside literals, in order
    brackets: dict[int, int]  # each '(' and '{' outside literals: the offset of its closing one


def _scan(text: str, start: int = 0, end: int | None = None) -> _Scan:
    """One pass over `text[start:end]`, a text that parses (or one list literal of such a text)."""
    result = _Scan({}, bytearray(), array("q"), [], [], {})
    codes, closes, spans = result.codes, result.closes, result.spans
    stack: list[int] = []  # the numbers of the open brackets of the literal being read
    outer: list[int] = []  # offsets of the open '(' and '{' outside literals
    literal = 0  # offset of its '['
    line, counted = 1, 0  # text[counted] is on line `line`
    for m in _EVENT.finditer(text, start, len(text) if end is None else end):
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
                outer.append(at)  # the arguments of a layer, call or model outside any literal
                continue
            stack.append(len(codes))
            codes.append(_IS_LIST if ch == "[" else 0)
            closes.append(0)
        elif ch == "]" or ch == ")":
            if not stack:
                result.brackets[outer.pop()] = at
                continue
            bracket = stack.pop()
            closes[bracket] = m.end()
            comment = codes[bracket] & _HAS_COMMENT
            if stack:
                codes[stack[-1]] |= comment
                continue
            spans[literal] = (m.end(), spans[literal][1])
            if comment:
                result.commented.append(literal)
        elif ch == "{":
            outer.append(at)
        elif ch == "}":
            result.brackets[outer.pop()] = at
        elif ch == "#":
            if stack:
                codes[stack[-1]] |= _HAS_COMMENT
                continue
            line += text.count("\n", counted, at)
            counted = at
            result.comments.append(_Comment(at, line, m.group(), _after_code(text, at)))
    return result


def _after_code(text: str, at: int) -> bool:
    """Whether code comes before offset `at` on its line."""
    return bool(text[text.rfind("\n", 0, at) + 1 : at].strip())


class _Source:
    """The source a tree was parsed from, read alongside the tree: where each token the layout
    writes stands. The layout writes the tree's tokens in source order, so each is the next
    token of the source once the gap before it (white space, comments, separators) is skipped."""

    def __init__(self, text: str, scan: _Scan):
        self.text = text
        self.scan = scan
        self.pos = 0
        self.line = 1
        self.line_pos = 0  # text[line_pos] is on line `line`

    def next_start(self) -> int:
        """The offset of the next token."""
        m = _GAP.match(self.text, self.pos)
        assert m is not None  # the pattern matches the empty string
        return m.end()

    def take(self, token: str) -> tuple[int, int]:
        """Step over the next token, which must be `token`: its offset and line."""
        start = self.next_start()
        if not self.text.startswith(token, start):
            raise AssertionError(f"the printer lost its place: {token!r} is not at {start}")
        self.line += self.text.count("\n", self.line_pos, start)
        self.line_pos = start
        self.pos = start + len(token)
        return start, self.line

    def skip_to(self, end: int) -> None:
        """Step over source text that the layout has read otherwise (a list literal)."""
        self.line += self.text.count("\n", self.line_pos, end)
        self.pos = self.line_pos = end

    def closing(self, start: int) -> int:
        """The offset of the bracket that closes the '(' or '{' at `start`."""
        return self.scan.brackets[start]

    def skip_parens(self, opening: bool = True) -> None:
        """Step over the parentheses that come next (only the ')'s unless `opening`): in an
        expression, those the layout does not write, as precedence does not need them."""
        while True:
            start = self.next_start()
            ch = self.text[start : start + 1]
            if ch == ")" or (opening and ch == "("):
                self.take(ch)
            else:
                return

    def skip_closers(self, end: int) -> None:
        """Step over the ')'s before offset `end` (where a call's own ')' stands)."""
        while self.next_start() < end:
            self.take(")")


# --------------------------------------------------------------------------- list literals

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
    bracket: int  # the number of a '[', '(' or row (see `_scan`); -1 for the others


class _ListLayout:
    """Reads one list literal's tokens and tells the writer what to write where: the literal
    follows the grammar's `value`, `list`, `call` and `arg` rules (it has parsed). Comments met
    on the way are queued in the writer, which writes them before the first token that follows
    them."""

    def __init__(self, writer: _Writer, text: str, scan: _Scan, start: int, line: int):
        self.p = writer
        self.text = text
        self.codes = scan.codes
        self.closes = scan.closes
        self.end, self.bracket = scan.spans[start]
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
                trailing = _after_code(self.text, start)
                self.p.inner.append(_Comment(start, self.line, m.group(kind), trailing))
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


# --------------------------------------------------------------------------- the writer


@dataclass
class _Break:
    """A pending line break: the next token starts a line at `indent`; comments written before
    it go at `comment_indent`; `blank` says whether a blank line may come first ("none"),
    comes first ("force") or comes where the source had one ("keep")."""

    indent: int
    comment_indent: int
    blank: str


class _Writer:
    """Collects output lines. A token written with its place in the source (offset and line)
    has the source's comments that came before it written out just before it. Those come from
    two places, in source order each: the comments outside list literals, all known at the start
    (`comments`), and those inside the literal being laid out, queued as it is read (`inner`)."""

    def __init__(self, comments: list[_Comment], commented_lists: list[int]) -> None:
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
        """Whether a source comment starts between offsets `start` and `end` (one inside a
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

    def align(self, column: int) -> None:
        """Let the line being built count as indented to `column` (for the lines that continue
        what comes next), as a line broken to `column` would be."""
        self.cur_indent = column

    def put(self, text: str, start: int | None, line: int | None) -> None:
        """Write a token's `text`; with its place in the source (offset `start`, line `line`),
        after the source's comments that came before it."""
        if start is not None and (self.inner or (self.comments and self.comments[0].start < start)):
            self._flush_comments(start)
        self.text_(text, line)

    def text_(self, text: str, src_line: int | None = None) -> None:
        """Write `text` (a token's text, or punctuation the layout adds)."""
        if self.cur is None:
            brk = self.pending or _Break(self.cur_indent, self.cur_indent, "none")
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

    def comment(self, text: str) -> None:
        """A comment of the tree, on a line of its own before what comes next."""
        self._comment(comment_line(text), None, trailing=False, at_end=False)

    def finish(self) -> str:
        self._flush_comments(math.inf, at_end=True)
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

    def _blank_before(self, brk: _Break, src_line: int | None) -> None:
        """A blank line before the next thing, as the break's policy says (a blank line of the
        source is known only with the source); a forced blank line is spent on the first thing
        written after the break."""
        if not self.out or not self.out[-1]:
            return  # never at the top of the file, never two in a row
        if brk.blank == "force" or (
            brk.blank == "keep" and src_line is not None and src_line - self.last_src >= 2
        ):
            self.out.append("")
        if brk.blank == "force":
            brk.blank = "keep"

    def _flush_comments(self, before: float, at_end: bool = False) -> None:
        """Write the source comments that start before offset `before`, in source order."""
        inner, outer = self.inner, self.comments
        while True:
            first = inner if inner and (not outer or inner[0].start < outer[0].start) else outer
            if not first or first[0].start >= before:
                return
            comment = first.popleft()
            self._comment(comment.text, comment.line, comment.trailing, at_end)

    def _comment(self, text: str, line: int | None, trailing: bool, at_end: bool) -> None:
        text = text.rstrip()
        # A line takes one trailing comment: a second would merge into the first on re-reading.
        if trailing and self.last_line is not None and (self.last_line not in self.commented):
            if self.cur is not None and self.last_line == len(self.out):
                # After code on the line being built: end the line with the comment; what
                # follows continues on the next line, indented one more level.
                self.cur.append("  " + text)
                self.cur_len += 2 + len(text)
                self.commented.add(len(self.out))
                self._continue_after_comment(at_end)
                self._seen(line)
                return
            if self.cur is None and self.last_line == len(self.out) - 1:
                self.out[-1] += "  " + text
                self.commented.add(len(self.out) - 1)
                self._seen(line)
                return
        if self.cur is not None:
            # A comment on a line of its own in the middle of a construct that has no line
            # break there: break the line, and continue one level deeper.
            self._continue_after_comment(at_end)
        brk = self.pending or _Break(self.cur_indent, self.cur_indent, "none")
        self.pending = brk
        self._blank_before(brk, line)
        self.out.append(" " * brk.comment_indent + text)
        self._seen(line)

    def _seen(self, line: int | None) -> None:
        if line is not None:
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


class _Layout:
    """Walks a syntax tree and tells the writer what to write where. With the source, each
    token is written with its place there (`_Source`), so that the comments before it come
    first; list literals are laid out from their text (`_ListLayout`). Blocks and bracketed
    groups that go over several lines indent their items one level deeper than the line their
    opening bracket is on."""

    def __init__(self, writer: _Writer, source: _Source | None) -> None:
        self.w = writer
        self.src = source
        self.scans: dict[int, _Scan] = {}  # without the source: each literal's own, by id

    def tok(self, text: str) -> None:
        if self.src is None:
            self.w.put(text, None, None)
        else:
            self.w.put(text, *self.src.take(text))

    def program(self, program: S.Program) -> None:
        for i, item in enumerate(program.items):
            self.w.brk(0, "keep" if i == 0 else "force")
            for comment in item.comments:
                self.w.comment(comment)
            if isinstance(item, S.ModelDef):
                self.model(item)
            else:
                self.test(item)
        self.w.brk(0, "keep")

    def model(self, node: S.ModelDef) -> None:
        self.tok("model")
        self.w.sp()
        self.tok(_name(node.name))
        parens = self.src is not None and self.src.text.startswith("(", self.src.next_start())
        if node.options or (parens and self.comment_inside(())):
            self.items("(", node.options, ")", self.argument)
        elif parens:
            assert self.src is not None
            self.src.take("(")  # `model M() {` is written `model M {`, as with no options
            self.src.take(")")
        self.body(node.layers, self.layer, node.forward)

    def test(self, node: S.TestDef) -> None:
        self.tok("test")
        self.w.sp()
        self.tok(_name(node.model))
        self.body(node.entries, self.test_entry)

    def body(
        self,
        items: Sequence[S.LayerDef] | Sequence[S.Entry],
        write: Callable[[Any], None],
        forward: S.ForwardDef | None = None,
    ) -> None:
        """`{ items }`: one item per line, one level deeper; `{}` when empty. A model's forward
        block comes after its layers, a blank line apart."""
        self.w.sp()
        if not items and forward is None and not self.comment_inside(()):
            self.tok("{")
            self.tok("}")
            return
        self.tok("{")
        outer = self.w.cur_indent
        inner = outer + INDENT
        for i, item in enumerate(items):
            self.w.brk(inner, "none" if i == 0 else "keep")
            if isinstance(item, S.LayerDef):
                for comment in item.comments:
                    self.w.comment(comment)
            write(item)
        if forward is not None:
            self.w.brk(inner, "force" if items else "none")
            self.forward(forward)
        self.w.brk(outer, "none", comment_indent=inner)
        self.tok("}")

    def layer(self, node: S.LayerDef) -> None:
        if node.name is not None:
            self.tok(_name(node.name))
            self.w.sp()
            self.tok("=")
            self.w.sp()
        self.tok(_name(node.kind))
        if node.has_parens or node.args:
            self.items("(", node.args, ")", self.argument)
        else:
            self.w.text_("()")
        if node.entries is not None:
            self.body(node.entries, self.entry)

    def entry(self, node: S.Entry, tuples: bool = False) -> None:
        self.tok(_name(node.name))
        self.w.sp()
        self.tok("=")
        self.w.sp()
        if isinstance(node.value, S.TupleLit):
            if not tuples:
                raise ValueError("a tuple is the value of a test's entry only")
            self.tuple_literal(node.value)
        else:
            self.value(node.value)

    def test_entry(self, node: S.Entry) -> None:
        self.entry(node, tuples=True)

    # ------------------------------------------------------------------ forward blocks

    def forward(self, node: S.ForwardDef) -> None:
        """`forward(inputs) {`, one statement per line one level deeper, `}`."""
        if not node.inputs:
            raise ValueError("a forward block has at least one input")
        self.tok("forward")
        self.items("(", node.inputs, ")", self.input)
        self.w.sp()
        self.tok("{")
        outer = self.w.cur_indent
        inner = outer + INDENT
        statements: list[S.Assign | S.Return] = [*node.body, node.result]
        for i, statement in enumerate(statements):
            self.w.brk(inner, "none" if i == 0 else "keep")
            if isinstance(statement, S.Assign):
                self.tok(_forward_name(statement.name))
                self.w.sp()
                self.tok("=")
                self.w.sp()
                self.expression(statement.value, 0)
            else:
                self.tok("return")
                self.w.sp()
                self.results(statement.values)
            if self.src is not None:
                self.src.skip_parens(opening=False)  # of parentheses the layout dropped
        self.w.brk(outer, "none", comment_indent=inner)
        self.tok("}")

    def input(self, node: S.Input) -> None:
        """`x`, `mask: 8` or `img: [1, 28, 28]` (with the source, the annotation as written)."""
        self.tok(_forward_name(node.name))
        if node.shape is None:
            return
        sizes = [_size(n) for n in node.shape]
        self.tok(":")
        self.w.sp()
        if self.src is not None:
            start = self.src.next_start()
            if self.src.text.startswith("[", start):
                at, line = self.src.take("[")
                _ListLayout(self.w, self.src.text, self.src.scan, at, line).run()
                self.src.skip_to(self.src.scan.spans[at][0])
            else:
                m = _DIGITS.match(self.src.text, start)
                assert m is not None, "an annotation is digits or a list"
                self.tok(m.group())
        elif len(sizes) == 1:
            self.tok(sizes[0])
        else:
            self.tok("[")
            for i, size in enumerate(sizes):
                if i:
                    self.w.text_(",")
                    self.w.sp()
                self.tok(size)
            self.tok("]")

    def results(self, values: Sequence[S.Expr]) -> None:
        """The values of `return`: `a, b` on the line when they fit, else one per line, aligned
        under the first."""
        if not values:
            raise ValueError("return returns at least one value")
        widths = [_checked_width(v) for v in values]
        if len(values) == 1 or self.w.column() + sum(widths) + 2 * (len(values) - 1) <= WIDTH:
            for i, value in enumerate(values):
                if i:
                    self.w.text_(",")
                    self.w.sp()
                self.expression(value, 0 if i == len(values) - 1 else 1)
            return
        column = self.w.column()
        self.w.align(column)  # what the first value continues is indented as the others' is
        for i, value in enumerate(values):
            if i:
                self.w.text_(",")
                self.w.brk(column)
            self.expression(value, 0 if i == len(values) - 1 else 1)

    # ------------------------------------------------------------------ expressions
    #
    # An expression is written on its line when it fits in WIDTH (with `after` columns for what
    # follows it there); else its outermost parts are laid out over several lines: a call one
    # argument per line, a chain of + and - (or of *) one operator and operand per line, one
    # level deeper than the line it starts on, and the parts of each again so. A call with a
    # comment inside is written one argument per line, as any bracketed group.

    def expression(self, node: S.Expr, after: int) -> None:
        _checked_width(node)  # refuses what no .lyr text can hold, before any recursion
        self.expr(node, after)

    def etok(self, text: str) -> None:
        """An expression's token: with the source, after the parentheses the layout drops."""
        if self.src is not None:
            self.src.skip_parens()
        self.tok(text)

    def expr(self, node: S.Expr, after: int) -> None:
        fits = self.w.column() + _width(node) + after <= WIDTH
        if isinstance(node, S.Ref):
            self.etok(_forward_name(node.name))
        elif isinstance(node, S.Num):
            self.etok(_num(node.text))
        elif isinstance(node, S.Neg):
            self.etok("-")
            self.operand(node.operand, _precedence(node.operand) < _UNARY, after)
        elif isinstance(node, S.Apply):
            self.apply(node, fits, after)
        elif isinstance(node, S.BinOp):
            self.chain(node, fits, after)
        else:
            raise AssertionError(f"the printer cannot write a {type(node).__name__}")

    def operand(self, node: S.Expr, parens: bool, after: int) -> None:
        """An operand, in parentheses when precedence needs them: on the line if they fit, else
        `(`, the operand one level deeper, `)`."""
        if not parens:
            self.expr(node, after)
            return
        if self.src is not None:
            self.src.skip_parens(opening=False)
        if self.w.column() + _width(node) + 2 + after <= WIDTH:
            self.tok("(")
            self.expr(node, 1 + after)
            self.tok(")")
            return
        self.tok("(")
        outer = self.w.cur_indent
        self.w.brk(outer + INDENT)
        self.expr(node, 0)
        self.w.brk(outer)
        self.tok(")")

    def apply(self, node: S.Apply, fits: bool, after: int) -> None:
        self.etok(_forward_name(node.callee))
        inside = self.src is not None and self.comment_inside(())
        lpar = self.src.next_start() if self.src is not None else 0
        self.tok("(")
        last = len(node.args) - 1
        if fits and not inside:
            for i, arg in enumerate(node.args):
                if i:
                    self.w.text_(",")
                    self.w.sp()
                self.expr(arg, 0 if i == last else 1)
        else:
            outer = self.w.cur_indent
            inner = outer + INDENT
            for arg in node.args:
                self.w.brk(inner)
                self.expr(arg, 1)
                self.w.text_(",")
            self.w.brk(outer, comment_indent=inner)
        if self.src is not None:
            self.src.skip_closers(self.src.closing(lpar))
        self.tok(")")

    def chain(self, node: S.BinOp, fits: bool, after: int) -> None:
        """`a + b - c` (or `a * b * c`): the operands of one precedence, left to right."""
        level = _precedence(node)
        rest: list[tuple[str, S.Expr]] = []
        first: S.Expr = node
        while isinstance(first, S.BinOp) and _precedence(first) == level:
            rest.append((first.op, first.right))
            first = first.left
        rest.reverse()
        self.operand(first, _precedence(first) < level, 0)
        deeper = self.w.cur_indent + INDENT
        for i, (op, right) in enumerate(rest):
            if fits:
                self.w.sp()
            else:
                self.w.brk(deeper)
            self.etok(_operator(op))
            self.w.sp()
            self.operand(right, _precedence(right) <= level, after if i == len(rest) - 1 else 0)

    # ------------------------------------------------------------------ values

    def comment_inside(self, items: Sequence[S.Arg | S.Input | S.Value]) -> bool:
        """Whether a comment stands inside the bracketed group that comes next (its opening
        bracket not yet written): with the source, anywhere between its brackets; without, in
        one of its list literals."""
        if self.src is not None:
            start = self.src.next_start()
            return self.w.has_comment(start, self.src.closing(start))
        return any(self.literal_scan(lit).commented for lit in _literals(items))

    def items(
        self,
        opening: str,
        items: Sequence[Any],
        close: str,
        write: Callable[[Any], None],
    ) -> None:
        """Bracketed items: on one line, or one per line when a comment is inside."""
        inside = self.comment_inside(items)
        self.tok(opening)
        if inside:
            outer = self.w.cur_indent
            inner = outer + INDENT
            for item in items:
                self.w.brk(inner)
                write(item)
                self.w.text_(",")
            self.w.brk(outer, comment_indent=inner)
        else:
            for i, item in enumerate(items):
                if i:
                    self.w.text_(",")
                    self.w.sp()
                write(item)
        self.tok(close)

    def argument(self, node: S.Arg) -> None:
        if node.name is not None:
            self.tok(_name(node.name))
            self.tok("=")
        self.value(node.value)

    def value(self, node: S.Value) -> None:
        if isinstance(node, S.Number):
            self.tok(_number(node))
        elif isinstance(node, S.Bool):
            self.tok("true" if node.value else "false")
        elif isinstance(node, S.String):
            # (the grammar's two escapes are the only way to write a string, so a source's
            # strings come out as written)
            self.tok(string_literal(node.value))
        elif isinstance(node, S.Name):
            self.tok(_name(node.value))
        elif isinstance(node, S.Call):
            self.tok(_name(node.func))
            self.items("(", node.args, ")", self.argument)
        elif isinstance(node, S.ListLit):
            self.list_literal(node)
        else:
            raise AssertionError(f"the printer cannot write a {type(node).__name__}")

    def tuple_literal(self, node: S.TupleLit) -> None:
        """`(a, b)` on one line when it fits and holds no matrix (a list of lists, laid out one
        row per line) and no comment; else one item per line. A tuple of one is `(a,)`."""
        if not node.items:
            raise ValueError("a tuple literal holds at least one value")
        inside = self.comment_inside(node.items)
        flat = sum(_value_width(item, WIDTH) + 2 for item in node.items)  # items and ", "
        broken = (
            inside
            or any(isinstance(v, S.ListLit) and self.has_list(v) for v in node.items)
            or self.w.column() + flat + (1 if len(node.items) == 1 else 0) > WIDTH
        )
        self.tok("(")
        if broken:
            outer = self.w.cur_indent
            inner = outer + INDENT
            for item in node.items:
                self.w.brk(inner)
                self.value(item)
                self.w.text_(",")
            self.w.brk(outer, comment_indent=inner)
        else:
            for i, item in enumerate(node.items):
                if i:
                    self.w.text_(",")
                    self.w.sp()
                self.value(item)
            if len(node.items) == 1:
                self.w.text_(",")
        self.tok(")")

    def has_list(self, node: S.ListLit) -> bool:
        """Whether a list literal holds a list (and so is laid out one item per line)."""
        text, start, _ = node.extent
        scan = self.src.scan if self.src is not None else self.literal_scan(node)
        return bool(scan.codes[scan.spans[start][1]] & _HAS_LIST)

    def list_literal(self, node: S.ListLit) -> None:
        text, start, end = node.extent
        if self.src is not None:
            assert len(text) == len(self.src.text), "a literal of another source"
            at, line = self.src.take("[")
            assert at == start
            _ListLayout(self.w, text, self.src.scan, start, line).run()
            self.src.skip_to(end)
        else:
            _ListLayout(self.w, text, self.literal_scan(node), start, node.loc.line).run()

    def literal_scan(self, node: S.ListLit) -> _Scan:
        if id(node) not in self.scans:
            text, start, end = node.extent
            self.scans[id(node)] = _scan(text, start, end)
        return self.scans[id(node)]


def _literals(values: Sequence[S.Arg | S.Input | S.Value]) -> Iterator[S.ListLit]:
    """The list literals among arguments or values, and among the arguments of calls among
    them."""
    for item in values:
        value = item.value if isinstance(item, S.Arg) else item
        if isinstance(value, S.ListLit):
            yield value
        elif isinstance(value, S.Call):
            yield from _literals(value.args)


# --------------------------------------------------------------------------- expressions

_SUM, _PRODUCT, _UNARY, _ATOM = 1, 2, 3, 4
_OPERATORS = {"+": _SUM, "-": _SUM, "*": _PRODUCT}
# A number in an expression: the grammar's NUMBER without a '-' (`-1` is Neg(Num("1"))).
_NUM_TEXT = re.compile(r"\+?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_DIGITS = re.compile(r"\d+")


def _forward_name(text: str) -> str:
    """A name in a forward block, where `return` is a keyword too."""
    if text == "return":
        raise ValueError("'return' is not a name in a forward block")
    return _name(text)


def _precedence(node: S.Expr) -> int:
    if isinstance(node, S.BinOp):
        return _OPERATORS[_operator(node.op)]
    return _UNARY if isinstance(node, S.Neg) else _ATOM


def _operator(op: str) -> str:
    if op not in _OPERATORS:
        raise ValueError(f"{op!r} is not an operator of .lyr expressions")
    return op


def _num(text: str) -> str:
    if not _NUM_TEXT.fullmatch(text):
        raise ValueError(f"{text!r} is not a number of a .lyr expression")
    return text


def _size(size: int) -> str:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"{size!r} is not a size of an input's shape")
    return str(size)


def _checked_width(node: S.Expr) -> int:
    """`_width(node)`, after checking without recursion that the tree nests no deeper than the
    parser allows (MAX_EXPRESSION_DEPTH), so that the layout's recursion is bounded."""
    stack = [(node, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, S.Ref | S.Num):
            continue
        if depth >= S.MAX_EXPRESSION_DEPTH:
            raise ValueError(
                f"an expression nests operations more than {S.MAX_EXPRESSION_DEPTH} deep"
            )
        if isinstance(item, S.Neg):
            stack.append((item.operand, depth + 1))
        elif isinstance(item, S.BinOp):
            stack += [(item.left, depth + 1), (item.right, depth + 1)]
        elif isinstance(item, S.Apply):
            stack += [(arg, depth + 1) for arg in item.args]
        else:
            raise AssertionError(f"the printer cannot write a {type(item).__name__}")
    return _width(node)


def _width(node: S.Expr) -> int:
    """The length of `node` written on one line."""
    if isinstance(node, S.Ref):
        return len(node.name)
    if isinstance(node, S.Num):
        return len(node.text)
    if isinstance(node, S.Neg):
        parens = 2 if _precedence(node.operand) < _UNARY else 0
        return 1 + parens + _width(node.operand)
    if isinstance(node, S.Apply):
        return (
            len(node.callee) + 2 + sum(_width(a) + 2 for a in node.args) - (2 if node.args else 0)
        )
    if isinstance(node, S.BinOp):
        level = _precedence(node)
        left = _width(node.left) + (2 if _precedence(node.left) < level else 0)
        right = _width(node.right) + (2 if _precedence(node.right) <= level else 0)
        return left + 3 + right
    raise AssertionError(f"the printer cannot write a {type(node).__name__}")


# A list literal's tokens as its one-line form writes them: strings, comments (not written),
# brackets, commas and '=', and runs of anything else (numbers, names).
_FLAT_TOKEN = re.compile(rf'{_STRING}|#[^\n]*|[\[\](),=]|[^\s\[\](),="#]+')


def _value_width(node: S.Value, limit: int) -> int:
    """The length of a value written on one line, or a number above `limit` when it is more;
    a list literal is read only as far as that."""
    if isinstance(node, S.Number):
        return len(node.text)
    if isinstance(node, S.Bool):
        return 4 if node.value else 5
    if isinstance(node, S.String):
        return len(string_literal(node.value))
    if isinstance(node, S.Name):
        return len(node.value)
    if isinstance(node, S.Call):
        width = len(node.func) + 2
        for i, arg in enumerate(node.args):
            name = len(arg.name) + 1 if arg.name is not None else 0
            width += (2 if i else 0) + name + _value_width(arg.value, limit)
            if width > limit:
                break
        return width
    if isinstance(node, S.ListLit):
        text, start, end = node.extent
        width, comma = 0, False
        for m in _FLAT_TOKEN.finditer(text, start, end):
            token = m.group()
            if token.startswith("#"):
                continue
            if token == ",":
                comma = True
                continue
            if comma and token not in ")]":
                width += 2  # ", " (a comma before a closing bracket is dropped)
            comma = False
            width += len(token)
            if width > limit:
                break
        return width
    raise AssertionError(f"the printer cannot write a {type(node).__name__}")
