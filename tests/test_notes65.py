"""Small things a new user met (2026-12-07 audit, surfaces no benchmark uses): what `evaluate` and
the threshold rows say where their numbers read better than they are."""

from __future__ import annotations

import json
import re

from rich.console import Console
from rich.table import Table

from vaekit.anomaly.evaluation import Evaluation


def _evaluation(n_normal: int, n_anomalous: int, best_f1: float) -> Evaluation:
    return Evaluation(n_normal=n_normal, n_anomalous=n_anomalous, score="defect", estimator="plug-in", samples=0,
                      auroc=0.54, auprc=0.85, fpr_at_95_tpr=0.96, best_f1=best_f1, best_f1_threshold=0.473,
                      threshold=0.6666, threshold_source="stored", f1_at_threshold=0.0, precision_at_threshold=None,
                      recall_at_threshold=0.0, fpr_at_threshold=0.0)


def _printed(monkeypatch, ev) -> str:
    from vaekit_cli import anomaly as cli_anomaly

    console = Console(width=200, record=True)
    monkeypatch.setattr(cli_anomaly, "console", console)
    cli_anomaly._print_evaluation(ev)
    return re.sub(r"[\s│]+", " ", console.export_text())


def test_evaluate_says_what_chance_gives_and_when_the_best_f1_flags_every_image(monkeypatch):
    """100 defective images against 25 normal: AUPRC 0.85 is barely above chance (0.8), and the
    best F1, 0.8889, is that of flagging every image; the table read like a usable operating point."""
    out = _printed(monkeypatch, _evaluation(25, 100, 2 * 0.8 / 1.8))
    assert "AUPRC 0.8500 (by chance 0.8000, the share of anomalous images)" in out
    assert "best F1 0.8889 (threshold 0.473; flagging every image scores the same)" in out
    out = _printed(monkeypatch, _evaluation(25, 100, 0.95))  # a real operating point: no such words
    assert "best F1 0.9500 (threshold 0.473) " in out and "flagging every image" not in out


def test_evaluate_json_carries_what_chance_gives_too():
    """`evaluate --json` had neither: a script reading auprc 0.85 could not tell it from a good score."""
    d = json.loads(json.dumps(_evaluation(25, 100, 2 * 0.8 / 1.8).to_dict()))
    assert d["auprc_by_chance"] == 0.8 and d["best_f1_is_flag_all"] is True
    d = _evaluation(25, 100, 0.95).to_dict()
    assert d["auprc_by_chance"] == 0.8 and d["best_f1_is_flag_all"] is False


def _promise(section: dict) -> str:
    from vaekit_cli.output import promise_rows

    table, console = Table(show_header=False), Console(width=200, record=True)
    promise_rows(table, section)
    console.print(table)
    return re.sub(r"[\s│]+", " ", console.export_text())


def test_a_rate_from_too_few_scores_is_printed_as_the_bound_it_is():
    """8 calibration scores and a threshold at or beyond their largest: the rate is at most 1/9 on
    average, and the row said "11% of normal images" as if it were expected."""
    few = {"expected_fpr": 1 / 9, "threshold_quantile": 0.99, "source": "calibration", "n": 8}
    assert "expected false positives at most 11% of normal images on average" in _promise(few)
    enough = {"expected_fpr": 0.0099, "threshold_quantile": 0.99, "source": "calibration", "n": 200}
    assert "expected false positives 0.99% of normal images " in _promise(enough)
    own = {"expected_fpr": 0.5, "threshold_quantile": 0.99, "source": "training", "n": 1}
    assert "expected false positives at least 50% of normal images " in _promise(own)
    fixed = {"expected_fpr": 0.27, "threshold_quantile": 0.73, "source": "calibration", "n": 10, "fixed": True}
    assert "expected false positives 27% of normal images " in _promise(fixed)  # `threshold --value`: a count


def test_a_resume_from_another_folder_says_where_the_job_began(tmp_path, monkeypatch):
    """A job begun as `anomaly-score R in -o o.csv` and resumed from another folder (the same files
    named by absolute paths) was refused with "the input files changed", though nothing had:
    the journal names them relative to the folder it was begun in, and now says so."""
    import pytest

    from export_support import random_job, stopped_job
    from vaekit import anomaly
    import vaekit
    from vaekit.errors import BadInput

    run, data = random_job(tmp_path, 10)
    monkeypatch.chdir(tmp_path)
    stopped_job(run.name, data.name, "o.csv", after=1)
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(BadInput) as e:
        anomaly.score_to_file(vaekit.load(run), data, tmp_path / "o.csv", threshold=0.0, batch_size=4, resume=True)
    assert "from the folder it was begun in" in str(e.value) and "delete it to start again" in str(e.value)
    monkeypatch.chdir(tmp_path)  # from there the same resume goes on
    report = anomaly.score_to_file(vaekit.load(run.name), data.name, "o.csv", threshold=0.0, batch_size=4,
                                   resume=True)
    assert report.resumed == 1 and report.count == 10
