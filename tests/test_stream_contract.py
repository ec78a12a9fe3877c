"""The journal as the contract of a streaming job (issue 21, items 1, 2, 5-9): resume and shard
merges reproduce the uninterrupted file or refuse with exit 2 naming what differs; journals that
were tampered with, or are not files, are refused without a traceback or a hang.

Real components throughout: an untrained 16 px model, PNGs in tmp_path, the CLI through Typer's
runner, and the installed `vaekit` in a subprocess where a hang is the failure to catch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaekit
from export_support import random_run, stopped_job as stopped
from hostile import flat, tree
from vaekit import codes
from cli_support import invoke

N_IMAGES = 30  # batch size 4: 8 batches, the last one short
EXE = shutil.which("vaekit", path=str(Path(sys.executable).parent)) or "vaekit"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    run_a = random_run(root / "runA", image_size=16, channels=1, latent_dim=4, base_channels=4)
    run_b = random_run(root / "runB", image_size=16, channels=1, latent_dim=4, base_channels=8)
    data = root / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (16, 16 + i % 3), np.uint8)).save(data / f"img{i:03d}.png")
    (data / "img007.png").write_bytes(b"not a png")  # a skipped file in the second batch
    return run_a, run_b, data


def said(r, text: str) -> bool:
    """Whether the command printed `text` (rich may wrap a long line anywhere)."""
    return flat(text) in flat(r.output)


def score(run, data, out, *extra):
    return invoke("anomaly-score", run, data, "-o", out, "--batch-size", "4", "--threshold", "0", *extra)


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    run_a, _, data = setup
    out = tmp_path_factory.mktemp("ref") / "scores.csv"
    assert score(run_a, data, out).exit_code == 0
    return out.read_bytes()


def stopped_job(run, data, out, maps=None, after: int = 3) -> None:
    """An anomaly-score job stopped (Ctrl-C) in its batch `after` + 1: OUT.partial holds `after` batches."""
    assert stopped(run, data, out, maps, after).exists() and not Path(out).exists()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, entries: list) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


# --- item 1: shares of different jobs ------------------------------------------------------------

@pytest.mark.parametrize("other_model,extra,what", [(True, [], "fingerprint"), (False, ["--batch-size", "8"], "batch_size"),
                                                    (False, ["--score", "recon"], "score")])
def test_shares_of_different_jobs_are_refused_not_merged(setup, tmp_path, other_model, extra, what):
    run_a, run_b, data = setup
    out = tmp_path / "mix.csv"
    assert score(run_a, data, out, "--shard", "0/2").exit_code == 0
    share0 = (tmp_path / "mix.csv.shard-0-of-2.partial").read_bytes()
    r = score(run_b if other_model else run_a, data, out, *extra, "--shard", "1/2")  # the later option wins
    assert r.exit_code == 2, r.output
    assert said(r, "cannot merge share 0/2") and said(r, what) and "Traceback" not in r.output
    assert not out.exists()
    assert (tmp_path / "mix.csv.shard-0-of-2.partial").read_bytes() == share0  # the other share is left as it was


def test_a_share_journal_claiming_another_share_is_refused(setup, tmp_path):
    run_a, _, data = setup
    out = tmp_path / "s.csv"
    assert score(run_a, data, out, "--shard", "0/2").exit_code == 0
    j = tmp_path / "s.csv.shard-0-of-2.partial"
    entries = lines(j)
    entries[0]["shard"] = [1, 2]
    write_lines(j, entries)
    r = score(run_a, data, out, "--shard", "1/2")
    assert r.exit_code == 2 and said(r, "cannot merge share 0/2") and not out.exists()


# --- item 2: --resume --maps --------------------------------------------------------------------

def test_resume_with_maps_into_a_users_folder_is_refused_and_changes_nothing(setup, tmp_path):
    run_a, _, data = setup
    out, users = tmp_path / "s.csv", tmp_path / "copy"
    stopped_job(run_a, data, out)
    shutil.copytree(data, users)
    before = tree(users)
    r = score(run_a, data, out, "--maps", users, "--resume")
    assert r.exit_code == 2 and said(r, "maps") and said(r, "other settings"), r.output
    assert tree(users) == before and not out.exists()


def test_resume_replaces_only_the_maps_of_the_batch_it_was_stopped_in(setup, tmp_path):
    run_a, _, data = setup
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    stopped_job(run_a, data, out, maps)  # batches 0-2 journaled; maps of batch 3 may be on disk
    whole = tmp_path / "whole"
    assert score(run_a, data, tmp_path / "whole.csv", "--maps", whole).exit_code == 0
    own = (whole / "img013.png").read_bytes()  # batch 3: files 12..15; vaekit's own holds these very bytes
    (maps / "img013.png").write_bytes(own)
    (maps / "img021.png").write_bytes(b"a user's file")  # batch 5: never written by this job
    r = score(run_a, data, out, "--maps", maps, "--resume")
    assert r.exit_code == 2 and said(r, "heat map") and said(r, "img021.png")
    assert (maps / "img021.png").read_bytes() == b"a user's file"
    (maps / "img021.png").unlink()
    r = score(run_a, data, out, "--maps", maps, "--resume")
    assert r.exit_code == 0, r.output
    assert (maps / "img013.png").read_bytes() == own


# --- item 5: the input list changed --------------------------------------------------------------

def test_resume_after_inputs_were_renamed_is_refused(setup, tmp_path):
    run_a, _, data = setup
    mine = tmp_path / "images"
    shutil.copytree(data, mine)
    out = tmp_path / "s.csv"
    stopped_job(run_a, mine, out)
    for i in (20, 25):  # the same count, other names
        (mine / f"img{i:03d}.png").rename(mine / f"renamed{i:03d}.png")
    r = score(run_a, mine, out, "--resume")
    assert r.exit_code == 2 and said(r, "input files changed") and not out.exists(), r.output


def test_resume_with_the_same_inputs_gives_the_uninterrupted_file(setup, reference, tmp_path):
    run_a, _, data = setup
    out = tmp_path / "scores.csv"
    stopped_job(run_a, data, out)
    r = score(run_a, data, out, "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == reference and not Path(f"{out}.partial").exists()


# --- items 6 and 9: OUT.partial that is not a file; OUT.merging -----------------------------------

def _cli(run, data, out, *extra) -> subprocess.CompletedProcess:
    cmd = [EXE, "--threads", "1", "anomaly-score", str(run), str(data), "-o", str(out), "--batch-size", "4",
           "--threshold", "0", *extra]
    # the timeout is a guard against the hang this test is about, not a measurement
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "300"})


@pytest.mark.parametrize("resume", [[], ["--resume"]])
def test_a_fifo_partial_is_refused_without_hanging(setup, tmp_path, resume):
    run_a, _, data = setup
    out = tmp_path / "s.csv"
    os.mkfifo(tmp_path / "s.csv.partial")
    from test_hardening import fifo_guard

    with fifo_guard(tmp_path / "s.csv.partial"):  # a guard against the hang this is about (the old code's)
        r = score(run_a, data, out, *resume)
    assert r.exit_code == 2 and said(r, "a FIFO") and "Traceback" not in r.output, r.output
    assert not out.exists()


def test_a_folder_partial_is_exit_2(setup, tmp_path):
    run_a, _, data = setup
    (tmp_path / "s.csv.partial").mkdir()
    r = score(run_a, data, tmp_path / "s.csv", "--resume")
    assert r.exit_code == 2 and said(r, "a folder"), r.output


def test_a_symlinked_partial_is_not_followed(setup, tmp_path):
    run_a, _, data = setup
    users = tmp_path / "users.txt"
    users.write_text("")
    os.symlink(users, tmp_path / "s.csv.partial")
    r = score(run_a, data, tmp_path / "s.csv")
    assert r.exit_code == 2 and said(r, "symbolic link") and users.read_text() == ""
    os.symlink(tmp_path / "elsewhere" / "made.txt", tmp_path / "t.csv.partial")  # dangling
    (tmp_path / "elsewhere").mkdir()
    r = score(run_a, data, tmp_path / "t.csv")
    assert r.exit_code == 2 and not (tmp_path / "elsewhere" / "made.txt").exists()


def test_a_users_merging_file_is_never_deleted(setup, reference, tmp_path):
    run_a, _, data = setup
    out = tmp_path / "scores.csv"
    (tmp_path / "scores.csv.merging").write_text("my notes")
    assert score(run_a, data, out, "--shard", "0/2").exit_code == 0
    r = score(run_a, data, out, "--shard", "1/2")
    assert r.exit_code == 2 and said(r, "scores.csv.merging") and said(r, "not vaekit's")
    assert (tmp_path / "scores.csv.merging").read_text() == "my notes" and not out.exists()
    (tmp_path / "scores.csv.merging").rename(tmp_path / "notes.txt")
    r = score(run_a, data, out, "--shard", "1/2", "--resume")  # every batch journaled: merges now
    assert r.exit_code == 0 and out.read_bytes() == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "scores.csv"]


def test_an_unsharded_job_ignores_a_merging_file(setup, reference, tmp_path):
    run_a, _, data = setup
    (tmp_path / "scores.csv.merging").write_text("my notes")
    assert score(run_a, data, tmp_path / "scores.csv").exit_code == 0
    assert (tmp_path / "scores.csv.merging").read_text() == "my notes"


# --- item 7: a huge shard count ------------------------------------------------------------------

@pytest.mark.parametrize("shard", ["0/1000000000", "0/4097"])
@pytest.mark.slow  # starts the installed vaekit in a fresh process
def test_shard_count_is_bounded(setup, tmp_path, shard):
    run_a, _, data = setup
    r = _cli(run_a, data, tmp_path / "s.csv", "--shard", shard)  # a subprocess: the old code looped for ever
    assert r.returncode == 2 and flat("at most 4096") in flat(r.stderr) \
        and not list(tmp_path.iterdir()), r.stderr


def test_more_shares_than_batches_still_merge(setup, reference, tmp_path):
    run_a, _, data = setup
    out = tmp_path / "scores.csv"
    for i in range(10):  # 8 batches: shares 8 and 9 own none
        assert score(run_a, data, out, "--shard", f"{i}/10").exit_code == 0
    assert out.read_bytes() == reference


# --- item 8: tampered journals -------------------------------------------------------------------

def _forged_row(entries):
    row = dict(entries[1]["rows"][0])
    row.update(path="/etc/passwd", score=0.0, anomalous=False)
    return row


TAMPERED = {
    "negative batch": lambda e: e + [{"batch": -1, "rows": [_forged_row(e)], "skipped": []}],
    "batch out of range": lambda e: e + [{"batch": 999, "rows": [_forged_row(e)], "skipped": []}],
    "batch true": lambda e: e + [{"batch": True, "rows": e[2]["rows"], "skipped": []}],
    "batch as text": lambda e: e + [{"batch": "3", "rows": [], "skipped": []}],
    "duplicate batch": lambda e: e + [e[1]],
    "forged path": lambda e: e[:1] + [{**e[1], "rows": [_forged_row(e)] + e[1]["rows"][1:]}] + e[2:],
    "a row too many": lambda e: e[:1] + [{**e[1], "rows": e[1]["rows"] + e[1]["rows"][:1]}] + e[2:],
    "only a batch number": lambda e: e + [{"batch": 3}],
    "rows as text": lambda e: e + [{"batch": 3, "rows": "rows", "skipped": []}],
    "row without score": lambda e: e[:1] + [{**e[1], "rows": [{k: v for k, v in r.items() if k != "score"}
                                                             for r in e[1]["rows"]]}] + e[2:],
    "flag flipped": lambda e: e[:1] + [{**e[1], "rows": [{**r, "anomalous": not r["anomalous"]}
                                                        for r in e[1]["rows"]]}] + e[2:],
    "not json": lambda e: e + ["{not json"],
}


@pytest.mark.parametrize("how", sorted(TAMPERED))
def test_a_tampered_journal_is_exit_2_naming_the_line(setup, tmp_path, how):
    run_a, _, data = setup
    out = tmp_path / "s.csv"
    stopped_job(run_a, data, out)
    j = Path(f"{out}.partial")
    entries = TAMPERED[how](lines(j))
    j.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in entries))
    r = score(run_a, data, out, "--resume")
    assert r.exit_code == 2, r.output
    assert said(r, "is damaged at line") and "Traceback" not in r.output and not out.exists()


def test_a_tampered_share_is_refused_at_the_merge(setup, tmp_path):
    run_a, _, data = setup
    out = tmp_path / "s.csv"
    assert score(run_a, data, out, "--shard", "0/2").exit_code == 0
    j = tmp_path / "s.csv.shard-0-of-2.partial"
    entries = lines(j)
    write_lines(j, entries + [{"batch": 1, "rows": [_forged_row(entries)], "skipped": []}])  # share 1's batch
    r = score(run_a, data, out, "--shard", "1/2")
    assert r.exit_code == 2 and said(r, "damaged at line") and not out.exists()


ENCODE_TAMPERED = {
    "claims more rows": lambda e: e[:1] + [{**e[1], "rows": e[1]["rows"] * 4}] + e[2:],
    "short mu": lambda e: e[:1] + [{**e[1], "rows": [{**r, "mu": "AAAA"} for r in e[1]["rows"]]}] + e[2:],
    "bytes as text": lambda e: e[:1] + [{**e[1], "rows": [{**r, "bytes": "x"} for r in e[1]["rows"]]}] + e[2:],
    "mu not base64": lambda e: e[:1] + [{**e[1], "rows": [{**r, "mu": "%%%"} for r in e[1]["rows"]]}] + e[2:],
}


@pytest.mark.parametrize("how", sorted(ENCODE_TAMPERED))
def test_a_tampered_encode_journal_is_exit_2(setup, tmp_path, how):
    run_a, _, data = setup
    model, calls = vaekit.load(run_a), []
    real = model.encode

    def dying(x):
        calls.append(len(x))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(x)

    model.encode = dying
    out = tmp_path / "c.codes"
    with pytest.raises(KeyboardInterrupt):
        codes.encode_folder(model, data, out, batch_size=4)
    j = Path(f"{out}.partial")
    write_lines(j, ENCODE_TAMPERED[how](lines(j)))
    r = invoke("encode", run_a, data, "-o", out, "--batch-size", "4", "--resume")
    assert r.exit_code == 2 and said(r, "is damaged at line") and not out.exists(), r.output
