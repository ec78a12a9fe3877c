"""The nineteenth hostile round, on journals, shares and resume: a journal header hand-edited to a
batch size whose codes pass the bound on a journal line was taken as the job's own (the bound held
only for a batch size given now); a kill while a job wrote its journal's header left a file the
next run called "the rows of an unfinished job", though it held none; `codec.encode(chunk=True)`
coded one image a chunk, and `score_to_file(top=1.5)` ran, where bools and fractions are refused.

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
from typer.testing import CliRunner

import vaekit
from export_support import random_job
from vaekit.codes import encode_folder
from vaekit_cli.main import app

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("hostile19"), 12)


def invoke(*args):
    return CliRunner().invoke(app, ["--threads", "1", *map(str, args)], env={"COLUMNS": "300"})


def _one_line_exit_2(r) -> str:
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    return r.output


def _stopped_encode(run, data, out: Path, batch_size: int) -> Path:
    """OUT.partial of an encode stopped (Ctrl-C) in its second batch: its header and one batch."""
    model, calls = vaekit.load(run), []
    real = model.encode

    def stopped(x, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(x, *a, **kw)

    model.encode = stopped
    with pytest.raises(KeyboardInterrupt):
        encode_folder(model, data, out, batch_size=batch_size)
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
    text = _one_line_exit_2(invoke("encode", run, data, "-o", out, *given, "--resume"))
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
