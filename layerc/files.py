"""Reading input files and writing output files: the one place every command goes through.

Reading (`open_regular`, `read_regular`). Only a regular file is read. The path is opened without
blocking and checked through the descriptor, so a FIFO, a device (a symlink to /dev/zero in an
untrusted checkout), a socket or a folder is refused with an error instead of hanging layerc or
never ending, and what is read is the file that was checked. A symlink is followed: the file it
points to is read, and must itself be a regular file.

Writing (`write_atomically`; `temporary_for` and `commit` for writers that stream, such as
`layerc run`'s results and graphviz's diagrams). Each file is written to a temporary name in its
own folder and flushed to disk; only when all of a command's files are written are they renamed
over their targets, in the order given, and the folders synced. Readers see an old file or a new
one, never a part of one. An output path that is a symlink is replaced by a regular file and the
file it pointed to is left alone, so a link planted in a checkout (`model.py -> ~/.bashrc`)
cannot make layerc write anywhere else; `follow_links=True` (what `layerc fmt` asks for, as it
rewrites a file in place) writes to the file the link points to instead and keeps the link.

Outputs never replace inputs (`refuse_inputs`): a command is given the files it read (its
source, the weights files the source loads, its data), and an output that is one of them, by
name, through a symlink or as a hard link, is refused before anything is written.

Temporary files are named `.NAME.layerc-HOST-PID-XXXXXXXX.tmp`: the target's name, a short hash
of the machine's host name and the id of the process writing it. A write that is killed leaves
its temporary files behind (a weights file's can be large); the next write into the same folder
removes those of its machine whose process no longer runs (whatever their target: a killed
compile's weights file has a name of its own), and never one of a process that is still running
(two compiles at once each keep theirs) or of another machine (a shared network folder) or
container.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import stat
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import LayercError, Loc


class WriteFailed(Exception):
    """Writing `target` failed for `reason` (an OS error's text). Targets renamed into place
    before the failure stay written; no other target changed."""

    def __init__(self, target: Path, reason: str) -> None:
        super().__init__(f"{target}: {reason}")
        self.target = target
        self.reason = reason


# --------------------------------------------------------------------------- reading


def open_regular(
    path: Path,
    display: str,
    *,
    what: str = "a file",
    max_bytes: int | None = None,
    loc: Loc | None = None,
) -> int:
    """A read-only descriptor of `path`, refused with a `LayercError` unless it is a regular file
    of at most `max_bytes` bytes; `what` names what was expected ("a .lyr file") in the message
    for a folder. The error is at the file `display`, or, when `loc` is given (a `load(...)` in
    a source), at `loc`, naming `display`."""

    def refuse(message: str, name_first: bool = True) -> LayercError:
        if loc is None:
            return LayercError(message, file=display)
        return LayercError(f"{display!r} {message}" if name_first else message, loc)

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise refuse(f"is a directory, not {what}") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO opened for writing elsewhere
            raise refuse(_NOT_REGULAR) from None
        if loc is not None:
            raise refuse(f"cannot read {display!r}: {exc.strerror}", False) from None
        raise refuse(f"cannot read the file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise refuse(f"is a directory, not {what}")
        if not stat.S_ISREG(st.st_mode):
            raise refuse(_NOT_REGULAR)
        if max_bytes is not None and st.st_size > max_bytes:
            raise refuse(
                f"is {st.st_size} bytes long; layerc reads files of at most {max_bytes} bytes"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


_NOT_REGULAR = "is not a regular file (a device, pipe or socket), so layerc will not read it"


def read_regular(
    path: Path,
    display: str,
    *,
    what: str = "a file",
    max_bytes: int | None = None,
    loc: Loc | None = None,
) -> bytes:
    """The bytes of the regular file `path`, checked as `open_regular` checks it."""
    fd = open_regular(path, display, what=what, max_bytes=max_bytes, loc=loc)
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read()
        except OSError as exc:
            raise LayercError(f"cannot read the file: {exc.strerror}", loc, file=display) from None


# --------------------------------------------------------------------------- outputs and inputs

Inputs = Sequence[tuple[Path, str]]  # (path, what it is: "the source file") for each input


def refuse_inputs(targets: Iterable[Path], inputs: Inputs) -> None:
    """Raise a `LayercError` at the first of `targets` that is one of `inputs`: the same file by
    name, through a symlink, or as another hard link to it."""
    seen: dict[tuple[int, int], str] = {}
    for path, what in inputs:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        seen.setdefault((st.st_dev, st.st_ino), what)
    if not seen:
        return
    for target in targets:
        try:
            st = os.stat(target)  # through a symlink: a link to an input is refused as well
        except (OSError, ValueError):
            continue
        if (st.st_dev, st.st_ino) in seen:
            raise LayercError(
                f"the output {target} is {seen[st.st_dev, st.st_ino]} itself; layerc never "
                "writes over a command's inputs: choose another output",
                file=str(target),
            )


# --------------------------------------------------------------------------- writing


def write_atomically(
    files: Sequence[tuple[Path, bytes]], inputs: Inputs = (), *, follow_links: bool = False
) -> None:
    """Write each `(target, data)` of `files` as the module docstring says, after refusing any
    target that is one of `inputs`. A new file gets the permission bits the umask allows; a file
    that is replaced keeps its own. With `follow_links`, a target that is a symlink is written
    through: the file it points to is replaced and the link kept."""
    if follow_links:
        files = [(Path(os.path.realpath(target)), data) for target, data in files]
    refuse_inputs([target for target, _ in files], inputs)
    temps: list[tuple[Path, Path]] = []
    target = files[0][0]
    try:
        for target, data in files:
            fd, tmp = temporary_for(target)
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
    for folder in dict.fromkeys(_folder(target) for target, _ in files):
        _sync_folder(folder)
    forget_numba_source_hashes()


def temporary_for(target: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside `target` (its descriptor, open for writing, and its
    path), named for this process as the module docstring says; stale temporaries in its folder
    are removed first. An `OSError` passes on."""
    folder = _folder(target)
    remove_stale_temporaries(folder)
    # The target's name is cut so that the temporary's stays within the 255 bytes a file name
    # may have.
    prefix = f".{target.name[:100]}.layerc-{_HOST}-{os.getpid()}-"
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    return fd, Path(name)


def commit(tmp: Path, target: Path) -> None:
    """Rename the written, flushed temporary file `tmp` over `target`, with `target`'s
    permission bits (see `mode_for`). An `OSError` passes on."""
    os.chmod(tmp, mode_for(target))
    os.replace(tmp, target)
    _sync_folder(_folder(target))
    forget_numba_source_hashes()


_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_TEMPORARY = re.compile(r"\..+\.layerc-(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]{1,10})-[a-z0-9_]+\.tmp")


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files in `folder` that a write on this machine left behind when its
    process ended before renaming them (killed, or out of power)."""
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries if entry.name.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match and match["host"] == _HOST and not _running(int(match["pid"])):
            unlink_quietly(folder / name)


def _running(pid: int) -> bool:
    """Whether process `pid` may still be running (when in doubt, it is)."""
    if pid == os.getpid() or pid <= 0 or os.name == "nt":  # os.kill ends processes on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, say
        return True
    return True


def _folder(target: Path) -> Path:
    return target.parent if str(target.parent) else Path(".")


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
