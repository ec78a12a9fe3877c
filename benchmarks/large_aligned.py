"""Few large aligned images: the grid and its defect readers against a vector model shrunk to 64 px.

    python benchmarks/large_aligned.py [--sets shapes256:0:40,garm0:40,garm5:40] [--threads 1] [--work DIR]

What decided that fewer than 200 images larger than 64 px get the grid whatever their mean image
(docs/detection.md, "Few large images"). Sets, comma-separated:

    shapesSIZE:SEED:N  vaekit's sample shapes (machined washers on fabric, small defects with masks)
                       at SIZE px: N training images; 30 + 30 test images (50 + 50 from 200 up)
    garmK:N            benchmarks/garments.py's product photos of kind K drawn at 112 px (not shrunk
                       to 28): N training images; 100 normal test images and 12 of each other kind

Per set, through the CLI as a user would: `vaekit train` with `--layout vector` (a vector model
at 64 px, what `--layout auto` chose before) and with `--layout grid` (the grid at the images'
own size and its three readers), then `vaekit evaluate` of each score; and PCA-32 on the same
grey pixels. It prints which of the two `--layout auto` picks now. The choose half of the record
is shapes256:0:40,garm0:40,garm5:40; the confirm half shapes128:1:40,garm8:40,garm3:40; the
many-image rows garm0:1000 and shapes128:2:400.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dev_sets  # noqa: E402
import garments  # noqa: E402
from cli_runner import vaekit  # noqa: E402

CHOOSE = "shapes256:0:40,garm0:40,garm5:40"
CONFIRM = "shapes128:1:40,garm8:40,garm3:40"
SCORES = {"vector": ("atypicality", "neg_elbo"), "grid": ("defect", "atypicality", "neg_elbo")}


def build(spec: str, root: Path) -> Path:
    """Write the set `spec` under root/spec (train/, normal/, anomalous/) once; its folder."""
    out = root / spec.replace(":", "_")
    if (out / "train").is_dir():
        return out
    name, *rest = spec.split(":")
    if name.startswith("shapes"):
        from vaekit.sample_data.shapes import write_shapes

        n = int(rest[1])
        k = 30 if n < 200 else 50
        write_shapes(out / "raw", n_train=n, n_test_normal=k, n_test_anomalous=k, size=int(name[6:]), seed=int(rest[0]))
        for src, dst in (("train", "train"), ("test/normal", "normal"), ("test/anomalous", "anomalous")):
            (out / "raw" / src).rename(out / dst)
        return out
    k, n, photos = int(name[4:]), int(rest[0]), dev_sets._photos()
    dev_sets.write_pngs(out / "train", garments.garments(k, n, 1, photos, size=garments.S))
    dev_sets.write_pngs(out / "normal", garments.garments(k, 100, 2, photos, size=garments.S))
    dev_sets.write_pngs(out / "anomalous", np.concatenate(
        [garments.garments(c, 12, 3, photos, size=garments.S) for c in range(10) if c != k]))
    return out


def pca_32(folder: Path) -> float:
    """AUROC of PCA-32's reconstruction error (dev_sets.pca_scores) on the grey pixels."""
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    def grey(sub):
        return np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted((folder / sub).glob("*.png"))])

    normal, bad = grey("normal"), grey("anomalous")
    scores = dev_sets.pca_scores(grey("train"), np.concatenate([normal, bad]))
    return float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(bad))], scores))


def run_set(folder: Path, threads: int) -> dict:
    from vaekit.training.data import probe_layout
    from vaekit.images import find_images

    out = {"auto": probe_layout(find_images(folder / "train"), 1), "PCA-32": pca_32(folder)}
    for layout, scores in SCORES.items():
        run, t0, seconds = folder / f"run_{layout}", time.perf_counter(), float("nan")  # nan: a run of an earlier call
        if not (run / "config.json").is_file():
            vaekit(threads, "train", folder / "train", "--out", run, "--layout", layout, "--overwrite")
            seconds = time.perf_counter() - t0
        out[f"{layout} train s"] = seconds
        for score in scores:
            ev = json.loads(vaekit(threads, "evaluate", run, "--normal", folder / "normal", "--anomalous",
                                   folder / "anomalous", "--score", score, "--json"))
            out[f"{layout} {score}"] = ev["auroc"]
            if score == scores[0]:
                out[f"{layout} FPR"] = ev["fpr_at_threshold"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default=f"{CHOOSE},{CONFIRM}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="large_aligned_"))
    print(f"work folder: {work}")
    cols = ["auto", "vector atypicality", "vector neg_elbo", "grid defect", "grid atypicality", "grid neg_elbo",
            "PCA-32", "vector FPR", "grid FPR", "vector train s", "grid train s"]
    print("| set | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for spec in args.sets.split(","):
        r = run_set(build(spec, work), args.threads)
        cells = [r[c] if isinstance(r[c], str) else f"{r[c]:.4f}" if c.split()[-1] != "s" else f"{r[c]:.0f}"
                 for c in cols]
        print(f"| {spec} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
