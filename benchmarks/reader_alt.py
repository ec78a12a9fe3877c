"""The defect reader alone on both texture generators, with its default fills or with an extra fill.

    python benchmarks/reader_alt.py --work DIR [--textures brick,gravel] [--seeds 0,1] [--variant warp|foreign|faint|opacity]
                                   [--arms base,VARIANT] [--out results.json]

DIR is a benchmarks/textures.py work folder that holds data/NAME (texture_data.py) and
data_alt/NAME (texture_data_alt.py, made here when missing) and runs/NAME (a VAE run, used
only for its channel count). Per texture and seed, two readers are trained on data/NAME/train
exactly as benchmarks/reader_textures.py trains its "reader" (train_reader(crops, None,
ReaderConfig(), seed), reading the image alone): "base" with vaekit.reader.synth's default
fills, and "warp" with one more fill, WARP below (the surface displaced by a smooth random field
inside the defect's shape; measured and not kept in vaekit, docs/detection.md "A third defect
generator"), patched into vaekit.reader.synth for that reader's training only. With --variant faint the
second reader is "faint" instead: vaekit.reader.synth's defects allowed to be fainter (the
optional opacity factor drawn from 0.25-1 instead of 0.6-1, and MIN_VISIBLE 3 instead of 6;
FAINT below), patched in the same way; also measured and not kept. With --variant opacity it is
"opacity": DRAEM's blend, the fill laid over the mask at a random opacity (OPACITY below);
measured on four seeds and not kept either. With --variant foreign it is "foreign": DRAEM's
anomaly source, a window of a photo that is not the surface (scikit-learn's two sample photos)
as a sixth fill (foreign_fill below); measured on three seeds and not kept. --channels gives the
textures' channels when WORK/runs holds no run of them. --variant clean50 and dice change the
recipe instead (CONFIGS below: half of each batch without a defect instead of 30%; BCE + Dice
instead of the focal loss).
Each reads both generators' 120 normal + 120 defective test crops: image AUROC, pixel AUROC and
image AUROC per defect kind. Results are written after every reader; a reader already in --out
is not trained again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import texture_data_alt  # noqa: E402
from reader_textures import by_kind, read_folder, auroc  # noqa: E402


def warp_fill(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The surface itself displaced by a smooth random field (a fold, a crease, a bent grid):
    each pixel samples the image 1.5-5 px away along two Perlin fields of 2-8 cells, bilinear,
    edges clamped. No intensity is added; only the geometry changes. (C, H, W) grey levels."""
    from vaekit.reader.synth import perlin

    c, h, w = img.shape
    cells = int(rng.choice([2, 4, 8]))
    amp = rng.uniform(1.5, 5.0)
    sy = np.clip(np.arange(h)[:, None] + amp * perlin(h, w, (cells, cells), rng), 0, h - 1)
    sx = np.clip(np.arange(w)[None, :] + amp * perlin(h, w, (cells, cells), rng), 0, w - 1)
    y0 = np.minimum(sy.astype(int), h - 2) if h > 1 else np.zeros((h, w), int)
    x0 = np.minimum(sx.astype(int), w - 2) if w > 1 else np.zeros((h, w), int)
    fy, fx = sy - y0, sx - x0
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    return (img[:, y0, x0] * (1 - fy) * (1 - fx) + img[:, y0, x1] * (1 - fy) * fx
            + img[:, y1, x0] * fy * (1 - fx) + img[:, y1, x1] * fy * fx)


def _foreign_sources() -> tuple[np.ndarray, ...]:
    """scikit-learn's two sample photos (a temple, a flower; shipped with the package) as float
    (3, H, W) grey levels, loaded once."""
    global _SOURCES
    if _SOURCES is None:
        from sklearn.datasets import load_sample_images

        _SOURCES = tuple(np.moveaxis(np.asarray(im, np.float64), -1, 0) for im in load_sample_images().images)
    return _SOURCES


_SOURCES = None


def foreign_fill(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """DRAEM's anomaly source (Zavrtanik et al. 2021 lay textures of another data set, DTD, into the
    defect's shape): a window of a photo that is not the surface, 0.5-3 times the crop's side
    (finer or coarser grain), turned by a multiple of 90 degrees, grey for a grey surface; with
    probability 1/2 brought to the surface's own mean and spread per channel, so that only its
    texture differs. (C, H, W) grey levels."""
    c, h, w = img.shape
    src = _foreign_sources()[int(rng.integers(2))]
    f = rng.uniform(0.5, 3.0)
    wh, ww = min(src.shape[1], max(2, round(h * f))), min(src.shape[2], max(2, round(w * f)))
    y, x = int(rng.integers(0, src.shape[1] - wh + 1)), int(rng.integers(0, src.shape[2] - ww + 1))
    p = src[:, y + np.arange(h) * wh // h][:, :, x + np.arange(w) * ww // w]
    if h == w:
        p = np.rot90(p, int(rng.integers(4)), axes=(1, 2))
    if c != 3 or rng.random() < 0.5:
        p = np.broadcast_to(np.tensordot([0.299, 0.587, 0.114], p, 1)[None], (c, h, w))
    if rng.random() < 0.5:
        m, s = p.mean((1, 2), keepdims=True), p.std((1, 2), keepdims=True) + 1e-6
        p = (p - m) / s * img.std((1, 2), keepdims=True) + img.mean((1, 2), keepdims=True)
    return np.ascontiguousarray(p, dtype=np.float64)


class fill_patched:
    """Within the block, vaekit.reader.synth knows one more fill (NAME, drawn by FN(img, rng)) and
    the reader's training draws from FILLS + (NAME,); everything else as before."""

    name, fn = "warp", staticmethod(warp_fill)

    def __enter__(self):
        import functools

        from vaekit.reader import synth, train

        self.saved = synth.FILLS, synth.fill, train.make_defects
        fills, fill, name, fn = synth.FILLS + (self.name,), synth.fill, self.name, self.fn
        synth.FILLS = fills
        synth.fill = lambda kind, img, donor, rng: fn(img, rng) if kind == name else fill(kind, img, donor, rng)
        train.make_defects = functools.partial(synth.make_defects, fills=fills)

    def __exit__(self, *exc):
        from vaekit.reader import synth, train

        synth.FILLS, synth.fill, train.make_defects = self.saved


FAINT = {"opacity_low": 0.25, "min_visible": 3.0}  # today: 0.6 and synth.MIN_VISIBLE (6)
# DRAEM's blend (Zavrtanik et al. 2021: the anomaly source is laid over the image with an opacity
# beta drawn from [0.1, 1]): here, with probability 0.5, the fill is laid over the defect's mask
# with its opacity times beta ~ uniform(0.2, 1); the label stays the whole mask; MIN_VISIBLE 3.
OPACITY = {"opacity_low": 0.6, "min_visible": 3.0, "beta_p": 0.5, "beta_low": 0.2}


def one_defect_with(opacity_low: float, beta_p: float = 0.0, beta_low: float = 1.0):
    """vaekit.reader.synth.one_defect line for line, except that the opacity factor drawn with
    probability 0.3 is uniform(opacity_low, 1) (0.6 in vaekit) and, when beta_p > 0, the blend
    inside the mask is scaled by beta ~ uniform(beta_low, 1) with probability beta_p (one more
    draw per try; none when beta_p is 0, so the draws are vaekit's). MIN_VISIBLE is read from
    synth at call time, so the floor is whatever synth.MIN_VISIBLE holds then."""
    from vaekit.reader import synth

    def one_defect(img, donor, rng, shapes=synth.SHAPES, fills=synth.FILLS):
        x = img.astype(np.float64)
        _, h, w = img.shape
        for _ in range(8):
            alpha = synth.SHAPE_FNS[shapes[int(rng.integers(len(shapes)))]](h, w, rng)
            if rng.random() < 0.3:
                alpha = np.clip(synth.blur(alpha[None], rng.uniform(0.5, 1.5))[0] * 1.5, 0, 1)
            alpha = alpha * rng.uniform(opacity_low, 1.0) if rng.random() < 0.3 else alpha
            mask = alpha > 0.5
            if mask.sum() < 2:
                continue
            a = np.where(mask, alpha, 0.0)[None]
            if beta_p > 0 and rng.random() < beta_p:
                a = a * rng.uniform(beta_low, 1.0)
            f = synth.fill(fills[int(rng.integers(len(fills)))], x, donor.astype(np.float64), rng)
            out = np.clip(x * (1 - a) + f * a, 0, 255)
            if np.abs(np.rint(out) - x).max(0)[mask].mean() >= synth.MIN_VISIBLE:
                return out, mask
        return x, np.zeros((h, w), bool)

    return one_defect


class faint_patched:
    """Within the block, vaekit.reader.synth draws fainter defects (FAINT); make_defects (which
    the reader's training calls) looks one_defect and MIN_VISIBLE up in synth, so both apply."""

    def __init__(self, opacity_low: float = FAINT["opacity_low"], min_visible: float = FAINT["min_visible"],
                 beta_p: float = 0.0, beta_low: float = 1.0):
        self.opacity_low, self.min_visible = opacity_low, min_visible
        self.beta_p, self.beta_low = beta_p, beta_low

    def __enter__(self):
        from vaekit.reader import synth

        self.saved = synth.one_defect, synth.MIN_VISIBLE
        synth.one_defect = one_defect_with(self.opacity_low, self.beta_p, self.beta_low)
        synth.MIN_VISIBLE = self.min_visible

    def __exit__(self, *exc):
        from vaekit.reader import synth

        synth.one_defect, synth.MIN_VISIBLE = self.saved


class opacity_patched(faint_patched):
    """Within the block, synth's defects are laid over with DRAEM's blend opacity (OPACITY)."""

    def __init__(self):
        super().__init__(**OPACITY)


class warp_patched(fill_patched):
    """The fill "warp" (warp_fill)."""


class foreign_patched(fill_patched):
    """The fill "foreign" (foreign_fill)."""

    name, fn = "foreign", staticmethod(foreign_fill)


PATCHES = {"warp": warp_patched, "foreign": foreign_patched, "faint": faint_patched, "opacity": opacity_patched}
# variants of the training recipe rather than of the defects: ReaderConfig fields for that arm
CONFIGS = {"clean50": {"clean_fraction": 0.5}, "dice": {"loss": "bce_dice"}}


def test_set(root: Path, channels: int):
    test = root / "test"
    _, normal = read_folder(test / "normal", channels)
    names, bad = read_folder(test / "anomalous", channels)
    _, masks = read_folder(test / "masks", 1)
    kinds = np.array(["normal"] * len(normal) + [n.split("_")[0] for n in names])
    gt = np.concatenate([np.zeros((len(normal), *masks.shape[2:]), bool), masks[:, 0] > 127]).ravel()
    return np.concatenate([normal, bad]), kinds, gt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--textures", default="brick,gravel")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--variant", choices=sorted({**PATCHES, **CONFIGS}), default="warp",
                    help="the extra reader next to base (default warp, as before)")
    ap.add_argument("--arms", default=None, help="comma list of base and/or the variant (default base,VARIANT)")
    ap.add_argument("--out", type=Path, default=Path("reader_alt.json"))
    ap.add_argument("--channels", type=int, default=None,
                    help="the textures' channels (1 grey, 3 colour); default: read from WORK/runs/NAME")
    args = ap.parse_args()
    arms = (args.arms or f"base,{args.variant}").split(",")
    if set(arms) - {"base", args.variant}:
        ap.error(f"--arms must be base and/or {args.variant}, got {args.arms}")

    import torch

    import vaekit as vk
    from vaekit.reader.net import ReaderConfig
    from vaekit.reader.train import load_reader, read, train_reader

    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.textures.split(","):
        if not (args.work / "data_alt" / name / "test" / "masks").is_dir():
            texture_data_alt.build(name, args.work / "data_alt", train=False)
        ch = args.channels or vk.load(args.work / "runs" / name, device="cpu").net.cfg.channels
        _, train_x = read_folder(args.work / "data" / name / "train", ch)
        sets = {g: test_set(args.work / d / name, ch) for g, d in (("bench", "data"), ("alt", "data_alt"))}
        for seed in map(int, args.seeds.split(",")):
            for arm in arms:
                key = f"{name}/{seed}/{arm}"
                if key in results:
                    continue
                cfg = ReaderConfig(**CONFIGS.get(arm, {}))
                t0 = time.perf_counter()
                if arm in PATCHES:
                    with PATCHES[arm]():
                        state = train_reader(train_x, None, cfg, seed)
                else:
                    state = train_reader(train_x, None, cfg, seed)
                secs = time.perf_counter() - t0
                reader = load_reader(state, cfg)
                results[key] = {"seconds": secs}
                for g, (x, kinds, gt) in sets.items():
                    s, m = read(reader, x, None)
                    results[key][g] = {**by_kind(kinds, s), "pixel": auroc(gt, m.ravel())}
                r = results[key]
                print(f"{key}: bench {r['bench']['image']:.4f}/{r['bench']['pixel']:.4f}  alt {r['alt']['image']:.4f}/"
                      f"{r['alt']['pixel']:.4f}  ({secs:.0f} s)", flush=True)
                args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
