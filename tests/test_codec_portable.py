""".vkc files that decode wherever they were made: lossless archives across torch thread counts,
names that are not UTF-8, and folders whose names decode could never write (refused at encode)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vaekit
from vaekit import codec
from vaekit.codec import container, jobs, lossless
from vaekit.errors import BadInput

from test_codec import _digits

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A logistic run with fitted tables (big enough that 1 and 2 torch threads give other floats)."""
    from export_support import random_run

    root = tmp_path_factory.mktemp("portable")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=8, base_channels=8, likelihood="logistic")
    x = _digits(root / "train", 30, seed=1)
    model = vaekit.load(run)
    codec.save_prior(run, codec.fit_prior(model, x), model)
    return run


@pytest.fixture
def threads():
    """Leaves torch's thread count as it found it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in folder.rglob("*.png")}


@pytest.mark.parametrize("enc, dec", [(1, 2), (2, 1)])
def test_a_lossless_archive_decodes_exactly_on_another_thread_count(run, tmp_path, threads, enc, dec):
    _digits(tmp_path / "src", 24)
    torch.set_num_threads(enc)
    r = codec.encode(vaekit.load(run), tmp_path / "src", tmp_path / "a.vkc", lossless=True)
    assert torch.get_num_threads() == enc  # restored after the pinned calls
    assert codec.read_info(r.path).engine["threads"] == jobs.CANONICAL_THREADS
    torch.set_num_threads(dec)
    codec.decode(vaekit.load(run), r.path, tmp_path / "out")
    assert torch.get_num_threads() == dec
    got, want = _pixels(tmp_path / "out"), _pixels(tmp_path / "src")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.slow  # codes at 2 torch threads beside the other worker
def test_through_the_cli_with_other_threads_options(run, tmp_path, threads, monkeypatch):
    from vaekit_cli import output
    from vaekit_cli.main import app

    monkeypatch.setattr(output, "THREADS", output.THREADS)  # --threads sets it for the process
    monkeypatch.delenv("VAEKIT_THREADS", raising=False)
    _digits(tmp_path / "src", 20, seed=3)
    cli = CliRunner()
    r = cli.invoke(app, ["--threads", "2", "encode", str(run), str(tmp_path / "src"), "-o", str(tmp_path / "a.vkc"),
                         "--lossless"])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["--threads", "1", "decode", str(run), str(tmp_path / "a.vkc"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    got, want = _pixels(tmp_path / "out"), _pixels(tmp_path / "src")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.slow  # codes at 2 torch threads beside the other worker
def test_an_archive_written_before_the_pin_decodes_on_its_recorded_count(run, tmp_path, threads, monkeypatch):
    """vaekit < this fix coded on --threads; such a file records the count and still decodes."""
    _digits(tmp_path / "src", 20, seed=4)
    monkeypatch.setattr(lossless, "CANONICAL_THREADS", 2)  # what `--threads 2` wrote then
    r = codec.encode(vaekit.load(run), tmp_path / "src", tmp_path / "old.vkc", lossless=True)
    monkeypatch.undo()
    assert codec.read_info(r.path).engine["threads"] == 2
    torch.set_num_threads(1)
    codec.decode(vaekit.load(run), r.path, tmp_path / "out")
    got, want = _pixels(tmp_path / "out"), _pixels(tmp_path / "src")
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("threads", [0, 1025])
def test_a_nonsense_thread_count_in_the_header_is_refused_up_front(run, tmp_path, monkeypatch, threads):
    # above the CLI's own --threads bound (1024), which files of before recorded: a forged 4096 pinned
    # torch to 4096 threads for the whole decode
    from vaekit.codec.net import Net

    _digits(tmp_path / "src", 3)
    monkeypatch.setattr(Net, "describe", lambda self: {"engine": "torch", "threads": threads})
    r = codec.encode(vaekit.load(run), tmp_path / "src", tmp_path / "x.vkc", lossless=True)
    monkeypatch.undo()
    before = torch.get_num_threads()
    with pytest.raises(container.ArchiveError, match=f"names {threads} torch threads") as e:
        codec.decode(vaekit.load(run), r.path, tmp_path / "out")
    assert e.value.exit_code == 2 and "\n" not in str(e.value) and not (tmp_path / "out").exists()
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("mode", [{"quality": 6}, {"lossless": True}])
def test_a_name_that_is_not_utf8_round_trips(run, tmp_path, mode):
    src = tmp_path / "src"
    _digits(src, 4)
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: a surrogate-escaped str in Python
    os.rename(src / "img001.png", src / odd)
    r = codec.encode(vaekit.load(run), src, tmp_path / "a.vkc", **mode)
    assert odd in codec.read_info(r.path).names
    codec.decode(vaekit.load(run), r.path, tmp_path / "out")
    assert b"caf\xe9.png" in os.listdir(os.fsencode(tmp_path / "out"))
    if "lossless" in mode:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / odd)), np.asarray(Image.open(src / odd)))


@pytest.mark.parametrize("mode", [["--quality", "6"], ["--lossless"]])
def test_names_decode_could_never_write_are_refused_at_encode(run, tmp_path, mode):
    from vaekit_cli.main import app

    src = tmp_path / "src"
    _digits(src, 3)  # img000 in sub/, img001, img002
    for old, new in (("img001.png", "x.png"), ("img002.png", "x.png.png")):
        os.rename(src / old, src / new)
    Image.open(src / "x.png").save(src / "x.bmp")  # x.png and x.bmp -> x.png.png and x.bmp.png: x.png.png meets
    with pytest.raises(BadInput, match="x.png.png") as e:
        codec.encode(vaekit.load(run), src, tmp_path / "a.vkc", **({"quality": 6} if "--quality" in mode else
                                                                      {"lossless": True}))
    assert e.value.exit_code == 2 and "\n" not in str(e.value) and not (tmp_path / "a.vkc").exists()
    r = CliRunner().invoke(app, ["encode", str(run), str(src), "-o", str(tmp_path / "a.vkc"), *mode])
    assert r.exit_code == 2 and "x.png.png" in r.output and not (tmp_path / "a.vkc").exists()
    os.remove(src / "x.png.png")  # the same folder without the third name encodes and decodes
    r = codec.encode(vaekit.load(run), src, tmp_path / "b.vkc", lossless=True)
    out = codec.decode(vaekit.load(run), r.path, tmp_path / "out")
    assert sorted(p.name for p in out.written) == ["img000.png", "x.bmp.png", "x.png.png"]


def test_a_skipped_image_that_changes_the_names_is_refused_before_writing(run, tmp_path):
    """Where the full folder would decode but the images kept would not (one unreadable), the
    names stored are checked again before the file is written."""
    src = tmp_path / "src"
    _digits(src, 4)
    for old, new in (("img001.png", "x.png"), ("img002.png", "x.png.jpg")):
        os.rename(src / old, src / new)
    Image.open(src / "x.png").save(src / "x.bmp")
    (src / "x.png.gif").write_bytes(b"not an image")  # all four keep whole names; without it x.png.png meets
    with pytest.raises(BadInput, match="x.png.png"):
        codec.encode(vaekit.load(run), src, tmp_path / "a.vkc", quality=6)
    assert not (tmp_path / "a.vkc").exists()


def test_a_lossless_archive_of_an_int8_export_is_refused_by_the_float_one_up_front(tmp_path):
    """An int8 export keeps its float model's fingerprint; its floats are another model's, so an
    archive it wrote names its quantisation and the other export refuses it in one line."""
    from types import SimpleNamespace

    from vaekit.codec import bitsback
    from vaekit.codec.jobs import _check_quantization

    header = SimpleNamespace(engine={"engine": "onnxruntime", "quantization": "int8"})
    fp32 = SimpleNamespace(config={"quantization": "none"}, info=SimpleNamespace(source=tmp_path / "m.onnx"))
    with pytest.raises(bitsback.Desynchronised, match="quantised 'int8'"):
        _check_quantization(header, fp32, tmp_path / "a.vkc")
    _check_quantization(header, SimpleNamespace(config={"quantization": "int8"}, info=fp32.info), tmp_path / "a.vkc")
    torch_header = SimpleNamespace(engine={"engine": "torch", "threads": 1})
    _check_quantization(torch_header, fp32, tmp_path / "a.vkc")  # a torch archive has nothing to compare
