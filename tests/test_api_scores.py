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


def test_a_batch_of_unreadable_files_carries_what_its_request_scores(ex, tmp_path):
    """iter_scores' batch whose every file was skipped named the score at z = mu: with samples=4 it
    carried the excess's stored threshold (the other batches None), and a surface model's was
    named None."""
    from export_support import random_run

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("x.png", "y.png"):
        (bad / name).write_bytes(b"not an image")
    model = vaekit.load(ex.run)
    for kw, estimator in (({"samples": 4}, "samples"), ({}, "mean")):
        (part,) = list(model.iter_scores(bad, batch_size=4, **kw))
        full = model.score(ex.digits / "test" / "normal", maps=False, **kw)
        assert len(part.skipped) == 2 and (part.name, part.estimator, part.threshold) == (full.name, estimator, full.threshold)
    grid = vaekit.load(random_run(tmp_path / "grid", image_size=16, channels=1, latent_dim=4, base_channels=4, layout="grid"))
    (part,) = list(grid.iter_scores(bad, batch_size=4, samples=2))
    assert part.name == grid.effective_score(None, 2)[0] is not None and part.estimator == "samples"


def test_an_int8_exports_scores_say_their_threshold_is_the_float_models(ex, tmp_path):
    """anomaly-score says beside an int8 export's threshold that it was set on the float32 model; the
    API's Scores carried that threshold with no note."""
    from vaekit.export import export

    q = tmp_path / "q" / "m.onnx"
    export(ex.run, q, quantize="int8", images=ex.digits / "train")
    s = vaekit.load(q).score(ex.digits / "test" / "normal", maps=False)
    assert s.threshold is not None and "set on the float32 model" in s.note
    assert vaekit.load(ex.onnx).score(ex.digits / "test" / "normal", maps=False).note is None  # float32: none
