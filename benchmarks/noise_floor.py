"""The fewest bits any lossless coder can spend on the grey textured digits (dev_sets.textured).

    .venv/bin/python benchmarks/noise_floor.py ../shared/data/mnist.npz [--n 1000] [--seed 1]

Given everything the generator draws except the background noise (the digit's mask, the photo
crop, the light and the brightness), the pixels are independent, each the integer part of a known
value plus 255 * 0.02 * (1 - mask) * N(0, 1), clipped to 0..255. The sum of those pixels'
entropies is a lower bound on the images' entropy, so on the bits/dim of every lossless coder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).parent))
import dev_sets  # noqa: E402

NOISE = 255 * 0.02  # the background noise's sd in grey levels (dev_sets.textured)


def pixel_bits(value: np.ndarray, sd: np.ndarray) -> float:
    """Σ entropy of floor(value + sd * N), clipped to 0..255, over the pixels with noise."""
    bits = 0.0
    for c, s in zip(value.ravel(), sd.ravel()):
        if s > 1e-9:
            p = np.diff(np.concatenate([[0.0], norm.cdf((np.arange(1, 256) - c) / s), [1.0]]))
            p = p[p > 0]
            bits -= float((p * np.log2(p)).sum())
    return bits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mnist", type=Path)
    ap.add_argument("--n", type=int, default=1000, help="test digits (the first n)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    digits = np.load(a.mnist)["xte"][: a.n]
    photos, rng = dev_sets._photos(), np.random.default_rng(a.seed)
    yy, xx = np.mgrid[0:28, 0:28] / 27
    bits, background = 0.0, 0.0
    for digit in digits:  # the draws in dev_sets.textured's order
        m, patch = dev_sets._mask_and_patch(digit, photos, rng)
        patch = 0.35 + 0.65 * (patch - patch.min()) / (np.ptp(patch) + 1e-6)
        light = 0.75 + 0.25 * (rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx)
        rng.standard_normal((28, 28))  # the noise itself
        value = 255 * (m * patch * light * rng.uniform(0.7, 1.0) + (1 - m) * 0.04)
        bits += pixel_bits(value, NOISE * (1 - m))
        background += float((m == 0).mean())
    n = len(digits)
    print(f"{n} textured digits: at least {bits / n / digits[0].size:.4f} bits/dim for any lossless coder; "
          f"{background / n:.1%} of the pixels are background")


if __name__ == "__main__":
    main()
