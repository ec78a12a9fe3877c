"""The lossy codec: quantised posterior means, entropy-coded with the learned prior's tables, and at
the higher qualities the quantised residual of the pixels (vaekit.codec.residual).

A chunk of n images is one ANS stream: first, for each latent position d, the n images' symbols
at d, all under the table of d's channel (vaekit.codec.prior); then, where the quality has a
residual step, the residual symbols: per pixel (vaekit.codec.residual) or, where the tables were
fitted so, as block-DCT coefficients (vaekit.codec.transform). Memory is O(n x (D + pixels)), and decoding needs
nothing but the integer tables and the words.
"""

from __future__ import annotations

import numpy as np

from vaekit.codec import prior as priors
from vaekit.codec import residual, tables, transform


def latent_symbols(prior: priors.Prior, quality: int, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latents (n, D) -> (symbols (n, D), the latents they decode to (n, D) float32)."""
    sym = priors.symbols(prior, z, quality)
    return sym, priors.latents(prior, sym, quality)


def residual_symbols(prior: priors.Prior, quality: int, r: np.ndarray) -> np.ndarray:
    """The residual x - x_hat (n, C, H, W) int64 -> its symbols at a quality that has a residual step."""
    delta = int(prior.deltas[quality - 1])
    if prior.transform:
        check_shape(prior, quality, r.shape[1:])
        return transform.quantise(r, delta, prior.transform)
    return residual.quantise(r, delta)


def with_residual(prior: priors.Prior, quality: int, x_hat: np.ndarray, sym: np.ndarray) -> np.ndarray:
    """uint8 pixels from the decoder's reconstruction and the residual symbols."""
    delta = int(prior.deltas[quality - 1])
    return transform.reconstruct(x_hat, sym, delta) if prior.transform else residual.reconstruct(x_hat, sym, delta)


def check_shape(prior: priors.Prior, quality: int, shape) -> None:
    c, h, w = (int(v) for v in shape)
    rows = prior.residual[quality - 1].shape[0]
    if h % prior.transform or w % prior.transform or rows != transform.rows_for(c, prior.transform):
        raise ValueError(f"the residual tables are for other images than {c} x {h} x {w}")


def encode_chunk(prior: priors.Prior, quality: int, sym: np.ndarray, res: np.ndarray | None = None) -> np.ndarray:
    """Latent symbols (n, D) and, if the quality has a residual step, residual symbols (n, C, H, W)
    -> the chunk's ANS words (uint32)."""
    w, ch = prior.weights[quality - 1], prior.channel_of()
    coder = tables.ans()
    if prior.deltas[quality - 1]:  # pushed first, so it pops after the latents
        (transform if prior.transform else residual).push(coder, res, prior.residual[quality - 1])
    for d in range(sym.shape[1] - 1, -1, -1):  # a stack: pushed last to first, popped first to last
        tables.push_iid(coder, sym[:, d], w[ch[d]])
    return np.asarray(coder.get_compressed(), dtype=np.uint32)


def decode_chunk(prior: priors.Prior, quality: int, words: np.ndarray, n: int,
                 shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The chunk's words -> (its n images' latents (n, D) float32, residual symbols (n, C, H, W) or None)."""
    w, ch = prior.weights[quality - 1], prior.channel_of()
    coder = tables.ans(words)
    sym = np.stack([tables.pop_iid(coder, w[ch[d]], n) for d in range(len(ch))], axis=1) if n else \
        np.zeros((0, len(ch)), np.int64)
    res = None
    if prior.deltas[quality - 1] and prior.transform:
        check_shape(prior, quality, shape)
        res = transform.pop(coder, n, shape, prior.transform, prior.residual[quality - 1])
    elif prior.deltas[quality - 1]:
        res = residual.pop(coder, n, shape, prior.residual[quality - 1])
    if not coder.is_empty():
        raise ValueError("the chunk holds more data than its images")
    return priors.latents(prior, sym, quality), res
