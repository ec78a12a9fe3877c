"""A journal's lines are read with a bound: a hostile or damaged `OUT.partial` (or another share's
journal) holding a line of gigabytes is refused as damaged after as many bytes as vaekit ever
writes in one line (vaekit.stream.lines.line_limit), never pulled into memory whole.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the CLI through Typer's runner.
"""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from export_support import random_job, stopped_job
from vaekit.stream import lines as journal_lines
from vaekit_cli.main import app
from cli_support import one_line_refusal

torch.set_num_threads(1)
TOO_LONG = 3 << 20  # bytes: more than line_limit(4), checked below


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("bounds"), 16)  # batch size 4: 4 batches


def score(run, data, out, *extra):
    args = ["--threads", "1", "anomaly-score", run, data, "-o", out, "--batch-size", "4", "--threshold", "0", *extra]
    return CliRunner().invoke(app, list(map(str, args)), env={"COLUMNS": "300"})


def _too_long() -> bytes:
    """One line longer than any a job of batches of 4 writes (TOO_LONG), with no newline."""
    return b'{"batch": 1, "rows": [' + b" " * TOO_LONG


def test_the_line_limit_covers_what_vaekit_writes_and_stays_small_for_small_batches():
    assert journal_lines.line_limit(4) < TOO_LONG
    assert journal_lines.line_limit(64) >= 64 * 4 * 6 * 4095  # four escaped longest paths a file


def test_a_journal_line_longer_than_vaekit_writes_is_refused_not_read_whole(setup, tmp_path):
    # the last line had no newline: read whole (unbounded readline), then dropped as cut by a crash
    run, data = setup
    out = tmp_path / "scores.csv"
    journal = stopped_job(run, data, out, after=2)
    with open(journal, "ab") as f:
        f.write(_too_long())
    size = journal.stat().st_size
    r = score(run, data, out, "--resume")
    assert one_line_refusal(r) and "damaged at line 4" in r.output and "longer than" in r.output, r.output
    assert journal.stat().st_size == size and not out.exists()


def test_a_header_line_longer_than_vaekit_writes_is_refused(setup, tmp_path):
    run, data = setup
    out = tmp_path / "scores.csv"
    journal = tmp_path / "scores.csv.partial"
    journal.write_bytes(b'{"vaekit_journal": 3, "x": "' + b"a" * TOO_LONG + b'"}\n')
    r = score(run, data, out, "--resume")
    assert one_line_refusal(r) and "damaged at line 1" in r.output and "longer than" in r.output, r.output


def test_another_shares_journal_with_a_line_too_long_is_refused_at_the_merge(setup, tmp_path):
    run, data = setup
    out = tmp_path / "s.csv"
    assert score(run, data, out, "--shard", "1/2").exit_code == 0
    other = tmp_path / "s.csv.shard-1-of-2.partial"
    with open(other, "ab") as f:
        f.write(_too_long() + b"\n")
    r = score(run, data, out, "--shard", "0/2")
    assert one_line_refusal(r) and str(other.name) in r.output and "longer than" in r.output, r.output
    assert not out.exists()


def test_read_lines_takes_a_line_of_exactly_the_limit_and_refuses_one_byte_more(tmp_path):
    from vaekit.errors import DamagedFile
    from vaekit.stream.files import read_lines

    path = tmp_path / "j"
    path.write_bytes(b"a" * 9 + b"\n" + b"b" * 10 + b"\n")
    fd = os.open(path, os.O_RDONLY)
    try:
        lines = read_lines(fd, 10)
        assert next(lines) == (10, b"a" * 9 + b"\n")
        with pytest.raises(DamagedFile, match="longer than 10 bytes"):
            next(lines)
    finally:
        os.close(fd)


def test_a_job_naming_many_inputs_reads_its_own_long_header_back(setup, tmp_path):
    # the header lists every input named (a shell glob of thousands of files): with batches of 1
    # it is longer than 1 MiB + 256 KiB, and the job's own merge refused it as damaged
    run, data = setup
    out = tmp_path / "many.csv"
    for c in "ab":  # two links to their own folder: 400 names of one folder, 3.6 KB each (1.4 MB in all)
        (tmp_path / (c * 250)).symlink_to(".")
    (tmp_path / "images").symlink_to(data)
    roots = [tmp_path.joinpath(*("ab"[i >> k & 1] * 250 for k in range(14)), "images") for i in range(400)]
    args = ["--threads", "1", "anomaly-score", run, *roots, "-o", out, "--batch-size", "1", "--threshold", "0"]
    r = CliRunner().invoke(app, list(map(str, args)), env={"COLUMNS": "300"})
    assert r.exit_code == 0 and out.exists(), r.output
    assert len(out.read_text().splitlines()) == 17  # a header and the 16 images, each once


def test_an_encode_of_a_wide_latent_reads_back_its_own_journal(tmp_path, monkeypatch):
    # encode's rows hold each file's latent means in base64 (a 512 px grid model's: 0.7 MB a file,
    # over the 256 KiB a file the bound first allowed): the job refused its own journal as damaged
    # when it read it back to write the code file. Here the bound's parts are made small instead of
    # the latent huge; the means of a 512-dimensional latent still pass them only by row_bytes.
    from export_support import random_run

    monkeypatch.setattr(journal_lines, "MAX_HEADER_BYTES", 0)
    monkeypatch.setattr(journal_lines, "MAX_FILE_BYTES", 1024)
    _, data = random_job(tmp_path / "job", 8)
    run = random_run(tmp_path / "wide", image_size=16, channels=1, latent_dim=512, base_channels=4)
    args = ["--threads", "1", "encode", run, data, "-o", tmp_path / "c.codes", "--batch-size", "4"]
    r = CliRunner().invoke(app, list(map(str, args)), env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    from vaekit import codes

    assert codes.load(tmp_path / "c.codes").latents().shape == (8, 512)
