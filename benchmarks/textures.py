"""Real-texture defect detection through the CLI: vaekit at default settings against simple baselines.

    python benchmarks/textures.py [--textures brick,grass,gravel,ihc] [--threads 1] [--work DIR] [--json out.json]
                                  [--generator bench|alt] [--reuse-runs]

For each photograph (see texture_data.py: train on crops of its top 60%, test on 120 normal and
120 defective crops of its bottom 40%), the script runs what a user would run:

    vaekit train TEXTURE/train --out RUN                       (default settings)
    vaekit anomaly-score RUN TEXTURE/test -o scores.csv        (image scores, per defect kind)
    vaekit evaluate RUN --normal ... --anomalous ... --masks ... --json   (image and pixel AUROC)

and fits two baselines on the same training crops in the same run:
  PCA-32   reconstruction error with 32 components (image: sum of squares; pixel: squared error)
  local    per-pixel mean and standard deviation over a 7×7 window, each standardised by its
           training distribution; pixel score max(|z_mean|, |z_std|), image score its maximum
--generator alt draws the defects with texture_data_alt.py (eight kinds modelled on real
inspection sets; the same normal crops) into WORK/data_alt, scores to WORK/NAME_alt_scores.csv;
the VAE runs stay WORK/runs/NAME and one that holds a config.json is reused, not retrained (both
generators' runs train on the same crops). --reuse-runs does the same for the default generator.
Targets (issue 12): vaekit's mean image AUROC and mean pixel AUROC >= 0.90, no defect kind
below chance (AUROC of normal crops vs that kind's crops).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import texture_data  # noqa: E402
import texture_data_alt  # noqa: E402
from cli_runner import vaekit  # noqa: E402



def read_folder(folder: Path) -> tuple[list[str], np.ndarray]:
    """(names, float images (N, H, W) in [0, 1], grey): what the baselines see."""
    from PIL import Image

    names = sorted(p.name for p in folder.glob("*.png"))
    return names, np.stack([np.asarray(Image.open(folder / n).convert("L"), np.float64) / 255.0 for n in names])


def local_stats(x: np.ndarray, k: int = 7) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    mean = uniform_filter(x, size=(1, k, k), mode="reflect")
    var = uniform_filter(x * x, size=(1, k, k), mode="reflect") - mean**2
    return np.stack([mean, np.sqrt(np.clip(var, 0, None))])  # (2, N, H, W)


def baselines(train: np.ndarray, test: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (image scores (N,), pixel maps (N, H, W)); higher = more anomalous."""
    from sklearn.decomposition import PCA

    n, h, w = test.shape
    pca = PCA(n_components=32, svd_solver="randomized", random_state=0).fit(train.reshape(len(train), -1))
    recon = pca.inverse_transform(pca.transform(test.reshape(n, -1))).reshape(n, h, w)
    err = (test - recon) ** 2
    ref = local_stats(train)
    mu, sd = ref.mean(axis=(1, 2, 3)), ref.std(axis=(1, 2, 3)) + 1e-8
    z = np.abs((local_stats(test) - mu[:, None, None, None]) / sd[:, None, None, None]).max(0)
    return {"PCA-32": (err.sum((1, 2)), err), "local": (z.max((1, 2)), z)}


def auroc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def run_texture(name: str, work: Path, threads: int, generator: str = "bench", reuse_runs: bool = False) -> dict:
    if generator == "alt":
        root = texture_data_alt.build(name, work / "data_alt")
    else:
        root = texture_data.build(name, work / "data")
    test = root / "test"
    run = work / "runs" / name
    t0 = time.perf_counter()
    if not ((reuse_runs or generator == "alt") and (run / "config.json").exists()):
        vaekit(threads, "train", root / "train", "--out", run, "--overwrite")
    seconds = time.perf_counter() - t0
    scores_csv = work / (f"{name}_alt_scores.csv" if generator == "alt" else f"{name}_scores.csv")
    scores_csv.unlink(missing_ok=True)  # ours, from an earlier run with the same --work
    vaekit(threads, "anomaly-score", run, test / "normal", test / "anomalous", "-o", scores_csv)
    ev = json.loads(vaekit(threads, "evaluate", run, "--normal", test / "normal", "--anomalous", test / "anomalous",
                           "--masks", test / "masks", "--json"))
    with open(scores_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    kind = {r["path"]: ("normal" if "/normal/" in r["path"] else Path(r["path"]).name.split("_")[0]) for r in rows}
    by_kind: dict[str, dict[str, float]] = {}
    for column in ("score", "neg_elbo"):
        values = {r["path"]: float(r[column]) for r in rows}
        normal = [values[p] for p in values if kind[p] == "normal"]
        for k in sorted(set(kind.values()) - {"normal"}):
            bad = [values[p] for p in values if kind[p] == k]
            by_kind.setdefault(k, {})[column] = auroc([0] * len(normal) + [1] * len(bad), normal + bad)
        bad_all = [values[p] for p in values if kind[p] != "normal"]
        by_kind.setdefault("all", {})[column] = auroc([0] * len(normal) + [1] * len(bad_all), normal + bad_all)

    _, train_x = read_folder(root / "train")
    normal_names, normal_x = read_folder(test / "normal")
    bad_names, bad_x = read_folder(test / "anomalous")
    _, masks = read_folder(test / "masks")
    labels = np.r_[np.zeros(len(normal_x)), np.ones(len(bad_x))]
    gt = np.concatenate([np.zeros_like(normal_x, bool), masks > 0.5])
    base = {}
    for method, (img, pix) in baselines(train_x, np.concatenate([normal_x, bad_x])).items():
        base[method] = {"image": auroc(labels, img), "pixel": auroc(gt.ravel(), pix.ravel())}
    return {"train_seconds": seconds, "image_auroc": ev["auroc"], "pixel_auroc": ev["pixel_auroc"],
            "neg_elbo_auroc": by_kind["all"]["neg_elbo"], "by_kind": by_kind, "baselines": base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--textures", default=",".join(texture_data.PHOTOS))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--generator", choices=("bench", "alt"), default="bench",
                    help="defects from texture_data.py (bench) or texture_data_alt.py (alt)")
    ap.add_argument("--reuse-runs", action="store_true", help="do not retrain a run directory with a config.json (always so with --generator alt)")
    args = ap.parse_args()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="vaekit-textures-")
    work = args.work or Path(tmp.name)
    results = {}
    for name in args.textures.split(","):
        results[name] = r = run_texture(name, work, args.threads, args.generator, args.reuse_runs)
        print(f"{name}: image {r['image_auroc']:.4f} pixel {r['pixel_auroc']:.4f} ({r['train_seconds']:.0f} s)", flush=True)

    names = list(results)
    gen = "texture_data_alt.py" if args.generator == "alt" else "texture_data.py"
    print(f"\nReal textures, 64x64 crops, 120 normal + 120 defective test crops each ({gen}); vaekit default settings")
    print(f"{'texture':<9}{'image':>8}{'-ELBO':>8}{'PCA-32':>8}{'local':>8}   {'pixel':>7}{'PCA-32':>8}{'local':>8}{'train s':>9}")
    for n in names:
        r, b = results[n], results[n]["baselines"]
        print(f"{n:<9}{r['image_auroc']:>8.4f}{r['neg_elbo_auroc']:>8.4f}{b['PCA-32']['image']:>8.4f}{b['local']['image']:>8.4f}"
              f"   {r['pixel_auroc']:>7.4f}{b['PCA-32']['pixel']:>8.4f}{b['local']['pixel']:>8.4f}{r['train_seconds']:>9.0f}")

    def mean(f):
        return float(np.mean([f(results[n]) for n in names]))

    print(f"{'mean':<9}{mean(lambda r: r['image_auroc']):>8.4f}{mean(lambda r: r['neg_elbo_auroc']):>8.4f}"
          f"{mean(lambda r: r['baselines']['PCA-32']['image']):>8.4f}{mean(lambda r: r['baselines']['local']['image']):>8.4f}"
          f"   {mean(lambda r: r['pixel_auroc']):>7.4f}{mean(lambda r: r['baselines']['PCA-32']['pixel']):>8.4f}"
          f"{mean(lambda r: r['baselines']['local']['pixel']):>8.4f}")
    kinds = [k for k in results[names[0]]["by_kind"] if k != "all"]
    print("\nimage AUROC by defect kind (vaekit default score; normal crops vs that kind)")
    kw = max(9, max(map(len, kinds)) + 1)
    print(f"{'kind':<{kw}}" + "".join(f"{n:>9}" for n in names) + f"{'mean':>9}")
    for k in kinds:
        vals = [results[n]["by_kind"][k]["score"] for n in names]
        print(f"{k:<{kw}}" + "".join(f"{v:>9.4f}" for v in vals) + f"{np.mean(vals):>9.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
