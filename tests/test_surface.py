"""A surface at its native resolution: a grid model trained on crops, its defect reader, and the
default score it gives (vaekit/training/finish_reader.py, vaekit/inference/engine_torch.py)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from PIL import Image

import vaekit
from vaekit.config import ModelConfig, TrainConfig
from vaekit.train import train


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
    import vaekit.reader.net as net

    root = tmp_path_factory.mktemp("surface")
    data = _texture(root / "train")
    mp = pytest.MonkeyPatch()
    mp.setattr(net, "ReaderConfig", functools.partial(net.ReaderConfig, steps=40, batch=8, crop=32))
    try:
        train(data, root / "run", ModelConfig(base_channels=4), TrainConfig(epochs=3, crop=32, device="cpu"))
    finally:
        mp.undo()
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


def test_a_run_whose_reader_is_gone_is_refused_not_scored_otherwise(surface, tmp_path):
    import shutil

    from vaekit.training.rundir import RunError

    run = tmp_path / "run"
    shutil.copytree(surface / "run", run)
    (run / "reader.safetensors").unlink()
    with pytest.raises(RunError, match="reader.safetensors is missing"):
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
