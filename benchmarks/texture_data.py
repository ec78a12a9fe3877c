"""Real-texture anomaly data: crops of photographs that ship with scikit-image, with synthetic defects.

    python benchmarks/texture_data.py OUT [--textures brick,grass,gravel,ihc] [--crop 64] [--seed 0]

For each photograph, training crops come from the top 60% of its rows and test crops from the
bottom 40% (rows the model never saw). Half of the test crops get one defect each, drawn from
DEFECTS, and a mask of the pixels it changed. Layout per texture, the one `vaekit evaluate`
reads:

    OUT/TEXTURE/train/              normal crops            -> vaekit train
    OUT/TEXTURE/test/normal/        held-out normal crops
    OUT/TEXTURE/test/anomalous/     KIND_NNNN.png, one defect each (the kind is in the name)
    OUT/TEXTURE/test/masks/         KIND_NNNN.png, 255 where the defect is

The defects are meant to be what an inspector would call a defect on any surface, not a
signature of one detector: material that does not belong (a blob of another texture), a thin
line (scratch, crack), missing detail (smudge), missing material (hole), discolouration (stain).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# name -> file in skimage's bundled data folder (real photographs; ihc is colour microscopy)
PHOTOS = {"brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png", "ihc": "ihc.png"}
DEFECTS = ("blob", "scratch", "crack", "smudge", "hole", "stain")
TRAIN_ROWS = 0.6  # share of the photograph's rows that training crops come from


def load_photo(name: str) -> np.ndarray:
    """A bundled photograph as uint8 (H, W) or (H, W, 3)."""
    from PIL import Image
    import skimage

    path = Path(skimage.__file__).parent / "data" / PHOTOS[name]
    with Image.open(path) as im:
        im = im.convert("L" if im.mode in ("L", "I", "I;16") else "RGB")
        return np.asarray(im)


def random_crops(photo: np.ndarray, rows: tuple[int, int], n: int, crop: int, rng: np.random.Generator) -> np.ndarray:
    """n crops whose top-left corners fall so that every crop lies within rows [r0, r1)."""
    r0, r1 = rows
    ys = rng.integers(r0, r1 - crop + 1, n)
    xs = rng.integers(0, photo.shape[1] - crop + 1, n)
    return np.stack([photo[y:y + crop, x:x + crop] for y, x in zip(ys, xs)])


def blob_mask(size: int, rng: np.random.Generator, radius: tuple[float, float] = (5, 12)) -> np.ndarray:
    """An irregular blob: a disc whose radius wobbles with angle, somewhere away from the border."""
    r = rng.uniform(*radius)
    cy, cx = rng.uniform(r + 2, size - r - 2, 2)
    yy, xx = np.mgrid[:size, :size]
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = sum(rng.uniform(-0.25, 0.25) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    return np.hypot(yy - cy, xx - cx) <= r * (1 + wobble)


def polyline_mask(size: int, rng: np.random.Generator, width: float, steps: int, wiggle: float) -> np.ndarray:
    """A thin curve: a random walk of `steps` unit steps whose heading turns by up to `wiggle`."""
    y, x = rng.uniform(size * 0.2, size * 0.8, 2)
    heading = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), bool)
    for _ in range(steps):
        heading += rng.uniform(-wiggle, wiggle)
        y, x = y + np.sin(heading), x + np.cos(heading)
        mask |= np.hypot(yy - y, xx - x) <= width / 2
    return mask


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sig = (sigma, sigma, 0) if img.ndim == 3 else sigma
    return gaussian_filter(img.astype(np.float64), sig, mode="reflect")


def add_defect(img: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(defective image uint8, mask bool (H, W)). `donor` is a crop of another photograph."""
    size = img.shape[0]
    out = img.astype(np.float64)
    expand = (lambda m: m[..., None]) if img.ndim == 3 else (lambda m: m)
    if kind == "blob":  # foreign material
        mask = blob_mask(size, rng)
        out = np.where(expand(mask), donor.astype(np.float64), out)
    elif kind == "scratch":  # a straight-ish thin line, brighter or darker than the surface
        mask = polyline_mask(size, rng, width=rng.uniform(1.5, 2.5), steps=int(rng.integers(20, 40)), wiggle=0.08)
        level = 235.0 if rng.random() < 0.5 else 20.0
        out = np.where(expand(mask), 0.3 * out + 0.7 * level, out)
    elif kind == "crack":  # a dark, wandering fissure
        mask = polyline_mask(size, rng, width=rng.uniform(1.2, 2.0), steps=int(rng.integers(25, 45)), wiggle=0.6)
        out = np.where(expand(mask), 0.25 * out, out)
    elif kind == "smudge":  # detail wiped out: the surface blurred inside a blob
        mask = blob_mask(size, rng, radius=(7, 14))
        out = np.where(expand(mask), _blur(img, rng.uniform(2.5, 4.0)), out)
    elif kind == "hole":  # missing material: a dark pit with a little noise
        mask = blob_mask(size, rng, radius=(4, 9))
        pit = rng.uniform(5, 30) + rng.normal(0, 4, img.shape)
        out = np.where(expand(mask), pit, out)
    elif kind == "stain":  # discolouration with a soft edge
        mask = blob_mask(size, rng, radius=(7, 14))
        soft = _blur(mask.astype(np.float64), 1.5)
        shift = rng.choice([-1, 1]) * rng.uniform(45, 70)
        if img.ndim == 3:  # a coloured stain: shift the channels unevenly
            shift = shift * rng.uniform(0.3, 1.0, 3)
        out = out + expand(soft) * shift
        mask = soft > 0.25
    else:
        raise ValueError(f"unknown defect {kind!r}; choose from {DEFECTS}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def build(name: str, out: Path, crop: int = 64, n_train: int = 1000, n_test: int = 120, seed: int = 0,
          kinds: tuple[str, ...] = DEFECTS) -> Path:
    """Write one texture's folders (see the module docstring); returns OUT/NAME."""
    from PIL import Image

    rng = np.random.default_rng([seed, sum(map(ord, name))])
    photo = load_photo(name)
    split = int(photo.shape[0] * TRAIN_ROWS)
    train = random_crops(photo, (0, split), n_train, crop, rng)
    test = random_crops(photo, (split, photo.shape[0]), 2 * n_test, crop, rng)
    donors = {k: load_photo(k) for k in PHOTOS if k != name}
    root = out / name
    dirs = {d: root / d for d in ("train", "test/normal", "test/anomalous", "test/masks")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(train):
        Image.fromarray(x).save(dirs["train"] / f"{i:04d}.png")
    for i, x in enumerate(test[:n_test]):
        Image.fromarray(x).save(dirs["test/normal"] / f"{i:04d}.png")
    for i, x in enumerate(test[n_test:]):
        kind = kinds[i % len(kinds)]
        donor_photo = donors[sorted(donors)[int(rng.integers(len(donors)))]]
        donor = random_crops(donor_photo, (0, donor_photo.shape[0]), 1, crop, rng)[0]
        if donor.ndim != x.ndim:  # match the photograph's colour mode
            donor = donor.mean(-1).astype(np.uint8) if x.ndim == 2 else np.repeat(donor[..., None], 3, -1)
        bad, mask = add_defect(x, kind, rng, donor)
        Image.fromarray(bad).save(dirs["test/anomalous"] / f"{kind}_{i:04d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(dirs["test/masks"] / f"{kind}_{i:04d}.png")
    return root


def main(make=None, doc: str | None = None) -> None:
    """The command line of a generator: `make` is its build (this module's by default)."""
    make = make or build
    ap = argparse.ArgumentParser(description=(doc or __doc__).split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--textures", default=",".join(PHOTOS))
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=120, help="normal test crops; as many anomalous ones")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for name in args.textures.split(","):
        print(make(name, args.out, args.crop, args.n_train, args.n_test, args.seed))


if __name__ == "__main__":
    main()
