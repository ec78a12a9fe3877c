"""Anomaly thresholds: learned from normal images only, moved later without retraining.

At the end of training the validation split is scored and the chosen quantile of its scores
is stored in the run (`threshold_section`); `set_threshold` moves it later (as a quantile or a
target false-positive rate); `resolve_threshold` says which one applies to a scoring job.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vaekit.inference.engine import DEFAULT_SCORE, Model
from vaekit.anomaly.quantiles import (QUANTILES, check_quantile, check_threshold, few_scores_note, quantile_text,
                                     threshold_of)
from vaekit.anomaly.held_out import SET_ON
from vaekit.errors import BadInput, InUse


def percent(rate: float) -> str:
    """A rate in [0, 1] as a short percentage: '4.8%', '0.52%', '100%' (not '1e+02%')."""
    return f"{100 * rate:.2g}%" if 100 * rate < 99.5 else f"{100 * rate:.0f}%"


def number(x: float) -> str:
    """A threshold or score for people: at least four significant digits, two decimals where
    those are more (a reader's probability threshold 0.3185 printed as 0.32, the same as 0.3163),
    and four digits with an exponent from 1e15 on (`vaekit threshold --value 1e308` printed all
    309 digits, cut off in its table cell)."""
    if not math.isfinite(x) or abs(x) >= 1e15 or 0 < abs(x) < 1e-4:
        return f"{x:.4g}"
    decimals = 2 if abs(x) >= 10 or x == 0 else min(9, max(2, 3 - math.floor(math.log10(abs(x)))))
    text = f"{x:.{decimals}f}"
    while decimals > 2 and text.endswith("0"):  # 0.75, not 0.7500
        text, decimals = text[:-1], decimals - 1
    return text


def promised_rate(section: dict) -> str | None:
    """The false-positive rate a run's stored `anomaly` section promises, as words ("4.8% of normal
    images", "at most 11% of normal images on average" from too few calibration scores, "at least
    50% ..." from the training images' own): what `vaekit train` and the web app's Train tab say."""
    fpr = section.get("expected_fpr")
    if not isinstance(fpr, (int, float)) or isinstance(fpr, bool):
        return None
    n, q = section.get("n", 0), section.get("threshold_quantile")  # too few: the largest score's rate, or less
    few = not section.get("fixed") and isinstance(n, int) and few_scores_note(n, q) is not None
    bound = "at least " if section.get("source") == "training" else "at most " if few else ""
    return f"{bound}{percent(fpr)} of normal images" + (" on average" if few and bound == "at most " else "")


def section_note(section: dict) -> str | None:
    """`few_scores_note` for a run's stored `anomaly` section (none for a threshold set to a value)."""
    if section.get("fixed"):
        return None
    source = section.get("source", "calibration")
    note = few_scores_note(section.get("n", 0), section.get("threshold_quantile"), source)
    return with_source_caveat(note, source, section.get("score"))


def with_source_caveat(note: str | None, source: str, score: str | None = None) -> str | None:
    """`note`, and where the scores are the training images' own (--val-fraction 0
    --calibration-fraction 0, or too few images to hold any out), that new normal images score
    higher than those: the rate by rank holds for the trained-on images only. So it is with the
    atypicality of validation images (--calibration-fraction 0): they fitted its statistics too."""
    if source == "training":
        caveat = "these are scores of the images the model trained on"
    elif source == "validation" and score == "atypicality":
        caveat = "the atypicality's statistics were fitted on these same validation images"
    else:
        return note
    caveat += ", and new normal images score higher: more of them will be flagged"
    return f"{note}; {caveat}" if note else caveat[0].upper() + caveat[1:]


def threshold_section(scores: dict[str, np.ndarray], quantile: float, source: str, default: str = DEFAULT_SCORE) -> dict:
    """The `anomaly` section a run stores, from validation scores of normal images, per score name.

    An image is anomalous when its score is above the threshold (`threshold_of`): the k-th
    smallest of the n normal scores, so that at most 1 - quantile of new normal images are
    flagged when n is large enough; beyond the largest, along their fitted tail, when it is not.
    """
    quantile = check_quantile(quantile)
    if default not in scores:
        raise BadInput(f"no validation scores for the default score {default!r}")
    by_score = {}
    for name, values in scores.items():
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
            raise BadInput(f"validation scores for {name!r} must be a non-empty list of finite numbers")
        by_score[name] = {
            "threshold": threshold_of(v, quantile)[0],
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
        "expected_fpr": threshold_of(main["scores"], quantile)[1],
        "fpr_bound": threshold_of(main["scores"], quantile)[2],
        "source": source,
        "n": len(main["scores"]),
        "quantiles": main["quantiles"],
        "scores": main["scores"],
        "by_score": by_score,
    }


def _without_thresholds(section: dict) -> dict:
    """The anomaly section with its thresholds set aside: setting one anew is how a damaged one
    (not a finite number) is mended, and the new ones come from the stored scores alone."""
    by_score = section.get("by_score")
    if not isinstance(by_score, dict) or not all(isinstance(v, dict) for v in by_score.values()):
        return section  # threshold_fields names what is wrong
    fixed = {k: {**v, "threshold": 0.0} for k, v in by_score.items()}
    return {k: v for k, v in {**section, "by_score": fixed}.items() if k != "threshold"}


def stored_threshold(run_dir: str | Path) -> dict:
    """A run's stored `anomaly` section, checked (`vaekit threshold` without a setting shows it):
    InUse while a training (or a resume) writes the run, which has no threshold yet; RunError when
    none is stored; DamagedFile when the section is not what vaekit writes."""
    from vaekit.inference.engine import threshold_fields
    from vaekit.training import rundir
    from vaekit.training.runlock import refuse_in_use

    run_dir = Path(run_dir)
    refuse_in_use(run_dir)
    section = rundir.read_config(run_dir).get("anomaly")
    if not section:
        raise rundir.RunError(f"{run_dir} stores no anomaly threshold (training did not finish)")
    threshold_fields(section, run_dir / rundir.CONFIG, required=True)
    return section


def set_threshold(run_dir: str | Path, quantile: float | None = None, target_fpr: float | None = None,
                  value: float | None = None) -> dict:
    """Move a run's stored threshold; returns the new `anomaly` section.

    Give one of: `quantile` of the stored validation scores, `target_fpr` (the same as
    quantile 1 - target_fpr), which applies to every score name the run stores, or a fixed
    `value` of the default score, in its unit (its quantile is then the share of validation
    scores at or below it), which leaves the other scores at the quantile they had.
    """
    from vaekit.training import rundir
    from vaekit.training.runlock import refuse_in_use

    given = [v is not None for v in (quantile, target_fpr, value)]
    if sum(given) != 1:
        raise BadInput("give exactly one of quantile, target_fpr or value")
    refuse_in_use(Path(run_dir))  # a training still writes its config.json: nothing to move yet
    cfg = rundir.read_config(Path(run_dir))
    old = cfg.get("anomaly")
    if not old or not old.get("by_score"):
        raise rundir.RunError(f"{run_dir} stores no validation scores to set a threshold from (train it again)")
    from vaekit.inference.engine import threshold_fields

    where = Path(run_dir) / rundir.CONFIG
    threshold_fields(_without_thresholds(old), where)  # the shape of the section; DamagedFile otherwise
    try:
        default = old["score"]
        scores = {k: np.asarray(v["scores"], dtype=np.float64) for k, v in old["by_score"].items()}
        if default not in scores or not all(a.ndim == 1 and len(a) and np.isfinite(a).all() for a in scores.values()):
            raise ValueError("validation scores missing or not finite numbers")
    except (KeyError, TypeError, ValueError) as e:
        raise rundir.RunError(f"{where}: the stored anomaly section is damaged ({e})") from None
    if value is not None:
        value = check_threshold(value)
        # stored and shown as a promise it cannot keep: an image is flagged above the threshold, and a
        # probability is never above 1 (the frame check's 1, a blank frame, would read normal)
        if default == "defect" and not 0.0 <= value < 1.0:
            raise BadInput(f"the defect score is a probability, from 0 to 1: a threshold of {value:g} would flag "
                           f"{'no image' if value >= 1 else 'every image'}")
        q = float(np.mean(scores[default] <= value))
        # the other scores keep the quantile they had: a value below every stored score (q = 0)
        # must not move their thresholds below theirs, flagging every normal image
        others = others_quantile(old)
        section = threshold_section(scores, others, old.get("source", "validation"), default)
        section["others_quantile"] = others
        section["threshold"] = float(value)
        section["by_score"][default]["threshold"] = float(value)
        section["threshold_quantile"] = q
        section["target_fpr"] = 1.0 - q
        # a new normal score lands above `value` about as often as the stored ones did, counted
        # conformally (the new one among n + 1): (1 + #{s > value}) / (n + 1)
        section["expected_fpr"] = float((1 + np.sum(scores[default] > value)) / (len(scores[default]) + 1))
        section["fixed"] = True
        section.pop("fpr_bound", None)  # the bound of the `others` quantile's threshold, not of this value (h4)
    else:
        section = threshold_section(scores, check_quantile(quantile, target_fpr), old.get("source", "validation"), default)
    if SET_ON in old and value is None:  # the same scores at another quantile: still set on those images
        section[SET_ON] = old[SET_ON]
    return store_section(Path(run_dir), cfg, old, section)


def others_quantile(section: dict) -> float:
    """The quantile the scores other than the default sit at: the section's own, or where the
    default's threshold is a fixed value, the one they kept (0.99 for a section of before)."""
    q = section.get("others_quantile") if section.get("fixed") else section.get("threshold_quantile")
    return float(q) if isinstance(q, (int, float)) and not isinstance(q, bool) and 0 < q < 1 else 0.99


def store_section(run_dir: Path, cfg: dict, old: dict, section: dict) -> dict:
    """Write the new anomaly `section` into the run's config, under the run's lock: a second
    `vaekit threshold` at the same time removed this one's temporary file as a crash's stray
    (rundir.write_config) and failed with "No such file or directory". The config is read again
    under the lock, so another writer's change since (encode --fit's tables) stays. The
    atypicality's statistics stay (moving the threshold does not change the score)."""
    from vaekit.training import rundir
    from vaekit.training.runlock import locked

    if "calibration" in old:
        section["calibration"] = old["calibration"]
    with locked(run_dir, hint="another vaekit command writes it; set the threshold again when it is done",
                what="the run"):
        now = rundir.read_config(run_dir)
        if now.get("fingerprint") != cfg.get("fingerprint"):
            raise InUse(f"{run_dir} was trained again while its threshold was set; set the threshold again")
        now["anomaly"] = section
        rundir.write_config(run_dir, now)
    return section


def resolve_threshold(model: Model, score: str, estimator: str, override: float | None) -> tuple[float | None, str]:
    """The threshold that applies to this score and estimator, and where it comes from (an int8
    export's stored thresholds are its float model's, which the VAE's scores may have moved from)."""
    if override is not None:
        return check_threshold(override), "given"
    t, source = _stored_threshold(model, score, estimator)
    int8 = (getattr(model, "config", None) or {}).get("quantization", "none") not in ("none", None)
    if t is not None and int8 and score != "defect":  # the reader stays float32
        source += ("; set on the float32 model, and int8 moves this score: check the rate with `vaekit "
                   "evaluate` on normal images, or pass --threshold")
    return t, source


def _stored_threshold(model: Model, score: str, estimator: str) -> tuple[float | None, str]:
    info = model.info
    if estimator != "mean" and score != "defect":  # the reader's score reads the image alone: no estimator moves it
        return None, ("none: the stored thresholds are for the deterministic score (no --samples/--iwae); "
                      "pass --threshold")
    t = info.threshold_for(score, estimator)
    if t is None:
        return None, f"none: the model stores no threshold for the {score!r} score; pass --threshold"
    n = len(info.val_scores)
    scores = "score" if n == 1 else "scores"
    if info.threshold_fixed and score == info.score:  # a value, not a quantile: count the scores above it
        above = int(np.sum(np.asarray(info.val_scores) > t))
        return float(t), f"stored: a fixed value, {above} of {n} {info.threshold_from} {scores} above it"
    q = info.others_quantile if info.threshold_fixed else info.threshold_quantile  # the others kept theirs
    if q is None:
        return float(t), "stored"
    note = with_source_caveat(few_scores_note(n, q, info.threshold_from), info.threshold_from, score)
    return float(t), f"stored: quantile {quantile_text(q)} of {n} {info.threshold_from} {scores}" + (f"; {note}" if note else "")
