"""The latent codes of training images, kept with a run: what the "code too far" test compares with.

An aligned object's code test asks how far the image's posterior mean lies from the nearest code
of a normal image the model trained on (a 1-nearest-neighbour distance in latent space; Bergman
et al. 2020 use the same on pretrained features). vaekit 0.3's first test, |mu|^2, measured the
distance to the prior's centre instead: with a full class that works, but a VAE trained on 20
images spreads their codes out and maps anything unfamiliar nearer the centre, so |mu|^2 pointed
the wrong way there (AUROC 0.33-0.43 on 20 MNIST digits; the nearest code 0.66-0.74).
docs/detection.md has the numbers that chose it.

The bank is at most BANK_SIZE codes, float32, stored base64-encoded in the score calibration, so
it travels with the run's config.json and with every exported ONNX file's metadata.
"""

from __future__ import annotations

import base64

import numpy as np

BANK_SIZE = 2000  # training codes kept: 2,000 x 16 dims is 171 kB of base64
_CHUNK = 2_000_000  # distances computed at a time (queries x codes): memory bounded


def encode(codes: np.ndarray) -> dict:
    """(n, d) codes -> the stored form {"shape": [n, d], "f32": base64 of little-endian float32}."""
    codes = np.ascontiguousarray(codes, dtype="<f4")
    if codes.ndim != 2 or not len(codes) or not np.isfinite(codes).all():
        raise ValueError(f"a code bank needs at least one finite code, got shape {codes.shape}")
    return {"shape": list(codes.shape), "f32": base64.b64encode(codes.tobytes()).decode("ascii")}


def decode(stored, latent_dim: int | None = None) -> np.ndarray:
    """The stored form -> (n, d) float64 codes; ValueError naming what is wrong."""
    if not isinstance(stored, dict) or not isinstance(stored.get("f32"), str):
        raise ValueError("expected an object with 'shape' and 'f32'")
    shape = stored.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise ValueError("shape")
    if latent_dim is not None and shape[1] != latent_dim:
        raise ValueError(f"codes of {shape[1]} dims for a {latent_dim}-dim latent")
    try:
        raw = base64.b64decode(stored["f32"], validate=True)
    except ValueError:
        raise ValueError("f32 is not base64") from None
    if len(raw) != 4 * shape[0] * shape[1]:
        raise ValueError("f32 holds a different number of values than shape says")
    codes = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float64)
    if not np.isfinite(codes).all():
        raise ValueError("a code is not finite")
    return codes


def nearest(codes: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """The squared Euclidean distance from each row of `mu` (N, d) to its nearest row of `codes`."""
    mu = np.asarray(mu, dtype=np.float64).reshape(len(mu), -1)
    if mu.shape[1] != codes.shape[1]:
        raise ValueError(f"codes of {mu.shape[1]} dims against a bank of {codes.shape[1]}")
    out = np.empty(len(mu))
    c2 = (codes**2).sum(1)
    step = max(1, _CHUNK // len(codes))
    for s in range(0, len(mu), step):
        q = mu[s : s + step]
        d = (q**2).sum(1)[:, None] + c2[None, :] - 2.0 * q @ codes.T
        out[s : s + step] = np.maximum(d.min(1), 0.0)
    return out
