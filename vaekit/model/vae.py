"""The convolutional VAE of Kingma & Welling (2014), sized to any square image >= 16 pixels.

Read bottom-up: `stage_sizes` plans the spatial sizes; Encoder/Decoder are vaekit 0.1's
network (arch "v1", kept so old runs load); ResEncoder/ResDecoder are the default (arch
"v2": a residual block per stage, a resize-then-conv decoder, the latent either one vector
or a grid of cells, one per 4x4 pixels); ConvVAE ties them together with the
reparameterisation trick. z is always handed out flat, (B, D), whatever its layout.
No normalisation layers: scores then never depend on what else is in the batch, and the
exported graph is plain convolutions that onnxruntime fuses with their activations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.config import ModelConfig
from vaekit.errors import BadInput
from vaekit.model.likelihood_np import LOGISTIC_LOG_SCALE_BOUNDS
from vaekit.model.objective import get_likelihood, kl_terms


def stage_sizes(image_size: int) -> list[int]:
    """Spatial size after each stride-2 stage, halving (rounding up) until <= 4."""
    sizes = [image_size]
    while sizes[-1] > 4:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def out_channels(cfg: ModelConfig) -> int:
    """The decoder's output maps: one per image channel (logits, means), two for the discretised
    logistic (mean and log scale per pixel), and four more with a pixel context (its weights)."""
    return cfg.channels * (getattr(get_likelihood(cfg.likelihood), "params_per_channel", 1) + cfg.context)


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
        layers.append(nn.Conv2d(c_in, out_channels(cfg), 3, padding=1))
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_z(z).view(-1, *self.start)  # (B, C', s, s)
        return self.convs(F.leaky_relu(h, 0.2))  # (B, C, H, W)


def soft_bound(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """v where it is well inside (lo, hi), smoothly saturating at the ends: unlike a clamp the
    gradient never becomes exactly zero, and exp() of the result can never overflow."""
    return lo + F.softplus(v - lo) - F.softplus(v - hi)


LOGVAR_BOUNDS = (-12.0, 6.0)  # v2: posterior log-variance, so one bad batch cannot overflow exp()
LOG_SIGMA_BOUNDS = (-6.0, 2.0)  # v2: the Gaussian likelihood's log sigma


class Res(nn.Module):
    """x + conv(act(conv(act(x)))): a residual block at constant width."""

    def __init__(self, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1)
        self.c2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c2(F.leaky_relu(self.c1(F.leaky_relu(x, 0.2)), 0.2))


class Up(nn.Module):
    """Resize-then-conv: nearest upsampling to an exact size, then a 3x3 conv. No ConvTranspose:
    no checkerboard artefacts, any size works, and onnxruntime runs it fast (and in int8)."""

    def __init__(self, c_in: int, c_out: int, size: int):
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, h: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(h, size=size or (self.size, self.size), mode="nearest"))


def grid_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """(height, width) after each of a grid model's two stride-2 stages: any image size works,
    since a grid model is fully convolutional (a latent cell per 4x4 pixels)."""
    return [(h, w), (-(-h // 2), -(-w // 2)), (-(-h // 4), -(-w // 4))]


def v2_plan(cfg: ModelConfig) -> tuple[list[int], list[int]]:
    """Spatial sizes and widths of the v2 stages: halving to <= 4 pixels for a vector latent,
    two stages (a cell per 4x4 pixels) for a grid."""
    sizes = stage_sizes(cfg.image_size) if cfg.layout == "vector" else stage_sizes(cfg.image_size)[:3]
    cap = max(cfg.max_channels, cfg.base_channels)
    return sizes, [min(cfg.base_channels * 2**i, cap) for i in range(len(sizes) - 1)]


class ResEncoder(nn.Module):
    """x (B, C, H, W) -> mu, logvar (B, D) each, D = prod(cfg.latent_shape)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        sizes, widths = v2_plan(cfg)
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, cfg.base_channels, 3, padding=1)]
        c = cfg.base_channels
        for w in widths:
            layers += [nn.LeakyReLU(0.2), nn.Conv2d(c, w, 3, stride=2, padding=1), Res(w)]
            c = w
        layers.append(nn.LeakyReLU(0.2))
        self.convs = nn.Sequential(*layers)
        if cfg.layout == "vector":
            self.to_stats = nn.Linear(c * sizes[-1] ** 2, 2 * cfg.latent_dim)
        else:
            self.to_stats = nn.Conv2d(c, 2 * cfg.latent_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.convs(x)  # (B, C', s, s)
        if self.cfg.layout == "vector":
            mu, logvar = self.to_stats(h.flatten(1)).chunk(2, dim=1)  # (B, D) each
        else:
            mu, logvar = (t.flatten(1) for t in self.to_stats(h).chunk(2, dim=1))  # (B, Cz*g*g) each
        return mu, soft_bound(logvar, *LOGVAR_BOUNDS)


class ResDecoder(nn.Module):
    """z (B, D) -> parameters of p(x|z) per pixel (B, C, H, W)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        sizes, widths = v2_plan(cfg)
        self.sizes, self.widths = sizes, widths
        c = widths[-1]
        if cfg.layout == "vector":
            self.from_z = nn.Linear(cfg.latent_dim, c * sizes[-1] ** 2)
        else:
            self.from_z = nn.Conv2d(cfg.latent_dim, c, 3, padding=1)
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1, -1, -1):
            c_out = widths[i - 1] if i > 0 else cfg.base_channels
            layers += [Res(c), Up(c, c_out, sizes[i]), nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, out_channels(cfg), 3, padding=1))
        self.convs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """`size` (grid layout only): the (H, W) of the image z came from, when it is not the
        model's own image size (crops, whole surfaces at their native resolution)."""
        s = self.sizes[-1]
        if self.cfg.layout == "vector":
            h = self.from_z(z).view(-1, self.widths[-1], s, s)
            return self.convs(F.leaky_relu(h, 0.2))  # (B, C, H, W)
        sizes = grid_sizes(*(size or (self.sizes[0], self.sizes[0])))
        h = F.leaky_relu(self.from_z(z.view(-1, self.cfg.latent_dim, *sizes[-1])), 0.2)
        targets = iter(sizes[-2::-1])  # the Up stages restore each encoder stage's size in turn
        for layer in self.convs:
            h = layer(h, next(targets)) if isinstance(layer, Up) else layer(h)
        return h  # (B, C, H, W)


class ConvVAE(nn.Module):
    """encode(x) -> (mu, logvar); reparameterize; decode(z) -> likelihood parameters."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg = cfg.with_fallbacks()
        if not cfg.resolved:
            raise BadInput(f"cannot build a model without an image size: {cfg}")
        self.cfg = cfg
        self.likelihood = get_likelihood(cfg.likelihood)
        v2 = cfg.arch == "v2"
        self.encoder = ResEncoder(cfg) if v2 else Encoder(cfg)
        self.decoder = ResDecoder(cfg) if v2 else Decoder(cfg)
        # Gaussian p(x|z): one learned log sigma per channel. A per-pixel scale is more flexible
        # but lets the model buy likelihood by shrinking sigma on easy pixels, which makes the
        # score favour simple images even more.
        self.log_scale = nn.Parameter(torch.zeros(cfg.channels)) if cfg.likelihood == "gaussian" else None
        # a pixel context's weights are scaled by this: 1 everywhere but in training, whose first
        # steps ramp it from 0 (vaekit.training.recipe.context_gain), so that the latent learns
        # the image before the neighbours can explain it instead (docs/codec.md). A buffer, not a
        # float, so a compiled model does not recompile as it changes; not saved with the weights.
        self.register_buffer("context_gain", torch.ones(()), persistent=False)
        if self.log_scale is not None and v2:
            nn.init.constant_(self.log_scale, -1.0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        if eps is None:
            eps = torch.randn_like(mu)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Likelihood parameters: Bernoulli logits, the Gaussian mean, or the discretised
        logistic's mean and log scale per pixel (B, 2C, H, W; with a pixel context also its four
        weights per channel, tanh-bounded, times `context_gain`: (B, 6C, H, W)), the log scale
        softly bounded here so that the exported `params` are what the likelihood (and
        vaekit.codec) use.
        `size`: a grid model's (H, W) when z encodes an image of another size than the model's."""
        params = self.decoder(z, size) if size is not None else self.decoder(z)
        if self.cfg.likelihood != "logistic":
            return params
        c = self.cfg.channels
        mean, log_s, weights = params[:, :c], params[:, c:2 * c], params[:, 2 * c:]
        weights = torch.tanh(weights) * self.context_gain
        return torch.cat([mean, soft_bound(log_s, *LOGISTIC_LOG_SCALE_BOUNDS), weights], dim=1)

    def scale(self) -> torch.Tensor | None:
        """Gaussian log sigma per channel, softly bounded (v2; v1 clamps it from below, which
        stops its gradient at the floor); None for Bernoulli."""
        if self.log_scale is None:
            return None
        if self.cfg.arch == "v1":
            return self.log_scale.clamp(min=self.cfg.min_log_scale)
        return soft_bound(self.log_scale, *LOG_SIGMA_BOUNDS)

    def mean_image(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z] in [0, 1] from the decoder's parameters (the median for the discretised logistic)."""
        if self.cfg.likelihood == "logistic":
            return self.likelihood.mean(params, self.cfg.channels)
        return self.likelihood.mean(params)

    def score_parts(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What scoring needs from the network, for one posterior draw z = mu + sigma * eps
        (eps = 0: the posterior mean): recon NLL (B,), KL (B,), the recon NLL per pixel
        (B, H, W), mu and logvar (B, D), and the reconstruction x_hat = E[x|z] (B, C, H, W). The torch engine calls it and the ONNX export traces
        it, so the two cannot compute different things; the scores themselves are numpy
        (vaekit/inference/atypicality.py), shared by both engines."""
        mu, logvar = self.encode(x)  # (B, D) each
        z = mu + torch.exp(0.5 * logvar) * eps
        params = self.decode(z, self.size_of(x))
        pmap = self.likelihood.nll(x, params, self.scale()).sum(1)  # (B, H, W)
        # summed in float64: a latent grid holds ~10^5 terms, and onnxruntime's float32 sum of
        # terms that are alike (a flat image's) drifts by ~N x 6e-8 of the total, past the export's check
        kl = kl_terms(mu, logvar).double().sum(dim=1).float()
        return pmap.flatten(1).sum(1), kl, pmap, mu, logvar, self.mean_image(params)

    def size_of(self, x: torch.Tensor) -> tuple[int, int] | None:
        """A grid model's input size when it is not the model's own (None otherwise)."""
        if self.cfg.layout != "grid" or tuple(x.shape[-2:]) == (self.cfg.image_size, self.cfg.image_size):
            return None
        return int(x.shape[-2]), int(x.shape[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode(z, self.size_of(x)), mu, logvar
