"""Whole images of any shape through a surface model of one square size.

A surface model (a latent grid with its defect reader) is trained on crops and reads an image
of its size, `size` x `size`. A photo of another shape is resized so its shorter side is `size`
(never cropped: vaekit.images.read.load_image with crop=False), cut into the fewest square
tiles that cover it, evenly spaced and overlapping where the length is not a multiple of
`size`, scored tile by tile, and put back together: the image's score is its most anomalous
tile's, its map the tiles' maps averaged where they overlap (vaekit.anomaly.score).
A square image of the model's size is one tile, scored exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


def starts(length: int, size: int) -> list[int]:
    """Offsets of the fewest `size`-long windows covering 0..length, evenly spaced."""
    n = -(-length // size)
    if n <= 1:
        return [0]
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class Tiling:
    """Where the tiles of one image lie: (top, left) of each `size` x `size` tile of an
    image of `shape` (H, W), both sides >= size."""

    shape: tuple[int, int]
    size: int

    @cached_property
    def boxes(self) -> list[tuple[int, int]]:
        h, w = self.shape
        return [(t, left) for t in starts(h, self.size) for left in starts(w, self.size)]

    def __len__(self) -> int:
        return len(self.boxes)

    def cut(self, x: np.ndarray) -> np.ndarray:
        """(C, H, W) -> (k, C, size, size)."""
        s = self.size
        return np.stack([x[:, t : t + s, left : left + s] for t, left in self.boxes])

    def paste(self, tiles: np.ndarray) -> np.ndarray:
        """(k, C, size, size) -> (C, H, W): the tiles of one image back in place."""
        s = self.size
        out = np.empty((tiles.shape[1], *self.shape), tiles.dtype)
        for (t, left), tile in zip(self.boxes, tiles):
            out[:, t : t + s, left : left + s] = tile
        return out

    def average(self, maps: np.ndarray) -> np.ndarray:
        """(k, size, size) -> (H, W): each pixel the mean of the tiles that cover it."""
        s = self.size
        total = np.zeros(self.shape, np.float64)
        count = np.zeros(self.shape, np.int32)
        for (t, left), m in zip(self.boxes, maps):
            total[t : t + s, left : left + s] += m
            count[t : t + s, left : left + s] += 1
        return (total / count).astype(maps.dtype)

    def area_share(self) -> float:
        """The image's pixels over its tiles' pixels: scales a sum over the tiles (nats) to
        one over the image (exact where tiles do not overlap)."""
        h, w = self.shape
        return h * w / (len(self) * self.size**2)


def tiling(x: np.ndarray, size: int) -> Tiling:
    """The tiling of a (C, H, W) image whose shorter side is `size`."""
    h, w = x.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"a {w}x{h} image has a side shorter than the tile size {size}")
    return Tiling((int(h), int(w)), size)


def stacked(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """Per-image arrays as one array where they all have the same shape, else the list as it is
    (whole images of several shapes)."""
    return np.stack(arrays) if len({a.shape for a in arrays}) == 1 else arrays
