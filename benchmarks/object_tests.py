"""An aligned object's tests, compared on one trained model per set: which error test, and which window.

    python benchmarks/object_tests.py --sets mnisttex:0,mnist:2,shapes:0 --data mnist.npz [--threads 1] [--work DIR]

What decided the local error test (docs/detection.md, "The error test, local"). Sets, comma-separated:
`NAME:K` for a class of benchmarks/dev_sets.py (mnist, mnisttex, mnistshade, digits, lfw, garments) or
`shapes:SEED` for vaekit's sample shapes at 64 px (400 training parts, 50 + 50 test parts).

Per set, `vaekit train` at default settings, run with the object tests widened to every candidate
(`CANDIDATES`, patched into vaekit.inference.atypicality for that process only), so the run stores
each candidate's mean and sd on its own calibration split. Then each arm (`ARMS`: a subset of the
tests, combined by the default "floored" rule) is scored on the same held-out images from those
stored statistics, beside the plain -ELBO and PCA-32. The record's choose half: mnisttex 0 2 4 6 8,
mnist 0 2 4, shapes 0; its round-2 confirm half: mnist 5 7 9, mnisttex 7 9, garments 4 8, digits 5 7,
mnistshade 0 2, shapes 2.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_sets import load, pca_scores, write_pngs  # noqa: E402

CANDIDATES = {"error_local5": 5, "error_local9": 9}  # name: window (px)
BASE = ["error_high", "code_far", "entropy_low"]  # vaekit 0.3's first object tests
ARMS = {"first rule": BASE, "local 9 instead": ["error_local9", "code_far", "entropy_low"],
        "+ local 5 (default)": BASE + ["error_local5"], "+ local 9": BASE + ["error_local9"]}
# the training process: vaekit's CLI with every candidate test stored in the run's calibration
PATCHED_CLI = """
import sys
from vaekit.inference import atypicality as a
for name, w in {candidates}.items():
    a.TESTS[name] = lambda p, w=w: a.window_mean(p.e_map, w).reshape(len(p.e_map), -1).max(1)
a.OBJECT_TESTS = tuple({base}) + tuple({candidates})
from vaekit_cli.main import main
sys.argv[0] = "vaekit"
main()
"""


def write_set(name: str, k: int, base: Path, mnist: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Training images in base/train, test images in base/test (00000.png ...): (anomalous?, PCA-32 scores)."""
    if name == "shapes":
        from PIL import Image

        from vaekit.sample_data.shapes import write_shapes

        write_shapes(base / "raw", n_train=400, n_test_normal=50, n_test_anomalous=50, size=64, seed=k, overwrite=True)
        tr = np.stack([np.asarray(Image.open(p)) for p in sorted((base / "raw" / "train").glob("*.png"))])
        test = [p for part in ("normal", "anomalous") for p in sorted((base / "raw" / "test" / part).glob("*.png"))]
        te = np.stack([np.asarray(Image.open(p)) for p in test])
        write_pngs(base / "train", tr)
        write_pngs(base / "test", te)
        grey = lambda x: x.mean(-1).astype(np.uint8)  # noqa: E731 - PCA-32 on the grey pixels
        return np.arange(len(test)) >= len(test) // 2, pca_scores(grey(tr), grey(te))
    tr, te, anomalous = load(name, k, mnist)
    write_pngs(base / "train", tr)
    write_pngs(base / "test", te)
    return anomalous, pca_scores(tr, te)


def raw_tests(run: Path, test: Path) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """(raw tests (N, T), -ELBO (N,), test names, stored means, stored sds) of the test images."""
    import vaekit
    from vaekit.inference import atypicality as a

    for name, w in CANDIDATES.items():  # this process reads the candidates too
        a.TESTS[name] = lambda p, w=w: a.window_mean(p.e_map, w).reshape(len(p.e_map), -1).max(1)
    model = vaekit.load(run)
    cal = model.calibration()
    paths = [str(p) for p in sorted(test.glob("*.png"))]
    tests, neg_elbo = [], []
    for i in range(0, len(paths), 256):
        parts = model.elbo_parts(model.load_images(paths[i:i + 256]).images)
        tests.append(cal.tests(parts))
        neg_elbo.append(parts.neg_elbo)
    t = cal.stats["tests"]
    return np.concatenate(tests), np.concatenate(neg_elbo), cal.global_tests, np.asarray(t["mean"]), np.asarray(t["sd"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", required=True)
    ap.add_argument("--data", type=Path, default=None, help="mnist.npz, for the mnist* sets")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    from vaekit.inference.atypicality import Calibration

    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="vaekit-objecttests-")
    work = args.work or Path(tmp.name)
    cli = PATCHED_CLI.format(candidates=CANDIDATES, base=BASE)
    print("set            " + "".join(f"{a:>21s}" for a in ARMS) + "      -ELBO     PCA-32")
    for spec in args.sets.split(","):
        name, k = spec.split(":")
        base = work / f"{name}-{k}"
        anomalous, pca = write_set(name, int(k), base, args.data)
        res = subprocess.run([sys.executable, "-c", cli, "--threads", str(args.threads), "train", str(base / "train"),
                              "--out", str(base / "run"), "--overwrite"], capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"vaekit train failed on {spec}:\n{res.stderr[-2000:]}")
        tests, neg_elbo, names, mean, sd = raw_tests(base / "run", base / "test")
        row = []
        for arm in ARMS.values():  # vaekit's own "floored" combination of the arm's tests, at their stored statistics
            i = [names.index(n) for n in arm]
            cal = Calibration({"global": arm, "combine": "floored", "tests": {"mean": mean[i].tolist(), "sd": sd[i].tolist()}})
            row.append(roc_auc_score(anomalous, cal.score_tests(tests[:, i])))
        row += [roc_auc_score(anomalous, neg_elbo), np.nan if pca is None else roc_auc_score(anomalous, pca)]
        print(f"{spec:15s}" + "".join(f"{v:21.4f}" for v in row[:len(ARMS)]) + "".join(f"{v:11.4f}" for v in row[len(ARMS):]),
              flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
