"""Development data sets for the detection benchmarks, one class normal and the rest anomalous.

Each set is split into a half that decisions are made on and a half that only confirms them
(docs/detection.md): the even classes choose, the odd ones confirm; `lfw` is confirm-only.

    mnist      MNIST (bring mnist.npz: xtr, ytr, xte, yte), the standard one-class protocol
    mnisttex   the same digits as grey textured objects: a thickened digit mask filled with a
               crop of a photo shipped with scikit-image, under a random illumination ramp, on a
               dark noisy background (a stand-in for grey product photos, which vaekit 0.2 lost on)
    mnistshade the textured digits with what product photos vary in most: brightness (an object
               from near black to white, x0.15-1.0) and pattern (its texture's contrast x0-1, so
               some objects are plain grey), on a clean black background
    digits     scikit-learn's 8x8 digits at 32x32, half of each class for training
    lfw        scikit-image's 25x25 LFW subset: 70 faces train; 30 faces vs 100 non-faces test
    garments   synthetic grey product photos, ten kinds of garment, shoe and bag (benchmarks/garments.py;
               confirm-only, added after the defaults were set)
Nothing is downloaded: MNIST is a file you pass, the rest ships with scikit-learn/scikit-image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHOOSE, CONFIRM = "02468", "13579"
SETS = ("mnist", "mnisttex", "mnistshade", "digits", "lfw", "garments")


def load(name: str, k: int, mnist: Path | None = None, n_train: int | None = None):
    """(train uint8 (N, H, W), test uint8 (M, H, W), test is anomalous (M,) bool) for class k."""
    if name in ("mnist", "mnisttex", "mnistshade"):
        if mnist is None:
            raise SystemExit(f"--data mnist.npz is needed for the {name} set")
        d = np.load(mnist)
        xtr, ytr, xte, yte = d["xtr"], d["ytr"], d["xte"], d["yte"]
        tr = xtr[ytr == k]
        if n_train:
            tr = tr[np.random.default_rng(0).permutation(len(tr))[:n_train]]
        if name == "mnisttex":
            return textured(tr, seed=k), textured(xte, seed=100 + k), yte != k
        if name == "mnistshade":
            return shaded(tr, seed=k), shaded(xte, seed=100 + k), yte != k
        return tr, xte, yte != k
    if name == "digits":
        return _digits(k, n_train)
    if name == "garments":
        from garments import load as garments

        return garments(k, _photos(), n_train)
    if name == "lfw":
        import skimage.data

        a = (skimage.data.lfw_subset() * 255).astype(np.uint8)
        faces, other = a[:100], a[100:]
        return faces[:70], np.concatenate([faces[70:], other]), np.r_[np.zeros(30, bool), np.ones(100, bool)]
    raise SystemExit(f"unknown set {name!r}; one of {SETS}")


def _digits(k: int, n_train: int | None):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.stack([np.asarray(Image.fromarray((a / 16 * 255).astype(np.uint8)).resize((32, 32), Image.BICUBIC))
                  for a in d.images])
    half = np.zeros(len(x), bool)
    half[np.random.default_rng(0).permutation(len(x))[: len(x) // 2]] = True  # the training half
    tr = x[half & (d.target == k)]
    return tr[:n_train] if n_train else tr, x[~half], d.target[~half] != k


def _photos() -> list[np.ndarray]:
    import skimage.data as sd
    from skimage.color import rgb2gray

    out = []
    for p in (sd.camera(), sd.coffee(), sd.astronaut(), sd.chelsea(), sd.rocket(), sd.coins(), sd.moon(), sd.brick(),
              sd.gravel(), sd.grass()):
        out.append((rgb2gray(p) if p.ndim == 3 else p / 255.0).astype(np.float32))
    return out


def _mask_and_patch(digit: np.ndarray, photos: list[np.ndarray], rng) -> tuple[np.ndarray, np.ndarray]:
    """The digit thickened into an object mask in [0, 1], and a 28 x 28 crop (every other pixel of
    56 x 56) of a random photo, the object's texture."""
    from scipy.ndimage import maximum_filter

    m = maximum_filter(digit.astype(np.float32) / 255, 3)
    t = photos[rng.integers(len(photos))]
    r, c = rng.integers(0, t.shape[0] - 56), rng.integers(0, t.shape[1] - 56)
    return m, t[r:r + 56:2, c:c + 56:2]


def textured(digits: np.ndarray, seed: int) -> np.ndarray:
    """MNIST digits as grey textured objects (see the module docstring)."""
    rng, photos = np.random.default_rng(seed), _photos()
    yy, xx = np.mgrid[0:28, 0:28] / 27
    out = np.empty_like(digits)
    for i, a in enumerate(digits):
        m, patch = _mask_and_patch(a, photos, rng)
        patch = 0.35 + 0.65 * (patch - patch.min()) / (np.ptp(patch) + 1e-6)
        light = 0.75 + 0.25 * (rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx)
        background = 0.04 + 0.02 * rng.standard_normal((28, 28))
        img = m * patch * light * rng.uniform(0.7, 1.0) + (1 - m) * background
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def shaded(digits: np.ndarray, seed: int) -> np.ndarray:
    """MNIST digits as grey objects of any brightness, plain or patterned (see the module docstring)."""
    rng, photos = np.random.default_rng(seed), _photos()
    out = np.empty_like(digits)
    for i, a in enumerate(digits):
        m, patch = _mask_and_patch(a, photos, rng)
        patch = (patch - patch.mean()) / (patch.std() + 1e-6)
        level, contrast = rng.uniform(0.15, 1.0), rng.uniform(0.0, 1.0)
        img = m * np.clip(level * (1 + 0.25 * contrast * patch), 0.02, 1.0)
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def write_pngs(folder: Path, images: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == len(images):
        return
    for i, x in enumerate(images):
        Image.fromarray(x).save(folder / f"{i:05d}.png")


def pca_scores(train: np.ndarray, test: np.ndarray, k: int = 32) -> np.ndarray:
    """PCA-k reconstruction error on the same pixels (/ 255, flattened)."""
    from sklearn.decomposition import PCA

    a, b = train.reshape(len(train), -1) / 255.0, test.reshape(len(test), -1) / 255.0
    p = PCA(min(k, len(a) - 1), svd_solver="full" if len(a) < 500 else "randomized", random_state=0).fit(a)
    return ((b - p.inverse_transform(p.transform(b))) ** 2).sum(1)
