"""How close two sets of images are: PSNR and SSIM (what `vaekit reconstruct`, the codec and the demo report).

Both metrics are computed on 8-bit images (what a user sees in the PNGs) scaled to [0, 1].
SSIM comes from scikit-image (the `metrics` extra) rather than a home-grown copy, with the
settings of Wang et al. (2004): an 11×11 Gaussian window, sigma 1.5, population covariance.
Without scikit-image (a `vaekit[runtime]` box) `ssim` raises MissingExtra, and `vaekit
reconstruct` still writes its images and PSNR and says that SSIM needs the extra.
Numpy only: the onnxruntime engine uses this module too.
"""

from __future__ import annotations

import numpy as np

from vaekit.errors import BadInput, MissingExtra

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
