"""Decoding one image file: open safely, convert any Pillow mode to uint8, resize to the model.

Numpy and Pillow only, never torch: training (through the pixel cache) and the onnxruntime engine
both preprocess with `load_image`, so the two cannot drift. Each Pillow pitfall we know of (16-bit,
palette transparency, EXIF rotation, truncated files, decompression bombs) is handled once, here.

Every file is opened the same way (`open_image`): `stat` first (following links) and only a
regular file goes on, opened non-blocking, so a FIFO or device named x.png is skipped,
never waited on; and Pillow may only use the documented formats (FORMATS), so a
PostScript file named x.png is "not an image" instead of a Ghostscript run.
"""

from __future__ import annotations

import errno
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vaekit.config import MAX_READ_SIZE
from vaekit.images import convert, png_rows
from vaekit.images.header import exif_orientation, key_at_8_bits, raw_mode, shown_size
from vaekit.errors import BadInput, DamagedFile
from vaekit.fileio import NotRegularFile, open_regular_file

# Pillow warns of metadata it skips (bad EXIF, palette transparency) and of sizes between 1x and
# 2x its bomb limit; vaekit judges the pixels itself and rejects anything over 1x (see _read).
# Filters installed once, for Pillow's own warnings only: `warnings.catch_warnings` is not
# thread-safe, and images are decoded in a read-ahead thread while the caller goes on.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")

# The only decoders Pillow may pick, whatever a file's bytes claim: the formats vaekit documents.
# (Pillow's EPS plugin alone would run Ghostscript on a PostScript file named .png.)
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
MAX_RESIZE_PIXELS = 1 << 26  # 67 M px (~200 MB RGB); a file needing more to resize is skipped: the resize works on
# the image scaled so its shorter side is `size`, and a 1 x 1,000,000 strip would be 64 x 64,000,000 px first
# A surface model reads a whole image (crop=False) and keeps it, its tiles and their maps at once:
# at most 16 tiles of 1024 px (256 of 256 px); a longer strip is skipped, with that reason.
MAX_WHOLE_PIXELS = 1 << 24
_CHANNELS = ("auto", 1, 3, "1", "3")
_PLAIN_REASONS = ((MemoryError, "not enough memory to decode it"), (PermissionError, "permission denied"),
                  (IsADirectoryError, "is a folder, not a file"))


class ImageReadError(DamagedFile):
    """One file that could not be decoded; `reason` is short and meant for people. Loading many
    files skips such a file and reports it; reading one file alone raises it."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(path, reason)  # both in args, so the error survives pickling
        self.path, self.reason = Path(path), reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _reason(exc: BaseException, path: Path | None = None) -> str:
    if isinstance(exc, Image.DecompressionBombError):  # not an OSError; Pillow's, at open, past twice the limit
        n, webp = re.search(r"\((\d+) pixels\)", str(exc)), path is not None and path.suffix.lower() == ".webp"
        return (f"decompression bomb: {n[1]} pixels > limit {pixel_limit('WEBP' if webp else None)}"  # as `bomb` says it
                + (" (a WebP's limit is half the others')" if webp else "")) if n else f"decompression bomb: {exc}"
    if isinstance(exc, UnidentifiedImageError):  # an OSError, so test it before those below
        return "not an image"  # or not one of FORMATS
    for kind, reason in _PLAIN_REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return "its path is longer than the file system takes"
    if isinstance(exc, FileNotFoundError):
        return "broken symbolic link" if path is not None and path.is_symlink() else "file not found"
    return f"truncated or corrupt: {str(exc) or type(exc).__name__}"


def _open_file(path: Path):
    """The file at `path` opened for reading (vaekit.fileio.open_regular_file: a regular file,
    never a FIFO or a device); ImageReadError for anything else, and for an empty file."""
    try:
        f = open_regular_file(path)
    except NotRegularFile:
        raise ImageReadError(path, "not a regular file (a FIFO, socket or device)") from None
    except IsADirectoryError:
        try:
            os.scandir(path).close()
        except OSError as exc:  # find_images lists a sub-folder it could not read, to name it here
            raise ImageReadError(path, f"unreadable folder, its images were skipped ({_reason(exc, path)})") from None
        raise
    if os.fstat(f.fileno()).st_size == 0:
        f.close()
        raise ImageReadError(path, "empty file")
    return f


@contextmanager
def open_image(path: str | Path, check_rows: bool = False) -> Iterator[Image.Image]:
    """Image.open on a checked regular file (see _open_file), with only the FORMATS decoders
    allowed; the image and the file are closed on exit. Every image vaekit reads goes through
    here. check_rows: once the caller's block has decoded the pixels, a PNG whose data ends
    before its last row (which Pillow fills with black) raises ImageReadError."""
    f = _open_file(Path(path))
    try:
        with Image.open(f, formats=FORMATS) as img:
            yield img
            if check_rows and img.format == "PNG":
                f.seek(0)
                if (why := png_rows.missing_rows(f)) is not None:
                    raise ImageReadError(path, why)
    finally:
        f.close()


def file_shown_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as decoding gives it (EXIF rotation applied), from its
    header: no pixel is decoded (a big image's DecompressionBombWarning is ignored, above)."""
    with open_image(path) as img:
        return shown_size(img)


def header_problem(path: str | Path) -> str | None:
    """Why the file at `path` cannot be read as an image, judged from its header alone (not a
    regular file, empty, not an image of FORMATS, a decompression bomb); None when its header reads.
    A damaged body is found only when the pixels are decoded."""
    path = Path(path)
    try:
        with open_image(path) as img:
            return bomb(img)
    except ImageReadError as e:
        return e.reason
    except Exception as exc:  # Pillow's zoo, as in _decode_full
        return _reason(exc, path)


def check_channels(channels: int) -> None:
    """BadInput unless `channels` is 1 (gray) or 3 (RGB)."""
    if channels not in (1, 3) or isinstance(channels, bool):
        raise BadInput(f"invalid channels {channels!r}: expected 1 (gray) or 3 (RGB)")


def check_size(size: int) -> None:
    """BadInput unless `size` is an integer from 16 to MAX_READ_SIZE (a model's own size is at most
    MAX_IMAGE_SIZE; a surface model reads its files at up to MAX_READ_SIZE)."""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 16 <= size <= MAX_READ_SIZE:
        raise BadInput(f"invalid size {size!r}: expected an integer from 16 to {MAX_READ_SIZE}")


def resize_pixels(h: int, w: int, size: int) -> int:
    """Pixels of the intermediate image `resize` makes of an h x w image (shorter side -> size)."""
    s = size / min(h, w)
    return max(size, round(w * s)) * max(size, round(h * s))


def gray_mode(path: Path) -> bool:
    """Whether `path` is stored as grayscale; reads the header only."""
    try:
        with open_image(path) as img:
            # Pillow opens a 16-bit grey-and-alpha PNG as RGBA (R = G = B): its raw mode says grey
            return convert.is_gray(img.mode) or (img.format == "PNG" and raw_mode(img).startswith("LA;16"))
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, _reason(exc, Path(path))) from exc


def not_exact(path: Path, channels: int) -> str | None:
    """Why `decode(path, channels)` would not give the file's own pixel values (so a lossless
    archive must refuse it), or None when it would: only a one-frame 8-bit 'L' (channels 1) or
    'RGB' (channels 3) image without transparency qualifies; 16-bit, alpha, palettes (even
    exact ones), 1-bit and colour converted to grey do not. Reads the header only."""
    want = "L" if channels == 1 else "RGB"
    try:
        with open_image(path) as img:
            mode, frames = img.mode, getattr(img, "n_frames", 1)
            transparent, raw = "transparency" in img.info, raw_mode(img)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(path, _reason(exc, Path(path))) from exc
    if mode != want:
        return f"stored as Pillow mode {mode!r}, not 8-bit {want!r}: its pixels would not come back exactly"
    if ";16" in raw or ";32" in raw:  # Pillow opens 16-bit RGB as 'RGB', its low bytes dropped
        return f"stored with {raw!r} samples, not 8-bit {want!r}: its pixels would not come back exactly"
    if transparent:
        return "has transparency: its alpha would not come back"
    if frames > 1:
        return f"has {frames} frames: only the first would come back"
    return None


def resolve_channels(paths: Sequence[Path], channels: str | int) -> int:
    """1 or 3 from a user's `channels`; 'auto' is 1 when every readable image is stored gray."""
    if channels not in _CHANNELS or isinstance(channels, bool):
        raise BadInput(f"invalid channels {channels!r}: expected one of 'auto', 1, 3")
    if channels != "auto":
        return int(channels)
    grays = []
    for p in paths:
        try:
            grays.append(gray_mode(p))
        except ImageReadError:
            continue  # load_images reports it; it must not decide the colour mode
    return 1 if grays and all(grays) else 3


def _decode(path: Path, channels: int, draft: int | None = None, expand: bool = True) -> np.ndarray:
    """uint8 (H, W, C) of a file's first frame, EXIF rotation applied. C is `channels`, or with
    expand=False 1 for a gray image (the caller repeats it after resizing, which is cheaper).

    The file is opened (open_image), bomb-checked before any pixel is decoded, and converted
    strip by strip (images.convert) while Pillow's copy is alive; that copy is freed before
    the rotation, so memory peaks at Pillow's pixels plus one uint8 copy."""
    return _decode_full(path, channels, draft, expand)[0]


def pixel_limit(fmt: str | None) -> int | None:
    """The most pixels a file of format `fmt` may declare before it is refused undecoded: Pillow's
    decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`; None: none), half of it for WebP, whose
    decoding holds ~15 bytes a pixel (libwebp's two canvases of 4, Pillow's copy of the frame and
    its own image: 1.6 GB at 9400 x 9400 px, where a PNG of that size peaks at 0.7 GB)."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit // 2 if limit is not None and fmt == "WEBP" else limit


def bomb(img: Image.Image) -> str | None:
    """Why an opened image is refused undecoded (more pixels than `pixel_limit`), or None."""
    limit, (w, h) = pixel_limit(img.format), img.size
    if limit is None or w * h <= limit:
        return None
    return f"decompression bomb: {w * h} pixels > limit {limit}" + (
        " (a WebP's limit is half the others')" if img.format == "WEBP" else "")


def _decode_full(path: Path, channels: int, draft: int | None = None, expand: bool = True,
                 before: Callable[[tuple[int, int]], None] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """`_decode`, and the (H, W) of the whole image at full resolution, rotated alike: a JPEG
    decoded at 1/8 scale rounds its sides up, so its aspect ratio is read from this. `before`
    gets the (H, W) from the header (not rotated) and may raise before anything is decoded."""
    check_channels(channels)
    path = Path(path)
    try:
        with open_image(path, check_rows=True) as img:
            full = img.size
            if draft is not None and img.format in ("JPEG", "MPO"):
                # JPEG can decode at 1/2, 1/4 or 1/8 scale; draft keeps both sides >= draft.
                # It only sets the scale, so the check below judges what is really decoded:
                # a 100-megapixel photo read at 1/8 scale is no bomb.
                img.draft(None, (draft, draft))
            if (why := bomb(img)) is not None:
                raise ImageReadError(path, why)
            if before is not None:  # judged from the header, before a pixel is decoded
                before((full[1], full[0]))
            key_at_8_bits(img)  # before load, which forgets the raw mode
            img.load()  # first frame: a freshly opened animation sits on frame 0
            orientation = exif_orientation(img)
            x = convert.to_uint8(img, channels)
    except ImageReadError:
        raise
    except Exception as exc:  # Pillow's decoders raise a zoo of types on corrupt data
        raise ImageReadError(path, _reason(exc, path)) from exc
    x = convert.orient(x, orientation)
    hw = (full[0], full[1]) if orientation in (5, 6, 7, 8) else (full[1], full[0])  # these swap the sides
    return (np.repeat(x, 3, axis=-1) if expand and channels == 3 and x.shape[-1] == 1 else x), hw


def decode(path: Path, channels: int) -> np.ndarray:
    """Full-resolution uint8 (H, W, channels); raises ImageReadError for an unusable file.

    Animations give their first frame; EXIF rotation is applied; 16-bit and float images
    are scaled, not clipped; transparent pixels are composited over black.
    """
    return _decode(path, channels)


def resize(x: np.ndarray, size: int, crop: bool = True, full: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 (size, size, C), C 1 or 3.

    Policy: scale so the shorter side is `size` (Pillow bicubic, antialiased when shrinking),
    then crop the longer side to `size` around its centre. Square input of that size is
    returned as is. crop=False keeps the whole image: (H', W', C), its shorter side `size`.
    full: the (H, W) whose aspect ratio the result keeps, when `x` is a reduced decode of it.
    """
    check_size(size)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[-1] not in (1, 3):
        raise BadInput(f"expected a uint8 (H, W, 1|3) array, got {x.dtype} {x.shape}")
    h, w = x.shape[:2]
    if h == w == size and (full is None or full[0] == full[1]):
        return x
    if resize_pixels(h, w, size) > MAX_RESIZE_PIXELS:
        raise BadInput(f"a {w}x{h} image is too elongated to resize to {size}: the intermediate image would have "
                       f"{resize_pixels(h, w, size)} pixels, at most {MAX_RESIZE_PIXELS}")
    fh, fw = full or (h, w)
    s = size / min(fh, fw)
    nw, nh = max(size, round(fw * s)), max(size, round(fh * s))
    img = Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)
    y = np.asarray(img.resize((nw, nh), Image.Resampling.BICUBIC) if (nw, nh) != (w, h) else img)
    if crop:
        top, left = (nh - size) // 2, (nw - size) // 2
        y = y[top : top + size, left : left + size]
    return y[..., None] if y.ndim == 2 else y


def load_image(path: Path, size: int, channels: int, crop: bool = True) -> np.ndarray:
    """Decode and resize one file to uint8 (C, size, size): the preprocessing both engines use.
    crop=False keeps the whole image, (C, H, W) with its shorter side `size` (a surface model
    scores it in tiles: vaekit.images.tiles).

    Large JPEGs are decoded at reduced scale (never below `size` on either side) before the
    bicubic resize, which is much faster and keeps the same shorter-side-then-crop policy.
    """
    check_size(size)

    def resizable(full: tuple[int, int]) -> None:  # from the header: a 1 x 89 M strip is never decoded
        need = resize_pixels(*full, size)  # the same either way round
        if need > MAX_RESIZE_PIXELS:
            raise ImageReadError(path, f"aspect ratio too extreme: {full[1]}x{full[0]} resized to {size} would "
                                       f"take {need} pixels, at most {MAX_RESIZE_PIXELS}")
        if not crop and need > MAX_WHOLE_PIXELS:
            raise ImageReadError(path, f"too elongated to score whole: {full[1]}x{full[0]} at the model's {size} "
                                       f"px would be {need} pixels, at most {MAX_WHOLE_PIXELS}; cut it into shorter pieces")

    # gray stays one channel until resized
    x, full = _decode_full(path, channels, draft=size, expand=False, before=resizable)
    resizable(full)  # rotated: the sides the message names
    try:
        # whole, the full image's aspect ratio; the centre square as vaekit always cut it (the
        # pixel cache's entries and every run's data fingerprint depend on it)
        x = resize(x, size, crop, None if crop else full)  # (H, W, C)
    except MemoryError:
        raise ImageReadError(path, "not enough memory to resize it") from None
    if channels == 3 and x.shape[-1] == 1:  # the same pixels as resizing three equal channels
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]."""
    return x.astype(np.float32) / 255


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> uint8, clipped and rounded; NaN becomes 0."""
    return np.rint(np.clip(np.nan_to_num(x, nan=0.0), 0, 1) * 255).astype(np.uint8)

