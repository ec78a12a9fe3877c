"""One-class MNIST through the CLI, the standard protocol: vaekit at default settings against PCA and OC-SVM.

    python benchmarks/one_class_mnist.py --data mnist.npz [--digits 0123456789] [--threads 1]
                                         [--work DIR] [--json results.json]

`--data` is an .npz with uint8 arrays xtr (60000, 28, 28), ytr, xte (10000, 28, 28), yte (bring
your own copy; nothing is downloaded). For each digit k the script writes the training images of
k as PNGs and runs what a user would:

    vaekit train DIGIT_K --out RUN                 (default settings: no flags)
    vaekit anomaly-score RUN TEST -o scores.csv    (all 10,000 test images)

AUROC with anomalies = the test images that are not k, for vaekit's default score and the plain
-ELBO (both from the same CSV). In the same run, on the same pixels (/ 255, flattened):
  PCA-32   reconstruction error with 32 components, fitted on the training images of k
  OC-SVM   OneClassSVM(kernel="rbf", gamma="scale", nu=0.1), score = -decision_function
Targets (issue 12): mean AUROC >= 0.985, every digit >= 0.96, training <= 120 s per digit on
a 2-core CPU. The training time printed is the wall time of the whole `vaekit train` command.
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
from cli_runner import vaekit  # noqa: E402


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, (x, y) in enumerate(zip(images, labels)):
        Image.fromarray(x).save(folder / f"{i:05d}_d{y}.png")


def baselines(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA
    from sklearn.svm import OneClassSVM

    pca = PCA(n_components=32, svd_solver="randomized", random_state=0).fit(train)
    recon = pca.inverse_transform(pca.transform(test))
    return {
        "PCA-32": ((test - recon) ** 2).sum(1),
        "OC-SVM": -OneClassSVM(kernel="rbf", gamma="scale", nu=0.1).fit(train).decision_function(test),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="mnist.npz with xtr, ytr, xte, yte (uint8)")
    ap.add_argument("--digits", default="0123456789")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--work", type=Path, default=None, help="keep images and runs here (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    data = np.load(args.data)
    xtr, ytr, xte, yte = (data[k] for k in ("xtr", "ytr", "xte", "yte"))
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="vaekit-mnist-")
    work = args.work or Path(tmp.name)
    if not (work / "test").is_dir():
        write_pngs(work / "test", xte, yte)
    test_x = xte.reshape(len(xte), -1) / 255.0

    methods = ["vaekit", "-ELBO", "PCA-32", "OC-SVM"]
    auroc: dict[int, dict[str, float]] = {}
    seconds: dict[int, float] = {}
    for k in map(int, args.digits):
        folder, run, out = work / f"train{k}", work / f"run{k}", work / f"scores{k}.csv"
        if not folder.is_dir():
            write_pngs(folder, xtr[ytr == k], ytr[ytr == k])
        t0 = time.perf_counter()
        vaekit(args.threads, "train", folder, "--out", run, "--overwrite")
        seconds[k] = time.perf_counter() - t0
        out.unlink(missing_ok=True)  # ours, from an earlier run with the same --work
        vaekit(args.threads, "anomaly-score", run, work / "test", "-o", out)
        with open(out, newline="") as f:
            rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
        names = [f"{i:05d}_d{y}.png" for i, y in enumerate(yte)]
        is_anomaly = yte != k
        scores = {"vaekit": [float(rows[n]["score"]) for n in names], "-ELBO": [float(rows[n]["neg_elbo"]) for n in names]}
        scores.update(baselines(xtr[ytr == k].reshape(-1, 784) / 255.0, test_x))
        auroc[k] = {m: float(roc_auc_score(is_anomaly, scores[m])) for m in methods}
        print(f"digit {k}: " + "  ".join(f"{m} {auroc[k][m]:.4f}" for m in methods) + f"  train {seconds[k]:.0f} s",
              flush=True)

    digits = sorted(auroc)
    mean = {m: float(np.mean([auroc[k][m] for k in digits])) for m in methods}
    print(f"\nOne-class MNIST, AUROC on the 10,000 test images (train: all training images of the digit); "
          f"vaekit default settings, {args.threads} torch thread(s)")
    print(f"{'digit':<6}" + "".join(f"{m:>9}" for m in methods) + f"{'train s':>9}")
    for k in digits:
        print(f"{k:<6}" + "".join(f"{auroc[k][m]:>9.4f}" for m in methods) + f"{seconds[k]:>9.0f}")
    print(f"{'mean':<6}" + "".join(f"{mean[m]:>9.4f}" for m in methods) + f"{np.mean(list(seconds.values())):>9.0f}")
    print(f"{'min':<6}" + "".join(f"{min(auroc[k][m] for k in digits):>9.4f}" for m in methods)
          + f"{max(seconds.values()):>9.0f}  (train s: max)")
    if args.json:
        args.json.write_text(json.dumps({"auroc": auroc, "mean": mean, "train_seconds": seconds}, indent=2))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
