"""The pixel cache's bound: how much it may hold ($VAEKIT_CACHE_MAX_GB) and which entries go first.

Entries used longest ago go first (an entry's JSON is touched on every use); never the entry in use,
never a file vaekit did not write (an entry's JSON names its own key). A run elsewhere still reading a
removed entry keeps its open file (vaekit.training.crops.open_mapped). Used by vaekit.training.cache
after each use, and before a build to make room for the new entry (`evict`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from vaekit.errors import BadInput
from vaekit.fileio import read_json

# What the cache may hold before its least recently used entries go ($VAEKIT_CACHE_MAX_GB): a folder
# retrained after images were added, or trained at another size, is a new entry, and the old ones
# were kept for ever (the web app's Train tab made one per folder and size)
DEFAULT_MAX_GB = 20.0
ENTRY_NAME = re.compile(r"[0-9a-f]{24}")  # cache_key's 24 hex digits: nothing else there is an entry


def max_cache_bytes() -> int:
    """The bytes the pixel cache may hold: $VAEKIT_CACHE_MAX_GB (decimal GB, 0 keeps only the entry
    in use), else DEFAULT_MAX_GB. BadInput for a setting that is not a number of GB."""
    text = os.environ.get("VAEKIT_CACHE_MAX_GB", "").strip()
    try:
        gb = float(text) if text else DEFAULT_MAX_GB
    except ValueError:
        gb = math.nan
    if not math.isfinite(gb) or gb < 0:
        raise BadInput(f"VAEKIT_CACHE_MAX_GB={text[:40]!r}: expected the pixel cache's size limit in GB, a number >= 0")
    return int(min(gb * 1e9, 2.0**62))  # 1e308 GB: no limit, not an OverflowError


def entry_bytes(root: Path, key: str) -> int:
    """The bytes of `key`'s pixel file, 0 when there is none. (Those of an entry that was not used,
    stale or damaged, are what its rebuild gives back first: `drop`.)"""
    try:
        return (root / f"{key}.u8").stat().st_size
    except OSError:
        return 0


def drop(root: Path, key: str) -> None:
    """Remove `key`'s entry: an unused one before it is built again, so that a disk with room for
    one entry holds the new one (a run still reading the old keeps its open file)."""
    for name in (f"{key}.json", f"{key}.u8"):
        try:
            (root / name).unlink()
        except OSError:  # absent, or held open on a system that will not unlink it: the rename replaces it
            pass


def used(root: Path, key: str, limit: int) -> None:
    """Mark `key`'s entry as just used, then remove the entries used longest ago while the cache
    holds more than `limit` bytes, even when the entry in use alone is larger. A folder that
    cannot be written (read-only) is left as it is."""
    try:
        os.utime(root / f"{key}.json")
    except OSError:
        return
    evict(root, key, lambda total, freed: total <= limit)


def evict(root: Path, keep: str, enough: Callable[[int, int], bool], remove: bool = True) -> int:
    """Remove entries other than `keep`'s, those used longest ago first, until `enough(total, freed)`:
    `total` the bytes the cache's entries hold, `freed` those removed so far. Returns `freed`;
    with `remove` False, what it would free, removing nothing."""
    entries, total = [], 0
    for meta in root.glob("*.json"):
        if not ENTRY_NAME.fullmatch(meta.stem):
            continue
        try:
            st = meta.stat()
        except OSError:  # removed meanwhile by another run
            continue
        size = st.st_size + entry_bytes(root, meta.stem)
        total += size
        if meta.stem != keep:
            entries.append((st.st_mtime_ns, meta.stem, size))
    freed = 0
    for _, old, size in sorted(entries):
        if enough(total, freed):
            break
        if _is_entry(root, old):
            if remove:
                drop(root, old)
            total, freed = total - size, freed + size
    return freed


def _is_entry(root: Path, key: str) -> bool:
    """Whether <key>.json is an entry vaekit wrote (it names its own key)."""
    try:
        return read_json(root / f"{key}.json", "cache entry").get("key") == key
    except (OSError, ValueError):
        return False
