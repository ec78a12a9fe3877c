"""The torch engine scores through a channels-last copy of its network on the CPU (faster NHWC
convolutions), and encodes and decodes through the network itself: the scores must be the network's
own up to float rounding, and code files and lossless archives must not move at all."""

from __future__ import annotations

import copy

import numpy as np
from PIL import Image
import pytest
import torch

import vaekit
from cli_support import invoke
from export_support import random_run

torch.set_num_threads(1)


def _images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 3, 16, 16), np.uint8)


def _in_own_layout(model) -> dict:
    """The model's scores with its network as loaded (contiguous), the reference."""
    model._scorer = (model.net, model.net)
    try:
        parts = model.elbo_parts(_images())
    finally:
        model._scorer = None
    return {"recon": parts.recon, "kl": parts.kl, "r_map": parts.r_map, "mu": parts.mu}


def test_cpu_scores_are_the_networks_own_through_a_channels_last_copy(tmp_path):
    model = vaekit.load(random_run(tmp_path / "run", image_size=16, channels=3, latent_dim=4, base_channels=4))
    own = _in_own_layout(model)
    scorer = model._scoring_net()
    convs = [p for p in scorer.parameters() if p.ndim == 4 and p.shape[1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    assert all(p.is_contiguous() for p in model.net.parameters()), "encode and decode keep the network's layout"
    parts = model.elbo_parts(_images())
    for name, ref in own.items():
        np.testing.assert_allclose(getattr(parts, name), ref, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("likelihood", ["logistic", "gaussian", "bernoulli"])
def test_the_scoring_copy_is_what_deepcopy_gave_and_shares_no_tensor(tmp_path, likelihood):
    from vaekit.inference.engine_torch import channels_last_copy

    model = vaekit.load(random_run(tmp_path / "run", image_size=16, channels=3, latent_dim=4, base_channels=4,
                                   likelihood=likelihood))
    net = model.net
    ref, scorer = copy.deepcopy(net).to(memory_format=torch.channels_last), channels_last_copy(net)
    assert [n for n, _ in scorer.named_modules()] == [n for n, _ in ref.named_modules()]
    want, got, own = ref.state_dict(), scorer.state_dict(), {k: v.clone() for k, v in net.state_dict().items()}
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].stride() == want[k].stride() and torch.equal(got[k], want[k]), k
        assert got[k].data_ptr() != net.state_dict()[k].data_ptr(), f"{k} is the network's own tensor"
    x, eps = torch.from_numpy(_images()).float() / 255, torch.zeros(6, 4)
    with torch.inference_mode():
        for a, b in zip(scorer.score_parts(x, eps), ref.score_parts(x, eps)):
            assert torch.equal(a, b)
        for p in scorer.parameters():
            p.zero_()
    assert all(torch.equal(v, own[k]) for k, v in net.state_dict().items()), "the network is left as it was"


def test_a_network_put_in_place_of_the_loaded_one_is_the_one_that_scores(tmp_path):
    model = vaekit.load(random_run(tmp_path / "run", image_size=16, channels=3, latent_dim=4, base_channels=4))
    before = model.elbo_parts(_images()).recon
    other = copy.deepcopy(model.net)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    model.net = other
    after = model.elbo_parts(_images()).recon
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, _in_own_layout(model)["recon"], rtol=1e-5, atol=1e-5)


def test_a_reader_is_copied_for_reading_once_and_left_as_it_was():
    from vaekit.reader.net import ReaderConfig, ReaderEnsemble, ReaderNet
    from vaekit.reader.train import for_reading, read

    torch.manual_seed(0)
    net = ReaderEnsemble([ReaderNet(1, ReaderConfig(width=4)) for _ in range(3)]).train()
    reading = for_reading(net)
    assert reading is not net and not reading.training
    assert net.training and all(p.is_contiguous() for p in net.parameters()), "the caller's net is untouched"
    assert for_reading(reading) is reading, "a net already for reading is not copied again"
    x = np.random.default_rng(1).integers(0, 256, (2, 1, 40, 40), np.uint8)
    scores, maps = read(reading, x)
    ref_scores, ref_maps = read(net.eval(), x)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps, ref_maps, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # trains its own surface model and readers
def test_a_surface_model_copies_its_reader_once_however_many_batches_it_reads(tmp_path, monkeypatch):
    from PIL import Image

    import vaekit.reader.train as reader_train
    from surface_support import train_surface

    data = tmp_path / "train"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(60, 200, (32, 32), np.uint8)).save(data / f"s{i:02d}.png")
    model = vaekit.load(train_surface(data, tmp_path / "run", epochs=1, reader_steps=5))
    copies = []
    real = reader_train.copy.deepcopy
    monkeypatch.setattr(reader_train.copy, "deepcopy", lambda obj, *a: copies.append(obj) or real(obj, *a))
    x = rng.integers(0, 256, (3, 1, 32, 32), np.uint8)
    first = [model.score(x[i:i + 1]).score for i in range(3)]
    readers = [c for c in copies if type(c).__name__ == "ReaderEnsemble"]  # deepcopy recurses into its parts too
    assert len(readers) == 1, f"the reader was copied {len(readers)} times for 3 batches"
    again = model.score(x)
    assert again.name == "defect"
    np.testing.assert_allclose(np.concatenate(first), again.score, rtol=1e-5)


@pytest.mark.parametrize("call", ["digits normal", "digits n_anomalous", "digits seed", "digits size",
                                  "shapes n_train", "shapes size", "shapes seed"])
def test_sample_data_refuses_a_bool_for_a_count_or_a_seed(tmp_path, call):
    from vaekit.errors import BadInput
    from vaekit.sample_data import write_digits, write_shapes

    kind, name = call.split()
    write = write_digits if kind == "digits" else write_shapes
    with pytest.raises(BadInput, match=name):
        write(tmp_path / "out", **{name: True})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_fit_prior_refuses_a_bool_number_of_residual_pixels(tmp_path):
    from vaekit import codec
    from vaekit.errors import BadInput

    model = vaekit.load(random_run(tmp_path / "run", image_size=16, channels=3, latent_dim=4, base_channels=4))
    with pytest.raises(BadInput, match="residual_pixels"):
        codec.fit_prior(model, _images(2), residual_pixels=True)


@pytest.mark.parametrize("estimator", [[], ["--samples", "2"], ["--iwae", "--samples", "2"]])
def test_fail_on_anomaly_without_a_threshold_is_refused_before_any_image_is_scored(tmp_path, estimator):
    from export_support import random_job

    run, images = random_job(tmp_path / "job", 3)  # an untrained run: no stored threshold for any score
    out = tmp_path / "scores.csv"
    r = invoke("anomaly-score", run, images, "-o", out, "--fail-on-anomaly", *estimator)
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "--fail-on-anomaly needs a threshold" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"], "nothing written: the refusal came first"


def test_heat_maps_enlarge_the_shorter_side_of_a_tall_image_as_of_a_wide_one(tmp_path):
    from PIL import Image

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, layout="grid")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"tall": (40, 24), "wide": (24, 40)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w), np.uint8)).save(tmp_path / f"{name}.png")
    r = invoke("anomaly-score", run, tmp_path / "tall.png", tmp_path / "wide.png", "--maps", tmp_path / "maps",
             "--score", "neg_elbo", "--threshold", "0")
    assert r.exit_code == 0, r.output
    tall, wide = (Image.open(tmp_path / "maps" / f"{n}.png").size for n in ("tall", "wide"))  # (width, height)
    assert tall == (wide[1], wide[0]) and min(tall) >= 128, (tall, wide)


def test_evaluate_says_why_its_score_is_not_the_one_asked_for_and_gives_no_precision_of_no_flag(tmp_path):
    import json

    from export_support import random_job

    run, normal = random_job(tmp_path / "job", 3)
    anomalous = tmp_path / "anomalous"
    anomalous.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(anomalous / f"a{i}.png")
    r = invoke("evaluate", run, "--normal", normal, "--anomalous", anomalous, "--score", "defect", "--threshold", "1e9",
             "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["precision_at_threshold"] is None and out["recall_at_threshold"] == 0.0, out  # nothing flagged
    assert "no defect reader" in out["note"] and "no defect reader" in r.stderr, r.stderr


def test_evaluate_notes_normal_images_the_model_trained_on(tmp_path):
    import json

    from export_support import random_job
    from vaekit.training import rundir

    run, images = random_job(tmp_path / "job", 3)
    cfg = rundir.read_config(run)
    rundir.write_config(run, {**cfg, "data": {"root": str(images)}})  # as training records its folder
    r = invoke("evaluate", run, "--normal", images, "--anomalous", _anomalous(tmp_path), "--score", "neg_elbo",
             "--threshold", "0", "--json")
    assert r.exit_code == 0, r.output
    assert "holds images the model trained on" in json.loads(r.stdout)["note"], r.stdout
    assert "not held-out" in r.stderr, r.stderr
    elsewhere = tmp_path / "new"
    elsewhere.mkdir()
    for p in images.iterdir():
        (elsewhere / p.name).write_bytes(p.read_bytes())  # copies of the training images elsewhere
    r = invoke("evaluate", run, "--normal", elsewhere, "--anomalous", _anomalous(tmp_path), "--score", "neg_elbo",
             "--threshold", "0", "--json")
    # noted as `threshold --normal` refuses them: by bytes too, not by folder alone (it said nothing)
    assert r.exit_code == 0 and "is the training image" in json.loads(r.stdout)["note"], r.output
    for p in elsewhere.iterdir():  # new images: no note
        Image.fromarray(np.random.default_rng(len(p.name)).integers(0, 256, (16, 16), np.uint8)).save(p)
    r = invoke("evaluate", run, "--normal", elsewhere, "--anomalous", _anomalous(tmp_path), "--score", "neg_elbo",
             "--threshold", "0", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["note"] is None, r.output


def _anomalous(tmp_path):
    from PIL import Image

    folder = tmp_path / "anomalous"
    if not folder.exists():
        folder.mkdir()
        for i in range(3):
            Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(folder / f"a{i}.png")
    return folder


def test_the_digits_read_from_scikit_learns_file_are_load_digits_own(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    import vaekit.sample_data.digits as digits

    images, labels = digits._load_digits()
    ref = load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(labels, ref.target) and labels.dtype == ref.target.dtype
    monkeypatch.setattr(digits, "Path", lambda *a: tmp_path / "moved")  # no CSV where it was looked for
    images, labels = digits._load_digits()  # scikit-learn's files laid out otherwise: through load_digits
    assert np.array_equal(images, ref.images) and np.array_equal(labels, ref.target)


def test_digits_without_scikit_learn_name_the_extra(tmp_path, monkeypatch):
    import sys

    from vaekit.errors import MissingExtra
    from vaekit.sample_data import write_digits

    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingExtra, match="scikit-learn"):
        write_digits(tmp_path / "digits")
