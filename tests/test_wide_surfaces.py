"""A surface model learns from the whole of images that are not square (vaekit/training/wide.py):
the pixel cache's whole-image entry, the draw of a tile per image, and training end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from surface_support import train_surface
from vaekit.training import cache
from vaekit.training.loop import plan_text
from vaekit.training.wide import WideImages


def _wide_texture(folder, n=24, shape=(48, 144), dark=40, seed=0):
    """Stripes with noise, each image's left `dark` columns a dark band: the centre square of a
    48 x 144 image (columns 48..95) never holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = shape
    xx = np.mgrid[:h, :w][1]
    for i in range(n):
        img = 128 + 60 * np.sin(xx / 2.0 + rng.uniform(0, 6.3)) + rng.normal(0, 12, shape)
        img[:, :dark] = 30 + rng.normal(0, 5, (h, dark))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"s_{i:03d}.png")
    return sorted(folder.iterdir())


def test_the_whole_entry_holds_each_images_tiles_and_is_found_again(tmp_path):
    from vaekit.images import load_image
    from vaekit.images.tiles import tiling

    paths = _wide_texture(tmp_path / "wide", n=3)
    Image.new("L", (48, 48), 77).save(tmp_path / "wide" / "square.png")
    Image.new("L", (48, 100), 99).save(tmp_path / "wide" / "portrait.png")
    paths = sorted((tmp_path / "wide").iterdir())
    got = cache.load_cached(paths, 48, 1, tmp_path / "cache", whole=True)
    assert not got.hit and got.counts == [3, 3, 3, 3, 1]  # portrait.png: 100 px in 48 px tiles -> 3; square.png 1
    rows = np.cumsum([0, *got.counts])
    for i, p in enumerate(got.paths):
        x = load_image(p, 48, 1, crop=False)
        np.testing.assert_array_equal(got.images[rows[i] : rows[i + 1]], tiling(x, 48).cut(x))
    again = cache.load_cached(paths, 48, 1, tmp_path / "cache", whole=True)
    assert again.hit and again.counts == got.counts and again.sha256 == got.sha256
    square = cache.load_cached(paths, 48, 1, tmp_path / "cache")  # the centre squares: an entry of its own
    assert not square.hit and square.counts is None and square.images.shape == (5, 1, 48, 48)


def test_a_file_too_elongated_to_read_whole_gives_its_centre_square_and_the_rest_train_whole(tmp_path, monkeypatch):
    """One strip past the limit of a whole read (read.MAX_WHOLE_PIXELS) was left out of the whole
    entry, and that turned every image of the folder back to its centre square, the plan blaming
    the pixel cache (h1)."""
    import vaekit.images.read as read
    from vaekit.training.wide import load_wide

    _wide_texture(tmp_path / "wide", n=4)
    Image.new("L", (48 * 12, 48), 90).save(tmp_path / "wide" / "zz_strip.png")
    paths = sorted((tmp_path / "wide").iterdir())
    monkeypatch.setattr(read, "MAX_WHOLE_PIXELS", 48 * 48 * 6)  # 3 squares read whole, not 12
    got = cache.load_cached(paths, 48, 1, tmp_path / "cache", whole=True)
    assert got.counts == [3, 3, 3, 3, 1] and not got.skipped
    np.testing.assert_array_equal(got.images[-1], np.full((1, 48, 48), 90, np.uint8))
    data = cache.load_cached(paths, 48, 1, tmp_path / "cache")
    wide = load_wide(type("D", (), {"paths": data.paths, "images": data.images})(), 48, tmp_path / "cache")
    assert wide is not None and len(wide.tiles) == 13


def test_an_entry_whose_counts_do_not_add_up_is_rebuilt(tmp_path):
    paths = _wide_texture(tmp_path / "wide", n=2)
    got = cache.load_cached(paths, 48, 1, tmp_path / "cache", whole=True)
    meta_path = tmp_path / "cache" / f"{got.key}.json"
    meta = json.loads(meta_path.read_text())
    meta["counts"] = [2, 3]  # 5 rows claimed of 6
    meta_path.write_text(json.dumps(meta))
    again = cache.load_cached(paths, 48, 1, tmp_path / "cache", whole=True)
    assert not again.hit and again.counts == [3, 3]


def test_a_tile_is_drawn_per_image_the_same_on_any_number_of_ranks():
    wide = WideImages(np.zeros((9, 1, 4, 4), np.uint8), np.array([0, 3, 4, 9]))
    batch, seed = np.array([0, 2, 1, 2, 0]), [5, 1, 2, 3]
    whole = wide.pick(batch, np.arange(5), 5, seed)
    for world in (2, 3):
        for rank in range(world):
            places = np.arange(rank, 5, world)
            np.testing.assert_array_equal(wide.pick(batch[places], places, 5, seed), whole[places])
    assert all(wide.first[i] <= r < wide.first[i + 1] for i, r in zip(batch, whole))
    drawn = np.concatenate([wide.pick(np.array([2]), np.array([0]), 1, [k]) for k in range(200)])
    assert set(drawn) == {4, 5, 6, 7, 8}  # every tile of image 2, in time
    np.testing.assert_array_equal(wide.rows(np.array([0, 2])), [0, 1, 2, 4, 5, 6, 7, 8])


def test_a_crop_is_placed_the_same_on_any_number_of_ranks(tmp_path):
    """Each rank's windows of a global batch are those one process places on the same images
    (vaekit.training.trainer: their places in the sorted global batch), so torchrun trains the
    model one process does; they were drawn by a rank's own count, and differed (h1)."""
    import torch

    from vaekit.training.data import read_ahead
    from vaekit.training.distributed import Dist
    from vaekit.training.trainer import _share

    images = np.random.default_rng(0).integers(0, 256, (12, 1, 40, 40), np.uint8)
    np.save(tmp_path / "x.npy", images)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    batch, seed = np.array([7, 2, 9, 0, 4]), [3, 1, 0]
    (one,) = read_ahead(mapped, iter([np.sort(batch)]), torch.device("cpu"), crop=16, seeds=iter([seed]))
    for world in (2, 3):
        for rank in range(world):
            mine, _, n = _share(batch, Dist(rank=rank, world=world, local_rank=rank))
            places = np.searchsorted(np.sort(batch), mine)
            (got,) = read_ahead(mapped, iter([mine]), torch.device("cpu"), crop=16, seeds=iter([(seed, places, n)]))
            assert torch.equal(got, one[places])


def _plans_into(plans: list):
    """A progress callback that keeps the metrics of each "plan" event in `plans`."""
    return lambda done, total, **m: plans.append(m) if m.get("phase") == "plan" else None


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
    """A surface trained on 2:1 stripes with a dark left end, the VAE's training windows and the
    readers' training images recorded on the way."""
    import vaekit.reader.train as reader_train
    import vaekit.training.crops as crops

    root = tmp_path_factory.mktemp("wide")
    _wide_texture(root / "train")
    windows, reader_images, plans = [], [], []
    mp = pytest.MonkeyPatch()
    gather, read_train = crops.gather_crops, reader_train.train_reader

    def gather_spy(images, idx, crop, seed):
        x = gather(images, idx, crop, seed)
        windows.append(x.numpy().copy())
        return x

    def reader_spy(images, *a, **kw):
        reader_images.append(np.asarray(images).copy())
        return read_train(images, *a, **kw)

    mp.setattr(crops, "gather_crops", gather_spy)
    mp.setattr(reader_train, "train_reader", reader_spy)
    mp.setenv("VAEKIT_CACHE_DIR", str(root / "cache"))
    try:
        train_surface(root / "train", root / "run", progress=_plans_into(plans))
    finally:
        mp.undo()
    return root, np.concatenate(windows), np.concatenate(reader_images), plans


def test_the_vae_and_its_readers_learn_from_the_ends_the_centre_square_never_holds(spied):
    root, windows, reader_images, plans = spied
    dark = lambda x: (x < 60).mean(axis=(1, 2, 3)) > 0.5  # noqa: E731 - a window mostly on the dark band
    assert dark(windows).mean() > 0.1  # the band is 40 of 144 columns; none of the centre square's 48
    assert reader_images.shape[1:] == (1, 48, 48) and len(reader_images) == 3 * 16  # 16 training images, 3 tiles each
    assert dark(reader_images).mean() > 0.2
    (plan,) = plans
    assert not any("not square" in n for n in plan["notes"])  # nothing left unseen to say
    assert "latent grid (8 per cell) trained on 32 px crops of each whole image" in plan_text(plan)
    assert json.loads((root / "run" / "config.json").read_text())["data"]["whole_squares"] == 24 * 3


def test_where_the_cache_cannot_hold_them_whole_the_centre_squares_train_and_the_plan_says_so(tmp_path, monkeypatch):
    _wide_texture(tmp_path / "train", n=12)
    monkeypatch.setattr(cache, "load_cached", _refusing_whole(cache.load_cached))
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(tmp_path / "cache"))
    plans = []
    train_surface(tmp_path / "train", tmp_path / "run", epochs=1, reader_steps=2, progress=_plans_into(plans))
    (note,) = [n for n in plans[0]["notes"] if "not square" in n]
    assert "the pixel cache could not hold them whole" in note
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["anomaly"]["score"] == "defect" and cfg["data"]["whole_squares"] == 0


def _dark_windows(monkeypatch) -> list:
    """The share of each VAE training batch's windows that lie mostly on the dark band, recorded."""
    import vaekit.training.crops as crops

    shares, gather = [], crops.gather_crops

    def spy(images, idx, crop, seed):
        x = gather(images, idx, crop, seed)
        shares.append(float(((x.numpy() < 60).mean(axis=(1, 2, 3)) > 0.5).mean()))
        return x

    monkeypatch.setattr(crops, "gather_crops", spy)
    return shares


def test_a_resume_trains_on_what_the_run_began_with(tmp_path, monkeypatch):
    """Whole images when the run began whole; the centre squares for a run begun before this change
    (its config.json has no whole_squares), so a resumed run is the run it would have been."""
    from vaekit.errors import VaekitError

    _wide_texture(tmp_path / "train", n=12)
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(tmp_path / "cache"))
    run = train_surface(tmp_path / "train", tmp_path / "run", epochs=1, reader_steps=2)
    shares = _dark_windows(monkeypatch)
    train_surface(tmp_path / "train", run, reader_steps=2, resume_epochs=8)
    assert np.mean(shares) > 0.1  # 7 more epochs on the whole images
    config = run / "config.json"
    cfg = json.loads(config.read_text())
    del cfg["data"]["whole_squares"]  # as a run begun by vaekit 0.3.0 wrote it
    config.write_text(json.dumps(cfg))
    shares.clear()
    train_surface(tmp_path / "train", run, reader_steps=2, resume_epochs=12)
    assert shares and max(shares) == 0  # its centre squares, as it began

    cfg["data"]["whole_squares"] = 36
    config.write_text(json.dumps(cfg))
    monkeypatch.setattr(cache, "load_cached", _refusing_whole(cache.load_cached))
    with pytest.raises(VaekitError, match="whole, in 36 squares, which the pixel cache cannot hold now"):
        train_surface(tmp_path / "train", run, reader_steps=2, resume_epochs=16)


def test_the_whole_entry_asks_for_the_room_of_its_squares_before_decoding(tmp_path, monkeypatch):
    """Three squares an image take three times a centre square's bytes: a disk with room for one
    is said to be short before any decoding (CannotWrite), never held in memory instead."""
    from vaekit.errors import CannotWrite
    from vaekit.training.wide import load_wide

    paths = _wide_texture(tmp_path / "wide", n=4)
    monkeypatch.setattr(cache, "_free_bytes", lambda root: 4 * 48 * 48 + 100)  # room for the centre squares
    with pytest.raises(CannotWrite, match="cannot hold these images decoded"):
        cache.load_cached(paths, 48, 1, tmp_path / "cache", whole=True, rows_per_image=3)
    assert not list((tmp_path / "cache").glob("*.u8"))
    data = cache.load_cached(paths, 48, 1, tmp_path / "cache2")  # fits
    assert load_wide(type("D", (), {"paths": data.paths, "images": data.images})(), 48, tmp_path / "cache") is None


def test_a_finished_runs_resume_needs_no_squares(tmp_path, monkeypatch):
    """Nothing is left to train: the resume neither decodes the images whole again nor refuses
    when the cache cannot hold them."""
    _wide_texture(tmp_path / "train", n=12)
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(tmp_path / "cache"))
    run = train_surface(tmp_path / "train", tmp_path / "run", epochs=2, reader_steps=2)
    before = (run / "config.json").read_bytes()
    monkeypatch.setattr(cache, "load_cached", _refusing_whole(cache.load_cached))
    train_surface(tmp_path / "train", run, reader_steps=2, resume_epochs=2)
    assert (run / "config.json").read_bytes() == before


def _refusing_whole(load):
    def refuse(*a, whole=False, **kw):
        if whole:
            raise OSError("no room")
        return load(*a, **kw)

    return refuse
