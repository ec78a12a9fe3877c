"""A Bernoulli model's bits_per_dim is a code length only of black-and-white images: the
cross-entropy of a grey level is no probability of that 8-bit level (its 256 levels' "probabilities"
sum to far more than one), so `bits_per_dim` of an image with grey pixels is NaN, not a number
that reads as bits a coder would need (MNIST digits under a Bernoulli model printed 0.43 bits per
sub-pixel where the lossless archive needed 2.09)."""

from __future__ import annotations

import math

import numpy as np

from vaekit.inference.estimate import code_length, estimate

P = 0.3  # the fake decoder's probability of white, every pixel


def _core(xf, eps):
    nll = -(xf * math.log(P) + (1 - xf) * math.log(1 - P)).sum(1)  # (B, H, W)
    b, d = len(xf), eps.shape[-1]
    kl = np.full(b, 0.5)
    return None, kl, nll.astype(np.float32), np.zeros((b, d), np.float32), np.zeros((b, d), np.float32), np.full_like(xf, P)


def _images():
    x = np.zeros((2, 1, 4, 4), np.uint8)
    x[:, :, 1:3, 1:3] = 255
    x[1, 0, 0, 0] = 128  # one grey pixel
    return x


def test_the_bernoulli_cross_entropy_of_grey_levels_is_no_distribution_over_them():
    levels = np.arange(256) / 255
    mass = np.exp(levels * math.log(P) + (1 - levels) * math.log(1 - P)).sum()
    assert mass > 50  # Kraft: a code length's 2^-L sum to at most one


def test_bits_of_a_black_and_white_image_are_its_cross_entropy_and_of_a_grey_one_nan():
    x = _images()
    xf = x.astype(np.float64) / 255
    code = code_length("bernoulli", None)
    for samples, iwae in ((0, False), (4, False), (4, True)):
        est = estimate(_core, x, xf, 3, samples, iwae, code)
        assert math.isclose(est.code[0], est.nll[0], rel_tol=1e-12), (samples, iwae)
        assert np.isnan(est.code[1]), (samples, iwae, est.code[1])
        assert np.isfinite(est.nll[1])  # the -ELBO itself is still there, in nats


def test_the_web_tables_cell_of_bits_that_are_no_code_length_is_empty(tmp_path):
    """NaN in the Anomaly tab's table is no JSON number: the cell is left empty, as an unreadable row's."""
    import json

    import pytest

    pytest.importorskip("gradio")
    from vaekit.anomaly import ScoreRow
    from vaekit_demo.handlers import AnomalyResult

    rows = [ScoreRow("grey.png", 12.5, float("nan"), 10.0, True, 300.0, 290.0, 10.0, 40.0),
            ScoreRow("bw.png", 1.25, 0.125, 10.0, False, 30.0, 29.0, 1.0, 4.0)]
    table = AnomalyResult(rows, [], 10.0, "atypicality", tmp_path / "s.csv").table()
    assert table[0][2] is None and table[1][2] == 0.125
    json.dumps(table, allow_nan=False)
