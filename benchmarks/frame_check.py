"""The frame check's factor: frames wrong everywhere caught, normal images left alone.

    python benchmarks/frame_check.py SET [SET ...] [--factors off,1.5,2,3] [--threads 1] [--json OUT]

A SET is a folder holding train/, normal/ and anomalous/ (or test/normal, test/anomalous), masks/
optionally (or test/masks), and the surface run trained on train/ as run/; `FOLDER:RUN` names the
run elsewhere (benchmarks/inspection.py, large_aligned.py and textures.py write such folders).
For each factor F the run is copied with the frame check's range (vaekit.inference.frame) fitted
on its training images' tiles, as `vaekit train` fits it, and F in place of the default; "off"
leaves the section out (the defect readers alone). Each copy scores, through `vaekit.load`:

- the normal and anomalous test images: image AUROC of the default score, pixel AUROC where
  there are masks, and the share of normal images above the stored threshold (FPR);
- frames wrong everywhere, at the size of the test images: black, white, mid-grey, mid-grey with
  sensor noise (sd 2), uniform noise, a normal image blurred (radius 4), inverted, half black,
  and a normal image of the next SET's surface, resized (the first SET takes the last's); how
  many score above the threshold, and which.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

FRAMES = ("black", "white", "grey", "grey_noise", "noise", "blurred", "inverted", "half_black", "other")


def folders(spec: str) -> dict[str, Path]:
    data, _, run = spec.partition(":")
    root = Path(data)
    test = root / "test" if (root / "test" / "normal").is_dir() else root
    return {"run": Path(run) if run else root / "run", "train": root / "train", "normal": test / "normal",
            "anomalous": test / "anomalous", "masks": test / "masks"}


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def wrong_frames(normal: Path, other: Path, out: Path) -> list[Path]:
    from PIL import Image, ImageFilter

    x = Image.open(pngs(normal)[0])
    a = np.asarray(x)
    rng = np.random.default_rng(0)
    half = a.copy()
    half[a.shape[0] // 2:] = 0
    made = {"black": np.zeros_like(a), "white": np.full_like(a, 255), "grey": np.full_like(a, 128),
            "grey_noise": np.clip(128 + rng.normal(0, 2, a.shape), 0, 255).astype(np.uint8),
            "noise": rng.integers(0, 256, a.shape).astype(np.uint8),
            "blurred": np.asarray(x.filter(ImageFilter.GaussianBlur(4))), "inverted": 255 - a, "half_black": half,
            "other": np.asarray(Image.open(pngs(other)[0]).convert(x.mode).resize(x.size))}
    out.mkdir(parents=True, exist_ok=True)
    for name in FRAMES:
        Image.fromarray(made[name]).save(out / f"{name}.png")
    return [out / f"{name}.png" for name in FRAMES]


def training_range(run: Path, train: Path) -> dict:
    """The frame section `vaekit train` stores, from the training images' tiles as scoring reads them."""
    import vaekit
    from vaekit.inference import frame
    from vaekit.inference.tiled import file_tiles

    found = frame.Range()
    for tiles in file_tiles(vaekit.load(run), [train]):
        found.add(tiles, variants=True)
    return found.stats()


def with_factor(run: Path, section: dict, factor, out: Path) -> Path:
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoint"))
    cfg = json.loads((out / "config.json").read_text())
    cal = cfg["anomaly"]["calibration"]
    cal.pop("frame", None)
    if factor != "off":
        cal["frame"] = {**section, "factor": float(factor)}
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def measure(f: dict[str, Path], run: Path, frames: list[Path]) -> dict:
    import vaekit
    from sklearn.metrics import roc_auc_score

    m = vaekit.load(run)
    t = m.info.threshold
    normal, bad = pngs(f["normal"]), pngs(f["anomalous"])
    sn = m.score(normal, maps=False).score
    sb = m.score(bad, maps=f["masks"].is_dir())
    sf = m.score(frames, maps=False).score
    r = {"image": float(roc_auc_score(np.r_[np.zeros(len(sn)), np.ones(len(sb.score))], np.r_[sn, sb.score])),
         "fpr": float(np.mean(sn > t)), "caught": [p.stem for p, v in zip(frames, sf) if v > t]}
    if f["masks"].is_dir():  # normal images' pixels count as normal: their maps too
        from PIL import Image

        normal_maps = m.score(normal).pixel_map
        y = [np.zeros(np.asarray(p).size, bool) for p in normal_maps]
        s = [np.asarray(p).ravel() for p in normal_maps]
        for mp, p in zip(sb.pixel_map, bad):
            y.append((np.asarray(Image.open(f["masks"] / p.name).convert("L")) > 127).ravel())
            s.append(np.asarray(mp).ravel())
        r["pixel"] = float(roc_auc_score(np.concatenate(y), np.concatenate(s)))
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sets", nargs="+")
    ap.add_argument("--factors", default="off,1.5,2,3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    specs = [folders(s) for s in args.sets]
    results = {}
    print(f"{'set':28s} {'factor':>6s} {'image':>7s} {'pixel':>6s} {'FPR':>6s}  frames caught (of {len(FRAMES)})")
    with tempfile.TemporaryDirectory() as tmp:
        for k, (spec, f) in enumerate(zip(args.sets, specs)):
            frames = wrong_frames(f["normal"], specs[(k + 1) % len(specs)]["normal"], Path(tmp) / f"frames{k}")
            section = training_range(f["run"], f["train"])
            for factor in args.factors.split(","):
                run = with_factor(f["run"], section, factor, Path(tmp) / f"run{k}_{factor}")
                r = measure(f, run, frames)
                shutil.rmtree(run)
                results[f"{spec}|{factor}"] = r
                pixel = f"{r['pixel']:.3f}" if "pixel" in r else "  -  "
                print(f"{Path(spec.split(':')[0]).name:28s} {factor:>6s} {r['image']:.4f} {pixel:>6s} {r['fpr']:.3f}  "
                      f"{len(r['caught'])}: {' '.join(r['caught'])}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
