"""The floor of each likelihood p(x|z), in numpy: the NLL a perfect reconstruction still costs.

The likelihood objects themselves (NLL and mean image, in torch) are vaekit.objective.Bernoulli
and .Gaussian, whose `floor` is the function here; this module imports no torch, so the
onnxruntime engine's scores use the very same floors.
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


FLOORS = {"bernoulli": bernoulli_floor, "gaussian": gaussian_floor}


def floor(likelihood: str, x: np.ndarray, log_scale=None) -> np.ndarray:
    try:
        fn = FLOORS[likelihood]
    except (KeyError, TypeError):
        raise BadInput(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}") from None
    return fn(x, log_scale)
