"""Whether an output folder's file system takes two different names for one file.

macOS and Windows disks, exFAT and FAT sticks and many network shares do not tell "Case.png" from
"case.png" (exFAT, FAT, NTFS, APFS and HFS+ by default), and macOS's disks also take the two
Unicode spellings of "é" (one code point, or "e" and a combining accent) for one name. Outputs
named after their inputs (decode, reconstruct, heat maps) are told apart by `name_key(folder)`:
the name itself where the file system keeps them apart, else its folded form. Without it, the
second image replaced the first's file (exit 0, one output fewer), or the job refused the file it
had itself just written as one that "appeared while it ran".

The folder is probed, not guessed from the platform: a Linux box mounts exFAT sticks and SMB
shares, and macOS can format a disk case-sensitive. The probe creates one empty file of its own
(O_EXCL, a random name) in the folder, or in its nearest existing parent where the folder is not
there yet, looks the other spellings up, and removes it; where nothing can be created there, the
names are compared as they are (the job's own writes then fail with their own message).
"""

from __future__ import annotations

import os
import secrets
import unicodedata
from pathlib import Path
from typing import Callable


def _nearest_folder(folder: Path) -> Path | None:
    for p in [Path(folder), *Path(folder).absolute().parents]:
        if p.is_dir():
            return p
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
    if where is None:
        return False, False
    stem = f".vaekit-names-{os.getpid()}-{secrets.token_hex(5)}-"
    case = bool(_takes_for(where, stem + "A", stem + "a"))
    accents = bool(_takes_for(where, stem + unicodedata.normalize("NFD", "\u00e9"), stem + "\u00e9"))
    return case, accents


def name_key(folder: Path) -> Callable[[str], str] | None:
    """What tells output names apart in `folder`: None where the names themselves do (most Linux
    file systems), else a function to the form the file system compares."""
    case, accents = folds(folder)
    if not (case or accents):
        return None

    def key(name: str) -> str:
        if accents:
            name = unicodedata.normalize("NFC", name)
        return name.lower() if case else name

    return key


FOLDED = ("its file system takes names that differ only in upper and lower case, or in how an accent "
          "is spelled, for one")
