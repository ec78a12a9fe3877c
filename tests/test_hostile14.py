"""The fourteenth hostile round, on journals, resume and outputs: what pass 3 left open. A job
gives the file an uninterrupted job gives, or refuses with one line and exit 2; it never replaces
a file it did not create unless --overwrite names it, and it knows its own finished output.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the library's jobs and the CLI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vaekit
from export_support import random_job
from vaekit.codes import decode_file, encode_folder
from cli_support import invoke, one_line_exit_2

torch.set_num_threads(1)
USERS = b"a file of the user's, put at the output's name while the job ran\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("hostile14"), 12)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- 1. batch_size=None is the default batch in every library job that takes one ---------------

def test_decode_file_with_batch_size_none_decodes_in_its_default_batches(setup, tmp_path):
    # before: TypeError: '<' not supported between instances of 'int' and 'NoneType'
    run, data = setup
    model = vaekit.load(run)
    codes = tmp_path / "a.codes"
    encode_folder(model, data, codes, batch_size=4)
    decode_file(model, codes, tmp_path / "default")
    decode_file(model, codes, tmp_path / "none", batch_size=None)
    assert _files(tmp_path / "none") == _files(tmp_path / "default") and len(_files(tmp_path / "none")) == 12


def test_reconstruct_with_batch_size_none_is_the_default_batch(setup, tmp_path):
    # before: BadInput "batch_size must be an integer >= 1 ..., got None" (encode and score took None)
    from vaekit.inference import reconstruct

    run, data = setup
    model = vaekit.load(run)
    reconstruct.reconstruct_to_folder(model, data, tmp_path / "default")
    reconstruct.reconstruct_to_folder(model, data, tmp_path / "none", batch_size=None)
    assert _files(tmp_path / "none") == _files(tmp_path / "default") and len(_files(tmp_path / "none")) == 13


def test_a_bad_batch_size_is_still_one_clear_bad_input(setup, tmp_path):
    from vaekit.errors import BadInput

    run, data = setup
    model = vaekit.load(run)
    codes = tmp_path / "a.codes"
    encode_folder(model, data, codes, batch_size=4)
    with pytest.raises(BadInput, match="batch_size must be an integer >= 1"):
        decode_file(model, codes, tmp_path / "dec", batch_size=0)
    assert not (tmp_path / "dec").exists()


# --- 2. a line too long in another share's journal: the merge names the file and the line -----

def _too_long(limit_batch: int = 4) -> bytes:
    from vaekit.stream.lines import MAX_FILE_BYTES, MAX_HEADER_BYTES

    return b"x" * (2 * MAX_HEADER_BYTES + limit_batch * MAX_FILE_BYTES)  # past any limit of batches of 4


@pytest.mark.parametrize("line", [1, 3])
def test_a_line_too_long_in_another_shares_journal_is_named_by_file_and_line(setup, tmp_path, line):
    # before: "... .shard-0-of-2.partial is damaged: a line is longer than 2,097,680 bytes" (which line?)
    run, data = setup
    out = tmp_path / "s.csv"
    args = ("anomaly-score", run, data, "-o", out, "--batch-size", 4, "--threshold", 0)
    assert invoke(*args, "--shard", "0/2").exit_code == 0
    other = Path(f"{out}.shard-0-of-2.partial")
    kept = other.read_bytes().splitlines(keepends=True)[: line - 1]
    other.write_bytes(b"".join(kept) + _too_long() + b"\n")
    r = invoke(*args, "--shard", "1/2")
    text = one_line_exit_2(r)
    assert f"{other} is damaged at line {line}: the line is longer than" in text
    assert not out.exists() and other.read_bytes().endswith(b"x\n")  # refused, nothing changed


# --- 3. --resume with the same inputs spelled another way goes on ------------------------------

def _spellings(tmp_path: Path, data: Path) -> dict[str, str]:
    """The same folder named relative to tmp_path (the working folder), with ./ and a slash, absolute."""
    rel = data.relative_to(tmp_path) if data.is_relative_to(tmp_path) else None
    assert rel is not None
    return {"relative": str(rel), "dotted": f"./{rel}/", "absolute": str(data.resolve())}


@pytest.mark.parametrize("then,now", [("relative", "absolute"), ("absolute", "relative"), ("relative", "dotted")])
def test_resume_with_the_inputs_spelled_another_way_finishes_the_same_file(setup, tmp_path, monkeypatch, then, now):
    # before: "cannot resume ...: it was started with other settings (the input files changed ...;
    # inputs ['images'] then, ['/tmp/.../images'] now)" for the very same folder
    import shutil

    from export_support import stopped_job

    run, data = setup
    shutil.copytree(data, tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    named = _spellings(tmp_path, tmp_path / "images")
    ref = invoke("anomaly-score", run, named[then], "-o", "ref.csv", "--batch-size", 4, "--threshold", 0)
    assert ref.exit_code == 0, ref.output
    stopped_job(run, named[then], Path("s.csv"), after=1)
    r = invoke("anomaly-score", run, named[now], "-o", "s.csv", "--batch-size", 4, "--threshold", 0, "--resume")
    assert r.exit_code == 0, r.output
    assert Path("s.csv").read_bytes() == Path("ref.csv").read_bytes()  # the rows name the files as the first run did
    assert not Path("s.csv.partial").exists()


def test_shares_started_with_the_inputs_spelled_another_way_merge_into_the_same_file(setup, tmp_path, monkeypatch):
    import shutil

    run, data = setup
    shutil.copytree(data, tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    named = _spellings(tmp_path, tmp_path / "images")
    assert invoke("encode", run, named["relative"], "-o", "ref.codes", "--batch-size", 4).exit_code == 0
    assert invoke("encode", run, named["relative"], "-o", "a.codes", "--batch-size", 4, "--shard", "0/2").exit_code == 0
    r = invoke("encode", run, named["absolute"], "-o", "a.codes", "--batch-size", 4, "--shard", "1/2")
    assert r.exit_code == 0, r.output
    assert Path("a.codes").read_bytes() == Path("ref.codes").read_bytes()


def test_resume_with_another_folder_of_the_same_name_still_says_what_differs(setup, tmp_path, monkeypatch):
    import shutil

    from export_support import stopped_job

    run, data = setup
    for d in ("a", "b"):
        shutil.copytree(data, tmp_path / d / "images")
    (tmp_path / "b" / "images" / "img011.png").unlink()
    monkeypatch.chdir(tmp_path)
    stopped_job(run, "a/images", Path("s.csv"), after=1)
    r = invoke("anomaly-score", run, tmp_path / "b" / "images", "-o", "s.csv", "--batch-size", 4, "--threshold", 0,
               "--resume")
    text = one_line_exit_2(r)
    assert "the input files changed" in text and "a/images" in text and str(tmp_path / "b" / "images") in text


# --- 4. a resume after "appeared while this job ran" on a heat map leaves that file alone --------

def _stopped_on_a_foreign_map(setup, tmp_path) -> tuple[Path, Path, Path, dict]:
    """A job stopped by the user's file at batch 2's second map (img009.png): (run, out, maps,
    what the first run left in maps: name -> (bytes, inode))."""
    from test_hostile13 import _appearing

    from vaekit import anomaly
    from vaekit.errors import OutputExists

    run, data = setup
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    model = _appearing(vaekit.load(run), maps / "img009.png")
    with pytest.raises(OutputExists, match="img009.png appeared while this job ran"):
        anomaly.score_to_file(model, data, out, maps, threshold=0.0, batch_size=4)
    left = {p.name: (p.read_bytes(), p.stat().st_ino) for p in maps.iterdir()}
    assert "img008.png" in left and left["img009.png"][0] == USERS  # batch 2's first map was written
    return run, out, maps, left


def test_resume_keeps_the_stopped_batchs_own_maps_and_refuses_the_foreign_one_again(setup, tmp_path):
    # before: --resume wrote the stopped batch's maps again, the user's img009.png among them
    run, out, maps, left = _stopped_on_a_foreign_map(setup, tmp_path)
    r = invoke("anomaly-score", run, setup[1], "-o", out, "--maps", maps, "--batch-size", 4, "--threshold", 0,
               "--resume")
    text = one_line_exit_2(r)
    assert "img009.png appeared while this job ran" in text and "--overwrite" in text
    assert {p.name: (p.read_bytes(), p.stat().st_ino) for p in maps.iterdir()} == left  # nothing touched
    assert Path(f"{out}.partial").exists() and not out.exists()


def test_once_the_foreign_map_is_moved_away_the_resume_finishes_the_same_maps(setup, tmp_path):
    run, out, maps, left = _stopped_on_a_foreign_map(setup, tmp_path)
    (maps / "img009.png").rename(tmp_path / "users.png")
    args = ("--batch-size", 4, "--threshold", 0)
    assert invoke("anomaly-score", run, setup[1], "-o", out, "--maps", maps, *args, "--resume").exit_code == 0
    ref_maps = tmp_path / "ref-maps"
    assert invoke("anomaly-score", run, setup[1], "-o", tmp_path / "ref.csv", "--maps", ref_maps, *args).exit_code == 0
    assert _files(maps) == _files(ref_maps) and out.read_bytes() == (tmp_path / "ref.csv").read_bytes()
    assert (maps / "img008.png").stat().st_ino == left["img008.png"][1]  # kept, not written again
    assert (tmp_path / "users.png").read_bytes() == USERS


def test_a_reconstruct_resume_leaves_a_foreign_png_in_the_stopped_batch(setup, tmp_path):
    # the same rule for reconstruct's PNGs (its stopped batch's files were replaced the same way)
    from test_hostile13 import _appearing

    from vaekit.errors import OutputExists
    from vaekit.inference.reconstruct import reconstruct_to_folder

    run, data = setup
    out = tmp_path / "rec"
    model = _appearing(vaekit.load(run), out / "img009.png", "reconstruct")
    with pytest.raises(OutputExists, match="img009.png appeared while this job ran"):
        reconstruct_to_folder(model, data, out, batch_size=4)
    left = {p.name: (p.read_bytes(), p.stat().st_ino) for p in out.iterdir()}
    text = one_line_exit_2(invoke("reconstruct", run, data, "-o", out, "--batch-size", 4, "--resume"))
    assert "img009.png appeared while this job ran" in text
    assert {p.name: (p.read_bytes(), p.stat().st_ino) for p in out.iterdir()} == left


# --- 5. a merge that died after writing OUT: the next run knows OUT as its own -----------------

def _killed(self):
    raise KeyboardInterrupt  # the merging share dies after OUT is in place, before its journals go


def _job(kind: str, run: Path, data: Path, out: Path, model=None, **kw):
    from vaekit import anomaly

    model = vaekit.load(run) if model is None else model
    if kind == "anomaly-score":
        return anomaly.score_to_file(model, data, out, threshold=0.0, batch_size=4, **kw)
    return encode_folder(model, data, out, batch_size=4, **kw)


def _reference(kind: str, setup, tmp_path: Path) -> tuple[Path, Path]:
    """(OUT, the file an uninterrupted unsharded job writes there)."""
    run, data = setup
    out = tmp_path / ("s.csv" if kind == "anomaly-score" else "a.codes")
    ref = tmp_path / f"ref{out.suffix}"
    _job(kind, run, data, ref)
    return out, ref


@pytest.mark.parametrize("kind", ["anomaly-score", "encode"])
@pytest.mark.parametrize("again", ["0/2", "1/2"])
def test_a_resume_after_a_merge_died_past_its_output_keeps_it_and_finishes(setup, tmp_path, monkeypatch, kind, again):
    # before: "output s.csv already exists; pass --overwrite to replace it", whichever share ran again
    from vaekit.stream import shares

    run, data = setup
    out, ref = _reference(kind, setup, tmp_path)
    _job(kind, run, data, out, shard=(0, 2))
    with monkeypatch.context() as m:
        m.setattr(shares.Shares, "remove", _killed)
        with pytest.raises(KeyboardInterrupt):
            _job(kind, run, data, out, shard=(1, 2))
    assert out.read_bytes() == ref.read_bytes() and len(list(tmp_path.glob("*.partial"))) == 2
    inode = out.stat().st_ino
    extra = ("--threshold", 0) if kind == "anomaly-score" else ()
    r = invoke(kind, run, data, "-o", out, "--batch-size", 4, *extra, "--shard", again, "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == ref.read_bytes() and out.stat().st_ino == inode  # kept, not written again
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("kind", ["anomaly-score", "encode"])
def test_a_share_that_finds_the_merges_own_output_in_place_finishes_cleanly(setup, tmp_path, kind):
    # another share merged (and died before removing the journals) while this one ran: its OUT
    # is the very file this share's merge writes; before: "output ... appeared while this job ran"
    from test_hostile13 import _appearing

    run, data = setup
    out, ref = _reference(kind, setup, tmp_path)
    _job(kind, run, data, out, shard=(0, 2))
    model = _appearing(vaekit.load(run), out, "score" if kind == "anomaly-score" else "encode", at=1)
    import test_hostile13

    with pytest.MonkeyPatch.context() as m:
        m.setattr(test_hostile13, "USERS", ref.read_bytes())
        report = _job(kind, run, data, out, model=model, shard=(1, 2))
    assert report.merged and out.read_bytes() == ref.read_bytes()
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.tmp"))


def test_a_reconstruct_share_that_finds_the_merges_own_grid_in_place_finishes_cleanly(setup, tmp_path):
    # before: a share that had not resumed took a grid of the merge's very bytes for a file in its way
    import test_hostile13
    from test_hostile13 import _appearing

    from vaekit.inference.reconstruct import reconstruct_to_folder

    run, data = setup
    ref, out = tmp_path / "ref", tmp_path / "rec"
    reconstruct_to_folder(vaekit.load(run), data, ref, batch_size=4)
    reconstruct_to_folder(vaekit.load(run), data, out, batch_size=4, shard=(0, 2))
    model = _appearing(vaekit.load(run), out / "comparison.png", "reconstruct", at=1)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(test_hostile13, "USERS", (ref / "comparison.png").read_bytes())
        report = reconstruct_to_folder(model, data, out, batch_size=4, shard=(1, 2))
    assert report.merged and _files(out) == _files(ref)
    assert not list(tmp_path.glob("*.partial")) and not list(out.glob(".*.tmp"))


def test_a_resume_still_refuses_an_output_that_is_not_its_own(setup, tmp_path, monkeypatch):
    from export_support import stopped_job
    from vaekit.stream import shares

    run, data = setup
    args = ("--batch-size", 4, "--threshold", 0, "--resume")
    unfinished = tmp_path / "unfinished.csv"
    stopped_job(run, data, unfinished, after=1)
    unfinished.write_bytes(USERS)  # batches left to do: refused at the start, as ever
    text = one_line_exit_2(invoke("anomaly-score", run, data, "-o", unfinished, *args))
    assert "already exists" in text and unfinished.read_bytes() == USERS
    out = tmp_path / "s.csv"
    _job("anomaly-score", run, data, out, shard=(0, 2))
    with monkeypatch.context() as m:
        m.setattr(shares.Shares, "remove", _killed)
        with pytest.raises(KeyboardInterrupt):
            _job("anomaly-score", run, data, out, shard=(1, 2))
    out.write_bytes(USERS)  # every share complete, but OUT is not the merge's bytes
    text = one_line_exit_2(invoke("anomaly-score", run, data, "-o", out, *args, "--shard", "0/2"))
    assert "appeared while this job ran" in text and out.read_bytes() == USERS
    assert len(list(tmp_path.glob("s.csv.*.partial"))) == 2 and not list(tmp_path.glob(".*.tmp"))


# --- 6. encode refuses a batch whose codes would be a journal line past the bound --------------

def test_encode_refuses_a_batch_size_whose_journal_line_would_pass_the_bound(setup, tmp_path, monkeypatch):
    # before: --batch-size 4096 on a 512 px grid model journaled 4096 codes of 1 MB as one line (4.3 GB)
    from vaekit.codes import batch_size as batches

    run, data = setup
    row = batches.mu_bytes(vaekit.load(run).info.latent_dim)
    monkeypatch.setattr(batches, "LINE_CODE_BYTES", 5 * row + 1)  # this model's codes: five fit in a line
    out = tmp_path / "a.codes"
    text = one_line_exit_2(invoke("encode", run, data, "-o", out, "--batch-size", 6))
    assert "batch size 6 is too large" in text and "--batch-size 5 or less" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # refused before any work: no journal
    assert invoke("encode", run, data, "-o", out, "--batch-size", 5).exit_code == 0
    assert invoke("encode", run, data, "-o", tmp_path / "b.codes").exit_code == 0  # the default fits
    assert out.read_bytes() == (tmp_path / "b.codes").read_bytes()


@pytest.mark.parametrize("given", [[], ["--batch-size", 6]])
def test_a_journal_in_batches_past_the_line_bound_is_refused_not_resumed(setup, tmp_path, monkeypatch, given):
    # a resume went on in them, for a job begun before the bound; such a journal is of format 4 (or
    # another release's), refused as such, so one of this format and release was edited (test_hostile19)
    from vaekit.codes import batch_size as batches

    run, data = setup
    out = tmp_path / "a.codes"
    model = vaekit.load(run)
    calls, real = [], model.encode

    def stopped(x, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(x, *a, **kw)

    model.encode = stopped
    with pytest.raises(KeyboardInterrupt):
        encode_folder(model, data, out, batch_size=6)
    monkeypatch.setattr(batches, "LINE_CODE_BYTES", 5 * batches.mu_bytes(model.info.latent_dim) + 1)
    before = Path(f"{out}.partial").read_bytes()
    text = one_line_exit_2(invoke("encode", run, data, "-o", out, *given, "--resume"))
    assert "damaged or edited" in text and "batch size 6" in text, text
    assert Path(f"{out}.partial").read_bytes() == before and not out.exists()
