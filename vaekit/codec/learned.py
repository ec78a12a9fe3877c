"""A learned pixel model for lossless archives of models without 8-bit levels (Gaussian, Bernoulli).

vaekit.codec.fitted codes such a model's pixels with a context model around the decoder's mean
image, its tables binned by hand. This one learns the same kind of rule: a small network (two
tanh layers of HIDDEN units, ~1,900 weights) reads a sub-pixel's causal neighbours (their
residuals from the mean, their levels, whether they sit at 0 or 255) and the mean image around it,
and gives the distribution of its level: the probabilities of levels 0 and 255 and a discretised
logistic over the levels between (its centre the mean plus a learned shift, its scale learned).
It is fitted, by Adam on a sample of the first images' sub-pixels, when an archive is written and
stored in its header as float16 (about 4 kB); encoder and decoder evaluate it in float64 numpy
from the stored numbers, group by group of bitsback.waves, so they compute the same tables.

Whether an archive uses it is measured, not assumed (`choose`): both models are scored on
sub-pixels the network did not train on, and the network is kept only where its smaller code
outweighs its larger header over the archive's expected size. docs/codec.md has the numbers.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np

from vaekit.codec import colour, fitted, tables
from vaekit.model.likelihood_np import LEVELS, LOGISTIC_LOG_SCALE_BOUNDS

KIND = "learned-1"
# Causal neighbours: each lies in an earlier group of bitsback.waves (dx + 2 dy < 0).
NEIGHBOURS = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, -2), (-1, -2), (-2, -1), (-2, 0), (-2, 1), (-2, 2))
WINDOW = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))  # the mean image around the sub-pixel
HIDDEN = 24
SHIFT = 0.1  # the centre's learned shift is SHIFT * output, [0, 1] units
STEPS, BATCH, LR = 6000, 2048, 0.03  # chosen on product photos' archives (docs/codec.md)
FIT_SUBPIXELS = 1 << 18  # the training sample, drawn from the fit images: bounds the fit's memory
HELD_OUT = 1 << 15  # sub-pixels the choice is measured on
MIN_HELD = 1000  # fewer held-out sub-pixels than this measure nothing: the context model is kept
MIN_ARCHIVE = 200_000  # sub-pixels an archive needs before a network is tried (its header is ~4 kB)


def width(channels: int) -> int:
    """The number of features a sub-pixel's network reads."""
    return 4 * len(NEIGHBOURS) + len(WINDOW) + channels


def shapes(channels: int) -> list[tuple[int, ...]]:
    """The stored arrays, in order: three layers' weights and biases."""
    d = width(channels)
    return [(HIDDEN, d), (HIDDEN,), (HIDDEN, HIDDEN), (HIDDEN,), (4, HIDDEN), (4,)]


def features(x: np.ndarray, m: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """What the network reads for the sub-pixels (rows, cols) of an image x (C, H, W) uint8 whose
    causal neighbours are known, m its decoder mean (C, H, W): (C * n, width), channel-major."""
    c, h, w = x.shape
    out = []
    for dy, dx in NEIGHBOURS:
        y, v = rows + dy, cols + dx
        inside = (y >= 0) & (v >= 0) & (v < w)
        y, v = np.where(inside, y, 0), np.where(inside, v, 0)
        level = x[:, y, v]
        out += [np.where(inside, level / (LEVELS - 1) - m[:, y, v], 0.0), np.where(inside, level / (LEVELS - 1), 0.0),
                (inside & (level == 0)).astype(np.float64), (inside & (level == LEVELS - 1)).astype(np.float64)]
    for dy, dx in WINDOW:
        y, v = rows + dy, cols + dx
        inside = (y >= 0) & (y < h) & (v >= 0) & (v < w)
        out.append(np.where(inside, m[:, np.where(inside, y, 0), np.where(inside, v, 0)], 0.0))
    out += [np.broadcast_to(np.eye(c)[:, j:j + 1], (c, len(rows))) for j in range(c)]  # which channel
    return np.stack(out, axis=-1).reshape(c * len(rows), -1)


def forward(arrays: list[np.ndarray], f: np.ndarray) -> np.ndarray:
    """The network's four outputs per sub-pixel, float64: (n, width) -> (n, 4). By numpy's own
    einsum loops, not a BLAS matmul, whose sums may be split by its thread count: encoder and
    decoder must add in the same order."""
    w1, b1, w2, b2, w3, b3 = arrays
    h = np.tanh(np.einsum("nd,hd->nh", f, w1) + b1)
    h = np.tanh(np.einsum("nd,hd->nh", h, w2) + b2)
    return np.einsum("nd,hd->nh", h, w3) + b3


def distribution(out: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Probabilities (n, 256) from the outputs (n, 4) and the sub-pixels' decoder means (n,):
    levels 0 and 255 their own, the levels between a discretised logistic whose tails fold into
    levels 1 and 254."""
    centre = mean + SHIFT * out[:, 0]
    scale = np.exp(np.clip(out[:, 1], *LOGISTIC_LOG_SCALE_BOUNDS))
    logits = np.stack([out[:, 2], out[:, 3], np.zeros(len(out))], axis=1)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    edges = (np.arange(1, LEVELS - 2, dtype=np.float64) + 0.5) / (LEVELS - 1)  # between levels 1..254
    cdf = 0.5 * (1.0 + np.tanh(0.5 * (edges[None] - centre[:, None]) / scale[:, None]))
    inner = np.diff(cdf, axis=1, prepend=0.0, append=1.0)
    return np.concatenate([p[:, :1], inner * p[:, 2:], p[:, 1:2]], axis=1)


@dataclass(frozen=True)
class LearnedPixels:
    """A fitted network, as the archive's header keeps it (to_json, from_json)."""
    likelihood: str  # the model's: "gaussian" or "bernoulli"
    arrays: list  # float64 copies of the stored float16 numbers, shapes(channels)

    def tables(self, x: np.ndarray, m: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Quantised tables (C * n, 256) of the pixels (rows, cols), channel-major as x[:, rows, cols]."""
        out = forward(self.arrays, features(x, m, rows, cols))
        return tables.quantise(distribution(out, m[:, rows, cols].ravel()))

    def to_json(self) -> dict:
        raw = b"".join(a.astype("<f2").tobytes() for a in self.arrays)
        return {"kind": KIND, "hidden": HIDDEN, "float16": base64.b64encode(raw).decode("ascii")}

    @classmethod
    def from_json(cls, meta: dict, likelihood: str, channels: int) -> "LearnedPixels":
        """The header's network, checked: ValueError naming what is wrong."""
        if meta.get("hidden") != HIDDEN or not isinstance(meta.get("float16"), str):
            raise ValueError("its learned pixel model is not of this version's shape")
        try:
            raw = base64.b64decode(meta["float16"].encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise ValueError("its learned pixel model's numbers are not base64") from None
        want = shapes(channels)
        if len(raw) != 2 * sum(math.prod(s) for s in want):
            raise ValueError(f"its learned pixel model holds {len(raw)} bytes, not the {channels}-channel network's")
        flat = np.frombuffer(raw, "<f2").astype(np.float64)
        if not np.isfinite(flat).all():
            raise ValueError("its learned pixel model holds a number that is not finite")
        return cls(likelihood, _split(flat, want))


def from_json(meta, likelihood: str, channels: int):
    """Either kind of fitted pixel model from an archive's header, or either one coding colour as
    G, R - G, B - G (vaekit.codec.colour): ValueError if none."""
    if isinstance(meta, dict) and meta.get("kind") == colour.KIND:
        inner = meta.get("inner")
        if channels != 3 or not isinstance(inner, dict) or inner.get("kind") == colour.KIND:
            raise ValueError("its colour-transformed pixel model is not of a 3-channel model, or holds no pixel model")
        return colour.Green(from_json(inner, likelihood, channels))
    if isinstance(meta, dict) and meta.get("kind") == KIND:
        return LearnedPixels.from_json(meta, likelihood, channels)
    return fitted.PixelModel.from_json(meta, likelihood, channels)


def _split(flat: np.ndarray, want: list[tuple[int, ...]]) -> list[np.ndarray]:
    arrays, at = [], 0
    for s in want:
        n = math.prod(s)
        arrays.append(flat[at:at + n].reshape(s))
        at += n
    return arrays
