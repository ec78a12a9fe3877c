"""The defect reader's network: a small U-Net that maps the image and the VAE's per-pixel
outputs to a defect logit per pixel (the discriminative half of DRAEM, Zavrtanik et al. 2021).

A reader is `members` such networks trained from different seeds (ReaderEnsemble), read as
one: the median of their defect probabilities. Fully convolutional: any image size (padded to a
multiple of 2**depth and cropped back). Its
inputs are standardised by per-channel statistics of normal training images, stored as
buffers in the state dict, so the same network reads features of any scale (a VAE whose
residual is large everywhere, as on grass, and one whose residual is tiny). BatchNorm is in
eval mode when reading, a fixed affine map: a score never depends on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.errors import BadInput
from vaekit.reader.synth import SHAPES


@dataclass(frozen=True)
class ReaderConfig:
    width: int = 16  # feature maps of the first level (at 1/stem resolution); doubles at each halving
    depth: int = 3  # halvings after the stem: 64 px crops reach 4 px, receptive field ~100 px
    stem: int = 2  # pixel-unshuffle factor: the U-Net runs at 1/stem resolution on stem**2 x the
    #              channels (no pixel is lost, a 1-px scratch is still seen) and is ~4x cheaper
    steps: int = 450  # optimizer steps of `batch` crops: ~90 s on one (shared) CPU thread at 64 px;
    #                   300 gave the same image AUROC but seed-to-seed swings on gravel's pixel AUROC
    batch: int = 16  # crops per step
    crop: int = 64  # training crop side (larger training images are cropped at random)
    lr: float = 2e-3  # Adam peak; cosine decay to 0 after a short linear warm-up
    clean_fraction: float = 0.3  # share of each batch left without a defect (teaches "nothing here")
    loss: str = "focal"  # "focal" (DRAEM, gamma 2) or "bce_dice"
    shapes: tuple[str, ...] = ("blob", "spots", "line")  # synthetic shape families drawn from
    smooth: int = 3  # image score: the largest mean of the probability over smooth x smooth px
    map_smooth: int = 5  # pixel map: the probability averaged over map_smooth x map_smooth px
    members: int = 3  # readers trained from different seeds, read as the median of their defect
    #                   probabilities: one reader's false alarms on normal texture differ from seed
    #                   to seed, and the median keeps what most of them agree on (docs/detection.md)

    def __post_init__(self) -> None:
        ints = {"width": (1, 256), "depth": (0, 5), "stem": (1, 4), "steps": (1, 10**6), "batch": (2, 4096),
                "crop": (8, 1024), "smooth": (1, 64), "map_smooth": (1, 64), "members": (1, 16)}
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise BadInput(f"reader {name} must be an integer from {lo} to {hi}, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise BadInput(f"reader lr must be in (0, 1), got {self.lr!r}")
        if not (isinstance(self.clean_fraction, (int, float)) and 0 <= self.clean_fraction < 1):
            raise BadInput(f"reader clean_fraction must be in [0, 1), got {self.clean_fraction!r}")
        if self.loss not in ("focal", "bce_dice"):
            raise BadInput(f"reader loss must be 'focal' or 'bce_dice', got {self.loss!r}")
        if not self.shapes or any(s not in SHAPES for s in self.shapes):
            raise BadInput(f"reader shapes must be a non-empty subset of {SHAPES}, got {self.shapes!r}")


class Block(nn.Module):
    """conv-BN-ReLU twice at constant width."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ReaderNet(nn.Module):
    """(B, in_channels, H, W) -> defect logits (B, H, W)."""

    def __init__(self, in_channels: int, cfg: ReaderConfig = ReaderConfig()):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.cfg = cfg
        self.in_channels = in_channels
        # set by the trainer from normal images; identity until then
        self.register_buffer("in_mean", torch.zeros(in_channels))
        self.register_buffer("in_std", torch.ones(in_channels))
        widths = [cfg.width * 2**i for i in range(cfg.depth + 1)]
        self.down = nn.ModuleList([Block(in_channels * cfg.stem**2, widths[0])])
        self.down.extend(Block(widths[i], widths[i + 1]) for i in range(cfg.depth))
        self.up = nn.ModuleList(Block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(cfg.depth)))
        self.head = nn.Conv2d(widths[0], cfg.stem**2, 1)  # a logit per pixel of each stem x stem cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = self.cfg.stem * 2**self.cfg.depth
        ph, pw = -h % m, -w % m
        x = (x - self.in_mean[:, None, None]) / self.in_std[:, None, None]
        # always (a zero-width pad is free): one graph for every size, so an ONNX export with
        # dynamic height and width pads too; replicate works for any size, even 1 px
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = F.pixel_unshuffle(x, self.cfg.stem)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return F.pixel_shuffle(self.head(x), self.cfg.stem)[:, 0, :h, :w]  # (B, H, W)


class ReaderEnsemble(nn.Module):
    """Several ReaderNets read as one: (B, C, H, W) -> their median defect logit per pixel
    (B, H, W). The logistic function is monotone, so with an odd number of members that is the
    logit of their median probability, with no rounding at all (an ensemble of one reads exactly
    as its net); with an even number, the mean of the middle two logits. The score maths
    downstream (vaekit.reader.score) is that of a single net, and an ONNX export is one graph.
    The median, not the mean: a false alarm of one member out of three does not move it
    (measured against the mean in docs/detection.md)."""

    def __init__(self, nets: list[ReaderNet]):
        super().__init__()
        if not nets:
            raise ValueError("an ensemble needs at least one reader")
        self.members = nn.ModuleList(nets)
        self.cfg = nets[0].cfg
        self.in_channels = nets[0].in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.members)
        if k == 1:
            return self.members[0](x)
        logits = torch.sort(torch.stack([net(x) for net in self.members]), dim=0).values
        return logits[k // 2] if k % 2 else 0.5 * (logits[k // 2 - 1] + logits[k // 2])
