"""Crashes mid-training: SIGKILL at chosen and at random moments, NaN/inf losses, full disks.

Training runs in child processes forked from a server that has already imported torch (a
fresh interpreter takes seconds to import it on this machine), so a test can kill and resume
a run many times. A child kills itself at a chosen point (inside a file write, between two
writes, mid-epoch, while decoding) by way of patches made in the child only: the library has
no hooks for this. Every resume must succeed, and the finished run must equal, bit for bit,
one that was never interrupted.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import shutil
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from vaekit.training import checkpoint
from vaekit.training import metrics, rundir
from vaekit.config import ModelConfig, TrainConfig

MODEL = ModelConfig(image_size=16, channels=1, latent_dim=4, base_channels=4)
EPOCHS = 6
# a checkpoint every epoch (the kill points name them)
TRAIN = TrainConfig(epochs=EPOCHS, batch_size=4, lr=3e-3, seed=0, device="cpu", checkpoint_every=1)
KILLED = -signal.SIGKILL


def make_images(folder: Path, n: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:16, :16]
    for i in range(n):
        cy, cx = 5 + i % 6, 10 - i % 5
        Image.fromarray(np.where((yy - cy) ** 2 + (xx - cx) ** 2 < 12, 220, 30).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return folder


# --- the child ---------------------------------------------------------------------------------

def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(plan: tuple | None):
    """Patch this (child) process to SIGKILL itself at the point `plan` names; return the
    progress callback to give training.

      ("replace", pattern, n, "before"|"after"): around the n-th rename onto a file whose
          path contains `pattern` (the data is written and synced; the rename is the commit)
      ("partial", pattern, n): half-way through writing the n-th temporary file for `pattern`
      ("step", epoch, step): after training step `step` of epoch `epoch` (1-based)
      ("decode", k): after decoding the k-th image into the pixel cache
    """
    kind = plan[0] if plan else None
    seen = {"n": 0}

    def hit(path) -> bool:
        if plan[1] in os.fspath(path):
            seen["n"] += 1
            return seen["n"] == plan[2]
        return False

    if kind == "replace":
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            now = hit(dst)
            if now and plan[3] == "before":
                _die()
            real_replace(src, dst, *a, **k)
            if now and plan[3] == "after":
                _die()

        os.replace = replace
    elif kind == "partial":
        from vaekit.fileio import atomic

        real_fdopen, real_new_file, names = os.fdopen, atomic._unnamed_or_named, {}

        def new_file(path, tmp):  # an unnamed file's /proc link names its folder only: remember its target
            fd, named = real_new_file(path, tmp)
            names[fd] = os.fspath(path)
            return fd, named

        atomic._unnamed_or_named = new_file

        class HalfWriter:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                _die()

            def __getattr__(self, name):
                return getattr(self.f, name)

        def fdopen(fd, *a, **k):
            f = real_fdopen(fd, *a, **k)
            if "w" not in (a[0] if a else k.get("mode", "r")):  # files are read through fdopen too
                return f
            return HalfWriter(f) if hit(names.pop(fd, None) or os.readlink(f"/proc/self/fd/{fd}")) else f

        os.fdopen = fdopen

    def progress(done, total, phase="", **m):
        if kind == "step" and phase == "train" and (m["epoch"], done) == plan[1:]:
            _die()
        if kind == "decode" and phase == "decode" and done == plan[1]:
            _die()

    return progress


def _job(folder: str, out: str, cache: str, plan: tuple | None) -> None:
    """Train, or resume when the run has a checkpoint to resume (else start afresh)."""
    torch.set_num_threads(1)
    from vaekit.train import train

    progress = _arm(plan)
    resume = (Path(out) / rundir.CHECKPOINT_DIR / rundir.RESUME).exists()
    train(folder, out, MODEL, TRAIN, channels=1, resume=resume, overwrite=not resume, cache_dir=Path(cache),
          progress=progress)


@pytest.fixture(scope="module")
def forks():
    ctx = multiprocessing.get_context("forkserver")
    # what a training child would otherwise import itself (torch._dynamo alone: seconds, via AdamW)
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "numpy.ma", "vaekit.train", "vaekit.inference.engine_torch",
                                "vaekit.anomaly", "test_crash"])

    def start(folder, out, cache, plan=None, kill_after: float | None = None) -> int:
        p = ctx.Process(target=_job, args=(str(folder), str(out), str(cache), plan))
        p.start()
        p.join(kill_after)
        if p.is_alive():
            p.kill()  # SIGKILL, from outside
            p.join()
        return p.exitcode

    return start


@pytest.fixture(scope="module")
def setup(tmp_path_factory, forks):
    base = tmp_path_factory.mktemp("crash")
    images = make_images(base / "images")
    assert forks(images, base / "reference", base / "ref-cache") == 0
    return base, images


def assert_same_run(run: Path, reference: Path) -> None:
    last = f"epoch-{EPOCHS - 1:04d}.safetensors"
    for name in (rundir.WEIGHTS, f"{rundir.CHECKPOINT_DIR}/{last}"):
        a, b = load_file(run / name), load_file(reference / name)
        assert sorted(a) == sorted(b)
        for k in a:
            if not k.startswith("rng"):
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")
    rows = [(r["train_loss"], r["val_loss"]) for r in metrics.read_metrics(run)]
    assert rows == [(r["train_loss"], r["val_loss"]) for r in metrics.read_metrics(reference)]
    assert rundir.read_config(run)["anomaly"] == rundir.read_config(reference)["anomaly"]
    assert json.loads((run / "checkpoint" / "resume.json").read_text())["epoch"] == EPOCHS - 1
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [last, rundir.RESUME]
    assert not [p for p in run.rglob("*.tmp")], "temporary files left behind"


# Each kill is followed by a resume (or a fresh start where no checkpoint exists yet), which
# the next plan kills in turn; the last resume finishes the run.
PLANS = [
    ("decode", 3),  # while filling the pixel cache
    ("replace", "config.json", 1, "after"),  # the run exists, no epoch yet
    ("step", 1, 2),  # in the middle of the first epoch
    ("replace", "metrics.jsonl", 1, "after"),  # first epoch's metrics written, no checkpoint
    ("partial", "epoch-0000", 1),  # half of the first checkpoint written
    ("replace", "epoch-0000", 1, "after"),  # checkpoint in place, resume.json not yet
    ("replace", "resume.json", 1, "after"),  # resume.json written, old checkpoints not yet pruned
    ("step", 2, 1),  # resumed, then killed in the second epoch
    ("replace", "epoch-0001", 1, "before"),  # a complete temporary checkpoint, not renamed
    ("partial", "resume.json", 1),  # new checkpoint in place, half a resume.json
    ("replace", "resume.json", 2, "before"),  # one more epoch done, killed in the next commit
    ("replace", "metrics.jsonl", 1, "before"),
    ("replace", "config.json", 1, "before"),  # at the very end: the threshold being stored
    ("partial", "preview.png", 1),  # the last file of all
]


@pytest.mark.slow
def test_sigkill_at_chosen_points_then_resume_is_exact(setup, forks):
    base, images = setup
    run, cache = base / "chosen", base / "chosen-cache"
    for i, plan in enumerate(PLANS):
        assert forks(images, run, cache, plan) == KILLED, f"kill {i} {plan} did not happen (or training failed)"
        if plan[0] == "replace" and plan[1] == "resume.json" and plan[2] == 1:
            # what an interrupted write of a later checkpoint could leave: a stray temporary
            # file and a newer, truncated checkpoint that resume.json does not name
            (run / "checkpoint" / ".epoch-0003.safetensors.x1y2z3.tmp").write_bytes(b"\0" * 100)
            (run / "checkpoint" / "epoch-0004.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{")
    assert forks(images, run, cache) == 0
    assert_same_run(run, base / "reference")


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(setup, forks):
    """Ten kills from outside after seeded random delays (a child that finishes first simply
    finishes; the next one resumes a finished run), then one last resume."""
    base, images = setup
    run = base / "random"
    rng = np.random.default_rng(2024)
    for delay in rng.uniform(0.0, 0.5, 10):
        assert forks(images, run, base / "ref-cache", kill_after=float(delay)) in (KILLED, 0)
    assert forks(images, run, base / "ref-cache") == 0
    assert_same_run(run, base / "reference")


def test_stray_partial_cache_entries_are_removed(tmp_path):
    from vaekit.training import cache

    folder = make_images(tmp_path / "images", n=3)
    paths = sorted(folder.iterdir())
    key = cache.cache_key(paths, 16, 1)
    old = tmp_path / "cache" / f".{key}.u8.killed.tmp"
    fresh = tmp_path / "cache" / f".{key}.u8.writing.tmp"
    for p in (old, fresh):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"\0" * 64)
    os.utime(old, (1, 1))
    cache.load_cached(paths, 16, 1, cache_dir=tmp_path / "cache")
    assert not old.exists()  # long untouched: its writer is gone
    assert fresh.exists()  # may belong to a process writing it right now


# --- NaN and inf -------------------------------------------------------------------------------

def _poison(monkeypatch, value: float) -> None:
    """Every loss from now on multiplied by `value` (NaN or inf)."""
    import vaekit.training.trainer as t  # the training steps

    real = t.negative_elbo

    def poisoned(*a, **k):
        loss = real(*a, **k)
        loss.total = loss.total * value
        return loss

    monkeypatch.setattr(t, "negative_elbo", poisoned)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, value):
    from vaekit.train import train
    from vaekit.training.loop import TrainingError

    images = make_images(tmp_path / "images")
    cfg = TrainConfig(epochs=2, batch_size=4, seed=0, device="cpu", folds=0)  # no fold models: the loop is the subject
    train(images, tmp_path / "run", MODEL, cfg, channels=1)
    before = {p.relative_to(tmp_path / "run"): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    _poison(monkeypatch, value)
    with pytest.raises(TrainingError) as e:
        train(images, tmp_path / "run", MODEL, cfg, channels=1, resume=True, resume_epochs=4)
    # inf in one step makes the weights, so the later losses, NaN: either may be reported
    assert re.match(r"loss became (nan|inf) in epoch 3", str(e.value)), str(e.value)
    assert "epoch 2" in str(e.value) and str(tmp_path / "run") in str(e.value)
    after = {p.relative_to(tmp_path / "run"): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before  # nothing written: the checkpoint, weights, metrics and config are the good ones
    # and the run resumes from there once the cause is gone
    monkeypatch.undo()
    result, _ = train(images, tmp_path / "run", MODEL, cfg, channels=1, resume=True, resume_epochs=4)
    assert result.epochs_done == 4


def test_non_finite_loss_in_the_first_epoch_does_not_promise_a_checkpoint(tmp_path, monkeypatch):
    """Nothing has been saved yet: the message must not claim a checkpoint is kept."""
    from vaekit.train import train
    from vaekit.training.loop import TrainingError

    images = make_images(tmp_path / "images")
    _poison(monkeypatch, float("nan"))
    with pytest.raises(TrainingError) as e:
        train(images, tmp_path / "run", MODEL, TrainConfig(epochs=2, batch_size=4, device="cpu"), channels=1)
    assert "loss became nan in epoch 1" in str(e.value)
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert "checkpoint" not in str(e.value), f"promises a checkpoint that does not exist: {e.value}"


def test_cli_exit_code_3_on_nan(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    images = make_images(tmp_path / "images")
    _poison(monkeypatch, float("nan"))
    r = CliRunner().invoke(app, ["train", str(images), "--out", str(tmp_path / "run"), "--image-size", "16",
                                 "--latent-dim", "4", "--base-channels", "4", "--epochs", "1", "--device", "cpu"])
    assert r.exit_code == 3, r.output
    assert "loss became nan in epoch 1" in r.output and "Traceback" not in r.output


# --- full disk, read-only folder ---------------------------------------------------------------

def _full_disk(monkeypatch, where: str):
    """os.fsync fails with ENOSPC for files written under `where`, as on a full disk."""
    real = os.fsync

    def fsync(fd):
        if where in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_full_disk_while_writing_a_checkpoint(tmp_path, monkeypatch):
    from vaekit.train import train

    images = make_images(tmp_path / "images")
    cfg = TrainConfig(epochs=1, batch_size=4, seed=0, device="cpu")
    train(images, tmp_path / "run", MODEL, cfg, channels=1)
    before = _snapshot(tmp_path / "run" / "checkpoint")
    _full_disk(monkeypatch, "/checkpoint/")
    with pytest.raises(OSError) as e:
        train(images, tmp_path / "run", MODEL, cfg, channels=1, resume=True, resume_epochs=2)
    assert e.value.errno == errno.ENOSPC
    assert str(e.value) == f"cannot write {tmp_path / 'run' / 'checkpoint' / 'epoch-0001.safetensors'}: No space left on device"
    assert _snapshot(tmp_path / "run" / "checkpoint") == before  # no temporary file, nothing replaced
    monkeypatch.undo()
    result, _ = train(images, tmp_path / "run", MODEL, cfg, channels=1, resume=True, resume_epochs=2)
    assert result.epochs_done == 2


def test_full_disk_while_writing_codes_keeps_the_old_file(tmp_path, monkeypatch, trained):
    import vaekit
    from vaekit import codes

    model = vaekit.load(trained)
    out = tmp_path / "out" / "images.codes"
    codes.encode_folder(model, trained.parent / "images", out)
    before = _snapshot(out.parent)
    _full_disk(monkeypatch, str(out.parent))
    with pytest.raises(OSError, match=f"cannot write {out}: No space left on device"):
        codes.encode_folder(model, trained.parent / "images", out, precision="f32", overwrite=True)
    assert _snapshot(out.parent) == before


def test_full_disk_while_writing_scores_keeps_the_old_file(tmp_path, monkeypatch, trained):
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    out = tmp_path / "out" / "scores.csv"
    out.parent.mkdir()
    out.write_text("the previous scores\n")
    _full_disk(monkeypatch, str(out.parent))
    r = CliRunner().invoke(app, ["anomaly-score", str(trained), str(trained.parent / "images"), "-o", str(out),
                                 "--overwrite"])
    assert r.exit_code == 2, r.output
    assert f"cannot write {out}: No space left on device" in " ".join(r.output.split())
    assert _snapshot(out.parent) == {"scores.csv": b"the previous scores\n"}


@pytest.mark.slow  # starts the installed vaekit in a fresh process
def test_a_journal_line_that_cannot_be_written_is_a_clear_error_and_resume_finishes(tmp_path, trained):
    """The real thing for appends: a file size limit (RLIMIT_FSIZE) stops the journal mid-job."""
    import resource
    import subprocess
    import sys

    images, out = trained.parent / "images", tmp_path / "out" / "scores.csv"

    def score(to: Path) -> list[str]:
        return [sys.executable, "-m", "vaekit", "--threads", "1", "anomaly-score", str(trained), str(images), "-o", str(to),
                "--batch-size", "1", "--threshold", "0"]

    cmd = score(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "300"}

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))  # the settings line and a few batches

    r = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=limited)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"cannot write {out}" in " ".join(r.stderr.split()) and "Traceback" not in r.stderr
    assert not out.exists() and out.with_name("scores.csv.partial").exists()
    # the rest needs no limit: the same command in this process (a fresh one costs seconds of imports)
    from typer.testing import CliRunner

    from vaekit_cli.main import app

    r = CliRunner().invoke(app, [*cmd[3:], "--resume"])
    assert r.exit_code == 0, r.output
    again = tmp_path / "again.csv"
    r = CliRunner().invoke(app, score(again)[3:])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == again.read_bytes() and not out.with_name("scores.csv.partial").exists()


def test_read_only_folder_while_writing_a_checkpoint(tmp_path, trained):
    """The real thing, not a patch: a folder without write permission (root's override dropped)."""
    import hostile
    from vaekit.train import train

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = _snapshot(run)
    (run / "checkpoint").chmod(0o555)
    try:
        with hostile.unprivileged(), pytest.raises(PermissionError) as e:
            train(trained.parent / "images", run, MODEL, TRAIN, channels=1, resume=True, resume_epochs=3,
                  cache_dir=tmp_path / "cache")
    finally:
        (run / "checkpoint").chmod(0o755)
    assert str(e.value) == f"cannot write {run / 'checkpoint' / 'epoch-0002.safetensors'}: Permission denied"
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k.startswith("checkpoint/")} == \
        {k: v for k, v in before.items() if k.startswith("checkpoint/")}
    assert checkpoint.load_checkpoint(run)[1]["epoch"] == 1


def test_atomic_writes_honour_the_umask_and_keep_a_files_mode(tmp_path):
    from vaekit.fileio import atomic_write_bytes

    old = os.umask(0o027)
    try:
        from vaekit.fileio import atomic

        atomic._umask.cache_clear()
        atomic_write_bytes(tmp_path / "new.bin", b"1")
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o640  # not mkstemp's 0o600
        (tmp_path / "new.bin").chmod(0o604)
        atomic_write_bytes(tmp_path / "new.bin", b"2")
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o604
    finally:
        os.umask(old)
        atomic._umask.cache_clear()


@pytest.mark.parametrize("when", ["just created", "while writing"])
def test_a_ctrl_c_at_any_point_of_an_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch, when):
    # decode of 5,000 images interrupted by Ctrl-C once left a ".NAME.xxxx.tmp": the interrupt
    # came after the temporary file was created and before the writer knew its name
    import vaekit.fileio as fileio

    (tmp_path / "old.png").write_bytes(b"old")
    real_open = os.open

    def open_then_interrupt(*a, **k):
        fd = real_open(*a, **k)
        if when == "just created":
            raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(fileio.os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_writer(tmp_path / "old.png") as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.png"] and (tmp_path / "old.png").read_bytes() == b"old"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from vaekit.train import train

    base = tmp_path_factory.mktemp("trained")
    images = make_images(base / "images", n=8)
    train(images, base / "run", MODEL, TrainConfig(epochs=2, batch_size=4, seed=0, device="cpu"), channels=1,
          cache_dir=base / "cache")
    return base / "run"


def test_a_model_whose_codes_overflow_is_a_failed_training_not_a_bug():
    """A huge --lr can leave the loss finite for an epoch while the weights send the codes to
    inf; the calibration then has no code bank to store: TrainingFailed (exit 1), not a ValueError."""
    from types import SimpleNamespace

    import numpy as np
    import pytest

    from vaekit.errors import TrainingFailed
    from vaekit.training.finish import _with_codes

    calibration = SimpleNamespace(global_tests=["error_high", "code_far"], with_codes=lambda codes: "stored")
    data = SimpleNamespace(images=np.zeros((3, 1, 8, 8), np.uint8))
    finite = SimpleNamespace(encode=lambda x: (np.zeros((len(x), 4), np.float32),))
    assert _with_codes(calibration, finite, data, np.arange(3)) == "stored"
    overflowed = SimpleNamespace(encode=lambda x: (np.full((len(x), 4), np.inf, np.float32),))
    with pytest.raises(TrainingFailed, match="not finite"):
        _with_codes(calibration, overflowed, data, np.arange(3))
