"""The lossy codec: quantised posterior means, entropy-coded with the learned prior's tables, and at
the higher qualities the quantised residual of the pixels (vaekit.codec.residual).

A chunk of n images is one ANS stream: first, for each latent position d, the n images' symbols
at d, all under the table of d's channel (vaekit.codec.prior); then, where the quality has a
residual step, the residual symbols row by row. Memory is O(n x (D + pixels)), and decoding needs
nothing but the integer tables and the words.
"""

from __future__ import annotations

import numpy as np

from vaekit.codec import prior as priors
from vaekit.codec import residual, tables


def latent_symbols(prior: priors.Prior, quality: int, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latents (n, D) -> (symbols (n, D), the latents they decode to (n, D) float32)."""
    sym = priors.symbols(prior, z, quality)
    return sym, priors.latents(prior, sym, quality)


def encode_chunk(prior: priors.Prior, quality: int, sym: np.ndarray, res: np.ndarray | None = None) -> np.ndarray:
    """Latent symbols (n, D) and, if the quality has a residual step, residual symbols (n, C, H, W)
    -> the chunk's ANS words (uint32)."""
    w, ch = prior.weights[quality - 1], prior.channel_of()
    coder = tables.ans()
    if prior.deltas[quality - 1]:  # pushed first, so it pops after the latents
        residual.push(coder, res, prior.residual[quality - 1])
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
    res = residual.pop(coder, n, shape, prior.residual[quality - 1]) if prior.deltas[quality - 1] else None
    if not coder.is_empty():
        raise ValueError("the chunk holds more data than its images")
    return priors.latents(prior, sym, quality), res
