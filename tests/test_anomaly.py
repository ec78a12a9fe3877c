"""Anomaly detection: deterministic scores, the IWAE bound, the entropy floor, thresholds stored
in the run, CSV/JSON rows, heat maps, and evaluation metrics against scikit-learn."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vaekit
from vaekit import anomaly
from vaekit.training import rundir
from vaekit.config import ModelConfig, TrainConfig
from vaekit.inference.engine import pixel_floor
from vaekit.sample_data import write_shapes
from vaekit.train import train
from vaekit.training.splits import split3

SIZE = 32


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Synthetic washers (RGB, 32 px) and a tiny VAE trained on the defect-free ones (~5 s)."""
    root = tmp_path_factory.mktemp("parts")
    write_shapes(root, n_train=48, n_test_normal=12, n_test_anomalous=12, size=SIZE, seed=0)
    # 45 steps: too few for the default cosine schedule to get anywhere, so a constant rate here;
    # held-out splits (folds=0), whose sizes the tests below count on (cross-fitting: its own test);
    # parts on a fixture with small defects: no warped training copies, which would teach the model
    # that a slightly rotated or shifted part is normal (docs/detection.md)
    _, data = train(root / "train", root / "run", ModelConfig(image_size=SIZE, latent_dim=8, base_channels=8),
                    TrainConfig(epochs=15, batch_size=16, lr=3e-3, seed=3, device="cpu", schedule="constant", folds=0,
                                augment="off"))
    return root, data


@pytest.fixture(scope="module")
def model(parts):
    return vaekit.load(parts[0] / "run")


@pytest.fixture(scope="module")
def test_images(parts, model):
    root = parts[0]
    good = model.load_images(root / "test" / "normal").images
    bad = model.load_images(root / "test" / "anomalous").images
    return good, bad


# --- the score -------------------------------------------------------------------------------

def test_scores_are_identical_across_runs_and_equal_across_batch_sizes(parts, model, test_images):
    x = np.concatenate(test_images)  # (24, 3, 32, 32)
    first = model.score(x)
    again = vaekit.load(parts[0] / "run").score(x)  # a fresh load: a new "run" of the program
    np.testing.assert_array_equal(first.score, again.score)
    np.testing.assert_array_equal(first.pixel_map, again.pixel_map)
    for batch_size in (1, 5, 64):
        m = vaekit.load(parts[0] / "run")
        m.batch_size = batch_size
        s = m.score(x)
        # conv/GEMM kernels may sum in another order for another batch size: float32 rounding only
        # (the atypicality is a z-score of a difference of large sums: ~1e-5 of a standard deviation)
        np.testing.assert_allclose(s.score, first.score, rtol=1e-6, atol=1e-4)
        np.testing.assert_allclose(s.excess, first.excess, rtol=1e-6)
        np.testing.assert_allclose(s.pixel_map, first.pixel_map, rtol=1e-4, atol=1e-5)
    # the sampled estimator draws each image's noise from its own pixels: same in any order or run
    k = model.score(x, samples=4)
    np.testing.assert_array_equal(k.score, vaekit.load(parts[0] / "run").score(x, samples=4).score)
    rev = model.score(x[::-1].copy(), samples=4)
    np.testing.assert_allclose(rev.score[::-1], k.score, rtol=1e-6)
    assert not np.allclose(k.neg_elbo, first.neg_elbo)  # it really is another estimator


def test_iwae_bound_is_at_least_the_elbo(model, test_images):
    x = np.concatenate(test_images)
    nll_iwae = model.iwae(x, samples=16)  # -log p(x) estimates, nats
    elbo_k = model.score(x, samples=16, score="neg_elbo")
    # same seeded draws: log mean exp(log w) >= mean log w (Jensen), image by image
    assert np.all(nll_iwae <= elbo_k.neg_elbo + 1e-6)
    assert np.mean(nll_iwae) < np.mean(elbo_k.neg_elbo)
    # and it is the IWAE of the objective module, whose bound on log p(x) is never below the ELBO
    np.testing.assert_array_equal(nll_iwae, model.iwae(x, samples=16))
    via_score = model.score(x, samples=16, score="excess", iwae=True)
    np.testing.assert_allclose(via_score.score, nll_iwae - via_score.floor)
    with pytest.raises(ValueError, match="samples >= 1"):
        model.score(x, samples=0, iwae=True)
    with pytest.raises(ValueError, match="neg_elbo or excess"):
        model.score(x, samples=4, score="recon", iwae=True)


def test_the_floor_is_the_nll_of_a_perfect_reconstruction():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 2, 4, 5)).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, 1.0, 0.5]
    # Bernoulli: BCE(x, logit(x)) is the binary entropy; 0 and 1 cost nothing
    xt = torch.from_numpy(x).double().clamp(1e-12, 1 - 1e-12)
    expect = F.binary_cross_entropy(xt, torch.from_numpy(x).double(), reduction="none").sum(1).numpy()
    np.testing.assert_allclose(pixel_floor(x, "bernoulli"), expect, rtol=1e-6, atol=1e-9)
    assert pixel_floor(np.array([[[[0.0, 1.0]]]]), "bernoulli").tolist() == [[[0.0, 0.0]]]
    assert pixel_floor(np.full((1, 1, 1, 1), 0.5), "bernoulli")[0, 0, 0] == pytest.approx(math.log(2))
    # Gaussian: the same constant for every image, log sigma + log(2 pi) / 2 per channel
    g = pixel_floor(x, "gaussian", [math.log(0.1), math.log(0.2)])
    assert g.shape == (3, 4, 5)
    np.testing.assert_allclose(g, math.log(0.1) + math.log(0.2) + math.log(2 * math.pi))
    with pytest.raises(ValueError, match="log_scale"):
        pixel_floor(x, "gaussian")


def _discretised_bits(model, x: np.ndarray) -> np.ndarray:
    """The -ELBO at z = mu in bits per sub-pixel, its reconstruction term the probability of each
    8-bit level under N(x_hat, sigma^2) (levels 0 and 255 take the tails), by torch's log_ndtr."""
    xf = x.astype(np.float64) / 255
    _, kl, _, _, _, x_hat = model._score_core(xf.astype(np.float32), np.zeros((len(x), model.info.latent_dim), np.float32))
    sigma = torch.tensor(model.info.log_scale, dtype=torch.float64).exp().view(1, -1, 1, 1)
    lo = (torch.from_numpy(xf) - 0.5 / 255 - torch.from_numpy(x_hat).double()) / sigma
    hi = lo + (1 / 255) / sigma
    lo = torch.where(torch.from_numpy(x) == 0, -torch.inf, lo)
    hi = torch.where(torch.from_numpy(x) == 255, torch.inf, hi)
    up = lo > 0  # log(Phi(b) - Phi(a)) from the side where neither is near 1
    a, b = torch.where(up, -hi, lo), torch.where(up, -lo, hi)
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    log_p = lb + torch.log1p(-torch.exp(la - lb))
    return (-log_p.sum((1, 2, 3)).numpy() + kl) / (x[0].size * math.log(2))


def test_excess_is_neg_elbo_minus_the_floor_and_never_negative(model, test_images):
    x = np.concatenate(test_images)
    assert model.score(x).name == "atypicality"  # the default
    s = model.score(x, score="excess")
    assert s.name == "excess" and s.estimator == "mean"
    np.testing.assert_allclose(s.excess, s.neg_elbo - s.floor)
    np.testing.assert_array_equal(s.score, s.excess)
    # bits/dim is the -ELBO's, whichever score is chosen (not the excess's), as a code length of
    # the 8-bit pixels: this Gaussian's density discretised to the 256 levels
    assert model.info.likelihood == "gaussian"
    np.testing.assert_allclose(s.bits_per_dim, _discretised_bits(model, x), rtol=1e-6)
    assert s.bits_per_dim.min() > 0 and not np.allclose(s.bits_per_dim, s.neg_elbo / (3 * SIZE * SIZE * math.log(2)))
    # recon - floor = sum of KL(Bern(x) || Bern(x_hat)) >= 0, so the excess map is >= 0 too
    assert np.all(s.excess >= s.kl - 1e-3)
    assert s.pixel_map.min() > -1e-4
    np.testing.assert_allclose(s.pixel_map.reshape(len(x), -1).sum(1), s.recon - s.floor, rtol=1e-4)
    raw = model.score(x, score="neg_elbo")
    np.testing.assert_array_equal(raw.score, s.neg_elbo)
    np.testing.assert_allclose(raw.pixel_map.reshape(len(x), -1).sum(1), s.recon, rtol=1e-5)


def test_anomalous_parts_score_higher_than_normal_ones(model, test_images):
    from sklearn.metrics import roc_auc_score

    good, bad = test_images
    g, b = model.score(good).score, model.score(bad).score
    # another object (here the normal parts in negative) is what the default score is built to find
    other = model.score(255 - good).score
    assert roc_auc_score(np.r_[np.zeros(len(g)), np.ones(len(other))], np.r_[g, other]) > 0.95
    # a small defect on an aligned part barely moves it (docs/detection.md, "Aligned parts with small
    # defects": image AUROC 0.46 at 64 px; here 0.60-0.80 over six training seeds): on average only
    assert b.mean() > g.mean()
    # these RGB photographs-like parts get the Gaussian likelihood, whose floor is one constant:
    # the excess then ranks images exactly as the plain -ELBO does
    assert model.info.likelihood == "gaussian"
    raw = model.score(bad, score="neg_elbo").score - model.score(bad, score="excess").score
    np.testing.assert_allclose(raw, raw[0])


# --- thresholds ------------------------------------------------------------------------------

def test_threshold_round_trip_through_the_run_directory(parts, model):
    root, data = parts
    cfg = json.loads((root / "run" / "config.json").read_text())
    section = cfg["anomaly"]
    assert section["score"] == "atypicality" and section["estimator"] == "mean"
    # the threshold comes from the calibration split, which neither picked the epoch nor fitted the score
    assert section["source"] == "calibration" and section["threshold_quantile"] == 0.99
    _, val_idx, cal_idx = split3(len(data.paths), 0.1, 0.1, seed=3)
    assert section["n"] == len(cal_idx) == 5 and not set(cal_idx) & set(val_idx)
    # the stored scores are what the engine gives the calibration images now
    val = model.score(np.asarray(data.images[cal_idx]))
    np.testing.assert_allclose(section["scores"], val.score, rtol=1e-9)
    # the conformal order statistic: the ceil((n + 1) q)-th smallest, here (n = 5) the largest
    assert section["threshold"] == pytest.approx(val.score.max(), rel=2e-5)
    assert section["expected_fpr"] == pytest.approx(1 / 6)
    assert set(section["by_score"]) == {"atypicality", "excess", "neg_elbo", "recon", "kl"}
    np.testing.assert_allclose(section["by_score"]["kl"]["scores"], val.kl, rtol=1e-9)
    assert model.info.threshold == section["threshold"] and model.info.score == "atypicality"
    assert model.info.thresholds["neg_elbo"] == section["by_score"]["neg_elbo"]["threshold"]
    assert section["quantiles"]["0.5"] == pytest.approx(np.median(val.score))


@pytest.mark.slow
def test_few_images_are_cross_fitted_so_every_threshold_score_is_out_of_sample(tmp_path):
    # 20 images: all train the run's model, and each one's calibration score comes from a fold
    # model that never saw it; those score higher than the run's model scores its own training
    # images, which a threshold fitted in-sample would have been (vaekit 0.2: 28.8% flagged)
    write_shapes(tmp_path / "d", n_train=20, n_test_normal=1, n_test_anomalous=1, size=16, seed=2)
    train(tmp_path / "d" / "train", tmp_path / "run", ModelConfig(image_size=16, latent_dim=4, base_channels=4),
          TrainConfig(epochs=40, batch_size=8, device="cpu"))
    section = rundir.read_config(tmp_path / "run")["anomaly"]
    assert section["source"] == "cross-fitted" and section["n"] == 20
    m = vaekit.load(tmp_path / "run")
    in_sample = m.score(tmp_path / "d" / "train", score="excess").excess
    out_of_sample = np.array(section["by_score"]["excess"]["scores"])
    assert np.median(out_of_sample) > np.median(in_sample)
    # 20 scores are too few for a 1% rate by rank: the threshold goes beyond the largest, and says so
    assert section["threshold"] > max(section["scores"])
    assert section["expected_fpr"] == pytest.approx(1 / 21) and section["fpr_bound"] == pytest.approx(1 / 21)


def test_set_threshold_by_quantile_fpr_or_value(parts, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(parts[0] / "run", run)
    scores = np.array(rundir.read_config(run)["anomaly"]["scores"])
    x = vaekit.load(run).load_images(parts[0] / "test" / "anomalous").images[:6]
    before = vaekit.load(run).score(x)
    new = anomaly.set_threshold(run, target_fpr=0.2)
    k = int(np.ceil(6 * 0.8))  # 5 scores: the 5th smallest
    assert new["threshold"] == pytest.approx(np.sort(scores)[k - 1], rel=2e-5) and new["threshold_quantile"] == pytest.approx(0.8)
    m = vaekit.load(run)
    assert m.info.threshold == pytest.approx(np.sort(scores)[k - 1], rel=2e-5)
    anomaly.set_threshold(run, quantile=0.5)
    assert vaekit.load(run).info.threshold == pytest.approx(np.sort(scores)[2], rel=2e-5)  # ceil(6 * 0.5) = 3rd
    anomaly.set_threshold(run, value=float(np.sort(scores)[1]))
    stored = rundir.read_config(run)["anomaly"]
    assert stored["threshold"] == float(np.sort(scores)[1]) and stored["threshold_quantile"] == pytest.approx(2 / 5)
    assert stored["expected_fpr"] == pytest.approx(4 / 6)  # 3 of 5 above it, and the new one: (1 + 3) / 6
    assert "fpr_bound" not in stored  # the quantile's bound (1/6) stayed beside a value's 4/6 (h4, 2026-12-08)
    # the threshold moved, the score did not: the atypicality keeps its statistics (they were dropped once)
    after = vaekit.load(run).score(x)
    assert after.name == before.name == "atypicality"
    np.testing.assert_array_equal(after.score, before.score)
    with pytest.raises(ValueError, match="exactly one"):
        anomaly.set_threshold(run, quantile=0.9, target_fpr=0.1)
    with pytest.raises(ValueError, match=r"in \(0, 1\), got 1.5"):
        anomaly.set_threshold(run, quantile=1.5)


def test_thresholds_set_anew_from_new_normal_images(parts, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(parts[0] / "run", run)
    before = rundir.read_config(run)["anomaly"]
    normal = parts[0] / "test" / "normal"
    m = vaekit.load(run)
    scores = m.score(normal, maps=False)
    # without a quantile: the stored one (0.99), here beyond the largest of 12 new scores
    first = anomaly.threshold_from_normal(run, normal)
    assert first["threshold_quantile"] == 0.99 and first["threshold"] >= scores.score.max()
    new = anomaly.threshold_from_normal(run, normal, quantile=0.5)
    # the threshold is the conformal order statistic of the new images' scores, for every score
    k = int(np.ceil(13 * 0.5))  # 12 new scores: the 7th smallest
    assert new["source"] == "new normal" and new["n"] == 12 and new["threshold_quantile"] == 0.5
    assert new["threshold"] == pytest.approx(np.sort(scores.score)[k - 1], rel=2e-5)
    assert new["by_score"]["neg_elbo"]["threshold"] == pytest.approx(np.sort(scores.neg_elbo)[k - 1], rel=2e-5)
    assert new["expected_fpr"] == pytest.approx(6 / 13)
    assert vaekit.load(run).info.threshold == pytest.approx(new["threshold"])
    # the score itself is unchanged: its statistics stay
    assert rundir.read_config(run)["anomaly"]["calibration"] == before["calibration"]
    np.testing.assert_array_equal(vaekit.load(run).score(normal, maps=False).score, scores.score)
    # evaluate on the very images that set it says its FPR there is by construction (it printed
    # 'FPR at threshold 0.0000' and note null), also after the threshold moved by quantile; not
    # with a threshold given, nor on other images
    anomaly.set_threshold(run, quantile=0.6)
    said = "the stored threshold was set on the images in"
    ev = anomaly.evaluate(vaekit.load(run), normal, parts[0] / "test" / "anomalous")
    assert said in ev.note and "by construction" in ev.note, ev.note
    assert said not in (anomaly.evaluate(vaekit.load(run), normal, parts[0] / "test" / "anomalous", threshold=1.0).note or "")
    assert said not in (anomaly.evaluate(vaekit.load(run), parts[0] / "test" / "anomalous", normal).note or "")
    anomaly.set_threshold(run, value=float(np.median(scores.score)))  # set by hand: no longer those images' quantile
    assert said not in (anomaly.evaluate(vaekit.load(run), normal, parts[0] / "test" / "anomalous").note or "")
    # images the model trained on, or a folder holding the run, are refused; nothing is written
    stored = (run / "config.json").read_bytes()
    with pytest.raises(ValueError, match="holds images the model trained on"):
        anomaly.threshold_from_normal(run, parts[0] / "train")
    with pytest.raises(ValueError, match="is or holds the run directory"):
        anomaly.threshold_from_normal(run, tmp_path)
    train = sorted((parts[0] / "train").rglob("*.png"))
    for i, how in enumerate(("copy", "link")):  # a training image under another name: a copy, a hard link
        other = tmp_path / f"new_{how}"
        shutil.copytree(normal, other)
        (shutil.copyfile if how == "copy" else os.link)(train[i], other / f"z_{how}.png")
        with pytest.raises(ValueError, match=f"z_{how}.png is a training image"):
            anomaly.threshold_from_normal(run, other)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read .*broken.png"):
        anomaly.threshold_from_normal(run, tmp_path / "bad")
    assert (run / "config.json").read_bytes() == stored
    # a generator of folders was used up by the checks ("no inputs given"), a list of arrays taken
    # for folders (a raw TypeError): both give the thresholds a folder gives
    again = anomaly.threshold_from_normal(run, (p for p in [normal]), quantile=0.5)
    assert again["threshold"] == pytest.approx(new["threshold"])
    arrays = anomaly.threshold_from_normal(run, list(m.load_images(normal).images), quantile=0.5)
    assert arrays["threshold"] == pytest.approx(new["threshold"], rel=1e-5)
    with pytest.raises(ValueError, match="maps must be True or False"):
        m.score(normal, maps="no")
    # after a fixed value, new normal images set the thresholds at the quantile the others kept (it was 0.99)
    anomaly.set_threshold(run, quantile=0.5)
    anomaly.set_threshold(run, value=float(scores.score.max()) + 1)
    assert anomaly.threshold_from_normal(run, normal)["threshold_quantile"] == 0.5


def test_copies_among_new_normal_images_are_counted_once(parts, tmp_path):
    """30 copies of one normal image set a threshold "from 30 new normal scores", at most 3.2%
    promised, which flagged 72% of new normal digits (their largest is one image's score); as in
    training, each distinct image counts once, and the table says how many were copies."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(parts[0] / "run", run)
    normal = sorted((parts[0] / "test" / "normal").glob("*.png"))
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(30):
        shutil.copyfile(normal[0], folder / f"copy{i:02d}.png")
    one = anomaly.threshold_from_normal(run, folder)
    assert one["n"] == 1 and one["exact_copies"] == 29 and one["expected_fpr"] == pytest.approx(0.5)
    assert all(len(v["scores"]) == 1 for v in one["by_score"].values())
    for p in normal[1:4]:
        shutil.copyfile(p, folder / p.name)
    four = anomaly.threshold_from_normal(run, folder, quantile=0.5)
    assert four["n"] == 4 and four["exact_copies"] == 29
    distinct = anomaly.threshold_from_normal(run, parts[0] / "test" / "normal", quantile=0.5)
    assert "exact_copies" not in distinct and distinct["n"] == len(normal)
    arrays = vaekit.load(run).load_images(folder).images  # in memory: the same pixels are one image too
    assert anomaly.threshold_from_normal(run, list(arrays), quantile=0.5)["n"] == 4


def test_an_older_runs_relative_training_folder_is_still_refused_from_another_directory(parts, tmp_path, monkeypatch):
    import json
    import shutil

    shutil.copytree(parts[0], tmp_path / "p")
    run = tmp_path / "p" / "run"
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"]["root"] = "train"  # as typed in p/ (runs before 2026-12-04 stored the path as typed)
    (run / "config.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)  # not where it trained
    with pytest.raises(ValueError, match="holds images the model trained on"):
        anomaly.threshold_from_normal(run, tmp_path / "p" / "train" / ".")


@pytest.mark.parametrize("n, q", [(5, 0.99), (40, 0.9), (200, 0.99), (300, 0.95)])
def test_expected_false_positive_rate_matches_a_simulation(n, q):
    # enough scores (or too few for a tail): the threshold is an order statistic, and the rate
    # it promises is exact whatever the distribution
    rng = np.random.default_rng(n)
    trials = 40_000
    scores = rng.standard_normal((trials, n + 1))
    thresholds = np.sort(scores[:, :n], axis=1)[:, anomaly.conformal_rank(n, q) - 1]
    simulated = float(np.mean(scores[:, n] > thresholds))
    assert anomaly.expected_fpr(n, q) == pytest.approx(simulated, abs=4 * np.sqrt(simulated / trials) + 1e-3)
    # the order statistic, a hair above it (the same image scored again moves in the last bits)
    assert thresholds[0] < anomaly.threshold_of(scores[0, :n], q)[0] == pytest.approx(thresholds[0], rel=2e-5, abs=2e-5)
    assert anomaly.expected_fpr(n, q) <= 1 - q or anomaly.conformal_rank(n, q) == n  # the promise, or the largest


@pytest.mark.parametrize("draw", ["normal", "gamma", "chi2"])
def test_twenty_scores_give_a_threshold_near_the_asked_rate_not_the_rate_of_their_largest(draw):
    # the largest of 20 flags 1/21 of new normal images on average, and over 5% one time in
    # three; the tail beyond it keeps the rate near 1% and rarely above 5%
    rng = np.random.default_rng(0)
    gen = {"normal": rng.standard_normal, "gamma": lambda k: rng.gamma(2.0, 1.0, k),
           "chi2": lambda k: rng.chisquare(3, k)}[draw]
    rates, beyond = [], 0
    for _ in range(400):
        scores = gen(20)
        t, expected, bound = anomaly.threshold_of(scores, 0.99)
        rates.append(float(np.mean(gen(4000) > t)))
        assert bound == pytest.approx(1 / 21) and t >= scores.max()
        beyond += t > scores.max()
        assert expected == pytest.approx(1 / 21)  # what the largest promises: the tail's rate is a guess
    assert beyond > 300  # the tail, as a rule
    assert np.mean(rates) < 0.025 and np.mean(np.array(rates) > 0.05) < 0.12


def test_the_few_scores_warning_appears_only_where_the_rate_is_well_above_the_named_one():
    assert anomaly.few_scores_note(14, 0.99) == ("14 calibration scores are too few for a 1% false-positive rate "
                                                 "by rank (that needs 99): the threshold is the largest or, further, "
                                                 "their fitted tail's quantile; expect at most 6.7% on average")
    assert anomaly.few_scores_note(1, 0.9, "training") == ("1 training score is too few for a 10% false-positive "
                                                           "rate by rank (that needs 9): the threshold is the largest, "
                                                           "expect 50%")
    assert anomaly.few_scores_note(99, 0.99) is None and anomaly.few_scores_note(98, 0.99) is not None
    assert anomaly.few_scores_note(1000, 0.99) is None and anomaly.few_scores_note(14, 0.5) is None
    assert anomaly.few_scores_note(0, 0.99) is None and anomaly.few_scores_note(14, None) is None
    assert anomaly.few_scores_note(14, 1.0) is None  # a fixed value above every score: no quantile rate
    # five cross-fitted scores: each from a fold model of four images, and 28-66% of new normal
    # digits were flagged where 17% was printed (a helper's measurement, 2026-12-07)
    assert anomaly.few_scores_note(5, 0.99, "cross-fitted").endswith(
        "expect 17%; each fold model trained on fewer images still, and new normal images score higher under "
        "the run's model: expect more")
    assert anomaly.few_scores_note(5, 0.99, "calibration").endswith("expect 17%")


def test_a_threshold_from_the_training_images_own_scores_says_new_images_score_higher():
    """With --val-fraction 0 --calibration-fraction 0 the threshold is a quantile of scores of the
    images the model trained on, and the rate printed beside it held only for those."""
    few = {"n": 9, "threshold_quantile": 0.99, "source": "training"}
    assert anomaly.section_note(few).endswith("new normal images score higher: more of them will be flagged")
    assert anomaly.section_note({**few, "n": 500}).startswith("These are scores of the images the model trained on")
    assert anomaly.section_note({**few, "n": 500, "source": "calibration"}) is None
    assert anomaly.section_note({**few, "fixed": True}) is None
    # --calibration-fraction 0: validation images fitted the atypicality's statistics and set its
    # threshold (one image: its every z 0, its score exactly 16; 90% of new normal images flagged)
    val = {**few, "n": 500, "source": "validation", "score": "atypicality"}
    assert anomaly.section_note(val).startswith("The atypicality's statistics were fitted on these same validation")
    assert anomaly.section_note({**val, "score": "neg_elbo"}) is None  # out of sample for the model itself


def test_a_threshold_from_few_scores_says_what_false_positive_rate_to_expect(parts, model, tmp_path):
    import shutil

    assert len(model.info.val_scores) == 5
    _, source = anomaly.resolve_threshold(model, "excess", "mean", None)
    assert source == ("stored: quantile 0.99 of 5 calibration scores; 5 calibration scores are too few "
                      "for a 1% false-positive rate by rank (that needs 99): the threshold is the largest, expect 17%")
    # a threshold set to a value is not a quantile estimate: no rate is promised, none is warned about
    run = tmp_path / "run"
    shutil.copytree(parts[0] / "run", run)
    anomaly.set_threshold(run, value=max(model.info.val_scores) + 1.0)
    fixed = vaekit.load(run)
    _, source = anomaly.resolve_threshold(fixed, fixed.info.score, "mean", None)
    assert source == "stored: a fixed value, 0 of 5 calibration scores above it"
    # the other scores keep their thresholds, at the quantile they had (they were refitted at the
    # fixed value's share: a value below every score put them at quantile "0", flagging every image)
    assert fixed.info.score != "excess"
    t_excess, before = anomaly.resolve_threshold(model, "excess", "mean", None)
    assert anomaly.resolve_threshold(fixed, "excess", "mean", None) == (t_excess, before)
    anomaly.set_threshold(run, value=-5.0)  # below every score: all five above, not "quantile 0"
    fixed = vaekit.load(run)
    _, source = anomaly.resolve_threshold(fixed, fixed.info.score, "mean", None)
    assert source == "stored: a fixed value, 5 of 5 calibration scores above it"
    assert anomaly.resolve_threshold(fixed, "excess", "mean", None) == (t_excess, before)
    anomaly.set_threshold(run, quantile=0.5)  # a quantile moves every score again
    moved = vaekit.load(run)
    assert moved.info.thresholds["excess"] < t_excess and not moved.info.threshold_fixed


def test_score_images_flags_against_the_threshold(parts, model):
    root = parts[0]
    report = anomaly.score_images(model, [root / "test" / "normal", root / "test" / "anomalous"])
    assert len(report.rows) == 24 and report.skipped == []
    assert report.threshold == model.info.threshold and report.threshold_source.startswith("stored")
    for r in report.rows:
        assert r.anomalous == (r.score > r.threshold) and r.threshold == report.threshold
    assert report.names[0] == "normal/part_0000.png" and report.names[12] == "anomalous/part_0000.png"
    given = anomaly.score_images(model, root / "test" / "anomalous", threshold=-1.0)
    assert given.n_anomalous == 12 and given.threshold_source == "given"
    assert given.names[0] == "part_0000.png"
    # stored thresholds hold for the deterministic score only
    sampled = anomaly.score_images(model, root / "test" / "normal", samples=2)
    assert sampled.threshold is None and all(r.anomalous is None for r in sampled.rows)
    assert "--threshold" in sampled.threshold_source


def test_bad_files_are_skipped_and_other_sizes_converted(parts, model, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    good = Image.open(parts[0] / "test" / "normal" / "part_0000.png")
    good.resize((80, 64)).convert("L").save(folder / "gray_wide.png")  # other size, other channels
    good.save(folder / "same.png")
    (folder / "broken.png").write_text("not really a PNG")
    report = anomaly.score_images(model, folder)
    assert [r.path for r in report.rows] == [str(folder / "gray_wide.png"), str(folder / "same.png")]
    assert [(p.name, why) for p, why in report.skipped] == [("broken.png", "not an image")]
    assert report.images.shape == (2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="no usable image"):
        anomaly.score_images(model, folder / "broken.png")


# --- output files ----------------------------------------------------------------------------

def test_csv_and_json_rows(parts, model, tmp_path):
    report = anomaly.score_images(model, parts[0] / "test" / "anomalous")
    anomaly.write_scores(tmp_path / "s.csv", report, model)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert list(rows[0]) == ["path", "score", "bits_per_dim", "threshold", "anomalous", "neg_elbo", "recon", "kl", "excess"]
    assert len(rows) == 12
    for row, r in zip(rows, report.rows):
        assert row["path"] == r.path and float(row["score"]) == r.score and float(row["threshold"]) == r.threshold
        assert row["anomalous"] == ("true" if r.anomalous else "false")
        assert float(row["bits_per_dim"]) == pytest.approx(r.bits_per_dim) and r.bits_per_dim > 0
    anomaly.write_scores(tmp_path / "s.json", report, model)
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["score"] == "atypicality" and doc["threshold"] == report.threshold and doc["n_images"] == 12
    assert doc["engine"] == "torch" and doc["fingerprint"] == model.info.fingerprint
    assert set(doc["images"][0]) == set(anomaly.ROW_FIELDS)
    assert doc["n_anomalous"] == sum(i["anomalous"] for i in doc["images"])
    # without a threshold the flag is an empty cell / null
    none = anomaly.score_images(model, parts[0] / "test" / "anomalous", samples=1)
    assert anomaly.rows_csv(none.rows).splitlines()[1].split(",")[3:5] == ["", ""]
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        anomaly.write_scores(tmp_path / "s.txt", report)


def test_heat_maps_mirror_the_input_names(parts, model, tmp_path):
    import shutil

    for side in ("a", "b"):  # two inputs whose folders have the same name
        shutil.copytree(parts[0] / "test" / "anomalous", tmp_path / side / "incoming")
    report = anomaly.score_images(model, [tmp_path / "a" / "incoming", tmp_path / "b" / "incoming"])
    written = anomaly.write_maps(tmp_path / "maps", report)
    assert len(written) == 24 and written[0] == tmp_path / "maps" / "incoming" / "part_0000.png"
    assert written[12] == tmp_path / "maps" / "incoming" / "part_0000-1.png"  # kept apart, not overwritten
    assert len(set(written)) == 24 and all(p.is_file() for p in written)
    img = Image.open(written[0])
    assert img.mode == "RGB" and img.size == (128, 128)  # 32 px enlarged 4x


# --- evaluation ------------------------------------------------------------------------------

def test_metrics_agree_with_scikit_learn_on_a_hand_made_case():
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

    labels = [0, 0, 0, 1, 1, 1]
    scores = [1.0, 2.0, 4.0, 3.0, 5.0, 6.0]
    m = anomaly.image_metrics(labels, scores, threshold=3.5)
    # by hand: 8 of the 9 (anomalous, normal) pairs are ordered right
    assert m["auroc"] == pytest.approx(8 / 9) == roc_auc_score(labels, scores)
    # precision at each anomaly in score order: 1/1, 2/2, 3/4
    assert m["auprc"] == pytest.approx((1 + 1 + 0.75) / 3) == average_precision_score(labels, scores)
    # flagging score > 3.5 takes 6, 5 and the normal 4
    assert (m["precision"], m["recall"], m["fpr"]) == pytest.approx((2 / 3, 2 / 3, 1 / 3))
    assert m["f1"] == pytest.approx(2 / 3) == f1_score(labels, np.array(scores) > 3.5)
    # best F1: flag the top four (6, 5, 4, 3): P 3/4, R 1 -> 6/7; any T in [2, 3) does it
    assert m["best_f1"] == pytest.approx(6 / 7)
    assert 2.0 <= m["best_f1_threshold"] < 3.0
    assert f1_score(labels, np.array(scores) > m["best_f1_threshold"]) == pytest.approx(6 / 7)
    # all three anomalies flagged costs one false positive of three
    fpr, tpr, _ = roc_curve(labels, scores)
    assert m["fpr_at_95_tpr"] == pytest.approx(1 / 3) == min(fpr[tpr >= 0.95])
    with pytest.raises(ValueError, match="at least one normal and one anomalous"):
        anomaly.image_metrics([1, 1], [0.1, 0.2])


def test_evaluate_on_labelled_folders_with_masks(parts, model):
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    root = parts[0]
    ev = anomaly.evaluate(model, root / "test" / "normal", root / "test" / "anomalous", masks=root / "test" / "masks")
    good = model.score(model.load_images(root / "test" / "normal").images).score
    bad = model.score(model.load_images(root / "test" / "anomalous").images).score
    labels = np.r_[np.zeros(12), np.ones(12)]
    assert ev.auroc == pytest.approx(roc_auc_score(labels, np.r_[good, bad]))
    assert ev.auprc == pytest.approx(average_precision_score(labels, np.r_[good, bad]))
    assert ev.threshold == model.info.threshold
    assert ev.f1_at_threshold == pytest.approx(f1_score(labels, np.r_[good, bad] > ev.threshold))
    assert (ev.n_normal, ev.n_anomalous, ev.n_masks) == (12, 12, 12)
    assert ev.pixel_auroc > 0.85  # the excess map lights up the defects
    # counted in buckets as the maps stream by, it is the exact AUROC of every pixel
    maps = [model.score(model.load_images(root / "test" / k).images).pixel_map for k in ("normal", "anomalous")]
    truth = [np.asarray(Image.open(p).convert("L").resize(maps[1].shape[1:][::-1], Image.NEAREST)) > 127
             for p in sorted((root / "test" / "masks").glob("*.png"))]
    exact = anomaly.pixel_auroc(np.concatenate([maps[0].ravel(), maps[1].ravel()]),
                                np.concatenate([np.zeros(maps[0].size, bool), np.ravel(truth)]))
    assert ev.pixel_auroc == pytest.approx(exact, abs=1e-4)
    d = ev.to_dict()
    assert "scores" not in d and d["pixel_auroc"] == ev.pixel_auroc
    json.dumps(d)


def test_pixel_roc_in_buckets_is_the_exact_auroc_up_to_values_within_one_part_in_2048():
    from sklearn.metrics import roc_auc_score

    from vaekit.anomaly.pixel_roc import PixelRoc

    rng = np.random.default_rng(0)
    maps = rng.normal(0, 3, (6, 40, 50)).astype(np.float32)  # negative values too
    masks = np.zeros(maps.shape, bool)
    masks[3:, 10:20, 5:30] = True
    maps[masks] += 2.0
    maps[0, :5] = maps[4, 12, 7]  # ties across a normal and an anomalous pixel
    roc = PixelRoc()
    for m, k in zip(maps, masks):
        roc.add(m, k if k.any() else None)
    assert roc.counts() == (masks.sum(), (~masks).sum()) and roc.masked == 3
    exact = roc_auc_score(masks.ravel(), maps.ravel())
    assert roc.auroc() == pytest.approx(exact, abs=2e-4)
    coarse = PixelRoc()  # values that never share a bucket: equal to the last digit
    ints = np.arange(-500, 500, dtype=np.float32)[rng.permutation(1000)]
    label = ints > 100 + rng.normal(0, 200, 1000)
    coarse.add(ints, label)
    assert coarse.auroc() == pytest.approx(roc_auc_score(label, ints), abs=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        coarse.add(np.array([np.nan], np.float32))
    with pytest.raises(ValueError, match="anomalous and normal"):
        PixelRoc().auroc()


def test_masks_match_by_name_with_or_without_a_mask_suffix(parts, model, tmp_path):
    root = parts[0]
    masks = tmp_path / "ground_truth"
    masks.mkdir()
    for i, p in enumerate(sorted((root / "test" / "masks").glob("*.png"))[:5]):
        target = masks / (p.stem + ("_mask" if i % 2 else "") + ".png")
        target.write_bytes(p.read_bytes())
    ev = anomaly.evaluate(model, root / "test" / "normal", root / "test" / "anomalous", masks=masks)
    assert ev.n_masks == 5
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "unrelated.png").write_bytes((masks / "part_0000.png").read_bytes())
    with pytest.raises(ValueError, match="no mask"):
        anomaly.evaluate(model, root / "test" / "normal", root / "test" / "anomalous", masks=tmp_path / "empty")


def test_a_mask_that_marks_no_pixel_is_named_not_counted_silently(parts, model, tmp_path):
    """A red mask (255, 0, 0: grey 76) or a 0/1 label mask among 0/255 ones marks no pixel: its
    image's pixels all counted as normal while evaluate said "12 of 12 anomalous images have masks"
    and printed another pixel AUROC than the right masks give, without a word."""
    root = parts[0]
    masks = tmp_path / "masks"
    masks.mkdir()
    sources = sorted((root / "test" / "masks").glob("*.png"))
    for p in sources:
        (masks / p.name).write_bytes(p.read_bytes())
    m = np.asarray(Image.open(sources[0]).convert("L")) > 127
    Image.fromarray(np.stack([m * 255, m * 0, m * 0], -1).astype(np.uint8)).save(masks / sources[0].name)
    Image.fromarray(m.astype(np.uint8)).save(masks / sources[1].name)  # 0/1
    ev = anomaly.evaluate(model, root / "test" / "normal", root / "test" / "anomalous", masks=masks)
    assert ev.n_masks == 12
    assert sorted(ev.empty_masks) == sorted(p.name for p in sources[:2])
    assert ev.to_dict()["empty_masks"] == ev.empty_masks
    right = anomaly.evaluate(model, root / "test" / "normal", root / "test" / "anomalous", masks=root / "test" / "masks")
    assert right.empty_masks == []


def test_roc_plot_is_a_png(parts, model, tmp_path):
    root = parts[0]
    ev = anomaly.evaluate(model, root / "test" / "normal", root / "test" / "anomalous")
    anomaly.plot_roc(ev, tmp_path / "roc.png")
    assert Image.open(tmp_path / "roc.png").format == "PNG"


@pytest.mark.slow  # a fresh interpreter
def test_anomaly_module_needs_no_torch():
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import vaekit.anomaly, vaekit.inference.engine\n"
            "import numpy as np\n"
            "print(vaekit.anomaly.image_metrics([0, 1], [0.0, 1.0])['auroc'], vaekit.inference.engine.pixel_floor(np.ones((1, 1, 2, 2)), 'bernoulli').sum())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.0", "0.0"]
    assert "torch" not in out.stderr


def test_a_new_normal_folder_with_an_unreadable_file_is_refused_before_any_image_is_scored(parts, tmp_path,
                                                                                             monkeypatch):
    """`threshold --normal` scored the whole folder before refusing a file in it that is no image
    (18.7 s and 1.7 GB on a folder beside a 12000 px BMP); the headers are read first now."""
    import shutil

    from vaekit.anomaly import new_normal as threshold_mod

    new = tmp_path / "new"
    shutil.copytree(parts[0] / "test" / "normal", new)
    (new / "zz_notes.png").write_bytes(b"these are notes, not a PNG")

    def scored(*a, **k):
        raise AssertionError("images were scored before the unreadable file was refused")

    monkeypatch.setattr(threshold_mod, "_new_normal_scores", scored)
    with pytest.raises(ValueError, match=r"cannot read .*zz_notes.png \(not an image\)"):
        anomaly.threshold_from_normal(parts[0] / "run", new)


def test_a_normal_image_scored_again_is_not_flagged_where_the_calibration_scores_tie():
    """30 identical training images: every calibration score is the same number. Scoring one of
    them again moved it by 1e-10, above a threshold equal to the tie, and every normal image was
    flagged. The threshold sits a hair above the tie."""
    tie = np.full(30, 12.0)
    t = anomaly.threshold_of(tie, 0.99)[0]
    assert 12.0 + 1e-5 < t < 12.0 + 1e-3  # above what a batch size moves a score (1.2e-6 relative)
    assert anomaly.threshold_of(np.full(30, -500.0), 0.9)[0] > -500.0 + 1e-9  # negative nats too


@pytest.mark.parametrize("scores", [[], [1.0, float("nan")], [[1.0, 2.0]], ["a"], [1.0, float("inf")]])
def test_a_threshold_of_no_or_unusable_scores_is_bad_input_not_an_index_error(scores):
    from vaekit.errors import BadInput

    with pytest.raises(BadInput, match="non-empty list of finite numbers"):
        anomaly.threshold_of(scores, 0.99)
    with pytest.raises(BadInput, match="quantile"):
        anomaly.threshold_of([1.0, 2.0], 1.5)


def test_the_auprc_of_a_perfect_ranking_is_one_not_a_rounding_above_it():
    import numpy as np

    rng = np.random.default_rng(0)
    labels, scores = np.r_[np.zeros(6), np.ones(9)], np.r_[rng.random(6), 2 + rng.random(9)]
    assert anomaly.image_metrics(labels, scores)["auprc"] == 1.0  # sklearn's sum gave 1.0000000000000002


@pytest.mark.parametrize("value, flags", [(1e9, "no image"), (1.0, "no image"), (-0.5, "every image")])
def test_a_defect_threshold_outside_0_to_1_is_refused(parts, tmp_path, value, flags):
    """The reader's defect score is a probability: `threshold --value 1e9` was stored, exit 0, and
    printed "expected false positives 7.7%" for a threshold nothing can pass; so did `--value 1`
    (an image is flagged above it: a blank frame, whose frame check scores exactly 1, read normal)."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(parts[0] / "run", run)
    cfg = rundir.read_config(run)
    a = cfg["anomaly"]
    old = a["score"]
    s = np.array(a["by_score"][old]["scores"])
    a["by_score"]["defect"] = {**a["by_score"][old], "scores": list((s - s.min()) / (np.ptp(s) + 1))}
    a["score"] = "defect"
    (run / rundir.CONFIG).write_text(json.dumps(cfg))
    before = (run / rundir.CONFIG).read_bytes()
    with pytest.raises(ValueError, match=re.escape(f"the defect score is a probability, from 0 to 1: a threshold of {value:g} would flag {flags}")):
        anomaly.set_threshold(run, value=value)
    assert (run / rundir.CONFIG).read_bytes() == before
    assert anomaly.set_threshold(run, value=0.5)["threshold"] == 0.5
