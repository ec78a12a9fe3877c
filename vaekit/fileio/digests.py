"""The sha256 of a file's bytes, for every check that asks whether two files, or one file then
and now, hold the same bytes (evaluate's copies across labelled sets, a journal's finished
files, the sample data's manifest)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vaekit.fileio import NotRegularFile, open_regular_file


def file_sha256(path) -> str | None:
    """The hex sha256 of a regular file's bytes, read a MiB at a time; None for anything else (a
    FIFO would block the open forever, /dev/zero never ends) or a file that cannot be read."""
    h = hashlib.sha256()
    try:
        with open_regular_file(Path(path)) as f:
            while block := f.read(1 << 20):
                h.update(block)
    except (OSError, NotRegularFile):
        return None
    return h.hexdigest()
