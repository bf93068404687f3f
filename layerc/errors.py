"""Source locations and user errors: a `Loc` names a place in a .lyr file, a `LayercError`
carries a message and a `Loc` (a `LayercWarning` too, for what is legal but probably a mistake),
and `render` turns one into `file:line:col: message` (`file:line:col: warning: message`) followed
by the source line and a caret, the only form in which users see compile errors."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Loc:
    """A position in a source file; line and column count from 1."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class LayercError(Exception):
    """A mistake in the user's input, reported at a source location (or at the file only)."""

    def __init__(self, message: str, loc: Loc | None = None, *, file: str | None = None):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.file = loc.file if loc is not None else file

    def __str__(self) -> str:
        where = str(self.loc) if self.loc is not None else (self.file or "layerc")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class LayercWarning:
    """Something legal in the user's input that is probably a mistake (a value never used);
    the checker collects these on the program and compilation goes on."""

    message: str
    loc: Loc

    @property
    def file(self) -> str:
        return self.loc.file

    def __str__(self) -> str:
        return f"{self.loc}: warning: {self.message}"


def suggest(name: str, options: list[str]) -> str:
    """ "; did you mean 'X'?" for the option closest to `name`, ignoring case (so that `Relu`
    finds `ReLU`), or "" when none is close."""
    by_lower = {option.lower(): option for option in options}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


class UsageError(Exception):
    """A mistake in how the command line was used (exit code 2)."""


def source_line(text: str, line: int) -> str | None:
    """Line `line` (from 1) of `text` as the front end counts lines, or None past the end.

    Only "\n" ends a line, as in the lexer: `str.splitlines` would also split at form feeds
    and Unicode separators inside comments and show the wrong line. A byte-order mark, which
    the front end drops before parsing, is dropped here too so that columns agree."""
    lines = text.removeprefix("\ufeff").split("\n")
    if 1 <= line <= len(lines):
        return lines[line - 1].removesuffix("\r")
    return None


_MAX_SHOWN = 200


# ANSI styles for a terminal, as gcc and clang use them: bold location, red message (magenta
# for a warning), green caret.
_BOLD, _RED, _MAGENTA, _GREEN, _RESET = (
    "\x1b[1m",
    "\x1b[1;31m",
    "\x1b[1;35m",
    "\x1b[1;32m",
    "\x1b[0m",
)


def render(error: LayercError | LayercWarning, text: str | None, colour: bool = False) -> str:
    """`file:line:col: message` (or `file:line:col: warning: message`), then the offending line
    and a caret under the column.

    Very long lines are shown as a window around the column so a megabyte-long line does not
    flood the terminal; control characters are shown escaped so they cannot move the cursor.
    With `colour`, ANSI styles are added around the same text (the CLI asks for it only when
    stderr is a terminal and NO_COLOR is unset); removing them gives the plain form.
    """
    head = f"{error}"
    if colour and head.endswith(f": {error.message}"):
        where = head[: len(head) - len(error.message) - 2]
        style = _MAGENTA if isinstance(error, LayercWarning) else _RED
        head = f"{_BOLD}{where}:{_RESET} {style}{error.message}{_RESET}"
    out = [head]
    if error.loc is None or text is None:
        return out[0]
    line = source_line(text, error.loc.line)
    if line is None:
        return out[0]
    col = max(error.loc.col - 1, 0)
    start = 0
    if len(line) > _MAX_SHOWN:
        start = max(0, min(col - _MAX_SHOWN // 2, len(line) - _MAX_SHOWN))
        line = line[start : start + _MAX_SHOWN]
    shown = "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in line)
    caret = "".join("\t" if ch == "\t" else " " for ch in shown[: col - start]) + "^"
    out.append("    " + shown)
    out.append("    " + (caret[:-1] + _GREEN + "^" + _RESET if colour else caret))
    return "\n".join(out)
