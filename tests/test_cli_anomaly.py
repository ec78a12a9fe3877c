"""`vaekit anomaly-score`, `evaluate` and `threshold` through Typer's runner and the installed executable."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import built_once
from vaekit_cli.main import app

runner = CliRunner()
EXE = shutil.which("vaekit", path=str(Path(sys.executable).parent)) or "vaekit"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def washer_run(tmp_path_factory, name: str) -> Path:
    """A tiny run (ROOT/run) on 16 px washers with masks (ROOT/train, ROOT/test) in a new folder
    ROOT; quality does not matter here, only the plumbing. Also tests/test_hostile_review.py's and
    others': trained once per process, each module gets its own copy (tests/built_once.py)."""
    return built_once.washers(tmp_path_factory, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return washer_run(tmp_path_factory, "cli-parts")


def test_anomaly_score_prints_a_table_and_writes_csv_json_and_maps(parts, tmp_path):
    r = invoke("--threads", 1, "anomaly-score", parts / "run", parts / "test" / "normal", parts / "test" / "anomalous",
               "-o", tmp_path / "s.csv", "--maps", tmp_path / "maps")
    assert r.exit_code == 0, r.output
    assert "atypicality scores" in r.output and "(sd²; higher" in r.output and "anomalous at threshold" in r.output and "stored: quantile 0.99" in r.output
    assert "(z = μ)" in r.output and "bits/dim" not in r.output  # the ELBO column names its estimator
    rows = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))
    assert len(rows) == 8 and {"path", "score", "bits_per_dim", "threshold", "anomalous"} <= set(rows[0])
    assert f"wrote {tmp_path / 's.csv'} (score: atypicality, sd²)" in " ".join(r.output.split())  # which score the column holds
    assert all(row["anomalous"] == str(float(row["score"]) > float(row["threshold"])).lower() for row in rows)
    maps = sorted(p.relative_to(tmp_path / "maps").as_posix() for p in (tmp_path / "maps").rglob("*.png"))
    assert maps == [f"{d}/part_000{i}.png" for d in ("anomalous", "normal") for i in range(4)]
    r = invoke("anomaly-score", parts / "run", parts / "test" / "normal", "-o", tmp_path / "s.json", "--score", "neg_elbo")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["score"] == "neg_elbo" and len(doc["images"]) == 4
    assert "(score: neg_elbo, nats)" in " ".join(r.output.split())
    assert all(i["score"] == i["neg_elbo"] for i in doc["images"])


def test_threshold_override_and_fail_on_anomaly_exit_codes(parts):
    folder = parts / "test" / "anomalous"
    r = invoke("anomaly-score", parts / "run", folder, "--threshold", -1e9, "--fail-on-anomaly")
    assert r.exit_code == 1, r.output
    assert "4 of 4 anomalous at threshold -1000000000.00 sd² (given)" in r.output
    r = invoke("anomaly-score", parts / "run", folder, "--threshold", 1e9, "--fail-on-anomaly")
    assert r.exit_code == 0, r.output
    assert "0 of 4 anomalous" in r.output
    # sampled scores have no stored threshold: the pipeline flag cannot work without one
    r = invoke("anomaly-score", parts / "run", folder, "--samples", 2, "--fail-on-anomaly")
    assert r.exit_code == 2 and "--threshold" in r.output
    r = invoke("anomaly-score", parts / "run", folder, "--iwae", "--samples", 4, "--threshold", 1e9)
    assert r.exit_code == 0, r.output


def test_a_score_just_over_the_threshold_never_prints_as_the_threshold(parts, tmp_path):
    # "1514.92 ANOMALOUS" beside "at threshold 1514.92": two decimals hid which side it was on
    import re

    folder = parts / "test" / "anomalous"
    assert invoke("anomaly-score", parts / "run", folder, "-o", tmp_path / "s.json").exit_code == 0
    top = max(i["score"] for i in json.loads((tmp_path / "s.json").read_text())["images"])
    for threshold in (top - 1e-6, top + 1e-6):
        r = invoke("anomaly-score", parts / "run", folder, "--threshold", repr(threshold))
        assert r.exit_code == 0, r.output
        shown = re.search(r"anomalous at threshold (\S+)", r.output).group(1)
        row = next(line for line in r.output.splitlines() if "ANOMALOUS" in line or "normal " in line)
        score = row.split("│")[2].strip()
        assert score != shown and (float(score) > float(shown)) == (threshold < top) == ("ANOMALOUS" in row), (shown, row)
    r = invoke("anomaly-score", parts / "run", folder, "--threshold", repr(top - 1.0))
    assert "anomalous at threshold " + f"{top - 1.0:.2f} " in r.output  # two decimals where they tell


def test_a_negative_score_beside_a_threshold_of_zero_is_printed_apart_from_it():
    # "-0.00 normal" at threshold 0.00: the strings differed, the numbers they show did not
    from vaekit.anomaly.quantiles import distinct_decimals

    assert distinct_decimals([-1e-4], 0.0) == 4 and distinct_decimals([1e-3], -1e-3) == 3
    assert distinct_decimals([5.0, 7.5], 6.0) == 2 and distinct_decimals([6.0], 6.0) == 2  # a tie: nothing to tell
    assert distinct_decimals([1.0], None) == 2 and distinct_decimals([float("nan")], 1.0) == 2


def test_evaluate_table_json_and_roc_plot(parts, tmp_path):
    args = ["evaluate", parts / "run", "--normal", parts / "test" / "normal", "--anomalous", parts / "test" / "anomalous"]
    r = invoke(*args, "--masks", parts / "test" / "masks", "--plot", tmp_path / "roc.png")
    assert r.exit_code == 0, r.output
    for label in ("AUROC", "AUPRC", "FPR at 95% TPR", "best F1", "F1 at threshold", "pixel AUROC"):
        assert label in r.output
    assert Image.open(tmp_path / "roc.png").format == "PNG"
    r = invoke(*args, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["n_normal"] == 4 and doc["n_anomalous"] == 4 and 0.0 <= doc["auroc"] <= 1.0
    assert doc["pixel_auroc"] is None and doc["threshold_source"].startswith("stored")


def test_threshold_command_shows_and_moves_the_threshold(parts, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(parts / "run", run)
    r = invoke("threshold", run)
    assert r.exit_code == 0 and "quantile 0.99" in r.output
    r = invoke("threshold", run, "--target-fpr", 0.5)
    assert r.exit_code == 0, r.output
    stored = json.loads((run / "config.json").read_text())["anomaly"]
    assert stored["threshold_quantile"] == pytest.approx(0.5) and "quantile 0.5" in r.output
    r = invoke("threshold", run, "--quantile", 0.9, "--value", 3)
    assert r.exit_code == 2 and "at most one" in r.output
    n = len(stored["scores"])
    r = invoke("threshold", run, "--value", -5)  # below every score: not "quantile 0"
    words = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 0 and f"(fixed; {n} of {n} cross-fitted scores above)" in words, r.output
    assert "(quantile" not in words
    # from new normal images: the thresholds come from their scores, at the quantile given
    r = invoke("threshold", run, "--normal", parts / "test" / "normal", "--quantile", 0.5)
    words = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 0 and "4 new normal images" in words and "(quantile 0.5)" in words, r.output
    assert "which is rank ceil((n + 1) q) = 3 of the n = 4 new normal scores" in words, r.output
    r = invoke("threshold", run, "--normal", parts / "test" / "normal", "--quantile", 0.99)
    words = " ".join(r.output.replace("│", " ").split())
    assert "which is the largest of 4 new normal scores: too few for rank" in words, r.output
    assert json.loads((run / "config.json").read_text())["anomaly"]["source"] == "new normal"
    r = invoke("threshold", run, "--normal", parts / "test" / "normal", "--value", 3)
    assert r.exit_code == 2 and "give one of them" in r.output
    r = invoke("threshold", run, "--normal", parts / "train")
    assert r.exit_code == 2 and "trained on" in r.output


def test_the_threshold_table_says_which_score_the_threshold_is():
    """`vaekit threshold`'s table printed "threshold 0.88 (quantile 0.99)" beside "quantile 0.99
    0.35": the rule's and np.quantile's quantile under one name, with nothing to say that the
    threshold lay far past the largest of 15 scores. Now a row says which score it is."""
    from vaekit.anomaly.quantiles import threshold_of
    from vaekit_cli.threshold_cmd import which_score

    scores = [0.05 * i for i in range(1, 16)]  # 15 scores, the largest 0.75
    t = threshold_of(scores, 0.99)[0]
    assert t > 0.8
    text = which_score({"threshold_quantile": 0.99, "scores": scores, "threshold": t, "source": "new normal"})
    assert text.startswith("beyond the largest of 15 new normal scores (0.75)") and "--value" in text
    assert which_score({"threshold_quantile": 0.99, "scores": scores[:5], "threshold": threshold_of(scores[:5], 0.99)[0]}) \
        == "the largest of 5 calibration scores: too few for rank ceil((n + 1) q)"
    many = list(range(199))
    assert which_score({"threshold_quantile": 0.99, "scores": many, "threshold": threshold_of(many, 0.99)[0]}) \
        == "rank ceil((n + 1) q) = 198 of the n = 199 calibration scores"
    assert which_score({"threshold_quantile": 0.5, "scores": many, "threshold": 3.0, "fixed": True}) == ""
    # a score below zero (a Gaussian's -ELBO in nats): its rounding margin points up, not down
    low = [-7500.0, -7450.0, -7420.0, -7400.0, -7300.0]  # too few for a tail: the largest, a hair above
    assert which_score({"threshold_quantile": 0.99, "scores": low, "threshold": threshold_of(low, 0.99)[0]}) \
        == "the largest of 5 calibration scores: too few for rank ceil((n + 1) q)"
    low = [-7500.0 + i for i in range(20)]  # a tail past the largest
    assert which_score({"threshold_quantile": 0.99, "scores": low, "threshold": threshold_of(low, 0.99)[0]}) \
        .startswith("beyond the largest of 20 calibration scores (-7481.00)")


@pytest.mark.parametrize(
    "args, message",
    [
        (["anomaly-score", "{tmp}/nope", "{tmp}"], "Invalid value"),
        (["anomaly-score", "{tmp}", "{tmp}"], "run config not found"),  # a folder that is not a run
        (["anomaly-score", "{run}", "{tmp}/empty"], "no image files found"),
        (["anomaly-score", "{run}", "{tmp}/junk"], "no usable image"),
        (["anomaly-score", "{run}", "{tmp}/junk", "-o", "{tmp}/s.txt"], ".csv or .json"),  # checked before scoring
        (["anomaly-score", "{run}", "{normal}", "-o", "{tmp}/s.txt"], ".csv or .json"),
        (["anomaly-score", "{run}", "{normal}", "--score", "loss"], "loss"),
        (["evaluate", "{run}", "--normal", "{normal}", "--anomalous", "{tmp}/empty"], "no image files found"),
        (["evaluate", "{run}", "--normal", "{normal}", "--anomalous", "{normal}", "--masks", "{tmp}/empty"], "no mask"),
        (["threshold", "{run}", "--quantile", "1.5"], "in (0, 1), got 1.5"),
    ],
)
def test_mistakes_are_one_line_and_exit_code_2(parts, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("not an image")
    subs = {"tmp": tmp_path, "run": parts / "run", "normal": parts / "test" / "normal"}
    r = invoke(*[a.format(**subs) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_installed_executable_fails_the_pipeline_on_anomalies(parts, tmp_path):
    cmd = [EXE, "--threads", "1", "anomaly-score", str(parts / "run"), str(parts / "test" / "anomalous"),
           "-o", str(tmp_path / "s.json"), "--fail-on-anomaly", "--threshold", "-1e9"]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stderr
    assert json.loads((tmp_path / "s.json").read_text())["n_anomalous"] == 4


@pytest.mark.parametrize("flags", [("--iwae", "--samples", "4"), ("--samples", "3")])
def test_iwae_and_samples_score_excess_and_say_so_in_every_label(parts, tmp_path, flags):
    # the atypicality is calibrated at z = mu: other estimators score excess, in nats, and the
    # table, the file and the note all name it (issue 19: the labels said sd² over nats)
    out = tmp_path / "s.json"
    r = invoke("anomaly-score", parts / "run", parts / "test" / "normal", "-o", out, *flags)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # where rich wraps a line depends on the paths in it
    assert "excess scores" in text and "(nats; higher" in text and "sd²" not in text
    assert "note: " in text and "excess (nats)" in text
    assert ("IWAE" if "--iwae" in flags else "draws)") in text and "(z = μ)" not in text
    doc = json.loads(out.read_text())
    assert doc["score"] == "excess" and all(i["score"] == i["excess"] for i in doc["images"])


def test_evaluate_with_samples_names_the_score_it_measured(parts):
    r = invoke("evaluate", parts / "run", "--normal", parts / "test" / "normal", "--anomalous",
               parts / "test" / "anomalous", "--samples", "2", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["score"] == "excess"  # the JSON on stdout; why not atypicality, on stderr too
    assert "posterior draws" in json.loads(r.stdout)["note"] and "posterior draws" in r.stderr, r.stderr


def test_threshold_prints_the_unit_of_the_runs_score_and_the_rate_to_expect(parts):
    r = invoke("threshold", parts / "run")
    assert r.exit_code == 0, r.output
    assert "sd²" in r.output and "nats" not in r.output and "expected false positives" in r.output


def test_rates_print_as_plain_percentages():
    from vaekit.anomaly.threshold import percent

    assert [percent(r) for r in (0.0476, 0.0052, 0.0, 0.999, 1.0)] == ["4.8%", "0.52%", "0%", "100%", "100%"]


def test_thresholds_of_probabilities_print_with_the_digits_that_tell_them_apart():
    # `vaekit threshold --value 0.3185` printed "0.35 -> 0.32", and evaluate "best F1 (threshold 0.32)"
    # beside "F1 at threshold (threshold 0.32)" for 0.3163 and 0.3185: two decimals for every number
    from vaekit_cli.output import number

    assert (number(0.3185), number(0.31629), number(0.75)) == ("0.3185", "0.3163", "0.75")
    assert (number(110.314), number(0.0), number(-0.004), number(1e308)) == ("110.31", "0.00", "-0.004", "1e+308")
    assert number(2.5e-7) == "2.5e-07" and number(float("nan")) == "nan"


def test_a_csv_says_which_files_it_does_not_hold(parts, tmp_path):
    """A CSV has a row per scored image; a job that relied on it lost the unreadable files without a
    word beyond stderr's (h2). The line that names the CSV now counts them."""
    import shutil

    folder = tmp_path / "in"
    shutil.copytree(parts / "test" / "normal", folder)
    (folder / "broken.png").write_bytes(b"not an image")
    r = invoke("--threads", 1, "anomaly-score", parts / "run", folder, "-o", tmp_path / "s.csv")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "(score: atypicality, sd²); 1 file that could not be read, not in it (named above)" in text
    assert len(list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_text())))) == 4
    r = invoke("--threads", 1, "anomaly-score", parts / "run", folder, "-o", tmp_path / "s.json")
    assert "not in it" not in " ".join(r.output.split())  # JSON lists them under "skipped"
