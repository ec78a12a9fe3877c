"""Exports attacked as a careless or hostile user would: parts of two exports of one run mixed
(an fp32 main file beside an int8 part), outputs inside the run or under a file, a surface's
defect reader from another export of the same weights. Each is refused with one line and exit 2,
and nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vaekit
from export_support import exported, random_run
from vaekit.errors import BadInput, DamagedFile
from vaekit_cli.main import app


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory):
    """(fp32 main file, int8 main file): two exports of one run, each with its parts."""
    from vaekit.export import export

    ex = exported(tmp_path_factory)
    q = tmp_path_factory.mktemp("int8") / "digits.onnx"
    export(ex.run, q, quantize="int8")
    return ex.onnx, q


def _mixed(tmp_path: Path, main: Path, part_from: Path, role: str) -> Path:
    """A new folder holding `main` with its parts, except `role`'s, which comes from the export `part_from`."""
    tmp_path.mkdir()
    for src in (main, main.with_name(f"{main.stem}.encoder.onnx"), main.with_name(f"{main.stem}.decoder.onnx")):
        shutil.copyfile(src, tmp_path / src.name)
    shutil.copyfile(part_from.with_name(f"{part_from.stem}.{role}.onnx"), tmp_path / f"{main.stem}.{role}.onnx")
    return tmp_path / main.name


@pytest.mark.slow
def test_an_int8_part_beside_an_fp32_main_file_is_refused_not_used(two_exports, tmp_path):
    """Both exports carry the run's fingerprint: the int8 decoder was used by the fp32 model and
    decoded images 5e-3 away from its own, unnoticed."""
    fp32, int8 = two_exports
    mixed = vaekit.load(_mixed(tmp_path / "a", fp32, int8, "decoder"))
    with pytest.raises(DamagedFile, match="another export of this model.*int8-static-qdq"):
        mixed.decode(np.zeros((1, mixed.info.latent_dim), np.float32))
    mixed.encode(np.zeros((1, 1, 16, 16), np.uint8))  # the encoder is its own: fine
    back = vaekit.load(_mixed(tmp_path / "b", int8, fp32, "encoder"))
    with pytest.raises(DamagedFile, match="another export of this model"):
        back.encode(np.zeros((1, 1, 16, 16), np.uint8))


@pytest.mark.slow
def test_the_cli_refuses_a_mixed_set_with_one_line_and_writes_nothing(two_exports, tmp_path):
    fp32, int8 = two_exports
    main = _mixed(tmp_path / "set", fp32, int8, "decoder")
    digits = Path(fp32).parents[1] / "digits" / "test" / "normal"
    r = _cli("reconstruct", main, digits, "-o", tmp_path / "rec")
    assert r.exit_code == 2 and "another export of this model" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "rec").exists()
    # the matching sets themselves still work
    assert _cli("reconstruct", int8, digits, "-o", tmp_path / "rec8").exit_code == 0


def _no_trace(monkeypatch):
    """Make the (slow) trace fail loudly: a refusal that comes after it would show as this error."""
    from vaekit.export import job

    def traced(*a, **k):
        raise AssertionError("the output should have been refused before the trace")

    monkeypatch.setattr(job, "export_graphs", traced)


def test_an_output_inside_the_run_directory_is_refused_before_the_trace(tmp_path, monkeypatch):
    from vaekit.export import export

    run = random_run(tmp_path / "run", image_size=16, channels=1, latent_dim=4, base_channels=4)
    before = sorted(p.name for p in run.rglob("*"))
    _no_trace(monkeypatch)
    for out in (run / "m.onnx", run / "checkpoint" / "m.onnx", run / ".." / run.name / "model.safetensors.onnx"):
        with pytest.raises(BadInput, match="inside the model's run directory"):
            export(run, out)
    r = _cli("export", run, "-o", run / "m.onnx")
    assert r.exit_code == 2 and "inside the model's run directory" in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in run.rglob("*")) == before
