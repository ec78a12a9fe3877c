"""What a model can learn from the training images, said before it trains (notes under the plan
line), where nothing said so before:

- The pixel cache holds each image's centre square (its shorter side), so an object model trains
  on that square alone and scores it alone: a defect outside it is never seen. A surface model
  scores the whole image, and learns from the whole of it too (vaekit.training.wide, by the same
  rule as this note: `is_wide`), except where the cache cannot hold the images whole; it then
  learns the centre square, and what lies outside it is judged by a model that never saw it
  (measured on a folder of 400 x 40 strips with dark ends: normal strips lit up at both ends,
  recall 0 at the threshold), which the note says.
- Exact copies: a copy held out for the threshold while its twin trained was an image the model
  knew, so the threshold came out too low (100 copies of one part promised at most 9.1% and
  flagged 88% of new normal parts). `scan` numbers the distinct images, and the splits keep each
  image's copies together (vaekit.training.splits); the note says that every copy still trains.
- Dark images: a 16-bit file is read as value / 257, rounded, so 12-bit camera data stored in 16
  bits trains on 17 grey levels (0 to 16) and nothing said so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SAMPLE = 512  # files whose headers are read, evenly spaced
KEPT = 0.9  # an image whose centre square holds less of it than this counts as cut
NOTED = 0.1  # the share of such images from which the plan says so
DARK = 64  # the brightest pixel of every image at most this: a note (14-bit data read as 16-bit: rint(16383 / 257) = 64)
CHUNK = 256  # cached images read at a time for the survey, at most ...
CHUNK_BYTES = 64 << 20  # ... this many bytes of them (256 RGB images of 1024 px were 805 MB)


def _sampled(paths: Sequence[Path], read) -> list:
    """read(path) of up to SAMPLE evenly spaced files; those that cannot be read are left out (the
    decoding pass skips and names them)."""
    out = []
    for p in list(paths)[:: max(1, len(paths) // SAMPLE)]:
        try:
            out.append(read(p))
        except Exception:  # noqa: BLE001 - Pillow raises a zoo of types on a damaged header
            continue
    return out


def _header(path: Path, what):
    """what(img) of the file at `path`, opened as every image is (vaekit.images.open_image)."""
    from vaekit.images import open_image

    with open_image(path) as img:
        return what(img)


def kept_shares(paths: Sequence[Path]) -> np.ndarray:
    """The share of each (sampled) image its centre square holds: min(w, h)**2 / (w * h), from
    the headers (as shown, EXIF rotation applied); unreadable files are left out."""
    from vaekit.images.header import shown_size

    def share(img) -> float:
        w, h = shown_size(img)
        return min(w, h) / max(w, h)

    return np.asarray(_sampled(paths, lambda p: _header(p, share)), float)


def _cut(shares: np.ndarray) -> np.ndarray:
    """Those of the sampled images' kept_shares that lose more than 1 - KEPT of their area to the
    centre square; empty unless they are at least NOTED of them all."""
    cut = shares[shares < KEPT]
    return cut if len(shares) and len(cut) >= NOTED * len(shares) else cut[:0]


def is_wide(shares: np.ndarray) -> bool:
    """Whether enough images (their kept_shares) are not square for a surface model to learn from
    them whole (vaekit.training.wide) rather than from their centre squares: the crop note's rule."""
    return bool(len(_cut(shares)))


def crop_note(paths: Sequence[Path], layout: str, whole: bool = False) -> str | None:
    """One sentence for the plan when at least NOTED of the images lose more than 1 - KEPT of their
    area to the centre square, else None; None too for a surface model that learns from them
    whole (`whole`: vaekit.training.wide)."""
    shares = kept_shares(paths)
    cut = _cut(shares)
    if not len(cut) or (whole and layout == "grid"):
        return None
    kept = f"{np.median(cut):.0%}"
    what = f"{len(cut)} of {len(shares)} images{' sampled' if len(paths) > len(shares) else ''} are not square"
    if layout == "grid":
        return (f"{what}: the model learns from the centre square of each (a median {kept} of it) and scores "
                "the whole image, so what lies outside that square is judged by a model that never saw it (the "
                "pixel cache could not hold them whole, or the run began on centre squares); crop the images "
                "square, or cut them into square tiles")
    return (f"{what}: the model learns from and scores the centre square of each (a median {kept} of it); "
            "a defect outside it is never seen; crop the images to what matters, or cut them into square tiles")


def scan(images: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(groups, brightest, dark) of the cached images (N, C, H, W) uint8: groups[i] numbers the distinct
    image that image i is an exact copy of (0, 1, ... in order of first appearance), the
    brightest value of any pixel, and how many images have no pixel brighter than DARK. Read CHUNK
    images at a time (with the pixel cache's pread, so a large cache is never all resident)."""
    from vaekit.training.data import gather

    seen: dict[bytes, int] = {}
    groups, brightest, dark = np.empty(len(images), np.int64), 0, 0
    step = max(1, min(CHUNK, CHUNK_BYTES // max(1, images[:1].nbytes)))
    for start in range(0, len(images), step):
        block = gather(images, np.arange(start, min(start + step, len(images))))
        brightest = max(brightest, int(block.max()))
        dark += int((block.reshape(len(block), -1).max(axis=1) <= DARK).sum())
        for k, row in enumerate(block.reshape(len(block), -1), start):
            groups[k] = seen.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), len(seen))
    return groups, brightest, dark


def survey(images: np.ndarray) -> tuple[int, int]:
    """(copies, brightest): how many of the cached images are exact copies of an earlier one, and
    the brightest value of any pixel (`scan`)."""
    groups, brightest, _ = scan(images)
    return len(groups) - len(np.unique(groups)), brightest


def sixteen_bit(paths: Sequence[Path]) -> bool:
    """Whether any of (up to SAMPLE of) the files is stored with 16-bit or wider grey samples, from
    their headers; unreadable files are left out."""
    from vaekit.images.header import raw_mode

    return any(_sampled(paths, lambda p: _header(p, lambda img: img.mode.startswith("I") or ";16" in raw_mode(img))))


def colour_note(paths: Sequence[Path], asked: str | int, channels: int) -> str | None:
    """A sentence for the plan when `--channels auto` chose RGB for a folder stored mostly grey
    (sampled headers; one colour file among thousands of grey ones makes the model RGB: a .vkc
    ~1.6x a grey model's, decoded with a tint), else None."""
    from vaekit.images import gray_mode

    if asked != "auto" or channels != 3:
        return None
    greys = _sampled(paths, gray_mode)
    grey, colour = sum(greys), len(greys) - sum(greys)
    if not colour or grey < colour:
        return None
    what = f"{colour} of {grey + colour} images{' sampled' if len(paths) > grey + colour else ''} are stored in colour"
    return (f"{what} and the rest grey, so the model is RGB for all of them; if colour does not matter, "
            "--channels 1 trains a grey model (a colour image is then read by its luma)")


def pixel_notes(images: np.ndarray, paths: Sequence[Path] = (), scanned: tuple[np.ndarray, int, int] | None = None) -> list[str]:
    """Sentences for the plan about the cached images: exact copies, and images too dark to hold
    more than DARK + 1 grey levels (with why, where `paths` holds 16-bit files); [] when neither.
    `scanned`: scan(images) where the run's splits keep each image's copies together (a run begun
    before 2026-12-07 does not), else None."""
    n = len(images)
    if not n:
        return []
    groups, brightest, dark = scan(images) if scanned is None else scanned
    copies, notes = n - len(np.unique(groups)), []
    what = f"{copies} of {n} images are exact copies of another (as the model sees them, at {images.shape[-1]} px)"
    if copies and scanned is not None:
        notes.append(f"{what}: each is kept in its twin's split, so none is held out for the threshold while its "
                     "twin trains, but every copy trains as one more image; remove the copies unless that is meant")
    elif copies:
        notes.append(f"{what}: a copy held out for the threshold while its twin trains is an image the model knows, so "
                     "the threshold comes out too low and flags more new normal images than it promises; "
                     "remove the copies")
    wide = sixteen_bit(paths) if brightest <= DARK or dark >= NOTED * n else False
    why = ("; a 16-bit file is read as value / 257, so 10- to 14-bit camera data stored in 16 bits keeps 5 to 65 "
           "levels: scale such images to their full range first") if wide else ""
    if brightest <= DARK:
        notes.append(f"the brightest pixel of all {n} images is {brightest} of 255, so the model sees at most "
                     f"{brightest + 1} grey levels{why}")
    elif wide and dark >= NOTED * n:  # 12-bit files among 8-bit (or full-range 16-bit) ones: said too
        notes.append(f"{dark} of {n} images have no pixel brighter than {DARK} of 255, so the model sees at most "
                     f"{DARK + 1} grey levels of them{why}")
    return notes


def plan_notes(data, model_cfg, scanned: tuple[np.ndarray, int, int] | None = None) -> list[str]:
    """Every note for the plan of a run of `model_cfg` on `data` (a training Dataset), in order:
    images not square, a few colour files among grey ones, exact copies, images too dark
    (`scanned`: pixel_notes)."""
    notes = [crop_note(data.paths, model_cfg.layout, data.wide is not None),
             colour_note(data.paths, data.asked_channels, model_cfg.channels),
             *pixel_notes(data.images, data.paths, scanned)]
    return [note for note in notes if note]
