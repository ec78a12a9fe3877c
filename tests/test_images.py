"""vaekit.images: one test per Pillow pitfall, on images generated in tmp_path."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from vaekit import images
from vaekit.images import ImageReadError


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def stored(path: Path, attr: str = "mode"):
    with Image.open(path) as img:
        return getattr(img, attr)


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- modes ---------------------------------------------------------------------------------


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 32896, 65535, 257]], dtype=np.uint16)
    p = save(Image.fromarray(a), tmp_path / "g16.png")
    assert stored(p) == "I;16"
    assert images.gray_mode(p)
    assert images.decode(p, 1)[..., 0].tolist() == [[0, 128, 255, 1]]
    assert images.decode(p, 3)[0, 1].tolist() == [128, 128, 128]


def test_mode_I_scales_16bit_range_and_keeps_8bit_range(tmp_path):
    wide = save(Image.fromarray(np.array([[-3, 32896, 65535, 70000]], np.int32)), tmp_path / "w.tif")
    narrow = save(Image.fromarray(np.array([[0, 7, 200, 255]], np.int32)), tmp_path / "n.tif")
    assert stored(wide) == stored(narrow) == "I"
    assert images.decode(wide, 1)[..., 0].tolist() == [[0, 128, 255, 255]]
    assert images.decode(narrow, 1)[..., 0].tolist() == [[0, 7, 200, 255]]


def test_float_mode(tmp_path):
    unit = np.array([[0.0, 0.25, 1.0, np.nan]], np.float32)
    wide = np.array([[-5.0, 100.4, 300.0, np.nan]], np.float32)
    p1 = save(Image.fromarray(unit), tmp_path / "u.tif")
    p2 = save(Image.fromarray(wide), tmp_path / "w.tif")
    assert stored(p1) == "F"
    assert images.decode(p1, 1)[..., 0].tolist() == [[0, 64, 255, 0]]
    assert images.decode(p2, 1)[..., 0].tolist() == [[0, 100, 255, 0]]


def test_float_infinities_neither_set_the_range_nor_warn(tmp_path):
    # one +inf made an image of [0, 1] values read as 0-255 (nearly black); -inf in such an
    # image printed numpy's "overflow encountered in multiply" with vaekit's source line
    import warnings

    unit = np.array([[0.0, 0.25, 1.0, np.inf, -np.inf, np.nan]], np.float32)
    p = save(Image.fromarray(unit), tmp_path / "u.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert images.decode(p, 1)[..., 0].tolist() == [[0, 64, 255, 255, 0, 0]]


def test_a_16_bit_grey_png_with_alpha_counts_as_grey(tmp_path):
    # Pillow opens it as RGBA, and --channels auto took a folder of them for colour
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80\x00\xff\xff" * 4 for _ in range(4))  # grey 0x8000, opaque
    p = tmp_path / "la16.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 16, 4, 0, 0, 0))
                  + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert stored(p) == "RGBA" and images.gray_mode(p)
    assert images.resolve_channels([p], "auto") == 1 and (images.decode(p, 1) == 128).all()


def test_grey_alpha_16_bit_is_told_with_pillow_10s_plain_tuples(tmp_path, monkeypatch):
    # Pillow 10.x (allowed: pillow>=10.3) keeps tile entries as plain tuples, without `.args`:
    # gray_mode failed on every PNG and --channels auto trained grey folders as colour
    from contextlib import contextmanager

    from vaekit.images import read

    p = tmp_path / "g.png"
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(p)
    real = read.open_image

    @contextmanager
    def plain(path, check_rows=False):
        with real(path, check_rows) as img:
            img.tile = [tuple(t) for t in img.tile]
            yield img

    monkeypatch.setattr(read, "open_image", plain)
    assert read.gray_mode(p)


def test_bilevel_mode(tmp_path):
    img = Image.new("1", (4, 2), 0)
    img.putpixel((1, 0), 1)
    img.putpixel((3, 1), 1)
    p = save(img, tmp_path / "b.png")
    assert stored(p) == "1"
    assert images.decode(p, 1)[..., 0].tolist() == [[0, 255, 0, 0], [0, 0, 0, 255]]


def test_palette_transparency_is_composited_over_black(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * (254 * 3))  # index 0 red, 1 green
    img.paste(1, (0, 0, 2, 4))
    p = save(img, tmp_path / "p.png", transparency=0)
    x = images.decode(p, 3)
    assert x[:, :2].reshape(-1, 3).tolist() == [[0, 255, 0]] * 8
    assert x[:, 2:].reshape(-1, 3).tolist() == [[0, 0, 0]] * 8  # hidden red never shows


@pytest.mark.parametrize(
    "mode,pixel,expected",
    [("RGBA", (200, 100, 50, 128), [100, 50, 25]), ("LA", (200, 64), [50, 50, 50])],
)
def test_alpha_is_composited_over_black(tmp_path, mode, pixel, expected):
    opaque = (10, 20, 30, 255) if mode == "RGBA" else (90, 255)
    img = Image.new(mode, (2, 1), pixel)
    img.putpixel((1, 0), opaque)
    p = save(img, tmp_path / "a.png")
    assert stored(p) == mode
    x = images.decode(p, 3)
    assert x[0, 0].tolist() == expected
    assert x[0, 1].tolist() == ([10, 20, 30] if mode == "RGBA" else [90, 90, 90])


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    p = save(img, tmp_path / "r.jpg", exif=exif, quality=95)
    x = images.decode(p, 3).astype(int)
    assert x.shape == (40, 20, 3)
    assert np.abs(x[2, 17] - [255, 0, 0]).max() < 20  # now at the top-right
    assert np.abs(x[2, 2] - [0, 0, 255]).max() < 20


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = save(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    assert stored(p) == "CMYK"
    x = images.decode(p, 3).astype(int)
    assert x.shape == (8, 16, 3)
    assert np.abs(x - [255, 0, 0]).max() < 8


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert stored(p, "n_frames") == 3
    x = images.decode(p, 3)
    assert x.shape == (8, 8, 3)
    assert (x == [255, 0, 0]).all()


def test_luma_equals_pillow_convert_L(tmp_path):
    rgb = noise(64, 64)
    p = save(Image.fromarray(rgb), tmp_path / "rgb.png")
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(images.decode(p, 1)[..., 0], expected)
    gray = save(Image.fromarray(expected), tmp_path / "gray.png")
    np.testing.assert_array_equal(images.decode(gray, 3), np.repeat(expected[..., None], 3, -1))


# --- unreadable files ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_file(tmp_path, suffix):
    full = save(Image.fromarray(noise(64, 64)), tmp_path / f"full.{suffix}")
    data = full.read_bytes()
    half = tmp_path / f"half.{suffix}"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as e:
        images.decode(half, 3)
    assert e.value.path == half
    assert e.value.reason.startswith("truncated or corrupt")
    assert str(e.value) == f"{half}: {e.value.reason}"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never flipped globally


def _png(w: int, h: int, rows: bytes, depth: int = 8, colour: int = 0, interlace: int = 0) -> bytes:
    """A PNG whose IDAT holds `rows` (filtered scanlines), whatever its header says."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_png_with_fewer_rows_than_its_header(tmp_path):
    # the zlib stream ends cleanly after 8 of 16 rows: Pillow fills the rest with black, no error
    short = tmp_path / "short.png"
    short.write_bytes(_png(16, 16, b"".join(b"\x00" + bytes([200] * 16) for _ in range(8))))
    with Image.open(short) as img:
        assert np.asarray(img)[12, 0] == 0  # what Pillow alone would have given
    with pytest.raises(ImageReadError) as e:
        images.decode(short, 1)
    assert e.value.reason == "truncated or corrupt: its pixel data ends after 136 of the 272 bytes its header needs"
    whole = tmp_path / "whole.png"
    whole.write_bytes(_png(16, 16, b"".join(b"\x00" + bytes([200] * 16) for _ in range(16))))
    assert (images.decode(whole, 1) == 200).all()


def test_the_png_rows_check_reads_a_bounded_piece_at_a_time(tmp_path):
    # it read each IDAT chunk whole: one whose length field claims 800 MB (a sparse file) doubled
    # the memory and time Pillow itself spends on it (a helper's review)
    import io
    import struct
    import zlib

    from vaekit.images import png_rows

    rows = b"".join(b"\x00" + bytes(range(64)) for _ in range(64))
    body = zlib.compress(rows) + bytes(5 * png_rows._STEP)  # the rows, then megabytes of padding
    data = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)
            + b"\0" * 4 + struct.pack(">I", len(body)) + b"IDAT" + body + b"\0" * 4)
    reads = []

    class Recorded(io.BytesIO):
        def read(self, n=-1):
            out = super().read(n)
            reads.append(len(out))
            return out

    assert png_rows.missing_rows(Recorded(data)) is None
    assert max(reads) <= png_rows._STEP and sum(reads) <= 2 * png_rows._STEP  # stopped once the rows were there


@pytest.mark.parametrize("mode,interlace", [("L", False), ("RGB", True), ("RGBA", True), ("I;16", False),
                                            ("1", True), ("P", True), ("LA", False)])
def test_png_rows_check_passes_what_pillow_writes(tmp_path, mode, interlace):
    # every row there, in every colour type, bit depth and interlacing: nothing refused; the
    # same file re-packed with one byte less of pixel data (every chunk still whole): refused
    import struct
    import zlib

    from vaekit.images.png_rows import missing_rows

    a = noise(37, 23)
    img = Image.fromarray(a[..., 0].astype(np.uint16) * 257) if mode == "I;16" else Image.fromarray(a).convert(mode)
    path = save(img, tmp_path / "x.png", **({"interlace": 1} if interlace else {}))
    with open(path, "rb") as f:
        assert missing_rows(f) is None
    assert images.decode(path, 3).shape == a.shape
    data = path.read_bytes()
    start, end = data.index(b"IDAT") - 4, data.index(b"IEND") - 4
    assert data.count(b"IDAT") == 1
    rows = zlib.decompress(data[start + 8 : start + 8 + int.from_bytes(data[start : start + 4], "big")])
    body = zlib.compress(rows[:-1])
    idat = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))
    bad = tmp_path / "bad.png"
    bad.write_bytes(data[:start] + idat + data[end:])
    with open(bad, "rb") as f:
        assert missing_rows(f) == f"truncated or corrupt: its pixel data ends after {len(rows) - 1} of the {len(rows)} bytes its header needs"


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.png", b"", "empty file"),
        ("text.png", b"just some notes, not pixels\n", "not an image"),
        ("page.jpg", b"<!DOCTYPE html><html><body>404 not found</body></html>", "not an image"),
    ],
)
def test_not_an_image(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        images.decode(p, 3)
    assert e.value.reason == reason
    assert str(e.value) == f"{p}: {reason}"


def test_folder_and_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="is a folder"):
        images.decode(tmp_path, 3)
    with pytest.raises(ImageReadError, match="file not found"):
        images.decode(tmp_path / "gone.png", 3)


def test_permission_denied(tmp_path):
    p = save(Image.new("RGB", (4, 4)), tmp_path / "locked.png")
    p.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ImageReadError, match="permission denied"):
            images.decode(p, 3)
        return
    # root reads any file: drop the effective uid to 'nobody' for the read, then restore it
    os.seteuid(65534)
    try:
        with pytest.raises(ImageReadError, match="permission denied"):
            images.decode(p, 3)
    finally:
        os.seteuid(0)


def test_decompression_bomb_rejected_before_load(tmp_path, monkeypatch):
    p = save(Image.new("RGB", (100, 100)), tmp_path / "bomb.png")

    def no_load(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    # 10000 > 6000: Pillow itself only warns up to twice its limit; we reject anyway
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)
    with pytest.raises(ImageReadError) as e:
        images.decode(p, 3)
    assert e.value.reason == "decompression bomb: 10000 pixels > limit 6000"
    # 10000 > 2 * 1000: Pillow raises DecompressionBombError, which is not an OSError
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError) as e:
        images.decode(p, 3)
    assert e.value.reason.startswith("decompression bomb: ")


def _valid_bytes() -> dict[str, bytes]:
    out = {}
    for fmt, mode in [("PNG", "RGB"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "I;16"), ("WEBP", "RGBA")]:
        buf = io.BytesIO()
        Image.fromarray(noise(12, 10)).convert(mode).save(buf, format=fmt)
        out[fmt] = buf.getvalue()
    return out


VALID = _valid_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=2048),
        st.builds(
            lambda fmt, cut, flips: _mutate(VALID[fmt], cut, flips),
            st.sampled_from(sorted(VALID)),
            st.floats(0, 1),
            st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8),
        ),
    )
)
def test_any_bytes_raise_only_ImageReadError(tmp_path, data):
    p = tmp_path / "fuzz.img"
    p.write_bytes(data)
    try:
        x = images.decode(p, 3)
    except ImageReadError as e:
        assert e.path == p and e.reason
    else:
        assert x.dtype == np.uint8 and x.ndim == 3 and x.shape[-1] == 3


def _mutate(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    b = bytearray(data[: max(1, int(len(data) * cut))] if cut < 1 else data)
    for where, value in flips:
        b[min(len(b) - 1, int(where * len(b)))] = value
    return bytes(b)


# --- resize and load -----------------------------------------------------------------------


def test_resize_shorter_side_then_centre_crop():
    x = np.zeros((80, 40, 1), np.uint8)  # 40 wide, 80 tall
    x[:10] = 255  # top band: cropped away
    x[38:42] = 255  # band through the centre: lands in the middle of the crop
    y = images.resize(x, 32)
    assert y.shape == (32, 32, 1) and y.dtype == np.uint8
    col = y[:, 16, 0].astype(int)
    assert col[:8].max() < 10  # top band gone
    assert col[15:17].min() > 200 and int(np.argmax(col)) in (15, 16)
    rgb = images.resize(np.repeat(x, 3, -1), 32)
    assert rgb.shape == (32, 32, 3)
    np.testing.assert_array_equal(rgb[..., 1], y[..., 0])


def test_resize_identity_and_bad_size():
    x = noise(32, 32)
    assert images.resize(x, 32) is x
    with pytest.raises(ValueError, match="invalid size 8"):
        images.resize(x, 8)
    with pytest.raises(ValueError, match="invalid size 32.0"):
        images.resize(x, 32.0)


def test_load_image_is_channel_first_and_matches_decode_resize(tmp_path):
    p = save(Image.fromarray(noise(50, 70)), tmp_path / "a.png")
    x = images.load_image(p, 32, 3)
    assert x.shape == (3, 32, 32) and x.flags.c_contiguous
    np.testing.assert_array_equal(x, images.resize(images.decode(p, 3), 32).transpose(2, 0, 1))
    assert images.load_image(p, 32, 1).shape == (1, 32, 32)
    with pytest.raises(ValueError, match="invalid channels 2"):
        images.load_image(p, 32, 2)


def test_load_image_big_jpeg_uses_same_policy(tmp_path):
    img = Image.new("RGB", (1200, 800), (20, 20, 20))
    img.paste((240, 240, 240), (550, 350, 650, 450))  # bright square in the centre
    p = save(img, tmp_path / "big.jpg", quality=95)
    fast = images.load_image(p, 32, 3).astype(int)
    full = images.resize(images.decode(p, 3), 32).transpose(2, 0, 1).astype(int)
    assert np.abs(fast - full).mean() < 3
    assert fast[:, 16, 16].min() > 200 and fast[:, 2, 2].max() < 40


def test_load_images_skips_bad_files_and_reports(tmp_path):
    good = [save(Image.fromarray(noise(20 + i, 30, i)), tmp_path / f"g{i}.png") for i in range(3)]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "t.jpg"
    text.write_text("hello")
    paths = [good[0], empty, good[1], text, good[2]]
    calls = []
    r = images.load_images(paths, 16, 3, progress=lambda d, t, **kw: calls.append((d, t)))
    assert r.images.shape == (3, 3, 16, 16) and r.images.dtype == np.uint8
    assert r.paths == good
    assert r.skipped == [(empty, "empty file"), (text, "not an image")]
    for i, p in enumerate(good):
        np.testing.assert_array_equal(r.images[i], images.load_image(p, 16, 3))
    assert calls[-1] == (5, 5) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    parallel = images.load_images(paths, 16, 3, workers=2)
    np.testing.assert_array_equal(parallel.images, r.images)
    assert parallel.paths == r.paths and parallel.skipped == r.skipped


def test_load_images_all_bad_gives_empty_array(tmp_path):
    p = tmp_path / "x.png"
    p.write_text("nope")
    r = images.load_images([p], 24, 1)
    assert r.images.shape == (0, 1, 24, 24) and r.paths == [] and r.skipped == [(p, "not an image")]
    with pytest.raises(ValueError, match="invalid workers -1"):
        images.load_images([p], 24, 1, workers=-1)


# --- finding files -------------------------------------------------------------------------


def test_find_images_order_recursion_hidden_and_loops(tmp_path):
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in ["b.png", "a.PNG", "a-b.jpeg", "sub/c.JpG", "sub/deeper/d.webp", "sub/.e.png",
                ".hidden/f.png", "notes.txt", "sub/g.tiff"]:  # fmt: skip
        (root / rel).write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.bmp").write_bytes(b"x")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "link").symlink_to(outside, target_is_directory=True)
    found = images.find_images(root)
    rel = [p.relative_to(root).as_posix() for p in found]
    # sorted as strings: '-' sorts before '.' and '/'
    assert rel == ["a-b.jpeg", "a.PNG", "b.png", "link/o.bmp", "sub/c.JpG", "sub/deeper/d.webp", "sub/g.tiff"]
    assert all(p.is_relative_to(root) for p in found)
    assert images.find_images(str(root)) == found


def test_find_images_explicit_files_and_missing(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.gif").write_bytes(b"x")
    odd = tmp_path / "notes.txt"
    odd.write_text("x")
    assert images.find_images([odd, tmp_path / "d"]) == [odd, tmp_path / "d" / "x.gif"]
    assert images.find_images(tmp_path / "d" / "x.gif") == [tmp_path / "d" / "x.gif"]
    (tmp_path / "empty").mkdir()
    assert images.find_images(tmp_path / "empty") == []
    with pytest.raises(FileNotFoundError, match="nowhere"):
        images.find_images([tmp_path / "d", tmp_path / "nowhere"])


def test_resolve_channels(tmp_path):
    g = save(Image.new("L", (4, 4)), tmp_path / "g.png")
    g16 = save(Image.fromarray(np.zeros((4, 4), np.uint16)), tmp_path / "g16.png")
    rgb = save(Image.new("RGB", (4, 4)), tmp_path / "c.png")
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    assert images.resolve_channels([g, g16, bad], "auto") == 1
    assert images.resolve_channels([g, rgb], "auto") == 3
    assert images.resolve_channels([g], 3) == 3 and images.resolve_channels([rgb], "1") == 1
    with pytest.raises(ValueError, match="'rgb'.*'auto', 1, 3"):
        images.resolve_channels([g], "rgb")
    with pytest.raises(ImageReadError, match="not an image"):
        images.gray_mode(bad)


# --- output helpers ------------------------------------------------------------------------


def test_float_uint8_round_trip():
    x = np.arange(256, dtype=np.uint8)
    f = images.to_float(x)
    assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0
    np.testing.assert_array_equal(images.to_uint8(f), x)
    assert images.to_uint8(np.array([-1.0, 0.5, 2.0, np.nan])).tolist() == [0, 128, 255, 0]


@pytest.mark.parametrize("c", [1, 3])
def test_save_png_round_trip(tmp_path, c):
    x = noise(9, 7)[..., :c].transpose(2, 0, 1).copy()
    p = tmp_path / "new" / "dir" / "x.png"
    images.save_png(x, p)
    with Image.open(p) as img:
        back = np.asarray(img)
    np.testing.assert_array_equal(back.reshape(9, 7, c).transpose(2, 0, 1), x)
    images.save_png(images.to_float(x), p)  # float input, overwriting
    with Image.open(p) as img:
        np.testing.assert_array_equal(np.asarray(img).reshape(9, 7, c).transpose(2, 0, 1), x)
    assert sorted(f.name for f in p.parent.iterdir()) == ["x.png"]  # no temp file left
    with pytest.raises(ValueError, match="shape"):
        images.save_png(np.zeros((2, 4, 4), np.uint8), p)


def test_make_grid():
    xs = np.zeros((5, 3, 4, 6), np.float32)
    g = images.make_grid(xs, ncol=3, pad=2)
    assert g.shape == (3, 2 * (4 + 2) + 2, 3 * (6 + 2) + 2) and g.dtype == np.float32
    assert g[:, 0].min() == 1.0 and g[:, 2:6, 2:8].max() == 0.0
    assert g[:, 8:12, 18:24].min() == 1.0  # sixth cell is empty: background
    u = images.make_grid(np.zeros((2, 1, 4, 4), np.uint8), ncol=8, pad=1)
    assert u.shape == (1, 6, 11) and u.dtype == np.uint8 and u[0, 0, 0] == 255


def test_heatmap_overlay():
    image = np.full((1, 4, 5), 100, np.uint8)
    heat = np.zeros((4, 5))
    heat[1, 2] = 7.0
    heat[3, 4] = np.nan
    out = images.heatmap_overlay(image, heat, alpha=0.5)
    assert out.shape == (3, 4, 5) and out.dtype == np.uint8
    assert out[:, 1, 2].tolist() == [176, 178, 132]  # (100 + inferno(1)) / 2, rounded
    assert out[:, 0, 0].tolist() == [50, 50, 52]  # (100 + inferno(0)) / 2
    assert out[:, 3, 4].tolist() == [50, 50, 52]  # NaN counts as no heat
    flat = images.heatmap_overlay(image, np.zeros((4, 5)), alpha=0.0)
    assert (flat == 100).all()
    with pytest.raises(ValueError, match="alpha 2"):
        images.heatmap_overlay(image, heat, alpha=2)


def test_images_and_cache_never_import_torch():
    code = "import sys; sys.modules['torch'] = None; import vaekit.images, vaekit.training.cache; print('ok')"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
