"""How files are read, as a helper's attack of 2026-12-07 found them: a PNG's colour key, 16-bit
RGB in a lossless archive, and the shown size of a TIFF turned by its EXIF orientation."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from vaekit import images as vi


def _rgba_and_keyed(tmp_path):
    a = np.zeros((32, 32, 4), np.uint8)
    a[..., :3] = 255
    a[8:24, 8:24] = [200, 30, 30, 255]
    Image.fromarray(a, "RGBA").save(tmp_path / "rgba.png")
    # what PNG optimisers write for binary alpha: RGB with one colour (tRNS) transparent
    Image.fromarray(np.ascontiguousarray(a[..., :3])).save(tmp_path / "keyed.png", transparency=(255, 255, 255))
    return tmp_path / "rgba.png", tmp_path / "keyed.png"


@pytest.mark.parametrize("channels", [1, 3])
def test_a_colour_key_is_transparent_as_alpha_is(tmp_path, channels):
    rgba, keyed = _rgba_and_keyed(tmp_path)
    assert vi.decode(keyed, channels)[0, 0].max() == 0  # was white: the key read as an opaque colour
    np.testing.assert_array_equal(vi.decode(keyed, channels), vi.decode(rgba, channels))
    g = np.full((16, 16), 255, np.uint8)
    g[4:12, 4:12] = 90
    Image.fromarray(g).save(tmp_path / "grey.png", transparency=255)
    x = vi.decode(tmp_path / "grey.png", 1)[..., 0]
    assert x[0, 0] == 0 and x[8, 8] == 90


def _rgb16_png(path, a: np.ndarray) -> None:
    raw = b"".join(b"\0" + r.astype(">u2").tobytes() for r in a)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    ihdr = struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_lossless_archive_refuses_16_bit_rgb_which_pillow_opens_as_rgb(tmp_path):
    a = np.random.default_rng(1).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    _rgb16_png(tmp_path / "rgb16.png", a)
    with Image.open(tmp_path / "rgb16.png") as im:
        assert im.mode == "RGB"  # what let it through: the mode alone looks like 8-bit RGB
    assert "RGB;16B" in vi.not_exact(tmp_path / "rgb16.png", 3)
    np.testing.assert_array_equal(vi.decode(tmp_path / "rgb16.png", 3), (a >> 8).astype(np.uint8))  # read, scaled
    Image.fromarray((a >> 8).astype(np.uint8)).save(tmp_path / "rgb8.png")
    assert vi.not_exact(tmp_path / "rgb8.png", 3) is None


@pytest.mark.parametrize("suffix", [".tif", ".jpg", ".png"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_the_shown_size_is_the_decoded_one_whatever_the_format(tmp_path, suffix, orientation):
    from vaekit.images import file_shown_size as _shown_size
    from vaekit.codes.sizes import original_size

    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"turned{suffix}"
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(path, exif=exif)
    h, w = vi.decode(path, 1).shape[:2]
    assert (h, w) == ((64, 48) if orientation in (6, 8) else (48, 64))
    assert original_size(path) == (h, w)  # a TIFF's sides were swapped twice: Pillow had already
    assert _shown_size(path) == (w, h)


def test_which_mask_is_an_images(tmp_path):
    from vaekit.anomaly.masks import mask_index, masks_for
    from vaekit.errors import BadInput

    from types import SimpleNamespace

    model = SimpleNamespace(info=SimpleNamespace(image_size=16, read_size=16, latent_shape=(4,)))  # an object model
    root = tmp_path / "masks"
    root.mkdir()
    for name in ("x_mask.png", "y.png", "z_mask.png"):
        Image.fromarray(np.full((16, 16), 255, np.uint8)).save(root / name)
    index = mask_index(root)
    exact, stripped, _ = index
    assert set(exact) == {"x_mask", "y", "z_mask"} and set(stripped) == {"x", "z"}
    # an image named x_mask.png finds the mask at its own path (it was left without one); z finds z_mask
    import vaekit.anomaly.masks as masks

    real = masks.read_mask
    masks.read_mask = lambda path, name, *a, **k: path
    try:
        mask_of = masks_for(model, index, ["x_mask.png", "y.png", "z.png"])
        paths = {n: mask_of(n, None) for n in ("x_mask.png", "y.png", "z.png")}
        assert paths == {"x_mask.png": root / "x_mask.png", "y.png": root / "y.png", "z.png": root / "z_mask.png"}
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "y_mask.png")  # a second mask for y
        with pytest.raises(BadInput, match="2 masks for the anomalous image y.png: y.png, y_mask.png; keep one"):
            masks_for(model, mask_index(root), ["y.png"])
    finally:
        masks.read_mask = real


def test_a_multi_picture_jpeg_is_decoded_at_reduced_scale_as_a_jpeg_is(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    frames = [Image.fromarray(np.full((512, 512, 3), v, np.uint8)) for v in (40, 200)]
    frames[0].save(tmp_path / "camera.mpo", format="MPO", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "camera.mpo") as im:
        assert im.format == "MPO"
    drafts = []
    real = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, *a: drafts.append(a) or real(self, *a))
    x = vi.load_image(tmp_path / "camera.mpo", 64, 3)
    assert drafts and x.shape == (3, 64, 64) and abs(int(x.mean()) - 40) <= 1  # the first frame, read at 1/8 scale


def _png_with_exif_after_pixels(path, orientation: int) -> None:
    """A 64 x 48 grey PNG whose eXIf chunk (orientation) follows its pixel data, as some writers put it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw = b"".join(b"\0" + bytes(64) for _ in range(48))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    ihdr = struct.pack(">IIBBBBB", 64, 48, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"eXIf", exif.tobytes()[6:]) + chunk(b"IEND", b""))  # tobytes() starts "Exif\0\0"


def test_a_pngs_shown_size_is_read_without_decoding_it_unless_exif_follows_its_pixels(tmp_path, monkeypatch):
    from PIL import PngImagePlugin

    from vaekit.codes.sizes import original_size

    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "plain.png")
    _png_with_exif_after_pixels(tmp_path / "late.png", 6)
    assert vi.decode(tmp_path / "late.png", 1).shape[:2] == (64, 48)  # Pillow finds the late eXIf when it decodes
    loads = []
    real = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: loads.append(1) or real(self))
    assert original_size(tmp_path / "plain.png") == (48, 64) and loads == []  # was a whole decode to find no EXIF
    assert original_size(tmp_path / "late.png") == (64, 48) and loads  # a chunk after the pixels: read as decoding does


def _png(path, w, h, depth, colour, rows: bytes, trns: bytes) -> None:
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"tRNS", trns)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_colour_key_is_matched_at_the_files_own_bit_depth(tmp_path):
    # 16-bit RGB is read at its high byte: its key (255, 255, 255) is not the 8-bit white of 65535
    # (an opaque white turned black when the key was compared with the 8-bit pixels)
    _png(tmp_path / "rgb16.png", 2, 1, 16, 2, b"\0" + np.array([[65535] * 3, [255] * 3], ">u2").tobytes(),
         struct.pack(">HHH", 255, 255, 255))
    assert vi.decode(tmp_path / "rgb16.png", 3).tolist() == [[[255, 255, 255], [0, 0, 0]]]
    # a 2-bit grey key of 3 is the pixel read as 255 (it matched nothing, the key compared unscaled)
    _png(tmp_path / "grey2.png", 4, 1, 2, 0, b"\0" + bytes([0b00011011]), struct.pack(">H", 3))
    assert vi.decode(tmp_path / "grey2.png", 1)[..., 0].tolist() == [[0, 85, 170, 0]]
