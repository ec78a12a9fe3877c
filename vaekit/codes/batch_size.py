"""How many files `encode` takes a batch: its journal's unit, whose codes are one line held whole."""

from __future__ import annotations

from pathlib import Path

from vaekit.errors import BadInput, DamagedFile
from vaekit.images.arrays import check_batch_size
from vaekit.stream.headers import journal_batch_size

BATCH_SIZE = 256  # images decoded and encoded at a time, at most by default ...
LINE_CODE_BYTES = 64 << 20  # ... and by default at most this many bytes of codes a journal line (base64)


def mu_bytes(latent_dim: int) -> int:
    """A journal row's latent means in base64 (a 512 px grid model's: 0.7 MB)."""
    return 4 * -(-4 * latent_dim // 3)


def default_batch_size(latent_dim: int) -> int:
    """Files per batch when none is asked for: BATCH_SIZE, fewer where a batch's codes would pass
    LINE_CODE_BYTES (256 codes of a 512 px grid model were a 180 MB journal line, 2.5 GB at its peak)."""
    return max(1, min(BATCH_SIZE, LINE_CODE_BYTES // mu_bytes(latent_dim)))


def encode_batch_size(batch_size: int | None, latent_dim: int, out: Path, shard: tuple[int, int] | None,
                      resume: bool) -> int:
    """An encode's batch size: `batch_size`, else (resuming) its journal's, else the default.
    One whose codes would pass LINE_CODE_BYTES in a journal line is BadInput naming the largest
    that fits (4096 codes of a 512 px grid model are a 4.3 GB line, held whole twice over); a
    journal whose header says such a batch size is DamagedFile: no vaekit of its journal format
    wrote one (the bound is older than the format), so it was edited by hand or is damaged, and
    its lines would be read and written under no bound."""
    journaled = journal_batch_size(out, shard) if resume else None
    size = check_batch_size(journaled if batch_size is None else batch_size, default_batch_size(latent_dim))
    row, most = mu_bytes(latent_dim), max(1, LINE_CODE_BYTES // mu_bytes(latent_dim))
    if journaled is not None and journaled > most:
        raise DamagedFile(f"the journal of {out} is damaged or edited: its header says batch size {journaled}, whose "
                          f"codes ({_size(journaled * row)} a line) pass the {LINE_CODE_BYTES >> 20} MiB a journal line "
                          "of this model may hold, which no vaekit writes; delete it to start again")
    if size > most:
        raise BadInput(f"batch size {size} is too large for this model's codes: a batch's codes are one journal line, "
                       f"{size} x {row:,} bytes = {_size(size * row)}, over the {LINE_CODE_BYTES >> 20} MiB a line may "
                       f"hold; use --batch-size {most} or less (or leave it out)")
    return size


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
