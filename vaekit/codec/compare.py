"""What vaekit's codec is measured against: one image as its own Pillow file (JPEG, WebP, AVIF),
and the WebP file whose size is closest to a given number of bytes.

Each image is a separate file, its header included, because that is what a user stores
(benchmarks/rate_distortion.py, the web app's Compress tab). Numpy and Pillow only: no torch.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vaekit.errors import BadInput

WEBP_QUALITIES = range(0, 101)  # Pillow's WebP quality: 0 (smallest) .. 100
# WebP's size grows with quality but not strictly (small images wobble by a few bytes), so
# the search bisects for the crossing and then looks this many qualities either side of it.
WINDOW = 4


@dataclass(frozen=True)
class PillowFile:
    """One image written as one file by Pillow, and what it decodes to."""

    fmt: str  # "WebP", "JPEG", "AVIF", ...
    quality: int
    bytes: int  # the whole file, header included
    decoded: np.ndarray  # (C, H, W) uint8, what a viewer shows
    psnr: float  # dB against the source image (+inf when exact)


def pillow_file(image: np.ndarray, fmt: str, quality: int, **options) -> tuple[int, np.ndarray]:
    """Write one (C, H, W) uint8 image (C = 1 or 3) as a `fmt` file at `quality` in memory:
    (the file's bytes, the decoded image (C, H, W) uint8). `options` go to Pillow's save."""
    image = _check_image(image)
    buf = io.BytesIO()
    pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    pil.save(buf, format=fmt, quality=quality, **options)
    dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(pil.mode))
    return buf.tell(), (dec[None] if dec.ndim == 2 else dec.transpose(2, 0, 1))


def webp_at_size(image: np.ndarray, target_bytes: int, **options) -> PillowFile:
    """The WebP file of a (C, H, W) uint8 image whose size is closest to `target_bytes`, over the
    qualities 0..100 (ties: the higher quality). The closest of the qualities tried: a bisection
    for where the size crosses the target, then WINDOW qualities either side. Below WebP's
    smallest file (quality 0) or above its largest, that file is the answer."""
    from vaekit.images.quality import psnr

    if isinstance(target_bytes, bool) or not isinstance(target_bytes, (int, np.integer)) or target_bytes < 1:
        raise BadInput(f"invalid target size {target_bytes!r}: expected a positive number of bytes")
    image = _check_image(image)
    tried: dict[int, tuple[int, np.ndarray]] = {}

    def size(q: int) -> int:
        if q not in tried:
            tried[q] = pillow_file(image, "WebP", q, **options)
        return tried[q][0]

    lo, hi = WEBP_QUALITIES[0], WEBP_QUALITIES[-1]
    while lo < hi:  # the lowest quality whose file is at least the target (if sizes were monotone)
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if size(mid) < target_bytes else (lo, mid)
    for q in range(max(WEBP_QUALITIES[0], lo - WINDOW), min(WEBP_QUALITIES[-1], lo + WINDOW) + 1):
        size(q)
    best = min(tried, key=lambda q: (abs(tried[q][0] - target_bytes), -q))
    nbytes, decoded = tried[best]
    return PillowFile("WebP", best, nbytes, decoded, float(psnr(image[None], decoded[None])[0]))


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise BadInput(f"expected one (C, H, W) uint8 image with 1 or 3 channels, got {image.dtype} {image.shape}")
    return image
