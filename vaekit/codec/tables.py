"""Integer probability tables and the one way they reach the entropy coder (constriction).

constriction's categorical models quantise float probabilities to 24-bit frequencies, each at
least 1. Handed integer weights w (as float64, exact) that sum to 2**24 - K over K symbols, its
fast quantiser computes floor(cumsum(w) * 1.0) + i: the frequencies are exactly w + 1, with no
float rounding left anywhere (constriction src/stream/model/categorical.rs, fast_quantized_cdf).
So a table stored as integers decodes to the same symbols on every machine; only tables made at
coding time from network outputs (bits-back) depend on floats, and those carry checksums.
"""

from __future__ import annotations

import hashlib

import numpy as np

PRECISION = 24  # constriction's default ANS / range coder models: 24-bit frequencies
TOTAL = 1 << PRECISION


def quantise(p: np.ndarray) -> np.ndarray:
    """Probabilities (..., K), any non-negative scale -> integer weights (..., K) int64 with each
    row summing to TOTAL - K (frequencies w + 1 then sum to TOTAL). Deterministic for given floats:
    the rounding remainder goes to each row's most probable symbol (the first, on ties)."""
    p = np.asarray(p, dtype=np.float64)
    k = p.shape[-1]
    if not 2 <= k < TOTAL // 2:
        raise ValueError(f"a table needs 2 to {TOTAL // 2} symbols, got {k}")
    p = np.where(np.isfinite(p) & (p > 0), p, 0.0)
    total = p.sum(-1, keepdims=True)
    p = np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / k)
    free = TOTAL - k
    w = np.floor(p * free).astype(np.int64)
    short = free - w.sum(-1, keepdims=True)  # in [0, k): what the floors left over
    top = p.argmax(-1)[..., None]
    np.put_along_axis(w, top, np.take_along_axis(w, top, -1) + short, -1)
    return w


def check(w: np.ndarray, what: str = "table") -> np.ndarray:
    """`w` if it is a valid table (non-negative integers, each row summing to TOTAL - K), else ValueError."""
    w = np.asarray(w)
    if w.ndim < 1 or w.shape[-1] < 2 or not np.issubdtype(w.dtype, np.integer):
        raise ValueError(f"{what} must be integer weights over >= 2 symbols, got {w.dtype} {w.shape}")
    if (w < 0).any() or (w.astype(np.int64).sum(-1) != TOTAL - w.shape[-1]).any():
        raise ValueError(f"{what} is not a normalised {PRECISION}-bit table")
    return w


def bits(w: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """Exact code length in bits of each symbol under its row of `w`: -log2((w + 1) / TOTAL)."""
    f = np.take_along_axis(np.asarray(w, np.int64), np.asarray(symbols, np.int64)[..., None], -1)[..., 0] + 1
    return PRECISION - np.log2(f)


def code_lengths(w: np.ndarray) -> np.ndarray:
    """Each symbol's code length in bits under each row of `w` (..., K): index it with [row, symbol]
    instead of gathering whole rows, which for millions of symbols is gigabytes."""
    return PRECISION - np.log2(np.asarray(w, np.int64) + 1.0)


def digest(*arrays: np.ndarray) -> str:
    """sha256 (first 16 hex) over arrays' dtypes, shapes and little-endian bytes: names a table set."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        le = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(f"{le.dtype.str}|{list(a.shape)}|".encode())
        h.update(le.tobytes())
    return h.hexdigest()[:16]


# --- the coder: constriction's ANS stack, fed only integer tables -------------------------------

def _family():
    import constriction

    return constriction.stream.model.Categorical(perfect=False)


def ans(words: np.ndarray | None = None):
    """An ANS stack coder, empty or holding `words` (uint32)."""
    import constriction

    if words is None:
        return constriction.stream.stack.AnsCoder()
    return constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))


def push(coder, symbols: np.ndarray, w: np.ndarray) -> None:
    """Push symbols (n,) with their tables (n, K) so that `pop` returns them in this order."""
    symbols = np.ascontiguousarray(symbols, dtype=np.int32).ravel()
    if len(symbols):
        coder.encode_reverse(symbols, _family(), np.ascontiguousarray(w, dtype=np.float64).reshape(len(symbols), -1))


def pop(coder, w: np.ndarray) -> np.ndarray:
    """Pop one symbol per row of the tables (n, K): (n,) int64."""
    w = np.ascontiguousarray(w, dtype=np.float64)
    if not len(w):
        return np.zeros(0, np.int64)
    return np.asarray(coder.decode(_family(), w), dtype=np.int64)


def push_uniform(coder, symbols: np.ndarray, size: int) -> None:
    import constriction

    symbols = np.ascontiguousarray(symbols, dtype=np.int32).ravel()
    coder.encode_reverse(symbols, constriction.stream.model.Uniform(size))


def pop_uniform(coder, n: int, size: int) -> np.ndarray:
    import constriction

    return np.asarray(coder.decode(constriction.stream.model.Uniform(size), n), dtype=np.int64)


def push_iid(coder, symbols: np.ndarray, w: np.ndarray) -> None:
    """Push symbols (n,) that all share one table (K,)."""
    import constriction

    symbols = np.ascontiguousarray(symbols, dtype=np.int32).ravel()
    if len(symbols):
        model = constriction.stream.model.Categorical(np.ascontiguousarray(w, np.float64), perfect=False)
        coder.encode_reverse(symbols, model)


def pop_iid(coder, w: np.ndarray, n: int) -> np.ndarray:
    import constriction

    model = constriction.stream.model.Categorical(np.ascontiguousarray(w, np.float64), perfect=False)
    return np.asarray(coder.decode(model, n), dtype=np.int64) if n else np.zeros(0, np.int64)
