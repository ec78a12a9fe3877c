"""A Gaussian model's bits/dim is a code length: its density discretised to the 8-bit levels
(vaekit.model.likelihood_np.gaussian_code_nll), checked against torch's log_ndtr."""

from __future__ import annotations

import math

import numpy as np
import torch

from vaekit.model.likelihood_np import LEVELS, gaussian_code_nll, log_normal_tail


def _one_pixel(level: int, mean: float, log_sigma: float) -> float:
    x = np.full((1, 1, 1, 1), level / (LEVELS - 1))
    return float(gaussian_code_nll(x, np.full_like(x, mean), [log_sigma])[0])


def test_the_levels_probabilities_sum_to_one_whatever_the_mean_and_sigma():
    for mean in (-0.3, 0.0, 0.37, 0.999, 1.4):
        for log_sigma in (-9.0, -5.0, -2.0, 1.0):
            p = [math.exp(-_one_pixel(k, mean, log_sigma)) for k in range(LEVELS)]
            assert math.isclose(sum(p), 1.0, rel_tol=1e-6), (mean, log_sigma, sum(p))


def test_each_level_costs_what_torch_says_deep_in_both_tails():
    rng = np.random.default_rng(0)
    x = rng.integers(0, LEVELS, (2, 3, 5, 7)).astype(np.float64) / (LEVELS - 1)
    mean = np.clip(x + rng.normal(0, 0.3, x.shape), -0.2, 1.2)  # residuals up to hundreds of sigmas
    log_sigma = np.array([-6.0, -3.0, -1.0])
    s = torch.tensor(log_sigma).exp().view(1, -1, 1, 1)
    lo = (torch.from_numpy(x - 0.5 / 255 - mean)) / s
    hi = (torch.from_numpy(x + 0.5 / 255 - mean)) / s
    level = torch.from_numpy(np.rint(x * 255))
    lo, hi = torch.where(level == 0, -torch.inf, lo), torch.where(level == 255, torch.inf, hi)
    up = lo > 0
    a, b = torch.where(up, -hi, lo), torch.where(up, -lo, hi)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    expect = -(lb + torch.log1p(-torch.exp(la - lb))).sum((1, 2, 3)).numpy()
    got = gaussian_code_nll(x, mean, log_sigma)
    assert np.all(np.isfinite(got)) and expect.max() > 1e4  # some pixels sit far out in a tail
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    u = np.array([0.0, 0.5, 3.0, 40.0, 1e3])
    np.testing.assert_allclose(log_normal_tail(u), torch.special.log_ndtr(-torch.from_numpy(u)).numpy(), rtol=1e-6)


def test_a_sharp_density_below_zero_nats_still_codes_at_no_less_than_zero():
    x = np.full((1, 1, 4, 4), 100 / 255)
    log_sigma = -9.0  # far under one level: the density at its mean is e^9 / sqrt(2 pi) per value
    density = 16 * (log_sigma + 0.5 * math.log(2 * math.pi))
    assert density < -100
    exact = gaussian_code_nll(x, x, [log_sigma])[0]
    assert 0 <= exact < 1e-9  # the whole mass on the right level: nothing to pay
    # one level off: the nearest edge of its bin 16 sigmas out, -log P(N > 15.9) = 130 nats a value
    off = gaussian_code_nll(x, x + 1 / 255, [log_sigma])[0]
    assert math.isclose(off, -16 * float(torch.special.log_ndtr(torch.tensor(-0.5 / 255 / math.exp(log_sigma)))), rel_tol=1e-6)


def test_a_reconstruction_that_is_not_a_number_codes_as_nan_and_an_empty_batch_as_nothing():
    """A diverged decoder's NaN was billed as a sure level (0 nats): bits/dim looked fine while the
    -ELBO was NaN."""
    x = np.full((2, 1, 3, 3), 0.5)
    mean = x.copy()
    mean[1, 0, 1, 1] = np.nan
    got = gaussian_code_nll(x, mean, [-3.0])
    assert np.isfinite(got[0]) and np.isnan(got[1])
    assert gaussian_code_nll(np.zeros((0, 3, 4, 4)), np.zeros((0, 3, 4, 4)), [-2.0] * 3).shape == (0,)
