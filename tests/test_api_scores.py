"""`Model.score` says which stored threshold applies to the score it computed (h5, a notebook user):
with `samples=8` the default score becomes the excess (nats) while `model.info.threshold` is the
atypicality's (sd²), and the README's `s.score > model.info.threshold` flagged 36 of 36 normal digits."""

from __future__ import annotations

import pytest

import vaekit
from export_support import exported


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    return exported(tmp_path_factory)


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_scores_carry_the_threshold_that_applies_and_why_the_score_changed(ex, engine):
    model = vaekit.load(ex.run if engine == "torch" else ex.onnx)
    normal = ex.digits / "test" / "normal"
    s = model.score(normal, maps=False)
    assert s.name == model.info.score and s.threshold == model.info.threshold and s.note is None
    drawn = model.score(normal, samples=4, maps=False)
    assert drawn.name == "excess" and drawn.threshold is None  # no stored threshold is of posterior draws
    assert "posterior draws" in drawn.note
    parts = model.score(normal, score="neg_elbo", maps=False)
    assert parts.threshold == model.info.thresholds["neg_elbo"] and parts.note is None
    for part in model.iter_scores(normal, batch_size=4, samples=4):
        assert part.threshold is None and "posterior draws" in part.note
