"""One interface, two engines: `load(path)` gives a Model whatever the path holds.

A run directory opens with the torch engine; an exported `.onnx` file with the onnxruntime
engine, which never imports torch. Both engines only provide four primitives on float32
arrays (`_encode`, `_decode`, `_score_core`, and their metadata); everything users call
(encode, decode, reconstruct, score, iwae) is written once, here, in numpy, so the two
engines cannot drift apart.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vaekit import images as imageio

Progress = Callable[..., None]
SCORES = ("neg_elbo", "recon", "kl")


@dataclass
class ModelInfo:
    image_size: int  # the model's input is image_size × image_size
    channels: int  # 1 or 3
    latent_dim: int
    likelihood: str  # "bernoulli" or "gaussian"
    fingerprint: str  # names the weights; code files record it
    engine: str  # "torch" or "onnxruntime"
    source: Path  # the run directory or .onnx file
    threshold: float | None = None  # anomaly threshold on the default score (nats)
    threshold_quantile: float | None = None
    quantiles: dict[str, float] = field(default_factory=dict)  # validation score quantiles
    val_scores: list[float] = field(default_factory=list)  # validation scores, for histograms

    @property
    def dims(self) -> int:
        return self.channels * self.image_size * self.image_size


@dataclass
class Scores:
    score: np.ndarray  # (N,) the chosen score, nats; higher = more anomalous
    neg_elbo: np.ndarray  # (N,) -ELBO estimate, nats
    recon: np.ndarray  # (N,) reconstruction NLL, nats
    kl: np.ndarray  # (N,) KL(q(z|x) || p(z)), nats
    pixel_map: np.ndarray  # (N, H, W) per-pixel reconstruction NLL summed over channels, nats
    bits_per_dim: np.ndarray  # (N,) score / (C*H*W*ln 2)


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


class Model:
    """What `vaekit.load` returns. Inputs are uint8 (N, C, H, W) at the model's size, or paths."""

    info: ModelInfo
    batch_size: int = 64

    # --- the engine's primitives (float32 arrays in, float32 arrays out) -----------------------
    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _decode(self, z: np.ndarray) -> np.ndarray:
        """z (B, D) -> mean image (B, C, H, W) in [0, 1]."""
        raise NotImplementedError

    def _score_core(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, ...]:
        """x (B,C,H,W) in [0,1], eps (B, D) -> recon (B,), kl (B,), pixel_map (B,H,W), mu, logvar."""
        raise NotImplementedError

    # --- preprocessing ---------------------------------------------------------------------
    def load_images(self, inputs: str | Path | Sequence[str | Path], progress: Progress | None = None) -> imageio.LoadReport:
        """Find and decode images with the model's own preprocessing (size, channels)."""
        paths = imageio.find_images(inputs)
        if not paths:
            raise imageio.NoImagesError(f"no image files found in {inputs}")
        return imageio.load_images(paths, self.info.image_size, self.info.channels, progress=progress)

    def _check(self, x: np.ndarray) -> np.ndarray:
        want = (self.info.channels, self.info.image_size, self.info.image_size)
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected images of shape (N, {want[0]}, {want[1]}, {want[2]}), got {x.shape}")
        return x

    def _batches(self, n: int):
        for s in range(0, n, self.batch_size):
            yield slice(s, min(n, s + self.batch_size))

    # --- what users call -------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images -> posterior mean and log-variance, (N, D) float32 each. Deterministic."""
        x = self._check(x)
        mus, logvars = [], []
        for sl in self._batches(len(x)):
            mu, logvar = self._encode(imageio.to_float(x[sl]))
            mus.append(mu)
            logvars.append(logvar)
        d = self.info.latent_dim
        return (np.concatenate(mus) if mus else np.zeros((0, d), np.float32),
                np.concatenate(logvars) if logvars else np.zeros((0, d), np.float32))

    def decode(self, z: np.ndarray) -> np.ndarray:
        """Latent codes (N, D) -> mean images (N, C, H, W) float32 in [0, 1]."""
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.info.latent_dim:
            raise ValueError(f"expected latent codes of shape (N, {self.info.latent_dim}), got {z.shape}")
        out = [self._decode(z[sl]) for sl in self._batches(len(z))]
        s, c = self.info.image_size, self.info.channels
        return np.concatenate(out) if out else np.zeros((0, c, s, s), np.float32)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """Decode the posterior mean: (N, C, H, W) float32 in [0, 1]. Deterministic."""
        return self.decode(self.encode(x)[0])

    def sample(self, n: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
        """Draw n images from the prior N(0, temperature^2 I)."""
        if n < 1 or temperature < 0:
            raise ValueError(f"need n >= 1 and temperature >= 0, got n={n}, temperature={temperature}")
        z = np.random.default_rng(seed).standard_normal((n, self.info.latent_dim), dtype=np.float32) * temperature
        return self.decode(z)

    def score(self, x: np.ndarray, samples: int = 0, score: str = "neg_elbo", progress: Progress | None = None) -> Scores:
        """Per-image anomaly scores (higher = more anomalous) and per-pixel maps.

        samples=0 (default): the -ELBO evaluated at the posterior mean (z = mu), fully
        deterministic. samples=K: the average over K posterior draws, each image's noise
        seeded by its own pixels, so the score still never changes between runs or batches.
        """
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        x = self._check(x)
        n, k = len(x), max(samples, 1)
        recon, kl = np.zeros(n), np.zeros(n)
        pmap = np.zeros((n, self.info.image_size, self.info.image_size))
        for sl in self._batches(n):
            xf = imageio.to_float(x[sl])
            eps = posterior_noise(x[sl], k, self.info.latent_dim) if samples else np.zeros((1, len(xf), self.info.latent_dim), np.float32)
            for e in eps:
                r, q, m, _, _ = self._score_core(xf, e)
                recon[sl] += r / k
                kl[sl] += q / k
                pmap[sl] += m / k
            if progress:
                progress(sl.stop, n)
        neg_elbo = recon + kl
        chosen = {"neg_elbo": neg_elbo, "recon": recon, "kl": kl}[score]
        return Scores(chosen, neg_elbo, recon, kl, pmap.astype(np.float32), chosen / (self.info.dims * math.log(2)))

    def iwae(self, x: np.ndarray, samples: int = 64) -> np.ndarray:
        """-log p(x) estimated by the importance-weighted bound with K samples, nats (N,).

        log p(x) >= log 1/K sum_k p(x|z_k) p(z_k) / q(z_k|x) (Burda et al. 2016): tighter than
        the ELBO and tightening as K grows. Noise seeded per image, so deterministic.
        """
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        x = self._check(x)
        out = np.zeros(len(x))
        for sl in self._batches(len(x)):
            xf = imageio.to_float(x[sl])
            eps = posterior_noise(x[sl], samples, self.info.latent_dim)
            logw = []
            for e in eps:
                r, _, _, mu, logvar = self._score_core(xf, e)
                z = mu + np.exp(0.5 * logvar) * e
                logw.append(-r + log_normal(z, 0.0 * z, 0.0 * z) - log_normal(z, mu, logvar))
            logw = np.stack(logw).astype(np.float64)  # (K, B)
            m = logw.max(0)
            out[sl] = -(m + np.log(np.exp(logw - m).mean(0)))
        return out


def load(path: str | Path) -> Model:
    """A run directory -> torch engine; a .onnx file -> onnxruntime engine (no torch import)."""
    path = Path(path)
    if path.is_dir():
        from vaekit.engine_torch import TorchModel

        return TorchModel(path)
    if path.is_file():
        from vaekit.engine_onnx import OnnxModel

        return OnnxModel(path)
    raise FileNotFoundError(f"no such model: {path} (give a run directory or an exported .onnx file)")
