"""Raw anomaly maps: `anomaly-score --maps DIR --map-format npy` writes each image's map as its
own values (float32, the score's unit), named as the heat maps are, journaled and resumed as
they are. The model is untrained (random weights): these tests are about which values land in
which file, and every comparison is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vaekit
from export_support import random_job, stopped_job
from vaekit import anomaly
from vaekit.errors import BadInput
from vaekit_cli.main import app


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("raw"), 10)


def invoke(*args):
    return CliRunner().invoke(app, ["--threads", "1", *map(str, args)])


def test_raw_maps_hold_the_library_maps_values(job, tmp_path):
    run, data = job
    r = invoke("anomaly-score", run, data, "-o", tmp_path / "s.csv", "--maps", tmp_path / "raw",
               "--map-format", "npy", "--threshold", "0")
    assert r.exit_code == 0, r.output
    assert "wrote 10 raw maps (.npy)" in r.output
    report = anomaly.score_images(vaekit.load(run), data, threshold=0.0)
    files = sorted((tmp_path / "raw").rglob("*"))
    assert [p.name for p in files] == [Path(n).with_suffix(".npy").name for n in sorted(report.names)]
    for name, want in zip(report.names, report.pixel_maps):
        got = np.load(tmp_path / "raw" / Path(name).with_suffix(".npy"), allow_pickle=False)
        assert got.dtype == np.float32 and got.shape == want.shape == (16, 16)  # the model's size, not enlarged
        np.testing.assert_array_equal(got, want.astype(np.float32))


def test_the_library_writes_raw_maps_too_and_refuses_an_unknown_format(job, tmp_path):
    run, data = job
    report = anomaly.score_images(vaekit.load(run), data, threshold=0.0)
    written = anomaly.write_maps(tmp_path / "m", report, fmt="npy")
    assert [p.suffix for p in written] == [".npy"] * 10
    np.testing.assert_array_equal(np.load(written[3]), report.pixel_maps[3].astype(np.float32))
    with pytest.raises(BadInput, match="map format must be one of png, npy"):
        anomaly.write_maps(tmp_path / "n", report, fmt="tiff")
    with pytest.raises(BadInput, match="already exist"):  # as heat maps: not over a file without --overwrite
        anomaly.write_maps(tmp_path / "m", report, fmt="npy")


def test_a_resume_keeps_the_format_and_another_format_is_refused(job, tmp_path):
    run, data = job
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    stopped_job(run, data, out, maps, after=1, map_format="npy")
    model = vaekit.load(run)
    assert len(list(maps.rglob("*.npy"))) == 4 and not list(maps.rglob("*.png"))
    with pytest.raises(BadInput, match="map_format"):  # the journal names what differs
        anomaly.score_to_file(model, data, out, maps, threshold=0.0, batch_size=4, resume=True)
    np.save(maps / "img000.npy", np.zeros((16, 16), np.float32))  # a finished batch's map changed since
    with pytest.raises(BadInput, match="holds other bytes"):
        anomaly.score_to_file(model, data, out, maps, threshold=0.0, batch_size=4, resume=True, map_format="npy")
    whole = anomaly.score_to_file(model, data, tmp_path / "w.csv", tmp_path / "w", threshold=0.0, batch_size=4,
                                  map_format="npy")
    (maps / "img000.npy").write_bytes((tmp_path / "w" / "img000.npy").read_bytes())
    report = anomaly.score_to_file(model, data, out, maps, threshold=0.0, batch_size=4, resume=True, map_format="npy")
    assert report.resumed == 1 and report.maps == 6 and whole.maps == 10
    for p in sorted((tmp_path / "w").iterdir()):
        assert (maps / p.name).read_bytes() == p.read_bytes()


def test_a_bad_map_format_is_one_line_exit_2(job, tmp_path):
    run, data = job
    r = invoke("anomaly-score", run, data, "--maps", tmp_path / "m", "--map-format", "tif")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert not (tmp_path / "m").exists()


def test_a_map_format_without_a_maps_folder_is_refused(job, tmp_path):
    run, data = job
    r = invoke("anomaly-score", run, data, "-o", tmp_path / "s.csv", "--map-format", "npy")
    assert r.exit_code == 2 and "--map-format npy needs --maps DIR" in r.output, r.output
    assert not (tmp_path / "s.csv").exists()
