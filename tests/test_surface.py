"""A surface at its native resolution: a grid model trained on crops, its defect reader, and the
default score it gives (vaekit/training/finish_reader.py, vaekit/inference/engine_torch.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaekit
from vaekit.config import ModelConfig, TrainConfig
from vaekit.train import train

from surface_support import train_surface


def _texture(folder, n=24, size=48, seed=0):
    """Stripes with noise: a surface (no object in one place), at 48 px."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        phase = rng.uniform(0, 6.3)
        img = 128 + 60 * np.sin(xx / 2.0 + phase) + rng.normal(0, 12, (size, size))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"s_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    root = tmp_path_factory.mktemp("surface")
    train_surface(_texture(root / "train"), root / "run")
    return root


def test_auto_keeps_a_surfaces_own_size_and_trains_on_crops_and_a_reader(surface):
    cfg = json.loads((surface / "run" / "config.json").read_text())
    assert cfg["model"]["layout"] == "grid" and cfg["model"]["image_size"] == 48  # not shrunk
    assert cfg["train"]["crop"] == 32 and cfg["reader"]["steps"] == 40
    assert (surface / "run" / "reader.safetensors").is_file()
    a = cfg["anomaly"]
    # 24 images: 8 held out for every score's threshold (a fold of 5 is too few for a tail), no fold models
    assert a["score"] == "defect" and a["source"] == "calibration" and a["n"] == 8
    assert cfg["data"]["crossfit_folds"] == 0 and cfg["data"]["train_images"] == 16
    assert {"defect", "atypicality", "excess"} <= set(a["by_score"])
    assert a["calibration"]["combine"] == "sumsq"  # a surface's eleven tests count only where atypical
    assert all(len(s["scores"]) == 8 for s in a["by_score"].values())


def test_the_default_score_is_the_readers_with_maps_at_the_images_size(surface):
    m = vaekit.load(surface / "run")
    x = m.load_images(surface / "train").images[:4].copy()
    s = m.score(x)
    assert s.name == "defect" and s.pixel_map.shape == (4, 48, 48)
    assert np.all((s.score >= 0) & (s.score <= 1))
    other = m.score(x, score="atypicality")
    assert other.name == "atypicality" and not np.allclose(other.score, s.score)
    np.testing.assert_allclose(s.neg_elbo, other.neg_elbo)  # the ELBO columns do not depend on the score


def test_posterior_draws_leave_the_defect_score_and_its_stored_threshold(surface, tmp_path):
    # --samples K gave the same defect scores with no threshold (the stored ones "are for the
    # deterministic score"): --fail-on-anomaly refused, and no row said anomalous
    from cli_support import invoke

    plain, drawn = tmp_path / "plain.json", tmp_path / "drawn.json"
    assert invoke("anomaly-score", surface / "run", surface / "train", "-o", plain).exit_code == 0
    r = invoke("anomaly-score", surface / "run", surface / "train", "-o", drawn, "--samples", "2")
    assert r.exit_code == 0, r.output
    a, b = json.loads(plain.read_text()), json.loads(drawn.read_text())
    assert a["score"] == b["score"] == "defect" and b["samples"] == 2
    assert b["threshold"] is not None and b["threshold"] == a["threshold"], b["threshold_source"]
    assert [r["score"] for r in a["images"]] == [r["score"] for r in b["images"]]
    assert [r["anomalous"] for r in a["images"]] == [r["anomalous"] for r in b["images"]]
    assert all(isinstance(r["anomalous"], bool) for r in b["images"])


def test_an_int8_surface_export_names_the_score_int8_moves(surface, tmp_path):
    # the report said "default score vs fp32 ONNX" of the atypicality's change (the reader, whose
    # score is the default, stays float32), and scoring said nothing of the fp32 threshold
    from cli_support import invoke

    from vaekit.anomaly.threshold import resolve_threshold

    out = tmp_path / "s8.onnx"
    r = invoke("export", surface / "run", "-o", out, "--quantize", "int8", "--images", surface / "train")
    words = " ".join(r.output.split())
    assert r.exit_code == 0 and "; the atypicality (the default defect score stays float32) vs fp32 ONNX" in words, r.output
    m = vaekit.load(out)
    assert m.info.score == "defect" and "float32" not in resolve_threshold(m, "defect", "mean", None)[1]
    assert "set on the float32 model" in resolve_threshold(m, "atypicality", "mean", None)[1]


def test_a_run_whose_reader_is_gone_is_refused_not_scored_otherwise(surface, tmp_path):
    import shutil

    from vaekit.training.rundir import RunError

    run = tmp_path / "run"
    shutil.copytree(surface / "run", run)
    (run / "reader.safetensors").unlink()
    with pytest.raises(RunError, match="reader.safetensors is missing"):
        vaekit.load(run)


def test_another_reader_copied_into_a_run_is_refused_and_never_scores_with_its_threshold(surface, tmp_path):
    """A hostile user copied another run's reader.safetensors into this one: a valid file, but its
    scores would be read against a threshold set with other weights, and the shares of one job
    scored before and after the copy would merge into one file."""
    import shutil

    from vaekit.training import rundir

    run = tmp_path / "run"
    shutil.copytree(surface / "run", run)
    assert json.loads((run / "config.json").read_text())["reader_fingerprint"]
    state, meta = rundir.load_tensors(run / rundir.READER, "defect reader")
    first = sorted(state)[0]
    state[first] = state[first] + 0.01  # another reader of the same shape
    rundir.save_tensors(run / rundir.READER, state, meta)
    with pytest.raises(rundir.RunError, match="not the defect reader this run was calibrated with"):
        vaekit.load(run)


def test_an_engine_that_cannot_run_the_reader_says_so_and_scores_the_atypicality(surface):
    m = vaekit.load(surface / "run")
    m.info.reader = None  # what an ONNX export is: the VAE's graphs only
    name, note = m.effective_score(None)
    assert name == "atypicality" and "cannot run the defect reader" in note


@pytest.mark.slow
def test_an_exported_surface_carries_its_reader_and_scores_defect_as_the_run_does(surface, tmp_path):
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    r = CliRunner().invoke(app, ["export", str(surface / "run"), "-o", str(tmp_path / "s.onnx")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.reader.onnx").is_file() and "(reader," in r.output
    run, exported = vaekit.load(surface / "run"), vaekit.load(tmp_path / "s.onnx")
    x = run.load_images(surface / "train").images[:5].copy()
    want, got = run.score(x), exported.score(x)
    assert got.name == want.name == "defect"
    np.testing.assert_allclose(got.score, want.score, atol=1e-5)
    np.testing.assert_allclose(got.pixel_map, want.pixel_map, atol=1e-5)
    # only the main file copied: the VAE's own score, and it says why
    (tmp_path / "s.reader.onnx").rename(tmp_path / "elsewhere.onnx")
    name, note = vaekit.load(tmp_path / "s.onnx").effective_score(None)
    assert name == "atypicality" and "s.reader.onnx" not in note and "NAME.reader.onnx" in note
    # exporting a model without a reader over it with --overwrite leaves no stale reader file
    (tmp_path / "elsewhere.onnx").rename(tmp_path / "s.reader.onnx")
    train(surface / "train", tmp_path / "plain", ModelConfig(base_channels=4),
          TrainConfig(epochs=1, crop=32, device="cpu", reader=False))
    r = CliRunner().invoke(app, ["export", str(tmp_path / "plain"), "-o", str(tmp_path / "s.onnx"), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "s.reader.onnx").exists()


def test_a_large_surfaces_preview_shows_windows_of_its_images_not_whole_images(tmp_path):
    from types import SimpleNamespace

    import torch
    from PIL import Image

    from vaekit.config import ModelConfig
    from vaekit.model.vae import ConvVAE
    from vaekit.training.finish import PREVIEW_SIDE, _write_preview

    torch.manual_seed(0)
    net = ConvVAE(ModelConfig(image_size=200, channels=1, latent_dim=4, layout="grid", likelihood="gaussian")).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 200, 200), dtype=np.uint8)
    _write_preview(tmp_path / "preview.png", net, SimpleNamespace(images=images), np.arange(3), torch.device("cpu"))
    with Image.open(tmp_path / "preview.png") as im:
        w, h = im.size
    assert 3 * PREVIEW_SIDE <= h < 3 * 200 and 3 * PREVIEW_SIDE <= w < 3 * 200  # inputs, reconstructions, samples


def _wide(folder, size=48, width=120, defect=None, seed=5):
    """One surface photo wider than the model's size, optionally with a dark square at columns defect..defect+14."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :width]
    img = 128 + 60 * np.sin(xx / 2.0 + 1.0) + rng.normal(0, 12, (size, width))
    if defect is not None:
        img[17:31, defect : defect + 14] = 5
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "wide.png")
    return folder / "wide.png"


def test_tiles_cover_an_image_and_put_it_back_together():
    from vaekit.images.tiles import starts, tiling

    assert starts(48, 48) == [0] and starts(120, 48) == [0, 36, 72] and starts(96, 48) == [0, 48]
    x = np.random.default_rng(0).integers(0, 256, (3, 48, 131), dtype=np.uint8)
    t = tiling(x, 48)
    tiles = t.cut(x)
    assert tiles.shape == (3, 3, 48, 48) and t.boxes[-1] == (0, 83)
    np.testing.assert_array_equal(t.paste(tiles), x)
    maps = np.stack([np.full((48, 48), v, np.float32) for v in (1.0, 2.0, 4.0)])
    avg = t.average(maps)
    assert avg.shape == (48, 131) and avg[0, 0] == 1.0 and avg[0, 130] == 4.0
    assert avg[0, 45] == 1.5  # columns 42..47 lie in the first two tiles
    assert t.area_share() == 48 * 131 / (3 * 48 * 48)


def test_a_surface_scores_the_whole_of_a_wider_image_not_its_centre_square(surface, tmp_path):
    """A defect in the band the centre crop cuts off changes the score and the map, and only the
    map's columns under the tile that holds it; a square image scores as it always did."""
    from vaekit.anomaly import score_images

    m = vaekit.load(surface / "run")
    clean = score_images(m, _wide(tmp_path / "clean", defect=None), score="atypicality")
    bad = score_images(m, _wide(tmp_path / "bad", defect=100), score="atypicality")
    assert bad.images[0].shape == (1, 48, 120) and bad.pixel_maps[0].shape == (48, 120)
    assert bad.rows[0].neg_elbo != clean.rows[0].neg_elbo  # the centre square (cols 36..83) is the same
    diff = np.abs(bad.pixel_maps[0] - clean.pixel_maps[0]).max(axis=0)
    assert diff[:72].max() == 0 and diff[96:110].max() > 0  # tiles at 0, 36, 72: the defect is in the last
    np.testing.assert_array_equal(bad.images[0][0, 17:31, 100:114], 5)
    # the Python API reads files the same way: Model.score and Model.iter_scores
    api = m.score(tmp_path / "bad", score="atypicality")
    assert api.pixel_map.shape == (1, 48, 120) and api.paths == [tmp_path / "bad" / "wide.png"]
    np.testing.assert_allclose(api.neg_elbo, [bad.rows[0].neg_elbo])
    both = m.score([tmp_path / "bad" / "wide.png", sorted((surface / "train").glob("*.png"))[0]], score="atypicality")
    assert [p.shape for p in both.pixel_map] == [(48, 120), (48, 48)]  # two shapes: a list
    (part,) = list(m.iter_scores(tmp_path / "bad", score="atypicality"))
    np.testing.assert_allclose(part.score, api.score)
    # square images of the model's size: one tile each, the same numbers as Model.score
    x = m.load_images(surface / "train").images[:3].copy()
    rep = score_images(m, sorted((surface / "train").glob("*.png"))[:3], score="atypicality")
    np.testing.assert_allclose([r.score for r in rep.rows], m.score(x, score="atypicality").score, rtol=1e-6)
    assert isinstance(rep.images, np.ndarray) and rep.pixel_maps.shape == (3, 48, 48)  # one shape: one array


def test_anomaly_score_and_evaluate_read_wide_images_whole(surface, tmp_path):
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    normal, bad = tmp_path / "normal", tmp_path / "bad"
    _wide(normal, defect=None)
    _wide(bad, defect=100)
    mask = np.zeros((48, 120), np.uint8)
    mask[17:31, 100:114] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "wide.png")
    r = CliRunner().invoke(app, ["anomaly-score", str(surface / "run"), str(bad), "-o", str(tmp_path / "s.csv"),
                                 "--maps", str(tmp_path / "maps")])
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "maps" / "wide.png") as im:
        assert im.size == (120 * 3, 48 * 3)  # the whole image, enlarged to >= 128 px
    r = CliRunner().invoke(app, ["evaluate", str(surface / "run"), "--normal", str(normal), "--anomalous", str(bad),
                                 "--masks", str(tmp_path / "masks"), "--json"])
    assert r.exit_code == 0, r.output
    assert 0.0 <= json.loads(r.output)["pixel_auroc"] <= 1.0
    Image.fromarray(mask[:, :100]).save(tmp_path / "masks" / "wide.png")  # another shape than its image
    r = CliRunner().invoke(app, ["evaluate", str(surface / "run"), "--normal", str(normal), "--anomalous", str(bad),
                                 "--masks", str(tmp_path / "masks")])
    assert r.exit_code == 2 and "must have its image's aspect ratio" in r.output


@pytest.mark.slow  # trains its own surface model and readers
def test_a_surface_trained_on_wide_images_sets_its_threshold_from_whole_images(tmp_path):
    """The stored defect scores of the held-out images are those anomaly-score gives their whole
    files (the largest tile's), not their centre squares'."""
    from vaekit.anomaly import score_images

    data = tmp_path / "wide"
    data.mkdir()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:48, :96]
    for i in range(24):
        img = 128 + 60 * np.sin(xx / 2.0 + rng.uniform(0, 6.3)) + rng.normal(0, 12, (48, 96))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(data / f"w_{i:03d}.png")
    m = vaekit.load(train_surface(data, tmp_path / "run", epochs=2, reader_steps=20))
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["anomaly"]["by_score"]["defect"]["scores"]
    whole = np.array([r.score for r in score_images(m, data).rows])
    centre = m.score(m.load_images(data).images).score  # the centre squares, as the old calibration read them
    assert len(stored) == 8
    assert all(np.abs(whole - s).min() < 1e-5 for s in stored)
    assert not all(np.abs(centre - s).min() < 1e-5 for s in stored)
    # the VAE's own scores' thresholds too: the atypicality of the most atypical tile, the nats area-scaled
    by_score = json.loads((tmp_path / "run" / "config.json").read_text())["anomaly"]["by_score"]
    for name in ("atypicality", "neg_elbo"):
        rows = score_images(m, data, score=name).rows
        got = np.array([r.score for r in rows])
        assert all(np.abs(got - s).min() <= 1e-4 * abs(s) + 1e-6 for s in by_score[name]["scores"]), name


def test_a_scoring_job_takes_fewer_large_images_at_a_time():
    from types import SimpleNamespace

    from vaekit.anomaly.score import BATCH_PIXELS, default_batch

    def batch(size, read=0):
        return default_batch(SimpleNamespace(info=SimpleNamespace(image_size=size, read_size=read or size)))

    assert batch(28) == batch(256) == 64 and batch(512) == 16 and batch(1024) == 4
    assert all(batch(s) * s * s <= BATCH_PIXELS for s in (300, 512, 700, 1024))
    assert batch(1024, 2048) == 1 and batch(512, 1536) == 1  # files read larger than the model hold more pixels


def test_a_strip_too_long_to_score_whole_is_skipped_with_its_reason(surface, tmp_path):
    from vaekit.anomaly import score_images
    from vaekit.images.read import MAX_WHOLE_PIXELS

    folder = tmp_path / "strips"
    _wide(folder)  # 48 x 120: fine
    long = MAX_WHOLE_PIXELS // 48 + 48
    Image.new("L", (long, 48), 128).save(folder / "strip.png")
    rep = score_images(vaekit.load(surface / "run"), folder, score="atypicality")
    assert [Path(r.path).name for r in rep.rows] == ["wide.png"]
    assert [(p.name, "too elongated to score whole" in why) for p, why in rep.skipped] == [("strip.png", True)]


def test_a_batch_of_long_files_is_scored_a_bounded_run_of_files_at_a_time(surface, tmp_path, monkeypatch):
    """The tiles of a batch go through the model a few files at a time (BATCH_PIXELS), with the same rows."""
    import vaekit.inference.tiled as tiled
    from vaekit.anomaly import score_images

    folder = tmp_path / "mixed"
    for i, w in enumerate((120, 48, 200, 96)):
        _wide(folder / f"{i}", width=w, defect=None if i % 2 else 20, seed=i)
    m = vaekit.load(surface / "run")
    whole = score_images(m, folder, score="atypicality")
    calls = []
    real = type(m).score
    monkeypatch.setattr(type(m), "score", lambda self, x, **kw: calls.append(len(x)) or real(self, x, **kw))
    monkeypatch.setattr(tiled, "BATCH_PIXELS", 3 * 48 * 48)
    parts = score_images(m, folder, score="atypicality", batch_size=4)
    assert max(calls) <= 5 and len(calls) > 1  # the 200 px file alone is 5 tiles
    # the same numbers, up to float32 rounding where kernels sum other batches in another order
    np.testing.assert_allclose([r.score for r in parts.rows], [r.score for r in whole.rows], rtol=1e-4)
    for a, b in zip(parts.pixel_maps, whole.pixel_maps):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)
