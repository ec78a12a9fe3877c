"""A surface model's held-out images as `anomaly-score` reads their files: whole, in square tiles
(vaekit.images.tiles), so that every threshold training stores is about the scores users get.
Used by the reader's calibration (finish_reader), the VAE's (finish) and the fold models (crossfit)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vaekit.training.data import Dataset, gather


def whole_tiles(data: Dataset, i: int, tile: int) -> np.ndarray:
    """Image i as a surface model scores its file (vaekit.images.tiles): its `tile` px square
    tiles (k, C, tile, tile). A file that comes out square at the read size (judged from its
    header), or one that can no longer be read, is cut from its cached pixels."""
    from vaekit.images import ImageReadError, load_image, open_image
    from vaekit.images.tiles import tiling

    size, channels = data.images.shape[-1], data.images.shape[1]
    x = None
    try:
        with open_image(data.paths[i]) as img:
            w, h = img.size
        if max(size, round(max(w, h) * size / min(w, h))) != size:  # not square at the read size
            x = load_image(data.paths[i], size, channels, crop=False)
    except (ImageReadError, OSError, ZeroDivisionError):
        pass
    if x is None:
        x = gather(data.images, np.array([i]))[0]
    return tiling(x, tile).cut(x)


def model_tiles(data: Dataset, idx, tile: int) -> np.ndarray:
    """The cached (centre square) images `idx` as the model sees them: as they are when cached at
    its size, else each cut into its `tile` px tiles (a surface read at a larger size)."""
    return _tiles(gather(data.images, np.asarray(idx)), tile)


def _tiles(images: np.ndarray, tile: int) -> np.ndarray:
    """Square images (N, C, S, S), each cut into its `tile` px tiles (as they are when S is `tile`)."""
    from vaekit.images.tiles import Tiling

    if images.shape[-1] == tile:
        return images
    cut = Tiling(images.shape[-2:], tile)
    return np.concatenate([cut.cut(x) for x in images]) if len(images) else images[:, :, :tile, :tile]


def frame_stats(data: Dataset, tile: int, pixels: int, progress=None) -> dict | None:
    """The frame check's section (vaekit.inference.frame) of every image of `data`, held-out ones
    too: the sharpness range of their tiles as the model scores them, and of their camera
    variants, `pixels` at a time. progress(done, total, phase="frame") counts images."""
    from vaekit.inference.frame import Range

    found, n = Range(), len(data.paths)
    for done, tiles in _frame_chunks(data, n, tile, pixels):
        found.add(tiles, variants=True)
        if progress:
            progress(done, n, phase="frame")
    return found.stats()


def _frame_chunks(data: Dataset, n: int, tile: int, pixels: int) -> Iterator[tuple[int, np.ndarray]]:
    """(images done, their tiles) a chunk at a time: the files read whole as scoring reads them
    (`whole_tiles`: a file not square among square ones is learned from its centre square, yet
    scored whole, and its other tiles must be inside the range too, as its held-out threshold
    scores are), or the whole squares a surface learning from its images whole holds (vaekit.training.wide)."""
    if data.wide is None:
        done = 0
        for tiles, counts in iter_whole_tiles(data, np.arange(n), pixels, tile):
            done += len(counts)
            yield done, tiles
        return
    images, ends = data.wide.tiles, data.wide.first[1:]  # image i's squares end before row ends[i]
    step = max(1, pixels // (images.shape[1] * images.shape[-1] ** 2))
    for i in range(0, len(images), step):
        yield int(np.searchsorted(ends, i + step, "right")), _tiles(np.asarray(images[i : i + step]), tile)


def iter_whole_tiles(data: Dataset, idx, pixels: int, tile: int) -> Iterator[tuple[np.ndarray, list[int]]]:
    """The `tile` px tiles of images `idx` read whole (`whole_tiles`), in chunks of about `pixels`
    (at least one image each): (tiles (T, C, tile, tile), how many tiles each image of the chunk has)."""
    most = max(1, pixels // tile**2)
    pending: list[np.ndarray] = []
    for i in idx:
        pending.append(whole_tiles(data, i, tile))
        if sum(map(len, pending)) >= most:
            yield np.concatenate(pending), [len(t) for t in pending]
            pending = []
    if pending:
        yield np.concatenate(pending), [len(t) for t in pending]


def per_image_max(values: np.ndarray, counts: list[int]) -> np.ndarray:
    """(T,) values of consecutive tiles -> (N,) the largest of each image's `counts` tiles (NaN stays NaN)."""
    cuts = np.cumsum([0, *counts])
    return np.array([np.max(values[a:b]) for a, b in zip(cuts[:-1], cuts[1:])])
