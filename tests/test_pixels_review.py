"""Review of memory bounded by pixels (vaekit.stream: a slice over BATCH_PIXELS comes in parts):
what a job stopped or failing between the parts of a slice, or halfway through a batch's heat maps
or PNGs (a full disk), leaves behind, what it says, and what its --resume reads back.

Real components: PNGs in tmp_path, untrained 16 px models (export_support.random_run), the jobs'
own functions, and the CLI through Typer's runner for the resume a user types.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vaekit
from export_support import random_run
from surface_support import killed_at_batch
from vaekit import anomaly
from vaekit.inference.reconstruct import reconstruct_to_folder
from vaekit.stream import inputs as stream_inputs
from vaekit_cli.main import app


def _images(folder: Path, n: int, shape=(16, 16)) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(folder / f"f{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(surface run, object run): untrained 16 px grey models."""
    root = tmp_path_factory.mktemp("pxr")
    kw = dict(image_size=16, channels=1, latent_dim=4, base_channels=4)
    return random_run(root / "surface", layout="grid", **kw), random_run(root / "object", **kw)


def _cli(*args: str):
    return CliRunner().invoke(app, ["--threads", "1", *map(str, args)])


def test_heat_maps_of_a_part_written_before_a_stop_in_the_first_slice_are_the_resumes_own(runs, tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM) while the 2nd part of slice 0 was scored: the writer still wrote part 1's
    heat map, but the journal, holding no whole batch yet, was abandoned (removed), so the
    `--resume` the CLI tells the user to run refused that heat map as an existing file (exit 2)."""
    run = runs[0]
    strips = _images(tmp_path / "s", 5, (16, 400))  # 25 tiles each
    model = vaekit.load(run)
    monkeypatch.setattr(stream_inputs, "BATCH_PIXELS", 6_400)  # a strip a part
    out, maps = tmp_path / "o.csv", tmp_path / "maps"
    killed_at_batch(2, model, lambda: anomaly.score_to_file(model, strips, out, maps=maps, batch_size=4,
                                                             threshold=0.0))
    assert [p.name for p in maps.rglob("*.png")] == ["f00.png"]  # the part written before the stop
    r = _cli("anomaly-score", run, strips, "-o", out, "--maps", maps, "--batch-size", 4, "--threshold", 0, "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_text().count("\n") == 6 and len(list(maps.rglob("*.png"))) == 5


def test_reconstructions_of_a_part_written_before_a_failure_in_the_first_slice_are_the_resumes_own(runs, tmp_path,
                                                                                                     monkeypatch):
    """The same for `reconstruct`: the 1st part's PNGs were written, the journal removed, the resume refused."""
    run = runs[1]
    images = _images(tmp_path / "q", 6)
    model = vaekit.load(run)
    monkeypatch.setattr(stream_inputs, "BATCH_PIXELS", 2 * 16 * 16)  # two files a part
    real, calls = type(model).reconstruct, []

    def failing(self, x):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, x)

    out = tmp_path / "rec"
    with monkeypatch.context() as m:
        m.setattr(type(model), "reconstruct", failing)
        with pytest.raises(KeyboardInterrupt):
            reconstruct_to_folder(model, images, out, batch_size=8)
    assert sorted(p.name for p in out.glob("*.png")) == ["f00.png", "f01.png"]
    r = _cli("reconstruct", run, images, "-o", out, "--batch-size", 8, "--resume")
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("f*.png"))) == 6 and (out / "comparison.png").exists()


def _disk_full_at(n: int, monkeypatch) -> None:
    """Every PNG vaekit writes from the n-th on fails as on a full disk."""
    from vaekit import images as imageio

    real, calls = imageio.save_png, []

    def full(x, path, *rest, **kw):  # save_png's own arguments (replace) passed through
        calls.append(path)
        if len(calls) >= n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(x, path, *rest, **kw)

    monkeypatch.setattr(imageio, "save_png", full)


def test_a_disk_full_among_the_first_heat_maps_says_so_and_keeps_the_journal_for_resume(runs, tmp_path, monkeypatch):
    """The 2nd heat map of the first slice failed: an OSError traceback, exit 3 (the heat maps were
    written outside the journal's naming of failed writes), the journal abandoned, and the resume
    then refused the first heat map as a file in the way (exit 2)."""
    run, images = runs[1], _images(tmp_path / "q", 6)
    out, maps = tmp_path / "o.csv", tmp_path / "maps"
    args = ["anomaly-score", run, images, "-o", out, "--maps", maps, "--batch-size", 4, "--score", "neg_elbo"]
    with monkeypatch.context() as m:
        _disk_full_at(2, m)
        r = _cli(*args)
    assert r.exit_code == 2 and f"cannot write {maps}: No space left on device" in r.output, r.output
    assert "Traceback" not in r.output and Path(f"{out}.partial").exists()
    r = _cli(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_text().count("\n") == 7 and len(list(maps.rglob("*.png"))) == 6


def test_a_disk_full_among_the_first_reconstructions_says_so_and_keeps_the_journal_for_resume(runs, tmp_path,
                                                                                               monkeypatch):
    run, images = runs[1], _images(tmp_path / "q", 6)
    out = tmp_path / "rec"
    args = ["reconstruct", run, images, "-o", out, "--batch-size", 4]
    with monkeypatch.context() as m:
        _disk_full_at(2, m)
        r = _cli(*args)
    assert r.exit_code == 2 and f"cannot write {out / 'f01.png'}: No space left on device" in r.output, r.output
    r = _cli(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("f*.png"))) == 6 and (out / "comparison.png").exists()


def test_a_disk_full_among_heat_maps_without_an_output_file_says_so(runs, tmp_path, monkeypatch):
    """Without -o (no journal) the same failure was a traceback and exit 3 too."""
    run, images, maps = runs[1], _images(tmp_path / "q", 3), tmp_path / "maps"
    with monkeypatch.context() as m:
        _disk_full_at(2, m)
        r = _cli("anomaly-score", run, images, "--maps", maps, "--score", "neg_elbo")
    assert r.exit_code == 2 and f"cannot write {maps}: No space left on device" in r.output, r.output
