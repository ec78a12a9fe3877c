"""Review 46, of the session that added lossless archives from every model and hardened resume,
outputs kept after a stop, the pixel cache's room and confined scans. Each test failed before
its fix.

Real components: an untrained 16 px model, noise PNGs in tmp_path, the library's jobs and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import vaekit
from export_support import random_job
from cli_support import invoke, one_line_exit_2

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return random_job(tmp_path_factory.mktemp("review46"), 5)


def _stopped_score(run: Path, images: Path, out: Path) -> Path:
    """A score job to `out` stopped after its first two batches (of 2 files): its journal."""
    from vaekit.anomaly.job import score_to_file

    def stop(done, total, **_):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_to_file(vaekit.load(run), images, out, batch_size=2, progress=stop)
    journal = out.with_name(out.name + ".partial")
    assert journal.is_file()
    return journal


@pytest.mark.parametrize("name", ["images\u0000x", "images\ud800"])
def test_a_journal_naming_an_input_no_path_can_be_is_refused_in_one_line(setup, tmp_path, name):
    """A journal header whose inputs hold a NUL (or an unpaired surrogate), damaged or forged: the
    resume's check whether the inputs were the same places spelled another way (stream.headers)
    called os.path.realpath on it, a ValueError traceback, exit 3. It is an input that differs,
    named, exit 2, as before that check."""
    run, images = setup
    journal = _stopped_score(run, images, tmp_path / "s.csv")
    lines = journal.read_text().split("\n")
    header = json.loads(lines[0])
    header["inputs"] = [name]
    journal.write_text("\n".join([json.dumps(header), *lines[1:]]))
    before = journal.read_bytes()
    r = invoke("anomaly-score", run, images, "-o", tmp_path / "s.csv", "--batch-size", 2, "--resume")
    assert "cannot resume" in one_line_exit_2(r) and "input 1 was" in r.output
    assert journal.read_bytes() == before and not (tmp_path / "s.csv").exists()


def test_keeping_an_output_of_the_same_bytes_never_reads_through_a_link_swapped_in(tmp_path, monkeypatch):
    """put_in_place(keep_same) keeps a file at the output's name that holds the very bytes written
    (a died merge's own). same_bytes looked at it by name (lstat: a regular file), then opened it
    by name, following whatever was there by then: a link swapped in between was read through
    (and a FIFO would have blocked for ever). It now opens without following a link or blocking,
    and checks the open file."""
    import os

    from vaekit.errors import OutputExists
    from vaekit.fileio import outputs

    data = b"the very bytes the merge writes\n" * 100
    tmp, theirs, out = tmp_path / "tmp", tmp_path / "elsewhere", tmp_path / "out.csv"
    tmp.write_bytes(data)
    theirs.write_bytes(data)
    out.symlink_to(theirs)
    real_lstat = os.lstat

    def looked_before_the_swap(path, *a, **k):  # what a look a moment before the link came saw
        return real_lstat(theirs) if Path(path) == out else real_lstat(path, *a, **k)

    monkeypatch.setattr(outputs.os, "lstat", looked_before_the_swap)
    assert not outputs.same_bytes(tmp, out)
    with pytest.raises(OutputExists):
        outputs.put_in_place(tmp, out, replace=False, keep_same=True)
    monkeypatch.undo()
    assert out.is_symlink() and os.readlink(out) == str(theirs) and tmp.read_bytes() == data


def test_same_bytes_is_a_byte_comparison_of_regular_files(tmp_path):
    """A file of the same size but other bytes, a link to the same bytes, a FIFO: none is kept."""
    import os

    from vaekit.fileio.outputs import same_bytes

    a, same, other, link, fifo = (tmp_path / n for n in ("a", "same", "other", "link", "fifo"))
    a.write_bytes(b"x" * (3 << 20) + b"1")
    same.write_bytes(b"x" * (3 << 20) + b"1")
    other.write_bytes(b"x" * (3 << 20) + b"2")
    link.symlink_to(same)
    os.mkfifo(fifo)
    assert same_bytes(a, same)
    assert not same_bytes(a, other) and not same_bytes(a, link) and not same_bytes(a, fifo)
    assert not same_bytes(a, tmp_path / "absent")


def test_a_kept_own_output_with_other_bytes_says_it_may_be_the_jobs_own_from_another_device(tmp_path):
    """A resume counts a file at its output's name as its own only with the very bytes it writes;
    other bytes are refused, and the message says they may be its own written elsewhere."""
    from vaekit.errors import OutputExists
    from vaekit.fileio.outputs import put_in_place

    tmp, out = tmp_path / "out.csv.tmp", tmp_path / "out.csv"
    tmp.write_bytes(b"a,b\n1,2\n")
    out.write_bytes(b"a,b\n1,3\n")
    with pytest.raises(OutputExists, match="appeared while this job ran.*another device") as e:
        put_in_place(tmp, out, replace=False, keep_same=True)
    assert "\n" not in str(e.value) and out.read_bytes() == b"a,b\n1,3\n" and tmp.exists()
    with pytest.raises(OutputExists) as plain:
        put_in_place(tmp, out, replace=False)
    assert "another device" not in str(plain.value)
