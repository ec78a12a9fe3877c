"""A source image's size, as a code file keeps it: read from its header when it is encoded, and
restored around the model's square when it is decoded at its original size (`--size original`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vaekit import images as imageio


def original_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file as vaekit decodes it (EXIF rotation applied), header only."""
    import warnings

    with warnings.catch_warnings(), imageio.open_image(path) as img:
        warnings.simplefilter("ignore")  # a big image's DecompressionBombWarning: we only read its header
        w, h = img.size
        orientation = imageio.exif_orientation(img)  # as decoding reads it, a broken EXIF block included
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


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
    """Undo the model's preprocessing geometry: uint8 (C, s, s) -> (C, height, width).

    The model saw the centre square of the source, its shorter side resized to s; that square
    is resized back (bicubic) and put in the centre, and the margins the crop cut off, which no
    code describes, repeat its edge pixels.
    """
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    m = min(h, w)
    img = Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0))
    y = np.asarray(img.resize((m, m), Image.Resampling.BICUBIC))
    y = y[..., None] if y.ndim == 2 else y
    top, left = (h - m) // 2, (w - m) // 2
    y = np.pad(y, ((top, h - m - top), (left, w - m - left), (0, 0)), mode="edge")
    return np.ascontiguousarray(y.transpose(2, 0, 1))
