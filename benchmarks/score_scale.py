"""Does `vaekit anomaly-score` stream? Peak memory at 6k vs 60k images, with and without --maps,
and throughput against a bare engine loop over pre-decoded batches.

    python benchmarks/score_scale.py [--small 6000] [--large 60000] [--workers 0] [--reps 5] [--out out/score_scale]

The images are synthetic 64x64 gray PNGs (smooth noise, written once and kept in --out); the
model is an untrained 64x64 ConvVAE (random weights: scoring costs the same). Peak RSS is the
`vaekit anomaly-score` process's own (getrusage of a child run alone in a wrapper process).
Targets (issue 14): RSS(large) / RSS(small) <= 1.2 with and without --maps; job throughput
>= 0.9x the bare loop's. Prints one table; nothing is timed in the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZE = 64


def write_images(folder: Path, n: int) -> Path:
    from PIL import Image

    done = folder / f".complete-{n}"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (8, 8)).astype(np.uint8)
        img = Image.fromarray(base).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        img.save(sub / f"img{i:06d}.png")
    done.write_text("")
    return folder


def random_model(run: Path) -> Path:
    if (run / "config.json").exists():
        return run
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from export_support import random_run

    return random_run(run, image_size=SIZE, channels=1, latent_dim=16, base_channels=16)


def peak_rss_mb(args: list[str]) -> float:
    """Peak RSS (MB) of `vaekit ARGS` run alone in a fresh wrapper process."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if r.returncode == 0 else -1)")
    cmd = [sys.executable, "-c", wrapper, sys.executable, "-m", "vaekit", "--threads", "1", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    kb = int(out.stdout.strip().splitlines()[-1])
    if kb < 0:
        raise SystemExit(f"vaekit {' '.join(args)} failed:\n{out.stderr}")
    return kb / 1024


def throughput(run: Path, folder: Path, workers: int, batch: int = 64, reps: int = 3) -> list[tuple[float, float]]:
    """(job images/s, bare loop images/s) per repetition, alternating the two so machine noise
    hits both alike: the same model and folder, in this process, one torch thread."""
    import torch

    import vaekit
    from vaekit import anomaly, stream

    torch.set_num_threads(1)
    model = vaekit.load(run)
    found = stream.find_inputs(folder)
    batches = [b.images for b in stream.iter_batches(found.paths, SIZE, 1, batch)]  # pre-decoded
    out = folder.parent / "throughput.csv"
    pairs = []
    def bare() -> float:
        t = time.perf_counter()
        for x in batches:
            model.score(x, maps=False)
        return len(found.paths) / (time.perf_counter() - t)

    def job() -> float:
        out.unlink(missing_ok=True)
        t = time.perf_counter()
        anomaly.score_to_file(model, folder, out, threshold=0.0, batch_size=batch, workers=workers)
        return len(found.paths) / (time.perf_counter() - t)

    for rep in range(reps):  # the order alternates, so a drift in machine speed favours neither
        if rep % 2:
            j, b = job(), bare()
        else:
            b, j = bare(), job()
        pairs.append((j, b))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=6000)
    ap.add_argument("--large", type=int, default=60000)
    ap.add_argument("--workers", type=int, default=0, help="anomaly-score --workers (default 0, as the CLI's)")
    ap.add_argument("--reps", type=int, default=5, help="throughput repetitions (median reported)")
    ap.add_argument("--out", type=Path, default=Path("out/score_scale"))
    a = ap.parse_args()
    run = random_model(a.out / "run")
    rows = []
    for n in (a.small, a.large):
        folder = write_images(a.out / f"images-{n}", n)
        for maps in (False, True):
            res = a.out / f"scores-{n}-{int(maps)}.csv"
            res.unlink(missing_ok=True)
            extra = ["--maps", str(a.out / f"maps-{n}"), "--overwrite"] if maps else []
            t = time.perf_counter()
            rss = peak_rss_mb(["anomaly-score", str(run), str(folder), "-o", str(res), "--threshold", "0",
                               "--workers", str(a.workers), *extra])
            rows.append((n, maps, rss, n / (time.perf_counter() - t)))
    print(f"{'images':>8} {'--maps':>6} {'peak RSS MB':>12} {'img/s (whole command)':>22}")
    for n, maps, rss, speed in rows:
        print(f"{n:>8} {'yes' if maps else 'no':>6} {rss:>12.0f} {speed:>22.0f}")
    for maps in (False, True):
        small, large = (r for n, m, r, _ in rows if m == maps)
        print(f"RSS ratio {a.large}/{a.small}{' with --maps' if maps else ''}: {large / small:.2f} (target <= 1.2)")
    pairs = throughput(run, a.out / f"images-{a.small}", a.workers, reps=a.reps)
    for i, (job, bare) in enumerate(pairs, 1):
        print(f"throughput rep {i}: job {job:.0f} img/s, bare engine loop {bare:.0f} img/s: {job / bare:.2f}x")
    ratio = statistics.median(job / bare for job, bare in pairs)
    print(f"throughput, median of {len(pairs)}: {ratio:.2f}x the bare loop (target >= 0.9)")


if __name__ == "__main__":
    main()
