"""The ConvVAE's shapes for any image size >= 16, and its deterministic paths."""

import pytest
import torch

from vaekit.config import ModelConfig
from vaekit.model.vae import ConvVAE, stage_sizes


@pytest.mark.parametrize("size", [16, 17, 24, 33, 50, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch,layout", [("v2", "vector"), ("v2", "grid"), ("v1", "vector")])
def test_any_size_round_trips_to_the_same_shape(size, channels, arch, layout):
    cfg = ModelConfig(image_size=size, channels=channels, latent_dim=5, base_channels=4, arch=arch, layout=layout)
    model = ConvVAE(cfg)
    x = torch.rand(2, channels, size, size)
    params, mu, logvar = model(x)
    assert params.shape == x.shape
    g = -(-(-(-size // 2)) // 2)  # a cell per 4x4 pixels, rounded up
    assert mu.shape == logvar.shape == ((2, 5) if layout == "vector" else (2, 5 * g * g))
    assert cfg.latent_shape == ((5,) if layout == "vector" else (5, g, g)) and cfg.z_dims == mu.shape[1]
    assert stage_sizes(size)[-1] <= 4


def test_gaussian_sigma_keeps_its_gradient_at_the_bound_and_logvar_cannot_overflow():
    model = ConvVAE(ModelConfig(image_size=16, latent_dim=3, base_channels=4, likelihood="gaussian"))
    with torch.no_grad():
        model.log_scale.fill_(-50.0)  # far below the bound, where a clamp would stop the gradient
    log_sigma = model.scale()
    assert torch.all(log_sigma > -6.01)  # the soft bound holds
    log_sigma.sum().backward()
    assert torch.all(model.log_scale.grad != 0)
    with torch.no_grad():  # a wild encoder output cannot reach exp() unbounded
        model.encoder.to_stats.bias.fill_(1e4)
        _, logvar = model.encode(torch.rand(2, 1, 16, 16))
    assert torch.isfinite(logvar.exp()).all() and logvar.max() <= 6.0


def test_reparameterize_is_mu_plus_sigma_eps():
    mu, logvar, eps = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[0.5, 1.0]])
    z = ConvVAE.reparameterize(mu, logvar, eps)
    torch.testing.assert_close(z, torch.tensor([[1.5, -2.0 + torch.e]]))


def test_encode_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(image_size=16, channels=1, latent_dim=3, base_channels=4)).eval()
    x = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        a, _ = model.encode(x)
        b, _ = model.encode(x[2:3])
    torch.testing.assert_close(a[2:3], b)


@pytest.mark.parametrize("bad", [dict(image_size=15), dict(channels=2), dict(latent_dim=-1), dict(likelihood="poisson"), dict(layout="spiral"), dict(arch="v9")])
def test_bad_config_names_the_value(bad):
    with pytest.raises(ValueError, match=str(list(bad.values())[0])):
        ModelConfig(**bad)


def test_mean_image_is_in_unit_range():
    for lik in ("bernoulli", "gaussian"):
        model = ConvVAE(ModelConfig(image_size=16, latent_dim=3, base_channels=4, likelihood=lik))
        m = model.mean_image(torch.randn(2, 1, 16, 16) * 5)
        assert m.min() >= 0 and m.max() <= 1


@pytest.mark.parametrize("hw", [(64, 64), (96, 80), (37, 53), (17, 16)])
def test_a_grid_model_reads_images_of_any_size(hw):
    # surfaces are trained on crops and scored whole, at their own resolution
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(image_size=32, layout="grid", likelihood="gaussian", channels=3)).eval()
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        recon, kl, pmap, mu, logvar, x_hat = model.score_parts(x, torch.zeros(2, 8 * (-(-hw[0] // 4)) * (-(-hw[1] // 4))))
    assert pmap.shape == (2, *hw) and x_hat.shape == (2, 3, *hw) and mu.shape == (2, 8 * (-(-hw[0] // 4)) * (-(-hw[1] // 4)))
    assert torch.isfinite(recon).all() and torch.isfinite(kl).all()


def test_a_grid_model_at_its_own_size_decodes_the_same_with_or_without_a_size():
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(image_size=32, layout="grid", likelihood="bernoulli")).eval()
    z = torch.randn(3, 8 * 8 * 8)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(z), model.decode(z, (32, 32)))
