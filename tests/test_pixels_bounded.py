"""Memory bounded by pixels: whatever the batch size and the images' shape, a streaming job holds a
bounded number of decoded pixels at once (vaekit.stream.BATCH_PIXELS, or one file), while its
journal keeps one line per fixed slice of the file list and its numbers stay those of any batching.

Real components: PNGs in tmp_path, untrained 16 px models (export_support.random_run), the jobs'
own functions and the CLI through Typer's runner. The bound is checked structurally, by counting
the pixels of every Batch the stream hands out and of every network call, never by RSS.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vaekit
from export_support import random_run
from surface_support import killed_at_batch
from vaekit import anomaly, codes, stream
from vaekit.stream import inputs as stream_inputs
from vaekit.stream.batches import Layout
from vaekit_cli.main import app

STRIP = (16, 16 * 25)  # a strip of 25 tiles of 16 px: 6,400 pixels


def _strips(folder: Path, n: int = 7, broken: int | None = 3) -> Path:
    """`n` grey strips of 16 x 400 px (and a broken file among them): long images for a 16 px surface."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, STRIP, np.uint8)).save(folder / f"s{i:02d}.png")
    if broken is not None:
        (folder / f"s{broken:02d}b.png").write_bytes(b"not a png")
    return folder


def _squares(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 16 + i % 3), np.uint8)).save(folder / f"q{i:03d}.png")
    return folder


def _parts(paths, budget: int, **kw) -> list[stream.Batch]:
    return list(stream.iter_batches(paths, 16, 1, ahead=0, pixels=budget, **kw))


def _check_parts(parts: list[stream.Batch], whole: list[stream.Batch], budget: int) -> None:
    """Every part within the budget (or one file); the parts of a slice together are that slice."""
    for p in parts:
        assert p.images[:, 0].size <= budget or len(p.paths) == 1, (p.index, p.part, p.images.shape)
    assert sorted({p.index for p in parts}) == [b.index for b in whole]
    for b in whole:
        mine = [p for p in parts if p.index == b.index]
        assert [p.part for p in mine] == list(range(len(mine)))
        assert [p.last for p in mine] == [False] * (len(mine) - 1) + [True]
        assert [q for p in mine for q in p.positions] == b.positions
        assert [q for p in mine for q in p.skipped] == b.skipped
        np.testing.assert_array_equal(np.concatenate([p.images for p in mine]), b.images)
        if b.tilings is not None:
            assert [t for p in mine for t in p.tilings] == b.tilings


def test_a_slice_of_long_images_comes_in_parts_of_at_most_the_budget(tmp_path):
    paths = stream.find_inputs(_strips(tmp_path / "s")).paths
    whole = _parts(paths, 10**9, batch_size=64, tiles=16)
    assert len(whole) == 1 and whole[0].images.shape == (7 * 25, 1, 16, 16)  # the broken file is skipped
    for budget in (6_400, 12_800, 20_000, 1):  # one file, two, three; a budget below one file: a file a part
        parts = _parts(paths, budget, batch_size=64, tiles=16)
        _check_parts(parts, whole, budget)
        assert len(parts) == -(-7 // max(1, budget // 6_400))


def test_an_explicit_large_batch_size_is_bounded_by_pixels_too(tmp_path):
    paths = stream.find_inputs(_squares(tmp_path / "q", 45)).paths
    for batch_size in (512, 20):  # one slice of 45 files; three slices, the last one short
        whole = _parts(paths, 10**9, batch_size=batch_size)
        parts = _parts(paths, 16 * 16 * 8, batch_size=batch_size)
        _check_parts(parts, whole, 16 * 16 * 8)
        assert max(len(p.paths) for p in parts) == 8


def test_the_default_budget_holds_whatever_the_batch_size(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_inputs, "BATCH_PIXELS", 3 * 6_400)
    paths = stream.find_inputs(_strips(tmp_path / "s", broken=None)).paths
    parts = list(stream.iter_batches(paths, 16, 1, 4096, tiles=16))  # through the read-ahead thread
    assert [len(p.paths) for p in parts] == [3, 3, 1] and {p.index for p in parts} == {0}


def test_a_slice_within_the_budget_is_one_batch_as_before(tmp_path):
    paths = stream.find_inputs(_squares(tmp_path / "q", 10)).paths
    parts = list(stream.iter_batches(paths, 16, 1, 4))  # 4 files of 16 px: far below BATCH_PIXELS
    assert [(p.index, p.part, p.last, len(p.paths)) for p in parts] == [(0, 0, True, 4), (1, 0, True, 4),
                                                                        (2, 0, True, 2)]


def test_the_journal_writes_a_slice_once_all_its_parts_are_in(tmp_path):
    layout = Layout([f"f{i}" for i in range(6)], 4)
    j = stream.Journal(tmp_path / "o.csv", {"m": 1}, resume=False, layout=layout)
    j.append(0, [{"path": "f0"}], [("f1", "broken")])
    assert j.done == set() and len(j.path.read_text().splitlines()) == 1  # only the header so far
    j.append(0, [{"path": "f2"}, {"path": "f3"}])
    j.append(1, [{"path": "f4"}])
    with pytest.raises(RuntimeError, match="batch 1 still misses"):
        j.append(0, [{"path": "f0"}])  # another batch before batch 1 has its file f5: a bug of the caller
    j.close()
    lines = [json.loads(x) for x in j.path.read_text().splitlines()[1:]]
    assert [len(x.pop("check")) for x in lines] == [16]  # each line's checksum (vaekit.stream.lines)
    assert lines == [{"batch": 0, "rows": [{"path": "f0"}, {"path": "f2"}, {"path": "f3"}], "skipped": [["f1", "broken"]],
                      "sha256": ["-", "skipped:unreadable", "-", "-"]}]  # no such files: their digests say so
    again = stream.Journal(tmp_path / "o.csv", {"m": 1}, resume=True, layout=layout)  # the line reads back
    assert again.done == {0}
    again.close()


@pytest.fixture(scope="module")
def surface(tmp_path_factory):
    """An untrained 16 px surface model (a latent grid, no reader) and strips of 25 tiles each."""
    root = tmp_path_factory.mktemp("px")
    run = random_run(root / "run", image_size=16, channels=1, latent_dim=4, base_channels=4, layout="grid")
    return run, _strips(root / "strips", n=9, broken=4)


def _counting(monkeypatch) -> list[int]:
    """The pixels of every Batch the stream hands out (its tiles' with a surface model)."""
    seen, real = [], stream_inputs._batch

    def batch(*a, **kw):
        b = real(*a, **kw)
        seen.append(int(b.images[:, 0].size))
        return b

    monkeypatch.setattr(stream_inputs, "_batch", batch)
    return seen


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for key in ("score", "neg_elbo", "recon", "kl", "bits_per_dim"):  # float32 kernels summed in another order
        np.testing.assert_allclose([float(r[key]) for r in a], [float(r[key]) for r in b], rtol=1e-6, err_msg=key)


def test_anomaly_score_holds_a_bounded_number_of_pixels_at_any_batch_size(surface, tmp_path, monkeypatch):
    run, strips = surface
    ref = tmp_path / "ref.csv"
    r = CliRunner().invoke(app, ["--threads", "1", "anomaly-score", str(run), str(strips), "-o", str(ref),
                                 "--batch-size", "1"])
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(stream_inputs, "BATCH_PIXELS", 2 * 6_400)
    seen = _counting(monkeypatch)
    out = tmp_path / "big.csv"
    r = CliRunner().invoke(app, ["--threads", "1", "anomaly-score", str(run), str(strips), "-o", str(out),
                                 "--batch-size", "512", "--maps", str(tmp_path / "maps")])
    assert r.exit_code == 0, r.output
    assert len(seen) == 5 and max(seen) <= 2 * 6_400  # 9 strips, 2 at a time, never all 9 at once
    _same_rows(_rows(out), _rows(ref))
    assert len(list((tmp_path / "maps").rglob("*.png"))) == 9


def test_a_job_stopped_between_the_parts_of_a_slice_resumes_to_the_same_file(surface, tmp_path, monkeypatch):
    run, strips = surface
    model = vaekit.load(run)
    ref = anomaly.score_to_file(model, strips, tmp_path / "ref.csv", batch_size=4, threshold=0.0).out
    monkeypatch.setattr(stream_inputs, "BATCH_PIXELS", 6_400)  # a strip a part: slices of 4 come in 4 parts
    out = tmp_path / "o.csv"
    killed_at_batch(6, model, lambda: anomaly.score_to_file(model, strips, out, batch_size=4, threshold=0.0))
    lines = (tmp_path / "o.csv.partial").read_text().splitlines()[1:]
    assert [json.loads(x)["batch"] for x in lines] == [0]  # slice 1 was half scored: not in the journal
    assert len(json.loads(lines[0])["rows"]) + len(json.loads(lines[0])["skipped"]) == 4
    anomaly.score_to_file(model, strips, out, batch_size=4, threshold=0.0, resume=True)
    assert out.read_bytes().splitlines()[0] == ref.read_bytes().splitlines()[0]
    _same_rows(_rows(out), _rows(ref))


def test_encode_of_a_large_batch_encodes_in_parts_to_the_same_codes(tmp_path, monkeypatch):
    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    images = _squares(tmp_path / "q", 30)
    model = vaekit.load(run)
    codes.encode_folder(model, images, tmp_path / "ref.codes", precision="f32", batch_size=1)
    monkeypatch.setattr(stream_inputs, "BATCH_PIXELS", 16 * 16 * 7)
    calls, real = [], type(model).encode
    monkeypatch.setattr(type(model), "encode", lambda self, x: calls.append(len(x)) or real(self, x))
    codes.encode_folder(model, images, tmp_path / "big.codes", precision="f32", batch_size=512)
    assert calls == [7, 7, 7, 7, 2]  # one slice of 30 files, 7 at a time
    a, b = codes.load(tmp_path / "ref.codes"), codes.load(tmp_path / "big.codes")
    assert a.names == b.names and (a.orig_size == b.orig_size).all()
    np.testing.assert_allclose(a.latents(), b.latents(), rtol=1e-5, atol=1e-6)


def test_decode_refuses_an_original_size_no_image_vaekit_reads_could_have(tmp_path, monkeypatch):
    """A forged code file claiming a 1 x 5,000,000 strip: vaekit's reader refuses such a file (its resize
    to 16 px would take 80 M x 16 pixels), so no code file of vaekit's holds it, and decode --size
    original would build it whole (at 1 x 178,956,970 Pillow ran out of memory: a traceback, exit 3)."""
    from vaekit.images import read

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    codes.encode_folder(vaekit.load(run), _squares(tmp_path / "q", 3), tmp_path / "a.codes")
    cf = codes.load(tmp_path / "a.codes")
    cf.orig_size[1] = (1, 5_000_000)
    with monkeypatch.context() as m:  # forge it: vaekit itself would never write this
        m.setattr(read, "MAX_RESIZE_PIXELS", 10**13)  # where the code file's check looks it up
        codes.save(cf, tmp_path / "strip.codes")
    r = CliRunner().invoke(app, ["--threads", "1", "decode", str(run), str(tmp_path / "strip.codes"), "-o",
                                 str(tmp_path / "out"), "--size", "original"])
    assert r.exit_code == 2 and "too elongated" in r.output and str(read.MAX_RESIZE_PIXELS) in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()
    cf.orig_size[1] = (16, 5_000)  # long, but a file vaekit reads: decoded at its size
    codes.save(cf, tmp_path / "long.codes")
    r = CliRunner().invoke(app, ["--threads", "1", "decode", str(run), str(tmp_path / "long.codes"), "-o",
                                 str(tmp_path / "out"), "--size", "original"])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "out" / "q001.png").size == (5_000, 16)
