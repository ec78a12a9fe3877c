"""The eighteenth hostile round, on journals, shares and resume: a file name holding a carriage
return split its CSV row in two (csv quotes a cell with the line end, "\\n", but not one with "\\r",
which every CSV reader takes for a line end too)."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from export_support import random_job
from vaekit.anomaly import rows_csv
from vaekit_cli.main import app

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("hostile18"), 6)


def invoke(*args):
    return CliRunner().invoke(app, ["--threads", "1", *map(str, args)], env={"COLUMNS": "300"})


def _one_line_exit_2(r) -> str:
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    return r.output


def _csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


# --- 1. a carriage return in a file name keeps its CSV row whole ------------------------------

def _row(path: str) -> dict:
    return {"path": path, "score": 1.5, "bits_per_dim": 0.5, "threshold": None, "anomalous": None,
            "neg_elbo": 2.0, "recon": 1.5, "kl": 0.5, "excess": 0.25}


@pytest.mark.parametrize("name", ["d/cr\rx.png", "d/\rlead.png", "d/end\r", "d/both\r\n.png"])
def test_a_carriage_return_in_a_name_is_quoted_so_the_row_reads_back_whole(name):
    rows = _csv_rows(rows_csv([_row("d/a.png"), _row(name), _row("d/b.png")]).encode())
    assert [len(r) for r in rows] == [9, 9, 9, 9], rows
    assert rows[2][0].lstrip("'") == name and rows[1][0] == "d/a.png" and rows[3][0] == "d/b.png"


def test_rows_without_a_carriage_return_are_written_as_before():
    text = rows_csv([_row("d/a.png"), _row("d/com,ma.png"), _row("d/a\nb.png")])
    assert text.splitlines()[1] == "d/a.png,1.5,0.5,,,2.0,1.5,0.5,0.25"
    assert '"d/com,ma.png",1.5' in text and '"d/a\nb.png",1.5' in text


def test_a_scored_folder_with_a_carriage_return_in_a_name_resumes_into_a_readable_csv(setup, tmp_path):
    from export_support import stopped_job

    run, data = setup
    folder = tmp_path / "in"
    shutil.copytree(data, folder)
    (folder / "img001.png").rename(folder / "img001\r.png")
    whole = tmp_path / "whole.csv"
    r = invoke("anomaly-score", run, folder, "-o", whole, "--threshold", "0", "--batch-size", "4")
    assert r.exit_code == 0, r.output
    rows = _csv_rows(whole.read_bytes())
    assert len(rows) == 7 and {len(r) for r in rows} == {9}, rows
    assert rows[2][0] == str(folder / "img001\r.png")
    out = tmp_path / "out.csv"
    assert stopped_job(run, folder, out, after=1).exists()
    r = invoke("anomaly-score", run, folder, "-o", out, "--threshold", "0", "--batch-size", "4", "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == whole.read_bytes()
