"""The training recipe: batch size, training length, learning-rate schedule and KL weight.

Pure functions of the config (and of the step), so a resumed run follows the very same
recipe. The numbers that decided them are in docs/detection.md.
"""

from __future__ import annotations

import math

from vaekit.config import TrainConfig


# The automatic training length is a compute budget: about this many pixel-visits (images x
# pixels per image over all steps), ~1400 steps of 64 at 28 px, ~550 steps of 32 at 64 px:
# one to three minutes of training on two shared CPU cores (a full MNIST class, 2026-12-04).
# Measured in docs/detection.md: longer keeps helping a little, shorter hurts quickly.
AUTO_PIXEL_VISITS = 72_000_000
AUTO_MIN_STEPS, AUTO_MAX_STEPS, AUTO_MAX_EPOCHS = 300, 3000, 300
# With warped copies (vaekit.training.augment) every epoch shows new images, so a few tens of
# them may pass twice as often: 20 MNIST digits, 600 epochs instead of 300, AUROC 0.9277 ->
# 0.9368 (choose half) and 0.9086 -> 0.9300 (confirm half), ~60 s a run (docs/detection.md).
AUTO_MAX_EPOCHS_WARPED = 600
# Below 200 images a run is cross-fitted: five models (the run's and four fold models) where one
# would do. Together they spend at most this many single models' budget (AUTO_PIXEL_VISITS and
# AUTO_MIN_STEPS shrink by CROSSFIT_BUDGET / models): 40 aligned images of 64 px took 338 s with
# five full budgets (docs/detection.md has the time and the AUROC of both). Two models' budget and
# a tenth, so that 20 digits of 28 px (600 warped epochs of one step: 30.1M pixel-visits a model,
# the runs docs/detection.md measured) are unchanged.
CROSSFIT_BUDGET = 2.1
# A discretised-logistic model codes images (its -ELBO is a code length), and its bits keep falling
# after a detector's score has settled. With many images it trains up to CODER_BUDGET times the
# steps, as long as that is at most CODER_MAX_EPOCHS passes over them: with 8 epochs of 48,000
# images instead of 2, the MNIST test set as one bits-back archive went from 1.4477 to 1.3434
# bits/dim (choose) and held-out shaded digits from 1.9544 to 1.8270 (confirm), while 4,800 shaded
# digits, 77 epochs instead of 20, learnt their training images and lost (1.9762 against 1.9584;
# docs/codec.md). Up to ~4,800 training images of 28 px a coder trains as a detector does.
CODER_BUDGET, CODER_MAX_EPOCHS = 4, 20


def resolve_batch_size(cfg: TrainConfig, image_size: int) -> int:
    """batch_size=0 means auto: 64 up to 32x32 pixels, 32 above (more, smaller steps)."""
    return cfg.batch_size or (64 if image_size <= 32 else 32)


def resolve_epochs(cfg: TrainConfig, n_train: int, image_size: int = 32, warped: bool = False, models: int = 1,
                   coder: bool = False) -> int:
    """epochs=0 means auto: enough epochs for the AUTO_PIXEL_VISITS budget (300 to 3000 steps),
    at most AUTO_MAX_EPOCHS (AUTO_MAX_EPOCHS_WARPED when the images are `warped`): a small folder
    needs many epochs before the decoder is sharp enough for a useful score; a large one few.
    `models`: how many models the run trains this way (cross-fitting: one per fold); beyond
    CROSSFIT_BUDGET of them, each gets that share of one model's budget. `coder`: a
    discretised-logistic model, which trains up to CODER_BUDGET times as many epochs while they
    stay at most CODER_MAX_EPOCHS."""
    if cfg.epochs > 0:
        return cfg.epochs
    share = min(1.0, CROSSFIT_BUDGET / max(1, models))
    batch = resolve_batch_size(cfg, image_size)
    steps = min(AUTO_MAX_STEPS, max(round(AUTO_MIN_STEPS * share), int(AUTO_PIXEL_VISITS * share) // (batch * image_size * image_size)))
    per_epoch = max(1, math.ceil(n_train / batch))
    epochs = min(AUTO_MAX_EPOCHS_WARPED if warped else AUTO_MAX_EPOCHS, max(1, math.ceil(steps / per_epoch)))
    if coder:
        epochs = max(epochs, min(CODER_MAX_EPOCHS, math.ceil(CODER_BUDGET * steps / per_epoch)))
    return epochs


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate at optimizer step `step` of `total`: "cosine" warms up linearly over the
    first 3% of steps, then decays along a half cosine to 0; "constant" is cfg.lr throughout.
    A pure function of the step, so a resumed run follows the same schedule."""
    if cfg.schedule == "constant":
        return cfg.lr
    warm = max(1, total // 33)
    return cfg.lr * min(1.0, (step + 1) / warm) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


CONTEXT_RAMP = 0.5  # share of the run over which a pixel context's weights grow from 0 to 1 (docs/codec.md)


def context_gain(step: int, total: int) -> float:
    """The scale of a pixel context's weights at optimizer step `step` of `total`: 0 to 1 over the
    first CONTEXT_RAMP of the run, then 1. Without the ramp the neighbours explain the image before
    the latent has learnt it, and on some seeds the latent collapses (docs/codec.md). A pure
    function of the step, as the learning rate is, so a resumed run follows it."""
    return min(1.0, step / max(1.0, CONTEXT_RAMP * total))


def kl_weight(epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up of the KL weight over the first kl_warmup epochs (0-based epoch)."""
    if cfg.kl_warmup <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, (epoch + 1) / (cfg.kl_warmup + 1))
