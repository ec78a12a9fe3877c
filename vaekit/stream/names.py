"""The names a streaming job's files take beside its output OUT: its journal `OUT.partial`, a
share's `OUT.shard-I-of-N` (whose journal is that name + .partial) and the merge's lock
`OUT.merging`. However OUT is spelled, `.` and `..` included, they lie beside the folder or file
it names."""

from __future__ import annotations

import os
from pathlib import Path

from vaekit.errors import BadInput
from vaekit.fileio.outputs import MAX_NAME_BYTES

PARTIAL_SUFFIX = ".partial"
MERGING = ".merging"  # the lock of the share that merges: OUT.merging


def _named(out: Path) -> Path:
    """OUT as an absolute path with a name, in the folder the system resolves it to: `.`, `..` and
    a path ending in them, or a link to a folder (where its own folder can be written), as the
    folder they stand for, and the folder above OUT through any link on the way (`link/..` is the
    link's target's parent, as the kernel has it, where a textual normalisation would take the
    link's own parent: another folder, another journal and lock)."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        return Path(os.path.realpath(out))
    if out.is_symlink() and out.is_dir():
        # an output folder reached through a link is written through it: its journal and lock lie
        # beside the folder itself (two spellings of it were two jobs writing one folder unlocked),
        # unless nothing can be made there (~/out -> /scratch/me, /scratch the system's): beside the link
        real = Path(os.path.realpath(out))
        if real.name and os.access(real.parent, os.W_OK | os.X_OK):
            return real
    return Path(os.path.realpath(out.parent)) / out.name


def partial_path(out: Path) -> Path:
    """OUT.partial beside OUT, however OUT is spelled."""
    out = _named(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def merging_path(out: Path) -> Path:
    """OUT.merging beside OUT, however OUT is spelled."""
    out = _named(out)
    return out.with_name(out.name + MERGING)


def check_journal_name(out: Path) -> None:
    """BadInput when the journal beside `out` (OUT.partial) would pass MAX_NAME_BYTES: the OS said
    only "File name too long" of a name that fits (of another share's journal: "run them as one user"),
    or when there is nothing to put it beside (the root folder: ValueError from Path.with_name)."""
    if not _named(out).name:
        raise BadInput(f"output {out}: the root folder cannot be an output; give a folder below it")
    name = partial_path(out).name
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        raise BadInput(f"output {str(out)[:60]!r}...: its journal beside it, {name[:20]}...{PARTIAL_SUFFIX}, would be a "
                       f"name of {len(os.fsencode(name))} bytes, more than the {MAX_NAME_BYTES} a file system holds; "
                       "give a shorter name")


def share_out(out: Path, index: int, count: int) -> Path:
    """The file a share journals for (its journal is this name + .partial): OUT itself when unsharded."""
    if count == 1:
        return out
    out = _named(out)
    return out.with_name(f"{out.name}.shard-{index}-of-{count}")
