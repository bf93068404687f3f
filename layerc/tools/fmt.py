"""`layerc fmt`: .lyr source text in, the same program in canonical layout out, comments kept.

The text is parsed with the compiler's grammar (so fmt accepts exactly what the compiler does),
keeping every token's position; comments come from lexing the same text without dropping them.
The printer then writes tokens in order with canonical spacing, and puts each comment back
before the first token that followed it in the source: a comment that ended a line of code stays
at the end of that line, one on a line of its own stays on its own line. Only layout changes:
numbers and strings are copied as written, so the program means the same.

The layout: four spaces per level; one statement per line; one blank line between top-level
items and blank lines between statements kept (at most one); `name = value` in entries and
`name=value` in arguments, as in Python; a list of lists written one row per line, aligned like
a matrix; a long list wrapped at 100 columns; `;` and `,` separators dropped; `ReLU` written
`ReLU()`. A list or argument list with a comment inside is written one item per line.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import lark
from lark import Token, Tree

from .. import syntax

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


def format_source(text: str, file: str = "<string>") -> str:
    """The canonical form of `text`; raises `LayercError` where the compiler's parser would."""
    syntax.parse(text, file)  # the compiler's own checks and messages, before anything else
    tree = _parser().parse(text)
    comments = [t for t in _parser().lex(text, dont_ignore=True) if t.type == "COMMENT"]
    printer = _Printer(text, comments)
    _Layout(printer).program(tree)
    return printer.finish()


# --------------------------------------------------------------------------- the printer


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
    before a token in the source are written out just before it."""

    def __init__(self, text: str, comments: list[Token]) -> None:
        self.text = text
        self.comments = comments
        self.comment_starts = [_start(c) for c in comments]
        self.next_comment = 0
        self.out: list[str] = []
        self.cur: str | None = None  # the line being built; None at the start of a line
        self.cur_indent = 0
        self.pending: _Break | None = _Break(0, 0, "none")
        self.space = False
        self.last_line: int | None = None  # index in `out` of the line with the last token
        self.commented: set[int] = set()  # indices in `out` of lines that end with a comment
        self.last_src = 0  # source line of the last thing written

    # ------------------------------------------------------------------ queries

    def has_comment(self, start: int, end: int) -> bool:
        """Whether a comment starts between source offsets `start` and `end`."""
        i = bisect.bisect_left(self.comment_starts, start)
        return i < len(self.comment_starts) and self.comment_starts[i] < end

    def column(self) -> int:
        if self.cur is not None:
            return len(self.cur) + (1 if self.space else 0)
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
        self._flush_comments(_start(token))
        self.text_(str(token), token.line or 1)

    def text_(self, text: str, src_line: int | None = None) -> None:
        """Write `text` (a token's text, or punctuation the layout adds)."""
        if self.cur is None:
            brk = self.pending or _Break(self.cur_indent, self.cur_indent, "none")
            if src_line is not None:
                self._blank_before(brk, src_line)
            self.cur = " " * brk.indent
            self.cur_indent = brk.indent
            self.pending = None
        elif self.space:
            self.cur += " "
        self.space = False
        self.cur += text
        self.last_line = len(self.out)
        if src_line is not None:
            self.last_src = max(self.last_src, src_line)

    def finish(self) -> str:
        self._flush_comments(len(self.text) + 1, at_end=True)
        self._end_line()
        while self.out and not self.out[-1]:
            self.out.pop()
        return "\n".join(self.out) + "\n" if self.out else ""

    # ------------------------------------------------------------------ internals

    def _end_line(self) -> None:
        if self.cur is not None:
            self.out.append(self.cur.rstrip())
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
        while self.next_comment < len(self.comments) and (
            _start(self.comments[self.next_comment]) < before
        ):
            comment = self.comments[self.next_comment]
            self.next_comment += 1
            self._comment(comment, at_end)

    def _trailing(self, comment: Token) -> bool:
        """Whether code comes before the comment on its source line."""
        start = self.text.rfind("\n", 0, _start(comment)) + 1
        return bool(self.text[start : _start(comment)].strip())

    def _comment(self, comment: Token, at_end: bool) -> None:
        text = str(comment).rstrip()
        line = comment.line or 1
        # A line takes one trailing comment: a second would merge into the first on re-reading.
        if (
            self._trailing(comment)
            and self.last_line is not None
            and (self.last_line not in self.commented)
        ):
            if self.cur is not None and self.last_line == len(self.out):
                # After code on the line being built: end the line with the comment; what
                # follows continues on the next line, indented one more level.
                self.cur += "  " + text
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
    """Walks lark's tree (all tokens kept) and tells the printer what to write where. Blocks and
    argument lists that go over several lines indent their items one level deeper than the line
    their opening bracket is on."""

    def __init__(self, printer: _Printer) -> None:
        self.p = printer

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
            self.list_(tree)
        else:
            raise AssertionError(f"fmt cannot lay out a {tree.data!r} value")

    def list_(self, tree: Tree) -> None:
        tokens = _tokens(tree)
        open_, close = tokens[0], tokens[-1]
        items = _trees(tree)
        if self.p.has_comment(_start(open_), _start(close)):
            self.items(open_, close, items, self.value)
        elif len(items) >= 2 and any(item.data == "list" for item in items):
            self.matrix(open_, close, items)
        elif items and all(item.data in _SCALARS for item in items):
            self.scalars(open_, close, items)
        else:
            self.items(open_, close, items, self.value)

    def matrix(self, open_: Token, close: Token, items: list[Tree]) -> None:
        """A list of lists, one item per line, aligned under the first as a matrix is."""
        self.p.token(open_)
        column = self.p.column()
        for i, item in enumerate(items):
            if i:
                self.p.text_(",")
                self.p.brk(column)
            self.value(item)
        self.p.token(close)

    def scalars(self, open_: Token, close: Token, items: list[Tree]) -> None:
        """A list of numbers (or names): on one line if it fits in WIDTH columns, else filled
        line by line, continuation lines aligned after the bracket."""
        self.p.token(open_)
        column = self.p.column()
        texts = [str(_leaf(item)) for item in items]
        at = column
        for i, (item, text) in enumerate(zip(items, texts, strict=True)):
            tail = 1  # the ',' or ']' after the item
            if i:
                if at + 2 + len(text) + tail > WIDTH:
                    self.p.text_(",")
                    self.p.brk(column)
                    at = column
                else:
                    self.p.text_(",")
                    self.p.sp()
                    at += 2
            self.p.token(_leaf(item))
            at += len(text)
        self.p.token(close)
