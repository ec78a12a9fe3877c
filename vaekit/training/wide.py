"""A surface model learns from the whole of images that are not square.

The pixel cache holds each image's centre square, which is what an object model sees. A surface
model reads each whole image in square tiles (vaekit.images.tiles), so it must also learn from
the whole of it: of a 2:1 photo of a part, the centre square holds the inner half of each end and
never the outer half, which the model then scores all the same (benchmarks/wide_surfaces.py).
When enough images are not square (vaekit.training.coverage.is_wide), a second cache entry holds
each training image whole, cut into the fewest squares that cover it (vaekit.training.cache,
whole=True), and the VAE's training crops and the defect reader's training images are drawn from
those squares instead. Everything else (the layout's statistics, validation, the thresholds,
which come from the held-out files read whole) is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaekit.errors import CannotWrite


@dataclass(frozen=True)
class WideImages:
    """The square tiles of every image of a Dataset, read whole: image i's are rows
    first[i] .. first[i + 1] - 1 of `tiles`."""

    tiles: np.ndarray  # (T, C, S, S) uint8, usually a read-only memmap of the pixel cache
    first: np.ndarray  # (N + 1,) int64

    def pick(self, idx: np.ndarray, places: np.ndarray, n_global: int, seed) -> np.ndarray:
        """One tile of each image `idx`, drawn by its place in the global batch of n_global images
        (the same draw on any number of ranks, and after a resume); ascending `idx` gives
        ascending rows."""
        idx = np.asarray(idx, np.int64)
        u = np.random.default_rng(seed).random(max(n_global, 1))[np.asarray(places, np.int64)]
        counts = self.first[idx + 1] - self.first[idx]
        return self.first[idx] + np.minimum((u * counts).astype(np.int64), counts - 1)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Every tile of the images `idx`, in order."""
        parts = [np.arange(self.first[i], self.first[i + 1]) for i in np.asarray(idx, np.int64)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def load_wide(data, size: int, cache_dir=None, workers: int = 0, progress=None) -> WideImages | None:
    """The whole-image tiles of `data`'s images at the read size `size`, when they are wide enough
    to matter (vaekit.training.coverage.is_wide); else None, and None also when the cache cannot
    hold them (its disk full or not writable) or other files decode than did a moment ago (the
    centre squares then train, as before, and the plan's note says so). A file too elongated to be
    read whole gives its centre square as its one square (vaekit.training.cache, whole=True)."""
    from vaekit.training import cache
    from vaekit.training.coverage import is_wide, kept_shares
    from vaekit.training.data import decoding

    shares = kept_shares(data.paths)  # headers of up to 512 files
    if not is_wide(shares):
        return None
    rows = float(np.mean(np.ceil(1 / np.maximum(shares, 1e-3) - 1e-9)))  # the squares of an image: about 1 / share
    try:
        cached = cache.load_cached(data.paths, size, int(data.images.shape[1]), cache_dir,
                                   decoding(progress, whole=True), workers, whole=True, rows_per_image=rows)
    except (CannotWrite, OSError):
        return None
    if cached.counts is None or [str(p) for p in cached.paths] != [str(p) for p in data.paths]:
        return None
    return WideImages(cached.images, np.concatenate([[0], np.cumsum(cached.counts)]).astype(np.int64))
