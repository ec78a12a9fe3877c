"""`vaekit train` attacked by a careless or hostile user: torchrun ranks that must fail together
when rank 0 refuses, and a resume that must not adopt another run's metrics.jsonl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from test_distributed import write_rectangles
from test_train import MODEL, make_blobs, tcfg
from vaekit.train import train
from vaekit_cli.main import app

runner = CliRunner()
ARGS = ["--image-size", "16", "--latent-dim", "4", "--base-channels", "4", "--batch-size", "8", "--device", "cpu",
        "--folds", "0", "--layout", "vector", "--epochs", "1"]


def _torchrun(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Two CPU ranks (gloo); a generous timeout: before the fix rank 1 waited for torchrun to kill it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vaekit", "--threads", "1", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def env(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAEKIT_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_under_torchrun_every_rank_refuses_an_out_in_use_with_the_same_line(tmp_path, env):
    """Only rank 0 takes the lock: its InUse must reach rank 1, which used to wait in the process
    group until torchrun killed it (~30 s later, with nothing said)."""
    data = write_rectangles(tmp_path / "images", 8)
    out, held = tmp_path / "run", tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib\nfrom vaekit.training.runlock import locked\n"
         f"with locked(pathlib.Path({str(out)!r})):\n    pathlib.Path({str(held)!r}).touch()\n    sys.stdin.read()"],
        stdin=subprocess.PIPE, env=env)
    try:
        while not held.exists():
            assert holder.poll() is None, "the lock holder died"
            time.sleep(0.05)
        done = _torchrun([str(data), "--out", str(out), *ARGS], env)
    finally:
        holder.communicate(b"", timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 2 and lines[0] == lines[1] and "is in use by process" in lines[0], done.stderr
    assert "rank 1 failed" not in done.stderr and "vaekit/training/" not in done.stderr  # no rank's traceback
    assert sorted(p.name for p in out.iterdir()) == [".vaekit.lock"]  # the holder's; nothing written


@pytest.mark.slow
def test_under_torchrun_an_empty_folder_is_one_line_on_every_rank(tmp_path, env):
    (tmp_path / "empty").mkdir()
    done = _torchrun([str(tmp_path / "empty"), "--out", str(tmp_path / "run"), *ARGS], env)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(lines) == 2 and "no image files" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


def _stopped_run(blobs: Path, out: Path, seed: int = 0) -> None:
    """A run of 3 epochs stopped in its second (20 training images, batch 8: 3 steps an epoch)."""
    steps = iter(range(100))
    result, _ = train(blobs, out, MODEL, tcfg(epochs=3, seed=seed), should_stop=lambda: next(steps) >= 4)
    assert result.stopped and result.epochs_done == 1


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return make_blobs(tmp_path_factory.mktemp("blobs"))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["another run's", "edited", "cut short"])
def test_resume_refuses_a_metrics_file_the_checkpoint_was_not_written_with(blobs, tmp_path, how):
    """--resume kept the first history_len rows of whatever metrics.jsonl it found and appended to
    them: a file copied in from another run became this run's history."""
    run = tmp_path / "run"
    _stopped_run(blobs, run)
    metrics = run / "metrics.jsonl"
    if how == "another run's":
        _stopped_run(blobs, tmp_path / "other", seed=1)
        shutil.copyfile(tmp_path / "other" / "metrics.jsonl", metrics)
    elif how == "edited":
        row = json.loads(metrics.read_text())
        metrics.write_text(json.dumps({**row, "train_loss": row["train_loss"] / 2}) + "\n")
    else:
        metrics.write_text("")
    before = metrics.read_bytes()
    done = runner.invoke(app, ["train", str(blobs), "--out", str(run), "--resume"])
    assert done.exit_code == 2, done.output
    assert "metrics.jsonl" in done.output and "Traceback" not in done.output
    assert metrics.read_bytes() == before


@pytest.mark.slow
def test_resume_with_its_own_metrics_still_appends_to_them(blobs, tmp_path):
    run = tmp_path / "run"
    _stopped_run(blobs, run)
    first = (run / "metrics.jsonl").read_text()
    done = runner.invoke(app, ["train", str(blobs), "--out", str(run), "--resume"])
    assert done.exit_code == 0, done.output
    rows = (run / "metrics.jsonl").read_text()
    assert rows.startswith(first) and [json.loads(r)["epoch"] for r in rows.splitlines()] == [1, 2, 3]


def test_ctrl_c_while_the_lock_is_taken_leaves_no_folder_behind(blobs, tmp_path, monkeypatch):
    """A Ctrl-C right after the lock file was made (while its holder is written) left --out
    behind, holding .vaekit.lock: a stray folder, and a lock file in it."""
    from vaekit.training import runlock

    def interrupted(fd, length):
        raise KeyboardInterrupt

    monkeypatch.setattr(runlock.os, "ftruncate", interrupted)
    out = tmp_path / "new" / "run"
    done = runner.invoke(app, ["train", str(blobs), "--out", str(out), *ARGS])
    assert done.exit_code != 0 and isinstance(done.exception, (KeyboardInterrupt, SystemExit)), done.output
    assert not (tmp_path / "new").exists()


def test_stray_cleanup_removes_files_never_folders_or_links(tmp_path):
    """remove_strays unlinked everything named like .config.json.*.tmp: a folder of that shape (an
    export staged in the run: .config.json.onnx.vaekit-export-1-ab.tmp) raised IsADirectoryError.
    Now only files go; a link of that shape stays too (what it points to is not the run's)."""
    from vaekit.training import rundir

    (tmp_path / "checkpoint").mkdir()
    ours = [tmp_path / ".config.json.0123456789.tmp", tmp_path / "checkpoint" / ".epoch-0002.safetensors.abcdef0123.tmp"]
    for p in ours:
        p.write_bytes(b"half-written")
    folder = tmp_path / ".config.json.onnx.vaekit-export-1-ab.tmp"
    folder.mkdir()
    (tmp_path / "elsewhere").write_text("mine")
    link = tmp_path / ".metrics.jsonl.x.tmp"
    link.symlink_to(tmp_path / "elsewhere")
    rundir.remove_strays(tmp_path)
    assert not any(p.exists() for p in ours)
    assert folder.is_dir() and link.is_symlink() and (tmp_path / "elsewhere").read_text() == "mine"
