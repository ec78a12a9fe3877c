"""Hostile tests of a surface read larger than the network (ModelConfig.read_size): the network's
limit is lowered to 48 px, so a surface of 96 x 144 px textures is a 48 px model reading its files
at 96 px in 48 px tiles (see test_read_size.py)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vaekit
from surface_support import killed_at_batch, train_read_larger

# every test reads one trained surface model and its readers; test_read_size.py keeps the fast tier's
# large-surface tests
pytestmark = pytest.mark.slow


def _textures(folder, n=24, h=96, w=144, seed=0, defect=False, rgb=False, prefix="t"):
    """Stripes with noise at a random phase; `defect`: a dark square at rows 60-72, cols 120-132 of a 96 x 144 image
    (scaled with the image)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    paths = []
    for i in range(n):
        img = 128 + 60 * np.sin(xx * 96 / min(h, w) / 2.0 + rng.uniform(0, 6.3)) + rng.normal(0, 12, (h, w))
        if defect:
            s = min(h, w) / 96
            img[int(60 * s):int(72 * s), int(120 * s):int(132 * s)] = 5
        a = np.clip(img, 0, 255).astype(np.uint8)
        if rgb:
            a = np.stack([a, a, a], -1)
        p = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return folder


def _mask(path, h=96, w=144):
    m = np.zeros((h, w), np.uint8)
    s = min(h, w) / 96
    m[int(60 * s):int(72 * s), int(120 * s):int(132 * s)] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)


def _cli(*args):
    from vaekit_cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(r, code=2):
    out = r.output.strip()
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and "this is a bug" not in r.output, r.output
    assert out and len(out.splitlines()) <= 2, r.output


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_large")
    train_read_larger(_textures(root / "train"), root / "run", epochs=2, reader_steps=20)
    return root


def _scores_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


# --- model info, config.json -----------------------------------------------------------------------

def test_run_is_a_48px_model_reading_at_96(large):
    m = vaekit.load(large / "run")
    assert (m.info.image_size, m.info.read_size) == (48, 96)


def test_an_old_config_without_read_size_loads_at_the_models_size(large, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(large / "run", run)
    cfg = json.loads((run / "config.json").read_text())
    del cfg["model"]["read_size"]
    cfg["data"].pop("read_size", None)
    (run / "config.json").write_text(json.dumps(cfg))
    m = vaekit.load(run)
    assert (m.info.image_size, m.info.read_size) == (48, 48)
    s = m.score(_textures(tmp_path / "in", n=1, seed=3), score="atypicality")
    assert np.asarray(s.pixel_map).shape[-2:] == (48, 72)


@pytest.mark.parametrize("bad", [-1, 32, 47, 10**6, 3073, "96", True, 96.5, None, [96]])
def test_a_hand_edited_bad_read_size_is_one_line_exit_2(large, tmp_path, bad):
    run = tmp_path / "bad"
    shutil.copytree(large / "run", run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["read_size"] = bad
    (run / "config.json").write_text(json.dumps(cfg))
    _textures(tmp_path / "in", n=1, seed=3)
    r = _cli("anomaly-score", run, tmp_path / "in", "-o", tmp_path / "s.csv")
    _one_line_error(r)
    assert not (tmp_path / "s.csv").exists()


# --- anomaly-score: shards and resume --------------------------------------------------------------

def test_shards_of_a_large_surface_merge_to_the_whole_jobs_scores(large, tmp_path):
    inp = tmp_path / "in"
    _textures(inp, n=3, seed=11, prefix="a")
    _textures(inp, n=2, seed=12, h=96, w=96, prefix="sq")  # square at the read size: 4 tiles
    _textures(inp, n=1, seed=13, h=40, w=300, prefix="strip")  # smaller than the read size, very wide
    _textures(inp, n=1, seed=14, h=200, w=300, rgb=True, prefix="rgb")  # larger, RGB into a grey model
    whole = tmp_path / "whole.csv"
    r = _cli("anomaly-score", large / "run", inp, "-o", whole, "--batch-size", "2")
    assert r.exit_code == 0, r.output
    sharded = tmp_path / "sharded.csv"
    for k in range(2):
        r = _cli("anomaly-score", large / "run", inp, "-o", sharded, "--shard", f"{k}/2", "--batch-size", "2")
        assert r.exit_code == 0, r.output
    a, b = _scores_csv(whole), _scores_csv(sharded)
    assert len(a) == len(b) == 7
    key = next(k for k in a[0] if k in ("path", "file", "name"))
    sa = {row[key]: float(row["score"]) for row in a}
    sb = {row[key]: float(row["score"]) for row in b}
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k] == pytest.approx(sb[k], rel=1e-5, abs=1e-6), k
    # the API reads the same files the same way
    api = vaekit.load(large / "run").score(sorted(inp.iterdir()))
    by_name = {p.name: s for p, s in zip(api.paths, api.score)}
    for k, v in sa.items():
        assert by_name[k.rsplit("/", 1)[-1]] == pytest.approx(v, rel=1e-5, abs=1e-6)


def test_resume_of_a_killed_scoring_job_gives_the_same_file_and_maps(large, tmp_path):
    from vaekit import anomaly

    inp = tmp_path / "in"
    _textures(inp, n=4, seed=21)
    _textures(inp, n=2, seed=22, h=60, w=200, rgb=True, prefix="w")
    m = vaekit.load(large / "run")
    anomaly.score_to_file(m, inp, tmp_path / "whole.csv", tmp_path / "m1", batch_size=2)
    killed_at_batch(2, m, lambda: anomaly.score_to_file(m, inp, tmp_path / "s.csv", tmp_path / "m2", batch_size=2))
    assert not (tmp_path / "s.csv").exists()
    rep = anomaly.score_to_file(m, inp, tmp_path / "s.csv", tmp_path / "m2", batch_size=2, resume=True)
    assert rep.resumed == 1 and rep.count == 6
    assert (tmp_path / "s.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    one, two = sorted((tmp_path / "m1").rglob("*.png")), sorted((tmp_path / "m2").rglob("*.png"))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 6
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


def test_a_journal_of_the_same_weights_read_at_another_size_is_not_resumed(large, tmp_path):
    """An old config (no read_size: read at 48) and the new one (96) share weights and fingerprint;
    rows scored at one size must not be continued at the other."""
    from vaekit import anomaly
    from vaekit.errors import BadInput

    run = tmp_path / "old"
    shutil.copytree(large / "run", run)
    cfg = json.loads((run / "config.json").read_text())
    del cfg["model"]["read_size"]
    (run / "config.json").write_text(json.dumps(cfg))
    inp = _textures(tmp_path / "in", n=6, seed=23)
    old = vaekit.load(run)
    killed_at_batch(2, old, lambda: anomaly.score_to_file(old, inp, tmp_path / "s.csv", batch_size=2))
    with pytest.raises(BadInput):
        anomaly.score_to_file(vaekit.load(large / "run"), inp, tmp_path / "s.csv", batch_size=2, resume=True)


# --- threshold --normal ----------------------------------------------------------------------------

def test_threshold_from_new_normal_images_reads_them_at_the_read_size(large, tmp_path):
    from vaekit.anomaly import score_images
    from vaekit.anomaly.new_normal import threshold_from_normal

    run = tmp_path / "run"
    shutil.copytree(large / "run", run)
    normal = _textures(tmp_path / "normal", n=12, seed=31)
    r = _cli("threshold", run, "--normal", normal)
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())["anomaly"]
    m = vaekit.load(run)
    for name, sec in cfg["by_score"].items():
        got = np.array([row.score for row in score_images(m, normal, score=name, maps=False).rows])
        stored = np.asarray(sec["scores"])
        assert len(stored) == 12, name
        np.testing.assert_allclose(np.sort(stored), np.sort(got), rtol=1e-4, atol=1e-6, err_msg=name)


# --- evaluate with masks ---------------------------------------------------------------------------

@pytest.mark.parametrize("mask_scale", [1, 2, 0.5])
def test_evaluate_masks_at_the_files_resolution_and_another_of_its_aspect(large, tmp_path, mask_scale):
    good = _textures(tmp_path / "good", n=3, seed=41)
    bad = _textures(tmp_path / "bad", n=3, seed=42, defect=True)
    for p in bad.iterdir():
        _mask(tmp_path / "masks" / p.name, int(96 * mask_scale), int(144 * mask_scale))
    r = _cli("evaluate", large / "run", "--normal", good, "--anomalous", bad, "--masks", tmp_path / "masks", "--json",
             "--score", "atypicality")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert out["n_masks"] == 3
    assert out["pixel_auroc"] > 0.7


def test_evaluate_masks_of_files_smaller_than_the_read_size(large, tmp_path):
    """Files of 48 x 72 (half the read size) and their masks at 48 x 72: both read at 96 x 144."""
    good = _textures(tmp_path / "good", n=2, seed=43, h=48, w=72)
    bad = _textures(tmp_path / "bad", n=2, seed=44, h=48, w=72, defect=True)
    for p in bad.iterdir():
        _mask(tmp_path / "masks" / p.name, 48, 72)
    r = _cli("evaluate", large / "run", "--normal", good, "--anomalous", bad, "--masks", tmp_path / "masks", "--json",
             "--score", "atypicality")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert out["n_masks"] == 2


def test_evaluate_a_mask_of_another_aspect_is_one_line(large, tmp_path):
    good = _textures(tmp_path / "good", n=2, seed=45)
    bad = _textures(tmp_path / "bad", n=2, seed=46, defect=True)
    for p in bad.iterdir():
        _mask(tmp_path / "masks" / p.name, 96, 96)
    r = _cli("evaluate", large / "run", "--normal", good, "--anomalous", bad, "--masks", tmp_path / "masks")
    _one_line_error(r)
    assert "aspect" in r.output


# --- the API: files against arrays -----------------------------------------------------------------

def test_a_square_file_at_the_read_size_scores_as_its_four_tiles(large, tmp_path):
    m = vaekit.load(large / "run")
    folder = _textures(tmp_path / "sq", n=2, seed=51, h=96, w=96)
    files = sorted(folder.iterdir())
    got = m.score(files, score="atypicality")
    assert np.asarray(got.pixel_map).shape == (2, 96, 96)
    for i, p in enumerate(files):
        x = np.asarray(Image.open(p))[None]  # (1, 96, 96)
        tiles = np.stack([x[:, t:t + 48, l:l + 48] for t in (0, 48) for l in (0, 48)])
        s = m.score(tiles, score="atypicality")
        assert got.score[i] == pytest.approx(float(np.max(s.score)), rel=1e-5, abs=1e-6)


def test_arrays_of_the_models_size_score_and_of_the_read_size_are_refused(large):
    from vaekit.errors import BadInput

    m = vaekit.load(large / "run")
    ok = m.score(np.full((2, 1, 48, 48), 128, np.uint8), score="atypicality")
    assert np.asarray(ok.pixel_map).shape == (2, 48, 48)
    with pytest.raises(BadInput):
        m.score(np.full((2, 1, 96, 96), 128, np.uint8), score="atypicality")
    with pytest.raises(BadInput):
        m.score(np.full((2, 1, 96, 144), 128, np.uint8))


@pytest.mark.parametrize("shape", [(96, 96), (40, 60), (96, 1500), (1500, 96), (97, 143)])
def test_files_of_any_shape_map_at_their_shape_at_the_read_size(large, tmp_path, shape):
    h, w = shape
    m = vaekit.load(large / "run")
    folder = _textures(tmp_path / "x", n=1, seed=61, h=h, w=w, rgb=True)
    s = m.score(folder, score="atypicality")
    k = 96 / min(h, w)
    want = (max(96, round(h * k)), max(96, round(w * k)))
    assert np.asarray(s.pixel_map).shape[-2:] == want
    assert np.isfinite(s.score).all()


# --- encode / reconstruct --------------------------------------------------------------------------

def test_encode_and_reconstruct_run_on_a_large_surface(large, tmp_path):
    inp = _textures(tmp_path / "in", n=2, seed=71)
    r = _cli("encode", large / "run", inp, "-o", tmp_path / "codes.npz")
    assert r.exit_code == 0, r.output
    r = _cli("reconstruct", large / "run", inp, "-o", tmp_path / "rec")
    assert r.exit_code == 0, r.output
    pngs = [p for p in (tmp_path / "rec").rglob("*.png") if p.name != "comparison.png"]
    assert pngs
    with Image.open(pngs[0]) as im:
        assert im.size == (48, 48)  # the centre square at the model's own size (docs/preprocessing.md)


def test_encode_and_reconstruct_of_bad_files_are_one_line(large, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.png").write_bytes(b"not a png at all")
    for cmd in ("encode", "reconstruct"):
        r = _cli(cmd, large / "run", inp, "-o", tmp_path / f"{cmd}.out")
        _one_line_error(r)


def test_encode_quality_uses_tables_fit_on_tiles(large, tmp_path):
    inp = _textures(tmp_path / "in", n=2, seed=72)
    r = _cli("encode", large / "run", inp, "-o", tmp_path / "c.vkc", "--quality", "4")
    assert r.exit_code == 0, r.output
    r = _cli("decode", large / "run", tmp_path / "c.vkc", "-o", tmp_path / "dec")
    assert r.exit_code == 0, r.output


# --- train ------------------------------------------------------------------------------------------

def test_image_size_above_the_limit_on_aligned_objects_with_auto_layout(tmp_path, monkeypatch):
    """--image-size 96 (above the 48 px limit), layout auto, on aligned objects (a disc in the centre):
    either a surface model or a one-line refusal that leaves no run directory."""
    import functools

    import vaekit.config
    import vaekit.reader.net as net

    monkeypatch.setattr(vaekit.config, "MAX_IMAGE_SIZE", 48)
    # the sizes are what is tested: the defect readers a few images of 96 px get train a few steps
    monkeypatch.setattr(net, "ReaderConfig", functools.partial(net.ReaderConfig, steps=20, batch=8, crop=32))
    d = tmp_path / "objs"
    d.mkdir()
    yy, xx = np.mgrid[:96, :96]
    rng = np.random.default_rng(0)
    for i in range(12):
        r0 = 25 + rng.uniform(-2, 2)
        img = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < r0 ** 2, 220, 20) + rng.normal(0, 3, (96, 96))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"o_{i:02d}.png")
    out = tmp_path / "r"
    r = _cli("train", d, "--out", out, "--image-size", "96", "--epochs", "1", "--device", "cpu")
    if r.exit_code == 0:
        cfg = json.loads((out / "config.json").read_text())["model"]
        assert cfg["layout"] == "grid" and (cfg["image_size"], cfg["read_size"]) == (48, 96)
    else:
        _one_line_error(r)
        assert not out.exists(), sorted(p.name for p in out.iterdir())


@pytest.mark.slow  # trains its own surface model and readers
def test_resume_of_a_large_surface_run_keeps_its_sizes(large, tmp_path):
    """`train --resume` (one more epoch) of a surface read larger than the network, with the limit
    back at its real value: the run keeps image_size 48, read_size 96, and scores as before in shape."""
    import functools

    import vaekit.reader.net as net
    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.train import train

    run = tmp_path / "run"
    shutil.copytree(large / "run", run)
    mp = pytest.MonkeyPatch()
    mp.setattr(net, "ReaderConfig", functools.partial(net.ReaderConfig, steps=20, batch=8, crop=32))
    try:
        train(large / "train", run, ModelConfig(), TrainConfig(device="cpu"), resume=True, resume_epochs=3)
    finally:
        mp.undo()
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["model"]["image_size"], cfg["model"]["read_size"], cfg["data"]["read_size"]) == (48, 96, 96)
    m = vaekit.load(run)
    assert (m.info.image_size, m.info.read_size) == (48, 96)
    s = m.score(_textures(tmp_path / "in", n=1, seed=81), score="atypicality")
    assert np.asarray(s.pixel_map).shape == (1, 96, 144)


@pytest.mark.parametrize("read_size", [50, 100])
def test_a_read_size_that_is_no_multiple_of_the_tile_scores_whole(large, tmp_path, read_size):
    run = tmp_path / "run"
    shutil.copytree(large / "run", run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["read_size"] = read_size
    (run / "config.json").write_text(json.dumps(cfg))
    inp = _textures(tmp_path / "in", n=2, seed=82)
    r = _cli("anomaly-score", run, inp, "-o", tmp_path / "s.csv", "--maps", tmp_path / "maps")
    assert r.exit_code == 0, r.output
    m = vaekit.load(run)
    s = m.score(inp, score="atypicality")
    assert np.asarray(s.pixel_map).shape == (2, read_size, round(144 * read_size / 96))


@pytest.mark.slow  # exports
def test_the_export_scores_odd_shapes_as_the_run_does_with_the_default_score(large, tmp_path):
    inp = tmp_path / "in"
    _textures(inp, n=1, seed=91, defect=True)
    _textures(inp, n=1, seed=92, h=96, w=96, prefix="sq")
    _textures(inp, n=1, seed=93, h=40, w=400, rgb=True, prefix="strip")
    r = _cli("export", large / "run", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    run, onnx = vaekit.load(large / "run"), vaekit.load(tmp_path / "m.onnx")
    assert onnx.info.score == run.info.score and (onnx.info.image_size, onnx.info.read_size) == (48, 96)
    want, got = run.score(inp), onnx.score(inp)
    np.testing.assert_allclose(got.score, want.score, rtol=1e-3, atol=1e-4)
    assert [np.shape(a) for a in got.pixel_map] == [np.shape(a) for a in want.pixel_map]
    assert sorted(np.shape(a) for a in got.pixel_map) == [(96, 96), (96, 144), (96, 960)]
    assert onnx.info.threshold == pytest.approx(run.info.threshold)


@pytest.mark.slow  # trains its own surface model and readers
def test_an_rgb_surface_read_at_a_size_no_multiple_of_four_or_the_tile(tmp_path):
    """RGB textures of 98 x 147 under a 48 px limit: read at 98 (tiles at 0, 25, 50 overlapping), the
    stored held-out scores are the scores `score_images` gives their files."""
    from vaekit.anomaly import score_images

    train_read_larger(_textures(tmp_path / "train", n=16, h=98, w=147, rgb=True), tmp_path / "run", epochs=1,
                      reader_steps=10)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["model"]["image_size"], cfg["model"]["read_size"], cfg["model"]["channels"]) == (48, 98, 3)
    m = vaekit.load(tmp_path / "run")
    for name, sec in cfg["anomaly"]["by_score"].items():
        got = np.array([r.score for r in score_images(m, tmp_path / "train", score=name, maps=False).rows])
        assert all(np.abs(got - s).min() <= 1e-4 * abs(s) + 1e-6 for s in sec["scores"]), name
    s = m.score(tmp_path / "train", score="atypicality")
    assert np.asarray(s.pixel_map).shape == (16, 98, 147)
