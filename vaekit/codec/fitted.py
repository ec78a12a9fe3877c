"""A pixel model fitted to an archive's own images, for models whose likelihood has no 8-bit levels.

A lossless archive codes each pixel with a distribution over its 256 levels. A `logistic` model
has one of its own (its -ELBO is the code length). A Gaussian model (the default for grey photos)
has one spread per channel, set by the objects' edges and texture and paid on every pixel: its
own density, discretised, coded 1,000 held-out product photos at 3.12 bits/dim, 1.09x WebP
lossless; a Bernoulli model (black-and-white images) has no spread at all. Both still predict
every pixel: the decoder's mean image. So their archives code pixels with a small context model
around that mean (in the spirit of LOCO-I and CALIC), fitted to the first images of the archive
and stored in its header (at most ~2.5 kB of JSON a channel):

- prediction: the mean plus weights times the causal neighbours' residuals (NEIGHBOURS,
  the pixel context a logistic model learns);
- spread: a discretised logistic whose scale depends on the mean's level (16 bins) and the
  neighbours' mean absolute residual (6 bins), each the maximum-likelihood scale on a grid;
- the levels 0 and 255: their own probability by context (the mean's level, and how many causal
  neighbours are at that level), since photos on black and digits are mostly exactly 0.

Any such distribution is a valid code, and fitting it needs no labels: only the images coded.
docs/codec.md has what it measured. Encoder and decoder compute every table from the same floats
(the decoder's outputs and the header's numbers), group by group of bitsback.waves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vaekit.codec import tables
from vaekit.model.likelihood_np import LEVELS, LOGISTIC_LOG_SCALE_BOUNDS, logistic_cdf_edges

KIND = "context-1"  # what the header's "pixels" holds; another kind is refused
FIT_IMAGES = 256  # the first images of an archive fit its pixel model
MEAN_BINS = 16
ACTIVITY_EDGES = (1.0, 3.0, 8.0, 20.0, 50.0)  # neighbours' mean |residual|, grey levels: 6 bins
NEIGHBOURS = ((0, -1), (-1, -1), (-1, 0), (-1, 1))  # left, up-left, up, up-right: a logistic model's pixel
# context too (vaekit.model.objective.causal_neighbours); bitsback imports this one copy
SCALE_GRID = np.linspace(LOGISTIC_LOG_SCALE_BOUNDS[0], 0.0, 57)
MIN_COUNT = 20  # pixels a context needs for its own scale or edge probability


def means(likelihood: str, params: np.ndarray) -> np.ndarray:
    """The decoder's mean image (C, H, W), float64, from its parameters: a Gaussian's means as they
    are, a Bernoulli's logits through the sigmoid; a value that is not finite (a diverged model's)
    as mid-grey, 0 or 1, so the fit's least squares still solve and the archive is still exact, as
    a logistic model's is."""
    p = np.asarray(params, np.float64)
    p = p if likelihood == "gaussian" else 0.5 * (1.0 + np.tanh(0.5 * p))
    return np.nan_to_num(p, nan=0.5, posinf=1.0, neginf=0.0)


@dataclass(frozen=True)
class Context:
    """What a group of pixels' tables depend on, per channel: arrays (C, n)."""
    pred: np.ndarray  # the predicted value, [0, 1] units
    scale_key: np.ndarray  # mean bin x activity bin
    key0: np.ndarray  # mean bin x causal neighbours at level 0
    key255: np.ndarray  # mean bin x causal neighbours at level 255


def context(weights: np.ndarray, x: np.ndarray, m: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> Context:
    """The context of pixels (rows, cols) of an image x (C, H, W) uint8 whose causal neighbours are
    known, m its decoder mean (C, H, W), weights (C, 4)."""
    _, _, w = x.shape
    pred = m[:, rows, cols].copy()
    act = np.zeros_like(pred)
    n0 = np.zeros(pred.shape, np.int64)
    n255 = np.zeros(pred.shape, np.int64)
    for k, (dy, dx) in enumerate(NEIGHBOURS):
        y, v = rows + dy, cols + dx
        inside = (y >= 0) & (v >= 0) & (v < w)
        y, v = np.where(inside, y, 0), np.where(inside, v, 0)
        level = x[:, y, v]
        res = np.where(inside, level / (LEVELS - 1) - m[:, y, v], 0.0)
        pred += weights[:, k:k + 1] * res
        act += np.abs(res)
        n0 += inside & (level == 0)
        n255 += inside & (level == LEVELS - 1)
    mean_bin = np.clip((np.clip(m[:, rows, cols], 0.0, 1.0) * MEAN_BINS).astype(np.int64), 0, MEAN_BINS - 1)
    act_bin = np.searchsorted(np.array(ACTIVITY_EDGES), act * (LEVELS - 1) / len(NEIGHBOURS), side="right")
    return Context(pred, mean_bin * (len(ACTIVITY_EDGES) + 1) + act_bin, mean_bin * 5 + n0, mean_bin * 5 + n255)


@dataclass(frozen=True)
class PixelModel:
    """A fitted pixel model, per channel, as the archive's header keeps it (to_json, from_json)."""
    likelihood: str  # the model's: "gaussian" or "bernoulli"
    weights: np.ndarray  # (C, 4)
    log_scale: np.ndarray  # (C, MEAN_BINS * 6)
    p0: np.ndarray  # (C, MEAN_BINS * 5), NaN: the logistic's own mass
    p255: np.ndarray  # (C, MEAN_BINS * 5)

    def tables(self, x: np.ndarray, m: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Quantised tables (C * n, 256) of the pixels (rows, cols), channel-major as x[:, rows, cols]."""
        ctx = context(self.weights, x, m, rows, cols)
        ch = np.arange(len(self.weights))[:, None]
        cdf = logistic_cdf_edges(ctx.pred.ravel(), self.log_scale[ch, ctx.scale_key].ravel())
        p = np.diff(cdf, axis=1, prepend=0.0, append=1.0)  # (C * n, 256)
        edge0, edge255 = self.p0[ch, ctx.key0].ravel(), self.p255[ch, ctx.key255].ravel()
        edge0 = np.where(np.isnan(edge0), p[:, 0], edge0)
        edge255 = np.where(np.isnan(edge255), p[:, -1], edge255)
        inner = p[:, 1:-1] / np.maximum(p[:, 1:-1].sum(1, keepdims=True), 1e-300)
        rest = np.maximum(1.0 - edge0 - edge255, 1e-9)[:, None]
        return tables.quantise(np.concatenate([edge0[:, None], inner * rest, edge255[:, None]], axis=1))

    def to_json(self) -> dict:
        def rows(a):
            return [[None if math.isnan(v) else float(v) for v in r] for r in a.tolist()]

        return {"kind": KIND, "weights": rows(self.weights), "log_scale": rows(self.log_scale),
                "p0": rows(self.p0), "p255": rows(self.p255)}

    @classmethod
    def from_json(cls, meta, likelihood: str, channels: int) -> "PixelModel":
        """The header's pixel model, checked: ValueError naming what is wrong."""
        if not isinstance(meta, dict) or meta.get("kind") != KIND:
            raise ValueError(f"its pixel model is missing or of an unknown kind ({str(meta)[:40]!r})")
        shapes = {"weights": 4, "log_scale": MEAN_BINS * (len(ACTIVITY_EDGES) + 1), "p0": MEAN_BINS * 5,
                  "p255": MEAN_BINS * 5}
        arrays = {name: _array(meta.get(name), channels, n, name) for name, n in shapes.items()}
        if np.abs(arrays["weights"]).max() >= 1 or not np.isfinite(arrays["weights"]).all():
            raise ValueError("its pixel model's weights are not in (-1, 1)")
        lo, hi = LOGISTIC_LOG_SCALE_BOUNDS
        if not ((arrays["log_scale"] >= lo) & (arrays["log_scale"] <= hi)).all():
            raise ValueError("its pixel model's scales are out of bounds")
        for name in ("p0", "p255"):
            a = arrays[name]
            if not np.all(np.isnan(a) | ((a > 0) & (a < 1))):
                raise ValueError(f"its pixel model's {name} are not probabilities")
        return cls(likelihood, **arrays)


def _array(value, channels: int, n: int, name: str) -> np.ndarray:
    ok = (isinstance(value, list) and len(value) == channels
          and all(isinstance(r, list) and len(r) == n for r in value)
          and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for r in value for v in r))
    if not ok:
        raise ValueError(f"its pixel model's {name} is not {channels} rows of {n} numbers")
    try:
        return np.array([[np.nan if v is None else float(v) for v in r] for r in value], np.float64)
    except OverflowError:  # JSON's integers have no bound; a float's do
        raise ValueError(f"its pixel model's {name} holds a number beyond any float") from None


def fit(likelihood: str, images: list[np.ndarray], mean_images: list[np.ndarray]) -> PixelModel:
    """Fit the pixel model to images (each uint8 (C, H, W)) and their decoder means (float64, same shape)."""
    c = images[0].shape[0]
    level = np.concatenate([x.reshape(c, -1) for x in images], axis=1)  # (C, N)
    weights = _weights(images, mean_images)
    pred, skey, k0, k255 = _contexts(weights, images, mean_images)
    log_scale = np.stack([_scales(level[i], pred[i], skey[i]) for i in range(c)])
    p0 = np.stack([_edge(level[i] == 0, k0[i]) for i in range(c)])
    p255 = np.stack([_edge(level[i] == LEVELS - 1, k255[i]) for i in range(c)])
    # stored as they are coded with, in few digits: the header of a one-image archive stays small
    return PixelModel(likelihood, np.round(weights, 4), log_scale, _digits(p0), _digits(p255))


def _weights(images: list[np.ndarray], mean_images: list[np.ndarray]) -> np.ndarray:
    """Each channel's least-squares weights (C, 4) of the causal neighbours' residuals for a pixel's
    own residual (level - mean), clipped into (-1, 1): from the normal equations summed image by
    image, so no (C, N, 4) array of every pixel's neighbours (32 bytes a sub-pixel) is built."""
    c = images[0].shape[0]
    ata, atb = np.zeros((c, 4, 4)), np.zeros((c, 4))
    for x, m in zip(images, mean_images):
        own = (x / (LEVELS - 1) - m).reshape(c, -1)  # (C, H*W)
        res = np.stack([_neighbour_residual(x, m, dy, dx) for dy, dx in NEIGHBOURS], axis=-1)  # (C, H*W, 4)
        ata += np.einsum("cnk,cnl->ckl", res, res)
        atb += np.einsum("cnk,cn->ck", res, own)
    # lstsq: the least-norm solution where the neighbours are collinear (an image of one level)
    return np.stack([np.clip(np.linalg.lstsq(ata[i], atb[i], rcond=None)[0], -0.99, 0.99) for i in range(c)])


def _contexts(weights: np.ndarray, images: list[np.ndarray], mean_images: list[np.ndarray]):
    """Every pixel's context with these weights, the images side by side: (pred, scale_key, key0,
    key255), each (C, N), filled image by image (no second copy of them all)."""
    c, h, w = images[0].shape
    rows, cols = (a.ravel() for a in np.mgrid[:h, :w])
    n = h * w
    keys = tuple(np.empty((c, n * len(images)), np.int16) for _ in range(3))  # every key < 96
    out = (np.empty((c, n * len(images))),) + keys
    for j, (x, m) in enumerate(zip(images, mean_images)):
        ctx = context(weights, x, m, rows, cols)
        for a, part in zip(out, (ctx.pred, ctx.scale_key, ctx.key0, ctx.key255)):
            a[:, j * n:(j + 1) * n] = part
    return out


def _digits(p: np.ndarray, digits: int = 4) -> np.ndarray:
    """Probabilities to `digits` significant digits (NaN kept), still in (0, 1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.where(np.isnan(p), 1.0, p))))
    return np.where(np.isnan(p), np.nan, np.clip(np.round(p * scale) / scale, 1e-4, 1 - 1e-4))


def _neighbour_residual(x: np.ndarray, m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Every pixel's (dy, dx) neighbour's residual, 0 outside the image: (C, H*W)."""
    c, h, w = x.shape
    r = np.pad(x / (LEVELS - 1) - m, ((0, 0), (1, 0), (1, 1)))
    return r[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w].reshape(c, -1)


def _scales(level: np.ndarray, pred: np.ndarray, key: np.ndarray) -> np.ndarray:
    """The maximum-likelihood log scale of each scale context on SCALE_GRID; the channel's own for
    a context with fewer than MIN_COUNT pixels."""
    every = _best_scale(level, pred)
    out = np.full(MEAN_BINS * (len(ACTIVITY_EDGES) + 1), every)
    for k in np.unique(key):
        sel = key == k
        if sel.sum() >= MIN_COUNT:
            out[k] = _best_scale(level[sel], pred[sel])
    return out


def _best_scale(level: np.ndarray, pred: np.ndarray) -> float:
    if len(level) > 20000:  # a spread is well fitted by a sample
        pick = np.linspace(0, len(level) - 1, 20000).astype(np.int64)
        level, pred = level[pick], pred[pick]
    half = 0.5 / (LEVELS - 1)
    hi = np.where(level == LEVELS - 1, np.inf, level / (LEVELS - 1) + half - pred)
    lo = np.where(level == 0, -np.inf, level / (LEVELS - 1) - half - pred)
    s = np.exp(SCALE_GRID)[:, None]
    mass = 0.5 * (np.tanh(0.5 * hi / s) - np.tanh(0.5 * lo / s))  # sigmoid(hi/s) - sigmoid(lo/s)
    cost = -np.log(np.maximum(mass, 1e-12)).sum(1)
    return float(SCALE_GRID[int(np.argmin(cost))])


def _edge(hit: np.ndarray, key: np.ndarray) -> np.ndarray:
    """The probability of an edge level per context (smoothed frequency, in [1e-4, 1 - 1e-4]); NaN
    for a context with fewer than MIN_COUNT pixels (the logistic's own mass is used)."""
    out = np.full(MEAN_BINS * 5, np.nan)
    for k in np.unique(key):
        sel = key == k
        if sel.sum() >= MIN_COUNT:
            out[k] = np.clip((hit[sel].sum() + 0.5) / (sel.sum() + 1.0), 1e-4, 1 - 1e-4)
    return out
