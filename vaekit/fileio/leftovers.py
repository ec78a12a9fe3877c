"""What killed vaekit processes leave behind, and how the next run knows it for vaekit's.

A SIGKILL cleans nothing up: an export's or a decode's staging folder, or an encode's spill
file, stays beside the output, named after its process. The next run to the same output
removes it, but only when that process is gone and the leftover carries the tag of that
process on this machine (`partial_tag`): a user's file or folder that merely has such a name,
and another machine's leftover in a shared folder, are never touched (docs/data-safety.md).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
from pathlib import Path


def process_gone(pid: str) -> bool:
    """Whether no process `pid` (a string of digits, as in a temporary file's name) runs: the
    file it left (a SIGKILL cleans nothing up) is then stale and safe to remove. False when it
    runs, when it is another user's, or when `pid` is not a number."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's live process
        return False
    return False


PARTIAL_MARK = ".vaekit-partial"  # inside a staging folder: the tag of the process writing it


def partial_tag(pid: int | str | None = None) -> bytes:
    """What marks a staging folder (a file PARTIAL_MARK holding it) or a spill file (its first
    bytes) as vaekit's, written by process `pid` (this one) on this machine: remove_stale
    removes nothing without it, and a process id is only checked on the machine that owns it."""
    return f"vaekit partial output of process {pid or os.getpid()} on {socket.gethostname()}\n".encode()


def mark_partial(folder: Path) -> Path:
    """Create staging `folder` (new) with its PARTIAL_MARK; returns it. An OSError (a folder
    above that is a file, a read-only or full disk) leaves nothing and names `folder`."""
    from vaekit.errors import cannot_write

    folder = Path(folder)
    try:
        folder.mkdir()
    except OSError as e:
        raise cannot_write(e, folder) from None
    try:
        (folder / PARTIAL_MARK).write_bytes(partial_tag())
    except BaseException as e:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(e, OSError):
            raise cannot_write(e, folder) from None
        raise
    return folder


def open_spill(path: Path):
    """A new spill file at `path` (never an existing one: "xb"), its partial_tag already on disk,
    so a SIGKILL at any later point leaves a file the next run knows for a killed one's."""
    from vaekit.errors import cannot_write

    try:
        f = open(path, "xb")
    except OSError as e:
        raise cannot_write(e, path) from None
    try:
        f.write(partial_tag())
        f.flush()
        os.fsync(f.fileno())
    except BaseException:
        f.close()
        Path(path).unlink(missing_ok=True)
        raise
    return f


def stale(parent: Path, prefix: str, suffix: str = "", folders: bool = True) -> list[Path]:
    """What killed vaekit processes left in `parent`: folders (or, folders=False, files) named
    PREFIX + PID[-TOKEN] + SUFFIX whose process is gone (a SIGKILL cleans nothing up), and only
    those that carry this machine's partial_tag of that process (a staging folder its
    PARTIAL_MARK file, a spill file its first bytes): a user's file or folder that merely has
    such a name, a link, another machine's and a live process's leftovers are never listed."""
    out = []
    for old in Path(parent).glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"):
        pid = old.name[len(prefix):len(old.name) - len(suffix)].split("-")[0]
        if old.is_symlink() or not (old.is_dir() if folders else old.is_file()) or not process_gone(pid):
            continue
        tag = partial_tag(pid)
        mark = old / PARTIAL_MARK if folders else old
        try:
            if mark.is_symlink() or not mark.is_file():
                continue
            with open(mark, "rb") as f:
                if f.read(len(tag) + (0 if not folders else 1)) != tag:
                    continue
        except OSError:
            continue
        out.append(old)
    return out


def remove_stale(parent: Path, prefix: str, suffix: str = "", folders: bool = True) -> None:
    """Remove what killed vaekit processes left in `parent` (`stale`)."""
    for old in stale(parent, prefix, suffix, folders):
        if folders:
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
