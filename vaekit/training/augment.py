"""Small random warps of training images: what keeps a VAE of a few tens of images general.

Trained on 16 aligned objects for ~300 steps, a VAE learns those images by heart (the
reconstruction error of its training digits is a fifth of a new digit's), so every new normal
image looks unusual and the score separates little. Each training step therefore sees every
image slightly rotated (up to 10 degrees), scaled (10%), sheared (0.1) and shifted (7% of the
size), drawn afresh per step: the shapes a class varies by, not new kinds of image. With 20
MNIST digits (16 training images) this lifted the default score's AUROC from 0.871 to 0.928
(choose half) and from 0.882 to 0.909 (confirm half), and to 0.937 / 0.930 with up to 600
epochs instead of 300 (vaekit.training.recipe.AUTO_MAX_EPOCHS_WARPED), and on 20 grey textured
digits from 0.775 to 0.840. With 70 images (56 training) it was mixed: MNIST digits gained
0.01-0.05, faces (aligned to the pixel) lost 0.018 on average over three draws (docs/detection.md).
So it is on by default for aligned objects below AUGMENT_BELOW training images; a surface
model's random crops serve it already.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

AUGMENT_BELOW = 50  # training images: fewer, and an aligned-object model trains on warped copies (auto)
ROTATE_DEG, SCALE, SHEAR, SHIFT = 10.0, 0.1, 0.1, 0.07


def augment_on(setting: str, layout: str, n_train: int) -> bool:
    """Whether training warps its images: "on", "off", or "auto" (aligned objects, few images)."""
    if setting != "auto":
        return setting == "on"
    return layout != "grid" and n_train < AUGMENT_BELOW


def warp_batch(x: torch.Tensor, seed, rows: np.ndarray | None = None, n_global: int | None = None) -> torch.Tensor:
    """Each image of a float batch (B, C, H, W) warped by its own random affine map, drawn from
    `seed` (a step's: the same warps after a resume); borders extend the edge pixels. Under DDP a
    rank holds `rows` of a global batch of `n_global`: the maps are drawn for the whole global
    batch, so one process or many warp each image alike."""
    g = np.random.default_rng(seed)
    n = len(x) if n_global is None else n_global
    rot = np.deg2rad(g.uniform(-ROTATE_DEG, ROTATE_DEG, n))
    scale = 1.0 + g.uniform(-SCALE, SCALE, n)
    shear = g.uniform(-SHEAR, SHEAR, n)
    shift = g.uniform(-SHIFT, SHIFT, (n, 2)) * 2.0  # affine_grid's coordinates span [-1, 1]
    c, s = np.cos(rot), np.sin(rot)
    theta = np.stack([np.stack([c / scale, (shear - s) / scale, shift[:, 0]], 1),
                      np.stack([s / scale, c / scale, shift[:, 1]], 1)], 1)
    if rows is not None:
        theta = theta[np.asarray(rows)]
    if not len(x):  # a rank's share of the last global batch can be empty
        return x
    grid = F.affine_grid(torch.from_numpy(theta).to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
