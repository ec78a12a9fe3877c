"""Any decoded Pillow image -> uint8 pixels, in bounded memory: strip by strip, never a wide copy.

A 9400 × 9400 RGBA PNG is 350 MB as Pillow holds it; converting it whole through uint32 or
float64 arrays took ten times that. Here each mode is converted a strip of rows at a time
(STRIP_PIXELS pixels) into one uint8 array of the image's size, colour turned to gray (luma)
in the same pass when the model wants gray, and EXIF rotation applied to the uint8 result as
a view. Peak memory for one image is Pillow's own copy plus the uint8 result: about two bytes
per channel per pixel (a WebP's decoder alone holds ~15 bytes a pixel, hence its lower pixel
limit: vaekit.images.read.pixel_limit). The numbers are those the whole-image conversion gave, bit for bit.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

STRIP_PIXELS = 1 << 18  # pixels converted at a time: 256 K, 2 MB as float64
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})  # plus every "I;16*" variant
_ALPHA_MODES = frozenset({"LA", "RGBA", "La", "RGBa"})


def is_gray(mode: str) -> bool:
    """Whether Pillow's `mode` holds one colour channel (alpha aside)."""
    return mode in _GRAY_MODES or mode.startswith("I;16")


def to_uint8(img: Image.Image, channels: int) -> np.ndarray:
    """uint8 (H, W, 1) for a gray image, (H, W, 3) for colour; with channels == 1 colour becomes
    gray (ITU-R 601-2 luma, as Pillow's convert('L')). 16-bit and float images are scaled, not
    clipped; transparent pixels are composited over black."""
    mode, (w, h) = img.mode, img.size
    c = 1 if is_gray(mode) or channels == 1 else 3
    out = np.empty((h, w, c), np.uint8)
    boxes = _boxes(w, h)
    peak = max((_strip_max(img.crop(box), mode) for box in boxes), default=0.0) if mode in ("I", "F") else 0.0
    for x0, y0, x1, y1 in boxes:
        x = _strip(img.crop((x0, y0, x1, y1)), mode, peak if h * w else np.inf)
        out[y0:y1, x0:x1] = luma(x) if c == 1 and x.shape[-1] == 3 else x
    return out


def _boxes(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) pieces of at most STRIP_PIXELS pixels covering a w x h image:
    strips of whole rows, and a row wider than that in pieces of its own (a 1 x 89 M 16-bit
    strip was one piece, and its float64 copies took 2.5 GB)."""
    if w <= STRIP_PIXELS:
        step = max(1, STRIP_PIXELS // max(w, 1))
        return [(0, y, w, min(h, y + step)) for y in range(0, h, step)]
    return [(x, y, min(w, x + STRIP_PIXELS), y + 1) for y in range(h) for x in range(0, w, STRIP_PIXELS)]


def _strip_max(s: Image.Image, mode: str) -> float:
    """The strip's largest finite value (0 for none): one +inf pixel must not make an image of
    values in [0, 1] read as 0 to 255, nearly black."""
    a = np.asarray(s, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def _strip(s: Image.Image, mode: str, peak: float) -> np.ndarray:
    """One strip of rows -> uint8 (h, W, 1|3). `peak`: the whole image's largest value (I and F)."""
    if mode in ("P", "PA"):
        s, mode = s.convert("RGBA"), "RGBA"  # honours palette transparency
    if mode == "1":
        x = np.asarray(s.convert("L"))
    elif mode == "I" or mode.startswith("I;16"):
        # convert('L') clips at 255; scale 16-bit to 8-bit instead. 8-bit data stored as 'I' stays.
        a = np.asarray(s).astype(np.float64)
        if not (mode == "I" and peak <= 255):
            a = np.clip(a, 0, 65535) / 257
        x = np.rint(np.clip(a, 0, 255)).astype(np.uint8)
    elif mode == "F":
        a = np.asarray(s, dtype=np.float64)
        a = np.where(np.isnan(a), 0.0, a)  # NaN is black; +inf is white and -inf black, by the clip
        x = np.rint(np.clip(a * 255 if peak <= 1.0 else a, 0, 255)).astype(np.uint8)
    elif mode in _ALPHA_MODES:
        a = np.asarray(s).astype(np.uint32)
        color, alpha = a[..., :-1], a[..., -1:]
        # Composite over black. Premultiplied modes ('La', 'RGBa') already are exactly that.
        x = (color if mode in ("La", "RGBa") else (color * alpha + 127) // 255).astype(np.uint8)
    elif mode in ("L", "RGB"):
        x = np.asarray(s)
    else:  # CMYK, YCbCr, LAB, HSV, and any other colour mode Pillow can convert
        x = np.asarray(s.convert("RGB"))
    x = x[..., None] if x.ndim == 2 else x
    return _keyed_out(s, mode, x)


def _keyed_out(s: Image.Image, mode: str, x: np.ndarray) -> np.ndarray:
    """`x` with the pixels of a PNG's colour key (tRNS in an L, RGB or 16-bit grey image: that one
    value is transparent, as PNG optimisers write binary alpha) black, composited as alpha is."""
    key = s.info.get("transparency") if mode in ("L", "RGB", "I") or mode.startswith("I;16") else None
    if isinstance(key, int) and not isinstance(key, bool):
        hit = np.asarray(s) == key
    elif isinstance(key, tuple) and len(key) == 3 and mode == "RGB":
        hit = (np.asarray(s) == np.asarray(key)).all(-1)
    else:
        return x
    return np.where(hit[..., None], np.uint8(0), x)


def luma(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (..., 1): ITU-R 601-2 (299/587/114 per mille) in the 16-bit fixed point
    Pillow's convert('L') uses, so our gray equals Pillow's bit for bit."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]


def orient(x: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to (H, W, C) pixels, as ImageOps.exif_transpose does."""
    views = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: a.transpose(1, 0, 2)[::-1],
    }
    view = views.get(orientation)
    return x if view is None else np.ascontiguousarray(view(x))
