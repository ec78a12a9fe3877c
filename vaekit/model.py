"""The convolutional VAE of Kingma & Welling (2014), sized to any square image >= 16 pixels.

Read bottom-up: `stage_sizes` plans the spatial sizes, Encoder and Decoder mirror each
other stage by stage, and ConvVAE ties them together with the reparameterisation trick.
No normalisation layers: scores then never depend on what else is in the batch, and the
exported graph is plain convolutions that onnxruntime fuses with their activations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.config import ModelConfig


def stage_sizes(image_size: int) -> list[int]:
    """Spatial size after each stride-2 stage, halving (rounding up) until <= 4."""
    sizes = [image_size]
    while sizes[-1] > 4:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def stage_channels(cfg: ModelConfig) -> list[int]:
    n = len(stage_sizes(cfg.image_size)) - 1
    return [min(cfg.base_channels * 2**i, cfg.max_channels) for i in range(n)]


class Encoder(nn.Module):
    """x (B, C, H, W) -> mu, logvar (B, latent_dim)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        widths = stage_channels(cfg)
        layers: list[nn.Module] = []
        c_in = cfg.channels
        for c_out in widths:
            # k=3, s=2, p=1 maps n -> ceil(n/2): any size works, not just powers of two
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        side = stage_sizes(cfg.image_size)[-1]
        self.to_stats = nn.Linear(c_in * side * side, 2 * cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.convs(x).flatten(1)  # (B, C' * s * s)
        mu, logvar = self.to_stats(h).chunk(2, dim=1)  # (B, D) each
        return mu, logvar


class Decoder(nn.Module):
    """z (B, latent_dim) -> parameters of p(x|z) per pixel (B, C, H, W)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        sizes = stage_sizes(cfg.image_size)
        widths = stage_channels(cfg)
        self.start = (widths[-1], sizes[-1], sizes[-1])
        self.from_z = nn.Linear(cfg.latent_dim, widths[-1] * sizes[-1] * sizes[-1])
        layers: list[nn.Module] = []
        c_in = widths[-1]
        # walk the encoder's stages backwards; output_padding undoes each ceil(n/2) exactly:
        # (h - 1) * 2 - 2 + 3 + op == target  <=>  op = target - 2h + 1 (0 for odd, 1 for even)
        for i in range(len(widths) - 1, -1, -1):
            target, h = sizes[i], sizes[i + 1]
            c_out = widths[i - 1] if i > 0 else cfg.base_channels
            op = target - 2 * h + 1
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=op),
                nn.LeakyReLU(0.2),
            ]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, cfg.channels, 3, padding=1))
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_z(z).view(-1, *self.start)  # (B, C', s, s)
        return self.convs(F.leaky_relu(h, 0.2))  # (B, C, H, W)


class ConvVAE(nn.Module):
    """encode(x) -> (mu, logvar); reparameterize; decode(z) -> likelihood parameters."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # Gaussian p(x|z): one learned log sigma per channel. A per-pixel scale is more flexible
        # but lets the model buy likelihood by shrinking sigma on easy pixels, which makes the
        # score favour simple images even more.
        self.log_scale = nn.Parameter(torch.zeros(cfg.channels)) if cfg.likelihood == "gaussian" else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        if eps is None:
            eps = torch.randn_like(mu)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Likelihood parameters: Bernoulli logits, or the Gaussian mean."""
        return self.decoder(z)

    def scale(self) -> torch.Tensor | None:
        """Gaussian log sigma per channel, floored; None for Bernoulli."""
        if self.log_scale is None:
            return None
        return self.log_scale.clamp(min=self.cfg.min_log_scale)

    def mean_image(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z] in [0, 1] from the decoder's parameters."""
        if self.cfg.likelihood == "bernoulli":
            return torch.sigmoid(params)
        return params.clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar
