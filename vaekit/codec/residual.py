"""Residual refinement: the pixels the latents do not carry, for the lossy codec's higher qualities.

After the latents, a quality may add the residual r = x - x_hat, where x_hat is the decoder's
reconstruction from the quantised latents in 8 bits. r is quantised with a step `delta` (each
pixel then within delta/2 of the source) and coded row by row, each symbol with the integer table
of its context: how large the previous row's symbols are just above it and beside that. The
symbols never depend on a network output, so they decode identically everywhere; the pixels are
x_hat + delta * symbol, which differ between engines only as much as x_hat does (±1 grey level).
Rows go to the coder whole (every image of a chunk at once): 3*H coder calls per chunk, not one
per pixel.
"""

from __future__ import annotations

import numpy as np

from vaekit.codec import tables

CONTEXTS = 9  # min(|above|, 2) * 3 + min(max(|above left|, |above right|), 2)
SMOOTHING = 0.5


def quantise(r: np.ndarray, delta: int) -> np.ndarray:
    """Residuals (int) -> symbols: the nearest multiple of delta, as a count of deltas."""
    r = np.asarray(r, np.int64)
    return np.sign(r) * ((np.abs(r) + delta // 2) // delta)


def reconstruct(x_hat: np.ndarray, sym: np.ndarray, delta: int) -> np.ndarray:
    return np.clip(x_hat.astype(np.int64) + sym * delta, 0, 255).astype(np.uint8)


def span(delta: int) -> int:
    """Symbols run from -span to +span: every residual of 8-bit pixels fits."""
    return (255 + delta // 2) // delta


def _rows(sym: np.ndarray) -> np.ndarray:
    """(n, C, H, W) -> (n, C*H, W): each channel's rows one after another."""
    return sym.reshape(len(sym), -1, sym.shape[-1])


def contexts(above: np.ndarray) -> np.ndarray:
    """The context of every symbol of a row from the row above it: (n, W) -> (n, W) in 0..8."""
    a = np.minimum(np.abs(above), 2)
    side = np.zeros_like(a)
    side[:, 1:] = a[:, :-1]
    side[:, :-1] = np.maximum(side[:, :-1], a[:, 1:])
    return a * 3 + side


def fit(sym: np.ndarray, delta: int) -> np.ndarray:
    """Integer tables (CONTEXTS, 2 * span + 1) from training images' residual symbols (n, C, H, W)."""
    return tables.quantise(counts(sym, delta)[0] + SMOOTHING)


def counts(sym: np.ndarray, delta: int) -> tuple[np.ndarray, float]:
    """(how often each symbol occurs in each context (CONTEXTS, 2 * span + 1), and the bits `push`
    spends besides the tables' symbols: none here). Counts of images add up."""
    k, s = 2 * span(delta) + 1, span(delta)
    rows = _rows(np.asarray(sym, np.int64))
    above = np.concatenate([np.zeros_like(rows[:, :1]), rows[:, :-1]], axis=1)
    at = contexts(above.reshape(-1, rows.shape[-1])).ravel() * k + rows.ravel() + s
    return np.bincount(at, minlength=CONTEXTS * k).reshape(CONTEXTS, k), 0.0


def push(coder, sym: np.ndarray, w: np.ndarray) -> None:
    """Push the symbols (n, C, H, W) of a chunk; `pop` returns them row by row from the first."""
    rows, s = _rows(np.asarray(sym, np.int64)), (w.shape[1] - 1) // 2
    for i in range(rows.shape[1] - 1, -1, -1):  # a stack: the last row first
        above = rows[:, i - 1] if i else np.zeros_like(rows[:, 0])
        tables.push(coder, rows[:, i].ravel() + s, w[contexts(above).ravel()])


def pop(coder, n: int, shape: tuple[int, int, int], w: np.ndarray) -> np.ndarray:
    """Pop a chunk's symbols: (n, C, H, W) int64."""
    c, h, width = shape
    s = (w.shape[1] - 1) // 2
    out = np.zeros((n, c * h, width), np.int64)
    above = np.zeros((n, width), np.int64)
    for i in range(c * h):
        out[:, i] = tables.pop(coder, w[contexts(above).ravel()]).reshape(n, width) - s
        above = out[:, i]
    return out.reshape(n, c, h, width)
