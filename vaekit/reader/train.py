"""Training the defect reader on vaekit's own synthetic defects, and reading images with it.

Each step draws crops of the normal training images, puts a synthetic defect (vaekit.reader.synth)
on most of them and trains the U-Net to segment it. The reader can also read the fixed VAE's
per-pixel outputs on the same crops (the `features` callable: where the VAE failed to
reconstruct); on the development textures that did not help (the grid VAE reconstructs most
defects too), so the default reads the image alone (features=None).
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vaekit.reader.features import Features
from vaekit.reader.net import ReaderConfig, ReaderEnsemble, ReaderNet
from vaekit.reader.score import image_scores, maps_and_scores, read_tiled
from vaekit.reader.synth import make_defects



def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), as DRAEM trains its segmentation head: BCE down-weighted by
    (1 - p_t)^gamma, so the many easy normal pixels do not drown the few defect pixels."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return ((1 - p_t) ** gamma * bce).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice over the batch: Dice counts a defect's pixels relative to its size."""
    p = torch.sigmoid(logits)
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice


def _crops(images: np.ndarray, idx: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random size x size window of each chosen image (the image itself when it is that size)."""
    _, _, h, w = images.shape
    ys, xs = rng.integers(0, h - size + 1, len(idx)), rng.integers(0, w - size + 1, len(idx))
    return np.stack([images[i, :, y:y + size, x:x + size] for i, y, x in zip(idx, ys, xs)])


def _inputs(x_u8: np.ndarray, features: Features | None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> the reader's input: the image and its features, (B, C + F, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(x_u8)).float().div_(255.0)
    if features is None:
        return x
    with torch.no_grad():
        f = features(x)
    return torch.cat([x, f.to(x)], 1)


def _check(crops: np.ndarray, cfg: ReaderConfig) -> None:
    if not isinstance(crops, np.ndarray) or crops.dtype != np.uint8 or crops.ndim != 4 or len(crops) < 1:
        raise ValueError(f"crops must be uint8 (N, C, H, W) with N >= 1, got {getattr(crops, 'dtype', type(crops))} "
                         f"{getattr(crops, 'shape', '')}")
    if min(crops.shape[2:]) < 2**cfg.depth:
        raise ValueError(f"crops of {crops.shape[2:]} px are smaller than 2**depth = {2**cfg.depth}")


def _normalise(net: ReaderNet, crops: np.ndarray, features: Features, size: int, rng) -> None:
    """Set the input standardisation from normal crops (up to 128), per channel."""
    idx = rng.permutation(len(crops))[:128]
    inp = torch.cat([_inputs(_crops(crops, idx[i:i + 32], size, rng), features) for i in range(0, len(idx), 32)])
    net.in_mean.copy_(inp.mean((0, 2, 3)))
    net.in_std.copy_(inp.std((0, 2, 3)).clamp(min=1e-3))


def _batch(crops, features, cfg: ReaderConfig, size: int, n_bad: int, rng) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: random crops, the first n_bad with a synthetic defect; (inputs, masks)."""
    x = _crops(crops, rng.integers(0, len(crops), cfg.batch), size, rng)
    bad, masks = make_defects(x[:n_bad], rng, shapes=cfg.shapes)
    x = np.concatenate([bad, x[n_bad:]])
    target = torch.from_numpy(np.concatenate([masks, np.zeros((len(x) - n_bad, size, size), np.float32)]))
    return _inputs(x, features), target


def train_reader(crops: np.ndarray, features: Features | None, cfg: ReaderConfig = ReaderConfig(), seed: int = 0,
                 progress: Callable[..., None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict[str, torch.Tensor]:
    """Train a reader, cfg.members nets from seeds derived from `seed`, on normal uint8 crops
    (N, C, h, w) with synthetic defects; return its state_dict (rebuild with `load_reader`).
    `features(x)` maps (B, C, h', w') in [0, 1] to the VAE's per-pixel outputs (B, F, h', w')
    (see vaekit.reader.features); None: the reader reads the image alone (the measured default,
    see ReaderConfig). `progress(done, total, loss=...)` is called every 25 steps of a member,
    `done` counted over all members; `should_stop()`, asked every step, ends training early with
    the weights as they are (members not begun are trained for no steps).

    Reading the image alone, the members train side by side, one torch thread each, as many at a
    time as torch has threads (vaekit.reader.members): a member's small convolutions gain nothing
    from a second thread, so on two cores three members took three members' time. A member's
    weights are the same either way, and whatever the thread count: each is a one-thread run."""
    from vaekit.reader.members import one_thread, train_members

    _check(crops, cfg)
    total = cfg.steps * cfg.members
    done, lock = [0] * cfg.members, threading.Lock()

    def report_of(k: int):
        def report(d, _, **m):
            with lock:
                done[k] = d
                progress(sum(done), total, **m)
        return None if progress is None else report

    with one_thread() as threads:  # every member a one-thread run, its statistics too
        starts = [_start_one(crops, features, cfg, seed + 1000 * k)  # in turn: torch's seed is the process's
                  for k in range(cfg.members)]
        nets = train_members([lambda stop, k=k: _train_one(*starts[k], cfg, report_of(k), stop)
                              for k in range(cfg.members)], should_stop, threads if features is None else 1)
    return {k: v.detach().clone() for k, v in ReaderEnsemble(nets).state_dict().items()}


def _start_one(crops, features, cfg: ReaderConfig, seed: int):
    """(crops, features, the member's new net, its crop size, its numpy Generator), its weights
    and input statistics drawn from `seed`."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    size = min(cfg.crop, *crops.shape[2:])
    probe = _inputs(crops[:1, :, :size, :size], features)
    net = ReaderNet(probe.shape[1], cfg)
    _normalise(net, crops, features, size, rng)
    return crops, features, net, size, rng


def _train_one(crops, features, net: ReaderNet, size: int, rng, cfg: ReaderConfig, progress,
               should_stop) -> ReaderNet:
    """One member of the ensemble, trained from its start (_start_one); in eval mode."""
    net = net.to(memory_format=torch.channels_last)  # NHWC trains ~1.2x faster on one grey channel
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loss_fn = focal_loss if cfg.loss == "focal" else bce_dice_loss
    n_bad = max(1, round(cfg.batch * (1 - cfg.clean_fraction)))
    warm = max(1, cfg.steps // 20)
    net.train()
    running = None
    for step in range(cfg.steps):
        if should_stop is not None and should_stop():
            break
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        inputs, target = _batch(crops, features, cfg, size, n_bad, rng)
        loss = loss_fn(net(inputs.contiguous(memory_format=torch.channels_last)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if progress is not None and ((step + 1) % 25 == 0 or step + 1 == cfg.steps):
            progress(step + 1, cfg.steps, loss=running)
    return net.to(memory_format=torch.contiguous_format).eval()


def load_reader(state: dict[str, torch.Tensor], cfg: ReaderConfig = ReaderConfig()) -> ReaderEnsemble:
    """A reader in eval mode from train_reader's state_dict (in_channels and the number of
    members read from it; a state of one bare ReaderNet, as vaekit 0.3's first readers were
    saved, loads as an ensemble of one)."""
    if "in_mean" in state:  # one net, saved before ensembles
        state = {f"members.0.{k}": v for k, v in state.items()}
    n = len({k.split(".")[1] for k in state if k.startswith("members.")})
    if n == 0:
        raise KeyError("no reader weights (members.*) in the state")
    cfg = replace(cfg, members=n)
    nets = [ReaderNet(int(state[f"members.{k}.in_mean"].shape[0]), cfg) for k in range(n)]
    net = ReaderEnsemble(nets)
    net.load_state_dict(state)
    return net.eval()


def read(net: ReaderNet | ReaderEnsemble, x, features: Features | None = None, smooth: int | None = None,
         map_smooth: int | None = None, batch: int = 16, tile: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image scores (N,), defect maps (N, H, W)) for images x (N, C, H, W): torch or numpy,
    float in [0, 1] or uint8. The map is the defect probability averaged over map_smooth px
    (defects are regions: a lone confident pixel says little); the image score is the largest
    mean over `smooth` px (DRAEM's mean-filtered max; a smaller window, so a 1-px scratch still
    counts). Both default to the net's config; the maths is vaekit.reader.score (numpy, shared
    with an exported network). `features` as given to train_reader. `tile`:
    read images larger than tile x tile px in overlapping tiles (memory bounded by the tile;
    the net sees ~100 px of context, so a quarter-tile overlap leaves no seams)."""
    smooth = net.cfg.smooth if smooth is None else smooth
    map_smooth = net.cfg.map_smooth if map_smooth is None else map_smooth
    scores, maps = [], []
    for logits in _logits(net, x, features, batch, tile):
        s, m = maps_and_scores(logits, smooth, map_smooth)
        scores.append(s)
        maps.append(m)
    return np.concatenate(scores), np.concatenate(maps)


def score_images(net: ReaderNet | ReaderEnsemble, x, features: Features | None = None, smooth: int | None = None,
                 batch: int = 16, tile: int | None = None) -> np.ndarray:
    """read(...)'s image scores alone (N,), the same numbers without the maps' cost (calibration
    needs no map: at 2048 px they were a float64 map of every held-out pixel)."""
    smooth = net.cfg.smooth if smooth is None else smooth
    out = [image_scores(logits, smooth) for logits in _logits(net, x, features, batch, tile)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def for_reading(net: ReaderNet | ReaderEnsemble) -> ReaderNet | ReaderEnsemble:
    """The reader as it reads, in eval mode: a channels-last copy (oneDNN's NHWC convolutions read
    a 2048 px file in ~2/3 of the CPU time, the same numbers up to float rounding; a copy, so the
    caller's net keeps its layout), or the net itself when it is one already, so a caller that
    reads many batches (TorchModel) copies it once: ~55 ms a copy against ~470 ms to read 64 crops."""
    convs = [p for p in net.parameters() if p.ndim == 4]
    if not net.training and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs):
        return net
    return copy.deepcopy(net).eval().to(memory_format=torch.channels_last)


def _logits(net, x, features, batch: int, tile: int | None):
    """The net's logits (b, H, W) of images x, `batch` images at a time."""
    net = for_reading(net)
    # batch by batch, floats and maps too, as the ONNX engine reads: whole-array float64 maps of a
    # 1 x 60,000 strip's 60,000 tiles under a 16 px surface took 1 GB (maps_and_scores is per image)
    for i in range(0, len(x), batch):
        with torch.inference_mode():
            xb = x[i:i + batch]
            if isinstance(xb, np.ndarray):
                xb = torch.from_numpy(xb.astype(np.float32) / 255.0 if xb.dtype == np.uint8 else xb.astype(np.float32))
            xb = xb.float()
            inp = xb if features is None else torch.cat([xb, features(xb).to(xb)], 1)
            if tile:  # the tiling an exported reader is read with (vaekit.reader.score.read_tiled)
                logits = read_tiled(lambda v: net(torch.from_numpy(v)).numpy(), inp.numpy(), tile)
            else:
                logits = net(inp).numpy()  # (B, H, W)
        yield logits
