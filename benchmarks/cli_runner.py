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


def set_arguments(doc: str, sets: str, prefix: str):
    """(args, work folder) of a benchmark over comma-separated `--sets` (default `sets`), with
    `--threads` (1) and `--work` (default: a new temporary folder named by `prefix`); prints the folder."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--sets", default=sets)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix=prefix))
    print(f"work folder: {work}")
    return args, work


def trained_and_evaluated(folder: Path, threads: int, scores=(None,)) -> tuple[dict, Path]:
    """`vaekit train FOLDER/train` at default settings into FOLDER/run (once: a run already there is
    kept, and its seconds are NaN), then `vaekit evaluate` of FOLDER/normal against FOLDER/anomalous
    with each score (None: the default): ({"train s": ..., score: evaluate's JSON}, the run)."""
    import json
    import time

    run, t0, out = folder / "run", time.perf_counter(), {"train s": float("nan")}
    if not (run / "config.json").is_file():
        vaekit(threads, "train", folder / "train", "--out", run, "--overwrite")
        out["train s"] = time.perf_counter() - t0
    for score in scores:
        extra = [] if score is None else ["--score", score]
        out[score] = json.loads(vaekit(threads, "evaluate", run, "--normal", folder / "normal", "--anomalous",
                                       folder / "anomalous", *extra, "--json"))
    return out, run
