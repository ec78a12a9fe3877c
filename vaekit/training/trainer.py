"""One model and its optimiser, trained an epoch at a time: AMP, channels-last, DDP, torch.compile.

The run's model (vaekit.training.loop) and the cross-fitting fold models (vaekit.training.crossfit)
are trained by the very same steps. Also here: the crop a surface model trains on (its windows:
vaekit.training.crops), and the deterministic -ELBO (z = mu) by which each epoch is validated.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from vaekit.config import ModelConfig, TrainConfig
from vaekit.inference.engine import FORWARD_SIDE
from vaekit.model.objective import negative_elbo
from vaekit.model.vae import ConvVAE
from vaekit.progress import Progress
from vaekit.training.augment import warp_batch
from vaekit.training.crops import gather_crops
from vaekit.training.data import read_ahead, to_device, to_input
from vaekit.training.distributed import Dist, all_reduce_sum
from vaekit.training.recipe import context_gain, kl_weight, learning_rate

CROP = 64  # TrainConfig.crop=0: a grid model larger than this trains on crops of this many pixels


def training_crop(train_cfg: TrainConfig, model_cfg: ModelConfig) -> int | None:
    """The crop a model trains on (None: whole images). Only a grid model crops: it is fully
    convolutional, so what it learns of a 64 px window holds for the whole surface it reads.
    A crop is at most the model's size, whatever the size its images are read at."""
    if model_cfg.layout != "grid":
        return None
    c = min(train_cfg.crop or CROP, model_cfg.image_size)
    return c if c < model_cfg.reads_at else None


def loss_unit(crop: int | None) -> str:
    """What a training loss is per, given `training_crop`: an image, or the crop a surface model
    trains on (a 512 px surface's loss was per 64 px crop, printed as per image)."""
    return f"nats per {crop} px crop" if crop else "nats/image"


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
    side = crop or max(images.shape[-2:])
    batch_size = max(1, min(batch_size, batch_size * FORWARD_SIDE**2 // side**2))  # bounded by pixels, as scoring
    for s in range(0, len(idx), batch_size):
        chunk = idx[s : s + batch_size]
        if crop is None:
            x = to_input(images, chunk, device)
        else:
            x = torch.cat([gather_crops(images, chunk[j : j + 1], crop, [7, int(i)]) for j, i in enumerate(chunk)])
            x = to_device(x, device)
        mu, logvar = model.encode(x)
        params = model.decode(mu, model.size_of(x))
        loss = negative_elbo(x, params, mu, logvar, model.cfg.likelihood, model.scale())
        out[s : s + len(x)] = torch.stack([loss.recon, loss.kl, loss.total], 1).double().cpu().numpy()
    return out


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
    (vaekit.training.crossfit) are trained by the very same steps."""

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device, dist: Dist,
                 seed: int | None = None):
        torch.manual_seed(train_cfg.seed if seed is None else seed)
        self.cfg, self.model_cfg, self.device, self.dist = train_cfg, model_cfg, device, dist
        self.model = ConvVAE(model_cfg).to(device)
        cuda = device.type == "cuda"
        # NHWC on CPU too: oneDNN's convolutions skip their layout reorders, 1.1-1.4x a step
        # (docs/benchmarks.md, "Channels-last on the CPU")
        self.channels_last = train_cfg.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp_dtype = None
        if cuda and train_cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16) if cuda else None
        # fused on CUDA: one kernel per step for all parameters rather than several per tensor
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                                           fused=True if cuda else None)
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
              should_stop: Callable[[], bool] | None = None, wide=None) -> list[float] | None:
        """One pass over `train_idx`: [recon, kl, total, images] summed over all ranks, or None
        when `should_stop()` said so (the epoch is then not finished). With `wide`
        (vaekit.training.wide.WideImages), each image of a batch is one of its whole image's
        squares, drawn anew at every step, instead of its centre square in `images`.

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
        batches_global = [perm[s * cfg.batch_size : (s + 1) * cfg.batch_size] for s in range(steps)]
        shares = [_share(batch, dist) for batch in batches_global]
        batches = (mine for mine, _, _ in shares)
        if wide is not None:
            images = wide.tiles
            batches = (wide.pick(mine, rows.numpy(), n, [cfg.seed, epoch, step, 3])
                       for step, (mine, rows, n) in enumerate(shares))
        # each window placed by its image's place in the sorted global batch: the same on any number of ranks
        seeds = (([cfg.seed, epoch, step], np.searchsorted(np.sort(batch), mine), len(batch)) if dist.world > 1
                 else [cfg.seed, epoch, step] for step, (batch, (mine, _, _)) in enumerate(zip(batches_global, shares)))
        reader = read_ahead(images, batches, device, crop=self.crop, seeds=seeds)
        sums = torch.zeros(3, device=device, dtype=torch.float64)  # recon, kl, total
        count, report_every = 0, max(1, steps // 50)
        try:
            for step, ((mine, rows, n_global), x) in enumerate(zip(shares, reader)):
                if should_stop is not None and _agreed(should_stop(), dist, device):
                    return None
                lr = learning_rate(cfg, epoch * steps + step, cfg.epochs * steps)
                self.model.context_gain.fill_(context_gain(epoch * steps + step, cfg.epochs * steps))
                eps = self._noise(epoch, step, n_global, rows)
                x = to_device(x, device, self.channels_last)
                if cfg.augment == "on":  # resolved by vaekit.training.loop.resolved_train_config
                    x = warp_batch(x, [cfg.seed, epoch, step, 1], rows.numpy(), n_global)
                loss = self._step(x, eps, lr, beta, n_global)
                with torch.no_grad():
                    sums += torch.stack([loss.recon.sum(), loss.kl.sum(), loss.total.sum()]).double()
                count += len(mine)  # a Python int: a device tensor here would sync every step
                if progress and ((step + 1) % report_every == 0 or step + 1 == steps):
                    s = sums.tolist()
                    progress(step + 1, steps, phase="train", epoch=epoch + 1, epochs=cfg.epochs, loss=s[2] / count,
                             recon=s[0] / count, kl=s[1] / count,
                             images_per_s=count * dist.world / (time.perf_counter() - t0))
        finally:
            self.model.context_gain.fill_(1.0)  # validation, scores and exports read the model as it is
            reader.close()  # here, not later in the garbage collector, where a Ctrl-C would be swallowed
        sums = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64, device=device)])
        return all_reduce_sum(sums, dist).tolist()

    def _clip(self) -> None:
        """Scale the gradient down to grad_clip, or else to spike_clip times the RMS gradient norm
        AdamW has seen (the square root of its bias-corrected second moments, summed): a spike
        hundreds of times the usual norm (a logistic model with a pixel context can meet one
        late in a long run) then moves the weights no further than a usual step. The limit
        lives in the optimizer's state, so a resumed run clips the same; with no sync to the host."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        # the foreach kernels: one launch for all tensors (a GPU step is otherwise launch-bound)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        if self.cfg.grad_clip > 0:
            limit = torch.tensor(self.cfg.grad_clip, device=norm.device)
        else:
            beta2 = self.optimizer.param_groups[0]["betas"][1]
            states = list(self.optimizer.state.values())
            # every tensor has taken the same steps; a sum of squares is their L1 norm
            sq = torch.stack(torch._foreach_norm([s["exp_avg_sq"] for s in states], 1)).sum()
            limit = self.cfg.spike_clip * (sq / (1 - beta2 ** states[0]["step"])).sqrt()
        coef = torch.clamp(limit / (norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef.to(grads[0].dtype))

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
        if self.cfg.grad_clip > 0 or (self.cfg.spike_clip > 0 and self.optimizer.state):
            if scaled:
                self.scaler.unscale_(self.optimizer)
            self._clip()
        if scaled:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss
