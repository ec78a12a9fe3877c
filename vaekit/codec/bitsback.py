"""Lossless coding by bits-back with ANS (BB-ANS; Townsend, Bird & Barber 2019).

Encoding an image x onto the ANS stack: pop a latent z ~ q(z|x) off the stack (decoding with the
posterior uses the stack's bits as randomness), push x with p(x|z), push z with p(z). The net
cost is -log p(x|z) - log p(z) + log q(z|x): the -ELBO of one posterior draw, in bits. Decoding
runs the steps backwards and pushes z with q(z|x) again, which returns the borrowed bits.

Latents are discretised into 2**LATENT_BITS buckets of equal mass under the prior N(0, 1)
(so p(z) is uniform: LATENT_BITS bits per value), z is the bucket's centre, and q(z|x) is the
posterior's mass per bucket. Pixels use the discretised logistic's bins (vaekit.model.likelihood_np);
a model with a pixel context codes them in groups whose neighbours are already decoded (`waves`), and
so does the pixel model fitted to the archive's images for a Gaussian or Bernoulli model (`fitted`).
Every table is quantised to integers (vaekit.codec.tables) before it reaches the coder.

Determinism: the tables come from network outputs, so the decoder must see the same floats the
encoder saw. Every network call is one image, on the engine the archive records; a 16-bit CRC
of each image's pixels is pushed with it, and the stack must end on the seeded initial words,
so a decoder whose floats differ (another engine, machine or thread count) refuses
(`Desynchronised`) instead of writing wrong pixels (docs/codec.md has the measurements).
"""

from __future__ import annotations

import hashlib
import math
import zlib
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from vaekit.codec import colour, fitted, tables
from vaekit.codec.fitted import NEIGHBOURS  # (dy, dx) of a pixel context: vaekit.model.objective.causal_neighbours
from vaekit.errors import DamagedFile, VaekitError
from vaekit.model.likelihood_np import LEVELS, logistic_cdf_edges

LATENT_BITS = 10  # buckets per latent value: 2**10 (docs/codec.md: 8, 10 and 12 measured)
CHECK_BITS = 16  # per-image CRC bits pushed on the stack


class Desynchronised(DamagedFile):
    """A lossless archive that does not decode to what was encoded: damaged, or decoded on an
    engine, machine or thread count whose network outputs differ from the encoder's."""


@lru_cache(maxsize=4)
def latent_grid(bits: int = LATENT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """(edges (2**bits + 1,), centres (2**bits,)) of the prior's equal-mass buckets, float64.
    Pure-Python inverse CDF (statistics.NormalDist): the same numbers on every machine."""
    n, nd = 1 << bits, NormalDist()
    edges = np.array([-np.inf] + [nd.inv_cdf(j / n) for j in range(1, n)] + [np.inf])
    centres = np.array([nd.inv_cdf((j + 0.5) / n) for j in range(n)])
    return edges, centres


def _upper_tail(x: np.ndarray) -> np.ndarray:
    """P(N(0,1) > x) for x >= 0 (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7 in erf); numpy has
    no erfc, and any smooth enough q(z|x) is a valid bits-back posterior: this only costs rate."""
    t = 1.0 / (1.0 + 0.3275911 * x / math.sqrt(2))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return 0.5 * poly * np.exp(-0.5 * x * x)


def posterior_tables(mu: np.ndarray, logvar: np.ndarray, bits: int = LATENT_BITS) -> np.ndarray:
    """q(z|x) over the buckets of each latent value: (D,) -> (D, 2**bits) integer tables."""
    edges, _ = latent_grid(bits)
    sd = np.exp(0.5 * np.asarray(logvar, np.float64))[:, None]
    with np.errstate(invalid="ignore"):
        u = (edges[None, :] - np.asarray(mu, np.float64)[:, None]) / sd  # (D, n + 1) standardised edges
    tail = _upper_tail(np.minimum(np.abs(u), 40.0))  # P(N(0,1) > |u|)
    cdf = np.where(u >= 0, 1.0 - tail, tail)
    # a bucket above the mean from the upper tail, others from the CDF: no cancellation near 1
    p = np.where(u[:, :-1] >= 0, tail[:, :-1] - tail[:, 1:], cdf[:, 1:] - cdf[:, :-1])
    return tables.quantise(np.maximum(p, 0.0))


def pixel_tables(params: np.ndarray) -> np.ndarray:
    """The discretised logistic's 256 bins for every sub-pixel: params (2C, H, W) -> (C*H*W, 256)
    (pixels independent given z; a pixel context's tables are `_wave_tables`)."""
    c = params.shape[0] // 2
    return _bins(params[:c].ravel(), params[c:].ravel())


def _bins(mean: np.ndarray, log_s: np.ndarray) -> np.ndarray:
    """Quantised tables (P, 256) of the discretised logistic's bins for P means and log scales."""
    cdf = logistic_cdf_edges(mean, log_s)  # (P, 255)
    return tables.quantise(np.maximum(np.diff(cdf, axis=1, prepend=0.0, append=1.0), 0.0))


@lru_cache(maxsize=8)
def waves(h: int, w: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The pixels (rows, cols) in groups t = col + 2 row: every causal neighbour of a group's pixels
    lies in an earlier group, so a decoder can pop a group at a time (w + 2h - 2 groups, not h w)."""
    rows, cols = np.mgrid[:h, :w]
    t = (cols + 2 * rows).ravel()
    return tuple((rows.ravel()[t == k], cols.ravel()[t == k]) for k in range(int(t.max()) + 1))


def _wave_tables(p: np.ndarray, x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Tables (C * n, 256) of one group's sub-pixels from params p (6C, H, W, float64) and the
    pixels x (C, H, W) decoded so far (only the group's causal neighbours are read): the mean
    reads their residuals. Encoder and decoder both call it group by group, so they compute the
    same floats."""
    c, _, w = x.shape
    mean = p[:c, rows, cols]
    for k, (dy, dx) in enumerate(NEIGHBOURS):
        y, v = rows + dy, cols + dx
        inside = (y >= 0) & (v >= 0) & (v < w)
        y, v = np.where(inside, y, 0), np.where(inside, v, 0)
        res = np.where(inside, x[:, y, v].astype(np.float64) / (LEVELS - 1) - p[:c, y, v], 0.0)
        mean = mean + p[(2 + k) * c:(3 + k) * c, rows, cols] * res
    return _bins(mean.ravel(), p[c:2 * c, rows, cols].ravel())


def push_pixels(coder, x: np.ndarray, params: np.ndarray, pixels=None) -> None:
    """Push an image's pixels (C, H, W) with p(x|z): at once when they are independent given z
    (params of 2C maps), else one group of `waves` at a time, the last first, so that `pop_pixels`
    can rebuild each group's tables from the groups before it. `pixels`: a fitted pixel model
    (vaekit.codec.fitted) for a model without a logistic likelihood, read group by group too."""
    c = x.shape[0]
    if pixels is None and params.shape[0] == 2 * c:
        tables.push(coder, np.asarray(x).ravel(), pixel_tables(params))
        return
    group = _group_tables(params, pixels)
    x = colour.forward(x) if isinstance(pixels, colour.Green) else x  # coded as G, R - G, B - G
    for rows, cols in reversed(waves(*x.shape[1:])):
        tables.push(coder, x[:, rows, cols].ravel(), group(x, rows, cols))


def pop_pixels(coder, params: np.ndarray, shape: tuple[int, int, int], pixels=None) -> np.ndarray:
    """The image (C, H, W) uint8 that `push_pixels` pushed with these params (and pixel model)."""
    c = shape[0]
    if pixels is None and params.shape[0] == 2 * c:
        return tables.pop(coder, pixel_tables(params)).astype(np.uint8).reshape(shape)
    x, group = np.zeros(shape, np.uint8), _group_tables(params, pixels)
    for rows, cols in waves(*shape[1:]):
        x[:, rows, cols] = tables.pop(coder, group(x, rows, cols)).reshape(c, -1)
    return colour.inverse(x) if isinstance(pixels, colour.Green) else x


def _group_tables(params: np.ndarray, pixels):
    """group(x, rows, cols) -> one group's tables: a logistic pixel context's or a fitted model's."""
    if pixels is not None:
        m = fitted.means(pixels.likelihood, params)  # once, not per group
        m = colour.mean(m) if isinstance(pixels, colour.Green) else m
        return lambda x, rows, cols: pixels.tables(x, m, rows, cols)
    p = np.asarray(params, np.float64)  # once, not per group
    return lambda x, rows, cols: _wave_tables(p, x, rows, cols)


def crc(x: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(x, np.uint8).tobytes()) & ((1 << CHECK_BITS) - 1)


def initial_words(latent_dim: int, bits: int = LATENT_BITS) -> np.ndarray:
    """The stack's seeded start: enough bits for the first image's posterior draw, the same on
    every machine (sha256 in counter mode). The decoder must end on exactly these words."""
    n = (latent_dim * bits + 31) // 32 + 2
    raw = b"".join(hashlib.sha256(f"vaekit-bbans|{i}".encode()).digest() for i in range((n * 4 + 31) // 32))
    words = np.frombuffer(raw[: n * 4], "<u4").astype(np.uint32)
    words[-1] |= np.uint32(1 << 31)  # a non-zero head word: a valid ANS state
    return words


def encode_chunk(net, images, bits: int = LATENT_BITS) -> tuple[np.ndarray, float]:
    """Images (each uint8 (C, H, W)) -> (the chunk's ANS words, uint32; its bits beyond the start).
    `net` is a vaekit.codec.net.Net; every call is one image, in the order the decoder repeats."""
    start = initial_words(net.latent_dim, bits)
    coder = tables.ans(start)
    for x in images:
        mu, logvar = net.posterior(x)
        j = tables.pop(coder, posterior_tables(mu, logvar, bits))  # bits back: z ~ q(z|x)
        push_pixels(coder, np.asarray(x), net.likelihood(latent_grid(bits)[1][j]), net.pixels)
        tables.push_uniform(coder, j, 1 << bits)  # p(z): uniform over equal-mass buckets
        tables.push_uniform(coder, np.array([crc(x)]), 1 << CHECK_BITS)
    words = np.asarray(coder.get_compressed(), dtype=np.uint32)
    return words, float(coder.num_bits() - 32 * len(start))


def decode_chunk(net, words: np.ndarray, count: int, bits: int = LATENT_BITS, source: str = "archive"):
    """Yield the chunk's `count` images, last encoded first, each (C, H, W) uint8; raise
    Desynchronised at the first image whose CRC fails, or if the stack does not end on its start."""
    try:
        coder = tables.ans(words)  # constriction refuses words that end in a zero word as it is handed them
    except ValueError as e:
        raise Desynchronised(f"{source} cannot be decoded ({e}); it is damaged or was written by another engine") from None
    _, centres = latent_grid(bits)
    shape = net.shape
    for i in range(count):
        try:
            check = int(tables.pop_uniform(coder, 1, 1 << CHECK_BITS)[0])
            j = tables.pop_uniform(coder, net.latent_dim, 1 << bits)
            x = pop_pixels(coder, net.likelihood(centres[j]), shape, net.pixels)
        except VaekitError:  # the model's own refusal (an export's part missing or foreign), not the archive's
            raise
        except (ValueError, RuntimeError, OverflowError) as e:  # the coder ran dry: wrong or damaged data
            raise Desynchronised(f"{source} cannot be decoded ({e}); it is damaged or was written by another engine") from None
        if crc(x) != check:
            raise Desynchronised(
                f"{source}: image {count - i} of its chunk fails its checksum; the archive is damaged or was written "
                f"on another engine, machine or thread count (see docs/codec.md)")
        mu, logvar = net.posterior(x)
        tables.push(coder, j, posterior_tables(mu, logvar, bits))
        yield x
    rest = np.asarray(coder.get_compressed(), dtype=np.uint32)
    if not np.array_equal(rest, initial_words(net.latent_dim, bits)):
        raise Desynchronised(f"{source}: a chunk does not end where it started; the archive is damaged")
