"""Hostile checks, round 11: the anomaly table's verdict column, an input named comparison.png,
unwritable outputs said before the work, byte copies in both labelled sets, a hand-edited
threshold quantile and a train batch size without bound. Each refusal is one line and exit
code 2, never a traceback; nothing vaekit did not create is changed.

Real components: a tiny trained run on 16 px washers (tests/test_cli_anomaly.py's), the CLI
through Typer's runner.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

import pytest

from test_cli_anomaly import washer_run
from cli_support import invoke, one_line_refusal


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return washer_run(tmp_path_factory, "hostile11")


@pytest.fixture
def run(parts, tmp_path):
    """A copy of the trained run this test may change."""
    copy = tmp_path / "run"
    shutil.copytree(parts / "run", copy)
    return copy


@pytest.fixture
def broken_run(run):
    """A run whose weights are damaged: a command that loads the model fails on them."""
    (run / "model.safetensors").write_bytes(b"not a safetensors file")
    return run


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder this process may not write in. Mode 555 alone does not stop root (the tests run
    as root in CI), so os.access, which vaekit asks, also says no for it; a real write would
    still succeed, so a test passes only if vaekit refuses before writing."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    real = os.access

    def access(path, mode, *a, **kw):
        if os.path.realpath(path) == str(folder.resolve()) and mode & os.W_OK:
            return False
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)
    yield folder
    folder.chmod(0o755)


def test_the_anomaly_table_names_its_verdict_column_as_the_file_does(parts, tmp_path):
    # the ANOMALOUS / normal column had an empty header; the -o file calls it `anomalous`
    r = invoke("anomaly-score", parts / "run", parts / "test" / "anomalous", "--threshold", 0, "-o", tmp_path / "s.csv")
    assert r.exit_code == 0, r.output
    header = next(line for line in r.output.splitlines() if "image" in line and "score" in line)
    assert "verdict" in header, r.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert [row["anomalous"] for row in rows] == ["true"] * 4


def test_an_input_named_comparison_png_is_reconstructed_and_the_grid_moves_aside(parts, tmp_path):
    # refused before: its reconstruction and the comparison grid had the same name
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(parts / "test" / "normal" / "part_0000.png", src / "comparison.png")
    shutil.copy(parts / "test" / "normal" / "part_0001.png", src / "b.png")
    before = (src / "comparison.png").read_bytes()
    for images, out in ((src, tmp_path / "rec"), (src / "comparison.png", tmp_path / "one")):
        r = invoke("reconstruct", parts / "run", images, "-o", out, "--json")
        assert r.exit_code == 0, r.output
        rep = json.loads(r.output)
        assert rep["grid"] == str(out / "comparison-1.png")
        assert str(out / "comparison.png") in [i["file"] for i in rep["images"]]
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["b.png", "comparison-1.png", "comparison.png"]
    assert (src / "comparison.png").read_bytes() == before
    r = invoke("reconstruct", parts / "run", src, "-o", tmp_path / "rec")  # the user's own files: not replaced
    assert one_line_refusal(r) and "--overwrite" in r.output, r.output


def test_a_plot_under_a_file_is_refused_before_the_model_is_loaded(broken_run, parts, tmp_path):
    # found only when the ROC curve was written, after every image was scored
    (tmp_path / "afile").write_text("mine")
    r = invoke("evaluate", broken_run, "--normal", parts / "test" / "normal", "--anomalous", parts / "test" / "anomalous",
               "--plot", tmp_path / "afile" / "roc.png")
    assert one_line_refusal(r) and "--plot" in r.output and "is a file, not a folder" in r.output, r.output
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_sample_grid_under_a_file_is_refused_before_the_model_is_loaded(broken_run, tmp_path):
    (tmp_path / "afile").write_text("mine")
    r = invoke("sample", broken_run, "-o", tmp_path / "afile" / "s.png")
    assert one_line_refusal(r) and "is a file, not a folder" in r.output, r.output


def test_plot_and_sample_in_a_read_only_folder_are_refused_before_the_model_is_loaded(broken_run, parts, read_only):
    r = invoke("evaluate", broken_run, "--normal", parts / "test" / "normal", "--anomalous", parts / "test" / "anomalous",
               "--plot", read_only / "roc.png")
    assert one_line_refusal(r) and f"cannot write in {read_only}" in r.output, r.output
    r = invoke("sample", broken_run, "-o", read_only / "s.png")
    assert one_line_refusal(r) and f"cannot write in {read_only}" in r.output, r.output
    assert list(read_only.iterdir()) == []


def test_sample_data_in_a_read_only_folder_is_refused_before_any_file(read_only):
    r = invoke("sample-data", "shapes", read_only / "data")
    assert one_line_refusal(r) and f"cannot write in {read_only}" in r.output, r.output
    assert list(read_only.iterdir()) == []


def test_evaluate_refuses_copies_of_one_image_in_both_labelled_sets(parts, tmp_path):
    # the same file twice was refused, a copy of it under another name was scored as both labels
    normal, anomalous = tmp_path / "normal", tmp_path / "anomalous"
    shutil.copytree(parts / "test" / "normal", normal)
    shutil.copytree(parts / "test" / "anomalous", anomalous)
    shutil.copy(normal / "part_0001.png", anomalous / "copy.png")
    shutil.copy(normal / "part_0002.png", anomalous / "copy2.png")
    r = invoke("evaluate", parts / "run", "--normal", normal, "--anomalous", anomalous)
    assert one_line_refusal(r), r.output
    assert "2 anomalous images hold the same bytes as a normal image" in r.output
    assert f"{anomalous / 'copy.png'} and {normal / 'part_0001.png'}" in r.output


def test_a_threshold_quantile_outside_0_1_in_the_config_is_a_damaged_file(run, parts):
    # `vaekit threshold` showed "(quantile 2)" and scoring used the section as it was
    config = run / "config.json"
    doc = json.loads(config.read_text())
    doc["anomaly"]["threshold_quantile"] = 2
    config.write_text(json.dumps(doc))
    for r in (invoke("threshold", run), invoke("anomaly-score", run, parts / "test" / "normal")):
        assert one_line_refusal(r), r.output
        assert "'threshold_quantile' is 2, not in (0, 1)" in r.output and str(config) in r.output, r.output


@pytest.mark.parametrize("size", [4097, 10**12])
def test_train_refuses_a_batch_size_above_the_bound_before_reading_images(parts, tmp_path, size):
    # 10**12 was taken as it was (one batch of every image, whatever their number); a usage error,
    # as the other commands' --batch-size (one line through the `vaekit` executable: test_cli_messages)
    r = invoke("train", parts / "train", "-o", tmp_path / "r", "--batch-size", size)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "Invalid value for '--batch-size'" in r.output and "less than or equal to 4096" in r.output, r.output
    assert not (tmp_path / "r").exists()


def test_the_library_refuses_a_batch_size_above_its_bound():
    from vaekit.config import MAX_BATCH_SIZE, TrainConfig
    from vaekit.errors import BadInput

    assert TrainConfig(batch_size=MAX_BATCH_SIZE).batch_size == MAX_BATCH_SIZE
    for bad in (MAX_BATCH_SIZE + 1, 10**12, True):
        with pytest.raises(BadInput, match="batch size must be an integer from 1 to 65536"):
            TrainConfig(batch_size=bad)
