"""The floor of each likelihood p(x|z), in numpy: the NLL a perfect reconstruction still costs;
and the discretised logistic's bin probabilities, which the bits-back coder turns into tables.

The likelihood objects themselves (NLL and mean image, in torch) are vaekit.model.objective.Bernoulli,
.Gaussian and .Logistic, whose `floor` is the function here; this module imports no torch, so the
onnxruntime engine's scores (and vaekit.codec) use the very same maths.
"""

from __future__ import annotations

import math

import numpy as np

from vaekit.errors import BadInput, DamagedFile

LOG_2PI = math.log(2 * math.pi)


def bernoulli_floor(x: np.ndarray, log_scale=None) -> np.ndarray:
    """Binary entropy of every value, summed over channels: (N, C, H, W) in [0, 1] -> (N, H, W)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(x > 0, x * np.log(x), 0.0) + np.where(x < 1, (1 - x) * np.log1p(-x), 0.0))
    return h.sum(1)


def gaussian_floor(x: np.ndarray, log_scale=None) -> np.ndarray:
    """log sigma + log(2 pi) / 2 per value, summed over channels: the same for every image."""
    if log_scale is None:
        raise DamagedFile("a gaussian model needs its log_scale (ModelInfo.log_scale) for the excess score")
    per_channel = np.asarray(log_scale, dtype=np.float64) + 0.5 * LOG_2PI  # (C,)
    return np.broadcast_to(per_channel.sum(), (x.shape[0], *x.shape[2:])).copy()


def logistic_floor(x: np.ndarray, log_scale=None) -> np.ndarray:
    """Zero: a discretised likelihood can put all its mass on the right 8-bit level, so the
    -ELBO of a perfect reconstruction tends to the KL alone (and `excess` is the -ELBO)."""
    return np.zeros((x.shape[0], *x.shape[2:]), np.float64)


FLOORS = {"bernoulli": bernoulli_floor, "gaussian": gaussian_floor, "logistic": logistic_floor}

LEVELS = 256  # 8-bit pixels: the discretised logistic's bins are the levels 0..255 (x = level / 255)
LOGISTIC_LOG_SCALE_BOUNDS = (-7.0, 2.0)  # log s in units of [0, 1] pixels (PixelCNN++ clamps at -7)


def logistic_cdf_edges(mean: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """The discretised logistic's CDF at the 255 inner bin edges, float64: (...,) -> (..., 255).

    Bin k (level k, x = k/255) spans [(k - 1/2)/255, (k + 1/2)/255]; level 0 also takes all the
    mass below and level 255 all above (Salimans et al. 2017, PixelCNN++), so the probabilities
    are the differences of [0, cdf..., 1] and always sum to 1."""
    edges = (np.arange(LEVELS - 1, dtype=np.float64) + 0.5) / (LEVELS - 1)  # (255,)
    m = np.asarray(mean, np.float64)[..., None]
    s = np.exp(np.clip(np.asarray(log_scale, np.float64), *LOGISTIC_LOG_SCALE_BOUNDS))[..., None]
    return 0.5 * (1.0 + np.tanh(0.5 * (edges - m) / s))  # sigmoid, without exp overflow


def floor(likelihood: str, x: np.ndarray, log_scale=None) -> np.ndarray:
    try:
        fn = FLOORS[likelihood]
    except (KeyError, TypeError):
        raise BadInput(f"likelihood must be one of {', '.join(FLOORS)}, got {likelihood!r}") from None
    return fn(x, log_scale)
