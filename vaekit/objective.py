"""The objective: the negative ELBO of Kingma & Welling (2014), returned in parts.

-ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), with the KL in closed form
(Appendix B): KL = 1/2 * sum(mu^2 + sigma^2 - 1 - log sigma^2). All values are nats per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vaekit.likelihood import get as get_likelihood


@dataclass
class Loss:
    recon: torch.Tensor  # (B,) reconstruction negative log-likelihood, nats
    kl: torch.Tensor  # (B,) KL(q(z|x) || p(z)), nats
    total: torch.Tensor  # (B,) recon + beta * kl


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mu, sigma^2) || N(0, I)) summed over latent dims: (B, D) -> (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def pixel_nll(x: torch.Tensor, params: torch.Tensor, likelihood: str, log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """-log p(x|z) per value (B, C, H, W), x in [0, 1]: the likelihood object's `nll`
    (vaekit/likelihood.py). Bernoulli: params are logits; Gaussian: means, log_scale (C,) the log sigma."""
    return get_likelihood(likelihood).nll(x, params, log_scale)


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
