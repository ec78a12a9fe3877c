"""The training loop: fit a ConvVAE on decoded images, with AMP, DDP, checkpoints and exact resume.

`fit()` trains, checkpoints every epoch, keeps the best-on-validation weights and, at the end,
has vaekit.finish calibrate the score and set the threshold. Progress is reported through an
optional callback `progress(done, total, phase=..., **metrics)`; this module never prints.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vaekit import checkpoint
from vaekit import run as rundir
from vaekit.config import RESUMABLE, ModelConfig, TrainConfig
from vaekit.data import Dataset, gather, read_ahead, to_device, to_input, plan_splits
from vaekit.distributed import Dist, all_reduce_sum, barrier, init_distributed, pick_device
from vaekit.finish import finish, write_run_config
from vaekit.model import ConvVAE
from vaekit.objective import negative_elbo
from vaekit.recipe import kl_weight, learning_rate, resolve_batch_size, resolve_epochs
from vaekit.errors import BadInput, TrainingFailed
from vaekit.progress import Progress



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
    seconds: float = 0.0
    rank: int = 0  # torchrun rank of this process; only rank 0 writes (and should print)
    stopped: bool = False  # asked to stop (should_stop): no threshold yet; --resume continues


# --- evaluation --------------------------------------------------------------------------------

CROP = 64  # TrainConfig.crop=0: a grid model larger than this trains on crops of this many pixels


def training_crop(train_cfg: TrainConfig, model_cfg: ModelConfig) -> int | None:
    """The crop a model trains on (None: whole images). Only a grid model crops: it is fully
    convolutional, so what it learns of a 64 px window holds for the whole surface it reads."""
    if model_cfg.layout != "grid":
        return None
    c = train_cfg.crop or CROP
    return c if c < model_cfg.image_size else None


def crop_batch(x: torch.Tensor, crop: int | None, seed) -> torch.Tensor:
    """Random crop x crop windows of a uint8 batch (B, C, H, W), placed by `seed` (a step's,
    or an image's for the fixed validation crops): the same windows after a resume."""
    if crop is None:
        return x
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, x.shape[-2] - crop + 1, len(x))
    xs = rng.integers(0, x.shape[-1] - crop + 1, len(x))
    return torch.stack([x[i, :, y : y + crop, c : c + crop] for i, (y, c) in enumerate(zip(ys.tolist(), xs.tolist()))])


@torch.no_grad()
def deterministic_scores(model: ConvVAE, images: np.ndarray, idx: np.ndarray, device: torch.device, batch_size: int = 256,
                         crop: int | None = None) -> np.ndarray:
    """Per-image -ELBO with z = mu (recon, kl, total as columns): (len(idx), 3) float64.

    Using the posterior mean instead of a random draw makes the estimate deterministic, so
    model selection and the anomaly threshold do not move with the noise. With `crop`, each
    image is measured on one fixed window of that size (placed by the image's index).
    """
    model.eval()
    out = np.zeros((len(idx), 3), dtype=np.float64)
    for s in range(0, len(idx), batch_size):
        chunk = idx[s : s + batch_size]
        if crop is None:
            x = to_input(images, chunk, device)
        else:
            x = torch.cat([crop_batch(torch.from_numpy(gather(images, chunk[j : j + 1])), crop, [7, int(i)])
                           for j, i in enumerate(chunk)])
            x = to_device(x, device)
        mu, logvar = model.encode(x)
        params = model.decode(mu, model.size_of(x))
        loss = negative_elbo(x, params, mu, logvar, model.cfg.likelihood, model.scale())
        out[s : s + len(x)] = torch.stack([loss.recon, loss.kl, loss.total], 1).double().cpu().numpy()
    return out


# --- state -------------------------------------------------------------------------------------

def _pack_state(model, optimizer, scaler, epoch: int, best: dict, history_len: int,
                copy: bool = False) -> tuple[dict, dict]:
    """What a checkpoint holds; `copy`: tensors cloned, to be written later (the state moves on)."""
    keep = (lambda t: t.detach().clone()) if copy else (lambda t: t)  # noqa: E731
    tensors = {f"model.{k}": keep(v) for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = keep(v) if torch.is_tensor(v) else torch.tensor(v)
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



class _NoisyForward(torch.nn.Module):
    """ConvVAE's forward with the reparameterisation noise passed in (see fit)."""

    def __init__(self, model: ConvVAE):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.model.encode(x)  # (B, D) each
        z = self.model.reparameterize(mu, logvar, eps)
        return self.model.decode(z, self.model.size_of(x)), mu, logvar


def _agreed(flag: bool, dist: Dist, device: torch.device) -> bool:
    """Under torchrun every rank must stop at the same step, or the others wait forever in the
    next all-reduce: a stop asked on any rank is a stop everywhere."""
    if dist.world == 1:
        return bool(flag)
    t = torch.tensor([float(bool(flag))], device=device)
    return all_reduce_sum(t, dist).item() > 0


def _share(batch: np.ndarray, d: Dist) -> tuple[np.ndarray, torch.Tensor, int]:
    """This rank's images of a global batch (ascending, for sequential reads), the rows of the
    global batch they hold (to pick their noise), and the global batch size."""
    rows = np.arange(d.rank, len(batch), d.world)
    order = np.argsort(batch[rows], kind="stable")
    return batch[rows][order], torch.from_numpy(rows[order]), len(batch)


def _noise_seed(seed: int, epoch: int, step: int) -> int:
    """Seed of the noise of one global batch: the same on every rank, and after a resume."""
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(1, np.uint64)[0])


class Trainer:
    """One model and its optimiser: AMP, channels-last, DDP and torch.compile where they apply,
    and one epoch of training at a time. The run's model and the cross-fitting fold models
    (vaekit.crossfit) are trained by the very same steps."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device, dist: Dist,
                 seed: int | None = None):
        torch.manual_seed(train_cfg.seed if seed is None else seed)
        self.cfg, self.model_cfg, self.device, self.dist = train_cfg, model_cfg, device, dist
        self.model = ConvVAE(model_cfg).to(device)
        cuda = device.type == "cuda"
        self.channels_last = cuda and train_cfg.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = None
        if cuda and train_cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16) if cuda else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        # DDP averages gradients only through the wrapped module's forward, so the noise goes in there
        self.net: torch.nn.Module = _NoisyForward(self.model)
        if dist.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=[device.index] if cuda else None)
        if train_cfg.compile:
            self.net = torch.compile(self.net)
        self.noise = torch.Generator(device=device)
        self.crop = training_crop(train_cfg, model_cfg)
        # values of z per training image: a crop's latent grid is smaller than the whole image's
        self.z_dims = model_cfg.z_dims if self.crop is None else model_cfg.latent_dim * (-(-self.crop // 4)) ** 2

    def steps(self, n_train: int) -> int:
        return math.ceil(n_train / self.cfg.batch_size)

    def epoch(self, images: np.ndarray, train_idx: np.ndarray, epoch: int, progress: Progress | None = None,
              should_stop: Callable[[], bool] | None = None) -> list[float] | None:
        """One pass over `train_idx`: [recon, kl, total, images] summed over all ranks, or None
        when `should_stop()` said so (the epoch is then not finished).

        Not DistributedSampler: it deals each rank its own slice of the epoch (padded to equal
        length), so the global batches, and with them the losses, differ from a single-process
        run. Here every rank shuffles the same way and takes an interleaved share of each global
        batch, and each image's noise is drawn by its place in the global batch, so one process
        or many train the same model (up to float rounding) and resume on any number of ranks."""
        cfg, dist, device = self.cfg, self.dist, self.device
        t0, steps = time.perf_counter(), self.steps(len(train_idx))
        beta = kl_weight(epoch, cfg)
        self.model.train()
        # a fresh generator per epoch: the shuffle needs no saved state to resume exactly
        perm = train_idx[np.random.default_rng([cfg.seed, epoch]).permutation(len(train_idx))]
        shares = [_share(perm[s * cfg.batch_size : (s + 1) * cfg.batch_size], dist) for s in range(steps)]
        reader = read_ahead(images, (mine for mine, _, _ in shares), device)
        sums = torch.zeros(3, device=device, dtype=torch.float64)  # recon, kl, total
        count, report_every = 0, max(1, steps // 50)
        try:
            for step, ((mine, rows, n_global), x) in enumerate(zip(shares, reader)):
                if should_stop is not None and _agreed(should_stop(), dist, device):
                    return None
                lr = learning_rate(cfg, epoch * steps + step, cfg.epochs * steps)
                eps = self._noise(epoch, step, n_global, rows)
                x = crop_batch(x, self.crop, [cfg.seed, epoch, step])
                loss = self._step(to_device(x, device, self.channels_last), eps, lr, beta, n_global)
                with torch.no_grad():
                    sums += torch.stack([loss.recon.sum(), loss.kl.sum(), loss.total.sum()]).double()
                count += len(mine)  # a Python int: a device tensor here would sync every step
                if progress and ((step + 1) % report_every == 0 or step + 1 == steps):
                    s = sums.tolist()
                    progress(step + 1, steps, phase="train", epoch=epoch + 1, epochs=cfg.epochs, loss=s[2] / count,
                             recon=s[0] / count, kl=s[1] / count,
                             images_per_s=count * dist.world / (time.perf_counter() - t0))
        finally:
            reader.close()  # here, not later in the garbage collector, where a Ctrl-C would be swallowed
        sums = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64, device=device)])
        return all_reduce_sum(sums, dist).tolist()

    def _noise(self, epoch: int, step: int, n_global: int, rows: torch.Tensor) -> torch.Tensor:
        """eps of this rank's images, drawn for the whole global batch by a seed of the step."""
        self.noise.manual_seed(_noise_seed(self.cfg.seed, epoch, step))
        rows = rows.to(self.device, non_blocking=True)  # blocking would wait for the GPU every step
        return torch.randn(n_global, self.z_dims, device=self.device, generator=self.noise)[rows]  # (B, D)

    def _step(self, x: torch.Tensor, eps: torch.Tensor, lr: float, beta: float, n_global: int):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            params, mu, logvar = self.net(x, eps)
        loss = negative_elbo(x, params, mu, logvar, self.model_cfg.likelihood, self.model.scale(), beta)
        # sum over my images / global batch * world: DDP's gradient mean then equals the
        # gradient of the mean over the global batch
        objective = loss.total.sum() * (self.dist.world / n_global)
        self.optimizer.zero_grad(set_to_none=True)
        scaled = self.scaler is not None and self.scaler.is_enabled()
        (self.scaler.scale(objective) if scaled else objective).backward()
        if self.cfg.grad_clip > 0:
            if scaled:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if scaled:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss


def resolved_train_config(train_cfg: TrainConfig, model_cfg: ModelConfig, n_train: int) -> TrainConfig:
    """The automatic batch size and number of epochs decided (vaekit.recipe), for the size the
    model trains on (its crops, for a surface)."""
    size = training_crop(train_cfg, model_cfg) or model_cfg.image_size
    train_cfg = replace(train_cfg, batch_size=resolve_batch_size(train_cfg, size))
    return replace(train_cfg, epochs=resolve_epochs(train_cfg, n_train, size))


def fit(
    data: Dataset,
    out_dir: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    resume: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train, checkpoint every epoch, keep the best-on-validation weights, set the threshold.

    With few images (vaekit.data.Splits) one extra model per fold is trained after the run's
    own, for out-of-sample scores of every image (vaekit.crossfit). `should_stop()` is asked
    after every optimizer step (the demo's Stop button, the CLI's Ctrl-C): when it says True
    the loop ends there and returns with `stopped` set, the run directory holding the last
    finished epoch's checkpoint, ready for `--resume`."""
    out_dir = Path(out_dir)
    device = pick_device(train_cfg.device)
    dist = init_distributed(device)
    splits = plan_splits(len(data.paths), train_cfg.val_fraction, train_cfg.calibration_fraction, train_cfg.seed,
                         train_cfg.folds, train_cfg.threshold_quantile)
    train_cfg = resolved_train_config(train_cfg, model_cfg, len(splits.train))
    trainer = Trainer(model_cfg, train_cfg, device, dist)
    start_epoch, best, history = _begin(trainer, out_dir, data, splits, resume)
    t_start, stopped, pending = time.perf_counter(), False, None
    for epoch in range(start_epoch, train_cfg.epochs):
        t0 = time.perf_counter()
        sums = trainer.epoch(data.images, splits.train, epoch, progress if dist.main else None, should_stop)
        if sums is None:
            stopped = True
            if pending is not None and dist.main:  # asked to stop: keep the last finished epoch
                _write_state(out_dir, *pending)
            break
        if not math.isfinite(sums[2]):
            kept = (f"the last good checkpoint (epoch {epoch}) is kept in {out_dir}; resume with --resume"
                    if epoch > 0 else "nothing was saved yet; start again with --overwrite")
            raise TrainingError(f"loss became {sums[2]} in epoch {epoch + 1}; try a lower --lr. {kept}")
        row = _epoch_row(epoch, kl_weight(epoch, train_cfg), sums, time.perf_counter() - t0, trainer.model, data,
                         splits.val, splits.train, device, dist, train_cfg, splits.crossfit)
        history.append(row)
        saving = checkpoint_due(epoch, train_cfg, trainer.steps(len(splits.train))) or (resume and epoch == start_epoch)
        # cross-fitting: the fold models take their last epoch, so the run's model does too (its
        # "validation" would be its own training images, which pick nothing of use)
        improved = saving if splits.crossfit else row["val_loss"] < best["val"]
        if improved:
            best = {"epoch": epoch, "val": row["val_loss"]}
        if dist.main:
            _save_epoch(trainer, out_dir, epoch, best, history, improved, resume and epoch == start_epoch, saving)
            pending = None if saving else (epoch, *_pack_state(trainer.model, trainer.optimizer, trainer.scaler, epoch,
                                                               best, len(history), copy=True), list(history))
        if progress and dist.main:
            progress(epoch + 1, train_cfg.epochs, phase="epoch", **row)

    result = TrainResult(out_dir, str(device), len(history), best["epoch"] + 1, best["val"], history,
                         seconds=time.perf_counter() - t_start, rank=dist.rank, stopped=stopped)
    if dist.main and not stopped:
        from functools import partial

        from vaekit.crossfit import crossfit_scores

        crossfit = partial(crossfit_scores, data, splits, model_cfg, train_cfg, device, progress=progress,
                           should_stop=should_stop) if splits.crossfit else None
        result.threshold = finish(out_dir, data, splits, train_cfg, device, crossfit, progress, should_stop)
        result.stopped = result.threshold is None  # asked to stop while cross-fitting: --resume does it again
    barrier(dist)  # the run directory is complete when any rank returns
    return result


def _begin(trainer: Trainer, out_dir: Path, data: Dataset, splits, resume: bool) -> tuple[int, dict, list]:
    """(first epoch, best so far, history): a new run writes its config; a resumed one reloads
    the exact state of its last finished epoch."""
    cfg = trainer.cfg
    if not resume:
        if trainer.dist.main:
            write_run_config(out_dir, data, trainer.model_cfg, cfg, trainer.device, len(splits.train),
                             len(splits.val), len(splits.cal), len(splits.folds))
        return 0, {"epoch": -1, "val": math.inf}, []
    tensors, meta = checkpoint.load_checkpoint(out_dir)
    try:
        _unpack_state(tensors, meta, trainer.model, trainer.optimizer, trainer.scaler)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise rundir.RunError(f"the checkpoint in {out_dir / rundir.CHECKPOINT_DIR} does not fit this run: {first}") from None
    for group in trainer.optimizer.param_groups:  # a --lr given with --resume applies from here on
        group["lr"] = cfg.lr
    start_epoch = meta["epoch"] + 1
    if cfg.epochs < start_epoch:
        raise BadInput(f"{out_dir} has already trained {start_epoch} epochs; --epochs {cfg.epochs} would go back")
    return start_epoch, meta["best"], rundir.read_metrics(out_dir)[: meta["history_len"]]


CHECKPOINT_STEPS = 50  # TrainConfig.checkpoint_every=0: a checkpoint at least this many steps apart


def checkpoint_due(epoch: int, cfg: TrainConfig, steps_per_epoch: int) -> bool:
    """Whether epoch `epoch` (0-based) ends with a checkpoint: the first and the last always, and
    every `checkpoint_every` epochs (auto: every ~CHECKPOINT_STEPS steps). A checkpoint of a
    small model costs more than an epoch of a small folder (~0.15 s, mostly fsync); a resume
    then redoes at most those epochs, exactly (the recipe is a function of the step)."""
    every = cfg.checkpoint_every or max(1, -(-CHECKPOINT_STEPS // max(1, steps_per_epoch)))
    return epoch == 0 or epoch == cfg.epochs - 1 or (epoch + 1) % every == 0


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
        tensors, meta = _pack_state(trainer.model, trainer.optimizer, trainer.scaler, epoch, best, len(history))
        _write_state(out_dir, epoch, tensors, meta, history)


def _write_state(out_dir: Path, epoch: int, tensors: dict, meta: dict, history: list) -> None:
    rundir.write_metrics(out_dir, history)
    checkpoint.save_checkpoint(out_dir, epoch, tensors, meta)


def _epoch_row(epoch, beta, sums, seconds, model, data, val_idx, train_idx, device, dist, train_cfg,
               crossfit: bool = False) -> dict:
    n = sums[3]
    crop = training_crop(train_cfg, model.cfg)
    pixels = data.images.shape[1] * (crop or data.images.shape[2]) * (crop or data.images.shape[3])
    if crossfit:  # no validation split, and the last epoch is kept: the epoch's own loss stands in
        vs = [sums[0], sums[1], sums[0] + sums[1], n]
    else:  # validation by the deterministic -ELBO (z = mu); each rank scores its share
        eval_idx = val_idx if len(val_idx) else train_idx
        mine = eval_idx[dist.rank :: dist.world]
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
    }
