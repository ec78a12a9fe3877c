"""p(x|z), one object per likelihood: its negative log-likelihood, its floor, its mean image.

`nll` and `mean` are torch (training, the torch engine, the export); `floor` is numpy (the
scores, shared by both engines). The module imports neither torch nor anything that does at
import time, so the onnxruntime engine can use `floor` without torch.
"""

from __future__ import annotations

import math

import numpy as np

LOG_2PI = math.log(2 * math.pi)


class Bernoulli:
    """Decoder outputs logits; for grey levels, the continuous-target BCE of pytorch/examples."""

    name = "bernoulli"

    @staticmethod
    def nll(x, params, log_sigma=None):
        import torch.nn.functional as F

        # softplus(l) - x*l is BCE-with-logits written out: the same value, but it exports to
        # ONNX as a stable Softplus, where the exporter's own BCE decomposition lost precision
        # on saturated logits (0.0125 nats instead of 4e-6 at l = -12.5).
        return F.softplus(params) - x * params

    @staticmethod
    def mean(params):
        import torch

        return torch.sigmoid(params)

    @staticmethod
    def floor(x: np.ndarray, log_scale=None) -> np.ndarray:
        """Binary entropy of every value, summed over channels: (N, C, H, W) -> (N, H, W)."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -(np.where(x > 0, x * np.log(x), 0.0) + np.where(x < 1, (1 - x) * np.log1p(-x), 0.0))
        return h.sum(1)


class Gaussian:
    """Decoder outputs means; one learned log sigma per channel (`log_sigma`, shape (C,))."""

    name = "gaussian"

    @staticmethod
    def nll(x, params, log_sigma):
        import torch

        ls = log_sigma.view(1, -1, 1, 1)
        return 0.5 * ((x - params) * torch.exp(-ls)).pow(2) + ls + 0.5 * LOG_2PI

    @staticmethod
    def mean(params):
        return params.clamp(0.0, 1.0)

    @staticmethod
    def floor(x: np.ndarray, log_scale=None) -> np.ndarray:
        """log sigma + log(2 pi) / 2 per value, summed over channels: the same for every image."""
        if log_scale is None:
            raise ValueError("a gaussian model needs its log_scale (ModelInfo.log_scale) for the excess score")
        per_channel = np.asarray(log_scale, dtype=np.float64) + 0.5 * LOG_2PI  # (C,)
        return np.broadcast_to(per_channel.sum(), (x.shape[0], *x.shape[2:])).copy()


LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def get(name: str):
    try:
        return LIKELIHOODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {name!r}") from None
