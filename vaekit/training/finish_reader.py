"""A surface model's defect reader (vaekit.reader), trained at the end of a run beside the VAE.

The reader is a small segmentation network that learns, from vaekit's own synthetic defects on
the training images, to point at what does not belong (DRAEM-style). On the development
textures it beat the VAE's atypicality on both halves (docs/detection.md), so it gives a
surface's default score, "defect": the largest smoothed defect probability in the image. Its
threshold must come from images it never trained on: with held-out splits, the calibration
split (with few images, one held-out fold: vaekit.training.splits.plan_splits); when a run is
cross-fitted (asked for with --folds), the reader leaves out one fold and calibrates on it,
since a reader per fold would cost five more trainings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vaekit.training import rundir
from vaekit.reader.score import READ_TILE
from vaekit.training.data import gather
from vaekit.training.whole import iter_whole_tiles, per_image_max

CHUNK_PIXELS = 64 * 256 * 256  # images read at a time while calibrating
READER_PIXELS = 1 << 25  # a surface read larger than the model's size: the reader trains on windows of at most this many pixels
WINDOW = 256  # ... each this many pixels square, drawn at random from every training image


@dataclass
class TrainedReader:
    config: dict  # asdict(ReaderConfig), stored in config.json as "reader"
    scores: np.ndarray  # its image scores of held-out normal images
    source: str  # which images those are ("calibration", "held-out fold")
    fingerprint: str  # of its weights (vaekit.training.rundir.fingerprint), stored in config.json


def train_and_calibrate(out_dir, data, splits, train_cfg, tile: int, progress=None, should_stop=None) -> TrainedReader | None:
    """Train the reader on the training images (all but one fold when cross-fitted), save it as
    reader.safetensors, and score the held-out normal images (read whole, in `tile` px tiles, the
    model's size); None when asked to stop."""
    from vaekit.reader.net import ReaderConfig
    from vaekit.reader.train import for_reading, load_reader, train_reader

    if splits.crossfit:
        held, source = splits.folds[0], "held-out fold"
        train_idx = np.setdiff1d(splits.train, held)
    else:
        held, source = (splits.cal, "calibration") if len(splits.cal) else (splits.val, "validation")
        train_idx = splits.train
    if len(held) == 0:  # nothing held out at all: the training images, as the other scores do
        held, source = splits.train, "training"
    held = held[splits.distinct(held)]  # a copy's score counted once
    cfg = ReaderConfig()
    stopped = {"yes": False}

    def stop() -> bool:  # asked from the members' threads at once: once True, True
        if should_stop is not None and should_stop():
            stopped["yes"] = True
        return stopped["yes"]

    report = (lambda done, total, **m: progress(done, total, phase="reader", **m)) if progress else None
    state = train_reader(training_images(data, train_idx, tile, train_cfg.seed), None, cfg, seed=train_cfg.seed,
                         progress=report,
                         should_stop=stop)
    if stopped["yes"]:
        return None
    rundir.save_tensors(out_dir / rundir.READER, state, {"format": "vaekit-reader/1"})
    scores = read_scores(for_reading(load_reader(state, cfg)), data, held, tile)  # copied once, read by chunks
    return TrainedReader(_json_config(cfg), scores, source, rundir.fingerprint(state))


def training_images(data, idx, tile: int, seed: int) -> np.ndarray:
    """What the reader trains on (it draws its crops from them): the training images as cached, at
    most READER_PIXELS of them (its 450 steps draw ~22,000 crops in all; a copy of every image held
    3,000 of 256 px in RAM, and grew with the folder), or, when they are cached larger than the
    model's `tile` and hold more than that (a surface read at its own large size), WINDOW px windows
    drawn at random from each of them, as many as fit (from a seeded subset of them where even one
    window each would not). A surface learning from its images whole (vaekit.training.wide) gives
    their squares instead, every square of each training image counting as an image here."""
    images = data.images
    if data.wide is not None:
        images, idx = data.wide.tiles, data.wide.rows(idx)
    n, side = len(idx), images.shape[-1]
    if n * side**2 <= READER_PIXELS:
        return np.asarray(gather(images, idx))
    if side <= tile or side <= WINDOW:
        return np.asarray(gather(images, _subset(idx, READER_PIXELS // side**2, seed)))
    idx = _subset(idx, READER_PIXELS // WINDOW**2, seed)
    k, rng = max(1, READER_PIXELS // (len(idx) * WINDOW**2)), np.random.default_rng(seed)
    out = np.empty((len(idx) * k, images.shape[1], WINDOW, WINDOW), images.dtype)
    for j, i in enumerate(idx):
        x = gather(images, np.array([i]))[0]
        for m, (y0, x0) in enumerate(rng.integers(0, side - WINDOW + 1, (k, 2))):
            out[j * k + m] = x[:, y0 : y0 + WINDOW, x0 : x0 + WINDOW]
    return out


def _subset(idx, most: int, seed: int) -> np.ndarray:
    """At most `most` (at least 1) of the images `idx`, drawn with `seed`, in folder order."""
    idx = np.asarray(idx)
    if len(idx) <= most:
        return idx
    return idx[np.sort(np.random.default_rng(seed).choice(len(idx), max(1, most), replace=False))]


def read_scores(net, data, idx, tile: int) -> np.ndarray:
    """The reader's image scores of images `idx`, each read whole as `anomaly-score` reads its
    file (vaekit.inference.tiled: a wider image in square tiles, its score the largest tile's),
    a pixel-bounded chunk of tiles at a time."""
    from vaekit.reader.train import score_images

    out = [per_image_max(score_images(net, tiles, tile=READ_TILE), counts)
           for tiles, counts in iter_whole_tiles(data, idx, CHUNK_PIXELS, tile)]
    return np.concatenate(out) if out else np.zeros(0)


def _json_config(cfg) -> dict:
    d = asdict(cfg)
    d["shapes"] = list(d["shapes"])
    return d
