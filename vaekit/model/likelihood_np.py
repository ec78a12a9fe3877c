"""The floor of each likelihood p(x|z), in numpy: the NLL a perfect reconstruction still costs;
the discretised logistic's bin probabilities, which the bits-back coder turns into tables; and
a Gaussian's density discretised to the 8-bit levels, which makes its bits/dim a code length.

The likelihood objects themselves (NLL and mean image, in torch) are vaekit.model.objective.Bernoulli,
.Gaussian and .Logistic, whose `floor` is the function here; this module imports no torch, so the
onnxruntime engine's scores (and vaekit.codec) use the very same maths.
"""

from __future__ import annotations

import math

import numpy as np

from vaekit.errors import BadInput, DamagedFile

LOG_2PI = math.log(2 * math.pi)


def bernoulli_floor(x: np.ndarray, log_scale=None) -> np.ndarray:
    """Binary entropy of every value, summed over channels: (N, C, H, W) in [0, 1] -> (N, H, W)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(x > 0, x * np.log(x), 0.0) + np.where(x < 1, (1 - x) * np.log1p(-x), 0.0))
    return h.sum(1)


def gaussian_floor(x: np.ndarray, log_scale=None) -> np.ndarray:
    """log sigma + log(2 pi) / 2 per value, summed over channels: the same for every image."""
    if log_scale is None:
        raise DamagedFile("a gaussian model needs its log_scale (ModelInfo.log_scale) for the excess score")
    per_channel = np.asarray(log_scale, dtype=np.float64) + 0.5 * LOG_2PI  # (C,)
    return np.broadcast_to(per_channel.sum(), (x.shape[0], *x.shape[2:])).copy()


def logistic_floor(x: np.ndarray, log_scale=None) -> np.ndarray:
    """Zero: a discretised likelihood can put all its mass on the right 8-bit level, so the
    -ELBO of a perfect reconstruction tends to the KL alone (and `excess` is the -ELBO)."""
    return np.zeros((x.shape[0], *x.shape[2:]), np.float64)


FLOORS = {"bernoulli": bernoulli_floor, "gaussian": gaussian_floor, "logistic": logistic_floor}

LEVELS = 256  # 8-bit pixels: the discretised logistic's bins are the levels 0..255 (x = level / 255)
LOGISTIC_LOG_SCALE_BOUNDS = (-7.0, 2.0)  # log s in units of [0, 1] pixels (PixelCNN++ clamps at -7)


def logistic_cdf_edges(mean: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """The discretised logistic's CDF at the 255 inner bin edges, float64: (...,) -> (..., 255).

    Bin k (level k, x = k/255) spans [(k - 1/2)/255, (k + 1/2)/255]; level 0 also takes all the
    mass below and level 255 all above (Salimans et al. 2017, PixelCNN++), so the probabilities
    are the differences of [0, cdf..., 1] and always sum to 1."""
    edges = (np.arange(LEVELS - 1, dtype=np.float64) + 0.5) / (LEVELS - 1)  # (255,)
    m = np.asarray(mean, np.float64)[..., None]
    s = np.exp(np.clip(np.asarray(log_scale, np.float64), *LOGISTIC_LOG_SCALE_BOUNDS))[..., None]
    return 0.5 * (1.0 + np.tanh(0.5 * (edges - m) / s))  # sigmoid, without exp overflow


def floor(likelihood: str, x: np.ndarray, log_scale=None) -> np.ndarray:
    try:
        fn = FLOORS[likelihood]
    except (KeyError, TypeError):
        raise BadInput(f"likelihood must be one of {', '.join(FLOORS)}, got {likelihood!r}") from None
    return fn(x, log_scale)


# Numerical Recipes' erfc (Press et al., "erfcc"): relative error < 1.2e-7 for every z >= 0, and
# its log is computed without forming exp(-z^2), so a tail of any depth keeps its digits
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
         1.48851587, -0.82215223, 0.17087277)


def _erfc_parts(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(t, exponent) with P(N(0, 1) > u) = t / 2 * exp(exponent), u >= 0 (inf: t = 0)."""
    z = np.asarray(u, np.float64) * (1.0 / math.sqrt(2.0))
    t = 1.0 / (1.0 + 0.5 * z)
    poly = np.full_like(t, _ERFC[-1])
    for c in reversed(_ERFC[:-1]):
        poly *= t
        poly += c
    return t, poly - z * z


def log_normal_tail(u: np.ndarray) -> np.ndarray:
    """log P(N(0, 1) > u) for u >= 0, float64, in numpy alone (the torch-free runtime has no scipy)."""
    t, exponent = _erfc_parts(u)
    with np.errstate(divide="ignore"):  # u = inf: log 0 = -inf, the empty tail it is
        return math.log(0.5) + np.log(t) + exponent


FAR = 20.0  # past this many sigmas a tail's mass is taken in logs (its difference of two tails, too)


def _log_mass(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """log P(lo < N(0, 1) < hi), lo < hi (either may be infinite), accurate in both tails: an
    interval below 0 is mirrored above it, then it lies in the upper tail (lo >= 0) or spans 0."""
    below = hi <= 0
    a = np.abs(np.where(below, hi, lo))  # the edge nearer 0, mirrored
    b = np.abs(np.where(below, lo, hi))
    tail = below | (lo >= 0)
    with np.errstate(invalid="ignore", divide="ignore"):  # infinite edges: 0 * exp(-inf) is 0 here
        (ta, ea), (tb, eb) = _erfc_parts(a), _erfc_parts(b)
        qa = np.where(ta > 0, 0.5 * ta * np.exp(ea), 0.0)
        qb = np.where(tb > 0, 0.5 * tb * np.exp(eb), 0.0)
        out = np.log(np.where(tail, qa - qb, 1.0 - qa - qb))
    far = tail & (a > FAR)  # a mass of e^-200 or less: its digits kept in logs
    if far.any():
        la, lb = log_normal_tail(a[far]), log_normal_tail(b[far])
        with np.errstate(divide="ignore"):
            out[far] = la + np.log1p(-np.exp(lb - la))
    return out


NARROW = 0.3  # a bin narrower than this many sigmas times its distance from the mean: the series below


def gaussian_code_nll(x: np.ndarray, mean: np.ndarray, log_scale) -> np.ndarray:
    """-log P(x) in nats per image, (N, C, H, W) -> (N,): the Gaussian N(mean, sigma^2) (one log
    sigma per channel, [0, 1] pixel units) discretised to the 256 levels, each level taking the
    mass within half a level of it and levels 0 and 255 their tails, as the logistic's bins do.
    A code length of the 8-bit pixels, so never negative, where the density's -log p(x) is
    negative whenever sigma is well under one level.

    A level of width w sigmas centred u sigmas from the mean holds w phi(u) (1 + w^2 (u^2 - 1) / 24
    + O(w^4 u^4)): where w (1 + |u|) < NARROW, as for most pixels of a model whose sigma spans a
    few levels, that series (its next term under 4e-6 of the mass); elsewhere, and for levels 0
    and 255, the masses from the tails (_log_mass). The series is ~4x cheaper."""
    x, mean = np.asarray(x, np.float64), np.asarray(mean, np.float64)
    sigma = np.exp(np.asarray(log_scale, np.float64)).reshape(1, -1, 1, 1)
    step = max(1, CHUNK_VALUES // max(1, x[0].size if len(x) else 1))  # images at a time: temporaries stay in cache
    return np.concatenate([_code_nll(x[i:i + step], mean[i:i + step], sigma) for i in range(0, len(x), step)]
                          or [np.zeros(0)])


CHUNK_VALUES = 1 << 16  # ~20 temporaries of 512 kB each: 0.43 against 0.66 ms per 64 px RGB image whole-batch


def _code_nll(x: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """gaussian_code_nll of a few images (sigma (1, C, 1, 1))."""
    width = (1.0 / (LEVELS - 1)) / sigma  # (1, C, 1, 1): a bin, in sigmas
    u = x - mean
    u /= sigma
    u2 = u * u
    edge = 0.5 / (LEVELS - 1)
    series = (x > edge) & (x < 1.0 - edge)  # levels 1..254
    series &= u2 < (NARROW / width - 1.0) ** 2  # width (1 + |u|) < NARROW (a wider bin: none)
    series &= width < NARROW
    with np.errstate(invalid="ignore", over="ignore"):  # wide bins' series, replaced below
        out = np.log1p((u2 - 1.0) * (width * width / 24.0))
    out -= 0.5 * u2
    out += np.log(width) - 0.5 * LOG_2PI
    rest = ~series
    if rest.any():
        level = np.rint(x[rest] * (LEVELS - 1))
        half = np.broadcast_to(0.5 * width, u.shape)[rest]
        lo = np.where(level <= 0, -np.inf, u[rest] - half)
        hi = np.where(level >= LEVELS - 1, np.inf, u[rest] + half)
        out[rest] = _log_mass(lo, hi)
    out[~np.isfinite(u)] = np.nan  # a reconstruction that is not a number codes nothing (its -ELBO is NaN too)
    return -out.reshape(len(x), -1).sum(1)
