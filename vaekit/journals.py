"""Opening and appending to a job's journal (vaekit.stream.Journal) with the output rules of fileio:
folders created, failed writes naming the output, and no empty journal left behind."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vaekit import stream
from vaekit.errors import VaekitError, cannot_write


def open_journal(out: Path, settings: dict, resume: bool):
    """vaekit.stream.Journal for `out` (OUT.partial), its folder created; a write that fails
    (a full disk) names `out`, and a journal that could not even be started is removed."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return stream.Journal(out, settings, resume)
    except VaekitError:  # InUse: another process's journal, which must stay as it is
        raise
    except OSError as e:
        if not resume:
            out.with_name(out.name + stream.PARTIAL_SUFFIX).unlink(missing_ok=True)
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
