"""The random windows a surface model trains on, read from the pixel cache window by window.

A crop's place is drawn from a seed (a step's, or an image's for the fixed validation crops), so
the same windows come back after a resume. Reading only the window's rows matters for large
images: a 64 px crop of a 2048 px image is 1/1000 of it, and reading the whole image to cut it
made the VAE's epochs at 2048 px take 1.6x those at 1024 px (docs/detection.md).
"""

from __future__ import annotations

import mmap
import os

import numpy as np
import torch

from vaekit.errors import DamagedFile


def crop_places(n: int, shape: tuple[int, int], crop: int, seed, at=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (ys, xs) of n crop x crop windows of (H, W) images, placed by `seed`;
    with `at`, those of them at these places (a rank's images of a global batch of n, by their
    places in it sorted: the same windows on any number of ranks)."""
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, shape[0] - crop + 1, n)
    xs = rng.integers(0, shape[1] - crop + 1, n)
    return (ys, xs) if at is None else (ys[np.asarray(at, np.int64)], xs[np.asarray(at, np.int64)])


def crop_batch(x: torch.Tensor, crop: int | None, seed, at=None, n: int | None = None) -> torch.Tensor:
    """Random crop x crop windows of a uint8 batch (B, C, H, W), placed by `seed` (`at`, `n`: crop_places)."""
    if crop is None:
        return x
    ys, xs = crop_places(len(x) if n is None else n, x.shape[-2:], crop, seed, at)
    return torch.stack([x[i, :, y : y + crop, c : c + crop] for i, (y, c) in enumerate(zip(ys.tolist(), xs.tolist()))])


def gather_crops(images: np.ndarray, idx: np.ndarray, crop: int, seed, at=None, n: int | None = None) -> torch.Tensor:
    """crop_batch(images[idx], crop, seed, at, n) as a uint8 tensor (B, C, crop, crop), reading from the
    pixel cache only the rows of each window (with pread, as vaekit.training.data.gather, so the
    mapping's pages never count toward the process's memory)."""
    idx = np.asarray(idx, dtype=np.int64)
    whole = lambda: crop_batch(torch.from_numpy(np.ascontiguousarray(images[idx])), crop, seed, at, n)  # noqa: E731
    if not _preadable(images) or not len(idx):  # in memory, a view of a memmap, or no preadv (Windows)
        return whole()
    if idx.min() < 0 or idx.max() >= len(images):
        raise IndexError(f"image index out of range for {len(images)} images")
    (c, h, w) = images.shape[1:]
    ys, xs = crop_places(len(idx) if n is None else n, (h, w), crop, seed, at)
    rows = np.empty((len(idx), c, crop, w), np.uint8)  # each window's rows, whole width
    fd = open_mapped(images)
    if fd is None:
        return whole()
    try:
        for k, (i, y) in enumerate(zip(idx.tolist(), ys.tolist())):
            for ch in range(c):
                start = images.offset + ((i * c + ch) * h + y) * w
                if os.preadv(fd, [rows[k, ch]], start) != crop * w:
                    raise DamagedFile(f"short read from {images.filename}: the pixel cache changed while training")
    finally:
        os.close(fd)
    return torch.from_numpy(np.stack([rows[k, :, :, x : x + crop] for k, x in enumerate(xs.tolist())]))


def _preadable(images: np.ndarray) -> bool:
    return (isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap) and images.flags.c_contiguous
            and images.dtype == np.uint8 and bool(images.filename) and hasattr(os, "preadv"))


def open_mapped(images: np.memmap) -> int | None:
    """A read-only descriptor of the file `images` maps, for pread; None when that file is no
    longer at its name (the cache was cleared, or the entry rebuilt for other files): the mapping
    still holds the run's own pixels, and a rebuilt file may hold others. The pixel cache records
    the mapped file's (device, inode) as `images.pinned`."""
    try:
        fd = os.open(images.filename, os.O_RDONLY)
    except FileNotFoundError:
        return None
    pinned = getattr(images, "pinned", None)
    st = os.fstat(fd)
    if pinned is not None and (st.st_dev, st.st_ino) != pinned:
        os.close(fd)
        return None
    return fd
