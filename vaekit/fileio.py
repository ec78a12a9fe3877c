"""Safe file I/O: crash-safe writes, reads that cannot hang, and the output rule.

Writes go to a temporary name in the same folder, then rename. os.replace is atomic on
POSIX and Windows, so a reader (or a resume after SIGKILL) sees either the old complete
file or the new complete file, never half of one. A write that fails (a full disk, a
read-only folder) removes its temporary file, leaves the old file as it was, and raises an
OSError that names the file it was writing.

Reads first `stat` the path (following links) and require a regular file of bounded size,
so a FIFO, a device or a folder named like a vaekit file is an error, never a hang.
The output rule (docs/data-safety.md): an existing file is replaced only when the user
said --overwrite, and no output goes inside an input folder.
"""

from __future__ import annotations

import functools
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from vaekit.errors import BadInput, DamagedFile, NotFound, OutputExists, cannot_write

MAX_JSON_BYTES = 64 << 20  # config.json, resume.json, metadata: a few KB in practice


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
    in the original message means nothing to a user); a vaekit CannotWrite (errors.py)."""
    return cannot_write(e, path)


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


def finite_json(obj):
    """`obj` with every float that is not finite replaced by None: JSON has no NaN or Infinity,
    and Python's bare `NaN` breaks every other parser."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def dumps_json(obj, indent: int | None = 2) -> str:
    """Valid JSON text: non-finite numbers become null (see finite_json)."""
    return json.dumps(finite_json(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, dumps_json(obj) + "\n")


def loads_json(text: str | bytes):
    """json.loads, with nesting too deep for Python's parser (RecursionError) a ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    """(header, tensor bytes) of a safetensors file, checked by hand (8-byte little-endian
    length, then a JSON object) so that a truncated or foreign file is a clear ValueError
    rather than a parser's message."""
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes: truncated or not a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise ValueError(f"header of {n} bytes in a file of {len(data)}: truncated")
    header = loads_json(bytes(data[8 : 8 + n]))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, data[8 + n :]


def check_regular(path: Path, what: str, max_bytes: int | None = None) -> os.stat_result:
    """stat `path` (following links) and require a regular file, before anything opens it:
    opening a FIFO blocks forever, a device may never end. FileNotFoundError if absent."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"{what} not found: {path}") from None
    except OSError as e:
        raise DamagedFile(f"{what} cannot be read ({path}): {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device?)"
        raise DamagedFile(f"{what} is {kind}: {path}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise DamagedFile(f"{what} is too large ({st.st_size} bytes, at most {max_bytes}): {path}")
    return st


def read_regular(path: Path, what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file (see check_regular); O_NONBLOCK so that a file swapped
    for a FIFO between the stat and the open still cannot block. At most max_bytes + 1 bytes
    are read, so a caller can tell a file that grew past the bound."""
    check_regular(path, what, max_bytes)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DamagedFile(f"{what} is not a regular file: {path}")
        chunks, got = [], 0
        while max_bytes is None or got <= max_bytes:
            want = max(1 << 20, st.st_size - got)  # the whole file in one read, as a rule
            chunk = os.read(fd, min(want, 1 << 30) if max_bytes is None else min(want, max_bytes + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json(path: Path, what: str) -> dict:
    """Read a JSON object, turning a missing or corrupt file into an error naming it
    (FileNotFoundError, or DamagedFile, a ValueError)."""
    path = Path(path)
    raw = read_regular(path, what, MAX_JSON_BYTES)
    if len(raw) > MAX_JSON_BYTES:
        raise DamagedFile(f"{what} is too large (over {MAX_JSON_BYTES} bytes): {path}")
    try:
        data = loads_json(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError, JSONDecodeError, too deep
        raise DamagedFile(f"{what} is corrupt ({path}): {e}") from None
    if not isinstance(data, dict):
        raise DamagedFile(f"{what} is corrupt ({path}): expected a JSON object")
    return data


# --- the output rule -----------------------------------------------------------------------------

def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (both resolved, links followed)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def refuse_inside(output: Path, inputs, what: str) -> None:
    """BadInput when `output` is, or lies inside, an input folder: an output there would be
    read back as input next time, or replace the user's files."""
    roots = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for root in map(Path, roots):
        if root.is_dir() and is_inside(output, root):
            raise BadInput(f"{what} {output} is inside the input folder {root}; write it somewhere else")


def refuse_existing(paths: Path | Sequence[Path], overwrite: bool, what: str = "output") -> None:
    """OutputExists when an output already exists (even as a broken link) and the user did not
    pass --overwrite; BadInput when one is a folder. `paths`: one file, or every file a job will
    write (all checked before the first is written)."""
    many = not isinstance(paths, (str, os.PathLike))
    paths = [Path(p) for p in paths] if many else [Path(paths)]
    for path in paths:
        if path.is_dir():
            raise BadInput(f"{what} {path} is a folder; give a file name")
    if overwrite:
        return
    taken = [p for p in paths if p.exists() or p.is_symlink()]
    if len(taken) > 1:
        raise OutputExists(f"{taken[0]} and {len(taken) - 1} more files already exist; pass --overwrite to replace them")
    if taken:
        raise OutputExists(f"{what} {taken[0]} already exists; pass --overwrite to replace it")
