"""How much of each image a model learns from: the pixel cache holds each image's centre square
(its shorter side), so a model trains on that square alone. An object model also scores that
square alone, so a defect outside it is never seen; a surface model scores the whole image, so
what lies outside the square is judged by a model that never learned it. Neither was said: the
plan line now says so when the images are not square (measured on a folder of 400 x 40 strips
with dark ends: a surface model's normal strips lit up at both ends, recall 0 at its threshold)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

SAMPLE = 512  # files whose headers are read, evenly spaced
KEPT = 0.9  # an image whose centre square holds less of it than this counts as cut
NOTED = 0.1  # the share of such images from which the plan says so


def kept_shares(paths: Sequence[Path]) -> np.ndarray:
    """The share of each (sampled) image its centre square holds: min(w, h)**2 / (w * h), from
    the headers (as shown, EXIF rotation applied); unreadable files are left out."""
    from vaekit.images import open_image
    from vaekit.images.header import shown_size

    shares = []
    for p in list(paths)[:: max(1, len(paths) // SAMPLE)]:
        try:
            with open_image(p) as img:
                w, h = shown_size(img)
            shares.append(min(w, h) / max(w, h))
        except Exception:  # noqa: BLE001 - unreadable files are skipped, and reported, by the decoding pass
            continue
    return np.asarray(shares, float)


def crop_note(paths: Sequence[Path], layout: str) -> str | None:
    """One sentence for the plan when at least NOTED of the images lose more than 1 - KEPT of their
    area to the centre square, else None."""
    shares = kept_shares(paths)
    cut = shares[shares < KEPT]
    if not len(shares) or len(cut) < NOTED * len(shares):
        return None
    kept = f"{np.median(cut):.0%}"
    what = f"{len(cut)} of {len(shares)} images{' sampled' if len(paths) > len(shares) else ''} are not square"
    if layout == "grid":
        return (f"{what}: the model learns from the centre square of each (a median {kept} of it) and scores "
                "the whole image, so what lies outside that square is judged by a model that never saw it; "
                "crop the images square, or cut them into square tiles, to train on all of them")
    return (f"{what}: the model learns from and scores the centre square of each (a median {kept} of it); "
            "a defect outside it is never seen; crop the images to what matters, or cut them into square tiles")
