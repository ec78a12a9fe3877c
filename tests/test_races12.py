"""Two processes at once, as a helper's attack of 2026-12-07 found them: a file that appears at an
export's output names while it runs, and readers' lock probes that collided with each other."""

from __future__ import annotations

import pytest

from export_support import exported
from vaekit.errors import InUse, OutputExists


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    return exported(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["encoder", "scorer"])
def test_an_export_leaves_a_file_that_appeared_at_its_names_while_it_ran(ex, tmp_path, monkeypatch, which):
    from vaekit.export import job
    from vaekit.inference.engine_onnx import part_paths

    out = tmp_path / "m.onnx"
    names = part_paths(out)
    real = job.require_parity

    def parity_then_a_file_appears(*a, **k):  # another export, or a user, writes at the name meanwhile
        names[which].write_text("my notes")
        return real(*a, **k)

    monkeypatch.setattr(job, "require_parity", parity_then_a_file_appears)
    with pytest.raises(OutputExists, match="appeared while the export ran and is left as it is; nothing of this export"):
        job.export(ex.run, out)
    assert names[which].read_text() == "my notes"  # was replaced by the export, exit 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [names[which].name]  # nothing half-published, no staging
    monkeypatch.setattr(job, "require_parity", real)
    report = job.export(ex.run, out, overwrite=True)  # --overwrite names it: replaced
    assert names[which].read_bytes()[:8] != b"my notes" and report.files["scorer"] == out


def test_a_readers_probe_does_not_make_another_reader_or_a_writer_refuse_the_run(ex, monkeypatch):
    from vaekit.training import runlock

    answers = iter([False, False, True])  # two probes of other processes hold the lock for a moment
    monkeypatch.setattr(runlock, "try_lock", lambda fd: next(answers))
    monkeypatch.setattr(runlock.time, "sleep", lambda s: None)
    runlock.refuse_in_use(ex.run)  # was InUse "by process N", N the lock file's last writer, long gone
    monkeypatch.setattr(runlock, "try_lock", lambda fd: False)  # a training holds it: still refused
    with pytest.raises(InUse, match="is in use by process"):
        runlock.refuse_in_use(ex.run)


def test_showing_the_threshold_of_a_run_being_trained_says_it_is_in_use(ex):
    from typer.testing import CliRunner

    from vaekit.training.runlock import locked
    from vaekit_cli.main import app

    with locked(ex.run):  # a train --resume writing it (its threshold is taken out while it runs)
        r = CliRunner().invoke(app, ["threshold", str(ex.run)])
    assert r.exit_code == 2 and "in use by process" in " ".join(r.output.split())  # was "training did not finish"
    assert CliRunner().invoke(app, ["threshold", str(ex.run)]).exit_code == 0
