"""The defect reader (vaekit.reader) against vaekit's default score, on real textures.

    python benchmarks/reader_textures.py [--choose brick,gravel] [--confirm grass,ihc,moon,retina]
                                         [--work DIR] [--lofo] [--json out.json]

Data: benchmarks/texture_data.py (photographs that ship with scikit-image; 1000 training crops of
the top 60% of each photo, 120 normal and 120 defective test crops of the bottom 40%, six defect
kinds from the BENCHMARK's generator, which shares no code with vaekit.reader.synth). Two more
photos join the confirm half: the lunar surface (moon) and the inside of a fundus photograph
(retina, its central 640 x 640 px). Per texture, in one run:

  default   vaekit train (CLI, default settings), then `vaekit evaluate` (image and pixel AUROC)
            and the same default score per defect kind (vaekit.load(...).score)
  residual  the VAE's own per-pixel residual R (reconstruction NLL minus its floor): image score
            the largest 5 x 5 mean of log(1 + R), pixel map log(1 + R)
  reader    vaekit.reader trained on the same training crops (ReaderConfig defaults), reading the
            image with the VAE features it is configured for (FEATURES)
  lofo      (--lofo) the reader trained without the "line" shape family: its scratches and cracks
            are defects of a family it never saw
  reader+R  (--with-r) the reader given the VAE's residual log(1 + R) beside the image

Every reader setting was chosen on the choose half (brick, gravel) only. With --work the data
and VAE runs are kept and reused (a run directory with a config.json is not retrained).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import texture_data  # noqa: E402
from cli_runner import vaekit  # noqa: E402

FEATURES: tuple[str, ...] = ()  # VAE parts the reader reads (vaekit.reader.features.PARTS); see docs
EXTRA = {"moon": ("moon.png", None), "retina": ("retina.jpg", 640)}  # name -> (file, central crop side)


def load_photo(name: str) -> np.ndarray:
    """texture_data.load_photo, plus the extra confirm photos (the benchmark's donors stay its own four)."""
    if name not in EXTRA:
        return _original_load(name)
    from PIL import Image
    import skimage

    file, side = EXTRA[name]
    with Image.open(Path(skimage.__file__).parent / "data" / file) as im:
        a = np.asarray(im.convert("RGB" if im.mode == "RGB" else "L"))
    if side:
        y, x = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
        a = a[y:y + side, x:x + side]
    return a


_original_load = texture_data.load_photo
texture_data.load_photo = load_photo


def read_folder(folder: Path, channels: int) -> tuple[list[str], np.ndarray]:
    """(names, uint8 (N, C, H, W)) of the PNGs in a folder, as vaekit decodes them."""
    from PIL import Image

    names = sorted(p.name for p in folder.glob("*.png"))
    a = np.stack([np.asarray(Image.open(folder / n).convert("RGB" if channels == 3 else "L")) for n in names])
    return names, (a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2))


def auroc(labels, scores) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def by_kind(kinds: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC of normal crops against each defect kind, and against all defective crops ("image")."""
    out = {k: auroc(kinds[(kinds == "normal") | (kinds == k)] == k, scores[(kinds == "normal") | (kinds == k)])
           for k in sorted(set(kinds) - {"normal"})}
    out["image"] = auroc(kinds != "normal", scores)
    return out


def train_vae(root: Path, run: Path, threads: int) -> float:
    """vaekit train at default settings, unless `run` holds a finished run; seconds taken (0: reused)."""
    if (run / "config.json").exists():
        return 0.0
    t0 = time.perf_counter()
    vaekit(threads, "train", root, "--out", run, "--overwrite")
    return time.perf_counter() - t0


def residual_scores(features, x, smooth: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The VAE-only baseline: log(1 + R) per pixel, image score its largest smooth x smooth mean."""
    import torch
    import torch.nn.functional as F

    maps = np.concatenate([features(torch.from_numpy(x[i:i + 64].astype(np.float32) / 255))[:, -1].numpy()
                           for i in range(0, len(x), 64)])
    pooled = F.avg_pool2d(torch.from_numpy(maps)[:, None], smooth, 1, smooth // 2, count_include_pad=False)
    return pooled.flatten(1).max(1).values.numpy(), maps


def reader_scores(train_x, features, x, cfg, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Train a reader on train_x and read x: (image scores, maps, training seconds)."""
    from vaekit.reader.train import load_reader, read, train_reader

    t0 = time.perf_counter()
    state = train_reader(train_x, features, cfg, seed)
    seconds = time.perf_counter() - t0
    scores, maps = read(load_reader(state, cfg), x, features)
    return scores, maps, seconds


def run_texture(name: str, work: Path, threads: int, lofo: bool, with_r: bool) -> dict:
    import torch

    import vaekit as vk
    from vaekit.reader.features import vae_features
    from vaekit.reader.net import ReaderConfig

    torch.set_num_threads(threads)
    root = work / "data" / name
    if not (root / "test" / "masks").is_dir():
        texture_data.build(name, work / "data")
    run = work / "runs" / name
    vae_seconds = train_vae(root / "train", run, threads)
    test = root / "test"
    ev = json.loads(vaekit(threads, "evaluate", run, "--normal", test / "normal", "--anomalous", test / "anomalous",
                           "--masks", test / "masks", "--json"))
    engine = vk.load(run, device="cpu")
    ch = engine.net.cfg.channels
    _, train_x = read_folder(root / "train", ch)
    _, normal = read_folder(test / "normal", ch)
    bad_names, bad = read_folder(test / "anomalous", ch)
    _, masks = read_folder(test / "masks", 1)
    x = np.concatenate([normal, bad])
    kinds = np.array(["normal"] * len(normal) + [n.split("_")[0] for n in bad_names])
    gt = np.concatenate([np.zeros((len(normal), *masks.shape[2:]), bool), masks[:, 0] > 127]).ravel()

    out = {"vae_seconds": vae_seconds, "default": {**by_kind(kinds, engine.score(x).score), "pixel": ev["pixel_auroc"],
                                                   "cli_image": ev["auroc"]}}
    r_only = vae_features(engine.net, ("r",))
    s, m = residual_scores(r_only, x)
    out["residual"] = {**by_kind(kinds, s), "pixel": auroc(gt, m.ravel())}
    features = vae_features(engine.net, FEATURES) if FEATURES else None
    cfg = ReaderConfig()
    runs = {"reader": cfg, **({"lofo": replace(cfg, shapes=tuple(s for s in cfg.shapes if s != "line"))} if lofo else {})}
    if with_r:
        runs["reader+R"] = cfg
    for key, c in runs.items():
        s, m, secs = reader_scores(train_x, r_only if key == "reader+R" else features, x, c)
        out[key] = {**by_kind(kinds, s), "pixel": auroc(gt, m.ravel()), "seconds": secs}
    return out


def print_tables(results: dict, halves: dict[str, list[str]]) -> None:
    methods = [m for m in ("default", "residual", "reader", "lofo", "reader+R") if all(m in r for r in results.values())]
    kinds = [k for k in next(iter(results.values()))["default"] if k not in ("image", "pixel", "cli_image")]
    for half, names in halves.items():
        names = [n for n in names if n in results]
        if not names:
            continue
        print(f"\n{half} half: image / pixel AUROC")
        print(f"{'texture':<9}" + "".join(f"{m:>17}" for m in methods) + f"{'reader s':>10}{'VAE s':>8}")
        for n in names + ["mean"]:
            rs = [results[k] for k in names] if n == "mean" else [results[n]]
            cells = "".join(f"{np.mean([r[m]['image'] for r in rs]):>10.4f} /{np.mean([r[m]['pixel'] for r in rs]):.3f}"
                            for m in methods)
            secs = f"{np.mean([r['reader']['seconds'] for r in rs]):>10.0f}{np.mean([r['vae_seconds'] for r in rs]):>8.0f}"
            print(f"{n:<9}{cells}{secs}")
        print(f"image AUROC by defect kind ({half}: mean over {', '.join(names)})")
        print(f"{'kind':<9}" + "".join(f"{m:>10}" for m in methods) + "   worst texture (reader)")
        for k in kinds:
            vals = "".join(f"{np.mean([results[n][m][k] for n in names]):>10.4f}" for m in methods)
            worst = min(names, key=lambda n: results[n]["reader"][k])
            print(f"{k:<9}{vals}   {worst} {results[worst]['reader'][k]:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--choose", default="brick,gravel")
    ap.add_argument("--confirm", default="grass,ihc,moon,retina")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="keep data and VAE runs here, and reuse them")
    ap.add_argument("--lofo", action="store_true", help="also train a reader without line-shaped defects")
    ap.add_argument("--with-r", action="store_true", help="also train a reader that reads the VAE's residual too")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="vaekit-reader-")
    work = args.work or Path(tmp.name)
    halves = {"choose": [n for n in args.choose.split(",") if n], "confirm": [n for n in args.confirm.split(",") if n]}
    results = {}
    for name in halves["choose"] + halves["confirm"]:
        results[name] = r = run_texture(name, work, args.threads, args.lofo, args.with_r)
        print(f"{name}: default {r['default']['image']:.4f} (CLI {r['default']['cli_image']:.4f})/{r['default']['pixel']:.4f}  reader "
              f"{r['reader']['image']:.4f}/{r['reader']['pixel']:.4f} ({r['reader']['seconds']:.0f} s)", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    print_tables(results, halves)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
