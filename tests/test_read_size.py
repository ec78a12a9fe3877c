"""A surface larger than the network's largest size (MAX_IMAGE_SIZE) keeps its resolution: its
files are read at their own size (ModelConfig.read_size) and scored whole in tiles of the
model's size. Here the limit is lowered to 48 px, so 96 px images take that path in seconds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vaekit
from surface_support import train_read_larger
from vaekit.config import ModelConfig
from vaekit.errors import BadInput


def _textures(folder, n=24, h=96, w=144, seed=0, defect=False):
    """Stripes with noise at a random phase: a surface, h x w px; `defect`: a dark 12 px square."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        img = 128 + 60 * np.sin(xx / 2.0 + rng.uniform(0, 6.3)) + rng.normal(0, 12, (h, w))
        if defect:
            img[60:72, 120:132] = 5
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"t_{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A surface of 96 x 144 px images trained with --image-size auto while the network's limit is 48 px."""
    root = tmp_path_factory.mktemp("large")
    train_read_larger(_textures(root / "train"), root / "run", epochs=2, reader_steps=20)
    return root


def test_auto_reads_a_large_surface_at_its_own_size_in_tiles_of_the_models(large):
    cfg = json.loads((large / "run" / "config.json").read_text())
    assert cfg["model"]["layout"] == "grid"
    assert (cfg["model"]["image_size"], cfg["model"]["read_size"], cfg["data"]["read_size"]) == (48, 96, 96)
    assert "read_size" in cfg["data"]["preprocessing"]
    m = vaekit.load(large / "run")
    assert (m.info.image_size, m.info.read_size) == (48, 96)


def test_a_large_surface_scores_whole_files_at_their_own_resolution(large, tmp_path):
    """Maps at 96 x 144 (not 48 x 72); a defect raises the score of its file and its map where it lies."""
    from vaekit.anomaly import score_images

    m = vaekit.load(large / "run")
    clean = score_images(m, _textures(tmp_path / "clean", n=2, seed=9), score="atypicality")
    bad = score_images(m, _textures(tmp_path / "bad", n=2, seed=9, defect=True), score="atypicality")
    assert bad.images[0].shape == (1, 96, 144) and bad.pixel_maps[0].shape == (96, 144)
    diff = np.abs(bad.pixel_maps[0] - clean.pixel_maps[0])
    assert diff[60:72, 120:132].mean() > diff[:, :48].mean()
    api = m.score(tmp_path / "bad", score="atypicality")
    np.testing.assert_allclose(api.score, [r.score for r in bad.rows], rtol=1e-6)


def test_a_large_surface_stores_thresholds_from_whole_files_read_at_their_size(large):
    from vaekit.anomaly import score_images

    m = vaekit.load(large / "run")
    by_score = json.loads((large / "run" / "config.json").read_text())["anomaly"]["by_score"]
    for name in ("defect", "atypicality"):
        got = np.array([r.score for r in score_images(m, large / "train", score=name).rows])
        assert all(np.abs(got - s).min() <= 1e-4 * abs(s) + 1e-6 for s in by_score[name]["scores"]), name


@pytest.mark.slow  # exports
def test_the_cli_and_an_export_read_a_large_surface_alike(large, tmp_path):
    from vaekit_cli.main import app

    _textures(tmp_path / "in", n=3, seed=4, defect=True)
    r = CliRunner().invoke(app, ["anomaly-score", str(large / "run"), str(tmp_path / "in"), "-o", str(tmp_path / "s.csv"),
                                 "--maps", str(tmp_path / "maps"), "--score", "atypicality"])
    assert r.exit_code == 0, r.output
    with Image.open(next((tmp_path / "maps").glob("*.png"))) as im:
        assert im.size == (144 * 2, 96 * 2)  # the whole image at 96 px, enlarged to >= 128 px
    r = CliRunner().invoke(app, ["export", str(large / "run"), "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    run, onnx = vaekit.load(large / "run"), vaekit.load(tmp_path / "m.onnx")
    assert (onnx.info.image_size, onnx.info.read_size) == (48, 96)
    want, got = run.score(tmp_path / "in", score="atypicality"), onnx.score(tmp_path / "in", score="atypicality")
    np.testing.assert_allclose(got.score, want.score, rtol=1e-3)
    assert got.pixel_map.shape == (3, 96, 144)


def test_a_read_size_is_for_surfaces_and_at_least_the_models_size():
    assert ModelConfig(image_size=48, read_size=96, layout="grid").reads_at == 96
    assert ModelConfig(image_size=48).reads_at == 48
    with pytest.raises(BadInput, match="read size"):
        ModelConfig(image_size=48, read_size=32, layout="grid")
    with pytest.raises(BadInput, match="only a surface model"):
        ModelConfig(image_size=48, read_size=96, layout="vector")
    with pytest.raises(BadInput, match="read size"):
        ModelConfig(image_size=1024, read_size=8192, layout="grid")


def test_the_sizes_and_the_crop_of_a_surface_read_larger_than_the_network():
    from vaekit.config import TrainConfig
    from vaekit.config import surface_sizes
    from vaekit.training.trainer import training_crop

    assert surface_sizes(700) == {"image_size": 700, "read_size": 0}
    assert surface_sizes(3000) == {"image_size": 1024, "read_size": 3000}
    grid = ModelConfig(image_size=48, read_size=96, layout="grid")
    assert training_crop(TrainConfig(), grid) == 48  # never larger than the model, though the images are
    assert training_crop(TrainConfig(crop=32), grid) == 32
    assert training_crop(TrainConfig(crop=48), ModelConfig(image_size=48, layout="grid")) is None


def test_the_reader_trains_on_windows_of_images_too_large_to_hold(monkeypatch):
    import vaekit.training.finish_reader as fr

    images = np.random.default_rng(0).integers(0, 256, (4, 1, 96, 96), dtype=np.uint8)
    data = SimpleNamespace(images=images, wide=None)
    np.testing.assert_array_equal(fr.training_images(data, np.arange(4), 48, 0), images)  # small enough: as they are
    monkeypatch.setattr(fr, "READER_PIXELS", 96 * 96)  # two images hold twice that
    monkeypatch.setattr(fr, "WINDOW", 32)
    at_size = fr.training_images(data, np.arange(4), 96, 0)  # the model's size: as they are, as many as fit
    assert at_size.shape == (1, 1, 96, 96) and any((at_size[0] == im).all() for im in images)
    got = fr.training_images(data, np.array([1, 3]), 48, 0)
    assert got.shape == (2 * 4, 1, 32, 32)  # 4 windows of each: 96 * 96 pixels in all
    first = got[0, 0]  # every window is a piece of its own image
    assert any((images[1, 0, y : y + 32, x : x + 32] == first).all() for y in range(65) for x in range(65))


def test_an_image_size_above_the_networks_is_a_surfaces_read_size(tmp_path):
    """--image-size N above 1024: a surface read at N in 1024 px tiles; an object model, or N above
    3072, is refused with one line (exit 2) and no run directory."""
    from vaekit.config import MAX_IMAGE_SIZE, MAX_READ_SIZE
    from vaekit_cli.main import app
    from vaekit_cli.train import _sizes

    assert _sizes(2048) == {"image_size": MAX_IMAGE_SIZE, "read_size": 2048} and _sizes(512) == {"image_size": 512}
    _textures(tmp_path / "d", n=3, h=40, w=40)
    for args, says in ((["--image-size", str(MAX_READ_SIZE + 1)], "--image-size must be from 16 to"),
                       (["--image-size", "2048", "--layout", "vector"], "only a surface model")):
        r = CliRunner().invoke(app, ["train", str(tmp_path / "d"), "--out", str(tmp_path / "r"), *args])
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "r").exists()


def test_a_resume_takes_the_image_size_the_run_was_asked_for(large, tmp_path):
    """`train --resume --image-size N` with the N the run was trained with: above the network's size
    that N is the read size, so it is no change; another N is refused as a change."""
    from vaekit.training.job import _resumed_configs

    stored = json.loads((large / "run" / "config.json").read_text())
    model_cfg, _ = _resumed_configs(stored, large / "run", {"image_size": 96})
    assert (model_cfg.image_size, model_cfg.read_size) == (48, 96)
    with pytest.raises(BadInput, match="cannot change --image-size 48 \\(the run has 96\\)"):
        _resumed_configs(stored, large / "run", {"image_size": 48})
