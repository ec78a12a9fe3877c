"""Hostile inputs for a surface model that scores whole images in tiles (vaekit/images/tiles.py,
vaekit/inference/tiled.py): odd shapes, EXIF, colour modes, mixed batches, shards, resume, NaN,
masks, the thresholds a surface stores or is given, the ONNX export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaekit
from vaekit.config import ModelConfig, TrainConfig
from vaekit.train import train

from surface_support import killed_at_batch, train_surface

# every test reads one trained surface model and its readers; test_surface.py and test_read_size.py keep
# the fast tier's surface tests
pytestmark = pytest.mark.slow

S = 48  # the surface model's size


def _stripes(h, w, rng, phase=None):
    yy, xx = np.mgrid[:h, :w]
    p = rng.uniform(0, 6.3) if phase is None else phase
    return np.clip(128 + 60 * np.sin(xx / 2.0 + p) + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A gray surface model of 48 px with its defect reader (tests/test_surface.py's recipe)."""
    root = tmp_path_factory.mktemp("hostile-surface")
    data = root / "train"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(_stripes(S, S, rng)).save(data / f"s_{i:03d}.png")
    return train_surface(data, root / "run")


@pytest.fixture(scope="module")
def model(run):
    return vaekit.load(run)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Square, wide, tall, smaller than the model, RGB under a gray model, odd sizes, an EXIF-rotated JPEG."""
    d = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(1)
    Image.fromarray(_stripes(S, S, rng)).save(d / "a_square.png")
    Image.fromarray(_stripes(S, 130, rng)).save(d / "b_wide.png")
    Image.fromarray(_stripes(130, S, rng)).save(d / "c_tall.png")
    Image.fromarray(_stripes(20, 30, rng)).save(d / "d_small.png")  # upscaled to 48 x 72
    Image.fromarray(np.stack([_stripes(96, 200, rng)] * 3, -1)).save(d / "e_rgb.png")  # 48 x 100
    Image.fromarray(_stripes(49, 97, rng)).save(d / "f_odd.png")  # 48 x 95
    im = Image.fromarray(np.stack([_stripes(60, 150, rng)] * 3, -1))
    exif = im.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait (rotate 90)
    im.save(d / "g_exif.jpg", exif=exif, quality=95)
    return d


WANT_SHAPES = {"a_square.png": (S, S), "b_wide.png": (S, 130), "c_tall.png": (130, S), "d_small.png": (S, 72),
               "e_rgb.png": (S, 100), "f_odd.png": (S, 95), "g_exif.jpg": (120, S)}


# --- tiles: pure geometry ------------------------------------------------------------------


def test_tiles_are_the_fewest_evenly_spaced_and_cover_every_pixel():
    from vaekit.images.tiles import Tiling, starts

    rng = np.random.default_rng(0)
    for size in (16, 48, 64):
        for length in [size, size + 1, 2 * size - 1, 2 * size, 2 * size + 1, 7 * size + 3, *rng.integers(size, 40 * size, 30)]:
            st = starts(int(length), size)
            assert len(st) == -(-int(length) // size)  # the fewest
            assert st[0] == 0 and st[-1] == length - size and st == sorted(set(st))
            cover = np.zeros(int(length), int)
            for s in st:
                cover[s : s + size] += 1
            assert cover.min() >= 1  # no gap
            gaps = np.diff(st)
            assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1  # evenly spaced
    t = Tiling((S, 131), S)
    x = rng.integers(0, 256, (3, S, 131), dtype=np.uint8)
    np.testing.assert_array_equal(t.paste(t.cut(x)), x)
    const = np.full((len(t), S, S), 2.5, np.float32)
    assert np.all(t.average(const) == 2.5)


def test_a_side_shorter_than_the_tile_is_refused():
    from vaekit.images.tiles import tiling

    with pytest.raises(ValueError):
        tiling(np.zeros((1, S - 1, 200), np.uint8), S)


# --- what a folder of odd images scores as --------------------------------------------------


def test_a_mixed_folder_keeps_each_images_own_shape_and_orientation(model, mixed):
    from vaekit.anomaly import score_images

    rep = score_images(model, mixed)
    assert not rep.skipped
    assert isinstance(rep.images, list) and isinstance(rep.pixel_maps, list)
    for r, x, pm in zip(rep.rows, rep.images, rep.pixel_maps):
        name = Path(r.path).name
        assert pm.shape == WANT_SHAPES[name] and x.shape == (1, *WANT_SHAPES[name]), name
        assert np.isfinite(r.score) and np.isfinite(r.neg_elbo)
    # the Python API agrees with the job, image for image
    s = model.score(mixed)
    assert [p.name for p in s.paths] == [Path(r.path).name for r in rep.rows]
    np.testing.assert_allclose(s.score, [r.score for r in rep.rows], rtol=1e-6)
    np.testing.assert_allclose(s.neg_elbo, [r.neg_elbo for r in rep.rows], rtol=1e-6)
    assert [m.shape for m in s.pixel_map] == [m.shape for m in rep.pixel_maps]


def test_model_score_reads_a_generator_once_as_for_an_object_model(model, mixed):
    """A generator is read once (as documented), by a surface model too: it once read its input
    twice, and a generator was empty the second time ("no images given (an empty generator)")."""
    paths = sorted(mixed.glob("*.png"))
    want = model.score(paths)
    (part,) = list(model.iter_scores(p for p in paths))
    np.testing.assert_allclose(part.score, want.score, rtol=1e-6)
    np.testing.assert_allclose(model.score(p for p in paths).score, want.score, rtol=1e-6)
    x = model.score(np.stack([np.asarray(Image.open(paths[0]))[None]]))  # one square image of the model's size
    np.testing.assert_allclose(model.score(a for a in [np.asarray(Image.open(paths[0]))[None]]).score, x.score)


def test_an_images_score_does_not_depend_on_its_batch_neighbours(model, mixed):
    """Scored alone, or in batches of 1, 2 or 3 files with images of other shapes: the same numbers."""
    from vaekit.anomaly import score_images

    alone = {p.name: score_images(model, p, maps=False).rows[0] for p in sorted(mixed.iterdir())}
    for bs in (1, 2, 3):
        for r in score_images(model, mixed, maps=False, batch_size=bs).rows:
            a = alone[Path(r.path).name]
            np.testing.assert_allclose([r.score, r.neg_elbo, r.bits_per_dim], [a.score, a.neg_elbo, a.bits_per_dim],
                                       rtol=1e-5, err_msg=f"{r.path} batch {bs}")


def test_a_wide_images_numbers_are_its_tiles_merged_as_documented(model, mixed):
    """score = the largest tile's; nats = tile sums x image/tile pixels; bits/dim = -ELBO / (H W C ln 2);
    map = the tiles' maps averaged where they overlap."""
    from vaekit.images import load_image
    from vaekit.images.tiles import tiling

    for name in ("b_wide.png", "c_tall.png", "f_odd.png"):
        x = load_image(mixed / name, S, 1, crop=False)
        t = tiling(x, S)
        for sc in ("defect", "atypicality", "neg_elbo"):
            per_tile = model.score(t.cut(x), score=sc)
            whole = model.score(mixed / name, score=sc)
            np.testing.assert_allclose(whole.score, [per_tile.score.max()], rtol=1e-6)
            np.testing.assert_allclose(whole.neg_elbo, [per_tile.neg_elbo.sum() * t.area_share()], rtol=1e-6)
            h, w = x.shape[1:]
            np.testing.assert_allclose(whole.bits_per_dim, [per_tile.bits_per_dim.mean()], rtol=1e-6)
            np.testing.assert_allclose(whole.pixel_map[0], t.average(per_tile.pixel_map), rtol=1e-6)


def test_too_elongated_portrait_strips_are_skipped_and_the_rest_scored(model, tmp_path):
    from vaekit.anomaly import score_images
    from vaekit.images.read import MAX_WHOLE_PIXELS

    rng = np.random.default_rng(2)
    Image.fromarray(_stripes(S, 100, rng)).save(tmp_path / "ok.png")
    Image.new("L", (S, MAX_WHOLE_PIXELS // S + S), 128).save(tmp_path / "tall_strip.png")
    Image.new("L", (1, 400), 128).save(tmp_path / "thin.png")  # 1 px wide: 48 x 19200 at the model's scale, scored
    rep = score_images(model, tmp_path, maps=False)
    assert sorted(Path(r.path).name for r in rep.rows) == ["ok.png", "thin.png"]
    assert [(p.name, "too elongated to score whole" in why) for p, why in rep.skipped] == [("tall_strip.png", True)]


def test_a_nan_tile_makes_its_image_nan_and_anomalous_fail_closed(model, mixed, monkeypatch):
    from vaekit.anomaly import score_images

    real = type(model).score

    def poisoned(self, x, **kw):
        s = real(self, x, **kw)
        if isinstance(x, np.ndarray) and len(x) > 1:
            s.score = s.score.copy()
            s.score[1] = np.nan  # the second tile of the batch
        return s

    monkeypatch.setattr(type(model), "score", poisoned)
    rep = score_images(model, mixed / "b_wide.png", maps=True)
    r = rep.rows[0]
    assert np.isnan(r.score) and r.anomalous is True


@pytest.mark.slow  # trains its own surface model and readers
def test_gray_and_palette_files_under_an_rgb_surface(tmp_path):
    """An RGB surface reads a gray, a palette-with-transparency and a 16-bit file whole, at their shapes."""
    data = tmp_path / "rgb"
    data.mkdir()
    rng = np.random.default_rng(4)
    for i in range(24):
        g = _stripes(S, S, rng)
        Image.fromarray(np.stack([g, 255 - g, g // 2], -1)).save(data / f"c_{i:03d}.png")
    m = vaekit.load(train_surface(data, tmp_path / "run", epochs=1, reader_steps=10))
    assert m.info.channels == 3 and len(m.info.latent_shape) == 3
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(_stripes(60, 150, rng)).save(odd / "gray.png")
    Image.fromarray(np.stack([_stripes(S, 100, rng)] * 3, -1)).convert("P").save(odd / "pal.png", transparency=0)
    Image.fromarray((_stripes(100, S, rng).astype(np.uint16) * 257)).save(odd / "deep.png")
    s = m.score(odd)
    assert not s.skipped and [p.name for p in s.paths] == ["deep.png", "gray.png", "pal.png"]
    assert [pm.shape for pm in s.pixel_map] == [(100, S), (S, 120), (S, 100)]
    assert np.all(np.isfinite(s.score))


def test_the_web_apps_anomaly_tab_draws_each_upload_at_its_own_shape(model, mixed, tmp_path):
    pytest.importorskip("vaekit_demo")
    from vaekit_demo import handlers

    uploads = sorted(mixed.iterdir())
    r = handlers.anomaly(model, uploads, 0.5, tmp_path)
    assert [o.shape for o in r.overlays] == [(3, *WANT_SHAPES[p.name]) for p in uploads]
    assert len(r.rows) == len(uploads) and r.csv.is_file()


# --- scoring jobs: JSON, shards, resume, maps -----------------------------------------------


def test_json_output_of_a_mixed_folder_is_valid_and_complete(run, mixed, tmp_path):
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    r = CliRunner().invoke(app, ["anomaly-score", str(run), str(mixed), "-o", str(tmp_path / "s.json"),
                                 "--maps", str(tmp_path / "maps")])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "s.json").read_text())
    rows = doc["images"]
    assert doc["n_images"] == len(WANT_SHAPES) and doc["skipped"] == []
    assert sorted(Path(x["path"]).name for x in rows) == sorted(WANT_SHAPES)
    for name, (h, w) in WANT_SHAPES.items():
        with Image.open(tmp_path / "maps" / Path(name).with_suffix(".png")) as im:
            k = im.size[1] // h
            assert im.size == (w * k, h * k), name


def _csv_rows(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


def test_two_shards_with_maps_merge_into_the_single_runs_file(model, mixed, tmp_path):
    from vaekit import anomaly

    anomaly.score_to_file(model, mixed, tmp_path / "whole.csv", tmp_path / "m1", batch_size=2)
    r0 = anomaly.score_to_file(model, mixed, tmp_path / "s.csv", tmp_path / "m2", batch_size=2, shard=(0, 2))
    assert not r0.merged
    r1 = anomaly.score_to_file(model, mixed, tmp_path / "s.csv", tmp_path / "m2", batch_size=2, shard=(1, 2))
    assert r1.merged
    assert (tmp_path / "s.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    one, two = sorted((tmp_path / "m1").rglob("*.png")), sorted((tmp_path / "m2").rglob("*.png"))
    assert [p.name for p in one] == [p.name for p in two] and len(one) == len(WANT_SHAPES)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


def test_resume_after_a_stop_mid_job_gives_the_same_file_and_maps(model, mixed, tmp_path):
    from vaekit import anomaly

    anomaly.score_to_file(model, mixed, tmp_path / "whole.csv", tmp_path / "m1", batch_size=2)
    killed_at_batch(3, model, lambda: anomaly.score_to_file(model, mixed, tmp_path / "s.csv", tmp_path / "m2",
                                                             batch_size=2))
    assert not (tmp_path / "s.csv").exists()
    rep = anomaly.score_to_file(model, mixed, tmp_path / "s.csv", tmp_path / "m2", batch_size=2, resume=True)
    assert rep.resumed == 2 and rep.count == len(WANT_SHAPES)
    assert (tmp_path / "s.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    one, two = sorted((tmp_path / "m1").rglob("*.png")), sorted((tmp_path / "m2").rglob("*.png"))
    assert [p.name for p in one] == [p.name for p in two]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


# --- evaluate --masks -----------------------------------------------------------------------


def _labelled(root: Path, h: int, w: int, suffix: str) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(9)
    normal, bad = root / "normal", root / "bad"
    normal.mkdir()
    bad.mkdir()
    Image.fromarray(_stripes(h, w, rng, phase=1.0)).save(normal / f"n{suffix}", quality=95)
    img = _stripes(h, w, rng, phase=1.0)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 3 : h // 2, w - w // 5 : w - w // 10] = 255  # beyond the centre square
    img[mask > 0] = 0
    Image.fromarray(img).save(bad / f"b{suffix}", quality=95)
    return normal, bad, mask


@pytest.mark.parametrize("h, w, suffix, resize", [
    (96, 96, ".png", None),  # a square image's mask at another resolution than the model's
    # an 803 x 401 JPEG is decoded at 1/8 scale (draft: 101 x 51) and comes out 95 x 48; its PNG mask of
    # exactly its size, decoded in full, 96 x 48: resized to the map (it was once refused)
    (401, 803, ".jpg", None),
    # a half-resolution mask (151 x 50 of 301 x 100) becomes 145 x 48, its image 144 x 48: one pixel of
    # rounding is resized away, as an object model (centre squares) accepts the same mask
    (100, 301, ".png", (151, 50)),
])
def test_a_mask_of_its_images_aspect_is_fitted_to_the_map(model, tmp_path, h, w, suffix, resize):
    from vaekit.anomaly import evaluate

    normal, bad, mask = _labelled(tmp_path, h, w, suffix)
    (tmp_path / "masks").mkdir()
    img = Image.fromarray(mask)
    (img.resize(resize, Image.Resampling.NEAREST) if resize else img).save(tmp_path / "masks" / "b_mask.png")
    ev = evaluate(model, normal, bad, masks=tmp_path / "masks")
    assert ev.n_masks == 1 and 0.0 <= ev.pixel_auroc <= 1.0


def test_a_wide_mask_of_another_aspect_is_refused_with_a_reason(model, tmp_path):
    from vaekit.anomaly import evaluate
    from vaekit.errors import BadInput

    normal, bad, mask = _labelled(tmp_path, 100, 300, ".png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask[:, :200]).save(tmp_path / "masks" / "b.png")
    with pytest.raises(BadInput, match="must have its image's aspect ratio"):
        evaluate(model, normal, bad, masks=tmp_path / "masks")


# --- thresholds: every one must be about the score anomaly-score computes ---------------------


def _wide_normals(folder: Path, n: int, seed: int, w: int = 144) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(_stripes(S, w, rng)).save(folder / f"n{i:02d}.png")
    return folder


def test_threshold_normal_sets_the_nats_thresholds_from_the_scores_anomaly_score_gives(run, tmp_path):
    """`threshold --normal` stores every score as anomaly-score computes it: for a nats score the
    largest tile's, not the image's nats column (the tiles' sums scaled to the image, ~3x a tile's
    on a 48 x 144 image), which once made those thresholds 3x every score they met."""
    from typer.testing import CliRunner

    from vaekit.anomaly import score_images
    from vaekit_cli.main import app

    shutil.copytree(run, tmp_path / "run")
    normal = _wide_normals(tmp_path / "normal", 12, seed=7)
    r = CliRunner().invoke(app, ["threshold", str(tmp_path / "run"), "--normal", str(normal)])
    assert r.exit_code == 0, r.output
    by_score = json.loads((tmp_path / "run" / "config.json").read_text())["anomaly"]["by_score"]
    m = vaekit.load(tmp_path / "run")
    # (taken from two passes now, each column its largest tile's, where it was a pass per score)
    for name in ("defect", "atypicality", "neg_elbo", "excess", "recon", "kl"):
        got = np.sort([x.score for x in score_images(m, normal, score=name, maps=False).rows])
        stored = np.sort(by_score[name]["scores"])
        np.testing.assert_allclose(stored, got, rtol=1e-4, err_msg=name)


def test_a_cross_fitted_surface_sets_its_thresholds_from_whole_images(tmp_path):
    """A surface without its reader, on fewer than 200 images, is cross-fitted, and its fold
    models score each held-out file whole, a row per tile (they once scored the centre squares:
    with sides unlike the centre, every training image was then flagged anomalous)."""
    from vaekit.anomaly import score_images

    data = tmp_path / "wide"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(16):
        img = _stripes(S, 144, rng).astype(np.int32)
        img[:, :40], img[:, 104:] = 250, 5  # the sides unlike the centre square
        Image.fromarray(img.astype(np.uint8)).save(data / f"w_{i:03d}.png")
    train(data, tmp_path / "run", ModelConfig(base_channels=4),
          TrainConfig(epochs=2, crop=32, device="cpu", reader=False))
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["anomaly"]["source"] == "cross-fitted" and len(vaekit.load(tmp_path / "run").info.latent_shape) == 3
    rows = score_images(vaekit.load(tmp_path / "run"), data, maps=False).rows
    flagged = sum(r.anomalous for r in rows)
    assert flagged <= len(rows) // 2, f"{flagged} of {len(rows)} training images flagged anomalous"


# --- the ONNX export ------------------------------------------------------------------------


@pytest.mark.slow
def test_an_onnx_export_scores_a_mixed_folder_whole_as_the_run_does(run, mixed, tmp_path):
    from typer.testing import CliRunner

    from vaekit.anomaly import score_images
    from vaekit_cli.main import app

    r = CliRunner().invoke(app, ["export", str(run), "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    a, b = vaekit.load(run), vaekit.load(tmp_path / "m.onnx")
    for sc in ("defect", "neg_elbo"):
        ra, rb = score_images(a, mixed, score=sc), score_images(b, mixed, score=sc)
        assert [x.path for x in ra.rows] == [x.path for x in rb.rows]
        np.testing.assert_allclose([x.score for x in rb.rows], [x.score for x in ra.rows], rtol=1e-4, atol=1e-5)
        assert [m.shape for m in rb.pixel_maps] == [m.shape for m in ra.pixel_maps]
    r = CliRunner().invoke(app, ["anomaly-score", str(tmp_path / "m.onnx"), str(mixed), "-o", str(tmp_path / "o.csv")])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "o.csv").read_text().splitlines()) == 1 + len(WANT_SHAPES)


def test_a_jpeg_read_at_reduced_scale_keeps_its_full_aspect_ratio(tmp_path):
    """An 803 x 401 JPEG decoded at 1/8 scale is 101 x 51 (sides rounded up): read whole at 48 px it
    is 96 x 48, as the same image saved as PNG, not 95 x 48; EXIF rotation swaps the sides alike."""
    from vaekit.images import load_image

    rng = np.random.default_rng(0)
    img = Image.fromarray(_stripes(401, 803, rng))
    img.save(tmp_path / "a.jpg", quality=95)
    img.save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.jpg", S, 1, crop=False).shape == load_image(tmp_path / "a.png", S, 1, crop=False).shape
    assert load_image(tmp_path / "a.png", S, 1, crop=False).shape == (1, 48, 96)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the image stands 803 tall
    img.save(tmp_path / "r.jpg", quality=95, exif=exif)
    assert load_image(tmp_path / "r.jpg", S, 1, crop=False).shape == (1, 96, 48)


def test_a_journal_from_when_a_surface_read_centre_squares_is_not_resumed(model, mixed, tmp_path):
    """Rows of centre squares and rows of whole images must not mix in one file: a journal whose
    settings do not say the files are read whole (written before) is refused, naming why."""
    from vaekit import anomaly
    from vaekit.errors import BadInput

    killed_at_batch(2, model, lambda: anomaly.score_to_file(model, mixed, tmp_path / "s.csv", batch_size=2))
    partial = tmp_path / "s.csv.partial"
    lines = partial.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    assert header.pop("read") == "whole, in tiles"
    partial.write_bytes(b"\n".join([json.dumps(header).encode(), *lines[1:]]))
    with pytest.raises(BadInput, match="read absent then, 'whole, in tiles' now"):
        anomaly.score_to_file(model, mixed, tmp_path / "s.csv", batch_size=2, resume=True)


@pytest.mark.parametrize("setting, value", [("map_names", "whole name where two share one"), ("reader_windows", 1024)])
def test_a_journal_from_before_the_map_names_or_the_reader_windows_changed_is_not_resumed(
        model, mixed, tmp_path, setting, value):
    """Heat maps named x.png / x-1.png (before 2026-12-06) and maps named as reconstruct names its
    outputs, or defect scores read in 256 px windows and in 1024 px ones, must not mix in one job:
    a journal whose settings lack the key (written before) is refused, naming it. Without the key
    the resume looked for the maps of finished batches under their new names and said they were
    gone, as if the user had removed them."""
    from vaekit import anomaly
    from vaekit.errors import BadInput

    killed_at_batch(2, model, lambda: anomaly.score_to_file(model, mixed, tmp_path / "s.csv", tmp_path / "maps", batch_size=2))
    partial = tmp_path / "s.csv.partial"
    lines = partial.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    assert header.pop(setting) == value
    partial.write_bytes(b"\n".join([json.dumps(header).encode(), *lines[1:]]))
    with pytest.raises(BadInput, match=f"{setting} absent then"):
        anomaly.score_to_file(model, mixed, tmp_path / "s.csv", tmp_path / "maps", batch_size=2, resume=True)
