"""The lock of a shard merge, OUT.merging: which share's process merges the shares' journals
into OUT (vaekit.stream.shares), and nobody else's file of that name used or deleted."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

from vaekit.errors import BadInput, VaekitError, cannot_write
from vaekit.fileio import NO_FOLLOW_NO_BLOCK, held_elsewhere, try_lock
from vaekit.fileio.atomic import link_unnamed
from vaekit.stream.files import open_regular
from vaekit.stream.names import merging_path

LOCK_TEXT = b"vaekit shard merge lock\n"  # what makes OUT.merging vaekit's own


@contextmanager
def merge_lock(out: Path):
    """True when this process may merge: it holds the lock of OUT.merging (vaekit.fileio.try_lock).

    OUT.merging is vaekit's when vaekit created it (it holds LOCK_TEXT); a file of that name
    that is not is refused (BadInput), never used or deleted. The lock file goes when the merge
    is done, if it is still the one this process locked."""
    lock = merging_path(out)
    try:
        fd = _open_lock(lock)
    except OSError as e:
        if isinstance(e, VaekitError):
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # not another user's: this disk's
            raise cannot_write(e, lock) from None
        raise BadInput(f"cannot open {lock}, the lock of the shard merge: {e.strerror or e} (another user's merge, "
                       "or its leftover); once it is gone, run any share again with --resume to merge") from None
    try:
        try:
            mine = try_lock(fd)
        except OSError:  # a file system without locks: leave the merge to a later look
            mine = False
        if not mine:
            yield False
            return
        try:
            yield True
        finally:
            st, here = os.fstat(fd), _lstat(lock)
            if here is not None and (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino):
                lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def _lstat(path: Path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _open_lock(lock: Path) -> int:
    fd = _new_lock(lock)
    if fd is not None:
        return fd
    fd = open_regular(lock, write=False, what="shard merge lock")
    if fd is None:  # removed since: a merge just finished; the next look finds the shares merged
        return _open_lock(lock)
    try:
        text = os.read(fd, len(LOCK_TEXT) + 1)
    except OSError as e:
        if not held_elsewhere(e):
            os.close(fd)
            raise
        return fd  # Windows: a merging process holds it, so it is vaekit's
    if text != LOCK_TEXT:
        os.close(fd)
        raise BadInput(f"{lock} exists and is not vaekit's shard merge lock; rename it, or write the output "
                       "elsewhere")
    return fd


def _new_lock(lock: Path) -> int | None:
    """A descriptor on a new OUT.merging holding LOCK_TEXT; None when one is there. On Linux the
    file is written unnamed (O_TMPFILE) and linked in whole, so its name never holds an empty or
    half-written file: a share opening it in that instant refused it as not vaekit's, and a SIGKILL
    there left one that blocked every later merge. Elsewhere it is created, then written."""
    flags = os.O_RDWR | NO_FOLLOW_NO_BLOCK
    linked = _linked_whole(lock)
    if linked != -1:
        return linked
    try:
        fd = os.open(lock, flags | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    try:
        os.write(fd, LOCK_TEXT)
    except OSError:  # a full disk: no empty lock left behind for every later merge to refuse
        os.close(fd)
        lock.unlink(missing_ok=True)
        raise
    return fd


def _linked_whole(lock: Path) -> int | None:
    """_new_lock's Linux way: the file written unnamed (O_TMPFILE), then given the name whole
    (fileio.atomic.link_unnamed). -1 where this system or file system cannot: the caller's way then."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return -1
    fd = None
    try:
        fd = os.open(lock.parent, os.O_TMPFILE | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o644)
        os.write(fd, LOCK_TEXT)
        if not link_unnamed(fd, lock):  # linkat refused
            return -1
        fd, mine = None, fd
        return mine
    except FileExistsError:
        return None
    except OSError:  # no O_TMPFILE on this file system
        return -1
    finally:
        if fd is not None:
            os.close(fd)
