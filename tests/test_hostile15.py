"""The fifteenth hostile round: the pixel cache makes room before it builds an entry (a disk full of
its own old entries refused the build they would have made way for), and the web app's folders are
checked for links out of --data-root in the very walk that lists their images (a link made between
the app's walk and the library's was read)."""

from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from test_cache_limit import ENTRY, entries, folder, load
from test_hostile12 import GOLDEN, _press, data  # noqa: F401  (data: the fixture of both modules)
from vaekit.errors import BadInput, CannotWrite
from vaekit.images import LinkOutside, find_images
from vaekit.training import cache

Usage = collections.namedtuple("Usage", "total used free")
FOREIGN = "0123456789abcdef01234567"  # named like an entry; its JSON does not name its key: a user's files


def _disk_with(monkeypatch, free: int) -> None:
    """The cache's disk reports `free` bytes free, however much is removed (no real disk filled)."""
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - free, free))


def _theirs(root: Path) -> dict[str, bytes]:
    """Files vaekit did not write, older than any entry (the first to go, were they entries)."""
    theirs = {"notes.json": b'{"key": "notes"}', f"{FOREIGN}.json": b'{"a user": "file"}',
              f"{FOREIGN}.u8": bytes(4 * ENTRY)}
    for name, data in theirs.items():
        (root / name).write_bytes(data)
        os.utime(root / name, (1, 1))
    return theirs


# --- 1. room is made before an entry is built ------------------------------------------------

def test_a_disk_full_of_old_entries_gives_room_to_the_new_one_oldest_first(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEKIT_CACHE_MAX_GB", raising=False)  # the default bound: 20 GB, far above these
    root = tmp_path / "cache"
    old = [load(folder(tmp_path / f"old{i}", i), root, when=1_000 * (i + 1)) for i in range(3)]
    theirs = _theirs(root)
    _disk_with(monkeypatch, ENTRY - 1)  # one byte short: the build failed with CannotWrite
    monkeypatch.setattr(cache, "MEMORY_FALLBACK", 0)  # no way round the disk (as for any entry over 1 GiB)
    got = cache.load_cached(folder(tmp_path / "new", 9), 16, 3, cache_dir=root)
    assert not got.hit and got.images.shape == (4, 3, 16, 16)
    assert entries(root) - {FOREIGN} == {old[1], old[2], got.key}, "only the entry used longest ago should have gone"
    assert not (root / f"{old[0]}.u8").exists()
    assert {n: (root / n).read_bytes() for n in theirs} == theirs


def test_room_under_the_bound_is_made_before_decoding(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    a = load(folder(tmp_path / "a", 0), root, when=1_000)
    b = load(folder(tmp_path / "b", 1), root, when=2_000)
    size = max(sum((root / f"{k}{ext}").stat().st_size for ext in (".u8", ".json")) for k in (a, b))
    monkeypatch.setenv("VAEKIT_CACHE_MAX_GB", str(2.5 * size / 1e9))  # room for two entries, not three
    seen = []
    decode = cache.images.iter_load

    def iter_load(*args, **kwargs):
        seen.append(entries(root))
        return decode(*args, **kwargs)

    monkeypatch.setattr(cache.images, "iter_load", iter_load)
    c = load(folder(tmp_path / "c", 2), root)
    assert seen == [{b}] and entries(root) == {b, c}


def test_a_disk_too_small_even_without_old_entries_is_one_line_and_removes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEKIT_CACHE_MAX_GB", raising=False)
    root = tmp_path / "cache"
    old = {load(folder(tmp_path / f"old{i}", i), root, when=1_000 * (i + 1)) for i in range(2)}
    theirs = _theirs(root)
    before = sorted(p.name for p in root.iterdir())
    _disk_with(monkeypatch, 0)  # both old entries (their pixels and JSON) hold less than 12 images need
    monkeypatch.setattr(cache, "MEMORY_FALLBACK", 0)
    paths = folder(tmp_path / "new", 9)
    for i in range(4, 12):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(paths[0].parent / f"more{i}.png")
    with pytest.raises(CannotWrite, match=r"cannot hold these images decoded \(0\.0 GB at 16 px; 0\.0 GB free, "
                                          r"0\.0 GB more in older entries\)") as e:
        cache.load_cached(sorted(paths[0].parent.iterdir()), 16, 3, cache_dir=root)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert sorted(p.name for p in root.iterdir()) == before and entries(root) - {FOREIGN} == old  # nothing removed for nothing
    assert {n: (root / n).read_bytes() for n in theirs} == theirs
    from vaekit_cli.main import app

    r = CliRunner().invoke(app, ["train", str(paths[0].parent), "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--image-size", "16"], env={"VAEKIT_CACHE_DIR": str(root)})
    assert r.exit_code == 2 and "GB free" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert entries(root) - {FOREIGN} == old and not (tmp_path / "run").exists()


# --- 2. the scan that lists a folder's images refuses links out of the folder it is confined to ----

def test_a_confined_scan_follows_links_inside_and_refuses_one_out_by_name(data):
    root = data / "data"
    os.symlink(root / "dogs", root / "cats" / "dogs")  # a folder link inside
    os.symlink(root / "dogs" / "c.png", root / "cats" / "c_again.png")  # a file link inside
    os.symlink("../outside/secret.png", data / "notes.txt")  # not under the scan at all
    found = [p.relative_to(root).as_posix() for p in find_images(root / "cats", confine_to=root)]
    assert found == ["cats/a.png", "cats/b.png", "cats/c_again.png", "cats/dogs/c.png"]
    for link, target in (("cats/dogs/evil.png", "outside/secret.png"), ("cats/out", "outside")):
        os.symlink(data / target, root / link)
        with pytest.raises(LinkOutside) as e:
            find_images(root / "cats", confine_to=root)
        assert str(e.value).startswith(f"{root / link} is a symbolic link to outside {root},")
        assert e.value.link == root / link and e.value.exit_code == 2 and isinstance(e.value, BadInput)
        assert "secret" not in str(e.value)  # the target is not shown
        (root / link).unlink()
    with pytest.raises(BadInput, match="is outside .*, where this scan is confined"):
        find_images(data / "outside", confine_to=root)


def test_an_unconfined_scan_follows_links_out_as_before(data):
    # the CLI confines nothing: a folder of links to images elsewhere is an ordinary input
    root = data / "data"
    os.symlink(data / "outside", root / "cats" / "out")
    found = [p.relative_to(root).as_posix() for p in find_images(root / "cats")]
    assert found == ["cats/a.png", "cats/b.png", "cats/out/secret.png"]
    from vaekit.stream import find_inputs

    assert find_inputs(root / "cats").names == ["a.png", "b.png", "out/secret.png"]
    with pytest.raises(LinkOutside):
        find_inputs(root / "cats", confine_to=root)


def _link_after_the_apps_check(monkeypatch, link: Path, target: Path) -> None:
    """The link is made right after the app resolves the typed folder: where its own walk of the
    folder ran, before the library's scan."""
    from vaekit_demo import tabs

    checked = tabs.confine

    def confine_then_link(*args, **kwargs):
        folder = checked(*args, **kwargs)
        os.symlink(target, link)
        return folder

    monkeypatch.setattr(tabs, "confine", confine_then_link)


def test_the_train_tab_refuses_a_link_out_made_after_the_folder_was_checked(data, monkeypatch):
    from vaekit_demo.app import build_app

    _link_after_the_apps_check(monkeypatch, data / "data" / "cats" / "evil.png", data / "outside" / "secret.png")
    app = build_app(None, runs_dir=data / "runs", workdir=data / "work", data_root=data / "data")
    said = _press(app, "train", "cats", 16, 4, 1)
    assert isinstance(said, str) and "cats/evil.png is a symbolic link to outside the app's data folder" in said, said
    assert str(data) not in said and "secret" not in said  # the page shows no server path, nor the target
    assert not (data / "runs").exists()  # nothing trained on the secret


def test_the_latent_tab_refuses_a_link_out_made_after_the_folder_was_checked(data, monkeypatch):
    from vaekit_demo.app import build_app

    _link_after_the_apps_check(monkeypatch, data / "data" / "dogs" / "out", data / "outside")
    app = build_app(GOLDEN / "codec" / "run", runs_dir=data / "runs", workdir=data / "work", data_root=data / "data")
    said = _press(app, "latent", "dogs", "PCA", 10)
    assert isinstance(said, str) and "dogs/out is a symbolic link to outside the app's data folder" in said, said
    assert str(data) not in said
