"""Shares of a streaming job (`--shard i/n`, or torchrun's ranks): their journals, and the one merge.

Share i of n journals to `OUT.shard-i-of-n.partial` (vaekit.stream.journals). When every share's
journal holds all its batches, one process merges them into OUT in file order: under torchrun
rank 0 (it waits for the others), with explicit shards whichever finishes last. Another share's
journal is read without taking its lock (its process may still be appending), and trusted only
as far as it is checked: its header must equal this share's settings but for the share itself
(the same model, score, batch size, file list...), and every line must be one of that share's
batches (vaekit.stream.batches). Shares of different jobs are refused (exit 2), naming what differs,
instead of being merged into one file.
"""

from __future__ import annotations

import errno
import heapq
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vaekit.stream import lines as journal_lines
from vaekit.stream.batches import Layout, RowCheck, changed, check_entry
from vaekit.errors import BadInput, DamagedFile, InUse, VaekitError, cannot_write
from vaekit.fileio import NO_FOLLOW_NO_BLOCK, held_elsewhere, try_lock
from vaekit.stream.files import LineTooLong, lines_reopened, open_regular, read_lines
from vaekit.stream.journals import journal_header, parse
from vaekit.stream.names import (MERGING, check_journal_name, merging_path, partial_path,  # noqa: F401 (MERGING,
                                 share_out)  # share_out: re-exported)

_LOCK_TEXT = b"vaekit shard merge lock\n"  # what makes OUT.merging vaekit's own


class Shares:
    """The n shares of a job writing `out`, as this share (`settings`, `layout`) expects them."""

    def __init__(self, out: Path, settings: dict, layout: Layout, row_check: RowCheck | None = None,
                 row_bytes: int = 0):
        self.out, self.layout, self.row_check = Path(out), layout, row_check
        self.settings = journal_header(settings)
        self.count = layout.count
        self.limit = journal_lines.line_limit(layout.batch_size, self.settings, row_bytes)
        self._read: dict[int, tuple[int, int]] = {}  # share -> (device, inode) of the journal read for it
        self._polls: dict[int, _Read] = {}  # share -> how far `complete` has read its journal
        self.out_before = file_identity(self.out)  # OUT as the job began: a merge writes another

    def journal(self, j: int) -> Path:
        return partial_path(share_out(self.out, j, self.count))

    def _lines(self, j: int, hold: bool, at: "_Read") -> Iterator[tuple[int, bytes]] | None:
        """Share j's complete lines after those `at` has read (all, when it read another file or a
        longer one); None without a journal. hold=False: no file held open between two lines
        (vaekit.stream.files.lines_reopened), for the merge, which reads every share in turn."""
        try:
            fd = open_regular(self.journal(j), write=False)
        except OSError as e:
            raise self._unreadable(j, e) from None
        st = None if fd is None else os.fstat(fd)
        ident = None if st is None else (st.st_dev, st.st_ino)
        if ident is None or ident != at.ident or st.st_size < at.offset or not _still(fd, at):
            at.__init__(ident)  # another file (an inode number used again, too), or cut: from its start
        if not hold and j in self._polls and ident != self._polls[j].ident:  # a merge reads only the files found
            if fd is not None:  # complete (several times: a code file's range, checksum, bytes), never another
                os.close(fd)
            raise DamagedFile(f"{self.journal(j)} was removed or replaced while it was being merged; run that share "
                              "again with --resume to merge")  # as vaekit.stream.files.lines_reopened says
        if fd is None:
            return None
        self._read[j] = ident
        start = at.offset

        def lines():
            try:
                yield from (read_lines(fd, self.limit, start) if hold
                            else lines_reopened(self.journal(j), fd, self.limit))  # which closes fd
            except LineTooLong as e:  # the line after the `at.n` read (entries counts each as it goes)
                raise DamagedFile(f"{self.journal(j)} is damaged at line {at.n + 1}: {e}; delete it and score "
                                  "that share again") from None
            except OSError as e:
                if not held_elsewhere(e):
                    raise self._unreadable(j, e) from None
                # Windows: its share is still writing it (and holds its lock): no lines yet, so
                # it is not complete, and its header is checked at the merge
            finally:
                if hold:
                    os.close(fd)

        return lines()

    def _unreadable(self, j: int, e: OSError) -> Exception:
        if isinstance(e, VaekitError):
            return e
        return BadInput(f"cannot read {self.journal(j)} (the journal of share {j}/{self.count}): "
                        f"{e.strerror or e}; every share must be able to read the others' journals (run them "
                        "as one user, or with a umask that lets the others read)")

    def check_headers(self) -> None:
        """Refuse now, before any work, when another share's journal was started by another job
        (this share's own journal is checked when it is opened), or when a share's journal name is too long."""
        for j in range(self.count):  # each share's: not "cannot read" another's, blamed on its user or umask
            check_journal_name(share_out(self.out, j, self.count))
        for j in range(self.count):
            if j == self.layout.index:
                continue
            lines = self._lines(j, True, _Read())
            if lines is not None:
                with _closing(lines):
                    first = next(lines, None)
                if first is not None:
                    self._check_header(j, first[1])

    def _check_header(self, j: int, line: bytes) -> None:
        try:
            header = parse(line)
        except ValueError:
            header = None
        if not isinstance(header, dict) or "vaekit_journal" not in header:
            raise DamagedFile(f"{self.journal(j)} is not a vaekit journal; delete it and score that share again")
        # `sources` is the files as that share's machine saw them (its own copy, maybe): its own resume checks it
        diff = changed(header, self.settings, skip=("shard", "sources"))
        if diff or header.get("shard") != [j, self.count]:
            raise BadInput(f"cannot merge share {j}/{self.count} ({self.journal(j).name}): it was started with "
                           f"other settings ({'; '.join(diff) or 'shard'}); run every share with the same "
                           "command, or delete that journal and score its share again")

    def entries(self, j: int, hold: bool = True, at: "_Read | None" = None) -> Iterator[dict]:
        """Share j's batch entries, each checked (header first): complete lines only (hold: see
        _lines). `at`: go on from where it stopped reading the same file, and record how far."""
        at = _Read() if at is None else at
        lines = self._lines(j, hold, at)
        if lines is None:
            return
        layout = self.layout.share(j)
        with _closing(lines):
            for offset, line in lines:
                n, entry = at.n + 1, None
                if n == 1:
                    self._check_header(j, line)
                    at.key = journal_lines.key(line)
                else:
                    entry, why = journal_lines.decode(line, at.key)
                    why = why or check_entry(entry, layout, self.row_check, at.seen)
                    if why is not None:
                        raise DamagedFile(f"{self.journal(j)} is damaged at line {n}: {why}; delete it and score "
                                          "that share again")
                    at.seen.add(entry["batch"])
                at.n, at.offset, at.last = n, offset, line
                if entry is not None:
                    yield entry

    def complete(self, j: int) -> bool:
        """Whether share j's journal holds every batch it owns, each line checked once: a poll (rank 0
        waiting under torchrun, twice a second) reads only the lines appended since the last."""
        at = self._polls.setdefault(j, _Read())
        for _ in self.entries(j, at=at):
            pass
        # its header read too: a share that owns no batch (more shares than batches) is complete
        # with its header alone, and a file without one at its name is not its journal
        return at.ident is not None and at.n >= 1 and set(self.layout.share(j).mine()) <= at.seen

    def pending(self) -> list[int]:
        return [j for j in range(self.count) if not self.complete(j)]

    def merged(self) -> Iterator[dict]:
        """Every share's entries in batch order, that is in file order; each share's journal must
        still hold all its batches (it was complete when the merge began), else InUse."""
        return heapq.merge(*(self._whole(j) for j in range(self.count)), key=lambda e: e["batch"])

    def _whole(self, j: int) -> Iterator[dict]:
        at = _Read()
        yield from self.entries(j, hold=False, at=at)
        missing = set(self.layout.share(j).mine()) - at.seen
        if missing or at.n < 1:
            lost = f"batch {min(missing)}" if missing else "its header"
            raise InUse(f"{self.journal(j)} changed while the shares were being merged (it no longer holds {lost}): "
                        "another process is writing it; run that share again with --resume")

    def remove(self) -> None:
        """Delete the journals merged: each only if it is still the file read (not one put at its name since)."""
        for j in range(self.count):
            try:
                st = os.lstat(self.journal(j))
            except FileNotFoundError:
                continue
            if self._read.get(j) == (st.st_dev, st.st_ino):
                self.journal(j).unlink(missing_ok=True)

    def wait(self, timeout: float | None, progress=None) -> None:
        """Under torchrun, rank 0: wait until every rank's journal holds all its batches."""
        start = time.monotonic()
        while True:
            ready = self.count - len(self.pending())
            if progress:
                progress(ready, self.count, phase="merge")
            if ready == self.count:
                return
            if timeout is not None and time.monotonic() - start > timeout:
                raise InUse(f"gave up after {timeout:.0f} s waiting for {self.count - ready} other rank(s) to finish "
                            f"{self.out}; rerun with --resume to continue")
            time.sleep(0.5)


class _Read:
    """How far one share's journal was read: its file (device, inode), the offset and line number
    reached, and the batches seen. A journal only grows (vaekit.stream.journals), so the next read
    of the same file, no shorter, goes on from there."""

    def __init__(self, ident: tuple[int, int] | None = None):
        self.ident, self.offset, self.n, self.seen, self.last = ident, 0, 0, set(), b""
        self.key = b""  # its lines' key (vaekit.stream.lines.key), once its header is read


def _still(fd: int, at: _Read) -> bool:
    """Whether the file open on `fd` still holds, just before at.offset, the last line `at` read."""
    os.lseek(fd, at.offset - len(at.last), os.SEEK_SET)
    return os.read(fd, len(at.last)) == at.last


@contextmanager
def _closing(gen):
    try:
        yield gen
    finally:
        gen.close()


@contextmanager
def merge_lock(out: Path):
    """True when this process may merge: it holds the lock of OUT.merging (vaekit.fileio.try_lock).

    OUT.merging is vaekit's when vaekit created it (it holds _LOCK_TEXT); a file of that name
    that is not is refused (BadInput), never used or deleted. The lock file goes when the merge
    is done, if it is still the one this process locked."""
    lock = merging_path(out)
    try:
        fd = _open_lock(lock)
    except OSError as e:
        if isinstance(e, VaekitError):
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # not another user's: this disk's
            raise cannot_write(e, lock) from None
        raise BadInput(f"cannot open {lock}, the lock of the shard merge: {e.strerror or e} (another user's merge, "
                       "or its leftover); once it is gone, run any share again with --resume to merge") from None
    try:
        try:
            mine = try_lock(fd)
        except OSError:  # a file system without locks: leave the merge to a later look
            mine = False
        if not mine:
            yield False
            return
        try:
            yield True
        finally:
            st, here = os.fstat(fd), _lstat(lock)
            if here is not None and (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino):
                lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _lstat(path: Path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _open_lock(lock: Path) -> int:
    fd = _new_lock(lock)
    if fd is not None:
        return fd
    fd = open_regular(lock, write=False, what="shard merge lock")
    if fd is None:  # removed since: a merge just finished; the next look finds the shares merged
        return _open_lock(lock)
    try:
        text = os.read(fd, len(_LOCK_TEXT) + 1)
    except OSError as e:
        if not held_elsewhere(e):
            os.close(fd)
            raise
        return fd  # Windows: a merging process holds it, so it is vaekit's
    if text != _LOCK_TEXT:
        os.close(fd)
        raise BadInput(f"{lock} exists and is not vaekit's shard merge lock; rename it, or write the output "
                       "elsewhere")
    return fd


def _new_lock(lock: Path) -> int | None:
    """A descriptor on a new OUT.merging holding _LOCK_TEXT; None when one is there. On Linux the
    file is written unnamed (O_TMPFILE) and linked in whole, so its name never holds an empty or
    half-written file: a share opening it in that instant refused it as not vaekit's, and a SIGKILL
    there left one that blocked every later merge. Elsewhere it is created, then written."""
    flags = os.O_RDWR | NO_FOLLOW_NO_BLOCK
    linked = _linked_whole(lock)
    if linked != -1:
        return linked
    try:
        fd = os.open(lock, flags | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    try:
        os.write(fd, _LOCK_TEXT)
    except OSError:  # a full disk: no empty lock left behind for every later merge to refuse
        os.close(fd)
        lock.unlink(missing_ok=True)
        raise
    return fd


def _linked_whole(lock: Path) -> int | None:
    """_new_lock's Linux way: the file written unnamed (O_TMPFILE), then given the name whole
    (linkat with AT_SYMLINK_FOLLOW on /proc/self/fd, as open(2) shows; a plain link() does not
    follow that link). -1 where this system or file system cannot: the caller's way then."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return -1
    try:
        folder = os.open(lock.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return -1
    fd = None
    try:
        fd = os.open(lock.parent, os.O_TMPFILE | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o644)
        os.write(fd, _LOCK_TEXT)
        # a directory descriptor makes os.link call linkat, which alone can follow the link
        os.link(f"/proc/self/fd/{fd}", lock.name, dst_dir_fd=folder, follow_symlinks=True)
        fd, mine = None, fd
        return mine
    except FileExistsError:
        return None
    except OSError:  # no O_TMPFILE on this file system, or linkat refused
        return -1
    finally:
        if fd is not None:
            os.close(fd)
        os.close(folder)


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, mtime ns) of the file at `path`, or None: a merge puts a new file there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns
