"""What a model is and what its stored anomaly section says: ModelInfo, the score names, a
model's Scores, and the one reader of the `anomaly` section that both engines use (config.json or ONNX metadata)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vaekit.errors import DamagedFile
from vaekit.fileio import finite_number

SCORES = ("atypicality", "defect", "excess", "neg_elbo", "recon", "kl")
DEFAULT_SCORE = "atypicality"  # a model's default score unless it says otherwise (ModelInfo.score)


def score_unit(score: str) -> str:
    """What a score is measured in: squared standard deviations of normal images, a probability
    (the defect reader's), or nats."""
    return {"atypicality": "sd²", "defect": "probability"}.get(score, "nats")


@dataclass
class ModelInfo:
    image_size: int  # the model's input is image_size × image_size
    channels: int  # 1 or 3
    latent_dim: int
    likelihood: str  # "bernoulli" or "gaussian"
    fingerprint: str  # names the weights; code files record it
    engine: str  # "torch" or "onnxruntime"
    source: Path  # the run directory or .onnx file
    threshold: float | None = None  # anomaly threshold on the default score, in its unit (score_unit)
    threshold_quantile: float | None = None
    quantiles: dict[str, float] = field(default_factory=dict)  # quantiles of the held-out (calibration) scores
    val_scores: list[float] = field(default_factory=list, repr=False)  # the held-out (calibration) scores, for histograms
    log_scale: list[float] | None = None  # gaussian: per-channel log sigma (needed by "excess"); bernoulli: None
    score: str = DEFAULT_SCORE  # the score `threshold`, `quantiles` and `val_scores` are about
    thresholds: dict[str, float] = field(default_factory=dict)  # score name -> threshold, every score
    threshold_from: str = "validation"  # whose scores the stored threshold is a quantile of ("training" without a split)
    threshold_fixed: bool = False  # set to a value (`vaekit threshold --value`), not a quantile
    others_quantile: float | None = None  # with a fixed value: the quantile the other scores' thresholds kept
    latent_shape: tuple[int, ...] = ()  # (D,) for a vector latent, (C, G, G) for a grid; () = (latent_dim,)
    # the atypicality score's statistics of normal images (vaekit/inference/atypicality.py): kB to MB, so not in repr()
    calibration: dict | None = field(default=None, repr=False)
    reader: dict | None = None  # the defect reader's config, when the run has one (vaekit.reader)
    reader_fingerprint: str | None = None  # its weights' fingerprint (runs from before: None, unchecked)
    read_size: int = 0  # files' shorter side when read whole (a surface read larger than its tiles); 0 = image_size

    @property
    def dims(self) -> int:
        return self.channels * self.image_size * self.image_size

    def threshold_for(self, score: str, estimator: str = "mean") -> float | None:
        """The stored threshold that applies to `score` computed by `estimator`, or None: the stored
        thresholds are quantiles of deterministic scores (z = mu), so posterior draws and the IWAE
        bound have none, except the defect reader's, which reads the image alone."""
        if estimator != "mean" and score != "defect":
            return None
        t = self.thresholds.get(score)
        return self.threshold if t is None and score == self.score else t

    def __post_init__(self) -> None:
        if not self.latent_shape:
            self.latent_shape = (self.latent_dim,)
        self.read_size = self.read_size or self.image_size


def threshold_fields(anomaly, source: str | Path = "the model", required: bool = False) -> dict:
    """ModelInfo's threshold fields from a run's stored `anomaly` section (config.json, or the
    export's metadata): one reader for both engines, so they agree on which threshold applies.

    Fails closed: a section of the wrong shape, or a threshold that is not a finite number
    (NaN flags nothing), is DamagedFile naming `source`, never a threshold that passes all.
    required: a missing threshold is damaged too (`vaekit threshold` shows the stored one).
    """
    def damaged(what: str) -> DamagedFile:
        return DamagedFile(f"{source}: the stored anomaly section is damaged ({what}); "
                           "set a threshold again with `vaekit threshold` or retrain")

    def number(v, what: str) -> float:
        if not finite_number(v):
            raise damaged(f"{what} is {v!r:.40}, not a finite number")
        return float(v)

    anomaly = {} if anomaly is None else anomaly
    if not isinstance(anomaly, dict):
        raise damaged(f"expected an object, got {type(anomaly).__name__}")
    score = anomaly.get("score", "neg_elbo")  # runs written before "excess" existed scored -ELBO
    if score not in SCORES:
        raise damaged(f"unknown score {score!r}")
    if score == "atypicality" and anomaly.get("calibration") is None:  # only a damaged file names it without one
        raise DamagedFile(f"{source}: the stored anomaly section is damaged (the atypicality score is named but "
                          "its calibration is missing); train the model again")
    by_score = anomaly.get("by_score", {})
    if not isinstance(by_score, dict) or not all(isinstance(v, dict) for v in by_score.values()):
        raise damaged("'by_score' is not an object of objects")
    thresholds = {k: number(v.get("threshold"), f"the {k} threshold") for k, v in by_score.items()}
    threshold = anomaly.get("threshold")
    if threshold is not None or required:  # required: a section that must show its threshold
        threshold = number(threshold, "the threshold")
        thresholds.setdefault(score, threshold)
    n = anomaly.get("n", 0)  # how many scores the threshold came from (the few-scores note reads it)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 2**53:  # beyond: no float holds it
        raise damaged(f"the score count 'n' is {n!r:.40}, not a count")
    quantile = anomaly.get("threshold_quantile")
    if quantile is not None:
        quantile = number(quantile, "the threshold quantile")
        fixed = anomaly.get("fixed") is True  # a fixed value's share of scores below it: 0 and 1 too
        if not (0.0 <= quantile <= 1.0 if fixed else 0.0 < quantile < 1.0):  # a hand edit: "quantile 2"
            raise damaged(f"'threshold_quantile' is {anomaly['threshold_quantile']!r:.40}, "
                          f"not in {'[0, 1]' if fixed else '(0, 1)'}")
    others = _others_quantile(anomaly.get("others_quantile"), damaged)
    quantiles, val_scores = anomaly.get("quantiles", {}), anomaly.get("scores", [])
    if not isinstance(quantiles, dict) or not isinstance(val_scores, list):
        raise damaged("'quantiles' or 'scores' has the wrong type")
    quantiles = {str(k): number(v, "a stored quantile") for k, v in quantiles.items()}
    val_scores = [number(v, "a stored validation score") for v in val_scores]
    source_kind = anomaly.get("source", "validation")
    return {
        "threshold": threshold, "threshold_quantile": quantile,
        "quantiles": quantiles, "val_scores": val_scores,
        "score": score, "thresholds": thresholds,
        "threshold_from": source_kind if isinstance(source_kind, str) else "validation",
        "threshold_fixed": anomaly.get("fixed") is True,
        "others_quantile": others,
        "calibration": anomaly.get("calibration"),
    }


def _others_quantile(value, damaged) -> float | None:
    """The quantile the other scores kept where the default's threshold is a fixed value (written
    since 2026-12-07; None before); `damaged(what)` makes the error for a value out of (0, 1)."""
    if value is not None and not (finite_number(value) and 0.0 < value < 1.0):
        raise damaged(f"'others_quantile' is {value!r:.40}, not in (0, 1)")
    return None if value is None else float(value)


# "atypicality" (vaekit/inference/atypicality.py): how far the image's most atypical part of the -ELBO
# lies from normal images, in sd. "excess": the -ELBO minus the image's own floor, the NLL a perfect
# reconstruction would get (`pixel_floor`); the others are the -ELBO and its two terms.
@dataclass
class Scores:
    score: np.ndarray  # (N,) the chosen score, in its unit (score_unit(name)); higher = more anomalous
    neg_elbo: np.ndarray  # (N,) -ELBO estimate, nats (with iwae: the IWAE estimate of -log p(x))
    recon: np.ndarray  # (N,) reconstruction NLL, nats
    kl: np.ndarray  # (N,) KL(q(z|x) || p(z)), nats
    pixel_map: np.ndarray | None  # (N, H, W) per-pixel reconstruction NLL over channels, nats; None unless maps=True
    bits_per_dim: np.ndarray  # (N,) the -ELBO (whatever the score) as a code length of the 8-bit pixels / (C*H*W*ln 2);
    #                           NaN for a Bernoulli model's image with a grey pixel (estimate.BINARY_ONLY)
    excess: np.ndarray | None = None  # (N,) neg_elbo - floor, nats
    floor: np.ndarray | None = None  # (N,) NLL of a perfect reconstruction of the image, nats
    name: str = DEFAULT_SCORE  # which score `score` holds
    estimator: str = "mean"  # "mean" (z = mu), "samples" (average over K draws) or "iwae"
    paths: list[Path] | None = None  # scored from files: the file behind each row
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # scored from files: those that failed, and why
    threshold: float | None = None  # the stored threshold for `name` and `estimator` (None: none applies)
    note: str | None = None  # why `name` is not the score asked for (Model.effective_score)
