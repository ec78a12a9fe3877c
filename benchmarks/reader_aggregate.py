"""Which summary of the defect reader's map makes the best image score? Offline, on kept runs.

    python benchmarks/reader_aggregate.py --work DIR [--mirrors] [--out aggregate.json]

DIR is a benchmarks/textures.py work folder (runs/NAME, data/NAME, and data_alt/NAME from
`textures.py --generator alt`). Each run's three readers read both generators' test crops once;
their median probability is summed up as the largest w x w mean (w = 1, 3 (vaekit's), 5, 9, 15),
the mean of the top 0.5 / 2 / 10 % of pixels, or the map's mean; image AUROC of each, per texture
and generator, then the choose (brick, gravel) and confirm (grass, ihc) means. With --mirrors the
crops are also read mirrored (left-right, up-down, both; test-time flips), the maps mirrored back
and combined (none / the left-right pair's mean / the four's mean / their median) before the
largest 3 x 3 mean; image and pixel AUROC (the map averaged over 5 x 5 px, as vaekit's) of each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reader_alt import test_set  # noqa: E402
from reader_textures import auroc  # noqa: E402

HALVES = {"choose": ("brick", "gravel"), "confirm": ("grass", "ihc")}


def summaries(p: np.ndarray) -> dict[str, np.ndarray]:
    """Image scores (N,) of probability maps p (N, H, W), one per rule."""
    from vaekit.reader.score import box_mean

    n = len(p)
    flat = np.sort(p.reshape(n, -1), 1)[:, ::-1]
    out = {f"max{w}": box_mean(p, w).reshape(n, -1).max(1) for w in (1, 3, 5, 9, 15)}
    for f in (0.005, 0.02, 0.1):
        out[f"top{f:g}"] = flat[:, :max(1, int(f * flat.shape[1]))].mean(1)
    out["mean"] = flat.mean(1)
    return out


def mirror(x: np.ndarray, k: int) -> np.ndarray:
    """x (..., H, W) mirrored left-right (k & 1) and/or up-down (k & 2); its own inverse."""
    x = x[..., ::-1] if k & 1 else x
    return np.ascontiguousarray(x[..., ::-1, :] if k & 2 else x)


def mirrored(reader, x, gt, y) -> dict[str, float]:
    """Image and pixel AUROC of each way of combining the four mirrored reads."""
    from vaekit.reader.score import box_mean
    from vaekit.reader.train import read

    ps = [mirror(read(reader, mirror(x, k), smooth=1, map_smooth=1)[1], k) for k in range(4)]
    out = {}
    for rule, p in (("none", ps[0]), ("lr", np.mean(ps[:2], 0)), ("mean4", np.mean(ps, 0)), ("median4", np.median(ps, 0))):
        out[f"{rule} image"] = auroc(y, box_mean(p, 3).reshape(len(p), -1).max(1))
        out[f"{rule} pixel"] = auroc(gt, box_mean(p, 5).ravel())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--mirrors", action="store_true", help="test-time mirrors instead of the summaries")
    ap.add_argument("--out", type=Path, default=Path("aggregate.json"))
    args = ap.parse_args()
    import torch

    import vaekit as vk
    from vaekit.reader.train import read

    torch.set_num_threads(1)
    res = {}
    for name in sum(HALVES.values(), ()):
        model = vk.load(args.work / "runs" / name, device="cpu")
        reader = model.reader()
        for gen, folder in (("bench", "data"), ("alt", "data_alt")):
            x, kinds, gt = test_set(args.work / folder / name, model.net.cfg.channels)
            if args.mirrors:
                res[f"{name}/{gen}"] = mirrored(reader, x, gt, kinds != "normal")
            else:
                _, p = read(reader, x, smooth=1, map_smooth=1)  # the median probability, unsmoothed
                res[f"{name}/{gen}"] = {k: auroc(kinds != "normal", v) for k, v in summaries(p).items()}
            print(name, gen, " ".join(f"{k} {v:.4f}" for k, v in res[f"{name}/{gen}"].items()), flush=True)
    for half, names in HALVES.items():
        for gens in (("bench", "alt"), ("alt",)):
            cells = [res[f"{n}/{g}"] for n in names for g in gens]
            print(half, "+".join(gens), " ".join(f"{k} {np.mean([c[k] for c in cells]):.4f}" for k in cells[0]))
    args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
