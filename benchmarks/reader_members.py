"""The defect reader's training: its members one after another on all of torch's threads (vaekit
before 2026-12-07), or side by side, one thread each (now), alone and beside a busy process.

    python benchmarks/reader_members.py [--reps 3] [--steps 450] [--members 3] [--crops 1000]

Each run trains one reader (`vaekit.reader.train.train_reader`, the default ReaderConfig but for
--steps and --members) in a fresh process with the environment the CLI sets (OMP_WAIT_POLICY=
PASSIVE) and torch's default thread count (one per core), on the same random 64 px grey crops;
"one after another" patches vaekit.reader.members.train_members to run its jobs in turn on all
the threads, as the code before did. A busy process is a Python loop that never sleeps. Settings
and conditions alternate between repetitions; medians of the wall seconds are printed, with the
ratio of the two settings in each condition and the load average seen.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np, torch
from vaekit.reader import members
from vaekit.reader.net import ReaderConfig
from vaekit.reader.train import train_reader

setting, steps, n_members, n_crops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if setting == "one after another":
    real_threads = torch.get_num_threads()
    plain = members.train_members
    def in_turn(jobs, should_stop, threads):
        torch.set_num_threads(real_threads)  # the code before: every member on all of torch's threads
        return plain(jobs, should_stop, 1)
    members.train_members = in_turn
crops = np.random.default_rng(0).integers(0, 256, (n_crops, 1, 64, 64), dtype=np.uint8)
t = time.perf_counter()
train_reader(crops, None, ReaderConfig(steps=steps, members=n_members), seed=0)
print(json.dumps({"seconds": time.perf_counter() - t, "threads": torch.get_num_threads()}))
"""

SETTINGS = ("one after another", "side by side")
CONDITIONS = {"alone": 0, "beside 1 busy": 1}


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def run_once(setting: str, args) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_WAIT_POLICY"] = "PASSIVE"  # what the CLI sets when the user has not
    out = subprocess.run([sys.executable, "-c", CHILD, setting, str(args.steps), str(args.members), str(args.crops)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=450)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--crops", type=int, default=1000)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    args = ap.parse_args()
    conditions = args.conditions.split(",")
    results = {(c, s): [] for c in conditions for s in SETTINGS}
    loads = []
    for rep in range(args.reps):
        for cond in conditions if rep % 2 == 0 else conditions[::-1]:
            hogs = busy(CONDITIONS[cond])
            try:
                for setting in SETTINGS if rep % 2 == 0 else SETTINGS[::-1]:
                    results[cond, setting].append(run_once(setting, args))
                    loads.append(os.getloadavg()[0])
            finally:
                for h in hogs:
                    h.kill()
    print(f"reader of {args.members} members x {args.steps} steps, {os.cpu_count()} CPUs, {args.reps} reps, "
          f"load average seen {min(loads):.2f}-{max(loads):.2f}")
    print(f"{'condition':<16}{'one after another':>20}{'side by side':>16}{'ratio':>9}")
    for cond in conditions:
        a, b = (statistics.median(results[cond, s]) for s in SETTINGS)
        print(f"{cond:<16}{a:>18.1f} s{b:>14.1f} s{a / b:>8.2f}x")


if __name__ == "__main__":
    main()
