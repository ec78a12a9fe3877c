"""What a run directory records around training: its config at the start; at the end the
score's calibration, the anomaly threshold and the preview image."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from vaekit import run as rundir
from vaekit.data import _gather, _to_input
from vaekit.version import __version__


def write_run_config(out_dir, data, model_cfg, train_cfg, device, n_train, n_val, n_cal=0, n_folds=0) -> None:
    rundir.write_config(out_dir, {
        "vaekit_version": __version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": asdict(model_cfg),
        "train": asdict(train_cfg),
        "data": {
            "root": str(data.root),
            "images": len(data.paths),
            "train_images": n_train,
            "val_images": n_val,
            "calibration_images": n_cal,
            "crossfit_folds": n_folds,
            "skipped": [[_rel(p, data.root), r] for p, r in data.skipped],
            "channels": model_cfg.channels,
            "image_size": model_cfg.image_size,
            "fingerprint": data.fingerprint,
            "preprocessing": "shorter side resized to image_size (bicubic), centre crop; pixels / 255",
        },
        "device": str(device),
    })


CALIBRATION_MAX = 2000  # images the score statistics are fitted on, at most (per set)
LOCAL_WINDOWS = (9, 17)  # a latent grid's local tests: windows of ~2 and ~4 cells (a cell is 4x4 pixels)
COMBINE = "sumsq"  # how the standardised tests make one score (vaekit.scoring.Calibration; docs/detection.md)
THRESHOLD_SCORES = ("excess", "neg_elbo", "recon", "kl")  # stored with a threshold each, beside the default


def local_windows(image_size: int) -> tuple[int, ...]:
    """The local tests' windows that fit in the image (a 16 px grid model has no 17 px window)."""
    return tuple(w for w in LOCAL_WINDOWS if w <= image_size) or (image_size,)


def finish(out_dir, data, splits, train_cfg, device, folds=None) -> float:
    """With the best weights: fit the atypicality score's statistics on images the model never
    trained on, then set the threshold from the scores of images that fitted neither the model
    nor the statistics, so the false-positive rate it promises is not biased low.

    Held-out splits: statistics on the validation images, threshold on the calibration images.
    Cross-fitted (`folds`, vaekit.crossfit): every image's parts come from a model that did not
    train on it; the statistics are fitted on all of them for later use, and each image's
    calibration score is standardised by statistics fitted on the other folds only."""
    from vaekit.anomaly import threshold_section
    from vaekit.engine_torch import TorchModel

    # Scored by the very code `vaekit anomaly-score` runs (the engine), so the stored threshold
    # and the scores it is compared with cannot drift apart.
    engine = TorchModel(out_dir, device=str(device))
    model, cfg = engine.net, engine.config
    reference = engine.elbo_parts(_gather(data.images, _at_most(splits.train, CALIBRATION_MAX)))
    if folds is not None:
        calibration, scores = _crossfitted(engine, folds, splits, reference)
        source = "cross-fitted"
    else:
        calibration, scores, source = _held_out(engine, data, splits, reference)
    cfg["anomaly"] = {**threshold_section(scores, train_cfg.threshold_quantile, source),
                      "calibration": calibration.stats}
    cfg["fingerprint"] = rundir.fingerprint(model.state_dict())
    rundir.write_config(out_dir, cfg)
    _write_preview(out_dir / rundir.PREVIEW, model, data, splits.val if len(splits.val) else splits.train, device)
    return cfg["anomaly"]["threshold"]


def _fit_calibration(engine, parts, reference):
    from vaekit.scoring import Calibration

    local = engine.net.cfg.layout == "grid"
    return Calibration.fit(parts, local=local, windows=local_windows(engine.info.image_size), combine=COMBINE,
                           reference=reference)


def _held_out(engine, data, splits, reference):
    """Statistics on the validation split, scores of the calibration split (or what there is)."""
    fit_idx = splits.val if len(splits.val) else splits.train
    calibration = _fit_calibration(engine, engine.elbo_parts(_gather(data.images, _at_most(fit_idx, CALIBRATION_MAX))),
                                   reference)
    engine.info.calibration = calibration.stats
    if len(splits.cal):
        eval_idx, source = splits.cal, "calibration"
    else:
        eval_idx, source = (splits.val, "validation") if len(splits.val) else (splits.train, "training")
    # in chunks read with _gather: memory stays flat however many calibration images there are;
    # one pass: the atypicality's Scores carry every other score too
    chunks = [engine.score(_gather(data.images, eval_idx[i : i + 1024]), score="atypicality", maps=False)
              for i in range(0, len(eval_idx), 1024)]
    scores = {"atypicality": np.concatenate([c.score for c in chunks]),
              **{name: np.concatenate([getattr(c, name) for c in chunks]) for name in THRESHOLD_SCORES}}
    return calibration, scores, source


def _crossfitted(engine, folds, splits, reference):
    """Every image's parts come from the fold model that never saw it. The stored statistics
    are fitted on all of them (they describe unseen normal images, as validation images
    would); each image's calibration score is standardised by statistics fitted on the other
    folds only, so no image standardises itself."""
    n = sum(len(f.held) for f in folds)
    everything = _concat([f.held_parts for f in folds], [f.held for f in folds], n)
    calibration = _fit_calibration(engine, everything, reference)
    scores = {"atypicality": np.zeros(n), "excess": everything.neg_elbo - everything.floor,
              "neg_elbo": everything.neg_elbo, "recon": everything.recon, "kl": everything.kl}
    for f in folds:
        rest = everything.take(np.setdiff1d(np.arange(n), f.held))
        if len(rest):
            scores["atypicality"][f.held] = _fit_calibration(engine, rest, reference).score(f.held_parts)[0]
    return calibration, scores


def _concat(parts, held, n):
    """Parts of folds, back in image order."""
    from vaekit.scoring import Parts

    order = np.concatenate(held)  # the folds partition range(n)
    inverse = np.empty(n, np.int64)
    inverse[order] = np.arange(n)

    def cat(name):
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else np.concatenate(values)[inverse]

    return Parts(cat("recon"), cat("kl"), cat("floor"), r_map=cat("r_map"), k_map=cat("k_map"))


def _at_most(idx: np.ndarray, n: int) -> np.ndarray:
    """An evenly spaced subset of at most n of `idx`."""
    return idx[:: max(1, -(-len(idx) // n))]


@torch.no_grad()
def _write_preview(path, model, data, idx, device) -> None:
    """Top: inputs; middle: reconstructions (z = mu); bottom: samples from the prior."""
    from vaekit import images as imageio

    idx = idx[:8]
    x = _to_input(data.images, idx, device)
    mu, _ = model.encode(x)
    recon = model.mean_image(model.decode(mu))
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(len(idx), model.cfg.z_dims, generator=g).to(device)
    samples = model.mean_image(model.decode(z))
    rows = torch.cat([x, recon, samples]).float().cpu().numpy()
    imageio.save_png(imageio.make_grid(rows, ncol=len(idx)), path)


def _rel(p: Path, root: Path) -> str:
    try:
        return Path(p).relative_to(root).as_posix()
    except ValueError:
        return str(p)
