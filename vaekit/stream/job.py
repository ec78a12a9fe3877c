"""The frame of every streaming folder job (anomaly-score, encode, reconstruct): its files and
this process's share of them, its journal opened beside the other shares', held while the
batches run, and the end of the share (a merge into OUT when every share is complete).

    share = job.start(inputs, out, shard, batch_size)
    shares, journal = job.open_share(out, settings, share.layout, row_check, resume, overwrite)
    with job.held(journal, out):
        ... write the batches not in journal.done ...
        merged, pending = job.end(journal, shares, share.torchrun, merge_timeout, progress, finish)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from vaekit.stream.batches import Layout
from vaekit.stream.finish import finish_when_complete, refuse_unfinished_output
from vaekit.stream.headers import journaled_inputs
from vaekit.stream.inputs import Inputs, check_shard, env_shard, find_inputs
from vaekit.stream.journals import Journal, RowCheck, naming_failed_writes, open_journal
from vaekit.stream.shares import Shares, share_out


@dataclass(frozen=True)
class Share:
    """This process's part of a job: the inputs as its journals spell them, the files found under
    them, its batches, and whether torchrun's ranks run the job (then rank 0 merges)."""

    inputs: object
    found: Inputs
    layout: Layout
    torchrun: bool


def start(inputs, out: str | Path | None, shard: tuple[int, int] | None, batch_size: int) -> Share:
    """The files under `inputs` (each once) and this share of them: `shard` (index, count), or
    None for torchrun's RANK / WORLD_SIZE, or all. The inputs are taken as a journal of the job
    writing `out` spelled them, where that names the same files (vaekit.stream.headers)."""
    inputs = journaled_inputs(inputs, None if out is None else Path(out), shard)
    found = find_inputs(inputs, once=True)
    torchrun = shard is None and env_shard()[1] > 1
    index, count = check_shard(*(env_shard() if shard is None else shard))
    texts = getattr(found.paths, "texts", None)
    layout = Layout(texts if texts is not None else [str(p) for p in found.paths], batch_size, index, count)
    return Share(inputs, found, layout, torchrun)


def open_share(out: str | Path, settings: dict, layout: Layout, row_check: RowCheck, resume: bool,
               overwrite: bool, row_bytes: int = 0, folder: bool = False) -> tuple[Shares, Journal]:
    """(Shares, Journal) of this share of the job writing `out`: the shares of another job are
    refused before any work, and so is, resuming, a file at `out` that cannot be the merge's own
    (not for a `folder` job, whose OUT is a folder it fills)."""
    out = Path(out)
    shares = Shares(out, settings, layout, row_check, row_bytes=row_bytes)
    shares.check_headers()
    journal = open_journal(share_out(out, layout.index, layout.count), settings, resume, layout,
                           shares.row_check, row_bytes)
    if not folder:
        with held(journal, out, close=False):
            refuse_unfinished_output(shares, resume, overwrite)
    return shares, journal


@contextmanager
def held(journal: Journal | None, out: str | Path | None, close: bool = True) -> Iterator[None]:
    """While the job runs: refused or failed before its first batch, its journal goes (no
    OUT.partial to block the next run: Journal.abandon); done or stopped, its lock goes at once
    (resumable in this process). A failed write there names `out`."""
    try:
        yield
    except BaseException:
        _release(journal, out, abandon=True)
        raise
    finally:
        if close:
            _release(journal, out)


def end(journal: Journal, shares: Shares, torchrun: bool, timeout: float | None, progress,
        finish: Callable[[], None]) -> tuple[bool, list[int]]:
    """This share's batches are written: (merged, shares still pending). A share of several
    releases its lock first, so another share's process may merge it; `finish()` writes OUT
    from `shares.merged()` when every share is complete and this process is the one to
    (vaekit.stream.finish)."""
    if shares.count > 1:
        _release(journal, shares.out)
    return finish_when_complete(shares, torchrun, timeout, progress, finish)


def _release(journal: Journal | None, out: str | Path | None, abandon: bool = False) -> None:
    if journal is None:
        return
    with naming_failed_writes(Path(out)):
        if abandon:
            journal.abandon()
        journal.close()
