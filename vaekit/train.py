"""Fit a ConvVAE on a folder of images: device choice, AMP, DDP, checkpoints, exact resume.

`train()` is the whole job behind `vaekit train`: find and decode the images (once, into the
pixel cache), split off validation images, then `fit()`. Progress is reported through an
optional callback `progress(done, total, phase=..., **metrics)`; this module never prints.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vaekit import __version__
from vaekit.config import ModelConfig, TrainConfig, from_dict
from vaekit.model import ConvVAE
from vaekit.objective import negative_elbo
from vaekit import run as rundir

Progress = Callable[..., None]
QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


@dataclass
class Dataset:
    images: np.ndarray  # (N, C, H, W) uint8, usually a read-only memmap of the pixel cache
    paths: list[Path]  # the N loaded files, in order
    skipped: list[tuple[Path, str]]  # unreadable files and why
    root: Path  # folder the paths are reported relative to
    fingerprint: str  # names the exact decoded pixels (file list, sizes, mtimes, size, channels)
    cache_hit: bool = False


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


# --- data ------------------------------------------------------------------------------------

def load_dataset(
    inputs: str | Path,
    image_size: int,
    channels: str | int = "auto",
    cache_dir: Path | None = None,
    workers: int = 0,
    progress: Progress | None = None,
) -> Dataset:
    """Find, decode (once; cached) and resize every image under `inputs`."""
    from vaekit import cache, images

    root = Path(inputs)
    paths = images.find_images(root)
    if not paths:
        raise images.NoImagesError(f"no image files found in {root}")
    n_channels = images.resolve_channels(paths, channels)

    def decode_progress(done, total, **kw):
        if progress:
            progress(done, total, phase="decode", **kw)

    cached = cache.load_cached(paths, image_size, n_channels, cache_dir=cache_dir, progress=decode_progress, workers=workers)
    if len(cached.paths) == 0:
        reasons = "; ".join(f"{p.name}: {r}" for p, r in cached.skipped[:3])
        raise images.NoImagesError(f"no usable image in {root} ({len(cached.skipped)} unreadable: {reasons})")
    base = root if root.is_dir() else root.parent
    return Dataset(cached.images, cached.paths, cached.skipped, base, cached.key, cached.hit)


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of n indices; validation gets round(n * fraction), at least 1."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# --- device and distributed set-up -----------------------------------------------------------

def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available (use --device cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def _all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


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


def _to_input(images: np.ndarray, idx: np.ndarray, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images[idx]))  # (B, C, H, W) uint8
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.to(device).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


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

    train_idx, val_idx = split(len(data.paths), train_cfg.val_fraction, train_cfg.seed)
    start_epoch, history = 0, []
    best = {"epoch": -1, "val": math.inf}
    if resume:
        tensors, meta = rundir.load_checkpoint(out_dir)
        _unpack_state(tensors, meta, model, optimizer, scaler)
        start_epoch, best = meta["epoch"] + 1, meta["best"]
        history = rundir.read_metrics(out_dir)[: meta["history_len"]]
    elif dist.main:
        _write_run_config(out_dir, data, model_cfg, train_cfg, device, len(train_idx), len(val_idx))

    net = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if train_cfg.compile:
        net = torch.compile(net)

    # Each rank takes an interleaved share of every global batch, so the global batch and
    # hence the loss and gradients match a single-process run.
    per_rank = max(1, train_cfg.batch_size // dist.world)
    steps = math.ceil(len(train_idx) / train_cfg.batch_size)
    t_start = time.perf_counter()
    for epoch in range(start_epoch, train_cfg.epochs):
        beta = kl_weight(epoch, train_cfg)
        model.train()
        # a fresh generator per epoch: the shuffle needs no saved state to resume exactly
        perm = train_idx[np.random.default_rng([train_cfg.seed, epoch]).permutation(len(train_idx))]
        sums = torch.zeros(4, device=device, dtype=torch.float64)  # recon, kl, total, count
        t0 = time.perf_counter()
        report_every = max(1, steps // 50)
        for step in range(steps):
            batch = perm[step * train_cfg.batch_size : (step + 1) * train_cfg.batch_size]
            mine = np.sort(batch[dist.rank :: dist.world])
            x = _to_input(data.images, mine, device, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                params, mu, logvar = net(x)
            loss = negative_elbo(x, params, mu, logvar, model_cfg.likelihood, model.scale(), beta)
            # sum over my images / global batch * world: DDP's gradient mean then equals the
            # gradient of the mean over the global batch
            objective = loss.total.sum() * (dist.world / len(batch))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(objective).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                objective.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
                optimizer.step()
            with torch.no_grad():
                sums += torch.stack([loss.recon.sum(), loss.kl.sum(), loss.total.sum(), torch.tensor(float(len(x)), device=device)]).double()
            if progress and dist.main and ((step + 1) % report_every == 0 or step + 1 == steps):
                s = sums.tolist()
                progress(step + 1, steps, phase="train", epoch=epoch + 1, epochs=train_cfg.epochs,
                         loss=s[2] / s[3], recon=s[0] / s[3], kl=s[1] / s[3],
                         images_per_s=s[3] * dist.world / (time.perf_counter() - t0))
        sums = _all_reduce_sum(sums, dist).tolist()
        if not math.isfinite(sums[2]):
            raise TrainingError(
                f"loss became {sums[2]} in epoch {epoch + 1}; try a lower --lr. "
                f"The last good checkpoint (epoch {epoch}) is kept in {out_dir}"
            )
        seconds = time.perf_counter() - t0
        row = _epoch_row(epoch, beta, sums, seconds, model, data, val_idx, train_idx, device, dist)
        history.append(row)
        improved = row["val_loss"] < best["val"]
        if improved:
            best = {"epoch": epoch, "val": row["val_loss"]}
        if dist.main:
            if improved:
                rundir.save_tensors(out_dir / rundir.WEIGHTS, model.state_dict(), {"epoch": epoch})
            rundir.write_metrics(out_dir, history)
            tensors, meta = _pack_state(model, optimizer, scaler, epoch, best, len(history))
            rundir.save_checkpoint(out_dir, epoch, tensors, meta)
        if progress and dist.main:
            progress(epoch + 1, train_cfg.epochs, phase="epoch", **row)

    result = TrainResult(out_dir, str(device), len(history), best["epoch"] + 1, best["val"], history,
                         seconds=time.perf_counter() - t_start)
    if dist.main:
        result.threshold = _finish(out_dir, data, train_idx, val_idx, train_cfg, device)
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
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
        "val_loss": val_loss,
        "val_recon": vs[0] / max(vs[3], 1),
        "val_kl": vs[1] / max(vs[3], 1),
        "val_bits_per_dim": val_loss / (pixels * math.log(2)),
        "images_per_s": n / seconds,
        "seconds": seconds,
    }


def _write_run_config(out_dir, data, model_cfg, train_cfg, device, n_train, n_val) -> None:
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
            "skipped": [[_rel(p, data.root), r] for p, r in data.skipped],
            "channels": model_cfg.channels,
            "image_size": model_cfg.image_size,
            "fingerprint": data.fingerprint,
            "preprocessing": "shorter side resized to image_size (bicubic), centre crop; pixels / 255",
        },
        "device": str(device),
    })


def _finish(out_dir, data, train_idx, val_idx, train_cfg, device) -> float:
    """Score the validation images with the best weights; store quantiles and the threshold."""
    from vaekit import images as imageio

    model, cfg = rundir.load_model(out_dir, device)
    eval_idx, source = (val_idx, "validation") if len(val_idx) else (train_idx, "training")
    scores = deterministic_scores(model, data.images, eval_idx, device)[:, 2]
    threshold = float(np.quantile(scores, train_cfg.threshold_quantile))
    cfg["anomaly"] = {
        "score": "neg_elbo",
        "threshold": threshold,
        "threshold_quantile": train_cfg.threshold_quantile,
        "source": source,
        "quantiles": {str(q): float(np.quantile(scores, q)) for q in QUANTILES},
        "scores": [float(s) for s in scores],
    }
    cfg["fingerprint"] = rundir.fingerprint(model.state_dict())
    rundir.write_config(out_dir, cfg)
    _write_preview(out_dir / rundir.PREVIEW, model, data, eval_idx, device, imageio)
    return threshold


@torch.no_grad()
def _write_preview(path, model, data, idx, device, imageio) -> None:
    """Top: inputs; middle: reconstructions (z = mu); bottom: samples from the prior."""
    idx = idx[:8]
    x = _to_input(data.images, idx, device)
    mu, _ = model.encode(x)
    recon = model.mean_image(model.decode(mu))
    g = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(8, model.cfg.latent_dim, generator=g).to(device)
    samples = model.mean_image(model.decode(z))
    rows = torch.cat([x, recon, samples]).float().cpu().numpy()
    imageio.save_png(imageio.make_grid(rows, ncol=max(len(idx), 8) if len(idx) == 8 else 8), path)


def _rel(p: Path, root: Path) -> str:
    try:
        return Path(p).relative_to(root).as_posix()
    except ValueError:
        return str(p)


# --- the whole job -------------------------------------------------------------------------

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
) -> tuple[TrainResult, Dataset]:
    """`vaekit train`: load the folder, then fit.

    On resume the stored configs win, except the total number of epochs (`resume_epochs`,
    to extend a run), and the decoded images must be unchanged, so the result is exact."""
    out_dir = Path(out_dir)
    exists = (out_dir / rundir.CONFIG).exists()
    if resume:
        stored = rundir.read_config(out_dir)
        model_cfg = from_dict(ModelConfig, stored["model"])
        old = from_dict(TrainConfig, stored["train"])
        train_cfg = replace(old, epochs=resume_epochs or old.epochs)
        channels = model_cfg.channels
    elif exists and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
    elif exists and overwrite:
        for name in (rundir.CONFIG, rundir.WEIGHTS, rundir.METRICS, rundir.PREVIEW):
            (out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(out_dir / rundir.CHECKPOINT_DIR, ignore_errors=True)

    data = load_dataset(data_dir, model_cfg.image_size, channels, cache_dir, workers, progress)
    if resume and data.fingerprint != stored["data"]["fingerprint"]:
        raise rundir.RunError(
            f"the images in {data_dir} changed since {out_dir} was started; resume needs the same data"
        )
    model_cfg = replace(model_cfg, channels=int(data.images.shape[1]))
    return fit(data, out_dir, model_cfg, train_cfg, resume=resume, progress=progress), data
