"""Crash-safe writes: a file appears at its name only when complete, and a crash leaves nothing else.

The bytes go to a file without a name (Linux's O_TMPFILE), which is linked to a temporary name
in the same folder only once written and synced, then renamed over the target (os.replace is
atomic on POSIX and Windows): a reader, or a resume after SIGKILL, sees the old complete file or
the new one, and a process killed while it writes leaves no temporary file behind (the OS frees
an unnamed file with its last descriptor). Where the OS or the file system has no unnamed files,
the bytes go straight to the temporary name, which a SIGKILL while writing leaves behind. A write
that fails (a full disk, a read-only folder) or is interrupted removes its temporary file,
leaves the old file as it was, and raises an OSError that names the file it was writing.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from vaekit.errors import BadInput, cannot_write
from vaekit.fileio.outputs import appeared, put_in_place, same_bytes


@functools.cache
def _umask() -> int:
    try:  # Linux says it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    """The mode a plain open() would give: an existing file's, else 0o666 less the umask.

    (mkstemp creates its file 0o600, which would make every file vaekit writes private.)
    """
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _unnamed(folder: Path) -> int | None:
    """A new file without a name in `folder`, open for writing (O_TMPFILE); None where there is
    none to be had: not Linux, no /proc to link it through, a file system without them."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, flag | os.O_RDWR, 0o600)  # read too: copied where it cannot be linked (_link)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def link_unnamed(fd: int, path: Path) -> bool:
    """Give the unnamed (O_TMPFILE) file `fd` the name `path`, whole: linkat(2) through /proc with
    AT_SYMLINK_FOLLOW, which os.link asks for only when given a folder's descriptor (plain link(2)
    would link the /proc entry itself: EXDEV). False where that is refused (a file system, or a
    sandbox, without hard links); FileExistsError where anything is at `path`."""
    try:  # O_PATH: a folder this process may write in but not list (mode 0733) still gives one
        folder = os.open(path.parent, getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=folder, follow_symlinks=True)
        return True
    except FileExistsError:
        raise
    except OSError:
        return False
    finally:
        os.close(folder)


def _link(fd: int, tmp: Path) -> None:
    """Give the unnamed file `fd` the name `tmp` (link_unnamed); where that is refused, its bytes
    are copied to `tmp`, created by name; FileExistsError: another writer's."""
    if link_unnamed(fd, tmp):
        return
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(out, "wb") as f:
            os.fchmod(f.fileno(), stat.S_IMODE(os.fstat(fd).st_mode))
            offset = 0
            while chunk := os.pread(fd, 1 << 20, offset):
                f.write(chunk)
                offset += len(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _link_in_place(fd: int, path: Path, keep_same: bool) -> bool:
    """A write that may not replace anything (replace=False): give the unnamed file `fd` its final
    name at once. linkat(2) fails where anything is at `path` (a link included), the same atomic
    no-replace as os.link of a named temporary file, but no temporary name ever exists: a SIGKILL
    between linking `.NAME.xxxx.tmp` and unlinking it left that name (a hard link of the output,
    or a whole copy of it beside no output) for good. True when `path` now holds the bytes (or,
    keep_same, already held these very bytes); False where the link is not to be had here (the
    caller takes the temporary name); OutputExists where `path` is another file."""
    try:
        return link_unnamed(fd, path)
    except FileExistsError:
        if keep_same and same_bytes(Path(f"/proc/self/fd/{fd}"), path):
            return True
        raise appeared(path, keep_same) from None


def _unnamed_or_named(path: Path, tmp: Path) -> tuple[int, bool]:
    """(descriptor, named) of a new file for `path`'s bytes: an unnamed one, or, where there is
    none, `tmp` created by name (O_EXCL: never another writer's). An interrupt after `tmp` was
    created and before its descriptor came back removes it by name."""
    try:
        fd = _unnamed(path.parent)
        if fd is not None:
            return fd, False
    except OSError as e:
        raise cannot_write(e, path) from None
    try:
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600), True
    except FileExistsError as e:  # another writer's file: 40 random bits met twice; never remove it
        raise cannot_write(e, path) from None
    except BaseException as e:
        try:  # the name the file system refused to create (EILSEQ, EINVAL) it refuses to look up too
            Path(tmp).unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise cannot_write(e, path) from None
        raise


def temp_name(path: Path) -> Path:
    """A hidden temporary name beside `path`, unique to this write. A name near the file system's
    255-byte limit is valid, its temporary name 16 bytes longer would not be: a long one keeps only
    its first 50 characters (at most 200 bytes)."""
    stem = path.name if len(os.fsencode(path.name)) <= 200 else path.name[:50]
    return path.parent / f".{stem}.{os.urandom(5).hex()}.tmp"


@contextmanager
def atomic_writer(path: Path, replace: bool = True, keep_same: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write to, piece by piece, that appears at `path` only when complete;
    replace=False: only if nothing is at `path` by then (else OutputExists), or, with keep_same,
    a file with these very bytes, kept as it is (vaekit.fileio.outputs.put_in_place)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # named by vaekit.errors.cannot_write, which says which folder above is a file
        raise cannot_write(e, path) from None
    # The temporary name is chosen before any file exists, and every exception from then on
    # (a Ctrl-C between creating the file and using it included) removes the file by that name
    # once it has it: tempfile.mkstemp returns the name only after creating the file, which left an
    # interrupt a window in which the file existed and nobody knew it.
    tmp = temp_name(path)
    fd, named = _unnamed_or_named(path, tmp)  # named: `tmp` exists, and is this write's to remove
    placed = False  # the unnamed file linked at `path` itself (replace=False): no temporary name at all
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _mode(path))
            yield f
            f.flush()
            os.fsync(f.fileno())
            if not named and not replace:
                placed = _link_in_place(f.fileno(), path, keep_same)
            if not named and not placed:  # complete: now it gets a name (FileExistsError: another writer's, 40 bits met twice)
                _link(f.fileno(), tmp)
                named = True
        if not placed:
            put_in_place(tmp, path, replace, keep_same)
    except BaseException as e:
        if named:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError) and not isinstance(e, BadInput):
            raise cannot_write(e, path) from None
        raise


def atomic_write_bytes(path: Path, data: bytes, replace: bool = True, keep_same: bool = False) -> None:
    with atomic_writer(path, replace, keep_same) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    # surrogateescape: a file name that is not UTF-8 (POSIX allows any bytes) is written back
    # as the bytes it is made of, as `ls > list.txt` would, instead of failing the whole write
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))
