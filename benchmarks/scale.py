"""Scaling with the number of images: first-pass decode time, epoch time and peak memory.

    python benchmarks/scale.py [--sizes 1000,6000,10000,60000] [--workers 2] [--threads 1]

Generates 32x32 RGB PNGs (in worker processes; folders of fewer images hard-link the first
files of the largest), then for each size runs, each in a fresh process:
  1. the first pass on a cold pixel cache (find, decode in W worker processes, write the cache),
  2. `vaekit train ... --epochs 1` on the warm cache: the epoch time and the process's peak RSS,
  3. with --compare-mmap, once more with batches read by indexing the memmap (the old way),
     to show what the pread reader saves.
Peak RSS is the whole process's (torch, the file list, everything), from wait4's rusage.
A small model (--base-channels 8) keeps the run to a few minutes; the data path is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DECODE = (
    "import sys, time; from vaekit.training.data import load_dataset; t = time.perf_counter(); "
    "load_dataset(sys.argv[1], int(sys.argv[2]), 'auto', workers=int(sys.argv[3])); "
    "print(time.perf_counter() - t)"
)
MMAP_PATCH = (  # the old way, patched in for the A/B: batches read by indexing the memmap
    "import numpy as np, vaekit.training.data, vaekit.training.trainer; "
    "vaekit.training.data._gather = vaekit.training.trainer._gather = lambda images, idx: np.ascontiguousarray(images[idx]); "
    "from vaekit_cli.main import main; main()"
)


def _write_chunk(folder: str, start: int, stop: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(start)
    for i in range(start, stop):
        x = np.full((size, size, 3), 20, np.uint8)
        r, c = rng.integers(0, size // 2, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        x[r : r + h, c : c + w] = rng.integers(100, 256, 3)
        Image.fromarray(x).save(f"{folder}/img{i:06d}.png")


def make_folders(work: Path, sizes: list[int], image_size: int, workers: int) -> dict[int, Path]:
    biggest = max(sizes)
    full = work / f"images-{biggest}"
    if len(list(full.glob("*.png"))) != biggest:
        shutil.rmtree(full, ignore_errors=True)
        full.mkdir(parents=True)
        step = 2000
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_chunk, *zip(*[(str(full), s, min(s + step, biggest), image_size)
                                               for s in range(0, biggest, step)])))
    folders = {biggest: full}
    names = sorted(p.name for p in full.glob("*.png"))
    for n in sizes:
        if n == biggest:
            continue
        folder = work / f"images-{n}"
        if len(list(folder.glob("*.png"))) != n:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for name in names[:n]:
                os.link(full / name, folder / name)
        folders[n] = folder
    return folders


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, int, str, float]:
    """Run a process to the end; return (wall seconds, peak RSS in MiB, stdout, CPU seconds)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{argv} failed ({proc.returncode}):\n{err.read().decode(errors='replace')[-3000:]}")
        wall, cpu = time.perf_counter() - t0, usage.ru_utime + usage.ru_stime
        return wall, usage.ru_maxrss // 1024, out.read().decode(), cpu  # ru_maxrss: KiB on Linux


def epoch_seconds(run: Path) -> float:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,6000,10000,60000")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode processes on the first pass")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--base-channels", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--compare-mmap", action="store_true", help="also train reading batches through the memmap")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vaekit-bench-scale")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    t0 = time.perf_counter()
    folders = make_folders(args.work, sizes, args.image_size, args.workers)
    print(f"generated/linked {sum(sizes)} PNGs in {time.perf_counter() - t0:.1f} s", flush=True)

    cache = args.work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "VAEKIT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(args.threads)}
    common = ["--threads", str(args.threads), "train"]
    flags = ["--image-size", str(args.image_size), "--epochs", "1", "--base-channels", str(args.base_channels),
             "--batch-size", str(args.batch_size), "--device", "cpu", "--workers", str(args.workers), "--overwrite"]

    rows = []
    for n in sizes:
        run = args.work / f"run-{n}"
        cmd = [sys.executable, "-m", "vaekit", *common, str(folders[n]), "--out", str(run), *flags]
        decode = float(run_child([sys.executable, "-c", DECODE, str(folders[n]), str(args.image_size),
                                  str(args.workers)], env)[2])  # the first pass, on a cold cache
        warm, rss, _, cpu = run_child(cmd, env)
        row = {"n": n, "first_pass": decode, "epoch": epoch_seconds(run), "warm_total": warm, "cpu": cpu, "rss": rss}
        if args.compare_mmap:
            row["rss_mmap"] = run_child([sys.executable, "-c", MMAP_PATCH, *common, str(folders[n]),
                                         "--out", str(run), *flags], env)[1]
        rows.append(row)
        print(f"  {n} images done", flush=True)

    report(rows, sizes, args)


def report(rows: list[dict], sizes: list[int], args) -> None:
    """The table, the memory ratio and a linear fit of CPU time to the number of images."""
    from vaekit.config import TrainConfig
    from vaekit.training.splits import plan_splits

    cfg = TrainConfig()  # the images an epoch trains on, as `vaekit train` splits them by default
    n_train = {n: len(plan_splits(n, cfg.val_fraction, cfg.calibration_fraction, cfg.seed, cfg.folds,
                                  cfg.threshold_quantile).train) for n in sizes}
    print(f"\n{args.image_size}x{args.image_size} RGB PNGs, ConvVAE base_channels={args.base_channels}, "
          f"batch {args.batch_size}, {args.threads} torch thread(s), {args.workers} decode workers; 1 epoch each")
    head = ("| images | first pass: find + decode + cache (s) | epoch (s) | epoch µs/image | whole warm run (s) "
            "| its CPU time (s) | peak RSS (MiB) |")
    if args.compare_mmap:
        head += " peak RSS, memmap indexing (MiB) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (f"| {r['n']:>6} | {r['first_pass']:>6.1f} | {r['epoch']:>6.2f} | {1e6 * r['epoch'] / n_train[r['n']]:>6.0f} "
                f"| {r['warm_total']:>6.1f} | {r['cpu']:>6.1f} | {r['rss']:>6d} |")
        if args.compare_mmap:
            line += f" {r['rss_mmap']:>6d} |"
        print(line)
    by = {r["n"]: r for r in rows}
    if 6000 in by and 60000 in by:
        ratio = by[60000]["rss"] / by[6000]["rss"]
        print(f"peak RSS 60k / 6k: {ratio:.2f} (target <= 1.2)", end="")
        if args.compare_mmap:
            print(f"; with memmap indexing: {by[60000]['rss_mmap'] / by[6000]['rss_mmap']:.2f}", end="")
        print()
    lo, hi = rows[0], rows[-1]
    print(f"epoch time {hi['n']} / {lo['n']} images: {hi['epoch'] / lo['epoch']:.1f}x for {hi['n'] / lo['n']:.0f}x the images")
    # CPU time is immune to other processes on the machine: fit cpu = a + b * n and show the misfit
    n, c = np.array([r["n"] for r in rows], float), np.array([r["cpu"] for r in rows])
    b, a = np.polyfit(n, c, 1)
    worst = np.max(np.abs(c - (a + b * n)) / c)
    print(f"warm-run CPU time = {a:.1f} s + {1e6 * b:.0f} µs x images; largest misfit {100 * worst:.1f}%")


if __name__ == "__main__":
    main()
