"""The lossy residual as block-DCT coefficients: what photos and colour images need.

vaekit.codec.residual codes the residual r = x - x_hat pixel by pixel, which suits sparse residuals
(the edges of digits): most pixels round to 0. A photo's residual is texture and shading spread over
every pixel, which a transform packs into a few coefficients (JPEG's and WebP's reason for one).
Here r is taken, per block of B x B pixels (B = 8, or 4 where the image's sides are not multiples
of 8), to an orthonormal colour basis (for RGB: the mean, red - blue, and red + blue - 2 green, so
a tinted grey costs one channel, not three) and through an orthonormal 2-D DCT. Each coefficient c
becomes the symbol sign(c) floor(|c| / step + THETA): THETA < 1/2 is a dead zone, which drops the
coefficients that cost more bits than the error they remove (0.25-0.3 dB better at equal bytes on
colour photo crops and the sample shapes, docs/codec.md).

A symbol s is coded as its signed size class k = sign(s) bit_length(|s|) (JPEG's categories: 0,
±1, ±2..3, ±4..7, ...) under the integer table of (channel, frequency band u + v, context), the
context being residual.contexts of the same coefficient in the block above (its size class, and the
larger of its neighbours') and how many coefficients of the block's lower bands are nonzero
(NONZERO's buckets); the k - 1 bits below the top bit of |s| follow as uniform symbols. The tables
count classes, so they stay small (27 symbols a row) at any step. Like the pixel residual,
the symbols never depend on a network output: they decode identically everywhere, and the pixels
round(x_hat + IDCT(step * s)) differ between engines only as x_hat does (the transforms' outputs
are put on a grid of 1/1024 first, so that their last bits do not decide a rounding).
"""

from __future__ import annotations

import numpy as np

from vaekit.codec import residual, tables

THETA = 0.25  # rounding offset of the quantiser: 0.5 would be nearest
MAX_CLASS = 13  # |symbol| < 2**13 covers 255 * sqrt(3) * 8 / 1 (a step of one grey level)
BLOCKS = (8, 4)
NONZERO = (1, 3, 6)  # nonzero coefficients in the block's lower bands, in buckets: 0, 1-2, 3-5, 6 or more
BUCKETS = len(NONZERO) + 1
GRID = 1024.0  # coefficients and residuals are rounded to 1/GRID before they are rounded for good
_COLOUR = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], np.float64) / np.sqrt([[3.0], [2.0], [6.0]])


def block_of(height: int, width: int) -> int:
    """The block side for an image size: 8 or 4 where both sides are multiples, else 0 (none)."""
    return next((b for b in BLOCKS if height % b == 0 and width % b == 0), 0)


def rows_for(channels: int, block: int) -> int:
    """Table rows of one quality: channels x bands (u + v) x residual.CONTEXTS x BUCKETS."""
    return channels * (2 * block - 1) * residual.CONTEXTS * BUCKETS


def _dct(b: int) -> np.ndarray:
    k, i = np.arange(b)[:, None], np.arange(b)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * b)) * np.sqrt(2.0 / b)
    m[0] /= np.sqrt(2.0)
    return m


def _colour(x: np.ndarray, inverse: bool = False) -> np.ndarray:
    if x.shape[1] != 3:
        return x
    return np.einsum("kc,nkhw->nchw" if inverse else "ck,nkhw->nchw", _COLOUR, x)


def coefficients(r: np.ndarray, b: int) -> np.ndarray:
    """Residuals (n, C, H, W) -> DCT coefficients (n, C, b, b, H/b, W/b): (u, v) of block (y, x)."""
    n, c, h, w = r.shape
    x = _colour(np.asarray(r, np.float64)).reshape(n, c, h // b, b, w // b, b)
    d = _dct(b)
    return _snapped(np.einsum("ui,ncyixj,vj->ncuvyx", d, x, d, optimize=True))


def _snapped(a: np.ndarray) -> np.ndarray:
    """Values on a grid of 1/1024: a transform's float rounding differs between machines and
    summation orders in the last bits, and a value that is mathematically a tie (a DC coefficient
    of exactly 3 at step 4 and offset 0.25, a pixel of exactly x.5) would round either way; on
    the grid it rounds the same everywhere."""
    return np.rint(a * GRID) / GRID


def quantise_coefficients(co: np.ndarray, step: int) -> np.ndarray:
    return (np.sign(co) * np.floor(np.abs(co) / step + THETA)).astype(np.int64)


def quantise(r: np.ndarray, step: int, b: int) -> np.ndarray:
    """Residuals (n, C, H, W) -> symbols (n, C, b, b, H/b, W/b) int64."""
    return quantise_coefficients(coefficients(r, b), step)


def reconstruct(x_hat: np.ndarray, sym: np.ndarray, step: int) -> np.ndarray:
    """uint8 pixels from the decoder's reconstruction (n, C, H, W) and the symbols."""
    n, c, b, _, ny, nx = sym.shape
    d = _dct(b)
    r = np.einsum("ui,ncuvyx,vj->ncyixj", d, sym.astype(np.float64) * step, d, optimize=True).reshape(n, c, ny * b, nx * b)
    return np.clip(np.rint(x_hat + _snapped(_colour(r, inverse=True))), 0, 255).astype(np.uint8)


def _classes(sym: np.ndarray) -> np.ndarray:
    mag = np.abs(sym)
    k = np.zeros_like(mag)
    nz = mag > 0
    k[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1  # bit_length, exact below 2**52
    return np.sign(sym) * k


def _planes(sym: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(n, C, b, b, Y, X) -> (planes (n, C*b*b, Y, X), and per plane its first table row, its band
    u + v and its channel, each (C*b*b,))."""
    n, c, b, _, ny, nx = sym.shape
    band = np.tile(np.add.outer(np.arange(b), np.arange(b)).ravel(), c)
    chan = np.repeat(np.arange(c), b * b)
    first = (chan * (2 * b - 1) + band) * residual.CONTEXTS * BUCKETS
    return sym.reshape(n, c * b * b, ny, nx), first, band, chan


def _above(rows: np.ndarray) -> np.ndarray:
    """residual.contexts of every symbol from the block row above (..., X) -> (...) in 0..8."""
    return residual.contexts(rows.reshape(-1, rows.shape[-1])).reshape(rows.shape)


def _steps(planes: np.ndarray, first: np.ndarray, band: np.ndarray, chan: np.ndarray):
    """(y, the planes of one band, each of their symbols' table row (n, planes, X)) in coding
    order: block row by block row, and in a row band by band, low frequencies first. A symbol's
    context is the same coefficient in the block above and how many of its own block's lower bands
    are nonzero (high frequencies are rarely nonzero where the low ones are zero), so a decoder can
    pop a band of every block of a row once it has the lower bands and the row above. The planes
    are read when a step is reached: a decoder filling them gets what it has just decoded."""
    n, _, ny, nx = planes.shape
    channels = int(chan.max()) + 1
    for y in range(ny):
        count = np.zeros((n, channels, nx), np.int64)  # nonzero coefficients so far in each block
        for b in range(int(band.max()) + 1):
            idx = np.flatnonzero(band == b)
            above = _above(planes[:, idx, y - 1]) if y else np.zeros((n, len(idx), nx), np.int64)
            yield y, idx, first[idx][None, :, None] + above * BUCKETS + np.digitize(count[:, chan[idx]], NONZERO)
            nonzero = planes[:, idx, y] != 0
            for c in range(channels):
                count[:, c] += nonzero[:, chan[idx] == c].sum(1)


def fit(sym: np.ndarray) -> np.ndarray:
    """Integer tables (rows_for(C, b), 2 * MAX_CLASS + 1) from training images' symbols (n, C, b, b, Y, X)."""
    return tables.quantise(counts(sym)[0] + residual.SMOOTHING)


def counts(sym: np.ndarray) -> tuple[np.ndarray, float]:
    """(how often each size class occurs under each table row (rows_for(C, b), 2 * MAX_CLASS + 1),
    and the bits `push` spends besides: the uniform low bits). Counts of images add up; the table
    rows are `_steps`', the very ones `push` and `pop` use."""
    sym = np.asarray(sym, np.int64)
    cls = _classes(sym)
    planes, first, band, chan = _planes(cls)
    k, rows = 2 * MAX_CLASS + 1, rows_for(sym.shape[1], sym.shape[2])
    seen = np.zeros(rows * k, np.int64)
    for y, idx, at in _steps(planes, first, band, chan):
        seen += np.bincount((at * k + planes[:, idx, y] + MAX_CLASS).ravel(), minlength=rows * k)
    return seen.reshape(rows, k), float(np.maximum(np.abs(cls) - 1, 0).sum())


def push(coder, sym: np.ndarray, w: np.ndarray) -> None:
    """Push the symbols (n, C, b, b, Y, X) of a chunk; `pop` returns them."""
    sym = np.asarray(sym, np.int64)
    cls = _classes(sym)
    planes, first, band, chan = _planes(cls)
    k = np.abs(cls).ravel()
    big = np.flatnonzero(k >= 2)  # the few symbols with bits under their top bit
    mag, k = np.abs(sym).ravel()[big], k[big]
    for bits in range(MAX_CLASS, 1, -1):  # pushed first, popped last
        at = k == bits
        if at.any():
            tables.push_uniform(coder, mag[at] - (1 << (bits - 1)), 1 << (bits - 1))
    for y, idx, at in reversed(list(_steps(planes, first, band, chan))):  # a stack: the last step first
        _push_grouped(coder, planes[:, idx, y].ravel() + MAX_CLASS, at.ravel(), w)


def _groups(rows: np.ndarray):
    """(table row, the positions that use it) for each table row used, in increasing order."""
    order = np.argsort(rows, kind="stable")
    used, starts = np.unique(rows[order], return_index=True)
    return zip(used, np.split(order, starts[1:]))


def _push_grouped(coder, symbols: np.ndarray, rows: np.ndarray, w: np.ndarray) -> None:
    """Push symbols each under its table row, one coder call per row used (gathering a table per
    symbol costs 27 floats a symbol, hundreds of MB a chunk); `_pop_grouped` returns them."""
    for row, at in reversed(list(_groups(rows))):
        tables.push_iid(coder, symbols[at], w[row])


def _pop_grouped(coder, rows: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = np.zeros(len(rows), np.int64)
    for row, at in _groups(rows):
        out[at] = tables.pop_iid(coder, w[row], len(at))
    return out


def pop(coder, n: int, shape: tuple[int, int, int], b: int, w: np.ndarray) -> np.ndarray:
    """Pop a chunk's symbols: (n, C, b, b, H/b, W/b) int64."""
    c, h, width = shape
    cls = np.zeros((n, c, b, b, h // b, width // b), np.int64)
    planes, first, band, chan = _planes(cls)  # a view: filling the planes fills cls
    for y, idx, at in _steps(planes, first, band, chan):
        planes[:, idx, y] = _pop_grouped(coder, at.ravel(), w).reshape(at.shape) - MAX_CLASS
    k = np.abs(cls).ravel()
    mag = np.where(k > 0, 1 << np.maximum(k - 1, 0), 0)
    big = np.flatnonzero(k >= 2)
    for bits in range(2, MAX_CLASS + 1):
        at = big[k[big] == bits]
        if len(at):
            mag[at] += tables.pop_uniform(coder, len(at), 1 << (bits - 1))
    return np.sign(cls) * mag.reshape(cls.shape)
