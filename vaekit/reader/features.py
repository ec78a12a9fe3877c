"""What the reader sees from the VAE: per-pixel maps from one deterministic pass (z = mu).

`vae_features(net, parts)` turns a trained ConvVAE into the `features` callable that
train_reader and read take: (B, C, H, W) in [0, 1] -> (B, F, H, W). The parts:

- "recon": the reconstruction E[x|z] (C channels). With the image beside it the reader can
  compare the two itself, which is what DRAEM's discriminative network is given.
- "r": log(1 + R), R = reconstruction NLL minus its floor, summed over channels (1 channel).
  R is the residual in units of the model's own sigma, which the image and reconstruction
  alone do not tell; the log tames its tail (a defect's R is hundreds of times a normal one).
- "kl": log(1 + KL of each latent cell), spread over the cell's pixels (1 channel; grid only).

`tiled(fn, tile)` runs a fixed-size VAE over an image of any size >= tile, with overlapping
tiles blended by a tent weight, so seams at tile borders (where a VAE reconstructs worst)
count little.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from vaekit.model.objective import kl_terms

PARTS = ("recon", "r", "kl")
Features = Callable[[torch.Tensor], torch.Tensor]


def vae_features(net, parts: Sequence[str] = ("recon", "r")) -> Features:
    """The features callable for a vaekit ConvVAE `net` (an engine's `.net`), in eval mode, no grad."""
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {list(parts)}")
    if "kl" in parts and net.cfg.layout != "grid":
        raise ValueError("the 'kl' part needs a latent grid (a vector latent has no per-pixel KL)")

    @torch.no_grad()
    def features(x: torch.Tensor) -> torch.Tensor:
        net.eval()
        mu, logvar = net.encode(x)
        params = net.decode(mu)  # z = mu: deterministic
        out = []
        if "recon" in parts:
            out.append(net.mean_image(params))
        if "r" in parts:
            nll = net.likelihood.nll(x, params, net.scale()).sum(1)  # (B, H, W)
            out.append(torch.log1p((nll - _floor(net, x)).clamp(min=0))[:, None])
        if "kl" in parts:
            c, g, _ = net.cfg.latent_shape
            kl = kl_terms(mu, logvar).view(-1, c, g, g).sum(1, keepdim=True)
            out.append(torch.log1p(F.interpolate(kl, size=x.shape[-2:], mode="nearest")))
        return torch.cat(out, 1).float()

    return features


def _floor(net, x: torch.Tensor) -> torch.Tensor:
    """The NLL of a perfect reconstruction per pixel (vaekit.model.likelihood_np's floor, in torch)."""
    if net.cfg.likelihood == "gaussian":
        return (net.scale() + 0.5 * torch.log(torch.tensor(2 * torch.pi))).sum().expand(x.shape[0], *x.shape[2:])
    p = x.clamp(1e-7, 1 - 1e-7)
    return -(x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(1)  # binary entropy


def tiled(fn: Features, tile: int, overlap: int | None = None) -> Features:
    """fn, which only takes tile x tile images, made to take any H, W >= tile: tiles overlapping
    by `overlap` px (default tile // 2), each output blended with a tent weight."""
    overlap = tile // 2 if overlap is None else overlap
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, {tile}), got {overlap}")

    def starts(n: int) -> list[int]:
        if n < tile:
            raise ValueError(f"an image side of {n} px is smaller than the tile ({tile} px)")
        step = tile - overlap
        s = list(range(0, n - tile + 1, step))
        return s if s[-1] == n - tile else s + [n - tile]

    ramp = torch.minimum(torch.arange(tile) + 1.0, tile - torch.arange(tile).float())
    weight = ramp[:, None] * ramp[None, :]  # (tile, tile), highest in the middle

    def features(x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if (h, w) == (tile, tile):
            return fn(x)
        out = total = None
        for y0 in starts(h):
            for x0 in starts(w):
                f = fn(x[:, :, y0:y0 + tile, x0:x0 + tile])
                if out is None:
                    out = f.new_zeros(b, f.shape[1], h, w)
                    total = f.new_zeros(h, w)
                wt = weight.to(f)
                out[:, :, y0:y0 + tile, x0:x0 + tile] += f * wt
                total[y0:y0 + tile, x0:x0 + tile] += wt
        return out / total

    return features
