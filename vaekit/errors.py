"""vaekit's own exceptions: what a front end may turn into one line and an exit code.

Each subclass also derives from the built-in type older callers catch (ValueError, OSError,
ImportError), the way Pillow's UnidentifiedImageError is an OSError, and carries the exit
code the CLI documents. Anything that is not a VaekitError is a bug and keeps its traceback.
"""

from __future__ import annotations


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
