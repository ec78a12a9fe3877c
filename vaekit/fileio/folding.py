"""Whether an output folder's file system takes two different names for one file.

macOS and Windows disks, exFAT and FAT sticks and many network shares do not tell "Case.png" from
"case.png" (exFAT, FAT, NTFS, APFS and HFS+ by default), and macOS's disks also take the two
Unicode spellings of "é" (one code point, or "e" and a combining accent) for one name. Outputs
named after their inputs (decode, reconstruct, heat maps) are told apart by `name_key(folder)`:
the name itself where the file system keeps them apart, else its folded form. Without it, the
second image replaced the first's file (exit 0, one output fewer), or the job refused the file it
had itself just written as one that "appeared while it ran".

The folder is probed, not guessed from the platform: a Linux box mounts exFAT sticks and SMB
shares, and macOS can format a disk case-sensitive. It is probed only where two of the names could
meet on such a disk (they differ only in case or accents: almost never), so a job's names and its
side effects are the same as without the probe everywhere else. The probe creates two empty files
of its own in turn (O_EXCL, random names: "...-A", then an "é" spelled as "e" and an accent) in
the folder, or in its nearest existing parent where the folder is not there yet, looks each one's
other spelling up, and removes it; never in /dev, /proc or /sys, which no output may be in. Where
nothing can be created, the names are compared as they are (the writes then fail with their own
message). A folding disk's names are compared casefolded, which folds more than some disks do
(ß and ss): a name that might meet another is refused or numbered, never replaced.
"""

from __future__ import annotations

import os
import secrets
import unicodedata
from pathlib import Path
from typing import Callable, Iterable, Iterator

from vaekit.fileio.outputs import system_folder


def _nearest_folder(folder: Path) -> Path | None:
    try:
        for p in [Path(folder), *Path(folder).absolute().parents]:
            if p.is_dir():
                return p
    except OSError:  # a folder on the way that cannot be searched: the job's own checks say so
        pass
    return None


def _takes_for(folder: Path, made: str, other: str) -> bool | None:
    """Whether `other` names the file just created as `made` in `folder`; None if `made` could not be created."""
    path = folder / made
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return None
    try:
        return os.path.lexists(folder / other)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def folds(folder: Path) -> tuple[bool, bool]:
    """(case, accents): whether the file system at `folder` takes names that differ only in
    upper and lower case, or only in Unicode normalisation (NFC against NFD), for one."""
    where = _nearest_folder(folder)
    if where is None or system_folder(where) or system_folder(Path(os.path.realpath(where))):
        return False, False
    stem = f".vaekit-names-{os.getpid()}-{secrets.token_hex(5)}-"
    case = bool(_takes_for(where, stem + "A", stem + "a"))
    accents = bool(_takes_for(where, stem + unicodedata.normalize("NFD", "\u00e9"), stem + "\u00e9"))
    return case, accents


def broadest(name: str) -> str:
    """`name` as the most folding disk would compare it: NFC, casefolded, NFC again (casefold may
    decompose); plain ASCII needs only lower case (a million names: 22 s before this shortcut)."""
    if name.isascii():
        return name.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def name_key(folder: Path, names: Iterable[str] = ()) -> Callable[[str], str] | None:
    """What tells the output names `names` (and the folders they go in) apart in `folder`: None
    where the names themselves do (most Linux file systems, or no two of them that any disk could
    take for one), else a function to the form the folder's file system compares."""
    seen: dict[str, str] = {}
    if not any(seen.setdefault(broadest(n), n) != n for n in _spellings(names)):
        return None  # no two could meet anywhere: nothing to probe
    case, accents = folds(folder)
    if not (case or accents):
        return None

    def key(name: str) -> str:
        if accents:
            name = unicodedata.normalize("NFC", name)
        return unicodedata.normalize("NFC", name.casefold()) if case else name

    return key


def _spellings(names: Iterable[str]) -> Iterator[str]:
    """What an output's name is made of, for every input name: the name less its suffix and the
    whole name (an output is either plus ".png"), and every folder above it; two outputs can meet
    on a folding disk only where two of these do. String operations, not paths: a million names."""
    folders: set[str] = set()
    for name in names:
        slash = name.rfind("/")
        dot = name.rfind(".")
        yield name[:dot] if dot > slash + 1 else name  # as PurePosixPath.with_suffix drops the suffix
        yield name
        while slash > 0 and (folder := name[:slash]) not in folders:  # each folder once
            folders.add(folder)
            slash = folder.rfind("/")
            yield folder


FOLDED = ("its file system takes names that differ only in upper and lower case, or in how an accent "
          "is spelled, for one")
