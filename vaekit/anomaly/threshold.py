"""Anomaly detection with a trained model: thresholds, scoring folders, evaluation, output files.

The threshold is learned from normal images only: at the end of training the validation
split is scored and the chosen quantile of its scores is stored in the run (`threshold_section`);
`set_threshold` moves it later (as a quantile or a target false-positive rate) without
retraining. `score_images` flags new images against it, `evaluate` measures a model on
labelled folders (scikit-learn's metrics). No torch here: it works with either engine.
scikit-learn and matplotlib are imported only by the functions that need them.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vaekit import images as imageio
from vaekit.engine import DEFAULT_SCORE, SCORES, Model, Scores
from vaekit.errors import BadInput
from vaekit.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, refuse_existing, refuse_inside

Progress = Callable[..., None]
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)  # stored with every run, for people and histograms
ROW_FIELDS = ("path", "score", "bits_per_dim", "threshold", "anomalous", "neg_elbo", "recon", "kl", "excess")
MAP_MIN_SIDE = 128  # heat maps are enlarged (nearest neighbour) to at least this many pixels


# --- thresholds -------------------------------------------------------------------------------

def check_quantile(quantile: float | None = None, target_fpr: float | None = None) -> float:
    """The threshold quantile from exactly one of `quantile` or `target_fpr` (= 1 - quantile)."""
    if (quantile is None) == (target_fpr is None):
        raise ValueError("give exactly one of a threshold quantile or a target false-positive rate")
    if target_fpr is not None:
        if not 0.0 < target_fpr < 1.0:
            raise ValueError(f"target false-positive rate must be in (0, 1), got {target_fpr!r}")
        return 1.0 - float(target_fpr)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"threshold quantile must be in (0, 1), got {quantile!r}")
    return float(quantile)


def expected_fpr(n: int, quantile: float) -> float:
    """About the false-positive rate to expect on new normal images from the `quantile` of n
    normal validation scores.

    A new normal score lands above the k-th smallest of n with probability (n + 1 - k) / (n + 1)
    (it and the n are exchangeable), whatever their distribution. np.quantile's default sits at
    position (n - 1) * quantile, interpolating between two order statistics; interpolating the
    rate the same way is exact at whole positions and for uniform scores, and for right-skewed
    scores (nats usually are) it slightly overstates the rate between them. Near 1 - quantile for
    large n, but ~1 / (n + 1) for a high quantile of few scores: 7.5% for the 0.99 quantile of 14.
    """
    if n < 1 or not 0.0 < quantile < 1.0:
        return math.nan
    return (n - (n - 1) * quantile) / (n + 1)


def few_scores_note(n: int, quantile: float | None, what: str = "validation") -> str | None:
    """A warning when n scores are too few for the quantile's false-positive rate (None if fine)."""
    if quantile is None or not expected_fpr(n, quantile) > 1.5 * (1.0 - quantile):  # NaN: no scores or no rate
        return None
    fpr = expected_fpr(n, quantile)
    return (f"{n} {what} score{'s are' if n != 1 else ' is'} too few for a {100 * (1 - quantile):.3g}% "
            f"false-positive rate: expect ~{100 * fpr:.2g}%")


def section_note(section: dict) -> str | None:
    """`few_scores_note` for a run's stored `anomaly` section (none for a threshold set to a value)."""
    if section.get("fixed"):
        return None
    return few_scores_note(section.get("n", 0), section.get("threshold_quantile"), section.get("source", "validation"))


def threshold_section(scores: dict[str, np.ndarray], quantile: float, source: str, default: str = DEFAULT_SCORE) -> dict:
    """The `anomaly` section a run stores, from validation scores of normal images, per score name.

    An image is anomalous when its score is above the threshold, the `quantile` of the normal
    scores, so about (1 - quantile) of normal images are flagged (the target false-positive
    rate). With n validation images the empirical quantile cannot resolve rates below ~1/n.
    """
    quantile = check_quantile(quantile)
    if default not in scores:
        raise ValueError(f"no validation scores for the default score {default!r}")
    by_score = {}
    for name, values in scores.items():
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
            raise ValueError(f"validation scores for {name!r} must be a non-empty list of finite numbers")
        by_score[name] = {
            "threshold": float(np.quantile(v, quantile)),
            "quantiles": {str(q): float(np.quantile(v, q)) for q in QUANTILES},
            "scores": [float(s) for s in v],
        }
    main = by_score[default]
    return {
        "score": default,
        "estimator": "mean",  # thresholds hold for the deterministic z = mu scores (samples=0)
        "threshold": main["threshold"],
        "threshold_quantile": quantile,
        "target_fpr": 1.0 - quantile,
        "source": source,
        "n": len(main["scores"]),
        "quantiles": main["quantiles"],
        "scores": main["scores"],
        "by_score": by_score,
    }


def set_threshold(run_dir: str | Path, quantile: float | None = None, target_fpr: float | None = None,
                  value: float | None = None) -> dict:
    """Move a run's stored threshold; returns the new `anomaly` section.

    Give one of: `quantile` of the stored validation scores, `target_fpr` (the same as
    quantile 1 - target_fpr), or a fixed `value` in nats (its quantile is then the share of
    validation scores at or below it). Applies to every score name the run stores.
    """
    from vaekit import run as rundir

    given = [v is not None for v in (quantile, target_fpr, value)]
    if sum(given) != 1:
        raise ValueError("give exactly one of quantile, target_fpr or value")
    cfg = rundir.read_config(Path(run_dir))
    old = cfg.get("anomaly")
    if not old or not old.get("by_score"):
        raise rundir.RunError(f"{run_dir} stores no validation scores to set a threshold from (train it again)")
    from vaekit.engine import threshold_fields

    where = Path(run_dir) / rundir.CONFIG
    threshold_fields(old, where)  # the shape of the section; DamagedFile otherwise
    try:
        default = old["score"]
        scores = {k: np.asarray(v["scores"], dtype=np.float64) for k, v in old["by_score"].items()}
        if default not in scores or not all(a.ndim == 1 and len(a) and np.isfinite(a).all() for a in scores.values()):
            raise ValueError("validation scores missing or not finite numbers")
    except (KeyError, TypeError, ValueError) as e:
        raise rundir.RunError(f"{where}: the stored anomaly section is damaged ({e})") from None
    if value is not None:
        if not math.isfinite(value):
            raise ValueError(f"threshold must be a finite number, got {value!r}")
        q = float(np.mean(scores[default] <= value))
        section = threshold_section(scores, min(max(q, 1e-9), 1 - 1e-9), old.get("source", "validation"), default)
        section["threshold"] = float(value)
        section["by_score"][default]["threshold"] = float(value)
        section["threshold_quantile"] = q
        section["target_fpr"] = 1.0 - q
        section["fixed"] = True  # the other scores' thresholds sit at the same validation quantile
    else:
        section = threshold_section(scores, check_quantile(quantile, target_fpr), old.get("source", "validation"), default)
    cfg["anomaly"] = section
    rundir.write_config(Path(run_dir), cfg)
    return section


def resolve_threshold(model: Model, score: str, estimator: str, override: float | None) -> tuple[float | None, str]:
    """The threshold that applies to this score and estimator, and where it comes from."""
    if override is not None:
        if not math.isfinite(override):
            raise ValueError(f"threshold must be a finite number, got {override!r}")
        return float(override), "given"
    info = model.info
    if estimator != "mean":
        return None, ("none: the stored thresholds are for the deterministic score (no --samples/--iwae); "
                      "pass --threshold")
    t = info.thresholds.get(score)
    if t is None and score == info.score:
        t = info.threshold
    if t is None:
        return None, f"none: the model stores no threshold for the {score!r} score; pass --threshold"
    q = info.threshold_quantile
    if q is None:
        return float(t), "stored"
    n = len(info.val_scores)
    note = None if info.threshold_fixed else few_scores_note(n, q, info.threshold_from)
    return float(t), f"stored: quantile {q:g} of {n} {info.threshold_from} scores" + (f"; {note}" if note else "")


# --- scoring ----------------------------------------------------------------------------------

@dataclass
class ScoreRow:
    path: str  # the file, as found under the inputs
    score: float  # the chosen score, nats; higher = more anomalous
    bits_per_dim: float  # score / (C*H*W*ln 2)
    threshold: float | None  # None when no threshold applies
    anomalous: bool | None  # score > threshold; None without a threshold
    neg_elbo: float  # -ELBO (or the IWAE estimate of -log p(x)), nats
    recon: float  # reconstruction NLL, nats
    kl: float  # KL term, nats
    excess: float  # neg_elbo minus the image's floor, nats (the default score)


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
    images: np.ndarray | None = None  # (N, C, H, W) uint8 at the model's size, for maps
    pixel_maps: np.ndarray | None = None  # (N, H, W) float32, nats
    inputs: list[Path] = field(default_factory=list)  # what was scored: no output may go inside it

    @property
    def n_anomalous(self) -> int:
        return sum(1 for r in self.rows if r.anomalous)

    def to_dict(self, model: Model | None = None) -> dict:
        out = {
            "score": self.score, "estimator": self.estimator, "samples": self.samples,
            "threshold": self.threshold, "threshold_source": self.threshold_source,
            "n_images": len(self.rows), "n_anomalous": self.n_anomalous,
            "images": [asdict(r) for r in self.rows],
            "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
        }
        if model is not None:
            out = {"model": str(model.info.source), "engine": model.info.engine,
                   "fingerprint": model.info.fingerprint, **out}
        return out


def _load(model: Model, inputs, progress: Progress | None) -> tuple[imageio.LoadReport, list[str]]:
    """Load with the model's own preprocessing; names relative to the folder each file was found in."""
    roots = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not roots:
        raise ValueError("no inputs given: name image files or folders")
    report = model.load_images(roots, progress=progress)
    return report, [relative_name(p, roots) for p in report.paths]


def relative_name(path: Path, roots: Sequence) -> str:
    """Path under the folder it was found in; with several inputs, prefixed by that folder's name."""
    for root in map(Path, roots):
        if root.is_dir():
            try:
                rel = Path(path).relative_to(root).as_posix()
            except ValueError:
                continue
            return f"{root.resolve().name}/{rel}" if len(roots) > 1 else rel
    return Path(path).name


def score_images(
    model: Model,
    inputs: str | Path | Sequence[str | Path],
    samples: int = 0,
    score: str = DEFAULT_SCORE,
    iwae: bool = False,
    threshold: float | None = None,
    progress: Progress | None = None,
) -> ScoreReport:
    """Score every image under `inputs` and flag those above the threshold.

    Files are read with the model's own preprocessing (converted to its channels, shorter side
    resized to its size, centre crop); unreadable ones are skipped and reported. `threshold`
    overrides the stored one. Stored thresholds hold for the default deterministic estimator
    only: with samples > 0 or iwae there is none unless one is given.
    """
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")

    def phase(name):
        return (lambda done, total, **kw: progress(done, total, phase=name)) if progress else None

    loaded, names = _load(model, inputs, phase("load"))
    if len(loaded.paths) == 0:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in loaded.skipped[:3])
        raise imageio.NoImagesError(f"no readable image in {inputs} ({len(loaded.skipped)} unreadable: {reasons})")
    s = model.score(loaded.images, samples=samples, score=score, iwae=iwae, progress=phase("score"))
    t, source = resolve_threshold(model, score, s.estimator, threshold)
    rows = _rows(loaded.paths, s, t)
    roots = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    return ScoreReport(rows, loaded.skipped, score, s.estimator, samples, t, source, names, loaded.images, s.pixel_map,
                       [Path(r) for r in roots])


def _rows(paths: Sequence[Path], s: Scores, t: float | None) -> list[ScoreRow]:
    # fail closed: a score that is not a finite number (NaN compares false with anything) is
    # anomalous, never "normal"
    return [
        ScoreRow(str(p), float(s.score[i]), float(s.bits_per_dim[i]), t,
                 None if t is None else bool(s.score[i] > t or not np.isfinite(s.score[i])),
                 float(s.neg_elbo[i]), float(s.recon[i]), float(s.kl[i]), float(s.excess[i]))
        for i, p in enumerate(paths)
    ]


def check_outputs(inputs, out: str | Path | None = None, maps: str | Path | None = None,
                  overwrite: bool = False) -> None:
    """The output rule for `score_images`' files, checked before any scoring: no output inside
    an input folder, and an existing file only replaced with `overwrite`."""
    roots = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if out is not None:
        output_format(out)
        refuse_inside(Path(out), roots, "output")
        refuse_existing(Path(out), overwrite)
    if maps is not None:
        maps = Path(maps)
        if maps.exists() and not maps.is_dir():
            raise BadInput(f"--maps {maps} is a file; give a folder")
        refuse_inside(maps, roots, "--maps folder")


def csv_text(text: str) -> str:
    """A text cell that is safe in a CSV: valid UTF-8, and not a spreadsheet formula.

    A file name that is not UTF-8 (Linux allows any bytes) has each undecodable byte written
    as \\xNN; a cell starting with = + - @ (or a tab or carriage return) gets a leading ',
    so a spreadsheet shows it as text instead of running it (OWASP, CSV injection).
    """
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def rows_csv(rows: Sequence[ScoreRow]) -> str:
    """CSV text with a header of ROW_FIELDS; an absent threshold/flag is an empty cell; names
    through `csv_text`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ROW_FIELDS)
    for r in rows:
        d = asdict(r)
        w.writerow(["" if d[k] is None else (str(d[k]).lower() if isinstance(d[k], bool) else
                                             (repr(d[k]) if isinstance(d[k], float) else csv_text(str(d[k]))))
                    for k in ROW_FIELDS])
    return buf.getvalue()


def output_format(path: str | Path) -> str:
    """"csv" or "json" from a file name; anything else is a ValueError (check before scoring)."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"output file must end in .csv or .json, got {Path(path).name!r}")
    return suffix[1:]


def write_scores(path: str | Path, report: ScoreReport, model: Model | None = None, overwrite: bool = False) -> Path:
    """Write the rows as CSV (.csv) or JSON (.json, with the settings and skipped files); atomic.

    An existing file is replaced only with `overwrite`; never inside a scored folder."""
    path = Path(path)
    check_outputs(report.inputs, out=path, overwrite=overwrite)
    if output_format(path) == "csv":
        atomic_write_text(path, rows_csv(report.rows))
    else:
        atomic_write_json(path, report.to_dict(model))
    return path


def write_maps(out_dir: str | Path, report: ScoreReport, alpha: float = 0.5, overwrite: bool = False) -> list[Path]:
    """One PNG per image: its per-pixel anomaly map as a heat map over the image.

    Files mirror the input names under `out_dir` (suffix .png). Colours are scaled per image
    (0 to that image's maximum), so compare the scores, not the colours, across images. Small
    models' images are enlarged (nearest neighbour) to at least MAP_MIN_SIDE pixels.
    `out_dir` may not be (or be inside) a scored folder; existing files there are replaced
    only with `overwrite`, and all are checked before the first is written.
    """
    if report.images is None or report.pixel_maps is None:
        raise ValueError("this report carries no images or maps to draw")
    out_dir = Path(out_dir)
    check_outputs(report.inputs, maps=out_dir, overwrite=overwrite)
    written, used, targets = [], set(), []
    for name in report.names:
        rel, n = Path(name).with_suffix(".png"), 1
        while rel in used:  # a.jpg next to a.png, or two inputs with the same name
            rel, n = Path(name).with_name(f"{Path(name).stem}-{n}.png"), n + 1
        used.add(rel)
        targets.append(rel)
    taken = [out_dir / rel for rel in targets if (out_dir / rel).exists() or (out_dir / rel).is_symlink()]
    if taken and not overwrite:
        raise BadInput(f"{len(taken)} heat map file(s) already exist in {out_dir} (e.g. {taken[0]}); "
                       "pass --overwrite to replace them")
    for rel, x, heat in zip(targets, report.images, report.pixel_maps):
        overlay = imageio.heatmap_overlay(x, heat, alpha=alpha)  # (3, H, W) uint8
        k = max(1, -(-MAP_MIN_SIDE // overlay.shape[1]))
        imageio.save_png(overlay.repeat(k, axis=1).repeat(k, axis=2), out_dir / rel)
        written.append(out_dir / rel)
    return written


# --- evaluation -------------------------------------------------------------------------------

def image_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float | None = None) -> dict:
    """Detection metrics for scores (higher = more anomalous) against labels (1 = anomalous).

    auroc, auprc (average precision), fpr_at_95_tpr (the lowest false-positive rate with at
    least 95% of anomalies flagged), best_f1 and best_f1_threshold (flag score > it), and,
    given a threshold (flag score > threshold): precision, recall, f1, fpr at it.
    """
    from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score, roc_curve

    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D and the same length, got {y.shape} and {s.shape}")
    if not (y == 1).any() or not (y == 0).any():
        raise ValueError("need at least one normal and one anomalous image to evaluate")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    precision, recall, pr_thresholds = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
    best = int(np.argmax(f1))
    out = {
        "auroc": float(roc_auc_score(y, s)),
        "auprc": float(average_precision_score(y, s)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
        "best_f1": float(f1[best]),
        "best_f1_threshold": _strictly_below(s, pr_thresholds[best]),
        "threshold": threshold,
        "f1": None, "precision": None, "recall": None, "fpr": None,
    }
    if threshold is not None:
        pred = (s > threshold).astype(int)
        tp = int(((pred == 1) & (y == 1)).sum())
        out["f1"] = float(f1_score(y, pred, zero_division=0))
        out["precision"] = tp / int(pred.sum()) if pred.sum() else 0.0
        out["recall"] = tp / int((y == 1).sum())
        out["fpr"] = int(((pred == 1) & (y == 0)).sum()) / int((y == 0).sum())
    return out


def _strictly_below(scores: np.ndarray, t: float) -> float:
    """sklearn flags score >= t; return a value T with {score > T} == {score >= t}: midway to the next lower score."""
    lower = scores[scores < t]
    return float((t + lower.max()) / 2) if len(lower) else float(np.nextafter(t, -np.inf))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC of per-pixel scores (N, H, W) against boolean ground-truth masks (N, H, W)."""
    from sklearn.metrics import roc_auc_score

    m = np.asarray(masks, dtype=bool).ravel()
    if m.all() or not m.any():
        raise ValueError("the masks must mark some pixels anomalous and leave some normal")
    return float(roc_auc_score(m, np.asarray(maps, dtype=np.float64).ravel()))


@dataclass
class Evaluation:
    n_normal: int
    n_anomalous: int
    score: str
    estimator: str
    samples: int
    auroc: float
    auprc: float
    fpr_at_95_tpr: float
    best_f1: float
    best_f1_threshold: float
    threshold: float | None  # the threshold the *_at_threshold figures use
    threshold_source: str
    f1_at_threshold: float | None
    precision_at_threshold: float | None
    recall_at_threshold: float | None
    fpr_at_threshold: float | None
    pixel_auroc: float | None = None  # with masks: over normal images and masked anomalous ones
    n_masks: int = 0  # anomalous images that had a mask
    skipped: list[tuple[str, str]] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # "normal" / "anomalous" -> scores

    def to_dict(self, with_scores: bool = False) -> dict:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        if not with_scores:
            d.pop("scores")
        return d


def evaluate(
    model: Model,
    normal: str | Path | Sequence[str | Path],
    anomalous: str | Path | Sequence[str | Path],
    masks: str | Path | None = None,
    samples: int = 0,
    score: str = DEFAULT_SCORE,
    iwae: bool = False,
    threshold: float | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Score labelled folders and measure detection (see `image_metrics`); with `masks`, also
    pixel-level AUROC. A mask matches an anomalous image by relative path or name, with or
    without a `_mask` suffix (MVTec AD's layout); normal images count as all-normal pixels."""
    if masks is not None and not Path(masks).is_dir():
        raise FileNotFoundError(f"masks folder not found: {masks}")
    good = score_images(model, normal, samples, score, iwae, threshold, progress)
    bad = score_images(model, anomalous, samples, score, iwae, threshold, progress)
    labels = [0] * len(good.rows) + [1] * len(bad.rows)
    values = [r.score for r in good.rows] + [r.score for r in bad.rows]
    m = image_metrics(labels, values, good.threshold)
    ev = Evaluation(
        n_normal=len(good.rows), n_anomalous=len(bad.rows), score=score, estimator=good.estimator, samples=samples,
        auroc=m["auroc"], auprc=m["auprc"], fpr_at_95_tpr=m["fpr_at_95_tpr"], best_f1=m["best_f1"],
        best_f1_threshold=m["best_f1_threshold"], threshold=good.threshold, threshold_source=good.threshold_source,
        f1_at_threshold=m["f1"], precision_at_threshold=m["precision"], recall_at_threshold=m["recall"],
        fpr_at_threshold=m["fpr"], skipped=[(str(p), r) for p, r in good.skipped + bad.skipped],
        scores={"normal": [r.score for r in good.rows], "anomalous": [r.score for r in bad.rows]},
    )
    if masks is not None:
        found = _match_masks(Path(masks), bad.names, model.info.image_size)
        keep = [i for i, mk in enumerate(found) if mk is not None]
        if not keep:
            raise ValueError(f"no mask in {masks} matches an anomalous image "
                             "(expected the same relative path or name, optionally with a _mask suffix)")
        gt = np.concatenate([np.zeros((len(good.rows), *good.pixel_maps.shape[1:]), bool),
                             np.stack([found[i] for i in keep])])
        maps = np.concatenate([good.pixel_maps, bad.pixel_maps[keep]])
        ev.pixel_auroc, ev.n_masks = pixel_auroc(maps, gt), len(keep)
    return ev


def _match_masks(root: Path, names: Sequence[str], size: int) -> list[np.ndarray | None]:
    """For each anomalous image name, its mask (size, size) bool at the model's geometry, or None."""
    index: dict[str, Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in imageio.find_images(root):
        key = p.relative_to(root).with_suffix("").as_posix()
        key = key[: -len("_mask")] if key.endswith("_mask") else key
        index[key] = p
        by_stem.setdefault(key.rsplit("/", 1)[-1], []).append(p)
    out = []
    for name in names:
        key = Path(name).with_suffix("").as_posix()
        path = index.get(key)
        if path is None and len(by_stem.get(key.rsplit("/", 1)[-1], [])) == 1:
            path = by_stem[key.rsplit("/", 1)[-1]][0]
        if path is None:
            out.append(None)
            continue
        try:
            # the same shorter-side resize and centre crop as the images, so pixels line up
            out.append(imageio.load_image(path, size, 1)[0] > 127)
        except imageio.ImageReadError as e:
            raise ValueError(f"mask {e.path} cannot be read: {e.reason}") from None
    return out


def plot_roc(evaluation: Evaluation, path: str | Path, overwrite: bool = False) -> Path:
    """Save the ROC curve (and the point at the threshold) as a PNG; needs matplotlib.
    An existing file is replaced only with `overwrite`."""
    refuse_existing(Path(path), overwrite, "--plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("the ROC plot needs matplotlib: pip install 'vaekit[plot]'") from e
    from sklearn.metrics import roc_curve

    s = evaluation.scores
    y = np.r_[np.zeros(len(s["normal"])), np.ones(len(s["anomalous"]))]
    fpr, tpr, _ = roc_curve(y, np.r_[s["normal"], s["anomalous"]])
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot(fpr, tpr, color="#c0392b", lw=2, label=f"{evaluation.score}: AUROC {evaluation.auroc:.3f}")
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
    if evaluation.fpr_at_threshold is not None:
        ax.plot([evaluation.fpr_at_threshold], [evaluation.recall_at_threshold], "o", color="#111",
                label=f"threshold {evaluation.threshold:.2f}")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1.01),
           title=f"{evaluation.n_normal} normal, {evaluation.n_anomalous} anomalous")
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)
