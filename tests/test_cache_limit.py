"""The pixel cache is bounded: the entries used longest ago go once it holds more than
VAEKIT_CACHE_MAX_GB; the entry in use and files vaekit did not write stay."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vaekit.errors import BadInput
from vaekit.training import cache

ENTRY = 3 * 16 * 16 * 4  # the pixel bytes of one entry below: four RGB images at 16 px


def folder(root: Path, seed: int) -> list[Path]:
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(4):
        paths.append(root / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def entries(root: Path) -> set[str]:
    return {p.stem for p in root.glob("*.json") if cache.ENTRY_NAME.fullmatch(p.stem)}


def load(paths, root, when: float | None = None) -> str:
    """Load through the cache; `when` back-dates the entry's last use (a clock, not a sleep)."""
    key = cache.load_cached(paths, 16, 3, cache_dir=root).key
    if when is not None:
        os.utime(root / f"{key}.json", (when, when))
    return key


def test_the_entries_used_longest_ago_go_first_and_a_hit_counts_as_a_use(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    sets = [folder(tmp_path / f"set{i}", i) for i in range(4)]
    a = load(sets[0], root, when=1_000)
    b = load(sets[1], root, when=2_000)
    assert entries(root) == {a, b}
    size = max(sum((root / f"{k}{ext}").stat().st_size for ext in (".u8", ".json")) for k in (a, b))
    assert size > ENTRY
    monkeypatch.setenv("VAEKIT_CACHE_MAX_GB", str(2.5 * size / 1e9))  # room for two entries, not three
    load(sets[0], root, when=3_000)  # a hit: a is now the more recent one
    c = load(sets[2], root)
    assert entries(root) == {a, c}, "b, used longest ago, should have gone"
    assert not (root / f"{b}.u8").exists()
    d = load(sets[3], root)
    assert entries(root) == {c, d}


def test_the_entry_in_use_stays_even_when_it_alone_is_over_the_limit(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("VAEKIT_CACHE_MAX_GB", "0")
    first = load(folder(tmp_path / "one", 0), root)
    second = load(folder(tmp_path / "two", 1), root)
    assert entries(root) == {second} and first != second
    hit = cache.load_cached(sorted((tmp_path / "two").iterdir()), 16, 3, cache_dir=root)
    assert hit.hit and hit.images.shape == (4, 3, 16, 16)


def test_files_vaekit_did_not_write_are_left_alone(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    root.mkdir()
    theirs = {"notes.json": b'{"key": "notes"}', "0123456789abcdef01234567.json": b'{"a user": "file"}',
              "0123456789abcdef01234567.u8": b"their bytes"}
    for name, data in theirs.items():
        (root / name).write_bytes(data)
        os.utime(root / name, (1, 1))  # older than any entry: the first to go, were they entries
    monkeypatch.setenv("VAEKIT_CACHE_MAX_GB", "0")
    load(folder(tmp_path / "one", 0), root)
    load(folder(tmp_path / "two", 1), root)
    assert {n: (root / n).read_bytes() for n in theirs} == theirs


def test_the_default_limit_keeps_every_small_entry(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEKIT_CACHE_MAX_GB", raising=False)
    root = tmp_path / "cache"
    keys = {load(folder(tmp_path / f"s{i}", i), root) for i in range(3)}
    assert entries(root) == keys and cache.max_cache_bytes() == int(cache.DEFAULT_MAX_GB * 1e9)


@pytest.mark.parametrize("value", ["lots", "-1", "nan", "inf"])
def test_a_limit_that_is_not_a_size_is_one_clear_error_before_any_decoding(tmp_path, monkeypatch, value):
    monkeypatch.setenv("VAEKIT_CACHE_MAX_GB", value)
    paths = folder(tmp_path / "one", 0)
    with pytest.raises(BadInput, match="VAEKIT_CACHE_MAX_GB"):
        cache.load_cached(paths, 16, 3, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    from cli.main import app

    r = CliRunner().invoke(app, ["train", str(tmp_path / "one"), "--out", str(tmp_path / "run"), "--epochs", "1"],
                           env={"VAEKIT_CACHE_MAX_GB": value, "VAEKIT_CACHE_DIR": str(tmp_path / "cache")})
    assert r.exit_code == 2 and "VAEKIT_CACHE_MAX_GB" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
