"""The frame check: a surface model's guard against frames that are wrong everywhere.

A surface's default score, the defect readers' (vaekit.reader), looks for something out of place
in part of an image. A frame wrong everywhere, a blank or black one, one out of focus, a
photograph of another surface, holds nothing out of place against its own surroundings and can
score as normal (docs/detection.md, "Frames wrong everywhere"). The check compares one number of
each tile with the training images' tiles: its sharpness, the mean absolute difference between
neighbouring pixels in grey levels. A tile is wrong everywhere when its sharpness lies beyond
the training tiles' range by more than a factor FACTOR and by more than MARGIN grey levels
(the margin keeps training tiles that are nearly flat, a plain background, from turning
sensor noise into an alarm). Such a tile scores 1, the largest defect probability, over its
whole map. The range is fitted on every normal image of the run, held-out ones too, so that no
image behind the stored threshold is flagged by it. Numpy only: both engines run it.
"""

from __future__ import annotations

import numpy as np

from vaekit.fileio import finite_number

FACTOR = 2.0  # how far beyond the training range, as a ratio (chosen: docs/detection.md, "The frame check")
MARGIN = 1.0  # ... and at least this many grey levels beyond it


def sharpness(x: np.ndarray) -> np.ndarray:
    """Each image's mean absolute difference between neighbouring pixels, across and down, over
    its channels, in grey levels: uint8 (N, C, H, W) -> (N,). 0 for a flat frame."""
    x = np.asarray(x, np.int16)  # uint8 differences would wrap around
    n = len(x)
    across = np.abs(np.diff(x, axis=3)).reshape(n, -1).mean(1) if x.shape[3] > 1 else np.zeros(n)
    down = np.abs(np.diff(x, axis=2)).reshape(n, -1).mean(1) if x.shape[2] > 1 else np.zeros(n)
    return (across + down) / 2.0


class Range:
    """The training tiles' sharpness range, grown a chunk at a time (`add`), then `stats`."""

    def __init__(self) -> None:
        self.lo, self.hi = np.inf, -np.inf

    def add(self, tiles: np.ndarray) -> None:
        if len(tiles):
            s = sharpness(tiles)
            self.lo, self.hi = min(self.lo, float(s.min())), max(self.hi, float(s.max()))

    def stats(self) -> dict | None:
        """The section stored in the calibration ("frame"); None when no tile was seen."""
        if self.lo > self.hi:
            return None
        return {"sharpness": [self.lo, self.hi], "factor": FACTOR, "margin": MARGIN}


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
