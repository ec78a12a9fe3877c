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

import heapq
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from vaekit.stream import lines as journal_lines
from vaekit.stream.batches import Layout, RowCheck, changed, changed_output, check_entry, contents, sources
from vaekit.errors import BadInput, DamagedFile, InUse, VaekitError
from vaekit.fileio import held_elsewhere
from vaekit.stream.files import LineTooLong, lines_reopened, open_regular, read_lines
from vaekit.stream.journals import journal_header, parse
from vaekit.stream.merge_lock import merge_lock  # noqa: F401 (re-exported)
from vaekit.stream.names import (MERGING, check_journal_name, partial_path,  # noqa: F401 (MERGING,
                                 share_out)  # share_out: re-exported)


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
        self._verified: set[int] = set()  # shares whose files the merge has found as they were scored
        # (files(entry), what): the files each batch wrote (heat maps, reconstructions), set by the job
        # that writes them; the merge holds the other shares' to the bytes their lines pin, as a resume does
        self.outputs: "tuple[Callable[[dict], list], str] | None" = None

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
                raise DamagedFile(f"{self.journal(j)} is damaged at line {at.n + 1}: {e}; delete it and run "
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
            raise DamagedFile(f"{self.journal(j)} is not a vaekit journal; delete it and run that share again")
        # `sources` is the files as that share's machine saw them (its own copy, maybe): its own resume checks it
        diff = changed(header, self.settings, skip=("shard", "sources"))
        if diff or header.get("shard") != [j, self.count]:
            raise BadInput(f"cannot merge share {j}/{self.count} ({self.journal(j).name}): it was started with "
                           f"other settings ({'; '.join(diff) or 'shard'}); run every share with the same "
                           "command, or delete that journal and run its share again")

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
                        raise DamagedFile(f"{self.journal(j)} is damaged at line {n}: {why}; delete it and run "
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
        other = j != self.layout.index and j not in self._verified
        moved = other and self._moved(j)
        for entry in self.entries(j, hold=False, at=at):
            if moved:
                self._check_contents(j, entry)
            elif other and self.outputs is not None:
                # its files as it saw them (this machine, or one file system): so should its heat maps be.
                # Where it saw others (its own machine), they may be on that machine's disk: not checked
                self._check_outputs(j, entry)
            yield entry
        self._verified.add(j)
        missing = set(self.layout.share(j).mine()) - at.seen
        if missing or at.n < 1:
            lost = f"batch {min(missing)}" if missing else "its header"
            raise InUse(f"{self.journal(j)} changed while the shares were being merged (it no longer holds {lost}): "
                        "another process is writing it; run that share again with --resume")

    def _moved(self, j: int) -> bool:
        """Whether share j's files are not, as this machine sees them, the ones its journal's header
        pinned (`sources`: inode numbers and change times). Its own --resume checks that, but a share
        merged as it is was trusted on its file list alone (names, sizes, times): a file of its
        batches replaced under the same name, size and time after it finished, on the very machine
        that merges, kept the old file's rows in OUT. Then, as a resume does, the bytes decide
        (`_check_contents`): another machine's own copy of the files (other inodes) merges when
        they are the same, at the cost of reading that share's files once."""
        lines = self._lines(j, True, _Read())
        if lines is None:
            return False  # no journal: the merge itself says so
        with _closing(lines):
            first = next(lines, None)
        try:
            header = parse(first[1]) if first is not None else None
        except ValueError:
            return False  # damaged: the merge's own checks name it
        if not isinstance(header, dict) or "sources" not in header:
            return False
        layout = self.layout.share(j)
        return header["sources"] != sources(layout.paths[i] for b in layout.mine() for i in layout.positions(b))

    def _check_contents(self, j: int, entry: dict) -> None:
        """BadInput naming the first file of share j's batch whose bytes are not those it was scored from."""
        skipped = {str(s[0]): s[1] for s in entry["skipped"]}
        names = [self.layout.paths[i] for i in self.layout.positions(entry["batch"])]
        for name, was, now in zip(names, entry["sha256"], contents(names, skipped)):
            if was == now:
                continue
            why = (f"was skipped when its batch was read ({skipped[name]}) and has changed since" if name in skipped
                   else "was replaced or rewritten since its batch was read (its bytes differ, though its name, "
                        "size and modification time are the same)")
            raise BadInput(f"cannot merge share {j}/{self.count} ({self.journal(j).name}): the input {name} {why}; "
                           "delete that journal and run its share again")

    def _check_outputs(self, j: int, entry: dict) -> None:
        """BadInput naming the first file share j's batch wrote that is gone or written over since:
        a merge kept it, and OUT's rows stood beside another job's heat map or none."""
        files, what = self.outputs
        lost = changed_output(entry, files)
        if lost is not None:
            t, why = lost
            raise BadInput(f"cannot merge share {j}/{self.count} ({self.journal(j).name}): the {what} {t} of its finished "
                           f"batch {why} delete that journal and run its share again with --overwrite")

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


def file_identity(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, mtime ns) of the file at `path`, or None: a merge puts a new file there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns
