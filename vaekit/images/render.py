"""Rendering arrays as pictures: PNG files, grids of images, heat maps over an image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from vaekit.errors import BadInput
from vaekit.fileio import atomic_write_bytes
from vaekit.images.read import to_uint8

def _hwc(x: np.ndarray) -> np.ndarray:
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise BadInput(f"expected a (C, H, W) array with C 1 or 3, got shape {x.shape}")
    x = x if x.dtype == np.uint8 else to_uint8(x)
    return x[0] if x.shape[0] == 1 else np.ascontiguousarray(x.transpose(1, 2, 0))


def png_bytes(x) -> bytes:
    """(C, H, W) uint8, or float in [0, 1], or a Pillow image, as the bytes of a PNG file (what
    save_png writes)."""
    buf = io.BytesIO()
    (x if isinstance(x, Image.Image) else Image.fromarray(_hwc(x))).save(buf, format="PNG")
    return buf.getvalue()


def save_png(x, path: Path, replace: bool = True, own: bool = False) -> str:
    """Save (C, H, W) uint8, or float in [0, 1], or a Pillow image, as a PNG; atomic, parent folders created;
    replace=False: not over a file at `path` (OutputExists), unless `own` and that file holds the
    very bytes this PNG has: a resumed job's own, written before its stop, kept as it is.
    Returns the sha256 of the PNG's bytes (what a streaming job's journal pins its outputs by)."""
    import hashlib

    data = png_bytes(x)
    atomic_write_bytes(Path(path), data, replace, keep_same=own)
    return hashlib.sha256(data).hexdigest()


def make_grid(xs: np.ndarray, ncol: int = 8, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) -> one (C, H', W') image, `ncol` per row, white gaps; dtype kept."""
    if xs.ndim != 4 or len(xs) == 0:
        raise BadInput(f"expected a non-empty (N, C, H, W) array, got shape {xs.shape}")
    if ncol < 1 or pad < 0:
        raise BadInput(f"invalid ncol {ncol!r} or pad {pad!r}: expected ncol >= 1, pad >= 0")
    n, c, h, w = xs.shape
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    white = 255 if xs.dtype == np.uint8 else 1.0
    grid = np.full((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), white, xs.dtype)
    for i, x in enumerate(xs):
        top, left = pad + (i // ncol) * (h + pad), pad + (i % ncol) * (w + pad)
        grid[:, top : top + h, left : left + w] = x
    return grid


# Nine stops of matplotlib's "inferno", interpolated linearly: perceptually ordered, dark = cold.
_INFERNO = np.array(
    [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
     [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]], np.float64,
)  # fmt: skip


OVERLAY_RUN = 1 << 18  # pixels of a heat map coloured at a time


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend `heat` (H, W) as an inferno colour map over `image` (C, H, W) uint8 -> (3, H, W) uint8.

    `heat` is scaled per image to 0..max (negative and non-finite values count as 0);
    `alpha` is the weight of the colour map, 0 showing only the image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise BadInput(f"invalid alpha {alpha!r}: expected a number in [0, 1]")
    if heat.shape != image.shape[1:]:
        raise BadInput(f"heat shape {heat.shape} does not match image shape {image.shape}")
    c, hh, ww = image.shape
    pixels, heat = np.ascontiguousarray(image).reshape(c, -1), heat.reshape(-1)
    # in runs of OVERLAY_RUN pixels: the float64 maths of a whole map took ~150 bytes a pixel (a
    # surface's heat map of a 1 x 60,000 strip is 15 M pixels); the same maths, run by run
    top = max((float(_clipped(heat[i:i + OVERLAY_RUN]).max(initial=0.0)) for i in range(0, heat.size, OVERLAY_RUN)),
              default=0.0)
    stops = np.linspace(0, 1, len(_INFERNO))
    out = np.empty((3, heat.size), np.uint8)
    for i in range(0, heat.size, OVERLAY_RUN):
        h = _clipped(heat[i:i + OVERLAY_RUN])
        h = h / top if top > 0 else h  # an all-zero map stays zero instead of dividing by 0
        base = pixels[:, i:i + OVERLAY_RUN].astype(np.float64)
        base = np.repeat(base, 3, axis=0) if c == 1 else base
        color = np.stack([np.interp(h, stops, _INFERNO[:, k]) for k in range(3)])
        out[:, i:i + OVERLAY_RUN] = np.rint((1 - alpha) * base + alpha * color).astype(np.uint8)
    return out.reshape(3, hh, ww)


def _clipped(heat: np.ndarray) -> np.ndarray:
    """A heat map's values as float64, negative and non-finite ones 0."""
    return np.clip(np.nan_to_num(heat.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0, None)
