"""vaekit.training.cache: decode once, memory-map after; every change to the files is noticed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaekit import images
from vaekit.training import cache


def make_folder(root: Path, n: int = 4) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def forbid_decoding(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("decoded on a cache hit")

    from vaekit.images import load, read

    # wherever each step is looked up: the package, and the module that calls it
    for module in (images, load, read):
        for name in ["decode", "_decode", "load_image", "load_images", "iter_load", "_iter_load", "_read"]:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, boom)


def test_miss_then_hit_without_decoding(tmp_path, monkeypatch):
    paths = make_folder(tmp_path / "data")
    bad = tmp_path / "data" / "bad.jpg"
    bad.write_text("not a jpeg")
    paths.insert(1, bad)
    calls = []
    first = cache.load_cached(
        paths, 16, 3, cache_dir=tmp_path / "c", progress=lambda d, t, **kw: calls.append((d, t))
    )
    assert not first.hit and calls[-1] == (5, 5)
    assert first.images.shape == (4, 3, 16, 16)
    assert first.paths == [p for p in paths if p != bad]
    assert first.skipped == [(bad, "not an image")]
    expected = images.load_images(paths, 16, 3)
    np.testing.assert_array_equal(first.images, expected.images)

    entry = sorted(f.name for f in (tmp_path / "c").iterdir())
    assert entry == [f"{first.key}.json", f"{first.key}.u8"]  # and no temp files left behind
    meta = json.loads((tmp_path / "c" / f"{first.key}.json").read_text())
    assert meta["shape"] == [4, 3, 16, 16] and meta["size"] == 16 and meta["channels"] == 3

    forbid_decoding(monkeypatch)
    second = cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "c")
    assert second.hit and second.key == first.key
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    np.testing.assert_array_equal(second.images, expected.images)
    assert second.paths == first.paths and second.skipped == first.skipped


def test_hit_returns_the_callers_spelling_of_paths(tmp_path, monkeypatch):
    paths = make_folder(tmp_path / "data", 2)
    cache.load_cached(paths, 16, 1, cache_dir=tmp_path / "c")
    monkeypatch.chdir(tmp_path)
    relative = [Path("data") / p.name for p in paths]
    again = cache.load_cached(relative, 16, 1, cache_dir=tmp_path / "c")
    assert again.hit and again.paths == relative


def test_key_changes_with_files_and_settings(tmp_path):
    paths = make_folder(tmp_path / "data", 3)
    key = cache.cache_key(paths, 32, 3)
    assert len(key) == 24 and key == cache.cache_key([str(p) for p in paths], 32, 3)
    assert key != cache.cache_key(paths, 64, 3)
    assert key != cache.cache_key(paths, 32, 1)
    assert key != cache.cache_key(paths[:2], 32, 3)
    assert key != cache.cache_key(paths[::-1], 32, 3)
    st = paths[0].stat()
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert key != cache.cache_key(paths, 32, 3)


def test_touched_file_is_a_miss(tmp_path):
    paths = make_folder(tmp_path / "data", 3)
    first = cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "c")
    Image.new("RGB", (30, 30), (255, 0, 0)).save(paths[1])
    st = paths[1].stat()
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # even if the clock is coarse
    second = cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "c")
    assert not second.hit and second.key != first.key
    assert (second.images[1] == np.array([255, 0, 0])[:, None, None]).all()
    np.testing.assert_array_equal(second.images[0], first.images[0])


@pytest.mark.parametrize("damage", ["short", "long", "no_json", "bad_json", "wrong_shape"])
def test_corrupt_entry_is_rebuilt(tmp_path, damage):
    paths = make_folder(tmp_path / "data", 3)
    first = cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "c")
    reference = np.array(first.images)
    del first
    key = cache.cache_key(paths, 16, 3)
    u8, meta = tmp_path / "c" / f"{key}.u8", tmp_path / "c" / f"{key}.json"
    if damage == "short":
        u8.write_bytes(u8.read_bytes()[:-1])
    elif damage == "long":
        u8.write_bytes(u8.read_bytes() + b"\0")
    elif damage == "no_json":
        meta.unlink()
    elif damage == "bad_json":
        meta.write_text("{not json")
    else:
        m = json.loads(meta.read_text())
        m["shape"] = [1, 3, 16, 48]  # same byte count, wrong layout
        meta.write_text(json.dumps(m))
    rebuilt = cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "c")
    assert not rebuilt.hit
    np.testing.assert_array_equal(rebuilt.images, reference)
    assert u8.stat().st_size == reference.size
    assert cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "c").hit


def test_unwritable_cache_dir_still_loads(tmp_path):
    paths = make_folder(tmp_path / "data", 2)
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the cache folder should go")
    got = cache.load_cached(paths, 16, 3, cache_dir=blocker / "cache")
    assert not got.hit and got.images.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(got.images, images.load_images(paths, 16, 3).images)
    again = cache.load_cached(paths, 16, 3, cache_dir=blocker / "cache")
    assert not again.hit


def test_bad_arguments_raise_before_writing(tmp_path):
    paths = make_folder(tmp_path / "data", 1)
    with pytest.raises(ValueError, match="invalid size 4"):
        cache.load_cached(paths, 4, 3, cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="invalid channels 2"):
        cache.load_cached(paths, 16, 2, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_all_files_bad_and_empty_list(tmp_path, monkeypatch):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"")
    first = cache.load_cached([bad], 16, 1, cache_dir=tmp_path / "c")
    assert first.images.shape == (0, 1, 16, 16) and first.skipped == [(bad, "empty file")]
    forbid_decoding(monkeypatch)
    second = cache.load_cached([bad], 16, 1, cache_dir=tmp_path / "c")
    assert second.hit and second.images.shape == (0, 1, 16, 16) and second.skipped == first.skipped


def test_parallel_build_keeps_order(tmp_path):
    paths = make_folder(tmp_path / "data", 11)
    serial = images.load_images(paths, 16, 3)
    got = cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "c", workers=3)
    assert not got.hit and got.paths == paths
    np.testing.assert_array_equal(got.images, serial.images)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VAEKIT_CACHE_DIR", str(tmp_path / "v"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.default_cache_dir() == tmp_path / "v"
    monkeypatch.delenv("VAEKIT_CACHE_DIR")
    assert cache.default_cache_dir() == tmp_path / "x" / "vaekit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.default_cache_dir() == tmp_path / "home" / ".cache" / "vaekit"


def test_a_stale_entry_gives_its_room_back_before_the_rebuild(tmp_path, monkeypatch):
    """A chmod of an input makes its entry stale (inode and change times are pinned); on a disk
    with room for one entry the rebuild was refused (CannotWrite) while the stale one held it."""
    paths = make_folder(tmp_path / "data")
    first = cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "c")
    os.chmod(paths[0], 0o600)
    need = len(paths) * 3 * 16 * 16
    monkeypatch.setattr(cache, "MEMORY_FALLBACK", 0)
    monkeypatch.setattr(cache, "_free_bytes", lambda root: need - 1)  # the stale entry's bytes are taken
    again = cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "c")
    assert not again.hit and again.key == first.key  # rebuilt in its place, under the same key
    np.testing.assert_array_equal(again.images, first.images)
    assert sorted(f.name for f in (tmp_path / "c").iterdir()) == [f"{first.key}.json", f"{first.key}.u8"]


def test_reads_by_name_never_take_an_entry_rebuilt_under_the_same_name(tmp_path):
    """Training reads the cache with pread by file name; an entry rebuilt meanwhile (another
    run after a chmod, or files changed) under the same name gave this run the new file's rows."""
    from vaekit.training.crops import gather_crops
    from vaekit.training.data import gather

    paths = make_folder(tmp_path / "data")
    got = cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "c")
    mine = np.array(got.images)  # the run's own pixels
    data = Path(got.images.filename)
    other = tmp_path / "other.u8"
    other.write_bytes(bytes(255 - b for b in data.read_bytes()))
    os.replace(other, data)  # what a rebuild's atomic rename does
    idx = np.array([2, 0, 3])
    np.testing.assert_array_equal(gather(got.images, idx), mine[idx])
    want = gather_crops(np.asarray(mine), idx, 8, seed=5)  # the same windows, from memory
    assert np.array_equal(gather_crops(got.images, idx, 8, seed=5).numpy(), want.numpy())
