"""What a job reads from its journals' headers before it opens its own: the batch size a resume
goes on in, and the inputs and the model as the job first spelled them; and the header's fields
that name the model (`model_settings`).

Each share's journal is read only as far as its header (one line, at most UNSIZED_LIMIT: a header
names every input given, thousands of files from a shell glob, and passes MAX_HEADER_BYTES with
some 10,000 of them); anything unreadable is skipped here and left to the journal's own checks when
it is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

from vaekit.fileio import open_regular_file
from vaekit.images.arrays import MAX_BATCH_SIZE
from vaekit.stream.batches import real_place
from vaekit.stream.inputs import check_shard, env_shard
from vaekit.stream.journals import JOURNAL_VERSION, parse, partial_path
from vaekit.stream.lines import UNSIZED_LIMIT
from vaekit.stream.shares import share_out
from vaekit.version import __version__


def model_settings(model) -> dict:
    """The header's fields that name the numbers a model computes: its engine, its weights' fingerprint,
    and an int8 export's quantisation and file checksum (it keeps its float model's fingerprint, but its
    scores are another model's, as are another int8 export's, calibrated on other images)."""
    info, quantization = model.info, model.config.get("quantization", "none")
    quantized = {"quantization": quantization, "export": model.export_digest} if quantization != "none" else {}
    return {"engine": info.engine, "fingerprint": info.fingerprint, **quantized}


def headers(out: Path, shard: tuple[int, int] | None) -> Iterator[dict]:
    """The headers of the journals of the job writing `out`: this share's first, then the others'."""
    index, count = check_shard(*(env_shard() if shard is None else shard))
    for j in [index, *(j for j in range(count) if j != index)]:
        try:
            with open_regular_file(partial_path(share_out(Path(out), j, count))) as f:
                # not MAX_HEADER_BYTES: a longer header (many inputs named) was skipped, so its resume
                # lost the journal's batch size and spellings and was refused ("batch_size 8 then, 64 now")
                header = parse(f.readline(UNSIZED_LIMIT))
        except (OSError, ValueError):
            continue
        if isinstance(header, dict) and "vaekit_journal" in header:
            yield header


def journaled_inputs(inputs, out: Path | None, shard: tuple[int, int] | None):
    """`inputs`, or the inputs as a journal of this job names them where both name the same files
    and folders, in the same order, spelled another way (`dir` and `/abs/dir`, a link to it): the
    rows then name the files as the rows already written do, and the file list is the journal's.
    Anything else (or no `out`, so no journal) is returned as given, for the journal's checks to
    name what differs."""
    if out is None:
        return inputs
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    if not isinstance(items, (list, tuple)) or not all(isinstance(r, (str, os.PathLike)) for r in items):
        return inputs  # not paths: find_inputs says what it wants
    given = [str(Path(r)) for r in items]  # as the header holds them: `dir/` and `./dir` are `dir`
    for header in headers(out, shard):
        was = header.get("inputs")
        if not isinstance(was, list) or not all(isinstance(r, str) and r for r in was):
            continue
        if was != given and _same_places(was, given):
            return was
        return inputs
    return inputs


def _same_places(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether each name leads where the other's does; never for a name that is no path."""
    return len(a) == len(b) and all(real_place(x) is not None and real_place(x) == real_place(y) for x, y in zip(a, b))


def journaled_model(source: str | Path, out: Path | None, shard: tuple[int, int] | None) -> str:
    """The model's path as a journal of this job names it, where that names the same place as
    `source` spelled another way (`runs/m` then, `/abs/runs/m` now, or a link to it); else
    `source` as given, for the journal's check to name what differs."""
    given = str(source)
    if out is None:
        return given
    for header in headers(out, shard):
        was = header.get("model")
        return was if isinstance(was, str) and was and _same_places([was], [given]) else given
    return given


def journal_batch_size(out: Path, shard: tuple[int, int] | None) -> int | None:
    """The batch size recorded in the header of a journal of the job writing `out` (this share's,
    else another share's), None where there is none to read: a resume without --batch-size goes on
    in the batches its journal began in, whatever the default is now. Anything unreadable (or of
    another journal format or vaekit release, which its own check refuses) is left to the journal's own checks."""
    for header in headers(out, shard):
        size = header.get("batch_size")
        if (header.get("vaekit_journal"), header.get("vaekit")) != (JOURNAL_VERSION, __version__):
            continue  # another format's or release's: refused as such when it is opened
        if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_BATCH_SIZE:
            return size
    return None


def resumed_batch_size(batch_size: int | None, resume: bool, out: Path | None,
                       shard: tuple[int, int] | None) -> int | None:
    """`batch_size` as given, else (resuming a job with an output) the batches its journal began in;
    None leaves the job's default."""
    if batch_size is None and resume and out is not None:
        return journal_batch_size(out, shard)
    return batch_size
