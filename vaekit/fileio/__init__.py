"""Safe file I/O: crash-safe writes, reads that cannot hang, and the output rule.

Writes go to a temporary name in the same folder, then rename (vaekit.fileio.atomic): a reader,
or a resume after SIGKILL, sees either the old complete file or the new one, never half of one.

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


from vaekit.fileio.atomic import atomic_write_bytes, atomic_write_text, atomic_writer  # noqa: E402,F401


_KINDS = ((b"VKC", "a .vkc file (decode it with `vaekit decode MODEL FILE`)"),
          (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"PK\x03\x04", "a zip archive"),
          (b"BM", "a BMP image"))  # last: two letters


def kind_of(head: bytes) -> str | None:
    """What a file is by its first bytes (up to 4 kB), for an error about a file given in the wrong
    place: a .vkc, an image, a vaekit code file, a safetensors file (a run's weights); None: not known."""
    for magic, kind in _KINDS:
        if head.startswith(magic):
            return kind
    if head[8:9] == b"{" and b'"vaekit-codes"' in head[:4096]:
        return "a vaekit code file (decode it with `vaekit decode MODEL FILE`)"
    if head[8:10] == b'{"':  # a safetensors header's length, then its JSON
        return "a safetensors file (a run's weights? give the run's folder)"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    return None


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


def refuse_unmakeable_folder(path: Path, what: str = "output") -> None:
    """`refuse_under_file` for an output folder, and BadInput when `path` is a link to nothing or a
    link loop: no folder can be made or written in there."""
    if Path(path).is_symlink() and not Path(path).exists():
        raise BadInput(f"{what} {not_a_folder(path)}")
    refuse_under_file(path, what)


def named_path(value, what: str = "output folder") -> Path:
    """`value` as a Path; BadInput for an empty name (Path("") is the current folder, where a
    decode into "" wrote its PNGs) or a value that is no path at all."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise BadInput(f"no {what} given: {value!r:.60} (an empty name is not the current folder)")
    return Path(value)


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


def refuse_inside(output: Path, inputs, what: str, folder: bool = False, kind: str = "the input folder") -> None:
    """BadInput when `output` is, or lies inside, an input folder: an output there would be
    read back as input next time, or replace the user's files. Inputs given as image files:
    `output` may not be one of them, and an output `folder` (whose files are named after the
    inputs) may not hold one."""
    roots = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for root in map(Path, roots):
        if root.is_dir():
            if is_inside(output, root):
                raise BadInput(f"{what} {output} is inside {kind} {root}; write it somewhere else")
        elif root.exists():
            relation = "is" if is_inside(output, root) else "holds" if folder and is_inside(root, output) else None
            if relation:
                raise BadInput(f"{what} {output} {relation} the input image {root}; write it somewhere else")


from vaekit.fileio.outputs import (  # noqa: E402  (a sibling; re-exported here)
    NO_FOLLOW_NO_BLOCK, put_in_place, refuse_existing, refuse_long_names)
