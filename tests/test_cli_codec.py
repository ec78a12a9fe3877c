"""`vaekit encode / decode / reconstruct / sample / interpolate` through Typer's runner (and once
through the installed executable): outputs, JSON, skipped files, exit codes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from test_codes import make_source, trained_run
from vaekit_cli.main import app

runner = CliRunner()
EXE = shutil.which("vaekit", path=str(Path(sys.executable).parent)) or "vaekit"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def other_run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory, seed=1, epochs=1)


@pytest.fixture(scope="module")
def source(run, tmp_path_factory):
    return make_source(tmp_path_factory.mktemp("cli-src"), run.parent / "digits")


def squash(text: str) -> str:
    return re.sub(r"[\s│╭╮╰╯─]+", "", text)


def pixels(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in paths])


def test_encode_decode_reconstruct(run, source, tmp_path):
    src, names = source
    r = invoke("encode", run, src, "-o", tmp_path / "a.codes", "--precision", "f32", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)  # stdout holds the JSON and nothing else
    assert summary["images"] == 12 and summary["skipped"] == 1 and summary["precision"] == "f32"
    assert summary["bytes"] == (tmp_path / "a.codes").stat().st_size
    assert summary["bits_per_pixel"] == pytest.approx(8 * summary["bytes"] / (12 * 16 * 16))
    assert f"skipped {src / 'broken.png'}: not an image" in r.stderr

    r = invoke("decode", run, tmp_path / "a.codes", "-o", tmp_path / "dec")
    assert r.exit_code == 0, r.output
    assert f"wrote 12 images (model size) to {tmp_path / 'dec'}" in r.stdout
    decoded = sorted(p.relative_to(tmp_path / "dec").as_posix() for p in (tmp_path / "dec").rglob("*.png"))
    assert decoded == sorted(n.rsplit(".", 1)[0] + ".png" for n in names)

    r = invoke("reconstruct", run, src, "-o", tmp_path / "rec", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [i["name"] for i in rep["images"]] == names
    assert rep["mean_psnr"] == pytest.approx(np.mean([i["psnr"] for i in rep["images"]]))
    assert all(-1 <= i["ssim"] <= 1 for i in rep["images"]) and Path(rep["grid"]).name == "comparison.png"
    # decode of f32 codes == reconstruct, pixel for pixel
    recon = [Path(i["file"]) for i in rep["images"]]
    np.testing.assert_array_equal(pixels(recon), pixels([tmp_path / "dec" / p.relative_to(tmp_path / "rec") for p in recon]))
    grid = Image.open(tmp_path / "rec" / "comparison.png")
    assert grid.size == (8 * 18 + 2, 3 * 18 + 2)  # 24 tiles (12 inputs, 12 reconstructions), 8 a row


def test_human_readable_reports(run, source, tmp_path):
    src, _ = source
    r = invoke("encode", run, src, "-o", tmp_path / "a.codes")
    assert r.exit_code == 0, r.output
    for text in ("12 encoded, 1 skipped", "q8 (8 dimensions)", "per image", "bits per pixel", "smaller"):
        assert text in r.stdout
    r = invoke("reconstruct", run, src / "zeros", "-o", tmp_path / "rec")
    assert r.exit_code == 0, r.output
    assert "PSNR (dB)" in r.stdout and "SSIM" in r.stdout and "mean of 6" in r.stdout


def test_decode_original_size_and_overwrite(run, source, tmp_path):
    src, _ = source
    assert invoke("encode", run, src, "-o", tmp_path / "a.codes").exit_code == 0
    r = invoke("encode", run, src, "-o", tmp_path / "a.codes")
    assert r.exit_code == 2 and "a.codes already exists; pass --overwrite" in r.stderr
    assert invoke("encode", run, src, "-o", tmp_path / "a.codes", "--overwrite").exit_code == 0
    r = invoke("decode", run, tmp_path / "a.codes", "-o", tmp_path / "dec", "--size", "original")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "dec" / "tall.png").size == (20, 30)
    assert Image.open(tmp_path / "dec" / "rotated.png").size == (24, 40)
    r = invoke("decode", run, tmp_path / "a.codes", "-o", tmp_path / "dec")
    assert r.exit_code == 2 and "and 11 more files already exist" in r.stderr
    assert Image.open(tmp_path / "dec" / "tall.png").size == (20, 30)  # untouched
    assert invoke("decode", run, tmp_path / "a.codes", "-o", tmp_path / "dec", "--overwrite").exit_code == 0
    assert Image.open(tmp_path / "dec" / "tall.png").size == (16, 16)


def test_bad_code_files_and_foreign_models_exit_2(run, other_run, source, tmp_path):
    src, _ = source
    assert invoke("encode", run, src, "-o", tmp_path / "a.codes").exit_code == 0
    r = invoke("decode", other_run, tmp_path / "a.codes", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "was encoded by model" in r.stderr and "decode with the model that encoded it" in r.stderr
    data = (tmp_path / "a.codes").read_bytes()
    (tmp_path / "cut.codes").write_bytes(data[:-7])
    r = invoke("decode", run, tmp_path / "cut.codes", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "truncated" in r.stderr
    bad = bytearray(data)
    bad[len(data) // 2 + 100] ^= 0x08
    (tmp_path / "bad.codes").write_bytes(bytes(bad))
    r = invoke("decode", run, tmp_path / "bad.codes", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "error:" in r.stderr and ("checksum" in r.stderr or "corrupt" in r.stderr)
    r = invoke("decode", run, run / "model.safetensors", "-o", tmp_path / "out")
    assert r.exit_code == 2 and "not a vaekit code file" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["encode", "{run}", "{empty}", "-o", "{tmp}/x.codes"], "no image files found"),
    (["encode", "{run}", "{junk}", "-o", "{tmp}/x.codes"], "no usable image"),
    (["encode", "{run}", "{tmp}/missing", "-o", "{tmp}/x.codes"], "does not exist"),
    (["encode", "{run}", "{junk}", "-o", "{tmp}/x.codes", "--precision", "q4"], "q4"),
    (["encode", "{tmp}", "{junk}", "-o", "{tmp}/x.codes"], "run config not found"),
    (["decode", "{run}", "{run}/config.json", "-o", "{run}/config.json"], "is not a folder"),
    (["reconstruct", "{run}", "{empty}", "-o", "{tmp}/r"], "no image files found"),
    (["sample", "{run}", "-n", "0"], "greater than or equal to 1"),
    (["sample", "{run}", "-o", "{tmp}/s.jpg"], "must be a .png file"),
    (["interpolate", "{run}", "{junk}/a.png", "{junk}/a.png", "-o", "{tmp}/p.png"], "cannot read"),
])
def test_bad_input_exits_2(run, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("not a png")
    fmt = {"run": run, "tmp": tmp_path, "empty": tmp_path / "empty", "junk": tmp_path / "junk"}
    r = invoke(*[a.format(**fmt) for a in args])
    assert r.exit_code == 2, r.output
    assert squash(message) in squash(r.output)  # Click's usage errors come in a wrapped box
    assert not list(tmp_path.glob("*.codes")) and not list(tmp_path.glob("*.png"))


def test_sample_and_interpolate(run, source, tmp_path):
    src, names = source
    r = invoke("sample", run, "-n", 4, "-o", tmp_path / "s.png", "--seed", 3)
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "s.png").size == (4 * 18 + 2, 18 + 2)
    assert invoke("sample", run, "-n", 4, "-o", tmp_path / "s.png", "--seed", 3).exit_code == 2  # exists
    assert invoke("sample", run, "-n", 4, "-o", tmp_path / "t.png", "--seed", 3).exit_code == 0
    assert (tmp_path / "s.png").read_bytes() == (tmp_path / "t.png").read_bytes()  # seeded
    assert invoke("sample", run, "-n", 4, "-o", tmp_path / "s.png", "--seed", 4, "--overwrite").exit_code == 0
    assert (tmp_path / "s.png").read_bytes() != (tmp_path / "t.png").read_bytes()
    r = invoke("sample", run, "-n", 9, "-o", tmp_path / "cold.png", "--temperature", 0)
    tiles = np.asarray(Image.open(tmp_path / "cold.png"))
    assert r.exit_code == 0 and (tiles[2:18, 2:18] == tiles[2:18, 20:36]).all()  # temperature 0: all z = 0

    r = invoke("interpolate", run, src / names[0], src / names[-1], "-n", 5, "-o", tmp_path / "path.png")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "path.png").size == (5 * 18 + 2, 18 + 2)
    r = invoke("sample", run, "-n", 2, "-o", run / "s.png", "--overwrite")
    assert r.exit_code == 2 and "inside the model's run directory" in " ".join(r.output.split())  # was "the input folder"
    assert not (run / "s.png").exists()


def test_a_vkc_says_whose_sub_pixels_its_bits_count(run, source, tmp_path):
    src, _ = source
    r = invoke("encode", run, src, "-o", tmp_path / "a.vkc", "--quality", 4)
    assert r.exit_code == 0, r.output
    info = json.loads(invoke("encode", run, src, "-o", tmp_path / "b.vkc", "--quality", 4, "--json").stdout)
    assert f"{info['bits_per_dim']:.4f} bits per sub-pixel (of the model's 16×16×1)" in " ".join(r.output.split())


@pytest.mark.slow
def test_installed_executable(run, source, tmp_path):
    src, _ = source
    r = subprocess.run([EXE, "--threads", "1", "encode", str(run), str(src), "-o", str(tmp_path / "a.codes"), "--json"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 12 and "skipped" in r.stderr and "Traceback" not in r.stderr


def test_reconstruct_of_a_large_folder_shows_only_the_worst_rows(run, source, tmp_path, monkeypatch):
    from vaekit_cli import codec

    src, _ = source
    r = invoke("reconstruct", run, src, "-o", tmp_path / "all", "--json")
    psnr = {i["name"]: i["psnr"] for i in json.loads(r.stdout)["images"]}
    monkeypatch.setattr(codec, "TABLE_ROWS", 3)
    r = invoke("reconstruct", run, src, "-o", tmp_path / "rec")
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())  # where rich wraps a line depends on the paths in it
    assert f"the 3 lowest PSNR of {len(psnr)}" in text and f"and {len(psnr) - 3} more" in text
    worst = sorted(psnr, key=psnr.get)[:3]
    shown_names = [n for n in psnr if n in r.stdout]
    assert sorted(shown_names) == sorted(worst)
