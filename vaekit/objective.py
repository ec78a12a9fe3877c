"""The objective: the negative ELBO of Kingma & Welling (2014), returned in parts.

-ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), with the KL in closed form
(Appendix B): KL = 1/2 * sum(mu^2 + sigma^2 - 1 - log sigma^2). All values are nats per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


@dataclass
class Loss:
    recon: torch.Tensor  # (B,) reconstruction negative log-likelihood, nats
    kl: torch.Tensor  # (B,) KL(q(z|x) || p(z)), nats
    total: torch.Tensor  # (B,) recon + beta * kl


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mu, sigma^2) || N(0, I)) summed over latent dims: (B, D) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def pixel_nll(x: torch.Tensor, params: torch.Tensor, likelihood: str, log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """-log p(x|z) per pixel (B, C, H, W), x in [0, 1].

    Bernoulli: params are logits; for grey levels this is the continuous-target BCE that
    pytorch/examples uses. Gaussian: params are means, log_scale (C,) the log sigma.
    """
    if likelihood == "bernoulli":
        # softplus(l) - x*l is BCE-with-logits written out: the same value, but it exports to
        # ONNX as a stable Softplus, where the exporter's own BCE decomposition lost precision
        # on saturated logits (0.0125 nats instead of 4e-6 at l = -12.5).
        return F.softplus(params) - x * params
    if likelihood == "gaussian":
        log_sigma = log_scale.view(1, -1, 1, 1)
        return 0.5 * ((x - params) * torch.exp(-log_sigma)).pow(2) + log_sigma + 0.5 * LOG_2PI
    raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")


def negative_elbo(
    x: torch.Tensor,
    params: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    likelihood: str,
    log_scale: torch.Tensor | None = None,
    beta: float = 1.0,
) -> Loss:
    """-ELBO per image from one posterior draw's decoder output `params`."""
    recon = pixel_nll(x.float(), params.float(), likelihood, log_scale).flatten(1).sum(dim=1)
    kl = kl_divergence(mu.float(), logvar.float())
    return Loss(recon=recon, kl=kl, total=recon + beta * kl)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dim."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar)).sum(dim=-1)


def iwae_log_likelihood(model, x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) with k samples (Burda et al., 2016): (B,).

    log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x). A lower bound on log p(x)
    that is never below the ELBO in expectation and tightens as k grows.
    """
    if k < 1:
        raise ValueError(f"number of samples must be >= 1, got {k}")
    mu, logvar = model.encode(x)  # (B, D)
    eps = torch.randn((k, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, D)
    params = model.decode(z.flatten(0, 1))  # (k*B, C, H, W)
    xk = x.unsqueeze(0).expand(k, *x.shape).flatten(0, 1)
    log_px_z = -pixel_nll(xk, params, model.cfg.likelihood, model.scale()).flatten(1).sum(1).view(k, -1)
    log_pz = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
    log_qz = log_normal(z, mu, logvar)
    return torch.logsumexp(log_px_z + log_pz - log_qz, dim=0) - math.log(k)
