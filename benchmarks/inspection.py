"""Few large images with small defects (an inspection setting), through the CLI at default settings.

    python benchmarks/inspection.py [--choose brick,gravel] [--confirm grass,ihc] [--side 256] [--width W]
                                    [--train-images 40] [--test-images 30] [--enlarge K] [--image-size N]
                                    [--threads 1] [--work DIR]

Per photograph (benchmarks/reader_large.py builds the data: 40 normal training images of
256 x 256 px; 30 normal and 30 defective test images from rows the training never saw, one
defect each from the benchmark's own generator, at most 1% of the image), the script runs what
a user would:

    vaekit train PHOTO/train --out RUN        (no flags: a surface keeps its 256 px, crops, reader)
    vaekit evaluate RUN --normal ... --anomalous ... --masks ... --json

and reports image and pixel AUROC of the default score, of `--score atypicality` (the VAE's own
tests), of `--score neg_elbo` (the same model's plain -ELBO) and of PCA-32 fitted on the same
training images (grey; textures.py's baseline: image score the summed squared error, pixel score
the squared error; left out above 512 px, where 40 flattened images no longer fit a PCA in
memory), the false-positive rate at the stored threshold, the training time and its peak memory.
--enlarge K enlarges the photos K times first (images larger than the 512 px photos: a test of
cost, and of reading them at their own size); --image-size N is passed to `vaekit train`.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reader_large  # noqa: E402
import textures  # noqa: E402
from cli_runner import vaekit  # noqa: E402


WIDTH: list[int | None] = [None]  # --width: test and training images this wide (None: square)
TRAIN_FLAGS: list[str] = []  # --image-size N: passed to vaekit train


def write(folder: Path, images: np.ndarray, names: list[str]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for x, name in zip(images, names):
        Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)).save(folder / name)


def run_photo(name: str, work: Path, threads: int) -> dict:
    d = reader_large.build(name, width=WIDTH[0])
    root = work / "inspection" / name
    n = len(d["labels"]) // 2
    write(root / "train", d["train"], [f"{i:03d}.png" for i in range(len(d["train"]))])
    write(root / "normal", d["test"][:n], [f"{i:03d}.png" for i in range(n)])
    write(root / "anomalous", d["test"][n:], [f"{i:03d}.png" for i in range(n)])
    write(root / "masks", (d["masks"][n:, None] * 255).astype(np.uint8), [f"{i:03d}.png" for i in range(n)])
    t0, rss0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    vaekit(threads, "train", root / "train", "--out", root / "run", "--overwrite", *TRAIN_FLAGS)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far
    out = {"train_s": time.perf_counter() - t0, "area": float(d["masks"][n:].mean()),
           "train_gb": rss / 2**20 if rss > rss0 else None}
    for score in ("default", "atypicality", "neg_elbo"):
        extra = [] if score == "default" else ["--score", score]
        ev = json.loads(vaekit(threads, "evaluate", root / "run", "--normal", root / "normal", "--anomalous",
                               root / "anomalous", "--masks", root / "masks", "--json", *extra))
        out[score] = {"image": ev["auroc"], "pixel": ev["pixel_auroc"], "fpr": ev["fpr_at_threshold"], "name": ev["score"]}
    out["PCA-32"] = pca_32(root) if max(d["train"].shape[-2:]) <= 512 else {"image": float("nan"), "pixel": float("nan")}
    return out


def pca_32(root: Path) -> dict:
    """Image and pixel AUROC of PCA-32 (textures.py's baseline) fitted on the training images."""
    _, train = textures.read_folder(root / "train")
    _, normal = textures.read_folder(root / "normal")
    _, bad = textures.read_folder(root / "anomalous")
    _, masks = textures.read_folder(root / "masks")
    img, pix = textures.baselines(train, np.concatenate([normal, bad]))["PCA-32"]
    gt = np.concatenate([np.zeros_like(normal, bool), masks > 0.5])
    return {"image": textures.auroc(np.r_[np.zeros(len(normal)), np.ones(len(bad))], img),
            "pixel": textures.auroc(gt.ravel(), pix.ravel())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--choose", default="brick,gravel")
    ap.add_argument("--confirm", default="grass,ihc")
    ap.add_argument("--side", type=int, default=reader_large.SIDE, help="image side in px (the photo needs twice as many rows)")
    ap.add_argument("--width", type=int, default=None, help="image width in px (default: --side; wider images "
                    "are scored whole, in tiles, and their defects lie anywhere)")
    ap.add_argument("--train-images", type=int, default=reader_large.N_TRAIN, help="normal training images per photo")
    ap.add_argument("--test-images", type=int, default=reader_large.N_TEST, help="normal and defective test images each")
    ap.add_argument("--enlarge", type=int, default=1, help="enlarge the photos this many times first")
    ap.add_argument("--image-size", type=int, default=0, help="passed to vaekit train (0: its auto)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    reader_large.SIDE, reader_large.N_TRAIN, reader_large.N_TEST = args.side, args.train_images, args.test_images
    reader_large.ENLARGE = args.enlarge
    TRAIN_FLAGS[:] = ["--image-size", str(args.image_size)] if args.image_size else []
    WIDTH[0] = args.width
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="vaekit-inspection-")
    work = args.work or Path(tmp.name)
    results = {}
    print(f"{'half':<8}{'photo':<8}{'default img / pix':>20}{'atypicality img / pix':>24}{'-ELBO img / pix':>18}"
          f"{'PCA-32 img / pix':>19}{'FPR':>7}{'area':>7}{'train s':>9}{'peak GB':>9}")
    for half, names in (("choose", args.choose), ("confirm", args.confirm)):
        rows = []
        for name in [n for n in names.split(",") if n]:
            r = results[name] = run_photo(name, work, args.threads)
            rows.append(r)
            print(f"{half:<8}{name:<8}{r['default']['image']:>12.4f} / {r['default']['pixel']:.3f}"
                  f"{r['atypicality']['image']:>16.4f} / {r['atypicality']['pixel']:.3f}"
                  f"{r['neg_elbo']['image']:>10.4f} / {r['neg_elbo']['pixel']:.3f}"
                  f"{r['PCA-32']['image']:>11.4f} / {r['PCA-32']['pixel']:.3f}{r['default']['fpr']:>7.3f}"
                  f"{r['area']:>7.2%}{r['train_s']:>9.0f}{r['train_gb'] or float('nan'):>9.2f}   ({r['default']['name']})",
                  flush=True)
        if rows:
            m = lambda s, k: np.mean([r[s][k] for r in rows])  # noqa: E731
            print(f"{half:<8}{'mean':<8}{m('default', 'image'):>12.4f} / {m('default', 'pixel'):.3f}"
                  f"{m('atypicality', 'image'):>16.4f} / {m('atypicality', 'pixel'):.3f}"
                  f"{m('neg_elbo', 'image'):>10.4f} / {m('neg_elbo', 'pixel'):.3f}"
                  f"{m('PCA-32', 'image'):>11.4f} / {m('PCA-32', 'pixel'):.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
