"""vaekit's own exceptions: what a front end may turn into one line and an exit code.

Each subclass also derives from the built-in type older callers catch (ValueError, OSError,
ImportError), the way Pillow's UnidentifiedImageError is an OSError, and carries the exit
code the CLI documents. Anything that is not a VaekitError is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class VaekitError(Exception):
    """A problem the user can fix: bad input, a damaged or foreign file, a missing extra."""

    exit_code = 2


class BadInput(VaekitError, ValueError):
    """A value, path or option the user gave that vaekit cannot use (names it, and what is allowed)."""


class DamagedFile(VaekitError, ValueError):
    """A file vaekit reads (config, checkpoint, code file, ONNX metadata, cache) that is corrupt,
    truncated, out of bounds or not what its name says."""


class ForeignModel(VaekitError, ValueError):
    """A model file or run directory that vaekit did not write, or that belongs to another model."""


class MissingExtra(VaekitError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class InUse(VaekitError, OSError):
    """A run directory or output another vaekit process is writing right now."""


class NotFound(BadInput, FileNotFoundError):
    """A file or folder the user named that does not exist."""


class OutputExists(BadInput, FileExistsError):
    """An output that is already there, named without --overwrite."""


# an optional dependency -> the extra that installs it
EXTRAS = {"torch": "train", "sklearn": "metrics", "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "runtime",
          "skimage": "metrics", "matplotlib": "plot", "gradio": "demo", "gradio_client": "demo"}


def missing_extra(exc: ImportError) -> MissingExtra | None:
    """The MissingExtra naming the extra that installs the module `exc` lacks, or the extra's
    package that is installed but fails to import (a broken install, a missing shared library:
    the error raised inside that package); None otherwise (then the import error is a bug)."""
    extra = EXTRAS.get((exc.name or "").split(".")[0]) if isinstance(exc, ModuleNotFoundError) else None
    if extra is not None:
        return MissingExtra(f"this needs {exc.name}, which is not installed: pip install 'vaekit[{extra}]'")
    broken, tb = None, exc.__traceback__
    while tb is not None:  # the innermost frame of an extra's package the error came through,
        package = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]  # while it was being
        if package in EXTRAS:  # imported (module-level code): an ImportError of vaekit's raised in
            broken = package if tb.tb_frame.f_code.co_name == "<module>" else None  # code torch calls
        tb = tb.tb_next  # (a forward, a Dataset) is vaekit's bug, not a broken install
    if broken is None:
        return None
    return MissingExtra(f"{broken} is installed but cannot be imported ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                        f"reinstall it: pip install --force-reinstall 'vaekit[{EXTRAS[broken]}]'")


class TrainingFailed(VaekitError, RuntimeError):
    """Training stopped on its own (a diverging loss, non-finite weights): exit code 3."""

    exit_code = 3


class CannotWrite(VaekitError, OSError):
    """An output that cannot be written (a full disk, no permission, a read-only folder); the
    message names the file. Each is also of the OSError subtype it came from (PermissionError...)."""


_CANNOT_WRITE: dict[type, type] = {OSError: CannotWrite}


def file_above(path) -> "Path | None":
    """The nearest existing path above `path` when it is a file (nothing can be created under
    it; the OS says only "File exists" or "Not a directory"), else None."""
    parent = next((p for p in Path(path).parents if p.exists() or p.is_symlink()), None)
    return parent if parent is not None and not parent.is_dir() else None


def not_a_folder(path) -> str:
    """Why nothing can be made under `path`, in words: "P is a file, not a folder", "P is a link
    to a file (TARGET), not a folder", or, for a link that leads nowhere (where the OS says only
    "File exists"), a symbolic link loop or a link to nothing."""
    import os

    p = Path(path)
    if p.is_symlink() and p.exists():  # "a file" sent the user looking for a file they never made
        try:
            return f"{p} is a link to a file ({os.readlink(p)}), not a folder"
        except OSError:
            return f"{p} is a link to a file, not a folder"
    if p.is_symlink():
        try:
            os.stat(p)
        except OSError as e:
            if e.errno == errno.ELOOP:
                return f"{p} is a symbolic link loop"
        try:
            return f"{p} is a link to nothing ({os.readlink(p)})"
        except OSError:
            return f"{p} is a link to nothing"
    return f"{p} is a file, not a folder"


def cannot_write(e: OSError, path) -> CannotWrite:
    """`e` as a CannotWrite of the same OSError subtype, naming `path` (not a temporary name)."""
    kind = type(e) if isinstance(e, OSError) and not isinstance(e, VaekitError) else OSError
    if kind not in _CANNOT_WRITE:
        _CANNOT_WRITE[kind] = type(f"CannotWrite{kind.__name__}", (CannotWrite, kind), {"__module__": __name__})
    reason = e.strerror or e
    if e.errno in (errno.EEXIST, errno.ENOTDIR):  # the OS's words when a folder above is a file
        above = file_above(path)
        if above is not None:
            reason = not_a_folder(above)
        elif Path(path).is_symlink() and not Path(path).exists():  # a folder to make is a link to nowhere
            reason = "it " + not_a_folder(path).removeprefix(f"{path} ")
    err = _CANNOT_WRITE[kind](f"cannot write {path}: {reason}")
    err.errno = e.errno
    return err


def check_flags(**flags) -> None:
    """BadInput naming the first of `flags` (an API call's switches, by name) that is not True or
    False: `overwrite="no"` is a truthy string, and replaced the very files it meant to keep."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise BadInput(f"{name} must be True or False, got {value!r:.40}")


def check_callbacks(**callbacks) -> None:
    """BadInput naming the first of `callbacks` (an API call's progress or should_stop) that is
    neither None nor callable: `progress=1` was a TypeError deep in a job, after its outputs began."""
    for name, value in callbacks.items():
        if value is not None and not callable(value):
            raise BadInput(f"{name} must be a function or None, got {value!r:.40}")


def as_user_sees_it(exc: BaseException) -> BaseException:
    """The error a front end (CLI, web app) reports for `exc`: a missing or broken extra as the
    MissingExtra naming its install, a name longer than the file system takes as BadInput naming it,
    anything else as it is (then `is_user_error` says whether it is a mistake or a bug)."""
    if isinstance(exc, ImportError) and not isinstance(exc, VaekitError):
        return missing_extra(exc) or exc
    if isinstance(exc, OSError) and not isinstance(exc, VaekitError) and exc.errno == errno.ENAMETOOLONG:
        # from any stat or open: `-o` with a 256-byte name was a traceback, exit 3
        name = os.fsdecode(exc.filename) if exc.filename is not None else "a path"
        return BadInput(f"{name}: a name longer than the file system takes (255 bytes a file or folder name, "
                        f"4095 a path); give a shorter one")
    if isinstance(exc, OSError) and not isinstance(exc, VaekitError) and exc.errno in _FULL:
        # a full disk or a file size limit met outside atomic_writer (a .vkc's spill, export's
        # staging, sample-data's files, decode's move journal) was a traceback, exit 3
        return cannot_write(exc, os.fsdecode(exc.filename) if exc.filename is not None else "the output")
    return exc


_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def is_user_error(exc: BaseException) -> bool:
    """A mistake a user can make (bad file, missing folder, wrong model), reported as its message;
    anything else is a bug. The two built-in types stay until every module raises vaekit's own."""
    return isinstance(exc, (VaekitError, FileNotFoundError, FileExistsError))
