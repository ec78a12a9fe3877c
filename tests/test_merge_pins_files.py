"""A merge holds another share's rows to the bytes they were scored from, as a resume does.

A share that finished and waits for the others was trusted at the merge on its file list alone
(names, sizes, modification times): a file of its batches replaced under the same name, size and
time (`touch -r old new; mv new old`, or rewritten in place and its time set back) before the last
share finished kept the old file's rows in OUT, exit 0, on the very machine whose own --resume of
that share refuses it. Now the files' inodes and change times (`sources`) are compared, and where
they differ the bytes decide: a chmod or a `cp -a` of the folder back to its place still merges.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from export_support import random_job
from cli_support import invoke, one_line_refusal
from test_hostile_resume9 import _replace, data, score  # noqa: F401 (data: a fixture, a copy of the images)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("mergepins"), 16)


@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_a_finished_shares_file_replaced_before_the_merge_is_refused(setup, data, tmp_path, how):
    run, _ = setup
    out = tmp_path / "s.csv"
    assert score(run, data, out, "--shard", "0/2").exit_code == 0
    _replace(data / "img001.png", how)  # batch 0: share 0's, finished
    r = score(run, data, out, "--shard", "1/2")
    assert one_line_refusal(r) and "img001.png" in r.output and "cannot merge share 0/2" in r.output, r.output
    assert not out.exists()


def test_a_finished_shares_skipped_file_that_reads_now_is_named_as_skipped(setup, data, tmp_path):
    """The merge said "its bytes differ, though its name, size and modification time are the same"
    of a file its share had skipped as unreadable and that now reads: say what happened."""
    run, _ = setup
    out, first = tmp_path / "s.csv", data / "img001.png"  # batch 0: share 0's
    st = os.stat(first)
    first.write_bytes(bytes(st.st_size))  # not an image: skipped
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = score(run, data, out, "--shard", "0/2")
    assert r.exit_code == 0 and "img001.png" in "".join(r.output.split()), r.output  # named as skipped (wrapped)
    _replace(first, "rewritten in place")  # an image now, under the same name, size and time
    r = score(run, data, out, "--shard", "1/2")
    assert one_line_refusal(r) and "cannot merge share 0/2" in r.output, r.output
    assert "img001.pngwasskippedwhenitsbatchwasread" in "".join(r.output.split()), r.output
    assert not out.exists()


def test_the_same_bytes_elsewhere_still_merge_as_one_run(setup, data, tmp_path):
    run, _ = setup
    out, whole = tmp_path / "s.csv", tmp_path / "whole.csv"
    assert score(run, data, whole).exit_code == 0
    assert score(run, data, out, "--shard", "0/2").exit_code == 0
    for p in data.iterdir():  # other change times, other inodes: the bytes decide
        os.chmod(p, 0o640)
    shutil.copytree(data, tmp_path / "moved", copy_function=shutil.copy2)
    shutil.rmtree(data)
    (tmp_path / "moved").rename(data)
    r = score(run, data, out, "--shard", "1/2")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("change", ["written over", "removed"])
def test_a_finished_shares_heat_map_changed_before_the_merge_is_refused(setup, data, tmp_path, change):
    # share 0/2's own --resume refuses this; the merge by share 1/2 wrote OUT beside another job's
    # heat map (or none), exit 0
    run, _ = setup
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    assert score(run, data, out, "--maps", maps, "--shard", "0/2").exit_code == 0
    first = sorted(maps.iterdir())[0]  # batch 0: share 0's
    if change == "removed":
        first.unlink()
    else:
        first.write_bytes(b"another job's map")
    r = score(run, data, out, "--maps", maps, "--shard", "1/2")
    assert one_line_refusal(r) and first.name in r.output and "cannot merge share 0/2" in r.output, r.output
    assert not out.exists()


def test_a_finished_shares_reconstruction_written_over_before_the_merge_is_refused(setup, data, tmp_path):
    run, _ = setup
    rec = tmp_path / "rec"
    assert invoke("reconstruct", run, data, "-o", rec, "--batch-size", "4", "--shard", "0/2").exit_code == 0
    first = sorted(p for p in rec.iterdir() if p.suffix == ".png")[0]
    shutil.copy(sorted(data.iterdir())[-1], first)  # a valid PNG, not the one share 0 wrote
    r = invoke("reconstruct", run, data, "-o", rec, "--batch-size", "4", "--shard", "1/2")
    assert one_line_refusal(r) and first.name in r.output and "cannot merge share 0/2" in r.output, r.output


def test_untouched_shares_with_maps_merge_as_one_run(setup, data, tmp_path):
    run, _ = setup
    out, maps, whole, whole_maps = tmp_path / "s.csv", tmp_path / "maps", tmp_path / "w.csv", tmp_path / "wmaps"
    assert score(run, data, whole, "--maps", whole_maps).exit_code == 0
    for s in ("0/2", "1/2"):
        assert score(run, data, out, "--maps", maps, "--shard", s).exit_code == 0
    assert out.read_bytes() == whole.read_bytes()
    assert {p.name: p.read_bytes() for p in maps.iterdir()} == {p.name: p.read_bytes() for p in whole_maps.iterdir()}


def test_a_share_that_saw_its_own_copy_merges_without_its_heat_maps_here(setup, data, tmp_path):
    """Shares on several machines, each reading its own copy of the files (other inodes: other
    `sources`) and writing its heat maps to its own disk: the merging machine has none of the other
    share's maps, and merged such shares before 2026-12-07. Their inputs are checked by content, as
    above; their maps, which may be on another disk, are not (h4's review)."""
    run, _ = setup
    out, maps, whole = tmp_path / "s.csv", tmp_path / "maps", tmp_path / "whole.csv"
    assert score(run, data, whole).exit_code == 0
    assert score(run, data, out, "--maps", tmp_path / "node0", "--shard", "0/2").exit_code == 0
    shutil.rmtree(tmp_path / "node0")  # that machine's disk, not this one's
    shutil.copytree(data, tmp_path / "moved", copy_function=shutil.copy2)  # this machine's copy
    shutil.rmtree(data)
    (tmp_path / "moved").rename(data)
    r = score(run, data, out, "--maps", tmp_path / "node0", "--shard", "1/2")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == whole.read_bytes()


def test_a_finished_share_run_again_is_not_called_an_unfinished_job(setup, data, tmp_path):
    """A share that finished keeps its journal for the merge; running it again without --resume said
    the file "holds an unfinished job" (h1, 2026-12-08)."""
    run, _ = setup
    out = tmp_path / "s.csv"
    assert score(run, data, out, "--shard", "0/2").exit_code == 0
    r = score(run, data, out, "--shard", "0/2")
    said = " ".join(r.output.split())
    assert one_line_refusal(r) and "holds the journal of an earlier run of a job" in said, r.output
    assert "a share's waits there for its merge" in said and "unfinished job" not in said, r.output



def test_a_resume_refused_for_other_settings_says_the_model_must_be_as_it_was(setup, data, tmp_path):
    """It said "use the same command", which a user whose run's threshold had moved since (`vaekit
    threshold`) had used (h4, 2026-12-08). Here the threshold is given, then another."""
    run, _ = setup
    out = tmp_path / "s.csv"
    assert score(run, data, out, "--shard", "0/2", "--threshold", "5").exit_code == 0
    r = score(run, data, out, "--shard", "0/2", "--threshold", "6", "--resume")
    said = " ".join(r.output.split())
    assert one_line_refusal(r) and "other settings (threshold" in said, r.output
    assert "use the same command, with the model as it was then" in said, r.output
