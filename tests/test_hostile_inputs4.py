"""What a hostile tester found feeding odd image files and names to the commands that read images:
names near or past the file system's 255-byte limit, a long strip's heat map, an EXIF orientation
stored as text, a FIFO, a device or an empty file met by `threshold --normal`'s copy check, and a
heat map named like another map's folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vaekit_cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["--threads", "1", *map(str, args)])


def _images(folder: Path, n: int = 12, seed: int = 0) -> Path:
    """`n` small RGB discs at seeded places."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:20, :20]
    for i in range(n):
        cy, cx, r = rng.uniform(6, 14), rng.uniform(6, 14), rng.uniform(3, 5)
        disc = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 220, 30).astype(np.uint8)
        Image.fromarray(np.stack([disc, disc // 2, 255 - disc], -1)).save(folder / f"img{i:02d}.png")
    return folder


def tiny_rgb_run(root: Path) -> Path:
    """A tiny RGB model trained on `_images` (root/train), in root/run (also tests/test_hostile_inputs5.py's)."""
    import torch

    from vaekit.config import ModelConfig, TrainConfig
    from vaekit.train import train

    torch.set_num_threads(1)
    train(_images(root / "train"), root / "run", ModelConfig(image_size=16, channels=3, latent_dim=4, base_channels=4),
          TrainConfig(epochs=1, batch_size=8, seed=0, device="cpu"), channels=3)
    return root / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_rgb_run(tmp_path_factory.mktemp("inputs4"))


def _one_line_error(r, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    return r.output


# --- names near the 255-byte limit --------------------------------------------------------------

def test_an_output_named_near_the_length_limit_is_written(run, tmp_path):
    """A 254-byte name is a valid file name; its temporary name 16 bytes longer was not, and every
    command writing it (decode, reconstruct, --maps) failed with a traceback, exit 3."""
    src = _images(tmp_path / "src", 2)
    long = src / ("L" * 250 + ".png")
    (src / "img00.png").rename(long)
    assert invoke("encode", run, src, "-o", tmp_path / "a.codes").exit_code == 0
    for args in (["decode", run, tmp_path / "a.codes", "-o", tmp_path / "dec"],
                 ["reconstruct", run, src, "-o", tmp_path / "rec"],
                 ["anomaly-score", run, src, "-o", tmp_path / "s.csv", "--maps", tmp_path / "maps"]):
        r = invoke(*args)
        assert r.exit_code == 0, r.output
    for folder in ("dec", "rec", "maps"):
        assert (tmp_path / folder / long.name).is_file()
        assert not [p for p in os.listdir(tmp_path / folder) if p.endswith(".tmp")]


def _long_pair(src: Path) -> str:
    """Two images whose outputs meet (x.png, x.jpg), so each keeps its whole name plus .png: with
    a 253-byte stem, 259 bytes, more than any file system holds. Returns the stem."""
    stem = "M" * 251
    (src / "img00.png").rename(src / f"{stem}.png")
    (src / "img01.png").rename(src / f"{stem}.jpg")
    return stem


@pytest.mark.parametrize("command", ["reconstruct", "maps", "encode", "vkc"])
def test_outputs_named_beyond_the_length_limit_are_refused_before_anything_is_written(run, tmp_path, command):
    """reconstruct and --maps wrote some files, then stopped at the first name too long (exit 2, a
    half-written output folder); encode wrote a code file that decode could never write back."""
    src = _images(tmp_path / "src", 4)
    stem = _long_pair(src)
    out = tmp_path / "out"
    args = {"reconstruct": ["reconstruct", run, src, "-o", out],
            "maps": ["anomaly-score", run, src, "-o", out / "s.csv", "--maps", out / "maps"],
            "encode": ["encode", run, src, "-o", out / "a.codes"],
            "vkc": ["encode", run, src, "-o", out / "a.vkc", "--quality", "4"]}[command]
    said = _one_line_error(invoke(*args))
    too_long = f"{stem}.jpg.png"  # each keeps its whole name, heat maps too
    assert too_long in said.replace("\n", "") and "255 bytes" in said
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


# --- heat maps of long strips --------------------------------------------------------------------

def test_a_strips_heat_map_is_not_enlarged_into_gigabytes(tmp_path):
    """A surface model reads a 1 x 25,000 strip whole at 24 x 600,000 pixels; its heat map was
    enlarged 6 times to reach 128 px, 2 GB of pixels and 5.9 GB of memory for a 25 KB file.
    A small model's map is still enlarged."""
    from vaekit.anomaly.outputs import MAP_MIN_SIDE, save_maps

    rng = np.random.default_rng(0)
    for name, (h, w) in {"long.png": (24, 20000), "small.png": (16, 16)}.items():
        save_maps(tmp_path, [name], rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8),
                  rng.random((1, h, w)).astype(np.float32))
    with Image.open(tmp_path / "long.png") as im:  # 6 times (144 x 120,000) before
        k = im.size[1] // 24
        assert im.size == (20000 * k, 24 * k) and im.size[0] * im.size[1] <= 1 << 22  # 4 M pixels
    with Image.open(tmp_path / "small.png") as im:
        assert im.size == (MAP_MIN_SIDE, MAP_MIN_SIDE)


# --- EXIF orientation -----------------------------------------------------------------------------

def _exif_ascii_orientation(value: bytes) -> bytes:
    """An EXIF block whose orientation tag is stored as text (type ASCII) instead of a number."""
    import struct

    entry = struct.pack("<HHI", 0x0112, 2, len(value) + 1) + value + b"\0" * (4 - len(value))
    return b"Exif\0\0II*\0" + struct.pack("<IH", 8, 1) + entry + struct.pack("<I", 0)


def test_the_original_size_of_a_rotated_photo_is_read_as_its_pixels_are(run, tmp_path):
    """Decoding applied an orientation stored as text ("6": turn 90 degrees), the original size
    for `decode --size original` did not: the image came back stretched to its unturned shape."""
    from vaekit import images
    from vaekit.codes import original_size

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((16, 40, 3), np.uint8)).save(src / "turned.jpg", exif=_exif_ascii_orientation(b"6"))
    assert images.decode(src / "turned.jpg", 3).shape[:2] == original_size(src / "turned.jpg") == (40, 16)
    assert invoke("encode", run, src, "-o", tmp_path / "a.codes").exit_code == 0
    r = invoke("decode", run, tmp_path / "a.codes", "-o", tmp_path / "dec", "--size", "original")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "dec" / "turned.png") as im:
        assert im.size == (16, 40)


# --- threshold --normal: the check against the training images -----------------------------------

def test_the_training_copy_check_never_reads_a_device_or_a_fifo(tmp_path):
    """`threshold --normal` looks for copies of training images by hashing files of equal size.
    It opened them with a plain open(): a FIFO (size 0) beside an empty training file hung the
    command forever, a link to /dev/zero read without end. A link to /dev/null, which ends at
    once, shows the same fault without a hang: it was hashed and taken for the empty file."""
    from vaekit.anomaly.overlap import first_shared

    (tmp_path / "train").mkdir()
    (tmp_path / "new").mkdir()
    (tmp_path / "train" / "empty.png").write_bytes(b"")
    os.symlink("/dev/null", tmp_path / "new" / "null.png")
    assert first_shared([tmp_path / "new" / "null.png"], [tmp_path / "train" / "empty.png"]) is None
    assert first_shared([tmp_path / "train" / "empty.png"], [tmp_path / "new" / "null.png"]) is None


def test_an_empty_file_is_not_called_a_copy_of_an_empty_training_file(run, tmp_path):
    """An empty x.png in --normal, beside an empty file skipped in training, was refused as "a
    training image (the same bytes)"; it is an unreadable file, and said so."""
    import json

    train = Path(json.loads((run / "config.json").read_text())["data"]["root"])
    (train / "empty.png").write_bytes(b"")
    try:
        new = _images(tmp_path / "new", 3, seed=1)
        (new / "e.png").write_bytes(b"")
        said = _one_line_error(invoke("threshold", run, "--normal", new))
        assert "e.png (empty file)" in said and "training image" not in said
    finally:
        (train / "empty.png").unlink()


# --- heat-map names -----------------------------------------------------------------------------

def test_a_heat_map_named_like_another_maps_folder_keeps_its_whole_name_not_half_written(run, tmp_path):
    """a.jpg's map is a.png, and a.png/b.png's map goes in a folder a.png: the job wrote a.png,
    then stopped at the folder (exit 2, no CSV, one map left behind). Then it was numbered a-1.png,
    which said nothing of whose it was; now it keeps its whole name."""
    src = _images(tmp_path / "src", 3)
    (src / "img00.png").rename(src / "a.jpg")
    (src / "a.png").mkdir()
    (src / "img01.png").rename(src / "a.png" / "b.png")
    r = invoke("anomaly-score", run, src, "-o", tmp_path / "s.csv", "--maps", tmp_path / "maps")
    assert r.exit_code == 0, r.output
    maps = sorted(p.relative_to(tmp_path / "maps").as_posix() for p in (tmp_path / "maps").rglob("*") if p.is_file())
    assert maps == ["a.jpg.png", "a.png/b.png", "img02.png"]  # named as reconstruct names it
    assert (tmp_path / "s.csv").is_file()


def test_an_inputs_own_png_name_is_never_another_inputs_heat_map():
    """a.jpg beside a.png keeps its whole name, a.jpg.png; where an input is itself named
    a.jpg.png, that name is its map's, and a.jpg's map is numbered instead of taking it."""
    from vaekit.anomaly import map_targets

    assert map_targets(["a.jpg", "a.jpg.png", "a.png"]) == ["a.jpg-1.png", "a.jpg.png", "a.png.png"]
    assert map_targets(["a.png", "a.jpg"]) == ["a.png.png", "a.jpg.png"]
    assert map_targets(["a.png", "a.png"]) == ["a.png", "a-1.png"]  # one name in two input folders


def test_heat_maps_of_inputs_that_share_a_stem_say_whose_they_are(run, tmp_path):
    """x.png and x.jpg in one folder gave the maps x.png and x-1.png, and nothing said which was
    whose; now each keeps its whole name, as reconstruct names its outputs."""
    src = _images(tmp_path / "src", 3)
    (src / "img00.png").rename(src / "x.png")
    Image.open(src / "img01.png").save(src / "x.jpg")
    (src / "img01.png").unlink()
    r = invoke("anomaly-score", run, src, "-o", tmp_path / "s.csv", "--maps", tmp_path / "maps")
    assert r.exit_code == 0, r.output
    maps = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert maps == ["img02.png", "x.jpg.png", "x.png.png"]
    r = invoke("reconstruct", run, src, "-o", tmp_path / "rec")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "rec").iterdir() if p.name != "comparison.png") == maps
