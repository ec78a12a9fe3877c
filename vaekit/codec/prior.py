"""The lossy codec's learned prior: one factorized density per latent channel, as integer tables.

A latent value z is coded as the symbol round(z / (step_q * scale_c)): step_q is the quality's
quantisation step, scale_c the channel's typical posterior standard deviation (a channel the
decoder is sensitive to has a narrow posterior, so it gets a finer step; docs/codec.md has the
measurements that chose this over one step for all). Each channel's symbols are counted on the
training images' posterior means, smoothed, and stored as 24-bit integer tables (vaekit.codec.tables),
one set per quality, with the residual's tables of the qualities that refine pixels
(vaekit.codec.residual): computed once, stored with the run (config.json "codec") and in the
exported ONNX metadata ("vaekit.codec"), never recomputed from floats when decoding.
A channel is one dimension of a vector latent, or one latent channel of a grid (shared by its cells).
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass

import numpy as np

from vaekit.codec import residual, tables, transform
from vaekit.errors import BadInput

FORMAT = "vaekit-codec-prior/1"
QUALITIES = tuple(range(1, 9))  # --quality 1..8: larger is better and bigger (CompressAI's convention)
# Chosen by measurement on MNIST (docs/codec.md): the latent step (in posterior sds) buys the first
# dB; below 2 sds finer latents add bytes but hardly any dB (25.2 dB at 2, 25.6 at 0.35), so the
# higher qualities add the quantised residual instead (vaekit.codec.residual), delta grey levels.
STEPS = (8.0, 4.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0)
DELTAS = (0, 0, 0, 64, 32, 16, 8, 4)  # 0: latents only
MAX_SYMBOLS = 4096  # a channel's table covers at most this many symbols; values beyond are clipped
SMOOTHING = 0.5  # pseudo-count per symbol in a channel's range (Krichevsky-Trofimov)
MARGIN = 2  # symbols beyond the training range that every table still covers




@dataclass
class Prior:
    fingerprint: str  # the model the tables were fitted for
    latent_shape: tuple[int, ...]  # (D,) or (C, G, G)
    steps: np.ndarray  # (Q,) float32: quality q's step, in units of each channel's scale
    scale: np.ndarray  # (C,) float32: each channel's typical posterior sd
    lo: np.ndarray  # (Q, C) int64: the integer that symbol 0 of channel c stands for at quality q
    weights: list[np.ndarray]  # per quality: (C, K_q) int64 tables
    deltas: np.ndarray | None = None  # (Q,) int64: quality q's residual step in grey levels, 0 for none
    residual: list[np.ndarray] | None = None  # per quality: (CONTEXTS, K) tables of the residual, (0, 0) for none
    transform: int = 0  # 0: the residual is coded per pixel (vaekit.codec.residual); 8 or 4: as block-DCT
    # coefficients of that block side (vaekit.codec.transform), whose tables the residual list then holds

    def __post_init__(self) -> None:
        q = len(self.steps)
        self.deltas = np.zeros(q, np.int64) if self.deltas is None else np.asarray(self.deltas, np.int64)
        self.residual = [np.zeros((0, 0), np.int64)] * q if self.residual is None else self.residual

    @property
    def channels(self) -> int:
        return int(self.latent_shape[0])

    @property
    def hash(self) -> str:
        extra = [np.array([self.transform], np.int64)] if self.transform else []  # older sets keep their hash
        return tables.digest(self.steps, self.scale, self.lo, *self.weights, self.deltas, *self.residual, *extra)

    def channel_of(self) -> np.ndarray:
        """The channel of each flat latent value: (D,) int64."""
        per = int(np.prod(self.latent_shape[1:])) if len(self.latent_shape) > 1 else 1
        return np.repeat(np.arange(self.channels), per) if len(self.latent_shape) > 1 else np.arange(self.channels)

    def step_of(self, quality: int) -> np.ndarray:
        """The quantisation step of each flat latent value at a quality: (D,) float64."""
        q = check_quality(quality, len(self.steps))
        return float(self.steps[q - 1]) * self.scale.astype(np.float64)[self.channel_of()]


def check_quality(quality, levels: int = len(QUALITIES)) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= levels:
        raise BadInput(f"invalid quality {quality!r}: expected an integer from 1 (smallest files) to {levels} (best)")
    return int(quality)


def fit(mu: np.ndarray, logvar: np.ndarray, latent_shape, fingerprint: str, steps=None, deltas=None) -> Prior:
    """Latent tables from the posterior means and log-variances (N, D) of the training images; the
    residual tables (for qualities with a delta) are fitted afterwards, by vaekit.codec.store.fit_prior."""
    mu, logvar = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
    if mu.ndim != 2 or mu.shape != logvar.shape or len(mu) < 1 or not np.isfinite(mu).all():
        raise BadInput(f"need finite posterior means and log-variances (N, D), got {mu.shape}, {logvar.shape}")
    shape = tuple(int(s) for s in latent_shape)
    if deltas is None:
        deltas = DELTAS if steps is None else [0] * len(steps)
    steps, deltas = np.asarray(STEPS if steps is None else steps, np.float32), np.asarray(deltas, np.int64)
    if deltas.shape != steps.shape or (deltas < 0).any() or (deltas > 255).any():
        raise BadInput(f"need one residual step (0..255) per quality, got {deltas.tolist()} for {len(steps)} qualities")
    c = shape[0]
    # (N, C, cells): every channel's values over the images and cells
    mu_c = mu.reshape(len(mu), c, -1)
    sd = np.exp(0.5 * logvar.reshape(len(mu), c, -1))
    scale = np.sqrt((sd**2).mean((0, 2))).astype(np.float32)  # root mean posterior variance per channel
    los, weights = [], []
    for step in steps:
        s = np.rint(mu_c / (float(step) * scale.astype(np.float64)[None, :, None])).astype(np.int64)
        lo, hi = s.min((0, 2)) - MARGIN, s.max((0, 2)) + MARGIN
        k = int(min((hi - lo).max() + 1, MAX_SYMBOLS))
        lo = np.where(hi - lo + 1 > k, (lo + hi) // 2 - k // 2, lo)  # too wide: the middle k symbols
        hi = np.minimum(hi, lo + k - 1)
        counts = np.full((c, k), SMOOTHING)
        for ch in range(c):
            idx = np.clip(s[:, ch].ravel() - lo[ch], 0, k - 1)
            counts[ch] += np.bincount(idx, minlength=k)
            counts[ch, (hi[ch] - lo[ch]) + 1:] = 0.0  # beyond this channel's range: constriction's floor only
        los.append(lo)
        weights.append(tables.quantise(counts))
    return Prior(fingerprint, shape, steps, scale, np.stack(los), weights, deltas)


def symbols(prior: Prior, z: np.ndarray, quality: int) -> np.ndarray:
    """Latents (N, D) -> table indices (N, D) int64 at a quality, clipped to each table's range."""
    q = check_quality(quality, len(prior.steps))
    ch = prior.channel_of()
    k = prior.weights[q - 1].shape[1]
    s = np.rint(np.asarray(z, np.float64) / prior.step_of(q)).astype(np.int64) - prior.lo[q - 1][ch]
    return np.clip(s, 0, k - 1)


def latents(prior: Prior, sym: np.ndarray, quality: int) -> np.ndarray:
    """Table indices (N, D) -> the latents they stand for, float32."""
    q = check_quality(quality, len(prior.steps))
    ch = prior.channel_of()
    with np.errstate(over="ignore", invalid="ignore"):  # a value beyond float32 is refused downstream, in one line
        return ((sym + prior.lo[q - 1][ch]) * prior.step_of(q)).astype(np.float32)


# --- storage: one JSON object (config.json "codec", ONNX metadata "vaekit.codec") ----------------

def _pack(a: np.ndarray, dtype: str) -> dict:
    a = np.ascontiguousarray(a, dtype=dtype)
    return {"dtype": dtype, "shape": list(a.shape), "data": base64.b64encode(zlib.compress(a.tobytes(), 9)).decode()}


def _unpack(d: dict, budget: list[int]) -> np.ndarray:
    """An array stored by _pack, inflated to at most its shape's bytes and at most budget[0] bytes
    (taken off it): a few kB of zlib expanded to 1 GB in a config.json or an export's metadata."""
    if d.get("dtype") not in ("<f4", "<i8", "<i4"):
        raise ValueError(f"dtype {d.get('dtype')!r}")
    shape = d["shape"]
    if not isinstance(shape, list) or not all(type(v) is int and v >= 0 for v in shape):
        raise ValueError(f"shape {shape!r:.40}")
    n = np.dtype(d["dtype"]).itemsize * int(np.prod(shape, dtype=object))  # Python ints: no overflow
    if n > budget[0]:
        raise ValueError(f"a table of {n} bytes, more than any vaekit writes for this latent")
    budget[0] -= n
    z = zlib.decompressobj()
    raw = z.decompress(base64.b64decode(d["data"], validate=True), max(n, 1))  # 0 would mean unbounded
    if len(raw) != n or not z.eof:
        raise ValueError(f"a table's data does not fit its shape {shape}")
    return np.frombuffer(raw, d["dtype"]).reshape(shape).astype(np.int64 if "i" in d["dtype"] else np.float32)


def _budget(channels: int) -> list[int]:
    """The bytes a table set of `channels` may unpack to: twice the qualities vaekit writes, each at
    MAX_SYMBOLS int64 symbols a channel and a residual table, and 1 MiB of slack."""
    return [2 * len(QUALITIES) * 8 * (channels * (MAX_SYMBOLS + 2 * MARGIN) + (1 << 16)) + (1 << 20)]


def to_dict(prior: Prior) -> dict:
    return {"format": FORMAT, "fingerprint": prior.fingerprint, "latent_shape": list(prior.latent_shape),
            "hash": prior.hash, "steps": _pack(prior.steps, "<f4"), "scale": _pack(prior.scale, "<f4"),
            "lo": _pack(prior.lo, "<i8"), "weights": [_pack(w, "<i4") for w in prior.weights],
            "deltas": _pack(prior.deltas, "<i8"), "residual": [_pack(w, "<i4") for w in prior.residual],
            **({"transform": prior.transform} if prior.transform else {})}


def from_dict(d, source: str = "the model", latent_shape=None) -> Prior:
    """Rebuild and verify stored tables; anything damaged is ValueError naming `source`. Given the
    model's `latent_shape`, other tables are refused before any is inflated."""
    try:
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {FORMAT!r}")
        shape = d["latent_shape"]
        if not isinstance(shape, list) or not shape or not all(type(v) is int and v >= 1 for v in shape):
            raise ValueError(f"latent_shape {shape!r}, expected a list of positive integers")
        if latent_shape is not None and tuple(shape) != tuple(latent_shape):
            raise ValueError(f"latent shape {shape}, but the model's is {list(latent_shape)}")
        b = _budget(shape[0])  # a channel: a vector's dimension or a grid's latent channel
        prior = Prior(str(d["fingerprint"]), tuple(shape), _unpack(d["steps"], b),
                      _unpack(d["scale"], b), _unpack(d["lo"], b), [tables.check(_unpack(w, b)) for w in d["weights"]],
                      _unpack(d["deltas"], b), [_residual_table(_unpack(w, b)) for w in d["residual"]],
                      _transform(d.get("transform", 0)))
        q = len(prior.steps)
        if prior.steps.shape != (q,) or prior.scale.shape != (prior.channels,) or len(prior.weights) != q or \
                prior.lo.shape != (q, prior.channels) or len(prior.residual) != q or \
                prior.deltas.shape != (q,) or any((dl > 0) != (r.size > 0) for dl, r in zip(prior.deltas, prior.residual)):
            raise ValueError("tables of the wrong shape")
        if (prior.deltas < 0).any() or (prior.deltas > 255).any():
            raise ValueError(f"residual steps {prior.deltas.tolist()}, expected 0 to 255 grey levels")
        if any(r.size and r.shape != residual_shape(prior.transform, int(dl), r.shape[0])
               for dl, r in zip(prior.deltas, prior.residual)):
            raise ValueError("residual tables of the wrong shape")
        if not (np.isfinite(prior.steps).all() and np.isfinite(prior.scale).all()):
            raise ValueError("a quantisation step or scale that is not finite")
        if (prior.steps <= 0).any() or (prior.scale <= 0).any():  # a latent divided by 0 or flipped
            raise ValueError("a quantisation step or scale that is not positive")
        if prior.hash != d["hash"]:
            raise ValueError("the tables do not match their hash")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, zlib.error) as e:
        raise ValueError(f"{source} has damaged entropy-coding tables: {e}") from None
    return prior


def _transform(t) -> int:
    if type(t) is not int or t not in (0, *transform.BLOCKS):
        raise ValueError(f"transform {t!r:.20}, expected 0 or one of {list(transform.BLOCKS)}")
    return t


def residual_rows(block: int) -> tuple[int, ...]:
    """The row counts a residual table may have: the pixel coder's contexts, or the block
    transform's rows for grey or colour images."""
    if not block:
        return (residual.CONTEXTS,)
    return transform.rows_for(1, block), transform.rows_for(3, block)


def residual_shape(block: int, delta: int, rows: int) -> tuple[int, int] | None:
    """The shape a residual table of `rows` rows must have at a step `delta`, or None if no
    table has that many rows."""
    if rows not in residual_rows(block):
        return None
    return rows, 2 * transform.MAX_CLASS + 1 if block else 2 * residual.span(delta) + 1


def _residual_table(w: np.ndarray) -> np.ndarray:
    return w if w.size == 0 else tables.check(w, "a residual table")


def dumps(prior: Prior) -> str:
    return json.dumps(to_dict(prior), separators=(",", ":"))
