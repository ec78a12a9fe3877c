"""The lossy codec: quantised posterior means, entropy-coded with the learned prior's tables.

A chunk of n images is one ANS stream: for each latent position d (first to last), the n images'
symbols at d, all under the table of d's channel (vaekit.codec.prior). Memory is O(n x D), and
decoding needs nothing but the integer tables and the words.
"""

from __future__ import annotations

import numpy as np

from vaekit.codec import prior as priors
from vaekit.codec import tables


def encode_chunk(prior: priors.Prior, quality: int, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latents (n, D) -> (the chunk's ANS words, uint32; the symbols coded, (n, D))."""
    sym = priors.symbols(prior, z, quality)
    w = prior.weights[quality - 1]
    ch = prior.channel_of()
    coder = tables.ans()
    for d in range(sym.shape[1] - 1, -1, -1):  # a stack: pushed last to first, popped first to last
        tables.push_iid(coder, sym[:, d], w[ch[d]])
    return np.asarray(coder.get_compressed(), dtype=np.uint32), sym


def decode_chunk(prior: priors.Prior, quality: int, words: np.ndarray, n: int) -> np.ndarray:
    """The chunk's words -> its n images' latents (n, D), float32."""
    w = prior.weights[quality - 1]
    ch = prior.channel_of()
    coder = tables.ans(words)
    sym = np.stack([tables.pop_iid(coder, w[ch[d]], n) for d in range(len(ch))], axis=1) if n else \
        np.zeros((0, len(ch)), np.int64)
    if not coder.is_empty():
        raise ValueError("the chunk holds more data than its images")
    return priors.latents(prior, sym, quality)
