"""vaekit's trainer against a bare PyTorch loop: same model, same batch size, same images.

    python benchmarks/train_throughput.py [--images 1024] [--image-size 32] [--batch-size 64]
                                          [--epochs 15] [--threads 1] [--device cpu]

The bare loop is the pytorch/examples VAE loop over the training images held in memory as one
float tensor already on the device: shuffle, slice, forward, -ELBO, backward, step. The trainer
reads each batch from the memory-mapped pixel cache and also clips gradients, draws the noise
from a seeded generator, keeps per-image loss sums and (outside the timed pass) validates and
writes a checkpoint every epoch. The two alternate epoch by epoch in one process (the bare
epoch runs from the trainer's end-of-epoch callback), so machine noise hits both alike, and
the medians are compared. Target: trainer / bare >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vaekit.config import ModelConfig, TrainConfig
from vaekit.model.vae import ConvVAE
from vaekit.model.objective import negative_elbo
from vaekit.training.data import choose_model, image_statistics, load_dataset
from vaekit.training.splits import plan_splits
from vaekit.training.distributed import pick_device
from vaekit.training.loop import fit


def write_images(folder: Path, n: int, size: int) -> None:
    """n RGB images of a bright rectangle on a dark background (skipped when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == n:
        return
    rng = np.random.default_rng(0)
    for i in range(n):
        x = np.full((size, size, 3), 20, np.uint8)
        r, c = rng.integers(0, size // 2, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        x[r : r + h, c : c + w] = rng.integers(100, 256, 3)
        Image.fromarray(x).save(folder / f"img{i:06d}.png")


class BareLoop:
    """The baseline: a plain PyTorch VAE loop over an in-memory tensor."""

    def __init__(self, x: torch.Tensor, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device):
        torch.manual_seed(train_cfg.seed)
        self.x, self.cfg, self.batch = x, model_cfg, train_cfg.batch_size  # x: (N, C, H, W) float on device
        self.model = ConvVAE(model_cfg).to(device)
        cuda = device.type == "cuda"
        self.amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda and train_cfg.amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16) if cuda else None
        if train_cfg.channels_last:  # as vaekit's Trainer: on any device
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.net = torch.compile(self.model) if train_cfg.compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        self.device = device

    def epoch(self) -> tuple[float, float]:
        """One pass; returns (wall seconds, CPU seconds of this process)."""
        self.model.train()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(len(self.x), device=self.device)
        for s in range(0, len(self.x), self.batch):
            x = self.x[perm[s : s + self.batch]]
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                params, mu, logvar = self.net(x)
            loss = negative_elbo(x, params, mu, logvar, self.cfg.likelihood, self.model.scale()).total.mean()
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is not None and self.scaler.is_enabled():
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                self.opt.step()
        loss.item()  # wait for the device
        return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=15, help="epochs of each; the first is dropped as warm-up")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, set explicitly")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vaekit-bench-throughput")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    folder = args.work / f"images-{args.images}-{args.image_size}"
    write_images(folder, args.images, args.image_size)
    data = load_dataset(folder, args.image_size, "auto", cache_dir=args.work / "cache")
    model_cfg = ModelConfig(image_size=args.image_size, channels=int(data.images.shape[1]))
    model_cfg = choose_model(model_cfg, image_statistics(data.images, np.arange(len(data.paths))))  # as `vaekit train`
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=args.device, compile=args.compile)
    device = pick_device(args.device)
    train_idx = plan_splits(len(data.paths), train_cfg.val_fraction, train_cfg.calibration_fraction, train_cfg.seed,
                            train_cfg.folds, train_cfg.threshold_quantile).train  # the trainer's training images
    x = torch.from_numpy(np.asarray(data.images)[train_idx]).to(device).float().div_(255.0)
    bare = BareLoop(x, model_cfg, replace(train_cfg), device)

    # per epoch: trainer's training pass (wall s, CPU s), trainer's whole epoch (wall s), bare (wall s, CPU s)
    rows: list[tuple[float, float, float, float, float]] = []
    mark = [time.perf_counter(), time.process_time()]  # when the trainer's current epoch began
    pass_end = [0.0, 0.0]

    def after(done, total, phase="", **row):
        now = [time.perf_counter(), time.process_time()]
        if phase == "train" and done == total:  # the last step of the training pass is done
            pass_end[:] = now
        if phase != "epoch":
            return
        t_wall, t_cpu = pass_end[0] - mark[0], pass_end[1] - mark[1]
        whole = now[0] - mark[0]  # plus validation, checkpoint and metrics
        b_wall, b_cpu = bare.epoch()
        rows.append((t_wall, t_cpu, whole, b_wall, b_cpu))
        mark[:] = [time.perf_counter(), time.process_time()]

    with tempfile.TemporaryDirectory() as out:
        fit(data, Path(out) / "run", model_cfg, train_cfg, progress=after)

    report(rows, len(train_idx), len(data.paths), data.images.shape[1], device, args)


def report(rows: list[tuple[float, float, float, float, float]], n: int, n_all: int, channels: int, device, args) -> None:
    """The per-epoch table and the medians (the first epoch of each is warm-up)."""
    print(f"torch {torch.__version__}, device {device}, {args.threads} thread(s); {n} training images "
          f"{channels}x{args.image_size}x{args.image_size}, batch {args.batch_size}, ConvVAE defaults")
    print("images/s per epoch (wall clock; CPU: images per CPU-second of this process)")
    print(f"{'epoch':>5} {'trainer':>8} {'bare':>8} {'ratio':>6} {'trainer CPU':>12} {'bare CPU':>9} {'ratio':>6} {'trainer whole epoch':>20}")
    for e, (tw, tc, w, bw, bc) in enumerate(rows, 1):
        print(f"{e:>5} {n / tw:>8.0f} {n / bw:>8.0f} {bw / tw:>6.3f} {n / tc:>12.0f} {n / bc:>9.0f} {bc / tc:>6.3f} {n / w:>20.0f}")
    keep = rows[1:]  # the first epoch of each is warm-up (and the trainer's includes building the model)

    def med(i):
        return statistics.median(n / r[i] for r in keep)

    # the ratio is the median of each epoch's trainer/bare ratio: neighbours share the machine's mood
    wall = statistics.median(r[3] / r[0] for r in keep)
    cpu = statistics.median(r[4] / r[1] for r in keep)
    print(f"median of epochs 2-{len(rows)}, wall clock: trainer {med(0):.0f} img/s, bare loop {med(3):.0f} img/s, "
          f"ratio {wall:.3f} (target >= 0.95)")
    print(f"median of epochs 2-{len(rows)}, CPU time:   trainer {med(1):.0f} img/s, bare loop {med(4):.0f} img/s, "
          f"ratio {cpu:.3f}")
    print(f"trainer's whole epoch incl. validation ({n_all - n} images) and checkpoint: "
          f"{med(2):.0f} img/s, ratio {med(2) / med(3):.3f}")


if __name__ == "__main__":
    main()
