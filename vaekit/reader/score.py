"""The reader's score maths, in numpy (no torch): reading an image of any size in tiles, and from
the network's logits to the pixel map and the image score. Both engines use it (the torch `read`
and an exported network run by onnxruntime), so they cannot drift.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

READ_TILE = 1024  # the largest window the network reads at once; a larger image is read in windows
READ_OVERLAP = 128  # px two windows share: a trained reader's seams move a probability by <= 0.05 (0.12 at 64 px)
READ_PIXELS = 1 << 20  # pixels of one network call (so many images a call): what bounds memory
ALIGN = 16  # the reader's grid: its stem (2) times 2 ** depth (3), ReaderConfig's defaults


def windows(n: int, tile: int) -> tuple[int, list[int]]:
    """(window side, window starts) along one side of n px: the whole side when it fits in `tile`,
    else the fewest windows of at most `tile` px that overlap by at least READ_OVERLAP (a quarter
    of a smaller tile). Sides and starts are multiples of ALIGN, the net's grid (its pixel
    unshuffle and poolings), except the last start (n - side): a window off the grid would pool
    other pixels together than the whole image does, and differ everywhere, not only at its edges."""
    if n <= tile:
        return n, [0]
    if tile < 4:
        raise ValueError(f"a reading window of {tile} px is too small to overlap")
    overlap = min(READ_OVERLAP, tile // 4)
    grid = ALIGN
    while grid > 1 and 4 * grid > tile:  # a small tile (a test's): the largest power of two a quarter of it holds
        grid //= 2
    k = -(-(n - overlap) // (tile - overlap))
    while True:  # the fewest windows whose starts, moved down to the grid, still overlap enough
        for side in range(grid * -(-(n + (k - 1) * overlap) // (grid * k)), tile + 1, grid):
            stride = (n - side) / (k - 1)
            starts = [grid * int(i * stride // grid) for i in range(k - 1)] + [n - side]
            if all(side - (b - a) >= overlap for a, b in zip(starts, starts[1:])):
                return side, starts
        k += 1


def read_tiled(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile: int = READ_TILE) -> np.ndarray:
    """The network's logits (B, H, W) of float images x (B, C, H, W) of any size: whole where a
    side fits in `tile`, else in windows (`windows`) that overlap by more than the net's context,
    each window's logits blended with a tent weight (highest in the middle), so window borders
    count little and leave no seam. `run` maps (b, C, h, w) float32 to (b, h, w) logits and is
    given at most READ_PIXELS pixels at a time (as many images as fit, at least one), so memory is
    bounded whatever the batch; the windows depend on the image's size alone, never on the batch.
    (Before 2026-12-06 windows were 256 px overlapping by 64: a 1024 px image was read as 25
    windows, 1.6 times its pixels, in 1.8 times the time of one 1024 px window.)"""
    b, _, h, w = x.shape
    (th, ys), (tw, xs) = windows(h, tile), windows(w, tile)
    per_call = max(1, READ_PIXELS // (th * tw))

    def logits(y0: int, x0: int) -> np.ndarray:
        return np.concatenate([np.asarray(run(np.ascontiguousarray(x[i:i + per_call, :, y0:y0 + th, x0:x0 + tw],
                                                                    dtype=np.float32)), dtype=np.float32)
                               for i in range(0, b, per_call)]) if b else np.zeros((0, th, tw), np.float32)

    if len(ys) == len(xs) == 1:
        return logits(0, 0)
    ramp = lambda t: np.minimum(np.arange(t) + 1.0, t - np.arange(t, dtype=np.float64))  # noqa: E731
    weight = ramp(th)[:, None] * ramp(tw)[None, :]
    out, total = np.zeros((b, h, w)), np.zeros((h, w))
    for y0 in ys:
        for x0 in xs:
            out[:, y0:y0 + th, x0:x0 + tw] += logits(y0, x0).astype(np.float64) * weight
            total[y0:y0 + th, x0:x0 + tw] += weight
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
