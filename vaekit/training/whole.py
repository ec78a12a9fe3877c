"""A surface model's held-out images as `anomaly-score` reads their files: whole, in square tiles
(vaekit.images.tiles), so that every threshold training stores is about the scores users get.
Used by the reader's calibration (finish_reader), the VAE's (finish) and the fold models (crossfit)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vaekit.training.data import Dataset, gather


def whole_tiles(data: Dataset, i: int) -> np.ndarray:
    """Image i as a surface model scores its file (vaekit.images.tiles): its square tiles
    (k, C, S, S). A file that comes out square (judged from its header), or one that can no
    longer be read, is its cached pixels, one tile (what was trained on)."""
    from vaekit.images import ImageReadError, load_image, open_image
    from vaekit.images.tiles import tiling

    size, channels = data.images.shape[-1], data.images.shape[1]
    try:
        with open_image(data.paths[i]) as img:
            w, h = img.size
        if max(size, round(max(w, h) * size / min(w, h))) == size:  # square at the model's size
            return gather(data.images, np.array([i]))
        x = load_image(data.paths[i], size, channels, crop=False)
    except (ImageReadError, OSError, ZeroDivisionError):
        return gather(data.images, np.array([i]))
    return tiling(x, size).cut(x)


def iter_whole_tiles(data: Dataset, idx, pixels: int) -> Iterator[tuple[np.ndarray, list[int]]]:
    """The tiles of images `idx` read whole (`whole_tiles`), in chunks of about `pixels` (at least
    one image each): (tiles (T, C, S, S), how many tiles each image of the chunk has)."""
    most = max(1, pixels // int(np.prod(data.images.shape[2:])))
    pending: list[np.ndarray] = []
    for i in idx:
        pending.append(whole_tiles(data, i))
        if sum(map(len, pending)) >= most:
            yield np.concatenate(pending), [len(t) for t in pending]
            pending = []
    if pending:
        yield np.concatenate(pending), [len(t) for t in pending]


def per_image_max(values: np.ndarray, counts: list[int]) -> np.ndarray:
    """(T,) values of consecutive tiles -> (N,) the largest of each image's `counts` tiles (NaN stays NaN)."""
    cuts = np.cumsum([0, *counts])
    return np.array([np.max(values[a:b]) for a, b in zip(cuts[:-1], cuts[1:])])
