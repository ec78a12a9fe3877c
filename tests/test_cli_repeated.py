"""A file named more than once on the command line (twice, or a file and its folder) is scored or
encoded once, and the CLI says which mentions it left out."""

from __future__ import annotations

import csv

from typer.testing import CliRunner

from export_support import random_job


def _cli(*args):
    from vaekit_cli.main import app

    return CliRunner().invoke(app, ["--threads", "1", *map(str, args)])


def test_anomaly_score_of_a_file_named_twice_writes_one_row_and_a_note(tmp_path):
    run, data = random_job(tmp_path, 3)
    a = data / "img000.png"
    r = _cli("anomaly-score", run, a, data, a, "-o", tmp_path / "s.csv", "--score", "neg_elbo")
    assert r.exit_code == 0, r.output
    with open(tmp_path / "s.csv", newline="") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    assert sorted(paths) == sorted(str(p) for p in data.glob("*.png"))  # three files, each once
    assert "2 file(s) named again after their first mention were scored once" in r.output, r.output


def test_a_file_named_once_gets_no_note(tmp_path):
    run, data = random_job(tmp_path, 2)
    r = _cli("anomaly-score", run, data, "-o", tmp_path / "s.csv", "--score", "neg_elbo")
    assert r.exit_code == 0 and "named again" not in r.output, r.output
