"""What `--layout auto` sees: the aligned-ness of every development set, plain and with the lighting
taken off (vaekit.training.data.image_statistics), and of the texture sets under a fixed fall-off of
the light (a ramp or darker corners, 30% and 60%), as a lamp or a lens gives (docs/detection.md,
"Objects or surface"). Columns: plain, two high-passed variants (measured, not used), lighting off.

    .venv/bin/python benchmarks/layout_stats.py ../shared/data/mnist.npz
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
import dev_sets, texture_data, reader_large
import reader_textures  # noqa (extra photos)
from vaekit.training.data import unlit

MNIST = Path(sys.argv[1])

def probe(x):  # (N, H, W) or (N, H, W, 3) uint8 -> grey float (n, s, s), s <= 64, <= 256 images
    x = x[:: max(1, len(x) // 256)][:256]
    side = min(64, max(16, min(x.shape[1:3])))
    out = []
    for a in x:
        im = Image.fromarray(a)
        im = im.convert("L").resize((side, side), Image.BILINEAR)
        out.append(np.asarray(im, np.float32) / 255)
    return np.stack(out)

def aligned(x):
    v = float(x.var(0).mean()); return float(x.mean(0).var() / max(v, 1e-12)) - 1 / (len(x) - 1)

def aligned_hp(x, frac=1 / 8):
    s = x.shape[1] * frac
    h = x - np.stack([gaussian_filter(a, s, mode="reflect") for a in x])
    return aligned(h)

def aligned_quad(x):  # vaekit's own aligned_unlit
    v = float(x.var(0).mean()); return float(unlit(x.mean(0)).var() / max(v, 1e-12)) - 1 / (len(x) - 1)

def light(x, kind, v=0.3):  # the same falloff on every image
    n, hh, ww = x.shape[:3]
    yy, xx = np.mgrid[0:hh, 0:ww] / max(hh - 1, 1)
    L = 1 - v * (((yy - .5) ** 2 + (xx - .5) ** 2) / 0.5) if kind == "vignette" else 1 - v * yy
    L = L[..., None] if x.ndim == 4 else L
    return np.clip(x * L, 0, 255).astype(np.uint8)

rows = []
def add(name, x):
    p = probe(x); rows.append((name, aligned(p), aligned_hp(p), aligned_hp(p, 1 / 4), aligned_quad(p)))
    print(f"{name:<28} " + " ".join(f"{v:8.4f}" for v in rows[-1][1:]), flush=True)

print("set raw hp/8 hp/4 quad")
for k in range(10):
    for s in ("mnist", "mnisttex", "mnistshade", "digits"):
        tr, _, _ = dev_sets.load(s, k, MNIST)
        add(f"{s} {k}", tr)
add("lfw", dev_sets.load("lfw", 0)[0])
rng = np.random.default_rng(0)
for name in texture_data.PHOTOS:
    ph = texture_data.load_photo(name)
    crops = texture_data.random_crops(ph, (0, int(ph.shape[0] * 0.6)), 1000, 64, rng)
    add(f"textures {name}", crops)
    big = reader_large.build(name)["train"]
    big = big[:, 0] if big.shape[1] == 1 else big.transpose(0, 2, 3, 1)
    add(f"large {name}", big)
    for kind in ("vignette", "gradient"):
        for v in (0.3, 0.6):
            add(f"textures {name} {kind}{v}", light(crops, kind, v))
            add(f"large {name} {kind}{v}", light(big, kind, v))
