"""Hostile checks, round 10: evaluate, threshold, sample / interpolate, decode and sample-data
given what earlier rounds did not try. Each refusal is one line and exit code 2, never a
traceback; nothing vaekit did not create is changed.

Real components: a tiny trained run on 16 px washers (tests/test_cli_anomaly.py's), the CLI
through Typer's runner.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from test_cli_anomaly import washer_run
from vaekit_cli.main import app
from cli_support import invoke, one_line_refusal


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return washer_run(tmp_path_factory, "hostile10")


@pytest.fixture
def run(parts, tmp_path):
    """A copy of the trained run this test may change."""
    copy = tmp_path / "run"
    shutil.copytree(parts / "run", copy)
    return copy


@pytest.mark.parametrize("field", ["threshold", "threshold_quantile", "n"])
def test_an_integer_too_large_for_a_float_in_the_config_is_a_damaged_file(run, parts, field):
    # math.isfinite(10**400) raises OverflowError: `threshold` and `anomaly-score` crashed with exit 3
    # (fileio.finite_number); the message shows the number cut short
    config = run / "config.json"
    doc = json.loads(config.read_text())
    doc["anomaly"][field] = "HUGE"
    config.write_text(json.dumps(doc).replace('"HUGE"', "1" + "0" * 400))
    for r in (invoke("threshold", run), invoke("anomaly-score", run, parts / "test" / "normal")):
        assert one_line_refusal(r), r.output
        assert "anomaly section is damaged" in r.output and len(r.output) < 400
        assert ("not a count" if field == "n" else "not a finite number") in r.output, r.output


def test_a_code_file_name_too_deep_to_create_is_refused_before_writing(parts, tmp_path):
    # a forged code file (its checksum recomputed by the writer) naming an image 2,000 folders deep:
    # mkdir(parents=True) recursed once per folder, a RecursionError with exit 3
    import dataclasses

    from vaekit.codes import format as codefile

    real = tmp_path / "real.codes"
    assert invoke("encode", parts / "run", parts / "test" / "normal", "-o", real).exit_code == 0
    cf = codefile.load(real)
    deep = ["d/" * 2000 + "a.png", *cf.names[1:]]
    codefile.save(dataclasses.replace(cf, names=deep), tmp_path / "deep.codes")
    out = tmp_path / "decoded"
    r = invoke("decode", parts / "run", tmp_path / "deep.codes", "-o", out)
    assert one_line_refusal(r), r.output[-2000:]
    assert "2000 folders deep" in r.output and "256 folders)" in r.output
    assert not out.exists()


def test_a_threshold_is_written_under_the_runs_lock(run, monkeypatch):
    # two `vaekit threshold` at once: write_config removed the other's temporary config.json as a
    # crash's stray, and one failed with "cannot write run/config.json: No such file or directory".
    # Under the lock, a second one is refused (exit 2) before it writes or removes anything.
    from vaekit.errors import InUse
    from vaekit.training import rundir
    from vaekit.training.runlock import locked, refuse_in_use

    held, write = [], rundir.write_config

    def checked(run_dir, cfg):
        try:
            refuse_in_use(run_dir)  # a second open of the lock file: refused while the lock is held
            held.append(False)
        except InUse:
            held.append(True)
        write(run_dir, cfg)

    monkeypatch.setattr(rundir, "write_config", checked)
    r = invoke("threshold", run, "--value", "1")
    assert r.exit_code == 0, r.output
    assert held == [True]
    assert json.loads((run / "config.json").read_text())["anomaly"]["threshold"] == 1.0
    before = (run / "config.json").read_bytes()
    with locked(run):  # another threshold writing: refused, nothing changed
        r = invoke("threshold", run, "--value", "2")
    assert one_line_refusal(r) and "in use by process" in r.output, r.output
    assert (run / "config.json").read_bytes() == before



def test_a_threshold_whose_run_was_trained_again_before_the_lock_is_refused(run, monkeypatch):
    # a training that finished between the threshold's first read of config.json and its lock:
    # the new section (from the old model's scores) must not land in the new model's config
    from vaekit.anomaly import threshold
    from vaekit.errors import InUse
    from vaekit.training import runlock

    real = runlock.locked

    def retrained_first(run_dir, **kw):
        cfg = json.loads((run / "config.json").read_text())
        cfg["fingerprint"] = "0" * len(cfg["fingerprint"])
        (run / "config.json").write_text(json.dumps(cfg))
        return real(run_dir, **kw)

    monkeypatch.setattr(runlock, "locked", retrained_first)
    with pytest.raises(InUse, match="trained again"):
        threshold.set_threshold(run, value=3.0)
    assert json.loads((run / "config.json").read_text())["anomaly"].get("threshold") != 3.0

def test_sample_data_into_a_link_to_nothing_names_the_link(tmp_path):
    # mkdir through a dangling link said only "[Errno 17] File exists: 'data'"
    link = tmp_path / "data"
    link.symlink_to(tmp_path / "gone")
    r = invoke("sample-data", "digits", link)
    assert one_line_refusal(r), r.output
    assert "is a link to nothing" in r.output and "Errno" not in r.output
    assert link.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_run_file_without_read_permission_is_named(run, parts, name):
    # stat allowed it, open refused it: PermissionError with its traceback, exit 3
    import hostile

    (run / name).chmod(0)
    try:
        with hostile.unprivileged():
            r = invoke("anomaly-score", run, parts / "test" / "normal")
    finally:
        (run / name).chmod(0o644)
    assert one_line_refusal(r), r.output
    assert "cannot be read" in r.output and name in r.output and "Permission denied" in r.output, r.output


def test_a_huge_fixed_threshold_is_printed_short(run, parts):
    # `threshold --value 1e308` printed all 309 digits, cut off in its table cell
    r = invoke("threshold", run, "--value", "1e308")
    assert r.exit_code == 0, r.output
    assert "1e+308" in r.output and "0" * 20 not in r.output, r.output
    r = invoke("anomaly-score", run, parts / "test" / "normal")
    assert r.exit_code == 0 and "at threshold 1e+308" in r.output and "0" * 20 not in r.output, r.output


def test_a_threshold_on_a_run_whose_lock_cannot_be_opened_names_the_run_not_out(run):
    # the lock threshold now takes said "cannot create or lock --out RUN", an option threshold lacks
    import hostile

    before = (run / "config.json").read_bytes()
    (run / ".vaekit.lock").chmod(0)
    try:
        with hostile.unprivileged():
            r = invoke("threshold", run, "--value", "1")
    finally:
        (run / ".vaekit.lock").chmod(0o644)
    assert one_line_refusal(r), r.output
    assert "cannot create or lock the run directory" in r.output and "--out" not in r.output, r.output
    assert (run / "config.json").read_bytes() == before


def test_sample_data_stopped_half_way_leaves_no_part_of_the_set(tmp_path, monkeypatch):
    # Ctrl-C (or SIGTERM) half way left the images written so far, and a truncated PNG: `train`
    # took them for a data set, and the next call for an earlier call's images
    from vaekit.sample_data import shapes

    calls, render = [], shapes.render_shape

    def stopping(*args, **kw):
        calls.append(1)
        if len(calls) == 7:  # after 6 training images
            raise KeyboardInterrupt
        return render(*args, **kw)

    monkeypatch.setattr(shapes, "render_shape", stopping)
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = CliRunner().invoke(app, ["sample-data", "shapes", str(out), "--size", "16"])
    assert r.exit_code == 130, r.output
    assert len(calls) == 7
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["notes.txt"]
    monkeypatch.setattr(shapes, "render_shape", render)
    r = CliRunner().invoke(app, ["sample-data", "shapes", str(out), "--size", "16"])  # no --overwrite needed
    assert r.exit_code == 0, r.output


def test_sample_data_overwrite_stopped_half_way_leaves_no_readme_of_the_old_set(tmp_path, monkeypatch):
    # --overwrite removed the old set's images but not its README, and a call stopped before its
    # own README left the old one describing images that were gone
    from vaekit.sample_data import shapes

    out = tmp_path / "data"
    assert CliRunner().invoke(app, ["sample-data", "shapes", str(out), "--size", "16"]).exit_code == 0
    assert (out / "README.txt").is_file()
    calls, render = [], shapes.render_shape

    def stopping(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return render(*args, **kw)

    monkeypatch.setattr(shapes, "render_shape", stopping)
    r = CliRunner().invoke(app, ["sample-data", "shapes", str(out), "--size", "16", "--seed", "1", "--overwrite"])
    assert r.exit_code == 130, r.output
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_threshold_on_a_file_says_what_an_export_keeps(run, tmp_path):
    # an .onnx given to `vaekit threshold` was typer's "dir ... is a file", as if a model could not be a file
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read")
    r = invoke("threshold", onnx, "--value", "3")
    assert one_line_refusal(r) and "is a file" in r.output and "export again" in r.output, r.output
    assert onnx.read_bytes() == b"not read"


def test_moving_the_threshold_says_from_what_to_what_and_where(run):
    before = json.loads((run / "config.json").read_text())["anomaly"]["threshold"]
    r = invoke("threshold", run, "--value", "7.5")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"threshold {before:.2f} -> 7.50, written to" in text and "config.json" in text, r.output
    r = invoke("threshold", run)  # showing it moves nothing and says nothing of it
    assert r.exit_code == 0 and "written to" not in r.output, r.output


def test_evaluate_with_nothing_flagged_shows_no_precision(parts):
    # a threshold above every score flags nothing: precision is 0/0, and printing 0.0000 said the flags were all wrong
    t = parts / "test"
    r = invoke("evaluate", parts / "run", "--normal", t / "normal", "--anomalous", t / "anomalous", "--threshold", "1e12")
    assert r.exit_code == 0, r.output
    assert "n/a (none flagged) / 0.0000 / 0.0000" in " ".join(r.output.split()), r.output
    r = invoke("evaluate", parts / "run", "--normal", t / "normal", "--anomalous", t / "anomalous", "--threshold", "-1e12")
    assert r.exit_code == 0 and "n/a" not in r.output and "0.5000 / 1.0000 / 1.0000" in " ".join(r.output.split()), r.output
