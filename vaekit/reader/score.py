"""The reader's score maths, in numpy (no torch): reading an image of any size in tiles, and from
the network's logits to the pixel map and the image score. Both engines use it (the torch `read`
and an exported network run by onnxruntime), so they cannot drift.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

READ_TILE = 256  # images larger than this are read in overlapping tiles: memory bounded by the tile


def read_tiled(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile: int = READ_TILE) -> np.ndarray:
    """The network's logits (B, H, W) of float images x (B, C, H, W) of any size: whole when neither
    side exceeds `tile`, else in tile x tile windows overlapping by a quarter tile, each window's
    logits blended with a tent weight (highest in the middle), so window borders count little.
    `run` maps (b, C, h, w) float32 to (b, h, w) logits. The net sees ~100 px of context, so a
    quarter-tile overlap leaves no seams; memory is bounded by the tile."""
    b, _, h, w = x.shape
    if max(h, w) <= tile:
        return np.asarray(run(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)
    t = min(tile, h, w)
    overlap = t // 4

    def starts(n: int) -> list[int]:
        s = list(range(0, n - t + 1, t - overlap))
        return s if s[-1] == n - t else s + [n - t]

    ramp = np.minimum(np.arange(t) + 1.0, t - np.arange(t, dtype=np.float64))
    weight = ramp[:, None] * ramp[None, :]
    out, total = np.zeros((b, h, w)), np.zeros((h, w))
    for y0 in starts(h):
        for x0 in starts(w):
            window = np.ascontiguousarray(x[:, :, y0:y0 + t, x0:x0 + t], dtype=np.float32)
            out[:, y0:y0 + t, x0:x0 + t] += np.asarray(run(window), dtype=np.float64) * weight
            total[y0:y0 + t, x0:x0 + t] += weight
    return (out / total).astype(np.float32)


def box_mean(m: np.ndarray, w: int) -> np.ndarray:
    """Mean over the w x w window around each pixel, counting only pixels inside the image:
    (N, H, W) -> (N, H, W). (At the border the window is clipped, not padded: an edge pixel is
    not diluted by invented values.) Odd or even w; w = 1 is the map itself."""
    m = np.asarray(m, dtype=np.float64)
    if w <= 1:
        return m
    lo, hi = w // 2, w - 1 - w // 2  # pixels before / after the centre, as torch's avg_pool with padding w // 2

    def sums(a: np.ndarray) -> np.ndarray:
        c = np.pad(a, ((0, 0), (lo + 1, hi), (lo + 1, hi))).cumsum(1).cumsum(2)
        h, wd = a.shape[1:]
        return c[:, w:w + h, w:w + wd] - c[:, :h, w:w + wd] - c[:, w:w + h, :wd] + c[:, :h, :wd]

    return sums(m) / sums(np.ones((1, *m.shape[1:])))


def maps_and_scores(logits: np.ndarray, smooth: int, map_smooth: int) -> tuple[np.ndarray, np.ndarray]:
    """(image scores (N,), defect maps (N, H, W)) from the network's logits (N, H, W): the map is
    the defect probability averaged over map_smooth px, the score the largest mean over smooth px
    (DRAEM's mean-filtered maximum)."""
    p = _probability(logits)
    return _largest_mean(p, smooth), box_mean(p, map_smooth).astype(np.float32)


def image_scores(logits: np.ndarray, smooth: int) -> np.ndarray:
    """maps_and_scores's image scores (N,) alone, with no map (what calibration needs)."""
    return _largest_mean(_probability(logits), smooth)


def _probability(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def _largest_mean(p: np.ndarray, smooth: int) -> np.ndarray:
    return box_mean(p, smooth).reshape(len(p), -1).max(1).astype(np.float32)
