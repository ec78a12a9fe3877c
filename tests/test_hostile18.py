"""The eighteenth hostile round, on journals, shares and resume: a file name holding a carriage
return split its CSV row in two (csv quotes a cell with the line end, "\\n", but not one with "\\r",
which every CSV reader takes for a line end too); an OUT.partial that was a hard link of a user's
empty file was taken for a journal, and the user's file filled with the job's rows; encode shares
of other --precision values merged at the last one's; a job whose journal was moved away while it
ran exited 0 without OUT; `--maps` at the output's (or its journal's) name was taken as a folder."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest
import torch

from export_support import acting_model, interrupt, random_job
from vaekit.anomaly import rows_csv
from cli_support import invoke, one_line_exit_2

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("hostile18"), 6)


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


# --- 2. a journal that is a hard link of another file is not written ---------------------------

def test_an_output_partial_hard_linked_to_a_users_empty_file_is_refused_and_left_empty(setup, tmp_path):
    run, data = setup
    notes, out = tmp_path / "notes.txt", tmp_path / "s.csv"
    notes.write_bytes(b"")
    Path(f"{out}.partial").hardlink_to(notes)
    for resume in ([], ["--resume"]):
        r = invoke("anomaly-score", run, data, "-o", out, "--score", "recon", *resume)
        assert "hard link" in one_line_exit_2(r)
        assert notes.read_bytes() == b"" and Path(f"{out}.partial").exists() and not out.exists()


def test_a_copy_of_the_journal_made_with_ln_is_not_appended_to(setup, tmp_path):
    """`ln OUT.partial backup` before a resume: the backup is the same file, which the resume would
    have finished and deleted under its other name, leaving the backup grown."""
    from export_support import stopped_job

    run, data = setup
    out = tmp_path / "s.csv"
    journal = stopped_job(run, data, out, after=1)
    backup = tmp_path / "backup"
    backup.hardlink_to(journal)
    before = backup.read_bytes()
    r = invoke("anomaly-score", run, data, "-o", out, "--threshold", "0", "--batch-size", "4", "--resume")
    assert "hard link" in one_line_exit_2(r)
    assert backup.read_bytes() == before and not out.exists()
    backup.unlink()
    r = invoke("anomaly-score", run, data, "-o", out, "--threshold", "0", "--batch-size", "4", "--resume")
    assert r.exit_code == 0 and out.exists(), r.output


# --- 3. encode shares asked for other precisions are another job --------------------------------

def test_encode_shares_of_other_precisions_are_not_merged_at_the_last_ones(setup, tmp_path):
    """Share 0 with --precision f32, share 1 with q8: the merge wrote every code at q8, the
    precision of whichever share finished last; it is refused now, naming the precision."""
    run, data = setup
    out = tmp_path / "c.codes"
    r = invoke("encode", run, data, "-o", out, "--batch-size", "2", "--shard", "0/2", "--precision", "f32")
    assert r.exit_code == 0 and not out.exists(), r.output
    r = invoke("encode", run, data, "-o", out, "--batch-size", "2", "--shard", "1/2", "--precision", "q8")
    assert "precision 'f32' then, 'q8' now" in one_line_exit_2(r) and not out.exists()
    r = invoke("encode", run, data, "-o", out, "--batch-size", "2", "--shard", "1/2", "--precision", "f32")
    assert r.exit_code == 0 and out.exists(), r.output
    whole = tmp_path / "whole.codes"
    r = invoke("encode", run, data, "-o", whole, "--batch-size", "2", "--precision", "f32")
    assert r.exit_code == 0 and out.read_bytes() == whole.read_bytes(), r.output


def test_an_unsharded_encode_resume_may_still_change_the_precision(setup, tmp_path):
    from vaekit.codes import encode_folder

    run, data = setup
    out = tmp_path / "c.codes"
    model = acting_model(run, "encode", 2, interrupt)
    with pytest.raises(KeyboardInterrupt):
        encode_folder(model, data, out, precision="q8", batch_size=2)
    assert Path(f"{out}.partial").exists()
    r = invoke("encode", run, data, "-o", out, "--batch-size", "2", "--precision", "f16", "--resume")
    assert r.exit_code == 0, r.output
    whole = tmp_path / "whole.codes"
    assert invoke("encode", run, data, "-o", whole, "--batch-size", "2", "--precision", "f16").exit_code == 0
    assert out.read_bytes() == whole.read_bytes()


# --- 4. a journal moved away while its job ran is an error, not an exit 0 without OUT ----------

def test_a_journal_moved_away_while_the_job_ran_is_an_error_and_the_resume_finishes(setup, tmp_path):
    """The job wrote every batch into the file it holds open, then found no journal at its name to
    merge: it said "share 0/1 scored; OUT is written when every share has finished" and exited 0
    without OUT. It is InUse (exit 2) naming the journal; put back, the resume writes OUT."""
    from vaekit import anomaly
    from vaekit.errors import InUse

    run, data = setup
    out, moved = tmp_path / "s.csv", tmp_path / "moved"
    journal = Path(f"{out}.partial")
    model = acting_model(run, "score", 2, lambda: journal.rename(moved))
    with pytest.raises(InUse, match="was moved, removed or replaced while this job ran"):
        anomaly.score_to_file(model, data, out, threshold=0.0, batch_size=4)
    assert not out.exists() and not journal.exists() and moved.exists()
    moved.rename(journal)
    r = invoke("anomaly-score", run, data, "-o", out, "--threshold", "0", "--batch-size", "4", "--resume")
    assert r.exit_code == 0, r.output
    whole = tmp_path / "whole.csv"
    assert invoke("anomaly-score", run, data, "-o", whole, "--threshold", "0", "--batch-size", "4").exit_code == 0
    assert out.read_bytes() == whole.read_bytes() and not journal.exists()


def test_an_encode_whose_journal_was_removed_while_it_ran_exits_2(setup, tmp_path):
    from vaekit.codes import encode_folder
    from vaekit.errors import InUse

    run, data = setup
    out = tmp_path / "c.codes"
    model = acting_model(run, "encode", 2, Path(f"{out}.partial").unlink)
    with pytest.raises(InUse, match="c.codes.partial was moved, removed or replaced"):
        encode_folder(model, data, out, batch_size=2)
    assert not out.exists()


# --- 5. a heat-map folder at the output's or its journal's name is refused before any work -------

@pytest.mark.parametrize("suffix", ["", ".partial", ".shard-0-of-2.partial", ".merging"])
def test_maps_at_the_outputs_or_its_journals_name_is_refused_before_any_work(setup, tmp_path, suffix):
    """`-o s.csv --maps s.csv` made the folder s.csv, scored and drew every file, then could not
    write OUT over its own folder ("appeared while this job ran"); `--maps s.csv.partial` left a
    journal of a job that never began. Both are refused first, leaving nothing."""
    run, data = setup
    out = tmp_path / "s.csv"
    r = invoke("anomaly-score", run, data, "-o", out, "--score", "recon", "--maps", f"{out}{suffix}")
    assert "heat maps a folder of their own" in one_line_exit_2(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_maps_beside_the_output_under_another_name_still_works(setup, tmp_path):
    run, data = setup
    out = tmp_path / "s.csv"
    r = invoke("anomaly-score", run, data, "-o", out, "--score", "recon", "--maps", tmp_path / "s.csv.maps")
    assert r.exit_code == 0 and out.is_file() and len(list((tmp_path / "s.csv.maps").iterdir())) == 6, r.output


def test_an_explicit_share_whose_journal_was_moved_while_it_ran_exits_2(setup, tmp_path):
    """Share 0 of 2 (share 1 done first) found no journal at its name when it finished: it listed
    itself as pending ("waiting for 0"), counted 0 of 0 images and exited 0; OUT could never be
    written. It is InUse naming the journal, as unsharded; put back, the resume merges OUT."""
    from vaekit import anomaly
    from vaekit.errors import InUse

    run, data = setup
    out, moved = tmp_path / "s.csv", tmp_path / "moved"
    journal = Path(f"{out}.shard-0-of-2.partial")
    args = ("anomaly-score", run, data, "-o", out, "--threshold", "0", "--batch-size", "2")
    r = invoke(*args, "--shard", "1/2")
    assert r.exit_code == 0 and "waiting for 0" in r.output, r.output
    model = acting_model(run, "score", 1, lambda: journal.rename(moved))
    with pytest.raises(InUse, match="shard-0-of-2.partial was moved, removed or replaced while this job ran"):
        anomaly.score_to_file(model, data, out, threshold=0.0, batch_size=2, shard=(0, 2))
    assert not out.exists() and moved.exists()
    moved.rename(journal)
    r = invoke(*args, "--shard", "0/2", "--resume")
    assert r.exit_code == 0 and out.exists(), r.output
    whole = tmp_path / "whole.csv"
    assert invoke("anomaly-score", run, data, "-o", whole, "--threshold", "0", "--batch-size", "2").exit_code == 0
    assert out.read_bytes() == whole.read_bytes()


def test_an_older_output_is_not_taken_for_another_shares_merge(setup, tmp_path):
    """With an OUT from before (--overwrite) and no other share's journal yet, a share whose own
    journal was moved took the old OUT for a merge another share had made: exit 0, OUT unchanged."""
    from vaekit import anomaly
    from vaekit.errors import InUse

    run, data = setup
    out, moved = tmp_path / "s.csv", tmp_path / "moved"
    out.write_text("an older output\n")
    journal = Path(f"{out}.shard-0-of-2.partial")
    model = acting_model(run, "score", 1, lambda: journal.rename(moved))
    with pytest.raises(InUse, match="shard-0-of-2.partial was moved, removed or replaced while this job ran"):
        anomaly.score_to_file(model, data, out, threshold=0.0, batch_size=2, shard=(0, 2), overwrite=True)
    assert out.read_text() == "an older output\n"


def test_a_share_whose_rows_another_share_just_merged_does_not_wait_for_itself(setup, tmp_path, monkeypatch):
    """Share 0 saw its journal complete; share 1 then merged every journal and removed them before
    share 0 listed the pending shares: it said "waiting for 0, 1" while OUT was written."""
    import vaekit
    from vaekit import anomaly
    from vaekit.stream.shares import Shares

    run, data = setup
    out = tmp_path / "s.csv"
    real, merged = Shares.pending, []

    def pending(self):
        if self.layout.index == 0 and not merged:  # share 1 runs to its end here, and merges
            merged.append(anomaly.score_to_file(vaekit.load(run), data, out, threshold=0.0, batch_size=2, shard=(1, 2)))
        return real(self)

    monkeypatch.setattr(Shares, "pending", pending)
    mine = anomaly.score_to_file(vaekit.load(run), data, out, threshold=0.0, batch_size=2, shard=(0, 2))
    assert merged[0].merged and out.exists() and not mine.merged and mine.pending == []
