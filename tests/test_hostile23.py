"""Hostile review of the learned pixel model (vaekit/codec/learned.py, learned_fit.py): the choice
between it and the context model weighs what the header really stores, for the archive's real size."""

from __future__ import annotations

import numpy as np

from vaekit.codec import fitted, learned, learned_fit


def _noise(n: int, channels: int, size: int = 32):
    rng = np.random.default_rng(0)
    x = [rng.integers(0, 256, (channels, size, size), np.uint8) for _ in range(n)]
    return x, [xi / 255.0 * 0.9 + 0.05 for xi in x]


def test_the_choice_pays_the_networks_header_as_the_header_stores_it(monkeypatch):
    """choose() priced the two models' headers by their uncompressed JSON, but the header stores
    them compressed: the context model's rounded numbers shrink to a fifth, the network's base64
    to three quarters. For a 3-channel model the network's JSON even looked 573 bytes *shorter*,
    so any saving at all kept it while its header cost ~3.2 kB more. 1.5 kB saved must not pay."""
    x, m = _noise(24, 3)
    rng = np.random.default_rng(1)
    monkeypatch.setattr(learned_fit, "_train", lambda f, mean, level, c: [
        rng.normal(0, 0.5, s).astype(np.float16).astype(np.float64) for s in learned.shapes(c)])
    expected = 10 ** 6
    saved_bits = 8 * 1500  # over the archive: the network codes 1.5 kB smaller
    monkeypatch.setattr(learned_fit, "_bits", lambda model, *a: 1.0 - (
        saved_bits / expected if isinstance(model, learned.LearnedPixels) else 0.0))
    assert isinstance(learned_fit.choose("gaussian", x, m, expected), fitted.PixelModel)
    saved_bits = 8 * 6000  # 6 kB pays for it
    assert isinstance(learned_fit.choose("gaussian", x, m, expected), learned.LearnedPixels)
