"""The sha256 of a file's bytes, for every check that asks whether two files, or one file then
and now, hold the same bytes (evaluate's copies across labelled sets, a journal's finished
files, the sample data's manifest, the training cache's entries)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vaekit.fileio import NotRegularFile, open_regular_file


def file_sha256(path) -> str | None:
    """The hex sha256 of a regular file's bytes, read a MiB at a time; None for anything else (a
    FIFO would block the open forever, /dev/zero never ends) or a file that cannot be read."""
    try:
        with open_regular_file(Path(path)) as f:
            return open_file_sha256(f)
    except (OSError, NotRegularFile):
        return None


def open_file_sha256(f) -> str:
    """The hex sha256 of the open binary file `f` from its start, read a MiB at a time."""
    h = hashlib.sha256()
    f.seek(0)
    while block := f.read(1 << 20):
        h.update(block)
    return h.hexdigest()
