"""Walks in latent space: interpolations between two images, grids, and 2-D maps of many codes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vaekit import images as imageio
from vaekit import stream
from vaekit.errors import BadInput, NotFound, check_flags
from vaekit.fileio import refuse_existing, refuse_inside, refuse_under_file

if TYPE_CHECKING:
    from vaekit.inference.engine import Model

PROJECTIONS = ("PCA", "t-SNE")
# A grid (`vaekit sample`, `interpolate`) is decoded and written in one piece, so its size is
# bounded by pixels, as every image vaekit holds is: 2**26 (64 Mi, a 1024 px model's default 64
# samples) tile pixels, ~256 MB as float32 per channel, and never more than 10,000 images.
MAX_GRID_PIXELS = imageio.MAX_RESIZE_PIXELS
MAX_GRID_IMAGES = 10_000


def check_grid(n: int, image_size: int, what: str = "-n") -> None:
    """BadInput unless `n` images of image_size × image_size fit one grid: at most MAX_GRID_IMAGES
    images and MAX_GRID_PIXELS tile pixels. Call it before decoding anything."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise BadInput(f"invalid {what} {n!r}: expected a whole number of images, at least 1")
    most = min(MAX_GRID_IMAGES, MAX_GRID_PIXELS // max(1, int(image_size) ** 2))
    if n > most:
        raise BadInput(f"{what} {n} is too many for one grid of {image_size}×{image_size} images: at most {most} "
                       f"({MAX_GRID_IMAGES:,} images and {MAX_GRID_PIXELS:,} pixels in all)")


def check_grid_output(path: str | Path, overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """The grid's PNG path, checked before any work: a .png file name, not one of `inputs` (the
    images read, the model's run directory or .onnx) nor inside one, and new unless overwrite."""
    check_flags(overwrite=overwrite)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise BadInput(f"output {path} must be a .png file")
    if path.is_dir():
        raise BadInput(f"output {path} is a folder")
    from vaekit.images.find import RUN_MARKER

    runs = [i for i in inputs if (Path(i) / RUN_MARKER).is_file()]  # --overwrite must never replace an input
    refuse_inside(path, [i for i in inputs if i not in runs], "output")  # or the run's files
    refuse_inside(path, runs, "output", kind="the model's run directory")
    refuse_under_file(path)  # a file above it, or a folder this process may not write in
    refuse_existing([path], overwrite)
    return path


def interpolate(model: "Model", a: str | Path, b: str | Path, n: int = 8) -> np.ndarray:
    """Decode n evenly spaced points on the segment between two images' posterior means.

    Returns float (n, C, H, W) in [0, 1]; the first and last are the two reconstructions.
    n is bounded like a grid's (check_grid), as the n decoded images are held at once.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise BadInput(f"invalid n {n!r}: need at least 2 steps")
    check_grid(n, model.info.image_size, "n")
    for end in (a, b):  # a folder was read whole, and its first two images taken for a and b
        if not isinstance(end, (str, Path)) or not str(end) or Path(end).is_dir():
            raise BadInput(f"interpolate needs two image files, got {end!r:.200}")
    report = model.load_images([Path(a), Path(b)])
    if report.skipped:
        p, why = report.skipped[0]
        raise BadInput(f"cannot read {p}: {why}")
    if len(report.images) != 2:
        raise BadInput(f"interpolate needs two image files, got {len(report.images)} images from {a} and {b}")
    mu, _ = model.encode(report.images)
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
    return model.decode((1 - t) * mu[0] + t * mu[1])


def _grid_pixels(x: np.ndarray) -> np.ndarray:
    """uint8, or floats in [0, 1], as the PNG writer takes them; other integers in 0..255 as uint8.
    Floats of 0..255, or int arrays, were written saturated (every tile 0 or 255), NaN as black."""
    if x.dtype.kind == "f":
        if not (np.isfinite(x).all() and x.min(initial=0) >= 0 and x.max(initial=0) <= 1):
            raise BadInput("images as floats must be finite numbers in [0, 1] (uint8 for 0..255)")
        return x
    if x.dtype.kind not in "iu" or x.dtype == np.bool_:
        raise BadInput(f"images must be uint8, or floats in [0, 1], got {x.dtype}")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise BadInput(f"images as integers must lie in 0..255, got {x.min()}..{x.max()}")
    return x.astype(np.uint8, copy=False)


def write_grid(x: np.ndarray, path: str | Path, ncol: int = 8, overwrite: bool = False,
               inputs: Sequence[str | Path] = ()) -> Path:
    """Save images (N, C, H, W) as one PNG grid; refuses to replace a file unless overwrite, and
    to write one of `inputs` (or into one) at all (see check_grid_output)."""
    check_flags(overwrite=overwrite)
    x = _grid_pixels(np.asarray(x))
    if x.ndim != 4 or len(x) == 0:
        raise BadInput(f"expected a non-empty (N, C, H, W) array, got shape {x.shape}")
    check_grid(len(x), max(x.shape[2:]), "number of images")
    path = check_grid_output(path, overwrite, inputs)
    imageio.save_png(imageio.make_grid(x, ncol=ncol), path)
    return path


@dataclass
class LatentMap:
    paths: list[Path]  # the images projected
    names: list[str]  # relative to the folder
    xy: np.ndarray  # (N, 2) the 2-D projection of the posterior means
    scores: np.ndarray  # (N,) each image's anomaly score: the model's default score, in its score_unit
    method: str


def project(mu: np.ndarray, method: str = "PCA") -> np.ndarray:
    """Posterior means (N, D) -> (N, 2): PCA, or t-SNE (both scikit-learn, seeded)."""
    if method not in PROJECTIONS:
        raise BadInput(f"invalid projection {method!r}: expected 'PCA' or 't-SNE'")
    if method == "t-SNE":
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, len(mu) - 1.0), init="pca", random_state=0).fit_transform(mu)
    from sklearn.decomposition import PCA

    return PCA(2, random_state=0).fit_transform(mu) if mu.shape[1] >= 2 else np.c_[mu[:, :1], np.zeros(len(mu))]


def latent_map(model: "Model", folder: str | Path, method: str = "PCA", limit: int = 500,
               confine_to: Path | None = None) -> LatentMap:
    """Encode up to `limit` images of a folder (spread evenly over it) and project their codes to 2-D.
    `confine_to`: the folder's links must stay inside it (images.find_images)."""
    if method not in PROJECTIONS:
        raise BadInput(f"invalid projection {method!r}: expected 'PCA' or 't-SNE'")
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFound(f"no such folder: {folder}")
    found = stream.find_inputs(folder, confine_to=confine_to)
    # `limit` of them spread evenly (every ceil(n / limit)-th kept 1050 of 2100 images asked to show 2000)
    take = np.linspace(0, len(found.paths) - 1, min(len(found.paths), max(1, int(limit)))).round().astype(int)
    paths, names = [found.paths[i] for i in take], [found.names[i] for i in take]
    report = model.load_images(paths)
    if len(report.paths) < 3:
        raise imageio.NoImagesError(f"need at least 3 readable images in {folder} for a projection, got {len(report.paths)}")
    kept = set(map(str, report.paths))
    names = [n for p, n in zip(paths, names) if str(p) in kept]
    mu, _ = model.encode(report.images)
    scores = model.score(report.images, score=model.info.score).score
    return LatentMap(report.paths, names, project(mu, method), scores, method)
