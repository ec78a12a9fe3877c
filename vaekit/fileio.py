"""Crash-safe file writing: write to a temporary name in the same folder, then rename.

os.replace is atomic on POSIX and Windows, so a reader (or a resume after SIGKILL) sees
either the old complete file or the new complete file, never half of one. A write that
fails (a full disk, a read-only folder) removes its temporary file, leaves the old file
as it was, and raises an OSError that names the file it was writing.
"""

from __future__ import annotations

import functools
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


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


def _named(e: OSError, path: Path) -> OSError:
    """The same kind of OSError, saying which file could not be written (the temporary name
    in the original message means nothing to a user)."""
    err = type(e)(f"cannot write {path}: {e.strerror or e}")
    err.errno = e.errno
    return err


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write to, piece by piece, that appears at `path` only when complete."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _named(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _mode(path))
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _named(e, path) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    # surrogateescape: a file name that is not UTF-8 (POSIX allows any bytes) is written back
    # as the bytes it is made of, as `ls > list.txt` would, instead of failing the whole write
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """(header, tensor bytes) of a safetensors file, checked by hand (8-byte little-endian
    length, then a JSON object) so that a truncated or foreign file is a clear ValueError
    rather than a parser's message."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes: truncated or not a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise ValueError(f"header of {n} bytes in a file of {len(data)}: truncated")
    header = json.loads(bytes(data[8 : 8 + n]))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, data[8 + n :]


def read_json(path: Path, what: str) -> dict:
    """Read a JSON object, turning a missing or corrupt file into a ValueError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} is corrupt ({path}): {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} is corrupt ({path}): expected a JSON object")
    return data
