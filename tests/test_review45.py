"""Review 45: bugs found in the pixel cache's bound, the no-replace writes and their callers."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vaekit.training import cache


def _folder(root, seed):
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(4):
        paths.append(root / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_an_entry_just_built_is_not_lost_to_another_runs_bound_while_it_is_read_back(tmp_path, monkeypatch):
    """Run A builds its entry; while A reads it back (its sha256: minutes for a large entry),
    run B, using another entry, applies the bound (VAEKIT_CACHE_MAX_GB=0, or a cache too small
    for both) and removes A's entry. A had its pixels: it must go on with them, not fail with
    'could not be read back' (CannotWrite past MEMORY_FALLBACK) after all its decoding."""
    root = tmp_path / "cache"
    other = cache.load_cached(_folder(tmp_path / "b", 1), 16, 3, cache_dir=root).key
    monkeypatch.setenv("VAEKIT_CACHE_MAX_GB", "0")
    monkeypatch.setattr(cache, "MEMORY_FALLBACK", 0)  # as for any entry over 1 GB
    real = cache._sha256
    fired = []

    def sha_then_other_run(path):
        digest = real(path)
        if not fired:  # run B's use of its own entry, between A's checksum and A's mapping
            fired.append(1)
            cache._used(root, other, 0)
        return digest

    monkeypatch.setattr(cache, "_sha256", sha_then_other_run)
    paths = _folder(tmp_path / "a", 2)
    got = cache.load_cached(paths, 16, 3, cache_dir=root)
    assert fired and got.images.shape == (4, 3, 16, 16)
    expected = np.stack([np.asarray(Image.open(p)).transpose(2, 0, 1) for p in paths])
    assert np.array_equal(np.asarray(got.images), expected)


def test_a_hit_read_while_another_run_removes_it_is_still_a_hit(tmp_path, monkeypatch):
    """The same on a hit: removed between its checksum and its mapping, the entry was decoded again."""
    root = tmp_path / "cache"
    paths = _folder(tmp_path / "a", 2)
    mine = cache.load_cached(paths, 16, 3, cache_dir=root).key
    other = cache.load_cached(_folder(tmp_path / "b", 1), 16, 3, cache_dir=root).key
    import os
    os.utime(root / f"{mine}.json", (1000, 1000))  # A's entry used longest ago
    real = cache._sha256
    fired = []

    def sha_then_other_run(path):
        digest = real(path)
        if not fired:
            fired.append(1)
            cache._used(root, other, 0)
        return digest

    monkeypatch.setattr(cache, "_sha256", sha_then_other_run)
    got = cache.load_cached(paths, 16, 3, cache_dir=root)
    assert fired and got.hit and got.key == mine
