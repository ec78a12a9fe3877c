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


def write_run_config(out_dir, data, model_cfg, train_cfg, device, n_train, n_val, n_cal=0) -> None:
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
            "skipped": [[_rel(p, data.root), r] for p, r in data.skipped],
            "channels": model_cfg.channels,
            "image_size": model_cfg.image_size,
            "fingerprint": data.fingerprint,
            "preprocessing": "shorter side resized to image_size (bicubic), centre crop; pixels / 255",
        },
        "device": str(device),
    })


CALIBRATION_MAX = 2000  # validation images the score statistics are fitted on, at most
LOCAL_WINDOWS = (9, 17)  # a latent grid's local tests: windows of ~2 and ~4 cells (a cell is 4x4 pixels)
COMBINE = "sumsq"  # how the standardised tests make one score (vaekit.scoring.Calibration; docs/detection.md)


def finish(out_dir, data, train_idx, val_idx, cal_idx, train_cfg, device) -> float:
    """With the best weights: fit the atypicality score's statistics on the validation images,
    then set the threshold from the calibration images (which neither picked the epoch nor
    fitted the statistics, so the false-positive rate they promise is not biased low)."""
    from vaekit import images as imageio

    from vaekit.anomaly import threshold_section
    from vaekit.engine_torch import TorchModel
    from vaekit.scoring import Calibration

    # Scored by the very code `vaekit anomaly-score` runs (the engine), so the stored threshold
    # and the scores it is compared with cannot drift apart.
    engine = TorchModel(out_dir, device=str(device))
    model, cfg = engine.net, engine.config
    fit_idx = val_idx if len(val_idx) else train_idx
    parts = engine.elbo_parts(_gather(data.images, fit_idx[:: max(1, -(-len(fit_idx) // CALIBRATION_MAX))]))
    calibration = Calibration.fit(parts, local=model.cfg.layout == "grid", windows=LOCAL_WINDOWS, combine=COMBINE)
    engine.info.calibration = calibration.stats
    if len(cal_idx):
        eval_idx, source = cal_idx, "calibration"
    else:
        eval_idx, source = (val_idx, "validation") if len(val_idx) else (train_idx, "training")
    # in chunks read with _gather: memory stays flat however many calibration images there are
    # one pass: the atypicality's Scores carry every other score too
    chunks = [engine.score(_gather(data.images, eval_idx[i : i + 1024]), score="atypicality", maps=False)
              for i in range(0, len(eval_idx), 1024)]
    scores = {"atypicality": np.concatenate([c.score for c in chunks]),
              **{name: np.concatenate([getattr(c, name) for c in chunks]) for name in ("excess", "neg_elbo", "recon", "kl")}}
    cfg["anomaly"] = {**threshold_section(scores, train_cfg.threshold_quantile, source),
                      "calibration": calibration.stats}
    cfg["fingerprint"] = rundir.fingerprint(model.state_dict())
    rundir.write_config(out_dir, cfg)
    _write_preview(out_dir / rundir.PREVIEW, model, data, fit_idx, device, imageio)
    return cfg["anomaly"]["threshold"]


@torch.no_grad()
def _write_preview(path, model, data, idx, device, imageio) -> None:
    """Top: inputs; middle: reconstructions (z = mu); bottom: samples from the prior."""
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
