"""Synthetic grey product photos: ten kinds of garment, shoe and bag drawn from random shapes.

A confirm-only development set (no default was chosen on it; added 2026-12-05): every image is
an object centred on a clean black background, 28 x 28 grey, as product photos of one catalogue
are, drawn at 112 px and shrunk (anti-aliased). Classes, several of them alike on purpose (as
shirts, pullovers and coats are):

    0 t-shirt   1 trouser   2 pullover   3 dress   4 coat
    5 sandal    6 shirt     7 sneaker    8 bag     9 ankle boot

Each object's outline is a polygon whose proportions are drawn at random (body width and length,
sleeve length and angle, leg gap, heel height ...), then scaled, rotated and shifted a little. Its
fill: a grey level from dark to white, a light-to-dark ramp, and in some objects a pattern
(stripes, or a low-contrast crop of a photo that ships with scikit-image); a shirt may have a
collar and a button line, a coat a placket, a sneaker a light sole.

    python benchmarks/one_class.py --set garments --classes 0269
"""

from __future__ import annotations

import numpy as np

S = 112  # drawing size; images are shrunk to 28
NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")


def _mirror(left: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A symmetric outline from its left half, listed top to bottom (x < 0.5)."""
    return left + [(1 - x, y) for x, y in reversed(left)]


def _top(rng, sleeve: float, length: float, width: float, neck: float = 0.1) -> list[tuple[float, float]]:
    """A top's outline: shoulders, a sleeve `sleeve` long (0: none; 1: to the hem), body to `length`."""
    b = 0.5 - width / 2
    out = [(0.5 - neck, 0.12), (b, 0.17)]
    if sleeve > 0:
        reach = 0.03 + 0.1 * rng.uniform(0.5, 1.0)
        tip = 0.17 + sleeve * (length - 0.2)
        out += [(max(0.02, b - reach - 0.05 * sleeve), tip - 0.02), (b - reach + 0.1, tip + 0.04),
                (b, 0.17 + 0.15 + 0.1 * sleeve * rng.uniform(0, 1))]
    return _mirror(out + [(b + rng.uniform(-0.03, 0.03), length)])


def _outline(k: int, rng) -> tuple[list[list[tuple[float, float]]], dict]:
    """Polygons (in the unit square) of one object of class k, and its extras."""
    u = rng.uniform
    if k == 0:
        return [_top(rng, u(0.15, 0.3), u(0.85, 0.95), u(0.4, 0.52), neck=u(0.07, 0.12))], {}
    if k == 1:
        gap, w = u(0.02, 0.06), u(0.36, 0.5)
        left = [(0.5 - w / 2, 0.05), (0.5 - w / 2 - u(0, 0.05), 0.96), (0.5 - gap - u(0.0, 0.04), 0.96),
                (0.5 - gap / 2, u(0.28, 0.38))]
        return [_mirror(left)], {}
    if k == 2:
        return [_top(rng, u(0.9, 1.0), u(0.82, 0.92), u(0.42, 0.52), neck=u(0.06, 0.1))], {}
    if k == 3:
        top, hem = u(0.24, 0.32), u(0.34, 0.46)
        left = [(0.5 - u(0.06, 0.1), 0.06), (0.5 - top / 2, 0.1), (0.5 - top / 2 + 0.02, u(0.3, 0.4)),
                (0.5 - hem, u(0.9, 0.97))]
        return [_mirror(left)], {}
    if k == 4:
        return [_top(rng, 1.0, u(0.9, 0.97), u(0.5, 0.6), neck=u(0.05, 0.09))], {"placket": True}
    if k == 6:
        return [_top(rng, u(0.3, 1.0), u(0.84, 0.95), u(0.42, 0.54), neck=u(0.05, 0.08))], {
            "collar": rng.random() < 0.8, "buttons": rng.random() < 0.7}
    if k == 8:
        x0, x1, y0 = u(0.08, 0.2), u(0.8, 0.92), u(0.3, 0.45)
        return [[(x0, y0), (x1, y0), (x1 + 0.02, 0.9), (x0 - 0.02, 0.9)]], {"handle": (x0, x1, y0)}
    return _shoe(k, rng), {"sole": k == 7}


def _shoe(k: int, rng) -> list[list[tuple[float, float]]]:
    """A shoe seen from the side, toe to the right: sandal (sole and straps), sneaker, ankle boot."""
    u = rng.uniform
    sole = [(0.04, u(0.66, 0.72)), (0.96, u(0.62, 0.7)), (0.97, 0.76), (0.05, 0.8)]
    if k == 5:
        straps = []
        for _ in range(int(rng.integers(2, 5))):
            x, w = u(0.15, 0.8), u(0.04, 0.08)
            straps.append([(x, u(0.3, 0.45)), (x + w, u(0.3, 0.45)), (x + w + u(-0.1, 0.1), 0.68), (x + u(-0.1, 0.1), 0.68)])
        return [sole] + straps
    if k == 7:
        h = u(0.3, 0.42)
        return [[(0.03, h), (0.3, h - 0.02), (0.45, h + 0.08), (0.8, h + 0.15), (0.97, 0.62), (0.97, 0.8), (0.03, 0.8)]]
    h = u(0.08, 0.18)  # ankle boot: a shaft on the heel
    return [[(0.1, h), (0.5, h), (0.52, 0.5), (0.85, 0.6), (0.97, 0.7), (0.96, 0.86), (0.06, 0.86)]]


def _draw(polys, extras: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    """(object mask, detail lines) at S px, float in [0, 1]."""
    from PIL import Image, ImageDraw

    scale, angle = rng.uniform(0.85, 1.0), rng.uniform(-6, 6)
    shift = rng.uniform(-0.04, 0.04, 2)
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))

    def place(p):
        q = (np.asarray(p) - 0.5) * scale
        q = q @ np.array([[c, s], [-s, c]]) + 0.5 + shift
        return [tuple(v) for v in q * S]

    mask, lines = Image.new("L", (S, S)), Image.new("L", (S, S))
    dm, dl = ImageDraw.Draw(mask), ImageDraw.Draw(lines)
    for p in polys:
        dm.polygon(place(p), fill=255)
    if "handle" in extras:
        x0, x1, y0 = extras["handle"]
        box = place([(x0 + 0.12, y0 - 0.25), (x1 - 0.12, y0 + 0.2)])
        dm.arc([min(box[0][0], box[1][0]), min(box[0][1], box[1][1]), max(box[0][0], box[1][0]),
                max(box[0][1], box[1][1])], 180, 360, fill=255, width=int(rng.integers(5, 10)))
    if extras.get("placket") or extras.get("buttons"):
        dl.line(place([(0.5, 0.16), (0.5, 0.9)]), fill=255, width=int(rng.integers(2, 5)))
    if extras.get("collar"):
        dl.polygon(place([(0.38, 0.1), (0.5, 0.24), (0.45, 0.12)]), fill=255)
        dl.polygon(place([(0.62, 0.1), (0.5, 0.24), (0.55, 0.12)]), fill=255)
    if extras.get("sole"):
        dl.polygon(place([(0.0, 0.72), (1.0, 0.72), (1.0, 0.82), (0.0, 0.82)]), fill=255)
    return np.asarray(mask, np.float32) / 255, np.asarray(lines, np.float32) / 255


def garments(k: int, n: int, seed: int, photos: list[np.ndarray], size: int = 28) -> np.ndarray:
    """n images (n, size, size) uint8 of class k (drawn at S px, shrunk to `size`; S: as drawn)."""
    from PIL import Image

    rng = np.random.default_rng(seed * 10 + k)
    yy, xx = np.mgrid[0:S, 0:S] / (S - 1)
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        polys, extras = _outline(k, rng)
        mask, lines = _draw(polys, extras, rng)
        level = rng.uniform(0.2, 1.0)
        ramp = 1 + rng.uniform(-0.3, 0.3) * (yy - 0.5) + rng.uniform(-0.15, 0.15) * (xx - 0.5)
        pattern = np.zeros((S, S))
        r = rng.random()
        if r < 0.25:  # stripes
            f, t = rng.uniform(4, 14), rng.uniform(0, np.pi)
            pattern = 0.25 * np.sin(2 * np.pi * f * (np.cos(t) * xx + np.sin(t) * yy))
        elif r < 0.6:  # a printed or woven look: a low-contrast crop of a photo
            p = photos[rng.integers(len(photos))]
            y0, x0 = rng.integers(0, p.shape[0] - S), rng.integers(0, p.shape[1] - S)
            crop = p[y0:y0 + S, x0:x0 + S]
            pattern = rng.uniform(0.1, 0.5) * (crop - crop.mean()) / (crop.std() + 1e-6) / 2
        detail = rng.choice([-0.35, 0.35]) * lines
        img = mask * np.clip(level * ramp * (1 + pattern) + detail * level, 0.03, 1.0)
        drawn = Image.fromarray((img * 255).astype(np.uint8))
        out[i] = np.asarray(drawn if size == S else drawn.resize((size, size), Image.BOX))
    return out


def load(k: int, photos: list[np.ndarray], n_train: int | None = None, n_per_class: int = 1000):
    """(train (N, 28, 28), test (10 * n_per_class, 28, 28), test is anomalous) with class k normal."""
    train = garments(k, n_train or 6000, seed=1, photos=photos)
    test = np.concatenate([garments(c, n_per_class, seed=2, photos=photos) for c in range(10)])
    return train, test, np.repeat(np.arange(10), n_per_class) != k
