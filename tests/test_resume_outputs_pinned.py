"""A resume keeps a finished batch's heat maps and reconstructions only when they are the job's own.

A job stopped after some batches, then another job (another model) writing over those batches'
heat maps or PNGs in the same folder (a second job with --overwrite, itself stopped early; the
folder reached through a link): the resume kept them, since it checked only that they exist, and
ended with exit 0 on a folder of two models' files beside one model's rows. Each journal line now
pins its batch's own files by their sha256 (journal format 7), and the resume checks them.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the CLI through Typer's runner.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cli_support import invoke, one_line_refusal
from export_support import random_job, stopped_job, stopped_reconstruct

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("pinned"), 24)


def test_a_finished_heat_map_written_over_since_the_stop_is_refused_not_kept(setup, tmp_path):
    run, data = setup
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    stopped_job(run, data, out, maps)
    taken = sorted(maps.iterdir())[1]
    taken.write_bytes(sorted(maps.iterdir())[0].read_bytes())  # another image's map, as another job would leave
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", "4", "--threshold", "0", "--maps", maps,
               "--resume")
    assert one_line_refusal(r) and taken.name in r.output and "other bytes" in r.output, r.output
    assert not out.exists() and Path(f"{out}.partial").exists()


def test_untouched_heat_maps_and_reconstructions_still_resume(setup, tmp_path):
    run, data = setup
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    stopped_job(run, data, out, maps)
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", "4", "--threshold", "0", "--maps", maps,
               "--resume")
    assert r.exit_code == 0 and out.exists(), r.output
    rec = tmp_path / "rec"
    stopped_reconstruct(run, data, rec, after=2)
    r = invoke("reconstruct", run, data, "-o", rec, "--batch-size", "4", "--resume")
    assert r.exit_code == 0 and not Path(f"{rec}.partial").exists(), r.output


def test_a_finished_reconstruction_written_over_since_the_stop_is_refused(setup, tmp_path):
    run, data = setup
    rec = tmp_path / "rec"
    stopped_reconstruct(run, data, rec, after=2)
    pngs = sorted(p for p in rec.iterdir() if p.suffix == ".png")
    shutil.copyfile(pngs[1], pngs[0])
    r = invoke("reconstruct", run, data, "-o", rec, "--batch-size", "4", "--resume")
    assert one_line_refusal(r) and pngs[0].name in r.output and "other bytes" in r.output, r.output


def test_an_output_folder_reached_through_a_link_has_the_folders_own_journal_and_lock(setup, tmp_path):
    """`reconstruct -o r2` with r2 -> r1 journaled to r2.partial and locked r2's, while writing into
    r1: a job on r1 and one on r2 did not exclude each other (13 of 37 files of one model's folder
    were the other's), and a resume through the other spelling did not find the journal."""
    from vaekit.stream.names import merging_path, partial_path, share_out

    run, data = setup
    real, link = tmp_path / "r1", tmp_path / "r2"
    real.mkdir()
    link.symlink_to(real, target_is_directory=True)
    assert partial_path(link) == partial_path(real) == tmp_path / "r1.partial"
    assert merging_path(link) == merging_path(real) and share_out(link, 0, 2) == share_out(real, 0, 2)
    stopped_reconstruct(run, data, real, after=2)
    r = invoke("reconstruct", run, data, "-o", link, "--batch-size", "4", "--resume")  # the other spelling
    assert r.exit_code == 0 and not (tmp_path / "r1.partial").exists(), r.output
    assert not (tmp_path / "r2.partial").exists()
    assert len([p for p in real.iterdir() if p.suffix == ".png"]) == 24 + 1  # and comparison.png


def test_a_resume_without_batch_size_goes_on_in_the_batches_its_journal_began_in(setup, tmp_path):
    """`anomaly-score --resume` and `reconstruct --resume` without --batch-size were refused
    ("batch_size 4 then, 64 now") where `encode --resume` took its journal's: the same command
    that started the job, less the option, now resumes it, and ends where an unbroken job does."""
    run, data = setup
    out, whole = tmp_path / "scores.csv", tmp_path / "whole.csv"
    stopped_job(run, data, out)
    r = invoke("anomaly-score", run, data, "-o", out, "--threshold", "0", "--resume")
    assert r.exit_code == 0 and not Path(f"{out}.partial").exists(), r.output
    assert invoke("anomaly-score", run, data, "-o", whole, "--threshold", "0", "--batch-size", "4").exit_code == 0
    assert out.read_bytes() == whole.read_bytes()
    rec = tmp_path / "rec"
    stopped_reconstruct(run, data, rec, after=2)
    r = invoke("reconstruct", run, data, "-o", rec, "--resume")
    assert r.exit_code == 0 and not Path(f"{rec}.partial").exists(), r.output
    r = invoke("anomaly-score", run, data, "-o", tmp_path / "new.csv", "--threshold", "0", "--resume")
    assert r.exit_code == 0, r.output  # nothing to resume: the job starts, in the default batches


def test_a_linked_output_folder_whose_own_folder_cannot_be_written_journals_beside_the_link(tmp_path, monkeypatch):
    """~/out -> /scratch/me with /scratch the system's: the journal cannot be made beside the real
    folder, so it stays beside the link, as before links to folders were followed (the job failed
    with "Permission denied" instead)."""
    import os

    from vaekit.stream import names

    scratch = tmp_path / "scratch"
    (scratch / "me").mkdir(parents=True)
    link = tmp_path / "home" / "out"
    link.parent.mkdir()
    link.symlink_to(scratch / "me", target_is_directory=True)
    assert names.partial_path(link) == scratch / "me.partial"
    real_access = os.access
    monkeypatch.setattr(names.os, "access", lambda p, mode: Path(p) != scratch and real_access(p, mode))
    assert names.partial_path(link) == link.parent / "out.partial"
