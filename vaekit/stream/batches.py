"""Which batches a streaming job has, which files each one covers, and whether a journal line is one of them.

A job cuts its file list into fixed slices of `batch_size` files (vaekit.stream.iter_batches);
share `index` of `count` owns every batch b with b % count == index. A journal line
(vaekit.stream.journals) claims one batch: `check_entry` accepts it only when its number is an integer
in range, owned by this share and the next of its batches (a job writes them in file order, so
its output is in file order too), and its rows and skipped files account for
exactly the files of that slice, in order, each row of the job's own shape (`RowCheck`).
So a journal cannot bring in rows of files that are not inputs, drop or repeat an input, or
carry rows of another shape; and `digest` pins the file list itself in the journal's header.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Callable, Container, Iterable, Sequence

MAX_SHARDS = 4096  # --shard COUNT and torchrun's WORLD_SIZE: each share is a journal to read at the merge

# (row, position of its file in the full list) -> what is wrong with the row, or None
RowCheck = Callable[[object, int], "str | None"]


def digest(paths: Sequence) -> str:
    """sha256 of the file list: each path's bytes with its size and modification time
    (NUL-separated). Two runs with this digest read the same files in the same order, so their
    batches are the same slices; a file replaced under the same name (another size or time)
    changes it, so a resume or a merge never keeps the rows of the image that was there before."""
    return _pinned(paths, lambda st: f"{st.st_size}:{st.st_mtime_ns}")


def sources(paths: Iterable) -> str:
    """sha256 of what no user can set back on each file of the list: its inode number and its
    change time (st_ctime_ns, which the system sets on every write, rename over it, `touch`,
    `chmod` or `chown`). It tells a file replaced or rewritten under the same name, size and
    modification time (`touch -r old new; mv new old`, `os.utime(ns=...)`) from the file
    `digest` saw. The same files seen from another machine (their own copy) differ here, so only
    a job's own journal is held to it, never another share's (vaekit.stream.shares)."""
    return _pinned(paths, identity)


def identity(st: os.stat_result) -> str:
    """A file's inode number and change time, as `sources` pins them."""
    return f"{st.st_ino}:{st.st_ctime_ns}"


def contents(paths: Iterable, skipped: Container = ()) -> list[str]:
    """The sha256 of each file's bytes, as a journal line pins its batch's files ("-" for one
    that cannot be read as a regular file). What a file IS, not where it lives: a resume whose
    `sources` differ (the folder copied with `cp -a`, a chmod) checks the finished batches' files
    against these, and goes on when their bytes are the same. A file of `skipped` gets
    `skipped_stamp`'s, so that one that reads now (its permissions mended, the file put back) is
    not kept as skipped."""
    from vaekit.fileio.digests import file_sha256  # here: vaekit.fileio is not needed to plan batches

    return [skipped_stamp(p) if p in skipped else file_sha256(p) or "-" for p in paths]


SKIPPED_HASH_BYTES = 1 << 28  # a skipped file up to 256 MiB is pinned by its bytes, a larger one by size and time


def skipped_stamp(path) -> str:
    """What pins a skipped file: "skipped:" and its sha256, "unreadable" where it cannot be read
    as a regular file, or its size and modification time where it is larger than
    SKIPPED_HASH_BYTES (a file that is not an image may be gigabytes, even a sparse terabyte)."""
    from vaekit.fileio.digests import file_sha256

    try:
        st = os.stat(path)
    except OSError:
        return "skipped:unreadable"
    if st.st_size > SKIPPED_HASH_BYTES:
        return f"skipped:{st.st_size}:{st.st_mtime_ns}"
    return "skipped:" + (file_sha256(path) or "unreadable")


def _pinned(paths: Iterable, stamp: Callable[[os.stat_result], str]) -> str:
    h = hashlib.sha256()
    texts = getattr(paths, "texts", None)
    for p in (texts if texts is not None else map(str, paths)):
        try:
            pin = stamp(os.stat(p))
        except OSError:  # gone or unreadable: scored as a skipped file, and pinned as such
            pin = "-"
        h.update(os.fsencode(p) + b"\0" + pin.encode() + b"\0")
    return h.hexdigest()


@dataclass(frozen=True)
class Layout:
    """The batches of one share of a job over `paths` (the full file list, as text)."""

    paths: Sequence[str]  # every input file, as rows and skipped entries name it
    batch_size: int
    index: int = 0
    count: int = 1

    @property
    def n_batches(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def owns(self, b: int) -> bool:
        return 0 <= b < self.n_batches and b % self.count == self.index

    def mine(self) -> range:
        """This share's batches, in order."""
        return range(self.index, self.n_batches, self.count)

    def positions(self, b: int) -> range:
        return range(b * self.batch_size, min(len(self.paths), (b + 1) * self.batch_size))

    def share(self, index: int) -> "Layout":
        return Layout(self.paths, self.batch_size, index, self.count)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_entry(entry, layout: Layout | None, row_check: RowCheck | None, seen: set[int]) -> str | None:
    """What is wrong with one journal line (parsed JSON), or None. Without a layout only its
    shape is checked (a batch number >= 0 not seen before, rows a list of objects)."""
    if not isinstance(entry, dict) or set(entry) - {"outputs"} != {"batch", "rows", "skipped", "sha256"}:
        return "not a batch entry (expected the fields batch, rows, skipped, sha256 and maybe outputs)"
    b, rows, skipped = entry["batch"], entry["rows"], entry["skipped"]
    if type(b) is not int:  # not a bool, a float or text
        return f"batch number {b!r} is not an integer"
    if layout is not None and not layout.owns(b):
        share = f" owned by share {layout.index}/{layout.count}" if layout.count > 1 else ""
        return f"batch {b} is not one of this job's batches (0 to {layout.n_batches - 1}{share})"
    if b < 0:
        return f"batch number {b} is negative"
    if b in seen:
        return f"batch {b} appears twice"
    if layout is not None and b != layout.mine()[len(seen)]:  # a job writes its batches in turn, each after the last
        return f"batch {b} is out of order (batch {layout.mine()[len(seen)]} comes next)"
    if not isinstance(rows, list) or not isinstance(skipped, list):
        return f"batch {b}: rows and skipped must be lists"
    for s in skipped:
        if not (isinstance(s, list) and len(s) == 2 and all(isinstance(v, str) for v in s)):
            return f"batch {b}: a skipped file must be [path, reason], got {s!r:.80}"
    sums, n = entry["sha256"], None if layout is None else len(layout.positions(b))
    if not (isinstance(sums, list) and all(isinstance(v, str) for v in sums) and len(sums) == (n or 0)):
        return f"batch {b}: sha256 must list one digest per file of the batch"
    outputs = entry.get("outputs", [])
    if "outputs" in entry and not (isinstance(outputs, list) and len(outputs) == len(rows) and all(
            isinstance(v, str) and len(v) == 64 for v in outputs)):
        return f"batch {b}: outputs must list one sha256 per row"
    if layout is None:
        return None if all(isinstance(r, dict) for r in rows) else f"batch {b}: a row is not an object"
    return _accounts(b, rows, skipped, layout, row_check)


def _accounts(b: int, rows: list, skipped: list, layout: Layout, row_check: RowCheck | None) -> str | None:
    """Whether rows and skipped files name exactly the files of batch b, in order."""
    r = s = 0
    for i in layout.positions(b):
        if s < len(skipped) and skipped[s][0] == layout.paths[i]:
            s += 1
            continue
        if r < len(rows):
            why = row_check(rows[r], i) if row_check is not None else None
            if why is None:
                r += 1
                continue
            return f"batch {b}, row {r}: {why}"
        return f"batch {b} does not account for its file {layout.paths[i]!r}"
    n = len(layout.positions(b))
    if r != len(rows) or s != len(skipped):
        return f"batch {b} holds {len(rows)} rows and {len(skipped)} skipped files, but has {n} files"
    return None


def check_number(row: dict, key: str) -> str | None:
    """A float field of a row: a number, or "nan"/"inf"/"-inf" (JSON has no non-finite numbers)."""
    v = row.get(key)
    if v in ("nan", "inf", "-inf"):
        return None
    if not _number(v):
        return f"{key} is not a number ({v!r:.40})"
    try:  # JSON's integers are unbounded: one of 400 digits is no float, and no score vaekit wrote
        f = float(v)
    except OverflowError:
        return f"{key} is out of range ({str(v)[:20]}... of {len(str(v))} digits)"
    if not math.isfinite(f):  # JSON's NaN and Infinity tokens: vaekit writes those values as text
        return f"{key} is out of range ({f}, where vaekit writes \"{f}\" as text)"
    return None


def changed(old: dict, new: dict, skip: Sequence[str] = ()) -> list[str]:
    """'key (old → new)' for each setting that differs; long values are shortened."""
    def show(v) -> str:
        text = "absent" if v is _ABSENT else repr(v)
        return text if len(text) <= 40 else text[:37] + "..."

    keys = [k for k in {**old, **new} if k not in skip and old.get(k, _ABSENT) != new.get(k, _ABSENT)]
    if "sources" in keys and ("file_list" in keys or "vaekit_journal" in keys):
        keys.remove("sources")  # another list, or a journal format that pinned no sources: not a file replaced
    return [_SAID.get(k) or (k == "inputs" and _inputs(old.get(k), new.get(k)))
            or f"{k} {show(old.get(k, _ABSENT))} then, {show(new.get(k, _ABSENT))} now" for k in keys]


def relative_then(header: dict, settings: dict) -> bool:
    """Whether a journal's header named its model or an input by a relative path, and the names
    differ now: a resume from another folder reads them elsewhere."""
    was = [header.get("model"), *(header.get("inputs") or [])] if isinstance(header.get("inputs"), list) else []
    now = [settings.get("model"), *(settings.get("inputs") or [])] if isinstance(settings.get("inputs"), list) else []
    return was != now and any(isinstance(p, str) and p and not os.path.isabs(p) for p in was)


def _inputs(old, new) -> str | None:
    """The first input named that differs, whole (a path cut short hid which folder it was), with
    where each leads; None where either is not a list of paths."""
    if not (isinstance(old, list) and isinstance(new, list) and all(isinstance(p, str) for p in old + new)):
        return None
    i = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    def where(names: list) -> str:
        if i >= len(names):
            return "nothing"
        real = real_place(names[i])
        return repr(names[i]) + (f" (that is {real!r})" if real not in (None, names[i]) else "")

    lengths = f"; {len(old)} named then, {len(new)} now" if len(old) != len(new) else ""
    return f"input {i + 1} was {where(old)} then, {where(new)} now{lengths}"


def real_place(name: str) -> str | None:
    """os.path.realpath of an input as a journal's header names it; None for a name no path can be
    (a NUL or an unpaired surrogate in a damaged or forged header: realpath raised ValueError)."""
    try:
        return os.path.realpath(name)
    except (ValueError, OSError):
        return None


_SAID = {"vaekit_journal": "it is in another journal format (an older vaekit's, whose lines carry no "
                           "checksum, no sha256 of their files, a checksum not keyed by its header, or no sha256 "
                           "of the files a batch skipped or of the heat maps and PNGs it wrote; or a newer one's)",
         "sources": "an input file was replaced or rewritten since, keeping its name, size and modification time "
                    "(its inode or change time differs; a chmod, a chown or a copy of the folder changes them too)",
         "file_list": "the input files changed (a file added, removed, renamed, or replaced: another size or "
                      "modification time)"}


_ABSENT = object()


def refuse_changed_outputs(journal, files: Callable[[dict], list], what: str) -> None:
    """BadInput naming the first file a finished batch wrote (`files(entry)`: its rows' heat maps or
    reconstructions, in order) that is gone since the stop, where the resume would write only the
    other batches' and call the job done, or that holds other bytes than the job wrote there
    (another job's, written over it since: kept, it left two models' files beside one model's rows;
    journal format 7 pins each by its sha256)."""
    from vaekit.errors import BadInput

    for e in journal.entries():
        lost = changed_output(e, files)
        if lost is not None:
            t, why = lost
            raise BadInput(f"cannot resume {journal.path}: the {what} {t} of a finished batch {why} delete the journal "
                           "and run the job again with --overwrite")


def changed_output(e: dict, files: Callable[[dict], list]):
    """(file, why) of the first file the batch `e` wrote that is gone or holds other bytes than
    it wrote there (its line's `outputs`), or None (refuse_changed_outputs; a merge checks the
    other shares' batches so, vaekit.stream.shares)."""
    from vaekit.fileio.digests import file_sha256

    for k, t in enumerate(files(e)):
        if not (t.exists() or t.is_symlink()):
            return t, "is gone (removed since the job stopped?); put it back, or"
        if "outputs" in e and (t.is_symlink() or file_sha256(t) != e["outputs"][k]):
            return t, "holds other bytes than this job wrote there (written over since the job stopped, by another job?);"
    return None
