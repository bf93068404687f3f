"""`layerc fmt`: .lyr source text in, the same program in canonical layout out, comments kept.

The text is parsed by the compiler (so fmt accepts exactly what the compiler does, with its
messages), and its tree printed by the one .lyr printer (`layerc.printer`, which `layerc import`
writes through too) with the source beside it, so that every comment and blank line goes back
where it stood. The layout is the printer's: four spaces per level; one statement per line; one
blank line between top-level items and blank lines between statements kept (at most one);
`name = value` in entries and `name=value` in arguments, as in Python; a list of lists written one
row per line, aligned like a matrix; a long list wrapped at 100 columns; `;` and `,` separators
dropped; `ReLU` written `ReLU()`. A list or argument list with a comment inside is written one
item per line. Only layout changes: numbers and strings are copied as written, so the program
means the same. List literals, which can be megabytes of numbers, are read and laid out in time
and memory linear in their text.
"""

from __future__ import annotations

from pathlib import Path

from .. import syntax
from ..errors import LayercError
from ..files import WriteFailed, read_regular, write_atomically
from ..printer import INDENT, WIDTH, print_program

__all__ = ["INDENT", "WIDTH", "format_file", "format_source"]


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
    return print_program(syntax.parse(text, file), text)
