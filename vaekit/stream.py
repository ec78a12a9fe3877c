"""Streaming inference: decoded batches in, per-image rows out, in bounded memory and resumable.

Four pieces, used by every inference command and the demo:
- `find_inputs`: the image files under what the user named, each with its name relative to
  the folder it was found in (the names every output uses).
- `shard`: this process's share of a file list, deterministic by file order (torchrun's
  RANK / WORLD_SIZE, or an explicit `--shard i/n`).
- `iter_batches`: fixed slices of the file list, decoded ahead of the consumer (in a thread of
  vaekit.pipeline, and in worker processes when asked). A batch is always the same slice of
  files, so a resumed job scores exactly the batches an uninterrupted one would, and gets
  bit-identical numbers.
- `Journal`: rows appended to `OUT.partial` one batch per line, flushed as they are produced;
  `--resume` reads it back and skips the finished batches, and `finish` turns it into the
  final file atomically. A line cut short by a crash is dropped, never half-read.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np

from vaekit import images as imageio
from vaekit import pipeline
from vaekit.errors import BadInput, DamagedFile, InUse
from vaekit.fileio import atomic_writer, dumps_json

PARTIAL_SUFFIX = ".partial"
JOURNAL_VERSION = 1
SYNC_EVERY = 2.0  # seconds between a journal's fsyncs
READ_AHEAD = pipeline.DEPTH  # batches decoded ahead of the consumer


class PathList(Sequence[Path]):
    """File paths kept as text and handed out as Paths: a list of a million files costs about
    a fifth of the memory a list of Path objects would."""

    def __init__(self, items: Sequence[str]):
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Path(p) for p in self._items[i]]
        return Path(self._items[i])

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"PathList({len(self)} paths)"


@dataclass
class Inputs:
    roots: list[Path]  # what the user named: files and folders, in order
    paths: Sequence[Path]  # every image file found under them, in order (a PathList)
    names: list[str]  # each file's name relative to the root it was found under


def find_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> Inputs:
    """The image files under `inputs` (see images.find_images) and their relative names.
    Naming nothing, or folders that hold no image file, is BadInput (NoImagesError)."""
    roots = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(r) for r in inputs]
    if not roots:
        raise BadInput("no inputs given: name image files or folders")
    found = imageio.scan_roots(roots)
    paths = [f for _, files in found for f in files]
    if not paths:
        where = roots[0] if len(roots) == 1 else ", ".join(map(str, roots))
        raise imageio.NoImagesError(f"no image files found in {where}")
    folders = _folders(roots)
    if len(roots) == 1 and folders:  # the common case, without a Path per file
        cut = len(paths[0]) - len(Path(paths[0]).relative_to(roots[0]).as_posix())
        names = [f[cut:] for f in paths]
    else:
        names = [_name(Path(f), folders, len(roots)) for f in paths]
    return Inputs(roots, PathList(paths), names)


def relative_name(path: Path, roots: Sequence[Path]) -> str:
    """`path` relative to the folder it was found in, posix style; with several inputs, prefixed
    by that folder's name, so names stay unique; a file named directly is its own name."""
    roots = [Path(r) for r in roots]
    return _name(Path(path), _folders(roots), len(roots))


def _folders(roots: Sequence[Path]) -> list[tuple[Path, str]]:
    """(root, its real folder's name) for the roots that are folders: each looked at once."""
    return [(r, r.resolve().name) for r in roots if r.is_dir()]


def _name(path: Path, folders: list[tuple[Path, str]], n_roots: int) -> str:
    for root, real in folders:
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            continue
        return f"{real}/{rel}" if n_roots > 1 else rel
    return path.name


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" (0 <= i < n) -> (i, n); anything else is BadInput naming the value."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise BadInput(f"invalid shard {text!r}: expected INDEX/COUNT such as 0/4") from None
    if not 0 <= i < n:
        raise BadInput(f"invalid shard {text!r}: need 0 <= INDEX < COUNT")
    return i, n


def env_shard() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise BadInput("RANK and WORLD_SIZE must be integers") from None
    if not 0 <= rank < max(world, 1):
        raise BadInput(f"RANK {rank} is not below WORLD_SIZE {world}")
    return rank, max(world, 1)


def shard(paths: Sequence, index: int, count: int, batch_size: int) -> list[int]:
    """Positions in `paths` that shard `index` of `count` owns: whole batches, dealt round-robin,
    so each shard's batches are the same slices an unsharded run would score."""
    starts = range(0, len(paths), batch_size)
    return [i for b, s in enumerate(starts) if b % count == index for i in range(s, min(s + batch_size, len(paths)))]


@dataclass
class Batch:
    index: int  # which fixed slice of the file list (batch_size files each)
    positions: list[int]  # positions in the full file list of the loaded images
    paths: list[Path]  # the loaded files, in order
    images: np.ndarray  # (B, C, H, W) uint8 at the model's size
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # files of this slice that failed


def iter_batches(paths: Sequence[Path], size: int, channels: int, batch_size: int = 64, workers: int = 0,
                 positions: Sequence[int] | None = None, skip_batches: set[int] | frozenset = frozenset(),
                 ahead: int = READ_AHEAD) -> Iterator[Batch]:
    """Decode `paths[positions]` (default: all) in fixed slices of `batch_size` of the FULL list;
    slices in `skip_batches` are not read at all. Memory: a few batches, whatever the count.

    Decoding runs in a background thread up to `ahead` batches in front of the consumer (Pillow
    and torch release the GIL, so it overlaps with scoring); ahead=0 decodes in the caller."""
    if batch_size < 1:
        raise BadInput(f"batch size must be >= 1, got {batch_size}")
    positions = range(len(paths)) if positions is None else (positions if isinstance(positions, Sequence) else list(positions))
    todo = [i for i in positions if i // batch_size not in skip_batches] if skip_batches else positions
    loaded = imageio.iter_load(_Picked(paths, todo), size, channels, workers)
    batches = _slices(todo, loaded, batch_size, channels, size)
    return pipeline.read_ahead(batches, ahead) if ahead > 0 else batches


class _Picked(Sequence[Path]):
    """paths[todo[i]], looked up when read: no copy of a long file list."""

    def __init__(self, paths: Sequence, todo: Sequence[int]):
        self.paths, self.todo = paths, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Path(self.paths[j]) for j in self.todo[i]]
        return Path(self.paths[self.todo[i]])


def _slices(todo, loaded, batch_size, channels, size) -> Iterator[Batch]:
    current, pos, got, bad = None, [], [], []
    for i, (path, x, reason) in zip(todo, loaded):
        b = i // batch_size
        if current is not None and b != current:
            yield _batch(current, pos, got, bad, channels, size)
            pos, got, bad = [], [], []
        current = b
        if x is None:
            bad.append((path, reason or ""))
        else:
            pos.append(i)
            got.append((path, x))
    if current is not None:
        yield _batch(current, pos, got, bad, channels, size)


def _batch(index, pos, got, bad, channels, size) -> Batch:
    images = np.stack([x for _, x in got]) if got else np.zeros((0, channels, size, size), np.uint8)
    return Batch(index, list(pos), [p for p, _ in got], images, list(bad))


class Journal:
    """Rows of a long job, one batch per JSON line in `OUT.partial` (see the module docstring).

    Only the indices of finished batches stay in memory; rows are read back from the file when
    the job finishes. The first line records the job's settings: resuming with other settings
    is refused, since rows of two different jobs would be mixed in one file."""

    def __init__(self, out: Path, settings: dict, resume: bool):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + PARTIAL_SUFFIX)
        self.settings = json.loads(dumps_json({"vaekit_journal": JOURNAL_VERSION, **settings}, indent=None))
        self.done: set[int] = set()
        self._file, self._synced, self._closed = None, time.monotonic(), False
        unfinished = self.path.exists() and self.path.stat().st_size > 0
        self.resumed = False  # True: continues an earlier run's journal
        self._lock()
        if unfinished and not resume:
            self.close()
            raise BadInput(f"{self.path} holds the rows of an unfinished job: pass --resume to continue it, "
                           "or delete it to start again")
        try:
            self.resumed = self.path.exists() and self._read()
            if not self.resumed:
                self._start()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        """Hold an exclusive lock on OUT.partial for the job's life: a second process writing the
        same output (even with --resume) gets InUse instead of interleaving rows. Released by the
        kernel when this process ends, however it ends. No flock (Windows): no lock."""
        try:
            import fcntl
        except ImportError:
            self._fd = None
            return
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise InUse(f"{self.out} is being written by another vaekit process right now "
                        f"({self.path.name} is locked); wait for it, or write elsewhere") from None

    def close(self) -> None:
        """Sync what was appended and release the lock, even when the sync fails; no appends after."""
        self._closed = True
        try:
            if getattr(self, "_file", None) is not None:
                try:
                    self._sync()
                finally:
                    self._file.close()
                    self._file = None
        finally:
            if getattr(self, "_fd", None) is not None:
                os.close(self._fd)
                self._fd = None

    def _start(self) -> None:
        with open(self.path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(dumps_json(self.settings, indent=None) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """(offset after the line, line) for each complete line; a last line without its
        newline was cut short by a crash and is not yielded."""
        with open(self.path, "rb") as f:
            offset = 0
            for line in f:
                if not line.endswith(b"\n"):
                    return
                offset += len(line)
                yield offset, line

    def _read(self) -> bool:
        """Load the finished batches; False when the file holds not even its header."""
        keep, header = 0, None
        for offset, line in self._lines():
            try:
                entry = json.loads(line.decode("utf-8", "surrogateescape"))
            except ValueError:
                if header is None:
                    raise DamagedFile(f"{self.path} is not a vaekit journal; delete it to start again") from None
                break  # a damaged tail: redo from here
            if header is None:
                header = entry
                if header != self.settings:
                    changed = sorted(k for k in set(header) | set(self.settings) if header.get(k) != self.settings.get(k))
                    raise BadInput(f"cannot resume {self.path}: it was started with other settings "
                                   f"({', '.join(changed)}); use the same command, or delete it to start again")
            elif isinstance(entry, dict) and isinstance(entry.get("batch"), int) and entry["batch"] not in self.done:
                self.done.add(entry["batch"])
            else:
                break
            keep = offset
        if header is not None and keep < self.path.stat().st_size:  # cut what a crash left half-written
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        return header is not None

    def append(self, batch: int, rows: list[dict], skipped: Sequence[tuple[str, str]] = ()) -> None:
        """One batch's line, flushed (a killed process loses nothing written); synced to disk
        at most every SYNC_EVERY seconds and on close (a power cut loses at most those batches,
        which --resume scores again)."""
        entry = {"batch": batch, "rows": rows, "skipped": [[str(p), r] for p, r in skipped]}
        if self._closed:
            raise RuntimeError(f"{self.path} is closed: no more rows can be added to it")
        if self._file is None:  # unbuffered: a failed write leaves nothing behind to flush again
            self._file = open(self.path, "ab", buffering=0)
        data = (dumps_json(entry, indent=None) + "\n").encode("utf-8", "surrogateescape")
        view = memoryview(data)
        while view:  # a raw write may take part of the line; a crash midway leaves a cut line
            view = view[self._file.write(view):]
        if time.monotonic() - self._synced > SYNC_EVERY:
            self._sync()
        self.done.add(batch)

    def _sync(self) -> None:
        os.fsync(self._file.fileno())
        self._synced = time.monotonic()

    def _entries(self) -> Iterator[dict]:
        lines = self._lines()
        next(lines, None)  # the settings
        for _, line in lines:
            yield json.loads(line.decode("utf-8", "surrogateescape"))

    def rows(self) -> Iterator[dict]:
        """Every row, batch by batch in the order they were written (file order in one job)."""
        for entry in self._entries():
            yield from entry["rows"]

    def skipped(self) -> list[tuple[str, str]]:
        return [(p, r) for entry in self._entries() for p, r in entry["skipped"]]

    def finish(self, write: Callable[[BinaryIO], None]) -> Path:
        """Write the final file with `write(binary file)` atomically, then remove the journal."""
        with atomic_writer(self.out) as f:
            write(f)
        if self._file is not None:  # nothing left to sync: the journal goes now
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
        self.close()
        return self.out
