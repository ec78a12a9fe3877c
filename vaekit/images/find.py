"""Finding image files: the folders vaekit scans and the names it keeps.

A file named explicitly is kept whatever its suffix; folders are scanned recursively for the
suffixes vaekit documents, following symlinked folders once each, so links cannot loop. A scan
told a folder to stay in (`confine_to`: the web app's --data-root) refuses a link out of it as it
walks; unconfined (the CLI), links lead anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vaekit.errors import BadInput, NotFound

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
RUN_MARKER = ".vaekit-run"  # the file every run directory holds (vaekit.training.rundir.MARKER): never images
RUN_FORMAT = "vaekit-run/1"  # a run's config.json "format" (vaekit.training.rundir.FORMAT): runs from before the marker


def is_run_folder(folder: str | Path) -> bool:
    """Whether vaekit made this folder as a run directory: it holds RUN_MARKER, or (a run from
    before the marker) a config.json of the run format. Never images, whatever it holds."""
    if os.path.isfile(os.path.join(folder, RUN_MARKER)):
        return True
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        return False
    from vaekit.fileio import read_json  # bounded, regular files only, nesting too deep a ValueError

    try:
        return read_json(Path(config), "run config").get("format") == RUN_FORMAT
    except (OSError, ValueError):  # unreadable, not JSON, not an object: anyone else's config.json
        return False


class NoImagesError(BadInput):
    """A folder or list of paths that holds no usable image."""


class LinkOutside(BadInput):
    """A symbolic link under a scan confined to a folder (`confine_to`) that leads outside it."""

    def __init__(self, link: Path, root: Path):
        super().__init__(f"{link} is a symbolic link to outside {root}, where this scan is confined, so it is not "
                         "read: remove the link, or copy its files into that folder")
        self.link, self.root = link, root


def none_usable(where: str, skipped: Sequence[tuple]) -> NoImagesError:
    """The error for inputs whose every file failed to load: `where` ("in FOLDER", "among the
    uploads") and the first few (file, reason) of `skipped`."""
    reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in skipped[:3])
    more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return NoImagesError(f"no usable image {where} ({len(skipped)} skipped: {reasons}{more})")


def find_images(inputs: str | Path | Sequence[str | Path], confine_to: Path | None = None) -> list[Path]:
    """Image files under `inputs` (files or folders), folders scanned recursively.

    A file named explicitly is kept whatever its suffix. In folders, files with an
    IMAGE_SUFFIXES suffix (any case) are kept; names starting with '.' are skipped;
    symlinked folders are followed, each real folder once, so links cannot loop. A link
    with an image suffix that leads nowhere (dangling, or a loop), or a FIFO, socket or
    device with one, is kept, so that loading reports it as skipped instead of it vanishing
    silently; so is a sub-folder that cannot be read, which loading reports as "unreadable
    folder".
    Each root's files come sorted by their relative posix path, roots in the order given. A run
    directory (`is_run_folder`) is no folder of images: named, it is BadInput; inside a folder,
    it is passed over (its preview.png is vaekit's, not one of the user's images).

    `confine_to`: every input, and every link the scan would follow or keep (a folder, or a file
    with an image suffix), must lead inside this folder; LinkOutside names the first that does
    not. Checked in the same walk that lists the files (the web app's --data-root: a second walk
    to check them first would miss a link made in between).
    """
    return [Path(f) for _, files in scan_roots(inputs, confine_to=confine_to) for f in files]


def scan_roots(inputs: str | Path | Sequence[str | Path], linked: list[Path] | None = None,
               confine_to: Path | None = None, hidden: list[str] | None = None) -> list[tuple[Path, list[str]]]:
    """(root, the image files found under it as path strings) for each root, in order; a root
    that is a file holds just itself. See find_images (and its `confine_to`). Text, not Path
    objects: about a fifth of the memory, for folders of millions of files. `linked`, when given,
    gets the real folder of every folder link followed under the roots: inputs too, where no
    output may go; `hidden`, the dot-named folders and image-suffixed files passed over (as paths)."""
    roots = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found: list[tuple[Path, list[str]]] = []
    seen: set[Path] = set()
    inside = None if confine_to is None else _Confined(Path(confine_to))
    for root in map(Path, roots):
        if not root.exists() and not root.is_symlink():  # a broken link is reported on load
            raise NotFound(f"no such file or folder: {root}")
        if inside is not None and not inside(root):
            raise BadInput(f"{root} is outside {inside.root}, where this scan is confined")
        if not root.is_dir():
            found.append((root, [str(root)]))
            continue
        if is_run_folder(root):  # its preview.png would pass for one image: a swapped argument
            raise BadInput(f"{root} is a vaekit run directory (a trained model), not a folder of images: name the "
                           "images' folder (a command takes the run first: vaekit anomaly-score RUN IMAGES)")
        rel: list[str] = []
        dots: list[str] | None = None if hidden is None else []
        _scan(root, "", seen, rel, linked, inside, dots)
        rel.sort()
        base = "" if str(root) == "." else str(root).rstrip("/") + "/"  # str(root / r), without a Path per file
        if hidden is not None:
            hidden += sorted(base + r for r in dots)
        found.append((root, [base + r for r in rel]))
    return found


def _hidden_images(e: os.DirEntry) -> bool:
    """Whether a dot-named entry the scan passes over could hold images: a folder, or a file with an
    image suffix (macOS's ._x.png companions too: they are not images, and are not read either)."""
    try:
        return e.is_dir() or Path(e.name).suffix.lower() in IMAGE_SUFFIXES
    except OSError:
        return False


class _Confined:
    """Whether a path leads inside `root`, links followed (os.path.realpath: a link loop is a path
    too, not an error; loading skips it with the reason)."""

    def __init__(self, root: Path):
        self.root = root
        self.real = os.path.realpath(root)

    def __call__(self, path) -> bool:
        real = os.path.realpath(path)
        return real == self.real or real.startswith(self.real.rstrip(os.sep) + os.sep)

    def check(self, e: os.DirEntry, read: bool) -> None:
        """LinkOutside when the entry `e`, which the scan follows or keeps (`read`), is a link out."""
        if read and e.is_symlink() and not self(e.path):
            raise LinkOutside(Path(e.path), self.root)


def _scan(folder: Path, prefix: str, seen: set[Path], out: list[str], linked: list[Path] | None = None,
          inside: _Confined | None = None, hidden: list[str] | None = None) -> None:
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
            if hidden is not None and _hidden_images(e):
                hidden.append(prefix + e.name)  # not read, but named: an archive of the folder would lack it
            continue
        try:
            is_dir = e.is_dir()  # follows symlinks; `seen` stops loops
        except OSError:  # a link to itself raises ELOOP here: one bad name must not fail the scan
            is_dir = False
        image = not is_dir and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
        if inside is not None:
            inside.check(e, is_dir or image)
        if is_dir and is_run_folder(e.path):
            continue  # a run directory inside the folder: the model's own files, not the user's images
        if is_dir:
            if linked is not None and e.is_symlink():
                linked.append(Path(e.path).resolve())
            _scan(Path(e.path), f"{prefix}{e.name}/", seen, out, linked, inside, hidden)
        elif image:
            # a file; or a link that leads nowhere, a FIFO, socket or device: named on load as
            # skipped, with the reason (loading never opens what is not a regular file)
            out.append(prefix + e.name)
