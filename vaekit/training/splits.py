"""Which images train the model, fit the score's statistics and set the threshold: held-out
splits, or folds for cross-fitting (vaekit.training.crossfit) with few images; a resumed run's
splits, those its checkpoint trained on."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np

from vaekit.config import ModelConfig, TrainConfig
from vaekit.training import rundir


def split3(n: int, val_fraction: float, cal_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train / validation / calibration split of n indices. Validation picks the best
    epoch and calibrates the score; calibration, which did neither, sets the threshold.
    Each held-out split gets round(n * fraction), at least 1 while 3 images or more remain."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    n_cal = 0 if cal_fraction <= 0 or n - n_val < 2 else min(n - n_val - 1, max(1, round(n * cal_fraction)))
    return np.sort(order[n_val + n_cal:]), np.sort(order[:n_val]), np.sort(order[n_val:n_val + n_cal])


CROSSFIT_BELOW = 200  # fewer images than this: cross-fitting instead of held-out splits (auto)
CROSSFIT_FOLDS = 5
MIN_VAL = 20  # a held-out split smaller than this fits the score's statistics on too few images
# a surface's held-out fold holds at least this many images (while half the images still train): the
# largest of 4 scores flags a fifth of new normal images, and 8 are the fewest that
# vaekit.anomaly.quantiles fits a tail beyond the largest to (TAIL_MIN; docs/thresholds.md)
ONE_FOLD_MIN = 8


@dataclass
class Splits:
    """Which images train the model, fit the score's statistics and set the threshold.

    Many images: three disjoint splits (train, validation, calibration). Few, for a surface
    model with its defect reader: one fold held out as the calibration split. Few otherwise: `folds`
    partitions them for cross-fitting: a model per fold, trained on the other folds, scores the
    fold's images as images it never saw, and the run's model is the first fold's (it trains on
    folds 2..K), so that all n images give out-of-sample scores for the statistics and the
    threshold of the very kind of model new images meet (Barber et al.
    2021's cross-conformal idea): with 20 images the threshold can then promise 1 / 21, where a
    held-out split of 2 could promise only 1 / 3."""

    train: np.ndarray
    val: np.ndarray
    cal: np.ndarray
    folds: list[np.ndarray]
    groups: np.ndarray | None = None  # which distinct image each image is (plan_splits), where some are copies

    @property
    def crossfit(self) -> bool:
        return bool(self.folds)

    def distinct(self, idx: np.ndarray) -> np.ndarray:
        """The positions in `idx` of one image of each distinct image it holds (its first), in order:
        a threshold counts the scores of copies once, since a copy is not a new image (the k-th
        smallest of n scores promises 1 / (n + 1) only when the n images are exchangeable)."""
        if self.groups is None:
            return np.arange(len(idx))
        return np.sort(np.unique(self.groups[np.asarray(idx, np.int64)], return_index=True)[1])


def plan_splits(n: int, val_fraction: float, cal_fraction: float, seed: int, folds: int = -1,
                quantile: float = 0.99, one_fold: bool = False, min_cal: int = ONE_FOLD_MIN,
                groups: np.ndarray | None = None) -> Splits:
    """The splits for n images (see Splits).

    `groups` (vaekit.training.coverage.scan): exact copies of one image are kept in one split. The
    splits are planned for the distinct images, each then standing for all its copies: a copy held
    out for the threshold while its twin trained was an image the model knew, and 100 copies of one
    part set a threshold that flagged 88% of new parts where it promised 9.1%. Without copies the
    splits are those planned without `groups`.

    folds=-1 (auto): cross-fit with CROSSFIT_FOLDS folds below CROSSFIT_BELOW images; above,
    hold out a validation and a calibration split of at least `val_fraction` and
    `cal_fraction` of the images, at least MIN_VAL each, and for calibration as many as the
    threshold's quantile needs (99 for 0.99), each at most 30% of the images. folds=0: hold
    out by the fractions alone; K >= 2: cross-fit with K folds. Fractions of 0 turn the
    held-out splits (and cross-fitting) off: the threshold then comes from training images.

    `one_fold`: where auto would cross-fit, hold out the first fold as the calibration split
    instead and train on the others, with no fold models (a surface model whose default score,
    the defect reader's, is calibrated on one held-out fold anyway: five more VAEs would only
    serve its fallback score, at five times the training time). That fold holds at least
    `min_cal` images while half the images still train: with 20 images, 8 instead of 4 (see
    ONE_FOLD_MIN)."""
    if groups is not None and len(groups) and len(distinct := np.unique(groups)) < n:
        s = plan_splits(len(distinct), val_fraction, cal_fraction, seed, folds, quantile, one_fold, min_cal)
        of = np.searchsorted(distinct, groups)  # each image's distinct image, numbered 0 .. len(distinct) - 1
        members = lambda idx: np.flatnonzero(np.isin(of, idx))  # noqa: E731 - the images of distinct images idx
        return Splits(members(s.train), members(s.val), members(s.cal), [members(f) for f in s.folds], of)
    k = min(n, (CROSSFIT_FOLDS if n < CROSSFIT_BELOW else 0) if folds < 0 else folds)
    # a fold of one image: leave-one-out, from 3 images (with 2, each fold's statistics would come
    # from one score: a spread of 0 and thresholds of 1e16; they train on both and say so instead)
    if k >= 2 and n >= 3 and val_fraction + cal_fraction > 0:
        order = np.random.default_rng(seed).permutation(n)
        parts = [np.sort(order[i::k]) for i in range(k)]
        rest = np.sort(np.concatenate(parts[1:]))
        if one_fold and folds < 0:
            cal = parts[0] if len(parts[0]) >= min(min_cal, n // 2) else np.sort(order[:min(min_cal, n // 2)])
            return Splits(np.setdiff1d(np.arange(n), cal), np.zeros(0, np.int64), cal, [])
        return Splits(rest, np.zeros(0, np.int64), np.zeros(0, np.int64), parts)
    if (folds < 0 or k >= 2) and val_fraction > 0 and cal_fraction > 0:  # --folds K on 2 images: as auto, both train
        from vaekit.anomaly.quantiles import needed_scores

        most = int(0.3 * n)
        val_fraction = min(most, max(round(n * val_fraction), MIN_VAL)) / n
        cal_fraction = min(most, max(round(n * cal_fraction), MIN_VAL, needed_scores(quantile))) / n
    return Splits(*split3(n, val_fraction, cal_fraction, seed), [])


def run_splits(n: int, out_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool,
               groups: np.ndarray | None = None):
    """The splits of this run's n images, each image's exact copies together (`groups`: plan_splits);
    a resumed run's, those its checkpoint trained on."""
    plan = partial(plan_splits, n, train_cfg.val_fraction, train_cfg.calibration_fraction, train_cfg.seed,
                   train_cfg.folds, train_cfg.threshold_quantile, one_fold=model_cfg.layout == "grid" and train_cfg.reader,
                   groups=groups)
    splits = plan()
    return trained_on(out_dir, splits, n, plan) if resume else splits


def trained_on(out_dir: Path, splits, n: int, plan: Callable[..., object]):
    """The splits a resumed run's checkpoint trained on (`plan(**kw)`: plan_splits for this run).
    A cross-fitted run written before the run's model became the first fold's (vaekit 0.3.dev,
    config.json data.train_images == every image) trained on all n images: it goes on doing so,
    and its fold models score every fold (crossfit reuses the run's model only when it trained on
    exactly the other folds). A surface run written before its held-out fold held at least
    ONE_FOLD_MIN images keeps the fold it trained without."""

    def stored() -> int | None:  # the number of images the checkpoint trained on, as config.json says
        return (rundir.read_config(out_dir).get("data") or {}).get("train_images")

    if splits.crossfit and len(splits.train) != n:
        if stored() == n:
            return replace(splits, train=np.arange(n))
    elif not splits.crossfit and len(splits.cal) and not len(splits.val):  # one held-out fold
        trained = stored()
        if trained not in (None, len(splits.train)):
            before = plan(min_cal=0)
            if len(before.train) == trained:
                return before
    return splits
