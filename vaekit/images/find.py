"""Finding image files: the folders vaekit scans and the names it keeps.

A file named explicitly is kept whatever its suffix; folders are scanned recursively for the
suffixes vaekit documents, following symlinked folders once each, so links cannot loop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vaekit.errors import BadInput, NotFound

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


class NoImagesError(BadInput):
    """A folder or list of paths that holds no usable image."""


def none_usable(where: str, skipped: Sequence[tuple]) -> NoImagesError:
    """The error for inputs whose every file failed to load: `where` ("in FOLDER", "among the
    uploads") and the first few (file, reason) of `skipped`."""
    reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in skipped[:3])
    return NoImagesError(f"no usable image {where} ({len(skipped)} unreadable: {reasons})")


def find_images(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files under `inputs` (files or folders), folders scanned recursively.

    A file named explicitly is kept whatever its suffix. In folders, files with an
    IMAGE_SUFFIXES suffix (any case) are kept; names starting with '.' are skipped;
    symlinked folders are followed, each real folder once, so links cannot loop. A link
    with an image suffix that leads nowhere (dangling, or a loop), or a FIFO, socket or
    device with one, is kept, so that loading reports it as skipped instead of it vanishing
    silently; so is a sub-folder that cannot be read, which loading reports as "unreadable
    folder".
    Each root's files come sorted by their relative posix path, roots in the order given.
    """
    return [Path(f) for _, files in scan_roots(inputs) for f in files]


def scan_roots(inputs: str | Path | Sequence[str | Path],
               linked: list[Path] | None = None) -> list[tuple[Path, list[str]]]:
    """(root, the image files found under it as path strings) for each root, in order; a root
    that is a file holds just itself. See find_images. Text, not Path objects: about a fifth of
    the memory, for folders of millions of files. `linked`, when given, gets the real folder of
    every folder link followed under the roots: inputs too, where no output may go."""
    roots = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found: list[tuple[Path, list[str]]] = []
    seen: set[Path] = set()
    for root in map(Path, roots):
        if not root.exists() and not root.is_symlink():  # a broken link is reported on load
            raise NotFound(f"no such file or folder: {root}")
        if not root.is_dir():
            found.append((root, [str(root)]))
            continue
        rel: list[str] = []
        _scan(root, "", seen, rel, linked)
        rel.sort()
        base = "" if str(root) == "." else str(root).rstrip("/") + "/"  # str(root / r), without a Path per file
        found.append((root, [base + r for r in rel]))
    return found


def _scan(folder: Path, prefix: str, seen: set[Path], out: list[str], linked: list[Path] | None = None) -> None:
    real = folder.resolve()
    if real in seen:
        return
    seen.add(real)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        if not prefix:
            raise  # the folder the caller named
        out.append(prefix.rstrip("/"))  # named on load, with the reason, as a skipped entry
        return
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            is_dir = e.is_dir()  # follows symlinks; `seen` stops loops
        except OSError:  # a link to itself raises ELOOP here: one bad name must not fail the scan
            is_dir = False
        if is_dir:
            if linked is not None and e.is_symlink():
                linked.append(Path(e.path).resolve())
            _scan(Path(e.path), f"{prefix}{e.name}/", seen, out, linked)
        elif Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
            # a file; or a link that leads nowhere, a FIFO, socket or device: named on load as
            # skipped, with the reason (loading never opens what is not a regular file)
            out.append(prefix + e.name)
