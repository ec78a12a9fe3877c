"""Scoring images against a threshold, streamed: fixed decoded batches in, per-image rows out.

`iter_scored` is the one loop every scoring front end uses (the CLI's jobs, `evaluate`, the
demo): batches come from vaekit.stream (the same fixed slices of the file list in every run,
so a resumed or sharded job scores exactly what an uninterrupted one would), and per-pixel
maps are computed only when asked for. `score_images` gathers the rows in memory for callers
that want one report.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from vaekit import images as imageio
from vaekit import stream
from vaekit.anomaly.quantiles import check_threshold
from vaekit.anomaly.threshold import resolve_threshold
from vaekit.inference.engine import SCORES, Model, Scores
from vaekit.errors import BadInput, check_flags
from vaekit.images.arrays import check_batch_size
from vaekit.images.tiles import stacked
from vaekit.inference.tiled import BATCH_PIXELS, file_batch, score_tiles, tiled  # noqa: F401  (BATCH_PIXELS: public here too)
from vaekit.progress import Progress

ROW_FIELDS = ("path", "score", "bits_per_dim", "threshold", "anomalous", "neg_elbo", "recon", "kl", "excess")
BATCH_SIZE = 64  # images decoded and scored at a time: memory is a few batches, whatever the count


def default_batch(model: Model) -> int:
    """Files a scoring job decodes and scores at a time when none is asked for: BATCH_SIZE, fewer
    for a large model, so a batch holds at most BATCH_PIXELS at the model's size (a surface's
    wider images hold more: their tiles)."""
    return file_batch(model, BATCH_SIZE)


@dataclass
class ScoreRow:
    path: str  # the file, as found under the inputs
    score: float  # the chosen score, in its unit (vaekit.inference.info.score_unit); higher = more anomalous
    bits_per_dim: float  # the -ELBO as a code length of the 8-bit values, bits per sub-pixel (Scores.bits_per_dim)
    threshold: float | None  # None when no threshold applies
    anomalous: bool | None  # score > threshold; None without a threshold
    neg_elbo: float  # -ELBO (or the IWAE estimate of -log p(x)), nats
    recon: float  # reconstruction NLL, nats
    kl: float  # KL term, nats
    excess: float  # neg_elbo minus the image's floor, nats


@dataclass
class Plan:
    """What a scoring job computes: checked before any image is read."""
    samples: int
    score: str
    iwae: bool
    estimator: str  # "mean", "samples" or "iwae"
    threshold: float | None
    source: str  # "stored: ...", "given", or why there is none
    note: str | None = None  # why `score` is not the score asked for (see Model.effective_score)


def scoring_plan(model: Model, samples: int = 0, score: str | None = None, iwae: bool = False,
                 threshold: float | None = None) -> Plan:
    """Check the settings and resolve the threshold that applies (see resolve_threshold)."""
    if threshold is not None:
        threshold = check_threshold(threshold)
    if score is not None and score not in SCORES:
        raise BadInput(f"score must be one of {SCORES}, got {score!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise BadInput(f"samples must be an integer >= 0, got {samples!r}")
    estimator = "iwae" if iwae else ("samples" if samples else "mean")
    if score is None:
        _refuse_unfinished(model)
    score, note = model.effective_score(score, samples, iwae)
    t, source = resolve_threshold(model, score, estimator, threshold)
    return Plan(samples, score, iwae, estimator, t, source, note)


def _refuse_unfinished(model: Model) -> None:
    """BadInput for the default score of a run whose training stopped before its finish: it has
    no threshold and no calibration yet, and its default score fell back to the -ELBO with no
    word of why. A score asked for by name still runs on its weights as they are."""
    run = model.info.source
    if not (isinstance(getattr(model, "config", None), dict) and Path(run).is_dir()):
        return  # an export (vaekit export refuses an unfinished run) or a model made in memory
    from vaekit.training.rundir import stopped_before_finish  # a run directory: the torch engine, torch is here

    why = stopped_before_finish(Path(run), model.config)
    if why:
        raise BadInput(f"{why}; or score its weights as they are with --score neg_elbo")


@dataclass
class ScoredBatch:
    index: int  # the fixed slice of the file list (see vaekit.stream.iter_batches)
    rows: list[ScoreRow]
    names: list[str]  # each row's name relative to its input folder
    images: np.ndarray | list[np.ndarray]  # (B, C, H, W) uint8 at the model's size; tiled: each whole image
    maps: np.ndarray | list[np.ndarray] | None  # (B, H, W) nats (tiled: one (H, W) each), only when asked for
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # each row's position in the file list


def _accepts_maps(model: Model) -> bool:
    try:
        return "maps" in inspect.signature(model.score).parameters
    except (TypeError, ValueError):
        return False


def iter_scored(model: Model, inputs: stream.Inputs, plan: Plan, maps: bool = False, batch_size: int | None = None,
                positions: Sequence[int] | None = None, skip_batches=frozenset(), workers: int = 0,
                progress: Progress | None = None) -> Iterator[ScoredBatch]:
    """Decode and score `inputs` batch by batch (only `positions`, without `skip_batches`).
    A surface model scores each whole image in tiles (vaekit.inference.tiled); an object model, its centre square.

    progress(done, total, phase="score") counts files, including those of skipped batches.
    batch_size: None is `default_batch(model)`."""
    info = model.info
    batch_size = check_batch_size(batch_size, default_batch(model))
    total = len(inputs.paths) if positions is None else len(positions)
    done = 0 if not skip_batches else sum(1 for i in (positions or range(total)) if i // batch_size in skip_batches)
    kw = {"maps": maps} if _accepts_maps(model) else {}
    tiles = tiled(model)
    for b in stream.iter_batches(inputs.paths, info.read_size if tiles else info.image_size, info.channels, batch_size,
                                 workers, positions, skip_batches, tiles=info.image_size if tiles else 0):
        images, pmap = b.images, (np.zeros((0, info.image_size, info.image_size)) if maps else None)
        rows = []
        if len(b.paths):
            if tiles:
                s, images = score_tiles(model, b.images, b.tilings, samples=plan.samples, score=plan.score,
                                        iwae=plan.iwae, **kw)
            else:
                s = model.score(b.images, samples=plan.samples, score=plan.score, iwae=plan.iwae, **kw)
            rows, pmap = _rows(b.paths, s, plan.threshold), (s.pixel_map if maps else None)
        done += len(b.paths) + len(b.skipped)
        if progress:
            progress(done, total, phase="score")
        yield ScoredBatch(b.index, rows, [inputs.names[i] for i in b.positions], images, pmap, b.skipped, b.positions)


def _rows(paths: Sequence[Path], s: Scores, t: float | None) -> list[ScoreRow]:
    # fail closed: a score that is not a finite number (NaN compares false with anything) is
    # anomalous, never "normal"
    return [
        ScoreRow(str(p), float(s.score[i]), float(s.bits_per_dim[i]), t,
                 None if t is None else bool(s.score[i] > t or not np.isfinite(s.score[i])),
                 float(s.neg_elbo[i]), float(s.recon[i]), float(s.kl[i]), float(s.excess[i]))
        for i, p in enumerate(paths)
    ]


@dataclass
class ScoreReport:
    rows: list[ScoreRow]  # one per loaded image, in input order
    skipped: list[tuple[Path, str]]  # files that could not be read, and why
    score: str  # which score
    estimator: str  # "mean", "samples" or "iwae"
    samples: int
    threshold: float | None
    threshold_source: str  # "stored: ...", "given", or why there is none
    names: list[str] = field(default_factory=list)  # each row's path relative to its input folder
    images: np.ndarray | list | None = None  # (N, C, H, W) uint8 at the model's size, for maps (tiled: a list)
    pixel_maps: np.ndarray | list | None = None  # (N, H, W) nats (tiled: a list of (H, W))
    inputs: list[Path] = field(default_factory=list)  # what was scored: no output may go inside it

    @property
    def n_anomalous(self) -> int:
        return sum(1 for r in self.rows if r.anomalous)

    def to_dict(self, model: Model | None = None) -> dict:
        return {**report_header(self, model), "images": [asdict(r) for r in self.rows],
                "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped]}


def report_header(report, model: Model | None = None) -> dict:
    """The fields of a JSON score file before its rows (report: anything with these attributes)."""
    out = {
        "score": report.score, "estimator": report.estimator, "samples": report.samples,
        "threshold": report.threshold, "threshold_source": report.threshold_source,
        "n_images": len(report.rows), "n_anomalous": report.n_anomalous,
    }
    if model is not None:
        out = {"model": str(model.info.source), "engine": model.info.engine, "fingerprint": model.info.fingerprint, **out}
    return out


def score_images(
    model: Model,
    inputs: str | Path | Sequence[str | Path],
    samples: int = 0,
    score: str | None = None,
    iwae: bool = False,
    threshold: float | None = None,
    progress: Progress | None = None,
    maps: bool = True,
    batch_size: int | None = None,
) -> ScoreReport:
    """Score every image under `inputs` and flag those above the threshold; rows in memory.

    Files are read with the model's own preprocessing (converted to its channels, shorter side
    resized to its size, centre crop; a surface model reads the whole image, in tiles:
    vaekit.inference.tiled); unreadable ones are skipped and reported. `threshold`
    overrides the stored one. Stored thresholds hold for the default deterministic estimator
    only: with samples > 0 or iwae there is none unless one is given. With maps=False the
    report carries neither images nor maps (for large folders, or use vaekit.anomaly.score_to_file).
    """
    check_flags(maps=maps)
    plan = scoring_plan(model, samples, score, iwae, threshold)
    found = stream.find_inputs(inputs)
    rows, names, skipped, images, pmaps = [], [], [], [], []
    for b in iter_scored(model, found, plan, maps=maps, batch_size=batch_size, progress=progress):
        rows += b.rows
        names += b.names
        skipped += b.skipped
        if maps:
            images += list(b.images)
            pmaps += list(b.maps)
    if not rows:
        raise imageio.none_usable(f"in {inputs}", skipped)
    return ScoreReport(rows, skipped, plan.score, plan.estimator, samples, plan.threshold, plan.source, names,
                       stacked(images) if maps else None, stacked(pmaps) if maps else None, list(found.roots))
