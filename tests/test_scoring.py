"""The score maths in numpy (vaekit/inference/atypicality.py): KL maps, windows, and the atypicality test."""

from __future__ import annotations

import numpy as np
import pytest

from vaekit.errors import DamagedFile
from vaekit.inference.atypicality import Calibration, Parts, kl_map, window_mean


@pytest.mark.parametrize("w", [1, 3, 4, 9])
def test_window_mean_is_the_mean_over_the_clipped_window_with_edges_replicated(w):
    m = np.random.default_rng(0).random((2, 7, 9))
    got = window_mean(m, w)
    p = w // 2
    padded = np.pad(m, ((0, 0), (p, w - 1 - p), (p, w - 1 - p)), mode="edge")
    want = np.array([[[padded[n, y:y + w, x:x + w].mean() for x in range(9)] for y in range(7)] for n in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("shape,size", [((5,), 16), ((2, 4, 4), 16), ((3, 5, 5), 17)])
def test_kl_map_spreads_each_cells_kl_over_its_pixels(shape, size):
    rng = np.random.default_rng(1)
    d = int(np.prod(shape))
    mu, logvar = rng.normal(size=(3, d)), rng.normal(size=(3, d)) * 0.3
    m = kl_map(mu, logvar, shape, size)
    total = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).sum(1)
    np.testing.assert_allclose(m.reshape(3, -1).sum(1), total, rtol=1e-10)  # nothing lost or doubled
    if len(shape) == 3:  # the top-left pixel belongs to the top-left cell only
        cell = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).reshape(3, *shape)[:, :, 0, 0].sum(1)
        per_side = -(-size // shape[1]) if size % shape[1] == 0 else None
        if per_side:
            np.testing.assert_allclose(m[:, 0, 0], cell / per_side**2)


def _parts(rng, n, size=16, recon=100.0, kl=10.0, spot=None):
    r_map = rng.gamma(4.0, 0.1, (n, size, size))
    if spot is not None:
        r_map[:, spot[0]:spot[0] + 3, spot[1]:spot[1] + 3] += spot[2]
    k_map = np.full((n, size, size), kl / size**2) * rng.uniform(0.8, 1.2, (n, 1, 1))
    rec = r_map.reshape(n, -1).sum(1) + 50.0
    return Parts(rec, k_map.reshape(n, -1).sum(1), np.full(n, 50.0), r_map=r_map, k_map=k_map)


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("combine", ["max", "sumsq", "shifted", "floored"])
def test_atypicality_flags_too_high_and_too_low_but_not_normal(local, combine):
    rng = np.random.default_rng(2)
    cal = Calibration.fit(_parts(rng, 200), local=local, windows=(3, 5), combine=combine)
    normal = cal.score(_parts(rng, 50))[0]
    worse = cal.score(_parts(rng, 50, spot=(6, 6, 3.0)))[0]  # a local defect: recon too high
    simple = _parts(rng, 50)
    simple.recon = simple.recon - 40.0  # an image far simpler than normal: the -ELBO too LOW
    simple.r_map = simple.r_map * 0.0
    too_simple = cal.score(simple)[0]
    threshold = np.quantile(normal, 0.95)
    assert (worse > threshold).mean() > 0.9
    assert (too_simple > threshold).mean() > 0.9  # one-sided scores would call these the most normal
    s, amap = cal.score(_parts(rng, 4, spot=(6, 6, 3.0)), maps=True)
    assert amap.shape == (4, 16, 16)
    assert np.unravel_index(amap[0].argmax(), amap[0].shape)[0] in range(4, 11)  # the map points at the spot


def test_the_combinations_of_standardised_tests():
    stats = {"tests": {"mean": [0.0, 0.0, 0.0], "sd": [1.0, 1.0, 1.0]}, "global": ["error_high", "code_far", "entropy_low"]}
    z = np.array([[1.0, -1.0, -3.0], [1.0, 0.0, 0.0]])
    score = {c: Calibration({**stats, "combine": c}).score_tests(z) for c in ("max", "sumsq", "shifted", "floored")}
    np.testing.assert_allclose(score["max"], [1.0, 1.0])
    np.testing.assert_allclose(score["sumsq"], [1.0, 1.0])  # a clearly typical test counts for nothing
    np.testing.assert_allclose(score["shifted"], [9.0 + 1.0 + 0.0, 9.0 + 4.0 + 4.0])  # from 2 sd below the mean
    # the image-too-simple test never counts less than at its normal mean: an image more complex
    # than normal (z = -3) looks no more normal on it than an average one
    np.testing.assert_allclose(score["floored"], [9.0 + 1.0 + 4.0, 9.0 + 4.0 + 4.0])


def test_a_damaged_stored_calibration_is_refused():
    rng = np.random.default_rng(3)
    good = Calibration.fit(_parts(rng, 20), local=True, windows=(3,)).stats
    assert Calibration.from_stored(good, 16, "m").local
    import copy

    for damage in (lambda s: s.pop("tests"), lambda s: s["tests"]["sd"].__setitem__(0, float("nan")),
                   lambda s: s.__setitem__("windows", [99]), lambda s: s["profile"]["r_map/3"].__setitem__("mean", [1, 2]),
                   lambda s: s.__setitem__("combine", "avg"),
                   lambda s: s.__setitem__("global", [[], "r_high"]), lambda s: s.__setitem__("global", [{"a": 1}]),
                   lambda s: s.__setitem__("version", 99)):  # a later vaekit's format is not read as this one's
        bad = copy.deepcopy(good)
        damage(bad)
        with pytest.raises(DamagedFile, match="calibration is damaged"):
            Calibration.from_stored(bad, 16, "m")


def test_edge_classes_depend_on_the_distance_to_the_nearer_edge_only():
    from vaekit.inference.atypicality import edge_class

    np.testing.assert_array_equal(edge_class(7, 2), [0, 1, 2, 2, 2, 3, 4])
    np.testing.assert_array_equal(edge_class(3, 2), [0, 1, 4])
    big, small = edge_class(100, 4), edge_class(20, 4)
    assert big[:4].tolist() == small[:4].tolist() and big[-4:].tolist() == small[-4:].tolist()
    assert set(big[4:-4]) == {4}


def test_local_statistics_pool_positions_so_few_large_images_suffice():
    # a surface at its native resolution: 8 normal images of 48 px fit the statistics (edge
    # classes pool every interior position), and a small defect anywhere stands out
    rng = np.random.default_rng(5)
    cal = Calibration.fit(_parts(rng, 8, size=48), local=True, windows=(3, 5), combine="sumsq",
                          reference=_parts(rng, 8, size=48))
    assert len(cal.stats["profile"]["r_map/3"]["mean"]) == (2 * 16 + 1) ** 2  # not 48 x 48
    normal = cal.score(_parts(rng, 40, size=48))[0]
    for spot in ((30, 20, 3.0), (2, 40, 3.0), (44, 44, 3.0)):  # inside, at an edge, in a corner
        defect = cal.score(_parts(rng, 20, size=48, spot=spot))[0]
        assert (defect > np.quantile(normal, 0.95)).mean() > 0.9, spot
    _, amap = cal.score(_parts(rng, 2, size=48, spot=(30, 20, 3.0)), maps=True)
    assert amap.shape == (2, 48, 48) and abs(np.unravel_index(amap[0].argmax(), (48, 48))[0] - 31) <= 3


def test_a_calibration_stored_by_vaekit_0_2_per_position_still_scores():
    rng = np.random.default_rng(6)
    ref = _parts(rng, 100)
    maps = {}
    for w in (3,):
        for key in ("r_map", "k_map"):
            lm = window_mean(getattr(ref, key), w)
            maps[f"{key}/{w}"] = {"mean": lm.mean(0).tolist(), "sd": (lm.std(0) + 1e-3).tolist()}
    old = Calibration({"local": True, "windows": [3], "combine": "sumsq", "maps": maps})
    old.stats["tests"] = {"mean": old.tests(ref).mean(0).tolist(), "sd": old.tests(ref).std(0).tolist()}
    loaded = Calibration.from_stored(old.stats, 16, "old run")
    normal, worse = loaded.score(_parts(rng, 30))[0], loaded.score(_parts(rng, 30, spot=(6, 6, 3.0)))[0]
    assert np.median(worse) > np.quantile(normal, 0.9)


def _object_parts(rng, mu):
    """An aligned object's parts: ordinary error and entropy, codes `mu`."""
    n = len(mu)
    return Parts(np.full(n, 60.0), np.full(n, 5.0), np.full(n, 50.0), e_map=rng.gamma(4.0, 0.05, (n, 8, 8)),
                 latent=(mu**2).sum(1), entropy=rng.normal(40.0, 1.0, n), mu=mu)


def test_the_code_test_measures_from_the_nearest_training_code_not_the_prior_centre():
    # normal codes sit on two clusters far from 0: a code between them, at the prior's centre, is
    # the atypical one (|mu|^2 would call it the most normal of all), a code on a cluster is not
    from vaekit.inference.atypicality import OBJECT_TESTS

    rng = np.random.default_rng(7)
    centres = np.array([[3.0, 0.0], [-3.0, 0.0]])
    def codes(n):
        return centres[rng.integers(0, 2, n)] + rng.normal(0, 0.3, (n, 2))

    cal = Calibration.empty(False, tests=OBJECT_TESTS).with_codes(codes(200))
    cal.fit_tests(cal.tests(_object_parts(rng, codes(100))))
    normal = cal.score(_object_parts(rng, codes(50)))[0]
    centre = cal.score(_object_parts(rng, rng.normal(0, 0.3, (50, 2))))[0]
    assert np.median(centre) > 10 * max(np.quantile(normal, 0.9), 1.0)
    # stored and loaded (config.json, ONNX metadata): the same scores; damaged codes are refused
    import copy

    loaded = Calibration.from_stored(copy.deepcopy(cal.stats), 8, "m", latent_dim=2)
    np.testing.assert_array_equal(loaded.codes, cal.codes)
    for damage in (lambda s: s.pop("codes"), lambda s: s["codes"].__setitem__("f32", "not base64!"),
                   lambda s: s["codes"].__setitem__("shape", [3, 2]), lambda s: s["codes"].__setitem__("shape", [100, 4])):
        bad = copy.deepcopy(cal.stats)
        damage(bad)
        with pytest.raises(DamagedFile, match="calibration is damaged"):
            Calibration.from_stored(bad, 8, "m", latent_dim=2)
    with pytest.raises(DamagedFile, match="4-dim latent"):
        Calibration.from_stored(copy.deepcopy(cal.stats), 8, "m", latent_dim=4)


def test_a_spread_of_float_rounding_does_not_turn_near_duplicates_into_anomalies():
    # every held-out code a near-duplicate of a training code: the distances spread by ~1e-6, and
    # float32 noise in a code (another batch size, the ONNX engine) must not move the score: the
    # test's sd is floored by the latent's scale
    from vaekit.inference.atypicality import OBJECT_TESTS

    rng = np.random.default_rng(8)
    bank = rng.normal(0, 1, (30, 4))
    held = bank + rng.normal(0, 1e-3, bank.shape)
    cal = Calibration.empty(False, tests=OBJECT_TESTS).with_codes(bank)
    cal.fit_tests(cal.tests(_object_parts(rng, held)))
    mean, sd = cal.stats["tests"]["mean"][1], cal.stats["tests"]["sd"][1]
    z = lambda mu: (cal.tests(_object_parts(rng, mu))[:, 1] - mean) / sd  # noqa: E731
    assert np.abs(z(held + 1e-5) - z(held)).max() < 1e-3


def test_one_network_pass_holds_a_bounded_number_of_pixels_whatever_the_image_size():
    import torch

    from vaekit.config import ModelConfig
    from vaekit.inference.engine import FORWARD_SIDE
    from vaekit.inference.engine_torch import TorchModel
    from vaekit.model.vae import ConvVAE

    torch.manual_seed(0)
    for side, per_pass in ((32, 64), (256, 4), (512, 1)):
        net = ConvVAE(ModelConfig(image_size=side, channels=1, latent_dim=4, layout="grid", likelihood="gaussian",
                                  base_channels=4))  # narrow: the test counts pixels a pass, not arithmetic
        engine = TorchModel.from_net(net, torch.device("cpu"))
        seen, core = [], engine._score_core
        engine._score_core = lambda x, eps: seen.append(x.shape[0]) or core(x, eps)  # noqa: B023
        x = np.random.default_rng(0).integers(0, 256, (9, 1, side, side), dtype=np.uint8)
        parts = engine.elbo_parts(x)
        assert len(parts.recon) == 9 and np.isfinite(parts.recon).all()
        assert max(seen) == min(per_pass, 9) and sum(seen) == 9
        assert max(seen) * side * side <= max(engine.batch_size * FORWARD_SIDE**2, side * side)


def _error_parts(e_map: np.ndarray) -> Parts:
    """An aligned object's parts around a given error map: the other tests read the same for every image."""
    n = len(e_map)
    zeros, mu = np.zeros(n), np.zeros((n, 2))
    return Parts(zeros, zeros, zeros, e_map=e_map, entropy=np.full(n, 100.0), mu=mu)


def test_an_aligned_objects_error_test_finds_a_small_defect_the_whole_images_error_hides():
    """A 6 x 6 spot of error on a 32 px object whose whole error varies from image to image: summed over
    the image (the first error test) it is inside the normal spread; in its worst window it is far out."""
    from vaekit.inference.atypicality import OBJECT_TESTS

    rng = np.random.default_rng(4)
    normal = rng.random((200, 32, 32)) * rng.uniform(0.5, 1.5, (200, 1, 1))  # the whole error: 256-768 nats
    spot = rng.random((50, 32, 32)) * 0.6
    for img, (y, x) in zip(spot, rng.integers(0, 26, (50, 2))):
        img[y:y + 6, x:x + 6] += 3.0  # +108 nats in one place
    assert "error_local" in OBJECT_TESTS
    scores = []
    for tests in (("error_high", "code_far", "entropy_low"), OBJECT_TESTS):
        cal = Calibration.empty(False, (), "floored", tests).with_codes(np.zeros((4, 2)))
        fitted, test = _error_parts(normal[:100]), _error_parts(np.concatenate([normal[100:], spot]))
        cal.fit_tests(cal.tests(fitted))
        scores.append(cal.score(test)[0])
    summed, local = scores
    assert (summed[100:] > summed[:100].max()).mean() < 0.5  # hidden in the spread of the whole error
    assert (local[100:] > local[:100].max()).all()  # every spot above every normal image


def test_copies_of_one_image_give_scores_in_units_of_each_tests_own_scale():
    """Every held-out and training image alike: each test's spread is 0, and its sd falls to a floor in
    the test's own units (0.1 nat; error_local's over its 5 x 5 window), not to 1e-6, which gave new
    images scores of ~1e17 sd² ranked by whichever test's rounding was largest."""
    from vaekit.inference.atypicality import OBJECT_TESTS

    same = np.full((20, 28, 28), 0.02)
    cal = Calibration.empty(False, (), "floored", OBJECT_TESTS).with_codes(np.zeros((20, 2)))
    cal.fit_tests(cal.tests(_error_parts(same)), cal.tests(_error_parts(same)))
    assert cal.stats["tests"]["sd"] == pytest.approx([0.1, 0.1, 0.1, 0.004])
    assert cal.score(_error_parts(same[:1]))[0] == pytest.approx([16.0])  # (0 + 2)² four times
    one_nat = same[:1].copy()
    one_nat[0, 10, 10] += 1.0  # one nat more error, in one pixel: 10 sd on the whole error, 1 on the window's
    z_whole, z_local = 1.0 / 0.1, (1.0 / 25) / 0.004
    expected = (z_whole + 2) ** 2 + 4 + 4 + (z_local + 2) ** 2
    assert cal.score(_error_parts(one_nat))[0] == pytest.approx([expected])
