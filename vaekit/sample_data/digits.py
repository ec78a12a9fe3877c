"""The digits sample set: scikit-learn's bundled 8x8 digits, one digit "normal", the rest anomalies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vaekit.errors import BadInput, MissingExtra, check_flags
from vaekit.progress import Progress
from vaekit.sample_data.common import (SampleDataReport, check_seed, prepare_folders, removed_if_stopped, to_uint8,
                                      whole, write_manifest)

# digits

_DIGIT_FOLDERS = ["train", "test/normal", "test/anomalous"]


def _balanced_sample(
    rng: np.random.Generator, labels: np.ndarray, classes: list[int], n: int
) -> np.ndarray:
    """Indices of n images spread as evenly as possible over `classes`, in random order.

    Deal round-robin from per-class shuffled piles: a class that runs out simply stops
    contributing, so any n up to the total works.
    """
    order = rng.permutation(classes)
    idx, rank, slot = [], [], []
    for pos, c in enumerate(order):
        pile = rng.permutation(np.flatnonzero(labels == c))
        idx.append(pile)
        rank.append(np.arange(len(pile)))
        slot.append(np.full(len(pile), pos))
    idx, rank, slot = np.concatenate(idx), np.concatenate(rank), np.concatenate(slot)
    dealt = np.lexsort((slot, rank))  # by rank first, then by the class's place in the deal
    return np.sort(idx[dealt[:n]])


def write_digits(
    root: Path,
    normal: int = 0,
    size: int = 32,
    test_fraction: float = 0.2,
    n_anomalous: int | None = 200,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SampleDataReport:
    """Write scikit-learn's digits as a one-class anomaly-detection data set of PNGs.

    Images of digit `normal` go to train/ and (a seeded `test_fraction` of them) test/normal/;
    `n_anomalous` images of the other nine digits (None: all of them), balanced across digits,
    go to test/anomalous/. Files are `digit{label}_{index:04d}.png`, where index is the image's
    position in `sklearn.datasets.load_digits()`. Images are 8-bit grayscale, upscaled
    (bicubic) from 8x8 to size x size. Raises FileExistsError if `root` already holds sample
    images, unless `overwrite` is true, and always if it holds images or a README.txt it did not write.
    """
    check_flags(overwrite=overwrite)
    root = Path(root)
    _check(normal, size, test_fraction, seed)
    images, labels = _load_digits()  # (1797, 8, 8) values 0..16, (1797,)
    splits = _splits(labels, normal, test_fraction, n_anomalous, seed)
    prepare_folders(root, _DIGIT_FOLDERS, overwrite)
    total = sum(len(v) for v in splits.values())
    counts = {folder: len(v) for folder, v in splits.items()}
    written: list[Path] = []
    with removed_if_stopped(written):
        for folder, indices in splits.items():
            for i in indices:
                pixels = to_uint8(images[i] / 16.0)
                img = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
                written.append(root / folder / f"digit{labels[i]}_{i:04d}.png")
                img.save(written[-1])
                if progress is not None:
                    progress(len(written), total)
        written.append(root / "README.txt")
        written[-1].write_text(
            f"vaekit sample data: scikit-learn's 8x8 handwritten digits as {size}x{size} grayscale PNGs"
            f" (seed {seed}).\n"
            f"train/           {counts['train']} images of digit {normal}, the normal class\n"
            f"test/normal/     {counts['test/normal']} held-out images of digit {normal}\n"
            f"test/anomalous/  {counts['test/anomalous']} images of the other digits (the anomalies)\n"
            "Names are digit<label>_<index>.png; index is the position in"
            " sklearn.datasets.load_digits().\n"
        )
        write_manifest(root, written)
    return SampleDataReport(root=root, counts=counts)


def _check(normal, size, test_fraction, seed) -> None:
    if not whole(normal) or not 0 <= normal <= 9:
        raise BadInput(f"normal class must be 0..9, got {normal!r}")
    from vaekit.config import MAX_IMAGE_SIZE  # here: the module's own imports stay numpy and Pillow

    if not whole(size) or not 8 <= size <= MAX_IMAGE_SIZE:
        raise BadInput(f"size must be an integer from 8 to {MAX_IMAGE_SIZE} (the digits are 8x8), got {size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise BadInput(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    check_seed(seed)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (images (1797, 8, 8) float, labels (1797,)), as load_digits gives
    them. Read straight from the CSV scikit-learn ships where it is found, since importing
    scikit-learn takes ~1.2 s of a 2 s sample-data run; else through load_digits."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None:
        raise MissingExtra("write_digits needs scikit-learn: pip install 'vaekit[train]' or scikit-learn")
    shipped = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        data = np.loadtxt(shipped, delimiter=",")  # what load_digits reads (gzip by its suffix)
        if data.shape == (1797, 65):
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    except (OSError, ValueError):
        pass
    from sklearn.datasets import load_digits  # another layout of scikit-learn's files

    digits = load_digits()
    return digits.images, digits.target


def _splits(labels: np.ndarray, normal: int, test_fraction: float, n_anomalous: int | None,
            seed: int) -> dict[str, np.ndarray]:
    """Which images go to each folder (indices into load_digits()), drawn with `seed`."""
    others = [c for c in range(10) if c != normal]
    n_others = int(np.isin(labels, others).sum())
    if n_anomalous is None:
        n_anomalous = n_others
    if not whole(n_anomalous) or not 1 <= n_anomalous <= n_others:
        raise BadInput(
            f"n_anomalous must be None or between 1 and {n_others}, got {n_anomalous!r}"
        )
    rng = np.random.default_rng(seed)
    normal_idx = rng.permutation(np.flatnonzero(labels == normal))
    # Keep at least one image on each side, whatever the fraction.
    n_test = min(max(round(len(normal_idx) * test_fraction), 1), len(normal_idx) - 1)
    return {
        "train": np.sort(normal_idx[n_test:]),
        "test/normal": np.sort(normal_idx[:n_test]),
        "test/anomalous": _balanced_sample(rng, labels, others, n_anomalous),
    }
