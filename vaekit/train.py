"""Fit a ConvVAE on a folder of images: device choice, AMP, DDP, checkpoints, exact resume.

`train()` is the whole job behind `vaekit train`: find and decode the images (once, into the
pixel cache), split off validation images, then `fit()`. Progress is reported through an
optional callback `progress(done, total, phase=..., **metrics)`; this module never prints.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vaekit.version import __version__
from vaekit.config import ModelConfig, TrainConfig, from_dict, from_stored_model
from vaekit.errors import BadInput
from vaekit.fileio import refuse_inside
from vaekit.model import ConvVAE
from vaekit.objective import negative_elbo
from vaekit import run as rundir
from vaekit.data import (Dataset, _gather, _read_ahead, _to_device, _to_input, auto_image_size, choose_model,  # noqa: F401
                         image_statistics, load_dataset, split, split3)
from vaekit.distributed import Dist, _all_reduce_sum, _barrier, init_distributed, pick_device  # noqa: F401

Progress = Callable[..., None]


class TrainingError(RuntimeError):
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
    seconds: float = 0.0
    rank: int = 0  # torchrun rank of this process; only rank 0 writes (and should print)


# --- evaluation --------------------------------------------------------------------------------

@torch.no_grad()
def deterministic_scores(model: ConvVAE, images: np.ndarray, idx: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Per-image -ELBO with z = mu (recon, kl, total as columns): (len(idx), 3) float64.

    Using the posterior mean instead of a random draw makes the estimate deterministic, so
    model selection and the anomaly threshold do not move with the noise.
    """
    model.eval()
    out = np.zeros((len(idx), 3), dtype=np.float64)
    for s in range(0, len(idx), batch_size):
        x = _to_input(images, idx[s : s + batch_size], device)
        mu, logvar = model.encode(x)
        params = model.decode(mu)
        loss = negative_elbo(x, params, mu, logvar, model.cfg.likelihood, model.scale())
        out[s : s + len(x)] = torch.stack([loss.recon, loss.kl, loss.total], 1).double().cpu().numpy()
    return out


# --- state -------------------------------------------------------------------------------------

def _pack_state(model, optimizer, scaler, epoch: int, best: dict, history_len: int) -> tuple[dict, dict]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda{i}"] = s
    meta = {
        "epoch": epoch,
        "best": best,
        "history_len": history_len,
        "param_groups": opt["param_groups"],
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    return tensors, meta


def _unpack_state(tensors: dict, meta: dict, model, optimizer, scaler) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])


# --- the loop ----------------------------------------------------------------------------------

def kl_weight(epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up of the KL weight over the first kl_warmup epochs (0-based epoch)."""
    if cfg.kl_warmup <= 0:
        return cfg.beta
    return cfg.beta * min(1.0, (epoch + 1) / (cfg.kl_warmup + 1))


class _NoisyForward(torch.nn.Module):
    """ConvVAE's forward with the reparameterisation noise passed in (see fit)."""

    def __init__(self, model: ConvVAE):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.model.encode(x)  # (B, D) each
        z = self.model.reparameterize(mu, logvar, eps)
        return self.model.decode(z), mu, logvar


def _share(batch: np.ndarray, d: Dist) -> tuple[np.ndarray, torch.Tensor, int]:
    """This rank's images of a global batch (ascending, for sequential reads), the rows of the
    global batch they hold (to pick their noise), and the global batch size."""
    rows = np.arange(d.rank, len(batch), d.world)
    order = np.argsort(batch[rows], kind="stable")
    return batch[rows][order], torch.from_numpy(rows[order]), len(batch)


def _noise_seed(seed: int, epoch: int, step: int) -> int:
    """Seed of the noise of one global batch: the same on every rank, and after a resume."""
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(1, np.uint64)[0])


# The automatic training length is a compute budget: about this many pixel-visits (images x
# pixels per image over all steps), ~1400 steps of 64 at 28 px, ~550 steps of 32 at 64 px:
# about a minute on two CPU cores. Measured in docs/detection.md: longer keeps helping a
# little, shorter hurts quickly.
AUTO_PIXEL_VISITS = 72_000_000
AUTO_MIN_STEPS, AUTO_MAX_STEPS, AUTO_MAX_EPOCHS = 300, 3000, 300


def resolve_batch_size(cfg: TrainConfig, image_size: int) -> int:
    """batch_size=0 means auto: 64 up to 32x32 pixels, 32 above (more, smaller steps)."""
    return cfg.batch_size or (64 if image_size <= 32 else 32)


def resolve_epochs(cfg: TrainConfig, n_train: int, image_size: int = 32) -> int:
    """epochs=0 means auto: enough epochs for the AUTO_PIXEL_VISITS budget (300 to 3000 steps),
    at most AUTO_MAX_EPOCHS: a small folder needs many epochs before the decoder is sharp
    enough for a useful score; a large one few."""
    if cfg.epochs > 0:
        return cfg.epochs
    batch = resolve_batch_size(cfg, image_size)
    steps = min(AUTO_MAX_STEPS, max(AUTO_MIN_STEPS, AUTO_PIXEL_VISITS // (batch * image_size * image_size)))
    per_epoch = max(1, math.ceil(n_train / batch))
    return min(AUTO_MAX_EPOCHS, max(1, math.ceil(steps / per_epoch)))


def learning_rate(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate at optimizer step `step` of `total`: "cosine" warms up linearly over the
    first 3% of steps, then decays along a half cosine to 0; "constant" is cfg.lr throughout.
    A pure function of the step, so a resumed run follows the same schedule."""
    if cfg.schedule == "constant":
        return cfg.lr
    warm = max(1, total // 33)
    return cfg.lr * min(1.0, (step + 1) / warm) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def fit(
    data: Dataset,
    out_dir: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train, checkpoint every epoch, keep the best-on-validation weights, set the threshold."""
    out_dir = Path(out_dir)
    device = pick_device(train_cfg.device)
    dist = init_distributed(device)
    torch.manual_seed(train_cfg.seed)
    model = ConvVAE(model_cfg).to(device)
    cuda = device.type == "cuda"
    channels_last = cuda and train_cfg.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = None
    if cuda and train_cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16) if cuda else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)

    train_idx, val_idx, cal_idx = split3(len(data.paths), train_cfg.val_fraction, train_cfg.calibration_fraction,
                                         train_cfg.seed)
    train_cfg = replace(train_cfg, batch_size=resolve_batch_size(train_cfg, model_cfg.image_size))
    train_cfg = replace(train_cfg, epochs=resolve_epochs(train_cfg, len(train_idx), model_cfg.image_size))
    start_epoch, history = 0, []
    best = {"epoch": -1, "val": math.inf}
    if resume:
        tensors, meta = rundir.load_checkpoint(out_dir)
        try:
            _unpack_state(tensors, meta, model, optimizer, scaler)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise rundir.RunError(f"the checkpoint in {out_dir / rundir.CHECKPOINT_DIR} does not fit this run: {first}") from None
        for group in optimizer.param_groups:  # a --lr given with --resume applies from here on
            group["lr"] = train_cfg.lr
        start_epoch, best = meta["epoch"] + 1, meta["best"]
        history = rundir.read_metrics(out_dir)[: meta["history_len"]]
        if train_cfg.epochs < start_epoch:
            raise ValueError(f"{out_dir} has already trained {start_epoch} epochs; --epochs {train_cfg.epochs} would go back")
    elif dist.main:
        _write_run_config(out_dir, data, model_cfg, train_cfg, device, len(train_idx), len(val_idx), len(cal_idx))

    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    # DDP averages gradients only through the wrapped module's forward, so the noise goes in there
    net: torch.nn.Module = _NoisyForward(model)
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if cuda else None)
    if train_cfg.compile:
        net = torch.compile(net)
    noise = torch.Generator(device=device)

    # Not DistributedSampler: it deals each rank its own slice of the epoch (padded to equal
    # length), so the global batches, and with them the losses, differ from a single-process
    # run. Here every rank shuffles the same way and takes an interleaved share of each global
    # batch, and each image's noise is drawn by its place in the global batch, so one process
    # or many train the same model (up to float rounding) and resume on any number of ranks.
    steps = math.ceil(len(train_idx) / train_cfg.batch_size)
    t_start = time.perf_counter()
    for epoch in range(start_epoch, train_cfg.epochs):
        t0 = time.perf_counter()
        beta = kl_weight(epoch, train_cfg)
        model.train()
        # a fresh generator per epoch: the shuffle needs no saved state to resume exactly
        perm = train_idx[np.random.default_rng([train_cfg.seed, epoch]).permutation(len(train_idx))]
        shares = [_share(perm[s * train_cfg.batch_size : (s + 1) * train_cfg.batch_size], dist) for s in range(steps)]
        reader = _read_ahead(data.images, (mine for mine, _, _ in shares), device)
        sums = torch.zeros(3, device=device, dtype=torch.float64)  # recon, kl, total
        count = 0
        report_every = max(1, steps // 50)
        for step, ((mine, rows, n_global), x) in enumerate(zip(shares, reader)):
            x = _to_device(x, device, channels_last)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(train_cfg, epoch * steps + step, train_cfg.epochs * steps)
            noise.manual_seed(_noise_seed(train_cfg.seed, epoch, step))
            rows = rows.to(device, non_blocking=True)  # blocking would wait for the GPU every step
            eps = torch.randn(n_global, model_cfg.z_dims, device=device, generator=noise)[rows]  # (B, D)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                params, mu, logvar = net(x, eps)
            loss = negative_elbo(x, params, mu, logvar, model_cfg.likelihood, model.scale(), beta)
            # sum over my images / global batch * world: DDP's gradient mean then equals the
            # gradient of the mean over the global batch
            objective = loss.total.sum() * (dist.world / n_global)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(objective).backward()
                if train_cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                objective.backward()
                if train_cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
                optimizer.step()
            with torch.no_grad():
                sums += torch.stack([loss.recon.sum(), loss.kl.sum(), loss.total.sum()]).double()
            count += len(mine)  # a Python int: a device tensor here would sync every step
            if progress and dist.main and ((step + 1) % report_every == 0 or step + 1 == steps):
                s = sums.tolist()
                progress(step + 1, steps, phase="train", epoch=epoch + 1, epochs=train_cfg.epochs,
                         loss=s[2] / count, recon=s[0] / count, kl=s[1] / count,
                         images_per_s=count * dist.world / (time.perf_counter() - t0))
        reader.close()  # here, not later in the garbage collector, where a Ctrl-C would be swallowed
        sums = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64, device=device)])
        sums = _all_reduce_sum(sums, dist).tolist()
        if not math.isfinite(sums[2]):
            kept = (f"the last good checkpoint (epoch {epoch}) is kept in {out_dir}; resume with --resume"
                    if epoch > 0 else "nothing was saved yet; start again with --overwrite")
            raise TrainingError(f"loss became {sums[2]} in epoch {epoch + 1}; try a lower --lr. {kept}")
        seconds = time.perf_counter() - t0
        row = _epoch_row(epoch, beta, sums, seconds, model, data, val_idx, train_idx, device, dist)
        history.append(row)
        improved = row["val_loss"] < best["val"]
        if improved:
            best = {"epoch": epoch, "val": row["val_loss"]}
        if dist.main:
            if resume and epoch == start_epoch:
                # From here model.safetensors may change: the stored threshold and fingerprint no
                # longer describe it until _finish writes new ones, and the new total number of
                # epochs must survive another interruption.
                cfg = rundir.read_config(out_dir)
                cfg.pop("anomaly", None)
                cfg.pop("fingerprint", None)
                changed = {k: getattr(train_cfg, k) for k in RESUMABLE if cfg["train"].get(k) != getattr(train_cfg, k)}
                if changed:  # what a --resume changed, and from which epoch on
                    cfg["resumed"] = [*cfg.get("resumed", []), {"from_epoch": epoch + 1, **changed}]
                cfg["train"] = {**cfg["train"], **{k: getattr(train_cfg, k) for k in RESUMABLE}}
                rundir.write_config(out_dir, cfg)
            if improved:
                rundir.save_tensors(out_dir / rundir.WEIGHTS, model.state_dict(), {"epoch": epoch})
            rundir.write_metrics(out_dir, history)
            tensors, meta = _pack_state(model, optimizer, scaler, epoch, best, len(history))
            rundir.save_checkpoint(out_dir, epoch, tensors, meta)
        if progress and dist.main:
            progress(epoch + 1, train_cfg.epochs, phase="epoch", **row)

    result = TrainResult(out_dir, str(device), len(history), best["epoch"] + 1, best["val"], history,
                         seconds=time.perf_counter() - t_start, rank=dist.rank)
    if dist.main:
        result.threshold = _finish(out_dir, data, train_idx, val_idx, cal_idx, train_cfg, device)
    _barrier(dist)  # the run directory is complete when any rank returns
    return result


def _epoch_row(epoch, beta, sums, seconds, model, data, val_idx, train_idx, device, dist) -> dict:
    n = sums[3]
    pixels = int(np.prod(data.images.shape[1:]))
    # Validation by the deterministic -ELBO (z = mu); each rank scores its share.
    eval_idx = val_idx if len(val_idx) else train_idx
    mine = eval_idx[dist.rank :: dist.world]
    v = deterministic_scores(model, data.images, mine, device)
    vs = torch.tensor([v[:, 0].sum(), v[:, 1].sum(), v[:, 2].sum(), len(mine)], dtype=torch.float64, device=device)
    vs = _all_reduce_sum(vs, dist).tolist()
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
    }


def _write_run_config(out_dir, data, model_cfg, train_cfg, device, n_train, n_val, n_cal=0) -> None:
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
COMBINE = "max"  # how the standardised tests make one score (vaekit.scoring.Calibration; docs/detection.md)


def _finish(out_dir, data, train_idx, val_idx, cal_idx, train_cfg, device) -> float:
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
    names = ("atypicality", "excess", "neg_elbo", "recon", "kl")
    chunks = [[engine.score(_gather(data.images, eval_idx[i : i + 1024]), score=name, maps=False).score for name in names]
              for i in range(0, len(eval_idx), 1024)]
    scores = {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(names)}
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


# --- the whole job -------------------------------------------------------------------------

# settings a --resume may change (recorded in config.json); any other must match the run
RESUMABLE = ("epochs", "lr", "beta")


def _resumed_configs(stored: dict, out_dir: Path, changes: dict) -> tuple[ModelConfig, TrainConfig]:
    """The stored configs, with the RESUMABLE `changes` applied; any other change is refused."""
    try:
        model_cfg = from_stored_model(stored["model"])
        # runs of vaekit 0.1 trained at a constant learning rate, without a calibration split
        old = from_dict(TrainConfig, {"schedule": "constant", "calibration_fraction": 0.0, **stored.get("train", {})})
    except (TypeError, ValueError) as e:
        raise rundir.RunError(f"run config {out_dir / rundir.CONFIG} is damaged: {e}") from None
    current = {**asdict(model_cfg), **asdict(old)}
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE and k in current and current[k] != v}
    if refused:
        names = ", ".join(f"--{k.replace('_', '-')} {v} (the run has {current[k]})" for k, v in refused.items())
        raise BadInput(f"--resume continues {out_dir} with its own settings and cannot change {names}; only "
                       f"--epochs, --lr and --beta can change on resume. Start a new run to change the others")
    applied = {k: v for k, v in changes.items() if k in RESUMABLE and not (k == "epochs" and not v)}
    try:
        return model_cfg, replace(old, **applied)
    except TypeError as e:
        raise BadInput(str(e)) from None


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    channels: str | int = "auto",
    resume: bool = False,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    workers: int = 0,
    progress: Progress | None = None,
    resume_epochs: int | None = None,
    resume_changes: dict | None = None,
) -> tuple[TrainResult, Dataset]:
    """`vaekit train`: load the folder, then fit.

    On resume the stored configs win, except `resume_changes` (settings the user gave, by
    config field name): epochs (to extend a run; also `resume_epochs`), lr and beta apply from
    the next epoch and are recorded in config.json; a different value for any other setting
    is refused. The decoded images must be unchanged, so the result is exact.

    The output rule: `out_dir` must be new, empty or a vaekit run (replaced only with
    `overwrite`, and then only the files vaekit wrote), and not inside `data_dir`; it is
    locked while training, so a second process on it gets InUse.
    """
    out_dir = Path(out_dir)
    refuse_inside(out_dir, data_dir, "--out")
    if int(os.environ.get("RANK", "0") or 0) != 0:  # torchrun: rank 0 holds the lock for all
        return _train(data_dir, out_dir, model_cfg, train_cfg, channels, resume, overwrite, cache_dir, workers,
                      progress, resume_epochs, resume_changes)
    with rundir.locked(out_dir):
        return _train(data_dir, out_dir, model_cfg, train_cfg, channels, resume, overwrite, cache_dir, workers,
                      progress, resume_epochs, resume_changes)


def _train(data_dir, out_dir, model_cfg, train_cfg, channels, resume, overwrite, cache_dir, workers, progress,
           resume_epochs, resume_changes):
    if resume:
        stored = rundir.read_config(out_dir)
        changes = dict(resume_changes or {})
        if resume_epochs:
            changes["epochs"] = resume_epochs
        model_cfg, train_cfg = _resumed_configs(stored, out_dir, changes)
        channels = model_cfg.channels
    else:
        rundir.prepare_out(out_dir, overwrite, write=False)

    # Under torchrun every rank has made the checks above before rank 0 writes anything (it
    # first passes the barrier below), so no rank takes rank 0's fresh files for an old run.
    dist = init_distributed(pick_device(train_cfg.device))
    if not dist.main:
        progress = None

    if not model_cfg.image_size:  # auto: from the files' headers, before anything is decoded
        from vaekit import images

        model_cfg = replace(model_cfg, image_size=auto_image_size(images.find_images(data_dir)))
    # The first rank on each machine fills the pixel cache; the others then find it there.
    data = None
    if dist.local_rank == 0:
        data = load_dataset(data_dir, model_cfg.image_size, channels, cache_dir, workers, progress)
    _barrier(dist)
    if data is None:
        data = load_dataset(data_dir, model_cfg.image_size, channels, cache_dir, workers)
    if not resume and dist.main:  # once the images are known to be usable: a refused run writes nothing
        rundir.prepare_out(out_dir, overwrite)
    if resume and data.fingerprint != stored.get("data", {}).get("fingerprint"):
        raise rundir.RunError(
            f"the images in {data_dir} changed since {out_dir} was started; resume needs the same data"
        )
    model_cfg = replace(model_cfg, channels=int(data.images.shape[1]))
    if not model_cfg.resolved:  # the rest of "auto", from the decoded training pixels (the same on every rank)
        model_cfg = choose_model(model_cfg, image_statistics(data.images, np.arange(len(data.paths))))
    return fit(data, out_dir, model_cfg, train_cfg, resume=resume, progress=progress), data
