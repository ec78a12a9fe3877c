"""The mathematics: closed-form KL, likelihoods, gradients through z, the IWAE bound."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence as torch_kl

from vaekit.config import ModelConfig
from vaekit.model import ConvVAE
from vaekit.objective import kl_divergence, negative_elbo, pixel_nll


def test_closed_form_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 6, generator=g)
    logvar = torch.randn(4, 6, generator=g) * 0.5
    closed = kl_divergence(mu, logvar)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    z = q.sample((200_000,))  # (S, B, D)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(closed, mc, rtol=0.02, atol=0.02)
    # and torch's own analytic KL agrees exactly
    torch.testing.assert_close(closed, torch_kl(q, p).sum(-1))


def test_kl_is_zero_only_at_the_prior():
    assert kl_divergence(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0
    assert kl_divergence(torch.full((1, 3), 0.1), torch.zeros(1, 3)).item() > 0.0


def test_pixel_nll_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    params = torch.randn(2, 3, 5, 5, generator=g)
    x_bin = (torch.rand(2, 3, 5, 5, generator=g) > 0.5).float()
    torch.testing.assert_close(pixel_nll(x_bin, params, "bernoulli"), -Bernoulli(logits=params).log_prob(x_bin))
    x = torch.rand(2, 3, 5, 5, generator=g)
    log_scale = torch.tensor([-1.0, 0.0, 0.5])
    expected = -Normal(params, torch.exp(log_scale).view(1, 3, 1, 1)).log_prob(x)
    torch.testing.assert_close(pixel_nll(x, params, "gaussian", log_scale), expected)
    with pytest.raises(ValueError, match="likelihood"):
        pixel_nll(x, params, "poisson")


def test_negative_elbo_parts_add_up_with_beta():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 1, 4, 4, generator=g)
    params, mu, logvar = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    loss = negative_elbo(x, params, mu, logvar, "bernoulli", beta=0.25)
    torch.testing.assert_close(loss.total, loss.recon + 0.25 * loss.kl)
    torch.testing.assert_close(loss.recon, pixel_nll(x, params, "bernoulli").sum((1, 2, 3)))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_gradients_flow_through_z_to_the_encoder(likelihood):
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(image_size=16, channels=1, latent_dim=4, base_channels=4, likelihood=likelihood))
    x = torch.rand(2, 1, 16, 16)
    mu, logvar = model.encode(x)
    z = model.reparameterize(mu, logvar)
    recon_only = pixel_nll(x, model.decode(z), likelihood, model.scale()).sum()
    recon_only.backward()
    # no KL term here: any encoder gradient must have come through z = mu + sigma * eps
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    if likelihood == "gaussian":
        assert model.log_scale.grad is not None and model.log_scale.grad.abs().sum() > 0


def test_iwae_is_above_the_elbo_and_grows_with_k(tmp_path):
    """The one IWAE, the engines' (vaekit.engine.Model.iwae): K = 1 is the ELBO estimate of one
    draw, and the bound does not decrease as K grows (on average over images)."""
    import numpy as np

    import vaekit
    from export_support import random_run

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    model = vaekit.load(run, device="cpu")
    with torch.no_grad():  # a posterior well away from the prior, so importance weights really vary
        model.net.encoder.to_stats.bias[:4] += 1.5
        model.net.encoder.to_stats.bias[4:] -= 1.0
    x = (np.random.default_rng(0).random((64, 1, 16, 16)) * 255).astype(np.uint8)
    one_draw = model.score(x, samples=1, score="neg_elbo", maps=False).neg_elbo  # -ELBO, the same seeded draw
    nll = {k: model.iwae(x, samples=k) for k in (1, 8, 64)}
    # IWAE with K=1 is the ELBO: per image the two differ only by the sampled vs closed-form KL
    # (same z), whose difference has mean 0
    diff = nll[1] - one_draw
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(len(diff)) + 1e-9
    assert nll[8].mean() <= nll[1].mean() and nll[64].mean() <= nll[8].mean()  # -log p(x) bound tightens
    assert (nll[64] < nll[1]).mean() > 0.5
    assert np.isfinite(nll[64]).all()
    with pytest.raises(ValueError):
        model.iwae(x, samples=0)


def test_bernoulli_nll_is_exact_for_saturated_logits():
    # the ONNX export once decomposed BCE-with-logits imprecisely here (0.0125 nats for 4e-6)
    logits = torch.tensor([-30.0, -12.5, -1.0, 0.0, 2.0, 12.5, 30.0], dtype=torch.float32)
    for target in (0.0, 0.3, 1.0):
        x = torch.full_like(logits, target)
        exact = torch.logaddexp(torch.zeros_like(logits, dtype=torch.float64), logits.double()) - target * logits.double()
        torch.testing.assert_close(pixel_nll(x, logits, "bernoulli").double(), exact, rtol=1e-6, atol=1e-6)
