"""Does a few-image threshold keep its promise when the held-out images are new? Offline, on the
runs `benchmarks/inspection.py --work DIR` leaves behind.

    python benchmarks/inspection.py --side 128 --work DIR        # first: the runs and their test folders
    python benchmarks/threshold_draws.py DIR [--draws 300] [--n 4,8]

A surface run with few images calibrates its threshold on one held-out fold (8 of 40 images).
In the inspection benchmark those 8 are windows of the same rows of the photo as the training
windows, and overlap them, while the normal test images come from rows further down. So the
stored threshold's false-positive rate mixes two things: the threshold rule and the photo's
change from band to band. This script separates them. Per photo it scores the 30 normal and 30
defective test images with the run's default score, then, `--draws` times, takes n of the
normal test images (n: as many as the run calibrated on) as the calibration scores, sets the
threshold from them exactly as training does (vaekit.anomaly.quantiles.threshold_of), and
counts the other normal images above it (FPR) and the defective ones above it (TPR). Those
draws are exchangeable, the case the threshold's promise is made for. `--n 4,8` draws those
calibration sizes instead (what one fold of 20 images gives, and the fewest a tail is fitted to).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def images(folder: Path) -> np.ndarray:
    from PIL import Image

    x = np.stack([np.asarray(Image.open(f)) for f in sorted(folder.glob("*.png"))])
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("work", type=Path, help="the --work folder of benchmarks/inspection.py")
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", default=None, help="calibration sizes to draw, e.g. 4,8 (default: the run's own)")
    args = ap.parse_args()
    import torch

    import vaekit as vk
    from vaekit.anomaly.quantiles import expected_fpr, threshold_of

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"{'photo':<8}{'n':>3}{'promised':>10}{'FPR, new images':>17}{'P(FPR>5%)':>11}{'TPR':>7}"
          f"{'   stored threshold: FPR':>25}{'TPR':>7}")
    for photo in sorted((args.work / "inspection").iterdir()):
        run = photo / "run"
        section = json.loads((run / "config.json").read_text()).get("anomaly") if (run / "config.json").is_file() else None
        if section is None:  # not trained (yet)
            continue
        model = vk.load(run, device="cpu")
        normal = model.score(images(photo / "normal"), maps=False).score
        bad = model.score(images(photo / "anomalous"), maps=False).score
        q, stored = section["threshold_quantile"], section["threshold"]
        for n in [int(v) for v in args.n.split(",")] if args.n else [section["n"]]:
            draws = []
            for _ in range(args.draws):
                order = rng.permutation(len(normal))
                t = threshold_of(normal[order[:n]], q)[0]
                draws.append((np.mean(normal[order[n:]] > t), np.mean(bad > t)))
            fpr, tpr = np.array(draws).T
            print(f"{photo.name:<8}{n:>3}{expected_fpr(n, q):>10.3f}{fpr.mean():>17.3f}"
                  f"{np.mean(fpr > 0.05):>11.2f}{tpr.mean():>7.3f}{np.mean(normal > stored):>25.3f}"
                  f"{np.mean(bad > stored):>7.3f}", flush=True)


if __name__ == "__main__":
    main()
