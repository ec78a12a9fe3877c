"""Lossless archives of colour images code G, R - G and B - G: WebP lossless's subtract-green.

A Gaussian or Bernoulli model's pixels are coded with a pixel model fitted to the archive
(vaekit.codec.fitted, vaekit.codec.learned), channel by channel, each sub-pixel from its own
channel's neighbours and the decoder's mean. In colour images the three channels' residuals from
the mean move together (light, texture and noise touch all three), so each was paid three times.
Coded as (R - G + 128) mod 256, G and (B - G + 128) mod 256 (exactly invertible, still 8 bits), with
the mean moved alike (R - G + 128/255, clipped), a tinted grey's two differences are nearly flat.
On the sample shapes' 150 training parts a fitted learned pixel model cost 3.62 bits a
sub-pixel as RGB and 2.37 with the transform; on 256 colour photo crops 4.42 and 3.84 (docs/codec.md).

Whether an archive uses it is measured (vaekit.codec.learned_fit.choose). `Green` wraps the pixel
model fitted to the transformed images; the header keeps it as {"kind": KIND, "inner": ...}, a
kind a vaekit without it refuses by name instead of decoding wrong pixels.
"""

from __future__ import annotations

import numpy as np

KIND = "subtract-green-1"
OFFSET = 128  # grey levels added to R - G and B - G, so a grey pixel's differences sit mid-range


def forward(x: np.ndarray) -> np.ndarray:
    """uint8 (3, H, W) RGB -> uint8 (3, H, W): (R - G + 128) mod 256, G, (B - G + 128) mod 256."""
    r, g, b = np.asarray(x).astype(np.int16)
    return np.stack([(r - g + OFFSET) % 256, g, (b - g + OFFSET) % 256]).astype(np.uint8)


def inverse(y: np.ndarray) -> np.ndarray:
    """`forward`'s inverse, exact for every uint8 image."""
    d1, g, d2 = np.asarray(y).astype(np.int16)
    return np.stack([(d1 + g - OFFSET) % 256, g, (d2 + g - OFFSET) % 256]).astype(np.uint8)


def mean(m: np.ndarray) -> np.ndarray:
    """The decoder's mean image (3, H, W) in [0, 1], moved as `forward` moves the pixels (clipped)."""
    m = np.asarray(m, np.float64)
    shift = OFFSET / 255
    return np.stack([np.clip(m[0] - m[1] + shift, 0.0, 1.0), m[1], np.clip(m[2] - m[1] + shift, 0.0, 1.0)])


class Green:
    """A pixel model of the transformed images: the same `tables` (x and m already transformed by
    vaekit.codec.bitsback), stored around the inner model's JSON."""

    def __init__(self, inner):
        self.inner, self.likelihood = inner, inner.likelihood

    def tables(self, x: np.ndarray, m: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.inner.tables(x, m, rows, cols)

    def to_json(self) -> dict:
        return {"kind": KIND, "inner": self.inner.to_json()}
