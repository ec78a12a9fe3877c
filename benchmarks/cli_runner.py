"""Run the installed `vaekit` command as a user would, for the benchmarks (the venv's own executable)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VAEKIT = Path(sys.executable).parent / "vaekit"


def vaekit(threads: int, *args) -> str:
    """stdout of `vaekit --threads N ARGS...`; a failure stops the benchmark with its stderr."""
    cmd = [str(VAEKIT), "--threads", str(threads), *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return res.stdout
