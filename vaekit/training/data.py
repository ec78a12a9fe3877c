"""Training data: a folder of images as a uint8 array, the validation split, and batch reading.

The pixels come from the decoded-pixel cache (vaekit.training.cache), usually a read-only memmap.
Batches are read with positioned reads (see `_gather`) a couple of batches ahead in a thread,
so memory stays flat however large the folder and a GPU is not kept waiting.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from vaekit.errors import DamagedFile
from vaekit.progress import Progress
from vaekit.training.crops import open_mapped
from vaekit.training.splits import CROSSFIT_BELOW



@dataclass
class Dataset:
    images: np.ndarray  # (N, C, H, W) uint8, usually a read-only memmap of the pixel cache
    paths: list[Path]  # the N loaded files, in order
    skipped: list[tuple[Path, str]]  # unreadable files and why
    root: Path  # folder the paths are reported relative to
    fingerprint: str  # names the exact decoded pixels (file list, sizes, mtimes, size, channels)
    cache_hit: bool = False
    pixels: str = ""  # sha256 of the decoded pixels: a file replaced under the same name, size and time changes it
    asked_channels: str | int = "auto"  # what the caller asked for (the images' channels decided "auto")
    wide: object = None  # a surface's images whole, in squares, to train on (vaekit.training.wide.WideImages)


def load_dataset(
    inputs: str | Path,
    image_size: int,
    channels: str | int = "auto",
    cache_dir: Path | None = None,
    workers: int = 0,
    progress: Progress | None = None,
    confine_to: Path | None = None,
) -> Dataset:
    """Find, decode (once; cached) and resize every image under `inputs`; with `confine_to`, no
    link under `inputs` may lead outside that folder (images.find_images)."""
    from vaekit import images
    from vaekit.training import cache

    root = Path(inputs)
    paths = images.find_images(root, confine_to)
    if not paths:
        raise images.NoImagesError(f"no image files found in {root}")
    n_channels = images.resolve_channels(paths, channels)
    cached = cache.load_cached(paths, image_size, n_channels, cache_dir=cache_dir, progress=decoding(progress),
                               workers=workers)
    if len(cached.paths) == 0:
        raise images.none_usable(f"in {root}", cached.skipped)
    base = root if root.is_dir() else root.parent
    return Dataset(cached.images, cached.paths, cached.skipped, base, cached.key, cached.hit, cached.sha256, channels)


def decoding(progress: Progress | None, **extra):
    """The pixel cache's progress callback: `progress`'s, each call a phase="decode" event (with
    `extra`), or None without one."""
    if progress is None:
        return None
    return lambda done, total, **kw: progress(done, total, phase="decode", **extra, **kw)


AUTO_MAX_SIZE = 64  # --image-size auto for aligned objects: the images' own size, at most this (and at least 16)
SURFACE_MAX_SIZE = 3072  # ... for surfaces: their own resolution (a small defect must stay visible), up to this
SAMPLE = 512  # files or images looked at to choose the automatic settings
PROBE = 256  # files decoded (at a small size) to tell aligned objects from surfaces before choosing the size


def median_side(paths: list[Path]) -> int | None:
    """The median shorter side of (up to SAMPLE evenly spaced) files, from their headers only."""
    from vaekit import images

    sides = []
    for p in paths[:: max(1, len(paths) // SAMPLE)]:
        try:
            with images.open_image(p) as img:
                sides.append(min(img.size))
        except Exception:  # unreadable files are skipped, and reported, by the decoding pass
            continue
    return int(np.median(sides)) if sides else None


def auto_image_size(paths: list[Path], layout: str = "vector", side: int | None = None) -> int:
    """The images' median shorter side: for aligned objects within [16, AUTO_MAX_SIZE] (28 px
    digits stay 28 px, and no more compute than 64 px when they are large); for surfaces
    ("grid") their own resolution up to SURFACE_MAX_SIZE, since a defect of 1% of a 512 px
    part is a few pixels at 64 px. A surface model trains on crops (TrainConfig.crop) and reads
    whole images, so its compute per step does not grow with the size. `side`: median_side(paths)
    when the caller has it already."""
    side = side or median_side(paths) or AUTO_MAX_SIZE
    return int(min(SURFACE_MAX_SIZE if layout == "grid" else AUTO_MAX_SIZE, max(16, side)))


def probe_layout(paths: list[Path], channels: int, native: int | None = None) -> str:
    """vector or grid from up to PROBE files decoded at <= AUTO_MAX_SIZE (see image_statistics).
    `native`: median_side(paths) when the caller has it already."""
    from vaekit import images

    native = native or median_side(paths)
    side = min(AUTO_MAX_SIZE, max(16, native or AUTO_MAX_SIZE))
    probed = paths[:: max(1, len(paths) // PROBE)][:PROBE]
    report = images.load_images(probed, side, channels)
    if not len(report.paths):
        return "vector"
    stats = image_statistics(report.images, np.arange(len(report.paths)))
    # every file counts, not only the probe's, but not those that do not decode (they do not train):
    # exact up to PROBE files, else the share of the probed ones that decoded
    usable = round(len(paths) * len(report.paths) / len(probed))
    return choose_layout({**stats, "images": usable}, native)


STATISTICS_SIDE = 1024  # image_statistics looks at images up to this side, larger ones at every k-th pixel
LAYOUT_ALIGNED = 0.1  # aligned-ness at or above which one latent vector describes the images


def image_statistics(images: np.ndarray, idx: np.ndarray) -> dict[str, float]:
    """What the automatic model settings are chosen from, on up to SAMPLE images (grey levels in [0, 1]):
    aligned: variance over positions of the mean image / mean per-pixel variance. Images of one kind
      of object in one place (digits, parts on a fixture) have a structured mean image (0.5-5 for
      MNIST and the sample data); crops of a surface, whose statistics do not depend on position,
      a flat one (0.001-0.015 for the textures of benchmarks/texture_data.py, measured before
      the correction below, which takes ~0.001 off 1000 crops). The mean of n
      images also varies by chance, by about variance / (n - 1): that share is taken off (40
      images of 256 px of each inspection texture of benchmarks/inspection.py: 0.078-0.082
      without it, 0.053-0.057 with it; the cut-off is LAYOUT_ALIGNED).
    aligned_unlit: the same after taking the best quadratic surface in x and y off the mean image
      first. A lamp or a lens lights every image of a fixed camera the same uneven way, and that
      alone gives a surface a structured mean image (a 30% fall-off across 40 images of 256 px:
      0.17-0.44); what a shape leaves in the mean is not quadratic (MNIST 0.24-0.82, faces 0.11).
    binary: share of values within 0.1 of black or white (0.9 for MNIST, ~0 for photographs);
      ends: the smaller of the two shares (MNIST 0.05-0.13: ink and paper; a dark photo 0).
    images: how many images `idx` holds (all of them, not the sample); variance: their mean per-pixel variance."""
    pick = np.sort(idx[:: max(1, len(idx) // SAMPLE)])
    step = -(-images.shape[-1] // STATISTICS_SIDE)  # every step-th pixel of images larger than that
    # one image at a time, summed per pixel (float64): memory is one image's pixels, not the sample's
    # (stacking up to 512 images of 1024 px as float32 took ~8 bytes a sampled pixel: 4 GB grey, 10 GB RGB)
    # (Welford's running mean and sum of squared deviations: identical images have exactly 0 variance)
    mean = spread = None
    dark = light = 0
    for k, i in enumerate(pick, start=1):
        g = gather(images, np.array([i]))[0, :, ::step, ::step].astype(np.float32).mean(0) / 255.0  # (H, W) grey
        if mean is None:
            mean, spread = np.zeros(g.shape), np.zeros(g.shape)
        d = g - mean
        mean += d / k
        spread += d * (g - mean)
        dark, light = dark + int(np.count_nonzero(g < 0.1)), light + int(np.count_nonzero(g > 0.9))
    n = len(pick)
    per_pixel = float((spread / n).mean())  # each pixel's variance over the images, averaged
    variance = max(per_pixel, 1e-12)
    chance = 1.0 / (n - 1) if n > 1 else 0.0
    dark, light = dark / (n * mean.size), light / (n * mean.size)
    return {"aligned": float(mean.var()) / variance - chance,
            "aligned_unlit": float(unlit(mean).var()) / variance - chance,
            "binary": dark + light, "ends": min(dark, light), "variance": per_pixel, "images": len(idx)}


def unlit(mean: np.ndarray) -> np.ndarray:
    """An (H, W) image less its least-squares fit by 1, y, x, y², x², xy: what uneven lighting is not."""
    h, w = mean.shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h - 1, w - 1, 1) - 0.5
    basis = np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx], -1).reshape(-1, 6)
    flat = mean.reshape(-1).astype(np.float64)
    return (flat - basis @ np.linalg.lstsq(basis, flat, rcond=None)[0]).reshape(h, w)


def choose_layout(stats: dict[str, float], side: int | None = None) -> str:
    """A latent vector for aligned images, a grid of latent cells for surfaces; identical images
    (no variance at all: nothing to tell apart) get the vector, a single image is judged like
    others of its size (one large image gets the grid, below). Images larger than AUTO_MAX_SIZE
    (`side`, their median shorter side) are judged with the lighting taken off (aligned_unlit):
    that is where a fixed camera and lamp photograph a surface, and where a small defect needs the
    grid's native resolution (docs/detection.md, "Objects or surface"). Fewer than CROSSFIT_BELOW
    of them (stats["images"]) get the grid and its defect reader whatever their mean image: with 40
    images of 112-256 px a vector model of them shrunk to 64 px lost to it on aligned parts with
    small defects and on three of four kinds of product photo, and took longer (five cross-fitted
    models), while with 400-1,000 images it held its own (docs/detection.md, "Few large images")."""
    if stats.get("variance", 1.0) < 1e-8 and stats.get("images", 2) > 1:  # one image has no spread to measure
        return "vector"
    large = side is not None and side > AUTO_MAX_SIZE and "aligned_unlit" in stats
    if large and stats.get("images", CROSSFIT_BELOW) < CROSSFIT_BELOW:
        return "grid"
    return "vector" if stats["aligned_unlit" if large else "aligned"] >= LAYOUT_ALIGNED else "grid"


BINARY_ENDS = 0.03  # share of pixels near black, and near white, a Bernoulli folder needs (docs/model.md)


def choose_model(cfg, stats: dict[str, float], side: int | None = None):
    """Decide every "auto" of a ModelConfig from image_statistics (docs/detection.md has the
    measurements): a latent vector for aligned images, a latent grid for surfaces; Bernoulli for
    near-binary images (at least 80% black or white, and at least BINARY_ENDS of each: a dark photo
    is all near black and no ink on paper), else a Gaussian; 16 latent dimensions for a
    vector, 8 channels per cell for a grid. `side`: the images' own median shorter side, which
    choose_layout judges by where it is smaller than the size they are read at (28 px digits
    read at 128 px are small images); None: that size."""
    from dataclasses import replace

    at = cfg.image_size if side is None else min(side, cfg.image_size)
    layout = cfg.layout if cfg.layout != "auto" else choose_layout(stats, at)
    binary = stats["binary"] >= 0.8 and stats.get("ends", 1.0) >= BINARY_ENDS
    likelihood = cfg.likelihood if cfg.likelihood != "auto" else ("bernoulli" if binary else "gaussian")
    latent_dim = cfg.latent_dim or (16 if layout == "vector" else 8)
    return replace(cfg, layout=layout, likelihood=likelihood, latent_dim=latent_dim)


def to_input(images: np.ndarray, idx: np.ndarray, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Images `idx` as a float tensor in [0, 1] on `device` (pinned first for a GPU)."""
    x = torch.from_numpy(gather(images, idx))  # (B, C, H, W) uint8
    if device.type == "cuda":
        x = x.pin_memory()
    return to_device(x, device, channels_last)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [0, 1] on `device`; the copy is asynchronous from pinned memory."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def gather(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """images[idx] as a new array (N, C, H, W).

    The pixel cache's memmap is read with pread rather than through the mapping: mapped pages
    count toward the process's resident memory once touched, so an epoch over a large cache
    would end up holding all of it, whereas read pages stay in the kernel's page cache,
    shared and evictable. Peak memory then does not grow with the number of images.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if not (isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap) and images.flags.c_contiguous
            and images.filename and hasattr(os, "preadv") and len(idx)):
        return np.ascontiguousarray(images[idx])  # in memory, a view of a memmap, or no preadv (Windows)
    if idx.min() < 0 or idx.max() >= len(images):
        raise IndexError(f"image index out of range for {len(images)} images")
    row = images.itemsize * math.prod(images.shape[1:])
    out = np.empty((len(idx), *images.shape[1:]), images.dtype)
    rows = out.reshape(len(idx), -1).view(np.uint8)
    cuts = (np.flatnonzero(np.diff(idx) != 1) + 1).tolist()  # one read per run of consecutive images
    fd = open_mapped(images)
    if fd is None:  # the cache was cleared or rebuilt meanwhile; the mapping still holds the data
        return np.ascontiguousarray(images[idx])
    try:
        for s, e in zip([0, *cuts], [*cuts, len(idx)]):
            got = os.preadv(fd, [rows[s:e]], images.offset + int(idx[s]) * row)
            if got != (e - s) * row:
                raise DamagedFile(f"short read from {images.filename}: the pixel cache changed while training")
    finally:
        os.close(fd)
    return out


def read_ahead(images: np.ndarray, batches: Iterator[np.ndarray], device: torch.device, depth: int = 2,
               crop: int | None = None, seeds: Iterator | None = None) -> Iterator[torch.Tensor]:
    """The uint8 tensor of each index array in `batches`, read `depth` batches ahead in a thread
    (vaekit.stream.pipeline.read_ahead, the one read-ahead helper); with `crop`, each batch's
    crop x crop windows placed by its seed from `seeds` (vaekit.training.crops.gather_crops).

    Reads (pread releases the GIL) and pinning then overlap the training step, which keeps a
    GPU busy; on the CPU it hides disk reads when the cache is not in the page cache.
    """
    from vaekit.stream import pipeline
    from vaekit.training.crops import gather_crops

    cuda = device.type == "cuda"

    def load(idx: np.ndarray, seed=None) -> torch.Tensor:
        # a seed, or (seed, places, n): a rank's share of a global batch of n (crops.crop_places)
        placed = seed if isinstance(seed, tuple) else (seed,)
        x = torch.from_numpy(gather(images, idx)) if crop is None else gather_crops(images, idx, crop, *placed)
        return x.pin_memory() if cuda else x

    init = None
    if cuda:  # set_device in the thread, or pinning would open a CUDA context on GPU 0 for every rank
        init = partial(torch.cuda.set_device, torch.cuda.current_device() if device.index is None else device.index)
    return pipeline.read_ahead(map(load, batches) if crop is None else map(load, batches, seeds), depth, init)
