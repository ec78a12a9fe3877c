"""What an output path may be: never a folder, a FIFO, a device or a socket (nor a link to one),
nor anything in /dev, /proc or /sys; and an existing file only with --overwrite."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from vaekit.errors import BadInput, OutputExists, check_flags

# how vaekit opens a file it shares with other processes or finds in its way (a lock, a journal,
# a file compared with its own): never through a link, never waiting on a FIFO, never inherited
NO_FOLLOW_NO_BLOCK = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _special_file(path: Path) -> str | None:
    """'a FIFO', 'a device', 'a socket' for what is at `path`, or 'a link to a device' (...) for
    a link to one: a link is replaced, never written through, but replacing /dev/stdout (a
    link to the terminal) breaks the system as surely as replacing /dev/null. None for a
    regular file, a link to one (or to nothing), or nothing."""
    for follow, prefix in ((False, ""), (True, "a link to ")):
        try:
            mode = os.stat(path).st_mode if follow else os.lstat(path).st_mode
        except OSError:
            return None
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else None)
        if kind:
            return prefix + kind
        if not stat.S_ISLNK(mode):
            return None
    return None


MAX_NAME_BYTES = 255  # the longest file name Linux, macOS and Windows file systems hold (NAME_MAX)
MAX_PATH_BYTES = 4095  # the longest path Linux takes (PATH_MAX, less its NUL)
MAX_DEPTH = 256  # folders an output may lie under: mkdir(parents=True) recurses once per missing folder


def cut_name(name: str, room: int) -> str:
    """`name`'s first bytes, leaving `room` of MAX_NAME_BYTES for what a temporary name around it
    adds (a process id, a token, a suffix), so any name a file system holds can be staged."""
    return os.fsdecode(os.fsencode(name)[:MAX_NAME_BYTES - room])


def refuse_long_names(sources: Iterable[str], targets: Iterable[str]) -> None:
    """BadInput naming the first of `targets` (relative posix paths, each named after its image
    in `sources`) with a part longer than MAX_NAME_BYTES, or itself longer than MAX_PATH_BYTES or
    deeper than MAX_DEPTH folders (a forged code file's name: a RecursionError from mkdir): refused
    before the first file is written, not met half way through a job."""
    for source, target in zip(sources, targets):
        parts = PurePosixPath(target).parts
        if len(os.fsencode(target)) > MAX_PATH_BYTES or len(parts) > MAX_DEPTH + 1:
            shown = source if len(source) <= 80 else source[:77] + "..."
            raise BadInput(f"the image {shown!r} would be written to a path of {len(os.fsencode(target))} bytes, "
                           f"{len(parts) - 1} folders deep (at most {MAX_PATH_BYTES} bytes and {MAX_DEPTH} folders)")
        for part in parts:
            if len(os.fsencode(part)) > MAX_NAME_BYTES:
                raise BadInput(f"the image {source!r} would be written to {target!r}, a name longer than "
                               f"{MAX_NAME_BYTES} bytes (the most a file system holds)")


_SYSTEM = ("/dev", "/proc", "/sys")  # folders of devices and kernel files: /dev/stdout, /proc/self/fd/1


def system_folder(path: Path) -> str | None:
    """'in /dev' (or /proc, /sys) for an output there, whatever it is now: /dev/stdout is a link to
    /proc/self/fd/1, which a redirected command sees as a regular file, and replacing it breaks
    the system."""
    where = os.path.abspath(path)
    for top in _SYSTEM:
        if where == top or where.startswith(top + "/"):
            return f"in {top}"
    return None


def refuse_nul(path, what: str = "output") -> None:
    """BadInput for a path holding a NUL byte (os.stat's bare "ValueError: embedded null byte"):
    the Python API's caller may give one, the shell never does."""
    if "\0" in str(path):
        raise BadInput(f"{what} {str(path)!r} holds a NUL byte, which no file name can")


def refuse_existing(paths: Path | Sequence[Path], overwrite: bool, what: str = "output") -> None:
    """OutputExists when an output already exists (even as a broken link) and the user did not
    pass --overwrite; BadInput when one is a folder. `paths`: one file, or every file a job will
    write (all checked before the first is written). BadInput for an `overwrite` that is not
    True or False (an API caller's overwrite="no" replaced the file)."""
    check_flags(overwrite=overwrite)
    many = not isinstance(paths, (str, os.PathLike))
    paths = [Path(p) for p in paths] if many else [Path(paths)]
    for path in paths:
        refuse_nul(path, what)
        if path.is_dir():
            raise BadInput(f"{what} {path} is a folder; give a file name")
        special = _special_file(path) or system_folder(path)
        if special:  # --overwrite would replace /dev/null (as root) or a user's pipe by a file
            raise BadInput(f"{what} {path} is {special}, not a file of yours; vaekit writes only regular files: give a "
                           "file name")
    if overwrite:
        return
    taken = [p for p in paths if p.exists() or p.is_symlink()]
    if len(taken) > 1:
        raise OutputExists(f"{taken[0]} and {len(taken) - 1} more files already exist; pass --overwrite to replace them")
    if taken:
        raise OutputExists(f"{what} {taken[0]} already exists; pass --overwrite to replace it")


def put_in_place(tmp: Path, path: Path, replace: bool, keep_same: bool = False) -> None:
    """Move the finished temporary file `tmp` to `path`, atomically. replace=False (no --overwrite):
    only when nothing is at `path` now, else OutputExists (`tmp` is left to the caller): a file
    put there while a long job ran (its output was checked when the job began) is not replaced
    unasked. keep_same: a regular file at `path` with `tmp`'s very bytes is the job's own (written
    before a stop) and is kept as it is (`tmp` goes). A hard link is the atomic no-replace rename
    on POSIX and NTFS; a file system without hard links gets a look before the rename instead."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # tmp is the regular file just written
    except OSError as e:
        taken = isinstance(e, FileExistsError) or os.path.lexists(path)  # else: no hard links here (FAT, SMB)
        if taken and not (keep_same and same_bytes(tmp, path)):
            raise appeared(path, keep_same) from None
        if not taken:
            os.replace(tmp, path)
            return
    os.unlink(tmp)


def same_bytes(a: Path, b: Path) -> bool:
    """Whether the regular file `b` (not a link) holds exactly the bytes of the file `a`, read a
    MiB at a time (a code file may be gigabytes). `b` is opened without following a link and
    without blocking, then checked on the open file: one swapped for a link or a FIFO after a
    look by name is never read through (a FIFO would block for ever)."""
    flags = os.O_RDONLY | NO_FOLLOW_NO_BLOCK
    try:
        if stat.S_ISLNK(os.lstat(b).st_mode):  # where O_NOFOLLOW is missing (Windows)
            return False
        with open(a, "rb") as fa, os.fdopen(os.open(b, flags), "rb") as fb:
            st_a, st_b = os.fstat(fa.fileno()), os.fstat(fb.fileno())
            if not stat.S_ISREG(st_b.st_mode) or st_a.st_size != st_b.st_size:
                return False
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def appeared(path: Path, own_checked: bool = False) -> OutputExists:
    """An output found at `path` as the job put its file there, though it was free when the job began;
    own_checked: it was compared with what the job writes (a resume's own file counts only with the
    very same bytes, and one written on another device or vaekit version may differ)."""
    why = ("appeared while this job ran (it was not there when the job began, or it holds other bytes than this "
           "job writes: a file of this job's own from before a stop, written on another device or vaekit version, "
           "may differ)" if own_checked else "appeared while this job ran (it was not there when the job began)")
    return OutputExists(f"output {path} {why} and is left as it is; move it away and run the job again (with "
                        "--resume if it kept an OUT.partial), or run it with --overwrite to replace it")
