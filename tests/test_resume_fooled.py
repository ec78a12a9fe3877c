"""Journals, shares and resume that cannot be fooled: cases a hostile tester found after the third
hardening pass. A resumed or merged job gives the file an uninterrupted job gives, or refuses
with one line and exit 2; it never mixes rows it cannot vouch for.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the CLI through Typer's runner.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from export_support import random_job, stopped_job
from cli_support import invoke, one_line_refusal

N_IMAGES = 24  # batch size 4: 6 batches

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("fooled"), N_IMAGES)


def score(run, data, out, *extra):
    return invoke("anomaly-score", run, data, "-o", out, "--batch-size", "4", "--threshold", "0", *extra)


@pytest.mark.parametrize("edit", ["swap", "drop"])
def test_a_journal_whose_batches_are_out_of_order_is_refused(setup, tmp_path, edit):
    # two batches swapped, or a middle one deleted (the resume scored it again and appended it
    # last): the CSV came out in journal order, not file order, with exit 0
    run, data = setup
    out = tmp_path / "scores.csv"
    journal = stopped_job(run, data, out)
    header, *batches = journal.read_text().splitlines(keepends=True)
    assert len(batches) == 3
    journal.write_text(header + "".join([batches[1], batches[0]] if edit == "swap" else [batches[0], batches[2]]))
    r = score(run, data, out, "--resume")
    assert one_line_refusal(r) and "out of order" in r.output, r.output
    assert not out.exists()


def test_an_untouched_journal_still_resumes_to_the_uninterrupted_file(setup, tmp_path):
    run, data = setup
    assert score(run, data, tmp_path / "whole.csv").exit_code == 0
    out = tmp_path / "scores.csv"
    stopped_job(run, data, out)
    assert score(run, data, out, "--resume").exit_code == 0
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()


@pytest.fixture(scope="module")
def exports(setup, tmp_path_factory):
    """The same run exported three times: as float, and as int8 (which keeps the float model's
    fingerprint) calibrated on all the images and on a third of them."""
    from vaekit.export import export

    run, data = setup
    root = tmp_path_factory.mktemp("exports")
    third = root / "third"
    third.mkdir()
    for path in sorted(Path(data).iterdir())[:N_IMAGES // 3]:
        shutil.copy(path, third / path.name)
    export(run, root / "float" / "m.onnx", images=data)
    export(run, root / "int8" / "m.onnx", images=data, quantize="int8")
    export(run, root / "int8b" / "m.onnx", images=third, quantize="int8")
    return root / "float", root / "int8", root / "int8b"


@pytest.mark.slow  # exports twice (int8 calibration included)
@pytest.mark.parametrize("command", ["anomaly-score", "encode", "reconstruct"])
def test_a_float_export_replaced_by_its_int8_export_does_not_resume_the_job(setup, exports, tmp_path, command):
    # the same path, engine and fingerprint: the resume took int8 scores after float ones, exit 0
    _, data = setup
    model = tmp_path / "model"
    shutil.copytree(exports[0], model)
    out = tmp_path / {"anomaly-score": "scores.csv", "encode": "codes.npz", "reconstruct": "recon"}[command]
    extra = ["--threshold", "0"] if command == "anomaly-score" else []
    r = invoke(command, model / "m.onnx", data, "-o", out, "--batch-size", "4", *extra, "--shard", "0/2")
    assert r.exit_code == 0, r.output  # share 0 of 2: its journal stays, as a killed job's does
    journal = next(tmp_path.glob("*.partial"))
    before = journal.read_bytes()
    shutil.copytree(exports[1], model, dirs_exist_ok=True)
    r = invoke(command, model / "m.onnx", data, "-o", out, "--batch-size", "4", *extra, "--shard", "1/2")
    assert one_line_refusal(r) and "quantization" in r.output, r.output
    r = invoke(command, model / "m.onnx", data, "-o", out, "--batch-size", "4", *extra, "--shard", "0/2", "--resume")
    assert one_line_refusal(r) and "quantization" in r.output, r.output
    assert journal.read_bytes() == before
    assert command == "reconstruct" or not out.exists()  # (reconstruct's output is the folder of share 0's PNGs)


@pytest.mark.slow  # exports three times (int8 calibration included)
def test_an_int8_export_replaced_by_another_int8_export_of_the_run_does_not_resume_the_job(setup, exports, tmp_path):
    # two int8 exports of one run, calibrated on other images: the same path, engine, fingerprint
    # and quantisation, so the resume mixed the two models' rows with exit 0 (found by a helper's review)
    _, data = setup
    model = tmp_path / "model"
    shutil.copytree(exports[1], model)
    out = tmp_path / "scores.csv"
    r = invoke("anomaly-score", model / "m.onnx", data, "-o", out, "--batch-size", "4", "--threshold", "0",
               "--shard", "0/2")
    assert r.exit_code == 0, r.output
    shutil.copytree(exports[2], model, dirs_exist_ok=True)
    r = invoke("anomaly-score", model / "m.onnx", data, "-o", out, "--batch-size", "4", "--threshold", "0",
               "--shard", "0/2", "--resume")
    assert one_line_refusal(r) and "export" in r.output, r.output
    assert not out.exists()


def test_a_job_started_by_another_vaekit_release_does_not_resume_or_merge(setup, tmp_path, monkeypatch):
    # a release may change a score's maths under the same name: a resume after an upgrade, or
    # shares on machines with different releases, mixed the two with exit 0
    from vaekit.stream import journals

    run, data = setup
    out = tmp_path / "scores.csv"
    monkeypatch.setattr(journals, "__version__", "0.1.9", raising=False)
    assert score(run, data, out, "--shard", "0/2").exit_code == 0
    monkeypatch.undo()
    r = score(run, data, out, "--shard", "1/2")
    assert one_line_refusal(r) and "'0.1.9' then" in r.output, r.output
    journal = stopped_job(run, data, tmp_path / "other.csv")
    monkeypatch.setattr(journals, "__version__", "0.1.9", raising=False)
    r = score(run, data, tmp_path / "other.csv", "--resume")
    assert one_line_refusal(r) and "'0.1.9' now" in r.output, r.output
    assert "finish it with the vaekit that began it" in r.output, r.output  # no command of this one resumes it
    assert journal.exists() and not out.exists() and not (tmp_path / "other.csv").exists()


def test_an_output_beside_an_unfinished_journal_names_both_options(setup, tmp_path):
    # the output of an earlier job, and the journal of a later one stopped before the end: --resume
    # said to pass --overwrite, --overwrite said to pass --resume, and neither said both
    run, data = setup
    out = tmp_path / "scores.csv"
    assert score(run, data, out).exit_code == 0
    before = out.read_bytes()
    stopped_job(run, data, out, overwrite=True)
    r = score(run, data, out, "--overwrite")
    assert one_line_refusal(r) and "--resume" in r.output and "--overwrite" in r.output, r.output
    assert out.read_bytes() == before
    assert score(run, data, out, "--resume", "--overwrite").exit_code == 0
    assert out.read_bytes() == before and not Path(f"{out}.partial").exists()


@pytest.mark.slow  # exports twice (int8 calibration included)
def test_an_int8_export_says_its_lossy_pixels_are_not_the_float_models(setup, tmp_path):
    """An int8 export decoded a torch-written .vkc with exit 0 and nothing said, its pixels up to
    121 grey levels from the run's (h8, a 32 px RGB model): encode and decode with it now say so
    on stderr; the float export and the run say nothing."""
    from vaekit.export import export

    run, data = setup
    run = Path(shutil.copytree(run, tmp_path / "run"))
    vkc = tmp_path / "x.vkc"
    r = invoke("encode", run, data, "-o", vkc, "--quality", "4", "--fit", data)  # the tables, then the file
    assert r.exit_code == 0, r.output
    export(run, tmp_path / "float" / "m.onnx", images=data)
    export(run, tmp_path / "int8" / "m.onnx", images=data, quantize="int8")
    said = "is an int8 export: it decodes lossy images with quantised networks"
    r = invoke("decode", tmp_path / "int8" / "m.onnx", vkc, "-o", tmp_path / "int8-out")
    assert r.exit_code == 0 and said in " ".join(r.output.split()), r.output
    for model, name in ((tmp_path / "float" / "m.onnx", "float-out"), (run, "run-out")):
        r = invoke("decode", model, vkc, "-o", tmp_path / name)
        assert r.exit_code == 0 and "int8 export" not in r.output, r.output
    r = invoke("encode", tmp_path / "int8" / "m.onnx", data, "-o", tmp_path / "y.codes")
    assert r.exit_code == 0 and "is an int8 export: it encodes lossy images" in " ".join(r.output.split()), r.output
