"""vaekit's own synthetic defects, the training signal of the defect reader (DRAEM-style).

A defect is a SHAPE (where) times a FILL (what). Shapes: irregular blobs cut from Perlin
noise inside a random ellipse (Zavrtanik et al. 2021 threshold Perlin noise; the ellipse keeps
one defect local and lets its size run from a few pixels to a third of the crop), clusters of
small spots, and thin curves (scratch- or crack-like; the "line" family, which a leave-one-
family-out run can switch off). Fills: noise, a flat colour, a patch of another training image
(shifted, rotated, mirrored, zoomed or block-shuffled), blur, and brightness/contrast shifts.
Everything is numpy and drawn from the caller's Generator, so a seed gives the same defects.
The mask is where the fill was applied, and only those pixels change.
"""

from __future__ import annotations

import math

import numpy as np

SHAPES = ("blob", "spots", "line")  # families; "line" is what a leave-one-family-out run drops
FILLS = ("noise", "flat", "patch", "blur", "shift")
MIN_VISIBLE = 6.0  # mean |change| (grey levels) a defect must reach, else it is drawn again


# --- shapes: (H, W) float alpha in [0, 1]; the label is alpha > 0.5 -----------------------------

def perlin(h: int, w: int, cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise with cells[0] x cells[1] lattice cells over the image, ~[-1, 1]."""
    gy, gx = cells
    angles = rng.uniform(0, 2 * np.pi, (gy + 1, gx + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], -1)  # (gy+1, gx+1, 2)
    # a column of rows and a row of columns, broadcast: each pixel's numbers are those of a full
    # (h, w) grid, bit for bit, at a fraction of the indexing
    y = np.linspace(0, gy, h, endpoint=False)[:, None]
    x = np.linspace(0, gx, w, endpoint=False)[None, :]
    y0, x0 = y.astype(int), x.astype(int)
    fy, fx = y - y0, x - x0

    def dot(dy, dx):  # gradient at lattice corner (y0+dy, x0+dx) . offset to the pixel
        g = grad[y0[:, 0] + dy][:, x0[0] + dx]  # (h, w, 2)
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    fade = lambda t: t * t * t * (t * (t * 6 - 15) + 10)  # noqa: E731 (Perlin 2002's quintic)
    uy, ux = fade(fy), fade(fx)
    top = dot(0, 0) * (1 - ux) + dot(0, 1) * ux
    bottom = dot(1, 0) * (1 - ux) + dot(1, 1) * ux
    return (top * (1 - uy) + bottom * uy) * math.sqrt(2)


def _ellipse(h: int, w: int, rng: np.random.Generator, r_lo: float, r_hi: float) -> np.ndarray:
    """Signed 'inside-ness' of a random rotated ellipse: 1 at the centre, 0 on the rim, < 0 outside."""
    ry, rx = np.exp(rng.uniform(np.log(r_lo), np.log(r_hi), 2))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    t = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    u = (yy - cy) * np.cos(t) + (xx - cx) * np.sin(t)
    v = -(yy - cy) * np.sin(t) + (xx - cx) * np.cos(t)
    return 1.0 - np.sqrt((u / ry) ** 2 + (v / rx) ** 2)


def blob_shape(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An irregular blob: Perlin noise added to a random ellipse, thresholded at 0, so the rim
    frays and holes open where the noise is low. Radii log-uniform from 2 px to 40% of the side."""
    side = min(h, w)
    inside = _ellipse(h, w, rng, 2.0, max(3.0, 0.4 * side))
    cells = tuple(int(c) for c in 2 ** rng.integers(1, 5, 2))  # 2..16 lattice cells per side
    noise = perlin(h, w, cells, rng)
    return np.clip((inside + rng.uniform(0.2, 0.8) * noise) * rng.uniform(2, 8), 0, 1)


def spots_shape(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A few small spots (pits, specks): 1 to 6 ellipses of 1-4 px radius near each other."""
    out = np.zeros((h, w))
    anchor = rng.uniform(0, [h, w])
    spread = rng.uniform(2, 0.25 * min(h, w))
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    for _ in range(int(rng.integers(1, 7))):
        cy, cx = anchor + rng.normal(0, spread, 2)
        ry, rx = rng.uniform(1.0, 4.0, 2)
        out = np.maximum(out, 1.0 - np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
    return np.clip(out * 4, 0, 1)


def line_shape(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A thin curve, 1-3 px wide: a cubic Bezier through random control points (from nearly
    straight, a scratch, to bent, a crack), sometimes with a branch."""
    side = min(h, w)
    out = np.zeros((h, w))
    start = rng.uniform(0, [h, w])
    heading = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.3, 1.2) * side
    bend = rng.uniform(0.0, 0.6)
    for branch in range(1 + int(rng.random() < 0.3)):
        d = np.array([np.sin(heading), np.cos(heading)])
        n = np.array([-d[1], d[0]])
        end = start + length * d
        c1 = start + length * (d / 3 + n * rng.normal(0, bend))
        c2 = start + length * (2 * d / 3 + n * rng.normal(0, bend))
        t = np.linspace(0, 1, int(4 * length) + 2)[:, None]
        pts = (1 - t) ** 3 * start + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3 * end
        out = np.maximum(out, _stroke(pts, h, w, rng.uniform(0.5, 1.6)))
        start, heading, length = pts[len(pts) // 2], heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.2), length / 2
    return out


def _stroke(pts: np.ndarray, h: int, w: int, radius: float, chunk: int = 32) -> np.ndarray:
    """Alpha of a pen of `radius` px drawn through pts (K, 2): 1 on the path, fading over 0.5 px.
    Each point inks the pixels of its box [int(p) - r, int(p) + r + 2) with clip(radius + 0.5 -
    distance, 0, 1), the largest ink wins; `chunk` consecutive points (a few px of the path) are
    inked at once over their boxes' union, so the cost is numpy's, not a Python loop's."""
    out = np.zeros((h, w))
    r = int(math.ceil(radius + 1))
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    at = pts.astype(np.int64)  # truncated towards zero, as int() does
    lo, hi = np.maximum(0, at - r), np.minimum([h, w], at + r + 2)
    keep = (lo < hi).all(1)
    pts, lo, hi = pts[keep], lo[keep], hi[keep]
    for i in range(0, len(pts), chunk):
        p, a, b = pts[i:i + chunk], lo[i:i + chunk], hi[i:i + chunk]
        (y0, x0), (y1, x1) = a.min(0), b.max(0)
        yy = np.arange(y0, y1)[None, :, None]
        xx = np.arange(x0, x1)[None, None, :]
        inside = ((yy >= a[:, 0, None, None]) & (yy < b[:, 0, None, None])
                  & (xx >= a[:, 1, None, None]) & (xx < b[:, 1, None, None]))
        ink = np.clip(radius + 0.5 - np.hypot(yy - p[:, 0, None, None], xx - p[:, 1, None, None]), 0, 1)
        out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], np.where(inside, ink, 0.0).max(0))
    return out


SHAPE_FNS = {"blob": blob_shape, "spots": spots_shape, "line": line_shape}


# --- fills: what the defective pixels become, float (C, H, W) in grey levels ---------------------

def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (C, H, W), edges reflected (numpy only: no scipy dependency)."""
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.pad(img, ((0, 0), (r, r), (r, r)), mode="reflect")
    out = sum(k[i] * out[:, i:i + img.shape[1], :] for i in range(2 * r + 1))
    return sum(k[i] * out[:, :, i:i + img.shape[2]] for i in range(2 * r + 1))


def _patch(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Material from elsewhere: the donor (another training image) shifted, then rotated,
    mirrored, zoomed in (coarser grain) or cut into shuffled blocks."""
    c, h, w = img.shape
    p = np.roll(donor, (int(rng.integers(h)), int(rng.integers(w))), axis=(1, 2))
    how = rng.choice(["rotate", "zoom", "shuffle"])
    if how == "rotate" and h == w:
        p = np.rot90(p, int(rng.integers(1, 4)), axes=(1, 2))
        if rng.random() < 0.5:
            p = p[:, ::-1]
    elif how == "zoom":
        f = rng.uniform(1.5, 3.0)
        ys = (np.arange(h) / f).astype(int) % h
        xs = (np.arange(w) / f).astype(int) % w
        p = p[:, ys][:, :, xs]
    else:
        b = int(rng.choice([4, 8]))
        gh, gw = h // b, w // b
        if gh * gw > 1:
            blocks = p[:, :gh * b, :gw * b].reshape(c, gh, b, gw, b).transpose(1, 3, 0, 2, 4).reshape(gh * gw, c, b, b)
            blocks = blocks[rng.permutation(gh * gw)]
            p = p.copy()
            p[:, :gh * b, :gw * b] = blocks.reshape(gh, gw, c, b, b).transpose(2, 0, 3, 1, 4).reshape(c, gh * b, gw * b)
    return np.ascontiguousarray(p, dtype=np.float64)


def fill(kind: str, img: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What the defect region shows, for (C, H, W) grey levels; colour images get uneven channels."""
    c = img.shape[0]
    mean = img.mean(axis=(1, 2), keepdims=True)
    tint = rng.uniform(0.5, 1.0, (c, 1, 1)) if c > 1 and rng.random() < 0.5 else np.ones((c, 1, 1))
    if kind == "noise":
        level = rng.uniform(0, 255, (c, 1, 1)) if rng.random() < 0.5 else mean
        return level + rng.normal(0, rng.uniform(10, 70), (1 if rng.random() < 0.5 else c, *img.shape[1:]))
    if kind == "flat":
        return np.broadcast_to(rng.uniform(0, 255) * tint, img.shape)
    if kind == "patch":
        return _patch(img, donor, rng)
    if kind == "blur":
        return blur(img, rng.uniform(1.5, 4.0))
    if kind == "shift":  # brightness and contrast, about the image mean
        contrast = rng.choice([rng.uniform(0.2, 0.7), rng.uniform(1.4, 2.5)])
        shift = rng.choice([-1, 1]) * rng.uniform(15, 80) * tint
        return (img - mean) * contrast + mean + shift
    raise ValueError(f"unknown fill {kind!r}; choose from {FILLS}")


# --- the public call -----------------------------------------------------------------------------

def one_defect(img: np.ndarray, donor: np.ndarray, rng: np.random.Generator,
               shapes: tuple[str, ...] = SHAPES, fills: tuple[str, ...] = FILLS) -> tuple[np.ndarray, np.ndarray]:
    """(defective float (C, H, W), mask bool (H, W)) for one uint8 image (C, H, W). Draws again
    (up to 8 times) when the change is too faint to see: a label on an invisible change only
    teaches the reader to guess."""
    x = img.astype(np.float64)
    _, h, w = img.shape
    for _ in range(8):
        alpha = SHAPE_FNS[shapes[int(rng.integers(len(shapes)))]](h, w, rng)
        if rng.random() < 0.3:  # a soft, semi-transparent edge
            alpha = np.clip(blur(alpha[None], rng.uniform(0.5, 1.5))[0] * 1.5, 0, 1)
        alpha = alpha * rng.uniform(0.6, 1.0) if rng.random() < 0.3 else alpha
        mask = alpha > 0.5
        if mask.sum() < 2:
            continue
        a = np.where(mask, alpha, 0.0)[None]  # nothing outside the mask changes
        f = fill(fills[int(rng.integers(len(fills)))], x, donor.astype(np.float64), rng)
        out = np.clip(x * (1 - a) + f * a, 0, 255)
        if np.abs(np.rint(out) - x).max(0)[mask].mean() >= MIN_VISIBLE:
            return out, mask
    return x, np.zeros((h, w), bool)


def make_defects(images: np.ndarray, rng: np.random.Generator, shapes: tuple[str, ...] = SHAPES,
                 fills: tuple[str, ...] = FILLS) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic defect on each image: uint8 (N, C, H, W) -> (defective uint8 (N, C, H, W),
    masks float32 (N, H, W), 1 where the defect is). Deterministic given `rng`. Donor material
    for patch fills comes from the other images of the batch (the image itself if N == 1).
    `shapes` and `fills` choose the families drawn from (SHAPES, FILLS)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
    bad = [s for s in shapes if s not in SHAPE_FNS] + [f for f in fills if f not in FILLS]
    if bad or not shapes or not fills:
        raise ValueError(f"unknown or empty shapes/fills {bad or (shapes, fills)}; choose from {SHAPES} and {FILLS}")
    n = len(images)
    out = np.empty_like(images)
    masks = np.zeros((n, *images.shape[2:]), np.float32)
    for i in range(n):
        donor = images[(i + 1 + int(rng.integers(max(1, n - 1)))) % n] if n > 1 else images[i]
        x, m = one_defect(images[i], donor, rng, tuple(shapes), tuple(fills))
        out[i] = np.rint(x).astype(np.uint8)
        masks[i] = m
    return out, masks
