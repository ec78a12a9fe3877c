"""The third hardening pass: what hostile users found in journals, shares, resume and signals.

Each test is one case they reported, through the CLI where a user meets it: a killed job's
decoding processes must not keep its lock; a file vaekit did not write, named like a journal,
is never touched; a file replaced under the same name is never scored from the old rows; SIGTERM
(what a scheduler sends) is taken like Ctrl-C.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from export_support import random_job
from vaekit.fileio import try_lock
from vaekit_cli.main import app

N_IMAGES = 40
BATCH = "4"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening3")
    return (root, *random_job(root, N_IMAGES))


def invoke(*args):
    return CliRunner().invoke(app, ["--threads", "1", *map(str, args)])


def score(run, data, out, *extra):
    return invoke("anomaly-score", run, data, "-o", out, "--batch-size", BATCH, "--threshold", "0", *extra)


def test_a_file_named_like_the_journal_that_vaekit_did_not_write_is_left_alone(setup, tmp_path):
    _, run, data = setup
    out = tmp_path / "notes.csv"
    mine = tmp_path / "notes.csv.partial"
    for text in (b"my notes, no newline", b"my notes\nand more\n"):
        mine.write_bytes(text)
        for extra in ((), ("--resume",)):
            r = score(run, data, out, *extra)
            assert r.exit_code == 2 and "is not a vaekit journal" in r.output, r.output
            assert len(r.output.strip().splitlines()) == 1, r.output
            assert mine.read_bytes() == text and not out.exists()


def test_a_journal_header_cut_by_a_crash_is_still_vaekits_and_resumes(setup, tmp_path):
    _, run, data = setup
    whole = score(run, data, tmp_path / "whole.csv")
    assert whole.exit_code == 0, whole.output
    out = tmp_path / "s.csv"
    (tmp_path / "s.csv.partial").write_bytes(b'{"vaekit_jou')  # the crash came mid-header
    r = score(run, data, out, "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_a_share_cannot_merge_rows_of_a_file_replaced_under_the_same_name(setup, tmp_path):
    """Share 0 scores its batches; then one of share 1's files is replaced by other pixels of the
    same name. Merging would mix rows of two different folders: refused, naming the change."""
    _, run, src = setup
    data = tmp_path / "images"
    data.mkdir()
    for p in src.iterdir():
        (data / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "s.csv"
    r = score(run, data, out, "--shard", "0/2")
    assert r.exit_code == 0 and not out.exists(), r.output
    victim = data / "img039.png"
    before = victim.stat()
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(victim)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    r = score(run, data, out, "--shard", "1/2")
    assert r.exit_code == 2 and "input files changed" in r.output, r.output
    assert not out.exists()
    r = score(run, data, out, "--shard", "0/2", "--resume")  # its own resume is refused too
    assert r.exit_code == 2 and "input files changed" in r.output, r.output


def test_sigterm_is_taken_like_ctrl_c_and_the_job_resumes(setup, tmp_path, monkeypatch):
    """SIGTERM after two finished batches: exit 143 with one line, the journal kept, and --resume
    writes what an uninterrupted job writes."""
    from vaekit.stream.journals import Journal

    _, run, data = setup
    whole = score(run, data, tmp_path / "whole.csv")
    assert whole.exit_code == 0, whole.output
    append, seen = Journal.append, []

    def append_then_term(self, *a, **k):
        append(self, *a, **k)
        seen.append(1)
        if len(seen) == 2:
            signal.raise_signal(signal.SIGTERM)

    old = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(Journal, "append", append_then_term)
    out = tmp_path / "s.csv"
    try:
        r = score(run, data, out)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert r.exit_code == 143, r.output
    assert "terminated" in r.output and "--resume" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists() and (tmp_path / "s.csv.partial").exists()
    monkeypatch.setattr(Journal, "append", append)
    r = score(run, data, out, "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()


_HOLDER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from vaekit.fileio import try_lock
    from vaekit.images.load import iter_load
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    assert try_lock(fd)
    files = sorted(Path(sys.argv[2]).iterdir())
    it = iter_load(files, 16, 1, workers=2)
    next(it)  # the pool is up, its processes forked while the lock is held
    print("ready", flush=True)
    time.sleep(600)
""")


def test_decoding_processes_of_a_killed_job_exit_and_free_its_lock(setup, tmp_path):
    """A job decoding with --workers is killed (SIGKILL: nothing of it runs again). Its worker
    processes were forked holding the job's lock; they must go with it, or --resume is refused
    as 'in use' for as long as they wait for work, which is forever."""
    _, _, data = setup
    lock = tmp_path / "job.lock"
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock), str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.kill()
        p.wait()
        fd = os.open(lock, os.O_RDWR)
        try:  # wait (at most 2,400 polls: 2 minutes, for a busy box) for the orphans to notice; without the fix they never do
            polls = 2400
            while not try_lock(fd) and polls:
                polls -= 1
                time.sleep(0.05)
            assert polls, "the killed job's decoding processes still hold its lock"
        finally:
            os.close(fd)
    finally:
        p.kill()


@pytest.mark.parametrize("job", ["anomaly-score", "encode", "encode-vkc"])
def test_overwrite_never_replaces_a_fifo_or_device_by_a_file(setup, tmp_path, job):
    """`-o /dev/null --overwrite` as root deleted the system's /dev/null and wrote a file there;
    a FIFO (which needs no root) stands in for every such node."""
    _, run, data = setup
    out = tmp_path / ("out.csv" if job == "anomaly-score" else "out.vkc" if job == "encode-vkc" else "out.codes")
    os.mkfifo(out)
    extra = ["--threshold", "0"] if job == "anomaly-score" else ["--quality", "3"] if job == "encode-vkc" else []
    r = invoke(job.split("-vkc")[0], run, data, "-o", out, "--overwrite", *extra)
    assert r.exit_code == 2 and "is a FIFO, not a file" in r.output, r.output
    assert out.is_fifo()
    link = tmp_path / ("l" + out.name)  # a link is replaced, never written through: not one to a FIFO
    link.symlink_to(out)
    r = invoke(job.split("-vkc")[0], run, data, "-o", link, "--overwrite", *extra)
    assert r.exit_code == 2 and "is a link to a FIFO" in r.output, r.output
    assert link.is_symlink() and out.is_fifo()


def test_no_output_goes_into_dev_or_proc(setup):
    """/dev/stdout is a link to /proc/self/fd/1, a regular file when the output is redirected:
    `-o /dev/stdout --overwrite` replaced the system's link by a file."""
    _, run, data = setup
    for out in ("/dev/vaekit-test-never.csv", "/proc/vaekit-test-never.csv"):
        r = invoke("anomaly-score", run, data, "-o", out, "--overwrite", "--threshold", "0")
        assert r.exit_code == 2 and "not a file of yours" in r.output, r.output
        assert not os.path.lexists(out)


EXE = [sys.executable, "-m", "vaekit", "--threads", "1"]


@pytest.mark.parametrize("args, said", [
    (["decode", "RUN"], "Missing argument 'codes'"),
    (["encode", "RUN", "IMAGES", "-o", "x.vkc", "--quality", "0"], "'--quality'"),
    (["anomaly-score", "RUN", "nowhere", "-o", "a.csv"], "'nowhere' does not exist"),
    (["anomaly-score", "RUN", "IMAGES", "--batch-size", "abc"], "'--batch-size'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["encode", "RUN", "IMAGES", "-o", "x.codes", "--bogus"], "--bogus"),
])
@pytest.mark.slow  # starts the installed vaekit in a fresh process
def test_a_usage_error_is_one_line_naming_the_problem_and_where_the_usage_is(setup, tmp_path, args, said):
    """Typer draws a usage error as a box of five lines; vaekit's errors are one line (exit 2)."""
    _, run, data = setup
    args = [str(run) if a == "RUN" else str(data) if a == "IMAGES" else a for a in args]
    r = subprocess.run([*EXE, *args], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0] and "--help`" in lines[0], r.stderr
    assert not r.stdout


@pytest.mark.slow  # starts the installed vaekit in a fresh process
def test_vaekit_alone_still_shows_its_help(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vaekit"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "Usage: vaekit" in r.stdout + r.stderr and "anomaly-score" in r.stdout + r.stderr


def test_fail_on_anomaly_fails_closed_on_an_unreadable_image(setup, tmp_path):
    _, run, data = setup
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "good.png").write_bytes((data / "img000.png").read_bytes())
    r = invoke("anomaly-score", run, gate, "--threshold", "1e30", "--fail-on-anomaly")
    assert r.exit_code == 0, r.output  # nothing above a huge threshold, nothing unreadable
    (gate / "cut.png").write_bytes((data / "img001.png").read_bytes()[:40])  # a truncated PNG
    r = invoke("anomaly-score", run, gate, "--threshold", "1e30", "--fail-on-anomaly")
    assert r.exit_code == 1 and "could not be read" in r.output, r.output


def test_export_refuses_infinite_tolerances_as_bad_input(setup, tmp_path):
    from vaekit.errors import BadInput
    from vaekit.export import export

    _, run, _ = setup
    for rtol, atol in ((math.inf, 1e-4), (1e-4, math.inf), (math.nan, 1e-4)):
        with pytest.raises(BadInput, match="finite"):
            export(run, tmp_path / "m.onnx", rtol=rtol, atol=atol)
    assert not list(tmp_path.iterdir())


def test_ctrl_c_while_writing_a_vkc_does_not_suggest_a_resume_it_would_refuse(setup, tmp_path, monkeypatch):
    from vaekit import codec

    _, run, data = setup

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(codec, "encode", interrupted)
    r = invoke("encode", run, data, "-o", tmp_path / "x.vkc", "--lossless")
    assert r.exit_code == 130 and "one pass" in r.output and "--resume" not in r.output, r.output
    assert not (tmp_path / "x.vkc").exists()


@pytest.mark.parametrize("job", ["anomaly-score", "encode", "reconstruct"])
def test_a_refused_job_leaves_no_folder_it_created(setup, tmp_path, job):
    _, run, _ = setup
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not an image")
    out = tmp_path / "new" / "deep" / {"anomaly-score": "x.csv", "encode": "x.codes", "reconstruct": "r"}[job]
    r = invoke(job, run, junk, "-o", out)
    assert r.exit_code == 2 and "no usable image" in r.output, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk"]


def test_a_signal_before_the_first_training_step_stops_at_once_and_after_it_waits_for_the_step():
    """While the images are decoded there is no step to wait for (decoding 60,000 files outlasted
    a scheduler's grace period): the first SIGTERM interrupts. Once steps run, the first asks
    for a stop after the step, and the second interrupts."""
    from vaekit_cli.output import Terminated
    from vaekit_cli.train import _stop_on_ctrl_c

    with pytest.raises(Terminated), _stop_on_ctrl_c():
        signal.raise_signal(signal.SIGTERM)
    with _stop_on_ctrl_c() as stop:
        assert not stop.asked()  # the first step asks
        signal.raise_signal(signal.SIGTERM)
        assert stop.asked() and stop.code == 143
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)


_FORKSERVER = textwrap.dedent("""
    import multiprocessing as mp, sys
    from pathlib import Path
    mp.set_start_method("forkserver")
    from vaekit.images.load import iter_load
    files = sorted(Path(sys.argv[1]).iterdir())
    print(sum(x is not None for _, x, _ in iter_load(files, 16, 1, workers=2)))
""")


def test_decoding_processes_work_under_the_forkserver_start_method(setup):
    """Their parent is then the forkserver, not the job: a watch on the parent's pid alone made
    every one of them exit at once (Python 3.14's default start method on Linux)."""
    _, _, data = setup
    r = subprocess.run([sys.executable, "-c", _FORKSERVER, str(data)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == str(N_IMAGES), r.stderr


@pytest.mark.parametrize("epochs, said", [(0, "nothing to resume"), (3, "keeps its last finished epoch (3)")])
def test_a_stopped_run_says_how_to_go_on_from_where_it_is(epochs, said, capsys, tmp_path):
    """Stopped before its first epoch ended, a run has no checkpoint: it said to --resume, which
    then found nothing to resume."""
    import typer
    from types import SimpleNamespace

    from vaekit_cli.train import _report

    with pytest.raises(typer.Exit) as stopped:
        _report(SimpleNamespace(stopped=True, epochs_done=epochs), None, tmp_path / "run", 143)
    text = capsys.readouterr().err
    assert stopped.value.exit_code == 143 and said in " ".join(text.split()) and "terminated" in text
    assert ("--overwrite" in text) == (epochs == 0) and ("--resume" in text) == (epochs > 0)
