"""`vaekit train` throughput alone and beside busy processes, for several thread settings.

    python benchmarks/train_threads.py [--reps 3] [--epochs 6] [--images 1024] [--out /tmp/tt]
                                       [--settings default,threads1,shipped]

Each run is the installed `vaekit train` in a fresh process (the OpenMP runtime reads its
environment once, when torch loads), on the same cached images; its throughput is the median of
the img/s the command prints for epochs 2 onwards (epoch 1 warms up). A "busy process" is a
Python loop that never sleeps, the way a compile or a test run holds a core. Conditions and
settings run in an order that alternates between repetitions, so drifting machine load hits
them alike; the medians over repetitions are reported, with the load average seen.

Settings (the environment and options of each run):
  default   vaekit 0.2: torch's defaults, one thread per core, libgomp spinning 300,000 rounds
            before it sleeps (its default when OMP_WAIT_POLICY is unset; set explicitly here, as
            vaekit now sets a policy when none is given)
  threads1  --threads 1
  active    one thread per core, OMP_WAIT_POLICY=ACTIVE (threads never sleep)
  shipped   no options, no environment: what the installed vaekit does by default (now: one
            thread per core, OMP_WAIT_POLICY=PASSIVE, threads sleep when they wait)
Targets (issue 21): beside one busy process >= 0.45x its own idle throughput, idle >= 0.90x of
`default` idle.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SETTINGS = {
    "default": ({"GOMP_SPINCOUNT": "300000"}, []),
    "threads1": ({}, ["--threads", "1"]),
    "active": ({"OMP_WAIT_POLICY": "ACTIVE"}, []),
    "shipped": ({}, []),
}
CONDITIONS = {"alone": 0, "beside 1 busy": 1, "beside 2 busy": 2}
EPOCH = re.compile(r"^epoch\s+(\d+)\s.*?([\d.]+) img/s\s*$", re.M)
VAEKIT = str(Path(sys.executable).with_name("vaekit"))


def write_images(folder: Path, n: int, size: int = 32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) != n:
        rng = np.random.default_rng(0)
        for i in range(n):
            x = np.full((size, size), 20, np.uint8)
            r, c = rng.integers(0, size // 2, 2)
            x[r : r + size // 3, c : c + size // 3] = rng.integers(100, 256)
            Image.fromarray(x).save(folder / f"img{i:05d}.png")
    return folder


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def train_once(images: Path, out: Path, setting: str, epochs: int, cache: Path) -> float:
    """img/s of one `vaekit train`: the median over epochs 2..N of what it prints."""
    env, options = SETTINGS[setting]
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                               "VAEKIT_THREADS", "MKL_NUM_THREADS")}
    cmd = [VAEKIT, *options, "train", str(images), "--out", str(out), "--overwrite", "--epochs", str(epochs),
           "--image-size", "32", "--latent-dim", "16", "--batch-size", "64", "--device", "cpu", "--seed", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**clean, **env, "VAEKIT_CACHE_DIR": str(cache),
                                                                   "COLUMNS": "200"})
    rates = [float(v) for e, v in EPOCH.findall(r.stderr + r.stdout) if int(e) >= 2]  # epoch lines: stderr
    if not rates:
        raise SystemExit(f"vaekit train printed no epoch lines ({setting}, exit {r.returncode}):\n{r.stderr}")
    if r.returncode != 0:  # the epochs ran (and were timed); what failed came after them
        print(f"  (note: vaekit train exited {r.returncode} after its epochs: {r.stderr.strip().splitlines()[-1]})")
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--first-rep", type=int, default=1, help="start at this repetition (its order alternates)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path("/tmp/vaekit-train-threads"))
    ap.add_argument("--settings", default="default,threads1,shipped")
    args = ap.parse_args()
    settings = args.settings.split(",")
    images = write_images(args.out / "images", args.images)
    results: dict[tuple[str, str], list[float]] = {}
    loads = []
    for rep in range(args.first_rep - 1, args.first_rep - 1 + args.reps):
        conds = list(CONDITIONS) if rep % 2 == 0 else list(CONDITIONS)[::-1]
        for cond in conds:
            hogs = busy(CONDITIONS[cond])
            try:
                order = settings if rep % 2 == 0 else settings[::-1]
                for s in order:
                    rate = train_once(images, args.out / "run", s, args.epochs, args.out / "cache")
                    results.setdefault((s, cond), []).append(rate)
                    loads.append(os.getloadavg()[0])
                    print(f"rep {rep + 1} {cond:>14} {s:>9}: {rate:7.0f} img/s (load {loads[-1]:.1f})", flush=True)
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
    report(settings, results, loads)


def report(settings, results, loads) -> None:
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{os.cpu_count()} cores; load average during the runs {min(loads):.1f}-{max(loads):.1f} "
          f"(median {statistics.median(loads):.1f}); medians of {len(next(iter(results.values())))} runs, img/s")
    print(f"{'setting':>9} " + " ".join(f"{c:>14}" for c in CONDITIONS) + "   beside 1 / alone   alone / default")
    for s in settings:
        row = [med[(s, c)] for c in CONDITIONS]
        idle = row[0] / med[("default", "alone")] if ("default", "alone") in med else float("nan")
        print(f"{s:>9} " + " ".join(f"{v:14.0f}" for v in row) + f"   {row[1] / row[0]:16.2f}   {idle:15.2f}")


if __name__ == "__main__":
    main()
