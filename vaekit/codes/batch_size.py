"""How many files `encode` takes a batch: its journal's unit, whose codes are one line held whole."""

from __future__ import annotations

from pathlib import Path

from vaekit.images.arrays import MAX_BATCH_SIZE
from vaekit.stream.headers import headers

BATCH_SIZE = 256  # images decoded and encoded at a time, at most by default ...
LINE_CODE_BYTES = 64 << 20  # ... and by default at most this many bytes of codes a journal line (base64)


def mu_bytes(latent_dim: int) -> int:
    """A journal row's latent means in base64 (a 512 px grid model's: 0.7 MB)."""
    return 4 * -(-4 * latent_dim // 3)


def default_batch_size(latent_dim: int) -> int:
    """Files per batch when none is asked for: BATCH_SIZE, fewer where a batch's codes would pass
    LINE_CODE_BYTES (256 codes of a 512 px grid model were a 180 MB journal line, 2.5 GB at its peak)."""
    return max(1, min(BATCH_SIZE, LINE_CODE_BYTES // mu_bytes(latent_dim)))


def journal_batch_size(out: Path, shard: tuple[int, int] | None) -> int | None:
    """The batch size recorded in the header of a journal of the job writing `out` (this share's,
    else another share's), None where there is none to read: a resume without --batch-size goes on
    in the batches its journal began in, whatever the default is now (it was 256 however large the
    codes). Anything unreadable is left to the journal's own checks."""
    for header in headers(out, shard):
        size = header.get("batch_size")
        if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_BATCH_SIZE:
            return size
    return None
