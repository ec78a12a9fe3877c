"""The lock a training holds on its run directory, and the probe every reader of a run makes.

`locked` is held by `vaekit train` (and by `encode --fit`, which stores tables in the run) for
as long as it writes there; `refuse_in_use` lets a command that reads a run (load, export,
threshold) refuse one whose weights and config.json are still changing. The lock is
vaekit.fileio.try_lock's (flock on POSIX, LockFileEx on Windows) on the run's lock file, which
names the holding process; it goes with the process, even on SIGKILL.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

from vaekit.errors import BadInput, InUse, not_a_folder
from vaekit.fileio import NO_FOLLOW_NO_BLOCK, refuse_under_file, try_lock
from vaekit.training import held
from vaekit.training.rundir import LOCK, MARKER


@contextmanager
def locked(run_dir: Path, hint: str = "another vaekit command is writing it; wait for it to finish",
           what: str = "--out"):
    """Hold an exclusive lock on a run directory (its lock file, vaekit.fileio.try_lock) while training there.

    A second vaekit process on the same folder gets InUse naming the process that holds it (and
    `hint`, what to do), instead of the two interleaving their files. The lock goes with the
    process, even on SIGKILL.
    """
    run_dir = Path(run_dir)
    if (run_dir.exists() or run_dir.is_symlink()) and not run_dir.is_dir():  # a link to nowhere too
        raise BadInput(f"{what} {not_a_folder(run_dir)}")
    refuse_under_file(run_dir, what)  # `what`: how the user named it (train's --out, or the run given)
    created = [d for d in (run_dir, *run_dir.parents) if not d.exists()]  # innermost first
    path = run_dir / LOCK
    made_lock = not path.exists()
    try:  # either can fail on a read-only file system or a full disk
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | NO_FOLLOW_NO_BLOCK, 0o644)
    except OSError as e:
        raise BadInput(f"cannot create or lock the run directory {run_dir}: {e.filename or path} {e.strerror or e}") from None
    try:
        if not _lock_past_probes(fd):
            raise InUse(f"{run_dir} is in use by process {_holder(fd)} ({hint})")
        try:  # a Ctrl-C while the holder is written is cleaned up too
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
            held.hold(run_dir, fd, path)
            yield
        except BaseException:
            # refused or interrupted before anything was written: leave no trace, least of all a
            # lock file in a folder of the user's
            if made_lock and not (run_dir / MARKER).exists():
                path.unlink(missing_ok=True)
                for d in created:  # and the folders made for it, if nothing else went there
                    try:
                        d.rmdir()
                    except OSError:
                        break
            raise
    finally:
        held.release(run_dir, fd)
        os.close(fd)  # releases the lock


def refuse_in_use(run_dir: Path) -> None:
    """InUse when a training (or a threshold) holds the run's lock (`locked`): its weights and config.json are
    still changing, so a model read from it now would be half-trained. Probed for up to
    PROBE_GRACE seconds (another reader's probe holds it for a moment); the probe's own lock is
    let go at once."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | NO_FOLLOW_NO_BLOCK)
    except OSError:  # no lock file (a run no training is writing), or one that cannot be opened
        return
    try:
        if not _lock_past_probes(fd):
            raise InUse(f"{run_dir} is in use by process {_holder(fd)} (a vaekit train, threshold or encode --fit "
                        "is writing it); wait for it to finish")
    finally:
        os.close(fd)


PROBE_GRACE = 0.5  # seconds a lock is tried for: another reader's probe holds it for microseconds


def _lock_past_probes(fd: int) -> bool:
    """try_lock, tried again for up to PROBE_GRACE seconds: a probe takes the lock too, and eight
    processes loading one run at the same instant refused each other as "in use" (by a process
    long gone, the lock file's last writer). A writer holds it for minutes and is still refused."""
    deadline = time.monotonic() + PROBE_GRACE
    while not try_lock(fd):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _holder(fd: int) -> str:
    """The process id a lock file names; "unknown" when it cannot be read (on Windows the
    holder's lock keeps others from reading it)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"
