"""Decode's staging folder: every PNG is written there first and moved into place only when all
decoded, so a refused, failed or interrupted decode leaves nothing half-written. Both decoders
use it: a .vkc's (vaekit.codec.jobs) and a code file's (vaekit.codes.jobs).

The staging folder lies inside the output folder, so each move is a rename on the targets' own
filesystem (an output folder that is a mount point, or a link to another disk, would make a rename
from its parent fail with EXDEV). Its name starts with a dot, so `find_inputs` never reads it as an
image folder, and it carries the partial tag (vaekit.fileio.leftovers) by which the next decode into
the same folder knows a killed one's and removes it. A target whose own folder is on yet another
filesystem (a link inside the output folder) is copied, synced, then renamed into place.

The moves are journalled (`.moves` in the staging folder, a line before each move), so a decode
killed while it moves its files (SIGKILL: nothing of it runs again) is taken back by the next
decode into the same folder: every file of it that is still where it was moved (the same inode,
size and mtime) goes, every file it replaced comes back, every folder it made and left empty goes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from vaekit.errors import OutputExists, cannot_write
from vaekit.fileio.atomic import temp_name
from vaekit.fileio.leftovers import mark_partial, remove_stale, stale
from vaekit.fileio.outputs import appeared, put_in_place

STAGE = ".vaekit-decode-"  # the staging folder's name inside the output folder: STAGE + PID-TOKEN
JOURNAL = ".moves"  # in the staging folder: the moves begun, one JSON line each (vaekit.fileio.staging)
JOURNAL_MAX = 1 << 28  # bytes of a journal read back (~130 bytes a move: two million moves)


@contextmanager
def staged(out_dir: Path, targets: Sequence[Path], replace: bool = True) -> Iterator[list[Path]]:
    """The paths to write each target to; on a clean exit they are moved onto `targets`
    (replace=False, no --overwrite: none onto a file put there meanwhile, OutputExists, all
    taken back). On an error the staging folder goes, and so does `out_dir` where this created it (empty)."""
    out_dir = Path(out_dir)
    created = not (out_dir.exists() or out_dir.is_symlink())
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(e, out_dir) from None
    recover(out_dir)  # a killed decode's
    remove_stale(out_dir.parent, f".{out_dir.name}.vkc-")  # one left beside it by an earlier vaekit (staged beside)
    staging = out_dir / f"{STAGE}{os.getpid()}-{os.urandom(3).hex()}"
    done = False
    try:
        mark_partial(staging)
        paths = [staging / Path(t).relative_to(out_dir) for t in targets]
        yield paths
        with open(staging / JOURNAL, "w", encoding="ascii") as journal:
            _move_all(out_dir, paths, [Path(t) for t in targets], replace, staging / ".replaced", journal)
        done = True
    finally:
        _remove(staging, done)
        if created and not done:
            try:
                out_dir.rmdir()
            except OSError:
                pass


def _remove(staging: Path, done: bool) -> None:
    """The staging folder goes, with the replaced files' links: a Ctrl-C while it goes (thousands of
    files) is raised once it is gone, not in its middle, and not at all after the last move (`done`):
    the decode is complete, and exit 130 would say it was not."""
    try:
        shutil.rmtree(staging, ignore_errors=True)
    except KeyboardInterrupt:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            raise


def _move_all(out_dir: Path, paths: Sequence[Path], targets: Sequence[Path], replace: bool = True,
              keep: Path | None = None, journal=None) -> None:
    """Move every staged file onto its target; a Ctrl-C, SIGTERM or write error halfway takes
    back the targets that did not exist before, and the folders made for them, and puts back the
    files it replaced (`replace`), kept as hard links in the folder `keep` until the end, so the
    output is all or nothing (it was the first files moved: the next decode refused them as
    existing; with --overwrite, the files replaced before the error held the new decode).
    `journal` (a text file) gets the folders it makes and, before each move, the move (`_note`)."""
    new_dirs = sorted({d for t in targets for d in t.parents if d != out_dir and out_dir in d.parents
                       and not (d.exists() or d.is_symlink())}, key=lambda d: len(d.parts), reverse=True)
    moved: list[Path] = []
    replaced: list[tuple[Path, Path]] = []  # (target, the old file's link in `keep`)
    _note(journal, out_dir, dirs=new_dirs)
    try:
        for s, t in zip(paths, targets):
            old, new = None, False
            if not (t.exists() or t.is_symlink()):
                moved.append(t)  # before the move: an interrupt right after it still takes it back
                new = True
            elif not replace:  # every target was free when the job began: this one was put there since
                raise appeared(t)
            elif keep is not None and _keep_old(t, keep, replaced):
                old = replaced[-1][1]
            _note(journal, out_dir, s, t, old, new)
            try:
                _move(s, t, replace)  # not replace: never onto a file put there since the look, either
            except OutputExists:
                moved.remove(t)  # the file there is not ours: it stays
                raise
    except BaseException:
        for t in moved:
            t.unlink(missing_ok=True)
        for t, old in reversed(replaced):
            try:
                os.replace(old, t)
            except OSError:
                pass
        for d in new_dirs:  # deepest first; a folder something else now holds stays
            try:
                d.rmdir()
            except OSError:
                pass
        raise


def _keep_old(target: Path, keep: Path, replaced: list) -> bool:
    """A hard link to the file (or link) at `target` in `keep`, noted in `replaced` once made, so
    that a move that fails later can put it back. Where it cannot be made (the target's folder on
    another file system, one without hard links), that file is replaced without a way back (False)."""
    old = keep / str(len(replaced))
    try:
        keep.mkdir(exist_ok=True)
        os.link(target, old, follow_symlinks=False)
    except OSError:
        return False
    replaced.append((target, old))
    return True


def _rel(path: Path, out_dir: Path) -> str:
    """A path under `out_dir` as the journal keeps it: its bytes relative to `out_dir`, in hex
    (any name, newlines and bytes that are not UTF-8 included, fits on one line)."""
    return os.fsencode(os.path.relpath(path, out_dir)).hex()


def _note(journal, out_dir: Path, staged: Path | None = None, target: Path | None = None,
          old: Path | None = None, new: bool = False, dirs: Sequence[Path] = ()) -> None:
    """One line of the move journal: the folders the moves will make, or a move about to be
    made, with the staged file's identity (`_identity`) and where the file it replaces is kept.
    Flushed, not synced: a killed process's writes are on disk; a lost machine loses the decode."""
    if journal is None or (staged is None and not dirs):
        return
    if staged is None:
        entry = {"dirs": [_rel(d, out_dir) for d in dirs]}
    else:
        st = os.lstat(staged)
        entry = {"to": _rel(target, out_dir), "id": _identity(st), "old": old.name if old is not None else None,
                 "new": new}
    try:
        journal.write(json.dumps(entry) + "\n")
        journal.flush()
    except OSError as e:  # a full disk: one line naming the journal, and the moves so far taken back
        raise cannot_write(e, Path(journal.name)) from None


def _identity(st: os.stat_result) -> list[int]:
    """What tells the staged file at its target from any other (a rename keeps all four; a file
    written there since may reuse the freed inode, but not with the same size and nanosecond mtime)."""
    return [st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns]


def recover(out_dir: Path) -> None:
    """Take back what decodes killed while moving their PNGs into `out_dir` left there (`_take_back`),
    then remove their staging folders. Every journal is replayed, pass after pass, until a pass
    undoes nothing, before any folder goes: where two killed decodes replaced one file, the earlier
    one's move is undone only once the later one's has put its file back (no order of files' times
    needed). Called before a decode checks its outputs: re-running the killed decode must not be
    refused by the killed one's files."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    found = stale(out_dir, STAGE)
    for _ in range(len(found)):  # each pass undoes at least one more decode's move, or ends it
        if not sum(_take_back(out_dir, old) for old in found):
            break
    for old in found:
        shutil.rmtree(old, ignore_errors=True)


def _take_back(out_dir: Path, staging: Path) -> int:
    """Undo what a killed decode's journal says it moved: a file still at its target as it was
    staged is removed where the move made it (`new`), or replaced by the file it replaced; the
    folders it made go where empty. A file anyone put there since (another identity) stays, and
    so does one it replaced without a way back (no hard link: its new file is all there is). Only a
    journal of this user's, and only paths inside `out_dir`: an edited journal takes back nothing else.
    Returns how many moves it undid (a move undone once no longer matches: replaying is harmless)."""
    entries, undone = _journal(staging), 0
    for entry in reversed(entries):
        try:
            if "dirs" in entry:
                continue
            target = _inside(out_dir, entry["to"])
            if target is None or _identity(os.lstat(target)) != entry["id"]:
                continue
            if entry.get("old") is not None:
                os.replace(staging / ".replaced" / str(int(entry["old"])), target)
                undone += 1
            elif entry.get("new") is True:
                target.unlink()
                undone += 1
        except (ValueError, KeyError, TypeError, OSError):  # a file gone since; a line of another shape
            continue
    dirs = next((e["dirs"] for e in entries if isinstance(e.get("dirs"), list)), [])
    for d in dirs:  # deepest first, as written
        try:
            folder = _inside(out_dir, d)
            if folder is not None:
                folder.rmdir()
        except (ValueError, TypeError, OSError):
            pass
    return undone


def _journal(staging: Path) -> list[dict]:
    """The journal's entries (JSON objects; a line a kill cut short, or any other, left out): none
    unless it is a regular file of this user's, at most JOURNAL_MAX bytes."""
    from vaekit.fileio import open_regular_file

    try:
        if staging.lstat().st_uid != os.getuid():
            return []
        with open_regular_file(staging / JOURNAL) as f:  # never a link or a FIFO
            raw = f.read(JOURNAL_MAX + 1)
    except (OSError, AttributeError, ValueError):  # AttributeError: no getuid (Windows)
        return []
    entries = []
    for line in raw[:JOURNAL_MAX].decode("ascii", "replace").splitlines():
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _inside(out_dir: Path, rel_hex) -> Path | None:
    """The journal's path (`_rel`) under `out_dir`, or None for one that would leave it (absolute,
    with a `..`, or through a link to a folder elsewhere): what a decode moved is below its output folder."""
    rel = os.fsdecode(bytes.fromhex(rel_hex))
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or ".." in parts:
        return None
    target = out_dir / rel
    real, top = os.path.realpath(target.parent), os.path.realpath(out_dir)
    return target if os.path.commonpath([real, top]) == top else None  # top + os.sep was "//" for "/"


def _move(src: Path, dst: Path, replace: bool = True) -> None:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        put_in_place(src, dst, replace)
    except OutputExists:
        raise
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise cannot_write(e, dst) from None
        _copy_into_place(src, dst, replace)


def _copy_into_place(src: Path, dst: Path, replace: bool = True) -> None:
    """A move across filesystems: copied beside `dst`, synced, then renamed onto it."""
    tmp = temp_name(dst)  # a name near 255 bytes was 20 bytes too long for its temporary one
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        put_in_place(tmp, dst, replace)
    except BaseException as e:  # a Ctrl-C mid-copy too: no temporary file stays
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, OutputExists):
            raise cannot_write(e, dst) from None
        raise
