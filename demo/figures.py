"""The demo's one static chart: the scores the threshold was set on, the threshold, and the scores just computed.

Built on a bare matplotlib Figure (no pyplot), which is safe to draw from Gradio's worker
threads; gr.Plot renders it as an image.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


SHOWN = 1e300  # the largest score or threshold the slider and the histogram show

LABELS = {"atypicality": "atypicality of the -ELBO's parts", "excess": "-ELBO above the image's own floor",
          "neg_elbo": "-ELBO", "recon": "reconstruction NLL", "kl": "KL term"}


def score_histogram(val_scores: Sequence[float], threshold: float | None, scores: Sequence[float] = (),
                    anomalous: Sequence[bool] = (), score: str = "excess"):
    """Histogram of the scores the model's threshold was set on (`val_scores`: its calibration split's, or
    cross-fitted), a line at the threshold, a tick per scored image."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.add_subplot()
    val = np.asarray(val_scores, dtype=float)
    val = np.clip(val[np.isfinite(val)], -SHOWN, SHOWN)  # matplotlib's ticks overflow near the float limit
    if len(val):
        bins = min(40, max(5, len(val) // 3))
        lo, hi = float(val.min()), float(val.max())
        if not hi - lo > 1e-9 * max(1.0, abs(lo), abs(hi)):  # (nearly) equal scores: numpy cannot split them
            pad = max(0.5, 1e-6 * abs(lo))
            bins, rng = 1, (lo - pad, hi + pad)
        else:
            rng = None
        ax.hist(val, bins=bins, range=rng, color="#9aa5b1", label=f"held-out normal images ({len(val)})")
    else:
        ax.text(0.5, 0.6, "no held-out scores stored with the model", ha="center", transform=ax.transAxes)
    if threshold is not None:
        ax.axvline(np.clip(threshold, -SHOWN, SHOWN), color="#111", linestyle="--", label=f"threshold {threshold:.2f}")
    for s, bad in zip(scores, anomalous):
        ax.axvline(np.clip(float(s), -SHOWN, SHOWN), color="#d62728" if bad else "#2ca02c", linewidth=2)
    if len(scores):
        n_bad = int(np.sum(anomalous))
        ax.plot([], [], color="#2ca02c", linewidth=2, label=f"normal ({len(scores) - n_bad})")
        ax.plot([], [], color="#d62728", linewidth=2, label=f"anomalous ({n_bad})")
    from vaekit.inference.engine import score_unit

    ax.set_xlabel(f"anomaly score: {LABELS.get(score, score)} ({score_unit(score)}); higher = more anomalous")
    ax.set_ylabel("images")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize="small")
    return fig


def threshold_range(model) -> dict:
    """Slider settings spanning the model's held-out scores, starting at its stored threshold, labelled
    with its unit (an update after Open or Train sets every one of them: the label said "sd²" for a
    surface model opened after a vector one, "score units" for a model trained in the app)."""
    from vaekit.inference.engine import score_unit

    score, vals, thr = page_score(model)
    # Gradio takes log10(max - min), which overflowed for a threshold set with `vaekit threshold --value
    # 1.7e308`; the slider holds ±1e300 at most, which flags nothing (or everything) as that one did
    vals = [float(np.clip(v, -SHOWN, SHOWN)) for v in vals]
    thr = thr if thr is not None else (max(vals) if vals else 0.0)
    thr = float(np.clip(thr, -SHOWN, SHOWN))
    lo, hi = min([thr, *vals]), max([thr, *vals])
    bounded = score == "defect"  # a probability
    span = max(hi - lo, abs(hi) * 0.1, 0.01 if bounded else 1.0)
    # a step fine enough for the scores' spread: a defect score's held-out scores lie within 0.01 of
    # each other, and a fixed step of 0.01 on a slider of -0.5 to 3.5 could not set a threshold among them
    step = min(0.01, 10.0 ** math.floor(math.log10(span / 1000)))
    low, high = max(lo - span, -4 * SHOWN), min(hi + 3 * span, 4 * SHOWN)
    if bounded:
        low, high = max(low, 0.0), min(high, 1.0)
    unit = score_unit(score) if score else "score units"
    digits = -math.floor(math.log10(step))
    return {"minimum": round(math.floor(low / step) * step, digits), "maximum": round(math.ceil(high / step) * step, digits),
            "step": step,
            "value": thr, "label": f"Threshold ({unit}): a score above it is anomalous"}


def page_score(model) -> tuple[str | None, list[float], float | None]:
    """(the score the page computes, the held-out scores of it, its stored threshold). An export
    without its NAME.reader.onnx scores the atypicality where the model's own score is the defect
    reader's: the slider was then bounded to the defect's 0-1 and set at its threshold, while the
    page scored sd² (every normal image flagged); its held-out scores are the defect's, not shown."""
    if model is None:
        return None, [], None
    from vaekit.errors import DamagedFile

    info = model.info
    try:
        score = model.effective_score(None)[0]
    except DamagedFile:  # a damaged calibration: the page shows the stored score, and scoring refuses it
        return info.score, list(info.val_scores), info.threshold
    if score == info.score:
        return score, list(info.val_scores), info.threshold
    return score, [], info.threshold_for(score)


def model_histogram(model, threshold: float | None, result=None):
    """The held-out-score histogram of `model` at `threshold`, with a scored batch (AnomalyResult) over it."""
    score, vals, _ = page_score(model)
    if model is None:
        return score_histogram([], threshold)
    done = (result.scores, result.anomalous) if result else ((), ())
    return score_histogram(vals, threshold, *done, score=score)
