"""Pixel AUROC over any number of maps in fixed memory: counts in buckets, not every pixel kept.

`evaluate` with masks used to keep every map (float32) and every mask until the end, then sort
all pixels at once: ~40 bytes a pixel, 10 GB for 60 test images of 2048 px. `PixelRoc` counts
each map's pixels into 2**20 buckets (16 MB) as the map arrives and forgets the map. A float32's
bits, made order-preserving as an unsigned integer, keep their order; the bucket is their top 20
bits (sign, exponent and 11 bits of mantissa), so two values share a bucket only when they agree
to 1 part in 2,048. A normal and an anomalous pixel in one bucket count as a tie (half), as
equal scores do in the exact AUROC; that is the only difference from it.
"""

from __future__ import annotations

import numpy as np

from vaekit.errors import BadInput

BITS = 20  # buckets = 2**BITS


def sortable(values: np.ndarray) -> np.ndarray:
    """float32 values -> uint32 keys in the same order (negative floats reversed under the sign)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))


class PixelRoc:
    """Accumulates (map, mask) pairs; `auroc()` is the AUROC of all their pixels."""

    def __init__(self) -> None:
        self.anomalous = np.zeros(1 << BITS, np.int64)
        self.normal = np.zeros(1 << BITS, np.int64)
        self.masked = 0  # maps added with a mask

    def add(self, values: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Count one map's pixels; `mask` (the map's shape, True where anomalous), None: all normal."""
        # + 0: -0.0 becomes 0.0, which it equals (a tie in the exact AUROC), not a bucket below it
        values = np.asarray(values, dtype=np.float32).ravel() + np.float32(0)
        if np.isnan(values).any():
            # a broken model, as a non-finite image score is (image_metrics): the user's to fix, exit 2
            raise BadInput("a pixel map holds NaN (a broken model?): scores must be finite")
        key = sortable(values) >> np.uint32(32 - BITS)
        if mask is None:
            self.normal += np.bincount(key, minlength=1 << BITS)
            return
        mask = np.asarray(mask, dtype=bool).ravel()
        self.masked += 1
        self.anomalous += np.bincount(key[mask], minlength=1 << BITS)
        self.normal += np.bincount(key[~mask], minlength=1 << BITS)

    def counts(self) -> tuple[int, int]:
        """(anomalous pixels, normal pixels) counted so far."""
        return int(self.anomalous.sum()), int(self.normal.sum())

    def auroc(self) -> float:
        """P(an anomalous pixel scores above a normal one), ties (one bucket) counted half."""
        pos, neg = self.counts()
        if not pos or not neg:
            raise ValueError("AUROC needs anomalous and normal pixels")
        below = np.cumsum(self.normal, dtype=np.float64) - self.normal
        wins = float(np.dot(self.anomalous.astype(np.float64), below + 0.5 * self.normal))
        return wins / (float(pos) * float(neg))
