"""A resume after the inputs moved on disk but kept their bytes: the folder copied away and back
with `cp -a` (same names, sizes and modification times; new inodes and change times), or chmod-ed.
The journal's `sources` (inodes, change times) differ, so the finished batches' files are checked
against the sha256 each journal line holds: the same bytes resume to the uninterrupted file, and
a finished file whose bytes changed (same size and modification time) is still refused.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the CLI through Typer's runner.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from typer.testing import CliRunner

from export_support import random_job, stopped_job
from vaekit_cli.main import app

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("moved"), 24)  # batch size 4: 6 batches


@pytest.fixture
def data(setup, tmp_path):
    copy = tmp_path / "images"
    shutil.copytree(setup[1], copy)
    return copy


def score(run, data, out, *extra):
    args = ["--threads", "1", "anomaly-score", run, data, "-o", out, "--batch-size", "4", "--threshold", "0", *extra]
    return CliRunner().invoke(app, list(map(str, args)), env={"COLUMNS": "300"})


def cp_a_away_and_back(folder) -> None:
    """`cp -a images /elsewhere; mv images old; cp -a /elsewhere images`: other inodes and change
    times, the same bytes and modification times."""
    away, old = folder.with_name("away"), folder.with_name("old")
    shutil.copytree(folder, away, copy_function=shutil.copy2)
    before = {p.name: os.stat(p) for p in folder.iterdir()}
    folder.rename(old)  # kept while the copy is made: its inodes are not given out again
    shutil.copytree(away, folder, copy_function=shutil.copy2)
    after = {p.name: os.stat(p) for p in folder.iterdir()}
    shutil.rmtree(old)
    assert all(after[n].st_mtime_ns == s.st_mtime_ns and after[n].st_size == s.st_size for n, s in before.items())
    assert all(after[n].st_ino != s.st_ino for n, s in before.items())


@pytest.mark.parametrize("how", ["cp -a", "chmod"])
def test_inputs_with_the_same_bytes_resume_to_the_uninterrupted_file(setup, data, tmp_path, how):
    run, _ = setup
    assert score(run, data, tmp_path / "whole.csv").exit_code == 0  # its rows name this test's copy
    whole, out = (tmp_path / "whole.csv").read_bytes(), tmp_path / "scores.csv"
    stopped_job(run, data, out)
    if how == "cp -a":
        cp_a_away_and_back(data)
    else:
        for p in data.iterdir():
            os.chmod(p, 0o600)
    r = score(run, data, out, "--resume")
    assert r.exit_code == 0 and out.read_bytes() == whole, r.output


def test_a_finished_file_rewritten_with_its_size_and_time_after_cp_a_is_refused(setup, data, tmp_path):
    run, _ = setup
    out = tmp_path / "scores.csv"
    journal = stopped_job(run, data, out)  # 3 batches done: img000 to img011
    cp_a_away_and_back(data)
    victim = data / "img005.png"  # in batch 1, finished
    st, raw = victim.stat(), bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one byte of its pixels: the same size
    with open(victim, "r+b") as f:
        f.write(raw)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (victim.stat().st_size, victim.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    before = journal.read_bytes()
    r = score(run, data, out, "--resume")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "img005.png was replaced or rewritten" in r.output and "delete it to start again" in r.output, r.output
    assert journal.read_bytes() == before and not out.exists()


def test_each_journal_line_holds_the_sha256_of_its_files(setup, data, tmp_path):
    import hashlib

    run, _ = setup
    journal = stopped_job(run, data, tmp_path / "scores.csv")
    lines = journal.read_bytes().splitlines()[1:]
    first = json.loads(lines[0])
    names = sorted(data.iterdir())[:4]
    assert first["sha256"] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in names]


def test_a_format_3_journal_is_refused_saying_what_the_format_lacks():
    # format 3 lines do carry a checksum: the refusal said they carry none
    from vaekit.stream.batches import changed

    said = changed({"vaekit_journal": 3, "file_list": "aa"}, {"vaekit_journal": 4, "file_list": "aa", "sources": "bb"})
    assert len(said) == 1 and "another journal format" in said[0] and "sha256" in said[0], said


def test_a_large_skipped_files_bytes_are_not_read_for_the_journal(tmp_path, monkeypatch):
    # a file that is not an image may be gigabytes (a sparse terabyte named .png): it is skipped
    # at once, and hashing it for the journal line read it all (an 8 GB one: 2 s of job, 22 s).
    # Since journal format 6 a skipped file is pinned (a resume must not keep one mended since as
    # skipped): a small one by its bytes, one over SKIPPED_HASH_BYTES by its size and time, unread
    import os

    from vaekit.stream import batches
    from vaekit.stream.journals import Journal

    paths = [str(tmp_path / n) for n in ("a.png", "small.png", "huge.png")]
    for p in paths:
        open(p, "wb").write(b"not an image")
    os.truncate(paths[2], batches.SKIPPED_HASH_BYTES + 1)  # sparse: nothing written
    from vaekit.fileio import digests

    read, real = [], digests.file_sha256
    monkeypatch.setattr(digests, "file_sha256", lambda p: read.append(p) or real(p))
    j = Journal(tmp_path / "out.csv", {"job": "test"}, False, batches.Layout(paths, 3))
    j.append(0, [{}], [(paths[1], "not an image"), (paths[2], "not an image")])
    j.close()
    assert read == paths[:2]
    line = json.loads((tmp_path / "out.csv.partial").read_text().splitlines()[1])
    st = os.stat(paths[2])
    assert line["sha256"][1] == "skipped:" + hashlib.sha256(b"not an image").hexdigest(), line
    assert line["sha256"][2] == f"skipped:{st.st_size}:{st.st_mtime_ns}" and len(line["sha256"][0]) == 64, line
