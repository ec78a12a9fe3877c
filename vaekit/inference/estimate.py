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
    code: np.ndarray | None = None  # (B,) `nll` as a code length of the 8-bit pixels (see code_length), nats


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


def BINARY_ONLY(xf: np.ndarray, x_hat) -> np.ndarray:  # noqa: N802  (a marker `estimate` knows)
    """NaN for the images of `xf` with a pixel neither 0 nor 1, else 0 (`estimate` adds the draw's NLL)."""
    grey = ((xf > 0) & (xf < 1)).reshape(len(xf), -1).any(1)
    return np.where(grey, np.nan, 0.0)


def code_length(likelihood: str, log_scale) -> Callable | None:
    """What makes an estimate a code length of the 8-bit pixels, for `estimate(code=...)`: for a
    Gaussian, its density discretised to the 256 levels ((xf, x_hat) -> (B,) nats,
    vaekit.model.likelihood_np.gaussian_code_nll), since -log of a density goes below zero once
    sigma is under a level; for a Bernoulli, `BINARY_ONLY`: its NLL is a code length of black-and-white
    images alone (the cross-entropy of a grey level is no probability of it: the 256 levels'
    "probabilities" sum to far more than one), so an image with a grey pixel gets NaN; None for the
    logistic, whose NLL is one already."""
    if likelihood == "bernoulli":
        return BINARY_ONLY
    if likelihood != "gaussian":
        return None
    from vaekit.model.likelihood_np import gaussian_code_nll

    if log_scale is None:  # a run of vaekit < 0.3 that does not carry its sigma
        return lambda xf, x_hat: np.full(len(xf), np.nan)
    return lambda xf, x_hat: gaussian_code_nll(xf, x_hat, log_scale)


def estimate(score_core: Callable, x: np.ndarray, xf: np.ndarray, latent_dim: int, samples: int = 0,
             iwae: bool = False, code: Callable | None = None) -> Estimate:
    """The -ELBO of one batch: uint8 images `x` (B, C, H, W) and the same as floats `xf` in [0, 1].

    samples=0 evaluates at z = mu; samples=K averages K draws seeded by each image's pixels;
    iwae=True (K >= 1) makes `nll` the importance-weighted estimate of -log p(x). `code`
    (`code_length`): the same estimate again with each draw's reconstruction NLL a code length
    (Estimate.code; `nll` itself when None, NaN where an old export gives no reconstruction)."""
    b, k = len(xf), max(samples, 1)
    eps = posterior_noise(x, k, latent_dim) if samples else np.zeros((1, b, latent_dim), np.float32)
    recon, kl, coded, r_map, logw, logw_code = np.zeros(b), np.zeros(b), np.zeros(b), np.zeros((b, *xf.shape[2:])), [], []
    for e in eps:
        _, q, m, mu, logvar, x_hat = score_core(xf, e)
        # sum the map in float64 here rather than take the engine's float32 sum: the excess
        # is a small difference of two large sums, and both engines then agree to the bit
        r = m.astype(np.float64).reshape(b, -1).sum(1)
        c = (r if code is None else r + BINARY_ONLY(xf, None) if code is BINARY_ONLY
             else np.full(b, np.nan) if x_hat is None else code(xf, x_hat))
        recon, kl, coded, r_map = recon + r / k, kl + q / k, coded + c / k, r_map + m / k
        if iwae:
            z = mu + np.exp(0.5 * logvar) * e
            ratio = log_normal(z, 0.0 * z, 0.0 * z) - log_normal(z, mu, logvar)
            logw.append(-r + ratio)
            logw_code.append(-c + ratio)
    iw = lambda w: -log_mean_exp(np.stack(w).astype(np.float64))  # noqa: E731
    nll = iw(logw) if iwae else recon + kl
    code_nll = nll if code is None else (iw(logw_code) if iwae else coded + kl)
    return Estimate(recon, kl, nll, r_map, mu, logvar, x_hat, code_nll)


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
