"""What layerc shows on a terminal and nowhere else: whether a stream gets colour, and a
progress bar on stderr. A stream that is not a terminal (a pipe, a file, CI logs) gets neither,
so output stays plain text that tools can read."""

from __future__ import annotations

import os
import time
from typing import TextIO


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal (False for pipes, files and closed streams)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """A one-line progress bar redrawn in place with a carriage return, at most ten times a
    second. `total` is in the same unit as `update`'s `done` (bytes or rows); without a total
    it shows the count of rows only. Drawing nothing when disabled keeps callers simple."""

    WIDTH = 24

    def __init__(self, stream: TextIO, total: int | None, label: str, enabled: bool) -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.enabled = enabled
        self.last_draw = -1.0
        self.drawn = False

    def update(self, done: int, rows: int, *, force: bool = False) -> None:
        """Redraw if enabled and a tenth of a second has passed (or `force`)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        self.stream.write("\r" + self.line(done, rows))
        self.stream.flush()
        self.drawn = True

    def line(self, done: int, rows: int) -> str:
        """The bar's text: label, bar and percentage when the total is known, and the rows."""
        count = f"{rows:,} row{'' if rows == 1 else 's'}"
        if not self.total:
            return f"{self.label}: {count}"
        fraction = min(max(done / self.total, 0.0), 1.0)
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        return f"{self.label}: [{bar}] {fraction * 100:3.0f}%  {count}"

    def abandon(self) -> None:
        """End the bar's line after an error, so the message starts on a fresh line."""
        if self.enabled and self.drawn:
            self.stream.write("\n")
            self.stream.flush()

    def finish(self, done: int, rows: int) -> None:
        """Draw the final state and end the line, so later messages start on a fresh one."""
        if not self.enabled:
            return
        self.update(done, rows, force=True)
        self.stream.write("\n")
        self.stream.flush()


def colour_enabled(stream: TextIO) -> bool:
    """Colour only for a terminal, never with NO_COLOR set (https://no-color.org) or TERM=dumb."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return is_terminal(stream)
