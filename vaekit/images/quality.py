"""How close reconstructions are to their inputs: PSNR and SSIM, and `vaekit reconstruct`.

Both metrics are computed on 8-bit images (what a user sees in the PNGs) scaled to [0, 1].
SSIM comes from scikit-image (the `metrics` extra) rather than a home-grown copy, with the
settings of Wang et al. (2004): an 11×11 Gaussian window, sigma 1.5, population covariance.
Without scikit-image (a `vaekit[runtime]` box) `vaekit reconstruct` still writes its images
and PSNR, and says that SSIM needs the extra.
No torch here: the onnxruntime engine uses this module too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vaekit import images as imageio
from vaekit.errors import BadInput, MissingExtra
from vaekit.progress import Progress

if TYPE_CHECKING:
    from vaekit.engine import Model

GRID = "comparison.png"


def _unit(x: np.ndarray) -> np.ndarray:
    """uint8 -> [0, 1]; floats are taken as [0, 1] already. (N, C, H, W) float64."""
    x = np.asarray(x)
    x = x / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if x.ndim != 4:
        raise BadInput(f"expected images of shape (N, C, H, W), got {x.shape}")
    return x


def _pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = _unit(x), _unit(y)
    if x.shape != y.shape:
        raise BadInput(f"images differ in shape: {x.shape} vs {y.shape}")
    return x, y


def psnr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio per image, dB, data range 1: 10 log10(1 / MSE). (N,) float64.

    Identical images give +inf.
    """
    x, y = _pair(x, y)
    mse = ((x - y) ** 2).reshape(len(x), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(1.0 / mse)


SSIM_MISSING = "SSIM needs scikit-image: pip install 'vaekit[metrics]'"


def ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Structural similarity per image (mean over channels), in [-1, 1]. (N,) float64."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError:
        raise MissingExtra(SSIM_MISSING) from None
    x, y = _pair(x, y)
    if x.shape[-1] < 11 or x.shape[-2] < 11:
        raise BadInput(f"SSIM needs images of at least 11×11 pixels, got {x.shape[-2]}×{x.shape[-1]}")
    return np.array([
        structural_similarity(a, b, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
        for a, b in zip(x, y)
    ], dtype=np.float64)


@dataclass
class ReconstructReport:
    out_dir: Path
    names: list[str]  # source names, relative to the input folder
    written: list[Path]  # the reconstruction PNGs, same order
    grid: Path  # inputs next to reconstructions
    psnr: np.ndarray  # (N,) dB
    ssim: np.ndarray | None  # (N,); None where scikit-image is not installed
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        def num(v: float) -> float | None:  # JSON has no infinity
            return float(v) if np.isfinite(v) else None

        ssim = self.ssim if self.ssim is not None else np.full(len(self.names), np.nan)
        return {
            "out_dir": str(self.out_dir), "grid": str(self.grid),
            "images": [{"name": n, "file": str(w), "psnr": num(p), "ssim": num(s)}
                       for n, w, p, s in zip(self.names, self.written, self.psnr, ssim)],
            "mean_psnr": num(self.psnr.mean()), "mean_ssim": num(ssim.mean()),
            "ssim_note": None if self.ssim is not None else SSIM_MISSING,
            "skipped": [{"file": str(p), "reason": r} for p, r in self.skipped],
        }


def _targets(source, out_dir: Path, overwrite: bool, grid_max: int):
    """(the inputs, each one's PNG name relative to out_dir, the comparison grid's path), every
    target checked by the output rule before anything is read."""
    from vaekit import codes, stream
    from vaekit.fileio import refuse_existing, refuse_inside

    if not isinstance(grid_max, int) or isinstance(grid_max, bool) or grid_max < 1:
        raise BadInput(f"invalid grid_max {grid_max!r}: expected an integer >= 1")
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"output {out_dir} exists and is not a folder")
    refuse_inside(out_dir, source, "output folder")  # its PNGs would be read back as inputs
    found = stream.find_inputs(source)
    targets = codes.png_names(found.names)
    grid = out_dir / GRID
    if GRID in targets:
        raise BadInput(f"an input image would be written to {grid}, the comparison grid; rename it or pick another input")
    refuse_existing([*(out_dir / t for t in targets), grid], overwrite)
    return found, targets, grid


def reconstruct_folder(
    model: "Model",
    source: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    grid_max: int = 32,
    progress: Progress | None = None,
    batch_size: int = 256,
    workers: int = 0,
) -> ReconstructReport:
    """Reconstruct every image under `source` (z = posterior mean) into `out_dir` (`vaekit reconstruct`).

    Writes `<out_dir>/<name>.png` per image and `<out_dir>/comparison.png`: up to `grid_max`
    inputs, each followed by its reconstruction. Every target is checked before writing.
    Streams: images are decoded, reconstructed and written a batch at a time.
    """
    from vaekit import pipeline, stream

    out_dir = Path(out_dir)
    found, targets, grid = _targets(source, out_dir, overwrite, grid_max)
    info = model.info
    kept, written, psnrs, ssims, shown, skipped, done = [], [], [], [], [], [], 0

    def save(pngs) -> None:  # in a writing thread, while the next batch is reconstructed
        for img, path in pngs:
            imageio.save_png(img, path)

    with pipeline.WriteBehind(save) as writer:
        for b in stream.iter_batches(found.paths, info.image_size, info.channels, batch_size, workers):
            skipped += b.skipped
            done += len(b.paths) + len(b.skipped)
            if len(b.paths):
                x = b.images
                x_hat = imageio.to_uint8(model.reconstruct(x))
                paths = [out_dir / targets[i] for i in b.positions]
                writer.put(list(zip(x_hat, paths)))
                kept += [found.names[i] for i in b.positions]
                written += paths
                psnrs.append(psnr(x, x_hat))
                try:
                    ssims.append(None if ssims and ssims[-1] is None else ssim(x, x_hat))
                except ImportError:  # a vaekit[runtime] box: PSNR only, and the CLI says why
                    ssims.append(None)
                room = grid_max - sum(len(p) for p in shown) // 2
                if room > 0:
                    shown.append(np.stack([x[:room], x_hat[:room]], axis=1).reshape(-1, *x.shape[1:]))  # input, recon, ...
            if progress:
                progress(done, len(found.paths))
    if not kept:
        raise imageio.none_usable(f"in {source}", skipped)
    imageio.save_png(imageio.make_grid(np.concatenate(shown), ncol=8), grid)
    similarity = None if any(s is None for s in ssims) else np.concatenate(ssims)
    return ReconstructReport(out_dir, kept, written, grid, np.concatenate(psnrs), similarity, skipped)
