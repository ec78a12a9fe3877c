"""The arithmetic of a threshold from normal scores, with no model and no file: which order
statistic of n calibration scores it is (split conformal prediction), the false-positive rate
that promises, the tail beyond the largest score when the scores are too few, and how a
quantile is checked and printed. vaekit.anomaly.threshold stores and applies what this computes.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from vaekit.errors import BadInput
from vaekit.fileio import finite_number

QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)  # stored with every run, for people and histograms


def check_threshold(value) -> float:
    """`value` as a float; BadInput unless it is a finite real number (not a bool, not a string)."""
    if not finite_number(value, numbers.Real):
        raise BadInput(f"threshold must be a finite number, got {value!r:.40}")
    return float(value)


def check_quantile(quantile: float | None = None, target_fpr: float | None = None) -> float:
    """The threshold quantile from exactly one of `quantile` or `target_fpr` (= 1 - quantile)."""
    if (quantile is None) == (target_fpr is None):
        raise BadInput("give exactly one of a threshold quantile or a target false-positive rate")
    if target_fpr is not None:
        if not (isinstance(target_fpr, numbers.Real) and 0.0 < target_fpr < 1.0):
            raise BadInput(f"target false-positive rate must be in (0, 1), got {target_fpr!r}")
        if 1.0 - float(target_fpr) == 1.0:  # it was refused as "threshold quantile ... got 1.0", a value never given
            raise BadInput(f"target false-positive rate {target_fpr!r} is too small to tell from 0 (1 - rate is 1.0 "
                           "in floating point); give 1e-16 or more")
        return 1.0 - float(target_fpr)
    if not (isinstance(quantile, numbers.Real) and 0.0 < quantile < 1.0):
        raise BadInput(f"threshold quantile must be in (0, 1), got {quantile!r}")
    return float(quantile)


def quantile_text(q: float) -> str:
    """A quantile as printed: 4 significant digits, more where those would round it to 0 or 1
    (0.99999999999 read "quantile 1", a quantile that is refused)."""
    text = f"{q:.4g}"
    return f"{q:.15g}" if float(text) in (0.0, 1.0) and float(text) != q else text


def conformal_rank(n: int, quantile: float) -> int:
    """Which order statistic of n normal calibration scores is the threshold: the k-th smallest,
    k = ceil((n + 1) * quantile) (split conformal prediction, Vovk et al. 2005; Angelopoulos &
    Bates 2021), or the largest, k = n, when n is too small for the quantile."""
    return int(min(n, max(1, math.ceil((n + 1) * quantile - 1e-9))))


def by_rank(n: int, quantile: float) -> bool:
    """Whether n scores are enough for the quantile's conformal rank, ceil((n + 1) q) <= n (else
    the threshold is the largest score, or beyond it by a fitted tail: `threshold_of`)."""
    return math.ceil((n + 1) * quantile - 1e-9) <= n


def expected_fpr(n: int, quantile: float) -> float:
    """The false-positive rate on new normal images of the threshold `conformal_rank` picks.

    A new normal score lands above the k-th smallest of n with probability (n + 1 - k) / (n + 1)
    when it and the n are exchangeable (ties aside), whatever their distribution. That is at
    most 1 - quantile when n is large enough, and 1 / (n + 1) at the largest score when it is
    not: 4.8% for 20 calibration scores, whatever the quantile asked for.
    """
    if n < 1 or not 0.0 < quantile < 1.0:
        return math.nan
    return (n + 1 - conformal_rank(n, quantile)) / (n + 1)


def needed_scores(quantile: float) -> int:
    """The fewest calibration scores whose largest still promises a 1 - quantile rate. The rate is
    taken from the quantile as written (its shortest repr), not as 1 - quantile in floats: for
    0.99999999999 that float is 1.0000000827e-11, and 99999991725 scores were said to be needed."""
    from decimal import Decimal

    rate = 1 - Decimal(repr(float(quantile)))
    return max(1, math.ceil(1 / rate - 1 - Decimal("1e-9")))


TAIL_MIN = 8  # scores needed to fit a tail beyond the largest (fewer: the largest is the threshold)


def threshold_of(scores, quantile: float) -> tuple[float, float, float]:
    """(threshold, expected false-positive rate, its distribution-free bound) from n normal
    calibration scores.

    With enough scores the threshold is the conformal order statistic (`conformal_rank`), and
    the rate it promises holds whatever the distribution. With fewer than `needed_scores`, the
    largest score promises only 1 / (n + 1) on average, and any single draw of n scores can do
    much worse (the rate of the largest of 20 exceeds 5% one time in three). There the
    threshold goes beyond the largest, to the `quantile` of an exponential tail fitted to the
    upper half of the scores (the peaks-over-threshold method with a shape of 0). That lowers
    the rate, but by how much depends on a tail that few scores cannot show (1 - quantile for
    simulated light tails; 1.5-16% measured on three 20-image MNIST runs where it promised 1%:
    docs/detection.md), so the rate it promises stays the largest score's bound."""
    quantile = check_quantile(quantile)
    try:
        v = np.sort(np.asarray(scores, dtype=np.float64))
    except (TypeError, ValueError):
        v = None
    if v is None or v.ndim != 1 or len(v) == 0 or not np.isfinite(v).all():
        raise BadInput("calibration scores must be a non-empty list of finite numbers")
    n = len(v)
    k = conformal_rank(n, quantile)
    bound = expected_fpr(n, quantile)
    if by_rank(n, quantile) or n < TAIL_MIN:
        return _over_rounding(float(v[k - 1])), bound, bound
    median = float(np.median(v))
    over = v[v > median] - median
    tail = median + float(over.mean()) * math.log(0.5 / (1.0 - quantile)) if len(over) else float(v[-1])
    return _over_rounding(max(tail, float(v[-1]))), bound, bound


ROUNDING = 1e-5  # relative: 8x the most the same image's score moved between batch sizes (1.2e-6, 1 against 256)


def _over_rounding(t: float) -> float:
    """The threshold a hair above the calibration score it is: images flagged are those above
    it, and a normal image scored again (another batch, thread count or engine) moves in the
    last bits. Without the margin, where the calibration scores tie (30 identical images, every
    score 12.0) every normal image came back 1e-10 above it and all were flagged."""
    return t + ROUNDING * max(abs(t), 1.0)


def few_scores_note(n: int, quantile: float | None, what: str = "calibration") -> str | None:
    """A note when n scores are too few for the quantile's false-positive rate by rank alone
    (None if fine): what the threshold then is and the rate to expect."""
    if quantile is None or not expected_fpr(n, quantile) > (1.0 - quantile) * (1 + 1e-9):  # NaN: no scores
        return None
    bound = expected_fpr(n, quantile)
    head = (f"{n} {what} score{'s are' if n != 1 else ' is'} too few for a {100 * (1 - quantile):.3g}% "
            f"false-positive rate by rank (that needs {needed_scores(quantile)})")
    if n < TAIL_MIN:
        loose = ("; each fold model trained on fewer images still, and new normal images score higher under the "
                 "run's model: expect more" if what == "cross-fitted" else "")  # 5 digits: 28-66% measured, 17% printed
        return f"{head}: the threshold is the largest, expect {100 * bound:.2g}%{loose}"
    return (f"{head}: the threshold is the largest or, further, their fitted tail's quantile; expect at most "
            f"{100 * bound:.2g}% on average")


def distinct_decimals(scores, threshold, least: int = 2, most: int = 9) -> int:
    """Decimals to print scores and their threshold with: `least`, or as many more (up to `most`)
    as it takes that no score prints as the threshold it lies above or below ("8.05 anomalous" at
    threshold 8.05). `least` where the threshold is no finite number below 1e15."""
    if threshold is None or not math.isfinite(threshold) or abs(threshold) >= 1e15:
        return least
    shown = lambda v, d: float(f"{v:.{d}f}")  # noqa: E731 (as printed, read back: "-0.00" is "0.00")
    return next((d for d in range(least, most) if all(s == threshold or shown(s, d) != shown(threshold, d)
                                                      for s in scores)), most)
