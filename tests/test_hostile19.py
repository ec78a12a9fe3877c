"""The nineteenth hostile round, on journals, shares and resume: a journal header hand-edited to a
batch size whose codes pass the bound on a journal line was taken as the job's own (the bound held
only for a batch size given now); a kill while a job wrote its journal's header left a file the
next run called "the rows of an unfinished job", though it held none; `codec.encode(chunk=True)`
coded one image a chunk, and `score_to_file(top=1.5)` ran, where bools and fractions are refused;
`--shard 0/1_0` ran as share 0 of 10 (int() reads underscores and any script's digits); a share's
journal replaced between two passes of a code file's merge gave a file corrupt from birth.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the library's jobs and the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vaekit
from cli_support import invoke, one_line_exit_2
from export_support import acting_model, interrupt, random_job
from vaekit.codes import encode_folder

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("hostile19"), 12)


def _stopped_encode(run, data, out: Path, batch_size: int) -> Path:
    """OUT.partial of an encode stopped (Ctrl-C) in its second batch: its header and one batch."""
    with pytest.raises(KeyboardInterrupt):
        encode_folder(acting_model(run, "encode", 2, interrupt), data, out, batch_size=batch_size)
    return Path(f"{out}.partial")


# --- 1. a journal header's batch size cannot lift the bound on a journal line -----------------

@pytest.mark.parametrize("given", [[], ["--batch-size", 6]])
def test_a_header_edited_to_a_batch_past_the_line_bound_is_a_damaged_journal(setup, tmp_path, monkeypatch, given):
    """The header said batch size 6 where five codes fit in a line: `encode --resume` took it (the
    bound held only for a batch size given now) and journaled lines past the bound; a 4096 there
    on a 512 px grid model asks for 4.3 GB lines. Now: damaged, one line, the journal left as is."""
    from vaekit.codes import batch_size as batches

    run, data = setup
    out = tmp_path / "a.codes"
    journal = _stopped_encode(run, data, out, batch_size=4)
    header = json.loads(journal.read_bytes().splitlines()[0])
    journal.write_text(json.dumps({**header, "batch_size": 6}) + "\n")  # the header alone, edited
    before = journal.read_bytes()
    monkeypatch.setattr(batches, "LINE_CODE_BYTES", 5 * batches.mu_bytes(vaekit.load(run).info.latent_dim) + 1)
    text = one_line_exit_2(invoke("encode", run, data, "-o", out, *given, "--resume"))
    assert "damaged or edited" in text and "batch size 6" in text and "MiB" in text, text
    assert journal.read_bytes() == before and not out.exists()


def test_a_journal_within_the_bound_still_resumes_in_its_own_batches(setup, tmp_path, monkeypatch):
    from vaekit.codes import batch_size as batches

    run, data = setup
    out = tmp_path / "a.codes"
    _stopped_encode(run, data, out, batch_size=5)
    monkeypatch.setattr(batches, "LINE_CODE_BYTES", 5 * batches.mu_bytes(vaekit.load(run).info.latent_dim) + 1)
    monkeypatch.setattr(batches, "BATCH_SIZE", 3)  # another default now: the resume goes on in fives
    r = invoke("encode", run, data, "-o", out, "--resume")
    assert r.exit_code == 0, r.output
    monkeypatch.undo()
    encode_folder(vaekit.load(run), data, tmp_path / "ref.codes", batch_size=5)
    assert out.read_bytes() == (tmp_path / "ref.codes").read_bytes()


# --- 2. a kill while the journal's header is written -------------------------------------------

_KILLED_IN_HEADER = """
import os, signal, sys
from vaekit.stream import journals
real = journals.Journal._write
def cut(self, data):
    if data.startswith(b'{"vaekit_journal": '):  # the header: half of it, then the kill
        os.write(self._fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, data)
journals.Journal._write = cut
from vaekit_cli.main import main
sys.argv = ["vaekit", *sys.argv[1:]]
main()
"""


def _killed_in_header(tmp_path: Path, *args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", _KILLED_IN_HEADER, "--threads", "1", *map(str, args)],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == -9, r.stderr


@pytest.mark.slow  # kills a fresh `vaekit` process (torch and all) as it writes the header
@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_journal_whose_header_a_kill_cut_short_is_begun_again(setup, tmp_path, resume):
    """It held no work, and the next run said it "holds the rows of an unfinished job: pass
    --resume". It is vaekit's by its first bytes and holds no batch: begun again, with or without --resume."""
    run, data = setup
    out = tmp_path / "s.csv"
    _killed_in_header(tmp_path, "anomaly-score", run, data, "-o", out, "--threshold", "0", "--batch-size", 4)
    journal = Path(f"{out}.partial").read_bytes()
    assert journal.startswith(b'{"vaekit_journal": ') and b"\n" not in journal and not out.exists()
    r = invoke("anomaly-score", run, data, "-o", out, "--threshold", "0", "--batch-size", 4, *resume)
    assert r.exit_code == 0, r.output
    assert invoke("anomaly-score", run, data, "-o", tmp_path / "whole.csv", "--threshold", "0",
                  "--batch-size", 4).exit_code == 0
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert not Path(f"{out}.partial").exists()


@pytest.mark.parametrize("start", [b"{", b'{"vaekit'])
def test_a_few_bytes_that_only_may_begin_a_header_are_begun_again_only_on_resume(setup, tmp_path, start):
    """So few bytes vaekit cannot tell from a file of the user's: without --resume the message is
    true now (it said "the rows of an unfinished job") and the file stays; --resume says it is the job's."""
    run, data = setup
    out = tmp_path / "s.csv"
    Path(f"{out}.partial").write_bytes(start)
    text = one_line_exit_2(invoke("anomaly-score", run, data, "-o", out, "--threshold", "0", "--batch-size", 4))
    assert "start of a journal's header and no work" in text and "unfinished job" not in text, text
    assert Path(f"{out}.partial").read_bytes() == start and not out.exists()
    r = invoke("anomaly-score", run, data, "-o", out, "--threshold", "0", "--batch-size", 4, "--resume")
    assert r.exit_code == 0, r.output
    assert out.exists() and not Path(f"{out}.partial").exists()


# --- 3. a bool or a fraction is no count ---------------------------------------------------------

def test_codec_encode_refuses_a_bool_chunk(setup, tmp_path):
    from vaekit import codec
    from vaekit.errors import BadInput

    run, data = setup
    model = vaekit.load(run)
    for chunk in (True, False, 2.0, "4"):
        with pytest.raises(BadInput, match="chunk must be an integer"):
            codec.encode(model, data, tmp_path / "x.vkc", lossless=True, chunk=chunk)
    assert not list(tmp_path.iterdir())


def test_score_to_file_refuses_a_top_that_is_no_count(setup, tmp_path):
    from vaekit import anomaly
    from vaekit.errors import BadInput

    run, data = setup
    model = vaekit.load(run)
    for top in (True, 1.5, -1, "3"):
        with pytest.raises(BadInput, match="top must be an integer"):
            anomaly.score_to_file(model, data, tmp_path / "s.csv", threshold=0.0, top=top)
    assert not list(tmp_path.iterdir())
    report = anomaly.score_to_file(model, data, tmp_path / "s.csv", threshold=0.0, top=3)
    assert len(report.top) == 3


# --- 4. a shard or a rank is written in ASCII digits -------------------------------------------

@pytest.mark.parametrize("text", ["0/1_0", "\u0660/\u0662", "0/+2", "0/2.0"])
def test_a_shard_int_reads_but_no_one_writes_is_refused(setup, tmp_path, text):
    """int() read "0/1_0" as share 0 of 10 and Arabic-Indic digits as 0/2: the job ran as a share."""
    run, data = setup
    text_out = one_line_exit_2(invoke("anomaly-score", run, data, "-o", tmp_path / "s.csv", "--threshold", "0",
                                       "--shard", text))
    assert "invalid shard" in text_out
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("rank, world", [("0", "0"), ("0", "-3"), ("1_0", "20"), ("1", "2_0")])
def test_a_rank_or_world_size_no_launcher_sets_is_refused(setup, tmp_path, monkeypatch, rank, world):
    """WORLD_SIZE 0 or -3 ran as one process, "1_0" as rank 10 and "2_0" as 20 processes (rank 0 of them
    waited for ever for 19 ranks no one started)."""
    run, data = setup
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    text = one_line_exit_2(invoke("anomaly-score", run, data, "-o", tmp_path / "s.csv", "--threshold", "0"))
    assert "WORLD_SIZE" in text
    assert not list(tmp_path.iterdir())


# --- 5. a merge reads only the journals it found complete --------------------------------------

def test_a_share_journal_replaced_between_two_passes_of_the_merge_is_not_merged(setup, tmp_path, monkeypatch):
    """A code file's merge reads every share's journal four times (names, q8 range, checksum,
    bytes), each pass opening it anew: a journal replaced between two passes by another of the same
    job (its share run again elsewhere, with other floats) was read as well, and the file written
    held one journal's checksum over the other's codes: corrupt from birth. Now: damaged, no OUT."""
    from vaekit.codes import load
    from vaekit.stream import shares as shares_mod

    run, data = setup
    out, other = tmp_path / "a" / "x.codes", tmp_path / "b" / "x.codes"
    model = vaekit.load(run)
    encode_folder(model, data, out, batch_size=4, shard=(1, 2))
    real = model.encode
    monkeypatch.setattr(model, "encode", lambda x, *a, **kw: tuple(v + 1 for v in real(x, *a, **kw)))
    encode_folder(model, data, other, batch_size=4, shard=(1, 2))  # the same job's journal, other codes
    monkeypatch.setattr(model, "encode", real)
    journal = Path(f"{out}.shard-1-of-2.partial")
    passes, merged = [], shares_mod.Shares.merged

    def swapping(self):
        passes.append(1)
        if len(passes) == 4:  # before the bytes: the checksum was of the first journal's codes
            os.replace(f"{other}.shard-1-of-2.partial", journal)
        return merged(self)

    monkeypatch.setattr(shares_mod.Shares, "merged", swapping)
    with pytest.raises(vaekit.errors.DamagedFile, match="removed or replaced while it was being merged"):
        encode_folder(model, data, out, batch_size=4, shard=(0, 2))
    assert not out.exists() and journal.exists()
    monkeypatch.setattr(shares_mod.Shares, "merged", merged)
    report = encode_folder(model, data, out, batch_size=4, shard=(0, 2), resume=True)
    assert report.merged and len(load(out).names) == 12
