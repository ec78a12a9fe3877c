"""The defect reader on few large images with small defects (an inspection setting), tiled.

    python benchmarks/reader_large.py [--choose brick,gravel] [--confirm grass,ihc] [--work DIR]

Per photograph (scikit-image's, as in texture_data.py): 40 normal training images of 256 x 256
px, windows of the top half at random horizontal offsets; 30 normal and 30 defective test
images, windows of the bottom half (rows the training never saw), each defective one with
one defect from the BENCHMARK's generator (texture_data.add_defect) covering at most 1% of
the image (redrawn until it does). What runs:

  VAE       vaekit train (CLI, default settings) on 1000 random 64 px crops of the 40 images
  residual  the VAE's residual log(1 + R), computed over the whole image in overlapping 64 px
            tiles (vaekit.reader.features.tiled); image score its largest 5 x 5 mean
  reader    vaekit.reader trained on random 64 px crops of the 40 images, then run on each
            whole 256 px image at once (fully convolutional), its VAE features tiled

(vaekit's CLI shrinks such images to 64 px today; the residual column is what the VAE itself
gives at native resolution.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reader_textures as rt  # noqa: E402  (also adds the extra photos to texture_data)
import texture_data  # noqa: E402

SIDE, N_TRAIN, N_TEST, MAX_AREA = 256, 40, 30, 0.01
ENLARGE = 1  # the photos enlarged this many times (bicubic) first: images larger than the photos, for a cost test


def photo_of(name: str) -> np.ndarray:
    """texture_data's photo, enlarged ENLARGE times."""
    photo = texture_data.load_photo(name)
    if ENLARGE == 1:
        return photo
    from PIL import Image

    h, w = photo.shape[:2]
    return np.asarray(Image.fromarray(photo).resize((w * ENLARGE, h * ENLARGE), Image.Resampling.BICUBIC))


def windows(photo: np.ndarray, rows: tuple[int, int], n: int, rng, width: int | None = None) -> np.ndarray:
    """n windows of SIDE rows (rows[1] - rows[0] == SIDE) and `width` columns (default SIDE),
    starting at row rows[0], at random columns."""
    width = width or SIDE
    if width > photo.shape[1]:
        raise SystemExit(f"the photo has {photo.shape[1]} columns; --width {width} needs as many")
    xs = rng.integers(0, photo.shape[1] - width + 1, n)
    return np.stack([photo[rows[0]:rows[1], x:x + width] for x in xs])


def small_defect(img: np.ndarray, donors: list[np.ndarray], rng) -> tuple[np.ndarray, np.ndarray]:
    """One benchmark defect covering at most MAX_AREA of the image (drawn again until it does);
    in an image wider than tall, inside a square window of it at a random column."""
    if img.shape[1] > img.shape[0]:
        h, x = img.shape[0], int(rng.integers(0, img.shape[1] - img.shape[0] + 1))
        bad, window_mask = small_defect(img[:, x : x + h], donors, rng)
        out, mask = img.copy(), np.zeros(img.shape[:2], bool)
        out[:, x : x + h], mask[:, x : x + h] = bad, window_mask
        return out, mask
    while True:
        kind = texture_data.DEFECTS[int(rng.integers(len(texture_data.DEFECTS)))]
        donor = donors[int(rng.integers(len(donors)))]
        bad, mask = texture_data.add_defect(img, kind, rng, donor)
        if 0 < mask.mean() <= MAX_AREA:
            return bad, mask


def build(name: str, seed: int = 0, width: int | None = None) -> dict[str, np.ndarray]:
    """train uint8 (N, C, S, W), test (M, C, S, W), labels (M,), masks bool (M, S, W); W is
    `width`, default S (square images)."""
    rng = np.random.default_rng([seed, 7, sum(map(ord, name))])
    photo = photo_of(name)
    half = photo.shape[0] // 2
    if half < SIDE:
        raise SystemExit(f"{name}: the photo has {photo.shape[0]} rows; need {2 * SIDE}")
    train = windows(photo, (half - SIDE, half), N_TRAIN, rng, width)
    test = windows(photo, (half, half + SIDE), 2 * N_TEST, rng, width)
    others = [photo_of(k) for k in texture_data.PHOTOS if k != name]
    donors = [windows(o, (0, SIDE), 1, rng)[0] for o in others for _ in range(2)]
    donors = [d if d.ndim == photo.ndim else (d.mean(-1).astype(np.uint8) if photo.ndim == 2
                                               else np.repeat(d[..., None], 3, -1)) for d in donors]
    masks = np.zeros(test.shape[:3], bool)
    for i in range(N_TEST, 2 * N_TEST):
        test[i], masks[i] = small_defect(test[i], donors, rng)
    chw = (lambda a: a[:, None]) if photo.ndim == 2 else (lambda a: a.transpose(0, 3, 1, 2))
    return {"train": chw(train), "test": chw(test), "labels": np.r_[np.zeros(N_TEST), np.ones(N_TEST)], "masks": masks}


def train_vae(name: str, train: np.ndarray, work: Path, threads: int) -> tuple[Path, float]:
    """1000 random 64 px crops of the training images to a folder, then `vaekit train` on it."""
    from PIL import Image

    folder, run = work / "large" / name / "crops", work / "large" / name / "run"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        rng = np.random.default_rng(1)
        for i in range(1000):
            j, y, x = rng.integers(len(train)), *rng.integers(0, SIDE - 64 + 1, 2)
            crop = train[j, :, y:y + 64, x:x + 64]
            Image.fromarray(crop[0] if crop.shape[0] == 1 else crop.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
    return run, rt.train_vae(folder, run, threads)


def run_photo(name: str, work: Path, threads: int) -> dict:
    import torch

    import vaekit as vk
    from vaekit.reader.features import tiled, vae_features
    from vaekit.reader.net import ReaderConfig

    torch.set_num_threads(threads)
    data = build(name)
    run, vae_seconds = train_vae(name, data["train"], work, threads)
    net = vk.load(run, device="cpu").net
    tile = net.cfg.image_size
    gt = data["masks"].ravel()
    out = {"vae_seconds": vae_seconds, "defect_area": float(data["masks"][N_TEST:].mean())}
    s, m = rt.residual_scores(tiled(vae_features(net, ("r",)), tile), data["test"])
    out["residual"] = {"image": rt.auroc(data["labels"], s), "pixel": rt.auroc(gt, m.ravel())}
    features = tiled(vae_features(net, rt.FEATURES), tile) if rt.FEATURES else None
    t0 = time.perf_counter()
    s, m, secs = rt.reader_scores(data["train"], features, data["test"], ReaderConfig())
    out["reader"] = {"image": rt.auroc(data["labels"], s), "pixel": rt.auroc(gt, m.ravel()), "seconds": secs,
                     "read_seconds": time.perf_counter() - t0 - secs}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--choose", default="brick,gravel")
    ap.add_argument("--confirm", default="grass,ihc")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="keep the crops and VAE runs here, and reuse them")
    args = ap.parse_args()
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="vaekit-reader-large-")
    work = args.work or Path(tmp.name)
    print(f"{N_TRAIN} normal training images of {SIDE} px per photo; {N_TEST} normal + {N_TEST} defective test "
          f"images, one defect each, <= {MAX_AREA:.0%} of the image")
    print(f"{'half':<8}{'photo':<8}{'residual img / pix':>20}{'reader img / pix':>18}{'area':>7}{'reader s':>9}{'read s':>8}")
    for half, names in (("choose", args.choose), ("confirm", args.confirm)):
        rows = []
        for name in [n for n in names.split(",") if n]:
            r = run_photo(name, work, args.threads)
            rows.append(r)
            print(f"{half:<8}{name:<8}{r['residual']['image']:>12.4f} / {r['residual']['pixel']:.3f}"
                  f"{r['reader']['image']:>10.4f} / {r['reader']['pixel']:.3f}{r['defect_area']:>7.2%}"
                  f"{r['reader']['seconds']:>9.0f}{r['reader']['read_seconds']:>8.0f}", flush=True)
        if rows:
            mean = lambda m, k: np.mean([r[m][k] for r in rows])  # noqa: E731
            print(f"{half:<8}{'mean':<8}{mean('residual', 'image'):>12.4f} / {mean('residual', 'pixel'):.3f}"
                  f"{mean('reader', 'image'):>10.4f} / {mean('reader', 'pixel'):.3f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
