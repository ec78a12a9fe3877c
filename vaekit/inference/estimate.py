"""The -ELBO estimators, in numpy, over an engine's one primitive (`Model._score_core`).

Three estimators, all deterministic: the same image gets the same numbers in every run and in
any batch. z = mu (the default); the average over K posterior draws whose noise is seeded by the
image's own pixels; and the importance-weighted bound of Burda et al. (2016) over those draws.
`vaekit.inference.engine.Model.score` turns an estimate into the scores and maps users see.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from vaekit.inference.atypicality import error_map


@dataclass
class Estimate:
    """One batch's -ELBO estimate in parts, float64 where it is summed."""

    recon: np.ndarray  # (B,) reconstruction NLL, nats (mean over draws)
    kl: np.ndarray  # (B,) KL(q(z|x) || p(z)), nats (mean over draws)
    nll: np.ndarray  # (B,) -ELBO, or the IWAE estimate of -log p(x), nats
    r_map: np.ndarray  # (B, H, W) per-pixel reconstruction NLL over channels, nats (mean over draws)
    mu: np.ndarray  # (B, D) posterior mean
    logvar: np.ndarray  # (B, D)
    x_hat: np.ndarray | None  # (B, C, H, W) the engine's reconstruction of the last draw (None: old exports)


def image_seed(x: np.ndarray) -> int:
    """A seed from an image's pixels: the same image gets the same noise in any batch."""
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(x).tobytes()).digest()[:8], "little")


def posterior_noise(x: np.ndarray, k: int, latent_dim: int) -> np.ndarray:
    """eps ~ N(0, I) per image, seeded by the image's pixels: (k, N, D) float32."""
    out = np.empty((k, len(x), latent_dim), dtype=np.float32)
    for i in range(len(x)):
        out[:, i] = np.random.default_rng(image_seed(x[i])).standard_normal((k, latent_dim), dtype=np.float32)
    return out


def log_normal(z: np.ndarray, mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 * np.exp(-logvar)).sum(-1)


def log_mean_exp(a: np.ndarray) -> np.ndarray:
    """log mean exp over axis 0, stable: (K, B) -> (B,)."""
    m = a.max(0)
    return m + np.log(np.exp(a - m).mean(0))


def estimate(score_core: Callable, x: np.ndarray, xf: np.ndarray, latent_dim: int, samples: int = 0,
             iwae: bool = False) -> Estimate:
    """The -ELBO of one batch: uint8 images `x` (B, C, H, W) and the same as floats `xf` in [0, 1].

    samples=0 evaluates at z = mu; samples=K averages K draws seeded by each image's pixels;
    iwae=True (K >= 1) makes `nll` the importance-weighted estimate of -log p(x)."""
    b, k = len(xf), max(samples, 1)
    eps = posterior_noise(x, k, latent_dim) if samples else np.zeros((1, b, latent_dim), np.float32)
    recon, kl, r_map, logw = np.zeros(b), np.zeros(b), np.zeros((b, *xf.shape[2:])), []
    for e in eps:
        _, q, m, mu, logvar, x_hat = score_core(xf, e)
        # sum the map in float64 here rather than take the engine's float32 sum: the excess
        # is a small difference of two large sums, and both engines then agree to the bit
        r = m.astype(np.float64).reshape(b, -1).sum(1)
        recon += r / k
        kl += q / k
        r_map += m / k
        if iwae:
            z = mu + np.exp(0.5 * logvar) * e
            logw.append(-r + log_normal(z, 0.0 * z, 0.0 * z) - log_normal(z, mu, logvar))
    nll = -log_mean_exp(np.stack(logw).astype(np.float64)) if iwae else recon + kl
    return Estimate(recon, kl, nll, r_map, mu, logvar, x_hat)


def object_parts(x: np.ndarray, x_hat: np.ndarray | None, mu: np.ndarray) -> dict:
    """What an aligned object's tests read besides the -ELBO (vaekit.inference.atypicality.OBJECT_TESTS): the
    error map of the reconstruction, |mu|^2, mu itself and the image's own entropy. An export of
    vaekit < 0.3 has no reconstruction output; its calibration does not need them."""
    if x_hat is None:
        return {}
    from vaekit.model.likelihood_np import bernoulli_floor

    entropy = bernoulli_floor(x).reshape(len(x), -1).sum(1)
    mu = np.asarray(mu).reshape(len(mu), -1)
    return {"e_map": error_map(x, x_hat), "latent": (mu.astype(np.float64) ** 2).sum(1), "entropy": entropy, "mu": mu}
