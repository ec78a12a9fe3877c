"""Edges of streaming jobs a helper's review found (2026-12-06): a row a journal may hold, output
folders spelled `.` or `..`, refused heat-map folders, batches whose journal lines a power cut
lost, temporary files a SIGKILL left.

Real components: an untrained model, noise PNGs in tmp_path, the CLI through Typer's runner.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_support import invoke, one_line_refusal
from export_support import random_job

torch.set_num_threads(1)


def test_a_code_row_holds_only_sizes_a_code_file_can_store():
    # a size of 2**31 passed the check and the code file's int32 array raised OverflowError (exit 3)
    from vaekit.codes.jobs import _row_check

    check = _row_check(["a.png"], 2)
    row = {"name": "a.png", "bytes": 10, "mu": base64.b64encode(np.zeros(2, "<f4").tobytes()).decode()}
    assert check({**row, "size": [(1 << 31) - 1, 5]}, 0) is None
    assert "is not [height, width]" in check({**row, "size": [1 << 31, 5]}, 0)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("edges"), 8)


@pytest.mark.parametrize("spelling", [".", ".."])
def test_reconstruct_into_a_folder_spelled_dot_or_dotdot_journals_beside_that_folder(job, tmp_path, monkeypatch, spelling):
    # `-o .` raised ValueError (Path('.').with_name: exit 3, "a bug in vaekit"); `-o ..` ran with a
    # journal named `...partial` in the current folder, where `-o ../NAME` would not find it
    from vaekit.stream.names import merging_path, partial_path, share_out

    run, data = job
    target = tmp_path / "rec"
    here = target / "inner" if spelling == ".." else target
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    assert partial_path(Path(spelling)) == tmp_path / "rec.partial" == partial_path(tmp_path / "rec")
    assert share_out(Path(spelling), 1, 2) == tmp_path / "rec.shard-1-of-2"
    assert merging_path(Path(spelling)) == tmp_path / "rec.merging"
    for share in ("0/2", "1/2"):  # the second merges: it raised ValueError naming OUT.merging
        r = invoke("reconstruct", run, data, "-o", spelling, "--batch-size", "4", "--shard", share)
        assert r.exit_code == 0, r.output
    expected = sorted([f"img{i:03d}.png" for i in range(8)] + ["comparison.png"])
    assert sorted(p.name for p in target.glob("*.png")) == expected
    assert not list(tmp_path.rglob("*partial*"))


def test_a_spelling_that_goes_up_through_a_link_journals_beside_the_folder_it_reaches(tmp_path, monkeypatch):
    # `lnk/..` with lnk -> real/sub is the folder real, not the folder holding lnk
    from vaekit.stream.names import merging_path, partial_path

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "lnk").symlink_to(tmp_path / "real" / "sub")
    monkeypatch.chdir(tmp_path / "here")
    assert partial_path(Path("lnk/..")) == tmp_path / "real.partial" == partial_path(tmp_path / "real")
    assert merging_path(Path("lnk/..")) == tmp_path / "real.merging"
    assert partial_path(Path("lnk/out.csv")) == tmp_path / "real" / "sub" / "out.csv.partial"  # where it is written


def test_a_name_below_a_link_and_dotdot_journals_where_the_system_writes_it(job, tmp_path, monkeypatch):
    # `-o L/../o.csv` (L -> other/sub) writes other/o.csv, but its journal and lock were ./o.csv.partial:
    # a resume spelled so took over the `-o o.csv` job's journal in ., and two jobs writing
    # other/o.csv at once (one spelled other/o.csv) were not told the output was in use
    import shutil

    from vaekit.stream.names import merging_path, partial_path

    run, data = job
    (tmp_path / "other" / "sub").mkdir(parents=True)
    (tmp_path / "L").symlink_to(tmp_path / "other" / "sub")
    monkeypatch.chdir(tmp_path)
    assert partial_path(Path("L/../o.csv")) == tmp_path / "other" / "o.csv.partial" == partial_path(Path("other/o.csv"))
    assert merging_path(Path("L/../o.csv")) == tmp_path / "other" / "o.csv.merging"
    from export_support import stopped_job

    journal = stopped_job(run, data, Path("o.csv"), after=1)  # the job of `-o o.csv`, here
    kept = journal.read_bytes()
    r = invoke("anomaly-score", run, data, "-o", "L/../o.csv", "--batch-size", "4", "--threshold", "0", "--resume")
    assert r.exit_code == 0, r.output  # nothing of its own to resume: it scores everything, and takes no other journal
    assert (tmp_path / "other" / "o.csv").exists() and journal.read_bytes() == kept
    shutil.copy(journal, tmp_path / "other" / "o.csv.partial")  # now it is that output's journal
    (tmp_path / "other" / "o.csv").unlink()
    r = invoke("anomaly-score", run, data, "-o", "L/../o.csv", "--batch-size", "4", "--threshold", "0", "--resume")
    assert r.exit_code == 0 and not (tmp_path / "other" / "o.csv.partial").exists(), r.output


def test_a_file_skipped_when_its_batch_was_scored_and_mended_since_does_not_resume_as_skipped(job, tmp_path):
    # a resume whose `sources` differ re-reads the finished batches' files, but not those they
    # skipped: a damaged file put back whole (same name, size and time) stayed "skipped" (exit 0),
    # one row short of an uninterrupted run's file
    import os
    import shutil

    from export_support import stopped_job

    run, data = job
    folder = tmp_path / "images"
    shutil.copytree(data, folder)
    victim = folder / "img001.png"
    good, st = victim.read_bytes(), victim.stat()
    victim.write_bytes(bytes(len(good)))  # not an image: skipped in batch 0
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = tmp_path / "o.csv"
    journal = stopped_job(run, folder, out, after=1)
    assert "img001.png" in journal.read_text() and "not an image" in journal.read_text()
    victim.write_bytes(good)  # mended: the same size and modification time as the damaged file
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = invoke("anomaly-score", run, folder, "-o", out, "--batch-size", "4", "--threshold", "0", "--resume")
    assert one_line_refusal(r) and "img001.png was skipped" in r.output and "has changed since" in r.output, r.output
    assert not out.exists() and journal.exists()


def test_the_root_folder_is_refused_as_an_output_in_one_line(job):
    run, data = job
    r = invoke("reconstruct", run, data, "-o", "/", "--batch-size", "4")
    assert one_line_refusal(r) and "root folder" in r.output, r.output


@pytest.mark.parametrize("where", ["under_a_file", "dangling_link", "unmakeable"])
def test_a_refused_maps_folder_leaves_no_journal_to_block_the_next_run(job, tmp_path, where, monkeypatch):
    # each refusal left OUT.partial holding only its header; the next run was told to --resume,
    # and --resume was refused for another maps folder: the user had to delete it by hand
    run, data = job
    out = tmp_path / "scores.csv"
    if where == "under_a_file":
        (tmp_path / "afile").write_text("mine")
        maps = tmp_path / "afile" / "m"
    elif where == "dangling_link":
        maps = tmp_path / "dang"
        maps.symlink_to(tmp_path / "nowhere" / "dir")
    else:  # the checks pass, and making the folder fails at the first batch (as in /proc)
        maps = tmp_path / "maps"
        real_mkdir = Path.mkdir

        def failing(self, *a, **k):
            if self == maps:
                raise PermissionError(13, "Permission denied", str(self))
            return real_mkdir(self, *a, **k)

        monkeypatch.setattr(Path, "mkdir", failing)
    r = invoke("anomaly-score", run, data, "-o", out, "--maps", maps, "--batch-size", "4", "--threshold", "0")
    assert one_line_refusal(r), r.output
    assert not list(tmp_path.glob("*.partial")) and not out.exists()
    monkeypatch.undo()
    r = invoke("anomaly-score", run, data, "-o", out, "--maps", tmp_path / "good", "--batch-size", "4", "--threshold", "0")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "good").glob("*.png"))) == 8


def test_a_batchs_own_files_are_written_only_once_the_lines_before_them_are_on_disk(tmp_path, monkeypatch):
    # lines were synced every 2 s while each heat map was synced as written: after a power cut
    # several batches' maps outlived their lines, and --resume refused them as files in the way
    import os

    from vaekit.stream import journals

    events = []
    real_fsync = os.fsync
    monkeypatch.setattr(journals.os, "fsync", lambda fd: events.append("sync") or real_fsync(fd))
    journal = journals.Journal(tmp_path / "out.csv", {"job": "test"}, resume=False)
    try:
        for batch in range(3):
            with journal.writing(tmp_path):
                events.append(f"files {batch}")
            journal.append(batch, [{"row": batch}])
            events.append(f"line {batch}")
    finally:
        journal.close()
    for batch in (1, 2):  # the line before each batch's files synced between the two
        assert "sync" in events[events.index(f"line {batch - 1}"):events.index(f"files {batch}")], events


def test_a_process_killed_while_it_writes_a_file_leaves_no_temporary_file(tmp_path):
    # a SIGKILL in the middle of a heat map, a PNG or a CSV left `.NAME.<random>.tmp` beside it, which
    # no later run removed: the bytes now go to a file without a name until they are complete
    import signal
    import subprocess
    import sys

    (tmp_path / "old.png").write_bytes(b"old")
    script = ("import os, signal, sys\nfrom vaekit.fileio import atomic_writer\n"
              "with atomic_writer(sys.argv[1]) as f:\n    f.write(b'half' * 1000)\n    f.flush()\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "old.png")], capture_output=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"] and (tmp_path / "old.png").read_bytes() == b"old"


def test_a_write_still_lands_where_the_folder_cannot_be_opened_to_link_into(tmp_path, monkeypatch):
    # in a folder the process may write in but not list (mode 0733), opening it O_RDONLY to link
    # the finished file failed, and every write there (a CSV, heat maps) was "Permission denied"
    import errno
    import os

    from vaekit.fileio import atomic

    real_open = os.open

    unnamed = getattr(os, "O_TMPFILE", 0)

    def no_folder(path, flags, *a, **k):  # the folder may hold a new unnamed file, but not be opened itself
        if os.fspath(path) == os.fspath(tmp_path) and not (unnamed and flags & unnamed == unnamed):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(atomic.os, "open", no_folder)
    atomic.atomic_write_bytes(tmp_path / "scores.csv", b"rows\n")
    monkeypatch.undo()
    assert (tmp_path / "scores.csv").read_bytes() == b"rows\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv"]
