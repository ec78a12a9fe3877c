"""Memory bounded by pixels where a helper's measurements found it was not (2026-12-07): a WebP's
decoder, the reader's training copy, and a lossless encode's oversize files."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vaekit import images
from vaekit.images import ImageReadError


def test_a_webp_may_declare_half_the_pixels_another_format_may(tmp_path, monkeypatch):
    """libwebp's decoding held ~15 bytes a pixel (a 3.4 kB WebP of 9400 x 9400 px: 1.6 GB), where a
    PNG of the size peaks at 0.7 GB: a WebP is refused undecoded at half the pixel limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    x = np.zeros((40, 40, 3), np.uint8)  # 1,600 pixels: under the limit, over half of it
    Image.fromarray(x).save(tmp_path / "a.png")
    Image.fromarray(x).save(tmp_path / "a.webp", lossless=True)
    assert images.decode(tmp_path / "a.png", 3).shape == (40, 40, 3)
    with pytest.raises(ImageReadError, match=r"decompression bomb: 1600 pixels > limit 1000 \(a WebP's limit"):
        images.decode(tmp_path / "a.webp", 3)
    Image.fromarray(x[:30, :30]).save(tmp_path / "b.webp", lossless=True)  # 900 pixels
    assert images.decode(tmp_path / "b.webp", 3).shape == (30, 30, 3)


def test_the_reader_trains_on_at_most_its_pixel_budget_of_images(monkeypatch):
    """Every training image cached at the model's size was copied into RAM for the reader (3,000 of
    256 px: 157 MB, growing with the folder), which draws only ~22,000 crops: a seeded subset now."""
    from vaekit.training import finish_reader

    monkeypatch.setattr(finish_reader, "READER_PIXELS", 10 * 16 * 16)
    data = SimpleNamespace(images=np.broadcast_to(np.arange(50, dtype=np.uint8)[:, None, None, None], (50, 1, 16, 16)).copy(), wide=None)
    idx = np.arange(5, 45)
    out = finish_reader.training_images(data, idx, tile=64, seed=3)
    assert out.shape == (10, 1, 16, 16)
    firsts = [int(o[0, 0, 0]) for o in out]  # image i is all i
    assert firsts == sorted(firsts) and set(firsts) <= set(range(5, 45)) and len(set(firsts)) == 10
    assert (finish_reader.training_images(data, idx, tile=64, seed=3) == out).all()  # seeded: a resume is the same
    small = finish_reader.training_images(data, idx[:10], tile=64, seed=3)  # within the budget: all, in order
    assert (small == data.images[5:15]).all()


def test_a_lossless_encode_refuses_an_oversize_file_from_its_header(tmp_path, monkeypatch):
    """A 9400 px grey PNG under a 32 px model was decoded whole (420 MB, 2.2 s) to be refused."""
    import vaekit
    from vaekit import codec
    from vaekit.codec import lossless

    from export_support import random_run
    from test_codec import _digits

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood="logistic")
    _digits(tmp_path / "src", 3)
    Image.fromarray(np.zeros((300, 200), np.uint8)).save(tmp_path / "src" / "big.png")
    decoded, real = [], images.decode
    monkeypatch.setattr(lossless.imageio, "decode", lambda p, c: decoded.append(p.name) or real(p, c))
    r = codec.encode(vaekit.load(run), tmp_path / "src", tmp_path / "a.vkc", lossless=True)
    assert "big.png" not in decoded and len(decoded) == 3
    assert [(p.name, why) for p, why in r.skipped] == [
        ("big.png", "200x300 pixels; a lossless archive holds images of exactly the model's size, 16x16")]



def test_the_readers_windows_stay_within_the_budget_however_many_images(monkeypatch):
    """Images larger than the model: one window each at least, so 2,000 of 600 px gave 3.9x the
    budget, growing with the folder. Past the budget, windows come from a seeded subset."""
    from vaekit.training import finish_reader

    monkeypatch.setattr(finish_reader, "READER_PIXELS", 6 * 8 * 8)
    monkeypatch.setattr(finish_reader, "WINDOW", 8)
    data = SimpleNamespace(images=np.broadcast_to(np.arange(40, dtype=np.uint8)[:, None, None, None], (40, 1, 24, 24)).copy(), wide=None)
    out = finish_reader.training_images(data, np.arange(40), tile=16, seed=1)
    assert out.shape == (6, 1, 8, 8) and len({int(o[0, 0, 0]) for o in out}) == 6
    few = finish_reader.training_images(data, np.arange(3), tile=16, seed=1)  # 3 images: 2 windows of each
    assert few.shape == (6, 1, 8, 8) and sorted({int(o[0, 0, 0]) for o in few}) == [0, 1, 2]
