"""The training loop: fit a ConvVAE on decoded images, with checkpoints and exact resume.

`fit()` trains (an epoch at a time, by vaekit.training.trainer), checkpoints, keeps the
best-on-validation weights and, at the end, has vaekit.training.finish calibrate the score
and set the threshold. Progress is reported through an
optional callback `progress(done, total, phase=..., **metrics)`; this module never prints.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vaekit.config import RESUMABLE, ModelConfig, TrainConfig
from vaekit.errors import BadInput, TrainingFailed
from vaekit.progress import Progress
from vaekit.training import checkpoint, metrics, rundir
from vaekit.training.checkpoint import pack_state, unpack_state
from vaekit.training.data import Dataset
from vaekit.training.splits import run_splits
from vaekit.training.distributed import all_reduce_sum, barrier, init_distributed, pick_device
from vaekit.training.finish import finish, write_run_config
from vaekit.training.recipe import kl_weight, resolve_batch_size, resolve_epochs
from vaekit.training.augment import augment_on
from vaekit.training.trainer import Trainer, deterministic_scores, training_crop


class TrainingError(TrainingFailed):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    device: str
    epochs_done: int
    best_epoch: int
    best_val: float
    history: list[dict] = field(default_factory=list)
    threshold: float | None = None
    seconds: float = 0.0  # the whole training: epochs, then fold models, reader and calibration
    epoch_seconds: float = 0.0  # the epochs alone
    rank: int = 0  # torchrun rank of this process; only rank 0 writes (and should print)
    stopped: bool = False  # asked to stop (should_stop): no threshold yet; --resume continues
    complete: bool = False  # a --resume of a run that had trained every epoch and finished: nothing done

    def __post_init__(self) -> None:
        self.seconds = self.seconds or self.epoch_seconds  # until the finish step adds its time


def resolved_train_config(train_cfg: TrainConfig, model_cfg: ModelConfig, n_train: int, models: int = 1) -> TrainConfig:
    """The automatic batch size and number of epochs decided (vaekit.training.recipe), for the size the
    model trains on (its crops, for a surface), whether it trains on warped images, and how many
    models the run trains (cross-fitting: one per fold, sharing a budget), and whether it is a coder
    (a logistic likelihood: with many images, more epochs)."""
    size = training_crop(train_cfg, model_cfg) or model_cfg.image_size
    augment = "on" if augment_on(train_cfg.augment, model_cfg.layout, n_train) else "off"
    train_cfg = replace(train_cfg, batch_size=resolve_batch_size(train_cfg, size), augment=augment)
    return replace(train_cfg, epochs=resolve_epochs(train_cfg, n_train, size, warped=augment == "on", models=models,
                                                    coder=model_cfg.likelihood == "logistic"))


def fit(data: Dataset, out_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool = False,
        progress: Progress | None = None, should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train, checkpoint every epoch, keep the best-on-validation weights, set the threshold.

    With few images (vaekit.training.splits.Splits) the run's model is the first fold's, and one
    model per other fold is trained after it, for out-of-sample scores of every image
    (vaekit.training.crossfit), unless the model is a surface with a defect reader (one held-out
    fold). `should_stop()` is asked
    after every optimizer step (the demo's Stop button, the CLI's Ctrl-C): when it says True
    the loop ends there and returns with `stopped` set, the run directory holding the last
    finished epoch's checkpoint, ready for `--resume`."""
    out_dir, device = Path(out_dir), pick_device(train_cfg.device)
    dist = init_distributed(device)
    scanned = _scanned(out_dir, data, resume)  # each image's exact copies, kept in one split
    splits = run_splits(len(data.paths), out_dir, model_cfg, train_cfg, resume, scanned and scanned[0])
    train_cfg = resolved_train_config(train_cfg, model_cfg, len(splits.train), models=len(splits.folds) or 1)
    trainer = Trainer(model_cfg, train_cfg, device, dist)
    start_epoch, best, history = _begin(trainer, out_dir, data, splits, resume, scanned)
    complete = resume and start_epoch == train_cfg.epochs and rundir.finished(out_dir)  # nothing will train
    if progress and dist.main:
        progress(start_epoch, train_cfg.epochs, phase="plan", finished=complete,  # a finished run: nothing to say
                 **training_plan(trainer, data, splits, notes=not complete, scanned=scanned))
    # No validation split (cross-fitting, one held-out fold, --val-fraction 0): keep the last epoch, as the fold
    keep_last = splits.crossfit or not len(splits.val)  # models do (validating on training images cost a pass)
    t_start, stopped, pending = time.perf_counter(), False, None
    for epoch in range(start_epoch, train_cfg.epochs):
        t0 = time.perf_counter()
        sums = trainer.epoch(data.images, splits.train, epoch, progress if dist.main else None, should_stop, data.wide)
        if sums is None:
            stopped = True
            if pending is not None and dist.main:  # asked to stop: keep the last finished epoch
                _write_state(out_dir, *pending)
            break
        _check_finite(sums, epoch, out_dir, train_cfg.beta)
        row = _epoch_row(epoch, kl_weight(epoch, train_cfg), sums, time.perf_counter() - t0, trainer.model, data,
                         splits.val, device, dist, train_cfg, keep_last)
        history.append(row)
        saving = checkpoint_due(epoch, train_cfg, trainer.steps(len(splits.train))) or (resume and epoch == start_epoch)
        improved = saving if keep_last else row["val_loss"] < best["val"]
        if improved:  # the weights named, so a model.safetensors replaced since is caught (_check_best_weights)
            best = {"epoch": epoch, "val": row["val_loss"], "weights": rundir.fingerprint(trainer.model.state_dict())}
        if dist.main:
            _save_epoch(trainer, out_dir, epoch, best, history, improved, resume and epoch == start_epoch, saving)
            pending = None if saving else _pending(trainer, epoch, best, history)
        if progress and dist.main:
            progress(epoch + 1, train_cfg.epochs, phase="epoch", **row)

    result = TrainResult(out_dir, str(device), len(history), best["epoch"] + 1, best["val"], history, rank=dist.rank,
                         stopped=stopped, epoch_seconds=time.perf_counter() - t_start)
    if dist.main and not stopped:
        result.complete = complete
        result.threshold = rundir.read_config(out_dir)["anomaly"]["threshold"] if result.complete else _finish(
            out_dir, data, splits, model_cfg, train_cfg, device, progress, should_stop, best)
        result.stopped = result.threshold is None  # asked to stop while cross-fitting: --resume does it again
        result.seconds = time.perf_counter() - t_start
    barrier(dist)  # the run directory is complete when any rank returns
    return result


def training_plan(trainer: Trainer, data: Dataset, splits, notes: bool = True, scanned=None) -> dict:
    """What this run trains, with every "auto" decided, for the progress event "plan" that comes
    before the first step (the CLI prints it as one line, the demo shows it): the images and how
    they are split, the model, the recipe, the device, how many defect readers follow, the
    files skipped (path, reason), so that they are named before the training, not after it, and
    notes on what the model cannot learn from them (vaekit.training.coverage)."""
    from vaekit.reader.net import ReaderConfig
    from vaekit.training.coverage import plan_notes

    cfg, m = trainer.cfg, trainer.model_cfg
    readers = ReaderConfig().members if m.layout == "grid" and cfg.reader else 0
    return {"images": len(data.paths), "train": len(splits.train), "val": len(splits.val), "cal": len(splits.cal),
            "folds": len(splits.folds), "image_size": m.image_size, "reads_at": m.reads_at, "layout": m.layout,
            "channels": m.channels, "latent_dim": m.latent_dim, "likelihood": m.likelihood, "crop": training_crop(cfg, m),
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "augment": cfg.augment, "readers": readers,
            "device": str(trainer.device), "skipped": [(str(path), str(why)) for path, why in data.skipped],
            "whole": data.wide is not None,  # a surface learning from each whole image (vaekit.training.wide)
            "notes": plan_notes(data, m, scanned) if notes else []}


def plan_text(p: dict) -> str:
    """One line for a training_plan: what trains, on what, for how long, where; e.g. "142 images
    (5 folds, cross-fitted) · 32 px, vector latent (16), gaussian · 231 epochs, batch 64, warped copies ·
    cpu"."""
    if p["folds"]:
        split = f"{p['folds']} folds, cross-fitted"
    elif p["cal"] and not p["val"]:
        split = f"{p['train']} train, {p['cal']} held out"
    else:
        split = f"{p['train']} train, {p['val']} validation, {p['cal']} calibration"
    colour = {1: " gray", 3: " RGB"}.get(p.get("channels"), "")  # --channels auto decided (older events: none)
    model = f"{p['image_size']} px{colour}, vector latent ({p['latent_dim']}), {p['likelihood']}"
    if p["layout"] == "grid":
        crops = f" trained on {p['crop']} px crops" if p["crop"] else ""
        if p.get("whole"):  # learned from every whole image, not from its centre square
            crops = f"{crops} of each whole image" if crops else " trained on each whole image"
        tiles = f" in {p['image_size']} px tiles" if p["reads_at"] > p["image_size"] else ""  # as the summary says
        model = f"{p['reads_at']} px{colour}{tiles}, latent grid ({p['latent_dim']} per cell){crops}, {p['likelihood']}"
    recipe = (f"{p['epochs']} epoch{'s' if p['epochs'] != 1 else ''}, batch {p['batch_size']}"
              + (", warped copies" if p["augment"] == "on" else ""))
    readers = f" · then {p['readers']} defect reader{'s' if p['readers'] > 1 else ''}" if p["readers"] else ""
    if p["folds"]:  # the run's model holds one fold out; a model per other fold follows, each as long as it
        readers += f" · then {p['folds'] - 1} fold models for the threshold"
    return f"{p['images']} image{'s' if p['images'] != 1 else ''} ({split}) · {model} · {recipe}{readers} · {p['device']}"


def _check_best_weights(out_dir: Path, best: dict) -> None:
    """model.safetensors must hold the best epoch's weights, which the checkpoint names by their
    fingerprint: another run's weights of the same shapes, copied in, would otherwise be calibrated,
    given a threshold and kept as this run's model. Checkpoints from before the fingerprint name none.
    A session stopped between checkpoints leaves later epochs' weights too: where the checkpoint
    holds the best epoch's own, they are put back."""
    want = best.get("weights")
    if want is None or rundir.fingerprint(rundir.load_tensors(out_dir / rundir.WEIGHTS, "model weights")[0]) == want:
        return
    saved = {k[len("model."):]: v for k, v in checkpoint.load_checkpoint(out_dir)[0].items() if k.startswith("model.")}
    if rundir.fingerprint(saved) == want:
        rundir.save_tensors(out_dir / rundir.WEIGHTS, saved, {"epoch": best["epoch"]})
        return
    raise rundir.RunError(f"{out_dir / rundir.WEIGHTS} does not hold the weights of the run's best epoch "
                          f"({best['epoch'] + 1}): it was replaced, perhaps by another run's; start the run "
                          "again with --overwrite")


def _check_finite(sums: list[float], epoch: int, out_dir: Path, beta: float = 1.0) -> None:
    if not math.isfinite(sums[2]):
        hint = "try a lower --lr" if beta <= 1 else f"try a lower --beta (it is {beta:.3g}) or --lr"
        kept = (f"the last good checkpoint (epoch {epoch}) is kept in {out_dir}; resume with --resume"
                if epoch > 0 else "nothing was saved yet; start again with --overwrite")
        raise TrainingError(f"loss became {sums[2]} in epoch {epoch + 1}; {hint}. {kept}")


def _finish(out_dir, data, splits, model_cfg, train_cfg, device, progress, should_stop, best: dict) -> float | None:
    """vaekit.training.finish, of the `best` epoch's weights, with the fold models' scores when
    cross-fitted: the threshold, or None when asked to stop while the fold models trained."""
    _check_best_weights(out_dir, best)
    from vaekit.training.crossfit import crossfit_scores

    crossfit = partial(crossfit_scores, data, splits, model_cfg, train_cfg, device, progress=progress,
                       should_stop=should_stop) if splits.crossfit else None
    return finish(out_dir, data, splits, train_cfg, device, crossfit, progress, should_stop)


def _scanned(out_dir: Path, data: Dataset, resume: bool) -> tuple | None:
    """vaekit.training.coverage.scan of the run's images (which are exact copies of which), for a
    run that keeps each image's copies in one split: a new one, or one begun so (its config.json
    counts its exact_copies); None for a run begun before 2026-12-07, whose splits stay as they were."""
    from vaekit.training.coverage import scan

    if resume and "exact_copies" not in (rundir.read_config(out_dir).get("data") or {}):
        return None
    return scan(data.images)


def _begin(trainer: Trainer, out_dir: Path, data: Dataset, splits, resume: bool, scanned) -> tuple[int, dict, list]:
    """(first epoch, best so far, history): a new run writes its config; a resumed one reloads
    the exact state of its last finished epoch."""
    cfg = trainer.cfg
    if not resume:
        if trainer.dist.main:
            copies = len(data.paths) - len(np.unique(scanned[0]))
            write_run_config(out_dir, data, trainer.model_cfg, cfg, trainer.device, len(splits.train),
                             len(splits.val), len(splits.cal), len(splits.folds), copies)
        return 0, {"epoch": -1, "val": math.inf}, []
    tensors, meta = checkpoint.load_checkpoint(out_dir)
    if meta.get("settings") not in (None, _settings(trainer)):  # checkpoints of before 2026-12-07 hold none
        raise rundir.RunError(f"{out_dir / rundir.CONFIG}'s settings are not those its checkpoint trained with "
                              "(edited since it stopped?); put them back, or start again with --overwrite")
    try:
        unpack_state(tensors, meta, trainer.model, trainer.optimizer, trainer.scaler)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise rundir.RunError(f"the checkpoint in {out_dir / rundir.CHECKPOINT_DIR} does not fit this run: {first}") from None
    for group in trainer.optimizer.param_groups:  # a --lr given with --resume applies from here on
        group["lr"] = cfg.lr
    start_epoch = meta["epoch"] + 1
    if cfg.epochs < start_epoch:
        raise BadInput(f"{out_dir} has already trained {start_epoch} epochs; --epochs {cfg.epochs} would go back")
    return start_epoch, meta["best"], checkpoint.resumed_history(metrics.read_metrics(out_dir), meta,
                                                                 out_dir / rundir.METRICS)


CHECKPOINT_STEPS = 50  # TrainConfig.checkpoint_every=0: a checkpoint at least this many steps apart


def checkpoint_due(epoch: int, cfg: TrainConfig, steps_per_epoch: int) -> bool:
    """Whether epoch `epoch` (0-based) ends with a checkpoint: the first and the last always, and
    every `checkpoint_every` epochs (auto: every ~CHECKPOINT_STEPS steps). A checkpoint of a
    small model costs more than an epoch of a small folder (~0.15 s, mostly fsync); a resume
    then redoes at most those epochs, exactly (the recipe is a function of the step)."""
    every = cfg.checkpoint_every or max(1, -(-CHECKPOINT_STEPS // max(1, steps_per_epoch)))
    return epoch == 0 or epoch == cfg.epochs - 1 or (epoch + 1) % every == 0


def _settings(trainer: Trainer) -> str:
    return checkpoint.settings_digest(trainer.model_cfg, trainer.cfg)


def _pending(trainer: Trainer, epoch: int, best: dict, history: list) -> tuple:
    """A finished epoch's state between checkpoints, copied: written if a stop comes before the next."""
    tensors, meta = pack_state(trainer.model, trainer.optimizer, trainer.scaler, epoch, best, len(history), copy=True,
                               history=history, settings=_settings(trainer))
    return epoch, tensors, meta, list(history)


def _save_epoch(trainer: Trainer, out_dir: Path, epoch: int, best: dict, history: list, improved: bool,
                first_resumed: bool, saving: bool = True) -> None:
    """The best weights of a finished epoch; at a checkpoint, the metrics and the checkpoint."""
    if first_resumed:
        # From here model.safetensors may change: the stored threshold and fingerprint no
        # longer describe it until finish writes new ones, and the new total number of
        # epochs must survive another interruption.
        cfg = rundir.read_config(out_dir)
        cfg.pop("anomaly", None)
        cfg.pop("fingerprint", None)
        train_cfg = trainer.cfg
        changed = {k: getattr(train_cfg, k) for k in RESUMABLE if cfg["train"].get(k) != getattr(train_cfg, k)}
        if changed:  # what a --resume changed, and from which epoch on
            cfg["resumed"] = [*cfg.get("resumed", []), {"from_epoch": epoch + 1, **changed}]
        cfg["train"] = {**cfg["train"], **{k: getattr(train_cfg, k) for k in RESUMABLE}}
        rundir.write_config(out_dir, cfg)
    if improved:
        rundir.save_tensors(out_dir / rundir.WEIGHTS, trainer.model.state_dict(), {"epoch": epoch})
    if saving:
        tensors, meta = pack_state(trainer.model, trainer.optimizer, trainer.scaler, epoch, best, len(history),
                                   history=history, settings=_settings(trainer))
        _write_state(out_dir, epoch, tensors, meta, history)


def _write_state(out_dir: Path, epoch: int, tensors: dict, meta: dict, history: list) -> None:
    metrics.write_metrics(out_dir, history)
    checkpoint.save_checkpoint(out_dir, epoch, tensors, meta)


def _epoch_row(epoch, beta, sums, seconds, model, data, val_idx, device, dist, train_cfg,
               keep_last: bool = False) -> dict:
    n = sums[3]
    crop = training_crop(train_cfg, model.cfg)
    pixels = data.images.shape[1] * (crop or data.images.shape[2]) * (crop or data.images.shape[3])
    if keep_last:  # no validation split, and the last epoch is kept: the epoch's own loss stands in
        vs = [sums[0], sums[1], sums[0] + sums[1], n]
    else:  # validation by the deterministic -ELBO (z = mu); each rank scores its share
        mine = val_idx[dist.rank :: dist.world]
        v = deterministic_scores(model, data.images, mine, device, crop=crop)
        vs = torch.tensor([v[:, 0].sum(), v[:, 1].sum(), v[:, 2].sum(), len(mine)], dtype=torch.float64, device=device)
        vs = all_reduce_sum(vs, dist).tolist()
    val_loss = vs[2] / max(vs[3], 1)
    return {
        "epoch": epoch + 1,
        "beta": beta,
        "train_loss": sums[2] / n,
        "train_recon": sums[0] / n,
        "train_kl": sums[1] / n,
        # bits/dim of the true -ELBO (recon + KL, whatever the KL weight during warm-up)
        "train_bits_per_dim": (sums[0] + sums[1]) / n / (pixels * math.log(2)),
        "val_loss": val_loss,
        "val_recon": vs[0] / max(vs[3], 1),
        "val_kl": vs[1] / max(vs[3], 1),
        "val_bits_per_dim": val_loss / (pixels * math.log(2)),
        "images_per_s": n / seconds,
        "seconds": seconds,
        # what the val columns are: the plug-in at z = mu (not the ELBO, docs/codec.md), or with no
        # validation split the training loss itself (one posterior draw per image); bits/dim are a
        # code length only under the discretised likelihood (a Gaussian density can go below 0)
        "val_estimator": "1 draw (training images)" if keep_last else "z = mu",
        "bits_are_code_length": model.cfg.likelihood == "logistic",
    }
