"""Few wide images: does a surface model learn from the whole of non-square images?

    python benchmarks/wide_surfaces.py [--sets pairs:0:40,pairs:1:40] [--threads 1] [--work DIR]

A set `pairs:SEED:N` is N training images of 256 x 512 px, each two of vaekit's sample washers
(vaekit.sample_data.write_shapes at 256 px, seed SEED) side by side, as a part with two holes
on a fixture would look; 30 normal test images the same way, and 30 anomalous ones whose left or
right washer (drawn at random) has one defect. A model that learned only the centre square of
each image has seen the inner half of each washer and never the outer half, which it scores all
the same.

Per set, through the CLI as a user would: `vaekit train` at default settings (few large images:
the latent grid and its defect readers), then `vaekit evaluate` with the default score and the
plain -ELBO: image AUROC and the false-positive rate at the stored threshold. Nothing is chosen
on these sets; they measure one change (docs/preprocessing.md, "Wide images").
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_runner import set_arguments, trained_and_evaluated  # noqa: E402

SIDE = 256


def _pngs(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def _write(folder: Path, arrays) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"pair_{i:04d}.png")


def build(spec: str, root: Path) -> Path:
    """Write the set `spec` (pairs:SEED:N) under root once; its folder (train/, normal/, anomalous/)."""
    from vaekit.sample_data.shapes import write_shapes

    out = root / spec.replace(":", "_")
    if (out / "anomalous").is_dir():
        return out
    _, seed, n = spec.split(":")
    seed, n = int(seed), int(n)
    write_shapes(out / "raw", n_train=2 * n, n_test_normal=90, n_test_anomalous=30, size=SIDE, seed=seed)
    train, normal, bad = (_pngs(out / "raw" / s) for s in ("train", "test/normal", "test/anomalous"))
    _write(out / "train", [np.concatenate(train[2 * i : 2 * i + 2], 1) for i in range(n)])
    _write(out / "normal", [np.concatenate(normal[2 * i : 2 * i + 2], 1) for i in range(30)])
    side = np.random.default_rng(seed).integers(0, 2, 30)
    _write(out / "anomalous", [np.concatenate([bad[i], normal[60 + i]][:: 1 if s else -1], 1) for i, s in enumerate(side)])
    return out


def run_set(folder: Path, threads: int) -> dict:
    got, _ = trained_and_evaluated(folder, threads, (None, "neg_elbo"))
    out = {"train s": got["train s"]}
    for score, name in ((None, "default"), ("neg_elbo", "neg_elbo")):
        out[f"{name} AUROC"], out[f"{name} FPR"] = got[score]["auroc"], got[score]["fpr_at_threshold"]
    return out


def main() -> None:
    args, work = set_arguments(__doc__, "pairs:0:40,pairs:1:40", "wide_surfaces_")
    cols = ["default AUROC", "default FPR", "neg_elbo AUROC", "neg_elbo FPR", "train s"]
    print("| set | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for spec in args.sets.split(","):
        r = run_set(build(spec, work), args.threads)
        print(f"| {spec} | " + " | ".join(f"{r[c]:.0f}" if c == "train s" else f"{r[c]:.4f}" for c in cols) + " |",
              flush=True)


if __name__ == "__main__":
    main()
