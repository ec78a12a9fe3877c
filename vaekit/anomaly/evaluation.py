"""Evaluation on labelled folders: image-level detection metrics, pixel AUROC from masks, ROC plots.

scikit-learn and matplotlib are imported only by the functions that need them. Scoring streams
(vaekit.anomaly.score): per-pixel maps are kept only for the images a mask covers (all normal
images, the masked anomalous ones), as float32, and only when masks ask for them."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vaekit import images as imageio
from vaekit.anomaly.overlap import file_identity, refuse_copies
from vaekit.anomaly.masks import fit_mask, mask_index, masks_for
from vaekit.anomaly.pixel_roc import PixelRoc
from vaekit.anomaly.score import Progress, iter_scored, scoring_plan
from vaekit.anomaly.held_out import threshold_set_on_note, trained_on_note
from vaekit.anomaly.quantiles import check_threshold
from vaekit.inference.engine import Model
from vaekit.errors import BadInput, MissingExtra, NotFound
from vaekit.fileio import atomic_write_bytes, refuse_existing
from vaekit.stream import find_inputs


def image_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float | None = None) -> dict:
    """Detection metrics for scores (higher = more anomalous) against labels (1 = anomalous).

    auroc, auprc (average precision), fpr_at_95_tpr (the lowest false-positive rate with at
    least 95% of anomalies flagged), best_f1 and best_f1_threshold (flag score > it), and,
    given a threshold (flag score > threshold): precision (None when it flags nothing), recall, f1, fpr at it.
    """
    from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score, roc_curve

    y, s = _numbers(labels, "labels"), _numbers(scores, "scores")
    if y.shape != s.shape or y.ndim != 1:
        raise BadInput(f"labels and scores must be 1-D and the same length, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():  # astype(int) made 0.7 a normal image and 2 neither
        raise BadInput(f"labels must be 0 (normal) or 1 (anomalous), got {sorted(set(y.tolist()) - {0, 1})[:3]}")
    y = y.astype(int)
    threshold = None if threshold is None else check_threshold(threshold)
    if not (y == 1).any() or not (y == 0).any():
        raise BadInput("need at least one normal and one anomalous image to evaluate")
    if not np.isfinite(s).all():
        raise BadInput("scores must be finite")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    precision, recall, pr_thresholds = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
    best = int(np.argmax(f1))
    out = {
        "auroc": float(roc_auc_score(y, s)),
        "auprc": min(1.0, float(average_precision_score(y, s))),  # its sum of steps can round to 1 + 2e-16
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
        out["precision"] = tp / int(pred.sum()) if pred.sum() else None  # nothing flagged: 0/0, no number
        out["recall"] = tp / int((y == 1).sum())
        out["fpr"] = int(((pred == 1) & (y == 0)).sum()) / int((y == 0).sum())
    return out


def _numbers(values, what: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInput(f"{what} must be numbers, got {str(values)[:40]!r}") from None


def _strictly_below(scores: np.ndarray, t: float) -> float:
    """sklearn flags score >= t; return a value T with {score > T} == {score >= t}: midway to the next lower score."""
    lower = scores[scores < t]
    return float((t + lower.max()) / 2) if len(lower) else float(np.nextafter(t, -np.inf))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """AUROC of per-pixel scores (N, H, W) against boolean ground-truth masks (N, H, W)."""
    from sklearn.metrics import roc_auc_score

    values, m = _numbers(maps, "pixel maps"), np.asarray(masks, dtype=bool)
    if values.shape != m.shape:
        raise BadInput(f"pixel maps and masks must have the same shape, got {values.shape} and {m.shape}")
    if np.isnan(values).any():  # as PixelRoc says it, not sklearn's "Input contains NaN"
        raise BadInput("a pixel map holds NaN (a broken model?): scores must be finite")
    if m.all() or not m.any():
        raise BadInput("the masks must mark some pixels anomalous and leave some normal")
    return float(roc_auc_score(m.ravel(), values.ravel()))


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
    note: str | None = None  # why the score is not the one asked for (Model.effective_score); training images among the normal
    n_masks: int = 0  # anomalous images that had a mask
    empty_masks: list[str] = field(default_factory=list)  # of those, the ones whose mask marks no pixel
    skipped: list[tuple[str, str]] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # "normal" / "anomalous" -> scores

    @property
    def auprc_by_chance(self) -> float:
        """The AUPRC of a score that knows nothing: the share of anomalous images."""
        return self.n_anomalous / (self.n_normal + self.n_anomalous)

    @property
    def best_f1_is_flag_all(self) -> bool:
        """Whether the best F1 is that of flagging every image (2p / (1 + p), p the share of
        anomalous images): then it is no operating point of the score."""
        p = self.auprc_by_chance
        return abs(self.best_f1 - 2 * p / (1 + p)) < 1e-9

    def to_dict(self, with_scores: bool = False) -> dict:
        d = asdict(self)
        d["auprc_by_chance"] = self.auprc_by_chance
        d["best_f1_is_flag_all"] = self.best_f1_is_flag_all
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        if not with_scores:
            d.pop("scores")
        return d


def _labelled_inputs(normal, anomalous, masks: Sequence[Path] = ()):
    """The images of both labelled sets; BadInput when one file is in both (the same folder twice,
    `X` and `X/../X`, overlapping folders, a symbolic or a hard link): its two labels would make
    the metrics meaningless, and so when a file holds another's bytes; or when a mask is one of them
    (--masks given an image folder). A file is known by its device and inode: hard links too."""
    good, bad = find_inputs(normal), find_inputs(anomalous)
    seen = {file_identity(p): p for p in getattr(good.paths, "texts", good.paths)}
    bad_ids = {file_identity(p): p for p in getattr(bad.paths, "texts", bad.paths)}
    for i, p in bad_ids.items():
        if i in seen:
            raise BadInput(f"{p} is both an anomalous and a normal image ({seen[i]}); "
                           "give --normal and --anomalous sets that share no file")
    refuse_copies(getattr(bad.paths, "texts", bad.paths), getattr(good.paths, "texts", good.paths))
    seen.update(bad_ids)
    for m in masks:
        if file_identity(m) in seen:
            raise BadInput(f"{m} is both a mask and an image to score ({seen[file_identity(m)]}); give --masks a folder of masks only")
    return good, bad


def _scores_and_maps(model, inputs, found, samples, score, iwae, threshold, progress, on_map):
    """(plan, scores, skipped) of one labelled folder (`found` in `inputs`), streamed; with
    `on_map`, each image's map is handed to on_map(name, map) as it comes, and not kept."""
    plan = scoring_plan(model, samples, score, iwae, threshold)
    names, values, skipped = 0, [], []
    for b in iter_scored(model, found, plan, maps=on_map is not None, progress=progress):
        names += len(b.names)
        values += [r.score for r in b.rows]
        skipped += b.skipped
        if on_map is not None:
            for n, r, m in zip(b.names, b.rows, b.maps):
                on_map(n, m, r.path)
    if not names:
        raise imageio.none_usable(f"in {inputs}", skipped)
    return plan, values, skipped


def evaluate(
    model: Model,
    normal: str | Path | Sequence[str | Path],
    anomalous: str | Path | Sequence[str | Path],
    masks: str | Path | None = None,
    samples: int = 0,
    score: str | None = None,
    iwae: bool = False,
    threshold: float | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Score labelled folders and measure detection (see `image_metrics`); with `masks`, also
    pixel-level AUROC. A mask matches an anomalous image by relative path, or by name where only
    one mask and one anomalous image have it, with or without a `_mask` suffix (MVTec AD's
    layout); normal images count as all-normal pixels.
    The two sets may not share a file, nor two files the same bytes (BadInput)."""
    if masks is not None and not Path(masks).is_dir():
        raise NotFound(f"masks folder not found: {masks}")
    index = None if masks is None else mask_index(Path(masks))  # a folder without masks: said first
    mask_files = [] if index is None else [p for ps in index[0].values() for p in ps]
    found_good, found_bad = _labelled_inputs(normal, anomalous, mask_files)
    roc, mask_of = (None, None) if masks is None else (PixelRoc(), masks_for(model, index, found_bad.names))
    empty: list[str] = []
    plan, good, skipped_good = _scores_and_maps(
        model, normal, found_good, samples, score, iwae, threshold, progress, None if roc is None else _counter(roc))
    _, bad, skipped_bad = _scores_and_maps(
        model, anomalous, found_bad, samples, score, iwae, threshold, progress,
        None if roc is None else _counter(roc, mask_of, empty))
    m = image_metrics([0] * len(good) + [1] * len(bad), good + bad, plan.threshold)
    ev = Evaluation(
        n_normal=len(good), n_anomalous=len(bad), score=plan.score, estimator=plan.estimator, samples=samples,
        auroc=m["auroc"], auprc=m["auprc"], fpr_at_95_tpr=m["fpr_at_95_tpr"], best_f1=m["best_f1"],
        best_f1_threshold=m["best_f1_threshold"], threshold=plan.threshold, threshold_source=plan.source,
        f1_at_threshold=m["f1"], precision_at_threshold=m["precision"], recall_at_threshold=m["recall"],
        fpr_at_threshold=m["fpr"], skipped=[(str(p), r) for p, r in skipped_good + skipped_bad],
        note="; ".join(filter(None, [plan.note, trained_on_note(model, normal),
                                     threshold_set_on_note(model, normal) if plan.source != "given" else None])) or None, scores={"normal": good, "anomalous": bad})
    if roc is not None:
        ev.pixel_auroc, ev.n_masks, ev.empty_masks = _pixel_auroc(roc, masks), roc.masked, empty
    return ev


def _counter(roc: PixelRoc, mask_of=None, empty: list[str] | None = None):
    """on_map for _scores_and_maps: every pixel of a normal image (mask_of None) counts as normal;
    an anomalous image counts with its mask, and without one it is left out. The names of anomalous
    images whose mask marks no pixel go to `empty`: their pixels all count as normal, which a red
    (colour) mask, a 0/1 label mask among 0/255 ones or a 16-bit 0/255 one does without a word."""
    def count(name: str, m: np.ndarray, image: str) -> None:
        if mask_of is None:
            roc.add(m)
            return
        mask = mask_of(name, image)
        if mask is not None:
            fitted = fit_mask(mask, m.shape, name)
            roc.add(m, fitted)
            if empty is not None and not fitted.any():
                empty.append(name)
    return count


def _pixel_auroc(roc: PixelRoc, masks) -> float:
    if not roc.masked:
        raise BadInput(f"no mask in {masks} matches an anomalous image "
                       "(expected the same relative path or name, optionally with a _mask suffix)")
    if not roc.counts()[0]:  # 0/1 label masks read as all normal: say what a mask pixel must be
        raise BadInput(f"the masks in {masks} mark no pixel anomalous: a mask pixel is anomalous above "
                       "127 of 255 in grey (scale 0/1 label masks to 0/255; a 16-bit mask is read as value / 257, "
                       "a colour one by its brightness: pure red is 76)")
    if 0 in roc.counts():
        raise BadInput("the masks must mark some pixels anomalous and leave some normal")
    return roc.auroc()


def check_plot_name(path: str | Path) -> None:
    """BadInput unless `path` names a .png file: the plot is a PNG, whatever the name says."""
    if Path(path).suffix.lower() != ".png":
        raise BadInput(f"--plot {path} must be a .png file (the ROC curve is written as a PNG)")


def plot_roc(evaluation: Evaluation, path: str | Path, overwrite: bool = False) -> Path:
    """Save the ROC curve (and the point at the threshold) as a PNG; needs matplotlib.
    An existing file is replaced only with `overwrite`; the name must end in .png."""
    check_plot_name(path)
    refuse_existing(Path(path), overwrite, "--plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingExtra("the ROC plot needs matplotlib: pip install 'vaekit[plot]'") from e
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
