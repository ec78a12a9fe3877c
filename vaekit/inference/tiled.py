"""A surface model's scores of whole images of any shape, from the scores of their tiles.

A surface model (a latent grid, vaekit.images.tiles) scores files in square tiles of its size
and puts each image back together here, for `Model.score` / `Model.iter_scores` on files and
for every scoring job (vaekit.anomaly.score). An array of the model's size is scored as given.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np

from vaekit.images.tiles import Tiling, stacked
from vaekit.stream.inputs import BATCH_PIXELS  # pixels at the model's size decoded at a time (4 files of 1024 px)


def file_batch(model, most: int) -> int:
    """Files decoded and scored at a time when none is asked for: at most `most`, and at most
    BATCH_PIXELS at the size files are read at (a surface's wider files hold more: their tiles)."""
    return max(1, min(most, BATCH_PIXELS // model.info.read_size**2))


def tiled(model) -> bool:
    """Whether `model` scores files as whole images in tiles: a surface model (a latent grid),
    which reads any part of a surface alike; object models see the centre square they were trained on."""
    return len(model.info.latent_shape) == 3


def merge(s, tilings: Sequence[Tiling], tiles: np.ndarray, nats: str = "sum") -> tuple[object, list[np.ndarray]]:
    """Per-tile Scores -> per-image Scores, and the whole images. An image's score is its most
    anomalous tile's (NaN stays NaN: fail closed); its nats (neg_elbo, recon, kl, excess,
    floor) are its tiles' sums scaled by the image's pixels over the tiles' (exact without
    overlap), so bits/dim is the tiles' mean; with nats="max" each is its most anomalous tile's
    instead, the image's `--score neg_elbo` (recon, kl, excess): every score of a pass at once.
    Its map, the tiles' maps averaged where they overlap, one (H, W) array per image."""
    cuts = np.cumsum([0, *(len(t) for t in tilings)])
    parts = list(zip(tilings, cuts[:-1], cuts[1:]))

    def column(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        if nats == "max":
            return np.array([np.max(a[i:j]) for _, i, j in parts])
        return np.array([a[i:j].sum() * t.area_share() for t, i, j in parts])

    merged = replace(
        s, score=np.array([np.max(s.score[i:j]) for _, i, j in parts]),
        neg_elbo=column(s.neg_elbo), recon=column(s.recon), kl=column(s.kl), excess=column(s.excess), floor=column(s.floor),
        bits_per_dim=np.array([s.bits_per_dim[i:j].mean() for _, i, j in parts]),
        pixel_map=None if s.pixel_map is None else [t.average(s.pixel_map[i:j]) for t, i, j in parts])
    return merged, [t.paste(tiles[i:j]) for t, i, j in parts]


def score_tiles(model, tiles: np.ndarray, tilings: Sequence[Tiling], nats: str = "sum",
                **kw) -> tuple[object, list[np.ndarray]]:
    """Score a batch's tiles (files in turn, as vaekit.stream gives them) and merge them per image:
    `merge` of `model.score` (its `nats`), a run of whole files of at most BATCH_PIXELS at a time
    (at least one file), so the float maps in flight stay bounded however long the files are."""
    most = max(1, BATCH_PIXELS // model.info.image_size**2)  # tiles at a time
    parts, start, group, n = [], 0, [], 0
    for k, t in enumerate(tilings):
        group.append(t)
        n += len(t)
        if k + 1 == len(tilings) or n + len(tilings[k + 1]) > most:
            parts.append(merge(model.score(tiles[start : start + n], **kw), group, tiles[start : start + n], nats))
            start, group, n = start + n, [], 0
    if len(parts) == 1:
        return parts[0]
    return _joined([p[0] for p in parts]), [x for p in parts for x in p[1]]


def _joined(scores: list):
    """One Scores of consecutive ones: arrays concatenated; maps one array where every image has
    the same shape, else a list of (H, W) arrays."""
    def join(name: str):
        vals = [getattr(p, name) for p in scores]
        return None if vals[0] is None else np.concatenate(vals)

    maps = None if scores[0].pixel_map is None else stacked([m for p in scores for m in p.pixel_map])
    return replace(scores[0], score=join("score"), neg_elbo=join("neg_elbo"), recon=join("recon"), kl=join("kl"),
                   excess=join("excess"), floor=join("floor"), bits_per_dim=join("bits_per_dim"), pixel_map=maps)


def iter_scores(model, paths: Sequence, batch_size: int, workers: int = 0, nats: str = "sum", **kw) -> Iterator:
    """`Model.iter_scores` of files and folders for a tiled model: one Scores per batch of files, or
    per part of one whose tiles pass BATCH_PIXELS (vaekit.stream.iter_batches); nats as `merge` makes them."""
    from vaekit.stream import find_inputs, iter_batches

    info = model.info
    for b in iter_batches(find_inputs(paths).paths, info.read_size, info.channels, batch_size, workers,
                          tiles=info.image_size):
        if len(b.paths):
            out = score_tiles(model, b.images, b.tilings, nats, **kw)[0]
        else:
            out = model.empty_scores(kw.get("score"), kw.get("samples", 0), kw.get("iwae", False))
        out.paths, out.skipped = b.paths, b.skipped
        yield out


def file_tiles(model, paths: Sequence) -> Iterator[np.ndarray]:
    """The tiles of the image files under `paths` as a surface model scores them (each read whole
    at its read size, in square tiles of its size), a batch of files at a time; unreadable files
    are left out."""
    from vaekit.stream import find_inputs, iter_batches

    info = model.info
    for b in iter_batches(find_inputs(paths).paths, info.read_size, info.channels, file_batch(model, model.batch_size), 0,
                          tiles=info.image_size):
        if len(b.paths):
            yield b.images


def score_files(model, paths: Sequence, progress=None, **kw):
    """`Model.score` of files for a tiled model: the batches of `iter_scores` joined. pixel_map
    is one array when every image has the same shape, else a list of (H, W) arrays.
    progress(done, total) counts files."""
    from vaekit import images as imageio
    from vaekit.stream import find_inputs

    files, parts = find_inputs(paths).paths, []
    for part in iter_scores(model, files, file_batch(model, model.batch_size), **kw):
        parts.append(part)
        if progress:
            progress(sum(len(p.paths) + len(p.skipped) for p in parts), len(files))
    got = [p for p in parts if len(p.score)]
    skipped = [s for p in parts for s in p.skipped]
    if not got:
        raise imageio.none_usable(f"in {', '.join(map(str, paths))}", skipped)
    return replace(_joined(got), paths=[q for p in got for q in p.paths], skipped=skipped)
