"""Decoded-pixel cache: decode an image folder once, memory-map it on every later run.

An entry is two files named by a key over the file list (path, size, mtime of each)
and the decode settings: <key>.u8 holds the raw uint8 (N, C, H, W) array and
<key>.json describes it, with the sha256 of the .u8 file, checked on every open: a
corrupted entry (a bad disk, a stray write) is rebuilt, never trained on. The JSON also
pins the files' inode numbers and change times (vaekit.stream.batches.sources): a file
replaced under the same name, size and mtime (which the key cannot tell) rebuilds the entry. The JSON is
written last, so its presence marks a complete entry. The cache is bounded (vaekit.training.cache_bound,
by VAEKIT_CACHE_MAX_GB). Numpy only, no torch: the torch Dataset wraps what this returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from vaekit import images
from vaekit.errors import BadInput, CannotWrite
from vaekit.fileio import atomic_write_json, atomic_writer, open_regular_file, read_json
from vaekit.fileio.digests import open_file_sha256
from vaekit.images.tiles import tiling
from vaekit.stream.batches import identity
from vaekit.training.cache_bound import DEFAULT_MAX_GB, ENTRY_NAME, evict, max_cache_bytes  # noqa: F401 - part of this face
from vaekit.training.cache_bound import drop as _drop
from vaekit.training.cache_bound import entry_bytes as _entry_bytes
from vaekit.training.cache_bound import used as _used

# Bump when decoding changes, so old entries are never read as new ones. (Not bumped when
# entries gained their sha256: the version is part of every run's data fingerprint, which
# --resume compares; an entry without a sha256 is simply rebuilt.)
FORMAT_VERSION = 1
# Decoded bytes loaded in memory instead when the cache cannot be written (a read-only or full disk):
# past this, a full disk would turn into the whole folder in RAM (200k images of 256 px RGB: 39 GB)
MEMORY_FALLBACK = 1 << 30


def default_cache_dir() -> Path:
    """$VAEKIT_CACHE_DIR, else $XDG_CACHE_HOME/vaekit, else ~/.cache/vaekit. BadInput for a `~user`
    this machine does not know (pathlib's RuntimeError was a traceback and exit 3)."""
    if os.environ.get("VAEKIT_CACHE_DIR"):
        return _home_expanded("VAEKIT_CACHE_DIR")
    if os.environ.get("XDG_CACHE_HOME"):
        return _home_expanded("XDG_CACHE_HOME") / "vaekit"
    return _home_expanded(None) / ".cache" / "vaekit"


def _home_expanded(variable: str | None) -> Path:
    text = os.environ[variable] if variable else "~"
    try:
        return Path(text).expanduser()
    except RuntimeError:
        said = f"{variable}={text[:80]!r}" if variable else "the pixel cache (~/.cache/vaekit)"
        raise BadInput(f"{said}: no home folder found for it; set VAEKIT_CACHE_DIR to the folder "
                       "the pixel cache should use") from None


def cache_key(paths: Sequence[Path], size: int, channels: int, whole: bool = False) -> str:
    """24 hex digits of sha256 over the settings and each file's real path, byte size and mtime.

    Any change, addition, removal or reordering of files gives a new key. The Pillow version
    is part of it too, since a new Pillow may decode or resample differently.
    """
    return _fingerprint(paths, size, channels, whole)[0]


def _fingerprint(paths: Sequence[Path], size: int, channels: int, whole: bool = False) -> tuple[str, list[Path], str]:
    """The key, each file's resolved path (which an entry records, so it holds from any cwd), and
    the sha256 of the files' inodes and change times. Those are kept out of the key on purpose: the
    key is training's data fingerprint, which `train --resume` compares, and a chmod or a copy of
    the folder (a new inode and change time, the same pixels) must not refuse a resume; a stale
    entry costs only a decode."""
    h = hashlib.sha256(f"vaekit {FORMAT_VERSION} {PIL.__version__} {size} {channels}{' whole' * whole}\n".encode())
    # os.path.realpath, not Path.resolve: the latter raises RuntimeError on a symlink loop
    reals = [Path(os.path.realpath(p)) for p in paths]
    pins = hashlib.sha256()
    for real in reals:
        try:
            st = real.stat()
            stamp, pin = f"{st.st_size} {st.st_mtime_ns}", identity(st)
        except OSError:
            stamp = pin = "missing"  # load_images will record it as skipped; the key must still exist
        h.update(f"{real}\0{stamp}\n".encode("utf-8", "surrogateescape"))
        pins.update(f"{pin}\n".encode())
    return h.hexdigest()[:24], reals, pins.hexdigest()


@dataclass
class CachedImages:
    images: np.ndarray  # (N, C, H, W) uint8: a read-only np.memmap, or in memory when uncacheable
    paths: list[Path]  # the files behind `images`, same order
    skipped: list[tuple[Path, str]]  # (file, reason) for each file that could not be decoded
    key: str  # the cache key; entry files are <key>.u8 and <key>.json
    hit: bool  # True when read from an existing entry without decoding anything
    sha256: str = ""  # of the pixels, as the entry stores it: what the images ARE (a run pins it)
    counts: list[int] | None = None  # whole=True: how many rows (square tiles) each of `paths` has


def load_cached(
    paths: Sequence[Path],
    size: int,
    channels: int,
    cache_dir: Path | None = None,
    progress: Callable[..., None] | None = None,
    workers: int = 0,
    whole: bool = False,
    rows_per_image: float = 1.0,
) -> CachedImages:
    """`images.load_images`, but decoded at most once per unchanged set of files.

    whole=True: each image whole, its shorter side `size`, cut into the fewest `size` px squares
    that cover it (vaekit.images.tiles), a row each (its centre square alone where it cannot be
    read whole: too elongated); `counts` says how many each image has. Such
    an entry is never held in memory instead: a cache that cannot be written is CannotWrite.
    `rows_per_image`: about how many squares an image has, for the room asked for before decoding.

    A missing, partial or corrupt entry is rebuilt. If the cache folder cannot be
    written, the images are loaded in memory instead (hit False), without failing,
    when they take at most MEMORY_FALLBACK bytes; more is CannotWrite (exit 2), also
    before any decoding when the disk has less room free than the entry needs, even with
    the cache's other entries removed. Room is made before the build (`_make_room`).
    """
    paths = [Path(p) for p in paths]
    limit = max_cache_bytes()  # a bad setting is said before anything is decoded
    key, reals, pins = _fingerprint(paths, size, channels, whole)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    found = _open_entry(root, key, size, channels, reals, paths, pins)
    if found is not None:
        _used(root, key, limit)
        return found
    need = round(len(paths) * channels * size * size * rows_per_image)  # the entry's bytes, every file decoding
    try:
        _make_room(root, key, need, limit)  # said before hours of decoding fill the disk
        built = _build(root, (key, pins), paths, reals, (size, whole), channels, progress, workers)
        _used(root, key, limit)
        return built
    except OSError as e:  # only cache writes raise OSError here; unreadable images are skipped
        if need > MEMORY_FALLBACK or whole:  # the folder in memory instead would be the same bytes in RAM
            raise CannotWrite(f"the pixel cache {root} cannot hold these images decoded ({need / 1e9:.1f} GB at "
                              f"{size} px; {getattr(e, 'strerror', None) or e}): make room there, or set "
                              "VAEKIT_CACHE_DIR to a folder on a disk that has it") from None
        report = images.load_images(paths, size, channels, progress, workers)
        return CachedImages(report.images, report.paths, report.skipped, key, hit=False,
                            sha256=hashlib.sha256(np.ascontiguousarray(report.images)).hexdigest())


def _mapped(f, shape: tuple, data: Path) -> np.memmap:
    """The entry's pixels in the open file `f`, mapped read-only, pinned to the very file mapped
    (`pinned`: its device and inode), so that reads by name (vaekit.training.crops.open_mapped)
    never take a file rebuilt under the same name since."""
    arr = np.memmap(f, np.uint8, "r", shape=shape)
    arr.filename = os.path.abspath(data)  # the name it is read by (`f` may know only its descriptor)
    st = os.fstat(f.fileno())
    arr.pinned = (st.st_dev, st.st_ino)
    return arr


def _make_room(root: Path, key: str, need: int, limit: int) -> None:
    """Room for `key`'s new entry of `need` bytes: its unused old entry removed, then the entries used
    longest ago while the cache would hold more than `limit` with it, or the disk has less than
    `need` free (on a disk full of them the build failed, although they went right after it
    anyway). OSError saying the room free, and nothing removed, when even all of them are not enough."""
    free = _free_bytes(root)
    if free is not None:
        free += _entry_bytes(root, key)  # given back by the drop below
        # counted first (each entry's JSON read: only when the disk is short), so none goes for nothing
        older = 0 if need <= free else evict(root, key, lambda total, freed: need <= free + freed, remove=False)
        if need > free + older:
            raise OSError(f"{free / 1e9:.1f} GB free" + (f", {older / 1e9:.1f} GB more in older entries" if older else ""))
    _drop(root, key)
    evict(root, key, lambda total, freed: total + need <= limit and (free is None or need <= free + freed))


def _free_bytes(root: Path) -> int | None:
    """Bytes free on the disk that holds (or will hold) `root`; None when it cannot be told."""
    at = next((p for p in (root, *root.parents) if p.is_dir()), None)
    try:
        return shutil.disk_usage(at).free if at is not None else None
    except OSError:
        return None


def _respell(recorded: list, reals: list[Path], paths: list[Path]) -> list[Path]:
    """The caller's spelling of each recorded real path, matched in order.

    Entries record real paths; two of the caller's paths can share one (a symlink next to
    its target), so they are matched by position, not looked up: the recorded paths are a
    subsequence of `reals`. Raises ValueError if they are not (a foreign or stale entry).
    """
    out, i = [], 0
    for r in map(Path, recorded):
        while i < len(reals) and reals[i] != r:
            i += 1
        if i == len(reals):
            raise ValueError(f"cache entry names {r}, which is not among the files asked for")
        out.append(paths[i])
        i += 1
    return out


def _open_entry(
    root: Path, key: str, size: int, channels: int, reals: list[Path], paths: list[Path], pins: str,
    held=None,
) -> CachedImages | None:
    """The entry for `key` if it is complete, consistent and of these very files (`pins`), else None.
    Its pixel file is opened once (`held`: already open), then checked and mapped through that one
    descriptor: another run's bound (`_used`) may remove the entry meanwhile, and the run keeps
    the file it checked (by name, a removal between the checksum and the mapping lost it)."""
    try:
        meta = read_json(root / f"{key}.json", "cache entry")
        shape = tuple(int(d) for d in meta["shape"])
        counts = None if meta.get("counts") is None else [int(k) for k in meta["counts"]]
        if (
            meta["version"] != FORMAT_VERSION
            or meta["dtype"] != "uint8"
            or meta.get("sources") != pins  # an entry from before it was recorded is rebuilt too
            or len(shape) != 4
            or shape[1:] != (channels, size, size)
            or len(meta["paths"]) != (shape[0] if counts is None else len(counts))
            or (counts is not None and sum(counts) != shape[0])
        ):
            return None
        data = root / f"{key}.u8"
        with open_regular_file(data) if held is None else contextlib.nullcontext(held) as f:
            if os.fstat(f.fileno()).st_size != math.prod(shape) or open_file_sha256(f) != meta.get("sha256"):
                return None
            # mmap refuses empty files; an entry with no images is just an empty array
            arr = _mapped(f, shape, data) if shape[0] else np.zeros(shape, np.uint8)
        loaded = _respell(meta["paths"], reals, paths)
        reasons = [str(reason) for _, reason in meta["skipped"]]
        skipped = list(zip(_respell([p for p, _ in meta["skipped"]], reals, paths), reasons))
        return CachedImages(arr, loaded, skipped, key, hit=True, sha256=meta["sha256"], counts=counts)
    except (OSError, ValueError, KeyError, TypeError):  # missing or corrupt: rebuild
        return None


def _build(
    root: Path,
    named: tuple[str, str],  # (key, pins): see _fingerprint
    paths: list[Path],
    reals: list[Path],
    sized: tuple[int, bool],  # (size, whole): see load_cached
    channels: int,
    progress: Callable[..., None] | None,
    workers: int,
) -> CachedImages:
    (key, pins), (size, whole) = named, sized
    results = images.iter_load(paths, size, channels, workers, crop=not whole)  # checks the arguments first
    loaded: list[Path] = []  # resolved, as the entry records them
    counts: list[int] = []  # rows of each loaded image
    skipped: list[tuple[Path, str]] = []
    total, every = len(paths), max(1, len(paths) // 100)
    _remove_strays(root, key)
    digest = hashlib.sha256()
    # Each image goes straight to disk, so memory stays flat however large the folder.
    with atomic_writer(root / f"{key}.u8") as f:
        for done, (_, x, reason) in enumerate(results, 1):
            if x is None and whole:  # too elongated to read whole (the limit of a score): its centre square, as
                x = _centre_square(paths[done - 1], size, channels)  # anomaly-score's calibration cuts it
            if x is None:
                skipped.append((reals[done - 1], reason or ""))
            else:
                x = tiling(x, size).cut(x) if whole else x
                counts.append(len(x) if whole else 1)
                chunk = memoryview(np.ascontiguousarray(x)).cast("B")
                f.write(chunk)
                digest.update(chunk)
                loaded.append(reals[done - 1])
            if progress is not None and (done % every == 0 or done == total):
                progress(done, total)
    meta = {
        "version": FORMAT_VERSION,
        "key": key,
        "shape": [sum(counts), channels, size, size],
        "counts": counts if whole else None,
        "dtype": "uint8",
        "sha256": digest.hexdigest(),
        "sources": pins,
        "size": size,
        "channels": channels,
        "paths": [str(p) for p in loaded],
        "skipped": [[str(p), r] for p, r in skipped],
    }
    # opened before its JSON makes it an entry that another run's bound may remove (`_used`)
    with open_regular_file(root / f"{key}.u8") as held:
        atomic_write_json(root / f"{key}.json", meta)
        entry = _open_entry(root, key, size, channels, reals, paths, pins, held)
    if entry is None:  # written but unreadable: a broken file system, not a user mistake
        raise OSError(f"cache entry {root / key} could not be read back")
    return CachedImages(entry.images, entry.paths, entry.skipped, key, hit=False, sha256=entry.sha256,
                        counts=entry.counts)


def _centre_square(path: Path, size: int, channels: int) -> np.ndarray | None:
    """The file's centre square (C, size, size), for a whole entry where it cannot be read whole;
    None where it cannot be read at all. Without it, the one file left out of the whole entry
    made every image of the folder train on its centre square (vaekit.training.wide.load_wide)."""
    try:
        return images.load_image(path, size, channels)
    except (images.ImageReadError, MemoryError):  # as images.iter_load skips a file
        return None


# A partial entry left by a process that was killed (SIGKILL, out of memory) can be as large as
# the whole folder decoded. One that nothing has written to for this long has no writer left.
STRAY_SECONDS = 600


def _remove_strays(root: Path, key: str) -> None:
    now = time.time()
    for stray in root.glob(f".{key}.u8.*.tmp"):
        try:
            if now - stray.stat().st_mtime > STRAY_SECONDS:
                stray.unlink()
        except OSError:
            pass
