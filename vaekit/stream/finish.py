"""The end of a streaming job's share: merge every share's journal into OUT when all are complete
and this process is the one to (vaekit.stream.shares has the journals), or say why it cannot."""

from __future__ import annotations

import os
import time

from vaekit.errors import InUse
from vaekit.fileio import refuse_existing
from vaekit.stream.shares import Shares, file_identity, merge_lock


def refuse_unfinished_output(shares: Shares, resume: bool, overwrite: bool) -> None:
    """OutputExists for a file at OUT when a resume (without --overwrite; the job let OUT through
    at its start) finds a share with batches still to do: only the merge of a finished job writes
    OUT, so it is not this job's. With every share complete it may be the merge's own, written
    just before a stop that left the journals: the merge keeps it when it holds the very bytes it
    writes (vaekit.fileio.atomic_writer keep_same)."""
    if resume and not overwrite and (shares.out.exists() or shares.out.is_symlink()) and shares.pending():
        refuse_existing(shares.out, overwrite=False)


def finish_when_complete(shares: Shares, torchrun: bool, timeout: float | None, progress,
                         finish) -> tuple[bool, list[int]]:
    """Call `finish()` (write OUT from `shares.merged()`, then `shares.remove()`) when every share
    is complete and this process is the one to merge: (merged, shares still pending).

    Unsharded, the caller still holds its journal's lock, so no other process can be merging.
    Under torchrun only rank 0 merges, after waiting for the others; with explicit shards
    whichever share sees them all complete first takes OUT.merging's lock and merges."""
    index, count = shares.layout.index, shares.count
    if not shares.complete(index):  # nothing else would ever merge its rows (an explicit share's
        if count > 1 and _merged_elsewhere(shares):  # too: it listed itself as pending, exit 0, OUT
            return False, []  # never written), unless another share's process merged them already
        raise _own_lost(shares, index)
    if count > 1 and torchrun and index != 0:
        return False, []
    if torchrun:
        shares.wait(timeout, progress)
    pending = shares.pending()
    if pending:  # or merged by another share since this one's journal was seen complete
        return False, [] if count > 1 and _merged_elsewhere(shares) else pending
    if count == 1:
        finish()
        return True, []
    with merge_lock(shares.out) as mine:
        # checked again under the lock: a share that finished at the same time may have merged
        if mine and not shares.pending():
            finish()
            return True, []
    return False, []


def _merged_elsewhere(shares: Shares) -> bool:
    """Whether another share's process merged every journal (its own finished as this one's last
    line was written): a new OUT is there (not the one there when the job began) and no share's
    journal is. A journal moved away leaves the others' in place, since no share can merge without it. A merge removes them one by one after
    writing OUT: for up to a second, OUT there with some journals left is one still removing them."""
    for _ in range(20):
        now = file_identity(shares.out)
        if now is None or now == shares.out_before:  # none, or the one there before (--overwrite)
            return False
        if not any(os.path.lexists(shares.journal(j)) for j in range(shares.count)):
            return True
        time.sleep(0.05)
    return False


def _own_lost(shares: Shares, index: int) -> InUse:
    """This process's own journal, all its batches just written, is no longer at its name: moved,
    removed or replaced while the job ran. Nothing else would ever merge it: an exit 0 without OUT
    (a share "waiting for" itself, a rank 0 waiting for ever) hid that; the rows are in the file moved."""
    path = shares.journal(index)
    return InUse(f"{path} was moved, removed or replaced while this job ran, so {shares.out} was not written; put "
                 f"the journal back at {path.name} and run the same command with --resume")
