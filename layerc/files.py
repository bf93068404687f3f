"""Writing output files so that a failure at any point leaves what was there before.

Every command that writes (`compile`, `import`, `export`, `fmt`, and `graph` for DOT output)
goes through `write_atomically`: each file is written to a temporary name in its own folder and flushed to
disk; only when all of them are written are they renamed over their targets, in the order given,
and the folders synced. Readers see an old file or a new one, never a part of one.
(`layerc run`'s streamed output and graphviz's rendered diagrams also land through a
temporary file and a rename, and take their permission bits from `mode_for`.)
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


class WriteFailed(Exception):
    """Writing `target` failed for `reason` (an OS error's text). Targets renamed into place
    before the failure stay written; no other target changed."""

    def __init__(self, target: Path, reason: str) -> None:
        super().__init__(f"{target}: {reason}")
        self.target = target
        self.reason = reason


def write_atomically(files: Sequence[tuple[Path, bytes]]) -> None:
    """Write each `(target, data)` of `files` as the module docstring says. A new file gets the
    permission bits the umask allows; a file that is replaced keeps its own."""
    temps: list[tuple[Path, Path]] = []
    target = files[0][0]
    try:
        for target, data in files:
            folder = target.parent if str(target.parent) else Path(".")
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
            tmp = Path(name)
            temps.append((tmp, target))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode_for(target))
            _distinct_stamp(tmp, target)
        for tmp, target in list(temps):
            os.replace(tmp, target)
            temps.remove((tmp, target))
    except OSError as exc:
        raise WriteFailed(target, exc.strerror or str(exc)) from None
    finally:
        for tmp, _ in temps:  # those not renamed into place
            unlink_quietly(tmp)
    for folder in dict.fromkeys(target.parent for target, _ in files):
        _sync_folder(folder if str(folder) else Path("."))
    forget_numba_source_hashes()


def unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def mode_for(target: Path) -> int:
    """The permission bits for a file written to `target`: its own if it exists, else what the
    umask allows."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        mask = os.umask(0o022)  # reading the umask means setting it, so it is set straight back
        os.umask(mask)
        return 0o666 & ~mask


def _distinct_stamp(new: Path, old: Path) -> None:
    """Give `new` a modification time other than `old`'s when both have the same size.

    numba remembers the hash of a source file by (path, mtime, size) for the life of a process;
    a module rewritten within one tick of a coarse filesystem clock would otherwise be taken
    for the old one, and the old machine code run."""
    try:
        before, after = os.stat(old), os.stat(new)
    except OSError:
        return
    if after.st_size != before.st_size:
        return
    for step in (1_000_000, 1_000_000_000, 2_000_000_000):  # 1 ms, then coarse clocks
        if os.stat(new).st_mtime != before.st_mtime:
            return
        os.utime(new, ns=(after.st_atime_ns, before.st_mtime_ns + step))


def forget_numba_source_hashes() -> None:
    """Drop numba's in-process memo of source hashes (if numba is loaded), so a module
    rewritten in this process is hashed afresh when it is imported again."""
    caching = sys.modules.get("numba.core.caching")
    clear = getattr(getattr(caching, "_hash_source_file", None), "cache_clear", None)
    if clear is not None:
        clear()


def _sync_folder(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
