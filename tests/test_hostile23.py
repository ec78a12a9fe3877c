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


def test_the_choice_sizes_the_archive_by_the_images_it_holds_not_the_files_it_skips(tmp_path, monkeypatch):
    """encode --lossless told choose() the archive would hold every file found, skipped ones too (a
    size other than the model's, pixels that would not come back exactly): in a folder of 3 images
    of the model's size among 30 files it weighed the network's longer header against ten times the
    archive's real size. A single-chunk archive knows its size; a chunk before others counts the
    images kept and the files not read yet."""
    from PIL import Image

    import vaekit
    from export_support import random_run

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="gaussian")
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        size = 16 if i % 10 == 0 else 20
        Image.fromarray(rng.integers(0, 256, (size, size), np.uint8)).save(src / f"i{i:02d}.png")
    sizes = []
    real = learned_fit.choose
    monkeypatch.setattr(learned_fit, "choose", lambda lk, x, m, n, torch: sizes.append(n) or real(lk, x, m, n, torch))
    report = vaekit.codec.encode(vaekit.load(run), src, tmp_path / "a.vkc", lossless=True)
    assert report.count == 3 and sizes == [3 * 256]
    sizes.clear()
    vaekit.codec.encode(vaekit.load(run), src, tmp_path / "b.vkc", lossless=True, chunk=2)
    assert sizes == [(2 + 19) * 256]  # i00 and i10 kept when the first chunk fills at i10; i11..i29 not read
