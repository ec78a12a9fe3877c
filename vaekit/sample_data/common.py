"""What both sample data sets share: the report, seed checks, and refusing to mix data sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaekit.errors import BadInput, OutputExists



@dataclass
class SampleDataReport:
    root: Path  # the folder the data set was written to
    counts: dict[str, int]  # images written per sub-folder, e.g. {"train": 142, "test/normal": 36}


def check_seed(seed: int) -> None:
    """BadInput unless `seed` is a non-negative integer."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInput(f"seed must be a non-negative integer, got {seed!r}")


def prepare_folders(root: Path, folders: list[str], overwrite: bool) -> None:
    """Create the output folders; refuse to mix a new data set into an old one (OutputExists
    unless `overwrite`, and then only the PNGs of those folders go)."""
    from vaekit.fileio import refuse_under_file  # here: the sample data's module imports only what it must

    if Path(root).exists() and not Path(root).is_dir():
        raise BadInput(f"{root} is a file, not a folder")
    refuse_under_file(Path(root))
    existing = [p for f in folders if (root / f).is_dir() for p in sorted((root / f).glob("*.png"))]
    if existing and not overwrite:
        raise OutputExists(
            f"{root} already holds sample images (e.g. {existing[0]}); "
            "pass overwrite=True to replace them"
        )
    # Only the files this module writes are removed, so a user's other files survive.
    for path in existing:
        path.unlink()
    for f in folders:
        (root / f).mkdir(parents=True, exist_ok=True)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (clipped) as uint8 pixels, rounded."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)

