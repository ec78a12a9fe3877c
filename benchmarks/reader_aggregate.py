"""Which summary of the defect reader's map makes the best image score? Offline, on kept runs.

    python benchmarks/reader_aggregate.py --work DIR [--out aggregate.json]

DIR is a benchmarks/textures.py work folder (runs/NAME, data/NAME, and data_alt/NAME from
`textures.py --generator alt`). Each run's three readers read both generators' test crops once;
their median probability is summed up as the largest w x w mean (w = 1, 3 (vaekit's), 5, 9, 15),
the mean of the top 0.5 / 2 / 10 % of pixels, or the map's mean; image AUROC of each, per texture
and generator, then the choose (brick, gravel) and confirm (grass, ihc) means.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
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
            x, kinds, _ = test_set(args.work / folder / name, model.net.cfg.channels)
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
