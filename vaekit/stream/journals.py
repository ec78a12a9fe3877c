"""The journal of a streaming job, `OUT.partial`: the job's contract, written as it goes and checked when read.

Line 1 is the header: every setting that changes the output (the vaekit release, the model's
fingerprint, the score, the batch size, the digests of the input file list and of its files' inodes and
change times (`sources`, vaekit.stream.batches), the heat-map folder, ...). Each
further line is one finished batch, flushed as it is written, with a checksum of its own bytes
keyed by the header (vaekit.stream.lines: a line edited or damaged while still valid JSON is
refused, and so is one under another journal's header). Reading a journal back (`--resume`)
checks the header against the job's settings, and every line against the header
(vaekit.stream.batches.check_entry): a journal started with other settings is refused naming each
setting that differs, and a line that is not one of this job's batches is a damaged file
(exit 2) naming the line. A last line without its newline was cut short by a crash: it is
dropped, never half-read.

`OUT.partial` must be a regular file (vaekit.stream.files): a FIFO, a folder, a device or a
symbolic link there is refused before it is opened for anything. A journal removed by the process
that held it (its job done, or given up) while this one was opening it is InUse, never written unseen.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

from vaekit.stream import lines as journal_lines
from vaekit.stream.files import LineTooLong, open_regular, read_lines, same_file
from vaekit.stream.batches import Layout, RowCheck, changed, check_entry, contents, relative_then, sources
from vaekit.errors import BadInput, DamagedFile, InUse, VaekitError, cannot_write
from vaekit.fileio import atomic_writer, dumps_json, loads_json, try_lock
from vaekit.stream.names import PARTIAL_SUFFIX, check_journal_name, partial_path  # noqa: F401 (PARTIAL_SUFFIX: re-exported)
from vaekit.version import __version__

JOURNAL_VERSION = 7  # 3: lines carry a checksum (stream.lines); 4: files' sha256; 5: keyed by the header;
# 6: skipped files pinned too (batches.skipped_stamp); 7: a batch's own files (heat maps, PNGs) pinned
# by their sha256 (`outputs`), so a resume never keeps another job's in a finished batch
SYNC_EVERY = 2.0  # seconds between a journal's fsyncs


def journal_header(settings: dict) -> dict:
    """A journal's first line: its format, the vaekit that wrote it (a release may change a score's
    maths: a resume or a share under another vaekit is refused, never mixed), the job's settings."""
    return {"vaekit_journal": JOURNAL_VERSION, "vaekit": __version__, **settings}


def parse(line: bytes):
    return loads_json(line.decode("utf-8", "surrogateescape"))


class Journal:
    """Rows of a long job, one batch per JSON line in `OUT.partial` (see the module docstring).

    Only the indices of finished batches stay in memory; rows are read back from the file when
    the job finishes. `layout` and `row_check` say which batches and rows this job may hold
    (vaekit.stream.batches); without them only the shape of each line is checked."""

    def __init__(self, out: Path, settings: dict, resume: bool, layout: Layout | None = None,
                 row_check: RowCheck | None = None, row_bytes: int = 0):
        self.out = Path(out)
        check_journal_name(self.out)
        self.path = partial_path(self.out)
        # the files whose rows this journal holds (its share's), as this machine sees them
        pinned = {} if layout is None else {"sources": sources(layout.paths[i] for b in layout.mine()
                                                               for i in layout.positions(b))}
        self.settings = json.loads(dumps_json({**journal_header(settings), **pinned}, indent=None))
        self.layout, self.row_check = layout, row_check
        self.limit = journal_lines.line_limit(None if layout is None else layout.batch_size, self.settings, row_bytes)
        self.done: set[int] = set()
        self._key = b""  # the lines' key: the header's as written (`_start`) or read (`_read`)
        self._part: tuple[int, list, list, list | None] | None = None  # a batch whose parts are not all in yet
        self._wrote = False  # a batch's own files (heat maps, PNGs) were begun: kept for --resume (`abandon`)
        self.resumed = False  # True: continues an earlier run's journal
        self._moved = False  # the header's `sources` differ: finished batches' files are checked by content
        self._synced, self._closed, self._dirty, locked = time.monotonic(), False, False, False
        created = not os.path.lexists(self.path)
        self._fd = open_regular(self.path, write=True)
        try:
            self._lock()
            locked = True
            st = os.fstat(self._fd)
            size = st.st_size
            if not created and st.st_nlink > 1:  # another name holds it too: writing would change that file
                raise BadInput(f"{self.path} is a hard link (another name shares its contents: {st.st_nlink} names); "
                               "vaekit writes its journal only to a file of its own: remove it, or write the output elsewhere")
            os.lseek(self._fd, 0, os.SEEK_SET)  # (os.pread is not on Windows); every write seeks to the end itself
            if size and not journal_lines.begins_as_journal(os.read(self._fd, len(journal_lines.HEAD))):  # not ours
                raise DamagedFile(f"{self.path} exists and is not a vaekit journal; vaekit leaves it as it is: move "
                                  "it away, or write the output elsewhere")
            cut = size > 0 and self._header_cut(size, resume)  # a kill as the job began: no work in it, begun again
            if size and not cut and not resume:
                raise BadInput(f"{self.path} holds the journal of an earlier run of a job (its settings and the batches "
                               "it finished; a share's waits there for its merge): pass --resume to continue it (and "
                               "--overwrite when the output it was writing exists too), or delete it to start again")
            self.resumed = size > 0 and not cut and self._read()
            if not self.resumed:
                self._start()
        except BaseException:
            if created and locked:  # a journal that could not even be started (a full disk) goes
                self.path.unlink(missing_ok=True)
            self.close()
            raise

    def _header_cut(self, size: int, resume: bool) -> bool:
        """Whether the file holds no complete header line: a kill while its job wrote the header
        (the one write of the job's that is not a whole line yet). With the whole of its `HEAD` it is
        vaekit's and holds no work, so it is begun again; fewer bytes (`{`, say) are begun again only
        on --resume, which says the file is the job's: else they might be a file of the user's (BadInput)."""
        with closing(self._numbered(0)) as lines:
            if next(lines, None) is not None:
                return False
        if size < len(journal_lines.HEAD) and not resume:
            raise BadInput(f"{self.path} holds only {size} byte(s), the start of a journal's header and no work (a vaekit "
                           "job killed as it began?) or a file of yours: pass --resume to begin it again, or delete it")
        return True

    def _lock(self) -> None:
        """Hold an exclusive lock on OUT.partial for the job's life (vaekit.fileio.try_lock): a
        second process writing the same output (even with --resume) gets InUse instead of
        interleaving rows. Released when the journal is closed, and with the process however it ends."""
        if not try_lock(self._fd):
            raise InUse(f"{self.out} is being written by another vaekit process right now "
                        f"({self.path.name} is locked); wait for it, or write elsewhere")
        if not same_file(self._fd, self.path):  # its holder removed it (done, or gave up) before letting go
            raise InUse(f"{self.path.name} was removed by another vaekit process while this one opened it (it "
                        f"finished or gave up {self.out.name}); look at {self.out}, or run again")

    def close(self) -> None:
        """Sync what was appended and release the lock, even when the sync fails; no appends after."""
        self._closed = True
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is None:
            return
        try:
            if self._dirty:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _start(self) -> None:
        os.ftruncate(self._fd, 0)
        header = (dumps_json(self.settings, indent=None) + "\n").encode("utf-8", "surrogateescape")
        self._key = journal_lines.key(header)
        self._write(header)
        os.fsync(self._fd)

    def _write(self, data: bytes) -> None:
        # a raw write may take part of the line; a crash midway leaves a cut line, dropped on resume
        os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def _read(self) -> bool:
        """Check the header and every line, load the finished batches, and cut a line a crash
        left half-written; False when the file holds not even a complete header."""
        keep, header = 0, None
        for n, (offset, line) in self._numbered(0):
            if header is None:
                header = self._check_header(line)
                self._key = journal_lines.key(line)  # the header as it stands, `sources` of another machine too
            else:
                entry, why = journal_lines.decode(line, self._key)
                why = why or check_entry(entry, self.layout, self.row_check, self.done)
                if why is not None:
                    raise self._damaged(n, why)
                if self._moved:
                    self._check_contents(entry)
                self.done.add(entry["batch"])
            keep = offset
        if keep < os.fstat(self._fd).st_size:  # cut what a crash left half-written
            os.ftruncate(self._fd, keep)
        return header is not None

    def _numbered(self, skip: int) -> Iterator[tuple[int, tuple[int, bytes]]]:
        """(line number, (offset after it, line)) from line `skip` + 1 on (the first `skip` lines
        read, not yielded); a line longer than vaekit writes is damage, never read whole."""
        n = 0
        try:
            for n, item in enumerate(read_lines(self._fd, self.limit), 1):
                if n > skip:
                    yield n, item
        except LineTooLong as e:
            raise self._damaged(n + 1, str(e)) from None

    def _damaged(self, n: int, why: str) -> DamagedFile:
        return DamagedFile(f"{self.path} is damaged at line {n}: {why}; delete it to start again")

    def _check_header(self, line: bytes) -> dict:
        try:
            header = parse(line)
        except ValueError:
            header = None
        if not isinstance(header, dict) or "vaekit_journal" not in header:
            raise DamagedFile(f"{self.path} is not a vaekit journal; delete it to start again")
        # `sources` (inodes, change times) tell where the files live: when only they differ (the
        # folder copied with `cp -a`, a chmod), the finished batches' bytes decide (`_check_contents`)
        diff = changed(header, self.settings, skip=("sources",))
        if diff:  # another release's journal: no command of this one resumes it
            redo = "use the same command, with the model as it was then" if (header.get("vaekit"), header.get("vaekit_journal")) == (
                __version__, JOURNAL_VERSION) else "finish it with the vaekit that began it"
            if relative_then(header, self.settings):  # a resume from another folder read them elsewhere
                redo += " from the folder it was begun in (it names its model and inputs by relative paths)"
            raise BadInput(f"cannot resume {self.path}: it was started with other settings ({'; '.join(diff)}); "
                           f"{redo}, or delete it to start again")
        self._moved = header != self.settings
        return header

    def _check_contents(self, entry: dict) -> None:
        """BadInput naming the first file of a finished batch whose bytes are not those it was
        scored from, or that it skipped and that has changed since (it may read now)."""
        skipped = {str(s[0]): s[1] for s in entry["skipped"]}
        names = [self.layout.paths[i] for i in self.layout.positions(entry["batch"])]
        for name, was, now in zip(names, entry["sha256"], contents(names, skipped)):
            if was == now:
                continue
            if name in skipped:
                raise BadInput(f"cannot resume {self.path}: the input {name} was skipped when its batch was read "
                               f"({skipped[name]}) and has changed since; delete it to start again and read it")
            raise BadInput(f"cannot resume {self.path}: the input {name} was replaced or rewritten since its "
                           "batch was read (its bytes differ); use the same files, or delete it to start again")

    def append(self, batch: int, rows: list[dict], skipped: Sequence[tuple[str, str]] = (),
               outputs: Sequence[str] | None = None) -> None:
        """One batch's line, written at once, unbuffered (a killed process loses nothing written);
        synced to disk at most every SYNC_EVERY seconds, on close and before the next batch's own
        files are written (`writing`; a power cut loses at most those batches, which --resume scores
        again, and files of no batch but the next). With a layout, a batch that came in parts
        (vaekit.stream.iter_batches bounds the pixels held at once) is appended part by part: its
        line is written once its rows and skipped files account for all its files. `outputs`: the
        sha256 of the file each row wrote (a heat map, a reconstruction), one a row, in order."""
        if self._closed:
            raise RuntimeError(f"{self.path} is closed: no more rows can be added to it")
        rows, listed, outputs = self._gathered(batch, list(rows), [[str(p), r] for p, r in skipped],
                                               None if outputs is None else list(outputs))
        if rows is None:
            return
        sums = [] if self.layout is None else contents((self.layout.paths[i] for i in self.layout.positions(batch)),
                                                       {str(p) for p, _ in listed})
        entry = {"batch": batch, "rows": rows, "skipped": listed, "sha256": sums}
        if outputs is not None:
            entry["outputs"] = outputs
        self._write(journal_lines.encode(entry, self._key))
        self._dirty = True
        if time.monotonic() - self._synced > SYNC_EVERY:
            os.fsync(self._fd)
            self._synced, self._dirty = time.monotonic(), False
        self.done.add(batch)

    def _gathered(self, batch: int, rows: list, skipped: list,
                  outputs: list | None) -> tuple[list | None, list | None, list | None]:
        """The batch's rows, skipped files and outputs with those of its earlier parts, or (None,
        None, None) while some of its files are still to come. Only rows wait here (a few numbers a
        file), never pixels; a part of another batch before this one is whole is a bug of the caller."""
        if self.layout is None:
            return rows, skipped, outputs
        if self._part is not None:
            b, r, s, o = self._part
            if b != batch:
                raise RuntimeError(f"batch {batch} appended while batch {b} still misses some of its files")
            rows, skipped = r + rows, s + skipped
            outputs = None if o is None and outputs is None else (o or []) + (outputs or [])
        if len(rows) + len(skipped) < len(self.layout.positions(batch)):
            self._part = (batch, rows, skipped, outputs)
            return None, None, None
        self._part = None
        return rows, skipped, outputs

    @contextmanager
    def writing(self, where: Path) -> Iterator[None]:
        """Around the writing of a batch's own files (heat maps, PNGs), before its line: from then on
        the journal stays for --resume, which writes them again as its own, even if no line follows
        (a stop between two parts, a full disk); an OSError inside is CannotWrite naming `where`.
        The lines before go to disk first: after a power cut only this batch's files can lack a line."""
        if self._dirty:
            with naming_failed_writes(self.path):
                os.fsync(self._fd)
            self._synced, self._dirty = time.monotonic(), False
        self._wrote = True
        with naming_failed_writes(where):
            yield

    def entries(self) -> Iterator[dict]:
        """Every batch entry, in the order written."""
        for n, (_, line) in self._numbered(1):  # past the settings
            entry, why = journal_lines.decode(line, self._key)  # checked when read (`_read`) or written by this run,
            if why is not None:  # unless the file was changed since
                raise self._damaged(n, why)
            yield entry

    def rows(self) -> Iterator[dict]:
        """Every row, batch by batch in the order they were written (file order in one job)."""
        for entry in self.entries():
            yield from entry["rows"]

    def skipped(self) -> list[tuple[str, str]]:
        return [(p, r) for entry in self.entries() for p, r in entry["skipped"]]

    def finish(self, write: Callable[[BinaryIO], None]) -> Path:
        """Write the final file with `write(binary file)` atomically, then remove the journal."""
        with atomic_writer(self.out) as f:
            write(f)
        self.remove()
        return self.out

    def abandon(self) -> None:
        """Remove the journal when this run started it and no batch is in it yet, so a job refused
        or failed before its first batch (a heat map in the way, a model file of another model)
        leaves no OUT.partial to block the next run: it holds no work. An earlier run's journal,
        or one with batches, stays for --resume; so does one whose job has begun writing a batch's
        files (`writing`: a part of its first slice, or a disk that filled up halfway through its
        heat maps): they are on disk, and only a resume takes them as the job's own."""
        if not self._closed and not self.resumed and not self.done and not self._wrote:
            self.remove()

    def remove(self) -> None:
        """Delete the journal (its job is done, or had nothing to keep) and release its lock; a file
        put at its name since (the journal moved away while the job ran) is not the journal, and stays."""
        self._dirty = False  # nothing left to sync: the journal goes now
        if self._fd is not None and same_file(self._fd, self.path):
            self.path.unlink(missing_ok=True)
        self.close()


def open_journal(out: Path, settings: dict, resume: bool, layout: Layout | None = None,
                 row_check: RowCheck | None = None, row_bytes: int = 0) -> Journal:
    """A Journal for `out` (OUT.partial), its folder created; a write that fails (a full disk)
    names `out`."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Journal(out, settings, resume, layout, row_check, row_bytes)
    except VaekitError:
        raise
    except OSError as e:
        raise cannot_write(e, out) from None


@contextmanager
def naming_failed_writes(out: Path) -> Iterator[None]:
    """An OSError inside (appending to a journal) becomes CannotWrite naming `out`; the journal
    stays, so the job continues with --resume once there is room."""
    try:
        yield
    except OSError as e:
        if isinstance(e, VaekitError):
            raise
        raise cannot_write(e, out) from None
