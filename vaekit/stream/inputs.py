"""What a streaming job reads: the image files under what the user named, this process's share
of them, and fixed batches of them decoded ahead of the consumer.

- `find_inputs`: the image files under what the user named, each with its name relative to
  the folder it was found in (the names every output uses); for a job, each file once however
  often it was named.
- `shard`: this process's share of a file list, deterministic by file order (torchrun's
  RANK / WORLD_SIZE, or an explicit `--shard i/n`).
- `iter_batches`: fixed slices of the file list, decoded ahead of the consumer (in a thread of
  vaekit.stream.pipeline, and in worker processes when asked). A batch is always the same slice of
  files, so a resumed job scores exactly the batches an uninterrupted one would, and gets
  bit-identical numbers. A slice whose decoded pixels would pass BATCH_PIXELS comes in parts
  (consecutive `Batch`es of the same index, each at most BATCH_PIXELS or one file), so what is
  held at once is bounded by pixels, whatever `batch_size` and the images' shape; the journal
  writes a slice's line once its last part is in (vaekit.stream.journals).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from vaekit import images as imageio
from vaekit.stream import pipeline
from vaekit.stream.batches import MAX_SHARDS
from vaekit.errors import BadInput
from vaekit.training.launch import launch_env
from vaekit.images.arrays import check_batch_size
# decoded pixels in one Batch: a slice of the file list holding more comes in parts of at most this
# many (or one file: a file read whole has at most vaekit.images.read.MAX_WHOLE_PIXELS)
from vaekit.images.load import BATCH_PIXELS
from vaekit.images.tiles import Tiling, tiling

READ_AHEAD = pipeline.DEPTH  # batches (parts) decoded ahead of the consumer


class PathList(Sequence[Path]):
    """File paths kept as text and handed out as Paths: a list of a million files costs about
    a fifth of the memory a list of Path objects would."""

    def __init__(self, items: Sequence[str]):
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def texts(self) -> list[str]:
        """The paths as text (not a copy: do not change it)."""
        return self._items

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Path(p) for p in self._items[i]]
        return Path(self._items[i])

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"PathList({len(self)} paths)"


@dataclass
class Inputs:
    roots: list[Path]  # what the user named: files and folders, in order
    paths: Sequence[Path]  # every image file found under them, in order (a PathList)
    names: list[str]  # each file's name relative to the root it was found under
    linked: list[Path] = field(default_factory=list)  # real folders reached through folder links under them
    repeated: list[str] = field(default_factory=list)  # files named again after their first time, left out
    hidden: list[str] = field(default_factory=list)  # dot-named folders and image files in the folders: not read

    @property
    def sources(self) -> list[Path]:
        """Every folder or file the images were read from: the roots and the folders linked
        under them. No output may go inside any of them (vaekit.fileio.refuse_inside)."""
        return [*self.roots, *self.linked]


def _named(inputs) -> list:
    """What the user named, as a list of paths; BadInput for anything else (an array, bytes, None)."""
    if isinstance(inputs, (str, os.PathLike)):
        return [inputs]
    if isinstance(inputs, (bytes, bytearray, np.ndarray)) or not isinstance(inputs, Iterable):
        raise BadInput(f"inputs are image files or folders (a path or a list of paths), got {type(inputs).__name__}"
                       " (images in an array: Model.score takes them)")
    items = list(inputs)
    if not all(isinstance(r, (str, os.PathLike)) for r in items):
        raise BadInput("inputs are image files or folders: every item must be a path")
    return items


def find_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike], once: bool = False,
                confine_to: Path | None = None) -> Inputs:
    """The image files under `inputs` (see images.find_images, and its `confine_to`) and their relative names.
    Naming nothing, or folders that hold no image file, is BadInput (NoImagesError).

    once: each file once however often it is named (`a.png a.png`, `a.png ./a.png`, a file and
    its folder), at its first place and name, each later one listed in `repeated`: what the
    streaming jobs read, so no job scores, encodes or writes one file twice. (Without it, a file
    named twice is two inputs: Model.load_images([a, b]) gives one image each, even when a is b.)
    Two names of one file inside the folders (a link beside its target, a hard link) stay two
    inputs either way, and a folder named twice is scanned once either way."""
    items = _named(inputs)
    if not items or any(not str(r) for r in items):
        raise BadInput("no inputs given: name image files or folders (an empty name is not the current folder)")
    roots = [Path(r) for r in items]
    linked: list[Path] = []
    hidden: list[str] = []
    found = imageio.scan_roots(roots, linked, confine_to, hidden)
    paths = [f for _, files in found for f in files]
    keep, repeated = _once(paths) if once and len(roots) > 1 else (None, [])
    if keep is not None:
        paths = [paths[i] for i in keep]
    if not paths:
        where = roots[0] if len(roots) == 1 else ", ".join(map(str, roots))
        dots = (f" ({len(hidden)} hidden folder(s) or image file(s), names beginning with '.', are not read: "
                f"{hidden[0]}{', ...' if len(hidden) > 1 else ''})") if hidden else ""
        raise imageio.NoImagesError(f"no image files found in {where}{dots}")
    folders = _folders(roots)
    if len(roots) == 1 and folders:  # the common case, without a Path per file
        cut = len(paths[0]) - len(Path(paths[0]).relative_to(roots[0]).as_posix())
        names = [f[cut:] for f in paths]
    else:
        names = [_name(Path(f), folders, len(roots)) for f in paths]
    return Inputs(roots, PathList(paths), names, linked, repeated, hidden)


def _once(paths: list[str]) -> tuple[list[int] | None, list[str]]:
    """(positions of each file's first appearance, or None when no file appears twice; the later
    appearances). A file is its real folder and its own name: `a.png`, `./a.png`, `d/../a.png`
    and `a.png` through a link to its folder are one file; a link named `b.png` to it is another."""
    real: dict[str, str] = {}  # folder -> its real path: folders are few, files many
    seen: set[tuple[str, str]] = set()
    keep, repeated = [], []
    for i, p in enumerate(paths):
        folder, name = os.path.split(p)
        if folder not in real:
            real[folder] = os.path.realpath(folder or ".")
        key = (real[folder], name)
        if key in seen:
            repeated.append(p)
        else:
            seen.add(key)
            keep.append(i)
    return (keep if repeated else None), repeated


def named(inputs) -> str:
    """What the user named, for a message: "a.png, b" (never a list's repr)."""
    if isinstance(inputs, (str, os.PathLike)):
        return str(inputs)
    return ", ".join(map(str, inputs))


def relative_name(path: Path, roots: Sequence[Path]) -> str:
    """`path` relative to the folder it was found in, posix style; with several inputs, prefixed
    by that folder's name, so names stay unique; a file named directly is its own name."""
    roots = [Path(r) for r in roots]
    return _name(Path(path), _folders(roots), len(roots))


def _folders(roots: Sequence[Path]) -> list[tuple[Path, str]]:
    """(root, its real folder's name) for the roots that are folders: each looked at once."""
    return [(r, r.resolve().name) for r in roots if r.is_dir()]


def _name(path: Path, folders: list[tuple[Path, str]], n_roots: int) -> str:
    for root, real in folders:
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            continue
        return f"{real}/{rel}" if n_roots > 1 else rel
    return path.name


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" (0 <= i < n <= MAX_SHARDS) -> (i, n); anything else is BadInput naming the value."""
    # ASCII digits only: int() also reads "1_0" as 10 and "٢" as 2
    found = re.fullmatch(r"\s*([0-9]{1,12})/([0-9]{1,12})\s*", str(text))  # int() of 5,000 digits raises
    if found is None:
        raise BadInput(f"invalid shard {str(text)[:40]!r}: expected INDEX/COUNT such as 0/4")
    return check_shard(int(found[1]), int(found[2]), text)


def check_shard(i, n, text=None) -> tuple[int, int]:
    """(i, n) when 0 <= i < n <= MAX_SHARDS (integers); else BadInput naming the value."""
    text = f"{i}/{n}" if text is None else text
    if not all(type(v) is int for v in (i, n)):
        raise BadInput(f"invalid shard {text!r}: INDEX and COUNT must be integers")
    if not 0 <= i < n:
        raise BadInput(f"invalid shard {text!r}: need 0 <= INDEX < COUNT")
    if n > MAX_SHARDS:
        raise BadInput(f"invalid shard {text!r}: at most {MAX_SHARDS} shares (each is a journal read at the merge)")
    return i, n


def env_shard() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1) (vaekit.training.launch.launch_env)."""
    rank, world, _ = launch_env()
    if world > MAX_SHARDS:
        raise BadInput(f"WORLD_SIZE {world} is more than {MAX_SHARDS} processes")
    return rank, world


def shard(paths: Sequence, index: int, count: int, batch_size: int) -> list[int]:
    """Positions in `paths` that shard `index` of `count` owns: whole batches, dealt round-robin,
    so each shard's batches are the same slices an unsharded run would score."""
    starts = range(0, len(paths), batch_size)
    return [i for b, s in enumerate(starts) if b % count == index for i in range(s, min(s + batch_size, len(paths)))]


@dataclass
class Batch:
    index: int  # which fixed slice of the file list (batch_size files each); its parts share it
    positions: list[int]  # positions in the full file list of the loaded images
    paths: list[Path]  # the loaded files, in order
    images: np.ndarray  # (B, C, H, W) uint8 at the model's size; with tiles, every file's tiles in turn
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # files of this slice that failed
    tilings: list[Tiling] | None = None  # with tiles: where each file's tiles lie (vaekit.images.tiles)
    part: int = 0  # which part of its slice (a slice over BATCH_PIXELS comes in several, in order)
    last: bool = True  # the slice's last part


def iter_batches(paths: Sequence[Path], size: int, channels: int, batch_size: int = 64, workers: int = 0,
                 positions: Sequence[int] | None = None, skip_batches: set[int] | frozenset = frozenset(),
                 ahead: int = READ_AHEAD, tiles: int = 0, pixels: int | None = None) -> Iterator[Batch]:
    """Decode `paths[positions]` (default: all) in fixed slices of `batch_size` of the FULL list;
    slices in `skip_batches` are not read at all. A slice whose decoded pixels (its tiles' with
    `tiles`) pass `pixels` (None: BATCH_PIXELS) comes in parts, consecutive Batches of its index,
    each holding at most `pixels` or a single file. Memory: a few parts, whatever the count, the
    batch size or the images' shape.
    tiles: each whole image (not its centre square), its shorter side `size`, cut into square tiles
    of this many pixels (a surface model's own size); 0: the centre square of `size`.

    Decoding runs in a background thread up to `ahead` batches in front of the consumer (Pillow
    and torch release the GIL, so it overlaps with scoring); ahead=0 decodes in the caller."""
    batch_size = check_batch_size(batch_size)
    positions = range(len(paths)) if positions is None else (positions if isinstance(positions, Sequence) else list(positions))
    todo = [i for i in positions if i // batch_size not in skip_batches] if skip_batches else positions
    loaded = imageio.iter_load(_Picked(paths, todo), size, channels, workers, crop=not tiles)
    batches = _slices(todo, loaded, batch_size, _Shape(channels, size, tiles, max(1, int(pixels or BATCH_PIXELS))))
    return pipeline.read_ahead(batches, ahead) if ahead > 0 else batches


class _Picked(Sequence[Path]):
    """paths[todo[i]], looked up when read: no copy of a long file list."""

    def __init__(self, paths: Sequence, todo: Sequence[int]):
        self.paths, self.todo = paths, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Path(self.paths[j]) for j in self.todo[i]]
        return Path(self.paths[self.todo[i]])


@dataclass(frozen=True)
class _Shape:
    channels: int
    size: int  # the centre square's side; with tiles, the shorter side images are read at
    tiles: int  # the tile side; 0: no tiles
    pixels: int  # most pixels in one part (at least one file)

    def held(self, x: np.ndarray) -> int:
        """Pixels a decoded image takes in a Batch: its tiles', or its own."""
        return len(tiling(x, self.tiles)) * self.tiles**2 if self.tiles else x.shape[-2] * x.shape[-1]


def _slices(todo, loaded, batch_size, shape: _Shape) -> Iterator[Batch]:
    """The decoded files, slice by slice; a slice in parts of at most shape.pixels (or one file)."""
    current, part, pos, got, bad, held = None, 0, [], [], [], 0
    for i, (path, x, reason) in zip(todo, loaded):
        b = i // batch_size
        n = 0 if x is None else shape.held(x)
        if current is not None and (b != current or (got and held + n > shape.pixels)):
            yield _batch(current, part, pos, got, bad, shape, last=b != current)
            part = 0 if b != current else part + 1
            pos, got, bad, held = [], [], [], 0
        current = b
        if x is None:
            bad.append((path, reason or ""))
        else:
            pos.append(i)
            got.append((path, x))
            held += n
    if current is not None:
        yield _batch(current, part, pos, got, bad, shape, last=True)


def _batch(index, part, pos, got, bad, shape: _Shape, last: bool) -> Batch:
    paths, c, s, t = [p for p, _ in got], shape.channels, shape.size, shape.tiles
    if not t:
        images = np.stack([x for _, x in got]) if got else np.zeros((0, c, s, s), np.uint8)
        return Batch(index, list(pos), paths, images, list(bad), None, part, last)
    tilings = [tiling(x, t) for _, x in got]
    images = np.empty((sum(map(len, tilings)), c, t, t), np.uint8)
    k = 0
    for j, tl in enumerate(tilings):  # each whole image let go once cut: tiles and images are not both held whole
        x, got[j] = got[j][1], None
        for top, left in tl.boxes:
            images[k] = x[:, top : top + t, left : left + t]
            k += 1
    return Batch(index, list(pos), paths, images, list(bad), tilings, part, last)
