"""Exact copies in a training folder: does the stored threshold keep its promise on new images?

    python benchmarks/copies_threshold.py [--sets twice,one100] [--threads 1] [--work DIR]

Normal images: scikit-learn's 8x8 digits of one class (0), enlarged to 32 px; the held-out normal
images are the class's other digits, never copied. Sets:

    twice    40 distinct digits, each saved twice (80 files): a folder exported twice over
    one100   20 distinct digits and one more saved 100 times (120 files): one part photographed
             again and again by a camera that writes the same bytes

Through the CLI at default settings: `vaekit train`, then `vaekit evaluate` with the held-out
normal digits and the other classes' digits as anomalies: the false-positive rate at the stored
threshold against the rate `vaekit train` promised (from the number of held-out scores the
threshold came from, vaekit.anomaly.expected_fpr), and the AUROC. What decided that exact copies are kept in one split
(vaekit/training/splits.py, docs/thresholds.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runner import set_arguments, trained_and_evaluated  # noqa: E402


def _write(folder: Path, images, names) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for a, name in zip(images, names):
        Image.fromarray(a).resize((32, 32), Image.BICUBIC).save(folder / f"{name}.png")


def build(spec: str, root: Path) -> Path:
    """Write the set `spec` under root once (train/, normal/, anomalous/); its folder."""
    from sklearn.datasets import load_digits

    out = root / spec
    if (out / "anomalous").is_dir():
        return out
    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)
    zeros = x[d.target == 0][np.random.default_rng(0).permutation(int((d.target == 0).sum()))]
    if spec == "twice":
        distinct = zeros[:40]
        _write(out / "train", np.concatenate([distinct, distinct]), [f"a{i:03d}" for i in range(80)])
        rest = zeros[40:]
    elif spec == "one100":
        _write(out / "train", np.concatenate([zeros[:20], np.repeat(zeros[20:21], 100, 0)]),
               [f"a{i:03d}" for i in range(120)])
        rest = zeros[21:]
    else:
        raise SystemExit(f"unknown set {spec!r}")
    _write(out / "normal", rest, [f"n{i:03d}" for i in range(len(rest))])
    others = x[d.target != 0][:300]
    _write(out / "anomalous", others, [f"o{i:03d}" for i in range(len(others))])
    return out


def run_set(folder: Path, threads: int) -> dict:
    from vaekit.anomaly import expected_fpr

    got, run = trained_and_evaluated(folder, threads)
    cfg = json.loads((run / "config.json").read_text())
    return {"auroc": got[None]["auroc"], "fpr": got[None]["fpr_at_threshold"], "train s": got["train s"],
            "normal": len(list((folder / "normal").iterdir())),
            "promised": expected_fpr(cfg["anomaly"]["n"], cfg["train"]["threshold_quantile"])}


def main() -> None:
    args, work = set_arguments(__doc__, "twice,one100", "copies_threshold_")
    print("| set | AUROC | FPR at the threshold (held-out normal) | promised | train s |\n|---|---|---|---|---|")
    for spec in args.sets.split(","):
        r = run_set(build(spec, work), args.threads)
        print(f"| {spec} | {r['auroc']:.4f} | {r['fpr']:.3f} (of {r['normal']}) | {r['promised']:.3f} | "
              f"{r['train s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
