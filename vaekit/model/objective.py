"""The objective: the negative ELBO of Kingma & Welling (2014), returned in parts.

-ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), with the KL in closed form
(Appendix B): KL = 1/2 * sum(mu^2 + sigma^2 - 1 - log sigma^2). All values are nats per image.
With the discretised logistic (`Logistic`) the -ELBO is a code length: the nats an ideal coder
needs for the image's 8-bit pixels (vaekit.codec's bits-back archives spend it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vaekit.errors import BadInput
from vaekit.model.likelihood_np import LEVELS, LOG_2PI


@dataclass
class Loss:
    recon: torch.Tensor  # (B,) reconstruction negative log-likelihood, nats
    kl: torch.Tensor  # (B,) KL(q(z|x) || p(z)), nats
    total: torch.Tensor  # (B,) recon + beta * kl


def kl_terms(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mu, sigma^2) || N(0, 1)) of each latent dim: (..., D) -> (..., D)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mu, sigma^2) || N(0, I)) summed over latent dims: (B, D) -> (B,)."""
    return kl_terms(mu, logvar).sum(dim=1)


class Bernoulli:
    """p(x|z) with logits from the decoder; for grey levels, the continuous-target BCE of pytorch/examples."""

    name = "bernoulli"

    @staticmethod
    def nll(x: torch.Tensor, params: torch.Tensor, log_sigma: torch.Tensor | None = None) -> torch.Tensor:
        # softplus(l) - x*l is BCE-with-logits written out: the same value, but it exports to
        # ONNX as a stable Softplus, where the exporter's own BCE decomposition lost precision
        # on saturated logits (0.0125 nats instead of 4e-6 at l = -12.5).
        return F.softplus(params) - x * params

    @staticmethod
    def mean(params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class Gaussian:
    """p(x|z) with means from the decoder and one learned log sigma per channel (`log_sigma`, (C,))."""

    name = "gaussian"

    @staticmethod
    def nll(x: torch.Tensor, params: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        ls = log_sigma.view(1, -1, 1, 1)
        return 0.5 * ((x - params) * torch.exp(-ls)).pow(2) + ls + 0.5 * LOG_2PI

    @staticmethod
    def mean(params: torch.Tensor) -> torch.Tensor:
        return params.clamp(0.0, 1.0)


def _log_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return -F.softplus(-v)  # exports to ONNX as a stable Softplus (see Bernoulli.nll)


def causal_neighbours(t: torch.Tensor) -> list[torch.Tensor]:
    """Each pixel's left, up-left, up and up-right neighbour, zero outside the image: (B, C, H, W)
    -> four (B, C, H, W). The order the codec decodes in reads only pixels decoded before
    (vaekit.codec.bitsback.waves, whose NEIGHBOURS are these offsets)."""
    h, w = t.shape[-2:]
    p = F.pad(t, (1, 1, 1, 0))
    return [p[..., 1:h + 1, 0:w], p[..., 0:h, 0:w], p[..., 0:h, 1:w + 1], p[..., 0:h, 2:w + 2]]


class Logistic:
    """Discretised logistic p(x|z) over the 256 levels of 8-bit pixels (Salimans et al. 2017,
    PixelCNN++; Kingma et al. 2016, IAF-VAE): params (B, 2C, H, W) hold a mean (in [0, 1] pixel
    units) and a log scale per pixel, the log scale already bounded by the decoder (ConvVAE.decode).
    -log p(x|z) is the probability of x's bin, so it is never negative and the -ELBO is a code length.

    With a pixel context (params (B, 6C, H, W): four weights in (-1, 1) per channel more) each
    pixel's mean also reads its causal neighbours' residuals, mean + sum_k a_k (x_k - mean_k)
    (left, up-left, up, up-right; zero outside the image), so p(x|z) = prod p(x_ij | z, x_<ij):
    still a normalised code length, and texture the latent cannot hold costs less (docs/codec.md)."""

    name = "logistic"
    params_per_channel = 2

    @staticmethod
    def nll(x: torch.Tensor, params: torch.Tensor, log_sigma: torch.Tensor | None = None) -> torch.Tensor:
        c = x.shape[1]
        mean, log_s, weights = params[:, :c], params[:, c:2 * c], params[:, 2 * c:]
        x = torch.round(x * (LEVELS - 1)) / (LEVELS - 1)  # on the 8-bit grid whatever float noise came in
        if weights.shape[1]:  # a pixel context: (B, 4C, H, W), ordered (neighbour, channel)
            res = [xn - mn for xn, mn in zip(causal_neighbours(x), causal_neighbours(mean))]
            mean = mean + sum(weights[:, k * c:(k + 1) * c] * r for k, r in enumerate(res))
        inv_s = torch.exp(-log_s)
        plus = inv_s * (x - mean + 0.5 / (LEVELS - 1))  # the bin's upper edge, standardised
        minus = inv_s * (x - mean - 0.5 / (LEVELS - 1))  # and its lower edge
        # sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - e^(b - a)): no cancellation anywhere,
        # so bins far in either tail keep an exact log probability (PixelCNN++ falls back to the pdf)
        log_mid = _log_sigmoid(plus) + _log_sigmoid(-minus) + torch.log(-torch.expm1(-inv_s / (LEVELS - 1)))
        log_p = torch.where(x <= 0.0, _log_sigmoid(plus), torch.where(x >= 1.0, _log_sigmoid(-minus), log_mid))
        return -log_p

    @staticmethod
    def mean(params: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """The decoder's own mean (before any pixel context), the median of the clipped
        distribution: a logistic is symmetric, the edge bins take the tails. `channels`: C, needed
        when params carry a pixel context (6C maps); without it params are taken as 2C maps."""
        c = params.shape[1] // 2 if channels is None else channels
        return params[:, :c].clamp(0.0, 1.0)


LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian, "logistic": Logistic}


def get_likelihood(name: str):
    """The likelihood object for a name (what ModelConfig.likelihood holds)."""
    try:
        return LIKELIHOODS[name]
    except (KeyError, TypeError):
        raise BadInput(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {name!r}") from None


def pixel_nll(x: torch.Tensor, params: torch.Tensor, likelihood: str, log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """-log p(x|z) per value (B, C, H, W), x in [0, 1]: the likelihood object's `nll`.
    Bernoulli: params are logits; Gaussian: means, log_scale (C,) the log sigma; Logistic: (B, 2C, H, W)
    means and log scales."""
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
