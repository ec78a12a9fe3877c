"""A nearest-patch distance on the defect reader's own features, alone and fused with the reader.

    python benchmarks/reader_knn.py --work DIR [--textures brick,gravel,grass,ihc] [--bank 16384] [--out knn.json]

DIR is a benchmarks/textures.py work folder (runs/NAME, data/NAME, and data_alt/NAME from
`textures.py --generator alt`). PatchCore's idea (Roth et al. 2022) without pretrained weights:
each of the run's three readers is a U-Net trained to tell synthetic defects from the normal
surface, so its decoder's features may describe the surface better than the VAE's (measured in
benchmarks/patch_distance.py). Per reader: its last two decoder blocks' outputs (at half the
image's resolution, the deeper one upsampled), concatenated and averaged over 3 x 3 cells; a
bank of --bank cells drawn at random (seed 0) from the first 800 training crops; a test crop's
map is each cell's distance to its nearest bank cell, the median over the three readers, and its
score the largest 3 x 3 mean of that map. Fused: the reader's score and the distance, each on the
scale of the other 200 training crops ((s - median) / (q0.9 - median): no test label sets a
scale), then their larger or their sum. Image AUROC per texture and generator, the choose
(brick, gravel) and confirm (grass, ihc) means, and per defect kind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reader_alt import test_set  # noqa: E402
from reader_textures import auroc, read_folder  # noqa: E402

HALVES = {"choose": ("brick", "gravel"), "confirm": ("grass", "ihc")}


def features(net, x: np.ndarray):
    """(N, D, H/2, W/2) float32 features of uint8 crops x (N, C, H, W): the reader's last two
    decoder blocks, concatenated and averaged over 3 x 3 cells."""
    import torch
    import torch.nn.functional as F

    got = {}
    hooks = [net.up[i].register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o)) for i in (-1, -2)]
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(x), 32):
                net(torch.from_numpy(x[i:i + 32].astype(np.float32) / 255))
                size = got[-1].shape[-2:]
                f = torch.cat([got[-1], F.interpolate(got[-2], size=size, mode="bilinear", align_corners=False)], 1)
                out.append(F.avg_pool2d(f, 3, 1, 1, count_include_pad=False))
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(out)


def distance_maps(reader, bank_x: np.ndarray, xs: list[np.ndarray], cells: int) -> list[np.ndarray]:
    """For each array in xs, the median over the reader's members of each cell's distance to the
    nearest of `cells` random cells of bank_x's features (N, H/2, W/2)."""
    import torch

    rng = np.random.default_rng(0)
    per: list[list[np.ndarray]] = [[] for _ in xs]
    for net in reader.members:
        f = features(net, bank_x)
        flat = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        bank = flat[torch.from_numpy(rng.choice(len(flat), min(cells, len(flat)), replace=False))].clone()
        del f, flat
        for k, x in enumerate(xs):
            q = features(net, x)
            n, d, h, w = q.shape
            q = q.permute(0, 2, 3, 1).reshape(-1, d)
            dist = torch.cat([torch.cdist(q[i:i + 8192], bank).min(1).values for i in range(0, len(q), 8192)])
            per[k].append(dist.reshape(n, h, w).numpy())
    return [np.median(np.stack(p), 0) for p in per]


def largest(m: np.ndarray) -> np.ndarray:
    from vaekit.reader.score import box_mean

    return box_mean(m, 3).reshape(len(m), -1).max(1)


def one_texture(work: Path, name: str, cells: int) -> dict:
    import vaekit as vk
    from vaekit.reader.train import read

    model = vk.load(work / "runs" / name, device="cpu")
    reader, c = model.reader(), model.net.cfg.channels
    _, train = read_folder(work / "data" / name / "train", c)
    bank_x, held = train[:800], train[800:]
    gens = [(g, test_set(work / folder / name, c)) for g, folder in (("bench", "data"), ("alt", "data_alt"))]
    maps = distance_maps(reader, bank_x, [held] + [t[0] for _, t in gens], cells)
    held_r, held_k = read(reader, held)[0], largest(maps[0])

    def scaled(s, h):
        return (s - np.median(h)) / (np.quantile(h, 0.9) - np.median(h))

    out = {}
    for (gen, (x, kinds, _)), dm in zip(gens, maps[1:]):
        r, k = read(reader, x)[0], largest(dm)
        scores = {"reader": r, "knn": k, "max": np.maximum(scaled(r, held_r), scaled(k, held_k)),
                  "sum": scaled(r, held_r) + scaled(k, held_k)}
        y = kinds != "normal"
        out[gen] = {s: auroc(y, v) for s, v in scores.items()}
        out[gen]["kinds"] = {kind: {s: auroc(y[(kinds == kind) | ~y], v[(kinds == kind) | ~y]) for s, v in scores.items()}
                             for kind in sorted(set(kinds[y]))}
        print(name, gen, " ".join(f"{s} {v:.4f}" for s, v in out[gen].items() if s != "kinds"), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--textures", default="brick,gravel,grass,ihc")
    ap.add_argument("--bank", type=int, default=16384, help="bank cells per reader")
    ap.add_argument("--out", type=Path, default=Path("knn.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    res = {name: one_texture(args.work, name, args.bank) for name in args.textures.split(",")}
    for half, names in HALVES.items():
        cells = [res[n][g] for n in names if n in res for g in ("bench", "alt")]
        if cells:
            print(half, " ".join(f"{s} {np.mean([c[s] for c in cells]):.4f}" for s in ("reader", "knn", "max", "sum")))
    args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
