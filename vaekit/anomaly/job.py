"""`vaekit anomaly-score` as a job: streamed, written as it goes, resumable, shardable.

Rows go to a journal (vaekit.stream.Journal, `OUT.partial`) one batch at a time; the final
CSV/JSON is written atomically from the journal at the end, so a killed job loses at most the
batch in flight and `resume=True` continues it. A share of the files (`shard=(i, n)`, or
torchrun's RANK / WORLD_SIZE) journals to `OUT.shard-i-of-n.partial`; when every share's
journal is complete, one process merges them into OUT in file order: under torchrun rank 0
(it waits for the others), with explicit shards whichever finishes last.
"""

from __future__ import annotations

import heapq
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from vaekit import images as imageio
from vaekit import pipeline, stream
from vaekit.anomaly.outputs import (check_outputs, map_targets, output_format, refuse_taken_maps, save_maps,
                                    write_csv_rows, write_json_rows)
from vaekit.anomaly.score import BATCH_SIZE, Plan, Progress, ScoreRow, iter_scored, scoring_plan
from vaekit.engine import DEFAULT_SCORE, Model
from vaekit.errors import BadInput, DamagedFile, InUse
from vaekit.fileio import atomic_writer, loads_json
from vaekit.journals import naming_failed_writes, open_journal

_FLOATS = ("score", "bits_per_dim", "threshold", "neg_elbo", "recon", "kl", "excess")


@dataclass
class JobReport:
    out: Path | None  # the file written; None without one, or for a share whose merge is left to another
    count: int  # images scored (in the output: all shares once merged, else this process's share)
    n_anomalous: int
    top: list[ScoreRow]  # the most anomalous rows, highest first (a NaN score above all)
    skipped: list[tuple[str, str]]  # files that could not be read, and why
    plan: Plan
    shard: tuple[int, int]  # (index, count); (0, 1) for the whole folder
    merged: bool  # the output holds every share
    maps: int = 0  # heat maps written by this process
    resumed: int = 0  # batches a previous run had finished
    pending: list[int] = field(default_factory=list)  # shares whose journal is not complete yet


def score_to_file(
    model: Model,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    maps: str | Path | None = None,
    samples: int = 0,
    score: str = DEFAULT_SCORE,
    iwae: bool = False,
    threshold: float | None = None,
    overwrite: bool = False,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    batch_size: int = BATCH_SIZE,
    workers: int = 0,
    progress: Progress | None = None,
    top: int = 20,
    merge_timeout: float | None = None,
) -> JobReport:
    """Score every image under `inputs` in bounded memory; rows to `out` (.csv/.json), heat maps to `maps`.

    shard: this process's share (index, count); None: torchrun's RANK / WORLD_SIZE, or all.
    Under torchrun rank 0 waits (up to `merge_timeout` seconds, None: as long as it takes) for
    the other ranks' journals and merges them. progress(done, total, phase="score"|"merge").
    """
    plan = scoring_plan(model, samples, score, iwae, threshold)
    found = stream.find_inputs(inputs)
    torchrun = shard is None and stream.env_shard()[1] > 1
    index, count = stream.env_shard() if shard is None else shard
    if not 0 <= index < count:
        raise BadInput(f"invalid shard {index}/{count}: need 0 <= INDEX < COUNT")
    if out is None and (resume or count > 1):
        raise BadInput("--resume and sharding need an output file (-o): the rows are kept there")
    check_outputs(found.roots, out, maps, overwrite)
    positions = stream.shard(found.paths, index, count, batch_size) if count > 1 else None
    journal = None
    if out is not None:
        journal = open_journal(_share(Path(out), index, count), _settings(model, plan, found, batch_size, index, count),
                               resume)
    done = frozenset(journal.done) if journal else frozenset()
    targets = map_targets(found.names) if maps is not None else []
    if maps is not None:
        mine = range(len(found.paths)) if positions is None else positions
        # resuming, a batch not in the journal may have had its maps written just before the
        # stop: they are this job's own, and are written again
        resumed = journal is not None and journal.resumed
        refuse_taken_maps(Path(maps), [targets[i] for i in mine if i // batch_size not in done], overwrite or resumed)
    tally, n_maps = _Tally(top), 0

    def write(b) -> None:  # in a writing thread, batch by batch in order, while the next batch is scored
        nonlocal n_maps
        if maps is not None and b.rows:
            n_maps += len(save_maps(Path(maps), [targets[i] for i in b.positions], b.images, b.maps))
        if journal is not None:  # after its maps: a batch in the journal is a batch done
            with naming_failed_writes(Path(out)):
                journal.append(b.index, [_encode(asdict(r)) for r in b.rows], [(str(p), r) for p, r in b.skipped])
        else:
            tally.add((asdict(r) for r in b.rows), [(str(p), r) for p, r in b.skipped])

    try:
        with pipeline.WriteBehind(write) as writer:
            for b in iter_scored(model, found, plan, maps=maps is not None, batch_size=batch_size,
                                 positions=positions, skip_batches=done, workers=workers, progress=progress):
                writer.put(b)
    finally:  # this share is written (or the job stopped; the writer has ended): the journal's lock goes
        if journal is not None:
            with naming_failed_writes(Path(out)):
                journal.close()
    report = JobReport(None, 0, 0, [], [], plan, (index, count), False, n_maps, len(done))
    if journal is None:
        if not tally.count:
            raise imageio.none_usable(f"in {inputs}", tally.skipped)
        return tally.into(report)
    out = Path(out)
    shares = range(count) if count > 1 else [0]
    if count > 1 and torchrun and index != 0:
        return _own_share(report, out, index, count, tally)
    if torchrun:
        _wait(out, count, len(found.paths), batch_size, merge_timeout, progress)
    report.pending = [j for j in shares if not _complete(out, j, count, len(found.paths), batch_size)]
    if report.pending:
        return _own_share(report, out, index, count, tally)
    with _merge_lock(out) as mine:
        # checked again under the lock: a share that finished at the same time may have merged
        if mine and all(_complete(out, j, count, len(found.paths), batch_size) for j in shares):
            _finish(out, model, plan, [_share(out, j, count) for j in shares], tally, inputs)
            report.out, report.merged = out, True
            return tally.into(report)
    return _own_share(report, out, index, count, tally)


def _share(out: Path, index: int, count: int) -> Path:
    """The file a share journals for (its journal is this name + .partial)."""
    return out if count == 1 else out.with_name(f"{out.name}.shard-{index}-of-{count}")


def _settings(model: Model, plan: Plan, found: stream.Inputs, batch_size: int, index: int, count: int) -> dict:
    info = model.info
    return {"job": "anomaly-score", "model": str(info.source), "engine": info.engine, "fingerprint": info.fingerprint,
            "score": plan.score, "estimator": plan.estimator, "samples": plan.samples, "iwae": plan.iwae,
            "threshold": plan.threshold, "threshold_source": plan.source, "batch_size": batch_size,
            "files": len(found.paths), "inputs": [str(r) for r in found.roots], "shard": [index, count]}


def _encode(row: dict) -> dict:
    # JSON has no NaN: keep a non-finite score as text in the journal, so the CSV still says nan
    return {k: (repr(v) if k in _FLOATS and isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _decode(row: dict) -> dict:
    return {k: (float(v) if k in _FLOATS and isinstance(v, str) else v) for k, v in row.items()}


def _entries(path: Path) -> Iterator[dict]:
    """The batch entries of a journal, read only (another process may be appending to it):
    complete lines only, the settings line skipped."""
    try:
        f = open(path.with_name(path.name + stream.PARTIAL_SUFFIX), "rb")
    except FileNotFoundError:
        return
    with f:
        next(f, None)
        for line in f:
            if not line.endswith(b"\n"):
                return
            try:
                entry = loads_json(line.decode("utf-8", "surrogateescape"))
            except ValueError:
                raise DamagedFile(f"{path}{stream.PARTIAL_SUFFIX} is damaged; delete it and score again") from None
            yield entry


def _complete(out: Path, index: int, count: int, files: int, batch_size: int) -> bool:
    want = {b for b in range(-(-files // batch_size)) if b % count == index}
    path = _share(out, index, count)
    if not path.with_name(path.name + stream.PARTIAL_SUFFIX).exists():
        return False
    return want <= {e.get("batch") for e in _entries(path)}


def _wait(out, count, files, batch_size, timeout, progress) -> None:
    """Rank 0 under torchrun: wait until every rank's journal holds all its batches."""
    start = time.monotonic()
    while True:
        ready = sum(_complete(out, j, count, files, batch_size) for j in range(count))
        if progress:
            progress(ready, count, phase="merge")
        if ready == count:
            return
        if timeout is not None and time.monotonic() - start > timeout:
            raise InUse(f"gave up after {timeout:.0f} s waiting for {count - ready} other rank(s) to finish {out}; "
                        "rerun with --resume to continue")
        time.sleep(0.5)


@contextmanager
def _merge_lock(out: Path):
    """True when this process may merge: it holds the lock file's flock (no flock: always)."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    lock = out.with_name(out.name + ".merging")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _merged(journals: list[Path]) -> Iterator[dict]:
    """Every share's batch entries in file order (each journal holds its batches in order)."""
    return heapq.merge(*(_entries(j) for j in journals), key=lambda e: e["batch"])


def _finish(out: Path, model: Model, plan: Plan, journals: list[Path], tally: "_Tally", inputs) -> None:
    """Write OUT from the journals, atomically, then remove them."""
    n = anomalous = 0
    for e in _merged(journals):
        n += len(e["rows"])
        anomalous += sum(1 for r in e["rows"] if r.get("anomalous"))
    if not n:
        skipped = [tuple(s) for e in _merged(journals) for s in e["skipped"]]
        for j in journals:
            j.with_name(j.name + stream.PARTIAL_SUFFIX).unlink(missing_ok=True)
        raise imageio.none_usable(f"in {inputs}", skipped)
    info = model.info
    header = {"model": str(info.source), "engine": info.engine, "fingerprint": info.fingerprint, "score": plan.score,
              "estimator": plan.estimator, "samples": plan.samples, "threshold": plan.threshold,
              "threshold_source": plan.source, "n_images": n, "n_anomalous": anomalous}

    def rows():
        for e in _merged(journals):
            tally.add((_decode(r) for r in e["rows"]), [tuple(s) for s in e["skipped"]])
            yield from (_decode(r) for r in e["rows"])

    with atomic_writer(out) as f:
        if output_format(out) == "csv":
            write_csv_rows(f, rows())
        else:
            write_json_rows(f, header, rows(), ({"path": p, "reason": r} for p, r in tally.skipped))
    for j in journals:
        j.with_name(j.name + stream.PARTIAL_SUFFIX).unlink(missing_ok=True)


def _own_share(report: JobReport, out: Path, index: int, count: int, tally: "_Tally") -> JobReport:
    for e in _entries(_share(out, index, count)):
        tally.add((_decode(r) for r in e["rows"]), [tuple(s) for s in e["skipped"]])
    return tally.into(report)


class _Tally:
    """Count, anomalies, skipped files and the `top` highest rows of a stream of row dicts."""

    def __init__(self, top: int):
        self.k, self.count, self.anomalous, self.heap, self.skipped = top, 0, 0, [], []

    def add(self, rows, skipped) -> None:
        self.skipped += skipped
        for r in rows:
            self.count += 1
            self.anomalous += bool(r.get("anomalous"))
            s = r["score"] if r["score"] is not None and r["score"] == r["score"] else math.inf  # NaN first
            item = (s, -self.count, r)
            if len(self.heap) < self.k:
                heapq.heappush(self.heap, item)
            elif item[:2] > self.heap[0][:2]:
                heapq.heapreplace(self.heap, item)

    def into(self, report: JobReport) -> JobReport:
        report.count, report.n_anomalous, report.skipped = self.count, self.anomalous, self.skipped
        report.top = [ScoreRow(**{**r, "score": math.nan if r["score"] is None else r["score"]})
                      for _, _, r in sorted(self.heap, key=lambda t: t[:2], reverse=True)]
        return report
