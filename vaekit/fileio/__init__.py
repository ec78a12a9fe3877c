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

The infrastructure every module shares lives here once: the safe open (`open_regular_file`),
the safetensors header reader (`read_safetensors_header`) and the file lock (`try_lock`, filelock's).
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vaekit.errors import BadInput, DamagedFile, NotFound, cannot_write, file_above, not_a_folder

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
def atomic_writer(path: Path, replace: bool = True, keep_same: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write to, piece by piece, that appears at `path` only when complete;
    replace=False: only if nothing is at `path` by then (else OutputExists), or, with keep_same,
    a file with these very bytes, kept as it is (vaekit.fileio.outputs.put_in_place)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # named by vaekit.errors.cannot_write, which says which folder above is a file
        raise _named(e, path) from None
    # The temporary name is chosen before the file exists, and every exception from here on
    # (a Ctrl-C between creating the file and using it included) removes it by that name:
    # tempfile.mkstemp returns the name only after creating the file, which left an interrupt a
    # window in which the file existed and nobody knew it.
    # A name near the file system's 255-byte limit is valid, its temporary name 16 bytes longer
    # would not be: a long one keeps only its first 50 characters (at most 200 bytes).
    stem = path.name if len(os.fsencode(path.name)) <= 200 else path.name[:50]
    tmp = path.parent / f".{stem}.{os.urandom(5).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    except FileExistsError as e:  # another writer's file: 40 random bits met twice; never remove it
        raise _named(e, path) from None
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _named(e, path) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _mode(path))
            yield f
            f.flush()
            os.fsync(f.fileno())
        put_in_place(tmp, path, replace, keep_same)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, BadInput):
            raise _named(e, path) from None
        raise


def atomic_write_bytes(path: Path, data: bytes, replace: bool = True, keep_same: bool = False) -> None:
    with atomic_writer(path, replace, keep_same) as f:
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


def finite_number(v, kinds: type | tuple = (int, float)) -> bool:
    """Whether `v`, read from JSON, is a finite number of `kinds`: not a bool, not NaN or infinite,
    and not one of JSON's unbounded integers beyond a float's range (math.isfinite(10**400) raises
    OverflowError, and a config.json edited to hold one was a traceback)."""
    if isinstance(v, bool) or not isinstance(v, kinds):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def loads_json(text: str | bytes):
    """json.loads, with nesting too deep for Python's parser (RecursionError) a ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


@dataclass
class SafetensorsHeader:
    metadata: dict  # the "__metadata__" object ({} when absent)
    tensors: dict  # name -> {"dtype", "shape", "data_offsets"}, as stored
    start: int  # offset of the tensor bytes in the file: 8 + the header's length
    end: int  # the file's length as the header describes it (start + the last tensor's end)


def _header_json(data: bytes) -> tuple[dict, int]:
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes: truncated or not a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if 8 + n > len(data):
        raise ValueError(f"header of {n} bytes in a file of {len(data)}: truncated")
    header = loads_json(bytes(data[8 : 8 + n]))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header, 8 + n


def read_safetensors_header(data: bytes) -> SafetensorsHeader:
    """The header of a safetensors file held in memory, checked so that a truncated or
    foreign file is a ValueError that says what is wrong rather than a parser's message.

    vaekit reads a file's bytes once (read_regular: never a FIFO, bounded) and hashes them,
    so the header is read from those bytes; safetensors' own `safe_open` maps a path, and
    safetensors has no reader of a header in memory. The tensors themselves are then read
    by safetensors (`safetensors.numpy.load`, `safetensors.torch.load`)."""
    header, start = _header_json(data)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata is not a JSON object")
    try:
        end = max((int(t["data_offsets"][1]) for t in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        raise ValueError("a tensor entry has no valid data_offsets") from None
    return SafetensorsHeader(metadata, header, start, start + end)


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
    except ValueError:  # "embedded null byte": the API's caller, never the shell
        raise NotFound(f"{what} not found: {str(path)!r} holds a NUL byte, which no path can") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device?)"
        raise DamagedFile(f"{what} is {kind}: {path}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise DamagedFile(f"{what} is too large ({st.st_size} bytes, at most {max_bytes}): {path}")
    return st


class NotRegularFile(DamagedFile):
    """A path that is not a regular file (a FIFO, socket or device): never opened for reading."""


def open_regular_file(path: Path) -> BinaryIO:
    """`path` opened for binary reading, only when it is a regular file: every file vaekit
    reads by name is opened here. `stat` first (following links): opening a FIFO blocks
    forever, a device may never end; then O_NONBLOCK, so that a file swapped for a FIFO
    between the stat and the open still cannot block, and checked again on the open file.

    Raises the stat's OSError (FileNotFoundError, PermissionError...), IsADirectoryError for
    a folder, NotRegularFile for anything else."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder", str(path))
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(f"not a regular file (a FIFO, socket or device): {path}")
    f = os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise NotRegularFile(f"not a regular file (a FIFO, socket or device): {path}")
    return f


def read_regular(path: Path, what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file (see check_regular and open_regular_file). At most
    max_bytes + 1 bytes are read, so a caller can tell a file that grew past the bound."""
    check_regular(path, what, max_bytes)
    try:
        f = open_regular_file(path)
    except (IsADirectoryError, NotRegularFile):  # swapped since the check
        raise DamagedFile(f"{what} is not a regular file: {path}") from None
    except FileNotFoundError:  # removed since the check
        raise NotFound(f"{what} not found: {path}") from None
    except OSError as e:  # what stat allows and open refuses: a file without read permission
        raise DamagedFile(f"{what} cannot be read ({path}): {e.strerror or e}") from None
    with f:
        return f.read() if max_bytes is None else f.read(max_bytes + 1)


def try_lock(fd: int) -> bool:
    """Take the exclusive lock of the file open on `fd`, without waiting: True when this
    descriptor now holds it, False when another one does (another process's, or another
    descriptor of this process). Every lock vaekit takes is this one: filelock's native lock,
    as pip and torch use it (flock on POSIX; LockFileEx on the file's first byte on Windows).
    It goes when the descriptor is closed, and with the process however it ends (SIGKILL too).
    On Windows the lock is mandatory: while it is held no other process can read that byte
    (see held_elsewhere)."""
    from filelock import lock_descriptor

    return lock_descriptor(fd, blocking=False)


def held_elsewhere(e: OSError) -> bool:
    """Whether `e`, raised reading a file, says another process holds its lock (Windows'
    ERROR_LOCK_VIOLATION). Never on POSIX, where the lock does not stop a reader."""
    return getattr(e, "winerror", None) == 33


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
    """Whether `path` is `folder` or lies under it (both resolved, links followed); BadInput when
    either is, or lies under, a symbolic link loop (`ln -s loop loop`)."""
    try:
        resolved(path).relative_to(resolved(folder))
        return True
    except ValueError:
        return False


def resolved(path) -> Path:
    """Path(path).resolve(), links followed; a symbolic link loop on the way (RuntimeError up to
    Python 3.12, OSError in strict mode) is BadInput naming the path, not a traceback."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as e:  # an OSError but ELOOP: the working folder removed (getcwd)
        loop = isinstance(e, RuntimeError) or e.errno == errno.ELOOP
        raise BadInput(f"{path} cannot be followed: {'a symbolic link loop on the way (' if loop else '('}{e})") from None


def refuse_under_file(path: Path, what: str = "output") -> None:
    """BadInput when a file stands where a folder above `path` would have to be, or when the
    nearest folder that exists (`path` itself, or one above it) is one this process may not
    write in (read-only, not ours): said before the work, not when its result is written."""
    above = file_above(path)
    if above is not None:
        raise BadInput(f"{what} {path}: {not_a_folder(above)}")
    here = Path(path).absolute()
    folder = next((p for p in (here, *here.parents) if p.is_dir()), None)  # an output folder: itself
    if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"{what} {path}: cannot write in {folder} (permission denied or a read-only file system)")


def refuse_inside(output: Path, inputs, what: str, folder: bool = False) -> None:
    """BadInput when `output` is, or lies inside, an input folder: an output there would be
    read back as input next time, or replace the user's files. Inputs given as image files:
    `output` may not be one of them, and an output `folder` (whose files are named after the
    inputs) may not hold one."""
    roots = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for root in map(Path, roots):
        if root.is_dir():
            if is_inside(output, root):
                raise BadInput(f"{what} {output} is inside the input folder {root}; write it somewhere else")
        elif root.exists():
            relation = "is" if is_inside(output, root) else "holds" if folder and is_inside(root, output) else None
            if relation:
                raise BadInput(f"{what} {output} {relation} the input image {root}; write it somewhere else")


from vaekit.fileio.outputs import (  # noqa: E402  (a sibling; re-exported here)
    put_in_place, refuse_existing, refuse_long_names)
