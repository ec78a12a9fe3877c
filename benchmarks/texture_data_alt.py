"""A third defect generator for the real-texture benchmark, modelled on real inspection data.

    python benchmarks/texture_data_alt.py OUT [--textures brick,grass,gravel,ihc] [--crop 64] [--seed 0]

The normal crops are texture_data.py's, the very same pixels (its photo loading, crop split and
random draw of crops); the defective crops start from the same base crops as texture_data's
defective ones but get a defect drawn HERE. This module shares no code with vaekit.reader.synth
(the reader's training defects) nor with texture_data's defect drawing (the benchmark's), so
it measures the reader on defect families that neither of those generators draws.

The kinds follow what the texture categories of real inspection sets show (MVTec AD: carpet
thread/cut/hole/colour/metal contamination, leather fold/poke/glue/cut/colour, tile glue
strip/grey stroke/oil/rough/crack, wood liquid/colour/scratch/hole, grid bent/broken):

    thread         a thin curved fibre lying on the surface, 1-2 px, lighter or darker, anti-aliased
    cut            a straight, sharp, narrow gap with a shadowed edge (and a lit one)
    fold           a geometric warp: the surface squeezed towards a crease line by a smooth field,
                   no intensity added (a crease in leather, a bent grid)
    contamination  a cluster of a few tiny dark or bright specks (metal, dirt)
    rough          extra pixel-scale roughness in a soft patch (not blur: detail added)
    glue           a translucent smooth film with a faint bright rim
    liquid         a dark translucent stain with a sharp irregular edge and a darker ring
    stroke         a long, low-contrast grey brush stroke with streaks along it

Every defect covers at most 4% of the crop (the mask is redrawn until it does) and at least
6 px. Layout as texture_data.py's (OUT/TEXTURE/{train,test/normal,test/anomalous,test/masks},
anomalous and mask files named KIND_NNNN.png); deterministic from --seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

sys.path.insert(0, str(Path(__file__).resolve().parent))
import texture_data  # noqa: E402  (photos, crop split and crops only)

KINDS = ("thread", "cut", "fold", "contamination", "rough", "glue", "liquid", "stroke")
MAX_AREA = 0.04  # share of the crop a defect's mask may cover
MIN_AREA = 6


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[:size, :size].astype(np.float64)


def _curve(rng: np.random.Generator, size: int, length: float, bend: float) -> np.ndarray:
    """Points (K, 2), 0.25 px apart, of a smooth curve: the heading is a random sum of two slow
    sines of the arc length (bend 0: a straight line)."""
    n = max(2, int(length * 4))
    s = np.linspace(0, length, n)
    amp = rng.uniform(0, bend, 2)
    freq = rng.uniform(0.5, 2.0, 2) * 2 * np.pi / max(length, 1)
    phase = rng.uniform(0, 2 * np.pi, 2)
    heading = rng.uniform(0, 2 * np.pi) + sum(a * np.sin(f * s + p) for a, f, p in zip(amp, freq, phase))
    step = np.diff(s, prepend=0.0)
    pts = np.cumsum(np.stack([np.sin(heading) * step, np.cos(heading) * step], 1), 0)
    pts -= pts.mean(0)  # centre the curve on a random point that keeps most of it inside
    return pts + rng.uniform(0.25 * size, 0.75 * size, 2)


def _distance(pts: np.ndarray, size: int) -> np.ndarray:
    """Distance of every pixel centre to the nearest of the points (dense, so ~ to the curve)."""
    yy, xx = _grid(size)
    d = np.full((size, size), np.inf)
    for i in range(0, len(pts), 64):
        p = pts[i:i + 64]
        d = np.minimum(d, np.sqrt((yy[None] - p[:, 0, None, None]) ** 2 + (xx[None] - p[:, 1, None, None]) ** 2).min(0))
    return d


def _soft_window(size: int, rng: np.random.Generator, r: tuple[float, float], elong: float = 1.0):
    """A smooth bump exp(-q^2) over a random rotated ellipse (radii r, one of them stretched by
    elong); also its centre, angle and radii."""
    yy, xx = _grid(size)
    ra = rng.uniform(*r) * elong
    rb = rng.uniform(*r)
    c = rng.uniform(ra / 2 + 2, size - ra / 2 - 2, 2) if ra < size / 2 else rng.uniform(size * 0.3, size * 0.7, 2)
    t = rng.uniform(0, np.pi)
    u = (yy - c[0]) * np.cos(t) + (xx - c[1]) * np.sin(t)
    v = -(yy - c[0]) * np.sin(t) + (xx - c[1]) * np.cos(t)
    return np.exp(-((u / ra) ** 2 + (v / rb) ** 2)), c, t, (ra, rb), (u, v)


def _blend(out: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    a = alpha[..., None]
    return out * (1 - a) + np.asarray(colour, np.float64) * a


def _speck_colour(img: np.ndarray, rng: np.random.Generator, dark: bool, c: int) -> np.ndarray:
    if dark:
        base = rng.uniform(0, 40)
    else:
        base = rng.uniform(215, 255)
    col = np.full(c, base)
    if c == 3 and rng.random() < 0.5:  # a coloured fibre / metal
        col = np.clip(col * rng.uniform(0.6, 1.0, 3) + (0 if dark else rng.uniform(-30, 0, 3)), 0, 255)
    return col


def draw(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One defect of `kind` on float (H, W, C) grey levels: (defective float, mask bool (H, W))."""
    size, c = img.shape[0], img.shape[2]
    out = img.copy()
    mean = img.mean((0, 1))
    sd = float(img.std()) + 1.0
    if kind == "thread":
        pts = _curve(rng, size, rng.uniform(14, 40), bend=rng.uniform(0.3, 1.5))
        width = rng.uniform(1.0, 2.0)
        alpha = np.clip(width / 2 + 0.5 - _distance(pts, size), 0, 1)  # 1 px of anti-aliasing
        opacity = rng.uniform(0.7, 1.0)
        out = _blend(out, alpha * opacity, _speck_colour(img, rng, rng.random() < 0.5, c))
        mask = alpha > 0.3
    elif kind == "cut":
        yy, xx = _grid(size)
        length, w = rng.uniform(10, 28), rng.uniform(1.0, 2.2)
        cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
        t = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)
        v = -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
        # lens-shaped gap: full width in the middle, closing at both ends
        half = (w / 2) * np.sqrt(np.clip(1 - (2 * u / length) ** 2, 0, 1))
        inside = np.clip(half + 0.5 - np.abs(v), 0, 1) * (np.abs(u) < length / 2)
        side = 1 if rng.random() < 0.5 else -1  # which lip lies in shadow
        lip = (np.abs(u) < length / 2) & (half > 0.2)
        shadow = lip & (side * v > half) & (side * v <= half + 1.5)
        lit = lip & (-side * v > half) & (-side * v <= half + 1.0)
        depth = rng.uniform(0.1, 0.35)  # how much light reaches the bottom of the gap
        out = out * (1 - inside[..., None] * (1 - depth))
        out = np.where(shadow[..., None] & (inside[..., None] < 0.5), out * rng.uniform(0.6, 0.8), out)
        out = np.where(lit[..., None] & (inside[..., None] < 0.5), np.minimum(out * rng.uniform(1.1, 1.3), 255), out)
        mask = (inside > 0.3) | shadow | lit
    elif kind == "fold":
        win, _, t, _, (_, v) = _soft_window(size, rng, (3.0, 5.0), elong=rng.uniform(1.8, 2.6))
        amp, scale = rng.uniform(1.8, 3.5), rng.uniform(1.0, 2.5)
        push = amp * np.tanh(v / scale) * win  # sample from further out: the surface squeezed into the crease
        yy, xx = _grid(size)
        src_y, src_x = yy - push * np.sin(t), xx + push * np.cos(t)  # along the crease's normal, grad v
        chans = [map_coordinates(img[..., k], [src_y, src_x], order=3, mode="reflect") for k in range(c)]
        out = np.stack(chans, -1)
        mask = amp * win > 0.5  # the warped region, crease line included
    elif kind == "contamination":
        yy, xx = _grid(size)
        centre = rng.uniform(0.2 * size, 0.8 * size, 2)
        spread = rng.uniform(2.0, 6.0)
        dark = rng.random() < 0.5
        alpha = np.zeros((size, size))
        for _ in range(int(rng.integers(3, 9))):
            p = centre + rng.normal(0, spread, 2)
            r = rng.uniform(0.5, 1.4)
            alpha = np.maximum(alpha, np.clip(r + 0.5 - np.hypot(yy - p[0], xx - p[1]), 0, 1))
        out = _blend(out, alpha, _speck_colour(img, rng, dark, c))
        mask = alpha > 0.3
    elif kind == "rough":
        win, *_ = _soft_window(size, rng, (3.5, 6.5), elong=rng.uniform(1.0, 1.6))
        grain = gaussian_filter(rng.normal(0, 1, (size, size)), rng.uniform(0.5, 0.9))
        grain /= grain.std() + 1e-9
        amp = rng.uniform(0.8, 1.6) * sd
        if c == 3:
            grain = grain[..., None] * rng.uniform(0.8, 1.0, 3)
        else:
            grain = grain[..., None]
        out = out + (win[..., None] * amp) * grain
        mask = win > 0.35
    elif kind == "glue":
        # a metaball: two or three smooth bumps near each other, cut at a level
        yy, xx = _grid(size)
        centre = rng.uniform(0.3 * size, 0.7 * size, 2)
        field = np.zeros((size, size))
        for _ in range(int(rng.integers(2, 4))):
            p = centre + rng.normal(0, 2.5, 2)
            s = rng.uniform(2.5, 4.0)
            field += np.exp(-((yy - p[0]) ** 2 + (xx - p[1]) ** 2) / (2 * s * s))
        level = 0.5
        film = np.clip((field - level) * 6, 0, 1)  # smooth-edged film
        rim = np.exp(-((field - level) / 0.08) ** 2)  # a thin band at the film's edge
        smooth = np.stack([gaussian_filter(img[..., k], 3.0) for k in range(c)], -1)
        t = rng.uniform(0.4, 0.7)
        out = out * (1 - t * film[..., None]) + (smooth + rng.uniform(5, 25)) * (t * film[..., None])
        out = out + rim[..., None] * rng.uniform(12, 30)
        mask = (film > 0.2) | (rim > 0.5)
    elif kind == "liquid":
        win, *_ = _soft_window(size, rng, (4.5, 7.5), elong=rng.uniform(1.0, 1.5))
        rough = gaussian_filter(rng.normal(0, 1, (size, size)), 1.2)
        rough /= rough.std() + 1e-9
        field = win * (1 + 0.45 * rough)  # the edge frays only where the stain is
        alpha = np.clip((field - 0.45) * 8, 0, 1)  # sharp (about 1 px) irregular edge
        ring = np.clip(1 - np.abs(field - 0.5) / 0.06, 0, 1) * alpha
        factor = rng.uniform(0.5, 0.75) * (rng.uniform(0.75, 1.0, c) if c == 3 else np.ones(c))
        out = out * (1 - alpha[..., None] * (1 - factor))
        out = out * (1 - ring[..., None] * rng.uniform(0.1, 0.25))
        mask = alpha > 0.5
    elif kind == "stroke":
        pts = _curve(rng, size, rng.uniform(30, 52), bend=rng.uniform(0.0, 0.5))
        width = rng.uniform(2.0, 3.2)
        d = _distance(pts, size)
        alpha = np.clip((width / 2 + 0.8 - d) / 1.6, 0, 1)  # soft-edged brush
        streaks = 1 + 0.35 * gaussian_filter(rng.normal(0, 1, (size, size)), (0.6, 0.6))  # bristle streaks
        grey = float(mean.mean()) + rng.choice([-1, 1]) * rng.uniform(15, 35)
        opacity = rng.uniform(0.35, 0.55)
        out = _blend(out, np.clip(alpha * opacity * streaks, 0, 1), np.full(c, grey))
        mask = alpha > 0.4
    else:
        raise ValueError(f"unknown defect {kind!r}; choose from {KINDS}")
    return np.clip(out, 0, 255), mask


def add_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(defective uint8 like img, mask bool (H, W)) for uint8 (H, W) or (H, W, 3). Redrawn (up to
    50 times) until the mask covers MIN_AREA px to MAX_AREA of the crop and some pixel changed."""
    x = img.astype(np.float64)
    x = x[..., None] if x.ndim == 2 else x
    limit = MAX_AREA * img.shape[0] * img.shape[1]
    for _ in range(50):
        out, mask = draw(x, kind, rng)
        out = np.rint(out)
        if MIN_AREA <= mask.sum() <= limit and np.abs(out - x).max(-1)[mask].max() >= 1:
            break
    else:
        raise RuntimeError(f"{kind}: no defect of the allowed size in 50 draws")
    out = out.astype(np.uint8)
    return (out[..., 0] if img.ndim == 2 else out), mask


def build(name: str, out: Path, crop: int = 64, n_train: int = 1000, n_test: int = 120, seed: int = 0,
          kinds: tuple[str, ...] = KINDS, train: bool = True) -> Path:
    """Write one texture's folders; the crops are texture_data.build's (same seed, same draws)."""
    from PIL import Image

    rng = np.random.default_rng([seed, sum(map(ord, name))])  # texture_data.build's crop stream
    photo = texture_data.load_photo(name)
    split = int(photo.shape[0] * texture_data.TRAIN_ROWS)
    train_x = texture_data.random_crops(photo, (0, split), n_train, crop, rng)
    test = texture_data.random_crops(photo, (split, photo.shape[0]), 2 * n_test, crop, rng)
    drng = np.random.default_rng([seed, sum(map(ord, name)), 0xA17])  # this generator's own stream
    root = out / name
    dirs = {d: root / d for d in ("train", "test/normal", "test/anomalous", "test/masks")}
    for key, d in dirs.items():
        if key != "train" or train:
            d.mkdir(parents=True, exist_ok=True)
    if train:
        for i, x in enumerate(train_x):
            Image.fromarray(x).save(dirs["train"] / f"{i:04d}.png")
    for i, x in enumerate(test[:n_test]):
        Image.fromarray(x).save(dirs["test/normal"] / f"{i:04d}.png")
    for i, x in enumerate(test[n_test:]):
        kind = kinds[i % len(kinds)]
        bad, mask = add_defect(x, kind, drng)
        Image.fromarray(bad).save(dirs["test/anomalous"] / f"{kind}_{i:04d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(dirs["test/masks"] / f"{kind}_{i:04d}.png")
    return root


def main() -> None:
    texture_data.main(build, __doc__)


if __name__ == "__main__":
    main()
