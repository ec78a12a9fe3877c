"""The run directories this process holds locked (vaekit.training.runlock), so that every write
into a run first asks that the folder is still where it was: removed or moved while the run was
written, the next atomic write would make it again (atomic writes make their folders), a folder
of a few files without config.json that no command accepts and `--overwrite` refuses as not
vaekit's."""

from __future__ import annotations

import os
from pathlib import Path

from vaekit.errors import InUse

_HELD: dict[str, tuple[int, Path]] = {}  # absolute run directory -> (lock file descriptor, its name)


def hold(run_dir: Path, fd: int, lock: Path) -> None:
    _HELD[os.path.abspath(run_dir)] = (fd, Path(lock))


def release(run_dir: Path, fd: int) -> None:
    if _HELD.get(os.path.abspath(run_dir), (None,))[0] == fd:
        del _HELD[os.path.abspath(run_dir)]


def require_in_place(*run_dirs: Path) -> None:
    """InUse when this process holds one of `run_dirs` locked and its lock file is no longer at its
    name: the folder was removed or moved while the run was written. Nothing for a folder this
    process does not lock."""
    for run_dir in run_dirs:
        fd, lock = _HELD.get(os.path.abspath(run_dir), (None, None))
        if fd is None:
            continue
        held = os.fstat(fd)
        try:
            here = os.lstat(lock)
        except OSError:
            here = None
        if here is None or (here.st_dev, here.st_ino) != (held.st_dev, held.st_ino):
            raise InUse(f"{run_dir} was removed or moved while this process wrote it; nothing more is written "
                        "there. A run moved elsewhere goes on from its new place with `vaekit train IMAGES --out "
                        "NEW_PLACE --resume`")
