"""The mathematics: closed-form KL, likelihoods, gradients through z, the IWAE bound."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence as torch_kl

from vaekit.config import ModelConfig
from vaekit.model.vae import ConvVAE
from vaekit.model.objective import kl_divergence, negative_elbo, pixel_nll


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
    """The one IWAE, the engines' (vaekit.inference.engine.Model.iwae): K = 1 is the ELBO estimate of one
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


# --- the discretised logistic (Salimans et al. 2017) ------------------------------------------

def _logistic_params(mean: float, log_s: float, n: int = 256) -> torch.Tensor:
    return torch.tensor([mean, log_s], dtype=torch.float32).view(1, 2, 1, 1).expand(n, 2, 1, 1).contiguous()


@pytest.mark.parametrize("mean,log_s", [(0.5, -3.0), (0.0, -7.0), (1.0, -7.0), (-0.4, -2.0), (1.3, -5.0), (0.2, 2.0),
                                        (0.7, -6.5)])
def test_logistic_is_a_distribution_over_the_256_levels(mean, log_s):
    """exp(-nll) over every 8-bit level sums to 1, and each nll is the exact (float64) bin mass."""
    x = (torch.arange(256, dtype=torch.float32) / 255).view(256, 1, 1, 1)
    nll = pixel_nll(x, _logistic_params(mean, log_s), "logistic").double().flatten()
    assert (nll >= 0).all()
    assert abs(torch.exp(-nll).sum().item() - 1.0) < 1e-5
    s = math.exp(log_s)
    cdf = [0.0] + [0.5 * (1 + math.tanh(0.5 * ((k + 0.5) / 255 - mean) / s)) for k in range(255)] + [1.0]
    exact = torch.tensor([cdf[k + 1] - cdf[k] for k in range(256)], dtype=torch.float64)
    big = exact > 1e-12  # where float64 differences are meaningful at all
    torch.testing.assert_close(torch.exp(-nll[big]), exact[big], rtol=1e-4, atol=1e-7)


def test_logistic_far_tails_keep_a_finite_exact_log_probability():
    # PixelCNN++ falls back to the density there; the product form stays exact in float32
    x = torch.tensor([128 / 255]).view(1, 1, 1, 1)
    params = torch.tensor([0.0, -7.0]).view(1, 2, 1, 1)  # 128 levels from the mean, scale e^-7 ~ 1/4 level
    nll = pixel_nll(x, params, "logistic").item()
    s = math.exp(-7.0)
    a, b = (128.5 / 255) / s, (127.5 / 255) / s
    log_p = -math.log1p(math.exp(-a)) - b - math.log1p(math.exp(-b)) + math.log(-math.expm1(-(a - b)))
    assert math.isfinite(nll) and abs(nll + log_p) / abs(log_p) < 1e-5


def test_logistic_numpy_edges_match_the_torch_nll():
    import numpy as np

    from vaekit.model.likelihood_np import logistic_cdf_edges

    g = torch.Generator().manual_seed(3)
    mean, log_s = torch.rand(50, generator=g) * 1.4 - 0.2, torch.rand(50, generator=g) * 6 - 6.5
    cdf = np.concatenate([np.zeros((50, 1)), logistic_cdf_edges(mean.numpy(), log_s.numpy()), np.ones((50, 1))], 1)
    probs = np.diff(cdf, axis=1)  # (50, 256)
    x = (torch.arange(256, dtype=torch.float32) / 255).view(1, 256).expand(50, 256).reshape(-1, 1, 1, 1)
    params = torch.stack([mean, log_s], 1).repeat_interleave(256, 0).view(-1, 2, 1, 1)
    p_torch = torch.exp(-pixel_nll(x, params, "logistic")).double().view(50, 256).numpy()
    big = probs > 1e-9
    np.testing.assert_allclose(p_torch[big], probs[big], rtol=2e-4, atol=1e-7)


@pytest.mark.parametrize("context", [0, 4])
def test_logistic_model_has_two_maps_per_channel_and_bounded_scale(context):
    """Two maps per channel (mean, log scale), and with a pixel context four weights more."""
    model = ConvVAE(ModelConfig(image_size=16, channels=3, latent_dim=4, base_channels=4, likelihood="logistic",
                                pixel_context=context))
    x = torch.rand(2, 3, 16, 16)
    params, mu, logvar = model(x)
    assert params.shape == (2, 3 * (2 + context), 16, 16) and model.scale() is None
    assert params[:, 3:6].min() >= -7.01 and params[:, 3:6].max() <= 2.01
    if context:
        assert params[:, 6:].abs().max() <= 1.0
    image = model.mean_image(params)
    assert image.shape == x.shape and image.min() >= 0 and image.max() <= 1
    loss = negative_elbo(x, params, mu, logvar, "logistic")
    assert torch.isfinite(loss.total).all() and (loss.recon > 0).all()
    loss.total.sum().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    if context:
        model.context_gain.fill_(0.0)  # the start of training: the neighbours' weights are off
        assert (model.decode(mu)[:, 6:] == 0).all()


def test_bernoulli_and_gaussian_decoders_are_unchanged():
    """The logistic head is extra: the other likelihoods keep one map per channel, the same
    parameters and the same outputs for the same seed (old runs load and score as before)."""
    for likelihood in ("bernoulli", "gaussian"):
        torch.manual_seed(0)
        model = ConvVAE(ModelConfig(image_size=16, channels=3, latent_dim=4, base_channels=4, likelihood=likelihood))
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert shapes["decoder.convs.6.weight"] == (3, 4, 3, 3)
        torch.manual_seed(0)
        again = ConvVAE(ModelConfig(image_size=16, channels=3, latent_dim=4, base_channels=4, likelihood=likelihood))
        z = torch.randn(2, 4)
        torch.testing.assert_close(model.decode(z), again.decoder(z), rtol=0, atol=0)


def test_old_logistic_runs_keep_independent_pixels_and_others_ignore_the_context():
    from vaekit.config import from_stored_model

    stored = {"image_size": 16, "channels": 1, "latent_dim": 4, "likelihood": "logistic", "arch": "v2", "layout": "vector"}
    assert from_stored_model(stored).context == 0  # written before the pixel context: 2 maps, as trained
    assert from_stored_model({**stored, "pixel_context": 4}).context == 4
    assert ModelConfig(likelihood="gaussian").context == 0
    with pytest.raises(Exception, match="pixel_context"):
        ModelConfig(pixel_context=3)


def test_the_context_ramps_in_over_the_first_half_of_training():
    from vaekit.training.recipe import context_gain

    gains = [context_gain(s, 100) for s in range(100)]
    assert gains[0] == 0.0 and gains[25] == pytest.approx(0.5) and gains[50:] == [1.0] * 50
    assert gains == sorted(gains)
