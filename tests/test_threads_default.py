"""Under load (issue 21, item 14): `vaekit` lets torch's OpenMP threads sleep while they wait, so
a training beside another busy process is not eaten by spinning threads (benchmarks/train_threads.py
measures it; docs/scaling.md has the figures). These tests check the policy torch loads with, in
a fresh `vaekit` process, and that a policy the user chose is kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each test starts vaekit, and torch, in a fresh process

# runs a real command (vaekit threshold on a folder that is no run: exit 2), then reports the
# policy in the environment, where torch's OpenMP reads it when the command imports torch
PROBE = r"""
import os, sys
from vaekit_cli.main import app
try:
    app(["--threads", "1", "threshold", sys.argv[1]], standalone_mode=False)
except Exception:
    pass
print(os.environ.get("OMP_WAIT_POLICY"))
"""


@pytest.mark.parametrize("given,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_vaekit_sets_sleeping_waits_unless_the_user_chose(tmp_path, given, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if given:
        env["OMP_WAIT_POLICY"] = given
    r = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == expected


def test_a_users_spin_count_is_kept_too(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["GOMP_SPINCOUNT"] = "1000"
    r = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.split()[0] == "None", r.stderr
