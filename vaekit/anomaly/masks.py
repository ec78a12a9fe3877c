"""Which mask is an anomalous image's, read at its map's geometry (`vaekit evaluate --masks`): by
relative path (NAME or NAME_mask, any image suffix; NAME with its own suffix first, so that dup.jpg
and dup.png can each have one), else by file name where that is unambiguous; a mask of another
aspect ratio than its image, two masks for one image, or one mask for two, are refused."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from vaekit import images as imageio
from vaekit.errors import BadInput
from vaekit.inference.tiled import tiled


def masks_for(model, index, names: Sequence[str]):
    """name -> the anomalous image's mask at its map's geometry, or None. A mask is an image's by
    its relative path (NAME or NAME_mask), else by its name alone when neither another mask nor
    another anomalous image has that name and no image claims the mask by path: crack/000.png
    without a mask must not take crack/000's for hole/000.png. Two masks for one image are refused."""
    exact, stripped, by_stem = index
    keys = {n: Path(n).with_suffix("").as_posix() for n in names}
    stems = Counter(k.rsplit("/", 1)[-1] for k in keys.values())
    taken = {p for k in keys.values() for p in exact.get(k, [])}  # x_mask.png is the mask of an image x_mask

    def by_path(name: str, key: str) -> Path | None:
        found = exact.get(key, []) + [p for p in stripped.get(key, []) if p not in taken]
        if len(found) > 1:
            raise BadInput(f"{len(found)} masks for the anomalous image {name}: "
                           f"{', '.join(p.name for p in found[:3])}; keep one")
        return found[0] if found else None

    def own(name: str, key: str) -> Path | None:  # dup.jpg's mask may be named after its whole name
        return by_path(name, Path(name).as_posix()) or by_path(name, key)

    paths = {name: p for name, key in keys.items() if (p := own(name, key)) is not None}
    _refuse_shared(paths)
    claimed = set(paths.values())
    for name, key in keys.items():
        stem = key.rsplit("/", 1)[-1]
        if name not in paths and stems[stem] == 1 and len(by_stem.get(stem, [])) == 1 and by_stem[stem][0] not in claimed:
            paths[name] = by_stem[stem][0]
    size = model.info.read_size if tiled(model) else model.info.image_size
    return lambda name, image: read_mask(paths.get(name), name, size, crop=not tiled(model), image=image)


def _refuse_shared(paths: dict[str, Path]) -> None:
    """BadInput when one mask is two images' (dup.png and dup.jpg both take dup_mask.png): the
    pixel AUROC would score one of them against the other's defect."""
    seen: dict[Path, str] = {}
    for name, p in paths.items():
        if p in seen:
            raise BadInput(f"the mask {p.name} matches both anomalous images {seen[p]} and {name}; name each "
                           f"image's mask after its whole name ({name}_mask.png) or rename one of them")
        seen[p] = name


def mask_index(root: Path) -> tuple[dict, dict, dict]:
    """Masks under `root` by relative path without suffix, by that path less a `_mask` ending, and
    by file stem (less `_mask`): lists of paths each; BadInput when the folder holds no image file."""
    exact: dict[str, list[Path]] = {}
    stripped: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in imageio.find_images(root):
        key = p.relative_to(root).with_suffix("").as_posix()
        exact.setdefault(key, []).append(p)
        if key.endswith("_mask"):
            key = key[: -len("_mask")]
            stripped.setdefault(key, []).append(p)
        by_stem.setdefault(key.rsplit("/", 1)[-1], []).append(p)
    if not exact:
        raise BadInput(f"no mask in {root} matches an anomalous image (the folder holds no image file)")
    return exact, stripped, by_stem


def read_mask(path: Path | None, name: str, size: int, crop: bool = True, image: str | None = None) -> np.ndarray | None:
    """The mask at `path` (size, size) bool, of the anomalous image `name`, at the model's geometry,
    or None without a path (crop=False: the whole mask, its shorter side `size`, as a tiled model's maps)."""
    if path is None:
        return None
    try:
        # the same shorter-side resize and centre crop as the images, so pixels line up
        mask = imageio.load_image(path, size, 1, crop)[0] > 127
    except imageio.ImageReadError as e:
        raise BadInput(f"mask {e.path} cannot be read: {e.reason}") from None
    if crop and image is not None:  # the centre crop would hide another aspect ratio, and its pixels miss the image's
        (mw, mh), (w, h) = imageio.file_shown_size(path), imageio.file_shown_size(image)
        if abs((mw / mh) / (w / h) - 1) > MASK_ASPECT_SLACK:
            raise BadInput(f"the mask of {name} is {mw}x{mh}, its image {w}x{h}: a mask must have its image's aspect ratio")
    return mask


MASK_ASPECT_SLACK = 0.03  # a mask's aspect ratio may differ from its image's by this much (rounding, JPEG draft)


def fit_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    """The mask at its image's map shape: a surface's map has the image's own shape, which a mask
    of another resolution (or a JPEG decoded at reduced scale) misses by a pixel; a mask of
    another aspect ratio is refused."""
    if mask.shape == shape:
        return mask
    (mh, mw), (h, w) = mask.shape, shape
    if abs((mw / mh) / (w / h) - 1) > MASK_ASPECT_SLACK:
        raise BadInput(f"the mask of {name} is {mw}x{mh} at the model's scale, its image {w}x{h}: "
                       "a mask must have its image's aspect ratio")
    from PIL import Image

    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 127
