"""`vaekit train` attacked by a careless or hostile user: torchrun ranks that must fail together
when rank 0 refuses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_distributed import write_rectangles

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
