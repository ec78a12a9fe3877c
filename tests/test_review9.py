"""Review of round 9 (journal checksums, inode/ctime pins, `once`, incremental share reads), and
the two items it left for `reconstruct`: a file named twice is reconstructed once, and a resume
whose finished PNGs were deleted is refused naming the first, not completed with holes.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the CLI through Typer's runner.
"""

from __future__ import annotations

import shutil

import pytest
import torch

import vaekit
from export_support import random_job, stopped_reconstruct
from vaekit.inference.reconstruct import reconstruct_to_folder
from cli_support import invoke, one_line_refusal

N_IMAGES = 24  # batch size 4: 6 batches

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("review9"), N_IMAGES)


@pytest.fixture
def data(setup, tmp_path):
    copy = tmp_path / "images"
    shutil.copytree(setup[1], copy)
    return copy


def test_reconstruct_reads_a_file_named_twice_once(setup, data, tmp_path):
    run, _ = setup
    named = [data / "img000.png", data, data / "img001.png"]
    report = reconstruct_to_folder(vaekit.load(run), named, tmp_path / "rec", batch_size=4)
    assert len(report.names) == N_IMAGES and len(set(report.written)) == N_IMAGES
    assert report.repeated == [str(data / "img000.png"), str(data / "img001.png")]
    assert sorted(p.name for p in (tmp_path / "rec").rglob("*.png")).count("img000.png") == 1


def test_a_reconstruct_resume_whose_finished_pngs_were_deleted_is_refused_naming_the_first(setup, data, tmp_path):
    run, _ = setup
    out = tmp_path / "rec"
    stopped_reconstruct(run, data, out, after=3)
    (out / "img005.png").unlink()  # batch 1's, finished
    (out / "img009.png").unlink()  # batch 2's
    before = sorted(p.name for p in out.iterdir())
    r = invoke("reconstruct", run, data, "-o", out, "--batch-size", "4", "--resume")
    assert one_line_refusal(r), r.output
    assert "img005.png" in r.output and "img009.png" not in r.output
    assert sorted(p.name for p in out.iterdir()) == before and (tmp_path / "rec.partial").exists()


def test_a_file_without_a_header_at_a_share_journal_that_owns_no_batch_is_neither_merged_nor_deleted(tmp_path):
    """4 images in one batch, 2 shares: share 1 owns no batch. A file at its journal's name
    that holds no complete header line is not its journal: share 0 waits for share 1, and the
    file stays (it was taken as complete, merged unchecked, and deleted)."""
    run, data = random_job(tmp_path, 4)
    out = tmp_path / "o.csv"
    notes = tmp_path / "o.csv.shard-1-of-2.partial"
    notes.write_text("my notes, no newline")
    r = invoke("anomaly-score", run, data, "-o", out, "--batch-size", "4", "--threshold", "0", "--shard", "0/2")
    assert r.exit_code == 0 and "waiting for 1" in r.output, r.output
    assert notes.read_text() == "my notes, no newline" and not out.exists()


def test_a_journal_line_changed_after_the_resume_read_it_is_damage_not_a_traceback(tmp_path):
    """Rows are read back from the file at the end of a job: a line edited after the resume's
    check must be refused as damage (it was a TypeError on the None of a failed checksum)."""
    from vaekit.errors import DamagedFile
    from vaekit.stream.journals import Journal

    out = tmp_path / "o.csv"
    j = Journal(out, {"job": "t"}, resume=False)
    j.append(0, [{"path": "a.png", "score": 1.0}])
    j.close()
    j = Journal(out, {"job": "t"}, resume=True)  # checked here
    path = j.path
    path.write_bytes(path.read_bytes().replace(b'"score": 1.0', b'"score": 9.0').replace(b'"score":1.0', b'"score":9.0'))
    with pytest.raises(DamagedFile, match="damaged at line 2: its checksum does not match"):
        list(j.rows())
    j.close()


def test_a_journal_of_another_format_is_refused_for_its_format_alone():
    """A format-2 header pinned no sources: its refusal also said an input was replaced."""
    from vaekit.stream.batches import changed

    said = changed({"vaekit_journal": 2, "file_list": "aa"}, {"vaekit_journal": 3, "file_list": "aa", "sources": "bb"})
    assert len(said) == 1 and "another journal format" in said[0], said


def test_a_full_disk_as_the_merge_lock_is_made_leaves_no_lock_and_says_so(tmp_path, monkeypatch):
    """os.write of the lock's marker failed with ENOSPC: the fd leaked, an empty OUT.merging stayed
    (every later merge refused it as not vaekit's) and the error blamed another user's merge."""
    import errno
    import os

    from vaekit.errors import CannotWrite
    from vaekit.stream import merge_lock as shares

    real = os.write

    def full(fd, data):
        if data == shares.LOCK_TEXT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(shares.os, "write", full)
    out = tmp_path / "s.csv"
    with pytest.raises(CannotWrite, match="s.csv.merging: No space left"):
        with shares.merge_lock(out):
            pass
    monkeypatch.undo()
    assert not (tmp_path / "s.csv.merging").exists()
    with shares.merge_lock(out) as mine:  # the next merge takes the lock
        assert mine
