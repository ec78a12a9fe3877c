"""How a streaming job opens a file it shares with other processes or finds in its way: its
journal (`OUT.partial`), another share's journal, the shard merge lock (`OUT.merging`).

Each must be a regular file. A FIFO, a folder, a device or a symbolic link at its name is
refused before it is opened for anything (O_NOFOLLOW, O_NONBLOCK): nothing waits on a pipe,
and nothing is written through a link. `same_file` tells whether a name still leads to the
file a descriptor holds (another process may have removed or replaced it since it was opened).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterator

from vaekit.errors import BadInput, DamagedFile
from vaekit.fileio import NO_FOLLOW_NO_BLOCK



def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a socket or device"


def open_regular(path: Path, write: bool, what: str = "journal") -> int | None:
    """A file descriptor on `path`, a regular file (created when `write`); None when absent and
    not `write`. Anything else at `path` (a link, a FIFO, a folder) is BadInput, never opened
    in a way that could block or follow it."""
    refuse = f"{path} is {{}}, not a {what} vaekit wrote; remove it or write the output elsewhere"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is None and not write:
        return None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise BadInput(refuse.format(_kind(st.st_mode)))
    flags = (os.O_RDWR | os.O_CREAT if write else os.O_RDONLY) | NO_FOLLOW_NO_BLOCK
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:
        if write:  # its folder cannot hold it (gone, or a /proc that creates nothing): the caller's OSError
            raise
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # a link or FIFO put there since the lstat
            raise BadInput(refuse.format("not a regular file")) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise BadInput(refuse.format(_kind(mode)))
    return fd


class LineTooLong(DamagedFile):
    """A line longer than its reader's limit, more than vaekit writes in one: a foreign or damaged
    file. Raised before the line is held whole, so a line of gigabytes costs `limit` bytes of memory."""

    def __init__(self, limit: int):
        super().__init__(f"the line is longer than {limit:,} bytes, more than vaekit writes in one")


def _line(f, limit: int) -> bytes:
    line = f.readline(limit + 1)
    if len(line) > limit:
        raise LineTooLong(limit)
    return line


def read_lines(fd: int, limit: int, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset after the line, line) for each complete line of the file open on `fd`, from offset
    `start` (a line's start); a last line without its newline (cut short, or still being written)
    is not yielded. A line over `limit` bytes, newline included, is LineTooLong."""
    with os.fdopen(os.dup(fd), "rb") as f:
        f.seek(start)
        offset = start
        while (line := _line(f, limit)).endswith(b"\n"):
            offset += len(line)
            yield offset, line


def lines_reopened(path: Path, fd: int, limit: int) -> Iterator[tuple[int, bytes]]:
    """`read_lines` of the file open on `fd` (closed here), holding no descriptor between two lines:
    `path` is opened again for each, and must still be that file, else DamagedFile. A merge reads
    up to 4096 share journals in turn this way, within any limit of open files (often 1024, or 256)."""
    ident, offset = _ident(os.fstat(fd)), 0
    try:
        while True:
            with os.fdopen(os.dup(fd), "rb") as f:
                f.seek(offset)
                line = _line(f, limit)
            os.close(fd)
            fd = None
            if not line.endswith(b"\n"):
                return
            offset += len(line)
            yield offset, line
            fd = open_regular(path, write=False)
            if fd is None or _ident(os.fstat(fd)) != ident:
                raise DamagedFile(f"{path} was removed or replaced while it was being merged; run that share "
                                  "again with --resume to merge")
    finally:
        if fd is not None:
            os.close(fd)


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def same_file(fd: int, path: Path) -> bool:
    """Whether `path` (not followed) is still the file open on `fd`."""
    try:
        here = os.lstat(path)
    except FileNotFoundError:
        return False
    st = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino)
