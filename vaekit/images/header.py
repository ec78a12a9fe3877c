"""What an opened image's header says before any pixel is decoded: its EXIF orientation, the
size decoding will give (rotation applied), and the raw mode of its samples."""

from __future__ import annotations

from PIL import Image

from vaekit.images import png_rows


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8) decoding applies to `img`; 1 when there is none or it is broken.
    Every reader of an image's displayed size asks here, so sizes and pixels cannot disagree."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # broken EXIF should not cost us good pixels
        return 1


def _header_orientation(img: Image.Image) -> int:
    """exif_orientation before decoding: Pillow decodes a whole PNG to look for EXIF after its pixel
    data (0.5 s for 4000 x 4000); where no chunk follows them, what was read at open is all there is."""
    if img.format == "PNG" and "exif" not in img.info and getattr(img, "fp", None) is not None:
        at = img.fp.tell()
        try:
            img.fp.seek(0)
            after = png_rows.chunks_after_pixels(img.fp)
        finally:
            img.fp.seek(at)
        if not after:
            try:
                return int(Image.Image.getexif(img).get(0x0112, 1))  # the info read at open, no pixels decoded
            except Exception:  # as exif_orientation: broken EXIF costs nothing
                return 1
    return exif_orientation(img)


def shown_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as decoding gives it, EXIF rotation applied, from the
    header. Pillow reports a rotated TIFF's shown size at open already (and drops the tag on load):
    its stored size, from its own tags, tells whether the sides were swapped."""
    w, h = img.size
    if _header_orientation(img) not in (5, 6, 7, 8):
        return w, h
    stored = (img.tag_v2.get(256), img.tag_v2.get(257)) if img.format == "TIFF" else (w, h)
    return (w, h) if stored != (w, h) else (h, w)


def raw_mode(img: Image.Image) -> str:
    """The raw mode of an opened image's first tile ("RGB;16B" for a 16-bit RGB PNG that Pillow
    opens as mode RGB), or "" where it has none; a plain tuple before Pillow 11, args a tuple in TIFFs."""
    args = img.tile[0][3] if img.tile else ""
    args = args[0] if isinstance(args, tuple) and args else args
    return args if isinstance(args, str) else ""


def key_at_8_bits(img: Image.Image) -> None:
    """A PNG's colour key (tRNS) as the 8-bit pixels decoding gives: a 1-, 2- or 4-bit grey key
    scaled as its pixels are; a 16-bit RGB key dropped, since those pixels are read at their high
    byte and no 8-bit value tells the key's from others (an opaque 255-white matched a key of 255)."""
    key, raw = img.info.get("transparency"), raw_mode(img)
    if key is None or img.mode not in ("L", "RGB"):
        return
    if ";16" in raw:
        del img.info["transparency"]
    elif raw in ("L;1", "L;2", "L;4") and isinstance(key, int):
        bits = int(raw[-1])
        img.info["transparency"] = key * 255 // (2**bits - 1)
