"""`vaekit anomaly-score` as a job: streamed, written as it goes, resumable, shardable.

Rows go to a journal (vaekit.stream.journals, `OUT.partial`) one batch at a time; the final
CSV/JSON is written atomically from the journal at the end, so a killed job loses at most the
batch in flight and `resume=True` continues it. The journal's header holds every setting that
changes the file (model, score, estimator, threshold, batch size, the file list's digest, the
heat-map folder), and every row read back is checked against it. A share of the files
(`shard=(i, n)`, or torchrun's RANK / WORLD_SIZE) journals on its own; vaekit.stream.shares merges them.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

from vaekit import images as imageio
from vaekit import stream
from vaekit.stream import job, pipeline
from vaekit.anomaly.outputs import (check_map_format, check_outputs, map_targets, output_format, refuse_taken_maps, save_maps,
                                    write_csv_rows, write_json_rows)
from vaekit.codes.targets import refuse_linked
from vaekit.anomaly.score import ROW_FIELDS, Plan, ScoreRow, default_batch, iter_scored, report_header, scoring_plan
from vaekit.stream.batches import Layout, check_number, digest, refuse_changed_outputs
from vaekit.inference.engine import Model
from vaekit.errors import BadInput, check_flags
from vaekit.fileio import atomic_writer
from vaekit.images.arrays import check_batch_size, check_int
from vaekit.inference.tiled import tiled
from vaekit.reader.score import READ_TILE
from vaekit.stream.headers import journaled_model
from vaekit.stream.headers import model_settings, resumed_batch_size
from vaekit.stream.journals import naming_failed_writes
from vaekit.progress import Progress
from vaekit.stream.shares import Shares

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
    repeated: list[str] = field(default_factory=list)  # files named again after their first time, scored once
    hidden: list[str] = field(default_factory=list)  # dot-named folders and image files in the inputs: not read


def score_to_file(
    model: Model,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    maps: str | Path | None = None,
    samples: int = 0,
    score: str | None = None,
    iwae: bool = False,
    threshold: float | None = None,
    overwrite: bool = False,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    progress: Progress | None = None,
    top: int = 20,
    merge_timeout: float | None = None,
    map_format: str = "png",
) -> JobReport:
    """Score every image under `inputs` in bounded memory; rows to `out` (.csv/.json), heat maps to `maps`.

    score: None is the model's own (ModelInfo.score); shard: this process's share (index, count),
    None: torchrun's RANK / WORLD_SIZE, or all. Under torchrun rank 0 waits (up to `merge_timeout`
    s; None: as long as it takes) for the others' journals and merges them. progress(done, total, phase).
    map_format: "png", heat maps over the images, or "npy", the maps' values (outputs.save_maps).
    """
    check_flags(overwrite=overwrite, resume=resume)
    check_map_format(map_format)
    plan = scoring_plan(model, samples, score, iwae, threshold)
    batch_size = check_batch_size(resumed_batch_size(batch_size, resume, out, shard), default_batch(model))
    top = check_int(top, "top")
    share = job.start(inputs, out, shard, batch_size)
    found, layout, (index, count) = share.found, share.layout, (share.layout.index, share.layout.count)
    if out is None and (resume or count > 1):
        raise BadInput("--resume and sharding need an output file (-o): the rows are kept there")
    check_outputs(found.sources, out, maps, overwrite or resume, model.info.source)  # resuming: OUT in open_share
    shares, journal = _open_journal(model, plan, found, layout, maps, out, map_format, resume, overwrite)
    done = frozenset(journal.done) if journal else frozenset()
    tally = _Tally(top)
    sink = _Sink(journal, tally, None if maps is None else Path(maps), out, overwrite, map_format)
    positions = stream.shard(found.paths, index, count, batch_size) if count > 1 else None
    with job.held(journal, out):  # unsharded, the journal's lock goes after the merge
        _ready_maps(sink, shares, found, maps, layout, journal, overwrite, model.info.source)
        with pipeline.WriteBehind(sink.write) as writer:
            for b in iter_scored(model, found, plan, maps=maps is not None, batch_size=batch_size,
                                 positions=positions, skip_batches=done, workers=workers, progress=progress):
                writer.put(b)
        report = JobReport(None, 0, 0, [], [], plan, (index, count), False, sink.maps, len(done),
                           repeated=found.repeated, hidden=found.hidden)
        if journal is None:
            if not tally.count:
                raise imageio.none_usable(f"in {stream.named(share.inputs)}", tally.skipped)
            return tally.into(report)
        report.merged, report.pending = job.end(
            journal, shares, share.torchrun, merge_timeout, progress,
            lambda: _finish(shares, model, plan, tally, share.inputs, overwrite))
        if report.merged:
            report.out = shares.out
            return tally.into(report)
        return _own_share(report, shares, index, tally)


def _open_journal(model: Model, plan: Plan, found, layout: Layout, maps, out, map_format: str, resume: bool,
                  overwrite: bool):
    """(Shares, Journal) of a job with an output file; (None, None) without one."""
    if out is None:
        return None, None
    return job.open_share(out, _settings(model, plan, found, layout, maps, out, map_format), layout,
                          _row_check(layout.paths, plan.threshold), resume, overwrite)


def _ready_maps(sink: "_Sink", shares, found, maps, layout: Layout, journal, overwrite: bool, model) -> None:
    """Each image's map target on `sink`, every one checked before any work (_check_maps); the merge
    checks the other shares' maps as a resume does."""
    sink.targets, sink.own = _check_maps(found, maps, layout, journal, overwrite, model, sink.fmt)
    if shares is not None and maps is not None:
        shares.outputs = (_map_files(Path(maps), sink.targets, layout), "heat map")


class _Sink:
    """Where each scored batch goes, in a writing thread, batch by batch in order, while the next
    batch is scored: its heat maps, then its journal line (a batch in the journal is a batch
    done); without a journal, the tally."""

    def __init__(self, journal, tally: "_Tally", maps: Path | None, out, overwrite: bool = False, fmt: str = "png"):
        self.journal, self.tally, self.maps_dir, self.out, self.overwrite = journal, tally, maps, out, overwrite
        self.fmt = fmt  # heat maps (png) or their values (npy)
        self.targets: list[str] = []  # each image's heat-map path under maps_dir
        self.own: int | None = None  # the batch a resumed job may have begun writing (its maps: see write)
        self.maps = 0  # heat maps written

    def write(self, b) -> None:
        digests = None
        if self.maps_dir is not None and b.rows:
            digests = []
            where = self.maps_dir  # a full disk is "cannot write MAPS" (exit 2), and the journal stays
            with naming_failed_writes(where):  # a folder that cannot be made holds no work: the journal goes
                where.mkdir(parents=True, exist_ok=True)
            with self.journal.writing(where) if self.journal is not None else naming_failed_writes(where):
                # not over a file put there while the job ran; the stopped batch's maps written
                # before the stop are this job's own when they hold the very bytes it writes
                self.maps += len(save_maps(self.maps_dir, [self.targets[i] for i in b.positions], b.images, b.maps,
                                           replace=self.overwrite, own=b.index == self.own, digests=digests,
                                           fmt=self.fmt))
        skipped = [(str(p), r) for p, r in b.skipped]
        if self.journal is not None:
            with naming_failed_writes(Path(self.out)):
                self.journal.append(b.index, [_encode(asdict(r)) for r in b.rows], skipped,
                                    None if self.maps_dir is None else (digests or []))
        else:
            self.tally.add((asdict(r) for r in b.rows), skipped)


def _check_maps(found: stream.Inputs, maps, layout: Layout, journal,
                overwrite: bool, model=None, fmt: str = "png") -> tuple[list[str], int | None]:
    """(each image's heat-map target, the batch whose maps are this job's own); refuses (before
    any work) a heat map that would replace a file, unless `overwrite`. Resuming, the maps of the
    first unfinished batch may have been written just before the stop (a batch's maps come before
    its journal line, in order), so they are not refused here: at the write, one that holds the very
    bytes written is this job's own and is kept, any other file there is refused then (save_maps
    `own`); and each map of a finished batch must still be there."""
    if maps is None:
        return [], None
    done, resumed = (journal.done, journal.resumed) if journal is not None else (frozenset(), False)
    targets = map_targets(found.names, Path(maps), fmt)
    refuse_linked(Path(maps), [Path(maps) / t for t in targets], found.sources, model, "--maps folder", folder=True)
    if resumed:
        _refuse_lost_maps(journal, Path(maps), targets, layout)
    todo = [b for b in layout.mine() if b not in done]
    own = set(layout.positions(todo[0])) if resumed and todo else set()
    refuse_taken_maps(Path(maps), [targets[i] for b in todo for i in layout.positions(b) if i not in own], overwrite)
    return targets, todo[0] if own else None


def _refuse_lost_maps(journal, maps: Path, targets: list[str], layout: Layout) -> None:
    """A finished batch's heat maps must be there, as the job wrote them (stream.batches)."""

    refuse_changed_outputs(journal, _map_files(maps, targets, layout), "heat map")


def _map_files(maps: Path, targets: list[str], layout: Layout):
    """A journal line's heat maps, in the order its `outputs` pin them."""

    def files(e: dict) -> list[Path]:
        at = {layout.paths[i]: i for i in layout.positions(e["batch"])}
        return [maps / targets[at[r["path"]]] for r in e["rows"]]

    return files


def _settings(model: Model, plan: Plan, found: stream.Inputs, layout: Layout, maps, out, map_format: str = "png") -> dict:
    """Every setting that changes the output file or where the job writes; the model's path as the
    job's journal spells it when that is the same place (a resume may name it another way)."""
    info = model.info
    where = journaled_model(info.source, Path(out), (layout.index, layout.count))
    return {"job": "anomaly-score", "model": where, **model_settings(model),
            "score": plan.score, "estimator": plan.estimator, "samples": plan.samples, "iwae": plan.iwae,
            # a Gaussian's was its density's until 2026-12-06, a Bernoulli's of a grey image its cross-entropy
            # until 2026-12-08 (NaN since: no code length of 8-bit levels): not to be mixed
            "bits_per_dim": "code length" + (", black-and-white images only" if info.likelihood == "bernoulli" else ""),
            "threshold": plan.threshold, "threshold_source": plan.source, "batch_size": layout.batch_size,
            "files": len(found.paths), "file_list": digest(layout.paths), "inputs": [str(r) for r in found.roots],
            "maps": None if maps is None else str(Path(maps).resolve()), "shard": [layout.index, layout.count],
            # heat maps named as reconstruct names its outputs since 2026-12-06 (x.jpg.png beside x.png.png,
            # not x.png and x-1.png), and the reader's windows of up to 1024 px (256 before): not to be mixed
            **({"map_names": "whole name where two share one"} if maps is not None else {}),
            **({"map_format": map_format} if maps is not None and map_format != "png" else {}),  # png: as before
            **({"reader": info.reader_fingerprint, "reader_windows": READ_TILE}
               if getattr(info, "reader_fingerprint", None) else {}),
            # the frame check's range, factor and margin (docs/detection.md invites editing the factor or
            # dropping the section): rows scored under another were not to be mixed with these
            **({"frame": _frame_setting(info.calibration["frame"])}
               if plan.score == "defect" and "frame" in (info.calibration or {}) else {}),
            # the atypicality's statistics (z-scores' means and sds, profile maps, reference codes): a
            # config.json edited between a stop and its --resume kept every other field (h1, 2026-12-08)
            **({"calibration": _calibration_setting(info.calibration)}
               if plan.score == "atypicality" and isinstance(info.calibration, dict) else {}),
            # a surface reads each file whole, in tiles (journals from before read its centre square)
            **({"read": "whole, in tiles" if info.read_size == info.image_size else
                f"whole at {info.read_size} px, in {info.image_size} px tiles"} if tiled(model) else {})}


def _calibration_setting(calibration: dict) -> str:
    """The atypicality's stored statistics as a journal's header names them: a digest of the section
    (its frame check left out: the defect score's, named by its own field)."""
    body = json.dumps({k: v for k, v in calibration.items() if k != "frame"}, sort_keys=True, default=repr)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _frame_setting(stats) -> str:
    """A stored frame check as a journal's header names it, what an edit changes first (its factor)."""
    if not isinstance(stats, dict):  # damaged: the engine refuses it when it scores
        return repr(stats)[:80]
    lo, hi = (list(stats.get("sharpness") or []) + [None, None])[:2]
    return f"factor {stats.get('factor')!r}, margin {stats.get('margin')!r}, sharpness {lo!r} to {hi!r}"


def _row_check(paths: Sequence[str], threshold: float | None):
    """A journal row must be a score row of file `paths[i]`, flagged as this job flags it."""
    fields = set(ROW_FIELDS)

    def check(row, i: int) -> str | None:
        if not isinstance(row, dict) or set(row) != fields:
            return "not a score row"
        if row["path"] != paths[i]:
            return f"names {str(row['path'])[:80]!r}, not the batch's file {paths[i]!r}"
        for k in _FLOATS[:2] + _FLOATS[3:]:
            why = check_number(row, k)
            if why:
                return why
        if row["threshold"] != threshold:
            return f"threshold {row['threshold']!r} is not the job's {threshold!r}"
        s = _decode(row)["score"]
        want = None if threshold is None else bool(not math.isfinite(s) or s > threshold)
        return None if row["anomalous"] is want else f"anomalous {row['anomalous']!r} does not follow from its score"

    return check


def _encode(row: dict) -> dict:
    # JSON has no NaN: keep a non-finite score as text in the journal, so the CSV still says nan
    return {k: (repr(v) if k in _FLOATS and isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _decode(row: dict) -> dict:
    return {k: (float(v) if k in _FLOATS and isinstance(v, str) else v) for k, v in row.items()}


def _finish(shares: Shares, model: Model, plan: Plan, tally: "_Tally", inputs, overwrite: bool) -> None:
    """Write OUT from the journals, atomically, then remove them; not over a file put at OUT
    while the job ran, unless `overwrite` (its journals then stay for --resume). One that holds
    the very bytes written is this job's own (a merge that died before removing the journals): kept."""
    n = anomalous = 0
    for e in shares.merged():
        n += len(e["rows"])
        anomalous += sum(1 for r in e["rows"] if r.get("anomalous"))
    if not n:
        skipped = [tuple(s) for e in shares.merged() for s in e["skipped"]]
        shares.remove()
        raise imageio.none_usable(f"in {stream.named(inputs)}", skipped)
    # the header a whole report's JSON file has (anomaly.score.report_header reads these fields)
    header = report_header(SimpleNamespace(score=plan.score, estimator=plan.estimator, samples=plan.samples,
                                           threshold=plan.threshold, threshold_source=plan.source, rows=range(n),
                                           n_anomalous=anomalous), model)

    def rows():
        for e in shares.merged():
            tally.add((_decode(r) for r in e["rows"]), [tuple(s) for s in e["skipped"]])
            yield from (_decode(r) for r in e["rows"])

    out = shares.out
    with atomic_writer(out, replace=overwrite, keep_same=True) as f:  # one with these bytes: a died merge's
        if output_format(out) == "csv":
            write_csv_rows(f, rows())
        else:
            write_json_rows(f, header, rows(), ({"path": p, "reason": r} for p, r in tally.skipped))
    shares.remove()


def _own_share(report: JobReport, shares: Shares, index: int, tally: "_Tally") -> JobReport:
    for e in shares.entries(index):
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
