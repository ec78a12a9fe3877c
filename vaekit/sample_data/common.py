"""What both sample data sets share: the report, seed checks, and refusing to mix data sets.

Each set lists what it wrote in `vaekit-sample-data.sha256` (sha256sum's format: `sha256sum -c`
checks it), so `overwrite` replaces only PNGs that a call wrote and nobody changed since: a
user's own file that merely has a sample's name is refused, never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaekit.errors import BadInput, OutputExists, cannot_write, not_a_folder

README_START = b"vaekit sample data:"  # how the README.txt both write begins
MANIFEST = "vaekit-sample-data.sha256"  # one "<sha256>  <folder/name.png>" line per PNG written
_MANIFEST_LINE = 64 + 2 + 64 + 1  # a hash, two spaces, "test/anomalous/digit3_0123.png" with room, "\n"


@dataclass
class SampleDataReport:
    root: Path  # the folder the data set was written to
    counts: dict[str, int]  # images written per sub-folder, e.g. {"train": 142, "test/normal": 36}


def whole(value) -> bool:
    """Whether `value` is an integer: a Python or numpy int, not a bool (True is no count or seed).
    vaekit.images.arrays.check_int asks the same; this package imports only numpy, Pillow and
    vaekit.errors (tests/test_sample_data.py), so it keeps its own line."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_seed(seed: int) -> None:
    """BadInput unless `seed` is a non-negative integer."""
    if not whole(seed) or seed < 0:
        raise BadInput(f"seed must be a non-negative integer, got {seed!r}")


def prepare_folders(root: Path, folders: list[str], overwrite: bool) -> None:
    """Create the output folders; refuse to mix a new data set into an old one (OutputExists
    unless `overwrite`, and then only the sample PNGs of those folders go), and refuse a folder
    holding images or a README.txt that the sample data did not write (OutputExists, always)."""
    from vaekit.fileio import refuse_under_file  # here: the sample data's module imports only what it must

    if (Path(root).exists() or Path(root).is_symlink()) and not Path(root).is_dir():  # mkdir said only "File exists"
        raise BadInput(f"{not_a_folder(root)}; give a folder, or a link to one")
    refuse_under_file(Path(root))
    existing = [p for f in folders if (root / f).is_dir() for p in sorted((root / f).glob("*.png"))]
    # a user's own images or README.txt there are neither deleted nor replaced, with overwrite too
    foreign = [p for p in existing if not _sample_name(p.name)] + _foreign_readme(Path(root)) + _foreign_manifest(Path(root))
    if not foreign and existing and overwrite:  # a sample's name is not enough: the manifest must vouch for it
        foreign = _unlisted(Path(root), existing)
        if foreign and (root / "README.txt").is_file() and not _present(root / MANIFEST):  # an older vaekit's set
            tops = " and ".join(sorted({f.split("/")[0] for f in folders}))
            raise OutputExists(f"{root} holds a sample data set without {MANIFEST} (an older vaekit wrote it): its "
                               f"PNGs cannot be told from your own, so --overwrite replaces none; delete its {tops} "
                               "folders yourself, or give another folder")
    if foreign:
        raise OutputExists(f"{foreign[0]} was not written by `vaekit sample-data` (or was changed since); give an "
                           "empty folder or one that an earlier `vaekit sample-data` wrote, and move that file away")
    if existing and not overwrite:
        raise OutputExists(
            f"{root} already holds sample images (e.g. {existing[0]}); "
            "pass --overwrite to replace them (overwrite=True in Python)"
        )
    # Only the files this module writes are removed, so a user's other files survive; the old
    # set's README and manifest go with its images (a call stopped before its own would leave them)
    for path in existing + [p for p in [Path(root) / "README.txt", Path(root) / MANIFEST] if p.is_file()]:
        path.unlink()
    for f in folders:
        try:
            (root / f).mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a read-only or missing place (/proc/self/x): the OS's words named no file
            raise cannot_write(e, root / f) from None


class removed_if_stopped:
    """`with removed_if_stopped(written):` around the block that writes a data set, each file's
    path added to `written` before it is written; when the block stops (Ctrl-C, SIGTERM, a full
    disk), those files go, the one being written included: a stopped call left a part of the set
    and a truncated PNG, which the next call took for an earlier call's images and `train` for a
    data set. (A class: this package imports no more of the standard library than it must.)"""

    def __init__(self, written: list[Path]) -> None:
        self.written = written

    def __enter__(self) -> list[Path]:
        return self.written

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is not None:
            for path in self.written:
                try:
                    path.unlink(missing_ok=True)
                except OSError:  # the rest still go, and the error that stopped the call is the one raised
                    pass
        return False


def _sample_name(name: str) -> bool:
    """Whether `name` is one the data sets write: digit<label>_<index>.png or part_<index>.png."""
    head, _, index = name[: -len(".png")].rpartition("_") if name.endswith(".png") else ("", "", "")
    digit = len(head) == 6 and head.startswith("digit") and head[5] in "0123456789"
    return (head == "part" or digit) and len(index) == 4 and all(c in "0123456789" for c in index)


def write_manifest(root: Path, written: list[Path]) -> None:
    """List the PNGs of `written` (all under `root`), each with its sha256, in root/MANIFEST; the
    manifest goes into `written` first, so a call stopped while writing it removes it too."""
    lines = [f"{_sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in written if p.suffix == ".png"]
    written.append(root / MANIFEST)
    try:
        written[-1].write_text("".join(lines))
    except OSError as e:
        from vaekit.errors import cannot_write

        raise cannot_write(e, written[-1]) from None


def _unlisted(root: Path, existing: list[Path]) -> list[Path]:
    """The PNGs of `existing` that root/MANIFEST does not list with their current sha256 (all of
    them without a readable manifest). Only the listed hashes of `existing` are kept, and each
    line is read with a bound: memory follows the folder, not the manifest's size."""
    wanted = {p.relative_to(root).as_posix(): p for p in existing}
    listed: dict[str, str] = {}
    manifest = root / MANIFEST
    if manifest.is_file() and not manifest.is_symlink():
        with open(manifest, "rb") as f:
            while (line := f.readline(_MANIFEST_LINE + 1)).endswith(b"\n"):
                digest, sep, name = line[:-1].decode("utf-8", "replace").partition("  ")
                if name in wanted and sep and len(digest) == 64:
                    listed[name] = digest
    return [p for name, p in wanted.items() if name not in listed or listed[name] != _sha256(p)]


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _foreign_manifest(root: Path) -> list[Path]:
    """[root/MANIFEST] when it is there and does not begin as the one the sample data writes (empty,
    or a first line "<sha256>  <folder>/<sample name>"), else []."""
    manifest = root / MANIFEST
    if not manifest.exists() and not manifest.is_symlink():
        return []
    if not manifest.is_file() or manifest.is_symlink():
        return [manifest]
    with open(manifest, "rb") as f:
        line = f.readline(_MANIFEST_LINE + 1)
    digest, sep, name = line[:-1].decode("utf-8", "replace").partition("  ")
    ours = sep and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) and _sample_name(Path(name).name)
    return [] if line == b"" or (line.endswith(b"\n") and ours) else [manifest]


def _sha256(path: Path) -> str | None:
    """The file's sha256; None for anything but a regular file (a link, a FIFO: never a sample's)."""
    from vaekit.fileio.digests import file_sha256  # here: the sample data's module imports only what it must

    return None if path.is_symlink() else file_sha256(path)


def _foreign_readme(root: Path) -> list[Path]:
    """[root/README.txt] when it is there and not the one the sample data writes, else []."""
    readme = root / "README.txt"
    if not readme.exists() and not readme.is_symlink():
        return []
    if not readme.is_file():  # a folder, a FIFO (never opened), a dangling link
        return [readme]
    with open(readme, "rb") as f:
        return [] if f.read(len(README_START)) == README_START else [readme]


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (clipped) as uint8 pixels, rounded."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

