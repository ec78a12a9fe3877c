"""The reader's score maths, in numpy (no torch): from the network's logits to the pixel map and
the image score. Both engines use it (the torch `read` and an exported network run by
onnxruntime), so they cannot drift.
"""

from __future__ import annotations

import numpy as np


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
    p = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    scores = box_mean(p, smooth).reshape(len(p), -1).max(1)
    return scores.astype(np.float32), box_mean(p, map_smooth).astype(np.float32)
