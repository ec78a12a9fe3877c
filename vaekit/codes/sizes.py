"""A source image's size, as a code file keeps it: read from its header when it is encoded, and
restored around the model's square when it is decoded at its original size (`--size original`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vaekit import images as imageio


def original_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file as vaekit decodes it (EXIF rotation applied), header only."""
    w, h = imageio.file_shown_size(path)
    return h, w


GONE = "removed or replaced while the job ran"


def source_facts(path: Path) -> tuple[tuple[int, int], int] | str:
    """((height, width), bytes) of a source file decoded a moment ago, or why they cannot be had
    now: a file removed or replaced since is skipped and named, as an unreadable one is (a folder
    emptied by another process ended the whole job with '[Errno 2] No such file or directory')."""
    try:
        return original_size(path), path.stat().st_size
    except (OSError, ValueError):  # not found, not an image any more (ImageReadError is a ValueError)
        return GONE


def restore_size(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Undo the model's preprocessing geometry: uint8 (C, s, s) -> (C, height, width)
    (`restore_image`, as an array)."""
    y = np.asarray(restore_image(x, size))
    return np.ascontiguousarray(y[None] if y.ndim == 2 else y.transpose(2, 0, 1))


def restore_image(x: np.ndarray, size: Sequence[int]):
    """Undo the model's preprocessing geometry: uint8 (C, s, s) -> a Pillow image of (height, width).

    The model saw the centre square of the source, its shorter side resized to s; that square
    is resized back (bicubic) and put in the centre, and the margins the crop cut off, which no
    code describes, repeat its edge pixels. Built in Pillow, so that an image of the largest
    recorded size (MAX_ORIG_PIXELS) is held twice at most (the square and the whole), never
    through numpy's padded and transposed copies (four to five times: 2 GB for three such
    images a forged header asked for)."""
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    m = min(h, w)
    square = Image.fromarray(x[0] if x.shape[0] == 1 else np.ascontiguousarray(x.transpose(1, 2, 0)))
    square = square.resize((m, m), Image.Resampling.BICUBIC)
    if (h, w) == (m, m):
        return square
    whole = Image.new(square.mode, (w, h))
    top, left = (h - m) // 2, (w - m) // 2
    whole.paste(square, (left, top))
    edge = Image.Resampling.NEAREST  # a one-pixel line stretched: its pixels repeated
    if w > m:  # the left and right margins repeat the square's first and last column
        for x0, col, width in ((0, 0, left), (left + m, m - 1, w - m - left)):
            if width:
                whole.paste(square.crop((col, 0, col + 1, m)).resize((width, m), edge), (x0, top))
    else:
        for y0, row, height in ((0, 0, top), (top + m, m - 1, h - m - top)):
            if height:
                whole.paste(square.crop((0, row, m, row + 1)).resize((m, height), edge), (left, y0))
    return whole
