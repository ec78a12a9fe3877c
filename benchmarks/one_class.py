"""One-class detection on the development sets, through the CLI at default settings.

    python benchmarks/one_class.py --set mnist --data mnist.npz --classes 13579 [--threads 1]
                                   [--n-train N [--draw D]] [--work DIR] [--json out.json] [--v01 CHECKOUT]

For each class k (benchmarks/dev_sets.py: even classes choose, odd ones confirm) the script
writes the training images of k as PNGs and runs what a user would:

    vaekit train TRAIN_K --out RUN                 (no flags)
    vaekit anomaly-score RUN TEST -o scores.csv

and reports, on the same test images: AUROC of vaekit's default score and of the same model's
plain -ELBO (both from the CSV), of PCA-32 reconstruction error on the same pixels, the share
of normal test images above the stored threshold with the rate the run expects, and with
`--v01 CHECKOUT` (a git checkout of vaekit 0.1, commit 58a663f) vaekit 0.1's default score.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runner import vaekit  # noqa: E402
from dev_sets import CONFIRM, SETS, load, pca_scores, write_pngs  # noqa: E402


def scores_of(csv_path: Path, n: int) -> dict[str, np.ndarray]:
    with open(csv_path, newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    names = [f"{i:05d}.png" for i in range(n)]
    out = {k: np.array([float(rows[m][k]) for m in names]) for k in ("score", "neg_elbo")}
    out["flagged"] = np.array([rows[m]["anomalous"] == "true" for m in names])
    return out


def run_v01(checkout: Path, threads: int, train: Path, run: Path, test: Path, out: Path, n: int) -> np.ndarray:
    """vaekit 0.1's default score, its CLI run from a checkout (cli/ as vaekit_cli)."""
    shim = run.parent / "v01-shim"
    shim.mkdir(exist_ok=True)
    if not (shim / "vaekit_cli").exists():
        (shim / "vaekit_cli").symlink_to(checkout / "cli")
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{checkout}", "OMP_NUM_THREADS": str(threads)}
    for args in (["train", train, "--out", run, "--overwrite"], ["anomaly-score", run, test, "-o", out, "--overwrite"]):
        res = subprocess.run([sys.executable, "-m", "vaekit_cli.main", "--threads", str(threads), *map(str, args)],
                             env=env, capture_output=True, text=True, cwd=run.parent)
        if res.returncode:
            raise SystemExit(f"vaekit 0.1 {args[0]} failed:\n{res.stderr[-1500:]}")
    return scores_of(out, n)["score"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", choices=SETS, required=True)
    ap.add_argument("--data", type=Path, help="mnist.npz (xtr, ytr, xte, yte) for the mnist and mnisttex sets")
    ap.add_argument("--classes", default=CONFIRM, help="which classes are normal, one run each (default: the confirm half)")
    ap.add_argument("--n-train", type=int, default=None, help="train on this many images of the class (default: all)")
    ap.add_argument("--draw", type=int, default=0,
                    help="with --n-train N: train on the D-th disjoint N images of the class (default 0: the first N)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--v01", type=Path, default=None, help="a checkout of vaekit 0.1 to run beside")
    args = ap.parse_args()
    if args.draw and not args.n_train:
        ap.error("--draw needs --n-train")
    from sklearn.metrics import roc_auc_score

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="vaekit-oneclass-")
    work = args.work or Path(tmp.name)
    classes = [0] if args.set == "lfw" else [int(c) for c in args.classes]
    results = {}
    for k in classes:
        tr, te, anomalous = load(args.set, k, args.data, args.n_train and args.n_train * (args.draw + 1))
        if args.draw:  # the sets draw their N images as the first N of one order: the D-th block of it
            tr = tr[args.draw * args.n_train:]
            if len(tr) != args.n_train:
                raise SystemExit(f"{args.set} {k}: {len(tr)} images in draw {args.draw}, not {args.n_train}")
        base = work / (f"{args.set}-{k}" + ("" if not args.n_train else f"-n{args.n_train}")
                       + (f"-d{args.draw}" if args.draw else ""))
        write_pngs(base / "train", tr)
        write_pngs(base / "test", te)
        t0 = time.perf_counter()
        vaekit(args.threads, "train", base / "train", "--out", base / "run", "--overwrite")
        seconds = time.perf_counter() - t0
        (base / "scores.csv").unlink(missing_ok=True)
        vaekit(args.threads, "anomaly-score", base / "run", base / "test", "-o", base / "scores.csv")
        s = scores_of(base / "scores.csv", len(te))
        expected = json.loads((base / "run" / "config.json").read_text())["anomaly"].get("expected_fpr")
        r = {"vaekit": roc_auc_score(anomalous, s["score"]), "-ELBO": roc_auc_score(anomalous, s["neg_elbo"]),
             "PCA-32": roc_auc_score(anomalous, pca_scores(tr, te)), "fpr": float(s["flagged"][~anomalous].mean()),
             "expected_fpr": expected, "train_s": seconds}
        if args.v01:
            v01 = run_v01(args.v01.resolve(), args.threads, base / "train", base / "run01", base / "test",
                          base / "scores01.csv", len(te))
            r["vaekit 0.1"] = roc_auc_score(anomalous, v01)
        results[k] = r
        print(f"{args.set} {k}: " + "  ".join(f"{m} {v:.4f}" for m, v in r.items() if isinstance(v, float)), flush=True)
    report(args.set, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if tmp is not None:
        tmp.cleanup()


def report(name: str, results: dict) -> None:
    methods = [m for m in ("vaekit", "-ELBO", "PCA-32", "vaekit 0.1") if m in next(iter(results.values()))]
    print(f"\n{name}: AUROC on held-out images, vaekit default settings (train s: the whole `vaekit train`)")
    print(f"{'class':<7}" + "".join(f"{m:>11}" for m in methods) + f"{'FPR':>8}{'expect':>8}{'train s':>9}")
    for k, r in results.items():
        exp = r["expected_fpr"] if r["expected_fpr"] is not None else float("nan")
        print(f"{k:<7}" + "".join(f"{r[m]:>11.4f}" for m in methods) + f"{r['fpr']:>8.3f}{exp:>8.3f}{r['train_s']:>9.0f}")
    print(f"{'mean':<7}" + "".join(f"{np.mean([r[m] for r in results.values()]):>11.4f}" for m in methods)
          + f"{np.mean([r['fpr'] for r in results.values()]):>8.3f}")
    print(f"{'min':<7}" + "".join(f"{min(r[m] for r in results.values()):>11.4f}" for m in methods))


if __name__ == "__main__":
    main()
