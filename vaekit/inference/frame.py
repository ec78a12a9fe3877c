"""The frame check: a surface model's guard against frames that are wrong everywhere.

A surface's default score, the defect readers' (vaekit.reader), looks for something out of place
in part of an image. A frame wrong everywhere, a blank or black one, one far out of focus, noise,
a photograph of another surface, holds nothing out of place against its own surroundings and
can score as normal (docs/detection.md, "Frames wrong everywhere"). The check compares one number
of each tile with the training images' tiles: its sharpness, the mean absolute difference
between neighbouring pixels in grey levels.

The range it is compared with is not the training tiles' alone but that of what a camera could
make of them (`camera_variants`): sensor noise, a little blur, 2x2 binning, a median filter,
sharpening, another gain or black level. Sharpness measures the finest scale, where such changes
act most (on a smooth surface sensor noise doubles it; on a noisy one binning halves it), and a
normal image taken with another camera setting is not a wrong frame. A tile is wrong everywhere
when its sharpness lies beyond that range by more than a factor FACTOR and by more than MARGIN
grey levels. Such a tile scores 1, the largest defect probability, over its whole map. The range
is fitted on every normal image of the run, held-out ones too, so that no image behind the
stored threshold is flagged by it. Numpy only: both engines run it.
"""

from __future__ import annotations

import numpy as np

from vaekit.fileio import finite_number

FACTOR = 2.0  # how far beyond the training range, as a ratio (chosen: docs/detection.md, "The frame check")
MARGIN = 0.25  # ... and at least this many grey levels beyond it (two flat tiles differ by nothing)
# what a score of 1 means, said under a scoring job's table (`anomaly-score`, the web app's Detect tab)
SCORE_ONE = ("a defect score of exactly 1 is the frame check's (the frame's sharpness lies far outside the training "
             "images': blank, out of focus, noise or another surface; docs/detection.md), or a defect the readers "
             "are certain of")
VARIANT_VALUES = 1 << 20  # pixel values a time whose camera variants are made (tens of MB of float copies;
# a larger tile alone: a few float copies of it, 12 MB each for 1024 x 1024 RGB)
UNCLIPPED = 0.05  # a camera variant leaving less of a tile than this off 0 and 255 (the tile more) is not counted


def sharpness(x: np.ndarray) -> np.ndarray:
    """Each image's mean absolute difference between neighbouring pixels, across and down, over
    its channels, in grey levels: uint8 (N, C, H, W) -> (N,). 0 for a flat frame."""
    out = np.zeros(len(x))
    for i, one in enumerate(x):  # an image at a time: its int16 copies stay a few times its size
        one = np.asarray(one, np.int16)  # uint8 differences would wrap around
        across = np.abs(np.diff(one, axis=2)).mean() if one.shape[2] > 1 else 0.0
        down = np.abs(np.diff(one, axis=1)).mean() if one.shape[1] > 1 else 0.0
        out[i] = (across + down) / 2.0
    return out


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of float images (N, C, H, W), separable, edges repeated."""
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (2, 3):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        xp, n = np.pad(x, pad, mode="edge"), x.shape[axis]
        x = sum(w * np.take(xp, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return x


def _median3(x: np.ndarray) -> np.ndarray:
    """A 3x3 median filter of float images (N, C, H, W), edges repeated, in bands of rows that hold
    at most VARIANT_VALUES values (its nine shifted copies are the largest thing the variants hold)."""
    h, w = x.shape[2:]
    xp, out = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)], mode="edge"), np.empty_like(x)
    rows = max(1, VARIANT_VALUES // max(1, x.shape[0] * x.shape[1] * w))
    for r in range(0, h, rows):
        e = min(h, r + rows)
        nine = np.stack([xp[:, :, r + i : e + i, j : j + w] for i in range(3) for j in range(3)])
        out[:, :, r:e] = np.partition(nine, 4, axis=0)[4]  # the median of nine, twice as fast as np.median
    return out


def _binned(x: np.ndarray) -> np.ndarray:
    """2x2 binning shown at the original size (each bin's mean repeated): a camera's binned mode."""
    h, w = x.shape[2:]
    hh, ww = h - h % 2, w - w % 2
    if hh == 0 or ww == 0:
        return x
    y = x.copy()
    b = x[:, :, :hh, :ww].reshape(*x.shape[:2], hh // 2, 2, ww // 2, 2).mean((3, 5))
    y[:, :, :hh, :ww] = b.repeat(2, axis=2).repeat(2, axis=3)
    return y


def camera_variants(tiles: np.ndarray, seed: int = 0):
    """What a camera could make of normal uint8 tiles (N, C, H, W), one uint8 array at a time:
    the tiles themselves, with sensor noise (sd 3 grey levels), a Gaussian blur of sd 1 px, 2x2
    binning, a 3x3 median filter, sharpening (an unsharp mask of sd 2 px at 150%), gain 0.7 and
    1.4, and black level -20 and +20 grey levels (clipped as a sensor clips)."""
    x = tiles.astype(np.float32)
    yield tiles
    for f in (lambda v: v + np.random.default_rng(seed).normal(0, 3, v.shape).astype(np.float32),
              lambda v: _blur(v, 1.0), _binned, _median3, lambda v: v + 1.5 * (v - _blur(v, 2.0)),
              lambda v: v * 0.7, lambda v: v * 1.4, lambda v: v - 20, lambda v: v + 20):
        yield np.clip(np.rint(f(x)), 0, 255).astype(np.uint8)


def _unclipped(x: np.ndarray) -> np.ndarray:
    """The share of each image's pixel values (uint8 (N, C, H, W)) off 0 and 255: (N,)."""
    return ((x > 0) & (x < 255)).reshape(len(x), -1).mean(1)


class Range:
    """The sharpness range of normal tiles, grown a chunk at a time (`add`), then `stats`."""

    def __init__(self) -> None:
        self.lo, self.hi = np.inf, -np.inf

    def add(self, tiles: np.ndarray, variants: bool = False) -> None:
        """Grow the range by `tiles` (uint8 (N, C, H, W)); with `variants`, by their `camera_variants`
        too, VARIANT_VALUES at a time (the median filter holds nine float copies of what it filters)."""
        step = max(1, VARIANT_VALUES // max(1, int(np.prod(tiles.shape[1:])))) if variants else max(1, len(tiles))
        for i in range(0, len(tiles), step):
            chunk = tiles[i : i + step]
            had = _unclipped(chunk) >= UNCLIPPED if variants else None
            for x in camera_variants(chunk) if variants else [chunk]:
                s = sharpness(x)
                if x is not chunk:  # a gain or black level that leaves a tile nearly all 0 or 255 (a bright surface
                    # under gain 1.4, a dark one under black level -20) makes a blank frame, the very thing the
                    # check is for, not a camera's setting: its sharpness (near 0) switched the low side off
                    s = s[~(had & (_unclipped(x) < UNCLIPPED))]
                if len(s):
                    self.lo, self.hi = min(self.lo, float(s.min())), max(self.hi, float(s.max()))

    def stats(self) -> dict | None:
        """The section stored in the calibration ("frame"); None when no tile was seen."""
        if self.lo > self.hi:
            return None
        return {"sharpness": [self.lo, self.hi], "factor": FACTOR, "margin": MARGIN}


def grown(stats: dict, batches, variants: bool = False) -> dict:
    """A stored section with its range grown to hold the sharpness of every image of `batches`
    (uint8 (N, C, H, W) arrays, tiles of the model's size), and of their camera variants with
    `variants` (as training fits it; new normal images, real ones, count as they are)."""
    found = Range()
    found.lo, found.hi = (float(v) for v in stats["sharpness"])
    for tiles in batches:
        found.add(tiles, variants)
    return {**stats, "sharpness": [found.lo, found.hi]}


def outside(x: np.ndarray, stats: dict) -> np.ndarray:
    """Which images (uint8 (N, C, H, W), tiles of the model's size) are wrong everywhere: their
    sharpness beyond the stored range by the stored factor and margin. bool (N,)."""
    (lo, hi), factor, margin = stats["sharpness"], stats["factor"], stats["margin"]
    s = sharpness(x)
    return (s < min(lo / factor, lo - margin)) | (s > max(hi * factor, hi + margin))


def checked(calibration, x: np.ndarray, scores: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The defect reader's scores (N,) and maps (N, H, W) of uint8 images `x`, with a frame wrong
    everywhere at 1, map and all. A model's `calibration` (vaekit.inference.atypicality) from before
    the check holds no range: its scores are left as they are."""
    stats = None if calibration is None else calibration.stats.get("frame")
    if stats is None:
        return scores, maps
    off = outside(x, stats)
    if off.any():
        scores, maps = np.where(off, 1.0, scores), np.array(maps)
        maps[off] = 1.0
    return scores, maps


def damage(stats) -> str | None:
    """What is wrong with a stored "frame" section (a short phrase), or None when it is sound."""
    if not isinstance(stats, dict):
        return "frame"
    rng = stats.get("sharpness")
    if not (isinstance(rng, list) and len(rng) == 2 and all(finite_number(v) and v >= 0 for v in rng) and rng[0] <= rng[1]):
        return "frame.sharpness"
    if not (finite_number(stats.get("factor")) and stats["factor"] >= 1):
        return "frame.factor"
    if not (finite_number(stats.get("margin")) and stats["margin"] >= 0):
        return "frame.margin"
    return None
