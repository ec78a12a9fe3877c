"""Journals, shares and resume that cannot be fooled, round 9: a source replaced under the same
name, size and modification time; the same file named twice; a journal line edited by hand into
another well-formed row; and what a hostile tester found after them. A resumed or merged job
gives the file an uninterrupted job gives, or refuses with one line and exit 2.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the CLI through Typer's runner.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from export_support import random_job, stopped_job
from cli_support import invoke, one_line_refusal

N_IMAGES = 24  # batch size 4: 6 batches

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("resume9"), N_IMAGES)


@pytest.fixture
def data(setup, tmp_path):
    """A copy of the images this test may change."""
    copy = tmp_path / "images"
    shutil.copytree(setup[1], copy)
    return copy


def score(run, data, out, *extra):
    return invoke("anomaly-score", run, data, "-o", out, "--batch-size", "4", "--threshold", "0", *extra)


def test_a_score_edited_by_hand_in_a_well_formed_line_is_refused(setup, data, tmp_path):
    # the line keeps its shape and its types: before its checksum, the edited score was merged as written
    run, _ = setup
    out = tmp_path / "scores.csv"
    journal = stopped_job(run, data, out)
    header, *batches = journal.read_bytes().splitlines(keepends=True)
    entry = json.loads(batches[1])
    entry["rows"][0]["score"] = entry["rows"][0]["score"] - 1e-3
    batches[1] = json.dumps(entry).encode() + b"\n"
    journal.write_bytes(header + b"".join(batches))
    r = score(run, data, out, "--resume")
    assert one_line_refusal(r) and "damaged at line 3" in r.output and "checksum" in r.output, r.output
    assert not out.exists()


def test_a_flipped_digit_is_refused_and_an_untouched_journal_resumes(setup, data, tmp_path):
    run, _ = setup
    assert score(run, data, tmp_path / "whole.csv").exit_code == 0
    out = tmp_path / "scores.csv"
    journal = stopped_job(run, data, out)
    raw = journal.read_bytes()
    assert score(run, data, out, "--resume").exit_code == 0  # untouched: the uninterrupted file
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    out.unlink()
    first = raw.index(b"\n") + 1  # past the header, which names the score too
    at = raw.index(b'"score": ', first) + len(b'"score": ') + 3  # a digit of the first row's score
    flipped = raw[:at] + (b"1" if raw[at:at + 1] != b"1" else b"2") + raw[at + 1:]
    journal.write_bytes(flipped)
    r = score(run, data, out, "--resume")
    assert one_line_refusal(r) and "checksum" in r.output, r.output


def test_a_journal_from_before_checksums_is_refused_with_a_clear_line(setup, data, tmp_path):
    run, _ = setup
    out = tmp_path / "scores.csv"
    journal = stopped_job(run, data, out)
    header, *batches = journal.read_text().splitlines()
    old = {**json.loads(header), "vaekit_journal": 2}
    unchecked = [json.dumps({k: v for k, v in json.loads(b).items() if k != "check"}) for b in batches]
    journal.write_text("\n".join([json.dumps(old), *unchecked]) + "\n")
    r = score(run, data, out, "--resume")
    assert one_line_refusal(r) and "journal format" in r.output and "delete it" in r.output, r.output


# --- a source replaced under the same name, size and modification time ----------------------------

def _same_size_png(path: Path, seed: int) -> bytes:
    """An uncompressed 16 px PNG of noise: every such file has the same size, whatever its pixels."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), np.uint8)).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


def _replace(path: Path, how: str) -> None:
    st = os.stat(path)
    new = _same_size_png(path, 99)
    assert len(new) == st.st_size
    if how == "renamed over":  # touch -r old new; mv new old
        tmp = path.with_name("new.tmp")
        tmp.write_bytes(new)
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, path)
    else:  # rewritten in place, its time set back
        with open(path, "r+b") as f:
            f.write(new)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_a_source_replaced_with_the_same_size_and_time_does_not_resume(setup, data, tmp_path, how):
    # batches.digest pinned each file by size and mtime only: the resume kept the old image's rows
    run, _ = setup
    (data / "img005.png").write_bytes(_same_size_png(data / "img005.png", 5))  # in batch 1, finished below
    out = tmp_path / "scores.csv"
    journal = stopped_job(run, data, out)
    before = journal.read_bytes()
    _replace(data / "img005.png", how)
    r = score(run, data, out, "--resume")
    assert one_line_refusal(r) and "replaced or rewritten" in r.output, r.output
    assert journal.read_bytes() == before and not out.exists()


@pytest.mark.parametrize("how", ["renamed over", "rewritten in place"])
def test_the_pixel_cache_never_serves_a_source_replaced_with_the_same_size_and_time(data, tmp_path, how):
    # its key (also training's data fingerprint, which train --resume compares) stays size and mtime;
    # the entry records the files' inodes and change times and is rebuilt when they differ
    import numpy as np

    from vaekit import images
    from vaekit.training import cache

    target = data / "img005.png"
    target.write_bytes(_same_size_png(target, 5))
    paths = images.find_images(data)
    first = cache.load_cached(paths, 16, 1, cache_dir=tmp_path / "cache")
    assert cache.load_cached(paths, 16, 1, cache_dir=tmp_path / "cache").hit  # unchanged: a hit
    _replace(target, how)
    again = cache.load_cached(paths, 16, 1, cache_dir=tmp_path / "cache")
    fresh = images.load_images(paths, 16, 1)
    assert again.key == first.key and not again.hit
    np.testing.assert_array_equal(np.asarray(again.images), fresh.images)


# --- the same file named twice -------------------------------------------------------------------

def _csv_paths(out: Path) -> list[str]:
    import csv

    with open(out, newline="") as f:
        return [row["path"] for row in csv.DictReader(f)]


@pytest.mark.parametrize("named", ["twice", "spelled two ways", "with its folder", "folder through a link"])
def test_a_file_named_twice_is_scored_once(setup, data, tmp_path, named):
    run, _ = setup
    a = data / "img003.png"
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    args = {"twice": [a, a], "spelled two ways": [a, data / ".." / data.name / a.name],
            "with its folder": [a, data], "folder through a link": [data, tmp_path / "link"]}[named]
    out = tmp_path / "s.csv"
    r = invoke("anomaly-score", run, *args, "-o", out, "--batch-size", "4", "--threshold", "0")
    assert r.exit_code == 0, r.output
    if named != "folder through a link":  # (a folder seen twice was scanned once already)
        from vaekit import anomaly
        import vaekit

        report = anomaly.score_to_file(vaekit.load(run), args, tmp_path / "api.csv", threshold=0.0, batch_size=4)
        assert len(report.repeated) == 1
    paths = _csv_paths(out)
    assert len(paths) == len(set(map(os.path.realpath, paths))), paths
    assert len(paths) == (1 if named in ("twice", "spelled two ways") else N_IMAGES)


def test_anomaly_score_and_encode_read_a_file_named_twice_once(setup, data, tmp_path):
    import vaekit
    from vaekit import codes, stream

    run, _ = setup
    a = data / "img003.png"
    found = stream.find_inputs([a, data, a], once=True)
    assert len(found.paths) == N_IMAGES and found.paths[0] == a and len(found.names) == N_IMAGES
    assert found.repeated == [str(data / a.name), str(a)]
    report = codes.encode_folder(vaekit.load(run), [a, data], tmp_path / "c.codes", batch_size=4)
    assert report.count == N_IMAGES and report.repeated == [str(data / a.name)]
    assert len(stream.find_inputs([a, a]).paths) == 2  # Model.load_images([a, a]): one image each, as asked


# --- two processes on one journal ----------------------------------------------------------------

@pytest.mark.parametrize("first_does", ["gives up", "finishes"])
def test_a_journal_removed_between_its_open_and_its_lock_is_not_written_unseen(tmp_path, monkeypatch, first_does):
    # process B opened OUT.partial just before process A, holding its lock, removed it (A gave up
    # before its first batch, or finished and wrote OUT); B then took the lock of a file no longer
    # there and wrote its rows where nothing would read them (its job then found no journal to merge)
    from vaekit.errors import InUse
    from vaekit.stream import journals

    out, layout = tmp_path / "scores.csv", None
    first = journals.open_journal(out, {"model": "m"}, resume=False)
    if first_does == "finishes":
        first.append(0, [{"path": "a"}])
    real = journals.try_lock

    def after_the_first_lets_go(fd):
        if first_does == "finishes":
            first.finish(lambda f: f.write(b"done\n"))
        else:
            first.abandon()
        return real(fd)

    monkeypatch.setattr(journals, "try_lock", after_the_first_lets_go)
    with pytest.raises(InUse, match="another vaekit process") as e:
        journals.open_journal(out, {"model": "m"}, resume=True)
    assert "\n" not in str(e.value)
    assert not journals.partial_path(out).exists()  # nothing created in its place either


@pytest.mark.parametrize("ends", ["finish", "abandon", "remove"])
def test_a_journal_never_deletes_a_file_put_in_its_place_while_it_ran(tmp_path, ends):
    # the journal was moved away (or deleted) while its job ran, and a file of the user's (or a
    # second job's journal) now has its name: the end of the job unlinked that name, whatever it was
    from vaekit.stream import journals

    out = tmp_path / "scores.csv"
    journal = journals.open_journal(out, {"model": "m"}, resume=False)
    os.rename(journal.path, tmp_path / "moved.partial")
    journal.path.write_text("the user's own notes\n")
    if ends == "finish":
        journal.finish(lambda f: f.write(b"rows\n"))
    else:
        getattr(journal, ends)()
    assert journal.path.read_text() == "the user's own notes\n"


def test_a_merge_never_deletes_a_file_put_at_a_journals_name_after_it_was_read(setup, tmp_path, monkeypatch):
    from vaekit.stream import shares as shares_module

    run, data = setup
    out = tmp_path / "s.csv"
    assert score(run, data, out, "--shard", "0/2").exit_code == 0
    share0 = tmp_path / "s.csv.shard-0-of-2.partial"
    real = shares_module.Shares.remove

    def swapped_then_removed(self):  # share 0's journal moved away after the merge read it
        os.rename(share0, tmp_path / "moved.partial")
        share0.write_text("the user's own notes\n")
        real(self)

    monkeypatch.setattr(shares_module.Shares, "remove", swapped_then_removed)
    assert score(run, data, out, "--shard", "1/2").exit_code == 0 and out.exists()
    assert share0.read_text() == "the user's own notes\n"
    assert not (tmp_path / "s.csv.shard-1-of-2.partial").exists()  # the journals it read go, as ever


def finished_shares(out: Path, n: int, n_files: int):
    """Shares (as share 0 sees them) of a job over files f0..f{n_files-1}, one file a batch, cut
    into n shares whose journals are all finished."""
    from vaekit.stream.batches import Layout
    from vaekit.stream.journals import open_journal
    from vaekit.stream.shares import Shares, share_out

    layout = Layout([f"f{i}" for i in range(n_files)], 1, 0, n)
    for j in range(n):
        journal = open_journal(share_out(out, j, n), {"m": 1, "shard": [j, n]}, False, layout.share(j))
        for b in layout.share(j).mine():
            journal.append(b, [{"path": f"f{b}"}])
        journal.close()
    return Shares(out, {"m": 1, "shard": [0, n]}, layout)


# --- a merge of many shares --------------------------------------------------------------------

def test_a_merge_of_more_shares_than_open_files_allowed_goes_through(tmp_path):
    # heapq.merge opened every share's journal at once: 4096 shares (the documented most) passed a
    # limit of 1024 open files (256 on macOS) with "Too many open files" at the merge
    resource = pytest.importorskip("resource")
    shares = finished_shares(tmp_path / "o.csv", 300, 305)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 40, hard))
    try:
        rows = [r["path"] for e in shares.merged() for r in e["rows"]]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert rows == [f"f{i}" for i in range(305)]


def test_a_journal_replaced_while_it_is_merged_is_a_damaged_file_not_a_mix(tmp_path):
    from vaekit.errors import DamagedFile
    from vaekit.stream.files import lines_reopened, open_regular

    path = tmp_path / "o.csv.shard-0-of-2.partial"
    path.write_bytes(b"one\ntwo\n")
    lines = lines_reopened(path, open_regular(path, write=False), 1 << 20)
    assert next(lines) == (4, b"one\n")
    os.rename(path, tmp_path / "away")
    path.write_bytes(b"one\nTWO\n")
    with pytest.raises(DamagedFile, match="replaced while it was being merged"):
        next(lines)


def test_another_shares_journal_this_user_cannot_read_is_one_line_not_a_traceback(setup, data, tmp_path):
    # shares run by two users on one shared folder (umask 077): share 0 could not open share 1's
    # journal, and the PermissionError came out as a traceback calling itself a bug of vaekit
    from hostile import unprivileged

    run, _ = setup
    out = tmp_path / "s.csv"
    assert score(run, data, out, "--shard", "1/2").exit_code == 0
    other = tmp_path / "s.csv.shard-1-of-2.partial"
    os.chmod(other, 0o600)
    if os.geteuid() == 0:
        os.chown(other, 1234, 1234)
    before = other.read_bytes()
    with unprivileged():
        r = score(run, data, out, "--shard", "0/2")
    assert one_line_refusal(r) and "cannot read" in r.output and "shard-1-of-2" in r.output, r.output
    assert other.read_bytes() == before and not out.exists()


def test_a_merge_lock_this_user_cannot_open_is_one_line_and_the_share_resumes(setup, data, tmp_path):
    # another user's merge (or its leftover, umask 077): the PermissionError was a traceback
    from hostile import unprivileged
    from vaekit.stream.merge_lock import LOCK_TEXT as _LOCK_TEXT

    run, _ = setup
    out = tmp_path / "s.csv"
    assert score(run, data, out, "--shard", "1/2").exit_code == 0
    lock = tmp_path / "s.csv.merging"
    lock.write_bytes(_LOCK_TEXT)
    os.chmod(lock, 0o600)
    if os.geteuid() == 0:
        os.chown(lock, 1234, 1234)
    with unprivileged():
        r = score(run, data, out, "--shard", "0/2")
    assert one_line_refusal(r) and "s.csv.merging" in r.output, r.output
    assert not out.exists() and (tmp_path / "s.csv.shard-0-of-2.partial").exists()  # kept: a resume merges
    lock.unlink()
    r = score(run, data, out, "--shard", "0/2", "--resume")
    assert r.exit_code == 0 and out.exists(), r.output


def test_a_chmod_of_an_input_resumes_to_the_uninterrupted_file(setup, data, tmp_path):
    # it was refused (its change time moved `sources`): the files' bytes now decide (test_resume_moved)
    run, _ = setup
    assert score(run, data, tmp_path / "whole.csv").exit_code == 0
    out = tmp_path / "scores.csv"
    stopped_job(run, data, out)
    os.chmod(data / "img000.png", 0o600)
    r = score(run, data, out, "--resume")
    assert r.exit_code == 0 and out.read_bytes() == (tmp_path / "whole.csv").read_bytes(), r.output


def test_another_shares_sources_are_not_compared_at_the_merge(setup, data, tmp_path):
    # share 1 ran on another machine, reading its own copy of the files: other inodes, other change times
    from vaekit.stream import lines

    run, _ = setup
    out = tmp_path / "s.csv"
    assert score(run, data, out).exit_code == 0
    whole = out.read_bytes()
    out.unlink()
    assert score(run, data, out, "--shard", "1/2").exit_code == 0
    other = tmp_path / "s.csv.shard-1-of-2.partial"
    header, *rest = other.read_bytes().splitlines(keepends=True)
    elsewhere = (json.dumps({**json.loads(header), "sources": "0" * 64}) + "\n").encode()
    # as that machine wrote it: its lines keyed by its own header (vaekit.stream.lines)
    entries = [lines.decode(line, lines.key(header))[0] for line in rest]
    other.write_bytes(elsewhere + b"".join(lines.encode(e, lines.key(elsewhere)) for e in entries))
    r = score(run, data, out, "--shard", "0/2")
    assert r.exit_code == 0 and out.read_bytes() == whole, r.output


def test_waiting_for_shares_reads_each_journal_line_once_and_follows_a_replaced_journal(tmp_path, monkeypatch):
    # rank 0 under torchrun polls twice a second: every poll read and checked every share's whole
    # journal again (0.9 s a poll for 100k rows: a core kept busy while the other ranks score)
    from vaekit.stream import shares as shares_module
    from vaekit.stream.batches import Layout
    from vaekit.stream.journals import open_journal
    from vaekit.stream.shares import Shares, share_out

    n, out = 2, tmp_path / "o.csv"
    layout = Layout([f"f{i}" for i in range(40)], 1, 0, n)
    journals = [open_journal(share_out(out, j, n), {"m": 1, "shard": [j, n]}, False, layout.share(j)) for j in range(n)]
    for j, journal in enumerate(journals):
        for b in list(layout.share(j).mine())[: 15 if j else 20]:  # share 1 still has 5 batches to go
            journal.append(b, [{"path": f"f{b}"}])
    shares = Shares(out, {"m": 1, "shard": [0, n]}, layout)
    decoded = []
    real = shares_module.journal_lines.decode
    monkeypatch.setattr(shares_module.journal_lines, "decode", lambda line, key: decoded.append(line) or real(line, key))
    assert shares.pending() == [1] and len(decoded) == 35
    assert shares.pending() == [1] and len(decoded) == 35  # nothing new: nothing read again
    for b in list(layout.share(1).mine())[15:]:
        journals[1].append(b, [{"path": f"f{b}"}])
    assert shares.pending() == [] and len(decoded) == 40  # only the 5 lines appended since
    journals[1].close()
    share1 = tmp_path / "o.csv.shard-1-of-2.partial"
    kept = share1.read_bytes().splitlines(keepends=True)[:3]  # a shorter journal in its place
    share1.unlink()
    share1.write_bytes(b"".join(kept))
    assert shares.pending() == [1]
    journals[0].close()


def test_a_share_journal_rewritten_in_place_between_two_polls_is_read_again(tmp_path):
    # the same inode (a number the file system gave again, or a rewrite), as long or longer, other lines
    shares = finished_shares(tmp_path / "o.csv", 2, 8)
    assert shares.pending() == []
    share1 = tmp_path / "o.csv.shard-1-of-2.partial"
    header, *lines = share1.read_bytes().splitlines(keepends=True)
    with open(share1, "r+b") as f:  # lines 2 and 3 swapped: as long, same inode, out of order
        f.write(header + lines[1] + lines[0] + b"".join(lines[2:]))
    with pytest.raises(Exception, match="out of order"):  # a poll reads only past its last line; the merge all
        list(shares.merged())
    with open(share1, "r+b") as f:  # only its first batch, then padding as long as the rest
        f.truncate(0)
        f.write(header + lines[0] + b" " * 200 + b"\n")
    with pytest.raises(Exception, match="damaged at line 3"):
        shares.pending()


def test_a_share_journal_that_lost_batches_during_the_merge_stops_it(tmp_path, monkeypatch):
    from vaekit.errors import InUse

    shares = finished_shares(tmp_path / "o.csv", 2, 8)
    assert shares.pending() == []
    share1 = tmp_path / "o.csv.shard-1-of-2.partial"
    share1.write_bytes(b"".join(share1.read_bytes().splitlines(keepends=True)[:3]))  # restarted meanwhile
    with pytest.raises(InUse, match="changed while the shares were being merged"):
        list(shares.merged())


# --- the files of finished batches ---------------------------------------------------------------

def test_a_resume_whose_finished_heat_maps_are_gone_is_refused_not_silently_short(setup, data, tmp_path):
    # the maps folder emptied (or a map deleted) after the stop: the resume wrote only the maps of
    # the batches left, said "wrote N heat maps" and exit 0, with a third of the maps missing
    run, _ = setup
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    stopped_job(run, data, out, maps)
    gone = sorted(maps.iterdir())[2]
    gone.unlink()
    r = score(run, data, out, "--maps", maps, "--resume")
    assert one_line_refusal(r) and gone.name in r.output and "run the job again with --overwrite" in " ".join(r.output.split()), r.output
    assert not out.exists() and Path(f"{out}.partial").exists()


def test_a_share_pins_only_its_own_files(setup, data, tmp_path):
    # a file of share 1 replaced after share 0 stopped: share 0's rows do not depend on it, and its
    # resume goes on (each share stats only its own files: 1/n of the cost under torchrun)
    run, _ = setup
    out = tmp_path / "s.csv"
    import vaekit
    from vaekit import anomaly

    model, calls = vaekit.load(run), []
    real = model.score

    def dying(x, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(x, **kw)

    model.score = dying
    (data / "img005.png").write_bytes(_same_size_png(data / "img005.png", 5))  # batch 1: share 1's
    with pytest.raises(KeyboardInterrupt):
        anomaly.score_to_file(model, data, out, threshold=0.0, batch_size=4, shard=(0, 2))
    _replace(data / "img005.png", "rewritten in place")
    r = score(run, data, out, "--shard", "0/2", "--resume")
    assert r.exit_code == 0, r.output


def test_a_resume_after_the_input_list_changed_order_names_the_list_not_a_replaced_file(setup, tmp_path):
    # the sources digest changes with the list too: the refusal also said a file was replaced
    # "keeping its name, size and modification time", which was not what happened
    run, data = setup
    import vaekit
    from vaekit import anomaly

    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir(), b.mkdir()
    for i in range(8):
        shutil.copy(data / f"img{i:03d}.png", (a if i < 4 else b) / f"x{i}.png")
    model, calls = vaekit.load(run), []
    real = model.score

    def dying(x, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(x, **kw)

    model.score = dying
    out = tmp_path / "o.csv"
    with pytest.raises(KeyboardInterrupt):
        anomaly.score_to_file(model, [a, b], out, threshold=0.0, batch_size=4)
    r = invoke("anomaly-score", run, b, a, "-o", out, "--batch-size", "4", "--threshold", "0", "--resume")
    assert one_line_refusal(r) and "the input files changed" in r.output, r.output
    assert "keeping its name" not in r.output
